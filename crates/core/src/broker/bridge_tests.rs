//! The broker's part in bridges: a bridge session's own queue bounds, the loop guard's
//! property kept for bridges and stripped for everyone else, and a message that comes back
//! to the broker it started at dropped.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::time::Duration;

use makelaar_proto::*;

use super::tests::{connect, publish, subscribe, Harness};
use super::*;

const BRIDGE: &str = "local.edge.up";

fn harness(drop_oldest: bool) -> Harness {
    harness_with(BridgeSession {
        max_queued_messages: 3,
        max_queued_bytes: 0,
        when_full: if drop_oldest {
            WhenFull::DropOldest
        } else {
            WhenFull::Reject
        },
        max_age: None,
    })
}

fn harness_with(bridge: BridgeSession) -> Harness {
    let policy = Policy {
        bridges: HashMap::from([(BRIDGE.to_owned(), bridge)]),
        origin_property: Some("makelaar-origin".into()),
        broker_id: "me".into(),
        ..Policy::default()
    };
    let mut h = Harness::new();
    h.broker = Broker::new(Limits::default(), policy, 7);
    h
}

fn with_origin(topic: &str, id: u16, origin: &str) -> Packet {
    let Packet::Publish(mut p) = publish(topic, QoS::AtLeastOnce, id, "x") else {
        unreachable!()
    };
    p.properties.user_properties = vec![
        ("makelaar-origin".into(), origin.into()),
        ("app".into(), "kept".into()),
    ];
    Packet::Publish(p)
}

fn publishes(packets: Vec<Packet>) -> Vec<Publish> {
    packets
        .into_iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p),
            _ => None,
        })
        .collect()
}

/// Connects the bridge's session, subscribes it to `#` and takes it offline.
fn offline_bridge(h: &mut Harness) {
    let mut c = connect(BRIDGE, ProtocolVersion::V5, false);
    c.properties.session_expiry_interval = Some(u32::MAX);
    h.connect(1, c);
    h.packet(1, subscribe(1, "#", QoS::AtLeastOnce));
    h.broker.handle_connection_lost(h.now, 1);
}

#[test]
fn a_bridge_session_has_its_own_queue_bound_and_may_drop_the_oldest() {
    for drop_oldest in [false, true] {
        let mut h = harness(drop_oldest);
        offline_bridge(&mut h);
        h.connect(2, connect("pub", ProtocolVersion::V5, true));
        let mut refused = 0;
        for i in 0..5u16 {
            let ack = h.packet(2, publish("t", QoS::AtLeastOnce, i + 1, &i.to_string()));
            if matches!(&ack[..], [Packet::PubAck(a)] if a.reason == ReasonCode::QUOTA_EXCEEDED) {
                refused += 1;
            }
        }
        // Refusing tells the 5.0 publisher; dropping the oldest does not refuse.
        assert_eq!(refused, if drop_oldest { 0 } else { 2 });
        let mut c = connect(BRIDGE, ProtocolVersion::V5, false);
        c.properties.session_expiry_interval = Some(u32::MAX);
        h.connect(3, c);
        let got: Vec<_> = publishes(h.take(3))
            .iter()
            .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
            .collect();
        let expected = if drop_oldest {
            ["2", "3", "4"]
        } else {
            ["0", "1", "2"]
        };
        assert_eq!(got, expected, "drop_oldest {drop_oldest}");
        assert_eq!(h.broker.stats().dropped_queue_full, 2);
        let drops = h.broker.bridge_queue(h.now, BRIDGE).drops;
        let (oldest, refused) = if drop_oldest { (2, 0) } else { (0, 2) };
        assert_eq!((drops.oldest, drops.refused), (oldest, refused));
    }
}

/// Reconnects the bridge's session and returns the payloads it is sent.
fn bridge_receives(h: &mut Harness, conn: ConnId) -> Vec<String> {
    let mut c = connect(BRIDGE, ProtocolVersion::V5, false);
    c.properties.session_expiry_interval = Some(u32::MAX);
    h.connect(conn, c);
    publishes(h.take(conn))
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect()
}

fn quota_exceeded(ack: &[Packet]) -> bool {
    matches!(ack, [Packet::PubAck(a)] if a.reason == ReasonCode::QUOTA_EXCEEDED)
}

