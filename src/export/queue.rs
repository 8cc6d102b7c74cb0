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
//! a record that no longer decodes), `rejected` (OTLP/gRPC: sent and taken, then refused by
//! the backend in a partial success, which gives only their number, so no session is marked).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::SpanData;
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
    Memory(Chunks),
    Disk(Box<SegmentStore>),
}

/// The memory queue's spans: the batches as they were pushed, each kept in the `Vec` it came
/// in (a span is several hundred bytes: moving each into one deque, which doubled its way up
/// under load, was a few percent of the export stage's time; BENCHMARKS.md, exp21).
#[derive(Default)]
struct Chunks {
    chunks: VecDeque<std::vec::IntoIter<Queued>>,
    len: usize,
}

impl Chunks {
    fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, batch: Vec<Queued>) {
        if !batch.is_empty() {
            self.len += batch.len();
            self.chunks.push_back(batch.into_iter());
        }
    }

    /// The oldest `n` spans (all when fewer): a whole pushed batch is handed out in its own
    /// `Vec` when it fits.
    fn take(&mut self, n: usize) -> Vec<Queued> {
        let mut out = Vec::new();
        while out.len() < n {
            let Some(front) = self.chunks.front_mut() else { break };
            let want = n - out.len();
            if out.is_empty() && front.len() <= want {
                out = self.chunks.pop_front().map(Iterator::collect).unwrap_or_default();
            } else {
                out.reserve(want.min(front.len()));
                out.extend(front.by_ref().take(want));
                if front.len() == 0 {
                    self.chunks.pop_front();
                }
            }
        }
        self.len -= out.len();
        out
    }
}

