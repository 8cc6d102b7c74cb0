//! `podtrail show` and the file sink's rotation: recorded sessions go through the span and
//! rules stages and the real OTLP/JSON file sink into files; the real `podtrail show` binary
//! reads them back as session trees (golden output), filters them, and follows a file being
//! written across its rotation. Rotation is checked with the test's own OTLP/JSON reader
//! (support::otlp_json), not podtrail's.

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use podtrail::export::file::{rotated_path, FileExporter, Rotation};
use podtrail::model::SessionUpdate;
use podtrail::spans::SessionIdentity;
use support::rules::Run;
use support::sessions::*;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/show/recorded.jsonl");

fn bob() -> SessionIdentity {
    SessionIdentity {
        audit_id: Some("0c7d2f9e-5b1a-4e8c-9d3f-6a2b1c0e9f84".into()),
        trace_id: Some([
            0x0c, 0x7d, 0x2f, 0x9e, 0x5b, 0x1a, 0x4e, 0x8c, 0x9d, 0x3f, 0x6a, 0x2b, 0x1c, 0x0e, 0x9f, 0x84,
        ]),
        user_name: Some("bob@example.com".into()),
        user_extra: vec![],
        client_address: Some("198.51.100.23".into()),
        ..alice()
    }
}

/// The same session in another pod of another namespace, started `shift` later.
fn elsewhere(updates: Vec<SessionUpdate>, ns: &str, pod: &str, shift: u64) -> Vec<SessionUpdate> {
    let move_info = |i: &mut podtrail::model::SessionInfo| {
        let c = std::sync::Arc::make_mut(&mut i.container);
        c.pod_namespace = Some(ns.into());
        c.pod_name = Some(pod.into());
        i.start_ns += shift;
        i.end_ns = i.end_ns.map(|e| e + shift);
    };
    let move_rec = |r: &mut podtrail::model::ProcessRecord| {
        r.fork_ns += shift;
        r.exit_ns = r.exit_ns.map(|e| e + shift);
        for img in r.images.iter_mut() {
            img.start_ns += shift;
            img.end_ns = img.end_ns.map(|e| e + shift);
            for c in img.connects.iter_mut() {
                c.ts_ns += shift;
                c.end_ns = c.end_ns.map(|e| e + shift);
            }
        }
    };
    updates
        .into_iter()
        .map(|mut u| {
            match &mut u {
                SessionUpdate::Started(i) | SessionUpdate::Transcript(i, _) => move_info(std::sync::Arc::make_mut(i)),
                SessionUpdate::Live(i, r, _) | SessionUpdate::ProcessEnded(i, r) => {
                    move_info(std::sync::Arc::make_mut(i));
                    move_rec(r);
                }
                SessionUpdate::Ended(i, rs) => {
                    move_info(std::sync::Arc::make_mut(i));
                    rs.iter_mut().for_each(move_rec);
                }
            }
            u
        })
        .collect()
}

/// Three sessions as the agent would export them: alice's shell in billing, bob's in
/// payments (10 minutes later), and an unattributed nsenter from the node.
fn recorded_sessions() -> Vec<Vec<SpanData>> {
    vec![
        Run { who: Some(alice()), attribution_configured: true, ..Run::default() }.spans(shell_session()),
        Run { who: Some(bob()), attribution_configured: true, ..Run::default() }.spans(elsewhere(
            shell_session(),
            "payments",
            "ledger-0",
            600 * S,
        )),
        Run { attribution_configured: true, ..Run::default() }.spans(nsenter_session()),
    ]
}

fn resource() -> Resource {
    Resource::builder_empty().with_service_name("podtrail").build()
}

/// Batches as the export stage sends them: a few spans each, sessions interleaved, so a
/// session's spans lie on several lines (and, with rotation, in several files).
fn batches(sessions: &[Vec<SpanData>], per_batch: usize) -> Vec<Vec<SpanData>> {
    let mut chunks: Vec<std::collections::VecDeque<Vec<SpanData>>> =
        sessions.iter().map(|s| s.chunks(per_batch).map(<[SpanData]>::to_vec).collect()).collect();
    let mut out = Vec::new();
    while chunks.iter().any(|c| !c.is_empty()) {
        for c in chunks.iter_mut() {
            out.extend(c.pop_front());
        }
    }
    out
}

async fn write(f: &FileExporter, batches: Vec<Vec<SpanData>>) {
    for b in batches {
        f.export(b).await.expect("the file sink writes");
    }
}

