//! The HTTP listener over real sockets: routing, limits, and that bad requests leave the
//! broker serving.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::time::Duration;

use makelaar_broker::config::Config;
use makelaar_broker::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start() -> (Server, SocketAddr) {
    let config = Config::from_toml_str(
        "listen = [\"mqtt://127.0.0.1:0\", \"http://127.0.0.1:0\"]\nin_memory = true\n\
         sys_interval = 0\n",
        "test",
    )
    .unwrap();
    let server = Server::start(config).await.unwrap();
    let http = server
        .local_addrs()
        .iter()
        .find(|(url, _)| url.starts_with("http"))
        .unwrap()
        .1;
    (server, http)
}

/// Sends `request` as is and reads until the server closes (requests say
/// `Connection: close`), with a time limit.
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the server closed the connection")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

fn get(method: &str, path: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn healthz_answers_ok_and_head_has_no_body() {
    let (server, addr) = start().await;
    let r = exchange(addr, &get("GET", "/healthz")).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.ends_with("\r\n\r\nok\n"), "{r}");
    let r = exchange(addr, &get("HEAD", "/healthz")).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("content-length: 3"), "{r}");
    assert!(r.ends_with("\r\n\r\n"), "{r}");
    server.shutdown().await;
}

#[tokio::test]
async fn unknown_paths_get_404_and_wrong_methods_405() {
    let (server, addr) = start().await;
    let r = exchange(addr, &get("GET", "/nothing-here")).await;
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    let r = exchange(addr, &get("DELETE", "/healthz")).await;
    assert!(r.starts_with("HTTP/1.1 405"), "{r}");
    assert!(r.contains("allow: GET, HEAD"), "{r}");
    server.shutdown().await;
}

#[tokio::test]
async fn oversized_headers_and_garbage_are_refused_and_the_broker_stays_up() {
    let (server, addr) = start().await;
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40_000)
    );
    let r = exchange(addr, big.as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");
    let r = exchange(addr, b"\x00\x01garbage\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 400") || r.is_empty(), "{r}");
    let r = exchange(addr, &get("GET", "/healthz")).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    server.shutdown().await;
}

#[tokio::test]
async fn keep_alive_serves_several_requests_on_one_connection() {
    let (server, addr) = start().await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let two = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    s.write_all(two).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    server.shutdown().await;
}

#[tokio::test]
async fn metrics_are_served_in_the_text_format_and_count_a_publish() {
    let (server, addr) = start().await;
    let mqtt = server.local_addrs()[0].1;
    // A 3.1.1 client publishes one QoS 0 message of 5 bytes to nobody, then disconnects.
    let mut s = TcpStream::connect(mqtt).await.unwrap();
    s.write_all(b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x00\x00\x01c")
        .await
        .unwrap();
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await.unwrap();
    s.write_all(b"\x30\x08\x00\x01thello\xe0\x00")
        .await
        .unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.ok();
    let r = exchange(addr, &get("GET", "/metrics")).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(
        r.contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{r}"
    );
    for line in [
        "makelaar_messages_total{direction=\"in\",qos=\"0\"} 1",
        "makelaar_message_payload_bytes_total{direction=\"in\",qos=\"0\"} 5",
        "makelaar_messages_dropped_total{reason=\"no_subscribers\"} 1",
        "makelaar_disconnects_total{reason=\"client_disconnect\"} 1",
        "makelaar_disconnects_total{reason=\"connection_lost\"} 0",
        "makelaar_network_bytes_total{direction=\"in\"} 27",
        "makelaar_store_enabled 0",
    ] {
        assert!(r.contains(&format!("\n{line}\n")), "{line} missing in\n{r}");
    }
    // Every sample line is `name{labels} value` under its family's # TYPE.
    let body = r.split("\r\n\r\n").nth(1).unwrap();
    let mut family = String::new();
    for l in body.lines() {
        if let Some(t) = l.strip_prefix("# TYPE ") {
            family = t.split(' ').next().unwrap().to_string();
        } else if !l.starts_with('#') {
            assert!(l.starts_with(&family), "{l} outside its family {family}");
            let value = l.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{l}");
        }
    }
    server.shutdown().await;
}
