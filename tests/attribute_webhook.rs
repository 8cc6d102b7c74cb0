//! The audit and admission webhooks over real TLS: certificates made at test time, a rustls
//! client speaking HTTP/1.1, and the fixtures in the format the API server sends.

mod support;

use podtrail::attribute::{
    admission_router, audit_router, AttributeMetrics, AttributionSource, Confidence, ListenerConfig, RecordStore,
    ServeError, SessionQuery, StoreConfig, WebhookConfig, WebhookServer,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;

use support::audit::fixture_bytes as fixture;
use support::tls::{self, issuer, leaf};

/// A CA, a server certificate for localhost, and client certificates from that CA and from a
/// stranger CA, written as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    client: (String, String),
    stranger: (String, String),
}

impl Pki {
    fn new() -> Self {
        let ca = issuer("podtrail test CA");
        let other = issuer("someone else's CA");
        let server = leaf(&ca, &["localhost"], "podtrail-receiver");
        let client = leaf(&ca, &[], "kube-apiserver-audit-webhook");
        let stranger = leaf(&other, &[], "kube-apiserver-audit-webhook");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), &server.0).unwrap();
        std::fs::write(dir.path().join("server.key"), &server.1).unwrap();
        Self { ca_pem: ca.pem(), client, stranger, dir }
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    fn mtls(&self) -> ListenerConfig {
        ListenerConfig::mtls(
            "127.0.0.1:0".parse().unwrap(),
            self.path("server.pem"),
            self.path("server.key"),
            self.path("ca.pem"),
        )
    }
}

fn client_config(pki: &Pki, identity: Option<&(String, String)>) -> Arc<ClientConfig> {
    tls::client(&pki.ca_pem, identity)
}

struct Reply {
    status: u16,
    body: String,
}

/// One HTTP/1.1 request over TLS (or plain TCP when `tls` is None).
async fn post(addr: SocketAddr, tls: Option<Arc<ClientConfig>>, path: &str, body: &[u8]) -> std::io::Result<Reply> {
    let tcp = TcpStream::connect(addr).await?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut raw = Vec::new();
    match tls {
        Some(cfg) => {
            let mut s = TlsConnector::from(cfg).connect(ServerName::try_from("localhost").unwrap(), tcp).await?;
            s.write_all(head.as_bytes()).await?;
            s.write_all(body).await?;
            s.flush().await?;
            s.read_to_end(&mut raw).await?;
        }
        None => {
            let mut s = tcp;
            s.write_all(head.as_bytes()).await?;
            s.write_all(body).await?;
            s.read_to_end(&mut raw).await?;
        }
    }
    parse_reply(&raw)
        .ok_or_else(|| std::io::Error::other(format!("no HTTP response: {:?}", String::from_utf8_lossy(&raw))))
}

fn parse_reply(raw: &[u8]) -> Option<Reply> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut rest = body;
        while let Some((len, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(len.trim(), 16).ok()?;
            if n == 0 {
                break;
            }
            out.push_str(tail.get(..n)?);
            rest = tail.get(n + 2..)?;
        }
        out
    } else {
        body.to_owned()
    };
    Some(Reply { status, body })
}

struct Running {
    addr: SocketAddr,
    store: Arc<RecordStore>,
    _stop: oneshot::Sender<()>,
}

async fn start(cfg: ListenerConfig, admission: bool, wcfg: WebhookConfig, scfg: StoreConfig) -> Running {
    let store = Arc::new(RecordStore::new(scfg));
    let router = if admission { admission_router(store.clone(), &wcfg) } else { audit_router(store.clone(), &wcfg) };
    let server = WebhookServer::bind(&cfg, router, store.metrics().clone()).await.expect("bind");
    let addr = server.local_addr();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    Running { addr, store, _stop: tx }
}

