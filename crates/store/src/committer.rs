//! Group commit: one thread owns the store and writes what arrives during a commit as one
//! transaction, so N clients waiting for an fsync cost one fsync, not N.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use crate::merge::merge;
use crate::{Op, Store, StoreError};

mod stats;

pub use stats::CommitStats;
use stats::Counters;

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
    thread: Mutex<Option<ThreadId>>,
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
        let t = self.thread.lock().unwrap_or_else(|e| e.into_inner());
        *t == Some(std::thread::current().id())
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
            thread: Mutex::new(None),
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

/// Calls a callback, keeping the committer alive if it panics (a bug in the caller must not
/// stop every later acknowledgement).
fn call(f: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        tracing::error!("a store completion callback panicked");
    }
}

/// Whatever way the committer thread ends (a panic included), nobody waits for it forever:
/// submitters are woken and refused, and batches still queued get an error.
struct ExitGuard(Arc<Shared>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let items: Vec<Item> = {
            let mut q = self.0.lock();
            if !q.shutdown {
                q.failed
                    .get_or_insert_with(|| StoreError::Stopped("the store thread ended".into()));
            }
            q.shutdown = true;
            q.items.drain(..).collect()
        };
        self.0.room.notify_all();
        for item in items {
            if let Item::Write { done, .. } = item {
                call(|| done(Err(StoreError::Stopped("the store thread ended".into()))));
            }
        }
    }
}

/// The committer thread.
fn run(mut store: Box<dyn Store>, shared: Arc<Shared>) -> Box<dyn Store> {
    *shared.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::thread::current().id());
    let _exit = ExitGuard(shared.clone());
    let max_delay = match shared.options.durability {
        Durability::Sync => None,
        Durability::Batch { max_delay_ms } => Some(Duration::from_millis(max_delay_ms)),
    };
    let mut last_durable = Instant::now();
    // Non-durable commits since the last durable one (batch mode).
    let mut unsynced = false;
    loop {
        let mut writes: Vec<(Vec<Op>, Done)> = Vec::new();
        let mut read: Option<Read> = None;
        let stopping;
        {
            let mut q = shared.lock();
            loop {
                if !q.items.is_empty() || q.shutdown {
                    break;
                }
                match max_delay {
                    Some(d) if unsynced => {
                        let left = d.saturating_sub(last_durable.elapsed());
                        if left.is_zero() {
                            break;
                        }
                        q = shared
                            .work
                            .wait_timeout(q, left)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                    }
                    _ => q = shared.work.wait(q).unwrap_or_else(|e| e.into_inner()),
                }
            }
            // Everything queued up to the first read: the read must see these writes.
            while let Some(item) = q.items.pop_front() {
                match item {
                    Item::Write { ops, done, weight } => {
                        q.pending_ops -= ops.len();
                        q.pending_bytes -= weight;
                        writes.push((ops, done));
                    }
                    Item::Read(f) if writes.is_empty() => {
                        read = Some(f);
                        break;
                    }
                    Item::Read(f) => {
                        q.items.push_front(Item::Read(f));
                        break;
                    }
                }
            }
            stopping = q.shutdown && q.items.is_empty();
            shared.counters.pending(q.pending_ops, q.pending_bytes);
        }
        shared.room.notify_all();

        let flush_due = max_delay.is_some_and(|d| unsynced && last_durable.elapsed() >= d);
        if !writes.is_empty() || flush_due || (stopping && unsynced) {
            let sync = max_delay.is_none_or(|d| stopping || last_durable.elapsed() >= d);
            let (batches, dones): (Vec<_>, Vec<_>) = writes.into_iter().unzip();
            let merged = merge(batches);
            let failed = shared.lock().failed.clone();
            let started = Instant::now();
            let result = match failed {
                Some(e) => Err(e),
                None => store.apply(&merged.ops, sync),
            };
            let took = started.elapsed();
            match &result {
                Ok(()) => {
                    shared.counters.committed(dones.len(), &merged, sync, took);
                    if sync {
                        last_durable = started;
                        unsynced = false;
                    } else {
                        unsynced = true;
                    }
                }
                Err(e) => {
                    tracing::error!("store commit failed, no more writes: {e}");
                    let mut q = shared.lock();
                    q.failed
                        .get_or_insert_with(|| StoreError::Stopped(e.to_string()));
                }
            }
            for done in dones {
                let r = result.clone();
                call(move || done(r));
            }
        }
        if let Some(f) = read {
            call(|| f(&*store));
        }
        if stopping {
            return store;
        }
    }
}
