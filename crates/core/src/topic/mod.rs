//! The subscription index: which subscriptions match a published topic name (MQTT section 4.7).
//!
//! [`TopicTree`] keeps filters without wildcards in a hash map keyed by the whole filter (one
//! lookup per publish, and the smallest footprint for the common "one client, one exact topic"
//! case) and filters with wildcards in a trie of levels with dedicated `+` and `#` slots, which a
//! publish walks along the matching branches only.
//!
//! Filters are expected to be valid ([`makelaar_proto::topic::validate_topic_filter`]) and plain
//! (the broker strips `$share/GROUP/` and keeps shared subscriptions in a tree keyed by group).
//! Nothing panics on an invalid filter; it just does not match like a wildcard where it is
//! malformed (a `#` that is not last is an ordinary level here).

mod subs;
pub mod sys;
pub(crate) mod trie;

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;

use subs::Subs;
use trie::{split_level, Edge, Node, Payload};

/// Subscriptions by filter: filter → set of (subscriber key `K`, value `V`).
///
/// `K` is a small copyable handle (a session or, for shared subscriptions, a group); `V` is what
/// the subscription carries (its options). One key has at most one value per filter; a key with
/// two overlapping filters is reported once per matching filter.
pub struct TopicTree<K, V> {
    /// Filters without wildcards, by the whole filter.
    exact: HashMap<Box<str>, Subs<K, V>>,
    /// Filters with a `+` or `#` level.
    wild: Node<WildSubs<K, V>>,
    /// Number of (filter, key) subscriptions.
    len: usize,
}

/// What a wildcard-trie node stores: the subscriptions whose filter ends at this node, and
/// those whose filter is this node followed by `/#` (or `#` alone at the root).
struct WildSubs<K, V> {
    subs: Subs<K, V>,
    hash: Subs<K, V>,
}

impl<K, V> Default for WildSubs<K, V> {
    fn default() -> Self {
        WildSubs {
            subs: Subs::default(),
            hash: Subs::default(),
        }
    }
}

impl<K: Copy + Eq + Hash, V> Payload for WildSubs<K, V> {
    fn is_empty(&self) -> bool {
        self.subs.is_empty() && self.hash.is_empty()
    }
}

/// A branch of a match walk still to follow: a trie node and the part of the topic below it
/// (`None`: the topic ends at that node).
type Branch<'a, K, V> = (&'a Node<WildSubs<K, V>>, Option<&'a str>);

/// Where a filter is stored.
enum Shape<'a> {
    /// No wildcard level: in the exact map.
    Exact,
    /// In the trie, at the node reached by `path` (`None`: the root, for `#`), in the `#` slot
    /// when `hash`.
    Wild { path: Option<&'a str>, hash: bool },
}

fn shape(filter: &str) -> Shape<'_> {
    // [MQTT-4.7.1-2], [MQTT-4.7.1-3] wildcards occupy a whole level; `a+` is an ordinary level.
    if !filter.split('/').any(|level| level == "+" || level == "#") {
        return Shape::Exact;
    }
    if filter == "#" {
        return Shape::Wild {
            path: None,
            hash: true,
        };
    }
    match filter.strip_suffix("/#") {
        Some(path) => Shape::Wild {
            path: Some(path),
            hash: true,
        },
        None => Shape::Wild {
            path: Some(filter),
            hash: false,
        },
    }
}

/// The trie edges of a filter path.
fn edges(path: Option<&str>) -> impl Iterator<Item = Edge<'_>> + Clone {
    path.into_iter()
        .flat_map(|path| path.split('/'))
        .map(|level| match level {
            "+" => Edge::Plus,
            level => Edge::Level(level),
        })
}

impl<K: Copy + Eq + Hash, V> Default for TopicTree<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V> fmt::Debug for TopicTree<K, V> {
    // Not derived: a derived Debug would recurse over the trie's depth.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopicTree")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<K: Copy + Eq + Hash, V> TopicTree<K, V> {
    /// An empty tree.
    pub fn new() -> Self {
        TopicTree {
            exact: HashMap::new(),
            wild: Node::default(),
            len: 0,
        }
    }

