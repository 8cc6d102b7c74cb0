//! One session's spans, assembled as its processes end: decides each span's parent (the
//! parent process's image current at fork time), applies the budget (fold, cap), and builds
//! the root last, carrying the session's marks.
//!
//! In: `ProcessRecord`s (final) of one session, then its end. Out: `SpanData`, root last.
//! Dropped (counted on the root): spans over the session's cap, repeats folded into one span,
//! UDP connects that never sent (resolver address sorting). With rules following, a span the
//! caps refuse is built anyway and handed on as [`OverCap`]: the rules stage keeps it if it
//! raised an alert.
//! A child usually ends before its parent. Its record names the parent's image current at
//! fork (`parent_exec_index`), and span ids derive from (process, exec index), so the child is
//! exported at once under that id; the parent's image span is then never folded away (its id
//! is referenced). Only a child whose parent's image is unknown waits here until the parent
//! ends (or the session does).

use std::ops::Deref;
use std::sync::Arc;

use opentelemetry::trace::SpanId;
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::SpanData;

use super::budget::{self, fold_digest, FoldDecision, FoldTable};
use super::build::{self, BuildCtx, RootMarks, SessionFrame};
use super::identity::SessionIdentity;
use super::{ids, keys};
use crate::capture::event::{ProcessKey, Transport};
use crate::hashing::{FastMap, SessionState, SmallSet};
use crate::lru::SmallLru;
use crate::model::{ProcessRecord, SessionInfo};

/// A final record with its span ids ([`ids::RecordIds`]), derived once here and shared with
/// the rules stage ([`super::hold::Output::records`]), which matches spans to records by them.
#[derive(Debug)]
pub struct EndedRecord {
    pub record: ProcessRecord,
    pub ids: ids::RecordIds,
}

impl EndedRecord {
    pub fn new(boot_id: &[u8; 16], record: ProcessRecord) -> Self {
        let ids = ids::RecordIds::of(boot_id, &record);
        EndedRecord { record, ids }
    }
}

impl Deref for EndedRecord {
    type Target = ProcessRecord;
    fn deref(&self) -> &ProcessRecord {
        &self.record
    }
}

/// Where an ended process's images are, for its children and later images.
#[derive(Clone, Copy, Debug)]
struct Slot {
    start_ns: u64,
    end_ns: u64,
    span: SpanId,
}

/// One ended process's slots: inline for the single image most processes run (a `Vec` was
/// a heap allocation per ended process and 24 bytes more per slot entry, issue 15). A single
/// slot is every child's, whenever it forked ([`pick_slot`]): its span id is all it keeps
/// (issue 15, mem23: 8 bytes less per ended process).
#[derive(Clone, Debug)]
enum Slots {
    One(SpanId),
    Many(Box<[Slot]>),
}

impl Slots {
    /// The span a child forked at `fork_ns` hangs under.
    fn pick(&self, fork_ns: u64) -> SpanId {
        match self {
            Slots::One(span) => *span,
            Slots::Many(v) => pick_slot(v, fork_ns),
        }
    }
}

impl From<Vec<Slot>> for Slots {
    fn from(v: Vec<Slot>) -> Self {
        match v[..] {
            [one] => Slots::One(one.span),
            _ => Slots::Many(v.into_boxed_slice()),
        }
    }
}

/// Ended processes whose image spans a session remembers for children yet to end.
pub const MAX_SLOTS: usize = 16_384;

/// A built span and whether it is the session's root.
#[derive(Clone, Debug)]
pub struct BuiltSpan {
    pub span: SpanData,
    pub root: bool,
}

/// A span the caps refused, built anyway for the rules stage, which keeps it only when it
/// raised an alert (within its own bound) and otherwise drops it: it is counted as capped on
/// the root until the rules stage says otherwise ([`super::build::kept_for_alerts`]).
#[derive(Clone, Debug)]
pub struct OverCap {
    pub span: SpanData,
    pub kind: Capped,
}

