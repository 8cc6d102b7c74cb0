//! The agent (`podtrail run`): the stages started in order and joined by bounded channels,
//! and stopped in order so nothing in flight is lost.
//!
//! capture (ring reader) -> process (table, sessions) -> spans + export (hold, queue, sinks),
//! with the attribution sources (webhooks, audit log) filling a record store that the span
//! stage's hold asks. Shutdown closes the first channel: each stage drains what it holds and
//! closes the next; open sessions are exported marked incomplete.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::{
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::sync::{mpsc, watch};

use crate::{
    attribute::{self, follow, RecordStore, SessionQuery, WebhookConfig, WebhookServer},
    capture::{loader::Capture, reader::ReaderStats},
    clock::BootClock,
    config::Ready,
    export::{self, ExportReport, RunExport},
    metrics::Metrics,
    model::SessionInfo,
    process::{metrics::ProcessMetrics, run::Control},
    spans::{Attributor, NoAttributor, SessionIdentity},
    text,
};

/// Asks the record store who opened a session, in the words of a `SessionQuery`.
pub struct StoreAttributor {
    pub store: Arc<RecordStore>,
    pub clock: BootClock,
}

impl StoreAttributor {
    pub fn query(&self, info: &SessionInfo) -> SessionQuery {
        let c = &info.container;
        SessionQuery {
            pod_namespace: c.pod_namespace.as_deref().map(String::from),
            pod_name: c.pod_name.as_deref().map(String::from),
            pod_uid: c.pod_uid.as_deref().map(String::from),
            container_name: c.container_name.as_deref().map(String::from),
            argv: info.root_argv.iter().map(|a| text::escape(a)).collect(),
            started_at: self.clock.to_system_time(info.start_ns),
            env_audit_id: info.env_audit_id.clone(),
        }
    }
}

impl Attributor for StoreAttributor {
    fn attribute(&self, info: &SessionInfo) -> Option<SessionIdentity> {
        if !info.kind.attributable() {
            return None; // a node session has no Kubernetes request behind it, by definition
        }
        self.store.match_session(&self.query(info)).map(|a| SessionIdentity::from(&a))
    }

    fn attribute_late(&self, info: &SessionInfo, settled: Duration) -> Option<SessionIdentity> {
        if !info.kind.attributable() {
            return None;
        }
        self.store.match_settled(&self.query(info), settled).map(|a| SessionIdentity::from(&a))
    }

    fn revision(&self) -> Option<u64> {
        Some(self.store.revision())
    }

    fn unmatched_requests(&self, now: std::time::SystemTime) -> Vec<attribute::Attribution> {
        self.store.take_unmatched_requests(now)
    }
}

/// Resolves once the stop flag is set.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Is the Kubernetes API watched (`kube.watch`, `auto`: when running in a pod)?
fn kube_watched(cfg: &crate::config::KubeConfig) -> bool {
    use crate::config::KubeWatch;
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    cfg.watch == KubeWatch::On || (cfg.watch == KubeWatch::Auto && in_cluster)
}

/// The cluster ranges the API tells (nodes, ServiceCIDRs), added to the configured ones that
/// every stage classifies with; counted by kind and source either way.
async fn learn_ranges(
    cfg: &Ready,
    reg: &Mutex<Registry>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let learner = crate::enrich::ranges::RangeLearner::new(&cfg.spans.scope);
    reg.lock().unwrap_or_else(|p| p.into_inner()).register(
        "podtrail_cluster_ranges",
        "Cluster address ranges known, by kind (pod, service, node) and source (config, nodes, service_cidrs, kubernetes_service)",
        learner.known.clone(),
    );
    if !cfg.spans.scope.learn || !kube_watched(&cfg.kube) {
        return Ok(());
    }
    let client = kube::Client::try_default().await.map_err(|e| {
        anyhow::anyhow!("cannot reach the Kubernetes API to learn the cluster's ranges ({e}): run with a service account allowed to list and watch nodes and servicecidrs, or set spans.scope.learn = false")
    })?;
    tracing::info!("learning the cluster's ranges from nodes and ServiceCIDRs");
    tokio::spawn(crate::enrich::ranges::learn(client, learner, stop));
    Ok(())
}

