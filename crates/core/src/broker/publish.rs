//! PUBLISH in both directions: routing, delivery to sessions, QoS 1/2 acknowledgements, the
//! inflight window and the offline queue.

use std::sync::Arc;
use std::time::{Duration, Instant};

use makelaar_proto::{Packet, PubAck, Publish, QoS, ReasonCode};

use super::Action;
use super::{BridgeSession, Broker, CloseReason, SessionIdx, WhenFull};

/// How often the downgrade of one bridge topic line is logged again.
const CAP_LOG_EVERY: Duration = Duration::from_secs(600);
use crate::auth::Access;
use crate::conn::Violation;
use crate::message::{Delivery, Message};
use crate::persist::KeptState;
use crate::session::{ConnId, Inflight, OutboundState};
use crate::topic::sys::{is_sys, writable_by_clients};

/// How far a connected session's queue may go past `max_queued_messages` while its publishers
/// are being slowed down (their acknowledgements held back) before messages are dropped.
const ONLINE_OVERSHOOT: usize = 10_000;

/// Logs a topic refused for `max_topic_levels`, naming the limit and how to raise it. `what`
/// is "topic name", "topic filter" or "will topic".
pub(super) fn log_topic_too_deep(client_id: &str, what: &'static str, levels: usize, max: usize) {
    tracing::warn!(
        client_id,
        levels,
        max_topic_levels = max,
        "refused a {what} of {levels} levels from client {client_id:?}, over max_topic_levels \
         ({max}); to accept it raise max_topic_levels in [limits] (0 removes the limit)"
    );
}

/// One matching subscription found while routing, before overlapping ones are merged.
struct Target {
    idx: SessionIdx,
    qos: QoS,
    retain_as_published: bool,
    id: Option<u32>,
}

/// One session's delivery of `msg` from its matching subscriptions (at least one):
/// overlapping subscriptions give one copy at the highest QoS, carrying every subscription
/// identifier [MQTT-3.3.5-1] [MQTT-3.3.4-3].
fn merged_delivery(msg: &Arc<Message>, targets: &[Target]) -> Delivery {
    let (mut qos, mut rap, mut ids) = (QoS::AtMostOnce, false, Vec::new());
    for t in targets {
        qos = qos.max(t.qos);
        rap |= t.retain_as_published;
        ids.extend(t.id);
    }
    Delivery {
        qos: msg.qos.min(qos),     // [MQTT-3.8.4-8]
        retain: msg.retain && rap, // [MQTT-3.3.1-12] [MQTT-3.3.1-13]
        msg: msg.clone(),
        subscription_ids: ids,
        shared_group: None,
        seq: 0,
    }
}

