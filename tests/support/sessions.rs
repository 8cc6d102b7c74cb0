//! Recorded sessions for the span, rules and export tests: the session updates the process
//! stage hands on (builders for sessions, processes, images and connects, and whole sessions
//! recorded by hand: a shell, an nsenter, a loop).

use std::net::IpAddr;

use podtrail::capture::event::{ExitStatus, ProcessKey, Transport};
use podtrail::model::*;
use podtrail::spans::SessionIdentity;

pub const S: u64 = 1_000_000_000;

pub fn key(pid: u32) -> ProcessKey {
    ProcessKey { pid, start_ns: pid as u64 * 1000 }
}

pub fn container() -> ContainerInfo {
    ContainerInfo {
        id: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
        cgroup_id: 4242,
        pod_namespace: Some("billing".into()),
        pod_name: Some("api-7d9f8-x2x7q".into()),
        pod_uid: Some("6f1c9a7e-0000-4000-8000-000000000001".into()),
        container_name: Some("api".into()),
        workload_kind: Some("Deployment".into()),
        workload_name: Some("api".into()),
        node_name: Some("node-1".into()),
        image_name: Some("registry.example:5000/billing/api:1.4.2".into()),
        image_id: Some(
            "registry.example:5000/billing/api@sha256:3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a"
                .into(),
        ),
        pod_labels: vec![("app".into(), "api".into()), ("app.kubernetes.io/name".into(), "billing-api".into())],
        source: "kube_api",
        started_ns: None,
    }
}

pub fn info(root: u32, kind: SessionKind, start: u64, end: Option<u64>) -> SessionInfo {
    SessionInfo {
        end_ns: end,
        root_argv: vec![b"sh".to_vec()],
        root_tty: true,
        ..SessionInfo::new(SessionId(key(root)), kind, container(), start)
    }
}

pub fn image(idx: u32, start: u64, exe: &str, argv: &[&str]) -> ImageRecord {
    ImageRecord {
        exec_index: idx,
        start_ns: start,
        argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
        filename: exe.as_bytes().into(),
        exe_path: exe.as_bytes().into(),
        tty: true,
        ..Default::default()
    }
}

pub fn connect(
    ts: u64,
    t: Transport,
    addr: &str,
    port: u16,
    outcome: ConnectOutcome,
    err: Option<i32>,
    udp_sent: bool,
) -> ConnectRecord {
    ConnectRecord {
        op: podtrail::model::NetOp::Connect,
        local: None,
        ts_ns: ts,
        end_ns: Some(ts + 1_000_000),
        transport: t,
        addr: addr.parse::<IpAddr>().unwrap(),
        port,
        final_addr: None,
        outcome,
        error: err,
        udp_sent,
        activity: None,
        scope: None,
        name: None,
    }
}

pub fn process(
    pid: u32,
    parent: Option<u32>,
    fork: u64,
    exit: u64,
    code: i32,
    images: Vec<ImageRecord>,
) -> ProcessRecord {
    ProcessRecord {
        key: key(pid),
        parent: parent.map(key),
        parent_exec_index: None,
        nspid: pid - 90,
        fork_ns: fork,
        exit_ns: Some(exit),
        exit: Some(ExitStatus::Code(code)),
        from_proc: false,
        images,
        leaf: false,
    }
}

pub fn alice() -> SessionIdentity {
    SessionIdentity {
        source: "audit_webhook",
        confidence: "unique",
        candidates: 1,
        audit_id: Some("4b5f3c7e-8d2a-4f19-9c3e-2a1b0d9e8f70".into()),
        trace_id: Some([
            0x4b, 0x5f, 0x3c, 0x7e, 0x8d, 0x2a, 0x4f, 0x19, 0x9c, 0x3e, 0x2a, 0x1b, 0x0d, 0x9e, 0x8f, 0x70,
        ]),
        user_name: Some("alice@example.com".into()),
        user_uid: Some("u-1234".into()),
        user_groups: vec!["system:authenticated".into(), "sre".into()],
        user_extra: vec![
            "arn=arn:aws:iam::111122223333:role/sre-oncall".into(),
            "authentication.kubernetes.io/credential-id=JTI=7f2c0e4a-1b9d-4c3e-8a5f-0d6e7f8a9b0c".into(),
        ],
        client_address: Some("203.0.113.7".into()),
        user_agent: Some("kubectl/v1.31.0 (linux/amd64) kubernetes/abc".into()),
        request_kind: "exec",
        requested_command: vec!["sh".into()],
        container: Some("api".into()),
        stdin: true,
        tty: true,
        response_code: Some(101),
        ..Default::default()
    }
}

