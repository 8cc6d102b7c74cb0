//! `podtrail run`: the agent. With no configuration it traces container sessions on this
//! machine and prints each finished session as a tree; flags override the config file.

use std::path::PathBuf;

use clap::Args;
use podtrail::config::{Config, WebhookListen};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// TOML configuration file (see podtrail.example.toml; `podtrail config` prints the
    /// defaults). Flags below override it.
    #[arg(long, short, env = "PODTRAIL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Send traces over OTLP to this endpoint (`http://host:4317` gRPC, `http://host:4318`
    /// HTTP/protobuf). Also OTEL_EXPORTER_OTLP_ENDPOINT.
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
    /// `grpc` or `http/protobuf` (default: by port; also OTEL_EXPORTER_OTLP_PROTOCOL).
    #[arg(long)]
    pub otlp_protocol: Option<String>,
    /// Append OTLP/JSON export requests to this file, one per line.
    #[arg(long)]
    pub otlp_file: Option<PathBuf>,
    /// Print each finished session as a tree even when exporting elsewhere.
    #[arg(long)]
    pub console: bool,
    /// Take the API server's audit webhook as plain HTTP on this loopback address (single
    /// machine and tests; in a cluster use TLS with client certificates in the config file).
    #[arg(long, value_name = "ADDR")]
    pub audit_webhook_loopback: Option<String>,
    /// Follow this audit log file (JSON lines).
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
    /// Prometheus endpoint address, also serving /readyz (200 once nothing that starts is
    /// missed); "" turns both off.
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// `k8s.cluster.name` on every span.
    #[arg(long)]
    pub cluster_name: Option<String>,
    /// podtrail's state directory: the durable export queue, the lock that keeps a second
    /// agent off it, the heartbeat (default /var/lib/podtrail; export.queue.directory).
    #[arg(long, env = "PODTRAIL_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Stop after this many seconds (default: until SIGINT or SIGTERM).
    #[arg(long)]
    pub duration: Option<f64>,
}

pub fn config(a: &RunArgs) -> anyhow::Result<Config> {
    let mut cfg = match &a.config {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    };
    if let Some(e) = &a.otlp_endpoint {
        cfg.export.otlp_endpoint = Some(e.clone());
    }
    if let Some(p) = &a.otlp_protocol {
        cfg.export.otlp_protocol = Some(p.clone());
    }
    if let Some(f) = &a.otlp_file {
        cfg.export.file = Some(f.clone());
    }
    if a.console {
        cfg.export.console = Some(true);
    }
    if let Some(l) = &a.audit_webhook_loopback {
        cfg.attribution.audit_webhook =
            Some(WebhookListen { listen: l.clone(), plaintext_loopback: true, ..Default::default() });
    }
    if let Some(p) = &a.audit_log {
        cfg.attribution.audit_log = Some(p.clone());
    }
    if let Some(m) = &a.metrics_listen {
        cfg.metrics.listen = m.clone();
    }
    if let Some(d) = &a.state_dir {
        cfg.export.queue.directory = d.clone();
    }
    if let Some(c) = &a.cluster_name {
        cfg.spans.cluster_name = c.clone();
    }
    Ok(cfg)
}

pub async fn run(a: RunArgs) -> anyhow::Result<()> {
    let ready = config(&a)?.validate().map_err(|e| super::UsageError(e.to_string()))?;
    let duration = a.duration;
    let shutdown = super::stop_requested(duration);
    podtrail::agent::run(ready, shutdown).await?;
    Ok(())
}
