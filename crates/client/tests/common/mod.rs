//! Test helpers: brokers to talk to (ours in-process, Debian's Mosquitto as a child process),
//! certificates made with rcgen, a TCP proxy that can cut connections or swallow the broker's
//! answers, and the scenarios both broker test files run.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

pub mod scenarios;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use makelaar_broker::config::{Config, ListenerConfig, ListenerKind, TlsSettings};
use makelaar_broker::Server;
use makelaar_client::{ConnectOptions, Message, Messages, ProtocolVersion, TlsOptions};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// A directory under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("makelaar-client-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA, a server certificate for localhost and 127.0.0.1, and a client certificate.
pub struct Pki {
    pub dir: TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A server certificate for another name ("elsewhere.example"), for --insecure.
    pub other_cert: PathBuf,
    pub other_key: PathBuf,
}

pub fn pki() -> Pki {
    let dir = TempDir::new("pki");
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "makelaar-client test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(
        vec!["localhost".into(), "127.0.0.1".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
        "localhost",
    );
    let (other_cert, other_key) = leaf(
        vec!["elsewhere.example".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
        "elsewhere.example",
    );
    let (client_cert, client_key) = leaf(vec![], ExtendedKeyUsagePurpose::ClientAuth, "client-1");
    Pki {
        ca: dir.write("ca.pem", &ca_cert.pem()),
        server_cert: dir.write("server.pem", &server_cert),
        server_key: dir.write("server.key", &server_key),
        client_cert: dir.write("client.pem", &client_cert),
        client_key: dir.write("client.key", &client_key),
        other_cert: dir.write("other.pem", &other_cert),
        other_key: dir.write("other.key", &other_key),
        dir,
    }
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A broker under test.
pub enum Broker {
    Makelaar(Option<Server>),
    Mosquitto {
        child: Child,
        conf: PathBuf,
        _dir: TempDir,
    },
}

/// What a scenario needs to know about a running broker.
pub struct Target {
    pub name: &'static str,
    pub port: u16,
    pub tls_port: u16,
    pub pki: Arc<Pki>,
    pub broker: Broker,
}

impl Target {
    pub fn opts(&self, v: ProtocolVersion) -> ConnectOptions {
        ConnectOptions::new("127.0.0.1", self.port)
            .version(v)
            .connect_timeout(Duration::from_secs(5))
    }

    pub fn tls_opts(&self, v: ProtocolVersion) -> ConnectOptions {
        ConnectOptions::new("localhost", self.tls_port)
            .version(v)
            .connect_timeout(Duration::from_secs(5))
            .tls(TlsOptions::with_ca_file(&self.pki.ca))
    }

    /// Stops the broker and starts it again on the same ports (Mosquitto: sessions are lost,
    /// persistence is off).
    pub async fn restart(&mut self) {
        match &mut self.broker {
            Broker::Makelaar(_) => panic!("restart is for Mosquitto"),
            Broker::Mosquitto { child, conf, .. } => {
                let _ = child.kill();
                let _ = child.wait();
                *child = spawn_mosquitto(conf);
                wait_port(self.port).await;
            }
        }
    }

    pub async fn stop(&mut self) {
        match &mut self.broker {
            Broker::Makelaar(s) => {
                if let Some(s) = s.take() {
                    s.shutdown().await;
                }
            }
            Broker::Mosquitto { child, .. } => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Broker::Mosquitto { child, .. } = &mut self.broker {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Our broker, in-process, on free ports, with a plain and a TLS listener.
pub async fn makelaar(tweak: impl FnOnce(&mut Config)) -> Target {
    let pki = Arc::new(pki());
    let listeners = vec![
        ListenerConfig::new(
            "mqtt://127.0.0.1:0",
            ListenerKind::Mqtt,
            "127.0.0.1:0".parse().unwrap(),
        ),
        ListenerConfig {
            tls: Some(TlsSettings {
                cert: pki.server_cert.clone(),
                key: pki.server_key.clone(),
                cafile: Some(pki.ca.clone()),
                require_certificate: false,
                crlfile: None,
            }),
            ..ListenerConfig::new(
                "mqtts://127.0.0.1:0",
                ListenerKind::Mqtts,
                "127.0.0.1:0".parse().unwrap(),
            )
        },
    ];
    let mut config = Config {
        listeners,
        sys_interval: Duration::ZERO,
        in_memory: true,
        ..Config::default()
    };
    tweak(&mut config);
    let server = Server::start(config).await.unwrap();
    let addrs = server.local_addrs();
    let port = addrs[0].1.port();
    let tls_port = addrs.get(1).map_or(0, |a| a.1.port());
    Target {
        name: "makelaar",
        port,
        tls_port,
        pki,
        broker: Broker::Makelaar(Some(server)),
    }
}

pub fn mosquitto_binary() -> Option<PathBuf> {
    for p in [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ] {
        if Path::new(p).is_file() {
            return Some(PathBuf::from(p));
        }
    }
    None
}

fn current_user() -> String {
    if let Ok(u) = std::env::var("USER") {
        if !u.is_empty() {
            return u;
        }
    }
    Command::new("id")
        .arg("-un")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "root".into())
}

fn spawn_mosquitto(conf: &Path) -> Child {
    Command::new(mosquitto_binary().unwrap())
        .arg("-c")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

pub async fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Debian's Mosquitto on free ports (plain and TLS), or `None` (with a message) when it is not
/// installed. `extra` lines go into its configuration.
pub async fn mosquitto(extra: &str) -> Option<Target> {
    if mosquitto_binary().is_none() {
        eprintln!("SKIPPED: mosquitto is not installed (apt-get install -y mosquitto)");
        return None;
    }
    let pki = Arc::new(pki());
    let dir = TempDir::new("mosquitto");
    let port = free_port();
    let mut tls_port = free_port();
    while tls_port == port {
        tls_port = free_port();
    }
    let conf = dir.write(
        "mosquitto.conf",
        &format!(
            "user {user}\nallow_anonymous true\npersistence false\nlog_dest none\n{extra}\n\
             listener {port} 127.0.0.1\n\
             listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n",
            user = current_user(),
            ca = pki.ca.display(),
            cert = pki.server_cert.display(),
            key = pki.server_key.display(),
        ),
    );
    let child = spawn_mosquitto(&conf);
    wait_port(port).await;
    wait_port(tls_port).await;
    Some(Target {
        name: "mosquitto",
        port,
        tls_port,
        pki,
        broker: Broker::Mosquitto {
            child,
            conf,
            _dir: dir,
        },
    })
}

/// A TCP proxy in front of a broker: cuts every connection on demand, or swallows what the
/// broker sends (so acknowledgements get lost), and records what clients sent.
pub struct Proxy {
    pub port: u16,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    swallow: Arc<AtomicBool>,
    pub upstream_bytes: Arc<Mutex<Vec<u8>>>,
    accept: AbortHandle,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let swallow = Arc::new(AtomicBool::new(false));
        let upstream_bytes: Arc<Mutex<Vec<u8>>> = Arc::default();
        let (c, s, u) = (conns.clone(), swallow.clone(), upstream_bytes.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let (s, u) = (s.clone(), u.clone());
                let task = tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async {
                        let mut buf = vec![0u8; 16384];
                        loop {
                            let n = cr.read(&mut buf).await.unwrap_or(0);
                            if n == 0 {
                                break;
                            }
                            u.lock().unwrap().extend_from_slice(&buf[..n]);
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    let down = async {
                        let mut buf = vec![0u8; 16384];
                        loop {
                            let n = sr.read(&mut buf).await.unwrap_or(0);
                            if n == 0 {
                                break;
                            }
                            if s.load(Ordering::SeqCst) {
                                continue;
                            }
                            if cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                    }
                });
                c.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy {
            port,
            conns,
            swallow,
            upstream_bytes,
            accept: accept.abort_handle(),
        }
    }

    /// Closes every proxied connection (both sides); new ones are still accepted.
    pub fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// Drops (or again forwards) everything the broker sends to clients.
    pub fn swallow_downstream(&self, on: bool) {
        self.swallow.store(on, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// The next message within `secs` seconds, or a panic saying what was expected.
pub async fn next(msgs: &mut Messages, what: &str) -> Message {
    match tokio::time::timeout(Duration::from_secs(5), msgs.recv()).await {
        Ok(Some(m)) => m,
        Ok(None) => panic!("client ended while waiting for {what}: {:?}", msgs.error()),
        Err(_) => panic!("no message within 5 s while waiting for {what}"),
    }
}

/// Asserts that no message arrives within `ms` milliseconds.
pub async fn nothing(msgs: &mut Messages, ms: u64) {
    if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(ms), msgs.recv()).await {
        panic!("unexpected message {m:?}");
    }
}

/// A topic prefix unique to this process and call.
pub fn topic(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "test/{}/{tag}/{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
