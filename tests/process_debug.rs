//! `kubectl debug`: an ephemeral container's init is a session (`debug`), decided once the pod's
//! API object says the container is ephemeral; an ordinary container's init never is.
//! The sequences are what runc does for a container start (the shim forks, the init execs in
//! the new cgroup as pid 1 of its own pid namespace), as in `process_sessions`.

mod support;

use std::sync::{Arc, Mutex};

use podtrail::model::*;
use podtrail::process::containers::ContainerLookup;
use podtrail::process::session::DEBUG_DECISION_NS;
use podtrail::process::SessionTracker;
use support::events::*;

/// The pod index's answer for container C: None until the pod status names it.
#[derive(Clone, Default)]
struct Pod(Arc<Mutex<Option<bool>>>);

impl Pod {
    fn says(&self, ephemeral: bool) {
        *self.0.lock().unwrap() = Some(ephemeral);
    }
}

impl ContainerLookup for Pod {
    fn container(&mut self, cgroup_id: u64) -> Option<ContainerInfo> {
        (cgroup_id == C).then(|| ContainerInfo {
            id: "debugger".into(),
            cgroup_id,
            pod_uid: Some("0b7c6a2e-8c1d-4c52-9d0e-3f4a5b6c7d8e".into()),
            source: "cgroup",
            ..Default::default()
        })
    }
    fn is_ephemeral(&mut self, _cgroup_id: u64, _info: &ContainerInfo) -> Option<bool> {
        *self.0.lock().unwrap()
    }
}

fn tracker_with(pod: &Pod) -> SessionTracker {
    SessionTracker::new(Box::new(pod.clone()), HOST_PIDNS, TICK)
}

/// The shim (500) starts the container's init 1001 (`sh`, with a terminal as `kubectl debug
/// -it` asks), which runs `cat` as 1002 and `ls` as 1003.
fn debug_container_runs(t: &mut SessionTracker, out: &mut Vec<SessionUpdate>) {
    let mut init = exec(11, X::entering(1001, 500, C, 1, &["sh"]));
    if let podtrail::capture::event::Event::Exec(e) = &mut init {
        e.flags.tty = true;
    }
    out.extend(t.handle(&fork(10, 1001, 500, HOST)));
    out.extend(t.handle(&init));
    for ev in spawn(
        20,
        X {
            pid: 1002,
            ppid: 1001,
            cg: C,
            pcg: C,
            nspid: 2,
            pidns: PIDNS_C,
            mnt: MNT_C,
            argv: &["cat", "/etc/hostname"],
        },
    ) {
        out.extend(t.handle(&ev));
    }
    out.extend(t.handle(&exit(30, 1002, C, 0)));
}

fn started(out: &[SessionUpdate]) -> Vec<&SessionInfo> {
    out.iter().filter_map(|u| if let SessionUpdate::Started(i) = u { Some(&**i) } else { None }).collect()
}

fn ended_pids(out: &[SessionUpdate]) -> Vec<u32> {
    out.iter().filter_map(|u| if let SessionUpdate::ProcessEnded(_, r) = u { Some(r.key.pid) } else { None }).collect()
}

#[test]
fn an_ephemeral_containers_init_is_a_debug_session_with_what_ran_before_the_answer() {
    let pod = Pod::default();
    let mut t = tracker_with(&pod);
    let mut out = Vec::new();
    debug_container_runs(&mut t, &mut out);
    out.extend(t.tick(1_000));
    assert!(out.is_empty(), "nothing before the pod says what the container is: {out:?}");

    pod.says(true);
    let out = t.tick(2_000);
    let s = started(&out);
    assert_eq!(s.len(), 1, "{out:?}");
    assert_eq!(s[0].kind, SessionKind::Debug);
    assert_eq!(s[0].id, SessionId(key(1001)));
    assert_eq!(s[0].root_argv, vec![b"sh".to_vec()]);
    assert!(s[0].root_tty);
    assert_eq!(s[0].container.cgroup_id, C);
    assert_eq!(ended_pids(&out), vec![1002], "the cat that ended while undecided is in the session");

    // what the shell runs after the answer is in the same session, and it ends with the shell
    let mut out = Vec::new();
    for ev in
        spawn(3_000, X { pid: 1003, ppid: 1001, cg: C, pcg: C, nspid: 3, pidns: PIDNS_C, mnt: MNT_C, argv: &["ls"] })
    {
        out.extend(t.handle(&ev));
    }
    out.extend(t.handle(&exit(3_100, 1003, C, 0)));
    out.extend(t.handle(&exit(4_000, 1001, C, 0)));
    assert_eq!(ended_pids(&out), vec![1003, 1001]);
    let ends: Vec<&SessionInfo> =
        out.iter().filter_map(|u| if let SessionUpdate::Ended(i, _) = u { Some(&**i) } else { None }).collect();
    assert_eq!(ends.len(), 1);
    assert_eq!(ends[0].id, SessionId(key(1001)));
    assert!(out.iter().all(|u| u.info().kind == SessionKind::Debug));
    assert_eq!(t.sessions(), 0);
}

#[test]
fn a_debug_command_that_ended_before_the_answer_is_a_whole_session() {
    let pod = Pod::default();
    let mut t = tracker_with(&pod);
    let mut out = Vec::new();
    debug_container_runs(&mut t, &mut out);
    out.extend(t.handle(&exit(40, 1001, C, 0)));
    assert!(out.is_empty(), "{out:?}");
    pod.says(true);
    let out = t.tick(2_000);
    assert_eq!(started(&out).len(), 1);
    assert_eq!(ended_pids(&out), vec![1002, 1001]);
    assert!(matches!(out.last(), Some(SessionUpdate::Ended(i, _)) if i.end_ns == Some(40)), "{out:?}");
    assert_eq!(t.sessions(), 0);
}

#[test]
fn an_ordinary_containers_init_is_never_a_session() {
    let pod = Pod::default();
    let mut t = tracker_with(&pod);
    let mut out = Vec::new();
    debug_container_runs(&mut t, &mut out);
    pod.says(false);
    out.extend(t.tick(2_000));
    out.extend(t.handle(&exit(3_000, 1001, C, 0)));
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(t.counters().debug_undecided.get(), 0);
}

#[test]
fn a_container_the_pod_never_names_is_given_up_on_and_counted() {
    let pod = Pod::default();
    let mut t = tracker_with(&pod);
    let mut out = Vec::new();
    debug_container_runs(&mut t, &mut out);
    out.extend(t.tick(11 + DEBUG_DECISION_NS - 1));
    assert_eq!(t.counters().debug_undecided.get(), 0, "still waiting just before the deadline");
    out.extend(t.tick(11 + DEBUG_DECISION_NS));
    assert_eq!(t.counters().debug_undecided.get(), 1);
    // a late answer changes nothing: the container was judged ordinary
    pod.says(true);
    out.extend(t.tick(11 + DEBUG_DECISION_NS + 1));
    assert!(out.is_empty(), "{out:?}");
}
