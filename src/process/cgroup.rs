//! Container identity from cgroups.
//!
//! In: cgroup ids (the inode number of a cgroup2 directory, as `bpf_get_current_cgroup_id()`
//! reports it), cgroup paths (`/proc/<pid>/cgroup`), and each new cgroup's id and path as the
//! kernel tells them at its mkdir (`ebpf/cgroup.bpf.c`, [`CgroupIndex::learn_mkdir`]). Out: the
//! container id a path names, and a cache from cgroup id to path and container. A cgroup id is
//! resolved once: by the path its mkdir told (read from the ring before any event of a process
//! in it, so a container removed before its events are read still resolves), else by walking
//! the cgroup2 mount, and the answer (container or not) is kept until [`CgroupIndex::forget`].
//! The paths told at mkdir wait in a bounded cache ([`LEARNED_PATHS`], least recently used
//! forgotten first, counted) and leave it when their id is resolved. Dropped: ids whose path
//! neither the kernel told (its record lost, or a cgroup made before the agent started) nor the
//! walk found (the cgroup was removed before we got to it): they resolve to no container and
//! are counted in [`CgroupIndex::unresolved`].
//!
//! Path shapes recognised (cgroup v2 paths and the path part of v1 lines alike):
//! - containerd / CRI-O / docker / podman under the systemd driver:
//!   `.../cri-containerd-<64hex>.scope`, `crio-<64hex>.scope`, `docker-<64hex>.scope`,
//!   `libpod-<64hex>.scope` (`crio-conmon-*` is the monitor, not the container);
//! - the cgroupfs driver: `/kubepods/burstable/pod<uid>/<64hex>`, `/docker/<64hex>`,
//!   `.../crio-<64hex>`;
//! - containerd without kubelet (`ctr run`): `/<namespace>/<id>` for a known namespace
//!   (`default`, `k8s.io`, `moby` unless configured otherwise), whatever `<id>` is.

use crate::lru::Lru;
use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// What a cgroup path says about its container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupContainer {
    pub id: String,
    /// "containerd", "cri-o", "docker", "podman", or "containerd:<namespace>" for `ctr`.
    pub runtime: String,
    /// The pod uid from a kubelet `pod<uid>` component, with `_` turned back into `-`.
    pub pod_uid: Option<String>,
}

/// Containerd namespaces whose `/<ns>/<id>` cgroups are containers by default.
pub const DEFAULT_CONTAINERD_NAMESPACES: &[&str] = &["default", "k8s.io", "moby"];

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The container id a single path component names, if any.
fn component_id(c: &str) -> Option<(&str, &'static str)> {
    if let Some(rest) = c.strip_suffix(".scope") {
        for (prefix, runtime) in
            [("cri-containerd-", "containerd"), ("crio-", "cri-o"), ("docker-", "docker"), ("libpod-", "podman")]
        {
            if let Some(id) = rest.strip_prefix(prefix) {
                if is_hex64(id) {
                    return Some((id, runtime));
                }
            }
        }
        return None;
    }
    if let Some(id) = c.strip_prefix("crio-") {
        if is_hex64(id) {
            return Some((id, "cri-o"));
        }
    }
    if is_hex64(c) {
        return Some((c, "containerd"));
    }
    None
}

fn pod_uid(c: &str) -> Option<String> {
    // systemd: kubepods-burstable-pod<uid with _>.slice; cgroupfs: pod<uid>
    let c = c.strip_suffix(".slice").unwrap_or(c);
    let i = c.rfind("pod")?;
    let uid = &c[i + 3..];
    if uid.len() == 36 || uid.len() == 32 {
        let uid = uid.replace('_', "-");
        if uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            return Some(uid);
        }
    }
    None
}

