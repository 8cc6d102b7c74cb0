//! The record store: every request record from every source, deduplicated and bounded, and the
//! matcher that hands each exec session the request that opened it.
//!
//! In: audit events ([`RecordStore::insert_audit_event`]), admission records
//! ([`RecordStore::insert_admission`]), session queries ([`RecordStore::match_session`]).
//! Out: [`Attribution`]s for sessions, and for requests that never became one
//! ([`RecordStore::take_unmatched_requests`]).
//! Dropped (counted): duplicates of an (audit id, stage) already held; records past
//! `max_records` (oldest first) or held longer than `retention`.
//!
//! A request is identified by its audit id and its `requestReceivedTimestamp`: clients choose
//! audit ids (`Audit-ID` header), so two requests can share one; every stage of one request
//! carries the same received time, and a retried batch repeats it exactly.

use super::admission::AdmissionRecord;
use super::audit::{AuditEvent, EventError, Stage, ToRecord};
use super::matcher::{kind_rank, request_fits, time_matches};
use super::metrics::AttributeMetrics;
use super::record::RequestRecord;
use super::{
    hashed_trace_id, trace_id_for_audit_id, Attribution, AttributionSource, Confidence, RequestKind, SessionQuery,
};
use prometheus_client::registry::Registry;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Bounds and windows of the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// Largest distance between a request and the session start it may match (audit batching
    /// delays and clock skew). Default 120 s.
    pub match_window: Duration,
    /// How long a session whose environment names an audit id waits for that record before
    /// it is matched by pod, command and time instead. Default 60 s.
    pub env_id_grace: Duration,
    /// Most records held; the oldest go first. Default 10 000.
    pub max_records: usize,
    /// How long a record is held after it arrived. Default 15 min.
    pub retention: Duration,
    /// Where the cluster sends audit events too, the admission review of an exec arrives
    /// first (the API server calls the webhook before the stream opens; audit events come in
    /// batches a second or more later). A session only an admission record fits waits this
    /// long from that record's arrival for the audit record of the same request, which has
    /// the real requester, the source IP and the audit id the trace is named after. Default
    /// 3 s; only while audit events are expected ([`RecordStore::expect_audit`], or one was
    /// held within `retention`).
    pub audit_wait: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            match_window: Duration::from_secs(120),
            env_id_grace: Duration::from_secs(60),
            max_records: 10_000,
            retention: Duration::from_secs(15 * 60),
            audit_wait: Duration::from_secs(3),
        }
    }
}

/// What became of one inserted event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InsertOutcome {
    /// A request podtrail had not seen.
    Inserted,
    /// A new stage of a request already held.
    Merged,
    /// This (audit id, stage) was already held.
    Duplicate,
    /// Not about exec, attach, port-forward or ephemeral containers.
    Ignored,
    Rejected(EventError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Free,
    Matched,
    Exported,
}

type Key = (String, Option<SystemTime>);

struct Slot {
    rec: RequestRecord,
    seq: u64,
    arrived: SystemTime,
    state: State,
}

#[derive(Default)]
struct Inner {
    slots: HashMap<Key, Slot>,
    order: VecDeque<(u64, Key)>,
    next_seq: u64,
    /// Audit ids that already gave a session its trace id, with how many times.
    used_ids: HashMap<String, u32>,
    used_order: VecDeque<String>,
    /// When the last audit record (webhook or log) arrived.
    audit_seen: Option<SystemTime>,
}

/// Called with every stage the store accepted (new or merged, never a duplicate), after the
/// store holds it: `podtrail receiver` streams these to the agents ([`super::stream`]).
pub type RecordTap = Box<dyn Fn(&RequestRecord, Stage) + Send + Sync>;

/// Thread-safe (share it in an `Arc`) store of request records.
pub struct RecordStore {
    cfg: StoreConfig,
    inner: Mutex<Inner>,
    metrics: AttributeMetrics,
    tap: Option<RecordTap>,
    /// Stages accepted (new or merged) so far: see [`RecordStore::revision`].
    revision: AtomicU64,
    /// A source said audit events will come (a receiver that takes the audit webhook).
    expect_audit: AtomicBool,
}

impl RecordStore {
    pub fn new(cfg: StoreConfig) -> Self {
        Self {
            cfg,
            inner: Mutex::new(Inner::default()),
            metrics: AttributeMetrics::default(),
            tap: None,
            revision: AtomicU64::new(0),
            expect_audit: AtomicBool::new(false),
        }
    }

