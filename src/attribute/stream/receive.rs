//! `podtrail receiver` assembled: the audit and admission webhooks (the same routers and TLS
//! listeners as `podtrail run`) into one record store whose tap fills the replay buffer, and
//! the stream listener serving it.
//!
//! In: the `[receiver]` configuration. Out: bound listeners, run until shutdown.
//! Dropped: what the webhooks and the buffer drop, counted where they drop it.

use super::metrics::StreamMetrics;
use super::nodes::{self, Placement, PodNodes, ReviewFn, TokenReviewer};
use super::replay::ReplayBuffer;
use super::server::stream_router_for_nodes;
use crate::attribute::{
    self, follow, IntakeLimits, ListenerConfig, RecordStore, ServeError, StoreConfig, WebhookConfig, WebhookServer,
};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `[receiver]`: used by `podtrail receiver` only. The defaults are the paths and ports of the
/// Deployment in `deploy/`, so its config file can stay empty.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiverConfig {
    /// Audit webhook address ("" turns it off). Requires the API server's client certificate.
    pub audit_listen: String,
    /// Admission webhook address ("" turns it off). Requires the API server's client
    /// certificate, unless `admission_unverified`.
    pub admission_listen: String,
    /// The record stream to the agents (client certificates from `client_ca`).
    pub stream_listen: String,
    /// Serving certificate and key of all three listeners (PEM).
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// CA of the agents' client certificates: the stream listener's, and only its.
    pub client_ca: PathBuf,
    /// CA of the API server's webhook client certificate: the audit and admission listeners'.
    pub apiserver_client_ca: PathBuf,
    /// CA the admission webhook requires client certificates from, when not the API server's
    /// CA above ("": `apiserver_client_ca`).
    pub admission_client_ca: PathBuf,
    /// Names the API server's client certificate may carry (subject CN, DNS or URI SAN; a
    /// trailing `*` matches by prefix): the audit and admission listeners refuse any other
    /// certificate of their CA (403, `peer_not_allowed`).
    pub apiserver_clients: Vec<String>,
    /// Names an agent's client certificate may carry, on the stream listener.
    pub agent_clients: Vec<String>,
    /// Take admission reviews from clients without a certificate (managed clusters, whose API
    /// server cannot present one to an admission webhook). Their records are kept as
    /// unverified: `podtrail.attribution.verified=false`, never above `ambiguous`, and any
    /// verified record that fits wins over them.
    pub admission_unverified: bool,
    /// Records kept for agents that reconnect; the oldest are dropped first (counted).
    pub replay_records: usize,
    /// Seconds without a record before a heartbeat line.
    pub heartbeat_s: u64,
    /// Prometheus endpoint of the receiver ("" turns it off).
    pub metrics_listen: String,
    /// Connections open at once on the audit, admission and stream listeners; one more is
    /// closed at accept (counted: `connections_listener`). The stream holds one per agent per
    /// replica.
    pub audit_max_connections: usize,
    pub admission_max_connections: usize,
    pub stream_max_connections: usize,
    /// Connections open at once from one address on a webhook listener (`connections_peer`).
    pub webhook_max_connections_per_peer: usize,
    /// ... and on the stream listener (one agent: one per replica it resolves).
    pub stream_max_connections_per_peer: usize,
    /// Seconds from a request's first byte to the end of its header (`header_timeout`).
    pub header_timeout_s: u64,
    /// Seconds from the end of a header to the end of its body (`body_timeout`, 408).
    pub body_timeout_s: u64,
    /// Seconds without a byte either way before a connection is closed (`idle_timeout`):
    /// above the 90 s the API server's client keeps an idle connection, so it closes first.
    pub idle_timeout_s: u64,
    /// MiB of request bodies held at once per webhook listener while they are read; a body
    /// that does not fit is refused with 503 (`memory_budget`) instead of waiting.
    pub body_budget_mib: usize,
    /// How an agent proves its node: `token` (a bound service-account token with audience
    /// `podtrail`, checked with a TokenReview; each agent then gets only its node's records,
    /// which needs the API: a pod watch and tokenreviews, deploy/rbac.yaml) or `none` (every
    /// agent gets every record: one machine, or no API access).
    pub agent_auth: String,
    /// Service accounts whose tokens are agents' (`system:serviceaccount:NAMESPACE:NAME`).
    pub agent_service_accounts: Vec<String>,
    /// Most records waiting for their pod to appear in the pod watch, and for how many
    /// seconds; past either they are dropped and counted (`records_unplaced`).
    pub pending_records: usize,
    pub pending_s: u64,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        Self {
            audit_listen: "0.0.0.0:8443".into(),
            admission_listen: "0.0.0.0:9443".into(),
            stream_listen: "0.0.0.0:7443".into(),
            tls_cert: "/etc/podtrail-tls/tls.crt".into(),
            tls_key: "/etc/podtrail-tls/tls.key".into(),
            client_ca: "/etc/podtrail-client-ca/ca.crt".into(),
            apiserver_client_ca: "/etc/podtrail-apiserver-ca/ca.crt".into(),
            admission_client_ca: PathBuf::new(),
            apiserver_clients: vec!["kube-apiserver".into()],
            agent_clients: vec!["podtrail-agent*".into()],
            admission_unverified: false,
            replay_records: 50_000,
            heartbeat_s: 15,
            metrics_listen: "0.0.0.0:9464".into(),
            audit_max_connections: 64,
            admission_max_connections: 256,
            stream_max_connections: 8192,
            webhook_max_connections_per_peer: 32,
            stream_max_connections_per_peer: 4,
            header_timeout_s: 10,
            body_timeout_s: 30,
            idle_timeout_s: 120,
            body_budget_mib: 64,
            agent_auth: "token".into(),
            agent_service_accounts: vec!["system:serviceaccount:podtrail:podtrail-agent".into()],
            pending_records: 10_000,
            pending_s: 30,
        }
    }
}

