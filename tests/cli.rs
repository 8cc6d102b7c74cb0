//! The command line as a user meets it: help that documents the output, one clear sentence
//! and a distinct exit code for each kind of failure.

use std::process::Command;

fn podtrail() -> Command {
    Command::new(env!("CARGO_BIN_EXE_podtrail"))
}

#[test]
fn capture_help_documents_every_event_kind_and_field() {
    let out = podtrail().args(["capture", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for word in [
        "exec",
        "fork",
        "exit",
        "connect",
        "connect_result",
        "udp_send",
        "ns_join",
        "argv",
        "start_ns",
        "loginuid",
        "cookie",
        "\\xNN",
    ] {
        assert!(help.contains(word), "capture --help does not mention {word}");
    }
}

#[test]
fn without_privilege_capture_names_what_is_missing_and_exits_3() {
    // drop every capability, as an unprivileged user would run it
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(env!("CARGO_BIN_EXE_podtrail"))
        .args(["capture", "--duration", "1"])
        .output()
        .expect("setpriv (util-linux) runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr: {err}");
    assert!(
        err.contains("CAP_BPF") && err.contains("setcap"),
        "one sentence naming the capability and how to grant it: {err}"
    );
    assert_eq!(err.lines().filter(|l| l.starts_with("podtrail:")).count(), 1, "{err}");
}

#[test]
fn bad_input_is_a_usage_error_naming_the_key() {
    let out = podtrail().args(["capture", "--ring-mib", "3"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ring-mib"));
    // a kind that does not exist would print nothing forever: refused before loading anything
    let out = podtrail().args(["capture", "--kinds", "exec,forks"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--kinds") && err.contains("\"forks\"") && err.contains("connect_result"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[capture]\nring_mb = 4\n").unwrap();
    let out = podtrail().args(["config", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ring_mb") && err.contains("bad.toml"), "{err}");

    let out = podtrail().args(["config", "--config", "/nonexistent/podtrail.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn config_prints_the_defaults_as_valid_toml() {
    let out = podtrail().arg("config").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let parsed = podtrail::config::Config::from_toml(&text).expect("round trip");
    assert_eq!(parsed, podtrail::config::Config::default());
}

#[test]
fn a_bad_export_setting_is_a_usage_error_before_anything_starts() {
    // a listener would fail to bind on this taken port: the export error must come first
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = podtrail()
        .args(["run", "--duration", "1", "--metrics-listen", "", "--audit-webhook-loopback", &addr])
        .args(["--otlp-endpoint", "collector:4317"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(err.contains("export") && err.contains("collector:4317"), "{err}");
    assert!(!err.contains("cannot listen"), "validated before binding: {err}");
}
