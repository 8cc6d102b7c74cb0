//! The agent's side of the stream: one subscription per receiver replica, each resuming from
//! the last sequence number it got, feeding the agent's [`RecordStore`].
//!
//! In: receiver URLs (`https://host:port`); a host that resolves to several addresses (the
//! headless Service) is one subscription per address, re-resolved periodically. Out: records
//! in the store, through [`RecordSink`], which keeps those whose pod is on this node.
//! Dropped (counted in [`StreamMetrics`]): malformed lines; lines over [`MAX_LINE`], skipped
//! without losing the stream (`lines_too_long`); records about pods on other nodes
//! (after waiting `pending_for` for the pod index to learn a new pod); records the receiver's
//! replay buffer no longer held when this agent asked (`records_gap`). Duplicates (the same
//! record from two replicas, or replayed) are the store's to drop: it dedupes on
//! (audit id, received time, stage).

use super::metrics::StreamMetrics;
use super::wire::Line;
use crate::attribute::audit::Stage;
use crate::attribute::record::RequestRecord;
use crate::attribute::RecordStore;
use crate::text::percent_encode;
use crate::tls::{self, Reloading, TlsError};
use futures::StreamExt;
use hyper_util::rt::TokioIo;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;

use super::wire::MAX_LINE;

/// Where and how to subscribe.
#[derive(Clone, Debug)]
pub struct SubscribeConfig {
    /// `https://host:port` of each receiver (or of a headless Service naming all replicas).
    pub receivers: Vec<String>,
    /// This agent's client certificate and key, and the CA that signed the receivers' (PEM).
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub ca: PathBuf,
    /// Sent to the receiver (its logs); the agent itself keeps its node's records.
    pub node: String,
    pub resolve_every: Duration,
    pub connect_timeout: Duration,
    /// No line (a heartbeat comes every 15 s) for this long: the connection is dead.
    pub read_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// How long a record about a pod the index does not know waits for it to appear.
    pub pending_for: Duration,
    pub max_pending: usize,
    /// A bound service-account token proving this agent's node, read at every connect and sent
    /// as `Authorization: Bearer` (`None`: no token).
    pub token_file: Option<PathBuf>,
}

