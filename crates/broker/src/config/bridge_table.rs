//! `[[bridge]]` in `makelaar.toml` as written ([`BridgeTable`]) and its validation into a
//! [`BridgeConfig`]. `mosquitto.conf`'s `connection` sections are read into the same table
//! (`crate::mosquitto`), so both paths share one set of rules and `makelaar config convert`
//! writes a table that reads back to the same bridge.
//!
//! The checks that concern one value (an address, a `topic` line) are functions of their own,
//! so that the `mosquitto.conf` reader can name the line a mistake is on.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use makelaar_proto::topic::{validate_topic_filter, validate_topic_name};
use makelaar_proto::QoS;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::bridge::*;

/// Mosquitto's `keepalive_interval` default, in seconds.
pub const DEFAULT_KEEPALIVE_SECS: u64 = 60;
/// The shortest keep-alive toward a remote, in seconds (Mosquitto's floor).
pub const MIN_KEEPALIVE_SECS: u64 = 5;
/// Mosquitto's `restart_timeout` default: jittered between 5 and 30 seconds.
pub const DEFAULT_RESTART: [u64; 2] = [5, 30];
/// Mosquitto's `threshold` default (messages that start a `lazy` bridge).
pub const DEFAULT_THRESHOLD: u32 = 10;
/// Mosquitto's `idle_timeout` default, in seconds.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;
/// Mosquitto's `bridge_max_topic_alias` default.
pub const DEFAULT_MAX_TOPIC_ALIAS: u16 = 10;
/// Mosquitto's `bridge_receive_maximum` default (its `max_inflight_messages`).
pub const DEFAULT_RECEIVE_MAXIMUM: u16 = 20;
/// Messages a bridge's queue holds unless configured.
pub const DEFAULT_QUEUE_MESSAGES: u64 = 100_000;
/// Payload bytes a bridge's queue holds unless configured (100 MiB).
pub const DEFAULT_QUEUE_BYTES: u64 = 100 * 1024 * 1024;
/// The loop guard's user property unless configured.
pub const DEFAULT_LOOP_PROPERTY: &str = "makelaar-origin";
/// Bridge hops a message may make unless configured.
pub const DEFAULT_MAX_HOPS: u8 = 8;
/// The MQTT port without TLS, and Mosquitto's default for every bridge address.
pub const MQTT_PORT: u16 = 1883;
/// The MQTT port with TLS: the default of a `[[bridge]]` address when `[bridge.tls]` is set.
pub const MQTTS_PORT: u16 = 8883;
/// The largest Remaining Length of an MQTT packet.
const MAX_PACKET: u32 = 268_435_455;

