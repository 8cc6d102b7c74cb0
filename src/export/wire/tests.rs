use super::*;
use opentelemetry::trace::{Event, Link, SpanContext, TraceFlags, TraceId, TraceState};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
use std::time::Duration;

fn t(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

fn spans() -> Vec<SpanData> {
    let mut events = SpanEvents::default();
    events.events.push(Event::new("alert", t(1_700_000_000_500_000_000), vec![KeyValue::new("rule", "x")], 3));
    events.dropped_count = 2;
    let mut links = SpanLinks::default();
    let state = TraceState::from_key_value([("k", "v")]).unwrap();
    links.links.push(Link::new(
        SpanContext::new(TraceId::from_bytes([7; 16]), SpanId::from_bytes([8; 8]), TraceFlags::SAMPLED, true, state),
        vec![KeyValue::new("why", "request")],
        1,
    ));
    links.dropped_count = 1;
    let full = SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes([1; 16]),
            SpanId::from_bytes([2; 8]),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        ),
        parent_span_id: SpanId::from_bytes([3; 8]),
        parent_span_is_remote: true,
        span_kind: SpanKind::Client,
        name: "connect 10.0.0.1:443".into(),
        start_time: t(1_700_000_000_000_000_000),
        end_time: t(1_700_000_001_000_000_000),
        attributes: vec![
            KeyValue::new("s", "text"),
            KeyValue::new("empty", ""),
            KeyValue::new("i", -5i64),
            KeyValue::new("zero", 0i64),
            KeyValue::new("b", true),
            KeyValue::new("no", false),
            KeyValue::new("f", 1.5f64),
            KeyValue::new("a", Value::Array(Array::String(vec!["sh".into(), "".into(), "-c".into()]))),
            KeyValue::new("ai", Value::Array(Array::I64(vec![1, -2, 0]))),
            KeyValue::new("ab", Value::Array(Array::Bool(vec![true, false]))),
            KeyValue::new("af", Value::Array(Array::F64(vec![0.0, 2.5]))),
            KeyValue::new("long", "x".repeat(300)),
            // an array past one and two bytes of length (its length is not summed twice)
            KeyValue::new(
                "along",
                Value::Array(Array::String((0..200).map(|i| format!("{i:0>100}").into()).collect())),
            ),
            KeyValue::new("amid", Value::Array(Array::String(vec!["y".repeat(130).into()]))),
        ],
        dropped_attributes_count: 2,
        events,
        links,
        status: Status::Error { description: "refused".into() },
        instrumentation_scope: crate::spans::build::scope(),
    };
    let plain = SpanData {
        parent_span_id: SpanId::INVALID,
        parent_span_is_remote: false,
        span_kind: SpanKind::Internal,
        name: "".into(),
        attributes: vec![],
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Unset,
        start_time: UNIX_EPOCH,
        ..full.clone()
    };
    let ok = SpanData {
        status: Status::Ok,
        span_kind: SpanKind::Server,
        instrumentation_scope: InstrumentationScope::builder("other").build(),
        ..plain.clone()
    };
    // more attributes than the encoder keeps the lengths of on the stack
    let many = SpanData {
        attributes: (0..KEPT_LENS + 6)
            .map(|i| match i % 3 {
                0 => KeyValue::new(format!("k{i}"), "v".repeat(i * 3)),
                1 => KeyValue::new(format!("k{i}"), Value::Array(Array::I64(vec![i as i64, -1]))),
                _ => KeyValue::new(format!("k{i}"), i as i64),
            })
            .collect(),
        ..ok.clone()
    };
    vec![full, plain, ok, many]
}

#[test]
fn a_field_body_length_is_found_from_the_field_length() {
    for n in (0..20_000).chain([(1 << 21) - 1, 1 << 21, (1 << 28) + 5]) {
        assert_eq!(body_of_field(field_len(n)), n, "{n}");
    }
}

#[test]
fn a_span_decodes_to_what_the_sdk_conversion_makes() {
    for s in spans() {
        let mut b = Vec::new();
        encode_span(&s, &mut b);
        let ours = Span::decode(b.as_slice()).unwrap();
        assert_eq!(ours, Span::from(s.clone()), "{}", s.name);
        // the encoded length is the one written in front of it
        assert_eq!(b.len(), Span::from(s.clone()).encoded_len());
        // written in place behind its key and worked-out length: the same bytes as
        // the body framed afterwards
        let mut framed = vec![0xaa];
        put_bytes(&mut framed, 2, &b);
        let mut in_place = vec![0xaa];
        encode_span_field(&s, 2, &mut in_place);
        assert_eq!(in_place, framed, "{}", s.name);
    }
}

#[test]
fn a_request_decodes_to_what_the_sdk_groups() {
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("podtrail")
        .with_attribute(KeyValue::new("host.name", "node-1"))
        .build();
    let mut heads = Heads::new(&resource);
    let mut batch = Batch::default();
    let all = spans();
    batch.push_span(&mut heads, &all[0]);
    batch.push_span(&mut heads, &all[2]);
    let mut b = Vec::new();
    encode_span(&all[1], &mut b);
    batch.push_encoded(&mut heads, &all[1].instrumentation_scope, &b);
    assert_eq!(batch.len(), 3);
    let req = ExportTraceServiceRequest::decode(batch.request(&heads)).unwrap();
    // the SDK groups the same spans the same way: by scope, in order of first appearance
    let order = vec![all[0].clone(), all[2].clone(), all[1].clone()];
    let sdk = opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope(
        order,
        &ResourceAttributesWithSchema::from(&resource),
    );
    assert_eq!(req.resource_spans, sdk);
    // an empty batch is a request with no spans, not garbage
    let empty = ExportTraceServiceRequest::decode(Batch::default().request(&heads)).unwrap();
    assert_eq!(empty.resource_spans[0].scope_spans.len(), 0);
}

