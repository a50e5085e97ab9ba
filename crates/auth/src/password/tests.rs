#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;

use proptest::prelude::*;

use super::hash::{argon2id_with_cost, hash_with_salt, sha512_with_salt};
use super::*;

// Written by Debian's mosquitto_passwd 2.0.11: `-b f alice secret` and `-H sha512 -b f bob pw`.
const MOSQUITTO_PBKDF2: &str = "$7$101$ts/XLf+Io8TNCHjq$2O0hHaO/WK/MoPNabIjyyvM2n/+CcFOyU1Q6s7OR\
                                9wkV38B8B6WMuG8+GGJtECGZTZpv2v3Sn9j4SM+vyoSLSg==";
const MOSQUITTO_SHA512: &str = "$6$xy5yDd6wnb+/LHtM$RXZgaBD4aUZvAQ8E+2NOXS7/50Fmfu/mP+AHY6/h+qwT\
                                NX21+WbLXFo1lemd5Q4zNbHWGozPQYhHK5JH6bz/sw==";
// The reference implementation's test vector (libargon2 `test.c`): argon2id, v=19, m=2^16,
// t=2, p=1, password "password", salt "somesalt".
const REFERENCE_ARGON2ID: &str =
    "$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc";

fn path() -> &'static Path {
    Path::new("passwd")
}

#[test]
fn hashes_written_by_mosquitto_passwd_verify() {
    let pbkdf2 = PasswordHash::parse(MOSQUITTO_PBKDF2).unwrap();
    assert_eq!(pbkdf2.algorithm(), "sha512-pbkdf2");
    assert!(pbkdf2.verify(b"secret"));
    assert!(!pbkdf2.verify(b"Secret"));
    assert!(!pbkdf2.verify(b""));

    let sha512 = PasswordHash::parse(MOSQUITTO_SHA512).unwrap();
    assert_eq!(sha512.algorithm(), "sha512");
    assert!(sha512.verify(b"pw"));
    assert!(!sha512.verify(b"pw "));
}

#[test]
fn argon2id_reference_vector_verifies() {
    let hash = PasswordHash::parse(REFERENCE_ARGON2ID).unwrap();
    assert!(hash.verify(b"password"));
    assert!(!hash.verify(b"passwore"));
    assert_eq!(hash.to_string(), REFERENCE_ARGON2ID);
}

#[test]
fn new_hashes_use_mosquittos_parameters() {
    let argon = hash_password(b"hunter2", HashParams::Argon2id).unwrap();
    let text = argon.to_string();
    assert!(
        text.starts_with("$argon2id$v=19$m=47104,t=1,p=1$"),
        "{text}"
    );
    let parts: Vec<&str> = text.split('$').collect();
    // 64-byte salt and hash: 86 base64 characters without padding.
    assert_eq!((parts[4].len(), parts[5].len()), (86, 86));
    assert!(argon.verify(b"hunter2"));
    assert!(!argon.verify(b"hunter3"));

    let pbkdf2 = hash_password(b"hunter2", HashParams::Sha512Pbkdf2 { iterations: 101 }).unwrap();
    let text = pbkdf2.to_string();
    let parts: Vec<&str> = text.split('$').collect();
    assert_eq!(parts[..3], ["", "7", "101"]);
    assert_eq!((parts[3].len(), parts[4].len()), (16, 88)); // 12 and 64 bytes, padded
    assert!(pbkdf2.verify(b"hunter2"));

    // Fresh salt every time.
    let again = hash_password(b"hunter2", HashParams::Sha512Pbkdf2 { iterations: 101 }).unwrap();
    assert_ne!(pbkdf2, again);
}

