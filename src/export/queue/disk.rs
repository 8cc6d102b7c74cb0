//! The durable side of the queue: a batch written to the segment store before it counts as
//! accepted, the oldest segment's unsent spans counted (and marked) when the budget evicts it,
//! and batches read back from disk, oldest first.

use super::*;
use crate::export::segments::Record;

impl ExportQueue {
    pub(super) fn write(&self, batch: &[Meta], bodies: Vec<Vec<u8>>) {
        let mut g = self.lock();
        let Store::Disk(store) = &mut g.store else { return };
        let res = store.append(bodies);
        let bytes = store.bytes();
        match res {
            Ok(ev) => {
                self.metrics.export_queue_spans.inc_by(batch.len() as i64);
                self.metrics.export_queue_bytes.set(bytes as i64);
                drop(g);
                self.evicted(ev);
            }
            Err(e) => {
                let now = Instant::now();
                let warn = g.last_write_warning.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10));
                if warn {
                    g.last_write_warning = Some(now);
                }
                drop(g);
                self.metrics.queue_events("write_failed", 1);
                if warn {
                    tracing::error!(sink = self.name, error = %e, spans = batch.len(), "durable queue: write failed (logged at most every 10 s; every failure counted in podtrail_export_queue_events_total{{event=\"write_failed\"}})");
                }
                self.lose_metas(batch, "disk_write");
            }
        }
    }

    /// Accounts for segments the budget or damage took.
    pub(super) fn evicted(&self, ev: Evicted) {
        if ev.segments > 0 {
            self.metrics.queue_events("segment_evicted", ev.segments);
            tracing::warn!(
                sink = self.name,
                segments = ev.segments,
                bytes = ev.bytes,
                spans = ev.unread.len(),
                "durable queue over its budget: oldest segments dropped"
            );
        }
        for p in &ev.corrupt {
            self.metrics.queue_events("corrupt_segment", 1);
            tracing::error!(sink = self.name, moved_to = %p.display(), "durable queue: a damaged segment was moved aside");
        }
        if !ev.unread.is_empty() {
            let n = ev.unread.len() as u64;
            let mut g = self.lock();
            g.account(ev.unread.into_iter());
            g.delivery.disk_budget += n;
            drop(g);
            self.metrics.export_queue_spans.dec_by(n as i64);
            self.metrics.lost("disk_budget", n);
        }
    }

    /// Disk: the next records' bodies, marked in flight, with the queue still locked (for
    /// the caller to keep what a retry needs) and what the read evicted; None when the queue
    /// is not on disk or the read failed (counted and logged: the caller tries again).
    fn next_bodies(&self, max: usize) -> Option<(MutexGuard<'_, Inner>, Vec<Record>, Evicted)> {
        let mut g = self.lock();
        let Store::Disk(store) = &mut g.store else { return None };
        let mut ev = Evicted::default();
        match store.read(max, &mut ev) {
            Ok(records) => {
                if let Some(r) = records.last() {
                    g.in_flight = Some(r.end);
                }
                Some((g, records, ev))
            }
            Err(e) => {
                drop(g);
                self.read_failed(&e);
                None
            }
        }
    }

    /// Disk: the next records, decoded; one that does not decode is counted and skipped.
    pub(super) fn read_disk(&self, max: usize) -> Vec<Queued> {
        let Some((mut g, bodies, ev)) = self.next_bodies(max) else { return Vec::new() };
        let mut out = Vec::new();
        let mut bad = 0u64;
        let mut kept = Vec::with_capacity(bodies.len());
        for Record { body, .. } in bodies {
            match codec::decode(&body) {
                Ok(q) => {
                    out.push(q);
                    kept.push(body);
                }
                Err(e) => {
                    bad += 1;
                    tracing::warn!(sink = self.name, error = %e, "durable queue: a record does not decode; skipped");
                }
            }
        }
        g.retry = (kept, Vec::new());
        drop(g);
        self.evicted(ev);
        self.undecodable(bad);
        out
    }

    /// Disk: the next records as they are, for a sender that puts them on the wire without
    /// decoding them; one read from its file whose metadata or protobuf framing is broken is
    /// counted and skipped, as [`Self::read_disk`] does with one that does not decode. A record
    /// this process encoded and kept in memory ([`crate::export::segments::Kept`]) is a span by
    /// construction: its framing is not walked again.
    pub(super) fn read_records(&self, max: usize) -> Vec<(Meta, Vec<u8>)> {
        let Some((g, bodies, ev)) = self.next_bodies(max) else { return Vec::new() };
        drop(g);
        let mut out = Vec::with_capacity(bodies.len());
        let mut bad = 0u64;
        for Record { body, kept, .. } in bodies {
            let sendable = |b: &[u8]| kept || super::super::wire::well_formed(&b[codec::META_LEN..]);
            match Meta::read(&body).filter(|_| sendable(&body)) {
                Some(m) => out.push((m, body)),
                None => {
                    bad += 1;
                    tracing::warn!(sink = self.name, "durable queue: a record is not a span; skipped");
                }
            }
        }
        self.evicted(ev);
        self.undecodable(bad);
        out
    }

    /// A read of the segment files failed: counted and logged; the caller tries again.
    fn read_failed(&self, e: &dyn std::fmt::Display) {
        self.metrics.queue_events("read_failed", 1);
        tracing::error!(sink = self.name, error = %e, "durable queue: read failed; retrying");
    }

    /// `bad` records read but not sendable: lost as `corrupt`, counted in the delivery report,
    /// the queue gauge and the queue's events.
    fn undecodable(&self, bad: u64) {
        if bad > 0 {
            self.metrics.queue_events("record_undecodable", bad);
            self.lock().delivery.corrupt += bad;
            self.metrics.lost("corrupt", bad);
            self.metrics.export_queue_spans.dec_by(bad as i64);
        }
    }

    /// Disk: the batch in flight again, as it was handed out (loss marks included), for a
    /// retry; its records decoded once already.
    pub(super) fn reload_in_flight(&self) -> Vec<SpanData> {
        let g = self.lock();
        let (bodies, marks) = &g.retry;
        let mut out: Vec<SpanData> = bodies.iter().filter_map(|b| codec::decode(b).ok()).map(|q| q.span).collect();
        for (i, lost) in marks {
            if let Some(s) = out.get_mut(*i) {
                mark_lost(s, *lost);
            }
        }
        out
    }
}
