#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use makelaar_proto::{
    ConnAck, Packet, Properties, ProtocolVersion, PubAck, Publish, QoS, ReasonCode, RetainHandling,
    SubAck,
};

use super::*;

fn route(pattern: &str, out: bool, inward: bool, qos: QoS, local: &str, remote: &str) -> Route {
    Route {
        pattern: pattern.into(),
        out,
        inward,
        qos,
        local_prefix: local.into(),
        remote_prefix: remote.into(),
    }
}

fn settings(protocol: ProtocolVersion) -> Settings {
    Settings {
        name: "b".into(),
        routes: vec![
            route("#", true, false, QoS::ExactlyOnce, "out/", "edge/"),
            route("#", false, true, QoS::ExactlyOnce, "in/", "cmd/"),
        ],
        protocol,
        try_private: true,
        clean_session: false,
        local_clean_session: false,
        remote_client_id: "host.b".into(),
        local_client_id: "local.host.b".into(),
        remote_username: None,
        remote_password: None,
        local_username: None,
        keepalive: Duration::from_secs(60),
        notifications: Some(Notifications {
            topic: "$SYS/broker/connection/host.b/state".into(),
            local_only: false,
        }),
        attempt_unsubscribe: true,
        outgoing_retain: true,
        max_packet_size: 0,
        receive_maximum: 20,
        session_expiry_interval: u32::MAX,
        loop_guard: Some(LoopGuard {
            property: "makelaar-origin".into(),
            max_hops: 8,
            broker_id: "A".into(),
        }),
        lazy: None,
    }
}

fn drain(r: &mut Relay) -> Vec<Output> {
    std::iter::from_fn(|| r.poll_output()).collect()
}

fn publish(topic: &str, qos: QoS, id: u16) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: id,
        properties: Properties::default(),
        payload: Bytes::from_static(b"x"),
    }
}

fn connack(present: bool) -> Packet {
    Packet::ConnAck(ConnAck {
        session_present: present,
        reason: ReasonCode::SUCCESS,
        properties: Properties::default(),
    })
}

fn suback(id: u16) -> Packet {
    Packet::SubAck(SubAck {
        packet_id: id,
        reasons: vec![ReasonCode::GRANTED_QOS_2],
        properties: Properties::default(),
    })
}

/// Runs the relay up to Ready, returning it and the time.
fn ready(protocol: ProtocolVersion) -> (Relay, Instant) {
    let (r, now, handling) = ready_with(protocol, true);
    // The remote kept the session: it has the retained messages already.
    assert_eq!(handling, RetainHandling::SendIfNew);
    (r, now)
}

