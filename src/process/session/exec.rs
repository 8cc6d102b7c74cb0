//! An exec, judged: the session it opens (a crossing into a container that is not the
//! container's init), joins (a member's new image), or none; the image /proc already showed;
//! the init's exec and a lost session root's recovery.

use crate::capture::event::{ExecEvent, ProcessKey};
use crate::model::{SessionId, SessionInfo, SessionKind, SessionUpdate};
use crate::process::table::Proc;

use super::image::{image_from_exec, image_taken_from_exec, next_index};
use super::SessionTracker;

impl SessionTracker {
    pub(super) fn on_exec(&mut self, e: &mut ExecEvent, out: &mut Vec<SessionUpdate>) {
        let key = e.key();
        self.exec_identity = self.identities.identify(&self.activity, e, self.lookup.as_mut());
        if self.table.resolve(key).is_none() {
            self.counters.execs_before_fork.inc();
            let parent = self.table.resolve(e.parent_key()).unwrap_or(e.parent_key());
            let mut p = Proc::new(key, Some(parent));
            p.cgroup_id = e.cgroup_id;
            self.inherit(&mut p, parent);
            self.insert_proc(p, e.ts_ns, out);
        }
        let is_container = self.containers.learn(e.cgroup_id, self.lookup.as_mut(), false);
        let Some(p) = self.table.get_mut(&key) else { return };
        let old_cg = p.cgroup_id;
        p.cgroup_id = e.cgroup_id;
        p.nspid = e.nspid;
        p.pidns_ino = e.pidns_ino;
        p.mntns_ino = e.mntns_ino;
        p.loginuid = e.loginuid;
        let session = p.session;
        if old_cg != e.cgroup_id {
            self.containers.process_removed(old_cg);
            self.containers.process_added(e.cgroup_id);
        }
        if self.exec_seen_in_proc(e, key, is_container) {
            return;
        }

        if is_container {
            self.containers.note_namespaces(e.cgroup_id, e.mntns_ino, e.pidns_ino);
            let crossing = e.parent_cgroup_id != e.cgroup_id;
            let here = self.session_container(session) == Some(e.cgroup_id);
            // a session is named after its root: a root that crosses again (moved to another
            // cgroup, then exec'd) stays in the session it already roots
            let roots_one = self.sessions.contains_key(&SessionId(key));
            if crossing && !here && !roots_one {
                if !self.is_init(e) {
                    tracing::debug!(
                        pid = e.pid, nspid = e.nspid, ppid = e.ppid, cgroup = e.cgroup_id,
                        parent_cgroup = e.parent_cgroup_id, previous = ?session,
                        argv0 = ?String::from_utf8_lossy(e.argv.first().map(|a| a.as_slice()).unwrap_or_default()),
                        "exec session: an exec crossed into a container and is not its init"
                    );
                    self.start_exec_session(e, session, out);
                    return;
                }
                // an ephemeral container's init is a session: held until the pod says (debug.rs)
                self.hold_init(e);
            }
            if !crossing && session.is_none() {
                self.recover_lost_root(key, e, out);
            }
        }
        let Some(p) = self.table.get(&key) else { return };
        let (session, join) = (p.session, p.join.clone());
        if let Some(j) = join {
            if self.session_container(session) != Some(j.container.cgroup_id) || session.is_none() {
                self.promote(*j, key, Some(e), out);
            }
        }
        let Some(p) = self.table.get(&key) else { return };
        let mut session = p.session;
        let mut tree = session.filter(|s| self.sessions.get(s).is_some_and(|s| s.info.kind.is_tree()));
        if let Some(t) = tree.filter(|t| !self.tree_holds(*t, e.cgroup_id, is_container)) {
            // a tree stays in its container: the shim's host tree does not take the container
            // it starts, a container's tree does not follow a process moved out of it
            self.leave(t, e.ts_ns, out);
            if let Some(p) = self.table.get_mut(&key) {
                p.session = None;
            }
            (session, tree) = (None, None);
        }
        if (session.is_none() || tree.is_some())
            && (self.activity.watched(&e.exe_path, e.argv.first().map(|a| a.as_slice()))
                || self.exec_identity.tool.is_some())
        {
            self.start_activity(e, SessionKind::Watched, is_container, tree, out);
            return;
        }
        if session.is_none() && self.activity.records_trees(is_container) && !self.is_container_init(e) {
            let kind = if is_container { SessionKind::Workload } else { SessionKind::Host };
            self.start_activity(e, kind, is_container, None, out);
            return;
        }
        // the last reads of the event: its buffers move into the image
        if session.is_some() {
            self.push_image(key, e);
        } else if let Some(p) = self.table.get_mut(&key) {
            p.images = vec![image_taken_from_exec(e, next_index(&p.images), &self.clock, &self.exec_identity)];
        }
    }

