//! Helpers for the `makelaar passwd` tests.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The `makelaar` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_makelaar");

/// The path of `program` if installed (Debian puts `mosquitto` in /usr/sbin).
pub fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// True, after printing why, when one of `programs` is missing: the test then passes
/// without running.
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
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("passwd-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `makelaar passwd ARGS`, with `stdin` as its input.
pub fn passwd(args: &[&str], stdin: &str) -> Output {
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
pub fn expect(args: &[&str], stdin: &str, code: i32, stderr_start: &str) {
    let out = passwd(args, stdin);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    assert!(stderr.starts_with(stderr_start), "{args:?}: {stderr:?}");
}

/// A path as the `&str` argument of a command.
pub fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}
