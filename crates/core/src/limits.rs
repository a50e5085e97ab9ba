//! The broker's limits: every queue and buffer the core keeps is bounded by one of these.
//!
//! [`Limits`] is the one definition of every limit: its field, its default, its range and its
//! documentation. With the cargo feature `config` (enabled by makelaar-broker) it is also
//! `[limits]` of `makelaar.toml` as is: read and written with serde (durations in seconds,
//! ranges checked while reading, see `file`) and described by a JSON schema, whose field
//! descriptions (these doc comments) are the user's reference (`makelaar config reference`).
//! So the doc comments of the fields are written for users.
//!
//! Adding a limit is a change to this file only: the field with its doc comment (and, if not
//! every value of its type makes sense, a range constant below and a
//! `deserialize_with` naming the check in `file`), and its value in `Limits::default`. The
//! configuration file, the reference, the example file and `makelaar config convert` take it
//! from here; the broker's generated files are then regenerated
//! (`makelaar config reference > docs/config-reference.md`, `makelaar config example >
//! makelaar.example.toml`).

use std::ops::RangeInclusive;
use std::time::Duration;

#[cfg(feature = "config")]
mod file;

/// Limits and protocol options the broker enforces and advertises. The defaults protect a small
/// machine; every one is configurable (`[limits]` in `makelaar.toml`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(
    feature = "config",
    derive(serde::Deserialize, serde::Serialize, schemars::JsonSchema),
    serde(deny_unknown_fields, default)
)]
pub struct Limits {
    /// Largest packet accepted from a client, in bytes (16 to 268435455). A larger packet is
    /// refused from its header, before it is buffered. Advertised to MQTT 5 clients as Maximum
    /// Packet Size.
    #[cfg_attr(
        feature = "config",
        serde(deserialize_with = "file::de_max_packet_size")
    )]
    pub max_packet_size: u32,
    /// Longest keep-alive a client may ask for, in seconds; a longer one (or 0) is answered with
    /// Server Keep Alive in MQTT 5. 0 means no maximum.
    pub max_keep_alive: u16,
    /// Seconds a new connection has to send CONNECT (1 to 86400).
    #[cfg_attr(
        feature = "config",
        serde(with = "file::connect_timeout"),
        schemars(with = "u64")
    )]
    pub connect_timeout: Duration,
    /// Messages kept per session beyond its inflight window, for an offline or slow subscriber.
    pub max_queued_messages: usize,
    /// Bytes kept per session in that queue (payload + topic); 0 means no byte limit.
    pub max_queued_bytes: usize,
    /// Bytes of messages (payload + topic) the durable store may hold, over every session's kept
    /// messages and the retained ones; 0 means no limit. When it is reached nothing new is
    /// stored: an MQTT 5 client's QoS 1/2 PUBLISH is answered with 0x97 Quota exceeded; a 3.x
    /// client's message is delivered to connected clients, but offline sessions do not get it
    /// and a retained one is not kept (counted, and logged once).
    pub max_stored_bytes: usize,
    /// Also queue QoS 0 messages for offline persistent sessions (Mosquitto's
    /// `queue_qos0_messages`).
    pub queue_qos0_messages: bool,
    /// QoS 1/2 messages in flight to one client at once (at least 1); the client's Receive
    /// Maximum can lower it.
    #[cfg_attr(feature = "config", serde(deserialize_with = "file::de_window"))]
    pub max_inflight_messages: u16,
    // Exceeding it is DISCONNECT 0x93 [MQTT-3.3.4-7].
    /// Receive Maximum advertised to MQTT 5 clients: QoS 1/2 publishes a client may have
    /// unacknowledged towards the broker (1 to 65535).
    #[cfg_attr(feature = "config", serde(deserialize_with = "file::de_window"))]
    pub receive_maximum: u16,
    /// Topic Alias Maximum advertised to MQTT 5 clients; 0 disables topic aliases.
    pub topic_alias_maximum: u16,
    /// Bytes of packets waiting to be written to one client; beyond it, QoS 0 messages to that
    /// client are dropped (counted and logged).
    pub max_outgoing_bytes: usize,
    /// Bytes of large packets (over 64 KiB) being received at once, over all clients. A client
    /// announcing a large packet reserves its whole size first and is not read while the budget
    /// is used up, so many clients announcing large packets at once cannot exhaust memory.
    pub large_packet_budget: usize,
    /// Largest Session Expiry Interval granted to MQTT 5 clients, in seconds; 4294967295 means
    /// never expire.
    pub max_session_expiry: u32,
    /// Expiry of MQTT 3.x persistent sessions (clean session 0), in seconds (Mosquitto's
    /// `persistent_client_expiration`); 4294967295 means never.
    pub persistent_session_expiry: u32,
    /// Subscriptions one session may hold; 0 means no limit.
    pub max_subscriptions_per_session: usize,
    /// Clients connected at once, over all listeners; 0 means no limit. A client over it gets
    /// CONNACK 0x97 Quota exceeded (3.1.1: 3). A `[[listener]]` can have its own limit too.
    pub max_connections: usize,
    /// New connections per second from one source address, with bursts of as many; more are
    /// refused with CONNACK 0x9F Connection rate exceeded (3.1.1: 3). 0 means no limit.
    pub max_connection_rate: u32,
    /// PUBLISH packets per second from one client, with bursts of as many; a client going faster
    /// is disconnected (MQTT 5: DISCONNECT 0x96 Message rate too high). 0 means no limit.
    pub max_publish_rate: u32,
    /// Retained messages the broker keeps; 0 means no limit.
    pub max_retained_messages: usize,
    /// Whether retained messages are supported at all (Retain Available).
    pub retain_available: bool,
    /// Accept an empty client id and assign one.
    pub allow_zero_length_client_id: bool,
    /// Longest client id accepted, in bytes (23 to 65535: every broker must accept ids of up to
    /// 23 bytes).
    #[cfg_attr(
        feature = "config",
        serde(deserialize_with = "file::de_max_client_id_len")
    )]
    pub max_client_id_len: usize,
    /// Highest QoS accepted (0, 1 or 2); advertised as Maximum QoS when below 2.
    #[cfg_attr(feature = "config", serde(deserialize_with = "file::de_max_qos"))]
    pub max_qos: u8,
    /// Most levels (the parts between `/`) of a topic a client may use: in PUBLISH, SUBSCRIBE,
    /// UNSUBSCRIBE and its will; a `$share/GROUP/` prefix counts as two. 0 means no limit. A
    /// deeper topic is a protocol violation: the client is disconnected (MQTT 5: DISCONNECT
    /// 0x90 Topic Name invalid, or 0x8F Topic Filter invalid), a CONNECT with such a will is
    /// refused (MQTT 5: CONNACK 0x90; 3.1.1: 3), and the broker logs the limit.
    pub max_topic_levels: usize,
}

