//! The session filter: between the process and span stages, in a cluster, puts the pod
//! index's metadata on each session's container and marks the sessions that look like exec
//! probes.
//!
//! In: `SessionUpdate`s from the process stage; the [`PodIndex`] kept by [`super::watch_pods`].
//! Out: the same updates, their container enriched (one shared copy per container) and
//! `SessionInfo::probe` set. Dropped: nothing (the span stage decides what a marked session
//! becomes); probes are counted once per session.

use std::collections::HashMap;
use std::sync::Arc;

use super::{PodIndex, PodInfo};
use crate::model::{ContainerInfo, SessionId, SessionUpdate, Text};

/// Between the process and span stages, in a cluster: puts the pod index's metadata on every
/// update of a session whose container it knows (or, until the kubelet reports a new
/// container's id, whose pod it knows by the uid of the container's cgroup path), and marks the sessions that look like exec
/// probes (a root whose argv is one of its container's probe commands; `SessionInfo::probe`)
/// unless `export_probes`. The span stage drops a marked session only when nothing else
/// explains it: no API request matched within the hold and no terminal (a `kubectl exec` of
/// the probe's command is still a session). Counted here once per session (`probes`), and
/// by outcome in the span stage (`podtrail_probe_sessions_total`).
pub struct SessionFilter {
    index: PodIndex,
    export_probes: bool,
    /// `kube.pod_labels`: the pod labels put on the sessions' spans.
    pod_labels: Vec<String>,
    /// Decided sessions: whether a probe, and the info last passed on.
    seen: HashMap<SessionId, Seen>,
    /// Enriched containers by container id (SipHash: `ctr` users name their containers), so
    /// the sessions of one container share one, as they share the process stage's.
    enriched: HashMap<Text, Enriched>,
    /// `enriched`'s size after its last sweep.
    swept: usize,
    pub probes: prometheus_client::metrics::counter::Counter,
    /// Sessions of a pod container (a pod uid in its cgroup path) whose pod the index did not
    /// know when the session was first seen: their spans lack the pod's metadata until the
    /// index learns it (the pod watch lagging behind the kubelet).
    pub pods_unknown: prometheus_client::metrics::counter::Counter,
    /// Sessions whose container id the pod status gives a pod other than the one its cgroup
    /// path names (a cgroup made from inside a container to borrow another's identity): the
    /// pod is not taken.
    pub pods_mismatched: prometheus_client::metrics::counter::Counter,
}

/// A container as [`SessionFilter`] passed it on: worked out from the process stage's `from`
/// (weak, as [`Seen::from`]) at pod index generation `generation`.
struct Enriched {
    from: std::sync::Weak<ContainerInfo>,
    to: Arc<ContainerInfo>,
    generation: u64,
}

impl SessionFilter {
    pub fn new(index: PodIndex, export_probes: bool) -> Self {
        SessionFilter {
            index,
            export_probes,
            pod_labels: Vec::new(),
            seen: HashMap::new(),
            enriched: HashMap::new(),
            swept: 0,
            probes: Default::default(),
            pods_unknown: Default::default(),
            pods_mismatched: Default::default(),
        }
    }

    /// Puts these pod labels (by key) on the sessions' containers.
    pub fn with_pod_labels(mut self, keys: Vec<String>) -> Self {
        self.pod_labels = keys;
        self
    }

