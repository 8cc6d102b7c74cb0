//! Live export against a real Jaeger: a `ctr task exec -t` shell that stays open (what an
//! intruder's `kubectl exec -it` looks like on the node) is searchable while it runs: its
//! `session opened` span says who opened it (the audit record posted to the agent's loopback
//! webhook), and the "Terminal shell in a container" alert is an `alert` span, both within
//! seconds and before any process of the session ended. When the shell exits the root closes
//! the trace, and the trace is one tree although its spans arrived root last.
//!
//! Needs root, containerd/runc/ctr, busybox-static, util-linux `script` (the terminal for
//! `ctr task exec -t`) and Go (Jaeger, tests/harness/jaeger.sh); fails (never skips) when one
//! is missing. Run: `cargo test --release --test e2e_live`.

mod support;

use std::collections::HashMap;
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use support::agent::{containerd_config, post_audit, Podtrail, Scratch};
use support::audit::{event_list, exec_events, new_audit_id, pod_labels};
use support::containers::Containerd;
use support::jaeger::{norm_id, JSpan, Jaeger};
use support::net::free_port;

const SHELL: &str = "Terminal shell in a container";
/// Jaeger takes no OTLP logs: the agent sends no alert log records to it.
const JAEGER_TAKES_NO_LOGS: &str = "[export]\nalert_logs = false\n";

fn show(spans: &[JSpan]) -> String {
    spans.iter().map(|s| format!("{} {} <- {:?}", s.id, s.name, s.parent)).collect::<Vec<_>>().join("\n")
}

#[test]
fn an_open_terminal_session_is_searchable_with_its_identity_and_alert_before_it_ends() {
    let dir = Scratch::new("live");
    let cd = Containerd::start();
    let c = cd.run(&pod_labels(), &[], &["sleep", "100000"]);
    let jaeger = Jaeger::start(&dir.join("jaeger"));
    let cfg = dir.join("podtrail.toml");
    std::fs::write(&cfg, containerd_config(&cd.address, &cd.namespace, JAEGER_TAKES_NO_LOGS)).unwrap();
    let webhook = format!("127.0.0.1:{}", free_port());
    let endpoint = format!("http://{}", jaeger.otlp_grpc);
    let mut agent = Podtrail::start(
        &dir,
        &["--config", cfg.to_str().unwrap(), "--otlp-endpoint", &endpoint, "--audit-webhook-loopback", &webhook],
    );

    // the API server's record of `kubectl exec -it api-7d9c -- sh`, as its webhook posts it
    // once the stream is up
    let audit_id = new_audit_id();
    let received = SystemTime::now();
    post_audit(
        &webhook,
        &event_list(exec_events(&audit_id, &["sh"], received, &["RequestReceived", "ResponseStarted"])),
        &agent.log_text(),
    );

    // the shell, on a terminal, that nobody tells to exit yet
    let opened_at = Instant::now();
    let mut shell = cd.exec_tty_shell(&c.id, Stdio::null());

    // what Q2 and Q4 ask (the audit id, the user) finds it while it runs
    let trace_id = jaeger.wait_for(30, "the open session's trace (tag podtrail.k8s.audit_id)", |j| {
        j.search_tags(&[("podtrail.k8s.audit_id", &audit_id), ("user.name", "john.doe@example.com")])
            .into_iter()
            .find(|id| j.trace(id).is_some_and(|t| t.iter().any(|s| s.name == "alert")))
    });
    let seen_after = opened_at.elapsed();
    let spans = jaeger.trace(&trace_id).expect("the trace");
    assert!(shell.try_wait().unwrap().is_none(), "the shell must still run");
    eprintln!("open session searchable {seen_after:?} after the exec:\n{}", show(&spans));
    assert_eq!(norm_id(&trace_id), norm_id(&audit_id.replace('-', "")), "trace id = the audit id");

    let opened = spans
        .iter()
        .find(|s| s.name == "session opened")
        .unwrap_or_else(|| panic!("no `session opened` span:\n{}", show(&spans)));
    assert_eq!(opened.tag("user.name"), Some("john.doe@example.com"));
    assert_eq!(opened.tag("podtrail.k8s.audit_id"), Some(audit_id.as_str()));
    assert_eq!(opened.tag("podtrail.attribution.source"), Some("audit_webhook"));
    assert_eq!(opened.tag("podtrail.k8s.tty"), Some("true"));
    assert_eq!(opened.tag("k8s.pod.name"), Some("api-7d9c"));
    assert_eq!(opened.tag("container.id"), Some(c.id.as_str()));
    assert!(opened.tag("user.roles").is_some_and(|r| r.contains("system:authenticated")), "{:?}", opened.tags);

    let alerts: Vec<&JSpan> = spans.iter().filter(|s| s.name == "alert").collect();
    assert_eq!(alerts.len(), 1, "one alert so far:\n{}", show(&spans));
    let alert = alerts[0];
    assert_eq!(alert.tag("security_rule.name"), Some(SHELL));
    assert_eq!(alert.tag("podtrail.alert.severity"), Some("medium"));
    assert_eq!(alert.tag("process.command"), Some("sh"));
    assert_eq!(alert.tag("user.name"), Some("john.doe@example.com"), "the identity on the alert too");
    let root_id = opened.parent.clone().expect("`session opened` hangs on the root");
    assert_eq!(alert.parent.as_deref(), Some(root_id.as_str()), "the alert too");
    assert!(!spans.iter().any(|s| s.id == root_id || s.name == "sh"), "nothing ended yet:\n{}", show(&spans));
    // and a search for the alert's rule finds it
    let by_rule = jaeger.search_tags(&[("security_rule.name", SHELL), ("k8s.pod.name", "api-7d9c")]);
    assert!(by_rule.contains(&trace_id), "{by_rule:?}");

    // the shell runs a command and leaves: the root closes the trace
    let mut stdin = shell.stdin.take().unwrap();
    stdin.write_all(b"/bin/echo still-here\nexit\n").unwrap();
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(30);
    while shell.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the shell did not exit");
        std::thread::sleep(Duration::from_millis(100));
    }
    let spans = jaeger.wait_for(30, "the root that closes the trace", |j| {
        j.trace(&trace_id).filter(|t| t.iter().any(|s| s.id == root_id))
    });
    let log = agent.stop();
    eprintln!("closed:\n{}", show(&spans));
    let ids: HashMap<&str, &JSpan> = spans.iter().map(|s| (s.id.as_str(), s)).collect();
    let roots: Vec<&JSpan> = spans.iter().filter(|s| s.parent.is_none()).collect();
    assert_eq!(roots.len(), 1, "one root:\n{}", show(&spans));
    assert_eq!(roots[0].id, root_id);
    assert_eq!(roots[0].name, "kubectl exec");
    assert_eq!(roots[0].tag("podtrail.alerts.count"), Some("1"), "the alert counted once: {:?}\n{log}", roots[0].tags);
    for s in &spans {
        if let Some(p) = &s.parent {
            assert!(ids.contains_key(p.as_str()), "{} hangs on a span not in the trace:\n{}", s.name, show(&spans));
        }
    }
    let sh = spans.iter().find(|s| s.name == "sh").unwrap_or_else(|| panic!("no sh:\n{}", show(&spans)));
    assert!(spans.iter().any(|s| s.name == "echo"), "{}", show(&spans));
    assert_eq!(spans.iter().filter(|s| s.name == "alert").count(), 1, "not raised again at the end");
    assert!(sh.tag("podtrail.alert.severity").is_none(), "the alert is an event on sh, not a tag");
}