/// Runs the relay up to Ready with a remote whose session was `present`; also returns the
/// retain handling of the local subscription made then.
fn ready_with(protocol: ProtocolVersion, present: bool) -> (Relay, Instant, RetainHandling) {
    let now = Instant::now();
    let mut r = Relay::new(settings(protocol), now);
    r.start(now);
    let out = drain(&mut r);
    assert!(
        matches!(&out[..], [Output::ConnectLocal(c)] if c.client_id == "local.host.b" && c.properties.session_expiry_interval == Some(u32::MAX))
    );
    r.handle_local(now, connack(false));
    let out = drain(&mut r);
    // The out topic's subscription with No Local and Retain As Published, and the `0`.
    let Output::Local(Packet::Subscribe(s)) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(s.filters[0].0, "out/#");
    assert!(s.filters[0].1.no_local && s.filters[0].1.retain_as_published);
    // Priming queues no retained message: the remote's CONNACK decides.
    assert_eq!(s.filters[0].1.retain_handling, RetainHandling::DoNotSend);
    assert!(
        matches!(&out[1], Output::Local(Packet::Publish(p)) if p.retain && &p.payload[..] == b"0")
    );
    r.handle_local(now, suback(OWN_SUBSCRIBE));
    r.handle_local(now, Packet::PubAck(PubAck::new(OWN_NOTIFY_LOCAL)));
    let out = drain(&mut r);
    assert_eq!(
        out[1..],
        [Output::CloseLocal, Output::ConnectRemote],
        "{out:?}"
    );
    let c = r.remote_opened(now);
    assert_eq!(c.client_id, "host.b");
    assert!(c
        .will
        .as_ref()
        .is_some_and(|w| &w.payload[..] == b"0" && w.retain));
    r.handle_remote(now, connack(present));
    let out = drain(&mut r);
    // SUBSCRIBE cmd/#, UNSUBSCRIBE edge/#, notification 1.
    assert!(matches!(&out[0], Output::Remote(Packet::Subscribe(s)) if s.filters[0].0 == "cmd/#"));
    assert!(matches!(&out[1], Output::Remote(Packet::Unsubscribe(u)) if u.filters == ["edge/#"]));
    assert!(
        matches!(&out[2], Output::Remote(Packet::Publish(p)) if &p.payload[..] == b"1" && p.retain)
    );
    r.handle_remote(now, suback(OWN_SUBSCRIBE));
    r.handle_remote(
        now,
        Packet::UnsubAck(makelaar_proto::UnsubAck {
            packet_id: OWN_UNSUBSCRIBE,
            reasons: vec![],
            properties: Properties::default(),
        }),
    );
    r.handle_remote(now, Packet::PubAck(PubAck::new(OWN_NOTIFY_REMOTE)));
    let out = drain(&mut r);
    assert!(matches!(&out[..], [Output::ConnectLocal(c)] if !c.clean_start));
    r.handle_local(now, connack(true));
    let out = drain(&mut r);
    let Output::Local(Packet::Subscribe(s)) = &out[0] else {
        panic!("{out:?}")
    };
    let handling = s.filters[0].1.retain_handling;
    r.handle_local(now, suback(OWN_SUBSCRIBE));
    r.handle_local(now, Packet::PubAck(PubAck::new(OWN_NOTIFY_LOCAL)));
    assert_eq!(r.state(), LinkState::Connected);
    drain(&mut r);
    (r, now, handling)
}

#[test]
fn retained_messages_go_out_again_only_to_a_remote_with_a_new_session() {
    let (_, _, handling) = ready_with(ProtocolVersion::V5, false);
    assert_eq!(handling, RetainHandling::SendAtSubscribe);
}

#[test]
fn out_qos1_is_acknowledged_locally_only_after_the_remote() {
    let (mut r, now) = ready(ProtocolVersion::V311);
    r.handle_local(
        now,
        Packet::Publish(publish("out/a/b", QoS::AtLeastOnce, 7)),
    );
    let out = drain(&mut r);
    let [Output::Remote(Packet::Publish(p))] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(
        (&*p.topic, p.packet_id, p.qos),
        ("edge/a/b", 7, QoS::AtLeastOnce)
    );
    assert_eq!(r.in_flight(), 1);
    r.handle_remote(now, Packet::PubAck(PubAck::new(7)));
    assert_eq!(
        drain(&mut r),
        [Output::Local(Packet::PubAck(PubAck::new(7)))]
    );
    assert_eq!(r.in_flight(), 0);
}

#[test]
fn out_qos2_passes_every_step_along() {
    let (mut r, now) = ready(ProtocolVersion::V5);
    r.handle_local(now, Packet::Publish(publish("out/x", QoS::ExactlyOnce, 3)));
    drain(&mut r);
    r.handle_remote(now, Packet::PubRec(PubAck::new(3)));
    assert_eq!(
        drain(&mut r),
        [Output::Local(Packet::PubRec(PubAck::new(3)))]
    );
    r.handle_local(now, Packet::PubRel(PubAck::new(3)));
    assert_eq!(
        drain(&mut r),
        [Output::Remote(Packet::PubRel(PubAck::new(3)))]
    );
    r.handle_remote(now, Packet::PubComp(PubAck::new(3)));
    assert_eq!(
        drain(&mut r),
        [Output::Local(Packet::PubComp(PubAck::new(3)))]
    );
}

