//! `admission.k8s.io/v1` reviews of `pods/exec`, `pods/attach` and `pods/portforward` CONNECT.
//!
//! In: an `AdmissionReview` request body. Out: an [`AdmissionRecord`] (effective identity,
//! exec options, no source IP) and the review response: always allowed, same uid, with an
//! audit annotation carrying the trace id podtrail will give the session.
//! Dropped: reviews of other resources or operations (answered allowed, not recorded).
//!
//! The review's `uid` is not the audit id (the API server makes a fresh one for each webhook
//! call and does not send the audit id), so the trace id of an admission-attributed session is
//! derived from that uid with [`super::trace_id_for_audit_id`]; the annotation is what links
//! the cluster's audit log to it.

use super::audit::UserInfo;
use super::record::{Identity, RequestOptions, RequestRecord};
use super::{trace_id_for_audit_id, AttributionSource, RequestKind};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::SystemTime;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReview {
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub request: Option<AdmissionRequest>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default)]
    pub resource: Option<GroupVersionResource>,
    #[serde(default)]
    pub sub_resource: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub operation: Option<String>,
    #[serde(default)]
    pub user_info: UserInfo,
    #[serde(default)]
    pub object: Option<ConnectOptions>,
}

#[derive(Debug, Default, Deserialize)]
pub struct GroupVersionResource {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub resource: Option<String>,
}

/// `PodExecOptions`, `PodAttachOptions` or `PodPortForwardOptions`.
#[derive(Debug, Default, Deserialize)]
pub struct ConnectOptions {
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub container: Option<String>,
    #[serde(default)]
    pub stdin: bool,
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub ports: Vec<i64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdmissionError {
    #[error("AdmissionReview has no request")]
    NoRequest,
    #[error("AdmissionReview request has no uid")]
    NoUid,
}

impl AdmissionError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoRequest => "admission_no_request",
            Self::NoUid => "admission_no_uid",
        }
    }
}

/// One admitted CONNECT to a pod subresource, as the admission webhook saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdmissionRecord {
    /// The review's uid (not an audit id).
    pub uid: String,
    pub kind: RequestKind,
    pub namespace: Option<String>,
    pub pod_name: Option<String>,
    /// The effective identity: the impersonated one when the client used `--as`.
    pub user: Identity,
    pub options: RequestOptions,
    /// When podtrail received the review (the API server sends no time).
    pub received_at: SystemTime,
    /// The webhook's client proved no identity (see [`RequestRecord::unverified`]).
    pub unverified: bool,
}

impl AdmissionRecord {
    /// The record in a review, or `Ok(None)` for a review podtrail does not record.
    pub fn from_review(review: &AdmissionReview, received_at: SystemTime) -> Result<Option<Self>, AdmissionError> {
        let req = review.request.as_ref().ok_or(AdmissionError::NoRequest)?;
        let uid = req.uid.clone().filter(|u| !u.is_empty()).ok_or(AdmissionError::NoUid)?;
        let is_pods = req.resource.as_ref().and_then(|r| r.resource.as_deref()) == Some("pods");
        let kind = req.sub_resource.as_deref().and_then(RequestKind::from_subresource);
        let kind = match (is_pods, req.operation.as_deref(), kind) {
            (true, Some("CONNECT"), Some(k @ (RequestKind::Exec | RequestKind::Attach | RequestKind::PortForward))) => {
                k
            }
            _ => return Ok(None),
        };
        let o = req.object.as_ref();
        let options = RequestOptions {
            command: o.map(|o| o.command.clone()).unwrap_or_default(),
            container: o.and_then(|o| o.container.clone()).filter(|c| !c.is_empty()),
            ephemeral_containers: Vec::new(),
            stdin: o.is_some_and(|o| o.stdin),
            tty: o.is_some_and(|o| o.tty),
            ports: o.map(|o| o.ports.iter().filter_map(|p| u16::try_from(*p).ok()).collect()).unwrap_or_default(),
        };
        Ok(Some(Self {
            uid,
            kind,
            namespace: req.namespace.clone(),
            pod_name: req.name.clone(),
            user: req.user_info.clone().into(),
            options,
            received_at,
            unverified: false,
        }))
    }

    /// The trace id the session will get, announced in the audit annotation.
    pub fn trace_id(&self) -> [u8; 16] {
        trace_id_for_audit_id(&self.uid)
    }

    pub fn to_record(&self) -> RequestRecord {
        RequestRecord {
            audit_id: self.uid.clone(),
            source: AttributionSource::Admission,
            kind: self.kind,
            namespace: self.namespace.clone(),
            pod_name: self.pod_name.clone(),
            pod_uid: None,
            options: self.options.clone(),
            user: self.user.clone(),
            impersonated: None,
            source_ips: Vec::new(),
            user_agent: None,
            received: Some(self.received_at),
            started: None,
            completed: None,
            response_code: None,
            // One review per request: a retried review dedupes like a repeated audit stage.
            stages: super::audit::Stage::RequestReceived.bit(),
            unverified: self.unverified,
        }
    }
}

/// The response to a review: always allowed, the request's uid, and when given a trace id the
/// audit annotation `annotation_key` (the API server prefixes it with the webhook's name).
pub fn review_response(review: &AdmissionReview, trace_id: Option<[u8; 16]>, annotation_key: &str) -> Value {
    let uid = review.request.as_ref().and_then(|r| r.uid.clone()).unwrap_or_default();
    let mut response = json!({ "uid": uid, "allowed": true });
    if let Some(t) = trace_id {
        response["auditAnnotations"] = json!({ annotation_key: hex::encode(t) });
    }
    json!({
        "apiVersion": review.api_version.as_deref().unwrap_or("admission.k8s.io/v1"),
        "kind": review.kind.as_deref().unwrap_or("AdmissionReview"),
        "response": response,
    })
}
