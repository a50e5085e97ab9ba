#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::*;
use proptest::prelude::*;

/// A client frame: masked with `mask`.
fn frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    let len = payload.len();
    if len < 126 {
        f.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        f.push(0x80 | 126);
        f.extend((len as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend((len as u64).to_be_bytes());
    }
    f.extend(mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

fn binary(payload: &[u8]) -> Vec<u8> {
    frame(true, OP_BINARY, payload, [0x37, 0xfa, 0x21, 0x3d])
}

/// Decodes `bytes` delivered in chunks of `chunk` bytes; the data, or the violation.
fn decode_in_chunks(r: &mut Reader, bytes: &[u8], chunk: usize) -> Result<Vec<u8>, Violation> {
    let mut out = Vec::new();
    for c in bytes.chunks(chunk.max(1)) {
        let mut buf = c.to_vec();
        let n = r.decode(&mut buf)?;
        out.extend(&buf[..n]);
    }
    Ok(out)
}

#[test]
fn one_frame_in_any_chunking() {
    let payload: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
    let bytes = binary(&payload);
    for chunk in 1..=bytes.len() {
        let mut r = Reader::new(1 << 20);
        assert_eq!(
            decode_in_chunks(&mut r, &bytes, chunk).unwrap(),
            payload,
            "chunk {chunk}"
        );
    }
}

#[test]
fn several_frames_in_one_read_and_a_fragmented_message() {
    let mask = [1, 2, 3, 4];
    let bytes = [
        binary(b"first"),
        frame(false, OP_BINARY, b"sec", mask),
        // A ping between the fragments of a message is allowed.
        frame(true, OP_PING, b"are you there", mask),
        frame(false, OP_CONTINUATION, b"o", mask),
        frame(true, OP_CONTINUATION, b"nd", mask),
        frame(true, OP_PONG, b"", mask),
        binary(b""),
    ]
    .concat();
    let mut r = Reader::new(100);
    assert_eq!(
        decode_in_chunks(&mut r, &bytes, bytes.len()).unwrap(),
        b"firstsecond"
    );
    let (ping, len) = r.take_ping().unwrap();
    assert_eq!(&ping[..len as usize], b"are you there");
    assert_eq!(r.take_ping(), None);
    assert_eq!(r.close_received(), None);
}

#[test]
fn close_frames_end_the_stream() {
    let bytes = [
        binary(b"x"),
        frame(true, OP_CLOSE, &1001u16.to_be_bytes(), [9, 9, 9, 9]),
        binary(b"ignored"),
    ]
    .concat();
    let mut r = Reader::new(100);
    assert_eq!(decode_in_chunks(&mut r, &bytes, 3).unwrap(), b"x");
    assert_eq!(r.close_received(), Some(Some(1001)));
    let mut r = Reader::new(100);
    decode_in_chunks(&mut r, &frame(true, OP_CLOSE, b"", [0; 4]), 100).unwrap();
    assert_eq!(r.close_received(), Some(None));
    let mut r = Reader::new(100);
    let err = decode_in_chunks(&mut r, &frame(true, OP_CLOSE, b"x", [0; 4]), 100);
    assert_eq!(err.unwrap_err().code, CLOSE_PROTOCOL_ERROR);
}

#[test]
fn violations_and_their_close_codes() {
    let m = [5, 6, 7, 8];
    let unmasked = {
        let mut f = binary(b"abc");
        f[1] &= 0x7F;
        f
    };
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (frame(true, OP_TEXT, b"{}", m), CLOSE_UNSUPPORTED_DATA),
        (unmasked, CLOSE_PROTOCOL_ERROR),
        (frame(true, 0x3, b"", m), CLOSE_PROTOCOL_ERROR),
        (frame(true, 0xB, b"", m), CLOSE_PROTOCOL_ERROR),
        (frame(true, OP_BINARY | 0x40, b"", m), CLOSE_PROTOCOL_ERROR),
        (frame(true, OP_CONTINUATION, b"x", m), CLOSE_PROTOCOL_ERROR),
        (frame(false, OP_PING, b"", m), CLOSE_PROTOCOL_ERROR),
        (frame(true, OP_PING, &[0; 126], m), CLOSE_PROTOCOL_ERROR),
        (
            [
                frame(false, OP_BINARY, b"a", m),
                frame(true, OP_BINARY, b"b", m),
            ]
            .concat(),
            CLOSE_PROTOCOL_ERROR,
        ),
        (binary(&[0; 101]), CLOSE_TOO_BIG),
        (
            [
                frame(false, OP_BINARY, &[0; 60], m),
                frame(true, OP_CONTINUATION, &[0; 41], m),
            ]
            .concat(),
            CLOSE_TOO_BIG,
        ),
    ];
    for (bytes, code) in cases {
        let mut r = Reader::new(100);
        let got = decode_in_chunks(&mut r, &bytes, bytes.len());
        assert_eq!(got.map_err(|v| v.code), Err(code), "{bytes:02x?}");
    }
    // The limit is on messages: 100 bytes exactly pass, and so do long 16- and 64-bit forms.
    let mut r = Reader::new(100_000);
    assert_eq!(
        decode_in_chunks(&mut r, &binary(&[7; 100]), 7).unwrap(),
        vec![7; 100]
    );
    assert_eq!(
        decode_in_chunks(&mut r, &binary(&[8; 70_000]), 4096)
            .unwrap()
            .len(),
        70_000
    );
}

#[test]
fn server_frames() {
    assert_eq!(data_header(5), ([0x82, 5, 0, 0, 0, 0, 0, 0, 0, 0], 2));
    assert_eq!(data_header(126), ([0x82, 126, 0, 126, 0, 0, 0, 0, 0, 0], 4));
    assert_eq!(data_header(70_000).1, 10);
    assert_eq!(&data_header(70_000).0[2..10], &70_000u64.to_be_bytes());
    let (f, n) = control_frame(&Control::Close(1000));
    assert_eq!(&f[..n], &[0x88, 2, 0x03, 0xE8]);
    let mut ping = [0u8; MAX_CONTROL];
    ping[..2].copy_from_slice(b"hi");
    let (f, n) = control_frame(&Control::Pong(ping, 2));
    assert_eq!(&f[..n], &[0x8A, 2, b'h', b'i']);
}

fn frames() -> impl Strategy<Value = Vec<(Vec<u8>, bool)>> {
    // Messages, each a list of fragments; (payload, is a ping between them).
    proptest::collection::vec(
        (
            proptest::collection::vec(any::<u8>(), 0..400),
            any::<bool>(),
        ),
        0..12,
    )
}

proptest! {
    #[test]
    fn random_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        chunk in 1usize..64,
        max in 0u64..1000,
    ) {
        let mut r = Reader::new(max);
        let _ = decode_in_chunks(&mut r, &bytes, chunk);
    }

    #[test]
    fn fragmented_messages_in_any_chunking_give_back_the_data(
        parts in frames(),
        mask in any::<[u8; 4]>(),
        chunk in 1usize..200,
    ) {
        let mut bytes = Vec::new();
        let mut data: Vec<u8> = Vec::new();
        let n = parts.len();
        for (i, (payload, ping)) in parts.iter().enumerate() {
            let opcode = if i == 0 { OP_BINARY } else { OP_CONTINUATION };
            bytes.extend(frame(i + 1 == n, opcode, payload, mask));
            if *ping {
                bytes.extend(frame(true, OP_PING, b"p", mask));
            }
            data.extend(payload);
        }
        let mut r = Reader::new(u64::MAX);
        prop_assert_eq!(decode_in_chunks(&mut r, &bytes, chunk).unwrap(), data);
    }
}
