//! Every road to a shell history that does not say its name (issue 18, "file hooks that
//! follow the file"), from real containers and real kernel events through `podtrail run` to
//! its OTLP/JSON file. Each trick truncates, writes or removes `/root/.ash_history` by another
//! road, and the trail must name the history itself:
//! - through a symlink, `/proc/self/fd/N` and a fresh hard link (the open is judged at exit
//!   by the file its descriptor names, resolved from the kernel's dentries);
//! - through `creat(2)` and `fchmodat2(2)`, called as raw syscalls;
//! - through a path longer than the kernel-side path buffer (256 bytes);
//! - through io_uring (a C program the test compiles, using io_uring's raw syscalls): openat,
//!   write, unlinkat and socket requests, none a file syscall;
//!
//! And a process span carries `process.working_directory` from a real `cd /tmp && cmd`.

mod support;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::agent::{containerd_config, FileAgent};
use support::containers::Containerd;
use support::otlp_json::{self, Span};

const HOST_USR: &str = "type=bind,src=/usr,dst=/usr,options=rbind:ro";
const HISTORY: &str = "/root/.ash_history";
const RULE: &str = "Shell history tampering";
const O_CREAT: i64 = 0o100;
const O_TRUNC: i64 = 0o1000;

/// The image: busybox with `ln`, a history, the host's /usr (python3 for raw syscalls, the C
/// library for the io_uring program), and that program compiled into /bin.
fn prepare(root: &Path) {
    std::fs::create_dir_all(root.join("usr")).unwrap();
    for l in ["lib", "lib64"] {
        if !root.join(l).exists() {
            symlink(format!("usr/{l}"), root.join(l)).unwrap();
        }
    }
    for a in ["ln", "rm"] {
        let link = root.join("bin").join(a);
        if !link.exists() {
            symlink("busybox", link).unwrap();
        }
    }
    std::fs::write(root.join("root/.ash_history"), "ls\n").unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/uring_files.c");
    let out = Command::new("clang")
        .args(["-O1", "-Wall", "-o"])
        .arg(root.join("bin/uring_files"))
        .arg(&src)
        .output()
        .expect("this test needs clang on the host (it builds podtrail's kernel side too)");
    assert!(out.status.success(), "compiling {}: {}", src.display(), String::from_utf8_lossy(&out.stderr));
}

/// The spans of the trace whose session ran `/bin/true MARK`.
fn trace_of<'a>(spans: &'a [Span], mark: &str) -> Vec<&'a Span> {
    let m = spans.iter().find(|s| s.args().iter().any(|a| a == mark)).unwrap_or_else(|| {
        panic!("no span ran {mark}: {:#?}", spans.iter().map(|s| (&s.name, s.args())).collect::<Vec<_>>())
    });
    spans.iter().filter(|s| s.trace_id == m.trace_id).collect()
}

/// Every file event (`file <op>`) of a trace, as (span name, attributes).
fn file_events(trace: &[&Span]) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for s in trace {
        for (name, _) in &s.events {
            if name.starts_with("file ") {
                out.extend(s.events_named(name).into_iter().map(|a| (s.name.clone(), a)));
            }
        }
    }
    out.sort_by_key(|(_, a)| a.to_string());
    out.dedup();
    out
}

/// The history alerts of a trace (their event attributes).
fn history_alerts(trace: &[&Span]) -> Vec<Value> {
    trace.iter().flat_map(|s| s.events_named("alert")).filter(|a| a["security_rule.name"] == RULE).collect()
}

fn flags(a: &Value) -> i64 {
    a["podtrail.file.flags"].as_i64().unwrap_or(0)
}

