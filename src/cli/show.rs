//! `podtrail show FILE...`: OTLP/JSON files (what `export.file` writes, rotated files
//! included) rendered as the console's session trees, filtered; `--follow` keeps reading a
//! file as the agent appends to it, across its rotation.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::Args;
use podtrail::export::show::{self, Filter, Sessions};

use super::UsageError;

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// OTLP/JSON files, one ExportTraceServiceRequest per line (`export.file` and its rotated
    /// `FILE.1`, `FILE.2`, ...: give the oldest first). A session's spans may span files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Only sessions in this namespace (`k8s.namespace.name`).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Only sessions in this pod (`k8s.pod.name`).
    #[arg(long)]
    pub pod: Option<String>,
    /// Only sessions this Kubernetes user opened (`user.name`).
    #[arg(long)]
    pub user: Option<String>,
    /// Only sessions that started at or after this: a time (2026-12-01T08:00:00Z) or an age
    /// (90s, 30m, 12h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// Only the session of this audit id, as Kubernetes prints it or without dashes (the trace
    /// id).
    #[arg(long)]
    pub audit_id: Option<String>,
    /// Keep reading the last file as it grows (and after it rotates); print each session when
    /// its root span arrives. Ctrl-C stops.
    #[arg(long, short = 'f')]
    pub follow: bool,
}

/// Sessions held for their root while following; beyond, the oldest is printed as it is.
const MAX_WAITING: usize = 10_000;
const POLL: Duration = Duration::from_millis(200);

/// One file read in whole lines, from where the last read stopped.
struct Tail {
    path: PathBuf,
    file: Option<File>,
    ino: u64,
    offset: u64,
    partial: Vec<u8>,
    line_no: u64,
}

impl Tail {
    fn new(path: PathBuf) -> Self {
        Tail { path, file: None, ino: 0, offset: 0, partial: Vec::new(), line_no: 0 }
    }

    fn open(&mut self) -> std::io::Result<()> {
        let f = File::open(&self.path)?;
        self.ino = f.metadata()?.ino();
        self.file = Some(f);
        self.offset = 0;
        self.partial.clear();
        Ok(())
    }

    /// Complete lines appended since the last call (a line still being written waits).
    fn read_lines(&mut self) -> std::io::Result<Vec<(u64, String)>> {
        let Some(f) = self.file.as_mut() else { return Ok(Vec::new()) };
        let len = f.metadata()?.len();
        if len < self.offset {
            // truncated in place: start over
            f.seek(SeekFrom::Start(0))?;
            self.offset = 0;
            self.partial.clear();
        }
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let mut out = Vec::new();
        while let Some(nl) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=nl).collect();
            self.line_no += 1;
            let text = String::from_utf8_lossy(&line[..line.len() - 1]).trim().to_owned();
            if !text.is_empty() {
                out.push((self.line_no, text));
            }
        }
        Ok(out)
    }

    /// Whether the path now names another file (the sink rotated it away).
    fn rotated(&self) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|m| m.ino() != self.ino)
    }
}

/// `FILE.1`, `FILE.2`, ... as far as they go, with their inodes.
fn rotated_files(path: &std::path::Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    for n in 1..10_000 {
        let p = podtrail::export::file::rotated_path(path, n);
        match std::fs::metadata(&p) {
            Ok(m) => out.push((p, m.ino())),
            Err(_) => break,
        }
    }
    out
}

/// The rotated files newer than the one `t` has open (`FILE.n-1` ... `FILE.1`, oldest first),
/// where `t`'s file is now `FILE.n`; None when it is no longer among them (deleted).
fn rotated_since(t: &Tail) -> Option<Vec<PathBuf>> {
    let files = rotated_files(&t.path);
    let n = files.iter().position(|(_, ino)| *ino == t.ino)?;
    Some(files[..n].iter().rev().map(|(p, _)| p.clone()).collect())
}

struct Printer {
    filter: Filter,
    skipped: u64,
    shown: u64,
    out: std::io::Stdout,
}

impl Printer {
    /// False once stdout is gone (`| head`): stop quietly.
    fn print(&mut self, mut sessions: Vec<Vec<opentelemetry_sdk::trace::SpanData>>) -> bool {
        sessions.sort_by_key(|s| show::started(s));
        let mut out = self.out.lock();
        for s in sessions.into_iter().filter(|s| self.filter.keeps(s)) {
            self.shown += 1;
            if out.write_all(show::render(&s).as_bytes()).and_then(|_| out.flush()).is_err() {
                return false;
            }
        }
        true
    }

