//! Start-up scan: the processes already running when podtrail starts, read from `/proc`, so
//! that sessions opened before the agent are still recognised (marked `from_proc` and
//! `incomplete`: their beginning was not seen).
//!
//! In: `/proc/<pid>/{stat,status,cgroup,cmdline,exe,ns/pid,ns/mnt,loginuid}`. Out:
//! [`ScannedProcess`] values, then [`SessionTracker::learn_from_proc`] turns them into table
//! entries and `Started` updates. Dropped: processes that exit while being read (their files
//! vanish) and unreadable fields (left empty). Start times are clock ticks since boot; the
//! table keeps them as ns rounded down to a tick and joins kernel events at tick granularity.
//!
//! Known gap: a background child whose session root exited before the agent started has been
//! re-parented to the container's init, so nothing in /proc ties it to its session.

use std::{collections::HashMap, fs, os::unix::fs::MetadataExt, path::Path};

use crate::capture::event::ProcessKey;

use super::session::SessionTracker;
use super::table::Proc;
use crate::model::{ImageRecord, SessionId, SessionInfo, SessionKind, SessionUpdate};

/// One process as /proc shows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScannedProcess {
    pub pid: u32,
    pub ppid: u32,
    /// Field 22 of /proc/<pid>/stat: clock ticks since boot.
    pub start_ticks: u64,
    pub cgroup_id: u64,
    /// pid in its own pid namespace (last NSpid entry).
    pub nspid: u32,
    pub pidns_ino: u32,
    pub mntns_ino: u32,
    pub uid: u32,
    pub euid: u32,
    pub loginuid: Option<u32>,
    pub argv: Vec<Vec<u8>>,
    pub exe_path: Vec<u8>,
    pub tty: bool,
}

/// ns per clock tick, from sysconf(_SC_CLK_TCK).
pub fn tick_ns() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        10_000_000
    } else {
        1_000_000_000 / hz as u64
    }
}

fn ns_ino(link: &Path) -> u32 {
    // "pid:[4026531836]"
    fs::read_link(link)
        .ok()
        .and_then(|t| {
            let s = t.to_string_lossy().into_owned();
            s.split_once('[')?.1.trim_end_matches(']').parse().ok()
        })
        .unwrap_or(0)
}

/// The inode of the host's pid namespace: `/proc/1/ns/pid`, or our own when pid 1's is not
/// readable (a sandbox that hides pid 1; podtrail runs in the host pid namespace anyway).
pub fn host_pidns() -> u32 {
    match ns_ino(Path::new("/proc/1/ns/pid")) {
        0 => ns_ino(Path::new("/proc/self/ns/pid")),
        ino => ino,
    }
}

/// Fields of /proc/<pid>/stat after the command name, which may itself contain spaces and
/// parentheses.
fn parse_stat(stat: &str) -> Option<(u32, u64, bool)> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // rest starts at field 3 (state): ppid is field 4, tty_nr 7, starttime 22
    let ppid = f.get(1)?.parse().ok()?;
    let tty = f.get(4)?.parse::<i64>().ok()? != 0;
    let start = f.get(19)?.parse().ok()?;
    Some((ppid, start, tty))
}

