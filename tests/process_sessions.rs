//! Recorded event sequences -> exec sessions. Pure: no kernel, no containers. Each sequence is
//! what the kernel side emits for a real scenario (runc exec, nsenter, runc create), written
//! out by hand with the fields the tracker reads.

mod support;

use std::net::{IpAddr, Ipv4Addr};

use podtrail::capture::event::*;
use podtrail::model::*;
use podtrail::process::containers::StaticContainers;
use podtrail::process::SessionTracker;
use support::events::*;

#[test]
fn container_init_and_its_children_open_no_session() {
    let mut t = tracker();
    let mut out = start_container_c(&mut t);
    out.extend(t.handle(&fork(40, 1002, 1001, C)));
    out.extend(t.handle(&exec_in(41, 1002, 1001, &["sh", "-c", "loop"])));
    out.extend(t.handle(&exit(50, 1002, C, 0)));
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(t.sessions(), 0);
}

#[test]
fn exec_shell_with_background_child_and_connect_is_one_session() {
    let mut t = tracker();
    let mut out = start_container_c(&mut t);
    out.extend(runc_exec(&mut t, 100, 1010, &["sh", "-c", "sleep 5 & wget -q http://10.0.0.9:8080/; true"]));
    // sh forks: sleep (background), wget (connects), true is a builtin
    out.extend(t.handle(&fork(110, 1011, 1010, C)));
    out.extend(t.handle(&exec_in(111, 1011, 1010, &["sleep", "5"])));
    out.extend(t.handle(&fork(120, 1012, 1010, C)));
    out.extend(t.handle(&exec_in(121, 1012, 1010, &["wget", "-q", "http://10.0.0.9:8080/"])));
    out.extend(t.handle(&connect(122, 1012, 77, Transport::Tcp, 8080)));
    out.extend(t.handle(&result(123, 77, 0)));
    out.extend(t.handle(&exit(130, 1012, C, 0)));
    out.extend(t.handle(&exit(140, 1010, C, 0)));
    assert!(ended(&out).is_empty(), "the background sleep keeps the session open");
    out.extend(t.handle(&exit(5_000, 1011, C, 0)));

    let s = started(&out);
    assert_eq!(s.len(), 1);
    let sid = s[0].id;
    assert_eq!(sid, SessionId(key(1010)));
    assert_eq!(s[0].kind, SessionKind::Exec);
    assert_eq!(s[0].container.id, "web");
    assert_eq!(s[0].root_argv[0], b"sh");
    let e = ended(&out);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].end_ns, Some(5_000));
    assert!(!e[0].incomplete);

    let procs = procs_of(&out, sid);
    let mut pids: Vec<u32> = procs.iter().map(|p| p.key.pid).collect();
    pids.sort();
    assert_eq!(pids, vec![1010, 1011, 1012]);
    let wget = procs.iter().find(|p| p.key.pid == 1012).unwrap();
    assert_eq!(wget.parent, Some(key(1010)));
    assert_eq!(wget.exit, Some(ExitStatus::Code(0)));
    let img = wget.images.last().unwrap();
    assert_eq!(img.argv[0], b"wget");
    assert_eq!(img.connects.len(), 1);
    assert_eq!(img.connects[0].outcome, ConnectOutcome::Connected);
    assert_eq!(img.connects[0].port, 8080);
    assert_eq!(img.connects[0].end_ns, Some(123));
    let sleep = procs.iter().find(|p| p.key.pid == 1011).unwrap();
    assert_eq!(sleep.images.len(), 2, "inherited sh image, then sleep");
    assert!(sleep.images[0].inherited);
    assert_eq!(sleep.images[1].exec_index, 1);
    assert_eq!(t.len(), 2, "only the shim and the container init are left in the table");
}

#[test]
fn concurrent_execs_into_one_container_stay_apart() {
    let mut t = tracker();
    let mut out = start_container_c(&mut t);
    out.extend(runc_exec(&mut t, 100, 1020, &["sh"]));
    out.extend(runc_exec(&mut t, 101, 1030, &["sh"]));
    out.extend(t.handle(&fork(110, 1021, 1020, C)));
    out.extend(t.handle(&fork(111, 1031, 1030, C)));
    out.extend(t.handle(&exec_in(112, 1021, 1020, &["ls"])));
    out.extend(t.handle(&exec_in(113, 1031, 1030, &["ps"])));
    for (ts, pid) in [(120, 1021), (121, 1031), (130, 1020), (131, 1030)] {
        out.extend(t.handle(&exit(ts, pid, C, 0)));
    }
    assert_eq!(started(&out).len(), 2);
    assert_eq!(ended(&out).len(), 2);
    let a: Vec<u32> = procs_of(&out, SessionId(key(1020))).iter().map(|p| p.key.pid).collect();
    let b: Vec<u32> = procs_of(&out, SessionId(key(1030))).iter().map(|p| p.key.pid).collect();
    assert_eq!(a, vec![1021, 1020]);
    assert_eq!(b, vec![1031, 1030]);
}

#[test]
fn exec_without_fork_continues_the_process_with_a_new_image() {
    let mut t = tracker();
    let mut out = start_container_c(&mut t);
    out.extend(runc_exec(&mut t, 100, 1040, &["sh", "-c", "exec wget http://x/"]));
    out.extend(t.handle(&exec_in(110, 1040, 500, &["wget", "http://x/"])));
    out.extend(t.handle(&exit(120, 1040, C, 1)));
    let procs = procs_of(&out, SessionId(key(1040)));
    assert_eq!(procs.len(), 1);
    let imgs = &procs[0].images;
    assert_eq!(imgs.iter().map(|i| i.exec_index).collect::<Vec<_>>(), vec![0, 1]);
    assert_eq!(imgs[0].end_ns, Some(110));
    assert_eq!(imgs[1].argv[0], b"wget");
    assert_eq!(imgs[1].end_ns, Some(120));
    assert_eq!(procs[0].exit, Some(ExitStatus::Code(1)));
    assert_eq!(started(&out).len(), 1, "the second exec is not a new session");
}

#[test]
fn exit_and_exec_before_fork_are_reordered() {
    let mut t = tracker();
    let mut out = start_container_c(&mut t);
    out.extend(runc_exec(&mut t, 100, 1050, &["sh"]));
    let before = t.counters().execs_before_fork.get(); // the shim's exec had no fork either
                                                       // child 1051: exec, exit, then the parent's fork record
    out.extend(t.handle(&exec_in(111, 1051, 1050, &["true"])));
    out.extend(t.handle(&exit(112, 1051, C, 0)));
    out.extend(t.handle(&fork(110, 1051, 1050, C)));
    // child 1052 never execs: exit, then fork
    out.extend(t.handle(&exit(122, 1052, C, 3)));
    out.extend(t.handle(&fork(120, 1052, 1050, C)));
    out.extend(t.handle(&exit(130, 1050, C, 0)));
    let procs = procs_of(&out, SessionId(key(1050)));
    let pids: Vec<u32> = procs.iter().map(|p| p.key.pid).collect();
    assert_eq!(pids, vec![1051, 1052, 1050]);
    assert_eq!(procs[1].exit, Some(ExitStatus::Code(3)));
    assert_eq!(ended(&out).len(), 1);
    assert_eq!(t.counters().execs_before_fork.get() - before, 1);
    assert_eq!(t.counters().exits_early.get(), 1);
    assert_eq!(t.len(), 2);
}

/// Issue 15: a final record says when no child of the process was left (`leaf`), so the span
/// and rules stages keep nothing for it as a parent; a process that leaves a child running,
/// and a child counted out of order (exec or exit before its fork), are handled.
#[test]
fn a_record_is_a_leaf_when_no_child_is_left() {
    let mut t = tracker();
    let mut out = start_container_c(&mut t);
    out.extend(runc_exec(&mut t, 100, 1060, &["sh"]));
    // a command: fork, exec, exit
    out.extend(t.handle(&fork(110, 1061, 1060, C)));
    out.extend(t.handle(&exec_in(111, 1061, 1060, &["true"])));
    out.extend(t.handle(&exit(112, 1061, C, 0)));
    // a subshell that leaves a child running, which ends after it
    out.extend(t.handle(&fork(120, 1062, 1060, C)));
    out.extend(t.handle(&fork(121, 1063, 1062, C)));
    out.extend(t.handle(&exec_in(122, 1063, 1062, &["sleep", "1"])));
    out.extend(t.handle(&exit(123, 1062, C, 0)));
    out.extend(t.handle(&exit(124, 1063, C, 0)));
    // out of order: exec and exit before the fork, exit before the fork
    out.extend(t.handle(&exec_in(131, 1064, 1060, &["true"])));
    out.extend(t.handle(&exit(132, 1064, C, 0)));
    out.extend(t.handle(&fork(130, 1064, 1060, C)));
    out.extend(t.handle(&exit(142, 1065, C, 0)));
    out.extend(t.handle(&fork(140, 1065, 1060, C)));
    // a child still running when the shell exits
    out.extend(t.handle(&fork(150, 1066, 1060, C)));
    out.extend(t.handle(&exit(160, 1060, C, 0)));
    out.extend(t.handle(&exit(170, 1066, C, 0)));
    let procs = procs_of(&out, SessionId(key(1060)));
    let leaf = |pid: u32| procs.iter().find(|p| p.key.pid == pid).map(|p| p.leaf);
    assert_eq!(leaf(1061), Some(true));
    assert_eq!(leaf(1062), Some(false), "its child was still running");
    assert_eq!(leaf(1063), Some(true));
    assert_eq!(leaf(1064), Some(true));
    assert_eq!(leaf(1065), Some(true));
    assert_eq!(leaf(1060), Some(false), "1066 was still running");
    assert_eq!(leaf(1066), Some(true));
    assert_eq!(ended(&out).len(), 1);
}

