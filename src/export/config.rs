//! Configuration of the export stage (`[export]`), and its resolution with the standard
//! `OTEL_EXPORTER_OTLP_*` / `OTEL_RESOURCE_ATTRIBUTES` variables into ready values.
//!
//! Precedence, for every setting podtrail resolves itself: config file / command line, then
//! the trace-specific variable (`OTEL_EXPORTER_OTLP_TRACES_*`), then the generic one
//! (`OTEL_EXPORTER_OTLP_*`), then the default. The endpoint: `..._TRACES_ENDPOINT` is used
//! as-is, `OTEL_EXPORTER_OTLP_ENDPOINT` is a base URL (`/v1/traces` is appended for HTTP).
//! The alerts' log records: `OTEL_EXPORTER_OTLP_LOGS_ENDPOINT` as-is, else the traces'
//! address (gRPC) or `/v1/logs` in place of `/v1/traces` (HTTP).
//! Resolved here: endpoint, protocol, timeout (the export queue needs it too), and the TLS
//! files (`..._CERTIFICATE`, `..._CLIENT_CERTIFICATE`, `..._CLIENT_KEY`, which
//! opentelemetry-otlp 0.33 does not read).
//!
//! Left to the exporter (for gRPC, podtrail's own client, which reads them the exporter's
//! way: `otlp::GrpcTraces`), which reads them itself: `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS`
//! (merged over `otlp_headers`: on the same header name the variable wins, as the exporter
//! does it) and `OTEL_EXPORTER_OTLP_(TRACES_)COMPRESSION` (used when `otlp_compression` is
//! unset).

use crate::text::percent_decode;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    /// OTLP endpoint (`http://collector:4317` for gRPC, `http://collector:4318` for HTTP).
    /// Unset: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`; none of them:
    /// no OTLP export.
    pub otlp_endpoint: Option<String>,
    /// `grpc` or `http/protobuf`. Unset: `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`, else `http/protobuf`
    /// when the endpoint's port is 4318, else `grpc`.
    pub otlp_protocol: Option<String>,
    /// Extra request headers (e.g. authentication). The exporter adds
    /// `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS` over these (the variable wins on the same name).
    pub otlp_headers: BTreeMap<String, String>,
    /// Longest one export request may take, in milliseconds. Unset:
    /// `OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT`, else 10 000.
    pub otlp_timeout_ms: Option<u64>,
    /// `gzip` or `none`. Unset or `none`: as `OTEL_EXPORTER_OTLP_(TRACES_)COMPRESSION` says
    /// (read by the exporter; it has no way to force "none" over the variable), else none.
    pub otlp_compression: Option<String>,
    /// PEM CA certificates that verify an `https://` endpoint, instead of the system's roots.
    /// Unset: `OTEL_EXPORTER_OTLP_(TRACES_)CERTIFICATE`, else the system's roots.
    pub otlp_ca: Option<PathBuf>,
    /// PEM client certificate (chain) for mutual TLS, with `otlp_client_key`. Unset:
    /// `OTEL_EXPORTER_OTLP_(TRACES_)CLIENT_CERTIFICATE`.
    pub otlp_client_cert: Option<PathBuf>,
    /// PEM private key of `otlp_client_cert`. Unset: `OTEL_EXPORTER_OTLP_(TRACES_)CLIENT_KEY`.
    pub otlp_client_key: Option<PathBuf>,
    /// Append OTLP/JSON here, one ExportTraceServiceRequest per line (the Collector's file
    /// exporter format).
    pub file: Option<PathBuf>,
    /// Rotate the OTLP/JSON file when the next line would take it past this many MiB: it is
    /// renamed `FILE.1` (the previous `FILE.1` becomes `FILE.2`, ...). 0: never rotate.
    pub file_max_mib: u64,
    /// Rotated files kept besides the current one (`FILE.1` ... `FILE.N`); the oldest beyond
    /// goes. At least 1 when `file_max_mib` is set.
    pub file_keep: u32,
    /// Print each finished session as a tree on stdout. Unset: only when neither OTLP nor a
    /// file is configured.
    pub console: Option<bool>,
    /// Spans the export queue holds while the backend is slow or down; beyond it spans are
    /// lost (counted, and marked on their session's root).
    pub queue_spans: usize,
    /// Spans per export request.
    pub batch_spans: usize,
    /// Attempts per request before its spans count as lost.
    pub max_attempts: u32,
    /// First retry delay in milliseconds (doubles up to `retry_max_ms`).
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// At shutdown, how long to keep trying to send what is queued, in milliseconds.
    pub shutdown_flush_ms: u64,
    /// `k8s.node.name` on the resource. Unset: `NODE_NAME` (set by the DaemonSet from the
    /// downward API), else the host name.
    pub node_name: Option<String>,
    /// `[export.queue]`: the durable queue of `podtrail run`'s OTLP sink, on the node's disk.
    pub queue: QueueConfig,
    /// Send each alert also as an OTLP log record (with the alert span's trace and span ids)
    /// to the OTLP endpoint, with its settings: gRPC to the same address, HTTP to `/v1/logs`
    /// beside `/v1/traces`, or `OTEL_EXPORTER_OTLP_LOGS_ENDPOINT` as-is. Turn off for a
    /// backend that takes no logs (it would refuse every record, retried without end).
    pub alert_logs: bool,
}

