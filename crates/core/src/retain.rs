//! Retained messages: at most one per topic name, found again by the filters of new
//! subscriptions (MQTT 3.3.1.3).
//!
//! A trie of levels, so a subscription with wildcards walks only the branches its filter can
//! match, and a filter without wildcards is a plain lookup. Like the topic tree, every walk is
//! iterative (topics can be tens of thousands of levels deep).
//!
//! When a message expires is the broker's timers' business (`broker::timers`), which index
//! every deadline in one place; the broker keeps them in step as it stores and removes.

use std::fmt;

use crate::topic::trie::{split_level, Edge, Node};

/// The retained message of every topic that has one. `M` is the broker's message type.
pub struct RetainedStore<M> {
    /// The root stands for no topic at all; every name is one or more levels below it.
    root: Node<Option<M>>,
    len: usize,
}

/// The trie path of a topic name: its levels, each literal.
fn levels(topic: &str) -> impl Iterator<Item = Edge<'_>> + Clone {
    topic.split('/').map(Edge::Level)
}

/// Whether a filter has a wildcard level ([MQTT-4.7.1-2], [MQTT-4.7.1-3]: wildcards occupy a
/// whole level).
fn has_wildcard(filter: &str) -> bool {
    filter.split('/').any(|level| level == "+" || level == "#")
}

/// A node still to visit in a wildcard walk.
struct Frame<'a, M> {
    node: &'a Node<Option<M>>,
    /// The node's own level.
    label: &'a str,
    /// Length of the topic buffer holding the parent's name and the `/` after it.
    parent_len: usize,
    /// The filter below the parent's level; `None` when it ended at the parent's level.
    rest: Option<&'a str>,
}

impl<M> Default for RetainedStore<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M> fmt::Debug for RetainedStore<M> {
    // Not derived: a derived Debug would recurse over the trie's depth.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetainedStore")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<M> RetainedStore<M> {
    /// An empty store.
    pub fn new() -> Self {
        RetainedStore {
            root: Node::default(),
            len: 0,
        }
    }

    /// Stores (replaces) the retained message of `topic`, a topic name; returns the previous
    /// one. [MQTT-3.3.1-5] a new retained message replaces the one the topic had.
    pub fn insert(&mut self, topic: &str, msg: M) -> Option<M> {
        let previous = self.root.find_or_create(levels(topic)).payload.replace(msg);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    /// Removes the retained message of `topic` (a retained PUBLISH with an empty payload clears
    /// it [MQTT-3.3.1-10]); returns it. Levels left empty are freed.
    pub fn remove(&mut self, topic: &str) -> Option<M> {
        let node = self.root.find_mut(levels(topic))?;
        let removed = node.payload.take()?;
        if node.is_bare() {
            self.root.prune(levels(topic));
        }
        self.len -= 1;
        Some(removed)
    }

    /// The retained message of `topic`.
    pub fn get(&self, topic: &str) -> Option<&M> {
        self.root.find(levels(topic))?.payload.as_ref()
    }

    /// Calls `f(topic, msg)` for every retained message whose topic matches `filter`, a plain
    /// (not `$share/…`) topic filter, by the rules of 4.7: `+` one level, `#` the parent level
    /// and all below, and [MQTT-4.7.2-1] no topic starting with `$` for a filter starting with a
    /// wildcard. A filter without wildcards is one lookup; with wildcards only the branches the
    /// filter can match are walked.
    pub fn for_each_match(&self, filter: &str, mut f: impl FnMut(&str, &M)) {
        if !has_wildcard(filter) {
            if let Some(msg) = self.get(filter) {
                f(filter, msg);
            }
            return;
        }
        self.walk(filter, filter.starts_with(['+', '#']), &mut f);
    }

    /// Calls `f(topic, msg)` for every retained message, `$` topics included.
    pub fn for_each(&self, mut f: impl FnMut(&str, &M)) {
        self.walk("#", false, &mut f);
    }

    /// Removes every message for which `keep(topic, msg)` returns false (to purge expired ones).
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &M) -> bool) {
        let mut doomed = Vec::new();
        self.for_each(|topic, msg| {
            if !keep(topic, msg) {
                doomed.push(topic.to_owned());
            }
        });
        for topic in doomed {
            self.remove(&topic);
        }
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of trie nodes, for memory diagnostics: 0 once every message is removed.
    pub fn node_count(&self) -> usize {
        self.root.count_below()
    }

    /// Depth-first walk of the nodes `filter` can match, rebuilding each topic name in one
    /// buffer. `skip_dollar`: leave out first levels starting with `$` [MQTT-4.7.2-1].
    fn walk(&self, filter: &str, skip_dollar: bool, f: &mut impl FnMut(&str, &M)) {
        let mut topic = String::new();
        let mut stack = Vec::new();
        push_children(&mut stack, &self.root, filter, 0, skip_dollar);
        while let Some(frame) = stack.pop() {
            // Everything pushed after this frame was below it and is done: the buffer up to
            // `parent_len` still holds the parent's name.
            topic.truncate(frame.parent_len);
            topic.push_str(frame.label);
            let Some(rest) = frame.rest else {
                if let Some(entry) = &frame.node.payload {
                    f(&topic, entry);
                }
                continue;
            };
            // [MQTT-4.7.1-2] `#` matches the level it hangs from as well as all below.
            if split_level(rest).0 == "#" {
                if let Some(entry) = &frame.node.payload {
                    f(&topic, entry);
                }
            }
            if !frame.node.children.is_empty() {
                topic.push('/');
                push_children(&mut stack, frame.node, rest, topic.len(), false);
            }
        }
    }
}