#[test]
fn pid_reuse_never_merges_two_processes() {
    let mut t = tracker();
    let mut out = start_container_c(&mut t);
    out.extend(runc_exec(&mut t, 100, 1060, &["sh"]));
    out.extend(t.handle(&fork(110, 1061, 1060, C)));
    out.extend(t.handle(&exit(111, 1061, C, 0)));
    // the same pid again, a new start time, in the container's init tree (no session)
    let reused = ForkEvent {
        ts_ns: 120,
        pid: 1061,
        start_ns: st(1061) + 50_000_000,
        cgroup_id: C,
        ppid: 1001,
        parent_start_ns: st(1001),
        creator_pid: 1001,
        pidns_ino: PIDNS_C,
        nspid: 61,
        uid: 0,
    };
    out.extend(t.handle(&Event::Fork(reused)));
    out.extend(t.handle(&connect(121, 1061, 5, Transport::Tcp, 80)));
    out.extend(t.handle(&exit(130, 1060, C, 0)));
    let procs = procs_of(&out, SessionId(key(1060)));
    assert_eq!(procs.len(), 2);
    assert!(procs.iter().all(|p| p.images.iter().all(|i| i.connects.is_empty())), "the new 1061 is not the session's");
    assert_eq!(ended(&out).len(), 1);
}

#[test]
fn udp_connect_without_data_is_marked_for_skipping() {
    let mut t = tracker();
    let mut out = start_container_c(&mut t);
    out.extend(runc_exec(&mut t, 100, 1070, &["nslookup", "x"]));
    out.extend(t.handle(&connect(110, 1070, 8, Transport::Udp, 53)));
    out.extend(t.handle(&result(111, 8, 0)));
    out.extend(t.handle(&connect(112, 1070, 9, Transport::Udp, 53)));
    out.extend(t.handle(&result(113, 9, 0)));
    out.extend(t.handle(&Event::UdpSend(UdpSendEvent { ts_ns: 114, cgroup_id: C, cookie: 9, bytes: 40, dest: None })));
    out.extend(t.handle(&connect(115, 424242, 10, Transport::Tcp, 1)));
    out.extend(t.handle(&exit(120, 1070, C, 0)));
    let procs = procs_of(&out, SessionId(key(1070)));
    let c = &procs[0].images[0].connects;
    assert_eq!((c[0].udp_sent, c[1].udp_sent), (false, true));
    assert_eq!(t.counters().connects_unknown_pid.get(), 1);
}

#[test]
fn datagrams_fold_per_destination_and_each_is_counted_issue_18() {
    let mut t = tracker();
    let mut out = start_container_c(&mut t);
    out.extend(runc_exec(&mut t, 100, 1071, &["python3", "x.py"]));
    for i in 0..5 {
        out.extend(t.handle(&sock(110 + i, 1071, C, SockOp::SendTo, "203.0.113.9", 53)));
    }
    out.extend(t.handle(&sock(120, 1071, C, SockOp::SendTo, "203.0.113.10", 53)));
    out.extend(t.handle(&sock(121, 1071, C, SockOp::Listen, "0.0.0.0", 4444)));
    out.extend(t.handle(&sock(122, 1071, C, SockOp::Accept, "10.9.9.9", 50000)));
    out.extend(t.handle(&sock(123, 1071, C, SockOp::Accept, "10.9.9.9", 50001)));
    out.extend(t.handle(&sock(124, 1071, C, SockOp::Create, "0.0.0.0", 0)));
    // a connected UDP socket whose first datagram went elsewhere than its connect said
    out.extend(t.handle(&connect_to(125, 1071, C, 31, Transport::Udp, "10.96.0.10", 53)));
    out.extend(t.handle(&Event::UdpSend(UdpSendEvent {
        ts_ns: 126,
        cgroup_id: C,
        cookie: 31,
        bytes: 40,
        dest: Some(("10.244.1.7".parse().unwrap(), 5353)),
    })));
    out.extend(t.handle(&sock(127, 424242, C, SockOp::SendTo, "203.0.113.9", 53)));
    out.extend(t.handle(&exit(130, 1071, C, 0)));
    let procs = procs_of(&out, SessionId(key(1071)));
    let c = &procs[0].images[0].connects;
    let ops: Vec<(NetOp, String, u16, u64)> =
        c.iter().map(|r| (r.op, r.addr.to_string(), r.port, r.activity.map(|a| a.count).unwrap_or(0))).collect();
    assert_eq!(
        ops,
        vec![
            (NetOp::SendTo, "203.0.113.9".into(), 53, 5),
            (NetOp::SendTo, "203.0.113.10".into(), 53, 1),
            (NetOp::Listen, "0.0.0.0".into(), 4444, 0),
            (NetOp::Accept, "10.9.9.9".into(), 50000, 2),
            (NetOp::Socket, "0.0.0.0".into(), 0, 1),
            (NetOp::Connect, "10.96.0.10".into(), 53, 0),
        ]
    );
    assert_eq!(c[3].local, Some(("10.1.0.5".parse().unwrap(), 4444)));
    assert_eq!(c[4].transport, Transport::Icmp);
    assert_eq!(c[5].final_addr, Some(("10.244.1.7".parse().unwrap(), 5353)), "the datagram's real destination");
    assert!(c[5].udp_sent);
    assert_eq!(t.counters().sockets_unknown_pid.get(), 1);
}

#[test]
fn datagrams_outside_sessions_fold_and_rate_limit_like_outbound_connects() {
    let mut t = tracker();
    let mut out = start_container_c(&mut t);
    // the container's init (pid 1001, outside every session) sends 30 datagrams out
    for i in 0..30 {
        out.extend(t.handle(&sock(200 + i, 1001, C, SockOp::SendTo, "203.0.113.9", 53)));
    }
    // and listens: not recorded outside sessions
    out.extend(t.handle(&sock(240, 1001, C, SockOp::Listen, "0.0.0.0", 80)));
    out.extend(t.shutdown(300));
    let rec: Vec<&ProcessRecord> = out
        .iter()
        .filter_map(|u| match u {
            SessionUpdate::ProcessEnded(i, p) if i.kind == SessionKind::Outbound => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(rec.len(), 1, "one outbound record: {out:#?}");
    let c = &rec[0].images[0].connects;
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].op, NetOp::SendTo);
    assert_eq!(c[0].activity.map(|a| a.count), Some(30), "every datagram counted");
    assert_eq!(t.outbound().opened.get() + t.outbound().folded.get(), 30);
}

#[test]
fn refused_and_pending_connects_get_their_outcome() {
    let mut t = tracker();
    let mut out = start_container_c(&mut t);
    out.extend(runc_exec(&mut t, 100, 1075, &["nc", "10.0.0.9", "1"]));
    out.extend(t.handle(&connect(110, 1075, 11, Transport::Tcp, 1)));
    out.extend(t.handle(&result(111, 11, -111)));
    out.extend(t.handle(&connect(112, 1075, 12, Transport::Tcp, 2)));
    out.extend(t.handle(&result(113, 12, -115)));
    let hs = ConnectResultEvent {
        ts_ns: 114,
        pid: 0,
        cookie: 12,
        error: 0,
        phase: ResultPhase::TcpState,
        final_addr: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 10))),
        final_port: Some(2),
    };
    out.extend(t.handle(&Event::ConnectResult(hs)));
    out.extend(t.handle(&exit(120, 1075, C, 0)));
    let c = &procs_of(&out, SessionId(key(1075)))[0].images[0].connects;
    assert_eq!((c[0].outcome, c[0].error), (ConnectOutcome::Refused, Some(-111)));
    assert_eq!(c[1].outcome, ConnectOutcome::Connected);
    assert_eq!(c[1].end_ns, Some(114));
    assert_eq!(c[1].final_addr, Some((IpAddr::V4(Ipv4Addr::new(10, 0, 0, 10)), 2)));
}

#[test]
fn nsenter_from_the_node_is_a_node_session_with_its_login_user() {
    let mut t = tracker();
    // sessions only here; the watched-nsenter case follows below
    t.set_activity(podtrail::process::activity::ActivityConfig {
        scope: podtrail::process::activity::ActivityScope::Sessions,
        ..Default::default()
    });
    let mut out = start_container_c(&mut t);
    // a shell on the node (600) runs nsenter (601): setns mnt + pid, fork 602, exec sh
    out.extend(t.handle(&exec(200, X::host(600, 1, &["bash"]))));
    out.extend(feed(&mut t, spawn(210, X::host(601, 600, &["nsenter", "-t", "1001", "-a", "sh"]))));
    out.extend(t.handle(&ns_join(212, 601, HOST, MNT_HOST, MNT_HOST, HOST_PIDNS, PIDNS_C, 1000)));
    out.extend(t.handle(&ns_join(213, 601, HOST, MNT_HOST, MNT_C, PIDNS_C, PIDNS_C, 1000)));
    assert!(started(&out).is_empty(), "nothing ran in the container yet");
    out.extend(feed(&mut t, spawn(220, X::host(602, 601, &["sh"]).in_namespaces_of(C, 5))));
    out.extend(t.handle(&exit(230, 602, HOST, 0)));
    out.extend(t.handle(&exit(231, 601, HOST, 0)));
    let s = started(&out);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].kind, SessionKind::Node);
    assert_eq!(s[0].id, SessionId(key(601)));
    assert_eq!(s[0].node_user, Some(1000));
    assert_eq!(s[0].container.id, "web");
    assert_eq!(s[0].root_argv[0], b"nsenter");
    assert_eq!(s[0].parent_session, None);
    let pids: Vec<u32> = procs_of(&out, s[0].id).iter().map(|p| p.key.pid).collect();
    assert_eq!(pids, vec![602, 601]);
    assert_eq!(ended(&out).len(), 1);
}

