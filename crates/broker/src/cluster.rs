//! The tokio side of the cluster (issue 14, docs/cluster.md): the one owner of this node's
//! `makelaar_cluster::Cluster` over NATS. The router talks to it by messages only
//! ([`ToCluster`] and, straight to the writer, [`Batch`] in; [`FromCluster`] out); nothing
//! here touches the router's state.
//!
//! Tasks, each owning what it touches:
//!
//! - the **writer** takes the router's batches in order: QoS 0 messages are published on
//!   their live subjects, QoS 1/2 messages appended to their partition streams (on disk on a
//!   majority when the append returns), retained ones set in the cluster's bucket; then it
//!   reports the batch's epoch, and the router releases the acknowledgements that waited for
//!   it (`FromCluster::Appended`). Batches are pipelined (the next one's writes go out while
//!   earlier ones wait for NATS), and their epochs reported in order. A will's writes that
//!   fail are tried again in a task of their own (it has no publisher to send it again),
//!   its append under a deduplication id; the router hears that its append is retried
//!   (before the batch's report) and where it landed, as the replays of the sessions taken
//!   in meanwhile wait for it (`router::ReplayStage::ForWills`);
//! - the **reader** follows the node's distinct local filters on core NATS (one NATS
//!   subscription per filter, whatever the number of sessions: the core counts them; all
//!   polled by the task that takes [`ToCluster`], no task per filter) and hands each QoS 0
//!   message from another node to the router once, even when several of the node's filters
//!   match it;
//! - per partition a **follower** reads the partition stream (one ordered consumer without
//!   a filter per node and partition, the delivery path chosen in docs/cluster.md) and hands
//!   the router the messages other nodes appended, with their sequence; this node's own were
//!   routed when they were published and go as their position only (where a leaving
//!   session stands, `makelaar_cluster::replay`);
//! - a **replay** per session taken in from a record that says where it stood: a temporary
//!   read of each partition with something to read, handed to the router at once;
//! - the **retained watch** keeps the node's retained messages equal to the cluster's;
//! - the **sessions** task writes the session records (a connection's will included) this
//!   node owns, one at a time, each fenced; a will the core says is due goes with the write
//!   that takes it out of its record, and is published only if that write wins
//!   (`makelaar_cluster::wills::verdict`); while the node is stepped down it writes nothing
//!   and publishes no will, and tries again once it serves; a hand-over's answer waits
//!   for the client's record that waits to be written again (2 s at most), so the claiming
//!   node reads this node's last one;
//! - the **lease** task, and one short task per client-id claim or hand-over, and per dead
//!   node this node reaps (its sessions taken over, its due wills published:
//!   `makelaar_cluster::wills`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::stream::AbortHandle;
use futures_util::StreamExt;
use makelaar_cluster::backend::Backend;
use makelaar_cluster::barrier::BarrierClaim;
use makelaar_cluster::cluster::{
    Cluster, ClusterConfig, Followed, GivenUp, LeaseEvent, Orphans, RecordWriter, ReleaseRequest,
    TakenWill,
};
use makelaar_cluster::envelope::{Envelope, Expiry};
use makelaar_cluster::lease::Expired;
use makelaar_cluster::nats::{NatsBackend, NatsConfig, NatsStartError};
use makelaar_cluster::partition::PartitionCount;
use makelaar_cluster::record::{
    Cursor, Outbound, OutboundState, SessionRecord, StoredSubscription, StoredWill, WillTaker,
};
use makelaar_cluster::replay::{place_in_log, ReplayPlan};
use makelaar_cluster::share::ShareGroup;
use makelaar_cluster::takeover::Fence;
use makelaar_cluster::wills::{self, WillVerdict};
use makelaar_cluster::{ClientKey, NodeId, Revision};
use makelaar_core::broker::{
    session_left, will_wait, Exported, FilterChange, KeptMessage, KeptWill, RemoteWill,
    SessionSnapshot,
};
use makelaar_core::message::{LogPosition, Message};
use makelaar_core::persist::KeptState;
use makelaar_core::session::ConnId;
use makelaar_core::session::Subscription;
use makelaar_proto::ProtocolVersion;
use makelaar_proto::{Properties, QoS, Will};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::ClusterSettings;
use makelaar_cluster::stats::NodeStats;
use std::sync::atomic::Ordering::Relaxed;

/// How long setting up the buckets and streams is tried at start-up.
const SETUP_PATIENCE: Duration = Duration::from_secs(30);

/// Messages from the cluster waiting for the router before the cluster's readers wait.
const FROM_CLUSTER_QUEUE: usize = 4096;

/// What one router batch accepted, in order, for the writer: sent to it straight from the
/// router (not through the task that takes [`ToCluster`]), one task hop fewer on every
/// message's way to NATS. With an epoch, acknowledgements wait for `FromCluster::Appended`
/// with it. Each message goes with the claim its publisher's connection is registered
/// under (none for a will): its envelope names it, so that every reader drops it should it
/// be appended after a newer claim's barrier (`makelaar_cluster::barrier`).
pub(crate) struct Batch {
    pub(crate) epoch: Option<u64>,
    pub(crate) messages: Vec<(Exported, Option<Revision>)>,
}

/// What the router tells the cluster.
pub(crate) enum ToCluster {
    /// The node's distinct filters changed.
    Filters(Vec<FilterChange>),
    /// A CONNECT with this client id waits for its claim.
    Claim { conn: ConnId, client_id: Arc<str> },
    /// The router closed the local connection a hand-over request asked for (or had none):
    /// mark the registry entry and answer.
    Released(ReleaseRequest),
    /// Wills of a session that left this node which fell due while its resume here waited
    /// for its replay: decided as for a record another node took (`SessionOp::LeftWills`).
    LeftWills {
        client_id: Arc<str>,
        wills: Vec<KeptWill>,
    },
    /// A connection now registered with its claim: does the registry still hold that claim?
    /// (A hand-over request that came in between found nothing to close here.)
    CheckOwner {
        conn: ConnId,
        client_id: Arc<str>,
        revision: Revision,
    },
    /// A connection registered with this claim is not the owner any more: another node's
    /// write replaced it in the registry (seen by the registry watch, which says so for
    /// sure: a read could be answered by a replica behind it).
    Superseded {
        conn: ConnId,
        client_id: Arc<str>,
        revision: Revision,
    },
    /// What the cluster keeps of a client's session now (`None`: it ended, or is not kept),
    /// and the wills of that client the core says are due: the write takes them out of the
    /// record, and they are published (`FromCluster::Will`) only if it wins; `log`, for a
    /// session offline here (or handed over): where it stands in the log.
    StoreSession {
        client_id: Arc<str>,
        snapshot: Option<SessionSnapshot>,
        /// (Boxed: the variant is the enum's largest.)
        log: Option<Box<Log>>,
        wills: Vec<KeptWill>,
        /// A checkpoint of a connected session (`makelaar_cluster::checkpoint`): answered
        /// with `FromCluster::Checkpointed` once written.
        checkpoint: Option<u64>,
    },
    /// The broker assigned this client id (its CONNECT claimed nothing) and keeps its
    /// session (it has a will, or outlives its connection): register it, so that the
    /// reaper of this node finds its record.
    Assigned { client_id: Arc<str> },
    /// Read back what a session taken in from a record held or missed (see
    /// `makelaar_cluster::replay`), and answer with `FromCluster::Replayed`.
    Replay(Box<ReplayRequest>),
    /// A connection whose claim was written at `revision` has ended.
    Disconnected {
        client_id: Arc<str>,
        revision: Revision,
    },
}

/// A session's replay, as the router asks for it.
pub(crate) struct ReplayRequest {
    pub(crate) client_id: Arc<str>,
    /// Which resume of the session asked (the router's number for it), handed back with
    /// the answer: a session taken in again meanwhile has a replay of its own.
    pub(crate) resume: u64,
    pub(crate) plan: ReplayPlan,
    /// The record's outbound list (the plan's kept entries index it).
    pub(crate) outbound: Vec<Outbound>,
    /// The session's plain filters: a new message none matches is not kept.
    pub(crate) filters: Vec<String>,
    /// The session's queue limits.
    pub(crate) max_messages: usize,
    pub(crate) max_bytes: usize,
}

/// Where a session taken in from a record resumes (the record's part the replay needs).
#[derive(Debug, Clone)]
pub(crate) struct Resume {
    /// The node that wrote the record.
    pub(crate) writer: NodeId,
    pub(crate) cursors: Vec<Cursor>,
    pub(crate) outbound: Vec<Outbound>,
    /// The writer's own messages past its cursors the session took in
    /// (`SessionRecord::writer_late`).
    pub(crate) writer_late: Vec<(u16, u64)>,
}

/// What the cluster tells the router.
pub(crate) enum FromCluster {
    /// The batch numbered `epoch` is durable on the cluster, except the messages of the
    /// connections in `failed` (their acknowledgements must never go out); `own` is the
    /// highest sequence appended per partition in it.
    Appended {
        epoch: u64,
        failed: Vec<ConnId>,
        own: Vec<(u16, u64)>,
    },
    /// A QoS 0 message another node received, to route to this node's subscribers.
    Message(Arc<Message>),
    /// A message the cluster gave this node for a share group (`$share/GROUP/FILTER`): to
    /// one of its members here (`Broker::route_shared_remote`). With `taken`, a QoS 1/2
    /// message from the group's consumer: answer whether a member took it (acknowledged
    /// then, else offered to another node).
    Shared {
        group: Arc<str>,
        msg: Arc<Message>,
        taken: Option<tokio::sync::oneshot::Sender<bool>>,
    },
    /// A partition's follower starts at this sequence (before its first `Log`).
    Following { partition: u16, next: u64 },
    /// The next message of a partition stream: another node's, to route (`Some`), or this
    /// node's own, routed when it was published (`None`).
    Log {
        partition: u16,
        seq: u64,
        msg: Option<Arc<Message>>,
    },
    /// A claim's barrier in a partition stream, naming the claims of its round: a
    /// connection here of an older claim of one of those clients is not the client's any
    /// more, and what it publishes from here on is dropped by every reader
    /// (`makelaar_cluster::barrier`); then as a `Log` without a message.
    Barrier {
        partition: u16,
        seq: u64,
        claims: Vec<BarrierClaim>,
    },
    /// What a session's replay read back: in flight on the old node (in its order), then
    /// taken in there and not sent, or published while it was away (in order per topic).
    Replayed {
        client_id: Arc<str>,
        /// The request's `ReplayRequest::resume`.
        resume: u64,
        in_flight: Vec<KeptMessage>,
        queued: Vec<Arc<Message>>,
    },
    /// A retained message set (`Some`) or cleared on the cluster.
    Retained {
        topic: String,
        message: Option<Arc<Message>>,
    },
    /// The claim of a waiting CONNECT: the registry revision written, the session the
    /// cluster keeps for the client id and the will another node left in its record (taken
    /// out of it: this node decides it, before the CONNECT), or why it failed.
    Claimed {
        conn: ConnId,
        result: Result<Claim, String>,
    },
    /// Another node claims a client id: close its connection here (0x8E), then answer with
    /// `ToCluster::Released`.
    Release(ReleaseRequest),
    /// This node could not refresh its lease in time: disconnect every client (5.0: 0x89
    /// Server busy) and refuse new ones (CONNACK 0x88 Server unavailable) until `Serving`.
    StepDown,
    /// This node holds its lease again.
    Serving,
    /// Another node owns this client's session now (a write was fenced): close its
    /// connection here, if any (0x8E). With `will_in_cluster` the record held this
    /// connection's will, and the node that took the record decides it: it is not
    /// published here.
    Fenced {
        client_id: Arc<str>,
        /// The claim of this node's under which the write was refused: a connection of a
        /// newer claim here is not the one another node took (see `Router`'s handling).
        claim: Revision,
        will_in_cluster: bool,
    },
    /// A client this node had (offline now) connected on another node, claimed there at
    /// `revision`: drop the session here, that node keeps it (unless this node claimed it
    /// since: `makelaar_cluster::takeover::moved_is_stale`).
    Moved {
        client_id: Arc<str>,
        revision: Revision,
    },
    /// Checkpoint `n` of a connected session's record is written: the packets that waited
    /// for it may go (`makelaar_cluster::checkpoint`).
    Checkpointed { client_id: Arc<str>, n: u64 },
    /// The claim this connection was registered with has been taken over meanwhile: close it
    /// (0x8E); its will as with `Fenced`.
    NotOwner {
        conn: ConnId,
        revision: Revision,
        will_in_cluster: bool,
    },
    /// Another node wrote `client_id`'s registry entry, at `revision`
    /// (`Cluster::watch_claims_elsewhere`).
    ClaimedElsewhere {
        client_id: Arc<str>,
        revision: Revision,
    },
    /// A will due now and taken out of the cluster's record by this node (a dead node's
    /// client's, or one of this node's own whose write won): publish it.
    Will { client_id: Arc<str>, will: KeptWill },
    /// The append of a will in the batch numbered `epoch` failed and is tried again apart
    /// ([`retry_will`]): sent before that batch's `Appended`, and answered by one
    /// `WillPlaced` with the same `id`. The replays of the sessions taken in after the
    /// will was routed wait for it (`router::ClusterSide::retried_wills`).
    WillRetrying {
        id: makelaar_cluster::MessageId,
        epoch: u64,
    },
    /// The retried will `id` was appended at `at`, or given up (`None`).
    WillPlaced {
        id: makelaar_cluster::MessageId,
        at: Option<LogPosition>,
    },
    /// A dead node's session, taken over by this node (it reaped the dead node): keep it
    /// offline here, its will (if any) due in `will_in`, its end in `expires_in`.
    Orphan {
        client_id: Arc<str>,
        snapshot: SessionSnapshot,
        will_in: Duration,
        expires_in: Option<Duration>,
        /// Where it stood in the dead node's log, to replay what it held or missed there.
        resume: Option<Resume>,
    },
}

/// A claimed client id.
pub(crate) struct Claim {
    /// The registry revision written.
    pub(crate) revision: Revision,
    /// The session the cluster keeps for it.
    pub(crate) session: Option<SessionSnapshot>,
    /// The will another node left in its record, taken out of it: this node decides it.
    pub(crate) will: Option<RemoteWill>,
    /// When the session's record says where it stands in the log: how it resumes.
    pub(crate) resume: Option<Resume>,
    /// The session's record was last written by another node: a copy of the session this
    /// node still holds is stale (that node had the session since, and its notice that the
    /// client moved was lost, e.g. while this node was cut off): the record replaces it.
    pub(crate) moved_away: bool,
    /// The client was on another node: the partitions' last sequences at its claim, which
    /// this node's followers pass before the CONNECT is decided (empty: no wait).
    pub(crate) tails: Vec<(u16, u64)>,
}

/// Why the cluster could not be joined: one sentence for the user.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClusterStartError(pub String);

/// The channels between the router and the cluster.
pub(crate) struct ClusterLink {
    pub(crate) to: mpsc::UnboundedSender<ToCluster>,
    /// The router's batches, to the writer.
    pub(crate) batches: mpsc::UnboundedSender<Batch>,
    pub(crate) from: mpsc::Receiver<FromCluster>,
    /// This node.
    pub(crate) node: NodeId,
    /// What this node counts of its part, for `$SYS`, `/metrics` and the dashboard; its
    /// `queued` and `queue_limit` bound the messages in `to` (see [`QueueRoom`]).
    pub(crate) stats: Arc<NodeStats>,
    /// Wakes the router when the queue to the cluster has room again.
    pub(crate) room: Arc<tokio::sync::Notify>,
}

/// The bound of the router's queue to the cluster (docs/cluster.md "Backpressure"): the
/// router adds a batch's messages to `stats.queued` when it sends the batch and stops taking
/// packets from clients while the count is at `stats.queue_limit`; the writer subtracts
/// them once they are written and wakes the router when the count falls below the limit.
/// The channel itself stays unbounded: a batch the core has accepted is always sent, and
/// the bound is on what comes next.
pub(crate) struct QueueRoom {
    stats: Arc<NodeStats>,
    room: Arc<tokio::sync::Notify>,
}

impl QueueRoom {
    /// `n` messages written (or failed): room for as many.
    fn release(&self, n: usize) {
        let n = n as u64;
        let before = self.stats.queued.fetch_sub(n, Relaxed);
        let limit = self.stats.queue_limit.load(Relaxed);
        if before >= limit && before.saturating_sub(n) < limit {
            self.room.notify_one();
        }
    }
}

/// How long one start-up step after the first lease (following a stream, a bucket, a
/// subject) is tried again before the node gives up: the engine answered the lease, so an
/// error now is most likely JetStream electing leaders (a NATS server restarting, a host
/// lost), which passes.
const START_STEP_PATIENCE: Duration = Duration::from_secs(120);

/// Runs one start-up step, trying it again with a growing pause (up to 5 s) while it fails
/// and [`START_STEP_PATIENCE`] has not passed; then fails with one sentence naming `what`.
/// (A node that exits here is restarted by its supervisor, and found a fault harness's
/// node restarted during a JetStream election gone for good: "cannot follow partition
/// stream 0: timed out".)
async fn patiently<T, E, F, Fut>(what: &str, mut step: F) -> Result<T, ClusterStartError>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    // tokio's clock: the sleeps below move it, also in tests with the time paused.
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(250);
    loop {
        match step().await {
            Ok(v) => return Ok(v),
            Err(e) if started.elapsed() < START_STEP_PATIENCE => {
                tracing::warn!(target: crate::status::STATUS_TARGET, error = %e, "cannot {what} yet: trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                return Err(ClusterStartError(format!(
                    "cannot {what} ({e}) for {} s; check that the NATS servers' JetStream has a leader (`makelaar cluster status`)",
                    START_STEP_PATIENCE.as_secs()
                )))
            }
        }
    }
}

