//! The agent's own trace (`podtrail agent`): a `start` span sent at start-up (with what the
//! previous run left in the durable queue), a `gap` span when the previous agent did not stop
//! cleanly (from its last heartbeat to this start), and the `run` span at a clean stop.
//!
//! In: the run's settings and times. Out: `SpanData`. Dropped: nothing.

use std::time::SystemTime;

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceState};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use crate::spans::{self, keys};

pub fn agent_span(
    cfg: &super::RunExport,
    started_ns: u64,
    what: &'static str,
    start: SystemTime,
    end: SystemTime,
    extra: Vec<KeyValue>,
) -> SpanData {
    let trace = spans::ids::agent_trace_id(&cfg.boot_id, started_ns);
    let run = spans::ids::agent_span_id(&cfg.boot_id, started_ns, "run");
    let (id, parent) = if what == "run" {
        (run, SpanId::INVALID)
    } else {
        (spans::ids::agent_span_id(&cfg.boot_id, started_ns, what), run)
    };
    let mut attributes = vec![KeyValue::new(keys::AGENT_EVENT, what)];
    attributes.extend(extra);
    SpanData {
        span_context: SpanContext::new(trace, id, TraceFlags::SAMPLED, false, TraceState::NONE),
        parent_span_id: parent,
        parent_span_is_remote: false,
        span_kind: SpanKind::Internal,
        name: if what == "run" { "podtrail agent".into() } else { format!("podtrail agent {what}").into() },
        start_time: start,
        end_time: end,
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Unset,
        instrumentation_scope: spans::build::scope(),
    }
}

pub fn unix_secs(t: SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}