    /// The update to pass on, enriched and marked when it looks like a probe's. The info is
    /// shared (one per session and change): it is worked out again only when the process
    /// stage's info or the pod index changed, and copied only when that changes something.
    pub fn pass(&mut self, mut u: SessionUpdate) -> Option<SessionUpdate> {
        let end = matches!(u, SessionUpdate::Ended(..));
        let generation = self.index.generation();
        let info = u.info_mut();
        let id = info.id;
        let known = self.seen.get(&id);
        match known.filter(|s| s.generation == generation && std::ptr::eq(s.from.as_ptr(), Arc::as_ptr(info))) {
            Some(s) => *info = s.to.clone(),
            None => {
                // the pod status's pod for this container id, unless the cgroup path names
                // another pod: a container id is only a directory name below the kubelet's
                // pod directory, and one made from inside a container (privileged, or with
                // its cgroup delegated) may copy another pod's container id
                let by_container = self.index.by_container_id(&info.container.id).filter(|p| {
                    let path_uid = info.container.pod_uid.as_deref();
                    let agrees = path_uid.is_none_or(|u| u == p.pod_uid);
                    if !agrees && known.is_none() {
                        self.pods_mismatched.inc();
                        tracing::warn!(
                            container = %info.container.id, path_pod_uid = ?path_uid, status_pod_uid = %p.pod_uid,
                            "a container id the pod status gives another pod: its pod is not taken"
                        );
                    }
                    agrees
                });
                let known_container = by_container.is_some();
                // a container the kubelet has not reported yet (it started less than about a
                // second ago, maybe already gone): its pod, by the uid of its cgroup path
                let pod =
                    by_container.or_else(|| info.container.pod_uid.as_deref().and_then(|u| self.index.by_pod_uid(u)));
                let probe = match known {
                    Some(s) => s.probe,
                    None => {
                        if pod.is_none() && info.container.pod_uid.is_some() {
                            self.pods_unknown.inc();
                            tracing::debug!(
                                container = %info.container.id, pod_uid = ?info.container.pod_uid,
                                "session of a pod container the pod index does not know (yet)"
                            );
                        }
                        let argv: Vec<String> = info.root_argv.iter().map(|a| crate::text::escape(a)).collect();
                        let probe = known_container && self.index.is_probe(&info.container.id, &argv);
                        if probe {
                            self.probes.inc();
                        }
                        probe
                    }
                };
                let from = Arc::downgrade(info);
                let marked = probe && !self.export_probes;
                if info.probe != marked {
                    Arc::make_mut(info).probe = marked;
                }
                if let Some(p) = pod {
                    let c = self.enriched(&info.container, &p, generation);
                    if !Arc::ptr_eq(&c, &info.container) {
                        Arc::make_mut(info).container = c;
                    }
                }
                self.seen.insert(id, Seen { probe, from, to: info.clone(), generation });
            }
        }
        if end {
            self.seen.remove(&id);
        }
        Some(u)
    }
}

impl SessionFilter {
    /// `c` with pod `p`'s metadata: `c` itself when that changes nothing, else one shared copy
    /// per container, worked out again when the process stage's container or the pod index
    /// changes.
    fn enriched(&mut self, c: &Arc<ContainerInfo>, p: &PodInfo, generation: u64) -> Arc<ContainerInfo> {
        if let Some(e) = self.enriched.get(c.id.as_str()) {
            if e.generation == generation && std::ptr::eq(e.from.as_ptr(), Arc::as_ptr(c)) {
                return e.to.clone();
            }
        }
        let mut n = ContainerInfo::clone(c);
        p.apply_to(&mut n, &self.pod_labels);
        let to = if n == **c { c.clone() } else { Arc::new(n) };
        if self.enriched.len() >= (2 * self.swept).max(64) {
            // bounded by the containers whose sessions are open: one no session holds goes
            self.enriched.retain(|_, e| Arc::strong_count(&e.to) > 1);
            self.swept = self.enriched.len();
        }
        self.enriched.insert(c.id.clone(), Enriched { from: Arc::downgrade(c), to: to.clone(), generation });
        to
    }
}

