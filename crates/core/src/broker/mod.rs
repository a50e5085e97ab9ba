//! The router's state and rules: sessions, subscriptions, retained messages, wills.
//!
//! One owner (the router task in the shell) drives a [`Broker`] with `handle_*` calls carrying
//! the current time, then drains [`Action`]s with [`Broker::poll_action`] and carries them out.
//! Packet-level checks that belong to one connection (aliases, receive maximum, keep-alive)
//! happen before, in [`crate::conn::ConnState`].
//!
//! The rules work on parts of their own, each behind one type a cluster can swap or reach:
//! the sessions (`sessions`: a slab behind [`SessionIdx`], found by client id and connection),
//! the deadlines (`timers`: will delays, session expiry, drain deadlines, retained expiry) and
//! the journal of durable changes (`journal`).

mod admin;
mod connect;
mod export;
mod journal;
mod park;
mod publish;
mod sessions;
mod shared;
mod stats;
mod subscribe;
mod timers;
mod will;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use makelaar_proto::{Disconnect, Packet, ProtocolVersion, ReasonCode};

use crate::auth::{Access, Authorizer};
use crate::conn::Violation;
use crate::limits::Limits;
use crate::message::Message;
use crate::retain::RetainedStore;
use crate::session::{ConnId, Session, Subscription};
use crate::topic::TopicTree;

pub use admin::MAX_WATCHES;
pub use export::{
    ClusterBacklog, DueWill, Exported, FilterChange, KeptMessage, KeptWill, SessionSnapshot,
};
pub use park::{DRAIN_DEADLINE, HELD_MAX_BYTES};
pub use sessions::{MissingSession, SessionIdx};
pub use shared::SharedSubscriptions;
pub use stats::{BridgeDrops, BridgeQueue, Flow, PerQos, QueueTotals, Stats};
pub use will::{session_left, will_wait, RemoteWill};

/// What the shell must do after a `handle_*` call.
// `Packet` is large (properties inline); boxing it would cost an allocation per packet on the
// hot path to save a memcpy, and actions are short-lived.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this packet on that connection, after everything sent before.
    Send(ConnId, Packet),
    /// Close that connection once what was sent before is written, for this reason.
    Close(ConnId, CloseReason),
    /// Read this returning session's kept messages from the store and hand them to
    /// [`Broker::handle_backlog_loaded`].
    LoadBacklog(Arc<str>),
    /// A CONNECT for this connection's client id waits (see `park`): forward what its client
    /// has already sent (what is read and buffered, and what the socket has ready, without
    /// waiting more than a moment), in order, then call [`Broker::handle_drained`]. The
    /// CONNECT is decided at [`DRAIN_DEADLINE`] without the answer.
    Drain(ConnId),
}

/// Why the broker closes a connection: for the shell's log of who left and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent DISCONNECT with this reason code (always 0x00 from 3.x clients).
    ClientDisconnect(ReasonCode),
    /// The broker ends the connection with this reason code: the one of the refusing CONNACK,
    /// or of the DISCONNECT a 5.0 client is sent (3.x clients are not told): a protocol error,
    /// 0x8E session taken over, 0x8B server shutting down, ...
    Server(ReasonCode),
}

/// Extra, broker-wide configuration of rules that are not limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Filters refused outright with SUBACK 0x80 (exact match of the requested filter).
    pub deny_subscriptions: Vec<String>,
    /// Prefix of the Response Information given to 5.0 clients that request it; the client id
    /// is appended.
    pub response_information_prefix: String,
    /// Whether taking over a connection publishes its will (see [`WillOnTakeover`]).
    pub will_on_takeover: WillOnTakeover,
    /// The local sessions of bridges, by client id: their queue bounds replace
    /// `max_queued_messages` and `max_queued_bytes`, and they receive the loop guard's user
    /// property (see [`crate::bridge`]).
    pub bridges: HashMap<String, BridgeSession>,
    /// The filters each bridge's local session subscribes (its `out` topic lines), by
    /// client id: when the session connects, any other subscription it holds (a topic line
    /// since removed from the configuration) is removed.
    pub bridge_filters: HashMap<String, Vec<String>>,
    /// The loop guard's user property (`makelaar-origin`): removed from what is delivered to
    /// every session but the bridges', and a message that carries it naming this broker
    /// (`broker_id`) has come back over bridges: it is acknowledged and dropped.
    pub origin_property: Option<String>,
    /// This broker's id in the loop guard's property.
    pub broker_id: String,
}

