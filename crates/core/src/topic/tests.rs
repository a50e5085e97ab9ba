use super::*;

/// The keys whose subscriptions match `topic`, sorted.
fn matches(tree: &TopicTree<u32, &'static str>, topic: &str) -> Vec<(u32, &'static str)> {
    let mut out = Vec::new();
    tree.for_each_match(topic, |k, v| out.push((k, *v)));
    out.sort_unstable();
    out
}

/// A tree with one key per filter, the value being the filter itself.
fn tree_of(filters: &[&'static str]) -> TopicTree<u32, &'static str> {
    let mut tree = TopicTree::new();
    for (key, filter) in (0..).zip(filters) {
        assert_eq!(tree.insert(filter, key, *filter), None);
    }
    tree
}

/// The filters of `tree_of(filters)` that match `topic`, sorted.
fn matching(filters: &[&'static str], topic: &str) -> Vec<&'static str> {
    let tree = tree_of(filters);
    let mut out: Vec<_> = matches(&tree, topic).into_iter().map(|(_, f)| f).collect();
    out.sort_unstable();
    // The tree agrees with the reference matcher.
    let mut reference: Vec<_> = filters
        .iter()
        .copied()
        .filter(|f| makelaar_proto::topic::filter_matches(f, topic))
        .collect();
    reference.sort_unstable();
    assert_eq!(out, reference, "topic {topic:?}");
    out
}

#[test]
fn multi_level_wildcard_spec_examples() {
    // MQTT 4.7.1.2
    let f = &["sport/tennis/player1/#"];
    assert_eq!(matching(f, "sport/tennis/player1"), f);
    assert_eq!(matching(f, "sport/tennis/player1/ranking"), f);
    assert_eq!(matching(f, "sport/tennis/player1/score/wimbledon"), f);
    assert!(matching(f, "sport/tennis/player2").is_empty());
    assert!(matching(f, "sport/tennis").is_empty());
    // [MQTT-4.7.1-2] `sport/#` also matches the parent level `sport`.
    assert_eq!(matching(&["sport/#"], "sport"), ["sport/#"]);
    assert_eq!(matching(&["sport/#"], "sport/"), ["sport/#"]);
    assert!(matching(&["sport/#"], "sports").is_empty());
    assert_eq!(matching(&["#"], "sport/tennis"), ["#"]);
    assert_eq!(matching(&["#"], "/"), ["#"]);
}

#[test]
fn single_level_wildcard_spec_examples() {
    // MQTT 4.7.1.3
    let f = &["sport/tennis/+"];
    assert_eq!(matching(f, "sport/tennis/player1"), f);
    assert_eq!(matching(f, "sport/tennis/player2"), f);
    assert!(matching(f, "sport/tennis/player1/ranking").is_empty());
    assert!(matching(&["sport/+"], "sport").is_empty());
    assert_eq!(matching(&["sport/+"], "sport/"), ["sport/+"]);
    assert_eq!(matching(&["+", "+/+", "/+"], "/finance"), ["+/+", "/+"]);
    assert_eq!(matching(&["+/tennis/#"], "sport/tennis/x"), ["+/tennis/#"]);
    assert_eq!(
        matching(&["sport/+/player1"], "sport/tennis/player1"),
        ["sport/+/player1"]
    );
}

#[test]
fn empty_levels() {
    // MQTT 4.7.3: `/finance` has an empty first level; `a//b` an empty middle one.
    assert_eq!(matching(&["/finance", "finance"], "/finance"), ["/finance"]);
    assert_eq!(matching(&["a//b", "a/b"], "a//b"), ["a//b"]);
    // `+` matches an empty level.
    assert_eq!(matching(&["a/+/b"], "a//b"), ["a/+/b"]);
    assert_eq!(matching(&["+/+"], "/"), ["+/+"]);
    assert_eq!(matching(&["a/+"], "a/"), ["a/+"]);
    assert!(matching(&["a/+"], "a").is_empty());
    assert_eq!(matching(&["/#"], "/"), ["/#"]);
    assert_eq!(matching(&["//#", "/+/#"], "//"), ["/+/#", "//#"]);
}

#[test]
fn dollar_topics() {
    // [MQTT-4.7.2-1] filters starting with a wildcard do not match names starting with `$`.
    let filters = &[
        "#",
        "+/monitor/Clients",
        "+/#",
        "$SYS/#",
        "$SYS/monitor/+",
        "$SYS/monitor/Clients",
        "+",
    ];
    assert_eq!(
        matching(filters, "$SYS/monitor/Clients"),
        ["$SYS/#", "$SYS/monitor/+", "$SYS/monitor/Clients"]
    );
    assert_eq!(matching(filters, "$SYS"), ["$SYS/#"]);
    assert!(matching(filters, "$other").is_empty());
    // Only the first level counts: a `$` further down is an ordinary character.
    assert_eq!(matching(&["a/+", "a/#", "#"], "a/$x"), ["#", "a/#", "a/+"]);
    assert_eq!(
        matching(&["+/monitor/Clients"], "x/monitor/Clients"),
        ["+/monitor/Clients"]
    );
}

#[test]
fn overlapping_filters_report_a_key_once_per_filter() {
    let mut tree = TopicTree::new();
    tree.insert("a/b", 1, "exact");
    tree.insert("a/+", 1, "plus");
    tree.insert("#", 1, "hash");
    tree.insert("a/#", 2, "a-hash");
    assert_eq!(
        matches(&tree, "a/b"),
        [(1, "exact"), (1, "hash"), (1, "plus"), (2, "a-hash")]
    );
    assert_eq!(
        matches(&tree, "a/c"),
        [(1, "hash"), (1, "plus"), (2, "a-hash")]
    );
    assert_eq!(tree.len(), 4);
}

#[test]
fn insert_replaces_and_get_finds() {
    let mut tree = TopicTree::new();
    for filter in ["a/b", "a/+", "a/#", "#", "+", "+/+/#"] {
        assert_eq!(tree.insert(filter, 7, "one"), None);
        assert_eq!(tree.insert(filter, 7, "two"), Some("one"));
        assert_eq!(tree.insert(filter, 8, "other"), None);
        assert_eq!(tree.get(filter, 7), Some(&"two"));
        assert_eq!(tree.get(filter, 9), None);
    }
    assert_eq!(tree.len(), 12);
    assert_eq!(tree.get("a/c", 7), None);
    assert_eq!(tree.get("a/+/c", 7), None);
    assert_eq!(matches(&tree, "a/b").len(), 10, "all but `+`");
}

#[test]
fn remove_prunes_everything() {
    let filters = [
        "a/b/c",
        "a/b",
        "a/+/c",
        "a/+/#",
        "+/+",
        "#",
        "a/#",
        "/x",
        "//",
        "a//+",
        "$SYS/#",
        "+",
        "x/y/z/+/#",
    ];
    let mut tree = TopicTree::new();
    for key in 0..3u32 {
        for filter in filters {
            tree.insert(filter, key, filter);
        }
    }
    assert_eq!(tree.len(), 3 * filters.len());
    assert!(tree.node_count() > 0);
    assert_eq!(tree.remove("a/b/c", 9), None);
    assert_eq!(tree.remove("not/there", 0), None);
    assert_eq!(tree.remove("not/+", 0), None);
    for key in 0..3u32 {
        for filter in filters {
            assert_eq!(tree.remove(filter, key), Some(filter), "{filter}");
            assert_eq!(tree.remove(filter, key), None);
        }
    }
    assert!(tree.is_empty());
    assert_eq!(tree.node_count(), 0);
    assert!(matches(&tree, "a/b/c").is_empty());
}

#[test]
fn removing_a_branch_keeps_its_neighbours() {
    let mut tree = tree_of(&["a/+/c/#", "a/+", "a/+/d"]);
    assert_eq!(tree.remove("a/+/c/#", 0), Some("a/+/c/#"));
    assert_eq!(matches(&tree, "a/b"), [(1, "a/+")]);
    assert_eq!(matches(&tree, "a/b/d"), [(2, "a/+/d")]);
    assert_eq!(tree.node_count(), 3, "a, +, d");
    assert_eq!(tree.remove("a/+", 1), Some("a/+"));
    assert_eq!(tree.node_count(), 3, "a and + lead to d");
    assert_eq!(tree.remove("a/+/d", 2), Some("a/+/d"));
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn churn_does_not_grow_the_tree() {
    let mut tree = TopicTree::new();
    tree.insert("keep/+", 0, ());
    let baseline = tree.node_count();
    for round in 0..1000u32 {
        let filter = format!("churn/{round}/+/x");
        tree.insert(&filter, round, ());
        tree.insert(&format!("churn/{round}"), round, ());
        assert_eq!(tree.remove(&filter, round), Some(()));
        assert_eq!(tree.remove(&format!("churn/{round}"), round), Some(()));
    }
    assert_eq!(tree.node_count(), baseline);
    assert_eq!(tree.len(), 1);
}

#[test]
fn many_subscribers_on_one_filter() {
    let mut tree = TopicTree::new();
    for key in 0..1000u32 {
        tree.insert("fan/out", key, key);
        tree.insert("fan/+", key, key + 1);
    }
    let mut n = 0;
    tree.for_each_match("fan/out", |_, _| n += 1);
    assert_eq!(n, 2000);
    for key in 0..1000u32 {
        assert_eq!(tree.remove("fan/out", key), Some(key));
    }
    assert_eq!(tree.node_count(), 2, "fan and + remain");
}

#[test]
fn deep_filters_match_without_recursion() {
    // A 65,535-byte filter of empty levels ending in `+`: the walk is iterative.
    let filter = format!("{}+", "/".repeat(65_534));
    let topic = "/".repeat(65_534);
    let mut tree = TopicTree::new();
    tree.insert(&filter, 1u32, ());
    tree.insert("#", 2, ());
    let mut keys = Vec::new();
    tree.for_each_match(&topic, |k, _| keys.push(k));
    keys.sort_unstable();
    assert_eq!(keys, [1, 2]);
    assert_eq!(tree.remove(&filter, 1), Some(()));
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn wide_branching_spills_the_stack() {
    // Every level has both a literal and a `+` child: the walk keeps many branches pending.
    let mut tree = TopicTree::new();
    let mut filters = vec![String::new()];
    for _ in 0..10 {
        filters = filters
            .iter()
            .flat_map(|f| [format!("{f}a/"), format!("{f}+/")])
            .collect();
    }
    for (key, f) in (0..).zip(&filters) {
        tree.insert(f.trim_end_matches('/'), key, ());
    }
    let mut n = 0;
    tree.for_each_match("a/a/a/a/a/a/a/a/a/a", |_, _| n += 1);
    assert_eq!(n, 1024);
}

#[test]
fn small_stack_is_lifo_across_the_spill() {
    let mut s: SmallStack<u32, 2> = SmallStack::new();
    for i in 0..5 {
        s.push(i);
    }
    assert_eq!(s.pop(), Some(4));
    s.push(9);
    let rest: Vec<_> = std::iter::from_fn(|| s.pop()).collect();
    assert_eq!(rest, [9, 3, 2, 1, 0]);
}
