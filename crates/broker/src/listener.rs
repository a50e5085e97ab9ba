//! Listeners: bind the configured addresses, accept TCP connections, and (for `mqtts://`) run
//! the TLS handshake outside the accept loop.
//!
//! The intended accept loop:
//! ```ignore
//! loop {
//!     match listener.accept().await {
//!         Ok((accepted, peer)) => {
//!             tokio::spawn(async move {
//!                 let stream = match accepted.handshake().await { Ok(s) => s, Err(_) => return };
//!                 // ... run the connection on `stream` ...
//!             });
//!         }
//!         // Out of file descriptors and the like: back off instead of spinning.
//!         Err(_) => tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await,
//!     }
//! }
//! ```

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::config::{io_reason, ConfigError, ListenerConfig, ListenerKind, TlsSettings};

/// Longest a client may take to complete the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the accept loop should pause after [`Listener::accept`] fails (e.g. out of file
/// descriptors), so the error does not turn into a busy loop.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// The tracing target of the broker's few status lines (listening, stopping). The CLI shows
/// this target at `info` even when everything else is at `warn`.
pub const STATUS_TARGET: &str = "makelaar::status";

/// A connection's byte stream: plain TCP or TLS over TCP.
#[derive(Debug)]
pub enum Stream {
    /// `mqtt://`.
    Tcp(TcpStream),
    /// `mqtts://`, after a completed handshake.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Stream {
    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// What carries MQTT here, as the connection log names it.
    pub fn transport(&self) -> &'static str {
        match self {
            Stream::Tcp(_) => "tcp",
            Stream::Tls(_) => "tls",
        }
    }

    /// The client's certificate chain (end entity first), when it presented one over TLS.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        match self {
            Stream::Tcp(_) => None,
            Stream::Tls(tls) => tls.get_ref().1.peer_certificates(),
        }
    }

    /// The underlying TCP socket.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Tcp(tcp) => tcp,
            Stream::Tls(tls) => tls.get_ref().0,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The TLS configuration of one listener, which a reload can replace while the listener
/// runs: connections accepted afterwards use the new certificates, those already open keep
/// theirs.
pub struct TlsSlot {
    url: String,
    settings: TlsSettings,
    acceptor: RwLock<TlsAcceptor>,
}

impl TlsSlot {
    fn new(url: &str, settings: &TlsSettings) -> Result<TlsSlot, ConfigError> {
        let acceptor = TlsAcceptor::from(crate::tls::server_config(settings)?);
        Ok(TlsSlot {
            url: url.to_string(),
            settings: settings.clone(),
            acceptor: RwLock::new(acceptor),
        })
    }

