//! Activity outside exec sessions (issue 6): what the process stage records besides
//! sessions, chosen by a scope.
//!
//! In: the tracker's view of an exec (its executable, its container, whether it is already in
//! a session). Out: a decision to open a trace of its own, in the same model as sessions
//! (`SessionKind::Watched`: the run of a watched executable and its descendants, on the host
//! or in any container). Nothing is dropped here.
//!
//! Implemented so far: the watch list (`tcpdump`, `tshark`, `nsenter`, `nc`, ...), in every
//! scope but `sessions`; outbound connects ([`Outbound`]): a connect by a container process
//! outside every session to a destination whose scope is listed in `outbound_scopes`
//! (`external` by default: `private` is RFC 1918/CGNAT/link-local/ULA outside the configured
//! cluster ranges, which on most clusters is the VPC or the cluster itself when its ranges are
//! not configured; add it once `[spans.scope]` names the cluster's ranges, to see cloud
//! metadata and VPC peers). UDP counts only once it carried data. Repeats by one process
//! image to one destination within `fold_window_ms` are one record with a count; a token
//! bucket per container (`rate_per_s`, `burst`) limits new records, and what it suppresses is
//! counted ([`Outbound::suppressed`]) and marked on that container's next record.
//! Not yet: non-session process trees (`containers`, `all`).

use std::collections::HashMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::model::{
    ActivityMarks, ConnectRecord, ContainerInfo, ProcessRecord, SessionId, SessionInfo, SessionKind, SessionUpdate,
};
use crate::capture::event::{ProcessKey, Transport};

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
    /// Destination scopes (`podtrail.network.destination.scope`) whose connects from a
    /// container process outside any session are recorded, each as a trace of kind
    /// `outbound`: any of `external`, `private`, `node`, `service`, `pod`, `loopback`.
    pub outbound_scopes: Vec<String>,
    /// Milliseconds over which repeats (one process image, one destination) fold into one
    /// record with a count.
    pub fold_window_ms: u64,
    /// New outbound records per container per second (token bucket refill; 0: no limit).
    pub rate_per_s: u32,
    /// Records a container may make at once before the rate applies.
    pub burst: u32,
    /// The cluster's ranges, copied from `[spans.scope]` when the config is validated.
    #[serde(skip)]
    pub ranges: crate::spans::scope::ScopeConfig,
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

    /// Is a connect to `addr` by a container process outside every session recorded?
    pub fn outbound(&self, addr: IpAddr) -> bool {
        self.scope != ActivityScope::Sessions && self.outbound_scopes.iter().any(|s| s == self.ranges.classify(addr))
    }

    /// The first setting that is not valid, in words.
    pub fn check(&self) -> Result<(), String> {
        match self.outbound_scopes.iter().find(|s| !DESTINATION_SCOPES.contains(&s.as_str())) {
            Some(s) => Err(format!("process.activity.outbound_scopes: {s:?} is not one of {DESTINATION_SCOPES:?}")),
            None => Ok(()),
        }
    }
}

/// One process image's connects to one destination, folded over a window.
#[derive(Clone, Debug)]
struct Window {
    first: ConnectRecord,
    count: u64,
    last_ns: u64,
    suppressed_before: u64,
    proc: ProcessRecord,
    container: ContainerInfo,
}

type WindowKey = (ProcessKey, u32, Transport, IpAddr, u16);

/// A token bucket per container, in event time.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at_ns: u64,
    /// Suppressed since this container's last record.
    unmarked: u64,
}

/// Outbound connects outside sessions: folded by (process image, destination) over a window,
/// limited per container, then handed out as one trace per window.
#[derive(Debug, Default)]
pub struct Outbound {
    windows: HashMap<WindowKey, Window>,
    /// Connects waiting for their outcome or (UDP) their first datagram: cookie -> window or
    /// the UDP connect not yet counted.
    cookies: HashMap<u64, Pending>,
    buckets: HashMap<u64, Bucket>,
    /// Connects suppressed by the rate limit, in total.
    pub suppressed: u64,
    /// Connects folded into a record that was already open (each record counts 1 itself).
    pub folded: u64,
    /// Records handed out (each one trace).
    pub records: u64,
    /// Connects that opened a record (each record counts its first connect itself).
    pub opened: u64,
    /// Connects counted in records not handed out yet.
    pub open_connects: u64,
    /// Suppressed connects not marked on a record yet.
    pub unmarked: u64,
    /// Serial that keeps the trace ids of one process's records apart.
    serial: u32,
}