#[test]
fn drop_qos0_first_makes_room_by_dropping_a_queued_qos0_message_else_refuses() {
    let mut h = harness_with(BridgeSession {
        max_queued_messages: 3,
        when_full: WhenFull::DropQos0First,
        ..BridgeSession::default()
    });
    offline_bridge(&mut h);
    h.connect(2, connect("pub", ProtocolVersion::V5, true));
    // An offline bridge keeps QoS 0 messages too (its queue has its own bounds).
    h.packet(2, publish("t", QoS::AtLeastOnce, 1, "a"));
    h.packet(2, publish("t", QoS::AtMostOnce, 0, "b0"));
    h.packet(2, publish("t", QoS::AtLeastOnce, 2, "c"));
    // Full: the queued QoS 0 message goes, the new one is kept and acknowledged.
    assert!(!quota_exceeded(
        &h.packet(2, publish("t", QoS::AtLeastOnce, 3, "d"))
    ));
    // Full without a QoS 0 message: refused.
    assert!(quota_exceeded(
        &h.packet(2, publish("t", QoS::AtLeastOnce, 4, "e"))
    ));
    let drops = h.broker.bridge_queue(h.now, BRIDGE).drops;
    assert_eq!((drops.qos0, drops.refused, drops.oldest), (1, 1, 0));
    assert_eq!(bridge_receives(&mut h, 3), ["a", "c", "d"]);
}

#[test]
fn queued_messages_older_than_max_age_are_dropped_and_counted() {
    let mut h = harness_with(BridgeSession {
        max_queued_messages: 100,
        max_age: Some(Duration::from_secs(10)),
        ..BridgeSession::default()
    });
    offline_bridge(&mut h);
    h.connect(2, connect("pub", ProtocolVersion::V5, true));
    h.packet(2, publish("t", QoS::AtLeastOnce, 1, "old1"));
    h.packet(2, publish("t", QoS::AtLeastOnce, 2, "old2"));
    h.advance(6);
    h.packet(2, publish("t", QoS::AtLeastOnce, 3, "mid"));
    let q = h.broker.bridge_queue(h.now, BRIDGE);
    assert_eq!(
        (q.messages, q.oldest_age),
        (3, Some(Duration::from_secs(6)))
    );
    h.advance(5);
    // A new message pushes out those that waited more than 10 s.
    h.packet(2, publish("t", QoS::AtLeastOnce, 4, "new"));
    let q = h.broker.bridge_queue(h.now, BRIDGE);
    assert_eq!((q.messages, q.drops.max_age), (2, 2));
    h.advance(6);
    // Sent when the bridge comes back: "mid" is 11 s old by now and dropped too.
    assert_eq!(bridge_receives(&mut h, 3), ["new"]);
    assert_eq!(h.broker.bridge_queue(h.now, BRIDGE).drops.max_age, 3);
}

#[test]
fn a_refused_v311_publisher_is_disconnected_not_acknowledged() {
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let mut h = harness(false);
        offline_bridge(&mut h);
        h.connect(2, connect("pub", ProtocolVersion::V311, false));
        for i in 1..=3u16 {
            assert_eq!(h.packet(2, publish("t", qos, i, "x")).len(), 1);
        }
        // [MQTT-3.3.5-2] no acknowledgement for what the bridge did not keep: closed.
        assert!(h.packet(2, publish("t", qos, 4, "refused")).is_empty());
        assert_eq!(
            h.closed(2),
            Some(CloseReason::Server(ReasonCode::QUOTA_EXCEEDED))
        );
        // Room again; the publisher re-sends it after reconnecting, and it is kept (a QoS 2
        // re-send is not taken for a duplicate).
        assert_eq!(bridge_receives(&mut h, 3).len(), 3);
        h.broker.handle_connection_lost(h.now, 3);
        h.connect(4, connect("pub", ProtocolVersion::V311, false));
        let Packet::Publish(mut p) = publish("t", qos, 4, "refused") else {
            unreachable!()
        };
        p.dup = true;
        let ack = h.packet(4, Packet::Publish(p));
        assert_eq!(ack.len(), 1, "{ack:?}");
        assert!(bridge_receives(&mut h, 5).contains(&"refused".to_string()));
    }
}

#[test]
fn a_bridge_session_numbers_its_messages_below_the_relays_own_ids() {
    let mut h = harness(false);
    let mut c = connect(BRIDGE, ProtocolVersion::V5, false);
    c.properties.session_expiry_interval = Some(u32::MAX);
    h.connect(1, c);
    let idx = h.broker.sessions.by_client_id(BRIDGE).unwrap();
    let s = h.broker.sessions.get_mut(idx).unwrap();
    assert_eq!(s.id_ceiling, crate::bridge::RELAYED_ID_MAX);
    let ids: Vec<u16> = (0..70_000).map(|_| s.next_packet_id()).collect();
    assert!(ids
        .iter()
        .all(|&i| (1..=crate::bridge::RELAYED_ID_MAX).contains(&i)));
    assert!(ids.contains(&crate::bridge::RELAYED_ID_MAX));
}

