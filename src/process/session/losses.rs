//! The kernel's per-cgroup loss counts mark the sessions they touch incomplete; ended sessions
//! wait for the next polls of those counts before they leave, so a loss in a short session
//! still marks it.

use std::sync::Arc;

use crate::model::{SessionId, SessionUpdate};

use super::SessionTracker;

impl SessionTracker {
    /// Hold each ended session this long before its `Ended` leaves, so the kernel's loss
    /// counts, polled about once a second, can still mark it ([`Self::note_events_lost`]).
    pub fn set_loss_settle(&mut self, d: std::time::Duration) {
        self.loss_settle_ns = d.as_nanos() as u64;
    }

    /// Ended sessions whose wait is over at `now_ns` leave.
    pub(super) fn release_ended(&mut self, now_ns: u64, out: &mut Vec<SessionUpdate>) {
        while self.ending.front().is_some_and(|(at, _)| *at <= now_ns) {
            if let Some((_, info)) = self.ending.pop_front() {
                self.transcript_end(&info, out);
                out.push(SessionUpdate::Ended(info, Vec::new()));
            }
        }
    }

    /// The kernel lost `n` events of this cgroup: mark the sessions running in it (those of
    /// its container, and node sessions with a member in that host cgroup) incomplete.
    pub fn note_events_lost(&mut self, cgroup_id: u64, n: u64) {
        if n == 0 {
            return;
        }
        let mut hit: Vec<SessionId> =
            self.sessions.iter().filter(|(_, s)| s.info.container.cgroup_id == cgroup_id).map(|(id, _)| *id).collect();
        for p in self.table.iter() {
            if let Some(sid) = p.session.filter(|_| p.cgroup_id == cgroup_id) {
                if !hit.contains(&sid) {
                    hit.push(sid);
                }
            }
        }
        for sid in hit {
            if let Some(s) = self.sessions.get_mut(&sid) {
                let i = Arc::make_mut(&mut s.info);
                i.events_lost += n;
                i.incomplete = true;
            }
        }
        // ended, but the loss may have happened while they ran: a false "incomplete" is the
        // safe error
        for (_, info) in self.ending.iter_mut().filter(|(_, i)| i.container.cgroup_id == cgroup_id) {
            let info = Arc::make_mut(info);
            info.events_lost += n;
            info.incomplete = true;
        }
    }

    /// The kernel's cumulative drop count for a cgroup (as the capture counters report it,
    /// polled): the increase since the last report marks the sessions open now. Drops are
    /// polled about once a second, so a session that started within that second of a drop may
    /// be marked too: a false "incomplete" is the safe error, a silent loss is not.
    pub fn note_events_lost_total(&mut self, cgroup_id: u64, total: u64) {
        // a cgroup forgotten to make room counts its whole total again: a false
        // "incomplete", the safe error
        let seen = self.lost_seen.get_or_insert_with(cgroup_id, || 0);
        let n = total.saturating_sub(*seen);
        *seen = (*seen).max(total);
        self.note_events_lost(cgroup_id, n);
    }
}
