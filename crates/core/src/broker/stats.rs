//! The broker's counters and the figures of its state, for `$SYS` and metrics. Counters are
//! plain integers in the broker (its owner, the router task, is the only writer): counting
//! costs an add, and nobody else's cache line is touched.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use makelaar_proto::QoS;

use super::Broker;

/// Counters the broker keeps (the `$SYS` topics and the metrics read them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// PUBLISH packets received from clients and routed (wills, `$SYS` and refused ones
    /// excluded), by QoS, with their payload bytes.
    pub received: PerQos<Flow>,
    /// PUBLISH packets sent to clients, by the QoS they were sent with.
    pub sent: PerQos<Flow>,
    /// Messages dropped because a session's queue was full.
    pub dropped_queue_full: u64,
    /// Messages not stored (5.0: refused with 0x97) because the store was at
    /// `max_stored_bytes`.
    pub dropped_store_full: u64,
    /// Messages dropped because they came back over a bridge to the broker they started at
    /// (the loop guard's property names this broker).
    pub dropped_bridge_loop: u64,
    /// Messages dropped because they expired before delivery.
    pub dropped_expired: u64,
    /// Messages not sent because they exceed the client's Maximum Packet Size.
    pub dropped_too_large: u64,
    /// Messages received that matched no subscription (a retained one is still kept).
    pub dropped_no_subscribers: u64,
    /// QoS 0 messages not kept for an offline session (`queue_qos0_messages` is off).
    pub dropped_offline_qos0: u64,
    /// Sessions removed because their expiry interval passed.
    pub sessions_expired: u64,
    /// Most clients connected at once.
    pub max_connected: usize,
    /// PUBLISH packets (and wills) refused by the authorizer.
    pub publishes_denied: u64,
    /// Messages not delivered to a subscriber because the authorizer refused it Read access.
    pub deliveries_denied: u64,
    /// What bridges' queues dropped, by the bridge's local client id.
    pub bridge_drops: BTreeMap<Arc<str>, BridgeDrops>,
    /// Messages a bridge carries at the QoS of its topic line, below the one they were
    /// published with, by the bridge's local client id.
    pub bridge_capped: BTreeMap<Arc<str>, u64>,
}

/// What one bridge's queue dropped, by reason (`[bridge.queue]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BridgeDrops {
    /// Queued messages dropped to make room (`when_full = "drop-oldest"`).
    pub oldest: u64,
    /// Queued QoS 0 messages dropped to make room (`when_full = "drop-qos0-first"`).
    pub qos0: u64,
    /// New messages not kept because the queue was full (the publisher of QoS 1/2 is told:
    /// 0x97, or disconnected).
    pub refused: u64,
    /// Queued messages older than `max_age`.
    pub max_age: u64,
}

impl BridgeDrops {
    /// Every reason with its name, as `$SYS` and the metrics show them.
    pub fn by_reason(&self) -> [(&'static str, u64); 4] {
        [
            ("queue_oldest", self.oldest),
            ("queue_qos0", self.qos0),
            ("queue_full", self.refused),
            ("max_age", self.max_age),
        ]
    }
}

/// A bridge's queue right now: its local session's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BridgeQueue {
    /// Messages queued (in memory and in the store).
    pub messages: usize,
    /// Their bytes (topic + payload).
    pub bytes: usize,
    /// Messages sent to the bridge and not yet acknowledged.
    pub inflight: usize,
    /// How long the oldest message in memory has waited.
    pub oldest_age: Option<Duration>,
    pub drops: BridgeDrops,
    /// Messages sent at the QoS of their topic line, below the one they were published with.
    pub capped: u64,
}

impl Stats {
    /// PUBLISH packets received, every QoS.
    pub fn messages_received(&self) -> u64 {
        self.received.iter().map(|(_, f)| f.messages).sum()
    }

    /// PUBLISH packets sent, every QoS.
    pub fn messages_sent(&self) -> u64 {
        self.sent.iter().map(|(_, f)| f.messages).sum()
    }
}

/// Messages and their payload bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flow {
    pub messages: u64,
    pub payload_bytes: u64,
}

