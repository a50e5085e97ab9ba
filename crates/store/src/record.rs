//! The records the store keeps, the operations that change them, and what start-up reads back.
//!
//! Plain data that mirrors `makelaar_core::session::Session` and `makelaar_core::message`,
//! with one difference: times are wall-clock unix milliseconds, because an `Instant` means
//! nothing after a restart.

use std::sync::Arc;

use bytes::Bytes;
use makelaar_proto::{Properties, QoS, SubscriptionOptions, Will};

/// Session Expiry Interval meaning "never expires".
pub const NEVER_EXPIRES: u32 = u32::MAX;

/// What the broker remembers about one client id, apart from its subscriptions, queue and
/// inbound QoS 2 ids (which have records of their own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The protocol level byte of the client's last CONNECT (3, 4 or 5).
    pub protocol_version: u8,
    /// Session Expiry Interval in seconds; [`NEVER_EXPIRES`] never expires.
    pub expiry_interval: u32,
    /// When the last connection ended, or `None` while a connection is attached. A session
    /// with `None` here after a restart was connected when the broker stopped: its expiry
    /// starts at the restart.
    pub disconnected_at_ms: Option<u64>,
    /// A will waiting out its Will Delay Interval (5.0) after the connection ended.
    pub pending_will: Option<Box<Will>>,
    /// When the pending will is due.
    pub will_at_ms: Option<u64>,
    /// The username the client was authenticated with, which access checks of the offline
    /// session (its will, messages kept for it) use. Records written before it was stored
    /// read as `None`.
    pub username: Option<String>,
}

/// One subscription of a session, keyed by (client id, filter as subscribed, `$share/...`
/// included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionRecord {
    /// QoS, No Local, Retain As Published and Retain Handling.
    pub options: SubscriptionOptions,
    /// The 5.0 Subscription Identifier, if given.
    pub subscription_id: Option<u32>,
}

/// An application message, as retained or as held for a subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    pub topic: Arc<str>,
    pub payload: Bytes,
    /// The QoS it was published with.
    pub qos: QoS,
    /// The retain flag it was published with.
    pub retain: bool,
    /// The 5.0 properties forwarded with it (stored whole, whatever they hold).
    pub properties: Properties,
    /// When its Message Expiry Interval runs out, if it has one.
    pub expires_at_ms: Option<u64>,
    /// Client id of the publisher (for No Local), `None` for the broker's own messages.
    pub origin: Option<Arc<str>>,
}

impl MessageRecord {
    /// Bytes it counts for in queue depths: topic + payload, as `core::message::Message::weight`.
    pub fn weight(&self) -> u64 {
        (self.topic.len() + self.payload.len()) as u64
    }
}

/// Where an outbound message stands in the QoS flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueuedState {
    /// Not sent yet (offline client or full inflight window).
    Queued,
    /// PUBLISH sent with this packet id, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    AwaitingAck { packet_id: u16 },
    /// PUBREL sent for this packet id, waiting for PUBCOMP: the message itself must not be sent
    /// again [MQTT-4.3.3-4].
    AwaitingComp { packet_id: u16 },
}

/// One outbound message of a session (queued or inflight), keyed by (client id, seq). The
/// order of delivery is the order of `seq`.
///
/// Besides the message it carries what is particular to this delivery (see
/// `core::message::Delivery`): a subscriber may get it at a lower QoS than it was published
/// with, with subscription identifiers of its own, through a shared subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedRecord {
    /// Shared: one message fanned out to many sessions is one record in memory (it is
    /// still written once per session).
    pub message: Arc<MessageRecord>,
    /// min(published QoS, granted QoS) [MQTT-3.8.4-8].
    pub qos: QoS,
    /// The retain flag to send.
    pub retain: bool,
    /// Subscription identifiers of the matching subscriptions (5.0).
    pub subscription_ids: Vec<u32>,
    /// The `$share/GROUP/FILTER` it came through, so it can be handed to another member.
    pub shared_filter: Option<Arc<str>>,
    pub state: QueuedState,
}

