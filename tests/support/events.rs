//! Capture events for the process stage, built the way the kernel side emits them for real
//! scenarios (runc create and exec, nsenter, a container's own processes), with the fields
//! the session tracker reads; and readers of what the tracker hands on.
//!
//! The cast: the host (cgroup [`HOST`], containerd-shim pid 500), container "web" (cgroup
//! [`C`], init pid 1001) and container "db" (cgroup [`D`]), each with its own pid and mount
//! namespace. A pid's start time is [`st`]`(pid)` unless a test reuses the pid.

use std::net::IpAddr;

use podtrail::capture::event::*;
use podtrail::model::*;
use podtrail::process::containers::StaticContainers;
use podtrail::process::proc_scan::ScannedProcess;
use podtrail::process::SessionTracker;

pub const HOST: u64 = 1; // a host cgroup (containerd-shim, runc, the node's shell)
pub const C: u64 = 100; // container "web"
pub const D: u64 = 200; // container "db"
pub const HOST_PIDNS: u32 = 4026531836;
pub const PIDNS_C: u32 = 4026532001;
pub const PIDNS_D: u32 = 4026532002;
pub const MNT_HOST: u32 = 4026531841;
pub const MNT_C: u32 = 4026532100;
pub const MNT_D: u32 = 4026532200;
pub const TICK: u64 = 10_000_000;

/// (pid namespace, mount namespace) of a cgroup's processes.
pub fn namespaces(cg: u64) -> (u32, u32) {
    match cg {
        C => (PIDNS_C, MNT_C),
        D => (PIDNS_D, MNT_D),
        _ => (HOST_PIDNS, MNT_HOST),
    }
}

/// A tracker that knows containers "web" (C) and "db" (D).
pub fn tracker() -> SessionTracker {
    let lookup = StaticContainers::default().with(C, "web").with(D, "db");
    SessionTracker::new(Box::new(lookup), HOST_PIDNS, TICK)
}

/// start time of a pid in these sequences: unique per pid unless a test reuses one
pub fn st(pid: u32) -> u64 {
    1_000_000_000 + pid as u64 * 1_000
}

pub fn key(pid: u32) -> ProcessKey {
    ProcessKey { pid, start_ns: st(pid) }
}

pub fn fork(ts: u64, pid: u32, ppid: u32, cg: u64) -> Event {
    Event::Fork(ForkEvent {
        ts_ns: ts,
        pid,
        start_ns: st(pid),
        cgroup_id: cg,
        ppid,
        parent_start_ns: st(ppid),
        creator_pid: ppid,
        pidns_ino: HOST_PIDNS,
        nspid: pid,
        uid: 0,
    })
}

/// Who execs: the process, its parent, their cgroups, and the namespaces it runs in.
pub struct X {
    pub pid: u32,
    pub ppid: u32,
    pub cg: u64,
    pub pcg: u64,
    pub nspid: u32,
    pub pidns: u32,
    pub mnt: u32,
    pub argv: &'static [&'static str],
}

impl X {
    /// A process on the host, its parent on the host too.
    pub fn host(pid: u32, ppid: u32, argv: &'static [&'static str]) -> X {
        X { pid, ppid, cg: HOST, pcg: HOST, nspid: pid, pidns: HOST_PIDNS, mnt: MNT_HOST, argv }
    }

    /// A process of container `cg` (pid `nspid` in its namespace) whose parent is on the host:
    /// what runc starts (an init, an exec's first process).
    pub fn entering(pid: u32, ppid: u32, cg: u64, nspid: u32, argv: &'static [&'static str]) -> X {
        let (pidns, mnt) = namespaces(cg);
        X { pid, ppid, cg, pcg: HOST, nspid, pidns, mnt, argv }
    }

    /// The same process, running in the namespaces of container `cg` as pid `nspid` (joined
    /// with setns, its cgroup unchanged).
    pub fn in_namespaces_of(self, cg: u64, nspid: u32) -> X {
        let (pidns, mnt) = namespaces(cg);
        X { nspid, pidns, mnt, ..self }
    }
}

