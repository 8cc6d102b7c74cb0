//! The 10-minute outage benchmark (issue 14): podtrail's export stage with its durable queue,
//! fed 1 000 spans/s of realistic sessions, while the real OpenTelemetry Collector (the one
//! `otel-collector/` builds and configures: mutual TLS, its own file-backed queue, fan-out to
//! two backends) is down for 10 minutes; then the collector comes back and the queue drains.
//!
//! What drives it, plainly: NOT the kernel. The agent's kernel side does not reach 1 000
//! spans/s of sessions on this machine's 2 cores without starving everything else (fork+exec+
//! exit is 1.5-2.1 K/s per core, and a session's command makes one span: a 10-minute storm of
//! execs would take a core for the whole run). So each path is a child process running
//! podtrail's real pipeline after the process stage: `SessionUpdate`s (the process stage's
//! output, shaped like a shell session: `sh` running 20 distinct commands, two of them making
//! a TCP connect) -> `export::run_export` (span stage, hold, redaction, budgets, export queue,
//! OTLP/gRPC over mutual TLS with opentelemetry-otlp's tonic exporter), with the agent's
//! defaults except `alert_logs` (no rules here).
//!
//! Two paths run side by side on the same input rate, through the same collector, in the same
//! outage:
//! - **disk**: the durable queue as `podtrail run` sets it up (state directory held, 1 GiB
//!   budget, fsync `batch`);
//! - **memory**: the in-memory queue (the library default, `queue_spans` 65 536,
//!   `max_attempts` 5): the reference for loss.
//!
//! Arrivals are counted by a receiver we did not write: the Jaeger v2 the collector exports to
//! (`tests/harness/jaeger.sh`), read through its raw API (`/api/v3/traces?...&query.raw_traces
//! =true`: no adjusters, so a span stored twice shows twice), deduplicated by span id. The
//! collector's second backend (Tempo's place in `config.yaml`) is a second Jaeger, not read.
//!
//! Measured per path: spans produced (the export report: exported + lost + left on disk),
//! distinct spans that arrived, duplicates, lost (counted by podtrail, and missing in Jaeger),
//! RSS of the process during the outage and before it, disk used by the queue, and the drain:
//! from the collector's restart to the queue back under one batch, with the drain rate beside
//! the input rate.
//!
//! Run (root not needed; Jaeger and the collector come from /var/cache/podtrail or are built):
//! `cargo bench --bench outage -- [--outage-secs 600] [--rate 1000] [--dir D]`

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use podtrail::capture::event::{ExitStatus, ProcessKey, Transport};
use podtrail::clock::{boot_ns_now, BootClock};
use podtrail::export::{ExportConfig, RunExport};
use podtrail::metrics::Metrics;
use podtrail::model::*;
use podtrail::spans::{BuildCtx, NoAttributor, Output, SpanStage, SpansConfig};
use serde_json::Value;

const COMMANDS: u32 = 20;

fn arg(name: &str) -> Option<String> {
    let a: Vec<String> = std::env::args().collect();
    a.iter().position(|x| x == name).and_then(|i| a.get(i + 1)).cloned()
}

fn num(name: &str, default: u64) -> u64 {
    arg(name).map(|v| v.parse().unwrap_or_else(|_| panic!("{name} {v}: not a number"))).unwrap_or(default)
}

// ---- the sessions ------------------------------------------------------------------------

fn container(pod: &str) -> ContainerInfo {
    ContainerInfo {
        id: "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90".into(),
        cgroup_id: 4242,
        pod_namespace: Some("billing".into()),
        pod_name: Some(pod.into()),
        pod_uid: Some("6f1c9a7e-0000-4000-8000-000000000014".into()),
        container_name: Some("api".into()),
        workload_kind: Some("Deployment".into()),
        workload_name: Some("api".into()),
        node_name: Some("node-1".into()),
        image_name: Some("registry.example:5000/billing/api:1.4.2".into()),
        pod_labels: vec![("app".into(), "api".into())],
        source: "kube_api",
        ..Default::default()
    }
}

