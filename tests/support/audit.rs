//! Kubernetes audit records of a `kubectl exec`, as the API server's webhook backend posts
//! them: the recorded fixture (tests/fixtures/audit) with a fresh audit id, the test's
//! command and times, for a container labelled as that fixture's pod.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// The CRI labels kubelet puts on the container of the fixture's pod `billing/api-7d9c`
/// (container `api`), so its audit records can match.
pub fn pod_labels() -> Vec<(&'static str, &'static str)> {
    vec![
        ("io.kubernetes.pod.name", "api-7d9c"),
        ("io.kubernetes.pod.namespace", "billing"),
        ("io.kubernetes.pod.uid", "3f9d2c4e-1b7a-4c55-8e21-7a6b5c4d3e2f"),
        ("io.kubernetes.container.name", "api"),
    ]
}

/// A file of tests/fixtures as it is.
pub fn fixture_bytes(name: &str) -> Vec<u8> {
    let path = Path::new(FIXTURES).join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A JSON file of tests/fixtures.
pub fn fixture(name: &str) -> Value {
    serde_json::from_slice(&fixture_bytes(name)).unwrap_or_else(|e| panic!("tests/fixtures/{name}: {e}"))
}

/// RFC 3339 with microseconds, as the API server writes audit timestamps.
pub fn audit_time(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap();
    let ts = jiff::Timestamp::from_second(d.as_secs() as i64).unwrap();
    format!("{}.{:06}Z", ts.strftime("%Y-%m-%dT%H:%M:%S"), d.subsec_micros())
}

/// A query value as the API server's request URI carries it (space as `+`).
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The audit events of one `kubectl exec` (WebSocket) of `command` into billing/api-7d9c:
/// the fixture's events with a fresh audit id, the given received time, and `stages`
/// (ResponseStarted 40 ms after `received`, ResponseComplete now).
pub fn exec_events(audit_id: &str, command: &[&str], received: SystemTime, stages: &[&str]) -> Vec<Value> {
    let fixture = fixture("audit/exec_websocket.json");
    let template = "4b5f3c7e-8d2a-4f19-9c3e-2a1b0d9e8f70";
    let mut out = Vec::new();
    for ev in fixture["items"].as_array().unwrap() {
        if ev["auditID"] != template || !stages.contains(&ev["stage"].as_str().unwrap()) {
            continue;
        }
        let mut ev = ev.clone();
        ev["auditID"] = json!(audit_id);
        let uri = ev["requestURI"].as_str().unwrap().to_owned();
        let (path, query) = uri.split_once('?').unwrap();
        let mut params: Vec<String> = command.iter().map(|c| format!("command={}", query_escape(c))).collect();
        params.extend(query.split('&').filter(|p| !p.starts_with("command=")).map(str::to_owned));
        ev["requestURI"] = json!(format!("{path}?{}", params.join("&")));
        let stage_at = match ev["stage"].as_str().unwrap() {
            "RequestReceived" => received,
            "ResponseStarted" => received + Duration::from_millis(40),
            _ => SystemTime::now(),
        };
        ev["requestReceivedTimestamp"] = json!(audit_time(received));
        ev["stageTimestamp"] = json!(audit_time(stage_at));
        out.push(ev);
    }
    assert_eq!(out.len(), stages.len(), "fixture lacks a stage of {stages:?}");
    out
}

/// The body the webhook backend posts.
pub fn event_list(items: Vec<Value>) -> Value {
    json!({ "kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": items })
}

/// A fresh random (version 4) audit id.
pub fn new_audit_id() -> String {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).expect("urandom");
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(b).hyphenated().to_string()
}