pub struct SessionSpans {
    /// Shared with the process stage and every update of the session (issue 15).
    info: Arc<SessionInfo>,
    /// Boxed: a few hundred bytes most open sessions would hold empty inline (issue 15).
    who: Option<Box<SessionIdentity>>,
    /// Shared with every live update of the session (cloned per exec before: its attributes
    /// are a dozen strings).
    frame: Arc<SessionFrame>,
    /// Bounded ([`MAX_SLOTS`]): a child whose parent's slot was forgotten names the parent's
    /// image by `parent_exec_index` (the process stage fills it), or waits for the session's
    /// end and hangs under the root. A leaf ([`ProcessRecord::leaf`]) keeps none.
    /// Maps here are keyed by process key, span id or (device, inode): values the kernel or
    /// podtrail choose, hashed with foldhash: [`crate::hashing::SessionState`] (one seed per
    /// process, no bytes per map) for those every session holds.
    slots: SmallLru<ProcessKey, Slots, SessionState>,
    /// Shared with the rules stage's copy ([`super::hold::Output::records`]): not cloned.
    /// Made when a record first waits (its parent's image unknown and unnamed): rare.
    waiting: Option<Box<FastMap<ProcessKey, Vec<Arc<EndedRecord>>>>>,
    /// Image spans named as a parent before they were built: never folded.
    referenced: SmallSet<SpanId>,
    folds: FoldTable<SpanData>,
    /// The root's counters every session moves (kept inline), and the others (caps, cuts,
    /// unsent datagrams: rare) made at their first count: all eleven inline were 96 bytes of
    /// every open session (issue 15).
    processes: u64,
    args_redacted: u64,
    marks: Option<Box<RootMarks>>,
    spans: u64,
    /// Executables (device, inode) this session has run: a new one matters past the cap.
    contents: SmallSet<(u32, u64)>,
    /// Span ids exported or to be exported (own, reserved, fold spans) once the cap was
    /// reached: a span kept past the cap whose parent is not among them hangs on the root.
    kept: SmallSet<SpanId>,
    /// When the session left the hold unattributed, in ns from the span stage's epoch, while
    /// it waits for a late record ([`NOT_REMEMBERED`] otherwise). The stage's entry for a late
    /// record is made at the session's end from this (issue 15, mem23: an entry per live
    /// session held the same info and frame as the session, ~80 B with its map's buckets).
    released: i64,
}

/// [`SessionSpans::released`]: not waiting for a late record.
const NOT_REMEMBERED: i64 = i64::MIN;

/// What placing records built: their spans, and the spans the caps refused when a rules
/// stage follows (None: not built). Held for one call, not by the session (its 24 bytes were
/// in every open session, issue 15, mem23).
struct Placed {
    spans: Vec<SpanData>,
    over_cap: Option<Vec<OverCap>>,
}

impl Placed {
    fn new(over_cap: bool) -> Self {
        Placed { spans: Vec::new(), over_cap: over_cap.then(Vec::new) }
    }
}

/// Executables remembered per session for "not run before" (beyond: not new).
const MAX_CONTENTS: usize = 65_536;

/// What a span past the first cap is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capped {
    Process,
    Network,
}

impl SessionSpans {
    pub fn new(ctx: &BuildCtx, info: Arc<SessionInfo>, who: Option<SessionIdentity>) -> Self {
        let frame = Arc::new(build::session_frame(ctx, &info, who.as_ref()));
        let who = who.map(Box::new);
        SessionSpans {
            info,
            who,
            frame,
            slots: SmallLru::with_hasher(MAX_SLOTS),
            waiting: None,
            referenced: SmallSet::default(),
            folds: FoldTable::new(ctx.cfg.fold_after),
            processes: 0,
            args_redacted: 0,
            marks: None,
            spans: 0,
            contents: SmallSet::default(),
            kept: SmallSet::default(),
            released: NOT_REMEMBERED,
        }
    }

    /// When the session was released unattributed (ns from the span stage's epoch), while it
    /// waits for a late record.
    pub(crate) fn released(&self) -> Option<i64> {
        (self.released != NOT_REMEMBERED).then_some(self.released)
    }

