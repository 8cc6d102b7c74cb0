//! Traces outside exec sessions that start at an exec (issue 6, chosen by
//! `process::activity::ActivityConfig`): a watched executable's run, and the workload and host
//! process trees of the `containers` and `all` scopes.

use crate::capture::event::ExecEvent;
use crate::model::{ContainerInfo, SessionId, SessionInfo, SessionKind, SessionUpdate};

use super::image::image_from_exec;
use super::SessionTracker;

impl SessionTracker {
    /// Does tree `t` hold a process that execs in `cgroup_id`? A host tree any host process,
    /// a workload tree the processes of its own container.
    pub(super) fn tree_holds(&self, t: SessionId, cgroup_id: u64, is_container: bool) -> bool {
        match self.sessions.get(&t) {
            Some(s) if s.info.kind == SessionKind::Host => !is_container,
            Some(s) => is_container && s.info.container.cgroup_id == cgroup_id,
            None => false,
        }
    }

    /// Is this the init of its container (the workload itself, never a tree of its own)?
    pub(super) fn is_container_init(&self, e: &ExecEvent) -> bool {
        let init = self.containers.get(e.cgroup_id).and_then(|c| c.init);
        init == Some(e.key()) || (e.nspid == 1 && e.pidns_ino != self.containers.host_pidns())
    }

    /// A trace outside every exec session, rooted at this image, with the descendants it forks
    /// from now on: a watched executable's run (anywhere) or a process tree the scope records.
    /// `tree`: the workload or host tree the process leaves for it.
    pub(super) fn start_activity(
        &mut self,
        e: &ExecEvent,
        kind: SessionKind,
        is_container: bool,
        tree: Option<SessionId>,
        out: &mut Vec<SessionUpdate>,
    ) {
        let key = e.key();
        let sid = SessionId(key);
        if let Some(s) = self.sessions.get_mut(&sid) {
            // the tree's own root runs it (`sh -c 'exec tcpdump'`): the same trace, renamed
            let i = std::sync::Arc::make_mut(&mut s.info);
            i.kind = kind;
            i.root_argv = e.argv.clone();
            out.push(SessionUpdate::Started(s.info.clone()));
            self.push_image(key, &mut e.clone()); // rare: a tree's root turning into a watched run
            return;
        }
        let container = match is_container {
            true => self.containers.get(e.cgroup_id).map(|c| c.info.clone()).unwrap_or_default(),
            false => {
                std::sync::Arc::new(ContainerInfo { cgroup_id: e.cgroup_id, source: "host", ..Default::default() })
            }
        };
        if let Some(prev) = tree {
            self.leave(prev, e.ts_ns, out);
        }
        let info = SessionInfo {
            root_argv: e.argv.clone(),
            root_tty: e.flags.tty,
            env_audit_id: e.audit_id.clone(),
            node_user: e.loginuid,
            parent_session: tree,
            ..SessionInfo::new(sid, kind, container, e.ts_ns)
        };
        self.start_session(info, 1, out);
        if let Some(p) = self.table.get_mut(&key) {
            p.session = Some(sid);
            p.images = vec![image_from_exec(e, 0, &self.clock, &self.exec_identity)];
        }
    }
}
