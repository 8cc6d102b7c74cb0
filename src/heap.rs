//! The process heap: glibc malloc settings and giving freed memory back to the kernel.
//!
//! In: calls from `main` (once, before any thread) and from the agent's 1 s tick. Out: nothing
//! but resident memory returned (`malloc_trim`). Why: measured in a 20 000-process session
//! storm (BENCHMARKS.md, issue 15), glibc kept 61 MiB of heap with 2 MiB in use: freed memory
//! stays in each thread's arena, and freed memory below a live allocation stays in the heap
//! (start-up parses the kernel's BTF, tens of MiB, and frees it). Two arenas instead of glibc's
//! eight per core bound how much freed memory the runtime's threads can hold apart, and a trim
//! once a burst is over returns what is free. Other allocators (musl) have neither: no-ops there.

/// Arenas glibc may create (`M_ARENA_MAX`): the runtime's two workers, each its own.
const ARENAS: i32 = 2;

/// Sets glibc's malloc up for a long-running agent; call before any thread starts. The
/// `MALLOC_ARENA_MAX` environment variable, when set, wins (glibc reads it itself).
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes malloc's parameters; no thread is allocating yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        }
    }
}

/// Returns the heap's free memory to the kernel (every arena); what it returned is not known
/// to glibc's API, so nothing is counted.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes each arena's lock itself; it is safe from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Events in one tick below which the agent counts as quiet (a node always has some), and the
/// least work since the last trim worth another.
const QUIET: u64 = 200;
/// A tick with less than 1/`DROP` of the busiest tick since the last trim: the burst is over.
const DROP: u64 = 4;
/// Ticks after which a trim is due anyway when there was work, quiet or not (a node that is
/// never quiet still gives back what bursts left).
const EVERY: u32 = 30;
/// Ticks after a burst's trim for one more: the later stages let go of a burst's sessions
/// only once their spans are built and exported, seconds after the last event (measured: RssAnon
/// 40 MiB 3 s after a 20 000-process session, 6 MiB 20 s after; BENCHMARKS.md, issue 15).
const SETTLE: u32 = 5;

/// Trims once a burst is over: fed a monotonic count of work done (events read) on a regular
/// tick, it trims on the first tick after at least `QUIET` events of work that is quiet (fewer
/// than `QUIET` events) or well below the busiest tick since the last trim (a busy node is
/// never quiet: the bench machine's own builds and tests ran a few hundred events a second),
/// and every `EVERY` ticks otherwise; never on a tick of the burst itself (a trim walks the
/// free lists under the arenas' locks: not something to do per event).
#[derive(Debug, Default)]
pub struct Trimmer {
    last: u64,
    trimmed_at: u64,
    ticks: u32,
    busiest: u64,
    /// Ticks left until the follow-up trim of the last burst (0: none due).
    again: u32,
}

impl Trimmer {
    /// The work count at start: the next quiet tick after more work trims.
    pub fn new(done: u64) -> Self {
        Trimmer { last: done, trimmed_at: done, ticks: 0, busiest: 0, again: 0 }
    }

    /// One tick with the count of work done so far; true when it trimmed.
    pub fn tick(&mut self, done: u64) -> bool {
        let delta = done.saturating_sub(self.last);
        self.last = done;
        self.busiest = self.busiest.max(delta);
        self.ticks = self.ticks.saturating_add(1);
        let calm = delta < QUIET || delta.saturating_mul(DROP) < self.busiest;
        if done.saturating_sub(self.trimmed_at) >= QUIET && (calm || self.ticks >= EVERY) {
            self.trimmed_at = done;
            self.ticks = 0;
            self.busiest = 0;
            self.again = if calm { SETTLE } else { 0 };
            trim();
            return true;
        }
        if self.again > 0 {
            self.again -= 1;
            if self.again == 0 {
                trim();
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_on_the_first_quiet_tick_after_work_and_not_again() {
        let mut t = Trimmer::new(10);
        assert!(!t.tick(10), "no work since start: nothing to give back");
        assert!(!t.tick(5_000), "busy: no trim");
        assert!(!t.tick(9_000), "still busy");
        assert!(t.tick(9_050), "first quiet tick after the burst");
        assert!(!t.tick(9_050), "already trimmed for that burst");
        assert!(!t.tick(9_100), "a trickle since: not worth a trim");
        assert!(t.tick(9_050 + QUIET), "enough work again, quiet: trimmed");
    }

    #[test]
    fn a_burst_is_trimmed_again_once_the_stages_let_go_of_it() {
        let mut t = Trimmer::new(0);
        assert!(!t.tick(5_000), "busy");
        assert!(t.tick(5_010), "the burst is over");
        let later: Vec<bool> = (0..2 * SETTLE).map(|_| t.tick(5_010)).collect();
        let mut want = vec![false; 2 * SETTLE as usize];
        want[SETTLE as usize - 1] = true;
        assert_eq!(later, want, "one follow-up trim, SETTLE ticks after, then none");
    }

    #[test]
    fn the_end_of_a_burst_on_a_node_that_is_never_quiet_trims() {
        let mut t = Trimmer::new(0);
        let mut done = 0;
        for _ in 0..5 {
            done += 3_000; // the burst
            assert!(!t.tick(done));
        }
        done += 500; // the node's own background rate: above QUIET, far below the burst
        assert!(t.tick(done));
        done += 500;
        assert!(!t.tick(done), "not again per tick at the background rate");
    }

    #[test]
    fn a_node_never_quiet_still_trims_now_and_then() {
        let mut t = Trimmer::new(0);
        let trims = (1..=3 * EVERY as u64).filter(|i| t.tick(i * 10 * QUIET)).count();
        assert_eq!(trims, 3);
    }
}
