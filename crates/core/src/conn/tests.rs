#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
use super::*;
use makelaar_proto::{Properties, PubAck, Publish, ReasonCode};

fn connect(v5: bool, keep_alive: u16) -> Connect {
    Connect {
        bridge: false,
        protocol: if v5 {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V311
        },
        clean_start: true,
        keep_alive,
        client_id: "c".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

fn publish(topic: &str, alias: Option<u16>, qos: QoS, id: u16) -> Packet {
    let mut p = Publish {
        topic: Arc::from(topic),
        qos,
        packet_id: id,
        ..Publish::default()
    };
    p.properties.topic_alias = alias;
    Packet::Publish(p)
}

#[test]
fn keep_alive_is_capped_for_v5_only() {
    let limits = Limits {
        max_keep_alive: 60,
        ..Limits::default()
    };
    assert_eq!(
        effective_keep_alive(&connect(true, 120), &limits),
        (60, Some(60))
    );
    assert_eq!(
        effective_keep_alive(&connect(true, 0), &limits),
        (60, Some(60))
    );
    assert_eq!(
        effective_keep_alive(&connect(true, 30), &limits),
        (30, None)
    );
    assert_eq!(
        effective_keep_alive(&connect(false, 120), &limits),
        (120, None)
    );
}

#[test]
fn the_silence_limit_is_one_and_a_half_times_the_keep_alive_in_force() {
    // [MQTT-3.1.2-24]
    let now = Instant::now();
    let st = ConnState::new(now, &connect(false, 10), &Limits::default());
    assert_eq!(st.silence_limit(), Some(Duration::from_secs(15)));
    let st = ConnState::new(now, &connect(false, 1), &Limits::default());
    assert_eq!(st.silence_limit(), Some(Duration::from_millis(1500)));
    let st = ConnState::new(now, &connect(false, 0), &Limits::default());
    assert_eq!(st.silence_limit(), None);
    // The server's maximum applies to 5.0 clients, who are told so [MQTT-3.2.2-21].
    let capped = Limits {
        max_keep_alive: 60,
        ..Limits::default()
    };
    let st = ConnState::new(now, &connect(true, 0), &capped);
    assert_eq!(st.silence_limit(), Some(Duration::from_secs(90)));
    let st = ConnState::new(now, &connect(false, 0), &capped);
    assert_eq!(st.silence_limit(), None);
}

#[test]
fn inbound_aliases_resolve_and_out_of_range_is_refused() {
    let now = Instant::now();
    let mut st = ConnState::new(now, &connect(true, 0), &Limits::default());
    let mut p = publish("a/b", Some(1), QoS::AtMostOnce, 0);
    assert_eq!(st.inbound(now, &mut p), Ok(Inbound::Route));
    let mut p = publish("", Some(1), QoS::AtMostOnce, 0);
    st.inbound(now, &mut p).unwrap();
    match p {
        Packet::Publish(p) => assert_eq!(&*p.topic, "a/b"),
        _ => unreachable!(),
    }
    let mut p = publish("x", Some(11), QoS::AtMostOnce, 0);
    assert_eq!(
        st.inbound(now, &mut p).unwrap_err().reason(),
        ReasonCode::TOPIC_ALIAS_INVALID
    );
    let mut p = publish("", Some(2), QoS::AtMostOnce, 0);
    assert_eq!(
        st.inbound(now, &mut p).unwrap_err().reason(),
        ReasonCode::PROTOCOL_ERROR
    );
}

#[test]
fn receive_maximum_is_enforced_and_released_by_acks() {
    let now = Instant::now();
    let limits = Limits {
        receive_maximum: 2,
        ..Limits::default()
    };
    let mut st = ConnState::new(now, &connect(true, 0), &limits);
    st.inbound(now, &mut publish("t", None, QoS::ExactlyOnce, 1))
        .unwrap();
    st.inbound(now, &mut publish("t", None, QoS::ExactlyOnce, 2))
        .unwrap();
    // A resent PUBLISH with the same id takes no new slot.
    st.inbound(now, &mut publish("t", None, QoS::ExactlyOnce, 2))
        .unwrap();
    assert_eq!(
        st.outbound(&mut Packet::PubComp(PubAck::new(1))),
        Outbound::Continue
    );
    st.inbound(now, &mut publish("t", None, QoS::AtLeastOnce, 3))
        .unwrap();
    let err = st
        .inbound(now, &mut publish("t", None, QoS::AtLeastOnce, 4))
        .unwrap_err();
    assert_eq!(err.reason(), ReasonCode::RECEIVE_MAXIMUM_EXCEEDED);
}

#[test]
fn receive_maximum_is_not_held_against_v3_clients() {
    let now = Instant::now();
    let limits = Limits {
        receive_maximum: 2,
        ..Limits::default()
    };
    let mut st = ConnState::new(now, &connect(false, 0), &limits);
    for id in 1..=10 {
        st.inbound(now, &mut publish("t", None, QoS::AtLeastOnce, id))
            .unwrap();
    }
}

#[test]
fn outbound_aliases_replace_repeated_topics() {
    let now = Instant::now();
    let mut c = connect(true, 0);
    c.properties.topic_alias_maximum = Some(1);
    let mut st = ConnState::new(now, &c, &Limits::default());
    let mut first = publish("a", None, QoS::AtMostOnce, 0);
    assert_eq!(st.outbound(&mut first), Outbound::Continue);
    let mut second = publish("a", None, QoS::AtMostOnce, 0);
    assert_eq!(st.outbound(&mut second), Outbound::Continue);
    let mut other = publish("b", None, QoS::AtMostOnce, 0);
    assert_eq!(st.outbound(&mut other), Outbound::Continue);
    let (Packet::Publish(f), Packet::Publish(s), Packet::Publish(o)) = (first, second, other)
    else {
        unreachable!()
    };
    assert_eq!((&*f.topic, f.properties.topic_alias), ("a", Some(1)));
    assert_eq!((&*s.topic, s.properties.topic_alias), ("", Some(1)));
    assert_eq!((&*o.topic, o.properties.topic_alias), ("b", None));
}

#[test]
fn subscription_identifier_from_a_client_is_a_protocol_error() {
    let now = Instant::now();
    let mut st = ConnState::new(now, &connect(true, 0), &Limits::default());
    let mut p = publish("t", None, QoS::AtMostOnce, 0);
    if let Packet::Publish(p) = &mut p {
        p.properties.subscription_identifiers = vec![1];
    }
    // [MQTT-3.3.4-6]
    assert_eq!(
        st.inbound(now, &mut p).unwrap_err().reason(),
        ReasonCode::PROTOCOL_ERROR
    );
}

#[test]
fn second_connect_is_a_protocol_error() {
    let now = Instant::now();
    let mut st = ConnState::new(now, &connect(false, 0), &Limits::default());
    let mut p = Packet::Connect(Box::new(connect(false, 0)));
    assert_eq!(
        st.inbound(now, &mut p).unwrap_err().reason(),
        ReasonCode::PROTOCOL_ERROR
    );
}

#[test]
fn publishing_faster_than_max_publish_rate_ends_the_connection() {
    let limits = Limits {
        max_publish_rate: 5,
        ..Limits::default()
    };
    let now = Instant::now();
    let mut st = ConnState::new(now, &connect(true, 0), &limits);
    let publish = || {
        Packet::Publish(Publish {
            topic: "t".into(),
            ..Publish::default()
        })
    };
    for _ in 0..5 {
        assert_eq!(st.inbound(now, &mut publish()), Ok(Inbound::Route));
    }
    // Other packets are not counted.
    assert_eq!(st.inbound(now, &mut Packet::PingReq), Ok(Inbound::Owed));
    let v = st.inbound(now, &mut publish()).unwrap_err();
    assert_eq!(v.reason(), ReasonCode::MESSAGE_RATE_TOO_HIGH);
    // At the rate, a client goes on for ever.
    let mut st = ConnState::new(now, &connect(false, 0), &limits);
    for i in 0..100u64 {
        let at = now + Duration::from_millis(200 * i);
        assert_eq!(
            st.inbound(at, &mut publish()),
            Ok(Inbound::Route),
            "publish {i}"
        );
    }
}

#[test]
fn a_violation_ends_a_v5_connection_with_disconnect_and_its_code() {
    // [MQTT-4.13.1-1] 5.0: DISCONNECT with the reason code; 3.x: nothing, just the close.
    for (v, code) in [
        (Violation::KeepAliveTimeout, ReasonCode::KEEP_ALIVE_TIMEOUT),
        (
            Violation::PublishRateTooHigh,
            ReasonCode::MESSAGE_RATE_TOO_HIGH,
        ),
        (Violation::Malformed, ReasonCode::MALFORMED_PACKET),
        (Violation::SecondConnect, ReasonCode::PROTOCOL_ERROR),
    ] {
        match v.disconnect(ProtocolVersion::V5) {
            Some(Packet::Disconnect(d)) => assert_eq!(d.reason, code, "{v}"),
            other => panic!("{v}: {other:?}"),
        }
        assert_eq!(v.disconnect(ProtocolVersion::V311), None, "{v}");
        assert_eq!(v.disconnect(ProtocolVersion::V31), None, "{v}");
    }
}

#[test]
fn decoding_errors_are_violations_with_the_decoders_reason_code() {
    use makelaar_proto::DecodeError;
    let errors = [
        DecodeError::Malformed("x"),
        DecodeError::Protocol("x"),
        DecodeError::TooLarge { size: 2, max: 1 },
        DecodeError::TopicNameInvalid("x"),
        DecodeError::PayloadFormatInvalid,
    ];
    for e in errors {
        assert_eq!(Violation::from_decode(&e).reason(), e.reason_code(), "{e}");
    }
    // Only a CONNECT names a protocol: after the first one, it is a second CONNECT.
    let v = Violation::from_decode(&DecodeError::UnsupportedProtocol);
    assert_eq!(v, Violation::SecondConnect);
}

fn encoded(p: &Packet, v: ProtocolVersion) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    p.encode(v, &mut out).unwrap();
    out.to_vec()
}

#[test]
fn the_refusing_connack_per_version() {
    let reason = ReasonCode::BAD_USER_NAME_OR_PASSWORD;
    // 3.1.1 and 3.1: the return code 4, no properties [MQTT-3.2.2-5].
    for v in [ProtocolVersion::V311, ProtocolVersion::V31] {
        let ack = refusal(v, reason);
        assert_eq!(encoded(&ack, v), [0x20, 0x02, 0x00, 0x04], "{v:?}");
    }
    // 5.0: the reason code 0x86 and a reason string.
    let Packet::ConnAck(ack) = refusal(ProtocolVersion::V5, reason) else {
        unreachable!()
    };
    assert_eq!(ack.reason, reason);
    assert!(!ack.session_present);
    assert_eq!(
        ack.properties.reason_string.as_deref(),
        Some("connection refused: bad user name or password")
    );
}

#[test]
fn nothing_follows_a_refusing_connack() {
    // [MQTT-3.2.2-7] the shell closes after writing it.
    let now = Instant::now();
    for v5 in [false, true] {
        let mut st = ConnState::new(now, &connect(v5, 0), &Limits::default());
        let version = st.version;
        let mut ack = refusal(version, ReasonCode::NOT_AUTHORIZED);
        assert_eq!(
            st.outbound(&mut ack),
            Outbound::Close(ReasonCode::NOT_AUTHORIZED)
        );
        let mut ok = Packet::ConnAck(makelaar_proto::ConnAck::default());
        assert_eq!(st.outbound(&mut ok), Outbound::PingResps(0));
    }
}

#[test]
fn pings_before_the_connack_are_answered_right_after_it_in_order() {
    // [MQTT-3.2.0-1] the CONNACK is the first packet the server sends.
    let now = Instant::now();
    let mut st = ConnState::new(now, &connect(false, 10), &Limits::default());
    let later = now + Duration::from_millis(5);
    assert_eq!(st.inbound(now, &mut Packet::PingReq), Ok(Inbound::Owed));
    let mut sub = Packet::Subscribe(makelaar_proto::Subscribe::default());
    assert_eq!(st.inbound(later, &mut sub), Ok(Inbound::Route));
    assert_eq!(st.inbound(later, &mut Packet::PingReq), Ok(Inbound::Owed));
    // What the shell writes, in order: the CONNACK, then the two PINGRESPs it released.
    let mut ack = Packet::ConnAck(makelaar_proto::ConnAck::default());
    assert_eq!(st.outbound(&mut ack), Outbound::PingResps(2));
    // After it, a PINGREQ is answered at once and nothing more is owed.
    assert_eq!(
        st.inbound(later, &mut Packet::PingReq),
        Ok(Inbound::PingResp)
    );
    let mut suback = Packet::SubAck(makelaar_proto::SubAck::default());
    assert_eq!(st.outbound(&mut suback), Outbound::Continue);
}

#[test]
fn without_pings_the_connack_releases_none() {
    let now = Instant::now();
    let mut st = ConnState::new(now, &connect(true, 10), &Limits::default());
    let mut ack = Packet::ConnAck(makelaar_proto::ConnAck::default());
    assert_eq!(st.outbound(&mut ack), Outbound::PingResps(0));
    assert_eq!(st.inbound(now, &mut Packet::PingReq), Ok(Inbound::PingResp));
}

/// The first packet as the shell's decoder makes it of `bytes`.
fn first(bytes: &[u8]) -> Opening {
    let mut buf = bytes::BytesMut::from(bytes);
    first_packet(makelaar_proto::Decoder::new(MAX_CONNECT_SIZE).decode(&mut buf))
}

#[test]
fn the_first_packet_must_be_connect() {
    // [MQTT-3.1.0-1] anything else closes the connection without a word.
    let got = first_packet(Ok(Some(Packet::PingReq)));
    assert!(matches!(got, Opening::NotConnect("PINGREQ")), "{got:?}");
    // From bytes, the decoder cannot read another packet before CONNECT (its format
    // depends on the version): it calls that a protocol error, which closes just the same.
    for bytes in [
        &[0xC0, 0x00][..],
        &[0x30, 0x05, 0x00, 0x01, b't', b'h', b'i'],
    ] {
        let got = first(bytes);
        assert!(
            matches!(
                got,
                Opening::Malformed(makelaar_proto::DecodeError::Protocol(_))
            ),
            "{got:?}"
        );
    }
    // Half a packet: read on.
    assert!(matches!(first(&[0x10, 0x10, 0x00]), Opening::ReadMore));
    // A first packet that does not decode closes too [MQTT-3.1.4-1].
    assert!(matches!(
        first(&[0x10, 0x02, 0x00, 0x00]),
        Opening::Malformed(_)
    ));
    let mut buf = bytes::BytesMut::new();
    Packet::Connect(Box::new(connect(true, 30)))
        .encode(ProtocolVersion::V5, &mut buf)
        .unwrap();
    match first(&buf) {
        Opening::Connect(c) => assert_eq!((c.protocol, c.keep_alive), (ProtocolVersion::V5, 30)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_unsupported_protocol_version_gets_connack_1_in_the_3_1_1_form() {
    // [MQTT-3.1.2-2] CONNECT "MQTT" level 6: CONNACK return code 0x01, then close.
    let connect = [
        0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x06, 0x02, 0x00, 0x3C, 0x00, 0x00,
    ];
    let Opening::UnsupportedVersion { connack, encode_as } = first(&connect) else {
        panic!("not refused")
    };
    assert_eq!(encoded(&connack, encode_as), [0x20, 0x02, 0x00, 0x01]);
}

/// A client that set the bridge bit gets No Local and Retain As Published on its
/// subscriptions (but a shared one, where No Local is not allowed); an ordinary client's
/// options are left as sent.
#[test]
fn a_bridge_subscribes_with_no_local_and_retain_as_published() {
    let now = Instant::now();
    let sub = || {
        let options = makelaar_proto::SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            ..Default::default()
        };
        Packet::Subscribe(makelaar_proto::Subscribe {
            packet_id: 1,
            filters: vec![
                ("#".to_string(), options),
                ("$share/g/a".to_string(), options),
            ],
            ..Default::default()
        })
    };
    let options = |p: &Packet| match p {
        Packet::Subscribe(s) => s
            .filters
            .iter()
            .map(|(_, o)| (o.no_local, o.retain_as_published))
            .collect::<Vec<_>>(),
        _ => unreachable!(),
    };
    let mut bridge = connect(false, 0);
    bridge.bridge = true;
    let mut st = ConnState::new(now, &bridge, &Limits::default());
    assert!(st.is_bridge());
    let mut p = sub();
    assert_eq!(st.inbound(now, &mut p), Ok(Inbound::Route));
    assert_eq!(options(&p), [(true, true), (false, false)]);
    let mut st = ConnState::new(now, &connect(false, 0), &Limits::default());
    assert!(!st.is_bridge());
    let mut p = sub();
    assert_eq!(st.inbound(now, &mut p), Ok(Inbound::Route));
    assert_eq!(options(&p), [(false, false), (false, false)]);
}
