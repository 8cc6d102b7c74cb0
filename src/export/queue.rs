//! podtrail's own export queue: bounded, never blocks the stage that fills it, retries with
//! backoff, and counts every span it could not deliver, per session, so the session's root
//! (always behind its session's other spans) can carry `podtrail.session.spans_lost`.
//! The SDK's batch processor drops silently when full and on failed export, which is why this
//! exists.
//!
//! Two storages behind the same accounting: memory (bounded by a span count; the file and
//! console sinks, and library callers), or the durable segment store on disk
//! ([`super::segments`]; `podtrail run`'s OTLP sink), where a span is written before it counts
//! as accepted, export retries without a time limit (backoff capped), a batch is acknowledged
//! (and a segment deleted) only once exported, and what is left at a stop stays for the next
//! start: a `kill -9` can resend the one batch in flight (the same span ids twice), never
//! lose it.
//!
//! In: [`Queued`] spans (root last per session). Out: batches to a `SpanExporter`.
//! Dropped, each counted by reason in `podtrail_spans_lost_total` and logged with its count:
//! `queue_full` (memory at capacity; roots get a small reserve so the mark survives),
//! `export_failed` (memory: all attempts failed), `shutdown` (memory: still queued when the
//! flush deadline passed), `disk_budget` (disk: in the oldest segment, evicted to stay within
//! the budget), `disk_write` (disk: the write failed, e.g. the disk is full), `corrupt` (disk:
//! a record that no longer decodes).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::codec::{self, Meta};
use super::segments::{Evicted, Pos, SegmentStore, StoreConfig};
use crate::metrics::Metrics;
use crate::model::SessionId;
use crate::spans::keys;

/// One span waiting to be sent.
#[derive(Clone, Debug)]
pub struct Queued {
    pub session: Option<SessionId>,
    pub span: SpanData,
    pub root: bool,
}

/// What happened to every span pushed, by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    pub exported: u64,
    pub queue_full: u64,
    pub export_failed: u64,
    pub shutdown: u64,
    pub disk_budget: u64,
    pub disk_write: u64,
    pub corrupt: u64,
    pub sessions_exported: u64,
    pub sessions_marked_lost: u64,
    /// Durable queue: spans the previous run left, sent by this one.
    pub replayed: u64,
    /// Durable queue: spans left on disk at the stop, for the next start (not lost).
    pub kept: u64,
}

impl Delivery {
    pub fn lost(&self) -> u64 {
        self.queue_full + self.export_failed + self.shutdown + self.disk_budget + self.disk_write + self.corrupt
    }
}

enum Store {
    Memory(VecDeque<Queued>),
    Disk(Box<SegmentStore>),
}

struct Inner {
    store: Store,
    closed: bool,
    flush_deadline: Option<Instant>,
    lost_by_session: HashMap<SessionId, u64>,
    delivery: Delivery,
    /// Disk: where the batch being exported ends (acknowledged when it is delivered).
    in_flight: Option<Pos>,
    last_write_warning: Option<Instant>,
}

impl Inner {
    fn new(store: Store) -> Inner {
        Inner {
            store,
            closed: false,
            flush_deadline: None,
            lost_by_session: HashMap::new(),
            delivery: Delivery::default(),
            in_flight: None,
            last_write_warning: None,
        }
    }

    fn len(&self) -> usize {
        match &self.store {
            Store::Memory(items) => items.len(),
            Store::Disk(s) => s.unread() as usize,
        }
    }

    /// Counts losses per session for their roots; a lost root takes its session's count with it.
    fn account(&mut self, metas: impl Iterator<Item = Meta>) {
        for m in metas {
            match (m.session, m.root) {
                (Some(s), false) => *self.lost_by_session.entry(s).or_default() += 1,
                (Some(s), true) => {
                    self.lost_by_session.remove(&s);
                }
                _ => {}
            }
        }
    }
}

/// Retry and batching rules.
#[derive(Clone, Debug)]
pub struct RetryRules {
    pub batch: usize,
    pub max_attempts: u32,
    pub initial: Duration,
    pub max: Duration,
    pub timeout: Duration,
    pub shutdown_flush: Duration,
}

pub struct ExportQueue {
    inner: Mutex<Inner>,
    notify: Notify,
    capacity: usize,
    metrics: Metrics,
    name: &'static str,
    /// Disk: bytes per append (a big push is split so no write exceeds a segment's share).
    chunk_bytes: usize,
}

impl ExportQueue {
    pub fn new(name: &'static str, capacity: usize, metrics: Metrics) -> Arc<Self> {
        Arc::new(ExportQueue {
            inner: Mutex::new(Inner::new(Store::Memory(VecDeque::new()))),
            notify: Notify::new(),
            capacity: capacity.max(1),
            metrics,
            name,
            chunk_bytes: 0,
        })
    }

