//! Export stage: the task that turns `SessionUpdate`s into spans (through the hold stage) and
//! sends them to every configured sink: OTLP (gRPC or HTTP/protobuf), an OTLP/JSON file, the
//! console tree.
//!
//! In: `mpsc::Receiver<SessionUpdate>` (its close is the shutdown signal). Out: spans on the
//! wire, a [`ExportReport`] when done. Dropped: only in each sink's [`queue::ExportQueue`],
//! counted by reason and marked on the session's root. The agent's own run is a trace of its
//! own (`podtrail agent`, made with `tracing` through [`crate::diag`]): a `start` span sent at
//! start-up, a `gap` span after an unclean stop, an `export trouble` span for each outage of a
//! durable sink's backend, and the `run` span at a clean stop.

pub mod codec;
pub mod config;
pub mod console;
pub mod file;
pub mod otlp;
pub mod queue;
pub mod segments;
pub mod show;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use opentelemetry::KeyValue;
use opentelemetry_sdk::resource::EnvResourceDetector;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use opentelemetry_semantic_conventions::attribute as sc;
use tokio::sync::mpsc;

pub use config::{ConfigError, ExportConfig, ExportSetup, Protocol, QueueConfig};
pub use queue::{Delivery, ExportQueue, Queued, RetryRules};

use crate::metrics::Metrics;
use crate::model::SessionUpdate;
use crate::spans::{self, keys, Attributor, BuildCtx, Output, SpanStage};

/// Where spans go.
pub enum Sink {
    Otlp(opentelemetry_otlp::SpanExporter),
    File(file::FileExporter),
    Console(console::ConsoleExporter),
}

