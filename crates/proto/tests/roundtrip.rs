//! Property tests: every packet type, with arbitrary valid fields for each protocol version,
//! survives encode → decode unchanged; `encoded_len` is exact; every proper prefix of an encoded
//! packet asks for more bytes; and arbitrary bytes never panic the decoder.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use makelaar_proto::{
    Auth, ConnAck, Connect, Decoder, Disconnect, Packet, Properties, ProtocolVersion, PubAck,
    Publish, QoS, ReasonCode, RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck,
    Unsubscribe, Will,
};
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;

const MAX_VBI: u32 = 268_435_455;

fn version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![
        Just(ProtocolVersion::V31),
        Just(ProtocolVersion::V311),
        Just(ProtocolVersion::V5),
    ]
}

/// Any UTF-8 string without U+0000.
fn text() -> impl Strategy<Value = String> {
    "[^\\x00]{0,12}"
}

/// A well-formed topic filter (section 4.7): levels of text without wildcards, `+` levels,
/// and perhaps a `#` level at the end.
fn topic_filter() -> impl Strategy<Value = String> {
    let level = prop_oneof![Just("+".to_owned()), "[^\\x00+#/]{0,4}"];
    (vec(level, 1..5), any::<bool>()).prop_map(|(mut levels, hash)| {
        if hash {
            levels.push("#".to_owned());
        }
        let filter = levels.join("/");
        if filter.is_empty() {
            "#".to_owned()
        } else {
            filter
        }
    })
}

/// A valid topic name: non-empty, no wildcards, no U+0000.
fn topic_name() -> impl Strategy<Value = String> {
    "[^\\x00+#]{1,16}"
}

fn bin(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn flag() -> impl Strategy<Value = Option<u8>> {
    of(0..=1u8)
}

/// Every property set at random; `restrict` keeps those a packet may carry.
fn any_props() -> impl Strategy<Value = Properties> {
    let a = (
        flag(),
        of(any::<u32>()),
        of(text()),
        of(topic_name()),
        of(bin(16)),
        vec(1..=MAX_VBI, 0..3),
        of(any::<u32>()),
        of(text()),
        of(any::<u16>()),
        of(text()),
        of(bin(16)),
        flag(),
    );
    let b = (
        of(any::<u32>()),
        flag(),
        of(text()),
        of(text()),
        of(text()),
        of(1..=u16::MAX),
        of(any::<u16>()),
        of(1..=u16::MAX),
        flag(),
        flag(),
        vec((text(), text()), 0..3),
        of(1..=u32::MAX),
    );
    let c = (flag(), flag(), flag());
    (a, b, c).prop_map(|(a, b, c)| Properties {
        payload_format_indicator: a.0,
        message_expiry_interval: a.1,
        content_type: a.2,
        response_topic: a.3,
        correlation_data: a.4,
        subscription_identifiers: a.5,
        session_expiry_interval: a.6,
        assigned_client_identifier: a.7,
        server_keep_alive: a.8,
        authentication_method: a.9,
        authentication_data: a.10,
        request_problem_information: a.11,
        will_delay_interval: b.0,
        request_response_information: b.1,
        response_information: b.2,
        server_reference: b.3,
        reason_string: b.4,
        receive_maximum: b.5,
        topic_alias_maximum: b.6,
        topic_alias: b.7,
        maximum_qos: b.8,
        retain_available: b.9,
        user_properties: b.10,
        maximum_packet_size: b.11,
        wildcard_subscription_available: c.0,
        subscription_identifier_available: c.1,
        shared_subscription_available: c.2,
    })
}

/// Where a property block sits.
#[derive(Clone, Copy, PartialEq)]
enum Ctx {
    Connect,
    ConnAck,
    Publish,
    Will,
    Ack,
    Subscribe,
    Unsubscribe,
    Disconnect,
    Auth,
}

/// The property table of MQTT 5.0 section 2.2.2.2, written out independently of the decoder.
fn allowed(ctx: Ctx) -> &'static [u8] {
    match ctx {
        Ctx::Connect => &[0x11, 0x15, 0x16, 0x17, 0x19, 0x21, 0x22, 0x26, 0x27],
        Ctx::ConnAck => &[
            0x11, 0x12, 0x13, 0x15, 0x16, 0x1A, 0x1C, 0x1F, 0x21, 0x22, 0x24, 0x25, 0x26, 0x27,
            0x28, 0x29, 0x2A,
        ],
        Ctx::Publish => &[0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x23, 0x26],
        Ctx::Will => &[0x01, 0x02, 0x03, 0x08, 0x09, 0x18, 0x26],
        Ctx::Ack => &[0x1F, 0x26],
        Ctx::Subscribe => &[0x0B, 0x26],
        Ctx::Unsubscribe => &[0x26],
        Ctx::Disconnect => &[0x11, 0x1C, 0x1F, 0x26],
        Ctx::Auth => &[0x15, 0x16, 0x1F, 0x26],
    }
}

