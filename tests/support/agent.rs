//! The real `podtrail run` as a subprocess, for the end-to-end tests: [`Podtrail`] (JSON log,
//! `/metrics` on a free port) and [`FileAgent`] (a config file, OTLP/JSON written to a file), a
//! scratch directory, and readers for what the agent reports (metrics text, the exit line).
//!
//! Nothing here skips: a podtrail that does not come up fails the test with its log.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::net::{free_port, http_get};

/// A scratch directory removed on drop. Declare it before the guards that use it (Jaeger,
/// Podtrail) so it is dropped after them: Jaeger's pid file lives in it.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let d = PathBuf::from(format!("/tmp/pt-e2e-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The real `podtrail run` as a subprocess; its stderr (JSON logs) goes to a file. Killed on
/// drop if still running.
pub struct Podtrail {
    child: Option<Child>,
    pub log: PathBuf,
    pub metrics: String,
}

impl Podtrail {
    /// Starts `podtrail run --log-json --metrics-listen 127.0.0.1:<free> ARGS` and waits
    /// until it says it is running (its programs are attached).
    pub fn start(dir: &Path, args: &[&str]) -> Podtrail {
        super::prereq::kernel();
        let metrics = format!("127.0.0.1:{}", free_port());
        let log = dir.join("podtrail.log");
        let err = std::fs::File::create(&log).unwrap();
        // each agent its own state directory (the durable queue), unless the test shares one
        let state = dir.join("state");
        let own_state: &[&str] =
            if args.contains(&"--state-dir") { &[] } else { &["--state-dir", state.to_str().unwrap()] };
        let child = Command::new(env!("CARGO_BIN_EXE_podtrail"))
            .env("PODTRAIL_LOG", log_filter())
            .args(["--log-json", "run", "--metrics-listen", &metrics])
            .args(own_state)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn podtrail");
        let mut p = Podtrail { child: Some(child), log, metrics: format!("http://{metrics}/metrics") };
        // loading and attaching the kernel programs takes seconds on a loaded machine
        let deadline = Instant::now() + Duration::from_secs(90);
        while !p.log_text().contains("podtrail is running") {
            if let Some(st) = p.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("podtrail exited ({st}) before running:\n{}", p.log_text());
            }
            assert!(Instant::now() < deadline, "podtrail did not start:\n{}", p.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
        // running means ready: what starts from now on is seen (the probe the DaemonSet uses)
        let ready = p.metrics.replace("/metrics", "/readyz");
        assert_eq!(http_get(&ready).map(|r| r.0).ok(), Some(200), "running but {ready} is not 200");
        p
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The Prometheus text of `/metrics`.
    pub fn scrape(&self) -> String {
        http_get(&self.metrics).expect("scrape /metrics").1
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL (a crash, an OOM kill: nothing runs at exit), waited for; returns the log.
    pub fn kill9(&mut self) -> String {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
        self.log_text()
    }

    /// SIGTERM, wait (bounded) for a clean exit, and return the log.
    pub fn stop(&mut self) -> String {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("podtrail did not stop within 60s of SIGTERM:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(status.success(), "podtrail exited with {status}:\n{}", self.log_text());
        self.log_text()
    }
}

impl Drop for Podtrail {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The value of a metric line `name{labels} value` (summed over matching lines).
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    let vals: Vec<f64> =
        text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse().ok()).collect();
    (!vals.is_empty()).then(|| vals.iter().sum())
}

/// What the exit log says one sink delivered: `("otlp", Delivery { exported: N, .. })`.
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
pub struct SinkDelivery {
    pub exported: u64,
    pub queue_full: u64,
    pub export_failed: u64,
    pub shutdown: u64,
    pub sessions_marked_lost: u64,
}

impl SinkDelivery {
    pub fn lost(&self) -> u64 {
        self.queue_full + self.export_failed + self.shutdown
    }
}

/// Parses the `stopped` line of the JSON log: (kernel_dropped, delivery of `sink`).
pub fn exit_report(log: &str, sink: &str) -> (u64, SinkDelivery) {
    let line = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["fields"]["message"] == "stopped")
        .unwrap_or_else(|| panic!("no `stopped` line in:\n{log}"));
    let kernel_dropped = line["fields"]["kernel_dropped"].as_u64().expect("kernel_dropped");
    let export = line["fields"]["export"].as_str().expect("export").to_owned();
    let at = export.find(&format!("(\"{sink}\", Delivery {{")).unwrap_or_else(|| panic!("sink {sink} not in {export}"));
    let body = &export[at..];
    let body = &body[..body.find('}').unwrap()];
    let field = |k: &str| -> u64 {
        let i = body.find(&format!("{k}: ")).unwrap_or_else(|| panic!("{k} not in {body}")) + k.len() + 2;
        body[i..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    (
        kernel_dropped,
        SinkDelivery {
            exported: field("exported"),
            queue_full: field("queue_full"),
            export_failed: field("export_failed"),
            shutdown: field("shutdown"),
            sessions_marked_lost: field("sessions_marked_lost"),
        },
    )
}

/// A `podtrail.toml` that follows a private containerd ([`super::containers`]), plus `extra`.
pub fn containerd_config(address: &Path, namespace: &str, extra: &str) -> String {
    format!(
        "[process]\ncontainerd_socket = {:?}\ncontainerd_namespaces = [{namespace:?}]\n\n{extra}",
        address.display().to_string()
    )
}

/// The agents' log filter: PODTRAIL_LOG when set, else info with why each exec session began
/// (a test that finds a process in the wrong session prints those lines).
fn log_filter() -> String {
    std::env::var("PODTRAIL_LOG")
        .unwrap_or_else(|_| "info,podtrail::process::session=debug,podtrail::process::proc_scan=debug".to_string())
}

/// `podtrail run --config DIR/podtrail.toml ARGS --otlp-file DIR/traces.jsonl` with its
/// plain-text log in DIR/agent.log and its stdout (the console tree, when configured) in
/// DIR/console.txt, for the end-to-end tests that read what the agent wrote; SIGTERM (then
/// SIGKILL after 30 s) on drop.
pub struct FileAgent {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    /// `127.0.0.1:port` of its loopback audit webhook, when started with one.
    pub webhook: Option<String>,
}

impl FileAgent {
    /// Writes `config`, starts the agent and waits until it says it is running, then a second
    /// more (the containerd lookup of containers found by the /proc scan is asynchronous).
    pub fn start(config: &str, args: &[&str]) -> FileAgent {
        FileAgent::launch(config, args, None)
    }

    /// [`Self::start`] with a loopback audit webhook on a free port
    /// (`--audit-webhook-loopback`), for [`Self::post_audit`].
    pub fn start_audited(config: &str, args: &[&str]) -> FileAgent {
        let webhook = format!("127.0.0.1:{}", free_port());
        let args: Vec<&str> = args.iter().copied().chain(["--audit-webhook-loopback", webhook.as_str()]).collect();
        FileAgent::launch(config, &args, Some(webhook.clone()))
    }

    fn launch(config: &str, args: &[&str], webhook: Option<String>) -> FileAgent {
        super::prereq::kernel();
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("podtrail.toml"), config).unwrap();
        let stderr = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_podtrail"))
            .env("PODTRAIL_LOG", log_filter())
            .arg("run")
            .arg("--config")
            .arg(dir.path().join("podtrail.toml"))
            .args(args)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--otlp-file")
            .arg(dir.path().join("traces.jsonl"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("console.txt")).unwrap())
            .stderr(stderr)
            .spawn()
            .expect("spawn podtrail run");
        let mut agent = FileAgent { child: Some(child), dir, webhook };
        // loading and attaching the kernel programs takes seconds on a loaded machine
        let deadline = Instant::now() + Duration::from_secs(120);
        while !agent.log().contains("podtrail is running") {
            assert!(Instant::now() < deadline, "podtrail run did not come up:\n{}", agent.log());
            if let Some(st) = agent.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("podtrail run exited ({st}):\n{}", agent.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_secs(1));
        agent
    }

    /// A file of its directory as text (bytes that are not UTF-8 replaced, never dropped: a
    /// test that looks for what must not be there must see everything).
    pub fn read(&self, name: &str) -> String {
        String::from_utf8_lossy(&std::fs::read(self.dir.path().join(name)).unwrap_or_default()).into_owned()
    }

    pub fn log(&self) -> String {
        self.read("agent.log")
    }

    /// What it printed on stdout (the console tree).
    pub fn console(&self) -> String {
        self.read("console.txt")
    }

    /// The OTLP/JSON lines file it writes.
    pub fn file(&self) -> PathBuf {
        self.dir.path().join("traces.jsonl")
    }

    /// SIGTERM (it drains and flushes), and wait for it (SIGKILL after 30 s).
    pub fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.wait();
    }

    /// POSTs an audit EventList to its loopback audit webhook the way the API server's
    /// webhook backend does; the agent answers 200 once the batch is in its store.
    pub fn post_audit(&self, body: &Value) {
        let webhook = self.webhook.as_deref().expect("an agent started with start_audited");
        post_audit(webhook, body, &self.log());
    }
}

/// POSTs an audit EventList to a loopback audit webhook (`127.0.0.1:port`) the way the API
/// server's webhook backend does, and checks the 200 the agent answers once the batch is in
/// its store (`log` is shown when it does not).
pub fn post_audit(webhook: &str, body: &Value, log: &str) {
    {
        let body = serde_json::to_vec(body).unwrap();
        let mut s = TcpStream::connect(webhook).expect("connect to the audit webhook");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(s, "POST /audit HTTP/1.1\r\nHost: {webhook}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).unwrap();
        s.write_all(&body).unwrap();
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        assert!(reply.starts_with("HTTP/1.1 200"), "audit webhook answered: {reply}\n{log}");
    }
}

impl Drop for FileAgent {
    fn drop(&mut self) {
        self.terminate();
    }
}
