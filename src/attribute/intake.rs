//! Bounds on what a listener takes in: connections per listener and per peer, header and idle
//! timeouts, a memory budget for bodies being read, who the peer is, and a log of refusals that
//! says each peer's trouble once per interval.
//!
//! In: accepted TCP connections (before TLS) and the bytes they carry. Out: a slot per admitted
//! connection ([`Slots::admit`]), an I/O wrapper whose watchdog closes a connection that stalls
//! ([`watch_conn`]), the [`Peer`] of each request (a request extension the handlers read).
//! Dropped (each counted in `podtrail_attribution_records_rejected_total{reason}` and logged
//! once per peer per interval): connections over the listener's or the peer's cap
//! (`connections_listener`, `connections_peer`), a request whose header does not arrive within
//! `header_timeout` of its first byte (`header_timeout`), a connection silent in both
//! directions for `idle_timeout` (`idle_timeout`), a body that would overrun the listener's
//! memory budget (`memory_budget`).

use super::metrics::AttributeMetrics;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Connection and time bounds of one listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntakeLimits {
    /// Connections open at once on the listener; one more is closed at accept.
    pub max_connections: usize,
    /// Connections open at once from one IP address.
    pub max_connections_per_peer: usize,
    /// From the first byte of a request to the end of its header.
    pub header_timeout: Duration,
    /// No byte in either direction for this long closes the connection. Longer than Go's
    /// `http.Transport` keeps an idle connection (90 s), so the API server, not podtrail,
    /// closes an idle keep-alive: a POST it wrote on a connection podtrail just closed would
    /// not be retried.
    pub idle_timeout: Duration,
    /// Bytes of request bodies held at once while they are read (the handlers' body limits
    /// bound one body; this bounds them together).
    pub body_budget_bytes: usize,
}

impl Default for IntakeLimits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            max_connections_per_peer: 32,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            body_budget_bytes: 64 << 20,
        }
    }
}

impl IntakeLimits {
    pub fn validate(&self, what: &str) -> Result<(), String> {
        if self.max_connections == 0 || self.max_connections_per_peer == 0 {
            return Err(format!("{what}: max_connections and max_connections_per_peer must be at least 1"));
        }
        if self.header_timeout.is_zero() || self.idle_timeout.is_zero() {
            return Err(format!("{what}: header and idle timeouts must be above zero"));
        }
        if self.body_budget_bytes == 0 {
            return Err(format!("{what}: body_budget_bytes must be above zero"));
        }
        Ok(())
    }
}

/// Who sent a request: a request extension set by the listener for the handlers.
#[derive(Clone, Debug)]
pub struct Peer {
    /// `audit`, `admission`, `stream`: names the listener in logs.
    pub listener: &'static str,
    pub addr: SocketAddr,
    /// Names in the client certificate (subject CN, then DNS and URI SANs); empty without one.
    pub names: Vec<String>,
    /// The peer proved an allowed identity (or the listener is loopback-only plain HTTP, which
    /// the operator asked for): records it sends are verified.
    pub verified: bool,
    /// The listener's shared state: refusal log and body budget.
    pub intake: Arc<Intake>,
}

impl Peer {
    /// Count and log (once per peer per interval) a refusal of this peer's request.
    pub fn refuse(&self, reason: &'static str) {
        self.intake.refuse(self.addr.ip(), reason);
    }
}

/// State shared by one listener's connections.
pub struct Intake {
    pub listener: &'static str,
    pub limits: IntakeLimits,
    metrics: AttributeMetrics,
    log: RefusalLog,
    slots: Mutex<SlotCounts>,
    budget: Arc<Semaphore>,
}

#[derive(Default)]
struct SlotCounts {
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
}

/// A connection's place in the listener's caps; given back on drop.
pub struct Slot {
    intake: Arc<Intake>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.intake.slots.lock().unwrap_or_else(|p| p.into_inner());
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.per_peer.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                s.per_peer.remove(&self.ip);
            }
        }
    }
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake").field("listener", &self.listener).field("limits", &self.limits).finish()
    }
}

impl Intake {
    pub fn new(listener: &'static str, limits: IntakeLimits, metrics: AttributeMetrics) -> Arc<Self> {
        let budget = Arc::new(Semaphore::new(limits.body_budget_bytes.min(Semaphore::MAX_PERMITS)));
        Arc::new(Self {
            listener,
            limits,
            metrics,
            log: RefusalLog::new(Duration::from_secs(60)),
            slots: Mutex::new(SlotCounts::default()),
            budget,
        })
    }

    pub fn metrics(&self) -> &AttributeMetrics {
        &self.metrics
    }

    /// Count a refusal and log it, once per peer per interval with the count since.
    pub fn refuse(&self, ip: IpAddr, reason: &'static str) {
        self.metrics.reject(reason);
        self.log.note(self.listener, ip, reason);
    }

    /// A slot for a new connection from `ip`, or the reason there is none (counted).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let refused = {
            let mut s = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let mine = s.per_peer.get(&ip).copied().unwrap_or(0);
            if s.total >= self.limits.max_connections {
                Some("connections_listener")
            } else if mine >= self.limits.max_connections_per_peer {
                Some("connections_peer")
            } else {
                s.total += 1;
                s.per_peer.insert(ip, mine + 1);
                None
            }
        };
        match refused {
            Some(reason) => {
                self.refuse(ip, reason);
                None
            }
            None => Some(Slot { intake: self.clone(), ip }),
        }
    }

    /// `n` bytes of the body budget, or `None` when the budget is spent (the caller refuses
    /// with `memory_budget` rather than wait: waiting is what a slow upload would exploit).
    pub fn take_budget(&self, n: usize) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(n).ok()?;
        self.budget.clone().try_acquire_many_owned(n).ok()
    }
}