fn podtrail() -> Command {
    Command::new(env!("CARGO_BIN_EXE_podtrail"))
}

fn show(args: &[&str]) -> String {
    let out = podtrail().arg("show").args(args).output().expect("podtrail show runs");
    assert!(out.status.success(), "podtrail show {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Writes the recorded sessions through the file sink into `path`.
async fn record(path: &Path, rotation: Option<Rotation>) {
    let f = FileExporter::open_rotating(path, rotation, &resource()).unwrap();
    write(&f, batches(&recorded_sessions(), 4)).await;
}

#[tokio::test]
async fn show_renders_a_recorded_file_as_the_consoles_session_trees() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("traces.jsonl");
    record(&fresh, None).await;
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(Path::new(FIXTURE).parent().unwrap()).unwrap();
        std::fs::copy(&fresh, FIXTURE).unwrap();
    }
    let text = show(&[FIXTURE]);
    support::golden::check("show_sessions", &text);
    // the committed recording is what the file sink writes today
    assert_eq!(show(&[fresh.to_str().unwrap()]), text, "tests/fixtures/show/recorded.jsonl is stale");
    // whatever the golden says: three sessions, oldest first, each whole
    let heads: Vec<&str> = text.lines().filter(|l| !l.starts_with(' ')).collect();
    assert_eq!(heads.len(), 3, "{text}");
    assert!(heads[0].contains("exec  unattributed"), "{text}");
    assert!(heads[1].contains("kubectl exec  alice@example.com from 203.0.113.7  billing/api-7d9f8-x2x7q"), "{text}");
    assert!(heads[2].contains("kubectl exec  bob@example.com from 198.51.100.23  payments/ledger-0"), "{text}");
    assert_eq!(text.matches("connect 10.244.1.5:8080 tcp connected").count(), 2, "{text}");
    assert!(text.contains("(killed by signal 15)"), "{text}");
}

#[tokio::test]
async fn show_filters_by_namespace_pod_user_time_and_audit_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("traces.jsonl");
    record(&path, None).await;
    let p = path.to_str().unwrap();
    let users = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with(' '))
            .map(|l| l.split_whitespace().nth(3).unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(users(&show(&[p, "--namespace", "payments"])), ["bob@example.com"]);
    assert_eq!(users(&show(&[p, "--pod", "api-7d9f8-x2x7q", "--user", "alice@example.com"])), ["alice@example.com"]);
    assert_eq!(users(&show(&[p, "--user", "bob@example.com", "--namespace", "billing"])), Vec::<String>::new());
    // as Kubernetes prints the audit id, and as a trace id (no dashes, upper case too)
    assert_eq!(users(&show(&[p, "--audit-id", "0c7d2f9e-5b1a-4e8c-9d3f-6a2b1c0e9f84"])), ["bob@example.com"]);
    assert_eq!(users(&show(&[p, "--audit-id", "4B5F3C7E8D2A4F199C3E2A1B0D9E8F70"])), ["alice@example.com"]);
    // the sessions were recorded in 2023: an age keeps none, a time before bob's keeps his
    assert_eq!(show(&[p, "--since", "7d"]), "");
    assert_eq!(users(&show(&[p, "--since", "2023-11-14T22:18:00Z"])), ["bob@example.com"]);
    let bad = podtrail().args(["show", p, "--since", "last week"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2), "a bad --since is a usage error");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--since"), "{bad:?}");
    let missing = podtrail().args(["show", "/nonexistent/traces.jsonl"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(2));
}

#[tokio::test]
async fn a_line_that_is_not_otlp_json_is_skipped_counted_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("traces.jsonl");
    record(&path, None).await;
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.insert_str(0, "{\"resourceSpans\": [oops\n");
    std::fs::write(&path, text).unwrap();
    let out = podtrail().args(["show", path.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("traces.jsonl:1: skipped") && err.contains("1 line(s) skipped"), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.starts_with(' ')).count(), 3);
}

/// Every span (trace id, span id) in `files`, read by the test's own OTLP/JSON reader.
fn span_ids(files: &[PathBuf]) -> Vec<(String, String)> {
    files.iter().flat_map(|f| support::otlp_json::read(f)).map(|s| (s.trace_id, s.span_id)).collect()
}

