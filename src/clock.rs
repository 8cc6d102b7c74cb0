//! Kernel timestamps are boot-time nanoseconds (CLOCK_BOOTTIME); spans need wall-clock time.
//! The offset between the two is read once at start-up; it moves only when the wall clock is
//! stepped, which a long-running agent re-reads on a timer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn clock_ns(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Boot-time nanoseconds now (the same clock as `bpf_ktime_get_boot_ns`).
pub fn boot_ns_now() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME)
}

/// Converts boot-time nanoseconds to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct BootClock {
    /// Unix time in ns at boot.
    boot_epoch_ns: u64,
}

impl BootClock {
    pub fn now() -> Self {
        let real = clock_ns(libc::CLOCK_REALTIME);
        let boot = clock_ns(libc::CLOCK_BOOTTIME);
        BootClock { boot_epoch_ns: real.saturating_sub(boot) }
    }

    /// A clock with a fixed epoch, for tests and replays.
    pub fn fixed(boot_epoch_ns: u64) -> Self {
        BootClock { boot_epoch_ns }
    }

    pub fn to_system_time(&self, boot_ns: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.boot_epoch_ns + boot_ns)
    }

    pub fn to_boot_ns(&self, t: SystemTime) -> u64 {
        let unix = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
        unix.saturating_sub(self.boot_epoch_ns)
    }
}

/// The kernel's boot id: with pid and start time it makes span ids unique across reboots.
pub fn boot_id() -> [u8; 16] {
    let raw = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let hex: String = raw.trim().chars().filter(|c| *c != '-').collect();
    let mut out = [0u8; 16];
    if let Ok(v) = hex::decode(&hex) {
        if v.len() == 16 {
            out.copy_from_slice(&v);
        }
    }
    out
}
