//! Which node a record belongs to, and which node a subscriber is: the receiver's side of
//! "each agent gets only its node's records".
//!
//! In: the cluster's pods (a watch of every namespace: name → `spec.nodeName`), records from
//! the store's tap, and each subscriber's bearer token (a bound service-account token with
//! audience `podtrail`, which the kubelet projects into the agent's pod). Out: records tagged
//! with their pod's node for the replay buffer ([`Placement`]); a subscriber's node, proven by
//! a `TokenReview` whose `user.extra["authentication.kubernetes.io/node-name"]` names the node
//! the token's pod runs on ([`TokenReviewer`]).
//! Dropped (counted in [`super::StreamMetrics`]): a record whose pod the watch has not seen
//! within `pending_for`, or past `max_pending` waiting records (`records_unplaced`); tokens
//! that do not review as an agent's on a node (refused, `records_rejected{reason}`).

use super::metrics::StreamMetrics;
use crate::attribute::audit::Stage;
use crate::attribute::record::RequestRecord;
use futures::StreamExt;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The audience agents' tokens are bound to (the DaemonSet's projected token volume).
pub const AUDIENCE: &str = "podtrail";
/// Where the API server puts the node of a pod-bound token (TokenReview `user.extra`).
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// (namespace, pod name) → node name.
type NodeMap = HashMap<(String, String), Arc<str>>;

/// (namespace, pod name) → node name, for every pod of the cluster.
#[derive(Clone, Default)]
pub struct PodNodes {
    map: Arc<RwLock<NodeMap>>,
}

impl PodNodes {
    pub fn node_of(&self, namespace: &str, pod: &str) -> Option<Arc<str>> {
        self.map.read().unwrap_or_else(|p| p.into_inner()).get(&(namespace.to_owned(), pod.to_owned())).cloned()
    }

    /// Put a pod on a node (tests, and the watch).
    pub fn set(&self, namespace: &str, pod: &str, node: &str) {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert((namespace.to_owned(), pod.to_owned()), Arc::from(node));
    }

    fn key(p: &Pod) -> Option<(String, String)> {
        Some((p.metadata.namespace.clone()?, p.metadata.name.clone()?))
    }

    fn apply(&self, p: &Pod) {
        let (Some(k), Some(node)) = (Self::key(p), p.spec.as_ref().and_then(|s| s.node_name.as_deref())) else {
            return;
        };
        self.map.write().unwrap_or_else(|e| e.into_inner()).insert(k, Arc::from(node));
    }

    fn delete(&self, p: &Pod) {
        if let Some(k) = Self::key(p) {
            self.map.write().unwrap_or_else(|e| e.into_inner()).remove(&k);
        }
    }

    fn replace(&self, pods: &[Pod]) {
        let fresh = PodNodes::default();
        pods.iter().for_each(|p| fresh.apply(p));
        let new = std::mem::take(&mut *fresh.map.write().unwrap_or_else(|e| e.into_inner()));
        *self.map.write().unwrap_or_else(|e| e.into_inner()) = new;
    }

    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Keep `nodes` in step with every pod of the cluster until `shutdown`; `changed` is called
/// after each event (waiting records are placed then). Errors are retried with backoff.
pub async fn watch_pods(
    client: kube::Client,
    nodes: PodNodes,
    changed: impl Fn() + Send,
    shutdown: impl Future<Output = ()>,
) {
    let api: Api<Pod> = Api::all(client);
    let mut events = watcher(api, watcher::Config::default()).default_backoff().boxed();
    let mut buffer: Option<Vec<Pod>> = None;
    tokio::pin!(shutdown);
    loop {
        let ev = tokio::select! {
            _ = &mut shutdown => return,
            ev = events.next() => ev,
        };
        match ev {
            None => return,
            Some(Err(e)) => tracing::warn!(error = %e, "receiver pod watch failed; retrying"),
            Some(Ok(Event::Init)) => buffer = Some(Vec::new()),
            Some(Ok(Event::InitApply(p))) => match buffer.as_mut() {
                Some(b) => b.push(p),
                None => nodes.apply(&p),
            },
            Some(Ok(Event::InitDone)) => nodes.replace(&buffer.take().unwrap_or_default()),
            Some(Ok(Event::Apply(p))) => nodes.apply(&p),
            Some(Ok(Event::Delete(p))) => nodes.delete(&p),
        }
        changed();
    }
}

/// Records waiting for their pod's node, then pushed to `push` with it.
pub struct Placement {
    nodes: PodNodes,
    pending: Mutex<VecDeque<(Instant, RequestRecord, Stage)>>,
    pending_for: Duration,
    max_pending: usize,
    metrics: StreamMetrics,
}

type Push<'a> = &'a dyn Fn(&RequestRecord, Stage, Arc<str>);

impl Placement {
    pub fn new(nodes: PodNodes, pending_for: Duration, max_pending: usize, metrics: StreamMetrics) -> Self {
        Self { nodes, pending: Mutex::new(VecDeque::new()), pending_for, max_pending, metrics }
    }

