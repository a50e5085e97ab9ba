//! Bridges to other MQTT brokers: one task per bridge around the sans-IO relay
//! (`makelaar_core::bridge::Relay`, whose documentation explains the design).
//!
//! The task moves bytes and keeps time: its local side is an in-process MQTT connection
//! into this broker (a `tokio::io::duplex` pipe served by the same connection task the
//! listeners use, so the local session is an ordinary durable session, with every rule and
//! the store behind it), its remote side a TCP or TLS connection (`net`). It picks the
//! address (the first one is the primary, or round robin), waits between attempts
//! (`Backoff`), and reports to [`BridgeCounters`].

mod net;
mod settings;

use std::collections::HashMap;
use std::future::pending;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use makelaar_core::bridge::{is_v3_version_refusal, Backoff, End, LinkState, Output, Relay};
use makelaar_proto::{Decoder, Packet, ProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{BridgeConfig, ConfigError, StartType};
use crate::connection::{self, ConnCtx, IN_PROCESS};
use crate::counters::BridgeCounters;
use net::{Dialer, RemoteStream};

pub(crate) use settings::broker_id;

/// The loop guard's user property when no bridge names another.
pub(crate) const DEFAULT_ORIGIN_PROPERTY: &str = "makelaar-origin";

/// The pipe between a bridge and its local connection, each way.
const LOCAL_PIPE: usize = 256 * 1024;
/// Largest packet read from the remote.
const MAX_REMOTE_PACKET: usize = 256 * 1024 * 1024;
/// How long opening a connection to the remote (TCP and TLS) may take.
const OPEN_LIMIT: Duration = Duration::from_secs(10);
/// How long a closing connection's last bytes may take to be written.
const LAST_WRITE: Duration = Duration::from_secs(2);

type Stream = Box<dyn RemoteStream>;

/// A bridge, ready to run: its relay and what its task needs.
pub(crate) struct Bridge {
    config: BridgeConfig,
    relay: Relay,
    dialer: Dialer,
    counters: Arc<BridgeCounters>,
}

impl Bridge {
    /// Checks what can be checked before anything runs (TLS files).
    pub(crate) fn new(
        config: BridgeConfig,
        id: &str,
        max_inflight: u16,
    ) -> Result<Bridge, ConfigError> {
        let dialer = Dialer::new(&config)?;
        let settings = settings::relay_settings(&config, id, max_inflight);
        if let Some(lazy) = settings
            .lazy
            .filter(|l| u32::from(l.threshold) < config.threshold)
        {
            tracing::warn!(bridge = %config.name, threshold = config.threshold, max_inflight_messages = lazy.threshold, "start_type lazy: the threshold is above max_inflight_messages; the bridge connects at max_inflight_messages waiting messages");
        }
        let relay = Relay::new(settings, Instant::now());
        let counters = Arc::new(BridgeCounters::new(&config.name, &config.local_client_id));
        Ok(Bridge {
            config,
            relay,
            dialer,
            counters,
        })
    }

    pub(crate) fn counters(&self) -> Arc<BridgeCounters> {
        self.counters.clone()
    }

    /// One line for the start-up log: the name, what is carried, and where to.
    pub(crate) fn describe(&self) -> String {
        let addresses: Vec<String> = self
            .config
            .addresses
            .iter()
            .map(|a| format!("{}:{}", a.host, a.port))
            .collect();
        format!(
            "bridge \"{}\" started: {} topic line(s) to {}",
            self.config.name,
            self.config.topics.len(),
            addresses.join(", ")
        )
    }
}

/// The core's rules for a bridge's local session: its queue bounds.
pub(crate) fn session_policy(c: &BridgeConfig) -> makelaar_core::broker::BridgeSession {
    use crate::config::OverflowPolicy;
    use makelaar_core::broker::WhenFull;
    makelaar_core::broker::BridgeSession {
        max_queued_messages: usize::try_from(c.queue.max_messages).unwrap_or(usize::MAX),
        max_queued_bytes: usize::try_from(c.queue.max_bytes).unwrap_or(usize::MAX),
        when_full: match c.queue.when_full {
            OverflowPolicy::Reject => WhenFull::Reject,
            OverflowPolicy::DropOldest => WhenFull::DropOldest,
            OverflowPolicy::DropQos0First => WhenFull::DropQos0First,
        },
        max_age: c.queue.max_age,
    }
}

/// The filters the bridge's local session subscribes: one per `out` topic line.
pub(crate) fn out_filters(c: &BridgeConfig) -> Vec<String> {
    let mut filters: Vec<String> = settings::relay_settings(c, "", 1)
        .routes
        .iter()
        .filter(|r| r.out)
        .map(|r| r.local_filter())
        .collect();
    filters.dedup();
    filters
}

/// What the bridge tasks share with the server.
#[derive(Clone)]
pub(crate) struct Shared {
    pub ctx: Arc<ConnCtx>,
    pub next_conn: Arc<AtomicU64>,
    pub tasks: TaskTracker,
}

/// One side's reading half: the stream, its buffer and decoder.
struct Reader {
    rd: ReadHalf<Stream>,
    buf: BytesMut,
    decoder: Decoder,
    /// Before the remote's CONNACK: a 3.1.1 refusal of a 5.0 CONNECT is recognized from
    /// its bytes (it does not decode as 5.0).
    first: bool,
}

/// One side's writing half and what waits to be written.
struct Writer {
    wr: WriteHalf<Stream>,
    buf: BytesMut,
    version: ProtocolVersion,
}

impl Writer {
    fn push(&mut self, p: &Packet, bridge: &str) {
        if let Err(e) = p.encode(self.version, &mut self.buf) {
            tracing::error!(bridge, packet = p.name(), error = %e, "cannot encode a packet; it is not sent");
        }
    }
}

/// Writes what is left and closes, in the background.
fn close_later(shared: &Shared, w: Option<Writer>) {
    if let Some(mut w) = w {
        shared.tasks.spawn(async move {
            let _ = tokio::time::timeout(LAST_WRITE, async {
                let _ = w.wr.write_all(&w.buf).await;
                let _ = w.wr.shutdown().await;
            })
            .await;
        });
    }
}

async fn read_from(r: &mut Option<Reader>) -> std::io::Result<usize> {
    match r {
        Some(r) => {
            r.buf.reserve(16 * 1024);
            r.rd.read_buf(&mut r.buf).await
        }
        None => pending().await,
    }
}

async fn write_to(w: &mut Option<Writer>) -> std::io::Result<usize> {
    match w {
        Some(w) if !w.buf.is_empty() => w.wr.write(&w.buf).await,
        _ => pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => pending().await,
    }
}

/// Runs one bridge until `stop`, or until `when_down` while its link is down (a reload
/// with `reload_type = "lazy"`: the changed bridge takes over at the next reconnect).
pub(crate) async fn run(
    mut b: Bridge,
    shared: Shared,
    stop: CancellationToken,
    when_down: CancellationToken,
) {
    let name = b.config.name.clone();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id());
    let mut backoff = Backoff::new(settings::restart(b.config.restart), seed ^ 0x9e37_79b9);
    let (mut local_r, mut local_w): (Option<Reader>, Option<Writer>) = (None, None);
    let (mut remote_r, mut remote_w): (Option<Reader>, Option<Writer>) = (None, None);
    // When to connect to the remote next; `None`: not now.
    let mut connect_at: Option<Instant> = None;
    let mut at_once = true;
    let mut address = 0usize;
    let mut stopping = false;
    let mut attempts_done = 0u64;
    b.relay.start(Instant::now());
    loop {
        // Carry out what the relay decided.
        while let Some(o) = b.relay.poll_output() {
            match o {
                Output::Local(p) => {
                    if let Some(w) = local_w.as_mut() {
                        w.push(&p, &name);
                    }
                }
                Output::Remote(p) => {
                    if let Some(w) = remote_w.as_mut() {
                        w.push(&p, &name);
                    }
                }
                Output::ConnectLocal(c) => {
                    let (r, mut w) = open_local(&shared);
                    w.push(&Packet::Connect(c), &name);
                    local_r = Some(r);
                    local_w = Some(w);
                }
                Output::CloseLocal => {
                    local_r = None;
                    close_later(&shared, local_w.take());
                }
                Output::CloseRemote(why) => {
                    if !matches!(why, End::Shutdown | End::Fallback | End::Idle) {
                        b.counters.set_last_error(why.to_string());
                    }
                    remote_r = None;
                    close_later(&shared, remote_w.take());
                    if let Some(since) = b.relay.connected_at() {
                        backoff.connection_ended(since.elapsed());
                    }
                    at_once = why.retry_at_once();
                    if !b.config.round_robin && !at_once {
                        // Back to the primary after a link on another address ends.
                        address = 0;
                    }
                }
                Output::ConnectRemote => {
                    let once = matches!(b.config.start, StartType::Once) && attempts_done > 0;
                    if stopping || once {
                        connect_at = None;
                    } else {
                        let delay = if at_once {
                            Duration::ZERO
                        } else {
                            backoff.next_delay()
                        };
                        at_once = false;
                        connect_at = Some(Instant::now() + delay);
                        if !delay.is_zero() {
                            tracing::info!(bridge = %name, delay_ms = delay.as_millis() as u64, "reconnecting to the remote after a pause");
                        }
                    }
                }
            }
        }
        report(&b, &shared);
        if stopping && remote_w.is_none() && local_w.is_none() {
            break;
        }
        if b.relay.state() == LinkState::Stopped {
            close_later(&shared, local_w.take());
            close_later(&shared, remote_w.take());
            break;
        }
        let timeout = b.relay.poll_timeout();
        tokio::select! {
            _ = stop.cancelled(), if !stopping => {
                stopping = true;
                connect_at = None;
                b.relay.shutdown(Instant::now());
            }
            _ = when_down.cancelled(), if !stopping && !b.relay.is_connected() => {
                tracing::info!(bridge = %name, "the link is down: the reloaded settings take over (reload_type lazy)");
                stopping = true;
                connect_at = None;
                b.relay.shutdown(Instant::now());
            }
            n = read_from(&mut local_r) => match n {
                Ok(0) | Err(_) => {
                    local_r = None;
                    local_w = None;
                    b.relay.handle_local_lost(Instant::now());
                }
                Ok(_) => {
                    let now = Instant::now();
                    let mut broken = false;
                    if let Some(r) = local_r.as_mut() {
                        loop {
                            match r.decoder.decode(&mut r.buf) {
                                Ok(Some(p)) => b.relay.handle_local(now, p),
                                Ok(None) => break,
                                Err(e) => {
                                    tracing::error!(bridge = %name, error = %e, "cannot decode a packet from this broker: closing the local side");
                                    broken = true;
                                    break;
                                }
                            }
                        }
                    }
                    if broken {
                        local_r = None;
                        local_w = None;
                        b.relay.handle_local_lost(now);
                    }
                }
            },
            n = read_from(&mut remote_r) => match n {
                Ok(0) | Err(_) => {
                    if let Err(e) = &n {
                        tracing::warn!(bridge = %name, error = %e, "the connection to the remote broke");
                        b.counters.set_last_error(format!("the connection to the remote broke: {e}"));
                    } else {
                        tracing::warn!(bridge = %name, "the remote closed the connection");
                        b.counters.set_last_error("the remote closed the connection".into());
                    }
                    remote_r = None;
                    remote_w = None;
                    if let Some(since) = b.relay.connected_at() {
                        backoff.connection_ended(since.elapsed());
                    }
                    if !b.config.round_robin {
                        address = 0;
                    }
                    b.relay.handle_remote_lost(Instant::now());
                }
                Ok(_) => {
                    let now = Instant::now();
                    let mut broken = false;
                    if let Some(r) = remote_r.as_mut() {
                        if r.first && is_v3_version_refusal(&r.buf) && b.relay.version().is_v5() {
                            // [MQTT-3.1.2-2] a 3.1.1 server's answer to a level it does not
                            // support: fall back to 3.1.1 for good.
                            r.first = false;
                            b.relay.fallback_to_v311(now);
                        } else {
                            loop {
                                match r.decoder.decode(&mut r.buf) {
                                    Ok(Some(p)) => {
                                        r.first = false;
                                        b.relay.handle_remote(now, p);
                                    }
                                    Ok(None) => break,
                                    Err(e) => {
                                        tracing::warn!(bridge = %name, error = %e, "the remote sent a malformed packet: closing");
                                        broken = true;
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    if broken {
                        remote_r = None;
                        remote_w = None;
                        b.relay.handle_remote_lost(now);
                    }
                }
            },
            n = write_to(&mut local_w) => match n {
                Ok(n) if n > 0 => {
                    if let Some(w) = local_w.as_mut() {
                        let _ = w.buf.split_to(n);
                    }
                }
                _ => {
                    local_r = None;
                    local_w = None;
                    b.relay.handle_local_lost(Instant::now());
                }
            },
            n = write_to(&mut remote_w) => match n {
                Ok(n) if n > 0 => {
                    if let Some(w) = remote_w.as_mut() {
                        let _ = w.buf.split_to(n);
                    }
                }
                _ => {
                    remote_r = None;
                    remote_w = None;
                    b.relay.handle_remote_lost(Instant::now());
                }
            },
            () = sleep_until(timeout) => b.relay.handle_timeout(Instant::now()),
            () = sleep_until(connect_at) => {
                connect_at = None;
                attempts_done += 1;
                let addrs = &b.config.addresses;
                let i = address % addrs.len().max(1);
                let Some(addr) = addrs.get(i) else { break };
                b.counters.set_state(LinkState::Connecting);
                b.counters.set_address(format!("{}:{}", addr.host, addr.port));
                match b.dialer.connect(addr, OPEN_LIMIT).await {
                    Ok(stream) => {
                        tracing::info!(bridge = %name, remote = %format!("{}:{}", addr.host, addr.port), "connected to the remote; sending CONNECT");
                        let (rd, wr) = tokio::io::split(stream);
                        let connect = b.relay.remote_opened(Instant::now());
                        let version = connect.protocol;
                        let mut buf = BytesMut::new();
                        if let Err(e) = Packet::Connect(connect).encode(version, &mut buf) {
                            tracing::error!(bridge = %name, error = %e, "cannot encode the CONNECT");
                        }
                        let mut decoder = Decoder::new(MAX_REMOTE_PACKET);
                        decoder.set_version(version);
                        remote_r = Some(Reader { rd, buf: BytesMut::new(), decoder, first: true });
                        remote_w = Some(Writer { wr, buf, version });
                    }
                    Err(e) => {
                        tracing::warn!(bridge = %name, remote = %format!("{}:{}", addr.host, addr.port), error = %e, "cannot connect to the remote");
                        b.counters.set_last_error(format!("cannot connect to {}:{}: {e}", addr.host, addr.port));
                        address = address.wrapping_add(1);
                        let once = matches!(b.config.start, StartType::Once);
                        if !once {
                            connect_at = Some(Instant::now() + backoff.next_delay());
                        }
                    }
                }
            }
        }
    }
    b.counters.set_state(LinkState::Stopped);
    tracing::info!(bridge = %name, "bridge stopped");
}

/// Copies the relay's figures into the shared counters.
fn report(b: &Bridge, _shared: &Shared) {
    let s = b.relay.stats();
    let c = &b.counters;
    c.set_state(b.relay.state());
    c.connects.store(s.connects, Ordering::Relaxed);
    c.forwarded_out.store(s.forwarded_out, Ordering::Relaxed);
    c.forwarded_in.store(s.forwarded_in, Ordering::Relaxed);
    c.in_flight
        .store(b.relay.in_flight() as u64, Ordering::Relaxed);
    c.dropped_loop.store(s.dropped_loop, Ordering::Relaxed);
    c.dropped_other.store(
        s.dropped_no_route + s.dropped_too_large + s.refused_by_remote,
        Ordering::Relaxed,
    );
    c.downgraded.store(s.downgraded, Ordering::Relaxed);
}

/// Opens the local side: a pipe served by an ordinary connection task, trusted
/// (`IN_PROCESS`: its identity is the configured `local_username`).
fn open_local(shared: &Shared) -> (Reader, Writer) {
    let (ours, theirs) = tokio::io::duplex(LOCAL_PIPE);
    let start = Box::new(connection::Start {
        conn: shared.next_conn.fetch_add(1, Ordering::Relaxed),
        peer: SocketAddr::from(([127, 0, 0, 1], 0)),
        ctx: shared.ctx.clone(),
        listener: IN_PROCESS,
        cert_name: None,
        refuse: None,
        transport: "bridge",
    });
    shared.tasks.spawn(connection::run(theirs, start));
    let stream: Stream = Box::new(ours);
    let (rd, wr) = tokio::io::split(stream);
    let mut decoder = Decoder::new(MAX_REMOTE_PACKET);
    decoder.set_version(ProtocolVersion::V5);
    (
        Reader {
            rd,
            buf: BytesMut::new(),
            decoder,
            first: false,
        },
        Writer {
            wr,
            buf: BytesMut::new(),
            version: ProtocolVersion::V5,
        },
    )
}

/// The running bridges, by name: what a reload compares with the configuration, stops and
/// starts.
pub(crate) struct Bridges {
    running: tokio::sync::Mutex<HashMap<String, Running>>,
    shared: Shared,
    /// The bridges' tasks, waited for at shutdown.
    tasks: TaskTracker,
    /// Stops every bridge (shutdown); each bridge's own token is a child of it.
    stop_all: CancellationToken,
    broker_id: std::sync::Mutex<String>,
    data_dir: Option<std::path::PathBuf>,
    max_inflight: u16,
}

/// One running bridge.
struct Running {
    config: BridgeConfig,
    stop: CancellationToken,
    when_down: CancellationToken,
    done: CancellationToken,
    counters: Arc<BridgeCounters>,
}

/// What a reload of the bridges did.
#[derive(Debug, Default)]
pub(crate) struct BridgeChanges {
    pub started: Vec<String>,
    pub restarted: Vec<String>,
    pub at_next_reconnect: Vec<String>,
    pub stopped: Vec<String>,
}

impl BridgeChanges {
    pub(crate) fn is_empty(&self) -> bool {
        self.started.is_empty()
            && self.restarted.is_empty()
            && self.at_next_reconnect.is_empty()
            && self.stopped.is_empty()
    }
}

impl Bridges {
    pub(crate) fn new(
        shared: Shared,
        tasks: TaskTracker,
        stop_all: CancellationToken,
        broker_id: String,
        data_dir: Option<std::path::PathBuf>,
        max_inflight: u16,
    ) -> Bridges {
        Bridges {
            running: tokio::sync::Mutex::new(HashMap::new()),
            shared,
            tasks,
            stop_all,
            broker_id: std::sync::Mutex::new(broker_id),
            data_dir,
            max_inflight,
        }
    }

    /// Starts a bridge now.
    pub(crate) async fn start(&self, b: Bridge) {
        let running = self.launch(b, None);
        let name = running.config.name.clone();
        self.running.lock().await.insert(name, running);
    }

    /// Starts `b`, once `after` (the task of the bridge it replaces) has ended.
    fn launch(&self, b: Bridge, after: Option<CancellationToken>) -> Running {
        let stop = self.stop_all.child_token();
        let when_down = CancellationToken::new();
        let done = CancellationToken::new();
        let running = Running {
            config: b.config.clone(),
            stop: stop.clone(),
            when_down: when_down.clone(),
            done: done.clone(),
            counters: b.counters(),
        };
        let shared = self.shared.clone();
        self.tasks.spawn(async move {
            if let Some(after) = after {
                after.cancelled().await;
            }
            if !stop.is_cancelled() {
                tracing::info!(target: crate::status::STATUS_TARGET, "{}", b.describe());
                run(b, shared, stop, when_down).await;
            }
            done.cancel();
        });
        running
    }

    /// The counters of the running bridges, in the configuration's order.
    async fn counters(&self, order: &[BridgeConfig]) -> Vec<Arc<BridgeCounters>> {
        let running = self.running.lock().await;
        order
            .iter()
            .filter_map(|c| running.get(&c.name).map(|r| r.counters.clone()))
            .collect()
    }

    /// Puts `configs` in force: bridges not configured any more stop, new ones start,
    /// changed ones restart now (`reload_type = "immediate"`) or when their link is next
    /// down (`"lazy"`), unchanged ones carry on. Nothing changes when a bridge cannot be
    /// made (a TLS file that does not load): the error says which.
    pub(crate) async fn apply(
        &self,
        configs: &[BridgeConfig],
        router: &tokio::sync::mpsc::Sender<crate::router::ToRouter>,
        counters: &crate::counters::Counters,
    ) -> Result<BridgeChanges, ConfigError> {
        let id = {
            let known = self.broker_id.lock().map(|g| g.clone()).unwrap_or_default();
            if known.is_empty() && !configs.is_empty() {
                let id = broker_id(self.data_dir.as_deref())?;
                if let Ok(mut g) = self.broker_id.lock() {
                    g.clone_from(&id);
                }
                id
            } else {
                known
            }
        };
        let mut running = self.running.lock().await;
        // Make every new or changed bridge first: one that fails changes nothing.
        let mut made = Vec::new();
        for c in configs {
            if running.get(&c.name).is_some_and(|r| r.config == *c) {
                continue;
            }
            made.push(Bridge::new(c.clone(), &id, self.max_inflight)?);
        }
        let sessions = configs
            .iter()
            .map(|b| (b.local_client_id.clone(), session_policy(b)))
            .collect();
        let filters = configs
            .iter()
            .map(|b| (b.local_client_id.clone(), out_filters(b)))
            .collect();
        let _ = router
            .send(crate::router::ToRouter::SetBridgeSessions(
                sessions,
                filters,
                id.clone(),
            ))
            .await;
        let mut changes = BridgeChanges::default();
        let names: Vec<String> = running.keys().cloned().collect();
        for name in names {
            if configs.iter().all(|c| c.name != name) {
                if let Some(r) = running.remove(&name) {
                    r.stop.cancel();
                    changes.stopped.push(name);
                }
            }
        }
        for mut b in made {
            let name = b.config.name.clone();
            if let Some(old) = running.get(&name) {
                // The replacement reports where the old one did (the old one runs on until
                // its task ends, for `lazy` until its link is down).
                if old.counters.local_client_id == b.config.local_client_id {
                    b.counters = old.counters.clone();
                }
            }
            let after = match running.get(&name) {
                None => {
                    changes.started.push(name.clone());
                    None
                }
                Some(old) => {
                    match b.config.reload {
                        crate::config::ReloadType::Immediate => {
                            old.stop.cancel();
                            changes.restarted.push(name.clone());
                        }
                        crate::config::ReloadType::Lazy => {
                            old.when_down.cancel();
                            changes.at_next_reconnect.push(name.clone());
                        }
                    }
                    Some(old.done.clone())
                }
            };
            let r = self.launch(b, after);
            running.insert(name, r);
        }
        drop(running);
        counters.set_bridges(self.counters(configs).await);
        Ok(changes)
    }
}