/// Where `podtrail run` keeps spans until the OTLP backend has them (docs: ARCHITECTURE.md,
/// "Where data can be lost"). With the durable queue, `queue_spans` and `max_attempts` do not
/// apply to the OTLP sink: it retries without a time limit while the budget holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// podtrail's state directory: one agent's lock, heartbeat and queue (`queue/otlp/`). The
    /// DaemonSet mounts it from the host so a restarted agent sends what its predecessor left.
    /// One directory per agent: a second agent on it is refused. Also `--state-dir`.
    pub directory: PathBuf,
    /// Disk the queue may use, in MiB. Beyond it the oldest segment goes (its spans counted in
    /// `podtrail_spans_lost_total{reason="disk_budget"}` and marked on their sessions' roots).
    /// 0: no disk queue; the OTLP sink's spans wait in memory (`queue_spans`, `max_attempts`)
    /// and a crash loses them.
    pub budget_mib: u64,
    /// When written spans are forced to disk: `never` (they survive a crash of the agent, not
    /// of the node), `batch` (after each batch the export stage writes) or `always` (after each
    /// span). Costs in BENCHMARKS.md.
    pub fsync: super::segments::Fsync,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            directory: PathBuf::from("/var/lib/podtrail"),
            budget_mib: 1024,
            fsync: super::segments::Fsync::Batch,
        }
    }
}

/// The durable queue, ready: `held` is set by `podtrail run` once it holds the directory
/// (library callers without it get the in-memory queue).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSetup {
    pub directory: PathBuf,
    pub budget: u64,
    pub fsync: super::segments::Fsync,
    pub held: Option<crate::state::Held>,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            otlp_endpoint: None,
            otlp_protocol: None,
            otlp_headers: BTreeMap::new(),
            otlp_timeout_ms: None,
            otlp_compression: None,
            otlp_ca: None,
            otlp_client_cert: None,
            otlp_client_key: None,
            file: None,
            file_max_mib: 100,
            file_keep: 5,
            console: None,
            queue_spans: 65_536,
            batch_spans: 512,
            max_attempts: 5,
            retry_initial_ms: 500,
            retry_max_ms: 8_000,
            shutdown_flush_ms: 5_000,
            node_name: None,
            queue: QueueConfig::default(),
            alert_logs: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// Certificates for an `https://` endpoint (read when the exporter is built).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA bundle; None: the system's roots.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (mutual TLS).
    pub client: Option<(PathBuf, PathBuf)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpTarget {
    pub protocol: Protocol,
    /// Full URL: for HTTP, including `/v1/traces`.
    pub url: String,
    /// `otlp_headers` only: the exporter adds the environment's headers itself.
    pub headers: BTreeMap<String, String>,
    pub timeout: Duration,
    /// Some for an `https://` endpoint.
    pub tls: Option<TlsFiles>,
    /// Some(true): gzip; otherwise as the exporter's environment says (default none).
    pub gzip: Option<bool>,
    /// Where the alerts' log records go (full URL; for HTTP, including `/v1/logs`).
    pub logs_url: String,
}

