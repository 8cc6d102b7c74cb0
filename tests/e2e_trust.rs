//! Issue 13 end to end on one machine: secrets, terminal control and oversized client strings
//! from a real container session. A private containerd + runc (tests/common), a busybox
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
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use serde_json::{json, Value};
use support::audit::audit_time;
use support::containers::Containerd;

const KEY: &str = "e2e-cluster-redaction-key";
const DB_PASSWORD: &str = "S3cretDB-77";
const BEARER: &str = "tok3nABCDEFghij";
const URL_PASSWORD: &str = "pa55wordURL";
const ENV_SECRET: &str = "envSecretValue9";
const AWS_ID: &str = "AKIAIOSFODNN7EXAMPLE";
const SECRETS: &[&str] = &[DB_PASSWORD, BEARER, URL_PASSWORD, ENV_SECRET, AWS_ID];

/// `podtrail run` writing OTLP/JSON and the console tree (stdout to a file), its log to
/// another; SIGTERM on drop.
struct Agent {
    child: Option<Child>,
    dir: tempfile::TempDir,
    webhook: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

impl Agent {
    fn start(cd: &Containerd) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let webhook = format!("127.0.0.1:{}", free_port());
        let extra = format!(
            "[attribution]\nhold_ms = 3000\n\n[metrics]\nlisten = \"\"\n\n[export]\nconsole = true\n\n[spans.redact]\nkey = {KEY:?}\n"
        );
        let config = support::agent::containerd_config(&cd.address, &cd.namespace, &extra);
        std::fs::write(dir.path().join("podtrail.toml"), config).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_podtrail"))
            .arg("run")
            .arg("--config")
            .arg(dir.path().join("podtrail.toml"))
            .args(["--audit-webhook-loopback", &webhook, "--otlp-file"])
            .arg(dir.path().join("traces.jsonl"))
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("console.txt")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("agent.log")).unwrap())
            .spawn()
            .expect("spawn podtrail run");
        let agent = Agent { child: Some(child), dir, webhook };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !agent.read("agent.log").contains("podtrail is running") {
            assert!(Instant::now() < deadline, "podtrail run did not come up:\n{}", agent.read("agent.log"));
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_secs(1));
        agent
    }

    fn read(&self, name: &str) -> String {
        String::from_utf8_lossy(&std::fs::read(self.dir.path().join(name)).unwrap_or_default()).into_owned()
    }

    fn stop(&mut self) {
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

    fn post_audit(&self, body: &Value) {
        let body = serde_json::to_vec(body).unwrap();
        let mut s = TcpStream::connect(&self.webhook).expect("connect to the audit webhook");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(s, "POST /audit HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", self.webhook, body.len()).unwrap();
        s.write_all(&body).unwrap();
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        assert!(reply.starts_with("HTTP/1.1 200"), "audit webhook answered: {reply}\n{}", self.read("agent.log"));
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The audit events (RequestReceived, ResponseStarted) of one `kubectl exec` of `command`
/// into billing/api-7d9c, as the API server's webhook backend posts them.
fn exec_events(audit_id: &str, command: &[&str], received: SystemTime) -> Value {
    let q: Vec<String> = command.iter().map(|c| format!("command={}", query_escape(c))).collect();
    let uri =
        format!("/api/v1/namespaces/billing/pods/api-7d9c/exec?{}&container=api&stdin=true&stdout=true", q.join("&"));
    let ev = |stage: &str, at: SystemTime| {
        json!({
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
            "auditID": audit_id, "stage": stage, "requestURI": uri, "verb": "create",
            "user": {"username": "john.doe@example.com", "groups": ["dev", "system:authenticated"]},
            "sourceIPs": ["66.249.64.55"], "userAgent": "kubectl/v1.34.4 (linux/amd64)",
            "objectRef": {"resource": "pods", "namespace": "billing", "name": "api-7d9c",
                          "apiVersion": "v1", "subresource": "exec"},
            "responseStatus": {"metadata": {}, "code": 101},
            "requestReceivedTimestamp": audit_time(received),
            "stageTimestamp": audit_time(at),
        })
    };
    json!({ "kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {},
            "items": [ev("RequestReceived", received), ev("ResponseStarted", received + Duration::from_millis(40))] })
}

fn pod_labels() -> Vec<(&'static str, &'static str)> {
    vec![
        ("io.kubernetes.pod.name", "api-7d9c"),
        ("io.kubernetes.pod.namespace", "billing"),
        ("io.kubernetes.pod.uid", "3f9d2c4e-1b7a-4c55-8e21-7a6b5c4d3e2f"),
        ("io.kubernetes.container.name", "api"),
    ]
}

#[test]
fn secrets_never_leave_the_agent_and_the_console_is_safe_to_read() {
    let cd = Containerd::start();
    // `mysql` as busybox would run an applet of that name: the kernel sees argv[0] = mysql
    let applets = |root: &Path| std::os::unix::fs::symlink("busybox", root.join("bin/mysql")).expect("mysql link");
    let c = cd.run_prepared(&pod_labels(), &[], &["sleep", "3600"], &applets);
    let mut agent = Agent::start(&cd);

    // 1. audited: the request (1 MiB audit id) asks for a script carrying the password
    let big_id = "a".repeat(1 << 20);
    let script = format!("mysql -p{DB_PASSWORD} -e 'select 1'; echo done");
    let cmd = ["sh", "-c", script.as_str()];
    agent.post_audit(&exec_events(&big_id, &cmd, SystemTime::now()));
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
        let spans = support::otlp_json::read(&agent.dir.path().join("traces.jsonl"));
        let roots = spans.iter().filter(|s| s.is_root() && s.text("container.id").as_deref() == Some(&c.id)).count();
        if roots >= 5 {
            break;
        }
        assert!(Instant::now() < deadline, "{roots} of 5 roots:\n{}", agent.read("agent.log"));
        std::thread::sleep(Duration::from_millis(250));
    }
    agent.stop();
    let file = agent.read("traces.jsonl");
    let console = agent.read("console.txt");
    let log = agent.read("agent.log");

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
    let spans = support::otlp_json::read(&agent.dir.path().join("traces.jsonl"));
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
