//! One ACL file, two judges: Debian's Mosquitto and `makelaar_auth::acl`. For every client
//! identity of a matrix (username, client id) and every topic, Mosquitto's answer is observed
//! with its own tools and must equal `Acl::check`:
//!
//! - Read: the broker holds a retained message on every topic; the identity subscribes to
//!   `#` (and the `$` trees) and receives exactly the topics it may read.
//! - Write: the identity publishes at QoS 1 with MQTT 5; Mosquitto answers a refused PUBLISH
//!   with PUBACK "Not authorized", which `mosquitto_pub` reports.
//! - Subscribe: Mosquitto grants every subscription, and so does `Acl::check`.
//!
//! The password file the broker reads is written by `makelaar_auth` too ($7$).
//! Skipped (with a message) when Mosquitto is not installed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::thread;

use common::{skip_without, temp_dir, Mosquitto};
use makelaar_auth::password::{hash_password, HashParams, PasswordFile};
use makelaar_auth::{Access, Acl};

const ACL: &str = "\
# anonymous clients
topic readwrite anon/#
topic read ro/#
pattern readwrite p/%c/#
pattern readwrite u/%u/#
pattern readwrite pre%c/x
pattern deny p/%c/deny
pattern read shared/#
pattern write %c
user admin
topic readwrite #
topic readwrite $SYS/#
topic readwrite $foo/#
user alice
topic readwrite alice/#
topic write shared/deny
topic deny p/alc/userdeny
topic readwrite p/#
topic deny q/1
topic readwrite q/#
topic read $SYS/#
user bob
topic deny shared/deny
topic readwrite a/#
topic read q/+/c
topic write $foo/#
user h#sh
topic readwrite hash/#
user alice
topic write merged/#
";

/// Password of every user: the username backwards.
const USERS: [&str; 6] = ["admin", "alice", "bob", "carol", "h#sh", "a/b"];

const TOPICS: [&str; 31] = [
    "anon/x",
    "ro/x",
    "p/anon1/x",
    "p/alc/x",
    "p/alc/deny",
    "p/alc/userdeny",
    "p/bb/deny",
    "p/x/y/z",
    "p/c/d/x",
    "u/alice/q",
    "u/bob/q",
    "u/a/b/x",
    "alice",
    "alice/x",
    "shared/x",
    "shared/deny",
    "prealc/x",
    "merged/a",
    "q/1",
    "q/alc",
    "q//c",
    "a",
    "a/b",
    "hash/1",
    "carol/x",
    "alc",
    "bb",
    "x/y",
    "$foo/bar",
    "$SYS/broker/connection/x/state",
    "anon",
];

/// (username, client id)
const IDENTITIES: [(Option<&str>, &str); 11] = [
    (None, "anon1"),
    (None, "bad+id"),
    (Some("alice"), "alc"),
    (Some("alice"), "x/y"),
    (Some("bob"), "bb"),
    (Some("carol"), "car"),
    (Some("carol"), "c/d"),
    (Some("carol"), "c#d"),
    (Some("h#sh"), "hh"),
    (Some("a/b"), "ab2"),
    (Some("admin"), "adm"),
];

fn password_of(user: &str) -> String {
    user.chars().rev().collect()
}

