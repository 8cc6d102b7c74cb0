//! The process stage against real containers: a private containerd + runc started by the
//! harness (tests/support/containers.rs), the real kernel programs, and the session stage task.
//! Needs root, a kernel with BTF and containerd; fails (never skips) when one is missing.

mod support;

use std::{
    io::{Read, Write},
    net::TcpListener,
    path::PathBuf,
    sync::Mutex,
    time::Duration,
};

use podtrail::capture::loader::{Capture, CaptureOptions};
use podtrail::model::{ProcessRecord, SessionInfo, SessionKind, SessionUpdate};
use podtrail::process::containerd::ContainerdClient;
use podtrail::process::metrics::ProcessMetrics;
use podtrail::process::run::{run, ProcessOptions};
use support::containers::{Container, Containerd};
use tokio::sync::mpsc;

/// One kernel capture at a time in this binary: the tests count sessions per container, and
/// parallel loads would only slow each other down.
static SERIAL: Mutex<()> = Mutex::new(());

fn opts(cd: &Containerd) -> ProcessOptions {
    ProcessOptions {
        containerd_socket: Some(cd.address.clone()),
        containerd_state_dirs: vec![cd.dir.join("state")],
        ..Default::default()
    }
}

/// A session as it ended: its info and every process record it produced.
#[derive(Debug)]
struct Finished {
    started: SessionInfo,
    ended: Option<SessionInfo>,
    procs: Vec<ProcessRecord>,
}

