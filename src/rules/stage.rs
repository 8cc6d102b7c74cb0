//! The alert stage, after the span stage: it reads what the span stage did in one step
//! ([`Output`]): who opened each session it let out of the hold, what members of live sessions
//! did as it happened (execs, connects, file operations), the final records it built spans
//! from, and the spans. It evaluates the rules when the span stage has the identity: what
//! happened at once (each alert sent as an `alert` span under the session's root, so it is
//! searchable within seconds, whatever the process does next), and a process's final record
//! in the output that brings it, before its spans pass (raising only what was not raised live);
//! every match is also a span event on the span it belongs to, and the session's root carries the count, the highest severity and the rules
//! that fired.
//!
//! Why here: the identity (user, groups, source IP, attributed or not) exists only once the
//! span stage's hold has released a session, and the span ids of a record's spans are derived
//! from the record, so an alert names the span of the image or connect it is about.
//!
//! In: [`Output`]s of the span stage (built [`crate::spans::SpanStage::with_records`]). Out: the
//! same, with `alert` spans, alert events, and `podtrail.alerts.*` on roots. Dropped: nothing.
//! A span the caps refused that raised an alert is kept after all (up to the second cap's room
//! a session, taken off the root's capped count); an alert whose span was not exported (over
//! that, folded into a repeat) goes on the root instead. Per session, memory is bounded: names kept for ancestry (`MAX_NAMES`, least
//! recently used forgotten), written paths (`MAX_WRITTEN`), and live alerts waiting for their
//! process's final record (`MAX_LIVE`; past it a match waits for that record, counted).

use std::borrow::Cow;
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use opentelemetry::trace::{Event, SpanId};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::SpanData;
use opentelemetry_semantic_conventions::attribute as sc;

use super::eval::{self, Alert, Target};
use super::lang::{Rule, Severity};
use super::subject::SessionCtx;
use crate::capture::event::ProcessKey;
use crate::clock::BootClock;
use crate::hashing::FastMap;
use crate::lru::FastLru;
use crate::model::{Live, ProcessRecord, SessionId, SessionInfo};
use crate::scope::ScopeConfig;
use crate::spans::build::{file_attrs, live_span, SessionFrame, ALERT_SPAN};
use crate::spans::hold::{LiveUpdate, Output};
use crate::spans::{ids, keys, BuiltSpan, Capped, EndedRecord, SessionIdentity};
use crate::text::{basename, escaped};

/// A process's images as its descendants see them: (start, command name).
struct Names {
    parent: Option<ProcessKey>,
    /// The names are shared ([`RecentNames`]).
    images: Vec<(u64, Arc<str>)>,
}

/// The command names the stage kept last, which a new process's image shares when its name is
/// one of them (compared, not hashed): in issue 15's storm every ended process kept two new
/// strings, its command's and its shell's, for up to `MAX_NAMES` processes (exec20). Not per
/// session: a session's memory stays as it was.
#[derive(Default)]
struct RecentNames {
    names: [Option<Arc<str>>; RECENT_NAMES],
    /// Replaced next.
    next: usize,
}

/// Names [`RecentNames`] holds.
const RECENT_NAMES: usize = 4;

impl RecentNames {
    /// `name`, shared with an equal one kept last when there is one.
    fn share(&mut self, name: Cow<'_, str>) -> Arc<str> {
        if let Some(n) = self.names.iter().flatten().find(|n| ***n == *name) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(name.as_ref());
        self.names[self.next] = Some(n.clone());
        self.next = (self.next + 1) % RECENT_NAMES;
        n
    }
}

/// Processes whose names a session's rules remember for their descendants' ancestry (the
/// least recently used forgotten first: a chain then ends early, and no more).
const MAX_NAMES: usize = 16_384;
/// Paths a session's rules remember as written ("download then execute"); past it, new
/// paths are not remembered.
const MAX_WRITTEN: usize = 4_096;
/// Alerts a session raises live that wait for their process's final record (which must not
/// raise them again): past it, a live match is left for that record (late, not lost), counted
/// in `podtrail_alerts_deferred_total`.
const MAX_LIVE: usize = 4_096;