/// Read one process; None when it is gone or is a kernel thread.
pub fn read_process(proc_root: &Path, pid: u32, cgroup_root: &Path) -> Option<ScannedProcess> {
    let dir = proc_root.join(pid.to_string());
    let stat = fs::read_to_string(dir.join("stat")).ok()?;
    let (ppid, start_ticks, tty) = parse_stat(&stat)?;
    let cmdline = fs::read(dir.join("cmdline")).unwrap_or_default();
    if cmdline.is_empty() {
        return None; // kernel thread (or a zombie)
    }
    let argv = cmdline.strip_suffix(b"\0").unwrap_or(&cmdline).split(|b| *b == 0).map(|a| a.to_vec()).collect();
    let status = fs::read_to_string(dir.join("status")).unwrap_or_default();
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string());
    let nspid = field("NSpid:").and_then(|v| v.split_whitespace().last()?.parse().ok()).unwrap_or(pid);
    let ids = |name: &str| -> Vec<u32> {
        field(name).map(|v| v.split_whitespace().filter_map(|x| x.parse().ok()).collect()).unwrap_or_default()
    };
    let uids = ids("Uid:");
    let cgroup_id = fs::read_to_string(dir.join("cgroup"))
        .ok()
        .and_then(|c| c.lines().find_map(|l| l.strip_prefix("0::").map(str::to_string)))
        .and_then(|p| fs::metadata(cgroup_root.join(p.trim_start_matches('/'))).ok())
        .map(|m| m.ino())
        .unwrap_or(0);
    let loginuid = fs::read_to_string(dir.join("loginuid"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|u| *u != u32::MAX);
    let exe_path =
        fs::read_link(dir.join("exe")).map(|p| p.as_os_str().as_encoded_bytes().to_vec()).unwrap_or_default();
    Some(ScannedProcess {
        pid,
        ppid,
        start_ticks,
        cgroup_id,
        nspid,
        pidns_ino: ns_ino(&dir.join("ns/pid")),
        mntns_ino: ns_ino(&dir.join("ns/mnt")),
        uid: uids.first().copied().unwrap_or(0),
        euid: uids.get(1).copied().unwrap_or(0),
        loginuid,
        argv,
        exe_path,
        tty,
    })
}

/// Every user process under `proc_root` (normally `/proc`).
pub fn scan(proc_root: &Path, cgroup_root: &Path) -> Vec<ScannedProcess> {
    let Ok(rd) = fs::read_dir(proc_root) else { return Vec::new() };
    let mut out: Vec<ScannedProcess> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| read_process(proc_root, pid, cgroup_root))
        .collect();
    out.sort_by_key(|p| (p.start_ticks, p.pid));
    out
}