#[derive(Clone, Debug)]
enum Pending {
    /// Counted in this window (its outcome may still come).
    Counted(WindowKey),
    /// A UDP connect not yet counted: it counts at its first datagram.
    Udp(ConnectRecord, ProcessRecord, ContainerInfo, u64),
}

/// Cookies remembered at once (a process that connects and never sends).
const MAX_PENDING: usize = 65_536;

impl Outbound {
    /// A connect by a container process outside every session, already judged in scope.
    /// `proc` is its record (current image only, no connects), `cgroup_id` its container.
    pub fn connect(
        &mut self,
        cfg: &ActivityConfig,
        c: ConnectRecord,
        cookie: u64,
        proc: ProcessRecord,
        container: ContainerInfo,
        cgroup_id: u64,
    ) {
        if self.cookies.len() >= MAX_PENDING {
            self.cookies.clear();
        }
        if c.transport == Transport::Udp {
            self.cookies.insert(cookie, Pending::Udp(c, proc, container, cgroup_id));
            return;
        }
        if let Some((k, true)) = self.count(cfg, c, proc, container, cgroup_id) {
            self.cookies.insert(cookie, Pending::Counted(k));
        }
    }

    /// The first datagram of a connected UDP socket: its connect counts now.
    pub fn udp_sent(&mut self, cfg: &ActivityConfig, cookie: u64) -> bool {
        match self.cookies.remove(&cookie) {
            Some(Pending::Udp(mut c, proc, container, cg)) => {
                c.udp_sent = true;
                if let Some((k, true)) = self.count(cfg, c, proc, container, cg) {
                    self.cookies.insert(cookie, Pending::Counted(k));
                }
                true
            }
            Some(p) => {
                self.cookies.insert(cookie, p);
                true
            }
            None => false,
        }
    }

    /// The record a result or datagram for `cookie` belongs to (only a window's first connect
    /// keeps its cookie: the outcome shown is the first one's).
    pub fn result(&mut self, cookie: u64) -> Option<&mut ConnectRecord> {
        match self.cookies.get_mut(&cookie)? {
            Pending::Counted(k) => self.windows.get_mut(k).map(|w| &mut w.first),
            Pending::Udp(c, ..) => Some(c),
        }
    }

    /// Counts a connect: folded into its open window, or a new window, or suppressed (None).
    /// The flag says the window is new (only its first connect's outcome is kept).
    fn count(
        &mut self,
        cfg: &ActivityConfig,
        c: ConnectRecord,
        proc: ProcessRecord,
        container: ContainerInfo,
        cgroup_id: u64,
    ) -> Option<(WindowKey, bool)> {
        let exec_index = proc.images.last().map(|i| i.exec_index).unwrap_or(0);
        let k: WindowKey = (proc.key, exec_index, c.transport, crate::spans::scope::normalize(c.addr), c.port);
        if let Some(w) = self.windows.get_mut(&k) {
            w.count += 1;
            w.last_ns = w.last_ns.max(c.ts_ns);
            self.folded += 1;
            self.open_connects += 1;
            return Some((k, false));
        }
        let b =
            self.buckets.entry(cgroup_id).or_insert(Bucket { tokens: cfg.burst as f64, at_ns: c.ts_ns, unmarked: 0 });
        if cfg.rate_per_s > 0 {
            let dt = c.ts_ns.saturating_sub(b.at_ns) as f64 / 1e9;
            b.tokens = (b.tokens + dt * cfg.rate_per_s as f64).min(cfg.burst.max(1) as f64);
            b.at_ns = b.at_ns.max(c.ts_ns);
            if b.tokens < 1.0 {
                b.unmarked += 1;
                self.suppressed += 1;
                self.unmarked += 1;
                return None;
            }
            b.tokens -= 1.0;
        }
        let suppressed_before = std::mem::take(&mut b.unmarked);
        self.unmarked -= suppressed_before;
        self.opened += 1;
        self.open_connects += 1;
        let last_ns = c.ts_ns;
        self.windows.insert(k, Window { first: c, count: 1, last_ns, suppressed_before, proc, container });
        Some((k, true))
    }