    /// Marks the session as waiting for a late record since `at` (None: no longer).
    pub(crate) fn set_released(&mut self, at: Option<i64>) {
        self.released = at.filter(|&t| t != NOT_REMEMBERED).unwrap_or(NOT_REMEMBERED);
    }

    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// [`Self::info`], shared.
    pub fn shared_info(&self) -> Arc<SessionInfo> {
        self.info.clone()
    }

    pub fn who(&self) -> Option<&SessionIdentity> {
        self.who.as_deref()
    }

    /// The trace, root and attributes every span of the session carries.
    pub fn frame(&self) -> &SessionFrame {
        &self.frame
    }

    /// [`Self::frame`], shared.
    pub fn shared_frame(&self) -> Arc<SessionFrame> {
        self.frame.clone()
    }

    pub fn trace_id(&self) -> opentelemetry::trace::TraceId {
        self.frame.trace_id
    }

    pub fn root_id(&self) -> SpanId {
        self.frame.root_id
    }

    /// The process stage learned more about the session (a watched nsenter became a node
    /// session in a container, pod metadata arrived): spans built from now on say so. Nearly
    /// every update of a session carries the same shared info: then nothing is done.
    pub fn refresh(&mut self, ctx: &BuildCtx, info: &Arc<SessionInfo>) {
        if Arc::ptr_eq(info, &self.info) {
            return;
        }
        let changed = info.kind != self.info.kind || info.container != self.info.container;
        self.info = info.clone();
        if changed {
            self.frame = Arc::new(build::session_frame(ctx, &self.info, self.who.as_deref()));
        }
    }

    /// A process of the session ended: its spans, and those of children that waited for it.
    pub fn process_ended(&mut self, ctx: &BuildCtx, info: Arc<SessionInfo>, rec: ProcessRecord) -> Vec<SpanData> {
        self.refresh(ctx, &info);
        self.place_ended(ctx, rec)
    }

    /// [`Self::process_ended`] once the info is refreshed.
    pub fn place_ended(&mut self, ctx: &BuildCtx, rec: ProcessRecord) -> Vec<SpanData> {
        self.place_shared(ctx, Arc::new(EndedRecord::new(&ctx.boot_id, rec)))
    }

    /// [`Self::place_ended`] with a record shared with the rules stage.
    pub fn place_shared(&mut self, ctx: &BuildCtx, rec: Arc<EndedRecord>) -> Vec<SpanData> {
        self.place_offering(ctx, rec, false).0
    }

    /// [`Self::place_shared`], with the spans the caps refused (built only when `over_cap`:
    /// for a rules stage that follows, [`OverCap`]).
    pub fn place_offering(
        &mut self,
        ctx: &BuildCtx,
        rec: Arc<EndedRecord>,
        over_cap: bool,
    ) -> (Vec<SpanData>, Vec<OverCap>) {
        let mut out = Placed::new(over_cap);
        self.place(ctx, rec, &mut out);
        (out.spans, out.over_cap.unwrap_or_default())
    }

    /// The session ended (or the agent is stopping): the processes still open, then whatever
    /// still waits for a parent that was never seen (hung under the root), then folds, then
    /// the root.
    pub fn finish(self, ctx: &BuildCtx, info: Arc<SessionInfo>, remaining: Vec<ProcessRecord>) -> Vec<BuiltSpan> {
        let remaining = remaining.into_iter().map(|r| Arc::new(EndedRecord::new(&ctx.boot_id, r))).collect();
        self.end(ctx, info, remaining, false).0
    }