/// Validated `[receiver]`.
#[derive(Clone, Debug)]
pub struct ReceiverReady {
    pub audit: Option<ListenerConfig>,
    pub admission: Option<ListenerConfig>,
    pub stream: ListenerConfig,
    pub replay_records: usize,
    pub heartbeat: Duration,
    pub metrics_listen: Option<SocketAddr>,
    pub webhook: WebhookConfig,
    /// `agent_auth = "token"`: prove agents' nodes and filter records by node.
    pub node_filter: bool,
    pub agent_service_accounts: Vec<String>,
    pub pending_records: usize,
    pub pending_for: Duration,
}

fn addr(key: &str, v: &str) -> Result<Option<SocketAddr>, String> {
    if v.is_empty() {
        return Ok(None);
    }
    v.parse().map(Some).map_err(|e| format!("receiver.{key} {v:?} is not an address: {e}"))
}

impl ReceiverConfig {
    pub fn validate(&self) -> Result<ReceiverReady, String> {
        let mtls = |l: SocketAddr, ca: &PathBuf| {
            ListenerConfig::mtls(l, self.tls_cert.clone(), self.tls_key.clone(), ca.clone())
        };
        if self.apiserver_clients.iter().chain(&self.agent_clients).any(|c| c.is_empty() || c == "*") {
            return Err("receiver.apiserver_clients and agent_clients name identities: an empty or \"*\" entry would allow any certificate of the CA".into());
        }
        if self.apiserver_clients.is_empty() || self.agent_clients.is_empty() {
            return Err("receiver.apiserver_clients and receiver.agent_clients must name at least one identity".into());
        }
        let stream = addr("stream_listen", &self.stream_listen)?.ok_or("receiver.stream_listen is required")?;
        if self.replay_records == 0 || self.heartbeat_s == 0 {
            return Err("receiver.replay_records and receiver.heartbeat_s must be at least 1".into());
        }
        let admission = addr("admission_listen", &self.admission_listen)?.map(|l| {
            if self.admission_unverified {
                ListenerConfig::unverified(l, self.tls_cert.clone(), self.tls_key.clone())
            } else if self.admission_client_ca.as_os_str().is_empty() {
                mtls(l, &self.apiserver_client_ca).allowing(self.apiserver_clients.clone())
            } else {
                mtls(l, &self.admission_client_ca).allowing(self.apiserver_clients.clone())
            }
        });
        if self.header_timeout_s == 0 || self.body_timeout_s == 0 || self.idle_timeout_s == 0 {
            return Err("receiver.header_timeout_s, body_timeout_s and idle_timeout_s must be at least 1".into());
        }
        if self.idle_timeout_s <= self.heartbeat_s {
            return Err(format!(
                "receiver.idle_timeout_s ({}) must be above heartbeat_s ({}): an idle stream is closed otherwise",
                self.idle_timeout_s, self.heartbeat_s
            ));
        }
        let limits = |max_connections: usize, per_peer: usize| IntakeLimits {
            max_connections,
            max_connections_per_peer: per_peer,
            header_timeout: Duration::from_secs(self.header_timeout_s),
            idle_timeout: Duration::from_secs(self.idle_timeout_s),
            body_budget_bytes: self.body_budget_mib.saturating_mul(1 << 20),
        };
        let webhook_peer = self.webhook_max_connections_per_peer;
        let audit = addr("audit_listen", &self.audit_listen)?.map(|l| {
            let mut c = mtls(l, &self.apiserver_client_ca).named("audit").allowing(self.apiserver_clients.clone());
            c.limits = limits(self.audit_max_connections, webhook_peer);
            c
        });
        let admission = admission.map(|mut c| {
            c.name = "admission";
            c.limits = limits(self.admission_max_connections, webhook_peer);
            c
        });
        let mut stream = mtls(stream, &self.client_ca).named("stream").allowing(self.agent_clients.clone());
        stream.limits = limits(self.stream_max_connections, self.stream_max_connections_per_peer);
        for l in [audit.as_ref(), admission.as_ref(), Some(&stream)].into_iter().flatten() {
            l.limits.validate(&format!("receiver ({} listener)", l.name))?;
        }
        let webhook = WebhookConfig { body_timeout: Duration::from_secs(self.body_timeout_s), ..Default::default() };
        let node_filter = match self.agent_auth.as_str() {
            "token" => true,
            "none" => false,
            other => return Err(format!("receiver.agent_auth {other:?}: \"token\" or \"none\"")),
        };
        if node_filter && (self.agent_service_accounts.is_empty() || self.pending_records == 0 || self.pending_s == 0) {
            return Err("receiver.agent_service_accounts must name one service account, and pending_records and pending_s be at least 1, with agent_auth = \"token\"".into());
        }
        Ok(ReceiverReady {
            audit,
            admission,
            stream,
            webhook,
            node_filter,
            agent_service_accounts: self.agent_service_accounts.clone(),
            pending_records: self.pending_records,
            pending_for: Duration::from_secs(self.pending_s),
            replay_records: self.replay_records,
            heartbeat: Duration::from_secs(self.heartbeat_s),
            metrics_listen: addr("metrics_listen", &self.metrics_listen)?,
        })
    }
}

