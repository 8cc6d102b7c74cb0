//! Attribution: who opened an exec session, and from where.
//!
//! In: Kubernetes audit events (`audit.k8s.io/v1`, from the audit webhook or an audit log file)
//! and admission reviews (`admission.k8s.io/v1` CONNECT on `pods/exec`, `pods/attach`), plus a
//! [`SessionQuery`] per exec session from the process stage.
//! Out: an [`Attribution`] per session (user, groups, source IP, audit id, trace id, how it was
//! matched and how sure), and the requests that never became a session (attach, port-forward,
//! denied or unmatched execs) as attributions of their own.
//! Dropped (each counted in [`metrics::AttributeMetrics`]): events for other resources,
//! duplicates of an (audit id, stage) already seen, malformed input, and records evicted when
//! the store is full or past its retention.
//!
//! Layout: [`audit`] and [`admission`] parse the wire formats into [`record::RequestRecord`];
//! [`matcher`] holds the pure matching rules; [`store`] keeps records and matches sessions;
//! [`webhook`] and [`serve`] are the HTTPS endpoints, bounded by [`intake`]; [`follow`] tails an audit log file.

pub mod admission;
pub mod audit;
pub mod follow;
pub mod intake;
pub mod matcher;
pub mod metrics;
pub mod record;
pub mod serve;
pub mod store;
pub mod stream;
pub mod webhook;

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::SystemTime;

pub use admission::{AdmissionRecord, AdmissionReview};
pub use audit::{AuditEvent, EventList, Stage};
pub use intake::{IntakeLimits, Peer};
pub use metrics::AttributeMetrics;
pub use serve::{ListenerConfig, ServeError, TlsFiles, WebhookServer};
pub use store::{InsertOutcome, RecordStore, StoreConfig};
pub use webhook::{admission_router, audit_router, WebhookConfig};

/// What the session side knows about an exec session when it asks who opened it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionQuery {
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
    pub container_name: Option<String>,
    /// argv of the session root's first image as the kernel saw it (a `#!` script shows as
    /// [interpreter, script, args...]).
    pub argv: Vec<String>,
    /// When the session root exec'd (wall clock).
    pub started_at: SystemTime,
    /// KUBERNETES_EXEC_AUDIT_ID from the root's first image, if present (KEP-6035).
    pub env_audit_id: Option<String>,
}

/// Where the "who" of a session came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AttributionSource {
    /// Joined through `KUBERNETES_EXEC_AUDIT_ID` (the record itself came from a webhook or log).
    KernelEnv,
    AuditWebhook,
    AuditLog,
    Admission,
    None,
}

impl AttributionSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KernelEnv => "kernel_env",
            Self::AuditWebhook => "audit_webhook",
            Self::AuditLog => "audit_log",
            Self::Admission => "admission",
            Self::None => "none",
        }
    }
}

/// How sure the join is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Confidence {
    /// The audit id in the session's environment names the record, and the record matches.
    Exact,
    /// Exactly one request matches pod, container, command and time.
    Unique,
    /// Several identical requests overlap; the oldest free one was taken.
    Ambiguous,
    None,
}

impl Confidence {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::Unique => "unique",
            Self::Ambiguous => "ambiguous",
            Self::None => "none",
        }
    }
}

/// The kind of API request behind a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestKind {
    Exec,
    Attach,
    /// `kubectl debug`: a `pods/ephemeralcontainers` write (usually followed by an attach).
    Debug,
    PortForward,
}

impl RequestKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exec => "exec",
            Self::Attach => "attach",
            Self::Debug => "debug",
            Self::PortForward => "port_forward",
        }
    }

    /// The audit `objectRef.subresource` (or admission `subResource`) for this kind.
    pub fn from_subresource(sub: &str) -> Option<Self> {
        match sub {
            "exec" => Some(Self::Exec),
            "attach" => Some(Self::Attach),
            "ephemeralcontainers" => Some(Self::Debug),
            "portforward" => Some(Self::PortForward),
            _ => None,
        }
    }
}

