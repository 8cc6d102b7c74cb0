//! The capture stage against the real kernel: load the programs, run real processes and
//! connections, and expect exactly their events. Needs root; fails (never skips) without it.

mod support;

use std::{
    ffi::OsStr,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::unix::{ffi::OsStrExt, fs::PermissionsExt},
    process::Command,
    time::Duration,
};

use podtrail::capture::{
    abi,
    event::{Event, ExitStatus, ResultPhase, Transport},
    loader::{self, CaptureOptions},
};
use support::kernel::{capture_while, run, Captured};

/// The test process makes some of the connections itself, so it must not be filtered out.
fn opts() -> CaptureOptions {
    CaptureOptions { ignore_self: false, ..Default::default() }
}

#[test]
fn exec_argv_is_exact_with_spaces_non_utf8_and_parent() {
    let (pid, cap) = capture_while(opts(), || {
        run(Command::new("/bin/true").arg("plain").arg("with space").arg(OsStr::from_bytes(b"bad\xff\xfe")).arg("")).0
    });
    let e = cap.execs().find(|e| e.pid == pid).expect("exec event for /bin/true");
    assert_eq!(
        e.argv,
        vec![b"/bin/true".to_vec(), b"plain".to_vec(), b"with space".to_vec(), b"bad\xff\xfe".to_vec(), b"".to_vec()]
    );
    assert_eq!(e.argc, 5);
    assert!(!e.flags.argv_truncated);
    assert_eq!(e.ppid, std::process::id(), "real_parent is the test process");
    assert_eq!(e.uid, 0);
    assert_eq!(&e.filename[..], b"/bin/true");
    assert!(e.exe_path.ends_with(b"/true"), "exe path {:?}", String::from_utf8_lossy(&e.exe_path));
    // the JSON form escapes the bad bytes by the one rule
    let json = serde_json::to_string(&Event::Exec(e.clone())).unwrap();
    assert!(json.contains(r#""bad\\xff\\xfe""#), "{json}");
}

#[test]
fn argv_longer_than_the_cap_is_cut_and_flagged() {
    let long: Vec<String> = (0..600).map(|i| format!("arg{i:05}")).collect(); // 600 * 9 bytes > 4096
    let args = long.clone();
    let (pid, cap) = capture_while(opts(), move || run(Command::new("/bin/true").args(&args)).0);
    let e = cap.execs().find(|e| e.pid == pid).expect("exec event");
    assert!(e.flags.argv_truncated);
    assert_eq!(e.argc, 601);
    let kept: usize = e.argv.iter().map(|a| a.len() + 1).sum();
    assert!((abi::ARGV_MAX - 1..=abi::ARGV_MAX + 1).contains(&kept), "kept {kept} bytes");
    assert_eq!(e.argv[1], b"arg00000");
    for (i, a) in e.argv.iter().skip(1).take(e.argv.len() - 2).enumerate() {
        assert_eq!(a, long[i].as_bytes());
    }
}

#[test]
fn exec_storm_loses_no_argv() {
    const N: usize = 3000;
    let (pids, cap) = capture_while(opts(), || {
        let mut pids = Vec::with_capacity(N);
        for i in 0..N {
            let (pid, _) = run(Command::new("/bin/true").arg(format!("storm-{i}")));
            pids.push((pid, i));
        }
        pids
    });
    let mut seen = 0;
    for (pid, i) in pids {
        let e = cap.execs().find(|e| e.pid == pid && e.argv.get(1).map(|a| a.starts_with(b"storm-")) == Some(true));
        let e = e.unwrap_or_else(|| panic!("no exec for storm process {i}"));
        assert_eq!(e.argv[1], format!("storm-{i}").as_bytes());
        seen += 1;
    }
    assert_eq!(seen, N);
    assert_eq!(cap.kernel.total_dropped(), 0, "kernel drops: {:?}", cap.kernel.dropped);
}

#[test]
fn script_busybox_applet_and_memfd_are_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("hello.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let s2 = script.clone();
    let ((p_script, p_applet, p_memfd), cap) = capture_while(opts(), move || {
        let p_script = run(Command::new(&s2).arg("x")).0;
        // busybox runs applets by re-executing itself: argv[0] names the applet
        let p_applet = run(Command::new("/bin/busybox").arg("sh").arg("-c").arg("wget --help 2>/dev/null; true")).0;
        let p_memfd = run(Command::new("python3").arg("-c").arg(MEMFD_EXEC)).0;
        (p_script, p_applet, p_memfd)
    });
    let e = cap.execs().find(|e| e.pid == p_script).expect("script exec");
    assert_eq!(&e.filename[..], script.as_os_str().as_bytes());
    assert_eq!(e.interp.as_deref(), Some(&b"/bin/sh"[..]));
    assert_eq!(e.argv[0], b"/bin/sh");
    assert_eq!(e.argv[1], script.as_os_str().as_bytes());

    let e = cap.execs().find(|e| e.ppid == p_applet).expect("the applet's exec, a child of busybox sh");
    assert_eq!(&e.filename[..], b"/proc/self/exe");
    assert_eq!(e.argv[0], b"wget");
    assert!(e.exe_path.ends_with(b"busybox"), "{}", String::from_utf8_lossy(&e.exe_path));

    let e = cap.execs().filter(|e| e.pid == p_memfd).last().expect("memfd exec");
    assert!(e.flags.fileless, "memfd exec must be flagged fileless: {e:?}");
    assert!(
        e.filename.starts_with(b"/dev/fd/") || e.filename.starts_with(b"/proc/self/fd/"),
        "{:?}",
        String::from_utf8_lossy(&e.filename)
    );
    assert!(String::from_utf8_lossy(&e.exe_path).contains("memfd:"), "{}", String::from_utf8_lossy(&e.exe_path));
}

/// Copies /bin/true into a memfd and execs it through /proc/self/fd.
const MEMFD_EXEC: &str = r#"
import os
fd = os.memfd_create("payload", 0)
os.write(fd, open("/bin/true", "rb").read())
os.execv("/proc/self/fd/%d" % fd, ["payload"])
"#;

#[test]
fn fork_exit_code_and_signal() {
    let ((p_code, p_sig), cap) = capture_while(opts(), || {
        let (p_code, st) = run(Command::new("/bin/sh").arg("-c").arg("exit 3"));
        assert_eq!(st.code(), Some(3));
        let (p_sig, _) = run(Command::new("/bin/sh").arg("-c").arg("kill -KILL $$"));
        (p_code, p_sig)
    });
    let exit = |pid| {
        cap.events.iter().find_map(|e| match e {
            Event::Exit(x) if x.pid == pid => Some(x.status),
            _ => None,
        })
    };
    assert_eq!(exit(p_code), Some(ExitStatus::Code(3)));
    assert_eq!(exit(p_sig), Some(ExitStatus::Signal { signal: 9, core_dumped: false }));
    // the fork of each child was reported with us as its parent
    for pid in [p_code, p_sig] {
        let f = cap.events.iter().find_map(|e| match e {
            Event::Fork(f) if f.pid == pid => Some(f.clone()),
            _ => None,
        });
        let f = f.unwrap_or_else(|| panic!("fork of {pid}"));
        assert_eq!(f.ppid, std::process::id());
        let exec = cap.execs().find(|e| e.pid == pid).unwrap();
        assert_eq!(exec.start_ns, f.start_ns, "fork and exec agree on the process identity");
    }
}

/// `podtrail capture --kinds exec` (issue 15): the kinds left out are not written at all, so a
/// fork and exit storm costs the reader nothing; the kinds asked for are whole.
#[test]
fn kinds_left_out_are_never_written() {
    let kinds = loader::kind_mask(["exec", "exit"]).unwrap();
    let (pids, cap) = capture_while(CaptureOptions { kinds, ..opts() }, || {
        (0..20).map(|i| run(Command::new("/bin/true").arg(format!("kinds-{i}"))).0).collect::<Vec<_>>()
    });
    for pid in &pids {
        assert!(cap.execs().any(|e| e.pid == *pid), "exec of {pid}");
        assert!(cap.events.iter().any(|e| matches!(e, Event::Exit(x) if x.pid == *pid)), "exit of {pid}");
    }
    let other: Vec<&str> = cap.events.iter().map(Event::kind).filter(|k| !["exec", "exit"].contains(k)).collect();
    assert!(other.is_empty(), "kinds not asked for reached user space: {other:?}");
    let sent = |k: &str| cap.kernel.sent.iter().find(|(n, _)| *n == k).map(|(_, v)| *v).unwrap();
    assert_eq!(sent("fork"), 0, "{:?}", cap.kernel);
    assert!(sent("exec") >= 20 && sent("exit") >= 20, "{:?}", cap.kernel);
    assert_eq!(cap.kernel.total_dropped(), 0, "left out is not lost: {:?}", cap.kernel);
    assert_eq!(loader::kind_mask(["exec", "forks"]), Err("forks"));
}

fn connect_outcome(cap: &Captured, port: u16, transport: Transport) -> (u64, Vec<(ResultPhase, i32)>) {
    let me = std::process::id();
    let c = cap
        .events
        .iter()
        .find_map(|e| match e {
            Event::Connect(c) if c.pid == me && c.port == port && c.transport == transport => Some(c.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no connect to port {port}"));
    let results = cap
        .events
        .iter()
        .filter_map(|e| match e {
            Event::ConnectResult(r) if r.cookie == c.cookie => Some((r.phase, r.error)),
            _ => None,
        })
        .collect();
    (c.cookie, results)
}

#[test]
fn tcp_accepted_refused_ipv6_and_udp() {
    let ((p_ok, p_refused, p_v6, p_udp, p_udp_silent), cap) = capture_while(opts(), || {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p_ok = l.local_addr().unwrap().port();
        let _s = TcpStream::connect(("127.0.0.1", p_ok)).unwrap();
        // a port nothing listens on: bind then drop to learn a free one
        let p_refused = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        assert!(TcpStream::connect(("127.0.0.1", p_refused)).is_err());
        let l6 = TcpListener::bind("[::1]:0").unwrap();
        let p_v6 = l6.local_addr().unwrap().port();
        let _s6 = TcpStream::connect(SocketAddr::from((Ipv6Addr::LOCALHOST, p_v6))).unwrap();
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p_udp = rx.local_addr().unwrap().port();
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        u.connect(("127.0.0.1", p_udp)).unwrap();
        u.send(b"ping").unwrap();
        let mut buf = [0u8; 8];
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        assert_eq!(rx.recv(&mut buf).unwrap(), 4);
        // a UDP connect that never sends (what getaddrinfo does to sort addresses)
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p_udp_silent = 9; // discard
        silent.connect(("127.0.0.1", p_udp_silent)).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        (p_ok, p_refused, p_v6, p_udp, p_udp_silent)
    });
    let (_, r) = connect_outcome(&cap, p_ok, Transport::Tcp);
    assert!(r.contains(&(ResultPhase::Syscall, 0)), "{r:?}");
    assert!(r.contains(&(ResultPhase::TcpState, 0)), "{r:?}");
    let (_, r) = connect_outcome(&cap, p_refused, Transport::Tcp);
    assert!(r.contains(&(ResultPhase::Syscall, -111)), "ECONNREFUSED from connect(2): {r:?}");
    assert!(r.contains(&(ResultPhase::TcpState, -111)), "ECONNREFUSED from the handshake: {r:?}");
    let me = std::process::id();
    let v6 = cap.events.iter().find_map(|e| match e {
        Event::Connect(c) if c.pid == me && c.port == p_v6 => Some(c.clone()),
        _ => None,
    });
    assert_eq!(v6.unwrap().addr, std::net::IpAddr::V6(Ipv6Addr::LOCALHOST));
    let (cookie, r) = connect_outcome(&cap, p_udp, Transport::Udp);
    assert!(r.contains(&(ResultPhase::Syscall, 0)), "{r:?}");
    let sent = cap.events.iter().any(|e| matches!(e, Event::UdpSend(u) if u.cookie == cookie && u.bytes >= 4));
    assert!(sent, "the UDP socket's first datagram is reported");
    let (cookie, _) = connect_outcome(&cap, p_udp_silent, Transport::Udp);
    assert!(
        !cap.events.iter().any(|e| matches!(e, Event::UdpSend(u) if u.cookie == cookie)),
        "a silent UDP connect sends nothing"
    );
    let c = cap.events.iter().find_map(|e| match e {
        Event::Connect(c) if c.port == p_ok => Some(c.addr),
        _ => None,
    });
    assert_eq!(c, Some(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST)));
}

#[test]
fn nonblocking_connect_gets_its_final_outcome_from_the_handshake() {
    let (port, cap) = capture_while(opts(), || {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let script = format!(
            "import socket,select\ns=socket.socket()\ns.setblocking(False)\ntry:\n s.connect(('127.0.0.1',{port}))\nexcept BlockingIOError:\n pass\nselect.select([],[s],[],2)\n"
        );
        let st = Command::new("python3").arg("-c").arg(script).status().unwrap();
        assert!(st.success());
        drop(l);
        port
    });
    let c = cap
        .events
        .iter()
        .find_map(|e| match e {
            Event::Connect(c) if c.port == port && c.pid != std::process::id() => Some(c.clone()),
            _ => None,
        })
        .expect("python's connect");
    let phases: Vec<_> = cap
        .events
        .iter()
        .filter_map(|e| match e {
            Event::ConnectResult(r) if r.cookie == c.cookie => Some((r.phase, r.error, r.final_port)),
            _ => None,
        })
        .collect();
    assert!(phases.contains(&(ResultPhase::Syscall, -115, None)), "EINPROGRESS: {phases:?}");
    assert!(phases.contains(&(ResultPhase::TcpState, 0, Some(port))), "handshake done: {phases:?}");
}

#[test]
fn ns_join_is_reported_with_the_target_namespaces() {
    // a process in new pid and mount namespaces stands in for a container here; the
    // container tests do the same against a real runc container
    let (ok, cap) = capture_while(opts(), || {
        let mut target = Command::new("unshare").args(["--pid", "--mount", "--fork", "sleep", "5"]).spawn().unwrap();
        // the sleep is unshare's child: wait until it exists (a loaded machine forks late)
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let sleeper: u32 = loop {
            let children =
                std::fs::read_to_string(format!("/proc/{}/task/{}/children", target.id(), target.id())).unwrap();
            if let Some(pid) = children.split_whitespace().next() {
                break pid.parse().unwrap();
            }
            assert!(std::time::Instant::now() < deadline, "unshare never forked its sleep");
            std::thread::sleep(Duration::from_millis(50));
        };
        // and has entered its namespaces (unshare forks after unsharing)
        std::thread::sleep(Duration::from_millis(100));
        let st = Command::new("nsenter").args(["-t", &sleeper.to_string(), "-p", "-m", "true"]).status().unwrap();
        let _ = target.kill();
        let _ = target.wait();
        let ns = std::fs::read_link(format!("/proc/{sleeper}/ns/pid")).ok();
        (st.success(), ns)
    });
    assert!(ok.0, "nsenter ran");
    let target_ino: u32 =
        ok.1.expect("target pid ns")
            .to_string_lossy()
            .trim_start_matches("pid:[")
            .trim_end_matches(']')
            .parse()
            .unwrap();
    let joins: Vec<_> = cap
        .events
        .iter()
        .filter_map(|e| match e {
            Event::NsJoin(j) => Some(j.clone()),
            _ => None,
        })
        .collect();
    assert!(!joins.is_empty(), "no ns_join events");
    let into_target =
        joins.iter().any(|j| j.pidns_for_children_ino == target_ino && j.old_pidns_for_children_ino != target_ino);
    assert!(into_target, "a join moved the children's pid namespace into {target_ino}: {joins:?}");
}

/// A cgroup2 cgroup's mkdir is told with its id and path before any event of a process in it,
/// so a container removed before its events are read still resolves (ebpf/cgroup.bpf.c): here
/// a pod-shaped cgroup runs /bin/true and is removed before the events are looked at.
#[test]
fn cgroup_mkdir_tells_id_and_path_ahead_of_its_processes() {
    use podtrail::process::cgroup::CgroupIndex;
    use std::os::unix::{fs::MetadataExt, process::CommandExt};
    let root = loader::find_cgroup2().expect("a cgroup2 mount");
    const CID: &str = "22c0ffee22c0ffee22c0ffee22c0ffee22c0ffee22c0ffee22c0ffee22c0ffee";
    let top = format!("/pt-cg22-{}", std::process::id());
    let rel = format!("{top}/pod0b4e1f7a-2c3d-4e5f-8a9b-0c1d2e3f4a5b/{CID}");
    let (dir, top_dir) = (root.join(&rel[1..]), root.join(&top[1..]));
    let (d, t) = (dir.clone(), top_dir.clone());
    let ((ino, pid), cap) = capture_while(opts(), move || {
        std::fs::create_dir_all(&d).expect("mkdir under the cgroup2 mount");
        let ino = std::fs::metadata(&d).unwrap().ino();
        let procs = d.join("cgroup.procs");
        let mut cmd = Command::new("/bin/true");
        cmd.arg("in-cg22");
        // SAFETY: only a write(2) to a file between fork and exec
        unsafe {
            cmd.pre_exec(move || std::fs::write(&procs, b"0"));
        }
        let (pid, st) = run(&mut cmd);
        assert!(st.success());
        // the container is gone before anyone looks its id up
        std::fs::remove_dir(&d).unwrap();
        std::fs::remove_dir(d.parent().unwrap()).unwrap();
        std::fs::remove_dir(&t).unwrap();
        (ino, pid)
    });
    assert!(!dir.exists() && !top_dir.exists());
    let mkdirs: Vec<(usize, &podtrail::capture::event::CgroupMkdirEvent)> = cap
        .events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match e {
            Event::CgroupMkdir(m) if m.path.starts_with(top.as_bytes()) => Some((i, m)),
            _ => None,
        })
        .collect();
    let paths: Vec<&[u8]> = mkdirs.iter().map(|(_, m)| m.path.as_slice()).collect();
    assert_eq!(
        paths.len(),
        3,
        "one record per level: {:?}",
        paths.iter().map(|p| String::from_utf8_lossy(p)).collect::<Vec<_>>()
    );
    let (at, m) = mkdirs.last().unwrap();
    assert_eq!((m.id, m.level, m.path.as_slice(), m.truncated), (ino, 3, rel.as_bytes(), false));
    assert_eq!(m.pid, std::process::id(), "the creator's header");
    let exec_at = cap
        .events
        .iter()
        .position(|e| matches!(e, Event::Exec(x) if x.pid == pid))
        .expect("exec of the process in the new cgroup");
    let Event::Exec(x) = &cap.events[exec_at] else { unreachable!() };
    assert_eq!(x.cgroup_id, ino, "the exec carries the new cgroup's id");
    assert!(*at < exec_at, "the mkdir is read before the exec of a process in it");
    // the process stage's index resolves the id with the directory gone, without a walk
    let mut idx = CgroupIndex::new(root.clone());
    for (_, m) in &mkdirs {
        assert!(idx.learn_mkdir(m.id, &m.path, m.truncated));
    }
    let c = idx.container(x.cgroup_id).expect("the container of a removed cgroup");
    assert_eq!((c.id.as_str(), c.pod_uid.as_deref()), (CID, Some("0b4e1f7a-2c3d-4e5f-8a9b-0c1d2e3f4a5b")));
    assert_eq!((idx.walks(), idx.unresolved()), (0, 0));
    // without the told path, the same id is unresolved: what happened before
    assert_eq!(CgroupIndex::new(root).container(x.cgroup_id), None);
    let sent = |k: &str| cap.kernel.sent.iter().find(|(n, _)| *n == k).map(|(_, v)| *v).unwrap();
    assert!(sent("cgroup_mkdir") >= 3, "{:?}", cap.kernel);
}
