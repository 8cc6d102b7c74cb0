//! Outbound connects outside sessions (see the parent module for what is recorded and why):
//! folded per (process image, destination) over a window, limited per container by a token
//! bucket, and every connect accounted for exactly once, as a record's count, a fold, or a
//! suppression mark. Bounded: pending outcomes are an LRU of `MAX_PENDING` cookies (evictions
//! counted).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::ActivityConfig;
use crate::capture::event::{ProcessKey, Transport};
use crate::lru::Lru;
use crate::model::{
    ActivityMarks, ConnectOutcome, ConnectRecord, ContainerInfo, NetOp, ProcessRecord, SessionId, SessionInfo,
    SessionKind, SessionUpdate,
};

/// One process image's connects to one destination, folded over a window.
#[derive(Clone, Debug)]
struct Window {
    first: ConnectRecord,
    /// The first connect's socket cookie, while its outcome may still come.
    cookie: Option<u64>,
    count: u64,
    last_ns: u64,
    suppressed_before: u64,
    proc: ProcessRecord,
    container: Arc<ContainerInfo>,
}

/// (process image, connect or sendto, transport, destination, serial): the serial is 0 when
/// folding, and unique per connect when `fold_window_ms` is 0 (no two connects share a record).
type WindowKey = (ProcessKey, u32, NetOp, Transport, IpAddr, u16, u64);

/// A token bucket per container, in event time.
#[derive(Clone, Debug)]
struct Bucket {
    tokens: f64,
    at_ns: u64,
    /// Suppressed since this container's last record.
    unmarked: u64,
    /// The last connect suppressed (time, and what a mark-only record shows).
    last: Option<Box<Suppressed>>,
}

#[derive(Clone, Debug)]
struct Suppressed {
    c: ConnectRecord,
    proc: ProcessRecord,
    container: Arc<ContainerInfo>,
}

/// Outbound connects outside sessions: folded by (process image, destination) over a window,
/// limited per container, then handed out as one trace per window.
///
/// Accounting: every connect counted here is exactly one of `opened` (it opened a record,
/// whose count includes it), `folded` (into an open record's count) or `suppressed` (marked as
/// `suppressed_before` on a later record of its container). A container whose suppressed
/// connects have no later record (the flood stopped) gets a mark-only record (count 0) once a
/// fold window (at least 1 s) passed without suppression, or at shutdown: nothing stays
/// unmarked.
#[derive(Debug, Default)]
pub struct Outbound {
    windows: HashMap<WindowKey, Window>,
    /// Connects waiting for their outcome or (UDP) their first datagram: cookie -> window or
    /// the UDP connect not yet counted. Bounded: when full the least recently used goes
    /// (counted, [`Outbound::cookies_evicted`]): a window then shows its first connect's
    /// outcome as pending, or a UDP connect that sends later is not recorded.
    cookies: Cookies,
    buckets: HashMap<u64, Bucket>,
    /// No window can be due before this (a lower bound of the oldest window's first connect).
    windows_from_ns: u64,
    /// No mark-only record can be due before this (a lower bound of the oldest last
    /// suppression among containers with unmarked connects).
    unmarked_from_ns: u64,
    /// When idle buckets were last dropped.
    pruned_at_ns: u64,
    /// Connects suppressed by the rate limit, in total
    /// (`podtrail_events_lost_total{reason="rate_limit"}` after [`Outbound::count_into`]).
    pub suppressed: Counter,
    /// Connects folded into a record that was already open (each record counts 1 itself;
    /// `podtrail_outbound_connects_total{how="folded"}`).
    pub folded: Counter,
    /// Records handed out (each one trace), mark-only records included
    /// (`podtrail_outbound_records_total`).
    pub records: Counter,
    /// Records handed out that count no connect of their own, only suppressed marks.
    pub mark_only: u64,
    /// Connects that opened a record (each record counts its first connect itself;
    /// `podtrail_outbound_connects_total{how="recorded"}`).
    pub opened: Counter,
    /// Connects counted in records not handed out yet
    /// (`podtrail_outbound_pending{what="open"}` after [`Outbound::count_into`]).
    pub open_connects: Gauge,
    /// Suppressed connects not marked on a record yet
    /// (`podtrail_outbound_pending{what="unmarked"}`).
    ///
    /// Both move with the counters above, not on the stage's tick like the other gauges, and
    /// are registered before them (a scrape reads them first): a scrape that reads them at 0
    /// must not find a record still to come (on the tick, a scrape soon after a short flood
    /// read the gauges of before it with the flood's counts, and the mark-only record left
    /// after it: tests/e2e_flood.rs).
    pub unmarked: Gauge,
    /// Serial that keeps the trace ids of one process's records apart.
    serial: u32,
    /// Serial of unfolded records (`fold_window_ms = 0`).
    unfolded: u64,
}

