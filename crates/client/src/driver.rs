//! The tokio side: one task per client that owns the socket and the [`State`], reads and
//! writes without ever blocking one on the other, runs the keep-alive timer and reconnects.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use makelaar_proto::{
    ConnAck, Decoder, Packet, Properties, ProtocolVersion, ReasonCode, SubAck, Subscribe, UnsubAck,
    Unsubscribe,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, timeout, Instant};

use crate::error::Error;
use crate::message::{Message, PublishAck};
use crate::options::{ConnectOptions, Reconnect};
use crate::state::{describe, Reply, ServerLimits, State};
use crate::transport::{self, Reader, Writer};

/// Publishes queued inside the client (beyond the inflight window) before callers wait.
const MAX_QUEUED: usize = 1024;
/// Encoded bytes waiting for the socket before callers wait.
const MAX_OUT: usize = 1024 * 1024;
/// Decoded messages held before the socket is no longer read.
const MAX_DELIVERIES: usize = 256;
/// The largest packet MQTT can express, fixed header included.
const MAX_MQTT_PACKET: usize = 268_435_455 + 5;

/// A request from a [`Client`](crate::Client) handle to its task.
pub(crate) enum Command {
    Publish {
        msg: Message,
        reply: Option<Reply<PublishAck>>,
    },
    Subscribe {
        packet: Subscribe,
        reply: Reply<SubAck>,
    },
    Unsubscribe {
        packet: Unsubscribe,
        reply: Reply<UnsubAck>,
    },
    Disconnect {
        reason: ReasonCode,
        properties: Properties,
        reply: oneshot::Sender<()>,
    },
}

/// The state of the connection as last seen by the client's task.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// Connected right now (false while reconnecting and after the end).
    pub connected: bool,
    /// The broker resumed a session (CONNACK Session Present) on the latest connection.
    pub session_present: bool,
    /// The client identifier in use: the one given, or the one the broker assigned (5.0).
    pub client_id: String,
    /// The latest CONNACK's properties (5.0): assigned client id, response information,
    /// server keep alive, limits, user properties, ...
    pub connack_properties: Properties,
    /// The limits the broker announced.
    pub server_limits: ServerLimits,
    /// Successful connections so far: 1, plus one per reconnect.
    pub connections: u64,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub info: Mutex<ConnectionInfo>,
    /// Why the client ended (None: closed by the application).
    pub end: Mutex<Option<Error>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) struct Conn {
    r: Reader,
    w: Writer,
    rbuf: BytesMut,
    decoder: Decoder,
}

enum Exit {
    /// The application disconnected.
    Closed,
    /// Every Client handle was dropped.
    Dropped,
    /// The connection failed.
    Lost(Error),
}

fn lost(e: io::Error) -> Error {
    Error::io_lost(&e)
}

/// A 3.x CONNACK refusing a 5.0 CONNECT (`20 02 00 01`): a broker without MQTT 5.
fn v3_refusal(buf: &[u8]) -> Option<u8> {
    match buf {
        [0x20, 0x02, _, code, ..] if (1..=5).contains(code) => Some(*code),
        _ => None,
    }
}

/// TCP (and TLS), CONNECT, CONNACK, within the connect timeout.
pub(crate) async fn establish(
    opts: &ConnectOptions,
    state: &State,
    first: bool,
) -> Result<(Conn, ConnAck), Error> {
    let version = opts.version;
    let attempt = async {
        let (mut r, mut w) = transport::open(opts).await?;
        let connect = Packet::Connect(Box::new(state.connect_packet(opts, first)));
        tracing::debug!(target: "makelaar_client", "sending {}", describe(&connect));
        let mut buf = BytesMut::new();
        connect.encode(version, &mut buf)?;
        w.write_all(&buf).await.map_err(lost)?;
        w.flush().await.map_err(lost)?;
        let max_in = match opts.properties.maximum_packet_size {
            Some(n) if version.is_v5() => n as usize,
            _ => MAX_MQTT_PACKET,
        };
        let mut decoder = Decoder::new(max_in);
        decoder.set_version(version);
        let mut rbuf = BytesMut::with_capacity(8192);
        loop {
            if version == ProtocolVersion::V5 {
                if let Some(code) = v3_refusal(&rbuf) {
                    let reason = ReasonCode::from_v3_connack(code).unwrap_or(ReasonCode(code));
                    return Err(Error::ConnectionRefused {
                        reason,
                        code,
                        reason_string: Some("the broker does not speak MQTT 5".into()),
                    });
                }
            }
            match decoder.decode(&mut rbuf)? {
                Some(Packet::ConnAck(ack)) => {
                    tracing::debug!(target: "makelaar_client", "received {}", describe(&Packet::ConnAck(ack.clone())));
                    if ack.reason.is_error() {
                        return Err(Error::refused(
                            version,
                            ack.reason,
                            ack.properties.reason_string.clone(),
                        ));
                    }
                    return Ok((
                        Conn {
                            r,
                            w,
                            rbuf,
                            decoder,
                        },
                        ack,
                    ));
                }
                Some(Packet::Disconnect(d)) => {
                    return Err(Error::refused(
                        version,
                        d.reason,
                        d.properties.reason_string,
                    ))
                }
                Some(other) => {
                    return Err(Error::Protocol(format!(
                        "expected CONNACK, received {}",
                        other.name()
                    )))
                }
                None => {}
            }
            let n = r.read_buf(&mut rbuf).await.map_err(lost)?;
            if n == 0 {
                return Err(Error::ConnectionLost(
                    "the broker closed the connection without answering CONNECT".into(),
                ));
            }
        }
    };
    match timeout(opts.connect_timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(Error::ConnectTimeout {
            addr: opts.addr(),
            secs: opts.connect_timeout.as_secs().max(1),
        }),
    }
}

