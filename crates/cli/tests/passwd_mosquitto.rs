//! `makelaar passwd` and Debian's Mosquitto: Mosquitto accepts the files `makelaar passwd`
//! writes, and `mosquitto_passwd` and `makelaar passwd` can edit the same file. These tests say
//! SKIPPED and pass when Mosquitto is not installed (scripts/test.sh installs it).
//!
//! Debian 12's Mosquitto is 2.0.11, which cannot read argon2id (Mosquitto 2.1's default): it
//! drops such users ("Invalid password hash type"), which is tested too. argon2id hashes are
//! checked with makelaar-auth and the argon2 reference vector instead.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::path::Path;
use std::process::Command;

use makelaar_auth::PasswordFile;
use support::{expect, find, path, skip_without, temp_dir, Mosquitto};

/// Debian's Mosquitto on a free port, logins checked against `password_file`.
fn mosquitto_with(dir: &Path, password_file: &Path) -> Mosquitto {
    let settings = format!(
        "allow_anonymous false\npassword_file {}",
        password_file.display()
    );
    Mosquitto::start(dir, &settings)
}

/// mosquitto_pub's exit code: 0 when the broker took the login, 5 when it refused it.
fn login(broker: &Mosquitto, user: &str, password: &str) -> Option<i32> {
    let args = ["-u", user, "-P", password, "-t", "t", "-m", "m"];
    broker.client("mosquitto_pub", &args).status.code()
}

#[test]
fn mosquitto_accepts_files_from_makelaar_passwd() {
    if skip_without(&["mosquitto", "mosquitto_pub"]) {
        return;
    }
    let dir = temp_dir("to-mosquitto");
    let file = dir.join("passwd");
    let f = path(&file);
    expect(
        &["-c", "-H", "sha512-pbkdf2", "-b", f, "alice", "s3cret"],
        "",
        0,
        "",
    );
    expect(
        &[
            "-H",
            "sha512-pbkdf2",
            "-I",
            "2000",
            "-b",
            f,
            "bob",
            "zoë: ü",
        ],
        "",
        0,
        "",
    );
    expect(&["-b", f, "carol", "argon"], "", 0, "");
    let broker = mosquitto_with(&dir, &file);
    let log = || broker.log();
    assert_eq!(login(&broker, "alice", "s3cret"), Some(0), "{}", log());
    assert_eq!(login(&broker, "bob", "zoë: ü"), Some(0), "{}", log());
    assert_eq!(login(&broker, "alice", "s3cre"), Some(5));
    assert_eq!(login(&broker, "alice", "s3cret "), Some(5));
    assert_eq!(login(&broker, "bob", "s3cret"), Some(5));
    assert_eq!(login(&broker, "nobody", "s3cret"), Some(5));
    // Mosquitto 2.0 does not know argon2id: it drops that user and starts anyway.
    assert_eq!(login(&broker, "carol", "argon"), Some(5));
    assert!(
        log().contains("Invalid password hash type for user carol"),
        "{}",
        log()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mosquitto_passwd_and_makelaar_passwd_share_files() {
    if skip_without(&["mosquitto_passwd"]) {
        return;
    }
    let dir = temp_dir("shared");
    let file = dir.join("passwd");
    let f = path(&file);
    let mosquitto_passwd = |args: &[&str]| {
        let out = Command::new(find("mosquitto_passwd").unwrap())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    mosquitto_passwd(&["-c", "-b", f, "alice", "from-mosquitto"]);
    expect(
        &["-H", "sha512-pbkdf2", "-b", f, "bob", "from-makelaar"],
        "",
        0,
        "",
    );
    mosquitto_passwd(&["-b", f, "carol", "from-mosquitto-too"]);
    let passwords = PasswordFile::load(&file).unwrap();
    assert!(passwords.verify("alice", b"from-mosquitto"));
    assert!(passwords.verify("bob", b"from-makelaar"));
    assert!(passwords.verify("carol", b"from-mosquitto-too"));
    assert!(!passwords.verify("carol", b"from-mosquitto"));
    let _ = std::fs::remove_dir_all(&dir);
}
