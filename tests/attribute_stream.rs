//! `podtrail receiver` → agent over real mutual TLS: certificates made at test time, the
//! receiver's real webhook and stream listeners, and the agent's real subscription code feeding
//! a `RecordStore`.

mod support;

use podtrail::attribute::stream::subscribe::{parse_receiver, subscription};
use podtrail::attribute::stream::{Receiver, ReceiverConfig, RecordSink, StreamMetrics, SubscribeConfig};
use podtrail::attribute::{AttributeMetrics, AttributionSource, RecordStore, SessionQuery, StoreConfig};
use podtrail::tls::reloading_client_config;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;

use support::audit::fixture_bytes as fixture;
use support::tls::{self, issuer, leaf, pem_certs};
use support::wait::eventually;

/// One CA for the receiver's serving certificate, the API server's webhook client and the
/// agents; a stranger CA with an agent certificate of its own. All written as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    apiserver: (String, String),
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (ca_pem, apiserver) = Self::issue(dir.path(), "podtrail test CA");
        Self { ca_pem, apiserver, dir }
    }

    /// A CA and every certificate signed by it, written over the files in `dir` (what
    /// cert-manager does when it rotates): (CA PEM, the API server's client identity).
    fn issue(dir: &Path, ca_name: &str) -> (String, (String, String)) {
        let ca = issuer(ca_name);
        let other = issuer("someone else's CA");
        let write = |name: &str, (cert, key): &(String, String)| {
            std::fs::write(dir.join(format!("{name}.pem")), cert).unwrap();
            std::fs::write(dir.join(format!("{name}.key")), key).unwrap();
        };
        write("server", &leaf(&ca, &["localhost"], "podtrail-receiver"));
        write("agent", &leaf(&ca, &[], "podtrail-agent"));
        write("stranger", &leaf(&other, &[], "podtrail-agent"));
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        (ca.pem(), leaf(&ca, &[], "kube-apiserver-audit-webhook"))
    }

    /// Every certificate replaced on disk by one of a new CA.
    fn rotate(&mut self) {
        (self.ca_pem, self.apiserver) = Self::issue(self.dir.path(), "podtrail rotated CA");
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    fn receiver_config(&self, replay_records: usize) -> ReceiverConfig {
        ReceiverConfig {
            audit_listen: "127.0.0.1:0".into(),
            admission_listen: String::new(),
            stream_listen: "127.0.0.1:0".into(),
            tls_cert: self.path("server.pem"),
            tls_key: self.path("server.key"),
            client_ca: self.path("ca.pem"),
            apiserver_client_ca: self.path("ca.pem"),
            apiserver_clients: vec!["kube-apiserver-audit-webhook".into()],
            agent_auth: "none".into(),
            replay_records,
            heartbeat_s: 1,
            metrics_listen: String::new(),
            ..ReceiverConfig::default()
        }
    }

    /// The agent's subscription settings, with test-sized timers.
    fn subscribe_config(&self, identity: &str, receivers: Vec<String>) -> SubscribeConfig {
        let mut c = SubscribeConfig::new(
            receivers,
            self.path(&format!("{identity}.pem")),
            self.path(&format!("{identity}.key")),
            self.path("ca.pem"),
            "node-a".into(),
        );
        c.backoff_initial = Duration::from_millis(50);
        c.backoff_max = Duration::from_millis(200);
        c.read_timeout = Duration::from_secs(5);
        c
    }

    /// A TLS client for raw requests: trusts the CA, presents `identity` if any.
    fn raw_client(&self, identity: Option<&(String, String)>) -> Arc<ClientConfig> {
        tls::client(&self.ca_pem, identity)
    }
}

struct RunningReceiver {
    audit: SocketAddr,
    stream: SocketAddr,
    store: Arc<RecordStore>,
    metrics: StreamMetrics,
    _stop: oneshot::Sender<()>,
}