impl SubscribeConfig {
    pub fn new(receivers: Vec<String>, tls_cert: PathBuf, tls_key: PathBuf, ca: PathBuf, node: String) -> Self {
        Self {
            receivers,
            tls_cert,
            tls_key,
            ca,
            node,
            resolve_every: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(45),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            pending_for: Duration::from_secs(30),
            max_pending: 10_000,
            token_file: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error("receiver stream TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("receiver {0:?} is not an https://host:port URL")]
    BadUrl(String),
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS handshake: {0}")]
    Handshake(std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("receiver answered {0}")]
    Status(u16),
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("stream body: {0}")]
    Body(String),
    #[error("the receiver ended the stream")]
    Ended,
}

/// Should the agent keep this record (is its pod on this node)? `false` also while the pod
/// index has not seen a new pod: the record waits `pending_for` and is asked about again.
pub type PodFilter = Arc<dyn Fn(&RequestRecord) -> bool + Send + Sync>;

/// The agent's store behind a node filter.
pub struct RecordSink {
    store: Arc<RecordStore>,
    keep: Option<PodFilter>,
    pending: Mutex<VecDeque<(Instant, RequestRecord, Stage)>>,
    pending_for: Duration,
    max_pending: usize,
    metrics: StreamMetrics,
}

impl RecordSink {
    /// `keep: None` keeps every record (no pod index: one machine, or tests).
    pub fn new(
        store: Arc<RecordStore>,
        keep: Option<PodFilter>,
        metrics: StreamMetrics,
        pending_for: Duration,
        max_pending: usize,
    ) -> Self {
        Self { store, keep, pending: Mutex::new(VecDeque::new()), pending_for, max_pending, metrics }
    }

    pub fn store(&self) -> &Arc<RecordStore> {
        &self.store
    }

    pub fn metrics(&self) -> &StreamMetrics {
        &self.metrics
    }

    fn insert(&self, rec: RequestRecord, stage: Stage) {
        self.metrics.records_kept.inc();
        self.store.insert_record(rec, stage);
    }

    pub fn accept(&self, rec: RequestRecord, stage: Stage) {
        match &self.keep {
            Some(keep) if !keep(&rec) => {
                // Another node's pod, or one this node's index has not seen yet.
                let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                p.push_back((Instant::now(), rec, stage));
                while p.len() > self.max_pending {
                    p.pop_front();
                    self.metrics.records_other_node.inc();
                }
            }
            _ => self.insert(rec, stage),
        }
    }

    /// Keep the waiting records whose pod the index now knows; drop those past `pending_for`.
    pub fn recheck(&self, now: Instant) {
        let Some(keep) = &self.keep else { return };
        let waiting = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let mut still = VecDeque::new();
        for (at, rec, stage) in waiting {
            if keep(&rec) {
                self.insert(rec, stage);
            } else if now.duration_since(at) >= self.pending_for {
                self.metrics.records_other_node.inc();
            } else {
                still.push_back((at, rec, stage));
            }
        }
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        still.extend(p.drain(..));
        *p = still;
    }
}

/// A parsed receiver URL.
#[derive(Clone, Debug)]
pub struct Target {
    pub url: String,
    pub host: String,
    pub port: u16,
    server_name: ServerName<'static>,
}

pub fn parse_receiver(url: &str) -> Result<Target, SubscribeError> {
    let bad = || SubscribeError::BadUrl(url.to_owned());
    let uri: hyper::Uri = url.parse().map_err(|_| bad())?;
    if uri.scheme_str() != Some("https") {
        return Err(bad());
    }
    let host = uri.host().ok_or_else(bad)?.trim_start_matches('[').trim_end_matches(']').to_owned();
    let server_name = ServerName::try_from(host.clone()).map_err(|_| bad())?;
    Ok(Target { url: url.to_owned(), port: uri.port_u16().unwrap_or(7443), host, server_name })
}

/// The agent's TLS client, following its files: a rotated certificate or CA is used from the
/// next connection on ([`crate::tls`]).
pub type ClientTls = Arc<Reloading<ClientConfig>>;

/// Check the configuration, then subscribe to every receiver until `stop` resolves.
pub fn start(
    cfg: SubscribeConfig,
    sink: Arc<RecordSink>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<JoinHandle<()>, SubscribeError> {
    let tls = tls::reloading_client_config(&cfg.tls_cert, &cfg.tls_key, &cfg.ca, sink.metrics().tls_reloads.clone())?;
    let targets = cfg.receivers.iter().map(|u| parse_receiver(u)).collect::<Result<Vec<_>, _>>()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    Ok(tokio::spawn(async move {
        let mut tasks: Vec<JoinHandle<()>> = targets
            .into_iter()
            .map(|t| tokio::spawn(supervise(t, tls.clone(), cfg.clone(), sink.clone(), stop_rx.clone())))
            .collect();
        let recheck = {
            let (sink, mut stop) = (sink.clone(), stop_rx.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! { _ = tick.tick() => sink.recheck(Instant::now()), _ = stop.changed() => return }
                }
            })
        };
        tasks.push(recheck);
        stop.await;
        let _ = stop_tx.send(true);
        for t in tasks {
            let _ = t.await;
        }
    }))
}

/// One receiver URL: a subscription per address it resolves to, kept in step with DNS.
async fn supervise(
    target: Target,
    tls: ClientTls,
    cfg: SubscribeConfig,
    sink: Arc<RecordSink>,
    mut stop: watch::Receiver<bool>,
) {
    let mut subs: HashMap<SocketAddr, JoinHandle<()>> = HashMap::new();
    loop {
        match tokio::net::lookup_host((target.host.as_str(), target.port)).await {
            Ok(addrs) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                // A replica that is gone takes its address with it (a new pod has a new one).
                subs.retain(|a, t| {
                    let keep = addrs.contains(a);
                    if !keep {
                        tracing::info!(receiver = %target.url, addr = %a, "receiver replica gone");
                        t.abort();
                    }
                    keep
                });
                for a in addrs {
                    subs.entry(a).or_insert_with(|| {
                        tracing::info!(receiver = %target.url, addr = %a, "subscribing to receiver replica");
                        tokio::spawn(subscription(a, target.clone(), tls.clone(), cfg.clone(), sink.clone()))
                    });
                }
            }
            // Keep the subscriptions we have; they reconnect on their own.
            Err(e) => tracing::warn!(receiver = %target.url, error = %e, "cannot resolve receiver"),
        }
        let wait = if subs.is_empty() {
            cfg.backoff_initial.max(Duration::from_secs(1)).min(cfg.resolve_every)
        } else {
            cfg.resolve_every
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => break,
        }
    }
    for (_, t) in subs {
        t.abort();
    }
}

