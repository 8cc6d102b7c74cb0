//! The real OpenTelemetry Collector (built from its Go modules by tests/harness/collector.sh,
//! running the shipped otel-collector/config.yaml), started for one test and stopped on drop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/harness/collector.sh");

/// A running collector: `env` holds what `collector.sh start` printed (`COLLECTOR_OTLP_GRPC`,
/// `COLLECTOR_OTLP_HTTP`, ...).
pub struct Collector {
    dir: PathBuf,
    env: BTreeMap<String, String>,
}

impl Collector {
    /// Starts the collector in `dir`, exporting to `backend` (OTLP gRPC host:port), with the
    /// extra environment `extra` (the TLS files, for instance). Fails the test loudly when the
    /// harness cannot build or start it.
    pub fn start(dir: &Path, backend: &str, extra: &[(&str, &Path)]) -> Collector {
        let mut cmd = Command::new("bash");
        cmd.arg(SCRIPT)
            .arg("start")
            .arg(dir)
            .env("TEMPO_ENDPOINT", backend)
            .env("JAEGER_ENDPOINT", backend)
            .env("RETRY_INITIAL_INTERVAL", "200ms");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run collector.sh");
        assert!(
            out.status.success(),
            "collector.sh start failed (Go toolchain and module proxy needed for the first build):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Collector { dir: dir.to_owned(), env }
    }

    /// A value `collector.sh start` printed; panics naming what it did print when missing.
    pub fn get(&self, k: &str) -> String {
        self.env.get(k).cloned().unwrap_or_else(|| panic!("{k} missing in {:?}", self.env))
    }

    /// The collector's own log so far (for failure messages and the debug exporter's output).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("collector.log")).unwrap_or_default()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(SCRIPT).arg("stop").arg(&self.dir).status();
    }
}
