//! The shipped detection rules end to end: a private containerd + runc (tests/support), a
//! busybox container whose init is busybox `httpd` serving a payload on its loopback, the real
//! `podtrail run` binary writing OTLP/JSON to a file, and real `ctr task exec` sessions (with a
//! terminal where the scenario needs one: `ctr task exec -t` is given a pty by a small Python
//! driver). For each shipped rule a container can produce, one session must fire it and a
//! close one must not; then the seed incident (terminal shell, wget, gzip, tar, the unpacked
//! binary run, the history removed) in one session, with each alert on the span that did it.
//! Alerts are read from the file as span events named `alert` (`security_rule.name`), decoded
//! here from the JSON, not with podtrail's code.
//!
//! Not covered here: memfd execution (busybox cannot create a memfd; a deleted executable,
//! the rule's other case, is), `unlinkat` with a directory fd (busybox `rm` does not use one;
//! tests/capture_files.rs covers it at the kernel level).
//! Needs root, containerd and python3; fails (never skips) when one is missing.

mod support;

use std::{
    io::Write,
    os::unix::fs::symlink,
    path::Path,
    process::{Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

use serde_json::{json, Value};
use support::agent::{containerd_config, FileAgent};
use support::audit::{event_list, exec_events, new_audit_id, pod_labels};
use support::containers::{unique, Container, Containerd};
use support::otlp_json::{self, Span};

/// One agent (kernel programs, containerd) at a time in this binary.
static SERIAL: Mutex<()> = Mutex::new(());

const SHELL: &str = "Terminal shell in a container";
const DOWNLOAD: &str = "Download then execute";
const FILELESS: &str = "Fileless execution";
const HISTORY: &str = "Shell history tampering";
const NO_REQUEST: &str = "Exec without a Kubernetes request";
const NODE: &str = "Node user entered a container";
const OUTBOUND: &str = "Outbound connection outside the cluster";
const SENSITIVE: &str = "Sensitive file read";
const CAPTURE: &str = "Packet capture";

/// Applets the scenarios need beyond the harness's list.
const MORE_APPLETS: &[&str] = &["httpd", "gzip", "gunzip", "ln", "truncate", "chmod", "cp", "tcpdump"];

/// What the image ships: more applets, /etc/shadow, a history file, and under /www what
/// httpd serves: `payload` (a static busybox) and `kit.tar.gz` (kit/busybox).
fn prepare(root: &Path) {
    for a in MORE_APPLETS {
        let link = root.join("bin").join(a);
        if !link.exists() {
            symlink("busybox", link).unwrap();
        }
    }
    std::fs::write(root.join("etc/shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
    std::fs::write(root.join("root/.ash_history"), "ls\n").unwrap();
    let www = root.join("www");
    std::fs::create_dir_all(www.join("kit")).unwrap();
    std::fs::copy("/bin/busybox", www.join("payload")).unwrap();
    std::fs::copy("/bin/busybox", www.join("kit/busybox")).unwrap();
    let st =
        Command::new("tar").arg("-czf").arg(www.join("kit.tar.gz")).arg("-C").arg(&www).arg("kit").status().unwrap();
    assert!(st.success(), "tar on the host");
    std::fs::remove_dir_all(www.join("kit")).unwrap();
}

/// `podtrail run` with a loopback audit webhook (so "no Kubernetes request" means something),
/// writing OTLP/JSON to a file; SIGTERM on drop.
struct Agent {
    inner: FileAgent,
}

impl std::ops::Deref for Agent {
    type Target = FileAgent;
    fn deref(&self) -> &FileAgent {
        &self.inner
    }
}

impl Agent {
    fn start(cd: &Containerd) -> Agent {
        let extra = "[attribution]\nhold_ms = 2000\n\n[metrics]\nlisten = \"\"\n";
        let config = containerd_config(&cd.address, &cd.namespace, extra);
        Agent { inner: FileAgent::start_audited(&config, &[]) }
    }

    /// Waits until a span's argv holds each marker and its trace's root is in the file (the
    /// root leaves last), then stops the agent (SIGTERM: it drains and flushes).
    fn stop_after(mut self, markers: &[&str], timeout: Duration) -> Vec<Span> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = otlp_json::read(&self.file());
            let missing: Vec<&&str> = markers.iter().filter(|m| !has_root(&spans, m)).collect();
            if missing.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                eprintln!("after {timeout:?} no finished trace for {missing:?}:\n{}", self.log());
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        self.inner.terminate();
        otlp_json::read(&self.file())
    }
}

/// The rules stage's `alert` events on a span.
trait Alerts {
    /// Rules that fired on this span.
    fn alerts(&self) -> Vec<String>;
    /// Each alert event's attributes as a plain JSON object.
    fn alert_events(&self) -> Vec<Value>;
}

impl Alerts for Span {
    fn alerts(&self) -> Vec<String> {
        self.alert_events()
            .iter()
            .filter_map(|a| a.get("security_rule.name").and_then(|v| v.as_str().map(str::to_owned)))
            .collect()
    }

    fn alert_events(&self) -> Vec<Value> {
        self.events_named("alert")
    }
}

/// The trace whose processes ran with `marker` in an argument.
fn trace_with(spans: &[Span], marker: &str) -> Option<String> {
    spans.iter().find(|s| s.args().iter().any(|a| a.contains(marker))).map(|s| s.trace_id.clone())
}

fn has_root(spans: &[Span], marker: &str) -> bool {
    trace_with(spans, marker).is_some_and(|t| spans.iter().any(|s| s.trace_id == t && s.parent.is_empty()))
}

/// One session's trace, found by its marker.
struct Trace<'a> {
    marker: String,
    spans: Vec<&'a Span>,
}

impl<'a> Trace<'a> {
    fn of(all: &'a [Span], marker: &str) -> Trace<'a> {
        let t = trace_with(all, marker)
            .unwrap_or_else(|| panic!("no trace ran {marker}; traces' spans: {:#?}", names(all)));
        Trace { marker: marker.into(), spans: all.iter().filter(|s| s.trace_id == t).collect() }
    }

    fn root(&self) -> &Span {
        self.spans.iter().find(|s| s.parent.is_empty()).unwrap_or_else(|| panic!("{}: no root span", self.marker))
    }

    /// (span name, rule) of every alert in the trace.
    fn alerts(&self) -> Vec<(String, String)> {
        self.spans.iter().flat_map(|s| s.alerts().into_iter().map(|r| (s.name.clone(), r))).collect()
    }

    /// Spans that carry an alert of `rule`.
    fn fired(&self, rule: &str) -> Vec<&Span> {
        self.spans.iter().copied().filter(|s| s.alerts().iter().any(|r| r == rule)).collect()
    }

    fn assert_fired(&self, rule: &str) -> Vec<&Span> {
        let on = self.fired(rule);
        assert!(
            !on.is_empty(),
            "{}: {rule:?} did not fire; alerts {:?}; spans {:?}",
            self.marker,
            self.alerts(),
            self.names()
        );
        on
    }

    fn assert_quiet(&self, rule: &str) {
        assert!(self.fired(rule).is_empty(), "{}: {rule:?} fired where it must not: {:?}", self.marker, self.alerts());
    }

    /// (span, executable, alerts) per span: what a failure shows.
    fn summary(&self) -> Vec<(String, String, Vec<String>)> {
        self.spans
            .iter()
            .map(|s| (s.name.clone(), s.str("process.executable.path").unwrap_or_default(), s.alerts()))
            .collect()
    }

    fn names(&self) -> Vec<String> {
        self.spans.iter().map(|s| s.name.clone()).collect()
    }
}

fn names(spans: &[Span]) -> Vec<(String, String)> {
    spans.iter().map(|s| (s.trace_id[..8].to_owned(), s.name.clone())).collect()
}

/// Drives `ctr task exec -t` through a pty (ctr refuses a terminal session without one):
/// types each line of `input` after the shell started, then `exit`, and returns what the
/// terminal showed.
const PTY_DRIVER: &str = r#"
import os, pty, select, sys, time
lines = sys.stdin.read().splitlines()
pid, fd = pty.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
out = b""
def pump(seconds):
    global out
    end = time.time() + seconds
    while time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                data = os.read(fd, 4096)
            except OSError:
                return False
            if not data:
                return False
            out += data
    return True
pump(2.0)
for line in lines + ["exit"]:
    os.write(fd, (line + "\n").encode())
    if not pump(1.0):
        break
deadline = time.time() + 60
while time.time() < deadline and pump(0.5):
    pass
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else 0)
"#;

fn tty_session(cd: &Containerd, c: &Container, lines: &[&str]) -> String {
    let exec_id = unique("tty");
    let out = Command::new("python3")
        .arg("-c")
        .arg(PTY_DRIVER)
        .arg("ctr")
        .arg("--address")
        .arg(&cd.address)
        .arg("--namespace")
        .arg(&cd.namespace)
        .args(["task", "exec", "-t", "--exec-id", exec_id.as_str(), c.id.as_str(), "sh"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut ch| {
            ch.stdin.take().unwrap().write_all(lines.join("\n").as_bytes())?;
            ch.wait_with_output()
        })
        .expect("python3 pty driver");
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "terminal session failed ({}): {shown}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    shown
}

/// `sh -c SCRIPT` without a terminal; the exit status is not judged (scenarios run commands
/// that fail on purpose, like an unreachable wget).
fn sh(cd: &Containerd, c: &Container, script: &str) -> String {
    let out = cd.exec(&c.id, &["sh", "-c", script]);
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The audit EventList of one `kubectl exec` of `command` into billing/api-7d9c (for the
/// "no Kubernetes request" pair).
fn exec_request(audit_id: &str, command: &[&str], received: SystemTime) -> Value {
    event_list(exec_events(audit_id, command, received, &["RequestReceived", "ResponseStarted"]))
}

fn setup() -> (std::sync::MutexGuard<'static, ()>, Containerd, Container) {
    let guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let cd = Containerd::start();
    if std::process::Command::new("python3").arg("-c").arg("import pty").status().map(|s| !s.success()).unwrap_or(true)
    {
        support::prereq::missing("python3 with its pty module (the terminal driver)", "apt-get install python3");
    }
    let c = cd.run_prepared(&pod_labels(), &[], &["httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/www"], &prepare);
    (guard, cd, c)
}

const HTTP: &str = "http://127.0.0.1:8080";

#[test]
fn each_shipped_rule_fires_on_a_real_session_and_stays_quiet_on_a_close_one() {
    let (_g, cd, c) = setup();
    let agent = Agent::start(&cd);
    let mut markers: Vec<&str> = Vec::new();
    let mut run = |marker: &'static str, script: String| {
        markers.push(marker);
        let shown = sh(&cd, &c, &format!("{script}; /bin/echo {marker}"));
        assert!(shown.contains(marker), "{marker}: {shown}");
    };

    // terminal shell: the same shell with and without a terminal
    let shown = tty_session(&cd, &c, &["/bin/echo mark-tty-shell"]);
    assert!(shown.contains("mark-tty-shell"), "{shown}");
    run("mark-no-tty", ":".into());

    // download then execute: run what wget wrote; wget alone; a file written by an earlier
    // session of the container and run now (it lies in the container's writable layer)
    run("mark-dl-exec", format!("mkdir -p /tmp/a && wget -q -O /tmp/a/busybox {HTTP}/payload && chmod +x /tmp/a/busybox && /tmp/a/busybox true"));
    run("mark-dl-only", format!("mkdir -p /tmp/b && wget -q -O /tmp/b/busybox {HTTP}/payload && chmod +x /tmp/b/busybox && /bin/cat /tmp/b/busybox >/dev/null"));
    run("mark-dl-later", "/tmp/b/busybox true".into());

    // fileless: a deleted executable run through its open descriptor; the same file kept
    run("mark-deleted", "cp /bin/busybox /tmp/del && exec 3</tmp/del && rm /tmp/del && /proc/self/fd/3 true".into());
    run("mark-kept", "cp /bin/busybox /tmp/kept && /tmp/kept true".into());

    // history tampering, each seen with the absolute path; appending (as shells do) is not
    // (`rm` is a NOFORK applet: typed bare, the shell itself unlinks; `/bin/rm` execs)
    run("mark-hist-rm", "/bin/echo a >> /root/.ash_history; /bin/rm /root/.ash_history".into());
    run("mark-hist-rel", "/bin/echo a >> /root/.ash_history; cd /root; /bin/rm .ash_history".into());
    run("mark-hist-builtin", "/bin/echo a >> /root/.ash_history; cd /root && rm .ash_history".into());
    run("mark-hist-truncate", "/bin/echo a >> /root/.ash_history; /bin/truncate -s 0 /root/.ash_history".into());
    run("mark-hist-otrunc", "/bin/echo a >> /root/.ash_history; : > /root/.ash_history".into());
    run(
        "mark-hist-symlink",
        "/bin/rm -f /root/.ash_history; /bin/ln -s /dev/null /root/.ash_history; /bin/rm -f /root/.ash_history".into(),
    );
    run("mark-hist-append", "/bin/echo a >> /root/.ash_history".into());

    // sensitive file read: /etc/shadow, not /etc/passwd
    run("mark-shadow", "/bin/cat /etc/shadow >/dev/null".into());
    run("mark-passwd", "/bin/cat /etc/passwd >/dev/null".into());

    // outbound: an address outside the cluster (unreachable: the container has only
    // loopback; busybox wget crashes on an unreachable network, nc does not), not the
    // container's own loopback
    run("mark-outbound", "nc -w 2 203.0.113.7 80 </dev/null".into());
    run("mark-loopback", format!("wget -q -O /dev/null {HTTP}/payload"));

    // packet capture: tcpdump by name (busybox has none: the exec is what the rule sees), not
    // a file named after it
    run("mark-tcpdump", "/bin/tcpdump -i any; true".into());
    run("mark-tcpdump-arg", "/bin/cat /tmp/tcpdump.txt 2>/dev/null; true".into());

    // no Kubernetes request behind the exec (every session above), and one with a request
    let audited = ["sh", "-c", "/bin/echo mark-audited"];
    agent.post_audit(&exec_request(&new_audit_id(), &audited, SystemTime::now()));
    let out = cd.exec(&c.id, &audited);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // a node user entering the container (nsenter into its mount and pid namespaces), and an
    // nsenter into its UTS namespace only, which is no entry into the container
    let init = cd.task_pid(&c.id).expect("init pid").to_string();
    let node = Command::new("nsenter").args(["-t", &init, "-m", "-p", "/bin/echo", "mark-node"]).output().unwrap();
    assert!(String::from_utf8_lossy(&node.stdout).contains("mark-node"), "{node:?}");
    let uts = Command::new("nsenter").args(["-t", &init, "-u", "/bin/echo", "mark-uts"]).output().unwrap();
    assert!(String::from_utf8_lossy(&uts.stdout).contains("mark-uts"), "{uts:?}");

    let mut wait: Vec<&str> = markers.clone();
    wait.extend(["mark-tty-shell", "mark-audited", "mark-node", "mark-uts"]);
    let spans = agent.stop_after(&wait, Duration::from_secs(90));
    let t = |m: &str| Trace::of(&spans, m);

    // terminal shell: on the shell's own span
    let tty = t("mark-tty-shell");
    let on: Vec<String> = tty.assert_fired(SHELL).iter().map(|s| s.name.clone()).collect();
    assert_eq!(on, ["sh"], "{:?}", tty.alerts());
    assert_eq!(
        tty.spans.iter().find(|s| s.name == "sh").and_then(|s| s.attr("process.interactive")),
        Some(json!(true))
    );
    t("mark-no-tty").assert_quiet(SHELL);

    // download then execute: on the downloaded binary's span, never on wget or the image's busybox
    for m in ["mark-dl-exec", "mark-dl-later", "mark-kept"] {
        let tr = t(m);
        for s in tr.assert_fired(DOWNLOAD) {
            let exe = s.str("process.executable.path").unwrap_or_default();
            assert!(exe.starts_with("/tmp/"), "{m}: fired on {} ({exe}): {:#?}", s.name, tr.summary());
        }
    }
    t("mark-dl-only").assert_quiet(DOWNLOAD);
    for s in &spans {
        if s.str("process.executable.path").as_deref() == Some("/bin/busybox") {
            assert!(!s.alerts().iter().any(|r| r == DOWNLOAD), "an image binary fired {DOWNLOAD}: {s:#?}");
        }
    }

    // fileless
    let del = t("mark-deleted");
    let on = del.assert_fired(FILELESS);
    assert!(on.iter().all(|s| s.attr("podtrail.process.fileless") == Some(json!(true))), "{on:#?}");
    t("mark-kept").assert_quiet(FILELESS);

    // history tampering: the operation and the absolute path on the alert
    let expect = [
        ("mark-hist-rm", "unlink", "rm"),
        ("mark-hist-rel", "unlink", "rm"),
        ("mark-hist-builtin", "unlink", "sh"),
        ("mark-hist-truncate", "truncate", "truncate"),
        ("mark-hist-otrunc", "open", "sh"),
        ("mark-hist-symlink", "symlink", "ln"),
    ];
    for (m, op, span) in expect {
        let tr = t(m);
        tr.assert_fired(HISTORY);
        let hit = tr.spans.iter().find(|s| {
            s.name == span
                && s.alert_events().iter().any(|a| {
                    a["security_rule.name"] == HISTORY
                        && a["podtrail.file.op"] == op
                        && (a["file.path"] == "/root/.ash_history" || a["podtrail.file.path2"] == "/root/.ash_history")
                })
        });
        assert!(
            hit.is_some(),
            "{m}: no {op} of /root/.ash_history alert on {span}: {:#?}",
            tr.spans.iter().map(|s| (&s.name, s.alert_events())).collect::<Vec<_>>()
        );
    }
    let append = t("mark-hist-append");
    append.assert_quiet(HISTORY);
    assert!(
        append
            .spans
            .iter()
            .any(|s| s.events_named("file open").iter().any(|a| a["file.path"] == json!("/root/.ash_history"))),
        "the append is seen, as a file event without an alert: {:#?}",
        append.spans
    );

    // sensitive file read
    let on = t("mark-shadow").assert_fired(SENSITIVE).iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    assert_eq!(on, ["cat"]);
    t("mark-passwd").assert_quiet(SENSITIVE);

    // outbound: on the connect span
    let out = t("mark-outbound");
    let on = out.assert_fired(OUTBOUND);
    assert!(on.iter().all(|s| s.str("server.address").as_deref() == Some("203.0.113.7")), "{on:#?}");
    t("mark-loopback").assert_quiet(OUTBOUND);

    // packet capture
    let on = t("mark-tcpdump").assert_fired(CAPTURE).iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    assert_eq!(on, ["tcpdump"]);
    t("mark-tcpdump-arg").assert_quiet(CAPTURE);

    // no request: on the root's command span of an unattributed exec, not of the audited one
    let bare = t("mark-no-tty");
    bare.assert_fired(NO_REQUEST);
    assert_eq!(bare.root().str("podtrail.attribution.source").as_deref(), Some("none"));
    let audited = t("mark-audited");
    assert_eq!(audited.root().name, "kubectl exec", "the request matched: {:#?}", audited.root());
    audited.assert_quiet(NO_REQUEST);

    // node user
    let node = t("mark-node");
    node.assert_fired(NODE);
    assert_eq!(node.root().str("podtrail.session.kind").as_deref(), Some("node"), "{:#?}", node.root());
    t("mark-uts").assert_quiet(NODE);

    // every root counts its alerts
    for m in wait {
        let tr = t(m);
        let n = tr.alerts().len() as i64;
        assert_eq!(tr.root().attr("podtrail.alerts.count").unwrap_or(json!(0)), json!(n), "{m}: {:?}", tr.alerts());
    }
}

#[test]
fn seed_incident_in_one_terminal_session_with_each_alert_on_its_span() {
    let (_g, cd, c) = setup();
    let agent = Agent::start(&cd);
    let shown = tty_session(
        &cd,
        &c,
        &[
            "cd /tmp",
            &format!("wget -q {HTTP}/kit.tar.gz"),
            "gzip -d kit.tar.gz",
            "tar -xf kit.tar",
            "./kit/busybox echo mark-seed-ran",
            // typed as an intruder would: `rm` is a NOFORK applet, so the shell itself unlinks
            "rm /root/.ash_history",
        ],
    );
    assert!(shown.contains("mark-seed-ran"), "the unpacked binary ran: {shown}");
    let spans = agent.stop_after(&["mark-seed-ran"], Duration::from_secs(90));
    let tr = Trace::of(&spans, "mark-seed-ran");

    // each step is a span of the one session
    let names = tr.names();
    for step in ["sh", "wget", "gzip", "tar", "busybox"] {
        assert!(names.iter().any(|n| n == step), "no {step} span in {names:?}");
    }
    assert!(
        tr.spans.iter().any(|s| s.name == "connect"
            && s.str("server.address").as_deref() == Some("127.0.0.1")
            && s.text("server.port").as_deref() == Some("8080")),
        "wget's connect: {names:?}"
    );

    // the alerts, each on the span that did it
    let on = |rule: &str| tr.assert_fired(rule).iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    assert_eq!(on(SHELL), ["sh"]);
    assert_eq!(on(DOWNLOAD), ["busybox"]);
    let ran = tr.fired(DOWNLOAD)[0];
    assert_eq!(ran.str("process.executable.path").as_deref(), Some("/tmp/kit/busybox"));
    // the shell that ran `rm` as a NOFORK applet did the unlink: the alert is on its span
    assert_eq!(on(HISTORY), ["sh"]);
    let rm = tr.fired(HISTORY)[0];
    assert_eq!(rm.attr("process.interactive"), Some(json!(true)), "the terminal shell: {rm:#?}");
    assert!(
        rm.alert_events().iter().any(|a| a["file.path"] == "/root/.ash_history" && a["podtrail.file.op"] == "unlink"),
        "{:#?}",
        rm.alert_events()
    );
    for quiet in ["wget", "gzip", "tar"] {
        let s = tr.spans.iter().find(|s| s.name == quiet).unwrap();
        assert!(s.alerts().is_empty(), "{quiet} carries {:?}", s.alerts());
    }

    // the root finds the session: count, highest severity, the rules
    let root = tr.root();
    let n = tr.alerts().len() as i64;
    assert!(n >= 3, "{:?}", tr.alerts());
    assert_eq!(root.attr("podtrail.alerts.count"), Some(json!(n)), "{root:#?}");
    assert_eq!(root.str("podtrail.alerts.max_severity").as_deref(), Some("high"));
    let rules = root.attr("podtrail.alerts.rules").unwrap_or_default();
    for r in [SHELL, DOWNLOAD, HISTORY] {
        assert!(rules.as_array().is_some_and(|a| a.iter().any(|v| v == r)), "{r} missing from {rules}");
    }
}
