//! Hand-written byte vectors for the rules the decoder enforces (each citing the normative
//! statement) and for the encoder's wire forms.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use makelaar_proto::{
    Auth, ConnAck, Connect, DecodeError, Decoder, Disconnect, EncodeError, Packet, Properties,
    ProtocolVersion, PubAck, Publish, QoS, ReasonCode, SubAck, Subscribe, SubscriptionOptions,
    UnsubAck, Unsubscribe,
};

use ProtocolVersion::{V31, V311, V5};

fn dec(v: Option<ProtocolVersion>, bytes: &[u8]) -> Result<Option<Packet>, DecodeError> {
    let mut d = Decoder::new(1 << 20);
    if let Some(v) = v {
        d.set_version(v);
    }
    let mut buf = BytesMut::from(bytes);
    let r = d.decode(&mut buf);
    if let Ok(Some(_)) = r {
        assert!(buf.is_empty(), "decoded packet left {} bytes", buf.len());
    }
    r
}

fn ok(v: ProtocolVersion, bytes: &[u8]) -> Packet {
    dec(Some(v), bytes).unwrap().unwrap()
}

fn malformed(v: Option<ProtocolVersion>, bytes: &[u8]) {
    let r = dec(v, bytes);
    assert!(
        matches!(r, Err(DecodeError::Malformed(_))),
        "{bytes:02X?}: {r:?}"
    );
}

fn protocol(v: Option<ProtocolVersion>, bytes: &[u8]) {
    let r = dec(v, bytes);
    assert!(
        matches!(r, Err(DecodeError::Protocol(_))),
        "{bytes:02X?}: {r:?}"
    );
}

fn topic_invalid(v: Option<ProtocolVersion>, bytes: &[u8]) {
    let r = dec(v, bytes);
    assert!(
        matches!(r, Err(DecodeError::TopicNameInvalid(_))),
        "{bytes:02X?}: {r:?}"
    );
}

/// A packet: first byte, remaining length (one or two bytes), body.
fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let n = body.len();
    assert!(n < 16_384);
    if n < 128 {
        out.push(n as u8);
    } else {
        out.push((n & 0x7F) as u8 | 0x80);
        out.push((n >> 7) as u8);
    }
    out.extend_from_slice(body);
    out
}

/// A 5.0 CONNECT with the given connect flags, properties block and payload.
fn connect_v5(flags: u8, props: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, flags, 0, 60];
    body.push(props.len() as u8);
    body.extend_from_slice(props);
    body.extend_from_slice(payload);
    frame(0x10, &body)
}

/// A 3.1.1 CONNECT with the given flags and payload.
fn connect_v311(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 60];
    body.extend_from_slice(payload);
    frame(0x10, &body)
}

/// A 5.0 PUBLISH QoS 0 to topic "t" with the given properties block and payload.
fn publish_v5(props: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 1, b't', props.len() as u8];
    body.extend_from_slice(props);
    body.extend_from_slice(payload);
    frame(0x30, &body)
}

// ---- fixed header ----------------------------------------------------------------------------

#[test]
fn fixed_header_flags() {
    // [MQTT-2.1.3-1] SUBSCRIBE, UNSUBSCRIBE and PUBREL carry 0b0010, everything else 0.
    malformed(Some(V311), &[0x80, 0x06, 0, 1, 0, 1, b'a', 0]); // SUBSCRIBE with flags 0
    malformed(Some(V311), &[0xA0, 0x05, 0, 1, 0, 1, b'a']); // UNSUBSCRIBE with flags 0
    malformed(Some(V311), &[0x60, 0x02, 0, 1]); // PUBREL with flags 0
    malformed(Some(V311), &[0x42, 0x02, 0, 1]); // PUBACK with flags 2
    malformed(Some(V311), &[0xC1, 0x00]); // PINGREQ with flags 1
    malformed(Some(V311), &[0x11, 0x00]); // CONNECT with flags 1
    assert_eq!(
        ok(V311, &[0x62, 0x02, 0, 1]),
        Packet::PubRel(PubAck::new(1))
    );
}

#[test]
fn v31_retries_set_dup_on_pubrel_subscribe_unsubscribe() {
    // MQTT 3.1 section 2.1: DUP is set when a PUBREL, SUBSCRIBE or UNSUBSCRIBE is sent again
    // (0x6A, 0x8A, 0xAA); their QoS bits stay 1.
    let pubrel = [0x6A, 0x02, 0, 7];
    let subscribe = [0x8A, 0x06, 0, 1, 0, 1, b'a', 1];
    let unsubscribe = [0xAA, 0x05, 0, 1, 0, 1, b'a'];
    assert_eq!(ok(V31, &pubrel), Packet::PubRel(PubAck::new(7)));
    assert!(matches!(ok(V31, &subscribe), Packet::Subscribe(s) if s.filters[0].0 == "a"));
    assert!(matches!(ok(V31, &unsubscribe), Packet::Unsubscribe(u) if u.filters == ["a"]));
    // From 3.1.1 on the flags are fixed: [MQTT-2.2.2-1] (3.1.1), [MQTT-2.1.3-1] (5.0).
    for v in [V311, V5] {
        malformed(Some(v), &pubrel);
        malformed(Some(v), &subscribe);
        malformed(Some(v), &unsubscribe);
    }
    // 3.1 still refuses anything but DUP: retain set, QoS 0 or 2, DUP on other packets.
    malformed(Some(V31), &[0x6B, 0x02, 0, 7]);
    malformed(Some(V31), &[0x68, 0x02, 0, 7]);
    malformed(Some(V31), &[0x8C, 0x06, 0, 1, 0, 1, b'a', 1]);
    malformed(Some(V31), &[0x48, 0x02, 0, 7]); // PUBACK with DUP
    malformed(Some(V31), &[0xC8, 0x00]); // PINGREQ with DUP
}

