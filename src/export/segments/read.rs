//! Reading the segment store: records oldest first, from memory when this run wrote them and
//! they are still kept ([`Kept`]), else from their files, every record read from a file checked
//! against its checksum.
//!
//! Why records are kept: the reader (the sink's driver) usually follows the writer by one
//! batch, so reading back what was just written (a read into a zeroed buffer, a copy per
//! record, its checksum again, and the sender's check that the record is a span) was most of
//! what the durable queue cost beside the memory queue (BENCHMARKS.md, exp22). A kept record is
//! the very bytes this process encoded and wrote: nothing read from the disk is trusted without
//! its checks, and what someone changes in a file after it was written cannot reach the wire
//! through a kept copy. The files stay the durable copy: a restart reads them (and checks every
//! record, `open`), and the reader falls back to them when a record was not kept (the memory's
//! share full: a backlog larger than [`super::KEPT_MAX`], an outage).

use std::collections::VecDeque;
use std::os::unix::fs::FileExt;

use super::{io_err, move_aside, scan, seg_path, Evicted, Pos, SegmentStore, StoreError, CHUNK, MAX_RECORD, REC_HEAD};

/// A record read: its body, the position after it (what to acknowledge once it was
/// exported), and whether it is this run's own copy rather than bytes read from the file.
#[derive(Debug)]
pub struct Record {
    pub body: Vec<u8>,
    pub end: Pos,
    /// Kept in memory since this process wrote it ([`Kept`]): never read from the disk.
    pub kept: bool,
}

/// Records appended by this run and not read yet, oldest first, each with where it starts in
/// its segment, within a byte budget. A record that does not fit is not kept (the reader
/// reads it from its file): the kept ones need not follow each other, the reader takes one
/// when its position is the read position.
#[derive(Debug, Default)]
pub struct Kept {
    records: VecDeque<(Pos, Vec<u8>)>,
    bytes: usize,
    max: usize,
}

impl Kept {
    pub fn new(max: usize) -> Kept {
        Kept { max, ..Kept::default() }
    }

    /// Bytes kept.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The records of a batch written to segment `seq` from offset `off`, as far as there is
    /// room.
    pub(super) fn add(&mut self, seq: u64, mut off: u64, bodies: Vec<Vec<u8>>) {
        for b in bodies {
            let at = Pos { seq, off };
            off += REC_HEAD + b.len() as u64;
            if self.bytes + b.len() <= self.max {
                self.bytes += b.len();
                self.records.push_back((at, b));
            }
        }
    }

    /// Drops the records of a segment that went (evicted, or moved aside).
    pub(super) fn forget_segment(&mut self, seq: u64) {
        if self.records.iter().any(|(p, _)| p.seq == seq) {
            self.records.retain(|(p, _)| p.seq != seq);
            self.bytes = self.records.iter().map(|(_, b)| b.len()).sum();
        }
    }

    /// Drops the records that start before `read` (read from their file instead).
    fn skip_to(&mut self, read: Pos) {
        while self.records.front().is_some_and(|(p, _)| *p < read) {
            if let Some((_, b)) = self.records.pop_front() {
                self.bytes -= b.len();
            }
        }
    }

    /// The record starting at `read`, if kept.
    fn take_at(&mut self, read: Pos) -> Option<Vec<u8>> {
        self.skip_to(read);
        if self.records.front().is_some_and(|(p, _)| *p == read) {
            let (_, b) = self.records.pop_front()?;
            self.bytes -= b.len();
            return Some(b);
        }
        None
    }

    /// Where the next kept record of segment `seq` starts: the reader's file read stops there.
    fn next_in(&self, seq: u64) -> Option<u64> {
        self.records.front().filter(|(p, _)| p.seq == seq).map(|(p, _)| p.off)
    }
}

