//! The "who" of a session as the span builder needs it: the subset of
//! `crate::attribute::Attribution` that becomes span attributes, plus how the hold stage asks
//! for it ([`Attributor`]).
//!
//! In: an `Attribution` (or nothing: the session is exported unattributed, which is a finding
//! in itself). Out: [`SessionIdentity`]. Nothing is dropped.

use std::time::{Duration, SystemTime};

use crate::attribute::Attribution;
use crate::model::SessionInfo;

/// Who opened a session, as span attributes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionIdentity {
    /// kernel_env, audit_webhook, audit_log, admission.
    pub source: &'static str,
    /// exact, unique, ambiguous.
    pub confidence: &'static str,
    pub candidates: u32,
    pub audit_id: Option<String>,
    pub trace_id: Option<[u8; 16]>,
    pub user_name: Option<String>,
    pub user_uid: Option<String>,
    pub user_groups: Vec<String>,
    pub impersonated_name: Option<String>,
    pub impersonated_groups: Vec<String>,
    pub client_address: Option<String>,
    pub user_agent: Option<String>,
    /// exec, attach, debug, port_forward.
    pub request_kind: &'static str,
    pub requested_command: Vec<String>,
    pub container: Option<String>,
    pub stdin: bool,
    pub tty: bool,
    pub request_started: Option<SystemTime>,
    pub request_completed: Option<SystemTime>,
    pub response_code: Option<u16>,
}

impl From<&Attribution> for SessionIdentity {
    fn from(a: &Attribution) -> Self {
        SessionIdentity {
            source: a.source.as_str(),
            confidence: a.confidence.as_str(),
            candidates: a.candidates,
            audit_id: a.audit_id.clone().or_else(|| a.admission_uid.clone()),
            trace_id: a.trace_id,
            user_name: a.user_name.clone(),
            user_uid: a.user_uid.clone(),
            user_groups: a.user_groups.clone(),
            impersonated_name: a.impersonated_name.clone(),
            impersonated_groups: a.impersonated_groups.clone(),
            client_address: a.client_address.clone(),
            user_agent: a.user_agent.clone(),
            request_kind: a.request_kind.as_str(),
            requested_command: a.requested_command.clone(),
            container: a.container.clone(),
            stdin: a.stdin,
            tty: a.tty,
            request_started: a.request_started,
            request_completed: a.request_completed,
            response_code: a.response_code,
        }
    }
}

impl SessionIdentity {
    /// The root span's name for this request kind.
    pub fn root_name(&self) -> &'static str {
        match self.request_kind {
            "attach" => "kubectl attach",
            "debug" => "kubectl debug",
            "port_forward" => "kubectl port-forward",
            _ => "kubectl exec",
        }
    }
}

/// What the hold stage asks, repeatedly until its deadline, for each held session.
/// Returning `None` means "not known yet"; after the deadline the session is exported
/// unattributed.
pub trait Attributor: Send + Sync {
    fn attribute(&self, info: &SessionInfo) -> Option<SessionIdentity>;

    /// Requests that never became a process session (attach, port-forward, denied execs,
    /// execs no session took) whose wait is over, each returned once: the export stage asks
    /// on its tick and exports each as a root span with no processes. `now` far in the
    /// future takes every one still waiting (shutdown). None by default.
    fn unmatched_requests(&self, _now: SystemTime) -> Vec<Attribution> {
        Vec::new()
    }

    /// A session already exported unattributed asks again: like [`Attributor::attribute`], but
    /// only records held for at least `settled` may answer, so that a record meant for a new
    /// session that is about to ask is not taken by an older one. By default, `attribute`.
    fn attribute_late(&self, info: &SessionInfo, _settled: Duration) -> Option<SessionIdentity> {
        self.attribute(info)
    }

    /// A number that changes whenever the answer to a late question could change (a record
    /// arrived); the hold stage asks its exported sessions again only then. None: unknown,
    /// ask on every tick.
    fn revision(&self) -> Option<u64> {
        None
    }
}

/// The attributor used until attribution is wired in: nobody, immediately.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoAttributor;

impl Attributor for NoAttributor {
    fn attribute(&self, _info: &SessionInfo) -> Option<SessionIdentity> {
        None
    }

    fn revision(&self) -> Option<u64> {
        Some(0) // nothing ever arrives
    }
}

impl<F> Attributor for F
where
    F: Fn(&SessionInfo) -> Option<SessionIdentity> + Send + Sync,
{
    fn attribute(&self, info: &SessionInfo) -> Option<SessionIdentity> {
        self(info)
    }
}
