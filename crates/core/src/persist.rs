//! The journal: every change to the state a durable store keeps, in the order the broker
//! made it.
//!
//! The broker's memory is the authority while it runs; a store mirrors what must survive a
//! restart. When journaling is on ([`crate::Broker::enable_journal`]), every `handle_*` call
//! appends [`Change`]s that the shell drains with [`crate::Broker::drain_changes`] and commits
//! before it sends the acknowledgements of that batch (see the broker crate's `gate`). Changes
//! carry `Arc`s, not copies: serialising them is the store thread's work, not the router's.
//!
//! What is journaled: sessions that outlive their connection (expiry interval > 0), their
//! subscriptions, the messages they keep (queued and in flight, with their QoS 1/2 state),
//! their inbound QoS 2 packet ids, and retained messages (except the broker's own `$SYS`).
//! A session with expiry 0 ends with its connection, so nothing of it is journaled.

use std::sync::Arc;
use std::time::Instant;

use makelaar_proto::{ProtocolVersion, Will};

use crate::message::{Delivery, Message};
use crate::session::Subscription;

/// Where a kept message stands in its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeptState {
    /// Waiting to be sent.
    Queued,
    /// PUBLISH sent with this packet id, waiting for PUBACK/PUBREC.
    AwaitingAck(u16),
    /// PUBREL sent for this packet id, waiting for PUBCOMP.
    AwaitingComp(u16),
}

/// The stored attributes of a durable session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionState {
    pub version: ProtocolVersion,
    /// Session Expiry Interval in seconds; `u32::MAX` never expires.
    pub expiry_interval: u32,
    /// When it expires, if it is offline (`None` while connected or when it never expires).
    pub expires_at: Option<Instant>,
    /// A will waiting out its delay, and when it is due.
    pub pending_will: Option<(Box<Will>, Instant)>,
    /// Whether a client is connected to it. `expires_at` says so too, except for a session
    /// that never expires: the store needs this to tell an offline one apart.
    pub connected: bool,
    /// The authenticated username of its last connection (see [`crate::auth`]).
    pub username: Option<Arc<str>>,
}

/// One change to durable state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A durable session was created or its stored attributes changed.
    Session {
        client_id: Arc<str>,
        state: SessionState,
    },
    /// The session ended: it and everything under it is gone.
    SessionEnded {
        client_id: Arc<str>,
    },
    Subscribed {
        client_id: Arc<str>,
        filter: String,
        subscription: Subscription,
    },
    Unsubscribed {
        client_id: Arc<str>,
        filter: String,
    },
    /// A message the session keeps, new (`delivery.seq` is its number in the session).
    Kept {
        client_id: Arc<str>,
        delivery: Delivery,
        state: KeptState,
    },
    /// A kept message moved on (sent, or PUBREC received). It carries the whole delivery so
    /// a store can rewrite the record without reading it first.
    Moved {
        client_id: Arc<str>,
        delivery: Delivery,
        state: KeptState,
    },
    /// A kept message is done with (acknowledged, expired, dropped or handed elsewhere).
    Done {
        client_id: Arc<str>,
        seq: u64,
    },
    /// An inbound QoS 2 packet id was recorded (PUBREC sent) or released (PUBREL received).
    InboundQos2 {
        client_id: Arc<str>,
        packet_id: u16,
        pending: bool,
    },
    /// The retained message of a topic was set or (`None`) cleared.
    Retained {
        topic: Arc<str>,
        message: Option<Arc<Message>>,
    },
}

/// A session read back from a store at start-up (offline).
#[derive(Debug, Clone)]
pub struct RestoredSession {
    pub client_id: Arc<str>,
    pub state: SessionState,
    pub subscriptions: Vec<(String, Subscription)>,
    pub inbound_qos2: Vec<u16>,
    /// Kept messages left in the store, loaded when the client returns.
    pub backlog: Backlog,
}

/// Kept messages of a session that are in the store but not in memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// How many (counted against `max_queued_messages`).
    pub count: usize,
    /// Their weight (counted against `max_queued_bytes`).
    pub bytes: usize,
    /// The highest sequence number used, so new ones follow it.
    pub last_seq: u64,
}

/// A kept message read back from the store when its session resumes.
#[derive(Debug, Clone)]
pub struct LoadedMessage {
    pub delivery: Delivery,
    pub state: KeptState,
}
