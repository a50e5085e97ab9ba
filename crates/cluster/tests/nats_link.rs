//! The link to real NATS servers with TLS and credentials (`link`): a node connects with the
//! right CA, client certificate and credentials; a wrong one is refused with one sentence
//! naming the setting to check. One server per test (TLS and authorization need no cluster).
//! Skipped (with a message) when nats-server is not installed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use makelaar_cluster::backend::{Backend, Bucket};
use makelaar_cluster::link::{LinkError, NatsAuth, NatsTls, Secret};
use makelaar_cluster::nats::{NatsBackend, NatsConfig, NatsStartError};
use makelaar_cluster::partition::PartitionCount;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use support::{Extra, Fsync, Servers};

/// A CA with a server certificate (localhost, 127.0.0.1) and a client certificate, and a
/// second CA that signed nothing the servers use.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.self_signed(&key).unwrap();
            (cert.pem(), Issuer::new(params, key))
        };
        let (ca_pem, issuer) = ca("link test CA");
        let (other_pem, _) = ca("unrelated CA");
        let leaf = |names: Vec<String>, cn: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            let cert = params.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_pem, server_key) =
            leaf(vec!["localhost".into(), "127.0.0.1".into()], "localhost");
        let (client_pem, client_key) = leaf(vec!["makelaar-node".into()], "makelaar-node");
        for (name, text) in [
            ("ca.pem", ca_pem),
            ("other-ca.pem", other_pem),
            ("server.pem", server_pem),
            ("server.key", server_key),
            ("client.pem", client_pem),
            ("client.key", client_key),
        ] {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The server's `tls` block with `more` inside.
    fn server_tls(&self, more: &str) -> String {
        format!(
            "tls {{ cert_file: {:?}, key_file: {:?}, ca_file: {:?} {more} }}",
            self.path("server.pem").display().to_string(),
            self.path("server.key").display().to_string(),
            self.path("ca.pem").display().to_string(),
        )
    }
}

fn config(servers: &Servers, prefix: &str, tls: NatsTls, auth: NatsAuth) -> NatsConfig {
    NatsConfig {
        servers: servers.client_urls.clone(),
        monitor: servers.monitor_urls.clone(),
        tls,
        auth,
        allow_lazy_fsync: false,
        replicas: None,
        prefix: prefix.to_owned(),
        partitions: PartitionCount::new(2).unwrap(),
        lease_ttl: Duration::from_secs(3),
        max_message_age: Duration::from_secs(3600),
        timeout: Duration::from_secs(5),
        node: String::new(),
    }
}

fn with_ca(ca: &Path) -> NatsTls {
    NatsTls {
        ca_file: Some(ca.to_owned()),
        ..NatsTls::default()
    }
}

fn user(name: &str, password: &str) -> NatsAuth {
    NatsAuth::UserPassword {
        user: name.into(),
        password: Secret::new(password),
    }
}

async fn start(extra: Extra) -> Option<Servers> {
    let Some(bin) = support::nats_server_bin() else {
        eprintln!("{}", support::skip_message());
        return None;
    };
    let mut servers = Servers::start_with(&bin, 1, Fsync::Always, true, &extra);
    servers.wait_logged_ready(Duration::from_secs(30)).await;
    Some(servers)
}

/// Connects and does one write and read through JetStream.
async fn works(config: &NatsConfig) {
    let (backend, warnings) = NatsBackend::connect(config)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    assert!(warnings.is_empty());
    backend
        .put(Bucket::Registry, "k", Bytes::from_static(b"v"))
        .await
        .unwrap();
    let got = backend.get(Bucket::Registry, "k").await.unwrap().unwrap();
    assert_eq!(got.value, Bytes::from_static(b"v"));
}

async fn refused(config: &NatsConfig) -> LinkError {
    match NatsBackend::connect(config).await {
        Err(NatsStartError::Link(e)) => {
            let text = e.to_string();
            eprintln!("refused: {text}");
            assert!(!text.contains(". "), "one sentence: {text}");
            assert!(!text.contains("s3cret"), "no password in: {text}");
            e
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("connected"),
    }
}

/// TLS on the client port, users with passwords: the right CA and password connect (by
/// `tls://` and by `nats://`, which the server upgrades); the wrong CA, no CA, the wrong
/// password and no credentials are refused naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_passwords() {
    let pki = Pki::new();
    let extra = Extra {
        conf: format!(
            "{}\nauthorization {{ users = [ {{ user: mk, password: s3cret }} ] }}",
            pki.server_tls("")
        ),
        tls: true,
        https: false,
    };
    let Some(servers) = start(extra).await else {
        return;
    };
    let ca = pki.path("ca.pem");
    works(&config(&servers, "a", with_ca(&ca), user("mk", "s3cret"))).await;

    // nats:// to a server that requires TLS: upgraded, verified the same way.
    let mut plain = config(&servers, "a", with_ca(&ca), user("mk", "s3cret"));
    plain.servers = plain
        .servers
        .iter()
        .map(|s| s.replace("tls://", "nats://"))
        .collect();
    works(&plain).await;

    let other = pki.path("other-ca.pem");
    let e = refused(&config(
        &servers,
        "a",
        with_ca(&other),
        user("mk", "s3cret"),
    ))
    .await;
    let text = e.to_string();
    assert!(matches!(e, LinkError::Handshake { .. }), "{text}");
    assert!(
        text.contains(&servers.client_urls[0]) && text.contains(&other.display().to_string()),
        "names the server and the CA file: {text}"
    );

    // No CA file: the system's CAs do not know the test CA.
    let e = refused(&config(
        &servers,
        "a",
        NatsTls::default(),
        user("mk", "s3cret"),
    ))
    .await;
    assert!(e.to_string().contains("--cluster-cafile"), "{e}");

    let e = refused(&config(&servers, "a", with_ca(&ca), user("mk", "wrong"))).await;
    assert_eq!(
        e.to_string(),
        format!(
            "the NATS servers {} refused this node's credentials (authorization violation): \
             check [cluster] user (\"mk\") and password",
            servers.client_urls[0]
        )
    );
    let e = refused(&config(&servers, "a", with_ca(&ca), NatsAuth::None)).await;
    assert!(matches!(e, LinkError::Refused { .. }), "{e}");
    assert!(e.to_string().contains("creds_file"), "{e}");
}