pub fn exec(ts: u64, x: X) -> Event {
    Event::Exec(ExecEvent {
        ts_ns: ts,
        pid: x.pid,
        tid: x.pid,
        start_ns: st(x.pid),
        cgroup_id: x.cg,
        ppid: x.ppid,
        parent_start_ns: st(x.ppid),
        parent_cgroup_id: x.pcg,
        nspid: x.nspid,
        pidns_ino: x.pidns,
        parent_pidns_ino: HOST_PIDNS,
        mntns_ino: x.mnt,
        uid: 0,
        gid: 0,
        euid: 0,
        loginuid: None,
        filename: b"/bin/busybox"[..].into(),
        interp: None,
        exe_path: b"/bin/busybox"[..].into(),
        exe_ino: 1,
        exe_dev: 1,
        exe_nlink: 1,
        exe_ctime_ns: 0,
        argc: x.argv.len() as u32,
        argv: x.argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
        audit_id: None,
        comm: b"exe".to_vec(),
        cwd: Default::default(),
        flags: ExecFlags { parent_other_cgroup: x.cg != x.pcg, ..Default::default() },
    })
}

/// A process in container C, parent in C.
pub fn exec_in(ts: u64, pid: u32, ppid: u32, argv: &'static [&'static str]) -> Event {
    exec(ts, X { pid, ppid, cg: C, pcg: C, nspid: pid - 1000, pidns: PIDNS_C, mnt: MNT_C, argv })
}

/// `fork` by the parent at `ts`, then the child's exec at `ts + 1`.
pub fn spawn(ts: u64, x: X) -> [Event; 2] {
    [fork(ts, x.pid, x.ppid, x.pcg), exec(ts + 1, x)]
}

pub fn exit(ts: u64, pid: u32, cg: u64, code: i32) -> Event {
    Event::Exit(ExitEvent { ts_ns: ts, pid, start_ns: st(pid), cgroup_id: cg, status: ExitStatus::Code(code) })
}

/// A connect by `pid` (cgroup `cg`) to `addr:port`.
pub fn connect_to(ts: u64, pid: u32, cg: u64, cookie: u64, transport: Transport, addr: &str, port: u16) -> Event {
    Event::Connect(ConnectEvent {
        ts_ns: ts,
        pid,
        tid: pid,
        cgroup_id: cg,
        cookie,
        transport,
        addr: addr.parse::<IpAddr>().unwrap(),
        port,
        mapped: false,
    })
}

/// A way out that is not a connect (issue 18) by `pid` in cgroup `cg`: a datagram to
/// `addr:port`, a listen on it, a connection accepted from it (on local port 4444), a raw ICMP
/// socket. Like the kernel's cgroup hooks, no start time.
pub fn sock(ts: u64, pid: u32, cg: u64, op: SockOp, addr: &str, port: u16) -> Event {
    let a: IpAddr = addr.parse().unwrap();
    let (peer, local, transport) = match op {
        SockOp::SendTo => (Some((a, port)), None, Transport::Udp),
        SockOp::Listen => (None, Some((a, port)), Transport::Tcp),
        SockOp::Accept => (Some((a, port)), Some(("10.1.0.5".parse().unwrap(), 4444)), Transport::Tcp),
        SockOp::Create => (None, None, Transport::Icmp),
    };
    Event::Sock(SockEvent {
        ts_ns: ts,
        pid,
        tid: pid,
        start_ns: 0,
        cgroup_id: cg,
        op,
        cookie: 77,
        transport,
        peer,
        local,
        result: 3,
    })
}

/// A connect by `pid` in container C to 10.0.0.9:`port`.
pub fn connect(ts: u64, pid: u32, cookie: u64, transport: Transport, port: u16) -> Event {
    connect_to(ts, pid, C, cookie, transport, "10.0.0.9", port)
}

