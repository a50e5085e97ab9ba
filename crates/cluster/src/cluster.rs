//! The cluster layer as the router will use it: claim a client id, load and store a session
//! (fenced), publish at QoS 0, append QoS 1/2 messages to their partition, keep this node's
//! lease and find dead peers. The rules are the sans-IO modules'; this drives them against a
//! [`Backend`], with tokio's clock for the waits.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::backend::{Backend, BackendError, Bucket, StreamMessage};
use crate::barrier::{decode_claims, encode_claims, BarrierClaim, Fences, MAX_CLAIMS_PER_ROUND};
use crate::codec::{Reader, Writer};
use crate::envelope::Envelope;
use crate::ids::{ClientKey, MessageId, NodeId, Revision};
use crate::lease::{Expired, Incarnations, LeaseConfig, Leases, OwnLease, OwnState};
use crate::partition::{Partition, PartitionCount};
use crate::record::{
    DecodeError, NodeLease, RegistryEntry, SessionRecord, StoredWill, WillTaker, FORMAT,
};
use crate::replay::{ReplayPlan, Verdict};
use crate::stats::NodeStats;
use crate::subject::{decode_topic, encode_filter, encode_topic, Subject, ROOT_BARRIER};
use crate::takeover::{Claim, ClaimConfig, ClaimStep, Claimed, Fence};
use crate::wills;

/// The settings every node of one cluster shares, and this node's name.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node.
    pub node: NodeId,
    /// This start of the node: different at every start. The node takes a new one when it
    /// comes back from a step-down ([`Cluster::incarnation`], [`Incarnations`]).
    pub incarnation: u64,
    /// The first token of every subject and the start of every stream and bucket name
    /// (`mk`: subjects `mk.…`, buckets `mk_registry`, …, streams `mk_p0`, …).
    pub prefix: String,
    /// The number of partition streams.
    pub partitions: PartitionCount,
    /// Lease timings.
    pub lease: LeaseConfig,
    /// Claim timings.
    pub claim: ClaimConfig,
}

/// How often a claiming node asks again a live owner that did not answer its hand-over
/// ([`Cluster::chase_release`]), and for how long.
const CHASE_EVERY: Duration = Duration::from_secs(2);
const CHASE_FOR: Duration = Duration::from_secs(60);

/// The default number of partition streams.
pub const DEFAULT_PARTITIONS: PartitionCount = match PartitionCount::new(16) {
    Some(p) => p,
    None => PartitionCount::MIN,
};

impl ClusterConfig {
    /// This node with the defaults: prefix `mk`, [`DEFAULT_PARTITIONS`], the default lease
    /// and claim timings. `incarnation` should differ at every start ([`new_incarnation`]).
    pub fn new(node: NodeId, incarnation: u64) -> ClusterConfig {
        ClusterConfig {
            node,
            incarnation,
            prefix: "mk".to_owned(),
            partitions: DEFAULT_PARTITIONS,
            lease: LeaseConfig::default(),
            claim: ClaimConfig::default(),
        }
    }
}

/// An incarnation for a node starting now: the wall clock in nanoseconds since the Unix
/// epoch, so a restarted node differs from its earlier self.
pub fn new_incarnation() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A cluster operation that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// The engine failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A stored record does not decode.
    #[error("stored record for {key} does not decode: {error}")]
    Corrupt {
        /// Its key.
        key: String,
        /// Why.
        error: DecodeError,
    },
    /// The claim lost too many races.
    #[error(transparent)]
    Claim(#[from] crate::takeover::ClaimError),
    /// Another node owns the session now: this node must not write it again, and closes its
    /// connection for it.
    #[error("session {0} is owned by another node now")]
    Fenced(ClientKey),
    /// As [`ClusterError::Fenced`], but the record shows that an earlier write of this node
    /// under the same claim, whose answer got lost, took the will out of it before the other
    /// node wrote (see [`wills::taken_by_me`]): the will is this node's to publish.
    #[error("session {0} is owned by another node now, after this node took its will")]
    FencedAfterWillTaken(ClientKey),
    /// This node's lease is past its step-down instant by its own clock, or not held: it
    /// appends no message and writes no retained value until it holds its lease again.
    #[error("this node's cluster lease has lapsed: it stores no message until its lease is written again")]
    LeaseLapsed,
}

/// A request to hand a client id over, as the owner receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseRequest {
    /// The client id.
    pub client: ClientKey,
    /// The registry revision the claimer read.
    pub revision: Revision,
    /// Where to answer (after closing the connection and storing the session).
    pub reply: Option<String>,
}

impl ReleaseRequest {
    fn encode(client: &ClientKey, revision: Revision) -> Bytes {
        encode_client_revision(client, revision)
    }

    /// Reads a request's payload.
    pub fn decode(payload: &[u8], reply: Option<String>) -> Result<ReleaseRequest, DecodeError> {
        let (client, revision) = decode_client_revision(payload)?;
        Ok(ReleaseRequest {
            client,
            revision,
            reply,
        })
    }
}

/// The payload of a control message about a client id under a registry revision (a
/// hand-over request, a moved notice).
fn encode_client_revision(client: &ClientKey, revision: Revision) -> Bytes {
    let mut w = Writer::new(FORMAT);
    w.str(client.as_str());
    w.uint(revision.get());
    w.finish()
}

/// Reads what [`encode_client_revision`] wrote.
fn decode_client_revision(payload: &[u8]) -> Result<(ClientKey, Revision), DecodeError> {
    let mut r = Reader::new(payload, FORMAT)?;
    let client =
        ClientKey::from_key(&r.str("client")?).map_err(|_| DecodeError::BadValue("client"))?;
    let revision = Revision::new(r.uint("revision")?).ok_or(DecodeError::BadValue("revision"))?;
    r.end()?;
    Ok((client, revision))
}

/// A notice to a node that a client it had, disconnected, is claimed by another node now
/// ([`Cluster::notify_moved`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedNotice {
    /// The client id.
    pub client: ClientKey,
    /// The registry revision of the claim that moved it: a node that claimed the client
    /// since ignores the notice ([`crate::takeover::moved_is_stale`]).
    pub revision: Revision,
}

impl MovedNotice {
    fn encode(&self) -> Bytes {
        encode_client_revision(&self.client, self.revision)
    }

    /// Reads a notice's payload.
    pub fn decode(payload: &[u8]) -> Result<MovedNotice, DecodeError> {
        let (client, revision) = decode_client_revision(payload)?;
        Ok(MovedNotice { client, revision })
    }
}

/// What the lease task reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// This node could not refresh its lease for `ttl - margin`: stop serving.
    StepDown,
    /// This node holds its lease: serve (after the first write, and again after a
    /// step-down).
    Serving,
    /// A peer died; this node won the right to publish its wills.
    Reap(Expired),
}

/// What came of trying to reap a dead node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReapOutcome {
    /// This node publishes its wills.
    Won,
    /// Another survivor does.
    Lost,
    /// Its lease is still in the bucket: not dead (yet).
    StillAlive,
}

/// What a node that has just claimed a client id found of its session
/// ([`Cluster::load_claimed_session`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedSession {
    /// The session record, without the will when this node took it.
    pub record: Option<SessionRecord>,
    /// The node that wrote the record as it was read (the record above names this node
    /// when it took the will out): the one whose log its cursors count
    /// ([`crate::replay`]).
    pub written_by: Option<NodeId>,
    /// The fence the session's next write carries.
    pub fence: Fence,
    /// The will this node took out of the record, to decide by the takeover rules.
    pub will: Option<TakenWill>,
}

/// A will taken out of a session record, with what deciding it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakenWill {
    /// The will.
    pub will: StoredWill,
    /// The Session Expiry Interval of the session it belonged to.
    pub expiry_interval: u32,
    /// How long ago its connection ended; `None`: it was open when the record was written.
    pub offline_for: Option<Duration>,
}

/// A session record a dead node left, now this node's ([`Cluster::orphans`]): its registry
/// entry names this node, offline, at `claim`; the record is to be written at `fence`
/// (with [`wills::reaped`]) before anything of it is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    /// The client.
    pub client: ClientKey,
    /// The record as the dead node left it.
    pub record: SessionRecord,
    /// The record's revision as read.
    pub fence: Fence,
    /// The registry revision this node wrote: the session's claim from now on.
    pub claim: Revision,
}

/// A session record as a node gave it up to another node's claim, to be recognised when
/// it looks again whether the claimer took it ([`Cluster::take_abandoned`]): the record at
/// revision `at`, or any record `node` wrote under its claim `claim` (a write of its whose
/// answer got lost may have landed: its revision was never learnt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GivenUp {
    /// The node that wrote it.
    pub node: NodeId,
    /// That node's claim (registry revision) it was written under.
    pub claim: u64,
    /// Its revision, when the node learnt it.
    pub at: Option<Revision>,
}

impl GivenUp {
    /// `record` as read at `revision`.
    pub fn as_read(record: &SessionRecord, revision: Revision) -> GivenUp {
        GivenUp {
            node: record.node.clone(),
            claim: record.claim,
            at: Some(revision),
        }
    }

    /// Whether `record`, read at `revision`, is still the one given up: nobody wrote it
    /// since (a claimer's write names the claimer).
    pub fn is(&self, record: &SessionRecord, revision: Revision) -> bool {
        self.at == Some(revision) || (record.node == self.node && record.claim == self.claim)
    }
}

/// What a reaper found of a dead node's sessions ([`Cluster::orphans`]).
#[derive(Debug, Default)]
pub struct Orphans {
    /// The sessions taken over by this node.
    pub taken: Vec<Orphan>,
    /// The clients whose take-over failed on the engine, to be tried again.
    pub failed: Vec<ClientKey>,
    /// The sessions the dead node gave up to claims that may have failed
    /// ([`wills::given_up`]): to be taken back once the claims had their time.
    pub given_up: Vec<(ClientKey, GivenUp)>,
}

/// What one session record is to a dead node's reaper.
enum Left {
    Orphan(Box<Orphan>),
    GivenUp(GivenUp),
    Nothing,
}

/// A retained message set or cleared, as a watch sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedChange {
    /// The topic.
    pub topic: String,
    /// The message now retained; `None`: cleared.
    pub message: Option<Envelope>,
}

