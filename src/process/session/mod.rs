//! The session tracker: kernel events in, exec sessions out.
//!
//! In: [`Event`]s in ring-buffer order (exec, fork, exit, connect and its outcome, setns).
//! Out: [`SessionUpdate`]s: `Started` when a session root execs (or a namespace join is
//! followed by an exec or a connect), `Live` as a member execs, makes a connect or datagram a
//! rule can match, or a watched-file operation (said at once, so alerts need not wait for the
//! process's end), `ProcessEnded` for each member's exit, `Ended` after the last one. Pure: no I/O except through the [`ContainerLookup`] it is given, so recorded
//! sequences test it without a kernel.
//!
//! Rules (design brief, "Exec sessions"):
//! - a process that execs inside a container's cgroup while its `real_parent` is outside that
//!   cgroup roots a session, unless it is the container's init (its first process);
//! - a process outside a container that `setns`es into the container's mount or pid namespace
//!   roots a node session (kind `Node`, with its loginuid) once it or a child it forks runs
//!   something: runc's own setns never does, so runc is never taken for a node user;
//! - every process forked by a member is a member, also after the root exited; membership is
//!   fixed at fork, so a session ends when its last member exits.
//!
//! Dropped, and counted where it happens in [`TrackerCounters`]: exits of processes never seen (parked first,
//! in case their fork is late), connects from pids not in the table, results for sockets of
//! processes outside every session. Nothing here panics on any event sequence.

mod activity;
mod counters;
mod debug;
mod exec;
mod image;
mod lifecycle;
pub(crate) use lifecycle::record_of;
mod live;
mod losses;
pub mod net;
mod ns;
mod tty;

pub use counters::TrackerCounters;
pub use debug::DEBUG_DECISION_NS;

use std::collections::HashMap;

use crate::hashing::FastMap;
use std::sync::Arc;

use crate::capture::event::{Event, ExecEvent, ExitEvent, FileEvent, ForkEvent, NsJoinEvent, ProcessKey};

use super::containers::{ContainerLookup, Containers};
use super::metrics::ProcessMetrics;
use super::table::ProcessTable;
use crate::model::{ImageRecord, ProcessRecord, SessionId, SessionInfo, SessionKind, SessionUpdate};

/// File operations kept per image: a loop that opens a watched file forever must not grow a
/// process record without bound.
pub const MAX_FILES_PER_IMAGE: usize = 256;

struct Session {
    /// Shared with every update it goes out on; changed copy-on-write (rarely: a rename, a
    /// loss, better container metadata, the end).
    info: Arc<SessionInfo>,
    live: u32,
}

pub struct SessionTracker {
    pub(crate) table: ProcessTable,
    pub(crate) containers: Containers,
    pub(crate) lookup: Box<dyn ContainerLookup>,
    /// Keyed by the root's (pid, start time): `FastMap`, asked several times per event.
    sessions: FastMap<SessionId, Session>,
    pub(crate) counters: TrackerCounters,
    /// Last cumulative kernel drop count seen per cgroup.
    lost_seen: crate::lru::Lru<u64, u64>,
    /// What is recorded beside exec sessions.
    activity: super::activity::ActivityConfig,
    /// Outbound connects outside sessions, folded and rate-limited.
    outbound: super::activity::Outbound,
    /// Turns the executable's wall-clock change time into boot ns.
    clock: crate::clock::BootClock,
    /// New pod containers' inits, until the lookup says whether they are ephemeral.
    pending: Vec<debug::PendingInit>,
    /// When /proc was last read ([`Self::learn_from_proc`]; 0: never). An exec event older
    /// than this, of a process learned there, is the image /proc showed, not a new one.
    pub(crate) proc_scanned_ns: u64,
    /// Watched tools by content (issue 18).
    identities: super::identity::Identities,
    /// What the exec being handled runs (set at the start of `on_exec`).
    exec_identity: super::identity::ExecIdentity,
    /// Ended sessions held until the kernel's per-cgroup loss counts have been read after
    /// their end (release time in boot ns), so a loss in a short session still marks it.
    ending: std::collections::VecDeque<(u64, Arc<SessionInfo>)>,
    /// How long an ended session waits there; 0: it leaves at once.
    loss_settle_ns: u64,
    /// Names DNS answers gave each container's addresses, for its connects.
    pub(crate) dns: super::dns::DnsNames,
    /// Sessions' terminal transcripts in the making (`tty.rs`).
    transcripts: tty::Transcripts,
}