/// Queues the children of `node` that the filter level at the start of `rest` matches.
fn push_children<'a, M>(
    stack: &mut Vec<Frame<'a, M>>,
    node: &'a Node<Option<M>>,
    rest: &'a str,
    parent_len: usize,
    skip_dollar: bool,
) {
    let (level, below) = split_level(rest);
    let next = match level {
        // Every child, and everything under it: the rest of the filter stays `#`.
        "#" => Some(rest),
        "+" => below,
        literal => {
            if let Some(child) = node.children.get(literal) {
                stack.push(Frame {
                    node: child,
                    label: literal,
                    parent_len,
                    rest: below,
                });
            }
            return;
        }
    };
    for (label, child) in node.children.iter() {
        if skip_dollar && label.starts_with('$') {
            continue;
        }
        stack.push(Frame {
            node: child,
            label,
            parent_len,
            rest: next,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_of(topics: &[&'static str]) -> RetainedStore<&'static str> {
        let mut store = RetainedStore::new();
        for topic in topics {
            assert_eq!(store.insert(topic, *topic), None);
        }
        store
    }

    /// The topics matching `filter`, sorted, checked against the reference matcher and against
    /// the message stored under each.
    fn matching(store: &RetainedStore<&'static str>, filter: &str) -> Vec<String> {
        let mut out = Vec::new();
        store.for_each_match(filter, |topic, msg| {
            assert_eq!(topic, *msg);
            out.push(topic.to_owned());
        });
        out.sort();
        let mut all = Vec::new();
        store.for_each(|topic, _| all.push(topic.to_owned()));
        let mut reference: Vec<_> = all
            .into_iter()
            .filter(|t| makelaar_proto::topic::filter_matches(filter, t))
            .collect();
        reference.sort();
        assert_eq!(out, reference, "filter {filter:?}");
        out
    }

    const TOPICS: &[&str] = &[
        "sport",
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "sport/tennis/player1/score/wimbledon",
        "sport/tennis/player2",
        "sport/",
        "/finance",
        "finance",
        "a//b",
        "$SYS/monitor/Clients",
        "$SYS",
        "x/$y",
    ];

    #[test]
    fn spec_examples() {
        let store = store_of(TOPICS);
        assert_eq!(
            matching(&store, "sport/tennis/player1/#"),
            [
                "sport/tennis/player1",
                "sport/tennis/player1/ranking",
                "sport/tennis/player1/score/wimbledon"
            ]
        );
        assert_eq!(
            matching(&store, "sport/tennis/+"),
            ["sport/tennis/player1", "sport/tennis/player2"]
        );
        // [MQTT-4.7.1-2] `sport/#` includes `sport` itself.
        assert_eq!(matching(&store, "sport/#").len(), 6);
        assert_eq!(matching(&store, "sport/+"), ["sport/"]);
        assert_eq!(matching(&store, "+/+"), ["/finance", "sport/", "x/$y"]);
        assert_eq!(matching(&store, "/+"), ["/finance"]);
        assert_eq!(matching(&store, "+"), ["finance", "sport"]);
        assert_eq!(matching(&store, "a/+/b"), ["a//b"]);
        assert_eq!(matching(&store, "a//b"), ["a//b"]);
        assert_eq!(
            matching(&store, "sport/tennis/player2"),
            ["sport/tennis/player2"]
        );
        assert!(matching(&store, "sport/tennis").is_empty());
        assert!(matching(&store, "nothing/+/#").is_empty());
    }

    #[test]
    fn dollar_topics() {
        let store = store_of(TOPICS);
        // [MQTT-4.7.2-1]
        let everything = matching(&store, "#");
        assert_eq!(everything.len(), TOPICS.len() - 2);
        assert!(everything.iter().all(|t| !t.starts_with('$')));
        assert!(matching(&store, "+/monitor/Clients").is_empty());
        assert_eq!(matching(&store, "$SYS/#"), ["$SYS", "$SYS/monitor/Clients"]);
        assert_eq!(matching(&store, "$SYS/monitor/+"), ["$SYS/monitor/Clients"]);
        assert_eq!(matching(&store, "x/+"), ["x/$y"]);
        let mut all = 0;
        store.for_each(|_, _| all += 1);
        assert_eq!(all, TOPICS.len());
    }

    #[test]
    fn insert_replaces_remove_prunes() {
        let mut store = RetainedStore::new();
        assert_eq!(store.insert("a/b", 1), None);
        assert_eq!(store.insert("a/b", 2), Some(1));
        assert_eq!(store.insert("a", 3), None);
        assert_eq!(store.insert("a/b/c/d", 4), None);
        assert_eq!(store.len(), 3);
        assert_eq!(store.get("a/b"), Some(&2));
        assert_eq!(store.get("a/b/c"), None);
        assert_eq!(store.remove("a/b/c"), None);
        assert_eq!(store.remove("zzz"), None);
        assert_eq!(store.node_count(), 4);
        assert_eq!(store.remove("a/b/c/d"), Some(4));
        assert_eq!(store.node_count(), 2);
        assert_eq!(store.remove("a"), Some(3));
        assert_eq!(store.node_count(), 2, "a still leads to a/b");
        assert_eq!(store.remove("a/b"), Some(2));
        assert_eq!(store.remove("a/b"), None);
        assert!(store.is_empty());
        assert_eq!(store.node_count(), 0);
    }

    #[test]
    fn retain_purges_and_prunes() {
        let mut store = RetainedStore::new();
        for i in 0..100u32 {
            store.insert(&format!("s/{i}/t"), i);
        }
        store.insert("$SYS/x", 1000);
        store.retain(|topic, v| {
            assert!(topic.ends_with(&format!("/{}", if *v == 1000 { "x" } else { "t" })));
            *v < 1000 && v % 10 == 0
        });
        assert_eq!(store.len(), 10);
        assert_eq!(store.get("s/30/t"), Some(&30));
        assert_eq!(store.get("s/31/t"), None);
        assert_eq!(store.node_count(), 1 + 2 * 10);
        store.retain(|_, _| false);
        assert!(store.is_empty());
        assert_eq!(store.node_count(), 0);
    }

    #[test]
    fn deep_topics_do_not_overflow_the_stack() {
        let topic = "/".repeat(65_535);
        let mut store = RetainedStore::new();
        store.insert(&topic, 1u8);
        let mut n = 0;
        store.for_each_match("#", |_, _| n += 1);
        store.for_each_match(&format!("{}+", "/".repeat(65_535)), |t, _| {
            assert_eq!(t, topic);
            n += 1;
        });
        assert_eq!(n, 2);
        assert_eq!(store.remove(&topic), Some(1));
        assert_eq!(store.node_count(), 0);
    }
}
