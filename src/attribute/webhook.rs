//! The audit and admission webhook handlers (HTTP only; TLS is [`super::serve`]'s job).
//!
//! In: `POST` of an `audit.k8s.io/v1` `EventList`, or of an `admission.k8s.io/v1`
//! `AdmissionReview`. Out: records in the [`RecordStore`]; the audit webhook answers 200 only
//! once the whole batch is in the store; the admission webhook always allows.
//! Dropped (counted by reason, logged once per peer per interval): bodies over the limit (413:
//! `body_too_large`; the limits and where they come from: [`AUDIT_BODY_LIMIT`],
//! [`ADMISSION_BODY_LIMIT`]), bodies slower than `body_timeout` (408: `body_timeout`), bodies
//! the listener's memory budget cannot hold (503: `memory_budget`), bodies that are not JSON
//! of the right shape (400: `malformed_json`), single malformed events in a batch
//! (`malformed_event`, the rest of the batch is kept). A parse permit is taken only once the
//! body is read, so slow uploads hold no permit a valid review would wait for.

use super::admission::{review_response, AdmissionRecord, AdmissionReview};
use super::audit::EventList;
use super::intake::Peer;
use super::store::{InsertOutcome, RecordStore};
use super::AttributionSource;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The largest audit webhook body: the API server's `--audit-webhook-truncate-max-batch-size`
/// default (10 485 760 bytes, the most a batch may weigh when truncation is on; the deployment
/// guide turns it on), plus 64 KiB for the `EventList` envelope and the separators between its
/// at most `--audit-webhook-batch-max-size` (400) items.
pub const AUDIT_BODY_LIMIT: usize = (10 << 20) + (64 << 10);

/// The largest admission review body: a `CONNECT` review carries the exec options, which come
/// from the request's query string, and the API server reads at most 1 MiB of request line and
/// headers (Go's `http.DefaultMaxHeaderBytes`, which the API server's listener keeps); JSON
/// escaping of what a query string can carry at most doubles it.
pub const ADMISSION_BODY_LIMIT: usize = 2 << 20;

/// Limits and names of the webhook endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Largest audit batch accepted ([`AUDIT_BODY_LIMIT`]); a larger one is answered 413.
    pub max_body_bytes: usize,
    /// Largest admission review accepted ([`ADMISSION_BODY_LIMIT`]).
    pub max_admission_body_bytes: usize,
    /// From the end of the header to the end of the body; a slower upload is answered 408.
    pub body_timeout: Duration,
    /// Bodies parsed at once; more wait, but only once they are read: a slow upload holds no
    /// permit. Default 4.
    pub max_concurrent_batches: usize,
    /// The source recorded for audit events from this endpoint (`audit_webhook`, or
    /// `audit_log` when a receiver forwards a log).
    pub audit_source: AttributionSource,
    /// Audit annotation key in admission responses; the API server stores it as
    /// `<webhook name>/<key>`. Default `trace-id`.
    pub annotation_key: String,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: AUDIT_BODY_LIMIT,
            max_admission_body_bytes: ADMISSION_BODY_LIMIT,
            body_timeout: Duration::from_secs(30),
            max_concurrent_batches: 4,
            audit_source: AttributionSource::AuditWebhook,
            annotation_key: "trace-id".into(),
        }
    }
}

#[derive(Clone)]
struct Shared {
    store: Arc<RecordStore>,
    cfg: WebhookConfig,
    permits: Arc<Semaphore>,
}

/// Routes `POST /` and `POST /audit` to the audit handler.
pub fn audit_router(store: Arc<RecordStore>, cfg: &WebhookConfig) -> Router {
    let shared = shared(store, cfg);
    Router::new()
        .route("/", post(audit))
        .route("/audit", post(audit))
        .layer(DefaultBodyLimit::disable())
        .with_state(shared)
}

/// Routes `POST /`, `POST /admission` and `POST /validate` to the admission handler.
pub fn admission_router(store: Arc<RecordStore>, cfg: &WebhookConfig) -> Router {
    let shared = shared(store, cfg);
    Router::new()
        .route("/", post(admission))
        .route("/admission", post(admission))
        .route("/validate", post(admission))
        .layer(DefaultBodyLimit::disable())
        .with_state(shared)
}

fn shared(store: Arc<RecordStore>, cfg: &WebhookConfig) -> Shared {
    Shared { store, cfg: cfg.clone(), permits: Arc::new(Semaphore::new(cfg.max_concurrent_batches.max(1))) }
}

