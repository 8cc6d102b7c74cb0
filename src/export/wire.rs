//! OTLP protobuf written straight from `SpanData`, and export requests assembled from encoded
//! spans.
//!
//! Why not `opentelemetry_proto`'s conversion and prost: that conversion builds a proto `Span`
//! first, copying every string (each attribute key and value becomes a new `String`), and the
//! SDK's exporter clones the whole batch before converting it. Here a span is written into one
//! buffer from borrowed strings: the bytes are the same message (a unit test decodes them with
//! prost and compares them with the conversion's `Span`, field for field).
//!
//! A request is assembled from encoded `Span` messages without decoding them: an
//! `ExportTraceServiceRequest` is `resource_spans` (field 1) holding the resource and
//! `scope_spans` (field 2), each holding its scope and `spans` (field 2), so a request is the
//! resource's and scope's fields (encoded once per sink) and the spans' bytes, each behind its
//! field key and length. This is what lets the durable queue send its records as they are.
//!
//! In: `SpanData`, or encoded spans. Out: bytes. Nothing is dropped here.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanId, SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_sdk::trace::SpanData;
use prost::Message;

const LEN: u32 = 2;
const VARINT: u32 = 0;
const I64: u32 = 1;
const I32: u32 = 5;

fn varint_len(v: u64) -> usize {
    // ceil(bits / 7) as a multiply and a shift (prost's `encoded_len_varint`): no division
    ((((v | 1).leading_zeros() ^ 63) * 9 + 73) / 64) as usize
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u32) {
    put_varint(out, ((field << 3) | wire) as u64);
}

/// A length-delimited field of `n` bytes, field number below 16: key, length, bytes.
pub fn field_len(n: usize) -> usize {
    1 + varint_len(n as u64) + n
}

fn put_bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    if field < 16 && b.len() < 0x80 {
        // the key and the length one byte each (most fields of a span): one write for both
        out.extend_from_slice(&[((field << 3) | LEN) as u8, b.len() as u8]);
    } else {
        put_key(out, field, LEN);
        put_varint(out, b.len() as u64);
    }
    out.extend_from_slice(b);
}

/// An optional string: proto3 leaves an empty one out.
fn str_len(s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        field_len(s.len())
    }
}

fn put_str(out: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        put_bytes(out, field, s.as_bytes());
    }
}

fn uint_len(v: u64) -> usize {
    if v == 0 {
        0
    } else {
        1 + varint_len(v)
    }
}

fn put_uint(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        put_key(out, field, VARINT);
        put_varint(out, v);
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn fixed64_len(v: u64) -> usize {
    if v == 0 {
        0
    } else {
        9
    }
}

fn put_fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        put_key(out, field, I64);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

// ---- AnyValue and KeyValue ------------------------------------------------------------

/// `AnyValue`'s body: one member of its oneof, always written (even a zero or an empty string).
fn any_len(v: &Value) -> usize {
    match v {
        Value::Bool(_) => 2,
        Value::I64(i) => 1 + varint_len(*i as u64),
        Value::F64(_) => 9,
        Value::String(s) => field_len(s.as_str().len()),
        Value::Array(a) => field_len(array_len(a)),
        // a kind added to the API later: an empty string, as podtrail writes none
        _ => field_len(0),
    }
}

fn array_len(a: &Array) -> usize {
    match a {
        Array::Bool(v) => v.len() * field_len(2),
        Array::I64(v) => v.iter().map(|i| field_len(1 + varint_len(*i as u64))).sum(),
        Array::F64(v) => v.len() * field_len(9),
        Array::String(v) => v.iter().map(|s| field_len(field_len(s.as_str().len()))).sum(),
        _ => 0,
    }
}

fn put_any(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Bool(b) => {
            put_key(out, 2, VARINT);
            out.push(*b as u8);
        }
        Value::I64(i) => {
            put_key(out, 3, VARINT);
            put_varint(out, *i as u64);
        }
        Value::F64(f) => {
            put_key(out, 4, I64);
            out.extend_from_slice(&f.to_le_bytes());
        }
        Value::String(s) => put_bytes(out, 1, s.as_str().as_bytes()),
        Value::Array(a) => {
            put_key(out, 5, LEN);
            put_varint(out, array_len(a) as u64);
            put_array(out, a);
        }
        _ => put_bytes(out, 1, b""),
    }
}

