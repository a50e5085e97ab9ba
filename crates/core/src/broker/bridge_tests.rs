//! The broker's part in bridges: a bridge session's own queue bounds, the loop guard's
//! property kept for bridges and stripped for everyone else, and a message that comes back
//! to the broker it started at dropped.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use makelaar_proto::*;

use super::tests::{connect, publish, subscribe, Harness};
use super::*;

const BRIDGE: &str = "local.edge.up";

fn harness(drop_oldest: bool) -> Harness {
    let policy = Policy {
        bridges: HashMap::from([(
            BRIDGE.to_owned(),
            BridgeSession {
                max_queued_messages: 3,
                max_queued_bytes: 0,
                drop_oldest,
            },
        )]),
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
    }
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
