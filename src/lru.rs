//! A bounded map that, when full, forgets its least recently used entry (not everything at
//! once) and counts what it forgot, for the caches whose growth a cluster's churn would
//! otherwise leave unbounded.
//!
//! In: inserts and lookups. Out: the values; [`Lru::evicted`] counts the entries forgotten to
//! make room, and [`Lru::insert`] returns the one it forgot so the caller can count it at the
//! point of loss. Lookups through [`Lru::get`] and [`Lru::get_mut`] count as uses;
//! [`Lru::peek`] does not.
//!
//! The order of use is a doubly linked list threaded through one `Vec` of entries (indices,
//! not pointers; freed places reused), so a use is two index updates. It was a `BTreeMap` of
//! use stamps: a tree removal and insertion per use, and a node allocation now and then,
//! 4% of the agent's CPU in issue 15's exec storm, where every exec touches three of these.
//!
//! The map's hasher is a parameter: std's keyed SipHash by default (keys that are text from
//! a container), [`FastLru`] for keys the kernel or podtrail choose (process keys, span ids:
//! the rule is [`crate::hashing`]'s).

use std::borrow::Borrow;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

use crate::hashing::FastState;

/// An [`Lru`] hashing with [`FastState`], for keys the kernel or podtrail choose. Build with
/// `Lru::with_hasher(cap)`.
pub type FastLru<K, V> = Lru<K, V, FastState>;

/// No entry (the list's ends).
const NIL: usize = usize::MAX;

#[derive(Debug, Clone)]
struct Entry<K, V> {
    key: K,
    value: V,
    /// Towards the least recently used.
    older: usize,
    /// Towards the most recently used.
    newer: usize,
}

#[derive(Debug, Clone)]
pub struct Lru<K, V, S = RandomState> {
    /// Key -> place in `entries`.
    map: HashMap<K, usize, S>,
    entries: Vec<Option<Entry<K, V>>>,
    /// Places in `entries` free for reuse.
    free: Vec<usize>,
    /// Least and most recently used.
    oldest: usize,
    newest: usize,
    cap: usize,
    evicted: u64,
}

impl<K: Hash + Eq + Clone, V> Lru<K, V> {
    /// At most `cap` entries (at least one), hashed with std's keyed SipHash.
    pub fn new(cap: usize) -> Self {
        Self::with_hasher(cap)
    }
}

