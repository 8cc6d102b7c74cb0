//! Matching and bookkeeping of the record store, on the audit fixtures.

use super::*;
use crate::attribute::audit::EventList;
use crate::attribute::record::Identity;
use std::collections::BTreeMap;

const WS: &str = include_str!("../../tests/fixtures/audit/exec_websocket.json");
const SPDY: &str = include_str!("../../tests/fixtures/audit/exec_spdy.json");
const DENIED: &str = include_str!("../../tests/fixtures/audit/exec_denied.json");
const ATTACH: &str = include_str!("../../tests/fixtures/audit/attach.json");
const CP: &str = include_str!("../../tests/fixtures/audit/cp_tar.json");
const DEBUG: &str = include_str!("../../tests/fixtures/audit/ephemeral_debug.json");
const IMPERSONATION: &str = include_str!("../../tests/fixtures/audit/impersonation.json");
const MULTI_IP: &str = include_str!("../../tests/fixtures/audit/multi_source_ips.json");
const NON_UUID: &str = include_str!("../../tests/fixtures/audit/non_uuid_audit_id.json");
const NO_CONTAINER: &str = include_str!("../../tests/fixtures/audit/no_container.json");
const SCRIPT: &str = include_str!("../../tests/fixtures/audit/script_exec.json");
const PORT_FORWARD: &str = include_str!("../../tests/fixtures/audit/port_forward.json");

fn events(json: &str) -> Vec<AuditEvent> {
    let list: EventList = serde_json::from_str(json).expect("fixture is an EventList");
    list.items.into_iter().map(|i| i.0.expect("fixture events parse")).collect()
}

fn load(store: &RecordStore, json: &str) -> Vec<InsertOutcome> {
    events(json).into_iter().map(|e| store.insert_audit_event(e, AttributionSource::AuditWebhook)).collect()
}

fn at(rfc3339: &str) -> SystemTime {
    SystemTime::from(rfc3339.parse::<jiff::Timestamp>().unwrap())
}