/// Joins the cluster: connects to NATS (the start-up checks refuse lazy fsync and old
/// servers, with their sentence), waits until this node holds its lease, and starts the
/// tasks. `filters` are the distinct filters of sessions already present.
pub(crate) async fn start(
    settings: &ClusterSettings,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<ClusterLink, ClusterStartError> {
    let node = NodeId::new(&settings.node_name).map_err(|e| {
        ClusterStartError(format!(
            "the cluster node name \"{}\" cannot be used ({e}); give --node-name letters, digits, '-' or '_'",
            settings.node_name
        ))
    })?;
    let partitions = PartitionCount::new(settings.partitions).ok_or_else(|| {
        ClusterStartError(
            "cluster partitions = 0 cannot be used; set it to 1 or more (the same on every node)"
                .into(),
        )
    })?;
    let mut nats = NatsConfig::new(settings.servers.clone());
    nats.monitor.clone_from(&settings.monitor);
    nats.tls.clone_from(&settings.tls);
    nats.auth.clone_from(&settings.auth);
    nats.allow_lazy_fsync = settings.allow_lazy_fsync;
    nats.partitions = partitions;
    nats.node.clone_from(&settings.node_name);
    // NATS servers started together may not have formed their JetStream cluster yet ("no
    // suitable peers for placement"): setting up buckets and streams is tried again for a
    // while. Refusals (lazy fsync, an old server) and an unreachable NATS are not.
    let started = Instant::now();
    let (backend, _warnings) = loop {
        match NatsBackend::connect(&nats).await {
            Ok(connected) => break connected,
            Err(e @ NatsStartError::Setup { .. }) if started.elapsed() < SETUP_PATIENCE => {
                tracing::warn!(target: crate::status::STATUS_TARGET, "{e}; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e @ NatsStartError::Connect { .. }) => {
                return Err(ClusterStartError(format!(
                    "{e}; check that the NATS servers run and that --cluster (or [cluster] servers) names their client ports"
                )))
            }
            Err(e) => return Err(ClusterStartError(e.to_string())),
        }
    };
    let mut config = ClusterConfig::new(node, makelaar_cluster::cluster::new_incarnation());
    config.partitions = partitions;
    let cluster = Arc::new(Cluster::new(backend, config));
    let stats = cluster.stats().clone();
    stats
        .queue_limit
        .store(settings.max_queued_messages as u64, Relaxed);
    let room = Arc::new(tokio::sync::Notify::new());

    // The lease first: a node serves from its first lease write on, never before.
    let (lease_tx, mut lease_rx) = mpsc::channel(16);
    {
        let c = cluster.clone();
        tokio::spawn(async move { c.run_leases(lease_tx).await });
    }
    match tokio::time::timeout(Duration::from_secs(15), lease_rx.recv()).await {
        Ok(Some(LeaseEvent::Serving)) => {}
        _ => {
            return Err(ClusterStartError(format!(
                "cannot write this node's lease to the NATS servers {} within 15 s; check that JetStream is enabled and has a leader",
                makelaar_cluster::link::redact_urls(&settings.servers)
            )))
        }
    }
    let node = cluster.config().node.clone();
    let (to_tx, mut to_rx) = mpsc::unbounded_channel();
    let (from_tx, from_rx) = mpsc::channel(FROM_CLUSTER_QUEUE);
    let (sessions_tx, sessions_rx) = mpsc::unbounded_channel();
    tokio::spawn(lease_events(
        lease_rx,
        (cluster.clone(), sessions_tx.clone()),
        from_tx.clone(),
        shutdown.clone(),
    ));
    let releases = patiently("follow hand-over requests", || cluster.release_requests()).await?;
    tokio::spawn(forward_releases(releases, from_tx.clone()));
    let mut moved = patiently("follow moved-client notices", || cluster.moved_clients()).await?;
    for p in partitions.all() {
        let (next, follow) = patiently(&format!("follow partition stream {p}"), || {
            cluster.follow_partition(p)
        })
        .await?;
        // Before any of its messages: the router knows where each follower starts.
        let _ = from_tx
            .send(FromCluster::Following {
                partition: p.index(),
                next,
            })
            .await;
        tokio::spawn(follower(
            follow,
            cluster.config().node.clone(),
            from_tx.clone(),
        ));
    }
    let watch = patiently("follow the retained messages", || {
        cluster.watch_all_retained()
    })
    .await?;
    tokio::spawn(retained_watch(watch, from_tx.clone()));
    let claims = patiently("follow the registry", || cluster.watch_claims_elsewhere()).await?;
    tokio::spawn(registry_watch(claims, from_tx.clone()));

    tokio::spawn(sessions(
        cluster.clone(),
        (sessions_tx.clone(), sessions_rx),
        from_tx.clone(),
    ));
    tokio::spawn(take_back_from_earlier_runs(
        cluster.clone(),
        sessions_tx.clone(),
        from_tx.clone(),
    ));
    let (writer_tx, writer_rx) = mpsc::unbounded_channel();
    let queue = QueueRoom {
        stats: stats.clone(),
        room: room.clone(),
    };
    tokio::spawn(writer(cluster.clone(), writer_rx, from_tx.clone(), queue));
    let mut reader = Reader {
        cluster: cluster.clone(),
        filters: HashMap::new(),
        first: FirstFilter::default(),
        groups: HashMap::new(),
        to_router: from_tx.clone(),
        live_prefix: format!("{}.live.", cluster.config().prefix),
    };
    // The filters' subscriptions, polled here rather than each by a task of its own: a
    // message from another node wakes this task only, on its way to the router.
    let mut live = futures_util::stream::SelectAll::new();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                msg = to_rx.recv() => match msg {
                    None => break,
                    Some(ToCluster::Filters(changes)) => reader.filters_changed(changes, &mut live).await,
                    Some(ToCluster::Claim { conn, client_id }) => {
                        tokio::spawn(claim(
                            cluster.clone(),
                            (conn, client_id),
                            sessions_tx.clone(),
                            from_tx.clone(),
                        ));
                    }
                    Some(ToCluster::StoreSession { client_id, snapshot, log, wills, checkpoint }) => {
                        let _ = sessions_tx.send(SessionOp::Store(client_id, snapshot, log, wills, checkpoint));
                    }
                    Some(ToCluster::Assigned { client_id }) => {
                        let _ = sessions_tx.send(SessionOp::Assigned(client_id));
                    }
                    Some(ToCluster::Replay(req)) => {
                        tokio::spawn(replay(cluster.clone(), req, from_tx.clone()));
                    }
                    Some(ToCluster::CheckOwner { conn, client_id, revision }) => {
                        let c = cluster.clone();
                        let sessions = sessions_tx.clone();
                        tokio::spawn(async move {
                            let key = ClientKey::new(&client_id);
                            // A failed read says nothing: the connection stays. Not the
                            // owner: the sessions task says whether the will reached the
                            // record (then the new owner decides it) and writes no more.
                            if let Ok(false) = c.still_owner(&key, revision).await {
                                let _ = sessions.send(SessionOp::NotOwner { conn, client_id, revision });
                            }
                        });
                    }
                    Some(ToCluster::Superseded { conn, client_id, revision }) => {
                        let _ = sessions_tx.send(SessionOp::NotOwner { conn, client_id, revision });
                    }
                    Some(ToCluster::Released(req)) => {
                        // Answered by the sessions task after the writes queued before it:
                        // the claiming node then reads this node's last record, and this
                        // node writes it no more (its local end must not delete what the
                        // new owner reads).
                        let _ = sessions_tx.send(SessionOp::Release(req));
                    }
                    Some(ToCluster::LeftWills { client_id, wills }) => {
                        let _ = sessions_tx.send(SessionOp::LeftWills(client_id, wills));
                    }
                    Some(ToCluster::Disconnected { client_id, revision }) => {
                        // After the session's last record: a node that claims the id once
                        // it reads "disconnected" must find that record.
                        let _ = sessions_tx.send(SessionOp::Disconnected(client_id, revision));
                    }
                },
                Some((filter, d)) = live.next(), if !live.is_empty() => reader.live(filter, d).await,
                Some(notice) = moved.recv() => {
                    if let Ok(id) = notice.client.client_id() {
                        // Written no more from here, unless claimed here since (the
                        // sessions task, which holds the claims' fences, decides and then
                        // tells the router, which ends it locally).
                        let id: Arc<str> = Arc::from(id.as_str());
                        let _ = sessions_tx.send(SessionOp::Moved(id, notice.revision));
                    }
                }
                _ = shutdown.cancelled() => break,
            }
        }
        reader.stop();
    });
    Ok(ClusterLink {
        to: to_tx,
        batches: writer_tx,
        from: from_rx,
        node,
        stats,
        room,
    })
}

async fn lease_events(
    mut rx: mpsc::Receiver<LeaseEvent>,
    (cluster, sessions): (Arc<Cluster<NatsBackend>>, mpsc::UnboundedSender<SessionOp>),
    tx: mpsc::Sender<FromCluster>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    // Returning closes the channel, which ends the lease task.
    while let Some(ev) = tokio::select! {
        ev = rx.recv() => ev,
        _ = shutdown.cancelled() => None,
    } {
        match ev {
            LeaseEvent::Serving => {
                tracing::info!(target: crate::status::STATUS_TARGET, "cluster lease held again: serving");
                let _ = sessions.send(SessionOp::Serving(true));
                let _ = tx.send(FromCluster::Serving).await;
            }
            // Rule 5: before any peer can call this node's lease expired, it stops
            // acknowledging and disconnects its clients; they reconnect to another node.
            LeaseEvent::StepDown => {
                tracing::error!(target: crate::status::STATUS_TARGET, "cluster lease not refreshed in time: this node disconnects its clients and refuses new ones until it holds its lease again");
                // Before the router disconnects them: their wills wait in their records.
                let _ = sessions.send(SessionOp::Serving(false));
                let _ = tx.send(FromCluster::StepDown).await;
            }
            // This node won the dead node's reaping (`Cluster::try_reap`): exactly one
            // survivor takes its sessions over and publishes its due wills.
            LeaseEvent::Reap(dead) => {
                tracing::warn!(target: crate::status::STATUS_TARGET, node = %dead.node, "a cluster node died: this node takes over its sessions and publishes its clients' wills");
                tokio::spawn(reap(cluster.clone(), dead, sessions.clone(), tx.clone()));
            }
        }
    }
}

async fn forward_releases(mut rx: mpsc::Receiver<ReleaseRequest>, tx: mpsc::Sender<FromCluster>) {
    while let Some(req) = rx.recv().await {
        if tx.send(FromCluster::Release(req)).await.is_err() {
            return;
        }
    }
}

async fn claim<B: Backend>(
    cluster: Arc<Cluster<B>>,
    (conn, client_id): (ConnId, Arc<str>),
    sessions: mpsc::UnboundedSender<SessionOp>,
    tx: mpsc::Sender<FromCluster>,
) {
    let key = ClientKey::new(&client_id);
    let started = Instant::now();
    let result = async {
        let claimed = cluster.claim_client(&key).await?;
        if let Some((owner, revision)) = claimed.unanswered.clone() {
            tracing::warn!(client_id = %client_id, %owner, "a client id taken over from a node that did not answer the hand-over: it is asked again until it closes its connection");
            let (c, k) = (cluster.clone(), key.clone());
            tokio::spawn(async move { c.chase_release(&k, &owner, revision).await });
        }
        // The client was on another node: what it published there and had acknowledged
        // (before this CONNECT) is in the partitions below barriers appended now; its
        // CONNECT waits until this node's followers are past them, or what it publishes
        // here, routed at once, could reach subscribers here before its earlier messages
        // [MQTT-4.6.0-6] (found by the fault harness: a publisher moving after its node's
        // NATS server died, while this node's followers were late).
        // The node it was on may be this one's entry's `came_from`: a claim here that
        // failed after writing the entry (found by the fault harness: reorderings after a
        // claim refused by a 503).
        let elsewhere = claimed
            .previous
            .as_ref()
            .and_then(|p| p.last_elsewhere(&cluster.config().node));
        // A client last on this node whose appends this node gave up: one of them may
        // still be stored late, after what the new connection publishes. Its barriers
        // name this claim, so every reader drops it then (`makelaar_cluster::barrier`).
        let given_up = elsewhere.is_none() && cluster.gave_up_appends_of(&client_id);
        let tails = if elsewhere.is_some() || given_up {
            let named = BarrierClaim {
                client: client_id.clone(),
                revision: claimed.revision,
            };
            let barriers = cluster.barriers_since(started, Some(named)).await?;
            cluster.barriers_named(&client_id, started);
            let from = elsewhere.as_ref().map(ToString::to_string);
            tracing::debug!(target: RECORDS, %client_id, ?from, given_up, ?barriers, "partition barriers of a claim");
            barriers
        } else {
            Vec::new()
        };
        if let Some(previous) = claimed
            .previous
            .as_ref()
            .filter(|p| p.node != cluster.config().node && !p.connected)
        {
            // (A connected owner was asked to hand over, and forgot its copy then.)
            let _ = cluster
                .notify_moved(&previous.node, &key, claimed.revision)
                .await;
        }
        // A will another node left in the record is taken out of it here (a fenced write,
        // which also fences the node that had the session), and decided by this node.
        let found = cluster
            .load_claimed_session(&key, &claimed, unix_ms())
            .await?;
        // The session's writes from here on carry this fence; the first one (when the router
        // stores the session after the CONNECT) fences the node that had it.
        // (The new connection's will reaches the record with that write, not before.)
        let _ = sessions.send(SessionOp::Owned(
            client_id.clone(),
            claimed.revision,
            found.fence,
            false,
            found
                .record
                .as_ref()
                .map(|r| r.will_takers.clone())
                .unwrap_or_default(),
        ));
        // Where the session stands in the log is in the record, counted by the node that
        // had its place in the log (a will taken out since names this node as the record's
        // writer, not as the cursors').
        let resume = found.record.as_ref().and_then(resume_of);
        if let Some(r) = &found.record {
            tracing::debug!(target: RECORDS, %client_id, fence = ?found.fence, writer = %r.log_writer(), will_taken = found.will.is_some(), place = %place_in_log(&r.cursors, &r.outbound), "session record read by a claim");
        }
        // Another node wrote the record last (before a will was taken out of it here): it
        // had the session since this node did. (The registry alone does not say so: a claim
        // elsewhere that failed after moving the entry leaves this node's record, and copy,
        // the newest.)
        let moved_away = found
            .written_by
            .as_ref()
            .is_some_and(|w| *w != cluster.config().node);
        Ok::<_, makelaar_cluster::cluster::ClusterError>(Claim {
            moved_away,
            revision: claimed.revision,
            session: found.record.and_then(|r| snapshot_of(&r)),
            will: found.will.map(remote_will),
            resume,
            tails,
        })
    }
    .await
    .map_err(|e| e.to_string());
    let _ = tx.send(FromCluster::Claimed { conn, result }).await;
}

/// What the sessions task is told.
enum SessionOp {
    /// This node claimed the client id at this revision; its session record has this fence,
    /// holds a will (or not), and carries this mark of the last write that took a will out
    /// (kept on in this node's writes, see `wills::taken_by_me`).
    Owned(Arc<str>, Revision, Fence, bool, Vec<WillTaker>),
    /// Write (or, `None`, delete) the client's session record, with where it stands in the
    /// log when it is offline (or handed over), taking these due wills out of it: they are
    /// published only if the write wins.
    /// (The log boxed as the router sends it: it is most of the operation's size.)
    Store(
        Arc<str>,
        Option<SessionSnapshot>,
        Option<Box<Log>>,
        Vec<KeptWill>,
        Option<u64>,
    ),
    /// Register a client id the broker assigned, before its record's first write.
    Assigned(Arc<str>),
    /// The client's connection here ended: mark the registry entry (after the writes
    /// queued before).
    Disconnected(Arc<str>, Revision),
    /// The session moved to another node, claimed there at this revision: write it no
    /// more (unless this node claimed it since), and tell the router.
    Moved(Arc<str>, Revision),
    /// A hand-over: write the client's session no more, then mark the registry and answer.
    Release(ReleaseRequest),
    /// Due wills of a session that moved to another node, which waited here for a replay
    /// (never in a write of this node): the other node decides those the record it took
    /// holds; this node publishes the others.
    LeftWills(Arc<str>, Vec<KeptWill>),
    /// The connection registered with this claim is not the owner any more: write its
    /// session no more, and tell the router (with whether the record holds its will).
    NotOwner {
        conn: ConnId,
        client_id: Arc<str>,
        revision: Revision,
    },
    /// The node holds its lease (`true`) or stepped down (`false`): while stepped down no
    /// record is written and no due will published; they wait, and are tried again.
    Serving(bool),
}

/// What the sessions task keeps of a session record this node writes.
#[derive(Debug, Clone)]
struct Kept {
    /// The registry revision of the claim it is written under.
    claim: Revision,
    /// Its fence; [`Fence::Lost`] once another node took it.
    fence: Fence,
    /// Whether the record as last written (or, lost, as taken) holds a will: a will that
    /// reached the record is decided by whoever takes the record next.
    will: bool,
    /// A client id this node assigned: its registry entry goes with its session.
    assigned: bool,
    /// The marks of the last writes that took a will out of the record, kept on in every
    /// write: see `wills::taken_by_me`.
    taken: Vec<WillTaker>,
}

/// Writes waiting to be tried again (their engine failed, or the node stepped down), per
/// client: the latest snapshot and every due will not yet decided, in order.
type Waiting = HashMap<Arc<str>, (Option<SessionSnapshot>, Option<Log>, Vec<KeptWill>)>;

/// Where a session stands in the log, for its record: its cursors and the messages it
/// holds.
#[derive(Debug, Clone, Default)]
pub(crate) struct Log {
    pub(crate) cursors: Vec<Cursor>,
    pub(crate) outbound: Vec<Outbound>,
    /// The node whose own messages the cursors count (`writer_through`), when not this one:
    /// a session whose replay is not back here yet stands where its last record put it.
    pub(crate) writer: Option<NodeId>,
    /// The writer's own messages the session took in past the cursors: wills appended late
    /// (`SessionRecord::writer_late`).
    pub(crate) writer_late: Vec<(u16, u64)>,
}

/// One record write: the client, its session (`None`: delete), where it stands, its due
/// wills.
type Store = (
    Arc<str>,
    Option<SessionSnapshot>,
    Option<Log>,
    Vec<KeptWill>,
);

/// How often writes that could not be made are tried again.
const WRITE_RETRY: Duration = Duration::from_secs(1);

/// How long a hand-over's answer waits for the client's record that waits to be written
/// again (`write_before_release`): no new try starts after it. Below the claiming node's
/// wait for the answer (`ClaimConfig::handover_timeout`, 3 s), after which it claims the
/// client anyway and reads the record as it is.
const RELEASE_WRITE_PATIENCE: Duration = Duration::from_secs(2);

/// The pause between those tries.
const RELEASE_WRITE_PAUSE: Duration = Duration::from_millis(100);

/// The sessions task: the one owner of the fences of the session records this node writes.
/// Writes go one after the other, so a client's records are written in order.
async fn sessions<B: Backend>(
    cluster: Arc<Cluster<B>>,
    (me, mut rx): (
        mpsc::UnboundedSender<SessionOp>,
        mpsc::UnboundedReceiver<SessionOp>,
    ),
    tx: mpsc::Sender<FromCluster>,
) {
    let mut kept: HashMap<Arc<str>, Kept> = HashMap::new();
    let mut waiting: Waiting = HashMap::new();
    // The latest checkpoint per client not yet written (`makelaar_cluster::checkpoint`).
    let mut checkpoints: HashMap<Arc<str>, u64> = HashMap::new();
    let mut serving = true;
    let mut retry_at = tokio::time::Instant::now();
    loop {
        if waiting.is_empty() {
            // Nothing waits: the first write that fails waits a full period.
            retry_at = tokio::time::Instant::now() + WRITE_RETRY;
        }
        let retry = serving && !waiting.is_empty();
        let op = tokio::select! {
            op = rx.recv() => match op {
                Some(op) => op,
                None => return,
            },
            () = tokio::time::sleep_until(retry_at), if retry => {
                retry_at = tokio::time::Instant::now() + WRITE_RETRY;
                for (client_id, (snapshot, log, wills)) in std::mem::take(&mut waiting) {
                    let store = (client_id.clone(), snapshot, log, wills);
                    let written = write_session(&cluster, &mut kept, &mut waiting, store, &tx).await;
                    checkpointed(&mut checkpoints, &client_id, written, &tx).await;
                }
                continue;
            }
        };
        match op {
            SessionOp::Owned(client_id, claim, read, will, taken) => {
                let assigned = false;
                let k = match kept.get(&client_id) {
                    // This node's own write since the claim's read is the newer: it says
                    // what the record holds (`Fence::newest`).
                    Some(mine) if read.newest(mine.fence) != read => Kept {
                        claim,
                        assigned,
                        ..mine.clone()
                    },
                    _ => Kept {
                        claim,
                        fence: read,
                        will,
                        assigned,
                        taken,
                    },
                };
                kept.insert(client_id, k);
            }
            SessionOp::Assigned(client_id) => {
                let key = ClientKey::new(&client_id);
                match cluster.register_assigned(&key).await {
                    Ok(claim) => {
                        let k = Kept {
                            claim,
                            fence: Fence::Absent,
                            will: false,
                            assigned: true,
                            taken: Vec::new(),
                        };
                        kept.insert(client_id, k);
                    }
                    // Its will is then published by this node alone, and lost with it.
                    Err(e) => {
                        tracing::warn!(client_id = %client_id, error = %e, "cannot register an assigned client id on the cluster")
                    }
                }
            }
            SessionOp::NotOwner {
                conn,
                client_id,
                revision,
            } => {
                let will_in_cluster = match kept.get_mut(&client_id) {
                    Some(k) if k.claim == revision => {
                        // The claimer decides the will the record holds; should its claim
                        // fail after moving the entry, nobody would: looked at again later.
                        let pending = pending(&waiting, &client_id);
                        settle_later(&cluster, k, pending, &client_id, &me, &tx);
                        k.fence = Fence::Lost;
                        k.will
                    }
                    _ => false,
                };
                let _ = tx
                    .send(FromCluster::NotOwner {
                        conn,
                        revision,
                        will_in_cluster,
                    })
                    .await;
            }
            // The node the client is on now took (or takes) the record and the will it
            // holds: written no more from here, and a will of it falling due here before
            // the router forgets the session is not published here.
            SessionOp::Moved(client_id, revision) => {
                let held = kept.get(&client_id).map(|k| k.claim);
                if makelaar_cluster::takeover::moved_is_stale(revision, held) {
                    tracing::info!(client_id = %client_id, %revision, "a notice that a client moved to another node, from a claim older than this node's, is ignored (delivered late)");
                    continue;
                }
                // As for a hand-over: a claim that failed after its notice leaves the will
                // the record holds to nobody (found by the fault harness: a probe's will
                // never published, its client gone for good after a refused CONNECT).
                if let Some(k) = kept.get(&client_id) {
                    let pending = pending(&waiting, &client_id);
                    settle_later(&cluster, k, pending, &client_id, &me, &tx);
                }
                lose(&cluster, &mut kept, &mut waiting, client_id.clone(), &tx).await;
                let _ = tx
                    .send(FromCluster::Moved {
                        client_id,
                        revision,
                    })
                    .await;
            }
            SessionOp::Release(req) => {
                if let Ok(id) = req.client.client_id() {
                    let id: Arc<str> = Arc::from(id.as_str());
                    let held = kept.get(&id).map(|k| k.claim);
                    if makelaar_cluster::takeover::release_is_stale(req.revision, held) {
                        // Asked of a connection this node had before its newer claim of the
                        // id, which read the record before the router knew of it (the claim
                        // waits for the followers): neither answered nor obeyed, as the
                        // router does once it knows. Obeyed, it marked the record lost
                        // while the new connection went on being served here, whose
                        // record writes were then dropped unanswered, and its QoS 2
                        // deliveries waited for them (found by the fault harness: two
                        // subscribers got one message in 132 s after their node stepped
                        // down and back).
                        tracing::info!(client_id = %id, "a hand-over request older than this node's newer claim of the client id is ignored (delivered late)");
                        continue;
                    }
                    // The claiming node resumes the session from the record it reads after
                    // the answer: this node's last one, even when its write failed and waits
                    // (not while stepped down: nothing is written then).
                    if serving {
                        let written =
                            write_before_release(&cluster, &mut kept, &mut waiting, &id, &tx).await;
                        checkpointed(&mut checkpoints, &id, written, &tx).await;
                    }
                    // The will the record holds is the claiming node's to decide; should its
                    // claim fail after this answer, nobody would: looked at again later.
                    if let Some(k) = kept.get(&id) {
                        let pending = pending(&waiting, &id);
                        settle_later(&cluster, k, pending, &id, &me, &tx);
                    }
                    lose(&cluster, &mut kept, &mut waiting, id, &tx).await;
                }
                tokio::spawn(released(cluster.clone(), req));
            }
            SessionOp::LeftWills(client_id, wills) => {
                // As for a write refused because another node took the record
                // (`write_session`): a will that reached the record is that node's.
                if kept.get(&client_id).is_some_and(|k| k.will) {
                    withhold_wills(&client_id, &wills);
                } else {
                    publish_wills(&client_id, wills, &tx).await;
                }
            }
            SessionOp::Disconnected(client_id, revision) => {
                let c = cluster.clone();
                tokio::spawn(async move {
                    let key = ClientKey::new(&client_id);
                    // Refused harmlessly when another node has claimed it since.
                    let _ = c.mark_disconnected(&key, revision).await;
                });
            }
            SessionOp::Serving(now) => {
                serving = now;
                // Back: what waited is tried at once.
                retry_at = tokio::time::Instant::now();
            }
            SessionOp::Store(client_id, snapshot, log, wills, checkpoint) => {
                let log = log.map(|l| *l);
                if let Some(n) = checkpoint {
                    let latest = checkpoints.entry(client_id.clone()).or_insert(n);
                    *latest = (*latest).max(n);
                }
                // Behind a write still waiting: in order, after it (the newest state wins).
                if let Some((s, l, w)) = waiting.get_mut(&client_id) {
                    *s = snapshot;
                    *l = log;
                    w.extend(wills);
                    continue;
                }
                let store = (client_id.clone(), snapshot, log, wills);
                if serving {
                    let written =
                        write_session(&cluster, &mut kept, &mut waiting, store, &tx).await;
                    checkpointed(&mut checkpoints, &client_id, written, &tx).await;
                } else {
                    waiting.insert(store.0, (store.1, store.2, store.3));
                }
            }
        }
    }
}