impl<K: Hash + Eq + Clone, V, S: BuildHasher + Default> Lru<K, V, S> {
    /// At most `cap` entries (at least one), hashed with a new `S`.
    pub fn with_hasher(cap: usize) -> Self {
        Lru {
            map: HashMap::default(),
            entries: Vec::new(),
            free: Vec::new(),
            oldest: NIL,
            newest: NIL,
            cap: cap.max(1),
            evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Entries forgotten to make room since this map was made.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    pub fn contains_key<Q: Hash + Eq + ?Sized>(&self, k: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.map.contains_key(k)
    }

    fn entry(&self, i: usize) -> &Entry<K, V> {
        self.entries[i].as_ref().expect("a linked place holds an entry")
    }

    fn entry_mut(&mut self, i: usize) -> &mut Entry<K, V> {
        self.entries[i].as_mut().expect("a linked place holds an entry")
    }

    /// Takes place `i` out of the order of use.
    fn unlink(&mut self, i: usize) {
        let (older, newer) = {
            let e = self.entry(i);
            (e.older, e.newer)
        };
        match older {
            NIL => self.oldest = newer,
            o => self.entry_mut(o).newer = newer,
        }
        match newer {
            NIL => self.newest = older,
            n => self.entry_mut(n).older = older,
        }
    }

    /// Puts place `i` at the most recently used end.
    fn link_newest(&mut self, i: usize) {
        let prev = self.newest;
        {
            let e = self.entry_mut(i);
            e.older = prev;
            e.newer = NIL;
        }
        match prev {
            NIL => self.oldest = i,
            p => self.entry_mut(p).newer = i,
        }
        self.newest = i;
    }

    fn touch<Q: Hash + Eq + ?Sized>(&mut self, k: &Q) -> Option<usize>
    where
        K: Borrow<Q>,
    {
        let i = *self.map.get(k)?;
        if self.newest != i {
            self.unlink(i);
            self.link_newest(i);
        }
        Some(i)
    }

    /// The value, now the most recently used.
    pub fn get<Q: Hash + Eq + ?Sized>(&mut self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        let i = self.touch(k)?;
        Some(&self.entry(i).value)
    }

    pub fn get_mut<Q: Hash + Eq + ?Sized>(&mut self, k: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        let i = self.touch(k)?;
        Some(&mut self.entry_mut(i).value)
    }

    /// The value, without counting it as a use.
    pub fn peek<Q: Hash + Eq + ?Sized>(&self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.map.get(k).map(|&i| &self.entry(i).value)
    }

    /// Frees place `i` (already out of the map), returning its entry.
    fn take(&mut self, i: usize) -> Entry<K, V> {
        self.unlink(i);
        self.free.push(i);
        self.entries[i].take().expect("a linked place holds an entry")
    }

    /// Inserts or replaces; when a new key finds the map full, the least recently used entry
    /// is forgotten, counted and returned.
    pub fn insert(&mut self, k: K, v: V) -> Option<(K, V)> {
        if let Some(i) = self.touch(&k) {
            self.entry_mut(i).value = v;
            return None;
        }
        self.insert_new(k, v).1
    }

    /// Inserts `k`, known to be absent: its place, and the entry forgotten to make room.
    fn insert_new(&mut self, k: K, v: V) -> (usize, Option<(K, V)>) {
        let mut gone = None;
        if self.map.len() >= self.cap && self.oldest != NIL {
            let old = self.oldest;
            if let Some(e) = &self.entries[old] {
                self.map.remove(&e.key);
            }
            let e = self.take(old);
            gone = Some((e.key, e.value));
            self.evicted += 1;
        }
        let entry = Entry { key: k.clone(), value: v, older: NIL, newer: NIL };
        let i = match self.free.pop() {
            Some(i) => {
                self.entries[i] = Some(entry);
                i
            }
            None => {
                self.entries.push(Some(entry));
                self.entries.len() - 1
            }
        };
        self.link_newest(i);
        self.map.insert(k, i);
        (i, gone)
    }

    /// The value for `k`, inserted with `f` first when absent (which may forget the least
    /// recently used entry, counted in [`Lru::evicted`]). One lookup when present, a lookup
    /// and an insertion when not (it was four hashes of the key: in the storm, every exec
    /// comes here twice).
    pub fn get_or_insert_with(&mut self, k: K, f: impl FnOnce() -> V) -> &mut V {
        let i = match self.touch(&k) {
            Some(i) => i,
            None => self.insert_new(k, f()).0,
        };
        &mut self.entry_mut(i).value
    }

    pub fn remove<Q: Hash + Eq + ?Sized>(&mut self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let i = self.map.remove(k)?;
        let e = self.take(i);
        self.shrink();
        Some(e.value)
    }

    /// Keeps the entries `keep` says yes to (not counted as evictions: the caller decided).
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        let mut gone = Vec::new();
        for (i, slot) in self.entries.iter_mut().enumerate() {
            if let Some(e) = slot {
                if !keep(&e.key, &mut e.value) {
                    gone.push(i);
                }
            }
        }
        for i in gone {
            if let Some(e) = &self.entries[i] {
                self.map.remove(&e.key);
            }
            self.take(i);
        }
        self.shrink();
    }

    /// Gives the places back once the map is empty (a burst's table is not kept at rest).
    fn shrink(&mut self) {
        if self.map.is_empty() && !self.entries.is_empty() {
            self.entries = Vec::new();
            self.free = Vec::new();
            self.map = HashMap::default();
            self.oldest = NIL;
            self.newest = NIL;
        }
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().flatten().map(|e| &e.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_map_forgets_the_least_recently_used_entry_and_counts_it() {
        let mut m = Lru::new(2);
        assert!(m.insert("a", 1).is_none());
        assert!(m.insert("b", 2).is_none());
        assert_eq!(m.get("a"), Some(&1)); // "b" is now the oldest use
        assert_eq!(m.insert("c", 3), Some(("b", 2)));
        assert_eq!((m.len(), m.evicted()), (2, 1));
        assert!(m.contains_key("a") && m.contains_key("c"));
        // replacing is not an eviction; peeking is not a use
        assert!(m.insert("a", 10).is_none());
        assert_eq!(m.peek("c"), Some(&3));
        assert_eq!(m.insert("d", 4), Some(("c", 3)));
        assert_eq!(m.evicted(), 2);
        // "a" was used before "d" went in: it goes next
        *m.get_or_insert_with("e", || 0) += 5;
        assert_eq!((m.peek("e"), m.peek("a"), m.evicted()), (Some(&5), None, 3));
        m.retain(|_, v| *v > 4);
        assert_eq!((m.len(), m.peek("e"), m.evicted()), (1, Some(&5), 3), "retain is not eviction");
        assert_eq!(m.remove("e"), Some(5));
        assert!(m.is_empty());
        // the order of use stays in step with the entries
        for i in 0..100 {
            m.insert("x", i);
        }
        assert_eq!((m.len(), m.entries.iter().flatten().count()), (1, 1));
    }

    #[test]
    fn a_fast_lru_forgets_in_the_same_order() {
        let mut m: FastLru<(u32, u64), u32> = Lru::with_hasher(2);
        m.insert((1, 1), 1);
        *m.get_or_insert_with((2, 2), || 0) += 2;
        assert_eq!(m.get(&(1, 1)), Some(&1));
        assert_eq!(*m.get_or_insert_with((1, 1), || 9), 1, "present: not replaced");
        assert_eq!(m.insert((3, 3), 3), Some(((2, 2), 2)));
        assert_eq!((m.len(), m.evicted()), (2, 1));
    }

    #[test]
    fn the_order_of_use_survives_removals_and_reused_places() {
        let mut m = Lru::new(3);
        for k in ["a", "b", "c"] {
            m.insert(k, 0);
        }
        assert_eq!(m.remove("b"), Some(0));
        m.insert("d", 1); // takes b's place
        m.get("a");
        // oldest to newest: c, d, a
        assert_eq!(m.insert("e", 2), Some(("c", 0)));
        assert_eq!(m.insert("f", 3), Some(("d", 1)));
        assert_eq!(m.insert("g", 4), Some(("a", 0)));
        let mut v: Vec<_> = m.values().copied().collect();
        v.sort();
        assert_eq!(v, vec![2, 3, 4]);
        m.retain(|k, _| *k != "f");
        assert_eq!(m.insert("h", 5), None);
        assert_eq!(m.insert("i", 6), Some(("e", 2)));
        assert_eq!(m.entries.len(), 3, "places are reused, not added");
    }
}
