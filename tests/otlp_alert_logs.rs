//! Alerts as OTLP log records (issue 17), through podtrail's own collector (otel-collector/,
//! built by tests/harness/collector.sh, running the shipped config.yaml: OTLP in over mutual
//! TLS, traces to a real Jaeger, logs to its `debug/alerts` exporter, i.e. the collector's log).
//!
//! Proved: the export stage, with the shipped rules, sends a node session whose `tcpdump`
//! raises "Packet capture"; the collector's logs exporter prints a log record for it whose
//! trace id and span id are those of an `alert` span Jaeger holds (the span of that rule, in
//! that trace), with the OTLP severity for `high` (ERROR, 17), the rule's word as severity
//! text, the rule name and the session's identity attributes. Over gRPC with the endpoint and
//! certificates from the config, and over HTTP/protobuf configured only by the standard
//! `OTEL_EXPORTER_OTLP_*` variables (so `/v1/logs` is put beside `/v1/traces`); the resource
//! carries the node's `host.ip` and `host.mac`. The record
//! is decoded by the collector, not by podtrail. Needs the Go-built collector and Jaeger
//! (cached under PODTRAIL_CACHE); fails loudly without.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use podtrail::capture::event::{ExitStatus, ProcessKey};
use podtrail::export::{Alerting, ExportConfig, ExportOptions, RunExport};
use podtrail::metrics::Metrics;
use podtrail::model::*;
use podtrail::rules::{RuleSource, RulesConfig};
use podtrail::spans::{Attributor, NoAttributor, SpansConfig};

use support::collector::Collector;
use support::jaeger::{norm_id, Jaeger};

/// A session whose shell runs `tcpdump -i any`, as the process stage reports it live, then
/// ended (a node session is never held for attribution; an exec session leaves the hold once
/// attributed: either way its alerts are raised at exec).
fn session(pid: u32, kind: SessionKind) -> Vec<SessionUpdate> {
    let now = podtrail::clock::boot_ns_now();
    let t0 = now - 3_000_000_000;
    let root = ProcessKey { pid, start_ns: t0 };
    let container = ContainerInfo {
        id: format!("{pid:064x}").into(),
        pod_namespace: Some("billing".into()),
        pod_name: Some(format!("api-{pid}").into()),
        container_name: Some("api".into()),
        source: "cgroup",
        ..Default::default()
    };
    let mut info = SessionInfo::new(SessionId(root), kind, container, t0);
    info.root_argv = vec![b"sh".to_vec()];
    let image = |exe: &str, argv: &[&str], start: u64| ImageRecord {
        start_ns: start,
        argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
        filename: exe.as_bytes().into(),
        exe_path: exe.as_bytes().into(),
        ..Default::default()
    };
    let process = |key: ProcessKey, parent: Option<ProcessKey>, img: ImageRecord, exit: Option<u64>| ProcessRecord {
        key,
        parent,
        parent_exec_index: parent.map(|_| 0),
        nspid: key.pid - 4000,
        fork_ns: key.start_ns,
        exit_ns: exit,
        exit: exit.map(|_| ExitStatus::Code(0)),
        from_proc: false,
        images: vec![img],
        leaf: false,
    };
    let dump = ProcessKey { pid: pid + 1, start_ns: t0 + 1_000_000_000 };
    let dump_img = image("/usr/bin/tcpdump", &["tcpdump", "-i", "any"], dump.start_ns);
    let end = now - 500_000_000;
    let mut ended = info.clone();
    ended.end_ns = Some(end);
    vec![
        SessionUpdate::Started(info.clone().into()),
        SessionUpdate::Live(info.clone().into(), process(dump, Some(root), dump_img.clone(), None), Live::Exec),
        SessionUpdate::ProcessEnded(info.clone().into(), process(dump, Some(root), dump_img, Some(end - 1_000_000))),
        SessionUpdate::Ended(ended.into(), vec![process(root, None, image("/bin/sh", &["sh"], t0), Some(end))]),
    ]
}

