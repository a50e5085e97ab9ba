//! Feeds arbitrary bytes to a Decoder (fresh, and with each protocol version set) and checks
//! that whatever decodes re-encodes to bytes that decode to the same packet, of exactly
//! `encoded_len` bytes.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use makelaar_proto::{Decoder, Packet, ProtocolVersion};

const VERSIONS: [Option<ProtocolVersion>; 4] = [
    None,
    Some(ProtocolVersion::V31),
    Some(ProtocolVersion::V311),
    Some(ProtocolVersion::V5),
];

fuzz_target!(|data: &[u8]| {
    for version in VERSIONS {
        let mut decoder = Decoder::new(64 * 1024);
        if let Some(v) = version {
            decoder.set_version(v);
        }
        let mut buf = BytesMut::from(data);
        while let Ok(Some(packet)) = decoder.decode(&mut buf) {
            check_roundtrip(&packet, decoder.version());
        }
    }
});

fn check_roundtrip(packet: &Packet, version: Option<ProtocolVersion>) {
    // A CONNECT is decoded with its own protocol level; anything else with the decoder's.
    let version = match packet {
        Packet::Connect(c) => c.protocol,
        _ => version.unwrap_or(ProtocolVersion::V311),
    };
    let mut out = BytesMut::new();
    if let Err(e) = packet.encode(version, &mut out) {
        panic!("decoded {packet:?} but encoding it failed: {e}");
    }
    assert_eq!(
        out.len(),
        packet.encoded_len(version),
        "encoded_len of {packet:?}"
    );
    let mut again = Decoder::new(64 * 1024);
    again.set_version(version);
    match again.decode(&mut out) {
        Ok(Some(p)) => assert_eq!(&p, packet, "re-decoded packet differs"),
        other => panic!("re-encoded {packet:?} did not decode: {other:?}"),
    }
    assert!(out.is_empty(), "re-encoded packet left bytes behind");
}
