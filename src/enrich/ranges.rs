//! The cluster's own networks, learned from the Kubernetes API where it tells them, so that
//! `podtrail.network.destination.scope` and the outbound decision (issue 6) know what is
//! inside the cluster without every range being configured.
//!
//! In: list/watch of `nodes` (`spec.podCIDRs`, `spec.podCIDR`: pod ranges; `status.addresses`
//! of type InternalIP and ExternalIP: node addresses, as /32 or /128) and of
//! `networking.k8s.io/v1` `servicecidrs` (`spec.cidrs`: service ranges, GA in Kubernetes 1.33).
//! Where ServiceCIDRs are not served (404: an older cluster, or the API turned off), the
//! `default/kubernetes` Service's cluster IP (the first address of the service range) is taken
//! as a hint and a warning says to configure `[spans.scope] service_cidrs`.
//! Out: the union of what every object says, written into the [`LearnedRanges`] that every
//! clone of the `ScopeConfig` reads (process stage, span builder, rules); a log line per range
//! learned or forgotten; `podtrail_cluster_ranges{kind,source}`.
//! Dropped: values that do not parse as a range or an address (logged). kube's watcher
//! re-lists after a `410 Gone` or a broken connection and backs off while the API server is
//! away; a re-list replaces what the previous list said, so a node deleted meanwhile is
//! forgotten.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use prometheus_client::metrics::{family::Family, gauge::Gauge};

use crate::scope::{Cidr, LearnedRanges, RangeKind, ScopeConfig};

/// Where a known range comes from (the `source` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RangeSource {
    /// `[spans.scope]`.
    Config,
    /// Node objects: podCIDRs and addresses.
    Nodes,
    /// `networking.k8s.io/v1` ServiceCIDR objects.
    ServiceCidrs,
    /// The `default/kubernetes` Service's cluster IP, when ServiceCIDRs are not served.
    KubernetesService,
}

impl RangeSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RangeSource::Config => "config",
            RangeSource::Nodes => "nodes",
            RangeSource::ServiceCidrs => "service_cidrs",
            RangeSource::KubernetesService => "kubernetes_service",
        }
    }
}

/// One learned range and the object that told it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Learned {
    pub kind: RangeKind,
    pub cidr: Cidr,
    pub source: RangeSource,
    /// `node/<name>`, `servicecidr/<name>`, `service/default/kubernetes`.
    pub from: String,
}

type Labels = Vec<(&'static str, &'static str)>;

/// The (kind, source) pairs learning can fill, shown at 0 until it does.
const LEARNED_LABELS: [(RangeKind, RangeSource); 4] = [
    (RangeKind::Pod, RangeSource::Nodes),
    (RangeKind::Node, RangeSource::Nodes),
    (RangeKind::Service, RangeSource::ServiceCidrs),
    (RangeKind::Service, RangeSource::KubernetesService),
];

/// Log lines per change of the learned set; a first list of a large cluster says the rest in
/// one line.
const LOG_LINES: usize = 32;

#[derive(Default)]
struct State {
    nodes: BTreeMap<String, Vec<(RangeKind, Cidr)>>,
    service_cidrs: BTreeMap<String, Vec<Cidr>>,
    hint: Vec<Cidr>,
    published: BTreeSet<Learned>,
}

/// What the API said so far, by object, and the union it publishes. Shared, cheap to clone.
#[derive(Clone)]
pub struct RangeLearner {
    learned: LearnedRanges,
    state: Arc<Mutex<State>>,
    /// Ranges known, by kind (pod, service, node) and source (config and the learned ones).
    pub known: Family<Labels, Gauge>,
    relists: Arc<AtomicU64>,
    watch_errors: Arc<AtomicU64>,
}

impl RangeLearner {
    /// Publishes into `scope.learned`; counts `scope`'s configured ranges under `config`.
    pub fn new(scope: &ScopeConfig) -> Self {
        let known = Family::<Labels, Gauge>::default();
        for kind in RangeKind::ALL {
            let n = scope.configured(kind).iter().collect::<BTreeSet<_>>().len();
            known.get_or_create(&vec![("kind", kind.as_str()), ("source", "config")]).set(n as i64);
        }
        for (kind, source) in LEARNED_LABELS {
            known.get_or_create(&vec![("kind", kind.as_str()), ("source", source.as_str())]).set(0);
        }
        RangeLearner {
            learned: scope.learned.clone(),
            state: Default::default(),
            known,
            relists: Default::default(),
            watch_errors: Default::default(),
        }
    }