/// A session this node gives up to another node's claim (`k`, before it is marked lost),
/// when the record it last wrote (or read) holds a will, or may (`pending`: a write of it
/// waits, its outcome unknown; it may have landed with the connection's will): the claimer
/// takes the will out and decides it, unless its claim fails after moving the registry
/// entry (the engine refused its read of the record). [`settle_release`] then takes it
/// back after [`ABANDONED_AFTER`], if nobody wrote the record since this node did.
fn settle_later<B: Backend>(
    cluster: &Arc<Cluster<B>>,
    k: &Kept,
    pending: bool,
    client_id: &str,
    sessions: &mpsc::UnboundedSender<SessionOp>,
    tx: &mpsc::Sender<FromCluster>,
) {
    let at = match k.fence {
        Fence::At(at) => Some(at),
        Fence::Absent | Fence::Unanswered => None,
        Fence::Lost => return,
    };
    if k.will || pending {
        let written = GivenUp {
            node: cluster.config().node.clone(),
            claim: k.claim.get(),
            at,
        };
        spawn_settle(cluster, ClientKey::new(client_id), written, sessions, tx);
    }
}

/// Whether a write of `client_id`'s record waits (its last try's outcome unknown: it may
/// have landed with the connection's will). Due wills that wait with it are decided when
/// the session is lost (`left_to_taker`): withheld when the record holds the will that
/// write carried, which the take-back then publishes should the claim fail.
fn pending(waiting: &Waiting, client_id: &str) -> bool {
    waiting.contains_key(client_id)
}

/// Spawns [`settle_release`] for `client`'s record as `written` when given up.
fn spawn_settle<B: Backend>(
    cluster: &Arc<Cluster<B>>,
    client: ClientKey,
    written: GivenUp,
    sessions: &mpsc::UnboundedSender<SessionOp>,
    tx: &mpsc::Sender<FromCluster>,
) {
    let settle = settle_release(
        cluster.clone(),
        client,
        written,
        sessions.clone(),
        tx.clone(),
    );
    tokio::spawn(settle);
}

/// After a write of `client_id`'s record: when it was written, the checkpoints it covers
/// (every one asked for before it) are answered; when another node took the record, they
/// never will be (the router drops what waited for them with the connection).
async fn checkpointed(
    checkpoints: &mut HashMap<Arc<str>, u64>,
    client_id: &Arc<str>,
    written: Option<bool>,
    tx: &mpsc::Sender<FromCluster>,
) {
    match written {
        Some(true) => {
            if let Some(n) = checkpoints.remove(client_id) {
                let client_id = client_id.clone();
                let _ = tx.send(FromCluster::Checkpointed { client_id, n }).await;
            }
        }
        Some(false) => {
            checkpoints.remove(client_id);
        }
        // Tried again later.
        None => {}
    }
}

/// Before a hand-over of `client_id` is answered: its record that waits to be written again
/// (a write failed, its outcome unknown: NATS trouble) is written now, under this node's
/// fence, and tried again for `RELEASE_WRITE_PATIENCE` at most (each try may take the
/// engine's timeout). Otherwise the claiming node would resume the session from an older
/// record (older cursors, held messages, subscriptions: messages lost or sent twice). Its
/// due wills go by the write's outcome, as in any write (`write_session`). What still waits
/// after that is left to `lose`. The write's outcome, as `write_session`'s.
async fn write_before_release<B: Backend>(
    cluster: &Cluster<B>,
    kept: &mut HashMap<Arc<str>, Kept>,
    waiting: &mut Waiting,
    client_id: &Arc<str>,
    tx: &mpsc::Sender<FromCluster>,
) -> Option<bool> {
    let give_up = tokio::time::Instant::now() + RELEASE_WRITE_PATIENCE;
    loop {
        let (snapshot, log, wills) = waiting.remove(client_id)?;
        let store = (client_id.clone(), snapshot, log, wills);
        let written = write_session(cluster, kept, waiting, store, tx).await;
        if written.is_some() {
            return written;
        }
        if tokio::time::Instant::now() + RELEASE_WRITE_PAUSE >= give_up {
            tracing::warn!(client_id = %client_id, "hand-over answered without the session's last record: its write kept failing, so the claiming node resumes the session from an older one");
            return None;
        }
        tokio::time::sleep(RELEASE_WRITE_PAUSE).await;
    }
}

/// Another node has taken (or is taking) the record of `client_id`: nothing more is
/// written for it, and its wills are decided as for a lost fence (see `write_session`).
async fn lose<B: Backend>(
    cluster: &Cluster<B>,
    kept: &mut HashMap<Arc<str>, Kept>,
    waiting: &mut Waiting,
    client_id: Arc<str>,
    tx: &mpsc::Sender<FromCluster>,
) {
    let Some(k) = kept.get_mut(&client_id) else {
        return;
    };
    k.fence = Fence::Lost;
    if let Some((snapshot, log, wills)) = waiting.remove(&client_id) {
        write_session(
            cluster,
            kept,
            waiting,
            (client_id, snapshot, log, wills),
            tx,
        )
        .await;
    }
}

/// Writes (or deletes) one client's record and decides its due wills by the outcome
/// (`wills::verdict`): published when the write won, dropped when another node took the
/// record (it decides them), kept in `waiting` when the outcome is unknown.
async fn write_session<B: Backend>(
    cluster: &Cluster<B>,
    kept: &mut HashMap<Arc<str>, Kept>,
    waiting: &mut Waiting,
    (client_id, snapshot, log, wills): Store,
    tx: &mpsc::Sender<FromCluster>,
) -> Option<bool> {
    let Some(k) = kept.get(&client_id).cloned() else {
        // No record of this node holds this client's will (none was kept for it, or the
        // connection closed before its claim): nobody else can decide it.
        publish_wills(&client_id, wills, tx).await;
        return Some(false);
    };
    if k.fence == Fence::Lost {
        // Taken by another node: a will that was in the record is that node's to decide,
        // unless a write of this node took it out and landed unanswered.
        if snapshot.is_none() {
            kept.remove(&client_id);
        }
        let connected = snapshot.as_ref().is_some_and(|s| s.connected);
        let left = left_to_taker(cluster, &client_id, &k, &wills).await;
        if connected {
            // The router serves a connection of a session this node may write no more
            // (its claim resumed it after the record was given up here): that connection
            // closes, as after a fenced write, and its client's next CONNECT claims the
            // id afresh. Left open, it waited for checkpoints never to be answered.
            tracing::warn!(client_id = %client_id, "a connected session's record cannot be written from this node (another node took it): its connection is closed");
        }
        given_up(client_id, &k, wills, left, connected, tx).await;
        return Some(false);
    }
    let key = ClientKey::new(&client_id);
    let record = snapshot.as_ref().map(|s| {
        let mut r = record_of(cluster.config().node.clone(), k.claim, s, log.clone());
        r.will_takers.clone_from(&k.taken);
        if k.will && !wills.is_empty() {
            // This write takes the will the record held out, to publish it.
            let own = wills::writer_of(&r);
            wills::mark_taken(&mut r, k.claim, own);
        }
        r
    });
    let me = &cluster.config().node;
    let ends_at = matches!(k.fence, Fence::At(_)) && record.is_none();
    // Other nodes' take-outs of wills whose answers may still be on their way: a record
    // that ends keeps their marks, left in place for their retries to find
    // (`wills::ended_keeping`). (Looked at only for a session that ends: every record
    // write passes here.)
    let others = || wills::others_marks(&k.taken, me);
    let outcome = if ends_at && k.will && !wills.is_empty() {
        // The session ends with the will its record holds: ended in a way whose retry
        // knows its own landed write (`Cluster::end_session_as`). (After a create that
        // got no answer, `write_own_session` looks at what it left, and at the registry.)
        let others = others();
        cluster
            .end_session_as(
                &key,
                k.claim,
                k.fence,
                unix_ms(),
                RecordWriter::Owner,
                others,
            )
            .await
            .map(|()| None)
    } else if let Some(taken) = (ends_at && !k.will).then(others).filter(|t| !t.is_empty()) {
        tracing::debug!(target: RECORDS, %client_id, takers = ?taken, "an ended session's record is left with other nodes' will take-out marks");
        let ended = wills::ended_keeping(me.clone(), k.claim, unix_ms(), taken);
        cluster
            .write_own_session(&key, Some(&ended), k.claim, k.fence)
            .await
            .map(|_| None)
    } else {
        cluster
            .write_own_session(&key, record.as_ref(), k.claim, k.fence)
            .await
    };
    match wills::verdict(&outcome) {
        WillVerdict::Publish => {
            let written = matches!(outcome, Ok(Some(_)));
            match outcome {
                Ok(Some(fence)) => {
                    if let Some(r) = &record {
                        tracing::debug!(target: RECORDS, %client_id, ?fence, place = %place_in_log(&r.cursors, &r.outbound), cursors_of = ?r.cursors_of, late = ?r.writer_late, "session record written");
                    }
                    let will = record.as_ref().is_some_and(|r| r.will.is_some());
                    let taken = record
                        .as_ref()
                        .map(|r| r.will_takers.clone())
                        .unwrap_or_default();
                    kept.insert(
                        client_id.clone(),
                        Kept {
                            fence,
                            will,
                            taken,
                            ..k
                        },
                    );
                }
                _ => {
                    kept.remove(&client_id);
                    // An id nobody will claim again: its registry entry goes with it.
                    if k.assigned {
                        if let Err(e) = cluster.forget_client(&key, k.claim).await {
                            tracing::debug!(client_id = %client_id, error = %e, "assigned client id left in the registry");
                        }
                    }
                }
            }
            publish_wills(&client_id, wills, tx).await;
            Some(written)
        }
        verdict @ (WillVerdict::Withhold | WillVerdict::PublishFenced) => {
            // Another node owns the session now: nothing more is written for it, its
            // connection here, if any, is closed (0x8E), and a will the record held is that
            // node's to decide, unless this node's own earlier write took it out.
            tracing::warn!(client_id = %client_id, error = ?outcome.err(), "session not written to the cluster: another node took it");
            let left = verdict == WillVerdict::Withhold
                && left_to_taker(cluster, &client_id, &k, &wills).await;
            kept.insert(
                client_id.clone(),
                Kept {
                    fence: Fence::Lost,
                    ..k.clone()
                },
            );
            given_up(client_id, &k, wills, left, true, tx).await;
            Some(false)
        }
        WillVerdict::Retry => {
            tracing::warn!(client_id = %client_id, error = ?outcome.err(), wills = wills.len(), "session not written to the cluster: tried again shortly (its due wills wait)");
            // A create that got no answer may have landed, with the will it wrote: the next
            // write looks (`Fence::Unanswered`), and a node found to have taken the record
            // since decides that will.
            if let Some(k) = kept.get_mut(&client_id) {
                if k.fence == Fence::Absent {
                    k.will |= record.as_ref().is_some_and(|r| r.will.is_some());
                }
                k.fence = k.fence.after_no_answer();
            }
            waiting.insert(client_id, (snapshot, log, wills));
            None
        }
    }
}

/// Hands wills this node decided to the router to publish.
async fn publish_wills(client_id: &Arc<str>, wills: Vec<KeptWill>, tx: &mpsc::Sender<FromCluster>) {
    if !wills.is_empty() {
        tracing::debug!(target: RECORDS, %client_id, wills = wills.len(), "wills of a session kept here decided: published");
    }
    for will in wills {
        let ev = FromCluster::Will {
            client_id: client_id.clone(),
            will,
        };
        if tx.send(ev).await.is_err() {
            return;
        }
    }
}

/// Whether the due `wills` of a session this node writes no more (another node took its
/// record; `k` as this node kept it) are the taking node's to decide, as the record read
/// now tells. Not when a write of this node took the will out and landed unanswered
/// ([`wills::taken_by_me`]): the node that took the record found no will to decide, and
/// this node publishes it (found by the fault harness: a probe's will withheld by the node
/// whose take-out had landed, and never published; a claimer whose session ended since
/// left the record in place, with the mark, for this read, and it is deleted here). When
/// the record this node last knew held the connection's will (`k.will`), yes. Otherwise,
/// when a write of this node whose outcome it never learnt carried the will into the
/// record ([`wills::left_in_record`]).
async fn left_to_taker<B: Backend>(
    cluster: &Cluster<B>,
    client_id: &Arc<str>,
    k: &Kept,
    wills: &[KeptWill],
) -> bool {
    if wills.is_empty() {
        return false;
    }
    let key = ClientKey::new(client_id);
    let me = &cluster.config().node;
    match cluster.load_session(&key).await {
        Ok((Some(r), at)) => {
            if wills::taken_by_me(&r, me, k.claim) {
                tracing::debug!(target: RECORDS, %client_id, "a will this node's write took out of the record, unanswered, before another node took the record: published here");
                if wills::is_ended(&r) {
                    // Left in place only for this mark (`wills::ended_keeping`); a claim
                    // since rewrote it, and this delete is refused, when the client is back.
                    if let Err(e) = cluster.delete_session(&key, at).await {
                        tracing::debug!(%client_id, error = %e, "an ended session's record is left in place (another node wrote it since, or the engine failed)");
                    }
                }
                return false;
            }
            if k.will {
                return true;
            }
            let left = wills::left_in_record(&r, me, k.claim);
            if left {
                tracing::debug!(target: RECORDS, %client_id, "a write of this node whose answer was lost carried the will into the record: the node that took the record decides it");
            }
            left
        }
        Ok((None, _)) => k.will,
        Err(e) => {
            tracing::warn!(%client_id, error = %e, "cannot read a session record to learn who decides its will: decided by what this node last knew of the record");
            k.will
        }
    }
}

/// A session another node took (`k` as this node kept it): its due `wills` withheld when
/// they are that node's to decide (`left`, [`left_to_taker`]), else published here; with
/// `close`, the router is told to close its connection here (`FromCluster::Fenced`, under
/// the claim the write was made with).
async fn given_up(
    client_id: Arc<str>,
    k: &Kept,
    wills: Vec<KeptWill>,
    left: bool,
    close: bool,
    tx: &mpsc::Sender<FromCluster>,
) {
    if left {
        withhold_wills(&client_id, &wills);
    } else {
        publish_wills(&client_id, wills, tx).await;
    }
    if close {
        let fenced = FromCluster::Fenced {
            client_id,
            claim: k.claim,
            will_in_cluster: k.will,
        };
        let _ = tx.send(fenced).await;
    }
}

fn withhold_wills(client_id: &Arc<str>, wills: &[KeptWill]) {
    if !wills.is_empty() {
        tracing::debug!(target: RECORDS, client_id = %client_id, wills = wills.len(), "will not published here: the node that took the session record decides it");
    }
}

/// The record of a session this node keeps: its subscriptions, its inbound QoS 2 ids and
/// its will; `log` (for a session offline here, or handed over): where it stands in each
/// partition and the messages it holds, so another node resumes it.
fn record_of(
    node: NodeId,
    claim: Revision,
    s: &SessionSnapshot,
    log: Option<Log>,
) -> SessionRecord {
    let (now, now_ms) = (Instant::now(), unix_ms());
    let Log {
        cursors,
        outbound,
        writer,
        writer_late,
    } = log.unwrap_or_default();
    let cursors_of = writer.filter(|w| *w != node);
    SessionRecord {
        node,
        claim: claim.get(),
        protocol: s.version.level(),
        expiry_interval: s.expiry_interval,
        // On the wall clock, so that another node can count a will's delay on from it. A
        // record written at a hand-over has none: its connection was open and is taken over
        // (how the claimer decides its will), though its cursors say where it stands.
        disconnected_at_ms: s.offline_since.map(|since| {
            let ago =
                u64::try_from(now.saturating_duration_since(since).as_millis()).unwrap_or(u64::MAX);
            now_ms.saturating_sub(ago)
        }),
        subscriptions: s
            .subscriptions
            .iter()
            .map(|(filter, sub)| StoredSubscription {
                filter: filter.clone(),
                options: sub.options,
                identifier: sub.id,
            })
            .collect(),
        will: s.will.as_ref().map(stored_will),
        cursors,
        outbound,
        inbound_qos2: s.inbound_qos2.clone(),
        will_takers: Vec::new(),
        cursors_of,
        writer_late,
    }
}

/// The session a record keeps; `None` for one that ends with its connection.
fn snapshot_of(r: &SessionRecord) -> Option<SessionSnapshot> {
    let version = match r.protocol {
        3 => ProtocolVersion::V31,
        4 => ProtocolVersion::V311,
        5 => ProtocolVersion::V5,
        _ => return None,
    };
    (r.expiry_interval > 0).then(|| SessionSnapshot {
        version,
        expiry_interval: r.expiry_interval,
        subscriptions: r
            .subscriptions
            .iter()
            .map(|s| {
                (
                    s.filter.clone(),
                    Subscription {
                        options: s.options,
                        id: s.identifier,
                    },
                )
            })
            .collect(),
        // What a claim takes in is the session; a will the record held was taken out and
        // is decided on its own (`Cluster::load_claimed_session`).
        offline_since: None,
        will: None,
        connected: false,
        inbound_qos2: r.inbound_qos2.clone(),
        outbound: Vec::new(),
    })
}

/// How a session resumes from its record, counted by the node whose own messages its
/// cursors count (`SessionRecord::log_writer`): a record written when it went offline or was handed over, or a
/// checkpoint written while its client was connected (`makelaar_cluster::checkpoint`), says
/// where it stands in the log. One without cursors (written by a node of an older version,
/// or by a reaper before its replay was in) replays nothing, logged.
fn resume_of(r: &SessionRecord) -> Option<Resume> {
    let writer = r.log_writer();
    if r.expiry_interval == 0 {
        return None;
    }
    if r.cursors.is_empty() {
        tracing::warn!(node = %writer, "a session record without its place in the log (its node died before the record's first checkpoint, or a reaper had not yet read back what it held): messages it held or missed are not replayed");
        return None;
    }
    Some(Resume {
        writer: writer.clone(),
        cursors: r.cursors.clone(),
        outbound: r.outbound.clone(),
        writer_late: r.writer_late.clone(),
    })
}

/// The record's state of a message a session holds.
pub(crate) fn outbound_state(k: &KeptMessage) -> (OutboundState, u16) {
    match k.state {
        KeptState::AwaitingAck(id) if k.qos == QoS::AtLeastOnce => (OutboundState::AwaitPuback, id),
        KeptState::AwaitingAck(id) => (OutboundState::AwaitPubrec, id),
        KeptState::AwaitingComp(id) => (OutboundState::AwaitPubcomp, id),
        KeptState::Queued => (OutboundState::Queued, 0),
    }
}

