//! Configuration of the span stage (`[spans]` in the config file). Defaults work on a laptop.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::scope::ScopeConfig;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpansConfig {
    /// `k8s.cluster.name` on the resource and on every span; empty to leave it out (it can also
    /// come from `OTEL_RESOURCE_ATTRIBUTES`).
    pub cluster_name: String,
    /// Total bytes of `process.command_args` per image; longer argv is cut at an argument
    /// boundary (or inside the first one) and marked. Kept below Tempo's 2048-byte attribute cap.
    pub argv_max_bytes: usize,
    /// Identical commands (same argv under the same parent span) exported one by one before
    /// the rest fold into one span carrying `podtrail.folded.count`.
    pub fold_after: u32,
    /// Spans per session (root excluded); the rest are counted on the root and not exported.
    pub max_spans_per_session: u32,
    /// Past `max_spans_per_session`, the spans that matter are still kept up to this many in
    /// all: a connect or other way out and the image that made it, an image of an executable
    /// the session had not run before (so a payload after thousands of decoys is kept). The
    /// rules stage also keeps spans that raised an alert, up to this minus the cap a session.
    /// At least `max_spans_per_session`.
    pub max_kept_spans_per_session: u32,
    /// Bytes of each client-chosen string on a span (audit ids that are not UUIDs, user agent,
    /// user, group and container names); longer ones are cut with a mark (`…`) and counted in
    /// `podtrail.k8s.fields_truncated`. The requested command is capped like argv.
    pub attribute_max_bytes: usize,
    /// The cluster's address ranges for `podtrail.network.destination.scope`.
    pub scope: ScopeConfig,
    /// How secrets in commands and URLs are replaced before anything leaves the agent.
    pub redact: crate::redact::RedactConfig,
    /// How long spans wait for attribution.
    pub hold: HoldConfig,
    /// Not a config key here: `[transcript]`, which the configuration applies (the span stage
    /// reads its namespace switch and line cap).
    #[serde(skip)]
    pub transcript: crate::process::transcript::TranscriptConfig,
}

impl Default for SpansConfig {
    fn default() -> Self {
        SpansConfig {
            cluster_name: String::new(),
            argv_max_bytes: 1024,
            fold_after: 20,
            max_spans_per_session: 10_000,
            max_kept_spans_per_session: 15_000,
            attribute_max_bytes: 256,
            scope: ScopeConfig::default(),
            redact: Default::default(),
            hold: HoldConfig::default(),
            transcript: Default::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HoldConfig {
    /// Longest a session's spans wait for its attribution, in milliseconds (0: no wait). Not a
    /// config key: the one setting is `attribution.hold_ms`, which the configuration applies
    /// here when an attribution source is configured (0 otherwise).
    #[serde(skip)]
    pub deadline_ms: u64,
    /// How often held sessions ask the attributor again, in milliseconds.
    pub poll_ms: u64,
    /// Sessions held at once; when full, the oldest is released unattributed (and counted).
    pub max_sessions: usize,
    /// How long a session exported unattributed keeps asking for a record that arrives late,
    /// in milliseconds (0: never); a match adds an `attribution` span to its trace. Default
    /// 15 minutes, the record store's retention.
    pub late_ms: u64,
    /// Sessions exported unattributed remembered at once for a late record; when full, the
    /// oldest is forgotten (counted in `podtrail_attribution_late_forgotten_total`).
    pub late_max_sessions: usize,
}

impl Default for HoldConfig {
    fn default() -> Self {
        HoldConfig {
            deadline_ms: 0,
            poll_ms: 250,
            max_sessions: 4096,
            late_ms: 15 * 60 * 1000,
            late_max_sessions: 10_000,
        }
    }
}

impl HoldConfig {
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }
    pub fn poll(&self) -> Duration {
        Duration::from_millis(self.poll_ms.max(10))
    }
    pub fn late(&self) -> Duration {
        Duration::from_millis(self.late_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_refused_and_defaults_fill_the_rest() {
        let c: SpansConfig =
            toml::from_str("cluster_name = \"prod\"\n[scope]\npod_cidrs = [\"10.244.0.0/16\"]\n").unwrap();
        assert_eq!(c.cluster_name, "prod");
        assert_eq!(c.argv_max_bytes, 1024);
        assert_eq!(c.scope.classify("10.244.1.1".parse().unwrap()), "pod");
        assert!(toml::from_str::<SpansConfig>("argv_max = 3").is_err());
        assert!(toml::from_str::<SpansConfig>("[scope]\npod_cidrs = [\"10.0.0.0\"]").is_err());
    }
}