#[test]
fn broken_hashes_are_refused_with_a_reason() {
    let cases = [
        ("plaintext", "not in a known format"),
        ("$5$abc$def", "not in a known format"),
        ("$6$onlysalt", "expected $6$SALT$HASH"),
        ("$6$!!!!$AAAA", "not valid base64"),
        ("$6$c2FsdA==$c2hvcnQ=", "must be 64 bytes"),
        ("$7$abc$c2FsdA==$AAAA", "not a number"),
        ("$7$-1$c2FsdA==$AAAA", "not a number"),
        ("$7$0$c2FsdA==$AAAA", "between 1 and 10000000"),
        ("$7$101$c2FsdA==", "expected $7$ITERATIONS$SALT$HASH"),
        ("$7$101$$AAAA", "salt must be 1 to 1024 bytes"),
        (
            "$argon2id$v=18$m=8,t=1,p=1$c29tZXNhbHQ$AAAAAA",
            "v=16 or v=19",
        ),
        (
            "$argon2id$v=19$t=1,m=8,p=1$c29tZXNhbHQ$AAAAAA",
            "m=M,t=T,p=P",
        ),
        (
            "$argon2id$v=19$m=8,t=1,p=1,keyid=AA$c29tZXNhbHQ$AAAAAA",
            "only the parameters",
        ),
        (
            "$argon2id$v=19$m=9999999,t=1,p=1$c29tZXNhbHQ$AAAAAA",
            "out of range",
        ),
        (
            "$argon2id$v=19$m=8,t=0,p=1$c29tZXNhbHQ$AAAAAA",
            "out of range",
        ),
        (
            "$argon2id$v=19$m=8,t=1,p=2$c29tZXNhbHQ$AAAAAA",
            "out of range",
        ),
        (
            "$argon2id$v=19$m=8,t=1,p=1$c2FsdA$AAAAAA",
            "salt must be 8 to 1024",
        ),
        (
            "$argon2id$v=19$m=8,t=1,p=1$c29tZXNhbHQ",
            "expected $argon2id$",
        ),
    ];
    for (text, expected) in cases {
        let err = PasswordHash::parse(text).unwrap_err().to_string();
        assert!(err.contains(expected), "{text}: {err}");
    }
}

#[test]
fn argon2id_without_version_is_version_16() {
    let hash = argon2id_with_cost(b"pw", b"saltsalt".to_vec(), (8, 1, 1), 16).unwrap();
    let v19 = hash.to_string();
    let v16 = v19.replace("v=19$", "");
    // Same costs and salt, other version: another hash, so the stored one does not verify.
    assert!(!PasswordHash::parse(&v16).unwrap().verify(b"pw"));
    assert!(PasswordHash::parse(&v19).unwrap().verify(b"pw"));
}

#[test]
fn oversize_passwords_are_refused() {
    let long = vec![b'a'; MAX_PASSWORD_LEN + 1];
    let params = HashParams::Sha512Pbkdf2 { iterations: 1 };
    assert_eq!(
        hash_password(&long, params).unwrap_err(),
        HashError::PasswordTooLong
    );
    let hash = hash_with_salt(&long[1..], params, b"salt".to_vec()).unwrap();
    assert!(hash.verify(&long[1..]));
    assert!(!hash.verify(&long));
}

#[test]
fn a_file_with_comments_blank_lines_and_crlf_parses() {
    let text = format!(
        "# users\r\n\nalice:{MOSQUITTO_PBKDF2}\r\n  bob \t:  {MOSQUITTO_SHA512}  \n   \n# end"
    );
    let file = PasswordFile::parse(text.as_bytes(), path()).unwrap();
    assert_eq!(file.usernames().collect::<Vec<_>>(), ["alice", "bob"]);
    assert!(file.verify("alice", b"secret"));
    assert!(file.verify("bob", b"pw"));
    assert!(!file.verify("alice", b"pw"));
    assert!(!file.verify("carol", b"secret"));
    assert!(!file.verify("Alice", b"secret"));
    assert_eq!(file.len(), 2);
}

