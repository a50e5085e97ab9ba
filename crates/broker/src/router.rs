//! The router task: the one owner of the core [`Broker`] state. Connection tasks send it
//! what their clients did over one bounded channel; it answers through each connection's
//! `Outbox`, and sweeps their keep-alive clocks. Nothing else touches sessions, subscriptions
//! or retained messages.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use makelaar_core::session::ConnId;
use makelaar_core::{Action, Broker, CloseReason};
use makelaar_proto::{Connect, Packet, ReasonCode};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cluster::{FromCluster, Log, ReplayRequest, Resume, ToCluster};
use crate::outbox::{self, Outbox, Refused};
use crate::store::gate::{Gate, Held};
use crate::store::{Persistence, StoreEvent};
use crate::sys::SysPublisher;
use crate::Counters;
use desk::{AdminDesk, AdminRequest};
use makelaar_cluster::checkpoint::{is_progress, waits_for_record, CheckpointConfig, Checkpoints};
use makelaar_cluster::replay::{
    caught_up, late_past, past_tails, session_log, NodePosition, ReplayPlan, Taken,
};

pub(crate) mod desk;

/// How often keep-alives are checked: a 1 s keep-alive is then enforced between 1.5 and
/// 1.75 s of silence.
const KEEP_ALIVE_SWEEP: Duration = Duration::from_millis(250);

/// How long a CONNECT waits for this node's partition followers to pass its session record
/// (see `ClusterSide::catching_up`) before it is refused (server unavailable), and a dead
/// node's session held for them ([`HeldOrphan`]) before it is taken in all the same.
const CATCH_UP_PATIENCE: Duration = Duration::from_secs(10);

/// What a connection task tells the router.
// Packets travel by value: a memcpy is cheaper than an allocation per packet.
#[allow(clippy::large_enum_variant)]
pub enum ToRouter {
    /// A CONNECT was received; `out` is where the router puts this connection's packets.
    Connect {
        conn: ConnId,
        connect: Box<Connect>,
        out: Arc<Outbox>,
        peer: SocketAddr,
    },
    /// A packet from a connected client, already checked by its `ConnState`.
    Packet { conn: ConnId, packet: Packet },
    /// The connection broke the protocol; the task has told the client (5.0) and closes.
    Violation {
        conn: ConnId,
        violation: makelaar_core::conn::Violation,
    },
    /// The connection ended without DISCONNECT.
    Lost { conn: ConnId },
    /// The connection, asked to drain (`Action::Drain`), has forwarded what its client had
    /// sent.
    Drained { conn: ConnId },
    /// A reload brought new access rules (see `reload`).
    SetAuthorizer(Option<Box<dyn makelaar_core::Authorizer>>),
    /// The rules of bridges' local sessions (queue bounds, their `out` filters), by client
    /// id, and this broker's id for the loop guard, after a reload.
    SetBridgeSessions(
        std::collections::HashMap<String, makelaar_core::broker::BridgeSession>,
        std::collections::HashMap<String, Vec<String>>,
        String,
    ),
    /// A question or an order from the administrator (see `admin`).
    Admin(Box<AdminRequest>),
    /// A question from the HTTP side (`crate::http::HttpCtx::ask_router`), answered on this
    /// task with the router's state at hand.
    Inspect(Inspect),
}

/// A connection as the router knows it.
struct Conn {
    out: Arc<Outbox>,
    /// The client's address, for the dashboard.
    peer: SocketAddr,
}

/// A closure run on the router's task; it sends its answer back itself.
pub(crate) type Inspect = Box<dyn FnOnce(&Router) + Send>;

pub(crate) struct Router {
    broker: Broker,
    conns: HashMap<ConnId, Conn>,
    max_outgoing: usize,
    counters: Arc<Counters>,
    sys: SysPublisher,
    slow_logged: HashMap<ConnId, ()>,
    /// Outboxes written in this batch, woken together at its end.
    to_wake: Vec<Arc<Outbox>>,
    /// The durable store, unless the broker runs in memory.
    persist: Option<Persistence>,
    /// Acknowledgements waiting for the store (see `store::gate`).
    gate: Gate,
    changes: Vec<makelaar_core::persist::Change>,
    /// The administrator's requests and topic watches (see `admin`).
    admin: AdminDesk,
    /// Connections ended, by why (see [`Ends`]).
    ends: Ends,
    /// This node's side of the cluster, when it is one (see `crate::cluster`).
    cluster: Option<ClusterSide>,
}

/// What the router keeps of the cluster: the channel to it, the acknowledgements waiting
/// for it, and the CONNECTs waiting for their client id's claim.
pub(crate) struct ClusterSide {
    to: mpsc::UnboundedSender<ToCluster>,
    /// The batches of accepted messages, to the cluster's writer.
    batches: mpsc::UnboundedSender<crate::cluster::Batch>,
    /// Acknowledgements waiting until the cluster has what they acknowledge (QoS 1/2
    /// messages on disk on a majority, retained messages in the bucket): the same rule as
    /// the store's, with the cluster's batches as epochs.
    gate: Gate,
    exported: Vec<makelaar_core::broker::Exported>,
    filter_changes: Vec<makelaar_core::broker::FilterChange>,
    session_changes: Vec<Arc<str>>,
    /// Sessions this broker forgot since the last flush because another node has them now
    /// ([`Router::forget_moved`]): their end here is not written (no delete of the record,
    /// which is that node's).
    moved: HashSet<Arc<str>>,
    /// Wills due that the cluster must take out of their records before they are published.
    due_wills: Vec<makelaar_core::broker::DueWill>,
    /// Client ids the broker assigned, to register on the cluster.
    assigned: Vec<Arc<str>>,
    /// CONNECTs waiting for their claim, with the packets their clients sent behind them
    /// and `step_downs` when the claim began.
    claiming: HashMap<ConnId, (Box<Connect>, Vec<Packet>, u64)>,
    /// Connections that went while their claim ran: the client id and the CONNECT's Clean
    /// Start, until the claim is back, so that a will the claim took out of the record is
    /// still decided (nobody else will: the record no longer holds it).
    abandoned: HashMap<ConnId, (Arc<str>, bool)>,
    /// The node lost its lease (see `FromCluster::StepDown`): CONNECTs are refused.
    stepped_down: bool,
    /// How often this node stepped down. A claim that began before a step-down may have
    /// written the registry entry under the retired incarnation, which a peer reaps: the
    /// client would be served here under an entry nobody reaps when this node dies.
    step_downs: u64,
    /// The claim of each connection, to mark it disconnected when it ends.
    claims: HashMap<ConnId, (Arc<str>, makelaar_cluster::Revision)>,
    /// The same by client id (`ClusterSide::add_claim`, `remove_claim`): looked up for every
    /// registry write of another node ([`ClusterSide::claimed_elsewhere`]).
    claimed: HashMap<Arc<str>, Vec<ConnId>>,
    /// This node.
    node: makelaar_cluster::NodeId,
    /// Where the router stands in each partition: its follower's next message, and this
    /// node's own messages over the batches whose appends returned
    /// (`makelaar_cluster::replay`).
    positions: std::collections::BTreeMap<u16, NodePosition>,
    /// The latest epoch whose appends returned.
    appended: u64,
    /// Batches whose appends returned, with this node's highest sequence per partition in
    /// each, in order: their acknowledgements wait until this node's followers are past
    /// those (see [`ClusterSide::confirmed`]).
    unconfirmed: std::collections::VecDeque<(u64, Vec<(u16, u64)>)>,
    /// `[cluster] fence_late_appends`: this node's messages name their publisher's claim,
    /// and their acknowledgements wait for its followers ([`ClusterSide::confirmed`]).
    /// Off, they name none (no reader drops them) and go when the appends return.
    fence_late_appends: bool,
    /// Connections a barrier of a newer claim of their client passed (see
    /// `FromCluster::Barrier`): closing, and nothing of theirs is acknowledged any more.
    fenced: HashSet<ConnId>,
    /// The claims named by the barriers this node's followers passed (kept a while): a
    /// connection registered later under an older claim is fenced at once.
    barriers_passed: makelaar_cluster::barrier::Fences,
    /// What waits for the appends of the batches handed to the cluster before it, in order:
    /// a session's record must list its messages by their place in the log, and its
    /// cursors count this node's own messages published up to then.
    waiting: std::collections::VecDeque<(u64, Waiting, Then)>,
    /// Claims whose session record is ahead of this node's followers: decided once they
    /// have caught up, so no message reaches the session both live and from the record.
    catching_up: Vec<(ConnId, crate::cluster::Claim, Instant)>,
    /// Dead nodes' sessions taken over by this node whose records are ahead of its
    /// followers, by client id: taken into the broker once they are past them (see
    /// [`HeldOrphan`]).
    orphans: HashMap<Arc<str>, HeldOrphan>,
    /// The followers moved since the held orphans were last looked at: they are, once per
    /// batch (`Router::flush`), not per message (a reap may hand over thousands). Taken in
    /// a little later than it could be, a session loses nothing: its replay reads up to
    /// where the followers stand then.
    orphans_to_check: bool,
    /// Sessions taken in with a replay to come, by client id: what the replay needs.
    resumes: HashMap<Arc<str>, Resuming>,
    /// The resumes started so far: each one's number (`Resuming::n`).
    resumes_started: u64,
    /// This node's wills whose append failed and is tried again apart
    /// (`FromCluster::WillRetrying`), with the epoch of the batch they came in. Routed
    /// here already, they reached the sessions here then; a session taken in after has
    /// them from its replay only, which waits for their place in the log (see
    /// [`ReplayStage::ForWills`]). (Their retry runs apart so as not to hold the batch's
    /// acknowledgements, so their place is in no batch's `own_through`.)
    retried_wills: HashMap<makelaar_cluster::MessageId, u64>,
    /// Where those wills landed (with the epoch of their batch) that this node's followers
    /// have not passed yet: a session taken in now stands before them, and its replay reads
    /// them (`Resuming::late`); a session here when one was routed took it in, and its
    /// record lists it (`SessionRecord::writer_late`).
    landed_wills: Vec<(u64, makelaar_core::message::LogPosition)>,
    /// The sessions' queue limits (max_queued_messages, max_queued_bytes): a replay reads
    /// no more.
    max_queued: (usize, usize),
    /// The figures, among them the queue to the cluster and its bound (see
    /// `crate::cluster::QueueRoom`).
    stats: Arc<makelaar_cluster::stats::NodeStats>,
    /// Wakes the router when that queue has room again.
    room: Arc<tokio::sync::Notify>,
    /// The queue was full at the last look (a log line per episode, at most every
    /// [`QUEUE_FULL_LOG_EVERY`]).
    full: bool,
    full_logged: Option<Instant>,
    /// When the records of the connected persistent sessions are brought up to date
    /// (`makelaar_cluster::checkpoint`).
    checkpoints: Checkpoints<Arc<str>>,
    /// The connections of the sessions `checkpoints` follows, both ways.
    tracked: HashMap<ConnId, Arc<str>>,
    conn_of: HashMap<Arc<str>, ConnId>,
    /// Per connection, the packets waiting for a checkpoint of its session (numbered), in
    /// order: a QoS 2 PUBLISH or PUBREL, and what came after it.
    record_held: HashMap<ConnId, std::collections::VecDeque<(u64, Held)>>,
    /// Packets let through by a checkpoint (or because none is needed any more), for the
    /// router to carry on through the other gates before anything else.
    record_ready: Vec<(ConnId, Held)>,
}

/// Each partition's follower position (`NodePosition::next`) when something was handed to
/// [`ClusterSide::after_appends`]: what a session's snapshot taken then has been offered of
/// other nodes' messages.
type Followed = Vec<(u16, u64)>;

/// Where things stood when something was handed to [`ClusterSide::after_appends`]: a
/// session snapshot taken then is written with this place in the log, not a later one.
struct Then {
    followed: Followed,
    /// For a record write: the place of the session's resume whose replay was not back
    /// then (see [`ClusterSide::log_of`]). (Looked up at the write instead, a replay back
    /// meanwhile had taken the resume out, and the record said the session had what that
    /// replay brought, although the snapshot did not hold it.)
    resumed: Option<Log>,
    /// The last batch handed to the cluster then: what this node had routed.
    epoch: u64,
    /// This node's own messages per partition through the batches up to `epoch`, once
    /// they are appended (`NodePosition::own_through` then). Taken later, when the write
    /// waits for a will's retry, it would count messages routed after the snapshot.
    own: Option<Vec<(u16, u64)>>,
}

/// What waits for the cluster's appends (see `ClusterSide::waiting`).
enum Waiting {
    /// Write the session's record (or delete it).
    Store {
        client_id: Arc<str>,
        snapshot: Option<makelaar_core::broker::SessionSnapshot>,
        /// Its wills the core says are due: the write takes them out of the record.
        wills: Vec<makelaar_core::broker::KeptWill>,
    },
    /// Answer a hand-over request (after the record above it).
    Released(makelaar_cluster::cluster::ReleaseRequest),
    /// Have the sessions task decide the due wills of a session that moved away, which
    /// waited here for its replay (after the hand-over above it).
    LeftWills {
        client_id: Arc<str>,
        wills: Vec<makelaar_core::broker::KeptWill>,
    },
    /// Mark the registry entry disconnected (after the record above it).
    Disconnected {
        client_id: Arc<str>,
        revision: makelaar_cluster::Revision,
    },
    /// Start the replay of a session's resume `n` (this node's own messages published
    /// before its adoption are then known), once the wills it waits for are placed.
    Replay { client_id: Arc<str>, n: u64 },
    /// Write a connected session's record with where it stands now: checkpoint `n`.
    Checkpoint { client_id: Arc<str>, n: u64 },
}

/// A session taken in from a record, until its replay is back.
struct Resuming {
    /// Its number on this node, asked for with its replay and handed back with it
    /// (`FromCluster::Replayed`): only that replay's answer is this resume's.
    n: u64,
    resume: Resume,
    /// Each partition's follower position at the adoption.
    live_from: HashMap<u16, u64>,
    /// The last batch handed to the cluster at the adoption: what this node routed before.
    epoch: u64,
    /// Where this node's wills routed before the adoption and appended late (retried) are,
    /// at or past `live_from`: the replay reads them (`ReplayPlan::new`'s `late`).
    late: Vec<(u16, u64)>,
    stage: ReplayStage,
    filters: Vec<String>,
    /// Wills that fell due before the replay came back (the connection ended at once): they
    /// go with the record written then, which takes them out [MQTT-3.1.2-8].
    wills: Vec<makelaar_core::broker::KeptWill>,
}

/// Where a resumed session's replay stands.
enum ReplayStage {
    /// Waiting for the appends of the batches handed to the cluster before the adoption.
    AfterAppends,
    /// Those are appended: this node's own messages through `own_through` (per partition)
    /// were routed before the adoption, later ones after it (they reached the session
    /// live). Waiting for the wills routed before the adoption whose append is retried
    /// ([`ClusterSide::retried_wills`]): read without them, the replay would end before
    /// them, and this node's follower passes this node's own messages by, so the session
    /// would never get them (issue 15, a partition run: `sub1` and `sub2`, reaped while a
    /// will's append was retried, never got it). A retry ends within about a minute, landed
    /// or given up, and says so (`FromCluster::WillPlaced`): the wait is bounded.
    ForWills { own_through: HashMap<u16, u64> },
    /// Asked for (`ToCluster::Replay`).
    Asked,
}

/// A dead node's session taken over by this node, as the reaper hands it to the router
/// (`FromCluster::Orphan`).
struct Orphan {
    client_id: Arc<str>,
    snapshot: makelaar_core::broker::SessionSnapshot,
    will_in: Duration,
    expires_in: Option<Duration>,
    resume: Option<Resume>,
}

/// A dead node's session taken over by this node (`FromCluster::Orphan`) while this node's
/// partition followers were behind its record: kept out of the broker, where every message
/// the followers bring would be routed to it live, messages the session had already
/// received on the dead node among them (the record's cursors are past them) [MQTT-4.3.3-*].
/// Taken in as [`FromCluster::Orphan`] says, with its clocks run on, when
/// [`HeldOrphan::goes`] says so.
struct HeldOrphan {
    snapshot: makelaar_core::broker::SessionSnapshot,
    /// As the reaper said at `since`: when its will (if any) is due, when its session ends.
    will_in: Duration,
    expires_in: Option<Duration>,
    resume: Resume,
    /// When it was taken over here.
    since: Instant,
}

/// Why a held orphan is taken into the broker now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OrphanGoes {
    /// This node's followers are past its record: nothing they bring from here on reached
    /// the session on the dead node.
    CaughtUp,
    /// Its will or its session's end falls due: the broker publishes the will (once, by the
    /// write that takes it out of the record) and ends the session on time, as for any
    /// session of this node's.
    Due,
    /// The followers did not catch up within [`CATCH_UP_PATIENCE`] (stalled): taken in all
    /// the same, as an orphan is never dropped (its will and what it holds would be lost);
    /// what they bring may reach it twice, logged.
    OutOfPatience,
    /// Its client connects with Clean Start: the session ends with that CONNECT, as the
    /// broker decides it (its will too), so nothing can reach it twice.
    CleanStart,
}

impl HeldOrphan {
    /// Whether it is taken in at `now`, and why; `behind`: this node's followers are not
    /// past its record yet (see [`ClusterSide::behind_record`]).
    fn goes(&self, now: Instant, behind: bool) -> Option<OrphanGoes> {
        if !behind {
            Some(OrphanGoes::CaughtUp)
        } else if self.due_at().is_some_and(|at| now >= at) {
            Some(OrphanGoes::Due)
        } else if out_of_patience(self.since, now) {
            Some(OrphanGoes::OutOfPatience)
        } else {
            None
        }
    }

    /// When its will or its session's end falls due, whichever comes first.
    fn due_at(&self) -> Option<Instant> {
        let will = self
            .snapshot
            .will
            .as_ref()
            .map(|_| self.since + self.will_in);
        let end = self.expires_in.map(|d| self.since + d);
        will.into_iter().chain(end).min()
    }

    /// The next time [`HeldOrphan::goes`] may say yes without the followers moving.
    fn deadline(&self) -> Instant {
        let patience = self.since + CATCH_UP_PATIENCE;
        self.due_at().map_or(patience, |at| at.min(patience))
    }

    /// The orphan as if handed over at `now`: its will and its session's end as far off as
    /// they are still.
    fn at(self, client_id: Arc<str>, now: Instant) -> Orphan {
        let held = now.saturating_duration_since(self.since);
        Orphan {
            client_id,
            snapshot: self.snapshot,
            will_in: self.will_in.saturating_sub(held),
            expires_in: self.expires_in.map(|d| d.saturating_sub(held)),
            resume: Some(self.resume),
        }
    }
}

/// The filters a session taken in from a record replays its messages for: its own
/// subscriptions, not its shared ones (a share group's messages come from the group's
/// stream, not from the session's record).
fn replayed_filters(snapshot: &makelaar_core::broker::SessionSnapshot) -> Vec<String> {
    snapshot
        .subscriptions
        .iter()
        .map(|(f, _)| f.clone())
        .filter(|f| !f.starts_with("$share/"))
        .collect()
}

/// Whether something waiting for this node's followers since `since` has waited long
/// enough at `now`: they are taken as stalled (see [`CATCH_UP_PATIENCE`]).
fn out_of_patience(since: Instant, now: Instant) -> bool {
    now.saturating_duration_since(since) >= CATCH_UP_PATIENCE
}

/// How often a full queue to the cluster is logged at most.
const QUEUE_FULL_LOG_EVERY: Duration = Duration::from_secs(10);

impl ClusterSide {
    pub(crate) fn new(
        (to, batches): (
            mpsc::UnboundedSender<ToCluster>,
            mpsc::UnboundedSender<crate::cluster::Batch>,
        ),
        stats: Arc<makelaar_cluster::stats::NodeStats>,
        room: Arc<tokio::sync::Notify>,
        node: makelaar_cluster::NodeId,
        checkpoint: CheckpointConfig,
        fence_late_appends: bool,
    ) -> ClusterSide {
        ClusterSide {
            fence_late_appends,
            checkpoints: Checkpoints::new(checkpoint),
            tracked: HashMap::new(),
            conn_of: HashMap::new(),
            record_held: HashMap::new(),
            record_ready: Vec::new(),
            to,
            batches,
            stats,
            room,
            full: false,
            full_logged: None,
            gate: Gate::default(),
            exported: Vec::new(),
            filter_changes: Vec::new(),
            session_changes: Vec::new(),
            moved: HashSet::new(),
            due_wills: Vec::new(),
            assigned: Vec::new(),
            stepped_down: false,
            step_downs: 0,
            claiming: HashMap::new(),
            abandoned: HashMap::new(),
            claims: HashMap::new(),
            claimed: HashMap::new(),
            node,
            positions: std::collections::BTreeMap::new(),
            appended: 0,
            unconfirmed: std::collections::VecDeque::new(),
            fenced: HashSet::new(),
            barriers_passed: Default::default(),
            waiting: std::collections::VecDeque::new(),
            catching_up: Vec::new(),
            orphans: HashMap::new(),
            orphans_to_check: false,
            resumes: HashMap::new(),
            resumes_started: 0,
            retried_wills: HashMap::new(),
            landed_wills: Vec::new(),
            max_queued: (0, 0),
        }
    }

    /// Carries `w` out once the batches handed to the cluster so far are appended (now, when
    /// they are).
    ///
    /// A session's snapshot is taken when it is handed here, but its record is written
    /// later: the follower positions it says the session has taken in are the ones of now
    /// (`followed`), not of when the appends return. Meanwhile the followers go on, and
    /// the messages they bring to the offline session are in no snapshot: with the later
    /// positions, the record would say they were taken in, and the node resuming the
    /// session would skip them (found by the fault harness, tests/interop/cluster_faults.py:
    /// a subscriber moving between nodes lost a QoS 1 message published as it moved).
    ///
    /// A record write also waits for this node's wills routed before its snapshot whose
    /// append is being retried ([`ClusterSide::retried_wills`]): the session may have taken
    /// one in, and only once it has landed can the record say where (`writer_late`).
    /// Written before, the record left it out, and the node resuming the session delivered
    /// the will again (issue 15: `sub2` got a will twice). A retry ends within about a
    /// minute, landed or given up: the wait is bounded.
    fn after_appends(&mut self, w: Waiting, broker: &Broker) {
        let epoch = self.gate.submitted();
        let followed: Followed = self.positions.iter().map(|(p, n)| (*p, n.next)).collect();
        let resumed = match &w {
            Waiting::Store { client_id, .. } => self.resumed_place(client_id),
            _ => None,
        };
        let own = (epoch <= self.appended).then(|| self.own_through());
        let then = Then {
            followed,
            resumed,
            epoch,
            own,
        };
        if self.waits_for_wills(&w, epoch) {
            tracing::debug!(target: crate::cluster::RECORDS, wills = self.retried_wills.len(), "a session record waits for this node's wills being retried");
        }
        self.waiting.push_back((epoch, w, then));
        self.drain_waiting(broker);
    }

