//! Issue 13, forged "who": a real container, the real `podtrail run` with its admission webhook
//! over mutual TLS (the API server's CA and name required) and, in a second agent, taken as
//! unverified (a managed cluster), beside a loopback audit webhook.
//!
//! An admission review that names a user for the exec that follows, sent without a client
//! certificate and then with an agent's certificate of the same CA, is refused (401, 403) and
//! counted, and the real exec it describes stays unattributed; the same review with the API
//! server's certificate attributes it. Where admission is unverified, a forged review loses to
//! the verified audit record of the same exec, and alone it attributes at most `ambiguous`,
//! labelled `podtrail.attribution.verified=false`.
//! Needs root and containerd; fails (never skips) when they are missing.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use support::agent::{containerd_config, metric, FileAgent};
use support::audit::{event_list, exec_events, fixture, new_audit_id, pod_labels};
use support::containers::Containerd;
use support::net::{free_port, http_get};
use support::otlp_json::{self, Span};
use support::tls::{client, issuer, leaf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;

/// The receiver-side certificates: a CA, the agent's serving certificate for its admission
/// webhook, the API server's client certificate and an agent's, written to `dir`.
struct Pki {
    ca: String,
    apiserver: (String, String),
    agent: (String, String),
}

fn pki(dir: &Path) -> Pki {
    let ca = issuer("podtrail e2e CA");
    let server = leaf(&ca, &["localhost"], "podtrail-receiver");
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), &server.0).unwrap();
    std::fs::write(dir.join("server.key"), &server.1).unwrap();
    Pki { ca: ca.pem(), apiserver: leaf(&ca, &[], "kube-apiserver"), agent: leaf(&ca, &[], "podtrail-agent:node-a") }
}

/// The recorded admission review of `kubectl exec` by `user` of `command` into
/// billing/api-7d9c, with a fresh uid.
fn review(user: &str, command: &[&str]) -> Vec<u8> {
    let mut r = fixture("admission/exec_review.json");
    r["request"]["uid"] = json!(new_audit_id());
    r["request"]["userInfo"]["username"] = json!(user);
    r["request"]["object"]["command"] = json!(command);
    serde_json::to_vec(&r).unwrap()
}

/// POST over TLS with `identity` (or none): the status code, 0 when the TLS handshake failed.
fn post(addr: SocketAddr, tls: Arc<ClientConfig>, body: &[u8]) -> u16 {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let Ok(mut s) = TlsConnector::from(tls).connect(ServerName::try_from("localhost").unwrap(), tcp).await else {
            return 0;
        };
        let head = format!(
            "POST /admission HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw).await;
        let text = String::from_utf8_lossy(&raw);
        text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
    })
}

