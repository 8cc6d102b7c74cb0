//! Attribution end to end on one machine: a private containerd + runc (tests/common), a busybox
//! container labelled by "kubelet" as pod `billing/api-7d9c` container `api`, the real
//! `podtrail run` binary with its loopback audit webhook and an OTLP/JSON file. The test posts
//! the API server's audit `EventList` of a `kubectl exec` (the fixture, with fresh ids and
//! times), runs the same command with `ctr task exec`, and reads the file back as the OTLP/JSON
//! the Collector's file exporter writes (decoded here from the JSON, not with podtrail's code).
//! Needs root and containerd; fails (never skips) under CI when they are missing.

mod common;
mod e2e_support;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use common::containers::{Container, Containerd};
use serde_json::{json, Value};

/// One agent (kernel programs, containerd) at a time in this binary.
static SERIAL: Mutex<()> = Mutex::new(());

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const USER: &str = "john.doe@example.com";
const SOURCE_IP: &str = "66.249.64.55";

/// The CRI labels kubelet puts on a pod's container.
fn pod_labels() -> Vec<(&'static str, &'static str)> {
    vec![
        ("io.kubernetes.pod.name", "api-7d9c"),
        ("io.kubernetes.pod.namespace", "billing"),
        ("io.kubernetes.pod.uid", "3f9d2c4e-1b7a-4c55-8e21-7a6b5c4d3e2f"),
        ("io.kubernetes.container.name", "api"),
    ]
}

/// `podtrail run` with a loopback audit webhook, writing OTLP/JSON to a file; SIGTERM on drop.
struct Agent {
    inner: e2e_support::FileAgent,
    webhook: String,
    /// `127.0.0.1:port` of `/metrics`, when asked for.
    metrics: Option<String>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

impl Agent {
    fn start(cd: &Containerd) -> Agent {
        Agent::start_with(cd, 3000, false)
    }

    /// With the hold deadline `hold_ms`, and a `/metrics` endpoint when `metrics`.
    fn start_with(cd: &Containerd, hold_ms: u64, metrics: bool) -> Agent {
        Agent::launch(cd, hold_ms, metrics, None)
    }

    /// `receivers`: (lines of `[attribution]` subscribing to `podtrail receiver`s) instead of
    /// the loopback audit webhook.
    fn launch(cd: &Containerd, hold_ms: u64, metrics: bool, receivers: Option<&str>) -> Agent {
        let webhook = format!("127.0.0.1:{}", free_port());
        let metrics = metrics.then(|| format!("127.0.0.1:{}", free_port()));
        let extra = format!(
            "[attribution]\nhold_ms = {hold_ms}\n{}\n[metrics]\nlisten = {:?}\n",
            receivers.unwrap_or_default(),
            metrics.clone().unwrap_or_default(),
        );
        let config = e2e_support::containerd_config(&cd.address, &cd.namespace, &extra);
        let args: &[&str] = if receivers.is_none() { &["--audit-webhook-loopback", &webhook] } else { &[] };
        Agent { inner: e2e_support::FileAgent::start(&config, args), webhook, metrics }
    }

    fn log(&self) -> String {
        self.inner.log()
    }

    fn file(&self) -> PathBuf {
        self.inner.file()
    }

    fn post_audit(&self, body: &Value) {
        self.inner.post_audit(&self.webhook, body)
    }

    /// The value of one series on `/metrics` (0 when absent).
    fn metric(&self, series: &str) -> f64 {
        let addr = self.metrics.as_ref().expect("agent started with metrics");
        let mut s = TcpStream::connect(addr).expect("connect to /metrics");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        assert!(text.starts_with("HTTP/1.") && text.contains(" 200 "), "/metrics answered: {text}");
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .map(|v| v.trim().parse().expect("a number"))
            .unwrap_or(0.0)
    }

    /// Stops the agent (SIGTERM: it drains and flushes) and returns every span it wrote.
    fn stop(mut self) -> Vec<Span> {
        self.inner.terminate();
        read_spans(&self.file())
    }