impl Limits {
    /// The number of levels of `topic` (a name or a filter) when it has more than
    /// `max_topic_levels`; `None` when it is within the limit, or there is none.
    pub fn excess_topic_levels(&self, topic: &str) -> Option<usize> {
        let max = self.max_topic_levels;
        // n bytes hold at most n + 1 levels: a topic shorter than the limit needs no count.
        if max == 0 || topic.len() < max {
            return None;
        }
        let levels = topic.bytes().filter(|&b| b == b'/').count() + 1;
        (levels > max).then_some(levels)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_packet_size: 1024 * 1024,
            max_keep_alive: 65_535,
            connect_timeout: Duration::from_secs(10),
            max_queued_messages: 1000,
            max_queued_bytes: 0,
            max_stored_bytes: 1 << 30,
            queue_qos0_messages: false,
            max_inflight_messages: 20,
            receive_maximum: 1024,
            topic_alias_maximum: 10,
            max_outgoing_bytes: 4 * 1024 * 1024,
            large_packet_budget: 64 * 1024 * 1024,
            max_session_expiry: u32::MAX,
            persistent_session_expiry: u32::MAX,
            max_subscriptions_per_session: 0,
            max_connections: 0,
            max_connection_rate: 0,
            max_publish_rate: 0,
            max_retained_messages: 0,
            retain_available: true,
            allow_zero_length_client_id: true,
            max_client_id_len: 65_535,
            max_qos: 2,
            // Mosquitto's compile-time limit (TOPIC_HIERARCHY_LIMIT).
            max_topic_levels: 200,
        }
    }
}

/// The values of the limits whose type allows more than makes sense, checked when `[limits]`
/// is read (feature `config`). Each field's documentation states its range too.
impl Limits {
    /// `max_packet_size`: 16 bytes holds a CONNACK; the Remaining Length field holds at most
    /// 268,435,455 (MQTT 5 section 1.5.5, 3.1.1 section 2.2.3), which is also what Mosquitto
    /// takes for "no limit".
    pub const MAX_PACKET_SIZE_RANGE: RangeInclusive<u32> = 16..=268_435_455;
    /// `connect_timeout`, in seconds: a day at most.
    pub const CONNECT_TIMEOUT_SECS_RANGE: RangeInclusive<u64> = 1..=86_400;
    /// `max_inflight_messages` and `receive_maximum`: a Receive Maximum of 0 is a Protocol
    /// Error [MQTT-3.2.2.3.3], and an inflight window of 0 would send nothing.
    pub const WINDOW_RANGE: RangeInclusive<u16> = 1..=u16::MAX;
    /// `max_client_id_len`: the server MUST allow client ids of 1 to 23 bytes
    /// [MQTT-3.1.3-5]; a client id is a UTF-8 string of at most 65,535 bytes.
    pub const MAX_CLIENT_ID_LEN_RANGE: RangeInclusive<usize> = 23..=65_535;
    /// `max_qos`: a QoS.
    pub const MAX_QOS_RANGE: RangeInclusive<u8> = 0..=2;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_levels_are_counted_against_the_limit() {
        let limits = Limits {
            max_topic_levels: 3,
            ..Limits::default()
        };
        for within in ["a", "a/b/c", "//", "+/+/#", "abcdefgh/ijk"] {
            assert_eq!(limits.excess_topic_levels(within), None, "{within}");
        }
        assert_eq!(limits.excess_topic_levels("a/b/c/d"), Some(4));
        assert_eq!(limits.excess_topic_levels("///"), Some(4));
        assert_eq!(limits.excess_topic_levels("$share/g/a/b"), Some(4));
        let unlimited = Limits {
            max_topic_levels: 0,
            ..Limits::default()
        };
        assert_eq!(unlimited.excess_topic_levels(&"/".repeat(65_535)), None);
        let default = Limits::default();
        assert_eq!(default.excess_topic_levels(&"a/".repeat(199)), None);
        assert_eq!(default.excess_topic_levels(&"/".repeat(200)), Some(201));
    }
}