impl Broker {
    pub(super) fn handle_publish(
        &mut self,
        now: Instant,
        conn: ConnId,
        idx: SessionIdx,
        p: Publish,
    ) {
        if p.qos as u8 > self.limits.max_qos {
            // [MQTT-3.2.2-11] more than the Maximum QoS we announced.
            self.protocol_violation(now, conn, Violation::QosNotSupported);
            return;
        }
        if p.retain && !self.limits.retain_available {
            // [MQTT-3.3.1-? ] retain was announced as not available.
            self.protocol_violation(now, conn, Violation::RetainNotSupported);
            return;
        }
        if let Some(levels) = self.limits.excess_topic_levels(&p.topic) {
            // A topic name deeper than max_topic_levels closes the connection: 5.0 DISCONNECT
            // 0x90 Topic Name invalid, "correctly formed, but is not accepted by this Client
            // or Server" (section 3.14.2.1); 3.1.1 cannot refuse a PUBLISH but by closing.
            let client_id = self.session(idx).map_or("", |s| &s.client_id);
            log_topic_too_deep(
                client_id,
                "topic name",
                levels,
                self.limits.max_topic_levels,
            );
            self.protocol_violation(now, conn, Violation::TopicNameTooDeep);
            return;
        }
        let (qos, packet_id) = (p.qos, p.packet_id);
        if !writable_by_clients(&p.topic) {
            // `$SYS` is the broker's own namespace: a client's message there is acknowledged
            // (5.0: as not authorized) and dropped, so it cannot fake the broker's figures.
            // A bridge's state is the exception, written like any other topic.
            self.refuse_publish(conn, idx, qos, packet_id);
            return;
        }
        if !self.may(idx, &p.topic, Access::Write) {
            // [MQTT-3.3.5-2] 3.1.1 cannot tell the client: acknowledged as usual, dropped.
            // 5.0 answers PUBACK/PUBREC 0x87 Not authorized (5.0 section 3.4.2.1).
            self.stats.publishes_denied += 1;
            self.refuse_publish(conn, idx, qos, packet_id);
            return;
        }
        let Ok(s) = self.session_mut(idx) else {
            return;
        };
        if qos == QoS::ExactlyOnce && !s.begin_inbound_qos2(packet_id) {
            // [MQTT-4.3.3-10] a resent QoS 2 PUBLISH is acknowledged again, not delivered again.
            self.send(conn, Packet::PubRec(PubAck::new(packet_id)));
            return;
        }
        if qos == QoS::ExactlyOnce {
            self.journal_inbound_qos2(idx, packet_id, true);
        }
        let Ok(s) = self.session(idx) else {
            return;
        };
        let origin = Some(s.client_id.clone());
        let v5 = s.version.is_v5();
        if v5 && qos != QoS::AtMostOnce && self.store_full(p.payload.len() + p.topic.len()) {
            // Nothing new can be kept: refused rather than acknowledged and lost.
            let mut ack = PubAck::new(packet_id);
            ack.reason = ReasonCode::QUOTA_EXCEEDED;
            if qos == QoS::ExactlyOnce {
                if let Ok(s) = self.session_mut(idx) {
                    s.end_inbound_qos2(packet_id);
                }
                self.journal_inbound_qos2(idx, packet_id, false);
                self.send(conn, Packet::PubRec(ack));
            } else {
                self.send(conn, Packet::PubAck(ack));
            }
            return;
        }
        self.stats.received.get_mut(qos).count(p.payload.len());
        if origin.as_deref().is_some_and(|id| self.came_back(&p, id)) {
            // Loop guard: it started here and came back over bridges; acknowledged as usual
            // (the sender did its part), not delivered a second time.
            self.stats.dropped_bridge_loop += 1;
            let ack = PubAck::new(packet_id);
            match qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => self.send(conn, Packet::PubAck(ack)),
                QoS::ExactlyOnce => self.send(conn, Packet::PubRec(ack)),
            }
            return;
        }
        let msg = Arc::new(Message::from_publish(now, p, origin));
        self.export.message(&msg, Some(conn));
        if msg.retain {
            self.store_retained(&msg);
        }
        self.congested = None;
        self.bridge_refused = false;
        let matched = self.route(now, msg);
        if matched == 0 {
            self.stats.dropped_no_subscribers += 1;
        }
        let mut ack = PubAck::new(packet_id);
        // 0x10 says nobody subscribed (5.0 section 3.4.2.1): in a cluster the other
        // nodes' subscribers are not known here, so the answer there is 0x00 Success.
        if v5 && matched == 0 && !self.export.in_cluster() {
            ack.reason = ReasonCode::NO_MATCHING_SUBSCRIBERS;
        }
        if std::mem::take(&mut self.bridge_refused) {
            if !v5 {
                // A 3.1/3.1.1 publisher cannot be told: the connection is closed instead of
                // acknowledging what was not kept [MQTT-3.3.5-2]; its session re-sends the
                // message when it reconnects.
                tracing::warn!(conn, "a bridge's queue is full: closing the 3.1.1 publisher's connection instead of acknowledging a message the bridge did not keep");
                if qos == QoS::ExactlyOnce {
                    // Its re-sent PUBLISH is a new delivery, not a duplicate to ignore.
                    if let Ok(s) = self.session_mut(idx) {
                        s.end_inbound_qos2(packet_id);
                    }
                    self.journal_inbound_qos2(idx, packet_id, false);
                }
                self.detach(now, conn);
                self.actions.push_back(Action::Close(
                    conn,
                    CloseReason::Server(ReasonCode::QUOTA_EXCEEDED),
                ));
                return;
            }
            // A bridge's queue was full and kept no copy: the publisher learns it was not
            // accepted whole rather than a silent loss (5.0 section 3.4.2.1, 0x97).
            ack.reason = ReasonCode::QUOTA_EXCEEDED;
        }
        let ack = match qos {
            QoS::AtMostOnce => return,
            QoS::AtLeastOnce => Packet::PubAck(ack),
            QoS::ExactlyOnce => Packet::PubRec(ack),
        };
        // Flow control: the message is kept, but a subscriber is behind, so the publisher's
        // acknowledgement waits until that subscriber's queue has room. The publisher's own
        // inflight window then holds it back, instead of the broker dropping what it acked.
        match self.congested.take().and_then(|i| self.session_mut(i).ok()) {
            Some(s) => s.deferred_acks.push_back((conn, ack)),
            None => self.send(conn, ack),
        }
    }

    /// Sends acknowledgements held back for this session's queue while it has room (all of
    /// them when the session is offline or gone).
    pub(super) fn release_deferred_acks(&mut self, idx: SessionIdx) {
        let max = self.limits.max_queued_messages;
        let Ok(s) = self.session_mut(idx) else {
            return;
        };
        let mut release = Vec::new();
        while s.conn.is_none() || s.queue.len() < max {
            match s.deferred_acks.pop_front() {
                Some(a) => release.push(a),
                None => break,
            }
        }
        for (conn, ack) in release {
            self.send(conn, ack);
        }
    }

    fn refuse_publish(&mut self, conn: ConnId, idx: SessionIdx, qos: QoS, packet_id: u16) {
        tracing::debug!(conn, "PUBLISH not authorized: dropped");
        let mut ack = PubAck::new(packet_id);
        if self.version_of(idx).is_v5() {
            ack.reason = ReasonCode::NOT_AUTHORIZED;
        }
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(conn, Packet::PubAck(ack)),
            QoS::ExactlyOnce => self.send(conn, Packet::PubRec(ack)),
        }
    }

    /// Keeps the message as the topic's retained one; an empty payload removes it
    /// [MQTT-3.3.1-10] [MQTT-3.3.1-11].
    pub(super) fn store_retained(&mut self, msg: &Arc<Message>) {
        if msg.payload.is_empty() {
            if let Some(old) = self.take_retained(&msg.topic) {
                self.retained_bytes = self.retained_bytes.saturating_sub(old.weight());
                self.journal_retained(&msg.topic, None, Some(&old));
            }
            return;
        }
        if self.store_full(msg.weight()) && !is_sys(&msg.topic) {
            return; // counted and logged by `store_full`
        }
        let max = self.limits.max_retained_messages;
        if max != 0 && self.retained.len() >= max && self.retained.get(&msg.topic).is_none() {
            tracing::warn!(max_retained_messages = max, topic = %msg.topic, "retained message not stored: max_retained_messages reached");
            return;
        }
        let old = self.put_retained(msg.clone());
        let old_weight = old.as_ref().map_or(0, |m| m.weight());
        self.retained_bytes = self.retained_bytes.saturating_sub(old_weight) + msg.weight();
        self.journal_retained(&msg.topic, Some(msg), old.as_ref());
    }

    /// Stores a retained message with its expiry timer (the replaced one's cancelled);
    /// returns the message it replaces.
    pub(super) fn put_retained(&mut self, msg: Arc<Message>) -> Option<Arc<Message>> {
        let (topic, expires_at) = (msg.topic.clone(), msg.expires_at);
        let old = self.retained.insert(&topic, msg);
        let old_at = old.as_ref().and_then(|m| m.expires_at);
        self.timers.retained_replaced(&topic, old_at, expires_at);
        old
    }

    /// Removes the retained message of `topic` with its expiry timer; returns it.
    fn take_retained(&mut self, topic: &str) -> Option<Arc<Message>> {
        let old = self.retained.remove(topic)?;
        self.timers.retained_replaced(topic, old.expires_at, None);
        Some(old)
    }

    /// Removes the retained message of `topic` when its expiry timer fires: it is never sent
    /// [MQTT-3.3.2-5], and no longer counts against `max_retained_messages` and
    /// `max_stored_bytes`.
    pub(super) fn retained_expired(&mut self, topic: &str) {
        let Some(old) = self.retained.remove(topic) else {
            // The timers follow every store and removal: a timer without its message is a
            // broken invariant, shown rather than hidden.
            debug_assert!(
                false,
                "retained expiry timer of {topic:?} without a message"
            );
            tracing::error!(topic, "retained expiry timer without a message");
            return;
        };
        self.retained_bytes = self.retained_bytes.saturating_sub(old.weight());
        self.journal_retained(&old.topic, None, Some(&old));
    }

    /// Delivers a message to every matching subscription; returns how many sessions got it
    /// (with the cluster on, share groups count as matched but are left to the cluster,
    /// which hands the message to one member in the whole cluster: see
    /// [`Broker::route_shared_remote`]).
    pub(super) fn route(&mut self, now: Instant, msg: Arc<Message>) -> usize {
        let shared_here = !self.export.enabled();
        self.route_with(now, msg, shared_here)
    }

    /// [`Broker::route`], with the share groups served here (`shared`) or only counted.
    pub(super) fn route_with(&mut self, now: Instant, msg: Arc<Message>, shared: bool) -> usize {
        if !self.watches.is_empty() {
            self.watches.offer(&msg);
        }
        let mut targets: Vec<Target> = Vec::new();
        let sessions = &self.sessions;
        self.subs.for_each_match(&msg.topic, |idx, sub| {
            if sub.options.no_local {
                // [MQTT-3.8.3-3] not back to the client that published it.
                let own = sessions
                    .get(idx)
                    .is_ok_and(|s| Some(&s.client_id) == msg.origin.as_ref());
                if own {
                    return;
                }
            }
            targets.push(Target {
                idx,
                qos: sub.options.qos,
                retain_as_published: sub.options.retain_as_published,
                id: sub.id,
            });
        });
        let mut count = 0;
        targets.sort_unstable_by_key(|t| t.idx);
        let mut i = 0;
        while let Some(first) = targets.get(i) {
            let idx = first.idx;
            let start = i;
            while targets.get(i).is_some_and(|t| t.idx == idx) {
                i += 1;
            }
            if !self.may(idx, &msg.topic, Access::Read) {
                self.stats.deliveries_denied += 1;
                continue;
            }
            let delivery = merged_delivery(&msg, targets.get(start..i).unwrap_or_default());
            let granted = targets
                .get(start..i)
                .unwrap_or_default()
                .iter()
                .map(|t| t.qos)
                .max()
                .unwrap_or(QoS::AtMostOnce);
            if granted < msg.qos && !self.policy.bridges.is_empty() {
                self.count_capped(now, idx, &msg, granted);
            }
            self.deliver(now, idx, delivery);
            count += 1;
        }
        if shared {
            count + self.route_shared(now, &msg)
        } else {
            count + self.shared_groups_matching(&msg.topic)
        }
    }

    /// The delivery of `msg` to session `idx` alone, by the session's own (non-shared)
    /// subscriptions, with the same rules as [`Broker::route`]: `None` when none matches,
    /// No Local excludes it, or the session may not read the topic. For messages a session
    /// takes in outside the routing of the moment (a cluster replay).
    pub(super) fn delivery_for(&mut self, idx: SessionIdx, msg: &Arc<Message>) -> Option<Delivery> {
        let s = self.session(idx).ok()?;
        let targets: Vec<Target> = s
            .subscriptions
            .iter()
            .filter(|(f, _)| !f.starts_with("$share/"))
            .filter(|(f, _)| makelaar_proto::topic::filter_matches(f, &msg.topic))
            // [MQTT-3.8.3-3] not back to the client that published it.
            .filter(|(_, sub)| !(sub.options.no_local && msg.origin.as_ref() == Some(&s.client_id)))
            .map(|(_, sub)| Target {
                idx,
                qos: sub.options.qos,
                retain_as_published: sub.options.retain_as_published,
                id: sub.id,
            })
            .collect();
        if targets.is_empty() {
            return None;
        }
        if !self.may(idx, &msg.topic, Access::Read) {
            self.stats.deliveries_denied += 1;
            return None;
        }
        Some(merged_delivery(msg, &targets))
    }

    /// Hands one delivery to a session: sent now if it is connected and its window has room,
    /// queued if it must be kept, dropped otherwise.
    pub(super) fn deliver(&mut self, now: Instant, idx: SessionIdx, d: Delivery) {
        let queue_qos0 = self.limits.queue_qos0_messages || self.bridge_of(idx).is_some();
        let Ok(s) = self.session_mut(idx) else {
            return;
        };
        match s.conn {
            Some(conn) if d.qos == QoS::AtMostOnce => self.transmit(now, idx, conn, d, 0),
            Some(conn) if s.window_open() && s.queue.is_empty() => {
                let packet_id = s.next_packet_id();
                self.transmit(now, idx, conn, d, packet_id);
            }
            Some(_) => self.enqueue(now, idx, d),
            // [MQTT-3.1.2-5] an offline session keeps QoS 1/2 messages (QoS 0 when configured,
            // and always for a bridge, as Mosquitto does: its queue has its own bounds).
            None if d.qos != QoS::AtMostOnce || queue_qos0 => self.enqueue(now, idx, d),
            None => self.stats.dropped_offline_qos0 += 1,
        }
    }

    fn enqueue(&mut self, now: Instant, idx: SessionIdx, d: Delivery) {
        let (mut max_msgs, mut max_bytes) = (
            self.limits.max_queued_messages,
            self.limits.max_queued_bytes,
        );
        let bridge = self.bridge_of(idx);
        if let Some(b) = bridge {
            max_msgs = match b.max_queued_messages {
                0 => usize::MAX,
                n => n,
            };
            max_bytes = b.max_queued_bytes;
            if let Some(max_age) = b.max_age {
                self.drop_aged(now, idx, max_age);
            }
        }
        let Ok(s) = self.session_mut(idx) else {
            return;
        };
        let over_bytes = max_bytes != 0 && s.queued_weight() + d.msg.weight() > max_bytes;
        let full = s.queued_count() >= max_msgs || over_bytes;
        // A connected subscriber that is behind slows its publishers down (their acks wait,
        // see `handle_publish`) rather than losing what they sent; the queue may overshoot
        // its limit by what publishers already have in flight, up to a hard cap.
        let hard_cap = max_msgs.saturating_mul(2).max(max_msgs + ONLINE_OVERSHOOT);
        if full && s.conn.is_some() && d.qos != QoS::AtMostOnce && s.queued_count() < hard_cap {
            self.congested = Some(idx);
            self.keep_queued(idx, d);
            return;
        }
        if !full {
            self.keep_queued(idx, d);
            return;
        }
        let when_full = bridge.map(|b| b.when_full);
        // A bridge's queue that makes room: the oldest message goes (telemetry), or the
        // oldest QoS 0 one.
        let victim = match when_full {
            Some(WhenFull::DropOldest) => s.queue.front().map(|_| 0),
            Some(WhenFull::DropQos0First) => s.queue.iter().position(|q| q.qos == QoS::AtMostOnce),
            _ => None,
        };
        if let Some(old) = victim.and_then(|i| s.remove_queued(i)) {
            let client_id = s.client_id.clone();
            if !s.drop_logged {
                s.drop_logged = true;
                tracing::warn!(client_id = %client_id, max_queued_messages = max_msgs, max_queued_bytes = max_bytes, policy = ?when_full, "bridge queue full: dropping queued messages to make room until the remote catches up");
            }
            self.stats.dropped_queue_full += 1;
            let drops = self.stats.bridge_drops.entry(client_id).or_default();
            if old.qos == QoS::AtMostOnce && when_full == Some(WhenFull::DropQos0First) {
                drops.qos0 += 1;
            } else {
                drops.oldest += 1;
            }
            self.journal_done(idx, &old);
            self.keep_queued(idx, d);
            return;
        }
        if !s.drop_logged {
            s.drop_logged = true;
            tracing::warn!(client_id = %s.client_id, max_queued_messages = max_msgs, max_queued_bytes = max_bytes, "session queue full: dropping new messages for this client until it catches up");
        }
        let client_id = s.client_id.clone();
        self.stats.dropped_queue_full += 1;
        if bridge.is_some() {
            self.stats
                .bridge_drops
                .entry(client_id)
                .or_default()
                .refused += 1;
            if d.qos != QoS::AtMostOnce {
                // A bridge's full queue refuses: the publisher is told (5.0: 0x97; 3.x:
                // disconnected, see `handle_publish`).
                self.bridge_refused = true;
            }
        }
    }

    /// A message above the QoS of a bridge's topic line (its local subscription) goes out
    /// at that QoS [MQTT-3.8.4-8]: counted, and logged once per topic line, again at most
    /// every [`CAP_LOG_EVERY`] with the count.
    fn count_capped(&mut self, now: Instant, idx: SessionIdx, msg: &Message, qos: QoS) {
        let Ok(s) = self.session(idx) else {
            return;
        };
        if !self.policy.bridges.contains_key(&*s.client_id) {
            return;
        }
        let client_id = s.client_id.clone();
        let line = s
            .subscriptions
            .iter()
            .filter(|(f, sub)| {
                sub.options.qos == qos && makelaar_proto::topic::filter_matches(f, &msg.topic)
            })
            .map(|(f, _)| f.to_string())
            .next()
            .unwrap_or_default();
        let n = self
            .stats
            .bridge_capped
            .entry(client_id.clone())
            .or_default();
        *n += 1;
        let total = *n;
        let key = (client_id.clone(), line.clone());
        let due = self
            .cap_logged
            .get(&key)
            .is_none_or(|at| now.saturating_duration_since(*at) >= CAP_LOG_EVERY);
        if due {
            self.cap_logged.insert(key, now);
            tracing::warn!(client_id = %client_id, topic_line = %line, line_qos = qos as u8, message_qos = msg.qos as u8, topic = %msg.topic, downgraded_so_far = total, "bridge: messages above the QoS of this topic line are sent at its QoS; raise the line's QoS to carry them as published");
        }
    }

    /// The queue bounds of a bridge's local session; `None` for every other session.
    pub(super) fn bridge_of(&self, idx: SessionIdx) -> Option<BridgeSession> {
        if self.policy.bridges.is_empty() {
            return None;
        }
        let s = self.session(idx).ok()?;
        self.policy.bridges.get(&*s.client_id).copied()
    }

    /// Drops the messages at the front of a bridge's queue that waited longer than
    /// `max_age`, counted and logged.
    fn drop_aged(&mut self, now: Instant, idx: SessionIdx, max_age: Duration) {
        let mut dropped = Vec::new();
        let Ok(s) = self.session_mut(idx) else {
            return;
        };
        while let Some(front) = s.queue.front() {
            let aged = front
                .msg
                .received_at
                .is_some_and(|at| now.saturating_duration_since(at) > max_age);
            if !aged {
                break;
            }
            dropped.extend(s.pop_queue());
        }
        if dropped.is_empty() {
            return;
        }
        let client_id = s.client_id.clone();
        self.count_aged(&client_id, dropped.len() as u64, max_age);
        for d in &dropped {
            self.journal_done(idx, d);
        }
    }

    /// Counts and logs messages a bridge's queue dropped for their age.
    pub(super) fn count_aged(&mut self, client_id: &Arc<str>, n: u64, max_age: Duration) {
        let drops = self
            .stats
            .bridge_drops
            .entry(client_id.clone())
            .or_default();
        // Logged at the first and then at every thousandth, so a long outage does not flood
        // the log.
        if drops.max_age.is_multiple_of(1000) {
            tracing::warn!(client_id = %client_id, max_age_secs = max_age.as_secs(), dropped_so_far = drops.max_age + n, "bridge queue: dropping messages older than max_age");
        }
        drops.max_age += n;
    }

    /// Appends a delivery to the session's queue (journaled when the session is durable; a
    /// durable session does not get it when the store is full).
    pub(super) fn keep_queued(&mut self, idx: SessionIdx, mut d: Delivery) {
        let durable = self.session(idx).is_ok_and(|s| s.stored);
        if durable && d.seq == 0 && self.store_full(d.msg.weight()) {
            return;
        }
        self.journal_keep(idx, &mut d, KeptState::Queued);
        if let Ok(s) = self.session_mut(idx) {
            s.push_queue(d);
        }
    }

    /// Sends one delivery on the connection; QoS 1/2 take a packet id and a window slot.
    fn transmit(
        &mut self,
        now: Instant,
        idx: SessionIdx,
        conn: ConnId,
        mut d: Delivery,
        packet_id: u16,
    ) {
        if d.msg.is_expired(now) {
            self.stats.dropped_expired += 1; // [MQTT-3.3.2-5]
            self.journal_done(idx, &d);
            return;
        }
        if let Some(max_age) = self.bridge_of(idx).and_then(|b| b.max_age) {
            let aged = d
                .msg
                .received_at
                .is_some_and(|at| now.saturating_duration_since(at) > max_age);
            if aged {
                if let Ok(s) = self.session(idx) {
                    let client_id = s.client_id.clone();
                    self.count_aged(&client_id, 1, max_age);
                }
                self.journal_done(idx, &d);
                return;
            }
        }
        let strip = if d.msg.properties.user_properties.is_empty() {
            None
        } else {
            self.origin_to_strip(idx)
        };
        let Ok(s) = self.session_mut(idx) else {
            return;
        };
        let mut publish = d.msg.to_publish(&d, now, s.version.is_v5());
        publish.packet_id = packet_id;
        if let Some(name) = strip {
            publish
                .properties
                .user_properties
                .retain(|(k, _)| **k != *name);
        }
        let packet = Packet::Publish(publish);
        if let Some(max) = s.client.max_packet_size {
            if packet.encoded_len(s.version) > max as usize {
                // [MQTT-3.1.2-25] too large for the client: dropped as if delivered.
                self.stats.dropped_too_large += 1;
                self.journal_done(idx, &d);
                return;
            }
        }
        let (sent_qos, payload_len) = (d.qos, d.msg.payload.len());
        if d.qos == QoS::AtMostOnce {
            self.journal_done(idx, &d); // an offline QoS 0 message, sent and gone
        } else {
            self.journal_keep(idx, &mut d, KeptState::AwaitingAck(packet_id));
            if let Ok(s) = self.session_mut(idx) {
                s.inflight.push_back(Inflight {
                    packet_id,
                    delivery: d,
                    state: OutboundState::AwaitingAck,
                });
            }
        }
        self.stats.sent.get_mut(sent_qos).count(payload_len);
        self.send(conn, packet);
    }

    /// Moves queued messages into the inflight window while it has room.
    pub(super) fn fill_window(&mut self, now: Instant, idx: SessionIdx) {
        loop {
            let Ok(s) = self.session_mut(idx) else {
                return;
            };
            let Some(conn) = s.conn else { return };
            if !s.window_open() {
                return;
            }
            let Some(d) = s.pop_queue() else {
                s.drop_logged = false;
                return;
            };
            let held = !s.deferred_acks.is_empty();
            // Checked again: the identity or the rules may have changed since it was queued.
            if !self.may(idx, &d.msg.topic, Access::Read) {
                self.stats.deliveries_denied += 1;
                self.journal_done(idx, &d);
                if held {
                    self.release_deferred_acks(idx);
                }
                continue;
            }
            let Ok(s) = self.session_mut(idx) else {
                return;
            };
            let packet_id = if d.qos == QoS::AtMostOnce {
                0
            } else {
                s.next_packet_id()
            };
            self.transmit(now, idx, conn, d, packet_id);
            if held {
                self.release_deferred_acks(idx);
            }
        }
    }

    /// On session resume, re-sends unacknowledged PUBLISH with DUP set and PUBREL for those
    /// already received, in their original order [MQTT-4.4.0-1] [MQTT-4.6.0-1].
    pub(super) fn resend_inflight(&mut self, now: Instant, idx: SessionIdx) {
        let strip = self.origin_to_strip(idx);
        let Ok(s) = self.session_mut(idx) else {
            return;
        };
        let Some(conn) = s.conn else { return };
        let v5 = s.version.is_v5();
        let mut packets = Vec::with_capacity(s.inflight.len());
        for m in &s.inflight {
            packets.push(match m.state {
                OutboundState::AwaitingAck => {
                    let mut p = m.delivery.msg.to_publish(&m.delivery, now, v5);
                    p.packet_id = m.packet_id;
                    p.dup = true; // [MQTT-3.3.1-1]
                    if let Some(name) = &strip {
                        p.properties.user_properties.retain(|(k, _)| **k != **name);
                    }
                    Packet::Publish(p)
                }
                OutboundState::AwaitingComp => Packet::PubRel(PubAck::new(m.packet_id)),
            });
        }
        for p in packets {
            self.send(conn, p);
        }
    }

    /// Whether `p`, published by `client_id`, carries the loop guard's property naming this
    /// broker as its origin and is not from one of this broker's own bridges (whose relay
    /// stamps what it brings in with this broker's id).
    fn came_back(&self, p: &Publish, client_id: &str) -> bool {
        let Some(name) = self.policy.origin_property.as_deref() else {
            return false;
        };
        !p.properties.user_properties.is_empty()
            && !self.policy.broker_id.is_empty()
            && !self.policy.bridges.contains_key(client_id)
            && crate::bridge::origin_of(&p.properties, name)
                .is_some_and(|(origin, _)| origin == self.policy.broker_id)
    }

    /// The loop guard's property, when deliveries to session `idx` must lose it: every
    /// session but a bridge's (the property is for bridges between Makelaar brokers only).
    fn origin_to_strip(&self, idx: SessionIdx) -> Option<Arc<str>> {
        let name = self.policy.origin_property.as_deref()?;
        let s = self.session(idx).ok()?;
        (!self.policy.bridges.contains_key(&*s.client_id)).then(|| Arc::from(name))
    }

    pub(super) fn handle_puback(&mut self, now: Instant, idx: SessionIdx, packet_id: u16) {
        let Ok(s) = self.session_mut(idx) else {
            return;
        };
        let acked = s.inflight_mut(packet_id).is_some_and(|m| {
            m.state == OutboundState::AwaitingAck && m.delivery.qos == QoS::AtLeastOnce
        });
        if acked {
            if let Some(m) = s.take_inflight(packet_id) {
                self.journal_done(idx, &m.delivery);
            }
            self.fill_window(now, idx);
        }
    }

    pub(super) fn handle_pubrec(&mut self, now: Instant, conn: ConnId, idx: SessionIdx, a: PubAck) {
        let Ok(s) = self.session_mut(idx) else {
            return;
        };
        let v5 = s.version.is_v5();
        let mut rel = PubAck::new(a.packet_id);
        match s.inflight_mut(a.packet_id) {
            Some(m) if m.delivery.qos == QoS::ExactlyOnce => {
                if a.reason.is_error() {
                    // [MQTT-4.3.3-?] a failed PUBREC ends the exchange: no PUBREL.
                    if let Some(m) = s.take_inflight(a.packet_id) {
                        self.journal_done(idx, &m.delivery);
                    }
                    self.fill_window(now, idx);
                    return;
                }
                m.state = OutboundState::AwaitingComp;
                let mut d = m.delivery.clone();
                self.journal_keep(idx, &mut d, KeptState::AwaitingComp(a.packet_id));
            }
            _ if v5 => rel.reason = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
            _ => {}
        }
        self.send(conn, Packet::PubRel(rel));
    }

    pub(super) fn handle_pubrel(&mut self, conn: ConnId, idx: SessionIdx, packet_id: u16) {
        let Ok(s) = self.session_mut(idx) else {
            return;
        };
        let known = s.end_inbound_qos2(packet_id);
        let v5 = s.version.is_v5();
        if known {
            self.journal_inbound_qos2(idx, packet_id, false);
        }
        let mut comp = PubAck::new(packet_id);
        if !known && v5 {
            comp.reason = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND; // [MQTT-3.7.2-1]
        }
        self.send(conn, Packet::PubComp(comp));
    }

    pub(super) fn handle_pubcomp(&mut self, now: Instant, idx: SessionIdx, packet_id: u16) {
        let Ok(s) = self.session_mut(idx) else {
            return;
        };
        let done = s
            .inflight_mut(packet_id)
            .is_some_and(|m| m.state == OutboundState::AwaitingComp);
        if done {
            if let Some(m) = s.take_inflight(packet_id) {
                self.journal_done(idx, &m.delivery);
            }
            self.fill_window(now, idx);
        }
    }
}