    /// Audit events for the cluster's requests will come (besides admission reviews): an
    /// admission-only match then waits `audit_wait` for the audit record of the same request.
    pub fn expect_audit(&self) {
        self.expect_audit.store(true, Ordering::Relaxed);
    }

    /// A store that also hands every accepted stage to `tap`.
    pub fn with_tap(cfg: StoreConfig, tap: RecordTap) -> Self {
        Self { tap: Some(tap), ..Self::new(cfg) }
    }

    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    /// The counters of the whole attribution stage (webhooks and follower share them).
    pub fn metrics(&self) -> &AttributeMetrics {
        &self.metrics
    }

    pub fn register_metrics(&self, reg: &mut Registry) {
        self.metrics.register(reg);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn insert_audit_event(&self, ev: AuditEvent, source: AttributionSource) -> InsertOutcome {
        match ev.into_record(source) {
            Ok(ToRecord::Ignored) => {
                self.metrics.ignored.get_or_create(&vec![("source", source.as_str())]).inc();
                InsertOutcome::Ignored
            }
            Err(e) => {
                self.metrics.reject(e.reason());
                InsertOutcome::Rejected(e)
            }
            Ok(ToRecord::Record(rec, stage)) => self.insert_record(*rec, stage),
        }
    }

    pub fn insert_admission(&self, review: &AdmissionRecord) {
        self.insert_record(review.to_record(), Stage::RequestReceived);
    }

    /// Insert one stage of a request as a source parsed it (or as a receiver streamed it).
    pub fn insert_record(&self, rec: RequestRecord, stage: Stage) -> InsertOutcome {
        let tapped = self.tap.as_ref().map(|_| rec.clone());
        let outcome = self.insert_record_inner(rec, stage);
        if matches!(outcome, InsertOutcome::Inserted | InsertOutcome::Merged) {
            self.revision.fetch_add(1, Ordering::Relaxed);
        }
        if let (Some(tap), Some(rec)) = (&self.tap, tapped) {
            if matches!(outcome, InsertOutcome::Inserted | InsertOutcome::Merged) {
                tap(&rec, stage);
            }
        }
        outcome
    }

    fn insert_record_inner(&self, rec: RequestRecord, stage: Stage) -> InsertOutcome {
        let now = SystemTime::now();
        let source = rec.source.as_str();
        if rec.request_time().is_some_and(|t| t + self.cfg.match_window < now) {
            self.metrics.late.inc();
        }
        let key: Key = (rec.audit_id.clone(), rec.received);
        let mut inner = self.lock();
        self.expire(&mut inner, now);
        if rec.source != AttributionSource::Admission {
            inner.audit_seen = Some(now);
        }
        let outcome = match inner.slots.get_mut(&key) {
            Some(slot) if slot.rec.stages & stage.bit() != 0 => {
                self.metrics.duplicates.get_or_create(&vec![("source", source)]).inc();
                return InsertOutcome::Duplicate;
            }
            Some(slot) => {
                slot.rec.merge(rec);
                InsertOutcome::Merged
            }
            None => {
                let seq = inner.next_seq;
                inner.next_seq += 1;
                inner.order.push_back((seq, key.clone()));
                inner.slots.insert(key, Slot { rec, seq, arrived: now, state: State::Free });
                while inner.slots.len() > self.cfg.max_records {
                    if !self.evict_front(&mut inner) {
                        break;
                    }
                }
                InsertOutcome::Inserted
            }
        };
        self.metrics.accepted.get_or_create(&vec![("source", source)]).inc();
        self.metrics.store_records.set(inner.slots.len() as i64);
        outcome
    }

    /// Drop the oldest record; false when there is none.
    fn evict_front(&self, inner: &mut Inner) -> bool {
        while let Some((seq, key)) = inner.order.pop_front() {
            if inner.slots.get(&key).is_some_and(|s| s.seq == seq) {
                let slot = inner.slots.remove(&key).expect("checked above");
                let state = match slot.state {
                    State::Free => "unused",
                    State::Matched => "matched",
                    State::Exported => "exported",
                };
                self.metrics.evicted.get_or_create(&vec![("state", state)]).inc();
                return true;
            }
        }
        false
    }

    fn expire(&self, inner: &mut Inner, now: SystemTime) {
        while let Some((seq, key)) = inner.order.front() {
            let expired = match inner.slots.get(key) {
                Some(s) if s.seq == *seq => s.arrived + self.cfg.retention < now,
                _ => true, // stale order entry
            };
            if !expired || !self.evict_front(inner) {
                break;
            }
        }
        self.metrics.store_records.set(inner.slots.len() as i64);
    }

    /// Changes whenever a stage is accepted: a session that found nothing need not ask again
    /// until it does.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Relaxed)
    }

