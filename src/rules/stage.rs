//! The alert stage, between the span stage and the sinks (in the export task): it sees each
//! `SessionUpdate` before the span stage does, and each built span after; it evaluates the
//! rules for a process when that process's spans pass (the session is released by then, so
//! who opened it is known), puts every match as a span event on the span it belongs to, and
//! marks the session's root with the count, the highest severity and the rules that fired.
//!
//! Why here: the identity (user, groups, source IP, attributed or not) exists only once the
//! span stage's hold has released a session, and the span ids of a record's spans are derived
//! from the record, so a built span can be matched to the image or connect it shows.
//!
//! In: `SessionUpdate`s (tap), [`Output`]s of the span stage. Out: the same spans with alert
//! events; the root with `podtrail.alerts.*`. Dropped: nothing. An alert whose span was not
//! exported (over the span cap, folded into a repeat) goes on the root instead.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use opentelemetry::trace::{Event, SpanId};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::SpanData;
use opentelemetry_semantic_conventions::attribute as sc;

use super::eval::{self, Alert, Target};
use super::lang::{Rule, Severity};
use super::subject::SessionCtx;
use crate::capture::event::ProcessKey;
use crate::clock::BootClock;
use crate::model::{ProcessRecord, SessionId, SessionInfo, SessionUpdate};
use crate::scope::ScopeConfig;
use crate::spans::hold::Output;
use crate::spans::{ids, keys, Attributor, SessionIdentity};
use crate::text::{basename, escape};

/// Wraps the span stage's attributor and remembers, per session, the identity it handed out:
/// the span stage uses every identity it is given, so this is who the spans say opened it.
pub struct RecordingAttributor {
    inner: Arc<dyn Attributor>,
    seen: Mutex<HashMap<SessionId, SessionIdentity>>,
}

impl RecordingAttributor {
    pub fn new(inner: Arc<dyn Attributor>) -> Arc<Self> {
        Arc::new(RecordingAttributor { inner, seen: Mutex::new(HashMap::new()) })
    }

    fn get(&self, id: SessionId) -> Option<SessionIdentity> {
        self.seen.lock().ok()?.get(&id).cloned()
    }

    fn forget(&self, id: SessionId) {
        if let Ok(mut m) = self.seen.lock() {
            m.remove(&id);
        }
    }
}

impl Attributor for RecordingAttributor {
    fn attribute(&self, info: &SessionInfo) -> Option<SessionIdentity> {
        let who = self.inner.attribute(info)?;
        if let Ok(mut m) = self.seen.lock() {
            m.insert(info.id, who.clone());
        }
        Some(who)
    }

    // A late answer is not recorded: the session's spans (and its root) have already passed.
    fn attribute_late(&self, info: &SessionInfo, settled: std::time::Duration) -> Option<SessionIdentity> {
        self.inner.attribute_late(info, settled)
    }

    fn revision(&self) -> Option<u64> {
        self.inner.revision()
    }
}

/// A process's images as its descendants see them: (start, command name).
struct Names {
    parent: Option<ProcessKey>,
    images: Vec<(u64, String)>,
}

#[derive(Default)]
struct SessionState {
    info: Option<SessionInfo>,
    names: HashMap<ProcessKey, Names>,
    /// Records whose spans have not passed yet.
    pending: HashMap<ProcessKey, ProcessRecord>,
    span_of: HashMap<SpanId, ProcessKey>,
    /// Evaluated, waiting for their span.
    alerts: HashMap<SpanId, Vec<Alert>>,
    written: HashSet<Vec<u8>>,
    count: u64,
    max: Option<Severity>,
    fired: BTreeSet<String>,
}

/// The rules the stage applies: swapped whole on reload.
pub type RuleSet = Arc<Vec<Arc<Rule>>>;

pub struct AlertStage {
    boot_id: [u8; 16],
    clock: BootClock,
    scope: ScopeConfig,
    attribution_configured: bool,
    who: Arc<RecordingAttributor>,
    sessions: HashMap<SessionId, SessionState>,
    /// `podtrail_alerts_total{rule, severity}`: every alert raised, as it is raised.
    fired: crate::metrics::AlertCounter,
}

