//! The process table: every live process the kernel told us about, keyed by (pid, start time).
//!
//! In: process keys and the facts the session tracker derives from events. Out: lookups by
//! key, by live pid (connects carry no start time) and by socket cookie. Memory stays bounded:
//! an exited process leaves the table at once (its record has been handed on), remembering only
//! its session in a bounded ring of recent exits, for children whose events arrive after their
//! parent's exit. Exits that arrive before the process is known are parked in a bounded queue
//! until its fork shows up. Processes learned from /proc carry a start time rounded to clock
//! ticks; the first kernel event for such a process replaces the key with the exact one.

use std::collections::{HashMap, VecDeque};

use crate::hashing::FastMap;

use crate::capture::event::{ExitEvent, ProcessKey};

use crate::model::{ContainerInfo, ImageRecord, SessionId};

/// An image's folded connect records by destination (transport, address, port).
pub type ConnectIndex = HashMap<(crate::capture::event::Transport, std::net::IpAddr, u16), usize>;

/// Socket routes (cookie -> connect record) one process keeps for results still to come.
pub const MAX_COOKIES_PER_PROCESS: usize = 4096;

/// A namespace join that has not yet led anywhere: it becomes a node session when the joiner
/// or a child it forks afterwards runs something (exec) or connects. runc's own setns (into
/// the container it is about to exec in) never does, so it never becomes a session.
#[derive(Clone, Debug, PartialEq)]
pub struct PendingJoin {
    pub joiner: ProcessKey,
    pub container: std::sync::Arc<ContainerInfo>,
    pub loginuid: Option<u32>,
    pub ts_ns: u64,
    /// The session the joiner was in (nsenter from inside a session).
    pub parent_session: Option<SessionId>,
}

/// One process as the tracker keeps it.
#[derive(Clone, Debug)]
pub struct Proc {
    pub key: ProcessKey,
    pub parent: Option<ProcessKey>,
    /// The parent's exec index when this process was forked (see `ProcessRecord`).
    pub parent_exec_index: Option<u32>,
    pub nspid: u32,
    pub cgroup_id: u64,
    pub pidns_ino: u32,
    pub mntns_ino: u32,
    pub fork_ns: u64,
    pub from_proc: bool,
    pub loginuid: Option<u32>,
    pub session: Option<SessionId>,
    /// Images of a session member since it joined the session; for other processes only the
    /// current one (a node session's root needs the argv it ran before it joined).
    pub images: Vec<ImageRecord>,
    /// Boxed: a join is rare, and inline its container's dozen strings made every entry
    /// ~560 bytes, moved on each insert and remove (issue 15).
    pub join: Option<Box<PendingJoin>>,
    /// Sockets whose outcome is still routed to this process.
    pub cookies: VecDeque<u64>,
    /// The last image's folded connects by destination (exec index, (transport, address,
    /// port) -> index in its `connects`): see `process::session::net`.
    /// Boxed for the same reason as `join` (most processes never connect).
    pub connect_index: Option<Box<(u32, ConnectIndex)>>,
    /// Children in the table that took this process as parent when they were forked
    /// (`SessionTracker::inherit`), counted off as they leave it: none at exit makes the
    /// final record a leaf (`ProcessRecord::leaf`). Children learned from /proc are not
    /// counted (their parent is /proc-learned too, never a leaf).
    pub children: u32,
}

impl Proc {
    pub fn new(key: ProcessKey, parent: Option<ProcessKey>) -> Self {
        Proc {
            key,
            parent,
            parent_exec_index: None,
            nspid: 0,
            cgroup_id: 0,
            pidns_ino: 0,
            mntns_ino: 0,
            fork_ns: key.start_ns,
            from_proc: false,
            loginuid: None,
            session: None,
            images: Vec::new(),
            join: None,
            cookies: Default::default(),
            connect_index: None,
            children: 0,
        }
    }
}

/// Where a socket's outcome goes: process, image index, connect index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CookieSlot {
    pub key: ProcessKey,
    pub image: usize,
    pub connect: usize,
}

