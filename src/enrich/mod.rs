//! Enrichment: container id -> pod, namespace, container name, workload, node; and the
//! cluster's own address ranges.
//!
//! In: container ids from the process stage; the API's nodes and ServiceCIDRs. Out: pod
//! metadata for spans and probe classification; learned ranges for destination scopes
//! ([`ranges`]). See each submodule for what it reads and what it can drop.

pub mod cgroup;
pub mod containerd;
pub mod kube;
pub mod ranges;
