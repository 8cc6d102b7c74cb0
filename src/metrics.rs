//! podtrail's own Prometheus metrics and the `/metrics` endpoint.
//!
//! In: increments from every stage (each holds a clone of [`Metrics`]). Out: the OpenMetrics
//! text on `GET /metrics`. Nothing is dropped. Names are a contract with the dashboards
//! (grafana/): `podtrail_events_total{kind}`, `podtrail_events_lost_total{reason}`,
//! `podtrail_sessions_open`, `podtrail_sessions_exported_total`, `podtrail_spans_exported_total`,
//! `podtrail_spans_lost_total{reason}`, `podtrail_export_queue_spans`, and the rest below.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

type Labels = Vec<(&'static str, &'static str)>;

/// `podtrail_alerts_total{rule, severity}`: rule names come from the rule files, so the label
/// values are owned (bounded by the loaded rule set).
pub type AlertCounter = Family<Vec<(&'static str, String)>, Counter>;

/// Cheap to clone: every clone updates the same series.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub events: Family<Labels, Counter>,
    pub events_lost: Family<Labels, Counter>,
    pub sessions_open: Gauge,
    pub sessions_held: Gauge,
    pub sessions_released: Family<Labels, Counter>,
    pub probe_sessions: Family<Labels, Counter>,
    pub sessions_exported: Counter,
    pub sessions_incomplete: Counter,
    pub spans_exported: Counter,
    pub spans_lost: Family<Labels, Counter>,
    pub spans_budgeted: Family<Labels, Counter>,
    pub export_queue_spans: Gauge,
    pub export_queue_bytes: Gauge,
    pub export_queue_events: Family<Labels, Counter>,
    pub export_requests: Family<Labels, Counter>,
    pub udp_unsent: Counter,
    pub attribution_late: Counter,
    pub attribution_late_forgotten: Family<Labels, Counter>,
    pub sessions_unattributed: Gauge,
    pub outbound_records: Counter,
    pub outbound_connects: Family<Labels, Counter>,
    pub outbound_pending: Family<Labels, Gauge>,
    pub alerts: AlertCounter,
    pub alerts_deferred: Counter,
    /// The alert log records' queue ([`crate::export::alert_logs`]): its own series, so the
    /// `spans` ones stay about spans.
    pub alert_logs_exported: Counter,
    pub alert_logs_lost: Family<Labels, Counter>,
    pub alert_logs_queued: Gauge,
    pub alert_logs_queue_bytes: Gauge,
    /// The terminal transcript (`crate::process::transcript`): bytes, lines, reads by what.
    pub transcript_bytes: Family<Labels, Counter>,
    pub transcript_lines: Family<Labels, Counter>,
    pub transcript_reads: Family<Labels, Counter>,
}