/// Every map here is keyed by what the kernel chooses (pids, start times, socket cookies):
/// `FastMap` (`crate::hashing`); SipHash of these keys was most of `remove` and `resolve` in
/// the exec storm's profile (issue 15).
pub struct ProcessTable {
    procs: FastMap<ProcessKey, Proc>,
    by_pid: FastMap<u32, ProcessKey>,
    cookies: FastMap<u64, CookieSlot>,
    cookies_evicted: u64,
    early_exits: FastMap<ProcessKey, ExitEvent>,
    early_order: VecDeque<ProcessKey>,
    /// Recent exits, by pid: slot `pid % RECENT_SLOTS` holds the last process of such a pid
    /// that exited, with its session. Pids are handed out in turn, so it holds about the
    /// exits of the last `RECENT_SLOTS` pids given out; a slot is one write per exit and one
    /// read per fork (a map and a queue of the last 4096 exits were an insert, a removal and
    /// two queue moves per exit: `ProcessTable::removed` in issue 15's profile). Made at the
    /// first exit.
    recent: Vec<Option<(ProcessKey, Option<SessionId>)>>,
    /// ns per `/proc` clock tick (10 ms at USER_HZ 100).
    tick_ns: u64,
    cap_early: usize,
}

/// Slots of [`ProcessTable`]'s recent exits: 40 bytes each, 160 KiB (the map and queue of
/// 4096 exits they replace held about 390 KiB when full).
const RECENT_SLOTS: usize = 4096;

impl ProcessTable {
    pub fn new(tick_ns: u64) -> Self {
        ProcessTable {
            procs: FastMap::default(),
            by_pid: FastMap::default(),
            cookies: FastMap::default(),
            cookies_evicted: 0,
            early_exits: FastMap::default(),
            early_order: VecDeque::new(),
            recent: Vec::new(),
            tick_ns: tick_ns.max(1),
            cap_early: 4096,
        }
    }

    /// Live processes held.
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// Exits parked while their process is unknown.
    pub fn early_exits(&self) -> usize {
        self.early_exits.len()
    }

    pub fn tick_ns(&self) -> u64 {
        self.tick_ns
    }

    /// The key the table holds for `key`: itself, or a /proc-learned entry of the same pid
    /// and clock tick (/proc tells start times in ticks, the kernel in ns). The entry keeps
    /// its /proc key: the sessions it roots and the span ids of its images are named after
    /// it, and records already sent name its children's parent by it.
    pub fn resolve(&mut self, key: ProcessKey) -> Option<ProcessKey> {
        if self.procs.contains_key(&key) {
            return Some(key);
        }
        let old = *self.by_pid.get(&key.pid)?;
        let p = self.procs.get(&old)?;
        if !p.from_proc || old.start_ns / self.tick_ns != key.start_ns / self.tick_ns {
            return None;
        }
        Some(old)
    }

    pub fn get(&self, key: &ProcessKey) -> Option<&Proc> {
        self.procs.get(key)
    }

    pub fn get_mut(&mut self, key: &ProcessKey) -> Option<&mut Proc> {
        self.procs.get_mut(key)
    }

    /// The live process with this pid (connect events carry no start time).
    pub fn by_pid(&self, pid: u32) -> Option<ProcessKey> {
        self.by_pid.get(&pid).copied()
    }

    /// Insert a new process. An older process with the same pid is certainly gone (its exit
    /// was lost): it is removed and returned so its session can be told.
    pub fn insert(&mut self, p: Proc) -> Option<Proc> {
        let key = p.key;
        let stale = match self.by_pid.insert(key.pid, key) {
            Some(old) if old != key => self.remove(old),
            _ => None,
        };
        self.procs.insert(key, p);
        stale
    }

    /// [`Self::resolve`] then [`Self::remove`], in one lookup when the key is the table's own
    /// (every exit but a /proc-learned process's first): the process that exited, under the
    /// key the table held for it (`Proc::key`).
    pub fn remove_resolved(&mut self, key: ProcessKey) -> Option<Proc> {
        if let Some(p) = self.procs.remove(&key) {
            return Some(self.removed(key, p));
        }
        let held = self.resolve(key)?;
        self.remove(held)
    }

    /// Take a process out (it exited). Its session is remembered for late children.
    pub fn remove(&mut self, key: ProcessKey) -> Option<Proc> {
        let p = self.procs.remove(&key)?;
        Some(self.removed(key, p))
    }

    /// What goes with a process taken out of `procs`: its pid's entry, its socket routes; its
    /// session is remembered.
    fn removed(&mut self, key: ProcessKey, p: Proc) -> Proc {
        // one probe: the pid's entry goes only while it still names this process
        if let std::collections::hash_map::Entry::Occupied(e) = self.by_pid.entry(key.pid) {
            if *e.get() == key {
                e.remove();
            }
        }
        for c in &p.cookies {
            self.cookies.remove(c);
        }
        if let Some(pp) = p.parent.and_then(|q| self.procs.get_mut(&q)) {
            pp.children = pp.children.saturating_sub(1);
        }
        self.remember(key, p.session);
        p
    }

