//! The hold stage: a session's updates wait here (bounded in number and time) for its
//! attribution, so that the trace id and the identity attributes are right on every span.
//! Once released (attributed, deadline passed, hold full, or shutdown), a session's updates
//! become spans immediately.
//!
//! Kinds no Kubernetes request can stand behind (node, watched, outbound) are not held.
//!
//! A session released unattributed is remembered (bounded by `late_max_sessions` and
//! `late_ms`) with its trace and root span ids; while remembered it asks the attributor again
//! whenever a record may have arrived ([`Attributor::revision`]), and a match adds one
//! `attribution` span to the trace already exported ([`Output::late`]). Records answer such a
//! late question only once they have been held a while (`settle`), so a record meant for a new
//! session that is about to ask is not taken by an older unattributed one.
//!
//! A session marked as an exec probe (`SessionInfo::probe`: its command is one of the
//! container's probe commands) is dropped when it leaves the hold unattributed and without a
//! terminal: nothing but the kubelet explains it. Matched by a request, or with a terminal, it
//! is a session like any other (`echo id | kubectl exec -i pod -- sh` against a probe of
//! `["sh"]`). Either outcome is counted ([`Output::probes`]).
//!
//! In: `SessionUpdate`s; an [`Attributor`] asked on each tick. Out: [`Output`]: spans with
//! their session, late attribution spans. Dropped: nothing is dropped from a trace; a session
//! released without attribution is exported with `podtrail.attribution.source=none`, how each
//! was released is counted, and so is every remembered session forgotten before a record came
//! ([`Output::forgotten`]: expired, overflow).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_sdk::trace::SpanData;

use super::build::{BuildCtx, SessionFrame};
use super::identity::{Attributor, SessionIdentity};
use super::session::{BuiltSpan, EndedRecord, SessionSpans};
use crate::hashing::{FastMap, FastSet};
use crate::model::{SessionId, SessionInfo, SessionKind, SessionUpdate};

/// Why a held session was let go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Release {
    Attributed,
    Deadline,
    Overflow,
    Shutdown,
    /// A kind no Kubernetes request stands behind: not held at all.
    Unattributable,
}

impl Release {
    pub fn as_str(self) -> &'static str {
        match self {
            Release::Attributed => "attributed",
            Release::Deadline => "deadline",
            Release::Overflow => "overflow",
            Release::Shutdown => "shutdown",
            Release::Unattributable => "unattributable",
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
    /// Attribution spans added to traces exported unattributed (their roots have passed).
    pub late: Vec<Late>,
    /// Remembered unattributed sessions given up on: "expired" (no record within `late_ms`),
    /// "overflow" (`late_max_sessions` reached).
    pub forgotten: Vec<&'static str>,
    /// Sessions marked as probes, by outcome: "dropped" (no request, no terminal) or
    /// "session" (exported).
    pub probes: Vec<&'static str>,
    /// Sessions that left the hold, with who opened them (None: nobody known): the rules
    /// stage takes the identity from here, as the spans carry it.
    pub identified: Vec<(SessionId, Option<SessionIdentity>)>,
    /// What members of sessions out of the hold did as it happened (execs, connects, file
    /// operations: `SessionUpdate::Live`), in order, with their session's frame: the rules
    /// stage raises alerts on them at once.
    pub live: Vec<LiveUpdate>,
    /// Spans the session's caps refused, built for the rules stage (only when asked for with
    /// [`SpanStage::with_records`]): it keeps those that raised an alert and drops the rest.
    pub over_cap: Vec<(SessionId, super::session::OverCap)>,
    /// The final records the stage built spans from, in order (only when asked for with
    /// [`SpanStage::with_records`]): the rules stage evaluates them before their spans pass.
    /// Shared with the span stage's own copy (a record is not cloned per process), with the
    /// span ids the span stage derived from it (the rules stage names an alert's span by them).
    pub records: Vec<(Arc<SessionInfo>, Arc<EndedRecord>)>,
    /// Root spans of requests that started no process (attach, port-forward, denied or
    /// unmatched execs), counted as sessions.
    pub requests: Vec<SpanData>,
    /// Set on the last output of a run: sessions still open when the agent stopped.
    pub open_at_stop: Option<usize>,
}

impl Output {
    /// Nothing to pass on.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
            && self.released.is_empty()
            && self.ended.is_empty()
            && self.late.is_empty()
            && self.forgotten.is_empty()
            && self.probes.is_empty()
            && self.identified.is_empty()
            && self.live.is_empty()
            && self.records.is_empty()
            && self.over_cap.is_empty()
            && self.requests.is_empty()
            && self.open_at_stop.is_none()
    }
}

