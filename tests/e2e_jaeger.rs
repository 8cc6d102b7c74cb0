//! End to end against a real backend: a busybox container in a private containerd, the real
//! `podtrail run` exporting OTLP/gRPC to a real Jaeger v2, a `ctr task exec` session (a shell
//! that fetches a page from a server inside the container with `wget` and packs it with
//! `tar`), and Jaeger's query API asked what a user would ask.
//!
//! Needs root, containerd/runc/ctr, busybox-static and Go (Jaeger is built once and cached by
//! tests/harness/jaeger.sh); fails (never skips) when one is missing. Run:
//! `cargo test --release --test e2e_jaeger`.
//!
//! busybox note: Debian's busybox-static 1.35 is built without wget's timeout option; `-T`
//! is missing from its usage and passing it crashes wget with SIGSEGV during option parsing,
//! before any socket is opened (whatever the target). The sessions below bound wget with the
//! server being local instead.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::agent::{containerd_config, exit_report, metric, Podtrail, Scratch};
use support::containers::{unique, Container, Containerd};
use support::jaeger::{JSpan, Jaeger};
use support::otlp_json;

/// One agent, one Jaeger, one containerd at a time: two cores, and each test's counts must be
/// its own.
static SERIAL: Mutex<()> = Mutex::new(());

const PAGE: &str = "hello-from-podtrail-e2e";

/// A pod-like container serving /www on 127.0.0.1:8080 (inside its network namespace) with
/// busybox httpd, started by the container's init, so it is not a session.
fn web_container(cd: &Containerd, name: &str) -> Container {
    let c = cd.run(
        &[("io.kubernetes.pod.name", "api-7d9f8"), ("io.kubernetes.pod.namespace", "billing"), ("io.kubernetes.container.name", name)],
        &[],
        &["sh", "-c", &format!("mkdir -p /www && echo {PAGE} > /www/index.html && busybox httpd -p 127.0.0.1:8080 -h /www && exec sleep 100000")],
    );
    // Ready when a fetch works; these execs run before podtrail starts, so they are no traces.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = cd.exec(&c.id, &["wget", "-q", "-O-", "http://127.0.0.1:8080/index.html"]);
        if String::from_utf8_lossy(&out.stdout).contains(PAGE) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "httpd in the container never answered: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    c
}

/// podtrail's config for the private containerd (pod labels come from its socket).
fn agent_config(dir: &Path, cd: &Containerd, export: &str) -> PathBuf {
    let p = dir.join("podtrail.toml");
    std::fs::write(
        &p,
        containerd_config(
            &cd.address,
            &cd.namespace,
            &format!("[export]\n# Jaeger takes no logs: no alert log records\nalert_logs = false\n{export}\n"),
        ),
    )
    .unwrap();
    p
}

/// Index of a trace's spans by id, and the ancestry of one span (nearest first).
fn ancestry<'a>(by_id: &HashMap<&str, &'a JSpan>, s: &'a JSpan) -> Vec<&'a JSpan> {
    let mut out = Vec::new();
    let mut cur = s;
    while let Some(p) = cur.parent.as_deref().and_then(|p| by_id.get(p)) {
        out.push(*p);
        cur = p;
    }
    out
}

