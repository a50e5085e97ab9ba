//! The log of who comes and goes: one `info` line on [`CLIENTS_TARGET`] when a client is
//! connected (its CONNACK goes out), one when it is refused, and one when a connected client
//! goes, with the reason. Each carries the client id, the remote address, the protocol
//! version, the transport and the username as structured fields (JSON logs get them as
//! fields). Nothing here runs per packet.

use std::net::SocketAddr;

use makelaar_core::conn::Violation;
use makelaar_core::CloseReason;
use makelaar_proto::{ConnAck, ProtocolVersion, ReasonCode};

/// The tracing target of the lines about clients connecting and leaving (`info`).
pub const CLIENTS_TARGET: &str = "makelaar::clients";

/// Who a connection serves, kept (boxed, in the connection task) only while these lines are
/// logged: a quiet broker spends no memory per connection on it.
pub(super) struct Who {
    pub client_id: String,
    pub username: Option<String>,
    pub transport: &'static str,
    /// The client set the bridge bit (another broker's bridge, e.g. Mosquitto's
    /// `try_private`).
    pub bridge: bool,
    /// The CONNACK went out: a line says so, and one will say when it goes.
    pub connected: bool,
}

impl Who {
    /// `Some` when the lines are logged.
    pub(super) fn new(
        client_id: &str,
        username: Option<&str>,
        transport: &'static str,
        bridge: bool,
    ) -> Option<Box<Who>> {
        tracing::enabled!(target: CLIENTS_TARGET, tracing::Level::INFO).then(|| {
            Box::new(Who {
                client_id: client_id.to_string(),
                username: username.map(str::to_string),
                transport,
                bridge,
                connected: false,
            })
        })
    }
}

/// The name of a protocol version, as people write it.
pub(super) fn protocol_name(v: ProtocolVersion) -> &'static str {
    match v {
        ProtocolVersion::V31 => "3.1",
        ProtocolVersion::V311 => "3.1.1",
        ProtocolVersion::V5 => "5.0",
    }
}

/// The CONNACK accepting the client goes out.
pub(super) fn connected(who: &mut Who, peer: SocketAddr, version: ProtocolVersion, ack: &ConnAck) {
    who.connected = true;
    // A 5.0 client that gave no id learns the one assigned in the CONNACK.
    if let Some(id) = &ack.properties.assigned_client_identifier {
        who.client_id.clone_from(id);
    }
    tracing::info!(
        target: CLIENTS_TARGET,
        client_id = who.client_id.as_str(),
        %peer,
        protocol = protocol_name(version),
        transport = who.transport,
        // An `Option` field is left out when `None`.
        username = who.username.as_deref(),
        session_present = ack.session_present,
        // Only for bridges: `bridge=true`.
        bridge = who.bridge.then_some(true),
        "client connected"
    );
}

/// A CONNECT is answered with a refusing CONNACK. `version` is `None` when the protocol
/// version itself was refused.
pub(super) fn refused(
    (client_id, username): (&str, Option<&str>),
    peer: SocketAddr,
    version: Option<ProtocolVersion>,
    transport: &'static str,
    reason: ReasonCode,
) {
    tracing::info!(
        target: CLIENTS_TARGET,
        client_id,
        %peer,
        protocol = version.map_or("unsupported", protocol_name),
        transport,
        username,
        reason = reason.name(),
        reason_code = %Hex(reason),
        "client refused"
    );
}

/// How a connection ended, for its last line.
pub(super) enum Ending<'a> {
    /// The broker closed it for this reason.
    Closed(CloseReason),
    /// The socket ended (`error` is `None` for an orderly end of stream) or failed.
    Lost(Option<&'a std::io::Error>),
    /// The client broke the protocol (or was silent too long).
    Violation(&'a Violation),
}

/// A connected client is gone.
pub(super) fn disconnected(who: &Who, peer: SocketAddr, version: ProtocolVersion, how: Ending) {
    if !who.connected {
        return;
    }
    let (reason, code, detail) = describe(&how);
    tracing::info!(
        target: CLIENTS_TARGET,
        client_id = who.client_id.as_str(),
        %peer,
        protocol = protocol_name(version),
        transport = who.transport,
        username = who.username.as_deref(),
        reason,
        reason_code = code.map(|c| tracing::field::display(Hex(c))),
        detail = detail.as_deref(),
        "client disconnected"
    );
}

/// The reason in words, the MQTT reason code if there is one, and a detail if there is one.
fn describe(how: &Ending) -> (&'static str, Option<ReasonCode>, Option<String>) {
    match how {
        Ending::Closed(CloseReason::ClientDisconnect(code)) => {
            let name = match *code {
                ReasonCode::NORMAL_DISCONNECTION => "normal disconnection",
                other => other.name(),
            };
            ("client DISCONNECT", Some(*code), Some(name.to_string()))
        }
        Ending::Closed(CloseReason::Server(code)) => (
            server_reason(*code),
            Some(*code),
            Some(code.name().to_string()),
        ),
        Ending::Violation(v) => (
            server_reason(v.reason()),
            Some(v.reason()),
            Some(v.text().to_string()),
        ),
        Ending::Lost(None) => (
            "connection closed by the client without DISCONNECT",
            None,
            None,
        ),
        Ending::Lost(Some(e)) => ("socket error", None, Some(crate::config::io_reason(e))),
    }
}

/// A reason code as MQTT writes it: `0x8D`.
struct Hex(ReasonCode);

impl std::fmt::Display for Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "0x{:02X}", self.0 .0)
    }
}

/// Why the broker ended a connection, from the reason code it ended it with.
fn server_reason(code: ReasonCode) -> &'static str {
    match code {
        ReasonCode::KEEP_ALIVE_TIMEOUT => "keep-alive timeout",
        ReasonCode::SESSION_TAKEN_OVER => "taken over by another connection",
        ReasonCode::SERVER_SHUTTING_DOWN => "broker shutdown",
        ReasonCode::ADMINISTRATIVE_ACTION => "kicked by an administrator",
        ReasonCode::MESSAGE_RATE_TOO_HIGH => "publish rate too high",
        _ => "protocol error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_in_words() {
        let keep_alive = Violation::KeepAliveTimeout;
        assert_eq!(
            describe(&Ending::Violation(&keep_alive)).0,
            "keep-alive timeout"
        );
        let taken = Ending::Closed(CloseReason::Server(ReasonCode::SESSION_TAKEN_OVER));
        assert_eq!(describe(&taken).0, "taken over by another connection");
        let bye = Ending::Closed(CloseReason::ClientDisconnect(ReasonCode::SUCCESS));
        assert_eq!(describe(&bye).0, "client DISCONNECT");
        let malformed = Violation::Malformed;
        let (reason, code, _) = describe(&Ending::Violation(&malformed));
        assert_eq!(
            (reason, code),
            ("protocol error", Some(ReasonCode::MALFORMED_PACKET))
        );
        assert_eq!(protocol_name(ProtocolVersion::V311), "3.1.1");
    }
}