/// What [`SessionFilter`] decided for a session.
struct Seen {
    probe: bool,
    /// The process stage's info it was worked out from (weak: never keeps it alive, and its
    /// place is not reused while this is held), and the info passed on.
    from: std::sync::Weak<crate::model::SessionInfo>,
    to: Arc<crate::model::SessionInfo>,
    /// [`PodIndex::generation`] then.
    generation: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    fn probed_pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "api-7d9c", "namespace": "billing", "uid": "u-1",
                "labels": {"app": "api", "team": "payments", "app.kubernetes.io/name": "billing-api"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "api",
                "livenessProbe": {"exec": {"command": ["cat", "/tmp/healthy"]}}}]},
            "status": {"containerStatuses": [{"name": "api", "containerID": "containerd://c1",
                "image": "registry.example/billing/api:1.4", "ready": true, "restartCount": 0,
                "imageID": "registry.example/billing/api@sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}]}
        }))
        .unwrap()
    }

    fn session(pid: u32, argv: &[&str]) -> crate::model::SessionInfo {
        use crate::model::*;
        SessionInfo {
            root_argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
            ..SessionInfo::new(
                SessionId(crate::capture::event::ProcessKey { pid, start_ns: pid as u64 }),
                SessionKind::Exec,
                ContainerInfo { id: "c1".into(), source: "cgroup", ..Default::default() },
                1,
            )
        }
    }

    #[test]
    fn only_the_configured_pod_labels_reach_the_session_in_their_order() {
        let index = PodIndex::new();
        index.apply(&probed_pod());
        let keys = ["app.kubernetes.io/name", "app", "absent"].map(String::from).to_vec();
        let mut f = SessionFilter::new(index.clone(), false).with_pod_labels(keys);
        let Some(SessionUpdate::Started(i)) = f.pass(SessionUpdate::Started(session(11, &["sh"]).into())) else {
            panic!("passes")
        };
        let want = [("app.kubernetes.io/name", "billing-api"), ("app", "api")];
        let got: Vec<(&str, &str)> = i.container.pod_labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, want, "`team` is not asked for, `absent` not on the pod");
        let mut none = SessionFilter::new(index, false);
        let Some(SessionUpdate::Started(i)) = none.pass(SessionUpdate::Started(session(12, &["sh"]).into())) else {
            panic!("passes")
        };
        assert!(i.container.pod_labels.is_empty(), "{:?}", i.container.pod_labels);
    }

    #[test]
    fn probe_sessions_are_marked_and_counted_once_and_others_get_the_pod() {
        let index = PodIndex::new();
        index.apply(&probed_pod());
        let mut f = SessionFilter::new(index, false);
        let probe = session(10, &["/bin/cat", "/tmp/healthy"]);
        let marked = |u: Option<SessionUpdate>| match u {
            Some(u) => u.info().probe,
            None => panic!("the filter passes every update on; the span stage decides"),
        };
        assert!(marked(f.pass(SessionUpdate::Started(probe.clone().into()))));
        assert!(marked(f.pass(SessionUpdate::Ended(probe.into(), vec![]))));
        assert_eq!(f.probes.get(), 1);
        let Some(SessionUpdate::Started(i)) =
            f.pass(SessionUpdate::Started(session(11, &["sh", "-c", "cat /tmp/healthy"]).into()))
        else {
            panic!("a user's exec passes")
        };
        assert!(!i.probe);
        assert_eq!(
            (i.container.pod_namespace.as_deref(), i.container.pod_name.as_deref()),
            (Some("billing"), Some("api-7d9c"))
        );
        assert_eq!((i.container.container_name.as_deref(), i.container.source), (Some("api"), "kube_api"));
        // the image as the kubelet reports it: container.image.name / .id on the spans
        assert_eq!(i.container.image_name.as_deref(), Some("registry.example/billing/api:1.4"));
        assert!(
            i.container.image_id.as_deref().is_some_and(
                |id| id.ends_with("@sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")
            )
        );
        let mut keep = SessionFilter::new(PodIndex::new(), false);
        assert!(
            keep.pass(SessionUpdate::Started(session(12, &["cat", "/tmp/healthy"]).into())).is_some(),
            "unknown pod: no probe"
        );
        let mut all = SessionFilter::new(f.index.clone(), true);
        assert!(!marked(all.pass(SessionUpdate::Started(session(13, &["cat", "/tmp/healthy"]).into()))));
        assert_eq!(all.probes.get(), 1, "exported on request, still counted");
    }

    /// A container that runs and exits before the kubelet reports its id (`timeout 5 tcpdump`
    /// failing at once in a pod): its sessions get its pod by the uid of its cgroup path.
    #[test]
    fn a_container_not_in_the_pod_status_yet_gets_its_pod_by_uid() {
        use crate::model::*;
        let index = PodIndex::new();
        let mut pod = probed_pod();
        pod.status = None; // bound to the node, nothing started yet
        index.apply(&pod);
        let mut f = SessionFilter::new(index.clone(), false).with_pod_labels(vec!["app".into()]);
        let c = |id: &str, uid: &str| ContainerInfo {
            id: id.into(),
            pod_uid: Some(uid.into()),
            container_name: Some("api".into()), // containerd's label, when it answered in time
            source: "cgroup",
            ..Default::default()
        };
        let run = |f: &mut SessionFilter, pid: u32, c: ContainerInfo| {
            let i = SessionInfo { container: Arc::new(c), ..session(pid, &["tcpdump"]) };
            match f.pass(SessionUpdate::Started(i.into())) {
                Some(SessionUpdate::Started(i)) => i.container.clone(),
                _ => panic!("passes"),
            }
        };
        let early = run(&mut f, 11, c("c9", "u-1"));
        assert_eq!(
            (early.pod_namespace.as_deref(), early.pod_name.as_deref(), early.container_name.as_deref()),
            (Some("billing"), Some("api-7d9c"), Some("api")),
            "the pod's metadata; the runtime's container name stays"
        );
        assert_eq!(early.pod_labels, vec![(Text::from("app"), Text::from("api"))]);
        assert_eq!(early.image_name, None, "the image is the container's: not known yet");
        assert_eq!(f.pods_unknown.get(), 0);
        // once the status names it, the container's own entry
        index.apply(&probed_pod());
        let known = run(&mut f, 12, ContainerInfo { container_name: None, ..c("c1", "u-1") });
        assert_eq!(known.image_name.as_deref(), Some("registry.example/billing/api:1.4"));
        // a pod the index does not know: nothing to add, counted once per session
        let unknown = run(&mut f, 13, c("c7", "u-2"));
        assert_eq!(unknown.pod_name, None);
        assert_eq!(f.pods_unknown.get(), 1);
        // the pod deleted: gone by uid too
        index.delete(&probed_pod());
        assert!(index.by_pod_uid("u-1").is_none());
    }

    /// A cgroup made from inside a container, named after another pod's container id: the
    /// status's pod for that id is not taken when the path names another pod.
    #[test]
    fn a_container_id_under_another_pods_cgroup_does_not_borrow_its_pod() {
        use crate::model::*;
        let index = PodIndex::new();
        index.apply(&probed_pod()); // u-1, container c1
        let mut f = SessionFilter::new(index, false);
        let run = |f: &mut SessionFilter, pid: u32, uid: Option<&str>| {
            let c =
                ContainerInfo { id: "c1".into(), pod_uid: uid.map(Text::from), source: "cgroup", ..Default::default() };
            let i = SessionInfo { container: Arc::new(c), ..session(pid, &["sh"]) };
            match f.pass(SessionUpdate::Started(i.into())) {
                Some(SessionUpdate::Started(i)) => i.container.clone(),
                _ => panic!("passes"),
            }
        };
        assert_eq!(run(&mut f, 11, Some("u-9")).pod_name, None, "another pod's directory: not u-1's pod");
        assert_eq!(f.pods_mismatched.get(), 1);
        assert_eq!(run(&mut f, 12, Some("u-1")).pod_name.as_deref(), Some("api-7d9c"));
        assert_eq!(
            run(&mut f, 13, None).pod_name.as_deref(),
            Some("api-7d9c"),
            "no uid in the path: the status decides"
        );
        assert_eq!(f.pods_mismatched.get(), 1);
    }

    #[test]
    fn the_sessions_of_one_container_share_its_enriched_info_until_the_pod_changes() {
        let index = PodIndex::new();
        index.apply(&probed_pod());
        let mut f = SessionFilter::new(index.clone(), false).with_pod_labels(vec!["app".into()]);
        // the process stage hands the container's sessions one container info
        let shared = Arc::new(session(1, &["sh"]).container.as_ref().clone());
        let mut pass = |pid: u32| {
            let i = crate::model::SessionInfo { container: shared.clone(), ..session(pid, &["sh"]) };
            match f.pass(SessionUpdate::Started(i.into())) {
                Some(SessionUpdate::Started(i)) => i.container.clone(),
                _ => panic!("passes"),
            }
        };
        let (a, b) = (pass(11), pass(12));
        assert_eq!((a.pod_name.as_deref(), a.pod_labels[0].1.as_str()), (Some("api-7d9c"), "api"));
        assert!(Arc::ptr_eq(&a, &b), "one enriched copy for the container's sessions");
        let mut relabelled = probed_pod();
        relabelled.metadata.labels.get_or_insert_default().insert("app".into(), "api-v2".into());
        index.apply(&relabelled);
        let c = pass(13);
        assert_eq!(
            c.pod_labels,
            vec![(Text::from("app"), Text::from("api-v2"))],
            "the pod's change reaches new sessions"
        );
        assert!(std::ptr::eq(c.id.as_ptr(), shared.id.as_ptr()), "the copy shares the text it did not change");
        assert_eq!(a.pod_labels[0].1, "api", "what went before is left as it was");
        assert_eq!(shared.pod_name, None, "and so is the process stage's own copy");
    }
}
