#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;

use proptest::prelude::*;

use super::*;
use Access::{Read, Subscribe, Write};

fn acl(text: &str) -> Acl {
    Acl::parse(text.as_bytes(), Path::new("acl")).unwrap()
}

fn parse_error(text: &str) -> String {
    Acl::parse(text.as_bytes(), Path::new("acl"))
        .unwrap_err()
        .to_string()
}

/// The file the answers below were observed with, on Debian's Mosquitto 2.0.11.
const OBSERVED: &str = "\
topic readwrite anon/#
pattern readwrite p/%c/#
pattern readwrite u/%u/#
pattern readwrite pre%c/x
pattern deny p/%c/deny
pattern readwrite shared/#
user admin
topic readwrite #
user alice
topic readwrite alice/#
topic readwrite shared/deny
topic deny p/alc/userdeny
topic readwrite p/#
topic deny q/1
topic readwrite q/#
user bob
topic deny shared/deny
topic readwrite a/#
topic readwrite q/+/c
user alice
topic write merged/#
";

#[test]
fn matrix_observed_on_mosquitto_2_0_11() {
    let acl = acl(OBSERVED);
    // (username, client id, topic, may read, may write)
    let cases: &[(Option<&str>, &str, &str, bool, bool)] = &[
        // Anonymous: the rules before the first `user` line, and patterns without %u.
        (None, "anon1", "anon/x", true, true),
        (None, "anon1", "p/anon1/x", true, true),
        (None, "anon1", "u//x", false, false),
        (None, "anon1", "alice/x", false, false),
        (None, "anon1", "shared/x", true, true),
        // A user gets their section and the patterns, not the anonymous rules.
        (Some("alice"), "alc", "alice/x", true, true),
        (Some("alice"), "alc", "anon/x", false, false),
        (Some("alice"), "alc", "u/alice/q", true, true),
        (Some("alice"), "alc", "u/bob/q", false, false),
        // A user rule's grant beats a pattern's deny; a user rule's deny beats everything.
        (Some("alice"), "alc", "p/alc/deny", true, true),
        (Some("alice"), "alc", "p/alc/userdeny", false, false),
        (Some("alice"), "alc", "q/1", false, false),
        (Some("alice"), "alc", "q/alc", true, true),
        // Two sections of one user add up.
        (Some("alice"), "alc", "merged/a", false, true),
        // Substitution is textual, inside a level too.
        (Some("alice"), "alc", "prealc/x", true, true),
        (Some("bob"), "bb", "shared/deny", false, false),
        (Some("bob"), "bb", "shared/ok", true, true),
        (Some("bob"), "bb", "a", true, true),
        (Some("bob"), "bb", "q//c", true, true),
        (Some("bob"), "bb", "p/bb/deny", false, false),
        // No section: the patterns only.
        (Some("carol"), "car", "shared/x", true, true),
        (Some("carol"), "car", "u/carol/x", true, true),
        (Some("carol"), "car", "carol/x", false, false),
        // '+' or '#' in the username or client id: every pattern refuses.
        (Some("a+b"), "ab1", "shared/x", false, false),
        (Some("a+b"), "ab1", "p/ab1/x", false, false),
        (Some("h#"), "ab3", "shared/x", false, false),
        (Some("carol"), "c+d", "shared/x", false, false),
        (Some("carol"), "c#d", "shared/x", false, false),
        // '/' is not refused: it is substituted like any other character.
        (Some("a/b"), "ab2", "u/a/b/x", true, true),
        (Some("a/b"), "ab2", "shared/x", true, true),
        (Some("carol"), "c/d", "p/c/d/x", true, true),
        // An empty username is no username.
        (Some(""), "emp", "u//x", false, false),
        (Some(""), "emp", "anon/x", true, true),
        (Some(""), "emp", "shared/x", true, true),
    ];
    for &(user, id, topic, read, write) in cases {
        assert_eq!(
            acl.check(id, user, topic, Read),
            read,
            "read {user:?} {id} {topic}"
        );
        assert_eq!(
            acl.check(id, user, topic, Write),
            write,
            "write {user:?} {id} {topic}"
        );
    }
}

