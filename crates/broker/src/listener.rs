//! Listeners: bind the configured addresses, accept TCP connections, and open them outside
//! the accept loop: the PROXY protocol header (`proxy_protocol = true`), the TLS handshake
//! (`mqtts://`, `wss://`, `https://`) and the WebSocket upgrade (`ws://`, `wss://`), in that
//! order. HTTP listeners (`http://`, `https://`) are served by `crate::http`.
//!
//! The intended accept loop:
//! ```ignore
//! loop {
//!     match listener.accept().await {
//!         Ok((accepted, _)) => {
//!             tokio::spawn(async move {
//!                 let (stream, peer) = match accepted.open(max_packet_size).await {
//!                     Ok(opened) => opened,
//!                     Err(_) => return,
//!                 };
//!                 // ... run the connection on `stream`, from the client at `peer` ...
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
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio_rustls::TlsAcceptor;

use crate::config::{io_reason, ConfigError, ListenerConfig, ListenerKind, TlsSettings};
pub use crate::opening::{Accepted, Front};
pub use crate::stream::Stream;

pub use crate::opening::{PROXY_HEADER_TIMEOUT, TLS_HANDSHAKE_TIMEOUT};
pub use crate::websocket::HANDSHAKE_TIMEOUT as WEBSOCKET_HANDSHAKE_TIMEOUT;

/// How long the accept loop should pause after [`Listener::accept`] fails (e.g. out of file
/// descriptors), so the error does not turn into a busy loop.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

pub use crate::status::STATUS_TARGET;

/// Connections the kernel completes and queues for `accept` before it refuses more (the
/// kernel caps it at `net.core.somaxconn`). A burst of reconnecting clients, or an accept
/// loop that falls behind a moment, must not make clients wait for a SYN retransmission
/// (a second or more): the standard library's 128 is small for a broker.
const LISTEN_BACKLOG: u32 = 1024;

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

    pub(crate) fn current(&self) -> TlsAcceptor {
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
    front: Arc<Front>,
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
    /// Loads the listener's certificates (for `mqtts` and `wss`) and binds its address. Every
    /// problem is a [`ConfigError`] sentence: unreadable certificate, port in use, permission
    /// denied, ... On success it logs "makelaar VERSION listening on URL" at info on
    /// [`STATUS_TARGET`].
    pub async fn bind(cfg: &ListenerConfig) -> Result<Listener, ConfigError> {
        let tls = match &cfg.tls {
            _ if !cfg.kind.is_tls() => None,
            Some(settings) => Some(Arc::new(TlsSlot::new(&cfg.url, settings)?)),
            None => {
                return Err(ConfigError::Invalid(format!(
                    "listener \"{}\" needs a certificate: pass --cert FILE and --key FILE (PEM), \
                     or set cert and key in the config file",
                    cfg.url
                )))
            }
        };
        let tcp = listen(cfg.addr).map_err(|e| bind_error(cfg, &e))?;
        let local_addr = tcp.local_addr().map_err(|e| bind_error(cfg, &e))?;
        let path = match &cfg.websocket {
            Some(ws) => ws
                .path
                .as_deref()
                .unwrap_or(crate::config::ANY_WEBSOCKET_PATH),
            None => "",
        };
        tracing::info!(
            target: STATUS_TARGET,
            "makelaar {} listening on {}://{}{}{}",
            env!("CARGO_PKG_VERSION"),
            cfg.kind.scheme(),
            local_addr,
            path,
            if cfg.proxy_protocol { " (PROXY protocol)" } else { "" }
        );
        Ok(Listener {
            tcp,
            url: cfg.url.clone(),
            kind: cfg.kind,
            local_addr,
            tls,
            front: Arc::new(Front::new(cfg)),
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

    /// Plain, TLS, WebSocket or WebSocket over TLS.
    pub fn kind(&self) -> ListenerKind {
        self.kind
    }

    /// The reloadable TLS configuration of a TLS listener.
    pub fn tls_slot(&self) -> Option<Arc<TlsSlot>> {
        self.tls.clone()
    }

    /// The next connection (see [`Listener::accept`]), or `None` once `shutdown` is
    /// cancelled. A failure of the listener itself (out of file descriptors and the like) is
    /// logged and retried after [`ACCEPT_ERROR_BACKOFF`] instead of spinning.
    pub async fn accept_until(
        &self,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Option<(Accepted, SocketAddr)> {
        loop {
            let accepted = tokio::select! {
                a = self.accept() => a,
                _ = shutdown.cancelled() => return None,
            };
            match accepted {
                Ok(a) => return Some(a),
                Err(e) => {
                    tracing::warn!(listener = self.url(), error = %e, "cannot accept connections (too many open files?); retrying shortly");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            }
        }
    }

    /// Accepts the next TCP connection, with TCP_NODELAY on (see [`listen`]). Nothing is read here (no
    /// PROXY header, TLS handshake or WebSocket upgrade), so a slow client cannot hold up the
    /// accept loop: call [`Accepted::open`] in the connection's own task.
    ///
    /// Errors that concern only the one connection (reset or aborted before it was accepted)
    /// are skipped. The errors returned are about the listener or the process, such as running
    /// out of file descriptors (EMFILE): they repeat immediately if accept is called again, so
    /// the caller must pause (see [`ACCEPT_ERROR_BACKOFF`]) before the next call.
    pub async fn accept(&self) -> io::Result<(Accepted, SocketAddr)> {
        loop {
            match self.tcp.accept().await {
                Ok((tcp, peer)) => {
                    // Linux: inherited from the listening socket, no system call per client.
                    #[cfg(not(target_os = "linux"))]
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!("cannot set TCP_NODELAY for {peer}: {e}");
                    }
                    let tls = self.tls.as_ref().map(|t| t.current());
                    let accepted = Accepted::new(tcp, peer, tls, self.front.clone());
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

/// Binds a listening socket as `TcpListener::bind` does (SO_REUSEADDR on Unix), with a
/// backlog of [`LISTEN_BACKLOG`] and TCP_NODELAY set on it: on Linux, accepted sockets inherit
/// it, which saves a system call per connection (MQTT packets are small and must not wait
/// for Nagle's algorithm).
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
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

    #[tokio::test]
    async fn accepted_connections_have_nodelay_and_the_port_can_be_rebound() {
        let l = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (tcp, _) = l.accept().await.unwrap();
        assert!(
            tcp.nodelay().unwrap(),
            "TCP_NODELAY must be on for accepted sockets"
        );
        // SO_REUSEADDR: the port is free again at once, with a connection in TIME_WAIT.
        drop(tcp);
        drop(l);
        listen(addr).unwrap();
    }

    #[test]
    fn types_can_move_between_tasks() {
        fn is_send_sync<T: Send + Sync + 'static>() {}
        is_send_sync::<Stream>();
        is_send_sync::<Accepted>();
        is_send_sync::<std::sync::Arc<Listener>>();
        is_send_sync::<std::sync::Arc<TlsSlot>>();
    }
}
