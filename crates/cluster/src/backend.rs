//! What the cluster layer needs from its engine, as a trait, and an in-memory engine for
//! tests. The NATS implementation is [`crate::nats::NatsBackend`].
//!
//! Live QoS 1/2 deliveries take the path measured and chosen in docs/cluster.md ("The
//! delivery path"): per node and partition one ordered consumer without a filter
//! ([`Backend::follow`]); every node matches what it reads against its own topic tree.
//! [`Backend::append`] stores a message durably in its partition, [`Backend::subscribe`]
//! follows core subjects.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::ids::{MessageId, Revision};
use crate::kv::MemoryKv;
use crate::partition::Partition;
use crate::subject::Subject;

/// The KV buckets of a cluster. Their number is fixed: never one per client or subscription
/// (rule 2 of docs/cluster.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bucket {
    /// Client id → [`RegistryEntry`](crate::record::RegistryEntry).
    Registry,
    /// Client id → [`SessionRecord`](crate::record::SessionRecord).
    Sessions,
    /// Topic → retained message.
    Retained,
    /// Node name → [`NodeLease`](crate::record::NodeLease); entries expire after the lease TTL.
    Leases,
    /// `node.incarnation` of a dead node → the survivor that publishes its wills.
    Reapers,
}

impl Bucket {
    /// Every bucket.
    pub const ALL: [Bucket; 5] = [
        Bucket::Registry,
        Bucket::Sessions,
        Bucket::Retained,
        Bucket::Leases,
        Bucket::Reapers,
    ];

    /// The bucket's name after the cluster's prefix (`{prefix}_{suffix}`).
    pub fn suffix(self) -> &'static str {
        match self {
            Bucket::Registry => "registry",
            Bucket::Sessions => "sessions",
            Bucket::Retained => "retained",
            Bucket::Leases => "leases",
            Bucket::Reapers => "reapers",
        }
    }
}

/// An engine operation that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// A compare-and-set write found the key changed (or, for a create, present).
    #[error("compare-and-set conflict: the key changed since it was read")]
    Conflict,
    /// The engine did not answer in time.
    #[error("the engine did not answer in time")]
    Timeout,
    /// Nobody answered a request.
    #[error("no node answered the request")]
    NoResponder,
    /// Anything else the engine reported.
    #[error("engine error: {0}")]
    Engine(String),
}

/// A KV entry: its value and revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The value.
    pub value: Bytes,
    /// The revision of the write that put it.
    pub revision: Revision,
}

/// A change seen by a [`Backend::watch`]: a key's new entry, or `None` when deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// The key.
    pub key: String,
    /// Its entry now; `None`: deleted or expired.
    pub entry: Option<Entry>,
}

/// A message received on a core subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The subject it was published on.
    pub subject: String,
    /// The payload.
    pub payload: Bytes,
    /// Where a request wants its answer.
    pub reply: Option<String>,
}

/// A message read from a partition stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamMessage {
    /// Its stream sequence.
    pub seq: u64,
    /// The subject it was appended on.
    pub subject: String,
    /// The payload.
    pub payload: Bytes,
    /// How many messages the stream holds after it for this reader (its lag), as the engine
    /// reports it; 0 where it does not.
    pub pending: u64,
}

