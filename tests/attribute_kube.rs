//! Pod metadata against a local HTTP server that speaks the API server's list/watch wire
//! format (tests/support/kube.rs): a `PodList` with a resourceVersion, then `watch=true` streams of
//! newline-delimited `{"type":..,"object":..}` events in chunked encoding, a `410 Gone` ERROR
//! event, a 503 while the "API server" restarts.

mod support;

use podtrail::enrich::kube::{watch_pods, ContainerKind, PodIndex, Workload};
use serde_json::{json, Value};
use support::kube::{ev, gone, FakeApi, ListStep, Route, WatchStep};
use support::wait::eventually;

/// This node's pods, as the pod watch asks for them.
async fn pods_api(lists: Vec<ListStep>, watches: Vec<WatchStep>) -> FakeApi {
    let pods = Route::new("/api/v1/pods", "PodList").containing("fieldSelector=spec.nodeName%3Dnode-1");
    FakeApi::start(vec![pods.lists(lists).watches(watches)]).await
}

fn pod_list(rv: &str, items: Vec<Value>) -> Value {
    support::kube::list("PodList", rv, items)
}

fn status(name: &str, id: &str) -> Value {
    json!({"name":name,"image":"registry.example.com/billing/api:1.4.2","imageID":"registry.example.com/billing/api@sha256:5f0c","containerID":format!("containerd://{id}"),"ready":true,"restartCount":0,"started":true,"state":{"running":{"startedAt":"2026-03-02T13:00:00Z"}}})
}

/// The billing API pod: two containers with probes, an init container, and optionally an
/// ephemeral debug container.
fn api_pod(uid: &str, rv: &str, ids: [&str; 3], ephemeral: Option<&str>) -> Value {
    let mut p = json!({
        "kind":"Pod","apiVersion":"v1",
        "metadata":{"name":"api-7d9c","namespace":"billing","uid":uid,"resourceVersion":rv,
            "labels":{"app":"api","pod-template-hash":"6c4f8b9d7"},
            "ownerReferences":[{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"api-6c4f8b9d7","uid":"0e4b9a4c-1111-4222-8333-444455556666","controller":true,"blockOwnerDeletion":true}]},
        "spec":{"nodeName":"node-1",
            "initContainers":[{"name":"migrate","image":"registry.example.com/billing/migrate:1.4.2"}],
            "containers":[
                {"name":"api","image":"registry.example.com/billing/api:1.4.2",
                 "livenessProbe":{"exec":{"command":["cat","/tmp/healthy"]},"periodSeconds":10},
                 "readinessProbe":{"exec":{"command":["/bin/sh","-c","pg_isready -h localhost"]}},
                 "startupProbe":{"httpGet":{"path":"/healthz","port":8080}}},
                {"name":"sidecar","image":"envoyproxy/envoy:v1.31.0"}]},
        "status":{"phase":"Running",
            "initContainerStatuses":[status("migrate", ids[2])],
            "containerStatuses":[status("api", ids[0]), status("sidecar", ids[1])]}
    });
    if let Some(e) = ephemeral {
        p["spec"]["ephemeralContainers"] = json!([{"name":"debugger-x7k2p","image":"busybox:1.36","targetContainerName":"api","stdin":true,"tty":true}]);
        p["status"]["ephemeralContainerStatuses"] = json!([status("debugger-x7k2p", e)]);
    }
    p
}

fn worker_pod(uid: &str, id: &str) -> Value {
    json!({"kind":"Pod","apiVersion":"v1",
        "metadata":{"name":"worker-5f6b8","namespace":"billing","uid":uid,"resourceVersion":"101",
            "ownerReferences":[{"apiVersion":"apps/v1","kind":"StatefulSet","name":"worker","uid":"9f8e7d6c-aaaa-4bbb-8ccc-dddd00001111","controller":true}]},
        "spec":{"nodeName":"node-1","containers":[{"name":"worker","image":"registry.example.com/billing/worker:2.0"}]},
        "status":{"phase":"Running","containerStatuses":[status("worker", id)]}})
}

const A: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const S: &str = "5151515151515151515151515151515151515151515151515151515151515151";
const I: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const B: &str = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";
const E: &str = "e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5";
const D: &str = "d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4";
const T: &str = "7474747474747474747474747474747474747474747474747474747474747474";
const F: &str = "f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6";

