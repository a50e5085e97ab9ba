//! The dashboard's API over real sockets: a raw MQTT 5 client is listed, disconnected from
//! the API (DISCONNECT 0x98 Administrative action), and the checks on requests hold.
//! (The page itself is tested in a browser: tests/interop/test_dashboard.py.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use makelaar_broker::config::Config;
use makelaar_broker::Server;
use makelaar_proto::{Connect, Decoder, Packet, Properties, ProtocolVersion, ReasonCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start() -> (Server, SocketAddr, SocketAddr) {
    let config = Config::from_toml_str(
        "listen = [\"mqtt://127.0.0.1:0\", \"http://127.0.0.1:0\"]\nin_memory = true\n\
         sys_interval = 0\n",
        "test",
    )
    .unwrap();
    let server = Server::start(config).await.unwrap();
    let find = |scheme: &str| {
        server
            .local_addrs()
            .iter()
            .find(|(url, _)| url.starts_with(scheme))
            .unwrap()
            .1
    };
    let (mqtt, http) = (find("mqtt://"), find("http://"));
    (server, mqtt, http)
}

async fn http(addr: SocketAddr, method: &str, path: &str, headers: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Connection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the server closed the connection")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

/// The next packet from a 5.0 connection; `None` when it closes.
async fn next_packet(s: &mut TcpStream, buf: &mut BytesMut, dec: &mut Decoder) -> Option<Packet> {
    loop {
        if let Some(p) = dec.decode(buf).unwrap() {
            return Some(p);
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read_buf(buf))
            .await
            .expect("nothing from the broker")
            .unwrap();
        if n == 0 {
            return None;
        }
    }
}

#[tokio::test]
async fn a_client_is_listed_and_disconnected_with_administrative_action() {
    let (server, mqtt, web) = start().await;
    let mut s = TcpStream::connect(mqtt).await.unwrap();
    let connect = Packet::Connect(Box::new(Connect {
        bridge: false,
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 33,
        client_id: "rust/victim".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }));
    let mut out = BytesMut::new();
    connect.encode(ProtocolVersion::V5, &mut out).unwrap();
    s.write_all(&out).await.unwrap();
    let (mut buf, mut dec) = (BytesMut::new(), Decoder::new(1 << 20));
    dec.set_version(ProtocolVersion::V5);
    let ack = next_packet(&mut s, &mut buf, &mut dec).await;
    assert!(matches!(ack, Some(Packet::ConnAck(_))), "{ack:?}");

    let r = http(web, "GET", "/api/clients?q=victim", "").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("\"total\":1"), "{r}");
    assert!(r.contains("\"client_id\":\"rust/victim\""), "{r}");
    assert!(r.contains("\"protocol\":\"5.0\""), "{r}");
    assert!(r.contains("\"keep_alive\":33"), "{r}");
    assert!(
        r.contains(&format!("\"address\":\"{}\"", s.local_addr().unwrap())),
        "{r}"
    );

    // The id holds a `/`: percent-encoded in the path. Without the header: refused.
    let path = "/api/clients/rust%2Fvictim/disconnect";
    let r = http(web, "POST", path, "").await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    let r = http(web, "POST", path, "X-Makelaar-Dashboard: 1\r\n").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    match next_packet(&mut s, &mut buf, &mut dec).await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::ADMINISTRATIVE_ACTION),
        other => panic!("expected DISCONNECT 0x98, got {other:?}"),
    }
    assert!(next_packet(&mut s, &mut buf, &mut dec).await.is_none());
    let r = http(web, "GET", "/api/clients", "").await;
    assert!(r.contains("\"total\":0"), "{r}");
    let r = http(web, "POST", path, "X-Makelaar-Dashboard: 1\r\n").await;
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    server.shutdown().await;
}

#[tokio::test]
async fn pages_are_served_with_a_strict_policy_and_bad_requests_refused() {
    let (server, _, web) = start().await;
    let r = http(web, "GET", "/", "").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("content-security-policy: default-src 'none'; script-src 'self'"));
    assert!(r.contains("<script src=\"/dashboard.js\""), "{r}");
    for asset in ["/dashboard.js", "/dashboard.css"] {
        assert!(http(web, "GET", asset, "")
            .await
            .starts_with("HTTP/1.1 200"));
    }
    let r = http(web, "GET", "/api/watch?filter=a/%23/b", "").await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let r = http(web, "GET", "/api/nothing", "").await;
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    let r = http(web, "DELETE", "/api/clients", "").await;
    assert!(r.starts_with("HTTP/1.1 405"), "{r}");
    let r = http(web, "GET", "/api/stats", "").await;
    assert!(
        r.starts_with("HTTP/1.1 200") && r.contains("\"clients_connected\":0"),
        "{r}"
    );
    server.shutdown().await;
}