    /// Match a session; consumes the matched request so overlapping identical execs are
    /// taken in order; returns None when nothing matches (yet).
    pub fn match_session(&self, q: &SessionQuery) -> Option<Attribution> {
        self.match_settled(q, Duration::ZERO)
    }

    /// [`RecordStore::match_session`] for a session already exported unattributed: only
    /// records that arrived at least `settled` ago may answer, so that a record meant for a new
    /// session that is about to ask goes to that session.
    pub fn match_settled(&self, q: &SessionQuery, settled: Duration) -> Option<Attribution> {
        let now = SystemTime::now();
        let mut inner = self.lock();
        self.expire(&mut inner, now);
        let cutoff = now.checked_sub(settled).unwrap_or(UNIX_EPOCH);
        let settled = |s: &Slot| s.arrived <= cutoff;

        if let Some(env_id) = q.env_audit_id.as_deref().filter(|s| !s.is_empty()) {
            let mut exact: Vec<&Key> = inner
                .slots
                .iter()
                .filter(|(k, s)| k.0 == env_id && s.state == State::Free && settled(s) && request_fits(q, &s.rec))
                .map(|(k, _)| k)
                .collect();
            exact.sort_by_key(|k| inner.slots[*k].seq);
            if let Some(key) = exact.first().map(|k| (*k).clone()) {
                // An unverified record names whatever id its sender chose: never exact.
                let confidence =
                    if inner.slots[&key].rec.unverified { Confidence::Ambiguous } else { Confidence::Exact };
                return Some(self.take(&mut inner, &key, AttributionSource::KernelEnv, confidence, 1, q));
            }
            // No record with that id yet: wait for it (the variable is the better key) until
            // the grace period ends. A record with that id that does not fit means the
            // variable was inherited or forged: fall through to the ordinary rules.
            let known = inner.slots.keys().any(|k| k.0 == env_id);
            if !known && now < q.started_at + self.cfg.env_id_grace {
                return None;
            }
        }

        let fits: Vec<(&Key, &Slot)> = inner
            .slots
            .iter()
            .filter(|(_, s)| s.state != State::Exported && settled(s))
            .filter(|(_, s)| request_fits(q, &s.rec) && time_matches(q, &s.rec, self.cfg.match_window))
            .collect();
        // Prefer the strongest evidence that still has a free record: audit over admission
        // (more fields, and the real requester), verified over unverified (a record anyone
        // could have sent loses to one that disagrees with it), exec over debug over attach.
        let group = |s: &Slot| (s.rec.source == AttributionSource::Admission, s.rec.unverified, kind_rank(s.rec.kind));
        let best = fits.iter().filter(|(_, s)| s.state == State::Free).map(|(_, s)| group(s)).min()?;
        let in_group: Vec<&(&Key, &Slot)> = fits.iter().filter(|(_, s)| group(s) == best).collect();
        // Only admission fits: where audit events come too, give the request's audit record
        // time to arrive (it outranks the review); the review answers once it has waited.
        let audit_expected = self.expect_audit.load(Ordering::Relaxed)
            || inner.audit_seen.is_some_and(|t| t + self.cfg.retention >= now);
        if best.0 && audit_expected && in_group.iter().any(|(_, s)| s.arrived + self.cfg.audit_wait > now) {
            return None;
        }
        let candidates = in_group.len() as u32;
        let key = in_group
            .iter()
            .filter(|(_, s)| s.state == State::Free)
            .min_by_key(|(_, s)| (s.rec.request_time(), s.seq))
            .map(|(k, _)| (*k).clone())?;
        let unverified = inner.slots[&key].rec.unverified;
        // Unverified evidence is never more than ambiguous, however alone it is.
        let confidence = if candidates > 1 || unverified { Confidence::Ambiguous } else { Confidence::Unique };
        let source = inner.slots[&key].rec.source;
        Some(self.take(&mut inner, &key, source, confidence, candidates, q))
    }