/// Records a new connection in the shared info.
pub(crate) fn connected(shared: &Shared, opts: &ConnectOptions, state: &State, ack: &ConnAck) {
    let mut info = lock(&shared.info);
    info.connected = true;
    info.session_present = ack.session_present;
    info.client_id = ack
        .properties
        .assigned_client_identifier
        .clone()
        .unwrap_or_else(|| opts.client_id.clone());
    info.connack_properties = ack.properties.clone();
    info.server_limits = state.server.clone();
    info.connections += 1;
}

fn apply(state: &mut State, cmd: Command, now: std::time::Instant) {
    match cmd {
        Command::Publish { msg, reply } => state.publish(msg, reply, now),
        Command::Subscribe { packet, reply } => state.subscribe(packet, Some(reply), now),
        Command::Unsubscribe { packet, reply } => state.unsubscribe(packet, Some(reply), now),
        // Handled by the callers.
        Command::Disconnect { reply, .. } => {
            let _ = reply.send(());
        }
    }
}

/// The client's task: runs connections until the application disconnects, every handle is
/// dropped, or the connection is lost for good.
pub(crate) async fn run(
    opts: ConnectOptions,
    mut state: State,
    mut conn: Conn,
    mut cmds: mpsc::Receiver<Command>,
    msgs: mpsc::Sender<Message>,
    shared: Arc<Shared>,
) {
    let end = loop {
        let exit = connection(&mut conn, &mut state, &mut cmds, &msgs).await;
        state.on_disconnected();
        lock(&shared.info).connected = false;
        match exit {
            Exit::Closed | Exit::Dropped => break None,
            Exit::Lost(e) => {
                tracing::debug!(target: "makelaar_client", "{e}");
                let Some(policy) = opts.reconnect else {
                    break Some(e);
                };
                match reconnect(&opts, &mut state, policy, &mut cmds, &msgs, &shared, e).await {
                    Ok(c) => conn = c,
                    Err(Exit::Lost(e)) => break Some(e),
                    Err(_) => break None,
                }
            }
        }
    };
    let why = end.clone().unwrap_or(Error::Closed);
    state.fail_all(&why);
    *lock(&shared.end) = end;
    cmds.close();
    while let Ok(cmd) = cmds.try_recv() {
        if let Command::Disconnect { reply, .. } = cmd {
            let _ = reply.send(());
        }
    }
    // What was received before the end still reaches the application.
    for m in state.deliveries.drain(..) {
        if msgs.send(m).await.is_err() {
            break;
        }
    }
}

async fn write_some(w: &mut Writer, out: &mut BytesMut, need_flush: &mut bool) -> io::Result<()> {
    if out.is_empty() {
        w.flush().await?;
        *need_flush = false;
        return Ok(());
    }
    let n = w.write(out).await?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "the socket accepts no more data",
        ));
    }
    out.advance(n);
    *need_flush = true;
    Ok(())
}

/// Writes what is left and closes the socket, within a few seconds.
async fn close(conn: &mut Conn, state: &mut State, shutdown: bool) {
    let _ = timeout(Duration::from_secs(5), async {
        conn.w.write_all(&state.out).await?;
        conn.w.flush().await?;
        if shutdown {
            conn.w.shutdown().await?;
        }
        Ok::<(), io::Error>(())
    })
    .await;
    state.out.clear();
}

/// Handles every complete packet in the read buffer. On a protocol violation by the broker,
/// tells it why (DISCONNECT with a reason code) and closes.
async fn decode_buffered(conn: &mut Conn, state: &mut State) -> Result<(), Error> {
    loop {
        let err = match conn.decoder.decode(&mut conn.rbuf) {
            Ok(Some(p)) => match state.handle_packet(p, std::time::Instant::now()) {
                Ok(()) => continue,
                Err(e @ Error::Protocol(_)) => (e, ReasonCode::PROTOCOL_ERROR),
                Err(e) => return Err(e),
            },
            Ok(None) => return Ok(()),
            Err(e) => {
                let reason = e.reason_code();
                (e.into(), reason)
            }
        };
        state.disconnect(err.1, Properties::default(), std::time::Instant::now());
        close(conn, state, true).await;
        return Err(err.0);
    }
}

