//! Durable broker state: a write-behind mirror of what `makelaar-core` holds in memory.
//!
//! The core's in-memory state stays authoritative. Every change the broker must not lose
//! (a persistent session, a subscription, a message queued or in flight for a subscriber, an
//! inbound QoS 2 packet id, a retained message) is described as an [`Op`]; the broker hands
//! batches of them to the [`Committer`], which writes everything that arrived during the
//! previous commit as one transaction (group commit) and then calls each batch's `done`. The
//! broker acknowledges (PUBACK, PUBREC, SUBACK, ...) only from `done`, so with
//! [`Durability::Sync`] nothing acknowledged is lost, even to `kill -9` or a power cut. On
//! start-up [`Store::load_index`] reads back the sessions, subscriptions and retained messages,
//! and only the depth of each session's queue; the queued messages themselves are read with
//! [`Store::load_queue`] when their client returns.
//!
//! Two implementations of [`Store`]: [`RedbStore`], one redb file `makelaar.redb` in a data
//! directory, and [`MemoryStore`] for `--in-memory` brokers and tests. The store runs on its
//! own std thread (the committer's); nothing here needs an async runtime.
//!
//! ```
//! use makelaar_store::{Committer, CommitterOptions, MemoryStore, Op, SessionRecord};
//!
//! let committer = Committer::start(Box::new(MemoryStore::default()), CommitterOptions::default());
//! let (tx, rx) = std::sync::mpsc::channel();
//! let session = SessionRecord {
//!     protocol_version: 5,
//!     expiry_interval: 3600,
//!     disconnected_at_ms: None,
//!     pending_will: None,
//!     will_at_ms: None,
//!     username: None,
//! };
//! committer.submit(
//!     vec![Op::PutSession { client_id: "sensor-1".into(), record: session }],
//!     Box::new(move |result| { let _ = tx.send(result); }),
//! );
//! assert!(rx.recv().unwrap().is_ok()); // now it is safe to send CONNACK
//! ```

mod codec;
mod committer;
mod error;
mod inspect;
mod lock;
mod memory;
mod merge;
mod record;
mod redb_store;

pub use committer::{
    CommitStats, Committer, CommitterOptions, Done, Durability, QueueFull, COMMIT_OPS_BOUNDS,
    COMMIT_SECONDS_BOUNDS,
};
pub use error::StoreError;
pub use inspect::{inspect, SessionSummary, Summary};
pub use lock::{move_aside, LOCK_FILE, STORE_FILE};
pub use memory::MemoryStore;
pub use record::{
    Index, MessageRecord, Op, QueueDepth, QueuedRecord, QueuedState, SessionIndex, SessionRecord,
    SubscriptionRecord, NEVER_EXPIRES,
};
pub use redb_store::{RedbOptions, RedbStore, FORMAT_VERSION};

/// Durable state behind one interface: written in atomic batches, read back on start-up.
///
/// `Send` because the committer moves it to its own thread; only that thread uses it after
/// start-up (reads then go through [`Committer::read`], so they see every earlier write).
pub trait Store: Send {
    /// Applies the ops in order, all or nothing. With `sync` the data is on disk (fsync) when
    /// this returns; without, it survives a later `sync` apply or a clean close, but may be
    /// lost if the process or the machine dies first.
    fn apply(&mut self, ops: &[Op], sync: bool) -> Result<(), StoreError>;

    /// Everything start-up needs, without the queued messages' payloads.
    fn load_index(&self) -> Result<Index, StoreError>;

    /// The queued and inflight messages of one session, in `seq` order.
    fn load_queue(&self, client_id: &str) -> Result<Vec<(u64, QueuedRecord)>, StoreError>;

    /// Record counts and the size on disk.
    fn stats(&self) -> Result<StoreStats, StoreError>;
}

/// What [`Store::stats`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    pub sessions: u64,
    pub subscriptions: u64,
    /// Queued and inflight messages over all sessions.
    pub queued: u64,
    pub retained: u64,
    /// Size of the store file (0 for the memory store).
    pub file_bytes: u64,
}
