//! Activity outside exec sessions (issue 6): what the process stage records besides
//! sessions, chosen by a scope.
//!
//! In: the tracker's view of an exec (its executable, its container, whether it is already in
//! a session). Out: a decision to open a trace of its own, in the same model as sessions
//! (`SessionKind::Watched`: the run of a watched executable and its descendants, on the host
//! or in any container). Nothing is dropped here.
//!
//! Implemented so far: the watch list (`tcpdump`, `tshark`, `nsenter`, `nc`, ...), in every
//! scope but `sessions`. Not yet: outbound connects outside the cluster ranges, their folding
//! and per-container rate limit, and non-session process trees (`containers`, `all`).

use serde::{Deserialize, Serialize};

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
    /// basename of the executable the kernel ran and of argv[0] (busybox applets, symlinks).
    pub watch: Vec<String>,
}

impl Default for ActivityConfig {
    fn default() -> Self {
        ActivityConfig {
            scope: ActivityScope::Default,
            watch: ["tcpdump", "tshark", "dumpcap", "nsenter", "nc", "ncat", "socat"].iter().map(|s| s.to_string()).collect(),
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
