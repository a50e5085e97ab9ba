//! `makelaar passwd` as a user runs it: files, messages and exit codes as `mosquitto_passwd`'s.
//! With Debian's Mosquitto and `mosquitto_passwd`: see `passwd_mosquitto.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use makelaar_auth::PasswordFile;
use support::{expect, passwd, path, temp_dir};

#[test]
fn adds_changes_and_deletes_users() {
    let dir = temp_dir("edit");
    let file = dir.join("passwd");
    let f = path(&file);
    expect(&["-c", "-b", f, "alice", "a-pw"], "", 0, "");
    expect(&["-H", "sha512-pbkdf2", "-b", f, "bob", "b-pw"], "", 0, "");
    expect(
        &["-H", "sha512-pbkdf2", "-I", "1000", f, "carol"],
        "c-pw\nc-pw\n",
        0,
        "Password: \nReenter password: \n",
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("alice:$argon2id$v=19$m=47104,t=1,p=1$"),
        "{text}"
    );
    assert!(lines[1].starts_with("bob:$7$101$"), "{text}");
    assert!(lines[2].starts_with("carol:$7$1000$"), "{text}");
    let passwords = PasswordFile::load(&file).unwrap();
    assert!(passwords.verify("alice", b"a-pw") && !passwords.verify("alice", b"b-pw"));
    assert!(passwords.verify("bob", b"b-pw") && passwords.verify("carol", b"c-pw"));

    // Changing a password keeps the user's place; deleting removes only them.
    expect(&["-H", "sha512-pbkdf2", "-b", f, "alice", "new"], "", 0, "");
    expect(&["-D", f, "bob"], "", 0, "");
    let passwords = PasswordFile::load(&file).unwrap();
    assert_eq!(
        passwords.usernames().collect::<Vec<_>>(),
        ["alice", "carol"]
    );
    assert!(passwords.verify("alice", b"new"));

    // -c replaces the file; `-` prints it instead.
    expect(
        &["-c", "-H", "sha512-pbkdf2", "-b", f, "dave", "d"],
        "",
        0,
        "",
    );
    assert_eq!(PasswordFile::load(&file).unwrap().len(), 1);
    let out = passwd(&["-c", "-H", "sha512-pbkdf2", "-b", "-", "erin", "e"], "");
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(
        printed.starts_with("erin:$7$101$") && printed.lines().count() == 1,
        "{printed}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn errors_are_one_sentence_with_mosquitto_passwds_exit_codes() {
    let dir = temp_dir("errors");
    let file = dir.join("passwd");
    let f = path(&file);
    expect(
        &["-c", "-H", "sha512-pbkdf2", "-b", f, "alice", "pw"],
        "",
        0,
        "",
    );
    let before = std::fs::read(&file).unwrap();

    expect(
        &[f, "bob"],
        "one\ntwo\n",
        2,
        "Password: \nReenter password: \nError: Passwords do not match.",
    );
    expect(&[f, "bob"], "\n", 1, "Password: \nError: Empty password.");
    expect(&[f, "bob"], "", 1, "Password: \nError: Empty password.");
    expect(
        &["-D", f, "bob"],
        "",
        1,
        "Warning: User bob not found in password file.",
    );
    expect(
        &["-c", "-D", f, "bob"],
        "",
        1,
        "Error: -c and -D cannot be used together.",
    );
    expect(
        &["-b", "-D", f, "bob", "x"],
        "",
        1,
        "Error: -b and -D cannot be used together.",
    );
    expect(
        &["-c", "-U", f],
        "",
        1,
        "Error: -c and -U cannot be used together.",
    );
    expect(
        &["-b", f, "a:b", "x"],
        "",
        1,
        "Error: The username must not contain ':'.",
    );
    expect(&["-b", f, "", "x"], "", 1, "Error: The username is empty.");
    expect(
        &["-b", f, "a\tb", "x"],
        "",
        1,
        "Error: The username must not contain control characters.",
    );
    let long = "u".repeat(65_536);
    expect(
        &["-b", f, &long, "x"],
        "",
        1,
        "Error: The username is longer than 65,535 bytes.",
    );
    let long = "p".repeat(65_536);
    expect(
        &["-b", f, "bob", &long],
        "",
        1,
        "Error: The password is longer than 65,535 bytes",
    );
    expect(
        &["-H", "sha512", "-b", f, "bob", "x"],
        "",
        1,
        "Error: -H sha512 (Mosquitto 1.6's single SHA-512) is too weak",
    );
    expect(
        &["-H", "md5", "-b", f, "bob", "x"],
        "",
        1,
        "Error: Unknown hash type 'md5'",
    );
    expect(
        &["-I", "10", "-b", f, "bob", "x"],
        "",
        1,
        "Error: -I sets PBKDF2 iterations",
    );
    expect(
        &["-H", "sha512-pbkdf2", "-I", "0", "-b", f, "bob", "x"],
        "",
        1,
        "Error: -I needs a number",
    );
    expect(
        &["-b", f, "bob"],
        "",
        1,
        "Error: -b needs the password after the username.\nUsage:",
    );
    expect(&[], "", 1, "Error: The password file is missing.\nUsage:");
    expect(&["-x", f, "bob"], "", 1, "error: unexpected argument '-x'");
    let missing = dir.join("missing");
    expect(
        &["-b", path(&missing), "bob", "x"],
        "",
        1,
        &format!(
        "Error: Unable to open password file {}: No such file or directory (use -c to create it).",
        missing.display()
    ),
    );
    std::fs::write(dir.join("broken"), "alice:$7$101$AAAA$BBBB\n").unwrap();
    expect(
        &["-b", path(&dir.join("broken")), "bob", "x"],
        "",
        1,
        "Error: ",
    );
    // Nothing above touched the file.
    assert_eq!(std::fs::read(&file).unwrap(), before);

    let help = passwd(&["--help"], "");
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("Examples:"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn upgrades_plain_text_files_in_place() {
    let dir = temp_dir("upgrade");
    let file = dir.join("passwd");
    std::fs::write(&file, "# users\nalice:a-pw\n\n bob : b pw \n").unwrap();
    expect(&["-H", "sha512-pbkdf2", "-U", path(&file)], "", 0, "");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("# users\nalice:$7$101$"), "{text}");
    let passwords = PasswordFile::load(&file).unwrap();
    assert!(passwords.verify("alice", b"a-pw") && passwords.verify("bob", b"b pw"));
    // Hashing the hashes again would lock everybody out: refused, file untouched.
    expect(&["-U", path(&file)], "", 1, "Error: ");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(unix)]
#[test]
fn arguments_that_are_not_utf8_are_refused() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    let dir = temp_dir("utf8");
    let file = dir.join("passwd");
    expect(
        &[
            "-c",
            "-H",
            "sha512-pbkdf2",
            "-b",
            path(&file),
            "alice",
            "pw",
        ],
        "",
        0,
        "",
    );
    let cases: [(&[u8], &[u8], &str); 2] = [
        (
            b"b\xffb",
            b"pw",
            "Error: The username is not valid UTF-8.\n",
        ),
        (
            b"bob",
            b"p\xffw",
            "Error: The password is not valid UTF-8.\n",
        ),
    ];
    for (user, password, message) in cases {
        let out = std::process::Command::new(support::BIN)
            .args(["passwd", "-b"])
            .arg(&file)
            .arg(OsStr::from_bytes(user))
            .arg(OsStr::from_bytes(password))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(String::from_utf8_lossy(&out.stderr), message);
    }
    assert_eq!(PasswordFile::load(&file).unwrap().len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}