async fn start_receiver(pki: &Pki, replay_records: usize) -> RunningReceiver {
    let ready = pki.receiver_config(replay_records).validate().unwrap();
    let r =
        Receiver::bind(&ready, StoreConfig::default(), None, &mut Registry::default()).await.expect("receiver binds");
    let (tx, rx) = oneshot::channel();
    let out = RunningReceiver {
        audit: r.audit_addr.unwrap(),
        stream: r.stream_addr,
        store: r.store.clone(),
        metrics: r.buffer.metrics().clone(),
        _stop: tx,
    };
    tokio::spawn(r.run(async move {
        let _ = rx.await;
    }));
    out
}

async fn post_audit(pki: &Pki, r: &RunningReceiver, name: &str) {
    let (status, text) =
        tls::request(r.audit, pki.raw_client(Some(&pki.apiserver)), "POST", "/audit", &fixture(name)).await.unwrap();
    assert_eq!(status, 200, "{text}");
}

/// The agent side: its store behind a sink that keeps everything (no pod index).
fn agent() -> Arc<RecordSink> {
    Arc::new(RecordSink::new(
        Arc::new(RecordStore::new(StoreConfig::default())),
        None,
        StreamMetrics::default(),
        Duration::from_secs(30),
        1000,
    ))
}

/// The real per-replica subscription, to `addr`, verifying the receiver as `localhost`.
fn subscribe(pki: &Pki, identity: &str, addr: SocketAddr, sink: &Arc<RecordSink>) -> JoinHandle<()> {
    let url = format!("https://localhost:{}", addr.port());
    let cfg = pki.subscribe_config(identity, vec![url.clone()]);
    let tls = reloading_client_config(&cfg.tls_cert, &cfg.tls_key, &cfg.ca, Default::default()).unwrap();
    tokio::spawn(subscription(addr, parse_receiver(&url).unwrap(), tls, cfg, sink.clone()))
}

fn ws_query() -> SessionQuery {
    SessionQuery {
        pod_namespace: Some("billing".into()),
        pod_name: Some("api-7d9c".into()),
        pod_uid: None,
        container_name: Some("api".into()),
        argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
        started_at: SystemTime::from("2026-03-02T14:05:07.2Z".parse::<jiff::Timestamp>().unwrap()),
        env_audit_id: None,
    }
}

#[tokio::test]
async fn audit_batch_posted_to_the_receiver_reaches_a_subscribed_agent() {
    let pki = Pki::new();
    let r = start_receiver(&pki, 100).await;
    let sink = agent();
    // Through `start`, as the agent does: URL resolved, subscription per address.
    let cfg = pki.subscribe_config("agent", vec![format!("https://127.0.0.1:{}", r.stream.port())]);
    // The receiver's certificate names localhost only: verify against it by resolving
    // localhost instead when the URL names an address.
    let cfg = SubscribeConfig { receivers: vec![format!("https://localhost:{}", r.stream.port())], ..cfg };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let handle = podtrail::attribute::stream::subscribe::start(cfg, sink.clone(), async move {
        let _ = stop_rx.await;
    })
    .unwrap();
    eventually("agent connected", || sink.metrics().subscriptions_connected.get() >= 1).await;

    post_audit(&pki, &r, "audit/exec_websocket.json").await;
    // One request in three stages; the unrelated event in the batch is not streamed.
    eventually("three stages streamed", || sink.metrics().records_kept.get() == 3).await;
    assert_eq!(r.metrics.records_streamed.get(), 3);
    let a = sink.store().match_session(&ws_query()).expect("the agent attributes the session");
    assert_eq!(a.source, AttributionSource::AuditWebhook);
    assert_eq!(a.user_name.as_deref(), Some("john.doe@example.com"));
    assert_eq!(a.user_groups, vec!["dev".to_string(), "system:authenticated".to_string()]);
    assert_eq!(a.client_address.as_deref(), Some("66.249.64.55"));
    assert_eq!(a.trace_id.map(hex::encode).as_deref(), Some("4b5f3c7e8d2a4f199c3e2a1b0d9e8f70"));
    assert!(a.request_completed.is_some(), "ResponseComplete merged on the agent");

    // The API server retries a batch: the receiver's store dedupes it, nothing new streams.
    post_audit(&pki, &r, "audit/exec_websocket.json").await;
    post_audit(&pki, &r, "audit/exec_spdy.json").await;
    eventually("second request streamed", || sink.metrics().records_kept.get() == 6).await;
    assert_eq!(r.store.len(), 2);
    assert_eq!(sink.store().len(), 2);
    assert_eq!(AttributeMetrics::by_source(&sink.store().metrics().duplicates, "audit_webhook"), 0);

    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(5), handle).await.expect("subscriptions stop").unwrap();
}