#[test]
fn runc_setns_without_exec_is_not_a_session() {
    let mut t = tracker();
    let mut out = start_container_c(&mut t);
    // runc exec: stage-1 (510) joins C's namespaces, clones the final child with
    // CLONE_PARENT (so its real parent is runc, 505), and exits
    out.extend(feed(&mut t, spawn(100, X::host(505, 500, &["runc", "exec"]))));
    out.extend(t.handle(&fork(102, 510, 505, HOST)));
    out.extend(t.handle(&ns_join(103, 510, HOST, MNT_HOST, MNT_C, HOST_PIDNS, PIDNS_C, u32::MAX)));
    out.extend(t.handle(&fork(104, 1080, 505, HOST)));
    out.extend(t.handle(&exit(105, 510, HOST, 0)));
    out.extend(t.handle(&exec(106, X::entering(1080, 505, C, 80, &["id"]))));
    out.extend(t.handle(&exit(107, 1080, C, 0)));
    let s = started(&out);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].kind, SessionKind::Exec);
    assert_eq!(t.counters().ns_joins_idle.get(), 1);
}

#[test]
fn nsenter_from_inside_a_session_opens_a_linked_session() {
    let mut t = tracker();
    let mut out = start_container_c(&mut t);
    // container D with its init
    out.extend(feed(&mut t, spawn(40, X::entering(2001, 500, D, 1, &["db"]))));
    // a privileged exec into C runs nsenter into D
    out.extend(runc_exec(&mut t, 100, 1090, &["sh"]));
    out.extend(t.handle(&fork(110, 1091, 1090, C)));
    out.extend(t.handle(&exec_in(111, 1091, 1090, &["nsenter", "-t", "2001", "-m", "-p", "sh"])));
    out.extend(t.handle(&ns_join(112, 1091, C, MNT_C, MNT_D, PIDNS_C, PIDNS_D, 1000)));
    out.extend(t.handle(&fork(113, 1092, 1091, C)));
    out.extend(t.handle(&exec(
        114,
        X { pid: 1092, ppid: 1091, cg: C, pcg: C, nspid: 9, pidns: PIDNS_D, mnt: MNT_D, argv: &["sh"] },
    )));
    let s = started(&out);
    assert_eq!(s.len(), 2);
    assert_eq!(s[1].kind, SessionKind::Node);
    assert_eq!(s[1].container.id, "db");
    assert_eq!(s[1].parent_session, Some(SessionId(key(1090))));
    for (ts, pid) in [(120, 1092), (121, 1091)] {
        out.extend(t.handle(&exit(ts, pid, C, 0)));
    }
    assert_eq!(ended(&out).len(), 1, "the inner session ends, the outer shell is still running");
    out.extend(t.handle(&exit(130, 1090, C, 0)));
    assert_eq!(ended(&out).len(), 2);
    let inner: Vec<u32> = procs_of(&out, SessionId(key(1091))).iter().map(|p| p.key.pid).collect();
    assert_eq!(inner, vec![1092, 1091]);
}

#[test]
fn init_in_a_shared_or_host_pid_namespace_is_still_the_init() {
    let mut t = tracker();
    // host pid namespace: the init has nspid == its host pid, not 1
    let mut out = t.handle(&fork(20, 1001, 500, HOST));
    out.extend(t.handle(&exec(
        30,
        X {
            pid: 1001,
            ppid: 500,
            cg: C,
            pcg: HOST,
            nspid: 1001,
            pidns: HOST_PIDNS,
            mnt: MNT_C,
            argv: &["sleep", "1000"],
        },
    )));
    assert!(out.is_empty(), "the first process of the container is its init");
    out.extend(runc_exec(&mut t, 100, 1100, &["sh"]));
    assert_eq!(started(&out).len(), 1);
    // with the runtime's task pid known, it decides
    let mut lookup = StaticContainers::default().with(C, "web");
    lookup.init_pids.insert(C, 1002);
    let mut t = SessionTracker::new(Box::new(lookup), HOST_PIDNS, TICK);
    let mut out = runc_exec(&mut t, 100, 1101, &["sh"]);
    out.extend(t.handle(&fork(20, 1002, 500, HOST)));
    out.extend(t.handle(&exec(30, X::entering(1002, 500, C, 2, &["pause"]))));
    let s = started(&out);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].id, SessionId(key(1101)));
}

#[test]
fn shutdown_ends_open_sessions_as_incomplete() {
    let mut t = tracker();
    let mut out = start_container_c(&mut t);
    out.extend(runc_exec(&mut t, 100, 1110, &["sh"]));
    out.extend(t.handle(&fork(110, 1111, 1110, C)));
    let end = t.shutdown(999);
    assert_eq!(end.len(), 1);
    let SessionUpdate::Ended(info, procs) = &end[0] else { panic!("{end:?}") };
    assert!(info.incomplete);
    assert_eq!(info.end_ns, Some(999));
    assert_eq!(procs.iter().map(|p| p.key.pid).collect::<Vec<_>>(), vec![1110, 1111]);
    assert!(procs.iter().all(|p| p.exit.is_none() && p.images.last().unwrap().end_ns == Some(999)));
    assert_eq!(t.sessions(), 0);
}

#[test]
fn sessions_running_at_start_up_are_learned_from_proc() {
    let mut t = tracker();
    let procs = vec![
        scanned(1, 0, HOST, 1, HOST_PIDNS, MNT_HOST, &["init"]),
        scanned(500, 1, HOST, 500, HOST_PIDNS, MNT_HOST, &["containerd-shim"]),
        scanned(1001, 500, C, 1, PIDNS_C, MNT_C, &["sleep", "1000"]),
        scanned(1120, 500, C, 120, PIDNS_C, MNT_C, &["sh"]),
        scanned(1121, 1120, C, 121, PIDNS_C, MNT_C, &["sleep", "60"]),
        scanned(600, 1, HOST, 600, HOST_PIDNS, MNT_HOST, &["bash"]),
        scanned(601, 600, HOST, 601, HOST_PIDNS, MNT_C, &["nsenter", "-t", "1001", "-a"]),
        scanned(602, 601, HOST, 7, PIDNS_C, MNT_C, &["sh"]),
    ];
    let out = t.learn_from_proc(&procs, 50);
    let s = started(&out);
    assert_eq!(s.len(), 2, "{s:?}");
    let exec_s = s.iter().find(|i| i.kind == SessionKind::Exec).unwrap();
    assert!(exec_s.from_proc && exec_s.incomplete);
    assert_eq!(exec_s.root_argv[0], b"sh");
    let node = s.iter().find(|i| i.kind == SessionKind::Node).unwrap();
    assert_eq!(node.node_user, Some(1000));
    assert_eq!(node.root_argv[0], b"nsenter");
    // kernel events carry exact start times; they join at tick granularity
    let mut out = t.handle(&exit(2_000, 1121, C, 0));
    out.extend(t.handle(&exit(2_001, 1120, C, 0)));
    let e = ended(&out);
    assert_eq!(e.len(), 1);
    assert_eq!(procs_of(&out, exec_s.id).len(), 2);
    // a child forked now by the node session's shell joins that session
    let mut out = t.handle(&fork(2_100, 603, 602, HOST));
    out.extend(t.handle(&exit(2_101, 603, HOST, 0)));
    assert_eq!(procs_of(&out, node.id).len(), 1);
}

/// /proc as the agent reads it just after attaching its programs: the shim, the container's
/// init, and `sh` (1120) that a `runc exec` started in C; the scan happens at `scan_ns`.
fn scan_with_exec_shell(t: &mut SessionTracker, scan_ns: u64) -> SessionInfo {
    let procs = vec![
        scanned(1, 0, HOST, 1, HOST_PIDNS, MNT_HOST, &["init"]),
        scanned(500, 1, HOST, 500, HOST_PIDNS, MNT_HOST, &["containerd-shim"]),
        scanned(1001, 500, C, 1, PIDNS_C, MNT_C, &["sleep", "1000"]),
        scanned(1120, 500, C, 120, PIDNS_C, MNT_C, &["sh"]),
    ];
    let out = t.learn_from_proc(&procs, scan_ns);
    let s = started(&out);
    assert_eq!(s.len(), 1, "{s:?}");
    assert!(s[0].from_proc && s[0].incomplete);
    s[0].clone()
}

#[test]
fn an_exec_between_attach_and_the_proc_scan_is_a_complete_session_of_one_tree() {
    // the shell's fork and exec happened after the programs attached but before /proc was
    // read: the ring holds them, and the stage reads them after the scan
    let mut t = tracker();
    let learned = scan_with_exec_shell(&mut t, 50);
    let mut out = feed(&mut t, spawn(40, X::entering(1120, 500, C, 120, &["sh"])));
    out.extend(t.handle(&fork(60, 1121, 1120, C)));
    out.extend(t.handle(&exec_in(61, 1121, 1120, &["cat", "/etc/hostname"])));
    out.extend(t.handle(&exit(62, 1121, C, 0)));
    out.extend(t.handle(&exit(70, 1120, C, 0)));
    let e = ended(&out);
    assert_eq!(e.len(), 1, "{out:#?}");
    let info = e[0];
    assert_eq!(info.id, learned.id, "the session /proc opened, not a second one");
    assert!(!info.incomplete && !info.from_proc, "its beginning was seen after all: {info:?}");
    assert_eq!(info.start_ns, 41, "it starts at the exec the kernel reported");
    assert_eq!(t.counters().sessions_proc_completed.get(), 1);
    let procs = procs_of(&out, info.id);
    let root = procs.iter().find(|r| r.key.pid == 1120).expect("the shell's record");
    // the span stage puts the process whose key names the session under the root span
    assert_eq!(root.key, info.id.0);
    assert_eq!(root.images.len(), 1, "the exec is the image /proc showed, not a second one: {root:?}");
    assert_eq!((root.images[0].exec_index, root.images[0].start_ns), (0, 41));
    let cat = procs.iter().find(|r| r.key.pid == 1121).expect("cat's record");
    assert_eq!(cat.parent, Some(root.key), "cat hangs under the shell");
}

