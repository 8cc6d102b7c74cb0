//! The ring buffer reader: drains the kernel's ring, decodes each record and passes it on.
//!
//! In: the `events` ring buffer. Out: [`Event`]s on a bounded channel, in batches of at most
//! [`EVENTS_PER_BATCH`] (one send per batch, not per event). Lost: records that do
//! not decode, counted by reason in [`ReaderStats`] as they are read. While records flow, the
//! kernel batches wakeups (one per `wakeup_bytes` queued) and the reader drains on a short
//! timer. A drain that finds nothing parks the reader: it tells the kernel (`reader_parked`),
//! drains once more (what was written before the kernel saw the flag asked for no wakeup),
//! then sleeps on the descriptor with no timer until the first record wakes it. So an idle
//! node costs no wakeups and a lone record (a live alert's) is read at once. When the next stage is
//! slower than the kernel, `send` waits and the ring fills: the kernel then counts what it
//! cannot write per kind and per cgroup, which is where a session can be marked. Nothing
//! after the process stage ever makes this wait (export drops at its own queue).

use std::time::Duration;

use aya::maps::{Array, MapData, RingBuf};
use prometheus_client::metrics::counter::Counter;
use tokio::{io::unix::AsyncFd, sync::mpsc, sync::watch};

use super::{
    abi,
    decode::{decode, DecodeError},
    event::Event,
};
use crate::metrics::Metrics;

/// The reader's counts, taken as each record is read: handles on the agent's series once
/// [`ReaderStats::registered`] (`podtrail_events_total{kind}`,
/// `podtrail_events_lost_total{reason="decode"}`), detached counters otherwise.
#[derive(Default, Debug)]
pub struct ReaderStats {
    /// Records decoded, by kind number.
    pub decoded: [Counter; abi::KIND_MAX as usize],
    /// Records that did not decode, by `DecodeError::REASONS` index.
    pub undecodable: [Counter; DecodeError::REASONS.len()],
    /// Every record that did not decode, whatever the reason.
    pub lost: Counter,
}

impl ReaderStats {
    /// Counts into `m`'s series.
    pub fn registered(m: &Metrics) -> Self {
        let mut s = ReaderStats::default();
        for (c, name) in s.decoded.iter_mut().zip(abi::KIND_NAMES) {
            *c = m.events.get_or_create(&vec![("kind", name)]).clone();
        }
        s.lost = m.events_lost.get_or_create(&vec![("reason", "decode")]).clone();
        s
    }

    pub fn decoded_total(&self) -> u64 {
        self.decoded.iter().map(Counter::get).sum()
    }

    pub fn undecodable_by_reason(&self) -> Vec<(&'static str, u64)> {
        DecodeError::REASONS.iter().zip(&self.undecodable).map(|(r, n)| (*r, n.get())).collect()
    }

    fn count(&self, res: &Result<Event, DecodeError>, bytes: &[u8]) {
        match res {
            Ok(_) => {
                let kind = abi::read::<abi::Header>(bytes).map(|h| h.kind).unwrap_or(0) as usize;
                if let Some(c) = self.decoded.get(kind) {
                    c.inc();
                }
            }
            Err(e) => {
                let i = DecodeError::REASONS.iter().position(|r| *r == e.reason()).unwrap_or(0);
                self.undecodable[i].inc();
                self.lost.inc();
            }
        }
    }
}

/// Records decoded per wakeup before they are passed on (the ring is drained again at once).
const BATCH: usize = 4096;

/// The most events one [`EventBatch`] holds: a channel of `n / EVENTS_PER_BATCH` batches holds
/// at most `n` events.
pub const EVENTS_PER_BATCH: usize = 256;

/// Events as the reader sends them: what one drain decoded, in order, at most
/// [`EVENTS_PER_BATCH`]. A send per event cost its own permit, push and wakeup check, and
/// moved the event into the channel and out again: the reader's sends and the process
/// stage's receives were an eighth of the agent's samples in the exec storm (issue 15).
pub type EventBatch = Vec<Event>;

/// How many batches a channel of `events` events holds (at least one).
pub fn batches_for(events: usize) -> usize {
    (events / EVENTS_PER_BATCH).max(1)
}

/// What one drain decoded, already cut into the batches it is sent in: each event is moved
/// once, from the decoder into its batch (cutting one buffer into batches afterwards moved
/// every event a second time: 1.3% of the agent in the session storm, issue 15). The first
/// batch of a drain is made at the size of the last drain (up to [`EVENTS_PER_BATCH`]), so a
/// steady flow allocates each batch once at about its size and nothing is held at rest.
#[derive(Default)]
struct Drained {
    batches: Vec<EventBatch>,
    events: usize,
    /// Events of the last drain sent.
    last: usize,
}

impl Drained {
    fn push(&mut self, ev: Event) {
        match self.batches.last_mut() {
            Some(b) if b.len() < EVENTS_PER_BATCH => b.push(ev),
            full => {
                let cap = if full.is_some() { EVENTS_PER_BATCH } else { self.last.clamp(1, EVENTS_PER_BATCH) };
                let mut b = Vec::with_capacity(cap);
                b.push(ev);
                self.batches.push(b);
            }
        }
        self.events += 1;
    }

