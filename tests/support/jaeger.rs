//! A real Jaeger v2 (in-memory storage) from tests/harness/jaeger.sh, started on free loopback
//! ports, and its query API read back as [`JSpan`]s. A Jaeger that cannot be built or started
//! fails the test with the reason.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::net::{free_port, http_get, urlencode};

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

/// Jaeger's `[{key, type, value}]` as (key, value as text).
fn fields(v: &Value) -> Vec<(String, String)> {
    v.as_array()
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
        .unwrap_or_default()
}

/// One span as Jaeger's query API returns it.
#[derive(Clone, Debug)]
pub struct JSpan {
    pub id: String,
    pub parent: Option<String>,
    pub name: String,
    pub kind: String,
    pub tags: Vec<(String, String)>,
    /// Span events (Jaeger "logs"): time in µs since the epoch, fields (the name is `event`).
    pub logs: Vec<(u64, Vec<(String, String)>)>,
}

impl JSpan {
    fn from_json(s: &Value) -> JSpan {
        let logs = s["logs"]
            .as_array()
            .map(|l| l.iter().map(|e| (e["timestamp"].as_u64().unwrap_or_default(), fields(&e["fields"]))).collect())
            .unwrap_or_default();
        let parent = s["references"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["refType"] == "CHILD_OF"))
            .and_then(|r| r["spanID"].as_str())
            .map(str::to_owned);
        let tags = fields(&s["tags"]);
        let kind = tags.iter().find(|(k, _)| k == "span.kind").map(|(_, v)| v.clone()).unwrap_or_default();
        JSpan {
            id: s["spanID"].as_str().unwrap_or_default().to_owned(),
            parent,
            name: s["operationName"].as_str().unwrap_or_default().to_owned(),
            kind,
            tags,
            logs,
        }
    }

    pub fn tag(&self, k: &str) -> Option<&str> {
        self.tags.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
    }
}
