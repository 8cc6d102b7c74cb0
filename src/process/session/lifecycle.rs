//! A process's life in the table: inserted (closing a stale one whose exit was lost), forked
//! (inheriting its parent's session and image), ended (its record handed on, its session left
//! and ended when it was the last member).

use crate::capture::event::{ExitEvent, ExitStatus, ForkEvent, ProcessKey};
use crate::model::{SessionId, SessionUpdate};
use crate::process::table::Proc;

use super::*;

impl SessionTracker {
    /// Insert a new process, closing the one it replaces when its exit was lost.
    pub(crate) fn insert_proc(&mut self, p: Proc, ts_ns: u64, out: &mut Vec<SessionUpdate>) {
        let (cg, session) = (p.cgroup_id, p.session);
        if let Some(stale) = self.table.insert(p) {
            self.counters.pids_reused_unexited.inc();
            self.containers.process_removed(stale.cgroup_id);
            self.finish(stale, None, ts_ns, out);
        }
        self.containers.process_added(cg);
        if let Some(s) = session.and_then(|s| self.sessions.get_mut(&s)) {
            s.live += 1;
        }
    }

    /// What a new child takes from its parent: session, pending join, namespaces, and the
    /// parent's image (a child that never execs runs it).
    pub(super) fn inherit(&mut self, p: &mut Proc, parent: ProcessKey) {
        if let Some(pp) = self.table.get_mut(&parent) {
            p.session = pp.session;
            p.join = pp.join.clone();
            p.mntns_ino = pp.mntns_ino;
            p.loginuid = pp.loginuid;
            p.parent_exec_index = pp.images.last().map(|i| i.exec_index);
            // the child is inserted next; its exit counts it off (`ProcessTable::removed`)
            pp.children = pp.children.saturating_add(1);
            if let Some(last) = pp.images.last_mut() {
                // the child runs the parent's image but made none of its connects or file
                // operations: move them aside rather than clone them (a shell that has made
                // 20 000 connects forks in O(1), not O(connects): found by bench/process_stage)
                let connects = std::mem::take(&mut last.connects);
                let files = std::mem::take(&mut last.files);
                let mut img = last.clone();
                last.connects = connects;
                last.files = files;
                img.exec_index = 0;
                img.inherited = true;
                img.connects_over_cap = 0;
                img.start_ns = p.key.start_ns;
                img.end_ns = None;
                // room for the exec that usually follows: growing a Vec of one image makes
                // room for four, an allocation past glibc's per-thread cache (issue 15)
                p.images = Vec::with_capacity(2);
                p.images.push(img);
            }
        } else if let Some(s) = self.table.session_of(&parent) {
            p.session = s;
        } else {
            self.counters.parents_unknown.inc();
        }
        if p.session.is_some_and(|s| !self.sessions.contains_key(&s)) {
            p.session = None;
        }
    }

    pub(super) fn on_fork(&mut self, f: &ForkEvent, out: &mut Vec<SessionUpdate>) {
        if self.table.resolve(f.key()).is_some() || self.table.recently_exited(&f.key()) {
            return; // its exec (and maybe its exit) came first
        }
        let parent = self.table.resolve(f.parent_key()).unwrap_or(f.parent_key());
        let mut p = Proc::new(f.key(), Some(parent));
        p.cgroup_id = f.cgroup_id;
        p.pidns_ino = f.pidns_ino;
        p.nspid = f.nspid;
        p.fork_ns = f.start_ns;
        self.inherit(&mut p, parent);
        self.insert_proc(p, f.ts_ns, out);
        if let Some(x) = self.table.take_early_exit(&f.key()) {
            self.on_exit(&x, out);
        }
    }

    /// A process leaves a session without exiting (it roots a nested one).
    pub(super) fn leave(&mut self, sid: SessionId, ts_ns: u64, out: &mut Vec<SessionUpdate>) {
        let Some(s) = self.sessions.get_mut(&sid) else { return };
        s.live = s.live.saturating_sub(1);
        if s.live == 0 {
            self.end(sid, ts_ns, out);
        }
    }

    pub(super) fn end(&mut self, sid: SessionId, ts_ns: u64, out: &mut Vec<SessionUpdate>) {
        if let Some(mut s) = self.sessions.remove(&sid) {
            std::sync::Arc::make_mut(&mut s.info).end_ns = Some(ts_ns);
            self.counters.sessions_ended.inc();
            if self.loss_settle_ns == 0 {
                self.transcript_end(&s.info, out);
                out.push(SessionUpdate::Ended(s.info, Vec::new()));
            } else {
                self.ending.push_back((ts_ns.saturating_add(self.loss_settle_ns), s.info));
            }
        }
    }

    pub(super) fn on_exit(&mut self, x: &ExitEvent, out: &mut Vec<SessionUpdate>) {
        // one lookup of the table, not one to resolve and one to remove
        let Some(p) = self.table.remove_resolved(x.key()) else {
            self.counters.exits_early.inc();
            if self.table.park_exit(x.clone()).is_some() {
                self.counters.exits_unknown.inc();
            }
            return;
        };
        let key = p.key;
        self.outbound.process_exited(key, out);
        self.containers.process_removed(p.cgroup_id);
        if p.join.as_ref().is_some_and(|j| j.joiner == key) && p.session.is_none_or(|s| s != SessionId(key)) {
            self.counters.ns_joins_idle.inc();
        }
        self.finish(p, Some(x.status), x.ts_ns, out);
    }

    /// A process is gone: its record goes to its session, which ends with its last member.
    pub(super) fn finish(&mut self, p: Proc, status: Option<ExitStatus>, ts_ns: u64, out: &mut Vec<SessionUpdate>) {
        let Some(sid) = p.session else {
            self.hold_ended(&p, status, ts_ns);
            return;
        };
        let Some(s) = self.sessions.get_mut(&sid) else { return };
        let exit_ns = status.map(|_| ts_ns);
        // no child left in the table: no record after this one names it as parent (an
        // exit the kernel lost, or a /proc-learned process whose children were not counted,
        // is not sure)
        let leaf = status.is_some() && p.children == 0 && !p.from_proc;
        let mut rec = record_from(p, exit_ns, status); // moved: the process is gone
        rec.leaf = leaf;
        if let Some(img) = rec.images.last_mut() {
            img.end_ns.get_or_insert(ts_ns);
        }
        out.push(SessionUpdate::ProcessEnded(s.info.clone(), rec));
        s.live = s.live.saturating_sub(1);
        if s.live == 0 {
            self.end(sid, ts_ns, out);
        }
    }
}

/// A process's record with the images given (its own, moved or copied).
fn record(p: &Proc, exit_ns: Option<u64>, exit: Option<ExitStatus>, images: Vec<ImageRecord>) -> ProcessRecord {
    ProcessRecord {
        key: p.key,
        parent: p.parent,
        parent_exec_index: p.parent_exec_index,
        nspid: p.nspid,
        fork_ns: p.fork_ns,
        exit_ns,
        exit,
        from_proc: p.from_proc,
        images,
        leaf: false,
    }
}

/// [`record_of`] for a process out of the table: its images move into the record.
pub(crate) fn record_from(mut p: Proc, exit_ns: Option<u64>, exit: Option<ExitStatus>) -> ProcessRecord {
    let images = std::mem::take(&mut p.images);
    record(&p, exit_ns, exit, images)
}

/// The record of a process still in the table: its images copied.
pub(crate) fn record_of(p: &Proc, exit_ns: Option<u64>, exit: Option<ExitStatus>) -> ProcessRecord {
    record(p, exit_ns, exit, p.images.clone())
}