/// How many times a session's replay read is tried again, and the pause between: five
/// minutes, well past the longest JetStream outage the fault harness has seen (about a
/// minute). A replay given up resumes its session without what it held or missed, and the
/// session's next record then says it took them in: acknowledged messages lost (found by
/// the fault harness: a partition run stalled JetStream for 40 s during two replays of
/// `sub2`, which then resumed without 604 messages when the former 30 attempts ran out).
/// Meanwhile the session's window stays shut and its records keep the place it was resumed
/// from, so waiting loses nothing; a replay whose session was taken in again since is
/// dropped when it comes back.
const REPLAY_ATTEMPTS: u32 = 300;
const REPLAY_RETRY: Duration = Duration::from_secs(1);

/// A session's replay (see `makelaar_cluster::replay`): reads back what it held on the old
/// node and what it missed, and hands both to the router.
async fn replay<B: Backend>(
    cluster: Arc<Cluster<B>>,
    req: Box<ReplayRequest>,
    tx: mpsc::Sender<FromCluster>,
) {
    let ReplayRequest {
        client_id,
        resume,
        plan,
        outbound,
        filters,
        max_messages,
        max_bytes,
    } = *req;
    let wanted = |topic: &str| {
        filters
            .iter()
            .any(|f| makelaar_proto::topic::filter_matches(f, topic))
    };
    // The messages are in the partition streams, on disk on a majority: a read that fails
    // (a NATS server lost under it, a leader being elected) is tried again, while the
    // session waits for them (found by the fault harness: a replay that met the kill of a
    // NATS server resumed the session without what it held, acknowledged messages lost).
    let mut attempt = 0;
    let read = loop {
        match cluster
            .replay(&plan, &wanted, max_messages, max_bytes)
            .await
        {
            Ok(r) => break r,
            Err(e) if attempt < REPLAY_ATTEMPTS => {
                attempt += 1;
                tracing::warn!(%client_id, error = %e, attempt, "cannot read a resumed session's messages back from the cluster yet: trying again");
                tokio::time::sleep(REPLAY_RETRY).await;
            }
            Err(e) => {
                tracing::error!(%client_id, error = %e, "cannot read a resumed session's messages back from the cluster: it resumes without them");
                break Default::default();
            }
        }
    };
    let (now, now_ms) = (Instant::now(), unix_ms());
    if read.dropped > 0 {
        tracing::warn!(%client_id, dropped = read.dropped, max_queued_messages = max_messages, max_queued_bytes = max_bytes, "a resumed session missed more messages than its queue holds: the newest were dropped (max_queued_messages, max_queued_bytes)");
    }
    if read.missing > 0 {
        tracing::warn!(%client_id, missing = read.missing, "messages a resumed session held are no longer in the cluster's log (older than its max age): not sent again");
    }
    tracing::debug!(target: RECORDS, %client_id, kept = read.kept.len(), new = %read_ranges(&read.new), "resumed session replayed from the cluster");
    let position = |m: &makelaar_cluster::cluster::LogMessage| LogPosition {
        partition: m.partition.index(),
        seq: m.seq,
    };
    let positioned = |m: makelaar_cluster::cluster::LogMessage| {
        let pos = position(&m);
        // Expired: not delivered [MQTT-3.3.2-5].
        message(&m.topic, m.envelope, now, now_ms).map(|msg| {
            let _ = msg.log_position.set(pos);
            (pos, Arc::new(msg))
        })
    };
    let mut kept: HashMap<usize, Arc<Message>> = HashMap::new();
    let mut queued: Vec<(LogPosition, Arc<Message>)> = Vec::new();
    for (i, m) in read.kept {
        match outbound.get(i).map(|o| o.state) {
            Some(OutboundState::Queued) => queued.extend(positioned(m)),
            Some(_) => {
                let pos = position(&m);
                let msg = resent_message(&m.topic, m.envelope, now, now_ms);
                let _ = msg.log_position.set(pos);
                kept.insert(i, Arc::new(msg));
            }
            None => {}
        }
    }
    queued.extend(read.new.into_iter().filter_map(positioned));
    queued.sort_by_key(|(pos, _)| (pos.partition, pos.seq));
    let mut in_flight = Vec::new();
    for (i, o) in outbound.iter().enumerate() {
        let (qos, state) = match o.state {
            OutboundState::AwaitPuback => (QoS::AtLeastOnce, KeptState::AwaitingAck(o.packet_id)),
            OutboundState::AwaitPubrec => (QoS::ExactlyOnce, KeptState::AwaitingAck(o.packet_id)),
            OutboundState::AwaitPubcomp => (QoS::ExactlyOnce, KeptState::AwaitingComp(o.packet_id)),
            OutboundState::Queued => continue,
        };
        let msg = match (o.state, kept.remove(&i)) {
            (_, Some(msg)) => msg,
            // Only its packet id matters now: PUBREL goes out, never the PUBLISH again.
            (OutboundState::AwaitPubcomp, None) => Arc::new(placeholder(LogPosition {
                partition: o.partition,
                seq: o.seq,
            })),
            (_, None) => continue,
        };
        in_flight.push(KeptMessage { msg, qos, state });
    }
    let _ = tx
        .send(FromCluster::Replayed {
            client_id,
            resume,
            in_flight,
            queued: queued.into_iter().map(|(_, m)| m).collect(),
        })
        .await;
}

/// The debug log target that follows session records' places in the log: where each
/// record written or read stands, and what each replay read (`--log-level
/// info,makelaar::records=debug`).
pub(crate) const RECORDS: &str = "makelaar::records";

/// The replayed messages' sequences, per partition, as `p<index>:<first>..<last>x<count>`.
fn read_ranges(read: &[makelaar_cluster::cluster::LogMessage]) -> String {
    let mut per: std::collections::BTreeMap<u16, (u64, u64, usize)> = Default::default();
    for m in read {
        let e = per.entry(m.partition.index()).or_insert((u64::MAX, 0, 0));
        *e = (e.0.min(m.seq), e.1.max(m.seq), e.2 + 1);
    }
    per.iter()
        .map(|(p, (lo, hi, n))| format!("p{p}:{lo}..{hi}x{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A message sent on another node and not acknowledged: sent again even when its expiry ran
/// out since, as its onward delivery had started [MQTT-3.3.2-5] (with an interval of 0 left,
/// as a node resending from its own store does).
fn resent_message(topic: &str, e: Envelope, now: Instant, now_ms: u64) -> Message {
    any_message(topic, e, now, now_ms).0
}

/// The stand-in for a QoS 2 message whose PUBREC came back on another node: only its
/// packet id and place in the log travel.
fn placeholder(pos: LogPosition) -> Message {
    let msg = Message {
        topic: Arc::from(""),
        payload: bytes::Bytes::new(),
        qos: QoS::ExactlyOnce,
        retain: false,
        properties: Properties::default(),
        expires_at: None,
        origin: None,
        received_at: None,
        log_position: std::sync::OnceLock::new(),
    };
    let _ = msg.log_position.set(pos);
    msg
}

/// A will as the cluster keeps it.
fn stored_will(k: &KeptWill) -> StoredWill {
    let w = &k.will;
    let p = &w.properties;
    StoredWill {
        topic: w.topic.clone(),
        payload: w.payload.clone(),
        qos: w.qos,
        retain: w.retain,
        delay: p.will_delay_interval.unwrap_or(0),
        message_expiry: p.message_expiry_interval,
        payload_utf8: p.payload_format_indicator == Some(1),
        content_type: p.content_type.clone(),
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.clone(),
        user_properties: p.user_properties.clone(),
        username: k.username.as_deref().map(str::to_owned),
    }
}

/// A will the cluster kept, as the core takes it.
fn kept_will(w: StoredWill) -> KeptWill {
    let properties = Properties {
        will_delay_interval: (w.delay > 0).then_some(w.delay),
        message_expiry_interval: w.message_expiry,
        payload_format_indicator: w.payload_utf8.then_some(1),
        content_type: w.content_type,
        response_topic: w.response_topic,
        correlation_data: w.correlation_data,
        user_properties: w.user_properties,
        ..Properties::default()
    };
    KeptWill {
        will: Box::new(Will {
            topic: w.topic,
            payload: w.payload,
            qos: w.qos,
            retain: w.retain,
            properties,
        }),
        username: w.username.map(Arc::from),
    }
}

/// A will a claim took out of the record, as the core decides it.
fn remote_will(t: TakenWill) -> RemoteWill {
    let kept = kept_will(t.will);
    RemoteWill {
        will: kept.will,
        username: kept.username,
        expiry_interval: t.expiry_interval,
        offline_for: t.offline_for,
    }
}

/// Takes over the sessions of a dead node this node won the reaping of: each record is
/// written by compare-and-set (its will taken out when it is due now, its connection
/// offline from now) before anything of it is published, so a client that connects
/// elsewhere at the same moment has its will decided by one node only. Due wills go to
/// the router to publish (QoS 1/2 appended to their partition, retained ones set, like any
/// will); the sessions that live on are kept here, offline, their delayed wills published
/// when due unless their clients return [MQTT-3.1.3-9].
async fn reap<B: Backend>(
    cluster: Arc<Cluster<B>>,
    dead: Expired,
    sessions: mpsc::UnboundedSender<SessionOp>,
    tx: mpsc::Sender<FromCluster>,
) {
    let me = cluster.config().node.clone();
    let (mut published, mut kept) = (0usize, 0usize);
    // Sessions whose take-over failed on the engine (JetStream electing leaders after the
    // loss that killed the node) are tried again: a session nobody takes loses its will
    // (found by the fault harness: a cut link's victim stepped down, and its reaper's
    // only attempt at the probe's session got a 503).
    // `None`: every session of the dead node is still to be listed.
    let mut only: Option<Vec<ClientKey>> = None;
    let mut complete = false;
    for attempt in 0..REAP_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(REAP_RETRY).await;
        }
        let Orphans {
            taken,
            failed,
            given_up,
        } = match cluster.orphans(&dead, only.clone()).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(node = %dead.node, error = %e, "cannot read a dead node's sessions yet: tried again shortly");
                continue;
            }
        };
        // Its sessions a claim moved elsewhere and maybe never took (the take-back the
        // dead node had set died with it): taken back here after the claim had its time.
        for (client, written) in given_up {
            spawn_settle(&cluster, client, written, &sessions, &tx);
        }
        for o in taken {
            let Some(Taken { will, session }) =
                take_over_orphan(&cluster, &me, o, &sessions, &tx).await
            else {
                return;
            };
            published += usize::from(will);
            kept += usize::from(session);
        }
        if failed.is_empty() {
            complete = true;
            break;
        }
        only = Some(failed);
    }
    if !complete {
        tracing::error!(target: crate::status::STATUS_TARGET, node = %dead.node, "gave up taking over some of a dead node's sessions (the engine kept failing for 30 s): their wills are not published here");
    }
    tracing::info!(target: crate::status::STATUS_TARGET, node = %dead.node, wills = published, sessions = kept, "took over a dead node's clients: wills due now published, sessions kept offline here");
}

/// How long after a hand-over this node looks whether the claiming node took the
/// session's record: longer than a claim takes (the hand-over's 3 s wait, then reads and
/// writes of at most 5 s each), so a claim still running is not taken for a failed one.
const ABANDONED_AFTER: Duration = Duration::from_secs(20);

/// A session given up to a claim (by this node, an earlier run of it, or a dead node this
/// node reaps; its record as `written` then, holding the connection's will, or perhaps:
/// a write whose answer got lost): once [`ABANDONED_AFTER`] has passed, if the claiming
/// node never took the record (its claim failed after the hand-over: found by the fault
/// harness, a link cut where the claim timed out after this node had closed the
/// connection, and no node ever published the will), it is taken back here like a dead
/// node's session: the will published now if due, the session kept offline here
/// (`Cluster::take_abandoned`).
async fn settle_release<B: Backend>(
    cluster: Arc<Cluster<B>>,
    client: ClientKey,
    written: GivenUp,
    sessions: mpsc::UnboundedSender<SessionOp>,
    tx: mpsc::Sender<FromCluster>,
) {
    tracing::debug!(target: RECORDS, %client, ?written, "a session given up to a claim with a will in its record: looked at again later");
    tokio::time::sleep(ABANDONED_AFTER).await;
    for attempt in 0..REAP_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(REAP_RETRY).await;
        }
        match cluster.take_abandoned(&client, &written).await {
            Ok(None) => return,
            Ok(Some(o)) => {
                tracing::warn!(%client, "a session handed over was never taken by the node that asked for it (its claim failed): taken back here, and its will decided here");
                let me = cluster.config().node.clone();
                let _ = take_over_orphan(&cluster, &me, o, &sessions, &tx).await;
                return;
            }
            Err(e) => {
                tracing::warn!(%client, error = %e, "cannot look whether a session handed over was taken: tried again shortly");
            }
        }
    }
    tracing::error!(%client, "gave up looking whether a session handed over was taken (the engine kept failing for 30 s): if its claim failed, its will is not published");
}

/// At start-up: the sessions an earlier run of this node gave up to claims that never took
/// their records (`Cluster::given_up_by_earlier_runs`) are taken back, with their wills,
/// as that run would have (`settle_release`). (A dead node's reaper finds those of a node
/// that does not come back.) Tried for a while when the engine fails.
async fn take_back_from_earlier_runs<B: Backend>(
    cluster: Arc<Cluster<B>>,
    sessions: mpsc::UnboundedSender<SessionOp>,
    tx: mpsc::Sender<FromCluster>,
) {
    for attempt in 0..REAP_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(REAP_RETRY).await;
        }
        match cluster.given_up_by_earlier_runs().await {
            Ok(given_up) => {
                for (client, written) in given_up {
                    spawn_settle(&cluster, client, written, &sessions, &tx);
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for sessions an earlier run of this node gave up to claims that failed: tried again shortly");
            }
        }
    }
    tracing::error!("gave up looking for sessions an earlier run of this node gave up to claims that failed (the engine kept failing for 30 s): their wills may not be published");
}

/// How often, and how far apart, the reaper of a dead node tries the sessions it could not
/// take yet (or the list of them).
const REAP_ATTEMPTS: u32 = 30;
const REAP_RETRY: Duration = Duration::from_secs(1);

/// What taking one dead node's session over did: published its will, kept its session.
struct Taken {
    will: bool,
    session: bool,
}

/// Takes one session a dead node left: its record written here (or deleted, ended), its
/// due will published, the session kept offline here; `None` once the router is gone.
async fn take_over_orphan<B: Backend>(
    cluster: &Cluster<B>,
    me: &NodeId,
    o: makelaar_cluster::cluster::Orphan,
    sessions: &mpsc::UnboundedSender<SessionOp>,
    tx: &mpsc::Sender<FromCluster>,
) -> Option<Taken> {
    let mut done = Taken {
        will: false,
        session: false,
    };
    let Ok(id) = o.client.client_id() else {
        return Some(done);
    };
    let client_id: Arc<str> = Arc::from(id.as_str());
    let now_ms = unix_ms();
    // A connection that was open when its node died ended at the reap, as far as anyone
    // can tell: its will's delay and its session's expiry count from now.
    let offline = wills::offline_for(&o.record, now_ms).unwrap_or(Duration::ZERO);
    let expiry = o.record.expiry_interval;
    let delay = o.record.will.as_ref().map_or(0, |w| w.delay);
    let will_in = will_wait(delay, expiry, offline);
    let left = session_left(expiry, offline);
    let due_now = o.record.will.is_some() && will_in.is_none();
    // Written as reaped, or deleted (ended). It keeps the dead node's place in the log,
    // counted by that node (`SessionRecord::cursors_of`), until the router's replay from it
    // is back (`FromCluster::Orphan`) and the record written then says where the session
    // stands here: a node its client connects to meanwhile replays from the same place.
    let record = left.map(|_| wills::reaped(&o.record, me.clone(), o.claim, now_ms, due_now));
    let taken = record
        .as_ref()
        .map_or(o.record.will_takers.clone(), |r| r.will_takers.clone());
    let mut written = write_reaped(cluster, &o, record.as_ref(), due_now, now_ms).await;
    for _ in 1..REAP_ATTEMPTS {
        if !matches!(
            written,
            Err(makelaar_cluster::cluster::ClusterError::Backend(_))
        ) {
            break;
        }
        tokio::time::sleep(REAP_RETRY).await;
        written = write_reaped(cluster, &o, record.as_ref(), due_now, now_ms).await;
    }
    let fence = match written {
        Ok(f) => f,
        Err(e) => {
            // Taken by a node its client connected to meanwhile: that node decides.
            tracing::debug!(client_id = %client_id, error = %e, "a dead node's session was taken meanwhile (or could not be written)");
            return Some(done);
        }
    };
    let mut will = o.record.will.clone().map(kept_will);
    if due_now {
        if let Some(w) = will.take() {
            done.will = true;
            tracing::debug!(target: RECORDS, %client_id, dead = %o.record.node, "a dead node's will published by its reaper");
            let ev = FromCluster::Will {
                client_id: client_id.clone(),
                will: w,
            };
            tx.send(ev).await.ok()?;
        }
    }
    let (Some(expires_in), Some(fence), Some(mut snapshot)) = (left, fence, snapshot_of(&o.record))
    else {
        return Some(done);
    };
    done.session = true;
    snapshot.will = will;
    let _ = sessions.send(SessionOp::Owned(
        client_id.clone(),
        o.claim,
        fence,
        snapshot.will.is_some(),
        taken,
    ));
    let ev = FromCluster::Orphan {
        client_id,
        snapshot,
        will_in: will_in.unwrap_or(Duration::ZERO),
        expires_in,
        resume: resume_of(&o.record),
    };
    tx.send(ev).await.ok()?;
    Some(done)
}

/// Writes a dead node's session as reaped (`Some`) or deletes it (ended) at the fence the
/// reaper read; the new fence (`None` once deleted). A retry finds a write of its own that
/// landed unanswered (`Cluster::write_session_as`); an ended session whose will is due
/// (`will_due`) is ended so that a retry knows that too (`Cluster::end_session_as`):
/// a refused plain delete would pass for another node's take, and the will be lost.
async fn write_reaped<B: Backend>(
    cluster: &Cluster<B>,
    o: &makelaar_cluster::cluster::Orphan,
    record: Option<&SessionRecord>,
    will_due: bool,
    now_ms: u64,
) -> Result<Option<Fence>, makelaar_cluster::cluster::ClusterError> {
    match record {
        Some(r) => {
            cluster
                .write_session_as(&o.client, Some(r), o.claim, o.fence, RecordWriter::Reaper)
                .await
        }
        None => {
            if will_due {
                // (The dead node's own marks: its retries died with it.)
                let me = &cluster.config().node;
                let mut others = wills::others_marks(&o.record.will_takers, me);
                others.retain(|t| t.node != o.record.node);
                let writer = RecordWriter::Reaper;
                cluster
                    .end_session_as(&o.client, o.claim, o.fence, now_ms, writer, others)
                    .await?;
            } else {
                cluster.delete_session(&o.client, o.fence).await?;
            }
            // Ended: its registry entry goes too (kept if claimed meanwhile), so assigned
            // ids do not pile up there.
            let _ = cluster.forget_client(&o.client, o.claim).await;
            Ok(None)
        }
    }
}

async fn released<B: Backend>(cluster: Arc<Cluster<B>>, req: ReleaseRequest) {
    // Refused harmlessly when the entry moved on (this node held no connection for it).
    let _ = cluster.mark_released(&req.client, req.revision).await;
    if let Err(e) = cluster.answer_release(&req).await {
        tracing::warn!(client = %req.client, error = %e, "cannot answer a hand-over request");
    }
}

/// Unix milliseconds now.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The envelope of a message this node accepted.
fn envelope(node: &NodeId, msg: &Message, now: Instant, now_ms: u64) -> Envelope {
    let p = &msg.properties;
    Envelope {
        qos: msg.qos,
        retain: msg.retain,
        origin_node: node.clone(),
        origin_client: msg.origin.as_deref().unwrap_or("").to_owned(),
        received_at_ms: now_ms,
        message_expiry: msg.remaining_expiry(now),
        payload_utf8: p.payload_format_indicator == Some(1),
        content_type: p.content_type.clone(),
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.clone(),
        user_properties: p.user_properties.clone(),
        payload: msg.payload.clone(),
        claim: None,
    }
}

/// The message an envelope from the cluster carries; `None` once expired [MQTT-3.3.2-5].
fn message(topic: &str, e: Envelope, now: Instant, now_ms: u64) -> Option<Message> {
    let (msg, expired) = any_message(topic, e, now, now_ms);
    (!expired).then_some(msg)
}

/// The message an envelope carries, and whether its expiry ran out (it then has 0 seconds
/// left).
fn any_message(topic: &str, e: Envelope, now: Instant, now_ms: u64) -> (Message, bool) {
    let (expires_at, interval, expired) = match e.remaining_expiry(now_ms) {
        Expiry::Never => (None, None, false),
        Expiry::Remaining(s) => (
            Some(now + Duration::from_secs(u64::from(s))),
            Some(s),
            false,
        ),
        Expiry::Expired => (Some(now), Some(0), true),
    };
    let properties = Properties {
        payload_format_indicator: e.payload_utf8.then_some(1),
        message_expiry_interval: interval,
        content_type: e.content_type,
        response_topic: e.response_topic,
        correlation_data: e.correlation_data,
        user_properties: e.user_properties,
        ..Properties::default()
    };
    let msg = Message {
        topic: Arc::from(topic),
        payload: e.payload,
        qos: e.qos,
        retain: e.retain,
        properties,
        expires_at,
        origin: (!e.origin_client.is_empty()).then(|| Arc::from(e.origin_client.as_str())),
        // Received by this node now (a bridge's max_age counts from here).
        received_at: Some(now),
        log_position: std::sync::OnceLock::new(),
    };
    (msg, expired)
}

