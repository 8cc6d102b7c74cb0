//! OTLP over gRPC with podtrail's own client ([`GrpcTraces`]: tonic, fed request bodies
//! already encoded by [`super::wire`], so the durable queue's records go out without being
//! decoded), or over HTTP/protobuf with opentelemetry-otlp's `SpanExporter` fed `SpanData`;
//! both by podtrail's own queue ([`super::queue`]). Neither retries on its own: the queue
//! retries, so that it can count exactly what was lost.
//!
//! TLS (an `https://` endpoint): the system's roots or the configured CA bundle, and a client
//! certificate for mutual TLS, read here from the files [`super::config`] resolved (config,
//! else `OTEL_EXPORTER_OTLP_(TRACES_)CERTIFICATE` / `CLIENT_CERTIFICATE` / `CLIENT_KEY`, which
//! the exporter itself does not read). gRPC goes through tonic's rustls, HTTP through a reqwest
//! client built here on a rustls config with the ring provider. Compression: gzip when
//! configured, else whatever `OTEL_EXPORTER_OTLP_(TRACES_)COMPRESSION` tells the exporter.
//!
//! In: a resolved [`OtlpTarget`] and the resource. Out: a ready exporter (spans; or logs, for
//! the alerts, to `OtlpTarget::logs_url` with the same settings) (connects lazily: a
//! wrong CA shows as failed exports, logged with the TLS error and counted as lost spans).

use std::path::Path;
use std::sync::Arc;

