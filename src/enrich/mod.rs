//! Enrichment: container id -> pod, namespace, container name, workload, node.
//!
//! In: container ids from the process stage. Out: pod metadata for spans and probe
//! classification. See each submodule for what it reads and what it can drop.

pub mod cgroup;
pub mod containerd;
pub mod kube;