#[test]
fn a_history_reached_by_another_road_is_named_in_the_trail() {
    let cd = Containerd::start();
    let mut agent = FileAgent::start(&containerd_config(&cd.address, &cd.namespace, "[metrics]\nlisten = \"\"\n"), &[]);
    let c = cd.run_prepared(&[], &["--mount", HOST_USR], &["sleep", "3600"], &prepare);
    let long = format!("/root{}/.ash_history", "/.".repeat(150));
    assert!(long.len() > 300);
    let py = |code: &str| format!("/usr/bin/python3 -c \"import ctypes; l = ctypes.CDLL(None); {code}\"");
    let tricks: Vec<(&str, String)> = vec![
        ("mark-symlink", "ln -s /root/.ash_history /tmp/l; : > /tmp/l".into()),
        ("mark-procfd", "exec 3>>/root/.ash_history; : > /proc/self/fd/3".into()),
        ("mark-hardlink", "ln /root/.ash_history /tmp/h; : > /tmp/h".into()),
        // creat (85) and fchmodat2 (452) as raw syscalls: nothing else opens or chmods there
        ("mark-creat", py("assert l.syscall(85, b'/root/.ash_history', 0o600) >= 0")),
        ("mark-fchmodat2", py("assert l.syscall(452, -100, b'/root/.ash_history', 0o640, 0) == 0")),
        ("mark-long", format!(": > {long}; rm {long}")),
        ("mark-uring", "/bin/uring_files /root/.ash_history".into()),
        ("mark-cwd", "cd /tmp && /bin/true mark-cwd-inner".into()),
    ];
    for (mark, trick) in &tricks {
        // each in its own session; the history is put back first (appending: not tampering)
        let script = format!("echo ls >> {HISTORY}; /bin/true {mark}; {trick}");
        let x = cd.exec(&c.id, &["sh", "-c", &script]);
        assert!(
            x.status.success(),
            "{mark}: {}{}",
            String::from_utf8_lossy(&x.stdout),
            String::from_utf8_lossy(&x.stderr)
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    agent.terminate();
    let spans = otlp_json::read(&agent.file());

    // symlink, /proc/self/fd/N, hard link: the open names the history, beside the name given
    for (mark, given) in [("mark-symlink", "/tmp/l"), ("mark-procfd", "/proc/self/fd/3"), ("mark-hardlink", "/tmp/h")] {
        let trace = trace_of(&spans, mark);
        let files = file_events(&trace);
        let hit = files.iter().find(|(_, a)| {
            a["podtrail.file.op"] == "open"
                && a["file.path"] == HISTORY
                && a["podtrail.file.given_path"] == given
                && flags(a) & O_TRUNC != 0
        });
        assert!(hit.is_some(), "{mark}: no truncating open of {HISTORY} given as {given}: {files:#?}");
        let alerts = history_alerts(&trace);
        assert!(
            alerts.iter().any(|a| a["file.path"] == HISTORY
                && a["podtrail.file.op"] == "open"
                && a["podtrail.file.given_path"] == given),
            "{mark}: the history rule fired on the history, naming the road ({given}): {alerts:#?}"
        );
    }

    // creat: an open for writing that creates and truncates
    let trace = trace_of(&spans, "mark-creat");
    let files = file_events(&trace);
    assert!(
        files.iter().any(|(s, a)| s == "python3"
            && a["podtrail.file.op"] == "open"
            && a["file.path"] == HISTORY
            && flags(a) & (O_CREAT | O_TRUNC) == O_CREAT | O_TRUNC),
        "creat: {files:#?}"
    );
    assert!(!history_alerts(&trace).is_empty(), "creat truncates the history: an alert");

    // fchmodat2: a chmod with its mode
    let files = file_events(&trace_of(&spans, "mark-fchmodat2"));
    assert!(
        files.iter().any(|(s, a)| s == "python3"
            && a["podtrail.file.op"] == "chmod"
            && a["file.path"] == HISTORY
            && a["podtrail.file.flags"] == 0o640),
        "fchmodat2: {files:#?}"
    );

    // a path longer than the kernel-side buffer: the open resolves to the history; the
    // unlink (path-only: no descriptor) keeps the path's tail, its base name whole
    let trace = trace_of(&spans, "mark-long");
    let files = file_events(&trace);
    assert!(
        files.iter().any(|(_, a)| a["podtrail.file.op"] == "open"
            && a["file.path"] == HISTORY
            && flags(a) & O_TRUNC != 0
            && a["podtrail.file.given_path"]
                .as_str()
                .is_some_and(|g| g.starts_with("...") && g.ends_with("/./.ash_history"))),
        "long path open: {files:#?}"
    );
    assert!(
        // busybox runs rm inside the shell (a NOFORK applet): whichever span, the unlink
        files.iter().any(|(_, a)| a["podtrail.file.op"] == "unlink"
            && a["podtrail.file.truncated"] == true
            && a["file.path"].as_str().is_some_and(|p| p.starts_with("...") && p.ends_with("/./.ash_history"))),
        "long path unlink: {files:#?}"
    );
    let alerts = history_alerts(&trace);
    assert!(alerts.iter().any(|a| a["podtrail.file.op"] == "open"), "long path: {alerts:#?}");
    assert!(alerts.iter().any(|a| a["podtrail.file.op"] == "unlink"), "long path: {alerts:#?}");

    // io_uring: each request, with its opcode; the history named for the file operations
    let trace = trace_of(&spans, "mark-uring");
    let files: Vec<(String, Value)> = file_events(&trace).into_iter().filter(|(s, _)| s == "uring_files").collect();
    let uring = |op: &str| files.iter().find(|(_, a)| a["podtrail.file.io_uring.op"] == op).map(|(_, a)| a.clone());
    let open = uring("openat").unwrap_or_else(|| panic!("io_uring openat: {files:#?}"));
    assert_eq!((open["podtrail.file.op"].as_str(), open["file.path"].as_str()), (Some("open"), Some(HISTORY)));
    assert!(flags(&open) & O_TRUNC != 0, "{open:#?}");
    let write = uring("write").unwrap_or_else(|| panic!("io_uring write: {files:#?}"));
    assert_eq!((write["podtrail.file.op"].as_str(), write["file.path"].as_str()), (Some("io_uring"), Some(HISTORY)));
    let unlink = uring("unlinkat").unwrap_or_else(|| panic!("io_uring unlinkat: {files:#?}"));
    assert_eq!((unlink["podtrail.file.op"].as_str(), unlink["file.path"].as_str()), (Some("unlink"), Some(HISTORY)));
    let socket = uring("socket").unwrap_or_else(|| panic!("io_uring socket: {files:#?}"));
    assert_eq!(socket["podtrail.file.op"], "io_uring");
    let alerts = history_alerts(&trace);
    assert!(
        alerts.iter().any(|a| a["podtrail.file.op"] == "unlink" && a["file.path"] == HISTORY)
            && alerts.iter().any(|a| a["podtrail.file.op"] == "open"
                && a["file.path"] == HISTORY
                && a["podtrail.file.io_uring.op"] == "openat"),
        "io_uring's truncation and unlink raise the history rule, naming the opcode: {alerts:#?}"
    );

    // process.working_directory from the exec hook's walk of the task's cwd
    let trace = trace_of(&spans, "mark-cwd");
    let inner =
        trace.iter().find(|s| s.args().iter().any(|a| a == "mark-cwd-inner")).expect("the command run after cd");
    assert_eq!(inner.text("process.working_directory").as_deref(), Some("/tmp"), "{inner:#?}");
    let outer = trace.iter().find(|s| s.args().iter().any(|a| a == "mark-cwd")).unwrap();
    assert_eq!(outer.text("process.working_directory").as_deref(), Some("/"), "ctr exec starts in /: {outer:#?}");
}
