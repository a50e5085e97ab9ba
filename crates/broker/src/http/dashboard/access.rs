//! Who may use the dashboard.
//!
//! - With a password file on the HTTP listener (its own `password_file`, or the top-level
//!   one): HTTP Basic credentials, checked as MQTT logins are (`auth::Authenticator`: hashed
//!   off the async workers, failures from one address slowed down), and the user must be one
//!   of `[dashboard] admin_users`. No credentials or wrong ones: 401 with `WWW-Authenticate`;
//!   a valid user without the admin role: 403. A login that succeeded is remembered for a
//!   while (`login_cache`), so the page's requests do not each cost a password hash.
//! - Without one: open, but only to clients on this machine (loopback addresses) unless
//!   `allow_remote_without_password`; and the `Host` header must be an IP address or
//!   `localhost`, so that a web page whose name is made to resolve to 127.0.0.1 (DNS
//!   rebinding) cannot read the dashboard or act on it.
//!
//! Requests that change something (disconnect) must also carry the `X-Makelaar-Dashboard`
//! header: a browser sends a custom header cross-origin only after a CORS preflight, which is
//! never granted, so another site cannot make a logged-in browser disconnect clients (CSRF);
//! an `Origin` header, when sent, must name this host.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use base64::Engine as _;
use bytes::Bytes;
use hyper::header::{HeaderValue, AUTHORIZATION, HOST, ORIGIN, WWW_AUTHENTICATE};
use hyper::{HeaderMap, Response, StatusCode};

use super::Dashboard;
use crate::auth::Login;
use crate::http::response::{text, Body};

/// The header a state-changing request must carry (any value).
pub(crate) const CSRF_HEADER: &str = "x-makelaar-dashboard";
/// The realm browsers show in their login prompt.
const REALM: &str = "Basic realm=\"Makelaar dashboard\", charset=\"UTF-8\"";

/// Decides whether the request may go on: `None`, or the answer to send instead.
pub(crate) async fn check(
    dash: &Dashboard,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Option<Response<Body>> {
    let Some(path) = dash.password_file.as_deref() else {
        return open_access(dash, peer, headers);
    };
    let Some((user, password)) = basic_credentials(headers) else {
        return Some(unauthorized(
            "log in with a user of the broker's password file",
        ));
    };
    let header = headers
        .get(AUTHORIZATION)
        .map_or(&b""[..], |h| h.as_bytes());
    let generation = dash.auth.generation();
    let admin = dash.config.admin_users.contains(&user);
    if admin && dash.logins.knows(header, generation, Instant::now()) {
        return None;
    }
    let login = dash
        .auth
        .check_password(path, peer.ip(), &user, Some(password))
        .await;
    match login {
        Login::Accepted if admin => {
            dash.logins.remember(header, generation, Instant::now());
            None
        }
        Login::Accepted => {
            tracing::info!(%peer, %user, "dashboard refused: the user does not have the admin role");
            Some(text(
                StatusCode::FORBIDDEN,
                format!(
                    "user \"{user}\" may not use the dashboard: add it to admin_users in the \
                     [dashboard] section of the configuration\n"
                ),
            ))
        }
        Login::Refused(_) => {
            tracing::debug!(%peer, "dashboard login failed: unknown user or wrong password");
            Some(unauthorized("unknown user or wrong password"))
        }
        Login::Throttled => Some(text(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed logins from this address: wait a little and try again\n",
        )),
        Login::Unavailable => Some(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the password file is not loaded\n",
        )),
    }
}

/// Without a password file: loopback clients only (unless configured otherwise), and a
/// `Host` that cannot be a rebound name.
fn open_access(dash: &Dashboard, peer: SocketAddr, headers: &HeaderMap) -> Option<Response<Body>> {
    if !dash.config.allow_remote_without_password && !is_loopback(peer.ip()) {
        return Some(text(
            StatusCode::FORBIDDEN,
            "the dashboard has no password file, so it only answers this machine: configure \
             password_file and admin_users, or set allow_remote_without_password in [dashboard]\n",
        ));
    }
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !host_is_safe(host) {
        return Some(text(
            StatusCode::FORBIDDEN,
            "without a password file the dashboard must be opened by IP address or as \
             localhost (for example http://127.0.0.1:9883/)\n",
        ));
    }
    None
}

fn unauthorized(why: &str) -> Response<Body> {
    let mut resp = text(
        StatusCode::UNAUTHORIZED,
        format!("{why}: the dashboard needs a user with the admin role\n"),
    );
    resp.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(REALM));
    resp
}

/// The user and password of an `Authorization: Basic` header.
pub(crate) fn basic_credentials(headers: &HeaderMap) -> Option<(String, Bytes)> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let (user, password) = decoded.split_at(colon);
    let user = String::from_utf8(user.to_vec()).ok()?;
    let password = Bytes::copy_from_slice(password.get(1..)?);
    Some((user, password))
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Whether a `Host` header names an IP address or `localhost` (with or without a port).
pub(crate) fn host_is_safe(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // [v6]:port
        Some(rest) => match rest.split_once(']') {
            Some((v6, _)) => return v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

/// Whether a state-changing request came from the dashboard's own page: it carries the custom
/// header, and its `Origin`, if any, is this host.
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    if !headers.contains_key(CSRF_HEADER) {
        return false;
    }
    let Some(origin) = headers.get(ORIGIN) else {
        return true; // not a browser's cross-origin request, or an old browser's same-origin
    };
    let host = headers.get(HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, h)| h);
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn basic_credentials_are_decoded() {
        // "alice:s3cr:et" — the password may contain colons.
        let h = headers(&[("authorization", "Basic YWxpY2U6czNjcjpldA==")]);
        let (user, pw) = basic_credentials(&h).unwrap();
        assert_eq!(user, "alice");
        assert_eq!(&pw[..], b"s3cr:et");
        assert!(basic_credentials(&headers(&[("authorization", "Bearer x")])).is_none());
        assert!(basic_credentials(&headers(&[("authorization", "Basic !!!")])).is_none());
        // No colon: not credentials.
        assert!(basic_credentials(&headers(&[("authorization", "Basic YWxpY2U=")])).is_none());
        assert!(basic_credentials(&HeaderMap::new()).is_none());
    }

    #[test]
    fn only_addresses_and_localhost_are_safe_hosts() {
        for ok in [
            "127.0.0.1:9883",
            "127.0.0.1",
            "localhost:80",
            "LOCALHOST",
            "[::1]:9883",
            "10.1.2.3",
        ] {
            assert!(host_is_safe(ok), "{ok}");
        }
        for bad in [
            "evil.example:9883",
            "evil.example",
            "",
            "[::1",
            "127.0.0.1.evil.example",
            "localhost.evil",
        ] {
            assert!(!host_is_safe(bad), "{bad}");
        }
    }

    #[test]
    fn state_changes_need_the_header_and_a_matching_origin() {
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:9883")])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:9883"),
            (CSRF_HEADER, "1")
        ])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:9883"),
            (CSRF_HEADER, "1"),
            ("origin", "http://127.0.0.1:9883"),
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:9883"),
            (CSRF_HEADER, "1"),
            ("origin", "http://evil.example"),
        ])));
    }
}
