//! The Makelaar broker's tokio shell around the sans-IO core.
//!
//! - [`listener`]: binds `mqtt://`, `mqtts://`, `ws://` and `wss://` listeners and accepts;
//!   `opening` then reads the PROXY header, runs the TLS handshake and the WebSocket upgrade
//!   (`proxy_protocol`, `websocket`, `forwarded`), and `stream` is what MQTT runs on.
//! - [`http`]: the `http://` listener: `/metrics` (Prometheus) and `/healthz`.
//! - `connection`: one task per client: read, decode, per-connection checks, write.
//! - `router`: the one task that owns the core `Broker` (sessions, topic tree, retained).
//! - `sys`: the `$SYS/broker/...` topics.
//! - `bridge`: bridges to other brokers, one task each around `makelaar_core::bridge`.
//! - [`config`] and [`tls`]: configuration and certificates, with one-sentence errors;
//!   [`mosquitto`]: `mosquitto.conf` read into the same configuration.
//!
//! [`serve`] runs a broker until SIGINT/SIGTERM; [`Server::start`] runs one in-process (tests,
//! embedding) and hands back its bound addresses.

mod admin;
mod admission;
mod arrival;
mod auth;
mod bridge;
mod cert_name;
mod cluster;
pub mod config;
mod connection;
mod counters;
mod forwarded;
pub mod http;
pub mod listener;
mod metrics;
pub mod mosquitto;
mod opening;
mod outbox;
pub mod proxy_protocol;
mod reload;
mod router;
mod status;
mod store;
mod stream;
mod sys;
pub mod tls;
mod websocket;

#[cfg(test)]
mod layers_tests;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use makelaar_core::{Broker, Policy};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{Config, ConfigError};
use connection::ConnCtx;
/// The tracing target of the `info` lines about clients connecting, leaving and refused.
pub use connection::CLIENTS_TARGET;
pub use counters::{AuthFailure, Counters};
use listener::{Listener, STATUS_TARGET};
pub use reload::ReloadReport;
use router::Router;
use sys::SysPublisher;

/// Messages waiting for the router before connection tasks stop reading their sockets.
const ROUTER_QUEUE: usize = 4096;

/// A running broker.
pub struct Server {
    addrs: Vec<(String, SocketAddr)>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    router: tokio::task::JoinHandle<()>,
    reloader: reload::Reloader,
    /// The bridges stop first, while the router still serves their local sides.
    bridges_stop: CancellationToken,
    bridge_tasks: TaskTracker,
}

