//! Standalone container metadata from containerd's API socket: the labels kubelet sets on
//! each container (pod name, namespace, uid, container name) and the task's init pid.
//!
//! In: container ids (from cgroup paths). Out: [`ContainerMeta`] per id. Only two RPCs are
//! used, `Containers.Get` and `Tasks.Get`, so the messages are written here by hand with
//! prost derives (fields we do not read are skipped by the decoder) instead of generating the
//! whole containerd API. `containerd-client` 0.9 would match our tonic/prost 0.14, but it needs
//! `protoc` at build time and brings every containerd service. Dropped: nothing is retried;
//! an id containerd does not know (another runtime, a container already gone) resolves to
//! nothing, and the caller keeps the cgroup-derived identity.

use std::{
    collections::HashMap,
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::net::UnixStream;
use tonic::{
    codegen::http::uri::PathAndQuery,
    transport::{Channel, Endpoint, Uri},
};

use crate::model::{ContainerInfo, Text};

pub const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";
/// kubelet's namespace first, then `ctr`'s default.
pub const DEFAULT_NAMESPACES: &[&str] = &["k8s.io", "default"];

pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// containerd.services.containers.v1.Container (the fields podtrail reads).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Container {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(map = "string, string", tag = "2")]
    pub labels: HashMap<String, String>,
    #[prost(string, tag = "3")]
    pub image: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetContainerRequest {
    #[prost(string, tag = "1")]
    pub id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetContainerResponse {
    #[prost(message, optional, tag = "1")]
    pub container: Option<Container>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListContainersRequest {
    #[prost(string, repeated, tag = "1")]
    pub filters: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListContainersResponse {
    #[prost(message, repeated, tag = "1")]
    pub containers: Vec<Container>,
}

/// containerd.services.tasks.v1.GetRequest
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetTaskRequest {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(string, tag = "2")]
    pub exec_id: String,
}

/// containerd.v1.types.Process (the fields podtrail reads).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TaskProcess {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(string, tag = "2")]
    pub id: String,
    #[prost(uint32, tag = "3")]
    pub pid: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetTaskResponse {
    #[prost(message, optional, tag = "1")]
    pub process: Option<TaskProcess>,
}

#[derive(Debug, Error)]
pub enum ContainerdError {
    #[error("cannot connect to containerd at {path}: {source}")]
    Connect { path: String, source: tonic::transport::Error },
    #[error("containerd call {method} failed: {status}")]
    Call { method: &'static str, status: tonic::Status },
}

/// What containerd says about one container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerMeta {
    pub id: String,
    pub namespace: String,
    pub labels: HashMap<String, String>,
    /// The image reference the container was created from (`docker.io/library/busybox:1.36`).
    pub image: String,
    /// The task's init pid (host pid namespace), when the task is running.
    pub init_pid: Option<u32>,
}

impl ContainerMeta {
    /// Fill pod identity from the kubelet labels into `info` (keeping what is already there
    /// when a label is absent).
    pub fn apply(&self, info: &mut ContainerInfo) {
        let l = |k: &str| self.labels.get(k).filter(|v| !v.is_empty()).map(Text::from);
        // what a node's containers carry alike is one string for all (`Text::common`)
        let common = |k: &str| self.labels.get(k).filter(|v| !v.is_empty()).map(|v| Text::common(v));
        if let (Some(path), Some(label)) = (info.pod_uid.as_deref(), l(LABEL_POD_UID)) {
            if path != label.as_str() {
                // a cgroup made inside a container and named after another pod's container
                // id (`process::cgroup::container_from_path`): that container's labels are not
                // this cgroup's
                tracing::warn!(
                    container = %self.id, cgroup_pod_uid = %path, label_pod_uid = %label,
                    "containerd's labels name another pod than the cgroup path: not taken"
                );
                return;
            }
        }
        let before = info.clone();
        info.pod_name = l(LABEL_POD_NAME).or(before.pod_name);
        info.pod_namespace = common(LABEL_POD_NAMESPACE).or(before.pod_namespace);
        info.pod_uid = l(LABEL_POD_UID).or(before.pod_uid);
        info.container_name = common(LABEL_CONTAINER_NAME).or(before.container_name);
        if !self.image.is_empty() && info.image_name.is_none() {
            info.image_name = Some(Text::common(&self.image));
        }
        if l(LABEL_POD_NAME).is_some() && info.source != "kube_api" {
            info.source = "containerd_labels";
        }
    }
}

/// A tower connector for a unix socket (tonic dials it whatever the URI says).
#[derive(Clone)]
struct UnixConnector(PathBuf);

impl tower_service::Service<Uri> for UnixConnector {
    type Response = TokioIo<UnixStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move { Ok(TokioIo::new(UnixStream::connect(path).await?)) })
    }
}

/// A client for the two containerd calls podtrail needs.
#[derive(Clone)]
pub struct ContainerdClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl ContainerdClient {
    /// Connects lazily: the socket is dialled on the first call, so a containerd that starts
    /// later is still found.
    pub fn new(socket: &Path) -> Result<Self, ContainerdError> {
        let path = socket.display().to_string();
        let channel = Endpoint::from_static("http://containerd.sock")
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect_with_connector_lazy(UnixConnector(socket.to_path_buf()));
        let _ = path;
        Ok(ContainerdClient { grpc: tonic::client::Grpc::new(channel) })
    }

    async fn unary<Req, Resp>(&mut self, ns: &str, method: &'static str, req: Req) -> Result<Resp, ContainerdError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let call = |status| ContainerdError::Call { method, status };
        self.grpc.ready().await.map_err(|e| call(tonic::Status::unavailable(e.to_string())))?;
        let mut r = tonic::Request::new(req);
        let ns = ns.parse().map_err(|_| call(tonic::Status::invalid_argument("bad namespace")))?;
        r.metadata_mut().insert("containerd-namespace", ns);
        let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
        let resp = self.grpc.unary(r, PathAndQuery::from_static(method), codec).await.map_err(call)?;
        Ok(resp.into_inner())
    }

    /// Containers.Get; None when the namespace does not have it.
    pub async fn get(&mut self, ns: &str, id: &str) -> Result<Option<Container>, ContainerdError> {
        let req = GetContainerRequest { id: id.into() };
        match self.unary::<_, GetContainerResponse>(ns, "/containerd.services.containers.v1.Containers/Get", req).await
        {
            Ok(r) => Ok(r.container),
            Err(ContainerdError::Call { status, .. }) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Containers.List of a namespace.
    pub async fn list(&mut self, ns: &str) -> Result<Vec<Container>, ContainerdError> {
        let req = ListContainersRequest { filters: vec![] };
        let r: ListContainersResponse =
            self.unary(ns, "/containerd.services.containers.v1.Containers/List", req).await?;
        Ok(r.containers)
    }

    /// Tasks.Get: the init pid of a running task; None when there is no task.
    pub async fn task_pid(&mut self, ns: &str, id: &str) -> Result<Option<u32>, ContainerdError> {
        let req = GetTaskRequest { container_id: id.into(), exec_id: String::new() };
        match self.unary::<_, GetTaskResponse>(ns, "/containerd.services.tasks.v1.Tasks/Get", req).await {
            Ok(r) => Ok(r.process.map(|p| p.pid).filter(|p| *p != 0)),
            Err(ContainerdError::Call { status, .. }) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Look a container up in each namespace in turn.
    pub async fn meta(&mut self, namespaces: &[String], id: &str) -> Result<Option<ContainerMeta>, ContainerdError> {
        for ns in namespaces {
            if let Some(c) = self.get(ns, id).await? {
                let init_pid = self.task_pid(ns, id).await.unwrap_or(None);
                return Ok(Some(ContainerMeta {
                    id: c.id,
                    namespace: ns.clone(),
                    labels: c.labels,
                    image: c.image,
                    init_pid,
                }));
            }
        }
        Ok(None)
    }
}

/// The init pid from the runtime's state directory, without the API:
/// `<state>/io.containerd.runtime.v2.task/<ns>/<id>/init.pid`.
pub fn init_pid_from_state(state_dirs: &[PathBuf], namespaces: &[String], id: &str) -> Option<u32> {
    if id.contains('/') || id.starts_with('.') {
        return None;
    }
    for dir in state_dirs {
        for ns in namespaces {
            let p = dir.join("io.containerd.runtime.v2.task").join(ns).join(id).join("init.pid");
            if let Ok(s) = std::fs::read_to_string(&p) {
                if let Ok(pid) = s.trim().parse() {
                    return Some(pid);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn labels_fill_pod_identity() {
        let mut labels = HashMap::new();
        labels.insert(LABEL_POD_NAME.to_string(), "web-0".to_string());
        labels.insert(LABEL_POD_NAMESPACE.to_string(), "billing".to_string());
        labels.insert(LABEL_CONTAINER_NAME.to_string(), "app".to_string());
        let meta = ContainerMeta {
            id: "c1".into(),
            labels,
            image: "docker.io/library/busybox:1.36".into(),
            ..Default::default()
        };
        let mut info =
            ContainerInfo { id: "c1".into(), pod_uid: Some("u-1".into()), source: "cgroup", ..Default::default() };
        meta.apply(&mut info);
        assert_eq!(info.image_name.as_deref(), Some("docker.io/library/busybox:1.36"));
        assert_eq!(info.pod_name.as_deref(), Some("web-0"));
        assert_eq!(info.pod_namespace.as_deref(), Some("billing"));
        assert_eq!(info.container_name.as_deref(), Some("app"));
        assert_eq!(info.pod_uid.as_deref(), Some("u-1"), "kept from the cgroup path");
        assert_eq!(info.source, "containerd_labels");
        // labels of a container of another pod (a cgroup named after its id, made inside a
        // container of pod u-1): nothing taken
        let mut other = ContainerMeta { labels: meta.labels.clone(), ..Default::default() };
        other.labels.insert(LABEL_POD_UID.into(), "u-9".into());
        other.labels.insert(LABEL_POD_NAME.into(), "victim".into());
        let mut forged =
            ContainerInfo { id: "c1".into(), pod_uid: Some("u-1".into()), source: "cgroup", ..Default::default() };
        other.apply(&mut forged);
        assert_eq!((forged.pod_name, forged.pod_uid.as_deref(), forged.source), (None, Some("u-1"), "cgroup"));
    }

    #[test]
    fn container_message_skips_fields_we_do_not_model() {
        // a Container with a runtime (tag 4, message) and created_at (tag 8) we do not read
        let mut buf = Vec::new();
        Container { id: "abc".into(), labels: HashMap::from([("k".into(), "v".into())]), image: String::new() }
            .encode(&mut buf)
            .unwrap();
        buf.extend_from_slice(&[0x22, 0x04, 0x0a, 0x02, b'r', b'c', 0x42, 0x02, 0x08, 0x01]);
        let c = Container::decode(buf.as_slice()).unwrap();
        assert_eq!(c.id, "abc");
        assert_eq!(c.labels.get("k").map(String::as_str), Some("v"));
    }

    #[test]
    fn init_pid_file_in_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("io.containerd.runtime.v2.task/default/web");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("init.pid"), "4242").unwrap();
        let ns = vec!["k8s.io".to_string(), "default".to_string()];
        assert_eq!(init_pid_from_state(&[dir.path().to_path_buf()], &ns, "web"), Some(4242));
        assert_eq!(init_pid_from_state(&[dir.path().to_path_buf()], &ns, "../web"), None);
        assert_eq!(init_pid_from_state(&[dir.path().to_path_buf()], &ns, "other"), None);
    }
}
