//! Sending: the task that drives one sink from its queue, batch by batch, with backoff. On
//! memory a batch is lost after `max_attempts` (counted `export_failed`); on disk it is retried
//! without a time limit and acknowledged only once the backend took it. At a stop it keeps
//! trying until the flush deadline, then what is left is lost (memory, `shutdown`) or stays on
//! disk for the next start.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use opentelemetry_sdk::trace::{SpanData, SpanExporter};

use super::super::otlp::GrpcTraces;
use super::super::wire;
use super::codec::{Meta, META_LEN};
use super::{Delivery, ExportQueue, Out};

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

impl ExportQueue {
    /// Sends everything pushed until the queue is closed and drained; returns what happened.
    pub async fn drive<E: SpanExporter>(self: Arc<Self>, exporter: E, rules: RetryRules) -> Delivery {
        let durable = self.is_durable();
        let mut failing_since = None;
        while let Some(batch) = self.next_batch(rules.batch).await {
            let metas: Vec<Meta> = batch.iter().map(Meta::of).collect();
            let mut spans: Vec<SpanData> = batch.into_iter().map(|q| q.span).collect();
            let exporter = &exporter;
            let this = &self;
            self.settle(&metas, &rules, durable, &mut failing_since, |attempt| {
                // the exporter consumes the batch: on disk it is read again for a retry, in
                // memory a copy is kept unless this is the last try
                let send = if durable && attempt > 1 {
                    this.reload_in_flight()
                } else if durable || attempt >= rules.max_attempts {
                    std::mem::take(&mut spans)
                } else {
                    spans.clone()
                };
                let f = exporter.export(send);
                async move { f.await.map_err(|e| e.to_string()) }
            })
            .await;
        }
        let _ = exporter.force_flush();
        self.delivery()
    }

    /// [`Self::drive`] for podtrail's own OTLP/gRPC client: each batch is encoded once into a
    /// request body ([`super::super::wire`]: spans written from their strings; the durable
    /// queue's records as they are, never decoded) and a retry sends the same bytes again.
    pub async fn drive_grpc(self: Arc<Self>, mut client: GrpcTraces, rules: RetryRules) -> Delivery {
        let durable = self.is_durable();
        let mut failing_since = None;
        // the durable queue's records carry no scope: podtrail's (as when they are decoded)
        let scope = crate::spans::build::scope();
        // bytes per encoded span in the last batch of spans: the next one's buffer is sized
        // from it (a quarter more, so that it rarely grows), not doubled up from empty
        let mut per_span = 0;
        while let Some(out) = self.next_out(rules.batch, true).await {
            let mut batch = match &out {
                Out::Spans(v) => wire::Batch::with_capacity(v.len() * (per_span + per_span / 4)),
                // the records are the spans' bytes: exactly their size behind keys and lengths
                Out::Records(v) => wire::Batch::with_capacity(
                    v.iter().map(|(_, body)| wire::field_len(body.len().saturating_sub(META_LEN))).sum(),
                ),
            };
            let spans_out = matches!(out, Out::Spans(_));
            let metas: Vec<Meta> = match out {
                Out::Spans(v) => v
                    .into_iter()
                    .map(|q| {
                        batch.push_span(&mut client.heads, &q.span);
                        Meta::of(&q)
                    })
                    .collect(),
                Out::Records(v) => v
                    .into_iter()
                    .map(|(m, body)| {
                        batch.push_encoded(&mut client.heads, &scope, &body[META_LEN..]);
                        m
                    })
                    .collect(),
            };
            if spans_out && !batch.is_empty() {
                per_span = batch.span_bytes() / batch.len();
            }
            let body = batch.request(&client.heads);
            let client = &client;
            let metrics = &self.metrics;
            self.settle(&metas, &rules, durable, &mut failing_since, |_| {
                let body = body.clone();
                async move {
                    // spans the backend took the request with but refused in a partial
                    // success: never taken, so counted as lost (which ones it does not say)
                    let rejected = client.export(body).await?;
                    if rejected > 0 {
                        metrics.lost("rejected", rejected);
                    }
                    Ok(())
                }
            })
            .await;
        }
        self.delivery()
    }

    /// Sends one batch (`send(attempt)`, from 1) until the backend takes it; on disk retried
    /// without a time limit (left unacknowledged for the next start when the flush deadline
    /// passes), in memory counted lost after `max_attempts`. An outage of a durable queue's
    /// backend is the agent trace's `export_trouble` span, from the first failure to the
    /// first success (`failing_since`).
    async fn settle<F, Fut>(
        &self,
        metas: &[Meta],
        rules: &RetryRules,
        durable: bool,
        failing_since: &mut Option<(Instant, tracing::Span)>,
        mut send: F,
    ) where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let mut delay = rules.initial;
        let mut attempt = 1u32;
        loop {
            let res = tokio::time::timeout(rules.timeout + Duration::from_secs(1), send(attempt)).await;
            let err = match res {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some("timed out".to_string()),
            };
            let Some(err) = err else {
                self.metrics.request("ok");
                self.delivered(metas);
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
                return;
            };
            if durable && failing_since.is_none() {
                let trouble = tracing::warn_span!(
                    "podtrail agent export trouble",
                    podtrail.agent.event = "export_trouble",
                    podtrail.agent.sink = self.name,
                    podtrail.agent.error = %err,
                );
                trouble.in_scope(|| tracing::warn!(sink = self.name, error = %err, "export failing; spans wait in the durable queue and are retried without a time limit"));
                *failing_since = Some((Instant::now(), trouble));
            }
            let deadline = self.flush_deadline();
            let now = Instant::now();
            if durable && deadline.is_some_and(|d| now >= d) {
                // left on disk, unacknowledged: the next start sends it
                self.metrics.request("failed");
                tracing::warn!(sink = self.name, error = %err, spans = metas.len(), "export failed at shutdown; the batch stays in the durable queue for the next start");
                self.lock().delivery.kept += metas.len() as u64;
                return;
            }
            if !durable && (attempt >= rules.max_attempts || deadline.is_some_and(|d| now >= d)) {
                self.metrics.request("failed");
                tracing::warn!(sink = self.name, attempts = attempt, error = %err, spans = metas.len(), "export failed; spans counted as lost");
                let reason = if deadline.is_some_and(|d| now >= d) { "shutdown" } else { "export_failed" };
                self.lose_metas(metas, reason);
                return;
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
}