/// The queue of a bridge's local session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BridgeSession {
    /// Most messages queued; 0: no limit.
    pub max_queued_messages: usize,
    /// Most bytes (topic + payload) queued; 0: no limit.
    pub max_queued_bytes: usize,
    /// What a full queue does with one more message.
    pub when_full: WhenFull,
    /// Queued messages older than this are dropped (counted, logged) when the queue takes
    /// a new one and before one is sent; `None`: no limit.
    pub max_age: Option<std::time::Duration>,
}

/// What a bridge's full queue does with one more message (`when_full`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WhenFull {
    /// The new message is not kept: a 5.0 publisher's PUBACK/PUBREC says 0x97 (Quota
    /// exceeded), a 3.1/3.1.1 publisher of QoS 1/2 is disconnected (it cannot be told
    /// [MQTT-3.3.5-2]; it sends the message again when it reconnects).
    #[default]
    Reject,
    /// The oldest queued message is dropped to make room (telemetry).
    DropOldest,
    /// The oldest queued QoS 0 message is dropped to make room; without one, as `Reject`.
    DropQos0First,
}

/// Whether a takeover publishes the old connection's will.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WillOnTakeover {
    /// The specification's rule: a takeover closes the old network connection, so its will
    /// is published [MQTT-3.1.2-8] [MQTT-3.1.4-3], unless it has a Will Delay and the
    /// session carries on [MQTT-3.1.3-9].
    #[default]
    Spec,
    /// Mosquitto's rule: a persistent session resumed by a CONNECT with Clean Start 0 does
    /// not publish the old connection's will (a device reconnecting after a half-open
    /// connection does not flap to "offline"); the will is dropped. It is published when
    /// the old session ends with its connection or the new CONNECT has Clean Start 1.
    Mosquitto,
}

/// The broker's whole routing state. See the module documentation.
pub struct Broker {
    limits: Limits,
    policy: Policy,
    /// Every session, found by index, client id or connection.
    sessions: sessions::Sessions,
    subs: TopicTree<SessionIdx, Subscription>,
    shared: SharedSubscriptions,
    retained: RetainedStore<Arc<Message>>,
    /// Every deadline: will delays, session expiry, drain deadlines, retained expiry.
    timers: timers::Timers,
    actions: VecDeque<Action>,
    stats: Stats,
    id_seed: u64,
    assigned_ids: u64,
    /// The cluster node's name that assigned client ids carry (see
    /// [`Broker::set_assigned_id_node`]).
    id_node: Option<String>,
    /// Set while routing when a connected subscriber's queue is over its limit.
    congested: Option<SessionIdx>,
    /// Set while routing when a bridge's full queue refused the message (see `enqueue`).
    bridge_refused: bool,
    /// Changes to durable state not yet drained (recorded once the store turns it on).
    journal: journal::Journal,
    /// Bytes of messages in the durable store (kept messages and retained ones).
    stored_bytes: usize,
    /// Bytes (topic + payload) of the retained messages.
    retained_bytes: usize,
    /// Whether `max_stored_bytes` biting has been logged since the store last had room.
    store_full_logged: bool,
    /// Access control; `None` allows everything without asking (see [`crate::auth`]).
    authorizer: Option<Box<dyn Authorizer>>,
    /// The administrator's topic watches (see [`crate::watch`]).
    watches: crate::watch::Watches,
    /// When the downgrade of each bridge topic line (local client id, filter) was last
    /// logged.
    cap_logged: HashMap<(Arc<str>, String), Instant>,
    /// CONNECTs waiting for the connection holding their client id to drain, by client id
    /// (see `park`); empty but for the moment of a reconnect.
    parked: HashMap<Arc<str>, park::Waiting>,
    /// The client id each parked connection waits for.
    parked_ids: HashMap<ConnId, Arc<str>>,
    /// What the cluster must hear (off unless enabled; see `export`).
    export: export::Export,
}

impl Broker {
    /// An empty broker. `id_seed` makes assigned client ids differ between broker runs.
    pub fn new(limits: Limits, policy: Policy, id_seed: u64) -> Broker {
        Broker {
            limits,
            policy,
            sessions: sessions::Sessions::default(),
            subs: TopicTree::new(),
            shared: SharedSubscriptions::default(),
            retained: RetainedStore::new(),
            timers: timers::Timers::default(),
            actions: VecDeque::new(),
            stats: Stats::default(),
            id_seed,
            assigned_ids: 0,
            id_node: None,
            congested: None,
            bridge_refused: false,
            cap_logged: HashMap::new(),
            journal: journal::Journal::default(),
            stored_bytes: 0,
            retained_bytes: 0,
            store_full_logged: false,
            authorizer: None,
            watches: crate::watch::Watches::default(),
            parked: HashMap::new(),
            parked_ids: HashMap::new(),
            export: export::Export::default(),
        }
    }

