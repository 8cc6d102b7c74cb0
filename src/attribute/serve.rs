//! HTTPS listeners for the webhooks and the record stream: TLS with client-certificate
//! authentication and an allow-list of client identities, or plain HTTP only when asked for
//! and bound to loopback; every connection bounded by [`super::intake`].
//!
//! In: TCP connections. Out: HTTP/1.1 requests, each with its [`Peer`] as an extension, handed
//! to an axum [`Router`]. The certificate, key and client CA are re-read when their files
//! change (checked per new connection, [`crate::tls`]), so a rotated certificate needs no
//! restart.
//! Dropped (counted in `records_rejected` by reason, logged once per peer per interval):
//! connections over the caps (`connections_listener`, `connections_peer`), TLS handshakes that
//! fail or time out (`tls_handshake`: no TLS, a certificate from another CA), requests without
//! a client certificate where one is required (`no_client_cert`, 401), requests from a
//! certificate whose names are not on the allow-list (`peer_not_allowed`, 403), and the
//! timeouts of [`super::intake`].
//!
//! A listener that does not require a client certificate (the admission webhook of a managed
//! cluster, whose API server cannot present one) marks its peers unverified, and the records
//! they send are kept as such (docs/attribution.md, "Unverified admission").

use super::intake::{self, Intake, IntakeLimits, Peer};
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
    /// CA bundle that signs the clients' certificates. Required unless the listener is an
    /// unverified admission webhook.
    pub client_ca: Option<PathBuf>,
}

/// One listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerConfig {
    /// `audit`, `admission` or `stream`: names the listener in logs.
    pub name: &'static str,
    pub listen: SocketAddr,
    /// `None` only together with `plaintext_loopback`.
    pub tls: Option<TlsFiles>,
    /// Serve plain HTTP. Refused unless `listen` is a loopback address.
    pub plaintext_loopback: bool,
    /// Refuse requests that present no client certificate (401). Off only for an admission
    /// webhook configured as unverified.
    pub require_client_cert: bool,
    /// Names a client certificate must carry (its subject CN, a DNS or URI SAN), one of them;
    /// an entry ending in `*` matches by prefix. Empty: any certificate from the client CA.
    pub allowed_clients: Vec<String>,
    pub handshake_timeout: Duration,
    pub limits: IntakeLimits,
}

impl ListenerConfig {
    /// An HTTPS listener requiring client certificates signed by `client_ca`.
    pub fn mtls(listen: SocketAddr, cert: PathBuf, key: PathBuf, client_ca: PathBuf) -> Self {
        Self {
            name: "webhook",
            listen,
            tls: Some(TlsFiles { cert, key, client_ca: Some(client_ca) }),
            plaintext_loopback: false,
            require_client_cert: true,
            allowed_clients: Vec::new(),
            handshake_timeout: Duration::from_secs(10),
            limits: IntakeLimits::default(),
        }
    }

    /// An HTTPS listener that takes clients without a certificate, whose records are kept as
    /// unverified (the admission webhook of a managed cluster).
    pub fn unverified(listen: SocketAddr, cert: PathBuf, key: PathBuf) -> Self {
        let mut l = Self::mtls(listen, cert, key, PathBuf::new());
        l.tls.as_mut().expect("mtls has TLS").client_ca = None;
        l.require_client_cert = false;
        l
    }

    /// Plain HTTP on a loopback address (single machine, tests).
    pub fn plaintext_loopback(listen: SocketAddr) -> Self {
        Self {
            name: "webhook",
            listen,
            tls: None,
            plaintext_loopback: true,
            require_client_cert: false,
            allowed_clients: Vec::new(),
            handshake_timeout: Duration::from_secs(10),
            limits: IntakeLimits::default(),
        }
    }

    pub fn named(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }

    pub fn allowing(mut self, clients: Vec<String>) -> Self {
        self.allowed_clients = clients;
        self
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
    #[error("listener on {0}: {1}")]
    Limits(SocketAddr, String),
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
    intake: Arc<Intake>,
    auth: Arc<Auth>,
    handshake_timeout: Duration,
}

/// How a connection's client is judged.
struct Auth {
    require_client_cert: bool,
    allowed: Vec<String>,
    plaintext: bool,
}

impl Auth {
    fn allows(&self, names: &[String]) -> bool {
        self.allowed.is_empty()
            || names.iter().any(|n| {
                self.allowed.iter().any(|a| match a.strip_suffix('*') {
                    Some(prefix) => n.starts_with(prefix),
                    None => n == a,
                })
            })
    }
}

impl WebhookServer {
    /// Validate the configuration, load the certificates and bind.
    pub async fn bind(cfg: &ListenerConfig, router: Router, metrics: AttributeMetrics) -> Result<Self, ServeError> {
        cfg.limits.validate(cfg.name).map_err(|e| ServeError::Limits(cfg.listen, e))?;
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
        if !cfg.require_client_cert && !cfg.plaintext_loopback {
            tracing::warn!(
                listener = cfg.name,
                listen = %cfg.listen,
                "taking records without client authentication: they are kept as unverified"
            );
        }
        Ok(Self {
            listener,
            tls,
            router,
            intake: Intake::new(cfg.name, cfg.limits.clone(), metrics),
            auth: Arc::new(Auth {
                require_client_cert: cfg.require_client_cert && !cfg.plaintext_loopback,
                allowed: cfg.allowed_clients.clone(),
                plaintext: cfg.plaintext_loopback,
            }),
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
            // Over a cap: counted, and the socket closes as it drops.
            let Some(slot) = self.intake.admit(peer.ip()) else { continue };
            // the certificate files as they are now, for this connection
            let tls = self.tls.as_ref().map(|r| TlsAcceptor::from(r.current()));
            let (router, intake, auth) = (self.router.clone(), self.intake.clone(), self.auth.clone());
            let hs_timeout = self.handshake_timeout;
            tokio::spawn(async move {
                let _slot = slot;
                match tls {
                    None => {
                        let p =
                            Peer { listener: intake.listener, addr: peer, names: Vec::new(), verified: true, intake };
                        serve_conn(tcp, router, p, &auth).await
                    }
                    Some(acceptor) => match tokio::time::timeout(hs_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let names = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .map(|c| certificate_names(c))
                                .unwrap_or_default();
                            let p = Peer { listener: intake.listener, addr: peer, names, verified: false, intake };
                            serve_conn(stream, router, p, &auth).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            intake.refuse(peer.ip(), "tls_handshake");
                        }
                        Err(_) => intake.refuse(peer.ip(), "tls_handshake"),
                    },
                }
            });
        }
    }
}

/// Subject common names, then DNS and URI SANs, of a DER certificate (already verified
/// against the client CA by the handshake). A certificate that does not parse has no names.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else { return Vec::new() };
    let mut names: Vec<String> =
        cert.subject().iter_common_name().filter_map(|a| a.as_str().ok()).map(str::to_owned).collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(s) | GeneralName::URI(s) => names.push((*s).to_owned()),
                _ => {}
            }
        }
    }
    names
}

fn refusal(code: StatusCode, msg: &'static str) -> Response<Body> {
    let mut resp = Response::new(Body::from(msg));
    *resp.status_mut() = code;
    resp.headers_mut().insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
    resp
}

async fn serve_conn<I>(io: I, router: Router, mut peer: Peer, auth: &Auth)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let has_cert = !peer.names.is_empty();
    // Judged once per connection: the certificate cannot change on it.
    let refused = if auth.plaintext {
        None
    } else if !has_cert && auth.require_client_cert {
        Some((
            StatusCode::UNAUTHORIZED,
            "no_client_cert",
            "a client certificate signed by the configured CA is required\n",
        ))
    } else if has_cert && !auth.allows(&peer.names) {
        Some((StatusCode::FORBIDDEN, "peer_not_allowed", "this client certificate is not allowed on this listener\n"))
    } else {
        None
    };
    // Verified: a certificate the listener requires and allows (or loopback plain HTTP).
    peer.verified = auth.plaintext || (auth.require_client_cert && refused.is_none());
    let (io, activity) = intake::watch_io(io);
    let (intake, ip) = (peer.intake.clone(), peer.addr.ip());
    let act = activity.clone();
    let svc = service_fn(move |req: Request<Incoming>| {
        let mut router = router.clone();
        let peer = peer.clone();
        let act = act.clone();
        async move {
            if let Some((code, reason, msg)) = refused {
                peer.refuse(reason);
                return Ok::<_, Infallible>(refusal(code, msg));
            }
            act.begin_request();
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(peer);
            let resp = tower_service::Service::call(&mut router, req).await;
            act.end_request();
            resp
        }
    });
    let conn = http1::Builder::new().serve_connection(TokioIo::new(io), svc);
    tokio::select! {
        r = conn => if let Err(e) = r {
            tracing::debug!(error = %e, "connection ended with an error");
        },
        // The watchdog counted why; dropping the connection closes the socket.
        _ = intake::watchdog(activity, intake, ip) => {}
    }
}
