//! Pod metadata from the Kubernetes API: the pods of this node, by container id.
//!
//! In: a list/watch of `pods` with `spec.nodeName=<node>` (kube's watcher: it re-lists after a
//! `410 Gone` or a broken connection and backs off while the API server is away).
//! Out: a [`PodIndex`] from container id (as in `status.*ContainerStatuses[].containerID`,
//! without the `containerd://` scheme) to [`PodInfo`]: namespace, pod, uid, container, labels,
//! owning workload, node and the container's exec probe commands.
//! Dropped: nothing silently; pods whose containers have no id yet are indexed when a later
//! event brings one. A re-list replaces the whole index, so pods deleted while the watch was
//! down leave no stale mapping; a pod recreated under the same name (new uid) replaces the
//! old one's mappings even before the old one's delete is seen.
//! [`SessionFilter`] (`kube/filter.rs`) puts the index on the process stage's sessions.

use crate::model::command_matches;
use crate::model::{ContainerInfo, Text};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Container, ContainerStatus, EphemeralContainer, Pod, Probe};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

mod filter;
pub use filter::SessionFilter;

/// Which list of the pod spec a container comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerKind {
    Regular,
    Init,
    /// Added by `kubectl debug`.
    Ephemeral,
}

/// The controller that owns a pod, resolved one level further for ReplicaSets of Deployments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub kind: String,
    pub name: String,
}

/// What the process stage needs to know about a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub container_name: String,
    pub container_kind: ContainerKind,
    pub labels: BTreeMap<String, String>,
    pub workload: Option<Workload>,
    pub node_name: Option<String>,
    /// `containerStatuses[].image` and `.imageID` (empty until the kubelet reports them).
    pub image: String,
    pub image_id: String,
    /// Exec commands of this container's liveness, readiness and startup probes.
    pub probe_commands: Vec<Vec<String>>,
}

#[derive(Default)]
struct State {
    by_container: HashMap<String, PodInfo>,
    /// pod uid -> (namespace/name, container ids).
    by_pod: HashMap<String, (String, Vec<String>)>,
    /// pod uid -> the pod's own metadata (no container: [`PodIndex::by_pod_uid`]).
    pods: HashMap<String, PodInfo>,
}

/// Shared, cheap to clone; readers never wait for the API.
#[derive(Clone, Default)]
pub struct PodIndex {
    state: Arc<RwLock<State>>,
    relists: Arc<AtomicU64>,
    watch_errors: Arc<AtomicU64>,
    /// Bumped by every change: what a [`SessionFilter`] worked out for a session stands
    /// until the index (or the session's info) changes.
    generation: Arc<AtomicU64>,
}

/// `containerd://abc` -> `abc` (also `cri-o://`, `docker://`); a bare id is kept.
pub fn normalize_container_id(id: &str) -> &str {
    id.rsplit_once("://").map_or(id, |(_, rest)| rest)
}

impl PodIndex {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn by_container_id(&self, id: &str) -> Option<PodInfo> {
        self.read().by_container.get(normalize_container_id(id)).cloned()
    }

    /// The pod with this uid, without a container (`container_name`, image and probes empty).
    /// A pod is indexed from the moment it is bound to the node, before any of its containers
    /// starts; a container id is indexed only once the kubelet reports it in the pod's status,
    /// about a second after the start: a container that lives less than that is known by its
    /// pod alone while it runs (the pod uid comes from its cgroup path).
    pub fn by_pod_uid(&self, uid: &str) -> Option<PodInfo> {
        self.read().pods.get(uid).cloned()
    }

    /// Is `argv` one of the exec probe commands of this container?
    pub fn is_probe(&self, container_id: &str, argv: &[String]) -> bool {
        self.read()
            .by_container
            .get(normalize_container_id(container_id))
            .is_some_and(|info| info.probe_commands.iter().any(|p| command_matches(p, argv)))
    }