#[test]
fn subscribe_is_always_granted() {
    let acl = acl("user alice\ntopic read alice/#\n");
    for filter in ["alice/#", "nope/#", "#", "$SYS/#", "$share/g/nope", "+/+"] {
        assert!(acl.check("c", Some("alice"), filter, Subscribe), "{filter}");
        assert!(acl.check("c", None, filter, Subscribe), "{filter}");
    }
}

#[test]
fn dollar_topics() {
    let acl = acl("\
user admin
topic readwrite #
topic readwrite $SYS/#
topic readwrite $foo/#
topic readwrite $share/#
user hash
topic readwrite #
user sx
topic readwrite $SYSX/#
topic readwrite $SYS/broker/connection/+/state
user sysr
topic read #
user sysr2
topic read $SYS/#
");
    let admin = |topic, access| acl.check("adm", Some("admin"), topic, access);
    // Writing $SYS is refused but for bridge state, which still needs a rule.
    assert!(admin("$SYS/broker/connection/x/state", Write));
    assert!(!admin("$SYS/broker/connection/x/other", Write));
    assert!(!admin("$SYS/foo", Write));
    assert!(admin("$SYS/foo", Read));
    assert!(!acl.check("hh", Some("hash"), "$SYS/broker/connection/x/state", Write));
    assert!(acl.check("sx", Some("sx"), "$SYS/broker/connection/x/state", Write));
    // `$SYS` is a first level, not a prefix: `$SYSX` is an ordinary `$` topic that a rule can
    // grant (Mosquitto 2.0.11 refuses it).
    assert!(acl.check("sx", Some("sx"), "$SYSX/a", Write));
    assert!(!acl.check("hh", Some("hash"), "$SYSX/a", Write));
    assert!(!acl.check("sx", Some("sx"), "$SYS", Write));
    // Other $ topics follow the rules; `#` does not reach them.
    assert!(admin("$foo/bar", Write));
    assert!(!acl.check("hh", Some("hash"), "$foo/bar", Write));
    assert!(!acl.check("hh", Some("hash"), "$bar", Write));
    assert!(!admin("$share/g/x", Write));
    assert!(!admin("$share/g/x", Read));
    assert!(!acl.check("r", Some("sysr"), "$SYS/broker/uptime", Read));
    assert!(acl.check("r", Some("sysr2"), "$SYS/broker/uptime", Read));
}

#[test]
fn wildcards_and_invalid_topics() {
    let acl = acl("topic read a/+/c\ntopic write w/#\n");
    assert!(acl.check("c", None, "a/b/c", Read));
    assert!(acl.check("c", None, "a//c", Read));
    assert!(!acl.check("c", None, "a/b/c/d", Read));
    assert!(acl.check("c", None, "w", Write)); // `#` includes the parent level
    assert!(!acl.check("c", None, "w", Read));
    // Read and Write are for topic names: a filter or an empty topic never passes.
    assert!(!acl.check("c", None, "a/+/c", Read));
    assert!(!acl.check("c", None, "w/#", Write));
    assert!(!acl.check("c", None, "", Write));
}

#[test]
fn no_rules_no_access() {
    let empty = acl("# nothing\n\n");
    assert!(!empty.check("c", None, "a", Read));
    assert!(!empty.check("c", Some("u"), "a", Write));
    let only_users = acl("user bob\ntopic bob/#\n");
    assert!(!only_users.check("c", None, "bob/x", Read));
    assert!(only_users.check("c", Some("bob"), "bob/x", Read));
}

#[test]
fn substitution_is_one_pass() {
    let acl = acl("pattern read x/%c/%u\npattern read %%c\npattern read y/%\n");
    // A client id containing `%u` is not substituted again.
    assert!(acl.check("%u", Some("bob"), "x/%u/bob", Read));
    assert!(!acl.check("%u", Some("bob"), "x/bob/bob", Read));
    assert!(acl.check("id", Some("bob"), "%id", Read));
    assert!(acl.check("id", Some("bob"), "y/%", Read));
    assert_eq!(substitute("%c%u%", "C", None), None);
    assert_eq!(substitute("%c%x%", "C", None).as_deref(), Some("C%x%"));
}

#[test]
fn parsing_follows_mosquitto() {
    let acl = acl("\
  topic   read   spaced/out  \r
topic read a b
topic deny
topic read\t
user   bob smith \t
topic bob/#
#topic read commented
pattern write %u/out
");
    assert!(acl.check("c", None, "spaced/out", Read));
    assert!(acl.check("c", None, "a b", Read));
    // One word after `topic` is the filter, with read and write.
    assert!(acl.check("c", None, "deny", Write));
    assert!(acl.check("c", None, "read", Write));
    assert!(acl.check("c", Some("bob smith"), "bob/x", Write));
    assert!(!acl.check("c", None, "commented", Read));
    assert!(acl.check("c", Some("bob smith"), "bob smith/out", Write));
}

#[test]
fn broken_lines_are_errors_naming_the_file_and_line() {
    let long = format!("topic read {}\n", "a".repeat(65_536));
    let deep = format!("topic read {}a\n", "a/".repeat(201));
    let cases: Vec<(&str, &str)> = vec![
        (
            "topic a\ntopc read x\n",
            "acl, line 2: unknown keyword 'topc'",
        ),
        ("  # indented comment\n", "line 1: unknown keyword '#'"),
        (
            "topic\tread\tx\n",
            "line 1: unknown keyword 'topic\tread\tx'",
        ),
        ("TOPIC read x\n", "line 1: unknown keyword 'TOPIC'"),
        ("\n\ntopic\n", "line 3: 'topic' needs a topic filter"),
        ("pattern  \n", "line 1: 'pattern' needs a topic filter"),
        ("topic rw x\n", "line 1: unknown access 'rw'"),
        ("topic READ x\n", "line 1: unknown access 'READ'"),
        ("topic \tread x\n", "line 1: unknown access '\tread'"),
        (
            "topic read a/#/b\n",
            "line 1: 'a/#/b' is not a valid topic filter",
        ),
        (
            "topic read a+\n",
            "line 1: 'a+' is not a valid topic filter",
        ),
        (
            "pattern read a/%c#\n",
            "line 1: 'a/%c#' is not a valid topic filter",
        ),
        ("user\n", "line 1: 'user' needs a username"),
        ("user   \t\n", "line 1: 'user' needs a username"),
        (
            &long,
            "line 1: the topic filter is longer than 65,535 bytes",
        ),
        (
            &deep,
            "line 1: the topic filter has more than 200 '/' separators",
        ),
        ("topic read a\0b\n", "line 1: the line contains U+0000"),
    ];
    for (text, expected) in cases {
        let err = parse_error(text);
        assert!(err.contains(expected), "expected {expected:?} in {err:?}");
    }
    let err = Acl::parse(b"topic a\ntopic read \xff\n", Path::new("acl")).unwrap_err();
    assert_eq!(err.to_string(), "acl, line 2: the line is not valid UTF-8");
    // Exactly 200 separators is fine, as in Mosquitto.
    acl(&format!("topic read {}a\n", "a/".repeat(200)));
    let missing = Acl::load(Path::new("/nonexistent/acl")).unwrap_err();
    assert!(missing
        .to_string()
        .starts_with("cannot read the ACL file /nonexistent/acl"));
}

/// A model of the rules written as plainly as possible: every rule in one list, in file
/// order, with the precedence spelled out. `Acl::check` must agree with it.
fn model(
    rules: &[(bool, Option<&str>, Option<Grant>, String)],
    id: &str,
    user: Option<&str>,
    topic: &str,
    access: Access,
) -> bool {
    let user = user.filter(|u| !u.is_empty());
    let mine = |r: &&(bool, Option<&str>, Option<Grant>, String)| !r.0 && r.1 == user;
    let decide = |list: Vec<(Option<Grant>, Option<String>)>| {
        let hits: Vec<Option<Grant>> = list
            .into_iter()
            .filter(|(_, f)| f.as_deref().is_some_and(|f| filter_matches(f, topic)))
            .map(|(g, _)| g)
            .collect();
        if hits.iter().any(Option::is_none) {
            Some(false)
        } else if hits.iter().flatten().any(|g| g.allows(access)) {
            Some(true)
        } else {
            None
        }
    };
    let user_rules = rules
        .iter()
        .filter(mine)
        .map(|r| (r.2, Some(r.3.clone())))
        .collect();
    if let Some(answer) = decide(user_rules) {
        return answer;
    }
    let patterns: Vec<_> = rules.iter().filter(|r| r.0).collect();
    if patterns.is_empty()
        || id.contains(['+', '#'])
        || user.is_some_and(|u| u.contains(['+', '#']))
    {
        return false;
    }
    let patterns = patterns
        .iter()
        .map(|r| (r.2, substitute(&r.3, id, user)))
        .collect();
    decide(patterns).unwrap_or(false)
}

fn level() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "+", "%c", "%u", "x%c", ""]).prop_map(String::from)
}

