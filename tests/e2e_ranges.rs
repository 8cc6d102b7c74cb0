//! Issue 6 end to end: the real `podtrail run`, watching a fake Kubernetes API
//! (tests/support/kube.rs, through a kubeconfig) and a busybox container of a private
//! containerd (tests/support/containers.rs) whose own processes (no exec session) connect to
//! 203.0.113.7. While no node claims that address
//! it is external and its connects are outbound traces; once the API announces a node whose
//! podCIDR holds it, the agent logs the learned range, counts it in /metrics, and connects to
//! it are no longer recorded, while connects to another outside address still are.
//! Needs root and containerd; fails (never skips) when one is missing.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::agent::{containerd_config, metric, Podtrail, Scratch};
use support::containers::Containerd;
use support::kube::{ev, list, FakeApi, ListStep, Route, WatchStep};
use support::otlp_json;

const BECOMES_POD: &str = "203.0.113.7";
const STAYS_OUT: &str = "198.51.100.7";

fn node(name: &str, rv: &str, pod_cidr: &str, ip: &str) -> Value {
    json!({"kind":"Node","apiVersion":"v1","metadata":{"name":name,"uid":format!("uid-{name}"),"resourceVersion":rv},
        "spec":{"podCIDR":pod_cidr,"podCIDRs":[pod_cidr]},
        "status":{"addresses":[{"type":"InternalIP","address":ip},{"type":"Hostname","address":name}]}})
}

fn wait_log(agent: &Podtrail, what: &str, cond: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !agent.log_text().lines().any(&cond) {
        assert!(Instant::now() < deadline, "the agent never logged {what}:\n{}", agent.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn connects_stop_being_outbound_once_a_node_podcidr_claims_the_address() {
    let cd = Containerd::start();
    let dir = Scratch::new("ranges");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pods = Route::new("/api/v1/pods", "PodList").containing("fieldSelector=spec.nodeName%3Dnode-1");
    let nodes = Route::new("/api/v1/nodes", "NodeList")
        .lists(vec![ListStep::Ok(list("NodeList", "10", vec![node("node-1", "10", "10.244.0.0/24", "192.168.49.2")]))])
        .watches(vec![WatchStep {
            gate: 1,
            events: vec![ev("ADDED", node("node-2", "11", "203.0.113.0/24", "192.168.49.3"))],
            close: false,
        }]);
    let cidrs = Route::new("/apis/networking.k8s.io/v1/servicecidrs", "ServiceCIDRList");
    let api = rt.block_on(FakeApi::start(vec![pods, nodes, cidrs]));
    api.kubeconfig(&dir.join("kubeconfig"));
    let config = containerd_config(&cd.address, &cd.namespace, "[kube]\nwatch = \"on\"\nnode_name = \"node-1\"\n");
    std::fs::write(dir.join("podtrail.toml"), config).unwrap();
    // the agent's kube client reads KUBECONFIG; this test is the only one in its process
    std::env::set_var("KUBECONFIG", dir.join("kubeconfig"));
    let traces = dir.join("traces.jsonl");
    let mut agent = Podtrail::start(
        &dir,
        &["--config", dir.join("podtrail.toml").to_str().unwrap(), "--otlp-file", traces.to_str().unwrap()],
    );
    wait_log(&agent, "node-1's podCIDR", |l| l.contains("learned a cluster range") && l.contains("10.244.0.0/24"));

    // phase 1 on port 443, phase 2 (after /phase2 appears) on 444: a connect's port says
    // which side of the learning it was made on. telnet in the background: nothing answers.
    let script = format!(
        "while :; do if [ -e /phase2 ]; then telnet {BECOMES_POD} 444 </dev/null & telnet {STAYS_OUT} 444 </dev/null & else telnet {BECOMES_POD} 443 </dev/null & fi; sleep 1; done"
    );
    let telnet =
        |root: &std::path::Path| std::os::unix::fs::symlink("busybox", root.join("bin/telnet")).expect("telnet applet");
    let c = cd.run_prepared(&[], &["--net-host"], &["sh", "-c", &script], &telnet);
    std::thread::sleep(Duration::from_secs(6));
    api.open_gate(1);
    wait_log(&agent, "node-2's podCIDR", |l| l.contains("learned a cluster range") && l.contains("203.0.113.0/24"));
    std::fs::write(cd.rootfs(&c.id).join("phase2"), b"").unwrap();
    std::thread::sleep(Duration::from_secs(8));
    let scraped = agent.scrape();
    let log = agent.stop();

    assert_eq!(metric(&scraped, "podtrail_cluster_ranges{kind=\"pod\",source=\"nodes\"}"), Some(2.0), "{scraped}");
    assert_eq!(metric(&scraped, "podtrail_cluster_ranges{kind=\"node\",source=\"nodes\"}"), Some(2.0), "{scraped}");
    assert_eq!(metric(&scraped, "podtrail_cluster_ranges{kind=\"pod\",source=\"config\"}"), Some(0.0), "{scraped}");
    let spans = otlp_json::read(&traces);
    let connects: Vec<(String, String, String)> = spans
        .iter()
        .filter(|s| s.name == "connect" && s.str("container.id").as_deref() == Some(c.id.as_str()))
        .map(|s| {
            let get = |k| s.text(k).unwrap_or_default();
            (get("server.address"), get("server.port"), get("podtrail.network.destination.scope"))
        })
        .collect();
    let seen = |addr: &str, port: &str| connects.iter().filter(|(a, p, _)| a == addr && p == port).collect::<Vec<_>>();
    let before = seen(BECOMES_POD, "443");
    assert!(!before.is_empty(), "outbound before the node appeared: {connects:?}\n{log}");
    assert!(before.iter().all(|(_, _, s)| s == "external"), "{before:?}");
    assert!(!seen(STAYS_OUT, "444").is_empty(), "phase 2 ran and outside connects are still recorded: {connects:?}");
    assert_eq!(seen(BECOMES_POD, "444"), Vec::<&(String, String, String)>::new(), "now a pod address: not outbound");
    drop(rt);
}