#[test]
fn broken_lines_are_errors_naming_the_file_and_line() {
    let good = format!("alice:{MOSQUITTO_PBKDF2}\n");
    let long_user = "u".repeat(MAX_USERNAME_LEN + 1);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            format!("{good}# c\nbob\n").into_bytes(),
            "passwd, line 3: expected username:password",
        ),
        (
            format!("{good}:{MOSQUITTO_SHA512}\n").into_bytes(),
            "line 2: the username before ':' is empty",
        ),
        (
            format!("{good}bob:\n").into_bytes(),
            "line 2: user 'bob' has nothing after ':'",
        ),
        (
            format!("{good}bob:plain\n").into_bytes(),
            "line 2: the hash of user 'bob' is unusable",
        ),
        (
            format!("{good}bob:{MOSQUITTO_SHA512}:x\n").into_bytes(),
            "line 2: the hash of user 'bob'",
        ),
        (
            format!("{good}{good}").into_bytes(),
            "line 2: user 'alice' already has a password on line 1",
        ),
        (
            b"bob:\xff\xfe\n".to_vec(),
            "line 1: the line is not valid UTF-8",
        ),
        (
            format!("{long_user}:{MOSQUITTO_SHA512}\n").into_bytes(),
            "line 1: the username is longer than 65,535 bytes",
        ),
    ];
    for (text, expected) in cases {
        let err = PasswordFile::parse(&text, path()).unwrap_err().to_string();
        assert!(err.contains(expected), "expected {expected:?} in {err:?}");
    }
}

#[test]
fn rewriting_keeps_comments_and_order() {
    let text = format!("# admins\nalice:{MOSQUITTO_PBKDF2}\n\nbob:{MOSQUITTO_SHA512}\n");
    let mut file = PasswordFile::parse(text.as_bytes(), path()).unwrap();
    assert_eq!(file.to_string(), text);

    let new = hash_with_salt(
        b"new",
        HashParams::Sha512Pbkdf2 { iterations: 2 },
        vec![1; 12],
    );
    assert!(file.set("alice", new.clone().unwrap()).unwrap());
    assert!(!file.set("carol", new.unwrap()).unwrap());
    assert!(file.remove("bob"));
    assert!(!file.remove("bob"));
    let text = file.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "# admins");
    assert!(lines[1].starts_with("alice:$7$2$AQEB"));
    assert_eq!(lines[2], "");
    assert!(lines[3].starts_with("carol:$7$2$"));
    assert_eq!(lines.len(), 4);
    assert!(file.verify("alice", b"new") && file.verify("carol", b"new"));
    assert!(file.hash_of("bob").is_none());

    // Read back, it is the same file.
    let again = PasswordFile::parse(text.as_bytes(), path()).unwrap();
    assert_eq!(again.to_string(), text);
}

#[test]
fn usernames_that_could_not_be_read_back_are_refused() {
    let mut file = PasswordFile::new();
    let hash = sha512_with_salt(b"x", b"salt".to_vec());
    for (name, err) in [
        ("", UsernameError::Empty),
        ("a:b", UsernameError::Colon),
        ("a\nb", UsernameError::Control),
        ("a\tb", UsernameError::Control),
        ("#admin", UsernameError::Unreadable),
        (" bob", UsernameError::Unreadable),
        ("bob ", UsernameError::Unreadable),
    ] {
        assert_eq!(file.set(name, hash.clone()), Err(err), "{name:?}");
    }
    let long = "é".repeat(MAX_USERNAME_LEN / 2 + 1);
    assert_eq!(file.set(&long, hash.clone()), Err(UsernameError::TooLong));
    assert_eq!(file.set("zoë bob", hash), Ok(false));
}

#[test]
fn plaintext_files_are_upgraded() {
    let params = HashParams::Sha512Pbkdf2 { iterations: 3 };
    let text = b"# plain\nalice:secret\n\n bob : two words \ncarol:a:b\n";
    let file = upgrade_plaintext(text, path(), params).unwrap();
    assert!(file.verify("alice", b"secret"));
    assert!(file.verify("bob", b"two words"));
    assert!(file.verify("carol", b"a:b"));
    let out = file.to_string();
    assert!(out.starts_with("# plain\nalice:$7$3$"), "{out}");

    let hashed = format!("alice:{MOSQUITTO_PBKDF2}\n");
    let err = upgrade_plaintext(hashed.as_bytes(), path(), params).unwrap_err();
    assert!(err
        .to_string()
        .contains("line 1: user 'alice' already has a hashed password"));
    let err = upgrade_plaintext(b"a:x\na:y\n", path(), params).unwrap_err();
    assert!(err.to_string().contains("line 2: user 'a' appears twice"));
    let err = upgrade_plaintext(b"a:x\n#admin:y\nb\n", path(), params).unwrap_err();
    assert!(err
        .to_string()
        .contains("line 3: expected username:password"));
}

