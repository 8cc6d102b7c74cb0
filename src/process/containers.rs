//! Which cgroups are containers, who each container's init is, and which namespaces belong to
//! which container.
//!
//! In: cgroup ids from events, answered by a [`ContainerLookup`] (the real one reads cgroup
//! paths and containerd, see `process::run`; tests use [`StaticContainers`]). Out: per
//! container cgroup a [`ContainerState`]: identity, init process, mount and pid namespaces
//! (so a `setns` into them can be recognised). A container's state is dropped when its last
//! known process exits.

use std::collections::HashMap;
use std::sync::Arc;

use crate::hashing::FastMap;

use crate::lru::Lru;

use crate::capture::event::{CgroupMkdirEvent, ProcessKey};

use crate::model::{ContainerInfo, Text};

/// Answers "is this cgroup a container, and which". Called once per new cgroup id by the
/// tracker; implementations cache.
pub trait ContainerLookup: Send {
    /// The container whose cgroup this is, or None for the host's cgroups.
    fn container(&mut self, cgroup_id: u64) -> Option<ContainerInfo>;

    /// The runtime's task pid (host pid namespace) of a container, when the runtime says.
    fn init_pid(&mut self, _cgroup_id: u64, _info: &ContainerInfo) -> Option<u32> {
        None
    }

    /// A regular file as process `pid` sees it, to read its content
    /// (`crate::process::identity`): with no path the executable it runs, else `path` in its
    /// root (absolute) or its cwd (relative). None when it cannot be opened (the process is
    /// gone) or is not a regular file; replays have no files.
    fn open_executable(&mut self, _pid: u32, _path: Option<&[u8]>) -> Option<std::fs::File> {
        None
    }

    /// Is this pod container an ephemeral one (`kubectl debug`)? None while whoever knows (the
    /// pod's API object) does not know this container yet; the tracker asks again on its tick.
    /// Without a source that can tell, every container is an ordinary one.
    fn is_ephemeral(&mut self, _cgroup_id: u64, _info: &ContainerInfo) -> Option<bool> {
        Some(false)
    }

    /// The kernel told a new cgroup's id and path at its mkdir (`ebpf/cgroup.bpf.c`), ahead of
    /// any event of a process in it: a lookup that resolves ids by path keeps it, so the id
    /// resolves even when the cgroup is gone by the time its events are read.
    fn cgroup_created(&mut self, _m: &CgroupMkdirEvent) {}

    /// How cgroup ids were resolved so far: paths told at mkdir kept, and the other counts of
    /// [`CgroupCounts`]; None for a lookup that does not resolve by path.
    fn cgroup_counts(&self) -> Option<CgroupCounts> {
        None
    }
}

/// [`ContainerLookup::cgroup_counts`]: the cgroup index's totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupCounts {
    /// Paths told at a cgroup's mkdir and kept.
    pub learned: u64,
    /// Paths told at mkdir cut by the kernel's slot, not kept.
    pub truncated: u64,
    /// Paths told at mkdir forgotten unasked to make room.
    pub evicted: u64,
    /// Walks of the cgroup2 tree (an id neither told nor walked before).
    pub walks: u64,
    /// Ids resolved neither way: their processes are taken for the host's.
    pub unresolved: u64,
}

/// Answers [`ContainerLookup::is_ephemeral`] for the host's lookup: the agent builds it from the
/// pod index (a later stage, so it comes in as a function).
#[derive(Clone)]
pub struct EphemeralOracle(pub std::sync::Arc<IsEphemeral>);

/// The question [`EphemeralOracle`] answers: Some(true) for an ephemeral container, None while
/// the answer is not known yet.
pub type IsEphemeral = dyn Fn(&ContainerInfo) -> Option<bool> + Send + Sync;

impl std::fmt::Debug for EphemeralOracle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EphemeralOracle")
    }
}

