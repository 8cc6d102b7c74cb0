//! The terminal transcript: a session's terminal bytes become lines.
//!
//! In: `TtyEvent`s of a session's members (what they read from the session's terminal, and
//! what they wrote to it when `output` is on), in ring order. Out: [`TranscriptChunk`]s of
//! lines, each line with the time of its first byte, edited as the terminal's user saw it
//! (backspace, ^U, ^W, CR/LF; keys that are not text named: `<up>`, `^C`), capped at
//! `max_line_bytes` (the rest counted on the line), at most `max_lines` a session (the rest
//! counted and said once, on the last chunk). A chunk leaves after `lines_per_span` lines,
//! after `flush_idle_ms` without a new line, and when the session ends, so the transcript of
//! a session that stays open is readable while it runs.
//!
//! Secrets: a read at a password prompt (echo off, canonical mode: the kernel never copies
//! it) is a line of its own carrying only its length. Redaction is the span stage's, as for
//! argv. Dropped, and counted (`podtrail_transcript_*`): lines past the cap, records of
//! processes in no session (a terminal the kernel traced for a process that roots none).

use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};

use crate::capture::event::TtyEvent;
use crate::model::{TranscriptChunk, TranscriptLine};

/// `[transcript]`: what the terminal transcript records and how it is bounded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TranscriptConfig {
    /// Record what sessions with a terminal type (`kubectl exec -it`): read from their
    /// terminal in the kernel, as lines on the session's trace.
    pub enabled: bool,
    /// Also record what their terminal showed (everything written to it: command output
    /// too). Off by default: output is large and may hold what a user only looked at.
    pub output: bool,
    /// Input bytes the kernel copies per session; past it reads are only counted (and marked
    /// on the session's last transcript span).
    pub input_budget_kib: u64,
    /// Output bytes the kernel copies per session when `output` is on.
    pub output_budget_kib: u64,
    /// Bytes of one line (after redaction); the rest is cut and counted on the line. Below
    /// Tempo's 2048-byte attribute limit.
    pub max_line_bytes: usize,
    /// Lines kept per session; the rest are counted, and said once on the last chunk.
    pub max_lines: u64,
    /// Lines per `transcript` span: a chunk leaves when it has this many.
    pub lines_per_span: usize,
    /// A chunk with lines also leaves after this many milliseconds without a new line.
    pub flush_idle_ms: u64,
    /// Namespaces whose sessions keep no transcript (their lines are dropped before any
    /// span, and counted).
    pub exclude_namespaces: Vec<String>,
}

impl Default for TranscriptConfig {
    fn default() -> Self {
        TranscriptConfig {
            enabled: true,
            output: false,
            input_budget_kib: 64,
            output_budget_kib: 256,
            max_line_bytes: 1024,
            max_lines: 2000,
            lines_per_span: 50,
            flush_idle_ms: 2000,
            exclude_namespaces: Vec::new(),
        }
    }
}

/// Tempo keeps 2048 bytes of an attribute; a line leaves room for a redaction token's growth.
pub const MAX_LINE_BYTES_LIMIT: usize = 2000;

impl TranscriptConfig {
    /// Checked once with the rest of the configuration.
    pub fn check(&self) -> Result<(), String> {
        if self.max_line_bytes < 16 || self.max_line_bytes > MAX_LINE_BYTES_LIMIT {
            return Err(format!(
                "transcript.max_line_bytes must be 16 to {MAX_LINE_BYTES_LIMIT} (Tempo keeps 2048 bytes of an attribute), not {}",
                self.max_line_bytes
            ));
        }
        if self.lines_per_span == 0 || self.lines_per_span > 1000 {
            return Err(format!("transcript.lines_per_span must be 1 to 1000, not {}", self.lines_per_span));
        }
        if self.enabled && self.input_budget_kib == 0 {
            return Err("transcript.input_budget_kib must be at least 1 (or set enabled = false)".into());
        }
        if self.output && self.output_budget_kib == 0 {
            return Err("transcript.output_budget_kib must be at least 1 when output = true".into());
        }
        if self.input_budget_kib > 64 * 1024 || self.output_budget_kib > 64 * 1024 {
            return Err("transcript budgets are at most 65536 KiB a session".into());
        }
        if self.flush_idle_ms < 100 {
            return Err(format!("transcript.flush_idle_ms must be at least 100, not {}", self.flush_idle_ms));
        }
        Ok(())
    }

