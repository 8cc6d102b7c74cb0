//! `podtrail receiver`: the cluster's webhook endpoint. Takes the API server's audit webhook and
//! the admission webhook (TLS), and streams the records to every agent over mutual TLS
//! (docs/attribution.md, "Receiver stream"). Configured by `[receiver]`; the store's bounds come
//! from `[attribution]` (and `attribution.audit_log`, when set, is followed and streamed too).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clap::Args;
use podtrail::attribute::stream::receive::NodeProof;
use podtrail::attribute::stream::Receiver;
use podtrail::config::Config;
use prometheus_client::registry::Registry;

#[derive(Args, Debug)]
pub struct ReceiverArgs {
    /// TOML configuration file (the `[receiver]` section; defaults match deploy/).
    #[arg(long, short, env = "PODTRAIL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Stop after this many seconds (default: until SIGINT or SIGTERM).
    #[arg(long)]
    pub duration: Option<f64>,
}

pub async fn run(a: ReceiverArgs) -> anyhow::Result<()> {
    let cfg = match &a.config {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    };
    let ready = cfg.receiver.validate().map_err(super::UsageError)?;
    let store_cfg = cfg.clone().validate().map_err(|e| super::UsageError(e.to_string()))?.store;
    let mut reg = Registry::default();
    let nodes = if ready.node_filter {
        let client = kube::Client::try_default().await.map_err(|e| {
            anyhow::anyhow!("receiver.agent_auth = \"token\" needs the Kubernetes API (to review agents' tokens and watch pods): {e}; set agent_auth = \"none\" to send every record to every agent")
        })?;
        Some(NodeProof::kube(client))
    } else {
        None
    };
    let receiver = Receiver::bind_with(&ready, store_cfg, cfg.attribution.audit_log.clone(), &mut reg, nodes).await?;
    tracing::info!(
        audit = ?receiver.audit_addr,
        admission = ?receiver.admission_addr,
        stream = %receiver.stream_addr,
        replay_records = ready.replay_records,
        "podtrail receiver listening"
    );
    if let Some(addr) = ready.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            anyhow::anyhow!("metrics endpoint {addr}: {e} (set receiver.metrics_listen, or \"\" to turn it off)")
        })?;
        let reg = Arc::new(Mutex::new(reg));
        tokio::spawn(async move {
            if let Err(e) = podtrail::metrics::serve(listener, reg).await {
                tracing::error!("metrics endpoint stopped: {e}");
            }
        });
    }
    let duration = a.duration;
    receiver.run(super::stop_requested(duration)).await;
    Ok(())
}
