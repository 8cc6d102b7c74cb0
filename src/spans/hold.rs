//! The hold stage: a session's updates wait here (bounded in number and time) for its
//! attribution, so that the trace id and the identity attributes are right on every span.
//! Once released (attributed, deadline passed, hold full, or shutdown), a session's updates
//! become spans immediately.
//!
//! Kinds no Kubernetes request can stand behind (node, watched, outbound) are not held.
//!
//! A session released unattributed is remembered (bounded by `late_max_sessions` and
//! `late_ms`) with its trace and root span ids; while remembered it asks the attributor again
//! whenever a record may have arrived ([`Attributor::revision`]), and a match adds one
//! `attribution` span to the trace already exported ([`Output::late`]). Records answer such a
//! late question only once they have been held a while (`settle`), so a record meant for a new
//! session that is about to ask is not taken by an older unattributed one.
//!
//! A session marked as an exec probe (`SessionInfo::probe`: its command is one of the
//! container's probe commands) is dropped when it leaves the hold unattributed and without a
//! terminal: nothing but the kubelet explains it. Matched by a request, or with a terminal, it
//! is a session like any other (`echo id | kubectl exec -i pod -- sh` against a probe of
//! `["sh"]`). Either outcome is counted ([`Output::probes`]).
//!
//! In: `SessionUpdate`s; an [`Attributor`] asked on each tick. Out: [`Output`]: spans with
//! their session, late attribution spans. Dropped: nothing is dropped from a trace; a session
//! released without attribution is exported with `podtrail.attribution.source=none`, how each
//! was released is counted, and so is every remembered session forgotten before a record came
//! ([`Output::forgotten`]: expired, overflow).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::SpanData;

use super::build::BuildCtx;
use super::identity::Attributor;
use super::session::{BuiltSpan, SessionSpans};
use crate::model::{SessionId, SessionInfo, SessionUpdate};

/// Why a held session was let go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Release {
    Attributed,
    Deadline,
    Overflow,
    Shutdown,
    /// A kind no Kubernetes request stands behind: not held at all.
    Unattributable,
}

impl Release {
    pub fn as_str(self) -> &'static str {
        match self {
            Release::Attributed => "attributed",
            Release::Deadline => "deadline",
            Release::Overflow => "overflow",
            Release::Shutdown => "shutdown",
            Release::Unattributable => "unattributable",
        }
    }
}

/// What the stage produced for one session in one step.
#[derive(Debug, Default)]
pub struct Output {
    pub spans: Vec<(SessionId, BuiltSpan)>,
    pub released: Vec<Release>,
    /// Sessions whose root was built (ended), with whether they were incomplete.
    pub ended: Vec<(SessionId, bool)>,
    /// Attribution spans added to traces exported unattributed (their roots have passed).
    pub late: Vec<Late>,
    /// Remembered unattributed sessions given up on: "expired" (no record within `late_ms`),
    /// "overflow" (`late_max_sessions` reached).
    pub forgotten: Vec<&'static str>,
    /// Sessions marked as probes, by outcome: "dropped" (no request, no terminal) or
    /// "session" (exported).
    pub probes: Vec<&'static str>,
}

/// A record that arrived after its session was exported unattributed, and the span it adds.
#[derive(Debug)]
pub struct Late {
    pub session: SessionId,
    pub span: SpanData,
    pub audit_id: Option<String>,
    pub user: Option<String>,
    /// From the session's unattributed release to the match.
    pub delay: Duration,
}

/// A session released unattributed, waiting for a record that arrives late.
struct Unattributed {
    info: SessionInfo,
    trace_id: TraceId,
    root_id: SpanId,
    released: Instant,
}

struct Held {
    deadline: Instant,
    updates: Vec<SessionUpdate>,
    info: SessionInfo,
}