    /// This node's own messages per partition through the batches appended so far.
    fn own_through(&self) -> Vec<(u16, u64)> {
        (self.positions.iter())
            .map(|(p, n)| (*p, n.own_through))
            .collect()
    }

    /// Whether `w`, handed over when batch `epoch` was the last one, waits for wills of
    /// this node being retried (see [`ClusterSide::after_appends`]): a record written from
    /// the snapshot of then, for those routed by then; one written from a snapshot taken
    /// when it goes, for all of them.
    fn waits_for_wills(&self, w: &Waiting, epoch: u64) -> bool {
        let routed_by = match w {
            Waiting::Store {
                snapshot: Some(s), ..
            } if s.connected => u64::MAX,
            Waiting::Store {
                snapshot: Some(_), ..
            } => epoch,
            Waiting::Checkpoint { .. } => u64::MAX,
            _ => return false,
        };
        self.retried_wills.values().any(|e| *e <= routed_by)
    }

    /// Carries out what waited, in order, as far as the appends and the wills' retries let
    /// it.
    fn drain_waiting(&mut self, broker: &Broker) {
        while let Some((e, w, _)) = self.waiting.front() {
            if *e > self.appended || self.waits_for_wills(w, *e) {
                return;
            }
            if let Some((_, w, then)) = self.waiting.pop_front() {
                self.complete(w, broker, then);
            }
        }
    }

    /// The batch numbered `epoch` is appended, with this node's highest sequence per
    /// partition in it: what waited for it goes (with this node's position exactly as of
    /// that batch).
    /// The oldest batch whose appends returned and that this node's followers are past
    /// (taken off the list), if any. A message this node published is acknowledged only
    /// then: the follower met every barrier before it first, and a barrier of a newer claim
    /// of its publisher would have fenced the connection (`ClusterSide::fence_older_claims`).
    /// So no acknowledged message is one that every reader drops as a late append
    /// (`makelaar_cluster::barrier`).
    fn confirmed(&mut self) -> Option<u64> {
        let (_, own) = self.unconfirmed.front()?;
        let past = |&(p, seq): &(u16, u64)| self.positions.get(&p).is_some_and(|n| n.next > seq);
        if self.fence_late_appends && !own.iter().all(past) {
            return None;
        }
        self.unconfirmed.pop_front().map(|(epoch, _)| epoch)
    }

    fn appended(&mut self, epoch: u64, own: Vec<(u16, u64)>, broker: &Broker) {
        for (p, seq) in own {
            let pos = self.positions.entry(p).or_default();
            pos.own_through = pos.own_through.max(seq);
        }
        self.appended = self.appended.max(epoch);
        let own = self.own_through();
        for (_, _, then) in self.waiting.iter_mut().take_while(|(e, _, _)| *e <= epoch) {
            then.own.get_or_insert_with(|| own.clone());
        }
        self.drain_waiting(broker);
    }

    /// Whether this node's partition followers are behind `record` (not past everything
    /// it says its session took in): a session taken into the broker from it now would get
    /// the messages between them both live and from the record. The one rule for claims
    /// (`Router::decide_claim`) and dead nodes' sessions ([`HeldOrphan`]).
    fn behind_record(&self, record: &Resume) -> bool {
        let next_of = |p: u16| self.positions.get(&p).map_or(0, |n| n.next);
        !caught_up(
            &record.cursors,
            &record.outbound,
            &record.writer_late,
            next_of,
        )
    }

    /// The next time a held orphan may be taken in without the followers moving.
    fn next_orphan_deadline(&self) -> Option<Instant> {
        self.orphans.values().map(HeldOrphan::deadline).min()
    }

    /// `client_id`'s session, just taken in from a record (`resume`) and waiting for what
    /// it held or missed: its replay is asked for once this node's own messages published
    /// before now are appended. Replaces a resume of the same client whose replay is not
    /// back (the session was dropped here and taken in again): that replay's answer is
    /// then not this session's (see `FromCluster::Replayed`). The wills that fell due on
    /// that session's connection and waited for its replay are dropped with it: its record
    /// held the will, and the claim that took the session in again took it out and decided
    /// it (carried over as well, it would be published twice); a will whose record write
    /// never landed is lost here.
    fn resume(
        &mut self,
        client_id: Arc<str>,
        resume: Resume,
        filters: Vec<String>,
        broker: &Broker,
    ) {
        self.resumes_started += 1;
        let n = self.resumes_started;
        let live_from: HashMap<u16, u64> =
            self.positions.iter().map(|(p, n)| (*p, n.next)).collect();
        // The wills landed late that the followers have passed are in every replay's range
        // from now on; the others are read for this one.
        self.forget_passed_wills();
        let positions = &self.positions;
        let late = (self.landed_wills.iter())
            .filter(|(_, w)| positions.get(&w.partition).is_none_or(|n| w.seq >= n.next))
            .map(|(_, w)| (w.partition, w.seq))
            .collect();
        let resuming = Resuming {
            n,
            resume,
            live_from,
            epoch: self.gate.submitted(),
            late,
            stage: ReplayStage::AfterAppends,
            filters,
            wills: Vec::new(),
        };
        self.resumes.insert(client_id.clone(), resuming);
        self.after_appends(Waiting::Replay { client_id, n }, broker);
    }

    /// Forgets the wills landed late that this node's followers have passed, and that no
    /// record waiting to be written stands before (its cursors count them then).
    fn forget_passed_wills(&mut self) {
        let (positions, waiting) = (&self.positions, &self.waiting);
        self.landed_wills.retain(|(_, w)| {
            let next = positions.get(&w.partition).map_or(0, |n| n.next);
            let floor = (waiting.iter())
                .filter_map(|(_, _, t)| t.followed.iter().find(|(p, _)| *p == w.partition))
                .map(|(_, n)| *n)
                .fold(next, u64::min);
            w.seq >= floor
        });
    }

    /// A will of this node whose append failed is tried again apart (it came in the
    /// batch numbered `epoch`): the replays of sessions taken in after it wait for it.
    fn will_retrying(&mut self, id: makelaar_cluster::MessageId, epoch: u64) {
        self.retried_wills.insert(id, epoch);
    }

    /// The retried will `id` landed `at` (or was given up: `None`): the replays of the
    /// sessions taken in since it was routed read it, and those that waited for it go.
    fn will_placed(
        &mut self,
        id: &makelaar_cluster::MessageId,
        at: Option<makelaar_core::message::LogPosition>,
        broker: &Broker,
    ) {
        let Some(epoch) = self.retried_wills.remove(id) else {
            tracing::warn!(%id, "a will's retry ended that this node did not know of: sessions taken in meanwhile may miss it");
            return;
        };
        let since: Vec<Arc<str>> = (self.resumes.iter())
            .filter(|(_, r)| r.epoch >= epoch)
            .map(|(id, _)| id.clone())
            .collect();
        match at {
            Some(pos) => {
                self.landed_wills.push((epoch, pos));
                for client_id in &since {
                    let Some(r) = self.resumes.get_mut(client_id) else {
                        continue;
                    };
                    if let ReplayStage::Asked = r.stage {
                        tracing::error!(%client_id, %id, "a session's replay was asked for before a will routed before it was placed: it misses that will");
                    } else {
                        r.late.push((pos.partition, pos.seq));
                    }
                }
            }
            None if !since.is_empty() => {
                tracing::warn!(%id, sessions = since.len(), "a will was given up (it reached the sessions here when it was routed): the sessions taken in since, whose replays waited for it, go on without it");
            }
            None => {}
        }
        let waiting: Vec<Arc<str>> = (self.resumes.iter())
            .filter(|(_, r)| matches!(r.stage, ReplayStage::ForWills { .. }))
            .map(|(id, _)| id.clone())
            .collect();
        for client_id in waiting {
            self.ask_replay(&client_id);
        }
        // And the records waiting for it.
        self.drain_waiting(broker);
        self.forget_passed_wills();
    }

    /// Asks for the replay of `client_id`'s resume once the wills routed before its
    /// adoption are placed (see [`ReplayStage::ForWills`]).
    fn ask_replay(&mut self, client_id: &Arc<str>) {
        let Some(r) = self.resumes.get_mut(client_id) else {
            return;
        };
        let ReplayStage::ForWills { own_through } = &r.stage else {
            return;
        };
        let retried = (self.retried_wills.values())
            .filter(|e| **e <= r.epoch)
            .count();
        if retried > 0 {
            tracing::debug!(%client_id, wills = retried, "a resumed session's replay waits for this node's wills being retried");
            return;
        }
        let plan = ReplayPlan::new(
            r.resume.writer.clone(),
            self.node.clone(),
            (&r.resume.cursors, &r.resume.outbound, &r.resume.writer_late),
            |p| NodePosition {
                next: r.live_from.get(&p).copied().unwrap_or(0),
                own_through: own_through.get(&p).copied().unwrap_or(0),
            },
            &r.late,
        );
        let req = ReplayRequest {
            client_id: client_id.clone(),
            resume: r.n,
            plan,
            outbound: r.resume.outbound.clone(),
            filters: r.filters.clone(),
            max_messages: self.max_queued.0,
            max_bytes: self.max_queued.1,
        };
        r.stage = ReplayStage::Asked;
        if tracing::enabled!(target: crate::cluster::RECORDS, tracing::Level::DEBUG) {
            let parts: Vec<String> = (req.plan.partitions.iter())
                .map(|p| {
                    format!(
                        "p{}:{}..{} cur {}/{} live {} own {} kept {}",
                        p.partition,
                        p.from,
                        p.to,
                        p.cursor.next,
                        p.cursor.writer_through,
                        p.live_from,
                        p.own_through,
                        p.kept.len()
                    )
                })
                .collect();
            tracing::debug!(target: crate::cluster::RECORDS, %client_id, n = r.n, writer = %req.plan.writer, plan = %parts.join("; "), "a resumed session's replay asked for");
        }
        let _ = self.to.send(ToCluster::Replay(Box::new(req)));
    }

    /// The resume whose replay answered as `n`, taken out: `None` when that resume was
    /// replaced since (see [`ClusterSide::resume`]).
    fn replayed(&mut self, client_id: &str, n: u64) -> Option<Resuming> {
        match self.resumes.get(client_id) {
            Some(r) if r.n == n => self.resumes.remove(client_id),
            _ => None,
        }
    }

    /// Where a session connected here now stands in the log, with what it holds
    /// (`session_log`), for its record (see [`ClusterSide::place_of`]).
    fn log_of(&self, client_id: &str, s: &makelaar_core::broker::SessionSnapshot) -> Log {
        self.resumed_place(client_id)
            .unwrap_or_else(|| self.place_of(client_id, s, None))
    }

    /// This node's claims of `client_id`: each connection with the registry revision it
    /// was claimed under (an older connection of the id may not have ended yet).
    fn claims_of<'a>(
        &'a self,
        client_id: &'a str,
    ) -> impl Iterator<Item = (ConnId, makelaar_cluster::Revision)> + 'a {
        (self.claimed.get(client_id).into_iter().flatten())
            .filter_map(|conn| self.claims.get(conn).map(|(_, r)| (*conn, *r)))
    }

    /// `conn` is registered for `client_id` under `revision`.
    fn add_claim(
        &mut self,
        conn: ConnId,
        client_id: Arc<str>,
        revision: makelaar_cluster::Revision,
    ) {
        if let Some((old, _)) = self.claims.insert(conn, (client_id.clone(), revision)) {
            self.forget_claimed(&old, conn);
        }
        self.claimed
            .entry(client_id.clone())
            .or_default()
            .push(conn);
        // A barrier of a newer claim passed while this claim waited (another node claimed
        // the id meanwhile): what it would publish lands after it, dropped by every reader.
        let newer = self.barriers_passed.newest_claim(&client_id);
        if let Some(newer) = newer.filter(|n| *n > revision) {
            self.fence_older_claims(makelaar_cluster::barrier::BarrierClaim {
                client: client_id,
                revision: newer,
            });
        }
    }

    /// A barrier of `claim` passed this node's follower: a connection here of an older
    /// claim of that client is not the client's any more. Whatever it publishes from here
    /// on lands after the barrier, where every reader drops it
    /// (`makelaar_cluster::barrier`), so nothing of it is acknowledged from now on (what
    /// waits is dropped), and it is closed (0x8E) as for a claim seen in the registry.
    fn fence_older_claims(&mut self, claim: makelaar_cluster::barrier::BarrierClaim) {
        let older: Vec<ConnId> = self
            .claims_of(&claim.client)
            .filter(|(_, mine)| *mine < claim.revision)
            .map(|(conn, _)| conn)
            .collect();
        if older.is_empty() {
            return;
        }
        for conn in older {
            self.gate.discard(conn);
            self.fenced.insert(conn);
        }
        tracing::info!(client_id = %claim.client, by = %claim.revision, "a barrier of another node's claim of a client connected here: the connection here is closed, and nothing it sent since is acknowledged");
        self.claimed_elsewhere(claim.client, claim.revision);
    }

    /// `conn`'s claim, taken out.
    fn remove_claim(&mut self, conn: ConnId) -> Option<(Arc<str>, makelaar_cluster::Revision)> {
        let (client_id, revision) = self.claims.remove(&conn)?;
        self.forget_claimed(&client_id, conn);
        Some((client_id, revision))
    }

    fn forget_claimed(&mut self, client_id: &str, conn: ConnId) {
        if let Some(conns) = self.claimed.get_mut(client_id) {
            conns.retain(|c| *c != conn);
            if conns.is_empty() {
                self.claimed.remove(client_id);
            }
        }
    }

    /// Another node wrote `client_id`'s registry entry (`revision`): a connection here
    /// claimed before that is not the client's any more, though the hand-over request that
    /// would have closed it may never have come (a cut link; see
    /// `Cluster::watch_claims_elsewhere`). It is closed (0x8E) as for a claim found
    /// replaced just after it was made (`FromCluster::NotOwner`, by way of the sessions
    /// task, which writes its session no more).
    fn claimed_elsewhere(&mut self, client_id: Arc<str>, revision: makelaar_cluster::Revision) {
        let older: Vec<(ConnId, makelaar_cluster::Revision)> = self
            .claims_of(&client_id)
            .filter(|(_, mine)| *mine < revision)
            .collect();
        for (conn, mine) in older {
            tracing::info!(%client_id, claim = %mine, by = %revision, "another node claimed a client connected here (its hand-over request did not arrive): the connection here is closed");
            let _ = self.to.send(ToCluster::Superseded {
                conn,
                client_id: client_id.clone(),
                revision: mine,
            });
        }
    }

    /// Where a session taken in here stands while its replay is not back: what it holds is
    /// not all here, and it has sent nothing it holds or missed (its window stays shut
    /// until the replay is in), so it stands where the record it was resumed from put it,
    /// counted by that record's writer. (Written from here instead, the record would skip
    /// what the replay is bringing, and a node taking the session next would never deliver
    /// it.) `None` once the replay is back, or without one.
    fn resumed_place(&self, client_id: &str) -> Option<Log> {
        self.resumes.get(client_id).map(|r| Log {
            cursors: r.resume.cursors.clone(),
            outbound: r.resume.outbound.clone(),
            writer: Some(r.resume.writer.clone()),
            writer_late: r.resume.writer_late.clone(),
        })
    }

    /// Where a session stands in the log by this node's positions, with what it holds
    /// (`session_log`), for its record: of now, or of `then`, when its snapshot was taken
    /// (see [`ClusterSide::after_appends`]). With this node's wills appended late that it
    /// took in: those routed by then (all, for a snapshot of now) and past its cursors.
    fn place_of(
        &self,
        client_id: &str,
        s: &makelaar_core::broker::SessionSnapshot,
        then: Option<&Then>,
    ) -> Log {
        let at = |list: &[(u16, u64)], p: u16| list.iter().find(|(q, _)| *q == p).map(|e| e.1);
        let positions: Vec<(u16, NodePosition)> = self
            .positions
            .iter()
            .map(|(p, n)| {
                let next = then.and_then(|t| at(&t.followed, *p)).unwrap_or(n.next);
                let own_through = (then.and_then(|t| t.own.as_deref()))
                    .and_then(|own| at(own, *p))
                    .unwrap_or(n.own_through);
                (*p, NodePosition { next, own_through })
            })
            .collect();
        let taken = s.outbound.iter().map(|k| {
            let (state, packet_id) = crate::cluster::outbound_state(k);
            Taken {
                position: k.msg.log_position.get().map(|p| (p.partition, p.seq)),
                state,
                packet_id,
            }
        });
        let (cursors, outbound, missing) = session_log(&positions, taken);
        if missing > 0 {
            tracing::debug!(%client_id, missing, "messages a session holds that are not in the cluster's log (their append failed) are not recorded");
        }
        let routed_by = then.map_or(u64::MAX, |t| t.epoch);
        let landed: Vec<(u16, u64)> = (self.landed_wills.iter())
            .filter(|(epoch, _)| *epoch <= routed_by)
            .map(|(_, w)| (w.partition, w.seq))
            .collect();
        Log {
            writer_late: late_past(&cursors, &landed),
            cursors,
            outbound,
            writer: None,
        }
    }

    fn complete(&mut self, w: Waiting, broker: &Broker, then: Then) {
        match w {
            Waiting::Store {
                client_id,
                snapshot,
                wills,
            } => {
                // Connected here: taken again now, after the appends before it, so that its
                // messages have their place in the log and the cursors match what it holds
                // (`makelaar_cluster::checkpoint`). Offline here (or handed over): as the
                // session left, with the follower positions of then.
                let (snapshot, now) = match snapshot {
                    Some(s) if s.connected => {
                        match broker
                            .session_snapshot(&client_id)
                            .filter(|now| now.connected)
                        {
                            Some(now) => (Some(now), true),
                            None => (Some(s), false),
                        }
                    }
                    other => (other, false),
                };
                // Where it stands in the log, so another node resumes it: a snapshot of
                // then, at the place of then.
                let log = snapshot.as_ref().map(|s| {
                    Box::new(match (now, &then.resumed) {
                        (true, _) => self.log_of(&client_id, s),
                        (false, Some(resumed)) => resumed.clone(),
                        (false, None) => self.place_of(&client_id, s, Some(&then)),
                    })
                });
                let _ = self.to.send(ToCluster::StoreSession {
                    client_id,
                    snapshot,
                    log,
                    wills,
                    checkpoint: None,
                });
            }
            Waiting::Checkpoint { client_id, n } => match broker.session_snapshot(&client_id) {
                Some(s) if s.connected && !self.resumes.contains_key(&client_id) => {
                    let log = Some(Box::new(self.log_of(&client_id, &s)));
                    let _ = self.to.send(ToCluster::StoreSession {
                        client_id,
                        snapshot: Some(s),
                        log,
                        wills: Vec::new(),
                        checkpoint: Some(n),
                    });
                }
                Some(s) if s.connected => self.checkpoints.not_made(&client_id, n),
                // Offline or ended meanwhile: its own record write says where it stands,
                // and nothing held for the connection needs a record any more.
                _ => self.release_record(&client_id, u64::MAX),
            },
            Waiting::Released(req) => {
                let _ = self.to.send(ToCluster::Released(req));
            }
            Waiting::LeftWills { client_id, wills } => {
                let _ = self.to.send(ToCluster::LeftWills { client_id, wills });
            }
            Waiting::Disconnected {
                client_id,
                revision,
            } => {
                let _ = self.to.send(ToCluster::Disconnected {
                    client_id,
                    revision,
                });
            }
            Waiting::Replay { client_id, n } => {
                // (A resume replaced since has a replay of its own, asked after its own
                // appends.)
                // This node's messages routed before the adoption: through the batches
                // appended by its epoch, as of then. (Taken now, after waiting behind a
                // record that waited for a will, it counted messages routed to the session
                // live since, and the replay delivered them again: issue 15, eight QoS 2
                // duplicates at `sub0`.)
                let own = then.own.clone().unwrap_or_else(|| self.own_through());
                let Some(r) = self.resumes.get_mut(&client_id).filter(|r| r.n == n) else {
                    return;
                };
                r.stage = ReplayStage::ForWills {
                    own_through: own.into_iter().collect(),
                };
                self.ask_replay(&client_id);
            }
        }
    }

    /// A connected persistent session on `conn`: its record is kept current from now
    /// (`makelaar_cluster::checkpoint`).
    fn track(&mut self, conn: ConnId, client_id: Arc<str>) {
        if let Some(old) = self.conn_of.insert(client_id.clone(), conn) {
            if old != conn {
                self.tracked.remove(&old);
            }
        }
        self.tracked.insert(conn, client_id.clone());
        self.checkpoints.track(client_id);
    }

    /// The connection ends, or its session went to another node: its record is no longer
    /// kept current from here. The packets held for it are dropped, never sent (another
    /// node may own the session: a QoS 2 PUBLISH or PUBREL its record does not hold must
    /// not reach the client); a Close among them still goes.
    fn untrack(&mut self, conn: ConnId) {
        if let Some(client_id) = self.tracked.remove(&conn) {
            if self.conn_of.get(&client_id) == Some(&conn) {
                self.conn_of.remove(&client_id);
                self.checkpoints.untrack(&client_id);
            }
        }
        if let Some(queue) = self.record_held.remove(&conn) {
            let closes = queue.into_iter().filter_map(|(_, h)| match h {
                Held::Close(why) => Some((conn, Held::Close(why))),
                Held::Send(_) => None,
            });
            self.record_ready.extend(closes);
        }
    }

    /// [`ClusterSide::untrack`] by client id.
    fn untrack_client(&mut self, client_id: &str) {
        if let Some(&conn) = self.conn_of.get(client_id) {
            self.untrack(conn);
        }
    }

    /// Checkpoint `upto` of the session is written (or none is needed any more): what its
    /// connection held for it, and for the ones before it, may go on.
    fn release_record(&mut self, client_id: &Arc<str>, upto: u64) {
        let Some(&conn) = self.conn_of.get(client_id) else {
            return;
        };
        if upto != u64::MAX {
            self.checkpoints.written(client_id, upto);
        }
        let Some(queue) = self.record_held.get_mut(&conn) else {
            return;
        };
        while queue.front().is_some_and(|(n, _)| *n <= upto) {
            if let Some((_, h)) = queue.pop_front() {
                self.record_ready.push((conn, h));
            }
        }
        if queue.is_empty() {
            self.record_held.remove(&conn);
        }
    }

    /// Whether `what` for `conn` waits for a checkpoint of its session (kept here then):
    /// a QoS 2 PUBLISH or PUBREL to a connected persistent session, and whatever comes
    /// after one on that connection. Counts what moves the session on.
    fn hold_for_record(&mut self, conn: ConnId, what: Held) -> Option<Held> {
        let Some(client_id) = self.tracked.get(&conn) else {
            return Some(what);
        };
        let packet = match &what {
            Held::Send(p) => Some(p),
            Held::Close(_) => None,
        };
        if let Some(Packet::Publish(p)) = packet {
            if p.qos != makelaar_proto::QoS::AtMostOnce {
                self.checkpoints.sent(client_id);
            }
        }
        let behind = self
            .record_held
            .get(&conn)
            .and_then(|q| q.back())
            .map(|(n, _)| *n);
        let n = match packet {
            Some(p) if waits_for_record(p) => self.checkpoints.hold(client_id),
            _ => None,
        };
        match n.or(behind) {
            Some(n) => {
                self.record_held
                    .entry(conn)
                    .or_default()
                    .push_back((n, what));
                None
            }
            None => Some(what),
        }
    }

    /// Whether the queue to the cluster is at its bound: then the router takes no packets
    /// from clients (they wait in their connections; what was accepted is written and
    /// acknowledged in order) until the writer makes room.
    fn is_full(&mut self, now: Instant) -> bool {
        let queued = self.stats.queued.load(std::sync::atomic::Ordering::Relaxed);
        let limit = self
            .stats
            .queue_limit
            .load(std::sync::atomic::Ordering::Relaxed);
        let full = limit > 0 && queued >= limit;
        if full && !self.full {
            self.stats
                .queue_full
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if self
                .full_logged
                .is_none_or(|at| now.duration_since(at) >= QUEUE_FULL_LOG_EVERY)
            {
                self.full_logged = Some(now);
                tracing::warn!(
                    target: crate::status::STATUS_TARGET,
                    queued,
                    "the queue to the cluster is full ({queued} messages not yet written to NATS, [cluster] max_queued_messages = {limit}): clients wait until NATS catches up; if this repeats, NATS is slower than the publishers"
                );
            }
        }
        self.full = full;
        full
    }
}

