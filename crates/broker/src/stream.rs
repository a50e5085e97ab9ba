//! A connection's byte stream, whatever carries it: TCP, TLS over TCP, or WebSocket over
//! either. The connection task reads and writes it the same way for every transport.
//!
//! Plain TCP, the common case, is held inline; the other layers are boxed so that they cost
//! nothing in the (many) plain connections' tasks.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::websocket::WebSocket;

/// A connection's byte stream.
#[derive(Debug)]
pub enum Stream {
    /// `mqtt://`.
    Tcp(TcpStream),
    /// `mqtts://` (and under `wss://`), after a completed handshake.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// `ws://` and `wss://`: WebSocket over a `Tcp` or `Tls` stream, after the upgrade.
    Ws(Box<WebSocket<Stream>>),
}

impl Stream {
    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        match self {
            Stream::Tcp(_) => false,
            Stream::Tls(_) => true,
            Stream::Ws(ws) => ws.get_ref().is_tls(),
        }
    }

    /// What carries MQTT here, as the connection log names it: `tcp`, `tls`, `ws` or `wss`.
    pub fn transport(&self) -> &'static str {
        match self {
            Stream::Tcp(_) => "tcp",
            Stream::Tls(_) => "tls",
            Stream::Ws(ws) if ws.get_ref().is_tls() => "wss",
            Stream::Ws(_) => "ws",
        }
    }

    /// The client's certificate chain (end entity first), when it presented one over TLS.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        match self {
            Stream::Tcp(_) => None,
            Stream::Tls(tls) => tls.get_ref().1.peer_certificates(),
            Stream::Ws(ws) => ws.get_ref().peer_certificates(),
        }
    }

    /// The underlying TCP socket.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Tcp(tcp) => tcp,
            Stream::Tls(tls) => tls.get_ref().0,
            Stream::Ws(ws) => ws.get_ref().tcp(),
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
            Stream::Ws(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
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
            Stream::Ws(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
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
            Stream::Ws(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
            Stream::Ws(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Ws(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Ws(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