    fn remember(&mut self, key: ProcessKey, session: Option<SessionId>) {
        if self.recent.is_empty() {
            self.recent = vec![None; RECENT_SLOTS];
        }
        self.recent[key.pid as usize % RECENT_SLOTS] = Some((key, session));
    }

    /// The session `key` exited in, when it is among the recent exits.
    fn exited(&self, key: &ProcessKey) -> Option<Option<SessionId>> {
        match self.recent.get(key.pid as usize % RECENT_SLOTS) {
            Some(Some((k, s))) if k == key => Some(*s),
            _ => None,
        }
    }

    /// The session of a process that may already have exited: Some(None) when it is known and
    /// in no session, None when it was never seen.
    pub fn session_of(&self, key: &ProcessKey) -> Option<Option<SessionId>> {
        if let Some(p) = self.procs.get(key) {
            return Some(p.session);
        }
        self.exited(key)
    }

    /// The process exited a moment ago (a late fork record must not bring it back).
    pub fn recently_exited(&self, key: &ProcessKey) -> bool {
        self.exited(key).is_some() && !self.procs.contains_key(key)
    }

    /// Park an exit whose process is not known yet. Returns the exit pushed out when full.
    pub fn park_exit(&mut self, x: ExitEvent) -> Option<ExitEvent> {
        let key = x.key();
        if self.early_exits.insert(key, x).is_none() {
            self.early_order.push_back(key);
        }
        if self.early_order.len() > self.cap_early {
            let k = self.early_order.pop_front()?;
            return self.early_exits.remove(&k);
        }
        None
    }

    pub fn take_early_exit(&mut self, key: &ProcessKey) -> Option<ExitEvent> {
        let x = self.early_exits.remove(key)?;
        self.early_order.retain(|k| k != key);
        Some(x)
    }

    /// Routes a socket's later results to its connect record. A process keeps at most
    /// `MAX_COOKIES_PER_PROCESS` routes: the oldest goes first (its late results are then
    /// counted unmatched), so a process that connects a million times stays bounded.
    pub fn set_cookie(&mut self, cookie: u64, slot: CookieSlot) {
        self.cookies.insert(cookie, slot);
        if let Some(p) = self.procs.get_mut(&slot.key) {
            p.cookies.push_back(cookie);
            if p.cookies.len() > MAX_COOKIES_PER_PROCESS {
                if let Some(old) = p.cookies.pop_front() {
                    self.cookies.remove(&old);
                    self.cookies_evicted += 1;
                }
            }
        }
    }

    /// Routes forgotten to keep a process's routes bounded.
    pub fn cookies_evicted(&self) -> u64 {
        self.cookies_evicted
    }

