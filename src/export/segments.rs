//! The durable queue's storage: append-only segment files of length-prefixed, checksummed
//! records in one directory, within a byte budget.
//!
//! In: batches of record bodies (see [`super::codec`]). Out: the same bodies, oldest first,
//! to a reader that acknowledges them once exported (from memory when this run wrote them and
//! still keeps them, else from their files: `segments/read.rs`); a segment file is deleted
//! only when every record in it was acknowledged, and an `ack` file remembers how far into the
//! oldest segment the acknowledged records reach, so a restart resends at most what was in
//! flight.
//! Dropped, each reported to the caller to count: whole oldest segments when a batch would
//! take the directory over its budget ([`Evicted`], with the metadata of the records in them
//! that were never read); a batch whose write failed (a full disk: the segment is cut back to
//! where it was); a torn tail (a crash mid-write: cut off at the last whole record); a segment
//! whose checksums fail before its end (moved to `corrupt/`, its good prefix kept).
//!
//! File layout: `{seq:016x}.seg` = 8-byte magic, then records `[u32 len][u32 crc32][body]`
//! (little endian; crc32 of the body, IEEE, hardware accelerated by crc32fast). `ack` =
//! `[u64 seq][u64 offset][u32 crc32]`.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::codec::{Meta, META_LEN};

const MAGIC: &[u8; 8] = b"PTQSEG1\n";
const HEADER: u64 = MAGIC.len() as u64;
const REC_HEAD: u64 = 8;
/// Longer than any span podtrail builds by far; a longer length is damage.
pub const MAX_RECORD: u32 = 16 << 20;
const CHUNK: usize = 256 << 10;
/// The most bytes of written records kept in memory for the reader ([`Kept`]).
pub const KEPT_MAX: usize = 4 << 20;

/// When written records are forced to the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// Never: the page cache has them (survives `kill -9` and OOM kills, not a power cut).
    Never,
    /// After each written batch (what the export stage had ready at once).
    #[default]
    Batch,
    /// After each record.
    Always,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    pub dir: PathBuf,
    pub budget: u64,
    pub segment_max: u64,
    pub fsync: Fsync,
    /// Bytes of records appended and not yet read that are kept in memory for the reader
    /// ([`Kept`]); 0: every record is read back from its file.
    pub kept: usize,
}

impl StoreConfig {
    /// Segments of an eighth of the budget (at most 64 MiB, at least 64 KiB): eviction loses
    /// at most that much at once. Up to a sixteenth of the budget, at most [`KEPT_MAX`], of
    /// records not read yet kept in memory.
    pub fn new(dir: PathBuf, budget: u64, fsync: Fsync) -> StoreConfig {
        let segment_max = (budget / 8).clamp(64 << 10, 64 << 20);
        let kept = (budget / 16).min(KEPT_MAX as u64) as usize;
        StoreConfig { dir, budget, segment_max, fsync, kept }
    }
}

/// A place in the queue: a segment and a byte offset in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub seq: u64,
    pub off: u64,
}

/// What `open` found.
#[derive(Clone, Debug, Default)]
pub struct Recovery {
    pub segments: usize,
    /// Records left unacknowledged by the previous run.
    pub records: u64,
    pub bytes: u64,
    pub torn: u64,
    pub corrupt: Vec<PathBuf>,
    pub took: Duration,
}

/// What a write or read had to give up.
#[derive(Debug, Default)]
pub struct Evicted {
    pub segments: u64,
    pub bytes: u64,
    /// Metadata of records evicted before they were read (lost).
    pub unread: Vec<Meta>,
    /// Segments found damaged while reading (moved aside; records after the damage lost).
    pub corrupt: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the queue directory {path}: {err}")]
    Create { path: PathBuf, err: io::Error },
    #[error("queue file {path}: {err}")]
    Io { path: PathBuf, err: io::Error },
    #[error("a batch of {0} bytes does not fit the queue's budget of {1} bytes")]
    TooLarge(u64, u64),
}

struct Segment {
    seq: u64,
    len: u64,
}

pub struct SegmentStore {
    cfg: StoreConfig,
    /// Oldest first; the last is the one appended to.
    segments: VecDeque<Segment>,
    writer: File,
    reader: Option<(u64, File)>,
    read: Pos,
    ack: Pos,
    ack_file: File,
    bytes: u64,
    unread: u64,
    /// Records appended by this run and not read yet, as they were written ([`Kept`]).
    kept: Kept,
    /// The reader's buffer, kept between reads (zeroed once, not per read).
    chunk: Vec<u8>,
}

fn seg_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.seg"))
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), err: source }
}

#[derive(Debug, PartialEq, Eq)]
enum Problem {
    Torn,
    Corrupt,
}

