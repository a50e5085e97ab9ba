//! An application message as the router holds it: shared by every session it is delivered to.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use makelaar_proto::{Properties, Publish, QoS};

/// Payloads up to this size are copied out of the read buffer (see `from_publish`).
const COPY_BELOW: usize = 4096;

/// One application message. Routed as `Arc<Message>`: fan-out to many subscribers shares one
/// copy of the topic, payload and properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    /// The QoS it was published with; each delivery uses at most this.
    pub qos: QoS,
    /// The retain flag it was published with.
    pub retain: bool,
    /// Properties forwarded unchanged [MQTT-3.3.2-17..20]; topic alias and subscription
    /// identifiers are per delivery and never stored here.
    pub properties: Properties,
    /// When the Message Expiry Interval runs out, if it was given.
    pub expires_at: Option<Instant>,
    /// Client id of the publisher, for no-local subscriptions; `None` for the broker's own.
    pub origin: Option<Arc<str>>,
    /// When the broker received it (for a message loaded from the store: when it was
    /// loaded); a bridge's `max_age` counts from here.
    pub received_at: Option<Instant>,
    /// Where a cluster stores it (QoS 1/2 in cluster mode): set once, by the shell, when its
    /// append returns (a message of this node's clients, routed before) or when it is read
    /// from the cluster. A session that moves to another node lists its messages by it.
    pub log_position: OnceLock<LogPosition>,
}

/// A message's place in a cluster's log: its partition stream and sequence there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPosition {
    /// The partition index.
    pub partition: u16,
    /// The stream sequence.
    pub seq: u64,
}

impl Message {
    /// Builds the routed message from a client's PUBLISH (topic alias already resolved).
    pub fn from_publish(now: Instant, publish: Publish, origin: Option<Arc<str>>) -> Message {
        let mut properties = publish.properties;
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        let expires_at = properties
            .message_expiry_interval
            .map(|s| now + Duration::from_secs(u64::from(s)));
        // The decoder hands out the payload as a slice of the connection's read buffer; a small
        // message kept (queued, retained) would pin that whole buffer, so small ones are copied.
        let payload = if publish.payload.len() <= COPY_BELOW {
            Bytes::copy_from_slice(&publish.payload)
        } else {
            publish.payload
        };
        Message {
            topic: publish.topic,
            payload,
            qos: publish.qos,
            retain: publish.retain,
            properties,
            expires_at,
            origin,
            received_at: Some(now),
            log_position: OnceLock::new(),
        }
    }

    /// Whether its Message Expiry Interval has passed: it must then not be delivered
    /// [MQTT-3.3.2-5].
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    /// The seconds left of the Message Expiry Interval, rounded up, to forward
    /// [MQTT-3.3.2-6].
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX)
        })
    }

    /// Bytes it occupies in a queue (topic + payload), for `max_queued_bytes`.
    pub fn weight(&self) -> usize {
        self.topic.len() + self.payload.len()
    }

    /// The PUBLISH packet delivering this message.
    pub fn to_publish(&self, delivery: &Delivery, now: Instant, v5: bool) -> Publish {
        let properties = if v5 {
            let mut p = self.properties.clone();
            p.subscription_identifiers
                .clone_from(&delivery.subscription_ids);
            p.message_expiry_interval = self.remaining_expiry(now);
            p
        } else {
            Properties::default()
        };
        Publish {
            dup: false,
            qos: delivery.qos,
            retain: delivery.retain,
            topic: self.topic.clone(),
            packet_id: 0,
            properties,
            payload: self.payload.clone(),
        }
    }
}

/// How one message goes to one session: the per-subscriber part of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub msg: Arc<Message>,
    /// min(published QoS, granted QoS) [MQTT-3.8.4-8].
    pub qos: QoS,
    /// The retain flag on the wire: set for retained messages sent at subscribe, and on live
    /// messages only with retain-as-published [MQTT-3.3.1-12], [MQTT-3.3.1-13].
    pub retain: bool,
    /// Subscription identifiers of every matching subscription (5.0) [MQTT-3.3.4-3].
    pub subscription_ids: Vec<u32>,
    /// The shared-subscription group it came through, so it can be re-sent to another member
    /// if this session goes away before acknowledging it.
    pub shared_group: Option<u32>,
    /// Its number in the session's stored queue, once a durable session keeps it (0 before);
    /// see [`crate::persist`].
    pub seq: u64,
}

/// Estimated memory a packet holds while it waits in a queue (topic and payload, plus a fixed
/// share for the rest): what the shell's outboxes and the core's parked CONNECTs count
/// against their byte budgets.
pub fn queued_cost(p: &makelaar_proto::Packet) -> usize {
    match p {
        makelaar_proto::Packet::Publish(p) => p.topic.len() + p.payload.len() + 64,
        _ => 64,
    }
}