/// A TCP relay the test can cut and hold closed, so the subscription loses its connection
/// and cannot reconnect until released.
struct Relay {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (o, c) = (open.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut down, _)) = listener.accept().await else { return };
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused in effect
                }
                c.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                }));
            }
        });
        Self { addr, open, conns }
    }

    fn cut_and_close(&self) {
        self.open.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

#[tokio::test]
async fn reconnecting_subscriber_catches_up_from_the_replay_buffer_without_duplicates() {
    let pki = Pki::new();
    let r = start_receiver(&pki, 100).await;
    let relay = Relay::start(r.stream).await;
    let sink = agent();
    let sub = subscribe(&pki, "agent", relay.addr, &sink);
    eventually("agent connected", || sink.metrics().subscriptions_connected.get() == 1).await;

    post_audit(&pki, &r, "audit/exec_websocket.json").await;
    eventually("first batch streamed", || sink.metrics().records_received.get() == 3).await;

    relay.cut_and_close();
    eventually("agent noticed the lost connection", || sink.metrics().subscriptions_connected.get() == 0).await;
    post_audit(&pki, &r, "audit/exec_spdy.json").await;
    post_audit(&pki, &r, "audit/attach.json").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.metrics().records_received.get(), 3, "nothing arrives while disconnected");
    assert!(sink.metrics().reconnects.get() >= 1, "the subscription keeps trying");

    relay.open.store(true, Ordering::SeqCst);
    eventually("caught up", || sink.metrics().records_received.get() >= 9).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Exactly the six records posted while away: the receiver replayed from the agent's seq.
    assert_eq!(sink.metrics().records_received.get(), 9);
    assert_eq!(AttributeMetrics::by_source(&sink.store().metrics().duplicates, "audit_webhook"), 0);
    assert_eq!(sink.store().len(), 3);
    assert_eq!(r.metrics.replays.get(), 1);
    assert_eq!(r.metrics.records_replayed.get(), 6);
    assert_eq!(r.metrics.records_missed.get(), 0);
    sub.abort();
}

#[tokio::test]
async fn the_same_record_from_two_receivers_is_stored_once() {
    let pki = Pki::new();
    let (r1, r2) = (start_receiver(&pki, 100).await, start_receiver(&pki, 100).await);
    let sink = agent();
    let subs = [subscribe(&pki, "agent", r1.stream, &sink), subscribe(&pki, "agent", r2.stream, &sink)];
    // The API server retried a batch against the other replica.
    post_audit(&pki, &r1, "audit/exec_websocket.json").await;
    post_audit(&pki, &r2, "audit/exec_websocket.json").await;
    eventually("both replicas streamed", || sink.metrics().records_received.get() == 6).await;
    let store = sink.store();
    assert_eq!(store.len(), 1);
    assert_eq!(AttributeMetrics::by_source(&store.metrics().accepted, "audit_webhook"), 3);
    assert_eq!(AttributeMetrics::by_source(&store.metrics().duplicates, "audit_webhook"), 3);
    assert!(store.match_session(&ws_query()).is_some());
    assert!(store.match_session(&ws_query()).is_none(), "one request, one session");
    for s in subs {
        s.abort();
    }
}