impl AlertStage {
    /// `who` must be the attributor the span stage was given.
    pub fn new(
        boot_id: [u8; 16],
        clock: BootClock,
        scope: ScopeConfig,
        attribution_configured: bool,
        who: Arc<RecordingAttributor>,
    ) -> Self {
        AlertStage {
            boot_id,
            clock,
            scope,
            attribution_configured,
            who,
            sessions: HashMap::new(),
            fired: Default::default(),
        }
    }

    /// Counts every alert into `counter` (a handle on the agent's `podtrail_alerts_total`).
    pub fn counting(mut self, counter: crate::metrics::AlertCounter) -> Self {
        self.fired = counter;
        self
    }

    /// Sessions whose root has not passed yet.
    pub fn open(&self) -> usize {
        self.sessions.len()
    }

    /// Sees an update before the span stage does.
    pub fn tap(&mut self, u: &SessionUpdate) {
        let (info, recs): (&SessionInfo, Vec<&ProcessRecord>) = match u {
            SessionUpdate::Started(i) => (i, vec![]),
            SessionUpdate::ProcessEnded(i, r) => (i, vec![r]),
            SessionUpdate::Ended(i, rs) => (i, rs.iter().collect()),
        };
        let st = self.sessions.entry(info.id).or_default();
        st.info = Some(info.clone());
        for r in recs {
            st.names.insert(
                r.key,
                Names {
                    parent: r.parent,
                    images: r.images.iter().map(|i| (i.start_ns, escape(&i.command_name()))).collect(),
                },
            );
            for img in &r.images {
                st.written.extend(eval::written_paths(&img.files).map(<[u8]>::to_vec));
                let own = ids::image_span_id(&self.boot_id, r.key, img.exec_index);
                st.span_of.insert(own, r.key);
                for ci in 0..img.connects.len() {
                    st.span_of.insert(ids::connect_span_id(own, ci as u32), r.key);
                }
            }
            st.pending.insert(r.key, r.clone());
        }
    }

    /// Adds alert events to the spans of `out`, and the session marks to each root.
    pub fn annotate(&mut self, rules: &[Arc<Rule>], out: &mut Output) {
        for (sid, b) in out.spans.iter_mut() {
            let sid = *sid;
            let Some(mut st) = self.sessions.remove(&sid) else { continue };
            if b.root {
                let keys: Vec<ProcessKey> = st.pending.keys().copied().collect();
                for k in keys {
                    self.evaluate(rules, sid, &mut st, k);
                }
                // alerts whose span was not exported (capped, folded) are kept on the root
                let mut left: Vec<Alert> = st.alerts.drain().flat_map(|(_, v)| v).collect();
                left.sort_by_key(|a| a.ts_ns);
                self.attach(&mut b.span, &left);
                mark_root(&mut b.span, &st);
                self.who.forget(sid);
                continue;
            }
            let id = b.span.span_context.span_id();
            if let Some(k) = st.span_of.get(&id).copied() {
                self.evaluate(rules, sid, &mut st, k);
            }
            if let Some(alerts) = st.alerts.remove(&id) {
                self.attach(&mut b.span, &alerts);
            }
            self.sessions.insert(sid, st);
        }
    }

    /// Evaluates one pending record; its alerts wait for their spans.
    fn evaluate(&self, rules: &[Arc<Rule>], sid: SessionId, st: &mut SessionState, key: ProcessKey) {
        let Some(rec) = st.pending.remove(&key) else { return };
        let Some(info) = st.info.as_ref() else { return };
        let who = self.who.get(sid);
        let ctx = SessionCtx { info, who: who.as_ref(), attribution_configured: self.attribution_configured };
        let chain = ancestors(st, info, &rec);
        let alerts = eval::evaluate(rules, ctx, &rec, &chain, &st.written, &self.scope);
        for a in alerts {
            st.count += 1;
            st.max = st.max.max(Some(a.rule.severity));
            self.fired
                .get_or_create(&vec![("rule", a.rule.name.clone()), ("severity", a.rule.severity.as_str().to_owned())])
                .inc();
            st.fired.insert(a.rule.name.clone());
            let own = ids::image_span_id(
                &self.boot_id,
                rec.key,
                match a.target {
                    Target::Image { exec_index } | Target::Connect { exec_index, .. } => exec_index,
                },
            );
            let span = match a.target {
                Target::Image { .. } => own,
                Target::Connect { index, .. } => ids::connect_span_id(own, index),
            };
            st.alerts.entry(span).or_default().push(a);
        }
        for img in &rec.images {
            let own = ids::image_span_id(&self.boot_id, rec.key, img.exec_index);
            st.span_of.remove(&own);
            for ci in 0..img.connects.len() {
                st.span_of.remove(&ids::connect_span_id(own, ci as u32));
            }
        }
    }