/// Validated, ready to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSetup {
    pub otlp: Option<OtlpTarget>,
    pub file: Option<PathBuf>,
    /// When and how the file sink rotates; None: never.
    pub file_rotation: Option<super::file::Rotation>,
    pub console: bool,
    pub queue_spans: usize,
    pub batch_spans: usize,
    pub max_attempts: u32,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub shutdown_flush: Duration,
    pub node_name: Option<String>,
    pub queue: QueueSetup,
    /// Alerts also leave as OTLP log records (only with an OTLP endpoint).
    pub alert_logs: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("OTLP protocol {0:?} is not supported: use grpc or http/protobuf")]
    Protocol(String),
    #[error("OTLP endpoint {0:?} is not an http:// or https:// URL")]
    Endpoint(String),
    #[error("OTEL_EXPORTER_OTLP_HEADERS entry {0:?} is not key=value")]
    Header(String),
    #[error("export.{0} must be greater than 0")]
    Zero(&'static str),
    #[error("OTLP compression {0:?} is not supported: use gzip or none")]
    Compression(String),
    #[error("{0} is set without {1}: a client certificate needs its key and the key its certificate")]
    ClientPair(&'static str, &'static str),
    #[error("{0} {1:?} is not a number of milliseconds")]
    Timeout(&'static str, String),
    #[error("{0} is set for the http:// endpoint {1}: use https:// (or drop the certificate)")]
    TlsOnPlaintext(&'static str, String),
    #[error(
        "the OTLP traces endpoint {0} has no /v1/traces path to put /v1/logs beside for the alerts' log records: \
         set OTEL_EXPORTER_OTLP_LOGS_ENDPOINT, or export.alert_logs = false"
    )]
    LogsEndpoint(String),
}

/// `k1=v1,k2=v2` with percent-encoded values (the OTLP exporter specification's format).
pub fn parse_headers(s: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| ConfigError::Header(part.into()))?;
        out.insert(percent_decode(k.trim(), false), percent_decode(v.trim(), false));
    }
    Ok(out)
}