#[tokio::test]
async fn subscriber_without_a_trusted_client_certificate_gets_nothing() {
    let pki = Pki::new();
    let r = start_receiver(&pki, 100).await;
    post_audit(&pki, &r, "audit/exec_websocket.json").await;

    // No certificate: the handshake completes, the request is refused.
    let (status, text) =
        tls::request(r.stream, pki.raw_client(None), "GET", "/v1/records?node=x&since=0", b"").await.unwrap();
    assert_eq!(status, 401, "{text}");
    assert!(!text.contains("\"record\""), "{text}");
    assert_eq!(r.store.metrics().rejected_count("no_client_cert"), 1);

    // The agent's real subscription code with a certificate from another CA: no handshake.
    let sink = agent();
    let sub = subscribe(&pki, "stranger", r.stream, &sink);
    eventually("retried", || sink.metrics().reconnects.get() >= 2).await;
    assert_eq!(sink.metrics().records_received.get(), 0);
    assert_eq!(sink.metrics().subscriptions_connected.get(), 0);
    assert!(sink.store().is_empty());
    assert_eq!(r.metrics.subscribers.get(), 0);
    assert_eq!(r.metrics.records_streamed.get(), 0);
    eventually("handshake failures counted", || r.store.metrics().rejected_count("tls_handshake") >= 1).await;
    sub.abort();

    // The same subscription with the CA's agent certificate gets the record.
    let ok = subscribe(&pki, "agent", r.stream, &sink);
    eventually("trusted agent streams", || sink.metrics().records_received.get() == 3).await;
    ok.abort();
}

#[tokio::test]
async fn replay_buffer_is_bounded_and_a_late_subscriber_is_told_what_it_missed() {
    let pki = Pki::new();
    let r = start_receiver(&pki, 2).await;
    post_audit(&pki, &r, "audit/exec_websocket.json").await;
    assert_eq!(r.metrics.replay_dropped.get(), 1, "three stages into a buffer of two");
    assert_eq!(r.metrics.replay_records.get(), 2);

    let sink = agent();
    let sub = subscribe(&pki, "agent", r.stream, &sink);
    eventually("replayed what is left", || sink.metrics().records_received.get() == 2).await;
    assert_eq!(sink.metrics().records_gap.get(), 1);
    assert_eq!(r.metrics.records_missed.get(), 1);
    assert_eq!(r.metrics.replays.get(), 1);
    // Live records still flow after the replay: the first two stages of a real denied exec
    // (two stages: they fit the buffer).
    let mut denied: serde_json::Value = serde_json::from_slice(&fixture("audit/exec_denied.json")).unwrap();
    denied["items"].as_array_mut().unwrap().truncate(2);
    let denied = serde_json::to_vec(&denied).unwrap();
    let (status, text) =
        tls::request(r.audit, pki.raw_client(Some(&pki.apiserver)), "POST", "/audit", &denied).await.unwrap();
    assert_eq!(status, 200, "{text}");
    eventually("live after replay", || sink.metrics().records_received.get() == 4).await;
    assert_eq!(r.metrics.replay_dropped.get(), 3);
    assert_eq!(sink.metrics().records_gap.get(), 1);
    assert_eq!(sink.store().len(), 2);
    sub.abort();
}

#[tokio::test]
async fn records_about_other_nodes_pods_are_dropped_after_waiting_for_the_pod_index() {
    let pki = Pki::new();
    let r = start_receiver(&pki, 100).await;
    let known = Arc::new(Mutex::new(vec!["api-7d9c".to_string()]));
    let k = known.clone();
    let keep: podtrail::attribute::stream::PodFilter =
        Arc::new(move |rec| rec.pod_name.as_ref().is_some_and(|p| k.lock().unwrap().contains(p)));
    let store = Arc::new(RecordStore::new(StoreConfig::default()));
    let sink = Arc::new(RecordSink::new(
        store.clone(),
        Some(keep),
        StreamMetrics::default(),
        Duration::from_millis(300),
        1000,
    ));
    let sub = subscribe(&pki, "agent", r.stream, &sink);
    post_audit(&pki, &r, "audit/exec_websocket.json").await; // billing/api-7d9c: this node
    post_audit(&pki, &r, "audit/attach.json").await; // billing/worker-5f6b8: not (yet) known
    eventually("all received", || sink.metrics().records_received.get() == 6).await;
    assert_eq!(sink.metrics().records_kept.get(), 3);
    // The index learns the pod in time: its records are kept.
    known.lock().unwrap().push("worker-5f6b8".into());
    sink.recheck(std::time::Instant::now());
    assert_eq!(sink.metrics().records_kept.get(), 6);
    assert_eq!(store.len(), 2);

    // billing/cache-0 runs on another node: never in this node's index.
    post_audit(&pki, &r, "audit/no_container.json").await;
    eventually("other node's records received", || sink.metrics().records_received.get() == 9).await;
    assert_eq!(sink.metrics().records_other_node.get(), 0, "waits for the index first");
    tokio::time::sleep(Duration::from_millis(400)).await;
    sink.recheck(std::time::Instant::now());
    assert_eq!(sink.metrics().records_other_node.get(), 3);
    assert_eq!(sink.metrics().records_kept.get(), 6);
    assert_eq!(store.len(), 2);
    sub.abort();
}

