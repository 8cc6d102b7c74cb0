//! podtrail's state directory on the node (default `/var/lib/podtrail`, a hostPath in the
//! DaemonSet so it outlives the pod): one agent at a time, a heartbeat, and what a crash left.
//!
//! In: the directory. Out: a held [`StateDir`] (an exclusive `flock` on `lock`, released by
//! the kernel when the process dies, however it dies), the durable export queue's directory
//! under it (`queue/<sink>`), and, when the previous agent did not stop cleanly, the
//! [`Gap`] during which nothing watched the node.
//!
//! Files: `lock` (flocked; holds the holder's pid for the error a second agent prints),
//! `running` (written at start, removed at a clean stop: found at start = the previous run
//! crashed or was killed), `heartbeat` (wall-clock ns, rewritten every few seconds: where the
//! blind time starts).
//!
//! A second agent on a held directory fails with an error naming the holder's pid rather than
//! taking a subdirectory of its own: a subdirectory would leave the first agent's queue to be
//! replayed by whoever takes it next (a test's agent sending a node's spans to the test's
//! backend, or the reverse). Give each agent its own directory (`--state-dir`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often the heartbeat is written.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create podtrail's state directory {path}: {err} (create it, or choose another with --state-dir or export.queue.directory)")]
    Create { path: PathBuf, err: io::Error },
    #[error("podtrail's state directory {path} is held by another agent (pid {pid}): give each agent its own directory with --state-dir or export.queue.directory")]
    Locked { path: PathBuf, pid: String },
    #[error("state directory {path}: {err}")]
    Io { path: PathBuf, err: io::Error },
}

/// A time the node was not watched: from the previous agent's last sign of life to this start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gap {
    pub from: SystemTime,
    pub to: SystemTime,
    /// The previous agent's pid, when its marker said.
    pub previous_pid: Option<u32>,
    /// `heartbeat` (its last heartbeat), or `started` (it died before its first one).
    pub from_source: &'static str,
}

/// A held state directory as the export stage gets it (compared by identity).
#[derive(Clone, Debug)]
pub struct Held {
    pub dir: std::sync::Arc<StateDir>,
    pub gap: Option<Gap>,
}

impl PartialEq for Held {
    fn eq(&self, o: &Held) -> bool {
        std::sync::Arc::ptr_eq(&self.dir, &o.dir)
    }
}

impl Eq for Held {}

/// The held directory; dropping it releases the lock (a clean stop also calls [`Self::stopped`]).
#[derive(Debug)]
pub struct StateDir {
    dir: PathBuf,
    _lock: File,
}

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos()
}

fn from_ns(ns: u128) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns.min(u64::MAX as u128) as u64)
}

impl StateDir {
    /// Creates (if needed) and takes the directory; returns the gap when the previous agent
    /// on it did not stop cleanly.
    pub fn open(dir: &Path) -> Result<(StateDir, Option<Gap>), StateError> {
        fs::create_dir_all(dir).map_err(|source| StateError::Create { path: dir.to_owned(), err: source })?;
        let io_err = |p: PathBuf| move |source| StateError::Io { path: p, err: source };
        let lock_path = dir.join("lock");
        let mut lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(|source| StateError::Create { path: lock_path.clone(), err: source })?;
        // SAFETY: flock(2) on a descriptor this function owns.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut pid = String::new();
                let _ = lock.read_to_string(&mut pid);
                let pid = pid.trim().to_owned();
                return Err(StateError::Locked {
                    path: dir.to_owned(),
                    pid: if pid.is_empty() { "unknown".into() } else { pid },
                });
            }
            return Err(StateError::Io { path: lock_path, err: e });
        }
        let me = std::process::id();
        lock.set_len(0).map_err(io_err(lock_path.clone()))?;
        writeln!(lock, "{me}").map_err(io_err(lock_path.clone()))?;

        let running = dir.join("running");
        let gap = fs::read_to_string(&running).ok().map(|marker| {
            let mut f = marker.split_whitespace();
            let previous_pid = f.next().and_then(|p| p.parse().ok());
            let started = f.next().and_then(|s| s.parse::<u128>().ok());
            let beat = fs::read_to_string(dir.join("heartbeat")).ok().and_then(|s| s.trim().parse::<u128>().ok());
            let (from, from_source) = match (beat, started) {
                (Some(b), Some(s)) if b >= s => (from_ns(b), "heartbeat"),
                (_, Some(s)) => (from_ns(s), "started"),
                (Some(b), None) => (from_ns(b), "heartbeat"),
                (None, None) => (SystemTime::now(), "unknown"),
            };
            Gap { from, to: SystemTime::now(), previous_pid, from_source }
        });
        let started = now_ns();
        fs::write(&running, format!("{me} {started}\n")).map_err(io_err(running.clone()))?;
        let st = StateDir { dir: dir.to_owned(), _lock: lock };
        st.heartbeat().map_err(io_err(dir.join("heartbeat")))?;
        Ok((st, gap))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The durable queue's directory for one sink.
    pub fn queue_dir(&self, sink: &str) -> PathBuf {
        self.dir.join("queue").join(sink)
    }

    /// Records that this agent is alive now (a write and a rename: never half a number).
    pub fn heartbeat(&self) -> io::Result<()> {
        let tmp = self.dir.join("heartbeat.tmp");
        fs::write(&tmp, format!("{}\n", now_ns()))?;
        fs::rename(&tmp, self.dir.join("heartbeat"))
    }

    /// A clean stop: the next start finds no gap.
    pub fn stopped(&self) -> io::Result<()> {
        let _ = self.heartbeat();
        match fs::remove_file(self.dir.join("running")) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_agent_on_a_held_directory_is_refused_naming_the_holder() {
        let d = tempfile::tempdir().unwrap();
        let (held, gap) = StateDir::open(d.path()).unwrap();
        assert_eq!(gap, None, "a new directory has no gap");
        let e = StateDir::open(d.path()).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, StateError::Locked { .. }), "{msg}");
        assert!(msg.contains(&format!("pid {}", std::process::id())), "{msg}");
        assert!(msg.contains("--state-dir"), "{msg}");
        held.stopped().unwrap();
        drop(held);
        let (_again, gap) = StateDir::open(d.path()).unwrap();
        assert_eq!(gap, None, "after a clean stop there is no gap");
    }

    #[test]
    fn an_unclean_stop_leaves_a_gap_from_the_last_heartbeat() {
        let d = tempfile::tempdir().unwrap();
        let (held, _) = StateDir::open(d.path()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        held.heartbeat().unwrap();
        let beat: u128 = fs::read_to_string(d.path().join("heartbeat")).unwrap().trim().parse().unwrap();
        // a crash: the lock goes with the process, `running` stays
        drop(held);
        std::thread::sleep(Duration::from_millis(50));
        let (_again, gap) = StateDir::open(d.path()).unwrap();
        let gap = gap.expect("a gap after an unclean stop");
        assert_eq!(gap.previous_pid, Some(std::process::id()));
        assert_eq!(gap.from_source, "heartbeat");
        assert_eq!(gap.from, from_ns(beat));
        assert!(gap.to.duration_since(gap.from).unwrap() >= Duration::from_millis(50));
    }

    #[test]
    fn an_uncreatable_directory_is_one_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("plain-file");
        fs::write(&file, "x").unwrap();
        let e = StateDir::open(&file.join("sub")).unwrap_err();
        assert!(e.to_string().starts_with("cannot create podtrail's state directory"), "{e}");
    }
}
