//! Activity outside exec sessions (issue 6): what the process stage records besides
//! sessions, chosen by a scope.
//!
//! In: the tracker's view of an exec (its executable, its container, whether it is already in
//! a session). Out: a decision to open a trace of its own, in the same model as sessions
//! (`SessionKind::Watched`: the run of a watched executable and its descendants, on the host
//! or in any container). Nothing is dropped here.
//!
//! What is recorded: the watch list (`tcpdump`, `tshark`, `nsenter`, `nc`, ...), in every
//! scope but `sessions`; outbound connects ([`Outbound`]): a connect by a container process
//! outside every session to a destination whose scope is listed in `outbound_scopes`
//! (`external` by default: `private` is RFC 1918/CGNAT/link-local/ULA outside the cluster
//! ranges, which on most clusters is the VPC or the cluster itself when its ranges are neither
//! configured nor learned from the API; add it once `[spans.scope]` names or learns them, to
//! see cloud metadata and VPC peers). The ranges are read per connect, so what the API
//! watches learn (`enrich::ranges`) applies to the next connect. UDP counts only once it
//! carried data. Repeats by one process image to one destination within `fold_window_ms` are
//! one record with a count; a token bucket per container (`rate_per_s`, `burst`) limits new
//! records, and what it suppresses is counted ([`Outbound::suppressed`]) and marked on that
//! container's next record, or, when no record follows within a fold window (or before the
//! agent stops), on a mark-only record (count 0) of its own: every connect counted here ends
//! up in exactly one exported count or mark (proved end to end by tests/e2e_flood.rs).
//! Process trees (`containers`: every tree a container starts after its init, kind
//! `workload`; `all`: also the host's own, kind `host`): an exec by a process in no session
//! roots a trace that its descendants join, as an exec session's do; the container's init
//! never does (it is the workload itself: its connects stay outbound records). A watched
//! executable run inside such a tree still gets a trace of its own, so "every tcpdump" is one
//! query whatever the scope.
//!
//! Here: the scope and its configuration; [`outbound`]: the folding, rate limiting and marking
//! of outbound connects.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

mod outbound;
pub use outbound::Outbound;

/// How much is recorded beside exec sessions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivityScope {
    /// Exec sessions only.
    Sessions,
    /// Sessions, plus the rules: watched executables anywhere, outbound connects from
    /// containers to outside the cluster.
    #[default]
    Default,
    /// Also every process tree a container starts after its init.
    Containers,
    /// Also the host's own processes.
    All,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActivityConfig {
    /// `sessions`, `default`, `containers` or `all`.
    pub scope: ActivityScope,
    /// Executables whose every run is recorded, wherever it happens: matched against the
    /// basename of the executable the kernel ran and of argv[0] (busybox applets, symlinks),
    /// and by content: a copy under another name is the same tool (its digest is learned from
    /// the first run of the name, or from the bin directories of each new mount namespace).
    pub watch: Vec<String>,
    /// sha256 digests (hex) of more binaries to treat as a watched tool, by tool name:
    /// `{ tcpdump = ["<64 hex digits>", ...] }`. With any configured, every distinct binary
    /// run is hashed once (up to `hash_max_mib`).
    pub watch_sha256: std::collections::BTreeMap<String, Vec<String>>,
    /// Binaries larger than this (MiB) are not hashed to be identified.
    pub hash_max_mib: u64,
    /// Destination scopes (`podtrail.network.destination.scope`) whose connects from a
    /// container process outside any session are recorded, each as a trace of kind
    /// `outbound`: any of `external`, `private`, `node`, `service`, `pod`, `loopback`.
    pub outbound_scopes: Vec<String>,
    /// Milliseconds over which repeats (one process image, one destination) fold into one
    /// record with a count; 0: no folding, every connect is a record of its own (still
    /// subject to the rate limit).
    pub fold_window_ms: u64,
    /// New outbound records per container per second (token bucket refill; 0: no limit).
    pub rate_per_s: u32,
    /// Records a container may make at once before the rate applies.
    pub burst: u32,
    /// The cluster's ranges, a clone of `[spans.scope]` made when the config is validated
    /// (sharing its learned ranges).
    #[serde(skip)]
    pub ranges: crate::scope::ScopeConfig,
}

