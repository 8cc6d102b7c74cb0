//! The receiver → agent stream on the wire: newline-delimited JSON, one [`Line`] per line.
//!
//! In: a [`RequestRecord`] stage as the receiver's store accepted it. Out: the same record,
//! field for field, in the agent (times as RFC 3339 with nanoseconds, so the agent's dedupe
//! key (audit id, received time, stage) is the receiver's exactly).
//! Dropped: a line that does not parse, or names an unknown source, kind or stage, is counted
//! by the subscriber (`lines_malformed`) and skipped; unknown line types are skipped, so a newer
//! receiver can add some.

use super::super::audit::Stage;
use super::super::record::{Identity, RequestOptions, RequestRecord};
use super::super::{AttributionSource, RequestKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::SystemTime;

/// Longest line either end handles (4 MiB). The receiver does not stream a record whose line
/// is longer (`records_too_large`), and an agent skips one it gets anyway (`lines_too_long`)
/// and reads on: one huge record never stalls a stream. An audit event the API server sends
/// with truncation on is at most 100 KiB, and a record is smaller than its event.
pub const MAX_LINE: usize = 4 << 20;

/// One line of the stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Line {
    /// First line of every response. `instance` changes when the receiver restarts (its
    /// sequence starts again at 1); `missed` counts records the subscriber asked for that the
    /// bounded replay buffer no longer held. `audit`: audit events come through this receiver
    /// (absent from older receivers: false).
    Hello {
        instance: String,
        node: String,
        replay_from: u64,
        last_seq: u64,
        missed: u64,
        #[serde(default)]
        audit: bool,
    },
    /// One stage of one request. `seq` grows by one per record within an instance.
    Record { seq: u64, stage: String, record: WireRecord },
    /// The subscriber fell behind by more than the replay buffer while streaming.
    Gap { missed: u64 },
    /// Sent when nothing else was for a while, so both sides notice a dead connection.
    Heartbeat { last_seq: u64 },
    #[serde(other)]
    Unknown,
}

/// [`RequestRecord`] with serde; see its fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireRecord {
    pub audit_id: String,
    pub source: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ephemeral_containers: Vec<String>,
    #[serde(default)]
    pub stdin: bool,
    #[serde(default)]
    pub tty: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    pub user: WireIdentity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impersonated: Option<WireIdentity>,
    #[serde(default)]
    pub source_ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_code: Option<u16>,
    /// See [`RequestRecord::unverified`]; absent means verified.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unverified: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WireIdentity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

/// Why a streamed record was not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("unknown {0} {1:?}")]
    Unknown(&'static str, String),
    #[error("bad timestamp {0:?}")]
    Time(String),
}

pub fn stage_name(s: Stage) -> &'static str {
    match s {
        Stage::RequestReceived => "RequestReceived",
        Stage::ResponseStarted => "ResponseStarted",
        Stage::ResponseComplete => "ResponseComplete",
        Stage::Panic => "Panic",
    }
}

fn source_from(s: &str) -> Option<AttributionSource> {
    [AttributionSource::AuditWebhook, AttributionSource::AuditLog, AttributionSource::Admission]
        .into_iter()
        .find(|x| x.as_str() == s)
}

fn kind_from(s: &str) -> Option<RequestKind> {
    [RequestKind::Exec, RequestKind::Attach, RequestKind::Debug, RequestKind::PortForward]
        .into_iter()
        .find(|x| x.as_str() == s)
}

fn time_out(t: Option<SystemTime>) -> Option<String> {
    t.and_then(|t| jiff::Timestamp::try_from(t).ok()).map(|t| t.to_string())
}

fn time_in(s: Option<String>) -> Result<Option<SystemTime>, WireError> {
    s.map(|s| s.parse::<jiff::Timestamp>().map(SystemTime::from).map_err(|_| WireError::Time(s))).transpose()
}

impl From<&Identity> for WireIdentity {
    fn from(i: &Identity) -> Self {
        Self { name: i.name.clone(), uid: i.uid.clone(), groups: i.groups.clone(), extra: i.extra.clone() }
    }
}

impl From<WireIdentity> for Identity {
    fn from(i: WireIdentity) -> Self {
        Self { name: i.name, uid: i.uid, groups: i.groups, extra: i.extra }
    }
}

