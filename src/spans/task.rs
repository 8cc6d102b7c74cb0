//! The span stage as a pipeline task: session updates in, one [`Output`] per pass out.
//!
//! In: `SessionUpdate`s from the process stage (bounded channel; its close is the shutdown
//! signal), identities from an [`Attributor`]. Each update is redacted as it arrives (one
//! function, [`SpanTask::take`], whichever way it was read), then goes through the hold. On a
//! timer (`spans.hold.poll_ms`) held sessions are asked about again and requests that started
//! no process become root spans of their own. Out: [`Output`]s on a bounded channel to the
//! rules stage (or straight to export); waiting on it is the backpressure that reaches the
//! process stage, never the ring reader's kernel side directly. At shutdown every open session
//! ends incomplete and the last output says how many were open ([`Output::open_at_stop`]).
//! Dropped: nothing here (see [`super::hold`]).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::mpsc;

use super::build::BuildCtx;
use super::hold::{Output, SpanStage};
use super::identity::Attributor;
use super::redaction::{redact_update, ArgvCache};
use crate::metrics::Metrics;
use crate::model::{SessionUpdate, Text};
use crate::redact::Redactor;

/// Updates read in one pass at most (what is ready joins the pass: one write per pass downstream).
const PASS: usize = 256;

/// Where the span stage reads its updates: one by one (`Receiver<SessionUpdate>`: tests,
/// benches) or in the process stage's batches (`Receiver<UpdateBatch>`: the agent, one wakeup
/// per batch). Either way in order, and the channel's close is the shutdown signal.
pub trait UpdateSource: Send + 'static {
    /// Waits for updates and appends what is ready to `buf` (up to about a pass); false once
    /// the channel is closed and empty.
    fn recv_into(&mut self, buf: &mut Vec<SessionUpdate>) -> impl std::future::Future<Output = bool> + Send;
}

impl UpdateSource for mpsc::Receiver<SessionUpdate> {
    async fn recv_into(&mut self, buf: &mut Vec<SessionUpdate>) -> bool {
        self.recv_many(buf, PASS).await > 0
    }
}

impl UpdateSource for mpsc::Receiver<crate::model::UpdateBatch> {
    async fn recv_into(&mut self, buf: &mut Vec<SessionUpdate>) -> bool {
        let Some(mut b) = self.recv().await else { return false };
        buf.append(&mut b);
        while buf.len() < PASS {
            let Ok(mut b) = self.try_recv() else { break };
            buf.append(&mut b);
        }
        true
    }
}

/// About the spans a pass's updates make as they arrive (a started session's `session opened`
/// span, a span per image and per connect of an ended process, the root and the opening span
/// of an ended session): only a reservation, so a held session's spans, released later, may
/// need more.
fn spans_hint(pass: &[SessionUpdate]) -> usize {
    let of = |r: &crate::model::ProcessRecord| r.images.iter().map(|i| 1 + i.connects.len()).sum::<usize>();
    pass.iter()
        .map(|u| match u {
            SessionUpdate::Started(_) => 1,
            SessionUpdate::ProcessEnded(_, r) => of(r),
            SessionUpdate::Ended(_, recs) => 2 + recs.iter().map(of).sum::<usize>(),
            _ => 0,
        })
        .sum()
}

pub struct SpanTask {
    stage: SpanStage,
    /// The sanitizing attributor, asked for request-only traces directly.
    requests: Arc<dyn Attributor>,
    redactor: Arc<Redactor>,
    argv_cache: ArgvCache,
    metrics: Metrics,
}

impl SpanTask {
    /// `attributor` must already sanitize what it hands out ([`super::redaction::Sanitizing`]).
    /// `records`: the rules stage follows (it needs the records, [`SpanStage::with_records`]).
    pub fn new(
        ctx: BuildCtx,
        attributor: Arc<dyn Attributor>,
        redactor: Arc<Redactor>,
        records: bool,
        metrics: Metrics,
    ) -> Self {
        let stage = SpanStage::new(ctx, attributor.clone());
        let stage = if records { stage.with_records() } else { stage };
        SpanTask { stage, requests: attributor, redactor, argv_cache: ArgvCache::default(), metrics }
    }

    /// One update, however it was read: redacted first, then through the hold.
    pub fn take(&mut self, mut u: SessionUpdate, out: &mut Output) {
        if let SessionUpdate::Transcript(info, chunk) = &u {
            // a namespace whose transcript is off: its lines go no further
            if self.stage.ctx().cfg.transcript.excluded(info.container.pod_namespace.as_deref()) {
                let n = chunk.lines.len() as u64;
                self.metrics.transcript_lines.get_or_create(&vec![("what", "excluded")]).inc_by(n);
                return;
            }
        }
        redact_update(&self.redactor, &mut self.argv_cache, &mut u);
        self.stage.update(u, Instant::now(), out);
    }

    /// Requests that started no process, as root spans of their own (up to `now`).
    fn requests(&self, now: SystemTime, out: &mut Output) {
        for a in self.requests.unmatched_requests(now) {
            // the sanitizing attributor: this identity is redacted and capped
            let who = self.requests.identity_of(&a);
            let container = crate::model::ContainerInfo {
                pod_namespace: a.pod_namespace.as_deref().map(Text::from),
                pod_name: a.pod_name.as_deref().map(Text::from),
                pod_uid: a.pod_uid.as_deref().map(Text::from),
                container_name: who.container.as_deref().map(Text::from),
                ..Default::default()
            };
            out.requests.push(super::build::request_only_span(self.stage.ctx(), &who, &container, SystemTime::now()));
        }
    }

    fn gauges(&self) {
        self.metrics.sessions_open.set(self.stage.open() as i64);
        self.metrics.sessions_held.set(self.stage.held() as i64);
        self.metrics.sessions_unattributed.set(self.stage.unattributed() as i64);
    }

    /// Runs until `rx` closes, then ends what is open and sends the last output.
    pub async fn run(mut self, mut rx: impl UpdateSource, tx: mpsc::Sender<Output>) {
        let clock = self.stage.ctx().clock;
        let mut tick = tokio::time::interval(self.stage.ctx().cfg.hold.poll());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pass: Vec<SessionUpdate> = Vec::new();
        loop {
            let mut out = Output::default();
            tokio::select! {
                open = rx.recv_into(&mut pass) => {
                    if !open {
                        break;
                    }
                    // the spans' room at once: a span is several hundred bytes, and growing
                    // the Vec from empty moved each one again (BENCHMARKS.md, exp23)
                    out.spans.reserve(spans_hint(&pass));
                    for u in pass.drain(..) {
                        self.take(u, &mut out);
                    }
                }
                _ = tick.tick() => {
                    self.stage.tick(Instant::now(), &mut out);
                    self.requests(SystemTime::now(), &mut out);
                }
            }
            self.gauges();
            if !out.is_empty() && tx.send(out).await.is_err() {
                return;
            }
        }
        let mut out = Output { open_at_stop: Some(self.stage.open()), ..Default::default() };
        self.stage.shutdown(clock.to_boot_ns(SystemTime::now()), &mut out);
        // every session is out: whatever request is still free never had one
        self.requests(SystemTime::now() + std::time::Duration::from_secs(366 * 86_400), &mut out);
        self.gauges();
        let _ = tx.send(out).await;
    }
}