/// A fixed map, for tests and replays.
#[derive(Default, Clone, Debug)]
pub struct StaticContainers {
    pub containers: HashMap<u64, ContainerInfo>,
    pub init_pids: HashMap<u64, u32>,
    /// Ephemeral containers by cgroup id (others are ordinary).
    pub ephemeral: std::collections::HashSet<u64>,
}

impl StaticContainers {
    pub fn with(mut self, cgroup_id: u64, id: &str) -> Self {
        let info = ContainerInfo { id: id.into(), cgroup_id, source: "cgroup", ..Default::default() };
        self.containers.insert(cgroup_id, info);
        self
    }
}

impl ContainerLookup for StaticContainers {
    fn container(&mut self, cgroup_id: u64) -> Option<ContainerInfo> {
        self.containers.get(&cgroup_id).cloned()
    }
    fn init_pid(&mut self, cgroup_id: u64, _info: &ContainerInfo) -> Option<u32> {
        self.init_pids.get(&cgroup_id).copied()
    }
    fn is_ephemeral(&mut self, cgroup_id: u64, _info: &ContainerInfo) -> Option<bool> {
        Some(self.ephemeral.contains(&cgroup_id))
    }
}

#[derive(Clone, Debug)]
pub struct ContainerState {
    /// Handed to each session opened in the container (one allocation per container, not per
    /// session); changed copy-on-write when metadata arrives, so open sessions keep theirs.
    pub info: Arc<ContainerInfo>,
    /// The container's first process (runc's init), never a session root.
    pub init: Option<ProcessKey>,
    /// The first process to enter the cgroup from outside has been judged.
    pub entered: bool,
    /// Learned from /proc: its first process may have been missed.
    pub from_proc: bool,
    /// Live processes of the table in this cgroup.
    pub live: u32,
    pub mntns: Option<u32>,
    pub pidns: Option<u32>,
}

/// Container cgroups the tracker has seen, and their namespaces.
/// Entries each bounded cache keeps; when full, the least recently used one is forgotten and
/// counted ([`Containers::evictions`]).
const CACHE_ENTRIES: usize = 65_536;

pub struct Containers {
    /// Keyed by cgroup and namespace inodes (the kernel's numbers): `FastMap`, looked up per
    /// fork, exec and exit.
    pub by_cgroup: FastMap<u64, ContainerState>,
    /// Host cgroups already asked about.
    not_containers: Lru<u64, ()>,
    by_mntns: FastMap<u32, u64>,
    by_pidns: FastMap<u32, u64>,
    host_pidns: u32,
    /// Metadata that arrived for a container id (Kubernetes pod index, containerd) before or
    /// after its cgroup was seen: applied whenever the cgroup is (re)learned. Bounded.
    pinned: Lru<Text, ContainerInfo>,
    /// Live processes of cgroups not learned yet (neither container nor host): a container's
    /// state starts with them when it is learned. Bounded.
    unlearned_live: Lru<u64, u32>,
}

impl Default for Containers {
    fn default() -> Self {
        Containers {
            by_cgroup: FastMap::default(),
            not_containers: Lru::new(CACHE_ENTRIES),
            by_mntns: FastMap::default(),
            by_pidns: FastMap::default(),
            host_pidns: 0,
            pinned: Lru::new(CACHE_ENTRIES),
            unlearned_live: Lru::new(CACHE_ENTRIES),
        }
    }
}