/// How the receiver proves agents' nodes and places records on nodes (`agent_auth =
/// "token"`): the API server's TokenReview and a watch of every pod, or stand-ins (tests).
pub struct NodeProof {
    pub review: ReviewFn,
    pub pods: PodNodes,
    /// Watch the cluster's pods into `pods` with this client (`None`: the caller fills it).
    pub watch: Option<kube::Client>,
}

impl NodeProof {
    /// The real thing, through the API server (in-cluster config or KUBECONFIG).
    pub fn kube(client: kube::Client) -> Self {
        Self { review: nodes::kube_review(client.clone()), pods: PodNodes::default(), watch: Some(client) }
    }
}

/// Bound listeners of a receiver.
pub struct Receiver {
    pub store: Arc<RecordStore>,
    pub buffer: Arc<ReplayBuffer>,
    pub audit_addr: Option<SocketAddr>,
    pub admission_addr: Option<SocketAddr>,
    pub stream_addr: SocketAddr,
    servers: Vec<WebhookServer>,
    audit_log: Option<PathBuf>,
    placement: Option<Arc<Placement>>,
    pod_watch: Option<kube::Client>,
}

impl Receiver {
    /// Load certificates and bind every listener; metrics go into `reg`. `nodes` is required
    /// when `cfg.node_filter` (agent_auth = "token") and ignored otherwise.
    pub async fn bind(
        cfg: &ReceiverReady,
        store_cfg: StoreConfig,
        audit_log: Option<PathBuf>,
        reg: &mut Registry,
    ) -> Result<Self, ServeError> {
        Self::bind_with(cfg, store_cfg, audit_log, reg, None).await
    }

