//! A session's common attributes, on every one of its spans because Jaeger and TraceQL match
//! one span at a time: the pod's (read from the container's info at each span, plus the
//! `pod_extra` list the info does not hold as it is) and the session's (kind, identity, node
//! user).
//!
//! In: a [`SessionFrame`] or a `SessionInfo` with its optional [`SessionIdentity`]. Out: the
//! `KeyValue`s, their strings shared with the info or the frame (counts, not copies).

use std::sync::Arc;

use opentelemetry::{KeyValue, StringValue, Value};
use opentelemetry_semantic_conventions::attribute as sc;

use super::super::identity::SessionIdentity;
use super::super::keys;
use super::SessionFrame;
use crate::model::{ContainerInfo, SessionInfo, Text};

pub(super) fn strs(v: &[String]) -> Value {
    Value::Array(v.iter().map(|s| StringValue::from(s.clone())).collect::<Vec<_>>().into())
}

/// A string a session's spans all carry (its pod, its identity): reference-counted, so each
/// span's copy of the session's attributes ([`with_common`]) counts a reference instead of
/// allocating and copying every string again (issue 15: a dozen per span).
pub(super) fn shared(v: &str) -> Value {
    Value::String(StringValue::from(Arc::<str>::from(v)))
}

pub(super) fn push_opt(out: &mut Vec<KeyValue>, key: &'static str, v: &Option<String>) {
    if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
        out.push(KeyValue::new(key, shared(v)));
    }
}

/// A container's string: the container info's own allocation, one more count (its text is
/// not copied again for the frame, issue 15).
fn container_text(t: &Text) -> Value {
    Value::String(StringValue::from(t.shared()))
}

fn push_text(out: &mut Vec<KeyValue>, key: &'static str, v: &Option<Text>) {
    if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
        out.push(KeyValue::new(key, container_text(v)));
    }
}

/// A span's attributes: the session's common ones, with room for `more` of its own (one
/// allocation, not a copy that grows at the first push).
pub(crate) fn with_common(frame: &SessionFrame, more: usize) -> Vec<KeyValue> {
    let c = &*frame.container;
    let mut attrs = Vec::with_capacity(pod_len(c, &frame.pod_extra) + frame.session.len() + more);
    push_pod(&mut attrs, c, &frame.pod_extra);
    attrs.extend_from_slice(&frame.session);
    attrs
}

/// A container's string a span carries: set and not empty.
fn present(v: &Option<Text>) -> bool {
    v.as_ref().is_some_and(|v| !v.is_empty())
}

/// How many attributes [`push_pod`] pushes.
fn pod_len(c: &ContainerInfo, extra: &[KeyValue]) -> usize {
    [&c.pod_namespace, &c.pod_name, &c.pod_uid, &c.container_name, &c.node_name, &c.image_name, &c.image_id]
        .into_iter()
        .filter(|v| present(v))
        .count()
        + usize::from(!c.id.is_empty())
        + extra.len()
}

/// The pod's attributes: the container info's strings, its labels, its image's, then the rest
/// of `extra` ([`pod_extra`] of the same info: the labels first).
fn push_pod(out: &mut Vec<KeyValue>, c: &ContainerInfo, extra: &[KeyValue]) {
    push_text(out, sc::K8S_NAMESPACE_NAME, &c.pod_namespace);
    push_text(out, sc::K8S_POD_NAME, &c.pod_name);
    push_text(out, sc::K8S_POD_UID, &c.pod_uid);
    push_text(out, sc::K8S_CONTAINER_NAME, &c.container_name);
    push_text(out, sc::K8S_NODE_NAME, &c.node_name);
    if !c.id.is_empty() {
        out.push(KeyValue::new(sc::CONTAINER_ID, container_text(&c.id)));
    }
    let (labels, rest) = extra.split_at(c.pod_labels.len().min(extra.len()));
    out.extend_from_slice(labels);
    push_text(out, sc::CONTAINER_IMAGE_NAME, &c.image_name);
    push_text(out, sc::CONTAINER_IMAGE_ID, &c.image_id);
    out.extend_from_slice(rest);
}