impl SessionTracker {
    /// `host_pidns`: inode of the host's pid namespace (`/proc/1/ns/pid`), never a container's.
    /// `tick_ns`: ns per /proc clock tick (1e9 / sysconf(_SC_CLK_TCK)).
    pub fn new(lookup: Box<dyn ContainerLookup>, host_pidns: u32, tick_ns: u64) -> Self {
        SessionTracker {
            table: ProcessTable::new(tick_ns),
            containers: Containers::new(host_pidns),
            lookup,
            sessions: FastMap::default(),
            counters: TrackerCounters::default(),
            lost_seen: crate::lru::Lru::new(65_536),
            proc_scanned_ns: 0,
            activity: Default::default(),
            outbound: Default::default(),
            clock: crate::clock::BootClock::now(),
            pending: Vec::new(),
            identities: super::identity::Identities::new(&Default::default()),
            exec_identity: Default::default(),
            ending: Default::default(),
            loss_settle_ns: 0,
            dns: Default::default(),
            transcripts: Default::default(),
        }
    }

    /// The DNS name cache connects take their names from (the agent's counts into its series).
    pub fn set_dns(&mut self, dns: super::dns::DnsNames) {
        self.dns = dns;
    }

    /// Count into the stage's series from now on (the agent calls this before the first event).
    pub fn count_into(&mut self, m: &ProcessMetrics) {
        self.counters = TrackerCounters::registered(m);
        self.outbound.count_into(&m.shared);
        self.transcripts.counters = crate::process::transcript::TranscriptCounters::registered(&m.shared);
    }

    /// The clock that converts the executable's change time (replays pin a fixed one).
    pub fn set_clock(&mut self, clock: crate::clock::BootClock) {
        self.clock = clock;
    }

    /// Choose what is recorded outside exec sessions (defaults: the watch list).
    pub fn set_activity(&mut self, cfg: super::activity::ActivityConfig) {
        self.identities = super::identity::Identities::new(&cfg);
        self.activity = cfg;
    }

    /// What the content identification hashed, could not read, and found renamed.
    pub fn identity_counters(&self) -> &super::identity::IdentityCounters {
        &self.identities.counters
    }

    /// How the container lookup resolved cgroup ids (None: it does not resolve by path).
    pub fn cgroup_counts(&self) -> Option<super::containers::CgroupCounts> {
        self.lookup.cgroup_counts()
    }

    /// Live processes in the table (the size metric).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Open sessions.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Container cgroups currently known.
    pub fn containers(&self) -> usize {
        self.containers.len()
    }

    pub fn counters(&self) -> &TrackerCounters {
        &self.counters
    }