/// Which of two descriptions of a container wins: the Kubernetes API over containerd's labels
/// over the cgroup path. The better source's fields win; the other only fills gaps, so a late
/// containerd answer never undoes what the pod index said.
pub fn merge_info(dst: &mut ContainerInfo, src: &ContainerInfo) {
    fn rank(s: &str) -> u8 {
        match s {
            "kube_api" => 3,
            "containerd_labels" => 2,
            "cgroup" => 1,
            _ => 0,
        }
    }
    if let (Some(a), Some(b)) = (&dst.pod_uid, &src.pod_uid) {
        if a != b {
            // the same container id described in another pod than the one this cgroup lies
            // in: a cgroup made inside a container and named after another's id
            // (`process::cgroup::container_from_path`)
            tracing::warn!(container = %dst.id, pod_uid = %a, other_pod_uid = %b, "metadata naming another pod: not taken");
            return;
        }
    }
    let src_wins = rank(src.source) >= rank(dst.source);
    let take = |d: &mut Option<Text>, s: &Option<Text>| {
        if s.is_some() && (src_wins || d.is_none()) {
            *d = s.clone();
        }
    };
    take(&mut dst.pod_namespace, &src.pod_namespace);
    take(&mut dst.pod_name, &src.pod_name);
    take(&mut dst.pod_uid, &src.pod_uid);
    take(&mut dst.container_name, &src.container_name);
    take(&mut dst.workload_kind, &src.workload_kind);
    take(&mut dst.workload_name, &src.workload_name);
    take(&mut dst.node_name, &src.node_name);
    if dst.id.is_empty() {
        dst.id = src.id.clone();
    }
    if dst.cgroup_id == 0 {
        dst.cgroup_id = src.cgroup_id;
    }
    if src_wins {
        dst.source = src.source;
    }
}

impl Containers {
    pub fn new(host_pidns: u32) -> Self {
        Containers { host_pidns, ..Default::default() }
    }

    pub fn host_pidns(&self) -> u32 {
        self.host_pidns
    }