/// One `[[bridge]]` table: a connection to another MQTT broker, carrying the topics of its
/// `[[bridge.topic]]` tables one or both ways. The keys and defaults are those of Mosquitto's
/// bridges (`connection` sections of mosquitto.conf; `makelaar config convert` turns one into
/// a table); docs/bridges.md tells more.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BridgeTable {
    /// The bridge's name (mosquitto.conf: `connection`): unique among the bridges, used in
    /// logs, metrics and the default client ids. Letters, digits, `-`, `_` and `.` work
    /// everywhere; `/`, `+` and `#` are refused.
    pub name: String,
    /// The remote broker: `"host:port"`, `"host"` (port 1883, or 8883 with `[bridge.tls]`), an
    /// IPv6 address as `"[::1]:1883"`. With several, the first is the primary one and the
    /// others are tried in turn when it fails (see `round_robin`).
    pub addresses: Vec<String>,
    /// With several addresses: `false` treats the first as the primary one and goes back to
    /// it when it is reachable again; `true` treats them all alike and stays on one that
    /// works.
    #[serde(default)]
    pub round_robin: Option<bool>,
    /// The MQTT version spoken to the remote. A remote that refuses 5.0 is spoken to in 3.1.1
    /// from then on.
    #[serde(default)]
    pub protocol_version: Option<BridgeProtocolName>,
    /// With 3.1 and 3.1.1: tell the remote this client is a bridge (the protocol level with
    /// 0x80 set, as Mosquitto does), so that it does not send back what the bridge published.
    /// A remote that refuses it is connected to again without it.
    #[serde(default)]
    pub try_private: Option<bool>,
    /// Start a clean session at the remote at every connection (`true`), or resume the one it
    /// kept (`false`), with its subscriptions and the messages it queued meanwhile.
    #[serde(default)]
    pub clean_session: Option<bool>,
    /// Discard the local session of the bridge (its subscriptions for the `out` topics and
    /// the messages queued for the remote) when the connection to the remote ends. When not
    /// set: as `clean_session`.
    #[serde(default)]
    pub local_clean_session: Option<bool>,
    /// The client id at the remote. When not set: `<hostname>.<name>`, as Mosquitto.
    #[serde(default)]
    pub remote_client_id: Option<String>,
    /// The client id of the bridge's session on this broker; unique among the bridges. When
    /// not set: `local.<remote_client_id>`.
    #[serde(default)]
    pub local_client_id: Option<String>,
    /// The username given to the remote.
    #[serde(default)]
    pub remote_username: Option<String>,
    /// The password given to the remote; needs `remote_username`.
    #[serde(default)]
    pub remote_password: Option<String>,
    /// The username whose ACL rules (`acl_file`) apply to the messages the bridge brings in
    /// and takes out. When not set: the bridge is checked as an anonymous client.
    #[serde(default)]
    pub local_username: Option<String>,
    /// The password of `local_username` (Mosquitto's `local_password`; kept for conversions,
    /// the bridge is not asked for it).
    #[serde(default)]
    pub local_password: Option<String>,
    /// MQTT keep-alive toward the remote, in seconds: at least 5.
    #[serde(default)]
    pub keepalive: Option<u64>,
    /// Seconds to wait before connecting again after a failure: `[N]` waits N seconds every
    /// time; `[base, cap]` waits a random time between `base` and `cap` that grows with each
    /// failure (as Mosquitto); `[base, cap, stable]` also starts again from `base` after a
    /// connection that lasted `stable` seconds.
    #[serde(default)]
    pub restart_timeout: Option<Vec<u64>>,
    /// When to connect: `"automatic"` at start, and again after every failure; `"lazy"` when
    /// `threshold` messages wait for the remote, disconnecting after `idle_timeout`; `"once"`
    /// at start, never again.
    #[serde(default)]
    pub start_type: Option<StartTypeName>,
    /// `start_type = "lazy"`: messages waiting for the remote that make the bridge connect;
    /// at least 1.
    #[serde(default)]
    pub threshold: Option<u32>,
    /// `start_type = "lazy"`: seconds without traffic after which the bridge disconnects; at
    /// least 1.
    #[serde(default)]
    pub idle_timeout: Option<u64>,
    /// Publish the bridge's state, retained, on `notification_topic`: `1` when connected,
    /// `0` when not, here and at the remote (there as the bridge's will, so that a bridge
    /// that dies shows `0`).
    #[serde(default)]
    pub notifications: Option<bool>,
    /// Publish the state on this broker only, not at the remote.
    #[serde(default)]
    pub notifications_local_only: Option<bool>,
    /// The topic of the state. When not set: `$SYS/broker/connection/<remote_client_id>/state`.
    #[serde(default)]
    pub notification_topic: Option<String>,
    /// At each connection, unsubscribe at the remote from the topics that are only carried
    /// `out` (undoing an `in` or `both` of an earlier configuration, which a kept session
    /// would still hold).
    #[serde(default)]
    pub attempt_unsubscribe: Option<bool>,
    /// Keep the retain flag of the messages sent to the remote; `false` clears it (for
    /// remotes that do not support retained messages).
    #[serde(default)]
    pub outgoing_retain: Option<bool>,
    /// The largest packet accepted from the remote, in bytes; 0: no limit but MQTT's.
    #[serde(default)]
    pub max_packet_size: Option<u32>,
    /// 5.0: topic aliases the remote may use toward this broker.
    #[serde(default)]
    pub max_topic_alias: Option<u16>,
    /// 5.0: QoS 1 and 2 messages the remote may send before this broker acknowledges them;
    /// at least 1.
    #[serde(default)]
    pub receive_maximum: Option<u16>,
    /// 5.0: seconds the remote keeps the bridge's session after a disconnection;
    /// 4294967295: for ever.
    #[serde(default)]
    pub session_expiry_interval: Option<u32>,
    /// The local IP address to connect from. When not set: the one the system picks.
    #[serde(default)]
    pub bind_address: Option<String>,
    /// TCP keep-alive on the connection: `[idle, interval, count]`, the seconds of silence
    /// before the first probe, the seconds between probes, and the unanswered probes that
    /// end the connection. When not set: off.
    #[serde(default)]
    pub tcp_keepalive: Option<Vec<u64>>,
    /// Linux: milliseconds that sent data may stay unacknowledged before the connection
    /// counts as dead (`TCP_USER_TIMEOUT`), which notices a silent network failure sooner.
    /// When not set: the system's.
    #[serde(default)]
    pub tcp_user_timeout_ms: Option<u64>,
    /// At SIGHUP, a bridge whose settings changed: `"lazy"` takes them at its next
    /// connection, `"immediate"` reconnects at once.
    #[serde(default)]
    pub reload_type: Option<ReloadTypeName>,
    /// The topics carried (mosquitto.conf: `topic` lines), in order; at least one. A table
    /// that repeats an earlier one is left out.
    #[serde(default)]
    pub topic: Vec<BridgeTopicTable>,
    /// TLS toward the remote: with this table, the bridge connects with TLS and checks the
    /// remote's certificate.
    #[serde(default)]
    pub tls: Option<BridgeTlsTable>,
    /// The queue of messages waiting for the remote (Makelaar's addition; in mosquitto.conf,
    /// `max_queued_messages` and `max_queued_bytes` set its bounds).
    #[serde(default)]
    pub queue: Option<BridgeQueueTable>,
    /// Loop protection between Makelaar brokers (Makelaar's addition): a user property names
    /// the broker a message entered at and counts its hops over bridges; a message that
    /// comes back, or has made too many hops, is not carried again.
    #[serde(default)]
    pub loop_guard: Option<LoopGuardTable>,
}

