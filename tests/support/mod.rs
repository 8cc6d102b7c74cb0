//! Everything the integration tests share, one module per concern. Each test binary says
//! `mod support;` and uses the modules it needs:
//!
//! - [`prereq`]: the one way a test states what it needs (missing means failed, never skipped)
//! - [`kernel`]: the real BPF programs capturing while a workload runs
//! - [`containers`]: a private containerd with busybox containers; [`fixtures`]: the static C
//!   programs they run, and a local route for their floods
//! - [`agent`]: the real `podtrail run` as a subprocess, and what it reports
//! - [`otlp`]: in-process OTLP receivers and the export task; [`otlp_json`]: the one reader of
//!   OTLP/JSON files
//! - [`jaeger`]: a real Jaeger and its query API; [`collector`]: the real OpenTelemetry
//!   Collector on the shipped config; [`net`]: loopback HTTP without a client
//! - [`kube`]: a fake Kubernetes API server (list/watch wire format); [`audit`]: audit records
//!   of a `kubectl exec`
//! - [`events`]: capture events for the process stage; [`sessions`]: recorded session updates
//!   for the span stage; [`golden`]: span trees as text and the golden comparison
//! - [`rules`]: sessions through the span and rules stages
//! - [`tls`]: a throwaway CA and certificates for the TLS listeners and clients
//! - [`wait`]: polling a condition in async tests

// Each test binary compiles all of `support` but uses only part of it: what one binary leaves
// unused is used by another, so unused-item warnings here say nothing.
#![allow(dead_code)]

pub mod agent;
pub mod audit;
pub mod collector;
pub mod containers;
pub mod events;
pub mod fixtures;
pub mod golden;
pub mod jaeger;
pub mod kernel;
pub mod kube;
pub mod net;
pub mod otlp;
pub mod otlp_json;
pub mod prereq;
pub mod rules;
pub mod sessions;
pub mod tls;
pub mod wait;