/// A client id registered by another node, as the registry watch sees it
/// ([`Cluster::watch_claims_elsewhere`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedElsewhere {
    /// The client id.
    pub client_id: String,
    /// The node the registry names now.
    pub node: NodeId,
    /// The revision of that write.
    pub revision: Revision,
}

/// A message of a partition stream, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogMessage {
    /// Its partition.
    pub partition: Partition,
    /// Its stream sequence there.
    pub seq: u64,
    /// Its topic.
    pub topic: String,
    /// The message.
    pub envelope: Envelope,
}

/// What a partition's follower delivers, in stream order ([`Cluster::follow_partition`]).
// Barriers are rare and every message is one of these, taken one at a time from the
// stream: boxing the message would cost an allocation per message on the delivery path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Followed {
    /// A message.
    Message(LogMessage),
    /// A claim's barrier ([`Cluster::barriers_since`]): no message, its position and the
    /// claims it stands for.
    Barrier {
        /// Its partition.
        partition: Partition,
        /// Its stream sequence there.
        seq: u64,
        /// The claims of its round ([`crate::barrier`]).
        claims: Vec<BarrierClaim>,
    },
    /// A late append, dropped ([`crate::barrier`]): its position only.
    Late {
        /// Its partition.
        partition: Partition,
        /// Its stream sequence there.
        seq: u64,
        /// Its publisher's client id.
        client: String,
    },
}

impl Followed {
    /// Its stream sequence.
    pub fn seq(&self) -> u64 {
        match self {
            Followed::Message(m) => m.seq,
            Followed::Barrier { seq, .. } | Followed::Late { seq, .. } => *seq,
        }
    }

    /// The message, if it is one.
    pub fn message(self) -> Option<LogMessage> {
        match self {
            Followed::Message(m) => Some(m),
            Followed::Barrier { .. } | Followed::Late { .. } => None,
        }
    }
}

/// What a replay read back ([`Cluster::replay`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replayed {
    /// The record's outbound entries found, with their index in its list.
    pub kept: Vec<(usize, LogMessage)>,
    /// Messages not yet delivered to the session, in stream order per partition.
    pub new: Vec<LogMessage>,
    /// New messages left out by the session's queue limits.
    pub dropped: usize,
    /// Outbound entries the stream no longer holds.
    pub missing: usize,
}

/// The cluster layer of one node over an engine.
pub struct Cluster<B> {
    backend: B,
    config: ClusterConfig,
    stats: Arc<NodeStats>,
    /// The sequences of the last barriers this node appended to the partitions, and when
    /// that began ([`Cluster::barriers_since`]).
    barriers: tokio::sync::Mutex<Option<Barriers>>,
    /// Claims waiting to be named by a round of barriers, numbered in the order they came.
    pending_claims: std::sync::Mutex<PendingClaims>,
    /// What the barriers this node's followers read said, for the replays
    /// ([`crate::barrier`]); written by the followers at each barrier only.
    fences: Arc<std::sync::Mutex<Fences>>,
    /// Clients whose append this node gave up (the engine answered with an error, or not
    /// in time: it may still be stored, late), and when: a claim of such a client here
    /// appends barriers as a claim from another node does ([`Cluster::gave_up_appends_of`]).
    given_up: std::sync::Mutex<HashMap<String, Instant>>,
    /// Changed by the lease task only (a step-down, the next lease write); read by every
    /// write that names this node's incarnation.
    incarnations: std::sync::Mutex<Incarnations>,
    /// The last [`MessageId`] counter given out ([`Cluster::next_message_id`]).
    message_ids: AtomicU64,
    /// Until when this node may store messages, by its own clock: its lease's step-down
    /// instant ([`OwnLease::step_down_at`]) in nanoseconds after `clock_base`. Written by
    /// the lease task only; [`NO_LEASE_TASK`] until it runs, 0 while no lease is held.
    store_until: AtomicU64,
    clock_base: Instant,
}

/// [`Cluster::store_until`] of a layer whose lease task never ran (tests of the layer
/// alone): it stores freely. A broker serves nothing before its lease task's first write.
const NO_LEASE_TASK: u64 = u64::MAX;

/// When a round of barriers began, the number of the last claim it named, and every
/// partition's barrier sequence (index, sequence), or why the round failed.
type Barriers = (Instant, u64, Result<Vec<(u16, u64)>, String>);

/// Claims waiting for a round of barriers to name them: the last number given out, and the
/// claims not yet taken by a round (in number order).
#[derive(Debug, Default)]
struct PendingClaims {
    last: u64,
    waiting: std::collections::VecDeque<(u64, BarrierClaim)>,
}

impl<B: Backend> Cluster<B> {
    /// The layer over a connected engine.
    pub fn new(backend: B, config: ClusterConfig) -> Cluster<B> {
        let stats = Arc::new(NodeStats::new(config.partitions));
        let incarnations = std::sync::Mutex::new(Incarnations::new(config.incarnation));
        Cluster {
            backend,
            config,
            stats,
            barriers: tokio::sync::Mutex::new(None),
            pending_claims: std::sync::Mutex::new(PendingClaims::default()),
            fences: Arc::new(std::sync::Mutex::new(Fences::default())),
            given_up: std::sync::Mutex::new(HashMap::new()),
            incarnations,
            message_ids: AtomicU64::new(0),
            store_until: AtomicU64::new(NO_LEASE_TASK),
            clock_base: Instant::now(),
        }
    }

    /// This node's incarnations (held for a moment: never across an await).
    fn incarnations(&self) -> std::sync::MutexGuard<'_, Incarnations> {
        // Its state is a few integers changed whole: one left by a panic is still whole.
        self.incarnations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The incarnation this node's registry entries and claims name now: the configured
    /// one until the node comes back from a step-down, a new one after each
    /// ([`Incarnations`]).
    pub fn incarnation(&self) -> u64 {
        self.incarnations().current()
    }

    /// What this node counts of its part in the cluster (for its metrics).
    pub fn stats(&self) -> &Arc<NodeStats> {
        &self.stats
    }

    /// The engine.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The configuration.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The core subject a topic's QoS 0 messages travel on.
    pub fn live_subject(&self, topic: &str) -> Subject {
        encode_topic(topic).under(&format!("{}.live", self.config.prefix))
    }

    /// The core subject a node follows for a plain filter (no `$share/GROUP/`).
    pub fn live_filter(&self, filter: &str) -> Subject {
        encode_filter(filter).under(&format!("{}.live", self.config.prefix))
    }

    /// A topic's partition and the stream subject its QoS 1/2 messages are appended on.
    pub fn partition_subject(&self, topic: &str) -> (Partition, Subject) {
        let p = self.config.partitions.of(topic);
        let s = encode_topic(topic).under(&format!("{}.p{}", self.config.prefix, p.index()));
        (p, s)
    }

    /// The subject on which `node` answers hand-over requests.
    pub fn release_subject(&self, node: &NodeId) -> Subject {
        Subject::from_tokens(&format!("{}.ctl.{node}.release", self.config.prefix))
    }

    /// The subject on which `node` hears that a client it had moved to another node.
    pub fn moved_subject(&self, node: &NodeId) -> Subject {
        Subject::from_tokens(&format!("{}.ctl.{node}.moved", self.config.prefix))
    }

    /// Tells `node`, which had `client` before this node claimed it (at `revision`), that
    /// the client moved: it drops what it still keeps of the session (an offline copy would
    /// go stale), unless it claimed the client again since. At most once: a node that
    /// misses it keeps its copy until the session expires there.
    pub async fn notify_moved(
        &self,
        node: &NodeId,
        client: &ClientKey,
        revision: Revision,
    ) -> Result<(), ClusterError> {
        let notice = MovedNotice {
            client: client.clone(),
            revision,
        };
        Ok(self
            .backend
            .publish(self.moved_subject(node), notice.encode())
            .await?)
    }

