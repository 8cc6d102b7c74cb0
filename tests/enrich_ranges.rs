//! Cluster ranges learned from the Kubernetes API (issue 6), against a local server speaking
//! the API's list/watch wire format (tests/support/kube.rs): Nodes' podCIDRs and addresses and
//! ServiceCIDRs are learned, watch events update them, a `410 Gone` re-list forgets what is no
//! longer listed, and the classification the process stage and the span builder use follows.
//! A cluster that does not serve ServiceCIDRs (404) gives the default/kubernetes Service's
//! address as a hint.

mod support;

use podtrail::enrich::ranges::{learn, RangeLearner, RangeSource};
use podtrail::process::activity::ActivityConfig;
use podtrail::scope::{RangeKind, ScopeConfig};
use serde_json::{json, Value};
use support::kube::{ev, gone, list, FakeApi, ListStep, Route, WatchStep};
use support::wait::eventually;

fn node(name: &str, rv: &str, pod_cidrs: &[&str], addresses: &[(&str, &str)]) -> Value {
    json!({"kind":"Node","apiVersion":"v1",
        "metadata":{"name":name,"uid":format!("uid-{name}"),"resourceVersion":rv,"labels":{"kubernetes.io/hostname":name}},
        "spec":{"podCIDR":pod_cidrs.first(),"podCIDRs":pod_cidrs,"providerID":format!("kind://docker/kind/{name}")},
        "status":{"addresses":addresses.iter().map(|(t, a)| json!({"type":t,"address":a})).collect::<Vec<_>>(),
            "conditions":[{"type":"Ready","status":"True","lastHeartbeatTime":"2026-03-02T13:00:00Z","lastTransitionTime":"2026-03-02T12:00:00Z","reason":"KubeletReady","message":"kubelet is posting ready status"}],
            "nodeInfo":{"machineID":"m","systemUUID":"s","bootID":"b","kernelVersion":"6.18.0","osImage":"Debian GNU/Linux 13","containerRuntimeVersion":"containerd://2.1.4","kubeletVersion":"v1.34.1","kubeProxyVersion":"","operatingSystem":"linux","architecture":"amd64"}}})
}

fn service_cidr(name: &str, rv: &str, cidrs: &[&str]) -> Value {
    json!({"kind":"ServiceCIDR","apiVersion":"networking.k8s.io/v1",
        "metadata":{"name":name,"uid":format!("uid-{name}"),"resourceVersion":rv},
        "spec":{"cidrs":cidrs},
        "status":{"conditions":[{"type":"Ready","status":"True","lastTransitionTime":"2026-03-02T12:00:00Z","reason":"","message":""}]}})
}

fn stop_on_drop() -> (tokio::sync::oneshot::Sender<()>, impl std::future::Future<Output = ()>) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}

fn scope_of(scope: &ScopeConfig, a: &str) -> &'static str {
    scope.classify(a.parse().unwrap())
}