    /// Waits until `n` root spans of sessions in `container` are in the file.
    fn wait_roots(&self, container: &str, n: usize, timeout: Duration) -> Vec<Span> {
        let deadline = Instant::now() + timeout;
        loop {
            let roots = session_roots(&read_spans(&self.file()), container);
            if roots.len() >= n {
                return roots;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} session roots for {container} after {timeout:?}:\n{}",
                roots.len(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// A span as the OTLP/JSON file holds it (trace and span ids in hex, attribute values typed).
#[derive(Clone, Debug)]
struct Span {
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    attrs: Value,
}

impl Span {
    fn attr(&self, key: &str) -> Option<Value> {
        self.attrs.as_array()?.iter().find(|kv| kv["key"] == key).map(|kv| plain(&kv["value"]))
    }

    fn str(&self, key: &str) -> Option<String> {
        self.attr(key).and_then(|v| v.as_str().map(str::to_owned))
    }
}

/// An OTLP/JSON AnyValue as plain JSON (`intValue` is a string in OTLP/JSON).
fn plain(v: &Value) -> Value {
    if let Some(s) = v.get("stringValue") {
        return s.clone();
    }
    if let Some(b) = v.get("boolValue") {
        return b.clone();
    }
    if let Some(i) = v.get("intValue") {
        return match i {
            Value::String(s) => json!(s.parse::<i64>().expect("intValue")),
            other => other.clone(),
        };
    }
    if let Some(a) = v.get("arrayValue") {
        return Value::Array(a["values"].as_array().map(|v| v.iter().map(plain).collect()).unwrap_or_default());
    }
    v.clone()
}

/// Every span in an OTLP/JSON lines file (the Collector file exporter's format: one
/// ExportTraceServiceRequest per line).
fn read_spans(path: &Path) -> Vec<Span> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let req: Value = serde_json::from_str(line).expect("each line is one OTLP/JSON request");
        for rs in req["resourceSpans"].as_array().into_iter().flatten() {
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    out.push(Span {
                        trace_id: s["traceId"].as_str().expect("traceId").to_owned(),
                        span_id: s["spanId"].as_str().expect("spanId").to_owned(),
                        parent: s["parentSpanId"].as_str().unwrap_or("").to_owned(),
                        name: s["name"].as_str().unwrap_or("").to_owned(),
                        attrs: s["attributes"].clone(),
                    });
                }
            }
        }
    }
    out
}

/// Root spans of process sessions in one container.
fn session_roots(spans: &[Span], container: &str) -> Vec<Span> {
    spans
        .iter()
        .filter(|s| s.parent.is_empty() && s.str("container.id").as_deref() == Some(container))
        .cloned()
        .collect()
}

/// RFC 3339 with microseconds, as the API server writes audit timestamps.
fn audit_time(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap();
    let ts = jiff::Timestamp::from_second(d.as_secs() as i64).unwrap();
    format!("{}.{:06}Z", ts.strftime("%Y-%m-%dT%H:%M:%S"), d.subsec_micros())
}

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
/// the fixture's events with a fresh audit id, the given received time, and `stages`.
fn exec_events(audit_id: &str, command: &[&str], received: SystemTime, stages: &[&str]) -> Vec<Value> {
    let fixture: Value =
        serde_json::from_slice(&std::fs::read(Path::new(FIXTURES).join("audit/exec_websocket.json")).unwrap()).unwrap();
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

fn event_list(items: Vec<Value>) -> Value {
    json!({ "kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": items })
}

fn new_audit_id() -> String {
    uuid::Uuid::from_bytes(rand_bytes()).hyphenated().to_string()
}

fn rand_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).expect("urandom");
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80;
    b
}

fn setup() -> Option<(std::sync::MutexGuard<'static, ()>, Containerd, Container)> {
    let guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let cd = Containerd::start()?;
    let c = cd.run(&pod_labels(), &[], &["sleep", "3600"]);
    Some((guard, cd, c))
}

