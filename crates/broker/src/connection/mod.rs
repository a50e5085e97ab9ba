//! One task per connection: reads and decodes the client's packets, has `core::conn` decide
//! what belongs to the connection (the first packet, `ConnState`, violations), forwards the
//! rest to the router, and writes what the router sends back, batching every ready packet
//! into one write. The rules are the core's; this module moves bytes and keeps the timers.
//!
//! Memory per idle connection matters (10,000s of them), and a task's future is allocated at
//! its largest: the CONNECT phase and the closing phase run as boxed futures that exist only
//! while they run, and the long-lived part (`Io::serve`) is a plain poll loop over one stream
//! with no timers in it (keep-alive is swept by the router, see `outbox`).

mod io;
mod log;

pub use log::CLIENTS_TARGET;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use makelaar_core::conn::{first_packet, refusal, ConnState, Opening, Violation, MAX_CONNECT_SIZE};
use makelaar_core::session::ConnId;
use makelaar_core::CloseReason;
use makelaar_core::Limits;
use makelaar_proto::{Connect, Decoder, ReasonCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};

use crate::auth::Authenticator;
use crate::outbox::Outbox;
use crate::router::ToRouter;
use crate::Counters;
use io::{End, Io};

const READ_CHUNK: usize = 4096;
/// How long and how much of a closing client's input is drained (see `linger`).
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_MAX_BYTES: usize = 256 * 1024;
/// How long a last write before closing may take.
const LAST_WRITE_TIME: Duration = Duration::from_secs(2);

pub(crate) struct ConnCtx {
    pub limits: Limits,
    /// Broker-wide budget for large packets being received, in KiB (see
    /// `Limits::large_packet_budget`).
    pub large_packets: Arc<Semaphore>,
    pub large_packet_permits: u32,
    pub router: mpsc::Sender<ToRouter>,
    pub counters: Arc<Counters>,
    pub auth: Arc<Authenticator>,
    pub admission: crate::admission::Admission,
}

/// The `listener` of an in-process connection (a bridge's local side): it is trusted, its
/// identity (the CONNECT's username) comes from the configuration, and no password is
/// checked.
pub(crate) const IN_PROCESS: usize = usize::MAX;

/// What a connection starts with.
pub(crate) struct Start {
    pub conn: ConnId,
    /// The client's address: the socket's peer, or the client a trusted proxy named.
    pub peer: SocketAddr,
    pub ctx: Arc<ConnCtx>,
    /// Index of the listener it came in on (its authentication settings).
    pub listener: usize,
    /// The Common Name of the client's verified certificate, where the listener takes
    /// usernames from certificates.
    pub cert_name: Option<String>,
    /// Over a connection limit (see `admission`): refused with this reason once its CONNECT
    /// is read.
    pub refuse: Option<ReasonCode>,
    /// What carries MQTT: "tcp", "tls", "ws" or "wss" (the stream's kind, for the log).
    pub transport: &'static str,
}

/// Serves one client until it leaves or is closed.
pub(crate) async fn run<S>(stream: S, start: Box<Start>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some((mut io, mut state)) = Box::pin(open(stream, start)).await else {
        return;
    };
    let end = io.serve(&mut state).await;
    Box::pin(close(io, end)).await;
}

/// Reads the CONNECT (within connect_timeout), hands it to the router and sets up the
/// connection's state; `None` when the connection ends here.
async fn open<S>(mut stream: S, start: Box<Start>) -> Option<(Io<S>, ConnState)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Start {
        conn,
        peer,
        ctx,
        listener,
        cert_name,
        refuse,
        transport,
    } = *start;
    let mut rbuf = BytesMut::new();
    let mut decoder =
        Decoder::new(ctx.limits.max_packet_size.min(MAX_CONNECT_SIZE as u32) as usize);
    let deadline = tokio::time::Instant::now() + ctx.limits.connect_timeout;
    // [MQTT-3.1.0-1] the first packet must be CONNECT, within connect_timeout.
    let read = read_connect(&mut stream, &mut rbuf, &mut decoder, &ctx);
    let mut connect = match tokio::time::timeout_at(deadline, read).await {
        Ok(Ok(c)) => c,
        Ok(Err(reply)) => {
            if let Some(bytes) = reply {
                let reason = ReasonCode::UNSUPPORTED_PROTOCOL_VERSION;
                log::refused(("", None), peer, None, transport, reason);
                let _ = tokio::time::timeout(LAST_WRITE_TIME, stream.write_all(&bytes)).await;
            }
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT within connect_timeout: closing");
            return None;
        }
    };
    if let Some(reason) = refuse {
        let counter = match reason {
            ReasonCode::QUOTA_EXCEEDED => &ctx.counters.refused_max_connections,
            _ => &ctx.counters.refused_connection_rate,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        refuse_connect(&mut stream, &connect, reason, (peer, transport)).await;
        return None;
    }
    // [MQTT-3.1.4-2] authentication, before the CONNECT goes any further: the password is
    // taken out here, and a refused client is answered and closed without the router.
    let verdict = if listener == IN_PROCESS {
        Ok(())
    } else {
        ctx.auth
            .authenticate(listener, peer.ip(), &mut connect, cert_name)
            .await
    };
    if let Err((reason, why)) = verdict {
        ctx.counters.auth_failed(why);
        refuse_connect(&mut stream, &connect, reason, (peer, transport)).await;
        return None;
    }
    decoder.set_max_packet_size(ctx.limits.max_packet_size as usize);
    let version = connect.protocol;
    let now = Instant::now();
    let state = ConnState::new(now, &connect, &ctx.limits);
    let outbox = Arc::new(Outbox::new(now, state.silence_limit()));
    tracing::debug!(%peer, client_id = %connect.client_id, protocol = ?version, "client connecting");
    let who = log::Who::new(
        &connect.client_id,
        connect.username.as_deref(),
        transport,
        connect.bridge,
    );
    let msg = ToRouter::Connect {
        conn,
        connect,
        out: outbox.clone(),
        peer,
    };
    if !forward(&ctx.router, msg).await {
        return None;
    }
    let mut io = Io::new(stream, rbuf, decoder, version, (conn, peer), ctx, outbox);
    io.who = who;
    Some((io, state))
}

