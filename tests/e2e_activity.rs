//! Issue 6 end to end on one machine: a private containerd + runc (tests/support), a busybox
//! container whose own processes (its init's children, no exec session) connect to an address
//! outside the cluster and to a private one, and the real `podtrail run` binary writing
//! OTLP/JSON to a file. Expected: an `outbound` trace for the outside address (root, the
//! process span, one CLIENT connect span), none for the private one (not in the default
//! `outbound_scopes`). The container shares the host's network (`--net-host`): in a namespace
//! of its own no connect was seen here.
//! Needs root and containerd; fails (never skips) when one is missing.

mod support;

use std::{path::Path, time::Duration};

use support::agent::{containerd_config, FileAgent};
use support::containers::Containerd;
use support::otlp_json::{self, Span};

const OUTSIDE: &str = "203.0.113.7";
const PRIVATE: &str = "10.99.0.1";

/// `podtrail run` following the test's containerd, writing OTLP/JSON to a file.
struct Agent(FileAgent);

impl Agent {
    fn start(cd: &Containerd) -> Agent {
        let config = containerd_config(&cd.address, &cd.namespace, "[metrics]\nlisten = \"\"\n");
        Agent(FileAgent::start(&config, &[]))
    }

    /// SIGTERM (the agent drains and flushes), then every span it wrote.
    fn stop(mut self) -> Vec<Span> {
        self.0.terminate();
        otlp_json::read(&self.0.file())
    }
}

#[test]
fn a_container_process_connecting_outside_the_cluster_is_an_outbound_trace() {
    let cd = Containerd::start();
    let agent = Agent::start(&cd);
    // telnet, not wget (busybox wget segfaults on this machine, even with an IP) nor nc (watched:
    // its connects belong to its watched_exec trace); in the background, as a private address
    // may never answer
    let script = format!("sleep 2; for i in 1 2 3; do telnet {OUTSIDE} 443 </dev/null & telnet {PRIVATE} 443 </dev/null & sleep 1; done; sleep 3600");
    let telnet = |root: &Path| std::os::unix::fs::symlink("busybox", root.join("bin/telnet")).expect("telnet applet");
    let c = cd.run_prepared(&[], &["--net-host"], &["sh", "-c", &script], &telnet);
    std::thread::sleep(Duration::from_secs(10));
    let spans = agent.stop();
    let mine: Vec<&Span> = spans.iter().filter(|s| s.str("container.id").as_deref() == Some(c.id.as_str())).collect();
    let connects: Vec<&&Span> = mine.iter().filter(|s| s.name == "connect").collect();
    let outside: Vec<_> = connects.iter().filter(|s| s.text("server.address").as_deref() == Some(OUTSIDE)).collect();
    // Three telnet processes connect out: one outbound trace each.
    assert_eq!(outside.len(), 3, "outbound traces for the telnet processes: {mine:#?}");
    assert!(
        connects.iter().all(|s| s.text("server.address").as_deref() != Some(PRIVATE)),
        "private: not recorded by default"
    );
    for s in outside {
        assert_eq!(s.text("podtrail.session.kind").as_deref(), Some("outbound"));
        assert_eq!(s.text("podtrail.network.destination.scope").as_deref(), Some("external"));
        assert_eq!(s.text("podtrail.folded.count").as_deref(), Some("1"));
        assert_eq!(s.kind, 3, "CLIENT");
        let process = mine.iter().find(|p| p.span_id == s.parent).expect("the connect's process span");
        assert_eq!(process.name, "telnet");
        let root = mine.iter().find(|r| r.trace_id == s.trace_id && r.is_root()).expect("root");
        assert_eq!(root.name, "outbound");
        assert_eq!(process.parent, root.span_id);
    }
}
