//! The journal against a model store: what a durable session leaves in the journal, and
//! that a broker restored from it carries on where the old one stopped.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::persist::{Backlog, Change, KeptState, LoadedMessage, RestoredSession, SessionState};

/// What a store holds after applying the journal in order.
#[derive(Default)]
struct Model {
    sessions: BTreeMap<Arc<str>, SessionState>,
    subs: BTreeMap<(Arc<str>, String), crate::session::Subscription>,
    kept: BTreeMap<(Arc<str>, u64), (crate::message::Delivery, KeptState)>,
    inbound: BTreeSet<(Arc<str>, u16)>,
    retained: BTreeMap<Arc<str>, Arc<crate::message::Message>>,
}

impl Model {
    fn apply(&mut self, changes: Vec<Change>) {
        for c in changes {
            match c {
                Change::Session { client_id, state } => {
                    self.sessions.insert(client_id, state);
                }
                Change::SessionEnded { client_id } => {
                    self.sessions.remove(&client_id);
                    self.subs.retain(|(c, _), _| *c != client_id);
                    self.kept.retain(|(c, _), _| *c != client_id);
                    self.inbound.retain(|(c, _)| *c != client_id);
                }
                Change::Subscribed {
                    client_id,
                    filter,
                    subscription,
                } => {
                    self.subs.insert((client_id, filter), subscription);
                }
                Change::Unsubscribed { client_id, filter } => {
                    self.subs.remove(&(client_id, filter));
                }
                Change::Kept {
                    client_id,
                    delivery,
                    state,
                } => {
                    let key = (client_id, delivery.seq);
                    assert!(!self.kept.contains_key(&key), "seq reused: {key:?}");
                    self.kept.insert(key, (delivery, state));
                }
                Change::Moved {
                    client_id,
                    delivery,
                    state,
                } => {
                    let key = (client_id, delivery.seq);
                    let entry = self.kept.get_mut(&key).expect("moved unknown");
                    entry.1 = state;
                }
                Change::Done { client_id, seq } => {
                    assert!(
                        self.kept.remove(&(client_id, seq)).is_some(),
                        "done unknown"
                    );
                }
                Change::InboundQos2 {
                    client_id,
                    packet_id,
                    pending,
                } => {
                    if pending {
                        self.inbound.insert((client_id, packet_id));
                    } else {
                        self.inbound.remove(&(client_id, packet_id));
                    }
                }
                Change::Retained { topic, message } => match message {
                    Some(m) => {
                        self.retained.insert(topic, m);
                    }
                    None => {
                        self.retained.remove(&topic);
                    }
                },
            }
        }
    }

    /// A new broker with this model's state, as after a restart.
    fn restore(&self) -> Broker {
        let mut b = Broker::new(Limits::default(), Policy::default(), 8);
        for (id, state) in &self.sessions {
            let kept: Vec<_> = self.kept.iter().filter(|((c, _), _)| c == id).collect();
            let backlog = Backlog {
                count: kept.len(),
                bytes: kept.iter().map(|(_, (d, _))| d.msg.weight()).sum(),
                last_seq: kept.iter().map(|((_, s), _)| *s).max().unwrap_or(0),
            };
            b.restore_session(RestoredSession {
                client_id: id.clone(),
                state: state.clone(),
                subscriptions: (self.subs.iter())
                    .filter(|((c, _), _)| c == id)
                    .map(|((_, f), s)| (f.clone(), s.clone()))
                    .collect(),
                inbound_qos2: (self.inbound.iter())
                    .filter(|(c, _)| c == id)
                    .map(|(_, p)| *p)
                    .collect(),
                backlog,
            });
        }
        for m in self.retained.values() {
            b.restore_retained(m.clone());
        }
        b.enable_journal();
        b
    }

    fn backlog(&self, id: &str) -> Vec<LoadedMessage> {
        (self.kept.iter())
            .filter(|((c, _), _)| &**c == id)
            .map(|(_, (d, s))| LoadedMessage {
                delivery: d.clone(),
                state: *s,
            })
            .collect()
    }
}

fn journaled() -> (Harness, Model) {
    let mut h = Harness::new();
    h.broker.enable_journal();
    (h, Model::default())
}

fn sync(h: &mut Harness, m: &mut Model) -> Vec<Change> {
    let mut changes = Vec::new();
    h.broker.drain_changes(&mut changes);
    m.apply(changes.clone());
    changes
}

#[test]
fn clean_sessions_leave_nothing_in_the_journal() {
    let (mut h, mut m) = journaled();
    h.connect(1, connect("s", ProtocolVersion::V311, true));
    h.packet(1, subscribe(1, "a/#", QoS::AtLeastOnce));
    h.connect(2, connect("p", ProtocolVersion::V311, true));
    h.packet(2, publish("a/b", QoS::AtLeastOnce, 5, "x"));
    assert_eq!(sync(&mut h, &mut m), vec![]);
}

