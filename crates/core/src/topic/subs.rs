//! The subscribers of one filter: a compact set of `(key, value)` pairs.

use std::collections::HashMap;
use std::hash::Hash;
use std::mem;

/// From this many subscribers on, a filter gets a key → position index, so subscribing and
/// unsubscribing stay O(1) for a filter with thousands of subscribers.
const INDEX_FROM: usize = 16;
/// Below this many the index is dropped again (lower than `INDEX_FROM` so churn around the
/// threshold does not rebuild it every time).
const UNINDEX_BELOW: usize = 8;

/// The subscribers of one filter. Matching only iterates, so both forms keep the pairs in one
/// contiguous vector; only lookups by key differ.
pub(crate) enum Subs<K, V> {
    /// Searched linearly; exact capacity, so one subscriber costs one `(K, V)` allocation.
    Small(Vec<(K, V)>),
    /// With a position index; boxed so the small form stays three words.
    Large(Box<Indexed<K, V>>),
}

pub(crate) struct Indexed<K, V> {
    list: Vec<(K, V)>,
    index: HashMap<K, usize>,
}

impl<K, V> Default for Subs<K, V> {
    fn default() -> Self {
        Subs::Small(Vec::new())
    }
}

impl<K: Copy + Eq + Hash, V> Subs<K, V> {
    pub(crate) fn as_slice(&self) -> &[(K, V)] {
        match self {
            Subs::Small(list) => list,
            Subs::Large(large) => &large.list,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    pub(crate) fn get(&self, key: K) -> Option<&V> {
        match self {
            Subs::Small(list) => list.iter().find(|(k, _)| *k == key).map(|(_, v)| v),
            Subs::Large(large) => {
                let index = *large.index.get(&key)?;
                large.list.get(index).map(|(_, v)| v)
            }
        }
    }

    /// Adds or replaces; returns the previous value.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self {
            Subs::Small(list) => {
                if let Some((_, v)) = list.iter_mut().find(|(k, _)| *k == key) {
                    return Some(mem::replace(v, value));
                }
                if list.len() + 1 < INDEX_FROM {
                    list.reserve_exact(1);
                    list.push((key, value));
                } else {
                    let mut list = mem::take(list);
                    list.push((key, value));
                    let index = list.iter().enumerate().map(|(i, (k, _))| (*k, i)).collect();
                    *self = Subs::Large(Box::new(Indexed { list, index }));
                }
                None
            }
            Subs::Large(large) => {
                if let Some(&index) = large.index.get(&key) {
                    if let Some((_, v)) = large.list.get_mut(index) {
                        return Some(mem::replace(v, value));
                    }
                }
                large.index.insert(key, large.list.len());
                large.list.push((key, value));
                None
            }
        }
    }

    /// Removes; returns the value if `key` was there.
    pub(crate) fn remove(&mut self, key: K) -> Option<V> {
        match self {
            Subs::Small(list) => {
                let index = list.iter().position(|(k, _)| *k == key)?;
                let (_, value) = list.swap_remove(index);
                if list.len() * 2 < list.capacity() {
                    list.shrink_to_fit();
                }
                Some(value)
            }
            Subs::Large(large) => {
                let index = large.index.remove(&key)?;
                if index >= large.list.len() {
                    return None;
                }
                let (_, value) = large.list.swap_remove(index);
                // The last pair moved into the hole: point its index entry there.
                if let Some((moved, _)) = large.list.get(index) {
                    large.index.insert(*moved, index);
                }
                if large.list.len() < UNINDEX_BELOW {
                    let mut list = mem::take(&mut large.list);
                    list.shrink_to_fit();
                    *self = Subs::Small(list);
                } else if large.list.len() * 4 < large.list.capacity() {
                    let target = large.list.len() * 2;
                    large.list.shrink_to(target);
                    large.index.shrink_to(target);
                }
                Some(value)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_form_is_three_words() {
        assert_eq!(
            std::mem::size_of::<Subs<u32, u8>>(),
            3 * std::mem::size_of::<usize>()
        );
    }

    #[test]
    fn grows_an_index_and_drops_it() {
        let mut s: Subs<u32, u32> = Subs::default();
        for k in 0..1000 {
            assert_eq!(s.insert(k, k), None);
        }
        assert!(matches!(s, Subs::Large(_)));
        assert_eq!(s.insert(7, 70), Some(7));
        assert_eq!(s.get(7), Some(&70));
        assert_eq!(s.as_slice().len(), 1000);
        for k in (0..1000).filter(|k| k % 3 != 0) {
            assert_eq!(s.remove(k), Some(if k == 7 { 70 } else { k }));
            assert_eq!(s.remove(k), None);
        }
        for k in (0..1000).step_by(3) {
            assert_eq!(s.get(k), Some(&k));
        }
        for k in (0..990).step_by(3) {
            assert_eq!(s.remove(k), Some(k));
        }
        assert!(matches!(s, Subs::Small(_)));
        let mut left: Vec<u32> = s.as_slice().iter().map(|(k, _)| *k).collect();
        left.sort_unstable();
        assert_eq!(left, vec![990, 993, 996, 999]);
        for k in left {
            assert_eq!(s.remove(k), Some(k));
        }
        assert!(s.is_empty());
    }
}