/// `protocol_version` of a `[[bridge]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum BridgeProtocolName {
    /// MQTT 3.1 (mosquitto.conf: `mqttv31`).
    #[serde(rename = "3.1")]
    V31,
    /// MQTT 3.1.1 (`mqttv311`).
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5.0 (`mqttv50`).
    #[serde(rename = "5.0")]
    V5,
}

/// `start_type` of a `[[bridge]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StartTypeName {
    /// Connect at start and after every failure.
    Automatic,
    /// Connect when `threshold` messages wait.
    Lazy,
    /// Connect at start only.
    Once,
}

/// `reload_type` of a `[[bridge]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReloadTypeName {
    /// New settings at the next connection.
    Lazy,
    /// Reconnect at once with the new settings.
    Immediate,
}

/// The direction of a `[[bridge.topic]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DirectionName {
    /// From this broker to the remote.
    Out,
    /// From the remote to this broker.
    In,
    /// Both ways.
    Both,
}

/// One `[[bridge.topic]]`: the messages carried, which way, and how their topics change on
/// the way. A topic `T` here matching `local_prefix + pattern` becomes `remote_prefix + R` at
/// the remote, where `T` is `local_prefix + R`, and the other way round.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BridgeTopicTable {
    /// The topic filter carried, without the prefixes (`"sensors/#"`). `""` with both
    /// prefixes set carries exactly the one topic each prefix names.
    pub pattern: String,
    /// Which way the messages go.
    #[serde(default)]
    pub direction: Option<DirectionName>,
    /// The highest QoS carried: `out` subscribes here with it, `in` at the remote. Messages
    /// of a higher QoS are carried at this one, so 0 (the default, as in Mosquitto) can lose
    /// messages; 1 is what most bridges want.
    #[serde(default)]
    pub qos: Option<u8>,
    /// Put before the pattern on this broker (`"site1/"`): a topic name, no wildcards.
    #[serde(default)]
    pub local_prefix: Option<String>,
    /// Put before the pattern at the remote: a topic name, no wildcards.
    #[serde(default)]
    pub remote_prefix: Option<String>,
}

/// `[bridge.tls]`: TLS toward the remote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BridgeTlsTable {
    /// PEM bundle of the CAs the remote's certificate must chain to.
    #[serde(default)]
    pub cafile: Option<PathBuf>,
    /// A directory of PEM CA certificates, as `cafile`.
    #[serde(default)]
    pub capath: Option<PathBuf>,
    /// Trust the operating system's CAs too. When not set: true when neither `cafile` nor
    /// `capath` is set.
    #[serde(default)]
    pub use_os_certs: Option<bool>,
    /// PEM client certificate, for remotes that require one (mutual TLS; AWS IoT).
    #[serde(default)]
    pub certfile: Option<PathBuf>,
    /// PEM private key of `certfile`.
    #[serde(default)]
    pub keyfile: Option<PathBuf>,
    /// Do not check that the remote's certificate names the host connected to. For tests
    /// only: anyone can then pose as the remote.
    #[serde(default)]
    pub insecure: Option<bool>,
    /// The lowest TLS version accepted.
    #[serde(default)]
    pub min_version: Option<TlsVersionName>,
    /// The ALPN protocol to ask for (`"x-amzn-mqtt-ca"` for AWS IoT on port 443).
    #[serde(default)]
    pub alpn: Option<String>,
}