fn reject(st: &Shared, peer: Option<&Peer>, code: StatusCode, reason: &'static str, detail: String) -> Response {
    match peer {
        Some(p) => p.refuse(reason),
        None => st.store.metrics().reject(reason),
    }
    let mut resp = (code, Json(json!({ "error": reason, "detail": detail }))).into_response();
    if code != StatusCode::BAD_REQUEST {
        // The rest of a refused body is not read: the connection cannot carry another request.
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// A body read within the limit and the time, holding its share of the listener's memory
/// budget.
struct ReadBody {
    bytes: Bytes,
    _budget: Vec<OwnedSemaphorePermit>,
}

/// Read the body within `limit` bytes and `body_timeout`, chunk by chunk against the
/// listener's memory budget. No parse permit is held meanwhile: a slow upload delays no one.
async fn read_body(st: &Shared, peer: Option<&Peer>, req: Request, limit: usize) -> Result<ReadBody, Response> {
    let too_large =
        || reject(st, peer, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("body over {limit} bytes"));
    // A declared length over the limit is refused before a byte of the body is read.
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut stream = req.into_body().into_data_stream();
    let mut buf = BytesMut::new();
    let mut budget = Vec::new();
    let deadline = tokio::time::Instant::now() + st.cfg.body_timeout;
    loop {
        let chunk = match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => {
                return Err(reject(
                    st,
                    peer,
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!("body not received within {:?}", st.cfg.body_timeout),
                ))
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(reject(st, peer, StatusCode::BAD_REQUEST, "body_read", e.to_string())),
            Ok(Some(Ok(c))) => c,
        };
        if buf.len() + chunk.len() > limit {
            return Err(too_large());
        }
        if let Some(p) = peer {
            match p.intake.take_budget(chunk.len()) {
                Some(permit) => budget.push(permit),
                None => {
                    return Err(reject(
                        st,
                        peer,
                        StatusCode::SERVICE_UNAVAILABLE,
                        "memory_budget",
                        "too many request bodies in memory; retry".into(),
                    ))
                }
            }
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(ReadBody { bytes: buf.freeze(), _budget: budget })
}

/// A permit to parse, taken only once the body is in memory.
async fn parse_permit(st: &Shared) -> Result<OwnedSemaphorePermit, Response> {
    st.permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response())
}

#[derive(Default, serde::Serialize)]
struct BatchSummary {
    inserted: u32,
    merged: u32,
    duplicates: u32,
    ignored: u32,
    rejected: u32,
}

async fn audit(State(st): State<Shared>, req: Request) -> Response {
    let peer = req.extensions().get::<Peer>().cloned();
    let body = match read_body(&st, peer.as_ref(), req, st.cfg.max_body_bytes).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let permit = match parse_permit(&st).await {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let store = st.store.clone();
    let source = st.cfg.audit_source;
    // Parsing tens of megabytes is CPU work: keep it off the async workers.
    let parsed = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let list: EventList = serde_json::from_slice(&body.bytes).map_err(|e| e.to_string())?;
        drop(body);
        let mut sum = BatchSummary::default();
        for item in list.items {
            let Some(ev) = item.0 else {
                store.metrics().reject("malformed_event");
                sum.rejected += 1;
                continue;
            };
            match store.insert_audit_event(ev, source) {
                InsertOutcome::Inserted => sum.inserted += 1,
                InsertOutcome::Merged => sum.merged += 1,
                InsertOutcome::Duplicate => sum.duplicates += 1,
                InsertOutcome::Ignored => sum.ignored += 1,
                InsertOutcome::Rejected(_) => sum.rejected += 1,
            }
        }
        Ok::<_, String>(sum)
    })
    .await;
    match parsed {
        Ok(Ok(sum)) => (StatusCode::OK, Json(sum)).into_response(),
        Ok(Err(e)) => reject(&st, peer.as_ref(), StatusCode::BAD_REQUEST, "malformed_json", e),
        Err(e) => reject(&st, peer.as_ref(), StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

async fn admission(State(st): State<Shared>, req: Request) -> Response {
    let peer = req.extensions().get::<Peer>().cloned();
    let body = match read_body(&st, peer.as_ref(), req, st.cfg.max_admission_body_bytes).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let _permit = match parse_permit(&st).await {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let review: AdmissionReview = match serde_json::from_slice(&body.bytes) {
        Ok(r) => r,
        Err(e) => return reject(&st, peer.as_ref(), StatusCode::BAD_REQUEST, "malformed_json", e.to_string()),
    };
    match AdmissionRecord::from_review(&review, SystemTime::now()) {
        Ok(Some(mut rec)) => {
            // Without a peer (a router called directly: tests) the caller vouches for it.
            rec.unverified = peer.as_ref().is_some_and(|p| !p.verified);
            st.store.insert_admission(&rec);
            Json(review_response(&review, Some(rec.trace_id()), &st.cfg.annotation_key)).into_response()
        }
        Ok(None) => {
            st.store.metrics().ignored.get_or_create(&vec![("source", AttributionSource::Admission.as_str())]).inc();
            Json(review_response(&review, None, &st.cfg.annotation_key)).into_response()
        }
        Err(e) => reject(&st, peer.as_ref(), StatusCode::BAD_REQUEST, e.reason(), e.to_string()),
    }
}
