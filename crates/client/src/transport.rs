//! Opening the byte stream to the broker: TCP, then TLS when asked.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::error::Error;
use crate::options::ConnectOptions;
use crate::tls;

pub(crate) type Reader = Box<dyn AsyncRead + Send + Unpin>;
pub(crate) type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// Resolves the host and connects to the first address that answers, then runs the TLS
/// handshake if TLS is configured.
pub(crate) async fn open(opts: &ConnectOptions) -> Result<(Reader, Writer), Error> {
    // Read the certificate files before touching the network: their errors are the user's.
    let tls_config = match &opts.tls {
        Some(t) => Some((tls::client_config(t)?, tls::server_name(t, &opts.host)?)),
        None => None,
    };
    let host = opts.host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<_> = tokio::net::lookup_host((host, opts.port))
        .await
        .map_err(|e| Error::Resolve {
            host: opts.host.clone(),
            source: Arc::new(e),
        })?
        .collect();
    let mut last_err = io::Error::new(io::ErrorKind::NotFound, "the host has no address");
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect(a).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_err = e,
        }
    }
    let Some(tcp) = stream else {
        return Err(Error::Connect {
            addr: opts.addr(),
            source: Arc::new(last_err),
        });
    };
    // Small packets (acknowledgements, pings) go out at once.
    let _ = tcp.set_nodelay(true);
    let stream = match tls_config {
        None => Stream::Tcp(tcp),
        Some((config, name)) => {
            let connector = tokio_rustls::TlsConnector::from(config);
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| Error::Tls(format!("handshake with {} failed: {e}", opts.addr())))?;
            Stream::Tls(Box::new(tls))
        }
    };
    match stream {
        Stream::Tcp(tcp) => {
            let (r, w) = tcp.into_split();
            Ok((Box::new(r), Box::new(w)))
        }
        Stream::Tls(tls) => {
            let (r, w) = tokio::io::split(*tls);
            Ok((Box::new(r), Box::new(w)))
        }
    }
}

/// A connection to a broker, plain TCP or TLS, read and written as one stream.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// Whether this is a TLS connection.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
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
