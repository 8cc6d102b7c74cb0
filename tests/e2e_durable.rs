//! The durable export queue end to end (issue 14): real container sessions in a private
//! containerd, the real `podtrail run`, a real Jaeger v2 that goes away and comes back, and
//! `kill -9` of the agent mid-stream. What the agent accepted is what its OTLP/JSON file sink
//! wrote (the disk queue is written first, before any sink gets a span); what arrived is read
//! back from Jaeger's raw API (`/api/v3/traces/{id}?raw_traces=true`: no adjusters, so a span
//! stored twice shows twice; the default API merges identical spans).
//!
//! Needs root, containerd/runc/ctr, busybox-static and Jaeger (tests/harness/jaeger.sh).
//! Outside CI a missing container prerequisite skips with a message; under `CI` it fails.
//! Run: `cargo test --release --test e2e_durable`.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::agent::*;
use support::containers::{unique, Container, Containerd};
use support::jaeger::Jaeger;
use support::net::http_get;

static SERIAL: Mutex<()> = Mutex::new(());

fn agent_config(dir: &Path, cd: &Containerd) -> std::path::PathBuf {
    let p = dir.join("podtrail.toml");
    // backoff capped at 2 s, so the queue drains soon after the backend is back
    std::fs::write(
        &p,
        containerd_config(&cd.address, &cd.namespace, "[export]\nretry_initial_ms = 200\nretry_max_ms = 2000\n# Jaeger takes no logs: no alert log records\nalert_logs = false\n"),
    )
    .unwrap();
    p
}

fn idle_container(cd: &Containerd, name: &str) -> Container {
    cd.run(
        &[
            ("io.kubernetes.pod.name", "durable-0"),
            ("io.kubernetes.pod.namespace", "queue"),
            ("io.kubernetes.container.name", name),
        ],
        &[],
        &["sleep", "100000"],
    )
}

/// Runs short sessions (a shell, `ls`, `cat`: about four spans each) one after another until
/// `stop`; counts them.
fn sessions(cd: &Containerd, c: &Container, stop: &AtomicBool, count: &AtomicU64) {
    while !stop.load(Ordering::Relaxed) {
        let out = cd.exec(&c.id, &["sh", "-c", "ls / >/dev/null; cat /etc/hostname >/dev/null; echo ok"]);
        assert!(out.status.success(), "session failed: {}", String::from_utf8_lossy(&out.stderr));
        count.fetch_add(1, Ordering::Relaxed);
    }
}

/// Span ids as lowercase hex, whether the JSON has hex or base64.
fn hex_id(s: &str) -> String {
    if s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return s.to_ascii_lowercase();
    }
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = String::new();
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = T.iter().position(|t| *t == c).unwrap_or_else(|| panic!("span id {s:?} is neither hex nor base64"));
        bits = (bits << 6) | v as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push_str(&format!("{:02x}", (bits >> n) & 0xff));
        }
    }
    out
}

/// Every span id stored for a trace, as often as Jaeger stored it.
fn raw_span_ids(j: &Jaeger, trace: &str) -> Vec<String> {
    let Ok((200, body)) = http_get(&format!("{}/api/v3/traces/{trace}?raw_traces=true", j.query)) else {
        return Vec::new();
    };
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("Jaeger v3 answer: {e}: {body}"));
    let mut out = Vec::new();
    for rs in v["result"]["resourceSpans"].as_array().into_iter().flatten() {
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for s in ss["spans"].as_array().into_iter().flatten() {
                out.push(hex_id(s["spanId"].as_str().unwrap_or_default()));
            }
        }
    }
    out
}

/// (trace id, span id, name, attributes as (key, string value)) of a span.
type FileSpan = (String, String, String, Vec<(String, String)>);

/// Each span of an OTLP/JSON file sink.
fn file_spans(path: &Path) -> Vec<FileSpan> {
    support::otlp_json::read(path)
        .into_iter()
        .map(|s| {
            let attrs = s
                .attrs
                .iter()
                .filter_map(|kv| Some((kv["key"].as_str()?.to_owned(), s.text(kv["key"].as_str()?)?)))
                .collect();
            (s.trace_id, s.span_id, s.name, attrs)
        })
        .collect()
}