use opentelemetry_otlp::{
    Compression, Protocol as OtlpProtocol, RetryPolicy, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_sdk::trace::SpanExporter as _;
use opentelemetry_sdk::Resource;
use tokio_rustls::rustls;

use super::config::{OtlpTarget, Protocol, TlsFiles};

#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("cannot build the OTLP exporter for {url}: {source}")]
    Build { url: String, source: opentelemetry_otlp::ExporterBuildError },
    #[error("OTLP header {0:?} is not a valid gRPC metadata entry")]
    Header(String),
    #[error("OTLP TLS: cannot read {what} {path}: {message}")]
    TlsFile { what: &'static str, path: String, message: String },
    #[error("OTLP TLS: {0}")]
    Tls(String),
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, OtlpError> {
    std::fs::read(path).map_err(|e| OtlpError::TlsFile {
        what,
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// tonic's TLS settings: the CA bundle or the system's roots, the client identity.
fn tonic_tls(files: &TlsFiles) -> Result<tonic::transport::ClientTlsConfig, OtlpError> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let mut tls = ClientTlsConfig::new();
    tls = match &files.ca {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(read("the CA bundle", ca)?)),
        None => tls.with_native_roots(),
    };
    if let Some((cert, key)) = &files.client {
        tls = tls.identity(Identity::from_pem(read("the client certificate", cert)?, read("the client key", key)?));
    }
    Ok(tls)
}

/// A rustls client config for the HTTP exporter (ring provider, as everywhere in podtrail).
fn rustls_config(files: &TlsFiles) -> Result<rustls::ClientConfig, OtlpError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    match &files.ca {
        Some(ca) => {
            let pem = read("the CA bundle", ca)?;
            for c in CertificateDer::pem_slice_iter(&pem) {
                let c = c.map_err(|e| OtlpError::Tls(format!("the CA bundle {}: {e}", ca.display())))?;
                roots.add(c).map_err(|e| OtlpError::Tls(format!("the CA bundle {}: {e}", ca.display())))?;
            }
            if roots.is_empty() {
                return Err(OtlpError::Tls(format!("the CA bundle {} holds no certificate", ca.display())));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(OtlpError::Tls(
                    "no system root certificates found: set export.otlp_ca or OTEL_EXPORTER_OTLP_CERTIFICATE".into(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| OtlpError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    match &files.client {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let pem = read("the client certificate", cert)?;
            let chain = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| OtlpError::Tls(format!("the client certificate {}: {e}", cert.display())))?;
            let k = PrivateKeyDer::from_pem_slice(&read("the client key", key)?)
                .map_err(|e| OtlpError::Tls(format!("the client key {}: {e}", key.display())))?;
            builder.with_client_auth_cert(chain, k).map_err(|e| OtlpError::Tls(format!("the client certificate: {e}")))
        }
    }
}

/// gRPC settings shared by the trace and the log exporter: endpoint, timeout, metadata, TLS,
/// compression; no retries of its own.
fn tonic_settings<B: WithExportConfig + WithTonicConfig>(b: B, url: &str, target: &OtlpTarget) -> Result<B, OtlpError> {
    let mut md = tonic::metadata::MetadataMap::new();
    for (k, v) in &target.headers {
        let key = tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
            .map_err(|_| OtlpError::Header(k.clone()))?;
        let val = v.parse().map_err(|_| OtlpError::Header(k.clone()))?;
        md.insert(key, val);
    }
    let mut b = b
        .with_endpoint(url.to_owned())
        .with_timeout(target.timeout)
        .with_metadata(md)
        .with_retry_policy(RetryPolicy::disabled());
    if let Some(files) = &target.tls {
        b = b.with_tls_config(tonic_tls(files)?);
    }
    if target.gzip == Some(true) {
        b = b.with_compression(Compression::Gzip);
    }
    Ok(b)
}

/// HTTP/protobuf settings shared by the trace and the log exporter: podtrail's own client
/// (one TLS setup: ring, the configured roots; for http:// too, since reqwest is built
/// without a default crypto provider), endpoint, timeout, headers, compression, no retries.
fn http_settings<B: WithExportConfig + WithHttpConfig>(b: B, url: &str, target: &OtlpTarget) -> Result<B, OtlpError> {
    let tls = match &target.tls {
        Some(files) => rustls_config(files)?,
        None => rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| OtlpError::Tls(e.to_string()))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    };
    let client = reqwest::Client::builder()
        .timeout(target.timeout)
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(|e| OtlpError::Tls(format!("HTTP client: {e}")))?;
    let mut b = b
        .with_http_client(client)
        .with_protocol(OtlpProtocol::HttpBinary)
        .with_endpoint(url.to_owned())
        .with_timeout(target.timeout)
        .with_headers(target.headers.clone().into_iter().collect())
        .with_retry_policy(RetryPolicy::disabled());
    if target.gzip == Some(true) {
        b = b.with_compression(Compression::Gzip);
    }
    Ok(b)
}

pub fn exporter(target: &OtlpTarget, resource: &Resource) -> Result<opentelemetry_otlp::SpanExporter, OtlpError> {
    let built = match target.protocol {
        Protocol::Grpc => {
            tonic_settings(opentelemetry_otlp::SpanExporter::builder().with_tonic(), &target.url, target)?.build()
        }
        Protocol::HttpProtobuf => {
            http_settings(opentelemetry_otlp::SpanExporter::builder().with_http(), &target.url, target)?.build()
        }
    };
    let mut exp = built.map_err(|source| OtlpError::Build { url: target.url.clone(), source })?;
    exp.set_resource(resource);
    Ok(exp)
}

/// The log exporter for alerts ([`super::alert_logs`]): the trace exporter's settings, to the
/// logs URL.
pub fn log_exporter(target: &OtlpTarget) -> Result<opentelemetry_otlp::LogExporter, OtlpError> {
    let url = &target.logs_url;
    let built = match target.protocol {
        Protocol::Grpc => tonic_settings(opentelemetry_otlp::LogExporter::builder().with_tonic(), url, target)?.build(),
        Protocol::HttpProtobuf => {
            http_settings(opentelemetry_otlp::LogExporter::builder().with_http(), url, target)?.build()
        }
    };
    built.map_err(|source| OtlpError::Build { url: url.clone(), source })
}

/// podtrail's own OTLP/gRPC trace client: it sends `ExportTraceServiceRequest` bodies that are
/// already encoded ([`super::wire`]: written from the spans without the SDK's conversion, or
/// assembled from the durable queue's records as they are), over the same tonic channel the
/// SDK exporter would build: the same TLS ([`tonic_tls`]), the request timeout, the metadata
/// (`otlp_headers`, then `OTEL_EXPORTER_OTLP_TRACES_HEADERS` or else
/// `OTEL_EXPORTER_OTLP_HEADERS` over them, as the exporter does), gzip when configured or when
/// `OTEL_EXPORTER_OTLP_(TRACES_)COMPRESSION` says so. No retries of its own: the queue's.
pub struct GrpcTraces {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
    metadata: tonic::metadata::MetadataMap,
    /// The resource's and the scopes' parts of every request, encoded once.
    pub heads: super::wire::Heads,
}

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Sends bytes as they are (the body is a whole `ExportTraceServiceRequest`) and decodes the
/// response with prost.
#[derive(Clone, Copy, Default)]
struct Raw;

struct RawEncoder;
struct ResponseDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = bytes::Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: bytes::Bytes, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for ResponseDecoder {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;
    fn decode(&mut self, buf: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Self::Item>, tonic::Status> {
        use prost::Message;
        ExportTraceServiceResponse::decode(buf).map(Some).map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl tonic::codec::Codec for Raw {
    type Encode = bytes::Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;

/// The request metadata: the configured headers, the environment's over them (on the same
/// name the variable wins; `..._TRACES_HEADERS` replaces the generic variable, as in the
/// exporter).
fn metadata(
    target: &OtlpTarget,
    env: impl Fn(&str) -> Option<String>,
) -> Result<tonic::metadata::MetadataMap, OtlpError> {
    let mut all = target.headers.clone();
    let from_env =
        env("OTEL_EXPORTER_OTLP_TRACES_HEADERS").or_else(|| env("OTEL_EXPORTER_OTLP_HEADERS")).unwrap_or_default();
    all.extend(super::config::parse_headers(&from_env).map_err(|e| OtlpError::Header(e.to_string()))?);
    let mut md = tonic::metadata::MetadataMap::new();
    for (k, v) in &all {
        let key = tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
            .map_err(|_| OtlpError::Header(k.clone()))?;
        let val = v.parse().map_err(|_| OtlpError::Header(k.clone()))?;
        md.insert(key, val);
    }
    Ok(md)
}

/// gzip: configured, else the first of `..._TRACES_COMPRESSION`, `..._COMPRESSION` that says
/// `gzip` or `none` (the exporter's reading).
fn gzip(target: &OtlpTarget, env: impl Fn(&str) -> Option<String>) -> bool {
    if target.gzip == Some(true) {
        return true;
    }
    for k in ["OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"] {
        match env(k).map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            Some("gzip") => return true,
            Some("none") => return false,
            _ => {}
        }
    }
    false
}

/// An error and its sources, one line (a TLS failure is in the sources of tonic's status).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cur) = next {
        out.push_str(": ");
        out.push_str(&cur.to_string());
        next = cur.source();
    }
    out
}

impl GrpcTraces {
    /// Connects lazily: a wrong CA or an absent collector shows as failed exports.
    pub fn new(target: &OtlpTarget, resource: &Resource) -> Result<GrpcTraces, OtlpError> {
        Self::with_env(target, resource, |k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    }

    fn with_env(
        target: &OtlpTarget,
        resource: &Resource,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<GrpcTraces, OtlpError> {
        use tonic::codec::CompressionEncoding;
        let build = |e: tonic::transport::Error| OtlpError::Tls(format!("{}: {}", target.url, chain(&e)));
        let mut ep = tonic::transport::Endpoint::from_shared(target.url.clone())
            .map_err(build)?
            .timeout(target.timeout)
            .user_agent(concat!("podtrail/", env!("CARGO_PKG_VERSION")))
            .map_err(build)?;
        if let Some(files) = &target.tls {
            ep = ep.tls_config(tonic_tls(files)?).map_err(build)?;
        }
        let mut grpc = tonic::client::Grpc::new(ep.connect_lazy());
        if gzip(target, &env) {
            grpc = grpc.send_compressed(CompressionEncoding::Gzip).accept_compressed(CompressionEncoding::Gzip);
        }
        Ok(GrpcTraces { grpc, metadata: metadata(target, &env)?, heads: super::wire::Heads::new(resource) })
    }

    /// Sends one encoded request; Ok holds how many spans the backend rejected in a partial
    /// success (0 when it took them all). Those are logged here and counted by the caller, not
    /// retried (as the exporter does: the backend said they will never be taken). The error
    /// names the gRPC code and the cause (TLS, refused).
    pub async fn export(&self, body: bytes::Bytes) -> Result<u64, String> {
        let mut grpc = self.grpc.clone();
        grpc.ready().await.map_err(|e| format!("OTLP/gRPC channel not ready: {}", chain(&e)))?;
        let mut req = tonic::Request::new(body);
        *req.metadata_mut() = self.metadata.clone();
        req.extensions_mut()
            .insert(tonic::GrpcMethod::new("opentelemetry.proto.collector.trace.v1.TraceService", "Export"));
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(EXPORT_PATH);
        match grpc.unary(req, path, Raw).await {
            Ok(resp) => {
                let mut rejected = 0;
                if let Some(p) = resp.into_inner().partial_success {
                    if p.rejected_spans > 0 || !p.error_message.is_empty() {
                        // the backend's text, escaped: it is whatever the peer sent
                        tracing::warn!(
                            rejected_spans = p.rejected_spans,
                            error = %crate::text::escaped(p.error_message.as_bytes()),
                            "OTLP backend rejected part of a request"
                        );
                    }
                    rejected = u64::try_from(p.rejected_spans).unwrap_or(0);
                }
                Ok(rejected)
            }
            Err(status) => {
                let mut msg =
                    format!("OTLP/gRPC export failed with gRPC code {:?}: {}", status.code(), status.message());
                if let Some(src) = std::error::Error::source(&status) {
                    msg.push_str(": ");
                    msg.push_str(&chain(src));
                }
                Err(msg)
            }
        }
    }

    /// [`Self::export`] of spans, encoded here (tests; the queue encodes its batches itself).
    pub async fn export_spans(&mut self, spans: &[opentelemetry_sdk::trace::SpanData]) -> Result<u64, String> {
        let mut batch = super::wire::Batch::default();
        for s in spans {
            batch.push_span(&mut self.heads, s);
        }
        self.export(batch.request(&self.heads)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::config::ExportConfig;

    fn target(cfg: ExportConfig) -> OtlpTarget {
        cfg.resolve(|_| None).unwrap().otlp.unwrap()
    }

    #[test]
    fn headers_and_compression_follow_config_then_the_variables() {
        let mut cfg = ExportConfig { otlp_endpoint: Some("http://127.0.0.1:4317".into()), ..Default::default() };
        cfg.otlp_headers.insert("X-Tenant".into(), "a".into());
        cfg.otlp_headers.insert("x-keep".into(), "k".into());
        let t = target(cfg.clone());
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        let md = metadata(&t, vars(&[])).unwrap();
        assert_eq!(
            (md.get("x-tenant").unwrap(), md.get("x-keep").unwrap()),
            (&"a".parse().unwrap(), &"k".parse().unwrap())
        );
        // the traces variable wins over the generic one, and over the config on the same name
        let md = metadata(
            &t,
            vars(&[
                ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-tenant=b%20c"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "x-other=1"),
            ]),
        )
        .unwrap();
        assert_eq!(md.get("x-tenant").unwrap(), "b c");
        assert!(md.get("x-other").is_none());
        assert_eq!(md.get("x-keep").unwrap(), "k");
        assert!(metadata(&t, vars(&[("OTEL_EXPORTER_OTLP_HEADERS", "no-equals")])).is_err());

        assert!(!gzip(&t, vars(&[])));
        assert!(gzip(&t, vars(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")])));
        assert!(!gzip(
            &t,
            vars(&[("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "none"), ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")])
        ));
        let gz = target(ExportConfig { otlp_compression: Some("gzip".into()), ..cfg });
        assert!(gzip(&gz, vars(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "none")])));
    }

    /// A backend that takes every request and says it refused 2 spans, as a collector does
    /// for spans it cannot accept (OTLP's partial success).
    struct Refuses2;

    #[tonic::async_trait]
    impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService for Refuses2 {
        async fn export(
            &self,
            _req: tonic::Request<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;
            Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: Some(ExportTracePartialSuccess {
                    rejected_spans: 2,
                    error_message: "too old\n\x1b[2J".into(),
                }),
            }))
        }
    }

    #[tokio::test]
    async fn a_partial_success_reports_the_rejected_spans() {
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        tokio::spawn(tonic::transport::Server::builder().add_service(TraceServiceServer::new(Refuses2)).serve(addr));
        let cfg = ExportConfig { otlp_endpoint: Some(format!("http://{addr}")), ..Default::default() };
        let client = GrpcTraces::new(&target(cfg), &opentelemetry_sdk::Resource::builder_empty().build()).unwrap();
        // an empty request is a valid one; the server may take a moment to listen
        let mut got = Err(String::new());
        for _ in 0..50 {
            got = client.export(bytes::Bytes::new()).await;
            if got.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(got, Ok(2));
    }
}