fn exec_ok(cd: &Containerd, c: &Container, cmd: &[&str]) {
    let out = cd.exec(&c.id, cmd);
    assert!(out.status.success(), "ctr task exec {cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn assert_identity(root: &Span) {
    assert_eq!(root.str("user.name").as_deref(), Some(USER), "{root:#?}");
    assert_eq!(root.attr("user.roles"), Some(json!(["dev", "system:authenticated"])), "{root:#?}");
    assert_eq!(root.str("client.address").as_deref(), Some(SOURCE_IP), "{root:#?}");
    assert_eq!(root.str("podtrail.attribution.source").as_deref(), Some("audit_webhook"));
    assert_eq!(root.str("k8s.namespace.name").as_deref(), Some("billing"));
    assert_eq!(root.str("k8s.pod.name").as_deref(), Some("api-7d9c"));
    assert_eq!(root.str("k8s.container.name").as_deref(), Some("api"));
}

#[test]
fn audited_exec_carries_user_groups_source_ip_and_the_audit_id_as_trace_id() {
    let Some((_g, cd, c)) = setup() else { return };
    let agent = Agent::start(&cd);
    let cmd = ["sh", "-c", "echo who-am-i; sleep 0.3"];
    let audit_id = new_audit_id();
    let received = SystemTime::now();
    agent.post_audit(&event_list(exec_events(&audit_id, &cmd, received, &["RequestReceived", "ResponseStarted"])));
    exec_ok(&cd, &c, &cmd);
    agent.post_audit(&event_list(exec_events(&audit_id, &cmd, received, &["ResponseComplete"])));
    let roots = agent.wait_roots(&c.id, 1, Duration::from_secs(30));
    let spans = agent.stop();

    assert_eq!(roots.len(), 1, "{roots:#?}");
    let root = &roots[0];
    assert_eq!(root.name, "kubectl exec");
    assert_identity(root);
    assert_eq!(root.str("podtrail.attribution.confidence").as_deref(), Some("unique"));
    assert_eq!(root.str("podtrail.k8s.audit_id").as_deref(), Some(audit_id.as_str()));
    assert_eq!(root.trace_id, audit_id.replace('-', ""), "the trace id is the audit id");
    // every span of the session says who, so one-span queries find it
    let trace: Vec<&Span> = spans.iter().filter(|s| s.trace_id == root.trace_id).collect();
    assert!(trace.len() >= 2, "root and the shell's span at least: {trace:#?}");
    assert!(trace.iter().any(|s| s.name == "sh"), "{trace:#?}");
    for s in &trace {
        assert_eq!(s.str("user.name").as_deref(), Some(USER), "{s:#?}");
        assert_eq!(s.str("client.address").as_deref(), Some(SOURCE_IP), "{s:#?}");
    }
}

#[test]
fn exec_without_an_audit_record_is_exported_unattributed() {
    let Some((_g, cd, c)) = setup() else { return };
    let agent = Agent::start(&cd);
    exec_ok(&cd, &c, &["sh", "-c", "echo nobody-asked; sleep 0.3"]);
    // held for attribution (hold_ms = 3000), then exported without it
    let roots = agent.wait_roots(&c.id, 1, Duration::from_secs(30));
    let spans = agent.stop();

    assert_eq!(roots.len(), 1, "{roots:#?}");
    let root = &roots[0];
    assert_eq!(root.name, "exec");
    assert_eq!(root.str("podtrail.attribution.source").as_deref(), Some("none"), "{root:#?}");
    assert_eq!(root.str("podtrail.attribution.confidence").as_deref(), Some("none"));
    assert_eq!(root.str("user.name"), None);
    assert_eq!(root.str("k8s.pod.name").as_deref(), Some("api-7d9c"));
    assert!(spans.iter().any(|s| s.trace_id == root.trace_id && s.name == "sh"));
}

#[test]
fn two_identical_concurrent_execs_are_both_attributed_and_labelled_ambiguous() {
    let Some((_g, cd, c)) = setup() else { return };
    let agent = Agent::start(&cd);
    let cmd = ["sh", "-c", "sleep 1"];
    let ids = [new_audit_id(), new_audit_id()];
    let t0 = SystemTime::now();
    let mut events = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        events.extend(exec_events(
            id,
            &cmd,
            t0 + Duration::from_millis(i as u64),
            &["RequestReceived", "ResponseStarted"],
        ));
    }
    agent.post_audit(&event_list(events));
    let mut a = cd.exec_cmd(&c.id, &cmd).spawn().unwrap();
    let mut b = cd.exec_cmd(&c.id, &cmd).spawn().unwrap();
    assert!(a.wait().unwrap().success() && b.wait().unwrap().success());
    let roots = agent.wait_roots(&c.id, 2, Duration::from_secs(30));
    drop(agent.stop());

    assert_eq!(roots.len(), 2, "{roots:#?}");
    for root in &roots {
        assert_eq!(root.name, "kubectl exec");
        assert_identity(root);
        assert_eq!(root.str("podtrail.attribution.confidence").as_deref(), Some("ambiguous"), "{root:#?}");
        assert_eq!(root.attr("podtrail.attribution.candidates"), Some(json!(2)), "{root:#?}");
    }
    let mut got: Vec<String> = roots.iter().map(|r| r.trace_id.clone()).collect();
    let mut want: Vec<String> = ids.iter().map(|i| i.replace('-', "")).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "each session took one of the two requests");
}