/// Servers that verify clients: without a client certificate the handshake fails naming
/// cert_file and key_file; with one it works, and the monitoring endpoint over https is read
/// with the same CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_and_https_monitoring() {
    let pki = Pki::new();
    let extra = Extra {
        conf: pki.server_tls(", verify: true"),
        tls: true,
        https: true,
    };
    let Some(servers) = start(extra).await else {
        return;
    };
    assert!(servers.monitor_urls[0].starts_with("https://"));
    let ca = pki.path("ca.pem");
    let e = refused(&config(&servers, "c", with_ca(&ca), NatsAuth::None)).await;
    assert!(
        e.to_string().contains("cert_file and key_file"),
        "names the client certificate settings: {e}"
    );
    let tls = NatsTls {
        ca_file: Some(ca),
        cert_file: Some(pki.path("client.pem")),
        key_file: Some(pki.path("client.key")),
        tls_first: false,
    };
    works(&config(&servers, "c", tls, NatsAuth::None)).await;
}

/// `tls_first` against a server with `handshake_first`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_first() {
    let pki = Pki::new();
    let extra = Extra {
        conf: pki.server_tls(", handshake_first: true"),
        tls: true,
        https: false,
    };
    let Some(servers) = start(extra).await else {
        return;
    };
    let tls = NatsTls {
        tls_first: true,
        ..with_ca(&pki.path("ca.pem"))
    };
    works(&config(&servers, "f", tls, NatsAuth::None)).await;
}

/// Token authorization: the right token works, a wrong one is refused naming `token`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens() {
    let extra = Extra {
        conf: "authorization { token: s3cret-t0ken }".into(),
        ..Extra::default()
    };
    let Some(servers) = start(extra).await else {
        return;
    };
    let token = |t: &str| NatsAuth::Token(Secret::new(t));
    works(&config(
        &servers,
        "t",
        NatsTls::default(),
        token("s3cret-t0ken"),
    ))
    .await;
    let e = refused(&config(&servers, "t", NatsTls::default(), token("nope"))).await;
    assert!(e.to_string().ends_with("check [cluster] token"), "{e}");
}

/// An nkey user: the seed file signs the server's challenge; another seed is refused, a
/// missing or empty file is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkey_seeds() {
    let node = nkeys::KeyPair::new_user();
    let extra = Extra {
        conf: format!(
            "authorization {{ users = [ {{ nkey: {} }} ] }}",
            node.public_key()
        ),
        ..Extra::default()
    };
    let Some(servers) = start(extra).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let seed_file = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        NatsAuth::NkeySeedFile(p)
    };
    let good = seed_file("m1.nk", format!("{}\n", node.seed().unwrap()));
    works(&config(&servers, "n", NatsTls::default(), good)).await;

    let stranger = nkeys::KeyPair::new_user();
    let bad = seed_file("other.nk", stranger.seed().unwrap());
    let e = refused(&config(&servers, "n", NatsTls::default(), bad)).await;
    assert!(e.to_string().contains("nkey_seed_file"), "{e}");

    let empty = seed_file("empty.nk", String::new());
    let e = refused(&config(&servers, "n", NatsTls::default(), empty)).await;
    assert!(matches!(e, LinkError::CredentialsFile { .. }), "{e}");
    let missing = NatsAuth::NkeySeedFile(dir.path().join("missing.nk"));
    let e = refused(&config(&servers, "n", NatsTls::default(), missing)).await;
    assert!(e.to_string().contains("missing.nk"), "{e}");
}

/// A `.creds` file that is not one is named before anything is sent.
#[tokio::test]
async fn unreadable_creds_files() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("m1.creds");
    std::fs::write(&creds, "not a creds file\n").unwrap();
    let mut config = NatsConfig::new(vec!["nats://127.0.0.1:1".into()]);
    config.auth = NatsAuth::CredsFile(creds);
    match NatsBackend::connect(&config).await {
        Err(NatsStartError::Link(e @ LinkError::CredentialsFile { .. })) => {
            let text = e.to_string();
            assert!(
                text.contains("m1.creds") && text.contains("creds_file"),
                "{text}"
            );
        }
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("connected"),
    }
}
