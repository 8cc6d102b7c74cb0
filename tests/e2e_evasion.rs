//! Tricks an intruder inside a container uses to hide (issue 18), each against the real
//! kernel, real containers and `podtrail run`'s OTLP/JSON file:
//! - a watched tool renamed (`cp /usr/bin/tcpdump /tmp/x; /tmp/x ...`), or run through the
//!   dynamic loader, is still that tool (`podtrail.process.identity`);
//! - ten thousand decoy commands before the payload: the session's span cap is reached, and
//!   the payload (a binary the session had not run, a connect) is still kept.

mod support;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{Duration, Instant};

use support::agent::{containerd_config, FileAgent};
use support::containers::Containerd;
use support::otlp_json::{self, Span};

const HOST_USR: &str = "type=bind,src=/usr,dst=/usr,options=rbind:ro";

/// The host's /usr in the container: tcpdump, python3, coreutils.
fn with_host_usr(root: &Path) {
    std::fs::create_dir_all(root.join("usr")).unwrap();
    for l in ["lib", "lib64"] {
        if !root.join(l).exists() {
            symlink(format!("usr/{l}"), root.join(l)).unwrap();
        }
    }
    symlink("busybox", root.join("bin/cp")).unwrap();
}

fn agent(cd: &Containerd) -> FileAgent {
    FileAgent::start(&containerd_config(&cd.address, &cd.namespace, "[metrics]\nlisten = \"\"\n"), &[])
}

/// Stops the agent and reads its export; its session-start lines go to stderr, which cargo
/// shows only when the test fails (why a process landed in the session it did).
fn stop(mut a: FileAgent) -> Vec<Span> {
    a.terminate();
    for l in a.log().lines().filter(|l| l.contains("session")) {
        eprintln!("agent: {l}");
    }
    otlp_json::read(&a.file())
}

fn of_container<'a>(spans: &'a [Span], id: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.str("container.id").as_deref() == Some(id)).collect()
}

#[test]
fn a_renamed_or_loader_run_tcpdump_is_still_tcpdump() {
    assert!(Path::new("/usr/bin/tcpdump").exists(), "this test needs tcpdump on the host (apt-get install tcpdump)");
    let cd = Containerd::start();
    let a = agent(&cd);
    // outside every session: the container's own process runs a renamed copy (a watched
    // trace of its own, found by content)
    let init = "sleep 2; cp /usr/bin/tcpdump /tmp/y; timeout 3 /tmp/y -n -i lo -Z root >/dev/null 2>&1; sleep 3600";
    let c =
        cd.run_prepared(&[], &["--privileged", "--net-host", "--mount", HOST_USR], &["sh", "-c", init], &with_host_usr);
    std::thread::sleep(Duration::from_secs(7));
    // in an exec session: another copy, and tcpdump behind the dynamic loader
    let script = "cp /usr/bin/tcpdump /tmp/x; timeout 2 /tmp/x -n -i lo -Z root; \
                  timeout 2 /lib64/ld-linux-x86-64.so.2 /usr/bin/tcpdump -n -i lo -Z root; true";
    let x = cd.exec(&c.id, &["sh", "-c", script]);
    assert!(x.status.success(), "{}", String::from_utf8_lossy(&x.stderr));
    std::thread::sleep(Duration::from_secs(2));
    let spans = stop(a);
    let mine = of_container(&spans, &c.id);

    let y: Vec<&&Span> = mine.iter().filter(|s| s.name == "y").collect();
    assert_eq!(y.len(), 1, "the renamed copy's span, named as it was called: {mine:#?}");
    assert_eq!(y[0].text("podtrail.process.identity").as_deref(), Some("tcpdump"), "{:#?}", y[0]);
    assert_eq!(y[0].text("process.executable.name").as_deref(), Some("y"));
    assert_eq!(y[0].text("podtrail.session.kind").as_deref(), Some("watched_exec"), "a watched trace: {:#?}", y[0]);

    let x: Vec<&&Span> = mine.iter().filter(|s| s.name == "x").collect();
    assert_eq!(x.len(), 1, "{mine:#?}");
    assert_eq!(x[0].text("podtrail.process.identity").as_deref(), Some("tcpdump"));
    assert_eq!(x[0].text("podtrail.session.kind").as_deref(), Some("exec"));

    let ld: Vec<&&Span> = mine.iter().filter(|s| s.name == "ld-linux-x86-64.so.2").collect();
    assert_eq!(ld.len(), 1, "{mine:#?}");
    assert_eq!(ld[0].text("podtrail.process.loader.program").as_deref(), Some("/usr/bin/tcpdump"));
    assert_eq!(ld[0].text("podtrail.process.identity").as_deref(), Some("tcpdump"));

    // nothing else in the container is taken for tcpdump
    let others: Vec<&&Span> = mine
        .iter()
        .filter(|s| {
            s.text("podtrail.process.identity").is_some()
                && !["x", "y", "ld-linux-x86-64.so.2"].contains(&s.name.as_str())
        })
        .collect();
    assert!(others.is_empty(), "{others:#?}");
}

#[test]
fn the_payload_after_ten_thousand_decoy_commands_is_kept() {
    let cd = Containerd::start();
    let a = agent(&cd);
    let c = cd.run_prepared(&[], &["--net-host", "--mount", HOST_USR], &["sleep", "3600"], &with_host_usr);
    let port = support::net::free_port(); // nothing listens: the connect is refused
    let script = format!(
        "i=0; while [ $i -lt 10000 ]; do /bin/true decoy-$i; i=$((i+1)); done; \
         /usr/bin/id -u; /bin/nc -w 1 127.0.0.1 {port} </dev/null; true"
    );
    let started = Instant::now();
    let x = cd.exec(&c.id, &["sh", "-c", &script]);
    assert!(x.status.success(), "{}", String::from_utf8_lossy(&x.stderr));
    eprintln!("10 000 decoys ran in {:?}", started.elapsed());
    std::thread::sleep(Duration::from_secs(2));
    let spans = stop(a);
    let mine = of_container(&spans, &c.id);
    let root = mine
        .iter()
        .find(|s| s.is_root() && s.text("podtrail.session.kind").as_deref() == Some("exec"))
        .expect("the session's root");
    let num = |k: &str| root.text(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    assert!(num("podtrail.session.spans_capped") > 0, "the cap was reached: {root:#?}");
    assert_eq!(
        num("podtrail.session.spans_capped"),
        num("podtrail.session.spans_capped.process") + num("podtrail.session.spans_capped.network"),
        "counted by kind: {root:#?}"
    );
    assert!(num("podtrail.session.spans_kept_over_cap") >= 3, "id, nc and its connect kept past the cap: {root:#?}");
    let in_trace: Vec<&&Span> = mine.iter().filter(|s| s.trace_id == root.trace_id).collect();
    let decoys = in_trace.iter().filter(|s| s.name == "true").count();
    assert!(decoys < 10_000, "decoys were capped ({decoys} kept)");
    let id = in_trace.iter().find(|s| s.name == "id").expect("the payload's new binary is kept");
    assert!(
        in_trace.iter().any(|s| s.span_id == id.parent),
        "its parent is in the trace (a capped parent is replaced by the root): {id:#?}"
    );
    let nc = in_trace.iter().find(|s| s.name == "nc").expect("the image that made a connect is kept");
    let conn = in_trace
        .iter()
        .find(|s| s.name == "connect" && s.text("server.port") == Some(port.to_string()))
        .expect("the payload's connect is kept");
    assert_eq!(conn.parent, nc.span_id);
    assert_eq!(conn.text("podtrail.network.outcome").as_deref(), Some("refused"));
}
