//! The quick-reconnect race (a CONNECT waits for the old connection to drain) and the will
//! at a takeover, with made-up instants.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::Duration;

use bytes::Bytes;
use makelaar_proto::*;

use super::tests::{connect, publish, publishes, subscribe, Harness};
use super::*;

const WATCHER: ConnId = 90;

/// A 5.0 client `id` with a will on `status/ID` ("offline", retained) and this session expiry.
fn device(id: &str, v: ProtocolVersion, clean: bool, expiry: u32) -> Connect {
    let mut c = connect(id, v, clean);
    if v.is_v5() {
        c.properties.session_expiry_interval = Some(expiry);
    }
    c.will = Some(Will {
        topic: format!("status/{id}"),
        payload: Bytes::from_static(b"offline"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Properties::default(),
    });
    c
}

/// A harness with a watcher subscribed to `status/#`.
fn watched(policy: Policy) -> Harness {
    let mut h = Harness::new();
    h.broker = Broker::new(Limits::default(), policy, 7);
    h.connect(WATCHER, connect("watcher", ProtocolVersion::V5, true));
    h.packet(WATCHER, subscribe(1, "status/#", QoS::AtLeastOnce));
    h
}

fn wills_seen(h: &mut Harness) -> Vec<String> {
    publishes(&h.take(WATCHER))
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect()
}

fn connack(packets: &[Packet]) -> &ConnAck {
    match packets.first() {
        Some(Packet::ConnAck(a)) => a,
        other => panic!("expected CONNACK first, got {other:?}"),
    }
}

fn disconnect(reason: ReasonCode, expiry: Option<u32>) -> Packet {
    let mut d = Disconnect {
        reason,
        ..Disconnect::default()
    };
    d.properties.session_expiry_interval = expiry;
    Packet::Disconnect(d)
}

#[test]
fn a_connect_for_a_held_client_id_waits_for_the_old_connection_to_drain() {
    let mut h = watched(Policy::default());
    h.connect(1, device("d", ProtocolVersion::V5, false, 0));
    h.broker
        .handle_connect(h.now, 2, device("d", ProtocolVersion::V5, false, 0));
    assert_eq!(h.drains(), vec![1]);
    assert!(h.take(2).is_empty(), "no CONNACK before the drain");
    assert!(h.broker.is_parked(2));
    assert_eq!(h.broker.poll_timeout(), Some(h.now + DRAIN_DEADLINE));
    // The drain brings the DISCONNECT the old connection had already received: it left
    // normally, so no will [MQTT-3.14.4-3], and its session (expiry 0) ended with it
    // [MQTT-3.1.2-23]: no session present for the Clean Start 0 CONNECT [MQTT-3.2.2-3].
    h.broker
        .handle_packet(h.now, 1, disconnect(ReasonCode::NORMAL_DISCONNECTION, None));
    let got = h.take(2);
    assert!(!connack(&got).session_present);
    assert_eq!(
        h.closed(1),
        Some(CloseReason::ClientDisconnect(
            ReasonCode::NORMAL_DISCONNECTION
        ))
    );
    assert!(h.take(1).is_empty(), "no DISCONNECT 0x8E: not taken over");
    h.broker.handle_drained(h.now, 1);
    assert!(h.take(2).is_empty(), "a late drain answer changes nothing");
    assert!(wills_seen(&mut h).is_empty());
    assert!(!h.broker.is_parked(2));
    assert_eq!(h.broker.poll_timeout(), None);
}

#[test]
fn a_session_expiry_set_on_the_drained_disconnect_keeps_the_session() {
    let mut h = watched(Policy::default());
    h.connect(1, device("d", ProtocolVersion::V5, false, 60));
    h.packet(1, subscribe(1, "cmd/d", QoS::AtLeastOnce));
    h.broker
        .handle_connect(h.now, 2, device("d", ProtocolVersion::V5, false, 0));
    assert_eq!(h.drains(), vec![1]);
    // [MQTT-3.14.2-2] the DISCONNECT changes the expiry; it counts before the new CONNECT.
    h.broker.handle_packet(
        h.now,
        1,
        disconnect(ReasonCode::NORMAL_DISCONNECTION, Some(300)),
    );
    assert!(connack(&h.take(2)).session_present);
    assert_eq!(h.broker.subscription_count(), 2, "cmd/d kept");
    assert!(wills_seen(&mut h).is_empty());
}

#[test]
fn a_drained_disconnect_with_will_publishes_the_will_once() {
    let mut h = watched(Policy::default());
    h.connect(1, device("d", ProtocolVersion::V5, false, 60));
    h.broker
        .handle_connect(h.now, 2, device("d", ProtocolVersion::V5, false, 60));
    h.broker
        .handle_packet(h.now, 1, disconnect(ReasonCode::DISCONNECT_WITH_WILL, None));
    assert!(connack(&h.take(2)).session_present);
    h.broker.handle_drained(h.now, 1);
    assert_eq!(wills_seen(&mut h), vec!["offline"]);
}

#[test]
fn a_drain_that_brings_nothing_is_a_takeover_with_the_will_before_the_connack() {
    let mut h = watched(Policy::default());
    h.connect(1, device("d", ProtocolVersion::V5, false, 60));
    h.broker
        .handle_connect(h.now, 2, device("d", ProtocolVersion::V5, false, 60));
    h.broker.handle_drained(h.now, 1);
    // The will (immediate) goes to the watcher before the new connection's CONNACK: nothing
    // the new connection publishes can come before it [MQTT-3.1.2-8].
    let order: Vec<ConnId> = h
        .broker
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(c, Packet::Publish(_)) if *c == WATCHER => Some(*c),
            Action::Send(2, Packet::ConnAck(_)) => Some(2),
            _ => None,
        })
        .collect();
    assert_eq!(order, vec![WATCHER, 2]);
    assert!(connack(&h.take(2)).session_present);
    assert!(
        matches!(&h.take(1)[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::SESSION_TAKEN_OVER)
    );
    assert_eq!(wills_seen(&mut h), vec!["offline"]);
    // What the new connection publishes comes after, and is what stays retained.
    let mut online = publish("status/d", QoS::AtLeastOnce, 1, "online");
    if let Packet::Publish(p) = &mut online {
        p.retain = true;
    }
    h.packet(2, online);
    assert_eq!(wills_seen(&mut h), vec!["online"]);
    h.connect(3, connect("late", ProtocolVersion::V5, true));
    let got = h.packet(3, subscribe(1, "status/d", QoS::AtMostOnce));
    let retained: Vec<_> = publishes(&got).iter().map(|p| p.payload.clone()).collect();
    assert_eq!(retained, vec![Bytes::from_static(b"online")]);
}