impl ExportConfig {
    /// Resolves the config against the environment (`env` is `std::env::var` in production).
    pub fn resolve(&self, env: impl Fn(&str) -> Option<String>) -> Result<ExportSetup, ConfigError> {
        let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let (endpoint, as_is) = match (
            &self.otlp_endpoint,
            env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            env("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(e), _, _) if !e.is_empty() => (Some(e.clone()), false),
            (_, Some(e), _) => (Some(e), true),
            (_, _, Some(e)) => (Some(e), false),
            _ => (None, false),
        };
        let otlp = match endpoint {
            None => None,
            Some(url) => {
                let url = url.trim().to_owned();
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(ConfigError::Endpoint(url));
                }
                let proto = self
                    .otlp_protocol
                    .clone()
                    .or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"))
                    .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"));
                let protocol = match proto.as_deref().map(str::trim) {
                    Some("grpc") => Protocol::Grpc,
                    Some("http/protobuf") => Protocol::HttpProtobuf,
                    Some(other) => return Err(ConfigError::Protocol(other.into())),
                    None if port_of(&url) == Some(4318) => Protocol::HttpProtobuf,
                    None => Protocol::Grpc,
                };
                let url = match protocol {
                    Protocol::HttpProtobuf if !as_is && !url.trim_end_matches('/').ends_with("/v1/traces") => {
                        format!("{}/v1/traces", url.trim_end_matches('/'))
                    }
                    _ => url,
                };
                let logs_url = match (env("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"), protocol) {
                    (Some(l), _) => l.trim().to_owned(),
                    (None, Protocol::Grpc) => url.clone(),
                    (None, Protocol::HttpProtobuf) => match url.trim_end_matches('/').strip_suffix("/v1/traces") {
                        Some(base) => format!("{base}/v1/logs"),
                        None if self.alert_logs => return Err(ConfigError::LogsEndpoint(url)),
                        None => String::new(),
                    },
                };
                if self.alert_logs && !(logs_url.starts_with("http://") || logs_url.starts_with("https://")) {
                    return Err(ConfigError::Endpoint(logs_url));
                }
                // the headers variables are the exporter's to read (and it does); checked here
                // only so that a malformed one is one clear error at start
                for k in ["OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"] {
                    if let Some(h) = env(k) {
                        parse_headers(&h)?;
                    }
                }
                let timeout_ms = match self.otlp_timeout_ms {
                    Some(ms) => ms,
                    None => match self.signal_env(&env, "TIMEOUT") {
                        Some((k, v)) => v.trim().parse().map_err(|_| ConfigError::Timeout(k, v.clone()))?,
                        None => 10_000,
                    },
                };
                let gzip = match self.otlp_compression.as_deref().map(str::trim) {
                    Some("gzip") => Some(true),
                    Some("none") => Some(false),
                    Some(other) => return Err(ConfigError::Compression(other.into())),
                    None => None,
                };
                let file = |own: &Option<PathBuf>, var: &str| {
                    own.clone()
                        .map(|p| ("export config", p))
                        .or_else(|| self.signal_env(&env, var).map(|(k, v)| (k, PathBuf::from(v.trim()))))
                };
                let ca = file(&self.otlp_ca, "CERTIFICATE");
                let cert = file(&self.otlp_client_cert, "CLIENT_CERTIFICATE");
                let key = file(&self.otlp_client_key, "CLIENT_KEY");
                let client = match (cert, key) {
                    (Some((_, c)), Some((_, k))) => Some((c, k)),
                    (Some(_), None) => return Err(ConfigError::ClientPair("the OTLP client certificate", "its key")),
                    (None, Some(_)) => return Err(ConfigError::ClientPair("the OTLP client key", "its certificate")),
                    (None, None) => None,
                };
                let tls = if url.starts_with("https://") {
                    Some(TlsFiles { ca: ca.map(|(_, p)| p), client })
                } else {
                    // certificates for a plaintext endpoint: most likely a mistake, unless
                    // they came from a variable shared with other exporters
                    if let Some((from, _)) = ca.filter(|(k, _)| *k == "export config") {
                        return Err(ConfigError::TlsOnPlaintext(from, url));
                    }
                    if client.is_some() && self.otlp_client_cert.is_some() {
                        return Err(ConfigError::TlsOnPlaintext("export.otlp_client_cert", url));
                    }
                    None
                };
                Some(OtlpTarget {
                    protocol,
                    url,
                    headers: self.otlp_headers.clone(),
                    timeout: Duration::from_millis(timeout_ms.max(1)),
                    tls,
                    gzip,
                    logs_url,
                })
            }
        };
        for (name, v) in [
            ("queue_spans", self.queue_spans),
            ("batch_spans", self.batch_spans),
            ("max_attempts", self.max_attempts as usize),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.file_max_mib > 0 && self.file_keep == 0 {
            return Err(ConfigError::Zero("file_keep"));
        }
        let console = self.console.unwrap_or(otlp.is_none() && self.file.is_none());
        Ok(ExportSetup {
            otlp,
            file: self.file.clone(),
            file_rotation: (self.file_max_mib > 0).then(|| super::file::Rotation {
                max_bytes: self.file_max_mib.saturating_mul(1 << 20),
                keep: self.file_keep,
            }),
            console,
            queue_spans: self.queue_spans,
            batch_spans: self.batch_spans,
            max_attempts: self.max_attempts,
            retry_initial: Duration::from_millis(self.retry_initial_ms),
            retry_max: Duration::from_millis(self.retry_max_ms.max(self.retry_initial_ms)),
            shutdown_flush: Duration::from_millis(self.shutdown_flush_ms),
            node_name: self.node_name.clone().or_else(|| env("NODE_NAME")),
            queue: QueueSetup {
                directory: self.queue.directory.clone(),
                budget: self.queue.budget_mib.saturating_mul(1 << 20),
                fsync: self.queue.fsync,
                held: None,
            },
            alert_logs: self.alert_logs,
        })
    }
}

impl ExportConfig {
    /// `OTEL_EXPORTER_OTLP_TRACES_<what>`, else `OTEL_EXPORTER_OTLP_<what>`: (name, value).
    fn signal_env(&self, env: &impl Fn(&str) -> Option<String>, what: &str) -> Option<(&'static str, String)> {
        let (traces, generic) = match what {
            "TIMEOUT" => ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"),
            "CERTIFICATE" => ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE"),
            "CLIENT_CERTIFICATE" => {
                ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE")
            }
            "CLIENT_KEY" => ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "OTEL_EXPORTER_OTLP_CLIENT_KEY"),
            _ => return None,
        };
        env(traces).map(|v| (traces, v)).or_else(|| env(generic).map(|v| (generic, v)))
    }
}