#[test]
fn in_publish_is_acknowledged_to_the_remote_only_after_this_broker() {
    let (mut r, now) = ready(ProtocolVersion::V311);
    r.handle_remote(
        now,
        Packet::Publish(publish("cmd/door", QoS::AtLeastOnce, 9)),
    );
    let out = drain(&mut r);
    assert!(
        matches!(&out[..], [Output::Local(Packet::Publish(p))] if &*p.topic == "in/door" && p.packet_id == 9)
    );
    r.handle_local(now, Packet::PubAck(PubAck::new(9)));
    assert_eq!(
        drain(&mut r),
        [Output::Remote(Packet::PubAck(PubAck::new(9)))]
    );
}

#[test]
fn loop_guard_stamps_out_and_drops_what_comes_back() {
    let (mut r, now) = ready(ProtocolVersion::V5);
    r.handle_local(now, Packet::Publish(publish("out/x", QoS::AtLeastOnce, 1)));
    let out = drain(&mut r);
    let [Output::Remote(Packet::Publish(p))] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(
        p.properties.user_properties,
        [("makelaar-origin".to_string(), "A;1".to_string())]
    );
    // Our own message coming back in is acknowledged to the remote and dropped.
    let mut back = publish("cmd/x", QoS::ExactlyOnce, 5);
    back.properties.user_properties = vec![("makelaar-origin".into(), "A;2".into())];
    r.handle_remote(now, Packet::Publish(back));
    assert_eq!(
        drain(&mut r),
        [Output::Remote(Packet::PubRec(PubAck::new(5)))]
    );
    r.handle_remote(now, Packet::PubRel(PubAck::new(5)));
    assert_eq!(
        drain(&mut r),
        [Output::Remote(Packet::PubComp(PubAck::new(5)))]
    );
    assert_eq!(r.stats().dropped_loop, 1);
    // Too many hops on the way out.
    let mut far = publish("out/y", QoS::AtLeastOnce, 2);
    far.properties.user_properties = vec![("makelaar-origin".into(), "B;8".into())];
    r.handle_local(now, Packet::Publish(far));
    assert_eq!(
        drain(&mut r),
        [Output::Local(Packet::PubAck(PubAck::new(2)))]
    );
}

#[test]
fn remote_loss_sets_the_local_notification_to_0_and_closes_the_local_side() {
    let (mut r, now) = ready(ProtocolVersion::V311);
    r.handle_remote_lost(now);
    let out = drain(&mut r);
    assert!(
        matches!(&out[0], Output::Local(Packet::Publish(p)) if &p.payload[..] == b"0" && p.retain)
    );
    assert!(matches!(&out[1], Output::Local(Packet::Disconnect(_))));
    assert_eq!(out[2..], [Output::CloseLocal, Output::ConnectRemote]);
}

#[test]
fn keepalive_pings_then_gives_up() {
    let (mut r, now) = ready(ProtocolVersion::V311);
    let t = r.poll_timeout().unwrap();
    assert_eq!(t, now + Duration::from_secs(60));
    r.handle_timeout(t);
    // The local side has a keep-alive too.
    assert_eq!(
        drain(&mut r),
        [
            Output::Local(Packet::PingReq),
            Output::Remote(Packet::PingReq)
        ]
    );
    let t2 = r.poll_timeout().unwrap();
    r.handle_timeout(t2);
    let out = drain(&mut r);
    assert!(out.contains(&Output::CloseRemote(End::KeepAliveTimeout)));
}

