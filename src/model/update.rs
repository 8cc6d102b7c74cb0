//! The process stage's output: session updates (the session's info shared, not copied), sent
//! in batches, and the terminal's lines they carry.

use std::sync::Arc;

use serde::Serialize;

use super::{ProcessRecord, SessionInfo};

/// What a [`SessionUpdate::Live`] says about the last image of its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Live {
    /// The image was just exec'd.
    Exec,
    /// The image's connect (or datagram) record `index` became traffic a rule can match
    /// ([`ConnectRecord::is_rule_subject`]); the record's image holds only it.
    Net { index: u32 },
    /// The image made the watched-file operation its record's image holds (the only one).
    File,
}

/// The process stage's output stream. The session's info is shared (`Arc`): one per session
/// and change, not a copy of its container's dozen strings per update (issue 15); a stage that
/// changes it copies on write (`Arc::make_mut`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum SessionUpdate {
    /// A new session (its root just exec'd or joined).
    Started(#[serde(serialize_with = "ser_shared")] Arc<SessionInfo>),
    /// A member did something a rule can match, said as it happens ([`Live`]): the process as
    /// it is now, its image carrying only that (no other connects or files), after the image
    /// before it (only its number, times and `inherited`: it says whether this is the
    /// process's first exec). Not
    /// final: its `ProcessEnded` follows. Lets the rules raise an alert when it happens, not
    /// when a long-lived process ends.
    Live(#[serde(serialize_with = "ser_shared")] Arc<SessionInfo>, ProcessRecord, Live),
    /// A process of the session exited; its record is final.
    ProcessEnded(#[serde(serialize_with = "ser_shared")] Arc<SessionInfo>, ProcessRecord),
    /// The last process exited (or the agent is stopping: `info.incomplete`). Carries the
    /// processes that never ended, closed at `info.end_ns`.
    Ended(#[serde(serialize_with = "ser_shared")] Arc<SessionInfo>, Vec<ProcessRecord>),
    /// Lines of the session's terminal (typed, and shown when configured), said while the
    /// session runs: after a number of lines, after a quiet while, and a last one before
    /// `Ended` (`crate::process::transcript`).
    Transcript(#[serde(serialize_with = "ser_shared")] Arc<SessionInfo>, TranscriptChunk),
}

/// The shared info serialized as the info itself (serde's `rc` feature left off).
fn ser_shared<S: serde::Serializer>(i: &Arc<SessionInfo>, s: S) -> Result<S::Ok, S::Error> {
    i.as_ref().serialize(s)
}

/// Session updates as the process stage sends them: what one pass over the reader's events
/// produced, in order, at most [`UPDATES_PER_BATCH`] (one send and one wakeup of the next
/// stage per batch, not per update: issue 15).
pub type UpdateBatch = Vec<SessionUpdate>;

/// The most updates one [`UpdateBatch`] holds: a queue of `n / UPDATES_PER_BATCH` batches
/// holds at most `n` updates.
pub const UPDATES_PER_BATCH: usize = 256;

/// How many batches a queue of `updates` session updates holds (at least one).
pub fn batches_for(updates: usize) -> usize {
    (updates / UPDATES_PER_BATCH).max(1)
}

/// One line of a session's terminal.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TranscriptLine {
    /// When its first byte was read (or written), boot ns.
    pub ts_ns: u64,
    /// The process that read (or wrote) its first byte.
    pub pid: u32,
    /// Shown (written to the terminal), not typed.
    pub output: bool,
    /// The line as edited (backspace, ^U, ^W applied; keys that are not text as `<up>`,
    /// `^C`...); empty for a secret.
    #[serde(serialize_with = "crate::text::ser_bytes")]
    pub text: Vec<u8>,
    /// Read with echo off at a password prompt: its length, never its bytes.
    pub secret_bytes: Option<u32>,
    /// Longer than the line cap: cut, the rest counted here.
    pub cut_bytes: u32,
    /// The session ended (or the chunk was forced out) before its end of line.
    pub unterminated: bool,
    /// Values replaced by redaction tokens (0 until the span stage redacts it).
    pub redacted: u32,
}

/// Lines of a session's terminal said together ([`SessionUpdate::Transcript`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TranscriptChunk {
    /// 0, 1, ... per session: names the chunk's span.
    pub seq: u32,
    pub lines: Vec<TranscriptLine>,
    /// The session's last chunk (it ended): the totals below are final.
    pub last: bool,
    /// Lines past the session's line cap so far, counted, not kept.
    pub lines_dropped: u64,
    /// Bytes the kernel's per-session budget refused so far (input, output).
    pub cut_bytes: (u64, u64),
    /// Reads at a password prompt so far (their bytes never copied).
    pub secret_reads: u64,
}

impl SessionUpdate {
    /// The shared info, to keep or to change (copy on write).
    pub fn info_mut(&mut self) -> &mut Arc<SessionInfo> {
        match self {
            SessionUpdate::Started(i)
            | SessionUpdate::Live(i, ..)
            | SessionUpdate::ProcessEnded(i, _)
            | SessionUpdate::Ended(i, _)
            | SessionUpdate::Transcript(i, _) => i,
        }
    }

    /// The shared info, another reference to it.
    pub fn shared_info(&self) -> Arc<SessionInfo> {
        self.info_arc().clone()
    }

    pub fn info(&self) -> &SessionInfo {
        self.info_arc()
    }

    fn info_arc(&self) -> &Arc<SessionInfo> {
        match self {
            SessionUpdate::Started(i)
            | SessionUpdate::Live(i, ..)
            | SessionUpdate::ProcessEnded(i, _)
            | SessionUpdate::Ended(i, _)
            | SessionUpdate::Transcript(i, _) => i,
        }
    }
}