/// A TLS version (`min_version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum TlsVersionName {
    /// TLS 1.2 (mosquitto.conf: `tlsv1.2`).
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 (`tlsv1.3`).
    #[serde(rename = "1.3")]
    Tls13,
}

/// `[bridge.queue]`: the messages waiting for the remote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BridgeQueueTable {
    /// Most messages waiting; 0: no limit.
    #[serde(default)]
    pub max_messages: Option<u64>,
    /// Most payload bytes waiting; 0: no limit.
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Seconds a message may wait before it is dropped (counted and logged); 0: no limit.
    #[serde(default)]
    pub max_age: Option<u64>,
    /// What a full queue does with one more message: `"reject"` refuses it (a 5.0 publisher
    /// gets the reason code 0x97 Quota exceeded, a 3.1.1 publisher is disconnected; nothing
    /// is dropped silently),
    /// `"drop-oldest"` drops the oldest waiting message (for telemetry, where the newest
    /// matters), `"drop-qos0-first"` drops a waiting QoS 0 message, or else refuses. Every
    /// message dropped or refused is counted and logged.
    #[serde(default)]
    pub when_full: Option<OverflowName>,
}

/// `when_full` of `[bridge.queue]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OverflowName {
    /// Refuse the new message.
    Reject,
    /// Drop the oldest waiting message.
    DropOldest,
    /// Drop a waiting QoS 0 message, else refuse.
    DropQos0First,
}

/// `[bridge.loop_guard]`: loop protection between Makelaar brokers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoopGuardTable {
    /// Add the user property to 5.0 messages sent to the remote, and refuse those that come
    /// back.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// The user property's name; the same on every broker of the topology.
    #[serde(default)]
    pub property: Option<String>,
    /// Most bridges a message crosses; 1 to 255.
    #[serde(default)]
    pub max_hops: Option<u8>,
}

