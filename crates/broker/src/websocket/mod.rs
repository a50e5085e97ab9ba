//! MQTT over WebSocket (MQTT 5.0 section 6, RFC 6455), for `ws://` and `wss://` listeners.
//!
//! [`accept`] runs the opening handshake (`handshake`, sans-IO); then a [`WebSocket`] turns
//! the connection into the plain byte stream the connection task reads and writes, so the
//! MQTT code has one path for every transport:
//!
//! - reading, the client's binary frames are unmasked in place, in the caller's buffer, and
//!   their payloads concatenated (`frame::Reader`): packets may span frames and frames may
//!   hold several packets [MQTT-6.0.0-2], nothing is buffered per frame or message, and the
//!   MQTT decoder's limits (packet size, the large-packet budget) apply as on TCP. A text
//!   frame closes the connection [MQTT-6.0.0-1], so does a message longer than
//!   `max_packet_size`. Pings are answered, pongs ignored, a close frame is answered and ends
//!   the stream;
//! - writing, each MQTT packet gets a binary frame of its own (`framer::Framer` finds the
//!   packets in the bytes written; Paho C clients stall on two packets in one frame). The
//!   frames of one write are laid out in one buffer and written with one write of the
//!   underlying stream, so the connection task's one write per wake-up stays one; what the
//!   stream does not take at once is written before anything else is accepted. Control
//!   frames (pong, close) go between packets; closing sends a close frame before the
//!   underlying stream is shut down.

mod frame;
mod framer;
mod handshake;

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use frame::{Control, Reader};
use framer::Framer;
use handshake::Outcome;

/// Longest a client may take to send its upgrade request.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an HTTP error answer may take to write.
const REFUSAL_WRITE_TIME: Duration = Duration::from_secs(2);
/// Most bytes of the caller's one write framed at once (the frames are copied into a buffer
/// of about this size, held only until the underlying stream takes them).
const WRITE_CHUNK: usize = 64 * 1024;

/// A WebSocket connection seen as a byte stream (see the module documentation).
#[derive(Debug)]
pub struct WebSocket<S> {
    inner: S,
    reader: Reader,
    /// Bytes the client sent right after its upgrade request (normally none).
    early: Vec<u8>,
    /// Where the bytes written stand in the MQTT packets they carry.
    framer: Framer,
    /// Frames waiting for the underlying stream, from `out_at` on (data frames and control
    /// frames, whole except perhaps the last data frame). Empty, without memory, when all is
    /// written.
    out: Vec<u8>,
    out_at: usize,
    /// Bytes handed to the underlying stream and not flushed yet.
    unflushed: bool,
    /// A close frame to send, with this code, once the current packet's frame is complete.
    close_due: Option<u16>,
    /// The close frame is written or being written: no more frames after it.
    close_sent: bool,
    /// The client's stream ended (close frame, error or EOF): reads return end of file.
    read_done: bool,
}

/// Runs the opening handshake on `stream`: reads the upgrade request, and either switches to
/// WebSocket (the chosen subprotocol and the `X-Forwarded-For` values come back with the
/// stream) or answers with an HTTP error and closes (the reason, for the log). Data messages
/// are limited to `max_message` bytes. The caller bounds the time (see
/// [`HANDSHAKE_TIMEOUT`]).
pub async fn accept<S>(
    mut stream: S,
    path: Option<&str>,
    max_message: u64,
) -> Result<(WebSocket<S>, String), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = Vec::with_capacity(1024);
    loop {
        buf.reserve(1024);
        let scanned = buf.len().saturating_sub(3);
        match stream.read_buf(&mut buf).await {
            Ok(0) => return Err("closed during the WebSocket handshake".to_string()),
            Ok(_) => {}
            Err(e) => return Err(format!("read error during the WebSocket handshake: {e}")),
        }
        // Parse what came first (to refuse what is not HTTP at once), then only once the
        // request may be complete (an empty line arrived): a request sent a byte at a time
        // costs no more than one sent at once.
        let new = buf.get(scanned..).unwrap_or_default();
        let ended = new.windows(2).any(|w| w == b"\n\n") || new.windows(3).any(|w| w == b"\n\r\n");
        if scanned > 0 && !ended && buf.len() < handshake::MAX_REQUEST {
            continue;
        }
        match handshake::respond(&buf, path) {
            Outcome::Incomplete => {}
            Outcome::Upgrade {
                response,
                len,
                forwarded_for,
                ..
            } => {
                if let Err(e) = write_all_flush(&mut stream, &response).await {
                    return Err(format!("write error during the WebSocket handshake: {e}"));
                }
                let early = buf.get(len..).map(<[u8]>::to_vec).unwrap_or_default();
                return Ok((WebSocket::new(stream, max_message, early), forwarded_for));
            }
            Outcome::Refuse { response, reason } => {
                let answer = async {
                    write_all_flush(&mut stream, &response).await?;
                    stream.shutdown().await
                };
                let _ = tokio::time::timeout(REFUSAL_WRITE_TIME, answer).await;
                return Err(format!("WebSocket handshake refused: {reason}"));
            }
        }
    }
}

async fn write_all_flush<S: AsyncWrite + Unpin>(s: &mut S, bytes: &[u8]) -> io::Result<()> {
    s.write_all(bytes).await?;
    s.flush().await
}

