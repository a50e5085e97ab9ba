//! The administrator's lists, disconnect and topic watches.
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
use crate::admin::{ListQuery, Watched};
use crate::watch::{WatchError, WatchId};

struct H {
    broker: Broker,
    now: Instant,
}

fn connect(id: &str, version: ProtocolVersion, clean: bool) -> Connect {
    Connect {
        bridge: false,
        protocol: version,
        clean_start: clean,
        keep_alive: 30,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

fn publish(topic: &str, payload: &str, retain: bool) -> Packet {
    Packet::Publish(Publish {
        topic: Arc::from(topic),
        payload: Bytes::from(payload.to_owned()),
        retain,
        ..Publish::default()
    })
}

fn subscribe(filter: &str, qos: QoS) -> Packet {
    let opts = SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    };
    Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![(filter.into(), opts)],
        ..Default::default()
    })
}

impl H {
    fn new() -> H {
        H {
            broker: Broker::new(Limits::default(), Policy::default(), 3),
            now: Instant::now(),
        }
    }

    fn connect(&mut self, conn: ConnId, c: Connect) {
        self.broker.handle_connect(self.now, conn, c);
        self.drain();
    }

    fn packet(&mut self, conn: ConnId, p: Packet) -> Vec<Action> {
        self.broker.handle_packet(self.now, conn, p);
        self.drain()
    }

    fn drain(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.broker.poll_action()).collect()
    }

    fn watched(&mut self) -> Vec<(WatchId, Watched)> {
        let mut out = Vec::new();
        self.broker.drain_watched(&mut out);
        out
    }
}

fn all() -> ListQuery {
    ListQuery::default()
}

#[test]
fn clients_list_connected_and_offline_sessions_sorted_with_their_figures() {
    let mut h = H::new();
    h.connect(1, connect("zeta", ProtocolVersion::V311, true));
    let mut c = connect("alpha", ProtocolVersion::V5, false);
    c.properties.session_expiry_interval = Some(600);
    c.username = Some("alice".into());
    h.connect(2, c);
    h.packet(2, subscribe("a/#", QoS::AtLeastOnce));
    h.now += Duration::from_secs(5);
    h.broker.handle_connection_lost(h.now, 2);
    h.drain();
    // While alpha is away, a QoS 1 message is queued for it.
    h.packet(1, {
        let Packet::Publish(mut p) = publish("a/b", "x", false) else {
            unreachable!()
        };
        p.qos = QoS::AtLeastOnce;
        p.packet_id = 9;
        Packet::Publish(p)
    });

    let page = h.broker.admin_clients(&all());
    assert_eq!(page.total, 2);
    let ids: Vec<&str> = page.items.iter().map(|c| &*c.client_id).collect();
    assert_eq!(ids, ["alpha", "zeta"]);
    let alpha = &page.items[0];
    assert_eq!(alpha.conn, None, "alpha is offline");
    assert_eq!(alpha.username.as_deref(), Some("alice"));
    assert_eq!(alpha.protocol, ProtocolVersion::V5);
    assert_eq!(alpha.keep_alive, 30);
    assert_eq!(alpha.session_expiry, 600);
    assert_eq!(alpha.since, Some(h.now), "offline since it went away");
    assert_eq!(
        (alpha.subscriptions, alpha.queued, alpha.inflight),
        (1, 1, 0)
    );
    assert_eq!(alpha.queued_bytes, "a/b".len() + 1);
    let zeta = &page.items[1];
    assert_eq!(zeta.conn, Some(1));
    assert_eq!(zeta.protocol, ProtocolVersion::V311);
    assert_eq!(zeta.since, Some(h.now - Duration::from_secs(5)));
}

#[test]
fn client_pages_and_search() {
    let mut h = H::new();
    for i in 0..25u64 {
        h.connect(
            i + 1,
            connect(&format!("c{i:02}"), ProtocolVersion::V311, true),
        );
    }
    let q = ListQuery {
        offset: 10,
        limit: 5,
        contains: None,
    };
    let page = h.broker.admin_clients(&q);
    assert_eq!(page.total, 25);
    assert_eq!(page.offset, 10);
    let ids: Vec<&str> = page.items.iter().map(|c| &*c.client_id).collect();
    assert_eq!(ids, ["c10", "c11", "c12", "c13", "c14"]);
    let q = ListQuery {
        contains: Some("2".into()),
        ..ListQuery::default()
    };
    let page = h.broker.admin_clients(&q);
    let ids: Vec<&str> = page.items.iter().map(|c| &*c.client_id).collect();
    assert_eq!(ids, ["c02", "c12", "c20", "c21", "c22", "c23", "c24"]);
    assert_eq!(page.total, 7);
}

