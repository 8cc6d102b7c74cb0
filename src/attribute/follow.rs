//! Follow a JSON-lines audit log (`--audit-log-path`) through rotation.
//!
//! In: the file at a path, one `audit.k8s.io/v1` `Event` per line, rotated either by rename
//! and a new file (the API server's own rotation, logrotate `create`) or by `copytruncate`.
//! Out: events inserted into the [`RecordStore`] with source `audit_log`.
//! Dropped (counted in `records_rejected`): lines that are not an event (`malformed_line`),
//! lines longer than the limit (`line_too_long`). Lines written between logrotate's copy and
//! its truncate are lost by `copytruncate` itself, not here.

use super::audit::AuditEvent;
use super::store::RecordStore;
use super::AttributionSource;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FollowConfig {
    pub path: PathBuf,
    /// How often to look for new lines and for rotation. Default 250 ms.
    pub poll_interval: Duration,
    /// Longer lines are skipped and counted. Default 1 MiB.
    pub max_line_bytes: usize,
    /// Start at the end of the file that exists at start-up (skip history). Default false:
    /// a restarted agent re-reads the file, and the store drops what it already holds.
    pub start_at_end: bool,
}

impl FollowConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            poll_interval: Duration::from_millis(250),
            max_line_bytes: 1 << 20,
            start_at_end: false,
        }
    }
}

/// What one poll found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Lines {
    pub lines: Vec<Vec<u8>>,
    /// Lines skipped for being over the limit.
    pub too_long: u32,
}

/// The reading side of the follower, without a clock: each [`poll`](Self::poll) returns the
/// complete lines written since the last one.
pub struct LogFollower {
    cfg: FollowConfig,
    file: Option<File>,
    id: (u64, u64),
    offset: u64,
    partial: Vec<u8>,
    /// Inside a line already known to be too long: drop bytes until its newline.
    skipping: bool,
    first_open: bool,
}

impl LogFollower {
    pub fn new(cfg: FollowConfig) -> Self {
        Self { cfg, file: None, id: (0, 0), offset: 0, partial: Vec::new(), skipping: false, first_open: true }
    }

    /// Read everything new, switching to a new file after a rename and starting over after a
    /// truncation. A missing file is not an error: it is waited for.
    pub fn poll(&mut self) -> io::Result<Lines> {
        let mut out = Lines::default();
        if self.file.is_none() && !self.open()? {
            return Ok(out);
        }
        self.read_to_end(&mut out)?;
        match std::fs::metadata(&self.cfg.path) {
            Ok(m) if (m.dev(), m.ino()) != self.id => {
                // Renamed away and replaced: finish the old file (the writer may have added
                // to it since the read above), then start the new one.
                self.read_to_end(&mut out)?;
                self.flush_partial(&mut out);
                self.file = None;
                if self.open()? {
                    self.read_to_end(&mut out)?;
                }
            }
            Ok(m) if m.len() < self.offset => {
                // copytruncate: the same file starts over.
                self.partial.clear();
                self.skipping = false;
                self.offset = 0;
                if let Some(f) = self.file.as_mut() {
                    f.seek(SeekFrom::Start(0))?;
                }
                self.read_to_end(&mut out)?;
            }
            Ok(_) => {}
            // Rotated away and not yet recreated: keep the old handle until a new file shows.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(out)
    }

    fn open(&mut self) -> io::Result<bool> {
        let f = match File::open(&self.cfg.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let m = f.metadata()?;
        self.id = (m.dev(), m.ino());
        self.offset = 0;
        self.partial.clear();
        self.skipping = false;
        let mut f = f;
        if self.first_open && self.cfg.start_at_end {
            self.offset = f.seek(SeekFrom::End(0))?;
        }
        self.first_open = false;
        self.file = Some(f);
        Ok(true)
    }

    fn read_to_end(&mut self, out: &mut Lines) -> io::Result<()> {
        let Some(f) = self.file.as_mut() else { return Ok(()) };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            self.offset += n as u64;
            for chunk in buf[..n].split_inclusive(|b| *b == b'\n') {
                let ends = chunk.last() == Some(&b'\n');
                let body = if ends { &chunk[..chunk.len() - 1] } else { chunk };
                if !self.skipping {
                    if self.partial.len() + body.len() > self.cfg.max_line_bytes {
                        self.partial.clear();
                        self.skipping = true;
                        out.too_long += 1;
                    } else {
                        self.partial.extend_from_slice(body);
                    }
                }
                if ends {
                    if !self.skipping && !self.partial.is_empty() {
                        out.lines.push(std::mem::take(&mut self.partial));
                    }
                    self.partial.clear();
                    self.skipping = false;
                }
            }
        }
    }

    fn flush_partial(&mut self, out: &mut Lines) {
        if !self.skipping && !self.partial.is_empty() {
            out.lines.push(std::mem::take(&mut self.partial));
        }
        self.partial.clear();
        self.skipping = false;
    }
}

/// Parse lines into the store; returns how many were malformed.
pub fn ingest(store: &RecordStore, lines: Lines) -> u32 {
    let mut bad = 0;
    for _ in 0..lines.too_long {
        store.metrics().reject("line_too_long");
    }
    for line in lines.lines {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<AuditEvent>(&line) {
            Ok(ev) => {
                store.insert_audit_event(ev, AttributionSource::AuditLog);
            }
            Err(_) => {
                store.metrics().reject("malformed_line");
                bad += 1;
            }
        }
    }
    bad
}

/// Follow the log until `shutdown` completes. File errors are logged and retried.
pub async fn follow(cfg: FollowConfig, store: Arc<RecordStore>, shutdown: impl std::future::Future<Output = ()>) {
    let interval = cfg.poll_interval;
    let mut follower = Some(LogFollower::new(cfg));
    tokio::pin!(shutdown);
    loop {
        let Some(mut f) = follower.take() else { return };
        let store2 = store.clone();
        let joined = tokio::task::spawn_blocking(move || {
            match f.poll() {
                Ok(lines) => {
                    ingest(&store2, lines);
                }
                Err(e) => tracing::warn!(path = %f.cfg.path.display(), error = %e, "reading the audit log failed"),
            }
            f
        })
        .await;
        match joined {
            Ok(f) => follower = Some(f),
            Err(_) => return,
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
