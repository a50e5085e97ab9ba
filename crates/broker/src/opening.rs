//! Opening an accepted connection, in the connection's own task, layer by layer: the PROXY
//! protocol header (`proxy_protocol = true`; before TLS, as load balancers send it), the TLS
//! handshake (`mqtts`, `wss`), the WebSocket upgrade (`ws`, `wss`). Each step has a time
//! limit. What comes out is the [`Stream`] MQTT runs on and the client's address: the
//! socket's peer, or the one a trusted proxy named (PROXY header, `X-Forwarded-For`). That
//! address is the one admission, authentication and the logs see.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::AlertDescription;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::config::{ListenerConfig, WebSocketSettings};
use crate::proxy_protocol::{self, Header, Parsed};
use crate::stream::Stream;
use crate::{forwarded, websocket};

/// Longest a client may take to complete the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a proxy may take to send its PROXY protocol header.
pub const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A listener says at most once in this time that a client refused its certificate.
const REFUSED_CERT_WARN_EVERY: Duration = Duration::from_secs(60);

/// What a listener does with its connections before MQTT starts.
#[derive(Debug)]
pub struct Front {
    url: String,
    proxy_protocol: bool,
    websocket: Option<WebSocketSettings>,
    /// A connection came without a PROXY header: said once, at warn.
    warned_missing_header: AtomicBool,
    /// When (unix seconds) a client's refusal of the certificate was last said, at warn.
    warned_refused_cert: AtomicU64,
}

impl Front {
    pub(crate) fn new(cfg: &ListenerConfig) -> Front {
        Front {
            url: cfg.url.clone(),
            proxy_protocol: cfg.proxy_protocol,
            websocket: cfg.websocket.clone(),
            warned_missing_header: AtomicBool::new(false),
            warned_refused_cert: AtomicU64::new(0),
        }
    }

    /// A client that ends the handshake with a certificate alert refused our certificate:
    /// that is a configuration problem the user must see (an incomplete chain, the wrong CA),
    /// unlike the many other ways handshakes fail (scanners, clients giving up), which stay
    /// at debug. Said at warn, at most once a minute per listener.
    fn note_handshake_error(&self, e: &io::Error, peer: SocketAddr) {
        let Some(rustls::Error::AlertReceived(alert)) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return;
        };
        if !matches!(
            alert,
            AlertDescription::UnknownCA
                | AlertDescription::BadCertificate
                | AlertDescription::CertificateUnknown
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateRevoked
                | AlertDescription::UnsupportedCertificate
        ) {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.warned_refused_cert.load(Ordering::Relaxed);
        if now < last.saturating_add(REFUSED_CERT_WARN_EVERY.as_secs())
            || self
                .warned_refused_cert
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        tracing::warn!(
            "a TLS client at {peer} refused the certificate of listener \"{}\" ({alert:?}): \
             check that its certificate file holds the intermediate CA certificate(s) after \
             the server certificate and that clients trust its root CA (said at most once a \
             minute)",
            self.url
        );
    }
}

/// A TCP connection accepted by a [`Listener`](crate::listener::Listener), not yet opened.
pub struct Accepted {
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    front: Arc<Front>,
}

impl fmt::Debug for Accepted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Accepted")
            .field("peer", &self.peer)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Accepted {
    pub(crate) fn new(
        tcp: TcpStream,
        peer: SocketAddr,
        tls: Option<TlsAcceptor>,
        front: Arc<Front>,
    ) -> Accepted {
        Accepted {
            tcp,
            peer,
            tls,
            front,
        }
    }

    /// The address of the socket's other end (a proxy, for proxied connections).
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Reads the PROXY header, runs the TLS handshake and the WebSocket upgrade, as the
    /// listener's kind and settings say; returns the stream and the client's address (see the
    /// module documentation). WebSocket messages are limited to `max_message` bytes. Each
    /// error says what failed, for a log line; the connection is then closed.
    pub async fn open(self, max_message: u32) -> io::Result<(Stream, SocketAddr)> {
        let Accepted {
            mut tcp,
            mut peer,
            tls,
            front,
        } = self;
        if front.proxy_protocol {
            peer = match tokio::time::timeout(PROXY_HEADER_TIMEOUT, read_proxy_header(&mut tcp))
                .await
            {
                Ok(Ok(Ok(Header::Proxied { source, .. }))) => {
                    tracing::debug!(client = %source, proxy = %peer, "PROXY header");
                    source
                }
                Ok(Ok(Ok(Header::Local))) => peer,
                Ok(Ok(Err(e))) => {
                    if e == proxy_protocol::Error::Missing
                        && !front.warned_missing_header.swap(true, Ordering::Relaxed)
                    {
                        tracing::warn!(
                            "listener \"{}\" expects a PROXY protocol header (proxy_protocol = \
                             true) and a connection from {peer} came without one; such \
                             connections are refused: make the load balancer send the header \
                             or remove proxy_protocol (said once)",
                            front.url
                        );
                    }
                    return Err(invalid(format!("from {peer}: {e}")));
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(timed_out(format!(
                        "no PROXY header from {peer} within {} s",
                        PROXY_HEADER_TIMEOUT.as_secs()
                    )))
                }
            };
        }
        let stream = match tls {
            None => Stream::Tcp(tcp),
            Some(acceptor) => {
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => Stream::Tls(Box::new(tls)),
                    Ok(Err(e)) => {
                        front.note_handshake_error(&e, peer);
                        return Err(e);
                    }
                    Err(_) => {
                        return Err(timed_out(format!(
                            "TLS handshake with {peer} took longer than {} s",
                            TLS_HANDSHAKE_TIMEOUT.as_secs()
                        )))
                    }
                }
            }
        };
        let Some(ws) = &front.websocket else {
            return Ok((stream, peer));
        };
        let upgrade = websocket::accept(stream, ws.path.as_deref(), u64::from(max_message));
        let (ws_stream, forwarded_for) =
            match tokio::time::timeout(websocket::HANDSHAKE_TIMEOUT, upgrade).await {
                Ok(Ok(upgraded)) => upgraded,
                Ok(Err(reason)) => return Err(invalid(format!("from {peer}: {reason}"))),
                Err(_) => {
                    return Err(timed_out(format!(
                        "WebSocket handshake with {peer} took longer than {} s",
                        websocket::HANDSHAKE_TIMEOUT.as_secs()
                    )))
                }
            };
        let client = forwarded::client_address(peer.ip(), &forwarded_for, &ws.trusted_proxies);
        if client != peer.ip() {
            tracing::debug!(%client, proxy = %peer, "X-Forwarded-For");
            // The client's port is not known: 0.
            peer = SocketAddr::new(client, 0);
        }
        Ok((Stream::Ws(Box::new(ws_stream)), peer))
    }
}

/// Reads a PROXY header, exactly: not one byte of what follows it.
async fn read_proxy_header(
    tcp: &mut TcpStream,
) -> io::Result<Result<Header, proxy_protocol::Error>> {
    let mut buf = Vec::new();
    loop {
        let need = match proxy_protocol::parse(&buf) {
            Ok(Parsed::Done { header, .. }) => return Ok(Ok(header)),
            Ok(Parsed::Incomplete { need }) => need,
            Err(e) => return Ok(Err(e)),
        };
        let have = buf.len();
        buf.resize(have + need, 0);
        let n = match buf.get_mut(have..) {
            Some(room) => tcp.read(room).await?,
            None => 0,
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in the PROXY header",
            ));
        }
        buf.truncate(have + n);
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn timed_out(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, msg)
}