#[test]
fn reserved_packet_types() {
    // Packet type 0 is reserved (section 2.1.2).
    malformed(Some(V311), &[0x00, 0x00]);
    malformed(Some(V5), &[0x00, 0x00]);
    // 15 is reserved before 5.0 (AUTH exists only in 5.0).
    malformed(Some(V311), &[0xF0, 0x00]);
    malformed(Some(V31), &[0xF0, 0x00]);
    assert_eq!(ok(V5, &[0xF0, 0x00]), Packet::Auth(Auth::default()));
}

#[test]
fn publish_qos_3_and_dup_on_qos_0() {
    // [MQTT-3.3.1-4] QoS 3 is malformed.
    malformed(Some(V311), &[0x36, 0x05, 0, 1, b't', 0, 1]);
    // [MQTT-3.3.1-2] DUP must be 0 on QoS 0.
    malformed(Some(V311), &[0x38, 0x03, 0, 1, b't']);
    // The first byte alone is enough to refuse it.
    malformed(Some(V311), &[0x36]);
}

#[test]
fn variable_byte_integer_limits() {
    // Section 1.5.5: at most four bytes.
    malformed(Some(V311), &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
    // [MQTT-1.5.5-1] the minimum number of bytes: 0x80 0x00 is a padded zero.
    malformed(Some(V311), &[0xC0, 0x80, 0x00]);
    // Four bytes with continuation still set on the last: refused as soon as it is seen.
    malformed(Some(V311), &[0x30, 0x80, 0x80, 0x80, 0x80]);
    // Incomplete length: more bytes needed.
    assert_eq!(dec(Some(V311), &[0x30, 0x80, 0x80]), Ok(None));
    // Largest four-byte value decodes as a length (then the size limit bites).
    let r = dec(Some(V311), &[0x30, 0xFF, 0xFF, 0xFF, 0x7F]);
    assert_eq!(
        r,
        Err(DecodeError::TooLarge {
            size: 268_435_455 + 5,
            max: 1 << 20
        })
    );
}

#[test]
fn remaining_length_must_match_fields() {
    // Trailing byte after PINGREQ.
    malformed(Some(V311), &[0xC0, 0x01, 0x00]);
    // 3.1.1 PUBACK with a third byte (reason codes are 5.0 only).
    malformed(Some(V311), &[0x40, 0x03, 0, 1, 0]);
    // PUBACK cut short inside the packet identifier.
    malformed(Some(V311), &[0x40, 0x01, 0]);
    // String length runs past the end of the packet.
    malformed(Some(V311), &[0x30, 0x03, 0, 5, b't']);
    // 3.x DISCONNECT has no body.
    malformed(Some(V311), &[0xE0, 0x01, 0x00]);
    // 5.0 property length running past the packet.
    malformed(Some(V5), &[0x40, 0x04, 0, 1, 0x10, 0x05]);
    // 5.0 CONNACK needs its property length.
    malformed(Some(V5), &[0x20, 0x02, 0, 0]);
    // CONNECT with a trailing byte after the client id.
    malformed(None, &connect_v311(0x02, &[0, 1, b'c', 0xFF]));
    // CONNECT whose remaining length stops inside the client id.
    let mut short = connect_v311(0x02, &[0, 1, b'c']);
    short[1] -= 1;
    short.pop();
    malformed(None, &short);
}

// ---- strings -------------------------------------------------------------------------------

#[test]
fn strings_must_be_valid_utf8_without_nul() {
    // [MQTT-1.5.4-1] ill-formed UTF-8 in a subscription filter.
    malformed(Some(V311), &[0x82, 0x06, 0, 1, 0, 1, 0xFF, 0]);
    // [MQTT-1.5.4-1] an encoded UTF-16 surrogate (U+D800) is not UTF-8.
    malformed(Some(V311), &[0x82, 0x08, 0, 1, 0, 3, 0xED, 0xA0, 0x80, 0]);
    // [MQTT-1.5.4-2] U+0000 in a client identifier.
    malformed(None, &connect_v311(0x02, &[0, 2, b'a', 0]));
    // [MQTT-1.5.4-2] U+0000 in a user property.
    malformed(Some(V5), &publish_v5(&[0x26, 0, 1, 0, 0, 1, b'v'], b""));
    // Overlong encoding of '/' is not UTF-8.
    malformed(Some(V311), &[0xA2, 0x06, 0, 1, 0, 2, 0xC0, 0xAF]);
}

// ---- CONNECT -------------------------------------------------------------------------------

#[test]
fn connect_protocol_names_and_levels() {
    // 3.1: MQIsdp level 3.
    let mut body = vec![
        0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 10, 0, 1, b'c',
    ];
    let p = dec(None, &frame(0x10, &body)).unwrap().unwrap();
    let Packet::Connect(c) = p else { panic!() };
    assert_eq!(c.protocol, V31);
    assert_eq!(c.client_id, "c");
    assert!(c.clean_start);
    // [MQTT-3.1.2-2] known name, unsupported level: answered with CONNACK 0x01 / 0x84.
    body[8] = 4;
    assert_eq!(
        dec(None, &frame(0x10, &body)),
        Err(DecodeError::UnsupportedProtocol)
    );
    let body = [0, 4, b'M', b'Q', b'T', b'T', 6, 0x02, 0, 10, 0, 1, b'c'];
    assert_eq!(
        dec(None, &frame(0x10, &body)),
        Err(DecodeError::UnsupportedProtocol)
    );
    let body = [0, 4, b'M', b'Q', b'T', b'T', 3, 0x02, 0, 10, 0, 1, b'c'];
    assert_eq!(
        dec(None, &frame(0x10, &body)),
        Err(DecodeError::UnsupportedProtocol)
    );
    assert_eq!(
        DecodeError::UnsupportedProtocol.reason_code(),
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
    );
    // [MQTT-3.1.2-1] an unknown protocol name.
    let body = [0, 4, b'M', b'Q', b'T', b'X', 4, 0x02, 0, 10, 0, 1, b'c'];
    protocol(None, &frame(0x10, &body));
}

/// Mosquitto's bridges set 0x80 in the protocol level (`try_private`): 0x83 for 3.1, 0x84
/// for 3.1.1. Accepted as that version with the bridge bit; 5.0 has no such level, and a
/// level without the bit is an ordinary client.
#[test]
fn connect_bridge_bit() {
    let mut body = vec![
        0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 0x83, 0x02, 0, 10, 0, 1, b'c',
    ];
    let Packet::Connect(c) = dec(None, &frame(0x10, &body)).unwrap().unwrap() else {
        panic!()
    };
    assert_eq!((c.protocol, c.bridge), (V31, true));
    body[8] = 3;
    let Packet::Connect(c) = dec(None, &frame(0x10, &body)).unwrap().unwrap() else {
        panic!()
    };
    assert_eq!((c.protocol, c.bridge), (V31, false));
    let mut body = connect_v311(0x02, &[0, 1, b'c']);
    body[8] = 0x84;
    let Packet::Connect(c) = dec(None, &body).unwrap().unwrap() else {
        panic!()
    };
    assert_eq!((c.protocol, c.bridge), (V311, true));
    // Encoded back with the bit.
    let mut out = BytesMut::new();
    Packet::Connect(c).encode(V311, &mut out).unwrap();
    assert_eq!(&out[..], &body[..]);
    // [MQTT-3.1.2-2] 0x85 and 0x83 under "MQTT" are levels MQTT does not have.
    for level in [0x85, 0x83, 0x80] {
        body[8] = level;
        assert_eq!(
            dec(None, &body),
            Err(DecodeError::UnsupportedProtocol),
            "{level:#x}"
        );
    }
    // A 5.0 CONNECT never carries the bit, even when asked to.
    let mut v5 = connect_v5(0x02, &[], &[0, 1, b'c']);
    let Packet::Connect(mut c) = dec(None, &v5).unwrap().unwrap() else {
        panic!()
    };
    c.bridge = true;
    let mut out = BytesMut::new();
    Packet::Connect(c).encode(V5, &mut out).unwrap();
    assert_eq!(&out[..], &v5[..]);
    v5[8] = 0x85;
    assert_eq!(dec(None, &v5), Err(DecodeError::UnsupportedProtocol));
}

#[test]
fn connect_sets_decoder_version() {
    let mut d = Decoder::new(1024);
    let mut buf = BytesMut::from(&connect_v5(0x02, &[], &[0, 0])[..]);
    assert!(matches!(d.decode(&mut buf), Ok(Some(Packet::Connect(_)))));
    assert_eq!(d.version(), Some(V5));
    // Now 5.0 rules apply: a PUBACK with a reason code.
    buf.extend_from_slice(&[0x40, 0x03, 0, 7, 0x10]);
    let Ok(Some(Packet::PubAck(a))) = d.decode(&mut buf) else {
        panic!()
    };
    assert_eq!(a.reason, ReasonCode::NO_MATCHING_SUBSCRIBERS);
}

#[test]
fn invalid_connect_still_reveals_the_version() {
    // A 5.0 CONNECT with a malformed property: the server answers CONNACK 0x81 in 5.0 form.
    let mut d = Decoder::new(1024);
    let mut buf = BytesMut::from(&connect_v5(0x02, &[0x23, 0, 1], &[0, 0])[..]);
    assert!(matches!(d.decode(&mut buf), Err(DecodeError::Malformed(_))));
    assert_eq!(d.version(), Some(V5));
    // An unsupported level leaves it unknown.
    let mut d = Decoder::new(1024);
    let body = [0, 4, b'M', b'Q', b'T', b'T', 6, 0x02, 0, 10, 0, 1, b'c'];
    let mut buf = BytesMut::from(&frame(0x10, &body)[..]);
    assert_eq!(d.decode(&mut buf), Err(DecodeError::UnsupportedProtocol));
    assert_eq!(d.version(), None);
}

#[test]
fn first_packet_must_be_connect() {
    // [MQTT-3.1.0-1] before CONNECT the version of anything else is unknown.
    protocol(None, &[0xC0, 0x00]);
    protocol(None, &[0x30, 0x03, 0, 1, b't']);
}

#[test]
fn connect_reserved_flag() {
    // [MQTT-3.1.2-3] bit 0 of the connect flags is reserved.
    malformed(None, &connect_v311(0x03, &[0, 1, b'c']));
    malformed(None, &connect_v5(0x03, &[], &[0, 1, b'c']));
}

#[test]
fn connect_will_flags() {
    // [MQTT-3.1.2-11] [MQTT-3.1.2-13] will QoS without the will flag.
    malformed(None, &connect_v311(0x02 | 0x08, &[0, 1, b'c']));
    // [MQTT-3.1.2-15] will retain without the will flag.
    malformed(None, &connect_v311(0x02 | 0x20, &[0, 1, b'c']));
    // [MQTT-3.1.2-14] will QoS 3.
    let will = [0, 1, b'c', 0, 1, b'w', 0, 1, b'x'];
    malformed(None, &connect_v311(0x02 | 0x04 | 0x18, &will));
    // A proper will with QoS 2 and retain.
    let p = dec(None, &connect_v311(0x02 | 0x04 | 0x10 | 0x20, &will))
        .unwrap()
        .unwrap();
    let Packet::Connect(c) = p else { panic!() };
    let w = c.will.unwrap();
    assert_eq!(
        (w.topic.as_str(), &w.payload[..], w.qos, w.retain),
        ("w", &b"x"[..], QoS::ExactlyOnce, true)
    );
    // The will topic is a topic name: no wildcards, not empty.
    let will = [0, 1, b'c', 0, 1, b'#', 0, 1, b'x'];
    topic_invalid(None, &connect_v311(0x06, &will));
    let will = [0, 1, b'c', 0, 0, 0, 1, b'x'];
    topic_invalid(None, &connect_v311(0x06, &will));
    // 5.0 will properties: will delay interval allowed, topic alias is not.
    let will = [0, 1, b'c', 5, 0x18, 0, 0, 0, 9, 0, 1, b'w', 0, 0];
    let Packet::Connect(c) = dec(None, &connect_v5(0x06, &[], &will)).unwrap().unwrap() else {
        panic!()
    };
    assert_eq!(c.will.unwrap().properties.will_delay_interval, Some(9));
    let will = [0, 1, b'c', 3, 0x23, 0, 1, 0, 1, b'w', 0, 0];
    malformed(None, &connect_v5(0x06, &[], &will));
    // Will payload flagged UTF-8 that is not.
    let will = [0, 1, b'c', 2, 0x01, 1, 0, 1, b'w', 0, 1, 0xFF];
    assert_eq!(
        dec(None, &connect_v5(0x06, &[], &will)),
        Err(DecodeError::PayloadFormatInvalid)
    );
}

#[test]
fn connect_password_without_user_name() {
    // [MQTT-3.1.2-22] 3.1.1: the password flag needs the user name flag.
    malformed(None, &connect_v311(0x42, &[0, 1, b'c', 0, 2, b'p', b'w']));
    // 5.0 allows a password alone (section 3.1.2.9).
    let p = dec(
        None,
        &connect_v5(0x42, &[], &[0, 1, b'c', 0, 2, b'p', b'w']),
    )
    .unwrap()
    .unwrap();
    let Packet::Connect(c) = p else { panic!() };
    assert_eq!(
        (c.username, c.password),
        (None, Some(Bytes::from_static(b"pw")))
    );
    // Both present in 3.1.1.
    let p = dec(
        None,
        &connect_v311(0xC2, &[0, 1, b'c', 0, 1, b'u', 0, 1, b'p']),
    )
    .unwrap()
    .unwrap();
    let Packet::Connect(c) = p else { panic!() };
    assert_eq!(c.username.as_deref(), Some("u"));
}

#[test]
fn connect_spec_example_v311() {
    // CONNECT "MQTT" 4, clean session, keep alive 10, client id "abc".
    let bytes = [
        0x10, 0x0F, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x0A, 0x00, 0x03, b'a',
        b'b', b'c',
    ];
    let expected = Packet::Connect(Box::new(Connect {
        bridge: false,
        protocol: V311,
        clean_start: true,
        keep_alive: 10,
        client_id: "abc".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }));
    assert_eq!(dec(None, &bytes), Ok(Some(expected.clone())));
    let mut buf = BytesMut::new();
    expected.encode(V311, &mut buf).unwrap();
    assert_eq!(&buf[..], &bytes[..]);
    // The same CONNECT written for 3.1 uses MQIsdp / 3.
    let mut buf = BytesMut::new();
    expected.encode(V31, &mut buf).unwrap();
    assert_eq!(
        &buf[..10],
        &[0x10, 0x11, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p']
    );
    assert_eq!(buf[10], 3);
}

// ---- CONNACK -------------------------------------------------------------------------------

#[test]
fn connack_v3_return_codes() {
    let Packet::ConnAck(c) = ok(V311, &[0x20, 0x02, 0x01, 0x00]) else {
        panic!()
    };
    assert!(c.session_present);
    assert_eq!(c.reason, ReasonCode::SUCCESS);
    let Packet::ConnAck(c) = ok(V311, &[0x20, 0x02, 0x00, 0x05]) else {
        panic!()
    };
    assert_eq!(c.reason, ReasonCode::NOT_AUTHORIZED);
    // Return codes 6..255 are reserved.
    malformed(Some(V311), &[0x20, 0x02, 0x00, 0x06]);
    // [MQTT-3.2.2-1] reserved acknowledge flags.
    malformed(Some(V311), &[0x20, 0x02, 0x02, 0x00]);
    // Encoding maps 5.0 reason codes to 3.x return codes.
    let mut buf = BytesMut::new();
    let banned = ConnAck {
        reason: ReasonCode::BANNED,
        ..ConnAck::default()
    };
    Packet::ConnAck(banned.clone())
        .encode(V311, &mut buf)
        .unwrap();
    assert_eq!(&buf[..], &[0x20, 0x02, 0x00, 0x05]);
    buf.clear();
    Packet::ConnAck(banned).encode(V5, &mut buf).unwrap();
    assert_eq!(&buf[..], &[0x20, 0x03, 0x00, 0x8A, 0x00]);
}

// ---- PUBLISH -------------------------------------------------------------------------------

#[test]
fn publish_topic_names() {
    // [MQTT-3.3.2-2] no wildcards in a topic name.
    topic_invalid(Some(V311), &[0x30, 0x05, 0, 3, b'a', b'/', b'+']);
    topic_invalid(Some(V311), &[0x30, 0x03, 0, 1, b'#']);
    // [MQTT-1.5.4-2] U+0000 in any string, a topic name included, is a malformed packet.
    malformed(Some(V311), &[0x30, 0x04, 0, 2, b'a', 0]);
    // [MQTT-4.7.3-1] not empty (3.1.1).
    topic_invalid(Some(V311), &[0x30, 0x02, 0, 0]);
    // 5.0: empty only when a topic alias stands for it; otherwise a Protocol Error (3.3.2.3.4).
    protocol(Some(V5), &[0x30, 0x03, 0, 0, 0]);
    let Packet::Publish(p) = ok(V5, &[0x30, 0x06, 0, 0, 3, 0x23, 0, 7]) else {
        panic!()
    };
    assert_eq!((&*p.topic, p.properties.topic_alias), ("", Some(7)));
    // Invalid UTF-8 is malformed [MQTT-1.5.4-1].
    malformed(Some(V311), &[0x30, 0x03, 0, 1, 0xFF]);
}

#[test]
fn publish_packet_identifier() {
    // [MQTT-2.2.1-3] QoS > 0 needs a non-zero packet identifier.
    protocol(Some(V311), &[0x32, 0x05, 0, 1, b't', 0, 0]);
    protocol(Some(V311), &[0x34, 0x05, 0, 1, b't', 0, 0]);
    let Packet::Publish(p) = ok(V311, &[0x3B, 0x07, 0, 1, b't', 0x12, 0x34, b'h', b'i']) else {
        panic!()
    };
    assert_eq!(
        p,
        Publish {
            dup: true,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: Arc::from("t"),
            packet_id: 0x1234,
            properties: Properties::default(),
            payload: Bytes::from_static(b"hi"),
        }
    );
}

#[test]
fn publish_topic_alias_zero() {
    // [MQTT-3.3.2-8] topic alias 0 is a protocol error.
    protocol(Some(V5), &publish_v5(&[0x23, 0, 0], b""));
}

#[test]
fn publish_payload_format() {
    // Payload format indicator 1 promises UTF-8 (section 3.3.2.3.2).
    assert_eq!(
        dec(Some(V5), &publish_v5(&[0x01, 1], &[0xC3, 0x28])),
        Err(DecodeError::PayloadFormatInvalid)
    );
    assert!(dec(Some(V5), &publish_v5(&[0x01, 1], "héllo".as_bytes())).is_ok());
    assert!(dec(Some(V5), &publish_v5(&[0x01, 0], &[0xC3, 0x28])).is_ok());
    // Only 0 and 1 are defined.
    protocol(Some(V5), &publish_v5(&[0x01, 2], b""));
}

#[test]
fn publish_payload_is_zero_copy() {
    let mut buf = BytesMut::with_capacity(64);
    buf.extend_from_slice(&[0x30, 0x0A, 0, 1, b't']);
    buf.extend_from_slice(b"payload");
    let start = buf.as_ptr() as usize;
    let mut d = Decoder::new(1024);
    d.set_version(V311);
    let Ok(Some(Packet::Publish(p))) = d.decode(&mut buf) else {
        panic!()
    };
    assert_eq!(&p.payload[..], b"payload");
    // The payload points into the receive buffer.
    assert_eq!(p.payload.as_ptr() as usize, start + 5);
}

// ---- properties ----------------------------------------------------------------------------

#[test]
fn property_rules() {
    // Section 2.2.2.2: an identifier not valid for the packet type is malformed
    // (topic alias on CONNECT, session expiry on PUBLISH).
    malformed(None, &connect_v5(0x02, &[0x23, 0, 1], &[0, 0]));
    malformed(Some(V5), &publish_v5(&[0x11, 0, 0, 0, 1], b""));
    // Unknown identifier.
    malformed(Some(V5), &publish_v5(&[0x7F, 0], b""));
    malformed(Some(V5), &publish_v5(&[0x00, 0], b""));
    // A property other than user property / subscription identifier twice.
    protocol(
        None,
        &connect_v5(0x02, &[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2], &[0, 0]),
    );
    protocol(
        Some(V5),
        &publish_v5(&[0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 1], b""),
    );
    // User properties repeat and keep their order.
    let Packet::Publish(p) = ok(
        V5,
        &publish_v5(
            &[0x26, 0, 1, b'k', 0, 1, b'2', 0x26, 0, 1, b'k', 0, 1, b'1'],
            b"",
        ),
    ) else {
        panic!()
    };
    assert_eq!(
        p.properties.user_properties,
        vec![("k".into(), "2".into()), ("k".into(), "1".into())]
    );
    // Several subscription identifiers on PUBLISH, one on SUBSCRIBE, never 0.
    let Packet::Publish(p) = ok(V5, &publish_v5(&[0x0B, 1, 0x0B, 0x80, 0x01], b"")) else {
        panic!()
    };
    assert_eq!(p.properties.subscription_identifiers, vec![1, 128]);
    protocol(Some(V5), &publish_v5(&[0x0B, 0], b""));
    protocol(
        Some(V5),
        &[0x82, 0x0B, 0, 1, 4, 0x0B, 1, 0x0B, 2, 0, 1, b'a', 0],
    );
    let Packet::Subscribe(s) = ok(V5, &[0x82, 0x09, 0, 1, 2, 0x0B, 1, 0, 1, b'a', 0]) else {
        panic!()
    };
    assert_eq!(s.properties.subscription_identifiers, vec![1]);
    // Receive maximum 0, maximum packet size 0.
    protocol(None, &connect_v5(0x02, &[0x21, 0, 0], &[0, 0]));
    protocol(None, &connect_v5(0x02, &[0x27, 0, 0, 0, 0], &[0, 0]));
    assert!(dec(
        None,
        &connect_v5(0x02, &[0x21, 0, 1, 0x27, 0, 0, 0, 1], &[0, 0])
    )
    .is_ok());
    // Byte properties that are 0 or 1.
    protocol(None, &connect_v5(0x02, &[0x17, 2], &[0, 0]));
    protocol(None, &connect_v5(0x02, &[0x19, 2], &[0, 0]));
    for id in [0x24, 0x25, 0x28, 0x29, 0x2A] {
        protocol(Some(V5), &[0x20, 0x05, 0, 0, 2, id, 2]);
        assert!(dec(Some(V5), &[0x20, 0x05, 0, 0, 2, id, 1]).is_ok());
    }
    // Authentication data needs an authentication method.
    protocol(None, &connect_v5(0x02, &[0x16, 0, 1, 9], &[0, 0]));
    assert!(dec(
        None,
        &connect_v5(0x02, &[0x15, 0, 1, b'm', 0x16, 0, 1, 9], &[0, 0])
    )
    .is_ok());
    // A property value cut short inside the property block.
    malformed(Some(V5), &publish_v5(&[0x02, 0, 0], b""));
}

// ---- SUBSCRIBE / UNSUBSCRIBE ---------------------------------------------------------------

#[test]
fn subscribe_rules() {
    // [MQTT-3.8.3-3] at least one filter.
    protocol(Some(V311), &[0x82, 0x02, 0, 1]);
    protocol(Some(V5), &[0x82, 0x03, 0, 1, 0]);
    // [MQTT-3.10.3-2] UNSUBSCRIBE too.
    protocol(Some(V311), &[0xA2, 0x02, 0, 1]);
    protocol(Some(V5), &[0xA2, 0x03, 0, 1, 0]);
    // Packet identifier 0 [MQTT-2.2.1-3].
    protocol(Some(V311), &[0x82, 0x06, 0, 0, 0, 1, b'a', 0]);
    protocol(Some(V311), &[0xA2, 0x05, 0, 0, 0, 1, b'a']);
    // [MQTT-3-8.3-4] 3.x: the upper six bits of the requested QoS byte are reserved.
    malformed(Some(V311), &[0x82, 0x06, 0, 1, 0, 1, b'a', 0x04]);
    malformed(Some(V311), &[0x82, 0x06, 0, 1, 0, 1, b'a', 0x03]);
    // [MQTT-3.8.3-5] 5.0: reserved bits, QoS 3, retain handling 3.
    malformed(Some(V5), &[0x82, 0x07, 0, 1, 0, 0, 1, b'a', 0x40]);
    malformed(Some(V5), &[0x82, 0x07, 0, 1, 0, 0, 1, b'a', 0x03]);
    malformed(Some(V5), &[0x82, 0x07, 0, 1, 0, 0, 1, b'a', 0x30]);
    // Every option bit.
    let Packet::Subscribe(s) = ok(V5, &[0x82, 0x07, 0, 1, 0, 0, 1, b'a', 0x2E]) else {
        panic!()
    };
    assert_eq!(
        s.filters[0].1,
        SubscriptionOptions {
            qos: QoS::ExactlyOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: makelaar_proto::RetainHandling::DoNotSend,
        }
    );
    let Packet::Unsubscribe(u) = ok(V311, &[0xA2, 0x05, 0, 1, 0, 1, b'+']) else {
        panic!()
    };
    assert_eq!(
        u,
        Unsubscribe {
            packet_id: 1,
            filters: vec!["+".into()],
            properties: Properties::default()
        }
    );
}

/// SUBSCRIBE (QoS 1 options) and UNSUBSCRIBE of the one filter, in `v`'s form.
fn sub_and_unsub(v: ProtocolVersion, filter: &str) -> [Vec<u8>; 2] {
    let props: &[u8] = if v == V5 { &[0] } else { &[] };
    let mut entry = vec![0, filter.len() as u8];
    entry.extend_from_slice(filter.as_bytes());
    let mut sub = [&[0, 1][..], props, &entry, &[1]].concat();
    let mut unsub = [&[0, 2][..], props, &entry].concat();
    sub = frame(0x82, &sub);
    unsub = frame(0xA2, &unsub);
    [sub, unsub]
}

#[test]
fn malformed_topic_filters_are_malformed_packets() {
    // [MQTT-4.7.1-2] '#' last and alone in its level, [MQTT-4.7.1-3] '+' alone in its level,
    // [MQTT-4.7.3-1] at least one character (3.1.1 numbering; 5.0: [MQTT-4.7.1-1],
    // [MQTT-4.7.1-2], [MQTT-4.7.3-1]). A protocol violation closes the connection (3.1.1
    // [MQTT-4.8.0-1]); 5.0 with 0x81, the filter not being correctly formed (section 3.9.3).
    for v in [V31, V311, V5] {
        for bad in ["a/#/b", "a+/b", "#a", "", "a/b#", "+a", "a/++", "##"] {
            for bytes in sub_and_unsub(v, bad) {
                let r = dec(Some(v), &bytes);
                assert!(
                    matches!(r, Err(DecodeError::Malformed(_))),
                    "{v:?} {bad:?}: {r:?}"
                );
                assert_eq!(r.unwrap_err().reason_code(), ReasonCode::MALFORMED_PACKET);
            }
        }
        // Well-formed filters decode, shared ones too: whether `$share//a` or `$share/g` is
        // a shared subscription the broker accepts is the broker's to answer (SUBACK 0x8F).
        for good in [
            "#",
            "+",
            "a/+/c",
            "a/#",
            "/",
            "+/+/#",
            "$SYS/#",
            "$share//a",
            "$share/g",
        ] {
            for bytes in sub_and_unsub(v, good) {
                match ok(v, &bytes) {
                    Packet::Subscribe(s) => assert_eq!(s.filters[0].0, good),
                    Packet::Unsubscribe(u) => assert_eq!(u.filters, [good]),
                    other => panic!("{other:?}"),
                }
            }
        }
    }
    // One bad filter among good ones refuses the whole packet.
    let body = [
        &[0, 1][..],
        &[0, 1, b'a', 0],
        &[0, 3, b'a', b'/', b'#'],
        &[0],
        &[0, 2, b'#', b'/'],
        &[0],
    ]
    .concat();
    malformed(Some(V311), &frame(0x82, &body));
}

// ---- acknowledgements ----------------------------------------------------------------------

#[test]
fn ack_packet_identifier_zero() {
    // [MQTT-2.2.1-3] packet identifiers are non-zero.
    for first in [0x40, 0x50, 0x62, 0x70] {
        protocol(Some(V311), &[first, 0x02, 0, 0]);
    }
    protocol(Some(V311), &[0x90, 0x03, 0, 0, 0]);
    protocol(Some(V311), &[0xB0, 0x02, 0, 0]);
}

#[test]
fn v5_short_forms() {
    // Section 3.4.2.1: remaining length 2 is success without properties.
    assert_eq!(ok(V5, &[0x40, 0x02, 0, 9]), Packet::PubAck(PubAck::new(9)));
    // Section 3.4.2.2.1: a reason code without a property length.
    let Packet::PubRec(a) = ok(V5, &[0x50, 0x03, 0, 9, 0x10]) else {
        panic!()
    };
    assert_eq!(
        (a.reason, a.properties.is_empty()),
        (ReasonCode(0x10), true)
    );
    // With properties.
    let Packet::PubComp(a) = ok(V5, &[0x70, 0x08, 0, 9, 0x92, 4, 0x1F, 0, 1, b'x']) else {
        panic!()
    };
    assert_eq!(a.properties.reason_string.as_deref(), Some("x"));
    // Section 3.14.2.1: DISCONNECT with remaining length 0 is a normal disconnection.
    assert_eq!(
        ok(V5, &[0xE0, 0x00]),
        Packet::Disconnect(Disconnect::default())
    );
    let Packet::Disconnect(d) = ok(V5, &[0xE0, 0x01, 0x04]) else {
        panic!()
    };
    assert_eq!(d.reason, ReasonCode::DISCONNECT_WITH_WILL);
    // [MQTT-3.15.2-1] AUTH with remaining length 0 is success.
    assert_eq!(ok(V5, &[0xF0, 0x00]), Packet::Auth(Auth::default()));
    let Packet::Auth(a) = ok(V5, &[0xF0, 0x01, 0x18]) else {
        panic!()
    };
    assert_eq!(a.reason, ReasonCode::CONTINUE_AUTHENTICATION);
    // Disallowed property on an acknowledgement.
    malformed(Some(V5), &[0x40, 0x06, 0, 9, 0, 2, 0x01, 0]);

    // The encoder writes the same short forms.
    let enc = |p: Packet| {
        let mut b = BytesMut::new();
        p.encode(V5, &mut b).unwrap();
        b.to_vec()
    };
    assert_eq!(enc(Packet::PubAck(PubAck::new(9))), vec![0x40, 0x02, 0, 9]);
    let rec = PubAck {
        reason: ReasonCode(0x10),
        ..PubAck::new(9)
    };
    assert_eq!(enc(Packet::PubRec(rec)), vec![0x50, 0x03, 0, 9, 0x10]);
    assert_eq!(enc(Packet::PubRel(PubAck::new(9))), vec![0x62, 0x02, 0, 9]);
    assert_eq!(
        enc(Packet::Disconnect(Disconnect::default())),
        vec![0xE0, 0x00]
    );
    assert_eq!(enc(Packet::Auth(Auth::default())), vec![0xF0, 0x00]);
    let d = Disconnect {
        reason: ReasonCode::SESSION_TAKEN_OVER,
        ..Disconnect::default()
    };
    assert_eq!(enc(Packet::Disconnect(d)), vec![0xE0, 0x01, 0x8E]);
}

#[test]
fn v3_acknowledgements() {
    // 3.x DISCONNECT decodes as a normal disconnection.
    assert_eq!(
        ok(V311, &[0xE0, 0x00]),
        Packet::Disconnect(Disconnect::default())
    );
    assert_eq!(
        ok(V31, &[0xE0, 0x00]),
        Packet::Disconnect(Disconnect::default())
    );
    // UNSUBACK without reason codes.
    assert_eq!(
        ok(V311, &[0xB0, 0x02, 0, 3]),
        Packet::UnsubAck(UnsubAck {
            packet_id: 3,
            ..UnsubAck::default()
        })
    );
    // SUBACK: granted QoS or 0x80 [MQTT-3.9.3-2]; other values are reserved.
    let Packet::SubAck(s) = ok(V311, &[0x90, 0x05, 0, 3, 0, 2, 0x80]) else {
        panic!()
    };
    assert_eq!(
        s.reasons,
        vec![ReasonCode(0), ReasonCode(2), ReasonCode(0x80)]
    );
    malformed(Some(V311), &[0x90, 0x03, 0, 3, 0x03]);
    // The encoder maps 5.0 failures to 0x80 and drops 5.0-only fields.
    let mut buf = BytesMut::new();
    let suback = SubAck {
        packet_id: 3,
        reasons: vec![ReasonCode::GRANTED_QOS_1, ReasonCode::NOT_AUTHORIZED],
        properties: Properties {
            reason_string: Some("no".into()),
            ..Properties::default()
        },
    };
    Packet::SubAck(suback).encode(V311, &mut buf).unwrap();
    assert_eq!(&buf[..], &[0x90, 0x04, 0, 3, 0x01, 0x80]);
    buf.clear();
    let puback = PubAck {
        packet_id: 4,
        reason: ReasonCode::NO_MATCHING_SUBSCRIBERS,
        properties: Properties::default(),
    };
    Packet::PubAck(puback).encode(V311, &mut buf).unwrap();
    assert_eq!(&buf[..], &[0x40, 0x02, 0, 4]);
    buf.clear();
    let d = Disconnect {
        reason: ReasonCode::SERVER_SHUTTING_DOWN,
        ..Disconnect::default()
    };
    Packet::Disconnect(d).encode(V311, &mut buf).unwrap();
    assert_eq!(&buf[..], &[0xE0, 0x00]);
    buf.clear();
    let u = UnsubAck {
        packet_id: 5,
        reasons: vec![ReasonCode::SUCCESS],
        ..UnsubAck::default()
    };
    Packet::UnsubAck(u).encode(V311, &mut buf).unwrap();
    assert_eq!(&buf[..], &[0xB0, 0x02, 0, 5]);
}

// ---- sizes and streaming -------------------------------------------------------------------

#[test]
fn oversize_refused_from_the_fixed_header_alone() {
    // The first 5 bytes of a 10 MB PUBLISH: type, four-byte remaining length.
    let remaining: usize = 10_000_000;
    let mut header = vec![0x30];
    let mut v = remaining;
    loop {
        let mut b = (v & 0x7F) as u8;
        v >>= 7;
        if v > 0 {
            b |= 0x80;
        }
        header.push(b);
        if v == 0 {
            break;
        }
    }
    assert_eq!(header.len(), 5);
    let mut d = Decoder::new(1 << 20);
    d.set_version(V311);
    let mut buf = BytesMut::from(&header[..]);
    assert_eq!(
        d.decode(&mut buf),
        Err(DecodeError::TooLarge {
            size: 10_000_005,
            max: 1 << 20
        })
    );
    assert_eq!(
        DecodeError::TooLarge { size: 1, max: 0 }.reason_code(),
        ReasonCode::PACKET_TOO_LARGE
    );
}

#[test]
fn packet_size_limit_counts_the_whole_packet() {
    // PINGREQ is 2 bytes: a 2-byte limit accepts it, 1 byte refuses it.
    let mut d = Decoder::new(2);
    d.set_version(V311);
    let mut buf = BytesMut::from(&[0xC0, 0x00][..]);
    assert_eq!(d.decode(&mut buf), Ok(Some(Packet::PingReq)));
    d.set_max_packet_size(1);
    let mut buf = BytesMut::from(&[0xC0, 0x00][..]);
    assert_eq!(
        d.decode(&mut buf),
        Err(DecodeError::TooLarge { size: 2, max: 1 })
    );
    // A PUBLISH of exactly the limit is accepted.
    let p = Packet::Publish(Publish {
        topic: Arc::from("a/b"),
        payload: Bytes::from(vec![7u8; 300]),
        ..Publish::default()
    });
    let n = p.encoded_len(V311);
    let mut buf = BytesMut::new();
    p.encode(V311, &mut buf).unwrap();
    assert_eq!(buf.len(), n);
    d.set_max_packet_size(n);
    assert_eq!(d.decode(&mut buf.clone()), Ok(Some(p.clone())));
    d.set_max_packet_size(n - 1);
    assert!(matches!(
        d.decode(&mut buf),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn two_packets_in_one_buffer() {
    let mut buf = BytesMut::from(&[0xC0, 0x00, 0x40, 0x02, 0x00, 0x05, 0xD0][..]);
    let mut d = Decoder::new(1024);
    d.set_version(V311);
    assert_eq!(d.decode(&mut buf), Ok(Some(Packet::PingReq)));
    assert_eq!(d.decode(&mut buf), Ok(Some(Packet::PubAck(PubAck::new(5)))));
    // Half a PINGRESP stays in the buffer.
    assert_eq!(d.decode(&mut buf), Ok(None));
    assert_eq!(&buf[..], &[0xD0]);
    buf.extend_from_slice(&[0x00]);
    assert_eq!(d.decode(&mut buf), Ok(Some(Packet::PingResp)));
    assert!(buf.is_empty());
}

#[test]
fn one_packet_split_across_reads() {
    let p = Packet::Publish(Publish {
        qos: QoS::ExactlyOnce,
        topic: Arc::from("sensors/1/temp"),
        packet_id: 42,
        payload: Bytes::from(vec![1u8; 200]), // two-byte remaining length
        ..Publish::default()
    });
    let mut wire = BytesMut::new();
    p.encode(V5, &mut wire).unwrap();
    let mut d = Decoder::new(1024);
    d.set_version(V5);
    let mut buf = BytesMut::new();
    for (i, b) in wire.iter().enumerate() {
        buf.extend_from_slice(&[*b]);
        let r = d.decode(&mut buf).unwrap();
        if i + 1 < wire.len() {
            assert_eq!(r, None, "after {} bytes", i + 1);
        } else {
            assert_eq!(r, Some(p.clone()));
        }
    }
}

// ---- encoder errors ------------------------------------------------------------------------

#[test]
fn encoder_errors_leave_the_buffer_alone() {
    let mut buf = BytesMut::from(&b"keep"[..]);
    // AUTH does not exist before 5.0.
    assert_eq!(
        Packet::Auth(Auth::default()).encode(V311, &mut buf),
        Err(EncodeError::NotInVersion("AUTH"))
    );
    // Strings are at most 65,535 bytes.
    let long = "x".repeat(65_536);
    let s = Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![
            ("a".into(), SubscriptionOptions::default()),
            (long.clone(), SubscriptionOptions::default()),
        ],
        properties: Properties::default(),
    });
    assert!(matches!(
        s.encode(V311, &mut buf),
        Err(EncodeError::FieldTooLong(_))
    ));
    let p = Packet::Publish(Publish {
        topic: Arc::from(long.as_str()),
        ..Publish::default()
    });
    assert!(matches!(
        p.encode(V5, &mut buf),
        Err(EncodeError::FieldTooLong(_))
    ));
    let mut props = Properties::default();
    props.user_properties.push(("k".into(), long));
    let d = Packet::Disconnect(Disconnect {
        reason: ReasonCode::SUCCESS,
        properties: props,
    });
    assert!(matches!(
        d.encode(V5, &mut buf),
        Err(EncodeError::FieldTooLong(_))
    ));
    // A string of exactly 65,535 bytes is fine.
    let max = Packet::Unsubscribe(Unsubscribe {
        packet_id: 1,
        filters: vec!["y".repeat(65_535)],
        properties: Properties::default(),
    });
    let mut ok_buf = BytesMut::new();
    max.encode(V311, &mut ok_buf).unwrap();
    assert_eq!(ok_buf.len(), max.encoded_len(V311));
    // Packets are at most 268,435,455 bytes of remaining length.
    let huge = Packet::Publish(Publish {
        topic: Arc::from("t"),
        payload: Bytes::from(vec![0u8; 268_435_456]),
        ..Publish::default()
    });
    assert_eq!(
        huge.encode(V311, &mut buf),
        Err(EncodeError::PacketTooLarge)
    );
    assert_eq!(&buf[..], b"keep");
}
