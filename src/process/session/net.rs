//! Connects, their outcomes, first UDP datagrams and watched-file operations: kept in the
//! image of a session member that made them, or (outside sessions) handed to the outbound
//! folding of `process::activity`.

use crate::capture::event::{
    ConnectEvent, ConnectResultEvent, FileEvent, ProcessKey, ResultPhase, SockEvent, SockOp, UdpSendEvent,
};
use crate::model::{ActivityMarks, ConnectOutcome, ConnectRecord, FileRecord, ImageRecord, Live, NetOp, SessionUpdate};
use crate::process::table::CookieSlot;

use super::{record_of, SessionTracker, MAX_FILES_PER_IMAGE};

/// Connects an image keeps one by one; later ones fold per destination
/// (`podtrail.folded.count` on the connect span).
pub const KEEP_CONNECTS: usize = 256;
/// Connect records an image holds at most (kept and folded): past it, a connect to a new
/// destination is only counted (`podtrail.session.connects_over_cap`).
pub const MAX_CONNECT_RECORDS: usize = 1024;

impl SessionTracker {
    pub(super) fn on_connect(&mut self, c: &ConnectEvent, out: &mut Vec<SessionUpdate>) {
        let Some(key) = self.table.by_pid(c.pid) else {
            self.counters.connects_unknown_pid.inc();
            return;
        };
        let scope = self.activity.ranges.classify(c.addr);
        let name = self.dns.name_for(c.cgroup_id, c.addr, c.ts_ns);
        let rec = ConnectRecord { scope: Some(scope), name, ..ConnectRecord::pending(c) };
        let Some((slot, new)) = self.keep_connect(key, rec, c.cookie, out) else { return };
        self.table.set_cookie(c.cookie, slot);
        if new {
            self.announce_net(slot, out); // a UDP connect waits for its first datagram
        }
    }

    /// A session image's network record said at once when a rule can match it.
    fn announce_net(&self, slot: CookieSlot, out: &mut Vec<SessionUpdate>) {
        let subject = self
            .table
            .get(&slot.key)
            .and_then(|p| p.images.get(slot.image))
            .and_then(|i| i.connects.get(slot.connect))
            .is_some_and(|c| c.is_rule_subject());
        if subject {
            self.announce(slot.key, slot.image, Live::Net { index: slot.connect as u32 }, out);
        }
    }

    /// A way out that is not a connect (issue 18): kept in the image like a connect; a
    /// datagram to a destination this image already sent to, a connection accepted from a
    /// client address already seen on the same local address, a raw socket of a transport
    /// already opened, folds into that record's count (`activity.count`). Outside sessions,
    /// datagrams go to the outbound folding like connects; the rest is not recorded there.
    pub(super) fn on_sock(&mut self, s: &SockEvent, out: &mut Vec<SessionUpdate>) {
        let found = match s.start_ns {
            0 => self.table.by_pid(s.pid),
            st => self.table.resolve(ProcessKey { pid: s.pid, start_ns: st }).or_else(|| self.table.by_pid(s.pid)),
        };
        let Some(key) = found else {
            self.counters.sockets_unknown_pid.inc();
            return;
        };
        let mut rec = ConnectRecord::from_sock(s);
        if s.op != SockOp::Create {
            rec.scope = Some(self.activity.ranges.classify(rec.addr));
        }
        if s.op == SockOp::SendTo {
            rec.name = self.dns.name_for(s.cgroup_id, rec.addr, s.ts_ns);
        }
        if s.op != SockOp::SendTo {
            // folds need the image; outside sessions these are not recorded
            self.keep_sock(key, rec, out);
            return;
        }
        self.keep_connect(key, rec, s.cookie, out);
    }

    /// The current image of a session member (one made for a process seen only by its fork),
    /// after a node join's promotion; None outside sessions.
    fn member_image(&mut self, key: ProcessKey, out: &mut Vec<SessionUpdate>) -> Option<&mut ImageRecord> {
        let p = self.table.get(&key)?;
        if let Some(j) = p.join.clone() {
            if self.session_container(p.session) != Some(j.container.cgroup_id) {
                self.promote(*j, key, None, out);
            }
        }
        let p = self.table.get_mut(&key)?;
        p.session?;
        if p.images.is_empty() {
            p.images.push(ImageRecord { start_ns: p.key.start_ns, inherited: true, ..Default::default() });
        }
        p.images.last_mut()
    }

