//! Certificates made at test time with rcgen (a CA, leaves signed by it), and a rustls client
//! that trusts a CA and presents an identity if asked: what the TLS listeners and the stream
//! subscription are tested with. Nothing is read from the machine's trust store.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// A self-signed CA named `cn`.
pub fn issuer(cn: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, cn);
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

/// A certificate for `sans` named `cn`, signed by `ca`: (certificate PEM, key PEM).
pub fn leaf(ca: &CertifiedIssuer<'static, KeyPair>, sans: &[&str], cn: &str) -> (String, String) {
    let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

pub fn pem_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    podtrail::tls::certs_from_pem(pem.as_bytes())
}

/// A TLS client that trusts `ca_pem` only and presents `identity` (certificate PEM, key PEM)
/// if any.
pub fn client(ca_pem: &str, identity: Option<&(String, String)>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in pem_certs(ca_pem) {
        roots.add(c).unwrap();
    }
    let b = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match identity {
        Some((cert, key)) => {
            let key = podtrail::tls::key_from_pem(key.as_bytes()).unwrap();
            b.with_client_auth_cert(pem_certs(cert), key).unwrap()
        }
        None => b.with_no_client_auth(),
    })
}

/// A TLS connection to `addr` as a client configured by `cfg`, checking the name `localhost`.
pub async fn connect(
    addr: std::net::SocketAddr,
    cfg: Arc<ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(cfg)
        .connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// One HTTP/1.1 request over TLS with `Connection: close`: (status, raw response). The body is
/// written while the answer is read, as an HTTP client does: a listener may refuse (413, a
/// closed connection) before the body is sent. Err when no status line comes back.
pub async fn request(
    addr: std::net::SocketAddr,
    cfg: Arc<ClientConfig>,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = connect(addr, cfg).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let (mut rd, mut wr) = tokio::io::split(s);
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&out).await;
        let _ = wr.flush().await;
        wr
    });
    let mut raw = Vec::new();
    let _ = rd.read_to_end(&mut raw).await;
    writer.abort();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP response: {text:?}")))?;
    Ok((status, text))
}
