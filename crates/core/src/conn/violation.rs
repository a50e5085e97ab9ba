//! Every way a client can break the protocol badly enough that its connection ends, in one
//! list: each with the reason code a 5.0 DISCONNECT carries and the text the log shows.
//! Whoever finds one — the decoder, `ConnState`, the broker, the keep-alive sweep — names it
//! here, so the logs and the metrics that count by reason code see one vocabulary.

use makelaar_proto::{DecodeError, Disconnect, Packet, ProtocolVersion, ReasonCode};

/// A protocol violation that closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// The decoder: the bytes break the packet format [MQTT-1.5.4-1], [MQTT-2.1.3-1].
    Malformed,
    /// The decoder: well formed, but forbidden (duplicate property, packet id 0, QoS 3, ...).
    ProtocolInPacket,
    /// The decoder: the fixed header announces more than `max_packet_size`.
    PacketTooLarge,
    /// The decoder: a PUBLISH topic name with wildcards or U+0000 [MQTT-3.3.2-2].
    TopicNameInvalid,
    /// The decoder: a payload flagged UTF-8 (Payload Format Indicator 1) that is not.
    PayloadFormatInvalid,
    /// A CONNECT after the first [MQTT-3.1.0-2].
    SecondConnect,
    /// CONNACK, SUBACK, UNSUBACK or PINGRESP from a client.
    ServerOnlyPacket,
    /// A client put a subscription identifier in its PUBLISH [MQTT-3.3.4-6].
    SubscriptionIdFromClient,
    /// More PUBLISH per second than `max_publish_rate` (5.0 DISCONNECT 0x96, section
    /// 3.14.2.1).
    PublishRateTooHigh,
    /// A topic alias of 0 or above our Topic Alias Maximum [MQTT-3.3.2-9] [MQTT-3.3.2-10].
    TopicAliasOutOfRange,
    /// A topic alias used with an empty topic before it was set.
    TopicAliasUnset,
    /// More unacknowledged QoS 1/2 PUBLISH than our Receive Maximum [MQTT-3.3.4-9].
    ReceiveMaximumExceeded,
    /// Nothing received for 1.5 × the keep-alive [MQTT-3.1.2-24].
    KeepAliveTimeout,
    /// A PUBLISH above the Maximum QoS we announced [MQTT-3.2.2-11].
    QosNotSupported,
    /// A retained PUBLISH where retain was announced as not available.
    RetainNotSupported,
    /// A topic name deeper than `max_topic_levels` (5.0: 0x90).
    TopicNameTooDeep,
    /// A topic filter deeper than `max_topic_levels` (5.0: 0x8F).
    TopicFilterTooDeep,
    /// No Local on a shared subscription [MQTT-3.8.3-4].
    NoLocalOnShared,
    /// DISCONNECT setting a session expiry after CONNECT gave 0 [MQTT-3.14.2-2].
    SessionExpiryAfterZero,
    /// AUTH although no authentication method was agreed.
    UnexpectedAuth,
}

impl Violation {
    /// The violation a decoding error after CONNECT is.
    pub fn from_decode(e: &DecodeError) -> Violation {
        match e {
            DecodeError::Malformed(_) => Violation::Malformed,
            DecodeError::Protocol(_) => Violation::ProtocolInPacket,
            DecodeError::TooLarge { .. } => Violation::PacketTooLarge,
            DecodeError::TopicNameInvalid(_) => Violation::TopicNameInvalid,
            DecodeError::PayloadFormatInvalid => Violation::PayloadFormatInvalid,
            // Only a CONNECT can name a protocol: after the first, any is one too many.
            DecodeError::UnsupportedProtocol => Violation::SecondConnect,
        }
    }

    /// The reason code the connection ends with (5.0 DISCONNECT, logs, metrics).
    pub const fn reason(self) -> ReasonCode {
        match self {
            Violation::Malformed => ReasonCode::MALFORMED_PACKET,
            Violation::PacketTooLarge => ReasonCode::PACKET_TOO_LARGE,
            Violation::TopicNameInvalid | Violation::TopicNameTooDeep => {
                ReasonCode::TOPIC_NAME_INVALID
            }
            Violation::PayloadFormatInvalid => ReasonCode::PAYLOAD_FORMAT_INVALID,
            Violation::PublishRateTooHigh => ReasonCode::MESSAGE_RATE_TOO_HIGH,
            Violation::TopicAliasOutOfRange => ReasonCode::TOPIC_ALIAS_INVALID,
            Violation::ReceiveMaximumExceeded => ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
            Violation::KeepAliveTimeout => ReasonCode::KEEP_ALIVE_TIMEOUT,
            Violation::QosNotSupported => ReasonCode::QOS_NOT_SUPPORTED,
            Violation::RetainNotSupported => ReasonCode::RETAIN_NOT_SUPPORTED,
            Violation::TopicFilterTooDeep => ReasonCode::TOPIC_FILTER_INVALID,
            Violation::ProtocolInPacket
            | Violation::SecondConnect
            | Violation::ServerOnlyPacket
            | Violation::SubscriptionIdFromClient
            | Violation::TopicAliasUnset
            | Violation::NoLocalOnShared
            | Violation::SessionExpiryAfterZero
            | Violation::UnexpectedAuth => ReasonCode::PROTOCOL_ERROR,
        }
    }

    /// What the log says.
    pub const fn text(self) -> &'static str {
        match self {
            Violation::Malformed | Violation::ProtocolInPacket => "malformed packet",
            Violation::PacketTooLarge => "packet larger than max_packet_size",
            Violation::TopicNameInvalid => "invalid topic name",
            Violation::PayloadFormatInvalid => "payload is not UTF-8 as announced",
            Violation::SecondConnect => "second CONNECT",
            Violation::ServerOnlyPacket => "a client sent a server-only packet",
            Violation::SubscriptionIdFromClient => "subscription identifier in a client's PUBLISH",
            Violation::PublishRateTooHigh => "PUBLISH rate above max_publish_rate",
            Violation::TopicAliasOutOfRange => "topic alias out of range",
            Violation::TopicAliasUnset => "topic alias used before it was set",
            Violation::ReceiveMaximumExceeded => "client exceeded the receive maximum",
            Violation::KeepAliveTimeout => "keep-alive timeout",
            Violation::QosNotSupported => "QoS not supported",
            Violation::RetainNotSupported => "retain not supported",
            Violation::TopicNameTooDeep => "topic name has more levels than max_topic_levels",
            Violation::TopicFilterTooDeep => "topic filter has more levels than max_topic_levels",
            Violation::NoLocalOnShared => "no-local on a shared subscription",
            Violation::SessionExpiryAfterZero => {
                "session expiry set on DISCONNECT after CONNECT gave 0"
            }
            Violation::UnexpectedAuth => "unexpected AUTH",
        }
    }

    /// The last packet of a connection this violation ends: a 5.0 client is told why with
    /// DISCONNECT and the reason code [MQTT-4.13.1-1]; 3.x has no DISCONNECT from the server,
    /// the connection is just closed [MQTT-4.8.0-1].
    pub fn disconnect(self, version: ProtocolVersion) -> Option<Packet> {
        version.is_v5().then(|| {
            Packet::Disconnect(Disconnect {
                reason: self.reason(),
                ..Disconnect::default()
            })
        })
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text())
    }
}