#[test]
fn denied_exec_is_exported_as_a_request_without_processes() {
    let Some((_g, cd, _c)) = setup() else { return };
    let agent = Agent::start(&cd);
    let fixture: Value =
        serde_json::from_slice(&std::fs::read(Path::new(FIXTURES).join("audit/exec_denied.json")).unwrap()).unwrap();
    let audit_id = new_audit_id();
    let now = SystemTime::now();
    let items: Vec<Value> = fixture["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["objectRef"]["subresource"] == "exec")
        .map(|e| {
            let mut e = e.clone();
            e["auditID"] = json!(audit_id);
            e["requestReceivedTimestamp"] = json!(audit_time(now));
            e["stageTimestamp"] = json!(audit_time(now + Duration::from_millis(3)));
            e
        })
        .collect();
    assert!(!items.is_empty());
    agent.post_audit(&event_list(items));
    let trace = audit_id.replace('-', "");
    let deadline = Instant::now() + Duration::from_secs(20);
    let root = loop {
        if let Some(s) = read_spans(&agent.file()).into_iter().find(|s| s.trace_id == trace) {
            break s;
        }
        assert!(Instant::now() < deadline, "no trace for the denied exec:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(250));
    };
    let spans = agent.stop();

    assert!(root.parent.is_empty(), "{root:#?}");
    assert_eq!(root.name, "kubectl exec");
    assert_eq!(root.attr("podtrail.k8s.response_code"), Some(json!(403)), "{root:#?}");
    assert_eq!(root.attr("podtrail.session.processes"), Some(json!(0)), "{root:#?}");
    assert_eq!(root.str("podtrail.attribution.confidence").as_deref(), Some("none"));
    assert_eq!(root.str("user.name").as_deref(), Some("intern@example.com"));
    assert_eq!(spans.iter().filter(|s| s.trace_id == trace).count(), 1, "a request with no processes is one span");
}

#[test]
fn a_record_arriving_after_the_unattributed_export_adds_an_attribution_span_to_that_trace() {
    let Some((_g, cd, c)) = setup() else { return };
    let agent = Agent::start_with(&cd, 1500, true);
    let cmd = ["sh", "-c", "echo too-early; sleep 0.3"];
    let audit_id = new_audit_id();
    let received = SystemTime::now();
    exec_ok(&cd, &c, &cmd);
    // no record within the hold (1.5 s): exported unattributed
    let roots = agent.wait_roots(&c.id, 1, Duration::from_secs(30));
    let root = roots[0].clone();
    assert_eq!(root.name, "exec");
    assert_eq!(root.str("podtrail.attribution.source").as_deref(), Some("none"), "{root:#?}");
    assert_eq!(agent.metric("podtrail_attribution_late_total"), 0.0);
    assert_eq!(agent.metric("podtrail_sessions_unattributed"), 1.0, "remembered for a late record");

    // the API server's batch arrives late (webhook batching, retries)
    agent.post_audit(&event_list(exec_events(
        &audit_id,
        &cmd,
        received,
        &["RequestReceived", "ResponseStarted", "ResponseComplete"],
    )));
    let deadline = Instant::now() + Duration::from_secs(30);
    let late = loop {
        let spans = read_spans(&agent.file());
        if let Some(s) = spans.iter().find(|s| s.trace_id == root.trace_id && s.name == "attribution") {
            break s.clone();
        }
        assert!(Instant::now() < deadline, "no attribution span in trace {}:\n{}", root.trace_id, agent.log());
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(agent.metric("podtrail_attribution_late_total"), 1.0);
    assert_eq!(agent.metric("podtrail_sessions_unattributed"), 0.0);
    let log = agent.log();
    let spans = agent.stop();

    assert_eq!(late.parent, root.span_id, "a child of the exported root: {late:#?}");
    assert_identity(&late);
    assert_eq!(late.attr("podtrail.attribution.late"), Some(json!(true)), "{late:#?}");
    assert!(late.attr("podtrail.attribution.delay_ms").and_then(|v| v.as_i64()).is_some_and(|d| d > 0), "{late:#?}");
    assert_eq!(late.str("podtrail.k8s.audit_id").as_deref(), Some(audit_id.as_str()));
    assert_eq!(late.str("podtrail.attribution.confidence").as_deref(), Some("unique"));
    assert_eq!(late.attr("podtrail.k8s.command"), Some(json!(cmd)), "{late:#?}");
    assert!(log.contains("late record"), "a log line says so:\n{log}");
    // one attribution span, and the record did not also become a request-only trace (the
    // agent's stop exports every record still free as one)
    assert_eq!(spans.iter().filter(|s| s.name == "attribution").count(), 1);
    let audit_trace = audit_id.replace('-', "");
    assert!(spans.iter().all(|s| s.trace_id != audit_trace), "no request-only trace for the consumed record");
    assert_eq!(
        spans.iter().filter(|s| s.parent.is_empty() && s.str("user.name").as_deref() == Some(USER)).count(),
        0,
        "no root carries the user: the exported root stays as it was"
    );
}

// ---- `podtrail run` subscribed to a running `podtrail receiver` (mutual TLS) ----

/// Certificates made at test time: one CA for the receiver (serving `localhost`), the API
/// server's webhook client and the agent; a stranger CA with an agent certificate of its own.
struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    apiserver: (String, String),
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
        let issuer = |cn: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(DnType::CommonName, cn);
            CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
        };
        let leaf = |ca: &CertifiedIssuer<'static, KeyPair>, sans: &[&str], cn: &str| {
            let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            let key = KeyPair::generate().unwrap();
            (p.signed_by(&key, ca).unwrap().pem(), key.serialize_pem())
        };
        let (ca, other) = (issuer("podtrail e2e CA"), issuer("someone else's CA"));
        let dir = tempfile::tempdir().unwrap();
        for (name, (cert, key)) in [
            ("server", leaf(&ca, &["localhost"], "podtrail-receiver")),
            ("agent", leaf(&ca, &[], "podtrail-agent")),
            ("stranger", leaf(&other, &[], "podtrail-agent")),
        ] {
            std::fs::write(dir.path().join(format!("{name}.pem")), cert).unwrap();
            std::fs::write(dir.path().join(format!("{name}.key")), key).unwrap();
        }
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { ca_pem: ca.pem(), apiserver: leaf(&ca, &[], "kube-apiserver-audit-webhook"), dir }
    }

    fn path(&self, f: &str) -> String {
        self.dir.path().join(f).display().to_string()
    }

    /// A TLS client trusting the CA, presenting `identity` if any.
    fn client(&self, identity: Option<&(String, String)>) -> std::sync::Arc<tokio_rustls::rustls::ClientConfig> {
        use tokio_rustls::rustls;
        let certs = |pem: &str| podtrail::tls::certs_from_pem(pem.as_bytes());
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(&self.ca_pem) {
            roots.add(c).unwrap();
        }
        let b =
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots);
        std::sync::Arc::new(match identity {
            Some((cert, key)) => b
                .with_client_auth_cert(certs(cert), podtrail::tls::key_from_pem(key.as_bytes()).unwrap())
                .unwrap(),
            None => b.with_no_client_auth(),
        })
    }
}

