//! `makelaar passwd` and Debian's Mosquitto: Mosquitto accepts the files `makelaar passwd`
//! writes, and `mosquitto_passwd` and `makelaar passwd` can edit the same file. These tests say
//! SKIPPED and pass when Mosquitto is not installed (scripts/test.sh installs it).
//!
//! Debian 12's Mosquitto is 2.0.11, which cannot read argon2id (Mosquitto 2.1's default): it
//! drops such users ("Invalid password hash type"), which is tested too. argon2id hashes are
//! checked with makelaar-auth and the argon2 reference vector instead.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use makelaar_auth::PasswordFile;
use support::{expect, find, path, skip_without, temp_dir};

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