/// A member of a live session exec'd, connected or touched a watched file
/// (`SessionUpdate::Live`).
#[derive(Debug)]
pub struct LiveUpdate {
    pub session: SessionId,
    pub info: Arc<SessionInfo>,
    pub record: crate::model::ProcessRecord,
    pub what: crate::model::Live,
    pub frame: Arc<SessionFrame>,
}

/// A record that arrived after its session was exported unattributed, and the span it adds.
#[derive(Debug)]
pub struct Late {
    pub session: SessionId,
    pub span: SpanData,
    pub audit_id: Option<String>,
    pub user: Option<String>,
    /// From the session's unattributed release to the match.
    pub delay: Duration,
}

struct Held {
    deadline: Instant,
    updates: Vec<SessionUpdate>,
    info: Arc<SessionInfo>,
}

pub struct SpanStage {
    ctx: BuildCtx,
    attributor: Arc<dyn Attributor>,
    hold_for: std::time::Duration,
    max_held: usize,
    /// The maps here are keyed by session id (a process key): [`crate::hashing::FastMap`].
    held: FastMap<SessionId, Held>,
    order: VecDeque<SessionId>,
    /// Boxed: a `SessionSpans` is ~1.5 KB, and a map's free slots would each hold one
    /// (BENCHMARKS.md, issue 15, export15: memory per open session).
    live: FastMap<SessionId, Box<SessionSpans>>,
    late_for: Duration,
    max_late: usize,
    /// Records younger than this do not answer late questions.
    settle: Duration,
    unattributed: FastMap<SessionId, Unattributed>,
    /// What [`Unattributed::released`] counts from.
    epoch: Instant,
    unattributed_order: VecDeque<SessionId>,
    /// The attributor's last revision and when it was first seen.
    revision: Option<(Option<u64>, Instant)>,
    /// Probe sessions dropped while still open: their later updates are dropped too.
    dropped: FastSet<SessionId>,
    /// Hand the records spans are built from to [`Output::records`] (for the rules).
    records: bool,
    /// An ended process's spans on their way to [`Output::spans`], kept between records (a
    /// Vec per record, grown from empty, was an allocation and a move per span more).
    placed: Vec<SpanData>,
}

/// Spans [`SpanStage::placed`] keeps room for between records at most (a span is some
/// hundred bytes; a process with more images than this gives the room back).
const PLACED_KEPT: usize = 16;

impl SpanStage {
    pub fn new(ctx: BuildCtx, attributor: Arc<dyn Attributor>) -> Self {
        let hold_for = ctx.cfg.hold.deadline();
        let max_held = ctx.cfg.hold.max_sessions.max(1);
        let (late_for, max_late) = (ctx.cfg.hold.late(), ctx.cfg.hold.late_max_sessions);
        SpanStage {
            ctx,
            attributor,
            hold_for,
            max_held,
            held: FastMap::default(),
            order: VecDeque::new(),
            live: FastMap::default(),
            late_for,
            max_late,
            settle: hold_for.min(Duration::from_secs(10)),
            unattributed: FastMap::default(),
            epoch: Instant::now(),
            unattributed_order: VecDeque::new(),
            revision: None,
            dropped: Default::default(),
            records: false,
            placed: Vec::new(),
        }
    }

    /// Also hand out the records spans are built from ([`Output::records`]), so the rules
    /// stage sees each process once its session's identity is known.
    pub fn with_records(mut self) -> Self {
        self.records = true;
        self
    }

