//! Helpers for the `makelaar passwd` tests.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The `makelaar` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_makelaar");

// Finding Mosquitto, skipping without it, temp dirs and a `Mosquitto` broker on a free
// port: the same helpers makelaar-auth's interop tests use, kept in one place.
#[path = "../../../auth/tests/common/mod.rs"]
mod mosquitto;
// Not every test file uses every helper.
#[allow(unused_imports)]
pub use mosquitto::{find, skip_without, temp_dir, Mosquitto};

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
