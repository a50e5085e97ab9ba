//! Codec errors, each mapped to the reason code the server answers with.

use crate::reason::ReasonCode;

/// Why bytes from the network could not become a packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes break the packet format [MQTT-1.5.4-1], [MQTT-2.1.3-1] and others.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// Well formed but forbidden by the protocol (duplicate property, wrong property for the
    /// packet type, packet id 0, QoS 3, ...).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The remaining length announces a packet larger than the configured maximum.
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    TooLarge { size: usize, max: usize },
    /// A PUBLISH topic name that is not valid (wildcards, U+0000, empty without alias).
    #[error("invalid topic name: {0}")]
    TopicNameInvalid(&'static str),
    /// CONNECT with an unknown protocol name or level; the server answers CONNACK with
    /// "unsupported protocol version" (0x01 in 3.1.1, 0x84 in 5.0) [MQTT-3.1.2-2].
    #[error("unsupported protocol name or level")]
    UnsupportedProtocol,
    /// PUBLISH payload flagged UTF-8 that is not (5.0 payload format indicator).
    #[error("payload is not valid UTF-8 although its payload format indicator says it is")]
    PayloadFormatInvalid,
}

impl DecodeError {
    /// The reason code to send in CONNACK or DISCONNECT (5.0).
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::Malformed(_) => ReasonCode::MALFORMED_PACKET,
            DecodeError::Protocol(_) => ReasonCode::PROTOCOL_ERROR,
            DecodeError::TooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            DecodeError::TopicNameInvalid(_) => ReasonCode::TOPIC_NAME_INVALID,
            DecodeError::UnsupportedProtocol => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            DecodeError::PayloadFormatInvalid => ReasonCode::PAYLOAD_FORMAT_INVALID,
        }
    }
}

/// Why a packet could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A string or binary field longer than 65,535 bytes.
    #[error("field too long to encode: {0}")]
    FieldTooLong(&'static str),
    /// The whole packet is larger than the 268,435,455 bytes MQTT can express.
    #[error("packet too large to encode")]
    PacketTooLarge,
    /// The packet type does not exist in the target protocol version (AUTH before 5.0).
    #[error("{0} cannot be sent with this protocol version")]
    NotInVersion(&'static str),
}
