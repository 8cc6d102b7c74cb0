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

/// Decodes what the ring holds into `batch`, up to `cap` events; returns the records read.
fn drain(ring: &mut RingBuf<MapData>, stats: &ReaderStats, batch: &mut Vec<Event>, cap: usize) -> usize {
    let mut read = 0;
    while let Some(item) = ring.next() {
        read += 1;
        let res = decode(&item);
        stats.count(&res, &item);
        if let Ok(ev) = res {
            batch.push(ev);
        }
        if batch.len() >= cap {
            break;
        }
    }
    read
}

/// Sends what `events` holds in batches of at most [`EVENTS_PER_BATCH`], in order, leaving it
/// empty (its allocation stays for the next drain; each batch is allocated at its exact size).
/// Err: the next stage is gone.
async fn send_batches(tx: &mpsc::Sender<EventBatch>, events: &mut Vec<Event>) -> Result<(), ()> {
    let mut rest = events.drain(..);
    loop {
        let batch: EventBatch = rest.by_ref().take(EVENTS_PER_BATCH).collect();
        if batch.is_empty() {
            return Ok(());
        }
        tx.send(batch).await.map_err(|_| ())?;
    }
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
    // One batch for the reader's life: a fresh Vec per wakeup grew one doubling at a time up to
    // the cap, and its allocations were a tenth of the agent's CPU in a session storm (issue 15).
    // It grows only as far as a burst needs (nothing at rest).
    let mut batch: Vec<Event> = Vec::new();
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
        let read = drain(fd.get_mut(), &stats, &mut batch, BATCH);
        if read == 0 && can_park && !stopping {
            // nothing since the last drain: sleep on the descriptor, after a last look at
            // what was written before the kernel saw the flag (those asked for no wakeup)
            can_park = set_parked(&mut flag, true);
            parked = can_park;
            if parked && drain(fd.get_mut(), &stats, &mut batch, BATCH) > 0 {
                can_park = set_parked(&mut flag, false);
                parked = false;
            }
        }
        more = batch.len() >= BATCH;
        if send_batches(&tx, &mut batch).await.is_err() {
            return; // the next stage is gone: nothing left to deliver to
        }
        if stopping || *stop.borrow() {
            // one last drain, then close the channel by returning
            drain(fd.get_mut(), &stats, &mut batch, usize::MAX);
            let _ = send_batches(&tx, &mut batch).await;
            return;
        }
    }
}
