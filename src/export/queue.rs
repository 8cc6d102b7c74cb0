//! podtrail's own export queue: bounded, never blocks the stage that fills it, retries with
//! backoff, and counts every span it could not deliver, per session, so the session's root
//! (always behind its session's other spans) can carry `podtrail.session.spans_lost`.
//! The SDK's batch processor drops silently when full and on failed export, which is why this
//! exists.
//!
//! In: [`Queued`] spans (root last per session). Out: batches to a `SpanExporter`.
//! Dropped, each counted by reason in `podtrail_spans_lost_total` and logged with its count:
//! `queue_full` (at capacity; roots get a small reserve so the mark survives), `export_failed`
//! (all attempts failed), `shutdown` (still queued when the flush deadline passed).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use tokio::sync::Notify;
use tokio::time::Instant;

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
    pub sessions_exported: u64,
    pub sessions_marked_lost: u64,
}

impl Delivery {
    pub fn lost(&self) -> u64 {
        self.queue_full + self.export_failed + self.shutdown
    }
}

#[derive(Default)]
struct Inner {
    items: VecDeque<Queued>,
    closed: bool,
    flush_deadline: Option<Instant>,
    lost_by_session: HashMap<SessionId, u64>,
    delivery: Delivery,
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
}

impl ExportQueue {
    pub fn new(name: &'static str, capacity: usize, metrics: Metrics) -> Arc<Self> {
        Arc::new(ExportQueue {
            inner: Mutex::new(Inner::default()),
            notify: Notify::new(),
            capacity: capacity.max(1),
            metrics,
            name,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Never blocks: at capacity the span is counted lost (roots have a reserve of 1/8).
    pub fn push(&self, q: Queued) {
        let mut g = self.lock();
        let limit = if q.root { self.capacity + self.capacity / 8 + 1 } else { self.capacity };
        if g.closed || g.items.len() >= limit {
            drop(g);
            self.lose(std::slice::from_ref(&q), "queue_full");
            return;
        }
        g.items.push_back(q);
        self.metrics.export_queue_spans.inc();
        drop(g);
        self.notify.notify_one();
    }

    pub fn len(&self) -> usize {
        self.lock().items.len()
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
        for q in batch {
            if let (Some(s), false) = (q.session, q.root) {
                *g.lost_by_session.entry(s).or_default() += 1;
            }
            if q.root {
                if let Some(s) = q.session {
                    g.lost_by_session.remove(&s);
                }
            }
        }
        let n = batch.len() as u64;
        match reason {
            "queue_full" => g.delivery.queue_full += n,
            "shutdown" => g.delivery.shutdown += n,
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
        drop(g);
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
                if g.closed && (g.items.is_empty() || past) {
                    let rest: Vec<Queued> = g.items.drain(..).collect();
                    drop(g);
                    self.metrics.export_queue_spans.dec_by(rest.len() as i64);
                    self.lose(&rest, "shutdown");
                    return None;
                }
                if !g.items.is_empty() {
                    let mut out = Vec::with_capacity(max.min(g.items.len()));
                    while out.len() < max.max(1) {
                        let Some(mut q) = g.items.pop_front() else { break };
                        if q.root {
                            let lost = q.session.and_then(|s| g.lost_by_session.remove(&s)).unwrap_or(0);
                            if lost > 0 {
                                g.delivery.sessions_marked_lost += 1;
                                mark_lost(&mut q.span, lost);
                            }
                        }
                        // a batch runs past session roots: a root's mark only needs the losses
                        // of batches already settled, and spans sharing its batch share its fate
                        out.push(q);
                    }
                    drop(g);
                    self.metrics.export_queue_spans.dec_by(out.len() as i64);
                    return Some(out);
                }
            }
            notified.await;
        }
    }

    /// Sends everything pushed until the queue is closed and drained; returns what happened.
    pub async fn drive<E: SpanExporter>(self: Arc<Self>, exporter: E, rules: RetryRules) -> Delivery {
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
                    break;
                };
                let deadline = self.flush_deadline();
                let now = Instant::now();
                if attempt >= rules.max_attempts || deadline.is_some_and(|d| now >= d) {
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
