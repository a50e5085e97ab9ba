//! Listener URLs: `mqtt://HOST:PORT`, `mqtts://HOST:PORT`, `ws://HOST:PORT/PATH` and
//! `wss://HOST:PORT/PATH`; `http://HOST:PORT` and `https://HOST:PORT` for metrics and health.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

use serde::de::{self, Deserializer, SeqAccess, Visitor};

use super::messages::io_reason;
use super::{ConfigError, ListenerKind};

/// The WebSocket path served when a `ws://` or `wss://` URL names none.
pub const DEFAULT_WEBSOCKET_PATH: &str = "/mqtt";
/// The WebSocket path that serves every path (as Mosquitto does).
pub const ANY_WEBSOCKET_PATH: &str = "/*";

/// Parses `mqtt://HOST:PORT` / `mqtts://HOST:PORT` / `http://HOST:PORT` / `https://HOST:PORT`
/// (port optional: 1883 / 8883 / 9883 / 9884; IPv6 hosts in brackets), or `ws://` / `wss://`
/// with an optional path, and resolves the host.
pub fn parse_listen_url(url: &str) -> Result<(ListenerKind, SocketAddr), ConfigError> {
    parse_listen_url_with_path(url).map(|(kind, addr, _)| (kind, addr))
}

/// [`parse_listen_url`], with the WebSocket path of `ws://` and `wss://` URLs
/// ([`DEFAULT_WEBSOCKET_PATH`] when the URL has none).
pub fn parse_listen_url_with_path(
    url: &str,
) -> Result<(ListenerKind, SocketAddr, Option<String>), ConfigError> {
    let bad = |msg: String| Err(ConfigError::Listener(msg));
    let Some((scheme, rest)) = url.split_once("://") else {
        return bad(format!(
            "listener URL \"{url}\" has no scheme; write it as mqtt://{url} (or mqtts://{url} \
             for TLS)"
        ));
    };
    let kind = match scheme.to_ascii_lowercase().as_str() {
        "mqtt" => ListenerKind::Mqtt,
        "mqtts" => ListenerKind::Mqtts,
        "ws" => ListenerKind::Ws,
        "wss" => ListenerKind::Wss,
        "http" => ListenerKind::Http,
        "https" => ListenerKind::Https,
        _ => {
            return bad(format!(
                "listener URL \"{url}\" has an unknown scheme \"{scheme}\"; use mqtt://HOST:PORT, \
                 mqtts://HOST:PORT, ws://HOST:PORT/mqtt or wss://HOST:PORT/mqtt"
            ))
        }
    };
    let (rest, path) = match kind {
        ListenerKind::Ws | ListenerKind::Wss => websocket_path(url, rest)?,
        _ => (rest, None),
    };
    let hostport = rest.strip_suffix('/').unwrap_or(rest);
    if hostport.contains('/') || hostport.contains('?') || hostport.contains('#') {
        return bad(format!(
            "listener URL \"{url}\" has a path; write only {scheme}://HOST:PORT"
        ));
    }
    if hostport.contains('@') {
        return bad(format!(
            "listener URL \"{url}\" contains user information; write only {scheme}://HOST:PORT"
        ));
    }
    let (host, port) = split_host_port(hostport).map_err(|why| {
        ConfigError::Listener(format!(
            "listener URL \"{url}\" {why}; use {scheme}://HOST:PORT, e.g. {scheme}://0.0.0.0:{}",
            kind.default_port()
        ))
    })?;
    let port = port.unwrap_or(kind.default_port());
    if host.is_empty() {
        return bad(format!(
            "listener URL \"{url}\" has no host; use {scheme}://0.0.0.0:{port} to listen on every \
             interface or {scheme}://127.0.0.1:{port} for this machine only"
        ));
    }
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok((kind, SocketAddr::new(ip, port), path));
    }
    let resolved = (host, port).to_socket_addrs().map_err(|e| {
        ConfigError::Listener(format!(
            "listener URL \"{url}\": cannot resolve host \"{host}\" ({}); use an IP address such \
             as 0.0.0.0 or 127.0.0.1",
            io_reason(&e)
        ))
    })?;
    let addrs: Vec<SocketAddr> = resolved.collect();
    // Prefer IPv4 (what `localhost` means to most MQTT clients), else the first address.
    match addrs.iter().find(|a| a.is_ipv4()).or_else(|| addrs.first()) {
        Some(addr) => Ok((kind, *addr, path)),
        None => bad(format!(
            "listener URL \"{url}\": host \"{host}\" has no address; use an IP address such as \
             0.0.0.0 or 127.0.0.1"
        )),
    }
}

/// Splits `HOST:PORT/PATH` into `HOST:PORT` and the path (default `/mqtt`), which must be
/// printable ASCII without query or fragment.
fn websocket_path<'a>(url: &str, rest: &'a str) -> Result<(&'a str, Option<String>), ConfigError> {
    let Some(at) = rest.find('/') else {
        return Ok((rest, Some(DEFAULT_WEBSOCKET_PATH.to_string())));
    };
    let (hostport, path) = rest.split_at(at);
    if !path.bytes().all(|b| b.is_ascii_graphic()) || path.contains(['?', '#']) {
        return Err(ConfigError::Listener(format!(
            "listener URL \"{url}\" has the path \"{path}\", which has a query, a fragment, \
             spaces or non-ASCII characters; write a plain path such as /mqtt"
        )));
    }
    Ok((hostport, Some(path.to_string())))
}

/// Splits `host:port`, `[v6]:port`, `host` or `[v6]`; the error completes "listener URL ... ".
fn split_host_port(s: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err("has an IPv6 address without its closing \"]\"".to_string());
        };
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(format!("has \"{after}\" after the IPv6 address")),
            },
        }
    } else {
        match s.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err("has an IPv6 address that is not in brackets".to_string())
            }
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) => Some(n),
            Err(_) => return Err(format!("has an invalid port \"{p}\" (use 0 to 65535)")),
        },
    };
    Ok((host, port))
}

/// `listen` accepts a list of URLs or one URL.
pub(super) fn de_listen<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    struct ListenVisitor;
    impl<'de> Visitor<'de> for ListenVisitor {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of listener URLs")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(vec![v.to_string()])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(url) = seq.next_element::<String>()? {
                out.push(url);
            }
            Ok(out)
        }
    }
    d.deserialize_any(ListenVisitor).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_host_port_forms() {
        assert_eq!(split_host_port("a:1"), Ok(("a", Some(1))));
        assert_eq!(split_host_port("a"), Ok(("a", None)));
        assert_eq!(split_host_port("[::1]:2"), Ok(("::1", Some(2))));
        assert_eq!(split_host_port("[::]"), Ok(("::", None)));
        assert!(split_host_port("::1:2").is_err());
        assert!(split_host_port("a:99999").is_err());
    }
}