/// The members of an `ArrayValue` (its body: no key or length in front).
fn put_array(out: &mut Vec<u8>, a: &Array) {
    let item = |out: &mut Vec<u8>, v: Value| {
        put_key(out, 1, LEN);
        put_varint(out, any_len(&v) as u64);
        put_any(out, &v);
    };
    match a {
        Array::Bool(v) => v.iter().for_each(|b| item(out, Value::Bool(*b))),
        Array::I64(v) => v.iter().for_each(|i| item(out, Value::I64(*i))),
        Array::F64(v) => v.iter().for_each(|f| item(out, Value::F64(*f))),
        Array::String(v) => {
            for s in v {
                put_key(out, 1, LEN);
                put_varint(out, field_len(s.as_str().len()) as u64);
                put_bytes(out, 1, s.as_str().as_bytes());
            }
        }
        _ => {}
    }
}

/// The body length `n` of a length-delimited field of `field` bytes, field number below 16
/// (the inverse of [`field_len`]).
fn body_of_field(field: usize) -> usize {
    (1..=VARINT_MAX).map(|v| field.saturating_sub(1 + v)).find(|&n| varint_len(n as u64) + 1 + n == field).unwrap_or(0)
}

/// [`put_any`] of a value whose `AnyValue` body is `len` bytes (from [`any_len`]): an array's
/// length is not summed over its members again.
fn put_any_of(out: &mut Vec<u8>, v: &Value, len: usize) {
    match v {
        Value::Array(a) => {
            put_key(out, 5, LEN);
            put_varint(out, body_of_field(len) as u64);
            put_array(out, a);
        }
        v => put_any(out, v),
    }
}

fn kv_len(kv: &KeyValue) -> usize {
    str_len(kv.key.as_str()) + field_len(any_len(&kv.value))
}

fn attrs_len(kvs: &[KeyValue], field: u32) -> usize {
    debug_assert!(field < 16);
    kvs.iter().map(|kv| field_len(kv_len(kv))).sum()
}

/// A span's attributes the lengths of which are kept on the stack between working out the
/// span's length and writing it: each `AnyValue`'s length was summed twice (an array's over
/// every member), and `kv_len` was the largest item of the encoding (BENCHMARKS.md, exp21).
const KEPT_LENS: usize = 64;

/// Each `KeyValue`'s and its `AnyValue`'s length, for up to [`KEPT_LENS`] attributes.
struct AttrLens {
    kv: [u32; KEPT_LENS],
    any: [u32; KEPT_LENS],
    /// The attributes' bytes as [`attrs_len`] sums them.
    total: usize,
}

impl AttrLens {
    /// None when there are more attributes than it keeps (then they are summed as before).
    fn of(kvs: &[KeyValue]) -> Option<AttrLens> {
        if kvs.len() > KEPT_LENS {
            return None;
        }
        let mut l = AttrLens { kv: [0; KEPT_LENS], any: [0; KEPT_LENS], total: 0 };
        for (i, kv) in kvs.iter().enumerate() {
            let any = any_len(&kv.value);
            let n = str_len(kv.key.as_str()) + field_len(any);
            l.kv[i] = n as u32;
            l.any[i] = any as u32;
            l.total += field_len(n);
        }
        Some(l)
    }
}

/// [`put_attrs`] with the lengths worked out by [`AttrLens::of`].
fn put_attrs_of(out: &mut Vec<u8>, field: u32, kvs: &[KeyValue], lens: &AttrLens) {
    for (i, kv) in kvs.iter().enumerate() {
        put_key(out, field, LEN);
        put_varint(out, lens.kv[i] as u64);
        put_str(out, 1, kv.key.as_str());
        put_key(out, 2, LEN);
        put_varint(out, lens.any[i] as u64);
        put_any_of(out, &kv.value, lens.any[i] as usize);
    }
}

fn put_attrs(out: &mut Vec<u8>, field: u32, kvs: &[KeyValue]) {
    for kv in kvs {
        put_key(out, field, LEN);
        put_varint(out, kv_len(kv) as u64);
        put_str(out, 1, kv.key.as_str());
        put_key(out, 2, LEN);
        put_varint(out, any_len(&kv.value) as u64);
        put_any(out, &kv.value);
    }
}

