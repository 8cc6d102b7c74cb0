//! TLS for every podtrail endpoint, server and client alike: PEM certificates and keys read
//! with the `rustls-pki-types` PEM API, rustls configs built from them, and configs that
//! follow their certificate files: cert-manager (and a Kubernetes Secret volume) replaces the
//! files in place, and the listeners and the stream client pick the new ones up without a
//! restart.
//!
//! In: the paths of a certificate, its key and a CA bundle, and how to build a rustls config
//! from them ([`server_config`], [`client_config`], or the caller's own). Out: the current config, re-read when any file's identity (device, inode, size,
//! modification time) changed since the last attempt; checked each time one is asked for (once
//! per new connection: three `stat`s). Dropped: nothing; a set of files that does not build
//! (half written, key and certificate that do not match) is logged and counted
//! (`result="failed"`) and the last good config stays in use until the files change again.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};

type Labels = Vec<(&'static str, &'static str)>;

/// Reloads of one TLS config, counted by `result` (`ok`, `failed`).
pub type Reloads = Family<Labels, Counter>;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("{0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("{0} holds no PEM private key")]
    NoPrivateKey(PathBuf),
    #[error("TLS configuration rejected: {0}")]
    Rejected(String),
}

/// What identifies one version of a file on disk.
type Stamp = Option<(u64, u64, u64, i64, i64)>;

fn stamp(path: &std::path::Path) -> Stamp {
    // stat follows symlinks: a Secret volume swaps its `..data` link, which changes the inode
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

type Build<T> = Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>;

/// A config built from files, rebuilt when they change.
pub struct Reloading<T> {
    what: &'static str,
    files: Vec<PathBuf>,
    build: Build<T>,
    state: Mutex<(Arc<T>, Vec<Stamp>)>,
    reloads: Reloads,
}

impl<T> Reloading<T> {
    /// Builds once now (a failure here is the caller's start-up error). `reloads` counts later
    /// rebuilds by `result` (ok, failed).
    pub fn new(
        what: &'static str,
        files: Vec<PathBuf>,
        build: impl Fn() -> Result<T, TlsError> + Send + Sync + 'static,
        reloads: Reloads,
    ) -> Result<Self, TlsError> {
        let stamps: Vec<Stamp> = files.iter().map(|f| stamp(f)).collect();
        let first = build()?;
        Ok(Self { what, files, build: Box::new(build), state: Mutex::new((Arc::new(first), stamps)), reloads })
    }

    /// The config to use for a new connection: rebuilt first if a file changed.
    pub fn current(&self) -> Arc<T> {
        let stamps: Vec<Stamp> = self.files.iter().map(|f| stamp(f)).collect();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.1 != stamps {
            // tried once per change: a broken set is not re-read on every connection
            st.1 = stamps;
            match (self.build)() {
                Ok(cfg) => {
                    st.0 = Arc::new(cfg);
                    self.reloads.get_or_create(&vec![("result", "ok")]).inc();
                    tracing::info!(what = self.what, files = ?self.files, "TLS certificate files changed: reloaded");
                }
                Err(e) => {
                    self.reloads.get_or_create(&vec![("result", "failed")]).inc();
                    tracing::warn!(what = self.what, error = %e, "TLS certificate files changed but do not load: keeping the previous ones");
                }
            }
        }
        st.0.clone()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::ReadFile { path: path.to_owned(), source })
}

/// Every certificate in a PEM bundle; sections of other kinds are skipped, an unreadable
/// section ends the list (none at all is [`TlsError::NoCertificate`] for the caller).
pub fn certs_from_pem(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem).map_while(Result::ok).collect()
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn key_from_pem(pem: &[u8]) -> Option<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).ok()
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = certs_from_pem(&read(path)?);
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    key_from_pem(&read(path)?).ok_or_else(|| TlsError::NoPrivateKey(path.to_owned()))
}

fn roots(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(ca)? {
        roots.add(c).map_err(|e| TlsError::Rejected(format!("CA {}: {e}", ca.display())))?;
    }
    Ok(roots)
}

/// A server's config (HTTP/1.1). With `client_ca`, client certificates signed by it are
/// verified; a connection without one still completes the handshake (the listener answers it
/// 401 at the HTTP layer, with a clear status and a counted reason), while a certificate not
/// signed by the CA fails the handshake.
pub fn server_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (certs, key) = (load_certs(cert)?, load_key(key)?);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rejected(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Rejected(format!("client CA {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(certs, key).map_err(|e| TlsError::Rejected(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// A client's config (HTTP/1.1): its certificate, and only the given CA trusted.
pub fn client_config(cert: &Path, key: &Path, ca: &Path) -> Result<ClientConfig, TlsError> {
    let mut cfg = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rejected(e.to_string()))?
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| TlsError::Rejected(format!("client certificate {}: {e}", cert.display())))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// [`server_config`], re-read when any of its files changes.
pub fn reloading_server_config(
    what: &'static str,
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    reloads: Reloads,
) -> Result<Reloading<ServerConfig>, TlsError> {
    let (c, k, a) = (cert.to_owned(), key.to_owned(), client_ca.map(Path::to_owned));
    let mut files = vec![c.clone(), k.clone()];
    files.extend(a.clone());
    Reloading::new(what, files, move || server_config(&c, &k, a.as_deref()), reloads)
}

/// [`client_config`], re-read when any of its files changes (the receiver stream's client).
pub fn reloading_client_config(
    cert: &Path,
    key: &Path,
    ca: &Path,
    reloads: Reloads,
) -> Result<Arc<Reloading<ClientConfig>>, TlsError> {
    let (c, k, a) = (cert.to_owned(), key.to_owned(), ca.to_owned());
    let files = vec![c.clone(), k.clone(), a.clone()];
    Ok(Arc::new(Reloading::new("TLS client", files, move || client_config(&c, &k, &a), reloads)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_sections_of_other_kinds_are_skipped_and_garbage_is_no_key() {
        let ca = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
        let pem = format!("{}{}{}", ca.signing_key.serialize_pem(), ca.cert.pem(), ca.cert.pem());
        assert_eq!(certs_from_pem(pem.as_bytes()).len(), 2);
        assert!(key_from_pem(pem.as_bytes()).is_some());
        assert!(certs_from_pem(b"not pem").is_empty());
        assert!(key_from_pem(b"-----BEGIN PRIVATE KEY-----\n!!\n-----END PRIVATE KEY-----\n").is_none());
    }

    #[test]
    fn a_missing_file_is_named_in_the_error() {
        let e = load_certs(Path::new("/nonexistent/podtrail.pem")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/podtrail.pem"), "{e}");
    }
}
