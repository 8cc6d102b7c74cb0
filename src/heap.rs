//! The process heap: the allocator the agent runs on, and giving freed memory back to the kernel.
//!
//! In: the `podtrail` binary installs [`Allocator`] as its global allocator (src/main.rs), and
//! the agent's 1 s tick feeds [`Trimmer`]. Out: nothing but resident memory returned.
//!
//! Why mimalloc: the stages allocate an event's data in one thread and free it in another
//! (the reader decodes, the process, span and rules stages take it on), and glibc's malloc
//! paid for that in its slow paths: in a 20 000-process session storm its leaves
//! (`unlink_chunk`, `_int_malloc`, `malloc_consolidate`, `cfree`) and `memmove` were 41% of
//! the agent's samples (BENCHMARKS.md, issue 15, hot16, with the figures beside glibc). Before
//! that, the bytes problem: glibc kept 61 MiB of heap with 2 MiB in use after a storm (freed
//! memory held per thread arena and below live allocations, start-up's parsed BTF among it),
//! which needed arena limits and `malloc_trim`. mimalloc frees a page back to the thread that
//! owns it and purges free pages to the kernel on its own; [`tune`] makes that at once rather
//! than after mimalloc's default 1 s (measured: RssAnon 7.6 MiB after the storm's session
//! instead of 16.6, 29.1 with 10 000 live processes and 1 000 open sessions instead of 30.4),
//! and a trim once a burst is over (`mi_collect`) returns what the threads still hold.

/// The `podtrail` binary's global allocator (tests and benchmarks keep their own).
pub type Allocator = mimalloc::MiMalloc;

/// The one value of [`Allocator`], for `#[global_allocator]`.
pub const ALLOCATOR: Allocator = mimalloc::MiMalloc;

extern "C" {
    /// mimalloc's "give free memory back": with `force`, the calling thread's free pages and
    /// the process-wide arenas' free memory are returned to the kernel now.
    fn mi_collect(force: bool);
    fn mi_option_set(option: libc::c_int, value: libc::c_long);
    #[cfg(test)]
    fn mi_option_get(option: libc::c_int) -> libc::c_long;
}

/// `mi_option_purge_delay` in mimalloc's `mi_option_t` (the same place in its v2 and v3; a
/// unit test reads its default back to prove it).
const MI_OPTION_PURGE_DELAY: libc::c_int = 15;
/// Milliseconds mimalloc waits before it gives freed pages back: none.
const PURGE_DELAY_MS: libc::c_long = 0;

/// Sets the allocator up for a long-running agent; call first in `main`, before any thread.
/// `MIMALLOC_PURGE_DELAY` in the environment, when set, wins.
pub fn tune() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set is not thread safe; no other thread runs yet.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
}

/// Returns free memory to the kernel: mimalloc's (the agent's heap) and glibc's (what C code
/// in the process allocated, and the whole heap when something links this library without
/// installing [`Allocator`]). What it returned is not known to either API: nothing is counted.
pub fn trim() {
    // SAFETY: mi_collect may be called from any thread at any time; with mimalloc not the
    // global allocator it only visits mimalloc's own (empty) heap.
    unsafe { mi_collect(true) };
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
    fn tune_sets_mimallocs_purge_delay() {
        // SAFETY: reading an option is thread safe.
        let before = unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(before, 1000, "mimalloc's default purge delay: the option's index is right");
        tune();
        assert_eq!(unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }, PURGE_DELAY_MS);
    }

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
