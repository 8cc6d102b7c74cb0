//! The process stage as a pipeline task: events in, session updates out.
//!
//! In: `Event`s from capture (bounded channel). Out: `SessionUpdate`s to the span stage
//! (bounded channel). Waiting on it is fine: the span stage never waits on anything after
//! it, and the capture reader waiting on us is what makes the kernel count, per cgroup, what
//! the ring could not hold (ARCHITECTURE.md, backpressure). Around the pure [`SessionTracker`]: the /proc scan at start-up, and
//! [`HostContainers`], the real container lookup: cgroup id -> path -> container id at once
//! (kernfs, no blocking I/O worth the name), pod labels and init pid from containerd in a
//! background task whose answers reach the tracker as they come. A [`Control`] channel
//! carries the kernel's per-cgroup drop counts (which mark the open sessions of that cgroup).
//! Pod metadata from the Kubernetes API does not come through here: the pod index puts it on
//! the session updates after this stage (`crate::enrich::kube::SessionFilter`). Closing the event input is the shutdown signal: open sessions end marked
//! incomplete, then the output closes (the control channel closing does not stop anything).

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use tokio::sync::mpsc;

use super::cgroup::CgroupIndex;
use super::containerd::{self, ContainerMeta, ContainerdClient};
use crate::capture::reader::EventBatch;

use super::containers::ContainerLookup;
use super::metrics::ProcessMetrics;
use super::proc_scan;
use super::session::SessionTracker;
use crate::lru::Lru;
use crate::model::{ContainerInfo, SessionUpdate, Text};

/// What the rest of the agent tells the process stage, beside the events.
#[derive(Clone, Debug, PartialEq)]
pub enum Control {
    /// The kernel's cumulative count of ring-buffer records lost for a cgroup (the capture
    /// counters' `dropped_by_cgroup`): the increase marks that cgroup's open sessions.
    EventsLost { cgroup_id: u64, total: u64 },
}