struct Inner {
    store: Store,
    closed: bool,
    flush_deadline: Option<Instant>,
    lost_by_session: HashMap<SessionId, u64>,
    delivery: Delivery,
    /// Disk: where the batch being exported ends (acknowledged when it is delivered).
    in_flight: Option<Pos>,
    /// Disk: the records of the batch being exported and the loss marks set on its roots
    /// (index, count), to read it again for a retry: the exporter consumes what it is given,
    /// so the batch is handed over without a copy.
    retry: (Vec<Vec<u8>>, Vec<(usize, u64)>),
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
            retry: Default::default(),
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
            inner: Mutex::new(Inner::new(Store::Memory(Chunks::default()))),
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
        self.push_owned(vec![q]);
    }

    /// [`Self::push_owned`] of a copy, for a batch another queue takes too.
    pub fn push_batch(&self, batch: &[Queued]) {
        self.push_owned(batch.to_vec());
    }

    /// Memory: each span as [`Self::push`], moved in. Disk: encoded (written straight from the
    /// span's strings) and written (and synced, per the fsync policy) before this returns, a batch per
    /// write.
    pub fn push_owned(&self, mut batch: Vec<Queued>) {
        if batch.is_empty() {
            return;
        }
        if self.chunk_bytes > 0 {
            let n = batch.len();
            let mut metas = Vec::with_capacity(n);
            let mut bodies = Vec::with_capacity(n);
            let mut size = 0;
            let mut start = 0;
            for (i, q) in batch.into_iter().enumerate() {
                metas.push(Meta::of(&q));
                let b = codec::encode(&q);
                size += b.len() + 8;
                bodies.push(b);
                if size >= self.chunk_bytes || i + 1 == n {
                    self.write(&metas[start..=i], std::mem::take(&mut bodies));
                    start = i + 1;
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
        // the spans taken stay in the batch's own Vec (nothing moves when all are taken)
        let mut len = items.len();
        batch.retain(|q| {
            let limit = if q.root { self.capacity + self.capacity / 8 + 1 } else { self.capacity };
            if closed || len >= limit {
                refused.push(Meta::of(q));
                return false;
            }
            len += 1;
            true
        });
        let taken = batch.len() as i64;
        items.push(batch);
        drop(g);
        self.metrics.export_queue_spans.inc_by(taken);
        if !refused.is_empty() {
            self.lose_metas(&refused, "queue_full");
        }
        self.notify.notify_one();
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
        let metas: Vec<Meta> = batch.iter().map(Meta::of).collect();
        self.lose_metas(&metas, reason);
    }

    /// [`Self::lose`] of the spans these records describe.
    pub fn lose_metas(&self, batch: &[Meta], reason: &'static str) {
        if batch.is_empty() {
            return;
        }
        let mut g = self.lock();
        g.account(batch.iter().copied());
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

    fn delivered(&self, batch: &[Meta]) {
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
        match self.next_out(max, false).await? {
            Out::Spans(v) => Some(v),
            // only asked for with `raw`
            Out::Records(v) => Some(v.into_iter().filter_map(|(_, body)| codec::decode(&body).ok()).collect()),
        }
    }

    /// [`Self::next_batch`]; with `raw`, the durable queue hands its records over as they are
    /// (metadata and the span's protobuf, loss marks written into the roots' records) instead
    /// of decoding them.
    pub(super) async fn next_out(&self, max: usize, raw: bool) -> Option<Out> {
        loop {
            let notified = self.notify.notified();
            {
                let mut g = self.lock();
                let past = g.flush_deadline.is_some_and(|d| Instant::now() >= d);
                if g.closed && (g.len() == 0 || past) {
                    match &mut g.store {
                        Store::Memory(items) => {
                            let rest: Vec<Queued> = items.take(usize::MAX);
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
                    let mut out = match &mut g.store {
                        Store::Memory(items) => Out::Spans(items.take(max.max(1))),
                        Store::Disk(_) => {
                            drop(g);
                            let out = if raw {
                                Out::Records(self.read_records(max.max(1)))
                            } else {
                                Out::Spans(self.read_disk(max.max(1)))
                            };
                            g = self.lock();
                            out
                        }
                    };
                    let disk = matches!(g.store, Store::Disk(_));
                    let mut take_lost = |session: Option<SessionId>| {
                        let lost = session.and_then(|s| g.lost_by_session.remove(&s)).unwrap_or(0);
                        if lost > 0 {
                            g.delivery.sessions_marked_lost += 1;
                        }
                        lost
                    };
                    let mut marks = Vec::new();
                    match &mut out {
                        Out::Spans(v) => {
                            for (i, q) in v.iter_mut().enumerate().filter(|(_, q)| q.root) {
                                let lost = take_lost(q.session);
                                if lost > 0 {
                                    mark_lost(&mut q.span, lost);
                                    marks.push((i, lost));
                                }
                            }
                        }
                        Out::Records(v) => {
                            for (m, body) in v.iter_mut().filter(|(m, _)| m.root) {
                                let lost = take_lost(m.session);
                                if lost > 0 {
                                    codec::mark_lost_record(body, lost);
                                }
                            }
                        }
                    }
                    if disk && !raw {
                        g.retry.1 = marks;
                    }
                    // a batch runs past session roots: a root's mark only needs the losses
                    // of batches already settled, and spans sharing its batch share its fate
                    drop(g);
                    let n = out.len();
                    self.metrics.export_queue_spans.dec_by(n as i64);
                    if n == 0 {
                        continue;
                    }
                    return Some(out);
                }
            }
            notified.await;
        }
    }
}

/// A batch as the queue hands it out: spans, or the durable queue's records as they are.
pub(super) enum Out {
    Spans(Vec<Queued>),
    Records(Vec<(Meta, Vec<u8>)>),
}

impl Out {
    fn len(&self) -> usize {
        match self {
            Out::Spans(v) => v.len(),
            Out::Records(v) => v.len(),
        }
    }
}

/// Sets (or replaces) the loss marks on a root span.
pub fn mark_lost(span: &mut SpanData, lost: u64) {
    span.attributes
        .retain(|kv| kv.key.as_str() != keys::SESSION_SPANS_LOST && kv.key.as_str() != keys::SESSION_INCOMPLETE);
    span.attributes.push(KeyValue::new(keys::SESSION_INCOMPLETE, true));
    span.attributes.push(KeyValue::new(keys::SESSION_SPANS_LOST, lost as i64));
}

mod disk;
mod drive;
#[cfg(test)]
mod tests;

pub use drive::RetryRules;