    /// Sessions exported unattributed still waiting for a late record.
    pub fn unattributed(&self) -> usize {
        self.unattributed.len()
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
        let info = u.shared_info();
        let id = info.id;
        if self.dropped.contains(&id) {
            if matches!(u, SessionUpdate::Ended(..)) {
                self.dropped.remove(&id);
            }
            return;
        }
        if let Some(w) = self.unattributed.get_mut(&id) {
            w.info = info.clone(); // pod metadata may arrive after the release
        }
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
        if !info.kind.attributable() {
            let s = SessionSpans::new(&self.ctx, info.clone(), None);
            self.go_live(id, s, out);
            out.released.push(Release::Unattributable);
            self.apply(id, u, out);
            return;
        }
        // New session (or one whose Started we missed): ask once, hold if there is time.
        if let Some(who) = self.attributor.attribute(&info) {
            if info.probe {
                out.probes.push("session");
            }
            let s = SessionSpans::new(&self.ctx, info.clone(), Some(who));
            self.go_live(id, s, out);
            out.released.push(Release::Attributed);
            self.apply(id, u, out);
            return;
        }
        if self.hold_for.is_zero() {
            if self.drop_probe(&info, matches!(u, SessionUpdate::Ended(..)), out) {
                out.released.push(Release::Deadline);
                return;
            }
            let s = SessionSpans::new(&self.ctx, info.clone(), None);
            self.remember(&s, now, out);
            self.go_live(id, s, out);
            out.released.push(Release::Deadline);
            self.apply(id, u, out);
            return;
        }
        let updates = if matches!(u, SessionUpdate::Started(_)) { vec![] } else { vec![u] };
        self.held.insert(id, Held { deadline: now + self.hold_for, updates, info: info.clone() });
        self.order.push_back(id);
        while self.held.len() > self.max_held {
            match self.order.pop_front() {
                Some(old) => self.release_with(old, None, Release::Overflow, now, out),
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
                self.release_with(id, Some(who), Release::Attributed, now, out);
            } else if now >= h.deadline {
                self.release_with(id, None, Release::Deadline, now, out);
            }
        }
        self.ask_late(now, false, out);
    }

    /// A session leaving the hold unattributed: when it is marked as a probe and has no
    /// terminal, nothing but the probe explains it, and it is dropped (its later updates too,
    /// unless it has `ended`). True when dropped. Counted either way.
    fn drop_probe(&mut self, info: &SessionInfo, ended: bool, out: &mut Output) -> bool {
        if !info.probe {
            return false;
        }
        if info.root_tty {
            out.probes.push("session");
            return false;
        }
        out.probes.push("dropped");
        if !ended {
            self.dropped.insert(info.id);
        }
        true
    }

    /// The agent is stopping: release every held session (one last attribution attempt) and
    /// end every live one at `stop_ns`, marked incomplete.
    pub fn shutdown(&mut self, stop_ns: u64, out: &mut Output) {
        // the last chance for records that arrived late (every record, settled or not)
        self.ask_late(Instant::now(), true, out);
        let ids: Vec<SessionId> = self.order.iter().copied().collect();
        for id in ids {
            let who = self.held.get(&id).and_then(|h| self.attributor.attribute(&h.info));
            let how = if who.is_some() { Release::Attributed } else { Release::Shutdown };
            self.release_with(id, who, how, Instant::now(), out);
        }
        let live: Vec<SessionId> = self.live.keys().copied().collect();
        for id in live {
            if let Some(s) = self.live.remove(&id) {
                let mut info = s.shared_info();
                let i = Arc::make_mut(&mut info);
                i.incomplete = true;
                i.end_ns = Some(i.end_ns.unwrap_or(stop_ns));
                self.finish(id, *s, info, vec![], out);
            }
        }
    }

    fn release_with(
        &mut self,
        id: SessionId,
        who: Option<SessionIdentity>,
        how: Release,
        now: Instant,
        out: &mut Output,
    ) {
        let Some(h) = self.held.remove(&id) else { return };
        self.order.retain(|x| *x != id);
        out.released.push(how);
        if who.is_none() {
            let ended = h.updates.iter().any(|u| matches!(u, SessionUpdate::Ended(..)));
            if self.drop_probe(&h.info, ended, out) {
                return;
            }
        } else if h.info.probe {
            out.probes.push("session");
        }
        let unattributed = who.is_none() && how != Release::Shutdown;
        let s = SessionSpans::new(&self.ctx, h.info, who);
        if unattributed {
            self.remember(&s, now, out);
        }
        self.go_live(id, s, out);
        for u in h.updates {
            self.apply(id, u, out);
        }
    }

