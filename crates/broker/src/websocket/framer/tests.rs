#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::*;
use proptest::prelude::*;

/// An MQTT-shaped packet: the type byte, the Remaining Length, `len` body bytes.
fn packet(kind: u8, len: usize, fill: u8) -> Vec<u8> {
    let mut p = vec![kind];
    let mut n = len;
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        p.push(b);
        if n == 0 {
            break;
        }
    }
    p.extend(std::iter::repeat_n(fill, len));
    p
}

/// Splits the server's frames: (FIN, opcode, payload) of each.
fn frames(mut bytes: &[u8]) -> Vec<(bool, u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (b0, b1) = (bytes[0], bytes[1]);
        assert_eq!(b1 & 0x80, 0, "server frames are not masked");
        let (len, head) = match b1 {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        assert!(bytes.len() >= head + len, "frame cut short");
        out.push((b0 & 0x80 != 0, b0 & 0x0F, bytes[head..head + len].to_vec()));
        bytes = &bytes[head + len..];
    }
    out
}

/// Frames `stream` handed over in writes of the given sizes (each write may be taken in
/// several calls of at most `limit` bytes, as a short write would).
fn frame_in_writes(stream: &[u8], writes: &[usize], limit: usize) -> (Vec<u8>, Framer) {
    let mut framer = Framer::default();
    let mut out = Vec::new();
    let mut at = 0;
    let mut sizes = writes.iter().cycle();
    while at < stream.len() {
        let end = (at + sizes.next().unwrap()).min(stream.len());
        while at < end {
            let n = framer.frame(&stream[at..end], &mut out, limit);
            assert!(n > 0, "no progress");
            at += n;
        }
    }
    (out, framer)
}

#[test]
fn each_packet_gets_a_frame_of_its_own() {
    // SUBACK, then the retained PUBLISH, then a PINGRESP: one write, three frames.
    let packets = [
        vec![0x90, 0x03, 0x00, 0x01, 0x02],
        packet(0x31, 10, b'r'),
        vec![0xD0, 0x00],
    ];
    let stream = packets.concat();
    let mut framer = Framer::default();
    let mut out = Vec::new();
    assert_eq!(framer.frame(&stream, &mut out, usize::MAX), stream.len());
    assert!(framer.at_boundary());
    let got = frames(&out);
    assert_eq!(got.len(), 3);
    for ((fin, opcode, payload), p) in got.into_iter().zip(&packets) {
        assert!(fin);
        assert_eq!(opcode, 0x2);
        assert_eq!(&payload, p);
    }
}

#[test]
fn a_packet_cut_in_its_fixed_header_is_still_one_frame() {
    let p = packet(0x30, 20000, 7); // Remaining Length in three bytes
    let mut framer = Framer::default();
    let mut out = Vec::new();
    assert_eq!(framer.frame(&p[..2], &mut out, usize::MAX), 2);
    assert!(
        out.is_empty(),
        "nothing goes out before the length is known"
    );
    assert!(!framer.at_boundary());
    assert_eq!(framer.frame(&p[2..100], &mut out, usize::MAX), 98);
    assert!(!framer.at_boundary());
    assert_eq!(framer.frame(&p[100..], &mut out, 1000), 1000);
    let rest = p.len() - 1100;
    assert_eq!(framer.frame(&p[1100..], &mut out, usize::MAX), rest);
    assert!(framer.at_boundary());
    assert_eq!(frames(&out), vec![(true, 2, p)]);
}

fn packets() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let size = prop_oneof![8 => 0usize..200, 1 => 16_380usize..16_400, 1 => 100usize..70_000];
    prop::collection::vec((0x10u8..=0xF0, size, any::<u8>()), 1..12)
        .prop_map(|v| v.into_iter().map(|(k, n, f)| packet(k, n, f)).collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// [MQTT-6.0.0-2] Whatever sizes the writes and short writes have, every frame holds
    /// exactly one whole packet, and the packets come out as they went in.
    #[test]
    fn frames_hold_one_whole_packet_each(
        packets in packets(),
        writes in prop::collection::vec(1usize..5000, 1..8),
        limit in prop_oneof![Just(usize::MAX), 1usize..3000],
    ) {
        let stream = packets.concat();
        let (out, framer) = frame_in_writes(&stream, &writes, limit);
        prop_assert!(framer.at_boundary());
        let got = frames(&out);
        prop_assert_eq!(got.len(), packets.len());
        for ((fin, opcode, payload), p) in got.into_iter().zip(&packets) {
            prop_assert!(fin);
            prop_assert_eq!(opcode, 0x2);
            prop_assert_eq!(&payload, p);
        }
    }
}