// ---- Span -------------------------------------------------------------------------------

/// The flags the SDK's conversion writes: the W3C trace flags, "has is-remote" (bit 8) and
/// "is remote" (bit 9).
fn flags(trace_flags: u8, remote: bool) -> u32 {
    trace_flags as u32 | 0x100 | if remote { 0x200 } else { 0 }
}

fn kind(k: &SpanKind) -> u64 {
    match k {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn status(s: &Status) -> (u64, &str) {
    match s {
        Status::Unset => (0, ""),
        Status::Ok => (1, ""),
        Status::Error { description } => (2, description.as_ref()),
    }
}

fn event_len(e: &opentelemetry::trace::Event) -> usize {
    fixed64_len(nanos(e.timestamp))
        + str_len(&e.name)
        + attrs_len(&e.attributes, 3)
        + uint_len(e.dropped_attributes_count as u64)
}

fn link_len(l: &opentelemetry::trace::Link, state: &str) -> usize {
    field_len(16)
        + field_len(8)
        + str_len(state)
        + attrs_len(&l.attributes, 4)
        + uint_len(l.dropped_attributes_count as u64)
        + 5
}

/// Appends `span` as an OTLP `Span` message (its body: no key or length in front), the same
/// message `opentelemetry_proto`'s `Span::from(SpanData)` encodes to.
pub fn encode_span(span: &SpanData, out: &mut Vec<u8>) {
    encode_span_as(span, None, &[], out)
}

/// `head`, then `span` as [`encode_span`] writes it, appended to `out` with one reservation
/// for both: a durable queue's record (its metadata, then the span) is allocated once, at its
/// size (it started at a guess and grew to the span's length: a reallocation per span).
pub fn encode_span_behind(head: &[u8], span: &SpanData, out: &mut Vec<u8>) {
    encode_span_as(span, None, head, out)
}

/// Appends `span` as field `field` of the enclosing message (key, length, body), written in
/// place: the length is worked out before the body is written, so no buffer of its own.
pub fn encode_span_field(span: &SpanData, field: u32, out: &mut Vec<u8>) {
    encode_span_as(span, Some(field), &[], out)
}

fn encode_span_as(span: &SpanData, field: Option<u32>, head: &[u8], out: &mut Vec<u8>) {
    let ctx = &span.span_context;
    let state = ctx.trace_state().header();
    let (code, message) = status(&span.status);
    let status_len = str_len(message) + uint_len(code);
    let link_states: Vec<String> = span.links.iter().map(|l| l.span_context.trace_state().header()).collect();
    let parent = span.parent_span_id != SpanId::INVALID;
    let (start, end) = (nanos(span.start_time), nanos(span.end_time));
    let lens = AttrLens::of(&span.attributes);
    let attrs = match &lens {
        Some(l) => l.total,
        None => attrs_len(&span.attributes, 9),
    };
    let len = field_len(16)
        + field_len(8)
        + str_len(&state)
        + if parent { field_len(8) } else { 0 }
        + str_len(&span.name)
        + uint_len(kind(&span.span_kind))
        + fixed64_len(start)
        + fixed64_len(end)
        + attrs
        + uint_len(span.dropped_attributes_count as u64)
        + span.events.iter().map(|e| field_len(event_len(e))).sum::<usize>()
        + uint_len(span.events.dropped_count as u64)
        + span.links.iter().zip(&link_states).map(|(l, s)| field_len(link_len(l, s))).sum::<usize>()
        + uint_len(span.links.dropped_count as u64)
        + field_len(status_len)
        + 6;
    out.reserve(head.len() + len + 16);
    out.extend_from_slice(head);
    let prefix_at = out.len();
    if let Some(f) = field {
        put_key(out, f, LEN);
        put_varint(out, len as u64);
    }
    let body_at = out.len();
    put_bytes(out, 1, &ctx.trace_id().to_bytes());
    put_bytes(out, 2, &ctx.span_id().to_bytes());
    put_str(out, 3, &state);
    if parent {
        put_bytes(out, 4, &span.parent_span_id.to_bytes());
    }
    put_str(out, 5, &span.name);
    put_uint(out, 6, kind(&span.span_kind));
    put_fixed64(out, 7, start);
    put_fixed64(out, 8, end);
    match &lens {
        Some(l) => put_attrs_of(out, 9, &span.attributes, l),
        None => put_attrs(out, 9, &span.attributes),
    }
    put_uint(out, 10, span.dropped_attributes_count as u64);
    for e in span.events.iter() {
        put_key(out, 11, LEN);
        put_varint(out, event_len(e) as u64);
        put_fixed64(out, 1, nanos(e.timestamp));
        put_str(out, 2, &e.name);
        put_attrs(out, 3, &e.attributes);
        put_uint(out, 4, e.dropped_attributes_count as u64);
    }
    put_uint(out, 12, span.events.dropped_count as u64);
    for (l, s) in span.links.iter().zip(&link_states) {
        put_key(out, 13, LEN);
        put_varint(out, link_len(l, s) as u64);
        put_bytes(out, 1, &l.span_context.trace_id().to_bytes());
        put_bytes(out, 2, &l.span_context.span_id().to_bytes());
        put_str(out, 3, s);
        put_attrs(out, 4, &l.attributes);
        put_uint(out, 5, l.dropped_attributes_count as u64);
        put_key(out, 6, I32);
        out.extend_from_slice(&flags(l.span_context.trace_flags().to_u8(), l.span_context.is_remote()).to_le_bytes());
    }
    put_uint(out, 14, span.links.dropped_count as u64);
    put_key(out, 15, LEN);
    put_varint(out, status_len as u64);
    put_str(out, 2, message);
    put_uint(out, 3, code);
    // field 16, fixed32: two key bytes
    put_key(out, 16, I32);
    out.extend_from_slice(&flags(ctx.trace_flags().to_u8(), span.parent_span_is_remote).to_le_bytes());
    let written = out.len() - body_at;
    debug_assert_eq!(written, len, "a span's worked-out length differs from what was written");
    if let (Some(f), true) = (field, written != len) {
        // never with the sums above (the tests decode every case); should one ever be off,
        // the length in front is rewritten rather than sent wrong
        let body = out.split_off(body_at);
        out.truncate(prefix_at);
        put_bytes(out, f, &body);
    }
}

// ---- requests ---------------------------------------------------------------------------

/// The parts of a request that are the same for every batch of a sink: the resource's fields
/// of `ResourceSpans`, and a scope's fields of `ScopeSpans` per instrumentation scope seen.
pub struct Heads {
    resource: Vec<u8>,
    scopes: Vec<(InstrumentationScope, Vec<u8>)>,
}

impl Heads {
    pub fn new(resource: &opentelemetry_sdk::Resource) -> Heads {
        let r = ResourceAttributesWithSchema::from(resource);
        let rs = ResourceSpans {
            resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                attributes: r.attributes.0,
                dropped_attributes_count: 0,
                entity_refs: vec![],
            }),
            scope_spans: vec![],
            schema_url: r.schema_url.unwrap_or_default(),
        };
        Heads { resource: rs.encode_to_vec(), scopes: Vec::new() }
    }

    /// The scope's fields of `ScopeSpans`, encoded once per scope.
    pub fn scope(&mut self, scope: &InstrumentationScope) -> usize {
        if let Some(i) = self.scopes.iter().position(|(s, _)| s == scope) {
            return i;
        }
        let ss = ScopeSpans {
            scope: Some((scope, None).into()),
            spans: vec![],
            schema_url: scope.schema_url().map(ToOwned::to_owned).unwrap_or_default(),
        };
        self.scopes.push((scope.clone(), ss.encode_to_vec()));
        self.scopes.len() - 1
    }
}