impl Sink {
    pub fn name(&self) -> &'static str {
        match self {
            Sink::Otlp(_) => "otlp",
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

/// `service.name=podtrail`, version, host, node, cluster, this run's id; then
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
        out.push(Sink::Otlp(otlp::exporter(t, resource)?));
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

/// The agent's own trace for one run ([`crate::diag`]): one trace per (boot, agent start), the
/// first span made (the run's root) with the id `service.instance.id` names.
fn agent_trace(cfg: &RunExport, started_ns: u64) -> crate::diag::AgentTrace {
    let boot_id = cfg.boot_id;
    crate::diag::AgentTrace::new(
        spans::ids::agent_trace_id(&boot_id, started_ns),
        move |n| match n {
            0 => spans::ids::agent_span_id(&boot_id, started_ns, "run"),
            n => spans::ids::agent_span_id(&boot_id, started_ns, &n.to_string()),
        },
        spans::build::scope(),
    )
}

fn unix_secs(t: SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

fn root_int(s: &SpanData, key: &str) -> u64 {
    s.attributes.iter().find(|kv| kv.key.as_str() == key).and_then(|kv| kv.value.to_string().parse().ok()).unwrap_or(0)
}

/// The export task: spawn it with the receiving end of the process stage's channel; close the
/// channel to stop it. It drains, ends what is still open (marked incomplete), flushes every
/// sink (bounded by `shutdown_flush_ms`) and returns what was delivered and lost.
pub async fn run_export(
    rx: mpsc::Receiver<SessionUpdate>,
    cfg: RunExport,
    attributor: Arc<dyn Attributor>,
    metrics: Metrics,
) -> Result<ExportReport, ExportError> {
    let started_ns = crate::clock::boot_ns_now();
    let run_id = hex::encode(spans::ids::agent_span_id(&cfg.boot_id, started_ns, "run").to_bytes());
    let res = resource(&cfg, &run_id);
    let sinks = sinks(&cfg, &res)?;
    Ok(run_export_with(rx, cfg, attributor, metrics, sinks, started_ns, None).await)
}

/// Detection rules for [`run_export_alerting`].
pub struct Alerting {
    pub rules: crate::rules::RuleSource,
    /// An attribution source is configured ("no Kubernetes request behind it" means something).
    pub attribution_configured: bool,
}

/// [`run_export`] with the rules stage between the span stage and the sinks (`podtrail run`).
pub async fn run_export_alerting(
    rx: mpsc::Receiver<SessionUpdate>,
    cfg: RunExport,
    attributor: Arc<dyn Attributor>,
    metrics: Metrics,
    alerting: Alerting,
) -> Result<ExportReport, ExportError> {
    let started_ns = crate::clock::boot_ns_now();
    let run_id = hex::encode(spans::ids::agent_span_id(&cfg.boot_id, started_ns, "run").to_bytes());
    let res = resource(&cfg, &run_id);
    let sinks = sinks(&cfg, &res)?;
    Ok(run_export_with(rx, cfg, attributor, metrics, sinks, started_ns, Some(alerting)).await)
}

/// [`run_export`] with sinks built by the caller (tests, custom exporters), and rules if given.
pub async fn run_export_with(
    mut rx: mpsc::Receiver<SessionUpdate>,
    cfg: RunExport,
    attributor: Arc<dyn Attributor>,
    metrics: Metrics,
    sinks: Vec<Sink>,
    started_ns: u64,
    alerting: Option<Alerting>,
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
    let agent = agent_trace(&cfg, started_ns);
    let run = agent.in_scope(|| {
        tracing::info_span!(
            "podtrail agent",
            podtrail.agent.event = "run",
            podtrail.agent.sessions_exported = tracing::field::Empty,
            podtrail.agent.sessions_incomplete = tracing::field::Empty,
        )
    });
    let mut queues = Vec::new();
    let mut tasks = Vec::new();
    for sink in sinks {
        let name = sink.name();
        let q = match (&sink, &cfg.export.queue.held) {
            // the network sink is the one a backend's bad day can hold up: it gets the disk
            (Sink::Otlp(_), Some(held)) if cfg.export.queue.budget > 0 => {
                let store = segments::StoreConfig::new(
                    held.dir.queue_dir(name),
                    cfg.export.queue.budget,
                    cfg.export.queue.fsync,
                );
                match ExportQueue::durable(name, store, metrics.clone()) {
                    Ok(q) => q,
                    Err(e) => {
                        metrics.queue_events("open_failed", 1);
                        tracing::error!(sink = name, error = %e, "cannot open the durable queue: spans wait in memory only (lost on a crash, counted)");
                        ExportQueue::new(name, cfg.export.queue_spans, metrics.clone())
                    }
                }
            }
            _ => ExportQueue::new(name, cfg.export.queue_spans, metrics.clone()),
        };
        let r = rules.clone();
        // an outage while sending is a span of the agent's trace, under the run
        let task = match sink {
            Sink::Otlp(e) => tokio::spawn(agent.attach(&run, q.clone().drive(e, r))),
            Sink::File(e) => tokio::spawn(agent.attach(&run, q.clone().drive(e, r))),
            Sink::Console(e) => tokio::spawn(agent.attach(&run, q.clone().drive(e, r))),
        };
        queues.push(q);
        tasks.push((name, task));
    }
    // the disk first: a span any sink has was written to the durable queue before
    queues.sort_by_key(|q| !q.is_durable());
    let replayed: u64 = queues.iter().map(|q| q.delivery().replayed).sum();
    // spans collect here and go to the queues once per pass of the loop below: one write (and
    // one fsync) per batch on disk, as many spans as the stage had ready
    // (a Mutex, not a RefCell: the task's future must be Send; it is never contended)
    let pending = std::sync::Mutex::new(Vec::<Queued>::new());
    let take = || std::mem::take(&mut *pending.lock().unwrap_or_else(|p| p.into_inner()));
    let push = |q: Queued| pending.lock().unwrap_or_else(|p| p.into_inner()).push(q);
    let flush = || {
        for span in agent.take() {
            push(Queued { session: None, span, root: false });
        }
        let batch = take();
        for queue in &queues {
            queue.push_batch(&batch);
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
                from = %unix_secs(gap.from),
                to = %unix_secs(gap.to),
                blind_s = blind.as_secs(),
                "the previous agent did not stop cleanly: the node was not watched in between (a `gap` span in the agent's trace)"
            )
        });
    });
    flush();

