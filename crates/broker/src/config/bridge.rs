//! A bridge to another MQTT broker, validated: what `[[bridge]]` in `makelaar.toml` and a
//! `connection` section of `mosquitto.conf` both become ([`BridgeConfig`]).
//!
//! The defaults are Mosquitto's (`mosquitto.conf(5)`, "Configuring Bridges"), so that a
//! Mosquitto site's bridge behaves the same here; where Makelaar adds to it (the queue's
//! bounds and overflow policy, the loop guard) the additions are named fields.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use makelaar_proto::QoS;

/// One bridge: a client of a remote broker (the *remote* side) plus a session inside this
/// broker (the *local* side, `local_client_id`) that holds the subscriptions of the `out`
/// topics and the queue of what waits to be sent.
#[derive(Debug, Clone, PartialEq)]
pub struct BridgeConfig {
    /// The bridge's name (`connection <name>`; `name` in `[[bridge]]`): unique, used in logs,
    /// `$SYS/broker/bridge/<name>/...` and metrics.
    pub name: String,
    /// Remote brokers to connect to, in order; never empty.
    pub addresses: Vec<BridgeAddress>,
    /// `round_robin`: false (default) means the first address is the primary one, retried
    /// while connected to another; true means all are equal.
    pub round_robin: bool,
    /// The topics carried, in file order (duplicates removed); never empty.
    pub topics: Vec<BridgeTopic>,
    /// MQTT version toward the remote (`bridge_protocol_version`, default 3.1.1).
    pub protocol: BridgeProtocol,
    /// `try_private` (default true): set the bridge bit (0x80) in the protocol level of a
    /// 3.1/3.1.1 CONNECT; retried without it when the remote refuses.
    pub try_private: bool,
    /// `cleansession` (default false): clean session / clean start at the remote.
    pub clean_session: bool,
    /// `local_cleansession` (default: `clean_session`): whether the local session, and the
    /// queue in it, is discarded when the bridge disconnects.
    pub local_clean_session: bool,
    /// `remote_clientid` (default `<hostname>.<name>`).
    pub remote_client_id: String,
    /// `local_clientid` (default `local.<remote_client_id>`); unique across bridges.
    pub local_client_id: String,
    /// `remote_username` / `remote_password`.
    pub remote_username: Option<String>,
    pub remote_password: Option<String>,
    /// `local_username` / `local_password`: the identity the local side's traffic is checked
    /// with (ACL).
    pub local_username: Option<String>,
    pub local_password: Option<String>,
    /// `keepalive_interval` (default 60 s, at least 5 s).
    pub keepalive: Duration,
    /// `restart_timeout`: the pause before reconnecting.
    pub restart: RestartTimeout,
    /// `start_type` (default automatic).
    pub start: StartType,
    /// `threshold` (default 10): queued messages that start a `lazy` bridge.
    pub threshold: u32,
    /// `idle_timeout` (default 60 s): a `lazy` bridge disconnects after this long idle.
    pub idle_timeout: Duration,
    /// `notifications` (default true): publish retained `1`/`0` on `notification_topic`.
    pub notifications: bool,
    /// `notifications_local_only` (default false).
    pub notifications_local_only: bool,
    /// `notification_topic` (default `$SYS/broker/connection/<remote_client_id>/state`).
    pub notification_topic: String,
    /// `bridge_attempt_unsubscribe` (default true): UNSUBSCRIBE `out`-only topics at the
    /// remote on connect.
    pub attempt_unsubscribe: bool,
    /// `bridge_outgoing_retain` (default true): false clears RETAIN on everything sent.
    pub outgoing_retain: bool,
    /// `bridge_max_packet_size` (0 = no limit).
    pub max_packet_size: u32,
    /// `bridge_max_topic_alias` (default 10): topic aliases the remote may use toward us (5.0).
    pub max_topic_alias: u16,
    /// `bridge_receive_maximum` (default 20): our Receive Maximum toward the remote (5.0).
    pub receive_maximum: u16,
    /// `bridge_session_expiry_interval` (default 0; `u32::MAX` = never): at the remote (5.0).
    pub session_expiry_interval: u32,
    /// `bridge_bind_address`: the local source address.
    pub bind_address: Option<IpAddr>,
    /// `bridge_tcp_keepalive`: TCP keepalive idle / interval / count.
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// `bridge_tcp_user_timeout` (Linux): how long unacknowledged sent data may wait before
    /// the link counts as dead.
    pub tcp_user_timeout: Option<Duration>,
    /// TLS toward the remote; `None`: plain TCP.
    pub tls: Option<BridgeTls>,
    /// `bridge_reload_type` (default lazy): whether a changed bridge restarts at SIGHUP.
    pub reload: ReloadType,
    /// The local queue (Makelaar's additions).
    pub queue: BridgeQueue,
    /// The loop guard between Makelaar brokers (Makelaar's addition).
    pub loop_guard: LoopGuard,
}

/// One remote address (`host[:port]`, default port 1883, or 8883 with TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeAddress {
    /// A host name or an IP address (an IPv6 literal without brackets).
    pub host: String,
    pub port: u16,
}

/// The direction of a `topic` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Local messages go to the remote (the default).
    Out,
    /// Remote messages come here.
    In,
    /// Both ways.
    Both,
}