/// Why connections ended, counted by the router as it hears of them (plain integers: the
/// router is their only writer).
#[derive(Debug, Clone, Default)]
pub(crate) struct Ends {
    /// The client sent DISCONNECT.
    pub client_disconnect: u64,
    /// The connection broke or was closed by the client without DISCONNECT.
    pub lost: u64,
    /// Ended by the broker, by reason code (few distinct ones): a protocol violation or a
    /// limit, a takeover, a refused CONNECT, the shutdown, the administrator (0x98).
    pub by_server: Vec<(ReasonCode, u64)>,
}

impl Ends {
    /// Counts a close the core decided.
    fn closed(&mut self, why: CloseReason) {
        match why {
            CloseReason::ClientDisconnect(_) => self.client_disconnect += 1,
            CloseReason::Server(reason) => self.server(reason),
        }
    }

    fn server(&mut self, reason: ReasonCode) {
        match self.by_server.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => self.by_server.push((reason, 1)),
        }
    }
}

impl Router {
    pub(crate) fn new(
        broker: Broker,
        counters: Arc<Counters>,
        sys: SysPublisher,
        persist: Option<Persistence>,
        cluster: Option<ClusterSide>,
    ) -> Router {
        let max_outgoing = broker.limits().max_outgoing_bytes;
        let mut cluster = cluster;
        if let Some(c) = cluster.as_mut() {
            c.max_queued = (
                broker.limits().max_queued_messages,
                broker.limits().max_queued_bytes,
            );
        }
        Router {
            broker,
            conns: HashMap::new(),
            max_outgoing,
            counters,
            sys,
            slow_logged: HashMap::new(),
            to_wake: Vec::new(),
            persist,
            gate: Gate::default(),
            changes: Vec::new(),
            admin: AdminDesk::default(),
            ends: Ends::default(),
            cluster,
        }
    }

    /// The core's state, for questions from the HTTP side.
    pub(crate) fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Why connections ended, so far.
    pub(crate) fn ends(&self) -> &Ends {
        &self.ends
    }

    /// The store's commit figures and, once it failed, why; `None` without a store.
    pub(crate) fn store_state(
        &self,
    ) -> Option<(
        makelaar_store::CommitStats,
        Option<makelaar_store::StoreError>,
    )> {
        self.persist.as_ref().map(|p| (p.stats(), p.failure()))
    }

    /// Acknowledgements waiting for the store to commit what they acknowledge.
    pub(crate) fn held_for_store(&self) -> usize {
        self.gate.held_count()
    }

    /// Runs until `shutdown` is cancelled, then tells every client and returns.
    pub(crate) async fn run(
        mut self,
        mut rx: mpsc::Receiver<ToRouter>,
        mut store_rx: mpsc::UnboundedReceiver<StoreEvent>,
        mut cluster_rx: Option<mpsc::Receiver<FromCluster>>,
        shutdown: CancellationToken,
    ) {
        // The filters of sessions restored from the store, followed from the start.
        self.flush();
        let start = Instant::now();
        let far = Duration::from_secs(3600);
        let mut next_sweep = start + KEEP_ALIVE_SWEEP;
        // Made once and reset only when the deadline moves: re-arming a timer and a
        // cancellation waiter on every batch costs the delivery that waits behind the router.
        let sleep = tokio::time::sleep_until(next_sweep.into());
        tokio::pin!(sleep);
        let mut armed = next_sweep;
        let room = self.cluster.as_ref().map(|c| c.room.clone());
        let stop = shutdown.clone();
        let stopped = stop.cancelled();
        tokio::pin!(stopped);
        loop {
            let now = Instant::now();
            let timer = self
                .broker
                .poll_timeout()
                .unwrap_or(now + far)
                .min(self.sys.next_due(now))
                .min(next_sweep)
                .min(
                    self.cluster
                        .as_ref()
                        .and_then(|c| c.checkpoints.next_due())
                        .unwrap_or(now + far),
                )
                .min(
                    self.cluster
                        .as_ref()
                        .and_then(ClusterSide::next_orphan_deadline)
                        .unwrap_or(now + far),
                );
            if timer != armed {
                sleep.as_mut().reset(timer.into());
                armed = timer;
            }
            // Backpressure: while the queue to the cluster is full, nothing is taken from the
            // router's channel (clients' packets, and the admin's and scrapes' questions, wait
            // there and then in their connections); the cluster's and the store's reports and
            // the timers go on, above all the writer's, which make room.
            let cluster_full = self.cluster.as_mut().is_some_and(|c| c.is_full(now));
            tokio::select! {
                () = async {
                    match &room {
                        Some(r) => r.notified().await,
                        None => std::future::pending().await,
                    }
                }, if cluster_full => {}
                msg = rx.recv(), if !cluster_full => {
                    let Some(msg) = msg else { break };
                    let now = Instant::now();
                    self.handle(now, msg);
                    // Take what else is ready before flushing: fewer wake-ups per packet.
                    for _ in 0..256 {
                        match rx.try_recv() {
                            Ok(msg) => self.handle(now, msg),
                            Err(_) => break,
                        }
                    }
                }
                _ = &mut sleep => {
                    armed = start; // fired: re-arm on the next turn, whatever the deadline
                    let now = Instant::now();
                    // Before the sweep: a claim waiting for a held orphan is decided once
                    // that is taken in, not refused.
                    self.orphans_timed(now);
                    if now >= next_sweep {
                        self.sweep_keep_alive(now);
                        next_sweep = now + KEEP_ALIVE_SWEEP;
                    }
                    self.broker.handle_timeout(now);
                    self.sys.maybe_publish(now, start, &mut self.broker, &self.counters);
                }
                Some(ev) = next_from_cluster(&mut cluster_rx) => {
                    let now = Instant::now();
                    self.cluster_event(now, ev);
                    // Take what else the cluster has ready before flushing, as for clients'
                    // packets: a burst of messages from other nodes becomes one write and
                    // one wake-up per connection, not one per message.
                    if let Some(rx) = cluster_rx.as_mut() {
                        for _ in 0..256 {
                            match rx.try_recv() {
                                Ok(ev) => self.cluster_event(now, ev),
                                Err(_) => break,
                            }
                        }
                    }
                }
                Some(ev) = store_rx.recv() => {
                    if !self.store_event(Instant::now(), ev) {
                        shutdown.cancel();
                    }
                }
                _ = &mut stopped => {
                    // What clients did before the stop counts (a DISCONNECT, a lost
                    // connection): handled first, so the store records it.
                    let now = Instant::now();
                    while let Ok(msg) = rx.try_recv() {
                        self.handle(now, msg);
                    }
                    self.broker.shutdown(ReasonCode::SERVER_SHUTTING_DOWN);
                    self.flush();
                    self.close_store().await;
                    break;
                }
            }
            self.flush();
        }
    }

    /// Carries out what the store's thread reports; false when the store failed and the
    /// broker must stop (it must not acknowledge what it cannot keep).
    fn store_event(&mut self, now: Instant, ev: StoreEvent) -> bool {
        match ev {
            StoreEvent::Committed(epoch, Ok(())) => {
                let mut released = Vec::new();
                self.gate
                    .committed(epoch, |conn, what| released.push((conn, what)));
                for (conn, what) in released {
                    self.after_store(conn, what);
                }
            }
            StoreEvent::Committed(_, Err(e)) => {
                tracing::error!(target: crate::status::STATUS_TARGET, error = %e, "cannot write to the store: stopping, so that nothing is acknowledged that is not kept");
                return false;
            }
            StoreEvent::Loaded(client_id, result) => {
                let loaded = match (result, self.persist.as_mut()) {
                    (Ok(queue), Some(p)) => p.backlog(queue),
                    (Err(e), _) => {
                        tracing::error!(%client_id, error = %e, "cannot read the session's stored messages; it resumes without them");
                        Vec::new()
                    }
                    (Ok(_), None) => Vec::new(),
                };
                self.broker.handle_backlog_loaded(now, &client_id, loaded);
            }
        }
        true
    }

    /// On shutdown: waits for the store to commit what it was given, then sends what was
    /// waiting for it.
    async fn close_store(&mut self) {
        let Some(p) = self.persist.take() else {
            return;
        };
        let _ = tokio::task::spawn_blocking(move || {
            let s = p.stats();
            p.close();
            tracing::info!(
                target: crate::status::STATUS_TARGET,
                "store closed: {} commits, {} fsyncs, {} ops written, {} cancelled before reaching the disk, {:.1} ms committing",
                s.commits, s.fsyncs, s.ops_written, s.ops_cancelled, s.commit_time.as_secs_f64() * 1000.0
            );
        })
        .await;
        let mut released = Vec::new();
        self.gate
            .committed(u64::MAX, |conn, what| released.push((conn, what)));
        for (conn, what) in released {
            self.after_store(conn, what);
        }
        for out in self.to_wake.drain(..).rev() {
            out.notify();
        }
    }

    fn handle(&mut self, now: Instant, msg: ToRouter) {
        match msg {
            ToRouter::Connect {
                conn,
                connect,
                out,
                peer,
            } => {
                self.conns.insert(conn, Conn { out, peer });
                match self.cluster.as_mut() {
                    Some(c) if c.stepped_down => {
                        let refusal = makelaar_core::conn::refusal(
                            connect.protocol,
                            ReasonCode::SERVER_UNAVAILABLE,
                        );
                        self.send(conn, refusal);
                        self.ends.server(ReasonCode::SERVER_UNAVAILABLE);
                        self.close(conn, CloseReason::Server(ReasonCode::SERVER_UNAVAILABLE));
                    }
                    // Unique across the cluster [MQTT-3.1.4-3]: claimed before it is decided.
                    // (An empty client id gets an assigned one, unique already.)
                    Some(c) if !connect.client_id.is_empty() => {
                        let client_id = Arc::from(connect.client_id.as_str());
                        c.claiming.insert(conn, (connect, Vec::new(), c.step_downs));
                        let _ = c.to.send(ToCluster::Claim { conn, client_id });
                    }
                    _ => self.broker.handle_connect(now, conn, *connect),
                }
            }
            ToRouter::Packet { conn, packet } => {
                if let Some((_, held, _)) = self
                    .cluster
                    .as_mut()
                    .and_then(|c| c.claiming.get_mut(&conn))
                {
                    held.push(packet);
                    return;
                }
                if let Some(c) = self.cluster.as_mut() {
                    if is_progress(&packet) {
                        if let Some(client_id) = c.tracked.get(&conn) {
                            c.checkpoints.acked(client_id);
                        }
                    }
                }
                self.broker.handle_packet(now, conn, packet);
            }
            ToRouter::Violation { conn, violation } => {
                let reason = violation.reason();
                tracing::debug!(conn, %reason, text = violation.text(), "protocol violation");
                if self.broker.is_connected(conn) {
                    self.ends.server(reason);
                }
                self.broker.handle_connection_lost(now, conn);
                self.close(conn, CloseReason::Server(reason));
            }
            ToRouter::Lost { conn } => {
                // Not after a DISCONNECT or a takeover: that connection was already ended.
                if self.broker.is_connected(conn) {
                    self.ends.lost += 1;
                }
                self.broker.handle_connection_lost(now, conn);
                // The task has ended and reads no reason; closing still matters, as it wakes
                // a connection whose wake-up was left with this one (`Outbox::wake_after`).
                let unread = CloseReason::Server(ReasonCode::UNSPECIFIED_ERROR);
                self.close(conn, unread);
            }
            ToRouter::Drained { conn } => self.broker.handle_drained(now, conn),
            ToRouter::SetAuthorizer(authorizer) => self.broker.set_authorizer(authorizer),
            ToRouter::SetBridgeSessions(bridges, filters, id) => {
                self.broker.set_bridge_sessions(bridges, filters, id)
            }
            ToRouter::Admin(request) => {
                let conns = &self.conns;
                let peer_of = |c| conns.get(&c).map(|c: &Conn| c.peer);
                self.admin.answer(&mut self.broker, now, *request, peer_of);
            }
            ToRouter::Inspect(question) => question(self),
        }
    }

    /// Carries out what the broker decided, then wakes every connection that got packets,
    /// once each (see `wake_listed`).
    fn flush(&mut self) {
        if self.cluster.as_ref().is_some_and(|c| c.orphans_to_check) {
            self.orphans_timed(Instant::now());
        }
        self.send_exports();
        if let Some(c) = self.cluster.as_mut() {
            // A client this broker named registers before its record's first write.
            self.broker.drain_assigned_ids(&mut c.assigned);
            for client_id in c.assigned.drain(..) {
                if self.broker.session_snapshot(&client_id).is_some() {
                    let _ = c.to.send(ToCluster::Assigned { client_id });
                }
            }
            // A due will goes with its session's next record write, which takes it out of
            // the record; it is published only if that write wins (`FromCluster::Will`).
            self.broker.drain_due_wills(&mut c.due_wills);
            let mut due: HashMap<Arc<str>, Vec<makelaar_core::broker::KeptWill>> = HashMap::new();
            for w in c.due_wills.drain(..) {
                due.entry(w.client_id).or_default().push(w.will);
            }
            self.broker.drain_session_changes(&mut c.session_changes);
            let changed = std::mem::take(&mut c.session_changes);
            for client_id in changed {
                let wills = due.remove(&client_id).unwrap_or_default();
                let snapshot = self.broker.session_snapshot(&client_id);
                if c.moved.contains(&client_id) && snapshot.is_none() && wills.is_empty() {
                    continue;
                }
                // Offline before its replay came back: what it holds is not all here yet;
                // written once the replay is in (`FromCluster::Replayed`).
                if let Some(r) = c
                    .resumes
                    .get_mut(&client_id)
                    .filter(|_| snapshot.as_ref().is_some_and(|s| !s.connected))
                {
                    r.wills.extend(wills);
                    continue;
                }
                c.after_appends(
                    Waiting::Store {
                        client_id,
                        snapshot,
                        wills,
                    },
                    &self.broker,
                );
            }
            c.moved.clear();
            // (A due will marks its session changed: none is left here but for safety.)
            for (client_id, wills) in due {
                let snapshot = self.broker.session_snapshot(&client_id);
                let _ = c.to.send(ToCluster::StoreSession {
                    client_id,
                    snapshot,
                    log: None,
                    wills,
                    checkpoint: None,
                });
            }
            self.broker.drain_filter_changes(&mut c.filter_changes);
            if !c.filter_changes.is_empty() {
                let changes = std::mem::take(&mut c.filter_changes);
                let _ = c.to.send(ToCluster::Filters(changes));
            }
        }
        self.pass_record_ready();
        if let Some(p) = self.persist.as_mut() {
            self.broker.drain_changes(&mut self.changes);
            if !self.changes.is_empty() {
                let epoch = self.gate.next_epoch();
                p.submit(epoch, std::mem::take(&mut self.changes));
            }
        }
        while let Some(action) = self.broker.poll_action() {
            match action {
                Action::Send(conn, packet) => self.dispatch(conn, Held::Send(packet)),
                Action::Close(conn, why) => {
                    self.ends.closed(why);
                    self.dispatch(conn, Held::Close(why));
                }
                // Not held by the store gate: it is no packet, and the CONNECT waiting for
                // it decides nothing before the drain's packets are handled.
                Action::Drain(conn) => match self.conns.get(&conn) {
                    Some(c) => c.out.ask_drain(),
                    None => self.broker.handle_drained(Instant::now(), conn),
                },
                // A session taken in from the cluster: its replay answers instead.
                Action::LoadBacklog(client_id)
                    if self
                        .cluster
                        .as_ref()
                        .is_some_and(|c| c.resumes.contains_key(&client_id)) => {}
                Action::LoadBacklog(client_id) => match &self.persist {
                    Some(p) => p.load_backlog(client_id),
                    // Only a broker restored from a store has backlogs.
                    None => {
                        self.broker
                            .handle_backlog_loaded(Instant::now(), &client_id, Vec::new());
                    }
                },
            }
        }
        self.start_checkpoints();
        if self.broker.has_watches() {
            self.admin.deliver_watched(&mut self.broker);
        }
        self.wake_listed();
    }