    /// Everything learned now.
    pub fn learned(&self) -> Vec<Learned> {
        self.lock().published.iter().cloned().collect()
    }

    /// How many ranges of this kind and source are known.
    pub fn known(&self, kind: RangeKind, source: RangeSource) -> i64 {
        self.known.get_or_create(&vec![("kind", kind.as_str()), ("source", source.as_str())]).get()
    }

    /// Full lists loaded (first lists and re-lists after expiry or an API restart).
    pub fn relists(&self) -> u64 {
        self.relists.load(Ordering::Relaxed)
    }

    /// Errors the watches reported (expired versions, unreachable API server, bad responses).
    pub fn watch_errors(&self) -> u64 {
        self.watch_errors.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn apply_node(&self, node: &Node) {
        let Some(name) = node.metadata.name.clone() else { return };
        let mut st = self.lock();
        st.nodes.insert(name, node_ranges(node));
        self.publish(&mut st);
    }

    pub fn delete_node(&self, node: &Node) {
        let mut st = self.lock();
        if let Some(name) = node.metadata.name.as_deref() {
            st.nodes.remove(name);
        }
        self.publish(&mut st);
    }

    /// A complete list: nodes it does not name are gone.
    pub fn replace_nodes(&self, nodes: &[Node]) {
        let mut st = self.lock();
        st.nodes =
            nodes.iter().filter_map(|n| Some((n.metadata.name.clone()?, node_ranges(n)))).collect::<BTreeMap<_, _>>();
        self.relists.fetch_add(1, Ordering::Relaxed);
        self.publish(&mut st);
    }

    pub fn apply_service_cidr(&self, s: &ServiceCIDR) {
        let Some(name) = s.metadata.name.clone() else { return };
        let mut st = self.lock();
        st.service_cidrs.insert(name, service_cidr_ranges(s));
        self.publish(&mut st);
    }

    pub fn delete_service_cidr(&self, s: &ServiceCIDR) {
        let mut st = self.lock();
        if let Some(name) = s.metadata.name.as_deref() {
            st.service_cidrs.remove(name);
        }
        self.publish(&mut st);
    }

    pub fn replace_service_cidrs(&self, list: &[ServiceCIDR]) {
        let mut st = self.lock();
        st.service_cidrs = list
            .iter()
            .filter_map(|s| Some((s.metadata.name.clone()?, service_cidr_ranges(s))))
            .collect::<BTreeMap<_, _>>();
        self.relists.fetch_add(1, Ordering::Relaxed);
        self.publish(&mut st);
    }

    /// The `default/kubernetes` Service's cluster IPs, as service addresses.
    pub fn set_service_hint(&self, ips: &[IpAddr]) {
        let mut st = self.lock();
        st.hint = ips.iter().map(|ip| Cidr::host(*ip)).collect();
        self.publish(&mut st);
    }

    fn publish(&self, st: &mut State) {
        let mut now = BTreeSet::new();
        for (name, ranges) in &st.nodes {
            for (kind, cidr) in ranges {
                now.insert(Learned {
                    kind: *kind,
                    cidr: *cidr,
                    source: RangeSource::Nodes,
                    from: format!("node/{name}"),
                });
            }
        }
        for (name, cidrs) in &st.service_cidrs {
            for cidr in cidrs {
                let from = format!("servicecidr/{name}");
                now.insert(Learned { kind: RangeKind::Service, cidr: *cidr, source: RangeSource::ServiceCidrs, from });
            }
        }
        for cidr in &st.hint {
            let (kind, source, from) =
                (RangeKind::Service, RangeSource::KubernetesService, "service/default/kubernetes".to_owned());
            now.insert(Learned { kind, cidr: *cidr, source, from });
        }
        if now == st.published {
            return;
        }
        let added: Vec<&Learned> = now.difference(&st.published).collect();
        let gone: Vec<&Learned> = st.published.difference(&now).collect();
        for l in added.iter().take(LOG_LINES) {
            tracing::info!(kind = l.kind.as_str(), range = %l.cidr, from = %l.from, "learned a cluster range");
        }
        for l in gone.iter().take(LOG_LINES) {
            tracing::info!(kind = l.kind.as_str(), range = %l.cidr, from = %l.from, "forgot a cluster range");
        }
        if added.len() + gone.len() > 2 * LOG_LINES {
            tracing::info!(
                learned = added.len(),
                forgotten = gone.len(),
                "cluster ranges changed (not every range logged)"
            );
        }
        self.learned.set(now.iter().map(|l| (l.kind, l.cidr)));
        for (kind, source) in LEARNED_LABELS {
            let n =
                now.iter().filter(|l| l.kind == kind && l.source == source).map(|l| l.cidr).collect::<BTreeSet<_>>();
            self.known.get_or_create(&vec![("kind", kind.as_str()), ("source", source.as_str())]).set(n.len() as i64);
        }
        st.published = now;
    }
}

fn parse_logged(what: &str, from: &str, value: &str) -> Option<Cidr> {
    let parsed = if value.contains('/') { value.parse().ok() } else { value.parse::<IpAddr>().ok().map(Cidr::host) };
    if parsed.is_none() {
        tracing::warn!(value, from, "ignoring a {what} that is not an address range");
    }
    parsed
}

/// A node's pod ranges and its InternalIP/ExternalIP addresses.
pub fn node_ranges(node: &Node) -> Vec<(RangeKind, Cidr)> {
    let from = node.metadata.name.as_deref().unwrap_or("");
    let mut out = Vec::new();
    if let Some(spec) = &node.spec {
        let pods = spec.pod_cidrs.iter().flatten().chain(spec.pod_cidr.iter());
        for c in pods.filter_map(|c| parse_logged("podCIDR", from, c)) {
            if !out.contains(&(RangeKind::Pod, c)) {
                out.push((RangeKind::Pod, c));
            }
        }
    }
    let addresses = node.status.iter().flat_map(|s| s.addresses.iter().flatten());
    for a in addresses.filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP") {
        let Ok(ip) = a.address.parse::<IpAddr>() else {
            tracing::warn!(value = %a.address, from, "ignoring a node address that is not an IP address");
            continue;
        };
        if !out.contains(&(RangeKind::Node, Cidr::host(ip))) {
            out.push((RangeKind::Node, Cidr::host(ip)));
        }
    }
    out
}

