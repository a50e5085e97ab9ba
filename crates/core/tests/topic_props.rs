//! Property tests: the topic tree and the retained store agree with the reference matcher
//! `makelaar_proto::topic::filter_matches` after random inserts and removes.

use std::collections::HashMap;

use makelaar_core::retain::RetainedStore;
use makelaar_core::topic::TopicTree;
use makelaar_proto::topic::{filter_matches, validate_topic_filter, validate_topic_name};
use proptest::prelude::*;

/// Levels of topic names: empty levels, `$` levels and a few ordinary ones.
const NAME_LEVELS: &[&str] = &["", "$SYS", "a", "b", "$x"];

fn name_level() -> impl Strategy<Value = &'static str> {
    prop::sample::select(NAME_LEVELS)
}

/// A topic name of one to four levels.
fn topic_name() -> impl Strategy<Value = String> {
    prop::collection::vec(name_level(), 1..=4)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("a topic name is not empty", |name| !name.is_empty())
}

/// A valid plain filter of one to four levels: name levels and `+` anywhere, `#` only last.
fn topic_filter() -> impl Strategy<Value = String> {
    let level = prop_oneof![3 => name_level(), 1 => Just("+")];
    (prop::collection::vec(level, 0..=4), any::<bool>()).prop_filter_map(
        "a filter is not empty",
        |(mut levels, hash)| {
            if hash {
                levels.push("#");
            }
            let filter = levels.join("/");
            (!filter.is_empty()).then_some(filter)
        },
    )
}

#[derive(Debug, Clone)]
enum Op {
    Insert { filter: usize, key: u8 },
    Remove { filter: usize, key: u8 },
}

fn ops(filters: usize) -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        3 => (0..filters, 0..4u8).prop_map(|(filter, key)| Op::Insert { filter, key }),
        2 => (0..filters, 0..4u8).prop_map(|(filter, key)| Op::Remove { filter, key }),
    ];
    prop::collection::vec(op, 0..60)
}

fn tree_case() -> impl Strategy<Value = (Vec<String>, Vec<Op>, Vec<String>)> {
    prop::collection::vec(topic_filter(), 1..12).prop_flat_map(|filters| {
        let n = filters.len();
        (
            Just(filters),
            ops(n),
            prop::collection::vec(topic_name(), 1..12),
        )
    })
}

#[derive(Debug, Clone)]
enum RetainOp {
    Insert(usize),
    Remove(usize),
    Purge(u8),
}

fn store_case() -> impl Strategy<Value = (Vec<String>, Vec<RetainOp>, Vec<String>)> {
    prop::collection::vec(topic_name(), 1..16).prop_flat_map(|topics| {
        let n = topics.len();
        let op = prop_oneof![
            6 => (0..n).prop_map(RetainOp::Insert),
            3 => (0..n).prop_map(RetainOp::Remove),
            1 => any::<u8>().prop_map(RetainOp::Purge),
        ];
        (
            Just(topics),
            prop::collection::vec(op, 0..60),
            prop::collection::vec(topic_filter(), 1..12),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn generators_are_valid(filter in topic_filter(), name in topic_name()) {
        prop_assert_eq!(validate_topic_filter(&filter), Ok(()));
        prop_assert_eq!(validate_topic_name(&name), Ok(()));
    }

    #[test]
    fn tree_matches_the_reference((filters, ops, names) in tree_case()) {
        let mut tree = TopicTree::new();
        // The model: (filter, key) → value; values are unique so every report is traceable.
        let mut model: HashMap<(String, u8), u32> = HashMap::new();
        for (serial, op) in (0u32..).zip(&ops) {
            match *op {
                Op::Insert { filter, key } => {
                    let Some(f) = filters.get(filter) else { continue };
                    let expected = model.insert((f.clone(), key), serial);
                    prop_assert_eq!(tree.insert(f, key, serial), expected);
                }
                Op::Remove { filter, key } => {
                    let Some(f) = filters.get(filter) else { continue };
                    let expected = model.remove(&(f.clone(), key));
                    prop_assert_eq!(tree.remove(f, key), expected);
                }
            }
            prop_assert_eq!(tree.len(), model.len());
        }
        for ((f, key), value) in &model {
            prop_assert_eq!(tree.get(f, *key), Some(value));
        }
        for name in &names {
            let mut got = Vec::new();
            tree.for_each_match(name, |key, value| got.push((key, *value)));
            got.sort_unstable();
            let mut expected: Vec<(u8, u32)> = model
                .iter()
                .filter(|((f, _), _)| filter_matches(f, name))
                .map(|((_, key), value)| (*key, *value))
                .collect();
            expected.sort_unstable();
            prop_assert_eq!(got, expected, "topic {:?}", name);
        }
        // Removing what is left frees every node.
        for (f, key) in model.keys() {
            prop_assert!(tree.remove(f, *key).is_some());
        }
        prop_assert!(tree.is_empty());
        prop_assert_eq!(tree.node_count(), 0);
    }

    #[test]
    fn store_matches_the_reference((topics, ops, filters) in store_case()) {
        let mut store = RetainedStore::new();
        let mut model: HashMap<String, u32> = HashMap::new();
        for (serial, op) in (0u32..).zip(&ops) {
            match *op {
                RetainOp::Insert(i) => {
                    let Some(t) = topics.get(i) else { continue };
                    prop_assert_eq!(store.insert(t, serial), model.insert(t.clone(), serial));
                }
                RetainOp::Remove(i) => {
                    let Some(t) = topics.get(i) else { continue };
                    prop_assert_eq!(store.remove(t), model.remove(t));
                }
                RetainOp::Purge(modulus) => {
                    let modulus = u32::from(modulus % 4) + 2;
                    store.retain(|_, v| v % modulus != 0);
                    model.retain(|_, v| *v % modulus != 0);
                }
            }
            prop_assert_eq!(store.len(), model.len());
        }
        for (t, value) in &model {
            prop_assert_eq!(store.get(t), Some(value));
        }
        for filter in &filters {
            let mut got = Vec::new();
            store.for_each_match(filter, |topic, value| got.push((topic.to_owned(), *value)));
            got.sort_unstable();
            let mut expected: Vec<(String, u32)> = model
                .iter()
                .filter(|(t, _)| filter_matches(filter, t))
                .map(|(t, v)| (t.clone(), *v))
                .collect();
            expected.sort_unstable();
            prop_assert_eq!(got, expected, "filter {:?}", filter);
        }
        let mut all = Vec::new();
        store.for_each(|topic, value| all.push((topic.to_owned(), *value)));
        all.sort_unstable();
        let mut expected: Vec<_> = model.iter().map(|(t, v)| (t.clone(), *v)).collect();
        expected.sort_unstable();
        prop_assert_eq!(all, expected);
        store.retain(|_, _| false);
        prop_assert!(store.is_empty());
        prop_assert_eq!(store.node_count(), 0);
    }
}
