//! Rules about topics: how deep they may be (`max_topic_levels`), which of them are the
//! broker's own `$SYS` (by level, with the bridge-state exception), and retained messages that
//! expire on their own timer.

use super::*;

use crate::persist::Change;

/// A topic of `levels` levels.
fn deep(levels: usize) -> String {
    vec!["l"; levels].join("/")
}

fn limited(max_topic_levels: usize) -> Harness {
    Harness::with(Limits {
        max_topic_levels,
        ..Limits::default()
    })
}

fn disconnect(reason: ReasonCode) -> Packet {
    Packet::Disconnect(Disconnect {
        reason,
        ..Disconnect::default()
    })
}

fn retained(topic: &str, payload: &str, qos: QoS, id: u16, expiry: Option<u32>) -> Packet {
    let mut p = publish(topic, qos, id, payload);
    if let Packet::Publish(p) = &mut p {
        p.retain = true;
        p.properties.message_expiry_interval = expiry;
    }
    p
}

fn filters(id: u16, filters: &[&str]) -> Packet {
    let opts = SubscriptionOptions::default();
    Packet::Subscribe(Subscribe {
        packet_id: id,
        filters: filters.iter().map(|f| ((*f).to_owned(), opts)).collect(),
        ..Default::default()
    })
}

fn unsubscribe(id: u16, filters: &[&str]) -> Packet {
    Packet::Unsubscribe(Unsubscribe {
        packet_id: id,
        filters: filters.iter().map(|f| (*f).to_owned()).collect(),
        ..Default::default()
    })
}

fn with_will(id: &str, version: ProtocolVersion, topic: &str, payload: &'static str) -> Connect {
    let mut c = connect(id, version, true);
    c.will = Some(Will {
        topic: topic.into(),
        payload: Bytes::from_static(payload.as_bytes()),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Properties::default(),
    });
    c
}

fn retained_payload(h: &Harness, topic: &str) -> Option<Bytes> {
    h.broker.retained.get(topic).map(|m| m.payload.clone())
}

// ---- max_topic_levels ------------------------------------------------------------------------

#[test]
fn a_topic_name_deeper_than_max_topic_levels_closes_the_connection() {
    let mut h = Harness::new();
    assert_eq!(h.broker.limits().max_topic_levels, 200);
    h.connect(1, connect("sub", ProtocolVersion::V5, true));
    h.packet(1, subscribe(1, "#", QoS::AtMostOnce));
    // 5.0: DISCONNECT 0x90 Topic Name invalid, "correctly formed, but not accepted"
    // (section 3.14.2.1); nothing is routed.
    h.connect(2, connect("deep", ProtocolVersion::V5, true));
    let out = h.packet(2, publish(&deep(201), QoS::AtLeastOnce, 1, "x"));
    assert_eq!(out, vec![disconnect(ReasonCode::TOPIC_NAME_INVALID)]);
    let why = CloseReason::Server(ReasonCode::TOPIC_NAME_INVALID);
    assert_eq!(h.closed(2), Some(why));
    assert!(publishes(&h.take(1)).is_empty());
    // 3.1.1 has no way to say so: the connection is closed [MQTT-4.8.0-1].
    h.connect(3, connect("deep311", ProtocolVersion::V311, true));
    assert!(h
        .packet(3, publish(&deep(201), QoS::AtMostOnce, 0, "x"))
        .is_empty());
    assert_eq!(h.closed(3), Some(why));
    // Exactly at the limit is fine.
    h.connect(4, connect("ok", ProtocolVersion::V5, true));
    let out = h.packet(4, publish(&deep(200), QoS::AtLeastOnce, 1, "x"));
    assert_eq!(out, vec![Packet::PubAck(PubAck::new(1))]);
    assert_eq!(h.closed(4), None);
    assert_eq!(publishes(&h.take(1)).len(), 1);
}

#[test]
fn a_filter_deeper_than_max_topic_levels_refuses_the_whole_subscribe() {
    let mut h = Harness::new();
    h.connect(1, connect("c5", ProtocolVersion::V5, true));
    // 65,536 levels: refused before the topic tree sees it, with the good filter beside it.
    let deepest = "/".repeat(65_535);
    let out = h.packet(1, filters(1, &["ok/+", &deepest]));
    // 5.0 DISCONNECT 0x8F Topic Filter invalid: "correctly formed, but is not accepted by
    // this Server" (section 3.14.2.1).
    assert_eq!(out, vec![disconnect(ReasonCode::TOPIC_FILTER_INVALID)]);
    let why = CloseReason::Server(ReasonCode::TOPIC_FILTER_INVALID);
    assert_eq!(h.closed(1), Some(why));
    assert_eq!(h.broker.subscription_count(), 0);
    assert_eq!(h.broker.subs.node_count(), 0);

    let mut h = limited(3);
    // A persistent session, so what it holds outlives the connection.
    h.connect(2, connect("c311", ProtocolVersion::V311, false));
    let out = h.packet(2, filters(1, &["+/+/#"]));
    assert!(matches!(&out[..], [Packet::SubAck(a)] if a.reasons == [ReasonCode::GRANTED_QOS_0]));
    // A shared subscription counts as sent, `$share/GROUP/` included.
    assert!(h.packet(2, filters(2, &["$share/g/a/b"])).is_empty());
    assert_eq!(h.closed(2), Some(why));
    assert_eq!(h.broker.subscription_count(), 1);
}

