//! What podtrail sends over OTLP, as receivers built from the OTLP protobuf definitions see it
//! (gRPC and HTTP/protobuf), and as Python's `opentelemetry-proto` (a decoder we did not
//! write) decodes the same bytes; and the OTLP/JSON file.

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use podtrail::export::ExportConfig;
use podtrail::metrics::Metrics;
use podtrail::spans::SpansConfig;
use support::otlp::*;

fn alice_attributor() -> Arc<dyn podtrail::spans::Attributor> {
    Arc::new(|_: &podtrail::model::SessionInfo| Some(support::sessions::alice()))
}

/// The shell session's tree as received: name -> parent name, for the session's trace.
fn tree(spans: &[opentelemetry_proto::tonic::trace::v1::Span]) -> Vec<(String, String)> {
    let by_id: HashMap<Vec<u8>, &str> = spans.iter().map(|s| (s.span_id.clone(), s.name.as_str())).collect();
    spans
        .iter()
        .filter(|s| hex::encode(&s.trace_id) == "4b5f3c7e8d2a4f199c3e2a1b0d9e8f70")
        .map(|s| {
            (
                match (s.name.as_str(), attr(s, "server.address"), attr(s, "server.port")) {
                    // a connect is named `connect`; its destination is in server.*
                    ("connect", Some(a), Some(p)) => format!("connect {a}:{p}#"),
                    _ => format!("{}#{}", s.name, attr(s, "process.pid").unwrap_or_default()),
                },
                by_id.get(&s.parent_span_id).copied().unwrap_or("-").to_owned(),
            )
        })
        .collect()
}

fn check_shell_session(rec: &Received) {
    let spans = rec.spans();
    let t = tree(&spans);
    for (child, parent) in [
        ("kubectl exec#", "-"),
        ("sh#100", "kubectl exec"),
        ("sh#100", "sh"),
        ("wget#101", "sh"),
        ("tar#102", "sh"),
        ("connect 10.244.1.5:8080#", "wget"),
        ("ls#104", "env"),
    ] {
        assert!(t.contains(&(child.to_string(), parent.to_string())), "{child} under {parent} in {t:?}");
    }
    let wget = spans.iter().find(|s| s.name == "wget").unwrap();
    assert_eq!(attr(wget, "process.executable.path").as_deref(), Some("/bin/busybox"));
    assert_eq!(attr(wget, "k8s.container.name").as_deref(), Some("api"));
    assert_eq!(attr(wget, "user.name").as_deref(), Some("alice@example.com"));
    assert_eq!(wget.kind, 1, "INTERNAL");
    // every connect is named `connect` (one operation in Jaeger, one series in span
    // metrics); the destination is in server.*
    let connects: Vec<_> = spans.iter().filter(|s| attr(s, "server.address").is_some()).collect();
    assert!(connects.len() >= 2 && connects.iter().all(|c| c.name == "connect"), "{connects:?}");
    let connect = connects.iter().find(|s| attr(s, "server.address").as_deref() == Some("10.244.1.5")).unwrap();
    assert_eq!(connect.kind, 3, "CLIENT");
    assert_eq!(attr(connect, "server.port").as_deref(), Some("8080"));
    // status ERROR for a refused connect, not for `sh -c 'exit 3'`
    let refused = connects.iter().find(|s| attr(s, "podtrail.network.outcome").as_deref() == Some("refused")).unwrap();
    assert_eq!(refused.status.as_ref().map(|s| s.code), Some(2), "ERROR: {refused:?}");
    let exit3 = spans.iter().find(|s| attr(s, "process.exit.code").as_deref() == Some("3")).unwrap();
    assert_ne!(exit3.status.as_ref().map(|s| s.code).unwrap_or(0), 2, "a non-zero exit is not an error: {exit3:?}");
    assert_eq!(attr(wget, "container.image.name").as_deref(), Some("registry.example:5000/billing/api:1.4.2"));
    assert_eq!(attr(wget, "process.real_user.id").as_deref(), Some("0"));
    // Times are the events' times, not the export's.
    assert_eq!(wget.start_time_unix_nano, 1_700_000_000_000_000_000 + 12 * support::sessions::S);
    let root = spans.iter().find(|s| s.name == "kubectl exec").unwrap();
    assert!(root.parent_span_id.is_empty());
    assert_eq!(root.kind, 2, "SERVER: a request is behind an attributed exec");
    assert_eq!(attr(root, "user.roles").as_deref(), Some("[\"system:authenticated\", \"sre\"]"));
    assert_eq!(rec.resource_attr("service.name").as_deref(), Some("podtrail"));
    assert_eq!(rec.resource_attr("k8s.cluster.name").as_deref(), Some("test-cluster"));
    // The agent's own run is recorded.
    assert!(spans.iter().any(|s| s.name == "podtrail agent start"));
    assert!(spans.iter().any(|s| s.name == "podtrail agent"));
}

