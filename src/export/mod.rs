//! Export stage, and the one entry point of the pipeline after the process stage
//! ([`run_export`]): it starts the span stage and the rules stage as tasks joined to this one by
//! bounded channels, and sends what they built to every configured sink: OTLP (gRPC or
//! HTTP/protobuf), an OTLP/JSON file, the console.
//!
//! In: session updates, one by one or in the process stage's batches
//! ([`crate::spans::task::UpdateSource`]; its close is the shutdown signal, passed down the
//! stages). Out: spans on the wire, a [`ExportReport`] when done. Dropped: only in each sink's
//! [`queue::ExportQueue`], counted by reason and marked on the session's root. The agent's own
//! run is a trace of its own (`podtrail agent`, made with `tracing` through [`crate::diag`],
//! [`agent_trace`]): a `start` span sent at start-up, a `gap` span after an unclean stop, an
//! `export trouble` span for each outage of a durable sink's backend, and the `run` span at a
//! clean stop.

pub mod agent_trace;
pub mod alert_logs;
pub mod codec;
pub mod config;
pub mod console;
pub mod file;
pub mod host_addrs;
pub mod otlp;
pub mod queue;
pub mod segments;
pub mod show;
pub mod wire;

use std::sync::Arc;

use opentelemetry::KeyValue;
use opentelemetry_sdk::resource::EnvResourceDetector;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use opentelemetry_semantic_conventions::attribute as sc;
use tokio::sync::mpsc;

pub use config::{ConfigError, ExportConfig, ExportSetup, Protocol, QueueConfig};
pub use queue::{Delivery, ExportQueue, Queued, RetryRules};

use crate::metrics::Metrics;
use crate::spans::{self, keys, Attributor, BuildCtx, Output, SpanTask};

/// Where spans go.
pub enum Sink {
    /// OTLP over HTTP/protobuf: opentelemetry-otlp's exporter.
    Otlp(opentelemetry_otlp::SpanExporter),
    /// OTLP over gRPC: podtrail's own client, fed encoded requests ([`otlp::GrpcTraces`]).
    OtlpGrpc(otlp::GrpcTraces),
    /// The alert spans, as OTLP log records ([`alert_logs`]); fed only those.
    AlertLogs(alert_logs::AlertLogExporter),
    File(file::FileExporter),
    Console(console::ConsoleExporter),
}