    /// Entries the tracker's bounded caches forgot to make room, by cache.
    pub fn cache_evictions(&self) -> [(&'static str, u64); 6] {
        let [a, b, c] = self.containers.evictions();
        [
            a,
            b,
            c,
            ("cgroup_drop_totals", self.lost_seen.evicted()),
            ("outbound_cookies", self.outbound.cookies_evicted()),
            // a session process's oldest socket routes past MAX_COOKIES_PER_PROCESS
            ("session_cookies", self.table.cookies_evicted()),
        ]
    }

    /// Outbound records (issue 6): what was counted, folded and suppressed.
    pub fn outbound(&self) -> &super::activity::Outbound {
        &self.outbound
    }

    /// Hand out the outbound records whose fold window has passed at `now_ns` (the run loop
    /// calls this on a timer when no events come).
    pub fn tick(&mut self, now_ns: u64) -> Vec<SessionUpdate> {
        let mut out = Vec::new();
        self.outbound.flush(&self.activity, now_ns, false, &mut out);
        self.decide_inits(now_ns, &mut out);
        self.release_ended(now_ns, &mut out);
        self.transcript_tick(now_ns, &mut out);
        out
    }

    pub fn handle(&mut self, ev: &Event) -> Vec<SessionUpdate> {
        let mut out = Vec::new();
        self.handle_into(ev.clone(), &mut out);
        out
    }

    /// [`Self::handle`] for an event the stage owns (what the agent does): an exec's argv,
    /// paths and working directory move into the process's image instead of being copied,
    /// and the updates are appended to `out` (one buffer for a batch of events).
    pub fn handle_into(&mut self, ev: Event, out: &mut Vec<SessionUpdate>) {
        if self.outbound.open() > 0 {
            self.outbound.flush(&self.activity, ev.ts_ns(), false, out);
        }
        let ev = self.canonical(&ev).unwrap_or(ev);
        if !self.ending.is_empty() {
            self.release_ended(ev.ts_ns(), out);
        }
        match ev {
            Event::Exec(mut e) => {
                self.on_exec(&mut e, out);
                self.announce_exec(&e, out);
            }
            Event::Fork(f) => self.on_fork(&f, out),
            Event::Exit(x) => self.on_exit(&x, out),
            Event::Connect(c) => self.on_connect(&c, out),
            Event::ConnectResult(r) => self.on_result(&r),
            Event::UdpSend(u) => self.on_udp_send(&u, out),
            Event::NsJoin(j) => self.on_ns_join(&j, out),
            Event::File(f) => self.on_file(&f, out),
            Event::Sock(so) => self.on_sock(&so, out),
            Event::Dns(d) => self.dns.learn(&d),
            Event::Tty(t) => self.on_tty(&t),
            Event::CgroupMkdir(m) => self.lookup.cgroup_created(&m),
        }
    }

    /// The event with the kernel's keys of /proc-learned processes replaced by the keys the
    /// table holds for them (same pid, same clock tick: [`ProcessTable::resolve`]); None when
    /// no key needs it (the usual case: no copy).
    fn canonical(&mut self, ev: &Event) -> Option<Event> {
        let mut held = |pid: u32, start_ns: u64| {
            let k = ProcessKey { pid, start_ns };
            self.table.resolve(k).filter(|h| *h != k).map(|h| h.start_ns)
        };
        // a process and its parent: both start times, when either needs replacing
        let mut both = |pid, start_ns, ppid, parent_start_ns| {
            let (me, parent) = (held(pid, start_ns), held(ppid, parent_start_ns));
            (me.is_some() || parent.is_some()).then(|| (me.unwrap_or(start_ns), parent.unwrap_or(parent_start_ns)))
        };
        match ev {
            Event::Exec(e) => both(e.pid, e.start_ns, e.ppid, e.parent_start_ns)
                .map(|(start_ns, parent_start_ns)| Event::Exec(ExecEvent { start_ns, parent_start_ns, ..e.clone() })),
            Event::Fork(f) => both(f.pid, f.start_ns, f.ppid, f.parent_start_ns)
                .map(|(start_ns, parent_start_ns)| Event::Fork(ForkEvent { start_ns, parent_start_ns, ..f.clone() })),
            Event::Exit(x) => held(x.pid, x.start_ns).map(|s| Event::Exit(ExitEvent { start_ns: s, ..x.clone() })),
            Event::NsJoin(j) => {
                held(j.pid, j.start_ns).map(|s| Event::NsJoin(NsJoinEvent { start_ns: s, ..j.clone() }))
            }
            Event::File(f) => held(f.pid, f.start_ns).map(|s| Event::File(FileEvent { start_ns: s, ..f.clone() })),
            _ => None,
        }
    }

    /// The agent is stopping: every open session ends now, marked incomplete, with the
    /// processes still running.
    pub fn shutdown(&mut self, now_ns: u64) -> Vec<SessionUpdate> {
        let mut early = Vec::new();
        self.outbound.flush(&self.activity, now_ns, true, &mut early);
        self.release_ended(u64::MAX, &mut early);
        let mut open: HashMap<SessionId, Vec<ProcessRecord>> = HashMap::new();
        for p in self.table.iter() {
            if let Some(sid) = p.session {
                let mut rec = record_of(p, None, None);
                if let Some(img) = rec.images.last_mut() {
                    img.end_ns.get_or_insert(now_ns);
                }
                open.entry(sid).or_default().push(rec);
            }
        }
        let mut ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        ids.sort();
        let mut out = Vec::new();
        for sid in ids {
            if let Some(mut s) = self.sessions.remove(&sid) {
                let i = Arc::make_mut(&mut s.info);
                i.end_ns = Some(now_ns);
                i.incomplete = true;
                let mut procs = open.remove(&sid).unwrap_or_default();
                procs.sort_by_key(|r| r.key);
                self.counters.sessions_ended.inc();
                self.transcript_end(&s.info, &mut out);
                out.push(SessionUpdate::Ended(s.info, procs));
            }
        }
        for p in self.table.iter_mut() {
            p.session = None;
        }
        early.extend(out);
        early
    }

    /// Better metadata for a container (containerd labels, the Kubernetes API) arrived: later
    /// updates of its sessions carry it. Matched by cgroup id, or by container id when the
    /// sender does not know the cgroup; kept for containers not seen yet. A
    /// lesser source never overwrites a better one ([`super::containers::merge_info`]).
    pub fn update_container(&mut self, info: crate::model::ContainerInfo) {
        let cgroups = self.containers.pin(&info);
        for s in self.sessions.values_mut() {
            let c = &s.info.container;
            let same = cgroups.contains(&c.cgroup_id) || (!info.id.is_empty() && c.id == info.id);
            if !same {
                continue;
            }
            let mut merged = crate::model::ContainerInfo::clone(c);
            super::containers::merge_info(&mut merged, &info);
            if merged == **c {
                continue;
            }
            // the container table's (just merged the same way) when it says the same, so the
            // container's sessions keep sharing one
            let table = self.containers.get(c.cgroup_id).map(|st| &st.info).filter(|t| ***t == merged);
            let merged = table.cloned().unwrap_or_else(|| Arc::new(merged));
            Arc::make_mut(&mut s.info).container = merged;
        }
        // and the ended sessions still waiting for the loss counts: a container that lived
        // less than containerd takes to answer (a pod's `timeout 5 tcpdump` that fails at
        // once) has ended its sessions before the labels come, and their roots are built from
        // the info their `Ended` carries. Few wait (LOSS_SETTLE's worth of ended sessions).
        for (_, i) in self.ending.iter_mut() {
            let c = &i.container;
            let same = cgroups.contains(&c.cgroup_id) || (!info.id.is_empty() && c.id == info.id);
            if !same {
                continue;
            }
            let mut merged = crate::model::ContainerInfo::clone(c);
            super::containers::merge_info(&mut merged, &info);
            if merged != **c {
                Arc::make_mut(i).container = Arc::new(merged);
            }
        }
    }

    /// Open a session learned from /proc (its members are added with [`Self::adopt`]).
    pub(crate) fn open_session(&mut self, info: SessionInfo) -> Arc<SessionInfo> {
        self.counters.sessions_started.inc();
        let info = Arc::new(info);
        self.sessions.insert(info.id, Session { info: info.clone(), live: 0 });
        info
    }

    /// Opens a session with `live` members already counted and announces it.
    fn start_session(&mut self, info: SessionInfo, live: u32, out: &mut Vec<SessionUpdate>) -> Arc<SessionInfo> {
        self.counters.sessions_started.inc();
        if info.kind != SessionKind::Watched {
            tracing::debug!(
                kind = info.kind.as_str(), root_pid = info.id.0.pid, container = %info.container.id,
                cgroup = info.container.cgroup_id, incomplete = info.incomplete, from_proc = info.from_proc,
                "session started"
            );
        }
        let info = Arc::new(info);
        self.sessions.insert(info.id, Session { info: info.clone(), live });
        out.push(SessionUpdate::Started(info.clone()));
        info
    }

    /// Put a process that is in no session yet into one.
    pub(crate) fn adopt(&mut self, key: ProcessKey, sid: SessionId) {
        let Some(p) = self.table.get_mut(&key) else { return };
        if p.session.is_some() {
            return;
        }
        p.session = Some(sid);
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.live += 1;
        }
    }

    fn session_container(&self, sid: Option<SessionId>) -> Option<u64> {
        sid.and_then(|s| self.sessions.get(&s)).map(|s| s.info.container.cgroup_id)
    }
}