#[tokio::test]
async fn rotation_keeps_the_configured_count_and_loses_nothing_across_a_rotation() {
    let sessions = recorded_sessions();
    let all: Vec<SpanData> = sessions.iter().flatten().cloned().collect();
    let want: BTreeSet<(String, String)> =
        all.iter().map(|s| (s.span_context.trace_id().to_string(), s.span_context.span_id().to_string())).collect();
    let one_line = FileExporter::encode(batches(&sessions, 4)[0].clone(), &(&resource()).into()).unwrap().len() as u64;

    // enough kept files: every span is in exactly one file, each file within its size
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("traces.jsonl");
    let rot = Rotation { max_bytes: one_line * 2, keep: 100 };
    record(&path, Some(rot)).await;
    let mut files: Vec<PathBuf> = (1..=100).rev().map(|n| rotated_path(&path, n)).filter(|p| p.exists()).collect();
    files.push(path.clone());
    assert!(files.len() >= 3, "rotated {} times", files.len() - 1);
    let got = span_ids(&files);
    assert_eq!(got.len(), all.len(), "no span written twice or lost");
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want);
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        // over the size only when a single line is (a line is never split)
        assert!(
            text.len() as u64 <= rot.max_bytes || text.lines().count() == 1,
            "{}: {} bytes",
            f.display(),
            text.len()
        );
        assert!(text.ends_with('\n'), "a line is never split: {}", f.display());
    }
    // and `podtrail show` of the rotated files, oldest first, is the unrotated output
    let mut args: Vec<&str> = files.iter().map(|f| f.to_str().unwrap()).collect();
    let whole = show(&args);
    assert_eq!(whole, show(&[FIXTURE]));
    args.reverse();
    assert_eq!(show(&args).lines().count(), whole.lines().count(), "order of files does not lose sessions");

    // keep 2: FILE, FILE.1, FILE.2 and nothing older; what they hold is the newest lines
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("traces.jsonl");
    record(&path, Some(Rotation { keep: 2, ..rot })).await;
    assert!(rotated_path(&path, 1).exists() && rotated_path(&path, 2).exists());
    assert!(!rotated_path(&path, 3).exists(), "only 2 rotated files are kept");
    let kept = span_ids(&[rotated_path(&path, 2), rotated_path(&path, 1), path.clone()]);
    let written: Vec<(String, String)> = batches(&sessions, 4)
        .into_iter()
        .flatten()
        .map(|s| (s.span_context.trace_id().to_string(), s.span_context.span_id().to_string()))
        .collect();
    assert!(!kept.is_empty() && kept.len() < written.len());
    assert_eq!(kept, written[written.len() - kept.len()..], "the kept files are the newest, in order");
}

struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Follower {
    fn start(path: &Path) -> Self {
        let mut child = podtrail()
            .args(["show", "--follow", path.to_str().unwrap()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("podtrail show --follow starts");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Follower { child, lines, seen: Vec::new() }
    }

    /// Reads printed lines until `done` holds for what was printed (fails after 30 s).
    fn until(&mut self, want: &str, done: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => panic!("podtrail show --follow never printed {want}; printed:\n{}", self.seen.join("\n")),
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn follow_prints_each_session_as_its_root_is_written_across_rotations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("traces.jsonl");
    let sessions = recorded_sessions();
    let one_line = FileExporter::encode(sessions[0][..4].to_vec(), &(&resource()).into()).unwrap().len() as u64;
    // the file does not exist yet when show starts: the agent creates it
    let mut f = Follower::start(&path);
    std::thread::sleep(Duration::from_millis(300));
    let sink =
        FileExporter::open_rotating(&path, Some(Rotation { max_bytes: one_line * 2, keep: 50 }), &resource()).unwrap();
    let expected = show(&[FIXTURE]);
    // each session is printed once its root is written, before the next one is
    for (s, who) in sessions.iter().zip(["alice@example.com", "bob@example.com", "unattributed"]) {
        write(&sink, s.chunks(3).map(<[SpanData]>::to_vec).collect()).await;
        f.until(who, |seen| seen.iter().any(|l| !l.starts_with(' ') && l.contains(who)));
    }
    assert!(rotated_path(&path, 3).exists(), "the file rotated while followed");
    let total = expected.lines().count();
    f.until(&format!("{total} lines"), |seen| seen.len() >= total);
    // the same lines as the whole file shows (sessions in the order their roots came)
    let mut followed = f.seen.clone();
    let mut whole: Vec<String> = expected.lines().map(str::to_owned).collect();
    followed.sort();
    whole.sort();
    assert_eq!(followed, whole, "followed across rotations: nothing lost or doubled");
}
