//! The group committer: grouping, order of `done`, cancellation, batch durability, the bound
//! on its queue, reads, failures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::{del_queued, put_queued, put_session};
use makelaar_store::{
    Committer, CommitterOptions, Durability, Index, MemoryStore, Op, QueuedRecord, RedbOptions,
    RedbStore, Store, StoreError, StoreStats,
};

type Log = Arc<Mutex<Vec<(Vec<Op>, bool)>>>;

/// A memory store that logs what reaches it, and can fail or hold its first commit.
struct Recording {
    inner: MemoryStore,
    log: Log,
    fail_on_apply: Option<usize>,
    /// Signals when the first commit starts, then waits for the go-ahead.
    gate: Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>,
}

fn recording(fail_on_apply: Option<usize>) -> (Box<dyn Store>, Log) {
    let log = Log::default();
    let store = Recording {
        inner: MemoryStore::default(),
        log: log.clone(),
        fail_on_apply,
        gate: None,
    };
    (Box::new(store), log)
}

impl Store for Recording {
    fn apply(&mut self, ops: &[Op], sync: bool) -> Result<(), StoreError> {
        if let Some((started, go)) = self.gate.take() {
            started.send(()).unwrap();
            go.recv().unwrap();
        }
        let mut log = self.log.lock().unwrap();
        log.push((ops.to_vec(), sync));
        if self.fail_on_apply == Some(log.len()) {
            return Err(StoreError::TooLarge(1));
        }
        self.inner.apply(ops, sync)
    }
    fn load_index(&self) -> Result<Index, StoreError> {
        self.inner.load_index()
    }
    fn load_queue(&self, client_id: &str) -> Result<Vec<(u64, QueuedRecord)>, StoreError> {
        self.inner.load_queue(client_id)
    }
    fn stats(&self) -> Result<StoreStats, StoreError> {
        self.inner.stats()
    }
}

/// Holds the committer thread until the returned sender is used (or dropped).
fn hold(committer: &Committer) -> mpsc::Sender<()> {
    let (release, held) = mpsc::channel::<()>();
    committer.read(move |_| {
        let _ = held.recv();
    });
    release
}

type Results = mpsc::Receiver<(usize, Result<(), StoreError>)>;

fn submit_numbered(committer: &Committer, batches: Vec<Vec<Op>>) -> Results {
    let (tx, rx) = mpsc::channel();
    for (i, ops) in batches.into_iter().enumerate() {
        let tx = tx.clone();
        committer.submit(ops, Box::new(move |r| tx.send((i, r)).unwrap()));
    }
    rx
}

#[test]
fn submits_during_a_commit_become_one_group_and_done_runs_in_order() {
    let log = Log::default();
    let (started_tx, started) = mpsc::channel();
    let (go, go_rx) = mpsc::channel();
    let store = Recording {
        inner: MemoryStore::default(),
        log: log.clone(),
        fail_on_apply: None,
        gate: Some((started_tx, go_rx)),
    };
    let committer = Arc::new(Committer::start(
        Box::new(store),
        CommitterOptions::default(),
    ));
    let first = submit_numbered(&committer, vec![vec![put_session("first")]]);
    started.recv().unwrap(); // the first commit is running now, and stays so until `go`
    let (tx, rx) = mpsc::channel();
    let submitters: Vec<_> = (0..4)
        .map(|t| {
            let (committer, tx) = (committer.clone(), tx.clone());
            std::thread::spawn(move || {
                for i in 0..25u64 {
                    let tx = tx.clone();
                    let done =
                        Box::new(move |r: Result<(), StoreError>| tx.send((t, i, r)).unwrap());
                    committer.submit(vec![put_queued(&format!("c{t}"), i, b"x")], done);
                }
            })
        })
        .collect();
    submitters.into_iter().for_each(|s| s.join().unwrap());
    go.send(()).unwrap();
    first.recv().unwrap().1.unwrap();
    let mut next = [0u64; 4];
    for _ in 0..100 {
        let (t, i, r) = rx.recv().unwrap();
        r.unwrap();
        assert_eq!(i, next[t as usize], "done out of submission order");
        next[t as usize] += 1;
    }
    let log = log.lock().unwrap();
    let sizes: Vec<usize> = log.iter().map(|(ops, _)| ops.len()).collect();
    assert_eq!(
        sizes,
        vec![1, 100],
        "the 100 submits made while the first commit ran"
    );
    let stats = committer.stats();
    assert_eq!(
        (stats.commits, stats.fsyncs, stats.batches_committed),
        (2, 2, 101)
    );
    assert!((stats.mean_batches_per_commit() - 50.5).abs() < 1e-9);
}

#[test]
fn a_put_deleted_in_its_group_is_never_written() {
    let (store, log) = recording(None);
    let committer = Committer::start(store, CommitterOptions::default());
    let release = hold(&committer);
    let put_inbound = Op::PutInbound {
        client_id: "a".into(),
        packet_id: 7,
    };
    let del_inbound = Op::DeleteInbound {
        client_id: "a".into(),
        packet_id: 7,
    };
    let put_retained = Op::PutRetained {
        topic: "t".into(),
        message: Arc::new(common::message("t", b"r")),
    };
    let del_retained = Op::DeleteRetained { topic: "t".into() };
    let results = submit_numbered(
        &committer,
        vec![
            vec![
                put_queued("a", 1, b"x"),
                put_inbound,
                put_retained,
                put_queued("a", 2, b"old"),
            ],
            vec![
                del_queued("a", 1),
                del_inbound.clone(),
                del_retained.clone(),
            ],
            vec![put_queued("a", 2, b"new")],
        ],
    );
    release.send(()).unwrap();
    for i in 0..3 {
        assert_eq!(results.recv().unwrap().0, i);
    }
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 1, "one group");
    assert_eq!(
        log[0].0,
        vec![
            del_queued("a", 1),
            del_inbound,
            del_retained,
            put_queued("a", 2, b"new")
        ]
    );
    let stats = committer.stats();
    assert_eq!(
        (stats.ops_submitted, stats.ops_written, stats.ops_cancelled),
        (8, 4, 4)
    );
}

