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