#[test]
fn a_persistent_subscriber_journals_its_session_subscriptions_and_messages() {
    let (mut h, mut m) = journaled();
    h.connect(1, connect("s", ProtocolVersion::V311, false));
    h.packet(1, subscribe(1, "a/#", QoS::AtLeastOnce));
    let changes = sync(&mut h, &mut m);
    assert!(matches!(&changes[0], Change::Session { client_id, .. } if &**client_id == "s"));
    assert!(matches!(&changes[1], Change::Subscribed { filter, .. } if filter == "a/#"));
    h.connect(2, connect("p", ProtocolVersion::V311, true));
    h.packet(2, publish("a/b", QoS::AtLeastOnce, 5, "x"));
    let delivered = h.take(1);
    let id = publishes(&delivered)[0].packet_id;
    let changes = sync(&mut h, &mut m);
    assert!(matches!(
        &changes[..],
        [Change::Kept { state: KeptState::AwaitingAck(p), delivery, .. }] if *p == id && delivery.seq == 1
    ));
    // [MQTT-4.3.2-?] the subscriber's PUBACK ends the broker's duty for it.
    h.packet(1, Packet::PubAck(PubAck::new(id)));
    assert!(matches!(
        &sync(&mut h, &mut m)[..],
        [Change::Done { seq: 1, .. }]
    ));
    assert!(m.kept.is_empty());
}

#[test]
fn a_restored_broker_delivers_the_backlog_in_order_after_the_store_hands_it_back() {
    let (mut h, mut m) = journaled();
    h.connect(1, connect("s", ProtocolVersion::V311, false));
    h.packet(1, subscribe(1, "t", QoS::AtLeastOnce));
    h.connect(2, connect("p", ProtocolVersion::V311, true));
    // One message in flight (sent, not acknowledged), then the subscriber goes away and
    // two more are queued for it.
    h.packet(2, publish("t", QoS::AtLeastOnce, 1, "one"));
    let first = publishes(&h.take(1))[0].packet_id;
    h.broker.handle_connection_lost(h.now, 1);
    h.packet(2, publish("t", QoS::AtLeastOnce, 2, "two"));
    h.packet(2, publish("t", QoS::AtLeastOnce, 3, "three"));
    sync(&mut h, &mut m);
    assert_eq!(m.kept.len(), 3);

    // Restart: the session is back with its subscription, its messages still in the store.
    let mut r = Harness::new();
    r.broker = m.restore();
    let ack = r.connect(1, connect("s", ProtocolVersion::V311, false));
    assert!(ack.session_present);
    assert!(
        r.take(1).is_empty(),
        "nothing is sent before the backlog is loaded"
    );
    let mut asked = Vec::new();
    while let Some(a) = r.broker.poll_action() {
        asked.push(a);
    }
    assert_eq!(asked, vec![Action::LoadBacklog(Arc::from("s"))]);
    // A message routed meanwhile goes after the backlog.
    r.connect(2, connect("p", ProtocolVersion::V311, true));
    r.packet(2, publish("t", QoS::AtLeastOnce, 4, "four"));
    r.broker.handle_backlog_loaded(r.now, "s", m.backlog("s"));
    let got = r.take(1);
    let p = publishes(&got);
    let payloads: Vec<&[u8]> = p.iter().map(|p| &p.payload[..]).collect();
    assert_eq!(payloads, vec![&b"one"[..], b"two", b"three", b"four"]);
    // [MQTT-4.4.0-1] the one that was in flight is re-sent with DUP and its packet id.
    assert!(p[0].dup && p[0].packet_id == first);
    assert!(!p[1].dup);
}

#[test]
fn inbound_qos2_state_survives_a_restart_so_a_resent_publish_is_not_delivered_twice() {
    let (mut h, mut m) = journaled();
    h.connect(1, connect("s", ProtocolVersion::V311, false));
    h.packet(1, subscribe(1, "t", QoS::ExactlyOnce));
    h.connect(2, connect("p", ProtocolVersion::V311, false));
    let rec = h.packet(2, publish("t", QoS::ExactlyOnce, 9, "once"));
    assert!(matches!(&rec[..], [Packet::PubRec(a)] if a.packet_id == 9));
    assert_eq!(publishes(&h.take(1)).len(), 1);
    sync(&mut h, &mut m);
    assert!(m.inbound.contains(&(Arc::from("p"), 9)));

    let mut r = Harness::new();
    r.broker = m.restore();
    r.connect(2, connect("p", ProtocolVersion::V311, false));
    // [MQTT-4.3.3-10] the publisher did not see PUBREC and sends the PUBLISH again.
    let rec = r.packet(2, publish("t", QoS::ExactlyOnce, 9, "once"));
    assert!(matches!(&rec[..], [Packet::PubRec(a)] if a.packet_id == 9));
    let comp = r.packet(2, Packet::PubRel(PubAck::new(9)));
    assert!(matches!(&comp[..], [Packet::PubComp(a)] if a.reason == ReasonCode::SUCCESS));
    let mut changes = Vec::new();
    r.broker.drain_changes(&mut changes);
    m.apply(changes);
    assert!(m.inbound.is_empty());
    // The subscriber's copy (in flight before the restart) is the only one it gets.
    r.connect(1, connect("s", ProtocolVersion::V311, false));
    r.broker.poll_action();
    r.broker.handle_backlog_loaded(r.now, "s", m.backlog("s"));
    let again = r.take(1);
    assert_eq!(publishes(&again).len(), 1);
    assert!(publishes(&again)[0].dup);
}