/// The container a cgroup path belongs to.
///
/// Under a kubelet's pod (a `pod<uid>` component) the container is the first component after
/// the shallowest pod component that names one: the runtime makes that directory, and what is
/// below it is the container's own (its sub-cgroups, `.../<id>/init.scope`, and anything a
/// privileged container or one with its cgroup delegated makes there: a directory named after
/// another container's id must not lend the process that container's identity, nor a
/// `pod<uid>` directory another pod's). Outside a pod the deepest component that names a
/// container wins (docker in docker: the inner container is the one the processes run in).
pub fn container_from_path(path: &str, namespaces: &[&str]) -> Option<CgroupContainer> {
    // accept a whole /proc/<pid>/cgroup line ("0::/path", "4:pids:/path") as well
    let path = if path.starts_with('/') { path } else { path.splitn(3, ':').nth(2).unwrap_or(path) };
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let pod = comps.iter().enumerate().find_map(|(i, c)| pod_uid(c).map(|uid| (i, uid)));
    let found = match pod {
        Some((p, _)) => comps.iter().enumerate().skip(p + 1).find_map(|(i, c)| component_id(c).map(|x| (i, x))),
        None => comps.iter().enumerate().rev().find_map(|(i, c)| component_id(c).map(|x| (i, x))),
    };
    if let Some((i, (id, runtime))) = found {
        let runtime = if runtime == "containerd" && i > 0 && comps[0] == "docker" { "docker" } else { runtime };
        return Some(CgroupContainer { id: id.to_string(), runtime: runtime.to_string(), pod_uid: pod.map(|p| p.1) });
    }
    // ctr: /<namespace>/<id>, the id being anything the user chose
    if comps.len() >= 2 && namespaces.contains(&comps[0]) {
        let id = comps[1];
        if !id.is_empty() && !id.contains(".slice") {
            return Some(CgroupContainer {
                id: id.to_string(),
                runtime: format!("containerd:{}", comps[0]),
                pod_uid: None,
            });
        }
    }
    None
}

/// The cgroup2 mount point: `/sys/fs/cgroup` on a pure v2 host, `/sys/fs/cgroup/unified` on
/// a hybrid one. Read from /proc/self/mountinfo.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    cgroup2_mount_from(&info)
}

