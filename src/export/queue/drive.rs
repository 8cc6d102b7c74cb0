//! Sending: the task that drives one sink from its queue, batch by batch, with backoff. On
//! memory a batch is lost after `max_attempts` (counted `export_failed`); on disk it is retried
//! without a time limit and acknowledged only once the backend took it. At a stop it keeps
//! trying until the flush deadline, then what is left is lost (memory, `shutdown`) or stays on
//! disk for the next start.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use opentelemetry_sdk::trace::{SpanData, SpanExporter};

use super::codec::Meta;
use super::{Delivery, ExportQueue};

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
        // an outage of the durable queue's backend: when it began, and the agent trace's span
        // for it (`export_trouble`, from the first failure to the first success)
        let mut failing_since: Option<(Instant, tracing::Span)> = None;
        while let Some(batch) = self.next_batch(rules.batch).await {
            let metas: Vec<Meta> = batch.iter().map(Meta::of).collect();
            let mut spans: Vec<SpanData> = batch.into_iter().map(|q| q.span).collect();
            let mut delay = rules.initial;
            let mut attempt = 1u32;
            loop {
                // the exporter consumes the batch: on disk it is read again for a retry, in
                // memory a copy is kept unless this is the last try
                let send =
                    if durable || attempt >= rules.max_attempts { std::mem::take(&mut spans) } else { spans.clone() };
                let res = tokio::time::timeout(rules.timeout + Duration::from_secs(1), exporter.export(send)).await;
                let err = match res {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some("timed out".to_string()),
                };
                let Some(err) = err else {
                    self.metrics.request("ok");
                    self.delivered(&metas);
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
                    tracing::warn!(sink = self.name, error = %err, spans = metas.len(), "export failed at shutdown; the batch stays in the durable queue for the next start");
                    self.lock().delivery.kept += metas.len() as u64;
                    break;
                }
                if !durable && (attempt >= rules.max_attempts || deadline.is_some_and(|d| now >= d)) {
                    self.metrics.request("failed");
                    tracing::warn!(sink = self.name, attempts = attempt, error = %err, spans = metas.len(), "export failed; spans counted as lost");
                    let reason = if deadline.is_some_and(|d| now >= d) { "shutdown" } else { "export_failed" };
                    self.lose_metas(&metas, reason);
                    break;
                }
                self.metrics.request("retry");
                tracing::debug!(sink = self.name, attempt, error = %err, "export failed; retrying");
                let wait = match deadline {
                    Some(d) => delay.min(d.saturating_duration_since(now)),
                    None => delay,
                };
                tokio::time::sleep(wait).await;
                if durable {
                    spans = self.reload_in_flight();
                }
                delay = (delay * 2).min(rules.max);
                attempt += 1;
            }
        }
        let _ = exporter.force_flush();
        self.delivery()
    }
}