/// What [`push_pod`] does not read from the info as it is: the labels (one per label of the
/// info, in its order), the image's tag, the workload, the cluster's name.
pub(super) fn pod_extra(cluster: &str, c: &ContainerInfo) -> Vec<KeyValue> {
    let mut out = Vec::with_capacity(c.pod_labels.len() + 3);
    // the label keys and the tag: one string for the node's containers alike (`Text::common`)
    for (k, v) in &c.pod_labels {
        let key = Text::common(&format!("{}.{k}", sc::K8S_POD_LABEL)).shared();
        out.push(KeyValue::new(key, container_text(v)));
    }
    if let Some(tag) = c.image_name.as_deref().and_then(image_tag) {
        let tags = vec![StringValue::from(Text::common(tag).shared())];
        out.push(KeyValue::new(sc::CONTAINER_IMAGE_TAGS, Value::Array(tags.into())));
    }
    let workload_key = match c.workload_kind.as_deref() {
        Some("Deployment") => Some(sc::K8S_DEPLOYMENT_NAME),
        Some("StatefulSet") => Some(sc::K8S_STATEFULSET_NAME),
        Some("DaemonSet") => Some(sc::K8S_DAEMONSET_NAME),
        Some("ReplicaSet") => Some(sc::K8S_REPLICASET_NAME),
        Some("Job") => Some(sc::K8S_JOB_NAME),
        Some("CronJob") => Some(sc::K8S_CRONJOB_NAME),
        _ => None,
    };
    if let Some(k) = workload_key {
        push_text(&mut out, k, &c.workload_name);
    }
    if !cluster.is_empty() {
        out.push(KeyValue::new(sc::K8S_CLUSTER_NAME, shared(cluster)));
    }
    out
}

/// `registry:5000/team/app:1.4@sha256:..` -> `1.4`: the tag is after the last `/`, before
/// any digest; a registry's port is not a tag.
pub fn image_tag(name: &str) -> Option<&str> {
    let name = name.split('@').next().unwrap_or(name);
    let last = name.rsplit('/').next().unwrap_or(name);
    last.split_once(':').map(|(_, t)| t).filter(|t| !t.is_empty())
}

/// The session's identity and pod: on every span, because Jaeger and TraceQL match one span
/// at a time.
pub fn common_attributes(cluster: &str, info: &SessionInfo, who: Option<&SessionIdentity>) -> Vec<KeyValue> {
    let mut out = pod_common(cluster, &info.container);
    out.extend(session_common(info, who));
    out
}

/// The first part of [`common_attributes`]: the container's and the cluster's.
fn pod_common(cluster: &str, c: &ContainerInfo) -> Vec<KeyValue> {
    let extra = pod_extra(cluster, c);
    let mut out = Vec::with_capacity(pod_len(c, &extra));
    push_pod(&mut out, c, &extra);
    out
}

/// The rest of [`common_attributes`]: the session's kind, identity and node user.
pub(super) fn session_common(info: &SessionInfo, who: Option<&SessionIdentity>) -> Vec<KeyValue> {
    let mut out = Vec::with_capacity(if who.is_some() { 10 } else { 4 });
    out.push(KeyValue::new(keys::SESSION_KIND, session_kind(info, who)));
    match who {
        Some(w) => {
            push_opt(&mut out, sc::USER_NAME, &w.user_name);
            push_opt(&mut out, sc::USER_ID, &w.user_uid);
            push_opt(&mut out, sc::CLIENT_ADDRESS, &w.client_address);
            push_opt(&mut out, keys::K8S_AUDIT_ID, &w.audit_id);
            push_opt(&mut out, keys::K8S_IMPERSONATED_NAME, &w.impersonated_name);
            out.push(KeyValue::new(keys::ATTRIBUTION_SOURCE, w.source));
            out.push(KeyValue::new(keys::ATTRIBUTION_CONFIDENCE, w.confidence));
            if w.unverified {
                out.push(KeyValue::new(keys::ATTRIBUTION_VERIFIED, false));
            }
        }
        None => {
            out.push(KeyValue::new(keys::ATTRIBUTION_SOURCE, "none"));
            out.push(KeyValue::new(keys::ATTRIBUTION_CONFIDENCE, "none"));
        }
    }
    if let Some(u) = info.node_user {
        out.push(KeyValue::new(keys::NODE_USER, u as i64));
    }
    out
}

/// exec, debug, node from the kernel's view; attach and port_forward from the request.
pub fn session_kind(info: &SessionInfo, who: Option<&SessionIdentity>) -> &'static str {
    match who.map(|w| w.request_kind) {
        Some(k @ ("attach" | "port_forward")) => k,
        _ => info.kind.as_str(),
    }
}