    /// Is this container (by id) an ephemeral one? None while no pod's status names it yet.
    pub fn is_ephemeral(&self, container_id: &str) -> Option<bool> {
        self.by_container_id(container_id).map(|p| p.container_kind == ContainerKind::Ephemeral)
    }

    /// Is this pod (by uid when given, else namespace/name) one of the indexed pods? The
    /// receiver stream asks it to keep only this node's records.
    pub fn has_pod(&self, namespace: &str, name: &str, uid: Option<&str>) -> bool {
        let st = self.read();
        if let Some(uid) = uid.filter(|u| !u.is_empty()) {
            return st.by_pod.contains_key(uid);
        }
        let key = format!("{namespace}/{name}");
        st.by_pod.values().any(|(k, _)| *k == key)
    }

    /// Containers indexed.
    pub fn len(&self) -> usize {
        self.read().by_container.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many times the full list was (re)loaded.
    pub fn relists(&self) -> u64 {
        self.relists.load(Ordering::Relaxed)
    }

    /// Errors the watch reported (expired versions, unreachable API server, bad responses).
    pub fn watch_errors(&self) -> u64 {
        self.watch_errors.load(Ordering::Relaxed)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        let st = self.state.write().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::Relaxed);
        st
    }

    /// Changes so far ([`Self::write`]).
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// A pod was added or changed.
    pub fn apply(&self, pod: &Pod) {
        let Some(uid) = pod.metadata.uid.clone() else { return };
        let (base, entries) = pod_entries(pod);
        let name_key = pod_key(pod);
        let mut st = self.write();
        // Same namespace/name under another uid: the old pod is gone even if its delete has
        // not reached us.
        let stale: Vec<String> =
            st.by_pod.iter().filter(|(u, (k, _))| **u != uid && *k == name_key).map(|(u, _)| u.clone()).collect();
        for u in stale {
            remove_pod(&mut st, &u);
        }
        remove_pod(&mut st, &uid);
        let ids: Vec<String> = entries.iter().map(|(id, _)| id.clone()).collect();
        for (id, info) in entries {
            st.by_container.insert(id, info);
        }
        if let Some(base) = base {
            st.pods.insert(uid.clone(), base);
        }
        st.by_pod.insert(uid, (name_key, ids));
    }

    pub fn delete(&self, pod: &Pod) {
        if let Some(uid) = pod.metadata.uid.as_deref() {
            remove_pod(&mut self.write(), uid);
        }
    }

    /// A complete list: whatever it does not contain is gone.
    pub fn replace_all(&self, pods: &[Pod]) {
        let fresh = PodIndex::new();
        for p in pods {
            fresh.apply(p);
        }
        let fresh_state = std::mem::take(&mut *fresh.write());
        *self.write() = fresh_state;
        self.relists.fetch_add(1, Ordering::Relaxed);
    }
}

fn remove_pod(st: &mut State, uid: &str) {
    st.pods.remove(uid);
    if let Some((_, ids)) = st.by_pod.remove(uid) {
        for id in ids {
            // Only if the id still belongs to this pod (ids are unique, but be exact).
            if st.by_container.get(&id).is_some_and(|i| i.pod_uid == uid) {
                st.by_container.remove(&id);
            }
        }
    }
}

fn pod_key(pod: &Pod) -> String {
    format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or(""), pod.metadata.name.as_deref().unwrap_or(""))
}

/// Owner of a pod: its controller reference, with a ReplicaSet named `<deployment>-<hash>`
/// (and the pod labelled `pod-template-hash=<hash>`) resolved to its Deployment.
pub fn workload(pod: &Pod) -> Option<Workload> {
    let refs = pod.metadata.owner_references.as_deref().unwrap_or_default();
    let owner = refs.iter().find(|r| r.controller == Some(true)).or_else(|| refs.first())?;
    let hash = pod.metadata.labels.as_ref().and_then(|l| l.get("pod-template-hash"));
    if owner.kind == "ReplicaSet" {
        if let Some(deploy) = hash.and_then(|h| owner.name.strip_suffix(&format!("-{h}"))) {
            if !deploy.is_empty() {
                return Some(Workload { kind: "Deployment".into(), name: deploy.to_owned() });
            }
        }
    }
    Some(Workload { kind: owner.kind.clone(), name: owner.name.clone() })
}