    /// A durable queue in `cfg.dir`: what a previous run left there is sent first.
    pub fn durable(
        name: &'static str,
        cfg: StoreConfig,
        metrics: Metrics,
    ) -> Result<Arc<Self>, super::segments::StoreError> {
        let chunk_bytes = (cfg.segment_max / 4) as usize;
        let dir = cfg.dir.clone();
        let (store, rec) = SegmentStore::open(cfg)?;
        metrics.queue_events("torn_tail", rec.torn);
        metrics.queue_events("corrupt_segment", rec.corrupt.len() as u64);
        metrics.export_queue_spans.inc_by(rec.records as i64);
        metrics.export_queue_bytes.set(store.bytes() as i64);
        if rec.records > 0 || rec.torn > 0 || !rec.corrupt.is_empty() {
            tracing::info!(
                sink = name,
                dir = %dir.display(),
                spans = rec.records,
                bytes = rec.bytes,
                segments = rec.segments,
                torn = rec.torn,
                corrupt = rec.corrupt.len(),
                took_ms = rec.took.as_millis() as u64,
                "durable queue: sending what the previous run left, oldest first"
            );
        }
        let mut inner = Inner::new(Store::Disk(Box::new(store)));
        inner.delivery.replayed = rec.records;
        Ok(Arc::new(ExportQueue {
            inner: Mutex::new(inner),
            notify: Notify::new(),
            capacity: usize::MAX,
            metrics,
            name,
            chunk_bytes: chunk_bytes.max(1),
        }))
    }

