//! One configuration for the agent, a section per stage, read from TOML and validated once,
//! together with the environment it reads (OTLP variables, NODE_NAME), into ready values
//! before any stage starts or any listener binds: a bad value is a usage error (exit 2). Every field has a default that works on a laptop:
//! `podtrail run` with no file traces container sessions on this machine and prints them.
//! `podtrail.example.toml` at the top of the repository is the documented example; a test
//! checks that it parses to exactly these defaults.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    attribute::{ListenerConfig, StoreConfig},
    capture::loader::{CaptureOptions, Filter},
    export::{ExportConfig, ExportSetup},
    metrics::MetricsConfig,
    process::run::ProcessOptions,
    spans::SpansConfig,
};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub capture: CaptureConfig,
    pub process: ProcessConfig,
    pub attribution: AttributionConfig,
    pub spans: SpansConfig,
    pub export: ExportConfig,
    pub metrics: MetricsConfig,
    pub rules: crate::rules::RulesConfig,
    pub kube: KubeConfig,
    /// The terminal transcript of sessions with a terminal (kernel budget, lines, spans).
    pub transcript: crate::process::transcript::TranscriptConfig,
    /// `podtrail receiver` only.
    pub receiver: crate::attribute::stream::ReceiverConfig,
}

/// Whether to watch this node's pods through the Kubernetes API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KubeWatch {
    /// When running in a pod (KUBERNETES_SERVICE_HOST is set).
    #[default]
    Auto,
    On,
    Off,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubeConfig {
    /// `auto`, `on` or `off`: pod metadata (names, uid, workload) and exec probe commands of
    /// this node's pods, from a watch on `pods` with `spec.nodeName`.
    pub watch: KubeWatch,
    /// This node's name, for the pod watch, the receiver subscription and `k8s.node.name`;
    /// empty: `export.node_name`, else the NODE_NAME variable (set it from the downward API's
    /// `spec.nodeName`), else the host name.
    pub node_name: String,
    /// Export the sessions of exec probes too (they are counted either way).
    pub export_probes: bool,
    /// Pod labels put on every span of a session as `k8s.pod.label.<key>` (from the pod
    /// watch), by exact key; at most [`MAX_POD_LABELS`], each a valid Kubernetes label key.
    pub pod_labels: Vec<String>,
}

/// At most this many `kube.pod_labels`: every span of a session carries them.
pub const MAX_POD_LABELS: usize = 16;

impl Default for KubeConfig {
    fn default() -> Self {
        KubeConfig {
            watch: KubeWatch::default(),
            node_name: String::new(),
            export_probes: false,
            pod_labels: vec!["app".into(), "app.kubernetes.io/name".into(), "app.kubernetes.io/instance".into()],
        }
    }
}

/// A Kubernetes label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// characters, alphanumeric at both ends, `-`, `_`, `.` inside.
pub fn label_key_problem(key: &str) -> Option<&'static str> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let alnum = |c: char| c.is_ascii_alphanumeric();
    if name.is_empty() || name.len() > 63 {
        return Some("the name part must be 1 to 63 characters");
    }
    if !name.starts_with(alnum) || !name.ends_with(alnum) {
        return Some("the name part must begin and end with a letter or digit");
    }
    if !name.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.')) {
        return Some("the name part may hold only letters, digits, '-', '_' and '.'");
    }
    if let Some(p) = prefix {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && l.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && l.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        };
        if p.is_empty() || p.len() > 253 || !p.split('.').all(label_ok) {
            return Some("the prefix must be a DNS subdomain (lower-case, at most 253 characters)");
        }
    }
    None
}

