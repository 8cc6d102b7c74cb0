//! Span and trace ids derived from what the kernel saw, so that a restarted agent (or a second
//! export of the same session) produces the same ids: no duplicate spans, no split trace.
//!
//! In: the node's boot id, process keys, exec indices, connect indices, audit trace ids.
//! Out: `SpanId` / `TraceId`. Every id is SHA-256 of a domain tag and the fields, truncated;
//! an all-zero result (invalid in OTLP) becomes 1.

use opentelemetry::trace::{SpanId, TraceId};
use sha2::{Digest, Sha256};

use crate::capture::event::ProcessKey;
use crate::model::{ProcessRecord, SessionId};

/// SHA-256 of `tag`, a NUL, the boot id, then each part as its length (u32, little endian)
/// and its bytes. (Laying the bytes out on the stack and hashing them in one call measured no
/// gain in the exec storm, issue 15, exec18: the hashing costs, not the calls.)
fn digest(tag: &str, boot_id: &[u8; 16], parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(tag.as_bytes());
    h.update([0u8]);
    h.update(boot_id);
    for p in parts {
        h.update((p.len() as u32).to_le_bytes());
        h.update(p);
    }
    h.finalize().into()
}

fn span_id_from(d: &[u8; 32]) -> SpanId {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    if b == [0u8; 8] {
        b[7] = 1;
    }
    SpanId::from_bytes(b)
}

fn key_bytes(k: ProcessKey) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(&k.pid.to_le_bytes());
    b[4..].copy_from_slice(&k.start_ns.to_le_bytes());
    b
}

/// The span of one process image: (boot id, pid, start time, exec index).
pub fn image_span_id(boot_id: &[u8; 16], key: ProcessKey, exec_index: u32) -> SpanId {
    span_id_from(&digest("image", boot_id, &[&key_bytes(key), &exec_index.to_le_bytes()]))
}

/// The span of the n-th connect of an image.
pub fn connect_span_id(image: SpanId, index: u32) -> SpanId {
    span_id_from(&digest("connect", &[0; 16], &[&image.to_bytes(), &index.to_le_bytes()]))
}

/// The span that stands for the folded repeats of one command under one parent span.
pub fn fold_span_id(parent: SpanId, argv_digest: &[u8; 8]) -> SpanId {
    span_id_from(&digest("fold", &[0; 16], &[&parent.to_bytes(), argv_digest]))
}

/// The session's root span (the request).
pub fn root_span_id(boot_id: &[u8; 16], session: SessionId) -> SpanId {
    span_id_from(&digest("root", boot_id, &[&key_bytes(session.0)]))
}

/// The span a late record adds to a session exported unattributed (one per session).
pub fn attribution_span_id(boot_id: &[u8; 16], session: SessionId) -> SpanId {
    span_id_from(&digest("attribution", boot_id, &[&key_bytes(session.0)]))
}

/// The span that says a session was opened, and by whom, sent as soon as that is known.
pub fn opened_span_id(boot_id: &[u8; 16], session: SessionId) -> SpanId {
    span_id_from(&digest("opened", boot_id, &[&key_bytes(session.0)]))
}

/// The session's `transcript` span number `seq`.
pub fn transcript_span_id(boot_id: &[u8; 16], session: SessionId, seq: u32) -> SpanId {
    span_id_from(&digest("transcript", boot_id, &[&key_bytes(session.0), &seq.to_le_bytes()]))
}

/// The span an alert is sent as when it is raised: one per (span it is about, rule, time).
pub fn alert_span_id(about: SpanId, rule: &str, ts_ns: u64) -> SpanId {
    span_id_from(&digest("alert", &[0; 16], &[&about.to_bytes(), rule.as_bytes(), &ts_ns.to_le_bytes()]))
}

/// The trace of a session: the attribution's trace id when there is one (from the audit id,
/// so anyone holding the audit line can open the trace), else derived from the session root.
pub fn session_trace_id(boot_id: &[u8; 16], session: SessionId, attributed: Option<[u8; 16]>) -> TraceId {
    if let Some(t) = attributed.filter(|t| *t != [0u8; 16]) {
        return TraceId::from_bytes(t);
    }
    trace_id_from(&digest("session", boot_id, &[&key_bytes(session.0)]))
}

/// A trace for a request that started no process (attach, port-forward), keyed by its audit id.
pub fn request_trace_id(audit_id: &str) -> TraceId {
    trace_id_from(&digest("request", &[0; 16], &[audit_id.as_bytes()]))
}

/// A span for a request-only trace.
pub fn request_span_id(audit_id: &str) -> SpanId {
    span_id_from(&digest("request", &[0; 16], &[audit_id.as_bytes()]))
}