    /// [`Self::finish`], with the spans the caps refused (built only when `over_cap`: for a
    /// rules stage that follows, [`OverCap`]).
    pub fn end(
        mut self,
        ctx: &BuildCtx,
        info: Arc<SessionInfo>,
        remaining: Vec<Arc<EndedRecord>>,
        over_cap: bool,
    ) -> (Vec<BuiltSpan>, Vec<OverCap>) {
        self.refresh(ctx, &info);
        let mut out = Placed::new(over_cap);
        for rec in remaining {
            self.place(ctx, rec, &mut out);
        }
        if let Some(mut waiting) = self.waiting.take() {
            while let Some(parent) = waiting.keys().next().copied() {
                for rec in waiting.remove(&parent).unwrap_or_default() {
                    let root = self.frame.root_id;
                    self.emit(ctx, rec, root, &mut out);
                }
            }
        }
        // Fold spans are not subject to the cap: they are the budget's own summary, and there
        // is at most one per `fold_after + 1` spans.
        let mut marks = self.marks.take().map(|m| *m).unwrap_or_default();
        marks.processes = self.processes;
        marks.args_redacted = self.args_redacted;
        marks.folded = self.folds.folded();
        for (_parent, fold) in self.folds.drain() {
            let mut s = fold.template;
            s.span_context = opentelemetry::trace::SpanContext::new(
                s.span_context.trace_id(),
                fold.id,
                s.span_context.trace_flags(),
                false,
                s.span_context.trace_state().clone(),
            );
            s.start_time = ctx.clock.to_system_time(fold.first_start_ns);
            s.end_time = ctx.clock.to_system_time(fold.last_end_ns).max(s.start_time);
            s.attributes.push(KeyValue::new(keys::FOLDED_COUNT, fold.count as i64));
            out.spans.push(s);
        }
        let end_ns = self.info.end_ns.unwrap_or(self.info.start_ns);
        let root = build::root_span(ctx, &self.frame, &self.info, self.who.as_deref(), &marks, end_ns);
        let mut built: Vec<BuiltSpan> = out.spans.into_iter().map(|span| BuiltSpan { span, root: false }).collect();
        built.push(BuiltSpan { span: root, root: true });
        (built, out.over_cap.unwrap_or_default())
    }

    fn fallback_end(&self) -> u64 {
        self.info.end_ns.unwrap_or(self.info.start_ns)
    }

    /// Emits `rec` if its parent span is known, else parks it; then releases its waiters.
    fn place(&mut self, ctx: &BuildCtx, rec: Arc<EndedRecord>, out: &mut Placed) {
        let parent_span = if rec.key == self.info.id.0 {
            Some(self.frame.root_id)
        } else {
            match rec.parent {
                None => Some(self.frame.root_id),
                Some(q) => match self.slots.get(&q) {
                    Some(slots) => Some(slots.pick(rec.fork_ns)),
                    None => rec.parent_exec_index.and_then(|i| self.reserve(ctx, parent_image_id(&ctx.boot_id, q, i))),
                },
            }
        };
        match parent_span {
            Some(p) => {
                let key = rec.key;
                self.emit(ctx, rec, p, out);
                // the record's own key first, then its waiters' (no Vec unless some waited)
                let mut ready = Vec::new();
                let mut next = Some(key);
                while let Some(k) = next.take().or_else(|| ready.pop()) {
                    let children = self.waiting.as_mut().and_then(|w| w.remove(&k)).unwrap_or_default();
                    if self.waiting.as_ref().is_some_and(|w| w.is_empty()) {
                        self.waiting = None;
                    }
                    for child in children {
                        let ck = child.key;
                        let p = self.slots.get(&k).map(|s| s.pick(child.fork_ns)).unwrap_or(self.frame.root_id);
                        self.emit(ctx, child, p, out);
                        ready.push(ck);
                    }
                }
            }
            None => {
                let q = rec.parent.unwrap_or(rec.key);
                self.waiting.get_or_insert_with(Default::default).entry(q).or_default().push(rec);
            }
        }
    }

    /// Name a parent image span before it is built: its place under the cap is taken now, so
    /// a child exported early never points at a span the cap later drops. None when the cap
    /// is reached (the child then waits for its parent, as without the index).
    fn reserve(&mut self, ctx: &BuildCtx, id: SpanId) -> Option<SpanId> {
        if self.referenced.contains(&id) {
            return Some(id);
        }
        if self.spans >= ctx.cfg.max_spans_per_session as u64 {
            return None;
        }
        self.spans += 1;
        self.referenced.insert(id);
        Some(id)
    }