/// Messages the writer has handed to NATS and waits for (its pipeline's depth): below
/// async-nats's own bound on acknowledgements in flight (5,000), so that bound never
/// reorders or refuses an append.
const WRITER_IN_FLIGHT: usize = 4096;

/// What one batch's writes came to: its epoch, its size, and per message its publisher,
/// whether the write succeeded and where a QoS 1/2 message landed.
type Written = (
    Option<u64>,
    usize,
    Vec<(Option<ConnId>, bool, Option<LogPosition>)>,
);

/// The writer task (see the module documentation). Batches are pipelined: the writes of
/// the next batch go out while earlier ones wait for NATS (up to [`WRITER_IN_FLIGHT`]
/// messages), always in the router's order, so the appends of one connection (a TCP
/// connection to one server) reach each partition stream in that order; epochs are
/// reported in order once every write of their batch has returned.
async fn writer(
    cluster: Arc<Cluster<NatsBackend>>,
    mut rx: mpsc::UnboundedReceiver<Batch>,
    tx: mpsc::Sender<FromCluster>,
    queue: QueueRoom,
) {
    use futures_util::stream::FuturesOrdered;
    let node = cluster.config().node.clone();
    let mut pending: FuturesOrdered<futures_util::future::BoxFuture<'static, Written>> =
        FuturesOrdered::new();
    let mut in_flight = 0usize;
    let mut open = true;
    while open || !pending.is_empty() {
        tokio::select! {
            // Finished batches first: they release acknowledgements and room.
            biased;
            Some((epoch, n, results)) = pending.next(), if !pending.is_empty() => {
                in_flight -= n;
                queue.release(n);
                if !report_written(epoch, results, &tx).await {
                    return;
                }
            }
            next = rx.recv(), if open && in_flight < WRITER_IN_FLIGHT => match next {
                None => open = false,
                Some(Batch { epoch, messages }) => {
                    in_flight += messages.len();
                    pending.push_back(Box::pin(write_batch(
                        cluster.clone(),
                        node.clone(),
                        epoch,
                        messages,
                        tx.clone(),
                    )));
                }
            },
        }
    }
}

/// Hands one batch's messages to the cluster (their writes run concurrently, issued in
/// order). A will whose writes fail is tried again apart ([`first_will_write`]), so the
/// batch, and the acknowledgements waiting for it, do not wait for that; the router hears
/// of it through `tx` before the batch's report.
async fn write_batch<B: Backend>(
    cluster: Arc<Cluster<B>>,
    node: NodeId,
    epoch: Option<u64>,
    messages: Vec<(Exported, Option<Revision>)>,
    tx: mpsc::Sender<FromCluster>,
) -> Written {
    let now = Instant::now();
    let now_ms = unix_ms();
    let writes = messages.iter().map(|(ex, claim)| {
        let cluster = &cluster;
        let tx = &tx;
        let env = Envelope {
            claim: *claim,
            ..envelope(&node, &ex.msg, now, now_ms)
        };
        async move {
            if ex.from.is_none() {
                // A will: no acknowledgement waits for it, no publisher to disconnect.
                let appended = first_will_write(cluster, ex.msg.clone(), env, epoch, tx).await;
                return (None, true, appended);
            }
            let topic = &*ex.msg.topic;
            let mut appended = None;
            let mut r = if ex.msg.qos == QoS::AtMostOnce {
                cluster.publish(topic, &env).await
            } else {
                cluster.append(topic, &env).await.map(|(p, seq)| {
                    // Where the sessions that took it in find it again (a session that
                    // moves lists its messages by it).
                    let pos = LogPosition {
                        partition: p.index(),
                        seq,
                    };
                    let _ = ex.msg.log_position.set(pos);
                    appended = Some(pos);
                })
            };
            if r.is_ok() && ex.msg.retain {
                let kept = (!env.payload.is_empty()).then_some(&env);
                r = cluster.store_retained(topic, kept).await;
            }
            if let Err(e) = &r {
                tracing::error!(topic, error = %e, "cannot hand a message to the cluster: its publisher is disconnected unacknowledged");
            }
            (ex.from, r.is_ok(), appended)
        }
    });
    let results = futures_util::future::join_all(writes).await;
    (epoch, messages.len(), results)
}

/// How often a will's writes to the cluster that failed are tried again.
const WILL_RETRY_EVERY: Duration = Duration::from_secs(1);

/// How long a will's failed writes are tried again before they are given up (an error in
/// the log: the will reached this node's subscribers only). JetStream churned for up to
/// 50 s under the fault harness's link cut; a minute outlasts that, and stays well inside
/// the partition streams' duplicate window, so a retry never stores a will twice.
const WILL_RETRY_FOR: Duration = Duration::from_secs(60);

// The last try starts by WILL_RETRY_FOR + WILL_RETRY_EVERY and takes a request's timeout
// at most (seconds): within the duplicate window of the first copy stored, with room.
const _: () = assert!(
    WILL_RETRY_FOR.as_secs() + 30 <= makelaar_cluster::nats::DUPLICATE_WINDOW.as_secs(),
    "a will's append is retried within the streams' duplicate window"
);

/// A will's writes to the cluster, as far as they went. A will has no publisher that would
/// send it again when a write fails (a publisher is disconnected unacknowledged and does),
/// so its writes are tried again until they go through ([`retry_will`]); until then it
/// reached this node's subscribers only.
struct WillWrites {
    /// Its envelope, as first written (its `received_at_ms` the first try's).
    env: Envelope,
    msg: Arc<Message>,
    /// The id of its append: a retry of an append whose first try was stored after all
    /// (its answer lost) stores nothing more (QoS 1/2). QoS 0 goes on core NATS, which has
    /// no deduplication: a publish that failed was not sent, as far as the client knows, so
    /// it is sent again as it is.
    id: makelaar_cluster::MessageId,
    /// Its append (QoS 1/2) or publish (QoS 0) is done.
    logged: bool,
    /// Its retained write is still to do.
    retained: bool,
}

impl WillWrites {
    fn topic(&self) -> &str {
        &self.msg.topic
    }
}

/// Does what is left of a will's writes, once (a QoS 1/2 will's place in the log is set
/// on its message when its append returns). `late`: a retry, whose retained write must not
/// replace a retained message published to the topic since
/// ([`Cluster::store_retained_unless_newer`]).
async fn write_will<B: Backend>(
    cluster: &Cluster<B>,
    w: &mut WillWrites,
    late: bool,
) -> Result<(), makelaar_cluster::cluster::ClusterError> {
    if !w.logged {
        if w.env.qos == QoS::AtMostOnce {
            cluster.publish(w.topic(), &w.env).await?;
        } else {
            let (p, seq) = cluster.append_once(w.topic(), &w.env, &w.id).await?;
            let pos = LogPosition {
                partition: p.index(),
                seq,
            };
            // Where the sessions here that took it in find it again (a record written
            // from now on lists it; one written before left it out, and the node resuming
            // that session replays it: this node's message past the record's cursors).
            let _ = w.msg.log_position.set(pos);
        }
        w.logged = true;
    }
    if w.retained {
        if late {
            if !cluster
                .store_retained_unless_newer(w.topic(), &w.env)
                .await?
            {
                tracing::info!(topic = w.topic(), "a will's late retained write keeps the retained message published to its topic since");
            }
        } else {
            let kept = (!w.env.payload.is_empty()).then_some(&w.env);
            cluster.store_retained(w.topic(), kept).await?;
        }
        w.retained = false;
    }
    Ok(())
}

/// A will's first try at its writes (in its batch, numbered `epoch`); when one fails, the
/// rest is tried again in a task of their own ([`retry_will`]). Where it was appended, when
/// it was (also when its retained write failed after). When its append is what failed, the
/// router is told (`FromCluster::WillRetrying`) before this returns, so before its batch's
/// report: the replays of sessions taken in after it wait for its place in the log.
async fn first_will_write<B: Backend>(
    cluster: &Arc<Cluster<B>>,
    msg: Arc<Message>,
    env: Envelope,
    epoch: Option<u64>,
    tx: &mpsc::Sender<FromCluster>,
) -> Option<LogPosition> {
    let mut w = WillWrites {
        id: cluster.next_message_id(),
        retained: msg.retain,
        env,
        msg,
        logged: false,
    };
    let written = write_will(cluster, &mut w, false).await;
    let appended = w.msg.log_position.get().copied();
    if let Err(e) = written {
        tracing::warn!(topic = w.topic(), error = %e, attempt = 1, "cannot hand a will to the cluster yet (it reached this node's subscribers only): trying again");
        let told = if w.logged || w.env.qos == QoS::AtMostOnce {
            // Its place in the log is known, or it has none: no replay waits for it.
            false
        } else if let Some(epoch) = epoch {
            let id = w.id.clone();
            tx.send(FromCluster::WillRetrying { id, epoch })
                .await
                .is_ok()
        } else {
            // (A QoS 1/2 message makes its batch promised, with an epoch.)
            tracing::warn!(topic = w.topic(), "a QoS 1/2 will came in a batch without an epoch: sessions taken in before its append is back may miss it");
            false
        };
        tokio::spawn(retry_will(cluster.clone(), w, told.then(|| tx.clone())));
    }
    appended
}

/// Tries a will's failed writes again, every [`WILL_RETRY_EVERY`] for [`WILL_RETRY_FOR`];
/// whether they went through. `placed`: where to say once where its append landed, or that
/// it was given up (`FromCluster::WillPlaced`; the replays waiting for it go on then).
async fn retry_will<B: Backend>(
    cluster: Arc<Cluster<B>>,
    mut w: WillWrites,
    mut placed: Option<mpsc::Sender<FromCluster>>,
) -> bool {
    let since = tokio::time::Instant::now();
    let mut attempt = 1u32;
    loop {
        tokio::time::sleep(WILL_RETRY_EVERY).await;
        attempt += 1;
        let written = write_will(&cluster, &mut w, true).await;
        if w.logged {
            // Its place is known now, whether its retained write is still to do or not.
            will_placed(&mut placed, &w).await;
        }
        match written {
            Ok(()) => {
                tracing::info!(
                    topic = w.topic(),
                    attempt,
                    "a will was handed to the cluster after all"
                );
                return true;
            }
            Err(e) if since.elapsed() >= WILL_RETRY_FOR => {
                tracing::error!(topic = w.topic(), error = %e, attempts = attempt, "gave up handing a will to the cluster: it reached this node's subscribers only");
                will_placed(&mut placed, &w).await;
                return false;
            }
            Err(e) => {
                tracing::warn!(topic = w.topic(), error = %e, attempt, "cannot hand a will to the cluster yet: trying again");
            }
        }
    }
}

/// Tells the router, once, where a retried will's append landed (`None`: given up).
async fn will_placed(placed: &mut Option<mpsc::Sender<FromCluster>>, w: &WillWrites) {
    if let Some(tx) = placed.take() {
        let at = w.msg.log_position.get().copied();
        let _ = tx
            .send(FromCluster::WillPlaced {
                id: w.id.clone(),
                at,
            })
            .await;
    }
}

/// Reports a written batch to the router (`FromCluster::Appended`, when it has an epoch);
/// `false` once the router is gone.
async fn report_written(
    epoch: Option<u64>,
    results: Vec<(Option<ConnId>, bool, Option<LogPosition>)>,
    tx: &mpsc::Sender<FromCluster>,
) -> bool {
    let Some(epoch) = epoch else {
        return true;
    };
    let mut own: HashMap<u16, u64> = HashMap::new();
    for pos in results.iter().filter_map(|r| r.2) {
        let e = own.entry(pos.partition).or_default();
        *e = (*e).max(pos.seq);
    }
    let failed = results
        .into_iter()
        .filter_map(|(from, ok, _)| (!ok).then_some(from).flatten())
        .collect();
    let own = own.into_iter().collect();
    tx.send(FromCluster::Appended { epoch, failed, own })
        .await
        .is_ok()
}

/// A partition's follower: every message goes to the router in stream order, another
/// node's to be routed, this node's own as its position only (it was routed when it was
/// published), and so does a claim's barrier (the CONNECT waiting for it is let in once
/// the follower is past it).
async fn follower(
    mut follow: impl futures_util::Stream<Item = Followed> + Unpin,
    me: NodeId,
    tx: mpsc::Sender<FromCluster>,
) {
    while let Some(entry) = follow.next().await {
        let m = match entry {
            Followed::Message(m) => m,
            Followed::Barrier {
                partition,
                seq,
                claims,
            } => {
                let ev = FromCluster::Barrier {
                    partition: partition.index(),
                    seq,
                    claims,
                };
                if tx.send(ev).await.is_err() {
                    return;
                }
                continue;
            }
            // Dropped by every reader: its position only.
            Followed::Late { partition, seq, .. } => {
                let ev = FromCluster::Log {
                    partition: partition.index(),
                    seq,
                    msg: None,
                };
                if tx.send(ev).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let pos = LogPosition {
            partition: m.partition.index(),
            seq: m.seq,
        };
        let msg = if m.envelope.origin_node == me {
            None
        } else {
            // Expired on the way: its position still counts [MQTT-3.3.2-5].
            message(&m.topic, m.envelope, Instant::now(), unix_ms()).map(|msg| {
                let _ = msg.log_position.set(pos);
                Arc::new(msg)
            })
        };
        let ev = FromCluster::Log {
            partition: pos.partition,
            seq: pos.seq,
            msg,
        };
        if tx.send(ev).await.is_err() {
            return;
        }
    }
}

async fn retained_watch(
    mut watch: impl futures_util::Stream<Item = makelaar_cluster::cluster::RetainedChange> + Unpin,
    tx: mpsc::Sender<FromCluster>,
) {
    while let Some(change) = watch.next().await {
        let message = change
            .message
            .and_then(|e| message(&change.topic, e, Instant::now(), unix_ms()))
            .map(Arc::new);
        let ev = FromCluster::Retained {
            topic: change.topic,
            message,
        };
        if tx.send(ev).await.is_err() {
            return;
        }
    }
    // The engine's watch resumes by itself; one that ends leaves this node's retained
    // messages as they are now.
    tracing::error!("the watch of the cluster's retained messages ended: this node no longer sees retained messages set elsewhere; restart it");
}

/// Hands the registry writes of other nodes to the router (see
/// `Router`'s `ClusterSide::claimed_elsewhere`).
async fn registry_watch(
    mut watch: impl futures_util::Stream<Item = makelaar_cluster::cluster::ClaimedElsewhere> + Unpin,
    tx: mpsc::Sender<FromCluster>,
) {
    while let Some(c) = watch.next().await {
        let ev = FromCluster::ClaimedElsewhere {
            client_id: Arc::from(c.client_id),
            revision: c.revision,
        };
        if tx.send(ev).await.is_err() {
            return;
        }
    }
    tracing::error!("the watch of the cluster's client registry ended: this node no longer sees its clients taken over elsewhere; restart it");
}

/// The node's core NATS subscriptions, one per distinct filter, merged: each message with
/// the filter whose subscription brought it.
type Live = futures_util::stream::SelectAll<
    std::pin::Pin<
        Box<
            dyn futures_util::Stream<Item = (Arc<str>, makelaar_cluster::backend::Delivery)> + Send,
        >,
    >,
>;

/// The node's followed filters in a topic tree: which of them a topic matches first (in
/// byte order), found by a walk of the topic's levels, not by trying every filter. NATS
/// delivers a message once per matching subscription; only the first filter's copy is
/// routed (the router's own topic tree then finds every local subscriber).
#[derive(Default)]
struct FirstFilter {
    tree: makelaar_core::topic::TopicTree<(), Arc<str>>,
}

impl FirstFilter {
    fn add(&mut self, filter: Arc<str>) {
        let key = filter.clone();
        self.tree.insert(&key, (), filter);
    }

    fn remove(&mut self, filter: &str) {
        self.tree.remove(filter, ());
    }

    /// The first filter (in byte order) `topic` matches, by MQTT's rules ([MQTT-4.7.1-2],
    /// [MQTT-4.7.2-1]), which the filters' NATS subjects encode.
    fn of(&self, topic: &str) -> Option<Arc<str>> {
        let mut first: Option<Arc<str>> = None;
        self.tree.for_each_match(topic, |(), f| {
            if first.as_ref().is_none_or(|best| f < best) {
                first = Some(f.clone());
            }
        });
        first
    }
}

/// The reader (see the module documentation): the node's core NATS subscriptions, one per
/// distinct filter, and what it follows per share group with a member here.
struct Reader {
    cluster: Arc<Cluster<NatsBackend>>,
    /// Each followed filter: what ends its subscription (polled in [`Live`]).
    filters: HashMap<String, AbortHandle>,
    /// The same filters, for the copy of a message to route.
    first: FirstFilter,
    /// Each share group with a member here (`$share/GROUP/FILTER`): its queue subscription
    /// and consumer pulls, stopped together.
    groups: HashMap<String, Following>,
    to_router: mpsc::Sender<FromCluster>,
    /// `<prefix>.live.`, what every live subject starts with.
    live_prefix: String,
}

impl Reader {
    async fn filters_changed(&mut self, changes: Vec<FilterChange>, live: &mut Live) {
        for change in changes {
            match change {
                FilterChange::Added(filter) => {
                    let subject = self.cluster.live_filter(&filter);
                    match self.cluster.backend().subscribe(subject, None).await {
                        Ok(sub) => {
                            let f: Arc<str> = Arc::from(filter.as_str());
                            let (sub, stop) = futures_util::stream::abortable(sub);
                            let tag = f.clone();
                            live.push(Box::pin(sub.map(move |d| (tag.clone(), d))));
                            self.first.add(f);
                            if let Some(old) = self.filters.insert(filter, stop) {
                                old.abort();
                            }
                        }
                        Err(e) => {
                            tracing::error!(%filter, error = %e, "cannot follow a filter on the cluster: QoS 0 messages from other nodes will not reach it")
                        }
                    }
                }
                FilterChange::Removed(filter) => {
                    // The aborted subscription ends at its next poll and is dropped, which
                    // unsubscribes on NATS.
                    if let Some(stop) = self.filters.remove(&filter) {
                        stop.abort();
                        self.first.remove(&filter);
                    }
                }
                FilterChange::GroupAdded(full) => {
                    let group = match ShareGroup::parse(&full) {
                        Ok(g) => g,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot follow a share group on the cluster");
                            continue;
                        }
                    };
                    let following = follow_group(&self.cluster, group, &self.to_router).await;
                    if let Some(old) = self.groups.insert(full, following) {
                        old.stop();
                    }
                }
                FilterChange::GroupRemoved(full) => {
                    // This node's last member left: it stops taking the group's messages;
                    // what it pulled and did not hand to a member goes to another node.
                    if let Some(f) = self.groups.remove(&full) {
                        f.stop();
                    }
                }
            }
        }
    }

    /// A QoS 0 message from another node (the NATS connection has no echo) that came through
    /// the subscription of `filter`. NATS delivers one copy per matching subscription of
    /// the connection; only the copy of the first matching filter (in byte order) is routed,
    /// the router's topic tree then finds every local subscriber.
    async fn live(&mut self, filter: Arc<str>, d: makelaar_cluster::backend::Delivery) {
        let Some(tokens) = d.subject.strip_prefix(self.live_prefix.as_str()) else {
            return;
        };
        let Ok(topic) = makelaar_cluster::subject::decode_topic(tokens) else {
            tracing::warn!(subject = %d.subject, "skipping a live message with a bad subject");
            return;
        };
        if self.first.of(&topic).as_deref() != Some(&*filter) {
            return;
        }
        let env = match Envelope::decode(&d.payload) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(subject = %d.subject, error = %e, "skipping a live message that does not decode");
                return;
            }
        };
        if let Some(msg) = message(&topic, env, Instant::now(), unix_ms()) {
            let _ = self
                .to_router
                .send(FromCluster::Message(Arc::new(msg)))
                .await;
        }
    }

    fn stop(&mut self) {
        for (_, stop) in self.filters.drain() {
            stop.abort();
        }
        self.first = FirstFilter::default();
        for (_, f) in self.groups.drain() {
            f.stop();
        }
    }
}

/// What this node follows of one share group (docs/cluster.md, "Shared subscriptions").
struct Following {
    /// The queue subscription's task (QoS 0).
    live: Option<JoinHandle<()>>,
    /// Stops the consumer pulls (QoS 1/2), one per partition the filter reaches.
    pulls: tokio_util::sync::CancellationToken,
}

impl Following {
    fn stop(self) {
        if let Some(t) = self.live {
            t.abort();
        }
        self.pulls.cancel();
    }
}

