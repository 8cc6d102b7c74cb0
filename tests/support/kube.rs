//! A local HTTP server that speaks the Kubernetes API server's list/watch wire format: a list
//! with a resourceVersion, then `watch=true` streams of newline-delimited
//! `{"type":..,"object":..}` events in chunked encoding, a `410 Gone` ERROR event, a 503 while
//! the "API server" restarts, a 404 Status for what it does not serve. Each resource is a
//! [`Route`] with its own script; a gate the test opens releases watch steps in order.

use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub enum ListStep {
    Fail(u16),
    /// Close the connection without an answer (the API server went away mid-request).
    Drop,
    Ok(Value),
}

pub struct WatchStep {
    /// Served once the test has opened the gate this far.
    pub gate: usize,
    pub events: Vec<Value>,
    /// End the chunked body after the events (the watcher then re-watches); otherwise hold
    /// the stream open like an idle watch.
    pub close: bool,
}

/// One collection: requests whose target starts with `prefix` (and contains `must_contain`).
pub struct Route {
    pub prefix: String,
    pub must_contain: Option<String>,
    /// What an exhausted script lists when nothing was listed yet (an empty list).
    pub list_kind: String,
    pub lists: Vec<ListStep>,
    pub watches: Vec<WatchStep>,
}

impl Route {
    /// `path` like `/api/v1/nodes`; an empty `<list_kind>` and idle watches unless scripted.
    pub fn new(path: &str, list_kind: &str) -> Route {
        Route {
            prefix: format!("{path}?"),
            must_contain: None,
            list_kind: list_kind.into(),
            lists: Vec::new(),
            watches: Vec::new(),
        }
    }
    pub fn containing(mut self, s: &str) -> Route {
        self.must_contain = Some(s.into());
        self
    }
    pub fn lists(mut self, lists: Vec<ListStep>) -> Route {
        self.lists = lists;
        self
    }
    pub fn watches(mut self, watches: Vec<WatchStep>) -> Route {
        self.watches = watches;
        self
    }
}

struct RouteState {
    prefix: String,
    must_contain: Option<String>,
    list_kind: String,
    lists: Mutex<VecDeque<ListStep>>,
    last_list: Mutex<Option<Value>>,
    watches: Mutex<VecDeque<WatchStep>>,
}

struct Script {
    routes: Vec<RouteState>,
    /// Single objects (`GET path`), by exact path.
    objects: Vec<(String, Value)>,
    gate: watch::Sender<usize>,
    requests: Mutex<Vec<String>>,
    /// token → (service account user name, node name) the `TokenReview` endpoint vouches for;
    /// any other token reviews as not authenticated.
    tokens: Mutex<Vec<(String, String, String)>>,
}

pub struct FakeApi {
    pub url: String,
    script: Arc<Script>,
}

impl FakeApi {
    pub async fn start(routes: Vec<Route>) -> Self {
        Self::start_with_objects(routes, Vec::new()).await
    }

    pub async fn start_with_objects(routes: Vec<Route>, objects: Vec<(String, Value)>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let routes = routes
            .into_iter()
            .map(|r| RouteState {
                prefix: r.prefix,
                must_contain: r.must_contain,
                list_kind: r.list_kind,
                lists: Mutex::new(r.lists.into()),
                last_list: Mutex::new(None),
                watches: Mutex::new(r.watches.into()),
            })
            .collect();
        let script = Arc::new(Script {
            routes,
            objects,
            gate: watch::channel(0).0,
            requests: Mutex::new(Vec::new()),
            tokens: Mutex::new(Vec::new()),
        });
        let s = script.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, s.clone()));
            }
        });
        Self { url, script }
    }

    /// `POST /apis/authentication.k8s.io/v1/tokenreviews` with `token` answers: authenticated,
    /// audience `podtrail`, user `user`, bound to a pod on `node` (the `user.extra` the API
    /// server sets for pod-bound tokens).
    pub fn add_token(&self, token: &str, user: &str, node: &str) {
        self.script.tokens.lock().unwrap().push((token.into(), user.into(), node.into()));
    }

    pub fn open_gate(&self, n: usize) {
        self.script.gate.send_replace(n);
    }

    pub fn requests(&self) -> Vec<String> {
        self.script.requests.lock().unwrap().clone()
    }

    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(kube::Config::new(self.url.parse().unwrap())).unwrap()
    }

    /// A kubeconfig file pointing at this server (for the `podtrail` binary).
    pub fn kubeconfig(&self, path: &std::path::Path) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            self.url
        );
        std::fs::write(path, text).unwrap();
    }
}