    /// Takes a place under the cap for a span of `kind`; one that `matters` may take one
    /// under the second, larger cap. Counts what it refuses, by kind.
    fn under_cap(&mut self, ctx: &BuildCtx, kind: Capped, matters: bool) -> bool {
        if self.spans < ctx.cfg.max_spans_per_session as u64 {
            self.spans += 1;
            return true;
        }
        if matters && self.spans < ctx.cfg.max_kept_spans_per_session as u64 {
            self.spans += 1;
            rare(&mut self.marks).spans_kept_over_cap += 1;
            return true;
        }
        rare(&mut self.marks).spans_capped += 1;
        match kind {
            Capped::Process => rare(&mut self.marks).spans_capped_process += 1,
            Capped::Network => rare(&mut self.marks).spans_capped_network += 1,
        }
        false
    }

    /// Past the cap, a parent that was not exported is replaced by the root.
    fn kept_parent(&self, parent: SpanId) -> SpanId {
        if self.marks.as_ref().is_none_or(|m| m.spans_capped == 0)
            || parent == self.frame.root_id
            || self.kept.contains(&parent)
            || self.referenced.contains(&parent)
        {
            parent
        } else {
            self.frame.root_id
        }
    }

    fn emit(&mut self, ctx: &BuildCtx, rec: Arc<EndedRecord>, parent: SpanId, out: &mut Placed) {
        self.processes += 1;
        let fallback = self.fallback_end();
        let mut parent_for_image = parent;
        // a leaf's slots are for no one (no later record names it as parent), unless
        // records that ended before it wait for them (`place`)
        let keep = !rec.leaf || self.waiting.as_ref().is_some_and(|w| w.contains_key(&rec.key));
        let mut slots = Vec::with_capacity(if keep { rec.images.len() } else { 0 });
        for idx in 0..rec.images.len() {
            let img = &rec.images[idx];
            if img.connects_over_cap > 0 {
                rare(&mut self.marks).connects_over_cap += img.connects_over_cap;
            }
            self.args_redacted += img.argv_redacted as u64;
            let end = build::image_end_ns(&rec, idx, fallback);
            let own = rec.ids.image(idx);
            let last = idx + 1 == rec.images.len();
            // argv, exe path, exit: fed to the digest as they are (no list of parts, no
            // string for the exit status); a repeat's taken from the last few
            let digest = budget::image_digest(&img.argv, &img.exe_path, last.then_some(&rec.exit));
            // what makes the image matter past the cap: a way out, or a binary the session
            // had not run before
            let new_content =
                img.exe_file != (0, 0) && self.contents.len() < MAX_CONTENTS && self.contents.insert(img.exe_file);
            let ways_out = img.connects.iter().any(|c| c.transport != Transport::Udp || c.udp_sent);
            let matters = new_content || ways_out;
            let frame = &self.frame;
            let reserved = self.referenced.contains(&own);
            let decision = if reserved {
                FoldDecision::Keep // a child already hangs on this id
            } else {
                self.folds.offer(parent_for_image, digest, img.start_ns, end, || {
                    build::image_span(ctx, frame, &rec.record, idx, own, parent_for_image, end).0
                })
            };
            let slot_span = match decision {
                FoldDecision::Folded(f) => {
                    self.kept.insert(f);
                    f
                }
                // a repeat with no room for another fold span: not exported, counted as capped
                FoldDecision::Capped => {
                    rare(&mut self.marks).spans_capped += 1;
                    rare(&mut self.marks).spans_capped_process += 1;
                    parent_for_image
                }
                FoldDecision::Keep => {
                    if reserved || self.under_cap(ctx, Capped::Process, matters) {
                        let parent = self.kept_parent(parent_for_image);
                        let (s, cut) = build::image_span(ctx, &self.frame, &rec, idx, own, parent, end);
                        if cut {
                            rare(&mut self.marks).argv_truncated += 1;
                        }
                        out.spans.push(s);
                        self.kept.insert(own);
                    } else if let Some(over_cap) = out.over_cap.as_mut() {
                        let parent = self.kept_parent(parent_for_image);
                        let span = build::image_span(ctx, &self.frame, &rec, idx, own, parent, end).0;
                        over_cap.push(OverCap { span, kind: Capped::Process });
                    }
                    own
                }
            };
            for (ci, c) in img.connects.iter().enumerate() {
                if c.transport == Transport::Udp && !c.udp_sent {
                    rare(&mut self.marks).udp_unsent += 1;
                    continue;
                }
                let cid = rec.ids.connect(idx, ci);
                let d = fold_digest(&[
                    c.transport.as_str().as_bytes(),
                    c.addr.to_string().as_bytes(),
                    &c.port.to_le_bytes(),
                    c.outcome.as_str().as_bytes(),
                ]);
                let frame = &self.frame;
                let end = c.end_ns.unwrap_or(c.ts_ns);
                // a record the process stage already folded per destination is a fold itself
                let decision = if c.activity.is_some() {
                    FoldDecision::Keep
                } else {
                    self.folds.offer(slot_span, d, c.ts_ns, end, || build::connect_span(ctx, frame, cid, slot_span, c))
                };
                match decision {
                    FoldDecision::Folded(_) => {}
                    FoldDecision::Capped => {
                        rare(&mut self.marks).spans_capped += 1;
                        rare(&mut self.marks).spans_capped_network += 1;
                    }
                    FoldDecision::Keep => {
                        let parent = self.kept_parent(slot_span);
                        if self.under_cap(ctx, Capped::Network, true) {
                            out.spans.push(build::connect_span(ctx, &self.frame, cid, parent, c));
                        } else if let Some(over_cap) = out.over_cap.as_mut() {
                            let span = build::connect_span(ctx, &self.frame, cid, parent, c);
                            over_cap.push(OverCap { span, kind: Capped::Network });
                        }
                    }
                }
            }
            if keep {
                slots.push(Slot { start_ns: img.start_ns, end_ns: end, span: slot_span });
            }
            parent_for_image = slot_span;
        }
        if !keep {
            return;
        }
        if slots.is_empty() {
            // A record without images (should not happen): its children hang on its parent.
            slots.push(Slot { start_ns: 0, end_ns: u64::MAX, span: parent });
        }
        self.slots.insert(rec.key, slots.into());
    }
}

