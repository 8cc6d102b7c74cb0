//! Each agent gets only its node's records: the real receiver with `agent_auth = "token"`
//! against a fake Kubernetes API (tests/support/kube: the pod list/watch wire format and
//! `TokenReview`), real mutual TLS, the agents' real subscription code with token files, and
//! audit batches in the API server's format.

mod support;

use podtrail::attribute::stream::receive::NodeProof;
use podtrail::attribute::stream::subscribe::{parse_receiver, subscription};
use podtrail::attribute::stream::{Receiver, ReceiverConfig, RecordSink, StreamMetrics, SubscribeConfig};
use podtrail::attribute::{RecordStore, StoreConfig};
use podtrail::tls::reloading_client_config;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;

use support::audit::{event_list, exec_events, new_audit_id};
use support::kube::{ev, list, FakeApi, Route, WatchStep};
use support::tls::{self, issuer, leaf};
use support::wait::eventually;

const AGENT_SA: &str = "system:serviceaccount:podtrail:podtrail-agent";

struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    apiserver: (String, String),
    agent: (String, String),
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = issuer("podtrail test CA");
        let server = leaf(&ca, &["localhost"], "podtrail-receiver");
        let agent = leaf(&ca, &[], "podtrail-agent");
        for (n, (c, k)) in [("server", &server), ("agent", &agent)] {
            std::fs::write(dir.path().join(format!("{n}.pem")), c).unwrap();
            std::fs::write(dir.path().join(format!("{n}.key")), k).unwrap();
        }
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Self { ca_pem: ca.pem(), apiserver: leaf(&ca, &[], "kube-apiserver"), agent, dir }
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }
}

fn pod(ns: &str, name: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"), "resourceVersion": "5"},
           "spec": {"nodeName": node, "containers": [{"name": "api", "image": "busybox"}]}})
}

/// The audit events of one exec into `ns/name` (the fixture's, moved to that pod).
fn exec_into(ns: &str, name: &str, audit_id: &str) -> Value {
    let mut items = exec_events(audit_id, &["sh"], SystemTime::now(), &["RequestReceived"]);
    for e in &mut items {
        e["objectRef"]["namespace"] = json!(ns);
        e["objectRef"]["name"] = json!(name);
        let uri = e["requestURI"]
            .as_str()
            .unwrap()
            .replace("/namespaces/billing/pods/api-7d9c/", &format!("/namespaces/{ns}/pods/{name}/"));
        e["requestURI"] = json!(uri);
    }
    event_list(items)
}

async fn tls_stream(addr: SocketAddr, cfg: Arc<ClientConfig>) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    TlsConnector::from(cfg).connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap()
}