#[test]
fn a_session_begun_before_attach_stays_incomplete_but_one_tree() {
    // no exec in the ring: /proc is all there is of the shell; its children come as events
    // with the kernel's exact start times, which /proc rounds to clock ticks
    let mut t = tracker();
    let learned = scan_with_exec_shell(&mut t, 50);
    assert_ne!(learned.id.0, key(1120), "the /proc key is in ticks, the kernel's in ns");
    let mut out = t.handle(&fork(60, 1121, 1120, C));
    out.extend(t.handle(&exec_in(61, 1121, 1120, &["wget", "http://x/"])));
    out.extend(t.handle(&exit(62, 1121, C, 0)));
    out.extend(t.handle(&exit(70, 1120, C, 0)));
    let e = ended(&out);
    assert_eq!(e.len(), 1, "{out:?}");
    assert!(e[0].incomplete && e[0].from_proc);
    let procs = procs_of(&out, learned.id);
    let root = procs.iter().find(|r| r.key.pid == 1120).expect("the shell's record");
    assert_eq!(root.key, learned.id.0, "the shell keeps the key its session is named after");
    let wget = procs.iter().find(|r| r.key.pid == 1121).expect("wget's record");
    assert_eq!(wget.parent, Some(root.key));
    assert_eq!(t.counters().sessions_proc_completed.get(), 0);
}

/// Any order of any events over a few pids, cgroups and namespaces: never a panic, and every
/// session that starts ends exactly once (at the latest at shutdown).
mod arbitrary_sequences {
    use super::*;
    use proptest::prelude::*;