impl BridgeTable {
    /// Every key at its default, for the configuration reference (see
    /// `ConfigFile::defaults`): `None` where the default depends on other keys.
    pub fn defaults() -> BridgeTable {
        BridgeTable {
            name: String::new(),
            addresses: Vec::new(),
            round_robin: Some(false),
            protocol_version: Some(BridgeProtocolName::V311),
            try_private: Some(true),
            clean_session: Some(false),
            local_clean_session: None,
            remote_client_id: None,
            local_client_id: None,
            remote_username: None,
            remote_password: None,
            local_username: None,
            local_password: None,
            keepalive: Some(DEFAULT_KEEPALIVE_SECS),
            restart_timeout: Some(DEFAULT_RESTART.to_vec()),
            start_type: Some(StartTypeName::Automatic),
            threshold: Some(DEFAULT_THRESHOLD),
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT_SECS),
            notifications: Some(true),
            notifications_local_only: Some(false),
            notification_topic: None,
            attempt_unsubscribe: Some(true),
            outgoing_retain: Some(true),
            max_packet_size: Some(0),
            max_topic_alias: Some(DEFAULT_MAX_TOPIC_ALIAS),
            receive_maximum: Some(DEFAULT_RECEIVE_MAXIMUM),
            session_expiry_interval: Some(0),
            bind_address: None,
            tcp_keepalive: None,
            tcp_user_timeout_ms: None,
            reload_type: Some(ReloadTypeName::Lazy),
            topic: vec![BridgeTopicTable {
                pattern: String::new(),
                direction: Some(DirectionName::Out),
                qos: Some(0),
                local_prefix: Some(String::new()),
                remote_prefix: Some(String::new()),
            }],
            tls: Some(BridgeTlsTable {
                cafile: None,
                capath: None,
                use_os_certs: None,
                certfile: None,
                keyfile: None,
                insecure: Some(false),
                min_version: Some(TlsVersionName::Tls12),
                alpn: None,
            }),
            queue: Some(BridgeQueueTable {
                max_messages: Some(DEFAULT_QUEUE_MESSAGES),
                max_bytes: Some(DEFAULT_QUEUE_BYTES),
                max_age: Some(0),
                when_full: Some(OverflowName::Reject),
            }),
            loop_guard: Some(LoopGuardTable {
                enabled: Some(true),
                property: Some(DEFAULT_LOOP_PROPERTY.to_string()),
                max_hops: Some(DEFAULT_MAX_HOPS),
            }),
        }
    }

    /// Makes the bridge's relative paths relative to `dir`.
    pub fn resolve_paths(&mut self, dir: &std::path::Path) {
        if let Some(t) = &mut self.tls {
            for p in [
                &mut t.cafile,
                &mut t.capath,
                &mut t.certfile,
                &mut t.keyfile,
            ]
            .into_iter()
            .flatten()
            {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            }
        }
    }

    /// Validates the table into a bridge; `hostname` makes the default remote client id.
    /// The error is the problem and its fix, without saying where (the caller does).
    pub fn to_bridge(&self, hostname: &str) -> Result<BridgeConfig, String> {
        check_name(&self.name)?;
        let tls = self.tls.as_ref().map(tls_from).transpose()?;
        let default_port = if tls.is_some() { MQTTS_PORT } else { MQTT_PORT };
        if self.addresses.is_empty() {
            return Err(
                "has no address; give the remote broker's host:port (addresses = \
                        [\"host:port\"]; mosquitto.conf: address host:port)"
                    .to_string(),
            );
        }
        let addresses = self
            .addresses
            .iter()
            .map(|a| parse_address(a, default_port))
            .collect::<Result<Vec<_>, _>>()?;
        let mut topics: Vec<BridgeTopic> = Vec::new();
        for t in &self.topic {
            let topic = topic_from(t)?;
            if !topics.contains(&topic) {
                topics.push(topic);
            }
        }
        if topics.is_empty() {
            return Err(
                "carries no topic; add a [[bridge.topic]] table (mosquitto.conf: a \
                        topic line) naming what it carries"
                    .to_string(),
            );
        }
        let remote_client_id = match &self.remote_client_id {
            Some(id) if id.is_empty() => {
                return Err(
                    "has an empty remote_client_id; give one, or leave it out for \
                            <hostname>.<name>"
                        .to_string(),
                )
            }
            Some(id) => id.clone(),
            None => format!("{hostname}.{}", self.name),
        };
        let local_client_id = match &self.local_client_id {
            Some(id) if id.is_empty() => {
                return Err(
                    "has an empty local_client_id; give one, or leave it out for \
                            local.<remote_client_id>"
                        .to_string(),
                )
            }
            Some(id) => id.clone(),
            None => format!("local.{remote_client_id}"),
        };
        if self.remote_password.is_some() && self.remote_username.is_none() {
            return Err(
                "has remote_password without remote_username; add the username \
                        (mosquitto.conf: remote_username) or remove the password"
                    .to_string(),
            );
        }
        if self.local_password.is_some() && self.local_username.is_none() {
            return Err(
                "has local_password without local_username; add the username or \
                        remove the password"
                    .to_string(),
            );
        }
        let keepalive = self.keepalive.unwrap_or(DEFAULT_KEEPALIVE_SECS);
        if !(MIN_KEEPALIVE_SECS..=u64::from(u16::MAX)).contains(&keepalive) {
            return Err(format!(
                "has keepalive = {keepalive}; give {MIN_KEEPALIVE_SECS} to 65535 seconds"
            ));
        }
        let restart = restart_from(self.restart_timeout.as_deref().unwrap_or(&DEFAULT_RESTART))
            .map_err(|e| format!("has a restart_timeout {e}"))?;
        let threshold = self.threshold.unwrap_or(DEFAULT_THRESHOLD);
        if threshold == 0 {
            return Err("has threshold = 0; give at least 1 message".to_string());
        }
        let idle_timeout = self.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT_SECS);
        if idle_timeout == 0 {
            return Err("has idle_timeout = 0; give at least 1 second".to_string());
        }
        let notification_topic = match &self.notification_topic {
            Some(t) => {
                validate_topic_name(t).map_err(|e| {
                    format!(
                        "has the notification_topic \"{t}\", which is not a topic name \
                         ({e}); give one without wildcards"
                    )
                })?;
                t.clone()
            }
            None => format!("$SYS/broker/connection/{remote_client_id}/state"),
        };
        let max_packet_size = self.max_packet_size.unwrap_or(0);
        if max_packet_size > MAX_PACKET {
            return Err(format!(
                "has max_packet_size = {max_packet_size}; give at most {MAX_PACKET} (MQTT's \
                 limit), or 0 for no limit"
            ));
        }
        let receive_maximum = self.receive_maximum.unwrap_or(DEFAULT_RECEIVE_MAXIMUM);
        if receive_maximum == 0 {
            return Err("has receive_maximum = 0; give 1 to 65535".to_string());
        }
        let bind_address = match &self.bind_address {
            None => None,
            Some(a) => Some(a.parse::<IpAddr>().map_err(|_| {
                format!("has bind_address = \"{a}\", which is not an IP address; give one of this machine's addresses")
            })?),
        };
        let tcp_keepalive = match self.tcp_keepalive.as_deref() {
            None => None,
            Some(&[idle, interval, count]) if idle > 0 && interval > 0 && count > 0 => {
                Some(TcpKeepalive {
                    idle: Duration::from_secs(idle),
                    interval: Duration::from_secs(interval),
                    count: u32::try_from(count).unwrap_or(u32::MAX),
                })
            }
            Some(other) => {
                return Err(format!(
                    "has tcp_keepalive = {other:?}; give three numbers above 0: [idle, \
                     interval, count]"
                ))
            }
        };
        let clean_session = self.clean_session.unwrap_or(false);
        Ok(BridgeConfig {
            name: self.name.clone(),
            addresses,
            round_robin: self.round_robin.unwrap_or(false),
            topics,
            protocol: match self.protocol_version.unwrap_or(BridgeProtocolName::V311) {
                BridgeProtocolName::V31 => BridgeProtocol::V31,
                BridgeProtocolName::V311 => BridgeProtocol::V311,
                BridgeProtocolName::V5 => BridgeProtocol::V5,
            },
            try_private: self.try_private.unwrap_or(true),
            clean_session,
            local_clean_session: self.local_clean_session.unwrap_or(clean_session),
            remote_client_id,
            local_client_id,
            remote_username: self.remote_username.clone(),
            remote_password: self.remote_password.clone(),
            local_username: self.local_username.clone(),
            local_password: self.local_password.clone(),
            keepalive: Duration::from_secs(keepalive),
            restart,
            start: match self.start_type.unwrap_or(StartTypeName::Automatic) {
                StartTypeName::Automatic => StartType::Automatic,
                StartTypeName::Lazy => StartType::Lazy,
                StartTypeName::Once => StartType::Once,
            },
            threshold,
            idle_timeout: Duration::from_secs(idle_timeout),
            notifications: self.notifications.unwrap_or(true),
            notifications_local_only: self.notifications_local_only.unwrap_or(false),
            notification_topic,
            attempt_unsubscribe: self.attempt_unsubscribe.unwrap_or(true),
            outgoing_retain: self.outgoing_retain.unwrap_or(true),
            max_packet_size,
            max_topic_alias: self.max_topic_alias.unwrap_or(DEFAULT_MAX_TOPIC_ALIAS),
            receive_maximum,
            session_expiry_interval: self.session_expiry_interval.unwrap_or(0),
            bind_address,
            tcp_keepalive,
            tcp_user_timeout: self.tcp_user_timeout_ms.map(Duration::from_millis),
            tls,
            reload: match self.reload_type.unwrap_or(ReloadTypeName::Lazy) {
                ReloadTypeName::Lazy => ReloadType::Lazy,
                ReloadTypeName::Immediate => ReloadType::Immediate,
            },
            queue: queue_from(self.queue.as_ref())?,
            loop_guard: loop_guard_from(self.loop_guard.as_ref())?,
        })
    }
}

