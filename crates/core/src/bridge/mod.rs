//! A bridge to another MQTT broker, sans-IO: a packet relay between two MQTT connections.
//!
//! - The **local** side is an MQTT 5.0 connection into this broker, as client
//!   `local_client_id`, with a session that never expires. Its subscriptions (one per `out`
//!   topic, with No Local and Retain As Published) make the broker queue what is to go out,
//!   and that session *is* the bridge's durable queue: the broker journals a durable
//!   session's queued and in-flight QoS 1/2 messages before it acknowledges the publisher,
//!   and re-sends in-flight messages (DUP) and PUBRELs when the session is resumed.
//! - The **remote** side is the bridge's client connection to the other broker.
//!
//! The relay acknowledges nothing on one side before the other side has acknowledged it:
//! a local PUBLISH with packet id N goes to the remote with id N (packet ids are per
//! direction, so the local broker's ids are free to use toward the remote), the remote's
//! PUBACK N becomes the local PUBACK N, and for QoS 2 PUBREC, PUBREL and PUBCOMP N are passed
//! along the same way. Inward, a remote PUBLISH N becomes a local PUBLISH N and the remote
//! gets its PUBACK/PUBREC only when the local broker answered with its own, which it sends
//! after the store has committed the message. So what either broker acknowledged is stored
//! on the other side: after a reconnect or a restart the local broker re-sends what the
//! remote did not acknowledge (exactly once for QoS 2 when the remote kept the session;
//! at least once when it lost it: then every unacknowledged message is sent again).
//!
//! The local connection lives only while the remote one does: while the remote is away,
//! the local session is offline and the broker queues for it (durably), and when the link
//! comes back, the local connection's Receive Maximum is the remote's, so the broker paces
//! the drain to what the remote accepts.
//!
//! The cycle, driven by [`Relay`]: `start` opens the local connection once to make the
//! session and its subscriptions (and publish the notification `0`), closes it and asks for
//! the remote connection ([`Output::ConnectRemote`]); on the remote's CONNACK the relay
//! subscribes the `in` topics there and publishes the notification `1`, then opens the local
//! connection ([`Output::ConnectLocal`]), resubscribes, and relays until one side goes; then
//! the local notification becomes `0` and the local connection is closed. The shell owns the
//! sockets, the pause between attempts ([`Backoff`]) and the choice of address.
//!
//! The relay's own packets (SUBSCRIBE, UNSUBSCRIBE, the QoS 1 notifications) use packet ids
//! from the top of the range (65533..=65535) and are finished before any relayed packet is
//! sent in the same direction, so they never overlap a relayed packet on the wire. Toward
//! the remote, the relayed ids are the local broker's, and it gives a bridge's session ids
//! up to [`RELAYED_ID_MAX`] only: so a resumed remote session's unfinished QoS 2 exchange
//! can never hold one of the relay's own ids [MQTT-2.2.1-3]. Toward this broker the relayed
//! ids are the remote's; this broker keeps a client's QoS 1 PUBLISH and SUBSCRIBE ids apart
//! from its unfinished inbound QoS 2 ones, so the relay's own packets there cannot be taken
//! for a re-sent QoS 2 message.

mod backoff;
mod route;

#[cfg(test)]
mod tests;

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use makelaar_proto::{
    ConnAck, Connect, Disconnect, Packet, Properties, ProtocolVersion, PubAck, Publish, QoS,
    ReasonCode, RetainHandling, Subscribe, SubscriptionOptions, Unsubscribe, Will,
};

pub use backoff::{Backoff, Restart};
pub use route::{origin_of, LoopGuard, Route, Verdict};

/// The highest packet id of a relayed message toward the remote: the ids above are the
/// relay's own (this broker numbers a bridge session's messages up to here).
pub const RELAYED_ID_MAX: u16 = 65532;

/// Packet ids of the relay's own packets, at the top of the range.
const OWN_SUBSCRIBE: u16 = 65535;
const OWN_UNSUBSCRIBE: u16 = 65534;
const OWN_NOTIFY_REMOTE: u16 = 65533;
const OWN_NOTIFY_LOCAL: u16 = 65534;
/// The Receive Maximum of the short local connection that sets the session up: the broker
/// may send one queued message on it, which stays unacknowledged (and is sent again).
const PRIMING_RECEIVE_MAXIMUM: u16 = 1;
/// How long a stop waits for the exchanges in flight to finish: a message the remote has
/// but whose acknowledgement has not reached this broker would be sent again (DUP) after a
/// restart, and a QoS 1 one delivered twice.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// What a bridge is configured to do, in the relay's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The bridge's name, for logs.
    pub name: String,
    pub routes: Vec<Route>,
    /// The MQTT version tried first toward the remote.
    pub protocol: ProtocolVersion,
    /// Set the bridge bit (0x80) in a 3.1/3.1.1 CONNECT.
    pub try_private: bool,
    /// Clean session / clean start at the remote.
    pub clean_session: bool,
    /// Start the local session afresh when the broker starts.
    pub local_clean_session: bool,
    pub remote_client_id: String,
    pub local_client_id: String,
    pub remote_username: Option<String>,
    pub remote_password: Option<Bytes>,
    /// The identity of the local side (ACL checks of bridged traffic).
    pub local_username: Option<String>,
    /// Keep alive toward the remote.
    pub keepalive: Duration,
    pub notifications: Option<Notifications>,
    /// UNSUBSCRIBE `out`-only topics at the remote on connect.
    pub attempt_unsubscribe: bool,
    /// False clears RETAIN on everything sent to the remote.
    pub outgoing_retain: bool,
    /// Largest packet sent to the remote (0: no limit of ours).
    pub max_packet_size: u32,
    /// Our Receive Maximum toward the remote (5.0); the in-flight window toward a 3.1.1
    /// remote.
    pub receive_maximum: u16,
    /// Session expiry asked of a 5.0 remote.
    pub session_expiry_interval: u32,
    /// The loop guard toward 5.0 remotes; `None`: off.
    pub loop_guard: Option<LoopGuard>,
    /// `start_type lazy`: connect only when messages wait; `None`: connect at once.
    pub lazy: Option<Lazy>,
}

