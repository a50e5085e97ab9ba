//! Memory limits over real sockets, against a broker running in-process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use makelaar_broker::config::{Config, ListenerConfig, ListenerKind};
use makelaar_broker::Server;
use makelaar_proto::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(limits: makelaar_core::Limits) -> (Server, SocketAddr) {
    let config = Config {
        listeners: vec![ListenerConfig::new(
            "mqtt://127.0.0.1:0",
            ListenerKind::Mqtt,
            "127.0.0.1:0".parse().unwrap(),
        )],
        limits,
        sys_interval: Duration::ZERO,
        in_memory: true,
        ..Config::default()
    };
    let server = Server::start(config).await.unwrap();
    let addr = server.local_addrs()[0].1;
    (server, addr)
}

fn encode(p: Packet) -> Vec<u8> {
    let mut b = BytesMut::new();
    p.encode(ProtocolVersion::V311, &mut b).unwrap();
    b.to_vec()
}

async fn client(addr: SocketAddr, id: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let c = Connect {
        bridge: false,
        protocol: ProtocolVersion::V311,
        clean_start: true,
        keep_alive: 0,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    };
    s.write_all(&encode(Packet::Connect(Box::new(c))))
        .await
        .unwrap();
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await.unwrap();
    assert_eq!(ack, [0x20, 2, 0, 0]);
    s
}

async fn next_publish(s: &mut TcpStream, wait: Duration) -> Option<Publish> {
    let mut dec = Decoder::new(1 << 24);
    dec.set_version(ProtocolVersion::V311);
    let mut buf = BytesMut::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(Packet::Publish(p)) = dec.decode(&mut buf).unwrap() {
            return Some(p);
        }
        match tokio::time::timeout_at(deadline, s.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

fn big_publish(topic: &str, size: usize) -> Vec<u8> {
    encode(Packet::Publish(Publish {
        topic: Arc::from(topic),
        payload: vec![b'x'; size].into(),
        ..Publish::default()
    }))
}

/// Many clients announcing large packets at once cannot exhaust memory: a large packet
/// reserves its size from `large_packet_budget` before it is read, and waits while the budget
/// is taken.
#[tokio::test]
async fn large_packets_wait_for_the_shared_budget() {
    let limits = makelaar_core::Limits {
        max_packet_size: 700 * 1024,
        large_packet_budget: 1024 * 1024,
        ..makelaar_core::Limits::default()
    };
    let (server, addr) = start(limits).await;
    let mut sub = client(addr, "sub").await;
    let s = encode(Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![("big/#".into(), SubscriptionOptions::default())],
        ..Subscribe::default()
    }));
    sub.write_all(&s).await.unwrap();
    let mut suback = [0u8; 5];
    sub.read_exact(&mut suback).await.unwrap();

    let first = big_publish("big/a", 600 * 1024);
    let second = big_publish("big/b", 600 * 1024);
    let mut a = client(addr, "a").await;
    let mut b = client(addr, "b").await;
    // A announces its packet and sends half of it: it holds 600 KiB of the 1 MiB budget.
    a.write_all(&first[..first.len() / 2]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // B's whole packet is sent, but there is no budget left for it: it is not read yet.
    let writer = tokio::spawn(async move {
        b.write_all(&second).await.unwrap();
        b
    });
    assert!(next_publish(&mut sub, Duration::from_millis(700))
        .await
        .is_none());
    // A completes: its reservation is given back, B's packet goes through after it.
    a.write_all(&first[first.len() / 2..]).await.unwrap();
    let got_a = next_publish(&mut sub, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(&*got_a.topic, "big/a");
    let got_b = next_publish(&mut sub, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!((&*got_b.topic, got_b.payload.len()), ("big/b", 600 * 1024));
    drop(writer.await.unwrap());
    server.shutdown().await;
}

/// A packet announcing more than max_packet_size is refused from its fixed header: the
/// connection is closed without the body being read.
#[tokio::test]
async fn oversize_announcement_closes_the_connection_at_once() {
    let (server, addr) = start(makelaar_core::Limits::default()).await;
    let mut c = client(addr, "big").await;
    // PUBLISH with a remaining length of 100 MB, and no body.
    c.write_all(&[0x30, 0x80, 0xDA, 0xC4, 0x09]).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed: {read:?}");
    server.shutdown().await;
}
