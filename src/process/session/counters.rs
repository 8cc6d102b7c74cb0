//! What the session tracker counts as it drops or repairs: one handle per series of the
//! process stage's metrics, so nothing copies the counts later.

use prometheus_client::metrics::counter::Counter;

use crate::process::metrics::ProcessMetrics;

/// What the tracker had to drop or repair, counted where it happens: each field is a handle
/// on one series of the stage's [`ProcessMetrics`] once [`SessionTracker::count_into`] was
/// called (detached counters before that, as in replays), so nothing copies the counts later.
#[derive(Clone, Debug, Default)]
pub struct TrackerCounters {
    pub sessions_started: Counter,
    pub sessions_ended: Counter,
    /// An exit came before anything else about its process (parked, waiting for its fork).
    pub exits_early: Counter,
    /// Parked exits pushed out before their process showed up.
    pub exits_unknown: Counter,
    /// An exec came before its fork (the child ran on another CPU first).
    pub execs_before_fork: Counter,
    /// A fork or exec whose parent was never seen.
    pub parents_unknown: Counter,
    /// A new process took the pid of one whose exit was never seen.
    pub pids_reused_unexited: Counter,
    pub connects_unknown_pid: Counter,
    /// Datagrams, listens, accepts or raw sockets from pids not in the table.
    pub sockets_unknown_pid: Counter,
    pub results_unmatched: Counter,
    /// Namespace joins into a container that were never followed by an exec or a connect.
    pub ns_joins_idle: Counter,
    /// Watched-file operations past `MAX_FILES_PER_IMAGE` on one image (a loop over a file).
    pub files_over_cap: Counter,
    /// New pod containers whose kind (ephemeral or not) the lookup did not tell in time.
    pub debug_undecided: Counter,
    /// Ended processes of an undecided container past what is held for it (`debug.rs`).
    pub debug_ended_over_cap: Counter,
    /// Sessions opened from /proc whose root's exec then arrived from the kernel (it ran
    /// between the programs' attach and the scan): complete after all.
    pub sessions_proc_completed: Counter,
    /// Sessions whose root's exec the kernel lost, opened as partial sessions from a child.
    pub roots_lost: Counter,
    /// Session connects folded into their image's record for the same destination.
    pub connects_folded: Counter,
    /// Session connects to new destinations past an image's record cap: counted only.
    pub connects_over_cap: Counter,
}

impl TrackerCounters {
    /// Handles on `podtrail_process_sessions{what}` and `podtrail_process_anomalies{what}`.
    pub fn registered(m: &ProcessMetrics) -> Self {
        let session = |what| m.sessions.get_or_create(&vec![("what", what)]).clone();
        let anomaly = |what| m.anomalies.get_or_create(&vec![("what", what)]).clone();
        TrackerCounters {
            sessions_started: session("started"),
            sessions_ended: session("ended"),
            sessions_proc_completed: session("proc_completed"),
            exits_early: anomaly("exit_early"),
            exits_unknown: anomaly("exit_unknown"),
            execs_before_fork: anomaly("exec_before_fork"),
            parents_unknown: anomaly("parent_unknown"),
            pids_reused_unexited: anomaly("pid_reused_unexited"),
            connects_unknown_pid: anomaly("connect_unknown_pid"),
            sockets_unknown_pid: anomaly("socket_unknown_pid"),
            results_unmatched: anomaly("result_unmatched"),
            ns_joins_idle: anomaly("ns_join_idle"),
            files_over_cap: anomaly("file_over_cap"),
            debug_undecided: anomaly("debug_undecided"),
            debug_ended_over_cap: anomaly("debug_ended_over_cap"),
            roots_lost: anomaly("root_exec_lost"),
            connects_folded: anomaly("connect_folded"),
            connects_over_cap: anomaly("connect_over_cap"),
        }
    }
}