/// A bridge's name: a level of `$SYS/broker/bridge/<name>/...` and part of client ids.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("has no name; give it one (mosquitto.conf: connection <name>)".to_string());
    }
    if name.contains(['/', '+', '#', '\0']) || name.chars().any(char::is_whitespace) {
        return Err(format!(
            "has the name \"{name}\", which holds a space, '/', '+' or '#'; name it with \
             letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

/// `host[:port]` (the last `:` separates the port, so an IPv6 address needs one, as in
/// Mosquitto) or `[ipv6]:port` / `[ipv6]`.
pub(crate) fn parse_address(text: &str, default_port: u16) -> Result<BridgeAddress, String> {
    let bad_port = |p: &str| {
        format!("has the address \"{text}\" with the invalid port \"{p}\"; give 1 to 65535")
    };
    let port = |p: &str| match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(bad_port(p)),
    };
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(format!(
                "has the address \"{text}\" without its closing ']'; write an IPv6 address \
                 as [::1]:1883"
            ));
        };
        let port = match after {
            "" => default_port,
            p => match p.strip_prefix(':') {
                Some(p) => port(p)?,
                None => return Err(bad_port(p)),
            },
        };
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!(
                "has the address \"{text}\", but \"{host}\" between brackets is not an IPv6 \
                 address; write a host name without brackets"
            ));
        }
        (host, port)
    } else {
        match text.rsplit_once(':') {
            Some((host, p)) => (host, port(p)?),
            None => (text, default_port),
        }
    };
    if host.is_empty() || host.chars().any(char::is_whitespace) {
        return Err(format!(
            "has the address \"{text}\" without a host; write host:port"
        ));
    }
    Ok(BridgeAddress {
        host: host.to_string(),
        port,
    })
}

