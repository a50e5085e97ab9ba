//! The CONNECT phase of a connection: what answers a CONNECT that is refused.

use makelaar_proto::{ConnAck, Packet, ProtocolVersion, ReasonCode};

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
