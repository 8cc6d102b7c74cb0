//! The receiver's listeners under attack, over real TLS with real HTTP bytes: slow uploads on
//! every parse permit, oversized bodies and stream lines, too many connections, headers that
//! never end and connections that say nothing. Each attack is refused and counted by reason,
//! and the valid request after it gets through.

mod support;

use podtrail::attribute::stream::subscribe::{parse_receiver, subscription};
use podtrail::attribute::stream::{Receiver, ReceiverConfig, RecordSink, StreamMetrics, SubscribeConfig};
use podtrail::attribute::{
    admission_router, IntakeLimits, ListenerConfig, RecordStore, StoreConfig, WebhookConfig, WebhookServer,
};
use podtrail::tls::reloading_client_config;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsAcceptor;

use support::audit::{event_list, exec_events, fixture, new_audit_id};
use support::tls::{self, issuer, leaf};
use support::wait::eventually;

/// A CA, the receiver's serving certificate, the API server's client certificate and an
/// agent's, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    apiserver: (String, String),
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = issuer("podtrail test CA");
        let write = |name: &str, (cert, key): &(String, String)| {
            std::fs::write(dir.path().join(format!("{name}.pem")), cert).unwrap();
            std::fs::write(dir.path().join(format!("{name}.key")), key).unwrap();
        };
        write("server", &leaf(&ca, &["localhost"], "podtrail-receiver"));
        write("agent", &leaf(&ca, &[], "podtrail-agent"));
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Self { ca_pem: ca.pem(), apiserver: leaf(&ca, &[], "kube-apiserver"), dir }
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    fn listener(&self, limits: IntakeLimits) -> ListenerConfig {
        let mut l = ListenerConfig::mtls(
            "127.0.0.1:0".parse().unwrap(),
            self.path("server.pem"),
            self.path("server.key"),
            self.path("ca.pem"),
        )
        .named("admission");
        l.limits = limits;
        l
    }

    fn apiserver_client(&self) -> Arc<ClientConfig> {
        tls::client(&self.ca_pem, Some(&self.apiserver))
    }
}

struct Running {
    addr: SocketAddr,
    store: Arc<RecordStore>,
    _stop: oneshot::Sender<()>,
}

async fn start_admission(pki: &Pki, limits: IntakeLimits, wcfg: WebhookConfig) -> Running {
    let store = Arc::new(RecordStore::new(StoreConfig::default()));
    let server =
        WebhookServer::bind(&pki.listener(limits), admission_router(store.clone(), &wcfg), store.metrics().clone())
            .await
            .expect("bind");
    let addr = server.local_addr();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    Running { addr, store, _stop: tx }
}

/// The recorded admission review of `kubectl exec` with a fresh uid and `command`.
fn review(command: &[&str]) -> Vec<u8> {
    let mut r = fixture("admission/exec_review.json");
    r["request"]["uid"] = json!(new_audit_id());
    r["request"]["object"]["command"] = json!(command);
    serde_json::to_vec(&r).unwrap()
}

