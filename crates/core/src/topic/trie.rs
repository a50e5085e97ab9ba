//! The level trie shared by the subscription tree and the retained-message store.
//!
//! Every walk here is iterative, never recursive: a topic may be 65,535 bytes long, which is up to
//! 65,536 (empty) levels, and a trie that deep would overflow a task's stack if it were walked,
//! pruned or dropped by recursion. Both the depth and the content come from the network.

use std::collections::HashMap;
use std::mem;

/// An edge from a node to one of its children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Edge<'a> {
    /// A literal level; may be empty (`a//b` has an empty second level).
    Level(&'a str),
    /// The single-level wildcard `+` of a subscription filter (never used by the retained store).
    Plus,
}

/// Splits the first level off a topic: `"a/b/c"` gives `("a", Some("b/c"))`, `"a"` gives
/// `("a", None)` and `"a/"` gives `("a", Some(""))` (a trailing empty level).
pub(crate) fn split_level(topic: &str) -> (&str, Option<&str>) {
    match topic.split_once('/') {
        Some((level, rest)) => (level, Some(rest)),
        None => (topic, None),
    }
}

/// What a node stores besides its children.
pub(crate) trait Payload: Default {
    /// Whether nothing is stored, so the node may be pruned once it has no children either.
    fn is_empty(&self) -> bool;
}

impl<M> Payload for Option<M> {
    fn is_empty(&self) -> bool {
        self.is_none()
    }
}

/// One level of the trie.
pub(crate) struct Node<P> {
    /// Children by literal level.
    pub(crate) children: Children<Box<Node<P>>>,
    /// The `+` child, kept apart so matching does not look it up by name at every level.
    pub(crate) plus: Option<Box<Node<P>>>,
    pub(crate) payload: P,
}

impl<P: Payload> Default for Node<P> {
    fn default() -> Self {
        Node {
            children: Children::default(),
            plus: None,
            payload: P::default(),
        }
    }
}

impl<P> Node<P> {
    fn child_count(&self) -> usize {
        self.children.len() + usize::from(self.plus.is_some())
    }

    /// Moves all children out into `out`, leaving this node childless.
    fn detach_children(&mut self, out: &mut Vec<Box<Node<P>>>) {
        self.children.drain_into(out);
        if let Some(plus) = self.plus.take() {
            out.push(plus);
        }
    }
}

impl<P: Payload> Node<P> {
    /// No payload and no children: the node carries nothing and can go.
    pub(crate) fn is_bare(&self) -> bool {
        self.payload.is_empty() && self.children.is_empty() && self.plus.is_none()
    }

    pub(crate) fn child(&self, edge: Edge<'_>) -> Option<&Node<P>> {
        match edge {
            Edge::Level(level) => self.children.get(level).map(|c| &**c),
            Edge::Plus => self.plus.as_deref(),
        }
    }

    fn child_mut(&mut self, edge: Edge<'_>) -> Option<&mut Node<P>> {
        match edge {
            Edge::Level(level) => self.children.get_mut(level).map(|c| &mut **c),
            Edge::Plus => self.plus.as_deref_mut(),
        }
    }

    fn child_or_insert(&mut self, edge: Edge<'_>) -> &mut Node<P> {
        match edge {
            Edge::Level(level) => self.children.get_or_insert_with(level, Box::default),
            Edge::Plus => self.plus.get_or_insert_with(Box::default),
        }
    }

    fn remove_child(&mut self, edge: Edge<'_>) -> Option<Box<Node<P>>> {
        match edge {
            Edge::Level(level) => self.children.remove(level),
            Edge::Plus => self.plus.take(),
        }
    }