    /// A session leaves the hold: from here its spans are built as its processes end. Who
    /// opened it goes to the rules, and a session someone opened (exec, debug, node) says so
    /// at once with a `session opened` span, so it is searchable while it still runs.
    fn go_live(&mut self, id: SessionId, mut s: SessionSpans, out: &mut Output) {
        // the rules stage keeps a refused span that raised an alert (it drops the others)
        s.offer_over_cap(self.records);
        out.identified.push((id, s.who().cloned()));
        let info = s.info();
        if matches!(info.kind, SessionKind::Exec | SessionKind::Debug | SessionKind::Node) {
            let span = super::build::opened_span(&self.ctx, s.frame(), info, s.who());
            out.spans.push((id, BuiltSpan { span, root: false }));
        }
        self.live.insert(id, Box::new(s));
    }

    fn apply(&mut self, id: SessionId, u: SessionUpdate, out: &mut Output) {
        match u {
            SessionUpdate::Live(info, record, what) => {
                if let Some(s) = self.live.get_mut(&id) {
                    s.refresh(&self.ctx, &info);
                    out.live.push(LiveUpdate { session: id, info, record, what, frame: s.shared_frame() });
                }
            }
            SessionUpdate::Started(info) => {
                if let Some(s) = self.live.get_mut(&id) {
                    s.refresh(&self.ctx, &info);
                }
            }
            SessionUpdate::ProcessEnded(info, rec) => {
                if let Some(s) = self.live.get_mut(&id) {
                    s.refresh(&self.ctx, &info);
                    // the rules stage's copy: the info moves there, the record is shared
                    let rec = Arc::new(EndedRecord::new(&self.ctx.boot_id, rec));
                    let for_rules = self.records.then(|| rec.clone());
                    s.place(&self.ctx, rec, &mut self.placed);
                    out.spans.extend(self.placed.drain(..).map(|span| (id, BuiltSpan { span, root: false })));
                    if self.placed.capacity() > PLACED_KEPT {
                        self.placed = Vec::new();
                    }
                    out.over_cap.extend(s.take_over_cap().into_iter().map(|c| (id, c)));
                    if let Some(r) = for_rules {
                        out.records.push((info, r));
                    }
                }
            }
            SessionUpdate::Ended(info, remaining) => {
                if let Some(s) = self.live.remove(&id) {
                    self.finish(id, *s, info, remaining, out);
                }
            }
            SessionUpdate::Transcript(info, chunk) => {
                if let Some(s) = self.live.get_mut(&id) {
                    s.refresh(&self.ctx, &info);
                    let span = super::build::transcript_span(&self.ctx, s.frame(), &info, &chunk);
                    out.spans.push((id, BuiltSpan { span, root: false }));
                }
            }
        }
    }

    fn finish(
        &mut self,
        id: SessionId,
        s: SessionSpans,
        info: Arc<SessionInfo>,
        remaining: Vec<crate::model::ProcessRecord>,
        out: &mut Output,
    ) {
        let incomplete = info.incomplete || info.events_lost > 0;
        let remaining: Vec<Arc<EndedRecord>> =
            remaining.into_iter().map(|r| Arc::new(EndedRecord::new(&self.ctx.boot_id, r))).collect();
        if self.records {
            out.records.extend(remaining.iter().map(|r| (info.clone(), r.clone())));
        }
        let (built, over_cap) = s.end(&self.ctx, info, remaining);
        out.spans.extend(built.into_iter().map(|b| (id, b)));
        out.over_cap.extend(over_cap.into_iter().map(|c| (id, c)));
        out.ended.push((id, incomplete));
    }
}

mod late;
#[cfg(test)]
mod tests;

use late::Unattributed;