/// Answers a CONNECT with a refusing CONNACK [MQTT-3.2.2-5] and closes.
async fn refuse_connect<S>(
    stream: &mut S,
    connect: &Connect,
    reason: ReasonCode,
    (peer, transport): (SocketAddr, &'static str),
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let who = (connect.client_id.as_str(), connect.username.as_deref());
    log::refused(who, peer, Some(connect.protocol), transport, reason);
    let mut out = BytesMut::new();
    let _ = refusal(connect.protocol, reason).encode(connect.protocol, &mut out);
    let _ = tokio::time::timeout(LAST_WRITE_TIME, stream.write_all(&out)).await;
    // [MQTT-3.2.2-7] nothing follows a refusing CONNACK: close.
    linger_stream(stream).await;
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
        match first_packet(decoder.decode(rbuf)) {
            Opening::ReadMore => {}
            Opening::Connect(c) => return Ok(c),
            Opening::NotConnect(packet) => {
                tracing::debug!(packet, "first packet is not CONNECT: closing");
                return Err(None);
            }
            Opening::Malformed(e) => {
                tracing::debug!(error = %e, "bad CONNECT: closing");
                return Err(None);
            }
            Opening::UnsupportedVersion { connack, encode_as } => {
                let mut out = BytesMut::new();
                let _ = connack.encode(encode_as, &mut out);
                return Err(Some(out.to_vec()));
            }
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

/// Ends the connection: tells a 5.0 client why when it broke the protocol
/// [MQTT-4.13.1-1], tells the router, and closes gently.
async fn close<S>(mut io: Io<S>, end: End)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (conn, peer) = (io.conn, io.peer);
    let msg = match &end {
        End::Closed(_) => None,
        End::Lost(why, _) => {
            tracing::debug!(%peer, why = *why, "connection lost");
            Some(ToRouter::Lost { conn })
        }
        End::Violation(v) => {
            tracing::debug!(%peer, reason = %v.reason(), text = v.text(), "closing connection: protocol violation");
            if *v == Violation::PublishRateTooHigh {
                io.ctx
                    .counters
                    .disconnected_publish_rate
                    .fetch_add(1, Ordering::Relaxed);
            }
            if let Some(last) = v.disconnect(io.version) {
                io.encode(&last);
            }
            Some(ToRouter::Violation {
                conn,
                violation: *v,
            })
        }
    };
    if let Some(msg) = msg {
        forward(&io.ctx.router, msg).await;
    }
    // Logged once the router has been told: a line in the log means the broker knows.
    if let Some(who) = &io.who {
        let how = match (&end, io.goodbye) {
            (End::Closed(why), _) => log::Ending::Closed(*why),
            // The router's close may not have come yet when the client, as it may, closes
            // its socket right after DISCONNECT.
            (End::Lost(..), Some(code)) => log::Ending::Closed(CloseReason::ClientDisconnect(code)),
            (End::Lost(_, error), None) => log::Ending::Lost(error.as_ref()),
            (End::Violation(v), _) => log::Ending::Violation(v),
        };
        log::disconnected(who, peer, io.version, how);
    }
    linger(&mut io).await;
}

/// Closes gently: what is buffered is written and our side shut down first, then what the
/// client still sends is read and discarded for a moment. Closing with unread input makes the
/// kernel send a reset, which can destroy the DISCONNECT or CONNACK we just sent before the
/// client reads it.
async fn linger<S: AsyncRead + AsyncWrite + Unpin>(io: &mut Io<S>) {
    let (stream, wbuf) = io.stream_and_wbuf();
    let _ = tokio::time::timeout(LAST_WRITE_TIME, stream.write_all(wbuf)).await;
    linger_stream(stream).await;
}

/// Shuts our side of `stream` down, then reads and discards what the client still sends for
/// a moment (see `linger`).
async fn linger_stream<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    let _ = tokio::time::timeout(LAST_WRITE_TIME, stream.shutdown()).await;
    let drain = async {
        let mut budget = LINGER_MAX_BYTES;
        let mut scratch = vec![0u8; 1024];
        while budget > 0 {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => budget = budget.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

/// Sends a message to the router without waiting in the usual case; only when its queue is
/// full does this wait, on a boxed send (so the connection task's future stays small). False
/// when the router is gone.
pub(crate) async fn forward(router: &mpsc::Sender<ToRouter>, msg: ToRouter) -> bool {
    let pending = match router.try_send(msg) {
        Ok(()) => return true,
        Err(mpsc::error::TrySendError::Full(msg)) => Box::pin(router.send(msg)),
        Err(mpsc::error::TrySendError::Closed(_)) => return false,
    };
    pending.await.is_ok()
}