fn rule() -> impl Strategy<Value = (bool, Option<&'static str>, Option<Grant>, String)> {
    (
        any::<bool>(),
        prop::sample::select(vec![None, Some("u1"), Some("u2")]),
        prop::sample::select(vec![
            None,
            Some(Grant::Read),
            Some(Grant::Write),
            Some(Grant::ReadWrite),
        ]),
        prop::collection::vec(level(), 1..4),
        any::<bool>(),
    )
        .prop_map(|(pattern, user, grant, levels, hash)| {
            let mut filter = levels.join("/");
            if filter.is_empty() {
                filter.push('a');
            }
            if hash {
                filter.push_str("/#");
            }
            (pattern, user, grant, filter)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn check_agrees_with_the_model(
        rules in prop::collection::vec(rule(), 0..8),
        id in prop::sample::select(vec!["a", "b", "c+", "a/b", ""]),
        user in prop::sample::select(vec![None, Some("u1"), Some("u2"), Some(""), Some("a"), Some("u#")]),
        topic in prop::collection::vec(prop::sample::select(vec!["a", "b", "u1", "xa", "", "$a"]), 1..4),
        access in prop::sample::select(vec![Read, Write]),
    ) {
        // Write the rules as a file: anonymous ones first, then a section per user.
        let mut text = String::new();
        let word = |g: Option<Grant>| match g {
            None => "deny",
            Some(Grant::Read) => "read",
            Some(Grant::Write) => "write",
            Some(Grant::ReadWrite) => "readwrite",
        };
        for section in [None, Some("u1"), Some("u2")] {
            if let Some(name) = section {
                text.push_str(&format!("user {name}\n"));
            }
            for r in rules.iter().filter(|r| r.1 == section) {
                let keyword = if r.0 { "pattern" } else { "topic" };
                text.push_str(&format!("{keyword} {} {}\n", word(r.2), r.3));
            }
        }
        let acl = acl(&text);
        let mut topic = topic.join("/");
        if topic.is_empty() {
            topic.push('a');
        }
        prop_assert_eq!(
            acl.check(id, user, &topic, access),
            model(&rules, id, user, &topic, access),
            "file:\n{}\ntopic {}", text, topic
        );
    }

    #[test]
    fn parsing_arbitrary_lines_never_panics(lines in prop::collection::vec("[ -~\t]{0,30}", 0..10)) {
        let _ = Acl::parse(lines.join("\n").as_bytes(), Path::new("acl"));
    }
}