#[test]
fn save_replaces_the_file_and_keeps_its_permissions() {
    let dir = std::env::temp_dir().join(format!("makelaar-auth-save-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("passwd");
    let mut file = PasswordFile::new();
    file.set("alice", sha512_with_salt(b"x", b"salt".to_vec()))
        .unwrap();
    file.save(&path).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        file.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
    }
    let loaded = PasswordFile::load(&path).unwrap();
    assert!(loaded.verify("alice", b"x"));
    // Only the file itself is left: no temporary file.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);

    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        // Through a symbolic link, the target is replaced and the link stays.
        let link = dir.join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        file.set("bob", sha512_with_salt(b"y", b"salt".to_vec()))
            .unwrap();
        file.save(&link).unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(PasswordFile::load(&path).unwrap().verify("bob", b"y"));
        // Run as root, the file keeps its owner (the broker's user must still read it).
        if std::fs::metadata(&path).unwrap().uid() == 0 {
            std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
            file.save(&path).unwrap();
            let meta = std::fs::metadata(&path).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();

    let missing = PasswordFile::load(&dir.join("nope"))
        .unwrap_err()
        .to_string();
    assert!(
        missing.starts_with("cannot read the password file"),
        "{missing}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn pbkdf2_round_trips(
        password in proptest::collection::vec(any::<u8>(), 0..80),
        other in proptest::collection::vec(any::<u8>(), 0..80),
        salt in proptest::collection::vec(any::<u8>(), 1..70),
        iterations in 1u32..4,
    ) {
        let hash = hash_with_salt(&password, HashParams::Sha512Pbkdf2 { iterations }, salt).unwrap();
        let parsed = PasswordHash::parse(&hash.to_string()).unwrap();
        prop_assert_eq!(&parsed, &hash);
        prop_assert!(parsed.verify(&password));
        prop_assert_eq!(parsed.verify(&other), other == password);
    }

    #[test]
    fn sha512_round_trips(
        password in proptest::collection::vec(any::<u8>(), 0..80),
        salt in proptest::collection::vec(any::<u8>(), 1..70),
    ) {
        let hash = sha512_with_salt(&password, salt);
        let parsed = PasswordHash::parse(&hash.to_string()).unwrap();
        prop_assert_eq!(&parsed, &hash);
        prop_assert!(parsed.verify(&password));
        let mut wrong = password.clone();
        wrong.push(0);
        prop_assert!(!parsed.verify(&wrong));
    }

    #[test]
    fn argon2id_round_trips(
        password in proptest::collection::vec(any::<u8>(), 0..40),
        salt in proptest::collection::vec(any::<u8>(), 8..70),
        memory in 8u32..32,
        passes in 1u32..3,
        hash_len in 4usize..70,
    ) {
        let hash = argon2id_with_cost(&password, salt, (memory, passes, 1), hash_len).unwrap();
        let parsed = PasswordHash::parse(&hash.to_string()).unwrap();
        prop_assert_eq!(&parsed, &hash);
        prop_assert!(parsed.verify(&password));
        let mut wrong = password.clone();
        wrong.push(b'x');
        prop_assert!(!parsed.verify(&wrong));
    }

    #[test]
    fn parsing_arbitrary_text_never_panics(text in "\\PC{0,200}", prefix in prop::sample::select(vec!["", "$6$", "$7$", "$argon2id$", "$argon2id$v=19$"])) {
        let _ = PasswordHash::parse(&format!("{prefix}{text}"));
        let _ = PasswordFile::parse(format!("{prefix}{text}").as_bytes(), path());
    }

    #[test]
    fn valid_usernames_survive_a_file_round_trip(username in "[^:#\\s\\p{Cc}][^:\\p{Cc}]{0,30}[^:\\s\\p{Cc}]") {
        let mut file = PasswordFile::new();
        file.set(&username, sha512_with_salt(b"pw", b"salt".to_vec())).unwrap();
        let again = PasswordFile::parse(file.to_string().as_bytes(), path()).unwrap();
        prop_assert!(again.verify(&username, b"pw"));
    }
}