    /// A way out other than a connect into its image ([`fold_or_push`]); past the image's cap
    /// on records, one to something new is only counted.
    fn keep_sock(&mut self, key: ProcessKey, rec: ConnectRecord, out: &mut Vec<SessionUpdate>) {
        let Some(img) = self.member_image(key, out) else { return };
        match fold_or_push(img, rec) {
            Kept::Folded => {}
            Kept::New(connect) => {
                let image = self.table.get(&key).map_or(0, |p| p.images.len().saturating_sub(1));
                self.announce_net(CookieSlot { key, image, connect }, out);
            }
            Kept::Full => {
                img.connects_over_cap += 1;
                self.counters.connects_over_cap.inc();
            }
        }
    }

    /// A connect or a datagram: in its image when the process is a session member (the slot
    /// its outcome will find), else to the outbound folding. The first connects of an image
    /// are kept one by one; after those, one record per destination counts its repeats; past
    /// the cap on records, a connect to a new destination is only counted (memory stays
    /// bounded whatever one process does).
    fn keep_connect(
        &mut self,
        key: ProcessKey,
        rec: ConnectRecord,
        cookie: u64,
        out: &mut Vec<SessionUpdate>,
    ) -> Option<(CookieSlot, bool)> {
        if self.member_image(key, out).is_none() {
            self.outbound_connect(rec, cookie, key);
            return None; // sessions' connects are kept in their images; others only as outbound
        }
        if rec.op == NetOp::SendTo {
            self.keep_sock(key, rec, out);
            return None;
        }
        let p = self.table.get_mut(&key)?;
        let image = p.images.len() - 1;
        let exec_index = p.images[image].exec_index;
        let img = &mut p.images[image];
        let (connect, new) = if img.connects.len() < KEEP_CONNECTS {
            img.connects.push(rec);
            (img.connects.len() - 1, true)
        } else {
            let slot = p.connect_index.get_or_insert_with(|| Box::new((exec_index, Default::default())));
            if slot.0 != exec_index {
                **slot = (exec_index, Default::default());
            }
            let index = &mut slot.1;
            let dest = (rec.transport, rec.addr, rec.port);
            match index.get(&dest) {
                Some(&at) => {
                    let r = &mut img.connects[at];
                    let a = r.activity.get_or_insert(ActivityMarks {
                        count: 1,
                        first_ns: r.ts_ns,
                        last_ns: r.ts_ns,
                        suppressed_before: 0,
                    });
                    a.count += 1;
                    a.last_ns = a.last_ns.max(rec.ts_ns);
                    self.counters.connects_folded.inc();
                    (at, false)
                }
                None if img.connects.len() < MAX_CONNECT_RECORDS => {
                    img.connects.push(rec);
                    index.insert(dest, img.connects.len() - 1);
                    (img.connects.len() - 1, true)
                }
                None => {
                    img.connects_over_cap += 1;
                    self.counters.connects_over_cap.inc();
                    return None;
                }
            }
        };
        Some((CookieSlot { key, image, connect }, new))
    }

    /// A connect (or datagram) outside every session: an outbound record when it comes from a
    /// container process and its destination is in a recorded scope.
    pub(super) fn outbound_connect(&mut self, conn: ConnectRecord, cookie: u64, key: ProcessKey) {
        let Some(p) = self.table.get(&key) else { return };
        // the scope the decision was made on is the one the span shows (ranges learned
        // before the record leaves do not relabel it)
        let scope = conn.scope.unwrap_or_else(|| self.activity.ranges.classify(conn.addr));
        if !self.activity.outbound_scope(scope) || self.containers.get(p.cgroup_id).is_none() {
            return;
        }
        let container = self.containers.get(p.cgroup_id).map(|x| x.info.clone()).unwrap_or_default();
        let mut rec = record_of(p, None, None);
        if let Some(img) = rec.images.pop() {
            rec.images = vec![ImageRecord { connects: Vec::new(), files: Vec::new(), ..img }];
        }
        let conn = ConnectRecord { scope: Some(scope), ..conn };
        let cg = p.cgroup_id;
        self.outbound.connect(&self.activity, conn, cookie, rec, container, cg);
    }

    pub(super) fn connect_mut(&mut self, cookie: u64) -> Option<&mut ConnectRecord> {
        if let Some(rec) = self.outbound.result(cookie) {
            return Some(rec);
        }
        let slot = self.table.cookie(cookie)?;
        self.table.get_mut(&slot.key)?.images.get_mut(slot.image)?.connects.get_mut(slot.connect)
    }