#[test]
fn an_unsubscribe_deeper_than_max_topic_levels_closes_the_connection() {
    let mut h = limited(3);
    h.connect(1, connect("c5", ProtocolVersion::V5, true));
    h.packet(1, subscribe(1, "a/b", QoS::AtMostOnce));
    let out = h.packet(1, unsubscribe(2, &["a/b", "a/b/c/d"]));
    assert_eq!(out, vec![disconnect(ReasonCode::TOPIC_FILTER_INVALID)]);
    let why = CloseReason::Server(ReasonCode::TOPIC_FILTER_INVALID);
    assert_eq!(h.closed(1), Some(why));
    h.connect(2, connect("c311", ProtocolVersion::V311, true));
    assert!(h.packet(2, unsubscribe(1, &["a/b/c/d"])).is_empty());
    assert_eq!(h.closed(2), Some(why));
}

#[test]
fn a_will_topic_deeper_than_max_topic_levels_refuses_the_connect() {
    let mut h = limited(3);
    // 5.0 CONNACK 0x90: "The Will Topic Name is not malformed, but is not accepted by this
    // Server" (section 3.2.2.2).
    let ack = h.connect(1, with_will("w5", ProtocolVersion::V5, "a/b/c/d", "gone"));
    assert_eq!(ack.reason, ReasonCode::TOPIC_NAME_INVALID);
    let why = CloseReason::Server(ReasonCode::TOPIC_NAME_INVALID);
    assert_eq!(h.closed(1), Some(why));
    let ack = h.connect(
        2,
        with_will("w311", ProtocolVersion::V311, "a/b/c/d", "gone"),
    );
    assert!(ack.reason.is_error());
    assert_eq!(h.closed(2), Some(why));
    assert_eq!(h.broker.sessions_total(), 0);
    let ack = h.connect(3, with_will("ok", ProtocolVersion::V5, "a/b/c", "gone"));
    assert_eq!(ack.reason, ReasonCode::SUCCESS);
}

#[test]
fn max_topic_levels_zero_means_no_limit() {
    let mut h = limited(0);
    let deepest = "/".repeat(65_535);
    h.connect(1, connect("sub", ProtocolVersion::V5, true));
    let out = h.packet(1, filters(1, &[&deepest]));
    assert!(matches!(&out[..], [Packet::SubAck(a)] if a.reasons == [ReasonCode::GRANTED_QOS_0]));
    h.connect(2, connect("pub", ProtocolVersion::V5, true));
    h.packet(2, publish(&deepest, QoS::AtMostOnce, 0, "x"));
    assert_eq!(publishes(&h.take(1)).len(), 1);
}

// ---- $SYS ------------------------------------------------------------------------------------

#[test]
fn topics_that_only_start_with_sys_are_ordinary_topics() {
    let mut h = Harness::new();
    h.broker.enable_journal();
    h.connect(1, connect("sub", ProtocolVersion::V5, true));
    h.packet(1, filters(1, &["$SYSTEM/#", "$SYSX"]));
    h.connect(2, connect("pub", ProtocolVersion::V5, true));
    for (id, topic) in [(1, "$SYSTEM/x"), (2, "$SYSX")] {
        let out = h.packet(2, retained(topic, "mine", QoS::AtLeastOnce, id, None));
        assert_eq!(out, vec![Packet::PubAck(PubAck::new(id))], "{topic}");
        assert_eq!(retained_payload(&h, topic).as_deref(), Some(&b"mine"[..]));
    }
    assert_eq!(publishes(&h.take(1)).len(), 2);
    // Kept in the store like any retained message; `$SYS` itself is not.
    let mut changes = Vec::new();
    h.broker.drain_changes(&mut changes);
    let kept: Vec<&str> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Retained { topic, .. } => Some(&**topic),
            _ => None,
        })
        .collect();
    assert_eq!(kept, ["$SYSTEM/x", "$SYSX"]);
}