/// `start_type lazy`: the link is made when `threshold` messages wait for the remote and
/// ended after `idle_timeout` without a message either way.
///
/// While waiting, the local side stays connected with a Receive Maximum of `threshold`, so
/// the broker hands it up to that many queued messages, which the relay counts and leaves
/// unacknowledged (they are sent again once the link is up). `threshold` must not exceed
/// the broker's `max_inflight_messages` (the shell caps it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lazy {
    pub threshold: u16,
    pub idle_timeout: Duration,
}

/// The notification topic: retained `1` when the link is up, `0` when it is down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notifications {
    pub topic: String,
    /// Only this broker's copy, none at the remote.
    pub local_only: bool,
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send on the local connection.
    Local(Packet),
    /// Send to the remote.
    Remote(Packet),
    /// Open the local connection and send this CONNECT.
    ConnectLocal(Box<Connect>),
    /// Close the local connection once what was sent on it is written.
    CloseLocal,
    /// Connect to the remote (after the shell's pause, see [`Backoff`]), then call
    /// [`Relay::remote_opened`].
    ConnectRemote,
    /// Close the remote connection: the link ended.
    CloseRemote(End),
}

/// Why a link to the remote ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The remote refused the CONNECT with this reason.
    Refused(ReasonCode),
    /// The remote refused the protocol version or the bridge bit: the next attempt, at
    /// once, goes without it.
    Fallback,
    /// The remote stayed silent past the keep-alive.
    KeepAliveTimeout,
    /// The remote sent DISCONNECT.
    Disconnected(ReasonCode),
    /// The remote broke the protocol.
    ProtocolError(&'static str),
    /// The local connection ended (the broker closed it or refused it).
    LocalGone,
    /// A lazy bridge's link carried nothing for `idle_timeout`.
    Idle,
    /// The bridge is stopping.
    Shutdown,
}

impl End {
    /// Whether the next attempt may follow at once (no pause).
    pub fn retry_at_once(&self) -> bool {
        matches!(self, End::Fallback | End::Idle)
    }
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Refused(r) => write!(f, "the remote refused the connection ({r})"),
            End::Fallback => {
                f.write_str("the remote refused the protocol version; retrying with an older one")
            }
            End::KeepAliveTimeout => f.write_str("the remote did not answer within the keep-alive"),
            End::Disconnected(r) => write!(f, "the remote sent DISCONNECT ({r})"),
            End::ProtocolError(why) => write!(f, "the remote broke the protocol: {why}"),
            End::LocalGone => f.write_str("the local side of the bridge was closed"),
            End::Idle => f.write_str("nothing to carry for idle_timeout (start_type lazy)"),
            End::Shutdown => f.write_str("the bridge is stopping"),
        }
    }
}

/// What the relay has done, for `$SYS` and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Links accepted by the remote.
    pub connects: u64,
    /// Messages sent to the remote.
    pub forwarded_out: u64,
    /// Messages brought in from the remote.
    pub forwarded_in: u64,
    /// Messages dropped by the loop guard.
    pub dropped_loop: u64,
    /// Messages no route carries (an old subscription of the session).
    pub dropped_no_route: u64,
    /// Messages too large for the remote's Maximum Packet Size.
    pub dropped_too_large: u64,
    /// Messages the remote refused with a reason code (5.0).
    pub refused_by_remote: u64,
    /// Messages sent at a lower QoS than received (the remote's Maximum QoS).
    pub downgraded: u64,
}

/// A bridge's link, as shown to the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Not connected; waiting to try again (or not started).
    Down,
    /// CONNECT sent, no CONNACK yet.
    Connecting,
    /// The remote accepted.
    Connected,
    /// Stopped for good.
    Stopped,
}