pub fn result(ts: u64, cookie: u64, error: i32) -> Event {
    Event::ConnectResult(ConnectResultEvent {
        ts_ns: ts,
        pid: 0,
        cookie,
        error,
        phase: ResultPhase::Syscall,
        final_addr: None,
        final_port: None,
    })
}

/// `pid` (container [`C`]) opens the ash history for writing with O_TRUNC: the history wipe
/// the shipped rule watches for, as the file hook reports a successful open (fd 3).
pub fn history_truncate(ts: u64, pid: u32) -> Event {
    Event::File(FileEvent {
        ts_ns: ts,
        pid,
        tid: pid,
        start_ns: st(pid),
        cgroup_id: C,
        op: FileOp::Open,
        write: true,
        flags: 0o1001, // O_WRONLY | O_TRUNC
        path: b"/root/.ash_history".to_vec(),
        path2: None,
        result: 3,
        truncated: false,
        given: None,
        resolved: None,
        io_uring: None,
    })
}

#[allow(clippy::too_many_arguments)]
pub fn ns_join(ts: u64, pid: u32, cg: u64, old_mnt: u32, mnt: u32, old_pidns: u32, pidns: u32, loginuid: u32) -> Event {
    Event::NsJoin(NsJoinEvent {
        ts_ns: ts,
        pid,
        tid: pid,
        start_ns: st(pid),
        cgroup_id: cg,
        nstype: 0,
        pidns_for_children_ino: pidns,
        mntns_ino: mnt,
        netns_ino: 0,
        old_pidns_for_children_ino: old_pidns,
        old_mntns_ino: old_mnt,
        loginuid: Some(loginuid),
        uid: 0,
    })
}

/// What the /proc scan at start-up finds for one process.
pub fn scanned(pid: u32, ppid: u32, cg: u64, nspid: u32, pidns: u32, mnt: u32, argv: &[&str]) -> ScannedProcess {
    ScannedProcess {
        pid,
        ppid,
        start_ticks: st(pid) / TICK,
        cgroup_id: cg,
        nspid,
        pidns_ino: pidns,
        mntns_ino: mnt,
        loginuid: Some(1000),
        argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
        ..Default::default()
    }
}

/// Feeds `events` in order and returns everything the tracker handed on.
pub fn feed(t: &mut SessionTracker, events: impl IntoIterator<Item = Event>) -> Vec<SessionUpdate> {
    events.into_iter().flat_map(|e| t.handle(&e)).collect()
}

/// runc create for container C: runc (pid 500, host) clones the init (1001) with
/// CLONE_PARENT, which execs `sleep 1000` inside C as pid 1 of its namespace.
pub fn start_container_c(t: &mut SessionTracker) -> Vec<SessionUpdate> {
    feed(
        t,
        [
            exec(10, X::host(500, 1, &["containerd-shim"])),
            fork(20, 1001, 500, HOST),
            exec(30, X::entering(1001, 500, C, 1, &["sleep", "1000"])),
        ],
    )
}

/// runc exec: the shim (500) gets a child `pid` that execs argv inside C.
pub fn runc_exec(t: &mut SessionTracker, ts: u64, pid: u32, argv: &'static [&'static str]) -> Vec<SessionUpdate> {
    feed(t, spawn(ts, X::entering(pid, 500, C, pid - 1000, argv)))
}

pub fn started(u: &[SessionUpdate]) -> Vec<&SessionInfo> {
    u.iter().filter_map(|u| if let SessionUpdate::Started(i) = u { Some(&**i) } else { None }).collect()
}

pub fn ended(u: &[SessionUpdate]) -> Vec<&SessionInfo> {
    u.iter().filter_map(|u| if let SessionUpdate::Ended(i, _) = u { Some(&**i) } else { None }).collect()
}

pub fn procs_of(u: &[SessionUpdate], sid: SessionId) -> Vec<&ProcessRecord> {
    u.iter()
        .filter_map(|u| match u {
            SessionUpdate::ProcessEnded(i, r) if i.id == sid => Some(r),
            _ => None,
        })
        .collect()
}
