//! The matching rules between a session seen by the kernel and a request seen by the API
//! server, as pure functions.
//!
//! In: a [`SessionQuery`] and a [`RequestRecord`]. Out: whether they can be the same exec.
//! Nothing is dropped or counted here; the store decides among candidates.

use super::record::RequestRecord;
use super::{RequestKind, SessionQuery};
use crate::model::command_matches;
use std::time::Duration;

/// Same pod: by uid when both sides know it, else by namespace and name.
pub fn pod_matches(q: &SessionQuery, r: &RequestRecord) -> bool {
    if let (Some(a), Some(b)) = (q.pod_uid.as_deref(), r.pod_uid.as_deref()) {
        return a == b;
    }
    match (q.pod_namespace.as_deref(), q.pod_name.as_deref(), r.namespace.as_deref(), r.pod_name.as_deref()) {
        (Some(qn), Some(qp), Some(rn), Some(rp)) => qn == rn && qp == rp,
        _ => false,
    }
}

/// Same container: a request without `container=` targets the pod's only container, and a
/// session whose container name is unknown accepts any.
pub fn container_matches(q: &SessionQuery, r: &RequestRecord) -> bool {
    match (q.container_name.as_deref(), r.options.container.as_deref()) {
        (Some(qc), Some(rc)) => qc == rc,
        _ => true,
    }
}

/// Request time and session start within `window` of each other, either way (audit clocks
/// and node clocks differ; the request normally comes first).
pub fn time_matches(q: &SessionQuery, r: &RequestRecord, window: Duration) -> bool {
    let Some(t) = r.request_time() else { return false };
    let d = match q.started_at.duration_since(t) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    d <= window
}

/// Can this request have started this session, ignoring time? Exec requests are compared by
/// command; a debug (ephemeral container) request by the new container's name when the audit
/// policy logged it; an attach only when it targets the session's container (the attach
/// `kubectl debug -it` makes to its ephemeral container).
pub fn request_fits(q: &SessionQuery, r: &RequestRecord) -> bool {
    if r.denied() || !pod_matches(q, r) {
        return false;
    }
    match r.kind {
        RequestKind::Exec => container_matches(q, r) && command_matches(&r.options.command, &q.argv),
        RequestKind::Debug => match q.container_name.as_deref() {
            Some(c) => {
                r.options.ephemeral_containers.is_empty() || r.options.ephemeral_containers.iter().any(|e| e == c)
            }
            None => false,
        },
        RequestKind::Attach => q.container_name.is_some() && container_matches(q, r),
        RequestKind::PortForward => false,
    }
}

/// Order of preference among kinds when several fit: an exec names its command and is the
/// strongest evidence; a debug write names the new container; an attach only a container.
pub fn kind_rank(k: RequestKind) -> u8 {
    match k {
        RequestKind::Exec => 0,
        RequestKind::Debug => 1,
        RequestKind::Attach => 2,
        RequestKind::PortForward => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn identical_command_matches() {
        assert!(command_matches(&v(&["sh", "-c", "echo hi"]), &v(&["sh", "-c", "echo hi"])));
    }

    #[test]
    fn argv0_matches_by_basename() {
        assert!(command_matches(&v(&["sh"]), &v(&["/bin/sh"])));
        assert!(command_matches(&v(&["/usr/bin/tar", "cf", "-"]), &v(&["tar", "cf", "-"])));
        assert!(!command_matches(&v(&["sh"]), &v(&["/bin/bash"])));
    }

    #[test]
    fn different_arguments_do_not_match() {
        assert!(!command_matches(&v(&["sh", "-c", "echo hi"]), &v(&["sh", "-c", "echo bye"])));
        assert!(!command_matches(&v(&["ls"]), &v(&["ls", "-la"])));
        assert!(!command_matches(&[], &v(&["ls"])));
        assert!(!command_matches(&v(&["ls"]), &[]));
    }

    #[test]
    fn script_matches_through_its_interpreter() {
        let req = v(&["./backup.sh", "--full"]);
        assert!(command_matches(&req, &v(&["/bin/sh", "./backup.sh", "--full"])));
        // runc resolved the script through PATH: the kernel shows the resolved path.
        assert!(command_matches(&v(&["backup.sh"]), &v(&["/bin/bash", "/usr/local/bin/backup.sh"])));
        // `#!/usr/bin/env bash` adds the interpreter's argument.
        assert!(command_matches(&req, &v(&["/usr/bin/env", "bash", "./backup.sh", "--full"])));
        assert!(!command_matches(&req, &v(&["/bin/sh", "./restore.sh", "--full"])));
        assert!(!command_matches(&req, &v(&["/bin/sh", "./backup.sh"])));
    }
}