    pub fn cookie(&self, cookie: u64) -> Option<CookieSlot> {
        self.cookies.get(&cookie).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Proc> {
        self.procs.values()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Proc> {
        self.procs.values_mut()
    }

    pub fn keys(&self) -> Vec<ProcessKey> {
        self.procs.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::event::ExitStatus;

    fn k(pid: u32, start_ns: u64) -> ProcessKey {
        ProcessKey { pid, start_ns }
    }

    #[test]
    fn an_entry_stays_small() {
        // moved on every insert and remove: a rare join or connect index must not make every
        // entry carry a container's strings inline (it was ~560 bytes, issue 15)
        let size = std::mem::size_of::<Proc>();
        assert!(size <= 200, "Proc is {size} bytes");
    }

    #[test]
    fn pid_reuse_replaces_the_stale_process() {
        let mut t = ProcessTable::new(10_000_000);
        assert!(t.insert(Proc::new(k(7, 100), None)).is_none());
        let stale = t.insert(Proc::new(k(7, 900), None)).unwrap();
        assert_eq!(stale.key, k(7, 100));
        assert_eq!(t.len(), 1);
        assert_eq!(t.by_pid(7), Some(k(7, 900)));
        assert_eq!(t.session_of(&k(7, 100)), Some(None), "the stale one is remembered as exited");
    }

    #[test]
    fn proc_learned_keys_join_at_tick_granularity() {
        let mut t = ProcessTable::new(10_000_000);
        let mut p = Proc::new(k(5, 1_230_000_000), None);
        p.from_proc = true;
        t.insert(p);
        let mut c = Proc::new(k(6, 2_000_000_000), Some(k(5, 1_230_000_000)));
        c.from_proc = true;
        t.insert(c);
        // the /proc key stays: sessions and span ids are named after it
        assert_eq!(t.resolve(k(5, 1_239_999_999)), Some(k(5, 1_230_000_000)));
        assert_eq!(t.get(&k(6, 2_000_000_000)).unwrap().parent, Some(k(5, 1_230_000_000)));
        assert_eq!(t.resolve(k(5, 1_240_000_000)), None, "another tick is another process");
    }

    #[test]
    fn an_exit_removes_the_process_under_the_key_the_table_holds() {
        let mut t = ProcessTable::new(10_000_000);
        let mut p = Proc::new(k(5, 1_230_000_000), None);
        p.from_proc = true;
        t.insert(p);
        t.insert(Proc::new(k(6, 2_000), None));
        assert_eq!(t.remove_resolved(k(6, 2_000)).map(|p| p.key), Some(k(6, 2_000)));
        // the kernel's exact start time finds the /proc-learned entry of its tick
        assert_eq!(t.remove_resolved(k(5, 1_239_999_999)).map(|p| p.key), Some(k(5, 1_230_000_000)));
        assert!(t.is_empty() && t.by_pid(5).is_none() && t.by_pid(6).is_none());
        assert!(t.recently_exited(&k(5, 1_230_000_000)) && t.recently_exited(&k(6, 2_000)));
        assert!(t.remove_resolved(k(7, 1)).is_none(), "never seen");
    }

    #[test]
    fn recent_exits_are_remembered_by_pid_until_the_slot_is_taken() {
        let mut t = ProcessTable::new(1);
        assert!(!t.recently_exited(&k(1, 1)) && t.session_of(&k(1, 1)).is_none(), "nothing yet");
        let sid = SessionId(k(1, 5));
        for pid in 1..=RECENT_SLOTS as u32 {
            let mut p = Proc::new(k(pid, 5), None);
            p.session = (pid == 1).then_some(sid);
            t.insert(p);
            t.remove(k(pid, 5));
        }
        // the exits of the last RECENT_SLOTS pids given out are all there
        assert_eq!(t.session_of(&k(1, 5)), Some(Some(sid)));
        assert!((1..=RECENT_SLOTS as u32).all(|pid| t.recently_exited(&k(pid, 5))));
        assert!(!t.recently_exited(&k(2, 6)), "another process of the pid");
        // the next pid round takes the slot
        t.insert(Proc::new(k(1 + RECENT_SLOTS as u32, 9), None));
        t.remove(k(1 + RECENT_SLOTS as u32, 9));
        assert!(t.session_of(&k(1, 5)).is_none());
        assert!(t.recently_exited(&k(1 + RECENT_SLOTS as u32, 9)));
        // a live process is not "recently exited"
        t.insert(Proc::new(k(3, 5), None));
        assert!(!t.recently_exited(&k(3, 5)));
    }

    #[test]
    fn a_child_leaving_the_table_counts_itself_off_its_parent() {
        let mut t = ProcessTable::new(1);
        let mut parent = Proc::new(k(1, 1), None);
        parent.children = 2; // counted by the tracker as it forks them
        t.insert(parent);
        t.insert(Proc::new(k(2, 2), Some(k(1, 1))));
        t.insert(Proc::new(k(3, 3), Some(k(1, 1))));
        t.remove(k(2, 2));
        assert_eq!(t.get(&k(1, 1)).unwrap().children, 1);
        // pid reuse with the exit lost: the stale child is counted off too
        t.insert(Proc::new(k(3, 30), None));
        assert_eq!(t.get(&k(1, 1)).unwrap().children, 0);
        t.remove(k(3, 30));
        assert_eq!(t.get(&k(1, 1)).unwrap().children, 0, "never below zero");
    }

    #[test]
    fn early_exits_are_bounded() {
        let mut t = ProcessTable::new(1);
        t.cap_early = 2;
        let x = |pid| ExitEvent { ts_ns: 1, pid, start_ns: 1, cgroup_id: 0, status: ExitStatus::Code(0) };
        assert!(t.park_exit(x(1)).is_none());
        assert!(t.park_exit(x(2)).is_none());
        assert_eq!(t.park_exit(x(3)).unwrap().pid, 1);
        assert!(t.take_early_exit(&k(3, 1)).is_some());
        assert_eq!(t.early_exits(), 1);
    }
}
