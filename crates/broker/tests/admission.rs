//! Who gets in, over real sockets against an in-process broker: passwords, the per-listener
//! `max_connections`, `max_connection_rate`, `max_publish_rate`, and a reload.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use makelaar_auth::password::{hash_password, HashParams, PasswordFile};
use makelaar_broker::config::{Config, ListenerAuth, ListenerConfig, ListenerKind};
use makelaar_broker::Server;
use makelaar_proto::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("makelaar-admission-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn password_file(dir: &std::path::Path, users: &[(&str, &str)]) -> PathBuf {
    let mut f = PasswordFile::new();
    for (user, pw) in users {
        let hash = hash_password(pw.as_bytes(), HashParams::Sha512Pbkdf2 { iterations: 101 });
        f.set(user, hash.unwrap()).unwrap();
    }
    let path = dir.join("passwd");
    f.save(&path).unwrap();
    path
}

async fn start(listener: ListenerConfig, limits: makelaar_core::Limits) -> (Server, SocketAddr) {
    let config = Config {
        listeners: vec![listener],
        limits,
        sys_interval: Duration::ZERO,
        in_memory: true,
        ..Config::default()
    };
    let server = Server::start(config).await.unwrap();
    let addr = server.local_addrs()[0].1;
    (server, addr)
}

fn plain() -> ListenerConfig {
    ListenerConfig::new(
        "mqtt://127.0.0.1:0",
        ListenerKind::Mqtt,
        "127.0.0.1:0".parse().unwrap(),
    )
}

fn encode(p: Packet, v: ProtocolVersion) -> Vec<u8> {
    let mut b = BytesMut::new();
    p.encode(v, &mut b).unwrap();
    b.to_vec()
}

/// Connects (from `127.0.0.1`) and returns the CONNACK's reason and the stream.
async fn connect(
    addr: SocketAddr,
    v: ProtocolVersion,
    user: Option<(&str, &str)>,
) -> (Option<ReasonCode>, TcpStream) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let c = Connect {
        bridge: false,
        protocol: v,
        clean_start: true,
        keep_alive: 0,
        client_id: String::new(),
        will: None,
        username: user.map(|u| u.0.to_string()),
        password: user.map(|u| Bytes::from(u.1.to_string())),
        properties: Properties::default(),
    };
    s.write_all(&encode(Packet::Connect(Box::new(c)), v))
        .await
        .unwrap();
    let reason = match next(&mut s, v).await {
        Some(Packet::ConnAck(a)) => Some(a.reason),
        _ => None,
    };
    (reason, s)
}