/// Starts following a share group: its QoS 0 messages through a queue subscription (NATS
/// gives each to one of the nodes in the queue group), its QoS 1/2 messages from its
/// durable consumer in each partition its filter reaches (each to one of the nodes
/// pulling). Either way the router hands the message to one local member.
async fn follow_group(
    cluster: &Arc<Cluster<NatsBackend>>,
    group: ShareGroup,
    to_router: &mpsc::Sender<FromCluster>,
) -> Following {
    let full: Arc<str> = Arc::from(group.full());
    let live = match cluster.backend().share_subscribe(&group).await {
        Ok(mut sub) => {
            let tx = to_router.clone();
            let full = full.clone();
            let prefix = format!("{}.live.", cluster.config().prefix);
            Some(tokio::spawn(async move {
                while let Some(d) = sub.next().await {
                    let Some(msg) = decode_delivery(&prefix, &d.subject, &d.payload, |_| false)
                    else {
                        continue;
                    };
                    let ev = FromCluster::Shared {
                        group: full.clone(),
                        msg: Arc::new(msg),
                        taken: None,
                    };
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
            }))
        }
        Err(e) => {
            tracing::error!(group = %full, error = %e, "cannot follow a share group's QoS 0 messages on the cluster");
            None
        }
    };
    let pulls = tokio_util::sync::CancellationToken::new();
    // The group's messages from now on (the member's SUBACK went out a moment ago), also
    // when making its consumers takes a while or is tried again.
    let since = SystemTime::now();
    for p in group.partitions(cluster.config().partitions) {
        tokio::spawn(pull_group(
            cluster.clone(),
            (group.clone(), p, since),
            to_router.clone(),
            pulls.clone(),
        ));
    }
    Following { live, pulls }
}

/// A message from a subject under `prefix` (ending in '.'), or `None` (logged) when it does
/// not decode, expired on the way [MQTT-3.3.2-5], or is `late` (a share group's late append,
/// `makelaar_cluster::barrier`).
fn decode_delivery(
    prefix: &str,
    subject: &str,
    payload: &[u8],
    late: impl FnOnce(&Envelope) -> bool,
) -> Option<Message> {
    let topic = subject
        .strip_prefix(prefix)
        .and_then(|tokens| makelaar_cluster::subject::decode_topic(tokens).ok());
    let Some(topic) = topic else {
        tracing::warn!(subject, "skipping a cluster message with a bad subject");
        return None;
    };
    match Envelope::decode(payload) {
        Ok(e) if late(&e) => None,
        Ok(e) => message(&topic, e, Instant::now(), unix_ms()),
        Err(e) => {
            tracing::warn!(subject, error = %e, "skipping a cluster message that does not decode");
            None
        }
    }
}

/// How long a message this node could not hand to a member waits before the group's
/// consumer offers it again (to any node pulling).
const SHARE_RETRY: Duration = Duration::from_millis(200);

/// How long a node waits before binding to a share group's consumer and pulling again after
/// its `failures`-th pull request in a row failed: right after the consumer is made, its
/// leader may not answer yet (NATS says "no responders"), which passes in a moment, so the
/// first wait is short (250 ms); it doubles up to 2 s while NATS stays without an answer.
fn share_repull_delay(failures: u32) -> Duration {
    Duration::from_millis(250) * 2u32.pow(failures.saturating_sub(1).min(3))
}

/// Pull requests of a share group's consumer failing in a row after which it is logged as
/// a warning (a few are expected while a consumer just made gets its leader).
const SHARE_PULL_FAILURES_WARNED: u32 = 8;

/// Pulls a share group's QoS 1/2 messages in one partition until `stop`: each goes to the
/// router, and is acknowledged once a member here took it (then it is that member's, as
/// on one broker), or refused so that another node's member gets it. One pull request at a
/// time, each message settled before the next is taken, so what this node holds
/// unsettled is one message. After an error (no answer from the consumer's leader yet, a
/// NATS server lost, the consumer gone) it binds to the consumer again and pulls again.
async fn pull_group(
    cluster: Arc<Cluster<NatsBackend>>,
    (group, p, since): (
        ShareGroup,
        makelaar_cluster::partition::Partition,
        SystemTime,
    ),
    tx: mpsc::Sender<FromCluster>,
    stop: tokio_util::sync::CancellationToken,
) {
    let full: Arc<str> = Arc::from(group.full());
    let prefix = format!("{}.p{}.", cluster.config().prefix, p.index());
    let mut consumer = None;
    let mut failures = 0u32;
    while !stop.is_cancelled() {
        let c = match consumer.take() {
            Some(c) => c,
            None => match cluster.backend().share_consumer(&group, p, since).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(group = %full, partition = p.index(), error = %e, "cannot pull a share group's messages; trying again");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        () = stop.cancelled() => return,
                    }
                }
            },
        };
        let ended = match c.pull().await {
            Ok(messages) => take_pulled(&cluster, (&full, p, &prefix), messages, &tx, &stop).await,
            Err(e) => Pulled::Failed(e),
        };
        match ended {
            Pulled::Ended => {
                failures = 0;
                consumer = Some(c);
            }
            Pulled::RouterGone => return,
            Pulled::Failed(e) => {
                failures = failures.saturating_add(1);
                if failures == SHARE_PULL_FAILURES_WARNED {
                    tracing::warn!(group = %full, partition = p.index(), failures, error = %e, "pulling a share group's messages keeps failing; its messages wait for another node or the next pull");
                } else {
                    tracing::debug!(group = %full, partition = p.index(), failures, error = %e, "pulling a share group's messages interrupted; pulling again");
                }
                tokio::select! {
                    () = tokio::time::sleep(share_repull_delay(failures)) => {}
                    () = stop.cancelled() => return,
                }
            }
        }
    }
}

/// How one pull request of a share group's consumer ended.
enum Pulled {
    /// All its messages came, or it expired: the consumer answers, pull again.
    Ended,
    /// It ended with an error (see [`makelaar_cluster::nats::ShareConsumer::pull`]).
    Failed(makelaar_cluster::backend::BackendError),
    /// The router is gone (the node is stopping).
    RouterGone,
}

