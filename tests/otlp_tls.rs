//! OTLP over mutual TLS to the real collector (issue 13): podtrail's collector (otel-collector/,
//! built by tests/harness/collector.sh) running the shipped otel-collector/config.yaml, whose
//! OTLP receiver requires TLS and a client certificate of the agents' CA, exporting to a real
//! Jaeger (tests/harness/jaeger.sh). Certificates are made here with rcgen.
//!
//! Proved: podtrail's export stage delivers a session over gRPC (gzip) and over HTTP/protobuf
//! with a client certificate, the HTTP run configured only through the standard
//! `OTEL_EXPORTER_OTLP_*` variables, and the spans arrive in Jaeger (decoded by the collector,
//! re-encoded to Jaeger); with a CA that did not sign the collector's certificate, or without a
//! client certificate, the export fails with the TLS error and every span is counted lost.
//! Needs the Go-built collector and Jaeger (cached under PODTRAIL_CACHE); fails loudly without.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use podtrail::capture::event::{ExitStatus, ProcessKey};
use podtrail::export::{ExportConfig, RunExport};
use podtrail::metrics::Metrics;
use podtrail::model::*;
use podtrail::spans::{NoAttributor, SpansConfig};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use support::collector::Collector;

fn issuer(cn: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, cn);
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

/// Writes NAME.crt and NAME.key signed by `ca` into `dir`.
fn leaf(dir: &Path, name: &str, ca: &CertifiedIssuer<'static, KeyPair>, sans: &[&str]) {
    let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, ca).unwrap();
    std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
}

/// One exec session (`sh -c 'echo tls'`) in a container of pod `pod`.
fn session(pod: &str) -> Vec<SessionUpdate> {
    let key = ProcessKey { pid: 4242, start_ns: 1_000_000 };
    let container = ContainerInfo {
        id: "c0ffee".into(),
        pod_namespace: Some("billing".into()),
        pod_name: Some(pod.into()),
        source: "cgroup",
        ..Default::default()
    };
    let now = podtrail::clock::boot_ns_now();
    let mut info = SessionInfo::new(SessionId(key), SessionKind::Exec, container, now - 2_000_000_000);
    info.root_argv = vec![b"sh".to_vec()];
    let img = ImageRecord {
        exec_index: 0,
        start_ns: now - 2_000_000_000,
        end_ns: None,
        inherited: false,
        argv: vec![b"sh".to_vec(), b"-c".to_vec(), b"echo tls".to_vec()].into(),
        argv_truncated: false,
        argv_redacted: 0,
        filename: b"/bin/sh"[..].into(),
        interp: None,
        exe_path: b"/bin/busybox"[..].into(),
        fileless: false,
        tty: false,
        uid: 0,
        euid: 0,
        connects: vec![],
        files: vec![],
        exe_written_ns: None,
        exe_file: (0, 0),
        identity: None,
        program: None,
        connects_over_cap: 0,
        cwd: None,
    };
    let rec = ProcessRecord {
        key,
        parent: None,
        parent_exec_index: None,
        nspid: 7,
        fork_ns: now - 2_000_000_000,
        exit_ns: Some(now - 1_000_000_000),
        exit: Some(ExitStatus::Code(0)),
        from_proc: false,
        images: vec![img],
        leaf: false,
    };
    let mut end = info.clone();
    end.end_ns = Some(now - 1_000_000_000);
    vec![SessionUpdate::Started(info.into()), SessionUpdate::Ended(end.into(), vec![rec])]
}