    /// Starts the checkpoints of connected persistent sessions that are due
    /// (`makelaar_cluster::checkpoint`), after this batch's packets were dispatched: the
    /// QoS 2 deliveries just held go with them.
    fn start_checkpoints(&mut self) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let now = Instant::now();
        if !c.checkpoints.has_soon() && c.checkpoints.next_due().is_none_or(|at| now < at) {
            return;
        }
        for (client_id, n) in c.checkpoints.due(now) {
            c.after_appends(Waiting::Checkpoint { client_id, n }, &self.broker);
        }
        self.pass_record_ready();
    }

    /// Hands the cluster what the broker accepted since the last call, as one batch.
    fn send_exports(&mut self) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        self.broker.drain_exported(&mut c.exported);
        if !c.exported.is_empty() {
            // QoS 0 without retain promises nothing: no epoch, nothing waits for it.
            let promised = c
                .exported
                .iter()
                .any(|e| e.msg.qos != makelaar_proto::QoS::AtMostOnce || e.msg.retain);
            let epoch = promised.then(|| c.gate.next_epoch());
            let claims = &c.claims;
            let fence = c.fence_late_appends;
            let messages: Vec<_> = c
                .exported
                .drain(..)
                .map(|e| {
                    let claim = (e.from.filter(|_| fence))
                        .and_then(|conn| claims.get(&conn))
                        .map(|(_, r)| *r);
                    (e, claim)
                })
                .collect();
            c.stats
                .queued
                .fetch_add(messages.len() as u64, std::sync::atomic::Ordering::Relaxed);
            let _ = c.batches.send(crate::cluster::Batch { epoch, messages });
        }
    }

    /// Wakes the connections that got packets. Two of them (a QoS 1 delivery and its
    /// publisher's PUBACK, the common case at low rates) are woken one after the other:
    /// the first receiver now, the second by it after its write ([`Outbox::wake_after`]).
    /// More are all woken now, in reverse order: tokio runs the task woken last first, on
    /// this worker, which is the receiver of the batch's first packet, usually a delivery.
    fn wake_listed(&mut self) {
        if self.to_wake.len() == 2 {
            let second = self.to_wake.pop();
            let first = self.to_wake.pop();
            if let (Some(first), Some(second)) = (first, second) {
                first.wake_after(second);
            }
            return;
        }
        for out in self.to_wake.drain(..).rev() {
            out.notify();
        }
    }

    /// Sends or closes now, or holds it until the cluster has the session's record it
    /// depends on (`ClusterSide::hold_for_record`) or the store has committed what it
    /// depends on.
    fn dispatch(&mut self, conn: ConnId, what: Held) {
        let what = match self.cluster.as_mut() {
            Some(c) => match c.hold_for_record(conn, what) {
                Some(what) => what,
                None => return,
            },
            None => what,
        };
        self.through_store(conn, what);
    }

    /// Carries on what a checkpoint let through, before anything newer for its connection.
    fn pass_record_ready(&mut self) {
        let ready = match self.cluster.as_mut() {
            Some(c) if !c.record_ready.is_empty() => std::mem::take(&mut c.record_ready),
            _ => return,
        };
        for (conn, what) in ready {
            self.through_store(conn, what);
        }
    }

    /// Sends or closes now, or holds it until the store has committed what it depends on.
    fn through_store(&mut self, conn: ConnId, what: Held) {
        let what = if self.persist.is_some() {
            match self.gate.hold(conn, what) {
                Some(what) => what,
                None => return,
            }
        } else {
            what
        };
        self.after_store(conn, what);
    }

    /// What the store let through waits for the cluster too, when there is one.
    fn after_store(&mut self, conn: ConnId, what: Held) {
        let what = match self.cluster.as_mut() {
            // Its messages from here on are dropped by every reader: nothing of it is
            // acknowledged (it is being closed).
            Some(c) if c.fenced.contains(&conn) && matches!(what, Held::Send(_)) => return,
            Some(c) => match c.gate.hold(conn, what) {
                Some(what) => what,
                None => return,
            },
            None => what,
        };
        self.carry_out(conn, what);
    }

    /// Carries out what the cluster reports.
    fn cluster_event(&mut self, now: Instant, ev: FromCluster) {
        match ev {
            FromCluster::Appended { epoch, failed, own } => {
                if let Some(c) = self.cluster.as_mut() {
                    c.unconfirmed.push_back((epoch, own.clone()));
                    c.appended(epoch, own, &self.broker);
                }
                for conn in failed {
                    // Its acknowledgement must never go out: the connection ends without
                    // it, and the client sends the message again elsewhere.
                    if let Some(c) = self.cluster.as_mut() {
                        c.gate.discard(conn);
                    }
                    if self.broker.is_connected(conn) {
                        self.ends.server(ReasonCode::UNSPECIFIED_ERROR);
                    }
                    self.broker.handle_connection_lost(now, conn);
                    self.close(conn, CloseReason::Server(ReasonCode::UNSPECIFIED_ERROR));
                }
                self.release_confirmed();
            }
            FromCluster::Message(msg) => {
                self.broker.route_remote(now, msg);
            }
            FromCluster::Shared { group, msg, taken } => {
                let ok = self.broker.route_shared_remote(now, &group, msg);
                if let Some(taken) = taken {
                    let _ = taken.send(ok);
                }
            }
            FromCluster::Following { partition, next } => {
                if let Some(c) = self.cluster.as_mut() {
                    c.positions.entry(partition).or_default().next = next;
                }
                self.followers_moved(now);
                self.release_confirmed();
            }
            FromCluster::Barrier {
                partition,
                seq,
                claims,
            } => {
                if let Some(c) = self.cluster.as_mut() {
                    c.barriers_passed
                        .handle_barrier(now, partition, seq, &claims);
                    for claim in claims {
                        c.fence_older_claims(claim);
                    }
                }
                self.cluster_event(
                    now,
                    FromCluster::Log {
                        partition,
                        seq,
                        msg: None,
                    },
                );
            }
            FromCluster::Log {
                partition,
                seq,
                msg,
            } => {
                if let Some(msg) = msg {
                    self.broker.route_remote(now, msg);
                }
                let Some(c) = self.cluster.as_mut() else {
                    return;
                };
                let pos = c.positions.entry(partition).or_default();
                pos.next = pos.next.max(seq + 1);
                self.followers_moved(now);
                self.release_confirmed();
            }
            FromCluster::Replayed {
                client_id,
                resume,
                in_flight,
                queued,
            } => {
                if let Some(c) = self.cluster.as_mut() {
                    // Only the replay of the resume the session waits for now is its: a
                    // session dropped here (another node claimed it, or the record was
                    // written elsewhere since) and taken in again from the record while the
                    // first replay's read was tried again has a replay of its own, read
                    // from the record up to this node's position at that second adoption.
                    // Applied to it, the first one's (which stops at the first adoption's
                    // position) filled its backlog, and the second's was then refused: what
                    // came between the two adoptions was lost (found by the fault harness,
                    // link-cut run 8: 502 acknowledged messages at a subscriber back on the
                    // same node).
                    let Some(r) = c.replayed(&client_id, resume) else {
                        tracing::info!(%client_id, "the replay of a session taken in again since is dropped: the newer resume has its own");
                        return;
                    };
                    let read = (in_flight.len(), queued.len());
                    let taken = self
                        .broker
                        .handle_cluster_backlog(now, &client_id, in_flight, queued);
                    let wills = r.wills;
                    // Connected still: its record is kept current from now, the first
                    // checkpoint at once (what it resends waits for it). (Its connection is
                    // the newest claim of the id that is connected: an older connection of
                    // it may not have ended here yet.)
                    let broker = &self.broker;
                    let conn = (c.claims_of(&client_id))
                        .filter(|(conn, _)| broker.is_connected(*conn))
                        .max_by_key(|(_, revision)| *revision)
                        .map(|(conn, _)| conn);
                    match taken {
                        makelaar_core::broker::ClusterBacklog::Taken { .. } => {
                            tracing::debug!(target: crate::cluster::RECORDS, %client_id, ?taken, connected = conn.is_some(), "a resumed session's replay taken in");
                        }
                        // The session moved to another node while its replay was read
                        // (its record there keeps the place it was resumed from).
                        makelaar_core::broker::ClusterBacklog::NoSession => {
                            tracing::debug!(target: crate::cluster::RECORDS, %client_id, in_flight = read.0, queued = read.1, "a resumed session's replay came back after the session left this node: dropped");
                        }
                        // A session taken in again without waiting for a replay must have
                        // had its resume dropped then.
                        makelaar_core::broker::ClusterBacklog::NotWaiting => {
                            tracing::warn!(%client_id, in_flight = read.0, queued = read.1, "a resumed session's replay came back to a session here that was not waiting for it: its messages are not delivered here (a bug: please report it)");
                        }
                    }
                    if let Some(conn) = conn {
                        c.track(conn, client_id.clone());
                    }
                    // Written now if it went offline meanwhile (its record was held back),
                    // with the wills that fell due meanwhile.
                    let snapshot = self.broker.session_snapshot(&client_id);
                    if !wills.is_empty() || snapshot.as_ref().is_some_and(|s| !s.connected) {
                        c.after_appends(
                            Waiting::Store {
                                client_id,
                                snapshot,
                                wills,
                            },
                            &self.broker,
                        );
                    }
                }
            }
            FromCluster::Retained { topic, message } => {
                self.broker.apply_remote_retained(&topic, message);
            }
            FromCluster::Claimed { conn, result } => self.claimed(now, conn, result),
            FromCluster::Moved {
                client_id,
                revision,
            } => {
                // (The sessions task ignored it if it knew of a newer claim here; a claim
                // it had not heard of yet is checked here.)
                let held = self.held_claim(&client_id);
                if makelaar_cluster::takeover::moved_is_stale(revision, held) {
                    tracing::info!(%client_id, %revision, "a notice that a client moved to another node, from a claim older than this node's, is ignored (delivered late)");
                    return;
                }
                self.drop_held_orphan(&client_id);
                if let Some(c) = self.cluster.as_mut() {
                    c.untrack_client(&client_id);
                }
                self.forget_moved(now, &client_id)
            }
            FromCluster::Checkpointed { client_id, n } => {
                if let Some(c) = self.cluster.as_mut() {
                    c.release_record(&client_id, n);
                }
            }
            FromCluster::StepDown => {
                if let Some(c) = self.cluster.as_mut() {
                    c.stepped_down = true;
                    c.step_downs += 1;
                    // Every connection ends: nothing more is sent that waited for a record.
                    let conns: Vec<ConnId> = c.tracked.keys().copied().collect();
                    for conn in conns {
                        c.untrack(conn);
                    }
                }
                // 0x89 Server busy, "try again later" (0x88 is a CONNACK code only).
                self.broker.disconnect_all(now, ReasonCode::SERVER_BUSY);
            }
            FromCluster::Serving => {
                if let Some(c) = self.cluster.as_mut() {
                    c.stepped_down = false;
                }
            }
            FromCluster::Fenced {
                client_id,
                claim,
                will_in_cluster,
            } => {
                // A write of an older claim refused (its Store was on its way when this
                // node claimed the id again): the newer connection here read the record
                // after that other node's write, and is not the one it took.
                if self.release_is_stale(&client_id, claim) {
                    tracing::info!(%client_id, "a refused record write of an older claim of the client id does not end its newer connection here");
                    return;
                }
                self.lost_to_another_node(now, &client_id, will_in_cluster);
            }
            FromCluster::NotOwner {
                conn,
                revision,
                will_in_cluster,
            } => {
                let held = self
                    .cluster
                    .as_ref()
                    .and_then(|c| c.claims.get(&conn))
                    .filter(|(_, r)| *r == revision)
                    .map(|(id, _)| id.clone());
                if let Some(id) = held {
                    tracing::debug!(client_id = %id, "client taken over by another cluster node while connecting");
                    self.lost_to_another_node(now, &id, will_in_cluster);
                }
            }
            FromCluster::ClaimedElsewhere {
                client_id,
                revision,
            } => {
                if let Some(c) = self.cluster.as_mut() {
                    c.claimed_elsewhere(client_id, revision);
                }
            }
            FromCluster::WillRetrying { id, epoch } => {
                if let Some(c) = self.cluster.as_mut() {
                    c.will_retrying(id, epoch);
                }
            }
            FromCluster::WillPlaced { id, at } => {
                if let Some(c) = self.cluster.as_mut() {
                    c.will_placed(&id, at, &self.broker);
                }
            }
            FromCluster::Will { client_id, will } => {
                self.broker.publish_remote_will(
                    now,
                    &client_id,
                    will.username.as_deref(),
                    will.will,
                );
            }
            FromCluster::Orphan {
                client_id,
                snapshot,
                will_in,
                expires_in,
                resume,
            } => {
                let orphan = Orphan {
                    client_id,
                    snapshot,
                    will_in,
                    expires_in,
                    resume,
                };
                self.orphan(now, orphan);
            }
            FromCluster::Release(req) => {
                match req.client.client_id() {
                    Ok(id) if self.release_is_stale(&id, req.revision) => {
                        // Not answered, and not passed on: the sessions task would answer
                        // it and write the connected session's record no more, so its
                        // checkpoints, and the deliveries waiting for them, would never
                        // come (found by the fault harness: two subscribers back on a node
                        // got nothing for a minute, 8,356 acknowledged messages). A claimer
                        // still waiting re-reads the registry after its timeout and asks
                        // again under the current revision.
                        tracing::info!(client_id = %id, "a hand-over request older than the client's connection here is ignored (delivered late)");
                        return;
                    }
                    Ok(id) => {
                        // [MQTT-3.1.4-3] the client connected on another node: this
                        // connection ends (5.0: DISCONNECT 0x8E Session taken over), and
                        // the session moves with its client. Its will is not published
                        // here: the record holds it, and the claiming node decides it.
                        // Taken before: the will as the record holds it (the connection's,
                        // or one waiting out its delay), and whether it was offline.
                        let before = self.broker.session_snapshot(&id);
                        self.drop_held_orphan(&id);
                        if let Some(c) = self.cluster.as_mut() {
                            c.untrack_client(&id);
                        }
                        if self.broker.close_for_hand_over(now, &id) {
                            tracing::debug!(client_id = %id, "client taken over by another cluster node");
                        }
                        // The session moves with its client: its last record says where
                        // it stands in the log (after the appends of what it took in), and
                        // keeps the will as it was for the claiming node to decide (a
                        // connection taken over, or offline since), then the other node
                        // keeps it. The flush's session writes after it are not made.
                        self.send_exports();
                        let snapshot = self.broker.session_snapshot(&id).map(|s| {
                            let (offline_since, will) = before
                                .map(|b| (b.offline_since, b.will))
                                .unwrap_or_default();
                            makelaar_core::broker::SessionSnapshot {
                                offline_since,
                                will,
                                ..s
                            }
                        });
                        if let Some(c) = self.cluster.as_mut() {
                            if snapshot.is_some() {
                                c.after_appends(
                                    Waiting::Store {
                                        client_id: Arc::from(id.as_str()),
                                        snapshot,
                                        wills: Vec::new(),
                                    },
                                    &self.broker,
                                );
                            }
                            c.after_appends(Waiting::Released(req.clone()), &self.broker);
                        }
                        self.forget_moved(now, &id);
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "hand-over request for a bad client id"),
                }
                if let Some(c) = self.cluster.as_mut() {
                    c.after_appends(Waiting::Released(req), &self.broker);
                }
            }
        }
    }

    /// A dead node's session taken over by this node: into the broker at once, or, while
    /// this node's partition followers are behind its record, held until they are past it
    /// (see [`HeldOrphan`]).
    fn orphan(&mut self, now: Instant, o: Orphan) {
        self.forget_stale_copy(now, &o.client_id);
        // (One this broker cannot take in, as it has a session for that client id, is
        // refused at once, not held.)
        let behind = (self.cluster.as_ref())
            .zip(o.resume.as_ref())
            .is_some_and(|(c, r)| c.behind_record(r))
            && self.broker.session_snapshot(&o.client_id).is_none();
        let (true, Some(c), Some(resume)) = (behind, self.cluster.as_mut(), o.resume.clone())
        else {
            return self.take_in_orphan(now, o, None);
        };
        if c.orphans.contains_key(&o.client_id) {
            tracing::warn!(client_id = %o.client_id, "a dead node's session was not taken over here: this node holds one for that client id already");
            return;
        }
        tracing::debug!(client_id = %o.client_id, "a dead node's session waits for this node's partition followers to pass its record");
        let held = HeldOrphan {
            snapshot: o.snapshot,
            will_in: o.will_in,
            expires_in: o.expires_in,
            resume,
            since: now,
        };
        c.orphans.insert(o.client_id, held);
    }

    /// Forgets this broker's copy of `client_id`'s session (offline) because another node
    /// has the session now, or this node's record of it was taken: its end here deletes
    /// nothing. The delete would go to the cluster behind the appends before it, and could
    /// land after a claim of the same client id on this node had made the record this
    /// node's again, deleting it (found by the fault harness: a persistent subscriber
    /// resumed without its session, Session Present 0, on the next node).
    fn forget_moved(&mut self, now: Instant, client_id: &str) {
        if tracing::enabled!(target: crate::cluster::RECORDS, tracing::Level::DEBUG)
            && self.broker.session_snapshot(client_id).is_some()
        {
            tracing::debug!(target: crate::cluster::RECORDS, %client_id, "session forgotten here: another node has it");
        }
        if let Some(c) = self.cluster.as_mut() {
            c.moved.insert(Arc::from(client_id));
            // Its resume here is over, and with it the wills that fell due waiting for its
            // replay: the sessions task decides them as for a record another node took
            // (that node decides a will the record held, this one the others), after the
            // hand-over queued before. Kept, they went with the record of this node's next
            // claim of the id (a clean start ends the resume it finds), which won, and were
            // published a second time (found by `test_a_will_raced_by_its_clients_connect_
            // elsewhere_is_published_once`: the will of a connection lost on this node
            // while its session's replay was out, published by the claiming node and, at
            // the next clean start here, by this one).
            if let Some(r) = c.resumes.remove(client_id) {
                if !r.wills.is_empty() {
                    tracing::debug!(target: crate::cluster::RECORDS, %client_id, wills = r.wills.len(), "wills due while a resumed session's replay was out go to the sessions task: the session moved");
                    let waiting = Waiting::LeftWills {
                        client_id: Arc::from(client_id),
                        wills: r.wills,
                    };
                    c.after_appends(waiting, &self.broker);
                }
            }
        }
        self.broker.forget_session(now, client_id);
    }

    /// A claim that found the session's record last written by another node
    /// (`moved_away`): an offline copy this node still holds is stale, whatever becomes of
    /// the claim's connection. Forgotten at once, not only when the CONNECT goes on: the
    /// claim's fence now lets this node write the record, and a hand-over asked of it next
    /// wrote the stale copy over the newer record, which the next node resumed from (found
    /// by the fault harness: 936 QoS 2 messages twice at `sub2`, after a claim whose client
    /// had given up on its CONNECT). A copy connected here is left to the CONNECT's
    /// takeover.
    fn forget_copy_moved_away(
        &mut self,
        now: Instant,
        conn: ConnId,
        result: &Result<crate::cluster::Claim, String>,
    ) {
        let (Some(c), Ok(claim)) = (self.cluster.as_ref(), result) else {
            return;
        };
        if !claim.moved_away {
            return;
        }
        let client_id: Option<Arc<str>> = match c.claiming.get(&conn) {
            Some((connect, _, _)) => Some(Arc::from(connect.client_id.as_str())),
            None => c.abandoned.get(&conn).map(|(id, _)| id.clone()),
        };
        let Some(client_id) = client_id else {
            return;
        };
        let offline = self
            .broker
            .session_snapshot(&client_id)
            .is_some_and(|s| !s.connected);
        if offline {
            if let Some(c) = self.cluster.as_mut() {
                c.untrack_client(&client_id);
            }
            self.forget_moved(now, &client_id);
        }
    }

    /// A dead node's session this node took over (its reaper wrote the record as this
    /// node's) meets a copy of it this broker still holds offline: the copy is from before
    /// the session moved to the dead node (this node never got the notice, e.g. cut off at
    /// the time), so it is stale, and is forgotten for the record's. Kept, it would be taken
    /// for the session when its client came back here (the record names this node, so the
    /// claim sees no move), and send again what the client got on the dead node (found by
    /// the fault harness: 2,295 QoS 2 messages twice at `sub1` over 204 faults, after "a
    /// dead node's session was not taken over here: this node has a session for that
    /// client id already"). A node never reaps itself, and a client connected here is
    /// registered under this node, never left by a dead one: a connected copy is kept.
    fn forget_stale_copy(&mut self, now: Instant, client_id: &Arc<str>) {
        let offline = self
            .broker
            .session_snapshot(client_id)
            .is_some_and(|s| !s.connected);
        if !offline {
            return;
        }
        tracing::info!(%client_id, "a session taken over from a dead node replaces this node's older copy of it (the notice that it had moved never came)");
        if let Some(c) = self.cluster.as_mut() {
            c.untrack_client(client_id);
        }
        self.forget_moved(now, client_id);
    }

    /// Takes a dead node's session into the broker, offline, with what it held or missed on
    /// the dead node to come from the log; `held`: why it goes now, when it was held.
    fn take_in_orphan(&mut self, now: Instant, o: Orphan, held: Option<OrphanGoes>) {
        let Orphan {
            client_id,
            snapshot,
            will_in,
            expires_in,
            resume,
        } = o;
        let filters = replayed_filters(&snapshot);
        // What this broker routed before the session is here goes to the cluster first, so
        // its replay waits for those appends and reads them (as for a claim's): a will
        // published in the same batch (the reaper's, say) would reach it never.
        self.send_exports();
        if !self
            .broker
            .adopt_orphan(now, &client_id, snapshot, will_in, expires_in)
        {
            tracing::warn!(client_id = %client_id, "a dead node's session was not taken over here: this node has a session for that client id already");
        } else if let Some(c) = self.cluster.as_mut() {
            // What it held or missed on the dead node, as its last record says
            // (written when it went offline, or a checkpoint while connected), is
            // read back from the log like a resumed session's; its record is
            // written again once that is in, with where it stands here.
            if let Some(resume) = resume {
                // (A clean start ends it before anything reaches it.)
                if c.behind_record(&resume) && held != Some(OrphanGoes::CleanStart) {
                    tracing::warn!(client_id = %client_id, why = ?held, "this node's partition followers are behind a dead node's session record: messages between them may reach the session twice");
                }
                if self.broker.expect_cluster_backlog(&client_id) {
                    c.resume(client_id.clone(), resume, filters, &self.broker);
                }
            }
            c.session_changes.push(client_id);
        }
    }

    /// Takes the held orphan of `client_id`, if any, into the broker now, for `why`.
    fn take_in_held_orphan(&mut self, now: Instant, client_id: &Arc<str>, why: OrphanGoes) {
        let Some(o) = self
            .cluster
            .as_mut()
            .and_then(|c| c.orphans.remove(client_id))
        else {
            return;
        };
        if why == OrphanGoes::OutOfPatience {
            tracing::warn!(client_id = %client_id, waited_s = CATCH_UP_PATIENCE.as_secs(), "this node's partition followers did not pass a dead node's session record in time: the session is taken in all the same");
        } else {
            tracing::debug!(client_id = %client_id, ?why, "a dead node's session held for this node's partition followers is taken in");
        }
        let o = o.at(client_id.clone(), now);
        self.take_in_orphan(now, o, Some(why));
    }

    /// Takes in the held orphans that may go now ([`HeldOrphan::goes`]); whether any went.
    fn release_orphans(&mut self, now: Instant) -> bool {
        let Some(c) = self.cluster.as_ref().filter(|c| !c.orphans.is_empty()) else {
            return false;
        };
        let going: Vec<(Arc<str>, OrphanGoes)> = c
            .orphans
            .iter()
            .filter_map(|(id, o)| Some((id.clone(), o.goes(now, c.behind_record(&o.resume))?)))
            .collect();
        let any = !going.is_empty();
        for (client_id, why) in going {
            self.take_in_held_orphan(now, &client_id, why);
        }
        any
    }

    /// This node's partition followers moved on: the claims waiting for them are decided
    /// again now, the held orphans at the batch's end ([`Router::orphans_timed`], from
    /// `flush`).
    /// Releases the acknowledgements of the batches this node's followers are past
    /// ([`ClusterSide::confirmed`]), in order.
    fn release_confirmed(&mut self) {
        let mut released = Vec::new();
        if let Some(c) = self.cluster.as_mut() {
            while let Some(epoch) = c.confirmed() {
                c.gate
                    .committed(epoch, |conn, what| released.push((conn, what)));
            }
        }
        for (conn, what) in released {
            self.carry_out(conn, what);
        }
    }

    fn followers_moved(&mut self, now: Instant) {
        if let Some(c) = self.cluster.as_mut() {
            c.orphans_to_check = !c.orphans.is_empty();
        }
        self.redecide_claims(now);
    }

    /// The held orphans that may go now (the followers past their records, or their timers
    /// run out, [`HeldOrphan::deadline`]) are taken in, then the claims waiting for them
    /// (see [`Router::decide_claim`]) decided again.
    fn orphans_timed(&mut self, now: Instant) {
        if let Some(c) = self.cluster.as_mut() {
            c.orphans_to_check = false;
        }
        if self.release_orphans(now) {
            self.redecide_claims(now);
        }
    }

    /// Decides again the claims waiting for this node's partition followers.
    fn redecide_claims(&mut self, now: Instant) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        if c.catching_up.is_empty() {
            return;
        }
        let waiting = std::mem::take(&mut c.catching_up);
        for (conn, claim, since) in waiting {
            self.decide_claim(now, conn, Ok(claim), since);
        }
    }

    /// The orphan held for `client_id`, if any, is dropped: another node has the session
    /// now, and decides its will.
    fn drop_held_orphan(&mut self, client_id: &str) {
        if let Some(c) = self.cluster.as_mut() {
            if c.orphans.remove(client_id).is_some() {
                tracing::info!(%client_id, "a dead node's session held here went to another node meanwhile: dropped here");
            }
        }
    }

    /// A claim of `client_id` (a CONNECT with `clean_start`) meets the dead node's session
    /// this node holds for it, if any: with Clean Start it is taken in now, to end with the
    /// CONNECT as the broker decides (its will too); when the record was written elsewhere
    /// since (`moved_away`) it is stale and dropped; otherwise the CONNECT waits until it is
    /// taken in, so that it finds its session [MQTT-3.1.2-4] [MQTT-3.1.2-5] and nothing
    /// reaches it twice [MQTT-4.3.3-*]. Its will (not due, or it would have been taken in)
    /// is dropped then: its client is back before the will's delay [MQTT-3.1.3-9], decided
    /// when the wait starts as for a claim's will (`Broker::take_over_remote_will`), so the
    /// wait's end changes nothing. Returns whether the CONNECT waits.
    fn claim_meets_orphan(
        &mut self,
        now: Instant,
        client_id: &str,
        clean_start: bool,
        moved_away: bool,
    ) -> bool {
        let held = self
            .cluster
            .as_ref()
            .is_some_and(|c| c.orphans.contains_key(client_id));
        if !held {
            return false;
        }
        if moved_away {
            self.drop_held_orphan(client_id);
            false
        } else if clean_start {
            self.take_in_held_orphan(now, &Arc::from(client_id), OrphanGoes::CleanStart);
            false
        } else {
            let held = self
                .cluster
                .as_mut()
                .and_then(|c| c.orphans.get_mut(client_id));
            if held.and_then(|o| o.snapshot.will.take()).is_some() {
                tracing::debug!(%client_id, "will of a dead node's session dropped: its client is back before its delay [MQTT-3.1.3-9]");
            }
            true
        }
    }

    /// Whether a hand-over request for `client_id`, asked under `asked`, predates the
    /// connection of that client this node holds now (`makelaar_cluster::takeover`).
    fn release_is_stale(&self, client_id: &str, asked: makelaar_cluster::Revision) -> bool {
        makelaar_cluster::takeover::release_is_stale(asked, self.held_claim(client_id))
    }

    /// The registry revision of this node's newest claim of `client_id` among its
    /// connections (a connection taken over here may not have ended yet).
    fn held_claim(&self, client_id: &str) -> Option<makelaar_cluster::Revision> {
        self.cluster
            .as_ref()
            .and_then(|c| c.claims_of(client_id).map(|(_, revision)| revision).max())
    }

    /// Another node owns the session of `client_id` now: its connection here, if any, is
    /// closed (0x8E). When the cluster's record held the connection's will, the node that
    /// took the record decides it, and the session ends here without it; otherwise the will
    /// never reached the cluster and goes out here, as on a single broker.
    fn lost_to_another_node(&mut self, now: Instant, client_id: &str, will_in_cluster: bool) {
        self.drop_held_orphan(client_id);
        if let Some(c) = self.cluster.as_mut() {
            c.untrack_client(client_id);
        }
        if will_in_cluster {
            self.broker.hand_over(now, client_id);
        } else {
            self.broker
                .disconnect_client(now, client_id, ReasonCode::SESSION_TAKEN_OVER);
        }
        // Offline here: that node keeps the session now, as after its notice that the
        // client moved (which a node cut off at the time never got).
        self.forget_moved(now, client_id);
    }

    /// A CONNECT's client id is claimed (or could not be): it is decided now, with the
    /// packets its client sent meanwhile.
    fn claimed(
        &mut self,
        now: Instant,
        conn: ConnId,
        result: Result<crate::cluster::Claim, String>,
    ) {
        self.decide_claim(now, conn, result, now);
    }

    /// [`Router::claimed`], for a claim that has waited for the followers since `since`.
    fn decide_claim(
        &mut self,
        now: Instant,
        conn: ConnId,
        result: Result<crate::cluster::Claim, String>,
        since: Instant,
    ) {
        self.forget_copy_moved_away(now, conn, &result);
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let Some((connect, _, began)) = c.claiming.get(&conn) else {
            // The connection went while its claim ran. The registry says it is connected
            // here until another node claims the id: this node then answers the hand-over
            // request with nothing to close. A will the claim took out of the record is
            // decided as the CONNECT would have decided it (found while tracing a fault
            // run: a client that gives up on a slow CONNECT would lose the old will).
            let abandoned = c.abandoned.remove(&conn);
            if let (Some((client_id, clean_start)), Ok(claim)) = (abandoned, result) {
                if let Some(w) = claim.will {
                    self.decide_claimed_will(now, &client_id, w, clean_start);
                }
            }
            return;
        };
        if *began != c.step_downs {
            self.refuse_claim_across_step_down(now, conn, result);
            return;
        }
        let behind_orphan = match &result {
            Ok(claim) => {
                let (client_id, clean_start) = (connect.client_id.clone(), connect.clean_start);
                self.claim_meets_orphan(now, &client_id, clean_start, claim.moved_away)
            }
            Err(_) => false,
        };
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let Some((connect, _, _)) = c.claiming.get(&conn) else {
            return;
        };
        // A record ahead of this node's followers: the CONNECT waits until they are past it,
        // or a message would reach the session both live and from the record. A client from
        // another node waits until they are past what it published there. A client whose
        // session this node holds for its followers (a dead node's) waits until it is taken
        // in, to find it.
        if let Ok(claim) = &result {
            let positions = &c.positions;
            let next_of = |p: u16| positions.get(&p).map_or(0, |n| n.next);
            let behind_record = !connect.clean_start
                && claim.session.is_some()
                && claim.resume.as_ref().is_some_and(|r| c.behind_record(r));
            let behind_tails = !past_tails(&claim.tails, next_of);
            if behind_record || behind_tails || behind_orphan {
                tracing::debug!(client_id = %connect.client_id, behind_record, behind_tails, behind_orphan, "CONNECT waits for this node's partition followers");
                let client_id: Arc<str> = Arc::from(connect.client_id.as_str());
                let clean_start = connect.clean_start;
                if let Ok(mut claim) = result {
                    // A will taken out of the record is decided now (still before the
                    // CONNACK), so that it is not lost if the wait ends in a refusal.
                    let will = claim.will.take();
                    c.catching_up.push((conn, claim, since));
                    if let Some(w) = will {
                        self.decide_claimed_will(now, &client_id, w, clean_start);
                    }
                }
                return;
            }
        }
        let Some((connect, held, _)) = c.claiming.remove(&conn) else {
            return;
        };
        match result {
            Ok(crate::cluster::Claim {
                revision,
                session: kept,
                will: remote_will,
                resume,
                moved_away,
                tails: _,
            }) => {
                let client_id: Arc<str> = Arc::from(connect.client_id.as_str());
                // Another node had the session since this node last did: what this node
                // still holds of it is stale (the notice that it moved was lost, e.g. while
                // this node was cut off) and would send again what the client got there.
                // The cluster's record is the session (found by the fault harness: a
                // subscriber back on a node that had been cut off got hundreds of QoS 2
                // messages a second time). Its record is not touched: the adopted session
                // is what this step writes.
                if moved_away {
                    self.forget_moved(now, &client_id);
                }
                // A will another node left (it handed the connection over, or died): taken
                // out of the cluster's record by this claim, so decided here only, by the
                // takeover rules, before this CONNECT's CONNACK [MQTT-3.1.4-3]
                // [MQTT-3.1.3-9].
                if let Some(w) = remote_will {
                    self.decide_claimed_will(now, &client_id, w, connect.clean_start);
                }
                // A session the cluster keeps for this client (it was connected on another
                // node): taken in, so the CONNECT finds it (Session Present, subscriptions),
                // with what it held or missed to come from the log.
                if let Some(snapshot) = kept.filter(|_| !connect.clean_start) {
                    self.send_exports();
                    let filters = replayed_filters(&snapshot);
                    let adopted = self
                        .broker
                        .adopt_session(&client_id, snapshot, resume.is_some());
                    if !adopted {
                        tracing::debug!(target: crate::cluster::RECORDS, %client_id, "a claim found the session here already: it goes on from this node's copy, not the record");
                    }
                    if let (true, Some(resume), Some(c)) = (adopted, resume, self.cluster.as_mut())
                    {
                        c.resume(client_id.clone(), resume, filters, &self.broker);
                    }
                }
                let Some(c) = self.cluster.as_mut() else {
                    return;
                };
                // A clean start ends the session taken in here whose replay is not back:
                // the new one stands where this node does (else its records would carry
                // the old record's place in the log, and a node taking it next would
                // replay the old session's messages to it), and that replay's answer is not
                // its own. The wills that waited for it go with the new session's first
                // record, as they would have with the record written at the answer.
                let waited = if connect.clean_start {
                    c.resumes.remove(&client_id).map(|r| r.wills)
                } else {
                    None
                };
                c.add_claim(conn, client_id.clone(), revision);
                let _ = c.to.send(ToCluster::CheckOwner {
                    conn,
                    client_id: client_id.clone(),
                    revision,
                });
                self.broker.handle_connect(now, conn, *connect);
                // The first write of the session record: it fences the node that had it.
                let snapshot = self.broker.session_snapshot(&client_id);
                if let Some(c) = self.cluster.as_mut() {
                    // Persistent and connected: its record is kept current from now (one
                    // resuming from a record: once its replay is back).
                    let persistent = snapshot
                        .as_ref()
                        .is_some_and(|s| s.connected && s.expiry_interval > 0);
                    if persistent && !c.resumes.contains_key(&client_id) {
                        c.track(conn, client_id.clone());
                    }
                    c.after_appends(
                        Waiting::Store {
                            client_id,
                            snapshot,
                            wills: waited.unwrap_or_default(),
                        },
                        &self.broker,
                    );
                }
                for packet in held {
                    self.broker.handle_packet(now, conn, packet);
                }
            }
            Err(e) => {
                tracing::warn!(client_id = %connect.client_id, error = %e, "cannot claim the client id on the cluster: CONNECT refused (server unavailable)");
                let refusal =
                    makelaar_core::conn::refusal(connect.protocol, ReasonCode::SERVER_UNAVAILABLE);
                self.send(conn, refusal);
                self.ends.server(ReasonCode::SERVER_UNAVAILABLE);
                self.close(conn, CloseReason::Server(ReasonCode::SERVER_UNAVAILABLE));
            }
        }
    }

    fn carry_out(&mut self, conn: ConnId, what: Held) {
        match what {
            Held::Send(packet) => self.send(conn, packet),
            Held::Close(why) => self.close(conn, why),
        }
    }

    fn send(&mut self, conn: ConnId, packet: Packet) {
        let Some(Conn { out, .. }) = self.conns.get(&conn) else {
            return;
        };
        match out.push_quiet(packet, self.max_outgoing) {
            Ok(()) => {
                if out.list_for_wake() {
                    self.to_wake.push(out.clone());
                }
                return;
            }
            Err(Refused::Closed) => return,
            Err(Refused::OverBudget) => {}
        }
        self.counters
            .dropped_slow_client
            .fetch_add(1, Ordering::Relaxed);
        if self.slow_logged.insert(conn, ()).is_none() {
            tracing::warn!(conn, max_outgoing_bytes = self.max_outgoing, "client is not reading fast enough: dropping QoS 0 messages to it (max_outgoing_bytes)");
        }
    }

    /// Wakes every connection whose client has been silent past 1.5 × its keep-alive; the
    /// connection then closes itself as a keep-alive violation [MQTT-3.1.2-24].
    fn sweep_keep_alive(&mut self, now: Instant) {
        self.refuse_stale_catch_ups(now);
        let now_ms = outbox::millis(now);
        for (conn, c) in &self.conns {
            if c.out.expire_if_silent(now_ms) {
                tracing::debug!(conn, "keep-alive expired");
            }
        }
    }

    /// Refuses the CONNECTs that waited too long for this node's partition followers (they
    /// are stalled): server unavailable, the client tries again (or elsewhere).
    fn refuse_stale_catch_ups(&mut self, now: Instant) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let stale: Vec<ConnId> = c
            .catching_up
            .iter()
            .filter(|(_, _, since)| out_of_patience(*since, now))
            .map(|(conn, _, _)| *conn)
            .collect();
        for conn in stale {
            let Some(c) = self.cluster.as_mut() else {
                return;
            };
            c.catching_up.retain(|(waiting, _, _)| *waiting != conn);
            let Some((connect, _, _)) = c.claiming.remove(&conn) else {
                continue;
            };
            tracing::warn!(client_id = %connect.client_id, waited_s = CATCH_UP_PATIENCE.as_secs(), "this node's partition followers are behind what a connecting client's session record or earlier messages need: CONNECT refused (server unavailable)");
            let refusal =
                makelaar_core::conn::refusal(connect.protocol, ReasonCode::SERVER_UNAVAILABLE);
            self.send(conn, refusal);
            self.ends.server(ReasonCode::SERVER_UNAVAILABLE);
            self.close(conn, CloseReason::Server(ReasonCode::SERVER_UNAVAILABLE));
        }
    }

    /// Refuses (server unavailable) a CONNECT whose claim began before this node stepped
    /// down: its registry entry may name the retired incarnation, whose reaper has taken
    /// what it held, so nobody would reap this client's session (and publish its will) when
    /// this node dies (found by `test_a_paused_node_reaped_then_back_is_reaped_again_when_
    /// it_dies`: the CONNECT came 23 µs before the step-down). The client connects again,
    /// and that claim names the current incarnation. A will the claim took out of a record
    /// is decided as when the CONNECT waits for the followers.
    fn refuse_claim_across_step_down(
        &mut self,
        now: Instant,
        conn: ConnId,
        result: Result<crate::cluster::Claim, String>,
    ) {
        let Some((connect, _, _)) = self.cluster.as_mut().and_then(|c| c.claiming.remove(&conn))
        else {
            return;
        };
        tracing::info!(client_id = %connect.client_id, "this node stepped down while the client id was claimed: CONNECT refused (server unavailable), the client connects again");
        if let Some(will) = result.ok().and_then(|claim| claim.will) {
            let client_id: Arc<str> = Arc::from(connect.client_id.as_str());
            self.decide_claimed_will(now, &client_id, will, connect.clean_start);
        }
        let refusal =
            makelaar_core::conn::refusal(connect.protocol, ReasonCode::SERVER_UNAVAILABLE);
        self.send(conn, refusal);
        self.ends.server(ReasonCode::SERVER_UNAVAILABLE);
        self.close(conn, CloseReason::Server(ReasonCode::SERVER_UNAVAILABLE));
    }

    /// Decides a will another node left for `client_id`, taken out of the cluster's record
    /// by this node's claim of the id (the only home of that decision: no other node sees
    /// the will again), by the takeover rules for a CONNECT with `clean_start`.
    fn decide_claimed_will(
        &mut self,
        now: Instant,
        client_id: &Arc<str>,
        will: makelaar_core::broker::RemoteWill,
        clean_start: bool,
    ) {
        let published = self
            .broker
            .take_over_remote_will(now, client_id, will, clean_start);
        tracing::debug!(target: crate::cluster::RECORDS, %client_id, published, clean_start, "a will taken out of the record by this node's claim decided");
    }

    /// Asks the connection to close (its task logs `why`).
    fn close(&mut self, conn: ConnId, why: CloseReason) {
        self.slow_logged.remove(&conn);
        if let Some(c) = self.cluster.as_mut() {
            c.untrack(conn);
            c.fenced.remove(&conn);
            c.record_ready.retain(|(ready, _)| *ready != conn);
            if let Some((connect, _, _)) = c.claiming.remove(&conn) {
                let client_id = Arc::from(connect.client_id.as_str());
                c.abandoned.insert(conn, (client_id, connect.clean_start));
            }
            c.catching_up.retain(|(waiting, _, _)| *waiting != conn);
            if let Some((client_id, revision)) = c.remove_claim(conn) {
                c.after_appends(
                    Waiting::Disconnected {
                        client_id,
                        revision,
                    },
                    &self.broker,
                );
            }
        }
        if let Some(c) = self.conns.remove(&conn) {
            c.out.close(why);
        }
    }
}