fn ws_query(at: &str) -> SessionQuery {
    SessionQuery {
        pod_namespace: Some("billing".into()),
        pod_name: Some("api-7d9c".into()),
        pod_uid: None,
        container_name: Some("api".into()),
        argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
        started_at: SystemTime::from(at.parse::<jiff::Timestamp>().unwrap()),
        env_audit_id: None,
    }
}

#[tokio::test]
async fn audit_batch_over_mtls_is_stored_before_the_200() {
    let pki = Pki::new();
    let r = start(pki.mtls(), false, WebhookConfig::default(), StoreConfig::default()).await;
    let reply =
        post(r.addr, Some(client_config(&pki, Some(&pki.client))), "/audit", &fixture("audit/exec_websocket.json"))
            .await
            .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    let sum: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(
        (sum["inserted"].as_u64(), sum["merged"].as_u64(), sum["ignored"].as_u64()),
        (Some(1), Some(2), Some(1))
    );
    let a = r.store.match_session(&ws_query("2026-03-02T14:05:07.2Z")).expect("attributed");
    assert_eq!(a.source, AttributionSource::AuditWebhook);
    assert_eq!(a.user_name.as_deref(), Some("john.doe@example.com"));
    assert_eq!(a.client_address.as_deref(), Some("66.249.64.55"));

    // The API server retries a batch it thinks failed: everything is a duplicate.
    let again =
        post(r.addr, Some(client_config(&pki, Some(&pki.client))), "/audit", &fixture("audit/exec_websocket.json"))
            .await
            .unwrap();
    assert_eq!(again.status, 200);
    assert_eq!(AttributeMetrics::by_source(&r.store.metrics().duplicates, "audit_webhook"), 3);
}

#[tokio::test]
async fn every_fixture_batch_is_accepted() {
    let pki = Pki::new();
    let r = start(pki.mtls(), false, WebhookConfig::default(), StoreConfig::default()).await;
    let cfg = client_config(&pki, Some(&pki.client));
    for f in [
        "exec_spdy",
        "exec_denied",
        "attach",
        "cp_tar",
        "ephemeral_debug",
        "impersonation",
        "multi_source_ips",
        "non_uuid_audit_id",
        "no_container",
        "script_exec",
        "port_forward",
    ] {
        let reply = post(r.addr, Some(cfg.clone()), "/", &fixture(&format!("audit/{f}.json"))).await.unwrap();
        assert_eq!(reply.status, 200, "{f}: {}", reply.body);
        assert!(reply.body.contains("\"rejected\":0"), "{f}: {}", reply.body);
    }
    // one record per request: the recorded denial is two requests (WebSocket, then SPDY)
    assert_eq!(r.store.len(), 13);
}

#[tokio::test]
async fn client_without_certificate_gets_401_and_nothing_is_stored() {
    let pki = Pki::new();
    let r = start(pki.mtls(), false, WebhookConfig::default(), StoreConfig::default()).await;
    let reply =
        post(r.addr, Some(client_config(&pki, None)), "/audit", &fixture("audit/exec_websocket.json")).await.unwrap();
    assert_eq!(reply.status, 401);
    assert!(r.store.is_empty());
    assert_eq!(r.store.metrics().rejected_count("no_client_cert"), 1);
}

