//! The agent's own trace (`podtrail agent`), made with `tracing` through [`crate::diag`]: the
//! `run` span (the trace's root, closed at a clean stop with what was exported), a `start` span
//! sent at start-up (with what the previous run left in the durable queue), a `gap` span when
//! the previous agent did not stop cleanly (from its last heartbeat to this start), and an
//! `export trouble` span for each outage of a durable sink's backend.
//!
//! In: the run's settings and times. Out: an [`crate::diag::AgentTrace`] whose finished spans
//! the export stage takes with the rest. Dropped: nothing.

use std::time::SystemTime;

use crate::spans;

/// The agent's own trace for one run ([`crate::diag`]): one trace per (boot, agent start), the
/// first span made (the run's root) with the id `service.instance.id` names.
pub fn agent_trace(cfg: &super::RunExport, started_ns: u64) -> crate::diag::AgentTrace {
    let boot_id = cfg.boot_id;
    crate::diag::AgentTrace::new(
        spans::ids::agent_trace_id(&boot_id, started_ns),
        move |n| match n {
            0 => spans::ids::agent_span_id(&boot_id, started_ns, "run"),
            n => spans::ids::agent_span_id(&boot_id, started_ns, &n.to_string()),
        },
        spans::build::scope(),
    )
}

pub fn unix_secs(t: SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}