fn image(start: u64, argv: &[String], exe: &str) -> ImageRecord {
    ImageRecord {
        start_ns: start,
        argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
        filename: exe.as_bytes().into(),
        exe_path: exe.as_bytes().into(),
        tty: true,
        ..Default::default()
    }
}

fn process(
    key: ProcessKey,
    parent: Option<ProcessKey>,
    fork: u64,
    exit: u64,
    images: Vec<ImageRecord>,
) -> ProcessRecord {
    ProcessRecord {
        key,
        parent,
        parent_exec_index: parent.map(|_| 0),
        nspid: key.pid % 30_000 + 2,
        fork_ns: fork,
        exit_ns: Some(exit),
        exit: Some(ExitStatus::Code(0)),
        from_proc: false,
        images,
        leaf: false,
    }
}

/// Session `k`, which started at boot time `t` (ns) and lasted 20 ms: `sh` running 20
/// distinct commands (`ls`, `cat`, `grep`, `wget` with a TCP connect, ...), all ended.
fn session(k: u64, t: u64, pod: &str) -> Vec<SessionUpdate> {
    let pid = |i: u64| 1000 + ((k * 32 + i) % 4_000_000) as u32;
    let key = |i: u64| ProcessKey { pid: pid(i), start_ns: t + i * 1000 };
    let root = key(0);
    let info = |end: Option<u64>| SessionInfo {
        end_ns: end,
        root_argv: vec![b"sh".to_vec()],
        root_tty: true,
        ..SessionInfo::new(SessionId(root), SessionKind::Exec, container(pod), t)
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let mut out = vec![SessionUpdate::Started(info(None).into())];
    for i in 1..=COMMANDS as u64 {
        let start = t + i * 1_000_000;
        let (argv, exe) = match i % 5 {
            0 => (s(&["wget", "-q", "-O-", &format!("http://10.244.1.5:8080/orders/{k}/{i}")]), "/usr/bin/wget"),
            1 => (s(&["ls", "-la", &format!("/srv/data/{k}/{i}")]), "/bin/ls"),
            2 => (s(&["cat", &format!("/srv/data/{k}/{i}/config.yaml")]), "/bin/cat"),
            3 => (s(&["grep", "-r", "password", &format!("/srv/data/{k}/{i}")]), "/bin/grep"),
            _ => (s(&["ps", "aux", &format!("--sort=-pid{i}")]), "/bin/ps"),
        };
        let mut img = image(start, &argv, exe);
        if i % 10 == 0 {
            img.connects = vec![ConnectRecord {
                op: NetOp::Connect,
                local: None,
                ts_ns: start + 100_000,
                end_ns: Some(start + 300_000),
                transport: Transport::Tcp,
                addr: "10.244.1.5".parse::<IpAddr>().unwrap(),
                port: 8080,
                final_addr: None,
                outcome: ConnectOutcome::Connected,
                error: None,
                udp_sent: false,
                activity: None,
                scope: None,
                name: None,
            }];
        }
        out.push(SessionUpdate::ProcessEnded(
            info(None).into(),
            process(key(i), Some(root), start, start + 800_000, vec![img]),
        ));
    }
    let end = t + (COMMANDS as u64 + 1) * 1_000_000;
    let sh = image(t, &s(&["sh"]), "/bin/sh");
    out.push(SessionUpdate::Ended(info(Some(end)).into(), vec![process(root, None, t, end, vec![sh])]));
    out
}

/// Spans podtrail's stage makes of one session (for pacing).
fn spans_per_session() -> u64 {
    let ctx = BuildCtx::new([7; 16], BootClock::now(), SpansConfig::default());
    let mut st = SpanStage::new(ctx, Arc::new(NoAttributor));
    let mut out = Output::default();
    for u in session(0, boot_ns_now(), "count") {
        st.update(u, Instant::now(), &mut out);
    }
    st.shutdown(boot_ns_now(), &mut out);
    out.spans.len() as u64
}

// ---- one path (a child process) ----------------------------------------------------------

/// Feeds sessions at `--rate` spans/s into `run_export` until stdin says `stop`; prints a
/// status line a second (`status <sessions> <queue spans> <exported> <lost>`) and at the end
/// the export report (`report <exported> <lost> <kept> <queue_full> <export_failed> <sessions>
/// <sessions fed>`).
fn child_main(path: &str) {
    let endpoint = arg("--endpoint").expect("--endpoint");
    let tls = PathBuf::from(arg("--tls").expect("--tls"));
    let pod = arg("--pod").expect("--pod");
    let rate = num("--rate", 1000);
    let per = spans_per_session();
    let cfg = ExportConfig {
        otlp_endpoint: Some(endpoint),
        otlp_protocol: Some("grpc".into()),
        otlp_ca: Some(tls.join("ca.crt")),
        otlp_client_cert: Some(tls.join("client.crt")),
        otlp_client_key: Some(tls.join("client.key")),
        // no rules run here: no alert log records
        alert_logs: false,
        ..Default::default()
    };
    let mut export = cfg.resolve(|_| None).expect("export config");
    let held = (path == "disk").then(|| {
        let state = PathBuf::from(arg("--state").expect("--state"));
        let (dir, _) = podtrail::state::StateDir::open(&state).expect("state directory");
        podtrail::state::Held { dir: Arc::new(dir), gap: None }
    });
    export.queue.held = held.clone();
    let boot_id = if path == "disk" { [0xd1; 16] } else { [0x3e; 16] };
    let run = RunExport { spans: SpansConfig::default(), export, boot_id, clock: BootClock::now() };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let metrics = Metrics::default();
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            for l in std::io::stdin().lock().lines().map_while(Result::ok) {
                if l.trim() == "stop" {
                    break;
                }
            }
            stop.store(true, Relaxed);
        });
    }
    let report = rt.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::channel(4096);
        let task = tokio::spawn(podtrail::export::run_export(
            rx,
            run,
            Arc::new(NoAttributor),
            metrics.clone(),
            Default::default(),
        ));
        let t0 = Instant::now();
        let mut k = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut last_status = Instant::now();
        while !stop.load(Relaxed) {
            tick.tick().await;
            let due = (t0.elapsed().as_secs_f64() * rate as f64 / per as f64) as u64;
            while k < due {
                let t = boot_ns_now().saturating_sub(25_000_000);
                for u in session(k, t, &pod) {
                    tx.send(u).await.expect("export stage stopped");
                }
                k += 1;
            }
            if last_status.elapsed() >= Duration::from_secs(1) {
                last_status = Instant::now();
                let lost: u64 = ["queue_full", "export_failed", "shutdown", "disk_budget", "disk_write", "corrupt"]
                    .iter()
                    .map(|r| metrics.lost_count(r))
                    .sum();
                println!("status {k} {} {} {lost}", metrics.export_queue_spans.get(), metrics.spans_exported.get());
                let _ = std::io::stdout().flush();
            }
        }
        drop(tx);
        eprintln!("{path}: {k} sessions fed, stopping");
        (task.await.unwrap().expect("export"), k)
    });
    let (report, fed) = report;
    drop(held);
    let d = report.sinks.iter().find(|(n, _)| *n == "otlp").map(|(_, d)| *d).unwrap_or_default();
    println!(
        "report {} {} {} {} {} {} {fed}",
        d.exported,
        d.lost(),
        d.kept,
        d.queue_full,
        d.export_failed,
        report.sessions
    );
}

