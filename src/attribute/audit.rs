//! `audit.k8s.io/v1` events: the wire format, and the request records podtrail keeps from them.
//!
//! In: an `EventList` body (audit webhook) or one `Event` per line (audit log file).
//! Out: a [`RequestRecord`] for each event about `pods/exec`, `pods/attach`,
//! `pods/portforward` or `pods/ephemeralcontainers`, whatever the verb (`create` for SPDY,
//! `get` for WebSocket) and the stage.
//! Dropped: events for any other resource ([`ToRecord::Ignored`]); events without an audit id
//! or with an unknown stage ([`EventError`]). Fields podtrail does not use (request and response
//! bodies, annotations) are skipped by the parser without being kept.

use super::record::{Identity, RequestOptions, RequestRecord};
use super::{AttributionSource, RequestKind};
use crate::text::percent_decode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::time::SystemTime;

/// The audit webhook's POST body.
#[derive(Debug, Deserialize)]
pub struct EventList {
    /// Each item is parsed on its own: one bad event is counted, not fatal to the batch.
    #[serde(default)]
    pub items: Vec<Lenient<AuditEvent>>,
}

/// A value that failed to parse as `T` becomes `None` instead of failing its container.
#[derive(Debug)]
pub struct Lenient<T>(pub Option<T>);

impl<'de, T: DeserializeOwned> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Only one item is held as a `Value` at a time, so a big batch costs one item extra.
        let v = serde_json::Value::deserialize(d)?;
        Ok(Lenient(serde_json::from_value(v).ok()))
    }
}

/// An `audit.k8s.io/v1` `Event`, reduced to the fields attribution uses.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    #[serde(rename = "auditID", default)]
    pub audit_id: Option<String>,
    #[serde(default)]
    pub stage: Option<String>,
    #[serde(default)]
    pub verb: Option<String>,
    #[serde(rename = "requestURI", default)]
    pub request_uri: Option<String>,
    #[serde(default)]
    pub user: UserInfo,
    #[serde(default)]
    pub impersonated_user: Option<UserInfo>,
    #[serde(rename = "sourceIPs", default)]
    pub source_ips: Vec<String>,
    #[serde(default)]
    pub user_agent: Option<String>,
    #[serde(default)]
    pub object_ref: Option<ObjectReference>,
    #[serde(default)]
    pub response_status: Option<ResponseStatus>,
    #[serde(default)]
    pub request_received_timestamp: Option<String>,
    #[serde(default)]
    pub stage_timestamp: Option<String>,
    /// Only the ephemeral-container names are read from a `pods/ephemeralcontainers` body.
    #[serde(default)]
    pub request_object: Option<Lenient<PatchBody>>,
}

#[derive(Debug, Default, Deserialize, Clone)]
pub struct UserInfo {
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub extra: BTreeMap<String, Vec<String>>,
}

impl From<UserInfo> for Identity {
    fn from(u: UserInfo) -> Self {
        Identity { name: u.username, uid: u.uid, groups: u.groups, extra: u.extra }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct ObjectReference {
    #[serde(default)]
    pub resource: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default)]
    pub subresource: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ResponseStatus {
    #[serde(default)]
    pub code: Option<i64>,
}

/// The part of a pod (or strategic-merge patch of one) that names ephemeral containers.
#[derive(Debug, Default, Deserialize)]
pub struct PatchBody {
    #[serde(default)]
    pub spec: Option<PatchSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PatchSpec {
    #[serde(default)]
    pub ephemeral_containers: Vec<NamedContainer>,
}

#[derive(Debug, Default, Deserialize)]
pub struct NamedContainer {
    #[serde(default)]
    pub name: Option<String>,
}

/// Stages of an audited request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    RequestReceived,
    ResponseStarted,
    ResponseComplete,
    Panic,
}

impl Stage {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "RequestReceived" => Some(Self::RequestReceived),
            "ResponseStarted" => Some(Self::ResponseStarted),
            "ResponseComplete" => Some(Self::ResponseComplete),
            "Panic" => Some(Self::Panic),
            _ => None,
        }
    }

    pub fn bit(self) -> u8 {
        match self {
            Self::RequestReceived => 1,
            Self::ResponseStarted => 2,
            Self::ResponseComplete => 4,
            Self::Panic => 8,
        }
    }
}

/// Why an event about a relevant resource could not become a record.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    #[error("audit event has no auditID")]
    MissingAuditId,
    #[error("audit event has no stage or an unknown one: {0:?}")]
    BadStage(Option<String>),
    #[error("audit event timestamp {0:?} is not RFC 3339")]
    BadTimestamp(String),
}

impl EventError {
    /// Label for the rejected-records counter.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingAuditId => "missing_audit_id",
            Self::BadStage(_) => "bad_stage",
            Self::BadTimestamp(_) => "bad_timestamp",
        }
    }
}