/// An interactive shell: `wget` (busybox applet, re-exec of /proc/self/exe) connecting to a
/// server in the pod, `tar`, a subshell that never exec'd and connects itself, a process that
/// execs twice, and a name lookup (UDP connect without data, then a DNS query).
/// Children end before their parents, as they do.
pub fn shell_session() -> Vec<SessionUpdate> {
    let i = info(100, SessionKind::Exec, 10 * S, None);
    let mut wget = image(0, 12 * S, "/bin/busybox", &["wget", "-q", "-O-", "http://10.244.1.5:8080/"]);
    wget.filename = b"/proc/self/exe"[..].into();
    wget.connects = vec![
        connect(12 * S + 100, Transport::Udp, "10.96.0.10", 53, ConnectOutcome::Connected, None, false),
        connect(12 * S + 200, Transport::Udp, "10.96.0.10", 53, ConnectOutcome::Connected, None, true),
        connect(12 * S + 300, Transport::Tcp, "10.244.1.5", 8080, ConnectOutcome::Connected, None, false),
    ];
    let tar = image(0, 14 * S, "/bin/busybox", &["tar", "czf", "/tmp/x.tgz", "/etc"]);
    let mut sub = image(0, 16 * S, "/bin/busybox", &["sh"]);
    sub.inherited = true;
    sub.connects = vec![connect(
        16 * S + 10,
        Transport::Tcp,
        "::ffff:93.184.216.34",
        443,
        ConnectOutcome::Refused,
        Some(-111),
        false,
    )];
    let env = image(0, 18 * S, "/usr/bin/env", &["env", "ls", "-l"]);
    let ls = image(1, 18 * S + 500, "/bin/ls", &["ls", "-l"]);
    let mut sh2 = image(1, 20 * S, "/bin/busybox", &["sh", "-c", "exit 3"]);
    sh2.tty = false;
    let sh = image(0, 10 * S, "/bin/busybox", &["sh"]);
    // The root re-execs at 20 s (exec sh -c ...): children forked after that hang on image 1.
    let mut late = image(0, 21 * S, "/bin/busybox", &["sleep", "1"]);
    late.tty = false;
    vec![
        SessionUpdate::Started(i.clone().into()),
        SessionUpdate::ProcessEnded(i.clone().into(), process(101, Some(100), 12 * S, 13 * S, 0, vec![wget])),
        SessionUpdate::ProcessEnded(i.clone().into(), process(102, Some(100), 14 * S, 15 * S, 0, vec![tar])),
        SessionUpdate::ProcessEnded(i.clone().into(), process(103, Some(100), 16 * S, 17 * S, 1, vec![sub])),
        SessionUpdate::ProcessEnded(i.clone().into(), process(104, Some(100), 18 * S, 19 * S, 0, vec![env, ls])),
        // killed (SIGTERM): the one process of the session whose status is ERROR
        SessionUpdate::ProcessEnded(
            i.clone().into(),
            ProcessRecord {
                exit: Some(ExitStatus::Signal { signal: 15, core_dumped: false }),
                ..process(105, Some(100), 21 * S, 22 * S, 0, vec![late])
            },
        ),
        SessionUpdate::Ended(
            info(100, SessionKind::Exec, 10 * S, Some(23 * S)).into(),
            vec![process(100, None, 10 * S, 23 * S, 3, vec![sh, sh2])],
        ),
    ]
}