    /// Is this namespace's transcript off?
    pub fn excluded(&self, namespace: Option<&str>) -> bool {
        namespace.is_some_and(|n| self.exclude_namespaces.iter().any(|x| x == n))
    }
}

/// Handles on `podtrail_transcript_*` (detached until the stage registers them).
#[derive(Clone, Debug, Default)]
pub struct TranscriptCounters {
    pub bytes_recorded: Counter,
    pub bytes_cut: Counter,
    pub lines_recorded: Counter,
    pub lines_over_cap: Counter,
    pub secret_reads: Counter,
    pub outside_session: Counter,
}

impl TranscriptCounters {
    pub fn registered(m: &crate::metrics::Metrics) -> Self {
        let bytes = |w| m.transcript_bytes.get_or_create(&vec![("what", w)]).clone();
        let lines = |w| m.transcript_lines.get_or_create(&vec![("what", w)]).clone();
        let reads = |w| m.transcript_reads.get_or_create(&vec![("what", w)]).clone();
        TranscriptCounters {
            bytes_recorded: bytes("recorded"),
            bytes_cut: bytes("cut"),
            lines_recorded: lines("recorded"),
            lines_over_cap: lines("over_cap"),
            secret_reads: reads("secret"),
            outside_session: reads("outside_session"),
        }
    }
}

/// Escape sequence state of a line editor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Esc {
    #[default]
    None,
    /// After ESC.
    Start,
    /// Inside `ESC [` (CSI) or `ESC O` (SS3), collecting parameters.
    Seq,
    /// Inside `ESC ]` (OSC) until BEL or ESC \.
    Osc,
}

/// Bytes of one direction -> lines.
#[derive(Debug, Default)]
struct Editor {
    buf: Vec<u8>,
    first: Option<(u64, u32)>,
    cut: u32,
    esc: Esc,
    params: Vec<u8>,
    /// The last line ended with CR: an LF right after it ends nothing.
    after_cr: bool,
}

impl Editor {
    fn push(&mut self, ts: u64, pid: u32, b: &[u8], max: usize) {
        if self.first.is_none() {
            self.first = Some((ts, pid));
        }
        for &c in b {
            if self.buf.len() < max {
                self.buf.push(c);
            } else {
                self.cut += 1;
            }
        }
    }

    fn take(&mut self, output: bool, unterminated: bool) -> Option<TranscriptLine> {
        let (ts_ns, pid) = self.first.take()?;
        let text = std::mem::take(&mut self.buf);
        let cut_bytes = std::mem::take(&mut self.cut);
        if text.is_empty() && cut_bytes == 0 {
            return None; // an empty line (a bare Enter) says nothing
        }
        Some(TranscriptLine { ts_ns, pid, output, text, secret_bytes: None, cut_bytes, unterminated, redacted: 0 })
    }

    /// Deletes the last character (UTF-8 aware).
    fn backspace(&mut self) {
        while let Some(c) = self.buf.pop() {
            if c & 0xC0 != 0x80 {
                break;
            }
        }
    }

    /// ^W: the word before the cursor and the blanks after it.
    fn erase_word(&mut self) {
        while self.buf.last().is_some_and(|c| *c == b' ' || *c == b'\t') {
            self.buf.pop();
        }
        while self.buf.last().is_some_and(|c| *c != b' ' && *c != b'\t') {
            self.buf.pop();
        }
    }