#[test]
fn keep_alive_shown_is_the_one_in_force() {
    let limits = Limits {
        max_keep_alive: 20,
        ..Limits::default()
    };
    let mut h = H::new();
    h.broker = Broker::new(limits, Policy::default(), 3);
    h.connect(1, connect("v5", ProtocolVersion::V5, true)); // asks 30, server says 20
    let page = h.broker.admin_clients(&all());
    assert_eq!(page.items[0].keep_alive, 20);
}

#[test]
fn subscriptions_list_by_client_and_filter() {
    let mut h = H::new();
    h.connect(1, connect("b", ProtocolVersion::V311, true));
    h.connect(2, connect("a", ProtocolVersion::V5, true));
    h.packet(1, subscribe("x/+", QoS::AtMostOnce));
    h.packet(2, subscribe("y/#", QoS::ExactlyOnce));
    h.packet(2, subscribe("$share/g/x/1", QoS::AtLeastOnce));
    let page = h.broker.admin_subscriptions(&all());
    assert_eq!(page.total, 3);
    let rows: Vec<(&str, &str, QoS)> = page
        .items
        .iter()
        .map(|s| (&*s.client_id, s.filter.as_str(), s.qos))
        .collect();
    assert_eq!(
        rows,
        [
            ("a", "$share/g/x/1", QoS::AtLeastOnce),
            ("a", "y/#", QoS::ExactlyOnce),
            ("b", "x/+", QoS::AtMostOnce),
        ]
    );
    assert!(page.items.iter().all(|s| s.online));
    let q = ListQuery {
        contains: Some("x/".into()),
        ..ListQuery::default()
    };
    assert_eq!(h.broker.admin_subscriptions(&q).total, 2);
}

#[test]
fn retained_list_has_topic_size_and_qos() {
    let mut h = H::new();
    h.connect(1, connect("p", ProtocolVersion::V311, true));
    h.packet(1, publish("b/t", "hello", true));
    h.packet(1, publish("a/t", "hi", true));
    let page = h.broker.admin_retained(&all());
    assert_eq!(page.total, 2);
    assert_eq!(&*page.items[0].topic, "a/t");
    assert_eq!(page.items[0].size, 2);
    assert_eq!(&*page.items[1].topic, "b/t");
    assert_eq!(page.items[1].size, 5);
    assert_eq!(page.items[1].qos, QoS::AtMostOnce);
    let overview = h.broker.admin_overview();
    assert_eq!((overview.retained, overview.clients_connected), (2, 1));
}

#[test]
fn disconnect_v5_sends_administrative_action_and_publishes_the_will() {
    let mut h = H::new();
    h.connect(1, connect("watcher", ProtocolVersion::V311, true));
    h.packet(1, subscribe("wills/#", QoS::AtMostOnce));
    let mut c = connect("victim", ProtocolVersion::V5, true);
    c.will = Some(Will {
        topic: "wills/victim".into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
    });
    h.connect(2, c);
    assert!(h.broker.admin_disconnect(h.now, "victim"));
    let actions = h.drain();
    let disconnect = Action::Send(
        2,
        Packet::Disconnect(Disconnect {
            reason: ReasonCode::ADMINISTRATIVE_ACTION,
            ..Disconnect::default()
        }),
    );
    let pos_d = actions.iter().position(|a| *a == disconnect).unwrap();
    let admin = CloseReason::Server(ReasonCode::ADMINISTRATIVE_ACTION);
    let pos_c = actions
        .iter()
        .position(|a| *a == Action::Close(2, admin))
        .unwrap();
    assert!(pos_d < pos_c, "DISCONNECT before the close: {actions:?}");
    let will_sent = actions
        .iter()
        .any(|a| matches!(a, Action::Send(1, Packet::Publish(p)) if &*p.topic == "wills/victim"));
    assert!(will_sent, "the will reached its subscriber: {actions:?}");
    assert_eq!(h.broker.clients_connected(), 1);
    // Gone: disconnecting again finds nobody.
    assert!(!h.broker.admin_disconnect(h.now, "victim"));
    assert!(!h.broker.admin_disconnect(h.now, "nobody"));
}

