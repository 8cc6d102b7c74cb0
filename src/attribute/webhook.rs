//! The audit and admission webhook handlers (HTTP only; TLS is [`super::serve`]'s job).
//!
//! In: `POST` of an `audit.k8s.io/v1` `EventList`, or of an `admission.k8s.io/v1`
//! `AdmissionReview`. Out: records in the [`RecordStore`]; the audit webhook answers 200 only
//! once the whole batch is in the store; the admission webhook always allows.
//! Dropped (counted by reason): bodies over the limit (413: `body_too_large`), bodies that are
//! not JSON of the right shape (400: `malformed_json`), single malformed events in a batch
//! (`malformed_event`, the rest of the batch is kept).

use super::admission::{review_response, AdmissionRecord, AdmissionReview};
use super::audit::EventList;
use super::store::{InsertOutcome, RecordStore};
use super::AttributionSource;
use axum::body::{to_bytes, Body};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::Semaphore;

/// Limits and names of the webhook endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Largest body accepted. The API server drops a whole batch on 413, so this is large;
    /// memory is bounded by it times `max_concurrent_batches`. Default 64 MiB.
    pub max_body_bytes: usize,
    /// Batches read and parsed at once; more wait. Default 4.
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
            max_body_bytes: 64 << 20,
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

fn reject(st: &Shared, code: StatusCode, reason: &'static str, detail: String) -> Response {
    st.store.metrics().reject(reason);
    (code, Json(json!({ "error": reason, "detail": detail }))).into_response()
}

/// Read the body within the limit, holding a permit so at most N bodies are in memory.
async fn read_body(st: &Shared, body: Body) -> Result<(bytes::Bytes, tokio::sync::OwnedSemaphorePermit), Response> {
    let permit = st
        .permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response())?;
    match to_bytes(body, st.cfg.max_body_bytes).await {
        Ok(b) => Ok((b, permit)),
        Err(e) => {
            // to_bytes fails for an over-limit body and for a broken connection alike.
            let too_large = error_chain(&e).contains("length limit exceeded");
            if too_large {
                Err(reject(
                    st,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("body over {} bytes", st.cfg.max_body_bytes),
                ))
            } else {
                Err(reject(st, StatusCode::BAD_REQUEST, "body_read", e.to_string()))
            }
        }
    }
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
    let (body, permit) = match read_body(&st, req.into_body()).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let store = st.store.clone();
    let source = st.cfg.audit_source;
    // Parsing tens of megabytes is CPU work: keep it off the async workers.
    let parsed = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let list: EventList = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
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
        Ok(Err(e)) => reject(&st, StatusCode::BAD_REQUEST, "malformed_json", e),
        Err(e) => reject(&st, StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

async fn admission(State(st): State<Shared>, req: Request) -> Response {
    let (body, _permit) = match read_body(&st, req.into_body()).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let review: AdmissionReview = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return reject(&st, StatusCode::BAD_REQUEST, "malformed_json", e.to_string()),
    };
    match AdmissionRecord::from_review(&review, SystemTime::now()) {
        Ok(Some(rec)) => {
            st.store.insert_admission(&rec);
            Json(review_response(&review, Some(rec.trace_id()), &st.cfg.annotation_key)).into_response()
        }
        Ok(None) => {
            st.store.metrics().ignored.get_or_create(&vec![("source", AttributionSource::Admission.as_str())]).inc();
            Json(review_response(&review, None, &st.cfg.annotation_key)).into_response()
        }
        Err(e) => reject(&st, StatusCode::BAD_REQUEST, e.reason(), e.to_string()),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