    /// The programs attach before /proc is read, so an exec of the moments between reaches
    /// this stage after the scan that already shows its result. Such an exec replaces the
    /// image learned from /proc instead of following it, and a session /proc opened at it
    /// (its beginning unseen, so incomplete) turns out seen from its first exec: it takes the
    /// exec's start, argv, terminal and audit id, and is complete unless events were lost.
    /// True when the exec was taken so (nothing else to do for it).
    pub(super) fn exec_seen_in_proc(&mut self, e: &ExecEvent, key: ProcessKey, is_container: bool) -> bool {
        if e.ts_ns > self.proc_scanned_ns {
            return false;
        }
        let Some(p) = self.table.get_mut(&key) else { return false };
        if !p.from_proc || p.images.len() != 1 || p.images[0].exec_index != 0 {
            return false;
        }
        // (the entry stays `from_proc`: its key is in clock ticks, which resolve() matches;
        // on_exec has already taken the exec's cgroup and namespaces)
        p.images[0] = image_from_exec(e, 0, &self.clock, &self.exec_identity);
        let crossing = is_container && e.parent_cgroup_id != e.cgroup_id;
        if let Some(s) = self.sessions.get_mut(&SessionId(key)).filter(|s| s.info.from_proc && crossing) {
            let i = std::sync::Arc::make_mut(&mut s.info);
            i.start_ns = e.ts_ns;
            i.root_argv = e.argv.clone();
            i.root_tty = e.flags.tty;
            i.env_audit_id = e.audit_id.clone();
            i.from_proc = false;
            i.incomplete = false;
            self.counters.sessions_proc_completed.inc();
        }
        true
    }

    /// Is this boundary-crossing exec the container's init? Its first process is: judged by
    /// nspid 1 in a pid namespace of its own, by the runtime's task pid when it is known, and
    /// otherwise by being the first process seen entering the cgroup.
    pub(super) fn is_init(&mut self, e: &ExecEvent) -> bool {
        let host = self.containers.host_pidns();
        let Some(st) = self.containers.get_mut(e.cgroup_id) else { return false };
        // pid 1 of a pid namespace other than the host's, entering the container's cgroup: only
        // a container's init is that (an exec into a running container joins its pid namespace,
        // where pid 1 is taken). The kernel says so at this exec; what was guessed before (the
        // first process seen entering, when neither this rule nor the runtime could say) or a
        // runtime answer about another pid gives way to it.
        if e.nspid == 1 && e.pidns_ino != host && e.pidns_ino != 0 {
            if st.init.is_some_and(|k| k != e.key()) {
                tracing::debug!(pid = e.pid, earlier = ?st.init, cgroup = e.cgroup_id,
                    "container init: pid 1 of its own pid namespace replaces an earlier guess");
            }
            st.entered = true;
            st.init = Some(e.key());
            std::sync::Arc::make_mut(&mut st.info).started_ns = Some(e.key().start_ns);
            return true;
        }
        if let Some(init) = st.init {
            return init == e.key();
        }
        let first = !st.entered && !st.from_proc;
        st.entered = true;
        let info = st.info.clone();
        let verdict = match self.lookup.init_pid(e.cgroup_id, &info) {
            Some(pid) => pid == e.pid,
            None => first,
        };
        if verdict {
            if let Some(st) = self.containers.get_mut(e.cgroup_id) {
                st.init = Some(e.key());
                std::sync::Arc::make_mut(&mut st.info).started_ns = Some(e.key().start_ns);
            }
        }
        verdict
    }

