//! podtrail turns what happens inside Kubernetes containers into OpenTelemetry traces: each
//! `kubectl exec` becomes one trace, its root span saying who did it and its children every
//! process and connection of the session, nested as the real process tree.
//!
//! The pipeline, one stage per module, joined by bounded channels; a stage uses only the
//! stages before it and the shared modules (`src/deps_tests.rs` checks it):
//! - [`capture`]: load the BPF programs, read the ring buffer, decode bytes into owned events,
//!   count every loss (kernel, decode);
//! - [`process`]: the process table keyed by (pid, start time), process trees, exec sessions,
//!   the host's container lookup (cgroup path, containerd labels);
//! - [`enrich`]: pod metadata from the Kubernetes API onto sessions, the cluster's ranges;
//! - [`attribute`]: audit and admission records -> user, groups, source IP, audit id;
//! - [`spans`]: sessions -> OpenTelemetry `SpanData`, held (bounded) until attributed;
//! - [`rules`]: alerts on what the spans say;
//! - [`export`]: OTLP gRPC or HTTP, OTLP/JSON file, console tree; secrets in commands are
//!   replaced by keyed tokens ([`redact`]) where updates enter it, before any sink.
//!
//! Shared, owned by no stage: [`model`] (what the stages pass each other), [`scope`]
//! (destination scopes), [`tls`] (certificate loading and reloading), [`lru`] (bounded,
//! counted caches), [`text`] (bytes as text, percent-encoding), [`clock`], [`metrics`], [`diag`]
//! (podtrail's own run as a trace, from `tracing` spans through `tracing-opentelemetry`).
//! [`config`] and [`agent`] sit on top and may use everything.
//!
//! Data can be lost in five places, each counted (ARCHITECTURE.md lists them): the ring
//! buffer (per kind and per cgroup in the kernel, marked on the cgroup's sessions), decoding,
//! the rate limits and span budgets, the export queue, and attribution (a session released
//! unattributed when no record came in time).

pub mod agent;
pub mod attribute;
pub mod capture;
pub mod clock;
pub mod config;
pub mod diag;
pub mod enrich;
pub mod export;
pub mod hashing;
pub mod heap;
pub mod lru;
pub mod metrics;
pub mod model;
pub mod process;
pub mod redact;
pub mod rules;
pub mod scope;
pub mod spans;
pub mod state;
pub mod text;
pub mod tls;

#[cfg(test)]
mod deps_tests;