fn v(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn query(pod: &str, container: Option<&str>, argv: &[&str], started: &str) -> SessionQuery {
    SessionQuery {
        pod_namespace: Some("billing".into()),
        pod_name: Some(pod.into()),
        pod_uid: None,
        container_name: container.map(str::to_owned),
        argv: v(argv),
        started_at: at(started),
        env_audit_id: None,
    }
}

fn store() -> RecordStore {
    RecordStore::new(StoreConfig::default())
}

#[test]
fn websocket_exec_matches_uniquely_with_identity_and_uuid_trace_id() {
    let s = store();
    assert_eq!(
        load(&s, WS),
        vec![InsertOutcome::Ignored, InsertOutcome::Inserted, InsertOutcome::Merged, InsertOutcome::Merged]
    );
    let a = s
        .match_session(&query("api-7d9c", Some("api"), &["sh", "-c", "echo hi"], "2026-03-02T14:05:07.2Z"))
        .expect("match");
    assert_eq!((a.source, a.confidence, a.candidates), (AttributionSource::AuditWebhook, Confidence::Unique, 1));
    assert_eq!(a.user_name.as_deref(), Some("john.doe@example.com"));
    assert_eq!(a.user_uid.as_deref(), Some("8a6f2c1e-0b7d-4e35-9d2a-5c4b3a291807"));
    assert_eq!(a.user_groups, v(&["dev", "system:authenticated"]));
    assert_eq!(a.client_address.as_deref(), Some("66.249.64.55"));
    assert_eq!(a.user_agent.as_deref(), Some("kubectl/v1.32.2 (linux/amd64) kubernetes/67a30c0"));
    assert_eq!(hex::encode(a.trace_id.unwrap()), "4b5f3c7e8d2a4f199c3e2a1b0d9e8f70");
    assert_eq!(a.requested_command, v(&["sh", "-c", "echo hi"]));
    assert!(a.stdin && a.tty);
    assert_eq!(a.request_started, Some(at("2026-03-02T14:05:07.123456Z")));
    assert_eq!(a.request_completed, Some(at("2026-03-02T14:05:12.904117Z")));
    assert_eq!(a.response_code, Some(101));
    // Consumed: the same session shape finds nothing more.
    assert_eq!(
        s.match_session(&query("api-7d9c", Some("api"), &["sh", "-c", "echo hi"], "2026-03-02T14:05:07.2Z")),
        None
    );
    assert_eq!(s.metrics().matches.get_or_create(&vec![("confidence", "unique")]).get(), 1);
}

#[test]
fn repeated_stages_are_duplicates() {
    let s = store();
    load(&s, SPDY);
    assert_eq!(load(&s, SPDY), vec![InsertOutcome::Duplicate; 3]);
    assert_eq!(s.len(), 1);
    assert_eq!(AttributeMetrics::by_source(&s.metrics().duplicates, "audit_webhook"), 3);
}

#[test]
fn spdy_exec_stages_out_of_order_merge_into_one_request() {
    let s = store();
    load(&s, SPDY);
    let a = s
        .match_session(&query("api-7d9c", Some("api"), &["/bin/cat", "/etc/passwd"], "2026-03-02T14:10:00.05Z"))
        .expect("match");
    assert_eq!(a.response_code, Some(101));
    assert!(a.request_completed.is_some());
    assert!(!a.tty);
}

#[test]
fn denied_exec_never_matches_and_is_reported_on_its_own() {
    // recorded from a real API server: kubectl 1.34 tries WebSocket (get), is refused, and
    // tries SPDY (create): two requests, each RequestReceived, ResponseStarted 403,
    // ResponseComplete 403
    let s = store();
    load(&s, DENIED);
    let argv = &["sh", "-c", "echo should-not-run"];
    assert_eq!(s.match_session(&query("shell", Some("main"), argv, "2026-12-06T08:20:28.5Z")), None);
    let out = s.take_unmatched_requests(at("2026-12-06T08:20:29Z"));
    assert_eq!(out.len(), 2, "{out:?}");
    for a in &out {
        assert_eq!(a.response_code, Some(403));
        assert_eq!(a.user_name.as_deref(), Some("mallory@example.com"));
        assert_eq!(a.confidence, Confidence::None);
    }
    assert!(s.take_unmatched_requests(at("2026-12-06T09:00:00Z")).is_empty(), "reported once");
}

#[test]
fn impersonated_identity_is_kept_apart_from_the_requester() {
    let s = store();
    load(&s, IMPERSONATION);
    let a = s.match_session(&query("api-7d9c", Some("api"), &["id"], "2026-03-02T15:00:00.01Z")).unwrap();
    assert_eq!(a.user_name.as_deref(), Some("alice@example.com"));
    assert_eq!(a.user_groups, v(&["sre", "system:authenticated"]));
    assert_eq!(a.impersonated_name.as_deref(), Some("john.doe@example.com"));
    assert_eq!(a.impersonated_groups, v(&["dev"]));
}

#[test]
fn client_address_is_the_last_source_ip() {
    let s = store();
    load(&s, MULTI_IP);
    let a = s.match_session(&query("api-7d9c", Some("api"), &["env"], "2026-03-02T15:10:00.01Z")).unwrap();
    assert_eq!(a.source_ips, v(&["10.1.2.3", "203.0.113.9", "66.249.64.55"]));
    assert_eq!(a.client_address.as_deref(), Some("66.249.64.55"));
}

#[test]
fn non_uuid_audit_id_gets_a_hashed_trace_id() {
    let s = store();
    load(&s, NON_UUID);
    let a = s.match_session(&query("api-7d9c", Some("api"), &["ls", "-la"], "2026-03-02T15:20:00.01Z")).unwrap();
    assert_eq!(a.audit_id.as_deref(), Some("ci-job-4711-step-3"));
    assert_eq!(a.trace_id, Some(crate::attribute::hashed_trace_id(b"ci-job-4711-step-3")));
}

#[test]
fn request_without_container_matches_the_only_container() {
    let s = store();
    load(&s, NO_CONTAINER);
    let a =
        s.match_session(&query("cache-0", Some("redis"), &["redis-cli", "info"], "2026-03-02T15:30:00.05Z")).unwrap();
    assert_eq!(a.container, None);
    // But a named container must agree.
    load(&s, CP);
    assert_eq!(
        s.match_session(&query(
            "api-7d9c",
            Some("sidecar"),
            &["tar", "cf", "-", "-C", "/var/log", "app.log"],
            "2026-03-02T14:40:00.2Z"
        )),
        None
    );
}

#[test]
fn kubectl_cp_is_an_exec_of_tar() {
    let s = store();
    load(&s, CP);
    let a = s
        .match_session(&query(
            "api-7d9c",
            Some("api"),
            &["tar", "cf", "-", "-C", "/var/log", "app.log"],
            "2026-03-02T14:40:00.2Z",
        ))
        .unwrap();
    assert_eq!(a.request_kind, RequestKind::Exec);
}

#[test]
fn script_matches_through_the_interpreter_the_kernel_shows() {
    let s = store();
    load(&s, SCRIPT);
    let a = s
        .match_session(&query("api-7d9c", Some("api"), &["/bin/sh", "./backup.sh", "--full"], "2026-03-02T15:40:00.1Z"))
        .unwrap();
    assert_eq!(a.requested_command, v(&["./backup.sh", "--full"]));
}

#[test]
fn session_outside_the_window_does_not_match() {
    let s = store();
    load(&s, WS);
    assert_eq!(
        s.match_session(&query("api-7d9c", Some("api"), &["sh", "-c", "echo hi"], "2026-03-02T14:15:00Z")),
        None
    );
    // Clock skew the other way (node clock behind) within the window still matches.
    assert!(s
        .match_session(&query("api-7d9c", Some("api"), &["sh", "-c", "echo hi"], "2026-03-02T14:04:30Z"))
        .is_some());
}

/// Two identical concurrent execs with two audit records: both attributed, in order, and
/// both labelled ambiguous with two candidates.
fn two_identical_execs(s: &RecordStore) -> (String, String) {
    let first = events(WS).remove(1);
    let mut second = events(WS).remove(1);
    second.audit_id = Some("11111111-2222-4333-8444-555555555555".into());
    second.request_received_timestamp = Some("2026-03-02T14:05:07.500000Z".into());
    second.source_ips = vec!["66.249.64.99".into()];
    s.insert_audit_event(second, AttributionSource::AuditWebhook);
    s.insert_audit_event(first, AttributionSource::AuditWebhook);
    ("4b5f3c7e-8d2a-4f19-9c3e-2a1b0d9e8f70".into(), "11111111-2222-4333-8444-555555555555".into())
}

#[test]
fn overlapping_identical_execs_are_taken_in_order_and_labelled_ambiguous() {
    let s = store();
    let (older, newer) = two_identical_execs(&s);
    let q = query("api-7d9c", Some("api"), &["sh", "-c", "echo hi"], "2026-03-02T14:05:07.6Z");
    let a = s.match_session(&q).unwrap();
    let b = s.match_session(&q).unwrap();
    assert_eq!(a.audit_id.as_deref(), Some(older.as_str()));
    assert_eq!(b.audit_id.as_deref(), Some(newer.as_str()));
    for x in [&a, &b] {
        assert_eq!((x.confidence, x.candidates), (Confidence::Ambiguous, 2));
    }
    assert_eq!(s.match_session(&q), None);
}

#[test]
fn environment_audit_id_gives_an_exact_match_out_of_order() {
    let s = store();
    let (_, newer) = two_identical_execs(&s);
    let mut q = query("api-7d9c", Some("api"), &["sh", "-c", "echo hi"], "2026-03-02T14:05:07.6Z");
    q.env_audit_id = Some(newer.clone());
    let a = s.match_session(&q).unwrap();
    assert_eq!((a.source, a.confidence, a.candidates), (AttributionSource::KernelEnv, Confidence::Exact, 1));
    assert_eq!(a.audit_id, Some(newer));
}

#[test]
fn environment_audit_id_is_not_trusted_when_the_record_disagrees() {
    let s = store();
    load(&s, WS);
    let mut q = query("api-7d9c", Some("api"), &["cat", "/etc/shadow"], "2026-03-02T14:05:07.6Z");
    q.env_audit_id = Some("4b5f3c7e-8d2a-4f19-9c3e-2a1b0d9e8f70".into());
    assert_eq!(s.match_session(&q), None, "command differs: no exact match, and nothing else fits");
}

#[test]
fn environment_audit_id_waits_for_its_record_then_falls_back() {
    let s = store();
    load(&s, WS);
    let mut q = query("api-7d9c", Some("api"), &["sh", "-c", "echo hi"], "2026-03-02T14:05:07.2Z");
    q.env_audit_id = Some("99999999-8888-4777-8666-555555555555".into());
    q.started_at = SystemTime::now();
    // Within the grace period: the named record may still come.
    assert_eq!(s.match_session(&q), None);
    // Long after: matched by the ordinary rules (the request time is also within the window).
    q.started_at = at("2026-03-02T14:05:07.2Z");
    assert_eq!(s.match_session(&q).map(|a| a.confidence), Some(Confidence::Unique));
}

#[test]
fn reused_audit_id_falls_back_to_a_hash_for_the_second_request() {
    let s = store();
    load(&s, WS);
    let mut again = events(WS).remove(1);
    again.request_received_timestamp = Some("2026-03-02T14:06:00.000000Z".into());
    assert_eq!(s.insert_audit_event(again, AttributionSource::AuditWebhook), InsertOutcome::Inserted);
    let a =
        s.match_session(&query("api-7d9c", Some("api"), &["sh", "-c", "echo hi"], "2026-03-02T14:05:07.2Z")).unwrap();
    let b =
        s.match_session(&query("api-7d9c", Some("api"), &["sh", "-c", "echo hi"], "2026-03-02T14:06:00.1Z")).unwrap();
    assert_eq!(hex::encode(a.trace_id.unwrap()), "4b5f3c7e8d2a4f199c3e2a1b0d9e8f70");
    assert_ne!(a.trace_id, b.trace_id);
    assert_eq!(a.audit_id, b.audit_id);
}

#[test]
fn attach_and_port_forward_are_reported_when_they_close() {
    let s = store();
    load(&s, ATTACH);
    load(&s, PORT_FORWARD);
    assert!(s.take_unmatched_requests(at("2026-03-02T14:31:00Z")).is_empty(), "attach still open");
    let out = s.take_unmatched_requests(at("2026-03-02T16:06:00Z"));
    let kinds: Vec<_> = out.iter().map(|a| a.request_kind).collect();
    assert_eq!(kinds, vec![RequestKind::Attach, RequestKind::PortForward]);
    assert_eq!(out[1].ports, vec![5432]);
    assert_eq!(out[0].container.as_deref(), Some("worker"));
    assert_eq!(out[0].pod_name.as_deref(), Some("worker-5f6b8"));
}

#[test]
fn unmatched_exec_is_reported_after_its_window() {
    let s = store();
    load(&s, WS);
    assert!(s.take_unmatched_requests(at("2026-03-02T14:06:00Z")).is_empty());
    let out = s.take_unmatched_requests(at("2026-03-02T14:10:00Z"));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request_kind, RequestKind::Exec);
}