impl Server {
    /// Binds every listener (so a bad certificate or a port in use is reported before
    /// anything runs) and starts serving.
    pub async fn start(config: Config) -> Result<Server, ConfigError> {
        // The store first: a data directory in use or damaged stops the start before any
        // listener is announced.
        let opened = config.store().map(|sc| store::open(&sc)).transpose()?;
        // Then the password and ACL files: a broken line stops the start, naming it.
        let authenticator = Arc::new(auth::Authenticator::new(
            config.listeners.iter().map(|l| l.auth.clone()).collect(),
        )?);
        let acl = config.acl_file.as_deref().map(auth::load_acl).transpose()?;
        let acl_file = config.acl_file.clone();
        // The bridges are checked before a listener is announced (a bad certificate stops the
        // start).
        let (bridges, broker_id) = if config.bridges.is_empty() {
            (Vec::new(), String::new())
        } else {
            let data_dir = (!config.in_memory).then_some(config.data_dir.as_path());
            let id = bridge::broker_id(data_dir)?;
            let bridges = config
                .bridges
                .iter()
                .map(|b| bridge::Bridge::new(b.clone(), &id, config.limits.max_inflight_messages))
                .collect::<Result<Vec<_>, _>>()?;
            (bridges, id)
        };
        let shutdown = CancellationToken::new();
        // The cluster before the listeners: a NATS server that fsyncs lazily, or none that
        // answers, stops the start with its sentence, and MQTT ports open only once this
        // node holds its lease (a client never waits for a node still joining).
        let cluster = match &config.cluster {
            Some(settings) => Some(
                cluster::start(settings, shutdown.clone())
                    .await
                    .map_err(|e| ConfigError::Cluster(e.to_string()))?,
            ),
            None => None,
        };
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            listeners.push(Listener::bind(l).await?);
        }
        let addrs = listeners
            .iter()
            .map(|l| (l.url().to_owned(), l.local_addr()))
            .collect();
        let tls_slots = listeners.iter().filter_map(Listener::tls_slot).collect();
        let tasks = TaskTracker::new();
        let mut counters = Counters::default();
        if let (Some(link), Some(settings)) = (&cluster, &config.cluster) {
            counters.cluster = Some(counters::ClusterCounters {
                node: settings.node_name.clone(),
                stats: link.stats.clone(),
            });
        }
        let counters = Arc::new(counters);
        let (tx, rx) = mpsc::channel(ROUTER_QUEUE);
        let policy = Policy {
            deny_subscriptions: config.deny_subscriptions.clone(),
            response_information_prefix: "response/".into(),
            will_on_takeover: config.will_on_takeover,
            bridges: config
                .bridges
                .iter()
                .map(|b| (b.local_client_id.clone(), bridge::session_policy(b)))
                .collect(),
            bridge_filters: config
                .bridges
                .iter()
                .map(|b| (b.local_client_id.clone(), bridge::out_filters(b)))
                .collect(),
            // Stripped for ordinary clients even without bridges here: another broker's
            // bridge may bring it in.
            origin_property: Some(
                config
                    .bridges
                    .iter()
                    .find_map(|b| b.loop_guard.property.clone())
                    .unwrap_or_else(|| bridge::DEFAULT_ORIGIN_PROPERTY.to_owned()),
            ),
            broker_id: broker_id.clone(),
        };
        counters.set_bridges(bridges.iter().map(bridge::Bridge::counters).collect());
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut broker = Broker::new(config.limits.clone(), policy, seed);
        if let Some(acl) = acl {
            broker.set_authorizer(Some(Box::new(auth::AclAuthorizer(Arc::new(acl)))));
        }
        let (store_tx, store_rx) = mpsc::unbounded_channel();
        let persist = opened.map(|o| o.restore(&mut broker, store_tx));
        let sys = SysPublisher::new(config.sys_interval, Instant::now());
        let (cluster_side, cluster_rx) = match cluster {
            Some(link) => {
                broker.enable_cluster_export();
                if let Some(settings) = &config.cluster {
                    // Assigned ids unique across the cluster: they claim nothing.
                    broker.set_assigned_id_node(&settings.node_name);
                }
                (
                    Some(router::ClusterSide::new(
                        (link.to, link.batches),
                        link.stats,
                        link.room,
                        link.node,
                        config
                            .cluster
                            .as_ref()
                            .map(|s| s.checkpoint)
                            .unwrap_or_default(),
                        config.cluster.as_ref().is_none_or(|s| s.fence_late_appends),
                    )),
                    Some(link.from),
                )
            }
            None => (None, None),
        };
        let router = Router::new(broker, counters.clone(), sys, persist, cluster_side);
        let router = tokio::spawn(router.run(rx, store_rx, cluster_rx, shutdown.clone()));
        let permits = u32::try_from(config.limits.large_packet_budget / 1024)
            .unwrap_or(u32::MAX)
            .clamp(1, tokio::sync::Semaphore::MAX_PERMITS as u32);
        let mut reloader = reload::Reloader {
            auth: authenticator.clone(),
            acl_file,
            router: tx.clone(),
            tls: tls_slots,
            bridges: None,
            source: config.source.clone(),
            counters: counters.clone(),
        };
        let admission = admission::Admission::new(config.limits.max_connection_rate);
        // Each listener's connection count, named by the address it really bound.
        let counts: Vec<_> = listeners
            .iter()
            .zip(&config.listeners)
            .map(|(l, c)| {
                let max = match (l.kind().is_http(), c.max_connections) {
                    (true, 0) => http::DEFAULT_MAX_CONNECTIONS,
                    (_, n) => n,
                };
                let url = format!("{}://{}", l.kind().scheme(), l.local_addr());
                admission::ListenerCount::new(&url, max)
            })
            .collect();
        let started = Instant::now();
        // One context per HTTP listener: each has its own dashboard (its own password file).
        let http_ctx = |index: usize, url: String| {
            let dashboard = config.dashboard.enabled.then(|| {
                Arc::new(http::Dashboard::new(
                    (index, &url),
                    config.dashboard.clone(),
                    admin::Admin::new(tx.clone()),
                    authenticator.clone(),
                    counters.clone(),
                    started,
                ))
            });
            Arc::new(http::HttpCtx {
                router: tx.clone(),
                counters: counters.clone(),
                // Per listener: the scrapes of one listener share a snapshot.
                metrics: metrics::Metrics::new(
                    tx.clone(),
                    counters.clone(),
                    counts.clone(),
                    started,
                ),
                dashboard,
            })
        };
        let http_ctxs: Vec<Option<Arc<http::HttpCtx>>> = listeners
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let url = format!("{}://{}", l.kind(), l.local_addr());
                l.kind().is_http().then(|| http_ctx(i, url))
            })
            .collect();
        let max_inflight = config.limits.max_inflight_messages;
        let ctx = Arc::new(ConnCtx {
            limits: config.limits,
            large_packets: Arc::new(tokio::sync::Semaphore::new(permits as usize)),
            large_packet_permits: permits,
            router: tx,
            counters,
            auth: authenticator,
            admission,
        });
        let next_conn = Arc::new(AtomicU64::new(1));
        let bridges_stop = CancellationToken::new();
        let bridge_tasks = TaskTracker::new();
        let running = Arc::new(bridge::Bridges::new(
            bridge::Shared {
                ctx: ctx.clone(),
                next_conn: next_conn.clone(),
                tasks: tasks.clone(),
            },
            bridge_tasks.clone(),
            bridges_stop.clone(),
            broker_id,
            (!config.in_memory).then(|| config.data_dir.clone()),
            max_inflight,
        ));
        for b in bridges {
            running.start(b).await;
        }
        reloader.bridges = Some(running);
        for (index, (l, count)) in listeners.into_iter().zip(counts).enumerate() {
            let lc = config.listeners.get(index);
            if let Some(Some(http_ctx)) = http_ctxs.get(index) {
                tasks.spawn(http::accept_loop(
                    l,
                    count,
                    http_ctx.clone(),
                    tasks.clone(),
                    shutdown.clone(),
                ));
                continue;
            }
            let identity = lc.is_some_and(|c| c.auth.use_identity_as_username);
            tasks.spawn(accept_loop(
                (l, index, identity, count),
                ctx.clone(),
                next_conn.clone(),
                tasks.clone(),
                shutdown.clone(),
            ));
        }
        Ok(Server {
            addrs,
            shutdown,
            tasks,
            router,
            reloader,
            bridges_stop,
            bridge_tasks,
        })
    }

    /// Reads the password files, the ACL file and the certificates again (what SIGHUP does),
    /// keeping every connection. What fails to load keeps the old settings of its kind; the
    /// report and the log say what happened.
    pub async fn reload(&self) -> ReloadReport {
        self.reloader.reload().await
    }

    /// The bound address of each listener, with its URL as configured.
    pub fn local_addrs(&self) -> &[(String, SocketAddr)] {
        &self.addrs
    }

    /// Stops accepting, tells 5.0 clients DISCONNECT 0x8B (server shutting down), closes
    /// every connection and waits (at most a few seconds) for them to finish.
    pub async fn shutdown(self) {
        // Bridges first: their notifications say `0` and their local sessions close
        // normally while the router still runs.
        self.bridges_stop.cancel();
        self.bridge_tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(3), self.bridge_tasks.wait()).await;
        self.shutdown.cancel();
        let _ = self.router.await;
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(3), self.tasks.wait()).await;
    }
}

