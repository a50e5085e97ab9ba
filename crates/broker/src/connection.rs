//! One task per connection: reads and decodes the client's packets, checks what belongs to
//! the connection (`ConnState`), forwards the rest to the router, and writes what the router
//! sends back, batching every ready packet into one write.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use makelaar_core::conn::{ConnState, Violation};
use makelaar_core::session::ConnId;
use makelaar_core::Limits;
use makelaar_proto::{
    ConnAck, DecodeError, Decoder, Disconnect, Packet, ProtocolVersion, ReasonCode,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::outbox::{Drained, Outbox};
use crate::router::ToRouter;
use crate::Counters;

/// Stop reading from the client and from the router while this many bytes wait to be written:
/// a client that does not read is not fed more work.
const WRITE_HIGH_WATER: usize = 256 * 1024;
/// CONNECT is small; a larger first packet is refused before it is buffered.
const MAX_CONNECT_SIZE: usize = 64 * 1024;
/// Packets larger than this reserve their size from the broker-wide large-packet budget
/// before they are read.
const LARGE_PACKET: usize = 64 * 1024;
const READ_CHUNK: usize = 4096;
/// Smallest read buffer: what a quiet connection holds (memory per idle client matters).
const READ_MIN: usize = 256;
/// Largest read size a busy connection grows to.
const READ_MAX: usize = 64 * 1024;
/// Packets taken from the outbox per lock.
const OUTBOX_BATCH: usize = 64;
/// How long and how much of a closing client's input is drained (see `Io::linger`).
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_MAX_BYTES: usize = 256 * 1024;

pub(crate) struct ConnCtx {
    pub limits: Limits,
    /// Broker-wide budget for large packets being received, in KiB (see
    /// `Limits::large_packet_budget`).
    pub large_packets: Arc<Semaphore>,
    pub large_packet_permits: u32,
    pub router: mpsc::Sender<ToRouter>,
    pub counters: Arc<Counters>,
}

/// Serves one client until it leaves or is closed.
pub(crate) async fn run<S>(stream: S, conn: ConnId, peer: std::net::SocketAddr, ctx: Arc<ConnCtx>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut rbuf = BytesMut::new();
    let mut decoder =
        Decoder::new(ctx.limits.max_packet_size.min(MAX_CONNECT_SIZE as u32) as usize);
    let deadline = tokio::time::Instant::now() + ctx.limits.connect_timeout;
    // [MQTT-3.1.0-1] the first packet must be CONNECT, within connect_timeout.
    let connect = match tokio::time::timeout_at(
        deadline,
        read_connect(&mut rd, &mut rbuf, &mut decoder, &ctx),
    )
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(reply)) => {
            if let Some(bytes) = reply {
                let _ = wr.write_all(&bytes).await;
            }
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT within connect_timeout: closing");
            return;
        }
    };
    decoder.set_max_packet_size(ctx.limits.max_packet_size as usize);
    let version = connect.protocol;
    let mut state = ConnState::new(Instant::now(), &connect, &ctx.limits);
    let outbox = Arc::new(Outbox::default());
    tracing::info!(%peer, client_id = %connect.client_id, protocol = ?version, "client connecting");
    let msg = ToRouter::Connect {
        conn,
        connect,
        out: outbox.clone(),
    };
    if !forward(&ctx.router, Box::new(msg)).await {
        return;
    }
    let mut io = Io {
        rd,
        wr,
        rbuf,
        wbuf: BytesMut::new(),
        decoder,
        version,
        conn,
        ctx: ctx.clone(),
        outbox,
        drained: Drained::default(),
        large: None,
        read_size: READ_MIN,
    };
    let end = io.serve(&mut state).await;
    let reason = match end {
        End::Closed => None,
        End::Lost(why) => Some(ToRouter::Lost { conn })
            .inspect(|_| tracing::debug!(%peer, why, "connection lost")),
        End::Violation(v) => {
            tracing::debug!(%peer, reason = %v.reason, text = v.text, "closing connection: protocol violation");
            if version.is_v5() {
                // [MQTT-4.13.1-1] tell a 5.0 client why before closing.
                let d = Packet::Disconnect(Disconnect {
                    reason: v.reason,
                    ..Disconnect::default()
                });
                io.write_now(&d).await;
            }
            Some(ToRouter::Violation {
                conn,
                reason: v.reason,
                text: v.text,
            })
        }
    };
    if let Some(msg) = reason {
        forward(&ctx.router, Box::new(msg)).await;
    }
    io.linger().await;
}

