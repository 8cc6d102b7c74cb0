//! Issue 13 end to end on one machine: secrets, terminal control and oversized client strings
//! from a real container session. A private containerd + runc (tests/support), a busybox
//! container labelled as pod `billing/api-7d9c`, the real `podtrail run` binary with its
//! loopback audit webhook, an OTLP/JSON file and the console tree on stdout, a redaction key.
//!
//! The container runs each secret form (the commands need not succeed: what is proved is what
//! the kernel saw of their argv and what podtrail wrote of it): `mysql -pS3cret` as argv and
//! inside `sh -c`, twice; `wget --header 'Authorization: Bearer ...' https://user:pass@...`;
//! `KEY=value` and an AWS key id. Then: none of the secrets is in the file, on the console or
//! in podtrail's log; each is a `<redacted:...>` token, the same token both times; an argv with
//! ESC and RLO prints escaped; an audit record whose id is 1 MiB (and whose requested command
//! carries the password) still attributes its session, capped, and the batch exports.
//! Needs root and containerd; fails (never skips) under CI when they are missing.

mod support;

use std::{
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use support::agent::FileAgent;
use support::audit::{event_list, exec_events, pod_labels};
use support::containers::Containerd;

const KEY: &str = "e2e-cluster-redaction-key";
const DB_PASSWORD: &str = "S3cretDB-77";
const BEARER: &str = "tok3nABCDEFghij";
const URL_PASSWORD: &str = "pa55wordURL";
const ENV_SECRET: &str = "envSecretValue9";
const AWS_ID: &str = "AKIAIOSFODNN7EXAMPLE";
const SECRETS: &[&str] = &[DB_PASSWORD, BEARER, URL_PASSWORD, ENV_SECRET, AWS_ID];

/// `podtrail run` following the test's containerd, its loopback audit webhook on, holding
/// sessions 3 s for their record, the console tree on stdout, the cluster's redaction key, and
/// its log at debug (no secret may reach even that).
fn start_agent(cd: &Containerd) -> FileAgent {
    let extra = format!(
        "[attribution]\nhold_ms = 3000\n\n[metrics]\nlisten = \"\"\n\n[export]\nconsole = true\n\n[spans.redact]\nkey = {KEY:?}\n"
    );
    let config = support::agent::containerd_config(&cd.address, &cd.namespace, &extra);
    FileAgent::start_audited(&config, &["--log-level", "debug"])
}

/// The audit events (RequestReceived, ResponseStarted) of one `kubectl exec` of `command`
/// into billing/api-7d9c, as the API server's webhook backend posts them.
fn exec_request(audit_id: &str, command: &[&str]) -> serde_json::Value {
    event_list(exec_events(audit_id, command, SystemTime::now(), &["RequestReceived", "ResponseStarted"]))
}

#[test]
fn secrets_never_leave_the_agent_and_the_console_is_safe_to_read() {
    let cd = Containerd::start();
    // `mysql` as busybox would run an applet of that name: the kernel sees argv[0] = mysql
    let applets = |root: &Path| std::os::unix::fs::symlink("busybox", root.join("bin/mysql")).expect("mysql link");
    let c = cd.run_prepared(&pod_labels(), &[], &["sleep", "3600"], &applets);
    let mut agent = start_agent(&cd);

    // 1. audited: the request (1 MiB audit id) asks for a script carrying the password
    let big_id = "a".repeat(1 << 20);
    let script = format!("mysql -p{DB_PASSWORD} -e 'select 1'; echo done");
    let cmd = ["sh", "-c", script.as_str()];
    agent.post_audit(&exec_request(&big_id, &cmd));
    let _ = cd.exec(&c.id, &cmd);
    // 2. the same password, as argv of the client itself (a second session)
    let attached = format!("-p{DB_PASSWORD}");
    let _ = cd.exec(&c.id, &["mysql", "-uroot", attached.as_str(), "shop"]);
    // 3. header, bearer and URL credentials (busybox wget; it need not reach anything)
    let header = format!("Authorization: Bearer {BEARER}");
    let url = format!("https://alice:{URL_PASSWORD}@127.0.0.1:9/x");
    let _ = cd.exec(&c.id, &["wget", "-q", "-T", "1", "--header", header.as_str(), url.as_str()]);
    // 4. KEY=value and a cloud key id
    let env_kv = format!("DB_PASSWORD={ENV_SECRET}");
    let aws = format!("AWS_ACCESS_KEY_ID={AWS_ID}");
    let _ = cd.exec(&c.id, &["env", env_kv.as_str(), aws.as_str(), "true"]);
    // 5. an argv that would drive the analyst's terminal: ESC sequence and a bidi override
    let _ = cd.exec(&c.id, &["echo", "title\x1b]0;pwned\x07", "abc\u{202e}gpj.exe"]);

    // every session ended and held at most 3 s: wait for the last one's root, then stop
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let spans = support::otlp_json::read(&agent.file());
        let roots = spans.iter().filter(|s| s.is_root() && s.text("container.id").as_deref() == Some(&c.id)).count();
        if roots >= 5 {
            break;
        }
        assert!(Instant::now() < deadline, "{roots} of 5 roots:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(250));
    }
    agent.terminate();
    let file = agent.read("traces.jsonl");
    let console = agent.console();
    let log = agent.log();

    // none of the secrets anywhere
    for (what, text) in [("OTLP/JSON file", &file), ("console", &console), ("agent log", &log)] {
        for s in SECRETS {
            assert!(!text.contains(s), "{s} is in the {what}:\n{}", &text[..text.len().min(20_000)]);
        }
    }
    // each became the keyed token: the same password in three places, one token
    let red =
        podtrail::redact::Redactor::new(&podtrail::redact::RedactConfig { key: KEY.into(), ..Default::default() })
            .unwrap();
    let db = red.token(DB_PASSWORD.as_bytes());
    let spans = support::otlp_json::read(&agent.file());
    let mine: Vec<&support::otlp_json::Span> =
        spans.iter().filter(|s| s.text("container.id").as_deref() == Some(&c.id)).collect();
    let args_with =
        |tok: &str| mine.iter().filter(|s| s.text("process.command_args").is_some_and(|a| a.contains(tok))).count();
    assert!(args_with(&db) >= 2, "the same password gives {db} in both sessions: {mine:#?}");
    for s in [BEARER, URL_PASSWORD, ENV_SECRET, AWS_ID] {
        let t = red.token(s.as_bytes());
        assert!(args_with(&t) >= 1, "{s} -> {t} on a process span");
    }
    let redacted: Vec<&&support::otlp_json::Span> =
        mine.iter().filter(|s| s.text("podtrail.process.args_redacted").is_some()).collect();
    assert!(redacted.len() >= 4, "spans say they were redacted: {redacted:#?}");

    // the audited session: attributed although its command carries the password (matched
    // before redaction), the requested command redacted, the 1 MiB id capped
    let root = mine
        .iter()
        .find(|s| s.is_root() && s.text("user.name").is_some())
        .unwrap_or_else(|| panic!("the audited session is attributed: {mine:#?}\n{log}"));
    let cmd_attr = root.text("podtrail.k8s.command").expect("requested command");
    assert!(cmd_attr.contains(&db), "{cmd_attr}");
    assert_eq!(root.text("podtrail.k8s.command_redacted").as_deref(), Some("1"));
    let id = root.text("podtrail.k8s.audit_id").expect("audit id");
    assert!(id.len() < 100 && id.starts_with("aaaa") && id.contains('…'), "capped: {} bytes", id.len());
    assert!(root.text("podtrail.k8s.fields_truncated").is_some());
    assert!(file.len() < 1 << 20, "no span carries the 1 MiB id: the file is {} bytes", file.len());

    // the console: ESC and RLO escaped, argv shell-quoted, no raw control or bidi character
    assert!(console.contains("\\x1b]0;pwned\\x07"), "{console}");
    assert!(console.contains("\\u{202e}gpj.exe"), "{console}");
    assert!(console.contains("'mysql -p<redacted:"), "sh -c's script quoted as one word: {console}");
    assert!(!console.contains('\x1b') && !console.contains('\u{202e}') && !console.contains('\x07'));
}