pub struct SpanStage {
    ctx: BuildCtx,
    attributor: Arc<dyn Attributor>,
    hold_for: std::time::Duration,
    max_held: usize,
    held: HashMap<SessionId, Held>,
    order: VecDeque<SessionId>,
    live: HashMap<SessionId, SessionSpans>,
    late_for: Duration,
    max_late: usize,
    /// Records younger than this do not answer late questions.
    settle: Duration,
    unattributed: HashMap<SessionId, Unattributed>,
    unattributed_order: VecDeque<SessionId>,
    /// The attributor's last revision and when it was first seen.
    revision: Option<(Option<u64>, Instant)>,
    /// Probe sessions dropped while still open: their later updates are dropped too.
    dropped: std::collections::HashSet<SessionId>,
}

impl SpanStage {
    pub fn new(ctx: BuildCtx, attributor: Arc<dyn Attributor>) -> Self {
        let hold_for = ctx.cfg.hold.deadline();
        let max_held = ctx.cfg.hold.max_sessions.max(1);
        let (late_for, max_late) = (ctx.cfg.hold.late(), ctx.cfg.hold.late_max_sessions);
        SpanStage {
            ctx,
            attributor,
            hold_for,
            max_held,
            held: HashMap::new(),
            order: VecDeque::new(),
            live: HashMap::new(),
            late_for,
            max_late,
            settle: hold_for.min(Duration::from_secs(10)),
            unattributed: HashMap::new(),
            unattributed_order: VecDeque::new(),
            revision: None,
            dropped: Default::default(),
        }
    }

    /// Sessions exported unattributed still waiting for a late record.
    pub fn unattributed(&self) -> usize {
        self.unattributed.len()
    }

    pub fn ctx(&self) -> &BuildCtx {
        &self.ctx
    }

    /// Sessions open (held or live).
    pub fn open(&self) -> usize {
        self.held.len() + self.live.len()
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }

    pub fn update(&mut self, u: SessionUpdate, now: Instant, out: &mut Output) {
        let info = match &u {
            SessionUpdate::Started(i) | SessionUpdate::ProcessEnded(i, _) | SessionUpdate::Ended(i, _) => i,
        };
        let id = info.id;
        if self.dropped.contains(&id) {
            if matches!(u, SessionUpdate::Ended(..)) {
                self.dropped.remove(&id);
            }
            return;
        }
        if let Some(w) = self.unattributed.get_mut(&id) {
            w.info = info.clone(); // pod metadata may arrive after the release
        }
        if self.live.contains_key(&id) {
            self.apply(id, u, out);
            return;
        }
        if let Some(h) = self.held.get_mut(&id) {
            h.info = info.clone();
            if !matches!(u, SessionUpdate::Started(_)) {
                h.updates.push(u);
            }
            return;
        }
        if !info.kind.attributable() {
            self.live.insert(id, SessionSpans::new(&self.ctx, info.clone(), None));
            out.released.push(Release::Unattributable);
            self.apply(id, u, out);
            return;
        }
        // New session (or one whose Started we missed): ask once, hold if there is time.
        if let Some(who) = self.attributor.attribute(info) {
            if info.probe {
                out.probes.push("session");
            }
            self.live.insert(id, SessionSpans::new(&self.ctx, info.clone(), Some(who)));
            out.released.push(Release::Attributed);
            self.apply(id, u, out);
            return;
        }
        if self.hold_for.is_zero() {
            if self.drop_probe(info, matches!(u, SessionUpdate::Ended(..)), out) {
                out.released.push(Release::Deadline);
                return;
            }
            let s = SessionSpans::new(&self.ctx, info.clone(), None);
            self.remember(&s, now, out);
            self.live.insert(id, s);
            out.released.push(Release::Deadline);
            self.apply(id, u, out);
            return;
        }
        let updates = if matches!(u, SessionUpdate::Started(_)) { vec![] } else { vec![u.clone()] };
        self.held.insert(id, Held { deadline: now + self.hold_for, updates, info: info.clone() });
        self.order.push_back(id);
        while self.held.len() > self.max_held {
            match self.order.pop_front() {
                Some(old) => self.release_with(old, None, Release::Overflow, now, out),
                None => break,
            }
        }
    }