/// Runs a broker with `config` until SIGINT or SIGTERM, then shuts down gracefully. SIGHUP
/// reloads the password files, the ACL file and the certificates ([`Server::reload`]).
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let server = Server::start(config).await?;
    let stop = wait_for_signal();
    tokio::pin!(stop);
    let mut hangups = hangup_signals();
    // The broker stops on a signal, or by itself when its store fails.
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = server.shutdown.cancelled() => break,
            Some(()) = next_hangup(&mut hangups) => {
                server.reload().await;
            }
        }
    }
    tracing::info!(target: STATUS_TARGET, "shutting down");
    server.shutdown().await;
    Ok(())
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = Option<()>;

fn hangup_signals() -> Hangups {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: reloading by signal is off");
                None
            }
        }
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The next SIGHUP; never, where there are none.
async fn next_hangup(hangups: &mut Hangups) -> Option<()> {
    #[cfg(unix)]
    if let Some(h) = hangups {
        return h.recv().await;
    }
    let _ = hangups;
    std::future::pending().await
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn accept_loop(
    (listener, index, identity, count): (Listener, usize, bool, Arc<admission::ListenerCount>),
    ctx: Arc<ConnCtx>,
    next_conn: Arc<AtomicU64>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let Some((accepted, peer)) = listener.accept_until(&shutdown).await else {
            return;
        };
        let conn = next_conn.fetch_add(1, Ordering::Relaxed);
        // The listener's count now; the rate per address once the address is known (a
        // PROXY header or X-Forwarded-For may name another).
        let (counted, refuse) = ctx.admission.enter(&count);
        let start = Box::new(connection::Start {
            conn,
            peer,
            ctx: ctx.clone(),
            listener: index,
            cert_name: None,
            refuse,
            // Known once the handshake is done (`connection_task`).
            transport: "",
        });
        // Spawned directly: a wrapping `async` block would hold the whole task future twice.
        let accepted = Box::new(accepted);
        tasks.spawn(connection_task(
            accepted,
            start,
            (identity, counted),
            shutdown.clone(),
        ));
    }
}