    /// A process execs inside a container whose parent never exec'd there: the parent runs
    /// an image it inherited in another mount namespace (the runtime's), yet its child runs in
    /// the container's. That parent entered the container and its exec was lost (the kernel
    /// could not write it): it roots a session, opened now as a partial one (incomplete, one
    /// event lost at least), with the parent and this child in it. Counted.
    pub(super) fn recover_lost_root(&mut self, key: ProcessKey, e: &ExecEvent, out: &mut Vec<SessionUpdate>) {
        let Some(parent) = self.table.get(&key).and_then(|p| p.parent) else { return };
        let Some(pp) = self.table.get(&parent) else { return };
        let from_outside = pp.mntns_ino != 0 && pp.mntns_ino != e.mntns_ino;
        let never_exec = !pp.images.is_empty() && pp.images.iter().all(|i| i.inherited);
        if pp.session.is_some() || !from_outside || !never_exec || self.sessions.contains_key(&SessionId(parent)) {
            return;
        }
        if self.containers.get(e.cgroup_id).and_then(|c| c.init) == Some(parent) {
            return;
        }
        // the parent may be the container's init whose own exec was lost: pid 1 of a pid
        // namespace of its own, or the pid the runtime names. That is no session.
        let (nspid, pidns) = (pp.nspid, pp.pidns_ino);
        let host = self.containers.host_pidns();
        let info = self.containers.get(e.cgroup_id).map(|c| c.info.clone()).unwrap_or_default();
        let hint = self.lookup.init_pid(e.cgroup_id, &info);
        if hint == Some(parent.pid) || (hint.is_none() && nspid == 1 && pidns != 0 && pidns != host) {
            if let Some(st) = self.containers.get_mut(e.cgroup_id).filter(|st| st.init.is_none()) {
                st.init = Some(parent);
                st.entered = true;
            }
            return;
        }
        let container = info;
        let sid = SessionId(parent);
        let info = SessionInfo {
            incomplete: true,
            events_lost: 1,
            ..SessionInfo::new(sid, SessionKind::Exec, container, parent.start_ns)
        };
        self.counters.roots_lost.inc();
        self.start_session(info, 0, out);
        for k in [parent, key] {
            if let Some(p) = self.table.get_mut(&k) {
                p.join = None;
            }
            self.adopt(k, sid);
        }
    }

    pub(super) fn start_exec_session(
        &mut self,
        e: &ExecEvent,
        previous: Option<SessionId>,
        out: &mut Vec<SessionUpdate>,
    ) {
        let key = e.key();
        let container = self.containers.get(e.cgroup_id).map(|c| c.info.clone()).unwrap_or_default();
        let sid = SessionId(key);
        if let Some(prev) = previous {
            self.leave(prev, e.ts_ns, out);
        }
        let info = SessionInfo {
            root_argv: e.argv.clone(),
            root_tty: e.flags.tty,
            env_audit_id: e.audit_id.clone(),
            parent_session: previous,
            ..SessionInfo::new(sid, SessionKind::Exec, container, e.ts_ns)
        };
        self.start_session(info, 1, out);
        if let Some(p) = self.table.get_mut(&key) {
            p.session = Some(sid);
            p.join = None;
            p.images = vec![image_from_exec(e, 0, &self.clock, &self.exec_identity)];
        }
    }

    /// A member's new image, after the one it ran before.
    pub(super) fn push_image(&mut self, key: ProcessKey, e: &mut ExecEvent) {
        let Some(p) = self.table.get_mut(&key) else { return };
        let idx = next_index(&p.images);
        if let Some(last) = p.images.last_mut() {
            last.end_ns.get_or_insert(e.ts_ns);
        }
        p.images.push(image_taken_from_exec(e, idx, &self.clock, &self.exec_identity));
    }
}
