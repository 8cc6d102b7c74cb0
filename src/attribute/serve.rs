//! HTTPS listeners for the webhooks: TLS with client-certificate authentication, or plain
//! HTTP only when asked for and bound to loopback.
//!
//! In: TCP connections. Out: HTTP/1.1 requests handed to an axum [`Router`].
//! The certificate, key and client CA are re-read when their files change (checked per new
//! connection, [`crate::tls`]), so a rotated certificate needs no restart.
//! Dropped (counted in `records_rejected`): connections whose TLS handshake fails or times out
//! (`tls_handshake`: no TLS, an untrusted client certificate), and requests without a client
//! certificate where one is required (`no_client_cert`, answered 401).

use super::metrics::AttributeMetrics;
use crate::tls::{self, Reloading, TlsError};
use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// Certificate files of a TLS listener (PEM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA bundle that signs the clients' certificates. Required for the audit webhook.
    pub client_ca: Option<PathBuf>,
}

/// One webhook listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerConfig {
    pub listen: SocketAddr,
    /// `None` only together with `plaintext_loopback`.
    pub tls: Option<TlsFiles>,
    /// Serve plain HTTP. Refused unless `listen` is a loopback address.
    pub plaintext_loopback: bool,
    /// Refuse requests that present no client certificate (401). The audit webhook sets it;
    /// the admission webhook is usually protected by TLS and a network policy instead.
    pub require_client_cert: bool,
    pub handshake_timeout: Duration,
}

impl ListenerConfig {
    /// An HTTPS listener requiring client certificates signed by `client_ca`.
    pub fn mtls(listen: SocketAddr, cert: PathBuf, key: PathBuf, client_ca: PathBuf) -> Self {
        Self {
            listen,
            tls: Some(TlsFiles { cert, key, client_ca: Some(client_ca) }),
            plaintext_loopback: false,
            require_client_cert: true,
            handshake_timeout: Duration::from_secs(10),
        }
    }

    /// Plain HTTP on a loopback address (single machine, tests).
    pub fn plaintext_loopback(listen: SocketAddr) -> Self {
        Self {
            listen,
            tls: None,
            plaintext_loopback: true,
            require_client_cert: false,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("refusing to serve webhooks over plain HTTP on {0}: plain HTTP is only allowed on a loopback address; configure TLS (cert, key, client CA) or listen on 127.0.0.1/::1")]
    PlaintextNotLoopback(SocketAddr),
    #[error("webhook listener on {0} has no TLS certificate and key; configure them, or ask for plain HTTP on loopback explicitly")]
    NoTls(SocketAddr),
    #[error("webhook listener on {0} requires client certificates but has no client CA file configured")]
    NoClientCa(SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// A bound listener, ready to [`run`](WebhookServer::run).
pub struct WebhookServer {
    listener: TcpListener,
    /// Follows the certificate files (cert-manager rotates them): see [`crate::tls`].
    tls: Option<Arc<Reloading<ServerConfig>>>,
    router: Router,
    metrics: AttributeMetrics,
    require_client_cert: bool,
    handshake_timeout: Duration,
}

impl WebhookServer {
    /// Validate the configuration, load the certificates and bind.
    pub async fn bind(cfg: &ListenerConfig, router: Router, metrics: AttributeMetrics) -> Result<Self, ServeError> {
        let tls = match (&cfg.tls, cfg.plaintext_loopback) {
            (_, true) if !cfg.listen.ip().is_loopback() => return Err(ServeError::PlaintextNotLoopback(cfg.listen)),
            (_, true) => None,
            (None, false) => return Err(ServeError::NoTls(cfg.listen)),
            (Some(files), false) => {
                if cfg.require_client_cert && files.client_ca.is_none() {
                    return Err(ServeError::NoClientCa(cfg.listen));
                }
                Some(Arc::new(tls::reloading_server_config(
                    "webhook listener",
                    &files.cert,
                    &files.key,
                    files.client_ca.as_deref(),
                    metrics.tls_reloads.clone(),
                )?))
            }
        };
        let listener =
            TcpListener::bind(cfg.listen).await.map_err(|source| ServeError::Bind { addr: cfg.listen, source })?;
        Ok(Self {
            listener,
            tls,
            router,
            metrics,
            require_client_cert: cfg.require_client_cert && !cfg.plaintext_loopback,
            handshake_timeout: cfg.handshake_timeout,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound TCP listener has an address")
    }

    /// Serve until `shutdown` completes; connections already accepted finish on their own.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                _ = &mut shutdown => return,
                r = self.listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "webhook accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            // the certificate files as they are now, for this connection
            let tls = self.tls.as_ref().map(|r| TlsAcceptor::from(r.current()));
            let (router, metrics) = (self.router.clone(), self.metrics.clone());
            let (require, hs_timeout) = (self.require_client_cert, self.handshake_timeout);
            tokio::spawn(async move {
                match tls {
                    None => serve_conn(tcp, router, true, metrics).await,
                    Some(acceptor) => match tokio::time::timeout(hs_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let has_cert = stream.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
                            serve_conn(stream, router, has_cert || !require, metrics).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                            metrics.reject("tls_handshake");
                        }
                        Err(_) => metrics.reject("tls_handshake"),
                    },
                }
            });
        }
    }
}

async fn serve_conn<I>(io: I, router: Router, authenticated: bool, metrics: AttributeMetrics)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req: Request<Incoming>| {
        let mut router = router.clone();
        let metrics = metrics.clone();
        async move {
            if !authenticated {
                metrics.reject("no_client_cert");
                let mut resp =
                    Response::new(Body::from("a client certificate signed by the configured CA is required\n"));
                *resp.status_mut() = StatusCode::UNAUTHORIZED;
                return Ok::<_, Infallible>(resp);
            }
            tower_service::Service::call(&mut router, req.map(Body::new)).await
        }
    });
    if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(io), svc).await {
        tracing::debug!(error = %e, "webhook connection ended with an error");
    }
}