fn cgroup2_mount_from(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// Paths told at mkdir and not yet asked for, kept at most (the least recently told is
/// forgotten first, [`CgroupIndex::learned_evicted`]; its id is then resolved by a walk, as
/// before). An entry is needed only from its mkdir to the first event of its processes, a few
/// ring drains later: a node creates a few cgroups per container started.
pub const LEARNED_PATHS: usize = 16_384;

/// cgroup id -> path and container, resolved once per id.
pub struct CgroupIndex {
    root: PathBuf,
    namespaces: Vec<String>,
    /// Every cgroup directory seen in the last walk, by inode.
    paths: HashMap<u64, String>,
    /// Paths the kernel told at each cgroup's mkdir, until their id is resolved. Kernel-chosen
    /// keys.
    learned: Lru<u64, String>,
    /// Answers already given.
    answers: HashMap<u64, Option<CgroupContainer>>,
    walks: u64,
    unresolved: u64,
    learned_count: u64,
    learned_truncated: u64,
}

impl CgroupIndex {
    pub fn new(root: PathBuf) -> Self {
        Self::with_namespaces(root, DEFAULT_CONTAINERD_NAMESPACES.iter().map(|s| s.to_string()).collect())
    }

    pub fn with_namespaces(root: PathBuf, namespaces: Vec<String>) -> Self {
        CgroupIndex {
            root,
            namespaces,
            paths: HashMap::new(),
            learned: Lru::new(LEARNED_PATHS),
            answers: HashMap::new(),
            walks: 0,
            unresolved: 0,
            learned_count: 0,
            learned_truncated: 0,
        }
    }

    /// Index for the host's cgroup2 mount, if there is one.
    pub fn host() -> Option<Self> {
        cgroup2_mount().map(Self::new)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How many times the cgroup tree was walked (one per new, unknown cgroup id).
    pub fn walks(&self) -> u64 {
        self.walks
    }

    /// Ids whose directory could not be found.
    pub fn unresolved(&self) -> u64 {
        self.unresolved
    }

    /// Paths the kernel told at a cgroup's mkdir and the index kept.
    pub fn learned(&self) -> u64 {
        self.learned_count
    }

    /// Paths told at mkdir that were cut by the kernel's slot: not kept (the id is resolved
    /// by a walk, as before).
    pub fn learned_truncated(&self) -> u64 {
        self.learned_truncated
    }

    /// Paths told at mkdir forgotten unasked to make room ([`LEARNED_PATHS`]).
    pub fn learned_evicted(&self) -> u64 {
        self.learned.evicted()
    }

    /// Remember the path the kernel told at a cgroup's mkdir (relative to the cgroup2 root), so
    /// the id resolves even once its directory is gone. The path is the creator's choice below
    /// its own cgroup: bytes that are not UTF-8 are replaced (a component naming a container
    /// is ASCII), and a cut path is not kept (its container part may be what was cut). An id
    /// already answered keeps its answer.
    pub fn learn_mkdir(&mut self, cgroup_id: u64, path: &[u8], truncated: bool) -> bool {
        if truncated || path.is_empty() {
            self.learned_truncated += 1;
            return false;
        }
        if self.answers.contains_key(&cgroup_id) {
            return false;
        }
        self.learned.insert(cgroup_id, normalise(&String::from_utf8_lossy(path)));
        self.learned_count += 1;
        true
    }

    /// Remember a path learned elsewhere (/proc/<pid>/cgroup); returns its cgroup id.
    pub fn learn_path(&mut self, path: &str) -> Option<u64> {
        let full = self.root.join(path.trim_start_matches('/'));
        let ino = fs::metadata(&full).ok()?.ino();
        self.paths.insert(ino, normalise(path));
        Some(ino)
    }

    /// The cgroup path (relative to the cgroup2 root, starting with `/`) of an id.
    pub fn path(&mut self, cgroup_id: u64) -> Option<String> {
        if let Some(p) = self.learned.peek(&cgroup_id) {
            return Some(p.clone());
        }
        if !self.paths.contains_key(&cgroup_id) {
            self.walk();
        }
        self.paths.get(&cgroup_id).cloned()
    }

    /// The container a cgroup id belongs to; None for host cgroups. Walks the cgroup tree at
    /// most once per unknown id.
    pub fn container(&mut self, cgroup_id: u64) -> Option<CgroupContainer> {
        if let Some(a) = self.answers.get(&cgroup_id) {
            return a.clone();
        }
        // told at its mkdir: the answer is kept below, the path need not be
        let told = self.learned.remove(&cgroup_id);
        let answer = match told.or_else(|| self.path(cgroup_id)) {
            Some(p) => {
                let ns: Vec<&str> = self.namespaces.iter().map(|s| s.as_str()).collect();
                container_from_path(&p, &ns)
            }
            None => {
                self.unresolved += 1;
                None
            }
        };
        self.answers.insert(cgroup_id, answer.clone());
        answer
    }

    /// Drop what is known about a cgroup (its container is gone).
    pub fn forget(&mut self, cgroup_id: u64) {
        self.answers.remove(&cgroup_id);
        self.paths.remove(&cgroup_id);
    }

    pub fn len(&self) -> usize {
        self.answers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }

    /// Re-read the whole tree: directories only, no files opened. Kernfs is in memory, so this
    /// costs about a millisecond per thousand cgroups.
    fn walk(&mut self) {
        self.walks += 1;
        let mut fresh = HashMap::with_capacity(self.paths.len() + 16);
        let mut stack = vec![(self.root.clone(), String::from("/"))];
        while let Some((dir, rel)) = stack.pop() {
            if let Ok(md) = fs::metadata(&dir) {
                fresh.insert(md.ino(), rel.clone());
            }
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for ent in rd.flatten() {
                if !ent.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    continue;
                }
                let name = ent.file_name();
                // not UTF-8 (a name the cgroup's owner chose): replaced, not skipped, so the
                // directories below it still resolve to the container above it
                let name = name.to_string_lossy();
                let child = if rel == "/" { format!("/{name}") } else { format!("{rel}/{name}") };
                stack.push((ent.path(), child));
            }
        }
        self.paths = fresh;
    }
}

fn normalise(path: &str) -> String {
    let p = path.trim_end_matches('/');
    if p.is_empty() {
        "/".into()
    } else if p.starts_with('/') {
        p.into()
    } else {
        format!("/{p}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1c0a3b2d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
    const NS: &[&str] = DEFAULT_CONTAINERD_NAMESPACES;

    fn id(path: &str) -> Option<String> {
        container_from_path(path, NS).map(|c| c.id)
    }

    #[test]
    fn kubelet_systemd_driver_containerd_and_crio() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b4e1f7a_2c3d_4e5f_8a9b_0c1d2e3f4a5b.slice/cri-containerd-{ID}.scope"
        );
        let c = container_from_path(&p, NS).unwrap();
        assert_eq!(c.id, ID);
        assert_eq!(c.runtime, "containerd");
        assert_eq!(c.pod_uid.as_deref(), Some("0b4e1f7a-2c3d-4e5f-8a9b-0c1d2e3f4a5b"));
        assert_eq!(id(&format!("/kubepods.slice/kubepods-pod1.slice/crio-{ID}.scope")), Some(ID.into()));
        assert_eq!(id(&format!("/kubepods.slice/crio-conmon-{ID}.scope")), None);
    }

    #[test]
    fn kubelet_cgroupfs_driver_docker_and_podman() {
        let p = format!("/kubepods/besteffort/pod0b4e1f7a-2c3d-4e5f-8a9b-0c1d2e3f4a5b/{ID}");
        let c = container_from_path(&p, NS).unwrap();
        assert_eq!((c.id.as_str(), c.pod_uid.as_deref()), (ID, Some("0b4e1f7a-2c3d-4e5f-8a9b-0c1d2e3f4a5b")));
        assert_eq!(container_from_path(&format!("/docker/{ID}"), NS).unwrap().runtime, "docker");
        assert_eq!(id(&format!("/system.slice/docker-{ID}.scope")), Some(ID.into()));
        assert_eq!(id(&format!("/machine.slice/libpod-{ID}.scope")), Some(ID.into()));
        assert_eq!(id(&format!("/kubepods/pod1/crio-{ID}")), Some(ID.into()));
    }

    #[test]
    fn directories_made_inside_a_pod_container_name_neither_another_pod_nor_another_container() {
        // a privileged container makes `pod<victim>/<id>` under its own cgroup: neither the
        // second pod component nor the deeper id (both its own choice) counts
        let victim = "9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d";
        let other = "ab".repeat(32);
        let p = format!(
            "/kubepods.slice/kubepods-pod0b4e1f7a_2c3d_4e5f_8a9b_0c1d2e3f4a5b.slice/cri-containerd-{ID}.scope/pod{victim}/{other}"
        );
        let c = container_from_path(&p, NS).unwrap();
        assert_eq!(c.id, ID);
        assert_eq!(c.pod_uid.as_deref(), Some("0b4e1f7a-2c3d-4e5f-8a9b-0c1d2e3f4a5b"));
        // a directory named after another container's id, with or without a runtime's prefix
        for nested in [other.clone(), format!("cri-containerd-{other}.scope"), format!("docker/{other}")] {
            let p = format!("/kubepods/burstable/pod{victim}/{ID}/{nested}");
            assert_eq!(id(&p), Some(ID.into()), "{p}");
        }
        // outside a pod the deepest id is still the one (docker in docker)
        assert_eq!(id(&format!("/docker/{ID}/docker/{other}")), Some(other.clone()));
        // one pod component, the kubelet's: its uid, also for a sub-cgroup of the container
        let own = format!("/kubepods/pod{victim}/{ID}/init.scope");
        assert_eq!(container_from_path(&own, NS).unwrap().pod_uid.as_deref(), Some(victim));
    }

    #[test]
    fn ctr_namespace_paths_and_v1_lines() {
        let c = container_from_path("/default/pt-test-1", NS).unwrap();
        assert_eq!((c.id.as_str(), c.runtime.as_str()), ("pt-test-1", "containerd:default"));
        assert_eq!(id("0::/default/web"), Some("web".into()));
        assert_eq!(id(&format!("4:pids:/kubepods/burstable/podx/{ID}")), Some(ID.into()));
        assert_eq!(id("12:name=systemd:/default/abc"), Some("abc".into()));
        assert_eq!(id(&format!("/kubepods/pod1/{ID}/init.scope")), Some(ID.into()));
    }

    #[test]
    fn host_cgroups_are_not_containers() {
        for p in [
            "/",
            "/init.scope",
            "/system.slice/cron.service",
            "/user.slice/user-1000.slice/session-3.scope",
            "/default",
            "0::/",
        ] {
            assert_eq!(id(p), None, "{p}");
        }
        assert_eq!(container_from_path("/other/x", NS), None);
        assert_eq!(container_from_path("/other/x", &["other"]).unwrap().id, "x");
    }

    #[test]
    fn cgroup2_mount_hybrid_and_pure() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw\n41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount_from(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let pure = "30 23 0:27 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup2_mount_from(pure), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_mount_from("garbage"), None);
    }

    #[test]
    fn index_resolves_ids_by_walking_a_tree_once() {
        let dir = tempfile::tempdir().unwrap();
        let cdir = dir.path().join("default/pt-1");
        fs::create_dir_all(&cdir).unwrap();
        fs::create_dir_all(dir.path().join("system.slice/x.service")).unwrap();
        let ino = fs::metadata(&cdir).unwrap().ino();
        let host = fs::metadata(dir.path().join("system.slice/x.service")).unwrap().ino();
        let mut idx = CgroupIndex::new(dir.path().to_path_buf());
        assert_eq!(idx.container(ino).unwrap().id, "pt-1");
        assert_eq!(idx.path(ino).as_deref(), Some("/default/pt-1"));
        assert_eq!(idx.container(host), None);
        assert_eq!(idx.walks(), 1, "one walk indexes every directory");
        assert_eq!(idx.container(ino).unwrap().id, "pt-1");
        assert_eq!(idx.container(u64::MAX), None);
        assert_eq!(idx.unresolved(), 1);
        assert_eq!(idx.learn_path("/default/pt-1"), Some(ino));
    }

    #[test]
    fn a_path_told_at_mkdir_resolves_a_cgroup_that_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = CgroupIndex::new(dir.path().to_path_buf());
        let p = format!("/kubepods/besteffort/pod0b4e1f7a-2c3d-4e5f-8a9b-0c1d2e3f4a5b/{ID}");
        assert!(idx.learn_mkdir(77, p.as_bytes(), false));
        assert_eq!(idx.path(77).as_deref(), Some(p.as_str()));
        let c = idx.container(77).unwrap();
        assert_eq!((c.id.as_str(), c.pod_uid.as_deref()), (ID, Some("0b4e1f7a-2c3d-4e5f-8a9b-0c1d2e3f4a5b")));
        assert_eq!((idx.walks(), idx.unresolved(), idx.learned()), (0, 0, 1), "no directory needed");
        // answered once: the told path left the cache, the answer stays
        assert_eq!(idx.learned.len(), 0);
        assert_eq!(idx.container(77).unwrap().id, ID);
        assert!(!idx.learn_mkdir(77, b"/elsewhere", false), "an answered id keeps its answer");
        // a cut path is not kept; odd bytes are replaced, the container above them still found
        assert!(!idx.learn_mkdir(78, p.as_bytes(), true));
        assert_eq!(idx.learned_truncated(), 1);
        let odd = [b"/default/pt-2".as_slice(), b"/\xff\xfe/x".as_slice()].concat();
        assert!(idx.learn_mkdir(79, &odd, false));
        assert_eq!(idx.container(79).unwrap().id, "pt-2");
        assert_eq!(idx.container(78), None, "not told, no directory: unresolved");
        assert_eq!(idx.unresolved(), 1);
    }

    #[test]
    fn paths_told_at_mkdir_are_bounded_and_evictions_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = CgroupIndex::new(dir.path().to_path_buf());
        for i in 0..(LEARNED_PATHS as u64 + 10) {
            idx.learn_mkdir(1000 + i, format!("/default/c{i}").as_bytes(), false);
        }
        assert_eq!(idx.learned.len(), LEARNED_PATHS);
        assert_eq!(idx.learned_evicted(), 10);
        // the oldest were forgotten (a walk finds nothing), the newest still resolve
        assert_eq!(idx.container(1000), None);
        assert_eq!(idx.container(1000 + LEARNED_PATHS as u64 + 9).unwrap().id, format!("c{}", LEARNED_PATHS + 9));
    }
}
