//! `makelaar bench conn` over TLS against `makelaar serve`: a full handshake per connection
//! unless `--tls-resume`, and the report says which.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_makelaar");

/// Test certificates from scripts/gen-certs.sh (RSA 2048, as bench/compare.sh uses).
fn certs() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-conn-certs");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/gen-certs.sh");
    let ok = Command::new("sh")
        .arg(script)
        .arg(&dir)
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "scripts/gen-certs.sh failed");
    dir
}

/// `makelaar serve` with one TLS listener; killed when dropped.
struct Broker {
    child: Child,
    port: u16,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `makelaar serve --in-memory` with one listener of `scheme` on a port the broker picks
/// (port 0), and `args` added; the port is read from its "listening on" line.
///
/// Not a port probed free beforehand and then a TCP connect until one succeeds: the two
/// tests run in parallel, and CI twice benchmarked a port nothing listened on (0
/// connections, "connection refused") after such a readiness check had passed.
fn broker(scheme: &str, args: &[&Path]) -> Broker {
    let mut child = Command::new(BIN)
        .args(["serve", "--in-memory", "--sys-interval", "0", "--listen"])
        .arg(format!("{scheme}://127.0.0.1:0"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = mpsc::channel();
    let marker = format!("listening on {scheme}://127.0.0.1:");
    // Reads the log to its end, so the broker never blocks on a full pipe.
    thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if let Some((_, rest)) = line.split_once(&marker) {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                let _ = tx.send(digits.parse::<u16>().ok());
            }
        }
    });
    let port = match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Some(port)) => port,
        Ok(None) => panic!("the broker's listening line has no port"),
        Err(_) => {
            let exited = child.try_wait().unwrap();
            let _ = child.kill();
            panic!("the broker did not say it listens within 10 s (exited: {exited:?})");
        }
    };
    Broker { child, port }
}

fn tls_broker(certs: &Path) -> Broker {
    let (cert, key) = (certs.join("server.crt"), certs.join("server.key"));
    broker(
        "mqtts",
        &[Path::new("--cert"), &cert, Path::new("--key"), &key],
    )
}

/// Runs `makelaar bench conn ... --json` and returns its report.
fn bench_conn(args: &[&str]) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(["bench", "conn", "--json", "--hold", "0", "--parallel", "1"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bench conn failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn tls_connections_make_full_handshakes_unless_told_to_resume() {
    let certs = certs();
    let broker = tls_broker(&certs);
    let port = broker.port.to_string();
    let ca = certs.join("ca.crt").display().to_string();
    let common = ["-p", &port, "--cafile", &ca, "-c", "10"];

    let full = bench_conn(&common);
    assert_eq!(full["connections"], 10);
    assert_eq!(full["params"]["tls"], true);
    assert_eq!(
        full["tls"],
        serde_json::json!({"resume": false, "full_handshakes": 10, "resumed_handshakes": 0})
    );

    // One at a time, each connection finds the ticket the one before it received.
    let resumed = bench_conn(&[&common[..], &["--tls-resume"]].concat());
    assert_eq!(resumed["tls"]["resume"], true);
    assert_eq!(resumed["tls"]["full_handshakes"], 1);
    assert_eq!(resumed["tls"]["resumed_handshakes"], 9);
}

#[test]
fn plain_connections_have_no_tls_report() {
    let broker = broker("mqtt", &[]);
    let report = bench_conn(&["-p", &broker.port.to_string(), "-c", "5", "-t", "idle/%i"]);
    assert_eq!(report["connections"], 5, "{report:#}");
    assert_eq!(report["params"]["tls"], false);
    assert!(report["tls"].is_null());
}
