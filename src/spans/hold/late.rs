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

    /// Asks again for the sessions exported unattributed (when the attributor's records may
    /// have changed, or always when `all`), and forgets those past `late_for`.
    pub(super) fn ask_late(&mut self, now: Instant, all: bool, out: &mut Output) {
        while let Some(id) = self.unattributed_order.front().copied() {
            match self.unattributed.get(&id) {
                Some(w) if now.saturating_duration_since(self.instant(w.released)) < self.late_for => break,
                Some(_) => {
                    self.unattributed.remove(&id);
                    out.forgotten.push("expired");
                }
                None => {}
            }
            self.unattributed_order.pop_front();
        }
        if self.unattributed.is_empty() {
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
            let Some(w) = self.unattributed.get(&id) else { continue };
            let Some(who) = self.attributor.attribute_late(&w.info, settle) else { continue };
            let w = self.unattributed.remove(&id).expect("checked above");
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

    /// A session leaves the hold without attribution: remember it for a late record.
    pub(super) fn remember(&mut self, s: &SessionSpans, now: Instant, out: &mut Output) {
        let info = s.info();
        if !info.kind.attributable() || self.late_for.is_zero() || self.max_late == 0 {
            return;
        }
        let w = Unattributed { info: s.shared_info(), frame: s.shared_frame(), released: self.instant_ns(now) };
        if self.unattributed.insert(info.id, w).is_none() {
            self.unattributed_order.push_back(info.id);
        }
        while self.unattributed.len() > self.max_late {
            match self.unattributed_order.pop_front() {
                Some(old) => {
                    if self.unattributed.remove(&old).is_some() {
                        out.forgotten.push("overflow");
                    }
                }
                None => break,
            }
        }
    }
}