    /// Feeds bytes; completed lines go to `out`. Input edits the line (the terminal's line
    /// editing keys); output only moves back on a backspace (the echo of one).
    fn feed(&mut self, ts: u64, pid: u32, bytes: &[u8], output: bool, max: usize, out: &mut Vec<TranscriptLine>) {
        for &c in bytes {
            match self.esc {
                Esc::Start => {
                    self.esc = match c {
                        b'[' | b'O' => Esc::Seq,
                        b']' => Esc::Osc,
                        _ => {
                            if !output {
                                self.push(ts, pid, b"<esc>", max);
                            }
                            Esc::None
                        }
                    };
                    self.params.clear();
                    continue;
                }
                Esc::Seq => {
                    if (0x40..=0x7e).contains(&c) {
                        self.esc = Esc::None;
                        if !output {
                            let key: &[u8] = match (c, self.params.as_slice()) {
                                (b'A', _) => b"<up>",
                                (b'B', _) => b"<down>",
                                (b'C', _) => b"<right>",
                                (b'D', _) => b"<left>",
                                (b'H', _) => b"<home>",
                                (b'F', _) => b"<end>",
                                (b'~', b"3") => b"<del>",
                                (b'~', b"200") | (b'~', b"201") => b"", // bracketed paste marks
                                _ => b"<key>",
                            };
                            if !key.is_empty() {
                                self.push(ts, pid, key, max);
                            }
                        }
                    } else if self.params.len() < 16 {
                        self.params.push(c);
                    }
                    continue;
                }
                Esc::Osc => {
                    if c == 0x07 || c == 0x1b {
                        self.esc = if c == 0x1b { Esc::Start } else { Esc::None };
                    }
                    continue;
                }
                Esc::None => {}
            }
            let after_cr = std::mem::take(&mut self.after_cr);
            match c {
                b'\r' => {
                    self.after_cr = true;
                    out.extend(self.take(output, false));
                }
                b'\n' => {
                    if !after_cr {
                        out.extend(self.take(output, false));
                    }
                }
                0x1b => self.esc = Esc::Start,
                0x7f | 0x08 => {
                    self.backspace();
                }
                0x15 if !output => self.buf.clear(),
                0x17 if !output => self.erase_word(),
                b'\t' => self.push(ts, pid, b"\t", max),
                0x03 | 0x04 if !output => {
                    self.push(ts, pid, if c == 0x03 { b"^C" } else { b"^D" }, max);
                    out.extend(self.take(output, false));
                }
                c if c < 0x20 => {
                    if !output {
                        self.push(ts, pid, &[b'^', c + 0x40], max);
                    }
                }
                c => self.push(ts, pid, &[c], max),
            }
        }
    }
}

/// One session's transcript in the making.
#[derive(Debug, Default)]
pub struct SessionTranscript {
    input: Editor,
    output: Editor,
    pending: Vec<TranscriptLine>,
    /// When the last line was completed (boot ns): the idle flush counts from it.
    last_line_ns: u64,
    kept: u64,
    dropped: u64,
    seq: u32,
    cut_in: u64,
    cut_out: u64,
    /// The kernel said its budget was spent (CUT): counted there, totals come with END.
    kernel_cut: (bool, bool),
    secret_reads: u64,
    /// A secret being read (a byte at a time, by some): its first read's time, pid, bytes.
    secret: Option<(u64, u32, u32)>,
}

impl SessionTranscript {
    /// One record of a member of this session.
    pub fn feed(&mut self, t: &TtyEvent, cfg: &TranscriptConfig, c: &TranscriptCounters) {
        if t.end {
            // the kernel's totals: what it counted beyond the CUT records already seen
            self.cut_in = self.cut_in.max(t.cut_in);
            self.cut_out = self.cut_out.max(t.cut_out);
            return;
        }
        let mut lines = Vec::new();
        if t.secret {
            c.secret_reads.inc();
            self.secret_reads += 1;
            // a password prompt's line stands alone: what was typed before it ends there
            lines.extend(self.input.take(false, true));
            let s = self.secret.get_or_insert((t.ts_ns, t.pid, 0));
            s.2 = s.2.saturating_add(t.bytes);
            if t.eol {
                lines.extend(self.secret_line(true));
            }
        } else if t.cut {
            if t.output {
                self.kernel_cut.1 = true;
                self.cut_out += t.bytes as u64;
            } else {
                self.kernel_cut.0 = true;
                self.cut_in += t.bytes as u64;
            }
            c.bytes_cut.inc_by(t.bytes as u64);
        } else {
            if !t.output {
                lines.extend(self.secret_line(false));
            }
            c.bytes_recorded.inc_by(t.data.len() as u64);
            let rest = t.bytes.saturating_sub(t.data.len() as u32) as u64;
            if rest > 0 {
                c.bytes_cut.inc_by(rest);
                if t.output {
                    self.cut_out += rest;
                } else {
                    self.cut_in += rest;
                }
            }
            let ed = if t.output { &mut self.output } else { &mut self.input };
            ed.feed(t.ts_ns, t.pid, &t.data, t.output, cfg.max_line_bytes, &mut lines);
        }
        if !lines.is_empty() {
            self.last_line_ns = t.ts_ns;
        }
        for l in lines {
            if self.kept < cfg.max_lines {
                self.kept += 1;
                c.lines_recorded.inc();
                self.pending.push(l);
            } else {
                self.dropped += 1;
                c.lines_over_cap.inc();
            }
        }
    }

