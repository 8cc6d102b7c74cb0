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
        q.delivered(&b.iter().map(Meta::of).collect::<Vec<_>>());
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

/// Fails its first `fails` exports; keeps every batch it was handed.
#[derive(Debug)]
struct Flaky {
    fails: std::sync::atomic::AtomicU32,
    got: Arc<Mutex<Vec<Vec<SpanData>>>>,
}

impl opentelemetry_sdk::trace::SpanExporter for Flaky {
    async fn export(&self, batch: Vec<SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
        self.got.lock().unwrap().push(batch);
        let left = self.fails.load(std::sync::atomic::Ordering::Relaxed);
        if left == 0 {
            return Ok(());
        }
        self.fails.store(left - 1, std::sync::atomic::Ordering::Relaxed);
        Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure("backend down".into()))
    }
}

fn rules(max_attempts: u32) -> RetryRules {
    RetryRules {
        batch: 512,
        max_attempts,
        initial: Duration::from_millis(1),
        max: Duration::from_millis(2),
        timeout: Duration::from_secs(5),
        shutdown_flush: Duration::from_secs(30),
    }
}

/// The exporter is handed a batch without a copy: a failed export sends the very same batch
/// again (on disk read back from its records, with the loss mark its root was given; in
/// memory from the copy kept for a retry), and every try but the last keeps one.
#[tokio::test]
async fn a_failed_export_is_retried_with_the_same_spans_and_marks() {
    let s = Some(SessionId(ProcessKey { pid: 42, start_ns: 1 }));
    for durable in [true, false] {
        let d = tempfile::tempdir().unwrap();
        let q = if durable {
            let cfg = StoreConfig::new(d.path().to_owned(), 64 << 20, super::super::segments::Fsync::Never);
            ExportQueue::durable("otlp", cfg, Metrics::default()).unwrap()
        } else {
            ExportQueue::new("otlp", 1000, Metrics::default())
        };
        // one span of the session lost before its root: the root goes out marked
        q.lose(&[Queued { session: s, span: span(0), root: false }], "queue_full");
        let batch: Vec<Queued> = (1..=3).map(|i| Queued { session: s, span: span(i), root: i == 3 }).collect();
        q.push_owned(batch);
        q.close(Duration::from_secs(30));
        let got = Arc::new(Mutex::new(Vec::new()));
        let exp = Flaky { fails: 2.into(), got: got.clone() };
        let d = q.clone().drive(exp, rules(5)).await;
        assert_eq!((d.exported, d.lost() - 1), (3, 0), "durable {durable}: {d:?}");
        let got = got.lock().unwrap();
        assert_eq!(got.len(), 3, "two failures, then the export that worked");
        let ids = |b: &Vec<SpanData>| b.iter().map(|s| s.span_context.span_id()).collect::<Vec<_>>();
        for b in got.iter() {
            assert_eq!(ids(b), ids(&got[0]), "durable {durable}: each try sends the same spans");
            assert_eq!(b.len(), 3);
            assert_eq!(attr(&b[2], keys::SESSION_SPANS_LOST), Some("1".into()), "durable {durable}: the mark stays");
            assert_eq!(attr(&b[0], keys::SESSION_SPANS_LOST), None);
        }
    }
}

/// In memory, the last allowed try hands over the batch itself: after it fails the spans are
/// counted lost, never sent again.
#[tokio::test]
async fn in_memory_the_last_try_fails_and_the_batch_is_counted_lost() {
    let q = ExportQueue::new("otlp", 1000, Metrics::default());
    q.push_owned((0..4).map(|i| Queued { session: None, span: span(i), root: false }).collect());
    q.close(Duration::from_secs(30));
    let got = Arc::new(Mutex::new(Vec::new()));
    let exp = Flaky { fails: 10.into(), got: got.clone() };
    let d = q.clone().drive(exp, rules(3)).await;
    assert_eq!((d.exported, d.export_failed), (0, 4), "{d:?}");
    let got = got.lock().unwrap();
    assert_eq!(got.len(), 3, "three tries");
    assert!(got.iter().all(|b| b.len() == 4), "every try had the whole batch");
}
