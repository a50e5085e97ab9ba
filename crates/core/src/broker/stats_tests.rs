//! The counters and figures behind `$SYS` and the metrics.
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

struct H {
    broker: Broker,
    now: Instant,
}

impl H {
    fn new(limits: Limits) -> H {
        H {
            broker: Broker::new(limits, Policy::default(), 3),
            now: Instant::now(),
        }
    }

    fn connect(&mut self, conn: ConnId, id: &str, clean: bool) {
        let c = Connect {
            bridge: false,
            protocol: ProtocolVersion::V311,
            clean_start: clean,
            keep_alive: 0,
            client_id: id.into(),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        };
        self.broker.handle_connect(self.now, conn, c);
        self.drain();
    }

    fn subscribe(&mut self, conn: ConnId, filter: &str, qos: QoS) {
        let opts = SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        };
        let s = Subscribe {
            packet_id: 1,
            filters: vec![(filter.into(), opts)],
            ..Default::default()
        };
        self.broker
            .handle_packet(self.now, conn, Packet::Subscribe(s));
        self.drain();
    }

    fn publish(&mut self, conn: ConnId, topic: &str, qos: QoS, payload: &str, retain: bool) {
        let p = Publish {
            qos,
            retain,
            topic: Arc::from(topic),
            packet_id: if qos == QoS::AtMostOnce { 0 } else { 9 },
            payload: Bytes::from(payload.to_owned()),
            ..Publish::default()
        };
        self.broker
            .handle_packet(self.now, conn, Packet::Publish(p));
        self.drain();
    }

    fn drain(&mut self) {
        while self.broker.poll_action().is_some() {}
    }
}

#[test]
fn messages_and_payload_bytes_are_counted_by_qos_both_ways() {
    let mut h = H::new(Limits::default());
    h.connect(1, "sub", true);
    h.connect(2, "pub", true);
    h.subscribe(1, "t/#", QoS::AtLeastOnce);
    h.publish(2, "t/a", QoS::AtMostOnce, "12345", false);
    h.publish(2, "t/b", QoS::AtLeastOnce, "123", false);
    h.publish(2, "t/c", QoS::ExactlyOnce, "1", false);
    let s = h.broker.stats();
    let flow = |messages, payload_bytes| Flow {
        messages,
        payload_bytes,
    };
    assert_eq!(s.received.qos0, flow(1, 5));
    assert_eq!(s.received.qos1, flow(1, 3));
    assert_eq!(s.received.qos2, flow(1, 1));
    // Sent at the lower of the publish and subscription QoS.
    assert_eq!(s.sent.qos0, flow(1, 5));
    assert_eq!(s.sent.qos1, flow(2, 4));
    assert_eq!(s.sent.qos2, flow(0, 0));
    assert_eq!((s.messages_received(), s.messages_sent()), (3, 3));
}

#[test]
fn unmatched_and_offline_qos0_messages_are_counted_as_dropped() {
    let mut h = H::new(Limits::default());
    h.connect(1, "sub", false);
    h.subscribe(1, "t", QoS::AtLeastOnce);
    h.broker.handle_connection_lost(h.now, 1);
    h.drain();
    h.connect(2, "pub", true);
    h.publish(2, "nobody/listens", QoS::AtLeastOnce, "x", false);
    h.publish(2, "t", QoS::AtMostOnce, "x", false); // offline session: not kept
    h.publish(2, "t", QoS::AtLeastOnce, "x", false); // kept
    let s = h.broker.stats();
    assert_eq!(s.dropped_no_subscribers, 1);
    assert_eq!(s.dropped_offline_qos0, 1);
    let q = h.broker.queue_totals();
    assert_eq!(
        (q.queued_messages, q.queued_bytes, q.longest_queue),
        (1, 2, 1)
    );
}

#[test]
fn queue_totals_count_queued_and_inflight_messages() {
    let limits = Limits {
        max_inflight_messages: 2,
        ..Limits::default()
    };
    let mut h = H::new(limits);
    h.connect(1, "a", true);
    h.connect(2, "b", true);
    h.connect(3, "pub", true);
    h.subscribe(1, "t", QoS::AtLeastOnce);
    h.subscribe(2, "t", QoS::AtLeastOnce);
    for _ in 0..5 {
        h.publish(3, "t", QoS::AtLeastOnce, "abc", false);
    }
    // Each subscriber: 2 in flight (nobody acknowledges), 3 queued of 4 bytes.
    let q = h.broker.queue_totals();
    assert_eq!(q.inflight_messages, 4);
    assert_eq!(q.queued_messages, 6);
    assert_eq!(q.queued_bytes, 24);
    assert_eq!(q.longest_queue, 3);
}

#[test]
fn retained_bytes_follow_replacement_clearing_and_expiry() {
    let mut h = H::new(Limits::default());
    h.connect(1, "pub", true);
    h.publish(1, "r/a", QoS::AtMostOnce, "12345", true); // 3 + 5
    h.publish(1, "r/b", QoS::AtMostOnce, "1", true); // 3 + 1
    assert_eq!(h.broker.retained_bytes(), 12);
    h.publish(1, "r/a", QoS::AtMostOnce, "12", true); // replaced: 3 + 2
    assert_eq!(h.broker.retained_bytes(), 9);
    h.publish(1, "r/b", QoS::AtMostOnce, "", true); // cleared
    assert_eq!(h.broker.retained_bytes(), 5);
    assert_eq!(h.broker.retained_count(), 1);
    // Restored from a store, replacing one in memory.
    let m = Message {
        topic: Arc::from("r/a"),
        payload: Bytes::from_static(b"1234"),
        ..h.broker.retained.get("r/a").map(|m| (**m).clone()).unwrap()
    };
    h.broker.restore_retained(Arc::new(m));
    assert_eq!(h.broker.retained_bytes(), 7);
}

#[test]
fn subscription_counts_separate_shared_memberships() {
    let mut h = H::new(Limits::default());
    h.connect(1, "a", true);
    h.subscribe(1, "x/#", QoS::AtMostOnce);
    h.subscribe(1, "$share/g/y", QoS::AtMostOnce);
    assert_eq!(h.broker.subscription_counts(), (1, 1));
    assert_eq!(h.broker.subscription_count(), 2);
}