/// One request; the status code (the body of a 200 stream is not waited for).
async fn status_of(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> u16 {
    let mut s = tls_stream(addr, cfg).await;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.unwrap().unwrap();
    String::from_utf8_lossy(&buf[..n]).split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn agent(pki: &Pki, addr: SocketAddr, node: &str, token: &Path) -> (Arc<RecordSink>, tokio::task::JoinHandle<()>) {
    let sink = Arc::new(RecordSink::new(
        Arc::new(RecordStore::new(StoreConfig::default())),
        None,
        StreamMetrics::default(),
        Duration::from_secs(30),
        1000,
    ));
    let url = format!("https://localhost:{}", addr.port());
    let mut cfg = SubscribeConfig::new(
        vec![url.clone()],
        pki.path("agent.pem"),
        pki.path("agent.key"),
        pki.path("ca.pem"),
        node.into(),
    );
    cfg.backoff_initial = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(200);
    cfg.read_timeout = Duration::from_secs(5);
    cfg.token_file = Some(token.to_owned());
    let tls = reloading_client_config(&cfg.tls_cert, &cfg.tls_key, &cfg.ca, Default::default()).unwrap();
    let task = tokio::spawn(subscription(addr, parse_receiver(&url).unwrap(), tls, cfg, sink.clone()));
    (sink, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_agent_gets_only_the_records_of_its_proven_node() {
    let pki = Pki::new();
    let api = FakeApi::start(vec![Route::new("/api/v1/pods", "PodList")
        .lists(vec![support::kube::ListStep::Ok(list(
            "PodList",
            "5",
            vec![pod("billing", "api-7d9c", "node-a"), pod("shop", "web-1", "node-b")],
        ))])
        .watches(vec![WatchStep {
            gate: 1,
            events: vec![ev("ADDED", pod("late", "pod-l", "node-b"))],
            close: false,
        }])])
    .await;
    api.add_token("tok-a", AGENT_SA, "node-a");
    api.add_token("tok-b", AGENT_SA, "node-b");
    api.add_token("tok-default", "system:serviceaccount:default:default", "node-a");

    let cfg = ReceiverConfig {
        audit_listen: "127.0.0.1:0".into(),
        admission_listen: String::new(),
        stream_listen: "127.0.0.1:0".into(),
        tls_cert: pki.path("server.pem"),
        tls_key: pki.path("server.key"),
        client_ca: pki.path("ca.pem"),
        apiserver_client_ca: pki.path("ca.pem"),
        heartbeat_s: 1,
        metrics_listen: String::new(),
        pending_s: 3,
        ..ReceiverConfig::default()
    };
    let ready = cfg.validate().unwrap();
    assert!(ready.node_filter, "token is the default");
    let rcv = Receiver::bind_with(
        &ready,
        StoreConfig::default(),
        None,
        &mut Registry::default(),
        Some(NodeProof::kube(api.client())),
    )
    .await
    .unwrap();
    let (audit, stream, metrics, store) =
        (rcv.audit_addr.unwrap(), rcv.stream_addr, rcv.buffer.metrics().clone(), rcv.store.clone());
    let (_stop, rx) = oneshot::channel::<()>();
    tokio::spawn(rcv.run(async move {
        let _ = rx.await;
    }));

    let dir = tempfile::tempdir().unwrap();
    let token = |name: &str, value: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("{value}\n")).unwrap();
        p
    };
    // agent B claims to be node-a in its query: its token says node-b
    let (a, _ta) = agent(&pki, stream, "node-a", &token("a", "tok-a"));
    let (b, _tb) = agent(&pki, stream, "node-a", &token("b", "tok-b"));
    eventually("both agents stream", || {
        a.metrics().subscriptions_connected.get() == 1 && b.metrics().subscriptions_connected.get() == 1
    })
    .await;

    let post = |body: Value| {
        let cfg = tls::client(&pki.ca_pem, Some(&pki.apiserver));
        async move { status_of(audit, cfg, "POST", "/audit", "", &serde_json::to_vec(&body).unwrap()).await }
    };
    let (on_a, on_b, late, ghost) = (new_audit_id(), new_audit_id(), new_audit_id(), new_audit_id());
    assert_eq!(post(exec_into("billing", "api-7d9c", &on_a)).await, 200);
    assert_eq!(post(exec_into("shop", "web-1", &on_b)).await, 200);
    assert_eq!(post(exec_into("late", "pod-l", &late)).await, 200);
    assert_eq!(post(exec_into("ghost", "gone", &ghost)).await, 200);
    eventually("each agent has its node's record", || a.store().len() == 1 && b.store().len() == 1).await;
    assert_eq!(store.len(), 4, "the receiver holds all four");
    // the late pod's record waits for the watch, then goes to node-b only
    assert_eq!(metrics.records_pending.get(), 2);
    api.open_gate(1);
    eventually("the late pod's record reaches node-b", || b.store().len() == 2).await;
    // the ghost pod never appears: dropped after pending_s, counted
    eventually("an unplaced record is counted", || metrics.records_unplaced.get() == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!((a.store().len(), b.store().len()), (1, 2), "nothing crossed nodes");
    assert_eq!(metrics.records_streamed.get(), 3, "one line per record and agent, not per record and every agent");

    // subscriptions that prove no agent node get nothing
    let agent_tls = tls::client(&pki.ca_pem, Some(&pki.agent));
    let get = |hdr: &'static str| {
        let cfg = agent_tls.clone();
        async move { status_of(stream, cfg, "GET", "/v1/records?node=node-a&since=0", hdr, b"").await }
    };
    assert_eq!(get("").await, 401);
    assert_eq!(get("Authorization: Bearer forged\r\n").await, 401);
    assert_eq!(get("Authorization: Bearer tok-default\r\n").await, 403);
    let m = store.metrics();
    assert_eq!(
        (m.rejected_count("token_missing"), m.rejected_count("token_invalid"), m.rejected_count("token_not_agent")),
        (1, 1, 1)
    );
}