fn show(spans: &[JSpan]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} {} <- {:?} pid={:?} inherited={:?}",
                s.id,
                s.name,
                s.parent,
                s.tag("process.pid"),
                s.tag("podtrail.process.inherited")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn exec_session_is_one_jaeger_trace_shaped_as_its_process_tree() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // Dropped last (declared first): the guards below keep state in it.
    let dir = Scratch::new("tree");
    let cd = Containerd::start();
    let name = unique("api");
    let c = web_container(&cd, &name);
    let jaeger = Jaeger::start(&dir.join("jaeger"));
    let cfg = agent_config(&dir, &cd, "");
    let endpoint = format!("http://{}", jaeger.otlp_grpc);
    let mut agent = Podtrail::start(&dir, &["--config", cfg.to_str().unwrap(), "--otlp-endpoint", &endpoint]);

    let out = cd.exec(&c.id, &["sh", "-c", "wget -q -O /tmp/page http://127.0.0.1:8080/index.html && tar -cf /tmp/page.tar -C /tmp page && cat /tmp/page"]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(PAGE),
        "session failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The session ended with its last process: its trace arrives while the agent runs.
    let trace_id = jaeger.wait_for(30, "the session's trace (tag k8s.container.name)", |j| {
        let ids = j.search_tags(&[("k8s.container.name", &name)]);
        ids.into_iter().find(|id| j.trace(id).is_some_and(|t| t.iter().any(|s| s.parent.is_none() && s.name == "exec")))
    });
    let log = agent.stop();
    let (kernel_dropped, otlp) = exit_report(&log, "otlp");
    assert_eq!(kernel_dropped, 0, "kernel dropped events:\n{log}");
    assert_eq!(otlp.lost(), 0, "spans lost with a healthy backend: {otlp:?}");

    let spans = jaeger.trace(&trace_id).expect("trace by id");
    eprintln!("trace {trace_id}:\n{}", show(&spans));
    let by_id: HashMap<&str, &JSpan> = spans.iter().map(|s| (s.id.as_str(), s)).collect();
    let roots: Vec<&JSpan> = spans.iter().filter(|s| s.parent.is_none()).collect();
    assert_eq!(roots.len(), 1, "one root:\n{}", show(&spans));
    let root = roots[0];
    assert_eq!(root.name, "exec", "no request matched: the root is `exec`");
    assert_eq!(root.tag("podtrail.attribution.source"), Some("none"));
    assert_eq!(root.tag("podtrail.session.incomplete"), Some("false"), "{:?}", root.tags);

    // The shell is the session's root process, directly under the root span.
    let sh = spans
        .iter()
        .find(|s| s.parent.as_deref() == Some(root.id.as_str()) && s.name == "sh")
        .unwrap_or_else(|| panic!("no sh under the root:\n{}", show(&spans)));
    assert!(sh.tag("process.command_args").unwrap().contains("wget -q -O /tmp/page"), "{:?}", sh.tags);

    // wget and tar under the shell: each is a child of the shell's span or of the span of the
    // shell's forked child that then ran it (a forked child that has not exec'd is its own
    // span, `podtrail.process.inherited`), never anywhere else.
    for cmd in ["wget", "tar"] {
        let s = spans.iter().find(|s| s.name == cmd).unwrap_or_else(|| panic!("no {cmd} span:\n{}", show(&spans)));
        assert_eq!(s.tag("process.command"), Some(cmd));
        assert_eq!(s.tag("process.executable.name"), Some("busybox"), "the binary the kernel ran");
        let up = ancestry(&by_id, s);
        let sh_at =
            up.iter().position(|a| a.id == sh.id).unwrap_or_else(|| panic!("{cmd} is not under sh:\n{}", show(&spans)));
        for between in &up[..sh_at] {
            assert_eq!(
                between.tag("podtrail.process.inherited"),
                Some("true"),
                "{cmd}: only the forked shell between it and sh:\n{}",
                show(&spans)
            );
            assert_eq!(
                between.tag("process.pid"),
                s.tag("process.pid"),
                "{cmd}: the fork is the same process:\n{}",
                show(&spans)
            );
        }
        assert_eq!(up.last().map(|r| r.id.as_str()), Some(root.id.as_str()));
        // identity and pod on every span
        assert_eq!(s.tag("k8s.container.name"), Some(name.as_str()));
        assert_eq!(s.tag("k8s.pod.name"), Some("api-7d9f8"));
        assert_eq!(s.tag("k8s.namespace.name"), Some("billing"));
        assert_eq!(s.tag("container.id"), Some(c.id.as_str()));
        assert_eq!(s.tag("process.exit.code"), Some("0"));
    }

    // The connect under wget: a CLIENT span with its outcome and scope.
    let wget = spans.iter().find(|s| s.name == "wget").unwrap();
    let conn = spans
        .iter()
        .find(|s| s.parent.as_deref() == Some(wget.id.as_str()))
        .unwrap_or_else(|| panic!("no span under wget:\n{}", show(&spans)));
    assert_eq!(conn.name, "connect");
    assert_eq!(conn.tag("server.address"), Some("127.0.0.1"));
    assert_eq!(conn.kind, "client");
    assert_eq!(conn.tag("server.port"), Some("8080"));
    assert_eq!(conn.tag("network.transport"), Some("tcp"));
    assert_eq!(conn.tag("podtrail.network.outcome"), Some("connected"));
    assert_eq!(conn.tag("podtrail.network.destination.scope"), Some("loopback"));
    assert_eq!(conn.tag("k8s.container.name"), Some(name.as_str()));

    // The searches a user runs find this trace.
    let by_op = jaeger.search(&[("operation", "wget".into())]);
    assert!(by_op.contains(&trace_id), "operation=wget: {by_op:?} lacks {trace_id}");
    let by_cmd = jaeger.search_tags(&[("process.command", "wget")]);
    assert!(by_cmd.contains(&trace_id), "process.command=wget: {by_cmd:?} lacks {trace_id}");
    let by_ctr = jaeger.search_tags(&[("k8s.container.name", &name)]);
    assert_eq!(by_ctr, vec![trace_id.clone()], "k8s.container.name={name}: exactly this session");
    let both = jaeger.search_tags(&[("k8s.container.name", &name), ("process.command", "tar")]);
    assert_eq!(both, vec![trace_id.clone()], "both tags hold on the tar span");
    let none = jaeger.search_tags(&[("k8s.container.name", &name), ("process.command", "tcpdump")]);
    assert!(none.is_empty(), "a search that must not match did: {none:?}");
}

