//! Hash maps for keys that neither a container's user nor a remote peer choose.
//!
//! The stages look up every exec's process by its key (pid and start time), its span by an id
//! derived with SHA-256, its session by a small number. std's `HashMap` hashes those with
//! SipHash-1-3, which showed as 9% of the agent's samples in a 20 000-exec storm
//! (BENCHMARKS.md, issue 15). [`FastMap`] uses foldhash instead: randomly seeded per map, so
//! its layout differs between runs and between maps, but built for speed, not to stand against
//! someone who can pick many keys and watch the timing.
//!
//! The rule: a key that is text from inside a container (argv, a path, a command name), or
//! anything a remote peer sends, stays in a std `HashMap` (keyed SipHash). Pids are chosen by
//! the kernel; a process can only make new ones by forking, one at a time, and never pick the
//! start time that goes with them.

use std::collections::{HashMap, HashSet};

/// The builder of [`FastMap`] and [`FastSet`] hashers: foldhash, seeded at random.
pub type FastState = foldhash::fast::RandomState;

/// A `HashMap` for keys podtrail or the kernel choose. Build with `FastMap::default()` or
/// `FastMap::with_capacity_and_hasher(n, FastState::default())`.
pub type FastMap<K, V> = HashMap<K, V, FastState>;

/// A `HashSet` for values podtrail or the kernel choose.
pub type FastSet<T> = HashSet<T, FastState>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn maps_are_seeded_apart() {
        // Two maps must not share a layout: a key's hash differs between builders, so a set
        // of keys that collides in one map does not collide in the next.
        let key = (4242u32, 123_456_789u64);
        let hashes: HashSet<u64> = (0..8).map(|_| FastState::default().hash_one(key)).collect();
        assert!(hashes.len() > 1, "eight builders gave one hash: {hashes:?}");
    }

    #[test]
    fn works_as_a_map() {
        let mut m: FastMap<(u32, u64), &str> = FastMap::default();
        m.insert((1, 2), "a");
        m.insert((1, 3), "b");
        assert_eq!(m.get(&(1, 2)), Some(&"a"));
        assert_eq!(m.remove(&(1, 3)), Some("b"));
        assert_eq!(m.len(), 1);
    }
}
