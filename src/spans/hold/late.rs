//! Sessions exported unattributed wait here (bounded by `late_max_sessions` and `late_ms`)
//! for a record that arrives late; a match adds one `attribution` span under the exported
//! root. Records answer only once settled, so a record meant for a new session is not taken
//! by an older unattributed one.

use super::*;

/// A session released unattributed, waiting for a record that arrives late.
pub(super) struct Unattributed {
    pub(super) info: std::sync::Arc<SessionInfo>,
    /// The session's trace and root span ids, as exported: its frame, shared (two ids copied
    /// here made each of the 1 000s of entries a quarter larger, issue 15).
    pub(super) frame: std::sync::Arc<crate::spans::build::SessionFrame>,
    /// When, in ns from the stage's epoch ([`SpanStage::instant_ns`]): an `Instant` was 16
    /// bytes, a third of each entry (issue 15).
    pub(super) released: i64,
}

impl SpanStage {
    /// `t` as ns from the stage's epoch, either side of it (exact: `instant` gives `t` back).
    pub(super) fn instant_ns(&self, t: Instant) -> i64 {
        match t.checked_duration_since(self.epoch) {
            Some(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
            None => -i64::try_from(self.epoch.duration_since(t).as_nanos()).unwrap_or(i64::MAX),
        }
    }

    /// The instant [`Self::instant_ns`] gave `ns` for.
    pub(super) fn instant(&self, ns: i64) -> Instant {
        let d = Duration::from_nanos(ns.unsigned_abs());
        let t = if ns >= 0 { self.epoch.checked_add(d) } else { self.epoch.checked_sub(d) };
        t.unwrap_or(self.epoch)
    }

    /// When session `id` was released unattributed, while it waits for a late record (ended:
    /// its entry; live: its `SessionSpans`).
    fn released_at(&self, id: &SessionId) -> Option<i64> {
        match self.unattributed.get(id) {
            Some(w) => Some(w.released),
            None => self.live.get(id).and_then(|s| s.released()),
        }
    }

    /// The info a session waiting for a late record asks with.
    fn remembered_info(&self, id: &SessionId) -> Option<Arc<SessionInfo>> {
        match self.unattributed.get(id) {
            Some(w) => Some(w.info.clone()),
            None => self.live.get(id).filter(|s| s.released().is_some()).map(|s| s.shared_info()),
        }
    }

    /// Stops waiting for a late record for `id`: what it waited with, when it was waiting.
    fn forget(&mut self, id: &SessionId) -> Option<Unattributed> {
        let w = match self.unattributed.remove(id) {
            Some(w) => w,
            None => {
                let s = self.live.get_mut(id)?;
                let released = s.released()?;
                s.set_released(None);
                Unattributed { info: s.shared_info(), frame: s.shared_frame(), released }
            }
        };
        self.remembered -= 1;
        Some(w)
    }

    /// Asks again for the sessions exported unattributed (when the attributor's records may
    /// have changed, or always when `all`), and forgets those past `late_for`.
    pub(super) fn ask_late(&mut self, now: Instant, all: bool, out: &mut Output) {
        while let Some(id) = self.unattributed_order.front().copied() {
            match self.released_at(&id) {
                Some(r) if now.saturating_duration_since(self.instant(r)) < self.late_for => break,
                Some(_) => {
                    self.forget(&id);
                    out.forgotten.push("expired");
                }
                None => {}
            }
            self.unattributed_order.pop_front();
        }
        if self.remembered == 0 {
            return;
        }
        let rev = self.attributor.revision();
        let changed_at = match self.revision {
            Some((r, at)) if r == rev => at,
            _ => now,
        };
        self.revision = Some((rev, changed_at));
        // Records that arrived with the last change answer once settled: keep asking until
        // then, then only when something new arrives.
        let quiet = now.saturating_duration_since(changed_at) > self.settle + 2 * self.ctx.cfg.hold.poll();
        if !all && rev.is_some() && quiet {
            return;
        }
        let settle = if all { Duration::ZERO } else { self.settle };
        let ids: Vec<SessionId> = self.unattributed_order.iter().copied().collect();
        for id in ids {
            let Some(info) = self.remembered_info(&id) else { continue };
            let Some(who) = self.attributor.attribute_late(&info, settle) else { continue };
            let w = self.forget(&id).expect("checked above");
            self.unattributed_order.retain(|x| *x != id);
            let delay = now.saturating_duration_since(self.instant(w.released));
            let span = crate::spans::build::attribution_span(
                &self.ctx,
                w.frame.trace_id,
                w.frame.root_id,
                &w.info,
                &who,
                delay,
            );
            out.late.push(Late {
                session: id,
                span,
                audit_id: who.audit_id.clone(),
                user: who.user_name.clone(),
                delay,
            });
        }
    }

    /// Session `id`, just out of the hold without attribution (live): remember it for a late
    /// record. While it lives its `SessionSpans` holds the release time; its entry is made at
    /// its end ([`SpanStage::finish`]).
    pub(super) fn remember(&mut self, id: SessionId, now: Instant, out: &mut Output) {
        if self.late_for.is_zero() || self.max_late == 0 {
            return;
        }
        let released = self.instant_ns(now);
        let Some(s) = self.live.get_mut(&id) else { return };
        if !s.info().kind.attributable() {
            return;
        }
        s.set_released(Some(released));
        // an ended session of the same id waiting already: the live one waits in its place
        if self.unattributed.remove(&id).is_none() {
            self.remembered += 1;
            self.unattributed_order.push_back(id);
        }
        while self.remembered > self.max_late {
            match self.unattributed_order.pop_front() {
                Some(old) => {
                    if self.forget(&old).is_some() {
                        out.forgotten.push("overflow");
                    }
                }
                None => break,
            }
        }
    }
}
