//! A queued span as bytes for the durable queue ([`super::segments`]), and back.
//!
//! In: [`Queued`] (a `SpanData` plus the session it belongs to and whether it is the session's
//! root). Out: a fixed 13-byte [`Meta`] and the span as an OTLP protobuf `Span` message.
//! Nothing is dropped here: a record that does not decode is reported to the caller, which
//! counts it.
//!
//! Why OTLP protobuf rather than a serde form of our own: a record is then a `Span` message
//! that an OTLP request carries as it is (the OTLP/gRPC sink sends the records without
//! decoding them: [`super::wire`]), written straight from the span ([`super::wire::encode_span`],
//! the same message `opentelemetry_proto`'s conversion encodes to), the schema is versioned
//! upstream with forward compatible field numbers (a queue left by an older podtrail still
//! reads), and a segment can be inspected with `protoc --decode`. The reverse conversion (for
//! the other sinks and `podtrail show`) is ours (below) and covers
//! every field the forward one writes. The instrumentation scope is not part of a proto
//! `Span` (it lives on its `ScopeSpans`): podtrail has one scope, re-applied on decode. The
//! session and root flag stay outside the protobuf in [`Meta`], so eviction can account for
//! lost spans per session by reading 13 bytes per record, not decoding spans.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{Array, KeyValue, StringValue, Value};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue as PKeyValue};
use opentelemetry_proto::tonic::trace::v1::{span, status, Span};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use prost::Message;

use super::queue::Queued;
use crate::capture::event::ProcessKey;
use crate::model::SessionId;
use crate::spans::keys;

/// What the queue needs to know about a record without decoding the span.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub session: Option<SessionId>,
    pub root: bool,
}

pub const META_LEN: usize = 13;

impl Meta {
    pub fn of(q: &Queued) -> Meta {
        Meta { session: q.session, root: q.root }
    }

    /// The metadata as it leads a record: flags, the session's pid and start (little endian).
    pub fn bytes(&self) -> [u8; META_LEN] {
        let flags = (self.root as u8) | ((self.session.is_some() as u8) << 1);
        let (pid, start) = self.session.map(|s| (s.0.pid, s.0.start_ns)).unwrap_or((0, 0));
        let mut b = [0u8; META_LEN];
        b[0] = flags;
        b[1..5].copy_from_slice(&pid.to_le_bytes());
        b[5..13].copy_from_slice(&start.to_le_bytes());
        b
    }

