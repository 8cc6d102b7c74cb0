//! Secrets leave nothing past the span stage's input: every update is redacted as it arrives
//! ([`redact_update`]) and every identity as the attributor hands it over ([`Sanitizing`]), so
//! the hold, the rules and every sink see only tokens (`crate::redact`).
//!
//! In: `SessionUpdate`s, identities. Out: the same with argv values and client strings
//! replaced by keyed tokens and capped. Dropped: nothing; each replacement is counted on its
//! image (`argv_redacted`) or identity.

use std::sync::Arc;
use std::time::SystemTime;

use super::identity::Attributor;
use crate::model::SessionUpdate;

/// The redactor for this run: the configured key, or (none configured, or the key file gone
/// since the configuration was checked) a random one, said once in the log. Never the key.
pub fn build_redactor(cfg: &crate::redact::RedactConfig) -> crate::redact::Redactor {
    use crate::redact::{KeySource, Redactor};
    let r = Redactor::new(cfg).unwrap_or_else(|e| {
        tracing::error!("{e}: secrets are redacted under a random key for this run instead");
        Redactor::random()
    });
    match r.source {
        KeySource::Random => tracing::warn!(
            "spans.redact: no key configured, secrets are redacted under a random key for this run (one secret gives one token only within this run; set spans.redact.key_file to the cluster's key)"
        ),
        KeySource::Config | KeySource::File => {
            tracing::info!(source = ?r.source, "spans.redact: secrets are redacted under the configured key")
        }
    }
    r
}

/// Replaces the secrets in the argv of every process record of an update, counting them on
/// the image. The root's `root_argv` stays as the kernel saw it: it is only compared with the
/// API request's command (itself redacted after the match) and never written.
pub fn redact_update(r: &crate::redact::Redactor, u: &mut SessionUpdate) {
    let recs: &mut [crate::model::ProcessRecord] = match u {
        SessionUpdate::Started(_) => return,
        SessionUpdate::ProcessEnded(_, rec) | SessionUpdate::Live(_, rec, _) => std::slice::from_mut(rec),
        SessionUpdate::Ended(_, recs) => recs,
        SessionUpdate::Transcript(_, chunk) => {
            // a line is redacted as one argv element: the flag rules on its words, then the
            // text patterns (`export DB_PASSWORD=x`, `mysql -pX`, a Bearer token)
            for l in &mut chunk.lines {
                l.redacted += r.argv(std::slice::from_mut(&mut l.text));
            }
            return;
        }
    };
    for rec in recs {
        for img in &mut rec.images {
            img.argv_redacted += r.argv(&mut img.argv);
        }
    }
}

/// The attributor as the span stage sees it: every identity redacted and capped
/// ([`super::SessionIdentity::sanitize`]) before any span, rule or log reads it.
pub struct Sanitizing {
    pub inner: Arc<dyn Attributor>,
    pub redactor: Arc<crate::redact::Redactor>,
    pub cfg: super::SpansConfig,
}

impl Sanitizing {
    fn clean(&self, mut w: super::SessionIdentity) -> super::SessionIdentity {
        w.sanitize(&self.redactor, &self.cfg);
        w
    }
}

impl Attributor for Sanitizing {
    fn attribute(&self, info: &crate::model::SessionInfo) -> Option<super::SessionIdentity> {
        self.inner.attribute(info).map(|w| self.clean(w))
    }
    fn unmatched_requests(&self, now: SystemTime) -> Vec<crate::attribute::Attribution> {
        self.inner.unmatched_requests(now)
    }
    fn attribute_late(
        &self,
        info: &crate::model::SessionInfo,
        settled: std::time::Duration,
    ) -> Option<super::SessionIdentity> {
        self.inner.attribute_late(info, settled).map(|w| self.clean(w))
    }
    fn revision(&self) -> Option<u64> {
        self.inner.revision()
    }
    fn identity_of(&self, a: &crate::attribute::Attribution) -> super::SessionIdentity {
        self.clean(super::SessionIdentity::from(a))
    }
}