#[test]
fn kubectl_debug_matches_the_ephemeral_container_and_takes_its_attach() {
    let s = store();
    load(&s, DEBUG);
    // recorded from a real `kubectl debug -it shell --container=debugger`
    let a = s.match_session(&query("shell", Some("debugger"), &["sh"], "2026-12-06T08:20:37Z")).unwrap();
    assert_eq!(a.request_kind, RequestKind::Debug);
    assert_eq!(a.audit_id.as_deref(), Some("3d43ecb4-db41-42e1-ab46-dc1470059991"));
    assert!(
        s.take_unmatched_requests(at("2026-12-06T10:00:00Z")).is_empty(),
        "the attach belonged to the debug session"
    );
}

fn admission(uid: &str, user: &str, command: &[&str], at_time: SystemTime) -> AdmissionRecord {
    AdmissionRecord {
        uid: uid.into(),
        kind: RequestKind::Exec,
        namespace: Some("billing".into()),
        pod_name: Some("api-7d9c".into()),
        user: Identity { name: Some(user.into()), uid: None, groups: v(&["dev"]), extra: BTreeMap::new() },
        options: crate::attribute::record::RequestOptions {
            command: v(command),
            container: Some("api".into()),
            ..Default::default()
        },
        received_at: at_time,
        unverified: false,
    }
}