/// Destination scopes `outbound_scopes` may name.
pub const DESTINATION_SCOPES: &[&str] = &["external", "private", "node", "service", "pod", "loopback"];

impl Default for ActivityConfig {
    fn default() -> Self {
        ActivityConfig {
            scope: ActivityScope::Default,
            watch: ["tcpdump", "tshark", "dumpcap", "nsenter", "nc", "ncat", "socat"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            watch_sha256: Default::default(),
            hash_max_mib: 256,
            outbound_scopes: vec!["external".into()],
            fold_window_ms: 10_000,
            rate_per_s: 20,
            burst: 100,
            ranges: Default::default(),
        }
    }
}

impl ActivityConfig {
    /// Is this exec a run of a watched executable that the scope records?
    pub fn watched(&self, exe_path: &[u8], argv0: Option<&[u8]>) -> bool {
        if self.scope == ActivityScope::Sessions || self.watch.is_empty() {
            return false;
        }
        let names = [Some(crate::text::basename(exe_path)), argv0.map(crate::text::basename)];
        names.iter().flatten().any(|n| !n.is_empty() && self.watch.iter().any(|w| w.as_bytes() == *n))
    }

    /// Does the scope record every process tree started here (in a container after its init,
    /// or on the host)?
    pub fn records_trees(&self, in_container: bool) -> bool {
        match self.scope {
            ActivityScope::Sessions | ActivityScope::Default => false,
            ActivityScope::Containers => in_container,
            ActivityScope::All => true,
        }
    }

    /// Is a connect to `addr` by a container process outside every session recorded?
    pub fn outbound(&self, addr: IpAddr) -> bool {
        self.outbound_scope(self.ranges.classify(addr))
    }

    /// The same for a destination already classified.
    pub fn outbound_scope(&self, scope: &str) -> bool {
        self.scope != ActivityScope::Sessions && self.outbound_scopes.iter().any(|s| s == scope)
    }

    /// The first setting that is not valid, in words.
    pub fn check(&self) -> Result<(), String> {
        for (name, digests) in &self.watch_sha256 {
            if let Some(d) = digests.iter().find(|d| super::identity::parse_digest(d).is_none()) {
                return Err(format!(
                    "process.activity.watch_sha256.{name}: {d:?} is not a sha256 digest (64 hex digits)"
                ));
            }
        }
        match self.outbound_scopes.iter().find(|s| !DESTINATION_SCOPES.contains(&s.as_str())) {
            Some(s) => Err(format!("process.activity.outbound_scopes: {s:?} is not one of {DESTINATION_SCOPES:?}")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_list_matches_the_binary_or_argv0_and_sessions_scope_turns_it_off() {
        let c = ActivityConfig::default();
        assert!(c.watched(b"/usr/bin/tcpdump", Some(b"tcpdump")));
        assert!(c.watched(b"/bin/busybox", Some(b"nc")), "busybox applet");
        assert!(!c.watched(b"/usr/bin/curl", Some(b"curl")));
        let off = ActivityConfig { scope: ActivityScope::Sessions, ..Default::default() };
        assert!(!off.watched(b"/usr/bin/tcpdump", None));
        let parsed: ActivityConfig = toml::from_str("scope = \"all\"\nwatch = [\"strace\"]").unwrap();
        assert_eq!(parsed.scope, ActivityScope::All);
        assert!(parsed.watched(b"/usr/bin/strace", None));
        assert!(toml::from_str::<ActivityConfig>("scope = \"some\"").is_err());
    }
}