/// Where a subscription resumes.
#[derive(Default)]
struct Resume {
    instance: String,
    last: u64,
}

/// Subscribe to one replica forever (aborted by its supervisor), reconnecting with backoff.
pub async fn subscription(
    addr: SocketAddr,
    target: Target,
    tls: ClientTls,
    cfg: SubscribeConfig,
    sink: Arc<RecordSink>,
) {
    let mut resume = Resume::default();
    let mut backoff = cfg.backoff_initial;
    let mut first = true;
    loop {
        if !first {
            sink.metrics.reconnects.inc();
        }
        first = false;
        let mut streamed = false;
        let r = stream_once(addr, &target, &tls, &cfg, &sink, &mut resume, &mut streamed).await;
        match &r {
            Err(SubscribeError::Status(code)) => {
                tracing::warn!(receiver = %target.url, %addr, code, "receiver refused the subscription")
            }
            Err(e) => {
                tracing::info!(receiver = %target.url, %addr, error = %e, last_seq = resume.last, "receiver stream lost")
            }
            Ok(()) => {}
        }
        if streamed {
            backoff = cfg.backoff_initial;
        }
        tokio::time::sleep(jitter(backoff)).await;
        backoff = (backoff * 2).min(cfg.backoff_max);
    }
}

/// 75%..125% of `d`, so agents that lost the same receiver do not come back in step.
fn jitter(d: Duration) -> Duration {
    let n =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos() % 1000;
    d.mul_f64(0.75 + n as f64 / 2000.0)
}

struct Connected(StreamMetrics, JoinHandle<()>);

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.subscriptions_connected.dec();
        self.1.abort();
    }
}