    /// The node at the end of `path`, if it exists.
    pub(crate) fn find<'e>(&self, path: impl IntoIterator<Item = Edge<'e>>) -> Option<&Node<P>> {
        let mut node = self;
        for edge in path {
            node = node.child(edge)?;
        }
        Some(node)
    }

    /// The node at the end of `path`, if it exists, mutably.
    pub(crate) fn find_mut<'e>(
        &mut self,
        path: impl IntoIterator<Item = Edge<'e>>,
    ) -> Option<&mut Node<P>> {
        let mut node = self;
        for edge in path {
            node = node.child_mut(edge)?;
        }
        Some(node)
    }

    /// The node at the end of `path`, creating the missing ones.
    pub(crate) fn find_or_create<'e>(
        &mut self,
        path: impl IntoIterator<Item = Edge<'e>>,
    ) -> &mut Node<P> {
        let mut node = self;
        for edge in path {
            node = node.child_or_insert(edge);
        }
        node
    }

    /// After something was removed from the node at the end of `path`: removes that node and
    /// every ancestor that only existed to lead to it, so the trie does not keep dead branches
    /// (memory must not grow with subscribe/unsubscribe or retain/clear churn).
    pub(crate) fn prune<'e, I>(&mut self, path: I)
    where
        I: IntoIterator<Item = Edge<'e>>,
        I::IntoIter: Clone,
    {
        let path = path.into_iter();
        // First pass, read-only: find where the removable chain starts. A node belongs to it when
        // it stores nothing and has no child besides the next one on the path; the bottom node
        // must have no child at all.
        let mut cut = None;
        let mut node: &Node<P> = self;
        for (depth, edge) in path.clone().enumerate() {
            let Some(child) = node.child(edge) else {
                return;
            };
            if child.payload.is_empty() && child.child_count() <= 1 {
                cut.get_or_insert(depth);
            } else {
                cut = None;
            }
            node = child;
        }
        let Some(cut) = cut else {
            return;
        };
        if !node.is_bare() {
            return;
        }
        // Second pass: walk to the chain's parent and unhook the chain (dropped iteratively).
        let mut edges = path;
        let mut parent: &mut Node<P> = self;
        for _ in 0..cut {
            let Some(edge) = edges.next() else {
                return;
            };
            let Some(child) = parent.child_mut(edge) else {
                return;
            };
            parent = child;
        }
        if let Some(edge) = edges.next() {
            drop(parent.remove_child(edge));
        }
    }

    /// Number of nodes below this one.
    pub(crate) fn count_below(&self) -> usize {
        let mut count = 0;
        let mut stack = vec![self];
        while let Some(node) = stack.pop() {
            for (_, child) in node.children.iter() {
                stack.push(child);
            }
            stack.extend(node.plus.as_deref());
            count += node.child_count();
        }
        count
    }
}

impl<P> Drop for Node<P> {
    /// Drops the subtree without recursion (see the module comment): children are detached onto
    /// a heap stack, so every node is dropped childless.
    fn drop(&mut self) {
        if self.children.is_empty() && self.plus.is_none() {
            return;
        }
        let mut stack = Vec::new();
        self.detach_children(&mut stack);
        while let Some(mut node) = stack.pop() {
            node.detach_children(&mut stack);
        }
    }
}

/// Up to this many children are kept in a vector and found by comparing levels; beyond it a hash
/// map is cheaper. Most nodes have one or a few children.
const FEW_MAX: usize = 8;

/// The literal children of a node, by level.
pub(crate) enum Children<N> {
    /// Exact capacity, searched linearly.
    Few(Vec<(Box<str>, N)>),
    /// Boxed on purpose: a `HashMap` is six words, the box keeps every node's `Children` at
    /// three.
    #[allow(clippy::box_collection)]
    Many(Box<HashMap<Box<str>, N>>),
}

impl<N> Default for Children<N> {
    fn default() -> Self {
        Children::Few(Vec::new())
    }
}