/// Encoded spans of one batch, grouped by scope (in the order each scope first appears).
///
/// The first group's buffer is the request's own: it starts with room for the request's heads
/// (the `ResourceSpans` and `ScopeSpans` keys and lengths, the resource's and the scope's
/// fields), which [`Batch::request`] writes in front of the spans once their length is known,
/// so the spans are written once and never copied into another buffer (a batch of one scope,
/// podtrail's, is every batch the agent sends). [`Batch::with_capacity`] sizes it up front, so it
/// need not double its way up to the request's size either.
#[derive(Default)]
pub struct Batch {
    /// (scope index in [`Heads`], the spans: each as field 2 of `ScopeSpans`, key and length
    /// in front); the first group's buffer starts with `room` bytes kept for the heads
    groups: Vec<(usize, Vec<u8>)>,
    /// Bytes at the front of the first group's buffer kept for the heads.
    room: usize,
    /// Bytes of spans the first group is made for.
    capacity: usize,
    spans: usize,
}

/// The most bytes a varint of a length takes.
const VARINT_MAX: usize = 10;

impl Batch {
    /// A batch whose first group has room for `bytes` of encoded spans (each with its key and
    /// length) before it grows.
    pub fn with_capacity(bytes: usize) -> Batch {
        Batch { capacity: bytes, ..Batch::default() }
    }