/// An agent following `cd` with a loopback audit webhook, the admission webhook `admission`
/// (a TOML table body) on `port`, metrics on `metrics`.
fn agent(cd: &Containerd, dir: &Path, port: u16, metrics: u16, admission: &str) -> FileAgent {
    let extra = format!(
        "[attribution]\nhold_ms = 3000\naudit_wait_ms = 1500\n\n[attribution.admission_webhook]\nlisten = \"127.0.0.1:{port}\"\ntls_cert = {:?}\ntls_key = {:?}\n{admission}\n\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n",
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    FileAgent::start_audited(&containerd_config(&cd.address, &cd.namespace, &extra), &[])
}

/// The root span of the session of `container` whose root ran `argv0`, once exported.
fn root_of(a: &FileAgent, container: &str, argv0: &str) -> Span {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let spans = otlp_json::read(&a.file());
        let trace = spans
            .iter()
            .find(|s| {
                s.text("container.id").as_deref() == Some(container)
                    && !s.is_root()
                    && s.text("process.command").as_deref() == Some(argv0)
            })
            .map(|s| s.trace_id.clone());
        if let Some(t) = trace {
            if let Some(root) = spans.iter().find(|s| s.trace_id == t && s.is_root()) {
                return root.clone();
            }
        }
        assert!(Instant::now() < deadline, "no exported session of {argv0}:\n{}", a.log());
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn scrape(port: u16) -> String {
    http_get(&format!("http://127.0.0.1:{port}/metrics")).expect("metrics").1
}

#[test]
fn forged_admission_reviews_are_refused_and_the_exec_stays_unattributed() {
    let cd = Containerd::start();
    let c = cd.run(&pod_labels(), &[], &["sleep", "3600"]);
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path());
    let (port, mport) = (free_port(), free_port());
    let ca = dir.path().join("ca.pem");
    let a = agent(&cd, dir.path(), port, mport, &format!("client_ca = {ca:?}\nallowed_clients = [\"kube-apiserver\"]"));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // mallory, from a pod: no certificate, then the agent certificate she took from a node
    assert_eq!(post(addr, client(&p.ca, None), &review("mallory", &["id"])), 401);
    assert_eq!(post(addr, client(&p.ca, Some(&p.agent)), &review("mallory", &["id"])), 403);
    let m = scrape(mport);
    assert_eq!(metric(&m, "podtrail_attribution_records_rejected_total{reason=\"no_client_cert\"}"), Some(1.0), "{m}");
    assert_eq!(
        metric(&m, "podtrail_attribution_records_rejected_total{reason=\"peer_not_allowed\"}"),
        Some(1.0),
        "{m}"
    );
    let _ = cd.exec(&c.id, &["id"]);
    let root = root_of(&a, &c.id, "id");
    assert_eq!(root.text("podtrail.attribution.source").as_deref(), Some("none"), "{root:#?}");
    let file = std::fs::read_to_string(a.file()).unwrap();
    assert!(!file.contains("mallory"), "the forged user is nowhere in the trail");

    // the API server's own review attributes the next exec, verified
    assert_eq!(post(addr, client(&p.ca, Some(&p.apiserver)), &review("jane", &["hostname"])), 200);
    let _ = cd.exec(&c.id, &["hostname"]);
    let root = root_of(&a, &c.id, "hostname");
    assert_eq!(root.text("user.name").as_deref(), Some("jane"), "{root:#?}\n{}", a.log());
    assert_eq!(root.text("podtrail.attribution.source").as_deref(), Some("admission"));
    assert_eq!(root.text("podtrail.attribution.confidence").as_deref(), Some("unique"));
    assert!(root.text("podtrail.attribution.verified").is_none(), "verified records carry no mark");
}

#[test]
fn an_unverified_admission_record_never_outranks_a_verified_audit_record() {
    let cd = Containerd::start();
    let c = cd.run(&pod_labels(), &[], &["sleep", "3600"]);
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path());
    let (port, mport) = (free_port(), free_port());
    let a = agent(&cd, dir.path(), port, mport, "unverified = true");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // a forged review for the exec the audit log will describe as jane's
    assert_eq!(post(addr, client(&p.ca, None), &review("mallory", &["uname"])), 200);
    a.post_audit(&event_list(exec_events(
        &new_audit_id(),
        &["uname"],
        SystemTime::now(),
        &["RequestReceived", "ResponseStarted"],
    )));
    let _ = cd.exec(&c.id, &["uname"]);
    let root = root_of(&a, &c.id, "uname");
    assert_eq!(root.text("user.name").as_deref(), Some("john.doe@example.com"), "{root:#?}\n{}", a.log());
    assert_eq!(root.text("podtrail.attribution.source").as_deref(), Some("audit_webhook"));
    assert!(root.text("podtrail.attribution.verified").is_none());

    // alone, a forged review attributes at most "ambiguous", marked unverified
    assert_eq!(post(addr, client(&p.ca, None), &review("mallory", &["true"])), 200);
    let _ = cd.exec(&c.id, &["true"]);
    let root = root_of(&a, &c.id, "true");
    assert_eq!(root.text("user.name").as_deref(), Some("mallory"), "{root:#?}");
    assert_eq!(root.text("podtrail.attribution.confidence").as_deref(), Some("ambiguous"));
    assert_eq!(root.attr("podtrail.attribution.verified"), Some(Value::Bool(false)), "{root:#?}");
}
