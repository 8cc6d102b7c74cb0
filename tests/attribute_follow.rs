//! The audit log follower on real files: rotation by rename, copytruncate, partial and
//! over-long lines, a file that appears late, and malformed lines.

use podtrail::attribute::follow::{follow, ingest, FollowConfig, LogFollower};
use podtrail::attribute::{AttributeMetrics, AttributionSource, RecordStore, SessionQuery, StoreConfig};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const LOG: &str = include_str!("fixtures/audit/audit.log");

fn append(path: &Path, text: &str) {
    let mut f = OpenOptions::new().create(true).append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn line(audit_id: &str, stage: &str) -> String {
    format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"{audit_id}","stage":"{stage}","requestURI":"/api/v1/namespaces/billing/pods/api-7d9c/exec?command=ps\u0026container=api\u0026stdout=true","verb":"get","user":{{"username":"john.doe@example.com","groups":["dev","system:authenticated"]}},"sourceIPs":["66.249.64.55"],"objectRef":{{"resource":"pods","namespace":"billing","name":"api-7d9c","apiVersion":"v1","subresource":"exec"}},"requestReceivedTimestamp":"2026-03-02T16:20:00.000000Z","stageTimestamp":"2026-03-02T16:20:00.000000Z"}}
"#
    )
}

fn texts(lines: &[Vec<u8>]) -> Vec<String> {
    lines.iter().map(|l| String::from_utf8_lossy(l).into_owned()).collect()
}

#[test]
fn fixture_log_yields_one_request_and_counts_the_malformed_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    std::fs::write(&path, LOG).unwrap();
    let store = RecordStore::new(StoreConfig::default());
    let mut f = LogFollower::new(FollowConfig::new(&path));
    let lines = f.poll().unwrap();
    assert_eq!(lines.lines.len(), 4);
    assert_eq!(ingest(&store, lines), 1);
    assert_eq!(store.len(), 1);
    assert_eq!(store.metrics().rejected_count("malformed_line"), 1);
    assert_eq!(AttributeMetrics::by_source(&store.metrics().accepted, "audit_log"), 3);
    let a = store
        .match_session(&SessionQuery {
            pod_namespace: Some("billing".into()),
            pod_name: Some("api-7d9c".into()),
            pod_uid: None,
            container_name: Some("api".into()),
            argv: vec!["ps".into(), "aux".into()],
            started_at: SystemTime::from("2026-03-02T16:10:00.1Z".parse::<jiff::Timestamp>().unwrap()),
            env_audit_id: None,
        })
        .unwrap();
    assert_eq!(a.source, AttributionSource::AuditLog);
    // Nothing new: nothing read.
    assert!(f.poll().unwrap().lines.is_empty());
}

#[test]
fn rename_rotation_finishes_the_old_file_then_reads_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    append(&path, "one\n");
    let mut f = LogFollower::new(FollowConfig::new(&path));
    assert_eq!(texts(&f.poll().unwrap().lines), vec!["one"]);
    // The API server renames the file away and opens a new one; a line still reached the old
    // file after our last read.
    let rotated = dir.path().join("audit-2026-03-02T16-00-00.000.log");
    append(&path, "two\n");
    std::fs::rename(&path, &rotated).unwrap();
    append(&rotated, "three\n");
    append(&path, "four\n");
    assert_eq!(texts(&f.poll().unwrap().lines), vec!["two", "three", "four"]);
    append(&path, "five\n");
    assert_eq!(texts(&f.poll().unwrap().lines), vec!["five"]);
}

#[test]
fn copytruncate_starts_the_same_file_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    append(&path, "a long first line\nanother long line\n");
    let mut f = LogFollower::new(FollowConfig::new(&path));
    assert_eq!(f.poll().unwrap().lines.len(), 2);
    std::fs::copy(&path, dir.path().join("audit.log.1")).unwrap();
    OpenOptions::new().write(true).open(&path).unwrap().set_len(0).unwrap();
    append(&path, "new\n");
    assert_eq!(texts(&f.poll().unwrap().lines), vec!["new"]);
}

#[test]
fn partial_lines_wait_for_their_newline_and_long_lines_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let mut cfg = FollowConfig::new(&path);
    cfg.max_line_bytes = 16;
    let mut f = LogFollower::new(cfg);
    append(&path, "half");
    assert!(f.poll().unwrap().lines.is_empty());
    append(&path, "-done\n");
    assert_eq!(texts(&f.poll().unwrap().lines), vec!["half-done"]);
    append(&path, &format!("{}\nshort\n", "x".repeat(100)));
    let got = f.poll().unwrap();
    assert_eq!(got.too_long, 1);
    assert_eq!(texts(&got.lines), vec!["short"]);
}

#[test]
fn a_file_that_appears_later_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let mut f = LogFollower::new(FollowConfig::new(&path));
    assert!(f.poll().unwrap().lines.is_empty());
    append(&path, "hello\n");
    assert_eq!(texts(&f.poll().unwrap().lines), vec!["hello"]);
}

#[tokio::test]
async fn follow_task_feeds_the_store_until_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let store = Arc::new(RecordStore::new(StoreConfig::default()));
    let mut cfg = FollowConfig::new(&path);
    cfg.poll_interval = Duration::from_millis(20);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(follow(cfg, store.clone(), async move {
        let _ = stopped.await;
    }));
    append(&path, &line("c0ffee00-0000-4000-8000-000000000001", "RequestReceived"));
    append(&path, &line("c0ffee00-0000-4000-8000-000000000001", "ResponseStarted"));
    for _ in 0..200 {
        if AttributeMetrics::by_source(&store.metrics().accepted, "audit_log") == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(AttributeMetrics::by_source(&store.metrics().accepted, "audit_log"), 2);
    assert_eq!(store.len(), 1);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("follower stops on shutdown").unwrap();
}
