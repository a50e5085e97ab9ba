//! The authorization hook: PUBLISH, SUBSCRIBE, delivery, retained messages and wills.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use makelaar_proto::*;

use super::*;

/// Anonymous clients: read and write `pub/#`. User `alice`: read and write `a/#`, read
/// `pub/#`. Nobody may subscribe to `secret/#`. Client id `spy` may read nothing.
fn rules(client_id: &str, username: Option<&str>, topic: &str, access: Access) -> bool {
    use makelaar_proto::topic::filter_matches;
    if client_id == "spy" && access == Access::Read {
        return false;
    }
    match access {
        Access::Subscribe => !filter_matches("secret/#", topic),
        Access::Read => match username {
            Some("alice") => filter_matches("a/#", topic) || filter_matches("pub/#", topic),
            _ => filter_matches("pub/#", topic),
        },
        Access::Write => match username {
            Some("alice") => filter_matches("a/#", topic),
            _ => filter_matches("pub/#", topic),
        },
    }
}

struct H {
    broker: Broker,
    now: Instant,
}

impl H {
    fn new() -> H {
        let mut broker = Broker::new(Limits::default(), Policy::default(), 1);
        broker.set_authorizer(Some(Box::new(rules)));
        H {
            broker,
            now: Instant::now(),
        }
    }

    fn connect(&mut self, conn: ConnId, id: &str, user: Option<&str>, v: ProtocolVersion) {
        self.connect_with(conn, id, user, v, true, None);
    }

