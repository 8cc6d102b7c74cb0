//! A bounded map that, when full, forgets its least recently used entry (not everything at
//! once) and counts what it forgot, for the caches whose growth a cluster's churn would
//! otherwise leave unbounded.
//!
//! In: inserts and lookups. Out: the values; [`Lru::evicted`] counts the entries forgotten to
//! make room, and [`Lru::insert`] returns the one it forgot so the caller can count it at the
//! point of loss. Lookups through [`Lru::get`] and [`Lru::get_mut`] count as uses;
//! [`Lru::peek`] does not.
//!
//! The entries sit in one dense `Vec` (a removal moves the last one into the gap), the order
//! of use a doubly linked list threaded through it by `u32` indices, so a use is two index
//! updates. Each key is stored once, in its entry: up to [`SMALL`] entries a lookup scans
//! them, past that an index of places (`hashbrown`'s `HashTable<u32>`, hashing the entries'
//! keys) finds it. The entries grow one at a time up to [`SMALL`], then double. A span-stage
//! session holds two of these with a few entries each: a `HashMap<K, usize>` beside the
//! entries kept every key twice and reserved 4 entries and 4 buckets at the first insert
//! (issue 15, sess18: about 400 B per session for three ended processes).
//!
//! The hasher is a parameter: std's keyed SipHash by default (keys that are text from a
//! container), [`FastLru`] for keys the kernel or podtrail choose (process keys, span ids:
//! the rule is [`crate::hashing`]'s).

use std::borrow::Borrow;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};

use hashbrown::HashTable;

use crate::hashing::FastState;

/// An [`Lru`] hashing with [`FastState`], for keys the kernel or podtrail choose. Build with
/// `Lru::with_hasher(cap)`.
pub type FastLru<K, V> = Lru<K, V, FastState>;

/// A [`FastLru`] whose index is boxed ([`Boxed`]): for the small maps an open session holds,
/// empty while they have [`SMALL`] entries or fewer. Build with `Lru::with_hasher(cap)`.
pub type SmallLru<K, V, S = FastState> = Lru<K, V, S, Boxed>;

/// Where an [`Lru`] keeps its index of places: [`Inline`] (the big tables: one lookup, no
/// pointer more) or [`Boxed`] (a session's small maps: 8 bytes inline, not 32, while there is
/// none; issue 15, mem23).
pub trait IndexSlot: Default {
    /// The index, when the entries have outgrown [`SMALL`].
    fn get(&self) -> Option<&HashTable<u32>>;
    fn get_mut(&mut self) -> Option<&mut HashTable<u32>>;
    /// The index, made empty when there is none.
    fn make(&mut self) -> &mut HashTable<u32>;
}

/// The index inline: empty (no allocation) while there is none.
#[derive(Debug, Clone, Default)]
pub struct Inline(HashTable<u32>);

impl IndexSlot for Inline {
    #[inline]
    fn get(&self) -> Option<&HashTable<u32>> {
        (!self.0.is_empty()).then_some(&self.0)
    }

    #[inline]
    fn get_mut(&mut self) -> Option<&mut HashTable<u32>> {
        (!self.0.is_empty()).then_some(&mut self.0)
    }

    #[inline]
    fn make(&mut self) -> &mut HashTable<u32> {
        &mut self.0
    }
}

/// The index boxed: made when the entries outgrow [`SMALL`].
#[derive(Debug, Clone, Default)]
pub struct Boxed(Option<Box<HashTable<u32>>>);

impl IndexSlot for Boxed {
    #[inline]
    fn get(&self) -> Option<&HashTable<u32>> {
        self.0.as_deref()
    }

    #[inline]
    fn get_mut(&mut self) -> Option<&mut HashTable<u32>> {
        self.0.as_deref_mut()
    }

    #[inline]
    fn make(&mut self) -> &mut HashTable<u32> {
        self.0.get_or_insert_with(Default::default)
    }
}

/// Entries found by a scan, without an index: a scan of this many keys costs about one hash.
const SMALL: usize = 8;

/// No entry (the list's ends).
const NIL: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Entry<K, V> {
    key: K,
    value: V,
    /// Towards the least recently used.
    older: u32,
    /// Towards the most recently used.
    newer: u32,
}