/// The engine under the cluster layer. Every method is one round trip at most.
pub trait Backend: Send + Sync + 'static {
    /// A stream of messages on a core subject.
    type Subscription: Stream<Item = Delivery> + Send + Unpin + 'static;

    /// A stream of changes to the keys of a bucket.
    type Watch: Stream<Item = WatchEvent> + Send + Unpin + 'static;

    /// A partition's messages as they are appended.
    type Follow: Stream<Item = StreamMessage> + Send + Unpin + 'static;

    /// A stretch of a partition's messages read back; an error ends it short (the stretch
    /// is still held but could not be read: the caller reads it again later).
    type Read: Stream<Item = Result<StreamMessage, BackendError>> + Send + Unpin + 'static;

    /// The entry under `key`; `None` when absent or deleted.
    fn get(
        &self,
        bucket: Bucket,
        key: &str,
    ) -> impl Future<Output = Result<Option<Entry>, BackendError>> + Send;

    /// Writes `key` only if absent; [`BackendError::Conflict`] otherwise.
    fn create(
        &self,
        bucket: Bucket,
        key: &str,
        value: Bytes,
    ) -> impl Future<Output = Result<Revision, BackendError>> + Send;

    /// Writes `key` only if its revision is `expected`; [`BackendError::Conflict`] otherwise.
    fn update(
        &self,
        bucket: Bucket,
        key: &str,
        value: Bytes,
        expected: Revision,
    ) -> impl Future<Output = Result<Revision, BackendError>> + Send;

    /// Writes `key` whatever it holds.
    fn put(
        &self,
        bucket: Bucket,
        key: &str,
        value: Bytes,
    ) -> impl Future<Output = Result<Revision, BackendError>> + Send;

    /// Deletes `key`, only if its revision is `expected` when given.
    fn delete(
        &self,
        bucket: Bucket,
        key: &str,
        expected: Option<Revision>,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// The keys present in a bucket.
    fn keys(
        &self,
        bucket: Bucket,
    ) -> impl Future<Output = Result<Vec<String>, BackendError>> + Send;

    /// Follows the keys matching `filter` (`.`-separated tokens, `*` and `>` as in subjects):
    /// first each one's current entry, then every change.
    fn watch(
        &self,
        bucket: Bucket,
        filter: &str,
    ) -> impl Future<Output = Result<Self::Watch, BackendError>> + Send;

    /// Publishes on a core subject, at most once (QoS 0 routing, control messages).
    fn publish(
        &self,
        subject: Subject,
        payload: Bytes,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Appends to a partition's stream and waits for the engine's acknowledgement (on disk
    /// on a majority); returns the stream sequence.
    fn append(
        &self,
        partition: Partition,
        subject: Subject,
        payload: Bytes,
    ) -> impl Future<Output = Result<u64, BackendError>> + Send;

    /// [`Backend::append`], stored once per `id` within the engine's deduplication window
    /// (on NATS the partition streams' `duplicate_window`, header `Nats-Msg-Id`): an append
    /// of an id stored already stores nothing and returns the stored message's sequence. For
    /// appends tried again after a failure whose first try may have been stored all the same
    /// (its answer lost).
    fn append_once(
        &self,
        partition: Partition,
        subject: Subject,
        payload: Bytes,
        id: &MessageId,
    ) -> impl Future<Output = Result<u64, BackendError>> + Send;

    /// Follows a core subject (wildcards allowed), in a queue group when one is given.
    fn subscribe(
        &self,
        subject: Subject,
        queue: Option<String>,
    ) -> impl Future<Output = Result<Self::Subscription, BackendError>> + Send;

    /// Follows a partition's stream from the next message appended on (the stream sequence
    /// does not go back: this node's earlier messages are not replayed), in order, without
    /// gaps or duplicates: on NATS an ordered consumer without a filter, in memory on the
    /// server, recreated from the last sequence seen when it falls behind. One per node and
    /// partition, whatever the number of clients and subscriptions. Returns the first
    /// sequence it will deliver (everything below was appended before).
    fn follow(
        &self,
        partition: Partition,
    ) -> impl Future<Output = Result<(u64, Self::Follow), BackendError>> + Send;

    /// Reads a partition's messages from sequence `from` through `to` (both appended
    /// already), in order, then ends. Messages the stream no longer holds (aged out) are
    /// missing from it; messages it holds but cannot deliver now end it with an error. A
    /// temporary consumer on NATS, gone when the stream is dropped.
    fn read(
        &self,
        partition: Partition,
        from: u64,
        to: u64,
    ) -> impl Future<Output = Result<Self::Read, BackendError>> + Send;

    /// Sends a request and waits for one answer.
    fn request(
        &self,
        subject: Subject,
        payload: Bytes,
        timeout: Duration,
    ) -> impl Future<Output = Result<Bytes, BackendError>> + Send;

    /// Leaves the engine server this node is connected to for another one of its cluster
    /// (the lease's [`crate::lease::OwnState::MoveServer`]); returns at once, the connection
    /// is made again in the background. An engine of one server (the memory engine) has
    /// nowhere to go: nothing is done.
    fn move_server(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

type Watchers = Vec<(
    Bucket,
    String,
    tokio::sync::mpsc::UnboundedSender<WatchEvent>,
)>;

#[derive(Default)]
struct MemoryState {
    buckets: HashMap<Bucket, MemoryKv>,
    watchers: Watchers,
    streams: HashMap<Partition, Vec<(Subject, Bytes)>>,
    followers: Vec<(Partition, tokio::sync::mpsc::UnboundedSender<StreamMessage>)>,
    subscribers: Vec<(Subject, tokio::sync::mpsc::UnboundedSender<Delivery>)>,
    /// Writes to fail, per bucket: how many more, and with what.
    faults: HashMap<Bucket, (usize, BackendError)>,
    /// Writes that land but answer an error (see [`MemoryBackend::lose_answers`]).
    lost_answers: HashMap<Bucket, (usize, BackendError)>,
    /// Requests go unanswered (see [`MemoryBackend::silent_requests`]).
    silent_requests: bool,
    /// Appends to fail: how many more, and with what.
    append_faults: Option<(usize, BackendError)>,
    /// Per partition, the sequence each [`Backend::append_once`] id was stored at (kept for
    /// good: the memory engine has no window).
    appended_ids: HashMap<Partition, HashMap<MessageId, u64>>,
}

impl MemoryState {
    /// An append: the next sequence of the partition, or the stored one's for an id seen
    /// before; fails while [`MemoryBackend::fail_appends`] says so.
    fn append(
        &mut self,
        partition: Partition,
        subject: Subject,
        payload: Bytes,
        id: Option<&MessageId>,
    ) -> Result<u64, BackendError> {
        if let Some((count, error)) = self.append_faults.as_mut().filter(|(n, _)| *n > 0) {
            *count = count.saturating_sub(1);
            return Err(error.clone());
        }
        if let Some(&seq) = id.and_then(|id| self.appended_ids.get(&partition)?.get(id)) {
            return Ok(seq);
        }
        let seq = self.streams.get(&partition).map_or(0, Vec::len) as u64 + 1;
        self.followers.retain(|(p, tx)| {
            *p != partition
                || tx
                    .send(StreamMessage {
                        seq,
                        subject: subject.to_string(),
                        payload: payload.clone(),
                        pending: 0,
                    })
                    .is_ok()
        });
        self.streams
            .entry(partition)
            .or_default()
            .push((subject, payload));
        if let Some(id) = id {
            self.appended_ids
                .entry(partition)
                .or_default()
                .insert(id.clone(), seq);
        }
        Ok(seq)
    }
}

/// An engine in memory, shared by clones: the buckets with compare-and-set, the partition
/// streams as vectors, core subjects with `*`/`>` matching (no queue groups: every
/// subscriber gets every message). For tests of the layers above; it persists nothing.
#[derive(Clone, Default)]
pub struct MemoryBackend {
    state: Arc<Mutex<MemoryState>>,
}

impl MemoryBackend {
    /// An empty engine.
    pub fn new() -> MemoryBackend {
        MemoryBackend::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut MemoryState) -> T) -> Result<T, BackendError> {
        let mut s = self
            .state
            .lock()
            .map_err(|_| BackendError::Engine("memory backend poisoned".into()))?;
        Ok(f(&mut s))
    }

    /// For tests of what meets engine trouble: the next `count` writes (create, update, put,
    /// delete) to `bucket` fail with `error`, and change nothing (`usize::MAX`: until
    /// called again; 0: none).
    pub fn fail_writes(&self, bucket: Bucket, count: usize, error: BackendError) {
        let _ = self.with(|s| s.faults.insert(bucket, (count, error)));
    }

    /// For tests of a peer that holds its subject but does not answer: requests wait out
    /// their timeout and fail with [`BackendError::Timeout`] (by default they find no
    /// responder at once).
    pub fn silent_requests(&self, silent: bool) {
        let _ = self.with(|s| s.silent_requests = silent);
    }

    /// For tests of writes whose answer is lost: the next `count` successful writes to
    /// `bucket` take effect but answer `error` (as a NATS request that timed out after the
    /// server had it, or a 503 from a server that lost its leader after the write).
    pub fn lose_answers(&self, bucket: Bucket, count: usize, error: BackendError) {
        let _ = self.with(|s| s.lost_answers.insert(bucket, (count, error)));
    }

    /// For tests of what meets engine trouble: the next `count` appends (both kinds) fail
    /// with `error` and store nothing (`usize::MAX`: until called again; 0: none).
    pub fn fail_appends(&self, count: usize, error: BackendError) {
        let _ = self.with(|s| s.append_faults = Some((count, error)));
    }

    /// Runs a write on a bucket and tells the watchers of the key what it holds after.
    fn write<T>(
        &self,
        bucket: Bucket,
        key: &str,
        f: impl FnOnce(&mut MemoryKv) -> Result<T, crate::kv::Conflict>,
    ) -> Result<T, BackendError> {
        self.with(|s| {
            if let Some((count, error)) = s.faults.get_mut(&bucket).filter(|(n, _)| *n > 0) {
                *count = count.saturating_sub(1);
                return Err(error.clone());
            }
            let kv = s.buckets.entry(bucket).or_default();
            let r = f(kv).map_err(|_| BackendError::Conflict)?;
            let lost = match s.lost_answers.get_mut(&bucket).filter(|(n, _)| *n > 0) {
                Some((count, error)) => {
                    *count = count.saturating_sub(1);
                    Some(error.clone())
                }
                None => None,
            };
            let kv = s.buckets.entry(bucket).or_default();
            let entry = kv
                .get(key)
                .map(|(value, revision)| Entry { value, revision });
            s.watchers.retain(|(b, filter, tx)| {
                if *b != bucket || !subject_matches(filter, key) {
                    return !tx.is_closed();
                }
                tx.send(WatchEvent {
                    key: key.to_owned(),
                    entry: entry.clone(),
                })
                .is_ok()
            });
            match lost {
                Some(error) => Err(error),
                None => Ok(r),
            }
        })?
    }

    /// The messages appended to a partition, in order.
    pub fn stream(&self, partition: Partition) -> Vec<(Subject, Bytes)> {
        self.with(|s| s.streams.get(&partition).cloned().unwrap_or_default())
            .unwrap_or_default()
    }
}

/// Whether a NATS subject filter matches a subject.
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return f.next().is_none(),
            (Some("*"), Some(_)) => {}
            (Some(ft), Some(st)) if ft == st => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A [`MemoryBackend`] watch: the changes to matching keys.
pub struct MemoryWatch(tokio::sync::mpsc::UnboundedReceiver<WatchEvent>);

impl Stream for MemoryWatch {
    type Item = WatchEvent;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<WatchEvent>> {
        self.0.poll_recv(cx)
    }
}

/// A [`MemoryBackend`] subscription: the messages published on matching subjects.
pub struct MemorySubscription(tokio::sync::mpsc::UnboundedReceiver<Delivery>);

impl Stream for MemorySubscription {
    type Item = Delivery;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Delivery>> {
        self.0.poll_recv(cx)
    }
}

/// A [`MemoryBackend`] partition follower or read-back.
pub struct MemoryFollow(tokio::sync::mpsc::UnboundedReceiver<StreamMessage>);

impl Stream for MemoryFollow {
    type Item = StreamMessage;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<StreamMessage>> {
        self.0.poll_recv(cx)
    }
}

impl Backend for MemoryBackend {
    type Subscription = MemorySubscription;
    type Watch = MemoryWatch;
    type Follow = MemoryFollow;
    type Read = futures_util::stream::Map<
        MemoryFollow,
        fn(StreamMessage) -> Result<StreamMessage, BackendError>,
    >;

    async fn follow(&self, partition: Partition) -> Result<(u64, MemoryFollow), BackendError> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let next = self.with(|s| {
            s.followers.push((partition, tx));
            s.streams.get(&partition).map_or(0, Vec::len) as u64 + 1
        })?;
        Ok((next, MemoryFollow(rx)))
    }

    async fn read(
        &self,
        partition: Partition,
        from: u64,
        to: u64,
    ) -> Result<Self::Read, BackendError> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.with(|s| {
            let stream = s.streams.get(&partition).map(Vec::as_slice).unwrap_or(&[]);
            for (i, (subject, payload)) in stream.iter().enumerate() {
                let seq = i as u64 + 1;
                if (from..=to).contains(&seq) {
                    let _ = tx.send(StreamMessage {
                        seq,
                        subject: subject.to_string(),
                        payload: payload.clone(),
                        pending: 0,
                    });
                }
            }
        })?;
        Ok(MemoryFollow(rx).map(Ok as fn(StreamMessage) -> Result<StreamMessage, BackendError>))
    }

    async fn get(&self, bucket: Bucket, key: &str) -> Result<Option<Entry>, BackendError> {
        self.with(|s| {
            s.buckets
                .entry(bucket)
                .or_default()
                .get(key)
                .map(|(value, revision)| Entry { value, revision })
        })
    }

    async fn create(
        &self,
        bucket: Bucket,
        key: &str,
        value: Bytes,
    ) -> Result<Revision, BackendError> {
        self.write(bucket, key, |kv| kv.create(key, value))
    }

    async fn update(
        &self,
        bucket: Bucket,
        key: &str,
        value: Bytes,
        expected: Revision,
    ) -> Result<Revision, BackendError> {
        self.write(bucket, key, |kv| kv.update(key, value, expected))
    }

    async fn put(&self, bucket: Bucket, key: &str, value: Bytes) -> Result<Revision, BackendError> {
        self.write(bucket, key, |kv| Ok(kv.put(key, value)))
    }

    async fn delete(
        &self,
        bucket: Bucket,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<(), BackendError> {
        self.write(bucket, key, |kv| kv.delete(key, expected))
    }

    async fn watch(&self, bucket: Bucket, filter: &str) -> Result<MemoryWatch, BackendError> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.with(|s| {
            let kv = s.buckets.entry(bucket).or_default();
            for key in kv.keys() {
                if subject_matches(filter, key) {
                    let entry = kv
                        .get(key)
                        .map(|(value, revision)| Entry { value, revision });
                    let _ = tx.send(WatchEvent {
                        key: key.to_owned(),
                        entry,
                    });
                }
            }
            s.watchers.push((bucket, filter.to_owned(), tx));
        })?;
        Ok(MemoryWatch(rx))
    }

    async fn keys(&self, bucket: Bucket) -> Result<Vec<String>, BackendError> {
        self.with(|s| {
            s.buckets
                .entry(bucket)
                .or_default()
                .keys()
                .map(str::to_owned)
                .collect()
        })
    }

    async fn publish(&self, subject: Subject, payload: Bytes) -> Result<(), BackendError> {
        self.with(|s| {
            s.subscribers.retain(|(filter, tx)| {
                if subject_matches(filter.as_str(), subject.as_str()) {
                    tx.send(Delivery {
                        subject: subject.to_string(),
                        payload: payload.clone(),
                        reply: None,
                    })
                    .is_ok()
                } else {
                    !tx.is_closed()
                }
            });
        })
    }

    async fn append(
        &self,
        partition: Partition,
        subject: Subject,
        payload: Bytes,
    ) -> Result<u64, BackendError> {
        self.with(|s| s.append(partition, subject, payload, None))?
    }

    async fn append_once(
        &self,
        partition: Partition,
        subject: Subject,
        payload: Bytes,
        id: &MessageId,
    ) -> Result<u64, BackendError> {
        self.with(|s| s.append(partition, subject, payload, Some(id)))?
    }

    async fn subscribe(
        &self,
        subject: Subject,
        _queue: Option<String>,
    ) -> Result<MemorySubscription, BackendError> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.with(|s| s.subscribers.push((subject, tx)))?;
        Ok(MemorySubscription(rx))
    }

    async fn request(
        &self,
        _subject: Subject,
        _payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, BackendError> {
        if self.with(|s| s.silent_requests)? {
            tokio::time::sleep(timeout).await;
            return Err(BackendError::Timeout);
        }
        Err(BackendError::NoResponder)
    }
}