/// Runs the export stage, with the shipped rules, over `updates`; what the alert logs' sink
/// delivered, and the spans' sink.
async fn export(
    updates: Vec<SessionUpdate>,
    who: Arc<dyn Attributor>,
    cfg: ExportConfig,
    env: &BTreeMap<&str, String>,
) -> (podtrail::export::Delivery, podtrail::export::Delivery) {
    let setup = cfg.resolve(|k| env.get(k).cloned()).expect("export config resolves");
    assert!(setup.alert_logs, "alert log records are on by default");
    let run = RunExport {
        spans: SpansConfig::default(),
        export: setup,
        boot_id: [0x17; 16],
        clock: podtrail::clock::BootClock::now(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    for u in updates {
        tx.send(u).await.unwrap();
    }
    drop(tx);
    let (rules, errors) = RuleSource::load(RulesConfig::default()).expect("shipped rules");
    assert!(errors.is_empty(), "{errors:?}");
    let opts =
        ExportOptions { alerting: Some(Alerting { rules, attribution_configured: false }), ..Default::default() };
    let report = podtrail::export::run_export(rx, run, who, Metrics::default(), opts).await.expect("export");
    let sink = |name: &str| report.sinks.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("{name} sink")).1;
    (sink("otlp_logs"), sink("otlp"))
}

fn fast(cfg: ExportConfig) -> ExportConfig {
    ExportConfig {
        max_attempts: 3,
        retry_initial_ms: 100,
        retry_max_ms: 500,
        otlp_timeout_ms: Some(5_000),
        shutdown_flush_ms: 15_000,
        console: Some(false),
        ..cfg
    }
}

/// One log record as the collector's debug exporter printed it.
#[derive(Debug, Default)]
struct Printed {
    trace_id: String,
    span_id: String,
    severity_number: String,
    severity_text: String,
    event_name: String,
    body: String,
    attrs: BTreeMap<String, String>,
}

/// The log records in the collector's log (`verbosity: detailed`: a `LogRecord #n` block per
/// record, fields as `Name: value`, attributes as `-> key: Type(value)`).
fn printed(log: &str) -> Vec<Printed> {
    let mut out = Vec::new();
    for block in log.split("LogRecord #").skip(1) {
        let mut p = Printed::default();
        for line in block.lines() {
            let line = line.trim();
            if line.starts_with("ResourceLog #") || line.starts_with("ScopeLogs #") {
                break;
            }
            if let Some(kv) = line.strip_prefix("-> ") {
                if let Some((k, v)) = kv.split_once(": ") {
                    p.attrs.insert(k.to_owned(), v.to_owned());
                }
                continue;
            }
            let Some((k, v)) = line.split_once(": ") else { continue };
            let v = v.trim().to_owned();
            match k {
                "Trace ID" => p.trace_id = v,
                "Span ID" => p.span_id = v,
                "SeverityNumber" => p.severity_number = v,
                "SeverityText" => p.severity_text = v,
                "EventName" => p.event_name = v,
                "Body" => p.body = v,
                _ => {}
            }
        }
        out.push(p);
    }
    out
}

/// Waits until the collector printed a record of the session in pod `pod`.
fn record_of(col: &Collector, pod: &str) -> Printed {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = col.log();
        if let Some(p) = printed(&log).into_iter().find(|p| p.attrs.get("k8s.pod.name") == Some(&format!("Str({pod})")))
        {
            return p;
        }
        assert!(Instant::now() < deadline, "no log record of {pod} in the collector's log:\n{log}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The record names an `alert` span of "Packet capture" that Jaeger holds, and says what the
/// alert was.
fn check(col: &Collector, jaeger: &Jaeger, pod: &str, identity: &[(&str, &str)]) {
    let rec = record_of(col, pod);
    assert_eq!(rec.trace_id.len(), 32, "{rec:?}");
    assert_eq!(rec.span_id.len(), 16, "{rec:?}");
    assert_eq!(rec.severity_number, "Error(17)", "high is ERROR: {rec:?}");
    assert_eq!(rec.severity_text, "high", "{rec:?}");
    assert_eq!(rec.event_name, "podtrail.alert", "{rec:?}");
    assert!(rec.body.starts_with("Str(Packet capture: "), "{rec:?}");
    for (k, v) in [
        ("security_rule.name", "Str(Packet capture)"),
        ("podtrail.alert.severity", "Str(high)"),
        ("podtrail.alert.severity_number", "Int(4)"),
        ("k8s.namespace.name", "Str(billing)"),
        ("process.command", "Str(tcpdump)"),
    ] {
        assert_eq!(rec.attrs.get(k).map(String::as_str), Some(v), "{k} on {rec:?}");
    }
    for (k, v) in identity {
        assert_eq!(rec.attrs.get(*k).map(String::as_str), Some(*v), "{k} on {rec:?}");
    }
    let spans = jaeger.wait_for(30, "the alert's trace", |j| {
        j.trace(&rec.trace_id).filter(|s| s.iter().any(|s| norm_id(&s.id)[16..] == rec.span_id))
    });
    let alert = spans.iter().find(|s| norm_id(&s.id)[16..] == rec.span_id).unwrap();
    assert_eq!(alert.name, "alert", "the record's span id is the alert span's: {alert:?}");
    assert_eq!(alert.tag("security_rule.name"), Some("Packet capture"), "{alert:?}");
    assert_eq!(alert.tag("k8s.pod.name"), Some(pod), "{alert:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_log_record_reaches_the_collector_with_the_ids_of_the_alert_span_jaeger_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let jaeger = Jaeger::start(&tmp.path().join("jaeger"));
    let col = Collector::start(&tmp.path().join("collector"), &jaeger.otlp_grpc, &[]);
    let (ca, cert, key) =
        (col.get("COLLECTOR_TLS_CA"), col.get("COLLECTOR_TLS_CLIENT_CERT"), col.get("COLLECTOR_TLS_CLIENT_KEY"));

    // 1. gRPC, endpoint and certificates from the config
    let grpc = ExportConfig {
        otlp_endpoint: Some(format!("https://{}", col.get("COLLECTOR_OTLP_GRPC"))),
        otlp_ca: Some(ca.clone().into()),
        otlp_client_cert: Some(cert.clone().into()),
        otlp_client_key: Some(key.clone().into()),
        ..fast(ExportConfig::default())
    };
    let (logs, spans) = export(session(5101, SessionKind::Node), Arc::new(NoAttributor), grpc, &BTreeMap::new()).await;
    assert!(logs.exported >= 1 && logs.lost() == 0, "alert logs over gRPC: {logs:?}\n{}", col.log());
    assert!(spans.exported >= 3 && spans.lost() == 0, "spans over gRPC: {spans:?}");
    check(&col, &jaeger, "api-5101", &[("podtrail.session.kind", "Str(node)")]);

    // 2. HTTP/protobuf from the standard variables only (/v1/logs beside /v1/traces), a
    // `kubectl exec` attributed to alice: her identity is on the record
    let env: BTreeMap<&str, String> = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", col.get("COLLECTOR_OTLP_HTTP")),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca),
        ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", cert),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", key),
    ]
    .into_iter()
    .collect();
    let alice: Arc<dyn Attributor> = Arc::new(|_: &SessionInfo| Some(support::sessions::alice()));
    let (logs, spans) = export(session(5201, SessionKind::Exec), alice, fast(ExportConfig::default()), &env).await;
    assert!(logs.exported >= 1 && logs.lost() == 0, "alert logs over HTTP: {logs:?}\n{}", col.log());
    assert!(spans.exported >= 3 && spans.lost() == 0, "spans over HTTP: {spans:?}");
    check(
        &col,
        &jaeger,
        "api-5201",
        &[
            ("podtrail.session.kind", "Str(exec)"),
            ("user.name", "Str(alice@example.com)"),
            ("client.address", "Str(203.0.113.7)"),
            ("podtrail.k8s.audit_id", "Str(4b5f3c7e-8d2a-4f19-9c3e-2a1b0d9e8f70)"),
        ],
    );
    // the resource names the node beside host.name: its addresses (issue 17)
    let log = col.log();
    for k in ["-> host.name: Str(", "-> host.ip: Slice([", "-> host.mac: Slice(["] {
        assert!(log.contains(k), "{k} not on the records' resource:\n{log}");
    }
    // exactly one record per alert: the alert was raised once, at exec
    let all = printed(&log);
    for pod in ["api-5101", "api-5201"] {
        let n = all.iter().filter(|p| p.attrs.get("k8s.pod.name") == Some(&format!("Str({pod})"))).count();
        assert_eq!(n, 1, "records of {pod}: {all:?}");
    }
}