#[test]
fn admission_record_matches_with_its_own_source_and_no_client_address() {
    let s = store();
    let uid = "705ab4f5-6393-11e8-b7cc-42010a800002";
    s.insert_admission(&admission(uid, "john.doe@example.com", &["sh"], at("2026-03-02T14:05:07Z")));
    let a = s.match_session(&query("api-7d9c", Some("api"), &["sh"], "2026-03-02T14:05:07.5Z")).unwrap();
    assert_eq!(a.source, AttributionSource::Admission);
    assert_eq!((a.audit_id, a.admission_uid.as_deref()), (None, Some(uid)));
    assert_eq!(a.client_address, None);
    assert_eq!(hex::encode(a.trace_id.unwrap()), "705ab4f5639311e8b7cc42010a800002");
}

#[test]
fn audit_record_wins_over_the_admission_review_of_the_same_exec() {
    let s = store();
    load(&s, WS);
    s.insert_admission(&admission(
        "705ab4f5-6393-11e8-b7cc-42010a800002",
        "john.doe@example.com",
        &["sh", "-c", "echo hi"],
        at("2026-03-02T14:05:07.13Z"),
    ));
    let a =
        s.match_session(&query("api-7d9c", Some("api"), &["sh", "-c", "echo hi"], "2026-03-02T14:05:07.2Z")).unwrap();
    assert_eq!((a.source, a.confidence), (AttributionSource::AuditWebhook, Confidence::Unique));
    assert!(s.take_unmatched_requests(at("2026-03-02T15:00:00Z")).is_empty(), "its admission twin is used up too");
}