fn review_uid(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap();
    v["request"]["uid"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_on_every_permit_do_not_delay_a_valid_review() {
    let pki = Pki::new();
    let wcfg = WebhookConfig { max_concurrent_batches: 4, body_timeout: Duration::from_secs(4), ..Default::default() };
    let r = start_admission(&pki, IntakeLimits::default(), wcfg).await;
    // Twice as many slow uploads as there are parse permits, each announcing 64 KiB and
    // dribbling a byte every 100 ms.
    let mut slow = Vec::new();
    for _ in 0..8 {
        let mut s = tls::connect(r.addr, pki.apiserver_client()).await.unwrap();
        s.write_all(b"POST /admission HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 65536\r\n\r\n{").await.unwrap();
        slow.push(tokio::spawn(async move {
            for _ in 0..200 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if s.write_all(b" ").await.is_err() || s.flush().await.is_err() {
                    break;
                }
            }
            let mut raw = Vec::new();
            let _ = s.read_to_end(&mut raw).await;
            String::from_utf8_lossy(&raw).into_owned()
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let body = review(&["sh"]);
    let started = Instant::now();
    let (status, text) = tokio::time::timeout(
        Duration::from_secs(1),
        tls::request(r.addr, pki.apiserver_client(), "POST", "/admission", &body),
    )
    .await
    .expect("a valid review is answered within 1 s while slow uploads hold every permit")
    .unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"allowed\":true"), "{text}");
    assert!(
        r.store.metrics().rejected_count("body_timeout") == 0,
        "the slow uploads were still open during the review"
    );
    eprintln!("valid review answered in {:?} beside 8 slow uploads", started.elapsed());
    // The slow uploads run into the body timeout, each answered 408 and counted.
    for s in slow {
        let reply = s.await.unwrap();
        // (the 408 may be lost to the reset of a socket closed with unread bytes)
        assert!(reply.is_empty() || reply.starts_with("HTTP/1.1 408"), "{reply}");
    }
    assert_eq!(r.store.metrics().rejected_count("body_timeout"), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5_mib_webhook_body_is_refused_and_the_next_review_arrives() {
    let pki = Pki::new();
    let r = start_admission(&pki, IntakeLimits::default(), WebhookConfig::default()).await;
    let huge = "x".repeat(5 << 20);
    let big = review(&["sh", "-c", &huge]);
    assert!(big.len() > 5 << 20);
    let (status, text) = tls::request(r.addr, pki.apiserver_client(), "POST", "/admission", &big).await.unwrap();
    assert_eq!(status, 413, "{}", &text[..text.len().min(300)]);
    assert_eq!(r.store.metrics().rejected_count("body_too_large"), 1);
    // a chunked upload declares no length: refused when it passes the limit
    let mut s = tls::connect(r.addr, pki.apiserver_client()).await.unwrap();
    s.write_all(b"POST /admission HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n").await.unwrap();
    for c in big.chunks(64 << 10) {
        if s.write_all(format!("{:x}\r\n", c.len()).as_bytes()).await.is_err()
            || s.write_all(c).await.is_err()
            || s.write_all(b"\r\n").await.is_err()
        {
            break;
        }
    }
    eventually("the chunked upload is refused", || r.store.metrics().rejected_count("body_too_large") == 2).await;
    drop(s);
    let body = review(&["sh"]);
    let (status, text) = tls::request(r.addr, pki.apiserver_client(), "POST", "/admission", &body).await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert_eq!(r.store.len(), 1, "the normal review after the oversized one is kept");
    assert!(text.contains(&review_uid(&body)), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_peer_cap_are_closed_and_counted_and_a_slot_comes_back() {
    let pki = Pki::new();
    let limits = IntakeLimits { max_connections_per_peer: 2, ..Default::default() };
    let r = start_admission(&pki, limits, WebhookConfig::default()).await;
    let first = tls::connect(r.addr, pki.apiserver_client()).await.unwrap();
    let _second = tls::connect(r.addr, pki.apiserver_client()).await.unwrap();
    // The third is closed at accept: no handshake.
    assert!(tls::connect(r.addr, pki.apiserver_client()).await.is_err());
    assert_eq!(r.store.metrics().rejected_count("connections_peer"), 1);
    drop(first);
    let body = review(&["sh"]);
    let mut ok = false;
    for _ in 0..50 {
        if let Ok((200, _)) = tls::request(r.addr, pki.apiserver_client(), "POST", "/admission", &body).await {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "a review fits once a connection closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_that_never_ends_and_a_silent_connection_are_closed_and_counted() {
    let pki = Pki::new();
    let limits = IntakeLimits {
        header_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_millis(1500),
        ..Default::default()
    };
    let r = start_admission(&pki, limits, WebhookConfig::default()).await;
    let mut slowloris = tls::connect(r.addr, pki.apiserver_client()).await.unwrap();
    slowloris.write_all(b"POST /admission HTTP/1.1\r\nHost: localhost\r\n").await.unwrap();
    let mut silent = tls::connect(r.addr, pki.apiserver_client()).await.unwrap();
    let mut buf = Vec::new();
    let at = Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(10), slowloris.read_to_end(&mut buf)).await.expect("closed");
    assert!(at.elapsed() < Duration::from_millis(1400), "closed by the header timeout, not the idle one");
    assert_eq!(r.store.metrics().rejected_count("header_timeout"), 1);
    let _ = tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut buf)).await.expect("closed");
    assert_eq!(r.store.metrics().rejected_count("idle_timeout"), 1);
    // Neither stops a valid review.
    let (status, text) =
        tls::request(r.addr, pki.apiserver_client(), "POST", "/admission", &review(&["sh"])).await.unwrap();
    assert_eq!(status, 200, "{text}");
}

fn receiver_config(pki: &Pki) -> ReceiverConfig {
    ReceiverConfig {
        audit_listen: "127.0.0.1:0".into(),
        admission_listen: String::new(),
        stream_listen: "127.0.0.1:0".into(),
        tls_cert: pki.path("server.pem"),
        tls_key: pki.path("server.key"),
        client_ca: pki.path("ca.pem"),
        apiserver_client_ca: pki.path("ca.pem"),
        heartbeat_s: 1,
        metrics_listen: String::new(),
        agent_auth: "none".into(),
        ..ReceiverConfig::default()
    }
}

fn agent_sink() -> Arc<RecordSink> {
    Arc::new(RecordSink::new(
        Arc::new(RecordStore::new(StoreConfig::default())),
        None,
        StreamMetrics::default(),
        Duration::from_secs(30),
        1000,
    ))
}

fn subscribe(pki: &Pki, addr: SocketAddr, sink: &Arc<RecordSink>) -> tokio::task::JoinHandle<()> {
    let url = format!("https://localhost:{}", addr.port());
    let mut cfg = SubscribeConfig::new(
        vec![url.clone()],
        pki.path("agent.pem"),
        pki.path("agent.key"),
        pki.path("ca.pem"),
        "node-a".into(),
    );
    cfg.backoff_initial = Duration::from_millis(50);
    cfg.read_timeout = Duration::from_secs(5);
    let tls = reloading_client_config(&cfg.tls_cert, &cfg.tls_key, &cfg.ca, Default::default()).unwrap();
    tokio::spawn(subscription(addr, parse_receiver(&url).unwrap(), tls, cfg, sink.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5_mib_audit_record_is_not_streamed_and_the_next_one_reaches_the_agent() {
    let pki = Pki::new();
    let ready = receiver_config(&pki).validate().unwrap();
    let rcv = Receiver::bind(&ready, StoreConfig::default(), None, &mut Registry::default()).await.unwrap();
    let (audit, stream, metrics) = (rcv.audit_addr.unwrap(), rcv.stream_addr, rcv.buffer.metrics().clone());
    let (_stop, rx) = oneshot::channel::<()>();
    tokio::spawn(rcv.run(async move {
        let _ = rx.await;
    }));
    let sink = agent_sink();
    let _sub = subscribe(&pki, stream, &sink);
    let now = SystemTime::now();
    let huge = "y".repeat(5 << 20);
    let big = event_list(exec_events(&new_audit_id(), &["sh", "-c", &huge], now, &["RequestReceived"]));
    let (status, text) =
        tls::request(audit, pki.apiserver_client(), "POST", "/audit", &serde_json::to_vec(&big).unwrap())
            .await
            .unwrap();
    assert_eq!(status, 200, "a 5 MiB batch is within the API server's batch size: {}", &text[..text.len().min(300)]);
    let id = new_audit_id();
    let normal = event_list(exec_events(&id, &["sh"], now, &["RequestReceived"]));
    let (status, text) =
        tls::request(audit, pki.apiserver_client(), "POST", "/audit", &serde_json::to_vec(&normal).unwrap())
            .await
            .unwrap();
    assert_eq!(status, 200, "{text}");
    eventually("the normal record reaches the agent", || sink.metrics().records_kept.get() == 1).await;
    assert_eq!(metrics.records_too_large.get(), 1);
    assert_eq!(sink.store().len(), 1, "only the normal record is in the agent's store");
    assert_eq!(sink.metrics().reconnects.get(), 0, "the stream never broke");
}

/// A receiver that does not hold to the line limit: a hello, a 5 MiB record line, a normal
/// record line, then heartbeats, over real TLS.
async fn oversized_line_receiver(pki: &Pki) -> SocketAddr {
    let cfg = podtrail::tls::server_config(&pki.path("server.pem"), &pki.path("server.key"), Some(&pki.path("ca.pem")))
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let record = |seq: u64, audit_id: &str, command: &str| {
        json!({"type": "record", "seq": seq, "stage": "RequestReceived", "record": {
            "audit_id": audit_id, "source": "audit_webhook", "kind": "exec", "namespace": "billing",
            "pod_name": "api-7d9c", "command": ["sh", "-c", command], "user": {"name": "jane"},
            "received": "2026-03-02T14:05:07.123456Z"}})
        .to_string()
    };
    let lines = vec![
        json!({"type": "hello", "instance": "i1", "node": "node-a", "replay_from": 0, "last_seq": 2, "missed": 0, "audit": true}).to_string(),
        record(1, "big", &"z".repeat(5 << 20)),
        record(2, "normal", "id"),
    ];
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let Ok(mut s) = acceptor.accept(tcp).await else { continue };
            let lines = lines.clone();
            tokio::spawn(async move {
                let mut req = [0u8; 4096];
                let _ = s.read(&mut req).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n",
                    )
                    .await;
                for l in lines {
                    // In 64 KiB chunks, as a real server's body would come.
                    let bytes = format!("{l}\n").into_bytes();
                    for c in bytes.chunks(64 << 10) {
                        let _ = s.write_all(format!("{:x}\r\n", c.len()).as_bytes()).await;
                        let _ = s.write_all(c).await;
                        let _ = s.write_all(b"\r\n").await;
                    }
                }
                loop {
                    let hb = b"{\"type\":\"heartbeat\",\"last_seq\":2}\n";
                    let _ = s.write_all(format!("{:x}\r\n", hb.len()).as_bytes()).await;
                    if s.write_all(hb).await.is_err() || s.write_all(b"\r\n").await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5_mib_stream_line_is_skipped_and_the_next_record_is_kept() {
    let pki = Pki::new();
    let addr = oversized_line_receiver(&pki).await;
    let sink = agent_sink();
    let _sub = subscribe(&pki, addr, &sink);
    eventually("the normal record after the oversized line is kept", || sink.metrics().records_kept.get() == 1).await;
    assert_eq!(sink.metrics().lines_too_long.get(), 1);
    assert!(sink.store().completion("big").is_none());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.metrics().reconnects.get(), 0, "the stream went on past the oversized line");
    assert_eq!(sink.store().len(), 1);
}