fn login(user: Option<&str>, id: &str) -> Vec<String> {
    let mut args = vec![
        "-V".to_string(),
        "5".to_string(),
        "-i".to_string(),
        id.to_string(),
    ];
    if let Some(user) = user {
        args.extend([
            "-u".to_string(),
            user.to_string(),
            "-P".to_string(),
            password_of(user),
        ]);
    }
    args
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn mosquitto_and_acl_check_agree() {
    if skip_without(&["mosquitto", "mosquitto_pub", "mosquitto_sub"]) {
        return;
    }
    let dir = temp_dir("acl-interop");
    let mut passwords = PasswordFile::new();
    for user in USERS {
        let params = HashParams::Sha512Pbkdf2 { iterations: 101 };
        let hash = hash_password(password_of(user).as_bytes(), params).unwrap();
        passwords.set(user, hash).unwrap();
    }
    passwords.save(&dir.join("passwd")).unwrap();
    std::fs::write(dir.join("acl"), ACL).unwrap();
    let acl = Acl::load(&dir.join("acl")).unwrap();
    let broker = Mosquitto::start(
        &dir,
        &format!(
            "allow_anonymous true\npassword_file {}\nacl_file {}\n",
            dir.join("passwd").display(),
            dir.join("acl").display()
        ),
    );

    // A retained message on every topic, from a user who may write them all.
    for topic in TOPICS {
        let out = broker.client(
            "mosquitto_pub",
            &[
                "-V", "5", "-q", "1", "-r", "-u", "admin", "-P", "nimda", "-t", topic, "-m", "r",
            ],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "admin publish {topic}: {stderr}"
        );
    }

    let mut mismatches = Vec::new();
    let broker = &broker;
    let acl = &acl;
    let results: Vec<Vec<String>> = thread::scope(|s| {
        let handles: Vec<_> = IDENTITIES
            .iter()
            .map(|&(user, id)| s.spawn(move || probe(broker, acl, user, id)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for found in results {
        mismatches.extend(found);
    }
    assert!(
        mismatches.is_empty(),
        "Mosquitto and Acl::check disagree:\n{}\n--- mosquitto log:\n{}",
        mismatches.join("\n"),
        broker.log()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every check for one identity; returns the disagreements.
fn probe(broker: &Mosquitto, acl: &Acl, user: Option<&str>, id: &str) -> Vec<String> {
    let who = format!("{user:?} {id:?}");
    let mut mismatches = Vec::new();
    let login = login(user, id);

    // Read and Subscribe: everything this identity receives from the retained messages.
    let mut args = strs(&login);
    args.extend([
        "-v",
        "-W",
        "3",
        "-t",
        "#",
        "-t",
        "$foo/#",
        "-t",
        "$SYS/broker/connection/#",
    ]);
    let out = broker.client("mosquitto_sub", &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.trim() == "Timed out",
        "{who}: mosquitto_sub said {stderr:?}"
    );
    let received: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.rsplit_once(' ').map(|(t, _)| t.to_string()))
        .collect();
    let expected: BTreeSet<String> = TOPICS
        .iter()
        .filter(|t| acl.check(id, user, t, Access::Read))
        .map(|t| t.to_string())
        .collect();
    for topic in received.symmetric_difference(&expected) {
        mismatches.push(format!(
            "{who} read {topic}: mosquitto {}, acl {}",
            received.contains(topic),
            expected.contains(topic)
        ));
    }
    for filter in ["#", "$foo/#", "$SYS/broker/connection/#"] {
        if !acl.check(id, user, filter, Access::Subscribe) {
            mismatches.push(format!(
                "{who} subscribe {filter}: mosquitto true, acl false"
            ));
        }
    }

    // Write.
    for topic in TOPICS {
        let mut args = strs(&login);
        args.extend(["-q", "1", "-t", topic, "-m", "w"]);
        let out = broker.client("mosquitto_pub", &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{who} publish {topic}: {stderr}");
        let mosquitto = !stderr.contains("Not authorized");
        assert!(
            mosquitto || stderr.contains("Publish 1 failed"),
            "{who}: {stderr}"
        );
        if mosquitto != acl.check(id, user, topic, Access::Write) {
            mismatches.push(format!(
                "{who} write {topic}: mosquitto {mosquitto}, acl {}",
                !mosquitto
            ));
        }
    }
    mismatches
}

#[test]
fn mosquitto_refuses_the_lines_acl_parse_refuses() {
    if skip_without(&["mosquitto"]) {
        return;
    }
    let dir = temp_dir("acl-parse-interop");
    let starts = |text: &str| {
        std::fs::write(dir.join("acl"), text).unwrap();
        let settings = format!("acl_file {}\n", dir.join("acl").display());
        std::panic::catch_unwind(|| drop(Mosquitto::start(&dir, &settings))).is_ok()
    };
    assert!(starts("topic read x\n# comment\n\nuser bob\npattern %c\n"));
    for text in [
        "topc read x\n",
        "  # indented\n",
        "topic\tread\tx\n",
        "topic\n",
        "topic rw x\n",
        "topic read a/#/b\n",
        "user\n",
    ] {
        assert!(
            Acl::parse(text.as_bytes(), Path::new("acl")).is_err(),
            "{text:?}"
        );
        assert!(!starts(text), "mosquitto accepted {text:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
