//! Recorded kernel events -> exec sessions. The events are what `podtrail capture` printed for
//! a real `ctr task exec` into a real busybox container (tests/fixtures/capture/record.py
//! records them again; the `.meta.json` beside each says what ran). Pure: no kernel, no
//! containers at test time. Where tests/process_sessions.rs spells out each scenario by hand,
//! these show the tracker reading what runc, busybox and the kernel really emit, including what
//! nobody would write by hand: busybox running `id` in a fork that never execs, the shell's
//! last command exec'd in place of the shell, the shim as the parent of record.

mod support;

use std::net::IpAddr;
use std::path::Path;

use podtrail::capture::event::*;
use podtrail::model::*;
use podtrail::process::containers::StaticContainers;
use podtrail::process::SessionTracker;
use support::events::{ended, procs_of, started};

struct Recording {
    events: Vec<Event>,
    cgroup: u64,
    host_pidns: u32,
    exec: Vec<String>,
}

/// `tests/fixtures/capture/<name>.jsonl` read back with the same types `podtrail capture`
/// printed them from, and its `.meta.json`.
fn recording(name: &str) -> Recording {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/capture");
    let text = std::fs::read_to_string(dir.join(format!("{name}.jsonl"))).unwrap();
    let events = text
        .lines()
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}.jsonl:{}: {e}", i + 1)))
        .collect();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.meta.json"))).unwrap()).unwrap();
    Recording {
        events,
        cgroup: meta["container_cgroup_id"].as_u64().unwrap(),
        host_pidns: meta["host_pidns_ino"].as_u64().unwrap() as u32,
        exec: meta["exec"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect(),
    }
}

fn replay(r: &Recording) -> (SessionTracker, Vec<SessionUpdate>) {
    let lookup = StaticContainers::default().with(r.cgroup, "rec");
    let mut t = SessionTracker::new(Box::new(lookup), r.host_pidns, 10_000_000);
    let mut out = Vec::new();
    for e in &r.events {
        out.extend(t.handle(e));
    }
    (t, out)
}

fn argv(p: &ProcessRecord) -> Vec<String> {
    p.images.last().unwrap().argv.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect()
}

#[test]
fn a_recorded_ctr_exec_is_one_session_with_the_shells_commands_and_not_the_init() {
    let r = recording("exec_session");
    let (_t, out) = replay(&r);

    let s = started(&out);
    assert_eq!(s.len(), 1, "one session: the exec, not the container's start: {s:#?}");
    assert_eq!(s[0].kind, SessionKind::Exec);
    assert_eq!(s[0].container.id, "rec");
    let root_argv: Vec<String> = s[0].root_argv.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    assert_eq!(root_argv, r.exec);
    let e = ended(&out);
    assert_eq!(e.len(), 1, "the session ended when its shell did");
    assert!(!e[0].incomplete, "nothing was lost in the recording");

    let sid = s[0].id;
    let procs = procs_of(&out, sid);
    let root = procs.iter().find(|p| p.key == sid.0).expect("the root's record");
    // the shell exec'd its last command in its own place: one process, two images
    let images: Vec<&[u8]> = root.images.iter().map(|i| i.argv[0].as_slice()).collect();
    assert_eq!(images, vec![b"sh".as_slice(), b"sleep"]);
    let children: Vec<&&ProcessRecord> = procs.iter().filter(|p| p.key != sid.0).collect();
    assert!(children.iter().all(|p| p.parent == Some(sid.0)), "every command is the shell's child");
    let mut commands: Vec<Vec<String>> = children.iter().map(|p| argv(p)).collect();
    commands.sort();
    assert_eq!(
        commands,
        vec![
            vec!["cat".to_owned(), "/etc/hostname".into()],
            vec!["nc".into(), "-w".into(), "1".into(), "192.0.2.10".into(), "81".into()],
            // busybox ran `id` in a fork without an exec: the child shows the shell's image
            r.exec.clone(),
            vec!["wc".into(), "-c".into()],
        ]
    );
    // `ctr task exec` starts in the spec's cwd, and each exec'd image says where it ran
    for p in procs.iter() {
        for i in p.images.iter().filter(|i| !i.inherited) {
            assert_eq!(i.cwd.as_deref(), Some(b"/".as_slice()), "{:?}", i.argv);
        }
    }
    let forked = children.iter().find(|p| argv(p) == r.exec).unwrap();
    assert!(forked.images.iter().all(|i| i.inherited), "the fork that never exec'd only inherits");

    let nc = children.iter().find(|p| argv(p)[0] == "nc").unwrap();
    let connects = &nc.images.last().unwrap().connects;
    assert_eq!(connects.len(), 1);
    assert_eq!(connects[0].addr, "192.0.2.10".parse::<IpAddr>().unwrap());
    assert_eq!(connects[0].port, 81);
    assert_eq!(connects[0].outcome, ConnectOutcome::Unreachable, "the container has no route out");
    assert_eq!(nc.exit, Some(ExitStatus::Code(1)));

    let init_pid = r
        .events
        .iter()
        .find_map(|e| match e {
            Event::Exec(x) if x.argv.first().map(|a| a.as_slice()) == Some(b"sleep") && x.nspid == 1 => Some(x.pid),
            _ => None,
        })
        .expect("the init's exec is in the recording");
    assert!(procs.iter().all(|p| p.key.pid != init_pid), "the container's init is no part of the session");
}

#[test]
fn the_recording_reads_back_as_the_capture_wrote_it() {
    // Each line decodes into an Event and encodes to the same JSON: the fixture is the
    // capture's own format, not a test-only dialect.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/capture");
    let text = std::fs::read_to_string(dir.join("exec_session.jsonl")).unwrap();
    for (i, line) in text.lines().enumerate() {
        let e: Event = serde_json::from_str(line).unwrap();
        let again: serde_json::Value = serde_json::to_value(&e).unwrap();
        let orig: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(again, orig, "line {}", i + 1);
    }
}