impl<N> Children<N> {
    pub(crate) fn len(&self) -> usize {
        match self {
            Children::Few(v) => v.len(),
            Children::Many(m) => m.len(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn get(&self, level: &str) -> Option<&N> {
        match self {
            Children::Few(v) => v.iter().find(|(l, _)| **l == *level).map(|(_, n)| n),
            Children::Many(m) => m.get(level),
        }
    }

    pub(crate) fn get_mut(&mut self, level: &str) -> Option<&mut N> {
        match self {
            Children::Few(v) => v.iter_mut().find(|(l, _)| **l == *level).map(|(_, n)| n),
            Children::Many(m) => m.get_mut(level),
        }
    }

    pub(crate) fn get_or_insert_with(&mut self, level: &str, make: impl FnOnce() -> N) -> &mut N {
        if let Children::Few(v) = self {
            if v.len() >= FEW_MAX && !v.iter().any(|(l, _)| **l == *level) {
                let map: HashMap<Box<str>, N> = mem::take(v).into_iter().collect();
                *self = Children::Many(Box::new(map));
            }
        }
        match self {
            Children::Few(v) => {
                let index = match v.iter().position(|(l, _)| **l == *level) {
                    Some(index) => index,
                    None => {
                        // Exact growth: most nodes keep one or two children for their lifetime.
                        v.reserve_exact(1);
                        v.push((level.into(), make()));
                        v.len() - 1
                    }
                };
                match v.get_mut(index) {
                    Some((_, node)) => node,
                    // The index was just found or pushed.
                    None => unreachable!("child index out of bounds"),
                }
            }
            Children::Many(m) => m.entry(level.into()).or_insert_with(make),
        }
    }

    pub(crate) fn remove(&mut self, level: &str) -> Option<N> {
        match self {
            Children::Few(v) => {
                let index = v.iter().position(|(l, _)| **l == *level)?;
                let (_, node) = v.swap_remove(index);
                if v.len() * 2 < v.capacity() {
                    v.shrink_to_fit();
                }
                Some(node)
            }
            Children::Many(m) => {
                let node = m.remove(level)?;
                if m.len() <= FEW_MAX / 2 {
                    let mut few = Vec::with_capacity(m.len());
                    few.extend(m.drain());
                    *self = Children::Few(few);
                } else if m.len() * 4 < m.capacity() {
                    m.shrink_to(m.len() * 2);
                }
                Some(node)
            }
        }
    }

    pub(crate) fn iter(&self) -> Iter<'_, N> {
        match self {
            Children::Few(v) => Iter::Few(v.iter()),
            Children::Many(m) => Iter::Many(m.iter()),
        }
    }

    fn drain_into(&mut self, out: &mut Vec<N>) {
        match mem::take(self) {
            Children::Few(v) => out.extend(v.into_iter().map(|(_, n)| n)),
            Children::Many(m) => out.extend(m.into_values()),
        }
    }
}

/// Iterator over `(level, child)`, in no particular order.
pub(crate) enum Iter<'a, N> {
    Few(std::slice::Iter<'a, (Box<str>, N)>),
    Many(std::collections::hash_map::Iter<'a, Box<str>, N>),
}

impl<'a, N> Iterator for Iter<'a, N> {
    type Item = (&'a str, &'a N);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Few(it) => it.next().map(|(l, n)| (&**l, n)),
            Iter::Many(it) => it.next().map(|(l, n)| (&**l, n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(topic: &str) -> impl Iterator<Item = Edge<'_>> + Clone {
        topic.split('/').map(Edge::Level)
    }

    #[test]
    fn split_levels() {
        assert_eq!(split_level("a/b/c"), ("a", Some("b/c")));
        assert_eq!(split_level("a"), ("a", None));
        assert_eq!(split_level("a/"), ("a", Some("")));
        assert_eq!(split_level(""), ("", None));
        assert_eq!(split_level("/x"), ("", Some("x")));
    }

    #[test]
    fn children_grow_into_a_map_and_shrink_back() {
        let mut c: Children<u32> = Children::default();
        for i in 0..100u32 {
            *c.get_or_insert_with(&i.to_string(), || 0) += i;
        }
        assert!(matches!(c, Children::Many(_)));
        assert_eq!(c.len(), 100);
        assert_eq!(c.get("42"), Some(&42));
        assert_eq!(c.iter().count(), 100);
        for i in 0..98u32 {
            assert_eq!(c.remove(&i.to_string()), Some(i));
        }
        assert!(matches!(c, Children::Few(_)));
        assert_eq!(c.get("99"), Some(&99));
        assert_eq!(c.remove("nope"), None);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn prune_removes_only_the_dead_chain() {
        let mut root: Node<Option<u8>> = Node::default();
        root.find_or_create(path("a/b/c/d")).payload = Some(1);
        root.find_or_create(path("a/b")).payload = Some(2);
        root.find_or_create(path("a/x")).payload = Some(3);
        assert_eq!(root.count_below(), 5);

        // Nothing to prune while d still stores something.
        root.prune(path("a/b/c/d"));
        assert_eq!(root.count_below(), 5);

        root.find_mut(path("a/b/c/d")).map(|n| n.payload.take());
        root.prune(path("a/b/c/d"));
        assert_eq!(root.count_below(), 3, "c and d go, b stays (it stores 2)");

        root.find_mut(path("a/b")).map(|n| n.payload.take());
        root.prune(path("a/b"));
        assert_eq!(root.count_below(), 2, "a stays for a/x");

        root.find_mut(path("a/x")).map(|n| n.payload.take());
        root.prune(path("a/x"));
        assert_eq!(root.count_below(), 0);
        assert!(root.is_bare());
    }

    #[test]
    fn deep_tries_do_not_overflow_the_stack() {
        // 65,536 empty levels: the deepest a valid 65,535-byte topic can be.
        let topic = "/".repeat(65_535);
        let mut root: Node<Option<u8>> = Node::default();
        root.find_or_create(path(&topic)).payload = Some(1);
        assert_eq!(root.count_below(), 65_536);
        assert!(root.find(path(&topic)).is_some());
        // Pruning unhooks the whole chain at once and drops it iteratively.
        root.find_mut(path(&topic)).map(|n| n.payload.take());
        root.prune(path(&topic));
        assert_eq!(root.count_below(), 0);
        // And dropping a deep trie as a whole is iterative too.
        root.find_or_create(path(&topic)).payload = Some(2);
        drop(root);
    }
}
