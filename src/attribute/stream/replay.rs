//! The receiver's replay buffer: the last N records, numbered, so an agent that reconnects
//! asks for what it has not seen ("since seq S") and gets it without duplicates.
//!
//! In: every stage the receiver's store accepted ([`ReplayBuffer::push`], the store's tap).
//! Out: encoded lines after a sequence number ([`ReplayBuffer::after`]); a `watch` of the last
//! sequence number for live subscribers to wait on.
//! Dropped: the oldest line when the buffer is full (`replay_dropped`); a subscriber that asks
//! for a dropped one is told how many it missed.

use super::metrics::StreamMetrics;
use super::wire;
use crate::attribute::audit::Stage;
use crate::attribute::record::RequestRecord;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

struct Buf {
    /// (seq, the node of the record's pod, encoded line), seq strictly increasing by one.
    /// `None`: no node filter (every subscriber gets it).
    lines: VecDeque<(u64, Option<Arc<str>>, Bytes)>,
    last_seq: u64,
}

/// Shared by the store's tap and every subscriber.
pub struct ReplayBuffer {
    buf: Mutex<Buf>,
    capacity: usize,
    last: watch::Sender<u64>,
    /// Random per process: a subscriber holding another instance's sequence numbers starts over.
    instance: String,
    metrics: StreamMetrics,
}

/// Lines after a sequence number.
pub struct Batch {
    pub lines: Vec<(u64, Bytes)>,
    /// Records after the asked-for number that the buffer no longer holds (of any node).
    pub missed: u64,
    /// The last sequence number looked at: a subscriber of one node moves past the other
    /// nodes' records up to here.
    pub scanned_to: u64,
}

impl ReplayBuffer {
    pub fn new(capacity: usize, metrics: StreamMetrics) -> Self {
        let instance = hex::encode(&uuid::Uuid::from_u128(rand_u128()).as_bytes()[..8]);
        Self {
            buf: Mutex::new(Buf { lines: VecDeque::new(), last_seq: 0 }),
            capacity: capacity.max(1),
            last: watch::channel(0).0,
            instance,
            metrics,
        }
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn metrics(&self) -> &StreamMetrics {
        &self.metrics
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buf> {
        self.buf.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number, encode and keep one record; returns its sequence number, or `None` for a record
    /// whose line would be over [`wire::MAX_LINE`] (counted, not streamed).
    pub fn push(&self, rec: &RequestRecord, stage: Stage) -> Option<u64> {
        self.push_for(rec, stage, None)
    }

    /// [`Self::push`] for the subscribers of `node` only (`None`: all of them).
    pub fn push_for(&self, rec: &RequestRecord, stage: Stage, node: Option<Arc<str>>) -> Option<u64> {
        let seq = {
            let mut b = self.lock();
            let seq = b.last_seq + 1;
            let line = wire::encode_record(seq, rec, stage);
            if line.len() > wire::MAX_LINE {
                drop(b);
                self.metrics.records_too_large.inc();
                let id: String = rec.audit_id.chars().take(64).collect();
                tracing::warn!(audit_id = %id, bytes = line.len(), "record too large to stream: not sent to the agents");
                return None;
            }
            b.last_seq = seq;
            b.lines.push_back((seq, node, line));
            while b.lines.len() > self.capacity {
                b.lines.pop_front();
                self.metrics.replay_dropped.inc();
            }
            self.metrics.replay_records.set(b.lines.len() as i64);
            seq
        };
        self.last.send_replace(seq);
        Some(seq)
    }

    pub fn last_seq(&self) -> u64 {
        self.lock().last_seq
    }

    /// Up to `max` lines with a sequence number above `after`.
    pub fn after(&self, after: u64, max: usize) -> Batch {
        self.after_for(after, max, None)
    }

    /// Up to `max` lines above `after` for a subscriber of `node` (`None`: every line).
    pub fn after_for(&self, after: u64, max: usize, node: Option<&str>) -> Batch {
        let b = self.lock();
        let Some(&(oldest, _, _)) = b.lines.front() else {
            return Batch { lines: Vec::new(), missed: b.last_seq.saturating_sub(after), scanned_to: b.last_seq };
        };
        let missed = oldest.saturating_sub(after + 1);
        let skip = (after + 1).saturating_sub(oldest) as usize;
        let mut lines = Vec::new();
        let mut scanned_to = after.max(oldest.saturating_sub(1));
        for (seq, n, line) in b.lines.iter().skip(skip) {
            if lines.len() >= max {
                break;
            }
            scanned_to = *seq;
            let mine = match (node, n) {
                (Some(want), Some(n)) => **n == *want,
                _ => true,
            };
            if mine {
                lines.push((*seq, line.clone()));
            }
        }
        Batch { lines, missed, scanned_to }
    }

    /// Resolves whenever a record is pushed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.last.subscribe()
    }
}

/// Enough randomness for an instance id without another dependency: time, pid and a stack
/// address through SHA-256.
fn rand_u128() -> u128 {
    use sha2::{Digest, Sha256};
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let local = 0u8;
    let d = Sha256::digest(format!("{now}/{}/{:p}", std::process::id(), &local));
    u128::from_le_bytes(d[..16].try_into().expect("16 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str) -> RequestRecord {
        RequestRecord::test_exec(id)
    }

    #[test]
    fn replay_is_bounded_and_reports_what_a_late_subscriber_missed() {
        let m = StreamMetrics::default();
        let b = ReplayBuffer::new(3, m.clone());
        for i in 1..=5 {
            assert_eq!(b.push(&rec(&format!("r{i}")), Stage::RequestReceived), Some(i));
        }
        assert_eq!(m.replay_dropped.get(), 2);
        let all = b.after(0, 100);
        assert_eq!((all.lines.iter().map(|l| l.0).collect::<Vec<_>>(), all.missed), (vec![3, 4, 5], 2));
        let tail = b.after(3, 100);
        assert_eq!((tail.lines.iter().map(|l| l.0).collect::<Vec<_>>(), tail.missed), (vec![4, 5], 0));
        assert!(b.after(5, 100).lines.is_empty());
        assert_eq!(b.after(1, 1).lines[0].0, 3);
    }
}