    /// Asks the attributor again for every held session; releases those attributed or due.
    pub fn tick(&mut self, now: Instant, out: &mut Output) {
        let ids: Vec<SessionId> = self.order.iter().copied().collect();
        for id in ids {
            let Some(h) = self.held.get(&id) else { continue };
            if let Some(who) = self.attributor.attribute(&h.info) {
                self.release_with(id, Some(who), Release::Attributed, now, out);
            } else if now >= h.deadline {
                self.release_with(id, None, Release::Deadline, now, out);
            }
        }
        self.ask_late(now, false, out);
    }

    /// Asks again for the sessions exported unattributed (when the attributor's records may
    /// have changed, or always when `all`), and forgets those past `late_for`.
    fn ask_late(&mut self, now: Instant, all: bool, out: &mut Output) {
        while let Some(id) = self.unattributed_order.front().copied() {
            match self.unattributed.get(&id) {
                Some(w) if now.saturating_duration_since(w.released) < self.late_for => break,
                Some(_) => {
                    self.unattributed.remove(&id);
                    out.forgotten.push("expired");
                }
                None => {}
            }
            self.unattributed_order.pop_front();
        }
        if self.unattributed.is_empty() {
            return;
        }
        let rev = self.attributor.revision();
        let changed_at = match self.revision {
            Some((r, at)) if r == rev => at,
            _ => now,
        };
        self.revision = Some((rev, changed_at));
        // Records that arrived with the last change answer once settled: keep asking until
        // then, then only when something new arrives.
        let quiet = now.saturating_duration_since(changed_at) > self.settle + 2 * self.ctx.cfg.hold.poll();
        if !all && rev.is_some() && quiet {
            return;
        }
        let settle = if all { Duration::ZERO } else { self.settle };
        let ids: Vec<SessionId> = self.unattributed_order.iter().copied().collect();
        for id in ids {
            let Some(w) = self.unattributed.get(&id) else { continue };
            let Some(who) = self.attributor.attribute_late(&w.info, settle) else { continue };
            let w = self.unattributed.remove(&id).expect("checked above");
            self.unattributed_order.retain(|x| *x != id);
            let delay = now.saturating_duration_since(w.released);
            let span = super::build::attribution_span(&self.ctx, w.trace_id, w.root_id, &w.info, &who, delay);
            out.late.push(Late {
                session: id,
                span,
                audit_id: who.audit_id.clone(),
                user: who.user_name.clone(),
                delay,
            });
        }
    }

    /// A session leaving the hold unattributed: when it is marked as a probe and has no
    /// terminal, nothing but the probe explains it, and it is dropped (its later updates too,
    /// unless it has `ended`). True when dropped. Counted either way.
    fn drop_probe(&mut self, info: &SessionInfo, ended: bool, out: &mut Output) -> bool {
        if !info.probe {
            return false;
        }
        if info.root_tty {
            out.probes.push("session");
            return false;
        }
        out.probes.push("dropped");
        if !ended {
            self.dropped.insert(info.id);
        }
        true
    }

    /// A session leaves the hold without attribution: remember it for a late record.
    fn remember(&mut self, s: &SessionSpans, now: Instant, out: &mut Output) {
        let info = s.info();
        if !info.kind.attributable() || self.late_for.is_zero() || self.max_late == 0 {
            return;
        }
        let w = Unattributed { info: info.clone(), trace_id: s.trace_id(), root_id: s.root_id(), released: now };
        if self.unattributed.insert(info.id, w).is_none() {
            self.unattributed_order.push_back(info.id);
        }
        while self.unattributed.len() > self.max_late {
            match self.unattributed_order.pop_front() {
                Some(old) => {
                    if self.unattributed.remove(&old).is_some() {
                        out.forgotten.push("overflow");
                    }
                }
                None => break,
            }
        }
    }

