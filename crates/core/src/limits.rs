//! The broker's limits: every queue and buffer the core keeps is bounded by one of these.

use std::time::Duration;

/// Limits and protocol options the broker enforces and advertises. The defaults protect a small
/// machine; every one is configurable (`[limits]` in `makelaar.toml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest packet accepted from a client, in bytes (advertised as Maximum Packet Size in
    /// 5.0). A larger one is refused from its fixed header, before it is buffered.
    pub max_packet_size: u32,
    /// Longest keep-alive a client may ask for, in seconds; longer (or 0) is answered with
    /// Server Keep Alive in 5.0. 0 means no maximum.
    pub max_keep_alive: u16,
    /// How long a new connection may take to send CONNECT.
    pub connect_timeout: Duration,
    /// Messages kept per session beyond its inflight window (offline or slow consumer).
    pub max_queued_messages: usize,
    /// Bytes kept per session in that queue (payload + topic); 0 means no byte limit.
    pub max_queued_bytes: usize,
    /// Bytes (payload + topic) the durable store may hold over all sessions and retained
    /// messages; 0 means no limit. Past it nothing new is stored: 5.0 publishers get 0x97
    /// (quota exceeded) for QoS 1/2 messages, offline sessions of 3.x publishers' messages do
    /// not get them (counted and logged).
    pub max_stored_bytes: usize,
    /// Also queue QoS 0 messages for offline persistent sessions (Mosquitto's
    /// `queue_qos0_messages`).
    pub queue_qos0_messages: bool,
    /// QoS 1/2 messages in flight to one client at once (the client's Receive Maximum lowers it).
    pub max_inflight_messages: u16,
    /// Receive Maximum advertised to 5.0 clients: QoS 1/2 publishes a client may have unacknowledged
    /// towards us; exceeding it is DISCONNECT 0x93 [MQTT-3.3.4-7].
    pub receive_maximum: u16,
    /// Topic Alias Maximum advertised to 5.0 clients (inbound aliases); 0 disables them.
    pub topic_alias_maximum: u16,
    /// Bytes of encoded packets waiting to be written to one client; past it QoS 0 messages to
    /// that client are dropped (counted and logged) instead of buffered.
    pub max_outgoing_bytes: usize,
    /// Bytes of large packets (over 64 KiB) being received at once, over all clients. A client
    /// announcing a large packet reserves its whole size first and waits (is not read) while
    /// the budget is used up, so many clients announcing large packets cannot exhaust memory.
    pub large_packet_budget: usize,
    /// Largest Session Expiry Interval granted, in seconds (`u32::MAX` means never expire).
    pub max_session_expiry: u32,
    /// Session expiry for 3.x persistent sessions, in seconds (Mosquitto's
    /// `persistent_client_expiration`); `u32::MAX` means never.
    pub persistent_session_expiry: u32,
    /// Subscriptions one session may hold; 0 means no limit.
    pub max_subscriptions_per_session: usize,
    /// Most clients connected at once; 0 means no limit.
    pub max_connections: usize,
    /// New connections per second from one source address (bursts of as many); more are
    /// refused with CONNACK 0x9F Connection rate exceeded (3.1.1: 3). 0 means no limit.
    pub max_connection_rate: u32,
    /// PUBLISH packets per second from one client (bursts of as many); a client going faster
    /// is disconnected (5.0: DISCONNECT 0x96 Message rate too high). 0 means no limit.
    pub max_publish_rate: u32,
    /// Retained messages the broker keeps; 0 means no limit.
    pub max_retained_messages: usize,
    /// Whether retained messages are supported at all (Retain Available).
    pub retain_available: bool,
    /// Whether an empty client id is accepted (assigned one by the server).
    pub allow_zero_length_client_id: bool,
    /// Longest client id accepted, in bytes.
    pub max_client_id_len: usize,
    /// Maximum QoS the broker accepts (advertised as Maximum QoS when below 2).
    pub max_qos: u8,
    /// Most levels (parts between `/`) of a topic name or filter a client may use, in PUBLISH,
    /// SUBSCRIBE, UNSUBSCRIBE and its will (`$share/GROUP/` counts as two); 0 means no limit.
    /// A deeper topic is a protocol violation: the connection is closed (5.0: DISCONNECT 0x90
    /// Topic Name invalid or 0x8F Topic Filter invalid), a CONNECT with such a will refused.
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