    /// Makes the client ids this broker assigns carry a cluster node's name, so that they
    /// are unique across the cluster and claim nothing: `makelaar-<node>-<seed>-<n>`.
    pub fn set_assigned_id_node(&mut self, node: &str) {
        self.id_node = Some(node.to_owned());
    }

    /// Installs the authorizer every access is checked with (see [`crate::auth`]), or with
    /// `None` removes it. It applies from the next check on, to messages already queued too:
    /// they are checked again when they are sent.
    pub fn set_authorizer(&mut self, authorizer: Option<Box<dyn Authorizer>>) {
        self.authorizer = authorizer;
    }

    /// Whether an authorizer is installed.
    pub fn has_authorizer(&self) -> bool {
        self.authorizer.is_some()
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The next thing the shell must do, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Broker::handle_timeout`] must next be called (will delays, session expiry,
    /// a CONNECT waiting for a drain, the expiry of a retained message).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// Fires every timer due at `now`: drain deadlines, retained messages, delayed wills and
    /// expired sessions.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(event) = self.timers.pop_due(now) {
            match event {
                timers::TimerEvent::Drain { client_id, key } => {
                    self.drain_deadline_passed(now, &client_id, key)
                }
                timers::TimerEvent::RetainedExpiry(topic) => self.retained_expired(&topic),
                timers::TimerEvent::Session(idx) => self.session_timer_fired(now, idx),
            }
        }
    }

    /// A packet from a connection whose CONNECT was accepted (after `ConnState::inbound`).
    pub fn handle_packet(&mut self, now: Instant, conn: ConnId, packet: Packet) {
        let Some(idx) = self.sessions.by_conn(conn) else {
            // Behind a parked CONNECT: held until it is decided.
            if let Some(packet) = self.hold_if_parked(now, conn, packet) {
                if self.sessions.by_conn(conn).is_some() {
                    self.handle_packet(now, conn, packet); // decided just now
                }
            }
            return; // else taken over or closed meanwhile: nothing to do
        };
        match packet {
            Packet::Publish(p) => self.handle_publish(now, conn, idx, p),
            Packet::PubAck(a) => self.handle_puback(now, idx, a.packet_id),
            Packet::PubRec(a) => self.handle_pubrec(now, conn, idx, a),
            Packet::PubRel(a) => self.handle_pubrel(conn, idx, a.packet_id),
            Packet::PubComp(a) => self.handle_pubcomp(now, idx, a.packet_id),
            Packet::Subscribe(s) => self.handle_subscribe(now, conn, idx, s),
            Packet::Unsubscribe(u) => self.handle_unsubscribe(now, conn, idx, u),
            Packet::Disconnect(d) => self.handle_disconnect(now, conn, idx, d),
            // Keep-alive is the connection's: `ConnState::inbound` answers PINGREQ, and
            // never routes it [MQTT-3.12.4-1].
            Packet::PingReq => {}
            // [MQTT-4.12.0-?] no authentication method was agreed, so AUTH is not expected.
            Packet::Auth(_) => self.protocol_violation(now, conn, Violation::UnexpectedAuth),
            // `ConnState::inbound` stops these before the router; kept so that the broker
            // is right on its own.
            Packet::Connect(_) => self.protocol_violation(now, conn, Violation::SecondConnect),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                self.protocol_violation(now, conn, Violation::ServerOnlyPacket)
            }
        }
    }

    /// The connection ended without DISCONNECT (socket lost, keep-alive expired, a protocol
    /// error found by the shell): the will is published, the session detached.
    pub fn handle_connection_lost(&mut self, now: Instant, conn: ConnId) {
        if self.unpark_lost(conn) {
            return; // its CONNECT was still waiting: it never had a session
        }
        self.detach(now, conn);
    }

    /// Ends a connection for breaking the protocol: 5.0 clients are told why
    /// [MQTT-4.13.1-1], the will is published, the session detached.
    pub fn protocol_violation(&mut self, now: Instant, conn: ConnId, violation: Violation) {
        let reason = violation.reason();
        tracing::debug!(conn, %reason, text = violation.text(), "closing connection");
        let version = self.session_of_conn(conn).map(|s| s.version);
        if let Some(d) = version.and_then(|v| violation.disconnect(v)) {
            self.send(conn, d);
        }
        self.detach(now, conn);
        self.actions
            .push_back(Action::Close(conn, CloseReason::Server(reason)));
    }

    /// Publishes a message of the broker's own (`$SYS`), retained.
    pub fn publish_internal(&mut self, now: Instant, topic: &str, payload: bytes::Bytes) {
        let msg = Message {
            topic: Arc::from(topic),
            payload,
            qos: makelaar_proto::QoS::AtMostOnce,
            retain: true,
            properties: makelaar_proto::Properties::default(),
            expires_at: None,
            origin: None,
            received_at: Some(now),
            log_position: std::sync::OnceLock::new(),
        };
        let msg = Arc::new(msg);
        self.store_retained(&msg);
        // Never exported (each node has its own): its share groups are served here.
        self.route_with(now, msg, true);
    }

    /// Sends DISCONNECT with `reason` to every connected 5.0 client and closes every
    /// connection (graceful shutdown: wills of clients are not published). CONNECTs still
    /// waiting for a drain are refused (server unavailable).
    pub fn shutdown(&mut self, reason: ReasonCode) {
        self.refuse_parked();
        let conns: Vec<(ConnId, SessionIdx)> = self.sessions.conns().collect();
        for (conn, idx) in conns {
            if self.session(idx).is_ok_and(|s| s.version.is_v5()) {
                let d = Disconnect {
                    reason,
                    ..Disconnect::default()
                };
                self.send(conn, Packet::Disconnect(d));
            }
            self.actions
                .push_back(Action::Close(conn, CloseReason::Server(reason)));
        }
    }

    /// Replaces the rules of bridges' local sessions (a reload of the configuration): the
    /// queue bounds apply from the next message on, the `out` filters at the session's next
    /// connection; `broker_id` (when not empty) names this broker in the loop guard.
    pub fn set_bridge_sessions(
        &mut self,
        bridges: HashMap<String, BridgeSession>,
        filters: HashMap<String, Vec<String>>,
        broker_id: String,
    ) {
        self.policy.bridges = bridges;
        self.policy.bridge_filters = filters;
        if !broker_id.is_empty() {
            self.policy.broker_id = broker_id;
        }
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Clients connected now.
    pub fn clients_connected(&self) -> usize {
        self.sessions.connected()
    }

    /// Sessions known, connected or not.
    pub fn sessions_total(&self) -> usize {
        self.sessions.len()
    }

    /// Subscriptions held, shared ones included.
    pub fn subscription_count(&self) -> usize {
        self.subs.len() + self.shared.member_count()
    }

    /// Retained messages stored.
    pub fn retained_count(&self) -> usize {
        self.retained.len()
    }

    /// Bytes of messages in the durable store (0 without one).
    pub fn stored_bytes(&self) -> usize {
        self.stored_bytes
    }

    fn send(&mut self, conn: ConnId, packet: Packet) {
        self.actions.push_back(Action::Send(conn, packet));
    }

    /// The session `idx` names: one the broker holds an index of is there by construction,
    /// so a missing one is a bug, reported by [`sessions::Sessions::get`] (callers only stop).
    #[track_caller]
    fn session(&self, idx: SessionIdx) -> Result<&Session, MissingSession> {
        self.sessions.get(idx)
    }

    /// The session connection `conn` is attached to; `None` when it is not (any more).
    fn session_of_conn(&self, conn: ConnId) -> Option<&Session> {
        let idx = self.sessions.by_conn(conn)?;
        self.session(idx).ok()
    }

    /// [`Broker::session`], to change it.
    #[track_caller]
    fn session_mut(&mut self, idx: SessionIdx) -> Result<&mut Session, MissingSession> {
        self.sessions.get_mut(idx)
    }

    /// Whether session `idx` may `access` `topic`: always, without an authorizer.
    fn may(&self, idx: SessionIdx, topic: &str, access: Access) -> bool {
        let Some(auth) = &self.authorizer else {
            return true;
        };
        self.session(idx)
            .is_ok_and(|s| auth.allowed(&s.client_id, s.username.as_deref(), topic, access))
    }

    fn version_of(&self, idx: SessionIdx) -> ProtocolVersion {
        self.session(idx)
            .map_or(ProtocolVersion::V311, |s| s.version)
    }
}

#[cfg(test)]
mod admin_tests;
#[cfg(test)]
mod auth_tests;
#[cfg(test)]
mod bridge_tests;
#[cfg(test)]
mod stats_tests;
#[cfg(test)]
mod takeover_tests;
#[cfg(test)]
mod tests;
