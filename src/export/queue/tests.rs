//! The queue's accounting: memory capacity, reserve for roots, marks, disk.
use super::*;
use crate::capture::event::ProcessKey;
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};

fn span(i: u64) -> SpanData {
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes([9; 16]),
            SpanId::from_bytes((i + 1).to_be_bytes()),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        ),
        parent_span_id: SpanId::from_bytes([1; 8]),
        parent_span_is_remote: false,
        span_kind: SpanKind::Internal,
        name: format!("process {i} with a name long enough to take some room on the disk").into(),
        start_time: std::time::UNIX_EPOCH,
        end_time: std::time::UNIX_EPOCH,
        attributes: vec![KeyValue::new("process.command_args", "x".repeat(200))],
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Unset,
        instrumentation_scope: crate::spans::build::scope(),
    }
}

fn attr(s: &SpanData, k: &str) -> Option<String> {
    s.attributes.iter().find(|kv| kv.key.as_str() == k).map(|kv| kv.value.to_string())
}

/// With the backend away, a session bigger than the budget: its oldest spans go, counted,
/// and its root (still on disk) says how many.
#[tokio::test]
async fn over_the_disk_budget_the_oldest_spans_go_and_the_root_carries_the_count() {
    let d = tempfile::tempdir().unwrap();
    let metrics = Metrics::default();
    let cfg = StoreConfig::new(d.path().to_owned(), 512 << 10, super::super::segments::Fsync::Never);
    let q = ExportQueue::durable("otlp", cfg, metrics.clone()).unwrap();
    let s = Some(SessionId(ProcessKey { pid: 42, start_ns: 1 }));
    let n = 5000u64;
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let batch: Vec<Queued> = chunk.iter().map(|i| Queued { session: s, span: span(*i), root: false }).collect();
        q.push_batch(&batch);
    }
    q.push(Queued { session: s, span: span(n), root: true });
    let lost = q.delivery().disk_budget;
    assert!(lost > 1000, "{n} spans of ~350 bytes through 512 KiB: {lost} evicted");
    assert_eq!(metrics.lost_count("disk_budget"), lost);
    q.close(Duration::from_secs(1));
    let mut got = Vec::new();
    while let Some(b) = q.next_batch(512).await {
        q.delivered(&b);
        got.extend(b);
    }
    assert_eq!(got.len() as u64 + lost, n + 1, "every span is delivered or counted lost");
    let root = got.iter().find(|g| g.root).expect("the root survives: it is the newest");
    assert_eq!(attr(&root.span, keys::SESSION_SPANS_LOST), Some(lost.to_string()));
    assert_eq!(attr(&root.span, keys::SESSION_INCOMPLETE), Some("true".into()));
    // the survivors are the newest, oldest first
    let first = u64::from_be_bytes(got[0].span.span_context.span_id().to_bytes()) - 1;
    assert_eq!(first, lost);
    assert_eq!(q.delivery().sessions_marked_lost, 1);
}
