//! Attribution end to end on one machine: a private containerd + runc (tests/support), a busybox
//! container labelled by "kubelet" as pod `billing/api-7d9c` container `api`, the real
//! `podtrail run` binary with its loopback audit webhook and an OTLP/JSON file. The test posts
//! the API server's audit `EventList` of a `kubectl exec` (the fixture, with fresh ids and
//! times), runs the same command with `ctr task exec`, and reads the file back as the OTLP/JSON
//! the Collector's file exporter writes (decoded here from the JSON, not with podtrail's code).
//! Needs root and containerd; fails (never skips) when one is missing.

mod support;

use std::{
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

use serde_json::{json, Value};
use support::agent::{containerd_config, FileAgent};
use support::audit::{audit_time, event_list, exec_events, fixture, new_audit_id, pod_labels};
use support::containers::{Container, Containerd};
use support::net::{free_port, http_get};
use support::otlp_json::{self, Span};
use support::tls;

/// One agent (kernel programs, containerd) at a time in this binary.
static SERIAL: Mutex<()> = Mutex::new(());

const USER: &str = "john.doe@example.com";
const SOURCE_IP: &str = "66.249.64.55";

/// `podtrail run` with a loopback audit webhook, writing OTLP/JSON to a file; SIGTERM on drop.
struct Agent {
    inner: FileAgent,
    /// `127.0.0.1:port` of `/metrics`, when asked for.
    metrics: Option<String>,
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
        let metrics = metrics.then(|| format!("127.0.0.1:{}", free_port()));
        let extra = format!(
            "[attribution]\nhold_ms = {hold_ms}\n{}\n[metrics]\nlisten = {:?}\n",
            receivers.unwrap_or_default(),
            metrics.clone().unwrap_or_default(),
        );
        let config = containerd_config(&cd.address, &cd.namespace, &extra);
        let inner =
            if receivers.is_none() { FileAgent::start_audited(&config, &[]) } else { FileAgent::start(&config, &[]) };
        Agent { inner, metrics }
    }

    /// The value of one series on `/metrics` (0 when absent).
    fn metric(&self, series: &str) -> f64 {
        scrape(self.metrics.as_ref().expect("agent started with metrics"), series)
    }

    /// Stops the agent (SIGTERM: it drains and flushes) and returns every span it wrote.
    fn stop(mut self) -> Vec<Span> {
        self.inner.terminate();
        otlp_json::read(&self.file())
    }

    /// Waits until `n` root spans of sessions in `container` are in the file.
    fn wait_roots(&self, container: &str, n: usize, timeout: Duration) -> Vec<Span> {
        let deadline = Instant::now() + timeout;
        loop {
            let roots = session_roots(&otlp_json::read(&self.file()), container);
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

impl std::ops::Deref for Agent {
    type Target = FileAgent;
    fn deref(&self) -> &FileAgent {
        &self.inner
    }
}

/// Root spans of process sessions in one container.
fn session_roots(spans: &[Span], container: &str) -> Vec<Span> {
    spans
        .iter()
        .filter(|s| s.parent.is_empty() && s.str("container.id").as_deref() == Some(container))
        .cloned()
        .collect()
}

fn setup() -> (std::sync::MutexGuard<'static, ()>, Containerd, Container) {
    let guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let cd = Containerd::start();
    let c = cd.run(&pod_labels(), &[], &["sleep", "3600"]);
    (guard, cd, c)
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
    let (_g, cd, c) = setup();
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
    let (_g, cd, c) = setup();
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
    let (_g, cd, c) = setup();
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
    let (_g, cd, _c) = setup();
    let agent = Agent::start(&cd);
    let fixture = fixture("audit/exec_denied.json");
    let audit_id = new_audit_id();
    let now = SystemTime::now();
    let items: Vec<Value> = fixture["items"]
        .as_array()
        .unwrap()
        .iter()
        // the first of the recorded denial's two requests (kubectl's WebSocket try)
        .filter(|e| e["auditID"] == fixture["items"][0]["auditID"])
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
        if let Some(s) = otlp_json::read(&agent.file()).into_iter().find(|s| s.trace_id == trace) {
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
    assert_eq!(root.str("user.name").as_deref(), Some("mallory@example.com"));
    assert_eq!(spans.iter().filter(|s| s.trace_id == trace).count(), 1, "a request with no processes is one span");
}

#[test]
fn a_record_arriving_after_the_unattributed_export_adds_an_attribution_span_to_that_trace() {
    let (_g, cd, c) = setup();
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
    // a gauge over the whole host: the other tests of this binary run containers beside this one
    assert!(agent.metric("podtrail_sessions_unattributed") >= 1.0, "remembered for a late record");

    // the API server's batch arrives late (webhook batching, retries)
    agent.post_audit(&event_list(exec_events(
        &audit_id,
        &cmd,
        received,
        &["RequestReceived", "ResponseStarted", "ResponseComplete"],
    )));
    let deadline = Instant::now() + Duration::from_secs(30);
    let late = loop {
        let spans = otlp_json::read(&agent.file());
        if let Some(s) = spans.iter().find(|s| s.trace_id == root.trace_id && s.name == "attribution") {
            break s.clone();
        }
        assert!(Instant::now() < deadline, "no attribution span in trace {}:\n{}", root.trace_id, agent.log());
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(agent.metric("podtrail_attribution_late_total"), 1.0);
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
        let (ca, other) = (tls::issuer("podtrail e2e CA"), tls::issuer("someone else's CA"));
        let dir = tempfile::tempdir().unwrap();
        for (name, (cert, key)) in [
            ("server", tls::leaf(&ca, &["localhost"], "podtrail-receiver")),
            ("agent", tls::leaf(&ca, &[], "podtrail-agent")),
            ("stranger", tls::leaf(&other, &[], "podtrail-agent")),
        ] {
            std::fs::write(dir.path().join(format!("{name}.pem")), cert).unwrap();
            std::fs::write(dir.path().join(format!("{name}.key")), key).unwrap();
        }
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { ca_pem: ca.pem(), apiserver: tls::leaf(&ca, &[], "kube-apiserver"), dir }
    }

    fn path(&self, f: &str) -> String {
        self.dir.path().join(f).display().to_string()
    }

    /// A TLS client trusting the CA, presenting `identity` if any.
    fn client(&self, identity: Option<&(String, String)>) -> std::sync::Arc<tokio_rustls::rustls::ClientConfig> {
        tls::client(&self.ca_pem, identity)
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
            "[receiver]\naudit_listen = \"127.0.0.1:{audit}\"\nadmission_listen = \"\"\nstream_listen = \"127.0.0.1:{stream}\"\ntls_cert = {:?}\ntls_key = {:?}\nclient_ca = {:?}\napiserver_client_ca = {:?}\nagent_auth = \"none\"\nheartbeat_s = 1\nmetrics_listen = {metrics:?}\n",
            pki.path("server.pem"),
            pki.path("server.key"),
            pki.path("ca.pem"),
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
    let (status, text) = http_get(&format!("http://{addr}/metrics")).expect("scrape /metrics");
    assert_eq!(status, 200, "/metrics answered: {text}");
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
    let (_g, cd, c) = setup();
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
    let (_g, cd, c) = setup();
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
    // the API server's certificate, of the same CA, is not an agent's: 403
    let (status, reply) =
        tls_request(receiver.stream, pki.client(Some(&pki.apiserver)), "GET", "/v1/records?node=x&since=0", b"")
            .unwrap();
    assert_eq!(status, 403, "{reply}");
    assert_eq!(receiver.metric("podtrail_attribution_records_rejected_total{reason=\"peer_not_allowed\"}"), 1.0);
    // while a trusted agent would have been streamed the record (the receiver has it)
    let agent_id = (
        std::fs::read_to_string(pki.path("agent.pem")).unwrap(),
        std::fs::read_to_string(pki.path("agent.key")).unwrap(),
    );
    let (status, reply) =
        tls_request(receiver.stream, pki.client(Some(&agent_id)), "GET", "/v1/records?node=x&since=0", b"").unwrap();
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
