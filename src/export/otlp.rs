//! OTLP over gRPC or HTTP/protobuf with opentelemetry-otlp's `SpanExporter`, fed `SpanData`
//! by podtrail's own queue ([`super::queue`]). The exporter's own retries are turned off: the
//! queue retries, so that it can count exactly what was lost.
//!
//! In: a resolved [`OtlpTarget`] and the resource. Out: a ready exporter (connects lazily).

use opentelemetry_otlp::{Protocol as OtlpProtocol, RetryPolicy, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::trace::SpanExporter as _;
use opentelemetry_sdk::Resource;

use super::config::{OtlpTarget, Protocol};

#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("cannot build the OTLP exporter for {url}: {source}")]
    Build { url: String, source: opentelemetry_otlp::ExporterBuildError },
    #[error("OTLP header {0:?} is not a valid gRPC metadata entry")]
    Header(String),
}

pub fn exporter(target: &OtlpTarget, resource: &Resource) -> Result<opentelemetry_otlp::SpanExporter, OtlpError> {
    let built = match target.protocol {
        Protocol::Grpc => {
            let mut md = tonic::metadata::MetadataMap::new();
            for (k, v) in &target.headers {
                let key = tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                    .map_err(|_| OtlpError::Header(k.clone()))?;
                let val = v.parse().map_err(|_| OtlpError::Header(k.clone()))?;
                md.insert(key, val);
            }
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(target.url.clone())
                .with_timeout(target.timeout)
                .with_metadata(md)
                .with_retry_policy(RetryPolicy::disabled())
                .build()
        }
        Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(OtlpProtocol::HttpBinary)
            .with_endpoint(target.url.clone())
            .with_timeout(target.timeout)
            .with_headers(target.headers.clone().into_iter().collect())
            .with_retry_policy(RetryPolicy::disabled())
            .build(),
    };
    let mut exp = built.map_err(|source| OtlpError::Build { url: target.url.clone(), source })?;
    exp.set_resource(resource);
    Ok(exp)
}
