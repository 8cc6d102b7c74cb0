//! OTLP over gRPC or HTTP/protobuf with opentelemetry-otlp's `SpanExporter`, fed `SpanData`
//! by podtrail's own queue ([`super::queue`]). The exporter's own retries are turned off: the
//! queue retries, so that it can count exactly what was lost.
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