impl Flow {
    /// Counts one message of `payload` bytes.
    pub(super) fn count(&mut self, payload: usize) {
        self.messages += 1;
        self.payload_bytes += payload as u64;
    }
}

/// One value per QoS level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerQos<T> {
    pub qos0: T,
    pub qos1: T,
    pub qos2: T,
}

impl<T> PerQos<T> {
    /// The value of `qos`.
    pub fn get(&self, qos: QoS) -> &T {
        match qos {
            QoS::AtMostOnce => &self.qos0,
            QoS::AtLeastOnce => &self.qos1,
            QoS::ExactlyOnce => &self.qos2,
        }
    }

    /// The value of `qos`, to change.
    pub fn get_mut(&mut self, qos: QoS) -> &mut T {
        match qos {
            QoS::AtMostOnce => &mut self.qos0,
            QoS::AtLeastOnce => &mut self.qos1,
            QoS::ExactlyOnce => &mut self.qos2,
        }
    }

    /// Each QoS with its value, 0 to 2.
    pub fn iter(&self) -> impl Iterator<Item = (QoS, &T)> {
        [
            (QoS::AtMostOnce, &self.qos0),
            (QoS::AtLeastOnce, &self.qos1),
            (QoS::ExactlyOnce, &self.qos2),
        ]
        .into_iter()
    }
}

/// What the sessions hold right now, summed over all of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueTotals {
    /// Messages waiting in sessions' queues (in memory, and in the store for sessions whose
    /// client has not come back yet).
    pub queued_messages: usize,
    /// Their bytes (topic + payload).
    pub queued_bytes: usize,
    /// Messages sent and not yet acknowledged (QoS 1 and 2).
    pub inflight_messages: usize,
    /// The longest queue of one session.
    pub longest_queue: usize,
}

impl Broker {
    /// Sums the sessions' queues and inflight windows. It visits every session (a few
    /// milliseconds for a million): meant for a scrape now and then, not for every message.
    pub fn queue_totals(&self) -> QueueTotals {
        let mut t = QueueTotals::default();
        for s in self.sessions.iter() {
            let queued = s.queued_count();
            t.queued_messages += queued;
            t.queued_bytes += s.queued_weight();
            t.inflight_messages += s.inflight.len();
            t.longest_queue = t.longest_queue.max(queued);
        }
        t
    }

    /// Subscriptions held: (ordinary, shared-group memberships).
    pub fn subscription_counts(&self) -> (usize, usize) {
        (self.subs.len(), self.shared.member_count())
    }

    /// Whether `conn` is a connected client's connection (not yet disconnected, lost or
    /// taken over).
    pub fn is_connected(&self, conn: crate::session::ConnId) -> bool {
        self.sessions.by_conn(conn).is_some()
    }

    /// Bytes (topic + payload) of the retained messages.
    pub fn retained_bytes(&self) -> usize {
        self.retained_bytes
    }

    /// The queue of the bridge whose local session is `client_id` (empty while the
    /// session does not exist yet).
    pub fn bridge_queue(&self, now: Instant, client_id: &str) -> BridgeQueue {
        let drops = self
            .stats
            .bridge_drops
            .get(client_id)
            .copied()
            .unwrap_or_default();
        let capped = self
            .stats
            .bridge_capped
            .get(client_id)
            .copied()
            .unwrap_or_default();
        let Some(s) = self
            .sessions
            .by_client_id(client_id)
            .and_then(|i| self.session(i).ok())
        else {
            return BridgeQueue {
                drops,
                capped,
                ..BridgeQueue::default()
            };
        };
        BridgeQueue {
            messages: s.queued_count(),
            bytes: s.queued_weight(),
            inflight: s.inflight.len(),
            oldest_age: s
                .queue
                .front()
                .and_then(|d| d.msg.received_at)
                .map(|at| now.saturating_duration_since(at)),
            drops,
            capped,
        }
    }

    /// [`Broker::bridge_queue`] of every bridge, by its local client id.
    pub fn bridge_queues(&self, now: Instant) -> Vec<(String, BridgeQueue)> {
        self.policy
            .bridges
            .keys()
            .map(|id| (id.clone(), self.bridge_queue(now, id)))
            .collect()
    }
}