#[test]
fn an_old_connection_that_never_answers_is_taken_over_at_the_deadline() {
    let mut h = watched(Policy::default());
    h.connect(1, device("d", ProtocolVersion::V311, false, 0));
    h.broker
        .handle_connect(h.now, 2, device("d", ProtocolVersion::V311, false, 0));
    assert_eq!(h.drains(), vec![1]);
    h.broker
        .handle_timeout(h.now + DRAIN_DEADLINE - Duration::from_millis(1));
    assert!(h.take(2).is_empty(), "still waiting");
    h.broker.handle_timeout(h.now + DRAIN_DEADLINE);
    assert!(
        connack(&h.take(2)).session_present,
        "persistent 3.1.1 session"
    );
    assert_eq!(
        h.closed(1),
        Some(CloseReason::Server(ReasonCode::SESSION_TAKEN_OVER))
    );
    assert_eq!(wills_seen(&mut h), vec!["offline"]);
    assert_eq!(h.broker.poll_timeout(), None);
}

#[test]
fn an_old_connection_lost_meanwhile_lets_the_connect_through_as_a_plain_connect() {
    let mut h = watched(Policy::default());
    h.connect(1, device("d", ProtocolVersion::V311, true, 0));
    h.broker
        .handle_connect(h.now, 2, device("d", ProtocolVersion::V311, true, 0));
    h.broker.handle_connection_lost(h.now, 1);
    assert!(!connack(&h.take(2)).session_present);
    assert_eq!(h.closed(1), None, "lost, not closed by a takeover");
    assert_eq!(wills_seen(&mut h), vec!["offline"], "lost: the will, once");
    h.broker.handle_drained(h.now, 1);
    assert_eq!(h.broker.clients_connected(), 2);
}