#[tokio::test]
async fn nodes_and_service_cidrs_are_learned_followed_and_forgotten_after_a_relist() {
    let n1 = |rv, cidrs: &[&str]| node("node-1", rv, cidrs, &[("InternalIP", "192.168.49.2"), ("Hostname", "node-1")]);
    let n2 =
        node("node-2", "103", &["203.0.113.0/24"], &[("InternalIP", "192.168.49.3"), ("ExternalIP", "198.51.100.20")]);
    let nodes = Route::new("/api/v1/nodes", "NodeList")
        .lists(vec![
            ListStep::Ok(list("NodeList", "100", vec![n1("100", &["10.244.0.0/24"])])),
            ListStep::Ok(list("NodeList", "200", vec![n2.clone()])),
        ])
        .watches(vec![
            WatchStep {
                gate: 1,
                events: vec![
                    ev("ADDED", n2.clone()),
                    ev("MODIFIED", n1("104", &["10.244.0.0/24", "fd00:10:244::/64"])),
                ],
                close: true,
            },
            WatchStep { gate: 2, events: vec![gone()], close: true },
        ]);
    let cidrs = Route::new("/apis/networking.k8s.io/v1/servicecidrs", "ServiceCIDRList")
        .lists(vec![ListStep::Ok(list(
            "ServiceCIDRList",
            "50",
            vec![service_cidr("kubernetes", "50", &["10.96.0.0/16"])],
        ))])
        .watches(vec![WatchStep {
            gate: 1,
            events: vec![ev("ADDED", service_cidr("extra", "51", &["10.97.0.0/16", "fd00:96::/112"]))],
            close: false,
        }]);
    let api = FakeApi::start(vec![nodes, cidrs]).await;

    let scope = ScopeConfig { node_cidrs: vec!["192.168.49.2/32".parse().unwrap()], ..Default::default() };
    let activity = ActivityConfig { ranges: scope.clone(), ..Default::default() };
    assert!(activity.outbound("203.0.113.9".parse().unwrap()), "external before any node says otherwise");
    let learner = RangeLearner::new(&scope);
    let (_stop, stopped) = stop_on_drop();
    tokio::spawn(learn(api.client(), learner.clone(), stopped));

    eventually("the first lists", || {
        scope_of(&scope, "10.244.0.5") == "pod" && scope_of(&scope, "10.96.3.4") == "service"
    })
    .await;
    assert_eq!(scope_of(&scope, "192.168.49.2"), "node", "configured and learned: one range");
    assert_eq!(scope_of(&scope, "203.0.113.9"), "external");
    assert_eq!(learner.known(RangeKind::Node, RangeSource::Config), 1);
    assert_eq!(learner.known(RangeKind::Node, RangeSource::Nodes), 1);
    assert_eq!(learner.known(RangeKind::Service, RangeSource::ServiceCidrs), 1);

    // A new node whose podCIDR covers an address that was external; node-1 gains an IPv6 range.
    api.open_gate(1);
    eventually("the watch events", || {
        scope_of(&scope, "203.0.113.9") == "pod" && scope_of(&scope, "10.97.1.1") == "service"
    })
    .await;
    eventually("node-1's update", || scope_of(&scope, "fd00:10:244::1") == "pod").await;
    assert!(!activity.outbound("203.0.113.9".parse().unwrap()), "the process stage sees the node's podCIDR");
    assert_eq!(scope_of(&scope, "198.51.100.20"), "node", "ExternalIP");
    assert_eq!(scope_of(&scope, "192.168.49.3"), "node", "InternalIP");
    assert_eq!(scope_of(&scope, "fd00:96::10"), "service");
    assert_eq!(scope_of(&scope, "198.51.100.21"), "external");
    assert_eq!(learner.known(RangeKind::Pod, RangeSource::Nodes), 3);
    assert_eq!(learner.known(RangeKind::Node, RangeSource::Nodes), 3);
    assert_eq!(learner.known(RangeKind::Service, RangeSource::ServiceCidrs), 3);
    let from: Vec<String> =
        learner.learned().iter().map(|l| format!("{} {} {}", l.kind.as_str(), l.cidr, l.from)).collect();
    assert!(from.contains(&"pod 203.0.113.0/24 node/node-2".to_string()), "{from:?}");
    assert!(from.contains(&"service 10.97.0.0/16 servicecidr/extra".to_string()), "{from:?}");

    // The node watch expires; the re-list no longer has node-1 (its delete was never seen).
    api.open_gate(2);
    eventually("the re-list after 410 Gone", || scope_of(&scope, "10.244.0.5") == "private").await;
    assert_eq!(scope_of(&scope, "fd00:10:244::1"), "private");
    assert_eq!(scope_of(&scope, "192.168.49.2"), "node", "still configured");
    assert_eq!(scope_of(&scope, "203.0.113.9"), "pod", "node-2 stays");
    assert_eq!(learner.known(RangeKind::Pod, RangeSource::Nodes), 1);
    assert!(learner.watch_errors() >= 1, "the expiry is counted");
    assert!(learner.relists() >= 3, "two node lists and one ServiceCIDR list");
    let reqs = api.requests();
    assert!(
        reqs.iter()
            .any(|r| r.starts_with("/api/v1/nodes?") && r.contains("resourceVersion=100") && r.contains("watch=true")),
        "{reqs:?}"
    );
    assert!(
        reqs.iter().any(|r| r.starts_with("/apis/networking.k8s.io/v1/servicecidrs?") && r.contains("watch=true")),
        "{reqs:?}"
    );
}

#[tokio::test]
async fn without_service_cidrs_the_kubernetes_service_address_is_the_hint() {
    let nodes = Route::new("/api/v1/nodes", "NodeList").lists(vec![ListStep::Ok(list(
        "NodeList",
        "7",
        vec![node("node-1", "7", &["10.244.0.0/24"], &[])],
    ))]);
    let kubernetes = json!({"kind":"Service","apiVersion":"v1",
        "metadata":{"name":"kubernetes","namespace":"default","uid":"u-k","resourceVersion":"5"},
        "spec":{"type":"ClusterIP","clusterIP":"10.96.0.1","clusterIPs":["10.96.0.1"],"ports":[{"name":"https","port":443,"protocol":"TCP","targetPort":6443}]}});
    // No route for servicecidrs: the fake answers 404 like an API server before 1.33.
    let api = FakeApi::start_with_objects(
        vec![nodes],
        vec![("/api/v1/namespaces/default/services/kubernetes".into(), kubernetes)],
    )
    .await;
    let scope = ScopeConfig::default();
    let learner = RangeLearner::new(&scope);
    let (_stop, stopped) = stop_on_drop();
    tokio::spawn(learn(api.client(), learner.clone(), stopped));
    eventually("the hint", || scope_of(&scope, "10.96.0.1") == "service").await;
    eventually("the node", || scope_of(&scope, "10.244.0.9") == "pod").await;
    assert_eq!(scope_of(&scope, "10.96.0.2"), "private", "a hint, not the range");
    assert_eq!(learner.known(RangeKind::Service, RangeSource::KubernetesService), 1);
    assert_eq!(learner.known(RangeKind::Service, RangeSource::ServiceCidrs), 0);
    let reqs = api.requests();
    assert!(reqs.iter().any(|r| r.starts_with("/apis/networking.k8s.io/v1/servicecidrs?")), "it asked first: {reqs:?}");
}