/// One topic, checked as Mosquitto checks a `topic` line: the pattern `""` needs both
/// prefixes (the manual's table), prefixes are topic names (no wildcards), and each prefix
/// with the pattern is a topic filter.
pub(crate) fn topic_from(t: &BridgeTopicTable) -> Result<BridgeTopic, String> {
    let local_prefix = t.local_prefix.clone().unwrap_or_default();
    let remote_prefix = t.remote_prefix.clone().unwrap_or_default();
    for (which, prefix) in [("local", &local_prefix), ("remote", &remote_prefix)] {
        if !prefix.is_empty() {
            validate_topic_name(prefix).map_err(|e| {
                format!(
                    "has the {which} prefix \"{prefix}\", which is not a topic name ({e}); \
                     write it without wildcards, usually ending in '/'"
                )
            })?;
        }
    }
    if t.pattern.is_empty() && (local_prefix.is_empty() || remote_prefix.is_empty()) {
        return Err(
            "has an empty pattern (\"\") without both a local and a remote prefix; \
                    with an empty pattern each prefix is the whole topic, so give both, or \
                    give a pattern"
                .to_string(),
        );
    }
    let qos = match t.qos {
        None => QoS::AtMostOnce,
        Some(q) => QoS::from_u8(q)
            .ok_or_else(|| format!("has QoS {q}; give 0, 1 or 2 (the highest QoS carried)"))?,
    };
    let topic = BridgeTopic {
        pattern: t.pattern.clone(),
        direction: match t.direction.unwrap_or(DirectionName::Out) {
            DirectionName::Out => Direction::Out,
            DirectionName::In => Direction::In,
            DirectionName::Both => Direction::Both,
        },
        qos,
        local_prefix,
        remote_prefix,
    };
    for (which, filter) in [
        ("here", topic.local_filter()),
        ("at the remote", topic.remote_filter()),
    ] {
        validate_topic_filter(&filter).map_err(|e| {
            format!(
                "has the topic \"{}\", which {which} becomes \"{filter}\", not a topic filter \
                 ({e}); fix the pattern or the prefix",
                t.pattern
            )
        })?;
    }
    Ok(topic)
}

/// `restart_timeout`: `[N]`, `[base, cap]` or `[base, cap, stable]`, in seconds. The error
/// follows "has a restart_timeout" or "has a value".
pub(crate) fn restart_from(v: &[u64]) -> Result<RestartTimeout, String> {
    let secs = Duration::from_secs;
    match *v {
        [n] if n >= 1 => Ok(RestartTimeout::Constant(secs(n))),
        [base, cap] | [base, cap, _] if base >= 1 && cap >= base => Ok(RestartTimeout::Backoff {
            base: secs(base),
            cap: secs(cap),
            stable: v.get(2).map(|s| secs(*s)),
        }),
        [base, cap] | [base, cap, _] if base >= 1 => Err(format!(
            "whose cap {cap} is below its base {base}; give the base, then a larger cap, in \
             seconds"
        )),
        _ => Err(format!(
            "{v:?} that is not seconds above 0; give one number (always the same wait) or \
             base and cap (a growing random wait), optionally then the seconds after which a \
             connection counts as stable"
        )),
    }
}