#[test]
fn racing_connects_for_one_client_id_are_decided_in_order_each_after_a_drain() {
    let mut h = watched(Policy::default());
    h.connect(1, connect("d", ProtocolVersion::V5, true));
    h.broker
        .handle_connect(h.now, 2, connect("d", ProtocolVersion::V5, true));
    h.broker
        .handle_connect(h.now, 3, connect("d", ProtocolVersion::V5, true));
    assert_eq!(h.drains(), vec![1], "one drain for both");
    h.now += Duration::from_millis(50);
    h.broker.handle_drained(h.now, 1);
    connack(&h.take(2));
    assert!(h.take(3).is_empty(), "3 waits for 2 to drain in turn");
    assert_eq!(h.drains(), vec![2]);
    assert_eq!(h.broker.poll_timeout(), Some(h.now + DRAIN_DEADLINE));
    h.broker.handle_drained(h.now, 2);
    connack(&h.take(3));
    // [MQTT-3.1.4-3] 2 got its CONNACK, then was taken over by 3.
    assert!(
        matches!(&h.take(2)[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::SESSION_TAKEN_OVER)
    );
    assert_eq!(h.broker.clients_connected(), 2, "watcher and 3");
}

#[test]
fn a_parked_connection_that_is_lost_is_forgotten() {
    let mut h = watched(Policy::default());
    h.connect(1, device("d", ProtocolVersion::V5, false, 60));
    h.broker
        .handle_connect(h.now, 2, device("d", ProtocolVersion::V5, false, 60));
    h.broker.handle_connection_lost(h.now, 2);
    assert!(!h.broker.is_parked(2));
    assert_eq!(h.broker.poll_timeout(), None);
    h.broker.handle_drained(h.now, 1);
    assert!(h.take(2).is_empty());
    assert!(h.take(1).is_empty(), "the old connection carries on");
    assert!(h.broker.is_connected(1));
    assert!(wills_seen(&mut h).is_empty());
}

#[test]
fn shutdown_refuses_a_parked_connect() {
    let mut h = watched(Policy::default());
    h.connect(1, connect("d", ProtocolVersion::V5, true));
    h.broker
        .handle_connect(h.now, 2, connect("d", ProtocolVersion::V5, true));
    h.broker.shutdown(ReasonCode::SERVER_SHUTTING_DOWN);
    assert_eq!(
        connack(&h.take(2)).reason,
        ReasonCode::SERVER_UNAVAILABLE,
        "[MQTT-3.2.2-7] refused, then closed"
    );
    assert_eq!(
        h.closed(2),
        Some(CloseReason::Server(ReasonCode::SERVER_UNAVAILABLE))
    );
    assert_eq!(h.broker.poll_timeout(), None);
}

#[test]
fn packets_behind_a_parked_connect_are_handled_after_its_connack() {
    let mut h = watched(Policy::default());
    h.connect(1, connect("d", ProtocolVersion::V311, true));
    h.broker
        .handle_connect(h.now, 2, connect("d", ProtocolVersion::V311, true));
    h.broker
        .handle_packet(h.now, 2, subscribe(7, "x", QoS::AtMostOnce));
    h.broker
        .handle_packet(h.now, 2, subscribe(8, "y", QoS::AtMostOnce));
    assert!(h.take(2).is_empty());
    h.broker.handle_drained(h.now, 1);
    let got = h.take(2);
    assert!(matches!(
        &got[..],
        [Packet::ConnAck(_), Packet::SubAck(s), Packet::SubAck(t)]
            if s.packet_id == 7 && t.packet_id == 8
    ));
}

#[test]
fn a_parked_connection_sending_too_much_is_decided_at_once() {
    let mut h = watched(Policy::default());
    h.connect(1, connect("d", ProtocolVersion::V311, true));
    h.broker
        .handle_connect(h.now, 2, connect("d", ProtocolVersion::V311, true));
    let big = "x".repeat(HELD_MAX_BYTES / 2);
    h.broker
        .handle_packet(h.now, 2, publish("a", QoS::AtLeastOnce, 1, &big));
    assert!(h.take(2).is_empty());
    h.broker
        .handle_packet(h.now, 2, publish("a", QoS::AtLeastOnce, 2, &big));
    let got = h.take(2);
    assert!(matches!(
        &got[..],
        [Packet::ConnAck(_), Packet::PubAck(a), Packet::PubAck(b)] if a.packet_id == 1 && b.packet_id == 2
    ));
    assert!(!h.broker.is_parked(2));
}

#[test]
fn mosquittos_rule_drops_the_will_when_a_persistent_session_is_resumed() {
    let mosquitto = Policy {
        will_on_takeover: WillOnTakeover::Mosquitto,
        ..Policy::default()
    };
    for (v, old_expiry, clean, will_expected) in [
        (ProtocolVersion::V311, 0, false, false), // 3.1.1 clean session 0 resumed
        (ProtocolVersion::V5, 60, false, false),  // 5.0 session resumed
        (ProtocolVersion::V5, 60, true, true),    // new Clean Start 1: the session ends
        (ProtocolVersion::V5, 0, false, true),    // the old session ended with its connection
    ] {
        for policy in [Policy::default(), mosquitto.clone()] {
            let spec = policy.will_on_takeover == WillOnTakeover::Spec;
            let mut h = watched(policy);
            h.connect(1, device("d", v, false, old_expiry));
            let ack = h.connect(2, device("d", v, clean, old_expiry));
            assert_eq!(
                ack.session_present,
                !clean && (old_expiry > 0 || !v.is_v5())
            );
            let expected: Vec<&str> = if spec || will_expected {
                vec!["offline"]
            } else {
                vec![]
            };
            assert_eq!(
                wills_seen(&mut h),
                expected,
                "{v:?} expiry {old_expiry} clean {clean} spec {spec}"
            );
            assert_eq!(
                h.closed(1),
                Some(CloseReason::Server(ReasonCode::SESSION_TAKEN_OVER))
            );
        }
    }
}

#[test]
fn a_delayed_will_is_dropped_by_a_resumed_session_under_either_rule() {
    // [MQTT-3.1.3-9] the session carries on: the delayed will is not sent.
    for rule in [WillOnTakeover::Spec, WillOnTakeover::Mosquitto] {
        let mut h = watched(Policy {
            will_on_takeover: rule,
            ..Policy::default()
        });
        let mut c = device("d", ProtocolVersion::V5, false, 60);
        if let Some(w) = c.will.as_mut() {
            w.properties.will_delay_interval = Some(10);
        }
        h.connect(1, c.clone());
        h.connect(2, c);
        h.advance(20);
        assert!(wills_seen(&mut h).is_empty(), "{rule:?}");
    }
}

#[test]
fn a_retained_will_at_a_takeover_is_journaled_with_the_connect_it_precedes() {
    // With a store, the CONNACK waits for the commit of the changes drained with it (the
    // shell's gate): the retained will must be among them, before the new session's change.
    let mut h = watched(Policy::default());
    h.broker.enable_journal();
    h.connect(1, device("d", ProtocolVersion::V5, false, 60));
    let mut changes = Vec::new();
    h.broker.drain_changes(&mut changes);
    changes.clear();
    h.broker
        .handle_connect(h.now, 2, device("d", ProtocolVersion::V5, false, 60));
    h.broker.handle_drained(h.now, 1);
    connack(&h.take(2));
    h.broker.drain_changes(&mut changes);
    let will_at = changes.iter().position(|c| {
        matches!(c, crate::persist::Change::Retained { message: Some(m), .. } if m.payload == "offline")
    });
    let session_at = changes.iter().rposition(
        |c| matches!(c, crate::persist::Change::Session { client_id, .. } if &**client_id == "d"),
    );
    assert!(
        matches!((will_at, session_at), (Some(w), Some(s)) if w < s),
        "{changes:?}"
    );
}