    /// The agent is stopping: release every held session (one last attribution attempt) and
    /// end every live one at `stop_ns`, marked incomplete.
    pub fn shutdown(&mut self, stop_ns: u64, out: &mut Output) {
        // the last chance for records that arrived late (every record, settled or not)
        self.ask_late(Instant::now(), true, out);
        let ids: Vec<SessionId> = self.order.iter().copied().collect();
        for id in ids {
            let who = self.held.get(&id).and_then(|h| self.attributor.attribute(&h.info));
            let how = if who.is_some() { Release::Attributed } else { Release::Shutdown };
            self.release_with(id, who, how, Instant::now(), out);
        }
        let live: Vec<SessionId> = self.live.keys().copied().collect();
        for id in live {
            if let Some(s) = self.live.remove(&id) {
                let mut info = s.info().clone();
                info.incomplete = true;
                info.end_ns = Some(info.end_ns.unwrap_or(stop_ns));
                self.finish(id, s, info, vec![], out);
            }
        }
    }

    fn release_with(
        &mut self,
        id: SessionId,
        who: Option<super::identity::SessionIdentity>,
        how: Release,
        now: Instant,
        out: &mut Output,
    ) {
        let Some(h) = self.held.remove(&id) else { return };
        self.order.retain(|x| *x != id);
        out.released.push(how);
        if who.is_none() {
            let ended = h.updates.iter().any(|u| matches!(u, SessionUpdate::Ended(..)));
            if self.drop_probe(&h.info, ended, out) {
                return;
            }
        } else if h.info.probe {
            out.probes.push("session");
        }
        let unattributed = who.is_none() && how != Release::Shutdown;
        let s = SessionSpans::new(&self.ctx, h.info, who);
        if unattributed {
            self.remember(&s, now, out);
        }
        self.live.insert(id, s);
        for u in h.updates {
            self.apply(id, u, out);
        }
    }

    fn apply(&mut self, id: SessionId, u: SessionUpdate, out: &mut Output) {
        match u {
            SessionUpdate::Started(info) => {
                if let Some(s) = self.live.get_mut(&id) {
                    s.refresh(&self.ctx, info);
                }
            }
            SessionUpdate::ProcessEnded(info, rec) => {
                if let Some(s) = self.live.get_mut(&id) {
                    for span in s.process_ended(&self.ctx, info, rec) {
                        out.spans.push((id, BuiltSpan { span, root: false }));
                    }
                }
            }
            SessionUpdate::Ended(info, remaining) => {
                if let Some(s) = self.live.remove(&id) {
                    self.finish(id, s, info, remaining, out);
                }
            }
        }
    }

