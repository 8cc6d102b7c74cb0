//! File hooks against the real kernel: every way of wiping a shell history is seen, with the
//! path made absolute; ordinary files are not reported at all (filtered in the kernel).

mod support;

use std::process::Command;

use podtrail::capture::{
    event::{Event, FileEvent, FileOp},
    loader::CaptureOptions,
};
use support::kernel::{capture_while, run};

fn sh(dir: &std::path::Path, script: &str) {
    let st = Command::new("/bin/sh").arg("-c").arg(script).current_dir(dir).status().unwrap();
    assert!(st.success(), "{script}");
}

fn files(events: &[Event]) -> Vec<FileEvent> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::File(f) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

fn seen(fs: &[FileEvent], op: FileOp, path: &str) -> bool {
    fs.iter().any(|f| {
        f.op == op && (f.path == path.as_bytes() || f.path2.as_deref() == Some(path.as_bytes())) && f.result >= 0
    })
}

#[test]
fn history_tampering_is_seen_every_way_with_absolute_paths() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path().to_path_buf();
    let d = h.display().to_string();
    let ((), cap) = capture_while(CaptureOptions { ignore_self: false, ..Default::default() }, move || {
        // absolute rm
        sh(&h, &format!("echo ls > {d}/.bash_history && rm {d}/.bash_history"));
        // relative rm after cd
        sh(&h, "echo ls > .ash_history; cd . && rm .ash_history");
        // unlinkat with a directory fd
        sh(&h, "echo ls > .zsh_history");
        let st = Command::new("python3")
            .arg("-c")
            .arg(format!(
                "import os\nfd = os.open('{d}', os.O_RDONLY | os.O_DIRECTORY)\nos.unlink('.zsh_history', dir_fd=fd)"
            ))
            .current_dir("/")
            .status()
            .unwrap();
        assert!(st.success());
        // truncation, by path and by descriptor
        sh(&h, "echo ls > .sh_history; truncate -s 0 .sh_history; : > .sh_history");
        let st = Command::new("python3")
            .arg("-c")
            .arg(format!("import os\nf = open('{d}/.sh_history', 'r+')\nos.ftruncate(f.fileno(), 0)"))
            .status()
            .unwrap();
        assert!(st.success());
        // a symlink to /dev/null in its place
        sh(&h, "ln -sf /dev/null .python_history");
        // an ordinary file: never reported
        sh(&h, "echo x > notes.txt; rm notes.txt");
    });
    let fs = files(&cap.events);
    let p = |n: &str| format!("{}/{n}", home.path().display());
    assert!(seen(&fs, FileOp::Unlink, &p(".bash_history")), "absolute rm: {fs:#?}");
    assert!(seen(&fs, FileOp::Unlink, &p(".ash_history")), "relative rm");
    assert!(seen(&fs, FileOp::Unlink, &p(".zsh_history")), "unlinkat with a directory fd");
    assert!(seen(&fs, FileOp::Truncate, &p(".sh_history")), "truncate(1)");
    assert!(
        fs.iter().filter(|f| f.op == FileOp::Truncate && f.path == p(".sh_history").as_bytes()).count() >= 2,
        "ftruncate by fd too"
    );
    assert!(
        fs.iter().any(|f| f.op == FileOp::Open
            && f.write
            && f.flags & libc::O_TRUNC as u32 != 0
            && f.path == p(".sh_history").as_bytes()),
        "`: >` opens with O_TRUNC"
    );
    let link = fs.iter().find(|f| f.op == FileOp::Symlink).expect("symlink event");
    assert_eq!(link.path, b"/dev/null");
    assert_eq!(link.path2.as_deref(), Some(p(".python_history").as_bytes()));
    assert!(!fs.iter().any(|f| f.path.ends_with(b"notes.txt")), "ordinary files are filtered in the kernel");
}

#[test]
fn reading_a_secret_is_seen_and_reading_passwd_is_not() {
    let ((), cap) = capture_while(CaptureOptions { ignore_self: false, ..Default::default() }, || {
        sh(std::path::Path::new("/"), "cat /etc/shadow >/dev/null; cat /etc/passwd > /dev/null");
    });
    let fs = files(&cap.events);
    assert!(fs.iter().any(|f| f.op == FileOp::Open && !f.write && f.path == b"/etc/shadow"), "{fs:#?}");
    assert!(
        !fs.iter().any(|f| f.op == FileOp::Open && !f.write && f.path == b"/etc/passwd"),
        "passwd reads are routine: not watched"
    );
}

#[test]
fn a_freshly_written_executable_carries_its_change_time() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("payload");
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    std::fs::copy("/bin/true", &bin).unwrap();
    let b2 = bin.clone();
    let (pid, cap) = capture_while(CaptureOptions { ignore_self: false, ..Default::default() }, move || {
        let (pid, _) = run(Command::new(&b2).arg("new"));
        let (old, _) = run(Command::new("/bin/true").arg("old"));
        (pid, old)
    });
    let fresh = cap.execs().find(|e| e.pid == pid.0).expect("exec of the fresh file");
    assert!(fresh.exe_ctime_ns >= before - 1_000_000_000, "ctime {} before {}", fresh.exe_ctime_ns, before);
    let old = cap.execs().find(|e| e.pid == pid.1).expect("exec of /bin/true");
    assert!(old.exe_ctime_ns < before, "the system's /bin/true was not just written");
}
