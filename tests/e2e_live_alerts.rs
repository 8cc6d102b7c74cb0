//! Alerts on connects and files of processes that keep running (issue 14's last item), and
//! the payload after ten thousand decoys (issue 18's caps), on real containers: the real
//! `podtrail run` binary writing OTLP/JSON to a file, a private containerd + runc, and
//! `ctr task exec` sessions that leave a process running in the background (what
//! `setsid sleep 1e9 &` or an interactive shell that stays open looks like on the node).
//!
//! Each live test reads the `alert` span from the file while the process that raised it is
//! still alive (checked in /proc by the `process.pid` the alert carries), then ends the
//! process and checks that its trace holds exactly one alert span for it, with the alert event
//! on the span it is about, and the root's count. The spans are decoded here from the JSON,
//! not with podtrail's code.
//!
//! Needs root, containerd, runc and busybox-static; fails (never skips) when one is missing.
//! Run: `cargo test --release --test e2e_live_alerts`.

mod support;

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::agent::{containerd_config, FileAgent};
use support::audit::pod_labels;
use support::containers::{Container, Containerd};
use support::otlp_json::{self, Span};

/// One agent (kernel programs, containerd) at a time in this binary.
static SERIAL: Mutex<()> = Mutex::new(());

const PORT_RULE: &str = "Test connect to port 4444";
const HISTORY: &str = "Shell history tampering";

/// A test rule beside the shipped ones: a connect to the port the session's listener uses.
const RULES: &str = "- name: Test connect to port 4444\n  severity: high\n  description: a connect to port 4444\n  \
                     on: connect\n  match:\n    connect.port: 4444\n";

fn agent(cd: &Containerd, dir: &Path, extra: &str) -> FileAgent {
    let rules = dir.join("rules.yaml");
    std::fs::write(&rules, RULES).unwrap();
    let extra = format!(
        "[attribution]\nhold_ms = 500\n\n[metrics]\nlisten = \"\"\n\n[rules]\nfile = {:?}\n\n{extra}",
        rules.display().to_string()
    );
    FileAgent::start(&containerd_config(&cd.address, &cd.namespace, &extra), &[])
}

fn setup() -> (std::sync::MutexGuard<'static, ()>, Containerd, Container, tempfile::TempDir) {
    let guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let cd = Containerd::start();
    let c = cd.run_prepared(&pod_labels(), &[], &["sleep", "100000"], &|root| {
        std::fs::create_dir_all(root.join("root")).unwrap();
        std::fs::write(root.join("root/.ash_history"), "ls\n").unwrap();
        // a watched tool's name on the image's busybox: the payload the decoys hide
        std::os::unix::fs::symlink("busybox", root.join("bin/tcpdump")).unwrap();
    });
    (guard, cd, c, tempfile::tempdir().unwrap())
}

/// The `alert` spans of `rule` in the file.
fn alert_spans(spans: &[Span], rule: &str) -> Vec<Span> {
    spans
        .iter()
        .filter(|s| s.name == "alert" && s.str("security_rule.name").as_deref() == Some(rule))
        .cloned()
        .collect()
}

/// Waits (up to `secs`) for the file to hold what `f` finds.
fn wait_for<T>(agent: &FileAgent, secs: u64, what: &str, f: impl Fn(&[Span]) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(t) = f(&otlp_json::read(&agent.file())) {
            return t;
        }
        assert!(Instant::now() < deadline, "no {what} after {secs} s:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The process is alive (not a zombie) and its command line holds `marker`.
fn alive(pid: u32, marker: &str) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    state.is_some_and(|s| s != 'Z') && String::from_utf8_lossy(&cmdline).contains(marker)
}

/// Host pids whose whole command line (arguments joined by spaces) is `cmdline`.
fn pids_with(cmdline: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let seen = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&seen).replace('\0', " ").trim_end() == cmdline {
            out.push(pid);
        }
    }
    out
}

fn kill(pids: &[u32]) {
    for p in pids {
        // SAFETY: kill(2) on a pid this test found by its marker.
        unsafe { libc::kill(*p as i32, libc::SIGKILL) };
    }
}

