//! The CONNECT phase of a connection, before there is a [`super::ConnState`]: what the first
//! packet decides, and what answers a CONNECT that is refused. The shell reads bytes, calls
//! [`first_packet`] with what its decoder made of them, and writes what it is told.

use makelaar_proto::{ConnAck, Connect, DecodeError, Packet, ProtocolVersion, ReasonCode};

/// The largest first packet read: a CONNECT is small, and a client not yet known is not
/// given `max_packet_size` (a larger one is refused from its fixed header).
pub const MAX_CONNECT_SIZE: usize = 64 * 1024;

/// What the decoding of a connection's first packet decides.
#[derive(Debug)]
pub enum Opening {
    /// No whole packet yet: read more (within `connect_timeout`).
    ReadMore,
    /// The CONNECT: on to authentication, then the router (boxed: a CONNECT is large, and
    /// the connection task must stay small).
    Connect(Box<Connect>),
    /// A protocol name or level we do not speak: write `connack` encoded as `encode_as`,
    /// then close [MQTT-3.1.2-2].
    UnsupportedVersion {
        connack: Box<Packet>,
        encode_as: ProtocolVersion,
    },
    /// The first packet is not CONNECT (its name): close without a word [MQTT-3.1.0-1].
    NotConnect(&'static str),
    /// The first packet does not decode: close without a word [MQTT-3.1.4-1]. This is also
    /// how the decoder reports a first packet that is not CONNECT [MQTT-3.1.0-1]: before
    /// CONNECT no other packet can be read, their format depending on the version.
    Malformed(DecodeError),
}

/// Decides what the connection's first packet, as decoded, means (see [`Opening`]).
pub fn first_packet(decoded: Result<Option<Packet>, DecodeError>) -> Opening {
    match decoded {
        Ok(None) => Opening::ReadMore,
        Ok(Some(Packet::Connect(c))) => Opening::Connect(c),
        Ok(Some(other)) => Opening::NotConnect(other.name()),
        // The client's version is unknown, so the answer takes the 3.1.1 form, which
        // 3.1 and 3.1.1 clients read: return code 0x01 (5.0 would read 0x84 in it).
        Err(DecodeError::UnsupportedProtocol) => Opening::UnsupportedVersion {
            connack: Box::new(Packet::ConnAck(ConnAck {
                reason: ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
                ..ConnAck::default()
            })),
            encode_as: ProtocolVersion::V311,
        },
        Err(e) => Opening::Malformed(e),
    }
}

/// The CONNACK refusing a CONNECT with `reason` [MQTT-3.2.2-5] (3.x: the reason code is
/// turned into a 3.1.1 return code when encoded), for a 5.0 client with a reason string.
///
/// Nothing may follow it: the connection is closed once it is written [MQTT-3.2.2-7] —
/// whether it comes from the shell (authentication, admission) or from the broker (see
/// [`super::Outbound::Close`]).
pub fn refusal(version: ProtocolVersion, reason: ReasonCode) -> Packet {
    let mut ack = ConnAck {
        reason,
        ..ConnAck::default()
    };
    if version.is_v5() {
        ack.properties.reason_string = Some(format!("connection refused: {}", reason.name()));
    }
    Packet::ConnAck(ack)
}
