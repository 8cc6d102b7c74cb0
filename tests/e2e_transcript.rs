//! The terminal transcript (issue 18) against a real Jaeger: a `ctr task exec -t` shell in a
//! real container, on a terminal this test drives (util-linux `script` holds the pty; the test
//! types into it and reads what the terminal shows, waiting for each prompt like a person):
//! - builtins that never exec (`unset HISTFILE; history -c`, `cd /tmp`) appear in `transcript`
//!   spans under the session's root, as typed, each line at the time it was typed, and while
//!   the session is still open;
//! - a password answered at a `read -s` prompt is not there anywhere, only its length;
//! - a line holding a secret the redactor knows (`export API_TOKEN=...`) carries a token;
//! - past `transcript.max_lines` the rest is counted: one `transcript truncated` mark with the
//!   exact count;
//! - a session in a namespace of `transcript.exclude_namespaces` has no transcript at all, and
//!   what was dropped is counted (`podtrail_transcript_lines_total{what="excluded"}`).
//!
//! Needs root, containerd/runc/ctr, busybox-static, util-linux `script` and Go (Jaeger,
//! tests/harness/jaeger.sh); fails (never skips) when one is missing.
//! Run: `cargo test --release --test e2e_transcript`.

mod support;

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::agent::{containerd_config, metric, Podtrail, Scratch};
use support::containers::{Container, Containerd};
use support::jaeger::{JSpan, Jaeger};

const PASSWORD: &str = "hunter2-Qx7v";
const TOKEN: &str = "s3cr3t-tok-9f2b";
const QUIET_LINE: &str = "echo quiet-namespace-line";

/// A shell on a terminal: what the test types goes to the pty, what the terminal shows is
/// collected by a thread.
struct Terminal {
    child: Child,
    stdin: ChildStdin,
    shown: Arc<Mutex<Vec<u8>>>,
    /// How much of `shown` was already waited for.
    seen: usize,
}

impl Terminal {
    fn open(cd: &Containerd, c: &Container) -> Terminal {
        let mut child = cd.exec_tty_shell(&c.id, Stdio::piped());
        let stdin = child.stdin.take().unwrap();
        let mut out = child.stdout.take().unwrap();
        let shown = Arc::new(Mutex::new(Vec::new()));
        let sink = shown.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Terminal { child, stdin, shown, seen: 0 }
    }