// ---- the harness (parent) ----------------------------------------------------------------

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a harness script; returns its KEY=VALUE lines.
fn harness(script: &str, args: &[&str], env: &[(&str, String)]) -> Vec<(String, String)> {
    let out = Command::new("bash")
        .arg(repo().join("tests/harness").join(script))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("bash tests/harness/{script}: {e}"));
    assert!(out.status.success(), "tests/harness/{script} {args:?} failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

fn get(env: &[(String, String)], k: &str) -> String {
    env.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone()).unwrap_or_else(|| panic!("{k} missing: {env:?}"))
}

fn http_get(url: &str) -> Result<String, String> {
    let out = Command::new("curl").args(["-sS", "--max-time", "300", url]).output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// VmRSS and RssAnon of a process, KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let f = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (f("VmRSS:"), f("RssAnon:"))
}

/// Bytes of disk the files under `dir` take (allocated blocks).
fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(m) = e.metadata() else { continue };
        n += if m.is_dir() { disk_bytes(&e.path()) } else { m.blocks() * 512 };
    }
    n
}

#[derive(Default, Clone, Copy, Debug)]
struct Status {
    sessions: u64,
    queue: i64,
    exported: u64,
    lost: u64,
}

#[derive(Default, Clone, Copy, Debug)]
struct Report {
    exported: u64,
    lost: u64,
    kept: u64,
    queue_full: u64,
    export_failed: u64,
    sessions: u64,
    fed: u64,
}

