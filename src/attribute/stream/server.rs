//! The receiver's stream endpoint: `GET /v1/records?node=N&since=S&instance=I`, answered with
//! a long-lived chunked body of newline-delimited JSON ([`super::wire::Line`]).
//!
//! In: subscriptions (TLS and the client certificate are [`crate::attribute::serve`]'s job:
//! the listener requires a certificate from the configured CA, 401 without one, a failed
//! handshake with a stranger's). Out: a `hello` line, the buffered records after `since`, then
//! live records as they arrive, and a heartbeat when idle.
//! Dropped: nothing here; a subscriber slower than the buffer is told what it missed (`gap`).

use super::nodes::{TokenError, TokenReviewer};
use super::replay::ReplayBuffer;
use super::wire::{self, Line};
use crate::attribute::intake::Peer;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Extension;
use axum::Router;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// Lines per read of the buffer.
const BATCH: usize = 256;

#[derive(Clone, Debug, serde::Deserialize)]
pub struct SubscribeQuery {
    #[serde(default)]
    pub node: String,
    /// Last sequence number the subscriber holds from `instance` (0: none).
    #[serde(default)]
    pub since: u64,
    #[serde(default)]
    pub instance: String,
}

#[derive(Clone)]
struct Shared {
    buffer: Arc<ReplayBuffer>,
    heartbeat: Duration,
    audit: bool,
    /// Proves each subscriber's node from its bearer token; `None`: every subscriber gets
    /// every record (no node filter: one machine, tests, or `agent_auth = "none"`).
    nodes: Option<Arc<TokenReviewer>>,
}

/// Routes `GET /v1/records` to the stream; `heartbeat` is the idle time before a heartbeat line;
/// `audit` says in the hello whether audit events come through this receiver.
pub fn stream_router(buffer: Arc<ReplayBuffer>, heartbeat: Duration, audit: bool) -> Router {
    stream_router_for_nodes(buffer, heartbeat, audit, None)
}

/// [`stream_router`] sending each subscriber only the records of the node its token proves.
pub fn stream_router_for_nodes(
    buffer: Arc<ReplayBuffer>,
    heartbeat: Duration,
    audit: bool,
    nodes: Option<Arc<TokenReviewer>>,
) -> Router {
    Router::new().route("/v1/records", get(subscribe)).with_state(Shared { buffer, heartbeat, audit, nodes })
}

/// Counts the subscriber while its body stream lives.
struct Connected(super::metrics::StreamMetrics);

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.subscribers.dec();
    }
}

struct Cursor {
    buffer: Arc<ReplayBuffer>,
    next: std::vec::IntoIter<Bytes>,
    after: u64,
    /// Sequence number up to which lines count as replayed.
    replay_until: u64,
    wake: tokio::sync::watch::Receiver<u64>,
    heartbeat: Duration,
    /// The subscriber's proven node (`None`: no filter).
    node: Option<Arc<str>>,
    _connected: Connected,
}

async fn subscribe(
    State(st): State<Shared>,
    headers: HeaderMap,
    peer: Option<Extension<Peer>>,
    Query(q): Query<SubscribeQuery>,
) -> Response {
    let node = match &st.nodes {
        None => None,
        Some(reviewer) => {
            let token = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            match reviewer.node_of(token).await {
                Ok(n) => Some(n),
                Err(e) => {
                    let reason = e.reason();
                    match &peer {
                        Some(Extension(p)) => p.refuse(reason),
                        None => tracing::warn!(reason, "subscription refused"),
                    }
                    let code = match e {
                        TokenError::Missing | TokenError::Invalid(_) => StatusCode::UNAUTHORIZED,
                        TokenError::NotAgent(_) | TokenError::NoNode(_) => StatusCode::FORBIDDEN,
                        TokenError::Review(_) => StatusCode::SERVICE_UNAVAILABLE,
                    };
                    return (code, format!("{e}\n")).into_response();
                }
            }
        }
    };
    if let Some(n) = &node {
        if !q.node.is_empty() && q.node != **n {
            tracing::warn!(asked = %q.node, proven = %n, "agent asked for another node's records: it gets its own");
        }
    }
    let buffer = st.buffer.clone();
    let m = buffer.metrics().clone();
    // Another instance's numbers mean nothing here: a restarted receiver starts over at 1.
    let last = buffer.last_seq();
    let since = if q.instance == buffer.instance() && q.since <= last { q.since } else { 0 };
    let first = buffer.after(since, 0);
    m.records_missed.inc_by(first.missed);
    if last > since + first.missed {
        m.replays.inc();
    }
    tracing::info!(node = %q.node, proven_node = node.as_deref().unwrap_or(""), since, last, missed = first.missed, "agent subscribed");
    m.subscribers.inc();
    let hello = wire::encode(&Line::Hello {
        instance: buffer.instance().to_owned(),
        node: q.node.clone(),
        replay_from: since,
        last_seq: last,
        missed: first.missed,
        audit: st.audit,
    });
    let cursor = Cursor {
        wake: buffer.subscribe(),
        buffer,
        next: vec![hello].into_iter(),
        // What the buffer no longer holds was reported in the hello.
        after: since + first.missed,
        replay_until: last,
        heartbeat: st.heartbeat,
        node,
        _connected: Connected(m),
    };
    let body = futures::stream::unfold(cursor, |mut c| async move {
        let line = next_line(&mut c).await;
        Some((Ok::<_, std::convert::Infallible>(line), c))
    });
    ([(header::CONTENT_TYPE, "application/x-ndjson"), (header::CACHE_CONTROL, "no-store")], Body::from_stream(body))
        .into_response()
}

async fn next_line(c: &mut Cursor) -> Bytes {
    loop {
        if let Some(line) = c.next.next() {
            return line;
        }
        // Mark the version seen before reading, so a push between the read and the wait wakes us.
        c.wake.borrow_and_update();
        let batch = c.buffer.after_for(c.after, BATCH, c.node.as_deref());
        let m = c.buffer.metrics();
        if batch.lines.is_empty() && batch.scanned_to > c.after {
            // Only other nodes' records: move past them (saying what fell out of the buffer).
            c.after = batch.scanned_to;
            if batch.missed > 0 {
                m.records_missed.inc_by(batch.missed);
                c.next = vec![wire::encode(&Line::Gap { missed: batch.missed })].into_iter();
            }
            continue;
        }
        if let Some(&(seq, _)) = batch.lines.last() {
            let replayed = batch.lines.iter().filter(|(s, _)| *s <= c.replay_until).count() as u64;
            m.records_streamed.inc_by(batch.lines.len() as u64);
            m.records_replayed.inc_by(replayed);
            let mut lines: Vec<Bytes> = Vec::with_capacity(batch.lines.len() + 1);
            if batch.missed > 0 {
                // Fell behind the buffer while streaming.
                m.records_missed.inc_by(batch.missed);
                lines.push(wire::encode(&Line::Gap { missed: batch.missed }));
            }
            lines.extend(batch.lines.into_iter().map(|(_, l)| l));
            c.after = seq.max(batch.scanned_to);
            c.next = lines.into_iter();
            continue;
        }
        match tokio::time::timeout(c.heartbeat, c.wake.changed()).await {
            // (The cursor holds the buffer, so the sender cannot be gone.)
            Ok(_) => continue,
            Err(_) => return wire::encode(&Line::Heartbeat { last_seq: c.after }),
        }
    }
}