    fn finish(
        &mut self,
        id: SessionId,
        s: SessionSpans,
        info: SessionInfo,
        remaining: Vec<crate::model::ProcessRecord>,
        out: &mut Output,
    ) {
        let incomplete = info.incomplete || info.events_lost > 0;
        for b in s.finish(&self.ctx, info, remaining) {
            out.spans.push((id, b));
        }
        out.ended.push((id, incomplete));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::event::ProcessKey;
    use crate::clock::BootClock;
    use crate::model::{ContainerInfo, SessionKind};
    use crate::spans::{keys, SessionIdentity, SpansConfig};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    /// Answers once `ready` is set (and only late questions, when `late_only`), counting asks.
    #[derive(Default)]
    struct Fake {
        ready: Mutex<Option<SessionIdentity>>,
        revision: AtomicU64,
        asked: AtomicU64,
        asked_late: AtomicU64,
        settled: Mutex<Vec<Duration>>,
    }

    impl Attributor for Fake {
        fn attribute(&self, _info: &SessionInfo) -> Option<SessionIdentity> {
            self.asked.fetch_add(1, Ordering::Relaxed);
            self.ready.lock().unwrap().take()
        }
        fn attribute_late(&self, _info: &SessionInfo, settled: Duration) -> Option<SessionIdentity> {
            self.asked_late.fetch_add(1, Ordering::Relaxed);
            self.settled.lock().unwrap().push(settled);
            self.ready.lock().unwrap().take()
        }
        fn revision(&self) -> Option<u64> {
            Some(self.revision.load(Ordering::Relaxed))
        }
    }

    impl Fake {
        /// A record for the session arrives.
        fn arrive(&self) {
            *self.ready.lock().unwrap() = Some(who());
            self.revision.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn who() -> SessionIdentity {
        SessionIdentity {
            source: "audit_webhook",
            confidence: "unique",
            candidates: 1,
            audit_id: Some("4b5f3c7e-8d2a-4f19-9c3e-2a1b0d9e8f70".into()),
            trace_id: Some([7; 16]),
            user_name: Some("john.doe@example.com".into()),
            user_groups: vec!["dev".into(), "system:authenticated".into()],
            client_address: Some("66.249.64.55".into()),
            request_kind: "exec",
            requested_command: vec!["sh".into()],
            ..Default::default()
        }
    }

    fn info(pid: u32, kind: SessionKind) -> SessionInfo {
        SessionInfo {
            root_argv: vec![b"sh".to_vec()],
            ..SessionInfo::new(
                SessionId(ProcessKey { pid, start_ns: 1_000 }),
                kind,
                ContainerInfo { id: "c1".into(), pod_name: Some("api-7d9c".into()), ..Default::default() },
                1_000,
            )
        }
    }

    fn ended(mut i: SessionInfo) -> SessionUpdate {
        i.end_ns = Some(2_000);
        SessionUpdate::Ended(i, vec![])
    }

    fn stage(fake: &Arc<Fake>, hold_ms: u64, late_ms: u64, late_max: usize) -> SpanStage {
        let mut cfg = SpansConfig::default();
        cfg.hold.deadline_ms = hold_ms;
        cfg.hold.late_ms = late_ms;
        cfg.hold.late_max_sessions = late_max;
        let ctx = BuildCtx { boot_id: [1; 16], clock: BootClock::fixed(1_700_000_000_000_000_000), cfg };
        SpanStage::new(ctx, fake.clone())
    }

    fn attr<'a>(s: &'a SpanData, key: &str) -> Option<&'a opentelemetry::Value> {
        s.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| &kv.value)
    }

    /// Holds an exec session past its deadline and ends it: exported unattributed. Its root.
    fn export_unattributed(st: &mut SpanStage, t0: Instant, i: &SessionInfo) -> SpanData {
        let mut out = Output::default();
        st.update(SessionUpdate::Started(i.clone()), t0, &mut out);
        st.tick(t0 + Duration::from_secs(4), &mut out);
        assert_eq!(out.released, vec![Release::Deadline]);
        st.update(ended(i.clone()), t0 + Duration::from_secs(4), &mut out);
        let (_, root) = out.spans.pop().expect("root");
        assert!(root.root);
        assert_eq!(attr(&root.span, keys::ATTRIBUTION_SOURCE).map(|v| v.to_string()), Some("none".into()));
        root.span
    }

    fn probe(pid: u32, tty: bool) -> SessionInfo {
        SessionInfo { probe: true, root_tty: tty, ..info(pid, SessionKind::Exec) }
    }