impl Metrics {
    pub fn register(&self, reg: &mut Registry) {
        reg.register("podtrail_events", "Kernel events decoded, by kind", self.events.clone());
        reg.register(
            "podtrail_events_lost",
            "Events lost, by reason (ring_buffer, cgroup_share, decode, rate_limit, in_flight)",
            self.events_lost.clone(),
        );
        reg.register(
            "podtrail_sessions_open",
            "Sessions the span stage has open (running, or ended and held for attribution)",
            self.sessions_open.clone(),
        );
        reg.register("podtrail_sessions_held", "Sessions waiting for attribution", self.sessions_held.clone());
        reg.register(
            "podtrail_sessions_released",
            "Sessions let out of the hold stage, by why (attributed, deadline, overflow, shutdown, unattributable)",
            self.sessions_released.clone(),
        );
        reg.register(
            "podtrail_probe_sessions",
            "Sessions whose command is one of the container's exec probe commands, by outcome: dropped (no API request matched within the hold and no terminal) or session (exported)",
            self.probe_sessions.clone(),
        );
        reg.register(
            "podtrail_sessions_exported",
            "Sessions whose root span was handed to the export queue",
            self.sessions_exported.clone(),
        );
        reg.register(
            "podtrail_sessions_incomplete",
            "Sessions exported marked incomplete",
            self.sessions_incomplete.clone(),
        );
        reg.register("podtrail_spans_exported", "Spans the backend accepted", self.spans_exported.clone());
        reg.register(
            "podtrail_spans_lost",
            "Spans not exported, by reason (queue_full, export_failed, shutdown, disk_budget, ...; rejected: \
             sent, counted in podtrail_spans_exported, then refused by the backend in a partial success)",
            self.spans_lost.clone(),
        );
        reg.register(
            "podtrail_spans_budgeted",
            "Spans not sent on their own by budget, by how (folded, capped)",
            self.spans_budgeted.clone(),
        );
        reg.register(
            "podtrail_export_queue_spans",
            "Spans waiting in the export queue",
            self.export_queue_spans.clone(),
        );
        reg.register(
            "podtrail_export_queue_bytes",
            "Bytes of the durable export queue's segment files on disk",
            self.export_queue_bytes.clone(),
        );
        reg.register(
            "podtrail_export_queue_events",
            "Durable queue trouble, by event (torn_tail, corrupt_segment, write_failed, segment_evicted, \
             record_undecodable, read_failed, ack_failed); the spans it cost are podtrail_spans_lost_total",
            self.export_queue_events.clone(),
        );
        reg.register(
            "podtrail_export_requests",
            "Export requests, by result (ok, retry, failed)",
            self.export_requests.clone(),
        );
        reg.register(
            "podtrail_udp_connects_unsent",
            "UDP connects without data (name lookups), not exported",
            self.udp_unsent.clone(),
        );
        reg.register(
            "podtrail_attribution_late",
            "Records that attributed a session after it was exported unattributed (an attribution span was added to its trace)",
            self.attribution_late.clone(),
        );
        reg.register(
            "podtrail_attribution_late_forgotten",
            "Sessions exported unattributed that stopped waiting for a late record, by reason (expired, overflow)",
            self.attribution_late_forgotten.clone(),
        );
        reg.register(
            "podtrail_sessions_unattributed",
            "Sessions exported unattributed still waiting for a late record",
            self.sessions_unattributed.clone(),
        );
        // before the outbound counters: a scrape reads the series in this order, so the
        // pending gauges read at 0 mean every record they waited for is in the counters read
        // after them (each gauge goes down after its record is counted: `Outbound`)
        reg.register(
            "podtrail_outbound_pending",
            "Outbound connects the process stage still holds, by what (open: in a trace not handed out yet, \
             unmarked: suppressed, not yet marked on a trace)",
            self.outbound_pending.clone(),
        );
        reg.register(
            "podtrail_outbound_records",
            "Outbound traces (connects outside sessions) handed out by the process stage",
            self.outbound_records.clone(),
        );
        reg.register(
            "podtrail_outbound_connects",
            "Outbound connects counted in a trace, by how (recorded: opened one, folded: into an open one); \
             those the rate limit suppressed are podtrail_events_lost_total{reason=\"rate_limit\"}",
            self.outbound_connects.clone(),
        );
        reg.register(
            "podtrail_alerts",
            "Alerts raised by the rules (docs/rules.md), by rule and severity, counted as each is raised",
            self.alerts.clone(),
        );
        reg.register(
            "podtrail_alerts_deferred",
            "Alerts that matched as it happened but were raised only with their process's final record: \
             a session had 4096 live alerts waiting for their processes' end (late, not lost)",
            self.alerts_deferred.clone(),
        );
        reg.register(
            "podtrail_transcript_bytes",
            "Terminal bytes of sessions with a terminal, by what (recorded: copied by the kernel into \
             lines; cut: past the session's kernel budget or a read's slot, counted only)",
            self.transcript_bytes.clone(),
        );
        reg.register(
            "podtrail_transcript_lines",
            "Transcript lines, by what (recorded; over_cap: past transcript.max_lines, counted on the \
             session; excluded: of a namespace in transcript.exclude_namespaces, dropped)",
            self.transcript_lines.clone(),
        );
        reg.register(
            "podtrail_transcript_reads",
            "Terminal reads not turned into text, by what (secret: read with echo off at a password prompt, \
             its length only; outside_session: of a process in no session, dropped)",
            self.transcript_reads.clone(),
        );
        reg.register(
            "podtrail_alert_logs_exported",
            "Alert log records the OTLP backend accepted",
            self.alert_logs_exported.clone(),
        );
        reg.register(
            "podtrail_alert_logs_lost",
            "Alert log records not exported, by reason (as podtrail_spans_lost_total)",
            self.alert_logs_lost.clone(),
        );
        reg.register(
            "podtrail_alert_logs_queued",
            "Alert log records waiting in their export queue",
            self.alert_logs_queued.clone(),
        );
        reg.register(
            "podtrail_alert_logs_queue_bytes",
            "Bytes of the alert log records' durable queue on disk",
            self.alert_logs_queue_bytes.clone(),
        );
    }

    /// The handles the alert log records' queue counts into: the same queue code, the
    /// `podtrail_alert_logs_*` series.
    pub fn for_alert_logs(&self) -> Metrics {
        Metrics {
            spans_exported: self.alert_logs_exported.clone(),
            spans_lost: self.alert_logs_lost.clone(),
            export_queue_spans: self.alert_logs_queued.clone(),
            export_queue_bytes: self.alert_logs_queue_bytes.clone(),
            ..self.clone()
        }
    }

    pub fn lost(&self, reason: &'static str, n: u64) {
        self.spans_lost.get_or_create(&vec![("reason", reason)]).inc_by(n);
    }

    pub fn queue_events(&self, event: &'static str, n: u64) {
        if n > 0 {
            self.export_queue_events.get_or_create(&vec![("event", event)]).inc_by(n);
        }
    }

    pub fn lost_count(&self, reason: &'static str) -> u64 {
        self.spans_lost.get_or_create(&vec![("reason", reason)]).get()
    }