/// Someone on the node joins the container's namespaces (no request: unattributed).
pub fn nsenter_session() -> Vec<SessionUpdate> {
    let mut i = info(200, SessionKind::Node, 5 * S, None);
    i.node_user = Some(1000);
    let mut curl = image(0, 6 * S, "/usr/bin/curl", &["curl", "https://1.1.1.1/"]);
    curl.tty = false;
    curl.connects =
        vec![connect(6 * S + 1, Transport::Tcp, "1.1.1.1", 443, ConnectOutcome::TimedOut, Some(-110), false)];
    let mut sh = image(0, 5 * S, "/usr/bin/nsenter", &["nsenter", "-t", "4242", "-a", "sh"]);
    sh.tty = false;
    let mut ended = i.clone();
    ended.end_ns = Some(8 * S);
    vec![
        SessionUpdate::Started(i.clone().into()),
        SessionUpdate::ProcessEnded(i.clone().into(), process(201, Some(200), 6 * S, 7 * S, 28, vec![curl])),
        SessionUpdate::ProcessEnded(ended.clone().into(), process(200, None, 5 * S, 8 * S, 0, vec![sh])),
        SessionUpdate::Ended(ended.into(), vec![]),
    ]
}

/// A loop: the same command 30 times under one shell, one very long argv.
pub fn loop_session() -> Vec<SessionUpdate> {
    let i = info(300, SessionKind::Exec, S, None);
    let mut out = vec![SessionUpdate::Started(i.clone().into())];
    for n in 0..30u32 {
        let t = 2 * S + n as u64 * 10_000_000;
        let mut img = image(0, t, "/bin/true", &["true"]);
        img.tty = false;
        out.push(SessionUpdate::ProcessEnded(
            i.clone().into(),
            process(400 + n, Some(300), t, t + 1_000_000, 0, vec![img]),
        ));
    }
    let long = "A".repeat(3000);
    let echo = image(0, 3 * S, "/bin/echo", &["echo", "short", &long]);
    out.push(SessionUpdate::ProcessEnded(i.clone().into(), process(500, Some(300), 3 * S, 3 * S + 5, 0, vec![echo])));
    let date = image(0, 3 * S + 10, "/bin/date", &["date"]);
    out.push(SessionUpdate::ProcessEnded(
        i.clone().into(),
        process(501, Some(300), 3 * S + 10, 3 * S + 20, 0, vec![date]),
    ));
    let sh = image(0, S, "/bin/sh", &["sh", "-c", "for i in $(seq 30); do true; done; echo"]);
    out.push(SessionUpdate::Ended(
        info(300, SessionKind::Exec, S, Some(4 * S)).into(),
        vec![process(300, None, S, 4 * S, 0, vec![sh])],
    ));
    out
}

/// Fill `parent_exec_index` as the process stage does: the parent's image current at the
/// child's fork (the last one started at or before it).
pub fn link_parent_images(mut updates: Vec<SessionUpdate>) -> Vec<SessionUpdate> {
    let mut images: std::collections::HashMap<ProcessKey, Vec<(u64, u32)>> = Default::default();
    for u in &updates {
        let recs: Vec<&ProcessRecord> = match u {
            SessionUpdate::ProcessEnded(_, r) => vec![r],
            SessionUpdate::Ended(_, rs) => rs.iter().collect(),
            _ => vec![],
        };
        for r in recs {
            images.insert(r.key, r.images.iter().map(|i| (i.start_ns, i.exec_index)).collect());
        }
    }
    let fill = |r: &mut ProcessRecord| {
        let Some(parent) = r.parent.and_then(|p| images.get(&p)) else { return };
        r.parent_exec_index =
            parent.iter().rev().find(|(start, _)| *start <= r.fork_ns).or(parent.first()).map(|(_, i)| *i);
    };
    for u in &mut updates {
        match u {
            SessionUpdate::ProcessEnded(_, r) => fill(r),
            SessionUpdate::Ended(_, rs) => rs.iter_mut().for_each(fill),
            _ => {}
        }
    }
    updates
}

/// Mark the final records the process stage would call leaves (`ProcessRecord::leaf`): those
/// no later record of the updates names as parent.
pub fn mark_leaves(mut updates: Vec<SessionUpdate>) -> Vec<SessionUpdate> {
    let mut named: std::collections::HashSet<ProcessKey> = Default::default();
    for u in updates.iter_mut().rev() {
        match u {
            SessionUpdate::ProcessEnded(_, r) => {
                r.leaf = !named.contains(&r.key);
                named.extend(r.parent);
            }
            SessionUpdate::Ended(_, rs) => named.extend(rs.iter().filter_map(|r| r.parent)),
            SessionUpdate::Live(_, r, _) => named.extend(r.parent),
            _ => {}
        }
    }
    updates
}