    fn group(&mut self, heads: &Heads, scope: usize) -> &mut Vec<u8> {
        let i = match self.groups.iter().position(|(s, _)| *s == scope) {
            Some(i) => i,
            None => {
                let buf = if self.groups.is_empty() {
                    // room for the heads of a request of this one scope, whatever its length
                    self.room = 2 * (1 + VARINT_MAX) + heads.resource.len() + heads.scopes[scope].1.len();
                    let mut b = Vec::with_capacity(self.room + self.capacity);
                    b.resize(self.room, 0);
                    b
                } else {
                    Vec::new()
                };
                self.groups.push((scope, buf));
                self.groups.len() - 1
            }
        };
        &mut self.groups[i].1
    }

    /// Adds a span, encoding it.
    pub fn push_span(&mut self, heads: &mut Heads, span: &SpanData) {
        let scope = heads.scope(&span.instrumentation_scope);
        encode_span_field(span, 2, self.group(heads, scope));
        self.spans += 1;
    }

    /// Adds an already encoded `Span` message of `scope`.
    pub fn push_encoded(&mut self, heads: &mut Heads, scope: &InstrumentationScope, span: &[u8]) {
        let scope = heads.scope(scope);
        put_bytes(self.group(heads, scope), 2, span);
        self.spans += 1;
    }

    pub fn len(&self) -> usize {
        self.spans
    }

    pub fn is_empty(&self) -> bool {
        self.spans == 0
    }

    /// Bytes of encoded spans (with their keys and lengths) so far: what a request of as many
    /// spans will take again, for [`Batch::with_capacity`].
    pub fn span_bytes(&self) -> usize {
        self.groups.iter().map(|(_, b)| b.len()).sum::<usize>() - self.room
    }

    /// The `ExportTraceServiceRequest`: one `ResourceSpans`, a `ScopeSpans` per scope.
    pub fn request(mut self, heads: &Heads) -> bytes::Bytes {
        let room = self.room;
        fn body(room: usize, i: usize, b: &[u8]) -> &[u8] {
            if i == 0 {
                &b[room..]
            } else {
                b
            }
        }
        let scope_lens: Vec<usize> = (self.groups.iter().enumerate())
            .map(|(i, (s, b))| heads.scopes[*s].1.len() + body(room, i, b).len())
            .collect();
        let rs_len = heads.resource.len() + scope_lens.iter().map(|n| field_len(*n)).sum::<usize>();
        if let [(s, buf)] = self.groups.as_mut_slice() {
            // one scope: the heads go into the room in front of the spans, right-aligned, and
            // the request is the buffer from there (the spans are not copied)
            let mut head = Vec::with_capacity(room);
            put_key(&mut head, 1, LEN);
            put_varint(&mut head, rs_len as u64);
            head.extend_from_slice(&heads.resource);
            put_key(&mut head, 2, LEN);
            put_varint(&mut head, scope_lens[0] as u64);
            head.extend_from_slice(&heads.scopes[*s].1);
            let start = room - head.len();
            buf[start..room].copy_from_slice(&head);
            return bytes::Bytes::from(std::mem::take(buf)).slice(start..);
        }
        let mut out = Vec::with_capacity(field_len(rs_len));
        put_key(&mut out, 1, LEN);
        put_varint(&mut out, rs_len as u64);
        out.extend_from_slice(&heads.resource);
        for ((i, (s, b)), n) in self.groups.iter().enumerate().zip(scope_lens) {
            put_key(&mut out, 2, LEN);
            put_varint(&mut out, n as u64);
            out.extend_from_slice(&heads.scopes[*s].1);
            out.extend_from_slice(body(room, i, b));
        }
        out.into()
    }
}

mod check;
#[cfg(test)]
mod tests;

pub use check::well_formed;
