#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use makelaar_core::topic::TopicTree;
use proptest::prelude::*;

/// NATS subject matching as the server does it: tokens split on `.`; `*` takes one token, a
/// last `>` one or more.
fn nats_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return f.next().is_none(),
            (Some("*"), Some(_)) => {}
            (Some(ft), Some(st)) if ft == st => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A NATS-valid subject: non-empty tokens, no whitespace, wildcards only as whole tokens.
fn nats_valid(subject: &str, wildcards_allowed: bool) -> bool {
    let tokens: Vec<&str> = subject.split('.').collect();
    let last = tokens.len() - 1;
    tokens.iter().enumerate().all(|(i, t)| {
        !t.is_empty()
            && !t
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
            && match *t {
                "*" => wildcards_allowed,
                ">" => wildcards_allowed && i == last,
                _ => !t.contains(['*', '>']),
            }
    })
}

fn mqtt_matches(filter: &str, topic: &str) -> bool {
    let mut tree: TopicTree<u8, ()> = TopicTree::new();
    tree.insert(filter, 0, ());
    let mut hit = false;
    tree.for_each_match(topic, |_, _| hit = true);
    hit
}

#[test]
fn examples() {
    assert_eq!(encode_topic("sensor/temp").as_str(), "u.sensor.temp._T");
    assert_eq!(encode_topic("/a//b").as_str(), "u._.a._.b._T");
    assert_eq!(
        encode_topic("$SYS/broker/uptime").as_str(),
        "s._24SYS.broker.uptime._T"
    );
    assert_eq!(encode_topic("a.b c/ü").as_str(), "u.a_2Eb_20c._C3_BC._T");
    assert_eq!(encode_topic("*/>/_").as_str(), "u._2A._3E._5F._T");
    assert_eq!(encode_filter("a/#").as_str(), "u.a.>");
    assert_eq!(encode_filter("#").as_str(), "u.>");
    assert_eq!(encode_filter("+/x/+").as_str(), "u.*.x.*._T");
    assert_eq!(encode_filter("$SYS/#").as_str(), "s._24SYS.>");
    assert_eq!(encode_topic("a").under("mk.l").as_str(), "mk.l.u.a._T");
}

#[test]
fn parent_level_matches_multi_level_wildcard() {
    // [MQTT-4.7.1-2] `a/#` matches `a` itself: one NATS subscription covers both.
    let f = encode_filter("a/#");
    for t in ["a", "a/", "a/b", "a/b/c"] {
        assert!(nats_matches(f.as_str(), encode_topic(t).as_str()), "{t}");
    }
    assert!(!nats_matches(f.as_str(), encode_topic("ab").as_str()));
    assert!(!nats_matches(
        encode_filter("a/+").as_str(),
        encode_topic("a").as_str()
    ));
}

#[test]
fn dollar_topics_stay_out_of_wildcards() {
    // [MQTT-4.7.2-1]
    for f in ["#", "+", "+/broker", "+/#"] {
        assert!(!nats_matches(
            encode_filter(f).as_str(),
            encode_topic("$SYS/broker").as_str()
        ));
    }
    assert!(nats_matches(
        encode_filter("$SYS/#").as_str(),
        encode_topic("$SYS/broker").as_str()
    ));
}

#[test]
fn decode_refuses_non_canonical_forms() {
    assert_eq!(decode_topic("x.a._T"), Err(SubjectError::BadRoot));
    assert_eq!(decode_topic("u.a"), Err(SubjectError::NoTerminator));
    assert_eq!(decode_topic("u._T"), Err(SubjectError::NoLevel));
    assert_eq!(decode_topic("u.*._T"), Err(SubjectError::BadToken));
    assert_eq!(decode_topic("u._2a._T"), Err(SubjectError::BadToken));
    assert_eq!(decode_topic("u._2._T"), Err(SubjectError::BadToken));
    assert_eq!(decode_topic("u._FF._T"), Err(SubjectError::NotUtf8));
    assert_eq!(decode_topic("u._24a._T"), Err(SubjectError::RootMismatch));
    assert_eq!(decode_topic("s.a._T"), Err(SubjectError::RootMismatch));
    assert_eq!(decode_under("mk.l", "mk.l.u.a._T"), Ok("a".to_owned()));
    assert_eq!(
        decode_under("mk.l", "mk.x.u.a._T"),
        Err(SubjectError::BadRoot)
    );
}

fn level() -> impl Strategy<Value = String> {
    // A small alphabet so that random filters match random topics often, with every
    // character the encoding must escape.
    prop::collection::vec(
        prop::sample::select(vec![
            "a", "b", "$", ".", "*", ">", " ", "_", "-", "ü", "\t", "~", "_T", "A",
        ]),
        0..3,
    )
    .prop_map(|parts| parts.concat())
}

fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(level(), 1..5).prop_map(|levels| levels.join("/"))
}

fn filter() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop_oneof![3 => level(), 1 => Just("+".to_owned())], 0..4),
        any::<bool>(),
    )
        .prop_filter_map("a filter has a level", |(mut levels, hash)| {
            if hash {
                levels.push("#".to_owned());
            }
            (!levels.is_empty()).then(|| levels.join("/"))
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn topic_round_trip(t in topic()) {
        let s = encode_topic(&t);
        prop_assert!(nats_valid(s.as_str(), false), "{s}");
        prop_assert_eq!(decode_topic(s.as_str()), Ok(t));
    }

    #[test]
    fn any_string_round_trips(t in "\\PC{1,40}") {
        let s = encode_topic(&t);
        prop_assert!(nats_valid(s.as_str(), false));
        prop_assert_eq!(decode_topic(s.as_str()), Ok(t));
    }

    #[test]
    fn token_round_trip(t in "\\PC{0,20}") {
        prop_assert_eq!(unescape_token(&escape_token(&t)), Ok(t));
    }

    #[test]
    fn matching_agrees_with_mqtt(f in filter(), t in topic()) {
        prop_assume!(makelaar_proto::topic::validate_topic_filter(&f).is_ok());
        prop_assume!(makelaar_proto::topic::validate_topic_name(&t).is_ok());
        let fs = encode_filter(&f);
        prop_assert!(nats_valid(fs.as_str(), true), "{fs}");
        prop_assert_eq!(
            nats_matches(fs.as_str(), encode_topic(&t).as_str()),
            mqtt_matches(&f, &t),
            "filter {:?} ({}) topic {:?} ({})", f, fs, t, encode_topic(&t)
        );
    }

    #[test]
    fn decoding_never_panics(s in "[us._A-F0-9T*>.]{0,30}") {
        let _ = decode_topic(&s);
    }
}
