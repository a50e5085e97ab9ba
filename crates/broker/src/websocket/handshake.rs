//! The WebSocket opening handshake (RFC 6455 section 4.2), sans-IO: the client's HTTP
//! upgrade request in, the server's answer out.
//!
//! - The request must be `GET` over HTTP/1.1 with `Upgrade: websocket`, `Connection:
//!   Upgrade`, `Sec-WebSocket-Version: 13` and a `Sec-WebSocket-Key` of 16 bytes.
//! - Its path must be the listener's (the query string is ignored), else 404.
//! - The client must offer the subprotocol `mqtt` [MQTT-6.0.0-3] (or `mqttv3.1`, which MQTT
//!   3.1 clients offer); the server answers with the one chosen [MQTT-6.0.0-4]. A client
//!   offering neither gets 400: it does not speak MQTT over WebSocket as the specification
//!   defines it, and a server may not name a subprotocol the client did not offer.
//! - No extension (such as permessage-deflate) is agreed.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use base64::Engine;
use sha1::{Digest, Sha1};

/// The longest request accepted (request line and headers), in bytes.
pub const MAX_REQUEST: usize = 8192;
/// The most header lines a request may have.
const MAX_HEADERS: usize = 64;
/// RFC 6455 section 1.3.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// The subprotocols accepted, in the server's order of preference.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// What to do with the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The request is not complete yet: read more.
    Incomplete,
    /// Switch to WebSocket: send `response`; the request was `len` bytes long (what follows
    /// is the first frames).
    Upgrade {
        response: Vec<u8>,
        len: usize,
        /// The chosen subprotocol.
        subprotocol: &'static str,
        /// The `X-Forwarded-For` headers' values, joined with commas (empty without any).
        forwarded_for: String,
    },
    /// Refuse: send `response` (an HTTP error) and close; `reason` is for the log.
    Refuse { response: Vec<u8>, reason: String },
}

/// Looks at the bytes received so far. `path` is the only path served; `None` serves any.
pub fn respond(buf: &[u8], path: Option<&str>) -> Outcome {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST => return Outcome::Incomplete,
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            return refuse(
                431,
                "Request Header Fields Too Large",
                &[],
                format!("the request is longer than {MAX_REQUEST} bytes or has more than {MAX_HEADERS} headers"),
            )
        }
        Err(e) => return refuse(400, "Bad Request", &[], format!("not an HTTP request ({e})")),
    };
    if len > MAX_REQUEST {
        return refuse(
            431,
            "Request Header Fields Too Large",
            &[],
            format!("the request is longer than {MAX_REQUEST} bytes"),
        );
    }
    let header = |name: &'static str| {
        req.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
    };
    let tokens = |name: &'static str| header(name).flat_map(|v| v.split(',')).map(str::trim);
    let has_token =
        |name: &'static str, token: &str| tokens(name).any(|t| t.eq_ignore_ascii_case(token));

    let target = req.path.unwrap_or("/");
    let requested = target.split(['?', '#']).next().unwrap_or(target);
    if let Some(served) = path {
        if requested != served {
            return refuse(
                404,
                "Not Found",
                &[],
                format!("path {requested:?}: MQTT over WebSocket is served at {served}"),
            );
        }
    }
    if req.method != Some("GET") {
        return refuse(
            405,
            "Method Not Allowed",
            &["Allow: GET"],
            "a WebSocket handshake is a GET request".to_string(),
        );
    }
    if req.version != Some(1) {
        return refuse(
            400,
            "Bad Request",
            &[],
            "a WebSocket handshake needs HTTP/1.1".to_string(),
        );
    }
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return refuse(
            426,
            "Upgrade Required",
            &["Upgrade: websocket", "Connection: Upgrade"],
            "this is an MQTT over WebSocket endpoint: connect with a WebSocket client".to_string(),
        );
    }
    if !header("sec-websocket-version").any(|v| v.trim() == "13") {
        return refuse(
            426,
            "Upgrade Required",
            &["Sec-WebSocket-Version: 13"],
            "only WebSocket version 13 (RFC 6455) is supported".to_string(),
        );
    }
    let key = header("sec-websocket-key")
        .next()
        .map(str::trim)
        .unwrap_or("");
    let key_ok = base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|k| k.len() == 16);
    if !key_ok {
        return refuse(
            400,
            "Bad Request",
            &[],
            "Sec-WebSocket-Key is missing or not 16 bytes in base64".to_string(),
        );
    }
    // [MQTT-6.0.0-3] the client offers "mqtt"; [MQTT-6.0.0-4] the server answers with it.
    let chosen = SUBPROTOCOLS
        .into_iter()
        .find(|p| tokens("sec-websocket-protocol").any(|t| t == *p));
    let Some(subprotocol) = chosen else {
        let offered: Vec<&str> = tokens("sec-websocket-protocol").collect();
        return refuse(
            400,
            "Bad Request",
            &[],
            format!(
                "the client offered the subprotocols {offered:?}: MQTT over WebSocket needs \"mqtt\" [MQTT-6.0.0-3]"
            ),
        );
    };
    let forwarded_for = header("x-forwarded-for").collect::<Vec<_>>().join(",");
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: {subprotocol}\r\n\r\n",
        accept_key(key)
    );
    Outcome::Upgrade {
        response: response.into_bytes(),
        len,
        subprotocol,
        forwarded_for,
    }
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(ACCEPT_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

fn refuse(status: u16, text: &str, headers: &[&str], reason: String) -> Outcome {
    let body = format!("{reason}\n");
    let mut response = format!(
        "HTTP/1.1 {status} {text}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for h in headers {
        response.push_str(h);
        response.push_str("\r\n");
    }
    response.push_str("\r\n");
    response.push_str(&body);
    Outcome::Refuse {
        response: response.into_bytes(),
        reason: format!("{status} {text}: {reason}"),
    }
}

#[cfg(test)]
mod tests;