    fn current(&self) -> TlsAcceptor {
        self.acceptor
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the certificate, key, CA bundle and CRLs again; on any error the ones in use
    /// stay.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let fresh = TlsAcceptor::from(crate::tls::server_config(&self.settings)?);
        *self.acceptor.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// The listener's URL, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// A bound listening socket.
pub struct Listener {
    tcp: TcpListener,
    url: String,
    kind: ListenerKind,
    local_addr: SocketAddr,
    tls: Option<Arc<TlsSlot>>,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("url", &self.url)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// Loads the listener's certificates (for `mqtts`) and binds its address. Every problem is
    /// a [`ConfigError`] sentence: unreadable certificate, port in use, permission denied, ...
    /// On success it logs "makelaar VERSION listening on URL" at info on [`STATUS_TARGET`].
    pub async fn bind(cfg: &ListenerConfig) -> Result<Listener, ConfigError> {
        let tls = match (&cfg.kind, &cfg.tls) {
            (ListenerKind::Mqtt, _) => None,
            (ListenerKind::Mqtts, Some(settings)) => {
                Some(Arc::new(TlsSlot::new(&cfg.url, settings)?))
            }
            (ListenerKind::Mqtts, None) => {
                return Err(ConfigError::Invalid(format!(
                    "listener \"{}\" needs a certificate: pass --cert FILE and --key FILE (PEM), \
                     or set cert and key in the config file",
                    cfg.url
                )))
            }
        };
        let tcp = TcpListener::bind(cfg.addr)
            .await
            .map_err(|e| bind_error(cfg, &e))?;
        let local_addr = tcp.local_addr().map_err(|e| bind_error(cfg, &e))?;
        tracing::info!(
            target: STATUS_TARGET,
            "makelaar {} listening on {}://{}",
            env!("CARGO_PKG_VERSION"),
            cfg.kind.scheme(),
            local_addr
        );
        Ok(Listener {
            tcp,
            url: cfg.url.clone(),
            kind: cfg.kind,
            local_addr,
            tls,
        })
    }

    /// The bound address (with the real port when the configuration asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The listener's URL as configured.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Plain or TLS.
    pub fn kind(&self) -> ListenerKind {
        self.kind
    }

    /// The reloadable TLS configuration of a TLS listener.
    pub fn tls_slot(&self) -> Option<Arc<TlsSlot>> {
        self.tls.clone()
    }

    /// Accepts the next TCP connection and sets TCP_NODELAY on it. The TLS handshake is not
    /// done here, so a slow client cannot hold up the accept loop: call
    /// [`Accepted::handshake`] in the connection's own task.
    ///
    /// Errors that concern only the one connection (reset or aborted before it was accepted)
    /// are skipped. The errors returned are about the listener or the process, such as running
    /// out of file descriptors (EMFILE): they repeat immediately if accept is called again, so
    /// the caller must pause (see [`ACCEPT_ERROR_BACKOFF`]) before the next call.
    pub async fn accept(&self) -> io::Result<(Accepted, SocketAddr)> {
        loop {
            match self.tcp.accept().await {
                Ok((tcp, peer)) => {
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!("cannot set TCP_NODELAY for {peer}: {e}");
                    }
                    let accepted = Accepted {
                        tcp,
                        peer,
                        tls: self.tls.as_ref().map(|t| t.current()),
                    };
                    return Ok((accepted, peer));
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    tracing::debug!("accept on {}: {e}", self.url);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A TCP connection accepted by a [`Listener`], before its TLS handshake.
pub struct Accepted {
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
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
    /// The client's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// For `mqtts`, runs the TLS handshake (at most [`TLS_HANDSHAKE_TIMEOUT`]); for `mqtt`,
    /// returns the TCP stream as is.
    pub async fn handshake(self) -> io::Result<Stream> {
        let Some(acceptor) = self.tls else {
            return Ok(Stream::Tcp(self.tcp));
        };
        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(self.tcp)).await {
            Ok(Ok(tls)) => Ok(Stream::Tls(Box::new(tls))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "TLS handshake with {} took longer than {} s",
                    self.peer,
                    TLS_HANDSHAKE_TIMEOUT.as_secs()
                ),
            )),
        }
    }
}

fn bind_error(cfg: &ListenerConfig, e: &io::Error) -> ConfigError {
    let ip = cfg.addr.ip();
    let port = cfg.addr.port();
    let msg = match e.kind() {
        io::ErrorKind::AddrInUse => format!(
            "port {port} on {ip} is already in use: stop the other MQTT broker (e.g. `systemctl \
             stop mosquitto`) or choose another port with --listen"
        ),
        io::ErrorKind::PermissionDenied => format!(
            "listening on port {port} ({ip}) needs privileges this process does not have: \
             choose a port of 1024 or above with --listen, or allow low ports with `sudo setcap \
             cap_net_bind_service=+ep $(command -v makelaar)`"
        ),
        io::ErrorKind::AddrNotAvailable => format!(
            "listener \"{}\" uses {ip}, which is not an address of this machine: choose \
             0.0.0.0 (every interface), 127.0.0.1 or one of this machine's addresses with --listen",
            cfg.url
        ),
        _ => format!(
            "cannot listen on \"{}\" ({}): {}; choose another address with --listen",
            cfg.url,
            cfg.addr,
            io_reason(e)
        ),
    };
    ConfigError::Bind(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_can_move_between_tasks() {
        fn is_send_sync<T: Send + Sync + 'static>() {}
        is_send_sync::<Stream>();
        is_send_sync::<Accepted>();
        is_send_sync::<std::sync::Arc<Listener>>();
        is_send_sync::<std::sync::Arc<TlsSlot>>();
    }
}