async fn stream_once(
    addr: SocketAddr,
    target: &Target,
    tls: &ClientTls,
    cfg: &SubscribeConfig,
    sink: &RecordSink,
    resume: &mut Resume,
    streamed: &mut bool,
) -> Result<(), SubscribeError> {
    let tcp = tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| SubscribeError::Timeout("connect"))?
        .map_err(SubscribeError::Connect)?;
    let _ = tcp.set_nodelay(true);
    let tls_stream = tokio::time::timeout(
        cfg.connect_timeout,
        TlsConnector::from(tls.current()).connect(target.server_name.clone(), tcp),
    )
    .await
    .map_err(|_| SubscribeError::Timeout("TLS handshake"))?
    .map_err(SubscribeError::Handshake)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls_stream)).await?;
    let conn_task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let path = format!(
        "/v1/records?node={}&since={}&instance={}",
        percent_encode(&cfg.node),
        resume.last,
        percent_encode(&resume.instance)
    );
    let mut req = hyper::Request::get(path)
        .header(hyper::header::HOST, format!("{}:{}", target.host, target.port))
        .body(axum::body::Body::empty())
        .expect("a valid request");
    if let Some(f) = &cfg.token_file {
        match std::fs::read_to_string(f) {
            Ok(t) => match hyper::header::HeaderValue::from_str(&format!("Bearer {}", t.trim())) {
                Ok(v) => {
                    req.headers_mut().insert(hyper::header::AUTHORIZATION, v);
                }
                Err(_) => tracing::warn!(file = %f.display(), "receiver token is not a header value: sent without"),
            },
            Err(e) => {
                tracing::warn!(file = %f.display(), error = %e, "cannot read the receiver token: subscribing without")
            }
        }
    }
    let resp = tokio::time::timeout(cfg.connect_timeout, sender.send_request(req))
        .await
        .map_err(|_| SubscribeError::Timeout("subscribe"))??;
    if resp.status() != hyper::StatusCode::OK {
        conn_task.abort();
        return Err(SubscribeError::Status(resp.status().as_u16()));
    }
    sink.metrics.subscriptions_connected.inc();
    let _connected = Connected(sink.metrics.clone(), conn_task);
    let mut body = axum::body::Body::new(resp.into_body()).into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    // Inside a line over MAX_LINE: its bytes are thrown away up to its newline.
    let mut skipping = false;
    loop {
        let chunk = match tokio::time::timeout(cfg.read_timeout, body.next()).await {
            Err(_) => return Err(SubscribeError::Timeout("read")),
            Ok(None) => return Err(SubscribeError::Ended),
            Ok(Some(Err(e))) => return Err(SubscribeError::Body(e.to_string())),
            Ok(Some(Ok(c))) => c,
        };
        let mut chunk: &[u8] = &chunk;
        if skipping {
            match chunk.iter().position(|b| *b == b'\n') {
                None => continue,
                Some(nl) => {
                    skipping = false;
                    chunk = &chunk[nl + 1..];
                }
            }
        }
        buf.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(nl) = buf[start..].iter().position(|b| *b == b'\n') {
            if nl > MAX_LINE {
                too_long(sink, &target.url);
            } else {
                handle_line(&buf[start..start + nl], sink, resume);
            }
            *streamed = true;
            start += nl + 1;
        }
        buf.drain(..start);
        if buf.len() > MAX_LINE {
            // Skip it and read on: a resume would only bring the same line back.
            too_long(sink, &target.url);
            buf.clear();
            skipping = true;
        }
    }
}

fn too_long(sink: &RecordSink, receiver: &str) {
    sink.metrics.lines_too_long.inc();
    tracing::warn!(receiver, max = MAX_LINE, "stream line over the limit skipped");
}

fn handle_line(line: &[u8], sink: &RecordSink, resume: &mut Resume) {
    let m = &sink.metrics;
    match serde_json::from_slice::<Line>(line) {
        Ok(Line::Hello { instance, replay_from, missed, audit, .. }) => {
            if audit {
                sink.store.expect_audit();
            }
            // The receiver decides where the replay starts (0 after it restarted).
            resume.instance = instance;
            resume.last = replay_from;
            m.records_gap.inc_by(missed);
        }
        Ok(Line::Record { seq, stage, record }) => {
            m.records_received.inc();
            resume.last = seq;
            match record.into_record(&stage) {
                Ok((rec, stage)) => sink.accept(rec, stage),
                Err(e) => {
                    tracing::debug!(error = %e, "streamed record skipped");
                    m.lines_malformed.inc();
                }
            }
        }
        Ok(Line::Gap { missed }) => {
            m.records_gap.inc_by(missed);
        }
        Ok(Line::Heartbeat { .. } | Line::Unknown) => {}
        Err(e) => {
            tracing::debug!(error = %e, "stream line skipped");
            m.lines_malformed.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receiver_urls_default_to_the_stream_port_and_refuse_plain_http() {
        let t = parse_receiver("https://podtrail-receiver-peers.podtrail.svc").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("podtrail-receiver-peers.podtrail.svc", 7443));
        assert_eq!(parse_receiver("https://127.0.0.1:9000").unwrap().port, 9000);
        assert!(parse_receiver("http://receiver:7443").is_err());
        assert!(parse_receiver("receiver:7443").is_err());
    }
}
