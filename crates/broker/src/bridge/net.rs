//! The bridge's connection to the remote broker: TCP with the configured socket options
//! (source address, TCP keep-alive, `TCP_USER_TIMEOUT`), and TLS (rustls) when configured.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use makelaar_client::TlsOptions;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};

use crate::config::{BridgeAddress, BridgeConfig, BridgeTls, ConfigError, TlsVersion};

/// A byte stream to the remote: TCP or TLS over TCP.
pub(crate) trait RemoteStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> RemoteStream for T {}

/// How to reach the remote, prepared once from the configuration (so a bad certificate file
/// stops the start, not the first connection).
pub(crate) struct Dialer {
    tls: Option<Arc<ClientConfig>>,
    bind: Option<std::net::IpAddr>,
    keepalive: Option<crate::config::TcpKeepalive>,
    user_timeout: Option<Duration>,
    /// For the log and the errors.
    name: String,
}

impl Dialer {
    pub(crate) fn new(c: &BridgeConfig) -> Result<Dialer, ConfigError> {
        let tls = c
            .tls
            .as_ref()
            .map(|t| client_config(t, &c.name))
            .transpose()?;
        Ok(Dialer {
            tls,
            bind: c.bind_address,
            keepalive: c.tcp_keepalive,
            user_timeout: c.tcp_user_timeout,
            name: c.name.clone(),
        })
    }

    /// Opens a connection to `addr` (resolving a host name), within `limit`.
    pub(crate) async fn connect(
        &self,
        addr: &BridgeAddress,
        limit: Duration,
    ) -> std::io::Result<Box<dyn RemoteStream>> {
        let open = async {
            let tcp = self.tcp(addr).await?;
            match &self.tls {
                None => Ok(Box::new(tcp) as Box<dyn RemoteStream>),
                Some(config) => {
                    let host = addr.host.trim_start_matches('[').trim_end_matches(']');
                    let name = ServerName::try_from(host.to_owned()).map_err(|_| {
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidInput,
                            format!("'{host}' is not a valid host name for TLS"),
                        )
                    })?;
                    let connector = tokio_rustls::TlsConnector::from(config.clone());
                    let tls = connector.connect(name, tcp).await?;
                    Ok(Box::new(tls) as Box<dyn RemoteStream>)
                }
            }
        };
        match tokio::time::timeout(limit, open).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {} s", limit.as_secs()),
            )),
        }
    }

    async fn tcp(&self, addr: &BridgeAddress) -> std::io::Result<TcpStream> {
        let mut last = None;
        let found = tokio::net::lookup_host((addr.host.as_str(), addr.port)).await?;
        for sa in found {
            match self.tcp_to(sa).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} has no address", addr.host),
            )
        }))
    }

    async fn tcp_to(&self, sa: SocketAddr) -> std::io::Result<TcpStream> {
        let socket = if sa.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = self.bind {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        {
            let s = socket2::SockRef::from(&socket);
            if let Some(k) = self.keepalive {
                let ka = socket2::TcpKeepalive::new()
                    .with_time(k.idle)
                    .with_interval(k.interval);
                #[cfg(any(target_os = "linux", target_os = "macos", target_os = "freebsd"))]
                let ka = ka.with_retries(k.count);
                s.set_tcp_keepalive(&ka)?;
            }
            #[cfg(any(target_os = "linux", target_os = "android"))]
            if let Some(t) = self.user_timeout {
                s.set_tcp_user_timeout(Some(t))?;
            }
        }
        let stream = socket.connect(sa).await?;
        stream.set_nodelay(true)?;
        tracing::debug!(bridge = %self.name, remote = %sa, "TCP connection to the remote open");
        Ok(stream)
    }
}

/// The rustls client configuration of a bridge: the project's client builds it (CA file,
/// CA directory, the system's bundle, client certificate, `insecure`, TLS 1.3 only, ALPN).
fn client_config(t: &BridgeTls, bridge: &str) -> Result<Arc<ClientConfig>, ConfigError> {
    let mut opts = TlsOptions::default();
    opts.ca_file = t.cafile.clone();
    opts.ca_path = t.capath.clone();
    opts.use_os_certs = t.use_os_certs;
    opts.client_cert = t.certfile.clone();
    opts.client_key = t.keyfile.clone();
    opts.insecure = t.insecure;
    opts.tls13_only = t.min_version == TlsVersion::Tls13;
    opts.alpn = t.alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    makelaar_client::tls_config(&opts).map_err(|e| {
        ConfigError::Tls(format!(
            "bridge {bridge}: {e}; check its CA, certificate and key files (PEM)"
        ))
    })
}
