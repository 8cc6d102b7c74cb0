//! The capture stage against a real container: containerd + runc start a busybox container and
//! `ctr task exec` (a real runc exec, what kubelet does for `kubectl exec`) runs a shell in it.

mod support;

use std::os::unix::fs::MetadataExt;

use podtrail::capture::loader::{find_cgroup2, CaptureOptions};
use support::containers::Containerd;
use support::kernel::capture_while;

#[test]
fn runc_exec_shell_is_in_the_container_with_its_parent_outside() {
    let ctrd = std::sync::Arc::new(Containerd::start());
    let c = ctrd.clone();
    let ((existing, fresh), cap) =
        capture_while(CaptureOptions { ignore_self: false, ..Default::default() }, move || {
            let existing = c.run(&[], &[], &["sleep", "1000"]);
            let out = c.exec(&existing.id, &["sh", "-c", "/bin/true marker-child; echo marker-shell >/dev/null"]);
            assert!(out.status.success(), "ctr task exec: {}", String::from_utf8_lossy(&out.stderr));
            let fresh_init = c.task_pid(&existing.id).unwrap();
            (existing, fresh_init)
        });
    let root = find_cgroup2().expect("cgroup2 mount");
    let cg_dir = root.join(ctrd.cgroup_path(&existing.id).trim_start_matches('/'));
    let cgroup_id = std::fs::metadata(&cg_dir).unwrap_or_else(|e| panic!("{}: {e}", cg_dir.display())).ino();

    // the container's init: nspid 1 in its own pid namespace
    let init = cap.execs().find(|e| e.pid == fresh).expect("exec of the container's init");
    assert_eq!(init.nspid, 1);
    assert_eq!(init.cgroup_id, cgroup_id);

    // the exec'd shell: in the container's cgroup and pid namespace, not pid 1 there, its
    // real_parent (runc) outside both
    let shell = cap
        .execs()
        .find(|e| {
            e.argv.iter().any(|a| a.windows(12).any(|w| w == b"marker-shell"))
                && e.argv.first().map(|a| a.as_slice()) == Some(b"sh")
        })
        .expect("exec of the shell");
    assert_eq!(shell.cgroup_id, cgroup_id, "the exec'd shell is in the container's cgroup");
    assert_ne!(shell.nspid, 1);
    assert_eq!(shell.pidns_ino, init.pidns_ino, "same pid namespace as the init");
    assert!(shell.flags.parent_other_pidns, "runc lives in the host pid namespace");
    assert!(shell.flags.parent_other_cgroup, "runc is outside the container's cgroup");
    assert!(shell.flags.env_scanned, "a possible session root has its environment searched");
    assert_eq!(&shell.exe_path[..], b"/bin/busybox", "the path as seen inside the container");

    // the shell's child: same namespace and cgroup as its parent
    let child =
        cap.execs().find(|e| e.argv.get(1).map(|a| a.as_slice()) == Some(b"marker-child")).expect("exec of the child");
    assert_eq!(child.ppid, shell.pid);
    assert!(!child.flags.parent_other_pidns);
    assert!(!child.flags.parent_other_cgroup);
    assert_eq!(child.pidns_ino, shell.pidns_ino);
    assert_ne!(child.nspid, 1);
    drop(ctrd);
}
