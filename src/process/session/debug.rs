//! Ephemeral containers (`kubectl debug`): the container's init is the session.
//!
//! A container's init is never a session root: it is the workload. An ephemeral container is
//! the exception: its init is the shell (or command) a user asked `kubectl debug` for. The
//! kernel cannot tell the two apart and neither can the runtime's labels; the pod's API object
//! can (`status.ephemeralContainerStatuses`, which carries the container id). So every new
//! pod container's init is held here until the lookup answers ([`ContainerLookup::is_ephemeral`],
//! backed by the pod index in a cluster) or [`DEBUG_DECISION_NS`] passes:
//! - ephemeral: a `Debug` session starts with the init as its root; the container's processes
//!   that are in no session yet join it, and the records of those that ended while undecided
//!   (held, at most [`HELD_ENDED_MAX`] per container) are sent on;
//! - not ephemeral, or no answer in time (counted: `debug_undecided`): nothing happens, the
//!   held records are dropped as they would have been.
//!
//! [`ContainerLookup::is_ephemeral`]: crate::process::containers::ContainerLookup::is_ephemeral

use super::SessionTracker;
use crate::capture::event::{ExecEvent, ExitStatus, ProcessKey};
use crate::model::{ProcessRecord, SessionId, SessionInfo, SessionKind, SessionUpdate};
use crate::process::table::Proc;

/// How long a new container's init waits for the pod's API object to say what the container
/// is. kubelet reports a started container's id in the pod status after its next status sync
/// (about a second after the start, more on a loaded node); ten seconds covers a slow one.
pub const DEBUG_DECISION_NS: u64 = 10_000_000_000;

/// Ended processes held per undecided container: a debug command that forks in a loop before
/// the answer must not grow the tracker without bound (the rest are counted).
pub const HELD_ENDED_MAX: usize = 1024;

/// Undecided containers at once (more are judged not ephemeral at once, and counted): kubelet
/// starts a handful of containers at a time, so this is never reached by a real node.
pub const PENDING_MAX: usize = 256;

/// A new pod container's init, waiting to learn whether the container is ephemeral.
#[derive(Debug)]
pub(crate) struct PendingInit {
    cgroup_id: u64,
    /// The container as known at the init's exec (the tracker forgets a container whose last
    /// process exited, and a short debug command can end before the answer).
    container: std::sync::Arc<crate::model::ContainerInfo>,
    init: ProcessKey,
    ts_ns: u64,
    argv: Vec<Vec<u8>>,
    tty: bool,
    audit_id: Option<String>,
    /// Records of the container's processes that ended before the answer.
    ended: Vec<ProcessRecord>,
    ended_over_cap: bool,
}

impl SessionTracker {
    /// `e` is the init of a container: hold it when the container belongs to a pod.
    pub(super) fn hold_init(&mut self, e: &ExecEvent) {
        let Some(container) = self.containers.get(e.cgroup_id).map(|c| c.info.clone()) else { return };
        if container.pod_uid.is_none() || self.pending.iter().any(|p| p.cgroup_id == e.cgroup_id) {
            return;
        }
        if self.pending.len() >= PENDING_MAX {
            self.counters.debug_undecided.inc();
            return;
        }
        self.pending.push(PendingInit {
            cgroup_id: e.cgroup_id,
            container,
            init: e.key(),
            ts_ns: e.ts_ns,
            argv: e.argv.clone(),
            tty: e.flags.tty,
            audit_id: e.audit_id.clone(),
            ended: Vec::new(),
            ended_over_cap: false,
        });
    }

    /// A process in no session ended: keep its record if its container is undecided.
    pub(super) fn hold_ended(&mut self, p: &Proc, status: Option<ExitStatus>, ts_ns: u64) {
        let Some(pending) = self.pending.iter_mut().find(|x| x.cgroup_id == p.cgroup_id) else { return };
        if pending.ended.len() >= HELD_ENDED_MAX {
            if !pending.ended_over_cap {
                pending.ended_over_cap = true;
            }
            self.counters.debug_ended_over_cap.inc();
            return;
        }
        let mut rec = super::record_of(p, status.map(|_| ts_ns), status);
        if let Some(img) = rec.images.last_mut() {
            img.end_ns.get_or_insert(ts_ns);
        }
        pending.ended.push(rec);
    }

    /// Ask about every undecided container; start the debug sessions of the ephemeral ones.
    pub(super) fn decide_inits(&mut self, now_ns: u64, out: &mut Vec<SessionUpdate>) {
        let mut i = 0;
        while i < self.pending.len() {
            let cg = self.pending[i].cgroup_id;
            let info =
                self.containers.get(cg).map(|c| c.info.clone()).unwrap_or_else(|| self.pending[i].container.clone());
            match self.lookup.is_ephemeral(cg, &info) {
                Some(true) => {
                    let p = self.pending.swap_remove(i);
                    self.start_debug(p, info, now_ns, out);
                }
                Some(false) => {
                    self.pending.swap_remove(i);
                }
                None if now_ns.saturating_sub(self.pending[i].ts_ns) >= DEBUG_DECISION_NS => {
                    self.pending.swap_remove(i);
                    self.counters.debug_undecided.inc();
                }
                None => i += 1,
            }
        }
    }

    fn start_debug(
        &mut self,
        p: PendingInit,
        container: std::sync::Arc<crate::model::ContainerInfo>,
        now_ns: u64,
        out: &mut Vec<SessionUpdate>,
    ) {
        let sid = SessionId(p.init);
        let info = SessionInfo {
            root_argv: p.argv,
            root_tty: p.tty,
            env_audit_id: p.audit_id,
            incomplete: p.ended_over_cap,
            ..SessionInfo::new(sid, SessionKind::Debug, container, p.ts_ns)
        };
        let info = self.start_session(info, 0, out);
        // the container's processes in no session yet (the init and what it started), and
        // those in a tree the scope recorded meanwhile; exec sessions into it stay their own
        let members: Vec<ProcessKey> = self
            .table
            .iter()
            .filter(|q| q.cgroup_id == p.cgroup_id)
            .filter(|q| q.session.is_none_or(|s| self.sessions.get(&s).is_some_and(|s| s.info.kind.is_tree())))
            .map(|q| q.key)
            .collect();
        for key in members {
            self.enter(key, sid, now_ns, out);
        }
        let last_end = p.ended.iter().filter_map(|r| r.exit_ns).max().unwrap_or(p.ts_ns);
        for rec in p.ended {
            out.push(SessionUpdate::ProcessEnded(info.clone(), rec));
        }
        if self.sessions.get(&sid).is_some_and(|s| s.live == 0) {
            self.end(sid, last_end, out);
        }
    }
}