    /// Windows older than the fold window at `now_ns` (all with `all`), as traces.
    pub fn flush(&mut self, cfg: &ActivityConfig, now_ns: u64, all: bool, out: &mut Vec<SessionUpdate>) {
        let window = cfg.fold_window_ms.saturating_mul(1_000_000);
        let mut due: Vec<WindowKey> = self
            .windows
            .iter()
            .filter(|(_, w)| all || now_ns.saturating_sub(w.first.ts_ns) >= window)
            .map(|(k, _)| *k)
            .collect();
        due.sort_by_key(|k| self.windows[k].first.ts_ns);
        for k in due {
            if let Some(w) = self.windows.remove(&k) {
                self.emit(w, out);
            }
        }
        if self.windows.is_empty() && self.cookies.len() > MAX_PENDING / 2 {
            self.cookies.retain(|_, p| matches!(p, Pending::Udp(..)));
        }
        self.cookies.retain(|_, p| !matches!(p, Pending::Counted(k) if !self.windows.contains_key(k)));
    }

    /// Windows of a process that exited.
    pub fn process_exited(&mut self, key: ProcessKey, out: &mut Vec<SessionUpdate>) {
        let mut mine: Vec<WindowKey> = self.windows.keys().filter(|k| k.0 == key).copied().collect();
        mine.sort_by_key(|k| self.windows[k].first.ts_ns);
        for k in mine {
            if let Some(w) = self.windows.remove(&k) {
                self.emit(w, out);
            }
        }
        self.cookies.retain(|_, p| match p {
            Pending::Counted(k) => k.0 != key,
            Pending::Udp(_, proc, ..) => proc.key != key,
        });
    }

    /// Open windows (for tests and the metrics).
    pub fn open(&self) -> usize {
        self.windows.len()
    }

    fn emit(&mut self, w: Window, out: &mut Vec<SessionUpdate>) {
        self.records += 1;
        self.open_connects -= w.count;
        self.serial = self.serial.wrapping_add(1);
        let mut c = w.first;
        c.activity = Some(ActivityMarks {
            count: w.count,
            first_ns: c.ts_ns,
            last_ns: w.last_ns,
            suppressed_before: w.suppressed_before,
        });
        let end_ns = w.last_ns.max(c.end_ns.unwrap_or(c.ts_ns));
        // a trace id of its own: the process's pid with the top bit set (no real pid has it),
        // and the first connect's time plus a serial (two records of one process never share)
        let id = SessionId(ProcessKey {
            pid: w.proc.key.pid | 0x8000_0000,
            start_ns: c.ts_ns ^ ((self.serial as u64) << 48),
        });
        let mut proc = w.proc;
        proc.parent = None;
        proc.parent_exec_index = None;
        if let Some(img) = proc.images.last_mut() {
            img.connects = vec![c.clone()];
            img.end_ns = Some(img.end_ns.unwrap_or(end_ns).max(end_ns));
        }
        let info = SessionInfo {
            id,
            kind: SessionKind::Outbound,
            container: w.container,
            start_ns: c.ts_ns,
            end_ns: Some(end_ns),
            root_argv: proc.images.last().map(|i| i.argv.clone()).unwrap_or_default(),
            root_tty: false,
            env_audit_id: None,
            node_user: None,
            parent_session: None,
            events_lost: 0,
            incomplete: false,
            from_proc: false,
        };
        out.push(SessionUpdate::Started(info.clone()));
        out.push(SessionUpdate::ProcessEnded(info.clone(), proc));
        out.push(SessionUpdate::Ended(info, Vec::new()));
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