#[tokio::test]
async fn client_certificate_from_another_ca_fails_the_handshake() {
    let pki = Pki::new();
    let r = start(pki.mtls(), false, WebhookConfig::default(), StoreConfig::default()).await;
    let result =
        post(r.addr, Some(client_config(&pki, Some(&pki.stranger))), "/audit", &fixture("audit/exec_websocket.json"))
            .await;
    assert!(result.is_err(), "an untrusted client certificate must not get an HTTP answer");
    assert!(r.store.is_empty());
    for _ in 0..50 {
        if r.store.metrics().rejected_count("tls_handshake") == 1 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("handshake failure not counted");
}

#[tokio::test]
async fn plain_http_client_on_the_tls_port_gets_no_answer() {
    let pki = Pki::new();
    let r = start(pki.mtls(), false, WebhookConfig::default(), StoreConfig::default()).await;
    let result = post(r.addr, None, "/audit", &fixture("audit/exec_websocket.json")).await;
    assert!(result.is_err());
    assert!(r.store.is_empty());
}

#[tokio::test]
async fn malformed_json_gets_400_with_a_counted_reason() {
    let pki = Pki::new();
    let r = start(pki.mtls(), false, WebhookConfig::default(), StoreConfig::default()).await;
    let reply = post(r.addr, Some(client_config(&pki, Some(&pki.client))), "/audit", &fixture("audit/malformed.json"))
        .await
        .unwrap();
    assert_eq!(reply.status, 400);
    assert!(reply.body.contains("malformed_json"), "{}", reply.body);
    assert_eq!(r.store.metrics().rejected_count("malformed_json"), 1);
}

/// A batch far beyond what the API server sends by default (400 events): 30 000 events, most
/// about other resources, is accepted in one piece, where the body limit is raised for it (the
/// default, matched to the API server's largest truncated batch, refuses it: attribute_intake),
/// while the store stays within its bound.
#[tokio::test]
async fn very_large_batch_is_accepted_and_memory_stays_bounded() {
    let pki = Pki::new();
    let scfg = StoreConfig { max_records: 1000, ..StoreConfig::default() };
    let wcfg = WebhookConfig { max_body_bytes: 48 << 20, ..WebhookConfig::default() };
    let r = start(pki.mtls(), false, wcfg, scfg).await;
    let template: serde_json::Value = serde_json::from_slice(&fixture("audit/exec_websocket.json")).unwrap();
    let unrelated = template["items"][0].clone();
    let exec = template["items"][2].clone();
    let mut items = Vec::new();
    for i in 0..30_000u32 {
        let mut e = if i % 3 == 0 { exec.clone() } else { unrelated.clone() };
        e["auditID"] = serde_json::json!(format!("{:08x}-0000-4000-8000-{:012x}", i, i));
        items.push(e);
    }
    let body =
        serde_json::to_vec(&serde_json::json!({"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":items}))
            .unwrap();
    assert!(body.len() > 20 << 20, "batch is {} bytes", body.len());
    let reply = post(r.addr, Some(client_config(&pki, Some(&pki.client))), "/audit", &body).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(r.store.len(), 1000);
    assert_eq!(r.store.metrics().evicted.get_or_create(&vec![("state", "unused")]).get(), 9000);
    assert_eq!(AttributeMetrics::by_source(&r.store.metrics().ignored, "audit_webhook"), 20_000);
}

#[tokio::test]
async fn body_over_the_configured_limit_gets_413_and_is_counted() {
    let pki = Pki::new();
    let wcfg = WebhookConfig { max_body_bytes: 1024, ..WebhookConfig::default() };
    let r = start(pki.mtls(), false, wcfg, StoreConfig::default()).await;
    let reply =
        post(r.addr, Some(client_config(&pki, Some(&pki.client))), "/audit", &fixture("audit/exec_websocket.json"))
            .await
            .unwrap();
    assert_eq!(reply.status, 413);
    assert_eq!(r.store.metrics().rejected_count("body_too_large"), 1);
}

#[tokio::test]
async fn plain_http_is_refused_off_loopback_and_served_on_it() {
    let store = Arc::new(RecordStore::new(StoreConfig::default()));
    let router = audit_router(store.clone(), &WebhookConfig::default());
    let off = ListenerConfig::plaintext_loopback("0.0.0.0:0".parse().unwrap());
    let err = WebhookServer::bind(&off, router.clone(), store.metrics().clone()).await.err().expect("refused");
    assert!(matches!(err, ServeError::PlaintextNotLoopback(_)));
    assert!(err.to_string().contains("only allowed on a loopback address"), "{err}");

    let mut no_tls = ListenerConfig::plaintext_loopback("127.0.0.1:0".parse().unwrap());
    no_tls.plaintext_loopback = false;
    assert!(matches!(WebhookServer::bind(&no_tls, router, store.metrics().clone()).await, Err(ServeError::NoTls(_))));

    let r = start(
        ListenerConfig::plaintext_loopback("127.0.0.1:0".parse().unwrap()),
        false,
        WebhookConfig::default(),
        StoreConfig::default(),
    )
    .await;
    let reply = post(r.addr, None, "/audit", &fixture("audit/exec_websocket.json")).await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(r.store.len(), 1);
}

/// The admission webhook as the receiver runs it: the API server's client certificate
/// required (an unverified one is tests/attribute_intake.rs's and e2e_forged.rs's).
fn admission_listener(pki: &Pki) -> ListenerConfig {
    pki.mtls()
}

#[tokio::test]
async fn admission_review_is_allowed_annotated_and_recorded() {
    let pki = Pki::new();
    let r = start(admission_listener(&pki), true, WebhookConfig::default(), StoreConfig::default()).await;
    let reply = post(
        r.addr,
        Some(client_config(&pki, Some(&pki.client))),
        "/admission",
        &fixture("admission/exec_review.json"),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    let v: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(v["kind"], "AdmissionReview");
    assert_eq!(v["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(v["response"]["allowed"], true);
    assert_eq!(v["response"]["auditAnnotations"]["trace-id"], "705ab4f5639311e8b7cc42010a800002");

    let mut q = ws_query("2026-03-02T14:05:07.2Z");
    q.started_at = SystemTime::now();
    let a = r.store.match_session(&q).expect("attributed by admission");
    assert_eq!((a.source, a.confidence), (AttributionSource::Admission, Confidence::Unique));
    assert_eq!(a.user_name.as_deref(), Some("john.doe@example.com"));
    assert_eq!(a.user_extra["authentication.kubernetes.io/credential-id"], vec!["X509SHA256=2f1c0e9b7a".to_string()]);
    // parsed, and emitted: the identity the span builder gets carries it as key=value
    let who = podtrail::spans::SessionIdentity::from(&a);
    assert_eq!(who.user_extra, ["authentication.kubernetes.io/credential-id=X509SHA256=2f1c0e9b7a"]);
    assert_eq!(a.client_address, None);
    assert_eq!(a.trace_id.map(hex::encode).as_deref(), Some("705ab4f5639311e8b7cc42010a800002"));
}

#[tokio::test]
async fn admission_review_of_something_else_is_allowed_and_not_recorded() {
    let pki = Pki::new();
    let r = start(admission_listener(&pki), true, WebhookConfig::default(), StoreConfig::default()).await;
    let reply =
        post(r.addr, Some(client_config(&pki, Some(&pki.client))), "/", &fixture("admission/pod_create_review.json"))
            .await
            .unwrap();
    assert_eq!(reply.status, 200);
    let v: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(v["response"]["allowed"], true);
    assert!(v["response"].get("auditAnnotations").is_none());
    assert!(r.store.is_empty());

    let bad = post(r.addr, Some(client_config(&pki, Some(&pki.client))), "/", b"{\"request\":").await.unwrap();
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn attach_and_impersonated_reviews_are_recorded() {
    let pki = Pki::new();
    let r = start(admission_listener(&pki), true, WebhookConfig::default(), StoreConfig::default()).await;
    for f in ["attach_review", "exec_review_impersonated"] {
        let reply =
            post(r.addr, Some(client_config(&pki, Some(&pki.client))), "/", &fixture(&format!("admission/{f}.json")))
                .await
                .unwrap();
        assert_eq!(reply.status, 200);
        assert!(reply.body.contains("trace-id"), "{f}: {}", reply.body);
    }
    assert_eq!(r.store.len(), 2);
}