struct Scan {
    good_end: u64,
    records: u64,
    metas: Vec<Meta>,
    problem: Option<Problem>,
}

/// Reads a segment from its start, checking every record; counts (and, if asked, collects the
/// metadata of) the records starting at or after `from`.
fn scan(path: &Path, from: u64, metas: bool) -> io::Result<Scan> {
    let f = File::open(path)?;
    let file_len = f.metadata()?.len();
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut out = Scan { good_end: 0, records: 0, metas: Vec::new(), problem: None };
    let mut magic = [0u8; 8];
    if file_len < HEADER || r.read_exact(&mut magic).is_err() || &magic != MAGIC {
        // an empty or headerless file is a crash right after creation; anything else is damage
        out.problem = Some(if file_len < HEADER && all_zero(&mut r)? { Problem::Torn } else { Problem::Corrupt });
        return Ok(out);
    }
    let mut off = HEADER;
    let mut body = Vec::new();
    while off < file_len {
        let mut head = [0u8; 8];
        if file_len - off < REC_HEAD {
            out.problem = Some(Problem::Torn);
            break;
        }
        r.read_exact(&mut head)?;
        let len = u32::from_le_bytes(head[..4].try_into().unwrap_or_default());
        let crc = u32::from_le_bytes(head[4..].try_into().unwrap_or_default());
        if len as u64 > file_len - off - REC_HEAD {
            // runs past the end: the write was cut short
            out.problem = Some(Problem::Torn);
            break;
        }
        if len == 0 && crc == 0 && all_zero(&mut r)? {
            // a file system that extended the file but not its data after a power cut
            out.problem = Some(Problem::Torn);
            break;
        }
        if len > MAX_RECORD || (len as usize) < META_LEN {
            out.problem = Some(Problem::Corrupt);
            break;
        }
        body.resize(len as usize, 0);
        r.read_exact(&mut body)?;
        if crc32fast::hash(&body) != crc {
            let last = off + REC_HEAD + len as u64 == file_len;
            out.problem = Some(if last { Problem::Torn } else { Problem::Corrupt });
            break;
        }
        if off >= from {
            out.records += 1;
            if metas {
                out.metas.extend(Meta::read(&body));
            }
        }
        off += REC_HEAD + len as u64;
    }
    out.good_end = off;
    Ok(out)
}

fn all_zero(r: &mut impl Read) -> io::Result<bool> {
    let mut buf = [0u8; 8192];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
    }
}