impl SessionTracker {
    /// Apply one control message.
    pub fn control(&mut self, c: Control) {
        match c {
            Control::EventsLost { cgroup_id, total } => self.note_events_lost_total(cgroup_id, total),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ProcessOptions {
    /// Read /proc at start-up for sessions already running.
    pub scan_proc: bool,
    pub proc_root: PathBuf,
    /// cgroup2 mount; found from /proc/self/mountinfo when None.
    pub cgroup_root: Option<PathBuf>,
    /// containerd API socket for pod labels and init pids; None: cgroup ids only.
    pub containerd_socket: Option<PathBuf>,
    pub containerd_namespaces: Vec<String>,
    /// containerd state dirs, for `<state>/io.containerd.runtime.v2.task/<ns>/<id>/init.pid`.
    pub containerd_state_dirs: Vec<PathBuf>,
    /// What is recorded outside exec sessions (issue 6).
    pub activity: super::activity::ActivityConfig,
    /// The per-container cache of names from DNS answers.
    pub dns: super::dns::DnsConfig,
    /// Which pod containers are ephemeral (`kubectl debug`): the pod index, in a cluster.
    /// None: no container is taken for one.
    pub ephemeral: Option<super::containers::EphemeralOracle>,
    /// Set once /proc is read and events are consumed: from then on nothing that starts is
    /// missed (the agent's `/readyz` and its "podtrail is running" line wait for it).
    pub started: Option<crate::metrics::Readiness>,
    /// How terminal bytes become transcript lines (`[transcript]`).
    pub transcript: super::transcript::TranscriptConfig,
}

impl Default for ProcessOptions {
    fn default() -> Self {
        ProcessOptions {
            scan_proc: true,
            proc_root: PathBuf::from("/proc"),
            cgroup_root: None,
            containerd_socket: Some(PathBuf::from(containerd::DEFAULT_SOCKET)),
            containerd_namespaces: containerd::DEFAULT_NAMESPACES.iter().map(|s| s.to_string()).collect(),
            containerd_state_dirs: vec![PathBuf::from("/run/containerd")],
            activity: Default::default(),
            dns: Default::default(),
            ephemeral: None,
            started: None,
            transcript: Default::default(),
        }
    }
}

/// containerd's answers by container id; the least recently used is forgotten when full.
type MetaCache = Arc<Mutex<Lru<String, ContainerMeta>>>;

const META_CACHE_ENTRIES: usize = 65_536;

/// The host's container lookup: cgroup paths first, containerd's labels when they are in.
pub struct HostContainers {
    index: Option<CgroupIndex>,
    meta: MetaCache,
    /// Container ids to ask containerd about (with their cgroup id).
    ask: Option<mpsc::Sender<(u64, ContainerInfo)>>,
    namespaces: Vec<String>,
    state_dirs: Vec<PathBuf>,
    ephemeral: Option<super::containers::EphemeralOracle>,
}

impl HostContainers {
    pub fn new(index: Option<CgroupIndex>, opts: &ProcessOptions) -> Self {
        HostContainers {
            index,
            meta: Arc::new(Mutex::new(Lru::new(META_CACHE_ENTRIES))),
            ask: None,
            namespaces: opts.containerd_namespaces.clone(),
            state_dirs: opts.containerd_state_dirs.clone(),
            ephemeral: opts.ephemeral.clone(),
        }
    }
}

impl ContainerLookup for HostContainers {
    fn container(&mut self, cgroup_id: u64) -> Option<ContainerInfo> {
        let c = self.index.as_mut()?.container(cgroup_id)?;
        let mut info = ContainerInfo {
            id: c.id.as_str().into(),
            cgroup_id,
            pod_uid: c.pod_uid.map(Text::from),
            source: "cgroup",
            ..Default::default()
        };
        let known = self.meta.lock().ok().and_then(|mut m| m.get(c.id.as_str()).cloned());
        match known {
            Some(meta) => meta.apply(&mut info),
            None => {
                if let Some(tx) = &self.ask {
                    let _ = tx.try_send((cgroup_id, info.clone()));
                }
            }
        }
        Some(info)
    }

    fn init_pid(&mut self, _cgroup_id: u64, info: &ContainerInfo) -> Option<u32> {
        if let Some(pid) = self.meta.lock().ok().and_then(|m| m.peek(info.id.as_str()).and_then(|x| x.init_pid)) {
            return Some(pid);
        }
        containerd::init_pid_from_state(&self.state_dirs, &self.namespaces, &info.id)
    }

    fn is_ephemeral(&mut self, _cgroup_id: u64, info: &ContainerInfo) -> Option<bool> {
        match &self.ephemeral {
            Some(oracle) => (oracle.0)(info),
            None => Some(false),
        }
    }
    fn open_executable(&mut self, pid: u32, path: Option<&[u8]>) -> Option<std::fs::File> {
        open_in_process(pid, path)
    }

    fn cgroup_created(&mut self, m: &crate::capture::event::CgroupMkdirEvent) {
        if let Some(index) = self.index.as_mut() {
            index.learn_mkdir(m.id, &m.path, m.truncated);
        }
    }

    fn cgroup_counts(&self) -> Option<super::containers::CgroupCounts> {
        let i = self.index.as_ref()?;
        Some(super::containers::CgroupCounts {
            learned: i.learned(),
            truncated: i.learned_truncated(),
            evicted: i.learned_evicted(),
            walks: i.walks(),
            unresolved: i.unresolved(),
        })
    }
}

/// `/proc/PID/exe`, or `path` resolved inside the process's root (absolute) or cwd (relative)
/// with `openat2(RESOLVE_IN_ROOT)`, so a container's absolute symlinks stay in the container.
/// Regular files only.
pub fn open_in_process(pid: u32, path: Option<&[u8]>) -> Option<std::fs::File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let f = match path {
        None => std::fs::File::open(format!("/proc/{pid}/exe")).ok()?,
        Some(p) => {
            let (base, rel) = match p.strip_prefix(b"/") {
                Some(r) => (format!("/proc/{pid}/root"), r),
                None => (format!("/proc/{pid}/cwd"), p),
            };
            let dir = std::fs::File::open(base).ok()?;
            let rel = std::ffi::CString::new(rel).ok()?;
            // SAFETY: open_how is plain data; zeroed is a valid value.
            let mut how: libc::open_how = unsafe { std::mem::zeroed() };
            how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK) as u64;
            how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
            // SAFETY: valid dirfd, NUL-terminated path, and an open_how of the size given.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    dir.as_raw_fd(),
                    rel.as_ptr(),
                    &how as *const libc::open_how,
                    std::mem::size_of::<libc::open_how>(),
                )
            };
            if fd < 0 {
                return None;
            }
            // SAFETY: openat2 returned a new descriptor that nothing else owns.
            unsafe { std::fs::File::from_raw_fd(fd as i32) }
        }
    };
    f.metadata().ok()?.is_file().then_some(f)
}

