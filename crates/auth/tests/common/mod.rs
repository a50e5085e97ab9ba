//! Running Debian's Mosquitto and its tools from tests.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The path of `program` if it is installed (Debian puts `mosquitto` in /usr/sbin, which is
/// not on every user's PATH).
pub fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// True, after printing why, when one of `programs` is missing: the test then passes without
/// running. scripts/test.sh installs them, so in CI these tests run.
pub fn skip_without(programs: &[&str]) -> bool {
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

/// A fresh directory under the target directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A Mosquitto broker on a free port of 127.0.0.1, stopped when dropped.
pub struct Mosquitto {
    child: Child,
    pub port: u16,
    log: PathBuf,
}

impl Mosquitto {
    /// Starts `mosquitto -c` with a listener and `settings` (more config lines).
    pub fn start(dir: &Path, settings: &str) -> Mosquitto {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.join("mosquitto.conf");
        let log = dir.join("mosquitto.log");
        // `user root`: Mosquitto started as root otherwise switches to the `mosquitto` user,
        // which cannot read files in this directory. Without root it has no effect.
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\npersistence false\nuser root\n{settings}\n"),
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
                    "mosquitto exited at start ({status}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
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

    /// Runs a Mosquitto client tool (`mosquitto_pub`, `mosquitto_sub`) against this broker.
    pub fn client(&self, tool: &str, args: &[&str]) -> Output {
        Command::new(find(tool).unwrap())
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// What the broker logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
