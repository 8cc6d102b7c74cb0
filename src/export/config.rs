//! Configuration of the export stage (`[export]`), and its resolution with the standard
//! `OTEL_EXPORTER_OTLP_*` / `OTEL_RESOURCE_ATTRIBUTES` variables into ready values.
//!
//! Precedence: config file / command line, then the trace-specific variable
//! (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, used as-is), then the generic one
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, a base URL: `/v1/traces` is appended for HTTP).

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
    /// Extra request headers (e.g. authentication), merged over `OTEL_EXPORTER_OTLP_HEADERS`.
    pub otlp_headers: BTreeMap<String, String>,
    /// Longest one export request may take, in milliseconds.
    pub otlp_timeout_ms: u64,
    /// Append OTLP/JSON here, one ExportTraceServiceRequest per line (the Collector's file
    /// exporter format).
    pub file: Option<PathBuf>,
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
            otlp_timeout_ms: 10_000,
            file: None,
            console: None,
            queue_spans: 65_536,
            batch_spans: 512,
            max_attempts: 5,
            retry_initial_ms: 500,
            retry_max_ms: 8_000,
            shutdown_flush_ms: 5_000,
            node_name: None,
            queue: QueueConfig::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpTarget {
    pub protocol: Protocol,
    /// Full URL: for HTTP, including `/v1/traces`.
    pub url: String,
    pub headers: BTreeMap<String, String>,
    pub timeout: Duration,
}

/// Validated, ready to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSetup {
    pub otlp: Option<OtlpTarget>,
    pub file: Option<PathBuf>,
    pub console: bool,
    pub queue_spans: usize,
    pub batch_spans: usize,
    pub max_attempts: u32,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub shutdown_flush: Duration,
    pub node_name: Option<String>,
    pub queue: QueueSetup,
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
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `k1=v1,k2=v2` with percent-encoded values (the OTLP exporter specification's format).
pub fn parse_headers(s: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| ConfigError::Header(part.into()))?;
        out.insert(percent_decode(k.trim()), percent_decode(v.trim()));
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
                let mut headers =
                    match env("OTEL_EXPORTER_OTLP_TRACES_HEADERS").or_else(|| env("OTEL_EXPORTER_OTLP_HEADERS")) {
                        Some(h) => parse_headers(&h)?,
                        None => BTreeMap::new(),
                    };
                headers.extend(self.otlp_headers.clone());
                Some(OtlpTarget { protocol, url, headers, timeout: Duration::from_millis(self.otlp_timeout_ms.max(1)) })
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
        let console = self.console.unwrap_or(otlp.is_none() && self.file.is_none());
        Ok(ExportSetup {
            otlp,
            file: self.file.clone(),
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
        })
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
        assert_eq!(o.headers.get("authorization").map(String::as_str), Some("Bearer x"));
        assert_eq!(o.headers.get("tenant").map(String::as_str), Some("a"));
        assert!(!s.console);
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
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ]))
            .unwrap();
        assert_eq!(t.otlp.unwrap().url, "http://x:9999/custom");
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