/// The outcome of looking at one event.
#[derive(Debug, PartialEq, Eq)]
pub enum ToRecord {
    /// Not about a pod subresource podtrail attributes.
    Ignored,
    Record(Box<RequestRecord>, Stage),
}

impl AuditEvent {
    /// The subresource this event is about, from `objectRef` or else from `requestURI`.
    fn target(&self) -> (Option<String>, Option<String>, Option<String>, Option<String>) {
        let from_uri = self.request_uri.as_deref().map(parse_pod_path).unwrap_or_default();
        let (mut resource, mut ns, mut name, mut sub) = from_uri;
        if let Some(o) = &self.object_ref {
            if o.resource.is_some() {
                resource = o.resource.clone();
                sub = o.subresource.clone();
            }
            ns = o.namespace.clone().or(ns);
            name = o.name.clone().or(name);
        }
        (resource, ns, name, sub)
    }

    /// Turn this event into a record (consuming its fields).
    pub fn into_record(self, source: AttributionSource) -> Result<ToRecord, EventError> {
        let (resource, ns, name, sub) = self.target();
        let kind = match (resource.as_deref(), sub.as_deref().and_then(RequestKind::from_subresource)) {
            (Some("pods"), Some(kind)) => kind,
            _ => return Ok(ToRecord::Ignored),
        };
        let audit_id = match self.audit_id {
            Some(id) if !id.is_empty() => id,
            _ => return Err(EventError::MissingAuditId),
        };
        let stage =
            self.stage.as_deref().and_then(Stage::parse).ok_or_else(|| EventError::BadStage(self.stage.clone()))?;
        let received = parse_time(self.request_received_timestamp.as_deref())?;
        let stage_time = parse_time(self.stage_timestamp.as_deref())?;
        let mut options = self.request_uri.as_deref().map(parse_query).unwrap_or_default();
        if let Some(Lenient(Some(body))) = self.request_object {
            options.ephemeral_containers = body
                .spec
                .map(|s| s.ephemeral_containers.into_iter().filter_map(|c| c.name).collect())
                .unwrap_or_default();
        }
        let code = self.response_status.and_then(|s| s.code).and_then(|c| u16::try_from(c).ok());
        let record = RequestRecord {
            audit_id,
            source,
            kind,
            namespace: ns,
            pod_name: name,
            pod_uid: self.object_ref.and_then(|o| o.uid).filter(|u| !u.is_empty()),
            options,
            user: self.user.into(),
            impersonated: self.impersonated_user.map(Identity::from),
            source_ips: self.source_ips,
            user_agent: self.user_agent,
            received: received.or(if stage == Stage::RequestReceived { stage_time } else { None }),
            // ResponseStarted means the stream opened only with its 101: a real API server
            // also sends ResponseStarted, with 403, for an exec RBAC denies (tests/cluster).
            started: if stage == Stage::ResponseStarted && !matches!(code, Some(c) if c >= 400) {
                stage_time
            } else {
                None
            },
            completed: if stage == Stage::ResponseComplete { stage_time } else { None },
            response_code: if stage == Stage::RequestReceived { None } else { code },
            stages: stage.bit(),
            unverified: false,
        };
        Ok(ToRecord::Record(Box::new(record), stage))
    }
}

/// RFC 3339 with any fraction (the API server writes microseconds).
pub fn parse_time(s: Option<&str>) -> Result<Option<SystemTime>, EventError> {
    match s {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse::<jiff::Timestamp>()
            .map(|t| Some(SystemTime::from(t)))
            .map_err(|_| EventError::BadTimestamp(s.to_owned())),
    }
}

/// `(resource, namespace, name, subresource)` from `/api/v1/namespaces/NS/pods/NAME/SUB?...`.
pub fn parse_pod_path(uri: &str) -> (Option<String>, Option<String>, Option<String>, Option<String>) {
    let path = uri.split('?').next().unwrap_or("");
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        ["api", "v1", "namespaces", ns, "pods", name, sub, ..] => (
            Some("pods".into()),
            Some(percent_decode(ns, false)),
            Some(percent_decode(name, false)),
            Some(percent_decode(sub, false)),
        ),
        _ => (None, None, None, None),
    }
}

/// The exec/attach/port-forward options carried in the query string of `requestURI`.
pub fn parse_query(uri: &str) -> RequestOptions {
    let mut opts = RequestOptions::default();
    let Some((_, query)) = uri.split_once('?') else { return opts };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v, true);
        match percent_decode(k, true).as_str() {
            "command" => opts.command.push(v),
            // The API server converts a repeated string parameter by taking the first value.
            "container" if opts.container.is_none() && !v.is_empty() => opts.container = Some(v),
            "stdin" => opts.stdin = parse_bool(&v),
            "tty" => opts.tty = parse_bool(&v),
            "ports" => opts.ports.extend(v.split(',').filter_map(|p| p.trim().parse::<u16>().ok())),
            _ => {}
        }
    }
    opts
}