/// Seen in the real cluster (tests/cluster): the API server calls the admission webhook before
/// the stream opens and sends the audit events a second later, so the review used to win and
/// name the trace after its uid instead of the audit id.
#[test]
fn admission_review_waits_for_the_audit_record_where_audit_events_come_too() {
    let s = store();
    s.expect_audit();
    s.insert_admission(&admission(
        "705ab4f5-6393-11e8-b7cc-42010a800002",
        "john.doe@example.com",
        &["sh", "-c", "echo hi"],
        at("2026-03-02T14:05:07.13Z"),
    ));
    let q = query("api-7d9c", Some("api"), &["sh", "-c", "echo hi"], "2026-03-02T14:05:07.2Z");
    assert_eq!(s.match_session(&q), None, "the review alone waits while audit events are expected");
    load(&s, WS);
    let a = s.match_session(&q).expect("the audit record answers");
    assert_eq!(a.source, AttributionSource::AuditWebhook);
    assert_eq!(hex::encode(a.trace_id.unwrap()), "4b5f3c7e8d2a4f199c3e2a1b0d9e8f70");
    assert!(s.take_unmatched_requests(at("2026-03-02T15:00:00Z")).is_empty(), "the review is its twin");
}

#[test]
fn admission_review_answers_once_it_has_waited_for_an_audit_record_that_never_came() {
    let s = RecordStore::new(StoreConfig { audit_wait: Duration::from_millis(50), ..StoreConfig::default() });
    s.expect_audit();
    s.insert_admission(&admission(
        "705ab4f5-6393-11e8-b7cc-42010a800002",
        "john.doe@example.com",
        &["sh"],
        at("2026-03-02T14:05:07Z"),
    ));
    let q = query("api-7d9c", Some("api"), &["sh"], "2026-03-02T14:05:07.5Z");
    assert_eq!(s.match_session(&q), None);
    std::thread::sleep(Duration::from_millis(80));
    assert_eq!(s.match_session(&q).expect("the review after its wait").source, AttributionSource::Admission);
}

