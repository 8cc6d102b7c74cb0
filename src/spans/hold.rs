//! The hold stage: a session's updates wait here (bounded in number and time) for its
//! attribution, so that the trace id and the identity attributes are right on every span.
//! Once released (attributed, deadline passed, hold full, or shutdown), a session's updates
//! become spans immediately.
//!
//! In: `SessionUpdate`s; an [`Attributor`] asked on each tick. Out: [`Released`] spans with
//! their session. Dropped: nothing; a session released without attribution is exported with
//! `podtrail.attribution.source=none`, and how each was released is counted.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use super::build::BuildCtx;
use super::identity::Attributor;
use super::session::{BuiltSpan, SessionSpans};
use crate::process::model::{SessionId, SessionInfo, SessionUpdate};

/// Why a held session was let go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Release {
    Attributed,
    Deadline,
    Overflow,
    Shutdown,
}

impl Release {
    pub fn as_str(self) -> &'static str {
        match self {
            Release::Attributed => "attributed",
            Release::Deadline => "deadline",
            Release::Overflow => "overflow",
            Release::Shutdown => "shutdown",
        }
    }
}

/// What the stage produced for one session in one step.
#[derive(Debug, Default)]
pub struct Output {
    pub spans: Vec<(SessionId, BuiltSpan)>,
    pub released: Vec<Release>,
    /// Sessions whose root was built (ended), with whether they were incomplete.
    pub ended: Vec<(SessionId, bool)>,
}

struct Held {
    deadline: Instant,
    updates: Vec<SessionUpdate>,
    info: SessionInfo,
}

pub struct SpanStage {
    ctx: BuildCtx,
    attributor: Arc<dyn Attributor>,
    hold_for: std::time::Duration,
    max_held: usize,
    held: HashMap<SessionId, Held>,
    order: VecDeque<SessionId>,
    live: HashMap<SessionId, SessionSpans>,
}

impl SpanStage {
    pub fn new(ctx: BuildCtx, attributor: Arc<dyn Attributor>) -> Self {
        let hold_for = ctx.cfg.hold.deadline();
        let max_held = ctx.cfg.hold.max_sessions.max(1);
        SpanStage {
            ctx,
            attributor,
            hold_for,
            max_held,
            held: HashMap::new(),
            order: VecDeque::new(),
            live: HashMap::new(),
        }
    }

    pub fn ctx(&self) -> &BuildCtx {
        &self.ctx
    }

    /// Sessions open (held or live).
    pub fn open(&self) -> usize {
        self.held.len() + self.live.len()
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }

    pub fn update(&mut self, u: SessionUpdate, now: Instant, out: &mut Output) {
        let info = match &u {
            SessionUpdate::Started(i) | SessionUpdate::ProcessEnded(i, _) | SessionUpdate::Ended(i, _) => i,
        };
        let id = info.id;
        if self.live.contains_key(&id) {
            self.apply(id, u, out);
            return;
        }
        if let Some(h) = self.held.get_mut(&id) {
            h.info = info.clone();
            if !matches!(u, SessionUpdate::Started(_)) {
                h.updates.push(u);
            }
            return;
        }
        // New session (or one whose Started we missed): ask once, hold if there is time.
        if let Some(who) = self.attributor.attribute(info) {
            self.live.insert(id, SessionSpans::new(&self.ctx, info.clone(), Some(who)));
            out.released.push(Release::Attributed);
            self.apply(id, u, out);
            return;
        }
        if self.hold_for.is_zero() {
            self.live.insert(id, SessionSpans::new(&self.ctx, info.clone(), None));
            out.released.push(Release::Deadline);
            self.apply(id, u, out);
            return;
        }
        let updates = if matches!(u, SessionUpdate::Started(_)) { vec![] } else { vec![u.clone()] };
        self.held.insert(id, Held { deadline: now + self.hold_for, updates, info: info.clone() });
        self.order.push_back(id);
        while self.held.len() > self.max_held {
            match self.order.pop_front() {
                Some(old) => self.release(old, Release::Overflow, out),
                None => break,
            }
        }
    }

    /// Asks the attributor again for every held session; releases those attributed or due.
    pub fn tick(&mut self, now: Instant, out: &mut Output) {
        let ids: Vec<SessionId> = self.order.iter().copied().collect();
        for id in ids {
            let Some(h) = self.held.get(&id) else { continue };
            if let Some(who) = self.attributor.attribute(&h.info) {
                self.release_with(id, Some(who), Release::Attributed, out);
            } else if now >= h.deadline {
                self.release(id, Release::Deadline, out);
            }
        }
    }

    /// The agent is stopping: release every held session (one last attribution attempt) and
    /// end every live one at `stop_ns`, marked incomplete.
    pub fn shutdown(&mut self, stop_ns: u64, out: &mut Output) {
        let ids: Vec<SessionId> = self.order.iter().copied().collect();
        for id in ids {
            let who = self.held.get(&id).and_then(|h| self.attributor.attribute(&h.info));
            let how = if who.is_some() { Release::Attributed } else { Release::Shutdown };
            self.release_with(id, who, how, out);
        }
        let live: Vec<SessionId> = self.live.keys().copied().collect();
        for id in live {
            if let Some(s) = self.live.remove(&id) {
                let mut info = s.info().clone();
                info.incomplete = true;
                info.end_ns = Some(info.end_ns.unwrap_or(stop_ns));
                self.finish(id, s, info, vec![], out);
            }
        }
    }

    fn release(&mut self, id: SessionId, how: Release, out: &mut Output) {
        self.release_with(id, None, how, out)
    }

    fn release_with(
        &mut self,
        id: SessionId,
        who: Option<super::identity::SessionIdentity>,
        how: Release,
        out: &mut Output,
    ) {
        let Some(h) = self.held.remove(&id) else { return };
        self.order.retain(|x| *x != id);
        out.released.push(how);
        self.live.insert(id, SessionSpans::new(&self.ctx, h.info, who));
        for u in h.updates {
            self.apply(id, u, out);
        }
    }

    fn apply(&mut self, id: SessionId, u: SessionUpdate, out: &mut Output) {
        match u {
            SessionUpdate::Started(info) => {
                if let Some(s) = self.live.get_mut(&id) {
                    s.refresh(&self.ctx, info);
                }
            }
            SessionUpdate::ProcessEnded(info, rec) => {
                if let Some(s) = self.live.get_mut(&id) {
                    for span in s.process_ended(&self.ctx, info, rec) {
                        out.spans.push((id, BuiltSpan { span, root: false }));
                    }
                }
            }
            SessionUpdate::Ended(info, remaining) => {
                if let Some(s) = self.live.remove(&id) {
                    self.finish(id, s, info, remaining, out);
                }
            }
        }
    }

    fn finish(
        &mut self,
        id: SessionId,
        s: SessionSpans,
        info: SessionInfo,
        remaining: Vec<crate::process::model::ProcessRecord>,
        out: &mut Output,
    ) {
        let incomplete = info.incomplete || info.events_lost > 0;
        for b in s.finish(&self.ctx, info, remaining) {
            out.spans.push((id, b));
        }
        out.ended.push((id, incomplete));
    }
}