/// Reads until a whole CONNECT arrives. `Err(Some(bytes))` carries a reply to send before
/// closing (CONNACK "unsupported protocol version").
async fn read_connect<R: AsyncRead + Unpin>(
    rd: &mut R,
    rbuf: &mut BytesMut,
    decoder: &mut Decoder,
    ctx: &ConnCtx,
) -> Result<Box<makelaar_proto::Connect>, Option<Vec<u8>>> {
    loop {
        match decoder.decode(rbuf) {
            // Kept boxed: a CONNECT is large, and the connection task must stay small.
            Ok(Some(Packet::Connect(c))) => return Ok(c),
            Ok(Some(other)) => {
                tracing::debug!(
                    packet = other.name(),
                    "first packet is not CONNECT: closing"
                );
                return Err(None);
            }
            Err(DecodeError::UnsupportedProtocol) => {
                // [MQTT-3.1.2-2] answer CONNACK 0x01 (3.1.1 form) and close.
                let ack = ConnAck {
                    reason: ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
                    ..ConnAck::default()
                };
                let mut out = BytesMut::new();
                let _ = Packet::ConnAck(ack).encode(ProtocolVersion::V311, &mut out);
                return Err(Some(out.to_vec()));
            }
            Err(e) => {
                tracing::debug!(error = %e, "bad CONNECT: closing");
                return Err(None);
            }
            Ok(None) => {}
        }
        rbuf.reserve(READ_CHUNK);
        match rd.read_buf(rbuf).await {
            Ok(0) | Err(_) => return Err(None),
            Ok(n) => {
                ctx.counters
                    .bytes_received
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
}

enum End {
    /// The router closed it (DISCONNECT handled, takeover, refused CONNECT, shutdown).
    Closed,
    /// The socket ended or failed.
    Lost(&'static str),
    /// The client broke the protocol.
    Violation(Violation),
}

struct Io<R, W> {
    rd: R,
    wr: W,
    rbuf: BytesMut,
    wbuf: BytesMut,
    decoder: Decoder,
    version: ProtocolVersion,
    conn: ConnId,
    ctx: Arc<ConnCtx>,
    outbox: Arc<Outbox>,
    drained: Drained,
    /// The reservation for the large packet being received, if any.
    large: Option<OwnedSemaphorePermit>,
    /// How much to reserve for the next read (see `prepare_read`).
    read_size: usize,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Io<R, W> {
    async fn serve(&mut self, state: &mut ConnState) -> End {
        let mut closing = false;
        let mut needs_flush = false;
        loop {
            if closing && self.wbuf.is_empty() && !needs_flush {
                return End::Closed;
            }
            let room = self.wbuf.len() < WRITE_HIGH_WATER;
            let reserve = self.large_reservation_needed();
            let readable = room && !closing && reserve.is_none();
            let keep_alive = state
                .keep_alive_deadline()
                .map(tokio::time::Instant::from_std);
            let far = tokio::time::Instant::now() + Duration::from_secs(86_400);
            let spare = self.prepare_read();
            tokio::select! {
                permit = self.ctx.large_packets.clone().acquire_many_owned(reserve.unwrap_or(0)), if reserve.is_some() => {
                    self.large = permit.ok();
                }
                r = self.rd.read_buf(&mut self.rbuf), if readable => {
                    match r {
                        Ok(0) => return End::Lost("closed by client"),
                        Err(_) => return End::Lost("read error"),
                        Ok(n) => {
                            self.ctx.counters.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                            self.adapt_read_size(n, spare);
                            if let Err(end) = self.decode_all(state).await {
                                return end;
                            }
                        }
                    }
                }
                _ = self.outbox.ready(), if room && !closing => {
                    closing = self.take_outbound(state);
                }
                w = write_some(&mut self.wr, &mut self.wbuf, &mut needs_flush), if !self.wbuf.is_empty() || needs_flush => {
                    match w {
                        Ok(n) => { self.ctx.counters.bytes_sent.fetch_add(n as u64, Ordering::Relaxed); }
                        Err(_) => return End::Lost("write error"),
                    }
                }
                _ = tokio::time::sleep_until(keep_alive.unwrap_or(far)), if keep_alive.is_some() && !closing => {
                    // [MQTT-3.1.2-24] nothing received for 1.5 × keep-alive.
                    return End::Violation(Violation { reason: ReasonCode::KEEP_ALIVE_TIMEOUT, text: "keep-alive timeout" });
                }
            }
        }
    }

    /// Makes room to read into and returns how much there is. A quiet connection holds only a
    /// small buffer (an empty one is given back entirely); a busy one reads in larger chunks.
    fn prepare_read(&mut self) -> usize {
        if self.rbuf.is_empty() && self.rbuf.capacity() > self.read_size * 2 {
            self.rbuf = BytesMut::new();
        }
        if self.rbuf.capacity() - self.rbuf.len() < READ_MIN / 2 {
            self.rbuf.reserve(self.read_size);
        }
        self.rbuf.capacity() - self.rbuf.len()
    }

    /// Grows the read size while reads fill the buffer, shrinks it while they don't.
    fn adapt_read_size(&mut self, n: usize, spare: usize) {
        if n >= spare {
            self.read_size = (self.read_size * 2).min(READ_MAX);
        } else if n < self.read_size / 4 {
            self.read_size = (self.read_size / 2).max(READ_MIN);
        }
    }

    /// KiB to reserve before reading on, when a large packet has been announced and not yet
    /// reserved. Without a large packet pending, a reservation held is given back.
    fn large_reservation_needed(&mut self) -> Option<u32> {
        let size = Decoder::pending_packet_len(&self.rbuf).filter(|&n| n > LARGE_PACKET);
        match (size, &self.large) {
            (None, Some(_)) => {
                self.large = None;
                None
            }
            (Some(n), None) => {
                let kib = u32::try_from(n.div_ceil(1024)).unwrap_or(u32::MAX);
                // A packet larger than the whole budget may still come, alone.
                Some(kib.min(self.ctx.large_packet_permits))
            }
            (Some(n), Some(_)) => {
                // Read the rest of the packet in one go rather than in small chunks.
                self.rbuf.reserve(n.saturating_sub(self.rbuf.len()));
                None
            }
            (None, None) => None,
        }
    }

    /// Decodes every whole packet in the read buffer and passes it on. Only when the router's
    /// queue is full does this wait, on a boxed send: the connection task's future must not
    /// hold packets across its await points (it is per-connection memory).
    async fn decode_all(&mut self, state: &mut ConnState) -> Result<(), End> {
        loop {
            let pending = match self.decode_some(state)? {
                None => return Ok(()),
                Some(msg) => Box::pin(self.ctx.router.send(msg)),
            };
            if pending.await.is_err() {
                return Err(End::Closed);
            }
        }
    }

    /// Decodes and forwards packets until the buffer has no whole packet left (`None`) or the
    /// router's queue is full (the packet that did not fit is returned).
    fn decode_some(&mut self, state: &mut ConnState) -> Result<Option<ToRouter>, End> {
        loop {
            let mut packet = match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(None),
                Err(e) => {
                    let text = match e {
                        DecodeError::TooLarge { .. } => "packet larger than max_packet_size",
                        DecodeError::TopicNameInvalid(_) => "invalid topic name",
                        DecodeError::PayloadFormatInvalid => "payload is not UTF-8 as announced",
                        _ => "malformed packet",
                    };
                    return Err(End::Violation(Violation {
                        reason: e.reason_code(),
                        text,
                    }));
                }
            };
            self.ctx
                .counters
                .packets_received
                .fetch_add(1, Ordering::Relaxed);
            let now = Instant::now();
            match state.inbound(now, &mut packet) {
                Err(v) => return Err(End::Violation(v)),
                Ok(false) => self.encode(&Packet::PingResp),
                Ok(true) => {
                    let msg = ToRouter::Packet {
                        conn: self.conn,
                        packet,
                    };
                    match self.ctx.router.try_send(msg) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(msg)) => return Ok(Some(msg)),
                        Err(mpsc::error::TrySendError::Closed(_)) => return Err(End::Closed),
                    }
                }
            }
        }
    }

    /// Encodes every packet the router queued, up to the write high-water mark; true when
    /// the router asked to close (after them).
    fn take_outbound(&mut self, state: &mut ConnState) -> bool {
        let mut closing = false;
        while !closing && self.wbuf.len() < WRITE_HIGH_WATER {
            self.outbox.drain(&mut self.drained, OUTBOX_BATCH);
            if self.drained.packets.is_empty() {
                return self.drained.close;
            }
            while let Some(mut p) = self.drained.packets.pop_front() {
                if let Packet::ConnAck(ack) = &p {
                    // A refused CONNECT: nothing may follow its CONNACK [MQTT-3.2.2-7].
                    if ack.reason.is_error() {
                        self.encode(&p);
                        self.drained.packets.clear();
                        return true;
                    }
                }
                state.outbound(&mut p);
                self.encode(&p);
            }
            closing = self.drained.close;
        }
        if self.drained.packets.capacity() > OUTBOX_BATCH / 4 {
            self.drained.packets.shrink_to_fit();
        }
        closing
    }

    fn encode(&mut self, p: &Packet) {
        if let Err(e) = p.encode(self.version, &mut self.wbuf) {
            tracing::warn!(error = %e, packet = p.name(), "could not encode packet; not sent");
            return;
        }
        self.ctx
            .counters
            .packets_sent
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Closes gently: our side is shut down first, then what the client still sends is read
    /// and discarded for a moment. Closing with unread input makes the kernel send a reset,
    /// which can destroy the DISCONNECT or CONNACK we just sent before the client reads it.
    async fn linger(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.wr.write_all(&self.wbuf)).await;
        let _ = self.wr.shutdown().await;
        let drain = async {
            let mut budget = LINGER_MAX_BYTES;
            // On the heap: a stack array would sit in every connection task's future.
            let mut scratch = vec![0u8; 1024];
            while budget > 0 {
                match self.rd.read(&mut scratch).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => budget = budget.saturating_sub(n),
                }
            }
        };
        let _ = tokio::time::timeout(LINGER_TIME, drain).await;
    }

    /// Writes one packet at once (used just before closing).
    async fn write_now(&mut self, p: &Packet) {
        self.encode(p);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.wr.write_all(&self.wbuf)).await;
        self.wbuf.clear();
    }
}