    /// Entries the bounded caches forgot to make room, by cache.
    pub fn evictions(&self) -> [(&'static str, u64); 3] {
        [
            ("host_cgroups", self.not_containers.evicted()),
            ("container_metadata", self.pinned.evicted()),
            ("unlearned_cgroups", self.unlearned_live.evicted()),
        ]
    }

    /// The state of a container cgroup, asking `lookup` the first time a cgroup is seen.
    /// Returns whether it is a container.
    pub fn learn(&mut self, cgroup_id: u64, lookup: &mut dyn ContainerLookup, from_proc: bool) -> bool {
        if self.by_cgroup.contains_key(&cgroup_id) {
            return true;
        }
        if cgroup_id == 0 || self.not_containers.contains_key(&cgroup_id) {
            return false;
        }
        match lookup.container(cgroup_id) {
            Some(mut info) => {
                info.cgroup_id = cgroup_id;
                if let Some(m) = self.pinned.get(info.id.as_str()) {
                    merge_info(&mut info, m);
                }
                let live = self.unlearned_live.remove(&cgroup_id).unwrap_or(0);
                let st = ContainerState {
                    info: Arc::new(info),
                    init: None,
                    entered: false,
                    from_proc,
                    live,
                    mntns: None,
                    pidns: None,
                };
                self.by_cgroup.insert(cgroup_id, st);
                true
            }
            None => {
                // bounded: host cgroups are few, but a churn of transient units must not grow
                // this forever (one forgotten is asked about again)
                self.not_containers.insert(cgroup_id, ());
                self.unlearned_live.remove(&cgroup_id);
                false
            }
        }
    }

    /// Better metadata for a container (matched by cgroup id when it has one, else by container
    /// id): merged into the known state and kept for when the cgroup is learned again.
    /// Returns the cgroups it applied to.
    pub fn pin(&mut self, info: &ContainerInfo) -> Vec<u64> {
        if !info.id.is_empty() {
            let e = self.pinned.get_or_insert_with(info.id.clone(), || info.clone());
            merge_info(e, info);
        }
        let mut hit = Vec::new();
        for (cg, st) in self.by_cgroup.iter_mut() {
            let same = (info.cgroup_id != 0 && *cg == info.cgroup_id) || (!info.id.is_empty() && st.info.id == info.id);
            if same {
                let mut merged = ContainerInfo::clone(&st.info);
                merge_info(&mut merged, info);
                if merged != *st.info {
                    st.info = Arc::new(merged);
                }
                hit.push(*cg);
            }
        }
        hit
    }

    pub fn get(&self, cgroup_id: u64) -> Option<&ContainerState> {
        self.by_cgroup.get(&cgroup_id)
    }

    pub fn get_mut(&mut self, cgroup_id: u64) -> Option<&mut ContainerState> {
        self.by_cgroup.get_mut(&cgroup_id)
    }

    /// Note the namespaces a container process runs in.
    pub fn note_namespaces(&mut self, cgroup_id: u64, mntns: u32, pidns: u32) {
        let host = self.host_pidns;
        let Some(st) = self.by_cgroup.get_mut(&cgroup_id) else { return };
        if mntns != 0 && st.mntns.is_none() {
            st.mntns = Some(mntns);
            self.by_mntns.entry(mntns).or_insert(cgroup_id);
        }
        if pidns != 0 && pidns != host && st.pidns.is_none() {
            st.pidns = Some(pidns);
            self.by_pidns.entry(pidns).or_insert(cgroup_id);
        }
    }

    /// The container a mount namespace belongs to.
    pub fn by_mntns(&self, ino: u32) -> Option<u64> {
        self.by_mntns.get(&ino).copied()
    }

    /// The container a pid namespace belongs to (never the host's).
    pub fn by_pidns(&self, ino: u32) -> Option<u64> {
        if ino == self.host_pidns {
            return None;
        }
        self.by_pidns.get(&ino).copied()
    }

    pub fn process_added(&mut self, cgroup_id: u64) {
        if let Some(st) = self.by_cgroup.get_mut(&cgroup_id) {
            st.live += 1;
        } else if cgroup_id != 0 && !self.not_containers.contains_key(&cgroup_id) {
            // not learned yet (a child forked straight into the container's cgroup, as
            // runc's init is with CLONE_INTO_CGROUP): counted now, so that the state learned
            // at its exec starts with it and is not forgotten while it lives
            *self.unlearned_live.get_or_insert_with(cgroup_id, || 0) += 1;
        }
    }

    /// A process of the cgroup left; the container is forgotten with its last process.
    pub fn process_removed(&mut self, cgroup_id: u64) {
        let Some(st) = self.by_cgroup.get_mut(&cgroup_id) else {
            if let Some(n) = self.unlearned_live.get_mut(&cgroup_id) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.unlearned_live.remove(&cgroup_id);
                }
            }
            return;
        };
        st.live = st.live.saturating_sub(1);
        if st.live > 0 {
            return;
        }
        if let Some(st) = self.by_cgroup.remove(&cgroup_id) {
            if let Some(m) = st.mntns {
                if self.by_mntns.get(&m) == Some(&cgroup_id) {
                    self.by_mntns.remove(&m);
                }
            }
            if let Some(p) = st.pidns {
                if self.by_pidns.get(&p) == Some(&cgroup_id) {
                    self.by_pidns.remove(&p);
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_cgroup.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_cgroup.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_naming_another_pod_than_the_cgroup_is_not_merged() {
        let path =
            ContainerInfo { id: "c1".into(), pod_uid: Some("u-1".into()), source: "cgroup", ..Default::default() };
        let other = ContainerInfo {
            id: "c1".into(),
            pod_uid: Some("u-9".into()),
            pod_name: Some("victim".into()),
            source: "kube_api",
            ..Default::default()
        };
        let mut merged = path.clone();
        merge_info(&mut merged, &other);
        assert_eq!(merged, path, "another pod's description of the same id: nothing taken");
        let same = ContainerInfo { pod_uid: Some("u-1".into()), pod_name: Some("web-0".into()), ..other };
        merge_info(&mut merged, &same);
        assert_eq!((merged.pod_name.as_deref(), merged.source), (Some("web-0"), "kube_api"));
    }
}