    let ctx = BuildCtx { boot_id: cfg.boot_id, clock: cfg.clock, cfg: cfg.spans.clone() };
    // Secrets leave nothing past this point: every update is redacted as it arrives and every
    // identity as the attributor hands it over, so the rules, the span stage and every sink
    // see only tokens (crate::redact).
    let redactor = Arc::new(build_redactor(&cfg.spans.redact));
    let attributor: Arc<dyn Attributor> =
        Arc::new(Sanitizing { inner: attributor, redactor: redactor.clone(), cfg: cfg.spans.clone() });
    // asked for request-only traces directly: a wrapping attributor need not forward that
    let requests = attributor.clone();
    // The rules stage sees each update before the span stage, and each span after it; it
    // learns who opened a session from the identity the span stage was handed.
    let (attributor, mut alerts) = match alerting {
        Some(a) => {
            let who = crate::rules::RecordingAttributor::new(attributor);
            let stage = crate::rules::AlertStage::new(
                cfg.boot_id,
                cfg.clock,
                cfg.spans.scope.clone(),
                a.attribution_configured,
                who.clone(),
            )
            .counting(metrics.alerts.clone());
            (who as Arc<dyn Attributor>, Some((stage, a.rules)))
        }
        None => (attributor, None),
    };
    let mut stage = SpanStage::new(ctx, attributor);
    let mut report = ExportReport::default();
    let mut tick = tokio::time::interval(cfg.spans.hold.poll());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let dispatch = |out: Output, stage: &SpanStage, report: &mut ExportReport| {
        for how in out.released {
            metrics.sessions_released.get_or_create(&vec![("how", how.as_str())]).inc();
        }
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
            push(Queued { session: Some(sid), span: b.span, root: b.root });
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
            push(Queued { session: None, span: l.span, root: false });
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
        metrics.sessions_open.set(stage.open() as i64);
        metrics.sessions_held.set(stage.held() as i64);
        metrics.sessions_unattributed.set(stage.unattributed() as i64);
    };
    loop {
        let mut out = Output::default();
        tokio::select! {
            u = rx.recv() => match u {
                Some(mut u) => {
                    redact_update(&redactor, &mut u);
                    if let Some((a, _)) = alerts.as_mut() {
                        a.tap(&u);
                    }
                    stage.update(u, Instant::now(), &mut out);
                    annotate(&mut alerts, &mut out);
                    dispatch(out, &stage, &mut report);
                    // what else is ready joins the same write (a group commit under load)
                    for _ in 0..255 {
                        let Ok(mut u) = rx.try_recv() else { break };
                        // every update, however it is read, is redacted before anything sees it
                        redact_update(&redactor, &mut u);
                        let mut out = Output::default();
                        if let Some((a, _)) = alerts.as_mut() {
                            a.tap(&u);
                        }
                        stage.update(u, Instant::now(), &mut out);
                        annotate(&mut alerts, &mut out);
                        dispatch(out, &stage, &mut report);
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                stage.tick(Instant::now(), &mut out);
                request_spans(&*requests, stage.ctx(), SystemTime::now(), &push, &metrics, &mut report);
                annotate(&mut alerts, &mut out);
                dispatch(out, &stage, &mut report);
            }
        }
        flush();
    }
    let mut out = Output::default();
    let open_at_stop = stage.open() as i64;
    stage.shutdown(cfg.clock.to_boot_ns(SystemTime::now()), &mut out);
    // every session is out: whatever request is still free never had one
    let all = SystemTime::now() + std::time::Duration::from_secs(366 * 86_400);
    request_spans(&*requests, stage.ctx(), all, &push, &metrics, &mut report);
    annotate(&mut alerts, &mut out);
    dispatch(out, &stage, &mut report);
    run.record("podtrail.agent.sessions_exported", report.sessions as i64);
    run.record("podtrail.agent.sessions_incomplete", open_at_stop);
    drop(run);
    flush();

    for q in &queues {
        q.close(cfg.export.shutdown_flush);
    }
    for (name, t) in tasks {
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

/// The rules stage's pass over what the span stage built (reloading the rules when due).
fn annotate(alerts: &mut Option<(crate::rules::AlertStage, crate::rules::RuleSource)>, out: &mut Output) {
    if let Some((stage, rules)) = alerts.as_mut() {
        for e in rules.poll(Instant::now()).unwrap_or_default() {
            tracing::warn!("rule left out: {e}");
        }
        stage.annotate(&rules.rules(), out);
    }
}

/// Requests that started no process (attach, port-forward, denied or unmatched execs) as root
/// spans of their own, counted as exported sessions.
fn request_spans(
    src: &dyn Attributor,
    ctx: &BuildCtx,
    now: SystemTime,
    push: &dyn Fn(Queued),
    metrics: &Metrics,
    report: &mut ExportReport,
) {
    for a in src.unmatched_requests(now) {
        // `src` is the sanitizing attributor: this identity is redacted and capped
        let who = src.identity_of(&a);
        let container = crate::model::ContainerInfo {
            pod_namespace: a.pod_namespace.clone(),
            pod_name: a.pod_name.clone(),
            pod_uid: a.pod_uid.clone(),
            container_name: who.container.clone(),
            ..Default::default()
        };
        let span = spans::build::request_only_span(ctx, &who, &container, SystemTime::now());
        push(Queued { session: None, span, root: true });
        report.sessions += 1;
        metrics.sessions_exported.inc();
    }
}

/// The redactor for this run: the configured key, or (none configured, or the key file gone
/// since the configuration was checked) a random one, said once in the log. Never the key.
fn build_redactor(cfg: &crate::redact::RedactConfig) -> crate::redact::Redactor {
    use crate::redact::{KeySource, Redactor};
    let r = Redactor::new(cfg).unwrap_or_else(|e| {
        tracing::error!("{e}: secrets are redacted under a random key for this run instead");
        Redactor::random()
    });
    match r.source {
        KeySource::Random => tracing::warn!(
            "spans.redact: no key configured, secrets are redacted under a random key for this run (one secret gives one token only within this run; set spans.redact.key_file to the cluster's key)"
        ),
        KeySource::Config | KeySource::File => {
            tracing::info!(source = ?r.source, "spans.redact: secrets are redacted under the configured key")
        }
    }
    r
}

/// Replaces the secrets in the argv of every process record of an update, counting them on
/// the image. The root's `root_argv` stays as the kernel saw it: it is only compared with the
/// API request's command (itself redacted after the match) and never written.
pub fn redact_update(r: &crate::redact::Redactor, u: &mut SessionUpdate) {
    let recs: &mut [crate::model::ProcessRecord] = match u {
        SessionUpdate::Started(_) => return,
        SessionUpdate::ProcessEnded(_, rec) => std::slice::from_mut(rec),
        SessionUpdate::Ended(_, recs) => recs,
    };
    for rec in recs {
        for img in &mut rec.images {
            img.argv_redacted += r.argv(&mut img.argv);
        }
    }
}

/// The attributor as the span stage sees it: every identity redacted and capped
/// ([`spans::SessionIdentity::sanitize`]) before any span, rule or log reads it.
struct Sanitizing {
    inner: Arc<dyn Attributor>,
    redactor: Arc<crate::redact::Redactor>,
    cfg: spans::SpansConfig,
}

impl Sanitizing {
    fn clean(&self, mut w: spans::SessionIdentity) -> spans::SessionIdentity {
        w.sanitize(&self.redactor, &self.cfg);
        w
    }
}

impl Attributor for Sanitizing {
    fn attribute(&self, info: &crate::model::SessionInfo) -> Option<spans::SessionIdentity> {
        self.inner.attribute(info).map(|w| self.clean(w))
    }
    fn unmatched_requests(&self, now: SystemTime) -> Vec<crate::attribute::Attribution> {
        self.inner.unmatched_requests(now)
    }
    fn attribute_late(
        &self,
        info: &crate::model::SessionInfo,
        settled: std::time::Duration,
    ) -> Option<spans::SessionIdentity> {
        self.inner.attribute_late(info, settled).map(|w| self.clean(w))
    }
    fn revision(&self) -> Option<u64> {
        self.inner.revision()
    }
    fn identity_of(&self, a: &crate::attribute::Attribution) -> spans::SessionIdentity {
        self.clean(spans::SessionIdentity::from(a))
    }
}

#[allow(unused)]
fn _assert_exporters_are_span_exporters() {
    fn is<E: SpanExporter>() {}
    is::<opentelemetry_otlp::SpanExporter>();
    is::<file::FileExporter>();
    is::<console::ConsoleExporter>();
}