/// Go's `strconv.ParseBool`, false for anything it would reject.
fn parse_bool(v: &str) -> bool {
    matches!(v, "1" | "t" | "T" | "true" | "TRUE" | "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(json: &str) -> Vec<AuditEvent> {
        let list: EventList = serde_json::from_str(json).expect("fixture is an EventList");
        list.items.into_iter().map(|i| i.0.expect("fixture events parse")).collect()
    }

    fn record(ev: AuditEvent) -> (RequestRecord, Stage) {
        match ev.into_record(AttributionSource::AuditWebhook).expect("valid event") {
            ToRecord::Record(r, s) => (*r, s),
            ToRecord::Ignored => panic!("fixture event ignored"),
        }
    }

    #[test]
    fn websocket_exec_parses_command_container_flags_and_times() {
        let mut evs = events(include_str!("../../tests/fixtures/audit/exec_websocket.json"));
        assert_eq!(evs.len(), 4);
        let cm = evs.remove(0);
        assert_eq!(cm.into_record(AttributionSource::AuditWebhook), Ok(ToRecord::Ignored));
        let (r, stage) = record(evs.remove(1));
        assert_eq!(stage, Stage::ResponseStarted);
        assert_eq!(r.kind, RequestKind::Exec);
        assert_eq!(r.options.command, vec!["sh", "-c", "echo hi"]);
        assert_eq!(r.options.container.as_deref(), Some("api"));
        assert!(r.options.stdin && r.options.tty);
        assert_eq!((r.namespace.as_deref(), r.pod_name.as_deref()), (Some("billing"), Some("api-7d9c")));
        assert_eq!(r.user.name.as_deref(), Some("john.doe@example.com"));
        assert_eq!(r.user.groups, vec!["dev", "system:authenticated"]);
        assert_eq!(r.response_code, Some(101));
        let micros = |t: SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() % 1_000_000;
        assert_eq!(micros(r.received.unwrap()), 123_456);
        assert_eq!(micros(r.started.unwrap()), 161_032);
    }

    #[test]
    fn spdy_exec_is_matched_on_subresource_not_verb() {
        let evs = events(include_str!("../../tests/fixtures/audit/exec_spdy.json"));
        for ev in evs {
            let (r, _) = record(ev);
            assert_eq!(r.kind, RequestKind::Exec);
            assert_eq!(r.options.command, vec!["cat", "/etc/passwd"]);
        }
    }

    #[test]
    fn query_decoding_handles_escapes_repeats_and_garbage() {
        let o = parse_query("/x?command=a%20b&command=c+d&command=%zz&command=%&container=one&container=two&tty=1&stdin=false&ports=80,443&ports=x");
        assert_eq!(o.command, vec!["a b", "c d", "%zz", "%"]);
        assert_eq!(o.container.as_deref(), Some("one"));
        assert!(o.tty && !o.stdin);
        assert_eq!(o.ports, vec![80, 443]);
        assert_eq!(percent_decode("%C3%A9%FF", true), "é\u{FFFD}");
    }

    #[test]
    fn missing_audit_id_and_unknown_stage_are_errors() {
        let mut ev = events(include_str!("../../tests/fixtures/audit/attach.json")).remove(0);
        ev.stage = Some("Sideways".into());
        assert!(matches!(ev.into_record(AttributionSource::AuditLog), Err(EventError::BadStage(_))));
        let mut ev = events(include_str!("../../tests/fixtures/audit/attach.json")).remove(0);
        ev.audit_id = None;
        assert_eq!(ev.into_record(AttributionSource::AuditLog), Err(EventError::MissingAuditId));
    }

    #[test]
    fn ephemeral_container_names_come_from_the_logged_patch() {
        // recorded from a real `kubectl debug -it --container=debugger` (tests/cluster): the API
        // server logs the patch's body only at ResponseComplete
        let mut evs = events(include_str!("../../tests/fixtures/audit/ephemeral_debug.json"));
        let (received, _) = record(evs.remove(0));
        assert_eq!(received.kind, RequestKind::Debug);
        assert!(received.options.ephemeral_containers.is_empty());
        let (complete, _) = record(evs.remove(0));
        assert_eq!(complete.kind, RequestKind::Debug);
        assert_eq!(complete.options.ephemeral_containers, vec!["debugger"]);
    }

    #[test]
    fn malformed_batch_is_an_error_not_a_panic() {
        assert!(serde_json::from_str::<EventList>(include_str!("../../tests/fixtures/audit/malformed.json")).is_err());
        // One bad item leaves the others.
        let list: EventList =
            serde_json::from_str(r#"{"items":[{"auditID":5},{"auditID":"a","stage":"RequestReceived"}]}"#).unwrap();
        assert!(list.items[0].0.is_none());
        assert!(list.items[1].0.is_some());
    }

    proptest::proptest! {
        #[test]
        fn any_request_uri_parses_without_panic(uri in ".*") {
            let _ = parse_query(&uri);
            let _ = parse_pod_path(&uri);
        }
    }
}