#[test]
fn the_origin_property_reaches_bridges_only() {
    let mut h = harness(false);
    let mut c = connect(BRIDGE, ProtocolVersion::V5, false);
    c.properties.session_expiry_interval = Some(u32::MAX);
    h.connect(1, c);
    h.packet(1, subscribe(1, "t/#", QoS::AtLeastOnce));
    h.connect(2, connect("app", ProtocolVersion::V5, true));
    h.packet(2, subscribe(1, "t/#", QoS::AtLeastOnce));
    h.connect(3, connect("remote-bridge", ProtocolVersion::V5, true));
    h.packet(3, with_origin("t/a", 1, "other;1"));
    let to_bridge = publishes(h.take(1));
    let to_app = publishes(h.take(2));
    assert_eq!(
        to_bridge[0].properties.user_properties.len(),
        2,
        "a bridge keeps it"
    );
    assert_eq!(
        to_app[0].properties.user_properties,
        [("app".to_string(), "kept".to_string())],
        "an ordinary client gets the others only"
    );
}

#[test]
fn a_message_that_came_back_is_acknowledged_and_dropped() {
    let mut h = harness(false);
    h.connect(2, connect("app", ProtocolVersion::V5, true));
    h.packet(2, subscribe(1, "t/#", QoS::AtLeastOnce));
    h.connect(3, connect("remote-bridge", ProtocolVersion::V5, true));
    let ack = h.packet(3, with_origin("t/a", 9, "me;3"));
    assert_eq!(ack, [Packet::PubAck(PubAck::new(9))]);
    assert!(h.take(2).is_empty());
    assert_eq!(h.broker.stats().dropped_bridge_loop, 1);
    // From this broker's own bridge (its relay stamps what it brings in), it is routed.
    let mut c = connect(BRIDGE, ProtocolVersion::V5, false);
    c.properties.session_expiry_interval = Some(u32::MAX);
    h.connect(1, c);
    h.packet(1, with_origin("t/b", 4, "me;1"));
    assert_eq!(publishes(h.take(2)).len(), 1);
}

#[test]
fn messages_above_a_topic_lines_qos_are_counted_per_bridge() {
    let mut h = harness(false);
    offline_bridge(&mut h); // its line `#` at QoS 1
    h.connect(2, connect("pub", ProtocolVersion::V5, true));
    h.packet(2, publish("t", QoS::ExactlyOnce, 1, "two"));
    h.packet(2, publish("t", QoS::AtLeastOnce, 2, "one"));
    h.packet(2, publish("t", QoS::AtMostOnce, 0, "zero"));
    h.packet(2, publish("u", QoS::ExactlyOnce, 3, "two again"));
    assert_eq!(h.broker.bridge_queue(h.now, BRIDGE).capped, 2);
    // An ordinary subscriber's downgrade is not a bridge's.
    h.connect(3, connect("app", ProtocolVersion::V5, true));
    h.packet(3, subscribe(1, "v", QoS::AtMostOnce));
    h.packet(2, publish("v", QoS::ExactlyOnce, 4, "x"));
    assert_eq!(h.broker.bridge_queue(h.now, BRIDGE).capped, 3);
    assert_eq!(h.broker.stats().bridge_capped.len(), 1);
}

#[test]
fn an_out_topic_removed_from_the_configuration_is_unsubscribed_when_the_bridge_connects() {
    let mut h = harness(false);
    offline_bridge(&mut h); // subscribed to `#`
    h.broker.set_bridge_sessions(
        h.broker.policy.bridges.clone(),
        HashMap::from([(BRIDGE.to_owned(), vec!["kept/#".to_owned()])]),
        String::new(),
    );
    let mut c = connect(BRIDGE, ProtocolVersion::V5, false);
    c.properties.session_expiry_interval = Some(u32::MAX);
    h.connect(1, c);
    h.packet(1, subscribe(2, "kept/#", QoS::AtLeastOnce));
    h.connect(2, connect("pub", ProtocolVersion::V5, true));
    h.packet(2, publish("gone/x", QoS::AtLeastOnce, 1, "not carried"));
    h.packet(2, publish("kept/x", QoS::AtLeastOnce, 2, "carried"));
    let got: Vec<_> = publishes(h.take(1))
        .iter()
        .map(|p| p.topic.to_string())
        .collect();
    assert_eq!(got, ["kept/x"]);
    let idx = h.broker.sessions.by_client_id(BRIDGE).unwrap();
    let filters: Vec<_> = h
        .broker
        .sessions
        .get(idx)
        .unwrap()
        .subscriptions
        .keys()
        .cloned()
        .collect();
    assert_eq!(filters, ["kept/#"]);
}
