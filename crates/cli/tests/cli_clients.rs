//! `makelaar pub`, `makelaar sub` and `makelaar rr` as a user runs them: the real binary
//! against `makelaar serve` and against Debian's Mosquitto, and interop with mosquitto_pub and
//! mosquitto_sub both ways, over TCP and TLS, MQTT 3.1.1 and 5.
//!
//! Tests that need Mosquitto (or its clients) say SKIPPED and pass when it is not installed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_makelaar");
const WAIT: Duration = Duration::from_secs(10);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Test certificates from scripts/gen-certs.sh (ca.crt, server.crt/key, client.crt/key).
fn certs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-clients-certs");
        let ok = Command::new("sh")
            .arg(repo_root().join("scripts/gen-certs.sh"))
            .arg(&dir)
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "scripts/gen-certs.sh failed");
        dir
    })
}

fn cert(name: &str) -> String {
    certs().join(name).display().to_string()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(host: &str, port: u16, child: &mut Child) {
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect((host, port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the broker exited at start: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "nothing listens on {host}:{port}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "command -v {program} || test -x /usr/sbin/{program}"
        ))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn skip(what: &str) -> bool {
    if have(what) {
        return false;
    }
    eprintln!("SKIPPED: {what} is not installed (apt-get install -y mosquitto mosquitto-clients)");
    true
}

/// A unique topic prefix.
fn topic(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "cli/{}/{tag}/{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A broker process, stopped when dropped.
struct Broker {
    child: Child,
    port: u16,
    tls_port: u16,
    /// Host of the TLS listener.
    tls_host: &'static str,
    _dir: Option<PathBuf>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = &self._dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

impl Broker {
    fn args(&self) -> Vec<String> {
        vec![
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            self.port.to_string(),
        ]
    }

    fn tls_args(&self) -> Vec<String> {
        vec![
            "-h".into(),
            self.tls_host.into(),
            "-p".into(),
            self.tls_port.to_string(),
            "--cafile".into(),
            cert("ca.crt"),
        ]
    }
}

/// `makelaar serve` with a plain listener and a TLS one (on `tls_host`).
fn makelaar_with(tls_host: &'static str, extra: &[&str]) -> Broker {
    let port = free_port();
    let tls_port = free_port();
    let mut child = Command::new(BIN)
        .args(["serve", "--in-memory", "--sys-interval", "0", "--listen"])
        .arg(format!("mqtt://127.0.0.1:{port}"))
        .arg("--listen")
        .arg(format!("mqtts://{tls_host}:{tls_port}"))
        .args(["--cert", &cert("server.crt"), "--key", &cert("server.key")])
        .args(["--cafile", &cert("ca.crt")])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port("127.0.0.1", port, &mut child);
    wait_port(tls_host, tls_port, &mut child);
    Broker {
        child,
        port,
        tls_port,
        tls_host,
        _dir: None,
    }
}

fn makelaar() -> Broker {
    makelaar_with("127.0.0.1", &[])
}

fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Debian's Mosquitto with a plain and a TLS listener; `extra` goes into its configuration.
fn mosquitto(extra: &str) -> Broker {
    mosquitto_with(extra, |_| {})
}

/// Mosquitto, after `prepare` ran on its directory (DIR in `extra`).
fn mosquitto_with(extra: &str, prepare: impl FnOnce(&Path)) -> Broker {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "cli-mosquitto-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    prepare(&dir);
    let port = free_port();
    let tls_port = free_port();
    let conf = dir.join("mosquitto.conf");
    let extra = extra.replace("DIR", &dir.display().to_string());
    std::fs::write(
        &conf,
        format!(
            "user {}\npersistence false\nlog_dest none\nper_listener_settings false\n{extra}\n\
             listener {port} 127.0.0.1\nlistener {tls_port} 127.0.0.1\n\
             cafile {}\ncertfile {}\nkeyfile {}\n",
            current_user(),
            cert("ca.crt"),
            cert("server.crt"),
            cert("server.key")
        ),
    )
    .unwrap();
    let exe = if Path::new("/usr/sbin/mosquitto").exists() {
        "/usr/sbin/mosquitto"
    } else {
        "mosquitto"
    };
    let mut child = Command::new(exe)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port("127.0.0.1", port, &mut child);
    wait_port("127.0.0.1", tls_port, &mut child);
    Broker {
        child,
        port,
        tls_port,
        tls_host: "127.0.0.1",
        _dir: Some(dir),
    }
}

/// What a finished command did.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn makelaar_cmd(tool: &str, args: &[String]) -> Command {
    let mut c = Command::new(BIN);
    c.arg(tool).args(args);
    c
}

fn s(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

fn cat(a: Vec<String>, b: &[&str]) -> Vec<String> {
    let mut v = a;
    v.extend(b.iter().map(|x| x.to_string()));
    v
}

/// Runs a command to its end (killed after `WAIT`), feeding `stdin`.
fn run(mut cmd: Command, stdin: Option<&[u8]>) -> Out {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        let mut w = child.stdin.take().unwrap();
        let input = input.to_vec();
        thread::spawn(move || {
            let _ = w.write_all(&input);
        });
    }
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t1 = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t2 = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} did not finish within {WAIT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    Out {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&t1.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&t2.join().unwrap()).into_owned(),
    }
}

fn ok(out: Out) -> Out {
    assert_eq!(out.code, 0, "failed: {out:?}");
    out
}

/// A subscriber running in the background (makelaar sub or mosquitto_sub, always with -d):
/// ready once its SUBACK arrived; message lines are collected.
struct Sub {
    child: Child,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    what: String,
}

impl Sub {
    fn start(mut cmd: Command) -> Sub {
        let what = format!("{cmd:?}");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let (tx, lines) = mpsc::channel();
        let (ready_tx, ready) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let rt = ready_tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // mosquitto_sub -d writes its debug lines to stdout.
                if line.starts_with("Client ") || line.starts_with("Subscribed (mid") {
                    if line.contains("SUBACK") {
                        let _ = rt.send(());
                    }
                    continue;
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let se = stderr.clone();
        let mut err = child.stderr.take().unwrap();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut acc = String::new();
            loop {
                let n = err.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                acc.push_str(&String::from_utf8_lossy(&buf[..n]));
                if acc.contains("received SUBACK") {
                    let _ = ready_tx.send(());
                }
                se.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        if ready.recv_timeout(WAIT).is_err() {
            let _ = child.kill();
            panic!(
                "{what}: no SUBACK within {WAIT:?}; stderr: {}",
                stderr.lock().unwrap()
            );
        }
        Sub {
            child,
            lines,
            stderr,
            what,
        }
    }

    fn line(&self) -> String {
        self.lines.recv_timeout(WAIT).unwrap_or_else(|_| {
            panic!(
                "{}: no output line within {WAIT:?}; stderr: {}",
                self.what,
                self.stderr.lock().unwrap()
            )
        })
    }

    /// Waits for the process to exit; its exit code and the lines not read yet.
    fn finish(mut self) -> (i32, Vec<String>, String) {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("{} did not exit within {WAIT:?}", self.what);
            }
            thread::sleep(Duration::from_millis(10));
        };
        thread::sleep(Duration::from_millis(50));
        let rest: Vec<String> = self.lines.try_iter().collect();
        let err = self.stderr.lock().unwrap().clone();
        (status.code().unwrap_or(-1), rest, err)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        self.kill();
    }
}

fn makelaar_sub(args: Vec<String>) -> Sub {
    Sub::start(makelaar_cmd("sub", &cat(args, &["-d"])))
}

fn mosquitto_sub(args: Vec<String>) -> Sub {
    let mut c = if have("stdbuf") {
        let mut c = Command::new("stdbuf");
        c.args(["-oL", "mosquitto_sub"]);
        c
    } else {
        Command::new("mosquitto_sub")
    };
    c.arg("-d").args(args);
    Sub::start(c)
}

fn makelaar_pub(args: Vec<String>) -> Out {
    run(makelaar_cmd("pub", &args), None)
}

// ---------------------------------------------------------------------------------------------
// Round trips and interop

#[test]
fn pub_and_sub_at_every_qos_and_version() {
    let b = makelaar();
    for version in ["31", "311", "5", "mqttv311", "mqttv5"] {
        let tp = topic("qos");
        let sub = makelaar_sub(cat(
            b.args(),
            &[
                "-V",
                version,
                "-t",
                &format!("{tp}/#"),
                "-q",
                "2",
                "-v",
                "-i",
                "sub-qos",
            ],
        ));
        for q in ["0", "1", "2"] {
            ok(makelaar_pub(cat(
                b.args(),
                &[
                    "-V",
                    version,
                    "-t",
                    &format!("{tp}/{q}"),
                    "-m",
                    &format!("at qos {q}"),
                    "-q",
                    q,
                ],
            )));
            assert_eq!(sub.line(), format!("{tp}/{q} at qos {q}"));
        }
    }
}

#[test]
fn makelaar_sub_receives_from_mosquitto_pub_on_mosquitto() {
    if skip("mosquitto") || skip("mosquitto_pub") {
        return;
    }
    let b = mosquitto("allow_anonymous true");
    for tls in [false, true] {
        for v in ["311", "5"] {
            let conn = if tls { b.tls_args() } else { b.args() };
            let tp = topic("interop1");
            let sub = makelaar_sub(cat(conn.clone(), &["-V", v, "-t", &tp, "-q", "1"]));
            let mut c = Command::new("mosquitto_pub");
            c.args(&conn)
                .args(["-V", if v == "5" { "mqttv5" } else { "mqttv311" }])
                .args(["-t", &tp, "-m", "from mosquitto_pub", "-q", "1"]);
            ok(run(c, None));
            assert_eq!(sub.line(), "from mosquitto_pub", "tls {tls}, v{v}");
        }
    }
}

#[test]
fn mosquitto_sub_receives_from_makelaar_pub_on_makelaar() {
    if skip("mosquitto_sub") {
        return;
    }
    let b = makelaar();
    for tls in [false, true] {
        for v in ["311", "5"] {
            let conn = if tls { b.tls_args() } else { b.args() };
            let tp = topic("interop2");
            let sub = mosquitto_sub(cat(
                conn.clone(),
                &[
                    "-V",
                    if v == "5" { "mqttv5" } else { "mqttv311" },
                    "-t",
                    &tp,
                    "-q",
                    "2",
                    "-v",
                ],
            ));
            ok(makelaar_pub(cat(
                conn,
                &["-V", v, "-t", &tp, "-m", "from makelaar pub", "-q", "2"],
            )));
            assert_eq!(
                sub.line(),
                format!("{tp} from makelaar pub"),
                "tls {tls}, v{v}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// makelaar pub

#[test]
fn pub_message_sources_and_repeat() {
    let b = makelaar();
    let tp = topic("sources");
    let sub = makelaar_sub(cat(b.args(), &["-t", &tp, "-q", "1", "-F", "[%p]"]));
    let file =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("msg-{}.txt", std::process::id()));
    std::fs::write(&file, "from a file").unwrap();
    ok(makelaar_pub(cat(
        b.args(),
        &["-t", &tp, "-f", file.to_str().unwrap()],
    )));
    assert_eq!(sub.line(), "[from a file]");
    let _ = std::fs::remove_file(&file);

    ok(run(
        makelaar_cmd("pub", &cat(b.args(), &["-t", &tp, "-s"])),
        Some(b"all of stdin"),
    ));
    assert_eq!(sub.line(), "[all of stdin]");

    ok(run(
        makelaar_cmd(
            "pub",
            &cat(b.args(), &["-t", &tp, "-l", "-q", "1", "-M", "1"]),
        ),
        Some(b"line one\n\nline three\n"),
    ));
    assert_eq!(sub.line(), "[line one]");
    assert_eq!(sub.line(), "[]");
    assert_eq!(sub.line(), "[line three]");

    ok(makelaar_pub(cat(b.args(), &["-t", &tp, "-n"])));
    assert_eq!(sub.line(), "[]");

    let start = Instant::now();
    ok(makelaar_pub(cat(
        b.args(),
        &[
            "-t",
            &tp,
            "-m",
            "again",
            "--repeat",
            "3",
            "--repeat-delay",
            "0.2",
            "-q",
            "2",
        ],
    )));
    assert!(start.elapsed() >= Duration::from_millis(400));
    for _ in 0..3 {
        assert_eq!(sub.line(), "[again]");
    }
}

#[test]
fn pub_client_id_keepalive_and_debug() {
    let b = makelaar();
    let out = ok(makelaar_pub(cat(
        b.args(),
        &["-t", "x", "-m", "y", "-i", "my-id", "-k", "17", "-d"],
    )));
    assert!(
        out.stderr
            .contains("sending CONNECT (client id 'my-id', clean 1, keep-alive 17)"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("received CONNACK"), "{}", out.stderr);
    let out = ok(makelaar_pub(cat(
        b.args(),
        &["-t", "x", "-m", "y", "-I", "pfx-", "-d"],
    )));
    assert!(
        out.stderr.contains(&"client id 'pfx-".to_string()),
        "{}",
        out.stderr
    );
    let out = ok(makelaar_pub(cat(
        b.args(),
        &["-t", "x", "-m", "y", "-d", "-q", "1"],
    )));
    assert!(
        out.stderr.contains("client id 'makelaar-"),
        "a generated id for 3.1.1: {}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("sending PUBLISH (d0, q1, r0, m1, 'x', ... (1 bytes))"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("received PUBACK"), "{}", out.stderr);
    // -k 1: the keep-alive is kept with PINGREQ.
    let sub = makelaar_sub(cat(b.args(), &["-t", "ka", "-k", "1", "-W", "3"]));
    let (code, _, err) = sub.finish();
    assert_eq!(code, 27);
    assert!(
        err.contains("sending PINGREQ") && err.contains("received PINGRESP"),
        "{err}"
    );
}

#[test]
fn pub_retain_and_sub_retained_flags() {
    let b = makelaar();
    let tp = topic("retain");
    ok(makelaar_pub(cat(
        b.args(),
        &["-t", &format!("{tp}/a"), "-m", "kept a", "-r", "-q", "1"],
    )));
    ok(makelaar_pub(cat(
        b.args(),
        &["-t", &format!("{tp}/b"), "-m", "kept b", "-r"],
    )));
    // Retained messages arrive with the retain flag; -R leaves them out.
    let out = ok(run(
        makelaar_cmd(
            "sub",
            &cat(
                b.args(),
                &["-t", &format!("{tp}/#"), "-C", "2", "-F", "%t %r %p"],
            ),
        ),
        None,
    ));
    let mut lines: Vec<&str> = out.stdout.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        vec![format!("{tp}/a 1 kept a"), format!("{tp}/b 1 kept b")]
    );
    let out = run(
        makelaar_cmd(
            "sub",
            &cat(b.args(), &["-t", &format!("{tp}/#"), "-R", "-W", "1"]),
        ),
        None,
    );
    assert_eq!((out.code, out.stdout.as_str()), (27, ""));
    // --retained-only prints retained messages and stops at the first fresh one.
    let sub = makelaar_sub(cat(
        b.args(),
        &["-t", &format!("{tp}/#"), "--retained-only", "-v"],
    ));
    let mut got = vec![sub.line(), sub.line()];
    got.sort();
    assert_eq!(
        got,
        vec![format!("{tp}/a kept a"), format!("{tp}/b kept b")]
    );
    ok(makelaar_pub(cat(
        b.args(),
        &["-t", &format!("{tp}/c"), "-m", "fresh"],
    )));
    let (code, rest, _) = sub.finish();
    assert_eq!((code, rest.len()), (0, 0));
    // --remove-retained clears them (-T keeps b).
    let out = run(
        makelaar_cmd(
            "sub",
            &cat(
                b.args(),
                &[
                    "-t",
                    &format!("{tp}/#"),
                    "--remove-retained",
                    "-T",
                    &format!("{tp}/b"),
                    "-W",
                    "1",
                ],
            ),
        ),
        None,
    );
    assert_eq!(out.code, 27, "{out:?}");
    let out = run(
        makelaar_cmd(
            "sub",
            &cat(b.args(), &["-t", &format!("{tp}/#"), "-W", "1", "-v"]),
        ),
        None,
    );
    assert_eq!(out.stdout.trim(), format!("{tp}/b kept b"), "{out:?}");
}

#[test]
fn pub_v5_properties_reach_sub_json() {
    let b = makelaar();
    let tp = topic("props");
    let sub = makelaar_sub(cat(
        b.args(),
        &[
            "-V",
            "5",
            "-t",
            &tp,
            "-q",
            "1",
            "--json",
            "-D",
            "subscribe",
            "subscription-identifier",
            "9",
        ],
    ));
    ok(makelaar_pub(cat(
        b.args(),
        &[
            "-t",
            &tp,
            "-m",
            "hé",
            "-q",
            "1",
            "-D",
            "publish",
            "content-type",
            "text/plain",
            "-D",
            "publish",
            "user-property",
            "k",
            "v",
            "-D",
            "publish",
            "correlation-data",
            "abc",
            "-D",
            "publish",
            "response-topic",
            "r/t",
            "-D",
            "publish",
            "message-expiry-interval",
            "60",
            "-D",
            "publish",
            "payload-format-indicator",
            "1",
            "-D",
            "connect",
            "user-property",
            "who",
            "cli",
            "-D",
            "disconnect",
            "session-expiry-interval",
            "0",
        ],
    )));
    let line = sub.line();
    assert!(
        line.starts_with(&format!(
            "{{\"topic\":\"{tp}\",\"qos\":1,\"retain\":false,\"dup\":false,\"properties\":{{"
        )),
        "{line}"
    );
    for part in [
        "\"payload_format_indicator\":1",
        "\"content_type\":\"text/plain\"",
        "\"response_topic\":\"r/t\"",
        "\"correlation_data\":\"YWJj\"",
        "\"subscription_identifiers\":[9]",
        "\"user_properties\":[[\"k\",\"v\"]]",
        "\"payload\":\"hé\",\"payload_encoding\":\"utf-8\"}",
    ] {
        assert!(line.contains(part), "{part} in {line}");
    }
    assert!(line.contains("\"message_expiry_interval\":"), "{line}");
    // A payload that is not UTF-8 comes as base64.
    ok(run(
        makelaar_cmd("pub", &cat(b.args(), &["-V", "5", "-t", &tp, "-s"])),
        Some(&[0xff, 0xfe, 0x00]),
    ));
    let line = sub.line();
    assert!(
        line.ends_with("\"payload\":\"//4A\",\"payload_encoding\":\"base64\"}"),
        "{line}"
    );
}

#[test]
fn pub_topic_alias_property() {
    let b = makelaar();
    let tp = topic("alias");
    let sub = makelaar_sub(cat(b.args(), &["-t", &tp, "-v"]));
    ok(makelaar_pub(cat(
        b.args(),
        &[
            "-V",
            "5",
            "-t",
            &tp,
            "-m",
            "aliased",
            "--repeat",
            "2",
            "-D",
            "publish",
            "topic-alias",
            "1",
        ],
    )));
    assert_eq!(sub.line(), format!("{tp} aliased"));
    assert_eq!(sub.line(), format!("{tp} aliased"));
}

#[test]
fn pub_url_and_will() {
    let b = makelaar();
    let tp = topic("url");
    let sub = makelaar_sub(cat(b.args(), &["-t", &format!("{tp}/#"), "-v", "-q", "1"]));
    ok(makelaar_pub(s(&[
        "-L",
        &format!("mqtt://someone:pw@127.0.0.1:{}/{tp}/via-url", b.port),
        "-m",
        "hi",
    ])));
    assert_eq!(sub.line(), format!("{tp}/via-url hi"));
    ok(makelaar_pub(s(&[
        "-L",
        &format!("mqtts://localhost:{}/{tp}/tls-url", b.tls_port),
        "--cafile",
        &cert("ca.crt"),
        "-m",
        "secure",
    ])));
    assert_eq!(sub.line(), format!("{tp}/tls-url secure"));
    // A client killed without DISCONNECT has its will published.
    let mut dying = makelaar_sub(cat(
        b.args(),
        &[
            "-t",
            "nothing/here",
            "--will-topic",
            &format!("{tp}/will"),
            "--will-payload",
            "gone",
            "--will-qos",
            "1",
            "-V",
            "5",
            "-D",
            "will",
            "content-type",
            "text/plain",
        ],
    ));
    dying.kill();
    assert_eq!(sub.line(), format!("{tp}/will gone"));
    // --will-retain: the will is kept.
    let mut dying = makelaar_sub(cat(
        b.args(),
        &[
            "-t",
            "nothing/here",
            "--will-topic",
            &format!("{tp}/rwill"),
            "--will-payload",
            "kept",
            "--will-retain",
        ],
    ));
    dying.kill();
    assert_eq!(sub.line(), format!("{tp}/rwill kept"));
    let out = ok(run(
        makelaar_cmd(
            "sub",
            &cat(
                b.args(),
                &["-t", &format!("{tp}/rwill"), "-C", "1", "-F", "%r %p"],
            ),
        ),
        None,
    ));
    assert_eq!(out.stdout, "1 kept\n");
}

// ---------------------------------------------------------------------------------------------
// makelaar sub

#[test]
fn sub_topics_filter_out_format_and_count() {
    let b = makelaar();
    let tp = topic("fmt");
    let sub = makelaar_sub(cat(
        b.args(),
        &[
            "-t",
            &format!("{tp}/a/#"),
            "-t",
            &format!("{tp}/b"),
            "-T",
            &format!("{tp}/a/skip/#"),
            "-q",
            "1",
            "-C",
            "3",
            "-F",
            "%t|%p|%q|%r|%l|%x|%5.2t|",
            "-N",
        ],
    ));
    for (t, m) in [
        ("a/1", "one"),
        ("a/skip/x", "hidden"),
        ("b", "two"),
        ("c", "not subscribed"),
        ("a/2", "three"),
    ] {
        ok(makelaar_pub(cat(
            b.args(),
            &["-t", &format!("{tp}/{t}"), "-m", m, "-q", "1"],
        )));
    }
    let (code, rest, err) = sub.finish();
    assert_eq!(code, 0, "{err}");
    let out = rest.join("\n");
    assert_eq!(
        out,
        format!("{tp}/a/1|one|1|0|3|6f6e65|   cl|{tp}/b|two|1|0|3|74776f|   cl|{tp}/a/2|three|1|0|5|7468726565|   cl|")
    );
}

#[test]
fn sub_timeout_exits_27_and_e_exits_after_suback() {
    let b = makelaar();
    let out = run(
        makelaar_cmd("sub", &cat(b.args(), &["-t", "quiet/topic", "-W", "1"])),
        None,
    );
    assert_eq!(out.code, 27, "{out:?}");
    assert!(out.stderr.contains("Timed out"), "{}", out.stderr);
    let out = ok(run(
        makelaar_cmd("sub", &cat(b.args(), &["-t", "a", "-t", "b", "-E"])),
        None,
    ));
    assert_eq!(out.stdout, "");
}

#[test]
fn sub_persistent_session_and_unsubscribe() {
    let b = makelaar();
    for v in ["311", "5"] {
        let tp = topic("persist");
        let id = format!("persist-{v}-{}", std::process::id());
        // Create the session with its subscription, then go away.
        ok(run(
            makelaar_cmd(
                "sub",
                &cat(
                    b.args(),
                    &["-V", v, "-c", "-i", &id, "-q", "1", "-t", &tp, "-E"],
                ),
            ),
            None,
        ));
        ok(makelaar_pub(cat(
            b.args(),
            &["-t", &tp, "-m", "queued", "-q", "1"],
        )));
        let out = ok(run(
            makelaar_cmd(
                "sub",
                &cat(
                    b.args(),
                    &["-V", v, "-c", "-i", &id, "-q", "1", "-t", &tp, "-C", "1"],
                ),
            ),
            None,
        ));
        assert_eq!(out.stdout, "queued\n");
        // -U: unsubscribe; then nothing is queued any more.
        ok(run(
            makelaar_cmd(
                "sub",
                &cat(b.args(), &["-V", v, "-c", "-i", &id, "-U", &tp]),
            ),
            None,
        ));
        ok(makelaar_pub(cat(
            b.args(),
            &["-t", &tp, "-m", "not queued", "-q", "1"],
        )));
        let out = run(
            makelaar_cmd(
                "sub",
                &cat(
                    b.args(),
                    &["-V", v, "-c", "-i", &id, "-t", "other", "-W", "1"],
                ),
            ),
            None,
        );
        assert_eq!((out.code, out.stdout.as_str()), (27, ""));
    }
    // -x (5.0): a session that expires after that many seconds, kept across connections.
    let tp = topic("expiry");
    let id = format!("expiry-{}", std::process::id());
    ok(run(
        makelaar_cmd(
            "sub",
            &cat(
                b.args(),
                &[
                    "-V", "5", "-x", "60", "-c", "-i", &id, "-q", "1", "-t", &tp, "-E",
                ],
            ),
        ),
        None,
    ));
    ok(makelaar_pub(cat(
        b.args(),
        &["-t", &tp, "-m", "kept 60 s", "-q", "1"],
    )));
    let out = ok(run(
        makelaar_cmd(
            "sub",
            &cat(
                b.args(),
                &[
                    "-V", "5", "-x", "0", "-c", "-i", &id, "-t", &tp, "-q", "1", "-C", "1",
                ],
            ),
        ),
        None,
    ));
    assert_eq!(out.stdout, "kept 60 s\n");
}

// ---------------------------------------------------------------------------------------------
// makelaar rr

#[test]
fn rr_request_and_response() {
    let b = makelaar();
    for v in ["5", "311"] {
        let tp = topic("rr");
        let req = format!("{tp}/req");
        let resp = format!("{tp}/resp");
        // A responder: print the request's response topic and correlation data, answer there.
        let responder = makelaar_sub(cat(
            b.args(),
            &["-V", v, "-t", &req, "-C", "1", "-F", "%R\\t%D\\t%p"],
        ));
        let port = b.port;
        let v2 = v.to_string();
        let resp2 = resp.clone();
        let answer = thread::spawn(move || {
            let line = responder.line();
            let parts: Vec<&str> = line.split('\t').collect();
            let mut args = s(&[
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-V",
                &v2,
                "-m",
                &format!("answer to {}", parts[2]),
            ]);
            if v2 == "5" {
                assert_eq!(parts[0], resp2, "the response topic is in the request");
                assert!(!parts[1].is_empty(), "correlation data is in the request");
                args.extend(s(&[
                    "-t",
                    parts[0],
                    "-D",
                    "publish",
                    "correlation-data",
                    parts[1],
                ]));
            } else {
                args.extend(s(&["-t", &resp2]));
            }
            ok(makelaar_pub(args));
        });
        let out = ok(run(
            makelaar_cmd(
                "rr",
                &cat(
                    b.args(),
                    &[
                        "-V", v, "-t", &req, "-e", &resp, "-m", "question", "-W", "10", "-v",
                    ],
                ),
            ),
            None,
        ));
        answer.join().unwrap();
        assert_eq!(out.stdout, format!("{resp} answer to question\n"));
    }
    let out = run(
        makelaar_cmd(
            "rr",
            &cat(
                b.args(),
                &[
                    "-t",
                    "nobody/home",
                    "-e",
                    "nobody/reply",
                    "-m",
                    "?",
                    "-W",
                    "1",
                ],
            ),
        ),
        None,
    );
    assert_eq!(out.code, 27, "{out:?}");
}

// ---------------------------------------------------------------------------------------------
// TLS

#[test]
fn tls_ca_client_certificate_and_insecure() {
    // The TLS listener on 127.0.0.2: the certificate (localhost, 127.0.0.1) does not name it.
    let b = makelaar_with("127.0.0.2", &["--require-certificate"]);
    let tp = topic("tls");
    let client = ["--cert", &cert("client.crt"), "--key", &cert("client.key")];
    let sub = makelaar_sub(cat(b.args(), &["-t", &tp]));
    // Name mismatch: refused, then accepted with --insecure.
    let out = makelaar_pub(cat(cat(b.tls_args(), &client), &["-t", &tp, "-m", "x"]));
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("TLS"), "{}", out.stderr);
    ok(makelaar_pub(cat(
        cat(b.tls_args(), &client),
        &["-t", &tp, "-m", "insecure ok", "--insecure"],
    )));
    assert_eq!(sub.line(), "insecure ok");
    // Without a client certificate the broker refuses.
    let out = makelaar_pub(cat(b.tls_args(), &["-t", &tp, "-m", "x", "--insecure"]));
    assert_eq!(out.code, 1, "{out:?}");
    // --capath: a directory holding the CA.
    let capath =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("capath-{}", std::process::id()));
    std::fs::create_dir_all(&capath).unwrap();
    std::fs::copy(certs().join("ca.crt"), capath.join("ca.pem")).unwrap();
    let args = s(&[
        "-h",
        "127.0.0.2",
        "-p",
        &b.tls_port.to_string(),
        "--capath",
        capath.to_str().unwrap(),
        "--insecure",
    ]);
    ok(makelaar_pub(cat(
        cat(args, &client),
        &["-t", &tp, "-m", "capath ok"],
    )));
    assert_eq!(sub.line(), "capath ok");
    let _ = std::fs::remove_dir_all(&capath);
    // A CA file that does not exist: one sentence.
    let out = makelaar_pub(s(&[
        "-p",
        &b.tls_port.to_string(),
        "--cafile",
        "/nonexistent/ca.pem",
        "-t",
        "t",
        "-m",
        "x",
    ]));
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .trim()
            .starts_with("makelaar pub: TLS: cannot read certificates from /nonexistent/ca.pem"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.trim().lines().count(), 1);
}

// ---------------------------------------------------------------------------------------------
// Errors and exit codes

#[test]
fn errors_are_one_sentence_with_mosquittos_exit_codes() {
    let port = free_port();
    let out = makelaar_pub(s(&[
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-t",
        "t",
        "-m",
        "x",
    ]));
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr,
        format!("makelaar pub: Connection refused: is the broker running on 127.0.0.1:{port}?\n")
    );
    let out = makelaar_pub(s(&[
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-t",
        "t",
        "-m",
        "x",
        "--quiet",
    ]));
    assert_eq!((out.code, out.stderr.as_str()), (1, ""));
    let out = run(
        makelaar_cmd("sub", &s(&["-p", &port.to_string(), "-t", "t"])),
        None,
    );
    assert_eq!(
        out.stderr,
        format!("makelaar sub: Connection refused: is the broker running on localhost:{port}?\n")
    );

    for (args, msg) in [
        (s(&["--bogus"]), "makelaar pub: Unexpected argument '--bogus' found (see makelaar pub --help)"),
        (s(&["-t", "t"]), "makelaar pub: No message to send: give -m MESSAGE, -f FILE, -l, -s or -n"),
        (s(&["-t", "t", "-m", "x", "-n"]), "makelaar pub: Give only one of -m, -f, -l, -s and -n: one kind of message at a time"),
        (s(&["-t", "a/#", "-m", "x"]), "makelaar pub: Invalid topic 'a/#': a topic to publish to cannot contain + or #"),
        (s(&["-t", "t", "-m", "x", "-q", "3"]), "makelaar pub: Invalid value '3' for '--qos <QOS>': invalid QoS '3': use 0, 1 or 2 (see makelaar pub --help)"),
        (s(&["-t", "t", "-m", "x", "-c"]), "makelaar pub: A persistent session (-c, or -x -1) needs a client id: give one with -i ID"),
        (s(&["-t", "t", "-m", "x", "-V", "4"]), "makelaar pub: Invalid value '4' for '--protocol-version <VERSION>': unknown protocol version '4': use 31, 311 or 5 (or mqttv31, mqttv311, mqttv5) (see makelaar pub --help)"),
        (s(&["-t", "t", "-m", "x", "-V", "311", "-D", "publish", "content-type", "a"]), "makelaar pub: -D properties need MQTT 5: add -V 5 (or leave -V out)"),
        (s(&["-t", "t", "-m", "x", "-D", "connect", "content-type", "a"]), "makelaar pub: -D: the content-type property is not allowed on connect"),
        (s(&["-t", "t", "-m", "x", "-L", "http://x/t"]), "makelaar pub: Invalid URL 'http://x/t': the scheme must be mqtt:// or mqtts://; use mqtt(s)://[USER[:PASS]@]HOST[:PORT]/TOPIC"),
    ] {
        let out = makelaar_pub(args.clone());
        assert_eq!(out.code, 1, "{args:?}");
        assert_eq!(out.stderr.trim_end(), msg, "{args:?}");
    }
    let out = run(makelaar_cmd("sub", &s(&[])), None);
    assert_eq!(
        (out.code, out.stderr.trim_end()),
        (
            1,
            "makelaar sub: No topic to subscribe to: give one with -t FILTER"
        )
    );
    let out = run(makelaar_cmd("rr", &s(&["-t", "a", "-m", "x"])), None);
    assert_eq!(
        (out.code, out.stderr.trim_end()),
        (1, "makelaar rr: No response topic: give one with -e TOPIC")
    );
    for tool in ["pub", "sub", "rr"] {
        let out = ok(run(makelaar_cmd(tool, &s(&["--help"])), None));
        assert!(
            out.stdout.contains("Examples:") && out.stdout.contains("-h, --host <HOST>"),
            "{tool}"
        );
    }
}

#[test]
fn refused_connections_exit_with_the_connack_code() {
    if skip("mosquitto") || skip("mosquitto_passwd") {
        return;
    }
    let b = mosquitto_with("allow_anonymous false\npassword_file DIR/passwd", |dir| {
        let made = Command::new("mosquitto_passwd")
            .args(["-c", "-b"])
            .arg(dir.join("passwd"))
            .args(["alice", "secret"])
            .status()
            .unwrap();
        assert!(made.success());
    });
    let out = makelaar_pub(cat(b.args(), &["-t", "t", "-m", "x"]));
    assert_eq!(out.code, 5, "{out:?}");
    assert_eq!(
        out.stderr,
        "makelaar pub: Connection refused: not authorized\n"
    );
    let out = makelaar_pub(cat(b.args(), &["-t", "t", "-m", "x", "-V", "5"]));
    assert_eq!(out.code, 135, "{out:?}");
    let out = makelaar_pub(cat(
        b.args(),
        &["-t", "t", "-m", "x", "-u", "alice", "-P", "wrong"],
    ));
    assert_eq!(
        out.code, 5,
        "mosquitto answers a bad password with 'not authorized': {out:?}"
    );
    ok(makelaar_pub(cat(
        b.args(),
        &["-t", "t", "-m", "x", "-u", "alice", "-P", "secret"],
    )));
    ok(makelaar_pub(s(&[
        "-L",
        &format!("mqtt://alice:secret@127.0.0.1:{}/t", b.port),
        "-m",
        "x",
        "-V",
        "5",
    ])));
    let out = run(
        makelaar_cmd(
            "sub",
            &cat(
                b.args(),
                &["-t", "t", "-u", "alice", "-P", "wrong", "-V", "5"],
            ),
        ),
        None,
    );
    assert!(out.code == 134 || out.code == 135, "{out:?}");
}
