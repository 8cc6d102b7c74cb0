//! The terminal transcript in the tracker: each `TtyEvent` goes to its session's
//! [`SessionTranscript`] (found through the reader's process), whose chunks leave as
//! `SessionUpdate::Transcript` when due (on the stage's tick), and a last one just before the
//! session's `Ended`. A record of a process in no session is counted and dropped.

use crate::capture::event::{ProcessKey, TtyEvent};
use crate::model::{SessionId, SessionInfo, SessionUpdate};
use crate::process::transcript::{SessionTranscript, TranscriptConfig, TranscriptCounters};

use super::SessionTracker;

/// The tracker's transcripts: one per session that has had a terminal record.
#[derive(Debug, Default)]
pub struct Transcripts {
    pub cfg: TranscriptConfig,
    pub counters: TranscriptCounters,
    open: crate::hashing::FastMap<SessionId, SessionTranscript>,
}

impl SessionTracker {
    /// Choose the transcript's bounds (the defaults otherwise).
    pub fn set_transcript(&mut self, cfg: TranscriptConfig) {
        self.transcripts.cfg = cfg;
    }

    pub(super) fn on_tty(&mut self, t: &TtyEvent) {
        if t.end {
            // the root's exit: the session is keyed by the root, whatever the table holds now
            let sid = SessionId(ProcessKey { pid: t.pid, start_ns: t.start_ns });
            if let Some(tr) = self.transcripts.open.get_mut(&sid) {
                tr.feed(t, &self.transcripts.cfg, &self.transcripts.counters);
            }
            return;
        }
        let sid = self
            .table
            .resolve(t.key())
            .and_then(|k| self.table.get(&k))
            .and_then(|p| p.session)
            .filter(|s| self.sessions.contains_key(s));
        let Some(sid) = sid else {
            self.transcripts.counters.outside_session.inc();
            return;
        };
        let Transcripts { cfg, counters, open } = &mut self.transcripts;
        open.entry(sid).or_default().feed(t, cfg, counters);
    }

    /// Chunks due at `now_ns` (a number of lines, or a quiet while).
    pub(super) fn transcript_tick(&mut self, now_ns: u64, out: &mut Vec<SessionUpdate>) {
        if self.transcripts.open.is_empty() {
            return;
        }
        let Transcripts { cfg, open, .. } = &mut self.transcripts;
        for (sid, tr) in open.iter_mut() {
            let Some(s) = self.sessions.get(sid) else { continue };
            while let Some(c) = tr.chunk(now_ns, cfg, false) {
                out.push(SessionUpdate::Transcript(s.info.clone(), c));
            }
        }
    }

    /// The session's last chunk (if it had a terminal record), before its `Ended`.
    pub(super) fn transcript_end(&mut self, info: &std::sync::Arc<SessionInfo>, out: &mut Vec<SessionUpdate>) {
        let Some(mut tr) = self.transcripts.open.remove(&info.id) else { return };
        if let Some(c) = tr.chunk(u64::MAX, &self.transcripts.cfg, true) {
            out.push(SessionUpdate::Transcript(info.clone(), c));
        }
    }
}