    /// Adds or replaces the subscription of `key` to `filter`; returns the previous value.
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let previous = match shape(filter) {
            Shape::Exact => match self.exact.get_mut(filter) {
                Some(subs) => subs.insert(key, value),
                None => {
                    let mut subs = Subs::default();
                    subs.insert(key, value);
                    self.exact.insert(filter.into(), subs);
                    None
                }
            },
            Shape::Wild { path, hash } => {
                let node = self.wild.find_or_create(edges(path));
                let slot = if hash {
                    &mut node.payload.hash
                } else {
                    &mut node.payload.subs
                };
                slot.insert(key, value)
            }
        };
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    /// Removes the subscription of `key` to `filter`; returns its value if it existed. Nodes
    /// and map entries left empty are freed, so memory does not grow with churn.
    pub fn remove(&mut self, filter: &str, key: K) -> Option<V> {
        let removed = match shape(filter) {
            Shape::Exact => {
                let subs = self.exact.get_mut(filter)?;
                let removed = subs.remove(key)?;
                if subs.is_empty() {
                    self.exact.remove(filter);
                    // A map does not shrink by itself; keep it within 4× of what it holds.
                    if self.exact.len() * 4 < self.exact.capacity() {
                        self.exact.shrink_to(self.exact.len() * 2);
                    }
                }
                removed
            }
            Shape::Wild { path, hash } => {
                let node = self.wild.find_mut(edges(path))?;
                let slot = if hash {
                    &mut node.payload.hash
                } else {
                    &mut node.payload.subs
                };
                let removed = slot.remove(key)?;
                if node.is_bare() {
                    self.wild.prune(edges(path));
                }
                removed
            }
        };
        self.len -= 1;
        Some(removed)
    }

    /// The value of `key`'s subscription to `filter`.
    pub fn get(&self, filter: &str, key: K) -> Option<&V> {
        match shape(filter) {
            Shape::Exact => self.exact.get(filter)?.get(key),
            Shape::Wild { path, hash } => {
                let node = self.wild.find(edges(path))?;
                if hash {
                    node.payload.hash.get(key)
                } else {
                    node.payload.subs.get(key)
                }
            }
        }
    }

    /// Calls `f(key, value)` for every subscription whose filter matches the topic name `topic`
    /// (MQTT 4.7): `+` matches exactly one level, possibly empty; `#` matches its parent level and
    /// everything below (`sport/#` matches `sport`) [MQTT-4.7.1-2]; a filter starting with a
    /// wildcard does not match a name starting with `$` [MQTT-4.7.2-1]. A key subscribed with
    /// several matching filters is reported once per filter; merging is the caller's business.
    ///
    /// Does not allocate unless the walk branches more than eight times at once.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(K, &V)) {
        let mut report = |subs: &Subs<K, V>| {
            for (key, value) in subs.as_slice() {
                f(*key, value);
            }
        };
        if let Some(subs) = self.exact.get(topic) {
            report(subs);
        }
        let root = &self.wild;
        if root.is_bare() {
            return;
        }
        // Following a literal child continues in place; only `+` branches wait on the stack.
        let mut pending: SmallStack<Branch<'_, K, V>, 8> = SmallStack::new();
        let (first, below) = split_level(topic);
        // [MQTT-4.7.2-1] `#` and `+/…` at the first level do not match `$SYS/…` and the like.
        if !topic.starts_with('$') {
            report(&root.payload.hash);
            if let Some(plus) = root.plus.as_deref() {
                pending.push((plus, below));
            }
        }
        if let Some(child) = root.children.get(first) {
            pending.push((child, below));
        }
        while let Some((mut node, mut rest)) = pending.pop() {
            loop {
                // [MQTT-4.7.1-2] `#` matches the level it hangs from and every level below.
                report(&node.payload.hash);
                let Some(rest_now) = rest else {
                    report(&node.payload.subs);
                    break;
                };
                let (level, below) = split_level(rest_now);
                // [MQTT-4.7.1-3] `+` matches exactly one level, empty ones included.
                if let Some(plus) = node.plus.as_deref() {
                    pending.push((plus, below));
                }
                match node.children.get(level) {
                    Some(child) => {
                        node = child;
                        rest = below;
                    }
                    None => break,
                }
            }
        }
    }

    /// Number of (filter, key) subscriptions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no subscriptions.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of storage nodes (exact-filter entries plus wildcard-trie nodes), for memory
    /// diagnostics: 0 once every subscription is removed.
    pub fn node_count(&self) -> usize {
        self.exact.len() + self.wild.count_below()
    }
}

/// A LIFO stack that keeps its first `N` entries inline, so the common walk does not allocate.
struct SmallStack<T, const N: usize> {
    inline: [Option<T>; N],
    len: usize,
    spill: Vec<T>,
}

impl<T: Copy, const N: usize> SmallStack<T, N> {
    fn new() -> Self {
        SmallStack {
            inline: [None; N],
            len: 0,
            spill: Vec::new(),
        }
    }

    fn push(&mut self, item: T) {
        if self.spill.is_empty() {
            if let Some(slot) = self.inline.get_mut(self.len) {
                *slot = Some(item);
                self.len += 1;
                return;
            }
        }
        self.spill.push(item);
    }

    fn pop(&mut self) -> Option<T> {
        if let Some(item) = self.spill.pop() {
            return Some(item);
        }
        self.len = self.len.checked_sub(1)?;
        self.inline.get_mut(self.len).and_then(Option::take)
    }
}

#[cfg(test)]
mod tests;
