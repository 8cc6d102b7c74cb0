//! A bounded map that, when full, forgets its least recently used entry (not everything at
//! once) and counts what it forgot, for the caches whose growth a cluster's churn would
//! otherwise leave unbounded.
//!
//! In: inserts and lookups. Out: the values; [`Lru::evicted`] counts the entries forgotten to
//! make room, and [`Lru::insert`] returns the one it forgot so the caller can count it at the
//! point of loss. Lookups through [`Lru::get`] and [`Lru::get_mut`] count as uses;
//! [`Lru::peek`] does not.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

#[derive(Debug, Clone)]
pub struct Lru<K, V> {
    map: HashMap<K, (V, u64)>,
    /// Use stamp -> key, oldest first.
    order: BTreeMap<u64, K>,
    next: u64,
    cap: usize,
    evicted: u64,
}

impl<K: Hash + Eq + Clone, V> Lru<K, V> {
    /// At most `cap` entries (at least one).
    pub fn new(cap: usize) -> Self {
        Lru { map: HashMap::new(), order: BTreeMap::new(), next: 0, cap: cap.max(1), evicted: 0 }
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

    fn touch<Q: Hash + Eq + ?Sized>(&mut self, k: &Q) -> Option<&mut (V, u64)>
    where
        K: Borrow<Q>,
    {
        let e = self.map.get_mut(k)?;
        let key = self.order.remove(&e.1).expect("every entry has a stamp");
        e.1 = self.next;
        self.order.insert(self.next, key);
        self.next += 1;
        Some(e)
    }

    /// The value, now the most recently used.
    pub fn get<Q: Hash + Eq + ?Sized>(&mut self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.touch(k).map(|e| &e.0)
    }

    pub fn get_mut<Q: Hash + Eq + ?Sized>(&mut self, k: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        self.touch(k).map(|e| &mut e.0)
    }

    /// The value, without counting it as a use.
    pub fn peek<Q: Hash + Eq + ?Sized>(&self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.map.get(k).map(|e| &e.0)
    }

    /// Inserts or replaces; when a new key finds the map full, the least recently used entry
    /// is forgotten, counted and returned.
    pub fn insert(&mut self, k: K, v: V) -> Option<(K, V)> {
        if let Some(e) = self.touch(&k) {
            e.0 = v;
            return None;
        }
        let mut gone = None;
        if self.map.len() >= self.cap {
            if let Some((_, old)) = self.order.pop_first() {
                gone = self.map.remove(&old).map(|(v, _)| (old, v));
                self.evicted += 1;
            }
        }
        self.order.insert(self.next, k.clone());
        self.map.insert(k, (v, self.next));
        self.next += 1;
        gone
    }

    /// The value for `k`, inserted with `f` first when absent (which may forget the least
    /// recently used entry, counted in [`Lru::evicted`]).
    pub fn get_or_insert_with(&mut self, k: K, f: impl FnOnce() -> V) -> &mut V {
        if !self.map.contains_key(&k) {
            self.insert(k.clone(), f());
        }
        self.get_mut(&k).expect("just inserted")
    }

    pub fn remove<Q: Hash + Eq + ?Sized>(&mut self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let (v, stamp) = self.map.remove(k)?;
        self.order.remove(&stamp);
        Some(v)
    }

    /// Keeps the entries `keep` says yes to (not counted as evictions: the caller decided).
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        let order = &mut self.order;
        self.map.retain(|k, (v, stamp)| {
            let kept = keep(k, v);
            if !kept {
                order.remove(stamp);
            }
            kept
        });
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.map.values().map(|e| &e.0)
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
        // the order map stays in step with the entries
        for i in 0..100 {
            m.insert("x", i);
        }
        assert_eq!((m.len(), m.order.len()), (1, 1));
    }
}