/// (trace id -> span ids) of an OTLP/JSON file sink.
fn file_ids(path: &Path) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (trace, span, _, _) in file_spans(path) {
        m.entry(trace).or_default().push(hex_id(&span));
    }
    m
}

/// How often each expected span arrived at Jaeger: (missing, duplicated, arrived).
fn arrivals(j: &Jaeger, want: &BTreeMap<String, Vec<String>>) -> (Vec<String>, BTreeMap<String, usize>, usize) {
    let (mut missing, mut dup, mut arrived) = (Vec::new(), BTreeMap::new(), 0);
    for (trace, ids) in want {
        let mut got: HashMap<String, usize> = HashMap::new();
        for id in raw_span_ids(j, trace) {
            *got.entry(id).or_default() += 1;
        }
        for id in ids {
            match got.get(id).copied().unwrap_or(0) {
                0 => missing.push(format!("{trace}/{id}")),
                1 => arrived += 1,
                n => {
                    arrived += 1;
                    dup.insert(format!("{trace}/{id}"), n);
                }
            }
        }
    }
    (missing, dup, arrived)
}

fn wait_all_arrived(
    j: &Jaeger,
    want: &BTreeMap<String, Vec<String>>,
    secs: u64,
    log: &dyn Fn() -> String,
) -> BTreeMap<String, usize> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (missing, dup, _) = arrivals(j, want);
        if missing.is_empty() {
            return dup;
        }
        assert!(
            Instant::now() < deadline,
            "{} of the accepted spans never reached Jaeger within {secs}s (first: {:?})\n{}",
            missing.len(),
            &missing[..missing.len().min(5)],
            log()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn queue_files(state: &Path) -> usize {
    std::fs::read_dir(state.join("queue/otlp"))
        .map(|d| d.filter_map(|e| e.ok()).filter(|e| e.path().extension().is_some_and(|x| x == "seg")).count())
        .unwrap_or(0)
}

#[test]
fn a_backend_outage_loses_nothing_and_duplicates_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Scratch::new("durable-outage");
    let cd = Containerd::start();
    let name = unique("q");
    let c = idle_container(&cd, &name);
    let mut jaeger = Jaeger::start(&dir.join("jaeger"));
    let cfg = agent_config(&dir, &cd);
    let file = dir.join("spans.jsonl");
    let endpoint = format!("http://{}", jaeger.otlp_grpc);
    let mut agent = Podtrail::start(
        &dir,
        &["--config", cfg.to_str().unwrap(), "--otlp-endpoint", &endpoint, "--otlp-file", file.to_str().unwrap()],
    );
    // what was sent before the outage went to the Jaeger that the outage ends (in-memory)
    jaeger.wait_for(30, "the agent's start span", |_| (!file_spans(&file).is_empty()).then_some(()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&agent.scrape(), "podtrail_export_queue_spans ").unwrap_or(1.0) > 0.0 {
        assert!(Instant::now() < deadline, "the queue never drained before the outage");
        std::thread::sleep(Duration::from_millis(200));
    }
    let before: BTreeSet<String> = file_spans(&file).into_iter().map(|s| hex_id(&s.1)).collect();
    // what the old Jaeger took is gone with it: only this container's sessions are counted,
    // which start once it is down (other containers on the machine run sessions any time)

    jaeger.stop();
    let t_down = Instant::now();
    let (stop, count) = (AtomicBool::new(false), AtomicU64::new(0));
    let outage = Duration::from_secs(40);
    std::thread::scope(|s| {
        s.spawn(|| sessions(&cd, &c, &stop, &count));
        // while down: spans pile up on disk; none is given up, the reader loses nothing
        std::thread::sleep(outage / 2);
        let m = agent.scrape();
        assert_eq!(metric(&m, "podtrail_spans_lost_total").unwrap_or(0.0), 0.0, "nothing lost while down:\n{m}");
        assert!(metric(&m, "podtrail_export_queue_spans ").unwrap_or(0.0) > 0.0, "spans wait in the queue:\n{m}");
        assert!(metric(&m, "podtrail_export_queue_bytes ").unwrap_or(0.0) > 0.0, "on disk:\n{m}");
        assert!(queue_files(&dir.join("state")) >= 1);
        assert!(
            metric(&m, "podtrail_export_requests_total{result=\"retry\"}").unwrap_or(0.0) >= 3.0,
            "the exporter is retrying:\n{m}"
        );
        std::thread::sleep(outage.saturating_sub(t_down.elapsed()));
        stop.store(true, Ordering::Relaxed);
    });
    let sessions_run = count.load(Ordering::Relaxed);
    assert!(sessions_run >= 10, "only {sessions_run} sessions ran during the outage");
    let m = agent.scrape();
    assert_eq!(metric(&m, "podtrail_spans_lost_total").unwrap_or(0.0), 0.0, "{m}");
    assert_eq!(metric(&m, "podtrail_kernel_dropped{").unwrap_or(0.0), 0.0, "{m}");
    // a second or two for the last session's spans to reach the sinks
    std::thread::sleep(Duration::from_secs(3));
    let mut during: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (trace, span, _, attrs) in file_spans(&file) {
        let id = hex_id(&span);
        let mine = attrs.iter().any(|(k, v)| k == "k8s.container.name" && v == &name);
        if mine && !before.contains(&id) {
            during.entry(trace).or_default().push(id);
        }
    }
    let n: usize = during.values().map(Vec::len).sum();
    eprintln!(
        "{sessions_run} sessions, {n} spans in {} traces during a {}s outage",
        during.len(),
        t_down.elapsed().as_secs()
    );
    assert!(n as u64 >= sessions_run * 3, "{n} spans for {sessions_run} sessions");

    jaeger.restart();
    let t_up = Instant::now();
    let dup = wait_all_arrived(&jaeger, &during, 90, &|| agent.log_text());
    eprintln!("all {n} spans in Jaeger {:.1}s after it came back", t_up.elapsed().as_secs_f64());
    assert!(dup.is_empty(), "spans stored twice: {dup:?}");

    let log = agent.stop();
    let (kernel_dropped, otlp) = exit_report(&log, "otlp");
    let (_, to_file) = exit_report(&log, "file");
    assert_eq!((otlp.lost(), to_file.lost(), kernel_dropped), (0, 0, 0), "{otlp:?} {to_file:?}");
    assert_eq!(otlp.exported, to_file.exported, "the OTLP sink sent each span once: {otlp:?} vs {to_file:?}");
    assert!(log.contains("spans wait in the durable queue"), "the outage is logged once:\n{log}");
    assert_eq!(queue_files(&dir.join("state")), 1, "acknowledged segments are deleted");
}

#[test]
fn kill_9_mid_stream_then_restart_sends_everything_accepted_and_records_the_gap() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Scratch::new("durable-kill");
    let cd = Containerd::start();
    let c = idle_container(&cd, &unique("q"));
    let state = dir.join("state");
    let cfg = agent_config(&dir, &cd);
    // Jaeger's ports, known before it runs: the first agent sends to nobody
    let mut jaeger = Jaeger::start(&dir.join("jaeger"));
    jaeger.stop();
    let endpoint = format!("http://{}", jaeger.otlp_grpc);
    let start = |n: u32| {
        let d = dir.join(format!("agent{n}"));
        std::fs::create_dir_all(&d).unwrap();
        let file = d.join("spans.jsonl");
        let a = Podtrail::start(
            &d,
            &[
                "--config",
                cfg.to_str().unwrap(),
                "--otlp-endpoint",
                &endpoint,
                "--otlp-file",
                file.to_str().unwrap(),
                "--state-dir",
                state.to_str().unwrap(),
            ],
        );
        (a, file)
    };
    let (stop, count) = (AtomicBool::new(false), AtomicU64::new(0));
    let (mut first, file1) = start(1);
    // a second agent on the same directory is refused, naming the holder
    let d = dir.join("intruder");
    std::fs::create_dir_all(&d).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_podtrail"))
        .args([
            "run",
            "--metrics-listen",
            "",
            "--config",
            cfg.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second agent on a held state directory ran:\n{err}");
    assert!(err.contains(&format!("held by another agent (pid {})", first.pid())), "{err}");

    let (pid1, second, third, file2, file3) = std::thread::scope(|s| {
        s.spawn(|| sessions(&cd, &c, &stop, &count));
        // 1: the backend is down; kill -9 while sessions run and spans wait on disk
        std::thread::sleep(Duration::from_secs(20));
        let pid1 = first.pid();
        let queued = metric(&first.scrape(), "podtrail_export_queue_spans ").unwrap_or(0.0);
        assert!(queued > 10.0, "spans wait on disk before the kill: {queued}");
        first.kill9();
        eprintln!("killed agent 1 (pid {pid1}) with {queued} spans queued");
        // 2: the backend is back; a new agent on the same directory, sessions still running
        jaeger.restart();
        let (mut second, file2) = start(2);
        std::thread::sleep(Duration::from_secs(15));
        // 3: kill -9 again while it sends to a live backend: at most the batch in flight twice
        second.kill9();
        let (third, file3) = start(3);
        std::thread::sleep(Duration::from_secs(10));
        stop.store(true, Ordering::Relaxed);
        (pid1, second, third, file2, file3)
    });
    let mut third = third;
    std::thread::sleep(Duration::from_secs(3));
    let log3 = || third.log_text();

    let mut want = file_ids(&file1);
    let n1: usize = want.values().map(Vec::len).sum();
    for f in [&file2, &file3] {
        for (t, ids) in file_ids(f) {
            want.entry(t).or_default().extend(ids);
        }
    }
    let n: usize = want.values().map(Vec::len).sum();
    eprintln!("{} sessions; {n1} spans accepted by agent 1, {n} by all three", count.load(Ordering::Relaxed));
    assert!(n1 > 20, "agent 1 accepted {n1} spans");
    let dup = wait_all_arrived(&jaeger, &want, 90, &log3);
    let dups: usize = dup.values().map(|c| c - 1).sum();
    eprintln!("every accepted span is in Jaeger; {dups} stored twice: {dup:?}");
    // batch_spans is 512: a kill can resend the one batch in flight, no more
    assert!(dups <= 512, "{dups} duplicates: more than one batch");

    // the agent's trace after each kill says the node was not watched, and since when
    let log2 = second.log_text();
    assert!(log2.contains("the previous agent did not stop cleanly"), "{log2}");
    assert!(log2.contains("sending what the previous run left"), "{log2}");
    let gaps = jaeger.search_tags(&[("podtrail.agent.event", "gap")]);
    assert_eq!(gaps.len(), 2, "one gap per kill: {gaps:?}");
    let mut pids = Vec::new();
    for t in &gaps {
        let spans = jaeger.trace(t).expect("gap trace");
        let gap = spans.iter().find(|s| s.tag("podtrail.agent.event") == Some("gap")).unwrap();
        assert_eq!(gap.name, "podtrail agent gap");
        assert_eq!(gap.tag("podtrail.agent.gap.from"), Some("heartbeat"), "{:?}", gap.tags);
        pids.push(gap.tag("podtrail.agent.gap.previous_pid").unwrap().to_owned());
        let start = spans.iter().find(|s| s.tag("podtrail.agent.event") == Some("start"));
        assert!(start.is_some(), "the gap is in the new agent's own trace: {spans:?}");
    }
    assert!(pids.contains(&pid1.to_string()), "{pids:?} lacks agent 1's pid {pid1}");

    let log = third.stop();
    let (_, otlp) = exit_report(&log, "otlp");
    assert_eq!(otlp.lost(), 0, "{otlp:?}");
    // a clean stop: the next start finds no gap
    assert!(!state.join("running").exists());
}