fn tls_from(t: &BridgeTlsTable) -> Result<BridgeTls, String> {
    match (&t.certfile, &t.keyfile) {
        (Some(_), None) => {
            return Err(
                "has a TLS certfile (mosquitto.conf: bridge_certfile) without its \
                        keyfile (bridge_keyfile); add the keyfile"
                    .to_string(),
            )
        }
        (None, Some(_)) => {
            return Err(
                "has a TLS keyfile (mosquitto.conf: bridge_keyfile) without its \
                        certfile (bridge_certfile); add the certfile"
                    .to_string(),
            )
        }
        _ => {}
    }
    let use_os_certs = t
        .use_os_certs
        .unwrap_or(t.cafile.is_none() && t.capath.is_none());
    if !use_os_certs && t.cafile.is_none() && t.capath.is_none() {
        return Err(
            "has TLS without a CA to check the remote with; give cafile or capath, \
                    or set use_os_certs = true"
                .to_string(),
        );
    }
    if t.alpn.as_deref() == Some("") {
        return Err("has an empty TLS alpn; give the protocol name or leave it out".to_string());
    }
    Ok(BridgeTls {
        cafile: t.cafile.clone(),
        capath: t.capath.clone(),
        use_os_certs,
        certfile: t.certfile.clone(),
        keyfile: t.keyfile.clone(),
        insecure: t.insecure.unwrap_or(false),
        min_version: match t.min_version.unwrap_or(TlsVersionName::Tls12) {
            TlsVersionName::Tls12 => TlsVersion::Tls12,
            TlsVersionName::Tls13 => TlsVersion::Tls13,
        },
        alpn: t.alpn.clone(),
    })
}

fn queue_from(q: Option<&BridgeQueueTable>) -> Result<BridgeQueue, String> {
    let q = q.cloned().unwrap_or_default();
    Ok(BridgeQueue {
        max_messages: q.max_messages.unwrap_or(DEFAULT_QUEUE_MESSAGES),
        max_bytes: q.max_bytes.unwrap_or(DEFAULT_QUEUE_BYTES),
        max_age: q.max_age.filter(|s| *s > 0).map(Duration::from_secs),
        when_full: match q.when_full.unwrap_or(OverflowName::Reject) {
            OverflowName::Reject => OverflowPolicy::Reject,
            OverflowName::DropOldest => OverflowPolicy::DropOldest,
            OverflowName::DropQos0First => OverflowPolicy::DropQos0First,
        },
    })
}

fn loop_guard_from(g: Option<&LoopGuardTable>) -> Result<LoopGuard, String> {
    let g = g.cloned().unwrap_or_default();
    let property = g
        .property
        .unwrap_or_else(|| DEFAULT_LOOP_PROPERTY.to_string());
    if property.is_empty() {
        return Err(
            "has an empty loop_guard property; give a name, or set enabled = false \
                    to turn the guard off"
                .to_string(),
        );
    }
    let max_hops = g.max_hops.unwrap_or(DEFAULT_MAX_HOPS);
    if max_hops == 0 {
        return Err("has loop_guard max_hops = 0; give 1 to 255".to_string());
    }
    Ok(LoopGuard {
        property: g.enabled.unwrap_or(true).then_some(property),
        max_hops,
    })
}

/// This machine's name, for the default remote client id (`<hostname>.<name>`, as
/// Mosquitto's `gethostname`); `localhost` when it cannot be read.
pub fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// What deserves a warning at start-up, one sentence each: a `both` topic with no prefix
/// (a loop, unless the remote honours the bridge bit or No Local), and topics carried at
/// QoS 0 (the default: QoS 1 and 2 messages lose their guarantee on the way).
pub fn warnings(b: &BridgeConfig) -> Vec<String> {
    let mut out = Vec::new();
    for t in &b.topics {
        if t.direction == Direction::Both && t.local_prefix.is_empty() && t.remote_prefix.is_empty()
        {
            out.push(format!(
                "bridge \"{}\": topic \"{}\" goes both ways with the same topics on both \
                 brokers; if the remote neither honours the bridge bit (try_private) nor No \
                 Local, messages loop; give a local or remote prefix if it does not",
                b.name, t.pattern
            ));
        }
        if t.qos == QoS::AtMostOnce {
            out.push(format!(
                "bridge \"{}\": topic \"{}\" is carried at QoS 0 (the default), so QoS 1 and 2 \
                 messages are downgraded and may be lost on the way; give it QoS 1 if they \
                 must arrive",
                b.name, t.pattern
            ));
        }
    }
    out
}

#[cfg(test)]
#[path = "bridge_table_tests.rs"]
mod tests;
