//! The process stage's own metrics handle. Counts are taken where they happen: the
//! [`SessionTracker`] holds handles on these series ([`SessionTracker::count_into`]) and on the
//! shared ones the dashboards read (`podtrail_events_lost_total{reason="rate_limit"}`,
//! `podtrail_outbound_*`), and containerd lookup failures are counted by the task that makes
//! them. What is a size, not a count (the table, containers, open sessions, what the
//! outbound fold holds), is set after each event or tick; nothing is sampled elsewhere.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::SessionTracker;
use crate::metrics::Metrics;

type Labels = Vec<(&'static str, &'static str)>;

/// Cheap to clone: every clone updates the same series.
#[derive(Clone, Debug, Default)]
pub struct ProcessMetrics {
    /// The shared series some of ours belong to (events lost, outbound).
    pub shared: Metrics,
    pub table_size: Gauge,
    pub containers: Gauge,
    /// Sessions the process stage has open (started, not ended).
    pub sessions_open: Gauge,
    pub sessions: Family<Labels, Counter>,
    /// Event orders and gaps the tracker coped with, by what.
    pub anomalies: Family<Labels, Counter>,
    pub containerd_errors: Counter,
    /// Entries the stage's bounded caches forgot to make room, by cache.
    pub cache_evictions: Family<Labels, Counter>,
    /// Executables judged by content (issue 18), by what (hashed, unreadable, renamed).
    pub identities: Family<Labels, Counter>,
    /// Names from DNS answers: answers by result, names held, destinations named or not.
    pub dns: super::dns::DnsMetrics,
    /// How cgroup ids were resolved to paths, by what (learned, truncated, walks, unresolved).
    pub cgroup_paths: Family<Labels, Counter>,
}

impl ProcessMetrics {
    pub fn new(shared: Metrics) -> Self {
        ProcessMetrics { shared, ..Default::default() }
    }

    pub fn register(&self, reg: &mut Registry) {
        reg.register("podtrail_process_table_size", "Processes in the process table", self.table_size.clone());
        reg.register("podtrail_containers", "Containers known to the process stage", self.containers.clone());
        reg.register(
            "podtrail_process_sessions_open",
            "Sessions the process stage has open (their root still runs)",
            self.sessions_open.clone(),
        );
        reg.register(
            "podtrail_process_sessions",
            "Sessions the process stage saw, by what (started, ended)",
            self.sessions.clone(),
        );
        reg.register(
            "podtrail_process_anomalies",
            "Events the process stage could not place as they came, by what (exit_early, exit_unknown, \
             exec_before_fork, parent_unknown, pid_reused_unexited, connect_unknown_pid, socket_unknown_pid, \
             result_unmatched, ns_join_idle, file_over_cap, debug_undecided, debug_ended_over_cap, \
             root_exec_lost: a session opened partial because its root's exec was lost, connect_folded: a \
             session connect counted on its destination's record, connect_over_cap: a session connect only \
             counted, past an image's record cap)",
            self.anomalies.clone(),
        );
        reg.register(
            "podtrail_process_identities",
            "Executables judged by content, by what (hashed: binaries read and hashed; unreadable: gone \
             before they could be read, so a renamed watched tool among them would be missed; renamed: \
             images found to be a watched tool under another name)",
            self.identities.clone(),
        );
        reg.register(
            "podtrail_containerd_errors",
            "containerd lookups that failed (the container keeps its cgroup-derived identity)",
            self.containerd_errors.clone(),
        );
        reg.register(
            "podtrail_process_cache_evictions",
            "Entries the process stage's bounded caches forgot to make room (least recently used first), by cache",
            self.cache_evictions.clone(),
        );
        reg.register(
            "podtrail_process_cgroup_paths",
            "How cgroup ids became paths (and so containers), by what (learned: paths the kernel told at a \
             cgroup's mkdir, kept until its id is first seen; truncated: told paths longer than the kernel's \
             slot, not kept; walks: walks of the cgroup2 tree for an id not told; unresolved: ids resolved \
             neither way, their processes taken for the host's: a cgroup removed before its events were read \
             whose mkdir record was lost or came before the agent started)",
            self.cgroup_paths.clone(),
        );
        self.dns.register(reg);
    }

    /// Publishes the tracker's sizes: at start, on the stage's 500 ms tick, and at shutdown
    /// (its counts, and the outbound connects it still holds, go straight into the series
    /// through [`SessionTracker::count_into`]).
    pub fn observe(&self, t: &SessionTracker) {
        self.table_size.set(t.len() as i64);
        self.containers.set(t.containers() as i64);
        self.sessions_open.set(t.sessions() as i64);
        // the caches and the identity cache count their own totals; the series follow them
        let ids = t.identity_counters();
        for (what, n) in [("hashed", ids.hashed), ("unreadable", ids.unreadable), ("renamed", ids.renamed)] {
            let c = self.identities.get_or_create(&vec![("what", what)]);
            c.inc_by(n.saturating_sub(c.get()));
        }
        for (cache, n) in t.cache_evictions() {
            let c = self.cache_evictions.get_or_create(&vec![("cache", cache)]);
            c.inc_by(n.saturating_sub(c.get()));
        }
        if let Some(c) = t.cgroup_counts() {
            let s = self.cache_evictions.get_or_create(&vec![("cache", "cgroup_paths")]);
            s.inc_by(c.evicted.saturating_sub(s.get()));
            for (what, n) in
                [("learned", c.learned), ("truncated", c.truncated), ("walks", c.walks), ("unresolved", c.unresolved)]
            {
                let s = self.cgroup_paths.get_or_create(&vec![("what", what)]);
                s.inc_by(n.saturating_sub(s.get()));
            }
        }
    }
}