#[test]
fn a_span_is_well_formed_and_garbage_is_not() {
    for s in spans() {
        let mut b = Vec::new();
        encode_span(&s, &mut b);
        assert!(well_formed(&b));
        assert!(!well_formed(&b[..b.len() - 1]), "cut short");
    }
    assert!(!well_formed(b""), "no ids");
    assert!(!well_formed(&[0xff; 12]));
    assert!(!well_formed(&[0x0a, 0x7f, 1, 2]), "a length past the end");
}

/// The request as it was assembled before the heads were written in front of the spans: each
/// group copied behind the heads into a new buffer. The bytes must not change.
fn copied_request(heads: &Heads, groups: &[(usize, Vec<u8>)]) -> Vec<u8> {
    let scope_lens: Vec<usize> = groups.iter().map(|(s, b)| heads.scopes[*s].1.len() + b.len()).collect();
    let rs_len = heads.resource.len() + scope_lens.iter().map(|n| field_len(*n)).sum::<usize>();
    let mut out = Vec::new();
    put_key(&mut out, 1, LEN);
    put_varint(&mut out, rs_len as u64);
    out.extend_from_slice(&heads.resource);
    for ((s, b), n) in groups.iter().zip(scope_lens) {
        put_key(&mut out, 2, LEN);
        put_varint(&mut out, n as u64);
        out.extend_from_slice(&heads.scopes[*s].1);
        out.extend_from_slice(b);
    }
    out
}

#[test]
fn a_request_is_the_same_bytes_whatever_its_buffer_was_sized_for() {
    let resource = opentelemetry_sdk::Resource::builder().with_service_name("podtrail").build();
    let all = spans();
    // one scope (every batch the agent sends), from no span to enough for a length of 3 bytes
    for n in [0, 1, 2, 3, 40, 400] {
        for capacity in [0, 100, 1 << 20] {
            let mut heads = Heads::new(&resource);
            let mut batch = Batch::with_capacity(capacity);
            let mut group = Vec::new();
            for i in 0..n {
                let s = &all[i % 2];
                batch.push_span(&mut heads, s);
                encode_span_field(s, 2, &mut group);
            }
            let scope = heads.scope(&all[0].instrumentation_scope);
            let want = copied_request(&heads, &if n == 0 { vec![] } else { vec![(scope, group.clone())] });
            assert_eq!(batch.span_bytes(), group.len());
            assert_eq!(&batch.request(&heads)[..], &want[..], "{n} spans, capacity {capacity}");
        }
    }
    // two scopes: the groups copied behind the heads
    let mut heads = Heads::new(&resource);
    let mut batch = Batch::with_capacity(10);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for s in [&all[0], &all[2], &all[1]] {
        batch.push_span(&mut heads, s);
        encode_span_field(s, 2, if s.instrumentation_scope == all[2].instrumentation_scope { &mut b } else { &mut a });
    }
    let want = copied_request(&heads, &[(0, a), (1, b)]);
    assert_eq!(&batch.request(&heads)[..], &want[..]);
}

/// `well_formed` as it was before its one-byte fast path (BENCHMARKS.md, exp22).
fn well_formed_before(mut b: &[u8]) -> bool {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&x, rest) = b.split_first()?;
            *b = rest;
            v |= ((x & 0x7f) as u64) << shift;
            if x < 0x80 {
                return Some(v);
            }
        }
        None
    }
    let mut ids = 0;
    while !b.is_empty() {
        let Some(key) = varint(&mut b) else { return false };
        let skip = match key & 7 {
            0 => match varint(&mut b) {
                Some(_) => 0,
                None => return false,
            },
            1 => 8,
            5 => 4,
            2 => match varint(&mut b) {
                Some(n) if n as usize <= b.len() => {
                    if (key >> 3 == 1 && n == 16) || (key >> 3 == 2 && n == 8) {
                        ids += 1;
                    }
                    n as usize
                }
                _ => return false,
            },
            _ => return false,
        };
        if skip > b.len() || key >> 3 == 0 {
            return false;
        }
        b = &b[skip..];
    }
    ids == 2
}

/// The same answer as before on every span, cut anywhere, with any byte changed to a few
/// telling values (a continuation bit, a zero, a key of each wire type), and on noise.
#[test]
fn well_formed_answers_as_it_did_before_its_fast_path() {
    let mut cases = 0;
    for s in spans() {
        let mut b = Vec::new();
        encode_span(&s, &mut b);
        for cut in 0..=b.len() {
            assert_eq!(well_formed(&b[..cut]), well_formed_before(&b[..cut]), "cut at {cut}");
        }
        for i in 0..b.len() {
            for v in [0x00, 0x01, 0x08, 0x0a, 0x12, 0x7f, 0x80, 0x81, 0xff, 0x09, 0x0d, 0x0b, 0x0e, b[i] ^ 0x80] {
                let mut m = b.clone();
                m[i] = v;
                assert_eq!(well_formed(&m), well_formed_before(&m), "byte {i} = {v:#x}");
                cases += 1;
            }
        }
    }
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for len in 0..2000 {
        let junk: Vec<u8> = (0..len % 97)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_eq!(well_formed(&junk), well_formed_before(&junk));
    }
    assert!(cases > 1000, "{cases}");
}

#[test]
fn varint_len_is_the_bytes_put_varint_writes() {
    let mut vs = vec![0u64, 1, u64::MAX];
    for b in 0..64 {
        vs.extend([(1u64 << b) - 1, 1u64 << b, (1u64 << b) + 1]);
    }
    for v in vs {
        let mut out = Vec::new();
        put_varint(&mut out, v);
        assert_eq!(varint_len(v), out.len(), "{v}");
    }
}