#[test]
fn a_mosquitto_bridge_reports_its_state_under_sys() {
    let mut h = Harness::new();
    h.connect(1, connect("watch", ProtocolVersion::V5, true));
    h.packet(1, subscribe(1, "$SYS/#", QoS::AtLeastOnce));
    let state = "$SYS/broker/connection/edge-1/state";
    // The bridge leaves a retained will `0` and publishes a retained `1` once connected.
    let ack = h.connect(2, with_will("edge-1", ProtocolVersion::V311, state, "0"));
    assert_eq!(ack.reason, ReasonCode::SUCCESS);
    let out = h.packet(2, retained(state, "1", QoS::AtLeastOnce, 1, None));
    assert_eq!(out, vec![Packet::PubAck(PubAck::new(1))]);
    assert_eq!(retained_payload(&h, state).as_deref(), Some(&b"1"[..]));
    let got = h.take(1);
    let p = publishes(&got);
    assert_eq!((p.len(), &*p[0].topic), (1, state));
    // The rest of `$SYS` stays the broker's.
    for (id, topic) in [
        (2, "$SYS/broker/connection/edge-1/other"),
        (3, "$SYS/broker/connection/a/b/state"),
        (4, "$SYS/broker/uptime"),
    ] {
        h.packet(2, retained(topic, "fake", QoS::AtLeastOnce, id, None));
        assert_eq!(retained_payload(&h, topic), None, "{topic}");
    }
    assert!(publishes(&h.take(1)).is_empty());
    // Its connection lost: the will says so.
    h.broker.handle_connection_lost(h.now, 2);
    assert_eq!(retained_payload(&h, state).as_deref(), Some(&b"0"[..]));
    assert_eq!(publishes(&h.take(1)).len(), 1);
}

#[test]
fn bridge_state_is_checked_by_the_authorizer_like_any_write() {
    let mut h = Harness::new();
    let only_edge = |client_id: &str, _: Option<&str>, _: &str, access: Access| {
        access != Access::Write || client_id == "edge-1"
    };
    h.broker.set_authorizer(Some(Box::new(only_edge)));
    let state = "$SYS/broker/connection/edge-1/state";
    h.connect(1, connect("intruder", ProtocolVersion::V5, true));
    let out = h.packet(1, retained(state, "1", QoS::AtLeastOnce, 1, None));
    assert!(matches!(&out[..], [Packet::PubAck(a)] if a.reason == ReasonCode::NOT_AUTHORIZED));
    assert_eq!(retained_payload(&h, state), None);
    h.connect(2, connect("edge-1", ProtocolVersion::V5, true));
    h.packet(2, retained(state, "1", QoS::AtLeastOnce, 1, None));
    assert_eq!(retained_payload(&h, state).as_deref(), Some(&b"1"[..]));
}

// ---- retained messages expire on their own timer ------------------------------------------

#[test]
fn retained_messages_expire_on_their_own_timer() {
    let mut h = Harness::with(Limits {
        max_retained_messages: 1,
        ..Limits::default()
    });
    h.broker.enable_journal();
    let start = h.now;
    assert_eq!(h.broker.poll_timeout(), None);
    h.connect(1, connect("pub", ProtocolVersion::V5, true));
    h.packet(
        1,
        retained("r/a", "short-lived", QoS::AtMostOnce, 0, Some(10)),
    );
    assert_eq!(h.broker.retained_count(), 1);
    // The core asks for a timer at the expiry instant, without any `$SYS` tick.
    assert_eq!(
        h.broker.poll_timeout(),
        Some(start + Duration::from_secs(10))
    );
    // Full: another topic's retained message is not kept.
    h.packet(1, retained("r/b", "later", QoS::AtMostOnce, 0, None));
    assert_eq!(retained_payload(&h, "r/b"), None);
    h.advance(9);
    assert_eq!(h.broker.retained_count(), 1);
    h.advance(1);
    assert_eq!(h.broker.retained_count(), 0);
    assert_eq!(h.broker.retained_bytes(), 0);
    assert_eq!(h.broker.poll_timeout(), None);
    let mut changes = Vec::new();
    h.broker.drain_changes(&mut changes);
    assert!(matches!(
        changes.last(),
        Some(Change::Retained { topic, message: None }) if &**topic == "r/a"
    ));
    // The room it took is free again.
    h.packet(1, retained("r/b", "later", QoS::AtMostOnce, 0, None));
    assert_eq!(retained_payload(&h, "r/b").as_deref(), Some(&b"later"[..]));
}

#[test]
fn a_replaced_or_cleared_retained_message_no_longer_sets_the_timer() {
    let mut h = Harness::new();
    let start = h.now;
    h.connect(1, connect("pub", ProtocolVersion::V5, true));
    h.packet(1, retained("r/a", "1", QoS::AtMostOnce, 0, Some(5)));
    h.packet(1, retained("r/b", "1", QoS::AtMostOnce, 0, Some(8)));
    h.packet(1, retained("r/a", "2", QoS::AtMostOnce, 0, None));
    assert_eq!(
        h.broker.poll_timeout(),
        Some(start + Duration::from_secs(8))
    );
    h.packet(1, retained("r/b", "", QoS::AtMostOnce, 0, None));
    assert_eq!(h.broker.poll_timeout(), None);
    h.advance(100);
    assert_eq!(retained_payload(&h, "r/a").as_deref(), Some(&b"2"[..]));
}