struct PathRun {
    name: &'static str,
    pod: String,
    child: Child,
    status: Arc<Mutex<Status>>,
    report: Arc<Mutex<Option<Report>>>,
    state: PathBuf,
}

impl PathRun {
    fn start(name: &'static str, endpoint: &str, tls: &str, rate: u64, dir: &Path) -> PathRun {
        let pod = format!("outage-{name}-{}", std::process::id());
        let state = dir.join(format!("state-{name}"));
        let _ = std::fs::remove_dir_all(&state);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--child", name, "--endpoint", endpoint, "--tls", tls, "--pod", &pod])
            .args(["--rate", &rate.to_string(), "--state", state.to_str().unwrap()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start path");
        let status = Arc::new(Mutex::new(Status::default()));
        let report = Arc::new(Mutex::new(None));
        let (s, r) = (status.clone(), report.clone());
        let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                let mut it = l.split(' ');
                let kind = it.next().unwrap_or("");
                let v: Vec<i64> = it.map(|x| x.parse().unwrap_or(-1)).collect();
                match (kind, v.as_slice()) {
                    ("status", [a, b, c, d]) => {
                        *s.lock().unwrap() =
                            Status { sessions: *a as u64, queue: *b, exported: *c as u64, lost: *d as u64 }
                    }
                    ("report", [a, b, c, d, e, f, g]) => {
                        *r.lock().unwrap() = Some(Report {
                            exported: *a as u64,
                            lost: *b as u64,
                            kept: *c as u64,
                            queue_full: *d as u64,
                            export_failed: *e as u64,
                            sessions: *f as u64,
                            fed: *g as u64,
                        })
                    }
                    _ => eprintln!("{name}: {l}"),
                }
            }
        });
        PathRun { name, pod, child, status, report, state }
    }

    fn status(&self) -> Status {
        *self.status.lock().unwrap()
    }

    fn stop(&mut self) -> Report {
        let _ = writeln!(self.child.stdin.as_mut().unwrap(), "stop");
        let st = self.child.wait().expect("wait path");
        assert!(st.success(), "{} path exited with {st}", self.name);
        std::thread::sleep(Duration::from_millis(200));
        self.report.lock().unwrap().unwrap_or_else(|| panic!("{}: no report", self.name))
    }
}

/// Lowercase hex of a span id given as hex or base64.
fn hex_id(s: &str) -> String {
    if s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return s.to_ascii_lowercase();
    }
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let (mut bits, mut n, mut out) = (0u32, 0, String::new());
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = T.iter().position(|t| *t == c).unwrap_or_else(|| panic!("span id {s:?}")) as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push_str(&format!("{:02x}", (bits >> n) & 0xff));
        }
    }
    out
}

fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap();
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{}", d.as_secs()), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Every span Jaeger stored for each of `pods` whose trace started in [from, to): per pod,
/// (span id -> times stored, traces). Windows of 10 s; each window's search is raw (no
/// adjusters, no merging); spans are kept by their own `k8s.pod.name` (the search's attribute
/// filter is not relied on).
type Arrived = (HashMap<String, u64>, u64);

