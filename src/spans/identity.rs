//! The "who" of a session as the span builder needs it: the subset of
//! `crate::attribute::Attribution` that becomes span attributes, plus how the hold stage asks
//! for it ([`Attributor`]).
//!
//! In: an `Attribution` (or nothing: the session is exported unattributed, which is a finding
//! in itself). Out: [`SessionIdentity`], made safe to write by [`SessionIdentity::sanitize`]
//! (secrets redacted, client-chosen strings capped with a mark). Nothing is dropped.

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
    /// Audit `user.extra` as `key=value`, one per value, in key order (the cloud identity
    /// behind a user: an EKS `arn`, GKE's, the token's credential id).
    pub user_extra: Vec<String>,
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
    /// Values of `requested_command` and `user_agent` replaced by redaction tokens.
    pub redacted: u32,
    /// Client-chosen fields cut to `spans.attribute_max_bytes` (or argv's cap, for the command).
    pub truncated: u32,
    /// The record came from a client that proved no identity (an unverified admission
    /// webhook): `podtrail.attribution.verified=false` on every span.
    pub unverified: bool,
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
            user_extra: a.user_extra.iter().flat_map(|(k, vs)| vs.iter().map(move |v| format!("{k}={v}"))).collect(),
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
            redacted: 0,
            truncated: 0,
            unverified: !a.verified,
        }
    }
}

/// The mark a cut string ends with.
pub const CUT_MARK: char = '…';

/// Cuts `s` to at most `max` bytes on a character boundary, plus [`CUT_MARK`]; true if cut.
pub fn cap_string(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push(CUT_MARK);
    true
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes()
            .enumerate()
            .all(|(i, b)| if matches!(i, 8 | 13 | 18 | 23) { b == b'-' } else { b.is_ascii_hexdigit() })
}

impl SessionIdentity {
    /// Makes the identity safe to write: the requested command and the user agent redacted
    /// (`crate::redact`), and every string a client chose capped: the command like argv, the
    /// others at `cfg.attribute_max_bytes`. An audit id that is not a UUID keeps its first
    /// bytes and a hash of the whole (so two long ids stay apart); the trace id was derived
    /// from the whole id before this. Counts what it changed in `redacted` and `truncated`.
    pub fn sanitize(&mut self, redactor: &crate::redact::Redactor, cfg: &super::SpansConfig) {
        let max = cfg.attribute_max_bytes.max(16);
        self.redacted += redactor.strings(&mut self.requested_command);
        for e in self.user_extra.iter_mut() {
            // `key=value`: the key is an authenticator's name, never a secret (a name like
            // `.../credential-id` must not read as a password's); its value is what a token or
            // a URL with a password could hide in. A credential id (`X509SHA256=...`, a
            // fingerprint Kubernetes puts in audit events for this very use) stays.
            let Some((k, v)) = e.split_once('=') else { continue };
            let mut v = v.to_owned();
            let n = redactor.string(&mut v);
            if n > 0 {
                *e = format!("{k}={v}");
                self.redacted += n;
            }
        }
        if let Some(ua) = self.user_agent.as_mut() {
            self.redacted += redactor.string(ua);
        }
        // like argv: whole arguments while they fit, the first one cut if it alone is too long
        let mut used = 0usize;
        if let Some(keep) = self.requested_command.iter().position(|a| {
            used += a.len();
            used > cfg.argv_max_bytes
        }) {
            self.requested_command.truncate(keep.max(1));
            if keep == 0 {
                cap_string(&mut self.requested_command[0], cfg.argv_max_bytes);
            }
            self.truncated += 1;
        }
        if let Some(id) = self.audit_id.as_mut().filter(|id| !is_uuid(id) && id.len() > 64) {
            use sha2::{Digest, Sha256};
            let h = hex::encode(&Sha256::digest(id.as_bytes())[..8]);
            cap_string(id, 40);
            id.push_str(&h);
            self.truncated += 1;
        }
        for f in [
            &mut self.user_name,
            &mut self.user_uid,
            &mut self.impersonated_name,
            &mut self.client_address,
            &mut self.user_agent,
            &mut self.container,
        ]
        .into_iter()
        .flatten()
        {
            self.truncated += u32::from(cap_string(f, max));
        }
        for groups in [&mut self.user_groups, &mut self.impersonated_groups, &mut self.user_extra] {
            if groups.len() > 64 {
                groups.truncate(64);
                groups.push(CUT_MARK.to_string());
                self.truncated += 1;
            }
            for g in groups.iter_mut() {
                self.truncated += u32::from(cap_string(g, max));
            }
        }
    }

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

    /// The identity a request exported on its own (from [`Attributor::unmatched_requests`])
    /// carries; an attributor that sanitizes identities sanitizes this one too.
    fn identity_of(&self, a: &Attribution) -> SessionIdentity {
        SessionIdentity::from(a)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_extra_keeps_credential_ids_and_redacts_secrets_in_values() {
        let mut w = SessionIdentity {
            user_extra: vec![
                "authentication.kubernetes.io/credential-id=X509SHA256=2f1c0e9b7a".into(),
                "example.com/session=Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl".into(),
            ],
            ..Default::default()
        };
        w.sanitize(&redactor(), &Default::default());
        assert_eq!(w.user_extra[0], "authentication.kubernetes.io/credential-id=X509SHA256=2f1c0e9b7a");
        assert!(w.user_extra[1].starts_with("example.com/session=Bearer <redacted:"), "{:?}", w.user_extra);
        assert_eq!(w.redacted, 1);
    }

    fn redactor() -> crate::redact::Redactor {
        crate::redact::Redactor::new(&crate::redact::RedactConfig { key: "k".into(), ..Default::default() }).unwrap()
    }

    #[test]
    fn client_strings_are_capped_with_a_mark_and_secrets_redacted() {
        let cfg = crate::spans::SpansConfig::default();
        let long_id = "x".repeat(1 << 20);
        let mut w = SessionIdentity {
            audit_id: Some(long_id.clone()),
            user_agent: Some(format!("curl/8 {}", "u".repeat(5000))),
            requested_command: vec!["mysql".into(), "-pS3cret".into(), "y".repeat(4000)],
            user_groups: (0..100).map(|i| format!("g{i}")).collect(),
            ..Default::default()
        };
        w.sanitize(&redactor(), &cfg);
        let id = w.audit_id.as_deref().unwrap();
        assert!(id.len() < 80 && id.contains(CUT_MARK), "{id}");
        let mut other = SessionIdentity { audit_id: Some(format!("{long_id}z")), ..Default::default() };
        other.sanitize(&redactor(), &cfg);
        assert_ne!(other.audit_id.as_deref(), Some(id), "two long ids stay apart");
        assert!(w.user_agent.as_ref().unwrap().len() <= cfg.attribute_max_bytes + 3);
        assert_eq!(w.requested_command.len(), 2, "{:?}", w.requested_command);
        assert!(w.requested_command[1].starts_with("-p<redacted:"));
        assert_eq!(w.user_groups.len(), 65);
        assert_eq!((w.redacted, w.truncated), (1, 4));
        // a UUID and short strings are left alone
        let mut u =
            SessionIdentity { audit_id: Some("4b5f3c7e-8d2a-4f19-9c3e-2a1b0d9e8f70".into()), ..Default::default() };
        u.sanitize(&redactor(), &cfg);
        assert_eq!((u.audit_id.as_deref(), u.truncated), (Some("4b5f3c7e-8d2a-4f19-9c3e-2a1b0d9e8f70"), 0));
    }
}