/// Answers containerd questions one at a time, off the event loop.
async fn containerd_worker(
    socket: PathBuf,
    namespaces: Vec<String>,
    meta: MetaCache,
    mut ask: mpsc::Receiver<(u64, ContainerInfo)>,
    answers: mpsc::Sender<ContainerInfo>,
    errors: prometheus_client::metrics::counter::Counter,
    evicted: prometheus_client::metrics::counter::Counter,
) {
    let Ok(mut client) = ContainerdClient::new(&socket) else { return };
    while let Some((cgroup_id, mut info)) = ask.recv().await {
        if meta.lock().map(|m| m.contains_key(info.id.as_str())).unwrap_or(false) {
            continue;
        }
        match client.meta(&namespaces, &info.id).await {
            Ok(Some(m)) => {
                m.apply(&mut info);
                info.cgroup_id = cgroup_id;
                if let Ok(mut c) = meta.lock() {
                    if c.insert(m.id.clone(), m).is_some() {
                        evicted.inc();
                    }
                }
                let _ = answers.send(info).await;
            }
            Ok(None) => {}
            Err(e) => {
                errors.inc();
                tracing::debug!(error = %e, "containerd lookup");
            }
        }
    }
}

/// How long an ended session waits for the kernel's loss counts (polled every second).
pub const LOSS_SETTLE: std::time::Duration = std::time::Duration::from_millis(2_500);

