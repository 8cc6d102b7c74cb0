//! Pod metadata against a local HTTP server that speaks the API server's list/watch wire
//! format: a `PodList` with a resourceVersion, then `watch=true` streams of newline-delimited
//! `{"type":..,"object":..}` events in chunked encoding, a `410 Gone` ERROR event, a 503 while
//! the "API server" restarts.

use podtrail::enrich::kube::{watch_pods, ContainerKind, PodIndex, Workload};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

enum ListStep {
    Fail(u16),
    /// Close the connection without an answer (the API server went away mid-request).
    Drop,
    Ok(Value),
}

struct WatchStep {
    /// Served once the test has opened the gate this far.
    gate: usize,
    events: Vec<Value>,
    /// End the chunked body after the events (the watcher then re-watches); otherwise hold
    /// the stream open like an idle watch.
    close: bool,
}

struct Script {
    lists: Mutex<VecDeque<ListStep>>,
    last_list: Mutex<Option<Value>>,
    watches: Mutex<VecDeque<WatchStep>>,
    gate: watch::Sender<usize>,
    requests: Mutex<Vec<String>>,
}

struct FakeApi {
    url: String,
    script: Arc<Script>,
}

impl FakeApi {
    async fn start(lists: Vec<ListStep>, watches: Vec<WatchStep>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let script = Arc::new(Script {
            lists: Mutex::new(lists.into()),
            last_list: Mutex::new(None),
            watches: Mutex::new(watches.into()),
            gate: watch::channel(0).0,
            requests: Mutex::new(Vec::new()),
        });
        let s = script.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, s.clone()));
            }
        });
        Self { url, script }
    }

    fn open_gate(&self, n: usize) {
        self.script.gate.send_replace(n);
    }

    fn requests(&self) -> Vec<String> {
        self.script.requests.lock().unwrap().clone()
    }
}

async fn serve(conn: TcpStream, script: Arc<Script>) {
    let (rd, mut wr) = conn.into_split();
    let mut rd = BufReader::new(rd);
    loop {
        let mut request_line = String::new();
        if rd.read_line(&mut request_line).await.unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut h = String::new();
            if rd.read_line(&mut h).await.unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
        }
        let target = request_line.split_whitespace().nth(1).unwrap_or("").to_owned();
        script.requests.lock().unwrap().push(target.clone());
        let is_watch = target.contains("watch=true") || target.contains("watch=1");
        if !target.starts_with("/api/v1/pods?") || !target.contains("fieldSelector=spec.nodeName%3Dnode-1") {
            let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#;
            let _ = wr
                .write_all(
                    format!(
                        "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await;
            continue;
        }
        if !is_watch {
            let step = script.lists.lock().unwrap().pop_front();
            let (code, body) = match step {
                Some(ListStep::Drop) => return,
                Some(ListStep::Fail(code)) => (
                    code,
                    json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server is currently unable to handle the request","reason":"ServiceUnavailable","code":code}),
                ),
                Some(ListStep::Ok(v)) => {
                    *script.last_list.lock().unwrap() = Some(v.clone());
                    (200, v)
                }
                None => (200, script.last_list.lock().unwrap().clone().unwrap_or_else(|| pod_list("1", vec![]))),
            };
            let body = body.to_string();
            let reason = if code == 200 { "OK" } else { "Service Unavailable" };
            let head = format!(
                "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            if wr.write_all(head.as_bytes()).await.is_err() || wr.write_all(body.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        let step = script.watches.lock().unwrap().pop_front();
        let Some(step) = step else {
            // An idle watch: headers, then nothing until the client goes away.
            let _ = wr
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await;
            std::future::pending::<()>().await;
            return;
        };
        let mut gate = script.gate.subscribe();
        let _ = gate.wait_for(|g| *g >= step.gate).await;
        if wr
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
        for ev in &step.events {
            let line = format!("{ev}\n");
            if wr.write_all(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !step.close {
            std::future::pending::<()>().await;
        }
        if wr.write_all(b"0\r\n\r\n").await.is_err() {
            return;
        }
    }
}

fn pod_list(rv: &str, items: Vec<Value>) -> Value {
    json!({"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":rv},"items":items})
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

fn ev(kind: &str, obj: Value) -> Value {
    json!({"type":kind,"object":obj})
}

fn gone() -> Value {
    json!({"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 102 (150)","reason":"Expired","code":410}})
}

fn client(url: &str) -> kube::Client {
    kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap()
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..300 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
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
    let api = FakeApi::start(
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
    tokio::spawn(watch_pods(client(&api.url), "node-1", index.clone(), async move {
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
    let api = FakeApi::start(
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
    tokio::spawn(watch_pods(client(&api.url), "node-1", index.clone(), async move {
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