impl SessionTracker {
    /// Seed the table with processes read from /proc and open the sessions they show.
    pub fn learn_from_proc(&mut self, procs: &[ScannedProcess], now_ns: u64) -> Vec<SessionUpdate> {
        let tick = self.table.tick_ns();
        let key_of = |p: &ScannedProcess| ProcessKey { pid: p.pid, start_ns: p.start_ticks * tick };
        let by_pid: HashMap<u32, &ScannedProcess> = procs.iter().map(|p| (p.pid, p)).collect();
        self.proc_scanned_ns = self.proc_scanned_ns.max(now_ns);
        let mut out = Vec::new();
        for sp in procs {
            let parent = by_pid.get(&sp.ppid).map(|pp| key_of(pp));
            let mut p = Proc::new(key_of(sp), parent);
            // a parent learned from /proc has one image, index 0
            p.parent_exec_index = parent.map(|_| 0);
            p.from_proc = true;
            p.cgroup_id = sp.cgroup_id;
            p.nspid = sp.nspid;
            p.pidns_ino = sp.pidns_ino;
            p.mntns_ino = sp.mntns_ino;
            p.loginuid = sp.loginuid;
            p.images = vec![ImageRecord {
                start_ns: p.key.start_ns,
                argv: sp.argv.as_slice().into(),
                filename: sp.exe_path.as_slice().into(),
                exe_path: sp.exe_path.as_slice().into(),
                tty: sp.tty,
                uid: sp.uid,
                euid: sp.euid,
                ..Default::default()
            }];
            if self.containers.learn(sp.cgroup_id, self.lookup.as_mut(), true) {
                self.containers.note_namespaces(sp.cgroup_id, sp.mntns_ino, sp.pidns_ino);
            }
            self.insert_proc(p, now_ns, &mut out);
        }

        // boundary crossers per container: the init is one of them, the others are roots
        let host = self.containers.host_pidns();
        let mut crossers: HashMap<u64, Vec<&ScannedProcess>> = HashMap::new();
        for sp in procs {
            let parent_cg = by_pid.get(&sp.ppid).map(|pp| pp.cgroup_id);
            if self.containers.get(sp.cgroup_id).is_some() && parent_cg != Some(sp.cgroup_id) {
                crossers.entry(sp.cgroup_id).or_default().push(sp);
            }
        }
        let mut roots: Vec<(&ScannedProcess, SessionKind)> = Vec::new();
        for (cg, list) in crossers {
            let info = match self.containers.get(cg) {
                Some(st) => st.info.clone(),
                None => continue,
            };
            let hint = self.lookup.init_pid(cg, &info);
            let init = hint
                .and_then(|pid| list.iter().find(|p| p.pid == pid))
                .or_else(|| list.iter().find(|p| p.nspid == 1 && p.pidns_ino != host))
                .or_else(|| list.iter().min_by_key(|p| (p.start_ticks, p.pid)))
                .map(|p| key_of(p));
            if let Some(st) = self.containers.get_mut(cg) {
                st.init = init;
                st.entered = true;
                std::sync::Arc::make_mut(&mut st.info).started_ns = init.map(|k| k.start_ns);
            }
            for p in list.iter().filter(|p| Some(key_of(p)) != init) {
                tracing::debug!(
                    pid = p.pid,
                    nspid = p.nspid,
                    ppid = p.ppid,
                    cgroup = cg,
                    ?hint,
                    "exec session from /proc: a process crossed into a container and is not its init"
                );
            }
            roots.extend(list.into_iter().filter(|p| Some(key_of(p)) != init).map(|p| (p, SessionKind::Exec)));
        }
        // node sessions: outside every container cgroup, inside a container's namespaces,
        // and the topmost such process of its tree
        let ns_cg: HashMap<u32, Option<u64>> = procs
            .iter()
            .map(|sp| {
                let cg = self.containers.by_mntns(sp.mntns_ino).or_else(|| self.containers.by_pidns(sp.pidns_ino));
                (sp.pid, cg)
            })
            .collect();
        let ns_container = |sp: &ScannedProcess| ns_cg.get(&sp.pid).copied().flatten();
        for sp in procs {
            if self.containers.get(sp.cgroup_id).is_some() || ns_container(sp).is_none() {
                continue;
            }
            let parent_in = by_pid.get(&sp.ppid).is_some_and(|pp| ns_container(pp) == ns_container(sp));
            if !parent_in {
                roots.push((sp, SessionKind::Node));
            }
        }

        // open the sessions, then give every process the session of its nearest root
        let mut session_of: HashMap<u32, Option<SessionId>> = HashMap::new();
        roots.sort_by_key(|(p, _)| (p.start_ticks, p.pid));
        for (sp, kind) in &roots {
            let key = key_of(sp);
            let cg = match kind {
                SessionKind::Node => ns_container(sp).unwrap_or(0),
                _ => sp.cgroup_id,
            };
            let container = self.containers.get(cg).map(|c| c.info.clone()).unwrap_or_default();
            let info = SessionInfo {
                root_argv: sp.argv.clone(),
                root_tty: sp.tty,
                node_user: if *kind == SessionKind::Node { sp.loginuid } else { None },
                incomplete: true,
                from_proc: true,
                ..SessionInfo::new(SessionId(key), *kind, container, key.start_ns)
            };
            session_of.insert(sp.pid, Some(info.id));
            out.push(SessionUpdate::Started(self.open_session(info)));
        }
        for sp in procs {
            let mut chain = Vec::new();
            let mut cur = sp.pid;
            let found = loop {
                if let Some(s) = session_of.get(&cur) {
                    break *s;
                }
                chain.push(cur);
                match by_pid.get(&cur) {
                    Some(p) if p.ppid != 0 && p.ppid != cur && chain.len() < 4096 => cur = p.ppid,
                    _ => break None,
                }
            };
            for pid in chain {
                session_of.insert(pid, found);
            }
            if let Some(sid) = found {
                self.adopt(key_of(sp), sid);
            }
        }
        out
    }
}
