//! One API request as podtrail keeps it, whatever source described it.
//!
//! In: the pieces [`super::audit`] and [`super::admission`] parse out of their wire formats.
//! Out: [`RequestRecord`], merged stage by stage in the store, turned into an
//! [`super::Attribution`] when a session matches it or when it is exported on its own.
//! Nothing is dropped here.

use super::{Attribution, AttributionSource, Confidence, RequestKind};
use std::collections::BTreeMap;
use std::time::SystemTime;

/// The user identity as the API server authenticated it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    pub name: Option<String>,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// What an exec/attach/port-forward/debug request asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestOptions {
    pub command: Vec<String>,
    /// `container=` (the first one when it repeats, as the API server's conversion does); `None` when the
    /// request left it to the single container of the pod.
    pub container: Option<String>,
    /// Containers a `pods/ephemeralcontainers` write names (only when the audit policy logs the
    /// request body); empty otherwise.
    pub ephemeral_containers: Vec<String>,
    pub stdin: bool,
    pub tty: bool,
    pub ports: Vec<u16>,
}

/// One request, merged over the stages seen so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    pub audit_id: String,
    pub source: AttributionSource,
    pub kind: RequestKind,
    pub namespace: Option<String>,
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
    pub options: RequestOptions,
    pub user: Identity,
    pub impersonated: Option<Identity>,
    pub source_ips: Vec<String>,
    pub user_agent: Option<String>,
    /// `requestReceivedTimestamp` (or, for admission, when podtrail received the review).
    pub received: Option<SystemTime>,
    /// Stage time of `ResponseStarted` (the stream upgraded: the session started).
    pub started: Option<SystemTime>,
    /// Stage time of `ResponseComplete`.
    pub completed: Option<SystemTime>,
    pub response_code: Option<u16>,
    /// Bit per [`super::audit::Stage`] seen.
    pub stages: u8,
    /// Taken from a client that proved no identity (an admission webhook without client
    /// authentication: a managed cluster's API server presents none). Never matched above
    /// `ambiguous`, and any verified record that fits wins over it.
    pub unverified: bool,
}

impl RequestRecord {
    /// An audited exec request with this id and nothing else known: the base the unit tests
    /// build their records from.
    #[cfg(test)]
    pub(crate) fn test_exec(audit_id: &str) -> Self {
        RequestRecord {
            audit_id: audit_id.into(),
            source: super::AttributionSource::AuditWebhook,
            kind: super::RequestKind::Exec,
            namespace: None,
            pod_name: None,
            pod_uid: None,
            options: Default::default(),
            user: Default::default(),
            impersonated: None,
            source_ips: vec![],
            user_agent: None,
            received: None,
            started: None,
            completed: None,
            response_code: None,
            stages: 1,
            unverified: false,
        }
    }
}

impl RequestRecord {
    /// A request the API server refused (or that failed) never ran a process.
    pub fn denied(&self) -> bool {
        if self.started.is_some() {
            return false;
        }
        matches!(self.response_code, Some(c) if c >= 400)
    }

    /// The time the request is matched against a session start.
    pub fn request_time(&self) -> Option<SystemTime> {
        self.received.or(self.started).or(self.completed)
    }

    /// Fold a later stage of the same request into this record. Fields set by the earlier
    /// stage are kept; a later stage fills what is missing and brings its own time and code.
    pub fn merge(&mut self, other: RequestRecord) {
        self.stages |= other.stages;
        // Verified once any stage is (the dedupe key keeps sources apart, so this is one
        // request's stages from one source).
        self.unverified &= other.unverified;
        fill(&mut self.namespace, other.namespace);
        fill(&mut self.pod_name, other.pod_name);
        fill(&mut self.pod_uid, other.pod_uid);
        fill(&mut self.user_agent, other.user_agent);
        fill(&mut self.received, other.received);
        fill(&mut self.started, other.started);
        fill(&mut self.completed, other.completed);
        if self.impersonated.is_none() {
            self.impersonated = other.impersonated;
        }
        if self.user.name.is_none() {
            self.user = other.user;
        }
        if self.source_ips.is_empty() {
            self.source_ips = other.source_ips;
        }
        if self.options.command.is_empty() && self.options.container.is_none() {
            self.options = other.options;
        } else if self.options.ephemeral_containers.is_empty() {
            self.options.ephemeral_containers = other.options.ephemeral_containers;
        }
        // ResponseComplete's code is the final word (a 101 upgrade, or the 403 of a denial).
        if other.response_code.is_some() && (other.completed.is_some() || self.response_code.is_none()) {
            self.response_code = other.response_code;
        }
    }

    /// The span-ready view of this record.
    pub fn to_attribution(
        &self,
        source: AttributionSource,
        confidence: Confidence,
        candidates: u32,
        trace_id: Option<[u8; 16]>,
    ) -> Attribution {
        let imp = self.impersonated.clone().unwrap_or_default();
        Attribution {
            source,
            confidence,
            candidates,
            audit_id: Some(self.audit_id.clone()),
            admission_uid: None,
            trace_id,
            user_name: self.user.name.clone(),
            user_uid: self.user.uid.clone(),
            user_groups: self.user.groups.clone(),
            user_extra: self.user.extra.clone(),
            impersonated_name: imp.name,
            impersonated_groups: imp.groups,
            client_address: self.source_ips.last().cloned(),
            source_ips: self.source_ips.clone(),
            user_agent: self.user_agent.clone(),
            request_kind: self.kind,
            requested_command: self.options.command.clone(),
            container: self.options.container.clone(),
            stdin: self.options.stdin,
            tty: self.options.tty,
            ports: self.options.ports.clone(),
            pod_namespace: self.namespace.clone(),
            pod_name: self.pod_name.clone(),
            pod_uid: self.pod_uid.clone(),
            request_started: self.received.or(self.started),
            request_completed: self.completed,
            response_code: self.response_code,
            verified: !self.unverified,
        }
    }
}

fn fill<T>(slot: &mut Option<T>, other: Option<T>) {
    if slot.is_none() {
        *slot = other;
    }
}