    /// The secret read so far as its line (its length without the newline that ended it).
    fn secret_line(&mut self, eol: bool) -> Option<TranscriptLine> {
        let (ts_ns, pid, n) = self.secret.take()?;
        let n = if eol { n.saturating_sub(1) } else { n };
        Some(TranscriptLine { ts_ns, pid, secret_bytes: Some(n), unterminated: !eol, ..Default::default() })
    }

    /// A chunk, when one is due at `now_ns` (`last`: the session ended; every line then,
    /// unfinished ones too, and the totals).
    pub fn chunk(&mut self, now_ns: u64, cfg: &TranscriptConfig, last: bool) -> Option<TranscriptChunk> {
        if last {
            let secret = self.secret_line(false);
            self.pending.extend(secret);
            for (ed, output) in [(&mut self.input, false), (&mut self.output, true)] {
                if let Some(l) = ed.take(output, true) {
                    if self.kept < cfg.max_lines {
                        self.kept += 1;
                        self.pending.push(l);
                    } else {
                        self.dropped += 1;
                    }
                }
            }
        }
        let due = self.pending.len() >= cfg.lines_per_span
            || (!self.pending.is_empty() && now_ns.saturating_sub(self.last_line_ns) >= cfg.flush_idle_ms * 1_000_000);
        let marks = self.dropped > 0 || self.cut_in > 0 || self.cut_out > 0 || self.secret_reads > 0;
        if !(due || (last && (self.seq > 0 || !self.pending.is_empty() || marks))) {
            return None;
        }
        let n = if last { self.pending.len() } else { self.pending.len().min(cfg.lines_per_span) };
        let lines: Vec<TranscriptLine> = self.pending.drain(..n).collect();
        let chunk = TranscriptChunk {
            seq: self.seq,
            lines,
            last,
            lines_dropped: self.dropped,
            cut_bytes: (self.cut_in, self.cut_out),
            secret_reads: self.secret_reads,
        };
        self.seq += 1;
        Some(chunk)
    }