async fn next(s: &mut TcpStream, v: ProtocolVersion) -> Option<Packet> {
    let mut dec = Decoder::new(1 << 20);
    dec.set_version(v);
    let mut buf = BytesMut::new();
    loop {
        if let Ok(Some(p)) = dec.decode(&mut buf) {
            return Some(p);
        }
        match tokio::time::timeout(Duration::from_secs(5), s.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

#[tokio::test]
async fn passwords_are_checked_per_listener_and_reloaded() {
    let dir = temp_dir();
    let path = password_file(&dir, &[("alice", "s3cret")]);
    let mut l = plain();
    l.auth = ListenerAuth {
        allow_anonymous: false,
        password_file: Some(path.clone()),
        use_identity_as_username: false,
    };
    let (server, addr) = start(l, Default::default()).await;
    let v5 = ProtocolVersion::V5;
    assert_eq!(
        connect(addr, v5, Some(("alice", "s3cret"))).await.0,
        Some(ReasonCode::SUCCESS)
    );
    assert_eq!(
        connect(addr, v5, Some(("alice", "nope"))).await.0,
        Some(ReasonCode::BAD_USER_NAME_OR_PASSWORD)
    );
    assert_eq!(
        connect(addr, ProtocolVersion::V311, None).await.0,
        Some(ReasonCode::NOT_AUTHORIZED)
    );
    // A new file, then a reload: alice's new password works, the old one no longer does.
    let (_, mut kept) = connect(addr, v5, Some(("alice", "s3cret"))).await;
    password_file(&dir, &[("alice", "changed")]);
    let report = server.reload().await;
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!(
        connect(addr, v5, Some(("alice", "changed"))).await.0,
        Some(ReasonCode::SUCCESS)
    );
    // The connection from before the reload is still served.
    kept.write_all(&encode(Packet::PingReq, v5)).await.unwrap();
    assert_eq!(next(&mut kept, v5).await, Some(Packet::PingResp));
    // A broken file: the reload says why and keeps the file in use.
    std::fs::write(&path, "alice\n").unwrap();
    let report = server.reload().await;
    assert!(report.failed[0].contains("line 1"), "{report:?}");
    assert_eq!(
        connect(addr, v5, Some(("alice", "changed"))).await.0,
        Some(ReasonCode::SUCCESS)
    );
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_listener_refuses_past_its_max_connections() {
    let mut l = plain();
    l.max_connections = 2;
    let (server, addr) = start(l, Default::default()).await;
    let v5 = ProtocolVersion::V5;
    let (r1, first) = connect(addr, v5, None).await;
    let (r2, _second) = connect(addr, v5, None).await;
    let (r3, _) = connect(addr, v5, None).await;
    assert_eq!(r1, Some(ReasonCode::SUCCESS));
    assert_eq!(r2, Some(ReasonCode::SUCCESS));
    assert_eq!(r3, Some(ReasonCode::QUOTA_EXCEEDED));
    let (r4, _) = connect(addr, ProtocolVersion::V311, None).await;
    assert_eq!(r4, Some(ReasonCode::SERVER_UNAVAILABLE)); // 3.1.1: return code 3
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(connect(addr, v5, None).await.0, Some(ReasonCode::SUCCESS));
    server.shutdown().await;
}

#[tokio::test]
async fn connection_rate_and_publish_rate() {
    let limits = makelaar_core::Limits {
        max_connection_rate: 3,
        max_publish_rate: 10,
        ..Default::default()
    };
    let (server, addr) = start(plain(), limits).await;
    let v5 = ProtocolVersion::V5;
    let mut reasons = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..5 {
        let (r, s) = connect(addr, v5, None).await;
        reasons.push(r);
        streams.push(s);
    }
    let refused = reasons
        .iter()
        .filter(|r| **r == Some(ReasonCode::CONNECTION_RATE_EXCEEDED))
        .count();
    assert_eq!(refused, 2, "{reasons:?}");
    // The first client publishes far faster than 10 a second: DISCONNECT 0x96.
    let s = &mut streams[0];
    let publish = encode(
        Packet::Publish(Publish {
            topic: "t".into(),
            ..Publish::default()
        }),
        v5,
    );
    for _ in 0..30 {
        if s.write_all(&publish).await.is_err() {
            break;
        }
    }
    match next(s, v5).await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::MESSAGE_RATE_TOO_HIGH),
        other => panic!("expected DISCONNECT 0x96, got {other:?}"),
    }
    server.shutdown().await;
}

/// Reads `n` packets with one decoder (several may come in one read).
async fn packets(s: &mut TcpStream, v: ProtocolVersion, n: usize) -> Vec<Packet> {
    let mut dec = Decoder::new(1 << 20);
    dec.set_version(v);
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    while got.len() < n {
        if let Ok(Some(p)) = dec.decode(&mut buf) {
            got.push(p);
            continue;
        }
        match tokio::time::timeout(Duration::from_secs(5), s.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => break,
        }
    }
    got
}

#[tokio::test]
async fn pings_behind_the_connect_are_answered_after_the_connack() {
    // [MQTT-3.2.0-1] the CONNACK is the first packet the server sends: PINGREQs that arrive
    // with the CONNECT, before the router has answered it, are answered right after it.
    let (server, addr) = start(plain(), Default::default()).await;
    for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let c = Connect {
            bridge: false,
            protocol: v,
            clean_start: true,
            keep_alive: 30,
            client_id: "pinger".into(),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        };
        let mut bytes = encode(Packet::Connect(Box::new(c)), v);
        bytes.extend(encode(Packet::PingReq, v));
        bytes.extend(encode(Packet::PingReq, v));
        s.write_all(&bytes).await.unwrap();
        let got = packets(&mut s, v, 3).await;
        assert!(
            matches!(
                &got[..],
                [Packet::ConnAck(a), Packet::PingResp, Packet::PingResp]
                    if a.reason == ReasonCode::SUCCESS
            ),
            "{v:?}: {got:?}"
        );
        // After the CONNACK, a PINGREQ is answered at once.
        s.write_all(&encode(Packet::PingReq, v)).await.unwrap();
        assert_eq!(packets(&mut s, v, 1).await, vec![Packet::PingResp], "{v:?}");
    }
    server.shutdown().await;
}