/// After the session ended: its trace (by the alert's trace id) holds one alert span for
/// `rule`, the alert event is on the span the alert span names, and the root counts it.
fn check_closed_trace(agent: &FileAgent, alert: &Span, rule: &str) -> Vec<Span> {
    let trace = alert.trace_id.clone();
    let spans = wait_for(agent, 60, "root of the session's trace", |all| {
        all.iter().any(|s| s.trace_id == trace && s.is_root()).then(|| all.to_vec())
    });
    let spans: Vec<Span> = spans.into_iter().filter(|s| s.trace_id == trace).collect();
    let names: Vec<(String, Vec<Value>)> = spans.iter().map(|s| (s.name.clone(), s.events_named("alert"))).collect();
    assert_eq!(alert_spans(&spans, rule).len(), 1, "exactly one alert span for {rule:?}: {names:#?}");
    let about = alert.str("podtrail.alert.span_id").expect("the alert names its span");
    let on = spans.iter().find(|s| s.span_id == about).unwrap_or_else(|| panic!("no span {about}: {names:#?}"));
    let events: Vec<String> = on
        .events_named("alert")
        .iter()
        .filter_map(|e| e.get("security_rule.name").and_then(|v| v.as_str().map(str::to_owned)))
        .collect();
    assert_eq!(events, [rule], "the alert event on {:?}", on.name);
    let root = spans.iter().find(|s| s.is_root()).unwrap();
    let rules = root.attr("podtrail.alerts.rules").expect("the root names the rules that fired");
    assert!(rules.as_array().is_some_and(|r| r.iter().any(|v| v == rule)), "{rules}");
    let events_total: usize = spans.iter().map(|s| s.events_named("alert").len()).sum();
    assert_eq!(root.text("podtrail.alerts.count"), Some(events_total.to_string()), "each alert counted once");
    spans
}

use serde_json::Value;