async fn respond(wr: &mut tokio::net::tcp::OwnedWriteHalf, code: u16, body: &Value) -> bool {
    let body = body.to_string();
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        _ => "Service Unavailable",
    };
    let head =
        format!("HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
    wr.write_all(head.as_bytes()).await.is_ok() && wr.write_all(body.as_bytes()).await.is_ok()
}

pub fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":message,"reason":reason,"code":code})
}

async fn serve(conn: TcpStream, script: Arc<Script>) {
    let (rd, mut wr) = conn.into_split();
    let mut rd = BufReader::new(rd);
    loop {
        let mut request_line = String::new();
        if rd.read_line(&mut request_line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if rd.read_line(&mut h).await.unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        if tokio::io::AsyncReadExt::read_exact(&mut rd, &mut body).await.is_err() {
            return;
        }
        let target = request_line.split_whitespace().nth(1).unwrap_or("").to_owned();
        script.requests.lock().unwrap().push(target.clone());
        if request_line.starts_with("POST ") && target.starts_with("/apis/authentication.k8s.io/v1/tokenreviews") {
            let review: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let token = review["spec"]["token"].as_str().unwrap_or("").to_owned();
            let known = script.tokens.lock().unwrap().iter().find(|(t, _, _)| *t == token).cloned();
            let st = match known {
                Some((_, user, node)) => json!({"authenticated": true, "audiences": review["spec"]["audiences"],
                    "user": {"username": user, "uid": "u-1", "groups": ["system:serviceaccounts"],
                             "extra": {"authentication.kubernetes.io/node-name": [node],
                                       "authentication.kubernetes.io/pod-name": ["podtrail-agent-x"]}}}),
                None => json!({"authenticated": false, "error": "invalid bearer token", "user": {}}),
            };
            let out = json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "metadata": {},
                             "spec": review["spec"], "status": st});
            if !respond(&mut wr, 200, &out).await {
                return;
            }
            continue;
        }
        if let Some((_, obj)) = script.objects.iter().find(|(p, _)| *p == target) {
            if !respond(&mut wr, 200, obj).await {
                return;
            }
            continue;
        }
        let route = script
            .routes
            .iter()
            .find(|r| target.starts_with(&r.prefix) && r.must_contain.as_deref().is_none_or(|m| target.contains(m)));
        let Some(route) = route else {
            let nf = status(404, "NotFound", "the server could not find the requested resource");
            if !respond(&mut wr, 404, &nf).await {
                return;
            }
            continue;
        };
        let is_watch = target.contains("watch=true") || target.contains("watch=1");
        if !is_watch {
            let step = route.lists.lock().unwrap().pop_front();
            let (code, body) = match step {
                Some(ListStep::Drop) => return,
                Some(ListStep::Fail(code)) => {
                    (code, status(code, "ServiceUnavailable", "the server is currently unable to handle the request"))
                }
                Some(ListStep::Ok(v)) => {
                    *route.last_list.lock().unwrap() = Some(v.clone());
                    (200, v)
                }
                None => (
                    200,
                    route.last_list.lock().unwrap().clone().unwrap_or_else(|| list(&route.list_kind, "1", vec![])),
                ),
            };
            if !respond(&mut wr, code, &body).await {
                return;
            }
            continue;
        }
        let step = route.watches.lock().unwrap().pop_front();
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

/// A list of `kind` (`PodList`, `NodeList`, ...) at resourceVersion `rv`.
pub fn list(kind: &str, rv: &str, items: Vec<Value>) -> Value {
    let api_version = if kind == "ServiceCIDRList" { "networking.k8s.io/v1" } else { "v1" };
    json!({"kind":kind,"apiVersion":api_version,"metadata":{"resourceVersion":rv},"items":items})
}

pub fn ev(kind: &str, obj: Value) -> Value {
    json!({"type":kind,"object":obj})
}

/// The ERROR event of an expired watch.
pub fn gone() -> Value {
    json!({"type":"ERROR","object":status(410, "Expired", "too old resource version: 102 (150)")})
}