fn service_cidr_ranges(s: &ServiceCIDR) -> Vec<Cidr> {
    let from = s.metadata.name.as_deref().unwrap_or("");
    s.spec.iter().flat_map(|s| s.cidrs.iter().flatten()).filter_map(|c| parse_logged("service CIDR", from, c)).collect()
}

/// A watch's events, with the first list (and every re-list) gathered into one.
enum Change<K> {
    Apply(K),
    Delete(K),
    Replace(Vec<K>),
}

/// Follows `api` until the stream ends or `stop(error)` says an error is final (returned).
async fn follow<K>(
    api: Api<K>,
    what: &'static str,
    learner: &RangeLearner,
    stop: impl Fn(&watcher::Error) -> bool,
    mut change: impl FnMut(Change<K>),
) -> Option<watcher::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + Debug + Send + 'static,
{
    let mut events = watcher(api, watcher::Config::default()).default_backoff().boxed();
    let mut buffer: Option<Vec<K>> = None;
    while let Some(ev) = events.next().await {
        match ev {
            Err(e) if stop(&e) => return Some(e),
            Err(e) => {
                learner.watch_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "{what} watch failed; retrying");
            }
            Ok(Event::Init) => buffer = Some(Vec::new()),
            Ok(Event::InitApply(o)) => match buffer.as_mut() {
                Some(b) => b.push(o),
                None => change(Change::Apply(o)),
            },
            Ok(Event::InitDone) => change(Change::Replace(buffer.take().unwrap_or_default())),
            Ok(Event::Apply(o)) => change(Change::Apply(o)),
            Ok(Event::Delete(o)) => change(Change::Delete(o)),
        }
    }
    None
}

fn not_found(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::InitialListFailed(kube::Error::Api(s)) if s.code == 404)
}

/// Pod ranges and node addresses from every Node.
pub async fn watch_nodes(client: kube::Client, learner: RangeLearner) {
    follow(
        Api::<Node>::all(client),
        "node",
        &learner,
        |_| false,
        |c| match c {
            Change::Apply(n) => learner.apply_node(&n),
            Change::Delete(n) => learner.delete_node(&n),
            Change::Replace(all) => learner.replace_nodes(&all),
        },
    )
    .await;
}

