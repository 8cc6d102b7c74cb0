//! podtrail's own diagnostics as a trace: the agent's run (start, stop, coverage gaps, export
//! trouble) written with ordinary `tracing` spans and events, turned into OpenTelemetry spans
//! by `tracing-opentelemetry`, and handed to the export stage like any other span.
//!
//! In: `tracing` spans and events made inside [`AgentTrace::in_scope`] or on a task
//! [`AgentTrace::attach`]ed to the run. Out: finished spans ([`AgentTrace::take`]),
//! one trace per run whose ids the caller derives (a restarted agent neither reuses nor
//! duplicates them); every event is also passed on to the log the agent was started with, so
//! what the trace records is logged once, in one place. Dropped: nothing here; a span event
//! past the SDK's per-span limit (128) is counted by the SDK on the span.
//!
//! Spans describing the past (a coverage gap: from the last heartbeat of a crashed agent to
//! this start) carry their real times in the fields [`START_UNIX_NS`] and [`END_UNIX_NS`]
//! (nanoseconds since the epoch); the bridge moves them onto the span's times.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{IdGenerator, SdkTracerProvider, SpanData, SpanProcessor};
use tracing::Dispatch;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// Field: when a span about the past started (ns since the epoch); not exported as such.
pub const START_UNIX_NS: &str = "podtrail.diag.start_unix_ns";
/// Field: when a span about the past ended (ns since the epoch); not exported as such.
pub const END_UNIX_NS: &str = "podtrail.diag.end_unix_ns";

/// Nanoseconds since the epoch, for [`START_UNIX_NS`] and [`END_UNIX_NS`].
pub fn unix_ns(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos().min(i64::MAX as u128) as i64
}

/// The ids of one run's trace: the trace id, and span ids by creation order (0: the first
/// span made, the run's root).
struct RunIds {
    trace: TraceId,
    span: Box<dyn Fn(u64) -> SpanId + Send + Sync>,
    next: AtomicU64,
}

impl std::fmt::Debug for RunIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunIds").field("trace", &self.trace).finish_non_exhaustive()
    }
}

impl IdGenerator for RunIds {
    fn new_trace_id(&self) -> TraceId {
        self.trace
    }
    fn new_span_id(&self) -> SpanId {
        (self.span)(self.next.fetch_add(1, Ordering::Relaxed))
    }
}

/// Finished spans, waiting for the export stage to take them.
#[derive(Debug, Default)]
struct Finished(Mutex<Vec<SpanData>>);

#[derive(Debug)]
struct Bridge(Arc<Finished>);