/// The target of an alert `what` a live update says, in the real image's numbering (a live
/// connect travels alone, as record 0); None for an alert about something else.
fn said(what: Live, exec_index: u32, a: &Alert) -> Option<Target> {
    match (what, a.target) {
        (Live::Exec, Target::Image { exec_index: e }) if e == exec_index && a.file.is_none() => Some(a.target),
        (Live::File, Target::Image { exec_index: e }) if e == exec_index && a.file.is_some() => Some(a.target),
        (Live::Net { index }, Target::Connect { exec_index: e, index: 0 }) if e == exec_index => {
            Some(Target::Connect { exec_index: e, index })
        }
        _ => None,
    }
}

struct SessionState {
    /// Shared with the other stages (one per session and change).
    info: Option<Arc<SessionInfo>>,
    /// Who the span stage says opened the session (its `Output::identified`).
    who: Option<SessionIdentity>,
    /// Alerts already raised live, per process: (rule, span, time). The final record's
    /// evaluation does not raise them again, and forgets its process's set.
    /// (The maps keyed by process key or span id hash with [`crate::hashing::FastState`].)
    raised: FastMap<ProcessKey, HashSet<(String, SpanId, u64)>>,
    /// Alerts raised live whose process's record has not been evaluated yet (bounded by
    /// `MAX_LIVE`).
    live_waiting: usize,
    names: FastLru<ProcessKey, Names>,
    /// Evaluated, waiting for their span (or the root). A record is evaluated in the output
    /// that takes it, before that output's spans pass: nothing per process is kept past the
    /// output but its names and these alerts.
    alerts: FastMap<SpanId, Vec<Alert>>,
    written: HashSet<Vec<u8>>,
    count: u64,
    max: Option<Severity>,
    fired: BTreeSet<String>,
    /// Spans the caps refused that this stage kept for their alerts: image, connect.
    kept_process: u64,
    kept_network: u64,
}

impl Default for SessionState {
    fn default() -> Self {
        SessionState {
            info: None,
            who: None,
            raised: FastMap::default(),
            live_waiting: 0,
            names: FastLru::with_hasher(MAX_NAMES),
            alerts: FastMap::default(),
            written: HashSet::new(),
            count: 0,
            max: None,
            fired: BTreeSet::new(),
            kept_process: 0,
            kept_network: 0,
        }
    }
}

/// The rules the stage applies: swapped whole on reload.
pub type RuleSet = Arc<Vec<Arc<Rule>>>;

pub struct AlertStage {
    boot_id: [u8; 16],
    clock: BootClock,
    scope: ScopeConfig,
    attribution_configured: bool,
    sessions: FastMap<SessionId, SessionState>,
    /// `podtrail_alerts_total{rule, severity}`: every alert raised, as it is raised.
    fired: crate::metrics::AlertCounter,
    /// `podtrail_alerts_deferred_total`: live matches past `MAX_LIVE`, left for the final record.
    deferred: prometheus_client::metrics::counter::Counter,
    /// Spans the caps refused a session may still keep here because they raised an alert.
    keep_over_cap: u64,
    /// The command names kept last, shared by the sessions' [`Names`].
    names: RecentNames,
}

impl AlertStage {
    pub fn new(boot_id: [u8; 16], clock: BootClock, scope: ScopeConfig, attribution_configured: bool) -> Self {
        AlertStage {
            boot_id,
            clock,
            scope,
            attribution_configured,
            sessions: FastMap::default(),
            fired: Default::default(),
            deferred: Default::default(),
            keep_over_cap: {
                let d = crate::spans::SpansConfig::default();
                d.max_kept_spans_per_session.saturating_sub(d.max_spans_per_session) as u64
            },
            names: RecentNames::default(),
        }
    }

    /// Counts every alert into `counter` (a handle on the agent's `podtrail_alerts_total`).
    pub fn counting(mut self, counter: crate::metrics::AlertCounter) -> Self {
        self.fired = counter;
        self
    }

    /// Spans the caps refused that a session keeps at most for their alerts (the agent gives
    /// the room of the second cap: `max_kept_spans_per_session - max_spans_per_session`).
    pub fn keeping(mut self, n: u64) -> Self {
        self.keep_over_cap = n;
        self
    }

    /// Counts live matches left for the final record into `counter` (the agent's
    /// `podtrail_alerts_deferred_total`).
    pub fn deferring(mut self, counter: prometheus_client::metrics::counter::Counter) -> Self {
        self.deferred = counter;
        self
    }

