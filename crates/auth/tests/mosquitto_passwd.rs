//! Password files written by Debian's `mosquitto_passwd` verify in `makelaar_auth`, and files
//! written by `makelaar_auth` are accepted by Debian's `mosquitto`. Skipped (with a message)
//! when Mosquitto is not installed.
//!
//! Debian 12's Mosquitto is 2.0.11, which has no argon2id: `$argon2id$` hashes are tested
//! against the reference vector in the unit tests instead.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::process::Command;

use common::{find, skip_without, temp_dir, Mosquitto};
use makelaar_auth::password::{hash_password, HashParams, PasswordFile};

fn mosquitto_passwd(args: &[&str]) {
    let out = Command::new(find("mosquitto_passwd").unwrap())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mosquitto_passwd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn files_from_mosquitto_passwd_verify() {
    if skip_without(&["mosquitto_passwd"]) {
        return;
    }
    let dir = temp_dir("passwd-from-mosquitto");
    let file = dir.join("passwd");
    let f = file.to_str().unwrap();
    mosquitto_passwd(&["-c", "-b", f, "alice", "s3cret"]);
    mosquitto_passwd(&["-b", f, "bob", "zoë: spaces & colons"]);
    mosquitto_passwd(&["-H", "sha512", "-b", f, "carol", "old-style"]);
    mosquitto_passwd(&["-H", "sha512-pbkdf2", "-I", "7", "-b", f, "dave", "seven"]);
    mosquitto_passwd(&["-b", f, "émile", "ünïcode"]);

    let passwords = PasswordFile::load(&file).unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("carol:$6$") && text.contains("dave:$7$7$"),
        "{text}"
    );
    for (user, right) in [
        ("alice", "s3cret"),
        ("bob", "zoë: spaces & colons"),
        ("carol", "old-style"),
        ("dave", "seven"),
        ("émile", "ünïcode"),
    ] {
        assert!(
            passwords.verify(user, right.as_bytes()),
            "{user} with the right password"
        );
        assert!(
            !passwords.verify(user, b"wrong"),
            "{user} with a wrong password"
        );
        let mut longer = right.as_bytes().to_vec();
        longer.push(b'x');
        assert!(
            !passwords.verify(user, &longer),
            "{user} with a longer password"
        );
    }
    assert!(!passwords.verify("nobody", b"s3cret"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn files_from_makelaar_auth_work_in_mosquitto() {
    if skip_without(&["mosquitto", "mosquitto_pub"]) {
        return;
    }
    let dir = temp_dir("passwd-to-mosquitto");
    let mut passwords = PasswordFile::new();
    for (user, password, iterations) in [("alice", "s3cret", 101), ("bob", "zoë ü", 1000)] {
        let params = HashParams::Sha512Pbkdf2 { iterations };
        let hash = hash_password(password.as_bytes(), params).unwrap();
        passwords.set(user, hash).unwrap();
    }
    passwords.save(&dir.join("passwd")).unwrap();
    let broker = Mosquitto::start(
        &dir,
        &format!(
            "allow_anonymous false\npassword_file {}\n",
            dir.join("passwd").display()
        ),
    );
    let publish = |user: &str, password: &str| {
        broker
            .client(
                "mosquitto_pub",
                &["-u", user, "-P", password, "-t", "t", "-m", "m"],
            )
            .status
            .code()
    };
    assert_eq!(publish("alice", "s3cret"), Some(0), "{}", broker.log());
    assert_eq!(publish("bob", "zoë ü"), Some(0), "{}", broker.log());
    // 5: CONNACK "not authorised".
    assert_eq!(publish("alice", "s3cre"), Some(5));
    assert_eq!(publish("bob", "s3cret"), Some(5));
    assert_eq!(publish("carol", "s3cret"), Some(5));
    let _ = std::fs::remove_dir_all(&dir);
}
