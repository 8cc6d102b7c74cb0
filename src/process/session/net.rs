//! Connects, their outcomes, first UDP datagrams and watched-file operations: kept in the
//! image of a session member that made them, or (outside sessions) handed to the outbound
//! folding of `process::activity`.

use crate::capture::event::{ConnectEvent, ConnectResultEvent, FileEvent, ProcessKey, ResultPhase, UdpSendEvent};
use crate::model::{ActivityMarks, ConnectOutcome, ConnectRecord, FileRecord, ImageRecord, SessionUpdate};
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
            self.counters.connects_unknown_pid += 1;
            return;
        };
        let Some(p) = self.table.get(&key) else { return };
        if let Some(j) = p.join.clone() {
            if self.session_container(p.session) != Some(j.container.cgroup_id) {
                self.promote(j, key, None, out);
            }
        }
        let Some(p) = self.table.get_mut(&key) else { return };
        if p.session.is_none() {
            self.outbound_connect(c, key);
            return; // sessions' connects are kept in their images; others only as outbound
        }
        if p.images.is_empty() {
            p.images.push(ImageRecord {
                exec_index: 0,
                start_ns: p.key.start_ns,
                end_ns: None,
                inherited: true,
                argv: Vec::new(),
                argv_truncated: false,
                argv_redacted: 0,
                filename: Vec::new(),
                interp: None,
                exe_path: Vec::new(),
                fileless: false,
                tty: false,
                uid: 0,
                euid: 0,
                connects: Vec::new(),
                files: Vec::new(),
                exe_written_ns: None,
                connects_over_cap: 0,
            });
        }
        let image = p.images.len() - 1;
        let exec_index = p.images[image].exec_index;
        let scope = self.activity.ranges.classify(c.addr);
        let rec = ConnectRecord { scope: Some(scope), ..ConnectRecord::pending(c) };
        let img = &mut p.images[image];
        // the first connects are kept one by one; after those, one record per destination
        // counts its repeats; past the cap on records, connects are only counted
        let connect = if img.connects.len() < KEEP_CONNECTS {
            img.connects.push(rec);
            img.connects.len() - 1
        } else {
            let index = match &mut p.connect_index {
                Some((i, m)) if *i == exec_index => m,
                slot => &mut slot.insert((exec_index, Default::default())).1,
            };
            let dest = (c.transport, c.addr, c.port);
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
                    a.last_ns = a.last_ns.max(c.ts_ns);
                    self.counters.connects_folded += 1;
                    at
                }
                None if img.connects.len() < MAX_CONNECT_RECORDS => {
                    img.connects.push(rec);
                    index.insert(dest, img.connects.len() - 1);
                    img.connects.len() - 1
                }
                None => {
                    img.connects_over_cap += 1;
                    self.counters.connects_over_cap += 1;
                    return;
                }
            }
        };
        self.table.set_cookie(c.cookie, CookieSlot { key, image, connect });
    }

    /// A connect outside every session: an outbound record when it comes from a container
    /// process and its destination is in a recorded scope.
    pub(super) fn outbound_connect(&mut self, c: &ConnectEvent, key: ProcessKey) {
        let Some(p) = self.table.get(&key) else { return };
        let scope = self.activity.ranges.classify(c.addr);
        if !self.activity.outbound_scope(scope) || self.containers.get(p.cgroup_id).is_none() {
            return;
        }
        let container = self.containers.get(p.cgroup_id).map(|x| x.info.clone()).unwrap_or_default();
        let mut rec = record_of(p, None, None);
        if let Some(img) = rec.images.pop() {
            rec.images = vec![ImageRecord { connects: Vec::new(), files: Vec::new(), ..img }];
        }
        // the scope the decision was made on is the one the span shows (ranges learned
        // before the record leaves do not relabel it)
        let conn = ConnectRecord { scope: Some(scope), ..ConnectRecord::pending(c) };
        let cg = p.cgroup_id;
        self.outbound.connect(&self.activity, conn, c.cookie, rec, container, cg);
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
            self.counters.results_unmatched += 1;
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
    pub(super) fn on_file(&mut self, f: &FileEvent) {
        let Some(key) = self.table.resolve(f.key()).or_else(|| self.table.by_pid(f.pid)) else { return };
        let Some(p) = self.table.get_mut(&key) else { return };
        if p.session.is_none() {
            return;
        }
        if let Some(img) = p.images.last_mut() {
            if img.files.len() >= MAX_FILES_PER_IMAGE {
                self.counters.files_over_cap += 1;
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
            });
        }
    }

    pub(super) fn on_udp_send(&mut self, u: &UdpSendEvent) {
        if self.outbound.udp_sent(&self.activity, u.cookie) {
            return;
        }
        match self.connect_mut(u.cookie) {
            Some(rec) => rec.udp_sent = true,
            None => self.counters.results_unmatched += 1,
        }
    }
}