impl<S> WebSocket<S> {
    fn new(inner: S, max_message: u64, early: Vec<u8>) -> WebSocket<S> {
        WebSocket {
            inner,
            reader: Reader::new(max_message),
            early,
            framer: Framer::default(),
            out: Vec::new(),
            out_at: 0,
            unflushed: false,
            close_due: None,
            close_sent: false,
            read_done: false,
        }
    }

    /// The stream the WebSocket runs on.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocket<S> {
    /// Puts the control frames that are due (a pong, then the close frame) behind the frames
    /// waiting; only between packets, and nothing after the close frame.
    fn queue_control(&mut self) {
        if !self.framer.at_boundary() || self.close_sent {
            return;
        }
        // A pong first (its ping came before whatever made us close), then the close frame.
        if let Some((p, n)) = self.reader.take_ping() {
            self.queue_frame(&Control::Pong(p, n));
        }
        if let Some(code) = self.close_due.take() {
            self.close_sent = true;
            self.queue_frame(&Control::Close(code));
        }
    }

    fn queue_frame(&mut self, control: &Control) {
        let (bytes, len) = frame::control_frame(control);
        self.out
            .extend_from_slice(bytes.get(..len).unwrap_or_default());
    }

    /// Writes the frames waiting; `Ready(Ok)` once all are written.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(rest) = self.out.get(self.out_at..).filter(|r| !r.is_empty()) {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_at += n;
            self.unflushed = true;
        }
        if self.out.capacity() > 0 {
            // All written: give the buffer back (an idle connection holds none).
            self.out = Vec::new();
        }
        self.out_at = 0;
        Poll::Ready(Ok(()))
    }

    /// Sends what control frames (and frames waiting) can be sent now, without waiting; an
    /// error only when the stream failed.
    fn push_control(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        self.queue_control();
        match self.poll_drain(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => return Ok(()),
        }
        if self.unflushed {
            if let Poll::Ready(r) = Pin::new(&mut self.inner).poll_flush(cx) {
                r?;
                self.unflushed = false;
            }
        }
        Ok(())
    }

    /// Notes what the reader saw besides data: a violation ends the stream with a close
    /// frame carrying its code.
    fn after_decode(&mut self, result: Result<usize, frame::Violation>) -> io::Result<usize> {
        let n = match result {
            Ok(n) => n,
            Err(v) => {
                self.read_done = true;
                self.close_due.get_or_insert(v.code);
                return Err(io::Error::new(io::ErrorKind::InvalidData, v.reason));
            }
        };
        if self.reader.close_received().is_some() {
            // Answer the client's close [RFC 6455 5.5.1], with 1000 whatever its code (some
            // codes must never be sent back, such as 1005 and 1006).
            self.read_done = true;
            self.close_due.get_or_insert(frame::CLOSE_NORMAL);
        }
        Ok(n)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WebSocket<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            let pushed = this.push_control(cx);
            if this.read_done {
                return Poll::Ready(pushed);
            }
            pushed?;
            let before = buf.filled().len();
            if this.early.is_empty() {
                ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            } else {
                let n = this.early.len().min(buf.remaining());
                buf.put_slice(this.early.get(..n).unwrap_or_default());
                this.early.drain(..n);
            }
            let Some(got) = buf.filled_mut().get_mut(before..) else {
                return Poll::Ready(Err(io::ErrorKind::InvalidData.into()));
            };
            if got.is_empty() {
                // The connection ended without a close frame.
                this.read_done = true;
                return Poll::Ready(Ok(()));
            }
            let decoded = this.reader.decode(got);
            let result = this.after_decode(decoded);
            let n = match result {
                Ok(n) => n,
                Err(e) => {
                    buf.set_filled(before);
                    // Try to send the close frame now; the caller closes the stream next.
                    let _ = this.push_control(cx);
                    return Poll::Ready(Err(e));
                }
            };
            buf.set_filled(before + n);
            if n > 0 {
                return Poll::Ready(Ok(()));
            }
            // Only headers or control frames so far: read on (end of file after a close).
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WebSocket<S> {
    /// Frames `buf` (see [`Framer`]) and writes the frames with one write of the underlying
    /// stream; what it does not take waits in the buffer and is written first next time (or
    /// by `poll_flush`), so `Pending` comes only while earlier frames still wait.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // Once a close is due, only the packet already started may be finished.
        let limit = if this.close_sent || this.close_due.is_some() {
            this.framer.left()
        } else {
            WRITE_CHUNK
        };
        if limit == 0 {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        this.queue_control(); // a pong goes before the next packet
        ready!(this.poll_drain(cx))?;
        this.out.reserve(buf.len().min(limit) + 64);
        let n = this.framer.frame(buf, &mut this.out, limit);
        // The one write: the frames start on their way now, as a plain stream's bytes would.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.queue_control();
        ready!(this.poll_drain(cx))?;
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        this.unflushed = false;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // A packet cut short cannot be followed by a close frame: just end the stream.
        if this.framer.at_boundary() && !this.close_sent {
            this.close_due.get_or_insert(frame::CLOSE_NORMAL);
        }
        this.queue_control();
        ready!(this.poll_drain(cx))?;
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
