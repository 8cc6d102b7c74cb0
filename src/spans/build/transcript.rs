//! A `transcript` span: a chunk of a session's terminal lines, one span event per line, under
//! the session's root. Sent while the session runs (`SessionUpdate::Transcript`), so what was
//! typed is searchable before the session ends; each span holds at most
//! `transcript.lines_per_span` lines of at most `transcript.max_line_bytes` bytes, far below
//! Tempo's 5 MB per trace, and a session at most `transcript.max_lines` lines.

use opentelemetry::trace::{Event, SpanKind, Status};
use opentelemetry::KeyValue;
use opentelemetry_semantic_conventions::attribute as sc;

use super::{span, BuildCtx, SessionFrame};
use crate::model::{SessionInfo, TranscriptChunk, TranscriptLine};
use crate::spans::{ids, keys};

/// The name of a [`transcript_span`].
pub const TRANSCRIPT_SPAN: &str = "transcript";
/// Event names: a line typed, a line shown, the mark of lines past the cap.
pub const LINE_INPUT: &str = "input";
pub const LINE_OUTPUT: &str = "output";
pub const LINES_TRUNCATED: &str = "transcript truncated";

/// The chunk's span: from its first line to its last (its lines already redacted).
pub fn transcript_span(ctx: &BuildCtx, frame: &SessionFrame, info: &SessionInfo, chunk: &TranscriptChunk) -> SpanData {
    let max = ctx.cfg.transcript.max_line_bytes;
    let at = |ns: u64| ctx.clock.to_system_time(ns);
    let first = chunk.lines.first().map(|l| l.ts_ns);
    let last = chunk.lines.last().map(|l| l.ts_ns);
    let end_ns = info.end_ns.filter(|_| chunk.last);
    let start = at(first.or(end_ns).unwrap_or(info.start_ns));
    let end = at(last.max(end_ns).unwrap_or(info.start_ns));
    let mut attrs = super::with_common(frame, 7);
    attrs.push(KeyValue::new(keys::TRANSCRIPT_SEQ, chunk.seq as i64));
    attrs.push(KeyValue::new(keys::TRANSCRIPT_LINES, chunk.lines.len() as i64));
    if chunk.last {
        attrs.push(KeyValue::new(keys::TRANSCRIPT_LAST, true));
    }
    for (k, v) in [
        (keys::TRANSCRIPT_LINES_DROPPED, chunk.lines_dropped),
        (keys::TRANSCRIPT_CUT_BYTES, chunk.cut_bytes.0),
        (keys::TRANSCRIPT_OUTPUT_CUT_BYTES, chunk.cut_bytes.1),
        (keys::TRANSCRIPT_SECRET_READS, chunk.secret_reads),
    ] {
        if v > 0 {
            attrs.push(KeyValue::new(k, v as i64));
        }
    }
    let id = ids::transcript_span_id(&ctx.boot_id, info.id, chunk.seq);
    let mut sd =
        span(frame, id, frame.root_id, SpanKind::Internal, TRANSCRIPT_SPAN.into(), start, end, attrs, Status::Unset);
    sd.events.events.extend(chunk.lines.iter().map(|l| line_event(ctx, l, max)));
    if chunk.last && chunk.lines_dropped > 0 {
        let a = vec![KeyValue::new(keys::TRANSCRIPT_LINES_DROPPED, chunk.lines_dropped as i64)];
        sd.events.events.push(Event::new(LINES_TRUNCATED, end, a, 0));
    }
    sd
}

fn line_event(ctx: &BuildCtx, l: &TranscriptLine, max: usize) -> Event {
    let mut attrs = Vec::with_capacity(4);
    match l.secret_bytes {
        Some(n) => attrs.push(KeyValue::new(keys::TRANSCRIPT_SECRET_BYTES, n as i64)),
        None => {
            let mut text = crate::text::escape(&l.text);
            // redaction tokens may have made it longer than the process stage's cap
            let cut = crate::spans::identity::cap_string(&mut text, max);
            attrs.push(KeyValue::new(keys::TRANSCRIPT_LINE, text));
            if l.cut_bytes > 0 || cut {
                attrs.push(KeyValue::new(keys::TRANSCRIPT_LINE_CUT_BYTES, l.cut_bytes.max(1) as i64));
            }
        }
    }
    attrs.push(KeyValue::new(sc::PROCESS_PID, l.pid as i64));
    if l.unterminated {
        attrs.push(KeyValue::new(keys::TRANSCRIPT_UNTERMINATED, true));
    }
    if l.redacted > 0 {
        attrs.push(KeyValue::new(keys::TRANSCRIPT_REDACTED, l.redacted as i64));
    }
    let name = if l.output { LINE_OUTPUT } else { LINE_INPUT };
    Event::new(name, ctx.clock.to_system_time(l.ts_ns), attrs, 0)
}

use opentelemetry_sdk::trace::SpanData;