#[test]
fn version_refusals_fall_back() {
    let now = Instant::now();
    let mut r = Relay::new(settings(ProtocolVersion::V311), now);
    assert!(r.bridge_bit());
    let c = r.remote_opened(now);
    assert!(c.bridge);
    r.handle_remote(
        now,
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason: ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            properties: Properties::default(),
        }),
    );
    assert!(!r.bridge_bit());
    assert!(drain(&mut r).contains(&Output::CloseRemote(End::Fallback)));
    let mut r = Relay::new(settings(ProtocolVersion::V5), now);
    r.remote_opened(now);
    assert!(is_v3_version_refusal(&[0x20, 0x02, 0x00, 0x01]));
    r.fallback_to_v311(now);
    assert_eq!(r.version(), ProtocolVersion::V311);
}

#[test]
fn qos_is_capped_by_the_remote_maximum() {
    let (mut r, now) = ready(ProtocolVersion::V5);
    r.limits.max_qos = QoS::AtLeastOnce;
    r.handle_local(now, Packet::Publish(publish("out/q", QoS::ExactlyOnce, 4)));
    let out = drain(&mut r);
    assert!(matches!(&out[..], [Output::Remote(Packet::Publish(p))] if p.qos == QoS::AtLeastOnce));
    r.handle_remote(now, Packet::PubAck(PubAck::new(4)));
    assert_eq!(
        drain(&mut r),
        [Output::Local(Packet::PubRec(PubAck::new(4)))]
    );
    r.handle_local(now, Packet::PubRel(PubAck::new(4)));
    assert_eq!(
        drain(&mut r),
        [Output::Local(Packet::PubComp(PubAck::new(4)))]
    );
}

#[test]
fn backoff_stays_between_base_and_cap_and_resets() {
    let base = Duration::from_secs(5);
    let cap = Duration::from_secs(30);
    let mut b = Backoff::new(
        Restart::Jitter {
            base,
            cap,
            stable: Some(Duration::from_secs(60)),
        },
        42,
    );
    for _ in 0..100 {
        let d = b.next_delay();
        assert!(d >= base && d <= cap, "{d:?}");
    }
    b.connection_ended(Duration::from_secs(61));
    assert!(b.next_delay() <= Duration::from_secs(15));
}

#[test]
fn routes_map_prefixes() {
    let r = route("sensor/#", true, true, QoS::AtLeastOnce, "site/", "cloud/");
    assert_eq!(
        r.to_remote("site/sensor/t").as_deref(),
        Some("cloud/sensor/t")
    );
    assert_eq!(r.to_remote("other/sensor/t"), None);
    assert_eq!(
        r.to_local("cloud/sensor/t").as_deref(),
        Some("site/sensor/t")
    );
}

#[test]
fn lazy_waits_for_the_threshold_and_ends_an_idle_link() {
    let now = Instant::now();
    let mut s = settings(ProtocolVersion::V311);
    s.lazy = Some(Lazy {
        threshold: 3,
        idle_timeout: Duration::from_secs(30),
    });
    let mut r = Relay::new(s, now);
    r.start(now);
    drain(&mut r);
    r.handle_local(now, connack(false));
    r.handle_local(now, suback(OWN_SUBSCRIBE));
    r.handle_local(now, Packet::PubAck(PubAck::new(OWN_NOTIFY_LOCAL)));
    let out = drain(&mut r);
    // The priming connection closes and a waiting one opens, with a window of 3.
    assert!(
        matches!(out.last(), Some(Output::ConnectLocal(c)) if c.properties.receive_maximum == Some(3)),
        "{out:?}"
    );
    r.handle_local(now, connack(true));
    r.handle_local(now, Packet::Publish(publish("out/1", QoS::AtLeastOnce, 1)));
    r.handle_local(now, Packet::Publish(publish("out/1", QoS::AtLeastOnce, 1)));
    r.handle_local(now, Packet::Publish(publish("out/2", QoS::AtMostOnce, 0)));
    assert!(
        !drain(&mut r).contains(&Output::ConnectRemote),
        "a DUP is one message"
    );
    r.handle_local(now, Packet::Publish(publish("out/3", QoS::AtLeastOnce, 2)));
    let out = drain(&mut r);
    assert_eq!(
        out[1..],
        [Output::CloseLocal, Output::ConnectRemote],
        "{out:?}"
    );
    // Up, then idle: the link ends and the bridge waits again.
    r.remote_opened(now);
    r.handle_remote(now, connack(true));
    r.handle_remote(now, suback(OWN_SUBSCRIBE));
    r.handle_remote(
        now,
        Packet::UnsubAck(makelaar_proto::UnsubAck {
            packet_id: OWN_UNSUBSCRIBE,
            reasons: vec![],
            properties: Properties::default(),
        }),
    );
    r.handle_remote(now, Packet::PubAck(PubAck::new(OWN_NOTIFY_REMOTE)));
    r.handle_local(now, connack(true));
    r.handle_local(now, suback(OWN_SUBSCRIBE));
    r.handle_local(now, Packet::PubAck(PubAck::new(OWN_NOTIFY_LOCAL)));
    drain(&mut r);
    assert_eq!(r.state(), LinkState::Connected);
    let idle = now + Duration::from_secs(30);
    assert!(r.poll_timeout().is_some_and(|t| t <= idle));
    r.handle_timeout(idle);
    let out = drain(&mut r);
    assert!(out.contains(&Output::CloseRemote(End::Idle)), "{out:?}");
    assert!(
        matches!(out.last(), Some(Output::ConnectLocal(_))),
        "{out:?}"
    );
    assert_eq!(r.state(), LinkState::Down);
}