#[test]
fn retained_messages_are_journaled_but_the_brokers_own_sys_topics_are_not() {
    let (mut h, mut m) = journaled();
    h.connect(2, connect("p", ProtocolVersion::V311, true));
    let mut p = publish("status/x", QoS::AtMostOnce, 0, "up");
    if let Packet::Publish(p) = &mut p {
        p.retain = true;
    }
    h.packet(2, p);
    h.broker
        .publish_internal(h.now, "$SYS/broker/uptime", Bytes::from_static(b"1"));
    sync(&mut h, &mut m);
    assert_eq!(
        m.retained.keys().map(|k| &**k).collect::<Vec<_>>(),
        vec!["status/x"]
    );
    let mut clear = publish("status/x", QoS::AtMostOnce, 0, "");
    if let Packet::Publish(p) = &mut clear {
        p.retain = true;
    }
    h.packet(2, clear);
    sync(&mut h, &mut m);
    assert!(m.retained.is_empty());
}

#[test]
fn a_session_that_ends_leaves_the_store() {
    let (mut h, mut m) = journaled();
    let mut c = connect("s", ProtocolVersion::V5, true);
    c.properties.session_expiry_interval = Some(10);
    h.connect(1, c);
    h.packet(1, subscribe(1, "t", QoS::AtLeastOnce));
    h.broker.handle_connection_lost(h.now, 1);
    sync(&mut h, &mut m);
    assert!(m.sessions.get("s").is_some_and(|s| s.expires_at.is_some()));
    h.advance(11);
    sync(&mut h, &mut m);
    assert!(m.sessions.is_empty() && m.subs.is_empty());
}

#[test]
fn past_max_stored_bytes_nothing_new_is_kept_and_v5_publishers_are_told() {
    let limits = Limits {
        max_stored_bytes: 100,
        ..Limits::default()
    };
    let mut h = Harness::with(limits);
    h.broker.enable_journal();
    let mut m = Model::default();
    h.connect(1, connect("s", ProtocolVersion::V311, false));
    h.packet(1, subscribe(1, "t", QoS::AtLeastOnce));
    h.broker.handle_connection_lost(h.now, 1);
    h.connect(2, connect("p5", ProtocolVersion::V5, true));
    h.connect(3, connect("p3", ProtocolVersion::V311, true));
    // 60 bytes each (topic "t" + 59): the first fits, the second would pass 100.
    let body = "x".repeat(59);
    let ack = h.packet(2, publish("t", QoS::AtLeastOnce, 1, &body));
    assert!(matches!(&ack[..], [Packet::PubAck(a)] if a.reason == ReasonCode::SUCCESS));
    assert_eq!(h.broker.stored_bytes(), 60);
    // 5.0 (section 3.4.2.1): refused with 0x97 Quota exceeded rather than acknowledged and lost.
    let ack = h.packet(2, publish("t", QoS::AtLeastOnce, 2, &body));
    assert!(matches!(&ack[..], [Packet::PubAck(a)] if a.reason == ReasonCode::QUOTA_EXCEEDED));
    // 3.1.1 cannot be told: acknowledged, but the offline session does not get it (counted).
    let ack = h.packet(3, publish("t", QoS::AtLeastOnce, 3, &body));
    assert!(matches!(&ack[..], [Packet::PubAck(_)]));
    assert_eq!(h.broker.stats().dropped_store_full, 2);
    sync(&mut h, &mut m);
    assert_eq!(m.kept.len(), 1);
    // The subscriber takes its message: room again.
    h.connect(1, connect("s", ProtocolVersion::V311, false));
    let got = h.take(1);
    let id = publishes(&got)[0].packet_id;
    h.packet(1, Packet::PubAck(PubAck::new(id)));
    assert_eq!(h.broker.stored_bytes(), 0);
    let ack = h.packet(2, publish("t", QoS::AtLeastOnce, 4, &body));
    assert!(matches!(&ack[..], [Packet::PubAck(a)] if !a.reason.is_error()));
}