    /// Lines waiting for their chunk.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts: u64, data: &[u8]) -> TtyEvent {
        TtyEvent { ts_ns: ts, pid: 7, bytes: data.len() as u32, data: data.to_vec(), ..Default::default() }
    }

    fn lines(t: &mut SessionTranscript, cfg: &TranscriptConfig) -> Vec<String> {
        let c = t.chunk(u64::MAX, cfg, true).unwrap_or_default();
        c.lines
            .iter()
            .map(|l| match l.secret_bytes {
                Some(n) => format!("<secret {n}>"),
                None => String::from_utf8_lossy(&l.text).into_owned(),
            })
            .collect()
    }

    #[test]
    fn keys_typed_one_at_a_time_become_edited_lines_with_their_first_byte_time() {
        let cfg = TranscriptConfig::default();
        let c = TranscriptCounters::default();
        let mut t = SessionTranscript::default();
        // raw mode: one byte a read, as readline and ash read
        for (i, b) in b"unset HISTFILX\x7fE; history -c\r".iter().enumerate() {
            t.feed(&ev(100 + i as u64, &[*b]), &cfg, &c);
        }
        t.feed(&ev(200, b"echo one two\x17three\r"), &cfg, &c);
        t.feed(&ev(300, b"rm -rf /\x15cd /tmp\r\n"), &cfg, &c);
        t.feed(&ev(400, b"\x1b[A\r"), &cfg, &c);
        t.feed(&ev(500, b"sleep 10\x03"), &cfg, &c);
        let chunk = t.chunk(u64::MAX, &cfg, false).expect("idle: due");
        assert_eq!(chunk.lines[0].ts_ns, 100, "the time of the line's first byte");
        let got: Vec<String> = chunk.lines.iter().map(|l| String::from_utf8_lossy(&l.text).into_owned()).collect();
        assert_eq!(got, ["unset HISTFILE; history -c", "echo one three", "cd /tmp", "<up>", "sleep 10^C"]);
        assert_eq!(c.lines_recorded.get(), 5);
    }

    #[test]
    fn a_password_prompt_keeps_its_length_only_and_the_cap_is_said_once_with_its_count() {
        let cfg = TranscriptConfig { max_lines: 3, ..Default::default() };
        let c = TranscriptCounters::default();
        let mut t = SessionTranscript::default();
        t.feed(&ev(1, b"read -s PW\r"), &cfg, &c);
        // busybox reads a secret a byte at a time: one line of its length, the newline not counted
        for (i, eol) in [false, false, false, false, false, false, false, false, true].into_iter().enumerate() {
            t.feed(
                &TtyEvent { ts_ns: 2 + i as u64, pid: 7, secret: true, eol, bytes: 1, ..Default::default() },
                &cfg,
                &c,
            );
        }
        for i in 0..5u64 {
            t.feed(&ev(3 + i, format!("echo {i}\r").as_bytes()), &cfg, &c);
        }
        let last = t.chunk(10, &cfg, true).unwrap();
        let got: Vec<_> = last.lines.iter().map(|l| (l.text.clone(), l.secret_bytes)).collect();
        assert_eq!(got, [(b"read -s PW".to_vec(), None), (vec![], Some(8)), (b"echo 0".to_vec(), None)]);
        assert_eq!((last.lines_dropped, last.secret_reads, last.last), (4, 9, true));
        assert_eq!((c.lines_over_cap.get(), c.secret_reads.get()), (4, 9));
    }

    #[test]
    fn chunks_leave_by_count_and_by_quiet_and_a_long_line_is_cut_and_counted() {
        let cfg = TranscriptConfig { lines_per_span: 2, max_line_bytes: 16, flush_idle_ms: 1000, ..Default::default() };
        let c = TranscriptCounters::default();
        let mut t = SessionTranscript::default();
        t.feed(&ev(1_000_000, b"a\rb\rc\r"), &cfg, &c);
        let first = t.chunk(1_000_000, &cfg, false).expect("two lines: due");
        assert_eq!(first.lines.len(), 2);
        assert!(t.chunk(1_500_000, &cfg, false).is_none(), "one line, not quiet yet");
        assert_eq!(t.chunk(1_001_000_000, &cfg, false).map(|c| c.lines.len()), Some(1));
        t.feed(&ev(2, &[b'x'; 40]), &cfg, &c);
        assert_eq!(lines(&mut t, &cfg), ["xxxxxxxxxxxxxxxx"]);
        t.feed(&ev(3, &[b'y'; 40]), &cfg, &c);
        let l = t.chunk(3, &cfg, true).unwrap().lines.remove(0);
        assert_eq!((l.cut_bytes, l.unterminated), (24, true));
    }

    #[test]
    fn output_drops_escape_sequences_and_control_bytes() {
        let cfg = TranscriptConfig::default();
        let c = TranscriptCounters::default();
        let mut t = SessionTranscript::default();
        let o = |ts, d: &[u8]| TtyEvent { output: true, ..ev(ts, d) };
        t.feed(&o(1, b"\x1b]0;title\x07\x1b[01;32mroot\x1b[0m:/# ls\r\nbin  etc\r\n"), &cfg, &c);
        let got: Vec<_> =
            t.chunk(u64::MAX, &cfg, true).unwrap().lines.into_iter().map(|l| (l.text, l.output)).collect();
        assert_eq!(got, [(b"root:/# ls".to_vec(), true), (b"bin  etc".to_vec(), true)]);
    }

    #[test]
    fn settings_are_checked() {
        assert!(TranscriptConfig::default().check().is_ok());
        assert!(TranscriptConfig { max_line_bytes: 4096, ..Default::default() }.check().is_err());
        assert!(TranscriptConfig { lines_per_span: 0, ..Default::default() }.check().is_err());
        assert!(TranscriptConfig { output: true, output_budget_kib: 0, ..Default::default() }.check().is_err());
        assert!(!TranscriptConfig::default().excluded(Some("x")));
        let c = TranscriptConfig { exclude_namespaces: vec!["kube-system".into()], ..Default::default() };
        assert!(c.excluded(Some("kube-system")) && !c.excluded(None));
    }
}