fn jaeger_spans(query: &str, pods: &[&str], from: std::time::SystemTime, to: std::time::SystemTime) -> Vec<Arrived> {
    let mut seen: Vec<HashMap<String, u64>> = vec![HashMap::new(); pods.len()];
    let mut traces: Vec<HashSet<String>> = vec![HashSet::new(); pods.len()];
    let mut done = HashSet::new();
    let mut t = from;
    while t < to {
        let next = t + Duration::from_secs(10);
        let mut window = HashSet::new();
        let url = format!(
            "{query}/api/v3/traces?query.service_name=podtrail&query.start_time_min={}&query.start_time_max={}&query.num_traces=99999&query.raw_traces=true",
            rfc3339(t),
            rfc3339(next),
        );
        let body = http_get(&url).unwrap_or_else(|e| panic!("Jaeger search {url}: {e}"));
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("Jaeger answer: {e}: {}", &body[..body.len().min(300)]));
        match v["error"]["httpCode"].as_u64() {
            None => {}
            Some(404) => {
                // no trace started in this window
                t = next;
                continue;
            }
            Some(_) => panic!("Jaeger search {url}: {v}"),
        }
        for rs in v["result"]["resourceSpans"].as_array().into_iter().flatten() {
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    // a trace that spans a window's edge is returned by both windows: count
                    // each trace's spans from the first window that returned it
                    let trace = s["traceId"].as_str().unwrap_or_default().to_owned();
                    if done.contains(&trace) {
                        continue;
                    }
                    window.insert(trace.clone());
                    let pod = s["attributes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|kv| kv["key"] == "k8s.pod.name")
                        .and_then(|kv| kv["value"]["stringValue"].as_str());
                    let Some(i) = pods.iter().position(|p| Some(*p) == pod) else { continue };
                    traces[i].insert(trace);
                    *seen[i].entry(hex_id(s["spanId"].as_str().unwrap_or_default())).or_insert(0) += 1;
                }
            }
        }
        done.extend(window);
        t = next;
    }
    seen.into_iter().zip(traces).map(|(s, t)| (s, t.len() as u64)).collect()
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