    /// Sessions whose root has not passed yet.
    pub fn open(&self) -> usize {
        self.sessions.len()
    }

    /// A final record the span stage built spans from: its names for its descendants, the
    /// paths it wrote (it is evaluated once the output's live updates are in).
    fn take_record(&mut self, info: Arc<SessionInfo>, r: &EndedRecord) {
        let st = self.sessions.entry(info.id).or_default();
        st.info = Some(info);
        if r.leaf {
            // no descendant to name it: what its live execs left goes once the output's
            // records are evaluated (`annotate`)
            Self::take_written(st, r);
            return;
        }
        // the names its live execs left are kept; only the images not seen live are escaped
        let n = st
            .names
            .get_or_insert_with(r.key, || Names { parent: r.parent, images: Vec::with_capacity(r.images.len()) });
        n.parent = r.parent;
        let before = n.images.len();
        for i in &r.images {
            if !n.images[..before].iter().any(|(s, _)| *s == i.start_ns) {
                n.images.push((i.start_ns, self.names.share(escaped(i.command_bytes()))));
            }
        }
        if before > 0 && n.images.len() > before {
            n.images.sort_by_key(|(s, _)| *s);
        }
        Self::take_written(st, r);
    }

    /// The paths a final record wrote, for "download then execute".
    fn take_written(st: &mut SessionState, r: &EndedRecord) {
        for img in &r.images {
            for p in eval::written_paths(&img.files) {
                if st.written.len() < MAX_WRITTEN {
                    st.written.insert(p.to_vec());
                }
            }
        }
    }

    /// Raises the alerts of the execs in `out` as `alert` spans, adds alert events to the
    /// spans of `out`, and the session marks to each root.
    pub fn annotate(&mut self, rules: &[Arc<Rule>], out: &mut Output) {
        for (sid, who) in out.identified.drain(..) {
            self.sessions.entry(sid).or_default().who = who;
        }
        let mut taken = Vec::with_capacity(out.records.len());
        for (info, r) in std::mem::take(&mut out.records) {
            let sid = info.id;
            self.take_record(info, &r);
            taken.push((sid, r));
        }
        // the sessions' states are worked on in place, out of `self` meanwhile (a state moved
        // out of the map and back per update was a memmove of the whole struct and two hashes,
        // per exec, in issue 15's profile)
        let mut sessions = std::mem::take(&mut self.sessions);
        let mut live = Vec::new();
        for x in out.live.drain(..) {
            let LiveUpdate { session, info, record, what, frame } = x;
            let st = sessions.entry(session).or_default();
            st.info = Some(info); // shared: a reference, not a copy, per exec in a storm
                                  // the live image's name, for the descendants it forks
                                  // room for the image it forked with too (its final record brings that name)
            let n = st
                .names
                .get_or_insert_with(record.key, || Names { parent: record.parent, images: Vec::with_capacity(2) });
            if let Some(img) = record.images.last().filter(|i| !n.images.iter().any(|(s, _)| *s == i.start_ns)) {
                n.images.push((img.start_ns, self.names.share(escaped(img.command_bytes()))));
            }
            for span in self.raise(rules, st, &record, what, &frame) {
                live.push((session, BuiltSpan { span, root: false }));
            }
        }
        // the records taken, evaluated once their session's live updates are in and before
        // any span passes: each alert waits for its span in this output (or a later one, or
        // the root). (They were evaluated as their spans passed, found by a map of every
        // span id to its record, two entries per exec in the storm: the same alerts, as
        // nothing an evaluation reads changes while the spans pass.)
        for (sid, r) in &taken {
            if let Some(st) = sessions.get_mut(sid) {
                self.evaluate(rules, st, r);
            }
        }
        // a leaf's names were for no one but its descendants, all evaluated by now (they
        // ended before it: earlier in this output or in an earlier one)
        for (sid, r) in taken.iter().filter(|(_, r)| r.leaf) {
            if let Some(st) = sessions.get_mut(sid) {
                st.names.remove(&r.key);
            }
        }
        self.sessions = sessions;
        out.spans.splice(0..0, live);
        let kept = self.keep_alerted(out);
        out.spans.splice(0..0, kept);
        let mut sessions = std::mem::take(&mut self.sessions);
        for (sid, b) in out.spans.iter_mut() {
            let sid = *sid;
            if b.root {
                let Some(mut st) = sessions.remove(&sid) else { continue };
                // alerts whose span was not exported (capped, folded) are kept on the root
                let mut left: Vec<Alert> = st.alerts.drain().flat_map(|(_, v)| v).collect();
                left.sort_by_key(|a| a.ts_ns);
                self.attach(&mut b.span, &left);
                mark_root(&mut b.span, &st);
                crate::spans::build::kept_for_alerts(&mut b.span, st.kept_process, st.kept_network);
                continue;
            }
            let Some(st) = sessions.get_mut(&sid) else { continue };
            let id = b.span.span_context.span_id();
            if let Some(alerts) = st.alerts.remove(&id) {
                self.attach(&mut b.span, &alerts);
            }
        }
        self.sessions = sessions;
    }