impl Finished {
    fn commands(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .procs
            .iter()
            .flat_map(|p| {
                p.images
                    .iter()
                    .filter(|i| !i.inherited)
                    .map(|i| String::from_utf8_lossy(&i.command_name()).into_owned())
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

fn sessions_of(updates: &[SessionUpdate], container: &str) -> Vec<Finished> {
    let mut out: Vec<Finished> = Vec::new();
    for u in updates {
        match u {
            SessionUpdate::Started(i) if i.container.id == container => {
                out.push(Finished { started: (**i).clone(), ended: None, procs: vec![] })
            }
            SessionUpdate::ProcessEnded(i, r) => {
                if let Some(f) = out.iter_mut().find(|f| f.started.id == i.id) {
                    f.procs.push(r.clone());
                }
            }
            SessionUpdate::Ended(i, rest) => {
                if let Some(f) = out.iter_mut().find(|f| f.started.id == i.id) {
                    f.ended = Some((**i).clone());
                    f.procs.extend(rest.iter().cloned());
                }
            }
            _ => {}
        }
    }
    out
}

/// Runs the capture and the process stage while `work` runs, then until `settle` has passed
/// after it, and returns every update.
fn track_while<T: Send + 'static>(
    opts: ProcessOptions,
    settle: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> (T, Vec<SessionUpdate>) {
    support::prereq::kernel();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let mut cap = Capture::start(CaptureOptions::default()).expect("load the BPF programs");
        let events = std::mem::replace(&mut cap.events, mpsc::channel(1).1);
        let (ev_tx, ev_rx) = mpsc::channel(65536);
        let (tx, mut rx) = mpsc::channel(65536);
        let (_control, control_rx) = mpsc::channel(16);
        let stage = tokio::spawn(run(ev_rx, tx, opts, ProcessMetrics::default(), control_rx));
        // forward capture -> stage so that stopping the capture closes the stage's input
        let fwd = tokio::spawn(async move {
            let mut events = events;
            while let Some(e) = events.recv().await {
                if ev_tx.send(e).await.is_err() {
                    break;
                }
            }
        });
        let collected = tokio::spawn(async move {
            let mut v = Vec::new();
            while let Some(batch) = rx.recv().await {
                v.extend(batch);
            }
            v
        });
        let out = tokio::task::spawn_blocking(work).await.expect("workload panicked");
        tokio::time::sleep(settle).await;
        cap.stop().await;
        let _ = fwd.await;
        let _ = stage.await;
        (out, collected.await.unwrap())
    })
}

fn run_ok(cd: &Containerd, c: &Container, script: &str) -> String {
    let out = cd.exec(&c.id, &["sh", "-c", script]);
    assert!(out.status.success(), "exec {script}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn exec_with_background_child_and_connect_is_one_session_and_the_init_none() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cd = Containerd::start();
    let labels = [
        ("io.kubernetes.pod.name", "web-0"),
        ("io.kubernetes.pod.namespace", "billing"),
        ("io.kubernetes.container.name", "app"),
    ];
    // the container's own processes keep forking and exec'ing: none of them is a session
    let c = cd.run(&labels, &["--net-host"], &["sh", "-c", "while true; do sleep 0.2; done"]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let mut s = s;
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
        }
    });
    let script = format!("sleep 2 & wget -q -O /dev/null http://127.0.0.1:{port}/; /bin/id; true");
    let (cd, updates) = track_while(opts(&cd), Duration::from_millis(2500), {
        let c = c.clone();
        move || {
            std::thread::sleep(Duration::from_millis(300));
            run_ok(&cd, &c, &script);
            cd
        }
    });
    let s = sessions_of(&updates, &c.id);
    assert_eq!(s.len(), 1, "{s:#?}");
    let s = &s[0];
    assert_eq!(s.started.kind, SessionKind::Exec);
    assert_eq!(s.started.root_argv[0], b"sh");
    assert!(!s.started.from_proc);
    let ended = s.ended.as_ref().expect("the session ended with its background sleep");
    assert!(!ended.incomplete);
    assert_eq!(ended.container.pod_name.as_deref(), Some("web-0"), "containerd labels reached the session");
    assert_eq!(ended.container.pod_namespace.as_deref(), Some("billing"));
    assert_eq!(s.commands(), vec!["id", "sh", "sleep", "wget"]);
    let sleep = s
        .procs
        .iter()
        .find(|p| p.images.iter().any(|i| i.argv.first().map(|a| a.as_slice()) == Some(b"sleep")))
        .unwrap();
    let root = s.procs.iter().find(|p| p.key == s.started.id.0).unwrap();
    assert!(sleep.exit_ns > root.exit_ns, "the background sleep outlived the shell");
    let connects: Vec<_> = s.procs.iter().flat_map(|p| p.images.iter().flat_map(|i| i.connects.iter())).collect();
    let tcp: Vec<_> = connects.iter().filter(|c| c.port == port).collect();
    assert_eq!(tcp.len(), 1, "{connects:#?}");
    assert_eq!(tcp[0].outcome.as_str(), "connected");
    drop(cd);
}

#[test]
fn two_concurrent_execs_are_two_sessions() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cd = Containerd::start();
    let c = cd.run(&[], &[], &["sleep", "1000"]);
    let (cd, updates) = track_while(opts(&cd), Duration::from_millis(700), {
        let c = c.clone();
        move || {
            std::thread::sleep(Duration::from_millis(300));
            let a = cd.exec_cmd(&c.id, &["sh", "-c", "sleep 1; echo a; /bin/id"]).spawn().unwrap();
            let b = cd.exec_cmd(&c.id, &["sh", "-c", "sleep 1; echo b; /bin/hostname"]).spawn().unwrap();
            assert!(a.wait_with_output().unwrap().status.success());
            assert!(b.wait_with_output().unwrap().status.success());
            cd
        }
    });
    let s = sessions_of(&updates, &c.id);
    assert_eq!(s.len(), 2, "{s:#?}");
    let mut cmds: Vec<Vec<String>> = s.iter().map(|f| f.commands()).collect();
    cmds.sort();
    assert_eq!(cmds, vec![vec!["hostname", "sh", "sleep"], vec!["id", "sh", "sleep"]]);
    assert!(s.iter().all(|f| f.ended.is_some()));
    drop(cd);
}

#[test]
fn shared_and_host_pid_namespace_inits_are_not_sessions_but_their_execs_are() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cd = Containerd::start();
    let a = cd.run(&[], &[], &["sleep", "1000"]);
    let a_pid = cd.task_pid(&a.id).unwrap();
    let ((cd, shared, host), updates) = track_while(opts(&cd), Duration::from_millis(700), {
        move || {
            std::thread::sleep(Duration::from_millis(300));
            let ns = format!("pid:/proc/{a_pid}/ns/pid");
            let shared = cd.run(&[], &["--with-ns", &ns], &["sh", "-c", "while true; do sleep 0.2; done"]);
            // our own pid namespace is the host's (pid 1's link may be unreadable in a sandbox)
            let own = format!("pid:/proc/{}/ns/pid", std::process::id());
            let host = cd.run(&[], &["--with-ns", &own], &["sh", "-c", "while true; do sleep 0.2; done"]);
            std::thread::sleep(Duration::from_millis(500));
            run_ok(&cd, &shared, "/bin/id");
            run_ok(&cd, &host, "/bin/id");
            (cd, shared, host)
        }
    });
    for c in [&shared, &host] {
        let s = sessions_of(&updates, &c.id);
        assert_eq!(s.len(), 1, "{}: {s:#?}", c.id);
        assert_eq!(s[0].started.root_argv, vec![b"sh".to_vec(), b"-c".to_vec(), b"/bin/id".to_vec()]);
    }
    drop(cd);
}