    /// Sends the batches in order, leaving none. Err: the next stage is gone.
    async fn send(&mut self, tx: &mpsc::Sender<EventBatch>) -> Result<(), ()> {
        if self.events > 0 {
            self.last = self.events;
        }
        self.events = 0;
        for b in self.batches.drain(..) {
            tx.send(b).await.map_err(|_| ())?;
        }
        Ok(())
    }
}

/// Decodes what the ring holds into `out`, until it holds `cap` events; returns the records read.
fn drain(ring: &mut RingBuf<MapData>, stats: &ReaderStats, out: &mut Drained, cap: usize) -> usize {
    let mut read = 0;
    while let Some(item) = ring.next() {
        read += 1;
        let res = decode(&item);
        stats.count(&res, &item);
        if let Ok(ev) = res {
            out.push(ev);
        }
        if out.events >= cap {
            break;
        }
    }
    read
}

/// Tells the kernel whether the reader sleeps on the descriptor (see `wakeup_flag` in
/// ebpf/common.h); false when the map could not be written (the reader then keeps polling).
fn set_parked(flag: &mut Array<MapData, u32>, parked: bool) -> bool {
    match flag.set(0, u32::from(parked), 0) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!("cannot tell the kernel the ring reader is idle, polling instead: {}", e);
            false
        }
    }
}

pub async fn run(
    ring: RingBuf<MapData>,
    mut flag: Array<MapData, u32>,
    tx: mpsc::Sender<EventBatch>,
    stats: std::sync::Arc<ReaderStats>,
    poll: Duration,
    mut stop: watch::Receiver<bool>,
) {
    // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd owns the RingBuf, and
    // as_raw_fd always returns that same fd.
    let mut fd = match unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!("cannot poll the ring buffer: {}", e);
            return;
        }
    };
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut more = false;
    let mut parked = false;
    let mut can_park = true;
    // A fresh Vec per wakeup grown one doubling at a time up to the cap was a tenth of the
    // agent's CPU in a session storm (issue 15): `Drained` makes each batch at about its size.
    let mut drained = Drained::default();
    loop {
        let stopping = if more {
            false
        } else if parked {
            tokio::select! {
                r = fd.readable_mut() => {
                    if let Ok(mut g) = r { g.clear_ready(); }
                    false
                }
                _ = stop.changed() => true,
            }
        } else {
            tokio::select! {
                r = fd.readable_mut() => {
                    if let Ok(mut g) = r { g.clear_ready(); }
                    false
                }
                _ = tick.tick() => false,
                _ = stop.changed() => true,
            }
        };
        if parked {
            // records flow again: back to the timer and the kernel's batched wakeups
            can_park = set_parked(&mut flag, false);
            parked = false;
            tick.reset();
        }
        // Decode everything queued before awaiting the channel: RingBufItem borrows the ring.
        let read = drain(fd.get_mut(), &stats, &mut drained, BATCH);
        if read == 0 && can_park && !stopping {
            // nothing since the last drain: sleep on the descriptor, after a last look at
            // what was written before the kernel saw the flag (those asked for no wakeup)
            can_park = set_parked(&mut flag, true);
            parked = can_park;
            if parked && drain(fd.get_mut(), &stats, &mut drained, BATCH) > 0 {
                can_park = set_parked(&mut flag, false);
                parked = false;
            }
        }
        more = drained.events >= BATCH;
        if drained.send(&tx).await.is_err() {
            return; // the next stage is gone: nothing left to deliver to
        }
        if stopping || *stop.borrow() {
            // one last drain, then close the channel by returning
            drain(fd.get_mut(), &stats, &mut drained, usize::MAX);
            let _ = drained.send(&tx).await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::event::{ExitEvent, ExitStatus};

    fn exit(pid: u32) -> Event {
        Event::Exit(ExitEvent { ts_ns: pid as u64, pid, start_ns: 1, cgroup_id: 1, status: ExitStatus::Code(0) })
    }

    fn pids(b: &EventBatch) -> Vec<u32> {
        b.iter().map(|e| if let Event::Exit(x) = e { x.pid } else { 0 }).collect()
    }

    #[tokio::test]
    async fn a_drain_goes_out_in_order_in_batches_of_at_most_256_each_made_about_its_size() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut d = Drained::default();
        (0..600).for_each(|p| d.push(exit(p)));
        assert_eq!(d.events, 600);
        d.send(&tx).await.unwrap();
        let got: Vec<EventBatch> = (0..3).map(|_| rx.try_recv().unwrap()).collect();
        assert!(rx.try_recv().is_err(), "three batches");
        assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), [256, 256, 88]);
        assert_eq!(got.iter().flat_map(pids).collect::<Vec<_>>(), (0..600).collect::<Vec<_>>());
        assert_eq!((d.events, d.batches.len()), (0, 0), "nothing left");
        // the next drain's first batch is made at the last drain's size, up to a batch
        (0..3).for_each(|p| d.push(exit(p)));
        assert_eq!(d.batches[0].capacity(), 256);
        d.send(&tx).await.unwrap();
        (0..2).for_each(|p| d.push(exit(p)));
        assert_eq!(d.batches[0].capacity(), 3, "after a drain of three");
        d.send(&tx).await.unwrap();
        assert_eq!(pids(&rx.try_recv().unwrap()), [0, 1, 2]);
        assert_eq!(pids(&rx.try_recv().unwrap()), [0, 1]);
    }
}