/// One HTTP/1.1 request over TLS to `localhost:port`: (status, the raw reply), or the error.
fn tls_request(
    port: u16,
    tls: std::sync::Arc<tokio_rustls::rustls::ClientConfig>,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut s = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await?;
        s.write_all(body).await?;
        s.flush().await?;
        let mut raw = Vec::new();
        // a stream answer never ends: what arrived in two seconds is enough
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut raw)).await;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok());
        status.map(|c| (c, text.clone())).ok_or_else(|| std::io::Error::other(format!("no HTTP answer: {text:?}")))
    })
}

/// The real `podtrail receiver`: audit webhook and stream on free loopback ports, metrics too.
struct ReceiverProc {
    child: Child,
    dir: tempfile::TempDir,
    audit: u16,
    stream: u16,
    metrics: String,
}

impl ReceiverProc {
    fn start(pki: &Pki) -> ReceiverProc {
        let dir = tempfile::tempdir().unwrap();
        let (audit, stream, metrics) = (free_port(), free_port(), format!("127.0.0.1:{}", free_port()));
        let config = format!(
            "[receiver]\naudit_listen = \"127.0.0.1:{audit}\"\nadmission_listen = \"\"\nstream_listen = \"127.0.0.1:{stream}\"\ntls_cert = {:?}\ntls_key = {:?}\nclient_ca = {:?}\nheartbeat_s = 1\nmetrics_listen = {metrics:?}\n",
            pki.path("server.pem"),
            pki.path("server.key"),
            pki.path("ca.pem"),
        );
        std::fs::write(dir.path().join("receiver.toml"), config).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_podtrail"))
            .arg("receiver")
            .arg("--config")
            .arg(dir.path().join("receiver.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("receiver.log")).unwrap())
            .spawn()
            .expect("spawn podtrail receiver");
        let mut r = ReceiverProc { child, dir, audit, stream, metrics };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !r.log().contains("podtrail receiver listening") {
            if let Some(st) = r.child.try_wait().unwrap() {
                panic!("podtrail receiver exited ({st}):\n{}", r.log());
            }
            assert!(Instant::now() < deadline, "podtrail receiver did not come up:\n{}", r.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        r
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("receiver.log")).unwrap_or_default()
    }

    /// POST an audit EventList as the API server does (its client certificate).
    fn post_audit(&self, pki: &Pki, body: &Value) {
        let body = serde_json::to_vec(body).unwrap();
        let (status, reply) =
            tls_request(self.audit, pki.client(Some(&pki.apiserver)), "POST", "/audit", &body).expect("post audit");
        assert_eq!(status, 200, "receiver answered: {reply}\n{}", self.log());
    }

    fn metric(&self, series: &str) -> f64 {
        scrape(&self.metrics, series)
    }
}

impl Drop for ReceiverProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One series of a Prometheus endpoint at `addr` (0 when absent).
fn scrape(addr: &str, series: &str) -> f64 {
    let mut s = TcpStream::connect(addr).expect("connect to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().expect("a number"))
        .unwrap_or(0.0)
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `[attribution]` lines subscribing to `r` as `identity` (a key/cert pair in the PKI dir).
fn subscription(pki: &Pki, r: &ReceiverProc, identity: &str) -> String {
    format!(
        "receivers = [\"https://localhost:{}\"]\nreceiver_tls_cert = {:?}\nreceiver_tls_key = {:?}\nreceiver_ca = {:?}\n",
        r.stream,
        pki.path(&format!("{identity}.pem")),
        pki.path(&format!("{identity}.key")),
        pki.path("ca.pem"),
    )
}

#[test]
fn agent_subscribed_to_a_receiver_attributes_an_exec_with_the_records_posted_there() {
    let Some((_g, cd, c)) = setup() else { return };
    let pki = Pki::new();
    let receiver = ReceiverProc::start(&pki);
    let agent = Agent::launch(&cd, 5000, true, Some(&subscription(&pki, &receiver, "agent")));
    wait_until("the agent's subscription", Duration::from_secs(20), || {
        agent.metric("podtrail_stream_subscriptions_connected") >= 1.0
    });
    let cmd = ["sh", "-c", "echo via-receiver; sleep 0.3"];
    let audit_id = new_audit_id();
    let received = SystemTime::now();
    receiver
        .post_audit(&pki, &event_list(exec_events(&audit_id, &cmd, received, &["RequestReceived", "ResponseStarted"])));
    wait_until("two stages streamed to the agent", Duration::from_secs(20), || {
        agent.metric("podtrail_stream_records_kept_total") >= 2.0
    });
    exec_ok(&cd, &c, &cmd);
    receiver.post_audit(&pki, &event_list(exec_events(&audit_id, &cmd, received, &["ResponseComplete"])));
    let roots = agent.wait_roots(&c.id, 1, Duration::from_secs(30));
    assert_eq!(receiver.metric("podtrail_stream_records_streamed_total"), 3.0, "{}", receiver.log());
    drop(agent.stop());

    assert_eq!(roots.len(), 1, "{roots:#?}");
    let root = &roots[0];
    assert_eq!(root.name, "kubectl exec");
    assert_identity(root);
    assert_eq!(root.str("podtrail.k8s.audit_id").as_deref(), Some(audit_id.as_str()));
    assert_eq!(root.trace_id, audit_id.replace('-', ""), "the trace id is the audit id");
}

#[test]
fn agent_without_a_certificate_the_receiver_trusts_gets_nothing() {
    let Some((_g, cd, c)) = setup() else { return };
    let pki = Pki::new();
    let receiver = ReceiverProc::start(&pki);
    // an agent with a certificate from another CA
    let agent = Agent::launch(&cd, 1500, true, Some(&subscription(&pki, &receiver, "stranger")));
    wait_until("the stranger's handshakes refused", Duration::from_secs(20), || {
        receiver.metric("podtrail_attribution_records_rejected_total{reason=\"tls_handshake\"}") >= 1.0
    });
    let cmd = ["sh", "-c", "echo not-for-you; sleep 0.3"];
    let audit_id = new_audit_id();
    let received = SystemTime::now();
    receiver.post_audit(
        &pki,
        &event_list(exec_events(
            &audit_id,
            &cmd,
            received,
            &["RequestReceived", "ResponseStarted", "ResponseComplete"],
        )),
    );
    exec_ok(&cd, &c, &cmd);
    let roots = agent.wait_roots(&c.id, 1, Duration::from_secs(30));
    // a client with no certificate at all: 401 and not one record line
    let (status, reply) = tls_request(receiver.stream, pki.client(None), "GET", "/v1/records?node=x&since=0", b"")
        .expect("the handshake itself succeeds without a certificate");
    assert_eq!(status, 401, "{reply}");
    assert!(!reply.contains("\"type\":\"record\""), "{reply}");
    assert_eq!(receiver.metric("podtrail_attribution_records_rejected_total{reason=\"no_client_cert\"}"), 1.0);
    // while a trusted client would have been streamed the record (the receiver has it)
    let (status, reply) =
        tls_request(receiver.stream, pki.client(Some(&pki.apiserver)), "GET", "/v1/records?node=x&since=0", b"")
            .unwrap();
    assert_eq!(status, 200, "{reply}");
    assert!(reply.contains(&audit_id), "the receiver holds the record: {reply}");
    assert_eq!(agent.metric("podtrail_stream_records_received_total"), 0.0);
    assert_eq!(agent.metric("podtrail_stream_subscriptions_connected"), 0.0);
    drop(agent.stop());

    assert_eq!(roots.len(), 1, "{roots:#?}");
    assert_eq!(roots[0].name, "exec");
    assert_eq!(roots[0].str("podtrail.attribution.source").as_deref(), Some("none"), "{:#?}", roots[0]);
    assert_eq!(roots[0].str("user.name"), None);
}
