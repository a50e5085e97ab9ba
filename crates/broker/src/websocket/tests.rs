//! The adapter over an in-memory pipe: the handshake, data both ways, pings, closing.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::*;
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

const REQUEST: &str =
    "GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
     Sec-WebSocket-Protocol: mqtt\r\nX-Forwarded-For: 192.0.2.1\r\n\r\n";

fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0xA1, 0xB2, 0xC3, 0xD4];
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    f.extend(mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads one server frame: (opcode, payload).
async fn server_frame(c: &mut DuplexStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    c.read_exact(&mut h).await.unwrap();
    assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
    let len = match h[1] & 0x7F {
        126 => {
            let mut l = [0u8; 2];
            c.read_exact(&mut l).await.unwrap();
            u16::from_be_bytes(l) as usize
        }
        127 => {
            let mut l = [0u8; 8];
            c.read_exact(&mut l).await.unwrap();
            u64::from_be_bytes(l) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    c.read_exact(&mut payload).await.unwrap();
    (h[0] & 0x0F, payload)
}

/// A server WebSocket and the client's end of the pipe, after the handshake.
async fn pair(early: &[u8]) -> (WebSocket<DuplexStream>, DuplexStream) {
    let (mut client, server) = duplex(1 << 20);
    let mut req = REQUEST.as_bytes().to_vec();
    req.extend(early);
    client.write_all(&req).await.unwrap();
    let (ws, forwarded) = accept(server, Some("/mqtt"), 1000).await.unwrap();
    assert_eq!(forwarded, "192.0.2.1");
    let mut response = vec![0u8; 1024];
    let n = client.read(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response[..n]);
    assert!(text.starts_with("HTTP/1.1 101 "), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "{text}");
    (ws, client)
}

#[tokio::test]
async fn data_both_ways_and_early_frames() {
    let (mut ws, mut client) = pair(&masked(2, b"early")).await;
    client.write_all(&masked(2, b" and late")).await.unwrap();
    let mut got = vec![0u8; 14];
    ws.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"early and late");
    // A PUBACK and a PINGRESP in one write, then a PUBLISH in two writes.
    let publish = [&[0x30, 0xAC, 0x02][..], &[7u8; 300]].concat();
    ws.write_all(&[0x40, 0x02, 0x00, 0x01, 0xD0, 0x00])
        .await
        .unwrap();
    ws.write_all(&publish[..100]).await.unwrap();
    ws.write_all(&publish[100..]).await.unwrap();
    ws.flush().await.unwrap();
    assert_eq!(
        server_frame(&mut client).await,
        (2, vec![0x40, 0x02, 0x00, 0x01])
    );
    assert_eq!(server_frame(&mut client).await, (2, vec![0xD0, 0x00]));
    assert_eq!(server_frame(&mut client).await, (2, publish));
}

/// [MQTT-6.0.0-2] Each packet in a frame of its own even when the underlying stream takes
/// a few bytes at a time (short writes cut frames and packets anywhere).
#[tokio::test]
async fn short_writes_keep_one_packet_per_frame() {
    let (mut client, server) = duplex(7);
    let mut ws = WebSocket::new(server, 1000, Vec::new());
    // PUBLISHes of 128 to 373 bytes: the Remaining Length takes two bytes.
    let packets: Vec<Vec<u8>> = (0..50u8)
        .map(|i| {
            let len = 128 + usize::from(i) * 5;
            let head = [0x30, (len % 128) as u8 | 0x80, (len / 128) as u8];
            [&head[..], &vec![i; len]].concat()
        })
        .collect();
    let stream = packets.concat();
    let writer = tokio::spawn(async move {
        for chunk in stream.chunks(333) {
            ws.write_all(chunk).await.unwrap();
        }
        ws.flush().await.unwrap();
        ws
    });
    for p in &packets {
        assert_eq!(&server_frame(&mut client).await, &(2, p.clone()));
    }
    writer.await.unwrap();
}

/// A ping that arrives while a packet is half written is answered after that packet, not
/// inside its frame.
#[tokio::test]
async fn a_pong_waits_for_the_packet_being_written() {
    let (mut ws, mut client) = pair(&[]).await;
    let publish = [&[0x30, 0x0A][..], &[9u8; 10]].concat();
    ws.write_all(&publish[..5]).await.unwrap();
    client.write_all(&masked(9, b"p")).await.unwrap();
    let mut buf = [0u8; 8];
    let read = tokio::time::timeout(Duration::from_millis(100), ws.read(&mut buf)).await;
    assert!(read.is_err(), "a ping alone carries no data");
    ws.write_all(&publish[5..]).await.unwrap();
    ws.flush().await.unwrap();
    assert_eq!(server_frame(&mut client).await, (2, publish));
    assert_eq!(server_frame(&mut client).await, (0xA, b"p".to_vec()));
}

#[tokio::test]
async fn pings_are_answered_and_close_is_returned() {
    let (mut ws, mut client) = pair(&[]).await;
    let bytes = [
        masked(9, b"p1"),
        masked(2, b"x"),
        masked(8, &1000u16.to_be_bytes()),
    ]
    .concat();
    client.write_all(&bytes).await.unwrap();
    let mut got = Vec::new();
    ws.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"x");
    assert_eq!(server_frame(&mut client).await, (0xA, b"p1".to_vec()));
    assert_eq!(
        server_frame(&mut client).await,
        (8, 1000u16.to_be_bytes().to_vec())
    );
    // Nothing is written after the close frame.
    assert!(ws.write_all(&[0xD0, 0x00]).await.is_err());
    ws.shutdown().await.unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "{rest:?}");
}

