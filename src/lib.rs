//! podtrail turns what happens inside Kubernetes containers into OpenTelemetry traces: each
//! `kubectl exec` becomes one trace, its root span saying who did it and its children every
//! process and connection of the session, nested as the real process tree.
//!
//! The pipeline, one stage per module, joined by bounded channels:
//! - [`capture`]: load the BPF programs, read the ring buffer, decode bytes into owned events,
//!   count every loss (kernel, decode);
//! - [`process`]: the process table keyed by (pid, start time), process trees, exec sessions;
//! - [`enrich`]: container id -> pod, namespace, container name, workload, node;
//! - [`attribute`]: audit and admission records -> user, groups, source IP, audit id;
//! - [`spans`]: sessions -> OpenTelemetry `SpanData`, held (bounded) until attributed;
//! - [`export`]: OTLP gRPC or HTTP, OTLP/JSON file, console tree.
//!
//! Data can be lost in three places only, each counted and marked on its session: the ring
//! buffer (counted per cgroup in the kernel), the rate limit, and the export queue.

pub mod agent;
pub mod attribute;
pub mod capture;
pub mod clock;
pub mod config;
pub mod enrich;
pub mod export;
pub mod metrics;
pub mod process;
pub mod rules;
pub mod spans;
pub mod state;
pub mod text;