    pub(super) fn on_result(&mut self, r: &ConnectResultEvent) {
        let Some(rec) = self.connect_mut(r.cookie) else {
            self.counters.results_unmatched.inc();
            return;
        };
        let outcome = ConnectOutcome::from_error(r.error);
        if outcome != ConnectOutcome::Pending {
            // the first final answer wins, except that a failure corrects an earlier success
            // (a handshake that closed without an error code, then connect(2) said why)
            if rec.outcome == ConnectOutcome::Pending || (r.error != 0 && rec.error.is_none()) {
                rec.outcome = outcome;
                rec.error = (r.error != 0).then_some(r.error);
                rec.end_ns = Some(r.ts_ns);
            }
        }
        if r.phase == ResultPhase::TcpState {
            if let (Some(a), Some(port)) = (r.final_addr, r.final_port) {
                if (a, port) != (rec.addr, rec.port) && !a.is_unspecified() {
                    rec.final_addr = Some((a, port));
                }
            }
        }
    }

    /// A watched-file operation goes to the image that made it (sessions' processes only).
    pub(super) fn on_file(&mut self, f: &FileEvent, out: &mut Vec<SessionUpdate>) {
        let Some(key) = self.table.resolve(f.key()).or_else(|| self.table.by_pid(f.pid)) else { return };
        let Some(p) = self.table.get_mut(&key) else { return };
        if p.session.is_none() {
            return;
        }
        if let Some(img) = p.images.last_mut() {
            if img.files.len() >= MAX_FILES_PER_IMAGE {
                self.counters.files_over_cap.inc();
                return;
            }
            img.files.push(FileRecord {
                ts_ns: f.ts_ns,
                op: f.op,
                write: f.write,
                flags: f.flags,
                path: f.path.clone(),
                path2: f.path2.clone(),
                result: f.result,
                truncated: f.truncated,
                given: f.given.clone(),
                resolved: f.resolved.clone(),
                io_uring: f.io_uring,
            });
            let at = p.images.len() - 1;
            self.announce(key, at, Live::File, out);
        }
    }

    pub(super) fn on_udp_send(&mut self, u: &UdpSendEvent, out: &mut Vec<SessionUpdate>) {
        if self.outbound.udp_sent(&self.activity, u.cookie, u.dest) {
            return;
        }
        // a session's UDP connect becomes traffic (a rule subject) with its first datagram
        let slot = self.table.cookie(u.cookie);
        match self.connect_mut(u.cookie) {
            Some(rec) => {
                let first = !rec.udp_sent;
                rec.udp_sent = true;
                // the connected socket's datagram went elsewhere than the connect said (a
                // program rewrote it): the real destination, as for a TCP handshake's
                if let Some(d) = u.dest.filter(|d| *d != (rec.addr, rec.port) && !d.0.is_unspecified()) {
                    rec.final_addr = Some(d);
                }
                if let Some(slot) = slot.filter(|_| first) {
                    self.announce_net(slot, out);
                }
            }
            None => {
                self.counters.results_unmatched.inc();
            }
        }
    }
}

/// How many of an image's latest records a new datagram, accept or raw socket is compared
/// with for folding: a bounded cost per event; a record further back gets a new record
/// (still counted exactly, in two records).
const FOLD_SCAN: usize = 64;

/// What became of a way out offered to an image.
enum Kept {
    /// Counted in a like record.
    Folded,
    /// A record of its own, at this index of the image's records.
    New(usize),
    /// The image already holds `MAX_CONNECT_RECORDS`: only counted.
    Full,
}

/// Folds `rec` into a like record of the image, else pushes it.
fn fold_or_push(img: &mut ImageRecord, rec: ConnectRecord) -> Kept {
    let same = |c: &ConnectRecord| {
        c.op == rec.op
            && c.transport == rec.transport
            && match rec.op {
                NetOp::SendTo => (c.addr, c.port) == (rec.addr, rec.port),
                NetOp::Accept => c.addr == rec.addr && c.local == rec.local,
                NetOp::Socket => true,
                NetOp::Connect | NetOp::Listen => false,
            }
    };
    if let Some(c) = img.connects.iter_mut().rev().take(FOLD_SCAN).find(|c| same(c)) {
        let a = c.activity.get_or_insert(crate::model::ActivityMarks {
            count: 1,
            first_ns: c.ts_ns,
            last_ns: c.ts_ns,
            suppressed_before: 0,
        });
        a.count += 1;
        a.last_ns = a.last_ns.max(rec.ts_ns);
        return Kept::Folded;
    }
    if img.connects.len() >= MAX_CONNECT_RECORDS {
        return Kept::Full;
    }
    let mut rec = rec;
    if rec.op != NetOp::Listen && rec.activity.is_none() {
        rec.activity = Some(crate::model::ActivityMarks {
            count: 1,
            first_ns: rec.ts_ns,
            last_ns: rec.ts_ns,
            suppressed_before: 0,
        });
    }
    img.connects.push(rec);
    Kept::New(img.connects.len() - 1)
}