    fn connect_with(
        &mut self,
        conn: ConnId,
        id: &str,
        user: Option<&str>,
        v: ProtocolVersion,
        clean: bool,
        will: Option<Will>,
    ) {
        let mut properties = Properties::default();
        if v.is_v5() && !clean {
            properties.session_expiry_interval = Some(600);
        }
        let c = Connect {
            bridge: false,
            protocol: v,
            clean_start: clean,
            keep_alive: 0,
            client_id: id.into(),
            will,
            username: user.map(str::to_owned),
            password: None,
            properties,
        };
        self.broker.handle_connect(self.now, conn, c);
        match self.take(conn).first() {
            Some(Packet::ConnAck(a)) => assert_eq!(a.reason, ReasonCode::SUCCESS),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    fn send(&mut self, conn: ConnId, p: Packet) -> Vec<Packet> {
        self.broker.handle_packet(self.now, conn, p);
        self.take(conn)
    }

    fn take(&mut self, conn: ConnId) -> Vec<Packet> {
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

    fn subscribe(&mut self, conn: ConnId, filter: &str) -> ReasonCode {
        let opts = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            ..SubscriptionOptions::default()
        };
        let s = Subscribe {
            packet_id: 1,
            filters: vec![(filter.into(), opts)],
            ..Subscribe::default()
        };
        let mut out = self.send(conn, Packet::Subscribe(s)).into_iter();
        let reason = match out.next() {
            Some(Packet::SubAck(a)) => a.reasons[0],
            other => panic!("expected SUBACK, got {other:?}"),
        };
        // Retained messages that followed: kept for `topics_for`.
        for p in out {
            self.broker.actions.push_back(Action::Send(conn, p));
        }
        reason
    }

    /// Publishes at `qos` (packet id 1, `retain`) and returns the acknowledgement.
    fn publish(&mut self, conn: ConnId, topic: &str, qos: QoS, retain: bool) -> Option<Packet> {
        let p = Publish {
            qos,
            retain,
            topic: Arc::from(topic),
            packet_id: if qos == QoS::AtMostOnce { 0 } else { 1 },
            payload: Bytes::from_static(b"m"),
            ..Publish::default()
        };
        let mut ack = None;
        for p in self.send(conn, Packet::Publish(p)) {
            match p {
                // A delivery to the publisher itself: kept for `topics_for`.
                Packet::Publish(_) => self.broker.actions.push_back(Action::Send(conn, p)),
                other => ack = ack.or(Some(other)),
            }
        }
        ack
    }

    fn topics_for(&mut self, conn: ConnId) -> Vec<String> {
        self.take(conn)
            .into_iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p.topic.to_string()),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn a_refused_publish_is_acknowledged_as_not_authorized_in_v5_only() {
    let mut h = H::new();
    h.connect(1, "v5", Some("alice"), ProtocolVersion::V5);
    h.connect(2, "v3", Some("alice"), ProtocolVersion::V311);
    h.connect(3, "sub", None, ProtocolVersion::V311);
    assert_eq!(h.subscribe(3, "#"), ReasonCode::GRANTED_QOS_1);

    match h.publish(1, "pub/x", QoS::AtLeastOnce, false) {
        Some(Packet::PubAck(a)) => assert_eq!(a.reason, ReasonCode::NOT_AUTHORIZED),
        other => panic!("{other:?}"),
    }
    match h.publish(1, "pub/x", QoS::ExactlyOnce, false) {
        Some(Packet::PubRec(a)) => assert_eq!(a.reason, ReasonCode::NOT_AUTHORIZED),
        other => panic!("{other:?}"),
    }
    // [MQTT-3.3.5-2] 3.1.1: a positive acknowledgement, and the message is dropped.
    match h.publish(2, "pub/x", QoS::AtLeastOnce, false) {
        Some(Packet::PubAck(a)) => assert_eq!(a.reason, ReasonCode::SUCCESS),
        other => panic!("{other:?}"),
    }
    assert!(h.topics_for(3).is_empty());
    assert_eq!(h.broker.stats().publishes_denied, 3);

    // Allowed: alice writes a/x, but the anonymous subscriber may not read it.
    h.publish(1, "a/x", QoS::AtLeastOnce, false);
    assert!(h.topics_for(3).is_empty());
    h.publish(3, "pub/y", QoS::AtMostOnce, false);
    assert_eq!(h.topics_for(3), ["pub/y"]);
}

#[test]
fn delivery_is_checked_per_subscriber() {
    let mut h = H::new();
    h.connect(1, "alice-sub", Some("alice"), ProtocolVersion::V5);
    h.connect(2, "anon-sub", None, ProtocolVersion::V5);
    h.connect(3, "pubber", Some("alice"), ProtocolVersion::V5);
    h.subscribe(1, "#");
    h.subscribe(2, "#");
    h.publish(3, "a/1", QoS::AtMostOnce, false);
    assert_eq!(h.topics_for(1), ["a/1"]);
    assert!(h.topics_for(2).is_empty());
    assert_eq!(h.broker.stats().deliveries_denied, 1);
}

#[test]
fn retained_messages_are_sent_only_to_who_may_read_them() {
    let mut h = H::new();
    h.connect(1, "alice", Some("alice"), ProtocolVersion::V5);
    h.publish(1, "a/kept", QoS::AtMostOnce, true);
    h.connect(2, "anon", None, ProtocolVersion::V5);
    h.subscribe(2, "a/#");
    assert!(h.topics_for(2).is_empty());
    h.connect(3, "alice-2", Some("alice"), ProtocolVersion::V5);
    h.subscribe(3, "a/#");
    assert_eq!(h.topics_for(3), ["a/kept"]);
    // A refused retained PUBLISH is not kept either.
    h.publish(2, "a/other", QoS::AtMostOnce, true);
    h.connect(4, "alice-3", Some("alice"), ProtocolVersion::V5);
    h.subscribe(4, "a/#");
    assert_eq!(h.topics_for(4), ["a/kept"]);
}

#[test]
fn a_refused_subscription_gets_0x80_or_0x87() {
    let mut h = H::new();
    h.connect(1, "v3", None, ProtocolVersion::V311);
    h.connect(2, "v5", None, ProtocolVersion::V5);
    assert_eq!(h.subscribe(1, "secret/#"), ReasonCode::UNSPECIFIED_ERROR);
    assert_eq!(h.subscribe(2, "secret/x"), ReasonCode::NOT_AUTHORIZED);
    assert_eq!(h.subscribe(2, "pub/#"), ReasonCode::GRANTED_QOS_1);
    assert_eq!(h.broker.subscription_count(), 1);
}

#[test]
fn wills_are_checked_for_write_access() {
    let mut h = H::new();
    h.connect(9, "watcher", Some("alice"), ProtocolVersion::V5);
    h.subscribe(9, "#");
    let will = |topic: &str| Will {
        topic: topic.into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
    };
    h.connect_with(
        1,
        "w1",
        None,
        ProtocolVersion::V5,
        true,
        Some(will("a/will")),
    );
    h.connect_with(
        2,
        "w2",
        Some("alice"),
        ProtocolVersion::V5,
        true,
        Some(will("a/will")),
    );
    h.connect_with(
        3,
        "w3",
        Some("alice"),
        ProtocolVersion::V5,
        true,
        Some(will("$SYS/x")),
    );
    for conn in [1, 2, 3] {
        h.broker.handle_connection_lost(h.now, conn);
    }
    assert_eq!(h.topics_for(9), ["a/will"]);
    assert_eq!(h.broker.stats().publishes_denied, 2);
}

#[test]
fn queued_messages_are_checked_again_for_the_identity_that_returns() {
    let mut h = H::new();
    h.connect_with(1, "dev", Some("alice"), ProtocolVersion::V5, false, None);
    h.subscribe(1, "#");
    h.broker.handle_connection_lost(h.now, 1);
    h.connect(2, "pubber", Some("alice"), ProtocolVersion::V5);
    h.publish(2, "a/1", QoS::AtLeastOnce, false);
    h.publish(2, "a/2", QoS::AtLeastOnce, false);
    // The same client id comes back without a username: alice's messages are not for it.
    h.connect_with(3, "dev", None, ProtocolVersion::V5, false, None);
    assert!(h.topics_for(3).is_empty());
    assert_eq!(h.broker.stats().deliveries_denied, 2);
}

#[test]
fn a_shared_group_delivers_to_a_member_who_may_read() {
    let mut h = H::new();
    h.connect(1, "spy", Some("alice"), ProtocolVersion::V5);
    h.connect(2, "ok", Some("alice"), ProtocolVersion::V5);
    h.connect(3, "pubber", Some("alice"), ProtocolVersion::V5);
    h.subscribe(1, "$share/g/a/#");
    h.subscribe(2, "$share/g/a/#");
    for _ in 0..4 {
        h.publish(3, "a/x", QoS::AtMostOnce, false);
    }
    assert!(h.topics_for(1).is_empty());
    assert_eq!(h.topics_for(2).len(), 4);
}

#[test]
fn removing_the_authorizer_allows_everything_again() {
    let mut h = H::new();
    h.connect(1, "anon", None, ProtocolVersion::V5);
    assert_eq!(h.subscribe(1, "secret/#"), ReasonCode::NOT_AUTHORIZED);
    h.broker.set_authorizer(None);
    assert!(!h.broker.has_authorizer());
    assert_eq!(h.subscribe(1, "secret/#"), ReasonCode::GRANTED_QOS_1);
    h.publish(1, "secret/x", QoS::AtMostOnce, false);
    assert_eq!(h.topics_for(1), ["secret/x"]);
}

#[test]
fn a_restored_session_keeps_its_username_for_its_pending_will() {
    use crate::persist::{Backlog, RestoredSession, SessionState};
    let mut h = H::new();
    let will = |topic: &str| Will {
        topic: topic.into(),
        payload: Bytes::from_static(b"late"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
    };
    for (id, user) in [("restored-alice", Some("alice")), ("restored-anon", None)] {
        h.broker.restore_session(RestoredSession {
            client_id: Arc::from(id),
            state: SessionState {
                version: ProtocolVersion::V5,
                expiry_interval: 600,
                expires_at: Some(h.now + std::time::Duration::from_secs(600)),
                pending_will: Some((Box::new(will("a/will")), h.now)),
                connected: false,
                username: user.map(Arc::from),
            },
            subscriptions: Vec::new(),
            inbound_qos2: Vec::new(),
            backlog: Backlog::default(),
        });
    }
    h.connect(9, "watcher", Some("alice"), ProtocolVersion::V5);
    h.subscribe(9, "a/#");
    h.broker.handle_timeout(h.now);
    let got = h.take(9);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(h.broker.stats().publishes_denied, 1);
}