#[derive(Debug, Clone)]
pub struct Lru<K, V, S = RandomState, I = Inline> {
    entries: Vec<Entry<K, V>>,
    /// Places in `entries` by their key's hash: none (no allocation) until the entries
    /// outgrow [`SMALL`], then every entry's, until the map is empty again.
    index: I,
    hasher: S,
    /// Least and most recently used.
    oldest: u32,
    newest: u32,
    cap: u32,
    evicted: u64,
}

impl<K: Hash + Eq, V> Lru<K, V> {
    /// At most `cap` entries (at least one), hashed with std's keyed SipHash.
    pub fn new(cap: usize) -> Self {
        Self::with_hasher(cap)
    }
}

impl<K: Hash + Eq, V, S: BuildHasher + Default, I: IndexSlot> Lru<K, V, S, I> {
    /// At most `cap` entries (at least one, fewer than `u32::MAX`), hashed with a new `S`.
    pub fn with_hasher(cap: usize) -> Self {
        Lru {
            entries: Vec::new(),
            index: I::default(),
            hasher: S::default(),
            oldest: NIL,
            newest: NIL,
            cap: cap.clamp(1, NIL as usize - 1) as u32,
            evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries forgotten to make room since this map was made.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    pub fn contains_key<Q: Hash + Eq + ?Sized>(&self, k: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.find(k).is_some()
    }

    /// The place of `k`.
    fn find<Q: Hash + Eq + ?Sized>(&self, k: &Q) -> Option<u32>
    where
        K: Borrow<Q>,
    {
        let Some(index) = self.index.get() else {
            return self.entries.iter().position(|e| e.key.borrow() == k).map(|i| i as u32);
        };
        let entries = &self.entries;
        index.find(self.hasher.hash_one(k), |&i| entries[i as usize].key.borrow() == k).copied()
    }

    /// Takes place `i` out of the index (when there is one).
    fn unindex(&mut self, i: u32) {
        let Lru { entries, index, hasher, .. } = self;
        if let Some(index) = index.get_mut() {
            let h = hasher.hash_one(&entries[i as usize].key);
            if let Ok(found) = index.find_entry(h, |&j| j == i) {
                found.remove();
            }
        }
    }

    /// Puts place `i` in the index, building it from all the entries once they outgrow
    /// [`SMALL`].
    fn index_place(&mut self, i: u32) {
        let Lru { entries, index, hasher, .. } = self;
        let rehash = |&j: &u32| hasher.hash_one(&entries[j as usize].key);
        if let Some(index) = index.get_mut() {
            index.insert_unique(hasher.hash_one(&entries[i as usize].key), i, rehash);
        } else if entries.len() > SMALL {
            let index = index.make();
            index.reserve(entries.len(), rehash);
            for (j, e) in entries.iter().enumerate() {
                index.insert_unique(hasher.hash_one(&e.key), j as u32, rehash);
            }
        }
    }

    fn entry_mut(&mut self, i: u32) -> &mut Entry<K, V> {
        &mut self.entries[i as usize]
    }

    /// The order-of-use neighbours of place `i`: (older, newer).
    fn neighbours(&self, i: u32) -> (u32, u32) {
        let e = &self.entries[i as usize];
        (e.older, e.newer)
    }

    /// Points what sits at `older`'s newer side to `to_newer`, and `newer`'s older side to
    /// `to_older` (the list's ends when NIL).
    fn point(&mut self, older: u32, newer: u32, to_newer: u32, to_older: u32) {
        match older {
            NIL => self.oldest = to_newer,
            o => self.entry_mut(o).newer = to_newer,
        }
        match newer {
            NIL => self.newest = to_older,
            n => self.entry_mut(n).older = to_older,
        }
    }

    /// Takes place `i` out of the order of use.
    fn unlink(&mut self, i: u32) {
        let (older, newer) = self.neighbours(i);
        self.point(older, newer, newer, older);
    }

    /// Puts place `i` at the most recently used end.
    fn link_newest(&mut self, i: u32) {
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

    fn touch<Q: Hash + Eq + ?Sized>(&mut self, k: &Q) -> Option<u32>
    where
        K: Borrow<Q>,
    {
        let i = self.find(k)?;
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
        Some(&self.entries[i as usize].value)
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
        self.find(k).map(|i| &self.entries[i as usize].value)
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

    /// Inserts `k`, known to be absent: its place, and the entry forgotten to make room (whose
    /// place it takes).
    fn insert_new(&mut self, k: K, v: V) -> (u32, Option<(K, V)>) {
        let entry = Entry { key: k, value: v, older: NIL, newer: NIL };
        if self.entries.len() >= self.cap as usize && self.oldest != NIL {
            let i = self.oldest;
            self.unindex(i);
            self.unlink(i);
            let old = std::mem::replace(&mut self.entries[i as usize], entry);
            self.link_newest(i);
            self.index_place(i);
            self.evicted += 1;
            return (i, Some((old.key, old.value)));
        }
        let len = self.entries.len();
        if len == self.entries.capacity() {
            // One at a time while a scan finds them (most of these maps hold a few), then
            // doubling; never past the cap.
            let more = if len < SMALL { 1 } else { len.min(self.cap as usize - len) };
            self.entries.reserve_exact(more);
        }
        self.entries.push(entry);
        let i = len as u32;
        self.link_newest(i);
        self.index_place(i);
        (i, None)
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

    /// Frees place `i`, moving the last entry into it, and returns its entry.
    fn take(&mut self, i: u32) -> Entry<K, V> {
        self.unindex(i);
        self.unlink(i);
        let last = (self.entries.len() - 1) as u32;
        if i != last {
            // The last entry moves to `i`: its neighbours, the list's ends and the index
            // follow it.
            let (older, newer) = self.neighbours(last);
            self.point(older, newer, i, i);
            let Lru { entries, index, hasher, .. } = self;
            if let Some(index) = index.get_mut() {
                let h = hasher.hash_one(&entries[last as usize].key);
                if let Some(j) = index.find_mut(h, |&j| j == last) {
                    *j = i;
                }
            }
        }
        let e = self.entries.swap_remove(i as usize);
        if self.entries.is_empty() {
            // A burst's places and index are not kept at rest.
            self.entries = Vec::new();
            self.index = I::default();
            self.oldest = NIL;
            self.newest = NIL;
        }
        e
    }

    pub fn remove<Q: Hash + Eq + ?Sized>(&mut self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let i = self.find(k)?;
        Some(self.take(i).value)
    }

    /// Keeps the entries `keep` says yes to (not counted as evictions: the caller decided).
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        let mut i = 0;
        while i < self.entries.len() {
            let e = &mut self.entries[i];
            if keep(&e.key, &mut e.value) {
                i += 1;
            } else {
                // The last entry, not yet asked, moves into place `i`.
                self.take(i as u32);
            }
        }
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|e| &e.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
        assert_eq!((m.len(), m.entries.len()), (1, 1));
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
        assert_eq!((m.entries.len(), m.entries.capacity()), (3, 3), "places are reused, not added");
    }

    /// An obviously right LRU: the entries oldest first, found by a scan.
    #[derive(Default)]
    struct Model(Vec<(u16, u32)>);

    impl Model {
        fn at(&self, k: u16) -> Option<usize> {
            self.0.iter().position(|e| e.0 == k)
        }
        fn touch(&mut self, k: u16) -> Option<u32> {
            let e = self.0.remove(self.at(k)?);
            self.0.push(e);
            Some(e.1)
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u16, u32),
        Get(u16),
        Peek(u16),
        Remove(u16),
        GetOrInsert(u16, u32),
        RetainOdd,
    }

    fn op() -> impl Strategy<Value = Op> {
        // Keys from a range a little wider than the larger cap, so both evictions and hits.
        let k = 0u16..40;
        prop_oneof![
            4 => (k.clone(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            3 => k.clone().prop_map(Op::Get),
            1 => k.clone().prop_map(Op::Peek),
            2 => k.clone().prop_map(Op::Remove),
            3 => (k, any::<u32>()).prop_map(|(k, v)| Op::GetOrInsert(k, v)),
            1 => Just(Op::RetainOdd),
        ]
    }

    proptest! {
        // Caps below, at and past the size a scan serves, so the index is built, kept in step
        // with moved places, and dropped when the map empties.
        #[test]
        fn behaves_as_the_obvious_lru(cap in prop_oneof![Just(1usize), Just(3), Just(SMALL), Just(SMALL + 1), Just(30)], ops in proptest::collection::vec(op(), 1..300)) {
            behaves_as_the_model::<Inline>(cap, ops.clone())?;
            behaves_as_the_model::<Boxed>(cap, ops)?;
        }
    }

    /// [`behaves_as_the_obvious_lru`] with the index kept in `I`.
    fn behaves_as_the_model<I: IndexSlot>(cap: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
        let mut m: Lru<u16, u32, FastState, I> = Lru::with_hasher(cap);
        let mut model = Model::default();
        let mut evicted = 0;
        for op in ops {
            match op {
                Op::Insert(k, v) => {
                    let want = match model.touch(k) {
                        Some(_) => {
                            let last = model.0.len() - 1;
                            model.0[last].1 = v;
                            None
                        }
                        None => {
                            let gone = (model.0.len() >= cap).then(|| model.0.remove(0));
                            model.0.push((k, v));
                            gone
                        }
                    };
                    evicted += u64::from(want.is_some());
                    prop_assert_eq!(m.insert(k, v), want);
                }
                Op::Get(k) => prop_assert_eq!(m.get(&k).copied(), model.touch(k)),
                Op::Peek(k) => prop_assert_eq!(m.peek(&k).copied(), model.at(k).map(|i| model.0[i].1)),
                Op::Remove(k) => prop_assert_eq!(m.remove(&k), model.at(k).map(|i| model.0.remove(i).1)),
                Op::GetOrInsert(k, v) => {
                    let want = match model.touch(k) {
                        Some(old) => old,
                        None => {
                            if model.0.len() >= cap {
                                model.0.remove(0);
                                evicted += 1;
                            }
                            model.0.push((k, v));
                            v
                        }
                    };
                    prop_assert_eq!(*m.get_or_insert_with(k, || v), want);
                }
                Op::RetainOdd => {
                    m.retain(|k, _| k % 2 == 1);
                    model.0.retain(|e| e.0 % 2 == 1);
                }
            }
            prop_assert_eq!((m.len(), m.evicted()), (model.0.len(), evicted));
            prop_assert!(m.entries.capacity() <= cap, "never reserved past the cap");
            prop_assert!(
                m.index.get().is_none_or(|x| !x.is_empty() && x.len() == m.len()),
                "the index has every entry or none"
            );
            for &(k, v) in &model.0 {
                prop_assert!(m.contains_key(&k));
                prop_assert_eq!(m.peek(&k), Some(&v));
            }
        }
        Ok(())
    }

    #[test]
    fn grows_one_entry_at_a_time_while_small_and_frees_everything_when_empty() {
        grows_and_frees::<Inline>();
        grows_and_frees::<Boxed>();
        assert_eq!(std::mem::size_of::<Boxed>(), 8, "a session's maps: the index boxed");
    }

    fn grows_and_frees<I: IndexSlot>() {
        let mut m: Lru<u64, u64, FastState, I> = Lru::with_hasher(1_000);
        for k in 0..SMALL as u64 {
            m.insert(k, k);
            assert_eq!(m.entries.capacity(), m.len(), "no entry reserved ahead");
            assert!(m.index.get().is_none(), "a scan finds {} entries", m.len());
        }
        m.insert(100, 0);
        assert_eq!(m.index.get().map(|x| x.len()), Some(SMALL + 1), "indexed once past a scan's size");
        for k in 200..400 {
            m.insert(k, k);
        }
        assert!(m.entries.capacity() < 2 * m.len());
        m.retain(|_, _| false);
        assert_eq!((m.entries.capacity(), m.index.get().map_or(0, |x| x.capacity())), (0, 0));
        assert!(m.index.get().is_none() && m.index.make().capacity() == 0, "nothing kept");
    }
}