fn spans_cfg() -> SpansConfig {
    SpansConfig { cluster_name: "test-cluster".into(), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_receiver_gets_the_session_tree() {
    let (addr, rec) = grpc_receiver().await;
    let cfg = ExportConfig {
        otlp_endpoint: Some(format!("http://{addr}")),
        otlp_protocol: Some("grpc".into()),
        ..Default::default()
    };
    let metrics = Metrics::default();
    let report =
        export(support::sessions::shell_session(), run_config(cfg, spans_cfg()), alice_attributor(), metrics.clone())
            .await;
    assert_eq!(report.lost(), 0, "{report:?}");
    check_shell_session(&rec);
    let sent = rec.spans().len() as u64;
    assert_eq!(report.sinks[0].1.exported, sent);
    assert_eq!(metrics.spans_exported.get(), sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_receiver_and_python_decode_the_same_bytes() {
    let (addr, rec) = http_receiver().await;
    let cfg = ExportConfig {
        otlp_endpoint: Some(format!("http://{addr}")),
        otlp_protocol: Some("http/protobuf".into()),
        ..Default::default()
    };
    let report = export(
        support::sessions::shell_session(),
        run_config(cfg, spans_cfg()),
        alice_attributor(),
        Metrics::default(),
    )
    .await;
    assert_eq!(report.lost(), 0, "{report:?}");
    check_shell_session(&rec);

    // The raw bodies, length-prefixed, decoded by opentelemetry-proto for Python.
    let mut stdin = Vec::new();
    for b in rec.bodies.lock().unwrap().iter() {
        stdin.extend_from_slice(&(b.len() as u32).to_be_bytes());
        stdin.extend_from_slice(b);
    }
    let code = r#"
import sys, struct
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as t
data = sys.stdin.buffer.read()
i = 0
while i < len(data):
    (n,) = struct.unpack(">I", data[i:i+4]); i += 4
    r = t.ExportTraceServiceRequest(); r.ParseFromString(data[i:i+n]); i += n
    for rs in r.resource_spans:
        for ss in rs.scope_spans:
            for s in ss.spans:
                attrs = {a.key: a.value for a in s.attributes}
                pid = attrs["process.pid"].int_value if "process.pid" in attrs else ""
                print(f"{s.name}#{pid} {s.trace_id.hex()} {s.span_id.hex()} {s.parent_span_id.hex()} {s.start_time_unix_nano}")
"#;
    let py = run_python(code, &stdin);
    let mut from_python: Vec<String> = py.lines().map(str::to_owned).collect();
    let mut from_rust: Vec<String> = rec
        .spans()
        .iter()
        .map(|s| {
            format!(
                "{}#{} {} {} {} {}",
                s.name,
                attr(s, "process.pid").unwrap_or_default(),
                hex::encode(&s.trace_id),
                hex::encode(&s.span_id),
                hex::encode(&s.parent_span_id),
                s.start_time_unix_nano
            )
        })
        .collect();
    from_python.sort();
    from_rust.sort();
    assert!(from_python.len() > 10);
    assert_eq!(from_python, from_rust);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_json_file_is_one_request_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spans.jsonl");
    let cfg = ExportConfig { file: Some(path.clone()), batch_spans: 4, ..Default::default() };
    let report = export(
        support::sessions::shell_session(),
        run_config(cfg, spans_cfg()),
        alice_attributor(),
        Metrics::default(),
    )
    .await;
    assert_eq!(report.lost(), 0);
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() > 3, "several batches, one line each");
    // Python's protobuf JSON parser accepts every line as an ExportTraceServiceRequest, and the
    // ids are OTLP/JSON hex (not proto3 base64).
    let code = r#"
import sys, json
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as t
n = 0
for line in sys.stdin:
    json_format.Parse(line, t.ExportTraceServiceRequest())
    for rs in json.loads(line)["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for s in ss["spans"]:
                assert len(s["traceId"]) == 32 and int(s["traceId"], 16) >= 0, s["traceId"]
                assert len(s["spanId"]) == 16
                n += 1
print(n)
"#;
    let n: u64 = run_python(code, text.as_bytes()).trim().parse().unwrap();
    assert_eq!(n, report.sinks[0].1.exported);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_prints_the_session_tree() {
    use opentelemetry_sdk::trace::SpanExporter;
    let stage_spans = {
        let ctx = podtrail::spans::BuildCtx::new([1; 16], podtrail::clock::BootClock::fixed(0), SpansConfig::default());
        let mut st = podtrail::spans::SpanStage::new(ctx, alice_attributor());
        let mut out = podtrail::spans::Output::default();
        for u in support::sessions::shell_session() {
            st.update(u, std::time::Instant::now(), &mut out);
        }
        out.spans.into_iter().map(|(_, b)| b.span).collect::<Vec<_>>()
    };
    #[derive(Clone, Default)]
    struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let c = podtrail::export::console::ConsoleExporter::to_writer(Box::new(buf.clone()));
    let (a, b) = stage_spans.split_at(3);
    c.export(a.to_vec()).await.unwrap();
    // issue 14: the session shows as it happens: one line when it is opened, the tree at
    // its root
    let early = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert_eq!(early.lines().count(), 1, "only the opened line before the root:\n{early}");
    assert!(
        early.contains(">> exec session opened  alice@example.com from 203.0.113.7  billing/api-7d9f8-x2x7q"),
        "{early}"
    );
    c.export(b.to_vec()).await.unwrap();
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    for want in [
        "kubectl exec  alice@example.com from 203.0.113.7  billing/api-7d9f8-x2x7q [api]",
        "wget -q -O- http://10.244.1.5:8080/  [pid 101 nspid 11, exit 0, 1.0s]",
        "connect 10.244.1.5:8080 tcp connected (private)",
        "connect 93.184.216.34:443 tcp refused (external)",
        // argv shell-quoted: `sh -c 'exit 3'`, as it ran
        "sh -c 'exit 3'  [pid 100 nspid 10, exit 3",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
}
