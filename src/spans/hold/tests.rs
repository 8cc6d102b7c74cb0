//! The hold: attribution, deadlines, probes, late records.
use super::*;
use crate::capture::event::ProcessKey;
use crate::clock::BootClock;
use crate::model::ContainerInfo;
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
    SessionUpdate::Ended(i.into(), vec![])
}

fn stage(fake: &Arc<Fake>, hold_ms: u64, late_ms: u64, late_max: usize) -> SpanStage {
    let mut cfg = SpansConfig::default();
    cfg.hold.deadline_ms = hold_ms;
    cfg.hold.late_ms = late_ms;
    cfg.hold.late_max_sessions = late_max;
    let ctx = BuildCtx::new([1; 16], BootClock::fixed(1_700_000_000_000_000_000), cfg);
    SpanStage::new(ctx, fake.clone())
}

fn attr<'a>(s: &'a SpanData, key: &str) -> Option<&'a opentelemetry::Value> {
    s.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| &kv.value)
}

/// Holds an exec session past its deadline and ends it: exported unattributed. Its root.
fn export_unattributed(st: &mut SpanStage, t0: Instant, i: &SessionInfo) -> SpanData {
    let mut out = Output::default();
    st.update(SessionUpdate::Started(i.clone().into()), t0, &mut out);
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
    st.update(SessionUpdate::Started(probe(20, false).into()), t0, &mut out);
    st.tick(t0 + Duration::from_secs(4), &mut out);
    st.update(ended(probe(20, false)), t0 + Duration::from_secs(4), &mut out);
    assert_eq!(out.probes, vec!["dropped"]);
    assert!(out.spans.is_empty() && out.ended.is_empty(), "{out:?}");
    assert_eq!((st.open(), st.unattributed()), (0, 0), "nothing kept, nothing waits for a late record");

    // the same command, and an API request matches it within the hold -> a session
    let mut out = Output::default();
    st.update(SessionUpdate::Started(probe(21, false).into()), t0, &mut out);
    fake.arrive();
    st.tick(t0 + Duration::from_secs(1), &mut out);
    st.update(ended(probe(21, false)), t0 + Duration::from_secs(2), &mut out);
    assert_eq!(out.probes, vec!["session"]);
    let root = &out.spans.last().expect("root").1;
    assert!(root.root);
    assert_eq!(attr(&root.span, "user.name").map(|v| v.to_string()), Some("john.doe@example.com".into()));

    // no request, but a terminal -> a session (exported unattributed)
    let mut out = Output::default();
    st.update(SessionUpdate::Started(probe(22, true).into()), t0, &mut out);
    st.tick(t0 + Duration::from_secs(4), &mut out);
    st.update(ended(probe(22, true)), t0 + Duration::from_secs(4), &mut out);
    assert_eq!(out.probes, vec!["session"]);
    assert_eq!(out.ended.len(), 1);

    // without a hold (no attribution source) a probe is dropped at once
    let fake = Arc::new(Fake::default());
    let mut st = stage(&fake, 0, 60_000, 100);
    let mut out = Output::default();
    st.update(SessionUpdate::Started(probe(23, false).into()), t0, &mut out);
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
        st.update(SessionUpdate::Started(info(pid, SessionKind::Exec).into()), t0, &mut out);
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
        st.update(SessionUpdate::Started(info(pid, kind).into()), t0, &mut out);
        assert_eq!(out.released, vec![Release::Unattributable], "{kind:?}");
        st.update(ended(info(pid, kind)), t0, &mut out);
        assert!(out.spans.iter().any(|(_, b)| b.root), "{kind:?} exported at once");
    }
    assert_eq!(st.held(), 0);
    assert_eq!(st.unattributed(), 0, "and never asked about later");
    assert_eq!(fake.asked.load(Ordering::Relaxed), 0, "never asked at all");
    // an exec session still waits
    st.update(SessionUpdate::Started(info(4, SessionKind::Exec).into()), t0, &mut Output::default());
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