fn keep<T>(slot: &mut Option<T>, id: u8, ok: &[u8]) {
    if !ok.contains(&id) {
        *slot = None;
    }
}

fn restrict(mut p: Properties, ctx: Ctx) -> Properties {
    let ok = allowed(ctx);
    keep(&mut p.payload_format_indicator, 0x01, ok);
    keep(&mut p.message_expiry_interval, 0x02, ok);
    keep(&mut p.content_type, 0x03, ok);
    keep(&mut p.response_topic, 0x08, ok);
    keep(&mut p.correlation_data, 0x09, ok);
    if !ok.contains(&0x0B) {
        p.subscription_identifiers.clear();
    }
    if ctx == Ctx::Subscribe {
        p.subscription_identifiers.truncate(1);
    }
    keep(&mut p.session_expiry_interval, 0x11, ok);
    keep(&mut p.assigned_client_identifier, 0x12, ok);
    keep(&mut p.server_keep_alive, 0x13, ok);
    keep(&mut p.authentication_method, 0x15, ok);
    keep(&mut p.authentication_data, 0x16, ok);
    if p.authentication_method.is_none() {
        p.authentication_data = None;
    }
    keep(&mut p.request_problem_information, 0x17, ok);
    keep(&mut p.will_delay_interval, 0x18, ok);
    keep(&mut p.request_response_information, 0x19, ok);
    keep(&mut p.response_information, 0x1A, ok);
    keep(&mut p.server_reference, 0x1C, ok);
    keep(&mut p.reason_string, 0x1F, ok);
    keep(&mut p.receive_maximum, 0x21, ok);
    keep(&mut p.topic_alias_maximum, 0x22, ok);
    keep(&mut p.topic_alias, 0x23, ok);
    keep(&mut p.maximum_qos, 0x24, ok);
    keep(&mut p.retain_available, 0x25, ok);
    keep(&mut p.maximum_packet_size, 0x27, ok);
    keep(&mut p.wildcard_subscription_available, 0x28, ok);
    keep(&mut p.subscription_identifier_available, 0x29, ok);
    keep(&mut p.shared_subscription_available, 0x2A, ok);
    p
}

/// Properties for `ctx` in 5.0 (often none at all, to exercise the short forms); none in 3.x.
fn props(v: ProtocolVersion, ctx: Ctx) -> BoxedStrategy<Properties> {
    if v.is_v5() {
        prop_oneof![
            1 => Just(Properties::default()),
            2 => any_props().prop_map(move |p| restrict(p, ctx)),
        ]
        .boxed()
    } else {
        Just(Properties::default()).boxed()
    }
}

/// A payload format indicator of 1 promises UTF-8: drop it when the payload is not.
fn fix_payload_format(p: &mut Properties, payload: &[u8]) {
    if p.payload_format_indicator == Some(1) && std::str::from_utf8(payload).is_err() {
        p.payload_format_indicator = Some(0);
    }
}

fn packet_id() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn reason(v: ProtocolVersion) -> BoxedStrategy<ReasonCode> {
    if v.is_v5() {
        any::<u8>().prop_map(ReasonCode).boxed()
    } else {
        Just(ReasonCode::SUCCESS).boxed()
    }
}

fn connect(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let will = (
        topic_name(),
        bin(40),
        qos(),
        any::<bool>(),
        props(v, Ctx::Will),
    )
        .prop_map(|(topic, payload, qos, retain, mut properties)| {
            fix_payload_format(&mut properties, &payload);
            Will {
                topic,
                payload,
                qos,
                retain,
                properties,
            }
        });
    (
        any::<bool>(),
        any::<u16>(),
        text(),
        of(will),
        of(text()),
        of(bin(20)),
        props(v, Ctx::Connect),
    )
        .prop_map(
            move |(
                clean_start,
                keep_alive,
                client_id,
                will,
                mut username,
                password,
                properties,
            )| {
                // [MQTT-3.1.2-22] 3.1.1 needs a user name with a password.
                if v == ProtocolVersion::V311 && password.is_some() && username.is_none() {
                    username = Some(String::from("user"));
                }
                Packet::Connect(Box::new(Connect {
                    bridge: false,
                    protocol: v,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }))
            },
        )
}

fn connack(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let reason = if v.is_v5() {
        any::<u8>().prop_map(ReasonCode).boxed()
    } else {
        (0..=5u8)
            .prop_map(|c| ReasonCode::from_v3_connack(c).unwrap())
            .boxed()
    };
    (any::<bool>(), reason, props(v, Ctx::ConnAck)).prop_map(
        move |(session_present, reason, properties)| {
            Packet::ConnAck(ConnAck {
                // 3.1 has no session present flag.
                session_present: session_present && v != ProtocolVersion::V31,
                reason,
                properties,
            })
        },
    )
}