    pub fn request(&self, result: &'static str) {
        self.export_requests.get_or_create(&vec![("result", result)]).inc();
    }
}

/// Where `/metrics` listens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the Prometheus endpoint; empty to turn it off. The DaemonSet sets
    /// `0.0.0.0:9464` so the pod can be scraped.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { listen: "127.0.0.1:9464".into() }
    }
}

/// The registry all stages register into.
pub type SharedRegistry = Arc<Mutex<Registry>>;

/// Text exposition of the registry.
pub fn render(reg: &Registry) -> String {
    let mut s = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut s, reg);
    s
}

/// Whether the process serving `/metrics` does its job yet: `GET /readyz` answers 200 once
/// [`Readiness::set`] was called, 503 before (the agent sets it when its kernel programs are
/// attached and the process stage has read /proc and consumes events, so a Kubernetes
/// readiness probe, and `kubectl rollout status`, wait for the moment nothing is missed).
#[derive(Clone, Debug)]
pub struct Readiness(Arc<tokio::sync::watch::Sender<bool>>);

impl Default for Readiness {
    fn default() -> Self {
        Readiness(Arc::new(tokio::sync::watch::Sender::new(false)))
    }
}

impl Readiness {
    /// Ready from the start (the receiver: ready when its listeners are bound).
    pub fn ready() -> Self {
        let r = Readiness::default();
        r.set();
        r
    }

    pub fn set(&self) {
        self.0.send_replace(true);
    }

    pub fn is_ready(&self) -> bool {
        *self.0.borrow()
    }

    /// Returns once [`Self::set`] was called.
    pub async fn wait(&self) {
        let mut rx = self.0.subscribe();
        // the sender lives in self: wait_for cannot see it closed
        let _ = rx.wait_for(|r| *r).await;
    }
}

pub fn router(reg: SharedRegistry) -> axum::Router {
    router_with(reg, Readiness::ready())
}

/// `/metrics`, and `/readyz` answering from `ready`.
pub fn router_with(reg: SharedRegistry, ready: Readiness) -> axum::Router {
    axum::Router::new()
        .route(
            "/readyz",
            axum::routing::get(move || {
                let ready = ready.clone();
                async move {
                    if ready.is_ready() {
                        (axum::http::StatusCode::OK, "ready\n")
                    } else {
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "starting\n")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            axum::routing::get(move || {
                let reg = reg.clone();
                async move {
                    let body = match reg.lock() {
                        Ok(r) => render(&r),
                        Err(p) => render(&p.into_inner()),
                    };
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    )
                }
            }),
        )
}

/// Serves `/metrics` (and `/readyz`, always ready) until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, reg: SharedRegistry) -> std::io::Result<()> {
    axum::serve(listener, router(reg)).await
}

/// Serves `/metrics` and `/readyz` answering from `ready` until the task is dropped.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    reg: SharedRegistry,
    ready: Readiness,
) -> std::io::Result<()> {
    axum::serve(listener, router_with(reg, ready)).await
}

/// Binds `addr` (one clear error when it is taken) and serves.
pub async fn bind_and_serve(addr: SocketAddr, reg: SharedRegistry) -> std::io::Result<()> {
    let l = tokio::net::TcpListener::bind(addr).await?;
    serve(l, reg).await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.unwrap();
        buf
    }

    #[tokio::test]
    async fn readyz_answers_503_until_ready_then_200() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let ready = Readiness::default();
        tokio::spawn(serve_with(l, Arc::new(Mutex::new(Registry::default())), ready.clone()));
        let before = get(addr, "/readyz").await;
        assert!(before.starts_with("HTTP/1.0 503") || before.starts_with("HTTP/1.1 503"), "{before}");
        assert!(get(addr, "/metrics").await.contains(" 200 "), "metrics serve while starting");
        ready.set();
        ready.wait().await;
        let after = get(addr, "/readyz").await;
        assert!(after.contains(" 200 ") && after.ends_with("ready\n"), "{after}");
    }

    #[test]
    fn dashboard_metric_names_are_exposed() {
        let m = Metrics::default();
        let mut reg = Registry::default();
        m.register(&mut reg);
        m.events.get_or_create(&vec![("kind", "exec")]).inc();
        m.lost("export_failed", 3);
        m.events_lost.get_or_create(&vec![("reason", "ring_buffer")]).inc();
        let text = render(&reg);
        for name in [
            "podtrail_events_total{kind=\"exec\"} 1",
            "podtrail_events_lost_total{reason=\"ring_buffer\"} 1",
            "podtrail_sessions_open ",
            "podtrail_sessions_exported_total ",
            "podtrail_spans_exported_total ",
            "podtrail_spans_lost_total{reason=\"export_failed\"} 3",
            "podtrail_export_queue_spans ",
        ] {
            assert!(text.contains(name), "{name} missing in:\n{text}");
        }
    }
}