    pub fn read(b: &[u8]) -> Option<Meta> {
        if b.len() < META_LEN {
            return None;
        }
        let pid = u32::from_le_bytes(b[1..5].try_into().ok()?);
        let start_ns = u64::from_le_bytes(b[5..13].try_into().ok()?);
        let session = (b[0] & 2 != 0).then_some(SessionId(ProcessKey { pid, start_ns }));
        Some(Meta { session, root: b[0] & 1 != 0 })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("record shorter than its metadata")]
    Short,
    #[error("span protobuf: {0}")]
    Proto(#[from] prost::DecodeError),
    #[error("span has a malformed {0}")]
    Field(&'static str),
}

/// A record's body: metadata, then the span's protobuf, written straight from the span's
/// strings ([`super::wire::encode_span`]: no proto `Span` built in between).
pub fn encode(q: &Queued) -> Vec<u8> {
    // allocated once, at the record's size
    let mut out = Vec::new();
    super::wire::encode_span_behind(&Meta::of(q).bytes(), &q.span, &mut out);
    out
}

pub fn decode(body: &[u8]) -> Result<Queued, DecodeError> {
    let meta = Meta::read(body).ok_or(DecodeError::Short)?;
    let p = Span::decode(&body[META_LEN..])?;
    Ok(Queued { session: meta.session, root: meta.root, span: span_data(p)? })
}

/// Sets (or replaces) the loss marks on a root's record, as [`super::queue::mark_lost`] does
/// on a span: the record is decoded and written again (only roots of sessions that lost
/// spans: rare). A record that does not decode is left as it is (the sender skips no span).
pub fn mark_lost_record(body: &mut Vec<u8>, lost: u64) {
    if body.len() < META_LEN {
        return;
    }
    let Ok(mut p) = Span::decode(&body[META_LEN..]) else { return };
    p.attributes.retain(|kv| kv.key != keys::SESSION_SPANS_LOST && kv.key != keys::SESSION_INCOMPLETE);
    let kv = |key: &str, v: any_value::Value| PKeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    };
    p.attributes.push(kv(keys::SESSION_INCOMPLETE, any_value::Value::BoolValue(true)));
    p.attributes.push(kv(keys::SESSION_SPANS_LOST, any_value::Value::IntValue(lost as i64)));
    body.truncate(META_LEN);
    let _ = p.encode(body);
}

fn time(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

fn trace_id(b: &[u8]) -> Result<TraceId, DecodeError> {
    Ok(TraceId::from_bytes(b.try_into().map_err(|_| DecodeError::Field("trace id"))?))
}

fn span_id(b: &[u8]) -> Result<SpanId, DecodeError> {
    if b.is_empty() {
        return Ok(SpanId::INVALID);
    }
    Ok(SpanId::from_bytes(b.try_into().map_err(|_| DecodeError::Field("span id"))?))
}

fn trace_state(s: &str) -> TraceState {
    if s.is_empty() {
        TraceState::NONE
    } else {
        s.parse().unwrap_or(TraceState::NONE)
    }
}

fn value(v: Option<AnyValue>) -> Value {
    match v.and_then(|v| v.value) {
        Some(any_value::Value::BoolValue(b)) => Value::Bool(b),
        Some(any_value::Value::IntValue(i)) => Value::I64(i),
        Some(any_value::Value::DoubleValue(f)) => Value::F64(f),
        Some(any_value::Value::StringValue(s)) => Value::String(s.into()),
        Some(any_value::Value::ArrayValue(a)) => {
            let items: Vec<Option<any_value::Value>> = a.values.into_iter().map(|v| v.value).collect();
            // arrays are homogeneous in the API; the first element decides the kind
            match items.first() {
                Some(Some(any_value::Value::BoolValue(_))) => Value::Array(Array::Bool(
                    items.into_iter().map(|v| matches!(v, Some(any_value::Value::BoolValue(true)))).collect(),
                )),
                Some(Some(any_value::Value::IntValue(_))) => Value::Array(Array::I64(
                    items
                        .into_iter()
                        .map(|v| if let Some(any_value::Value::IntValue(i)) = v { i } else { 0 })
                        .collect(),
                )),
                Some(Some(any_value::Value::DoubleValue(_))) => Value::Array(Array::F64(
                    items
                        .into_iter()
                        .map(|v| if let Some(any_value::Value::DoubleValue(f)) = v { f } else { 0.0 })
                        .collect(),
                )),
                _ => Value::Array(Array::String(
                    items
                        .into_iter()
                        .map(|v| match v {
                            Some(any_value::Value::StringValue(s)) => StringValue::from(s),
                            _ => StringValue::from(""),
                        })
                        .collect(),
                )),
            }
        }
        // podtrail writes no bytes or map values; keep the key with an empty string
        _ => Value::String("".into()),
    }
}

fn attributes(kvs: Vec<PKeyValue>) -> Vec<KeyValue> {
    kvs.into_iter().map(|kv| KeyValue::new(kv.key, value(kv.value))).collect()
}

/// A proto `Span` back into `SpanData` (the durable queue's records, `podtrail show`'s lines).
pub fn span_data(p: Span) -> Result<SpanData, DecodeError> {
    // flags: low byte is the W3C trace flags; bit 9 says the parent was remote
    let remote_parent = p.flags & 0x200 != 0;
    let kind = match span::SpanKind::try_from(p.kind).unwrap_or(span::SpanKind::Internal) {
        span::SpanKind::Client => SpanKind::Client,
        span::SpanKind::Server => SpanKind::Server,
        span::SpanKind::Producer => SpanKind::Producer,
        span::SpanKind::Consumer => SpanKind::Consumer,
        _ => SpanKind::Internal,
    };
    let status = match p.status {
        Some(s) if s.code == status::StatusCode::Error as i32 => Status::Error { description: Cow::Owned(s.message) },
        Some(s) if s.code == status::StatusCode::Ok as i32 => Status::Ok,
        _ => Status::Unset,
    };
    let mut events = SpanEvents::default();
    events.dropped_count = p.dropped_events_count;
    events.events = p
        .events
        .into_iter()
        .map(|e| {
            let mut ev = Event::new(e.name, time(e.time_unix_nano), attributes(e.attributes), 0);
            ev.dropped_attributes_count = e.dropped_attributes_count;
            ev
        })
        .collect();
    let mut links = SpanLinks::default();
    links.dropped_count = p.dropped_links_count;
    for l in p.links {
        let ctx = SpanContext::new(
            trace_id(&l.trace_id)?,
            span_id(&l.span_id)?,
            TraceFlags::new(l.flags as u8),
            l.flags & 0x200 != 0,
            trace_state(&l.trace_state),
        );
        let mut link = Link::new(ctx, attributes(l.attributes), 0);
        link.dropped_attributes_count = l.dropped_attributes_count;
        links.links.push(link);
    }
    Ok(SpanData {
        span_context: SpanContext::new(
            trace_id(&p.trace_id)?,
            span_id(&p.span_id)?,
            TraceFlags::new(p.flags as u8),
            false,
            trace_state(&p.trace_state),
        ),
        parent_span_id: span_id(&p.parent_span_id)?,
        parent_span_is_remote: remote_parent,
        span_kind: kind,
        name: Cow::Owned(p.name),
        start_time: time(p.start_time_unix_nano),
        end_time: time(p.end_time_unix_nano),
        attributes: attributes(p.attributes),
        dropped_attributes_count: p.dropped_attributes_count,
        events,
        links,
        status,
        instrumentation_scope: crate::spans::build::scope(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Queued {
        let mut events = SpanEvents::default();
        events.events.push(Event::new("alert", time(1_700_000_000_500_000_000), vec![KeyValue::new("rule", "x")], 0));
        let mut links = SpanLinks::default();
        links.links.push(Link::new(
            SpanContext::new(
                TraceId::from_bytes([7; 16]),
                SpanId::from_bytes([8; 8]),
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            vec![KeyValue::new("why", "request")],
            0,
        ));
        Queued {
            session: Some(SessionId(ProcessKey { pid: 4242, start_ns: 99 })),
            root: true,
            span: SpanData {
                span_context: SpanContext::new(
                    TraceId::from_bytes([1; 16]),
                    SpanId::from_bytes([2; 8]),
                    TraceFlags::SAMPLED,
                    false,
                    TraceState::NONE,
                ),
                parent_span_id: SpanId::from_bytes([3; 8]),
                parent_span_is_remote: false,
                span_kind: SpanKind::Client,
                name: "connect 10.0.0.1:443".into(),
                start_time: time(1_700_000_000_000_000_000),
                end_time: time(1_700_000_001_000_000_000),
                attributes: vec![
                    KeyValue::new("s", "text"),
                    KeyValue::new("i", -5i64),
                    KeyValue::new("b", true),
                    KeyValue::new("f", 1.5f64),
                    KeyValue::new("a", Value::Array(Array::String(vec!["sh".into(), "-c".into()]))),
                    KeyValue::new("ai", Value::Array(Array::I64(vec![1, 2]))),
                ],
                dropped_attributes_count: 2,
                events,
                links,
                status: Status::Error { description: "refused".into() },
                instrumentation_scope: crate::spans::build::scope(),
            },
        }
    }

    #[test]
    fn a_span_survives_the_round_trip_field_for_field() {
        let q = sample();
        let back = decode(&encode(&q)).unwrap();
        assert_eq!((back.session, back.root), (q.session, q.root));
        // decoded strings are owned where the built ones were static: the same text
        let dbg = |s: &SpanData| format!("{s:?}").replace("Static(", "Owned(");
        assert_eq!(dbg(&back.span), dbg(&q.span));
        let plain = Queued { session: None, root: false, span: SpanData { parent_span_id: SpanId::INVALID, ..q.span } };
        let back = decode(&encode(&plain)).unwrap();
        assert_eq!((back.session, back.root, back.span.parent_span_id), (None, false, SpanId::INVALID));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(&[1, 2]).is_err());
        let mut b = encode(&sample());
        b.truncate(b.len() / 2);
        assert!(decode(&b).is_err());
        for i in 0..64u8 {
            let junk: Vec<u8> = (0..200u32).map(|k| (k as u8).wrapping_mul(i).wrapping_add(i)).collect();
            let _ = decode(&junk);
        }
    }
}