    pub fn nodes(&self) -> &PodNodes {
        &self.nodes
    }

    fn node(&self, r: &RequestRecord) -> Option<Arc<str>> {
        self.nodes.node_of(r.namespace.as_deref()?, r.pod_name.as_deref()?)
    }

    /// Push a record with its node now, or keep it until its pod is seen (bounded, counted).
    pub fn place(&self, rec: &RequestRecord, stage: Stage, push: Push<'_>) {
        if let Some(n) = self.node(rec) {
            return push(rec, stage, n);
        }
        if rec.namespace.is_none() || rec.pod_name.is_none() {
            self.metrics.records_unplaced.inc();
            return;
        }
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.push_back((Instant::now(), rec.clone(), stage));
        while p.len() > self.max_pending {
            p.pop_front();
            self.metrics.records_unplaced.inc();
        }
        self.metrics.records_pending.set(p.len() as i64);
    }

    /// Push the waiting records whose pod is now known; drop those past `pending_for`.
    pub fn recheck(&self, now: Instant, push: Push<'_>) {
        let waiting = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let mut still = VecDeque::new();
        for (at, rec, stage) in waiting {
            match self.node(&rec) {
                Some(n) => push(&rec, stage, n),
                None if now.duration_since(at) >= self.pending_for => {
                    self.metrics.records_unplaced.inc();
                }
                None => still.push_back((at, rec, stage)),
            }
        }
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        still.extend(p.drain(..));
        *p = still;
        self.metrics.records_pending.set(p.len() as i64);
    }
}

/// Why a subscriber's token does not prove an agent on a node.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("no bearer token")]
    Missing,
    #[error("token not authenticated for audience {AUDIENCE}: {0}")]
    Invalid(String),
    #[error("token of {0:?}, not an agent's service account")]
    NotAgent(String),
    #[error("token of {0:?} is not bound to a pod on a node")]
    NoNode(String),
    #[error("TokenReview failed: {0}")]
    Review(String),
}

impl TokenError {
    /// The `records_rejected` reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "token_missing",
            Self::Invalid(_) => "token_invalid",
            Self::NotAgent(_) => "token_not_agent",
            Self::NoNode(_) => "token_no_node",
            Self::Review(_) => "token_review_failed",
        }
    }
}

/// What a TokenReview said about a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reviewed {
    pub authenticated: bool,
    pub audiences: Vec<String>,
    pub username: String,
    pub node: Option<String>,
    pub error: Option<String>,
}

/// Asks the API server who a token is. Boxed so tests can stand in a fake API server.
pub type ReviewFn = Arc<dyn Fn(String) -> futures::future::BoxFuture<'static, Result<Reviewed, String>> + Send + Sync>;

/// The API server's `TokenReview`, through kube.
pub fn kube_review(client: kube::Client) -> ReviewFn {
    Arc::new(move |token: String| {
        let api: Api<TokenReview> = Api::all(client.clone());
        Box::pin(async move {
            let review = TokenReview {
                spec: TokenReviewSpec { token, audiences: Some(vec![AUDIENCE.to_owned()]) },
                ..Default::default()
            };
            let out = api.create(&PostParams::default(), &review).await.map_err(|e| e.to_string())?;
            let st = out.status.unwrap_or_default();
            let user = st.user.unwrap_or_default();
            Ok(Reviewed {
                authenticated: st.authenticated.unwrap_or(false),
                audiences: st.audiences.unwrap_or_default(),
                username: user.username.unwrap_or_default(),
                node: user.extra.and_then(|mut e| e.remove(NODE_NAME_EXTRA)).and_then(|v| v.into_iter().next()),
                error: st.error,
            })
        })
    })
}

/// Proves a subscriber's node from its token, caching answers (a reconnect storm of every
/// agent costs one review per agent per `ttl`, not per connection).
pub struct TokenReviewer {
    review: ReviewFn,
    /// Service accounts whose tokens are agents' (`system:serviceaccount:NS:NAME`).
    agents: Vec<String>,
    cache: Mutex<TokenCache>,
    ttl: Duration,
}

const CACHE_MAX: usize = 50_000;

/// SHA-256 of a token → (when reviewed, the node it proved).
type TokenCache = HashMap<[u8; 32], (Instant, Arc<str>)>;