fn probe_exec(p: &Option<Probe>) -> Option<Vec<String>> {
    p.as_ref()?.exec.as_ref()?.command.clone().filter(|c| !c.is_empty())
}

fn probes(c: &Container) -> Vec<Vec<String>> {
    [&c.liveness_probe, &c.readiness_probe, &c.startup_probe].into_iter().filter_map(probe_exec).collect()
}

fn ephemeral_probes(c: &EphemeralContainer) -> Vec<Vec<String>> {
    [&c.liveness_probe, &c.readiness_probe, &c.startup_probe].into_iter().filter_map(probe_exec).collect()
}

/// The pod's own metadata (no container), and (container id, info) for every container of the
/// pod that has an id.
fn pod_entries(pod: &Pod) -> (Option<PodInfo>, Vec<(String, PodInfo)>) {
    let (Some(uid), Some(spec)) = (pod.metadata.uid.clone(), pod.spec.as_ref()) else { return (None, Vec::new()) };
    let mut probe_map: HashMap<&str, Vec<Vec<String>>> = HashMap::new();
    for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
        probe_map.insert(c.name.as_str(), probes(c));
    }
    for c in spec.ephemeral_containers.iter().flatten() {
        probe_map.insert(c.name.as_str(), ephemeral_probes(c));
    }
    let base = PodInfo {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        pod_name: pod.metadata.name.clone().unwrap_or_default(),
        pod_uid: uid,
        container_name: String::new(),
        container_kind: ContainerKind::Regular,
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        workload: workload(pod),
        node_name: spec.node_name.clone(),
        image: String::new(),
        image_id: String::new(),
        probe_commands: Vec::new(),
    };
    let Some(status) = pod.status.as_ref() else { return (Some(base), Vec::new()) };
    let lists: [(&Option<Vec<ContainerStatus>>, ContainerKind); 3] = [
        (&status.container_statuses, ContainerKind::Regular),
        (&status.init_container_statuses, ContainerKind::Init),
        (&status.ephemeral_container_statuses, ContainerKind::Ephemeral),
    ];
    let mut out = Vec::new();
    for (list, kind) in lists {
        for cs in list.iter().flatten() {
            let Some(id) = cs.container_id.as_deref().map(normalize_container_id).filter(|i| !i.is_empty()) else {
                continue;
            };
            let mut info = base.clone();
            info.container_name = cs.name.clone();
            info.container_kind = kind;
            info.image = cs.image.clone();
            info.image_id = cs.image_id.clone();
            info.probe_commands = probe_map.get(cs.name.as_str()).cloned().unwrap_or_default();
            out.push((id.to_owned(), info));
        }
    }
    (Some(base), out)
}