/// One write of the buffered bytes, or a flush once they are all written (TLS keeps records
/// in its own buffer until flushed).
/// Sends a message to the router without waiting in the usual case; only when its queue is
/// full does this wait, on a boxed send (so the connection task's future stays small). False
/// when the router is gone.
async fn forward(router: &mpsc::Sender<ToRouter>, msg: Box<ToRouter>) -> bool {
    let pending = match router.try_send(*msg) {
        Ok(()) => return true,
        Err(mpsc::error::TrySendError::Full(msg)) => Box::pin(router.send(msg)),
        Err(mpsc::error::TrySendError::Closed(_)) => return false,
    };
    pending.await.is_ok()
}

async fn write_some<W: AsyncWrite + Unpin>(
    wr: &mut W,
    wbuf: &mut BytesMut,
    needs_flush: &mut bool,
) -> std::io::Result<usize> {
    if wbuf.is_empty() {
        wr.flush().await?;
        *needs_flush = false;
        // Nothing left to write: give the buffer back (idle connections hold none).
        *wbuf = BytesMut::new();
        return Ok(0);
    }
    let n = wr.write(wbuf).await?;
    if n == 0 {
        return Err(std::io::ErrorKind::WriteZero.into());
    }
    wbuf.advance(n);
    *needs_flush = true;
    Ok(n)
}