fn publish(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        any::<bool>(),
        packet_id(),
        props(v, Ctx::Publish),
        prop_oneof![3 => bin(64), 1 => bin(20_000)],
    )
        .prop_map(
            |(qos, dup, retain, topic, drop_topic, pid, mut properties, payload)| {
                fix_payload_format(&mut properties, &payload);
                // 5.0: an empty topic name is allowed when a topic alias stands for it.
                let topic = if drop_topic && properties.topic_alias.is_some() {
                    String::new()
                } else {
                    topic
                };
                Packet::Publish(Publish {
                    dup: dup && qos != QoS::AtMostOnce,
                    qos,
                    retain,
                    topic: Arc::from(topic),
                    packet_id: if qos == QoS::AtMostOnce { 0 } else { pid },
                    properties,
                    payload,
                })
            },
        )
}

fn puback(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (0..4u8, packet_id(), reason(v), props(v, Ctx::Ack)).prop_map(
        |(kind, packet_id, reason, properties)| {
            let ack = PubAck {
                packet_id,
                reason,
                properties,
            };
            match kind {
                0 => Packet::PubAck(ack),
                1 => Packet::PubRec(ack),
                2 => Packet::PubRel(ack),
                _ => Packet::PubComp(ack),
            }
        },
    )
}

fn options(v: ProtocolVersion) -> impl Strategy<Value = SubscriptionOptions> {
    let rh = prop_oneof![
        Just(RetainHandling::SendAtSubscribe),
        Just(RetainHandling::SendIfNew),
        Just(RetainHandling::DoNotSend),
    ];
    (qos(), any::<bool>(), any::<bool>(), rh).prop_map(move |(qos, nl, rap, rh)| {
        if v.is_v5() {
            SubscriptionOptions {
                qos,
                no_local: nl,
                retain_as_published: rap,
                retain_handling: rh,
            }
        } else {
            SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            }
        }
    })
}

fn subscribe(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        packet_id(),
        vec((topic_filter(), options(v)), 1..5),
        props(v, Ctx::Subscribe),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                properties,
            })
        })
}

fn suback(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let code = if v.is_v5() {
        any::<u8>().boxed()
    } else {
        prop_oneof![Just(0u8), Just(1), Just(2), Just(0x80)].boxed()
    };
    (
        packet_id(),
        vec(code.prop_map(ReasonCode), 1..5),
        props(v, Ctx::Ack),
    )
        .prop_map(|(packet_id, reasons, properties)| {
            Packet::SubAck(SubAck {
                packet_id,
                reasons,
                properties,
            })
        })
}

fn unsubscribe(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        packet_id(),
        vec(topic_filter(), 1..5),
        props(v, Ctx::Unsubscribe),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties,
            })
        })
}

fn unsuback(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let reasons = if v.is_v5() {
        vec(any::<u8>().prop_map(ReasonCode), 1..5).boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    (packet_id(), reasons, props(v, Ctx::Ack)).prop_map(|(packet_id, reasons, properties)| {
        Packet::UnsubAck(UnsubAck {
            packet_id,
            reasons,
            properties,
        })
    })
}

fn disconnect(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (reason(v), props(v, Ctx::Disconnect))
        .prop_map(|(reason, properties)| Packet::Disconnect(Disconnect { reason, properties }))
}

fn auth() -> impl Strategy<Value = Packet> {
    (
        any::<u8>().prop_map(ReasonCode),
        props(ProtocolVersion::V5, Ctx::Auth),
    )
        .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties }))
}

/// Any packet valid in `v`.
fn packet(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let common = prop_oneof![
        1 => connect(v),
        1 => connack(v),
        3 => publish(v),
        2 => puback(v),
        1 => subscribe(v),
        1 => suback(v),
        1 => unsubscribe(v),
        1 => unsuback(v),
        1 => Just(Packet::PingReq),
        1 => Just(Packet::PingResp),
        1 => disconnect(v),
    ];
    if v.is_v5() {
        prop_oneof![10 => common, 1 => auth()].boxed()
    } else {
        common.boxed()
    }
}

fn versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    version().prop_flat_map(|v| (Just(v), packet(v)))
}

fn versioned_packets() -> impl Strategy<Value = (ProtocolVersion, Vec<Packet>)> {
    version().prop_flat_map(|v| (Just(v), vec(packet(v), 1..6)))
}

fn encode(p: &Packet, v: ProtocolVersion) -> BytesMut {
    let mut buf = BytesMut::new();
    p.encode(v, &mut buf).unwrap();
    buf
}

