//! The committer thread: takes what was queued, commits it as one group, reports back.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Done, Durability, Item, Read, Shared};
use crate::merge::merge;
use crate::{Op, Store, StoreError};

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

/// The committer thread's state.
struct Worker {
    store: Box<dyn Store>,
    shared: Arc<Shared>,
    /// `Some` in batch mode: the longest a non-durable commit may stay so.
    max_delay: Option<Duration>,
    last_durable: Instant,
    /// Non-durable commits since the last durable one (batch mode).
    unsynced: bool,
}

/// What the thread takes from the queue in one go.
struct Work {
    writes: Vec<(Vec<Op>, Done)>,
    read: Option<Read>,
    stopping: bool,
}

/// The committer thread.
pub(super) fn run(store: Box<dyn Store>, shared: Arc<Shared>) -> Box<dyn Store> {
    let _ = shared.thread.set(std::thread::current().id());
    let _exit = ExitGuard(shared.clone());
    let max_delay = match shared.options.durability {
        Durability::Sync => None,
        Durability::Batch { max_delay_ms } => Some(Duration::from_millis(max_delay_ms)),
    };
    let mut worker = Worker {
        store,
        shared,
        max_delay,
        last_durable: Instant::now(),
        unsynced: false,
    };
    loop {
        let work = worker.next_work();
        let flush_due = worker.flush_due();
        if !work.writes.is_empty() || flush_due || (work.stopping && worker.unsynced) {
            worker.commit(work.writes, work.stopping);
        }
        if let Some(f) = work.read {
            call(|| f(&*worker.store));
        }
        if work.stopping {
            return worker.store;
        }
    }
}

impl Worker {
    /// Whether batch mode owes a durable commit now.
    fn flush_due(&self) -> bool {
        self.max_delay
            .is_some_and(|d| self.unsynced && self.last_durable.elapsed() >= d)
    }

    /// Waits for work (or for a durable commit to fall due), then takes every write queued
    /// up to the first read: the read must see them committed.
    fn next_work(&self) -> Work {
        let shared = &self.shared;
        let mut q = shared.lock();
        while q.items.is_empty() && !q.shutdown {
            match self.max_delay {
                Some(d) if self.unsynced => {
                    let left = d.saturating_sub(self.last_durable.elapsed());
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
        let mut work = Work {
            writes: Vec::new(),
            read: None,
            stopping: false,
        };
        while let Some(item) = q.items.pop_front() {
            match item {
                Item::Write { ops, done, weight } => {
                    q.pending_ops -= ops.len();
                    q.pending_bytes -= weight;
                    work.writes.push((ops, done));
                }
                Item::Read(f) if work.writes.is_empty() => {
                    work.read = Some(f);
                    break;
                }
                Item::Read(f) => {
                    q.items.push_front(Item::Read(f));
                    break;
                }
            }
        }
        work.stopping = q.shutdown && q.items.is_empty();
        shared.counters.pending(q.pending_ops, q.pending_bytes);
        drop(q);
        shared.room.notify_all();
        work
    }

    /// Merges the batches into one transaction, commits it and reports to every batch.
    fn commit(&mut self, writes: Vec<(Vec<Op>, Done)>, stopping: bool) {
        let sync = self
            .max_delay
            .is_none_or(|d| stopping || self.last_durable.elapsed() >= d);
        let (batches, dones): (Vec<_>, Vec<_>) = writes.into_iter().unzip();
        let merged = merge(batches);
        let failed = self.shared.lock().failed.clone();
        let started = Instant::now();
        let result = match failed {
            Some(e) => Err(e),
            None => self.store.apply(&merged.ops, sync).inspect_err(|e| {
                tracing::error!("store commit failed, no more writes: {e}");
                self.shared
                    .lock()
                    .failed
                    .get_or_insert_with(|| StoreError::Stopped(e.to_string()));
            }),
        };
        if result.is_ok() {
            let took = started.elapsed();
            self.shared
                .counters
                .committed(dones.len(), &merged, sync, took);
            if sync {
                self.last_durable = started;
            }
            self.unsynced = !sync;
        }
        for done in dones {
            let r = result.clone();
            call(move || done(r));
        }
    }
}