    fn attach(&self, span: &mut SpanData, alerts: &[Alert]) {
        for a in alerts {
            span.events.events.push(alert_event(&self.clock, a));
        }
    }
}

/// The span event for one alert: `security_rule.*` where the semantic conventions have a key,
/// podtrail's own for the severity and the file it is about.
pub fn alert_event(clock: &BootClock, a: &Alert) -> Event {
    let r = &a.rule;
    let mut attrs = vec![
        KeyValue::new(sc::SECURITY_RULE_NAME, r.name.clone()),
        KeyValue::new(sc::SECURITY_RULE_DESCRIPTION, r.description.clone()),
        KeyValue::new(sc::SECURITY_RULE_RULESET_NAME, r.ruleset.clone()),
        KeyValue::new(keys::ALERT_SEVERITY, r.severity.as_str()),
        KeyValue::new(keys::ALERT_SEVERITY_NUMBER, r.severity.number()),
    ];
    if let Some(c) = &r.category {
        attrs.push(KeyValue::new(sc::SECURITY_RULE_CATEGORY, c.clone()));
    }
    if let Some(u) = &r.reference {
        attrs.push(KeyValue::new(sc::SECURITY_RULE_REFERENCE, u.clone()));
    }
    if let Some(f) = &a.file {
        attrs.push(KeyValue::new(keys::FILE_OP, f.op.as_str()));
        attrs.push(KeyValue::new(sc::FILE_PATH, escape(&f.path)));
        if let Some(p2) = &f.path2 {
            attrs.push(KeyValue::new(keys::FILE_PATH2, escape(p2)));
        }
    }
    Event::new("alert", clock.to_system_time(a.ts_ns), attrs, 0)
}

fn mark_root(root: &mut SpanData, st: &SessionState) {
    if st.count == 0 {
        return;
    }
    root.attributes.push(KeyValue::new(keys::ALERTS_COUNT, st.count as i64));
    if let Some(m) = st.max {
        root.attributes.push(KeyValue::new(keys::ALERTS_MAX_SEVERITY, m.as_str()));
        root.attributes.push(KeyValue::new(keys::ALERTS_MAX_SEVERITY_NUMBER, m.number()));
    }
    let names: Vec<opentelemetry::StringValue> = st.fired.iter().map(|n| n.clone().into()).collect();
    root.attributes.push(KeyValue::new(keys::ALERTS_RULES, opentelemetry::Value::Array(names.into())));
}

/// Command names of `rec`'s ancestors in the session, nearest first, as far as known: a
/// parent that still runs has no record yet, except the session's root, whose command is in
/// the session info.
fn ancestors(st: &SessionState, info: &SessionInfo, rec: &ProcessRecord) -> Vec<String> {
    let mut out = Vec::new();
    let (mut cur, mut at) = (rec.parent, rec.fork_ns);
    while let Some(k) = cur {
        if out.len() >= 16 || k == rec.key {
            break;
        }
        match st.names.get(&k) {
            Some(n) => {
                let name = n.images.iter().rev().find(|(s, _)| *s <= at).or(n.images.first()).map(|(_, c)| c.clone());
                out.extend(name);
                cur = n.parent;
                at = k.start_ns;
            }
            None if k == info.id.0 => {
                out.extend(info.root_argv.first().map(|a| escape(basename(a))));
                break;
            }
            None => break,
        }
    }
    out
}