    fn feed(
        &mut self,
        sessions: &mut Sessions,
        path: &std::path::Path,
        lines: Vec<(u64, String)>,
    ) -> Vec<Vec<opentelemetry_sdk::trace::SpanData>> {
        let mut done = Vec::new();
        for (n, line) in lines {
            match show::decode_line(&line) {
                Ok(spans) => done.extend(sessions.push(spans)),
                Err(e) => {
                    self.skipped += 1;
                    if self.skipped <= 5 {
                        eprintln!("podtrail show: {}:{n}: skipped: {e}", path.display());
                    }
                }
            }
        }
        done
    }
}

pub async fn run(a: ShowArgs) -> anyhow::Result<()> {
    let since = match &a.since {
        Some(s) => Some(show::parse_since(s, SystemTime::now()).map_err(|e| UsageError(e.to_string()))?),
        None => None,
    };
    let filter = Filter { namespace: a.namespace, pod: a.pod, user: a.user, since, audit_id: a.audit_id };
    let mut tails: Vec<Tail> = a.files.into_iter().map(Tail::new).collect();
    let last = tails.len().saturating_sub(1);
    for (i, t) in tails.iter_mut().enumerate() {
        // following, the last file may not exist yet: the agent creates it
        let may_wait = a.follow && i == last;
        if let Err(e) = t.open() {
            if !may_wait {
                return Err(UsageError(format!("{}: {e}", t.path.display())).into());
            }
        }
    }
    let follow = a.follow;
    tokio::task::spawn_blocking(move || show_files(tails, filter, follow)).await?
}

fn show_files(mut tails: Vec<Tail>, filter: Filter, follow: bool) -> anyhow::Result<()> {
    let mut sessions = Sessions::default();
    let mut p = Printer { filter, skipped: 0, shown: 0, out: std::io::stdout() };
    let mut done = Vec::new();
    for t in tails.iter_mut() {
        let lines = t.read_lines()?;
        done.extend(p.feed(&mut sessions, &t.path.clone(), lines));
    }
    if !follow {
        done.extend(sessions.drain());
        p.print(done);
        if p.skipped > 0 {
            eprintln!("podtrail show: {} line(s) skipped: not OTLP/JSON", p.skipped);
        }
        return Ok(());
    }
    if !p.print(done) {
        return Ok(());
    }
    let Some(mut t) = tails.pop() else { return Ok(()) };
    // the followed file did not exist yet: rotated files there now are older runs' output
    let before: Option<Vec<u64>> =
        t.file.is_none().then(|| rotated_files(&t.path).into_iter().map(|(_, i)| i).collect());
    loop {
        std::thread::sleep(POLL);
        let mut lines = Vec::new();
        if t.file.is_none() {
            if t.open().is_err() {
                continue;
            }
            // it may have rotated already before this poll saw it: those files first
            for (p, ino) in rotated_files(&t.path).into_iter().rev() {
                if before.as_ref().is_some_and(|b| !b.contains(&ino)) {
                    let mut early = Tail::new(p);
                    if early.open().is_ok() {
                        lines.extend(early.read_lines()?);
                    }
                }
            }
        }
        lines.extend(t.read_lines()?);
        if t.rotated() {
            // what the old file got before it was renamed, then the files rotated since (a
            // burst can rotate more than once between two polls), then the new file
            lines.extend(t.read_lines()?);
            let newer = rotated_since(&t);
            if newer.is_none() {
                eprintln!(
                    "podtrail show: {} rotated past the kept files before it was read: lines may be missing",
                    t.path.display()
                );
            }
            for p in newer.unwrap_or_default() {
                let mut between = Tail::new(p);
                if between.open().is_ok() {
                    lines.extend(between.read_lines()?);
                }
            }
            t.open()?;
            lines.extend(t.read_lines()?);
        }
        let mut done = p.feed(&mut sessions, &t.path.clone(), lines);
        if sessions.waiting() > MAX_WAITING {
            done.extend(sessions.drain_oldest(MAX_WAITING / 10));
        }
        if !p.print(done) {
            return Ok(());
        }
    }
}