/// Hands one pull request's messages to the router one at a time, and settles each: acked
/// once a member here took it, refused when none could (another node's member gets it).
/// Reads the request to its end also after `stop` (the last member here left): the server
/// may still hand this node messages under the request until it ends, and each is refused
/// at once so that another node's member gets it now, not after the consumer's ack wait
/// (30 s) as it would if nobody read them any more. Nothing is handed to the router then.
async fn take_pulled(
    cluster: &Cluster<NatsBackend>,
    (full, p, prefix): (&Arc<str>, makelaar_cluster::partition::Partition, &str),
    mut messages: makelaar_cluster::nats::ShareMessages,
    tx: &mpsc::Sender<FromCluster>,
    stop: &tokio_util::sync::CancellationToken,
) -> Pulled {
    let mut router_gone = false;
    while let Some(next) = messages.next().await {
        let m = match next {
            Ok(m) => m,
            Err(e) => return Pulled::Failed(e),
        };
        if stop.is_cancelled() || router_gone {
            if let Err(e) = m.ack.nak(Duration::ZERO).await {
                tracing::warn!(group = %full, partition = p.index(), seq = m.seq, error = %e, "cannot refuse a share group's message; the group's consumer offers it again after its ack wait");
            }
            continue;
        }
        let late = |e: &Envelope| cluster.is_late_share(p, m.seq, e);
        let Some(msg) = decode_delivery(prefix, &m.subject, &m.payload, late) else {
            // Expired, a late append, or not a message at all: nobody is to get it.
            let _ = m.ack.ack().await;
            continue;
        };
        let _ = msg.log_position.set(LogPosition {
            partition: p.index(),
            seq: m.seq,
        });
        let (taken_tx, taken_rx) = tokio::sync::oneshot::channel();
        let ev = FromCluster::Shared {
            group: full.clone(),
            msg: Arc::new(msg),
            taken: Some(taken_tx),
        };
        if tx.send(ev).await.is_err() {
            let _ = m.ack.nak(Duration::ZERO).await;
            router_gone = true;
            continue;
        }
        let r = match taken_rx.await {
            Ok(true) => m.ack.ack().await,
            // No member here any more (or the router is gone): another node's.
            Ok(false) | Err(_) => m.ack.nak(SHARE_RETRY).await,
        };
        if let Err(e) = r {
            tracing::warn!(group = %full, partition = p.index(), seq = m.seq, error = %e, "cannot settle a share group's message; the group's consumer offers it again");
        }
    }
    if router_gone {
        Pulled::RouterGone
    } else {
        Pulled::Ended
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use makelaar_cluster::backend::subject_matches;
    use makelaar_cluster::subject::{encode_filter, encode_topic};
    use proptest::prelude::*;

    /// The first filter by the rule the tree replaced: every filter's NATS subject tried
    /// against the topic's.
    fn first_by_subjects(filters: &[String], topic: &str) -> Option<String> {
        let subject = encode_topic(topic);
        filters
            .iter()
            .filter(|f| subject_matches(encode_filter(f).as_str(), subject.as_str()))
            .min()
            .cloned()
    }

    #[test]
    fn the_first_filter_is_the_least_one_the_topic_matches() {
        let mut first = FirstFilter::default();
        for f in ["a/#", "a/+/c", "#", "+/b/c", "$SYS/#", "a/b/c"] {
            first.add(Arc::from(f));
        }
        assert_eq!(first.of("a/b/c").as_deref(), Some("#"));
        // [MQTT-4.7.2-1]: no filter starting with a wildcard matches a `$` topic.
        assert_eq!(first.of("$SYS/x").as_deref(), Some("$SYS/#"));
        first.remove("#");
        assert_eq!(first.of("a/b/c").as_deref(), Some("+/b/c"));
        // `a/#` matches its parent level [MQTT-4.7.1-2].
        assert_eq!(first.of("a").as_deref(), Some("a/#"));
        first.remove("a/#");
        assert_eq!(first.of("a").as_deref(), None);
        assert_eq!(first.of("$other").as_deref(), None);
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just(String::new()),
            Just("$s".to_string()),
            Just("x.y".to_string()),
            Just("*".to_string()),
            Just(">".to_string()),
        ]
    }

    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..5).prop_map(|l| l.join("/"))
    }

    fn filter() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop_oneof![level(), Just("+".to_string())], 1..5),
            any::<bool>(),
        )
            .prop_map(|(mut l, hash)| {
                if hash {
                    l.push("#".to_string());
                }
                l.join("/")
            })
    }

    proptest! {
        /// The tree picks the copy the subjects would have: the same filter, for every
        /// topic, so each message from another node is routed exactly once.
        #[test]
        fn the_tree_agrees_with_the_subjects(
            filters in prop::collection::hash_set(filter(), 1..12),
            topics in prop::collection::vec(topic(), 1..12),
        ) {
            let filters: Vec<String> = filters.into_iter().collect();
            let mut first = FirstFilter::default();
            for f in &filters {
                first.add(Arc::from(f.as_str()));
            }
            for t in &topics {
                prop_assert_eq!(
                    first.of(t).map(|f| f.to_string()),
                    first_by_subjects(&filters, t),
                    "topic {:?}", t
                );
            }
        }
    }

    #[test]
    fn a_failed_share_pull_is_made_again_soon_then_less_often() {
        // A consumer just made answers within a moment: the first retry is well under the
        // 30 s that async-nats' own stream waited (issue 14); an outage costs at most one
        // request every 2 s per group, partition and node.
        assert_eq!(share_repull_delay(1), Duration::from_millis(250));
        assert_eq!(share_repull_delay(2), Duration::from_millis(500));
        assert_eq!(share_repull_delay(4), Duration::from_secs(2));
        assert_eq!(share_repull_delay(u32::MAX), Duration::from_secs(2));
    }

    #[test]
    fn envelopes_carry_what_the_receiving_node_needs() {
        let now = Instant::now();
        let node = NodeId::new("a").unwrap();
        let msg = Message {
            topic: Arc::from("t/1"),
            payload: bytes::Bytes::from_static(b"x"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties {
                payload_format_indicator: Some(1),
                content_type: Some("text/plain".into()),
                user_properties: vec![("k".into(), "v".into())],
                ..Properties::default()
            },
            expires_at: Some(now + Duration::from_secs(30)),
            origin: Some(Arc::from("pub")),
            received_at: Some(now),
            log_position: std::sync::OnceLock::new(),
        };
        let env = envelope(&node, &msg, now, 1_000_000);
        let back = message("t/1", env.clone(), now, 1_000_000).unwrap();
        assert_eq!(back.payload, msg.payload);
        assert_eq!(back.qos, msg.qos);
        assert!(back.retain);
        assert_eq!(back.origin.as_deref(), Some("pub"));
        assert_eq!(back.properties.content_type.as_deref(), Some("text/plain"));
        assert_eq!(back.properties.payload_format_indicator, Some(1));
        assert_eq!(back.properties.message_expiry_interval, Some(30));
        assert_eq!(
            back.properties.user_properties,
            msg.properties.user_properties
        );
        // Expired on the way: not delivered [MQTT-3.3.2-5]; but a message in flight on
        // another node is sent again, with no time left.
        assert!(message("t/1", env.clone(), now, 1_000_000 + 31_000).is_none());
        let resent = resent_message("t/1", env, now, 1_000_000 + 31_000);
        assert_eq!(resent.payload, msg.payload);
        assert_eq!(resent.properties.message_expiry_interval, Some(0));
        assert_eq!(resent.remaining_expiry(now), Some(0));
    }

    use makelaar_cluster::backend::{BackendError, Bucket, MemoryBackend};
    use makelaar_cluster::subject::Subject;

    /// A message exported to the cluster: a will (no publisher) or `from` a connection.
    fn exported(
        topic: &str,
        payload: &'static str,
        retain: bool,
        from: Option<ConnId>,
    ) -> Exported {
        let msg = Message {
            topic: Arc::from(topic),
            payload: bytes::Bytes::from_static(payload.as_bytes()),
            qos: QoS::AtLeastOnce,
            retain,
            properties: Properties::default(),
            expires_at: None,
            origin: from.map(|_| Arc::from("pub")),
            received_at: Some(Instant::now()),
            log_position: std::sync::OnceLock::new(),
        };
        Exported {
            msg: Arc::new(msg),
            from,
        }
    }

    fn layer(engine: &MemoryBackend) -> Arc<Cluster<MemoryBackend>> {
        let config = ClusterConfig::new(NodeId::new("m1").unwrap(), 1);
        Arc::new(Cluster::new(engine.clone(), config))
    }

    /// The payloads appended to `topic`'s partition, in order.
    fn appended(
        engine: &MemoryBackend,
        cluster: &Cluster<MemoryBackend>,
        topic: &str,
    ) -> Vec<String> {
        let (p, _) = cluster.partition_subject(topic);
        engine
            .stream(p)
            .iter()
            .map(|(_, b)| String::from_utf8(Envelope::decode(b).unwrap().payload.to_vec()).unwrap())
            .collect()
    }

    /// A start-up step that fails while JetStream elects leaders is tried again until it
    /// works; one that keeps failing ends the start with one sentence that names it, after
    /// the patience and not before.
    #[tokio::test(start_paused = true)]
    async fn a_start_up_step_is_tried_again_until_it_works_or_the_patience_is_spent() {
        let mut tries = 0;
        let got = patiently("follow partition stream 0", || {
            tries += 1;
            let n = tries;
            async move {
                if n < 4 {
                    Err("timed out")
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(got.unwrap(), 4);

        let started = tokio::time::Instant::now();
        let err = patiently("follow partition stream 3", || async {
            Err::<(), _>("timed out")
        })
        .await
        .unwrap_err();
        assert!(started.elapsed() >= START_STEP_PATIENCE);
        assert!(started.elapsed() < START_STEP_PATIENCE + Duration::from_secs(6));
        assert!(
            err.0
                .starts_with("cannot follow partition stream 3 (timed out) for 120 s;"),
            "{err}"
        );
    }

    /// A will whose append fails (JetStream churning: "no stream found") is appended once
    /// when it is tried again, and the batch it came in, with another publisher's message
    /// and the acknowledgement waiting for it, does not wait for that (link-cut run 5: the
    /// will reached the subscribers of its node only, as nothing tried it again). The
    /// router hears that it is retried before the batch's report, and where it landed.
    #[tokio::test(start_paused = true)]
    async fn a_wills_failed_append_is_tried_again_apart_and_stored_once() {
        let engine = MemoryBackend::new();
        let cluster = layer(&engine);
        let node = NodeId::new("m1").unwrap();
        let will = exported("w/a", "gone", false, None);
        let published = exported("w/a", "hello", false, Some(7));
        let will_msg = will.msg.clone();
        // The will's first try fails, the publisher's append goes through.
        engine.fail_appends(1, BackendError::Engine("no stream found".into()));
        let start = tokio::time::Instant::now();
        let (tx, mut rx) = mpsc::channel(8);
        let (epoch, n, results) = write_batch(
            cluster.clone(),
            node,
            Some(3),
            vec![(will, None), (published, None)],
            tx,
        )
        .await;
        let Ok(FromCluster::WillRetrying { id, epoch: 3 }) = rx.try_recv() else {
            panic!("the router hears of the retry before the batch's report");
        };
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "the batch did not wait for the will"
        );
        assert_eq!((epoch, n), (Some(3), 2));
        assert_eq!(results[0], (None, true, None));
        let (from, ok, pos) = results[1];
        assert_eq!((from, ok), (Some(7), true));
        assert_eq!(pos.map(|p| p.seq), Some(1));
        assert_eq!(appended(&engine, &cluster, "w/a"), ["hello"]);

        // Its next two tries fail too; the fourth goes through, once.
        engine.fail_appends(2, BackendError::Timeout);
        tokio::time::sleep(WILL_RETRY_EVERY * 2 + Duration::from_millis(500)).await;
        assert_eq!(appended(&engine, &cluster, "w/a"), ["hello"]);
        assert!(rx.try_recv().is_err(), "not placed yet");
        tokio::time::sleep(WILL_RETRY_EVERY).await;
        assert_eq!(appended(&engine, &cluster, "w/a"), ["hello", "gone"]);
        assert_eq!(will_msg.log_position.get().map(|p| p.seq), Some(2));
        let Ok(FromCluster::WillPlaced { id: placed, at }) = rx.try_recv() else {
            panic!("the router hears where it landed");
        };
        assert_eq!((placed, at.map(|p| p.seq)), (id, Some(2)));
        tokio::time::sleep(WILL_RETRY_FOR * 2).await;
        assert_eq!(appended(&engine, &cluster, "w/a"), ["hello", "gone"]);
        assert!(rx.try_recv().is_err(), "placed once");
    }

    /// A will's retained write that fails is tried again (its append, done, is not), and
    /// a will whose writes keep failing is given up after [`WILL_RETRY_FOR`].
    #[tokio::test(start_paused = true)]
    async fn a_wills_retained_write_is_tried_again_and_a_will_given_up_in_time() {
        let engine = MemoryBackend::new();
        let cluster = layer(&engine);
        let node = NodeId::new("m1").unwrap();
        engine.fail_writes(Bucket::Retained, 2, BackendError::Timeout);
        let will = exported("s/a", "offline", true, None);
        let (tx, mut rx) = mpsc::channel(8);
        let (_, _, results) = write_batch(
            cluster.clone(),
            node.clone(),
            Some(1),
            vec![(will, None)],
            tx.clone(),
        )
        .await;
        assert!(
            rx.try_recv().is_err(),
            "appended: no replay waits for its retained write"
        );
        // Appended: its place is reported with the batch all the same.
        assert_eq!(results[0].2.map(|p| p.seq), Some(1));
        assert!(cluster.load_retained("s/a").await.unwrap().is_none());
        tokio::time::sleep(WILL_RETRY_EVERY * 2 + Duration::from_millis(500)).await;
        let kept = cluster.load_retained("s/a").await.unwrap().unwrap();
        assert_eq!(kept.payload, "offline");
        assert_eq!(appended(&engine, &cluster, "s/a"), ["offline"]);

        // Failing for good: tried for a minute, then left.
        engine.fail_appends(usize::MAX, BackendError::Timeout);
        let gone = exported("s/b", "offline", false, None);
        let start = tokio::time::Instant::now();
        let w = WillWrites {
            id: cluster.next_message_id(),
            env: envelope(&node, &gone.msg, Instant::now(), unix_ms()),
            msg: gone.msg,
            logged: false,
            retained: false,
        };
        assert!(!retry_will(cluster.clone(), w, Some(tx)).await);
        let took = start.elapsed();
        assert!(
            (WILL_RETRY_FOR..WILL_RETRY_FOR + WILL_RETRY_EVERY * 2).contains(&took),
            "{took:?}"
        );
        // Given up: the replays waiting for it are told, so they go on without it.
        let Ok(FromCluster::WillPlaced { at: None, .. }) = rx.try_recv() else {
            panic!("a will given up is reported");
        };
        engine.fail_appends(0, BackendError::Timeout);
        tokio::time::sleep(WILL_RETRY_FOR).await;
        assert!(appended(&engine, &cluster, "s/b").is_empty());
    }

    /// A connected session, told apart by its inbound QoS 2 ids.
    fn snapshot(inbound_qos2: Vec<u16>) -> SessionSnapshot {
        SessionSnapshot {
            version: ProtocolVersion::V5,
            expiry_interval: 600,
            subscriptions: Vec::new(),
            offline_since: None,
            will: None,
            connected: true,
            inbound_qos2,
            outbound: Vec::new(),
        }
    }

    /// A node's sessions task over `engine`, owning client `c` (claimed, its record
    /// written once with inbound QoS 2 id 1).
    struct Owner {
        cluster: Arc<Cluster<MemoryBackend>>,
        ops: mpsc::UnboundedSender<SessionOp>,
        from: mpsc::Receiver<FromCluster>,
        key: ClientKey,
        claim: Revision,
    }

    impl Owner {
        async fn new(engine: &MemoryBackend) -> Owner {
            let config = ClusterConfig::new(NodeId::new("m1").unwrap(), 1);
            let cluster = Arc::new(Cluster::new(engine.clone(), config));
            let (ops, rx) = mpsc::unbounded_channel();
            let (tx, from) = mpsc::channel(64);
            tokio::spawn(sessions(cluster.clone(), (ops.clone(), rx), tx));
            let key = ClientKey::new("c");
            let claim = cluster.claim_client(&key).await.unwrap().revision;
            let owner = Owner {
                cluster,
                ops,
                from,
                key,
                claim,
            };
            owner
                .ops
                .send(SessionOp::Owned(
                    "c".into(),
                    claim,
                    Fence::Absent,
                    false,
                    Vec::new(),
                ))
                .unwrap();
            owner.store(vec![1]);
            while owner.inbound().await != Some(vec![1]) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            owner
        }

        fn store(&self, inbound_qos2: Vec<u16>) {
            self.store_with(snapshot(inbound_qos2), Vec::new());
        }

        fn store_with(&self, snapshot: SessionSnapshot, wills: Vec<KeptWill>) {
            let op = SessionOp::Store("c".into(), Some(snapshot), None, wills, None);
            self.ops.send(op).unwrap();
        }

        /// The wills handed to the router to publish so far.
        fn published(&mut self) -> usize {
            std::iter::from_fn(|| self.from.try_recv().ok())
                .filter(|ev| matches!(ev, FromCluster::Will { .. }))
                .count()
        }

        /// The inbound QoS 2 ids of the record in the cluster.
        async fn inbound(&self) -> Option<Vec<u16>> {
            let (record, _) = self.cluster.load_session(&self.key).await.unwrap();
            record.map(|r| r.inbound_qos2)
        }
    }

    /// Another node asks `owner` to hand `c` over; how long the answer took.
    async fn hand_over(engine: &MemoryBackend, owner: &Owner, before: impl FnOnce()) -> Duration {
        before();
        let asked = tokio::time::Instant::now();
        let mut answers = ask_hand_over(engine, owner, owner.claim).await;
        tokio::time::timeout(Duration::from_secs(30), answers.next())
            .await
            .unwrap()
            .unwrap();
        asked.elapsed()
    }

    /// A hand-over request sent without waiting for its answer; the answers' subscription.
    async fn ask_hand_over(engine: &MemoryBackend, owner: &Owner, asked: Revision) -> Answers {
        let reply = "_INBOX.handover";
        let answers = engine
            .subscribe(Subject::from_tokens(reply), None)
            .await
            .unwrap();
        let req = ReleaseRequest {
            client: owner.key.clone(),
            revision: asked,
            reply: Some(reply.into()),
        };
        owner.ops.send(SessionOp::Release(req)).unwrap();
        answers
    }

    type Answers = <MemoryBackend as Backend>::Subscription;

    /// A checkpoint of the connected session (number `n`, inbound QoS 2 ids `inbound`),
    /// and what the sessions task tells the router of it: `Some(true)` answered,
    /// `Some(false)` the connection is to be closed (fenced), `None` neither in 10 s.
    async fn checkpoint(owner: &mut Owner, n: u64, inbound: Vec<u16>) -> Option<bool> {
        let op = SessionOp::Store(
            "c".into(),
            Some(snapshot(inbound)),
            None,
            Vec::new(),
            Some(n),
        );
        owner.ops.send(op).unwrap();
        let heard = async {
            loop {
                match owner.from.recv().await? {
                    FromCluster::Checkpointed { n: m, .. } if m == n => return Some(true),
                    FromCluster::Fenced { .. } => return Some(false),
                    _ => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), heard)
            .await
            .ok()
            .flatten()
    }

    /// A hand-over asked of this node's older connection of `c`, delivered after this node
    /// claimed the id again and read the record (its router learns of such a claim only
    /// once the claim has waited for the followers, so it passes the request on): neither
    /// answered nor obeyed, and the new connection's checkpoints are written and answered.
    /// Obeyed, it marked the record lost here, and every checkpoint after it was dropped
    /// unanswered while the connection stayed open: its QoS 2 deliveries waited for ever
    /// (found by the fault harness: two subscribers got one message in 132 s).
    #[tokio::test(start_paused = true)]
    async fn a_hand_over_asked_of_an_older_claim_does_not_stop_the_new_claims_checkpoints() {
        let engine = MemoryBackend::new();
        let mut owner = Owner::new(&engine).await;
        let again = owner.cluster.claim_client(&owner.key).await.unwrap();
        let (_, read) = owner.cluster.load_session(&owner.key).await.unwrap();
        let owned = SessionOp::Owned("c".into(), again.revision, read, false, Vec::new());
        owner.ops.send(owned).unwrap();
        let mut answers = ask_hand_over(&engine, &owner, owner.claim).await;
        assert_eq!(checkpoint(&mut owner, 1, vec![1, 2]).await, Some(true));
        assert_eq!(owner.inbound().await, Some(vec![1, 2]));
        let answered = tokio::time::timeout(Duration::from_secs(5), answers.next()).await;
        assert!(
            answered.is_err(),
            "a late hand-over request is not answered"
        );
    }

    /// When a connected session's record was given up here all the same (a hand-over asked
    /// of the claim this node holds, answered while its router resumed the session), its
    /// checkpoints cannot be written: the connection is closed, as after a fenced write, and
    /// the client's next CONNECT claims the id afresh. It used to stay open, its checkpoints
    /// never answered.
    #[tokio::test(start_paused = true)]
    async fn a_connected_session_whose_record_was_given_up_here_is_closed() {
        let engine = MemoryBackend::new();
        let mut owner = Owner::new(&engine).await;
        let mut answers = ask_hand_over(&engine, &owner, owner.claim).await;
        let answered = tokio::time::timeout(Duration::from_secs(5), answers.next()).await;
        assert!(
            answered.is_ok(),
            "a hand-over of the held claim is answered"
        );
        assert_eq!(checkpoint(&mut owner, 1, vec![1, 2]).await, Some(false));
        assert_eq!(owner.inbound().await, Some(vec![1]));
    }

    /// The session's last record waits to be written again (its write failed) when another
    /// node asks for the client: it is written before the answer, so the claiming node
    /// resumes the session from it (it used to find the one before).
    #[tokio::test(start_paused = true)]
    async fn a_hand_over_writes_the_record_that_waits_before_it_answers() {
        let engine = MemoryBackend::new();
        let owner = Owner::new(&engine).await;
        hand_over(&engine, &owner, || {
            // NATS trouble: the next write fails, and the record waits.
            engine.fail_writes(Bucket::Sessions, 1, BackendError::Timeout);
            owner.store(vec![1, 2]);
        })
        .await;
        assert_eq!(owner.inbound().await, Some(vec![1, 2]));
    }

    /// When that write keeps failing, the answer goes out all the same, after a bounded
    /// wait (the claiming node claims anyway after 3 s), and the node writes the session no
    /// more: the claiming node owns it.
    #[tokio::test(start_paused = true)]
    async fn a_hand_over_is_answered_in_bounded_time_when_the_waiting_record_cannot_be_written() {
        let engine = MemoryBackend::new();
        let owner = Owner::new(&engine).await;
        let took = hand_over(&engine, &owner, || {
            engine.fail_writes(Bucket::Sessions, usize::MAX, BackendError::Timeout);
            owner.store(vec![1, 2]);
        })
        .await;
        assert!(
            took >= RELEASE_WRITE_PATIENCE - RELEASE_WRITE_PAUSE,
            "{took:?}"
        );
        assert!(took < Duration::from_secs(3), "{took:?}");
        assert_eq!(owner.inbound().await, Some(vec![1]));
        // NATS is back: nothing more is written from here.
        engine.fail_writes(Bucket::Sessions, 0, BackendError::Timeout);
        owner.store(vec![1, 2, 3]);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(owner.inbound().await, Some(vec![1]));
    }

    /// A will that fell due with the record that waits (the write takes it out of the
    /// record) is published only if that write wins; when it cannot be made before the
    /// answer, the claiming node takes the record with the will in it and decides it.
    #[tokio::test(start_paused = true)]
    async fn a_due_will_waiting_with_the_record_is_published_only_if_its_write_wins() {
        let will = a_will();
        for (failures, published) in [(1, 1), (usize::MAX, 0)] {
            let engine = MemoryBackend::new();
            let mut owner = Owner::new(&engine).await;
            with_will_in_record(&owner).await;
            hand_over(&engine, &owner, || {
                engine.fail_writes(Bucket::Sessions, failures, BackendError::Timeout);
                owner.store_with(snapshot(vec![1, 2]), vec![will.clone()]);
            })
            .await;
            assert_eq!(owner.published(), published, "{failures} failures");
            let (r, _) = owner.cluster.load_session(&owner.key).await.unwrap();
            let r = r.unwrap();
            assert_eq!(r.will.is_none(), published == 1);
            assert_eq!(!r.will_takers.is_empty(), published == 1);
        }
    }

    fn a_will() -> KeptWill {
        KeptWill {
            will: Box::new(Will {
                topic: "gone/c".into(),
                payload: bytes::Bytes::from_static(b"bye"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: Properties::default(),
            }),
            username: None,
        }
    }

    /// The owner's record holds the connection's will (as every CONNECT's write makes it).
    async fn with_will_in_record(owner: &Owner) {
        let mut with_will = snapshot(vec![1]);
        with_will.will = Some(a_will());
        owner.store_with(with_will, Vec::new());
        loop {
            let (r, _) = owner.cluster.load_session(&owner.key).await.unwrap();
            if r.is_some_and(|r| r.will.is_some()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// How the node that had a session learns that another node claimed it.
    #[derive(Debug, Clone, Copy)]
    enum Told {
        /// It is asked to hand the connection over, and answers.
        HandOver,
        /// The claimer's notice that the client moved (its entry said offline).
        MovedNotice,
        /// Its connection's check of the registry finds another node's claim.
        NotOwner,
    }

    /// A claim whose claimer never takes the record (its claim failed after moving the
    /// registry entry, found by the fault harness under a link cut, and again after a
    /// refused read of the record): the will the record holds was published by nobody.
    /// Now the node that had the session takes it back once the claim had time to finish,
    /// and publishes the will, however it learnt of the claim; when the claimer took the
    /// record, it does not.
    #[tokio::test(start_paused = true)]
    async fn a_will_left_to_a_claim_that_failed_is_published_by_the_old_node() {
        for told in [Told::HandOver, Told::MovedNotice, Told::NotOwner] {
            for claim_completes in [false, true] {
                let engine = MemoryBackend::new();
                let mut owner = Owner::new(&engine).await;
                with_will_in_record(&owner).await;
                if let Told::HandOver = told {
                    hand_over(&engine, &owner, || {}).await;
                }
                // The claiming node moves the registry entry; then its claim fails before
                // it reads the record, or goes on and takes the will out.
                let (_m2, claimed) = m2_claims(&engine, claim_completes).await;
                let notice = match told {
                    Told::HandOver => None,
                    Told::MovedNotice => Some(SessionOp::Moved("c".into(), claimed.revision)),
                    Told::NotOwner => Some(SessionOp::NotOwner {
                        conn: 1,
                        client_id: "c".into(),
                        revision: owner.claim,
                    }),
                };
                if let Some(op) = notice {
                    owner.ops.send(op).unwrap();
                }
                tokio::time::sleep(ABANDONED_AFTER - Duration::from_secs(1)).await;
                let case = format!("{told:?}, claim completes: {claim_completes}");
                assert_eq!(
                    owner.published(),
                    0,
                    "not before the claim had its time: {case}"
                );
                tokio::time::sleep(Duration::from_secs(2)).await;
                let published = usize::from(!claim_completes);
                assert_eq!(owner.published(), published, "{case}");
                let (r, _) = owner.cluster.load_session(&owner.key).await.unwrap();
                let r = r.unwrap();
                assert!(r.will.is_none(), "{case}");
                let writer = if claim_completes { "m2" } else { "m1" };
                assert_eq!(r.node.as_str(), writer, "{case}");
            }
        }
    }

    /// Node `name` (incarnation `incarnation`) over `engine`.
    fn node_on(
        engine: &MemoryBackend,
        name: &str,
        incarnation: u64,
    ) -> Arc<Cluster<MemoryBackend>> {
        let config = ClusterConfig::new(NodeId::new(name).unwrap(), incarnation);
        Arc::new(Cluster::new(engine.clone(), config))
    }

    /// Node m2 claims client "c" (moving the registry entry); with `completes`, its claim
    /// goes on and takes the will out of the record, which must hold one.
    async fn m2_claims(
        engine: &MemoryBackend,
        completes: bool,
    ) -> (
        Arc<Cluster<MemoryBackend>>,
        makelaar_cluster::takeover::Claimed,
    ) {
        let m2 = node_on(engine, "m2", 2);
        let key = ClientKey::new("c");
        let claimed = m2.claim_client(&key).await.unwrap();
        if completes {
            let found = m2.load_claimed_session(&key, &claimed, 0).await.unwrap();
            assert!(found.will.is_some());
        }
        (m2, claimed)
    }

    /// A take-back looked at over `from` (what `node`'s sessions task tells the router):
    /// no will before the claim had its time, then the will once when `published` (and the
    /// record without it), none after.
    async fn taken_back_once(
        node: &Cluster<MemoryBackend>,
        from: &mut mpsc::Receiver<FromCluster>,
        published: bool,
        case: &str,
    ) {
        tokio::time::sleep(ABANDONED_AFTER - Duration::from_secs(1)).await;
        assert_eq!(
            wills_in(from),
            0,
            "not before the claim had its time: {case}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(wills_in(from), usize::from(published), "{case}");
        let (r, _) = node.load_session(&ClientKey::new("c")).await.unwrap();
        assert!(r.unwrap().will.is_none(), "{case}");
        tokio::time::sleep(ABANDONED_AFTER * 2).await;
        assert_eq!(wills_in(from), 0, "once: {case}");
    }

    /// A node whose session a claim moved, and whose process is killed before its take-back
    /// is due (the claim then failed, the record still holds the will): started again, it
    /// takes the session back with its will after the claim had its time, and publishes it
    /// once; when the claim took the record, it does not (found by the fault harness: two
    /// probes' wills never published, their node killed within those 20 s).
    #[tokio::test(start_paused = true)]
    async fn a_will_left_to_a_failed_claim_by_a_run_that_died_is_published_by_the_next_run() {
        for claim_completes in [false, true] {
            let engine = MemoryBackend::new();
            let owner = Owner::new(&engine).await;
            with_will_in_record(&owner).await;
            m2_claims(&engine, claim_completes).await;
            // m1's process dies (its sessions task with it); a new run of m1 starts.
            drop(owner);
            let again = node_on(&engine, "m1", 3);
            let (ops, rx) = mpsc::unbounded_channel();
            let (tx, mut from) = mpsc::channel(64);
            tokio::spawn(sessions(again.clone(), (ops.clone(), rx), tx.clone()));
            tokio::spawn(take_back_from_earlier_runs(again.clone(), ops, tx));
            let case = format!("claim completes: {claim_completes}");
            taken_back_once(&again, &mut from, !claim_completes, &case).await;
        }
    }

    /// A node whose write of a session record with the connection's will landed but got no
    /// answer (so it never learnt the record's revision, nor that it holds the will), and
    /// which then stepped down (the write waits), answers a hand-over; the claim fails after
    /// moving the entry. The node takes the session back after the claim had its time,
    /// recognising the record by the claim it was written under, and publishes the will
    /// once; not when the claim took the record. Also when the connection had ended with
    /// its will due before the hand-over (the will waiting with the write): the node reads
    /// the record as it gives the session up and leaves the will to the claim, since its
    /// write carried it there. It used to publish it then, and the claim that took the
    /// record published it too (the mark now says which write the claimer took it from).
    #[tokio::test(start_paused = true)]
    async fn a_will_written_unanswered_then_given_up_to_a_failed_claim_is_published() {
        for (claim_completes, ended) in [(false, false), (true, false), (false, true), (true, true)]
        {
            let engine = MemoryBackend::new();
            let mut owner = Owner::new(&engine).await;
            engine.lose_answers(Bucket::Sessions, 1, BackendError::Timeout);
            let mut with_will = snapshot(vec![1]);
            with_will.will = Some(a_will());
            owner.store_with(with_will, Vec::new());
            loop {
                let (r, _) = owner.cluster.load_session(&owner.key).await.unwrap();
                if r.is_some_and(|r| r.will.is_some()) {
                    break;
                }
                tokio::task::yield_now().await;
            }
            owner.ops.send(SessionOp::Serving(false)).unwrap();
            if ended {
                let ends = SessionOp::Store("c".into(), None, None, vec![a_will()], None);
                owner.ops.send(ends).unwrap();
            }
            m2_claims(&engine, claim_completes).await;
            let (_, revision) = registry_entry(&engine).await;
            let req = ReleaseRequest {
                client: owner.key.clone(),
                revision,
                reply: None,
            };
            owner.ops.send(SessionOp::Release(req)).unwrap();
            let case = format!("claim completes: {claim_completes}, ended first: {ended}");
            tokio::time::sleep(ABANDONED_AFTER - Duration::from_secs(1)).await;
            assert_eq!(
                owner.published(),
                0,
                "before the claim had its time: {case}"
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
            let taken_back = usize::from(!claim_completes);
            assert_eq!(owner.published(), taken_back, "{case}");
            tokio::time::sleep(ABANDONED_AFTER * 2).await;
            assert_eq!(owner.published(), 0, "once: {case}");
        }
    }

    /// As above, when m1 never comes back: its reaper takes the session back with its will
    /// after the claim had its time, and publishes it once (the reaper of a run takes the
    /// entries naming that run, and this one names the claimer). Also when the reaper is
    /// the claimer whose claim failed (its entry says "connected" there); not when the
    /// claim took the record.
    #[tokio::test(start_paused = true)]
    async fn a_will_left_to_a_failed_claim_by_a_node_that_died_is_published_by_its_reaper() {
        for (claim_completes, name) in [(false, "m2"), (false, "m3"), (true, "m3")] {
            let engine = MemoryBackend::new();
            let owner = Owner::new(&engine).await;
            with_will_in_record(&owner).await;
            let (m2, _) = m2_claims(&engine, claim_completes).await;
            drop(owner);
            let reaper = match name {
                "m2" => m2,
                _ => node_on(&engine, name, 3),
            };
            let (ops, rx) = mpsc::unbounded_channel();
            let (tx, mut from) = mpsc::channel(64);
            tokio::spawn(sessions(reaper.clone(), (ops.clone(), rx), tx.clone()));
            let dead = Expired {
                node: NodeId::new("m1").unwrap(),
                incarnation: 1,
            };
            tokio::spawn(reap(reaper.clone(), dead, ops, tx));
            let case = format!("claim completes: {claim_completes}, reaper: {name}");
            taken_back_once(&reaper, &mut from, !claim_completes, &case).await;
        }
    }

    /// A connection ends with its will due: the write that takes the will out of the record
    /// lands but its answer is lost (the will waits to be tried again). Before it is, another
    /// node claims the client and finds no will in the record (it carries this node's mark),
    /// and this node learns that the session moved. The will is this node's: published once
    /// (it was withheld, and nobody published it: the fault harness's probe wills). Also
    /// when the claimer's session has ended meanwhile (a clean start, no will of its own):
    /// its record is left in place with the mark, and deleted once this node has read it.
    /// And when the claimer's session has ended with a will of its own taken out: its mark
    /// goes first, this node's stays behind it.
    #[tokio::test(start_paused = true)]
    async fn a_will_whose_take_out_landed_unanswered_is_published_after_the_session_moved() {
        // How the claimer's session goes on: `None`, it lives; `Some(with_will)`, it ends,
        // with its own due will or without a will.
        for claimer_ends in [None, Some(false), Some(true)] {
            let engine = MemoryBackend::new();
            let mut owner = Owner::new(&engine).await;
            with_will_in_record(&owner).await;
            engine.lose_answers(Bucket::Sessions, 1, BackendError::Timeout);
            owner.store_with(snapshot(vec![1]), vec![a_will()]);
            loop {
                let (r, _) = owner.cluster.load_session(&owner.key).await.unwrap();
                if r.is_some_and(|r| r.will.is_none()) {
                    break;
                }
                tokio::task::yield_now().await;
            }
            assert_eq!(owner.published(), 0, "its answer was lost: the will waits");
            let m2 = node_on(&engine, "m2", 2);
            let claimed = m2.claim_client(&owner.key).await.unwrap();
            let found = m2
                .load_claimed_session(&owner.key, &claimed, 0)
                .await
                .unwrap();
            assert!(found.will.is_none(), "no will for the claimer to decide");
            let m2_from = if let Some(with_will) = claimer_ends {
                let (ops, rx) = mpsc::unbounded_channel();
                let (tx, from) = mpsc::channel(64);
                tokio::spawn(sessions(m2.clone(), (ops.clone(), rx), tx));
                let taken = found
                    .record
                    .as_ref()
                    .map(|r| r.will_takers.clone())
                    .unwrap_or_default();
                let owned =
                    SessionOp::Owned("c".into(), claimed.revision, found.fence, false, taken);
                ops.send(owned).unwrap();
                let mut own = Vec::new();
                if with_will {
                    let mut with_will = snapshot(vec![1]);
                    with_will.will = Some(a_will());
                    let store = SessionOp::Store("c".into(), Some(with_will), None, own, None);
                    ops.send(store).unwrap();
                    own = vec![a_will()];
                }
                ops.send(SessionOp::Store("c".into(), None, None, own, None))
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
                let (r, _) = owner.cluster.load_session(&owner.key).await.unwrap();
                let r = r.expect("the ended session's record left in place, with the mark");
                assert_eq!(r.node.as_str(), "m2");
                assert!(wills::is_ended(&r));
                let takers: Vec<&str> = r.will_takers.iter().map(|t| t.node.as_str()).collect();
                let expected = if with_will {
                    vec!["m2", "m1"]
                } else {
                    vec!["m1"]
                };
                assert_eq!(takers, expected);
                Some(from)
            } else {
                None
            };
            owner
                .ops
                .send(SessionOp::Moved("c".into(), claimed.revision))
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            let case = format!("claimer ends its session (with a will): {claimer_ends:?}");
            assert_eq!(
                owner.published(),
                1,
                "published by the node that took it out: {case}"
            );
            tokio::time::sleep(ABANDONED_AFTER * 2).await;
            assert_eq!(owner.published(), 0, "once: {case}");
            if let Some(mut from) = m2_from {
                let own = usize::from(claimer_ends == Some(true));
                assert_eq!(wills_in(&mut from), own, "the claimer's own only: {case}");
                let (r, _) = owner.cluster.load_session(&owner.key).await.unwrap();
                assert!(r.is_none(), "the ended record is deleted once read");
            }
        }
    }

    /// Client "c"'s registry entry and its revision.
    async fn registry_entry(
        engine: &MemoryBackend,
    ) -> (makelaar_cluster::record::RegistryEntry, Revision) {
        let e = engine.get(Bucket::Registry, "c").await.unwrap().unwrap();
        let entry = makelaar_cluster::record::RegistryEntry::decode(&e.value).unwrap();
        (entry, e.revision)
    }

    /// The result of the broker's claim of client "c" on `cluster`.
    async fn claim_c(cluster: &Arc<Cluster<MemoryBackend>>) -> Result<Claim, String> {
        let (ops, _rx) = mpsc::unbounded_channel();
        let (tx, mut from) = mpsc::channel(4);
        claim(cluster.clone(), (7, Arc::from("c")), ops, tx).await;
        match from.recv().await {
            Some(FromCluster::Claimed { conn: 7, result }) => result,
            _ => panic!("no claim result"),
        }
    }

    /// Issue 15 (late appends): a client whose append this node gave up (the engine did
    /// not answer in time: the message may still be stored, late) and that comes back to
    /// this node gets barriers naming its new claim, as a client from another node does, so
    /// that every reader drops that message should it land after them
    /// (`makelaar_cluster::barrier`). Once they are in, the next claim here needs none.
    #[tokio::test(start_paused = true)]
    async fn a_claim_after_an_append_given_up_here_appends_barriers_naming_it() {
        let engine = MemoryBackend::new();
        let m1 = layer(&engine);
        let key = ClientKey::new("c");
        let first = claim_c(&m1).await.unwrap();
        assert!(first.tails.is_empty(), "a new client");
        let msg = exported("t", "lost?", false, Some(7)).msg;
        let mut env = envelope(&NodeId::new("m1").unwrap(), &msg, Instant::now(), 0);
        env.origin_client = "c".into();
        env.claim = Some(first.revision);
        engine.fail_appends(1, BackendError::Timeout);
        assert!(m1.append("t", &env).await.is_err());
        m1.mark_disconnected(&key, first.revision).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;

        let again = claim_c(&m1).await.unwrap();
        let partitions = m1.config().partitions.all().count();
        assert_eq!(
            again.tails.len(),
            partitions,
            "a barrier in every partition"
        );
        let (p, _) = m1.partition_subject("t");
        let (_, payload) = engine.stream(p).last().cloned().unwrap();
        let named = makelaar_cluster::barrier::decode_claims(&payload).unwrap();
        assert_eq!(named.len(), 1);
        assert_eq!(
            (&*named[0].client, named[0].revision),
            ("c", again.revision)
        );

        m1.mark_disconnected(&key, again.revision).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(
            claim_c(&m1).await.unwrap().tails.is_empty(),
            "no append given up since"
        );
    }

    /// A client that was on m1 connects to m2, whose claim moves the registry entry and
    /// then fails on the engine (no barrier appended); the client connects to m2 again. That
    /// claim replaces m2's own entry, but the client's messages from m1 may still be ahead
    /// of m2's followers: it waits for barriers as the first claim would have, or what the
    /// client publishes now overtakes them at m2's subscribers [MQTT-4.6.0-6] (the fault
    /// harness's reorderings, after claims refused by a 503). Also when a third node's
    /// claim asked m2 in between to hand the client over (m2 answers for the entry its
    /// failed claim left: found by the 180-fault run of the eighteenth session).
    #[tokio::test(start_paused = true)]
    async fn a_claim_after_a_failed_claim_on_the_same_node_still_waits_for_barriers() {
        for asked_in_between in [false, true] {
            let engine = MemoryBackend::new();
            let m1 = layer(&engine);
            let key = ClientKey::new("c");
            let on_m1 = m1.claim_client(&key).await.unwrap().revision;
            m1.mark_disconnected(&key, on_m1).await.unwrap();
            let m2 = node_on(&engine, "m2", 2);
            engine.fail_appends(usize::MAX, BackendError::Engine("no stream found".into()));
            assert!(claim_c(&m2).await.is_err());
            engine.fail_appends(0, BackendError::Timeout);
            if asked_in_between {
                let (entry, revision) = registry_entry(&engine).await;
                assert!(entry.connected, "the failed claim's entry");
                let req = ReleaseRequest {
                    client: key.clone(),
                    revision,
                    reply: None,
                };
                released(m2.clone(), req).await;
                let (entry, _) = registry_entry(&engine).await;
                assert!(!entry.connected);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            let again = claim_c(&m2).await.unwrap();
            let partitions = m2.config().partitions.all().count();
            assert_eq!(
                again.tails.len(),
                partitions,
                "a barrier in every partition (asked in between: {asked_in_between})"
            );
            // Once a connection of m2's has ended, the client was last on m2: no barriers.
            m2.mark_disconnected(&key, again.revision).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
            assert!(claim_c(&m2).await.unwrap().tails.is_empty());
        }
    }

    /// The wills handed to the router on `from` so far.
    fn wills_in(from: &mut mpsc::Receiver<FromCluster>) -> usize {
        std::iter::from_fn(|| from.try_recv().ok())
            .filter(|ev| matches!(ev, FromCluster::Will { .. }))
            .count()
    }

    /// Node "m1" (incarnation 1) over `engine`, its sessions task running, having claimed
    /// client "c" (no record yet): the cluster, the task's operations, what it tells the
    /// router.
    async fn owner_of_c(
        engine: &MemoryBackend,
    ) -> (
        Arc<Cluster<MemoryBackend>>,
        mpsc::UnboundedSender<SessionOp>,
        mpsc::Receiver<FromCluster>,
    ) {
        let cluster = Arc::new(Cluster::new(
            engine.clone(),
            ClusterConfig::new(NodeId::new("m1").unwrap(), 1),
        ));
        let (ops, rx) = mpsc::unbounded_channel();
        let (tx, from) = mpsc::channel(64);
        tokio::spawn(sessions(cluster.clone(), (ops.clone(), rx), tx));
        let claim = cluster
            .claim_client(&ClientKey::new("c"))
            .await
            .unwrap()
            .revision;
        let owned = SessionOp::Owned("c".into(), claim, Fence::Absent, false, Vec::new());
        ops.send(owned).unwrap();
        (cluster, ops, from)
    }

    /// A client with a will (its session ends with its connection) whose CONNECT record was
    /// created but whose create got no answer (NATS stopped right after the CONNECT, as in
    /// `test_a_stepped_down_nodes_wills_are_published_once_after_all`, and took it when it
    /// ran again); its connection then ends, the will due. The node publishes the will
    /// once its delete of the record is written, and the reaper of its old incarnation
    /// publishes nothing more; or the reaper came first, took the record and published the
    /// will, and the node does not. (The delete of a record this node had never seen
    /// written did nothing: the record the create left, with the will, went to the reaper,
    /// which published the will a second time.)
    #[tokio::test(start_paused = true)]
    async fn a_will_whose_records_create_got_no_answer_is_published_once() {
        for reaper_first in [false, true] {
            let engine = MemoryBackend::new();
            let m1 = NodeId::new("m1").unwrap();
            let (cluster, ops, mut from_m1) = owner_of_c(&engine).await;
            let key = ClientKey::new("c");
            let connected = SessionSnapshot {
                expiry_interval: 0,
                will: Some(a_will()),
                ..snapshot(Vec::new())
            };
            engine.lose_answers(Bucket::Sessions, 1, BackendError::Timeout);
            let store = SessionOp::Store("c".into(), Some(connected), None, Vec::new(), None);
            ops.send(store).unwrap();
            while cluster.load_session(&key).await.unwrap().0.is_none() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // The reaper of m1's incarnation, before or after m1 tries its write again.
            let m2 = node_on(&engine, "m2", 2);
            let (reaper_ops, _reaper_ops_rx) = mpsc::unbounded_channel();
            let (reaper_tx, mut from_m2) = mpsc::channel(64);
            let dead = Expired {
                node: m1.clone(),
                incarnation: 1,
            };
            let reap = || async {
                let Orphans { taken: orphans, .. } = m2.orphans(&dead, None).await.unwrap();
                for o in orphans {
                    take_over_orphan(&m2, &NodeId::new("m2").unwrap(), o, &reaper_ops, &reaper_tx)
                        .await;
                }
            };
            if reaper_first {
                reap().await;
            }
            // The connection ends: its session with it, its will due.
            let ended = SessionOp::Store("c".into(), None, None, vec![a_will()], None);
            ops.send(ended).unwrap();
            tokio::time::sleep(WRITE_RETRY * 3).await;
            if !reaper_first {
                reap().await;
            }
            let (on_m1, on_m2) = (wills_in(&mut from_m1), wills_in(&mut from_m2));
            assert_eq!(
                (on_m1, on_m2),
                if reaper_first { (0, 1) } else { (1, 0) },
                "reaper first: {reaper_first}"
            );
            assert!(cluster.load_session(&key).await.unwrap().0.is_none());
        }
    }

    /// Issue 15, a long fault run (a probe's will never published): a client with a will
    /// whose session ends with its connection; the write that ends its record (the will due)
    /// lands, but its answer is lost (NATS timed out while the node came back from a
    /// step-down). The retry, refused by revision, must know the landed write for its own
    /// and publish the will, once [MQTT-3.1.2-8]: a plain delete left nothing to tell, and
    /// the retry took it for another node's take and withheld the will.
    #[tokio::test(start_paused = true)]
    async fn a_will_whose_ending_write_got_no_answer_is_published_once() {
        let engine = MemoryBackend::new();
        let (cluster, ops, mut from_m1) = owner_of_c(&engine).await;
        let key = ClientKey::new("c");
        let connected = SessionSnapshot {
            expiry_interval: 0,
            will: Some(a_will()),
            ..snapshot(Vec::new())
        };
        let store = SessionOp::Store("c".into(), Some(connected), None, Vec::new(), None);
        ops.send(store).unwrap();
        while cluster.load_session(&key).await.unwrap().0.is_none() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // The connection ends, its will due; the write that ends the record lands unheard.
        engine.lose_answers(Bucket::Sessions, 1, BackendError::Timeout);
        let ended = SessionOp::Store("c".into(), None, None, vec![a_will()], None);
        ops.send(ended).unwrap();
        tokio::time::sleep(WRITE_RETRY * 3).await;
        assert_eq!(wills_in(&mut from_m1), 1, "the will is published once");
        assert!(cluster.load_session(&key).await.unwrap().0.is_none());
        // The reaper of m1's incarnation finds nothing of it to publish again.
        let m2 = node_on(&engine, "m2", 2);
        let dead = Expired {
            node: NodeId::new("m1").unwrap(),
            incarnation: 1,
        };
        let Orphans { taken: orphans, .. } = m2.orphans(&dead, None).await.unwrap();
        assert!(orphans.is_empty());
    }

    /// The same for a reaper: a dead node's client whose session ends at the reap with its
    /// will due; the reaper's write that ends the record lands unheard, and its retry,
    /// refused by revision, knows it for its own: the will is published once, by the reaper.
    #[tokio::test(start_paused = true)]
    async fn a_reapers_ending_write_that_got_no_answer_still_publishes_the_will() {
        let engine = MemoryBackend::new();
        let m1 = Cluster::new(
            engine.clone(),
            ClusterConfig::new(NodeId::new("m1").unwrap(), 1),
        );
        let key = ClientKey::new("c");
        let claim = m1.claim_client(&key).await.unwrap().revision;
        let mut r = record_of(
            NodeId::new("m1").unwrap(),
            claim,
            &SessionSnapshot {
                expiry_interval: 0,
                will: Some(a_will()),
                ..snapshot(Vec::new())
            },
            None,
        );
        r.disconnected_at_ms = None;
        m1.store_session(&key, &r, Fence::Absent).await.unwrap();
        let m2 = node_on(&engine, "m2", 2);
        let dead = Expired {
            node: NodeId::new("m1").unwrap(),
            incarnation: 1,
        };
        let Orphans { taken: orphans, .. } = m2.orphans(&dead, None).await.unwrap();
        assert_eq!(orphans.len(), 1);
        let (reaper_ops, _reaper_ops_rx) = mpsc::unbounded_channel();
        let (reaper_tx, mut from_m2) = mpsc::channel(64);
        engine.lose_answers(Bucket::Sessions, 1, BackendError::Timeout);
        for o in orphans {
            take_over_orphan(&m2, &NodeId::new("m2").unwrap(), o, &reaper_ops, &reaper_tx).await;
        }
        assert_eq!(
            wills_in(&mut from_m2),
            1,
            "the reaper publishes the will once"
        );
        assert!(m2.load_session(&key).await.unwrap().0.is_none());
    }

    /// Appends `payload` to topic "t" as published on node `from`; its stream sequence.
    async fn published_on(
        cluster: &Cluster<MemoryBackend>,
        from: &str,
        payload: &'static str,
    ) -> u64 {
        let msg = exported("t", payload, false, None).msg;
        let env = envelope(&NodeId::new(from).unwrap(), &msg, Instant::now(), unix_ms());
        cluster.append("t", &env).await.unwrap().1
    }

    /// Issue 15, the long fault run's 898 lost at `sub0`: m2 reaps the dead m0 and takes
    /// `sub0`'s session; before m2's replay of it is back (its read timed out), `sub0`
    /// connects to m1. m1's claim finds the reaped record and resumes from the dead node's
    /// place in the log, which the reaped record keeps (`SessionRecord::cursors_of`): the
    /// client gets the message m0 had in flight again, the one m0 had queued, the one it
    /// missed, and those published since (one of them the reaper's own), each once
    /// [MQTT-4.1.0-1] [MQTT-4.4.0-1]. (A reaped record without its place in the log
    /// resumed the session with none of them.)
    #[tokio::test(start_paused = true)]
    async fn a_reaped_session_claimed_elsewhere_before_the_reapers_replay_is_back_loses_nothing() {
        let engine = MemoryBackend::new();
        let node = |n: &str| NodeId::new(n).unwrap();
        let on = |n: &str, incarnation| {
            Arc::new(Cluster::new(
                engine.clone(),
                ClusterConfig::new(node(n), incarnation),
            ))
        };
        let (m0, m1, m2) = (on("m0", 1), on("m1", 2), on("m2", 3));
        let key = ClientKey::new("sub0");
        let claimed = m0.claim_client(&key).await.unwrap();
        // On m0: 1 delivered and acknowledged, 2 in flight, 3 (m0's own) queued, 4 not yet
        // brought by m0's follower when its record was written.
        published_on(&m0, "m3", "1").await;
        let in_flight = published_on(&m0, "m3", "2").await;
        let own = published_on(&m0, "m0", "3").await;
        published_on(&m0, "m3", "4").await;
        let (partition, _) = m0.partition_subject("t");
        let record = SessionRecord {
            node: node("m0"),
            claim: claimed.revision.get(),
            protocol: 5,
            expiry_interval: 600,
            disconnected_at_ms: None,
            subscriptions: vec![StoredSubscription {
                filter: "t".into(),
                options: makelaar_proto::SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
                identifier: None,
            }],
            will: None,
            cursors: vec![Cursor {
                partition: partition.index(),
                next: in_flight + 1,
                writer_through: own,
            }],
            outbound: vec![
                Outbound {
                    packet_id: 7,
                    partition: partition.index(),
                    seq: in_flight,
                    state: OutboundState::AwaitPuback,
                },
                Outbound {
                    packet_id: 0,
                    partition: partition.index(),
                    seq: own,
                    state: OutboundState::Queued,
                },
            ],
            inbound_qos2: Vec::new(),
            will_takers: Vec::new(),
            cursors_of: None,
            writer_late: Vec::new(),
        };
        m0.store_session(&key, &record, Fence::Absent)
            .await
            .unwrap();

        // m0 dies; m2 reaps it and takes the session in. Its replay is never answered here.
        let dead = Expired {
            node: node("m0"),
            incarnation: 1,
        };
        let Orphans {
            taken: mut orphans,
            failed,
            ..
        } = m2.orphans(&dead, None).await.unwrap();
        assert!(failed.is_empty());
        let (ops, _ops_rx) = mpsc::unbounded_channel();
        let (tx, mut from_m2) = mpsc::channel(64);
        let taken = take_over_orphan(&m2, &node("m2"), orphans.pop().unwrap(), &ops, &tx)
            .await
            .unwrap();
        assert!(taken.session);
        assert!(matches!(
            from_m2.try_recv(),
            Ok(FromCluster::Orphan {
                resume: Some(_),
                ..
            })
        ));
        // Published meanwhile: elsewhere, and on the reaper.
        published_on(&m0, "m3", "5").await;
        let last = published_on(&m0, "m2", "6").await;

        // `sub0` connects to m1, whose followers have read the whole partition.
        let (ops, _ops_rx) = mpsc::unbounded_channel();
        let (tx, mut from_m1) = mpsc::channel(64);
        claim(m1.clone(), (1, Arc::from("sub0")), ops, tx.clone()).await;
        let Ok(FromCluster::Claimed {
            result: Ok(claim), ..
        }) = from_m1.try_recv()
        else {
            panic!("the claim succeeds")
        };
        assert!(claim.moved_away);
        let resume = claim
            .resume
            .expect("the reaped record keeps the dead node's place in the log");
        assert_eq!(resume.writer, node("m0"));
        let plan = ReplayPlan::new(
            resume.writer.clone(),
            node("m1"),
            (&resume.cursors, &resume.outbound, &resume.writer_late),
            |_| makelaar_cluster::replay::NodePosition {
                next: last + 1,
                own_through: 0,
            },
            &[],
        );
        let req = ReplayRequest {
            client_id: Arc::from("sub0"),
            resume: 1,
            plan,
            outbound: resume.outbound,
            filters: vec!["t".into()],
            max_messages: 100,
            max_bytes: usize::MAX,
        };
        replay(m1.clone(), Box::new(req), tx).await;
        let Ok(FromCluster::Replayed {
            in_flight, queued, ..
        }) = from_m1.try_recv()
        else {
            panic!("the replay answers")
        };
        let text = |m: &Message| String::from_utf8(m.payload.to_vec()).unwrap();
        let resent: Vec<_> = in_flight.iter().map(|k| (text(&k.msg), k.state)).collect();
        assert_eq!(resent, [("2".to_owned(), KeptState::AwaitingAck(7))]);
        let queued: Vec<_> = queued.iter().map(|m| text(m)).collect();
        assert_eq!(queued, ["3", "4", "5", "6"]);
    }
}