fn main() {
    if let Some(p) = arg("--child") {
        return child_main(&p);
    }
    let outage = Duration::from_secs(num("--outage-secs", 600));
    let rate = num("--rate", 1000);
    let warm = Duration::from_secs(num("--warm-secs", 30));
    let dir = PathBuf::from(arg("--dir").unwrap_or_else(|| "/var/lib/podtrail-bench/outage".into()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let per = spans_per_session();
    println!(
        "outage benchmark: {rate} spans/s ({per} spans per session, {:.1} sessions/s) per path, collector down {} s",
        rate as f64 / per as f64,
        outage.as_secs()
    );

    // the backends: Jaeger (read) and a second Jaeger in Tempo's place; the collector
    let (ja, jb, col) = (dir.join("jaeger"), dir.join("jaeger-tempo"), dir.join("collector"));
    let j = harness("jaeger.sh", &["start", ja.to_str().unwrap()], &[]);
    let jt = harness("jaeger.sh", &["start", jb.to_str().unwrap()], &[]);
    let query = get(&j, "JAEGER_QUERY");
    let col_env =
        vec![("JAEGER_ENDPOINT", get(&j, "JAEGER_OTLP_GRPC")), ("TEMPO_ENDPOINT", get(&jt, "JAEGER_OTLP_GRPC"))];
    let c = harness("collector.sh", &["start", col.to_str().unwrap()], &col_env);
    let grpc = get(&c, "COLLECTOR_OTLP_GRPC");
    let port =
        |k: &str| get(&c, k).rsplit(':').next().unwrap().trim_end_matches('/').split('/').next().unwrap().to_owned();
    // the same ports and certificates when it comes back
    let mut restart_env = col_env.clone();
    restart_env.push(("COLLECTOR_OTLP_GRPC_PORT", grpc.rsplit(':').next().unwrap().to_owned()));
    restart_env.push(("COLLECTOR_OTLP_HTTP_PORT", port("COLLECTOR_OTLP_HTTP")));
    restart_env.push(("COLLECTOR_HEALTH_PORT", port("COLLECTOR_HEALTH")));
    restart_env.push(("COLLECTOR_METRICS_PORT", port("COLLECTOR_METRICS")));
    let tls = col.join("tls");
    for (k, f) in
        [("OTLP_TLS_CERT_FILE", "tls.crt"), ("OTLP_TLS_KEY_FILE", "tls.key"), ("OTLP_TLS_CLIENT_CA_FILE", "ca.crt")]
    {
        restart_env.push((k, tls.join(f).display().to_string()));
    }
    let endpoint = format!("https://{grpc}");
    let t_begin = std::time::SystemTime::now() - Duration::from_secs(60);

    let mut paths = [
        PathRun::start("disk", &endpoint, tls.to_str().unwrap(), rate, &dir),
        PathRun::start("memory", &endpoint, tls.to_str().unwrap(), rate, &dir),
    ];
    let pids: Vec<u32> = paths.iter().map(|p| p.child.id()).collect();
    // steady state: the collector up; RSS at its end is the reference for the outage's
    let t0 = Instant::now();
    std::thread::sleep(warm);
    let before: Vec<Status> = paths.iter().map(PathRun::status).collect();
    let rss_before: Vec<(u64, u64)> = pids.iter().map(|p| rss_kib(*p)).collect();
    let warm_secs = t0.elapsed().as_secs_f64();
    let steady_rate = |i: usize| before[i].exported as f64 / warm_secs;
    println!(
        "steady state ({} s, collector up): exported disk {} ({:.0}/s), memory {} ({:.0}/s); queue disk {}, memory {}; RSS disk {} KiB, memory {} KiB",
        warm.as_secs(),
        before[0].exported,
        steady_rate(0),
        before[1].exported,
        steady_rate(1),
        before[0].queue,
        before[1].queue,
        rss_before[0].0,
        rss_before[1].0
    );

    // the outage
    harness("collector.sh", &["stop", col.to_str().unwrap()], &[]);
    let t_down = Instant::now();
    let at_down: Vec<Status> = paths.iter().map(PathRun::status).collect();
    let mut rss_max = [(0u64, 0u64); 2];
    let mut disk_max = 0u64;
    while t_down.elapsed() < outage {
        std::thread::sleep(Duration::from_secs(1));
        for (i, p) in pids.iter().enumerate() {
            let r = rss_kib(*p);
            rss_max[i] = (rss_max[i].0.max(r.0), rss_max[i].1.max(r.1));
        }
        disk_max = disk_max.max(disk_bytes(&paths[0].state));
        let s = t_down.elapsed().as_secs();
        if s.is_multiple_of(60) {
            let (d, m) = (paths[0].status(), paths[1].status());
            println!(
                "  {s:>4} s down: disk path queue {} spans, {:.1} MiB on disk, lost {}; memory path queue {}, lost {}; RSS disk {} KiB, memory {} KiB",
                d.queue,
                mib(disk_bytes(&paths[0].state)),
                d.lost,
                m.queue,
                m.lost,
                rss_kib(pids[0]).0,
                rss_kib(pids[1]).0
            );
        }
    }
    let at_up: Vec<Status> = paths.iter().map(PathRun::status).collect();
    let backlog = at_up[0].queue;
    let disk_at_up = disk_bytes(&paths[0].state);
    disk_max = disk_max.max(disk_at_up);

    // back up: the drain
    harness("collector.sh", &["start", col.to_str().unwrap()], &restart_env);
    let t_up = Instant::now();
    let mut drain = None;
    let mut rss_drain_max = (0u64, 0u64);
    while t_up.elapsed() < Duration::from_secs(1800) {
        std::thread::sleep(Duration::from_millis(500));
        let r = rss_kib(pids[0]);
        rss_drain_max = (rss_drain_max.0.max(r.0), rss_drain_max.1.max(r.1));
        if paths[0].status().queue < 512 {
            drain = Some(t_up.elapsed());
            break;
        }
    }
    let drain = drain.expect("the disk queue did not drain within 30 minutes");
    let after_drain = paths[0].status();
    // a little steady state after the drain, then stop both and let the collector deliver
    std::thread::sleep(Duration::from_secs(10));
    let reports: Vec<Report> = paths.iter_mut().map(PathRun::stop).collect();
    let t_end = std::time::SystemTime::now() + Duration::from_secs(60);
    std::thread::sleep(Duration::from_secs(15));

    // count what arrived, both paths in one pass over Jaeger; again until the counts stop
    // growing (the collector may still be delivering its own queue)
    let pods: Vec<&str> = paths.iter().map(|p| p.pod.as_str()).collect();
    let mut last: Vec<Arrived> = Vec::new();
    for _ in 0..20 {
        let got = jaeger_spans(&query, &pods, t_begin, t_end);
        let same = got.len() == last.len() && got.iter().zip(&last).all(|(a, b)| a.0.len() == b.0.len());
        last = got;
        if same && !last[0].0.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_secs(10));
    }
    let mut counts = Vec::new();
    for (i, (seen, traces)) in last.into_iter().enumerate() {
        let distinct = seen.len() as u64;
        let stored: u64 = seen.values().sum();
        counts.push((distinct, stored - distinct, traces));
        eprintln!(
            "{}: report {:?}, Jaeger distinct {distinct}, stored {stored}, traces {traces}",
            paths[i].name, reports[i]
        );
    }
    harness("collector.sh", &["stop", col.to_str().unwrap()], &[]);
    harness("jaeger.sh", &["stop", ja.to_str().unwrap()], &[]);
    harness("jaeger.sh", &["stop", jb.to_str().unwrap()], &[]);

    println!();
    println!("| path   | session spans produced | in Jaeger (distinct) | duplicates | lost (podtrail's count) | missing in Jaeger | RSS before | RSS max down | RssAnon max down | queue on disk at restart |");
    println!("|--------|-----------------------:|---------------------:|-----------:|------------------------:|------------------:|-----------:|-------------:|-----------------:|-------------------------:|");
    for (i, p) in paths.iter().enumerate() {
        let r = reports[i];
        // the sessions' spans (the agent's own start and run spans have no pod: not counted)
        let produced = r.fed * per;
        let (distinct, dups, _) = counts[i];
        println!(
            "| {:<6} | {produced:>22} | {distinct:>20} | {dups:>10} | {:>23} | {:>17} | {:>6.1} MiB | {:>8.1} MiB | {:>12.1} MiB | {:>20} |",
            p.name,
            r.lost,
            produced.saturating_sub(distinct),
            rss_before[i].0 as f64 / 1024.0,
            rss_max[i].0 as f64 / 1024.0,
            rss_max[i].1 as f64 / 1024.0,
            if i == 0 { format!("{:.1} MiB", mib(disk_at_up)) } else { "-".into() }
        );
    }
    let queued = (backlog as u64).max(1);
    let during = at_up[0].sessions.saturating_sub(at_down[0].sessions) * per;
    println!();
    println!(
        "outage {} s: {during} spans produced per path while down; disk path backlog at restart {backlog} spans, {:.1} MiB on disk ({:.0} B/span; peak {:.1} MiB), budget 1024 MiB",
        outage.as_secs(),
        mib(disk_at_up),
        disk_at_up as f64 / queued as f64,
        mib(disk_max)
    );
    println!(
        "drain: {:.1} s from the collector's restart to the queue under one batch; {:.0} spans/s sent while draining (backlog + input) against {rate} spans/s input and {:.0} spans/s exported in the steady state; disk path RSS max while draining {:.1} MiB",
        drain.as_secs_f64(),
        (after_drain.exported - at_up[0].exported) as f64 / drain.as_secs_f64(),
        steady_rate(0),
        rss_drain_max.0 as f64 / 1024.0
    );
    println!(
        "memory path, same outage: lost {} ({} queue_full, {} export_failed) of {} produced; sessions the span stage closed: disk {}, memory {}",
        reports[1].lost,
        reports[1].queue_full,
        reports[1].export_failed,
        reports[1].exported + reports[1].lost + reports[1].kept,
        reports[0].sessions,
        reports[1].sessions
    );
}
