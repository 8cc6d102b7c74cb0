//! Real parts for end-to-end tests: a Jaeger v2 from tests/harness/jaeger.sh, the real
//! `podtrail` binary as a subprocess, and a plain HTTP/1.0 GET for Jaeger's query API and
//! podtrail's `/metrics` (loopback only, so no client library is needed).
//!
//! Nothing here skips: a Jaeger that cannot be built or started, or a podtrail that does not
//! come up, fails the test with the reason and the log.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

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

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET url` over HTTP/1.0 (the server closes, no chunking): (status, body).
pub fn http_get(url: &str) -> std::io::Result<(u16, String)> {
    let rest = url.strip_prefix("http://").expect("http:// URL");
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let mut s = TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: */*\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// Percent-encodes a query parameter value.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A running Jaeger v2 (in-memory storage); stopped on drop.
pub struct Jaeger {
    pub dir: PathBuf,
    /// `127.0.0.1:port` of the OTLP/gRPC receiver.
    pub otlp_grpc: String,
    /// `http://127.0.0.1:port` of the query API.
    pub query: String,
    ports: Vec<(&'static str, u16)>,
}

fn harness() -> String {
    format!("{}/tests/harness/jaeger.sh", env!("CARGO_MANIFEST_DIR"))
}

impl Jaeger {
    /// Builds (cached) and starts Jaeger on fixed free ports, so [`Jaeger::restart`] comes
    /// back at the same addresses.
    pub fn start(dir: &Path) -> Jaeger {
        let ports = vec![
            ("JAEGER_OTLP_GRPC_PORT", free_port()),
            ("JAEGER_OTLP_HTTP_PORT", free_port()),
            ("JAEGER_QUERY_PORT", free_port()),
            ("JAEGER_HEALTH_PORT", free_port()),
        ];
        let mut j = Jaeger { dir: dir.to_owned(), otlp_grpc: String::new(), query: String::new(), ports };
        j.up();
        j
    }