/// The agent's own run: one trace per (boot, agent start).
pub fn agent_trace_id(boot_id: &[u8; 16], started_ns: u64) -> TraceId {
    trace_id_from(&digest("agent", boot_id, &[&started_ns.to_le_bytes()]))
}

pub fn agent_span_id(boot_id: &[u8; 16], started_ns: u64, what: &str) -> SpanId {
    span_id_from(&digest("agent", boot_id, &[&started_ns.to_le_bytes(), what.as_bytes()]))
}

/// The span ids of one final record's images and connects, derived once by the span stage and
/// read by the rules stage beside the shared record (each stage derived them per record
/// before: four SHA-256 digests per exec in issue 15's storm, where an ended process has its
/// forked image and its exec'd one).
#[derive(Clone, Debug, Default)]
pub struct RecordIds {
    /// Per image, in the record's order: its exec index, its span id, its connects' span ids.
    images: Vec<(u32, SpanId, Vec<SpanId>)>,
}

impl RecordIds {
    pub fn of(boot_id: &[u8; 16], rec: &ProcessRecord) -> Self {
        let images = rec
            .images
            .iter()
            .map(|img| {
                let own = image_span_id(boot_id, rec.key, img.exec_index);
                let connects = (0..img.connects.len()).map(|ci| connect_span_id(own, ci as u32)).collect();
                (img.exec_index, own, connects)
            })
            .collect();
        RecordIds { images }
    }

    /// The span of the record's `idx`-th image.
    pub fn image(&self, idx: usize) -> SpanId {
        self.images[idx].1
    }

    /// The span of connect `ci` of the `idx`-th image.
    pub fn connect(&self, idx: usize, ci: usize) -> SpanId {
        self.images[idx].2[ci]
    }

    /// The span of the image with `exec_index`, or of its connect `connect`; None when the
    /// record has no such image or connect.
    pub fn of_exec(&self, exec_index: u32, connect: Option<u32>) -> Option<SpanId> {
        let (_, own, connects) = self.images.iter().find(|(e, ..)| *e == exec_index)?;
        match connect {
            None => Some(*own),
            Some(ci) => connects.get(ci as usize).copied(),
        }
    }

    /// Every span id of the record: each image's, then its connects'.
    pub fn all(&self) -> impl Iterator<Item = SpanId> + '_ {
        self.images.iter().flat_map(|(_, own, c)| std::iter::once(*own).chain(c.iter().copied()))
    }
}

fn trace_id_from(d: &[u8; 32]) -> TraceId {
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    if b == [0u8; 16] {
        b[15] = 1;
    }
    TraceId::from_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOT: [u8; 16] = [7; 16];
    const K: ProcessKey = ProcessKey { pid: 42, start_ns: 1_000 };
    /// `image_span_id(&BOOT, K, 0)` as main `2ac4845` derived it.
    const FIXED_IMAGE_ID: &str = "affcbbd0328986fb";

    #[test]
    fn image_ids_are_stable_and_distinct_per_exec() {
        assert_eq!(image_span_id(&BOOT, K, 0), image_span_id(&BOOT, K, 0));
        assert_ne!(image_span_id(&BOOT, K, 0), image_span_id(&BOOT, K, 1));
        assert_ne!(image_span_id(&BOOT, K, 0), image_span_id(&[8; 16], K, 0));
        let reused_pid = ProcessKey { pid: 42, start_ns: 2_000 };
        assert_ne!(image_span_id(&BOOT, K, 0), image_span_id(&BOOT, reused_pid, 0));
    }

    #[test]
    fn attributed_trace_id_wins_and_zero_is_ignored() {
        let s = SessionId(K);
        assert_eq!(session_trace_id(&BOOT, s, Some([3; 16])), TraceId::from_bytes([3; 16]));
        let derived = session_trace_id(&BOOT, s, Some([0; 16]));
        assert_eq!(derived, session_trace_id(&BOOT, s, None));
        assert_ne!(derived, TraceId::INVALID);
    }

    #[test]
    fn an_image_id_is_the_bytes_it_always_was() {
        // a fixed id, so a change of the bytes (the spans' ids) cannot pass unseen
        assert_eq!(image_span_id(&BOOT, K, 0).to_string(), FIXED_IMAGE_ID);
    }

    #[test]
    fn root_and_connect_ids_differ_from_image_ids() {
        let img = image_span_id(&BOOT, K, 0);
        assert_ne!(root_span_id(&BOOT, SessionId(K)), img);
        assert_ne!(connect_span_id(img, 0), connect_span_id(img, 1));
        assert_ne!(connect_span_id(img, 0), img);
    }
}