    /// Mark a record matched, and the records that describe the same act from another angle
    /// (the admission review of an audited exec; the attach `kubectl debug -it` makes).
    fn take(
        &self,
        inner: &mut Inner,
        key: &Key,
        source: AttributionSource,
        confidence: Confidence,
        candidates: u32,
        q: &SessionQuery,
    ) -> Attribution {
        let rec = {
            let slot = inner.slots.get_mut(key).expect("key from this map");
            slot.state = State::Matched;
            slot.rec.clone()
        };
        let effective = rec.impersonated.as_ref().unwrap_or(&rec.user).name.clone();
        let twin_kinds: &[RequestKind] = match rec.kind {
            RequestKind::Debug => &[RequestKind::Attach],
            _ => &[],
        };
        let twin = inner
            .slots
            .iter()
            .filter(|(k, s)| *k != key && s.state == State::Free && request_fits(q, &s.rec))
            .filter(|(_, s)| time_matches(q, &s.rec, self.cfg.match_window))
            .filter(|(_, s)| {
                (rec.source != AttributionSource::Admission
                    && s.rec.source == AttributionSource::Admission
                    && s.rec.kind == rec.kind)
                    || twin_kinds.contains(&s.rec.kind)
            })
            .filter(|(_, s)| s.rec.user.name == effective || s.rec.user.name == rec.user.name)
            .min_by_key(|(_, s)| (s.rec.request_time(), s.seq))
            .map(|(k, _)| k.clone());
        if let Some(t) = twin {
            if let Some(s) = inner.slots.get_mut(&t) {
                s.state = State::Matched;
            }
        }
        let trace_id = self.assign_trace_id(inner, &rec);
        self.metrics.matches.get_or_create(&vec![("confidence", confidence.as_str())]).inc();
        finish(rec.to_attribution(source, confidence, candidates, Some(trace_id)), &rec)
    }

    /// The audit id's own trace id the first time; a hash salted with the request time when
    /// another request already used that id (clients choose audit ids).
    fn assign_trace_id(&self, inner: &mut Inner, rec: &RequestRecord) -> [u8; 16] {
        let n = inner.used_ids.get(&rec.audit_id).copied().unwrap_or(0);
        if n == 0 {
            inner.used_order.push_back(rec.audit_id.clone());
            if inner.used_order.len() > self.cfg.max_records.saturating_mul(4).max(1) {
                if let Some(old) = inner.used_order.pop_front() {
                    inner.used_ids.remove(&old);
                }
            }
        }
        inner.used_ids.insert(rec.audit_id.clone(), n + 1);
        if n == 0 {
            trace_id_for_audit_id(&rec.audit_id)
        } else {
            let micros = rec.received.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_micros());
            hashed_trace_id(format!("{}\n{}\n{}", rec.audit_id, micros, n).as_bytes())
        }
    }

    /// Requests (attach, port-forward, and execs that never matched a session) whose window has
    /// closed, to be exported as sessions of their own (root span with no processes).
    pub fn take_unmatched_requests(&self, now: SystemTime) -> Vec<Attribution> {
        let mut inner = self.lock();
        self.expire(&mut inner, now.max(SystemTime::now()));
        let window = self.cfg.match_window;
        let retention = self.cfg.retention;
        let mut ready: Vec<(Option<SystemTime>, u64, Key)> = inner
            .slots
            .iter()
            .filter(|(_, s)| s.state == State::Free)
            .filter(|(_, s)| {
                let r = &s.rec;
                let Some(t) = r.request_time() else { return false };
                match r.kind {
                    _ if r.denied() => r.completed.is_some_and(|c| c <= now),
                    // A session may still ask for it during a window after its request.
                    RequestKind::Exec | RequestKind::Debug => t + window * 2 <= now,
                    RequestKind::Attach | RequestKind::PortForward => {
                        r.completed.is_some_and(|c| c <= now) || t + retention / 2 <= now
                    }
                }
            })
            .map(|(k, s)| (s.rec.request_time(), s.seq, k.clone()))
            .collect();
        ready.sort();
        let mut out = Vec::with_capacity(ready.len());
        for (_, _, key) in ready {
            let rec = match inner.slots.get_mut(&key) {
                Some(slot) => {
                    slot.state = State::Exported;
                    slot.rec.clone()
                }
                None => continue,
            };
            let trace_id = self.assign_trace_id(&mut inner, &rec);
            out.push(finish(rec.to_attribution(rec.source, Confidence::None, 0, Some(trace_id)), &rec));
        }
        out
    }

    /// The latest `ResponseComplete` time and code of a request (a session ends no earlier),
    /// which may arrive after the session matched.
    pub fn completion(&self, audit_id: &str) -> Option<(SystemTime, Option<u16>)> {
        let inner = self.lock();
        inner
            .slots
            .values()
            .filter(|s| s.rec.audit_id == audit_id)
            .find_map(|s| s.rec.completed.map(|c| (c, s.rec.response_code)))
    }
}

/// Source-specific fields: an admission review's uid is not an audit id.
fn finish(mut a: Attribution, rec: &RequestRecord) -> Attribution {
    if rec.source == AttributionSource::Admission {
        a.admission_uid = a.audit_id.take();
    }
    a
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