impl From<&RequestRecord> for WireRecord {
    fn from(r: &RequestRecord) -> Self {
        Self {
            audit_id: r.audit_id.clone(),
            source: r.source.as_str().to_owned(),
            kind: r.kind.as_str().to_owned(),
            namespace: r.namespace.clone(),
            pod_name: r.pod_name.clone(),
            pod_uid: r.pod_uid.clone(),
            command: r.options.command.clone(),
            container: r.options.container.clone(),
            ephemeral_containers: r.options.ephemeral_containers.clone(),
            stdin: r.options.stdin,
            tty: r.options.tty,
            ports: r.options.ports.clone(),
            user: (&r.user).into(),
            impersonated: r.impersonated.as_ref().map(Into::into),
            source_ips: r.source_ips.clone(),
            user_agent: r.user_agent.clone(),
            received: time_out(r.received),
            started: time_out(r.started),
            completed: time_out(r.completed),
            response_code: r.response_code,
            unverified: r.unverified,
        }
    }
}

impl WireRecord {
    /// The record and the stage it carries, as the receiver's store accepted them.
    pub fn into_record(self, stage: &str) -> Result<(RequestRecord, Stage), WireError> {
        let stage = Stage::parse(stage).ok_or_else(|| WireError::Unknown("stage", stage.to_owned()))?;
        let source = source_from(&self.source).ok_or(WireError::Unknown("source", self.source.clone()))?;
        let kind = kind_from(&self.kind).ok_or(WireError::Unknown("kind", self.kind.clone()))?;
        let rec = RequestRecord {
            audit_id: self.audit_id,
            source,
            kind,
            namespace: self.namespace,
            pod_name: self.pod_name,
            pod_uid: self.pod_uid,
            options: RequestOptions {
                command: self.command,
                container: self.container,
                ephemeral_containers: self.ephemeral_containers,
                stdin: self.stdin,
                tty: self.tty,
                ports: self.ports,
            },
            user: self.user.into(),
            impersonated: self.impersonated.map(Into::into),
            source_ips: self.source_ips,
            user_agent: self.user_agent,
            received: time_in(self.received)?,
            started: time_in(self.started)?,
            completed: time_in(self.completed)?,
            response_code: self.response_code,
            stages: stage.bit(),
            unverified: self.unverified,
        };
        Ok((rec, stage))
    }
}

/// One record line, newline included.
pub fn encode_record(seq: u64, rec: &RequestRecord, stage: Stage) -> bytes::Bytes {
    encode(&Line::Record { seq, stage: stage_name(stage).to_owned(), record: rec.into() })
}

pub fn encode(line: &Line) -> bytes::Bytes {
    let mut v = serde_json::to_vec(line).expect("a Line always serializes");
    v.push(b'\n');
    v.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_record_survives_the_wire_to_the_nanosecond() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_772_460_307, 123_456_789);
        let rec = RequestRecord {
            audit_id: "4b5f3c7e-8d2a-4f19-9c3e-2a1b0d9e8f70".into(),
            source: AttributionSource::AuditWebhook,
            kind: RequestKind::Exec,
            namespace: Some("billing".into()),
            pod_name: Some("api-7d9c".into()),
            pod_uid: None,
            options: RequestOptions {
                command: vec!["sh".into()],
                container: Some("api".into()),
                stdin: true,
                tty: true,
                ..Default::default()
            },
            user: Identity {
                name: Some("john.doe@example.com".into()),
                groups: vec!["dev".into()],
                ..Default::default()
            },
            impersonated: Some(Identity { name: Some("ops".into()), ..Default::default() }),
            source_ips: vec!["10.0.0.1".into(), "66.249.64.55".into()],
            user_agent: Some("kubectl/v1.31".into()),
            received: Some(t),
            started: Some(t + Duration::from_millis(3)),
            completed: None,
            response_code: Some(101),
            stages: Stage::ResponseStarted.bit(),
            unverified: false,
        };
        let line = encode_record(7, &rec, Stage::ResponseStarted);
        assert!(line.ends_with(b"\n"));
        let Line::Record { seq, stage, record } = serde_json::from_slice(&line).unwrap() else {
            panic!("not a record")
        };
        assert_eq!(seq, 7);
        assert_eq!(record.into_record(&stage).unwrap(), (rec, Stage::ResponseStarted));
    }

    #[test]
    fn unknown_line_types_and_values_are_told_apart() {
        assert_eq!(serde_json::from_str::<Line>(r#"{"type":"future","x":1}"#).unwrap(), Line::Unknown);
        let mut w = WireRecord::from(&RequestRecord {
            source: AttributionSource::Admission,
            kind: RequestKind::Attach,
            unverified: true,
            ..RequestRecord::test_exec("a")
        });
        assert!(w.clone().into_record("RequestReceived").is_ok());
        assert_eq!(w.clone().into_record("Later").unwrap_err(), WireError::Unknown("stage", "Later".into()));
        w.kind = "shell".into();
        assert!(w.into_record("RequestReceived").is_err());
    }
}