pub use crate::capture::loader::DEFAULT_RING_MIB;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    /// Which processes the kernel reports: `all`, or `containers` (outside the host's pid
    /// namespace). Sessions from the node (nsenter) need `all`.
    pub filter: Filter,
    /// Ring buffer size in MiB (a power of two). Its pages are mapped twice, so it adds twice
    /// its size to VmRSS (the default 16: 32 MiB). A node with bursts of thousands of execs
    /// per second wants more; a quiet one can do with less (BENCHMARKS.md, issue 15).
    pub ring_mib: u32,
    /// Search possible session roots' environment for KUBERNETES_EXEC_AUDIT_ID.
    pub scan_env: bool,
    /// Trace connects (cgroup socket hooks; needs CAP_NET_ADMIN).
    pub network: bool,
    /// With `network`: also the ways out that are not a connect: UDP datagrams that name
    /// their destination (sendto/sendmsg), listening and accepted TCP sockets, raw and ICMP
    /// sockets.
    pub sockets: bool,
    /// With `network`: also read DNS answers as they reach a socket (UDP from port 53, a
    /// `cgroup_skb/ingress` program), so a connect carries the name its process looked up
    /// (`server.address`; the cache is `[process.dns]`). DNS over TCP, DoT and DoH are not
    /// read.
    pub dns: bool,
    /// Queued KiB that make the kernel wake the reader at once; keep it well under the ring
    /// (at or over its size only the poll drains it).
    pub wakeup_kib: u64,
    /// How often the reader drains the ring when no wakeup came, in milliseconds.
    pub poll_ms: u64,
    /// Events queued between the reader and the process stage (they travel in batches of up
    /// to 256: the queue holds `channel_capacity / 256` batches).
    pub channel_capacity: usize,
    /// Each cgroup's fair share of the ring, in percent of it per 100 ms: once the ring is
    /// half full, a cgroup's network records (connects, their outcomes, first datagrams) over
    /// its share are refused in the kernel and counted as that cgroup's loss, so one
    /// container's flood cannot crowd out another's sessions. 0 turns it off; at most 50.
    pub cgroup_share_percent: u32,
    /// Base names of files whose changes are recorded (open for writing, unlink, rename,
    /// truncate, chmod, link, symlink), filtered in the kernel.
    pub watch_changes: Vec<String>,
    /// Base names of files whose reads are recorded too (secrets).
    pub watch_reads: Vec<String>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            filter: Filter::All,
            ring_mib: DEFAULT_RING_MIB,
            scan_env: true,
            network: true,
            sockets: true,
            dns: true,
            wakeup_kib: 256,
            poll_ms: crate::capture::loader::DEFAULT_POLL_MS,
            channel_capacity: 65_536,
            cgroup_share_percent: 10,
            watch_changes: crate::capture::loader::DEFAULT_WATCH_CHANGES.iter().map(|s| s.to_string()).collect(),
            watch_reads: crate::capture::loader::DEFAULT_WATCH_READS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessConfig {
    /// Read /proc at start-up so sessions already running are recognised.
    pub scan_proc: bool,
    /// containerd's API socket, for pod labels and container init pids; empty to not ask.
    pub containerd_socket: PathBuf,
    /// containerd namespaces to look containers up in, in order.
    pub containerd_namespaces: Vec<String>,
    /// Session updates queued between the process stage and the span stage, at most (they
    /// travel in batches of up to 256: the queue holds `channel_capacity / 256` batches).
    pub channel_capacity: usize,
    /// What is recorded beside exec sessions (`[process.activity]`): watched executables,
    /// outbound connects, their folding and rate limit.
    pub activity: crate::process::activity::ActivityConfig,
    /// The names DNS answers gave each container's addresses (`[process.dns]`), which
    /// connects carry.
    pub dns: crate::process::dns::DnsConfig,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        ProcessConfig {
            scan_proc: true,
            containerd_socket: PathBuf::from("/run/containerd/containerd.sock"),
            containerd_namespaces: vec!["k8s.io".into(), "default".into()],
            channel_capacity: 16_384,
            activity: Default::default(),
            dns: Default::default(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookListen {
    /// Address to listen on, e.g. `0.0.0.0:8443`.
    pub listen: String,
    /// Server certificate and key (PEM).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// CA that signs the clients' certificates (the API server's); required unless
    /// plaintext_loopback, or `unverified` on the admission webhook.
    pub client_ca: Option<PathBuf>,
    /// Names the client certificate must carry one of (subject CN, DNS or URI SAN; a trailing
    /// `*` matches by prefix). Empty: any certificate `client_ca` signed.
    pub allowed_clients: Vec<String>,
    /// Plain HTTP: only allowed on a loopback address (single machine, tests).
    pub plaintext_loopback: bool,
    /// Admission webhook only: take reviews without a client certificate (a managed cluster's
    /// API server presents none), kept as unverified records (docs/attribution.md).
    pub unverified: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttributionConfig {
    /// Take the API server's audit webhook (`--audit-webhook-config-file`).
    pub audit_webhook: Option<WebhookListen>,
    /// Take `pods/exec` and `pods/attach` CONNECT admission reviews (managed clusters).
    pub admission_webhook: Option<WebhookListen>,
    /// Follow an audit log file (JSON lines), through rotation.
    pub audit_log: Option<PathBuf>,
    /// Largest distance in seconds between a request and the session start it may match.
    pub match_window_s: u64,
    /// Seconds a session whose environment names an audit id waits for that record.
    pub env_id_grace_s: u64,
    /// Milliseconds a session that only an admission review fits waits for the audit record
    /// of the same request, where audit events come too (they have the real requester and
    /// the source IP; the review arrives first).
    pub audit_wait_ms: u64,
    /// Most request records held.
    pub max_records: usize,
    /// Seconds a record is held.
    pub retention_s: u64,
    /// Milliseconds a session's spans wait for attribution when a source is configured (the
    /// API server batches audit events: set its webhook batch max wait to 1 s). The one hold
    /// deadline: without a source nothing waits.
    pub hold_ms: u64,
    /// `podtrail receiver` replicas to take records from over mutual TLS, e.g.
    /// `https://podtrail-receiver-peers.podtrail.svc:7443`; a name that resolves to several
    /// addresses (a headless Service) is one subscription per address.
    pub receivers: Vec<String>,
    /// This agent's client certificate and key for the receivers (PEM).
    pub receiver_tls_cert: PathBuf,
    pub receiver_tls_key: PathBuf,
    /// CA that signed the receivers' serving certificates.
    pub receiver_ca: PathBuf,
    /// This agent's bound service-account token (audience `podtrail`, projected by the
    /// kubelet), sent to the receivers to prove the node it runs on; re-read at every connect
    /// (the kubelet rotates it). "" sends none (a receiver with `agent_auth = "none"`).
    pub receiver_token: PathBuf,
}

impl Default for AttributionConfig {
    fn default() -> Self {
        AttributionConfig {
            audit_webhook: None,
            admission_webhook: None,
            audit_log: None,
            match_window_s: 120,
            env_id_grace_s: 60,
            audit_wait_ms: 3000,
            max_records: 10_000,
            retention_s: 900,
            hold_ms: 10_000,
            receivers: Vec::new(),
            receiver_tls_cert: PathBuf::from("/etc/podtrail-tls/tls.crt"),
            receiver_tls_key: PathBuf::from("/etc/podtrail-tls/tls.key"),
            receiver_ca: PathBuf::from("/etc/podtrail-tls/ca.crt"),
            receiver_token: PathBuf::from("/var/run/secrets/podtrail/token"),
        }
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    pub fn from_file(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path: path.display().to_string(), message },
            e => e,
        })
    }

    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse { path: "config".into(), message: e.to_string() })
    }

    /// Checks every value and turns the sections into what the stages take, reading the
    /// process environment.
    pub fn validate(self) -> Result<Ready, ConfigError> {
        self.validate_with(|k| std::env::var(k).ok())
    }

    /// [`Config::validate`] against the given environment.
    pub fn validate_with(self, env: impl Fn(&str) -> Option<String>) -> Result<Ready, ConfigError> {
        let c = &self.capture;
        if !c.ring_mib.is_power_of_two() || c.ring_mib > 1024 {
            return Err(ConfigError::Invalid(format!(
                "capture.ring_mib must be a power of two up to 1024, not {}",
                c.ring_mib
            )));
        }
        if c.cgroup_share_percent > 50 {
            return Err(ConfigError::Invalid(format!(
                "capture.cgroup_share_percent must be 0 (off) to 50, not {}",
                c.cgroup_share_percent
            )));
        }
        if c.channel_capacity == 0 || self.process.channel_capacity == 0 {
            return Err(ConfigError::Invalid("channel capacities must be at least 1".into()));
        }
        if self.kube.pod_labels.len() > MAX_POD_LABELS {
            return Err(ConfigError::Invalid(format!(
                "kube.pod_labels holds {} keys: at most {MAX_POD_LABELS} (every span of a session carries them)",
                self.kube.pod_labels.len()
            )));
        }
        for k in &self.kube.pod_labels {
            if let Some(why) = label_key_problem(k) {
                return Err(ConfigError::Invalid(format!("kube.pod_labels: {k:?} is not a label key: {why}")));
            }
        }
        if self.spans.max_kept_spans_per_session < self.spans.max_spans_per_session {
            return Err(ConfigError::Invalid(format!(
                "spans.max_kept_spans_per_session ({}) must be at least spans.max_spans_per_session ({})",
                self.spans.max_kept_spans_per_session, self.spans.max_spans_per_session
            )));
        }
        let t = &self.transcript;
        t.check().map_err(ConfigError::Invalid)?;
        let capture = CaptureOptions {
            ring_bytes: c.ring_mib * 1024 * 1024,
            filter: c.filter,
            scan_env: c.scan_env,
            wakeup_bytes: c.wakeup_kib * 1024,
            cgroup_share_bytes: c.ring_mib as u64 * 1024 * 1024 * c.cgroup_share_percent as u64 / 100,
            poll_interval: Duration::from_millis(c.poll_ms.max(1)),
            channel_capacity: c.channel_capacity,
            cgroup2_root: None,
            network: c.network,
            sockets: c.sockets,
            dns: c.dns,
            ignore_self: true,
            watch_changes: c.watch_changes.clone(),
            watch_reads: c.watch_reads.clone(),
            tty_input_budget: if t.enabled { t.input_budget_kib * 1024 } else { 0 },
            tty_output_budget: if t.enabled && t.output { t.output_budget_kib * 1024 } else { 0 },
            kinds: crate::capture::loader::ALL_KINDS,
        };
        let p = &self.process;
        let process = ProcessOptions {
            scan_proc: p.scan_proc,
            containerd_socket: (!p.containerd_socket.as_os_str().is_empty()).then(|| p.containerd_socket.clone()),
            containerd_namespaces: p.containerd_namespaces.clone(),
            activity: crate::process::activity::ActivityConfig {
                ranges: self.spans.scope.clone(),
                ..p.activity.clone()
            },
            dns: p.dns.clone(),
            transcript: t.clone(),
            ..ProcessOptions::default()
        };
        p.activity.check().map_err(ConfigError::Invalid)?;
        p.dns.check().map_err(|e| ConfigError::Invalid(format!("process.dns: {e}")))?;
        let a = &self.attribution;
        let audit_webhook =
            a.audit_webhook.as_ref().map(|w| listener("attribution.audit_webhook", w, true)).transpose()?;
        let admission_webhook =
            a.admission_webhook.as_ref().map(|w| listener("attribution.admission_webhook", w, false)).transpose()?;
        let store = StoreConfig {
            match_window: Duration::from_secs(a.match_window_s),
            env_id_grace: Duration::from_secs(a.env_id_grace_s),
            audit_wait: Duration::from_millis(a.audit_wait_ms),
            max_records: a.max_records,
            retention: Duration::from_secs(a.retention_s),
        };
        for r in &a.receivers {
            crate::attribute::stream::subscribe::parse_receiver(r)
                .map_err(|e| ConfigError::Invalid(format!("attribution.receivers: {e}")))?;
        }
        let receivers = (!a.receivers.is_empty()).then(|| {
            let mut s = crate::attribute::stream::SubscribeConfig::new(
                a.receivers.clone(),
                a.receiver_tls_cert.clone(),
                a.receiver_tls_key.clone(),
                a.receiver_ca.clone(),
                String::new(),
            );
            s.token_file = (!a.receiver_token.as_os_str().is_empty()).then(|| a.receiver_token.clone());
            s
        });
        let attributed =
            audit_webhook.is_some() || admission_webhook.is_some() || a.audit_log.is_some() || receivers.is_some();
        // the key file and the patterns are checked here, once, with the section's name
        crate::redact::Redactor::new(&self.spans.redact).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let mut spans = self.spans.clone();
        spans.hold.deadline_ms = if attributed { a.hold_ms } else { 0 };
        spans.transcript = self.transcript.clone();
        let node_name = node_name(&self.kube, &self.export, &env)?;
        let mut export = self.export.resolve(&env).map_err(|e| ConfigError::Invalid(format!("export: {e}")))?;
        export.node_name = Some(node_name.clone());
        let metrics_listen = if self.metrics.listen.is_empty() {
            None
        } else {
            Some(self.metrics.listen.parse::<SocketAddr>().map_err(|e| {
                ConfigError::Invalid(format!("metrics.listen {:?} is not an address: {e}", self.metrics.listen))
            })?)
        };
        Ok(Ready {
            capture,
            process,
            process_channel: p.channel_capacity,
            store,
            audit_webhook,
            admission_webhook,
            audit_log: a.audit_log.clone(),
            receivers,
            spans,
            export,
            node_name,
            metrics_listen,
            rules: self.rules.clone(),
            kube: self.kube.clone(),
        })
    }
}

