//! Group commit: one thread owns the store and writes what arrives during a commit as one
//! transaction, so N clients waiting for an fsync cost one fsync, not N.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::{JoinHandle, ThreadId};

use crate::{Op, Store, StoreError};

mod stats;
mod worker;

use stats::Counters;
pub use stats::{CommitStats, COMMIT_OPS_BOUNDS, COMMIT_SECONDS_BOUNDS};
use worker::run;

/// Called once per submitted batch, on the committer's thread, after the group holding it was
/// committed (or failed). It must not block: hand the result to the broker (a channel, a
/// wake-up) and return; every later group waits for it.
pub type Done = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

type Read = Box<dyn FnOnce(&dyn Store) + Send>;

/// When a group counts as committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every group is on disk (fsync) before its `done` runs. Nothing acknowledged is lost,
    /// even to a power cut.
    Sync,
    /// Groups are committed without fsync and `done` runs at once; a durable commit follows
    /// at least every `max_delay_ms`. May lose the last `max_delay_ms` of acknowledged writes
    /// on power loss, and, because redb keeps a non-durable commit only until the process
    /// ends, also when the broker process is killed (a clean shutdown loses nothing).
    Batch { max_delay_ms: u64 },
}

/// How the committer behaves.
#[derive(Debug, Clone)]
pub struct CommitterOptions {
    pub durability: Durability,
    /// Ops waiting for the next group beyond which [`Committer::submit`] blocks.
    pub max_pending_ops: usize,
    /// Bytes (see [`Op::weight`]) waiting for the next group beyond which `submit` blocks.
    pub max_pending_bytes: usize,
}

impl Default for CommitterOptions {
    fn default() -> Self {
        CommitterOptions {
            durability: Durability::Sync,
            max_pending_ops: 100_000,
            max_pending_bytes: 64 << 20,
        }
    }
}

/// What [`Committer::try_submit`] gives back when the queue is full.
pub struct QueueFull {
    pub ops: Vec<Op>,
    pub done: Done,
}

impl std::fmt::Debug for QueueFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QueueFull({} ops)", self.ops.len())
    }
}

enum Item {
    Write {
        ops: Vec<Op>,
        done: Done,
        weight: usize,
    },
    Read(Read),
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Item>,
    pending_ops: usize,
    pending_bytes: usize,
    shutdown: bool,
    /// Set after a failed commit: memory and disk may disagree, nothing more is written.
    failed: Option<StoreError>,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the committer thread: work arrived or shutdown.
    work: Condvar,
    /// Wakes blocked submitters: the committer took a group, so there is room.
    room: Condvar,
    counters: Counters,
    options: CommitterOptions,
    /// The committer thread, so that `submit` from a `done` callback never waits on itself.
    thread: OnceLock<ThreadId>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding this lock leaves plain counters behind, nothing half-done:
        // carrying on is sound.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fits(&self, q: &Queue, ops: usize, bytes: usize) -> bool {
        // An empty queue admits any batch, however large, or it would wait forever.
        q.items.is_empty()
            || (q.pending_ops + ops <= self.options.max_pending_ops
                && q.pending_bytes + bytes <= self.options.max_pending_bytes)
    }

    fn on_committer_thread(&self) -> bool {
        self.thread.get() == Some(&std::thread::current().id())
    }
}

/// Owns a [`Store`] on a dedicated thread and commits submitted batches in groups.
///
/// Submitters see `done` called in submission order. A batch is applied atomically with the
/// rest of its group: after a crash, a group is either wholly there or wholly absent. After a
/// failed commit every later batch fails with [`StoreError::Stopped`].
pub struct Committer {
    shared: Arc<Shared>,
    handle: Option<JoinHandle<Box<dyn Store>>>,
}

