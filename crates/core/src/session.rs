//! A session: what the broker remembers about one client id, connected or not.
//!
//! Plain data: the subscriptions, the outbound QoS 1/2 messages in flight and queued, and the
//! inbound QoS 2 packet ids awaiting PUBREL. The rules that move messages between these live in
//! `broker`; this module keeps the bookkeeping small and obvious. A durable store (a later
//! issue) persists exactly these fields.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use makelaar_proto::{ProtocolVersion, SubscriptionOptions, Will};

use crate::message::Delivery;
use crate::persist::Backlog;

/// Identifies a network connection; assigned by the shell.
pub type ConnId = u64;

/// One subscription of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub options: SubscriptionOptions,
    /// 5.0 subscription identifier, if given.
    pub id: Option<u32>,
}

/// Where an outbound QoS 1/2 message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundState {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    AwaitingAck,
    /// PUBREL sent, waiting for PUBCOMP.
    AwaitingComp,
}

/// An outbound message that has a packet id.
#[derive(Debug, Clone)]
pub struct Inflight {
    pub packet_id: u16,
    pub delivery: Delivery,
    pub state: OutboundState,
}

/// What the client asked for in CONNECT that shapes what we send it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// The client's Receive Maximum, capped by our `max_inflight_messages`.
    pub inflight_window: u16,
    /// The client's Maximum Packet Size (5.0), if any.
    pub max_packet_size: Option<u32>,
    /// Request Problem Information (5.0): reason strings and user properties allowed on
    /// acknowledgements [MQTT-3.1.2-29].
    pub problem_information: bool,
}

/// The state of one client id.
#[derive(Debug)]
pub struct Session {
    pub client_id: Arc<str>,
    /// The username the shell authenticated for the last connection (`None`: no username);
    /// what access checks use (see [`crate::auth`]).
    pub username: Option<Arc<str>>,
    /// The connection currently attached, if any.
    pub conn: Option<ConnId>,
    pub version: ProtocolVersion,
    /// The keep-alive in force for the attached connection, in seconds (for the dashboard).
    pub keep_alive: u16,
    /// When the client last connected or went away (for the dashboard); `None` for a session
    /// restored from the store whose client has not come back yet.
    pub since: Option<std::time::Instant>,
    pub client: ClientLimits,
    /// Filter (as subscribed, `$share/...` included) → subscription.
    pub subscriptions: HashMap<String, Subscription>,
    /// Session Expiry Interval in seconds; `u32::MAX` never expires.
    pub expiry_interval: u32,
    /// The will of the attached connection.
    pub will: Option<Box<Will>>,
    /// A will waiting out its delay after the connection ended.
    pub pending_will: Option<Box<Will>>,
    /// Outbound messages with a packet id, in the order they were first sent.
    pub inflight: VecDeque<Inflight>,
    /// Outbound messages waiting for room in the inflight window (or for the client).
    pub queue: VecDeque<Delivery>,
    /// Sum of `Message::weight` over `queue`.
    pub queued_bytes: usize,
    /// Inbound QoS 2 packet ids received and acknowledged with PUBREC, awaiting PUBREL.
    pub inbound_qos2: Vec<u16>,
    /// When the pending will is due.
    pub will_at: Option<std::time::Instant>,
    /// When the session expires, while no connection is attached.
    pub expires_at: Option<std::time::Instant>,
    /// Acknowledgements (PUBACK/PUBREC to a publisher's connection) held back while this
    /// session's queue is over its limit; sent as it drains.
    pub deferred_acks: VecDeque<(ConnId, makelaar_proto::Packet)>,
    /// Whether a full queue has been logged since it last had room (one log line per episode).
    pub drop_logged: bool,
    /// Whether the session is in the durable store (journaled; see [`crate::persist`]).
    pub stored: bool,
    /// The last sequence number given to a kept message.
    pub last_seq: u64,
    /// Bytes of this session's messages in the store (see `max_stored_bytes`).
    pub stored_weight: usize,
    /// Kept messages still in the store only (after a restart, until the client returns).
    /// While there are some, nothing is sent from the queue: they come first.
    pub backlog: Option<Backlog>,
    next_packet_id: u16,
    /// The highest packet id given out ([`Session::next_packet_id`]); below `u16::MAX` for a
    /// bridge's local session.
    pub id_ceiling: u16,
}