fn port_of(url: &str) -> Option<u16> {
    let rest = url.split_once("://")?.1;
    let host = rest.split('/').next()?;
    host.rsplit_once(':')?.1.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: BTreeMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn no_endpoint_means_console() {
        let s = ExportConfig::default().resolve(env(&[])).unwrap();
        assert!(s.otlp.is_none() && s.console);
    }

    #[test]
    fn generic_env_endpoint_gets_the_traces_path_for_http() {
        let s = ExportConfig::default()
            .resolve(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20x, tenant=a"),
            ]))
            .unwrap();
        let o = s.otlp.unwrap();
        assert_eq!((o.protocol, o.url.as_str()), (Protocol::HttpProtobuf, "http://c:4318/v1/traces"));
        // the headers variable is the exporter's to read: not copied into the target
        assert!(o.headers.is_empty(), "{:?}", o.headers);
        assert_eq!((o.tls, o.gzip, o.timeout), (None, None, Duration::from_secs(10)));
        assert!(!s.console);
        let bad = ExportConfig::default().resolve(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "novalue"),
        ]));
        assert_eq!(bad.unwrap_err(), ConfigError::Header("novalue".into()));
    }

    #[test]
    fn tls_timeout_and_compression_follow_config_then_traces_then_generic_variables() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/generic/ca.pem"),
            ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "/traces/ca.pem"),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/generic/client.pem"),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/generic/client.key"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1500"),
        ];
        let o = ExportConfig::default().resolve(env(&vars)).unwrap().otlp.unwrap();
        let tls = o.tls.expect("https:// endpoint");
        assert_eq!(tls.ca, Some(PathBuf::from("/traces/ca.pem")), "the traces variable wins over the generic one");
        assert_eq!(tls.client, Some((PathBuf::from("/generic/client.pem"), PathBuf::from("/generic/client.key"))));
        assert_eq!(o.timeout, Duration::from_millis(1500));
        let c = ExportConfig {
            otlp_ca: Some("/cfg/ca.pem".into()),
            otlp_timeout_ms: Some(700),
            otlp_compression: Some("gzip".into()),
            ..Default::default()
        };
        let o = c.resolve(env(&vars)).unwrap().otlp.unwrap();
        assert_eq!(o.tls.unwrap().ca, Some(PathBuf::from("/cfg/ca.pem")), "config wins");
        assert_eq!((o.timeout, o.gzip), (Duration::from_millis(700), Some(true)));
        // a key without its certificate, an unknown compression, a bad timeout: one clear error each
        let half = [("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4317"), ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/k")];
        assert!(matches!(ExportConfig::default().resolve(env(&half)), Err(ConfigError::ClientPair(..))));
        let zstd = ExportConfig { otlp_compression: Some("zstd".into()), ..Default::default() };
        assert!(matches!(zstd.resolve(env(&vars)), Err(ConfigError::Compression(_))));
        let slow = [("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4317"), ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")];
        assert!(matches!(ExportConfig::default().resolve(env(&slow)), Err(ConfigError::Timeout(..))));
        // a CA in the config for a plaintext endpoint is a mistake; a shared variable is not
        let plain = ExportConfig {
            otlp_endpoint: Some("http://c:4317".into()),
            otlp_ca: Some("/ca".into()),
            ..Default::default()
        };
        assert!(matches!(plain.resolve(env(&[])), Err(ConfigError::TlsOnPlaintext(..))));
        let shared = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/ca")];
        assert_eq!(ExportConfig::default().resolve(env(&shared)).unwrap().otlp.unwrap().tls, None);
    }

    #[test]
    fn alert_logs_go_beside_the_traces_or_where_the_logs_variable_says() {
        let http = ExportConfig::default().resolve(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318")])).unwrap();
        assert_eq!(http.otlp.unwrap().logs_url, "https://c:4318/v1/logs");
        let grpc = ExportConfig { otlp_endpoint: Some("http://c:4317".into()), ..Default::default() };
        assert_eq!(grpc.resolve(env(&[])).unwrap().otlp.unwrap().logs_url, "http://c:4317");
        let own = grpc.resolve(env(&[("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://logs:4317")])).unwrap();
        assert_eq!(own.otlp.unwrap().logs_url, "http://logs:4317");
        // a custom traces path: no place to guess for the logs, one clear error unless told
        let custom = [
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://x:4318/custom"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ];
        assert!(matches!(ExportConfig::default().resolve(env(&custom)), Err(ConfigError::LogsEndpoint(_))));
        let off = ExportConfig { alert_logs: false, ..Default::default() }.resolve(env(&custom)).unwrap();
        assert!(!off.alert_logs && off.otlp.is_some());
        let bad = grpc.resolve(env(&[("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "logs:4317")]));
        assert_eq!(bad.unwrap_err(), ConfigError::Endpoint("logs:4317".into()));
    }

    #[test]
    fn config_wins_over_env_and_grpc_is_the_default() {
        let c = ExportConfig { otlp_endpoint: Some("http://jaeger:4317".into()), ..Default::default() };
        let s = c.resolve(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:4318")])).unwrap();
        let o = s.otlp.unwrap();
        assert_eq!((o.protocol, o.url.as_str()), (Protocol::Grpc, "http://jaeger:4317"));
        let t = ExportConfig::default()
            .resolve(env(&[
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://x:9999/custom"),
                ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://x:9999/custom-logs"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ]))
            .unwrap();
        let o = t.otlp.unwrap();
        assert_eq!((o.url.as_str(), o.logs_url.as_str()), ("http://x:9999/custom", "http://x:9999/custom-logs"));
    }

    #[test]
    fn unsupported_values_are_one_clear_error() {
        let e = ExportConfig::default().resolve(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ]));
        assert_eq!(e.unwrap_err(), ConfigError::Protocol("http/json".into()));
        assert!(ExportConfig { otlp_endpoint: Some("c:4317".into()), ..Default::default() }.resolve(env(&[])).is_err());
        assert!(toml::from_str::<ExportConfig>("endpoint = \"x\"").is_err());
    }
}