/// The one node name: `kube.node_name`, `export.node_name`, NODE_NAME, the host name.
fn node_name(
    kube: &KubeConfig,
    export: &ExportConfig,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let configured = [Some(kube.node_name.clone()), export.node_name.clone()];
    let mut set = configured.into_iter().flatten().filter(|n| !n.trim().is_empty());
    let (first, second) = (set.next(), set.next());
    if let (Some(a), Some(b)) = (&first, &second) {
        if a != b {
            return Err(ConfigError::Invalid(format!(
                "kube.node_name {a:?} and export.node_name {b:?} disagree: set one of them"
            )));
        }
    }
    Ok(first
        .or_else(|| env("NODE_NAME").filter(|n| !n.trim().is_empty()))
        .unwrap_or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_owned()))
}

fn listener(section: &str, w: &WebhookListen, audit: bool) -> Result<ListenerConfig, ConfigError> {
    let name = if audit { "audit" } else { "admission" };
    listener_unnamed(section, w, audit).map(|l| l.named(name))
}

fn listener_unnamed(section: &str, w: &WebhookListen, audit: bool) -> Result<ListenerConfig, ConfigError> {
    let listen: SocketAddr = w
        .listen
        .parse()
        .map_err(|e| ConfigError::Invalid(format!("{section}.listen {:?} is not an address: {e}", w.listen)))?;
    if w.plaintext_loopback {
        if !listen.ip().is_loopback() {
            return Err(ConfigError::Invalid(format!(
                "{section}: plaintext_loopback needs a loopback listen address, not {listen}: identities must not travel in clear text"
            )));
        }
        return Ok(ListenerConfig::plaintext_loopback(listen));
    }
    let (Some(cert), Some(key)) = (&w.tls_cert, &w.tls_key) else {
        return Err(ConfigError::Invalid(format!(
            "{section}: tls_cert and tls_key are required (or plaintext_loopback on 127.0.0.1)"
        )));
    };
    if w.unverified && audit {
        return Err(ConfigError::Invalid(format!(
            "{section}: unverified is for the admission webhook only: the audit webhook always authenticates the API server"
        )));
    }
    if w.unverified && w.client_ca.is_some() {
        return Err(ConfigError::Invalid(format!(
            "{section}: unverified and client_ca exclude each other: with a client CA the reviews are verified"
        )));
    }
    match (&w.client_ca, w.unverified) {
        (Some(ca), _) => Ok(ListenerConfig::mtls(listen, cert.clone(), key.clone(), ca.clone())
            .allowing(w.allowed_clients.clone())),
        (None, true) => Ok(ListenerConfig::unverified(listen, cert.clone(), key.clone())),
        (None, false) => Err(ConfigError::Invalid(format!(
            "{section}: client_ca is required: the webhook authenticates the API server by its client certificate (on a managed cluster, whose API server presents none to an admission webhook, set unverified = true)"
        ))),
    }
}

/// Validated configuration, ready for the stages.
#[derive(Clone, Debug)]
pub struct Ready {
    pub capture: CaptureOptions,
    pub process: ProcessOptions,
    pub process_channel: usize,
    pub store: StoreConfig,
    pub audit_webhook: Option<ListenerConfig>,
    pub admission_webhook: Option<ListenerConfig>,
    pub audit_log: Option<PathBuf>,
    /// Subscriptions to `podtrail receiver` (the agent fills in its node name).
    pub receivers: Option<crate::attribute::stream::SubscribeConfig>,
    pub spans: SpansConfig,
    /// Export settings resolved against the OTLP environment variables.
    pub export: ExportSetup,
    /// This node's name, resolved once (see [`KubeConfig::node_name`]).
    pub node_name: String,
    pub metrics_listen: Option<SocketAddr>,
    pub rules: crate::rules::RulesConfig,
    pub kube: KubeConfig,
}

#[cfg(test)]
mod tests;
