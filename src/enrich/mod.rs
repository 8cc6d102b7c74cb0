//! Enrichment: pod metadata from the Kubernetes API onto the process stage's sessions, and the
//! cluster's own address ranges.
//!
//! In: `SessionUpdate`s from the process stage (their container ids); the API's pods, nodes
//! and ServiceCIDRs. Out: the same updates with pod, namespace, container name, workload and
//! node, minus exec-probe sessions ([`kube::SessionFilter`]); learned ranges for destination
//! scopes ([`ranges`]). The host's own container lookup (cgroup path, containerd labels) is
//! part of the process stage. See each submodule for what it reads and what it can drop.

pub mod kube;
pub mod ranges;