/// Runs the export stage over `updates` with `cfg` resolved against `env`; its report and
/// metrics.
async fn export(
    updates: Vec<SessionUpdate>,
    cfg: ExportConfig,
    env: &BTreeMap<&str, String>,
) -> (podtrail::export::Delivery, Metrics) {
    let setup = cfg.resolve(|k| env.get(k).cloned()).expect("export config resolves");
    let run = RunExport {
        spans: SpansConfig::default(),
        export: setup,
        boot_id: [0x13; 16],
        clock: podtrail::clock::BootClock::now(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    for u in updates {
        tx.send(u).await.unwrap();
    }
    drop(tx);
    let metrics = Metrics::default();
    let report = podtrail::export::run_export(rx, run, Arc::new(NoAttributor), metrics.clone(), Default::default())
        .await
        .expect("export");
    (report.sinks.iter().find(|(n, _)| *n == "otlp").expect("otlp sink").1, metrics)
}

fn fast(cfg: ExportConfig) -> ExportConfig {
    ExportConfig {
        max_attempts: 2,
        retry_initial_ms: 50,
        retry_max_ms: 100,
        otlp_timeout_ms: Some(5_000),
        shutdown_flush_ms: 15_000,
        console: Some(false),
        ..cfg
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_over_mutual_tls_to_the_real_collector() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let ca = issuer("podtrail OTLP test CA");
    let other = issuer("someone else's CA");
    std::fs::write(pki.join("ca.crt"), ca.pem()).unwrap();
    std::fs::write(pki.join("other-ca.crt"), other.pem()).unwrap();
    leaf(&pki, "collector", &ca, &["127.0.0.1", "localhost"]);
    leaf(&pki, "agent", &ca, &[]);

    let jaeger = support::jaeger::Jaeger::start(&tmp.path().join("jaeger"));
    let col = Collector::start(
        &tmp.path().join("collector"),
        &jaeger.otlp_grpc,
        &[
            ("OTLP_TLS_CERT_FILE", &pki.join("collector.crt")),
            ("OTLP_TLS_KEY_FILE", &pki.join("collector.key")),
            ("OTLP_TLS_CLIENT_CA_FILE", &pki.join("ca.crt")),
        ],
    );
    let grpc_url = format!("https://{}", col.get("COLLECTOR_OTLP_GRPC"));
    let http_url = col.get("COLLECTOR_OTLP_HTTP");
    assert!(http_url.starts_with("https://"), "{http_url}");
    let no_env = BTreeMap::new();

    // 1. gRPC, gzip, certificates from the config
    let grpc = ExportConfig {
        otlp_endpoint: Some(grpc_url.clone()),
        otlp_protocol: Some("grpc".into()),
        otlp_compression: Some("gzip".into()),
        otlp_ca: Some(pki.join("ca.crt")),
        otlp_client_cert: Some(pki.join("agent.crt")),
        otlp_client_key: Some(pki.join("agent.key")),
        ..Default::default()
    };
    let (d, _) = export(session("tls-grpc"), fast(grpc.clone()), &no_env).await;
    assert!(d.exported >= 2 && d.lost() == 0, "gRPC over mTLS: {d:?}\n{}", col.log());

    // 2. HTTP/protobuf, configured only by the standard variables
    let env: BTreeMap<&str, String> = [
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", format!("{http_url}/v1/traces")),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf".into()),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.join("ca.crt").display().to_string()),
        ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", pki.join("agent.crt").display().to_string()),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", pki.join("agent.key").display().to_string()),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "5000".into()),
    ]
    .into_iter()
    .collect();
    let (d, _) = export(session("tls-http"), fast(ExportConfig::default()), &env).await;
    assert!(d.exported >= 2 && d.lost() == 0, "HTTP over mTLS: {d:?}\n{}", col.log());

    // both arrived, decoded by the collector and passed on to Jaeger
    for pod in ["tls-grpc", "tls-http"] {
        let traces = jaeger.wait_for(60, pod, |j| {
            let t = j.search_tags(&[("k8s.pod.name", pod)]);
            (!t.is_empty()).then_some(t)
        });
        let spans = jaeger.trace(&traces[0]).expect("the trace");
        assert!(spans.iter().any(|s| s.tag("process.command_args").is_some_and(|a| a.contains("echo tls"))), "{pod}");
    }

    // 3. a CA that did not sign the collector's certificate: a clear error, every span lost
    let wrong = ExportConfig { otlp_ca: Some(pki.join("other-ca.crt")), ..grpc.clone() };
    let target = wrong.resolve(|_| None).unwrap().otlp.unwrap();
    let mut exp =
        podtrail::export::otlp::GrpcTraces::new(&target, &opentelemetry_sdk::Resource::builder_empty().build())
            .expect("builds (connects lazily)");
    use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
    let span = opentelemetry_sdk::trace::SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes([7; 16]),
            SpanId::from_bytes([7; 8]),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        ),
        parent_span_id: SpanId::INVALID,
        parent_span_is_remote: false,
        span_kind: SpanKind::Internal,
        name: "probe".into(),
        start_time: std::time::SystemTime::now(),
        end_time: std::time::SystemTime::now(),
        attributes: vec![],
        dropped_attributes_count: 0,
        events: Default::default(),
        links: Default::default(),
        status: Status::Unset,
        instrumentation_scope: podtrail::spans::build::scope(),
    };
    let err = exp.export_spans(&[span]).await.expect_err("an unknown issuer is refused");
    // e.g. "... gRPC code: Unavailable: transport error: invalid peer certificate: UnknownIssuer"
    assert!(err.contains("invalid peer certificate: UnknownIssuer"), "the error names the TLS failure: {err}");
    let (d, metrics) = export(session("tls-wrong-ca"), fast(wrong), &no_env).await;
    assert_eq!(d.exported, 0, "{d:?}");
    assert!(d.lost() >= 2, "{d:?}");
    assert_eq!(metrics.lost_count("export_failed") + metrics.lost_count("shutdown"), d.lost());

    // 4. no client certificate: the collector refuses the handshake
    let anonymous = ExportConfig { otlp_client_cert: None, otlp_client_key: None, ..grpc };
    let (d, _) = export(session("tls-anonymous"), fast(anonymous), &no_env).await;
    assert_eq!(d.exported, 0, "a client without a certificate is refused: {d:?}");
    assert!(d.lost() >= 2);
    assert!(jaeger.search_tags(&[("k8s.pod.name", "tls-wrong-ca")]).is_empty());
    assert!(jaeger.search_tags(&[("k8s.pod.name", "tls-anonymous")]).is_empty());
}