fn decoder(v: ProtocolVersion) -> Decoder {
    let mut d = Decoder::new(1 << 20);
    d.set_version(v);
    d
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decode_inverts_encode((v, p) in versioned_packet()) {
        let mut buf = encode(&p, v);
        prop_assert_eq!(buf.len(), p.encoded_len(v));
        let decoded = decoder(v).decode(&mut buf);
        prop_assert_eq!(decoded, Ok(Some(p)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn encode_appends((v, p) in versioned_packet()) {
        let mut buf = BytesMut::from(&b"prefix"[..]);
        p.encode(v, &mut buf).unwrap();
        prop_assert_eq!(buf.len(), 6 + p.encoded_len(v));
        prop_assert_eq!(&buf[..6], b"prefix");
    }

    #[test]
    fn connect_sets_the_version((v, p) in version().prop_flat_map(|v| (Just(v), connect(v)))) {
        let mut buf = encode(&p, v);
        let mut d = Decoder::new(1 << 20);
        prop_assert_eq!(d.version(), None);
        prop_assert_eq!(d.decode(&mut buf), Ok(Some(p)));
        prop_assert_eq!(d.version(), Some(v));
    }

    #[test]
    fn every_prefix_needs_more_bytes((v, p) in versioned_packet()) {
        let full = encode(&p, v);
        // Large payloads: every prefix of the header and body start, then a sample further on.
        let ends = (0..full.len().min(300)).chain((300..full.len()).step_by(997));
        let mut d = decoder(v);
        for end in ends {
            let mut buf = BytesMut::from(&full[..end]);
            prop_assert_eq!(d.decode(&mut buf), Ok(None), "prefix of {} bytes", end);
            prop_assert_eq!(&buf[..], &full[..end]);
        }
    }

    #[test]
    fn packets_back_to_back((v, ps) in versioned_packets()) {
        let mut buf = BytesMut::new();
        for p in &ps {
            p.encode(v, &mut buf).unwrap();
        }
        let mut d = decoder(v);
        for p in ps {
            prop_assert_eq!(d.decode(&mut buf), Ok(Some(p)));
        }
        prop_assert_eq!(d.decode(&mut buf), Ok(None));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn packets_split_across_reads((v, ps) in versioned_packets(), chunk in 1usize..40) {
        let mut wire = BytesMut::new();
        for p in &ps {
            p.encode(v, &mut wire).unwrap();
        }
        let mut d = decoder(v);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in wire.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(p) = d.decode(&mut buf).unwrap() {
                out.push(p);
            }
        }
        prop_assert_eq!(out, ps);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn filters_decode_exactly_when_well_formed(
        v in version(),
        filter in prop_oneof!["[a+#/]{0,6}", text(), topic_filter()],
    ) {
        // Section 4.7's syntax decides: a malformed filter makes the SUBSCRIBE and the
        // UNSUBSCRIBE carrying it malformed packets (0x81); a well-formed one decodes as sent.
        let well_formed = makelaar_proto::topic::validate_filter_syntax(&filter).is_ok();
        let options = SubscriptionOptions::default();
        let packets = [
            Packet::Subscribe(Subscribe { packet_id: 1, filters: vec![(filter.clone(), options)], properties: Properties::default() }),
            Packet::Unsubscribe(Unsubscribe { packet_id: 1, filters: vec![filter.clone()], properties: Properties::default() }),
        ];
        for p in packets {
            let mut buf = encode(&p, v);
            match decoder(v).decode(&mut buf) {
                Ok(decoded) => {
                    prop_assert!(well_formed, "{:?} decoded", filter);
                    prop_assert_eq!(decoded, Some(p));
                }
                Err(e) => {
                    prop_assert!(!well_formed, "{:?}: {}", filter, e);
                    prop_assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
                }
            }
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..512), v in of(version())) {
        let mut d = Decoder::new(4096);
        if let Some(v) = v {
            d.set_version(v);
        }
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = d.decode(&mut buf) {}
    }

    #[test]
    fn mutated_packets_never_panic(
        (v, p) in versioned_packet(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut buf = encode(&p, v);
        for (at, byte) in flips {
            let i = at.index(buf.len());
            buf[i] = byte;
        }
        let mut d = decoder(v);
        // Whatever decodes re-encodes to something that decodes to the same packet.
        while let Ok(Some(q)) = d.decode(&mut buf) {
            let v = match &q {
                Packet::Connect(c) => c.protocol,
                _ => v,
            };
            let mut again = encode(&q, v);
            prop_assert_eq!(again.len(), q.encoded_len(v));
            prop_assert_eq!(decoder(v).decode(&mut again), Ok(Some(q)));
        }
    }
}
