//! The generator's connections: TCP (TCP_NODELAY on) or TLS, the CONNECT and SUBSCRIBE
//! handshakes, and non-blocking reads and writes that one task polls together.
//!
//! Built directly on `makelaar-proto`: no client library between the generator and the socket.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{anyhow, bail};
use bytes::{Buf, BytesMut};
use makelaar_client::Stream;
use makelaar_proto::{
    Connect, Decoder, Packet, ProtocolVersion, QoS, ReasonCode, Subscribe, SubscriptionOptions,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, HandshakeKind, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest packet the generator accepts from a broker.
const MAX_PACKET: usize = 16 * 1024 * 1024;
/// Time allowed for TCP connect, TLS, CONNECT/CONNACK and SUBSCRIBE/SUBACK each.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and how to connect: shared by every simulated client.
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    pub version: ProtocolVersion,
    pub keep_alive: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Connect with clean session off (5.0: a Session Expiry Interval of an hour).
    pub persistent: bool,
}

/// TLS options from the command line.
pub struct TlsOptions {
    pub cafile: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub insecure: bool,
    /// Offer the session tickets (TLS 1.3) or ids (TLS 1.2) of earlier connections to resume
    /// them; off, every connection makes a full handshake.
    pub resume: bool,
}

/// The client TLS configuration and the name to verify, built by `makelaar-client`: the CA
/// file (or the system bundle), an optional client certificate, or no verification at all
/// with `insecure`.
pub fn tls_config(
    o: &TlsOptions,
    host: &str,
) -> anyhow::Result<(Arc<ClientConfig>, ServerName<'static>)> {
    let mut opts = makelaar_client::TlsOptions::default();
    opts.ca_file = o.cafile.clone();
    opts.client_cert = o.cert.clone();
    opts.client_key = o.key.clone();
    let verifier: Option<Arc<dyn ServerCertVerifier>> = o
        .insecure
        .then(|| Arc::new(NoVerify(Arc::new(rustls::crypto::ring::default_provider()))) as _);
    let config = makelaar_client::tls_config_with_verifier(&opts, verifier)?;
    let config = if o.resume {
        config
    } else {
        full_handshakes(&config)
    };
    Ok((config, makelaar_client::tls_server_name(&opts, host)?))
}

/// The configuration without session resumption. The simulated clients share one
/// configuration, so with resumption on, each connection would resume with a ticket an
/// earlier one received: a connection benchmark would then measure the cheap handshake
/// (no certificate, no signature) instead of what a new client costs.
fn full_handshakes(config: &ClientConfig) -> Arc<ClientConfig> {
    let mut c = config.clone();
    c.resumption = Resumption::disabled();
    Arc::new(c)
}

/// Accepts any server certificate (`--insecure`); handshake signatures are still checked.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One MQTT connection of the generator: socket, buffers and decoder.
pub struct Conn {
    pub stream: Stream,
    pub rbuf: BytesMut,
    pub wbuf: BytesMut,
    pub decoder: Decoder,
    pub version: ProtocolVersion,
    /// Bytes reserved for each read.
    read_chunk: usize,
    /// Written to the socket but maybe still buffered in the TLS layer.
    unflushed: bool,
}

/// What one poll of a connection's socket achieved.
#[derive(Debug, Default, Clone, Copy)]
pub struct IoProgress {
    pub read: usize,
    pub written: usize,
    pub flushed: bool,
}

impl IoProgress {
    pub fn any(&self) -> bool {
        self.read > 0 || self.written > 0 || self.flushed
    }
}