#[test]
fn a_stop_waits_for_the_acknowledgements_in_flight_and_forwards_nothing_new() {
    let (mut r, now) = ready(ProtocolVersion::V311);
    r.handle_local(now, Packet::Publish(publish("out/a", QoS::AtLeastOnce, 7)));
    drain(&mut r);
    r.shutdown(now);
    // Still linked: the remote has message 7 and its PUBACK is on the way.
    assert_eq!(r.state(), LinkState::Connected);
    assert!(drain(&mut r).is_empty());
    assert_eq!(r.poll_timeout(), Some(now + SHUTDOWN_GRACE));
    // A new message from either side does not cross any more: left unacknowledged, it is
    // sent again by its sender next time.
    r.handle_local(now, Packet::Publish(publish("out/b", QoS::AtLeastOnce, 8)));
    r.handle_remote(now, Packet::Publish(publish("cmd/c", QoS::AtLeastOnce, 3)));
    assert!(drain(&mut r).is_empty());
    // The acknowledgement arrives: it is passed on, then the link ends.
    r.handle_remote(now, Packet::PubAck(PubAck::new(7)));
    let out = drain(&mut r);
    assert_eq!(out[0], Output::Local(Packet::PubAck(PubAck::new(7))));
    assert!(out.contains(&Output::CloseRemote(End::Shutdown)), "{out:?}");
    assert!(out.contains(&Output::CloseLocal), "{out:?}");
    assert_eq!(r.state(), LinkState::Stopped);
}

#[test]
fn a_stop_gives_up_on_acknowledgements_after_the_grace() {
    let (mut r, now) = ready(ProtocolVersion::V5);
    r.handle_local(now, Packet::Publish(publish("out/a", QoS::ExactlyOnce, 9)));
    drain(&mut r);
    r.shutdown(now);
    r.handle_timeout(now + SHUTDOWN_GRACE - Duration::from_millis(1));
    assert_eq!(r.state(), LinkState::Connected);
    r.handle_timeout(now + SHUTDOWN_GRACE);
    let out = drain(&mut r);
    assert!(out.contains(&Output::CloseRemote(End::Shutdown)), "{out:?}");
    assert_eq!(r.state(), LinkState::Stopped);
}

#[test]
fn a_stop_with_nothing_in_flight_is_immediate() {
    let (mut r, now) = ready(ProtocolVersion::V5);
    r.shutdown(now);
    let out = drain(&mut r);
    assert!(out.contains(&Output::CloseRemote(End::Shutdown)), "{out:?}");
    assert_eq!(r.state(), LinkState::Stopped);
}