#[test]
fn nsenter_from_the_host_is_a_node_session() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cd = Containerd::start();
    let c = cd.run(&[], &[], &["sleep", "1000"]);
    let pid = cd.task_pid(&c.id).unwrap().to_string();
    let (cd, updates) = track_while(opts(&cd), Duration::from_millis(700), move || {
        std::thread::sleep(Duration::from_millis(300));
        let out = std::process::Command::new("nsenter")
            .args(["-t", &pid, "-a", "sh", "-c", "/bin/id; /bin/hostname"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        cd
    });
    let s = sessions_of(&updates, &c.id);
    assert_eq!(s.len(), 1, "{s:#?}");
    assert_eq!(s[0].started.kind, SessionKind::Node);
    assert_eq!(s[0].started.root_argv[0], b"nsenter");
    assert!(s[0].commands().contains(&"id".to_string()), "{:?}", s[0].commands());
    assert!(s[0].ended.is_some());
    drop(cd);
}

/// SIGTERM to every process whose argv is exactly `argv` (the shell's `kill` builtin: no
/// procps needed).
fn kill_by_argv(argv: &[&[u8]]) {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.iter().copied().chain([0])).collect();
    let pids: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .map(|pid| pid.to_string())
        .collect();
    assert!(!pids.is_empty(), "no process runs {argv:?}");
    let st = std::process::Command::new("sh").arg("-c").arg(format!("kill {}", pids.join(" "))).status().unwrap();
    assert!(st.success());
}

#[test]
fn a_session_running_when_the_stage_starts_is_learned_from_proc() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cd = Containerd::start();
    let c = cd.run(&[], &[], &["sleep", "1000"]);
    // the shell waits in `sleep 3617` until the stage is running (it has read /proc), however
    // long loading the kernel programs takes; then the test ends that sleep and the shell
    // runs `id`, a child the stage sees being born into the session it learned from /proc
    let early = cd.exec_cmd(&c.id, &["sh", "-c", "sleep 3617; /bin/id; true"]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let ready = podtrail::metrics::Readiness::default();
    let mut o = opts(&cd);
    o.started = Some(ready.clone());
    let (cd, updates) = track_while(o, Duration::from_millis(500), move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while !ready.is_ready() {
            assert!(std::time::Instant::now() < deadline, "the process stage never said it was running");
            std::thread::sleep(Duration::from_millis(50));
        }
        kill_by_argv(&[b"sleep".as_slice(), b"3617".as_slice()]);
        assert!(early.wait_with_output().unwrap().status.success());
        cd
    });
    let s = sessions_of(&updates, &c.id);
    assert_eq!(s.len(), 1, "{s:#?}");
    assert!(s[0].started.from_proc && s[0].started.incomplete);
    assert!(s[0].ended.is_some(), "the learned session ends when its processes exit");
    assert!(s[0].commands().contains(&"id".to_string()), "{:?}", s[0].commands());
    drop(cd);
}

#[test]
fn containerd_api_gives_labels_and_the_task_pid() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cd = Containerd::start();
    let c = cd.run(&[("io.kubernetes.pod.name", "api-7"), ("io.kubernetes.pod.uid", "u-1")], &[], &["sleep", "1000"]);
    let want_pid = cd.task_pid(&c.id);
    let socket: PathBuf = cd.address.clone();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (meta, listed) = rt.block_on(async {
        let mut client = ContainerdClient::new(&socket).unwrap();
        let ns = vec!["k8s.io".to_string(), "default".to_string()];
        let meta = client.meta(&ns, &c.id).await.unwrap().expect("containerd knows the container");
        let listed = client.list("default").await.unwrap();
        assert!(client.get("k8s.io", &c.id).await.unwrap().is_none());
        (meta, listed)
    });
    assert_eq!(meta.namespace, "default");
    assert_eq!(meta.labels.get("io.kubernetes.pod.name").map(String::as_str), Some("api-7"));
    assert_eq!(meta.init_pid, want_pid);
    assert!(listed.iter().any(|x| x.id == c.id));
}
