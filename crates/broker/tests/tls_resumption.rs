//! TLS session resumption on the broker's server configuration: a client that comes back
//! resumes its session (no certificate, no signature) however many other clients connected
//! in between, and receives one ticket per handshake.

use std::path::PathBuf;
use std::sync::Arc;

use makelaar_broker::config::TlsSettings;
use rustls::{ClientConfig, ClientConnection, HandshakeKind, ServerConfig, ServerConnection};
use rustls_pki_types::{CertificateDer, ServerName};

/// A self-signed ECDSA certificate for "localhost" in a fresh directory; the client trusts it.
fn server_and_client() -> (Arc<ServerConfig>, Arc<ClientConfig>, PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "makelaar-tls-resumption-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let server = makelaar_broker::tls::server_config(&TlsSettings {
        cert: cert_path,
        key: key_path,
        cafile: None,
        require_certificate: false,
        crlfile: None,
    })
    .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.der().to_vec()))
        .unwrap();
    let client =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    (server, Arc::new(client), dir)
}

/// One handshake over memory, tickets included: how it went, and how many TLS 1.3 session
/// tickets the client received.
fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>) -> (HandshakeKind, usize) {
    let name = ServerName::try_from("localhost").unwrap();
    let mut c = ClientConnection::new(client.clone(), name).unwrap();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    for _ in 0..10 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
        }
        s.process_new_packets().unwrap();
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
        }
        c.process_new_packets().unwrap();
        if !c.is_handshaking() && !s.is_handshaking() && !s.wants_write() && !c.wants_write() {
            break;
        }
    }
    assert!(!c.is_handshaking(), "the handshake did not finish");
    (
        c.handshake_kind().unwrap(),
        c.tls13_tickets_received() as usize,
    )
}

#[test]
fn a_client_resumes_after_three_hundred_others_connected() {
    let (server, client, dir) = server_and_client();
    let (kind, tickets) = handshake(&client, &server);
    assert_eq!(
        (kind, tickets),
        (HandshakeKind::Full, 1),
        "one ticket per handshake"
    );

    // Three hundred other clients, each with its own session cache: the broker issues a ticket
    // to each (more than the 256 sessions rustls keeps in memory by default).
    for _ in 0..300 {
        let mut other = ClientConfig::clone(&client);
        other.resumption = rustls::client::Resumption::in_memory_sessions(4);
        handshake(&Arc::new(other), &server);
    }

    let (kind, tickets) = handshake(&client, &server);
    assert_eq!(kind, HandshakeKind::Resumed);
    assert_eq!(tickets, 1, "a resumed connection receives its next ticket");
    let _ = std::fs::remove_dir_all(dir);
}