impl Conn {
    /// Opens the socket (and TLS), sends CONNECT and waits for a successful CONNACK.
    pub async fn open(ep: &Endpoint, client_id: &str, read_chunk: usize) -> anyhow::Result<Conn> {
        let addr = format!("{}:{}", ep.host, ep.port);
        let tcp = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(&addr))
            .await
            .map_err(|_| anyhow!("connecting to {addr} timed out"))?
            .map_err(|e| anyhow!("cannot connect to {addr}: {e}"))?;
        tcp.set_nodelay(true)?;
        let stream = match &ep.tls {
            None => Stream::Tcp(tcp),
            Some((config, name)) => {
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                let tls =
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name.clone(), tcp))
                        .await
                        .map_err(|_| anyhow!("TLS handshake with {addr} timed out"))?
                        .map_err(|e| anyhow!("TLS handshake with {addr} failed: {e}"))?;
                Stream::Tls(Box::new(tls))
            }
        };
        let mut decoder = Decoder::new(MAX_PACKET);
        decoder.set_version(ep.version);
        let mut conn = Conn {
            stream,
            rbuf: BytesMut::with_capacity(read_chunk),
            wbuf: BytesMut::new(),
            decoder,
            version: ep.version,
            read_chunk,
            unflushed: false,
        };
        let mut properties = makelaar_proto::Properties::default();
        if ep.persistent && ep.version.is_v5() {
            properties.session_expiry_interval = Some(3600);
        }
        let connect = Connect {
            bridge: false,
            protocol: ep.version,
            clean_start: !ep.persistent,
            keep_alive: ep.keep_alive,
            client_id: client_id.to_string(),
            will: None,
            username: ep.username.clone(),
            password: ep.password.clone().map(Into::into),
            properties,
        };
        conn.send_now(&Packet::Connect(Box::new(connect))).await?;
        match conn.next_packet().await? {
            Packet::ConnAck(ack) if !ack.reason.is_error() => Ok(conn),
            Packet::ConnAck(ack) => bail!("{addr} refused the connection: {}", ack.reason),
            other => bail!("{addr} answered CONNECT with {}", other.name()),
        }
    }

    /// How the TLS handshake went: `Some(true)` when it resumed an earlier session, `None`
    /// for plain TCP.
    pub fn tls_resumed(&self) -> Option<bool> {
        match &self.stream {
            Stream::Tcp(_) => None,
            Stream::Tls(tls) => {
                Some(tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed))
            }
        }
    }

    /// Subscribes to one filter and waits for the SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> anyhow::Result<()> {
        let sub = Subscribe {
            packet_id: 1,
            filters: vec![(
                filter.to_string(),
                SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            )],
            properties: Default::default(),
        };
        self.send_now(&Packet::Subscribe(sub)).await?;
        loop {
            match self.next_packet().await? {
                Packet::SubAck(ack) => {
                    return match ack.reasons.first() {
                        Some(r) if !r.is_error() => Ok(()),
                        Some(r) => bail!("subscribing to \"{filter}\" was refused: {r}"),
                        None => bail!("empty SUBACK for \"{filter}\""),
                    };
                }
                // A retained message may arrive before the SUBACK: it is not counted.
                Packet::Publish(_) => {}
                other => bail!("unexpected {} while subscribing", other.name()),
            }
        }
    }

    /// Encodes and writes one packet now (handshakes, DISCONNECT).
    pub async fn send_now(&mut self, p: &Packet) -> anyhow::Result<()> {
        let mut buf = BytesMut::new();
        p.encode(self.version, &mut buf)
            .map_err(|e| anyhow!("cannot encode {}: {e}", p.name()))?;
        tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            self.stream.write_all(&buf).await?;
            self.stream.flush().await
        })
        .await
        .map_err(|_| anyhow!("writing {} timed out", p.name()))??;
        Ok(())
    }

    /// Reads until one whole packet is there (handshakes only).
    pub async fn next_packet(&mut self) -> anyhow::Result<Packet> {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            loop {
                if let Some(p) = self.decode()? {
                    return Ok(p);
                }
                let n = std::future::poll_fn(|cx| self.poll_read(cx)).await?;
                if n == 0 {
                    bail!("the broker closed the connection");
                }
            }
        })
        .await
        .map_err(|_| anyhow!("no answer from the broker within {HANDSHAKE_TIMEOUT:?}"))?
    }

    /// The next complete packet in the read buffer, if any.
    pub fn decode(&mut self) -> anyhow::Result<Option<Packet>> {
        self.decoder
            .decode(&mut self.rbuf)
            .map_err(|e| anyhow!("malformed packet from the broker: {e}"))
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < self.read_chunk / 2 {
            self.rbuf.reserve(self.read_chunk);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.rbuf)
    }

    /// Reads what the socket has and writes what `wbuf` holds, without waiting on either:
    /// `Ready` with what was done, `Pending` when nothing could be done (wakers registered for
    /// both directions). A closed socket is an `UnexpectedEof` error.
    pub fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<IoProgress>> {
        let mut p = IoProgress::default();
        match self.poll_read(cx) {
            Poll::Ready(Ok(0)) => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the broker closed the connection",
                )))
            }
            Poll::Ready(Ok(n)) => p.read = n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        while !self.wbuf.is_empty() {
            match Pin::new(&mut self.stream).poll_write(cx, &self.wbuf) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the socket accepts no more data",
                    )))
                }
                Poll::Ready(Ok(n)) => {
                    self.wbuf.advance(n);
                    p.written += n;
                    self.unflushed = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        if self.wbuf.is_empty() && self.unflushed {
            match Pin::new(&mut self.stream).poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    self.unflushed = false;
                    p.flushed = self.stream.is_tls();
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        if p.any() {
            Poll::Ready(Ok(p))
        } else {
            Poll::Pending
        }
    }

    /// Sends DISCONNECT after what is buffered and closes, within `limit`.
    pub async fn close(mut self, limit: Duration) {
        let mut d = BytesMut::new();
        if Packet::Disconnect(Default::default())
            .encode(self.version, &mut d)
            .is_ok()
        {
            self.wbuf.extend_from_slice(&d);
        }
        let _ = tokio::time::timeout(limit, async {
            let wbuf = std::mem::take(&mut self.wbuf);
            self.stream.write_all(&wbuf).await?;
            self.stream.shutdown().await
        })
        .await;
    }
}

/// Encodes an acknowledgement (PUBACK, PUBREC, PUBREL, PUBCOMP) into `buf`.
pub fn put_ack(buf: &mut BytesMut, version: ProtocolVersion, packet: Packet) {
    // Acknowledgements always encode: a fixed size, no properties.
    let _ = packet.encode(version, buf);
}

/// The reason code a failed acknowledgement carries (5.0), for the error message.
pub fn ack_failed(reason: ReasonCode) -> Option<String> {
    reason
        .is_error()
        .then(|| format!("the broker refused a message: {reason}"))
}