/// Service ranges from ServiceCIDRs, or the hint when the API server does not serve them.
pub async fn watch_service_cidrs(client: kube::Client, learner: RangeLearner) {
    let api = Api::<ServiceCIDR>::all(client.clone());
    let Some(e) = follow(api, "servicecidr", &learner, not_found, |c| match c {
        Change::Apply(s) => learner.apply_service_cidr(&s),
        Change::Delete(s) => learner.delete_service_cidr(&s),
        Change::Replace(all) => learner.replace_service_cidrs(&all),
    })
    .await
    else {
        return;
    };
    tracing::warn!(error = %e, "this API server does not serve networking.k8s.io/v1 ServiceCIDRs (Kubernetes before 1.33, or the API is off): the service range cannot be learned; set [spans.scope] service_cidrs to the cluster's --service-cluster-ip-range. Until then only the default/kubernetes Service's address counts as a service address");
    let services = Api::<Service>::namespaced(client, "default");
    let mut warned = false;
    loop {
        match services.get("kubernetes").await {
            Ok(svc) => {
                let spec = svc.spec.unwrap_or_default();
                let ips: Vec<IpAddr> = spec
                    .cluster_ips
                    .unwrap_or_default()
                    .iter()
                    .chain(spec.cluster_ip.iter())
                    .filter_map(|ip| ip.parse().ok())
                    .collect();
                tracing::info!(addresses = ?ips, "service address hint from default/kubernetes");
                learner.set_service_hint(&ips);
                return;
            }
            Err(e) => {
                learner.watch_errors.fetch_add(1, Ordering::Relaxed);
                if !warned {
                    tracing::warn!(error = %e, "cannot read the default/kubernetes Service (RBAC: get on services named kubernetes); retrying");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }
    }
}

/// Keep `learner` in step with the API until `shutdown` completes.
pub async fn learn(client: kube::Client, learner: RangeLearner, shutdown: impl std::future::Future<Output = ()>) {
    let watches = async {
        tokio::join!(watch_nodes(client.clone(), learner.clone()), watch_service_cidrs(client, learner.clone()))
    };
    tokio::select! {
        _ = shutdown => {}
        _ = watches => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, pod_cidrs: &[&str], addresses: &[(&str, &str)]) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"podCIDR": pod_cidrs.first(), "podCIDRs": pod_cidrs},
            "status": {"addresses": addresses.iter().map(|(t, a)| serde_json::json!({"type": t, "address": a})).collect::<Vec<_>>()}
        }))
        .unwrap()
    }

    #[test]
    fn a_node_tells_its_pod_ranges_and_internal_and_external_addresses_only() {
        let n = node(
            "n1",
            &["10.244.1.0/24", "fd00:10:244:1::/64"],
            &[
                ("InternalIP", "192.168.49.2"),
                ("ExternalIP", "2001:db8::2"),
                ("Hostname", "n1"),
                ("InternalDNS", "n1.internal"),
            ],
        );
        let got: Vec<String> = node_ranges(&n).iter().map(|(k, c)| format!("{} {c}", k.as_str())).collect();
        assert_eq!(
            got,
            ["pod 10.244.1.0/24", "pod fd00:10:244:1::/64", "node 192.168.49.2/32", "node 2001:db8::2/128"]
        );
        assert!(node_ranges(&node("bad", &["10.244.x/24"], &[("InternalIP", "nope")])).is_empty());
    }

    #[test]
    fn learning_is_a_union_by_object_and_forgets_what_a_relist_no_longer_names() {
        let scope = ScopeConfig { service_cidrs: vec!["10.96.0.0/12".parse().unwrap()], ..Default::default() };
        let l = RangeLearner::new(&scope);
        assert_eq!(l.known(RangeKind::Service, RangeSource::Config), 1);
        l.apply_node(&node("n1", &["10.244.1.0/24"], &[("InternalIP", "192.168.49.2")]));
        l.apply_node(&node("n2", &["10.244.2.0/24"], &[("InternalIP", "192.168.49.3")]));
        assert_eq!(scope.classify("10.244.2.7".parse().unwrap()), "pod");
        assert_eq!((l.known(RangeKind::Pod, RangeSource::Nodes), l.known(RangeKind::Node, RangeSource::Nodes)), (2, 2));
        l.replace_nodes(&[node("n2", &["10.244.2.0/24"], &[("InternalIP", "192.168.49.3")])]);
        assert_eq!(scope.classify("10.244.1.7".parse().unwrap()), "private", "n1 is gone");
        assert_eq!(scope.classify("10.244.2.7".parse().unwrap()), "pod");
        l.set_service_hint(&["10.96.0.1".parse().unwrap()]);
        assert_eq!(l.known(RangeKind::Service, RangeSource::KubernetesService), 1);
        assert_eq!(l.learned().iter().filter(|x| x.from == "service/default/kubernetes").count(), 1);
    }
}