impl LinkState {
    /// `down`, `connecting`, `connected` or `stopped`.
    pub fn name(self) -> &'static str {
        match self {
            LinkState::Down => "down",
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not started.
    Idle,
    /// The short local connection that makes the session is open.
    Priming,
    /// No link; waiting for the shell to connect.
    Down,
    /// Lazy: no link; the local side is open, counting what waits for the remote.
    Waiting,
    /// CONNECT sent to the remote.
    Connecting,
    /// The remote accepted; the relay's own packets to it are in flight.
    Setup,
    /// The local connection is opening; its own packets are in flight.
    LocalOpening,
    /// Relaying.
    Ready,
    /// Stopped for good.
    Stopped,
}

/// What the remote said it accepts, from its CONNACK.
#[derive(Debug, Clone, Copy)]
struct RemoteLimits {
    max_qos: QoS,
    retain: bool,
    max_packet_size: Option<u32>,
    receive_maximum: u16,
    session_present: bool,
    keepalive: Duration,
}

/// One bridge's relay. See the module documentation.
#[derive(Debug)]
pub struct Relay {
    s: Settings,
    phase: Phase,
    out: VecDeque<Output>,
    /// The version in use toward the remote (after a fallback).
    version: ProtocolVersion,
    /// Whether the bridge bit is still tried.
    bridge_bit: bool,
    limits: RemoteLimits,
    /// The relay's own packets awaiting their acknowledgement, per side.
    remote_own: HashSet<u16>,
    local_own: HashSet<u16>,
    /// Remote packets received before the local side was ready.
    held: Vec<Packet>,
    /// Local → remote: ids in flight at the remote.
    out_inflight: HashSet<u16>,
    /// Local QoS 2 messages sent to the remote as QoS 1: its PUBACK becomes a local PUBREC.
    out_downgraded: HashSet<u16>,
    /// Local QoS 2 ids the relay answered itself (PUBREC): their PUBREL gets our PUBCOMP.
    local_rel_ours: HashSet<u16>,
    /// Remote → local: ids in flight at the local broker.
    in_inflight: HashSet<u16>,
    /// Remote QoS 2 ids the relay answered itself: their PUBREL gets our PUBCOMP.
    remote_rel_ours: HashSet<u16>,
    last_remote_send: Instant,
    ping_sent: Option<Instant>,
    connect_sent: Option<Instant>,
    connected_at: Option<Instant>,
    /// When the local side next gets a PINGREQ (it has a keep-alive like any client).
    local_ping_at: Option<Instant>,
    /// Lazy: the messages waiting (their packet ids; QoS 0 ones counted apart).
    waiting: HashSet<u16>,
    waiting_qos0: u16,
    /// Lazy: when a message last crossed the link.
    last_activity: Instant,
    /// Stopping: until when the exchanges in flight may finish; no new message crosses.
    draining_until: Option<Instant>,
    stats: RelayStats,
}

impl Relay {
    pub fn new(settings: Settings, now: Instant) -> Relay {
        let version = settings.protocol;
        let bridge_bit = settings.try_private && !version.is_v5();
        let keepalive = settings.keepalive;
        Relay {
            s: settings,
            phase: Phase::Idle,
            out: VecDeque::new(),
            version,
            bridge_bit,
            limits: RemoteLimits {
                max_qos: QoS::ExactlyOnce,
                retain: true,
                max_packet_size: None,
                receive_maximum: 1,
                session_present: false,
                keepalive,
            },
            remote_own: HashSet::new(),
            local_own: HashSet::new(),
            held: Vec::new(),
            out_inflight: HashSet::new(),
            out_downgraded: HashSet::new(),
            local_rel_ours: HashSet::new(),
            in_inflight: HashSet::new(),
            remote_rel_ours: HashSet::new(),
            last_remote_send: now,
            ping_sent: None,
            connect_sent: None,
            connected_at: None,
            local_ping_at: None,
            waiting: HashSet::new(),
            waiting_qos0: 0,
            last_activity: now,
            draining_until: None,
            stats: RelayStats::default(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.s
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    pub fn stats(&self) -> RelayStats {
        self.stats
    }

    /// The version spoken with the remote (after any fallback).
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// Whether the CONNECT to the remote carries the bridge bit.
    pub fn bridge_bit(&self) -> bool {
        self.bridge_bit
    }

    /// Messages relayed and not yet acknowledged, both ways.
    pub fn in_flight(&self) -> usize {
        self.out_inflight.len() + self.in_inflight.len()
    }

    /// Whether messages flow (the remote accepted and the local side is open).
    pub fn is_connected(&self) -> bool {
        matches!(
            self.phase,
            Phase::Ready | Phase::LocalOpening | Phase::Setup
        )
    }

    /// The link's state, as `$SYS` and the metrics show it.
    pub fn state(&self) -> LinkState {
        match self.phase {
            Phase::Ready | Phase::LocalOpening | Phase::Setup => LinkState::Connected,
            Phase::Connecting => LinkState::Connecting,
            Phase::Stopped => LinkState::Stopped,
            Phase::Idle | Phase::Priming | Phase::Down | Phase::Waiting => LinkState::Down,
        }
    }

    /// When the current or last link came up (until the next attempt), for the backoff's
    /// `stable`.
    pub fn connected_at(&self) -> Option<Instant> {
        self.connected_at
    }

    /// Starts the bridge: the local session is made (or resumed) first.
    pub fn start(&mut self, _now: Instant) {
        if self.phase != Phase::Idle {
            return;
        }
        self.phase = Phase::Priming;
        let connect = self.local_connect(self.s.local_clean_session, PRIMING_RECEIVE_MAXIMUM);
        self.out.push_back(Output::ConnectLocal(connect));
    }

    /// Stops the bridge: while messages are in flight, at most [`SHUTDOWN_GRACE`] for their
    /// acknowledgements (no new message crosses meanwhile); then the notification says `0` on
    /// both sides and both connections close.
    pub fn shutdown(&mut self, now: Instant) {
        if self.phase == Phase::Ready && self.in_flight() > 0 && self.draining_until.is_none() {
            // A clean stop sends nothing twice: the acknowledgements on their way are awaited
            // (at most SHUTDOWN_GRACE) while no new message crosses.
            tracing::info!(bridge = %self.s.name, in_flight = self.in_flight(), "stopping: waiting for the messages in flight to be acknowledged");
            self.draining_until = Some(now + SHUTDOWN_GRACE);
            return;
        }
        self.finish_shutdown(now);
    }

    /// Stopping, once nothing is in flight any more.
    fn check_drained(&mut self, now: Instant) {
        if self.draining_until.is_some() && self.phase == Phase::Ready && self.in_flight() == 0 {
            self.finish_shutdown(now);
        }
    }

    fn finish_shutdown(&mut self, now: Instant) {
        let (remote_up, local_up) = match self.phase {
            Phase::Stopped | Phase::Idle => (false, false),
            Phase::Priming | Phase::Waiting => (false, true),
            Phase::Down => (false, false),
            Phase::Connecting | Phase::Setup => (true, false),
            Phase::LocalOpening | Phase::Ready => (true, true),
        };
        if remote_up {
            self.notify_remote_down(now);
            self.send_remote(now, disconnect());
            self.out.push_back(Output::CloseRemote(End::Shutdown));
        }
        if local_up {
            self.local_down();
        }
        self.phase = Phase::Stopped;
    }

    /// The shell has opened a connection to the remote: the CONNECT to send on it.
    pub fn remote_opened(&mut self, now: Instant) -> Box<Connect> {
        self.phase = Phase::Connecting;
        self.connected_at = None;
        self.connect_sent = Some(now);
        self.last_remote_send = now;
        self.ping_sent = None;
        self.remote_own.clear();
        self.held.clear();
        self.out_inflight.clear();
        self.out_downgraded.clear();
        self.remote_rel_ours.clear();
        Box::new(self.remote_connect())
    }

    /// The CONNECT toward the remote.
    fn remote_connect(&self) -> Connect {
        let v5 = self.version.is_v5();
        let will = self
            .s
            .notifications
            .as_ref()
            .filter(|n| !n.local_only)
            .map(|n| Will {
                topic: n.topic.clone(),
                payload: Bytes::from_static(b"0"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: Properties::default(),
            });
        let mut properties = Properties::default();
        if v5 {
            if self.s.session_expiry_interval > 0 {
                properties.session_expiry_interval = Some(self.s.session_expiry_interval);
            }
            properties.receive_maximum = Some(self.s.receive_maximum.max(1));
            if self.s.max_packet_size > 0 {
                properties.maximum_packet_size = Some(self.s.max_packet_size);
            }
        }
        Connect {
            protocol: self.version,
            clean_start: self.s.clean_session,
            keep_alive: u16::try_from(self.s.keepalive.as_secs()).unwrap_or(u16::MAX),
            client_id: self.s.remote_client_id.clone(),
            // Mosquitto's `try_private`: the remote treats us as a bridge (3.1/3.1.1).
            bridge: self.bridge_bit && !v5,
            will,
            username: self.s.remote_username.clone(),
            password: self
                .s
                .remote_password
                .clone()
                .filter(|_| self.s.remote_username.is_some()),
            properties,
        }
    }

    /// The CONNECT of the local side.
    fn local_connect(&self, clean_start: bool, receive_maximum: u16) -> Box<Connect> {
        let properties = Properties {
            // The session is the bridge's queue: it never expires.
            session_expiry_interval: Some(u32::MAX),
            receive_maximum: Some(receive_maximum.max(1)),
            ..Properties::default()
        };
        Box::new(Connect {
            protocol: ProtocolVersion::V5,
            clean_start,
            keep_alive: self.local_keepalive_secs(),
            client_id: self.s.local_client_id.clone(),
            bridge: false,
            will: None,
            username: self.s.local_username.clone(),
            password: None,
            properties,
        })
    }

    /// The keep-alive of the local side: the bridge's, pinged by the relay.
    fn local_keepalive_secs(&self) -> u16 {
        u16::try_from(self.s.keepalive.as_secs()).unwrap_or(u16::MAX)
    }

    /// The local SUBSCRIBE of the `out` topics: No Local, so that what the bridge brings in
    /// does not go back out [MQTT-3.8.3-3]; Retain As Published, so that the remote sees the
    /// retain flag as it was published [MQTT-3.3.1-12].
    fn local_subscribe(&self, max_qos: QoS, retain_handling: RetainHandling) -> Option<Packet> {
        let mut filters: Vec<(String, SubscriptionOptions)> = Vec::new();
        for r in self.s.routes.iter().filter(|r| r.out) {
            let filter = r.local_filter();
            let qos = r.qos.min(max_qos);
            if let Some((_, o)) = filters.iter_mut().find(|(f, _)| *f == filter) {
                o.qos = o.qos.max(qos);
                continue;
            }
            let options = SubscriptionOptions {
                qos,
                no_local: true,
                retain_as_published: true,
                retain_handling,
            };
            filters.push((filter, options));
        }
        (!filters.is_empty()).then(|| {
            Packet::Subscribe(Subscribe {
                packet_id: OWN_SUBSCRIBE,
                filters,
                properties: Properties::default(),
            })
        })
    }

    fn send_remote(&mut self, now: Instant, p: Packet) {
        self.last_remote_send = now;
        self.out.push_back(Output::Remote(p));
    }

    fn send_local(&mut self, p: Packet) {
        self.out.push_back(Output::Local(p));
    }

    /// A packet from the remote.
    pub fn handle_remote(&mut self, now: Instant, packet: Packet) {
        match (self.phase, packet) {
            (Phase::Connecting, Packet::ConnAck(ack)) => self.remote_connack(now, ack),
            (Phase::Connecting, _) => {
                // [MQTT-3.2.0-1] the server's first packet is CONNACK.
                self.end_link(now, End::ProtocolError("its first packet was not CONNACK"));
            }
            (_, Packet::ConnAck(_)) => {
                self.end_link(now, End::ProtocolError("a second CONNACK"));
            }
            (Phase::Setup | Phase::LocalOpening | Phase::Ready, packet) => {
                self.remote_packet(now, packet)
            }
            _ => {}
        }
        self.check_drained(now);
    }

    fn remote_connack(&mut self, now: Instant, ack: ConnAck) {
        if ack.reason == ReasonCode::UNSUPPORTED_PROTOCOL_VERSION {
            if self.bridge_bit {
                tracing::warn!(bridge = %self.s.name, "the remote refused the bridge bit (try_private): connecting without it");
                self.bridge_bit = false;
                self.end_link(now, End::Fallback);
                return;
            }
            if self.version.is_v5() {
                self.fallback_to_v311(now);
                return;
            }
        }
        if ack.reason.0 >= 0x80 || (!self.version.is_v5() && ack.reason != ReasonCode::SUCCESS) {
            self.end_link(now, End::Refused(ack.reason));
            return;
        }
        let p = &ack.properties;
        self.limits = RemoteLimits {
            max_qos: p
                .maximum_qos
                .and_then(QoS::from_u8)
                .unwrap_or(QoS::ExactlyOnce),
            retain: p.retain_available != Some(0),
            max_packet_size: p.maximum_packet_size,
            receive_maximum: if self.version.is_v5() {
                p.receive_maximum.unwrap_or(u16::MAX)
            } else {
                self.s.receive_maximum
            }
            .max(1),
            session_present: ack.session_present,
            keepalive: p
                .server_keep_alive
                .map_or(self.s.keepalive, |k| Duration::from_secs(u64::from(k))),
        };
        self.stats.connects += 1;
        self.connected_at = Some(now);
        self.connect_sent = None;
        self.phase = Phase::Setup;
        tracing::info!(bridge = %self.s.name, session_present = ack.session_present, version = ?self.version, "bridge connected to the remote");
        self.remote_setup(now);
        self.check_remote_setup_done();
    }

    /// Falls back from 5.0 to 3.1.1 for good (the remote refused 5.0).
    pub fn fallback_to_v311(&mut self, now: Instant) {
        tracing::warn!(bridge = %self.s.name, "the remote refused MQTT 5.0: falling back to 3.1.1");
        self.version = ProtocolVersion::V311;
        self.bridge_bit = self.s.try_private;
        self.end_link(now, End::Fallback);
    }

    /// The relay's own packets to a remote that accepted: SUBSCRIBE the `in` topics,
    /// UNSUBSCRIBE the `out`-only ones, publish the notification `1`.
    fn remote_setup(&mut self, now: Instant) {
        let v5 = self.version.is_v5();
        let mut subs: Vec<(String, SubscriptionOptions)> = Vec::new();
        for r in self.s.routes.iter().filter(|r| r.inward) {
            let filter = r.remote_filter();
            if subs.iter().any(|(f, _)| *f == filter) {
                continue;
            }
            // 5.0: No Local and Retain As Published (3.1.1 with the bridge bit: the remote
            // applies them itself).
            let options = SubscriptionOptions {
                qos: r.qos,
                no_local: v5,
                retain_as_published: v5,
                retain_handling: RetainHandling::SendAtSubscribe,
            };
            subs.push((filter, options));
        }
        if !subs.is_empty() {
            self.remote_own.insert(OWN_SUBSCRIBE);
            let p = Subscribe {
                packet_id: OWN_SUBSCRIBE,
                filters: subs,
                properties: Properties::default(),
            };
            self.send_remote(now, Packet::Subscribe(p));
        }
        if self.s.attempt_unsubscribe {
            let filters: Vec<String> = self
                .s
                .routes
                .iter()
                .filter(|r| r.out && !r.inward)
                .map(Route::remote_filter)
                .filter(|f| {
                    !self
                        .s
                        .routes
                        .iter()
                        .any(|r| r.inward && r.remote_filter() == *f)
                })
                .collect();
            if !filters.is_empty() {
                self.remote_own.insert(OWN_UNSUBSCRIBE);
                let p = Unsubscribe {
                    packet_id: OWN_UNSUBSCRIBE,
                    filters,
                    properties: Properties::default(),
                };
                self.send_remote(now, Packet::Unsubscribe(p));
            }
        }
        if let Some(n) = self.s.notifications.clone().filter(|n| !n.local_only) {
            let qos = QoS::AtLeastOnce.min(self.limits.max_qos);
            let id = if qos == QoS::AtMostOnce {
                0
            } else {
                self.remote_own.insert(OWN_NOTIFY_REMOTE);
                OWN_NOTIFY_REMOTE
            };
            let mut p = notification(&n.topic, true, qos, id);
            p.retain &= self.limits.retain;
            self.send_remote(now, Packet::Publish(p));
        }
    }

    fn check_remote_setup_done(&mut self) {
        if self.phase == Phase::Setup && self.remote_own.is_empty() {
            self.phase = Phase::LocalOpening;
            let connect = self.local_connect(false, self.limits.receive_maximum);
            self.out.push_back(Output::ConnectLocal(connect));
        }
    }

    fn check_local_setup_done(&mut self, now: Instant) {
        if !self.local_own.is_empty() {
            return;
        }
        match self.phase {
            Phase::Priming => {
                self.send_local(disconnect());
                self.out.push_back(Output::CloseLocal);
                self.phase = Phase::Down;
                self.next_link();
            }
            Phase::LocalOpening => {
                self.phase = Phase::Ready;
                self.last_activity = now;
                for p in std::mem::take(&mut self.held) {
                    self.remote_packet(now, p);
                }
            }
            _ => {}
        }
    }

    fn remote_packet(&mut self, now: Instant, packet: Packet) {
        match packet {
            Packet::Publish(p) => {
                if self.phase == Phase::Ready {
                    self.inward(now, p);
                } else {
                    self.held.push(Packet::Publish(p));
                }
            }
            Packet::PubRel(a) => {
                if self.remote_rel_ours.remove(&a.packet_id) {
                    self.send_remote(now, Packet::PubComp(PubAck::new(a.packet_id)));
                } else if self.phase == Phase::Ready {
                    self.send_local(Packet::PubRel(PubAck::new(a.packet_id)));
                } else {
                    self.held.push(Packet::PubRel(a));
                }
            }
            Packet::PubAck(a) => self.remote_puback(a),
            Packet::PubRec(a) => {
                let id = a.packet_id;
                if a.reason.0 >= 0x80 {
                    // The remote ended the flow: no PUBREL follows [MQTT-4.3.3-4]; the local
                    // one is answered here.
                    self.refused(id, a.reason);
                    self.out_inflight.remove(&id);
                    self.local_rel_ours.insert(id);
                }
                self.send_local(Packet::PubRec(PubAck::new(id)));
            }
            Packet::PubComp(a) => {
                self.out_inflight.remove(&a.packet_id);
                self.send_local(Packet::PubComp(PubAck::new(a.packet_id)));
            }
            Packet::SubAck(a) if a.packet_id == OWN_SUBSCRIBE => {
                if a.reasons.iter().any(|r| r.0 >= 0x80) {
                    tracing::warn!(bridge = %self.s.name, reasons = ?a.reasons, "the remote refused a subscription of the bridge's `in` topics");
                }
                self.remote_own.remove(&OWN_SUBSCRIBE);
                self.check_remote_setup_done();
            }
            Packet::UnsubAck(a) if a.packet_id == OWN_UNSUBSCRIBE => {
                self.remote_own.remove(&OWN_UNSUBSCRIBE);
                self.check_remote_setup_done();
            }
            Packet::PingResp => self.ping_sent = None,
            Packet::Disconnect(d) => self.end_link(now, End::Disconnected(d.reason)),
            Packet::PingReq => {}
            other => {
                tracing::debug!(bridge = %self.s.name, packet = other.name(), "unexpected packet from the remote: ignored");
            }
        }
    }

    fn remote_puback(&mut self, a: PubAck) {
        let id = a.packet_id;
        if self.phase == Phase::Setup && self.remote_own.remove(&id) {
            self.check_remote_setup_done();
            return;
        }
        if a.reason.0 >= 0x80 {
            self.refused(id, a.reason);
        }
        self.out_inflight.remove(&id);
        if self.out_downgraded.remove(&id) {
            self.local_rel_ours.insert(id);
            self.send_local(Packet::PubRec(PubAck::new(id)));
        } else {
            self.send_local(Packet::PubAck(PubAck::new(id)));
        }
    }

    fn refused(&mut self, id: u16, reason: ReasonCode) {
        self.stats.refused_by_remote += 1;
        tracing::warn!(bridge = %self.s.name, packet_id = id, %reason, "the remote refused a bridged message: it is dropped");
    }

    /// A remote PUBLISH, on its way in.
    fn inward(&mut self, now: Instant, p: Publish) {
        if self.draining_until.is_some() {
            // Stopping: left unacknowledged, the remote sends it again on the next link.
            return;
        }
        let Some((route, topic)) = self
            .s
            .routes
            .iter()
            .find_map(|r| r.to_local(&p.topic).map(|t| (r, t)))
        else {
            self.stats.dropped_no_route += 1;
            self.ack_remote(now, &p);
            return;
        };
        let mut properties = p.properties;
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        route.remap_response_in(&mut properties);
        if let Some(guard) = self.s.loop_guard.as_ref().filter(|_| self.version.is_v5()) {
            if guard.stamp(&mut properties) != Verdict::Carry {
                self.stats.dropped_loop += 1;
                tracing::debug!(bridge = %self.s.name, topic = %p.topic, "loop guard: a message that came back dropped");
                let q = Publish {
                    properties: Properties::default(),
                    ..p
                };
                self.ack_remote(now, &q);
                return;
            }
        }
        if p.qos != QoS::AtMostOnce {
            self.in_inflight.insert(p.packet_id);
        }
        self.stats.forwarded_in += 1;
        self.last_activity = now;
        self.send_local(Packet::Publish(Publish {
            dup: p.dup,
            qos: p.qos,
            retain: p.retain,
            topic: topic.into(),
            packet_id: p.packet_id,
            properties,
            payload: p.payload,
        }));
    }

    fn ack_remote(&mut self, now: Instant, p: &Publish) {
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send_remote(now, Packet::PubAck(PubAck::new(p.packet_id))),
            QoS::ExactlyOnce => {
                self.remote_rel_ours.insert(p.packet_id);
                self.send_remote(now, Packet::PubRec(PubAck::new(p.packet_id)));
            }
        }
    }

    fn ack_local(&mut self, p: &Publish) {
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send_local(Packet::PubAck(PubAck::new(p.packet_id))),
            QoS::ExactlyOnce => {
                self.local_rel_ours.insert(p.packet_id);
                self.send_local(Packet::PubRec(PubAck::new(p.packet_id)));
            }
        }
    }

    /// A packet from the local broker.
    pub fn handle_local(&mut self, now: Instant, packet: Packet) {
        match packet {
            Packet::ConnAck(ack) => self.local_connack(now, ack),
            Packet::SubAck(a) if a.packet_id == OWN_SUBSCRIBE => {
                if a.reasons.iter().any(|r| r.0 >= 0x80) {
                    tracing::warn!(bridge = %self.s.name, reasons = ?a.reasons, "this broker refused a subscription of the bridge's `out` topics (check the ACL of local_username)");
                }
                self.local_own.remove(&OWN_SUBSCRIBE);
                self.check_local_setup_done(now);
            }
            Packet::Disconnect(_) => self.handle_local_lost(now),
            Packet::Publish(p) if self.phase == Phase::Waiting => self.count_waiting(&p),
            Packet::PubAck(a) if self.local_own.contains(&a.packet_id) => {
                self.local_own.remove(&a.packet_id);
                self.check_local_setup_done(now);
            }
            _ if !matches!(self.phase, Phase::LocalOpening | Phase::Ready) => {
                // While priming, what the broker re-sends stays unacknowledged: it is sent
                // again on the next local connection.
            }
            Packet::Publish(p) => self.outward(now, p),
            Packet::PubRel(a) => {
                if self.local_rel_ours.remove(&a.packet_id) {
                    self.send_local(Packet::PubComp(PubAck::new(a.packet_id)));
                } else {
                    self.send_remote(now, Packet::PubRel(PubAck::new(a.packet_id)));
                }
            }
            Packet::PubAck(a) => {
                self.in_inflight.remove(&a.packet_id);
                self.send_remote(now, Packet::PubAck(PubAck::new(a.packet_id)));
            }
            Packet::PubRec(a) => {
                if a.reason.0 >= 0x80 {
                    // This broker refused it (not authorized, quota): no PUBREL goes to it,
                    // the remote's is answered here.
                    tracing::warn!(bridge = %self.s.name, reason = %a.reason, "this broker refused a bridged message");
                    self.in_inflight.remove(&a.packet_id);
                    self.remote_rel_ours.insert(a.packet_id);
                }
                self.send_remote(now, Packet::PubRec(PubAck::new(a.packet_id)));
            }
            Packet::PubComp(a) => {
                self.in_inflight.remove(&a.packet_id);
                self.send_remote(now, Packet::PubComp(PubAck::new(a.packet_id)));
            }
            _ => {}
        }
        self.check_drained(now);
    }

    fn local_connack(&mut self, now: Instant, ack: ConnAck) {
        let secs = ack
            .properties
            .server_keep_alive
            .unwrap_or(self.local_keepalive_secs());
        // [MQTT-3.1.2-21] the Server Keep Alive replaces ours.
        self.local_ping_at = (secs > 0).then(|| now + Duration::from_secs(u64::from(secs)));
        if ack.reason != ReasonCode::SUCCESS {
            tracing::error!(bridge = %self.s.name, reason = %ack.reason, client_id = %self.s.local_client_id, "this broker refused the bridge's local connection; check local_username and the ACL");
            self.handle_local_lost(now);
            return;
        }
        match self.phase {
            Phase::Priming => {
                // No retained messages here: whether the remote needs them is known only
                // from its CONNACK (below, `LocalOpening`). Sending them now would queue
                // every retained message again at each start of this broker, for a remote
                // that still has them.
                let sub = self.local_subscribe(QoS::ExactlyOnce, RetainHandling::DoNotSend);
                if let Some(sub) = sub {
                    self.local_own.insert(OWN_SUBSCRIBE);
                    self.send_local(sub);
                }
                self.notify_local(false, OWN_NOTIFY_LOCAL);
                self.check_local_setup_done(now);
            }
            Phase::LocalOpening => {
                // Retained messages only when the remote's session is new (Session Present
                // 0 [MQTT-3.2.2-2]): a remote that kept it has had every retained value
                // already, and a value changed since then reached it as a message of the
                // queue (the local subscription lives on while the link is down).
                let handling = if self.limits.session_present {
                    RetainHandling::SendIfNew
                } else {
                    RetainHandling::SendAtSubscribe
                };
                if let Some(sub) = self.local_subscribe(self.limits.max_qos, handling) {
                    self.local_own.insert(OWN_SUBSCRIBE);
                    self.send_local(sub);
                }
                self.notify_local(true, OWN_NOTIFY_LOCAL);
                self.check_local_setup_done(now);
            }
            _ => {}
        }
    }

    /// The remote notification `0` before a clean DISCONNECT (which discards the will):
    /// QoS 0, delivered in order before the DISCONNECT, nothing to wait for.
    fn notify_remote_down(&mut self, now: Instant) {
        if let Some(n) = self.s.notifications.clone().filter(|n| !n.local_only) {
            let mut p = notification(&n.topic, false, QoS::AtMostOnce, 0);
            p.retain &= self.limits.retain;
            self.send_remote(now, Packet::Publish(p));
        }
    }

    /// Publishes the local notification (QoS 1, retained) with packet id `id`.
    fn notify_local(&mut self, up: bool, id: u16) {
        let Some(n) = self.s.notifications.clone() else {
            return;
        };
        self.local_own.insert(id);
        let p = notification(&n.topic, up, QoS::AtLeastOnce, id);
        self.send_local(Packet::Publish(p));
    }

    /// A local PUBLISH, on its way out.
    fn outward(&mut self, now: Instant, p: Publish) {
        if self.draining_until.is_some() {
            // Stopping: left unacknowledged, the local session sends it again next time.
            return;
        }
        let Some((route, topic)) = self
            .s
            .routes
            .iter()
            .find_map(|r| r.to_remote(&p.topic).map(|t| (r, t)))
        else {
            self.stats.dropped_no_route += 1;
            self.ack_local(&p);
            return;
        };
        let mut properties = p.properties.clone();
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        route.remap_response_out(&mut properties);
        if let Some(guard) = self.s.loop_guard.as_ref().filter(|_| self.version.is_v5()) {
            if guard.stamp(&mut properties) != Verdict::Carry {
                self.stats.dropped_loop += 1;
                tracing::debug!(bridge = %self.s.name, topic = %p.topic, "loop guard: a message that came back, or made too many hops, dropped");
                self.ack_local(&p);
                return;
            }
        }
        let qos = p.qos.min(self.limits.max_qos);
        let retain = p.retain && self.s.outgoing_retain && self.limits.retain;
        let publish = Publish {
            dup: p.dup && qos != QoS::AtMostOnce,
            qos,
            retain,
            topic: topic.into(),
            packet_id: if qos == QoS::AtMostOnce {
                0
            } else {
                p.packet_id
            },
            properties,
            payload: p.payload.clone(),
        };
        let packet = Packet::Publish(publish);
        let limit = [self.limits.max_packet_size, Some(self.s.max_packet_size)]
            .into_iter()
            .flatten()
            .filter(|m| *m > 0)
            .min();
        if limit.is_some_and(|m| packet.encoded_len(self.version) > m as usize) {
            // [MQTT-3.1.2-24] nothing larger than the remote's Maximum Packet Size is sent.
            self.stats.dropped_too_large += 1;
            tracing::warn!(bridge = %self.s.name, topic = %p.topic, "a message larger than the remote accepts dropped");
            self.ack_local(&p);
            return;
        }
        self.stats.forwarded_out += 1;
        self.last_activity = now;
        self.send_remote(now, packet);
        if qos < p.qos {
            self.stats.downgraded += 1;
            match qos {
                QoS::AtMostOnce => self.ack_local(&p),
                _ => {
                    self.out_downgraded.insert(p.packet_id);
                    self.out_inflight.insert(p.packet_id);
                }
            }
        } else if qos != QoS::AtMostOnce {
            self.out_inflight.insert(p.packet_id);
        }
    }

    /// The remote connection is gone (closed, reset, or could not be opened).
    pub fn handle_remote_lost(&mut self, now: Instant) {
        let _ = now;
        match self.phase {
            Phase::Connecting | Phase::Setup | Phase::LocalOpening | Phase::Ready => {
                self.link_down()
            }
            _ => {}
        }
    }

    /// The local connection is gone (the broker closed or refused it).
    pub fn handle_local_lost(&mut self, now: Instant) {
        match self.phase {
            Phase::Priming => {
                self.out.push_back(Output::CloseLocal);
                self.phase = Phase::Down;
                self.out.push_back(Output::ConnectRemote);
            }
            Phase::Waiting => {
                // Connect the remote: the local side is made again once it accepts.
                self.out.push_back(Output::CloseLocal);
                self.phase = Phase::Down;
                self.out.push_back(Output::ConnectRemote);
            }
            Phase::LocalOpening | Phase::Ready => {
                self.out.push_back(Output::CloseLocal);
                self.local_own.clear();
                self.phase = Phase::Setup; // so end_link does not close the local side again
                self.end_link_remote_only(now, End::LocalGone);
            }
            _ => {}
        }
    }

    /// When [`Relay::handle_timeout`] is next due: a PINGREQ to send, or the keep-alive
    /// passing without an answer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let local = self.local_ping_at.filter(|_| self.local_open());
        [
            self.remote_timeout(),
            local,
            self.idle_deadline(),
            self.draining_until,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Whether the local side is open past its CONNECT (and so pinged).
    fn local_open(&self) -> bool {
        matches!(
            self.phase,
            Phase::LocalOpening | Phase::Ready | Phase::Waiting
        )
    }

    /// Lazy: when a link that carries nothing ends.
    fn idle_deadline(&self) -> Option<Instant> {
        let lazy = self.s.lazy?;
        (self.phase == Phase::Ready && self.in_flight() == 0)
            .then(|| self.last_activity + lazy.idle_timeout)
    }

    fn remote_timeout(&self) -> Option<Instant> {
        let keepalive = self.limits.keepalive;
        match self.phase {
            Phase::Connecting => self.connect_sent.map(|t| t + self.s.keepalive),
            Phase::Setup | Phase::LocalOpening | Phase::Ready if !keepalive.is_zero() => {
                Some(match self.ping_sent {
                    Some(t) => t + keepalive,
                    None => self.last_remote_send + keepalive,
                })
            }
            _ => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.draining_until.is_some_and(|at| now >= at) {
            tracing::warn!(bridge = %self.s.name, in_flight = self.in_flight(), "stopping before every message in flight was acknowledged: those are sent again (DUP) next time");
            self.finish_shutdown(now);
            return;
        }
        if self.idle_deadline().is_some_and(|at| now >= at) {
            tracing::info!(bridge = %self.s.name, "no message for idle_timeout: disconnecting (start_type lazy)");
            self.end_link(now, End::Idle);
            return;
        }
        if let Some(at) = self.local_ping_at {
            if now >= at && self.local_open() {
                let every = Duration::from_secs(u64::from(self.local_keepalive_secs().max(1)));
                self.local_ping_at = Some(now + every);
                self.send_local(Packet::PingReq);
            }
        }
        let Some(due) = self.remote_timeout() else {
            return;
        };
        if now < due {
            return;
        }
        if self.phase == Phase::Connecting || self.ping_sent.is_some() {
            // [MQTT-3.1.2-24] (as seen by the client): no answer within the keep-alive.
            self.end_link(now, End::KeepAliveTimeout);
            return;
        }
        self.ping_sent = Some(now);
        self.send_remote(now, Packet::PingReq);
    }

    /// Ends the link: the remote connection closes, the local side too.
    fn end_link(&mut self, now: Instant, why: End) {
        match why {
            End::Fallback => {}
            End::Idle | End::Shutdown => {
                tracing::info!(bridge = %self.s.name, "bridge link down: {why}")
            }
            _ => tracing::warn!(bridge = %self.s.name, "bridge link down: {why}"),
        }
        self.end_link_remote_only(now, why);
    }

    fn end_link_remote_only(&mut self, now: Instant, why: End) {
        if let End::Disconnected(_) | End::ProtocolError(_) | End::KeepAliveTimeout = why {
        } else if matches!(
            self.phase,
            Phase::Setup | Phase::LocalOpening | Phase::Ready
        ) {
            // A clean end: the remote keeps what its session holds; DISCONNECT discards the
            // will, so the remote notification is set to `0` first.
            self.notify_remote_down(now);
            self.out.push_back(Output::Remote(disconnect()));
        }
        self.out.push_back(Output::CloseRemote(why));
        self.link_down();
    }

    /// The link is down: the local notification becomes `0`, the local connection closes
    /// (its session keeps what was not acknowledged), the shell reconnects.
    fn link_down(&mut self) {
        if matches!(self.phase, Phase::LocalOpening | Phase::Ready) {
            self.local_down();
        }
        self.connect_sent = None;
        self.ping_sent = None;
        self.local_ping_at = None;
        self.held.clear();
        self.remote_own.clear();
        self.phase = Phase::Down;
        self.next_link();
    }

    /// What follows a link (or the priming): connect again, or, lazy, wait for messages.
    fn next_link(&mut self) {
        if self.draining_until.is_some() {
            // The link ended while stopping: no next one.
            self.phase = Phase::Stopped;
            return;
        }
        match self.s.lazy {
            None => self.out.push_back(Output::ConnectRemote),
            Some(lazy) => {
                self.phase = Phase::Waiting;
                self.waiting.clear();
                self.waiting_qos0 = 0;
                let connect = self.local_connect(false, lazy.threshold.max(1));
                self.out.push_back(Output::ConnectLocal(connect));
            }
        }
    }

    /// Lazy: one more message waits; at `threshold` the local side closes (what it was
    /// handed stays unacknowledged, sent again later) and the remote is connected.
    fn count_waiting(&mut self, p: &Publish) {
        if p.qos == QoS::AtMostOnce {
            self.waiting_qos0 = self.waiting_qos0.saturating_add(1);
        } else {
            self.waiting.insert(p.packet_id);
        }
        let threshold = self.s.lazy.map_or(1, |l| l.threshold.max(1));
        let waiting = self.waiting.len() + usize::from(self.waiting_qos0);
        if waiting >= usize::from(threshold) {
            tracing::info!(bridge = %self.s.name, waiting, "messages wait for the remote: connecting (start_type lazy)");
            self.send_local(disconnect());
            self.out.push_back(Output::CloseLocal);
            self.phase = Phase::Down;
            self.out.push_back(Output::ConnectRemote);
        }
    }

    fn local_down(&mut self) {
        if let Some(n) = self.s.notifications.clone() {
            // An id the local side is not using now.
            let id = (1..=u16::MAX)
                .rev()
                .find(|i| !self.in_inflight.contains(i) && !self.local_own.contains(i))
                .unwrap_or(OWN_NOTIFY_LOCAL);
            let p = notification(&n.topic, false, QoS::AtLeastOnce, id);
            self.send_local(Packet::Publish(p));
        }
        self.send_local(disconnect());
        self.out.push_back(Output::CloseLocal);
        self.local_own.clear();
        self.in_inflight.clear();
        self.local_rel_ours.clear();
    }
}

fn disconnect() -> Packet {
    Packet::Disconnect(Disconnect {
        reason: ReasonCode::NORMAL_DISCONNECTION,
        properties: Properties::default(),
    })
}

fn notification(topic: &str, up: bool, qos: QoS, packet_id: u16) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: true,
        topic: topic.into(),
        packet_id,
        properties: Properties::default(),
        payload: Bytes::from_static(if up { b"1" } else { b"0" }),
    }
}

/// Whether `bytes` start with a 3.1.1 CONNACK refusing the protocol version (return code
/// 0x01), the two-byte answer a 3.1.1 server gives a 5.0 CONNECT.
pub fn is_v3_version_refusal(bytes: &[u8]) -> bool {
    matches!(bytes, [0x20, 0x02, _, 0x01, ..])
}