/// Runs the process stage until `rx` closes. Sends `Started` for sessions found in /proc
/// first, then updates as events arrive, then the incomplete ends of open sessions.
/// `control` is read alongside the events (see [`Control`]).
pub async fn run(
    mut rx: mpsc::Receiver<EventBatch>,
    tx: mpsc::Sender<crate::model::UpdateBatch>,
    opts: ProcessOptions,
    metrics: ProcessMetrics,
    mut control: mpsc::Receiver<Control>,
) {
    let cgroup_root = opts.cgroup_root.clone().or_else(crate::process::cgroup::cgroup2_mount);
    let index = cgroup_root.clone().map(CgroupIndex::new);
    let mut lookup = HostContainers::new(index, &opts);
    let (answer_tx, mut answers) = mpsc::channel::<ContainerInfo>(256);
    if let Some(socket) = opts.containerd_socket.clone() {
        let (ask_tx, ask_rx) = mpsc::channel(1024);
        lookup.ask = Some(ask_tx);
        let worker = containerd_worker(
            socket,
            opts.containerd_namespaces.clone(),
            lookup.meta.clone(),
            ask_rx,
            answer_tx,
            metrics.containerd_errors.clone(),
            metrics.cache_evictions.get_or_create(&vec![("cache", "containerd_metadata")]).clone(),
        );
        tokio::spawn(worker);
    } else {
        drop(answer_tx);
    }
    let host_pidns = proc_scan::host_pidns();
    let mut tracker = SessionTracker::new(Box::new(lookup), host_pidns, proc_scan::tick_ns());
    tracker.set_activity(opts.activity.clone());
    tracker.set_dns(super::dns::DnsNames::new(&opts.dns, &metrics));
    tracker.set_transcript(opts.transcript.clone());
    tracker.count_into(&metrics);
    // the kernel's loss counts are polled once a second: an ended session waits for the
    // next two polls, so a loss while it ran marks it however short it was
    tracker.set_loss_settle(LOSS_SETTLE);

    if opts.scan_proc {
        let (root, cg) = (opts.proc_root.clone(), cgroup_root.clone().unwrap_or_default());
        let procs = tokio::task::spawn_blocking(move || proc_scan::scan(&root, &cg)).await.unwrap_or_default();
        if send_batches(&tx, tracker.learn_from_proc(&procs, crate::clock::boot_ns_now())).await.is_err() {
            return;
        }
    }
    metrics.observe(&tracker);
    if let Some(r) = &opts.started {
        r.set();
    }

    let mut updates: Vec<SessionUpdate> = Vec::new();
    let mut answers_open = true;
    let mut control_open = true;
    // outbound records leave when their fold window passes, also when no events come
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if send_batches(&tx, tracker.tick(crate::clock::boot_ns_now())).await.is_err() {
                    return;
                }
                metrics.observe(&tracker);
            }
            // The gauges and cache series follow the tracker on the tick, not after every
            // event: observing costs 11 label look-ups, 5% of the agent's CPU in an exec
            // storm (BENCHMARKS.md, issue 15), and a scrape every few seconds cannot tell.
            // (Not the outbound pending gauges: they move with the outbound counters, which a
            // scrape reads with them; `Outbound::open_connects`.)
            // The reader sends what it drained in batches: one wakeup and one receive per batch
            // of up to 256 events, not per event (task switches were 14% of the agent's CPU in
            // the exec storm, issue 15).
            batch = rx.recv() => {
                let Some(batch) = batch else { break };
                for ev in batch {
                    tracker.handle_into(ev, &mut updates);
                }
                if updates.is_empty() {
                    continue; // host processes outside sessions: nothing to send, the buffer stays
                }
                // the pass's updates in one send (the span stage wakes once for them); the
                // next pass's buffer starts at this one's size, so a storm's batch is not
                // grown 4, 8, ... 256 with a copy of every update at each step (issue 15)
                let next = Vec::with_capacity(updates.len().min(crate::model::UPDATES_PER_BATCH));
                if send_batches(&tx, std::mem::replace(&mut updates, next)).await.is_err() {
                    return;
                }
            }
            info = answers.recv(), if answers_open => match info {
                Some(info) => tracker.update_container(info),
                None => answers_open = false,
            },
            c = control.recv(), if control_open => match c {
                Some(c) => tracker.control(c),
                None => control_open = false,
            },
        }
    }
    if send_batches(&tx, tracker.shutdown(crate::clock::boot_ns_now())).await.is_err() {
        return;
    }
    metrics.observe(&tracker);
}

/// Sends `updates` in order, in batches of at most [`crate::model::UPDATES_PER_BATCH`]
/// (waiting for room: the bounded channel is the back-pressure); nothing for none. Err: the
/// next stage is gone.
async fn send_batches(tx: &mpsc::Sender<crate::model::UpdateBatch>, mut updates: Vec<SessionUpdate>) -> Result<(), ()> {
    use crate::model::UPDATES_PER_BATCH;
    while updates.len() > UPDATES_PER_BATCH {
        let rest = updates.split_off(UPDATES_PER_BATCH);
        tx.send(std::mem::replace(&mut updates, rest)).await.map_err(|_| ())?;
    }
    if updates.is_empty() {
        return Ok(());
    }
    tx.send(updates).await.map_err(|_| ())
}