    fn event(kind: u8, pid: u32, ppid: u32, cg: u64, pcg: u64, ns: u32, cookie: u64) -> Event {
        let pid = 1000 + pid;
        let ppid = 1000 + ppid;
        match kind % 8 {
            0 => fork(pid as u64, pid, ppid, cg),
            1 => exec(
                pid as u64,
                X {
                    pid,
                    ppid,
                    cg,
                    pcg,
                    nspid: ns % 3,
                    pidns: [HOST_PIDNS, PIDNS_C, PIDNS_D][ns as usize % 3],
                    mnt: [MNT_HOST, MNT_C, MNT_D][ns as usize % 3],
                    argv: &["x"],
                },
            ),
            2 => exit(pid as u64, pid, cg, 0),
            3 => {
                connect(pid as u64, pid, cookie, if ns.is_multiple_of(2) { Transport::Tcp } else { Transport::Udp }, 80)
            }
            4 => result(pid as u64, cookie, -(ns as i32 % 120)),
            5 => Event::UdpSend(UdpSendEvent { ts_ns: 1, cgroup_id: cg, cookie, bytes: 1, dest: None }),
            6 => sock(
                pid as u64,
                pid,
                cg,
                [SockOp::SendTo, SockOp::Listen, SockOp::Accept, SockOp::Create][ns as usize % 4],
                "203.0.113.9",
                (cookie % 3) as u16,
            ),
            _ => ns_join(
                pid as u64,
                pid,
                cg,
                MNT_HOST,
                [MNT_HOST, MNT_C, MNT_D][ns as usize % 3],
                HOST_PIDNS,
                [HOST_PIDNS, PIDNS_C, PIDNS_D][ns as usize % 3],
                1000,
            ),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn never_panics_and_every_session_ends_once(evs in proptest::collection::vec((0u8..7, 0u32..8, 0u32..8, prop_oneof![Just(HOST), Just(C), Just(D)], prop_oneof![Just(HOST), Just(C), Just(D)], 0u32..6, 0u64..4), 0..120)) {
            let mut t = tracker();
            let mut out = Vec::new();
            for (k, pid, ppid, cg, pcg, ns, cookie) in evs {
                out.extend(t.handle(&event(k, pid, ppid, cg, pcg, ns, cookie)));
            }
            out.extend(t.shutdown(u64::MAX));
            let mut s: Vec<SessionId> = started(&out).iter().map(|i| i.id).collect();
            let mut e: Vec<SessionId> = ended(&out).iter().map(|i| i.id).collect();
            s.sort();
            e.sort();
            prop_assert_eq!(s, e);
            prop_assert_eq!(t.sessions(), 0);
        }
    }
}

/// Control channel (drops polled from the kernel's per-cgroup counters, pod metadata): a drop
/// reported while sessions run marks exactly the open session of that cgroup.
#[test]
fn kernel_drops_mid_session_mark_only_that_session() {
    use podtrail::process::run::Control;
    let mut t = tracker();
    let mut out = start_container_c(&mut t);
    // container D: its own init, and a session in it that runs through the drop
    out.extend(feed(&mut t, spawn(35, X::entering(2001, 500, D, 1, &["postgres"]))));
    out.extend(feed(&mut t, spawn(40, X::entering(2010, 500, D, 10, &["psql"]))));
    // a session in C that ends before the drop, and one that is open during it
    out.extend(runc_exec(&mut t, 100, 1010, &["ls"]));
    out.extend(t.handle(&exit(110, 1010, C, 0)));
    out.extend(runc_exec(&mut t, 200, 1020, &["sh"]));
    t.control(Control::EventsLost { cgroup_id: C, total: 7 });
    t.control(Control::EventsLost { cgroup_id: C, total: 7 }); // the same total again: no new loss
    t.control(Control::EventsLost { cgroup_id: 999, total: 3 }); // a cgroup with no session
    out.extend(t.handle(&exit(300, 1020, C, 0)));
    t.control(Control::EventsLost { cgroup_id: C, total: 9 }); // after every session in C ended
    out.extend(t.handle(&exit(400, 2010, D, 0)));

    let e = ended(&out);
    assert_eq!(e.len(), 3, "{e:?}");
    let by_root = |pid| e.iter().find(|i| i.id == SessionId(key(pid))).unwrap();
    assert_eq!((by_root(1010).events_lost, by_root(1010).incomplete), (0, false), "ended before the drop");
    assert_eq!((by_root(1020).events_lost, by_root(1020).incomplete), (7, true), "open during the drop");
    assert_eq!((by_root(2010).events_lost, by_root(2010).incomplete), (0, false), "another container");
}

#[test]
fn better_container_metadata_reaches_open_and_later_sessions_and_is_not_undone() {
    let mut t = tracker();
    let mut out = start_container_c(&mut t);
    out.extend(runc_exec(&mut t, 100, 1010, &["sh"]));
    // a source that knows the container id, not the cgroup
    let kube = ContainerInfo {
        id: "web".into(),
        pod_namespace: Some("billing".into()),
        pod_name: Some("api-1".into()),
        container_name: Some("api".into()),
        source: "kube_api",
        ..Default::default()
    };
    t.update_container(kube);
    // a late containerd answer must not undo it
    let labels = ContainerInfo {
        id: "web".into(),
        cgroup_id: C,
        pod_name: Some("stale".into()),
        pod_uid: Some("uid-1".into()),
        source: "containerd_labels",
        ..Default::default()
    };
    t.update_container(labels);
    out.extend(t.handle(&exit(110, 1010, C, 0)));
    out.extend(runc_exec(&mut t, 200, 1020, &["ls"]));
    out.extend(t.handle(&exit(210, 1020, C, 0)));
    let e = ended(&out);
    assert_eq!(e.len(), 2);
    for i in e {
        assert_eq!(i.container.pod_name.as_deref(), Some("api-1"));
        assert_eq!(i.container.pod_namespace.as_deref(), Some("billing"));
        assert_eq!(i.container.pod_uid.as_deref(), Some("uid-1"), "gaps filled from containerd");
        assert_eq!(i.container.source, "kube_api");
        assert_eq!(i.container.cgroup_id, C);
    }
}

#[test]
fn children_carry_the_parent_image_they_were_forked_from() {
    let mut t = tracker();
    let mut out = start_container_c(&mut t);
    out.extend(runc_exec(&mut t, 100, 1010, &["sh"]));
    out.extend(t.handle(&fork(110, 1011, 1010, C)));
    out.extend(t.handle(&exec_in(120, 1010, 500, &["busybox", "sh"]))); // the shell re-execs
    out.extend(t.handle(&fork(130, 1012, 1010, C)));
    for (ts, pid) in [(140, 1011), (150, 1012), (160, 1010)] {
        out.extend(t.handle(&exit(ts, pid, C, 0)));
    }
    let sid = SessionId(key(1010));
    let procs = procs_of(&out, sid);
    let idx = |pid| procs.iter().find(|p| p.key.pid == pid).unwrap().parent_exec_index;
    assert_eq!(idx(1011), Some(0));
    assert_eq!(idx(1012), Some(1), "forked after the re-exec");
}

/// Issue 6: every run of a watched executable is recorded, on the host and in a container,
/// outside any session; a program not on the list is not, and the `sessions` scope records none.
#[test]
fn watched_executables_are_recorded_anywhere_outside_sessions() {
    use podtrail::process::activity::{ActivityConfig, ActivityScope};
    let run = |t: &mut SessionTracker| {
        let mut out = start_container_c(t);
        // the node's shell runs tcpdump, then ls
        out.extend(t.handle(&exec(40, X::host(600, 1, &["bash"]))));
        out.extend(feed(t, spawn(50, X::host(601, 600, &["tcpdump", "-i", "any", "port", "53"]))));
        out.extend(t.handle(&exit(60, 601, HOST, 0)));
        out.extend(feed(t, spawn(70, X::host(602, 600, &["ls"]))));
        out.extend(t.handle(&exit(72, 602, HOST, 0)));
        // the container's own process runs tcpdump
        out.extend(t.handle(&fork(80, 1050, 1001, C)));
        out.extend(t.handle(&exec_in(81, 1050, 1001, &["tcpdump", "-w", "/tmp/x.pcap"])));
        out.extend(t.handle(&exit(90, 1050, C, 0)));
        out
    };
    let mut t = tracker();
    let out = run(&mut t);
    let s = started(&out);
    assert_eq!(s.len(), 2, "{s:?}");
    assert!(s.iter().all(|i| i.kind == SessionKind::Watched && i.root_argv[0] == b"tcpdump"));
    let host = s.iter().find(|i| i.id == SessionId(key(601))).unwrap();
    assert_eq!(host.container.source, "host");
    assert_eq!(
        host.root_argv,
        vec![b"tcpdump".to_vec(), b"-i".to_vec(), b"any".to_vec(), b"port".to_vec(), b"53".to_vec()]
    );
    let inside = s.iter().find(|i| i.id == SessionId(key(1050))).unwrap();
    assert_eq!(inside.container.id, "web");
    assert_eq!(ended(&out).len(), 2);
    assert_eq!(procs_of(&out, host.id).len(), 1);

    let mut t = tracker();
    t.set_activity(ActivityConfig { scope: ActivityScope::Sessions, ..Default::default() });
    assert!(started(&run(&mut t)).is_empty(), "sessions scope: no watched runs");
}

/// nsenter is watched (issue 6): its run opens a trace at its exec, which becomes the node
/// session (one trace, kind node) once it enters a container.
#[test]
fn a_watched_nsenter_into_a_container_becomes_the_node_session() {
    let mut t = tracker();
    let mut out = start_container_c(&mut t);
    out.extend(t.handle(&exec(200, X::host(600, 1, &["bash"]))));
    out.extend(feed(&mut t, spawn(210, X::host(601, 600, &["nsenter", "-t", "1001", "-a", "sh"]))));
    assert_eq!(started(&out).iter().map(|i| i.kind).collect::<Vec<_>>(), vec![SessionKind::Watched]);
    out.extend(t.handle(&ns_join(213, 601, HOST, MNT_HOST, MNT_C, HOST_PIDNS, PIDNS_C, 1000)));
    out.extend(feed(&mut t, spawn(220, X::host(602, 601, &["sh"]).in_namespaces_of(C, 5))));
    out.extend(t.handle(&exit(230, 602, HOST, 0)));
    out.extend(t.handle(&exit(231, 601, HOST, 0)));
    // one trace: re-announced (Started again, same id) when it becomes the node session
    let ids: std::collections::BTreeSet<SessionId> = started(&out).iter().map(|i| i.id).collect();
    assert_eq!(ids.len(), 1, "one trace");
    assert_eq!(started(&out).last().map(|i| i.kind), Some(SessionKind::Node));
    let e = ended(&out);
    assert_eq!(e.len(), 1);
    assert_eq!((e[0].kind, e[0].node_user, e[0].container.id.as_str()), (SessionKind::Node, Some(1000), "web"));
    let mut pids: Vec<u32> = procs_of(&out, e[0].id).iter().map(|p| p.key.pid).collect();
    pids.sort();
    assert_eq!(pids, vec![601, 602]);
}

// ---- issue 6: outbound connects outside sessions -------------------------------------------

/// A TCP connect of pid 1001 in container C to `203.0.113.<d+1>:443` at `ts`, socket `cookie`.
fn to_test_net(t: &mut SessionTracker, ts: u64, cookie: u64, d: u64) -> Vec<SessionUpdate> {
    t.handle(&connect_to(ts, 1001, C, cookie, Transport::Tcp, &format!("203.0.113.{}", d + 1), 443))
}

const SEC: u64 = 1_000_000_000;

/// The cluster's ranges as configured: pods 10.244/16, services 10.96/12; 203.0.113.0/24 is
/// outside every range (external).
fn outbound_tracker(tune: impl FnOnce(&mut podtrail::process::activity::ActivityConfig)) -> SessionTracker {
    let mut cfg = podtrail::process::activity::ActivityConfig::default();
    cfg.ranges.pod_cidrs = vec!["10.244.0.0/16".parse().unwrap()];
    cfg.ranges.service_cidrs = vec!["10.96.0.0/12".parse().unwrap()];
    tune(&mut cfg);
    let mut t = tracker();
    t.set_activity(cfg);
    t
}

/// Outbound traces in `out`: (info, the connect records of its one process).
fn outbound(out: &[SessionUpdate]) -> Vec<(&SessionInfo, &ConnectRecord)> {
    out.iter()
        .filter_map(|u| match u {
            SessionUpdate::ProcessEnded(i, r) if i.kind == SessionKind::Outbound => {
                Some((&**i, &r.images.last()?.connects[0]))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_container_process_connecting_outside_the_cluster_is_one_outbound_trace() {
    let mut t = outbound_tracker(|_| {});
    let mut out = start_container_c(&mut t);
    // the container's own process (its init, no session) connects out, and inside
    out.extend(t.handle(&connect_to(100, 1001, C, 1, Transport::Tcp, "203.0.113.7", 443)));
    out.extend(t.handle(&result(101, 1, 0)));
    out.extend(t.handle(&connect_to(102, 1001, C, 2, Transport::Tcp, "10.244.3.4", 8080)));
    out.extend(t.handle(&connect_to(103, 1001, C, 3, Transport::Tcp, "10.100.0.10", 53)));
    out.extend(t.handle(&connect_to(104, 1001, C, 4, Transport::Tcp, "10.1.2.3", 5432)));
    // a host process connecting out is not a container's
    out.extend(t.handle(&connect_to(105, 500, HOST, 5, Transport::Tcp, "203.0.113.8", 443)));
    assert!(outbound(&out).is_empty(), "nothing before the fold window passes");
    out.extend(t.tick(100 + 11 * SEC));
    let o = outbound(&out);
    assert_eq!(o.len(), 1, "{o:?}");
    let (info, c) = o[0];
    assert_eq!((info.container.id.as_str(), info.root_argv[0].as_slice()), ("web", b"sleep".as_slice()));
    assert_eq!((c.addr.to_string().as_str(), c.port, c.outcome), ("203.0.113.7", 443, ConnectOutcome::Connected));
    assert_eq!(c.activity.map(|a| (a.count, a.suppressed_before)), Some((1, 0)));
    assert_eq!(started(&out).len(), 1);
    assert_eq!(ended(&out).len(), 1);

    // `private` (outside the configured ranges) is recorded once configured
    let mut t = outbound_tracker(|c| c.outbound_scopes.push("private".into()));
    let mut out = start_container_c(&mut t);
    out.extend(t.handle(&connect_to(100, 1001, C, 4, Transport::Tcp, "10.1.2.3", 5432)));
    out.extend(t.handle(&exit(200, 1001, C, 0)));
    assert_eq!(outbound(&out).len(), 1, "the window closes when its process exits");

    // the sessions scope records none
    let mut t = outbound_tracker(|c| c.scope = podtrail::process::activity::ActivityScope::Sessions);
    let mut out = start_container_c(&mut t);
    out.extend(t.handle(&connect_to(100, 1001, C, 1, Transport::Tcp, "203.0.113.7", 443)));
    out.extend(t.shutdown(100 + 20 * SEC));
    assert!(outbound(&out).is_empty());
}

#[test]
fn a_session_connect_stays_in_its_session_and_is_not_an_outbound_trace() {
    let mut t = outbound_tracker(|_| {});
    let mut out = start_container_c(&mut t);
    out.extend(runc_exec(&mut t, 100, 1010, &["wget", "http://203.0.113.7/"]));
    out.extend(t.handle(&connect_to(110, 1010, C, 1, Transport::Tcp, "203.0.113.7", 80)));
    out.extend(t.handle(&exit(120, 1010, C, 0)));
    out.extend(t.shutdown(100 + 20 * SEC));
    assert!(outbound(&out).is_empty());
    assert_eq!(procs_of(&out, SessionId(key(1010)))[0].images[0].connects.len(), 1);
}

#[test]
fn a_thousand_identical_connects_are_one_span_counting_a_thousand() {
    let mut t = outbound_tracker(|_| {});
    let mut out = start_container_c(&mut t);
    for i in 0..1000u64 {
        out.extend(t.handle(&connect_to(100 + i * 1_000_000, 1001, C, 10 + i, Transport::Tcp, "203.0.113.7", 443)));
    }
    out.extend(t.handle(&exit(5 * SEC, 1001, C, 0)));
    let o = outbound(&out);
    assert_eq!(o.len(), 1);
    let a = o[0].1.activity.unwrap();
    assert_eq!((a.count, a.first_ns, a.last_ns), (1000, 100, 100 + 999 * 1_000_000));
    assert_eq!((t.outbound().records.get(), t.outbound().folded.get(), t.outbound().suppressed.get()), (1, 999, 0));
}

#[test]
fn the_rate_limit_counts_exactly_what_it_suppressed_and_marks_the_next_record() {
    let mut t = outbound_tracker(|c| {
        c.burst = 5;
        c.rate_per_s = 1;
    });
    let mut out = start_container_c(&mut t);
    // a flood: 20 destinations at once, each connected to 3 times
    let mut n = 0u64;
    for round in 0..3u64 {
        for d in 0..20u64 {
            n += 1;
            out.extend(to_test_net(&mut t, 100 + round, n, d));
        }
    }
    // two seconds later: two tokens back
    out.extend(t.handle(&connect_to(100 + 2 * SEC, 1001, C, 1000, Transport::Tcp, "198.51.100.1", 443)));
    n += 1;
    out.extend(t.shutdown(100 + 30 * SEC));
    let o = outbound(&out);
    assert_eq!(o.len(), 6, "five from the burst, one after the refill");
    let o_counts: u64 = o.iter().map(|(_, c)| c.activity.unwrap().count).sum();
    assert_eq!(t.outbound().suppressed.get(), 15 * 3, "the 15 destinations over the burst, each 3 times");
    assert_eq!(o_counts + t.outbound().suppressed.get(), n, "folded and suppressed add up to the flood");
    let last = o.iter().find(|(_, c)| c.addr.to_string() == "198.51.100.1").unwrap();
    assert_eq!(last.1.activity.unwrap().suppressed_before, 45, "marked on the container's next record");
    assert!(o.iter().filter(|(_, c)| c.addr.to_string() != "198.51.100.1").all(|(_, c)| c
        .activity
        .unwrap()
        .suppressed_before
        == 0));
}

#[test]
fn suppressed_connects_no_record_follows_are_marked_on_a_record_of_their_own() {
    let mut t = outbound_tracker(|c| {
        c.burst = 2;
        c.rate_per_s = 1;
    });
    let mut out = start_container_c(&mut t);
    // 10 destinations at once: 2 records, 8 suppressed, and then the flood stops
    for d in 0..10u64 {
        out.extend(to_test_net(&mut t, 100 + d, 1 + d, d));
    }
    assert_eq!((t.outbound().suppressed.get(), t.outbound().unmarked.get()), (8, 8));
    // a fold window of quiet later: the two records leave, and the eight are marked on one
    // that counts none of its own (the last destination suppressed)
    out.extend(t.tick(200 + 12 * SEC));
    let o = outbound(&out);
    assert_eq!(o.len(), 3, "{o:?}");
    let marks: Vec<(u64, u64)> =
        o.iter().map(|(_, c)| c.activity.map(|a| (a.count, a.suppressed_before)).unwrap()).collect();
    assert_eq!(marks, vec![(1, 0), (1, 0), (0, 8)]);
    assert_eq!(o[2].1.addr.to_string(), "203.0.113.10");
    assert_eq!((t.outbound().unmarked.get(), t.outbound().open_connects.get(), t.outbound().mark_only), (0, 0, 1));
    let total: u64 = marks.iter().map(|(n, s)| n + s).sum();
    assert_eq!(total, 10, "every connect in a count or a mark");
}

#[test]
fn suppressed_connects_still_unmarked_at_shutdown_are_marked_then() {
    let mut t = outbound_tracker(|c| {
        c.burst = 1;
        c.rate_per_s = 1;
    });
    let mut out = start_container_c(&mut t);
    for d in 0..5u64 {
        out.extend(to_test_net(&mut t, 100 + d, 1 + d, d));
    }
    out.extend(t.shutdown(200));
    let marks: Vec<(u64, u64)> =
        outbound(&out).iter().map(|(_, c)| c.activity.map(|a| (a.count, a.suppressed_before)).unwrap()).collect();
    assert_eq!(marks, vec![(1, 0), (0, 4)]);
}

#[test]
fn with_no_folding_a_sustained_flood_makes_one_mark_only_record_once_it_stops() {
    let mut t = outbound_tracker(|c| {
        c.fold_window_ms = 0;
        c.burst = 1;
        c.rate_per_s = 1;
    });
    let mut out = start_container_c(&mut t);
    // 100 new destinations over half a second, the run loop ticking every 50 ms meanwhile
    for i in 0..100u64 {
        let ts = 100 + i * 5_000_000;
        out.extend(to_test_net(&mut t, ts, 1 + i, i));
        out.extend(t.handle(&result(ts + 1, 1 + i, -111)));
        if i % 10 == 9 {
            out.extend(t.tick(ts + 2));
        }
    }
    out.extend(t.tick(100 + 2 * SEC));
    let marks: Vec<(u64, u64)> =
        outbound(&out).iter().map(|(_, c)| c.activity.map(|a| (a.count, a.suppressed_before)).unwrap()).collect();
    assert_eq!(marks, vec![(1, 0), (0, 99)], "one record, then one mark-only record for the rest");
}

#[test]
fn a_fold_window_of_zero_folds_nothing_and_keeps_each_outcome() {
    let mut t = outbound_tracker(|c| {
        c.fold_window_ms = 0;
        c.rate_per_s = 0;
    });
    let mut out = start_container_c(&mut t);
    for i in 0..5u64 {
        out.extend(t.handle(&connect_to(100 + 10 * i, 1001, C, 1 + i, Transport::Tcp, "203.0.113.7", 443)));
        out.extend(t.handle(&result(101 + 10 * i, 1 + i, -111)));
    }
    out.extend(t.handle(&exit(200, 1001, C, 0)));
    let o = outbound(&out);
    assert_eq!(o.len(), 5, "one record per connect: {o:?}");
    assert!(o.iter().all(|(_, c)| c.activity.unwrap().count == 1 && c.outcome == ConnectOutcome::Refused), "{o:?}");
    assert_eq!((t.outbound().folded.get(), t.outbound().opened.get(), t.counters().results_unmatched.get()), (0, 5, 0));
}

#[test]
fn a_container_whose_init_was_forked_into_its_cgroup_is_not_forgotten_when_a_child_exits() {
    // runc applies the cgroup before its init's clones, so the init's fork is already in C
    let mut t = outbound_tracker(|_| {});
    let mut out = t.handle(&exec(10, X::host(500, 1, &["containerd-shim"])));
    out.extend(t.handle(&fork(20, 1001, 500, C)));
    out.extend(t.handle(&exec(30, X::entering(1001, 500, C, 1, &["sh", "-c", "loop"]))));
    // the init's first child comes and goes (e2e_activity's `sleep 1`)
    out.extend(t.handle(&fork(40, 1002, 1001, C)));
    out.extend(t.handle(&exec_in(41, 1002, 1001, &["sleep", "1"])));
    out.extend(t.handle(&exit(50, 1002, C, 0)));
    // then the init connects out: still a container process
    out.extend(t.handle(&connect_to(60, 1001, C, 1, Transport::Tcp, "203.0.113.7", 443)));
    out.extend(t.shutdown(100 + 30 * SEC));
    assert_eq!(outbound(&out).len(), 1, "the container was forgotten with its first child");
}

#[test]
fn udp_counts_as_outbound_only_once_it_carried_data() {
    let mut t = outbound_tracker(|_| {});
    let mut out = start_container_c(&mut t);
    // glibc sorting resolver answers: connects that never send
    out.extend(t.handle(&connect_to(100, 1001, C, 1, Transport::Udp, "203.0.113.7", 443)));
    out.extend(t.handle(&connect_to(101, 1001, C, 2, Transport::Udp, "203.0.113.8", 443)));
    // a real query
    out.extend(t.handle(&connect_to(102, 1001, C, 3, Transport::Udp, "198.51.100.53", 53)));
    out.extend(t.handle(&Event::UdpSend(UdpSendEvent { ts_ns: 103, cgroup_id: C, cookie: 3, bytes: 40, dest: None })));
    out.extend(t.shutdown(100 + 30 * SEC));
    let o = outbound(&out);
    assert_eq!(o.len(), 1, "{o:?}");
    assert_eq!((o[0].1.addr.to_string().as_str(), o[0].1.udp_sent), ("198.51.100.53", true));
    assert_eq!(t.counters().results_unmatched.get(), 0);
}

#[test]
fn an_outbound_trace_is_a_root_named_outbound_a_process_span_and_one_client_connect() {
    use opentelemetry::trace::SpanKind;
    let mut t = outbound_tracker(|_| {});
    let mut out = start_container_c(&mut t);
    for i in 0..30u64 {
        out.extend(t.handle(&connect_to(100 + i, 1001, C, 1 + i, Transport::Tcp, "203.0.113.7", 443)));
    }
    out.extend(t.shutdown(100 + 30 * SEC));
    let ctx = podtrail::spans::BuildCtx::new(
        [7; 16],
        podtrail::clock::BootClock::fixed(1_700_000_000 * SEC),
        Default::default(),
    );
    let mut spans = None;
    let mut built = Vec::new();
    for u in out.into_iter().filter(|u| matches!(u, SessionUpdate::Started(i) | SessionUpdate::ProcessEnded(i, _) | SessionUpdate::Ended(i, _) if i.kind == SessionKind::Outbound)) {
        match u {
            SessionUpdate::Started(i) => spans = Some(podtrail::spans::SessionSpans::new(&ctx, i, None)),
            SessionUpdate::ProcessEnded(i, r) => built.extend(spans.as_mut().unwrap().process_ended(&ctx, i, r).into_iter().map(|s| (s, false))),
            SessionUpdate::Ended(i, rest) => built.extend(spans.take().unwrap().finish(&ctx, i, rest).into_iter().map(|b| (b.span, b.root))),
            SessionUpdate::Live(..) | SessionUpdate::Transcript(..) => {}
        }
    }
    let names: Vec<(&str, SpanKind)> = built.iter().map(|(s, _)| (s.name.as_ref(), s.span_kind.clone())).collect();
    assert_eq!(
        names,
        vec![
            ("sleep", SpanKind::Internal),
            ("connect", SpanKind::Client),
            // no request is behind an outbound trace: its root is INTERNAL
            ("outbound", SpanKind::Internal)
        ]
    );
    let attr = |s: &opentelemetry_sdk::trace::SpanData, k: &str| {
        s.attributes.iter().find(|kv| kv.key.as_str() == k).map(|kv| kv.value.to_string())
    };
    let connect = &built[1].0;
    assert_eq!(attr(connect, "podtrail.folded.count").as_deref(), Some("30"));
    assert_eq!(attr(connect, "podtrail.network.destination.scope").as_deref(), Some("external"));
    assert_eq!(attr(connect, "container.id").as_deref(), Some("web"));
    assert_eq!(attr(&built[2].0, "podtrail.session.kind").as_deref(), Some("outbound"));
    assert_eq!(connect.parent_span_id, built[0].0.span_context.span_id());
    assert_eq!(built[0].0.parent_span_id, built[2].0.span_context.span_id());
}

/// Issue 6, scopes: the application (the container's init) spawns `sh -c 'wget ...; tcpdump'`
/// outside any session, and the node's shell runs `ls`. `default`: only the watched tcpdump;
/// `containers`: the `sh -c` tree (sh, wget and its connect) is one `workload` trace and the
/// tcpdump in it a watched trace of its own; `all`: the host's `ls` too, as a `host` trace. The
/// init itself is never a trace, and the tree's connect is not also an outbound record.
#[test]
fn scopes_choose_which_process_trees_outside_sessions_are_recorded() {
    use podtrail::process::activity::ActivityScope;
    let run = |scope: ActivityScope| {
        let mut t = outbound_tracker(|c| c.scope = scope);
        let mut out = start_container_c(&mut t);
        out.extend(t.handle(&fork(40, 1002, 1001, C)));
        out.extend(t.handle(&exec_in(41, 1002, 1001, &["sh", "-c", "wget http://203.0.113.7/x; tcpdump -c1"])));
        out.extend(t.handle(&fork(42, 1003, 1002, C)));
        out.extend(t.handle(&exec_in(43, 1003, 1002, &["wget", "http://203.0.113.7/x"])));
        out.extend(t.handle(&connect_to(44, 1003, C, 77, Transport::Tcp, "203.0.113.7", 80)));
        out.extend(t.handle(&exit(45, 1003, C, 1)));
        out.extend(t.handle(&fork(46, 1004, 1002, C)));
        out.extend(t.handle(&exec_in(47, 1004, 1002, &["tcpdump", "-c1"])));
        out.extend(t.handle(&exit(48, 1004, C, 0)));
        out.extend(t.handle(&exit(49, 1002, C, 0)));
        // the init connects out itself: an outbound record in every scope but sessions
        out.extend(t.handle(&connect_to(50, 1001, C, 78, Transport::Tcp, "203.0.113.8", 443)));
        out.extend(feed(&mut t, spawn(60, X::host(602, 1, &["ls"]))));
        out.extend(t.handle(&exit(62, 602, HOST, 0)));
        out.extend(t.shutdown(100));
        out
    };
    let kinds = |out: &[SessionUpdate]| {
        let mut k: Vec<(SessionKind, String)> =
            started(out).iter().map(|i| (i.kind, String::from_utf8_lossy(&i.root_argv[0]).into_owned())).collect();
        k.sort_by_key(|(k, a)| (k.as_str(), a.clone()));
        k
    };
    let default = run(ActivityScope::Default);
    assert_eq!(
        kinds(&default),
        vec![
            (SessionKind::Outbound, "sleep".into()),
            (SessionKind::Outbound, "wget".into()),
            (SessionKind::Watched, "tcpdump".into())
        ]
    );

    let containers = run(ActivityScope::Containers);
    assert_eq!(
        kinds(&containers),
        vec![
            (SessionKind::Outbound, "sleep".into()),
            (SessionKind::Watched, "tcpdump".into()),
            (SessionKind::Workload, "sh".into())
        ]
    );
    let tree = started(&containers).into_iter().find(|i| i.kind == SessionKind::Workload).unwrap().clone();
    assert_eq!(tree.id, SessionId(key(1002)));
    assert_eq!(tree.container.id, "web");
    let procs = procs_of(&containers, tree.id);
    let mut pids: Vec<u32> = procs.iter().map(|p| p.key.pid).collect();
    pids.sort();
    assert_eq!(pids, vec![1002, 1003], "sh and wget in the tree; tcpdump left for its own trace");
    let wget = procs.iter().find(|p| p.key.pid == 1003).unwrap();
    let c = &wget.images.last().unwrap().connects;
    assert_eq!(c.len(), 1, "the tree keeps its connect");
    assert_eq!(c[0].addr.to_string(), "203.0.113.7");
    let watched = started(&containers).into_iter().find(|i| i.kind == SessionKind::Watched).unwrap().clone();
    assert_eq!(watched.parent_session, Some(tree.id), "the tcpdump trace names the tree it left");
    assert!(ended(&containers).iter().any(|i| i.id == tree.id), "the tree ends with its last member");

    let all = run(ActivityScope::All);
    let k = kinds(&all);
    assert!(k.contains(&(SessionKind::Host, "ls".into())), "{k:?}");
    assert!(k.contains(&(SessionKind::Workload, "sh".into())), "{k:?}");
    assert!(!kinds(&containers).iter().any(|(k, _)| *k == SessionKind::Host));

    let none = run(ActivityScope::Sessions);
    assert!(started(&none).is_empty(), "{:?}", kinds(&none));
}

/// The rate limit's per-container state does not outlive the need for it: once a container's
/// bucket has refilled (burst / rate) and nothing is unmarked, it is dropped, and the next
/// connect starts a full bucket again (the same decision it would have had).
#[test]
fn idle_rate_limit_buckets_are_dropped_once_refilled() {
    let mut t = outbound_tracker(|_| {});
    let mut out = start_container_c(&mut t);
    out.extend(t.handle(&connect_to(1_000, 1001, C, 1, Transport::Tcp, "203.0.113.7", 443)));
    assert_eq!(t.outbound().limited_containers(), 1);
    out.extend(t.tick(30_000_000_000));
    assert_eq!(t.outbound().limited_containers(), 1, "not yet: pruning runs once a minute");
    out.extend(t.tick(61_000_000_000));
    assert_eq!(t.outbound().limited_containers(), 0, "refilled and idle: dropped");
    out.extend(t.handle(&connect_to(62_000_000_000, 1001, C, 2, Transport::Tcp, "203.0.113.8", 443)));
    out.extend(t.shutdown(63_000_000_000));
    assert_eq!(outbound(&out).len(), 2, "both connects recorded");
    assert_eq!(t.outbound().suppressed.get(), 0);
}

/// Issue 14: the kernel's loss counts arrive about a second late; a session that ended in
/// between is marked all the same, however short it was.
#[test]
fn a_short_session_that_ended_before_the_loss_count_arrived_is_marked() {
    use podtrail::process::run::{Control, LOSS_SETTLE};
    let mut t = tracker();
    t.set_loss_settle(LOSS_SETTLE);
    let settle = LOSS_SETTLE.as_nanos() as u64;
    let mut out = start_container_c(&mut t);
    out.extend(feed(&mut t, spawn(35, X::entering(2001, 500, D, 1, &["postgres"]))));
    out.extend(runc_exec(&mut t, 100, 1010, &["ls"]));
    out.extend(t.handle(&exit(110, 1010, C, 0)));
    out.extend(feed(&mut t, spawn(120, X::entering(2010, 500, D, 10, &["psql"]))));
    out.extend(t.handle(&exit(130, 2010, D, 0)));
    assert!(ended(&out).is_empty(), "both wait for the next loss counts");
    // the poll after the end: the kernel lost 4 events of C
    t.control(Control::EventsLost { cgroup_id: C, total: 4 });
    out.extend(t.tick(110 + settle - 1));
    assert!(ended(&out).is_empty(), "not before the wait is over");
    out.extend(t.tick(130 + settle));
    let e = ended(&out);
    assert_eq!(e.len(), 2, "{e:?}");
    let by_root = |pid| e.iter().find(|i| i.id == SessionId(key(pid))).unwrap();
    assert_eq!((by_root(1010).events_lost, by_root(1010).incomplete), (4, true), "ran in C while C lost events");
    assert_eq!((by_root(2010).events_lost, by_root(2010).incomplete), (0, false), "another container");
    assert_eq!(by_root(1010).end_ns, Some(110), "its end is when it ended, not when it left");
    // shutdown lets what still waits go at once
    out.extend(runc_exec(&mut t, 200, 1020, &["id"]));
    out.extend(t.handle(&exit(210, 1020, C, 0)));
    let rest = t.shutdown(220);
    assert_eq!(ended(&rest).iter().map(|i| i.id).collect::<Vec<_>>(), [SessionId(key(1020))]);
}

/// A pod's container that lives less than containerd takes to answer (`timeout 5 tcpdump`
/// failing at once): its watched run has ended, and waits for the loss counts, when the labels
/// come. The root is built from what its `Ended` carries: the labels must reach it there.
#[test]
fn container_labels_reach_a_session_that_ended_before_they_came() {
    use podtrail::process::run::LOSS_SETTLE;
    let mut t = tracker();
    t.set_loss_settle(LOSS_SETTLE);
    let mut out = start_container_c(&mut t);
    out.extend(t.handle(&fork(80, 1050, 1001, C)));
    out.extend(t.handle(&exec_in(81, 1050, 1001, &["tcpdump", "-i", "lo"])));
    out.extend(t.handle(&exit(82, 1050, C, 1)));
    assert!(ended(&out).is_empty(), "waits for the loss counts");
    t.update_container(ContainerInfo {
        id: "web".into(),
        cgroup_id: C,
        pod_namespace: Some("billing".into()),
        pod_name: Some("sniffer".into()),
        container_name: Some("main".into()),
        source: "containerd_labels",
        ..Default::default()
    });
    out.extend(t.tick(82 + LOSS_SETTLE.as_nanos() as u64));
    let e = ended(&out);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].kind, SessionKind::Watched);
    assert_eq!(
        (e[0].container.pod_name.as_deref(), e[0].container.container_name.as_deref(), e[0].container.source),
        (Some("sniffer"), Some("main"), "containerd_labels")
    );
}

/// Issue 14: the kernel could not write a session root's exec; its child's exec inside the
/// container still opens the session, partial and marked.
#[test]
fn a_lost_session_root_exec_still_opens_a_partial_session() {
    let mut t = tracker();
    let mut out = start_container_c(&mut t);
    // runc's child 1010 enters C; its exec of sh is lost; sh forks 1011, which runs ls
    out.extend(t.handle(&fork(100, 1010, 500, HOST)));
    out.extend(t.handle(&fork(110, 1011, 1010, C)));
    out.extend(t.handle(&exec_in(111, 1011, 1010, &["ls", "/"])));
    out.extend(t.handle(&exit(120, 1011, C, 0)));
    out.extend(t.handle(&exit(130, 1010, C, 0)));
    let s = started(&out);
    assert_eq!(s.len(), 1, "{out:?}");
    assert_eq!(s[0].id, SessionId(key(1010)), "rooted at the process whose exec was lost");
    assert_eq!(s[0].kind, SessionKind::Exec);
    assert_eq!(s[0].container.id, "web");
    let e = ended(&out);
    assert_eq!(e.len(), 1);
    assert!(e[0].incomplete && e[0].events_lost >= 1, "{:?}", e[0]);
    let pids: Vec<u32> = procs_of(&out, s[0].id).iter().map(|p| p.key.pid).collect();
    assert_eq!(pids, [1011, 1010]);
    assert_eq!(t.counters().roots_lost.get(), 1);
    // the container's own children (init's) never count as such
    let mut t = tracker();
    let mut out = start_container_c(&mut t);
    out.extend(t.handle(&fork(200, 1020, 1001, C)));
    out.extend(t.handle(&exec_in(201, 1020, 1001, &["ls"])));
    assert!(started(&out).is_empty(), "{out:?}");
    assert_eq!(t.counters().roots_lost.get(), 0);
}

/// A container's init whose own exec the kernel could not write is still its init: pid 1 of
/// a pid namespace of its own. Its child's exec opens no session (a busy node loses the init's
/// exec more often than anything, since the runtime starts many containers at once).
#[test]
fn a_lost_init_exec_opens_no_session_for_the_inits_children() {
    let mut t = tracker();
    let mut out = feed(&mut t, [exec(10, X::host(500, 1, &["containerd-shim"]))]);
    // runc's last child enters C as pid 1 of C's pid namespace; its exec of sh is lost
    let Event::Fork(mut init) = fork(20, 1001, 500, C) else { unreachable!() };
    (init.nspid, init.pidns_ino) = (1, PIDNS_C);
    out.extend(t.handle(&Event::Fork(init)));
    out.extend(t.handle(&fork(30, 1002, 1001, C)));
    out.extend(t.handle(&exec_in(31, 1002, 1001, &["/bin/connect_flood"])));
    assert!(started(&out).is_empty(), "the init's child is in no session: {out:?}");
    assert_eq!(t.counters().roots_lost.get(), 0);
    // and a process runc puts in C from outside later is a session of its own
    out.extend(runc_exec(&mut t, 40, 1010, &["sh"]));
    assert_eq!(started(&out).len(), 1, "{out:?}");
}

/// The `Live` updates of `out`: (pid, what, the record's last image).
fn live(out: &[SessionUpdate]) -> Vec<(u32, Live, &ImageRecord)> {
    out.iter()
        .filter_map(|u| match u {
            SessionUpdate::Live(_, r, what) => r.images.last().map(|i| (r.key.pid, *what, i)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_live_members_connects_datagrams_and_file_operations_are_said_as_they_happen() {
    let mut t = tracker();
    let mut out = start_container_c(&mut t);
    out.extend(runc_exec(&mut t, 100, 1090, &["sh"]));
    out.extend(t.handle(&fork(110, 1091, 1090, C)));
    out.extend(t.handle(&exec_in(111, 1091, 1090, &["nc", "10.0.0.9", "4444"])));
    let before = out.len();
    out.extend(t.handle(&connect(120, 1091, 41, Transport::Tcp, 4444)));
    // said at once: the TCP connect, alone in its image, after the image before it
    let said = live(&out[before..]);
    assert_eq!(said.len(), 1, "{:?}", &out[before..]);
    let (pid, what, img) = said[0];
    assert_eq!((pid, what), (1091, Live::Net { index: 0 }));
    assert_eq!(img.argv[0], b"nc");
    assert_eq!(img.connects.len(), 1);
    assert_eq!((img.connects[0].port, img.connects[0].outcome), (4444, ConnectOutcome::Pending));
    assert!(img.files.is_empty());
    let SessionUpdate::Live(info, rec, _) = &out[before] else { unreachable!() };
    assert_eq!(info.id, SessionId(key(1090)));
    assert_eq!(rec.images.len(), 2, "the inherited sh image says nc is the first exec");
    assert!(rec.images[0].inherited && rec.images[0].connects.is_empty());
    assert_eq!(rec.exit, None, "not final");

    // an outcome says nothing new; a UDP connect waits for its first datagram, and only the
    // first says it; a listen is no rule subject
    let before = out.len();
    out.extend(t.handle(&result(121, 41, 0)));
    out.extend(t.handle(&connect(122, 1091, 42, Transport::Udp, 53)));
    assert!(live(&out[before..]).is_empty(), "{:?}", &out[before..]);
    let first = Event::UdpSend(UdpSendEvent { ts_ns: 123, cgroup_id: C, cookie: 42, bytes: 40, dest: None });
    out.extend(t.handle(&first));
    out.extend(t.handle(&Event::UdpSend(UdpSendEvent {
        ts_ns: 124,
        ..match first {
            Event::UdpSend(u) => u,
            _ => unreachable!(),
        }
    })));
    out.extend(t.handle(&sock(125, 1091, C, SockOp::Listen, "0.0.0.0", 4444)));
    // two datagrams to one destination: one record, said once
    out.extend(t.handle(&sock(126, 1091, C, SockOp::SendTo, "203.0.113.9", 53)));
    out.extend(t.handle(&sock(127, 1091, C, SockOp::SendTo, "203.0.113.9", 53)));
    out.extend(t.handle(&history_truncate(128, 1091)));
    // outside every session: nothing said
    out.extend(t.handle(&connect(129, 424242, 43, Transport::Tcp, 80)));
    let said: Vec<(u32, Live, Vec<u16>, usize)> = live(&out[before..])
        .into_iter()
        .map(|(p, w, i)| (p, w, i.connects.iter().map(|c| c.port).collect(), i.files.len()))
        .collect();
    assert_eq!(
        said,
        vec![
            (1091, Live::Net { index: 1 }, vec![53], 0),
            (1091, Live::Net { index: 3 }, vec![53], 0),
            (1091, Live::File, vec![], 1),
        ]
    );
    let files = live(&out[before..])[2].2.files.clone();
    assert_eq!(files[0].path, b"/root/.ash_history");
    assert!(live(&out[before..])[0].2.connects[0].udp_sent);

    // the final record still carries everything, in the indices the live updates named
    out.extend(t.handle(&exit(130, 1091, C, 0)));
    let procs = procs_of(&out, SessionId(key(1090)));
    let nc = procs.iter().find(|p| p.key.pid == 1091).unwrap();
    let c = &nc.images[1].connects;
    assert_eq!(c.len(), 4);
    assert_eq!((c[0].port, c[1].port, c[2].op, c[3].op), (4444, 53, NetOp::Listen, NetOp::SendTo));
    assert_eq!(c[3].activity.map(|a| a.count), Some(2));
    assert_eq!(nc.images[1].files.len(), 1);
}

#[test]
fn what_is_said_live_is_bounded_by_the_records_an_image_keeps() {
    let mut t = tracker();
    let mut out = start_container_c(&mut t);
    out.extend(runc_exec(&mut t, 100, 1092, &["scan"]));
    // 300 connects to one destination: the first 256 one by one, then one record that folds
    // the rest
    for i in 0..300u64 {
        out.extend(t.handle(&connect(200 + i, 1092, 1_000 + i, Transport::Tcp, 80)));
    }
    assert_eq!(live(&out).iter().filter(|(_, w, _)| matches!(w, Live::Net { .. })).count(), 257);
    // 2 000 destinations more: records up to the image's cap, each said once; past it, counted only
    for i in 0..2_000u64 {
        out.extend(t.handle(&connect(1_000 + i, 1092, 10_000 + i, Transport::Tcp, 1_000 + i as u16)));
    }
    let nets = live(&out).iter().filter(|(_, w, _)| matches!(w, Live::Net { .. })).count();
    assert_eq!(nets, podtrail::process::session::net::MAX_CONNECT_RECORDS);
    // file operations past an image's cap are not said either
    for i in 0..400u64 {
        out.extend(t.handle(&history_truncate(5_000 + i, 1092)));
    }
    let files = live(&out).iter().filter(|(_, w, _)| *w == Live::File).count();
    assert_eq!(files, podtrail::process::session::MAX_FILES_PER_IMAGE);
    out.extend(t.handle(&exit(9_000, 1092, C, 0)));
    let rec = procs_of(&out, SessionId(key(1092)))[0];
    assert_eq!(rec.images[0].connects.len(), podtrail::process::session::net::MAX_CONNECT_RECORDS);
    assert_eq!(rec.images[0].connects_over_cap, 2_000 + 256 + 1 - 1024);
}

/// A container whose cgroup is gone by the time its events are read (a pod's command that
/// exits at once) still opens its sessions in its container: the kernel told the cgroup's id
/// and path at its mkdir, ahead of its processes' events (ebpf/cgroup.bpf.c), and the host's
/// lookup resolves the id from that, with no directory to find.
#[test]
fn a_cgroup_told_at_mkdir_resolves_to_its_container_with_its_directory_gone() {
    use podtrail::process::{cgroup::CgroupIndex, run::HostContainers, run::ProcessOptions};
    const CID: &str = "4f1c0a3b2d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
    let empty = tempfile::tempdir().unwrap();
    let opts =
        ProcessOptions { containerd_socket: None, containerd_state_dirs: Vec::new(), ..ProcessOptions::default() };
    let lookup = HostContainers::new(Some(CgroupIndex::new(empty.path().to_path_buf())), &opts);
    let mut t = SessionTracker::new(Box::new(lookup), HOST_PIDNS, TICK);
    let path = format!("/kubepods/besteffort/pod0b4e1f7a-2c3d-4e5f-8a9b-0c1d2e3f4a5b/{CID}");
    let mkdir = CgroupMkdirEvent {
        ts_ns: 5,
        pid: 500,
        cgroup_id: HOST,
        id: C,
        level: 4,
        path: path.into_bytes(),
        truncated: false,
    };
    let mut out = t.handle(&Event::CgroupMkdir(mkdir));
    assert!(out.is_empty(), "a mkdir is no session update");
    out.extend(start_container_c(&mut t));
    out.extend(runc_exec(&mut t, 100, 1093, &["sh"]));
    let s = started(&out);
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(&*s[0].container.id, CID);
    assert_eq!(s[0].container.pod_uid.as_deref(), Some("0b4e1f7a-2c3d-4e5f-8a9b-0c1d2e3f4a5b"));
    let c = t.cgroup_counts().unwrap();
    // the one walk and the one unresolved id are the host's cgroup (id 1, not in the empty
    // tree): the container's id needed neither
    assert_eq!((c.learned, c.walks, c.unresolved), (1, 1, 1));
}