#[test]
fn store_is_bounded_and_counts_evictions() {
    let s = RecordStore::new(StoreConfig { max_records: 2, ..StoreConfig::default() });
    load(&s, WS);
    load(&s, SPDY);
    load(&s, CP);
    assert_eq!(s.len(), 2);
    assert_eq!(s.metrics().evicted.get_or_create(&vec![("state", "unused")]).get(), 1);
    assert_eq!(s.metrics().store_records.get(), 2);
    // The oldest (the websocket exec) went first.
    assert_eq!(
        s.match_session(&query("api-7d9c", Some("api"), &["sh", "-c", "echo hi"], "2026-03-02T14:05:07.2Z")),
        None
    );
}

#[test]
fn a_late_question_is_answered_only_by_settled_records_and_revision_tracks_new_stages() {
    let s = store();
    assert_eq!(s.revision(), 0);
    load(&s, WS);
    assert_eq!(s.revision(), 3, "one inserted and two merged stages (the ignored event does not count)");
    load(&s, WS);
    assert_eq!(s.revision(), 3, "duplicates change nothing");
    let q = query("api-7d9c", Some("api"), &["sh", "-c", "echo hi"], "2026-03-02T14:05:07.2Z");
    // just arrived: a session exported long ago must leave it to a session about to ask
    assert_eq!(s.match_settled(&q, Duration::from_secs(3600)), None);
    let a = s.match_settled(&q, Duration::ZERO).expect("settled enough");
    assert_eq!(a.user_name.as_deref(), Some("john.doe@example.com"));
}

#[test]
fn an_unverified_review_loses_to_a_verified_one_that_disagrees_and_alone_is_never_unique() {
    let s = store();
    let mut forged = admission("11111111-1111-4111-8111-111111111111", "mallory", &["sh"], at("2026-03-02T14:05:07Z"));
    forged.unverified = true;
    s.insert_admission(&forged);
    s.insert_admission(&admission(
        "22222222-2222-4222-8222-222222222222",
        "jane",
        &["sh"],
        at("2026-03-02T14:05:07.1Z"),
    ));
    let a = s.match_session(&query("api-7d9c", Some("api"), &["sh"], "2026-03-02T14:05:07.5Z")).unwrap();
    assert_eq!((a.user_name.as_deref(), a.verified, a.confidence), (Some("jane"), true, Confidence::Unique));

    // alone: taken, but labelled and never more than ambiguous
    let a = s.match_session(&query("api-7d9c", Some("api"), &["sh"], "2026-03-02T14:05:08Z")).unwrap();
    assert_eq!((a.user_name.as_deref(), a.verified, a.confidence), (Some("mallory"), false, Confidence::Ambiguous));

    // an unverified record naming the session's environment audit id is not exact either
    let mut env = admission("33333333-3333-4333-8333-333333333333", "mallory", &["id"], at("2026-03-02T14:05:07Z"));
    env.unverified = true;
    s.insert_admission(&env);
    let mut q = query("api-7d9c", Some("api"), &["id"], "2026-03-02T14:05:07.5Z");
    q.env_audit_id = Some("33333333-3333-4333-8333-333333333333".into());
    let a = s.match_session(&q).unwrap();
    assert_eq!((a.confidence, a.verified), (Confidence::Ambiguous, false));
}
