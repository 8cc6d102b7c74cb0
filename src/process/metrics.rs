//! The process stage's own metrics handle: the stage publishes what it counts itself, right
//! after each event or tick it handled (no atomics in between, no sampler elsewhere).
//!
//! In: the [`SessionTracker`]'s cumulative counters and sizes, containerd lookup failures as
//! they happen. Out: Prometheus series (registered by [`ProcessMetrics::register`]), and the
//! shared ones the dashboards read (`podtrail_events_lost_total{reason="rate_limit"}`,
//! `podtrail_outbound_*`) through a clone of [`Metrics`]. Nothing is dropped.

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
    /// The tracker's totals already published: counters advance by the difference.
    seen: Seen,
}

#[derive(Clone, Debug, Default)]
struct Seen {
    totals: Vec<u64>,
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
             exec_before_fork, parent_unknown, pid_reused_unexited, connect_unknown_pid, result_unmatched, \
             ns_join_idle, file_over_cap, root_exec_lost: a session opened partial because its root's exec \
             was lost, connect_folded: a session connect counted on its destination's record, \
             connect_over_cap: a session connect only counted, past an image's record cap)",
            self.anomalies.clone(),
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
    }

    /// Publishes the tracker's state after it handled something.
    pub fn observe(&mut self, t: &SessionTracker) {
        self.table_size.set(t.len() as i64);
        self.containers.set(t.containers() as i64);
        self.sessions_open.set(t.sessions() as i64);
        let c = t.counters();
        let o = t.outbound();
        let m = self.shared.clone();
        // (family, label, total); a guard from `get_or_create` is never held across another
        // call on the same family (it would deadlock when that one inserts)
        let totals: [(&Family<Labels, Counter>, (&'static str, &'static str), u64); 17] = [
            (&self.sessions, ("what", "started"), c.sessions_started),
            (&self.sessions, ("what", "ended"), c.sessions_ended),
            (&self.anomalies, ("what", "exit_early"), c.exits_early),
            (&self.anomalies, ("what", "exit_unknown"), c.exits_unknown),
            (&self.anomalies, ("what", "exec_before_fork"), c.execs_before_fork),
            (&self.anomalies, ("what", "parent_unknown"), c.parents_unknown),
            (&self.anomalies, ("what", "pid_reused_unexited"), c.pids_reused_unexited),
            (&self.anomalies, ("what", "connect_unknown_pid"), c.connects_unknown_pid),
            (&self.anomalies, ("what", "result_unmatched"), c.results_unmatched),
            (&self.anomalies, ("what", "ns_join_idle"), c.ns_joins_idle),
            (&self.anomalies, ("what", "file_over_cap"), c.files_over_cap),
            (&self.anomalies, ("what", "root_exec_lost"), c.roots_lost),
            (&self.anomalies, ("what", "connect_over_cap"), c.connects_over_cap),
            (&self.anomalies, ("what", "connect_folded"), c.connects_folded),
            // outbound connects the per-container rate limit held back (marked on the
            // container's next outbound span too)
            (&m.events_lost, ("reason", "rate_limit"), o.suppressed),
            (&m.outbound_connects, ("how", "recorded"), o.opened),
            (&m.outbound_connects, ("how", "folded"), o.folded),
        ];
        let seen = &mut self.seen.totals;
        seen.resize(totals.len() + 1, 0);
        for (i, (family, label, total)) in totals.iter().enumerate() {
            family.get_or_create(&vec![*label]).inc_by(total.saturating_sub(seen[i]));
            seen[i] = seen[i].max(*total);
        }
        let last = totals.len();
        m.outbound_records.inc_by(o.records.saturating_sub(seen[last]));
        seen[last] = seen[last].max(o.records);
        for (cache, n) in t.cache_evictions() {
            let c = self.cache_evictions.get_or_create(&vec![("cache", cache)]);
            c.inc_by(n.saturating_sub(c.get()));
        }
        m.outbound_pending.get_or_create(&vec![("what", "open")]).set(o.open_connects as i64);
        m.outbound_pending.get_or_create(&vec![("what", "unmarked")]).set(o.unmarked as i64);
    }
}