/// In a cluster (or when asked): a watch on this node's pods filling a `PodIndex`, stopped by
/// `stop`. None when not watching.
async fn pod_index(
    cfg: &crate::config::KubeConfig,
    node: &str,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Option<crate::enrich::kube::PodIndex>> {
    if !kube_watched(cfg) {
        return Ok(None);
    }
    let node = node.to_owned();
    let client = kube::Client::try_default().await.map_err(|e| {
        anyhow::anyhow!("cannot reach the Kubernetes API to watch this node's pods ({e}): run with a service account allowed to list and watch pods, or set kube.watch = \"off\"")
    })?;
    let index = crate::enrich::kube::PodIndex::new();
    let idx = index.clone();
    tracing::info!(node = %node, "watching this node's pods");
    tokio::spawn(async move { crate::enrich::kube::watch_pods(client, &node, idx, stop).await });
    Ok(Some(index))
}

/// Records from `podtrail receiver` replicas into the store, kept for this node's pods (all of
/// them without a pod index: one machine).
fn subscribe_receivers(
    mut sub: attribute::stream::SubscribeConfig,
    node: &str,
    store: Arc<RecordStore>,
    pods: Option<crate::enrich::kube::PodIndex>,
    reg: &mut Registry,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use attribute::stream::{PodFilter, RecordSink, StreamMetrics};
    sub.node = node.to_owned();
    let keep = pods.map(|idx| -> PodFilter {
        Arc::new(move |r: &attribute::record::RequestRecord| {
            idx.has_pod(r.namespace.as_deref().unwrap_or(""), r.pod_name.as_deref().unwrap_or(""), r.pod_uid.as_deref())
        })
    });
    let metrics = StreamMetrics::default();
    metrics.register(reg);
    let sink = Arc::new(RecordSink::new(store, keep, metrics, sub.pending_for, sub.max_pending));
    tracing::info!(receivers = ?sub.receivers, node = %sub.node, "subscribing to receivers");
    attribute::stream::subscribe::start(sub, sink, stop)
        .map_err(|e| anyhow::anyhow!("{e}: set attribution.receiver_tls_cert, receiver_tls_key and receiver_ca to this agent's certificate, key and the receivers' CA"))
}

/// The kernel's loss counters, read from the BPF maps (which the Capture owns) once a second.
#[derive(Default, Clone)]
struct AgentGauges {
    kernel_dropped: Family<Vec<(&'static str, &'static str)>, Gauge>,
    kernel_dropped_cgroups: Gauge,
}

/// What a run did, for the exit log.
#[derive(Debug, Default)]
pub struct RunReport {
    pub events: u64,
    pub kernel_dropped: u64,
    pub export: Option<ExportReport>,
}

/// Runs the agent until `shutdown` resolves, then stops every stage in order.
pub async fn run(cfg: Ready, shutdown: impl Future<Output = ()>) -> anyhow::Result<RunReport> {
    let clock = BootClock::now();
    let metrics = Metrics::default();
    let mut reg = Registry::default();
    metrics.register(&mut reg);
    let gauges = AgentGauges::default();
    reg.register(
        "podtrail_kernel_dropped",
        "Ring buffer records the kernel could not write, by kind (cumulative)",
        gauges.kernel_dropped.clone(),
    );
    reg.register(
        "podtrail_kernel_dropped_cgroups",
        "cgroups that lost ring buffer records",
        gauges.kernel_dropped_cgroups.clone(),
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    // attribution sources
    let attributed = cfg.audit_webhook.is_some()
        || cfg.admission_webhook.is_some()
        || cfg.audit_log.is_some()
        || cfg.receivers.is_some();
    let store = Arc::new(RecordStore::new(cfg.store.clone()));
    store.register_metrics(&mut reg);
    let wcfg = WebhookConfig::default();
    if let Some(l) = &cfg.audit_webhook {
        let srv =
            WebhookServer::bind(l, attribute::audit_router(store.clone(), &wcfg), store.metrics().clone()).await?;
        tracing::info!(listen = %l.listen, tls = l.tls.is_some(), "audit webhook listening");
        tasks.push(tokio::spawn(srv.run(stopped(stop_rx.clone()))));
    }
    if let Some(l) = &cfg.admission_webhook {
        let srv =
            WebhookServer::bind(l, attribute::admission_router(store.clone(), &wcfg), store.metrics().clone()).await?;
        tracing::info!(listen = %l.listen, "admission webhook listening");
        tasks.push(tokio::spawn(srv.run(stopped(stop_rx.clone()))));
    }
    if let Some(path) = &cfg.audit_log {
        tracing::info!(path = %path.display(), "following audit log");
        let f = follow::follow(follow::FollowConfig::new(path.clone()), store.clone(), stopped(stop_rx.clone()));
        tasks.push(tokio::spawn(f));
    }
    let attributor: Arc<dyn Attributor> =
        if attributed { Arc::new(StoreAttributor { store: store.clone(), clock }) } else { Arc::new(NoAttributor) };

    let reg = Arc::new(Mutex::new(reg));
    // /readyz answers 200 once the programs are attached and the process stage consumes events
    let ready = crate::metrics::Readiness::default();
    if let Some(addr) = cfg.metrics_listen {
        let r = reg.clone();
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            anyhow::anyhow!("metrics endpoint {addr}: {e} (set metrics.listen, or \"\" to turn it off)")
        })?;
        tracing::info!(listen = %addr, "metrics at /metrics, readiness at /readyz");
        let ready = ready.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve_with(listener, r, ready).await {
                tracing::error!("metrics endpoint stopped: {e}");
            }
        });
    }

    // export first, so nothing the process stage produces waits for it
    let mut setup = cfg.export.clone();
    // the state directory before anything is accepted: the lock, the crash mark, the queue
    let (state, gap) = crate::state::StateDir::open(&setup.queue.directory)?;
    let state = Arc::new(state);
    tracing::info!(dir = %state.dir().display(), unclean_previous_stop = gap.is_some(), "state directory held");
    setup.queue.held = Some(crate::state::Held { dir: state.clone(), gap });
    let heartbeat = {
        let (state, mut stop) = (state.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::state::HEARTBEAT);
            loop {
                tokio::select! { _ = tick.tick() => {}, _ = stop.changed() => break }
                if let Err(e) = state.heartbeat() {
                    tracing::warn!(dir = %state.dir().display(), error = %e, "cannot write the heartbeat");
                }
            }
        })
    };
    let run_export = RunExport { spans: cfg.spans.clone(), export: setup, boot_id: crate::clock::boot_id(), clock };
    // the process stage's updates travel in batches (one per pass over the reader's events)
    let (upd_tx, upd_rx) = mpsc::channel::<crate::model::UpdateBatch>(crate::model::batches_for(cfg.process_channel));
    let (rules, rule_errors) = crate::rules::RuleSource::load(cfg.rules.clone())?;
    for e in &rule_errors {
        tracing::warn!("rule left out: {e}");
    }
    tracing::info!(rules = rules.rules().len(), "detection rules loaded");
    let alerting = export::Alerting { rules, attribution_configured: attributed };
    let opts = export::ExportOptions { alerting: Some(alerting), ..Default::default() };
    let export_task = tokio::spawn(export::run_export(upd_rx, run_export, attributor, metrics.clone(), opts));

    // in a cluster, between the process and span stages: the API's pod metadata on every
    // session (so attribution matches on it) and exec probes held back, counted
    let pods = pod_index(&cfg.kube, &cfg.node_name, stopped(stop_rx.clone())).await?;
    learn_ranges(&cfg, &reg, stopped(stop_rx.clone())).await?;
    if let Some(sub) = cfg.receivers.clone() {
        let mut r = reg.lock().unwrap_or_else(|p| p.into_inner());
        tasks.push(subscribe_receivers(
            sub,
            &cfg.node_name,
            store.clone(),
            pods.clone(),
            &mut r,
            stopped(stop_rx.clone()),
        )?);
    }
    // the process stage learns from the same index which containers are ephemeral (their init
    // is a `kubectl debug` session)
    let ephemeral = pods.clone().map(|idx| {
        crate::process::containers::EphemeralOracle(Arc::new(move |c: &crate::model::ContainerInfo| {
            idx.is_ephemeral(&c.id)
        }))
    });
    let upd_tx = match pods {
        Some(index) => {
            let mut filter = crate::enrich::kube::SessionFilter::new(index, cfg.kube.export_probes)
                .with_pod_labels(cfg.kube.pod_labels.clone());
            reg.lock().unwrap_or_else(|p| p.into_inner()).register(
                "podtrail_sessions_probes",
                "Exec probe sessions (exported only with kube.export_probes)",
                filter.probes.clone(),
            );
            reg.lock().unwrap_or_else(|p| p.into_inner()).register(
                "podtrail_sessions_pod_unknown",
                "Sessions of a pod container whose pod the pod index did not know when they started",
                filter.pods_unknown.clone(),
            );
            reg.lock().unwrap_or_else(|p| p.into_inner()).register(
                "podtrail_sessions_pod_mismatched",
                "Sessions whose container id the pod status gives another pod than its cgroup path names (pod not taken)",
                filter.pods_mismatched.clone(),
            );
            let (tx, mut rx) =
                mpsc::channel::<crate::model::UpdateBatch>(crate::model::batches_for(cfg.process_channel));
            let out = upd_tx;
            tokio::spawn(async move {
                while let Some(batch) = rx.recv().await {
                    let batch: Vec<_> = batch.into_iter().filter_map(|u| filter.pass(u)).collect();
                    if !batch.is_empty() && out.send(batch).await.is_err() {
                        break;
                    }
                }
            });
            tx
        }
        None => upd_tx,
    };

    // capture, then the process stage between them
    // the reader counts decoded and undecodable records into the shared series as it reads
    let mut capture = Capture::start_counted(cfg.capture.clone(), ReaderStats::registered(&metrics))?;
    tracing::info!(programs = capture.attached.len(), "kernel programs attached");
    let events = std::mem::replace(&mut capture.events, mpsc::channel(1).1);
    // the process stage publishes its own counts (and the shared outbound and rate-limit series)
    let pmetrics = ProcessMetrics::new(metrics.clone());
    pmetrics.register(&mut reg.lock().unwrap_or_else(|p| p.into_inner()));
    // the kernel's drops per cgroup (sampled below) reach the process stage here; pod metadata
    // does not: the pod index adds it after the process stage (the filter above)
    let (control_tx, control_rx) = mpsc::channel::<Control>(1024);
    let process_opts =
        crate::process::run::ProcessOptions { ephemeral, started: Some(ready.clone()), ..cfg.process.clone() };
    let mut process_task = tokio::spawn(crate::process::run::run(events, upd_tx, process_opts, pmetrics, control_rx));

    // kernel counters need the maps, which the Capture owns: read them on this task
    let mut ring_lost_seen = 0u64;
    let mut refused_seen = 0u64;
    let mut inflight_lost_seen = 0u64;
    let mut cgroup_lost_sent: std::collections::HashMap<u64, u64> = Default::default();
    let mut read_kernel = |capture: &Capture| {
        let k = capture.counters.read();
        for (kind, n) in &k.dropped {
            gauges.kernel_dropped.get_or_create(&vec![("kind", *kind)]).set(*n as i64);
        }
        gauges.kernel_dropped_cgroups.set(k.dropped_by_cgroup.len() as i64);
        // refused for a cgroup over its share, or no room at all: both are lost events
        let refused = k.total_refused();
        if refused > refused_seen {
            tracing::warn!(refused = refused - refused_seen, by_kind = ?k.refused, by_cgroup = ?k.dropped_by_cgroup, "a cgroup was over its share of a filling ring: its network events were refused");
            metrics.events_lost.get_or_create(&vec![("reason", "cgroup_share")]).inc_by(refused - refused_seen);
            refused_seen = refused;
        }
        let total = k.total_dropped().saturating_sub(refused);
        if total > ring_lost_seen {
            tracing::warn!(lost = total - ring_lost_seen, by_cgroup = ?k.dropped_by_cgroup, "the kernel ring buffer was full: events lost");
            metrics.events_lost.get_or_create(&vec![("reason", "ring_buffer")]).inc_by(total - ring_lost_seen);
            ring_lost_seen = total;
        }
        let inflight: u64 = k.inflight_lost.iter().map(|(_, n)| n).sum();
        if inflight > inflight_lost_seen {
            tracing::warn!(lost = inflight - inflight_lost_seen, by_map = ?k.inflight_lost, "kernel in-flight entries lost (LRU map full, or a thread died inside the syscall): file operations, namespace joins or connect outcomes not reported");
            metrics.events_lost.get_or_create(&vec![("reason", "in_flight")]).inc_by(inflight - inflight_lost_seen);
            inflight_lost_seen = inflight;
        }
        // only changed counts; a full channel is retried next second (the totals are cumulative)
        for &(cgroup_id, total) in &k.dropped_by_cgroup {
            if cgroup_lost_sent.get(&cgroup_id) != Some(&total)
                && control_tx.try_send(Control::EventsLost { cgroup_id, total }).is_ok()
            {
                cgroup_lost_sent.insert(cgroup_id, total);
            }
        }
        k
    };

    // running means: what starts from now on is seen (the stage has read /proc and consumes
    // the events the programs queued meanwhile); it reads /proc once, a bounded walk
    tokio::select! {
        _ = ready.wait() => {}
        _ = &mut process_task => anyhow::bail!("the process stage stopped before it was running"),
    }
    tracing::info!("podtrail is running");
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // start-up's garbage (the kernel's BTF, parsed to load the programs, and /proc's walk) goes
    // back to the kernel now, and after each burst of events once it is over
    crate::heap::trim();
    let mut trimmer = crate::heap::Trimmer::new(capture.stats.decoded_total());
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {
                read_kernel(&capture);
                trimmer.tick(capture.stats.decoded_total());
            }
        }
    }
    tracing::info!("stopping: draining the ring, ending open sessions as incomplete, flushing export");
    let k = read_kernel(&capture);
    let (_counters, stats) = capture.stop().await;
    let _ = process_task.await;
    let report = export_task.await??;
    let _ = stop_tx.send(true);
    let _ = heartbeat.await;
    // everything is sent or on disk: the next start finds no gap
    if let Err(e) = state.stopped() {
        tracing::warn!(dir = %state.dir().display(), error = %e, "cannot record the clean stop");
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    let out = RunReport { events: stats.decoded_total(), kernel_dropped: k.total_dropped(), export: Some(report) };
    tracing::info!(events = out.events, kernel_dropped = out.kernel_dropped, export = ?out.export, "stopped");
    Ok(out)
}