/// One change to the stored state. Batches of them are applied atomically, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Creates or replaces a session record.
    PutSession {
        client_id: Arc<str>,
        record: SessionRecord,
    },
    /// Removes the session and everything under it: subscriptions, queue, inbound QoS 2 ids.
    DeleteSession {
        client_id: Arc<str>,
    },
    /// Creates or replaces a subscription.
    PutSubscription {
        client_id: Arc<str>,
        filter: Arc<str>,
        record: SubscriptionRecord,
    },
    DeleteSubscription {
        client_id: Arc<str>,
        filter: Arc<str>,
    },
    /// Creates or replaces (a state change) an outbound message. `seq` is chosen by the caller
    /// and increases per client for new messages.
    PutQueued {
        client_id: Arc<str>,
        seq: u64,
        record: QueuedRecord,
    },
    DeleteQueued {
        client_id: Arc<str>,
        seq: u64,
    },
    /// An inbound QoS 2 packet id acknowledged with PUBREC, awaiting PUBREL.
    PutInbound {
        client_id: Arc<str>,
        packet_id: u16,
    },
    DeleteInbound {
        client_id: Arc<str>,
        packet_id: u16,
    },
    /// Sets the retained message of a topic.
    PutRetained {
        topic: Arc<str>,
        message: Arc<MessageRecord>,
    },
    DeleteRetained {
        topic: Arc<str>,
    },
}

impl Op {
    /// Approximate bytes it holds, for the bound on the committer's queue.
    pub fn weight(&self) -> usize {
        const FIXED: usize = 48;
        FIXED
            + match self {
                Op::PutSession { client_id, record } => {
                    client_id.len()
                        + record
                            .pending_will
                            .as_ref()
                            .map_or(0, |w| w.topic.len() + w.payload.len())
                }
                Op::DeleteSession { client_id }
                | Op::DeleteQueued { client_id, .. }
                | Op::PutInbound { client_id, .. }
                | Op::DeleteInbound { client_id, .. } => client_id.len(),
                Op::PutSubscription {
                    client_id, filter, ..
                }
                | Op::DeleteSubscription { client_id, filter } => client_id.len() + filter.len(),
                Op::PutQueued {
                    client_id, record, ..
                } => client_id.len() + record.message.weight() as usize,
                Op::PutRetained { topic, message } => topic.len() + message.weight() as usize,
                Op::DeleteRetained { topic } => topic.len(),
            }
    }
}

/// How many outbound messages a session has stored, without loading them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueDepth {
    /// Queued and inflight messages.
    pub count: u64,
    /// Sum of [`MessageRecord::weight`] over them.
    pub bytes: u64,
    /// A seq above every stored one (0 if none): new messages must use this or higher. It is
    /// a high-water mark of the seqs written since the session was created, so it does not go
    /// down when messages are deleted; a message put and deleted within one commit group never
    /// reaches the disk and may not count.
    pub next_seq: u64,
}

/// What start-up needs of one session; its queue is loaded with `Store::load_queue` when the
/// client comes back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionIndex {
    pub client_id: String,
    pub session: SessionRecord,
    /// Filter → subscription, in filter order.
    pub subscriptions: Vec<(String, SubscriptionRecord)>,
    /// Inbound QoS 2 packet ids awaiting PUBREL, ascending.
    pub inbound_qos2: Vec<u16>,
    pub queue: QueueDepth,
}

/// Everything start-up reads: every session (in client id order) and every retained message
/// (in topic order). Queue payloads are not in it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Index {
    pub sessions: Vec<SessionIndex>,
    pub retained: Vec<(String, MessageRecord)>,
    /// Records found under a client id that has no session record (subscriptions, queued
    /// messages, inbound ids); they are left out of `sessions`. Only a caller that wrote them
    /// without a `PutSession` produces these.
    pub orphans: u64,
}