impl Session {
    /// A new, empty session.
    pub fn new(client_id: Arc<str>, version: ProtocolVersion, client: ClientLimits) -> Session {
        Session {
            client_id,
            username: None,
            conn: None,
            version,
            keep_alive: 0,
            since: None,
            client,
            subscriptions: HashMap::new(),
            expiry_interval: 0,
            will: None,
            pending_will: None,
            inflight: VecDeque::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            inbound_qos2: Vec::new(),
            will_at: None,
            expires_at: None,
            deferred_acks: VecDeque::new(),
            drop_logged: false,
            stored: false,
            last_seq: 0,
            stored_weight: 0,
            backlog: None,
            next_packet_id: 1,
            id_ceiling: u16::MAX,
        }
    }

    /// Whether another QoS 1/2 message may be sent now.
    pub fn window_open(&self) -> bool {
        self.conn.is_some()
            && self.backlog.is_none()
            && self.inflight.len() < usize::from(self.client.inflight_window)
    }

    /// A packet id not used by any message in flight [MQTT-2.2.1-3].
    pub fn next_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_packet_id.clamp(1, self.id_ceiling.max(1));
            self.next_packet_id = if id >= self.id_ceiling { 1 } else { id + 1 };
            if !self.inflight.iter().any(|m| m.packet_id == id) {
                return id;
            }
        }
    }

    /// Takes the inflight entry with this packet id out of the window.
    pub fn take_inflight(&mut self, packet_id: u16) -> Option<Inflight> {
        let pos = self
            .inflight
            .iter()
            .position(|m| m.packet_id == packet_id)?;
        self.inflight.remove(pos)
    }

    /// The inflight entry with this packet id.
    pub fn inflight_mut(&mut self, packet_id: u16) -> Option<&mut Inflight> {
        self.inflight.iter_mut().find(|m| m.packet_id == packet_id)
    }

    /// Messages queued, in memory and in the store.
    pub fn queued_count(&self) -> usize {
        self.queue.len() + self.backlog.map_or(0, |b| b.count)
    }

    /// Bytes queued, in memory and in the store.
    pub fn queued_weight(&self) -> usize {
        self.queued_bytes + self.backlog.map_or(0, |b| b.bytes)
    }

    /// Numbers a message the session keeps (see [`crate::persist`]).
    pub fn next_seq(&mut self) -> u64 {
        self.last_seq += 1;
        self.last_seq
    }

    /// Appends to the queue (the caller checked the limits).
    pub fn push_queue(&mut self, d: Delivery) {
        self.queued_bytes += d.msg.weight();
        self.queue.push_back(d);
    }

    /// Takes the queued delivery at `i` (0: the oldest).
    pub fn remove_queued(&mut self, i: usize) -> Option<Delivery> {
        let d = self.queue.remove(i)?;
        self.queued_bytes = self.queued_bytes.saturating_sub(d.msg.weight());
        Some(d)
    }

    /// Takes the oldest queued delivery.
    pub fn pop_queue(&mut self) -> Option<Delivery> {
        let d = self.queue.pop_front()?;
        self.queued_bytes = self.queued_bytes.saturating_sub(d.msg.weight());
        Some(d)
    }

    /// Records an inbound QoS 2 packet id; false if it was already awaiting PUBREL (a resent
    /// PUBLISH, which must not be delivered twice [MQTT-4.3.3-10]).
    pub fn begin_inbound_qos2(&mut self, packet_id: u16) -> bool {
        if self.inbound_qos2.contains(&packet_id) {
            return false;
        }
        self.inbound_qos2.push(packet_id);
        true
    }

    /// Releases an inbound QoS 2 packet id on PUBREL; false if it was unknown.
    pub fn end_inbound_qos2(&mut self, packet_id: u16) -> bool {
        match self.inbound_qos2.iter().position(|&p| p == packet_id) {
            Some(pos) => {
                self.inbound_qos2.swap_remove(pos);
                true
            }
            None => false,
        }
    }
}