/// Who opened a session, ready to become span attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribution {
    pub source: AttributionSource,
    pub confidence: Confidence,
    /// How many requests matched (1 when unique; more when ambiguous).
    pub candidates: u32,
    pub audit_id: Option<String>,
    /// uid of the admission review that recorded the request (source `admission`: no audit id
    /// is visible to an admission webhook).
    pub admission_uid: Option<String>,
    /// See [`trace_id_for_audit_id`]; the store falls back to a hash for a reused audit id.
    pub trace_id: Option<[u8; 16]>,
    /// The real requester (audit `user`; for admission, the effective identity).
    pub user_name: Option<String>,
    pub user_uid: Option<String>,
    pub user_groups: Vec<String>,
    /// `user.extra` (e.g. the authenticator's session or credential id).
    pub user_extra: BTreeMap<String, Vec<String>>,
    pub impersonated_name: Option<String>,
    pub impersonated_groups: Vec<String>,
    /// Last `sourceIPs` entry: the only one the client cannot forge.
    pub client_address: Option<String>,
    pub source_ips: Vec<String>,
    pub user_agent: Option<String>,
    pub request_kind: RequestKind,
    pub requested_command: Vec<String>,
    pub container: Option<String>,
    pub stdin: bool,
    pub tty: bool,
    /// Ports of a port-forward request, when the request URI names them (WebSocket).
    pub ports: Vec<u16>,
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
    /// RequestReceived / ResponseStarted time.
    pub request_started: Option<SystemTime>,
    /// ResponseComplete time.
    pub request_completed: Option<SystemTime>,
    pub response_code: Option<u16>,
    /// False when the record came from a client that proved no identity (an unverified
    /// admission webhook): `podtrail.attribution.verified=false` on the spans.
    pub verified: bool,
}

/// Trace id for an audit id: the UUID's 16 bytes when it parses as a UUID, else the first 16
/// bytes of SHA-256 of it. (The store decides when a reused UUID must fall back to the hash.)
pub fn trace_id_for_audit_id(audit_id: &str) -> [u8; 16] {
    match uuid::Uuid::try_parse(audit_id) {
        Ok(u) if !u.is_nil() => *u.as_bytes(),
        _ => hashed_trace_id(audit_id.as_bytes()),
    }
}

/// First 16 bytes of SHA-256: used for non-UUID and reused audit ids.
pub(crate) fn hashed_trace_id(data: &[u8]) -> [u8; 16] {
    let digest = Sha256::digest(data);
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_audit_id_is_its_own_trace_id() {
        let id = "4b5f3c7e-8d2a-4f19-9c3e-2a1b0d9e8f70";
        assert_eq!(hex::encode(trace_id_for_audit_id(id)), "4b5f3c7e8d2a4f199c3e2a1b0d9e8f70");
    }

    #[test]
    fn non_uuid_audit_id_hashes_to_sha256_prefix() {
        let t = trace_id_for_audit_id("my-own-audit-id");
        let d = Sha256::digest(b"my-own-audit-id");
        assert_eq!(&t[..], &d[..16]);
        // The nil UUID would be an invalid (all-zero) trace id: hash it instead.
        assert_ne!(trace_id_for_audit_id("00000000-0000-0000-0000-000000000000"), [0u8; 16]);
    }

    #[test]
    fn enum_names_match_the_attribute_table() {
        assert_eq!(AttributionSource::KernelEnv.as_str(), "kernel_env");
        assert_eq!(AttributionSource::AuditWebhook.as_str(), "audit_webhook");
        assert_eq!(Confidence::Ambiguous.as_str(), "ambiguous");
        assert_eq!(RequestKind::PortForward.as_str(), "port_forward");
        assert_eq!(RequestKind::from_subresource("ephemeralcontainers"), Some(RequestKind::Debug));
        assert_eq!(RequestKind::from_subresource("log"), None);
    }
}