/// [`ids::image_span_id`] of a parent's image, remembered for the next child of the same
/// parent on this thread: the children of one shell name the same parent image, which was
/// a SHA-256 digest per exec in issue 15's storm (exec20). A function of its arguments alone,
/// so remembering it changes no id.
fn parent_image_id(boot_id: &[u8; 16], q: ProcessKey, i: u32) -> SpanId {
    /// (boot id, parent, exec index) and its image span id.
    type Named = ([u8; 16], ProcessKey, u32, SpanId);
    thread_local! {
        static LAST: std::cell::Cell<Option<Named>> = const { std::cell::Cell::new(None) };
    }
    LAST.with(|last| match last.get() {
        Some((b, k, e, id)) if b == *boot_id && k == q && e == i => id,
        _ => {
            let id = ids::image_span_id(boot_id, q, i);
            last.set(Some((*boot_id, q, i, id)));
            id
        }
    })
}

/// The session's rare marks, made at their first count.
fn rare(marks: &mut Option<Box<RootMarks>>) -> &mut RootMarks {
    marks.get_or_insert_with(Default::default)
}

/// The image current at `fork_ns`: [start, end) contains it, else the last one started
/// before it, else the first.
fn pick_slot(slots: &[Slot], fork_ns: u64) -> SpanId {
    if let Some(s) = slots.iter().find(|s| s.start_ns <= fork_ns && fork_ns < s.end_ns) {
        return s.span;
    }
    slots.iter().rev().find(|s| s.start_ns <= fork_ns).or(slots.first()).map(|s| s.span).unwrap_or(SpanId::INVALID)
}
