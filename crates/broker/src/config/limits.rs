//! `[limits]` of `makelaar.toml`: the same fields and defaults as [`makelaar_core::Limits`],
//! with their ranges checked while parsing.

use std::time::Duration;

use makelaar_core::Limits;
use schemars::JsonSchema;
use serde::de::{self, Deserializer, Unexpected};
use serde::{Deserialize, Serialize};

/// `[limits]` as written in the file: the same fields and defaults as [`makelaar_core::Limits`]
/// (durations in seconds), with their ranges checked while parsing. The field documentation
/// is the user's reference (`makelaar config reference`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest packet accepted from a client, in bytes (16 to 268435455). A larger packet is
    /// refused from its header, before it is buffered. Advertised to MQTT 5 clients as Maximum
    /// Packet Size.
    #[serde(deserialize_with = "de_max_packet_size")]
    pub max_packet_size: u32,
    /// Longest keep-alive a client may ask for, in seconds; a longer one (or 0) is answered with
    /// Server Keep Alive in MQTT 5. 0 means no maximum.
    pub max_keep_alive: u16,
    /// Seconds a new connection has to send CONNECT (1 to 86400).
    #[serde(deserialize_with = "de_connect_timeout")]
    pub connect_timeout: u64,
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
    #[serde(deserialize_with = "de_at_least_one")]
    pub max_inflight_messages: u16,
    /// Receive Maximum advertised to MQTT 5 clients: QoS 1/2 publishes a client may have
    /// unacknowledged towards the broker (1 to 65535).
    #[serde(deserialize_with = "de_at_least_one")]
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
    #[serde(deserialize_with = "de_max_client_id_len")]
    pub max_client_id_len: usize,
    /// Highest QoS accepted (0, 1 or 2); advertised as Maximum QoS when below 2.
    #[serde(deserialize_with = "de_max_qos")]
    pub max_qos: u8,
    /// Most levels (the parts between `/`) of a topic a client may use: in PUBLISH, SUBSCRIBE,
    /// UNSUBSCRIBE and its will; a `$share/GROUP/` prefix counts as two. 0 means no limit. A
    /// deeper topic is a protocol violation: the client is disconnected (MQTT 5: DISCONNECT
    /// 0x90 Topic Name invalid, or 0x8F Topic Filter invalid), a CONNECT with such a will is
    /// refused (MQTT 5: CONNACK 0x90; 3.1.1: 3), and the broker logs the limit.
    pub max_topic_levels: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig::from(&Limits::default())
    }
}

impl From<&Limits> for LimitsConfig {
    fn from(l: &Limits) -> Self {
        // Destructured without `..` so that a new field in `Limits` fails to compile here.
        let Limits {
            max_packet_size,
            max_keep_alive,
            connect_timeout,
            max_queued_messages,
            max_queued_bytes,
            max_stored_bytes,
            queue_qos0_messages,
            max_inflight_messages,
            receive_maximum,
            topic_alias_maximum,
            max_outgoing_bytes,
            large_packet_budget,
            max_session_expiry,
            persistent_session_expiry,
            max_subscriptions_per_session,
            max_connections,
            max_connection_rate,
            max_publish_rate,
            max_retained_messages,
            retain_available,
            allow_zero_length_client_id,
            max_client_id_len,
            max_qos,
            max_topic_levels,
        } = l.clone();
        LimitsConfig {
            max_packet_size,
            max_keep_alive,
            connect_timeout: connect_timeout.as_secs(),
            max_queued_messages,
            max_queued_bytes,
            max_stored_bytes,
            queue_qos0_messages,
            max_inflight_messages,
            receive_maximum,
            topic_alias_maximum,
            max_outgoing_bytes,
            large_packet_budget,
            max_session_expiry,
            persistent_session_expiry,
            max_subscriptions_per_session,
            max_connections,
            max_connection_rate,
            max_publish_rate,
            max_retained_messages,
            retain_available,
            allow_zero_length_client_id,
            max_client_id_len,
            max_qos,
            max_topic_levels,
        }
    }
}

impl From<LimitsConfig> for Limits {
    fn from(c: LimitsConfig) -> Self {
        Limits {
            max_packet_size: c.max_packet_size,
            max_keep_alive: c.max_keep_alive,
            connect_timeout: Duration::from_secs(c.connect_timeout),
            max_queued_messages: c.max_queued_messages,
            max_queued_bytes: c.max_queued_bytes,
            max_stored_bytes: c.max_stored_bytes,
            queue_qos0_messages: c.queue_qos0_messages,
            max_inflight_messages: c.max_inflight_messages,
            receive_maximum: c.receive_maximum,
            topic_alias_maximum: c.topic_alias_maximum,
            max_outgoing_bytes: c.max_outgoing_bytes,
            large_packet_budget: c.large_packet_budget,
            max_session_expiry: c.max_session_expiry,
            persistent_session_expiry: c.persistent_session_expiry,
            max_subscriptions_per_session: c.max_subscriptions_per_session,
            max_connections: c.max_connections,
            max_connection_rate: c.max_connection_rate,
            max_publish_rate: c.max_publish_rate,
            max_retained_messages: c.max_retained_messages,
            retain_available: c.retain_available,
            allow_zero_length_client_id: c.allow_zero_length_client_id,
            max_client_id_len: c.max_client_id_len,
            max_qos: c.max_qos,
            max_topic_levels: c.max_topic_levels,
        }
    }
}

/// Deserializes an unsigned integer and checks `min..=max`; the error names the range.
fn de_ranged<'de, D, T>(d: D, min: u64, max: u64, what: &str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    // Read as i64 (TOML's integer type) so negative numbers get the same range message.
    let v = i64::deserialize(d)?;
    let expected = format!("{what} from {min} to {max}");
    let unexpected = Unexpected::Signed(v);
    let Ok(u) = u64::try_from(v) else {
        return Err(de::Error::invalid_value(unexpected, &expected.as_str()));
    };
    if u < min || u > max {
        return Err(de::Error::invalid_value(unexpected, &expected.as_str()));
    }
    T::try_from(u).map_err(|_| de::Error::invalid_value(unexpected, &expected.as_str()))
}

// [MQTT-2.2.3]: the Remaining Length field holds at most 268,435,455; 16 bytes fits a CONNACK.
fn de_max_packet_size<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    de_ranged(d, 16, 268_435_455, "a size in bytes")
}

fn de_connect_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    de_ranged(d, 1, 86_400, "a number of seconds")
}

// Receive Maximum 0 is a Protocol Error [MQTT-3.2.2.3.3]; an inflight window of 0 sends nothing.
fn de_at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    de_ranged(d, 1, u64::from(u16::MAX), "a whole number")
}

// The server MUST allow client ids of 1 to 23 bytes [MQTT-3.1.3-5].
fn de_max_client_id_len<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    de_ranged(d, 23, 65_535, "a length in bytes")
}

fn de_max_qos<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    de_ranged(d, 0, 2, "a QoS")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_defaults_round_trip() {
        assert_eq!(Limits::from(LimitsConfig::default()), Limits::default());
    }
}