#[test]
fn a_connect_of_a_process_that_keeps_running_raises_its_alert_while_it_runs() {
    let (_g, cd, c, dir) = setup();
    let mut agent = agent(&cd, dir.path(), "");
    // the session leaves a listener and a client connected to it, both running on
    let out = cd.exec(
        &c.id,
        &[
            "sh",
            "-c",
            "(sleep 100001 | nc -l -p 4444) </dev/null >/dev/null 2>&1 & sleep 0.5; \
             (sleep 100002 | nc 127.0.0.1 4444) </dev/null >/dev/null 2>&1 & echo started",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("started"), "{out:?}");
    let alert = wait_for(&agent, 30, "alert span of the connect", |s| alert_spans(s, PORT_RULE).pop());
    let pid: u32 = alert.text("process.pid").and_then(|p| p.parse().ok()).expect("process.pid on the alert");
    assert!(alive(pid, "nc"), "the connecting nc (pid {pid}) must still run when its alert is read");
    assert_eq!(alert.str("process.command").as_deref(), Some("nc"));
    assert_eq!(alert.str("k8s.pod.name").as_deref(), Some("api-7d9c"), "the session's attributes on the alert");
    assert_eq!(alert.str("podtrail.alert.severity").as_deref(), Some("high"));
    let spans = otlp_json::read(&agent.file());
    let in_trace = |name: &str| spans.iter().any(|s| s.trace_id == alert.trace_id && s.name == name);
    assert!(!in_trace("nc") && !in_trace("connect"), "nc has not ended: its spans are not out yet");

    let nc = [pids_with("nc -l -p 4444"), pids_with("nc 127.0.0.1 4444")].concat();
    assert_eq!(nc.len(), 2, "both nc run");
    kill(&[pids_with("sleep 100001"), pids_with("sleep 100002"), nc].concat());
    let spans = check_closed_trace(&agent, &alert, PORT_RULE);
    let on = spans.iter().find(|s| Some(&s.span_id) == alert.str("podtrail.alert.span_id").as_ref()).unwrap();
    assert_eq!(on.name, "connect", "the alert is about the connect span");
    assert_eq!(on.text("server.port").as_deref(), Some("4444"));
    agent.terminate();
}

#[test]
fn a_history_truncated_by_a_process_that_keeps_running_raises_its_alert_while_it_runs() {
    let (_g, cd, c, dir) = setup();
    let mut agent = agent(&cd, dir.path(), "");
    // a background subshell empties the history, then becomes a sleep that runs on
    let out = cd
        .exec(&c.id, &["sh", "-c", "(: > /root/.ash_history; exec sleep 100003) </dev/null >/dev/null 2>&1 & echo ok"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"), "{out:?}");
    let alert = wait_for(&agent, 30, "alert span of the truncation", |s| alert_spans(s, HISTORY).pop());
    let pid: u32 = alert.text("process.pid").and_then(|p| p.parse().ok()).expect("process.pid on the alert");
    assert!(alive(pid, "100003"), "the process (pid {pid}) must still run when its alert is read");
    assert_eq!(alert.str("file.path").as_deref(), Some("/root/.ash_history"));
    assert_eq!(alert.str("podtrail.file.op").as_deref(), Some("open"));

    kill(&[pid]);
    let spans = check_closed_trace(&agent, &alert, HISTORY);
    let on = spans.iter().find(|s| Some(&s.span_id) == alert.str("podtrail.alert.span_id").as_ref()).unwrap();
    assert_eq!(on.text("process.pid"), Some(pid.to_string()), "the alert is about the image that truncated");
    agent.terminate();
}

/// Issue 18: ten thousand decoy commands fill the session's span cap (10 000, the default),
/// then the payload (a packet capture tool) raises an alert: its span is still in the trail,
/// kept for its alert past the cap, with the alert event on it, and the root counts the
/// dropped decoys by kind and the payload as kept over the cap.
#[test]
fn the_payload_after_ten_thousand_decoys_keeps_its_span_and_alert() {
    const CAPTURE: &str = "Packet capture";
    let (_g, cd, c, dir) = setup();
    let mut agent = agent(&cd, dir.path(), "");
    let script = "i=0; while [ $i -lt 10050 ]; do /bin/echo decoy-$i; i=$((i+1)); done >/dev/null; \
                  /bin/tcpdump -i any payload-marker; echo done";
    let out = cd.exec(&c.id, &["sh", "-c", script]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("done"), "{out:?}");
    let spans = wait_for(&agent, 180, "the root of the decoy session", |all| {
        let t = all.iter().find(|s| s.args().iter().any(|a| a == "payload-marker"))?.trace_id.clone();
        all.iter()
            .any(|s| s.trace_id == t && s.is_root())
            .then(|| all.iter().filter(|s| s.trace_id == t).cloned().collect::<Vec<_>>())
    });
    agent.terminate();
    let root = spans.iter().find(|s| s.is_root()).unwrap();
    let int = |k: &str| root.text(k).map(|v| v.parse::<u64>().unwrap()).unwrap_or(0);
    let decoys = spans.iter().filter(|s| s.name == "echo").count() as u64;
    assert!(int("podtrail.session.spans_capped") > 0, "the cap was reached: {:?}", root.attrs);
    assert_eq!(int("podtrail.session.spans_capped.process") + decoys, 10_050, "every decoy exported or counted");
    assert_eq!(int("podtrail.session.spans_kept_over_cap"), 1, "the payload kept over the cap: {:?}", root.attrs);
    let payload = spans.iter().find(|s| s.name == "tcpdump").expect("the payload's span is in the trail");
    let rules: Vec<String> = payload
        .events_named("alert")
        .iter()
        .filter_map(|e| e.get("security_rule.name").and_then(|v| v.as_str().map(str::to_owned)))
        .collect();
    assert_eq!(rules, [CAPTURE], "the alert event on the payload's span");
    assert_eq!(alert_spans(&spans, CAPTURE).len(), 1, "and its live alert span, once");
    assert_eq!(root.text("podtrail.alerts.count").as_deref(), Some("1"));
}
