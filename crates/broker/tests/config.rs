//! Configuration, TLS and listener tests: the example file parses to the defaults, every
//! mistake gives its one-sentence message, and TLS listeners accept (or refuse) real clients.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use makelaar_broker::config::{
    Config, ConfigError, ConfigFile, ListenerConfig, ListenerKind, TlsSettings,
};
use makelaar_broker::listener::{Listener, Stream};
use makelaar_core::Limits;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn parse(toml: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(toml, "makelaar.toml")
}

fn parse_err(toml: &str) -> String {
    match parse(toml) {
        Ok(c) => panic!("expected an error for {toml:?}, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("makelaar-config-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// The example file and the defaults

#[test]
fn example_file_parses_to_the_defaults() {
    let text = std::fs::read_to_string(repo_root().join("makelaar.example.toml")).unwrap();
    let config = Config::from_toml_str(&text, "makelaar.example.toml").unwrap();
    assert_eq!(config, Config::default());
}

#[test]
fn example_file_loads_from_disk() {
    let config = Config::from_toml_file(&repo_root().join("makelaar.example.toml")).unwrap();
    assert_eq!(config.listeners, Config::default().listeners);
    assert_eq!(config.limits, Limits::default());
}

#[test]
fn relative_paths_are_relative_to_the_file() {
    let dir = TempDir::new();
    let path = dir.0.join("makelaar.toml");
    std::fs::write(&path, "data_dir = \"state\"\nacl_file = \"acl\"\n").unwrap();
    let config = Config::from_toml_file(&path).unwrap();
    assert_eq!(config.data_dir, dir.0.join("state"));
    assert_eq!(config.acl_file, Some(dir.0.join("acl")));
}

/// The names of every `[limits]` key, from the parser's own "unknown key" message.
fn limits_keys() -> Vec<String> {
    let msg = parse_err("[limits]\nzzzzzzzzzzzzzzzzzzzzzzzzzz = 1\n");
    let list = msg
        .split("the known keys are ")
        .nth(1)
        .and_then(|s| s.split(" (see").next())
        .unwrap();
    list.split(", ").map(str::to_string).collect()
}

#[test]
fn every_limit_is_in_the_example_and_the_docs() {
    let keys = limits_keys();
    assert_eq!(keys.len(), 24, "{keys:?}");
    let example = std::fs::read_to_string(repo_root().join("makelaar.example.toml")).unwrap();
    let docs = std::fs::read_to_string(repo_root().join("docs/config-reference.md")).unwrap();
    for key in keys {
        assert!(
            example.contains(&format!("\n# {key} = ")),
            "{key} missing from the example"
        );
        assert!(
            docs.contains(&format!("`{key}`")),
            "{key} missing from the docs"
        );
    }
}

#[test]
fn empty_file_is_the_default() {
    assert_eq!(parse("").unwrap(), Config::default());
}

#[test]
fn full_file_is_read() {
    let config = parse(
        r#"
listen = ["mqtt://0.0.0.0:1883", "mqtts://[::1]:8883", "mqtt://localhost:1999"]
cert = "server.pem"
key = "server.key"
cafile = "ca.pem"
require_certificate = true
sys_interval = 0
in_memory = true
data_dir = "/var/lib/makelaar"

[limits]
max_packet_size = 65536
connect_timeout = 3
max_qos = 1
receive_maximum = 1
max_client_id_len = 23
queue_qos0_messages = true
max_session_expiry = 4294967295
"#,
    )
    .unwrap();
    assert_eq!(config.listeners.len(), 3);
    assert_eq!(config.listeners[0].kind, ListenerKind::Mqtt);
    assert_eq!(config.listeners[0].addr, "0.0.0.0:1883".parse().unwrap());
    assert!(config.listeners[0].tls.is_none());
    assert_eq!(config.listeners[1].kind, ListenerKind::Mqtts);
    assert_eq!(config.listeners[1].addr, "[::1]:8883".parse().unwrap());
    assert_eq!(
        config.listeners[1].tls,
        Some(TlsSettings {
            cert: "server.pem".into(),
            key: "server.key".into(),
            cafile: Some("ca.pem".into()),
            require_certificate: true,
            crlfile: None,
        })
    );
    assert!(config.listeners[2].addr.ip().is_loopback());
    assert_eq!(config.listeners[2].addr.port(), 1999);
    assert_eq!(config.sys_interval, Duration::ZERO);
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/makelaar"));
    let limits = config.limits;
    assert_eq!(limits.max_packet_size, 65536);
    assert_eq!(limits.connect_timeout, Duration::from_secs(3));
    assert_eq!(limits.max_qos, 1);
    assert_eq!(limits.receive_maximum, 1);
    assert!(limits.queue_qos0_messages);
    assert_eq!(
        limits.max_inflight_messages,
        Limits::default().max_inflight_messages
    );
}

#[test]
fn listen_accepts_a_single_string_and_default_ports() {
    let config = parse("listen = \"mqtts://127.0.0.1\"\ncert = \"c\"\nkey = \"k\"\n").unwrap();
    assert_eq!(config.listeners[0].addr, "127.0.0.1:8883".parse().unwrap());
    let config = parse("listen = [\"MQTT://127.0.0.1/\"]").unwrap();
    assert_eq!(config.listeners[0].addr, "127.0.0.1:1883".parse().unwrap());
}

// ---------------------------------------------------------------------------------------------
// Parse errors

#[test]
fn unknown_key_in_limits() {
    assert_eq!(
        parse_err("[limits]\nmax_packets = 5\n"),
        "makelaar.toml:2:1: unknown key \"max_packets\" in [limits]; did you mean \
         \"max_packet_size\"? (every key is listed in docs/config-reference.md)"
    );
}

#[test]
fn unknown_key_at_top_level_lists_the_keys() {
    let msg = parse_err("listen = []\nfoo = 1\n");
    assert!(
        msg.starts_with(
            "makelaar.toml:2:1: unknown key \"foo\" at the top level; the known keys are listen, \
             cert, key, cafile,"
        ),
        "{msg}"
    );
    assert!(msg.ends_with("(see docs/config-reference.md)"), "{msg}");
}

#[test]
fn unknown_table() {
    let msg = parse_err("[limit]\nmax_qos = 1\n");
    assert!(
        msg.starts_with(
            "makelaar.toml:1:2: unknown key \"limit\" at the top level; did you mean \"limits\"?"
        ),
        "{msg}"
    );
}

#[test]
fn wrong_types() {
    assert_eq!(
        parse_err("sys_interval = \"ten\"\n"),
        "makelaar.toml:1:16: sys_interval must be a whole number from 0 to 9223372036854775807, \
         not string \"ten\""
    );
    assert_eq!(
        parse_err("[limits]\nretain_available = 1\n"),
        "makelaar.toml:2:20: limits.retain_available must be true or false, not integer 1"
    );
    assert_eq!(
        parse_err("[limits]\nmax_packet_size = \"1MB\"\n"),
        "makelaar.toml:2:19: limits.max_packet_size must be a whole number, not string \"1MB\""
    );
    assert_eq!(
        parse_err("listen = 1883\n"),
        "makelaar.toml:1:10: listen must be a list of listener URLs, not integer 1883"
    );
}

#[test]
fn values_out_of_range() {
    assert_eq!(
        parse_err("[limits]\nmax_qos = 3\n"),
        "makelaar.toml:2:11: limits.max_qos = 3 is out of range; use a QoS from 0 to 2"
    );
    assert_eq!(
        parse_err("[limits]\nmax_packet_size = 8\n"),
        "makelaar.toml:2:19: limits.max_packet_size = 8 is out of range; use a size in bytes \
         from 16 to 268435455"
    );
    assert_eq!(
        parse_err("[limits]\nreceive_maximum = 0\n"),
        "makelaar.toml:2:19: limits.receive_maximum = 0 is out of range; use a whole number \
         from 1 to 65535"
    );
    assert_eq!(
        parse_err("[limits]\nmax_inflight_messages = -1\n"),
        "makelaar.toml:2:25: limits.max_inflight_messages = -1 is out of range; use a whole \
         number from 1 to 65535"
    );
    assert_eq!(
        parse_err("[limits]\nmax_keep_alive = 70000\n"),
        "makelaar.toml:2:18: limits.max_keep_alive = 70000 is out of range; use a whole number \
         from 0 to 65535"
    );
    assert!(parse_err("[limits]\nconnect_timeout = 0\n").contains("connect_timeout = 0"));
    assert!(parse_err("[limits]\nmax_client_id_len = 5\n").contains("from 23 to 65535"));
}

#[test]
fn toml_syntax_error() {
    let msg = parse_err("listen = [\"mqtt://127.0.0.1:1883\"\n[limits]\n");
    assert!(msg.starts_with("makelaar.toml:"), "{msg}");
    assert!(msg.contains("is not valid TOML"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
}

#[test]
fn unreadable_config_file() {
    let err = Config::from_toml_file(Path::new("/nonexistent/makelaar.toml")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot read config file \"/nonexistent/makelaar.toml\": No such file or directory; \
         check the path given to --config"
    );
}

// ---------------------------------------------------------------------------------------------
// Listener URLs and settings

#[test]
fn http_listeners_and_the_mqtt_listener_they_imply() {
    let c = Config::from_toml_str(
        "listen = [\"mqtt://127.0.0.1:1884\", \"http://127.0.0.1\"]",
        "makelaar.toml",
    )
    .unwrap();
    assert_eq!(c.listeners.len(), 2);
    assert_eq!(c.listeners[1].kind, ListenerKind::Http);
    assert_eq!(c.listeners[1].addr.port(), 9883);
    assert!(c.listeners[1].kind.is_http() && !c.listeners[1].kind.is_tls());
    // Only an HTTP listener: MQTT gets its default one.
    let c = Config::from_toml_str("listen = \"http://127.0.0.1:9000\"", "makelaar.toml").unwrap();
    let urls: Vec<&str> = c.listeners.iter().map(|l| l.url.as_str()).collect();
    assert_eq!(urls, ["mqtt://127.0.0.1:1883", "http://127.0.0.1:9000"]);
    // https needs the certificate, as mqtts does.
    assert!(parse_err("listen = [\"https://127.0.0.1:9884\"]").contains("needs a certificate"));
    // Two listeners on port 0 each get a free port of their own.
    let c = Config::from_toml_str(
        "listen = [\"mqtt://127.0.0.1:0\", \"http://127.0.0.1:0\"]",
        "makelaar.toml",
    )
    .unwrap();
    assert_eq!(c.listeners.len(), 2);
    assert!(
        parse_err("[[listener]]\nurl = \"http://127.0.0.1:9883\"\nproxy_protocol = true")
            .contains("proxy_protocol is for MQTT listeners")
    );
}

#[test]
fn websocket_listeners_and_proxies() {
    let c = parse(
        "listen = [\"ws://127.0.0.1\", \"ws://127.0.0.1:8081/ws/mqtt\", \"ws://127.0.0.1:8082/*\"]\n\
         [[listener]]\nurl = \"mqtt://127.0.0.1:1884\"\nproxy_protocol = true\n\
         [[listener]]\nurl = \"ws://127.0.0.1:8083/\"\nproxy_protocol = true\n\
         trusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\", \"fd00::/8\"]\n",
    )
    .unwrap();
    let l = &c.listeners;
    assert_eq!(l[0].kind, ListenerKind::Ws);
    assert_eq!(l[0].addr.port(), 80);
    let path = |i: usize| l[i].websocket.as_ref().unwrap().path.clone();
    assert_eq!(path(0).as_deref(), Some("/mqtt"));
    assert_eq!(path(1).as_deref(), Some("/ws/mqtt"));
    assert_eq!(path(2), None);
    assert_eq!(path(4).as_deref(), Some("/"));
    assert!(l[3].proxy_protocol && l[3].websocket.is_none());
    assert!(!l[0].proxy_protocol);
    let trusted = &l[4].websocket.as_ref().unwrap().trusted_proxies;
    assert_eq!(trusted.len(), 3);
    assert!(trusted[1].contains("10.9.8.7".parse().unwrap()));
    assert!(l[4].proxy_protocol);

    let wss = parse("listen = [\"wss://127.0.0.1\"]\ncert = \"/c.pem\"\nkey = \"/k.pem\"").unwrap();
    assert_eq!(wss.listeners[0].kind, ListenerKind::Wss);
    assert_eq!(wss.listeners[0].addr.port(), 443);
    assert!(wss.listeners[0].tls.is_some());
    assert!(parse_err("listen = [\"wss://127.0.0.1:8443/mqtt\"]").contains("needs a certificate"));
    assert!(parse_err("listen = [\"ws://127.0.0.1:8080/mqtt?x=1\"]").contains("has the path"));
    assert_eq!(
        parse_err(
            "[[listener]]\nurl = \"mqtt://127.0.0.1:1883\"\ntrusted_proxies = [\"10.0.0.1\"]"
        ),
        "listener \"mqtt://127.0.0.1:1883\": trusted_proxies is about the X-Forwarded-For header \
         of WebSocket connections; use it on a ws:// or wss:// listener, or set proxy_protocol = \
         true to learn client addresses over TCP"
    );
    assert_eq!(
        parse_err("[[listener]]\nurl = \"ws://127.0.0.1:80\"\ntrusted_proxies = [\"10.0.0.0/33\"]"),
        "listener \"ws://127.0.0.1:80\": trusted proxy \"10.0.0.0/33\" has a prefix length that \
         is not 0 to 32; write addresses such as 127.0.0.1 or networks such as 10.0.0.0/8"
    );
}

#[test]
fn bad_listener_urls() {
    assert_eq!(
        parse_err("listen = [\"tcp://x\"]"),
        "listener URL \"tcp://x\" has an unknown scheme \"tcp\"; use mqtt://HOST:PORT, \
         mqtts://HOST:PORT, ws://HOST:PORT/mqtt or wss://HOST:PORT/mqtt"
    );
    assert_eq!(
        parse_err("listen = [\"127.0.0.1:1883\"]"),
        "listener URL \"127.0.0.1:1883\" has no scheme; write it as mqtt://127.0.0.1:1883 (or \
         mqtts://127.0.0.1:1883 for TLS)"
    );
    assert_eq!(
        parse_err("listen = [\"mqtt://:1883\"]"),
        "listener URL \"mqtt://:1883\" has no host; use mqtt://0.0.0.0:1883 to listen on every \
         interface or mqtt://127.0.0.1:1883 for this machine only"
    );
    assert_eq!(
        parse_err("listen = [\"mqtt://127.0.0.1:99999\"]"),
        "listener URL \"mqtt://127.0.0.1:99999\" has an invalid port \"99999\" (use 0 to \
         65535); use mqtt://HOST:PORT, e.g. mqtt://0.0.0.0:1883"
    );
    assert!(parse_err("listen = [\"mqtt://127.0.0.1:1883/topic\"]").contains("has a path"));
    assert!(parse_err("listen = [\"mqtt://::1:1883\"]").contains("not in brackets"));
    assert!(parse_err("listen = [\"mqtt://no-such-host.invalid:1883\"]")
        .contains("cannot resolve host \"no-such-host.invalid\""));
    assert_eq!(
        parse_err("listen = []"),
        "makelaar.toml: listen is an empty list; name at least one listener, e.g. listen = \
         [\"mqtt://127.0.0.1:1883\"]"
    );
    assert!(
        parse_err("listen = [\"mqtt://127.0.0.1:1883\", \"mqtts://127.0.0.1:1883\"]")
            .contains("both use 127.0.0.1:1883; give each listener its own port")
    );
}

#[test]
fn tls_listener_needs_cert_and_key() {
    assert_eq!(
        parse_err("listen = [\"mqtts://0.0.0.0:8883\"]"),
        "listener \"mqtts://0.0.0.0:8883\" needs a certificate: pass --cert FILE and --key FILE \
         (PEM), or set cert and key in the config file"
    );
    assert!(
        parse_err("listen = [\"mqtts://0.0.0.0:8883\"]\ncert = \"c.pem\"")
            .contains("has a certificate but no private key: pass --key FILE")
    );
    assert!(
        parse_err("listen = [\"mqtts://0.0.0.0:8883\"]\nkey = \"k.pem\"")
            .contains("has a private key but no certificate: pass --cert FILE")
    );
}

#[test]
fn require_certificate_needs_cafile() {
    assert_eq!(
        parse_err("require_certificate = true"),
        "--require-certificate needs --cafile FILE (or cafile in the config file): the CA \
         bundle that client certificates are checked against"
    );
}

#[test]
fn durability_and_corrupt_store_policy_are_read_and_checked() {
    use makelaar_broker::config::{CorruptStorePolicy, Durability};
    let c =
        parse("durability = \"batch\"\nbatch_max_delay_ms = 25\non_corrupt_store = \"move-aside\"")
            .unwrap();
    assert_eq!(c.durability, Durability::Batch { max_delay_ms: 25 });
    assert_eq!(c.on_corrupt_store, CorruptStorePolicy::MoveAside);
    assert!(c.store().is_some());
    assert!(parse("in_memory = true").unwrap().store().is_none());
    assert!(parse_err("durability = \"fast\"").contains("durability = \"fast\" is not known"));
    assert!(parse_err("batch_max_delay_ms = 5").contains("only applies to durability = \"batch\""));
    assert!(parse_err("on_corrupt_store = \"ignore\"").contains("\"move-aside\""));
}

#[test]
fn flags_override_the_file() {
    let mut file = ConfigFile::from_toml_str(
        "listen = [\"mqtt://127.0.0.1:1\"]\nsys_interval = 3\n",
        "makelaar.toml",
    )
    .unwrap();
    file.listen = Some(vec!["mqtt://127.0.0.1:2".into()]);
    let config = file.into_config("makelaar.toml").unwrap();
    assert_eq!(config.listeners.len(), 1);
    assert_eq!(config.listeners[0].addr.port(), 2);
    assert_eq!(config.sys_interval, Duration::from_secs(3));
}

// ---------------------------------------------------------------------------------------------
// Certificates

struct Pki {
    dir: TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    other_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn pki() -> Pki {
    let dir = TempDir::new();

    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Makelaar test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().unwrap();
    let mut server_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();

    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    client_params
        .distinguished_name
        .push(DnType::CommonName, "client-1");
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client_params.signed_by(&client_key, &issuer).unwrap();

    let other_key = KeyPair::generate().unwrap();

    Pki {
        ca: dir.write("ca.pem", &ca_cert.pem()),
        cert: dir.write("server.pem", &server_cert.pem()),
        key: dir.write("server.key", &server_key.serialize_pem()),
        other_key: dir.write("other.key", &other_key.serialize_pem()),
        client_cert: dir.write("client.pem", &client_cert.pem()),
        client_key: dir.write("client.key", &client_key.serialize_pem()),
        dir,
    }
}

fn tls_listener(tls: TlsSettings) -> ListenerConfig {
    ListenerConfig {
        tls: Some(tls),
        ..ListenerConfig::new(
            "mqtts://127.0.0.1:0",
            ListenerKind::Mqtts,
            "127.0.0.1:0".parse().unwrap(),
        )
    }
}

fn settings(pki: &Pki) -> TlsSettings {
    TlsSettings {
        cert: pki.cert.clone(),
        key: pki.key.clone(),
        cafile: None,
        require_certificate: false,
        crlfile: None,
    }
}

async fn bind_err(cfg: &ListenerConfig) -> String {
    match Listener::bind(cfg).await {
        Ok(l) => panic!("expected an error, bound {l:?}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn unreadable_certificate() {
    let pki = pki();
    let missing = pki.dir.0.join("nope.pem");
    let cfg = tls_listener(TlsSettings {
        cert: missing.clone(),
        ..settings(&pki)
    });
    assert_eq!(
        bind_err(&cfg).await,
        format!(
            "cannot read certificate file \"{}\": No such file or directory; check the path \
             given to --cert",
            missing.display()
        )
    );
}

#[tokio::test]
async fn files_without_certificate_or_key() {
    let pki = pki();
    // The key file given as the certificate and the other way round.
    let swapped_cert = tls_listener(TlsSettings {
        cert: pki.key.clone(),
        ..settings(&pki)
    });
    assert!(bind_err(&swapped_cert)
        .await
        .contains("holds no certificate; give --cert a PEM file"));
    let swapped_key = tls_listener(TlsSettings {
        key: pki.cert.clone(),
        ..settings(&pki)
    });
    assert!(bind_err(&swapped_key)
        .await
        .contains("holds no private key; give --key a PEM file"));
    let garbage = pki
        .dir
        .write("garbage.pem", "-----BEGIN CERTIFICATE-----\n!!!\n");
    let bad_pem = tls_listener(TlsSettings {
        cert: garbage,
        ..settings(&pki)
    });
    assert!(bind_err(&bad_pem).await.contains("is not valid PEM"));
    let missing_ca = tls_listener(TlsSettings {
        cafile: Some(pki.dir.0.join("no-ca.pem")),
        ..settings(&pki)
    });
    assert!(bind_err(&missing_ca)
        .await
        .contains("check the path given to --cafile"));
}

#[tokio::test]
async fn key_not_matching_certificate() {
    let pki = pki();
    let cfg = tls_listener(TlsSettings {
        key: pki.other_key.clone(),
        ..settings(&pki)
    });
    assert_eq!(
        bind_err(&cfg).await,
        format!(
            "the private key \"{}\" does not belong to the certificate \"{}\"; pass the key \
             that was generated with that certificate",
            pki.other_key.display(),
            pki.cert.display()
        )
    );
}

#[tokio::test]
async fn port_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let cfg = ListenerConfig::new(&format!("mqtt://{addr}"), ListenerKind::Mqtt, addr);
    assert_eq!(
        bind_err(&cfg).await,
        format!(
            "port {} on 127.0.0.1 is already in use: stop the other MQTT broker (e.g. \
             `systemctl stop mosquitto`) or choose another port with --listen",
            addr.port()
        )
    );
}

#[tokio::test]
async fn address_not_on_this_machine() {
    // 192.0.2.0/24 is TEST-NET-1: never assigned to a real interface.
    let cfg = parse("listen = [\"mqtt://192.0.2.1:1883\"]")
        .unwrap()
        .listeners[0]
        .clone();
    assert!(bind_err(&cfg)
        .await
        .contains("which is not an address of this machine"));
}

// ---------------------------------------------------------------------------------------------
// Real connections

async fn plain_round_trip() {
    let cfg = parse("listen = [\"mqtt://127.0.0.1:0\"]")
        .unwrap()
        .listeners[0]
        .clone();
    let listener = Listener::bind(&cfg).await.unwrap();
    assert_ne!(listener.local_addr().port(), 0);
    assert_eq!(listener.url(), "mqtt://127.0.0.1:0");
    let addr = listener.local_addr();
    let client = tokio::spawn(async move {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.unwrap();
        buf
    });
    let (accepted, peer) = listener.accept().await.unwrap();
    assert_eq!(accepted.peer_addr(), peer);
    let (mut stream, opened_peer) = accepted.open(1024).await.unwrap();
    assert_eq!(opened_peer, peer);
    assert!(!stream.is_tls());
    assert!(stream.tcp().nodelay().unwrap());
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    stream.write_all(b"pong").await.unwrap();
    assert_eq!(&client.await.unwrap(), b"pong");
}

#[tokio::test]
async fn plain_listener_carries_bytes() {
    plain_round_trip().await;
}

fn client_config(
    pki: &Pki,
    with_cert: bool,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&pki.ca).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots);
    let config = if with_cert {
        let chain = CertificateDer::pem_file_iter(&pki.client_cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&pki.client_key).unwrap();
        builder.with_client_auth_cert(chain, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    Arc::new(config)
}

/// Connects a TLS client, sends "ping" and expects "pong"; returns the server's result.
async fn tls_exchange(
    listener: &Listener,
    client: Arc<rustls::ClientConfig>,
) -> std::io::Result<Stream> {
    let addr = listener.local_addr();
    let client_task = tokio::spawn(async move {
        let tcp = TcpStream::connect(addr).await?;
        let connector = tokio_rustls::TlsConnector::from(client);
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await?;
        tls.write_all(b"ping").await?;
        tls.flush().await?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"pong");
        Ok::<_, std::io::Error>(())
    });
    let (accepted, _) = listener.accept().await.unwrap();
    let result = accepted.open(1024).await.map(|(stream, _)| stream);
    let mut stream = match result {
        Ok(s) => s,
        Err(e) => {
            // The client must not get its answer.
            assert!(client_task.await.unwrap().is_err());
            return Err(e);
        }
    };
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"ping");
    stream.write_all(b"pong").await?;
    stream.flush().await?;
    client_task.await.unwrap()?;
    Ok(stream)
}

#[tokio::test]
async fn tls_listener_carries_bytes() {
    let pki = pki();
    let listener = Listener::bind(&tls_listener(settings(&pki))).await.unwrap();
    let stream = tls_exchange(&listener, client_config(&pki, false, rustls::ALL_VERSIONS))
        .await
        .unwrap();
    assert!(stream.is_tls());
    assert!(stream.peer_certificates().is_none());
    // TLS 1.2 works too.
    let stream = tls_exchange(
        &listener,
        client_config(&pki, false, &[&rustls::version::TLS12]),
    )
    .await
    .unwrap();
    assert!(stream.is_tls());
}

#[tokio::test]
async fn mutual_tls() {
    let pki = pki();
    let listener = Listener::bind(&tls_listener(TlsSettings {
        cafile: Some(pki.ca.clone()),
        require_certificate: true,
        ..settings(&pki)
    }))
    .await
    .unwrap();

    let stream = tls_exchange(&listener, client_config(&pki, true, rustls::ALL_VERSIONS))
        .await
        .unwrap();
    assert_eq!(stream.peer_certificates().map(<[_]>::len), Some(1));

    // Without a certificate the handshake fails, over TLS 1.3 and 1.2.
    assert!(
        tls_exchange(&listener, client_config(&pki, false, rustls::ALL_VERSIONS))
            .await
            .is_err()
    );
    assert!(tls_exchange(
        &listener,
        client_config(&pki, false, &[&rustls::version::TLS12])
    )
    .await
    .is_err());
}

#[tokio::test]
async fn optional_client_certificates() {
    let pki = pki();
    let listener = Listener::bind(&tls_listener(TlsSettings {
        cafile: Some(pki.ca.clone()),
        require_certificate: false,
        ..settings(&pki)
    }))
    .await
    .unwrap();
    let with = tls_exchange(&listener, client_config(&pki, true, rustls::ALL_VERSIONS))
        .await
        .unwrap();
    assert!(with.peer_certificates().is_some());
    let without = tls_exchange(&listener, client_config(&pki, false, rustls::ALL_VERSIONS))
        .await
        .unwrap();
    assert!(without.peer_certificates().is_none());
}

#[tokio::test]
async fn slow_tls_client_does_not_block_accept() {
    let pki = pki();
    let listener = Listener::bind(&tls_listener(settings(&pki))).await.unwrap();
    // A client that connects and never starts the handshake.
    let _idle = TcpStream::connect(listener.local_addr()).await.unwrap();
    let (_pending, _) = listener.accept().await.unwrap();
    // The next client is accepted and served while the first handshake is still pending.
    tokio::time::timeout(
        Duration::from_secs(5),
        tls_exchange(&listener, client_config(&pki, false, rustls::ALL_VERSIONS)),
    )
    .await
    .unwrap()
    .unwrap();
}

/// SIGHUP's certificate reload: the listener's files are read again and new handshakes use
/// the new certificate; a broken file keeps the one in use.
#[tokio::test]
async fn tls_reload_swaps_the_certificate_or_keeps_it() {
    let (a, b) = (pki(), pki());
    let dir = TempDir::new();
    let copy = |name: &str, from: &Path| dir.write(name, &std::fs::read_to_string(from).unwrap());
    let cert = copy("cert.pem", &a.cert);
    let key = copy("key.pem", &a.key);
    let listener = Listener::bind(&tls_listener(TlsSettings {
        cert: cert.clone(),
        key: key.clone(),
        ..settings(&a)
    }))
    .await
    .unwrap();
    let slot = listener.tls_slot().unwrap();
    let trusts = |p: &Pki| client_config(p, false, rustls::ALL_VERSIONS);
    tls_exchange(&listener, trusts(&a)).await.unwrap();

    copy("cert.pem", &b.cert);
    copy("key.pem", &b.key);
    slot.reload().unwrap();
    tls_exchange(&listener, trusts(&b)).await.unwrap();
    assert!(tls_exchange(&listener, trusts(&a)).await.is_err());

    dir.write("key.pem", "not a key");
    let e = slot.reload().unwrap_err().to_string();
    assert!(e.contains("key.pem"), "{e}");
    tls_exchange(&listener, trusts(&b)).await.unwrap();
}
