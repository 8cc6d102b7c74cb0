//! In-process OTLP receivers built from the OTLP protobuf definitions (gRPC with tonic's
//! generated `TraceServiceServer`, HTTP/protobuf with axum), and the run helper.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use podtrail::clock::BootClock;
use podtrail::export::{ExportConfig, ExportReport, RunExport};
use podtrail::metrics::Metrics;
use podtrail::model::SessionUpdate;
use podtrail::spans::{Attributor, SpansConfig};
use prost::Message;

/// Everything a receiver got.
#[derive(Clone, Default)]
pub struct Received {
    pub requests: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    /// Raw HTTP bodies (what was on the wire).
    pub bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Refuse (gRPC UNAVAILABLE / HTTP 503) any request holding a span with this name.
    pub refuse_span: Arc<Mutex<Option<String>>>,
    pub refused: Arc<Mutex<u64>>,
}

impl Received {
    pub fn spans(&self) -> Vec<Span> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.resource_spans.iter())
            .flat_map(|rs| rs.scope_spans.iter())
            .flat_map(|ss| ss.spans.clone())
            .collect()
    }

    pub fn resource_attr(&self, key: &str) -> Option<String> {
        let reqs = self.requests.lock().unwrap();
        let rs = reqs.first()?.resource_spans.first()?;
        rs.resource.as_ref()?.attributes.iter().find(|kv| kv.key == key).map(|kv| value(kv.value.as_ref()))
    }

    fn refuses(&self, r: &ExportTraceServiceRequest) -> bool {
        let Some(name) = self.refuse_span.lock().unwrap().clone() else { return false };
        let hit =
            r.resource_spans.iter().flat_map(|rs| &rs.scope_spans).flat_map(|ss| &ss.spans).any(|s| s.name == name);
        if hit {
            *self.refused.lock().unwrap() += 1;
        }
        hit
    }
}

pub fn value(v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::ArrayValue(a)) => {
            format!("{:?}", a.values.iter().map(|v| value(Some(v))).collect::<Vec<_>>())
        }
        other => format!("{other:?}"),
    }
}

pub fn attr(s: &Span, key: &str) -> Option<String> {
    s.attributes.iter().find(|kv| kv.key == key).map(|kv| value(kv.value.as_ref()))
}

struct Grpc(Received);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let r = req.into_inner();
        if self.0.refuses(&r) {
            return Err(tonic::Status::unavailable("refused by the test"));
        }
        self.0.requests.lock().unwrap().push(r);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

pub async fn grpc_receiver() -> (SocketAddr, Received) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let rec = Received::default();
    let svc = TraceServiceServer::new(Grpc(rec.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(l)),
    );
    (addr, rec)
}

pub async fn http_receiver() -> (SocketAddr, Received) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let rec = Received::default();
    let r2 = rec.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let rec = r2.clone();
            async move {
                assert_eq!(headers.get("content-type").map(|v| v.to_str().unwrap()), Some("application/x-protobuf"));
                let req = ExportTraceServiceRequest::decode(body.as_ref()).expect("protobuf body");
                if rec.refuses(&req) {
                    return (axum::http::StatusCode::SERVICE_UNAVAILABLE, Vec::new());
                }
                rec.bodies.lock().unwrap().push(body.to_vec());
                rec.requests.lock().unwrap().push(req);
                (axum::http::StatusCode::OK, ExportTraceServiceResponse { partial_success: None }.encode_to_vec())
            }
        }),
    );
    tokio::spawn(async move { axum::serve(l, app).await });
    (addr, rec)
}

pub fn run_config(export: ExportConfig, spans: SpansConfig) -> RunExport {
    RunExport {
        spans,
        export: export.resolve(|_| None).expect("valid export config"),
        boot_id: [0xb0; 16],
        clock: BootClock::fixed(1_700_000_000_000_000_000),
    }
}

/// Feeds `updates` through `run_export` (the real task, real sinks) and closes the channel.
pub async fn export(
    updates: Vec<SessionUpdate>,
    cfg: RunExport,
    attributor: Arc<dyn Attributor>,
    metrics: Metrics,
) -> ExportReport {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let task = tokio::spawn(podtrail::export::run_export(rx, cfg, attributor, metrics, Default::default()));
    for u in updates {
        tx.send(u).await.unwrap();
    }
    drop(tx);
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("export finished")
        .expect("task")
        .expect("export built")
}

/// A python with `opentelemetry-proto`, from tests/harness/pyenv.sh. Fails (never skips)
/// when it cannot be had.
pub fn python() -> String {
    let script = format!("{}/tests/harness/pyenv.sh", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("bash").arg(&script).output().unwrap_or_else(|e| panic!("{script}: {e}"));
    assert!(
        out.status.success(),
        "{script} failed (python3/pip needed for the independent OTLP decoder):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Runs a python snippet with `stdin` and returns stdout.
pub fn run_python(code: &str, stdin: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new(python())
        .args(["-c", code])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}