    /// Waits until the terminal shows `what` after what was already seen.
    fn expect(&mut self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            {
                let shown = self.shown.lock().unwrap();
                let rest = &shown[self.seen.min(shown.len())..];
                if let Some(at) = rest.windows(what.len()).position(|w| w == what.as_bytes()) {
                    self.seen += at + what.len();
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the terminal never showed {what:?}; it showed:\n{}",
                String::from_utf8_lossy(&self.shown.lock().unwrap())
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Types a line (a key at a time, as a person does) and returns when it was typed.
    fn type_line(&mut self, line: &str) -> SystemTime {
        let at = SystemTime::now();
        for b in line.bytes().chain([b'\r']) {
            self.stdin.write_all(&[b]).unwrap();
            self.stdin.flush().unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        at
    }

    /// A line at the shell's prompt, then the next prompt.
    fn run(&mut self, line: &str) -> SystemTime {
        let at = self.type_line(line);
        self.expect("# ");
        at
    }

    fn exit(mut self) {
        self.type_line("exit");
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the shell did not exit");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn us(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

fn field<'a>(f: &'a [(String, String)], k: &str) -> Option<&'a str> {
    f.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
}

/// Every line event of a trace's transcript spans, in time order: (µs, fields).
fn lines(spans: &[JSpan]) -> Vec<(u64, Vec<(String, String)>)> {
    let mut l: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "transcript")
        .flat_map(|s| s.logs.iter().filter(|(_, f)| field(f, "event") == Some("input")).cloned())
        .collect();
    l.sort_by_key(|(t, _)| *t);
    l
}

fn texts(spans: &[JSpan]) -> Vec<String> {
    lines(spans)
        .iter()
        .map(|(_, f)| match field(f, "podtrail.transcript.line") {
            Some(t) => t.to_owned(),
            None => format!("<secret {}>", field(f, "podtrail.transcript.secret_bytes").unwrap_or("?")),
        })
        .collect()
}

fn trace_of(jaeger: &Jaeger, container: &str, what: &str, done: impl Fn(&[JSpan]) -> bool) -> Vec<JSpan> {
    jaeger.wait_for(45, what, |j| {
        j.search_tags(&[("container.id", container)]).into_iter().find_map(|id| j.trace(&id).filter(|t| done(t)))
    })
}

#[test]
fn typed_builtins_are_in_the_transcript_and_a_password_is_not() {
    let dir = Scratch::new("transcript");
    let cd = Containerd::start();
    let labels = |ns| {
        vec![
            ("io.kubernetes.pod.name", "api-7d9c"),
            ("io.kubernetes.pod.namespace", ns),
            ("io.kubernetes.pod.uid", "3f9d2c4e-1b7a-4c55-8e21-7a6b5c4d3e2f"),
            ("io.kubernetes.container.name", "api"),
        ]
    };
    let c = cd.run(&labels("billing"), &[], &["sleep", "100000"]);
    let quiet = cd.run(&labels("quiet"), &[], &["sleep", "100000"]);
    let jaeger = Jaeger::start(&dir.join("jaeger"));
    let cfg = dir.join("podtrail.toml");
    let transcript = "[export]\nalert_logs = false\n\n[transcript]\nmax_lines = 8\nlines_per_span = 3\n\
                      flush_idle_ms = 500\nexclude_namespaces = [\"quiet\"]\n";
    std::fs::write(&cfg, containerd_config(&cd.address, &cd.namespace, transcript)).unwrap();
    let endpoint = format!("http://{}", jaeger.otlp_grpc);
    let mut agent = Podtrail::start(&dir, &["--config", cfg.to_str().unwrap(), "--otlp-endpoint", &endpoint]);

    let mut t = Terminal::open(&cd, &c);
    t.expect("# ");
    let typed_history = t.run("unset HISTFILE; history -c");
    let typed_cd = t.run("cd /tmp");
    t.run(&format!("export API_TOKEN={TOKEN}"));
    t.type_line("read -s -p 'Password: ' PW");
    // the prompt itself, not the echo of the command that asks for it
    t.expect("\nPassword: ");
    std::thread::sleep(Duration::from_millis(300));
    t.run(PASSWORD);
    // what was typed so far is searchable while the shell is still open
    let open =
        trace_of(&jaeger, &c.id, "transcript lines of the open session", |s| texts(s).iter().any(|l| l == "cd /tmp"));
    assert!(t.child.try_wait().unwrap().is_none(), "the shell must still run");
    assert!(!open.iter().any(|s| s.parent.is_none()), "the root has not closed the trace yet");
    for i in 1..=5 {
        t.run(&format!("echo filler {i}"));
    }
    t.exit();

    let spans = trace_of(&jaeger, &c.id, "the closed session with its last transcript span", |s| {
        s.iter().any(|x| x.parent.is_none())
            && s.iter().any(|x| x.name == "transcript" && x.tag("podtrail.transcript.last") == Some("true"))
    });
    let all = format!("{spans:?}");
    let got = texts(&spans);
    eprintln!("transcript: {got:#?}");
    assert!(!all.contains(PASSWORD), "the password is in the trace");
    assert!(!all.contains(TOKEN), "the token is in the trace");
    // 8 lines kept (the cap): the three builtins, the prompt and its answer, three fillers
    assert_eq!(got.len(), 8, "{got:#?}");
    assert_eq!(got[0], "unset HISTFILE; history -c");
    assert_eq!(got[1], "cd /tmp");
    assert!(got[2].starts_with("export API_TOKEN=<redacted:"), "{}", got[2]);
    assert_eq!(got[3], "read -s -p 'Password: ' PW");
    assert_eq!(got[4], format!("<secret {}>", PASSWORD.len()));
    assert_eq!(&got[5..], ["echo filler 1", "echo filler 2", "echo filler 3"]);
    let ls = lines(&spans);
    assert_eq!(field(&ls[2].1, "podtrail.transcript.redacted"), Some("1"));
    // each line at the time its first key was typed (kernel time, to the wall clock)
    for (i, typed) in [(0, typed_history), (1, typed_cd)] {
        let (at, _) = &ls[i];
        let (lo, hi) = (us(typed).saturating_sub(500_000), us(typed) + 1_000_000);
        assert!((lo..hi).contains(at), "line {i} at {at} µs, typed at {} µs", us(typed));
    }
    // the rest is counted once: fillers 4 and 5, and `exit`
    let marks: Vec<&(u64, Vec<(String, String)>)> = spans
        .iter()
        .flat_map(|s| s.logs.iter())
        .filter(|(_, f)| field(f, "event") == Some("transcript truncated"))
        .collect();
    assert_eq!(marks.len(), 1, "one truncation mark");
    assert_eq!(field(&marks[0].1, "podtrail.transcript.lines_dropped"), Some("3"));
    let root = spans.iter().find(|s| s.parent.is_none()).unwrap();
    for s in spans.iter().filter(|s| s.name == "transcript") {
        assert_eq!(s.parent.as_deref(), Some(root.id.as_str()), "a transcript span hangs on the root");
        assert_eq!(s.tag("container.id"), Some(c.id.as_str()), "with the session's attributes");
    }
    let last = spans.iter().find(|s| s.tag("podtrail.transcript.last") == Some("true")).unwrap();
    assert_eq!(last.tag("podtrail.transcript.lines_dropped"), Some("3"));
    assert_eq!(last.tag("podtrail.transcript.secret_reads"), Some(&*(PASSWORD.len() + 1).to_string()));

    // the namespace whose transcript is off: the session is there, its lines are not
    let mut q = Terminal::open(&cd, &quiet);
    q.expect("# ");
    q.run(QUIET_LINE);
    q.exit();
    let qspans =
        trace_of(&jaeger, &quiet.id, "the quiet namespace's closed session", |s| s.iter().any(|x| x.parent.is_none()));
    assert!(!qspans.iter().any(|s| s.name == "transcript"), "a transcript of an excluded namespace");
    assert!(!format!("{qspans:?}").contains("quiet-namespace-line"));
    let scrape = agent.scrape();
    let excluded = metric(&scrape, "podtrail_transcript_lines_total{what=\"excluded\"}").unwrap_or(0.0);
    assert!(excluded >= 2.0, "the quiet session's lines are counted as excluded:\n{scrape}");
    let secret = metric(&scrape, "podtrail_transcript_reads_total{what=\"secret\"}").unwrap_or(0.0);
    assert_eq!(secret, (PASSWORD.len() + 1) as f64, "busybox reads a secret a byte at a time");
    agent.stop();
}