/// One connection's task, from the PROXY header, TLS handshake and WebSocket upgrade to the
/// end. Its future is allocated at its largest for the connection's whole life, so the
/// opening (the TLS handshake alone is about 1.5 KB of state) and the shutdown timer are
/// boxed and the arguments come in one box.
async fn connection_task(
    accepted: Box<listener::Accepted>,
    mut start: Box<connection::Start>,
    // Whether the username comes from the certificate; the connection's place in the
    // listener's count, given back when the task ends.
    (identity, _counted): (bool, admission::Counted),
    stop: CancellationToken,
) {
    let max_message = start.ctx.limits.max_packet_size;
    let (stream, peer) = match Box::pin(accepted.open(max_message)).await {
        Ok(opened) => opened,
        Err(e) => {
            tracing::debug!(peer = %start.peer, error = %e, "connection not opened");
            return;
        }
    };
    // From here on the client's address is the one a trusted proxy named, if any.
    start.peer = peer;
    start.transport = stream.transport();
    if start.refuse.is_none() {
        start.refuse = start.ctx.admission.check_rate(peer.ip(), Instant::now());
    }
    if identity {
        // The end-entity certificate, verified by the handshake: its name is the username.
        start.cert_name = stream
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| cert_name::common_name(cert));
    }
    tokio::select! {
        _ = connection::run(stream, start) => {}
        // The router already sent DISCONNECT and Close; give writes a moment.
        _ = async {
            stop.cancelled().await;
            Box::pin(tokio::time::sleep(Duration::from_secs(2))).await
        } => {}
    }
}