    /// The spans the caps refused ([`Output::over_cap`]): those that raised an alert are kept
    /// (up to `keep_over_cap` a session; their events are attached as they pass), the rest
    /// dropped (the span stage counted them as capped on the root; what is kept here is taken
    /// off that count there).
    fn keep_alerted(&mut self, out: &mut Output) -> Vec<(SessionId, BuiltSpan)> {
        let mut kept = Vec::new();
        for (sid, c) in std::mem::take(&mut out.over_cap) {
            let Some(st) = self.sessions.get_mut(&sid) else { continue };
            let id = c.span.span_context.span_id();
            if st.alerts.contains_key(&id) && st.kept_process + st.kept_network < self.keep_over_cap {
                match c.kind {
                    Capped::Process => st.kept_process += 1,
                    Capped::Network => st.kept_network += 1,
                }
                kept.push((sid, BuiltSpan { span: c.span, root: false }));
            }
        }
        kept
    }

    /// The span an alert is about: its image's, or one of the image's connects.
    fn span_of(&self, key: ProcessKey, t: Target) -> SpanId {
        let exec_index = match t {
            Target::Image { exec_index } | Target::Connect { exec_index, .. } => exec_index,
        };
        let own = ids::image_span_id(&self.boot_id, key, exec_index);
        match t {
            Target::Image { .. } => own,
            Target::Connect { index, .. } => ids::connect_span_id(own, index),
        }
    }

    /// Counts an alert on its session and in `podtrail_alerts_total` (once, as it is raised);
    /// it waits for its span to pass (as an event on it).
    fn record(&self, st: &mut SessionState, span: SpanId, a: Alert) {
        self.fired
            .get_or_create(&vec![("rule", a.rule.name.clone()), ("severity", a.rule.severity.as_str().to_owned())])
            .inc();
        st.count += 1;
        st.max = st.max.max(Some(a.rule.severity));
        st.fired.insert(a.rule.name.clone());
        st.alerts.entry(span).or_default().push(a);
    }

    /// The rules over what a live member just did (an exec, a connect, a file operation),
    /// with the identity the span stage has: each alert at once as an `alert` span under the
    /// session's root (the root closes the trace later, so the tree holds whatever order they
    /// arrive in), and later as an event on the span it is about. Past `MAX_LIVE` alerts
    /// waiting for their process's end, the rest wait for it too (counted).
    fn raise(
        &self,
        rules: &[Arc<Rule>],
        st: &mut SessionState,
        record: &ProcessRecord,
        what: Live,
        frame: &SessionFrame,
    ) -> Vec<SpanData> {
        let Some(info) = st.info.as_ref() else { return vec![] };
        let Some(img) = record.images.last() else { return vec![] };
        let ctx = SessionCtx { info, who: st.who.as_ref(), attribution_configured: self.attribution_configured };
        let chain = ancestors(st, info, record);
        let alerts = eval::evaluate(rules, ctx, record, &chain, &st.written, &self.scope);
        let mut out = Vec::new();
        for a in alerts {
            // only what the update says: the image before it came along to say whether this
            // is the first exec, and the new image's exec was said when it was new
            let Some(target) = said(what, img.exec_index, &a) else { continue };
            let about = self.span_of(record.key, target);
            let key = (a.rule.name.clone(), about, a.ts_ns);
            if st.raised.get(&record.key).is_some_and(|r| r.contains(&key)) {
                continue;
            }
            if st.live_waiting >= MAX_LIVE {
                self.deferred.inc();
                continue; // raised when the process's record is final, as before live alerts
            }
            st.live_waiting += 1;
            st.raised.entry(record.key).or_default().insert(key);
            let id = ids::alert_span_id(about, &a.rule.name, a.ts_ns);
            let mut attrs = alert_event(&self.clock, &a).attributes;
            attrs.push(KeyValue::new(sc::PROCESS_PID, record.key.pid as i64));
            attrs.push(KeyValue::new(sc::PROCESS_COMMAND, escaped(img.command_bytes()).into_owned()));
            attrs.push(KeyValue::new(keys::ALERT_SPAN_ID, about.to_string()));
            let at = self.clock.to_system_time(a.ts_ns);
            out.push(live_span(frame, id, frame.root_id, ALERT_SPAN, at, attrs));
            self.record(st, about, a);
        }
        out
    }