fn v(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn index_survives_watch_expiry_and_a_pod_recreated_under_the_same_name() {
    let api = pods_api(
        vec![
            ListStep::Ok(pod_list("100", vec![api_pod("uid-1", "100", [A, S, I], None)])),
            ListStep::Ok(pod_list(
                "200",
                vec![api_pod(
                    "uid-2",
                    "200",
                    [D, T, "9999999999999999999999999999999999999999999999999999999999999999"],
                    None,
                )],
            )),
        ],
        vec![
            WatchStep {
                gate: 0,
                events: vec![
                    ev("ADDED", worker_pod("uid-w", B)),
                    ev("MODIFIED", api_pod("uid-1", "102", [A, S, I], Some(E))),
                ],
                close: true,
            },
            WatchStep { gate: 1, events: vec![gone()], close: true },
        ],
    )
    .await;
    let index = PodIndex::new();
    let (_stop, stop) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(watch_pods(api.client(), "node-1", index.clone(), async move {
        let _ = stop.await;
    }));

    eventually("the first list and the watch events", || {
        index.by_container_id(B).is_some() && index.by_container_id(E).is_some()
    })
    .await;
    let a = index.by_container_id(&format!("containerd://{A}")).expect("scheme is stripped");
    assert_eq!((a.namespace.as_str(), a.pod_name.as_str(), a.pod_uid.as_str()), ("billing", "api-7d9c", "uid-1"));
    assert_eq!((a.container_name.as_str(), a.container_kind), ("api", ContainerKind::Regular));
    assert_eq!(a.workload, Some(Workload { kind: "Deployment".into(), name: "api".into() }));
    assert_eq!(a.node_name.as_deref(), Some("node-1"));
    assert_eq!(a.labels.get("app").map(String::as_str), Some("api"));
    assert_eq!(a.probe_commands, vec![v(&["cat", "/tmp/healthy"]), v(&["/bin/sh", "-c", "pg_isready -h localhost"])]);
    assert_eq!(
        index.by_container_id(I).map(|i| (i.container_name, i.container_kind)),
        Some(("migrate".into(), ContainerKind::Init))
    );
    assert_eq!(
        index.by_container_id(E).map(|i| (i.container_name, i.container_kind)),
        Some(("debugger-x7k2p".into(), ContainerKind::Ephemeral))
    );
    assert_eq!(
        index.by_container_id(B).and_then(|i| i.workload),
        Some(Workload { kind: "StatefulSet".into(), name: "worker".into() })
    );

    assert!(index.is_probe(A, &v(&["cat", "/tmp/healthy"])));
    assert!(index.is_probe(A, &v(&["sh", "-c", "pg_isready -h localhost"])));
    assert!(!index.is_probe(A, &v(&["cat", "/etc/passwd"])));
    assert!(!index.is_probe(S, &v(&["cat", "/tmp/healthy"])), "probes belong to their container");

    // The watch expires (410): the watcher re-lists, and the list shows the pod recreated
    // under the same name and the worker gone (its DELETED event was never seen).
    api.open_gate(1);
    eventually("the re-list after 410 Gone", || index.by_container_id(D).is_some()).await;
    assert_eq!(index.by_container_id(D).unwrap().pod_uid, "uid-2");
    for stale in [A, S, I, B, E] {
        assert_eq!(index.by_container_id(stale), None, "stale mapping {stale}");
    }
    assert!(index.relists() >= 2);
    assert!(index.watch_errors() >= 1);
    let reqs = api.requests();
    assert!(reqs.iter().any(|r| r.contains("resourceVersion=100") && r.contains("watch=true")), "{reqs:?}");
    assert!(reqs.iter().filter(|r| !r.contains("watch=")).count() >= 2, "{reqs:?}");
}

#[tokio::test]
async fn api_restart_and_same_name_recreation_within_one_watch() {
    let api = pods_api(
        vec![
            ListStep::Fail(503),
            ListStep::Drop,
            ListStep::Ok(pod_list("10", vec![api_pod("uid-1", "10", [A, S, I], None)])),
        ],
        vec![WatchStep {
            gate: 0,
            events: vec![
                ev("DELETED", api_pod("uid-1", "11", [A, S, I], None)),
                ev("ADDED", api_pod("uid-2", "12", [D, T, I], None)),
                // A third incarnation whose predecessor's DELETED is missing: the name decides.
                ev(
                    "ADDED",
                    api_pod(
                        "uid-3",
                        "14",
                        [F, "3333333333333333333333333333333333333333333333333333333333333333", I],
                        None,
                    ),
                ),
            ],
            close: false,
        }],
    )
    .await;
    let index = PodIndex::new();
    let (_stop, stop) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(watch_pods(api.client(), "node-1", index.clone(), async move {
        let _ = stop.await;
    }));
    eventually("the third incarnation", || index.by_container_id(F).is_some()).await;
    // kube's client retries the 503 itself; the dropped connection reaches the watcher,
    // which backs off and lists again.
    assert!(index.watch_errors() >= 1, "the dropped connection was seen");
    assert!(api.requests().iter().filter(|r| !r.contains("watch=")).count() >= 3, "{:?}", api.requests());
    for stale in [A, S, D, T] {
        assert_eq!(index.by_container_id(stale), None, "stale mapping {stale}");
    }
    assert_eq!(index.by_container_id(I).unwrap().pod_uid, "uid-3");
    assert_eq!(index.len(), 3);
}