impl SpanProcessor for Bridge {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, mut span: SpanData) {
        let mut at = |key: &str| {
            let i = span.attributes.iter().position(|kv| kv.key.as_str() == key)?;
            let v = span.attributes.remove(i).value.to_string().parse::<u64>().ok()?;
            Some(UNIX_EPOCH + Duration::from_nanos(v))
        };
        if let Some(t) = at(START_UNIX_NS) {
            span.start_time = t;
        }
        if let Some(t) = at(END_UNIX_NS) {
            span.end_time = t;
        }
        self.0 .0.lock().unwrap_or_else(|p| p.into_inner()).push(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Passes every event on to the dispatcher that was the default when the run began (the
/// agent's log), so an event recorded in the trace is logged too.
struct Forward(Dispatch);

impl<S: tracing::Subscriber> Layer<S> for Forward {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if self.0.enabled(event.metadata()) {
            self.0.event(event);
        }
    }
}

/// One agent run's trace.
pub struct AgentTrace {
    dispatch: Dispatch,
    finished: Arc<Finished>,
    _provider: SdkTracerProvider,
}

impl AgentTrace {
    /// A run whose trace is `trace` and whose spans get `span_id(n)` for the n-th span made;
    /// `scope` names the instrumentation on every span.
    pub fn new(
        trace: TraceId,
        span_id: impl Fn(u64) -> SpanId + Send + Sync + 'static,
        scope: InstrumentationScope,
    ) -> AgentTrace {
        let finished = Arc::new(Finished::default());
        let ids = RunIds { trace, span: Box::new(span_id), next: AtomicU64::new(0) };
        let provider =
            SdkTracerProvider::builder().with_id_generator(ids).with_span_processor(Bridge(finished.clone())).build();
        let otel = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer_with_scope(scope))
            .with_location(false)
            .with_threads(false)
            .with_level(false)
            .with_target(false)
            .with_tracked_inactivity(false);
        let outer = tracing::dispatcher::get_default(Dispatch::clone);
        let dispatch = Dispatch::new(tracing_subscriber::registry().with(otel).with(Forward(outer)));
        AgentTrace { dispatch, finished, _provider: provider }
    }

    /// Runs `f` with this run's trace as the current subscriber: the spans it makes are the
    /// run's (and stay so wherever they are closed), its events go to the log as well.
    pub fn in_scope<T>(&self, f: impl FnOnce() -> T) -> T {
        tracing::dispatcher::with_default(&self.dispatch, f)
    }

    /// `fut` as a task of the run: its spans are the run's, children of `parent` unless they
    /// name another, and its events go to the log as well. The task holds no handle on
    /// `parent`, which ends when its owner drops it.
    pub fn attach<F: Future>(&self, parent: &tracing::Span, fut: F) -> impl Future<Output = F::Output> {
        use opentelemetry::trace::FutureExt as _;
        use tracing::instrument::WithSubscriber as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        fut.with_subscriber(self.dispatch.clone()).with_context(parent.context())
    }

    /// The spans finished since the last call, oldest first.
    pub fn take(&self) -> Vec<SpanData> {
        std::mem::take(&mut *self.finished.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::Value;

    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> Layer<S> for Seen {
        fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
            self.0.lock().unwrap().push(event.metadata().name().to_owned());
        }
    }

    #[test]
    fn spans_and_events_become_one_trace_with_the_given_ids_and_past_times_and_events_are_logged() {
        let log = Seen::default();
        let outer = Dispatch::new(tracing_subscriber::registry().with(log.clone()));
        let trace = TraceId::from_bytes([7; 16]);
        let id = |n: u64| SpanId::from_bytes((n + 1).to_be_bytes());
        let agent = tracing::dispatcher::with_default(&outer, || {
            AgentTrace::new(trace, id, InstrumentationScope::builder("podtrail").build())
        });
        let from = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let to = from + Duration::from_secs(40);
        let run = agent.in_scope(|| {
            let run =
                tracing::info_span!("podtrail agent", podtrail.agent.event = "run", podtrail.n = tracing::field::Empty);
            tracing::info_span!(parent: &run, "podtrail agent start", podtrail.agent.event = "start").in_scope(|| {});
            let gap = tracing::info_span!(
                parent: &run,
                "podtrail agent gap",
                podtrail.agent.event = "gap",
                podtrail.diag.start_unix_ns = unix_ns(from),
                podtrail.diag.end_unix_ns = unix_ns(to),
            );
            gap.in_scope(|| tracing::warn!("the node was not watched"));
            run
        });
        let early = agent.take();
        assert_eq!(
            early.iter().map(|s| s.name.as_ref()).collect::<Vec<_>>(),
            ["podtrail agent start", "podtrail agent gap"]
        );
        run.record("podtrail.n", 3i64);
        drop(run);
        let all: Vec<SpanData> = early.into_iter().chain(agent.take()).collect();
        assert_eq!(all.len(), 3);
        let root = &all[2];
        assert_eq!(
            (root.name.as_ref(), root.span_context.span_id(), root.parent_span_id),
            ("podtrail agent", id(0), SpanId::INVALID)
        );
        assert!(root.attributes.iter().any(|kv| kv.key.as_str() == "podtrail.n" && kv.value == Value::I64(3)));
        for s in &all {
            assert_eq!(s.span_context.trace_id(), trace);
            assert_eq!(s.instrumentation_scope.name(), "podtrail");
            // nothing but what the span says: no code location, thread, level or timings
            assert!(s.attributes.iter().all(|kv| kv.key.as_str().starts_with("podtrail.")), "{:?}", s.attributes);
        }
        let gap = &all[1];
        assert_eq!(gap.parent_span_id, id(0));
        assert_eq!((gap.start_time, gap.end_time), (from, to), "the gap keeps its real times");
        assert!(gap.attributes.iter().all(|kv| !kv.key.as_str().starts_with("podtrail.diag.")));
        assert_eq!(gap.events.events.len(), 1, "the warning is an event of the gap span");
        assert_eq!(log.0.lock().unwrap().len(), 1, "and it reached the log");
    }
}