#[test]
fn backend_outage_is_counted_exactly_marked_on_the_root_and_never_slows_the_reader() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // Dropped last (declared first): the guards below keep state in it.
    let dir = Scratch::new("loss");
    let cd = Containerd::start();
    let name = unique("api");
    let c = web_container(&cd, &name);
    let rootfs = cd.dir.join("rootfs").join(&c.id);
    let mut jaeger = Jaeger::start(&dir.join("jaeger"));
    // The in-memory queue (no disk budget; the durable queue is tests/e2e_durable.rs). Fail
    // fast: two attempts 50 ms apart, then the batch counts as lost.
    let cfg = agent_config(
        &dir,
        &cd,
        "max_attempts = 2\nretry_initial_ms = 50\nretry_max_ms = 100\notlp_timeout_ms = 1000\nshutdown_flush_ms = 3000\n[export.queue]\nbudget_mib = 0",
    );
    let file = dir.join("spans.jsonl");
    let endpoint = format!("http://{}", jaeger.otlp_grpc);
    let mut agent = Podtrail::start(
        &dir,
        &["--config", cfg.to_str().unwrap(), "--otlp-endpoint", &endpoint, "--otlp-file", file.to_str().unwrap()],
    );

    // The backend goes away; a session runs: its wget and tar (and their connect) end and are
    // sent while nobody listens; the shell waits for the test's signal file.
    jaeger.stop();
    let session = cd
        .exec_cmd(&c.id, &["sh", "-c", "wget -q -O /tmp/page http://127.0.0.1:8080/index.html; tar -cf /tmp/page.tar -C /tmp page; while [ ! -e /tmp/go ]; do sleep 0.2; done; echo done"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ctr task exec");
    // What ended so far is lost once its attempts fail: seen on /metrics while it runs.
    let deadline = Instant::now() + Duration::from_secs(30);
    let lost_while_down = loop {
        let m = agent.scrape();
        let tar_in_file = otlp_json::read(&file)
            .iter()
            .any(|s| s.name == "tar" && s.str("k8s.container.name").as_deref() == Some(name.as_str()));
        let lost = metric(&m, "podtrail_spans_lost_total").unwrap_or(0.0);
        if tar_in_file && lost >= 3.0 {
            assert_eq!(metric(&m, "podtrail_kernel_dropped{").unwrap_or(0.0), 0.0, "the reader kept up:\n{m}");
            assert_eq!(metric(&m, "podtrail_events_lost_total{reason=\"ring_buffer\"}").unwrap_or(0.0), 0.0, "{m}");
            break lost as u64;
        }
        assert!(Instant::now() < deadline, "spans were never counted lost:\n{m}\n{}", agent.log_text());
        std::thread::sleep(Duration::from_millis(200));
    };
    // Back up (empty: in-memory storage), then the session ends: its root gets through.
    jaeger.restart();
    std::fs::write(rootfs.join("tmp/go"), "").unwrap();
    let out = session.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("done"), "session did not finish");

    let root_in_file = jaeger.wait_for(30, "the session's root in the file", |_| {
        otlp_json::read(&file)
            .into_iter()
            .find(|s| s.name == "exec" && s.str("k8s.container.name").as_deref() == Some(name.as_str()))
    });
    let trace_id = root_in_file.trace_id.clone();
    let spans = jaeger.wait_for(30, "the session's root after the outage", |j| {
        j.trace(&trace_id).filter(|t| t.iter().any(|s| s.parent.is_none()))
    });
    let log = agent.stop();
    eprintln!("trace {trace_id} after the outage:\n{}", show(&spans));

    // Exact: the file sink got every span; what Jaeger lacks of this session is what the
    // root says was lost.
    let in_file: Vec<_> = otlp_json::read(&file).into_iter().filter(|s| s.trace_id == trace_id).collect();
    let missing = in_file.iter().filter(|s| !spans.iter().any(|j| j.id == s.span_id)).count() as u64;
    let root = spans.iter().find(|s| s.parent.is_none()).unwrap();
    assert!(missing >= 3, "wget, tar and the connect at least were lost: {missing}\n{}", show(&spans));
    assert_eq!(root.tag("podtrail.session.spans_lost"), Some(missing.to_string().as_str()), "root: {:?}", root.tags);
    assert_eq!(root.tag("podtrail.session.incomplete"), Some("true"));
    assert!(
        !spans.iter().any(|s| s.name == "wget" || s.name == "tar"),
        "sent while down, yet in Jaeger:\n{}",
        show(&spans)
    );

    // Every span pushed to OTLP is either exported or counted lost, once, and the reader
    // never lost an event to the outage.
    let (kernel_dropped, otlp) = exit_report(&log, "otlp");
    let (_, to_file) = exit_report(&log, "file");
    assert_eq!(to_file.lost(), 0, "{to_file:?}");
    assert_eq!(otlp.exported + otlp.lost(), to_file.exported, "otlp {otlp:?} vs file {to_file:?}");
    assert!(otlp.lost() >= lost_while_down, "{otlp:?} < {lost_while_down}");
    assert!(otlp.sessions_marked_lost >= 1, "{otlp:?}");
    assert_eq!(kernel_dropped, 0, "{log}");
    let lost_logged: u64 = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "spans lost" && v["fields"]["sink"] == "otlp")
        .map(|v| v["fields"]["spans"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(lost_logged, otlp.lost(), "every lost span is in the log with its count");
}