fn read_ack(path: &Path) -> Option<Pos> {
    let b = fs::read(path).ok()?;
    if b.len() < 20 || crc32fast::hash(&b[..16]) != u32::from_le_bytes(b[16..20].try_into().ok()?) {
        return None;
    }
    Some(Pos { seq: u64::from_le_bytes(b[..8].try_into().ok()?), off: u64::from_le_bytes(b[8..16].try_into().ok()?) })
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Moves a damaged segment to `corrupt/` and, when its start was good, writes that prefix back
/// under the segment's name. Returns where the damaged file went.
fn move_aside(dir: &Path, path: &Path, good_end: u64) -> io::Result<PathBuf> {
    let aside = dir.join("corrupt");
    fs::create_dir_all(&aside)?;
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let to = aside.join(format!("{name}.{stamp}"));
    fs::rename(path, &to)?;
    if good_end > HEADER {
        let mut src = File::open(&to)?.take(good_end);
        let mut dst = File::create(path)?;
        io::copy(&mut src, &mut dst)?;
        dst.sync_all()?;
    }
    Ok(to)
}

impl SegmentStore {
    /// Opens (creating) the directory, checks every segment left there, and starts a new one
    /// to append to. Reading starts where the previous run's acknowledgements ended.
    pub fn open(cfg: StoreConfig) -> Result<(SegmentStore, Recovery), StoreError> {
        let t0 = Instant::now();
        let dir = cfg.dir.clone();
        fs::create_dir_all(&dir).map_err(|source| StoreError::Create { path: dir.clone(), err: source })?;
        let ack_path = dir.join("ack");
        let acked = read_ack(&ack_path).unwrap_or_default();
        let mut seqs: Vec<u64> = fs::read_dir(&dir)
            .map_err(io_err(&dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                u64::from_str_radix(n.strip_suffix(".seg")?, 16).ok()
            })
            .collect();
        seqs.sort_unstable();
        let mut rec = Recovery::default();
        let mut segments = VecDeque::new();
        let mut bytes = 0;
        for seq in seqs {
            let path = seg_path(&dir, seq);
            if seq < acked.seq {
                // acknowledged before the previous run stopped; its deletion did not happen
                let _ = fs::remove_file(&path);
                continue;
            }
            let from = if seq == acked.seq { acked.off } else { 0 };
            let s = scan(&path, from, false).map_err(io_err(&path))?;
            match s.problem {
                Some(Problem::Torn) => {
                    rec.torn += 1;
                    tracing::warn!(segment = %path.display(), kept_bytes = s.good_end, "queue segment ends in a torn record (a crash mid-write): cut back to its last whole record");
                    let f = OpenOptions::new().write(true).open(&path).map_err(io_err(&path))?;
                    f.set_len(s.good_end).map_err(io_err(&path))?;
                }
                Some(Problem::Corrupt) => {
                    let to = move_aside(&dir, &path, s.good_end).map_err(io_err(&path))?;
                    tracing::error!(segment = %path.display(), moved_to = %to.display(), good_records = s.records, "queue segment is damaged (a checksum failed before its end): moved aside, its good start kept");
                    rec.corrupt.push(to);
                }
                None => {}
            }
            if s.good_end <= HEADER {
                let _ = fs::remove_file(&path);
                continue;
            }
            rec.records += s.records;
            bytes += s.good_end;
            segments.push_back(Segment { seq, len: s.good_end });
        }
        rec.segments = segments.len();
        rec.bytes = bytes;
        // reading resumes at the acknowledged place when its segment is still here
        let read = match segments.front() {
            Some(f) if f.seq == acked.seq => Pos { seq: f.seq, off: acked.off.max(HEADER) },
            Some(f) => Pos { seq: f.seq, off: HEADER },
            None => Pos::default(),
        };
        let ack_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&ack_path)
            .map_err(io_err(&ack_path))?;
        // appending goes on in the newest segment (whole again after the checks above), so a
        // start on a full disk needs no new file; else a new one, numbered after everything
        // seen or acknowledged
        let writer = match segments.back() {
            Some(last) if last.len < cfg.segment_max => {
                let path = seg_path(&dir, last.seq);
                OpenOptions::new().append(true).open(&path).map_err(io_err(&path))?
            }
            _ => {
                let next = segments.back().map(|s| s.seq + 1).unwrap_or(1).max(acked.seq + 1);
                let w = Self::create_segment(&dir, next, cfg.fsync)?;
                segments.push_back(Segment { seq: next, len: HEADER });
                bytes += HEADER;
                w
            }
        };
        let first = segments.front().map(|s| s.seq).unwrap_or(1);
        let read = if read == Pos::default() { Pos { seq: first, off: HEADER } } else { read };
        let kept = Kept::new(cfg.kept);
        let store = SegmentStore {
            cfg,
            segments,
            writer,
            reader: None,
            read,
            ack: read,
            ack_file,
            bytes,
            unread: rec.records,
            kept,
            chunk: Vec::new(),
        };
        rec.took = t0.elapsed();
        Ok((store, rec))
    }

    fn create_segment(dir: &Path, seq: u64, fsync: Fsync) -> Result<File, StoreError> {
        let path = seg_path(dir, seq);
        let mut f = OpenOptions::new().create(true).truncate(true).write(true).open(&path).map_err(io_err(&path))?;
        f.write_all(MAGIC).map_err(io_err(&path))?;
        if fsync != Fsync::Never {
            f.sync_data().map_err(io_err(&path))?;
            sync_dir(dir).map_err(io_err(dir))?;
        }
        // appends go to the end, wherever a failed write left the length
        let f = OpenOptions::new().append(true).open(&path).map_err(io_err(&path))?;
        Ok(f)
    }

    fn roll(&mut self) -> Result<(), StoreError> {
        let next = self.segments.back().map(|s| s.seq + 1).unwrap_or(1);
        self.writer = Self::create_segment(&self.cfg.dir, next, self.cfg.fsync)?;
        self.segments.push_back(Segment { seq: next, len: HEADER });
        self.bytes += HEADER;
        Ok(())
    }

    fn active(&mut self) -> &mut Segment {
        // never empty: open and roll push one
        self.segments.back_mut().expect("an active segment")
    }

    /// Appends a batch of record bodies, evicting the oldest segments first when the batch
    /// would take the directory over its budget. On a failed write the segment is cut back to
    /// where it was and the error returned: none of the batch is in the queue. Once written,
    /// the bodies are kept for the reader as far as [`Kept`] has room.
    pub fn append(&mut self, bodies: Vec<Vec<u8>>) -> Result<Evicted, StoreError> {
        let mut ev = Evicted::default();
        if bodies.is_empty() {
            return Ok(ev);
        }
        let total: u64 = bodies.iter().map(|b| REC_HEAD + b.len() as u64).sum();
        if total + 2 * HEADER > self.cfg.budget || bodies.iter().any(|b| b.len() as u64 > MAX_RECORD as u64) {
            return Err(StoreError::TooLarge(total, self.cfg.budget));
        }
        let active_len = self.active().len;
        if active_len > HEADER && active_len + total > self.cfg.segment_max {
            self.roll()?;
        }
        while self.bytes + total > self.cfg.budget {
            if self.segments.len() == 1 {
                self.roll()?;
            }
            self.evict_oldest(&mut ev)?;
        }
        let mut buf = Vec::with_capacity(total as usize);
        let seq = self.active().seq;
        let path = seg_path(&self.cfg.dir, seq);
        let before = self.active().len;
        let mut res = Ok(());
        for b in &bodies {
            buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(b).to_le_bytes());
            buf.extend_from_slice(b);
            if self.cfg.fsync == Fsync::Always {
                res = self.writer.write_all(&buf).and_then(|_| self.writer.sync_data());
                buf.clear();
                if res.is_err() {
                    break;
                }
            }
        }
        if res.is_ok() && !buf.is_empty() {
            res = self.writer.write_all(&buf);
            if res.is_ok() && self.cfg.fsync == Fsync::Batch {
                res = self.writer.sync_data();
            }
        }
        if let Err(source) = res {
            // whatever part of the batch reached the file goes: the next batch starts clean
            if self.writer.set_len(before).is_err() {
                self.roll()?;
            }
            return Err(StoreError::Io { path, err: source });
        }
        self.active().len = before + total;
        self.bytes += total;
        self.unread += bodies.len() as u64;
        self.kept.add(seq, before, bodies);
        Ok(ev)
    }

    fn evict_oldest(&mut self, ev: &mut Evicted) -> Result<(), StoreError> {
        let Some(seg) = self.segments.pop_front() else { return Ok(()) };
        let path = seg_path(&self.cfg.dir, seg.seq);
        if self.read.seq <= seg.seq {
            let from = if self.read.seq == seg.seq { self.read.off } else { 0 };
            let s = scan(&path, from, true).map_err(io_err(&path))?;
            self.unread = self.unread.saturating_sub(s.metas.len() as u64);
            ev.unread.extend(s.metas);
        }
        fs::remove_file(&path).map_err(io_err(&path))?;
        self.kept.forget_segment(seg.seq);
        if self.reader.as_ref().is_some_and(|(s, _)| *s == seg.seq) {
            self.reader = None;
        }
        self.bytes -= seg.len;
        ev.segments += 1;
        ev.bytes += seg.len;
        let next = Pos { seq: self.segments.front().map(|s| s.seq).unwrap_or(seg.seq + 1), off: HEADER };
        if self.read.seq <= seg.seq {
            self.read = next;
        }
        if self.ack.seq <= seg.seq {
            self.ack = next;
        }
        Ok(())
    }

    /// Everything before `upto` was exported: deletes the segments it covers and records the
    /// place, so a restart resumes there.
    pub fn ack(&mut self, upto: Pos) -> Result<(), StoreError> {
        if upto <= self.ack {
            return Ok(());
        }
        self.ack = upto;
        while self.segments.len() > 1 {
            let f = &self.segments[0];
            if !(f.seq < self.ack.seq || (f.seq == self.ack.seq && self.ack.off >= f.len)) {
                break;
            }
            let f = self.segments.pop_front().expect("len > 1");
            let path = seg_path(&self.cfg.dir, f.seq);
            fs::remove_file(&path).map_err(io_err(&path))?;
            if self.reader.as_ref().is_some_and(|(s, _)| *s == f.seq) {
                self.reader = None;
            }
            self.bytes -= f.len;
            if self.ack.seq == f.seq {
                self.ack = Pos { seq: self.segments[0].seq, off: HEADER };
            }
        }
        let mut b = [0u8; 20];
        b[..8].copy_from_slice(&self.ack.seq.to_le_bytes());
        b[8..16].copy_from_slice(&self.ack.off.to_le_bytes());
        let crc = crc32fast::hash(&b[..16]);
        b[16..].copy_from_slice(&crc.to_le_bytes());
        let path = self.cfg.dir.join("ack");
        // not synced (but with `always`): a lost acknowledgement resends, it never loses
        self.ack_file.write_all_at(&b, 0).map_err(io_err(&path))?;
        if self.cfg.fsync == Fsync::Always {
            self.ack_file.sync_data().map_err(io_err(&path))?;
        }
        Ok(())
    }

    /// Records written and not yet read.
    pub fn unread(&self) -> u64 {
        self.unread
    }

    /// Bytes of segment files in the directory.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn dir(&self) -> &Path {
        &self.cfg.dir
    }
}

mod read;
#[cfg(test)]
#[path = "segments_tests.rs"]
mod tests;

pub use read::{Kept, Record};
