//! The connected phase of a connection: one poll loop over the stream, the outbox and the
//! decoder. It does all the work that is ready each time the task is woken (encode what the
//! router queued, write, read, decode) and leaves the poll loop only to wait for the router's
//! queue or for the large-packet budget, on boxed futures.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::BytesMut;
use makelaar_core::conn::{ConnState, Inbound, Outbound, Violation};
use makelaar_core::session::ConnId;
use makelaar_core::CloseReason;
use makelaar_proto::{ConnAck, Decoder, Packet, ProtocolVersion, ReasonCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_util::io::{poll_read_buf, poll_write_buf};

use super::log::{self, Who};
use super::ConnCtx;
use crate::counters::Tally;
use crate::outbox::{millis, Drained, Outbox};
use crate::router::ToRouter;
use tokio::io::ReadBuf;

/// Stop reading from the client and from the router while this many bytes wait to be written:
/// a client that does not read is not fed more work.
const WRITE_HIGH_WATER: usize = 256 * 1024;
/// Packets larger than this reserve their size from the broker-wide large-packet budget
/// before they are read.
const LARGE_PACKET: usize = 64 * 1024;
/// Smallest read buffer: what a quiet connection holds (memory per idle client matters).
const READ_MIN: usize = 256;
/// Largest read size a busy connection grows to.
const READ_MAX: usize = 64 * 1024;
/// Packets taken from the outbox per lock.
const OUTBOX_BATCH: usize = 64;
/// Rounds of work in one poll before the task yields to others on its worker.
const ROUNDS_PER_POLL: usize = 16;
/// How long a drain waits for bytes the socket may have that tokio has not seen yet (see
/// `Io::drain`): what a half-open connection costs the client that takes it over.
const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_millis(3);
/// At most this much of a client's input is read by one drain.
const DRAIN_MAX_BYTES: usize = 256 * 1024;

/// How a connection ended.
pub(super) enum End {
    /// The router closed it (DISCONNECT handled, takeover, refused CONNECT, shutdown).
    Closed(CloseReason),
    /// The socket ended (no error) or failed.
    Lost(&'static str, Option<std::io::Error>),
    /// The client broke the protocol.
    Violation(Violation),
}

/// How a connection ends when the router is gone: the broker is stopping.
const ROUTER_GONE: CloseReason = CloseReason::Server(ReasonCode::SERVER_SHUTTING_DOWN);

/// What the poll loop needs the async side for.
enum Step {
    End(End),
    /// The router's queue is full: wait for room for this message (boxed: this is rare,
    /// and a packet held inline would sit in every connection's future).
    RouterFull(Box<ToRouter>),
    /// A large packet is announced: reserve this many KiB of the budget first.
    Reserve(u32),
    /// The router asked for a drain (`core::Action::Drain`).
    Drain,
    /// What was read came in after another connection's bytes that are not forwarded yet:
    /// let that one forward first (see `arrival`).
    LetEarlierForward,
}

pub(super) struct Io<S> {
    stream: S,
    rbuf: BytesMut,
    wbuf: BytesMut,
    decoder: Decoder,
    pub(super) version: ProtocolVersion,
    pub(super) conn: ConnId,
    pub(super) peer: SocketAddr,
    pub(super) ctx: Arc<ConnCtx>,
    outbox: Arc<Outbox>,
    /// The reservation for the large packet being received, if any.
    large: Option<OwnedSemaphorePermit>,
    /// How much to reserve for the next read (see `prepare_read`).
    read_size: usize,
    /// The outbox was found ready and not yet emptied.
    outbox_pending: bool,
    /// The read buffer may hold whole packets not yet decoded.
    undecoded: bool,
    /// Written bytes not yet flushed (TLS keeps records in its own buffer until flushed).
    needs_flush: bool,
    /// The router asked to close once what it queued is written, for this reason.
    closing: Option<CloseReason>,
    /// Who the client is, while connections are logged (see `log`).
    pub(super) who: Option<Box<Who>>,
    /// The client sent DISCONNECT with this reason: its socket closing next is no loss.
    pub(super) goodbye: Option<ReasonCode>,
    /// A connection to wake after the next write ([`Outbox::wake_after`]).
    then_wake: Option<Arc<Outbox>>,
    /// Bytes and packets counted since the last flush into the shared counters (once per
    /// wake-up, not per packet).
    tally: Tally,
    /// The arrival stamp of what was last read (see `arrival`).
    stamp: u64,
    /// The stamp this connection last let earlier ones forward for: once per stamp.
    waited: u64,
}

impl<S> Drop for Io<S> {
    fn drop(&mut self) {
        self.tally.flush(&self.ctx.counters);
        self.outbox.arrival().retire();
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Io<S> {
    pub(super) fn new(
        stream: S,
        rbuf: BytesMut,
        decoder: Decoder,
        version: ProtocolVersion,
        (conn, peer): (ConnId, SocketAddr),
        ctx: Arc<ConnCtx>,
        outbox: Arc<Outbox>,
    ) -> Io<S> {
        let undecoded = !rbuf.is_empty();
        Io {
            stream,
            rbuf,
            wbuf: BytesMut::new(),
            decoder,
            version,
            conn,
            peer,
            ctx,
            outbox,
            large: None,
            read_size: READ_MIN,
            outbox_pending: false,
            undecoded,
            needs_flush: false,
            closing: None,
            who: None,
            goodbye: None,
            then_wake: None,
            tally: Tally::default(),
            stamp: 0,
            waited: 0,
        }
    }

    /// Serves the connected client until the connection ends.
    pub(super) async fn serve(&mut self, state: &mut ConnState) -> End {
        let end = self.serve_connected(state).await;
        // Nothing read from here on is forwarded: the connection is no longer pending.
        self.outbox.arrival().retire();
        end
    }

    async fn serve_connected(&mut self, state: &mut ConnState) -> End {
        // The stream is polled with the outbox as its waker, which stamps the connection's
        // arrival when the reactor wakes it (see `arrival`).
        let stream_waker = Waker::from(self.outbox.clone());
        loop {
            match poll_fn(|cx| self.poll_work(cx, &stream_waker, state)).await {
                Step::End(end) => return end,
                Step::RouterFull(msg) => {
                    let router = self.ctx.router.clone();
                    if Box::pin(router.send(*msg)).await.is_err() {
                        return End::Closed(ROUTER_GONE);
                    }
                }
                Step::Reserve(kib) => {
                    let budget = self.ctx.large_packets.clone();
                    self.large = Box::pin(budget.acquire_many_owned(kib)).await.ok();
                }
                Step::LetEarlierForward => {
                    self.waited = self.stamp;
                    crate::arrival::let_earlier_forward(self.stamp).await;
                }
                Step::Drain => {
                    // Boxed: the drain's timer exists only while it runs.
                    if let Err(end) = Box::pin(self.drain(state)).await {
                        return end;
                    }
                }
            }
        }
    }

    /// Does every piece of work that is ready; `Pending` once none is (with the task
    /// registered with the outbox, and the stream with `stream_waker`, which wakes the task
    /// through the outbox), `Ready` when the async side is needed. What it counted goes into
    /// the shared counters once, at the end, and what it read has been forwarded: the
    /// connection is no longer pending (`arrival::Mark::clear`) — unless it is letting
    /// earlier ones forward first, and so still holds what it read.
    fn poll_work(
        &mut self,
        cx: &mut Context<'_>,
        stream_waker: &Waker,
        state: &mut ConnState,
    ) -> Poll<Step> {
        let mut io = Context::from_waker(stream_waker);
        let step = self.poll_rounds(cx, &mut io, state);
        self.tally.flush(&self.ctx.counters);
        if !matches!(step, Poll::Ready(Step::LetEarlierForward)) {
            self.outbox.arrival().clear();
        }
        step
    }

    /// `cx` is the task's context, `io` the stream's.
    fn poll_rounds(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut Context<'_>,
        state: &mut ConnState,
    ) -> Poll<Step> {
        for _ in 0..ROUNDS_PER_POLL {
            let mut progressed = false;
            if self.outbox.poll_ready(cx).is_ready() {
                self.outbox_pending = true;
            }
            if self.outbox.take_drain_request() {
                return Poll::Ready(Step::Drain);
            }
            if self.outbox.is_expired() && self.closing.is_none() {
                // [MQTT-3.1.2-24] nothing received for 1.5 × keep-alive.
                return Poll::Ready(Step::End(End::Violation(Violation::KeepAliveTimeout)));
            }
            let room = self.wbuf.len() < WRITE_HIGH_WATER;
            if self.outbox_pending && room && self.closing.is_none() {
                self.closing = self.take_outbound(state);
                progressed = true;
            }
            let written = self.poll_write(io);
            if let Some(next) = self.then_wake.take() {
                next.notify();
            }
            match written {
                Poll::Ready(Ok(())) => progressed = true,
                Poll::Ready(Err(end)) => return Poll::Ready(Step::End(end)),
                Poll::Pending => {}
            }
            if let Some(why) = self.closing {
                if self.wbuf.is_empty() && !self.needs_flush {
                    return Poll::Ready(Step::End(End::Closed(why)));
                }
            }
            if self.closing.is_some() || self.wbuf.len() >= WRITE_HIGH_WATER {
                // Neither decode nor read while the client does not take what it is sent.
                if progressed {
                    continue;
                }
                return Poll::Pending;
            }
            if self.undecoded {
                if self.waited != self.stamp && crate::arrival::earlier_pending(self.stamp) {
                    return Poll::Ready(Step::LetEarlierForward);
                }
                match self.decode_some(state) {
                    Err(end) => return Poll::Ready(Step::End(end)),
                    Ok(Some(msg)) => return Poll::Ready(Step::RouterFull(Box::new(msg))),
                    Ok(None) => self.undecoded = false,
                }
                // All that was read is forwarded: later connections need not wait for this one.
                self.outbox.arrival().clear();
                // Decoding may have queued a reply (PINGRESP) to write.
                progressed = true;
            }
            if let Some(kib) = self.large_reservation_needed() {
                return Poll::Ready(Step::Reserve(kib));
            }
            self.prepare_read();
            match self.poll_read(io) {
                Poll::Ready(Ok(())) => progressed = true,
                Poll::Ready(Err(end)) => return Poll::Ready(Step::End(end)),
                Poll::Pending => {}
            }
            if !progressed {
                return Poll::Pending;
            }
        }
        // Plenty done: let the worker's other tasks run, and come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Forwards what the client has already sent, then tells the router it has
    /// (`ToRouter::Drained`): a CONNECT for this client id waits for that (see
    /// `core::broker::park`). What is buffered is decoded, and what the socket has ready is
    /// read, whatever is waiting to be written. The socket may hold bytes tokio has not seen
    /// yet (it learns readiness when its reactor turns), so once nothing is ready the drain
    /// waits up to `DRAIN_GRACE` for more, and it stops at `DRAIN_MAX_BYTES`, at the
    /// client's DISCONNECT (nothing after it counts) or when the connection ends: a half-open
    /// or chatty peer costs the waiting client only that moment.
    async fn drain(&mut self, state: &mut ConnState) -> Result<(), End> {
        let deadline = tokio::time::Instant::now() + DRAIN_GRACE;
        let mut budget = DRAIN_MAX_BYTES;
        while self.closing.is_none() && self.goodbye.is_none() {
            // Everything whole in the buffer goes to the router, in order.
            while let Some(msg) = self.decode_some(state)? {
                if !super::forward(&self.ctx.router, msg).await {
                    return Err(End::Closed(ROUTER_GONE));
                }
            }
            self.undecoded = false;
            if self.goodbye.is_some() || budget == 0 || self.large_reservation_needed().is_some() {
                break;
            }
            self.prepare_read();
            let before = self.rbuf.len();
            let read = poll_fn(|cx| Poll::Ready(self.poll_read(cx)));
            let read = match read.await {
                Poll::Ready(r) => r,
                // Nothing ready yet: wait for readiness, but only for the rest of the grace.
                Poll::Pending => {
                    let more = poll_fn(|cx| self.poll_read(cx));
                    match tokio::time::timeout_at(deadline, more).await {
                        Ok(r) => r,
                        Err(_) => break,
                    }
                }
            };
            read?;
            budget = budget.saturating_sub(self.rbuf.len().saturating_sub(before).max(1));
        }
        self.tally.flush(&self.ctx.counters);
        let msg = ToRouter::Drained { conn: self.conn };
        if !super::forward(&self.ctx.router, msg).await {
            return Err(End::Closed(ROUTER_GONE));
        }
        Ok(())
    }

    /// Writes what is buffered, or flushes once it is all written; `Ready(Ok)` when something
    /// was done.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), End>> {
        if self.wbuf.is_empty() {
            if !self.needs_flush {
                return Poll::Pending;
            }
            return match Pin::new(&mut self.stream).poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    self.needs_flush = false;
                    // Nothing left to write: give the buffer back (idle connections hold none).
                    self.wbuf = BytesMut::new();
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(End::Lost("write error", Some(e)))),
                Poll::Pending => Poll::Pending,
            };
        }
        match poll_write_buf(Pin::new(&mut self.stream), cx, &mut self.wbuf) {
            Poll::Ready(Ok(0)) => Poll::Ready(Err(End::Lost("write error", None))),
            Poll::Ready(Ok(n)) => {
                self.tally.bytes_sent += n as u64;
                self.needs_flush = true;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(End::Lost("write error", Some(e)))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Reads what the client sent; `Ready(Ok)` when bytes arrived.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), End>> {
        let read = if self.rbuf.capacity() == 0 {
            self.poll_read_quiet(cx)
        } else {
            let spare = self.rbuf.capacity() - self.rbuf.len();
            poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.rbuf).map_ok(|n| (n, spare))
        };
        match read {
            Poll::Ready(Ok((0, _))) => Poll::Ready(Err(End::Lost("closed by client", None))),
            Poll::Ready(Ok((n, spare))) => {
                self.tally.bytes_received += n as u64;
                self.stamp = self.outbox.arrival().stamp();
                self.outbox.heard(millis(Instant::now()));
                self.adapt_read_size(n, spare);
                self.undecoded = true;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(End::Lost("read error", Some(e)))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// A quiet connection holds no read buffer while it waits: it reads into the stack and
    /// copies what came into a fresh buffer. Returns (bytes read, room there was).
    fn poll_read_quiet(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<(usize, usize)>> {
        let mut scratch = [0u8; READ_MIN];
        let mut buf = ReadBuf::new(&mut scratch);
        match Pin::new(&mut self.stream).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => {
                let got = buf.filled();
                if !got.is_empty() {
                    self.rbuf.reserve(self.read_size.max(got.len()));
                    self.rbuf.extend_from_slice(got);
                }
                Poll::Ready(Ok((got.len(), READ_MIN)))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Gives the read buffer back when it is empty and the connection is quiet (or it grew
    /// large), and makes room in it when it is nearly full.
    fn prepare_read(&mut self) {
        if self.rbuf.is_empty()
            && (self.read_size == READ_MIN || self.rbuf.capacity() > self.read_size * 2)
        {
            self.rbuf = BytesMut::new();
        } else if self.rbuf.capacity() - self.rbuf.len() < READ_MIN / 2 {
            self.rbuf.reserve(self.read_size);
        }
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

    /// Decodes and forwards packets until the buffer has no whole packet left (`None`) or the
    /// router's queue is full (the packet that did not fit is returned).
    fn decode_some(&mut self, state: &mut ConnState) -> Result<Option<ToRouter>, End> {
        loop {
            let mut packet = match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(None),
                Err(e) => return Err(End::Violation(Violation::from_decode(&e))),
            };
            self.tally.packets_received += 1;
            match state.inbound(Instant::now(), &mut packet) {
                Err(v) => return Err(End::Violation(v)),
                Ok(Inbound::PingResp) => self.encode(&Packet::PingResp),
                Ok(Inbound::Owed) => {}
                Ok(Inbound::Route) => {
                    if let Packet::Disconnect(d) = &packet {
                        self.goodbye = Some(d.reason);
                    }
                    let msg = ToRouter::Packet {
                        conn: self.conn,
                        packet,
                    };
                    match self.ctx.router.try_send(msg) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(msg)) => return Ok(Some(msg)),
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            return Err(End::Closed(ROUTER_GONE))
                        }
                    }
                }
            }
        }
    }

    /// Encodes the packets the router queued, up to the write high-water mark; the reason
    /// when the router asked to close (after them). The batch buffer lives only during the
    /// call: an idle connection holds none, and a busy one pays one allocation per wake-up.
    fn take_outbound(&mut self, state: &mut ConnState) -> Option<CloseReason> {
        let mut drained = Drained::default();
        while self.wbuf.len() < WRITE_HIGH_WATER {
            let more = self.outbox.drain(&mut drained, OUTBOX_BATCH);
            self.outbox_pending = more;
            if let Some(next) = drained.then_wake.take() {
                if let Some(earlier) = self.then_wake.replace(next) {
                    earlier.notify();
                }
            }
            while let Some(mut p) = drained.packets.pop_front() {
                let after = state.outbound(&mut p);
                if let Packet::ConnAck(ack) = &p {
                    self.log_connack(ack);
                }
                self.encode(&p);
                match after {
                    Outbound::Continue => {}
                    Outbound::PingResps(owed) => {
                        for _ in 0..owed {
                            self.encode(&Packet::PingResp);
                        }
                    }
                    Outbound::Close(reason) => return Some(CloseReason::Server(reason)),
                }
            }
            if drained.close.is_some() {
                return drained.close;
            }
            if !more {
                break;
            }
        }
        None
    }

    /// The client's line in the log of who comes and goes, as its CONNACK goes out.
    fn log_connack(&mut self, ack: &ConnAck) {
        let Some(who) = self.who.as_deref_mut() else {
            return;
        };
        if ack.reason.is_error() {
            let id = (who.client_id.as_str(), who.username.as_deref());
            log::refused(id, self.peer, Some(self.version), who.transport, ack.reason);
        } else {
            log::connected(who, self.peer, self.version, ack);
        }
    }

    /// Encodes a packet into the write buffer.
    pub(super) fn encode(&mut self, p: &Packet) {
        if let Err(e) = p.encode(self.version, &mut self.wbuf) {
            tracing::warn!(error = %e, packet = p.name(), "could not encode packet; not sent");
            return;
        }
        self.tally.packets_sent += 1;
    }

    /// The stream and what is still to be written to it, for the closing steps.
    pub(super) fn stream_and_wbuf(&mut self) -> (&mut S, &mut BytesMut) {
        (&mut self.stream, &mut self.wbuf)
    }
}