#[test]
fn disconnect_v311_closes_without_a_packet_and_keeps_a_persistent_session() {
    let mut h = H::new();
    h.connect(1, connect("old", ProtocolVersion::V311, false));
    assert!(h.broker.admin_disconnect(h.now, "old"));
    let admin = CloseReason::Server(ReasonCode::ADMINISTRATIVE_ACTION);
    assert_eq!(h.drain(), vec![Action::Close(1, admin)]);
    let page = h.broker.admin_clients(&all());
    assert_eq!(page.total, 1, "the persistent session stays");
    assert_eq!(page.items[0].conn, None);
    // Packets from the closed connection are ignored.
    assert!(h.packet(1, Packet::PingReq).is_empty());
}

#[test]
fn watch_gets_matching_messages_and_retained_ones_first() {
    let mut h = H::new();
    h.connect(1, connect("p", ProtocolVersion::V311, true));
    h.packet(1, publish("sensors/old", "r", true));
    assert!(!h.broker.has_watches());
    let id = h.broker.watch("sensors/#").unwrap();
    assert!(h.broker.has_watches());
    let replay = h.watched();
    assert_eq!(replay.len(), 1);
    assert_eq!(replay[0].0, id);
    assert!(replay[0].1.replay);
    assert_eq!(&*replay[0].1.msg.topic, "sensors/old");

    h.packet(1, publish("sensors/t1", "21.5", false));
    h.packet(1, publish("other/t1", "no", false));
    h.packet(1, publish("$SYS/x", "no", false)); // refused by the broker anyway
    let live = h.watched();
    assert_eq!(live.len(), 1);
    assert!(!live[0].1.replay);
    assert_eq!(&live[0].1.msg.payload[..], b"21.5");

    // `#` does not see `$SYS` [MQTT-4.7.2-1]; `$SYS/#` does.
    let all_id = h.broker.watch("#").unwrap();
    let sys_id = h.broker.watch("$SYS/#").unwrap();
    h.watched();
    h.broker
        .publish_internal(h.now, "$SYS/broker/uptime", Bytes::from_static(b"1"));
    let got: Vec<WatchId> = h.watched().into_iter().map(|(id, _)| id).collect();
    assert_eq!(got, [sys_id]);

    assert!(h.broker.unwatch(id));
    assert!(h.broker.unwatch(all_id));
    assert!(h.broker.unwatch(sys_id));
    assert!(!h.broker.unwatch(id));
    assert!(!h.broker.has_watches());
    h.packet(1, publish("sensors/t1", "x", false));
    assert!(h.watched().is_empty());
}

#[test]
fn watch_refuses_bad_filters_and_too_many() {
    let mut h = H::new();
    assert!(matches!(
        h.broker.watch("a/#/b"),
        Err(WatchError::Filter(_))
    ));
    assert!(matches!(h.broker.watch(""), Err(WatchError::Filter(_))));
    assert!(matches!(h.broker.watch("a+"), Err(WatchError::Filter(_))));
    assert!(matches!(
        h.broker.watch("$share/g/a"),
        Err(WatchError::Shared)
    ));
    for _ in 0..MAX_WATCHES {
        h.broker.watch("a").unwrap();
    }
    assert!(matches!(h.broker.watch("a"), Err(WatchError::TooMany(_))));
}

#[test]
fn pending_watch_copies_are_bounded() {
    let mut h = H::new();
    h.connect(1, connect("p", ProtocolVersion::V311, true));
    h.broker.watch("t").unwrap();
    for _ in 0..crate::watch::MAX_PENDING + 10 {
        h.broker.handle_packet(h.now, 1, publish("t", "x", false));
    }
    h.drain();
    assert_eq!(h.watched().len(), crate::watch::MAX_PENDING);
    assert_eq!(h.broker.watch_dropped(), 10);
}
