//! Namespace joins from outside a container (nsenter, setns): a pending join becomes a node
//! session once the joiner or a child of it runs something or connects.

use crate::capture::event::{ExecEvent, NsJoinEvent, ProcessKey};
use crate::model::{SessionId, SessionInfo, SessionKind, SessionUpdate};
use crate::process::table::{PendingJoin, Proc};

use super::SessionTracker;

impl SessionTracker {
    pub(super) fn on_ns_join(&mut self, j: &NsJoinEvent, out: &mut Vec<SessionUpdate>) {
        let key = match self.table.resolve(j.key()) {
            Some(k) => k,
            None => {
                // a host process we did not trace (filter mode) or never saw created
                let mut p = Proc::new(j.key(), None);
                p.cgroup_id = j.cgroup_id;
                p.loginuid = j.loginuid;
                self.insert_proc(p, j.ts_ns, out);
                j.key()
            }
        };
        let by_mnt = (j.mntns_ino != j.old_mntns_ino).then(|| self.containers.by_mntns(j.mntns_ino)).flatten();
        let by_pid = (j.pidns_for_children_ino != j.old_pidns_for_children_ino)
            .then(|| self.containers.by_pidns(j.pidns_for_children_ino))
            .flatten();
        let Some(cg) = by_mnt.or(by_pid) else { return };
        let Some(container) = self.containers.get(cg).map(|c| c.info.clone()) else { return };
        let Some(p) = self.table.get(&key) else { return };
        if p.cgroup_id == cg || self.session_container(p.session) == Some(cg) {
            return; // already inside that container
        }
        if p.join.as_ref().is_some_and(|x| x.container.cgroup_id == cg && x.joiner == key) {
            return; // the next namespace of the same nsenter
        }
        let join = PendingJoin {
            joiner: key,
            container,
            loginuid: j.loginuid.or(p.loginuid),
            ts_ns: j.ts_ns,
            parent_session: p.session,
        };
        if let Some(p) = self.table.get_mut(&key) {
            p.join = Some(Box::new(join));
        }
    }

    /// A namespace join was followed by activity: the node session starts (once), with the
    /// joiner as its root and `actor` (the joiner or a child of it) in it.
    pub(super) fn promote(
        &mut self,
        j: PendingJoin,
        actor: ProcessKey,
        exec: Option<&ExecEvent>,
        out: &mut Vec<SessionUpdate>,
    ) {
        let sid = SessionId(j.joiner);
        let ts = exec.map(|e| e.ts_ns).unwrap_or(j.ts_ns);
        if let Some(s) =
            self.sessions.get_mut(&sid).filter(|s| s.info.kind == SessionKind::Watched || s.info.kind.is_tree())
        {
            // a watched nsenter (or a host tree's root) entering a container: the same trace,
            // now a node session
            // (later updates carry the kind, container and node user)
            let i = std::sync::Arc::make_mut(&mut s.info);
            i.kind = SessionKind::Node;
            i.container = j.container.clone();
            i.node_user = j.loginuid;
            i.parent_session = j.parent_session;
            // say it again: the session is now known as a node session in this container
            out.push(SessionUpdate::Started(s.info.clone()));
        }
        if !self.sessions.contains_key(&sid) {
            let joiner_argv = self.table.get(&j.joiner).and_then(|p| p.images.last()).map(|i| i.argv.to_vec());
            let root_argv = match joiner_argv {
                Some(a) if !a.is_empty() => a,
                _ => exec.map(|e| e.argv.clone()).unwrap_or_default(),
            };
            let info = SessionInfo {
                root_argv,
                root_tty: exec.map(|e| e.flags.tty).unwrap_or(false),
                node_user: j.loginuid,
                parent_session: j.parent_session,
                ..SessionInfo::new(sid, SessionKind::Node, j.container.clone(), j.ts_ns)
            };
            self.start_session(info, 0, out);
            self.enter(j.joiner, sid, ts, out);
        }
        self.enter(actor, sid, ts, out);
    }

    /// Move a live process into a session.
    pub(super) fn enter(&mut self, key: ProcessKey, sid: SessionId, ts_ns: u64, out: &mut Vec<SessionUpdate>) {
        let Some(p) = self.table.get_mut(&key) else { return };
        if p.session == Some(sid) {
            return;
        }
        let prev = p.session.replace(sid);
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.live += 1;
        }
        if let Some(prev) = prev {
            self.leave(prev, ts_ns, out);
        }
    }
}