/// The certificate a TLS server presents to `tls` (a client that must trust it).
async fn served_certificate(addr: SocketAddr, tls: Arc<ClientConfig>) -> std::io::Result<CertificateDer<'static>> {
    let tcp = TcpStream::connect(addr).await?;
    let s = TlsConnector::from(tls).connect(ServerName::try_from("localhost").unwrap(), tcp).await?;
    let certs = s.get_ref().1.peer_certificates().unwrap_or_default();
    certs.first().cloned().map(|c| c.into_owned()).ok_or_else(|| std::io::Error::other("no certificate"))
}

#[tokio::test]
async fn rotated_certificate_files_are_picked_up_by_listeners_and_the_agent_without_a_restart() {
    let mut pki = Pki::new();
    let r = start_receiver(&pki, 100).await;
    let server_reloads =
        |result: &'static str| r.store.metrics().tls_reloads.get_or_create(&vec![("result", result)]).get();
    let old_server = pem_certs(&std::fs::read_to_string(pki.path("server.pem")).unwrap()).remove(0);
    let old_apiserver = pki.raw_client(Some(&pki.apiserver));
    // the agent's client, built from the files before the rotation, as the agent builds it
    let client_reloads = prometheus_client::metrics::family::Family::default();
    let tls = reloading_client_config(
        &pki.path("agent.pem"),
        &pki.path("agent.key"),
        &pki.path("ca.pem"),
        client_reloads.clone(),
    )
    .unwrap();
    assert_eq!(served_certificate(r.stream, tls.current()).await.unwrap(), old_server);

    pki.rotate();
    let new_server = pem_certs(&std::fs::read_to_string(pki.path("server.pem")).unwrap()).remove(0);
    assert_ne!(new_server, old_server);
    // A new connection to the stream is served with the new certificate, and the agent's
    // client, re-reading its files, trusts the new CA.
    assert_eq!(served_certificate(r.stream, tls.current()).await.expect("new CA trusted"), new_server);
    assert_eq!(client_reloads.get_or_create(&vec![("result", "ok")]).get(), 1);
    assert_eq!(server_reloads("ok"), 1, "the stream listener reloaded");
    // The audit webhook takes the new API server certificate, and the old CA's no more.
    post_audit(&pki, &r, "audit/exec_websocket.json").await;
    assert_eq!(server_reloads("ok"), 2, "the audit listener reloaded");
    assert!(
        tls::request(r.audit, old_apiserver, "POST", "/audit", b"{}").await.is_err(),
        "a client trusting only the old CA no longer connects"
    );
    // The agent's new certificate is trusted by the receiver: the real subscription, with the
    // same reloading client, receives the records.
    let sink = agent();
    let url = format!("https://localhost:{}", r.stream.port());
    let cfg = pki.subscribe_config("agent", vec![url.clone()]);
    let sub = tokio::spawn(subscription(r.stream, parse_receiver(&url).unwrap(), tls.clone(), cfg, sink.clone()));
    eventually("records streamed after the rotation", || sink.metrics().records_kept.get() == 3).await;
    sub.abort();

    // A rotation caught half way (a key that does not parse): the last good one stays, counted.
    std::fs::write(pki.path("server.key"), "-----BEGIN PRIVATE KEY-----\nnot a key\n").unwrap();
    std::fs::write(pki.path("agent.key"), "not a key either").unwrap();
    let still = tls.current();
    assert_eq!(client_reloads.get_or_create(&vec![("result", "failed")]).get(), 1);
    assert_eq!(served_certificate(r.stream, still).await.expect("still served"), new_server);
    assert_eq!(server_reloads("failed"), 1, "counted once per change, not per connection");
    assert_eq!(served_certificate(r.stream, tls.current()).await.unwrap(), new_server);
    assert_eq!(server_reloads("failed"), 1);
}
