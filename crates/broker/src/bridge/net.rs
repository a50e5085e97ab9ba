//! The bridge's connection to the remote broker: TCP with the configured socket options
//! (source address, TCP keep-alive, `TCP_USER_TIMEOUT`), and TLS (rustls) when configured.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};

use crate::config::{BridgeAddress, BridgeConfig, BridgeTls, ConfigError, TlsVersion};

/// Where Linux distributions keep the operating system's CA bundle (`bridge_tls_use_os_certs`).
const OS_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

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

fn tls_error(bridge: &str, what: String) -> ConfigError {
    ConfigError::Tls(format!("bridge {bridge}: {what}"))
}

fn certs_from(path: &Path, bridge: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            tls_error(
                bridge,
                format!(
                    "cannot read certificates from {}: {e}; give a PEM file",
                    path.display()
                ),
            )
        })?;
    if certs.is_empty() {
        return Err(tls_error(
            bridge,
            format!(
                "{} holds no PEM certificate; give a PEM file",
                path.display()
            ),
        ));
    }
    Ok(certs)
}

/// The trusted roots: `bridge_cafile`, every certificate in `bridge_capath`, and the
/// operating system's bundle with `bridge_tls_use_os_certs`.
fn roots(t: &BridgeTls, bridge: &str) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore::empty();
    if let Some(f) = &t.cafile {
        for c in certs_from(f, bridge)? {
            roots.add(c).map_err(|e| {
                tls_error(
                    bridge,
                    format!("a CA certificate in {} is not usable: {e}", f.display()),
                )
            })?;
        }
    }
    if let Some(dir) = &t.capath {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            tls_error(
                bridge,
                format!("cannot read the CA directory {}: {e}", dir.display()),
            )
        })?;
        for p in entries.flatten().map(|e| e.path()).filter(|p| p.is_file()) {
            // A directory may hold anything: what is not a usable certificate is skipped.
            if let Ok(certs) = CertificateDer::pem_file_iter(&p) {
                for c in certs.flatten() {
                    let _ = roots.add(c);
                }
            }
        }
    }
    if t.use_os_certs {
        if let Some(bundle) = OS_CA_BUNDLES.iter().map(Path::new).find(|p| p.is_file()) {
            for c in certs_from(bundle, bridge)? {
                let _ = roots.add(c);
            }
        }
    }
    if roots.is_empty() {
        return Err(tls_error(
            bridge,
            "no CA certificate to verify the remote with; set bridge_cafile, bridge_capath or bridge_tls_use_os_certs".into(),
        ));
    }
    Ok(roots)
}

/// The rustls client configuration of a bridge.
fn client_config(t: &BridgeTls, bridge: &str) -> Result<Arc<ClientConfig>, ConfigError> {
    let provider = crate::tls::crypto_provider();
    let versions: &[&rustls::SupportedProtocolVersion] = match t.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| tls_error(bridge, e.to_string()))?;
    let roots = Arc::new(roots(t, bridge)?);
    let builder = if t.insecure {
        let inner = WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| tls_error(bridge, e.to_string()))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyName { inner }))
    } else {
        builder.with_root_certificates(roots)
    };
    let mut config = match (&t.certfile, &t.keyfile) {
        (Some(cert), Some(key)) => {
            let chain = certs_from(cert, bridge)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                tls_error(
                    bridge,
                    format!("cannot read a private key from {}: {e}", key.display()),
                )
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                tls_error(
                    bridge,
                    format!("bridge_certfile and bridge_keyfile do not fit: {e}"),
                )
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    if let Some(alpn) = &t.alpn {
        config.alpn_protocols = vec![alpn.as_bytes().to_vec()];
    }
    Ok(Arc::new(config))
}

/// `bridge_insecure`: the chain is verified, the host name is not.
#[derive(Debug)]
struct AnyName {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict =
            self.inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        match verdict {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
