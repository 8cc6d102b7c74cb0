//! What a live session member just did, said at once (`SessionUpdate::Live`), so an alert need
//! not wait for the process to end.

use crate::capture::event::{ExecEvent, ProcessKey};
use crate::model::{ImageRecord, Live, ProcessRecord, SessionUpdate};

use super::SessionTracker;

impl SessionTracker {
    /// A member's new image, said at once ([`Live::Exec`]) so an alert on it need not wait
    /// for the process to end.
    pub(super) fn announce_exec(&self, e: &ExecEvent, out: &mut Vec<SessionUpdate>) {
        let Some(p) = self.table.get(&e.key()) else { return };
        if p.images.last().is_some_and(|i| i.start_ns == e.ts_ns && !i.inherited) {
            self.announce(e.key(), p.images.len() - 1, Live::Exec, out);
        }
    }

    /// Says at once what a live session member just did (`SessionUpdate::Live`): image `at`
    /// of the process, carrying only what `what` names (the connect record it indexes, or its
    /// last file record), after the image before it without its records (it says whether
    /// `at` is the first exec). Nothing is kept for it here: the cost is one update per record
    /// an image keeps, and an image keeps at most `MAX_CONNECT_RECORDS` network records and
    /// `MAX_FILES_PER_IMAGE` file records; a repeat folded into a record says nothing. Outside
    /// sessions nothing is said.
    pub(super) fn announce(&self, key: ProcessKey, at: usize, what: Live, out: &mut Vec<SessionUpdate>) {
        let Some(p) = self.table.get(&key) else { return };
        let Some(s) = p.session.and_then(|sid| self.sessions.get(&sid)) else { return };
        let Some(img) = p.images.get(at) else { return };
        let strip = ImageRecord::without_records;
        // the image before it says only whether `at` is the first exec: its number, times
        // and whether it was inherited (its argv and paths are nobody's business here, and
        // copying them was a tenth of the stage in the exec storm, issue 15)
        let before = |i: &ImageRecord| ImageRecord {
            exec_index: i.exec_index,
            start_ns: i.start_ns,
            end_ns: i.end_ns,
            inherited: i.inherited,
            ..Default::default()
        };
        let mut images: Vec<ImageRecord> = Vec::with_capacity(2);
        images.extend(at.checked_sub(1).and_then(|b| p.images.get(b)).map(before));
        let mut now = strip(img);
        match what {
            Live::Exec => {}
            Live::Net { index } => match img.connects.get(index as usize) {
                Some(c) => now.connects.push(c.clone()),
                None => return,
            },
            Live::File => match img.files.last() {
                Some(f) => now.files.push(f.clone()),
                None => return,
            },
        }
        images.push(now);
        let rec = ProcessRecord {
            key: p.key,
            parent: p.parent,
            parent_exec_index: p.parent_exec_index,
            nspid: p.nspid,
            fork_ns: p.fork_ns,
            exit_ns: None,
            exit: None,
            from_proc: p.from_proc,
            images,
            leaf: false,
        };
        out.push(SessionUpdate::Live(s.info.clone(), rec, what));
    }
}
