//! Loss is counted exactly and marked: a backend that is down loses everything (counted per
//! span); a backend that refuses some requests loses those spans, and the session's root
//! (sent last) says how many.

mod support;

use std::sync::Arc;

use podtrail::export::ExportConfig;
use podtrail::metrics::Metrics;
use podtrail::spans::{NoAttributor, SpansConfig};
use support::otlp::*;

fn fast_retry(endpoint: String, protocol: &str) -> ExportConfig {
    ExportConfig {
        otlp_endpoint: Some(endpoint),
        otlp_protocol: Some(protocol.into()),
        max_attempts: 3,
        retry_initial_ms: 10,
        retry_max_ms: 20,
        otlp_timeout_ms: Some(2000),
        batch_spans: 1,
        ..Default::default()
    }
}

/// Spans the shell session makes, plus the agent's start and run spans.
fn expected_spans() -> u64 {
    let ctx = podtrail::spans::BuildCtx::new([0xb0; 16], podtrail::clock::BootClock::fixed(0), SpansConfig::default());
    let mut st = podtrail::spans::SpanStage::new(ctx, Arc::new(NoAttributor));
    let mut out = podtrail::spans::Output::default();
    for u in support::sessions::shell_session() {
        st.update(u, std::time::Instant::now(), &mut out);
    }
    out.spans.len() as u64 + 2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_down_every_span_is_counted_lost() {
    // A port nobody listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    for proto in ["grpc", "http/protobuf"] {
        let metrics = Metrics::default();
        let report = export(
            support::sessions::shell_session(),
            run_config(fast_retry(format!("http://{addr}"), proto), SpansConfig::default()),
            Arc::new(NoAttributor),
            metrics.clone(),
        )
        .await;
        let d = report.sinks[0].1;
        assert_eq!(d.exported, 0, "{proto}");
        assert_eq!(d.lost(), expected_spans(), "{proto}: every span counted once: {d:?}");
        assert_eq!(
            metrics.lost_count("export_failed") + metrics.lost_count("shutdown") + metrics.lost_count("queue_full"),
            expected_spans(),
            "{proto}"
        );
        assert_eq!(metrics.export_queue_spans.get(), 0, "{proto}: the queue gauge returns to 0");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_spans_are_counted_and_marked_on_the_root() {
    for (proto, (addr, rec)) in [("grpc", grpc_receiver().await), ("http/protobuf", http_receiver().await)] {
        *rec.refuse_span.lock().unwrap() = Some("tar".into());
        let metrics = Metrics::default();
        let report = export(
            support::sessions::shell_session(),
            run_config(fast_retry(format!("http://{addr}"), proto), SpansConfig::default()),
            Arc::new(NoAttributor),
            metrics.clone(),
        )
        .await;
        let d = report.sinks[0].1;
        assert_eq!(d.export_failed, 1, "{proto}: {d:?}");
        assert_eq!(*rec.refused.lock().unwrap(), 3, "{proto}: tried max_attempts times");
        assert_eq!(d.exported, expected_spans() - 1, "{proto}");
        assert_eq!(d.sessions_marked_lost, 1);
        assert_eq!(metrics.lost_count("export_failed"), 1);
        let spans = rec.spans();
        assert!(!spans.iter().any(|s| s.name == "tar"));
        let root = spans.iter().find(|s| s.name == "exec").expect("root arrived");
        assert_eq!(attr(root, "podtrail.session.spans_lost").as_deref(), Some("1"), "{proto}");
        assert_eq!(attr(root, "podtrail.session.incomplete").as_deref(), Some("true"), "{proto}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_loses_spans_but_keeps_the_roots_mark() {
    // Backend down, queue of 2: most spans are refused at the queue, counted as queue_full.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let mut cfg = fast_retry(format!("http://{addr}"), "grpc");
    cfg.queue_spans = 2;
    let metrics = Metrics::default();
    let report = export(
        support::sessions::shell_session(),
        run_config(cfg, SpansConfig::default()),
        Arc::new(NoAttributor),
        metrics.clone(),
    )
    .await;
    let d = report.sinks[0].1;
    assert!(d.queue_full > 0, "{d:?}");
    assert_eq!(d.lost(), expected_spans(), "{d:?}");
    assert_eq!(metrics.lost_count("queue_full"), d.queue_full);
}