impl SegmentStore {
    /// Up to `max` records from the read position on, each with the position after it (what
    /// to acknowledge once it was exported). Damaged segments met on the way are moved aside
    /// and reported in `ev`.
    pub fn read(&mut self, max: usize, ev: &mut Evicted) -> Result<Vec<Record>, StoreError> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(i) = self.segments.iter().position(|s| s.seq >= self.read.seq) else { break };
            let (seq, len, last) = (self.segments[i].seq, self.segments[i].len, i + 1 == self.segments.len());
            if seq > self.read.seq {
                self.read = Pos { seq, off: super::HEADER };
            }
            if self.read.off >= len {
                if last {
                    break;
                }
                self.read = Pos { seq: self.segments[i + 1].seq, off: super::HEADER };
                continue;
            }
            if let Some(body) = self.kept.take_at(self.read) {
                let end = Pos { seq, off: self.read.off + REC_HEAD + body.len() as u64 };
                self.read = end;
                self.unread = self.unread.saturating_sub(1);
                out.push(Record { body, end, kept: true });
                continue;
            }
            let path = seg_path(&self.cfg.dir, seq);
            if self.reader.as_ref().is_none_or(|(s, _)| *s != seq) {
                self.reader = Some((seq, std::fs::File::open(&path).map_err(io_err(&path))?));
            }
            // up to the next kept record of this segment, at most a chunk
            let until = self.kept.next_in(seq).filter(|&o| o > self.read.off).unwrap_or(len).min(len);
            let want = ((until - self.read.off) as usize).min(CHUNK);
            if self.chunk.len() < CHUNK {
                self.chunk.resize(CHUNK, 0);
            }
            let chunk = &mut self.chunk[..want];
            let file = &self.reader.as_ref().expect("opened above").1;
            file.read_exact_at(chunk, self.read.off).map_err(io_err(&path))?;
            let mut at = 0usize;
            let mut damaged = false;
            while out.len() < max && at + REC_HEAD as usize <= chunk.len() {
                let n = u32::from_le_bytes(chunk[at..at + 4].try_into().unwrap_or_default()) as usize;
                let crc = u32::from_le_bytes(chunk[at + 4..at + 8].try_into().unwrap_or_default());
                let end = self.read.off + (at + REC_HEAD as usize + n) as u64;
                if n > MAX_RECORD as usize || end > len {
                    damaged = true;
                    break;
                }
                let body = if at + 8 + n <= chunk.len() {
                    chunk[at + 8..at + 8 + n].to_vec()
                } else if at == 0 {
                    // one record longer than a chunk
                    let mut b = vec![0u8; n];
                    file.read_exact_at(&mut b, self.read.off + REC_HEAD).map_err(io_err(&path))?;
                    b
                } else {
                    break;
                };
                if crc32fast::hash(&body) != crc {
                    damaged = true;
                    break;
                }
                at += REC_HEAD as usize + n;
                out.push(Record { body, end: Pos { seq, off: end }, kept: false });
                self.unread = self.unread.saturating_sub(1);
            }
            self.read.off += at as u64;
            if damaged {
                // checked at open, so this is damage since: the rest of this segment is lost
                if last {
                    self.roll()?;
                }
                let good = self.read.off;
                let to = move_aside(&self.cfg.dir, &path, 0).map_err(io_err(&path))?;
                tracing::error!(segment = %path.display(), moved_to = %to.display(), at = good, "queue segment damaged while reading: moved aside, the records after the damage are lost");
                if let Some(j) = self.segments.iter().position(|s| s.seq == seq) {
                    let s = self.segments.remove(j).expect("found");
                    self.bytes -= s.len;
                }
                self.reader = None;
                self.kept.forget_segment(seq);
                ev.corrupt.push(to);
                self.unread = self.count_unread();
            }
        }
        Ok(out)
    }

    fn count_unread(&self) -> u64 {
        // only after damage: rescan what is left to read
        let mut n = 0;
        for s in &self.segments {
            if s.seq >= self.read.seq {
                let from = if s.seq == self.read.seq { self.read.off } else { 0 };
                n += scan(&seg_path(&self.cfg.dir, s.seq), from, false).map(|s| s.records).unwrap_or(0);
            }
        }
        n
    }
}