/// Logs a peer's refusals at most once per interval, with how many were not logged.
struct RefusalLog {
    interval: Duration,
    last: Mutex<HashMap<IpAddr, (Instant, u64)>>,
}

/// Peers remembered by the log; past that the oldest entries are forgotten (a peer forgotten
/// is logged again at its next refusal, which is the safe side).
const LOG_PEERS: usize = 4096;

impl RefusalLog {
    fn new(interval: Duration) -> Self {
        Self { interval, last: Mutex::new(HashMap::new()) }
    }

    fn note(&self, listener: &'static str, ip: IpAddr, reason: &'static str) {
        let now = Instant::now();
        let mut m = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= LOG_PEERS && !m.contains_key(&ip) {
            let interval = self.interval;
            m.retain(|_, (at, _)| now.duration_since(*at) < interval);
            if m.len() >= LOG_PEERS {
                m.clear();
            }
        }
        match m.get_mut(&ip) {
            Some((at, suppressed)) if now.duration_since(*at) < self.interval => *suppressed += 1,
            Some((at, suppressed)) => {
                tracing::warn!(listener, peer = %ip, reason, refused_since_last_log = *suppressed, "request refused");
                *at = now;
                *suppressed = 0;
            }
            None => {
                tracing::warn!(listener, peer = %ip, reason, "request refused");
                m.insert(ip, (now, 0));
            }
        }
    }
}

const IDLE: u8 = 0;
const HEAD: u8 = 1;
const BUSY: u8 = 2;

/// What the watchdog reads: the last byte either way, where the current request is.
pub struct Activity {
    origin: Instant,
    /// Milliseconds since `origin` of the last byte read or written.
    last: AtomicU64,
    /// Milliseconds since `origin` of the first byte of the request being read.
    head_started: AtomicU64,
    phase: AtomicU8,
    head: Notify,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            origin: Instant::now(),
            last: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            phase: AtomicU8::new(IDLE),
            head: Notify::new(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn touch(&self, read: bool) {
        let now = self.now_ms();
        self.last.store(now, Ordering::Relaxed);
        if read && self.phase.compare_exchange(IDLE, HEAD, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            self.head_started.store(now, Ordering::Relaxed);
            self.head.notify_one();
        }
    }

    /// The request's header is in: the handler runs (body timeouts are its job).
    pub fn begin_request(&self) {
        self.phase.store(BUSY, Ordering::Release);
    }

    /// The handler answered: the next byte read starts the next request's header.
    pub fn end_request(&self) {
        self.phase.store(IDLE, Ordering::Release);
    }
}

/// An I/O stream that records its activity for the watchdog.
pub struct Watched<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch(true);
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch(false);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Wrap `io` for the watchdog: returns the stream and its activity record.
pub fn watch_io<I>(io: I) -> (Watched<I>, Arc<Activity>) {
    let activity = Activity::new();
    (Watched { inner: io, activity: activity.clone() }, activity)
}

/// Resolves when the connection must close: a header that took longer than `header_timeout`
/// from its first byte, or `idle_timeout` without a byte either way (each counted). Run it
/// beside the connection and drop the connection when it resolves.
pub async fn watchdog(activity: Arc<Activity>, intake: Arc<Intake>, ip: IpAddr) {
    let (header, idle) =
        (intake.limits.header_timeout.as_millis() as u64, intake.limits.idle_timeout.as_millis() as u64);
    loop {
        let now = activity.now_ms();
        let mut deadline = activity.last.load(Ordering::Relaxed) + idle;
        let in_head = activity.phase.load(Ordering::Acquire) == HEAD;
        if in_head {
            deadline = deadline.min(activity.head_started.load(Ordering::Relaxed) + header);
        }
        if now >= deadline {
            let reason = if in_head && now >= activity.head_started.load(Ordering::Relaxed) + header {
                "header_timeout"
            } else {
                "idle_timeout"
            };
            intake.refuse(ip, reason);
            return;
        }
        let wait = Duration::from_millis(deadline - now);
        // A header that starts while we sleep toward the idle deadline moves the deadline in.
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = activity.head.notified(), if !in_head => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_listener_and_per_peer_are_counted_and_given_back() {
        let m = AttributeMetrics::default();
        let limits = IntakeLimits { max_connections: 3, max_connections_per_peer: 2, ..Default::default() };
        let intake = Intake::new("audit", limits, m.clone());
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = intake.admit(a).expect("first");
        let _a2 = intake.admit(a).expect("second");
        assert!(intake.admit(a).is_none());
        assert_eq!(m.rejected_count("connections_peer"), 1);
        let _b1 = intake.admit(b).expect("another peer");
        assert!(intake.admit(b).is_none());
        assert_eq!(m.rejected_count("connections_listener"), 1);
        drop(a1);
        assert!(intake.admit(b).is_some(), "a closed connection gives its slot back");
    }

    #[test]
    fn the_body_budget_refuses_instead_of_waiting() {
        let limits = IntakeLimits { body_budget_bytes: 100, ..Default::default() };
        let intake = Intake::new("admission", limits, AttributeMetrics::default());
        let held = intake.take_budget(80).expect("fits");
        assert!(intake.take_budget(30).is_none());
        drop(held);
        assert!(intake.take_budget(30).is_some());
    }
}