impl PodInfo {
    /// The API server's view of a container's pod, over whatever the runtime's labels said;
    /// of its labels, those named in `labels` (`kube.pod_labels`), in that order.
    pub fn apply_to(&self, c: &mut ContainerInfo, labels: &[String]) {
        // a value equal to the one `c` has keeps `c`'s string: an enriched copy shares the
        // process stage's text where the pod says the same (issue 15)
        // what a node's containers carry alike is one string for all (`Text::common`); the pod's
        // name and uid are its own
        let set = |d: &mut Option<Text>, v: &str, common: bool| {
            if d.as_deref() != Some(v) {
                *d = Some(if common { Text::common(v) } else { v.into() });
            }
        };
        let had = std::mem::take(&mut c.pod_labels);
        c.pod_labels = labels
            .iter()
            .filter_map(|k| {
                let v = self.labels.get(k)?;
                Some(match had.iter().find(|(hk, hv)| *hk == *k && *hv == *v) {
                    Some(same) => same.clone(),
                    None => (Text::common(k), Text::common(v)),
                })
            })
            .collect();
        set(&mut c.pod_namespace, &self.namespace, true);
        set(&mut c.pod_name, &self.pod_name, false);
        set(&mut c.pod_uid, &self.pod_uid, false);
        // empty for a pod known without this container ([`PodIndex::by_pod_uid`]): the
        // runtime's name, if any, stays
        if !self.container_name.is_empty() {
            set(&mut c.container_name, &self.container_name, true);
        }
        if let Some(w) = &self.workload {
            set(&mut c.workload_kind, &w.kind, true);
            set(&mut c.workload_name, &w.name, true);
        }
        if let Some(n) = &self.node_name {
            set(&mut c.node_name, n, true);
        }
        if !self.image.is_empty() {
            set(&mut c.image_name, &self.image, true);
        }
        if !self.image_id.is_empty() {
            set(&mut c.image_id, &self.image_id, true);
        }
        c.source = "kube_api";
    }
}

/// Keep `index` in step with the pods of `node_name` until `shutdown` completes. Errors
/// (watch expiry, API server restarts) are counted and retried with backoff; a re-list after
/// one replaces the index whole.
pub async fn watch_pods(client: kube::Client, node_name: &str, index: PodIndex, shutdown: impl Future<Output = ()>) {
    let api: Api<Pod> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
    let mut events = watcher(api, cfg).default_backoff().boxed();
    let mut buffer: Option<Vec<Pod>> = None;
    tokio::pin!(shutdown);
    loop {
        let ev = tokio::select! {
            _ = &mut shutdown => return,
            ev = events.next() => ev,
        };
        match ev {
            None => return,
            Some(Err(e)) => {
                index.watch_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "pod watch failed; retrying");
            }
            Some(Ok(Event::Init)) => buffer = Some(Vec::new()),
            Some(Ok(Event::InitApply(p))) => match buffer.as_mut() {
                Some(b) => b.push(p),
                None => index.apply(&p),
            },
            Some(Ok(Event::InitDone)) => index.replace_all(&buffer.take().unwrap_or_default()),
            Some(Ok(Event::Apply(p))) => index.apply(&p),
            Some(Ok(Event::Delete(p))) => index.delete(&p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn owned(kind: &str, name: &str, hash: Option<&str>) -> Pod {
        let mut p = Pod::default();
        p.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: "u".into(),
            controller: Some(true),
            ..Default::default()
        }]);
        p.metadata.labels = hash.map(|h| [("pod-template-hash".to_string(), h.to_string())].into());
        p
    }

    #[test]
    fn replicaset_resolves_to_its_deployment_only_by_the_hash_rule() {
        assert_eq!(workload(&owned("ReplicaSet", "api-6c4f8b9d7", Some("6c4f8b9d7"))).unwrap().kind, "Deployment");
        assert_eq!(workload(&owned("ReplicaSet", "api-6c4f8b9d7", Some("6c4f8b9d7"))).unwrap().name, "api");
        // A bare ReplicaSet (no matching hash label) stays a ReplicaSet.
        assert_eq!(
            workload(&owned("ReplicaSet", "batch-rs", None)).unwrap(),
            Workload { kind: "ReplicaSet".into(), name: "batch-rs".into() }
        );
        assert_eq!(workload(&owned("DaemonSet", "node-exporter", None)).unwrap().kind, "DaemonSet");
        assert_eq!(workload(&Pod::default()), None);
    }

    #[test]
    fn container_ids_lose_their_runtime_scheme() {
        assert_eq!(normalize_container_id("containerd://abc"), "abc");
        assert_eq!(normalize_container_id("cri-o://abc"), "abc");
        assert_eq!(normalize_container_id("abc"), "abc");
    }
}