#[test]
fn a_remembered_release_time_comes_back_exactly_either_side_of_the_epoch() {
    let fake = Arc::new(Fake::default());
    let st = stage(&fake, 3_000, 20_000, 2);
    let e = st.epoch;
    for t in [
        e,
        e + Duration::from_nanos(1),
        e + Duration::from_secs(86_400),
        e.checked_sub(Duration::from_millis(7)).unwrap_or(e),
    ] {
        assert_eq!(st.instant(st.instant_ns(t)), t);
    }
}

/// A session released unattributed waits for a late record in its own `SessionSpans` while it
/// lives (mem23): matched then, expired then, or ended first, as an ended one would be.
#[test]
fn a_live_session_waits_for_a_late_record_as_an_ended_one_does() {
    let secs = Duration::from_secs;
    // matched while live: one attribution span, none after its end
    let fake = Arc::new(Fake::default());
    let mut st = stage(&fake, 3_000, 20_000, 100);
    let t0 = Instant::now();
    let mut out = Output::default();
    st.update(SessionUpdate::Started(info(10, SessionKind::Exec).into()), t0, &mut out);
    st.tick(t0 + secs(4), &mut out);
    assert_eq!((out.released.as_slice(), st.open(), st.unattributed()), (&[Release::Deadline][..], 1, 1));
    fake.arrive();
    let mut out = Output::default();
    st.tick(t0 + secs(9), &mut out);
    assert_eq!(out.late.len(), 1, "{out:?}");
    assert_eq!(out.late[0].delay, secs(5), "from the release at 4 s");
    assert_eq!(st.unattributed(), 0);
    let late = out.late[0].span.clone();
    let mut out = Output::default();
    st.update(ended(info(10, SessionKind::Exec)), t0 + secs(10), &mut out);
    let root = &out.spans.last().expect("root").1;
    assert!(root.root);
    assert_eq!(late.span_context.trace_id(), root.span.span_context.trace_id(), "the session's trace");
    assert_eq!(late.parent_span_id, root.span.span_context.span_id(), "under its root");
    assert_eq!(st.unattributed(), 0, "its end makes no entry");
    fake.arrive();
    let mut out = Output::default();
    st.tick(t0 + secs(11), &mut out);
    assert!(out.late.is_empty(), "attributed late at most once");

    // ended while waiting: it waits on from its release, not from its end
    let fake = Arc::new(Fake::default());
    let mut st = stage(&fake, 3_000, 20_000, 100);
    let mut out = Output::default();
    st.update(SessionUpdate::Started(info(11, SessionKind::Exec).into()), t0, &mut out);
    st.tick(t0 + secs(4), &mut out);
    st.update(ended(info(11, SessionKind::Exec)), t0 + secs(6), &mut out);
    assert_eq!((st.open(), st.unattributed()), (0, 1));
    fake.arrive();
    let mut out = Output::default();
    st.tick(t0 + secs(9), &mut out);
    assert_eq!((out.late.len(), out.late[0].delay, st.unattributed()), (1, secs(5), 0));

    // expired while live: forgotten once, and its end brings nothing back
    let fake = Arc::new(Fake::default());
    let mut st = stage(&fake, 3_000, 20_000, 100);
    let mut out = Output::default();
    st.update(SessionUpdate::Started(info(12, SessionKind::Exec).into()), t0, &mut out);
    st.tick(t0 + secs(4), &mut out);
    let mut out = Output::default();
    st.tick(t0 + secs(25), &mut out);
    assert_eq!((out.forgotten.as_slice(), st.open(), st.unattributed()), (&["expired"][..], 1, 0));
    st.update(ended(info(12, SessionKind::Exec)), t0 + secs(26), &mut out);
    fake.arrive();
    let mut out = Output::default();
    st.tick(t0 + secs(27), &mut out);
    assert!(out.late.is_empty() && st.unattributed() == 0, "{out:?}");
}