    pub fn is_durable(&self) -> bool {
        matches!(self.lock().store, Store::Disk(_))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Never blocks: at capacity the span is counted lost (roots have a reserve of 1/8).
    pub fn push(&self, q: Queued) {
        self.push_batch(std::slice::from_ref(&q));
    }

    /// Memory: each span as [`Self::push`]. Disk: written (and synced, per the fsync policy)
    /// before this returns, a batch per write.
    pub fn push_batch(&self, batch: &[Queued]) {
        if batch.is_empty() {
            return;
        }
        if self.chunk_bytes > 0 {
            let mut bodies = Vec::with_capacity(batch.len());
            let mut size = 0;
            for (i, q) in batch.iter().enumerate() {
                let b = codec::encode(q);
                size += b.len() + 8;
                bodies.push(b);
                if size >= self.chunk_bytes || i + 1 == batch.len() {
                    let start = i + 1 - bodies.len();
                    self.write(&batch[start..=i], std::mem::take(&mut bodies));
                    size = 0;
                }
            }
            self.notify.notify_one();
            return;
        }
        let mut g = self.lock();
        let inner = &mut *g;
        let closed = inner.closed;
        let Store::Memory(items) = &mut inner.store else { return };
        let mut refused = Vec::new();
        for q in batch {
            let limit = if q.root { self.capacity + self.capacity / 8 + 1 } else { self.capacity };
            if closed || items.len() >= limit {
                refused.push(q.clone());
                continue;
            }
            items.push_back(q.clone());
            self.metrics.export_queue_spans.inc();
        }
        drop(g);
        if !refused.is_empty() {
            self.lose(&refused, "queue_full");
        }
        self.notify.notify_one();
    }

    fn write(&self, batch: &[Queued], bodies: Vec<Vec<u8>>) {
        let mut g = self.lock();
        let Store::Disk(store) = &mut g.store else { return };
        let res = store.append(&bodies);
        let bytes = store.bytes();
        match res {
            Ok(ev) => {
                self.metrics.export_queue_spans.inc_by(batch.len() as i64);
                self.metrics.export_queue_bytes.set(bytes as i64);
                drop(g);
                self.evicted(ev);
            }
            Err(e) => {
                let now = Instant::now();
                let warn = g.last_write_warning.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10));
                if warn {
                    g.last_write_warning = Some(now);
                }
                drop(g);
                self.metrics.queue_events("write_failed", 1);
                if warn {
                    tracing::error!(sink = self.name, error = %e, spans = batch.len(), "durable queue: write failed (logged at most every 10 s; every failure counted in podtrail_export_queue_events_total{{event=\"write_failed\"}})");
                }
                self.lose(batch, "disk_write");
            }
        }
    }

    /// Accounts for segments the budget or damage took.
    fn evicted(&self, ev: Evicted) {
        if ev.segments > 0 {
            self.metrics.queue_events("segment_evicted", ev.segments);
            tracing::warn!(
                sink = self.name,
                segments = ev.segments,
                bytes = ev.bytes,
                spans = ev.unread.len(),
                "durable queue over its budget: oldest segments dropped"
            );
        }
        for p in &ev.corrupt {
            self.metrics.queue_events("corrupt_segment", 1);
            tracing::error!(sink = self.name, moved_to = %p.display(), "durable queue: a damaged segment was moved aside");
        }
        if !ev.unread.is_empty() {
            let n = ev.unread.len() as u64;
            let mut g = self.lock();
            g.account(ev.unread.into_iter());
            g.delivery.disk_budget += n;
            drop(g);
            self.metrics.export_queue_spans.dec_by(n as i64);
            self.metrics.lost("disk_budget", n);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// No more pushes; the driver keeps sending until empty or until `flush` has passed.
    pub fn close(&self, flush: Duration) {
        let mut g = self.lock();
        g.closed = true;
        g.flush_deadline = Some(Instant::now() + flush);
        drop(g);
        self.notify.notify_one();
    }

    fn flush_deadline(&self) -> Option<Instant> {
        self.lock().flush_deadline
    }

    pub fn delivery(&self) -> Delivery {
        self.lock().delivery
    }

    /// Counts spans lost for `reason` and remembers, per session, how many, for its root.
    pub fn lose(&self, batch: &[Queued], reason: &'static str) {
        if batch.is_empty() {
            return;
        }
        let mut g = self.lock();
        g.account(batch.iter().map(Meta::of));
        let n = batch.len() as u64;
        match reason {
            "queue_full" => g.delivery.queue_full += n,
            "shutdown" => g.delivery.shutdown += n,
            "disk_budget" => g.delivery.disk_budget += n,
            "disk_write" => g.delivery.disk_write += n,
            "corrupt" => g.delivery.corrupt += n,
            _ => g.delivery.export_failed += n,
        }
        drop(g);
        self.metrics.lost(reason, n);
        tracing::warn!(sink = self.name, reason, spans = n, "spans lost");
    }

    fn delivered(&self, batch: &[Queued]) {
        let roots = batch.iter().filter(|q| q.root && q.session.is_some()).count() as u64;
        let mut g = self.lock();
        g.delivery.exported += batch.len() as u64;
        g.delivery.sessions_exported += roots;
        let upto = g.in_flight.take();
        let mut failed = None;
        if let (Store::Disk(store), Some(upto)) = (&mut g.store, upto) {
            if let Err(e) = store.ack(upto) {
                failed = Some(e);
            }
            self.metrics.export_queue_bytes.set(store.bytes() as i64);
        }
        drop(g);
        if let Some(e) = failed {
            // the spans are delivered; only the cleanup failed: a restart may resend them
            self.metrics.queue_events("ack_failed", 1);
            tracing::warn!(sink = self.name, error = %e, "durable queue: could not record a delivered batch");
        }
        self.metrics.spans_exported.inc_by(batch.len() as u64);
    }

    /// Up to `max` spans, ending at the first root (so a root's mark counts everything sent
    /// before it). None when closed and empty, or closed and past the flush deadline (the rest
    /// is then counted as lost at shutdown).
    pub async fn next_batch(&self, max: usize) -> Option<Vec<Queued>> {
        loop {
            let notified = self.notify.notified();
            {
                let mut g = self.lock();
                let past = g.flush_deadline.is_some_and(|d| Instant::now() >= d);
                if g.closed && (g.len() == 0 || past) {
                    match &mut g.store {
                        Store::Memory(items) => {
                            let rest: Vec<Queued> = items.drain(..).collect();
                            drop(g);
                            self.metrics.export_queue_spans.dec_by(rest.len() as i64);
                            self.lose(&rest, "shutdown");
                        }
                        Store::Disk(store) => {
                            // stays on disk for the next start: not lost
                            let kept = store.unread();
                            g.delivery.kept += kept;
                        }
                    }
                    return None;
                }
                if g.len() > 0 {
                    let out = match &mut g.store {
                        Store::Memory(items) => {
                            let n = max.max(1).min(items.len());
                            items.drain(..n).collect::<Vec<_>>()
                        }
                        Store::Disk(_) => {
                            drop(g);
                            let out = self.read_disk(max.max(1));
                            g = self.lock();
                            out
                        }
                    };
                    let mut out = out;
                    for q in out.iter_mut().filter(|q| q.root) {
                        let lost = q.session.and_then(|s| g.lost_by_session.remove(&s)).unwrap_or(0);
                        if lost > 0 {
                            g.delivery.sessions_marked_lost += 1;
                            mark_lost(&mut q.span, lost);
                        }
                    }
                    // a batch runs past session roots: a root's mark only needs the losses
                    // of batches already settled, and spans sharing its batch share its fate
                    drop(g);
                    self.metrics.export_queue_spans.dec_by(out.len() as i64);
                    if out.is_empty() {
                        continue;
                    }
                    return Some(out);
                }
            }
            notified.await;
        }
    }

    /// Disk: the next records, decoded; one that does not decode is counted and skipped.
    fn read_disk(&self, max: usize) -> Vec<Queued> {
        let mut g = self.lock();
        let Store::Disk(store) = &mut g.store else { return Vec::new() };
        let mut ev = Evicted::default();
        let res = store.read(max, &mut ev);
        let mut out = Vec::new();
        let mut bad = 0u64;
        match res {
            Ok(records) => {
                if let Some((_, end)) = records.last() {
                    g.in_flight = Some(*end);
                }
                for (body, _) in records {
                    match codec::decode(&body) {
                        Ok(q) => out.push(q),
                        Err(e) => {
                            bad += 1;
                            tracing::warn!(sink = self.name, error = %e, "durable queue: a record does not decode; skipped");
                        }
                    }
                }
            }
            Err(e) => {
                drop(g);
                self.metrics.queue_events("read_failed", 1);
                tracing::error!(sink = self.name, error = %e, "durable queue: read failed; retrying");
                return out;
            }
        }
        drop(g);
        self.evicted(ev);
        if bad > 0 {
            self.metrics.queue_events("record_undecodable", bad);
            let mut g = self.lock();
            g.delivery.corrupt += bad;
            drop(g);
            self.metrics.lost("corrupt", bad);
            self.metrics.export_queue_spans.dec_by(bad as i64);
        }
        out
    }

    /// Sends everything pushed until the queue is closed and drained; returns what happened.
    pub async fn drive<E: SpanExporter>(self: Arc<Self>, exporter: E, rules: RetryRules) -> Delivery {
        let durable = self.is_durable();
        // an outage of the durable queue's backend: when it began, and the agent trace's span
        // for it (`export_trouble`, from the first failure to the first success)
        let mut failing_since: Option<(Instant, tracing::Span)> = None;
        while let Some(batch) = self.next_batch(rules.batch).await {
            let spans: Vec<SpanData> = batch.iter().map(|q| q.span.clone()).collect();
            let mut delay = rules.initial;
            let mut attempt = 1u32;
            loop {
                let res =
                    tokio::time::timeout(rules.timeout + Duration::from_secs(1), exporter.export(spans.clone())).await;
                let err = match res {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some("timed out".to_string()),
                };
                let Some(err) = err else {
                    self.metrics.request("ok");
                    self.delivered(&batch);
                    if let Some((t, trouble)) = failing_since.take() {
                        trouble.in_scope(|| {
                            tracing::info!(
                                sink = self.name,
                                after_s = t.elapsed().as_secs(),
                                queued = self.len(),
                                "export works again"
                            )
                        });
                    }
                    break;
                };
                if durable && failing_since.is_none() {
                    let trouble = tracing::warn_span!(
                        "podtrail agent export trouble",
                        podtrail.agent.event = "export_trouble",
                        podtrail.agent.sink = self.name,
                        podtrail.agent.error = %err,
                    );
                    trouble.in_scope(|| tracing::warn!(sink = self.name, error = %err, "export failing; spans wait in the durable queue and are retried without a time limit"));
                    failing_since = Some((Instant::now(), trouble));
                }
                let deadline = self.flush_deadline();
                let now = Instant::now();
                if durable && deadline.is_some_and(|d| now >= d) {
                    // left on disk, unacknowledged: the next start sends it
                    self.metrics.request("failed");
                    tracing::warn!(sink = self.name, error = %err, spans = batch.len(), "export failed at shutdown; the batch stays in the durable queue for the next start");
                    self.lock().delivery.kept += batch.len() as u64;
                    break;
                }
                if !durable && (attempt >= rules.max_attempts || deadline.is_some_and(|d| now >= d)) {
                    self.metrics.request("failed");
                    tracing::warn!(sink = self.name, attempts = attempt, error = %err, spans = batch.len(), "export failed; spans counted as lost");
                    let reason = if deadline.is_some_and(|d| now >= d) { "shutdown" } else { "export_failed" };
                    self.lose(&batch, reason);
                    break;
                }
                self.metrics.request("retry");
                tracing::debug!(sink = self.name, attempt, error = %err, "export failed; retrying");
                let wait = match deadline {
                    Some(d) => delay.min(d.saturating_duration_since(now)),
                    None => delay,
                };
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(rules.max);
                attempt += 1;
            }
        }
        let _ = exporter.force_flush();
        self.delivery()
    }
}

/// Sets (or replaces) the loss marks on a root span.
pub fn mark_lost(span: &mut SpanData, lost: u64) {
    span.attributes
        .retain(|kv| kv.key.as_str() != keys::SESSION_SPANS_LOST && kv.key.as_str() != keys::SESSION_INCOMPLETE);
    span.attributes.push(KeyValue::new(keys::SESSION_INCOMPLETE, true));
    span.attributes.push(KeyValue::new(keys::SESSION_SPANS_LOST, lost as i64));
}

#[cfg(test)]
mod tests {
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
}