impl Direction {
    /// Whether local messages matching the topic are sent to the remote.
    pub fn is_out(self) -> bool {
        matches!(self, Direction::Out | Direction::Both)
    }
    /// Whether the remote's messages matching the topic are brought here.
    pub fn is_in(self) -> bool {
        matches!(self, Direction::In | Direction::Both)
    }
}

/// One `topic pattern [direction [qos [local-prefix [remote-prefix]]]]` line, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeTopic {
    /// The pattern (may be empty when both prefixes are given: then a prefix is the whole
    /// topic).
    pub pattern: String,
    pub direction: Direction,
    /// The highest QoS carried (default 0): `out` subscribes locally with it, `in` at the
    /// remote.
    pub qos: QoS,
    /// Prepended to the pattern on this broker (default empty).
    pub local_prefix: String,
    /// Prepended to the pattern at the remote (default empty).
    pub remote_prefix: String,
}

impl BridgeTopic {
    /// The filter subscribed to on this broker (for `out`): `local_prefix + pattern`.
    pub fn local_filter(&self) -> String {
        format!("{}{}", self.local_prefix, self.pattern)
    }

    /// The filter subscribed to at the remote (for `in`): `remote_prefix + pattern`.
    pub fn remote_filter(&self) -> String {
        format!("{}{}", self.remote_prefix, self.pattern)
    }

    /// A local topic name as it is published at the remote: the local prefix replaced by the
    /// remote one. `None` when the topic does not start with the local prefix.
    pub fn to_remote(&self, local_topic: &str) -> Option<String> {
        let rest = local_topic.strip_prefix(self.local_prefix.as_str())?;
        Some(format!("{}{}", self.remote_prefix, rest))
    }

    /// A remote topic name as it is published here: the remote prefix replaced by the local
    /// one. `None` when the topic does not start with the remote prefix.
    pub fn to_local(&self, remote_topic: &str) -> Option<String> {
        let rest = remote_topic.strip_prefix(self.remote_prefix.as_str())?;
        Some(format!("{}{}", self.local_prefix, rest))
    }
}

/// `bridge_protocol_version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BridgeProtocol {
    /// `mqttv31`
    V31,
    /// `mqttv311` (the default)
    V311,
    /// `mqttv50`: falls back to 3.1.1 for good when the remote refuses 5.0.
    V5,
}

/// `restart_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartTimeout {
    /// `restart_timeout N`: always N seconds.
    Constant(Duration),
    /// `restart_timeout base cap [stable]` (default 5 30): decorrelated jitter between base
    /// and cap, back to base after a connection that lasted `stable`.
    Backoff {
        base: Duration,
        cap: Duration,
        stable: Option<Duration>,
    },
}

/// `start_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartType {
    /// Connect at start and reconnect after failures (the default).
    Automatic,
    /// Connect when `threshold` messages are queued; disconnect after `idle_timeout`.
    Lazy,
    /// Connect at start, never reconnect.
    Once,
}

/// `bridge_tcp_keepalive idle interval count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpKeepalive {
    pub idle: Duration,
    pub interval: Duration,
    pub count: u32,
}

/// TLS toward the remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeTls {
    /// `bridge_cafile`: PEM bundle of trusted CAs.
    pub cafile: Option<PathBuf>,
    /// `bridge_capath`: a directory of PEM CA files.
    pub capath: Option<PathBuf>,
    /// `bridge_tls_use_os_certs`: trust the operating system's roots too.
    pub use_os_certs: bool,
    /// `bridge_certfile` / `bridge_keyfile`: client certificate (mutual TLS).
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    /// `bridge_insecure`: do not check the remote's host name (tests only).
    pub insecure: bool,
    /// `bridge_tls_version` (default TLS 1.2): the lowest version accepted.
    pub min_version: TlsVersion,
    /// `bridge_alpn`.
    pub alpn: Option<String>,
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// `bridge_reload_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadType {
    /// A changed bridge takes its new settings at its next reconnect (the default).
    Lazy,
    /// A changed bridge is restarted at once.
    Immediate,
}

/// The bounds of a bridge's local queue and what happens when one is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BridgeQueue {
    /// Most messages queued (0 = no limit).
    pub max_messages: u64,
    /// Most payload bytes queued (0 = no limit).
    pub max_bytes: u64,
    /// Oldest message kept (`None` = no limit).
    pub max_age: Option<Duration>,
    pub when_full: OverflowPolicy,
}

/// What a full bridge queue does with one more message. Every message not queued is
/// counted and logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverflowPolicy {
    /// Refuse it: a 5.0 publisher gets PUBACK/PUBREC 0x97 (Quota exceeded).
    Reject,
    /// Drop the oldest queued message to make room.
    DropOldest,
    /// Drop a queued QoS 0 message first, else refuse.
    DropQos0First,
}

/// The loop guard between Makelaar brokers: a user property naming the broker a message
/// entered at and the hops it has made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopGuard {
    /// The user property's name (default `makelaar-origin`); `None` turns the guard off.
    pub property: Option<String>,
    /// Most bridge hops a message makes (default 8).
    pub max_hops: u8,
}
