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
use std::hash::BuildHasher;
use std::sync::OnceLock;

/// The builder of [`FastMap`] and [`FastSet`] hashers: foldhash, seeded at random.
pub type FastState = foldhash::fast::RandomState;

/// A `HashMap` for keys podtrail or the kernel choose. Build with `FastMap::default()` or
/// `FastMap::with_capacity_and_hasher(n, FastState::default())`.
pub type FastMap<K, V> = HashMap<K, V, FastState>;

/// A `HashSet` for values podtrail or the kernel choose.
pub type FastSet<T> = HashSet<T, FastState>;

/// foldhash, seeded at random once per process rather than per map: no bytes in the map
/// where [`FastState`] holds 8. For the small sets and maps every open session holds, a few
/// each (issue 15, mem23: 40 B of every open session). What it gives up is a layout that
/// differs between maps of one run: keys copied from one such map into another in its order
/// could crowd the second's buckets. The sets it serves are filled by the session's own
/// records (span ids, executables), never copied from each other.
#[derive(Clone, Copy, Debug, Default)]
pub struct SessionState;

impl BuildHasher for SessionState {
    type Hasher = foldhash::fast::FoldHasher<'static>;

    #[inline]
    fn build_hasher(&self) -> Self::Hasher {
        static SEED: OnceLock<foldhash::fast::SeedableRandomState> = OnceLock::new();
        SEED.get_or_init(foldhash::fast::SeedableRandomState::random).build_hasher()
    }
}

/// A [`FastSet`] hashing with [`SessionState`] (zero-sized): for the sets an open session
/// holds.
pub type SessionSet<T> = HashSet<T, SessionState>;

/// Values a [`SmallSet`] finds by a scan: a scan of this many costs about one hash.
const SMALL_SET: usize = 8;

/// A set that grows one value at a time and finds them by a scan up to [`SMALL_SET`] values,
/// then hashes them ([`SessionSet`], boxed). The sets an open session holds have a few values
/// each: a hash set's first table was 52 bytes for one span id, 32 inline (issue 15, mem23).
/// Values only go in (no removal).
#[derive(Clone, Debug)]
pub enum SmallSet<T> {
    Few(Vec<T>),
    Many(Box<SessionSet<T>>),
}

impl<T> Default for SmallSet<T> {
    fn default() -> Self {
        SmallSet::Few(Vec::new())
    }
}

impl<T: std::hash::Hash + Eq> SmallSet<T> {
    pub fn len(&self) -> usize {
        match self {
            SmallSet::Few(v) => v.len(),
            SmallSet::Many(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, value: &T) -> bool {
        match self {
            SmallSet::Few(v) => v.contains(value),
            SmallSet::Many(s) => s.contains(value),
        }
    }

    /// Adds `value`: false when it was there.
    pub fn insert(&mut self, value: T) -> bool {
        match self {
            SmallSet::Few(v) if v.contains(&value) => false,
            SmallSet::Few(v) if v.len() < SMALL_SET => {
                v.reserve_exact(1);
                v.push(value);
                true
            }
            SmallSet::Few(v) => {
                let mut s: SessionSet<T> = SessionSet::with_capacity_and_hasher(2 * SMALL_SET, SessionState);
                s.extend(v.drain(..));
                s.insert(value);
                *self = SmallSet::Many(Box::new(s));
                true
            }
            SmallSet::Many(s) => s.insert(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_set_is_a_set_on_either_side_of_its_scan() {
        let mut s: SmallSet<u64> = SmallSet::default();
        assert!(s.is_empty() && !s.contains(&1));
        for k in 0..100u64 {
            assert!(s.insert(k), "{k} is new");
            assert!(!s.insert(k), "{k} is there");
            assert_eq!(s.len(), k as usize + 1);
            assert!((0..=k).all(|j| s.contains(&j)) && !s.contains(&(k + 1)));
            match &s {
                SmallSet::Few(v) => assert!(k < SMALL_SET as u64 && v.capacity() == v.len()),
                SmallSet::Many(_) => assert!(k >= SMALL_SET as u64),
            }
        }
        assert_eq!(std::mem::size_of::<SmallSet<u64>>(), 24);
    }

    #[test]
    fn a_session_state_is_one_seed_per_process_and_no_bytes() {
        assert_eq!(std::mem::size_of::<SessionState>(), 0);
        let key = (4242u32, 123_456_789u64);
        assert_eq!(SessionState.hash_one(key), SessionState.hash_one(key));
        let mut s: SessionSet<(u32, u64)> = SessionSet::default();
        assert!(s.insert(key) && s.contains(&key) && !s.insert(key));
    }

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