impl Committer {
    /// Starts the committer thread, which owns `store` from now on.
    pub fn start(store: Box<dyn Store>, options: CommitterOptions) -> Committer {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            room: Condvar::new(),
            counters: Counters::default(),
            options,
            thread: OnceLock::new(),
        });
        let s = shared.clone();
        let handle = std::thread::Builder::new()
            .name("makelaar-store".into())
            .spawn(move || run(store, s))
            .ok();
        if handle.is_none() {
            shared.lock().failed =
                Some(StoreError::Stopped("the store thread did not start".into()));
        }
        Committer { shared, handle }
    }

    /// Queues a batch for the next group; `done` gets the outcome.
    ///
    /// When more than `max_pending_ops` ops or `max_pending_bytes` bytes are already waiting,
    /// this blocks until the committer takes them: the disk sets the pace, and the broker
    /// stops reading from publishers rather than growing a queue without bound. (Called from
    /// a `done` callback it never blocks, since only that thread makes room.) Use
    /// [`Committer::try_submit`] to get the batch back instead of waiting.
    pub fn submit(&self, ops: Vec<Op>, done: Done) {
        let weight = ops.iter().map(Op::weight).sum();
        let own_thread = self.shared.on_committer_thread();
        let mut q = self.shared.lock();
        loop {
            if let Some(refused) = self.refusal(&q) {
                drop(q);
                done(Err(refused));
                return;
            }
            if own_thread || self.shared.fits(&q, ops.len(), weight) {
                break;
            }
            q = self.shared.room.wait(q).unwrap_or_else(|e| e.into_inner());
        }
        self.push(q, ops, done, weight);
    }

    /// Like [`Committer::submit`], but returns the batch when the queue is full instead of
    /// waiting. The caller keeps it and tries again later (for example when one of its `done`
    /// callbacks runs).
    pub fn try_submit(&self, ops: Vec<Op>, done: Done) -> Result<(), QueueFull> {
        let weight = ops.iter().map(Op::weight).sum();
        let q = self.shared.lock();
        if let Some(refused) = self.refusal(&q) {
            drop(q);
            done(Err(refused));
            return Ok(());
        }
        if !self.shared.fits(&q, ops.len(), weight) {
            return Err(QueueFull { ops, done });
        }
        self.push(q, ops, done, weight);
        Ok(())
    }

    fn refusal(&self, q: &Queue) -> Option<StoreError> {
        if let Some(e) = &q.failed {
            return Some(e.clone());
        }
        q.shutdown
            .then(|| StoreError::Stopped("the store is shutting down".into()))
    }

    fn push(&self, mut q: MutexGuard<'_, Queue>, ops: Vec<Op>, done: Done, weight: usize) {
        q.pending_ops += ops.len();
        q.pending_bytes += weight;
        self.shared
            .counters
            .submitted(ops.len(), q.pending_ops, q.pending_bytes);
        q.items.push_back(Item::Write { ops, done, weight });
        drop(q);
        self.shared.work.notify_one();
    }

    /// Runs `f` on the store's thread after every batch submitted before it is committed, so
    /// it sees them (use it for `load_queue` while the broker runs). It delays the groups
    /// behind it, so keep it short. Dropped without running if the committer has stopped.
    pub fn read(&self, f: impl FnOnce(&dyn Store) + Send + 'static) {
        let mut q = self.shared.lock();
        if q.shutdown {
            return;
        }
        q.items.push_back(Item::Read(Box::new(f)));
        drop(q);
        self.shared.work.notify_one();
    }

    /// Counters of what has been committed so far.
    pub fn stats(&self) -> CommitStats {
        self.shared.counters.snapshot()
    }

    /// Why the committer stopped accepting writes, once a commit has failed (then the
    /// broker must not acknowledge anything more); `None` while it is healthy.
    pub fn failure(&self) -> Option<StoreError> {
        self.shared.lock().failed.clone()
    }

    /// Commits what is queued (durably, in either mode), stops the thread and gives the store
    /// back.
    pub fn shutdown(mut self) -> Result<Box<dyn Store>, StoreError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<Box<dyn Store>, StoreError> {
        self.shared.lock().shutdown = true;
        self.shared.work.notify_one();
        self.shared.room.notify_all();
        let handle = self
            .handle
            .take()
            .ok_or_else(|| StoreError::Stopped("the store thread is not running".into()))?;
        let store = handle
            .join()
            .map_err(|_| StoreError::Stopped("the store thread panicked".into()))?;
        match self.shared.lock().failed.clone() {
            Some(e) => Err(e),
            None => Ok(store),
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        if self.handle.is_some() {
            if let Err(e) = self.stop() {
                tracing::error!("closing the store: {e}");
            }
        }
    }
}