    /// Issue 13: `echo id | kubectl exec -i pod -- sh` against a probe of `["sh"]` is a session.
    #[test]
    fn a_probe_command_is_dropped_only_when_no_request_and_no_terminal_explain_it() {
        let fake = Arc::new(Fake::default());
        let mut st = stage(&fake, 3_000, 60_000, 100);
        let t0 = Instant::now();

        // the kubelet's probe: nothing matches within the hold, no terminal -> dropped, and
        // its later updates with it
        let mut out = Output::default();
        st.update(SessionUpdate::Started(probe(20, false)), t0, &mut out);
        st.tick(t0 + Duration::from_secs(4), &mut out);
        st.update(ended(probe(20, false)), t0 + Duration::from_secs(4), &mut out);
        assert_eq!(out.probes, vec!["dropped"]);
        assert!(out.spans.is_empty() && out.ended.is_empty(), "{out:?}");
        assert_eq!((st.open(), st.unattributed()), (0, 0), "nothing kept, nothing waits for a late record");

        // the same command, and an API request matches it within the hold -> a session
        let mut out = Output::default();
        st.update(SessionUpdate::Started(probe(21, false)), t0, &mut out);
        fake.arrive();
        st.tick(t0 + Duration::from_secs(1), &mut out);
        st.update(ended(probe(21, false)), t0 + Duration::from_secs(2), &mut out);
        assert_eq!(out.probes, vec!["session"]);
        let root = &out.spans.last().expect("root").1;
        assert!(root.root);
        assert_eq!(attr(&root.span, "user.name").map(|v| v.to_string()), Some("john.doe@example.com".into()));

        // no request, but a terminal -> a session (exported unattributed)
        let mut out = Output::default();
        st.update(SessionUpdate::Started(probe(22, true)), t0, &mut out);
        st.tick(t0 + Duration::from_secs(4), &mut out);
        st.update(ended(probe(22, true)), t0 + Duration::from_secs(4), &mut out);
        assert_eq!(out.probes, vec!["session"]);
        assert_eq!(out.ended.len(), 1);

        // without a hold (no attribution source) a probe is dropped at once
        let fake = Arc::new(Fake::default());
        let mut st = stage(&fake, 0, 60_000, 100);
        let mut out = Output::default();
        st.update(SessionUpdate::Started(probe(23, false)), t0, &mut out);
        st.update(ended(probe(23, false)), t0, &mut out);
        assert_eq!((out.probes, out.spans.len()), (vec!["dropped"], 0));
    }

    #[test]
    fn a_late_record_adds_one_attribution_span_under_the_exported_root() {
        let fake = Arc::new(Fake::default());
        let mut st = stage(&fake, 3_000, 60_000, 100);
        let t0 = Instant::now();
        let root = export_unattributed(&mut st, t0, &info(10, SessionKind::Exec));
        assert_eq!(st.unattributed(), 1);

        fake.arrive();
        let mut out = Output::default();
        st.tick(t0 + Duration::from_secs(9), &mut out);
        assert_eq!(out.late.len(), 1, "{out:?}");
        let late = &out.late[0];
        assert_eq!(late.delay, Duration::from_secs(5), "from the release at 4 s to the match at 9 s");
        let s = &late.span;
        assert_eq!(s.name, "attribution");
        assert_eq!(s.span_context.trace_id(), root.span_context.trace_id(), "same trace as the exported root");
        assert_eq!(s.parent_span_id, root.span_context.span_id(), "under the root");
        assert_eq!(attr(s, "user.name").map(|v| v.to_string()), Some("john.doe@example.com".into()));
        assert_eq!(attr(s, "client.address").map(|v| v.to_string()), Some("66.249.64.55".into()));
        assert!(attr(s, "user.roles").is_some(), "request attributes as on a root");
        assert_eq!(attr(s, keys::ATTRIBUTION_LATE), Some(&opentelemetry::Value::Bool(true)));
        assert_eq!(attr(s, keys::ATTRIBUTION_DELAY_MS), Some(&opentelemetry::Value::I64(5_000)));
        assert_eq!(attr(s, "k8s.pod.name").map(|v| v.to_string()), Some("api-7d9c".into()));
        assert_eq!(fake.settled.lock().unwrap()[0], Duration::from_secs(3), "records must have settled");
        assert!(out.spans.is_empty(), "nothing else is exported");
        assert_eq!(st.unattributed(), 0, "one attribution per session");

        fake.arrive();
        let mut out = Output::default();
        st.tick(t0 + Duration::from_secs(10), &mut out);
        assert!(out.late.is_empty(), "a session is attributed late at most once");
    }

