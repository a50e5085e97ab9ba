//! `makelaar passwd` as a user runs it: files, messages and exit codes as `mosquitto_passwd`'s,
//! and files that Debian's Mosquitto accepts. Tests that need Mosquitto say SKIPPED and pass
//! when it is not installed (scripts/test.sh installs it).
//!
//! Debian 12's Mosquitto is 2.0.11, which cannot read argon2id (Mosquitto 2.1's default): it
//! drops such users ("Invalid password hash type"), which is tested too. argon2id files are
//! checked with makelaar-auth and the argon2 reference vector instead.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use makelaar_auth::PasswordFile;

const BIN: &str = env!("CARGO_BIN_EXE_makelaar");

fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

fn skip_without(programs: &[&str]) -> bool {
    let missing: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| find(p).is_none())
        .collect();
    if missing.is_empty() {
        return false;
    }
    eprintln!(
        "SKIPPED: {} not installed (apt-get install -y mosquitto mosquitto-clients)",
        missing.join(", ")
    );
    true
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("passwd-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `makelaar passwd ARGS`, with `stdin` as its input.
fn passwd(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .arg("passwd")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Runs `makelaar passwd ARGS` and checks the exit code and the start of stderr.
fn expect(args: &[&str], stdin: &str, code: i32, stderr_start: &str) {
    let out = passwd(args, stdin);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    assert!(stderr.starts_with(stderr_start), "{args:?}: {stderr:?}");
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

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

/// Debian's Mosquitto on a free port with `password_file`, stopped when dropped.
struct Mosquitto {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Mosquitto {
    fn start(dir: &Path, password_file: &Path) -> Mosquitto {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.join("mosquitto.conf");
        let log = dir.join("mosquitto.log");
        // `user root`: as root, Mosquitto would otherwise switch to the `mosquitto` user, who
        // cannot read this directory. Without root it has no effect.
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n\
                 persistence false\nuser root\n",
                password_file.display()
            ),
        )
        .unwrap();
        let mut child = Command::new(find("mosquitto").unwrap())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "mosquitto exited ({status}): {}",
                    std::fs::read_to_string(&log).unwrap()
                );
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {port}"
            );
            thread::sleep(Duration::from_millis(20));
        }
        Mosquitto { child, port, log }
    }

    /// mosquitto_pub's exit code: 0 when the broker took the login, 5 when it refused it.
    fn login(&self, user: &str, password: &str) -> Option<i32> {
        let port = self.port.to_string();
        Command::new(find("mosquitto_pub").unwrap())
            .args(["-h", "127.0.0.1", "-p", &port, "-u", user, "-P", password])
            .args(["-t", "t", "-m", "m"])
            .output()
            .unwrap()
            .status
            .code()
    }
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
    let broker = Mosquitto::start(&dir, &file);
    let log = || std::fs::read_to_string(&broker.log).unwrap_or_default();
    assert_eq!(broker.login("alice", "s3cret"), Some(0), "{}", log());
    assert_eq!(broker.login("bob", "zoë: ü"), Some(0), "{}", log());
    assert_eq!(broker.login("alice", "s3cre"), Some(5));
    assert_eq!(broker.login("alice", "s3cret "), Some(5));
    assert_eq!(broker.login("bob", "s3cret"), Some(5));
    assert_eq!(broker.login("nobody", "s3cret"), Some(5));
    // Mosquitto 2.0 does not know argon2id: it drops that user and starts anyway.
    assert_eq!(broker.login("carol", "argon"), Some(5));
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