impl TokenReviewer {
    pub fn new(review: ReviewFn, agents: Vec<String>, ttl: Duration) -> Self {
        Self { review, agents, cache: Mutex::new(HashMap::new()), ttl }
    }

    /// The node the token's pod runs on, if the token is an agent's.
    pub async fn node_of(&self, token: Option<&str>) -> Result<Arc<str>, TokenError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(TokenError::Missing)?;
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = Instant::now();
        if let Some((at, node)) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            if now.duration_since(*at) < self.ttl {
                return Ok(node.clone());
            }
        }
        let r = (self.review)(token.to_owned()).await.map_err(TokenError::Review)?;
        if !r.authenticated || !r.audiences.iter().any(|a| a == AUDIENCE) {
            return Err(TokenError::Invalid(r.error.unwrap_or_default()));
        }
        if !self.agents.contains(&r.username) {
            return Err(TokenError::NotAgent(r.username));
        }
        let node: Arc<str> = Arc::from(r.node.filter(|n| !n.is_empty()).ok_or(TokenError::NoNode(r.username))?);
        let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if c.len() >= CACHE_MAX {
            c.retain(|_, (at, _)| now.duration_since(*at) < self.ttl);
            if c.len() >= CACHE_MAX {
                c.clear();
            }
        }
        c.insert(key, (now, node.clone()));
        Ok(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ns: &str, pod: &str) -> RequestRecord {
        RequestRecord {
            namespace: Some(ns.into()),
            pod_name: Some(pod.into()),
            ..RequestRecord::test_exec(&format!("{ns}/{pod}"))
        }
    }

    #[test]
    fn a_record_waits_for_its_pod_then_goes_to_its_node_or_is_counted() {
        let m = StreamMetrics::default();
        let p = Placement::new(PodNodes::default(), Duration::from_secs(30), 2, m.clone());
        let out = Mutex::new(Vec::new());
        let push = |r: &RequestRecord, _: Stage, n: Arc<str>| out.lock().unwrap().push((r.audit_id.clone(), n));
        p.nodes().set("a", "known", "node-1");
        p.place(&rec("a", "known"), Stage::RequestReceived, &push);
        p.place(&rec("a", "later"), Stage::RequestReceived, &push);
        p.place(&rec("a", "never"), Stage::RequestReceived, &push);
        p.place(&rec("a", "too-many"), Stage::RequestReceived, &push);
        assert_eq!(m.records_unplaced.get(), 1, "over max_pending: the oldest waiting goes");
        p.nodes().set("a", "never", "node-2");
        p.nodes().set("a", "later", "node-3");
        let t0 = Instant::now();
        p.recheck(t0, &push);
        p.recheck(t0 + Duration::from_secs(31), &push);
        let got = out.lock().unwrap().clone();
        assert_eq!(
            got.iter().map(|(a, n)| (a.as_str(), &**n)).collect::<Vec<_>>(),
            vec![("a/known", "node-1"), ("a/never", "node-2")],
        );
        assert_eq!(m.records_unplaced.get(), 2, "a/too-many was never seen: counted after pending_for");
    }

    #[tokio::test]
    async fn only_an_agents_token_bound_to_a_node_proves_that_node() {
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let c = calls.clone();
        let review: ReviewFn = Arc::new(move |t: String| {
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Box::pin(async move {
                let sa = |u: &str, node: Option<&str>| Reviewed {
                    authenticated: true,
                    audiences: vec![AUDIENCE.into()],
                    username: u.into(),
                    node: node.map(Into::into),
                    error: None,
                };
                Ok(match t.as_str() {
                    "agent-a" => sa("system:serviceaccount:podtrail:podtrail-agent", Some("node-a")),
                    "other-sa" => sa("system:serviceaccount:default:default", Some("node-a")),
                    "no-node" => sa("system:serviceaccount:podtrail:podtrail-agent", None),
                    _ => Reviewed { authenticated: false, error: Some("invalid".into()), ..sa("", None) },
                })
            })
        });
        let r = TokenReviewer::new(
            review,
            vec!["system:serviceaccount:podtrail:podtrail-agent".into()],
            Duration::from_secs(60),
        );
        assert_eq!(&*r.node_of(Some("agent-a")).await.unwrap(), "node-a");
        assert_eq!(&*r.node_of(Some("agent-a")).await.unwrap(), "node-a");
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1, "cached");
        assert_eq!(r.node_of(Some("other-sa")).await.unwrap_err().reason(), "token_not_agent");
        assert_eq!(r.node_of(Some("no-node")).await.unwrap_err().reason(), "token_no_node");
        assert_eq!(r.node_of(Some("forged")).await.unwrap_err().reason(), "token_invalid");
        assert_eq!(r.node_of(None).await.unwrap_err().reason(), "token_missing");
    }
}