    /// Follows the notices that clients this node had moved to another node
    /// ([`Cluster::notify_moved`]).
    pub async fn moved_clients(&self) -> Result<mpsc::Receiver<MovedNotice>, ClusterError> {
        let mut sub = self
            .backend
            .subscribe(self.moved_subject(&self.config.node), None)
            .await?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            while let Some(d) = sub.next().await {
                match MovedNotice::decode(&d.payload) {
                    Ok(notice) => {
                        if tx.send(notice).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "ignoring a malformed moved-client notice")
                    }
                }
            }
        });
        Ok(rx)
    }

    /// The subject of this node's barriers in a partition stream (`<prefix>.p<i>.b.<node>`).
    pub fn barrier_subject(&self, p: Partition) -> Subject {
        Subject::from_tokens(&format!(
            "{}.p{}.{ROOT_BARRIER}.{}",
            self.config.prefix,
            p.index(),
            self.config.node
        ))
    }

    /// A barrier in every partition, appended after `since`: everything appended and
    /// acknowledged before `since` is below it. The barrier names `claim` (when given), so
    /// that every reader drops what the client's earlier connections get appended after it
    /// ([`crate::barrier`]). A round of barriers begun after `since` that names the claim is
    /// shared, so that many clients connecting at once (a node's clients moving after its
    /// loss) cost a round or two, not one each; so is its failure, so that the claims
    /// waiting behind a round that found no leader do not each wait out a timeout of their
    /// own, one after the other.
    ///
    /// An append, not a read of the streams' last sequences: it is ordered by the stream's
    /// elected leader after everything that leader acknowledged. A read is not: asked of a
    /// stream without a leader (JetStream electing one under a cut link), NATS answers with
    /// a replica's own state, which can be behind what was acknowledged (issue 15's long
    /// fault run: a client that moved while the streams had no leader was let in before
    /// this node's follower passed its last acknowledged message, and its next message
    /// overtook it at the subscribers here). With no leader, the append fails and so does
    /// the claim (the client is refused, Server unavailable, and tries again).
    pub async fn barriers_since(
        &self,
        since: Instant,
        claim: Option<BarrierClaim>,
    ) -> Result<Vec<(u16, u64)>, ClusterError> {
        let number = claim.map_or(0, |c| {
            let mut pending = self.pending();
            pending.last += 1;
            let n = pending.last;
            pending.waiting.push_back((n, c));
            n
        });
        let mut last = self.barriers.lock().await;
        loop {
            if let Some((at, named, outcome)) = last.as_ref() {
                if *at >= since && *named >= number {
                    tracing::trace!(age = ?at.elapsed(), "partition barriers shared");
                    return outcome.clone().map_err(|e| BackendError::Engine(e).into());
                }
            }
            let at = Instant::now();
            let (named, claims) = self.take_pending();
            let payload = encode_claims(&claims);
            let appends = self.config.partitions.all().map(|p| {
                let payload = payload.clone();
                async move {
                    let seq = self
                        .backend
                        .append(p, self.barrier_subject(p), payload)
                        .await?;
                    Ok::<_, ClusterError>((p.index(), seq))
                }
            });
            let outcome = futures_util::future::try_join_all(appends).await;
            *last = Some((
                at,
                named,
                outcome.as_ref().map_err(ToString::to_string).cloned(),
            ));
        }
    }

    /// The claims waiting for a round of barriers (held for a moment: never across an await).
    fn pending(&self) -> std::sync::MutexGuard<'_, PendingClaims> {
        // A queue changed whole under the lock: one left by a panic is still whole.
        self.pending_claims
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The claims the next round of barriers names, oldest first, and the number of the
    /// last of them (every claim numbered up to it is named by this round or an earlier one).
    fn take_pending(&self) -> (u64, Vec<BarrierClaim>) {
        let mut pending = self.pending();
        let n = pending.waiting.len().min(MAX_CLAIMS_PER_ROUND);
        let taken: Vec<_> = pending.waiting.drain(..n).collect();
        let named = match pending.waiting.front() {
            Some((next, _)) => next - 1,
            None => pending.last,
        };
        (named, taken.into_iter().map(|(_, c)| c).collect())
    }

    /// Claims a client id for a connection about to open on this node ([`Claim`]).
    pub async fn claim_client(&self, client: &ClientKey) -> Result<Claimed, ClusterError> {
        let r = self.run_claim(client).await;
        let counter = if r.is_ok() {
            &self.stats.claims
        } else {
            &self.stats.claim_failures
        };
        counter.fetch_add(1, Relaxed);
        r
    }

    async fn run_claim(&self, client: &ClientKey) -> Result<Claimed, ClusterError> {
        let mut claim = Claim::new(
            self.config.node.clone(),
            self.incarnation(),
            self.config.claim,
        );
        loop {
            let now = Instant::now();
            match claim.poll(now) {
                ClaimStep::Read => {
                    let entry = self.read_registry(client).await?;
                    // This node's earlier incarnation counts as dead without a read.
                    let alive = match &entry {
                        Some((e, _)) => self.lease_alive(&e.node, e.incarnation).await?,
                        None => false,
                    };
                    claim.handle_read(entry, |_, _| alive);
                }
                ClaimStep::Create(e) => {
                    let e = self.as_current(e);
                    let r = self
                        .backend
                        .create(Bucket::Registry, client.as_str(), e.encode())
                        .await;
                    claim.handle_written(written(r)?);
                }
                ClaimStep::Update(e, rev) => {
                    let e = self.as_current(e);
                    let r = self
                        .backend
                        .update(Bucket::Registry, client.as_str(), e.encode(), rev)
                        .await;
                    claim.handle_written(written(r)?);
                }
                ClaimStep::AskRelease { owner, revision } => {
                    self.stats.handovers_asked.fetch_add(1, Relaxed);
                    let answer = self
                        .backend
                        .request(
                            self.release_subject(&owner),
                            ReleaseRequest::encode(client, revision),
                            self.config.claim.handover_timeout,
                        )
                        .await;
                    match answer {
                        Ok(_) => claim.handle_released(),
                        // Nobody listens there: nobody holds a connection, or the route to
                        // it is down (then it is asked again after the claim).
                        Err(BackendError::NoResponder) => claim.handle_no_responder(),
                        Err(BackendError::Timeout) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                ClaimStep::Wait(until) => {
                    tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
                }
                ClaimStep::Done(r) => return Ok(r?),
            }
        }
    }

    /// Asks `owner` again, every [`CHASE_EVERY`] for [`CHASE_FOR`], to close its
    /// connection of `client` (the one registered at `revision`), until it answers: the
    /// claim went ahead without its answer ([`Claimed::unanswered`]), and it knows of no
    /// other node's connection otherwise, so it would serve the client id alongside it
    /// for as long as that connection lasts.
    pub async fn chase_release(&self, client: &ClientKey, owner: &NodeId, revision: Revision) {
        let start = Instant::now();
        while start.elapsed() < CHASE_FOR {
            tokio::time::sleep(CHASE_EVERY).await;
            let answer = self
                .backend
                .request(
                    self.release_subject(owner),
                    ReleaseRequest::encode(client, revision),
                    CHASE_EVERY,
                )
                .await;
            if answer.is_ok() {
                tracing::info!(%client, %owner, "a node that had not answered a hand-over answered it late: it closed its connection");
                return;
            }
        }
        tracing::warn!(%client, %owner, "a node that did not answer a hand-over still does not: its connection, if it still has one, stays open until it ends or that node steps down");
    }

    /// `entry` under this node's incarnation of now. A claim that began before a step-down
    /// and writes after this node came back as a new incarnation must name the new one:
    /// under the old one, a reaper of the old one takes the client this node serves
    /// (found by the fault harness: a claim waiting for a cut-off owner's answer across
    /// a step-down of 2 ms; the reaper's take-over then closed the client here, and its
    /// session came back with QoS 2 messages it had already had).
    fn as_current(&self, mut entry: RegistryEntry) -> RegistryEntry {
        entry.incarnation = self.incarnation();
        entry
    }

    async fn read_registry(
        &self,
        client: &ClientKey,
    ) -> Result<Option<(RegistryEntry, Revision)>, ClusterError> {
        let Some(entry) = self.backend.get(Bucket::Registry, client.as_str()).await? else {
            return Ok(None);
        };
        let e = RegistryEntry::decode(&entry.value).map_err(|error| ClusterError::Corrupt {
            key: client.to_string(),
            error,
        })?;
        Ok(Some((e, entry.revision)))
    }

    /// Whether the registry still holds the claim written at `revision`. A node registers a
    /// claimed connection locally and then asks this: a hand-over request that came in
    /// between found nothing to close, but it has moved the entry on, so the answer is no
    /// and the connection is closed (5.0: 0x8E).
    pub async fn still_owner(
        &self,
        client: &ClientKey,
        revision: Revision,
    ) -> Result<bool, ClusterError> {
        Ok(self
            .read_registry(client)
            .await?
            .is_some_and(|(_, r)| r == revision))
    }

    /// A connection of this node closing: the registry entry says no connection is open,
    /// if it is still the one this node wrote at `revision`, and that the client was last
    /// on this node (its connection was let in past the barriers of the node it came from,
    /// [`RegistryEntry::came_from`]). [`ClusterError::Fenced`] when another node has
    /// claimed it since.
    pub async fn mark_disconnected(
        &self,
        client: &ClientKey,
        revision: Revision,
    ) -> Result<Revision, ClusterError> {
        self.write_disconnected(client, revision, None).await
    }

    /// The owner's side of a hand-over: as [`Cluster::mark_disconnected`], but the entry
    /// keeps naming the node the client came from. The request may be for the entry of a
    /// claim of this node that failed after writing it (no connection was let in here):
    /// cleared, it hid that node from the client's next claim here, which then appended
    /// no barriers (found by the fault harness: reorderings after claims refused by 503s,
    /// when another node's claim asked this one to hand the client over in between).
    pub async fn mark_released(
        &self,
        client: &ClientKey,
        revision: Revision,
    ) -> Result<Revision, ClusterError> {
        let came_from = match self.read_registry(client).await? {
            Some((entry, at)) if at == revision => entry.last_elsewhere(&self.config.node).cloned(),
            _ => return Err(ClusterError::Fenced(client.clone())),
        };
        self.write_disconnected(client, revision, came_from).await
    }

    async fn write_disconnected(
        &self,
        client: &ClientKey,
        revision: Revision,
        came_from: Option<NodeId>,
    ) -> Result<Revision, ClusterError> {
        let entry = RegistryEntry {
            node: self.config.node.clone(),
            incarnation: self.incarnation(),
            connected: false,
            came_from,
        };
        match self
            .backend
            .update(Bucket::Registry, client.as_str(), entry.encode(), revision)
            .await
        {
            Err(BackendError::Conflict) => Err(ClusterError::Fenced(client.clone())),
            r => Ok(r?),
        }
    }

    /// Follows the hand-over requests addressed to this node.
    pub async fn release_requests(&self) -> Result<mpsc::Receiver<ReleaseRequest>, ClusterError> {
        let mut sub = self
            .backend
            .subscribe(self.release_subject(&self.config.node), None)
            .await?;
        let (tx, rx) = mpsc::channel(64);
        let stats = self.stats.clone();
        tokio::spawn(async move {
            while let Some(d) = sub.next().await {
                match ReleaseRequest::decode(&d.payload, d.reply) {
                    Ok(req) => {
                        stats.handovers_given.fetch_add(1, Relaxed);
                        if tx.send(req).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "ignoring a malformed hand-over request"),
                }
            }
        });
        Ok(rx)
    }

    /// Answers a hand-over request: the connection is closed and the session stored.
    pub async fn answer_release(&self, req: &ReleaseRequest) -> Result<(), ClusterError> {
        if let Some(reply) = &req.reply {
            self.backend
                .publish(Subject::from_tokens(reply), Bytes::new())
                .await?;
        }
        Ok(())
    }

    /// The session record of a client id and the fence its writes must carry.
    pub async fn load_session(
        &self,
        client: &ClientKey,
    ) -> Result<(Option<SessionRecord>, Fence), ClusterError> {
        match self.backend.get(Bucket::Sessions, client.as_str()).await? {
            None => Ok((None, Fence::Absent)),
            Some(e) => {
                let r = SessionRecord::decode(&e.value).map_err(|error| ClusterError::Corrupt {
                    key: client.to_string(),
                    error,
                })?;
                Ok((Some(r), Fence::At(e.revision)))
            }
        }
    }

    /// Reads the session record of a client id this node has just claimed (`claimed`) and,
    /// when it holds a will this node is to decide ([`wills::claimer_decides`]: another node
    /// or incarnation left it), takes the will out by a compare-and-set write, so that no
    /// other node (a reaper, a later claimer) decides it too. That write also fences the
    /// node that had the session. A write that loses to another (a reaper's) is read again.
    /// `now_ms`: the wall clock, unix milliseconds.
    pub async fn load_claimed_session(
        &self,
        client: &ClientKey,
        claimed: &Claimed,
        now_ms: u64,
    ) -> Result<ClaimedSession, ClusterError> {
        // What this process held under an earlier incarnation (before a step-down) its broker
        // still holds, and decides, as under the current one.
        let incarnations: Vec<u64> = self.incarnations().all().collect();
        let decides = |writer: &NodeId| {
            incarnations.iter().all(|&i| {
                wills::claimer_decides(claimed.previous.as_ref(), writer, &self.config.node, i)
            })
        };
        // A take-out written here whose answer was lost (a timeout, a 503 after the write):
        // its will, kept to be recognised on the next read by the record's mark.
        let mut unanswered: Option<(TakenWill, Option<NodeId>)> = None;
        let mut last_error = None;
        for _ in 0..3 {
            let (record, fence) = self.load_session(client).await?;
            if let Some((will, written_by)) = unanswered.take() {
                if let Some(r) = record
                    .as_ref()
                    .filter(|r| wills::taken_by_me(r, &self.config.node, claimed.revision))
                {
                    return Ok(ClaimedSession {
                        record: Some(r.clone()),
                        written_by,
                        fence,
                        will: Some(will),
                    });
                }
            }
            let written_by = record.as_ref().map(|r| r.node.clone());
            // A record written under a later claim than this one is a newer connection's
            // (this claim is stale: its task was slow): its will is not this claim's to
            // take.
            let Some(found) = record.as_ref().filter(|r| {
                r.will.is_some() && r.claim < claimed.revision.get() && decides(&r.node)
            }) else {
                return Ok(ClaimedSession {
                    record,
                    written_by,
                    fence,
                    will: None,
                });
            };
            let (rest, will) = wills::will_taken(found, self.config.node.clone(), claimed.revision);
            match self.store_session(client, &rest, fence).await {
                Ok(fence) => {
                    let will = will.map(|will| TakenWill {
                        will,
                        expiry_interval: found.expiry_interval,
                        offline_for: wills::offline_for(found, now_ms),
                    });
                    return Ok(ClaimedSession {
                        record: Some(rest),
                        written_by,
                        fence,
                        will,
                    });
                }
                // Written meanwhile (a reaper took the record over): read it again.
                Err(ClusterError::Fenced(_)) => continue,
                // The write may have landed unanswered: the next read says so by its mark
                // (a will lost otherwise: the record no longer holds it, and no other node
                // decides it). One that did not land is written again.
                Err(e @ ClusterError::Backend(_)) if will.is_some() => {
                    tracing::debug!(client = %client, error = %e, "a will's take-out unanswered: the record is read again");
                    unanswered = will.map(|will| {
                        let taken = TakenWill {
                            will,
                            expiry_interval: found.expiry_interval,
                            offline_for: wills::offline_for(found, now_ms),
                        };
                        (taken, written_by)
                    });
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| ClusterError::Fenced(client.clone())))
    }

    /// The session records the dead incarnation `dead` left, each taken over by this node:
    /// its registry entry moved to this node, offline, by compare-and-set (a client that
    /// connected elsewhere meanwhile is left alone: [`wills::left_by`]). The caller writes
    /// each record at its fence before publishing anything of it. Reads every key of the
    /// sessions bucket (`only: None`, once per dead node) or the clients given. Also
    /// returns the clients whose take-over failed on the engine, to be tried again: a dead
    /// node's session nobody takes loses its will and what it holds; and, in the same pass,
    /// the sessions the dead node gave up to claims that may have failed
    /// ([`wills::given_up`]). A record that does not decode is skipped with a warning.
    pub async fn orphans(
        &self,
        dead: &Expired,
        only: Option<Vec<ClientKey>>,
    ) -> Result<Orphans, ClusterError> {
        let retry = only.is_some();
        let clients = match only {
            Some(clients) => clients,
            None => self
                .backend
                .keys(Bucket::Sessions)
                .await?
                .iter()
                .filter_map(|key| ClientKey::from_key(key).ok())
                .collect(),
        };
        let mut out = Orphans::default();
        for client in clients {
            match self.take_orphan(&client, dead, retry).await {
                Ok(Left::Orphan(o)) => out.taken.push(*o),
                Ok(Left::GivenUp(g)) => out.given_up.push((client, g)),
                Ok(Left::Nothing) => {}
                Err(e @ ClusterError::Backend(_)) => {
                    tracing::warn!(%client, node = %dead.node, error = %e, "cannot take over a dead node's session yet: tried again shortly");
                    out.failed.push(client);
                }
                Err(e) => {
                    tracing::warn!(%client, node = %dead.node, error = %e, "cannot take over a dead node's session")
                }
            }
        }
        Ok(out)
    }

    /// The session records this node wrote in an earlier run (a process that was killed or
    /// stopped: no connection of this node is open now) that it gave up to claims that may
    /// have failed ([`wills::given_up`]: still holding a will while the registry names
    /// another node): the take-back that earlier run had set for each died with it, and
    /// the reaper of that run takes only the entries naming it (found by the fault
    /// harness: two probes' wills never published, their node killed within the 20 s
    /// before its take-back). The caller takes each back after the claim had its time
    /// (`take_abandoned`). Called once at start-up, before any connection. (A dead node's
    /// reaper finds those of a node that does not come back: [`Cluster::orphans`].)
    pub async fn given_up_by_earlier_runs(
        &self,
    ) -> Result<Vec<(ClientKey, GivenUp)>, ClusterError> {
        let me = &self.config.node;
        let mut out = Vec::new();
        for key in self.backend.keys(Bucket::Sessions).await? {
            let Ok(client) = ClientKey::from_key(&key) else {
                continue;
            };
            let Some(entry) = self.backend.get(Bucket::Sessions, client.as_str()).await? else {
                continue;
            };
            let Ok(record) = SessionRecord::decode(&entry.value) else {
                continue;
            };
            // (The registry is read only for records that may be given up.)
            if !wills::holds_will_of(&record, me) {
                continue;
            }
            if let Some((holder, _)) = self.read_registry(&client).await? {
                if wills::given_up(&record, &holder, me) {
                    out.push((client, GivenUp::as_read(&record, entry.revision)));
                }
            }
        }
        Ok(out)
    }

    /// `retry`: an earlier take-over of these clients failed on the engine, so its registry
    /// write may have landed unanswered ([`wills::reaped_unanswered`]).
    async fn take_orphan(
        &self,
        client: &ClientKey,
        dead: &Expired,
        retry: bool,
    ) -> Result<Left, ClusterError> {
        let Some(entry) = self.backend.get(Bucket::Sessions, client.as_str()).await? else {
            return Ok(Left::Nothing);
        };
        let record =
            SessionRecord::decode(&entry.value).map_err(|error| ClusterError::Corrupt {
                key: client.to_string(),
                error,
            })?;
        if record.node != dead.node {
            return Ok(Left::Nothing);
        }
        let Some((holder, revision)) = self.read_registry(client).await? else {
            return Ok(Left::Nothing);
        };
        if retry
            && wills::reaped_unanswered(
                &record,
                &holder,
                dead,
                &self.config.node,
                self.incarnation(),
            )
        {
            tracing::info!(%client, node = %dead.node, "a dead node's session this node's earlier take-over got no answer for is this node's: taken over");
            return Ok(Left::Orphan(Box::new(Orphan {
                client: client.clone(),
                record,
                fence: Fence::At(entry.revision),
                claim: revision,
            })));
        }
        if wills::given_up(&record, &holder, &dead.node) {
            return Ok(Left::GivenUp(GivenUp::as_read(&record, entry.revision)));
        }
        if !wills::left_by(&record, &holder, dead) {
            return Ok(Left::Nothing);
        }
        let taken = self
            .held_as_orphan(client, revision, record, entry.revision)
            .await?;
        Ok(taken.map_or(Left::Nothing, |o| Left::Orphan(Box::new(o))))
    }

    /// `client`'s session (`record`, at `record_revision`) taken by this node like a dead
    /// node's: its registry entry moved here offline if still at `revision`; `None` when a
    /// connecting client claimed it meanwhile (that node decides).
    async fn held_as_orphan(
        &self,
        client: &ClientKey,
        revision: Revision,
        record: SessionRecord,
        record_revision: Revision,
    ) -> Result<Option<Orphan>, ClusterError> {
        // The client was last on the node that wrote the record: what it published there
        // is behind barriers when it connects here.
        let came_from = Some(record.node.clone()).filter(|n| *n != self.config.node);
        let Some(claim) = self.hold_offline(client, revision, came_from).await? else {
            return Ok(None);
        };
        Ok(Some(Orphan {
            client: client.clone(),
            record,
            fence: Fence::At(record_revision),
            claim,
        }))
    }

    /// Moves `client`'s registry entry to this node, offline, if it is still at
    /// `revision`: the new revision, the session's claim from now on; `None` when another
    /// node wrote the entry since.
    async fn hold_offline(
        &self,
        client: &ClientKey,
        revision: Revision,
        came_from: Option<NodeId>,
    ) -> Result<Option<Revision>, ClusterError> {
        let mine = RegistryEntry {
            node: self.config.node.clone(),
            incarnation: self.incarnation(),
            connected: false,
            came_from,
        };
        match self
            .backend
            .update(Bucket::Registry, client.as_str(), mine.encode(), revision)
            .await
        {
            Ok(r) => Ok(Some(r)),
            Err(BackendError::Conflict) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A session handed over (by this node, an earlier run of it, or a dead node this node
    /// reaps; its record as `written` then) that the claiming node never took: its claim
    /// failed after the hand-over (the engine timed out, or JetStream was electing
    /// leaders), so nobody decides the will the record holds, and the client may not come
    /// back. Taken back like a dead node's session ([`Orphan`]): its registry
    /// entry moved to this node, offline, by compare-and-set. `None` when the record was
    /// written since (the claimer, or a later one, took it and decides its will), holds no
    /// will, is gone, or when the registry moved meanwhile or names this node's current
    /// incarnation connected to a record this node wrote (the client came back here).
    pub async fn take_abandoned(
        &self,
        client: &ClientKey,
        written: &GivenUp,
    ) -> Result<Option<Orphan>, ClusterError> {
        // Why nothing is taken back goes to the records' log (`makelaar::records`): a will
        // never published is traced from there.
        let none = |why: &str| {
            tracing::debug!(target: "makelaar::records", %client, ?written, why, "a session given up to a claim is not taken back");
            Ok(None)
        };
        let Some(entry) = self.backend.get(Bucket::Sessions, client.as_str()).await? else {
            return none("its record is gone");
        };
        let record =
            SessionRecord::decode(&entry.value).map_err(|error| ClusterError::Corrupt {
                key: client.to_string(),
                error,
            })?;
        if !written.is(&record, entry.revision) {
            return none("its record was written since");
        }
        if record.will.is_none() {
            return none("its record holds no will");
        }
        let Some((holder, revision)) = self.read_registry(client).await? else {
            return none("its registry entry is gone");
        };
        // Only this node's own record can hold a will its core still decides for a client
        // connected here again; a claim here of a record another node wrote takes the will
        // out (a new revision). An entry naming this node connected may also be left by a
        // claim here that failed (the dead node's reaper being the failed claimer).
        if record.node == self.config.node
            && holder.connected
            && holder.node == self.config.node
            && holder.incarnation == self.incarnation()
        {
            return none("its client is connected here again");
        }
        let taken = self
            .held_as_orphan(client, revision, record, entry.revision)
            .await?;
        if taken.is_none() {
            return none("its registry entry was written since");
        }
        Ok(taken)
    }

    /// Writes a session record by compare-and-set on the fence's revision; the new fence,
    /// or [`ClusterError::Fenced`] when another node wrote it since (the caller's fence is
    /// then [`Fence::Lost`]).
    pub async fn store_session(
        &self,
        client: &ClientKey,
        record: &SessionRecord,
        fence: Fence,
    ) -> Result<Fence, ClusterError> {
        let value = record.encode();
        let r = match fence {
            Fence::Lost => return Err(ClusterError::Fenced(client.clone())),
            Fence::Absent | Fence::Unanswered => {
                self.backend
                    .create(Bucket::Sessions, client.as_str(), value)
                    .await
            }
            Fence::At(rev) => {
                self.backend
                    .update(Bucket::Sessions, client.as_str(), value, rev)
                    .await
            }
        };
        match fence.after_write(written(r)?) {
            Fence::Lost => Err(ClusterError::Fenced(client.clone())),
            f => Ok(f),
        }
    }

    /// Writes (`Some`) or deletes (`None`) the record of a session this node keeps under its
    /// claim `claim`, fenced like [`Cluster::store_session`]; the new fence (`None` once
    /// deleted). When the compare-and-set is refused by a record this node wrote under the
    /// same claim ([`wills::written_under`]: an earlier write of its own whose answer got
    /// lost, then retried), it is written again at that record's revision, once. The write
    /// that takes a due will out of its record (see [`wills::verdict`]) goes through here.
    /// A delete after a create that got no answer ([`Fence::Unanswered`]) deletes the record
    /// that create left, if it landed ([`Cluster::delete_unanswered`]).
    pub async fn write_own_session(
        &self,
        client: &ClientKey,
        record: Option<&SessionRecord>,
        claim: Revision,
        fence: Fence,
    ) -> Result<Option<Fence>, ClusterError> {
        self.write_session_as(client, record, claim, fence, RecordWriter::Owner)
            .await
    }

    /// [`Cluster::write_own_session`] as `writer` writes: a reaper's own write that landed
    /// unanswered is written again too, but a record the dead node wrote since is not
    /// written over (unlike an owner's): that write may have taken the will out and
    /// published it.
    pub async fn write_session_as(
        &self,
        client: &ClientKey,
        record: Option<&SessionRecord>,
        claim: Revision,
        fence: Fence,
        writer: RecordWriter,
    ) -> Result<Option<Fence>, ClusterError> {
        if record.is_none() && fence == Fence::Unanswered {
            return self.delete_unanswered(client, claim).await;
        }
        let first = self.write_or_delete(client, record, fence).await;
        if !matches!(first, Err(ClusterError::Fenced(_))) || fence == Fence::Lost {
            return first;
        }
        let (found, at) = self.load_session(client).await?;
        match found {
            Some(r) if wills::written_under(&r, &self.config.node, claim) => {
                tracing::debug!(%client, "a session write of this node's landed unanswered: written again at its revision");
                self.write_or_delete(client, record, at).await
            }
            // Written by another node under an older claim than this node's: the node that
            // held the client before, writing late (a step-down's waiting write tried again
            // when it served again, between this node's claim and its first write; found
            // by the fault harness: the new owner took itself for fenced and closed its
            // client). Registry revisions only grow, so that writer's claim is over; this
            // node's state is the newer.
            Some(r)
                if writer == RecordWriter::Owner
                    && r.node != self.config.node
                    && r.claim < claim.get() =>
            {
                tracing::info!(%client, writer = %r.node, "a session record written late by the node that held the client before this node's claim: written over");
                self.write_or_delete(client, record, at).await
            }
            Some(r) if wills::taken_by_me(&r, &self.config.node, claim) => {
                tracing::debug!(%client, "a session write of this node's took the will out unanswered, and another node wrote since");
                Err(ClusterError::FencedAfterWillTaken(client.clone()))
            }
            _ => first,
        }
    }

    /// Ends the session of `client` that `writer` (this node) keeps under `claim` (its
    /// record at `fence`) with a will this node is to publish: the record is first written
    /// ended, the will marked as taken by this node ([`wills::ended`]), then deleted. `Ok`
    /// once that write landed, answered or not ([`Cluster::write_session_as`] finds an
    /// unanswered one on the retry): the will is this node's to publish, whatever the
    /// delete did. A plain delete that landed unanswered would leave the retry nothing to
    /// tell it was its own. `others`: the take-out marks of other nodes the record carried
    /// ([`wills::others_marks`]); kept, and the record left in place for their retries
    /// ([`wills::ended_keeping`]).
    pub async fn end_session_as(
        &self,
        client: &ClientKey,
        claim: Revision,
        fence: Fence,
        now_ms: u64,
        writer: RecordWriter,
        others: Vec<WillTaker>,
    ) -> Result<(), ClusterError> {
        let keep = !others.is_empty();
        let ended = wills::ended(self.config.node.clone(), claim, now_ms, others);
        let written = self
            .write_session_as(client, Some(&ended), claim, fence, writer)
            .await?;
        if let Some(at) = written.filter(|_| !keep) {
            if let Err(e) = self.delete_session(client, at).await {
                // Harmless: ended and without a will, no claim takes it for a session.
                tracing::debug!(%client, error = %e, "an ended session's record is left in place (its will marked taken)");
            }
        }
        Ok(())
    }

    /// Deletes the record of a session that ended here after this node's create of it got
    /// no answer. When that create landed (the record is this node's under `claim`,
    /// [`wills::written_under`]), the record is deleted at its revision: left in place, it
    /// would hold what the create wrote (the connection's will among it) after the session
    /// ended, and the reaper of this node would take it for a dead node's session and
    /// publish the will this node publishes at the delete (found by
    /// `test_a_stepped_down_nodes_wills_are_published_once_after_all`: the CONNECT's create
    /// was in flight when NATS stopped, and landed when it ran again). When there is no
    /// record, the registry says whether a reaper took the one that create left and ended
    /// the session ([`wills::unanswered_create_taken`]): then refused as
    /// [`ClusterError::Fenced`], the will being that node's. Otherwise nothing of this
    /// node's is there.
    async fn delete_unanswered(
        &self,
        client: &ClientKey,
        claim: Revision,
    ) -> Result<Option<Fence>, ClusterError> {
        let (found, at) = self.load_session(client).await?;
        match found {
            Some(r) if wills::written_under(&r, &self.config.node, claim) => {
                tracing::debug!(%client, "a create of this node's that got no answer had landed: its record is deleted");
                self.delete_session(client, at).await.map(|()| None)
            }
            Some(_) => Ok(None),
            None => {
                let holder = self.read_registry(client).await?.map(|(h, _)| h);
                if wills::unanswered_create_taken(holder.as_ref(), &self.config.node) {
                    tracing::debug!(%client, "a create of this node's that got no answer had landed and was taken by a reaper: the will is that node's");
                    return Err(ClusterError::Fenced(client.clone()));
                }
                Ok(None)
            }
        }
    }

    async fn write_or_delete(
        &self,
        client: &ClientKey,
        record: Option<&SessionRecord>,
        fence: Fence,
    ) -> Result<Option<Fence>, ClusterError> {
        match record {
            Some(r) => self.store_session(client, r, fence).await.map(Some),
            None => self.delete_session(client, fence).await.map(|()| None),
        }
    }

    /// Registers a client id this node assigned (an empty client id in CONNECT) as held by
    /// this node and connected, so that the reaper of this node finds its session record
    /// ([`wills::left_by`]). The id is unique (it carries this node's name), so the entry
    /// is created only if absent; the revision is the session's claim.
    pub async fn register_assigned(&self, client: &ClientKey) -> Result<Revision, ClusterError> {
        let entry = RegistryEntry {
            node: self.config.node.clone(),
            incarnation: self.incarnation(),
            connected: true,
            came_from: None,
        };
        match self
            .backend
            .create(Bucket::Registry, client.as_str(), entry.encode())
            .await
        {
            Err(BackendError::Conflict) => Err(ClusterError::Fenced(client.clone())),
            r => Ok(r?),
        }
    }

    /// Deletes the registry entry of a client whose session has ended, if it is still the
    /// one written at `revision` (a claim since keeps it). For ids nobody will claim again
    /// (assigned ones), so that the registry does not grow with them. Whether it was
    /// deleted.
    pub async fn forget_client(
        &self,
        client: &ClientKey,
        revision: Revision,
    ) -> Result<bool, ClusterError> {
        match self
            .backend
            .delete(Bucket::Registry, client.as_str(), Some(revision))
            .await
        {
            Ok(()) => Ok(true),
            Err(BackendError::Conflict) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes a session record (the session ended), fenced like a write.
    pub async fn delete_session(
        &self,
        client: &ClientKey,
        fence: Fence,
    ) -> Result<(), ClusterError> {
        let expected = match fence {
            Fence::Lost => return Err(ClusterError::Fenced(client.clone())),
            // (Whether a create of the caller's landed unanswered is looked at by
            // `write_own_session`, which knows the caller's claim.)
            Fence::Absent | Fence::Unanswered => return Ok(()),
            Fence::At(r) => r,
        };
        match self
            .backend
            .delete(Bucket::Sessions, client.as_str(), Some(expected))
            .await
        {
            Err(BackendError::Conflict) => Err(ClusterError::Fenced(client.clone())),
            r => Ok(r?),
        }
    }

    /// Publishes a QoS 0 message to the nodes that follow its topic.
    pub async fn publish(&self, topic: &str, message: &Envelope) -> Result<(), ClusterError> {
        let r = self
            .backend
            .publish(self.live_subject(topic), message.encode())
            .await;
        let counter = if r.is_ok() {
            &self.stats.published
        } else {
            &self.stats.publish_failures
        };
        counter.fetch_add(1, Relaxed);
        Ok(r?)
    }

    /// Appends a QoS 1/2 message to its topic's partition; returns when the engine has it
    /// on disk on a majority, with the partition and stream sequence. Refused
    /// ([`ClusterError::LeaseLapsed`]) once this node's lease is past its step-down instant.
    pub async fn append(
        &self,
        topic: &str,
        message: &Envelope,
    ) -> Result<(Partition, u64), ClusterError> {
        self.check_lease(Instant::now())?;
        let (p, subject) = self.partition_subject(topic);
        let r = self.backend.append(p, subject, message.encode()).await;
        self.stats.appended(p, r.as_ref().ok().copied());
        if r.is_err() && message.claim.is_some() {
            self.note_given_up(&message.origin_client);
        }
        Ok((p, r?))
    }

    /// The table of clients whose appends were given up (held for a moment: never across
    /// an await).
    fn given_up(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        // Entries are written whole: a table left by a panic is still whole.
        self.given_up
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn note_given_up(&self, client: &str) {
        let now = Instant::now();
        let mut given_up = self.given_up();
        if given_up.len() >= crate::barrier::MAX_MARKS {
            given_up
                .retain(|_, at| now.saturating_duration_since(*at) < crate::barrier::KEEP_BARRIERS);
            if given_up.len() >= crate::barrier::MAX_MARKS {
                tracing::warn!(max = crate::barrier::MAX_MARKS, "too many clients with appends given up to remember: forgotten, so their next claim here appends no barriers");
                given_up.clear();
            }
        }
        given_up.insert(client.to_owned(), now);
    }

    /// Whether this node gave up an append of `client` lately: that message may still be
    /// stored, late, so a claim of the client here appends barriers naming it, as a claim
    /// of a client from another node does (`crate::barrier`): what lands after them is
    /// dropped by every reader, instead of coming after the new connection's messages.
    pub fn gave_up_appends_of(&self, client: &str) -> bool {
        self.given_up()
            .get(client)
            .is_some_and(|at| at.elapsed() < crate::barrier::KEEP_BARRIERS)
    }

    /// Barriers naming a claim of `client`, begun at `started`, are in: appends given up
    /// before then are behind them.
    pub fn barriers_named(&self, client: &str, started: Instant) {
        let mut given_up = self.given_up();
        if given_up.get(client).is_some_and(|at| *at <= started) {
            given_up.remove(client);
        }
    }

    /// [`Cluster::append`] under a deduplication id ([`Cluster::next_message_id`]): tried
    /// again with the same id, it stores the message once (within the engine's window,
    /// [`crate::nats::DUPLICATE_WINDOW`]) and returns where the one stored is.
    pub async fn append_once(
        &self,
        topic: &str,
        message: &Envelope,
        id: &MessageId,
    ) -> Result<(Partition, u64), ClusterError> {
        let (p, subject) = self.partition_subject(topic);
        let r = self
            .backend
            .append_once(p, subject, message.encode(), id)
            .await;
        self.stats.appended(p, r.as_ref().ok().copied());
        Ok((p, r?))
    }

    /// Rule 5 of docs/cluster.md on the write path: a node stores clients' messages only
    /// while its lease holds by its own clock. The lease task steps the node down at that
    /// instant, but a process paused past it (`SIGSTOP`, a VM stall) runs whatever its
    /// sockets buffered meanwhile before that task runs again: PUBLISH packets its
    /// clients sent before they gave up on it and published on elsewhere. Stored then,
    /// they would land after those later messages, and a retained value over a newer one.
    fn check_lease(&self, now: Instant) -> Result<(), ClusterError> {
        let until = self.store_until.load(Relaxed);
        if until == NO_LEASE_TASK {
            return Ok(());
        }
        let elapsed = now.saturating_duration_since(self.clock_base).as_nanos();
        if elapsed < u128::from(until) {
            Ok(())
        } else {
            Err(ClusterError::LeaseLapsed)
        }
    }

    /// Sets [`Cluster::store_until`] from the lease's step-down instant (`None`: not
    /// held).
    fn set_store_until(&self, step_down_at: Option<Instant>) {
        let until = step_down_at.map_or(0, |at| {
            let nanos = at.saturating_duration_since(self.clock_base).as_nanos();
            u64::try_from(nanos).unwrap_or(NO_LEASE_TASK - 1)
        });
        self.store_until.store(until, Relaxed);
    }

    /// A deduplication id no other append of this cluster has: this node's name, the
    /// incarnation it started as (new at every start) and a counter of this process.
    pub fn next_message_id(&self) -> MessageId {
        let n = self.message_ids.fetch_add(1, Relaxed) + 1;
        MessageId::new(&self.config.node, self.config.incarnation, n)
    }

    /// Sets a topic's retained message to `message` (clears it when its payload is empty)
    /// unless the topic holds a retained message received after it: for a write that comes
    /// late (a will's, tried again for up to a minute), which must not replace what another
    /// client published there meanwhile (a status topic's "online" after its will's
    /// "offline"). Two nodes' retained writes share no order but their clocks
    /// (`received_at_ms`), good to their skew, small next to a retry's lateness; the write
    /// is compare-and-set on the revision read, so nothing written between the read and the
    /// write is replaced. Whether it was stored (`false`: a newer one was kept).
    pub async fn store_retained_unless_newer(
        &self,
        topic: &str,
        message: &Envelope,
    ) -> Result<bool, ClusterError> {
        let key = encode_topic(topic);
        let value = message.encode();
        // A conflict means a write came in between: read again, a few times at most.
        for _ in 0..LATE_RETAINED_TRIES {
            let current = self.backend.get(Bucket::Retained, key.as_str()).await?;
            if let Some(e) = &current {
                if e.value == value {
                    // Stored by an earlier try whose answer was lost.
                    return Ok(true);
                }
                let newer = Envelope::decode(&e.value)
                    .is_ok_and(|now| now.received_at_ms > message.received_at_ms);
                if newer {
                    return Ok(false);
                }
            }
            self.stats.retained_writes.fetch_add(1, Relaxed);
            let r = match (message.payload.is_empty(), current) {
                (true, None) => return Ok(true),
                (true, Some(e)) => {
                    self.backend
                        .delete(Bucket::Retained, key.as_str(), Some(e.revision))
                        .await
                }
                (false, None) => self
                    .backend
                    .create(Bucket::Retained, key.as_str(), value.clone())
                    .await
                    .map(|_| ()),
                (false, Some(e)) => self
                    .backend
                    .update(Bucket::Retained, key.as_str(), value.clone(), e.revision)
                    .await
                    .map(|_| ()),
            };
            match r {
                Ok(()) => return Ok(true),
                Err(BackendError::Conflict) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(BackendError::Conflict.into())
    }

    /// Sets a topic's retained message, or clears it with `None` (an empty retained
    /// payload). The key is the topic's subject tokens, so a filter's tokens select keys.
    pub async fn store_retained(
        &self,
        topic: &str,
        message: Option<&Envelope>,
    ) -> Result<(), ClusterError> {
        self.check_lease(Instant::now())?;
        let key = encode_topic(topic);
        self.stats.retained_writes.fetch_add(1, Relaxed);
        match message {
            Some(m) => {
                self.backend
                    .put(Bucket::Retained, key.as_str(), m.encode())
                    .await?;
            }
            None => match self
                .backend
                .delete(Bucket::Retained, key.as_str(), None)
                .await
            {
                Ok(()) | Err(BackendError::Conflict) => {}
                Err(e) => return Err(e.into()),
            },
        }
        Ok(())
    }

    /// A topic's retained message.
    pub async fn load_retained(&self, topic: &str) -> Result<Option<Envelope>, ClusterError> {
        let key = encode_topic(topic);
        let Some(e) = self.backend.get(Bucket::Retained, key.as_str()).await? else {
            return Ok(None);
        };
        Envelope::decode(&e.value)
            .map(Some)
            .map_err(|error| ClusterError::Corrupt {
                key: key.into_string(),
                error,
            })
    }

    /// Follows the retained messages whose topics match `filter` (a plain filter; a filter
    /// starting with a wildcard leaves `$` topics out, [MQTT-4.7.2-1]): first the current
    /// ones, then every change, on whichever node it is made. Entries that do not decode are
    /// skipped with a warning.
    pub async fn watch_retained(
        &self,
        filter: &str,
    ) -> Result<impl futures_util::Stream<Item = RetainedChange> + Send + Unpin, ClusterError> {
        let watch = self
            .backend
            .watch(Bucket::Retained, encode_filter(filter).as_str())
            .await?;
        Ok(watch.filter_map(|ev| std::future::ready(retained_change(ev))))
    }

    /// Follows every retained message of the cluster, `$` topics included: the current ones,
    /// then every change (a node's own retained tree, fed by this one watch).
    pub async fn watch_all_retained(
        &self,
    ) -> Result<impl futures_util::Stream<Item = RetainedChange> + Send + Unpin, ClusterError> {
        let watch = self.backend.watch(Bucket::Retained, ">").await?;
        Ok(watch.filter_map(|ev| std::future::ready(retained_change(ev))))
    }

    /// Follows the registry's writes by other nodes: first the current entries, then
    /// every change. A connection here whose claim such a write replaced belongs to that
    /// node now; the hand-over request that would have closed it may never have arrived
    /// (a link between the two nodes cut, the engine's cluster still whole through a
    /// third), so the write itself tells this node (issue 15: a client id served by two
    /// nodes for 26 s over a cut link). Entries that do not decode are skipped.
    pub async fn watch_claims_elsewhere(
        &self,
    ) -> Result<impl futures_util::Stream<Item = ClaimedElsewhere> + Send + Unpin, ClusterError>
    {
        let watch = self.backend.watch(Bucket::Registry, ">").await?;
        let me = self.config.node.clone();
        Ok(watch.filter_map(move |ev| std::future::ready(claimed_elsewhere(&me, ev))))
    }

    /// Follows the QoS 1/2 messages appended to a partition from now on, by any node (this
    /// one's too: the caller skips them by [`Envelope::origin_node`]). Returns the first
    /// sequence it delivers: every message below it was appended before. Messages that do
    /// not decode are skipped with a warning.
    pub async fn follow_partition(
        &self,
        partition: Partition,
    ) -> Result<
        (
            u64,
            impl futures_util::Stream<Item = Followed> + Send + Unpin,
        ),
        ClusterError,
    > {
        let (next, follow) = self.backend.follow(partition).await?;
        // The live follower is counted for the node's stats; read-backs are not.
        let stats = self.stats.clone();
        let follow =
            follow.inspect(move |d| stats.followed(partition, Some(d.seq), Some(d.pending)));
        let prefix = self.partition_prefix(partition);
        // The follower reads its partition in order: the barriers it read so far say which
        // message is late, without the lock (taken at each barrier only, for the replays).
        // A follower made again starts from what the node's followers read before.
        let (shared, stats) = (self.fences.clone(), self.stats.clone());
        let mut seen = shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        Ok((
            next,
            follow.filter_map(move |d| {
                let entry = decode_entry(&prefix, partition, d)
                    .map(|e| fence_entry(e, Instant::now(), &mut seen, &shared, &stats));
                std::future::ready(entry)
            }),
        ))
    }

    /// Reads a partition's messages `from` through `to` back (see [`Backend::read`]); an
    /// error ends it when what is left is held but cannot be read now.
    pub async fn read_partition(
        &self,
        partition: Partition,
        from: u64,
        to: u64,
    ) -> Result<
        impl futures_util::Stream<Item = Result<LogMessage, ClusterError>> + Send + Unpin,
        ClusterError,
    > {
        let read = self.backend.read(partition, from, to).await?;
        let prefix = self.partition_prefix(partition);
        Ok(read.filter_map(move |r| {
            std::future::ready(match r {
                Ok(d) => decode_message(&prefix, partition, d).map(Ok),
                Err(e) => Some(Err(e.into())),
            })
        }))
    }

    /// The start of a partition's subjects: `<prefix>.p<i>.`.
    fn partition_prefix(&self, partition: Partition) -> String {
        format!("{}.p{}.", self.config.prefix, partition.index())
    }

    /// Whether a share group's message (`envelope`, at `seq` in `partition`) is a late
    /// append behind a barrier this node's followers read ([`crate::barrier`]); counted and
    /// logged when it is. A group's consumer reads its filter's subjects only, never a
    /// barrier, and may be ahead of the followers: a late append it reads before this
    /// node's follower has passed the barrier is not known as one.
    pub fn is_late_share(&self, partition: Partition, seq: u64, envelope: &Envelope) -> bool {
        let Some(claim) = envelope.claim else {
            return false;
        };
        let late = self
            .fences
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_late(partition.index(), seq, &envelope.origin_client, claim);
        if late {
            self.stats.late_dropped.fetch_add(1, Relaxed);
            tracing::info!(partition = partition.index(), seq, client = %envelope.origin_client, origin = %envelope.origin_node, "a late append left out of a replay or a share group: its publisher had been claimed on another node before it was appended, and never had it acknowledged");
        }
        late
    }

    /// Whether a message read back is a late append behind a barrier this node's followers
    /// read ([`crate::barrier`]); counted when it is. (A replay reads what the followers
    /// are past: the barriers before it are known.)
    fn is_late(&self, m: &LogMessage) -> bool {
        self.is_late_share(m.partition, m.seq, &m.envelope)
    }

    /// Replays a session taken in from a record (see [`crate::replay`]): reads each
    /// partition of the plan once, in order, and sorts its messages by the plan's verdict.
    /// `wanted(topic)` keeps new messages the session's subscriptions can match (the broker
    /// decides for good); at most `max_messages` new ones and `max_bytes` of them (0: no
    /// limit) are kept, the session's queue limits, and the rest is counted in
    /// [`Replayed::dropped`].
    pub async fn replay(
        &self,
        plan: &ReplayPlan,
        wanted: impl Fn(&str) -> bool,
        max_messages: usize,
        max_bytes: usize,
    ) -> Result<Replayed, ClusterError> {
        let mut out = Replayed::default();
        let mut bytes = 0usize;
        for p in &plan.partitions {
            let Some(partition) = self.config.partitions.partition(p.partition) else {
                tracing::warn!(
                    partition = p.partition,
                    "a session record names a partition this cluster does not have; skipped"
                );
                continue;
            };
            let mut read = self.read_partition(partition, p.from, p.to).await?;
            let mut kept_seen = 0;
            while let Some(m) = read.next().await {
                let m = m?;
                if m.seq > p.to {
                    break;
                }
                let verdict = plan.classify(p, m.seq, &m.envelope.origin_node);
                if verdict == Verdict::New && self.is_late(&m) {
                    continue;
                }
                match verdict {
                    Verdict::Kept(i) => {
                        kept_seen += 1;
                        out.kept.push((i, m));
                    }
                    Verdict::Skip => {}
                    Verdict::New => {
                        if !wanted(&m.topic) {
                            continue;
                        }
                        let weight = m.topic.len() + m.envelope.payload.len();
                        let over_bytes = max_bytes != 0 && bytes + weight > max_bytes;
                        if out.new.len() >= max_messages || over_bytes {
                            out.dropped += 1;
                            continue;
                        }
                        bytes += weight;
                        out.new.push(m);
                    }
                }
            }
            out.missing += p.kept.len().saturating_sub(kept_seen);
        }
        Ok(out)
    }

    /// The topics with a retained message (for a node's start-up; a watch keeps it current
    /// afterwards, with the router wiring).
    pub async fn retained_topics(&self) -> Result<Vec<String>, ClusterError> {
        let mut out = Vec::new();
        for key in self.backend.keys(Bucket::Retained).await? {
            if self.backend.get(Bucket::Retained, &key).await?.is_some() {
                if let Ok(topic) = decode_topic(&key) {
                    out.push(topic);
                }
            }
        }
        Ok(out)
    }

    /// Writes this node's lease. The first write that succeeds after a step-down makes the
    /// new incarnation it carries this node's ([`Incarnations::lease_written`]).
    pub async fn refresh_lease(&self) -> Result<Revision, ClusterError> {
        let incarnation = self.incarnations().lease();
        let lease = NodeLease {
            node: self.config.node.clone(),
            incarnation,
        };
        let revision = self
            .backend
            .put(Bucket::Leases, self.config.node.as_str(), lease.encode())
            .await?;
        let mut incarnations = self.incarnations();
        let before = incarnations.current();
        if incarnations.lease_written(incarnation) {
            drop(incarnations);
            tracing::warn!(
                node = %self.config.node,
                before,
                incarnation,
                "this node is back after stepping down, as a new incarnation: a peer reaps the old one and takes over what it held"
            );
        }
        Ok(revision)
    }

    /// This node stepped down: its peers may call its lease expired and reap it, so its
    /// lease writes carry a new incarnation from now on ([`Incarnations`]). Called by the
    /// lease task; public for tests that drive the lease by hand.
    pub fn stepped_down(&self) {
        self.incarnations().stepped_down(new_incarnation());
    }

    /// Whether `node` in `incarnation` holds a lease now (read from the bucket).
    pub async fn lease_alive(&self, node: &NodeId, incarnation: u64) -> Result<bool, ClusterError> {
        if *node == self.config.node {
            return Ok(incarnation == self.incarnation());
        }
        let Some(e) = self.backend.get(Bucket::Leases, node.as_str()).await? else {
            return Ok(false);
        };
        Ok(NodeLease::decode(&e.value).is_ok_and(|l| l.incarnation == incarnation))
    }

    /// Tries to become the one survivor that publishes `dead`'s wills: checks that its lease
    /// is really gone, then creates the reaper key.
    pub async fn try_reap(&self, dead: &Expired) -> Result<ReapOutcome, ClusterError> {
        if self.lease_alive(&dead.node, dead.incarnation).await? {
            return Ok(ReapOutcome::StillAlive);
        }
        let me = NodeLease {
            node: self.config.node.clone(),
            incarnation: self.incarnation(),
        };
        match self
            .backend
            .create(Bucket::Reapers, &dead.reaper_key(), me.encode())
            .await
        {
            Ok(_) => Ok(ReapOutcome::Won),
            Err(BackendError::Conflict) => Ok(ReapOutcome::Lost),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads every lease now: feeds the peers' tracker (used by the lease task; a watch
    /// would save the reads, the leases bucket holds one key per node).
    async fn scan_leases(
        &self,
        leases: &mut Leases,
        now: Instant,
    ) -> Result<Vec<Expired>, ClusterError> {
        let mut out = Vec::new();
        let mut alive = 0;
        for key in self.backend.keys(Bucket::Leases).await? {
            if let Some(e) = self.backend.get(Bucket::Leases, &key).await? {
                if let Ok(l) = NodeLease::decode(&e.value) {
                    alive += 1;
                    out.extend(leases.handle_seen(&l.node, l.incarnation, e.revision.get(), now));
                }
            }
        }
        // Present in the bucket: written within the TTL (the bucket expires the others).
        self.stats.nodes_alive.store(alive, Relaxed);
        Ok(out)
    }

    /// The lease task: writes this node's lease every refresh interval, reads the peers'
    /// leases at the same pace, and reports through `events` when this node may serve (its
    /// first lease written), must step down or may serve again, and which dead peers it won
    /// the right to reap. Runs until `events` is closed. Its receiver must be read promptly:
    /// while the channel is full the task waits, and the lease is not refreshed meanwhile.
    pub async fn run_leases(&self, events: mpsc::Sender<LeaseEvent>) {
        let config = self.config.lease;
        let mut own = OwnLease::new(config, Instant::now());
        let mut peers = Leases::new(config, self.config.node.clone());
        loop {
            let now = Instant::now();
            let state = own.poll(now);
            // After every change of the lease (a write confirmed, a step-down).
            self.set_store_until(own.step_down_at());
            match state {
                OwnState::Refresh => {
                    // The lease write is one replicated KV write: its time is the engine's
                    // round trip the metrics show, measured every refresh at no extra cost.
                    let sent = Instant::now();
                    match bounded(own.step_down_at(), self.refresh_lease()).await {
                        None => {
                            // The step-down instant came first: said at the next poll.
                            self.stats.lease_failures.fetch_add(1, Relaxed);
                            tracing::warn!("this node's lease write is still unanswered at the step-down deadline");
                            own.handle_failed(Instant::now());
                        }
                        Some(Ok(_)) => {
                            self.stats.set_round_trip(sent.elapsed());
                            self.stats.lease_writes.fetch_add(1, Relaxed);
                            own.handle_written(Instant::now());
                        }
                        Some(Err(e)) => {
                            self.stats.lease_failures.fetch_add(1, Relaxed);
                            tracing::warn!(error = %e, "cannot refresh this node's lease");
                            own.handle_failed(Instant::now());
                        }
                    }
                }
                OwnState::StepDown => {
                    self.stats.set_serving(false);
                    self.stepped_down();
                    tracing::error!(
                        node = %self.config.node,
                        "this node's lease was not refreshed in time: it stops serving"
                    );
                    if events.send(LeaseEvent::StepDown).await.is_err() {
                        return;
                    }
                }
                OwnState::MoveServer => {
                    // (The engine logs the server it leaves.)
                    tracing::debug!(
                        after = ?self.config.lease.ttl,
                        "this node's lease writes have all failed since it stepped down: connecting to another engine server"
                    );
                    self.backend.move_server().await;
                }
                OwnState::Resume => {
                    self.stats.set_serving(true);
                    tracing::info!(node = %self.config.node, "lease held: serving");
                    if events.send(LeaseEvent::Serving).await.is_err() {
                        return;
                    }
                }
                OwnState::Idle(until) => {
                    let scan = bounded(own.step_down_at(), self.scan_leases(&mut peers, now));
                    let found = match scan.await {
                        // The step-down instant came first.
                        None => continue,
                        Some(Ok(d)) => d,
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "cannot read the peers' leases");
                            Vec::new()
                        }
                    };
                    // None while this node does not hold its lease (`OwnLease::may_reap`).
                    let dead = peers.reapable(&own, found, Instant::now());
                    for d in dead {
                        let Some(reaped) = bounded(own.step_down_at(), self.try_reap(&d)).await
                        else {
                            // The step-down instant came first: tried again later.
                            peers.handle_not_reaped(&d);
                            continue;
                        };
                        match reaped {
                            Ok(ReapOutcome::Won) => {
                                if events.send(LeaseEvent::Reap(d)).await.is_err() {
                                    return;
                                }
                            }
                            Ok(ReapOutcome::Lost) => {}
                            Ok(ReapOutcome::StillAlive) => peers.handle_not_reaped(&d),
                            Err(e) => {
                                peers.handle_not_reaped(&d);
                                tracing::warn!(
                                error = %e,
                                node = %d.node,
                                    "cannot claim the reaping of a dead node"
                                );
                            }
                        }
                    }
                    if events.is_closed() {
                        return;
                    }
                    let wait = until.saturating_duration_since(Instant::now());
                    tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
                }
            }
        }
    }
}

/// A partition message as a [`LogMessage`]; `None` (logged) when its subject is not under
/// `prefix` or its topic or envelope does not decode.
/// A partition stream's message (a barrier goes unread: it holds nothing).
fn decode_message(prefix: &str, partition: Partition, d: StreamMessage) -> Option<LogMessage> {
    decode_entry(prefix, partition, d)?.message()
}

/// A follower's entry after the barriers it read before: a message late behind one of them
/// is dropped, as its position only ([`crate::barrier`]); a barrier's claims are kept, by
/// the follower (`seen`) and for the node's replays (`shared`).
fn fence_entry(
    entry: Followed,
    now: Instant,
    seen: &mut Fences,
    shared: &std::sync::Mutex<Fences>,
    stats: &NodeStats,
) -> Followed {
    match entry {
        Followed::Barrier {
            partition,
            seq,
            ref claims,
        } if !claims.is_empty() => {
            seen.handle_barrier(now, partition.index(), seq, claims);
            shared
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .handle_barrier(now, partition.index(), seq, claims);
            entry
        }
        Followed::Message(m) if is_late_in(seen, &m) => {
            stats.late_dropped.fetch_add(1, Relaxed);
            tracing::info!(partition = m.partition.index(), seq = m.seq, client = %m.envelope.origin_client, origin = %m.envelope.origin_node, "a late append dropped: its publisher had been claimed on another node before it was appended, and never had it acknowledged");
            Followed::Late {
                partition: m.partition,
                seq: m.seq,
                client: m.envelope.origin_client,
            }
        }
        other => other,
    }
}

/// Whether `m` comes after a barrier of a newer claim of its publisher ([`crate::barrier`]).
fn is_late_in(fences: &Fences, m: &LogMessage) -> bool {
    m.envelope.claim.is_some_and(|claim| {
        fences.is_late(m.partition.index(), m.seq, &m.envelope.origin_client, claim)
    })
}

/// A partition stream's entry: a message or a barrier; `None` (with a warning) for what does
/// not decode.
fn decode_entry(prefix: &str, partition: Partition, d: StreamMessage) -> Option<Followed> {
    let tokens = d.subject.strip_prefix(prefix);
    if tokens.and_then(|t| t.split('.').next()) == Some(ROOT_BARRIER) {
        let claims = decode_claims(&d.payload).unwrap_or_else(|error| {
            tracing::warn!(subject = %d.subject, %error, "a barrier whose claims do not decode: read as naming none");
            Vec::new()
        });
        return Some(Followed::Barrier {
            partition,
            seq: d.seq,
            claims,
        });
    }
    let decoded = tokens
        .ok_or_else(|| format!("not under {prefix}"))
        .and_then(|tokens| decode_topic(tokens).map_err(|e| e.to_string()))
        .and_then(|topic| {
            Envelope::decode(&d.payload)
                .map(|envelope| LogMessage {
                    partition,
                    seq: d.seq,
                    topic,
                    envelope,
                })
                .map_err(|e| e.to_string())
        });
    match decoded {
        Ok(m) => Some(Followed::Message(m)),
        Err(error) => {
            tracing::warn!(subject = %d.subject, %error, "skipping a partition message");
            None
        }
    }
}

/// How many times [`Cluster::store_retained_unless_newer`] reads and writes again after a
/// write came in between (each such write is usually newer: then it stops at once).
const LATE_RETAINED_TRIES: usize = 3;

/// `work`, unless `deadline` passes first (`None` then; no deadline: it runs to its end).
async fn bounded<T>(
    deadline: Option<Instant>,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    match deadline {
        Some(at) => tokio::time::timeout_at(tokio::time::Instant::from_std(at), work)
            .await
            .ok(),
        None => Some(work.await),
    }
}

/// A retained bucket's change as a topic and message; `None` (logged) when it does not
/// decode.
fn retained_change(ev: crate::backend::WatchEvent) -> Option<RetainedChange> {
    let change = decode_topic(&ev.key)
        .map_err(|e| e.to_string())
        .and_then(|topic| {
            let message = ev
                .entry
                .map(|e| Envelope::decode(&e.value))
                .transpose()
                .map_err(|e| e.to_string())?;
            Ok(RetainedChange { topic, message })
        });
    match change {
        Ok(c) => Some(c),
        Err(error) => {
            tracing::warn!(key = %ev.key, %error, "skipping a retained entry");
            None
        }
    }
}

/// A registry write of a node other than `me`, from a watch event; `None` for this node's
/// own writes, deletions, and entries that do not decode.
fn claimed_elsewhere(me: &NodeId, ev: crate::backend::WatchEvent) -> Option<ClaimedElsewhere> {
    let entry = ev.entry?;
    let decoded = ClientKey::from_key(&ev.key)
        .and_then(|k| k.client_id())
        .map_err(|e| e.to_string())
        .and_then(|id| {
            RegistryEntry::decode(&entry.value)
                .map(|e| (id, e.node))
                .map_err(|e| e.to_string())
        });
    match decoded {
        Ok((_, node)) if node == *me => None,
        Ok((client_id, node)) => Some(ClaimedElsewhere {
            client_id,
            node,
            revision: entry.revision,
        }),
        Err(error) => {
            tracing::warn!(key = %ev.key, %error, "skipping a registry entry");
            None
        }
    }
}

/// A compare-and-set outcome: the revision, `None` for a conflict, or the error.
fn written(r: Result<Revision, BackendError>) -> Result<Option<Revision>, BackendError> {
    match r {
        Ok(rev) => Ok(Some(rev)),
        Err(BackendError::Conflict) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Who writes a session record through [`Cluster::write_session_as`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordWriter {
    /// The node that claimed the client id (it served the client).
    Owner,
    /// A node that took a dead node's session.
    Reaper,
}

#[cfg(test)]
mod tests;
