//! The client's errors: each `Display` is one sentence meant to be shown to a user as is.

use std::io;
use std::sync::Arc;

use makelaar_proto::{DecodeError, EncodeError, ProtocolVersion, ReasonCode};

/// Everything that can go wrong talking to a broker.
///
/// Cheap to clone (an I/O error is shared), so that one lost connection can fail every request
/// waiting on it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The host name did not resolve to any address.
    #[error("cannot resolve host {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: Arc<io::Error>,
    },
    /// No TCP connection could be made (nothing listening, unreachable, ...).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// `host:port` as given.
        addr: String,
        #[source]
        source: Arc<io::Error>,
    },
    /// The TCP connection, TLS handshake and CONNACK took longer than the connect timeout.
    #[error("no answer from {addr} within {secs} s: is it an MQTT broker?")]
    ConnectTimeout { addr: String, secs: u64 },
    /// TLS could not be set up: a certificate or key file is unusable, or the handshake
    /// failed (untrusted or mismatching server certificate, ...).
    #[error("TLS: {0}")]
    Tls(String),
    /// The broker answered CONNACK with a failure.
    #[error("connection refused: {}{}", .reason.name(), reason_suffix(.reason_string))]
    ConnectionRefused {
        /// The reason code (a 3.x return code is mapped to its 5.0 equivalent).
        reason: ReasonCode,
        /// The byte on the wire: the 3.x return code or the 5.0 reason code.
        code: u8,
        /// The broker's explanation (5.0 Reason String), if it sent one.
        reason_string: Option<String>,
    },
    /// The broker closed the connection with a DISCONNECT (5.0).
    #[error("disconnected by the broker: {}{}", .reason.name(), reason_suffix(.reason_string))]
    DisconnectedByServer {
        reason: ReasonCode,
        reason_string: Option<String>,
    },
    /// The connection was lost (closed by the peer, reset, or an I/O error).
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// No PINGRESP came back in time: the broker or the network is gone.
    #[error("connection lost: no answer to PINGREQ within the keep-alive of {0} s")]
    KeepAliveTimeout(u16),
    /// The broker sent something that breaks the protocol.
    #[error("protocol error from the broker: {0}")]
    Protocol(String),
    /// The broker sent bytes that are not a valid packet.
    #[error("bad packet from the broker: {0}")]
    Decode(#[from] DecodeError),
    /// A packet could not be encoded (a field too long, ...).
    #[error("cannot encode the packet: {0}")]
    Encode(#[from] EncodeError),
    /// The request is not valid: an empty or wildcard topic name, a bad filter, QoS above the
    /// broker's maximum, a packet above the broker's maximum size, ...
    #[error("{0}")]
    Invalid(String),
    /// The broker refused a PUBLISH (5.0 PUBACK/PUBREC with a failure reason code).
    #[error("publish refused by the broker: {}{}", .reason.name(), reason_suffix(.reason_string))]
    PublishRefused {
        reason: ReasonCode,
        reason_string: Option<String>,
    },
    /// The broker refused a subscription (SUBACK failure for `filter`).
    #[error("subscription to {filter} refused by the broker: {}", .reason.name())]
    SubscribeRefused { filter: String, reason: ReasonCode },
    /// The client was closed (by [`Client::disconnect`](crate::Client::disconnect)) before the
    /// request completed, or is used after it was closed.
    #[error("the client is closed")]
    Closed,
}

fn reason_suffix(s: &Option<String>) -> String {
    match s {
        Some(s) if !s.is_empty() => format!(" ({s})"),
        _ => String::new(),
    }
}

impl Error {
    pub(crate) fn io_lost(e: &io::Error) -> Error {
        Error::ConnectionLost(e.to_string())
    }

    /// For a refused connection, the code a command-line tool exits with (as Mosquitto's tools
    /// do): the 3.x return code or the 5.0 reason code. `None` for other errors.
    pub fn connack_code(&self) -> Option<u8> {
        match self {
            Error::ConnectionRefused { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True when the error is about the connection (lost, refused, timed out, TLS), as opposed
    /// to one request being invalid or refused.
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            Error::Resolve { .. }
                | Error::Connect { .. }
                | Error::ConnectTimeout { .. }
                | Error::Tls(_)
                | Error::ConnectionRefused { .. }
                | Error::DisconnectedByServer { .. }
                | Error::ConnectionLost(_)
                | Error::KeepAliveTimeout(_)
                | Error::Protocol(_)
                | Error::Decode(_)
        )
    }

    pub(crate) fn refused(
        version: ProtocolVersion,
        reason: ReasonCode,
        rs: Option<String>,
    ) -> Error {
        let code = if version.is_v5() {
            reason.0
        } else {
            reason.to_v3_connack()
        };
        Error::ConnectionRefused {
            reason,
            code,
            reason_string: rs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_read_as_sentences() {
        let e = Error::refused(ProtocolVersion::V311, ReasonCode::NOT_AUTHORIZED, None);
        assert_eq!(e.to_string(), "connection refused: not authorized");
        assert_eq!(e.connack_code(), Some(5));
        let e = Error::refused(
            ProtocolVersion::V5,
            ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            Some("unknown user".into()),
        );
        assert_eq!(
            e.to_string(),
            "connection refused: bad user name or password (unknown user)"
        );
        assert_eq!(e.connack_code(), Some(0x86));
    }
}
