//! A table that remembers which rows were written since its auditor last looked.
//!
//! The model's own invariant checker ([`super::audit`]) runs after every write. Re-reading
//! every workflow, nonce counter and transaction each time made it a twentieth of a simulated
//! `steady-state` seed, growing with the run (issue 13's note). A [`Tracked`] table reads as the
//! `BTreeMap` it wraps, but every way to write it goes through a method here that notes the
//! key first: there is no `DerefMut`, so no write can bypass the note, and the checker needs to
//! look only at the rows noted.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;

#[derive(Clone, Debug)]
pub struct Tracked<K: Ord + Clone, V> {
    rows: BTreeMap<K, V>,
    /// Keys written (inserted, changed or removed) since the last [`Tracked::take_written`].
    written: BTreeSet<K>,
}

impl<K: Ord + Clone, V> Default for Tracked<K, V> {
    fn default() -> Self {
        Tracked {
            rows: BTreeMap::new(),
            written: BTreeSet::new(),
        }
    }
}

/// Two tables are equal when their rows are: what was noted is the auditor's business.
impl<K: Ord + Clone, V: PartialEq> PartialEq for Tracked<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.rows == other.rows
    }
}
impl<K: Ord + Clone, V: Eq> Eq for Tracked<K, V> {}

impl<K: Ord + Clone, V> Deref for Tracked<K, V> {
    type Target = BTreeMap<K, V>;
    fn deref(&self) -> &BTreeMap<K, V> {
        &self.rows
    }
}

impl<'a, K: Ord + Clone, V> IntoIterator for &'a Tracked<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::collections::btree_map::Iter<'a, K, V>;
    fn into_iter(self) -> Self::IntoIter {
        self.rows.iter()
    }
}

impl<K: Ord + Clone, V> FromIterator<(K, V)> for Tracked<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let rows: BTreeMap<K, V> = iter.into_iter().collect();
        let written = rows.keys().cloned().collect();
        Tracked { rows, written }
    }
}

impl<K: Ord + Clone, V> Tracked<K, V> {
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.written.insert(key.clone());
        self.rows.get_mut(key)
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.written.insert(key.clone());
        self.rows.insert(key, value)
    }

    pub fn entry(&mut self, key: K) -> Entry<'_, K, V> {
        self.written.insert(key.clone());
        self.rows.entry(key)
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.written.insert(key.clone());
        self.rows.remove(key)
    }

    /// The keys written since the last call, in order; the note starts empty again.
    pub fn take_written(&mut self) -> BTreeSet<K> {
        std::mem::take(&mut self.written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_write_is_noted_once_and_reads_are_not() {
        let mut t: Tracked<i64, &str> = Tracked::default();
        t.insert(3, "a");
        t.insert(1, "b");
        *t.get_mut(&3).unwrap() = "c";
        t.entry(7).or_insert("d");
        t.remove(&1);
        assert!(t.get_mut(&9).is_none());
        assert_eq!(t.get(&3), Some(&"c"));
        assert_eq!(t.len(), 2);
        assert_eq!(
            t.take_written().into_iter().collect::<Vec<_>>(),
            [1, 3, 7, 9]
        );
        assert!(t.take_written().is_empty(), "taken: the note starts over");
        let _ = (t.get(&3), t[&7], t.values().count());
        assert!(t.take_written().is_empty(), "reads are not noted");
    }

    #[test]
    fn equality_ignores_the_note() {
        let mut a: Tracked<i64, i64> = [(1, 1)].into_iter().collect();
        let b: Tracked<i64, i64> = [(1, 1)].into_iter().collect();
        a.take_written();
        assert_eq!(a, b);
    }
}