/// One connection's loop.
async fn connection(
    conn: &mut Conn,
    state: &mut State,
    cmds: &mut mpsc::Receiver<Command>,
    msgs: &mpsc::Sender<Message>,
) -> Exit {
    let mut need_flush = false;
    // The broker may have sent more right behind CONNACK (a resumed session's messages).
    if let Err(e) = decode_buffered(conn, state).await {
        return Exit::Lost(e);
    }
    loop {
        let accept = state.queued() < MAX_QUEUED && state.out.len() < MAX_OUT;
        let read = state.deliveries.len() < MAX_DELIVERIES;
        let deadline = state.poll_timeout().map(Instant::from_std);
        let write = !state.out.is_empty() || need_flush;
        if conn.rbuf.capacity() - conn.rbuf.len() < 4096 {
            conn.rbuf.reserve(16 * 1024);
        }
        tokio::select! {
            r = conn.r.read_buf(&mut conn.rbuf), if read => {
                match r {
                    Ok(0) => {
                        return Exit::Lost(Error::ConnectionLost(
                            "the broker closed the connection".into(),
                        ))
                    }
                    Err(e) => return Exit::Lost(lost(e)),
                    Ok(_) => {
                        if let Err(e) = decode_buffered(conn, state).await {
                            return Exit::Lost(e);
                        }
                    }
                }
            }
            r = write_some(&mut conn.w, &mut state.out, &mut need_flush), if write => {
                if let Err(e) = r {
                    return Exit::Lost(lost(e));
                }
            }
            cmd = cmds.recv(), if accept => match cmd {
                None => {
                    // Every handle is gone: write what is pending and close without
                    // DISCONNECT, as if the process ended (the broker publishes the will).
                    close(conn, state, false).await;
                    return Exit::Dropped;
                }
                Some(Command::Disconnect { reason, properties, reply }) => {
                    state.disconnect(reason, properties, std::time::Instant::now());
                    close(conn, state, true).await;
                    let _ = reply.send(());
                    return Exit::Closed;
                }
                Some(cmd) => apply(state, cmd, std::time::Instant::now()),
            },
            permit = msgs.reserve(), if !state.deliveries.is_empty() => match permit {
                Ok(p) => {
                    if let Some(m) = state.deliveries.pop_front() {
                        p.send(m);
                    }
                }
                Err(_) => {
                    state.discard_deliveries = true;
                    state.deliveries.clear();
                }
            },
            _ = sleep_until(deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400))), if deadline.is_some() => {
                if let Err(e) = state.handle_timeout(std::time::Instant::now()) {
                    return Exit::Lost(e);
                }
            }
        }
    }
}

/// Refusals that trying again will not change.
fn is_final(e: &Error) -> bool {
    match e {
        Error::ConnectionRefused { reason, .. } => matches!(
            *reason,
            ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
                | ReasonCode::CLIENT_IDENTIFIER_NOT_VALID
                | ReasonCode::BAD_USER_NAME_OR_PASSWORD
                | ReasonCode::NOT_AUTHORIZED
                | ReasonCode::BANNED
                | ReasonCode::BAD_AUTHENTICATION_METHOD
        ),
        Error::DisconnectedByServer { reason, .. } => *reason == ReasonCode::SESSION_TAKEN_OVER,
        _ => false,
    }
}

/// Waits, tries again, waits longer, ... Commands are taken (and queued) meanwhile.
async fn reconnect(
    opts: &ConnectOptions,
    state: &mut State,
    policy: Reconnect,
    cmds: &mut mpsc::Receiver<Command>,
    msgs: &mpsc::Sender<Message>,
    shared: &Shared,
    first: Error,
) -> Result<Conn, Exit> {
    if is_final(&first) {
        return Err(Exit::Lost(first));
    }
    let mut delay = policy.initial_delay;
    let mut failures = 0u32;
    let mut last = first;
    loop {
        if policy.max_attempts.is_some_and(|max| failures >= max) {
            return Err(Exit::Lost(last));
        }
        let wake = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = sleep_until(wake) => break,
                cmd = cmds.recv(), if state.queued() < MAX_QUEUED => match cmd {
                    None => return Err(Exit::Dropped),
                    Some(Command::Disconnect { reply, .. }) => {
                        let _ = reply.send(());
                        return Err(Exit::Closed);
                    }
                    Some(cmd) => apply(state, cmd, std::time::Instant::now()),
                },
                permit = msgs.reserve(), if !state.deliveries.is_empty() => match permit {
                    Ok(p) => {
                        if let Some(m) = state.deliveries.pop_front() {
                            p.send(m);
                        }
                    }
                    Err(_) => {
                        state.discard_deliveries = true;
                        state.deliveries.clear();
                    }
                },
            }
        }
        tracing::debug!(target: "makelaar_client", "reconnecting to {}", opts.addr());
        match establish(opts, state, false).await {
            Ok((conn, ack)) => {
                state.on_connected(&ack, std::time::Instant::now());
                connected(shared, opts, state, &ack);
                return Ok(conn);
            }
            Err(e) if is_final(&e) => return Err(Exit::Lost(e)),
            Err(e) => {
                tracing::debug!(target: "makelaar_client", "reconnect failed: {e}");
                last = e;
                failures += 1;
                delay = (delay * 2).min(policy.max_delay);
            }
        }
    }
}