/// [`Outbound`]'s pending cookies, at most [`MAX_PENDING`].
#[derive(Debug)]
struct Cookies(Lru<u64, Pending>);

impl Default for Cookies {
    fn default() -> Self {
        Cookies(Lru::new(MAX_PENDING))
    }
}

impl std::ops::Deref for Cookies {
    type Target = Lru<u64, Pending>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Cookies {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

#[derive(Clone, Debug)]
enum Pending {
    /// Counted in this window (its outcome may still come).
    Counted(WindowKey),
    /// A UDP connect not yet counted: it counts at its first datagram (boxed: most entries
    /// are `Counted`, and the cache holds up to [`MAX_PENDING`] of them).
    Udp(Box<(ConnectRecord, ProcessRecord, Arc<ContainerInfo>, u64)>),
}

/// How often idle rate-limit buckets are dropped.
const PRUNE_EVERY_NS: u64 = 60_000_000_000;

/// Cookies remembered at once (a process that connects and never sends).
const MAX_PENDING: usize = 65_536;

/// How long past its fold window a record waits for its first connect's outcome (a blocking
/// connect's comes at once; with no folding the window is 0 and this is all the wait).
const OUTCOME_WAIT_NS: u64 = 1_000_000_000;

/// A mark-only record waits for a fold window, and at least this long, without suppression:
/// with no folding (window 0) a sustained flood would otherwise make one per flush.
const MARK_QUIET_NS: u64 = 1_000_000_000;

impl Outbound {
    /// Count into the shared series from now on (before the first connect).
    pub fn count_into(&mut self, m: &crate::metrics::Metrics) {
        self.suppressed = m.events_lost.get_or_create(&vec![("reason", "rate_limit")]).clone();
        self.folded = m.outbound_connects.get_or_create(&vec![("how", "folded")]).clone();
        self.opened = m.outbound_connects.get_or_create(&vec![("how", "recorded")]).clone();
        self.records = m.outbound_records.clone();
        self.open_connects = m.outbound_pending.get_or_create(&vec![("what", "open")]).clone();
        self.unmarked = m.outbound_pending.get_or_create(&vec![("what", "unmarked")]).clone();
    }

    /// A connect by a container process outside every session, already judged in scope.
    /// `proc` is its record (current image only, no connects), `cgroup_id` its container.
    pub fn connect(
        &mut self,
        cfg: &ActivityConfig,
        c: ConnectRecord,
        cookie: u64,
        proc: ProcessRecord,
        container: Arc<ContainerInfo>,
        cgroup_id: u64,
    ) {
        if c.op == NetOp::SendTo {
            // the datagram left: it counts now, and no outcome or datagram follows by cookie
            self.count(cfg, c, cookie, proc, container, cgroup_id);
            return;
        }
        if c.transport == Transport::Udp {
            self.cookies.insert(cookie, Pending::Udp(Box::new((c, proc, container, cgroup_id))));
            return;
        }
        if let Some((k, true)) = self.count(cfg, c, cookie, proc, container, cgroup_id) {
            self.cookies.insert(cookie, Pending::Counted(k));
        }
    }

    /// The first datagram of a connected UDP socket: its connect counts now. `dest` is where
    /// the datagram really went (from its headers).
    pub fn udp_sent(&mut self, cfg: &ActivityConfig, cookie: u64, dest: Option<(IpAddr, u16)>) -> bool {
        match self.cookies.remove(&cookie) {
            Some(Pending::Udp(b)) => {
                let (mut c, proc, container, cg) = *b;
                c.udp_sent = true;
                c.final_addr = dest.filter(|d| *d != (c.addr, c.port) && !d.0.is_unspecified());
                if let Some((k, true)) = self.count(cfg, c, cookie, proc, container, cg) {
                    self.cookies.insert(cookie, Pending::Counted(k));
                }
                true
            }
            Some(p) => {
                self.cookies.insert(cookie, p);
                true
            }
            None => false,
        }
    }

    /// The record a result or datagram for `cookie` belongs to (only a window's first connect
    /// keeps its cookie: the outcome shown is the first one's).
    pub fn result(&mut self, cookie: u64) -> Option<&mut ConnectRecord> {
        match self.cookies.get_mut(&cookie)? {
            Pending::Counted(k) => self.windows.get_mut(k).map(|w| &mut w.first),
            Pending::Udp(b) => Some(&mut b.0),
        }
    }

    /// Counts a connect: folded into its open window, or a new window, or suppressed (None).
    /// The flag says the window is new (only its first connect's outcome is kept).
    fn count(
        &mut self,
        cfg: &ActivityConfig,
        c: ConnectRecord,
        cookie: u64,
        proc: ProcessRecord,
        container: Arc<ContainerInfo>,
        cgroup_id: u64,
    ) -> Option<(WindowKey, bool)> {
        let exec_index = proc.images.last().map(|i| i.exec_index).unwrap_or(0);
        let fold = cfg.fold_window_ms > 0;
        let serial = if fold {
            0
        } else {
            self.unfolded += 1;
            self.unfolded
        };
        let k: WindowKey = (proc.key, exec_index, c.op, c.transport, crate::scope::normalize(c.addr), c.port, serial);
        if let Some(w) = self.windows.get_mut(&k).filter(|_| fold) {
            w.count += 1;
            w.last_ns = w.last_ns.max(c.ts_ns);
            self.folded.inc();
            self.open_connects.inc();
            return Some((k, false));
        }
        let b = self.buckets.entry(cgroup_id).or_insert(Bucket {
            tokens: cfg.burst as f64,
            at_ns: c.ts_ns,
            unmarked: 0,
            last: None,
        });
        if cfg.rate_per_s > 0 {
            let dt = c.ts_ns.saturating_sub(b.at_ns) as f64 / 1e9;
            b.tokens = (b.tokens + dt * cfg.rate_per_s as f64).min(cfg.burst.max(1) as f64);
            b.at_ns = b.at_ns.max(c.ts_ns);
            if b.tokens < 1.0 {
                if b.unmarked == 0 {
                    self.unmarked_from_ns =
                        if self.unmarked.get() == 0 { c.ts_ns } else { self.unmarked_from_ns.min(c.ts_ns) };
                }
                b.unmarked += 1;
                b.last = Some(Box::new(Suppressed { c, proc, container }));
                self.suppressed.inc();
                self.unmarked.inc();
                return None;
            }
            b.tokens -= 1.0;
        }
        let suppressed_before = std::mem::take(&mut b.unmarked);
        b.last = None;
        self.opened.inc();
        self.open_connects.inc();
        // the marks move into the open record: counted open before they leave unmarked
        self.unmarked.dec_by(suppressed_before as i64);
        self.windows_from_ns = if self.windows.is_empty() { c.ts_ns } else { self.windows_from_ns.min(c.ts_ns) };
        let last_ns = c.ts_ns;
        let w = Window { first: c, cookie: Some(cookie), count: 1, last_ns, suppressed_before, proc, container };
        self.windows.insert(k, w);
        Some((k, true))
    }

    /// Windows older than the fold window at `now_ns` (all with `all`), as traces; then, for
    /// each container whose suppressed connects are still unmarked after a fold window (at
    /// least [`MARK_QUIET_NS`]) without suppression, or at `all`, a mark-only record.
    pub fn flush(&mut self, cfg: &ActivityConfig, now_ns: u64, all: bool, out: &mut Vec<SessionUpdate>) {
        let window = cfg.fold_window_ms.saturating_mul(1_000_000);
        if !self.windows.is_empty() && (all || now_ns.saturating_sub(self.windows_from_ns) >= window) {
            let is_due = |w: &Window| {
                let age = now_ns.saturating_sub(w.first.ts_ns);
                all || (age >= window
                    && (w.first.outcome != ConnectOutcome::Pending || age >= window.saturating_add(OUTCOME_WAIT_NS)))
            };
            let mut due: Vec<(u64, WindowKey)> =
                self.windows.iter().filter(|(_, w)| is_due(w)).map(|(k, w)| (w.first.ts_ns, *k)).collect();
            due.sort_unstable_by_key(|(ts, _)| *ts);
            for (_, k) in due {
                if let Some(w) = self.windows.remove(&k) {
                    self.emit(k, w, out);
                }
            }
            self.windows_from_ns = self.windows.values().map(|w| w.first.ts_ns).min().unwrap_or(0);
        }
        let quiet = window.max(MARK_QUIET_NS);
        if self.unmarked.get() > 0 && (all || now_ns.saturating_sub(self.unmarked_from_ns) >= quiet) {
            let mut due: Vec<(u64, u64)> = self
                .buckets
                .iter()
                .filter_map(|(cg, b)| Some((b.last.as_ref()?.c.ts_ns, *cg, b.unmarked)))
                .filter(|&(ts, _, n)| n > 0 && (all || now_ns.saturating_sub(ts) >= quiet))
                .map(|(ts, cg, _)| (ts, cg))
                .collect();
            due.sort_unstable();
            for (_, cg) in due {
                self.mark_only(cg, out);
            }
            self.unmarked_from_ns = self
                .buckets
                .values()
                .filter(|b| b.unmarked > 0)
                .filter_map(|b| b.last.as_ref().map(|l| l.c.ts_ns))
                .min()
                .unwrap_or(0);
        }
        if now_ns.saturating_sub(self.pruned_at_ns) >= PRUNE_EVERY_NS {
            self.pruned_at_ns = now_ns;
            self.prune_buckets(cfg, now_ns);
        }
        if self.windows.is_empty() && self.cookies.len() > MAX_PENDING / 2 {
            self.cookies.retain(|_, p| matches!(p, Pending::Udp(..)));
        }
    }

    /// Windows of a process that exited.
    pub fn process_exited(&mut self, key: ProcessKey, out: &mut Vec<SessionUpdate>) {
        let mut mine: Vec<(u64, WindowKey)> =
            self.windows.iter().filter(|(k, _)| k.0 == key).map(|(k, w)| (w.first.ts_ns, *k)).collect();
        mine.sort_unstable_by_key(|(ts, _)| *ts);
        for (_, k) in mine {
            if let Some(w) = self.windows.remove(&k) {
                self.emit(k, w, out);
            }
        }
        self.cookies.retain(|_, p| match p {
            Pending::Counted(k) => k.0 != key,
            Pending::Udp(b) => b.1.key != key,
        });
    }

    /// Pending cookies forgotten to make room (least recently used first), in total.
    pub fn cookies_evicted(&self) -> u64 {
        self.cookies.evicted()
    }

    /// Open windows (for tests and the metrics).
    pub fn open(&self) -> usize {
        self.windows.len()
    }

    /// Containers with a rate-limit bucket (for tests and the metrics).
    pub fn limited_containers(&self) -> usize {
        self.buckets.len()
    }

    /// Drops the buckets of containers idle long enough to have refilled completely and with
    /// nothing unmarked: a fresh bucket starts full, so forgetting them changes no decision,
    /// and containers that come and go no longer grow the map.
    fn prune_buckets(&mut self, cfg: &ActivityConfig, now_ns: u64) {
        let refill_ns = match cfg.rate_per_s {
            0 => 0,
            r => (cfg.burst.max(1) as u64).saturating_mul(1_000_000_000) / r as u64,
        };
        self.buckets.retain(|_, b| b.unmarked > 0 || now_ns.saturating_sub(b.at_ns) < refill_ns);
    }

    /// The suppressed connects of container `cg` that no record marked: one record that stands
    /// for none of its own (count 0), showing the last connect suppressed.
    fn mark_only(&mut self, cg: u64, out: &mut Vec<SessionUpdate>) {
        let Some(b) = self.buckets.get_mut(&cg) else { return };
        let (n, Some(last)) = (std::mem::take(&mut b.unmarked), b.last.take()) else { return };
        self.mark_only += 1;
        let Suppressed { c, proc, container } = *last;
        let last_ns = c.ts_ns;
        let w = Window { first: c, cookie: None, count: 0, last_ns, suppressed_before: n, proc, container };
        self.emit_record(w, out);
        // after the record is counted: a scrape that reads none unmarked reads it too
        self.unmarked.dec_by(n as i64);
    }

    fn emit(&mut self, k: WindowKey, w: Window, out: &mut Vec<SessionUpdate>) {
        let count = w.count;
        if let Some(cookie) = w.cookie {
            if matches!(self.cookies.peek(&cookie), Some(Pending::Counted(ck)) if *ck == k) {
                self.cookies.remove(&cookie);
            }
        }
        self.emit_record(w, out);
        // after the record is counted, as in `mark_only`
        self.open_connects.dec_by(count as i64);
    }

    fn emit_record(&mut self, w: Window, out: &mut Vec<SessionUpdate>) {
        self.records.inc();
        self.serial = self.serial.wrapping_add(1);
        let mut c = w.first;
        c.activity = Some(ActivityMarks {
            count: w.count,
            first_ns: c.ts_ns,
            last_ns: w.last_ns,
            suppressed_before: w.suppressed_before,
        });
        let end_ns = w.last_ns.max(c.end_ns.unwrap_or(c.ts_ns));
        // a trace id of its own: the process's pid with the top bit set (no real pid has it),
        // and the first connect's time plus a serial (two records of one process never share)
        let id = SessionId(ProcessKey {
            pid: w.proc.key.pid | 0x8000_0000,
            start_ns: c.ts_ns ^ ((self.serial as u64) << 48),
        });
        let mut proc = w.proc;
        proc.parent = None;
        proc.parent_exec_index = None;
        if let Some(img) = proc.images.last_mut() {
            img.connects = vec![c.clone()];
            img.end_ns = Some(img.end_ns.unwrap_or(end_ns).max(end_ns));
        }
        let info = std::sync::Arc::new(SessionInfo {
            end_ns: Some(end_ns),
            root_argv: proc.images.last().map(|i| i.argv.to_vec()).unwrap_or_default(),
            ..SessionInfo::new(id, SessionKind::Outbound, w.container, c.ts_ns)
        });
        out.push(SessionUpdate::Started(info.clone()));
        out.push(SessionUpdate::ProcessEnded(info.clone(), proc));
        out.push(SessionUpdate::Ended(info, Vec::new()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A live process (pid 7) with no image yet.
    fn proc7() -> ProcessRecord {
        ProcessRecord {
            key: ProcessKey { pid: 7, start_ns: 1 },
            parent: None,
            parent_exec_index: None,
            nspid: 7,
            fork_ns: 1,
            exit_ns: None,
            exit: None,
            from_proc: false,
            images: Vec::new(),
            leaf: false,
        }
    }

    #[test]
    fn pending_cookies_past_the_cap_forget_the_least_recently_used_one_and_count_it() {
        let cfg = ActivityConfig::default();
        let udp = |cookie: u64| {
            let ev = crate::capture::event::ConnectEvent {
                ts_ns: cookie,
                pid: 7,
                tid: 7,
                cgroup_id: 1,
                cookie,
                transport: Transport::Udp,
                addr: "8.8.8.8".parse().unwrap(),
                port: 53,
                mapped: false,
            };
            let proc = proc7();
            (ConnectRecord::pending(&ev), proc)
        };
        let mut o = Outbound::default();
        for cookie in 1..=MAX_PENDING as u64 {
            let (c, p) = udp(cookie);
            o.connect(&cfg, c, cookie, p, Default::default(), 1);
        }
        // the first socket sends: it is now the most recently used
        assert!(o.udp_sent(&cfg, 1, None));
        assert_eq!(o.cookies_evicted(), 0, "nothing forgotten below the cap");
        let (c, p) = udp(MAX_PENDING as u64 + 1);
        o.connect(&cfg, c, MAX_PENDING as u64 + 1, p, Default::default(), 1);
        assert_eq!(o.cookies_evicted(), 1, "one forgotten, not all");
        assert!(o.result(2).is_none(), "the least recently used cookie went");
        assert!(o.result(1).is_some() && o.result(3).is_some() && o.result(MAX_PENDING as u64 + 1).is_some());
    }

    #[test]
    fn the_pending_gauges_move_with_the_counters() {
        // a scrape reads the counters and the pending gauges together: gauges at 0 must mean
        // no record is still to come (published on the stage's tick, they lagged: a scrape just
        // after a short flood read its counts with the gauges of before it, 0 and 0, and the
        // mark-only record came later; tests/e2e_flood.rs)
        let cfg = ActivityConfig { burst: 1, rate_per_s: 1, ..ActivityConfig::default() };
        let m = crate::metrics::Metrics::default();
        let mut o = Outbound::default();
        o.count_into(&m);
        let pending = |what: &'static str| m.outbound_pending.get_or_create(&vec![("what", what)]).get();
        let tcp = |d: u64| {
            let ev = crate::capture::event::ConnectEvent {
                ts_ns: 1_000 + d,
                pid: 7,
                tid: 7,
                cgroup_id: 1,
                cookie: d,
                transport: Transport::Tcp,
                addr: format!("198.18.0.{}", 1 + d).parse().unwrap(),
                port: 443,
                mapped: false,
            };
            ConnectRecord::pending(&ev)
        };
        let proc = proc7();
        // one record, then two destinations over the burst
        for d in 0..3 {
            o.connect(&cfg, tcp(d), d, proc.clone(), Default::default(), 1);
        }
        assert_eq!((pending("open"), pending("unmarked")), (1, 2), "no tick needed");
        assert_eq!(
            (m.outbound_records.get(), m.events_lost.get_or_create(&vec![("reason", "rate_limit")]).get()),
            (0, 2)
        );
        let mut out = Vec::new();
        o.flush(&cfg, 100_000_000_000, false, &mut out);
        assert_eq!(m.outbound_records.get(), 2, "the record and a mark-only one for the two suppressed");
        assert_eq!((pending("open"), pending("unmarked")), (0, 0));
    }
}
