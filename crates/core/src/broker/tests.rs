//! Tests of the broker rules without a socket: a fake clock and the actions it emits.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use makelaar_proto::*;

use super::*;

mod topic_rules;

pub(super) struct Harness {
    pub(super) broker: Broker,
    pub(super) now: Instant,
}

pub(super) fn connect(id: &str, version: ProtocolVersion, clean: bool) -> Connect {
    Connect {
        bridge: false,
        protocol: version,
        clean_start: clean,
        keep_alive: 60,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

pub(super) fn publish(topic: &str, qos: QoS, id: u16, payload: &str) -> Packet {
    Packet::Publish(Publish {
        qos,
        topic: Arc::from(topic),
        packet_id: id,
        payload: Bytes::from(payload.to_owned()),
        ..Publish::default()
    })
}

pub(super) fn subscribe(id: u16, filter: &str, qos: QoS) -> Packet {
    let opts = SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    };
    Packet::Subscribe(Subscribe {
        packet_id: id,
        filters: vec![(filter.into(), opts)],
        ..Default::default()
    })
}

impl Harness {
    pub(super) fn new() -> Harness {
        Harness::with(Limits::default())
    }

    pub(super) fn with(limits: Limits) -> Harness {
        Harness {
            broker: Broker::new(limits, Policy::default(), 7),
            now: Instant::now(),
        }
    }

    pub(super) fn advance(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
        self.broker.handle_timeout(self.now);
    }

    pub(super) fn connect(&mut self, conn: ConnId, c: Connect) -> ConnAck {
        self.broker.handle_connect(self.now, conn, c);
        self.answer_drains();
        let mut out = self.take(conn).into_iter();
        let ack = match out.next() {
            Some(Packet::ConnAck(a)) => a,
            other => panic!("expected CONNACK, got {other:?}"),
        };
        // Keep what followed the CONNACK (resent and queued messages) for `take`.
        for p in out.rev() {
            self.broker.actions.push_front(Action::Send(conn, p));
        }
        ack
    }

    pub(super) fn packet(&mut self, conn: ConnId, p: Packet) -> Vec<Packet> {
        self.broker.handle_packet(self.now, conn, p);
        self.take(conn)
    }

    /// Answers every drain asked for as a shell whose connections had nothing more.
    pub(super) fn answer_drains(&mut self) {
        while let Some(old) = self.drains().first().copied() {
            self.broker.handle_drained(self.now, old);
        }
    }

    /// The connections asked to drain since the last call (those actions are taken).
    pub(super) fn drains(&mut self) -> Vec<ConnId> {
        let mut found = Vec::new();
        self.broker.actions.retain(|a| match a {
            Action::Drain(c) => {
                found.push(*c);
                false
            }
            _ => true,
        });
        found
    }

    /// Packets sent to `conn` since the last call (actions for others are kept).
    pub(super) fn take(&mut self, conn: ConnId) -> Vec<Packet> {
        let mut mine = Vec::new();
        let mut others = Vec::new();
        while let Some(a) = self.broker.poll_action() {
            match a {
                Action::Send(c, p) if c == conn => mine.push(p),
                other => others.push(other),
            }
        }
        self.broker.actions.extend(others);
        mine
    }

    /// Why `conn` was closed, if it was.
    pub(super) fn closed(&mut self, conn: ConnId) -> Option<CloseReason> {
        let found = self.broker.actions.iter().find_map(|a| match a {
            Action::Close(c, why) if *c == conn => Some(*why),
            _ => None,
        });
        self.broker
            .actions
            .retain(|a| !matches!(a, Action::Close(c, _) if *c == conn));
        found
    }
}

pub(super) fn publishes(packets: &[Packet]) -> Vec<&Publish> {
    packets
        .iter()
        .filter_map(|p| {
            if let Packet::Publish(p) = p {
                Some(p)
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn qos1_is_acknowledged_and_delivered_at_the_lower_qos() {
    let mut h = Harness::new();
    h.connect(1, connect("sub", ProtocolVersion::V311, true));
    h.connect(2, connect("pub", ProtocolVersion::V311, true));
    let ack = h.packet(1, subscribe(1, "a/+", QoS::AtMostOnce));
    assert_eq!(
        ack,
        vec![Packet::SubAck(SubAck {
            packet_id: 1,
            reasons: vec![ReasonCode::GRANTED_QOS_0],
            ..Default::default()
        })]
    );
    let out = h.packet(2, publish("a/b", QoS::AtLeastOnce, 9, "x"));
    assert_eq!(out, vec![Packet::PubAck(PubAck::new(9))]);
    let got = h.take(1);
    let p = publishes(&got);
    assert_eq!(p.len(), 1);
    // [MQTT-3.8.4-8] delivered at min(published, granted).
    assert_eq!(
        (p[0].qos, p[0].packet_id, p[0].retain),
        (QoS::AtMostOnce, 0, false)
    );
}

#[test]
fn overlapping_subscriptions_give_one_copy_at_the_highest_qos_with_every_identifier() {
    let mut h = Harness::new();
    h.connect(1, connect("sub", ProtocolVersion::V5, true));
    for (pid, filter, qos, sid) in [
        (1, "a/#", QoS::AtLeastOnce, 1),
        (2, "a/+", QoS::ExactlyOnce, 2),
    ] {
        let mut s = match subscribe(pid, filter, qos) {
            Packet::Subscribe(s) => s,
            _ => unreachable!(),
        };
        s.properties.subscription_identifiers = vec![sid];
        h.packet(1, Packet::Subscribe(s));
    }
    h.connect(2, connect("pub", ProtocolVersion::V5, true));
    h.packet(2, publish("a/b", QoS::ExactlyOnce, 3, "x"));
    let got = h.take(1);
    let p = publishes(&got);
    assert_eq!(p.len(), 1, "[MQTT-3.3.5-1] one copy");
    assert_eq!(p[0].qos, QoS::ExactlyOnce);
    let mut ids = p[0].properties.subscription_identifiers.clone();
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2]);
}

#[test]
fn qos2_inbound_is_delivered_once_even_when_resent() {
    let mut h = Harness::new();
    h.connect(1, connect("sub", ProtocolVersion::V311, true));
    h.packet(1, subscribe(1, "t", QoS::ExactlyOnce));
    h.connect(2, connect("pub", ProtocolVersion::V311, true));
    assert_eq!(
        h.packet(2, publish("t", QoS::ExactlyOnce, 5, "x")),
        vec![Packet::PubRec(PubAck::new(5))]
    );
    let mut dup = publish("t", QoS::ExactlyOnce, 5, "x");
    if let Packet::Publish(p) = &mut dup {
        p.dup = true;
    }
    // [MQTT-4.3.3-10] acknowledged again, not delivered again.
    assert_eq!(h.packet(2, dup), vec![Packet::PubRec(PubAck::new(5))]);
    assert_eq!(
        h.packet(2, Packet::PubRel(PubAck::new(5))),
        vec![Packet::PubComp(PubAck::new(5))]
    );
    assert_eq!(publishes(&h.take(1)).len(), 1);
}

#[test]
fn outbound_qos2_handshake_frees_the_window() {
    let mut h = Harness::with(Limits {
        max_inflight_messages: 1,
        ..Limits::default()
    });
    h.connect(1, connect("sub", ProtocolVersion::V311, true));
    h.packet(1, subscribe(1, "t", QoS::ExactlyOnce));
    h.connect(2, connect("pub", ProtocolVersion::V311, true));
    h.packet(2, publish("t", QoS::AtLeastOnce, 1, "one"));
    h.packet(2, publish("t", QoS::AtLeastOnce, 2, "two"));
    let got = h.take(1);
    let first = publishes(&got);
    assert_eq!(first.len(), 1, "window of one");
    let pid = first[0].packet_id;
    assert_eq!(first[0].qos, QoS::AtLeastOnce);
    let after = h.packet(1, Packet::PubAck(PubAck::new(pid)));
    let second = publishes(&after);
    assert_eq!(second.len(), 1);
    assert_eq!(&second[0].payload[..], b"two");
}

#[test]
fn persistent_session_queues_while_offline_and_resends_unacked_with_dup() {
    let mut h = Harness::new();
    let ack = h.connect(1, connect("sub", ProtocolVersion::V311, false));
    assert!(!ack.session_present);
    h.packet(1, subscribe(1, "t", QoS::AtLeastOnce));
    h.connect(2, connect("pub", ProtocolVersion::V311, true));
    h.packet(2, publish("t", QoS::AtLeastOnce, 1, "inflight"));
    let got = h.take(1);
    let pid = publishes(&got)[0].packet_id;
    h.broker.handle_connection_lost(h.now, 1);
    h.packet(2, publish("t", QoS::AtLeastOnce, 2, "queued"));
    h.packet(2, publish("t", QoS::AtMostOnce, 0, "qos0-not-queued"));
    let ack = h.connect(3, connect("sub", ProtocolVersion::V311, false));
    assert!(ack.session_present, "[MQTT-3.2.2-2]");
    let got = h.take(3);
    let p = publishes(&got);
    assert_eq!(p.len(), 2);
    // [MQTT-4.4.0-1] the unacknowledged one first, same id, DUP set.
    assert_eq!(
        (p[0].packet_id, p[0].dup, &p[0].payload[..]),
        (pid, true, &b"inflight"[..])
    );
    assert_eq!((&p[1].payload[..], p[1].dup), (&b"queued"[..], false));
}

#[test]
fn queue_is_bounded_by_max_queued_messages() {
    let mut h = Harness::with(Limits {
        max_queued_messages: 3,
        ..Limits::default()
    });
    h.connect(1, connect("sub", ProtocolVersion::V311, false));
    h.packet(1, subscribe(1, "t", QoS::AtLeastOnce));
    h.broker.handle_connection_lost(h.now, 1);
    h.connect(2, connect("pub", ProtocolVersion::V311, true));
    for i in 1..=10 {
        h.packet(2, publish("t", QoS::AtLeastOnce, i, "m"));
    }
    assert_eq!(h.broker.stats().dropped_queue_full, 7);
    h.connect(3, connect("sub", ProtocolVersion::V311, false));
    assert_eq!(publishes(&h.take(3)).len(), 3);
}

#[test]
fn clean_session_discards_state_and_takeover_closes_the_old_connection() {
    let mut h = Harness::new();
    h.connect(1, connect("c", ProtocolVersion::V5, false));
    h.packet(1, subscribe(1, "t", QoS::AtLeastOnce));
    let ack = h.connect(2, connect("c", ProtocolVersion::V5, true));
    assert!(!ack.session_present);
    // [MQTT-3.1.4-3] the old connection is told 0x8E and closed.
    let old = h.take(1);
    assert!(
        matches!(&old[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::SESSION_TAKEN_OVER)
    );
    assert_eq!(
        h.closed(1),
        Some(CloseReason::Server(ReasonCode::SESSION_TAKEN_OVER))
    );
    assert_eq!(h.broker.subscription_count(), 0);
}

#[test]
fn close_reasons_say_who_ended_the_connection() {
    let mut h = Harness::new();
    h.connect(1, connect("a", ProtocolVersion::V311, true));
    h.packet(1, Packet::Disconnect(Disconnect::default()));
    assert_eq!(
        h.closed(1),
        Some(CloseReason::ClientDisconnect(
            ReasonCode::NORMAL_DISCONNECTION
        ))
    );
    // A 3.1.1 client taken over is not told, but the reason is known.
    h.connect(2, connect("b", ProtocolVersion::V311, true));
    h.connect(3, connect("b", ProtocolVersion::V311, true));
    assert!(h.take(2).is_empty());
    assert_eq!(
        h.closed(2),
        Some(CloseReason::Server(ReasonCode::SESSION_TAKEN_OVER))
    );
    h.broker.shutdown(ReasonCode::SERVER_SHUTTING_DOWN);
    assert_eq!(
        h.closed(3),
        Some(CloseReason::Server(ReasonCode::SERVER_SHUTTING_DOWN))
    );
}

#[test]
fn a_clean_session_taken_over_by_a_persistent_connect_is_not_present() {
    // [MQTT-3.1.2-6] a CleanSession 1 session lasts as long as its connection: the takeover
    // closes that connection, so the persistent CONNECT that caused it finds no session.
    let mut h = Harness::new();
    h.connect(1, connect("c", ProtocolVersion::V311, true));
    h.packet(1, subscribe(1, "t", QoS::AtLeastOnce));
    let ack = h.connect(2, connect("c", ProtocolVersion::V311, false));
    assert!(!ack.session_present, "[MQTT-3.2.2-2]");
    assert_eq!(
        h.closed(1),
        Some(CloseReason::Server(ReasonCode::SESSION_TAKEN_OVER))
    );
    assert_eq!(h.broker.subscription_count(), 0);
}

#[test]
fn will_is_published_on_loss_not_on_disconnect_and_v5_0x04_sends_it() {
    let mut h = Harness::new();
    h.connect(9, connect("watcher", ProtocolVersion::V5, true));
    h.packet(9, subscribe(1, "wills/#", QoS::AtLeastOnce));
    let with_will = |id: &str| {
        let mut c = connect(id, ProtocolVersion::V5, true);
        c.will = Some(Will {
            topic: format!("wills/{id}"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::default(),
        });
        c
    };
    h.connect(1, with_will("lost"));
    h.broker.handle_connection_lost(h.now, 1);
    h.connect(2, with_will("polite"));
    h.packet(2, Packet::Disconnect(Disconnect::default()));
    h.connect(3, with_will("with-will"));
    h.packet(
        3,
        Packet::Disconnect(Disconnect {
            reason: ReasonCode::DISCONNECT_WITH_WILL,
            ..Default::default()
        }),
    );
    let got = h.take(9);
    let topics: Vec<&str> = publishes(&got).iter().map(|p| &*p.topic).collect();
    assert_eq!(topics, vec!["wills/lost", "wills/with-will"]);
}

#[test]
fn will_delay_waits_and_is_cancelled_by_reconnect_but_sent_when_session_ends_first() {
    let mut h = Harness::new();
    h.connect(9, connect("watcher", ProtocolVersion::V5, true));
    h.packet(9, subscribe(1, "w/#", QoS::AtMostOnce));
    let client = |id: &str, delay: u32, expiry: u32| {
        let mut c = connect(id, ProtocolVersion::V5, true);
        c.properties.session_expiry_interval = Some(expiry);
        let props = Properties {
            will_delay_interval: Some(delay),
            ..Properties::default()
        };
        c.will = Some(Will {
            topic: format!("w/{id}"),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: props,
        });
        c
    };
    h.connect(1, client("delayed", 5, 100));
    h.connect(2, client("returns", 5, 100));
    h.connect(3, client("expires", 50, 2));
    for c in 1..=3 {
        h.broker.handle_connection_lost(h.now, c);
    }
    assert!(publishes(&h.take(9)).is_empty());
    let mut back = client("returns", 5, 100);
    back.clean_start = false;
    h.connect(4, back);
    h.advance(3);
    let got = h.take(9);
    // Session expiry (2 s) comes before the will delay (50 s): sent when the session ends.
    assert_eq!(
        publishes(&got)
            .iter()
            .map(|p| &*p.topic)
            .collect::<Vec<_>>(),
        vec!["w/expires"]
    );
    h.advance(3);
    let got = h.take(9);
    assert_eq!(
        publishes(&got)
            .iter()
            .map(|p| &*p.topic)
            .collect::<Vec<_>>(),
        vec!["w/delayed"]
    );
}

#[test]
fn retained_messages_are_sent_at_subscribe_and_cleared_by_empty_payload() {
    let mut h = Harness::new();
    h.connect(1, connect("pub", ProtocolVersion::V311, true));
    for (topic, payload) in [("r/a", "1"), ("r/b", "2"), ("r/a", "3")] {
        let mut p = publish(topic, QoS::AtMostOnce, 0, payload);
        if let Packet::Publish(p) = &mut p {
            p.retain = true;
        }
        h.packet(1, p);
    }
    h.connect(2, connect("late", ProtocolVersion::V311, true));
    let got = h.packet(2, subscribe(1, "r/#", QoS::AtLeastOnce));
    let mut seen: Vec<(String, bool)> = publishes(&got)
        .iter()
        .map(|p| (String::from_utf8_lossy(&p.payload).into(), p.retain))
        .collect();
    seen.sort();
    // [MQTT-3.3.1-8] retain flag set; one message per topic, the latest.
    assert_eq!(seen, vec![("2".into(), true), ("3".into(), true)]);
    let mut clear = publish("r/a", QoS::AtMostOnce, 0, "");
    if let Packet::Publish(p) = &mut clear {
        p.retain = true;
    }
    h.packet(1, clear);
    assert_eq!(
        h.broker.retained_count(),
        1,
        "[MQTT-3.3.1-10] empty payload clears"
    );
}

#[test]
fn message_expiry_drops_stale_queued_messages_and_forwards_the_remaining_interval() {
    let mut h = Harness::new();
    let mut c = connect("sub", ProtocolVersion::V5, false);
    c.properties.session_expiry_interval = Some(100);
    h.connect(1, c.clone());
    h.packet(1, subscribe(1, "t", QoS::AtLeastOnce));
    h.broker.handle_connection_lost(h.now, 1);
    h.connect(2, connect("pub", ProtocolVersion::V5, true));
    for (pid, expiry) in [(1, 2), (2, 10)] {
        let mut p = publish("t", QoS::AtLeastOnce, pid, "m");
        if let Packet::Publish(p) = &mut p {
            p.properties.message_expiry_interval = Some(expiry);
        }
        h.packet(2, p);
    }
    h.advance(4);
    h.connect(3, c);
    let got = h.take(3);
    let p = publishes(&got);
    assert_eq!(
        p.len(),
        1,
        "[MQTT-3.3.2-5] the expired one is not delivered"
    );
    assert_eq!(
        p[0].properties.message_expiry_interval,
        Some(6),
        "[MQTT-3.3.2-6]"
    );
}

#[test]
fn shared_subscription_sends_each_message_to_one_member_and_moves_unacked_ones() {
    let mut h = Harness::new();
    h.connect(1, connect("m1", ProtocolVersion::V5, true));
    h.connect(2, connect("m2", ProtocolVersion::V5, true));
    h.packet(1, subscribe(1, "$share/g/job", QoS::AtLeastOnce));
    h.packet(2, subscribe(1, "$share/g/job", QoS::AtLeastOnce));
    h.connect(3, connect("pub", ProtocolVersion::V5, true));
    for i in 1..=4 {
        h.packet(3, publish("job", QoS::AtLeastOnce, i, "w"));
    }
    let (a, b) = (h.take(1), h.take(2));
    assert_eq!(publishes(&a).len() + publishes(&b).len(), 4);
    assert_eq!(publishes(&a).len(), 2, "round-robin");
    // m1 leaves without acknowledging: its two go to m2.
    h.broker.handle_connection_lost(h.now, 1);
    assert_eq!(publishes(&h.take(2)).len(), 2);
}

#[test]
fn no_local_and_retain_as_published() {
    let mut h = Harness::new();
    h.connect(1, connect("c", ProtocolVersion::V5, true));
    let opts = SubscriptionOptions {
        qos: QoS::AtMostOnce,
        no_local: true,
        retain_as_published: true,
        ..Default::default()
    };
    h.packet(
        1,
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![("t".into(), opts)],
            ..Default::default()
        }),
    );
    h.connect(2, connect("other", ProtocolVersion::V5, true));
    h.packet(2, subscribe(1, "t", QoS::AtMostOnce));
    let mut p = publish("t", QoS::AtMostOnce, 0, "x");
    if let Packet::Publish(p) = &mut p {
        p.retain = true;
    }
    h.packet(1, p);
    assert!(publishes(&h.take(1)).is_empty(), "[MQTT-3.8.3-3] no-local");
    let got = h.take(2);
    assert!(
        !publishes(&got)[0].retain,
        "[MQTT-3.3.1-12] live delivery clears retain"
    );
}

#[test]
fn client_id_rules() {
    let mut h = Harness::new();
    // [MQTT-3.1.3-8] 3.1.1: empty id without clean session is refused with 0x02.
    let ack = h.connect(1, connect("", ProtocolVersion::V311, false));
    assert_eq!(ack.reason, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
    assert_eq!(
        h.closed(1),
        Some(CloseReason::Server(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID))
    );
    // 5.0: assigned.
    let ack = h.connect(2, connect("", ProtocolVersion::V5, true));
    assert!(
        ack.reason == ReasonCode::SUCCESS && ack.properties.assigned_client_identifier.is_some()
    );
    // No authentication method is configured.
    let mut c = connect("x", ProtocolVersion::V5, true);
    c.properties.authentication_method = Some("SCRAM".into());
    assert_eq!(
        h.connect(3, c).reason,
        ReasonCode::BAD_AUTHENTICATION_METHOD
    );
}

#[test]
fn invalid_shared_filters_get_their_own_suback_codes() {
    // Malformed filters (`a/#/b`) never get here: the decoder refuses them (section 4.7). A
    // well-formed one that is no valid shared subscription [MQTT-4.8.2-1] [MQTT-4.8.2-2] is
    // refused per filter.
    let mut h = Harness::new();
    h.connect(1, connect("c", ProtocolVersion::V5, true));
    let opts = SubscriptionOptions::default();
    let filters = vec![("$share//b".into(), opts), ("ok/+".into(), opts)];
    let got = h.packet(
        1,
        Packet::Subscribe(Subscribe {
            packet_id: 4,
            filters,
            ..Default::default()
        }),
    );
    let Packet::SubAck(ack) = &got[0] else {
        panic!()
    };
    assert_eq!(
        ack.reasons,
        vec![ReasonCode::TOPIC_FILTER_INVALID, ReasonCode::GRANTED_QOS_0]
    );
    let got = h.packet(
        1,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 5,
            filters: vec!["ok/+".into(), "never".into(), "$share/g".into()],
            ..Default::default()
        }),
    );
    let Packet::UnsubAck(ack) = &got[0] else {
        panic!()
    };
    assert_eq!(
        ack.reasons,
        vec![
            ReasonCode::SUCCESS,
            ReasonCode::NO_SUBSCRIPTION_EXISTED,
            ReasonCode::TOPIC_FILTER_INVALID
        ]
    );
}

#[test]
fn too_large_for_the_client_is_not_sent() {
    let mut h = Harness::new();
    let mut c = connect("small", ProtocolVersion::V5, true);
    c.properties.maximum_packet_size = Some(50);
    h.connect(1, c);
    h.packet(1, subscribe(1, "t", QoS::AtMostOnce));
    h.connect(2, connect("pub", ProtocolVersion::V5, true));
    h.packet(2, publish("t", QoS::AtMostOnce, 0, &"x".repeat(100)));
    h.packet(2, publish("t", QoS::AtMostOnce, 0, "small"));
    let got = h.take(1);
    let p = publishes(&got);
    assert_eq!(p.len(), 1, "[MQTT-3.1.2-25]");
    assert_eq!(&p[0].payload[..], b"small");
}

#[test]
fn session_expiry_removes_the_session() {
    let mut h = Harness::new();
    let mut c = connect("c", ProtocolVersion::V5, false);
    c.properties.session_expiry_interval = Some(2);
    h.connect(1, c.clone());
    h.packet(1, subscribe(1, "t", QoS::AtLeastOnce));
    h.broker.handle_connection_lost(h.now, 1);
    assert_eq!(h.broker.sessions_total(), 1);
    h.advance(3);
    assert_eq!(h.broker.sessions_total(), 0);
    assert_eq!(h.broker.subscription_count(), 0);
    assert!(!h.connect(2, c).session_present);
}

#[test]
fn clients_cannot_publish_into_sys() {
    let mut h = Harness::new();
    h.connect(1, connect("watch", ProtocolVersion::V5, true));
    h.packet(1, subscribe(1, "$SYS/#", QoS::AtMostOnce));
    h.connect(2, connect("faker", ProtocolVersion::V5, true));
    let out = h.packet(
        2,
        publish("$SYS/broker/uptime", QoS::AtLeastOnce, 3, "fake"),
    );
    assert!(matches!(&out[..], [Packet::PubAck(a)] if a.reason == ReasonCode::NOT_AUTHORIZED));
    assert!(publishes(&h.take(1)).is_empty());
    h.broker.publish_internal(
        h.now,
        "$SYS/broker/uptime",
        Bytes::from_static(b"1 seconds"),
    );
    assert_eq!(
        publishes(&h.take(1)).len(),
        1,
        "the broker's own figures still flow"
    );
}

#[test]
fn expired_retained_messages_are_not_sent_and_are_purged() {
    let mut h = Harness::new();
    h.connect(1, connect("pub", ProtocolVersion::V5, true));
    let mut p = publish("r/t", QoS::AtMostOnce, 0, "short-lived");
    if let Packet::Publish(p) = &mut p {
        p.retain = true;
        p.properties.message_expiry_interval = Some(1);
    }
    h.packet(1, p);
    h.advance(2);
    h.connect(2, connect("late", ProtocolVersion::V5, true));
    assert!(publishes(&h.packet(2, subscribe(1, "r/#", QoS::AtMostOnce))).is_empty());
    assert_eq!(h.broker.retained_count(), 0);
}

#[test]
fn a_subscriber_behind_slows_publishers_down_instead_of_losing_acked_messages() {
    let mut h = Harness::with(Limits {
        max_queued_messages: 2,
        max_inflight_messages: 1,
        ..Limits::default()
    });
    h.connect(1, connect("slow", ProtocolVersion::V311, true));
    h.packet(1, subscribe(1, "t", QoS::AtLeastOnce));
    h.connect(2, connect("pub", ProtocolVersion::V311, true));
    let mut acks = 0;
    for i in 1..=6 {
        acks += h.packet(2, publish("t", QoS::AtLeastOnce, i, "m")).len();
    }
    // One in flight, two queued within the limit: those three are acked at once; the other
    // three are kept (queue over its limit) with their acks held back.
    assert_eq!(acks, 3);
    assert_eq!(h.broker.stats().dropped_queue_full, 0);
    let mut delivered = publishes(&h.take(1))
        .iter()
        .map(|p| p.packet_id)
        .collect::<Vec<_>>();
    let mut released = 0;
    while let Some(&pid) = delivered.last() {
        h.broker
            .handle_packet(h.now, 1, Packet::PubAck(PubAck::new(pid)));
        released += h.take(2).len();
        delivered = publishes(&h.take(1)).iter().map(|p| p.packet_id).collect();
        if delivered.is_empty() {
            break;
        }
    }
    assert_eq!(released, 3, "held acks go out as the subscriber catches up");
}

#[test]
fn held_acks_are_released_when_the_subscriber_leaves() {
    let mut h = Harness::with(Limits {
        max_queued_messages: 1,
        max_inflight_messages: 1,
        ..Limits::default()
    });
    h.connect(1, connect("slow", ProtocolVersion::V311, false));
    h.packet(1, subscribe(1, "t", QoS::AtLeastOnce));
    h.connect(2, connect("pub", ProtocolVersion::V311, true));
    let sent: usize = (1..=4)
        .map(|i| h.packet(2, publish("t", QoS::AtLeastOnce, i, "m")).len())
        .sum();
    assert_eq!(sent, 2);
    h.broker.handle_connection_lost(h.now, 1);
    assert_eq!(h.take(2).len(), 2);
}

#[path = "journal_tests.rs"]
mod journal_tests;