#[test]
fn batch_mode_acknowledges_before_fsync_and_syncs_within_the_delay() {
    let (store, log) = recording(None);
    let options = CommitterOptions {
        durability: Durability::Batch { max_delay_ms: 100 },
        ..CommitterOptions::default()
    };
    let committer = Committer::start(store, options);
    let started = Instant::now();
    let results = submit_numbered(&committer, vec![vec![put_session("a")]]);
    results.recv().unwrap().1.unwrap();
    assert_eq!(
        log.lock().unwrap().last().map(|(_, sync)| *sync),
        Some(false)
    );
    // Idle: the durable commit follows on its own, within the delay (plus scheduling).
    let deadline = Instant::now() + Duration::from_secs(5);
    while committer.stats().fsyncs == 0 {
        assert!(Instant::now() < deadline, "no durable commit");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(started.elapsed() >= Duration::from_millis(100));
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 2);
    assert!(log[1].0.is_empty() && log[1].1, "{log:?}");
}

#[test]
fn batch_mode_loses_nothing_on_a_clean_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path(), &RedbOptions::default()).unwrap();
    let options = CommitterOptions {
        durability: Durability::Batch {
            max_delay_ms: 60_000,
        },
        ..CommitterOptions::default()
    };
    let committer = Committer::start(Box::new(store), options);
    let batches = (0..50).map(|i| vec![put_queued("a", i, b"m")]).collect();
    let results = submit_numbered(&committer, batches);
    drop(committer); // commits what is queued, durably
    assert_eq!(results.iter().filter(|(_, r)| r.is_ok()).count(), 50);
    let store = RedbStore::open(dir.path(), &RedbOptions::default()).unwrap();
    assert_eq!(store.load_queue("a").unwrap().len(), 50);
}

#[test]
fn a_full_queue_blocks_submit_and_refuses_try_submit() {
    let (store, _log) = recording(None);
    let options = CommitterOptions {
        max_pending_ops: 10,
        ..CommitterOptions::default()
    };
    let committer = Arc::new(Committer::start(store, options));
    let release = hold(&committer);
    let six = || (0..6).map(|i| put_queued("a", i, b"x")).collect::<Vec<_>>();
    let noop = || Box::new(|_: Result<(), StoreError>| {});
    committer.try_submit(six(), noop()).unwrap();
    let full = committer.try_submit(six(), noop()).unwrap_err();
    assert_eq!(full.ops.len(), 6); // handed back
    committer.try_submit(six()[..4].to_vec(), noop()).unwrap();
    assert_eq!(committer.stats().pending_ops, 10);

    let returned = Arc::new(AtomicBool::new(false));
    let blocked = {
        let (committer, returned) = (committer.clone(), returned.clone());
        std::thread::spawn(move || {
            committer.submit(vec![put_session("b")], Box::new(|_| {}));
            returned.store(true, Ordering::SeqCst);
        })
    };
    std::thread::sleep(Duration::from_millis(150));
    assert!(
        !returned.load(Ordering::SeqCst),
        "submit did not wait for room"
    );
    release.send(()).unwrap();
    blocked.join().unwrap();
    assert!(returned.load(Ordering::SeqCst));
}

#[test]
fn a_read_sees_every_earlier_submit() {
    let committer = Committer::start(
        Box::new(MemoryStore::default()),
        CommitterOptions::default(),
    );
    let batches = (0..20).map(|i| vec![put_queued("a", i, b"m")]).collect();
    let _results = submit_numbered(&committer, batches);
    let (tx, rx) = mpsc::channel();
    committer.read(move |store| tx.send(store.load_queue("a").unwrap().len()).unwrap());
    assert_eq!(rx.recv().unwrap(), 20);
}

#[test]
fn after_a_failed_commit_everything_is_refused() {
    let (store, log) = recording(Some(2));
    let committer = Committer::start(store, CommitterOptions::default());
    let ok = submit_numbered(&committer, vec![vec![put_session("a")]]);
    ok.recv().unwrap().1.unwrap();
    let failed = submit_numbered(&committer, vec![vec![put_session("b")]]);
    assert!(matches!(
        failed.recv().unwrap().1,
        Err(StoreError::TooLarge(1))
    ));
    let refused = submit_numbered(&committer, vec![vec![put_session("c")]]);
    assert!(matches!(
        refused.recv().unwrap().1,
        Err(StoreError::Stopped(_))
    ));
    assert_eq!(
        log.lock().unwrap().len(),
        2,
        "nothing written after the failure"
    );
    assert!(committer.shutdown().is_err());
}

#[test]
fn a_panicking_done_does_not_stop_the_committer() {
    let committer = Committer::start(
        Box::new(MemoryStore::default()),
        CommitterOptions::default(),
    );
    committer.submit(
        vec![put_session("a")],
        Box::new(|_| panic!("a bug in the caller")),
    );
    let results = submit_numbered(&committer, vec![vec![put_session("b")]]);
    results.recv().unwrap().1.unwrap();
    let store = committer.shutdown().unwrap();
    assert_eq!(store.load_index().unwrap().sessions.len(), 2);
}

#[test]
fn the_committer_can_be_shared_between_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<Committer>();
    shared::<Op>();
}