#[tokio::test]
async fn a_text_frame_closes_with_1003() {
    let (mut ws, mut client) = pair(&[]).await;
    client.write_all(&masked(1, b"{\"hi\":1}")).await.unwrap();
    let mut buf = [0u8; 16];
    let err = ws.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    ws.shutdown().await.unwrap();
    assert_eq!(
        server_frame(&mut client).await,
        (8, 1003u16.to_be_bytes().to_vec())
    );
}

#[tokio::test]
async fn a_server_close_sends_1000_after_the_data() {
    let (mut ws, mut client) = pair(&[]).await;
    let last = [0xE0, 0x02, 0x8B, 0x00]; // DISCONNECT 0x8B
    ws.write_all(&last).await.unwrap();
    ws.shutdown().await.unwrap();
    assert_eq!(server_frame(&mut client).await, (2, last.to_vec()));
    assert_eq!(
        server_frame(&mut client).await,
        (8, 1000u16.to_be_bytes().to_vec())
    );
}

#[tokio::test]
async fn refused_handshakes_get_an_http_answer() {
    let (mut client, server) = duplex(1 << 16);
    client
        .write_all(REQUEST.replace("/mqtt", "/other").as_bytes())
        .await
        .unwrap();
    let err = accept(server, Some("/mqtt"), 1000).await.unwrap_err();
    assert!(err.contains("404"), "{err}");
    let mut answer = String::new();
    client.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
    assert!(answer.contains("served at /mqtt"), "{answer}");
}

#[tokio::test]
async fn a_request_in_single_bytes_and_one_that_is_not_http() {
    let (mut client, server) = duplex(1 << 16);
    let server = tokio::spawn(accept(server, Some("/mqtt"), 1000));
    for b in REQUEST.as_bytes() {
        client.write_all(&[*b]).await.unwrap();
    }
    assert!(server.await.unwrap().is_ok());
    let (mut client, server) = duplex(1 << 16);
    client
        .write_all(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c")
        .await
        .unwrap();
    let err = accept(server, Some("/mqtt"), 1000).await.unwrap_err();
    assert!(err.contains("400"), "{err}");
    let mut answer = String::new();
    client.read_to_string(&mut answer).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
}

/// Counts the writes that reach the underlying stream.
struct CountWrites {
    inner: DuplexStream,
    writes: usize,
}

impl AsyncRead for CountWrites {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountWrites {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.writes += 1;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The connection task's one write per wake-up stays one write of the socket: the frames of
/// all its packets are laid out together.
#[tokio::test]
async fn the_packets_of_one_write_go_out_in_one_write() {
    let (mut client, server) = duplex(1 << 16);
    let counting = CountWrites {
        inner: server,
        writes: 0,
    };
    let mut ws = WebSocket::new(counting, 1000, Vec::new());
    let packets = [
        vec![0x90, 0x03, 0x00, 0x01, 0x02],
        [&[0x30, 0x0C, 0x00, 0x01, b't'][..], &[5u8; 9]].concat(),
        vec![0x40, 0x02, 0x00, 0x07],
    ];
    let batch = packets.concat();
    assert_eq!(ws.write(&batch).await.unwrap(), batch.len());
    ws.flush().await.unwrap();
    assert_eq!(ws.get_ref().writes, 1);
    for p in &packets {
        assert_eq!(&server_frame(&mut client).await, &(2, p.clone()));
    }
}
