//! The process stage against real containers: a private containerd + runc started by the
//! harness (tests/common/containers.rs), the real kernel programs, and the session tracker.
//! Needs root and containerd; fails (never skips) under CI when they are missing.

mod common;

use common::containers::Containerd;

#[test]
fn harness_runs_a_container_and_an_exec() {
    let Some(cd) = Containerd::start() else { return };
    let c = cd.run(&[("io.kubernetes.pod.name", "web-0")], &[], &["sleep", "1000"]);
    let out = cd.exec(&c.id, &["sh", "-c", "echo hello; cat /proc/self/cgroup"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("hello"), "{stdout}");
    eprintln!("{stdout}");
    assert!(cd.task_pid(&c.id).is_some());
}
