//! `podtrail receiver` assembled: the audit and admission webhooks (the same routers and TLS
//! listeners as `podtrail run`) into one record store whose tap fills the replay buffer, and
//! the stream listener serving it.
//!
//! In: the `[receiver]` configuration. Out: bound listeners, run until shutdown.
//! Dropped: what the webhooks and the buffer drop, counted where they drop it.

use super::metrics::StreamMetrics;
use super::replay::ReplayBuffer;
use super::server::stream_router;
use crate::attribute::{
    self, follow, ListenerConfig, RecordStore, ServeError, StoreConfig, WebhookConfig, WebhookServer,
};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// `[receiver]`: used by `podtrail receiver` only. The defaults are the paths and ports of the
/// Deployment in `deploy/`, so its config file can stay empty.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiverConfig {
    /// Audit webhook address ("" turns it off). Requires the API server's client certificate.
    pub audit_listen: String,
    /// Admission webhook address ("" turns it off). TLS; a client certificate only when
    /// `admission_client_ca` is set.
    pub admission_listen: String,
    /// The record stream to the agents (mutual TLS, client certificates from `client_ca`).
    pub stream_listen: String,
    /// Serving certificate and key of all three listeners (PEM).
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// CA of the API server's audit-webhook client certificate and of the agents' certificates.
    pub client_ca: PathBuf,
    /// CA the admission webhook requires client certificates from ("" for none: the API server
    /// sends none unless configured to).
    pub admission_client_ca: PathBuf,
    /// Records kept for agents that reconnect; the oldest are dropped first (counted).
    pub replay_records: usize,
    /// Seconds without a record before a heartbeat line.
    pub heartbeat_s: u64,
    /// Prometheus endpoint of the receiver ("" turns it off).
    pub metrics_listen: String,
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
            admission_client_ca: PathBuf::new(),
            replay_records: 50_000,
            heartbeat_s: 15,
            metrics_listen: "0.0.0.0:9464".into(),
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
}

fn addr(key: &str, v: &str) -> Result<Option<SocketAddr>, String> {
    if v.is_empty() {
        return Ok(None);
    }
    v.parse().map(Some).map_err(|e| format!("receiver.{key} {v:?} is not an address: {e}"))
}

impl ReceiverConfig {
    pub fn validate(&self) -> Result<ReceiverReady, String> {
        let mtls = |l: SocketAddr| {
            ListenerConfig::mtls(l, self.tls_cert.clone(), self.tls_key.clone(), self.client_ca.clone())
        };
        let stream = addr("stream_listen", &self.stream_listen)?.ok_or("receiver.stream_listen is required")?;
        if self.replay_records == 0 || self.heartbeat_s == 0 {
            return Err("receiver.replay_records and receiver.heartbeat_s must be at least 1".into());
        }
        let admission = addr("admission_listen", &self.admission_listen)?.map(|l| {
            let mut c = mtls(l);
            if self.admission_client_ca.as_os_str().is_empty() {
                c.require_client_cert = false;
                c.tls.as_mut().expect("mtls has TLS").client_ca = None;
            } else {
                c.tls.as_mut().expect("mtls has TLS").client_ca = Some(self.admission_client_ca.clone());
            }
            c
        });
        Ok(ReceiverReady {
            audit: addr("audit_listen", &self.audit_listen)?.map(mtls),
            admission,
            stream: mtls(stream),
            replay_records: self.replay_records,
            heartbeat: Duration::from_secs(self.heartbeat_s),
            metrics_listen: addr("metrics_listen", &self.metrics_listen)?,
        })
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
}

impl Receiver {
    /// Load certificates and bind every listener; metrics go into `reg`.
    pub async fn bind(
        cfg: &ReceiverReady,
        store_cfg: StoreConfig,
        audit_log: Option<PathBuf>,
        reg: &mut Registry,
    ) -> Result<Self, ServeError> {
        let metrics = StreamMetrics::default();
        metrics.register(reg);
        let buffer = Arc::new(ReplayBuffer::new(cfg.replay_records, metrics));
        let tap = buffer.clone();
        // The store dedupes a retried batch, so only new stages reach the agents.
        let store = Arc::new(RecordStore::with_tap(
            store_cfg,
            Box::new(move |rec, stage| {
                tap.push(rec, stage);
            }),
        ));
        store.register_metrics(reg);
        let wcfg = WebhookConfig::default();
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
        let stream_addr = bound(
            WebhookServer::bind(&cfg.stream, stream_router(buffer.clone(), cfg.heartbeat, takes_audit), am).await?,
        );
        Ok(Self { store, buffer, audit_addr, admission_addr, stream_addr, servers, audit_log })
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
        shutdown.await;
        let _ = tx.send(true);
        for t in tasks {
            let _ = t.await;
        }
    }
}