    /// Evaluates one final record; its alerts wait for their spans.
    fn evaluate(&self, rules: &[Arc<Rule>], st: &mut SessionState, rec: &EndedRecord) {
        let key = rec.key;
        let Some(info) = st.info.as_ref() else { return };
        let ctx = SessionCtx { info, who: st.who.as_ref(), attribution_configured: self.attribution_configured };
        let chain = ancestors(st, info, rec);
        let alerts = eval::evaluate(rules, ctx, &rec.record, &chain, &st.written, &self.scope);
        let raised = st.raised.remove(&key).unwrap_or_default();
        st.live_waiting = st.live_waiting.saturating_sub(raised.len());
        for a in alerts {
            let span = match a.target {
                Target::Image { exec_index } => rec.ids.of_exec(exec_index, None),
                Target::Connect { exec_index, index } => rec.ids.of_exec(exec_index, Some(index)),
            }
            .unwrap_or_else(|| self.span_of(rec.key, a.target));
            if raised.contains(&(a.rule.name.clone(), span, a.ts_ns)) {
                continue; // raised when it happened
            }
            self.record(st, span, a);
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
        file_attrs(f, &mut attrs);
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

/// Ancestors a chain names at most.
const MAX_CHAIN: usize = 16;

/// Command names of a process's ancestors, nearest first, on the stack (the chain was a `Vec`
/// made and freed per evaluation: twice per exec in issue 15's storm, exec20).
struct Chain<'a> {
    names: [Cow<'a, str>; MAX_CHAIN],
    len: usize,
}

impl<'a> Chain<'a> {
    fn len(&self) -> usize {
        self.len
    }

    fn extend(&mut self, name: Option<Cow<'a, str>>) {
        if let Some(n) = name.filter(|_| self.len < MAX_CHAIN) {
            self.names[self.len] = n;
            self.len += 1;
        }
    }
}

impl<'a> std::ops::Deref for Chain<'a> {
    type Target = [Cow<'a, str>];
    fn deref(&self) -> &[Cow<'a, str>] {
        &self.names[..self.len]
    }
}

/// Command names of `rec`'s ancestors in the session, nearest first, as far as known: a
/// parent that still runs has no record yet, except the session's root, whose command is in
/// the session info.
fn ancestors<'a>(st: &'a SessionState, info: &'a SessionInfo, rec: &ProcessRecord) -> Chain<'a> {
    let mut out = Chain { names: std::array::from_fn(|_| Cow::Borrowed("")), len: 0 };
    let (mut cur, mut at) = (rec.parent, rec.fork_ns);
    while let Some(k) = cur {
        if out.len() >= MAX_CHAIN || k == rec.key {
            break;
        }
        match st.names.peek(&k) {
            Some(n) => {
                let name = n
                    .images
                    .iter()
                    .rev()
                    .find(|(s, _)| *s <= at)
                    .or(n.images.first())
                    .map(|(_, c)| Cow::Borrowed(&**c));
                out.extend(name);
                cur = n.parent;
                at = k.start_ns;
            }
            None if k == info.id.0 => {
                out.extend(info.root_argv.first().map(|a| escaped(basename(a))));
                break;
            }
            None => break,
        }
    }
    out
}