/// The next report of the cluster; never, without one.
async fn next_from_cluster(rx: &mut Option<mpsc::Receiver<FromCluster>>) -> Option<FromCluster> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use makelaar_cluster::record::{Cursor, Outbound, OutboundState};
    use makelaar_core::broker::{KeptMessage, KeptWill, SessionSnapshot};
    use makelaar_core::message::{LogPosition, Message};
    use makelaar_core::persist::KeptState;
    use makelaar_proto::{ProtocolVersion, QoS, Will};

    fn offline(held: Vec<KeptMessage>) -> SessionSnapshot {
        SessionSnapshot {
            version: ProtocolVersion::V5,
            expiry_interval: 60,
            subscriptions: Vec::new(),
            offline_since: None,
            will: None,
            connected: false,
            inbound_qos2: vec![3],
            outbound: held,
        }
    }

    fn held(seq: Option<u64>, state: KeptState) -> KeptMessage {
        let msg = Message {
            topic: Arc::from("t"),
            payload: bytes::Bytes::new(),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: makelaar_proto::Properties::default(),
            expires_at: None,
            origin: None,
            received_at: None,
            log_position: std::sync::OnceLock::new(),
        };
        if let Some(seq) = seq {
            msg.log_position
                .set(LogPosition { partition: 0, seq })
                .unwrap();
        }
        KeptMessage {
            msg: Arc::new(msg),
            qos: QoS::ExactlyOnce,
            state,
        }
    }

    /// The followers go on while a leaving session's record waits for the appends before
    /// it: the record's cursors are where they stood at its snapshot, so the messages they
    /// brought meanwhile (queued to the offline session here, and in no snapshot) are read
    /// back by the node that resumes it.
    #[test]
    fn a_leaving_sessions_cursor_is_where_the_follower_stood_at_its_snapshot() {
        let (mut c, mut rx, _batches) = side();
        // The session is in no broker: its record is written as given.
        let broker = Broker::new(makelaar_core::Limits::default(), Default::default(), 0);
        stands_at(&mut c, 0, 5, 0);
        c.gate.next_epoch(); // batch 1, not appended yet
        c.after_appends(
            Waiting::Store {
                client_id: Arc::from("s"),
                snapshot: Some(offline(Vec::new())),
                wills: Vec::new(),
            },
            &broker,
        );
        // Other nodes' messages 5..=8 reach the offline session before batch 1 returns.
        c.positions.get_mut(&0).unwrap().next = 9;
        c.appended(1, vec![(0, 4)], &broker);
        let Ok(ToCluster::StoreSession { log, .. }) = rx.try_recv() else {
            panic!("the record is written once batch 1 is appended")
        };
        let Log { cursors, .. } = *log.expect("offline: where it stands");
        assert_eq!(
            cursors,
            [Cursor {
                partition: 0,
                next: 5,
                writer_through: 4
            }]
        );
    }

    #[test]
    fn a_leaving_sessions_record_waits_for_the_appends_before_it() {
        let (mut c, mut rx, _batches) = side();
        // The sessions here are in no broker: their records are written as given.
        let broker = Broker::new(makelaar_core::Limits::default(), Default::default(), 0);
        stands_at(&mut c, 0, 5, 0);
        stands_at(&mut c, 1, 2, 0);
        c.gate.next_epoch(); // batch 1, not appended yet
        c.after_appends(
            Waiting::Store {
                client_id: Arc::from("s"),
                snapshot: Some(offline(vec![
                    held(Some(4), KeptState::AwaitingComp(9)),
                    held(None, KeptState::Queued), // its append failed: not in the log
                    held(Some(6), KeptState::Queued),
                ])),
                wills: Vec::new(),
            },
            &broker,
        );
        c.after_appends(
            Waiting::Disconnected {
                client_id: Arc::from("s"),
                revision: makelaar_cluster::Revision::new(1).unwrap(),
            },
            &broker,
        );
        c.gate.next_epoch(); // batch 2, after the session left
        assert!(rx.try_recv().is_err(), "nothing before batch 1 is appended");
        c.appended(1, vec![(0, 6)], &broker);
        let Ok(ToCluster::StoreSession { log, .. }) = rx.try_recv() else {
            panic!("the record goes first")
        };
        let Log {
            cursors, outbound, ..
        } = *log.expect("offline: where it stands");
        assert_eq!(
            cursors,
            [
                Cursor {
                    partition: 0,
                    next: 5,
                    writer_through: 6
                },
                Cursor {
                    partition: 1,
                    next: 2,
                    writer_through: 0
                }
            ]
        );
        assert_eq!(
            outbound,
            [
                Outbound {
                    packet_id: 9,
                    partition: 0,
                    seq: 4,
                    state: OutboundState::AwaitPubcomp
                },
                Outbound {
                    packet_id: 0,
                    partition: 0,
                    seq: 6,
                    state: OutboundState::Queued
                }
            ]
        );
        assert!(matches!(rx.try_recv(), Ok(ToCluster::Disconnected { .. })));
        // Batch 2 moves this node's position on, but nothing more waited for it.
        c.appended(2, vec![(0, 8)], &broker);
        assert!(rx.try_recv().is_err());
        assert_eq!(c.positions[&0].own_through, 8);
        // Nothing outstanding: written at once.
        let connected = SessionSnapshot {
            connected: true,
            ..offline(Vec::new())
        };
        c.after_appends(
            Waiting::Store {
                client_id: Arc::from("s"),
                snapshot: Some(connected),
                wills: Vec::new(),
            },
            &broker,
        );
        // Connected, it says where it stands too: a node that dies with it connected
        // leaves a record to replay from (`makelaar_cluster::checkpoint`).
        assert!(matches!(
            rx.try_recv(),
            Ok(ToCluster::StoreSession { log: Some(_), .. })
        ));
    }

    /// A session resumed here from another node's record, whose replay is not back (its
    /// read timed out: a NATS server died), is written again (the CONNECT's first write,
    /// then a hand-over to a third node): each record keeps the place in the log the
    /// resumed record gave, counted by that record's writer, so the third node replays what
    /// the replay here never brought. (Written without it, the third node resumed the
    /// session from nothing: found by the fault harness, hundreds of acknowledged messages
    /// lost at a subscriber moving between nodes.)
    #[test]
    fn a_session_whose_replay_is_not_back_keeps_the_place_its_record_gave() {
        let (mut c, mut rx, _batches) = side();
        let broker = Broker::new(makelaar_core::Limits::default(), Default::default(), 0);
        stands_at(&mut c, 0, 40, 30);
        let given = Cursor {
            partition: 0,
            next: 12,
            writer_through: 15,
        };
        let kept = Outbound {
            packet_id: 4,
            partition: 0,
            seq: 11,
            state: OutboundState::AwaitPubrec,
        };
        let old_node = makelaar_cluster::NodeId::new("b").unwrap();
        c.resumes.insert(
            Arc::from("s"),
            Resuming {
                n: 1,
                resume: Resume {
                    writer: old_node.clone(),
                    cursors: vec![given],
                    outbound: vec![kept],
                    writer_late: Vec::new(),
                },
                live_from: HashMap::from([(0, 40)]),
                epoch: 0,
                late: Vec::new(),
                stage: ReplayStage::Asked,
                filters: Vec::new(),
                wills: Vec::new(),
            },
        );
        let connected = SessionSnapshot {
            connected: true,
            ..offline(Vec::new())
        };
        for snapshot in [connected, offline(Vec::new())] {
            c.after_appends(
                Waiting::Store {
                    client_id: Arc::from("s"),
                    snapshot: Some(snapshot),
                    wills: Vec::new(),
                },
                &broker,
            );
            let Ok(ToCluster::StoreSession { log: Some(log), .. }) = rx.try_recv() else {
                panic!("the record is written with a place in the log")
            };
            assert_eq!(log.cursors, [given]);
            assert_eq!(log.outbound, [kept]);
            assert_eq!(log.writer.as_ref(), Some(&old_node));
        }
        // Once the replay is in, the session stands where this node's router does.
        c.resumes.remove("s");
        c.after_appends(
            Waiting::Store {
                client_id: Arc::from("s"),
                snapshot: Some(offline(Vec::new())),
                wills: Vec::new(),
            },
            &broker,
        );
        let Ok(ToCluster::StoreSession { log: Some(log), .. }) = rx.try_recv() else {
            panic!("the record is written with a place in the log")
        };
        assert_eq!(
            log.cursors,
            [Cursor {
                partition: 0,
                next: 40,
                writer_through: 30
            }]
        );
        assert_eq!(log.writer, None);
    }

    /// This node's router stands at `next` in `partition`, its own messages appended
    /// through `own_through`.
    fn stands_at(c: &mut ClusterSide, partition: u16, next: u64, own_through: u64) {
        c.positions
            .insert(partition, NodePosition { next, own_through });
    }

    fn side() -> (
        ClusterSide,
        mpsc::UnboundedReceiver<ToCluster>,
        mpsc::UnboundedReceiver<crate::cluster::Batch>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (batch_tx, batch_rx) = mpsc::unbounded_channel();
        let c = ClusterSide::new(
            (tx, batch_tx),
            Arc::new(makelaar_cluster::stats::NodeStats::new(
                makelaar_cluster::partition::PartitionCount::new(2).unwrap(),
            )),
            Arc::new(tokio::sync::Notify::new()),
            makelaar_cluster::NodeId::new("a").unwrap(),
            CheckpointConfig::default(),
            true,
        );
        (c, rx, batch_rx)
    }

    fn publish(qos: QoS, packet_id: u16) -> Held {
        Held::Send(Packet::Publish(makelaar_proto::Publish {
            qos,
            packet_id,
            topic: "t".into(),
            ..Default::default()
        }))
    }

    fn ready(c: &mut ClusterSide) -> Vec<String> {
        c.record_ready
            .drain(..)
            .map(|(_, h)| match h {
                Held::Send(Packet::Publish(p)) => format!("publish {}", p.packet_id),
                Held::Send(Packet::PubRel(p)) => format!("pubrel {}", p.packet_id),
                Held::Send(p) => p.name().to_string(),
                Held::Close(_) => "close".to_string(),
            })
            .collect()
    }

    /// [MQTT-4.3.3-x] exactly once across a node's death: a QoS 2 PUBLISH and a PUBREL to a
    /// connected persistent session leave only once a checkpoint of its record made after
    /// them is written; what comes after them on the connection keeps its place behind.
    #[test]
    fn qos2_publish_and_pubrel_wait_for_a_checkpoint_made_after_them() {
        let (mut c, _rx, _batches) = side();
        let id: Arc<str> = Arc::from("s");
        // Not tracked (not persistent, or another connection): nothing waits.
        assert!(c.hold_for_record(9, publish(QoS::ExactlyOnce, 1)).is_some());
        c.track(1, id.clone());
        // QoS 1 goes at once.
        assert!(c.hold_for_record(1, publish(QoS::AtLeastOnce, 1)).is_some());
        assert!(c.hold_for_record(1, publish(QoS::ExactlyOnce, 2)).is_none());
        // Behind it: held too, in order.
        assert!(c.hold_for_record(1, publish(QoS::AtLeastOnce, 3)).is_none());
        let started = c.checkpoints.due(Instant::now());
        assert_eq!(started.len(), 1);
        let n = started[0].1;
        // A PUBREL after the checkpoint started waits for the next one.
        let rel = Held::Send(Packet::PubRel(makelaar_proto::PubAck::new(2)));
        assert!(c.hold_for_record(1, rel).is_none());
        c.release_record(&id, n);
        assert_eq!(ready(&mut c), ["publish 2", "publish 3"]);
        let next = c.checkpoints.due(Instant::now());
        assert_eq!(next.len(), 1);
        assert!(next[0].1 > n);
        c.release_record(&id, next[0].1);
        assert_eq!(ready(&mut c), ["pubrel 2"]);
        // Nothing held: a QoS 1 PUBLISH goes at once again.
        assert!(c.hold_for_record(1, publish(QoS::AtLeastOnce, 4)).is_some());
    }

    /// A connection whose session went to another node never sends what waited for its
    /// record (the new owner's record does not hold it), but still closes.
    #[test]
    fn what_waited_for_a_lost_record_is_dropped_but_the_close_goes() {
        let (mut c, _rx, _batches) = side();
        c.track(1, Arc::from("s"));
        assert!(c.hold_for_record(1, publish(QoS::ExactlyOnce, 2)).is_none());
        let close = Held::Close(CloseReason::Server(ReasonCode::SESSION_TAKEN_OVER));
        assert!(c.hold_for_record(1, close).is_none());
        c.untrack_client("s");
        assert_eq!(ready(&mut c), ["close"]);
        // Untracked: nothing waits any more.
        assert!(c.hold_for_record(1, publish(QoS::ExactlyOnce, 3)).is_some());
    }

    /// A checkpoint falling due when the session went offline meanwhile lets through what
    /// waited (its own offline record covers it).
    #[test]
    fn a_checkpoint_of_a_session_gone_offline_releases_what_waited() {
        let (mut c, mut rx, _batches) = side();
        let broker = Broker::new(makelaar_core::Limits::default(), Default::default(), 0);
        c.track(1, Arc::from("s"));
        assert!(c.hold_for_record(1, publish(QoS::ExactlyOnce, 2)).is_none());
        let due = c.checkpoints.due(Instant::now());
        let (client_id, n) = due[0].clone();
        c.after_appends(Waiting::Checkpoint { client_id, n }, &broker);
        assert!(
            rx.try_recv().is_err(),
            "no record written for a session not here"
        );
        assert_eq!(ready(&mut c), ["publish 2"]);
    }

    /// A node of the tests below: a router with its core broker, the cluster answered by
    /// the test (`settle`), and a log of partition 0 that the replays read back as
    /// `makelaar_cluster::Cluster::replay` does, by the request's plan.
    struct Node {
        router: Router,
        rx: mpsc::UnboundedReceiver<ToCluster>,
        /// The router's batches to the writer.
        batch_rx: mpsc::UnboundedReceiver<crate::cluster::Batch>,
        /// Partition 0 of the log, its sequence 1 first: the publishing node and the number
        /// the message carries.
        log: Vec<(makelaar_cluster::NodeId, u32)>,
        /// The replays asked for and not answered yet, in order.
        replays: Vec<ReplayRequest>,
        /// The session records written (`None`: no place in the log).
        records: Vec<Option<Log>>,
        /// The due wills those writes took out of the record, to publish if they win.
        wills_written: usize,
        /// The clients whose record this node asked to delete (a write without a session).
        deletes: Vec<Arc<str>>,
        /// The hand-over requests passed to the sessions task: it answers them, and writes
        /// those clients' records no more (their checkpoints are never answered).
        released: Vec<Arc<str>>,
        /// Wills handed to the sessions task to decide as of a session that moved away.
        left_wills: usize,
        /// The connections whose claim (revision) another node's registry write replaced,
        /// as told to the cluster.
        owner_checks: Vec<(ConnId, u64)>,
        outs: HashMap<ConnId, Arc<Outbox>>,
        /// What the subscriber got, in order: the message's number, its QoS, DUP.
        got: Vec<(u32, QoS, bool)>,
        /// The same by connection: the connection and the message's number.
        got_on: Vec<(ConnId, u32)>,
        /// The epochs of the batches handed to the cluster and not answered yet, in order.
        batches: std::collections::VecDeque<u64>,
        /// The CONNACKs sent, in order: Session Present of each.
        connacks: Vec<bool>,
        /// Their reason codes, in the same order.
        connack_reasons: Vec<ReasonCode>,
        /// The PUBACKs and PUBRECs sent, in order: the connection and the packet id.
        acks: Vec<(ConnId, u16)>,
    }

    /// The client id of the persistent subscriber below.
    const SUB: &str = "sub2";

    impl Node {
        /// Node "a", its follower in partition 0 at `next`.
        fn new(next: u64) -> Node {
            let (mut c, rx, batch_rx) = side();
            stands_at(&mut c, 0, next, 0);
            let mut broker = Broker::new(makelaar_core::Limits::default(), Default::default(), 0);
            broker.enable_cluster_export();
            let router = Router::new(
                broker,
                Arc::new(Counters::default()),
                SysPublisher::new(Duration::ZERO, Instant::now()),
                None,
                Some(c),
            );
            // Messages 1..next-1 are in the log already, published on node "c".
            let c = makelaar_cluster::NodeId::new("c").unwrap();
            let log = (1..next).map(|n| (c.clone(), n as u32)).collect();
            Node {
                router,
                rx,
                batch_rx,
                log,
                replays: Vec::new(),
                records: Vec::new(),
                wills_written: 0,
                deletes: Vec::new(),
                released: Vec::new(),
                left_wills: 0,
                owner_checks: Vec::new(),
                acks: Vec::new(),
                outs: HashMap::new(),
                got: Vec::new(),
                got_on: Vec::new(),
                batches: std::collections::VecDeque::new(),
                connacks: Vec::new(),
                connack_reasons: Vec::new(),
            }
        }

        /// Carries out what is pending, answers the cluster (checkpoints written) and lets
        /// the subscriber acknowledge what it got, until nothing moves.
        fn settle(&mut self) {
            loop {
                self.router.flush();
                let mut moved = false;
                let mut checkpointed = Vec::new();
                while let Ok(b) = self.batch_rx.try_recv() {
                    moved = true;
                    if let Some(epoch) = b.epoch {
                        self.batches.push_back(epoch);
                    }
                }
                while let Ok(to) = self.rx.try_recv() {
                    moved = true;
                    match to {
                        ToCluster::Replay(req) => self.replays.push(*req),
                        ToCluster::StoreSession {
                            client_id,
                            log,
                            checkpoint,
                            wills,
                            snapshot,
                        } => {
                            if snapshot.is_none() {
                                self.deletes.push(client_id.clone());
                            }
                            if self.released.contains(&client_id) {
                                continue;
                            }
                            self.records.push(log.map(|l| *l));
                            self.wills_written += wills.len();
                            if let Some(n) = checkpoint {
                                checkpointed.push(FromCluster::Checkpointed { client_id, n });
                            }
                        }
                        ToCluster::Released(req) => {
                            let id = req.client.client_id().unwrap();
                            self.released.push(Arc::from(id.as_str()));
                        }
                        ToCluster::Superseded { conn, revision, .. } => {
                            self.owner_checks.push((conn, revision.get()));
                        }
                        ToCluster::LeftWills { wills, .. } => self.left_wills += wills.len(),
                        _ => {}
                    }
                }
                for ev in checkpointed {
                    self.router.cluster_event(Instant::now(), ev);
                }
                let mut answers = Vec::new();
                for (&conn, out) in &self.outs {
                    let mut d = crate::outbox::Drained::default();
                    out.drain(&mut d, usize::MAX);
                    for p in d.packets {
                        moved = true;
                        match p {
                            Packet::Publish(p) => {
                                let n = u32::from_be_bytes(p.payload[..4].try_into().unwrap());
                                self.got.push((n, p.qos, p.dup));
                                self.got_on.push((conn, n));
                                let ack = makelaar_proto::PubAck::new(p.packet_id);
                                answers.push((
                                    conn,
                                    match p.qos {
                                        QoS::ExactlyOnce => Packet::PubRec(ack),
                                        _ => Packet::PubAck(ack),
                                    },
                                ));
                            }
                            Packet::ConnAck(a) => {
                                self.connacks.push(a.session_present);
                                self.connack_reasons.push(a.reason);
                            }
                            Packet::PubAck(a) | Packet::PubRec(a) => {
                                self.acks.push((conn, a.packet_id));
                            }
                            Packet::PubRel(r) => answers.push((
                                conn,
                                Packet::PubComp(makelaar_proto::PubAck::new(r.packet_id)),
                            )),
                            _ => {}
                        }
                    }
                }
                for (conn, packet) in answers {
                    self.router
                        .handle(Instant::now(), ToRouter::Packet { conn, packet });
                }
                if !moved {
                    return;
                }
            }
        }

        /// The subscriber connects (Clean Start 0) on `conn`: its claim is asked for.
        fn connect(&mut self, conn: ConnId) {
            self.connect_with(conn, false, None);
        }

        /// The subscriber connects on `conn` with Clean Start and a will as given.
        fn connect_with(&mut self, conn: ConnId, clean_start: bool, will: Option<Will>) {
            self.connect_as(conn, SUB, clean_start, will);
        }

        /// Client `client_id` connects on `conn` with Clean Start and a will as given.
        fn connect_as(
            &mut self,
            conn: ConnId,
            client_id: &str,
            clean_start: bool,
            will: Option<Will>,
        ) {
            let out = Arc::new(Outbox::default());
            self.outs.insert(conn, out.clone());
            let connect = Connect {
                protocol: ProtocolVersion::V5,
                bridge: false,
                clean_start,
                keep_alive: 0,
                client_id: client_id.into(),
                will,
                username: None,
                password: None,
                properties: makelaar_proto::Properties {
                    session_expiry_interval: Some(600),
                    ..Default::default()
                },
            };
            self.router.handle(
                Instant::now(),
                ToRouter::Connect {
                    conn,
                    connect: Box::new(connect),
                    out,
                    peer: "127.0.0.1:1".parse().unwrap(),
                },
            );
            self.settle();
        }

        /// Its claim comes back with the record another node wrote, `moved_away` as given.
        fn claimed(&mut self, conn: ConnId, revision: u64, record: &Resume, moved_away: bool) {
            self.claimed_with(conn, revision, Some(record.clone()), moved_away);
        }

        /// Its claim comes back with the record this node wrote when it reaped the dead
        /// node that had the session (`crate::cluster::take_over_orphan` leaves the dead
        /// node's place in the log out of it: the router has it).
        fn claimed_reaped(&mut self, conn: ConnId, revision: u64) {
            self.claimed_with(conn, revision, None, false);
        }

        fn claimed_with(
            &mut self,
            conn: ConnId,
            revision: u64,
            resume: Option<Resume>,
            moved_away: bool,
        ) {
            let claim = crate::cluster::Claim {
                revision: makelaar_cluster::Revision::new(revision).unwrap(),
                session: Some(subscribed()),
                will: None,
                resume,
                moved_away,
                tails: Vec::new(),
            };
            self.router.cluster_event(
                Instant::now(),
                FromCluster::Claimed {
                    conn,
                    result: Ok(claim),
                },
            );
            self.settle();
        }

        /// Node "c" publishes message `n` (QoS 1 when odd, QoS 2 when even): appended, then
        /// brought by this node's follower.
        fn published_elsewhere(&mut self, n: u32) {
            self.appended_elsewhere(n);
            self.follow(self.log.len() as u64);
        }

        /// Node "c" publishes message `n`: appended, not brought by this node's follower
        /// yet.
        fn appended_elsewhere(&mut self, n: u32) {
            self.log
                .push((makelaar_cluster::NodeId::new("c").unwrap(), n));
        }

        /// This node's follower brings the message at `seq` of the log (this node's own as
        /// its position only: routed when it was published).
        fn follow(&mut self, seq: u64) {
            let (origin, n) = &self.log[(seq - 1) as usize];
            let msg = numbered(*n);
            msg.log_position
                .set(LogPosition { partition: 0, seq })
                .unwrap();
            let own = origin.as_str() == "a";
            self.router.cluster_event(
                Instant::now(),
                FromCluster::Log {
                    partition: 0,
                    seq,
                    msg: (!own).then(|| Arc::new(msg)),
                },
            );
            self.settle();
        }

        /// A will numbered `n` (QoS 1, on "t"), due on this node: published here.
        fn will_published(&mut self, n: u32) {
            self.router.cluster_event(Instant::now(), numbered_will(n));
            self.settle();
        }

        /// The oldest batch handed to the cluster is appended, this node's messages in it
        /// (numbered as given) at the end of the log.
        fn batch_appended(&mut self, own: &[u32]) {
            let epoch = self.batches.pop_front().expect("a batch was handed over");
            let a = makelaar_cluster::NodeId::new("a").unwrap();
            let mut seqs = Vec::new();
            for &n in own {
                self.log.push((a.clone(), n));
                seqs.push((0, self.log.len() as u64));
            }
            let own = seqs.into_iter().max().into_iter().collect();
            let appended = FromCluster::Appended {
                epoch,
                failed: Vec::new(),
                own,
            };
            self.router.cluster_event(Instant::now(), appended);
            self.settle();
        }

        /// The oldest batch handed to the cluster holds a will whose append failed: the
        /// writer says it is tried again (`id`), then reports the batch.
        fn will_retried(&mut self, id: u64) -> makelaar_cluster::MessageId {
            let epoch = *self.batches.front().expect("a batch was handed over");
            let a = makelaar_cluster::NodeId::new("a").unwrap();
            let id = makelaar_cluster::MessageId::new(&a, 1, id);
            let retrying = FromCluster::WillRetrying {
                id: id.clone(),
                epoch,
            };
            self.router.cluster_event(Instant::now(), retrying);
            self.batch_appended(&[]);
            id
        }

        /// The retried will `id`, numbered `n`, lands at the end of the log (`Some`), or is
        /// given up.
        fn will_placed(&mut self, id: makelaar_cluster::MessageId, landed: Option<u32>) {
            let at = landed.map(|n| {
                self.log
                    .push((makelaar_cluster::NodeId::new("a").unwrap(), n));
                LogPosition {
                    partition: 0,
                    seq: self.log.len() as u64,
                }
            });
            self.router
                .cluster_event(Instant::now(), FromCluster::WillPlaced { id, at });
            self.settle();
        }

        /// The client on `conn` publishes message `n` on "t" (QoS 1 when odd, QoS 2 when
        /// even) with this packet id.
        fn publishes(&mut self, conn: ConnId, packet_id: u16, n: u32) {
            let m = numbered(n);
            let packet = Packet::Publish(makelaar_proto::Publish {
                qos: m.qos,
                topic: m.topic,
                packet_id,
                payload: m.payload,
                ..Default::default()
            });
            self.router
                .handle(Instant::now(), ToRouter::Packet { conn, packet });
            self.settle();
        }

        /// A claim's barrier, naming `client`'s claim at `revision`, at the end of the log,
        /// brought by this node's follower.
        fn barrier(&mut self, client: &str, revision: u64) {
            self.log
                .push((makelaar_cluster::NodeId::new("c").unwrap(), 0));
            let ev = FromCluster::Barrier {
                partition: 0,
                seq: self.log.len() as u64,
                claims: vec![makelaar_cluster::barrier::BarrierClaim {
                    client: client.into(),
                    revision: makelaar_cluster::Revision::new(revision).unwrap(),
                }],
            };
            self.event(ev);
        }

        /// The packet ids acknowledged (PUBACK, PUBREC) on `conn`, in order.
        fn acks_on(&self, conn: ConnId) -> Vec<u16> {
            (self.acks.iter())
                .filter(|(c, _)| *c == conn)
                .map(|(_, id)| *id)
                .collect()
        }

        /// The cluster reports `ev`; what follows is carried out.
        fn event(&mut self, ev: FromCluster) {
            self.router.cluster_event(Instant::now(), ev);
            self.settle();
        }

        /// The numbers of what connection `conn` got, in order.
        fn got_by(&self, conn: ConnId) -> Vec<u32> {
            (self.got_on.iter())
                .filter(|(c, _)| *c == conn)
                .map(|(_, n)| *n)
                .collect()
        }

        /// The client sends DISCONNECT (normal) and closes its socket.
        fn disconnects(&mut self, conn: ConnId) {
            let packet = Packet::Disconnect(makelaar_proto::Disconnect {
                reason: ReasonCode::SUCCESS,
                properties: Default::default(),
            });
            self.router
                .handle(Instant::now(), ToRouter::Packet { conn, packet });
            self.settle();
            self.lost(conn);
        }

        /// The connection ends without DISCONNECT.
        fn lost(&mut self, conn: ConnId) {
            self.router.handle(Instant::now(), ToRouter::Lost { conn });
            self.outs.remove(&conn);
            self.settle();
        }

        /// The `i`-th replay asked for (in order) comes back, read from the log by its plan.
        fn replayed(&mut self, i: usize) {
            let req = self.replays.remove(i);
            let mut queued = Vec::new();
            for plan in &req.plan.partitions {
                for seq in plan.from..=plan.to {
                    let (origin, n) = &self.log[(seq - 1) as usize];
                    match req.plan.classify(plan, seq, origin) {
                        makelaar_cluster::replay::Verdict::New => {
                            let msg = numbered(*n);
                            msg.log_position
                                .set(LogPosition { partition: 0, seq })
                                .unwrap();
                            queued.push(Arc::new(msg));
                        }
                        makelaar_cluster::replay::Verdict::Skip => {}
                        makelaar_cluster::replay::Verdict::Kept(_) => {
                            panic!("the records here list no outbound message")
                        }
                    }
                }
            }
            self.router.cluster_event(
                Instant::now(),
                FromCluster::Replayed {
                    client_id: req.client_id.clone(),
                    resume: req.resume,
                    in_flight: Vec::new(),
                    queued,
                },
            );
            self.settle();
        }

        /// The subscriber got messages `from..=to`, each of its first arrivals in order,
        /// QoS 2 ones exactly once, QoS 1 ones at least once.
        fn assert_got(&self, from: u32, to: u32, case: &str) {
            let mut firsts: Vec<u32> = Vec::new();
            for &(n, qos, _) in &self.got {
                if firsts.contains(&n) {
                    assert_ne!(
                        qos,
                        QoS::ExactlyOnce,
                        "{case}: QoS 2 message {n} delivered twice: {:?}",
                        self.got
                    );
                } else {
                    firsts.push(n);
                }
            }
            let want: Vec<u32> = (from..=to).collect();
            assert_eq!(
                firsts, want,
                "{case}: what the subscriber got: {:?}",
                self.got
            );
        }
    }

    /// The subscriber's session as a record keeps it: offline, subscribed to "t" at QoS 2.
    fn subscribed() -> SessionSnapshot {
        SessionSnapshot {
            subscriptions: vec![(
                "t".into(),
                makelaar_core::session::Subscription {
                    options: makelaar_proto::SubscriptionOptions {
                        qos: QoS::ExactlyOnce,
                        ..Default::default()
                    },
                    id: None,
                },
            )],
            inbound_qos2: Vec::new(),
            expiry_interval: 600,
            ..offline(Vec::new())
        }
    }

    /// A will numbered `n` (its payload), QoS 1 on topic "t", due now on this node.
    fn numbered_will(n: u32) -> FromCluster {
        let will = Will {
            topic: "t".into(),
            payload: bytes::Bytes::copy_from_slice(&n.to_be_bytes()),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: makelaar_proto::Properties::default(),
        };
        FromCluster::Will {
            client_id: Arc::from("probe"),
            will: KeptWill {
                will: Box::new(will),
                username: None,
            },
        }
    }

    /// A message numbered `n` on topic "t", QoS 1 when odd, QoS 2 when even.
    fn numbered(n: u32) -> Message {
        Message {
            topic: Arc::from("t"),
            payload: bytes::Bytes::copy_from_slice(&n.to_be_bytes()),
            qos: if n.is_multiple_of(2) {
                QoS::ExactlyOnce
            } else {
                QoS::AtLeastOnce
            },
            retain: false,
            properties: makelaar_proto::Properties::default(),
            expires_at: None,
            origin: None,
            received_at: None,
            log_position: std::sync::OnceLock::new(),
        }
    }

    /// How the subscriber's second connection to this node finds its session.
    #[derive(Debug, Clone, Copy)]
    enum Back {
        /// This node's copy is kept (the record names this node as its last writer).
        Kept,
        /// The record was last written by another node (this node's writes failed): the
        /// claim says the session moved away, and this node's copy is dropped.
        MovedAway,
        /// A claim on another node that failed after moving the registry entry told this
        /// node the client moved (`FromCluster::Moved`): its copy is dropped.
        MovedNotice,
    }

    /// When the first resume's replay comes back.
    #[derive(Debug, Clone, Copy)]
    enum FirstBack {
        /// Before the client connects again.
        BeforeSecondConnect,
        /// After the second connection's claim (its read was tried again meanwhile), before
        /// the second replay, if any.
        AfterSecondConnect,
        /// After the second replay, if any.
        Last,
    }

    /// The record a subscriber is resumed from in the tests below: written by node "b",
    /// which had delivered messages 1..=3 (the log's 4 and 5 came since); its writer, its
    /// one cursor, and the record.
    fn record_of_b() -> (makelaar_cluster::NodeId, Cursor, Resume) {
        let b = makelaar_cluster::NodeId::new("b").unwrap();
        let given = Cursor {
            partition: 0,
            next: 4,
            writer_through: 0,
        };
        let record = Resume {
            writer: b.clone(),
            cursors: vec![given],
            outbound: Vec::new(),
            writer_late: Vec::new(),
        };
        (b, given, record)
    }

    /// Run 8 of the link-cut test (docs/cluster.md, "Faults: what is left"): a persistent
    /// subscriber resumed on this node from another node's record, whose replay is not back
    /// (its read is tried again) when the client leaves, and comes back to this node. Every
    /// message published for it is delivered: those in the record's range (the replay's),
    /// those that came while it was connected with its window shut, while it was offline,
    /// and after it came back.
    fn session_back_on_the_same_node(back: Back, first: FirstBack) {
        // The record it is resumed from (`record_of_b`).
        let (b, given, record) = record_of_b();
        let mut node = Node::new(6);
        node.connect(1);
        node.claimed(1, 1, &record, false);
        assert_eq!(node.replays.len(), 1, "the resume asks for its replay");
        node.published_elsewhere(6);
        node.published_elsewhere(7);
        assert!(
            node.got.is_empty(),
            "its window is shut until the replay is back"
        );
        node.lost(1);
        node.published_elsewhere(8);
        node.published_elsewhere(9);
        // Every record written while its replay was not back (the CONNECT's; at the
        // disconnect none: it waits for the replay) keeps the place the record it was
        // resumed from gave, counted by that record's writer: a node taking the session
        // now replays what the replay here is bringing.
        assert!(!node.records.is_empty());
        for log in &node.records {
            let log = log
                .as_ref()
                .expect("a record says where the session stands");
            assert_eq!(log.cursors, [given]);
            assert_eq!(log.writer.as_ref(), Some(&b));
        }
        if let FirstBack::BeforeSecondConnect = first {
            node.replayed(0);
        }
        let moved_away = match back {
            Back::Kept => false,
            Back::MovedAway => true,
            Back::MovedNotice => {
                node.router.cluster_event(Instant::now(), moved_notice(100));
                node.settle();
                false
            }
        };
        node.connect(2);
        node.claimed(2, 3, &record, moved_away);
        if !node.replays.is_empty() {
            // Its CONNECT's record, a replay still to come: the place the record gave, too.
            let log = node
                .records
                .last()
                .cloned()
                .flatten()
                .expect("the CONNECT's record");
            assert_eq!(log.cursors, [given]);
            assert_eq!(log.writer.as_ref(), Some(&b));
        }
        node.published_elsewhere(10);
        node.published_elsewhere(11);
        match first {
            FirstBack::BeforeSecondConnect => {}
            FirstBack::AfterSecondConnect => node.replayed(0),
            FirstBack::Last => {
                if node.replays.len() > 1 {
                    node.replayed(1);
                }
                node.replayed(0);
            }
        }
        while !node.replays.is_empty() {
            node.replayed(0);
        }
        node.published_elsewhere(12);
        node.assert_got(4, 12, &format!("{back:?}, first replay back {first:?}"));
        // Its record at the next disconnect: where this node stands, counted by this node.
        node.lost(2);
        let last = node
            .records
            .last()
            .cloned()
            .flatten()
            .expect("a record at the disconnect");
        assert_eq!(
            last.cursors,
            [Cursor {
                partition: 0,
                next: 13,
                writer_through: 0
            }]
        );
        assert_eq!(last.writer, None);
        assert!(
            last.outbound.is_empty(),
            "everything was acknowledged: {:?}",
            last.outbound
        );
    }

    /// Issue 15, a partition and link-cut run (127 acknowledged messages lost at `sub2`,
    /// 11:05:56–11:06:01): a session resumed here from another node's record, whose client
    /// left before the replay came back. The record written once it is back (the session
    /// offline here) must hold what the replay brought, or start before it: a node the
    /// client connects to next resumes from that record.
    #[test]
    fn a_replay_back_after_the_client_left_is_in_the_record_written_then() {
        replay_back_after_the_client_left(false);
        replay_back_after_the_client_left(true);
    }

    fn replay_back_after_the_client_left(disconnect: bool) {
        let (_, _, record) = record_of_b();
        let mut node = Node::new(6);
        node.connect(1);
        node.claimed(1, 1, &record, true);
        node.published_elsewhere(6);
        if disconnect {
            node.disconnects(1);
        } else {
            node.lost(1);
        }
        node.published_elsewhere(7);
        node.replayed(0);
        assert!(node.got.is_empty(), "nothing was delivered");
        let last = node
            .records
            .last()
            .cloned()
            .flatten()
            .expect("a record once the replay is back");
        // Every message from 4 on is either before the record's cursor and held, or at or
        // after it (a node taking the session replays it).
        let next = last.cursors[0].next;
        let held: Vec<u64> = last.outbound.iter().map(|o| o.seq).collect();
        for seq in 4..=7u64 {
            assert!(
                seq >= next || held.contains(&seq),
                "message at {seq} is neither held nor after the cursor {next}: {last:?}"
            );
        }
    }

    /// Issue 15, the same run (127 acknowledged messages lost at `sub2`, 11:06:01): a
    /// session resumed here whose client left before its replay came back, then was handed
    /// over to another node's claim. The hand-over's record waited for this node's appends;
    /// the replay came back meanwhile (to no session: it had moved) and its resume was
    /// taken out, so the record, once written, said the session stood where this node's
    /// follower did, as if it had the replay's messages. The record keeps the place the
    /// session was resumed from, as it was when the hand-over took the session's state.
    #[test]
    fn a_hand_over_record_waiting_for_appends_keeps_the_place_of_a_replay_not_back() {
        let (b, given, record) = record_of_b();
        let mut node = Node::new(6);
        node.connect(1);
        node.claimed(1, 1, &record, false);
        node.lost(1);
        // A will of this node, routed here: its batch is not appended yet.
        node.will_published(100);
        let before = node.records.len();
        node.event(hand_over_request(5));
        assert_eq!(node.records.len(), before, "the hand-over's record waits");
        node.replayed(0);
        node.batch_appended(&[100]);
        let last = node.records[before..]
            .iter()
            .rev()
            .find_map(|r| r.as_ref())
            .expect("the hand-over's record");
        assert_eq!(last.cursors, [given], "{last:?}");
        assert_eq!(last.writer.as_ref(), Some(&b));
    }

    #[test]
    fn a_session_back_on_the_same_node_after_its_first_replay_came_back_loses_nothing() {
        for back in [Back::Kept, Back::MovedAway, Back::MovedNotice] {
            session_back_on_the_same_node(back, FirstBack::BeforeSecondConnect);
        }
    }

    #[test]
    fn a_session_back_on_the_same_node_before_its_first_replay_came_back_loses_nothing() {
        for back in [Back::Kept, Back::MovedAway, Back::MovedNotice] {
            session_back_on_the_same_node(back, FirstBack::AfterSecondConnect);
        }
    }

    #[test]
    fn a_session_back_on_the_same_node_whose_first_replay_comes_back_last_loses_nothing() {
        for back in [Back::Kept, Back::MovedAway, Back::MovedNotice] {
            session_back_on_the_same_node(back, FirstBack::Last);
        }
    }

    /// A node that took a session in from node b's record, whose connection (with a will)
    /// was then lost while the replay was still out: the due will waits for it.
    fn will_due_while_replay_is_out() -> (Node, Resume) {
        let b = makelaar_cluster::NodeId::new("b").unwrap();
        let record = Resume {
            writer: b,
            cursors: vec![Cursor {
                partition: 0,
                next: 4,
                writer_through: 0,
            }],
            outbound: Vec::new(),
            writer_late: Vec::new(),
        };
        let mut node = Node::new(6);
        let will = Will {
            topic: "w".into(),
            payload: bytes::Bytes::new(),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: makelaar_proto::Properties::default(),
        };
        node.connect_with(1, false, Some(will));
        node.claimed(1, 1, &record, false);
        node.lost(1);
        assert_eq!(node.wills_written, 0, "the due will waits for the replay");
        (node, record)
    }

    /// The same, but the session moved to another node between the connection's loss and
    /// the clean start: that node took the record (and the will, if it reached the record).
    /// The will that waited here for the replay goes with the resume it waited for, to the
    /// sessions task, which decides it as for a record another node took; not with the new
    /// session's first record, which would publish it again.
    #[test]
    fn a_will_waiting_for_a_replay_goes_with_the_session_that_moved_away() {
        let (mut node, record) = will_due_while_replay_is_out();
        node.router.cluster_event(Instant::now(), moved_notice(100));
        node.settle();
        node.connect_with(2, true, None);
        node.claimed(2, 101, &record, false);
        node.replayed(0);
        assert_eq!(node.wills_written, 0, "not with the new session's record");
        assert_eq!(node.left_wills, 1, "decided as of the session that moved");
    }

    /// A client back on the same node with Clean Start 1 while the replay of its session
    /// taken in from a record is not back: the new session stands where this node does (its
    /// records say so, and it is checkpointed from its CONNECT), and that replay's answer,
    /// coming later, is not its own. The will of the old session's connection, due when it
    /// ended and waiting for that replay, goes with the new session's first record.
    #[test]
    fn a_clean_start_ends_the_resume_of_the_session_it_replaces() {
        let (mut node, record) = will_due_while_replay_is_out();
        node.published_elsewhere(6);
        node.connect_with(2, true, None);
        node.claimed(2, 2, &record, false);
        assert_eq!(
            node.wills_written, 1,
            "the due will goes with the CONNECT's record"
        );
        let log = node
            .records
            .last()
            .cloned()
            .flatten()
            .expect("the CONNECT's record");
        assert_eq!(
            log.cursors,
            [Cursor {
                partition: 0,
                next: 7,
                writer_through: 0
            }]
        );
        assert_eq!(log.writer, None);
        assert!(
            node.router
                .cluster
                .as_ref()
                .is_some_and(|c| c.tracked.values().any(|id| &**id == SUB)),
            "checkpointed from its CONNECT"
        );
        node.replayed(0);
        assert_eq!(node.wills_written, 1, "once");
        node.published_elsewhere(7);
        assert!(
            node.got.is_empty(),
            "a clean session subscribed to nothing: {:?}",
            node.got
        );
    }

    /// When the subscriber reaped below connects to this node.
    #[derive(Debug, Clone, Copy)]
    enum Reconnects {
        /// Once this node's follower is past its record.
        AfterCatchUp,
        /// While this node holds its session for the follower.
        WhileHeld,
    }

    /// The dead node "b" had delivered messages 1..=5 to the persistent subscriber: its
    /// record's cursor is at 6.
    fn dead_nodes_record() -> Resume {
        Resume {
            writer: makelaar_cluster::NodeId::new("b").unwrap(),
            cursors: vec![Cursor {
                partition: 0,
                next: 6,
                writer_through: 0,
            }],
            outbound: Vec::new(),
            writer_late: Vec::new(),
        }
    }

    /// This node reaped "b" and is handed the subscriber's session at `at`, its will (if
    /// any) due in `will_in`.
    fn reaped(node: &mut Node, at: Instant, will: Option<KeptWill>, will_in: Duration) {
        let snapshot = SessionSnapshot {
            will,
            ..subscribed()
        };
        node.router.cluster_event(
            at,
            FromCluster::Orphan {
                client_id: Arc::from(SUB),
                snapshot,
                will_in,
                expires_in: Some(Duration::from_secs(600)),
                resume: Some(dead_nodes_record()),
            },
        );
        node.settle();
    }

    /// The notice that `SUB` moved to another node, claimed there at `revision`.
    fn moved_notice(revision: u64) -> FromCluster {
        FromCluster::Moved {
            client_id: Arc::from(SUB),
            revision: makelaar_cluster::Revision::new(revision).unwrap(),
        }
    }

    /// Issue 15, a partition run (260 QoS 2 duplicates at `sub2`): a claim on another node,
    /// its registry write answered seconds late, told this node the client had moved, while
    /// the client had connected here again under a newer claim. Obeyed, the notice made this
    /// node write the connected session's record no more while it went on delivering, and
    /// the next node resumed the session from an old record. A notice older than this
    /// node's claim is ignored: the connection stays, its QoS 2 deliveries still wait for
    /// checkpoints, and the records go on saying where it stands [MQTT-4.3.3-*].
    #[test]
    fn a_moved_notice_older_than_the_connections_claim_is_ignored() {
        let mut node = Node::new(3);
        node.connect(1);
        node.claimed_with(1, 5, None, false);
        node.published_elsewhere(10);
        node.router.cluster_event(Instant::now(), moved_notice(4));
        node.settle();
        assert!(taken_in(&node), "the session stays");
        let before = node.records.len();
        node.published_elsewhere(12);
        assert_eq!(node.got_by(1), [10, 12], "delivered on the same connection");
        let last = node.records[before..]
            .iter()
            .rev()
            .find_map(|r| r.as_ref())
            .expect("a checkpoint went out before the QoS 2 PUBLISH");
        assert_eq!(last.cursors[0].next, 5, "it says the follower passed 12");
        // Once the client has left, a notice from a newer claim is obeyed: the copy here
        // is dropped.
        node.lost(1);
        node.router.cluster_event(Instant::now(), moved_notice(6));
        node.settle();
        assert!(!taken_in(&node), "forgotten for the other node's claim");
    }

    /// A hand-over request for `SUB` from a claim that read the registry at `revision`.
    fn hand_over_request(revision: u64) -> FromCluster {
        FromCluster::Release(makelaar_cluster::cluster::ReleaseRequest {
            client: makelaar_cluster::ClientKey::new(SUB),
            revision: makelaar_cluster::Revision::new(revision).unwrap(),
            reply: None,
        })
    }

    /// Issue 15, a short partition run (8,356 acknowledged messages lost at `sub0` and
    /// `sub1`): a claim on another node, older than the subscriber's connection here, kept
    /// asking this node to close it. The request was ignored, but still passed to the
    /// sessions task, which answered it and wrote the session's record no more: its
    /// checkpoints never came, and the QoS 2 deliveries waiting for them (and all behind
    /// them) never went out. Ignored, it reaches nobody: the connection goes on getting
    /// every message [MQTT-4.3.3-*], and its records go on saying where it stands.
    #[test]
    fn a_hand_over_request_older_than_the_connections_claim_changes_nothing() {
        let mut node = Node::new(3);
        node.connect(1);
        node.claimed_with(1, 5, None, false);
        node.published_elsewhere(10);
        node.router
            .cluster_event(Instant::now(), hand_over_request(4));
        node.settle();
        assert!(node.released.is_empty(), "not answered, not handed on");
        let before = node.records.len();
        node.published_elsewhere(11);
        node.published_elsewhere(12);
        assert_eq!(
            node.got_by(1),
            [10, 11, 12],
            "delivered on the same connection"
        );
        assert!(node.records.len() > before, "its record is still written");
        // A request from a newer claim is obeyed: the connection ends.
        node.router
            .cluster_event(Instant::now(), hand_over_request(6));
        node.settle();
        assert_eq!(node.released.len(), 1, "answered");
        node.published_elsewhere(14);
        assert_eq!(node.got_by(1), [10, 11, 12], "the connection was closed");
    }

    fn fenced(claim: u64) -> FromCluster {
        FromCluster::Fenced {
            client_id: Arc::from(SUB),
            claim: makelaar_cluster::Revision::new(claim).unwrap(),
            will_in_cluster: false,
        }
    }

    /// A record write refused because another node took the session ends the connection
    /// here [MQTT-3.1.4-3], but not when the write was of an older claim than the
    /// connection's: its Store was on its way when this node claimed the id again, and the
    /// newer connection read the record after that other node's write.
    #[test]
    fn a_refused_write_of_an_older_claim_does_not_end_a_newer_connection() {
        let mut node = Node::new(3);
        node.connect(1);
        node.claimed_with(1, 5, None, false);
        node.published_elsewhere(10);
        node.event(fenced(4));
        node.published_elsewhere(11);
        assert_eq!(node.got_by(1), [10, 11], "the connection stays");
        node.event(fenced(5));
        node.published_elsewhere(12);
        assert_eq!(node.got_by(1), [10, 11], "the connection was closed");
        assert!(!taken_in(&node), "the session is the other node's");
    }

    fn claimed_elsewhere(revision: u64) -> FromCluster {
        FromCluster::ClaimedElsewhere {
            client_id: Arc::from(SUB),
            revision: makelaar_cluster::Revision::new(revision).unwrap(),
        }
    }

    /// Issue 15 (late appends): a publisher's acknowledgement waits until this node's
    /// follower is past its message, not only until the append returns: the follower meets
    /// every claim's barrier before it first (see the next test) [MQTT-4.3.2-*].
    #[test]
    fn an_acknowledgement_waits_until_this_nodes_follower_is_past_the_message() {
        let mut node = Node::new(1);
        node.connect_as(1, "pub", true, None);
        node.claimed_with(1, 5, None, false);
        node.publishes(1, 7, 1);
        node.batch_appended(&[1]);
        assert!(node.acks_on(1).is_empty(), "appended, not followed yet");
        node.follow(1);
        assert_eq!(node.acks_on(1), [7]);
        node.publishes(1, 8, 2);
        node.batch_appended(&[2]);
        node.follow(2);
        assert_eq!(node.acks_on(1), [7, 8], "QoS 2: PUBREC alike");
    }

    /// With `[cluster] fence_late_appends = false` an acknowledgement goes when the append
    /// returns, as before the fence (its message names no claim, so no reader drops it).
    #[test]
    fn without_the_fence_an_acknowledgement_goes_when_the_append_returns() {
        let mut node = Node::new(1);
        if let Some(c) = node.router.cluster.as_mut() {
            c.fence_late_appends = false;
        }
        node.connect_as(1, "pub", true, None);
        node.claimed_with(1, 5, None, false);
        node.publishes(1, 7, 1);
        node.batch_appended(&[1]);
        assert_eq!(node.acks_on(1), [7], "not waiting for the follower");
    }

    /// Issue 15 (late appends: QoS 2 messages of unacknowledged publishes delivered twice):
    /// another node claimed the publisher, and its barrier reached the partition before the
    /// publisher's message from here. Every reader drops that message
    /// (`makelaar_cluster::barrier`), so it is never acknowledged, nor anything the
    /// connection sends after; the connection is closed as superseded (0x8E)
    /// [MQTT-3.1.4-3]. A barrier of an older claim changes nothing.
    #[test]
    fn a_barrier_of_a_newer_claim_before_its_message_fences_the_publisher_here() {
        let mut node = Node::new(1);
        node.connect_as(1, "pub", true, None);
        node.claimed_with(1, 5, None, false);
        node.barrier("pub", 4);
        node.publishes(1, 7, 1);
        node.batch_appended(&[1]);
        node.follow(2);
        assert_eq!(node.acks_on(1), [7], "an older claim's barrier");
        assert!(node.owner_checks.is_empty());

        node.publishes(1, 8, 3);
        node.barrier("pub", 9);
        assert_eq!(node.owner_checks, [(1, 5)], "closed as superseded");
        node.batch_appended(&[3]);
        node.follow(4);
        node.publishes(1, 9, 5);
        node.batch_appended(&[5]);
        node.follow(5);
        assert_eq!(
            node.acks_on(1),
            [7],
            "nothing after the barrier acknowledged"
        );
    }

    /// The same when the barrier passed while the connection's claim was still under way
    /// (another node claimed the id meanwhile): registered under its older claim, the
    /// connection is fenced at once.
    #[test]
    fn a_barrier_of_a_newer_claim_passed_during_the_claim_fences_the_connection() {
        let mut node = Node::new(1);
        node.connect_as(1, "pub", true, None);
        node.barrier("pub", 9);
        assert!(node.owner_checks.is_empty(), "nothing registered yet");
        node.claimed_with(1, 5, None, false);
        assert_eq!(node.owner_checks, [(1, 5)], "closed as superseded");
        node.publishes(1, 7, 1);
        node.batch_appended(&[1]);
        node.follow(2);
        assert!(node.acks_on(1).is_empty(), "nothing acknowledged");
    }

    /// Issue 15 (a link cut: a client id served by two nodes for 26 s): another node's
    /// claim of a client connected here, written without this node's answer (its hand-over
    /// request never came), seen by the registry watch: the sessions task is told, and the
    /// connection closed when it answers [MQTT-3.1.4-3]. Writes older than the
    /// connection's claim change nothing.
    #[test]
    fn another_nodes_claim_seen_in_the_registry_closes_the_connection_here() {
        let mut node = Node::new(3);
        node.connect(1);
        node.claimed_with(1, 5, None, false);
        let at_connect = node.owner_checks.len();
        node.event(claimed_elsewhere(4));
        assert_eq!(node.owner_checks.len(), at_connect, "an older write");
        assert_eq!(at_connect, 0);
        node.event(claimed_elsewhere(9));
        assert_eq!(node.owner_checks[at_connect..], [(1, 5)], "told");
        node.published_elsewhere(10);
        assert_eq!(
            node.got_by(1),
            [10],
            "still served until the sessions task answers"
        );
        let not_owner = FromCluster::NotOwner {
            conn: 1,
            revision: makelaar_cluster::Revision::new(5).unwrap(),
            will_in_cluster: true,
        };
        node.event(not_owner);
        node.published_elsewhere(11);
        assert_eq!(node.got_by(1), [10], "closed");
        node.event(claimed_elsewhere(12));
        assert_eq!(
            node.owner_checks.len(),
            at_connect + 1,
            "no claim left here"
        );
    }

    /// Issue 15 (the long schedule: eight QoS 2 messages twice at `sub0`): a session taken
    /// in while another client's hand-over record waited for a will of this node being
    /// retried. Its replay, queued behind that record, was set up once the will landed,
    /// with this node's own messages counted as of then: those routed to the session live
    /// since its adoption came again from the replay. Counted as of the adoption, each
    /// comes once [MQTT-4.3.3-*].
    #[test]
    fn a_replay_queued_behind_a_record_waiting_for_a_will_counts_what_was_routed_before_it() {
        let mut node = Node::new(3);
        node.connect_as(1, "sub1", false, None);
        node.claimed_reaped(1, 1);
        node.will_published(101);
        let id = node.will_retried(1);
        let release = FromCluster::Release(makelaar_cluster::cluster::ReleaseRequest {
            client: makelaar_cluster::ClientKey::new("sub1"),
            revision: makelaar_cluster::Revision::new(5).unwrap(),
            reply: None,
        });
        node.event(release);
        node.connect(2);
        node.claimed(2, 6, &delivered_through_2(), false);
        // Routed to the session live (it waits behind the replay), appended at 3.
        node.will_published(102);
        node.batch_appended(&[102]);
        assert!(node.replays.is_empty(), "behind the record waiting for 101");
        node.will_placed(id, Some(101));
        assert_eq!(node.replays.len(), 1);
        assert_eq!(node.replays[0].plan.partitions[0].own_through, 0);
        node.replayed(0);
        assert_eq!(node.got_by(2), [101, 102], "each once");
    }

    /// Whether this node's broker has the subscriber's session (it is not held).
    fn taken_in(node: &Node) -> bool {
        node.router.broker.session_snapshot(SUB).is_some()
    }

    /// Issue 15 (docs/cluster.md, "Faults: what is left"): this node reaps a dead node whose
    /// record of a persistent QoS 1/2 subscriber is ahead of this node's follower (the
    /// fault runs' QoS 2 duplicates). The session is held until the follower is past the
    /// record, so what the follower brings up to there (delivered on the dead node) never
    /// reaches it again; a CONNECT meanwhile waits for it and finds it (Session Present
    /// [MQTT-3.1.2-5]). Each message after the record's is delivered, QoS 2 ones exactly
    /// once [MQTT-4.3.3-*], QoS 1 ones [MQTT-4.3.2-*] not again after the record.
    fn reaped_session_ahead_of_the_follower(when: Reconnects) {
        // The log holds 1..=5; this node's follower has brought 1 and 2 only.
        let mut node = Node::new(3);
        for n in 3..=5 {
            node.appended_elsewhere(n);
        }
        reaped(&mut node, Instant::now(), None, Duration::ZERO);
        assert!(
            !taken_in(&node),
            "{when:?}: held while the follower is behind"
        );
        if let Reconnects::WhileHeld = when {
            node.connect(1);
            node.claimed_reaped(1, 1);
            assert!(node.connacks.is_empty(), "{when:?}: the CONNECT waits");
        }
        node.follow(3);
        node.follow(4);
        assert!(!taken_in(&node), "{when:?}: 5 is not here yet");
        node.follow(5);
        assert!(taken_in(&node), "{when:?}: taken in past the record");
        if let Reconnects::AfterCatchUp = when {
            node.connect(1);
            node.claimed_reaped(1, 1);
        }
        assert_eq!(node.connacks, [true], "{when:?}: Session Present");
        while !node.replays.is_empty() {
            node.replayed(0);
        }
        for n in 6..=9 {
            node.published_elsewhere(n);
        }
        node.assert_got(6, 9, &format!("{when:?}"));
        assert!(
            node.got.iter().all(|&(n, _, _)| n >= 6),
            "{when:?}: nothing the dead node had delivered: {:?}",
            node.got
        );
    }

    /// Issue 15, a long fault run (a persistent subscriber resumed with Session Present 0
    /// on its next node, its subscriptions gone): a node that forgets its copy of a session
    /// because another node has it now (the notice that the client moved, a claim that
    /// finds the record written elsewhere, a fenced write, a reaped record replacing a
    /// stale copy) must not delete the record. The delete went to the cluster behind the
    /// appends before it and landed after this node's next claim of the same client id had
    /// made the record its own again [MQTT-4.1.0-1].
    #[test]
    fn a_session_forgotten_because_it_moved_deletes_no_record() {
        let mut node = Node::new(3);
        node.connect(1);
        node.claimed_with(1, 1, None, false);
        node.lost(1);
        assert!(taken_in(&node), "offline here");
        node.router.cluster_event(Instant::now(), moved_notice(100));
        node.settle();
        assert!(!taken_in(&node), "forgotten here");
        assert!(
            node.deletes.is_empty(),
            "no delete of the record the other node has: {:?}",
            node.deletes
        );
        // The same when a reaped record replaces a stale copy and is held for the
        // follower: the record this node just wrote is not deleted either.
        let mut node = Node::new(3);
        node.connect(1);
        node.claimed_with(1, 1, None, false);
        node.lost(1);
        for n in 3..=5 {
            node.appended_elsewhere(n);
        }
        reaped(&mut node, Instant::now(), None, Duration::ZERO);
        assert!(!taken_in(&node), "held while the follower is behind");
        assert!(
            node.deletes.is_empty(),
            "no delete of the reaped record: {:?}",
            node.deletes
        );
    }

    /// Issue 15, the long fault run's QoS 2 duplicates at `sub1`: the subscriber left this
    /// node (its session offline here) and moved to node "b", which never told this node
    /// (cut off at the time): this node's copy goes on queueing what "b" delivers. Then "b"
    /// dies and this node reaps it: the session's record, written as this node's, says
    /// where "b" stood. When the client comes back here, it must get what came after
    /// that, each message once [MQTT-4.3.3-*], not this node's stale queue again.
    #[test]
    fn a_reaped_session_replaces_this_nodes_stale_copy() {
        let mut node = Node::new(3);
        node.connect(1);
        node.claimed_with(1, 1, None, false);
        assert_eq!(node.connacks, [true], "its subscriptions from the cluster");
        for n in 3..=4 {
            node.published_elsewhere(n);
        }
        node.assert_got(3, 4, "connected here first");
        node.lost(1);
        // On "b" meanwhile, the client got 5..=8; this node's copy queued them.
        for n in 5..=8 {
            node.published_elsewhere(n);
        }
        // "b" dies; its record says it had delivered 5..=8.
        let resume = Resume {
            writer: makelaar_cluster::NodeId::new("b").unwrap(),
            cursors: vec![Cursor {
                partition: 0,
                next: 9,
                writer_through: 0,
            }],
            outbound: Vec::new(),
            writer_late: Vec::new(),
        };
        node.router.cluster_event(
            Instant::now(),
            FromCluster::Orphan {
                client_id: Arc::from(SUB),
                snapshot: subscribed(),
                will_in: Duration::ZERO,
                expires_in: Some(Duration::from_secs(600)),
                resume: Some(resume),
            },
        );
        node.settle();
        while !node.replays.is_empty() {
            node.replayed(0);
        }
        node.published_elsewhere(9);
        node.connect(2);
        node.claimed_reaped(2, 2);
        assert_eq!(node.connacks, [true, true], "Session Present");
        while !node.replays.is_empty() {
            node.replayed(0);
        }
        node.published_elsewhere(10);
        assert_eq!(
            node.got_by(2),
            [9, 10],
            "nothing that \"b\" had delivered comes again"
        );
    }

    #[test]
    fn a_reaped_session_ahead_of_the_follower_gets_each_message_once() {
        for when in [Reconnects::AfterCatchUp, Reconnects::WhileHeld] {
            reaped_session_ahead_of_the_follower(when);
        }
    }

    /// A will waiting out its delay in a held session is published when due, once: the
    /// session is taken in then (the follower still behind), and the broker's due will goes
    /// with the record write that takes it out of the record, as for any session here.
    /// Its client back before that (a CONNECT waiting for the session) drops it
    /// [MQTT-3.1.3-9].
    #[test]
    fn a_held_orphans_will_is_published_once_when_due_unless_its_client_is_back() {
        for back in [false, true] {
            let mut node = Node::new(3);
            for n in 3..=5 {
                node.appended_elsewhere(n);
            }
            let will = KeptWill {
                will: Box::new(Will {
                    topic: "gone/sub2".into(),
                    payload: bytes::Bytes::from_static(b"bye"),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    properties: makelaar_proto::Properties::default(),
                }),
                username: None,
            };
            let t0 = Instant::now();
            reaped(&mut node, t0, Some(will), Duration::from_secs(2));
            if back {
                node.connect(1);
                node.claimed_reaped(1, 1);
            }
            let timers = |node: &mut Node, at: Instant| {
                node.router.orphans_timed(at);
                node.router.broker.handle_timeout(at);
                node.settle();
            };
            timers(&mut node, t0 + Duration::from_secs(1));
            assert!(!taken_in(&node), "back: {back}: held, its will not due yet");
            let due = t0 + Duration::from_secs(2);
            let deadline = node
                .router
                .cluster
                .as_ref()
                .and_then(ClusterSide::next_orphan_deadline);
            let expected = if back { t0 + CATCH_UP_PATIENCE } else { due };
            assert_eq!(deadline, Some(expected), "back: {back}: the router's timer");
            timers(&mut node, due);
            assert_eq!(
                taken_in(&node),
                !back,
                "back: {back}: taken in when its will is due"
            );
            if back {
                for seq in 3..=5 {
                    node.follow(seq);
                }
                assert_eq!(node.connacks, [true], "Session Present");
            }
            // Its record waits for its replay (what it holds is not all here before).
            while !node.replays.is_empty() {
                node.replayed(0);
            }
            let published = usize::from(!back);
            assert_eq!(node.wills_written, published, "back: {back}");
            timers(&mut node, due + CATCH_UP_PATIENCE);
            assert_eq!(node.wills_written, published, "back: {back}: once");
        }
    }

    /// A held session whose follower does not catch up (stalled) is taken in all the same
    /// after [`CATCH_UP_PATIENCE`]: never dropped; a CONNECT waiting for it is then decided
    /// (Session Present), not refused.
    #[test]
    fn a_held_orphan_is_taken_in_after_the_bound_when_the_follower_stalls() {
        let mut node = Node::new(3);
        node.appended_elsewhere(3);
        let t0 = Instant::now();
        reaped(&mut node, t0, None, Duration::ZERO);
        node.connect(1);
        node.claimed_reaped(1, 1);
        node.router
            .orphans_timed(t0 + CATCH_UP_PATIENCE - Duration::from_millis(1));
        node.settle();
        assert!(!taken_in(&node));
        assert!(node.connacks.is_empty(), "the CONNECT waits");
        node.router.orphans_timed(t0 + CATCH_UP_PATIENCE);
        node.settle();
        assert!(taken_in(&node), "taken in after the bound");
        assert_eq!(node.connacks, [true], "Session Present");
        assert_eq!(node.replays.len(), 1, "what it held or missed is read back");
    }

    /// A CONNECT with Clean Start for a held session takes it in and ends it (a clean
    /// session, Session Present 0 [MQTT-3.1.2-4]); a notice that the client moved to
    /// another node drops a held session (that node has it, and decides its will).
    #[test]
    fn a_held_orphan_meets_a_clean_start_and_a_move() {
        let mut node = Node::new(3);
        node.appended_elsewhere(3);
        reaped(&mut node, Instant::now(), None, Duration::ZERO);
        node.connect_with(1, true, None);
        node.claimed_reaped(1, 1);
        assert_eq!(node.connacks, [false]);
        assert!(node.router.cluster.as_ref().unwrap().orphans.is_empty());
        node.follow(3);
        node.published_elsewhere(4);
        assert!(node.got.is_empty(), "a clean session: {:?}", node.got);

        let mut node = Node::new(3);
        node.appended_elsewhere(3);
        reaped(&mut node, Instant::now(), None, Duration::ZERO);
        node.router.cluster_event(Instant::now(), moved_notice(100));
        node.settle();
        assert!(node.router.cluster.as_ref().unwrap().orphans.is_empty());
        node.router
            .orphans_timed(Instant::now() + CATCH_UP_PATIENCE);
        assert!(!taken_in(&node), "dropped, not taken in later");
    }

    /// A CONNECT whose claim began before this node stepped down (and came back as a new
    /// incarnation) is refused, server unavailable: the claim may have written the
    /// registry entry under the retired incarnation, whose reaper has already taken what
    /// it held, so nobody would publish the client's will [MQTT-3.1.2-8] when this node
    /// dies. The client's next CONNECT, claimed under the current incarnation, is served.
    #[test]
    fn a_claim_that_began_before_a_step_down_is_refused_and_the_next_is_served() {
        let mut node = Node::new(1);
        node.connect(1);
        node.router
            .cluster_event(Instant::now(), FromCluster::StepDown);
        node.router
            .cluster_event(Instant::now(), FromCluster::Serving);
        node.claimed_reaped(1, 1);
        assert_eq!(node.connack_reasons, [ReasonCode::SERVER_UNAVAILABLE]);
        assert!(!node
            .router
            .cluster
            .as_ref()
            .unwrap()
            .claims
            .contains_key(&1));
        node.connect(2);
        node.claimed_reaped(2, 2);
        assert_eq!(
            node.connack_reasons,
            [ReasonCode::SERVER_UNAVAILABLE, ReasonCode::SUCCESS]
        );
        assert!(node
            .router
            .cluster
            .as_ref()
            .unwrap()
            .claims
            .contains_key(&2));
    }

    /// The record of the subscriber's session written by node "b", which had delivered
    /// messages 1 and 2.
    fn delivered_through_2() -> Resume {
        Resume {
            writer: makelaar_cluster::NodeId::new("b").unwrap(),
            cursors: vec![Cursor {
                partition: 0,
                next: 3,
                writer_through: 0,
            }],
            outbound: Vec::new(),
            writer_late: Vec::new(),
        }
    }

    /// Issue 15 (docs/cluster.md, "Faults: what is left"; a partition run, `probe-8e896f3f`):
    /// a will published here [MQTT-3.1.2-8] whose append failed and is tried again apart,
    /// and a session taken in from its record meanwhile (it was not here when the will was
    /// routed). Its replay waits for the will's place in the log and reads it: the session
    /// gets the will once [MQTT-4.3.2-*], and another will routed after the adoption (live)
    /// once too, though it landed before the retried one. A subscriber connected when the
    /// will was routed gets it once (live, nothing from a replay).
    #[test]
    fn a_will_retried_while_a_session_is_taken_in_reaches_it_once() {
        let mut node = Node::new(3);
        // "sub1", connected here with its subscription before the will.
        node.connect_as(1, "sub1", false, None);
        node.claimed_reaped(1, 1);
        node.will_published(101);
        let id = node.will_retried(1);
        assert_eq!(node.got_by(1), [101], "the local path");
        node.published_elsewhere(3);
        // The subscriber's session is taken in (Session Present) after the will was routed.
        node.connect(2);
        node.claimed(2, 2, &delivered_through_2(), false);
        assert_eq!(node.connacks, [true, true]);
        assert!(
            node.replays.is_empty(),
            "the replay waits for the will's place in the log"
        );
        // Another will, routed after the adoption (to the session live), lands first.
        node.will_published(102);
        node.batch_appended(&[102]);
        node.follow(4);
        // The retried will lands at 5; this node's follower passes it by (its own).
        node.will_placed(id, Some(101));
        node.follow(5);
        assert_eq!(node.replays.len(), 1, "asked for once the will is placed");
        assert_eq!(node.replays[0].plan.partitions[0].to, 5);
        node.replayed(0);
        node.published_elsewhere(6);
        assert_eq!(node.got_by(2), [3, 101, 102, 6], "the session taken in");
        assert_eq!(
            node.got_by(1),
            [101, 3, 102, 6],
            "the session connected before"
        );
    }

    /// A retried will given up (after a minute, an error in the log) releases the replays
    /// that waited for it: they read what they would have without it, also across a
    /// step-down of this node meanwhile (the session, disconnected, waits offline), and the
    /// session's record is written once its replay is in.
    #[test]
    fn a_retried_will_given_up_does_not_hold_the_replay() {
        let mut node = Node::new(3);
        node.will_published(101);
        let id = node.will_retried(1);
        node.published_elsewhere(3);
        node.connect(1);
        node.claimed(1, 1, &delivered_through_2(), false);
        node.router
            .cluster_event(Instant::now(), FromCluster::StepDown);
        node.router
            .cluster_event(Instant::now(), FromCluster::Serving);
        node.settle();
        assert!(node.replays.is_empty(), "waits for the will");
        let records = node.records.len();
        node.will_placed(id, None);
        assert_eq!(node.replays.len(), 1, "goes on without it");
        assert_eq!(node.replays[0].plan.partitions[0].to, 3);
        node.replayed(0);
        assert!(node.records.len() > records, "its record is written then");
        assert!(node.router.cluster.as_ref().unwrap().resumes.is_empty());
    }

    /// Issue 15 (found while tracing the long schedule's will twice): a client whose
    /// CONNECT waited on a slow claim gives up and closes its socket; the
    /// claim, back after that, has taken the old connection's will out of the cluster's
    /// record, so no other node would ever decide it. It is decided here as the CONNECT
    /// would have (a clean start: published [MQTT-3.1.2-8]), not dropped with the
    /// connection.
    #[test]
    fn a_will_taken_by_a_claim_whose_connection_went_is_still_published() {
        let mut node = Node::new(3);
        node.connect(1);
        node.claimed_reaped(1, 1);
        node.connect_as(2, "probe", true, None);
        // Its outbox stays watched (unlike `Node::lost`): a CONNACK sent to it would show.
        node.router
            .handle(Instant::now(), ToRouter::Lost { conn: 2 });
        let FromCluster::Will { will, .. } = numbered_will(101) else {
            unreachable!()
        };
        let claim = crate::cluster::Claim {
            revision: makelaar_cluster::Revision::new(2).unwrap(),
            session: None,
            will: Some(makelaar_core::broker::RemoteWill {
                will: will.will,
                username: None,
                expiry_interval: 0,
                offline_for: None,
            }),
            resume: None,
            moved_away: true,
            tails: Vec::new(),
        };
        node.event(FromCluster::Claimed {
            conn: 2,
            result: Ok(claim),
        });
        assert_eq!(node.got_by(1), [101], "the will, once");
        assert_eq!(
            node.connacks.len(),
            1,
            "no CONNACK for the connection that went"
        );
    }

    /// Issue 15 (the 180-fault run: 936 QoS 2 messages twice at `sub2`): the subscriber's
    /// session is offline here, then it went on on another node. Its CONNECT here gives up
    /// before the claim is back; the claim read a record the other node wrote
    /// (`moved_away`). The copy here is stale: forgotten then, so that a hand-over asked
    /// of this node next does not write it over the newer record (the next node resumed
    /// from it and sent again what the client had had [MQTT-4.3.3-*]).
    #[test]
    fn a_claim_whose_connection_went_forgets_the_copy_another_node_had_since() {
        for moved_away in [false, true] {
            let mut node = Node::new(3);
            node.connect(1);
            node.claimed_reaped(1, 1);
            node.lost(1);
            assert!(node.router.broker.session_snapshot(SUB).is_some());
            node.connect(2);
            node.router
                .handle(Instant::now(), ToRouter::Lost { conn: 2 });
            node.claimed(2, 5, &dead_nodes_record(), moved_away);
            let kept = node.router.broker.session_snapshot(SUB).is_some();
            assert_eq!(kept, !moved_away, "moved away: {moved_away}");
            let before = node.records.len();
            node.event(hand_over_request(6));
            let written = node.records.len() > before;
            assert_eq!(written, !moved_away, "moved away: {moved_away}");
            assert_eq!(node.released.len(), 1, "answered");
        }
    }

    /// Issue 15 (a 40-fault run: `sub2` got a will twice): a will published here whose
    /// append failed reached the subscriber connected here at once, and the subscriber was
    /// handed over to another node's claim before the will landed. The record written then
    /// said nothing of the will (its place in the log was not known), so the session,
    /// resumed from it on its way back here, got the will again from its replay. The
    /// hand-over's record now waits for the will's place and lists it; the replay skips it:
    /// once [MQTT-4.3.2-*].
    #[test]
    fn a_will_retried_while_its_subscriber_is_handed_over_reaches_it_once() {
        let mut node = Node::new(3);
        node.connect(1);
        node.claimed_reaped(1, 1);
        node.will_published(101);
        let id = node.will_retried(1);
        assert_eq!(node.got_by(1), [101], "the local path, at once");
        let before = node.records.len();
        node.event(hand_over_request(5));
        assert_eq!(node.records.len(), before, "the record waits for the will");
        assert!(
            node.released.is_empty(),
            "the answer comes after the record"
        );
        // The will lands at 3, past this node's follower (3) and its batches (none).
        node.will_placed(id, Some(101));
        assert_eq!(node.released.len(), 1, "answered");
        let record = node.records[before..]
            .iter()
            .rev()
            .find_map(|r| r.clone())
            .expect("the hand-over's record");
        assert_eq!(record.cursors[0].next, 3);
        assert_eq!(record.writer_late, [(0, 3)], "{record:?}");
        node.follow(3);
        node.published_elsewhere(5);
        // The other node wrote nothing new: the session comes back with this record.
        node.released.clear();
        node.connect(2);
        let resume = Resume {
            writer: makelaar_cluster::NodeId::new("a").unwrap(),
            cursors: record.cursors,
            outbound: record.outbound,
            writer_late: record.writer_late,
        };
        node.claimed(2, 6, &resume, true);
        assert_eq!(node.replays.len(), 1);
        node.replayed(0);
        node.published_elsewhere(7);
        assert_eq!(node.got_by(2), [5, 7], "the will once, nothing lost");
    }

    /// The same hand-over, with another will of this node routed after it and appended
    /// before the retried one lands: the record, written once that one lands, counts this
    /// node's messages as they were at the hand-over (the later will is not the session's
    /// yet), so the session resumed from it gets the later will, and the retried one once.
    #[test]
    fn a_record_waiting_for_a_will_counts_only_what_was_routed_before_it() {
        let mut node = Node::new(3);
        node.connect(1);
        node.claimed_reaped(1, 1);
        node.will_published(101);
        let id = node.will_retried(1);
        let before = node.records.len();
        node.event(hand_over_request(5));
        node.will_published(102);
        node.batch_appended(&[102]);
        assert_eq!(node.records.len(), before, "the record waits for the will");
        node.will_placed(id, Some(101));
        let record = node.records[before..]
            .iter()
            .rev()
            .find_map(|r| r.clone())
            .expect("the hand-over's record");
        assert_eq!(record.cursors[0].writer_through, 0, "{record:?}");
        assert_eq!(record.writer_late, [(0, 4)], "{record:?}");
        node.follow(3);
        node.follow(4);
        node.released.clear();
        node.connect(2);
        let resume = Resume {
            writer: makelaar_cluster::NodeId::new("a").unwrap(),
            cursors: record.cursors,
            outbound: record.outbound,
            writer_late: record.writer_late,
        };
        node.claimed(2, 6, &resume, true);
        node.replayed(0);
        assert_eq!(node.got_by(1), [101], "before the hand-over");
        assert_eq!(node.got_by(2), [102], "after it");
    }

    /// A will published here and a dead node's session taken over in the same router
    /// batch (the will's append went through at once): the session's replay waits for that
    /// append and reads the will, which the session, taken in after it was routed, got
    /// nowhere else [MQTT-3.1.2-8].
    #[test]
    fn a_will_routed_just_before_a_reaped_session_reaches_it() {
        let mut node = Node::new(3);
        node.router
            .cluster_event(Instant::now(), numbered_will(101));
        let orphan = FromCluster::Orphan {
            client_id: Arc::from(SUB),
            snapshot: subscribed(),
            will_in: Duration::ZERO,
            expires_in: Some(Duration::from_secs(600)),
            resume: Some(delivered_through_2()),
        };
        node.router.cluster_event(Instant::now(), orphan);
        node.settle();
        assert!(taken_in(&node));
        assert!(node.replays.is_empty(), "waits for the will's append");
        node.batch_appended(&[101]);
        node.follow(3);
        assert_eq!(node.replays.len(), 1);
        node.replayed(0);
        node.connect(1);
        node.claimed_reaped(1, 1);
        assert_eq!(node.connacks, [true]);
        assert_eq!(node.got_by(1), [101]);
    }
}