    /// [`Self::bind`] with the node proof of `agent_auth = "token"`.
    pub async fn bind_with(
        cfg: &ReceiverReady,
        store_cfg: StoreConfig,
        audit_log: Option<PathBuf>,
        reg: &mut Registry,
        nodes: Option<NodeProof>,
    ) -> Result<Self, ServeError> {
        let metrics = StreamMetrics::default();
        metrics.register(reg);
        let nodes = match (cfg.node_filter, nodes) {
            (true, None) => return Err(ServeError::Limits(cfg.stream.listen, "agent_auth = \"token\" needs the Kubernetes API (a pod watch and TokenReview); set agent_auth = \"none\" to send every record to every agent".into())),
            (true, Some(n)) => Some(n),
            (false, _) => None,
        };
        let buffer = Arc::new(ReplayBuffer::new(cfg.replay_records, metrics.clone()));
        let tap = buffer.clone();
        let placement = nodes
            .as_ref()
            .map(|n| Arc::new(Placement::new(n.pods.clone(), cfg.pending_for, cfg.pending_records, metrics.clone())));
        let place = placement.clone();
        // The store dedupes a retried batch, so only new stages reach the agents.
        let store = Arc::new(RecordStore::with_tap(
            store_cfg,
            Box::new(move |rec, stage| match &place {
                Some(p) => p.place(rec, stage, &|r, s, n| {
                    tap.push_for(r, s, Some(n));
                }),
                None => {
                    tap.push(rec, stage);
                }
            }),
        ));
        store.register_metrics(reg);
        let wcfg = cfg.webhook.clone();
        let am = store.metrics().clone();
        let mut servers = Vec::new();
        let mut bound = |s: WebhookServer| {
            let a = s.local_addr();
            servers.push(s);
            a
        };
        let audit_addr = match &cfg.audit {
            Some(l) => {
                Some(bound(WebhookServer::bind(l, attribute::audit_router(store.clone(), &wcfg), am.clone()).await?))
            }
            None => None,
        };
        let admission_addr = match &cfg.admission {
            Some(l) => Some(bound(
                WebhookServer::bind(l, attribute::admission_router(store.clone(), &wcfg), am.clone()).await?,
            )),
            None => None,
        };
        // Tell the agents whether audit events come through this receiver: where they do, an
        // exec's admission review (which arrives first) waits for its audit record.
        let takes_audit = audit_addr.is_some() || audit_log.is_some();
        let reviewer = nodes.as_ref().map(|n| {
            Arc::new(TokenReviewer::new(n.review.clone(), cfg.agent_service_accounts.clone(), Duration::from_secs(60)))
        });
        let router = stream_router_for_nodes(buffer.clone(), cfg.heartbeat, takes_audit, reviewer);
        let stream_addr = bound(WebhookServer::bind(&cfg.stream, router, am).await?);
        let pod_watch = nodes.and_then(|n| n.watch);
        Ok(Self { store, buffer, audit_addr, admission_addr, stream_addr, servers, audit_log, placement, pod_watch })
    }

    /// Serve until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|v| *v).await;
            }
        };
        let mut tasks: Vec<_> = self.servers.into_iter().map(|s| tokio::spawn(s.run(stopped()))).collect();
        if let Some(path) = self.audit_log {
            tracing::info!(path = %path.display(), "following audit log");
            tasks.push(tokio::spawn(follow::follow(follow::FollowConfig::new(path), self.store.clone(), stopped())));
        }
        if let Some(p) = self.placement {
            let buffer = self.buffer.clone();
            let push = move |p: &Placement| {
                p.recheck(Instant::now(), &|r, s, n| {
                    buffer.push_for(r, s, Some(n));
                })
            };
            if let Some(client) = self.pod_watch {
                let (p, push) = (p.clone(), push.clone());
                let pods = p.nodes().clone();
                tasks.push(tokio::spawn(nodes::watch_pods(client, pods, move || push(&p), stopped())));
            }
            let stop = stopped();
            tasks.push(tokio::spawn(async move {
                tokio::pin!(stop);
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! { _ = tick.tick() => push(&p), _ = &mut stop => return }
                }
            }));
        }
        shutdown.await;
        let _ = tx.send(true);
        for t in tasks {
            let _ = t.await;
        }
    }
}