impl Sink {
    pub fn name(&self) -> &'static str {
        match self {
            Sink::Otlp(_) | Sink::OtlpGrpc(_) => "otlp",
            Sink::AlertLogs(_) => "otlp_logs",
            Sink::File(_) => "file",
            Sink::Console(_) => "console",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Otlp(#[from] otlp::OtlpError),
    #[error("cannot open the OTLP/JSON file {path}: {source}")]
    File { path: String, source: std::io::Error },
}

/// What a run delivered, per sink.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportReport {
    pub sinks: Vec<(&'static str, Delivery)>,
    pub sessions: u64,
    pub sessions_incomplete: u64,
}

impl ExportReport {
    pub fn lost(&self) -> u64 {
        self.sinks.iter().map(|(_, d)| d.lost()).sum()
    }
}

/// Everything `run_export` needs, validated.
#[derive(Clone, Debug)]
pub struct RunExport {
    pub spans: spans::SpansConfig,
    pub export: ExportSetup,
    pub boot_id: [u8; 16],
    pub clock: crate::clock::BootClock,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// `service.name=podtrail`, version, host (name, addresses: [`host_addrs`]), node, cluster,
/// this run's id; then
/// `OTEL_RESOURCE_ATTRIBUTES` over those, then the configured cluster name; `service.name`
/// stays `podtrail` (one service for Jaeger's search).
pub fn resource(cfg: &RunExport, run_id: &str) -> Resource {
    let host = host_name();
    let mut base = vec![
        KeyValue::new(sc::SERVICE_VERSION, env!("CARGO_PKG_VERSION")),
        KeyValue::new(sc::SERVICE_INSTANCE_ID, run_id.to_owned()),
        KeyValue::new(sc::HOST_NAME, host.clone()),
        KeyValue::new(sc::K8S_NODE_NAME, cfg.export.node_name.clone().unwrap_or(host)),
    ];
    let addrs = host_addrs::read(std::path::Path::new("/proc/1"));
    let strings = |v: Vec<String>| {
        opentelemetry::Value::Array(v.into_iter().map(opentelemetry::StringValue::from).collect::<Vec<_>>().into())
    };
    if !addrs.ips.is_empty() {
        base.push(KeyValue::new(sc::HOST_IP, strings(addrs.ips)));
    }
    if !addrs.macs.is_empty() {
        base.push(KeyValue::new(sc::HOST_MAC, strings(addrs.macs)));
    }
    let mut b =
        Resource::builder_empty().with_attributes(base.drain(..)).with_detector(Box::new(EnvResourceDetector::new()));
    if !cfg.spans.cluster_name.is_empty() {
        b = b.with_attribute(KeyValue::new(sc::K8S_CLUSTER_NAME, cfg.spans.cluster_name.clone()));
    }
    b.with_service_name("podtrail").build()
}

/// Builds the sinks the setup asks for.
pub fn sinks(cfg: &RunExport, resource: &Resource) -> Result<Vec<Sink>, ExportError> {
    let mut out = Vec::new();
    if let Some(t) = &cfg.export.otlp {
        out.push(match t.protocol {
            Protocol::Grpc => Sink::OtlpGrpc(otlp::GrpcTraces::new(t, resource)?),
            Protocol::HttpProtobuf => Sink::Otlp(otlp::exporter(t, resource)?),
        });
        if cfg.export.alert_logs {
            out.push(Sink::AlertLogs(alert_logs::AlertLogExporter::new(otlp::log_exporter(t)?, resource)));
        }
    }
    if let Some(p) = &cfg.export.file {
        let f = file::FileExporter::open_rotating(p, cfg.export.file_rotation, resource)
            .map_err(|source| ExportError::File { path: p.display().to_string(), source })?;
        out.push(Sink::File(f));
    }
    if cfg.export.console {
        out.push(Sink::Console(console::ConsoleExporter::stdout()));
    }
    Ok(out)
}

fn root_int(s: &SpanData, key: &str) -> u64 {
    s.attributes.iter().find(|kv| kv.key.as_str() == key).and_then(|kv| kv.value.to_string().parse().ok()).unwrap_or(0)
}

/// Detection rules: the rules stage runs between the span stage and export.
pub struct Alerting {
    pub rules: crate::rules::RuleSource,
    /// An attribution source is configured ("no Kubernetes request behind it" means something).
    pub attribution_configured: bool,
}

/// What a run may add to its settings: rules, sinks built by the caller (tests, custom
/// exporters) instead of those the setup names, the agent's start time.
#[derive(Default)]
pub struct ExportOptions {
    pub alerting: Option<Alerting>,
    pub sinks: Option<Vec<Sink>>,
    /// Boot ns of the agent's start (names its trace); now when None.
    pub started_ns: Option<u64>,
}

/// `Output`s queued between two stages: a pass of up to 256 updates each.
const STAGE_CHANNEL: usize = 64;

/// The pipeline after the process stage, and its one entry point: spawn it with the receiving
/// end of the process stage's channel; close that channel to stop it. It runs the span stage
/// ([`crate::spans::SpanTask`]), the rules stage when asked ([`crate::rules::task`]) and this
/// export stage as tasks joined by bounded channels; at the end every stage has drained, what
/// was still open is ended (marked incomplete), every sink is flushed (bounded by
/// `shutdown_flush_ms`), and it returns what was delivered and lost.
pub async fn run_export(
    rx: impl crate::spans::task::UpdateSource,
    cfg: RunExport,
    attributor: Arc<dyn Attributor>,
    metrics: Metrics,
    opts: ExportOptions,
) -> Result<ExportReport, ExportError> {
    let started_ns = opts.started_ns.unwrap_or_else(crate::clock::boot_ns_now);
    let sinks = match opts.sinks {
        Some(s) => s,
        None => {
            let run_id = hex::encode(spans::ids::agent_span_id(&cfg.boot_id, started_ns, "run").to_bytes());
            let mut s = sinks(&cfg, &resource(&cfg, &run_id))?;
            // alert log records only where rules raise alerts
            s.retain(|s| opts.alerting.is_some() || !matches!(s, Sink::AlertLogs(_)));
            s
        }
    };
    // Secrets leave nothing past the span stage's input (crate::spans::redaction).
    let redactor = Arc::new(spans::build_redactor(&cfg.spans.redact));
    let attributor: Arc<dyn Attributor> =
        Arc::new(spans::Sanitizing { inner: attributor, redactor: redactor.clone(), cfg: cfg.spans.clone() });
    let ctx = BuildCtx::new(cfg.boot_id, cfg.clock, cfg.spans.clone());
    let span_task = SpanTask::new(ctx, attributor, redactor, opts.alerting.is_some(), metrics.clone());
    let (span_tx, span_rx) = mpsc::channel(STAGE_CHANNEL);
    let mut tasks = vec![tokio::spawn(span_task.run(rx, span_tx))];
    let built = match opts.alerting {
        Some(a) => {
            let stage = crate::rules::AlertStage::new(
                cfg.boot_id,
                cfg.clock,
                cfg.spans.scope.clone(),
                a.attribution_configured,
            )
            .counting(metrics.alerts.clone())
            .deferring(metrics.alerts_deferred.clone())
            .keeping(cfg.spans.max_kept_spans_per_session.saturating_sub(cfg.spans.max_spans_per_session) as u64);
            let (tx, rx) = mpsc::channel(STAGE_CHANNEL);
            tasks.push(tokio::spawn(crate::rules::task::run(span_rx, stage, a.rules, tx)));
            rx
        }
        None => span_rx,
    };
    let report = export_stage(built, &cfg, &metrics, sinks, started_ns).await;
    for t in tasks {
        let _ = t.await;
    }
    Ok(report)
}

/// The export stage: the queue in front of each sink (on disk for OTLP), the agent's own
/// trace, and what the stages before it built, written once per pass (one write and one fsync
/// per batch on disk, as many spans as were ready).
async fn export_stage(
    mut rx: mpsc::Receiver<Output>,
    cfg: &RunExport,
    metrics: &Metrics,
    sinks: Vec<Sink>,
    started_ns: u64,
) -> ExportReport {
    let rules = RetryRules {
        batch: cfg.export.batch_spans,
        max_attempts: cfg.export.max_attempts,
        initial: cfg.export.retry_initial,
        max: cfg.export.retry_max,
        timeout: cfg.export.otlp.as_ref().map(|o| o.timeout).unwrap_or(std::time::Duration::from_secs(10)),
        shutdown_flush: cfg.export.shutdown_flush,
    };
    // the agent's run, start, gaps and export trouble: `tracing` spans and events, exported
    // through tracing-opentelemetry with the rest (crate::diag)
    let agent = agent_trace::agent_trace(cfg, started_ns);
    let run = agent.in_scope(|| {
        tracing::info_span!(
            "podtrail agent",
            podtrail.agent.event = "run",
            podtrail.agent.sessions_exported = tracing::field::Empty,
            podtrail.agent.sessions_incomplete = tracing::field::Empty,
        )
    });
    let (queues, drivers) = open_queues(cfg, metrics, sinks, &rules, &agent, &run);
    let replayed: u64 = queues.iter().filter(|(_, f)| *f == Feed::All).map(|(q, _)| q.delivery().replayed).sum();
    let mut pending: Vec<Queued> = Vec::new();
    // the agent's finished spans join each write
    let flush = |pending: &mut Vec<Queued>| {
        for span in agent.take() {
            pending.push(Queued { session: None, span, root: false });
        }
        let batch = std::mem::take(pending);
        if batch.is_empty() {
            return;
        }
        // no session on the alert log records: their queue never sees a root to carry a mark
        let alerts: Option<Vec<Queued>> = queues.iter().any(|(_, f)| *f == Feed::Alerts).then(|| {
            batch
                .iter()
                .filter(|q| alert_logs::is_alert(&q.span))
                .map(|q| Queued { session: None, span: q.span.clone(), root: false })
                .collect()
        });
        // the last queue fed every span takes the batch itself, the others a copy
        let last_all = queues.iter().rposition(|(_, f)| *f == Feed::All);
        let mut batch = Some(batch);
        for (i, (queue, feed)) in queues.iter().enumerate() {
            match feed {
                Feed::All if Some(i) == last_all => queue.push_owned(batch.take().unwrap_or_default()),
                Feed::All => queue.push_batch(batch.as_deref().unwrap_or_default()),
                Feed::Alerts => queue.push_batch(alerts.as_deref().unwrap_or_default()),
            }
        }
    };
    agent.in_scope(|| {
        let start = tracing::info_span!(
            parent: &run,
            "podtrail agent start",
            podtrail.agent.event = "start",
            podtrail.agent.queue.replayed = tracing::field::Empty,
        );
        if replayed > 0 {
            start.record("podtrail.agent.queue.replayed", replayed as i64);
        }
        drop(start);
        let Some(gap) = cfg.export.queue.held.as_ref().and_then(|h| h.gap.clone()) else { return };
        let span = tracing::info_span!(
            parent: &run,
            "podtrail agent gap",
            podtrail.agent.event = "gap",
            podtrail.agent.gap.from = gap.from_source,
            podtrail.agent.gap.previous_pid = gap.previous_pid.map(i64::from),
            podtrail.diag.start_unix_ns = crate::diag::unix_ns(gap.from),
            podtrail.diag.end_unix_ns = crate::diag::unix_ns(gap.to),
        );
        let blind = gap.to.duration_since(gap.from).unwrap_or_default();
        span.in_scope(|| {
            tracing::warn!(
                previous_pid = gap.previous_pid,
                from = %agent_trace::unix_secs(gap.from),
                to = %agent_trace::unix_secs(gap.to),
                blind_s = blind.as_secs(),
                "the previous agent did not stop cleanly: the node was not watched in between (a `gap` span in the agent's trace)"
            )
        });
    });
    flush(&mut pending);

    let mut report = ExportReport::default();
    let mut open_at_stop = 0;
    // the agent's own spans (an export outage ends in a sink's task) go out on this tick even
    // when the stages before have nothing to send
    let mut tick = tokio::time::interval(cfg.spans.hold.poll());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            out = rx.recv() => {
                let Some(out) = out else { break };
                open_at_stop = out.open_at_stop.unwrap_or(open_at_stop);
                take_output(out, metrics, &mut report, &mut pending);
                // what else is ready joins the same write (a group commit under load)
                while let Ok(out) = rx.try_recv() {
                    open_at_stop = out.open_at_stop.unwrap_or(open_at_stop);
                    take_output(out, metrics, &mut report, &mut pending);
                    if pending.len() >= cfg.export.batch_spans.max(1) * 4 {
                        break;
                    }
                }
            }
            _ = tick.tick() => {}
        }
        flush(&mut pending);
    }
    run.record("podtrail.agent.sessions_exported", report.sessions as i64);
    run.record("podtrail.agent.sessions_incomplete", open_at_stop as i64);
    drop(run);
    flush(&mut pending);

    for (q, _) in &queues {
        q.close(cfg.export.shutdown_flush);
    }
    for (name, t) in drivers {
        let d = t.await.unwrap_or_default();
        if d.lost() > 0 {
            tracing::warn!(
                sink = name,
                lost = d.lost(),
                queue_full = d.queue_full,
                export_failed = d.export_failed,
                shutdown = d.shutdown,
                disk_budget = d.disk_budget,
                disk_write = d.disk_write,
                "spans were not exported"
            );
        }
        if d.kept > 0 {
            tracing::info!(sink = name, spans = d.kept, "spans left in the durable queue for the next start");
        }
        report.sinks.push((name, d));
    }
    report
}

type Driver = (&'static str, tokio::task::JoinHandle<Delivery>);

/// What a sink's queue is fed: every span, or only the alert spans (the alert log records).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Feed {
    All,
    Alerts,
}

/// The alert logs' durable queue may take this share of `budget_mib` beside the spans' (an
/// alert span is a few hundred bytes: a sixteenth of a GiB holds hundreds of thousands).
const ALERT_LOGS_BUDGET_DIVISOR: u64 = 16;

/// A queue per sink, each driven by a task of its own; the disk first (a span any sink has
/// was written to the durable queue before). The alert logs' queue counts into its own series
/// (`podtrail_alert_logs_*`), so `podtrail_spans_*` stays about spans.
fn open_queues(
    cfg: &RunExport,
    metrics: &Metrics,
    sinks: Vec<Sink>,
    rules: &RetryRules,
    agent: &crate::diag::AgentTrace,
    run: &tracing::Span,
) -> (Vec<(Arc<ExportQueue>, Feed)>, Vec<Driver>) {
    let mut queues = Vec::new();
    let mut drivers = Vec::new();
    for sink in sinks {
        let name = sink.name();
        let (feed, metrics, budget) = match &sink {
            Sink::AlertLogs(_) => {
                (Feed::Alerts, metrics.for_alert_logs(), cfg.export.queue.budget / ALERT_LOGS_BUDGET_DIVISOR)
            }
            _ => (Feed::All, metrics.clone(), cfg.export.queue.budget),
        };
        let q = match (&sink, &cfg.export.queue.held) {
            // the network sinks are the ones a backend's bad day can hold up: they get the disk
            (Sink::Otlp(_) | Sink::OtlpGrpc(_) | Sink::AlertLogs(_), Some(held)) if cfg.export.queue.budget > 0 => {
                let store = segments::StoreConfig::new(held.dir.queue_dir(name), budget, cfg.export.queue.fsync);
                match ExportQueue::durable(name, store, metrics.clone()) {
                    Ok(q) => q,
                    Err(e) => {
                        metrics.queue_events("open_failed", 1);
                        tracing::error!(sink = name, error = %e, "cannot open the durable queue: spans wait in memory only (lost on a crash, counted)");
                        ExportQueue::new(name, cfg.export.queue_spans, metrics)
                    }
                }
            }
            _ => ExportQueue::new(name, cfg.export.queue_spans, metrics),
        };
        let r = rules.clone();
        // an outage while sending is a span of the agent's trace, under the run
        let task = match sink {
            Sink::Otlp(e) => tokio::spawn(agent.attach(run, q.clone().drive(e, r))),
            Sink::OtlpGrpc(c) => tokio::spawn(agent.attach(run, q.clone().drive_grpc(c, r))),
            Sink::AlertLogs(e) => tokio::spawn(agent.attach(run, q.clone().drive(e, r))),
            Sink::File(e) => tokio::spawn(agent.attach(run, q.clone().drive(e, r))),
            Sink::Console(e) => tokio::spawn(agent.attach(run, q.clone().drive(e, r))),
        };
        queues.push((q, feed));
        drivers.push((name, task));
    }
    queues.sort_by_key(|(q, _)| !q.is_durable());
    (queues, drivers)
}

/// One output of the stages before: its spans to the queues, its counts to the metrics and
/// the report.
fn take_output(out: Output, metrics: &Metrics, report: &mut ExportReport, pending: &mut Vec<Queued>) {
    for how in out.released {
        metrics.sessions_released.get_or_create(&vec![("how", how.as_str())]).inc();
    }
    // one growth for this output's spans (a span is several hundred bytes to move)
    pending.reserve(out.spans.len() + out.late.len() + out.requests.len());
    for (sid, b) in out.spans {
        if b.root {
            metrics
                .spans_budgeted
                .get_or_create(&vec![("how", "folded")])
                .inc_by(root_int(&b.span, keys::SESSION_FOLDED));
            metrics
                .spans_budgeted
                .get_or_create(&vec![("how", "capped")])
                .inc_by(root_int(&b.span, keys::SESSION_SPANS_CAPPED));
            metrics.udp_unsent.inc_by(root_int(&b.span, keys::SESSION_UDP_UNSENT));
        }
        pending.push(Queued { session: Some(sid), span: b.span, root: b.root });
    }
    for l in out.late {
        metrics.attribution_late.inc();
        tracing::info!(
            trace_id = %l.span.span_context.trace_id(),
            audit_id = l.audit_id.as_deref().unwrap_or(""),
            user = l.user.as_deref().unwrap_or(""),
            delay_ms = l.delay.as_millis() as u64,
            "late record: attribution span added to a session exported unattributed"
        );
        pending.push(Queued { session: None, span: l.span, root: false });
    }
    for outcome in out.probes {
        metrics.probe_sessions.get_or_create(&vec![("outcome", outcome)]).inc();
    }
    for reason in out.forgotten {
        metrics.attribution_late_forgotten.get_or_create(&vec![("reason", reason)]).inc();
    }
    for (_, incomplete) in out.ended {
        report.sessions += 1;
        metrics.sessions_exported.inc();
        if incomplete {
            report.sessions_incomplete += 1;
            metrics.sessions_incomplete.inc();
        }
    }
    for span in out.requests {
        pending.push(Queued { session: None, span, root: true });
        report.sessions += 1;
        metrics.sessions_exported.inc();
    }
}

#[allow(unused)]
fn _assert_exporters_are_span_exporters() {
    fn is<E: SpanExporter>() {}
    is::<opentelemetry_otlp::SpanExporter>();
    is::<alert_logs::AlertLogExporter>();
    is::<file::FileExporter>();
    is::<console::ConsoleExporter>();
}