    fn up(&mut self) {
        let out = Command::new("bash")
            .arg(harness())
            .arg("start")
            .arg(&self.dir)
            .envs(self.ports.iter().map(|(k, v)| (*k, v.to_string())))
            .output()
            .expect("run jaeger.sh");
        assert!(
            out.status.success(),
            "jaeger.sh start failed (Go toolchain and network needed for the first build):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = String::from_utf8_lossy(&out.stdout).into_owned();
        let get = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("{k} missing in:\n{env}"))
                .to_owned()
        };
        self.otlp_grpc = get("JAEGER_OTLP_GRPC");
        self.query = get("JAEGER_QUERY");
    }

    pub fn stop(&self) {
        let _ = Command::new("bash").arg(harness()).arg("stop").arg(&self.dir).status();
    }

    /// Stops and starts again at the same ports: an outage; the new one holds no traces.
    pub fn restart(&mut self) {
        self.stop();
        self.up();
    }

    /// `GET {query}{path}` as JSON.
    pub fn api(&self, path: &str) -> Value {
        let (status, body) =
            http_get(&format!("{}{path}", self.query)).unwrap_or_else(|e| panic!("Jaeger query {path}: {e}"));
        assert_eq!(status, 200, "Jaeger query {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("Jaeger query {path}: {e}: {body}"))
    }

    /// Trace ids found by a search of service `podtrail` with extra query parameters.
    pub fn search(&self, params: &[(&str, String)]) -> Vec<String> {
        let now_us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64;
        let mut q = format!(
            "/api/traces?service=podtrail&limit=100&start={}&end={}",
            now_us - 3_600_000_000,
            now_us + 60_000_000
        );
        for (k, v) in params {
            q.push_str(&format!("&{k}={}", urlencode(v)));
        }
        let v = self.api(&q);
        v["data"]
            .as_array()
            .map(|a| a.iter().filter_map(|t| t["traceID"].as_str().map(norm_id)).collect())
            .unwrap_or_default()
    }

    /// A tag search: every `key=value` on one span.
    pub fn search_tags(&self, tags: &[(&str, &str)]) -> Vec<String> {
        let obj: serde_json::Map<String, Value> =
            tags.iter().map(|(k, v)| (k.to_string(), Value::String(v.to_string()))).collect();
        self.search(&[("tags", Value::Object(obj).to_string())])
    }

    /// The spans of one trace, or None when Jaeger does not have it.
    pub fn trace(&self, id: &str) -> Option<Vec<JSpan>> {
        let (status, body) = http_get(&format!("{}/api/traces/{id}", self.query)).ok()?;
        if status != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        let t = v["data"].as_array()?.first()?.clone();
        Some(t["spans"].as_array()?.iter().map(JSpan::from_json).collect())
    }

    /// Waits until `f` gives Some, or panics after `secs`.
    pub fn wait_for<T>(&self, secs: u64, what: &str, mut f: impl FnMut(&Jaeger) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(t) = f(self) {
                return t;
            }
            assert!(Instant::now() < deadline, "Jaeger never showed {what} within {secs}s");
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Jaeger may print a trace id without leading zeros.
pub fn norm_id(s: &str) -> String {
    format!("{:0>32}", s.to_ascii_lowercase())
}

/// One span as Jaeger's query API returns it.
#[derive(Clone, Debug)]
pub struct JSpan {
    pub id: String,
    pub parent: Option<String>,
    pub name: String,
    pub kind: String,
    pub tags: Vec<(String, String)>,
}

impl JSpan {
    fn from_json(s: &Value) -> JSpan {
        let parent = s["references"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["refType"] == "CHILD_OF"))
            .and_then(|r| r["spanID"].as_str())
            .map(str::to_owned);
        let tags: Vec<(String, String)> = s["tags"]
            .as_array()
            .map(|t| {
                t.iter()
                    .map(|kv| {
                        let v = match &kv["value"] {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        (kv["key"].as_str().unwrap_or_default().to_owned(), v)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let kind = tags.iter().find(|(k, _)| k == "span.kind").map(|(_, v)| v.clone()).unwrap_or_default();
        JSpan {
            id: s["spanID"].as_str().unwrap_or_default().to_owned(),
            parent,
            name: s["operationName"].as_str().unwrap_or_default().to_owned(),
            kind,
            tags,
        }
    }

    pub fn tag(&self, k: &str) -> Option<&str> {
        self.tags.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
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
        let metrics = format!("127.0.0.1:{}", free_port());
        let log = dir.join("podtrail.log");
        let err = std::fs::File::create(&log).unwrap();
        // each agent its own state directory (the durable queue), unless the test shares one
        let state = dir.join("state");
        let own_state: &[&str] =
            if args.contains(&"--state-dir") { &[] } else { &["--state-dir", state.to_str().unwrap()] };
        let child = Command::new(env!("CARGO_BIN_EXE_podtrail"))
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

/// Spans of an OTLP/JSON file (one ExportTraceServiceRequest per line): (trace id hex, span
/// id hex, name, attributes as strings).
pub fn file_spans(path: &Path) -> Vec<(String, String, String, Vec<(String, String)>)> {
    let mut out = Vec::new();
    each_file_span(path, |_, s| {
        let attrs = s["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|kv| {
                let v = kv["value"].as_object().and_then(|o| o.values().next()).map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
                (kv["key"].as_str().unwrap_or_default().to_owned(), v.unwrap_or_default())
            })
            .collect();
        out.push((
            norm_id(s["traceId"].as_str().unwrap_or_default()),
            s["spanId"].as_str().unwrap_or_default().to_owned(),
            s["name"].as_str().unwrap_or_default().to_owned(),
            attrs,
        ));
    });
    out
}

/// Calls `f(resource attributes, span)` for every span of an OTLP/JSON lines file (one
/// ExportTraceServiceRequest per line), in file order.
fn each_file_span(path: &Path, mut f: impl FnMut(&[Value], &Value)) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let req: Value = serde_json::from_str(line).expect("each line is one OTLP/JSON request");
        for rs in req["resourceSpans"].as_array().into_iter().flatten() {
            let res = rs["resource"]["attributes"].as_array().map(Vec::as_slice).unwrap_or_default();
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    f(res, s);
                }
            }
        }
    }
}

/// A `podtrail.toml` that follows a private containerd (tests/common/containers.rs), plus `extra`.
pub fn containerd_config(address: &Path, namespace: &str, extra: &str) -> String {
    format!(
        "[process]\ncontainerd_socket = {:?}\ncontainerd_namespaces = [{namespace:?}]\n\n{extra}",
        address.display().to_string()
    )
}

/// Every span of an OTLP/JSON lines file (podtrail's `--otlp-file`), as its JSON object, with
/// its resource's attributes appended to its own (so `attr` finds `container.id`).
pub fn read_otlp_file(path: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    each_file_span(path, |res, s| {
        let mut s = s.clone();
        if let Some(a) = s["attributes"].as_array_mut() {
            a.extend(res.iter().cloned());
        }
        out.push(s);
    });
    out
}

/// A span attribute of an OTLP/JSON span as text (ints as their digits, arrays as JSON).
pub fn attr(span: &Value, key: &str) -> Option<String> {
    let kv = span["attributes"].as_array()?.iter().find(|kv| kv["key"] == key)?;
    let v = &kv["value"];
    if let Some(s) = v.get("stringValue").and_then(Value::as_str) {
        return Some(s.to_owned());
    }
    if let Some(i) = v.get("intValue") {
        return Some(i.as_str().map(str::to_owned).unwrap_or_else(|| i.to_string()));
    }
    if let Some(b) = v.get("boolValue") {
        return Some(b.to_string());
    }
    v.get("arrayValue").map(|a| a.to_string())
}

/// A root span (no parent) of an OTLP/JSON span list.
pub fn is_root(span: &Value) -> bool {
    span["parentSpanId"].as_str().unwrap_or("").is_empty()
}

/// `podtrail run --config DIR/podtrail.toml ARGS --otlp-file DIR/traces.jsonl` with its
/// plain-text log in DIR/agent.log, for the end-to-end tests that read what the agent wrote;
/// SIGTERM (then SIGKILL after 30 s) on drop.
pub struct FileAgent {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
}

impl FileAgent {
    /// Writes `config`, starts the agent and waits until it says it is running, then a second
    /// more (the containerd lookup of containers found by the /proc scan is asynchronous).
    pub fn start(config: &str, args: &[&str]) -> FileAgent {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("podtrail.toml"), config).unwrap();
        let stderr = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_podtrail"))
            .arg("run")
            .arg("--config")
            .arg(dir.path().join("podtrail.toml"))
            .args(args)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--otlp-file")
            .arg(dir.path().join("traces.jsonl"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn podtrail run");
        let mut agent = FileAgent { child: Some(child), dir };
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
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

    /// POSTs an audit EventList to the loopback audit webhook at `webhook` the way the API
    /// server's webhook backend does; the agent answers 200 once the batch is in its store.
    pub fn post_audit(&self, webhook: &str, body: &Value) {
        let body = serde_json::to_vec(body).unwrap();
        let mut s = TcpStream::connect(webhook).expect("connect to the audit webhook");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "POST /audit HTTP/1.1\r\nHost: {webhook}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).unwrap();
        s.write_all(&body).unwrap();
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        assert!(reply.starts_with("HTTP/1.1 200"), "audit webhook answered: {reply}\n{}", self.log());
    }
}

impl Drop for FileAgent {
    fn drop(&mut self) {
        self.terminate();
    }
}