    #[test]
    fn exported_sessions_ask_again_only_after_a_record_arrived() {
        let fake = Arc::new(Fake::default());
        let mut st = stage(&fake, 3_000, 60_000, 100);
        let t0 = Instant::now();
        export_unattributed(&mut st, t0, &info(10, SessionKind::Exec));
        // nothing arrives: after the settle period, no more questions
        for s in 5..40 {
            st.tick(t0 + Duration::from_secs(s), &mut Output::default());
        }
        let quiet = fake.asked_late.load(Ordering::Relaxed);
        for s in 40..60 {
            st.tick(t0 + Duration::from_secs(s), &mut Output::default());
        }
        assert_eq!(fake.asked_late.load(Ordering::Relaxed), quiet, "no record arrived, so no question");
        fake.revision.fetch_add(1, Ordering::Relaxed);
        st.tick(t0 + Duration::from_secs(59), &mut Output::default());
        assert_eq!(fake.asked_late.load(Ordering::Relaxed), quiet + 1, "asked again once a record arrived");
    }

    #[test]
    fn remembered_sessions_are_forgotten_after_late_ms() {
        let fake = Arc::new(Fake::default());
        let mut st = stage(&fake, 3_000, 20_000, 2);
        let t0 = Instant::now();
        for pid in 1..=3 {
            export_unattributed(&mut st, t0, &info(pid, SessionKind::Exec));
        }
        let mut out = Output::default();
        st.tick(t0 + Duration::from_secs(5), &mut out);
        assert_eq!(st.unattributed(), 2);
        // the third release pushed the first out (counted where it happened)
        let mut out = Output::default();
        st.tick(t0 + Duration::from_secs(30), &mut out);
        assert_eq!(out.forgotten, vec!["expired", "expired"]);
        assert_eq!(st.unattributed(), 0);
        fake.arrive();
        let mut out = Output::default();
        st.tick(t0 + Duration::from_secs(31), &mut out);
        assert!(out.late.is_empty(), "a forgotten session gains nothing");
    }

    #[test]
    fn overflow_of_remembered_sessions_is_reported() {
        let fake = Arc::new(Fake::default());
        let mut st = stage(&fake, 3_000, 60_000, 1);
        let t0 = Instant::now();
        let mut out = Output::default();
        for pid in 1..=2 {
            st.update(SessionUpdate::Started(info(pid, SessionKind::Exec)), t0, &mut out);
        }
        st.tick(t0 + Duration::from_secs(4), &mut out);
        assert_eq!(out.forgotten, vec!["overflow"]);
        assert_eq!(st.unattributed(), 1);
    }

    #[test]
    fn kinds_no_request_stands_behind_are_not_held() {
        let fake = Arc::new(Fake::default());
        let mut st = stage(&fake, 3_000, 60_000, 100);
        let t0 = Instant::now();
        for (pid, kind) in [(1, SessionKind::Node), (2, SessionKind::Watched), (3, SessionKind::Outbound)] {
            let mut out = Output::default();
            st.update(SessionUpdate::Started(info(pid, kind)), t0, &mut out);
            assert_eq!(out.released, vec![Release::Unattributable], "{kind:?}");
            st.update(ended(info(pid, kind)), t0, &mut out);
            assert!(out.spans.iter().any(|(_, b)| b.root), "{kind:?} exported at once");
        }
        assert_eq!(st.held(), 0);
        assert_eq!(st.unattributed(), 0, "and never asked about later");
        assert_eq!(fake.asked.load(Ordering::Relaxed), 0, "never asked at all");
        // an exec session still waits
        st.update(SessionUpdate::Started(info(4, SessionKind::Exec)), t0, &mut Output::default());
        assert_eq!(st.held(), 1);
    }

    #[test]
    fn shutdown_gives_remembered_sessions_a_last_unsettled_chance() {
        let fake = Arc::new(Fake::default());
        let mut st = stage(&fake, 3_000, 60_000, 100);
        let t0 = Instant::now();
        export_unattributed(&mut st, t0, &info(10, SessionKind::Exec));
        *fake.ready.lock().unwrap() = Some(who());
        let mut out = Output::default();
        st.shutdown(3_000, &mut out);
        assert_eq!(out.late.len(), 1);
        assert_eq!(*fake.settled.lock().unwrap().last().unwrap(), Duration::ZERO);
    }
}
