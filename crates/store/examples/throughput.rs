//! Store throughput on this machine's disk.
//!
//! ```text
//! cargo run --release -p makelaar-store --example throughput -- [fanin|committer|load|all] [--dir DIR]
//!     [--sessions N] [--messages N] [--cache-mib N]
//! ```
//!
//! - `fanin`: messages (PutQueued, 64-byte payloads) committed with fsync in groups of 1, 10,
//!   100 and 1000, each group also deleting the previous group's messages (acknowledged by
//!   then): messages per second and commit (fsync) latency.
//! - `committer`: the same flow through the `Committer`, with many producers each waiting for
//!   its acknowledgements, so the group size is whatever the disk lets accumulate.
//! - `load`: a store with 100,000 sessions (one subscription each) and 1,000,000 queued
//!   messages: file size, open time, `load_index` and `load_queue` time. With `--keep` the
//!   store is left in `--dir` (sessions that never expire, numbered from 1 as the broker
//!   numbers them), to time `makelaar serve --data-dir DIR` starting on it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use makelaar_proto::{Properties, QoS, SubscriptionOptions};
use makelaar_store::{
    Committer, CommitterOptions, MessageRecord, Op, QueuedRecord, QueuedState, RedbOptions,
    RedbStore, SessionRecord, Store, StoreError, SubscriptionRecord,
};

struct Args {
    what: String,
    dir: PathBuf,
    sessions: u64,
    messages: u64,
    cache_mib: usize,
    keep: bool,
}

fn args() -> Args {
    let mut a = Args {
        what: "all".into(),
        dir: std::env::temp_dir().join("makelaar-store-bench"),
        sessions: 100_000,
        messages: 1_000_000,
        cache_mib: 64,
        keep: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().expect("a value after the flag");
        match arg.as_str() {
            "--dir" => a.dir = value().into(),
            "--sessions" => a.sessions = value().parse().unwrap(),
            "--messages" => a.messages = value().parse().unwrap(),
            "--cache-mib" => a.cache_mib = value().parse().unwrap(),
            "--keep" => a.keep = true,
            other => a.what = other.to_owned(),
        }
    }
    a
}

fn queued(seq: u64) -> QueuedRecord {
    let mut payload = [0u8; 64];
    payload[..8].copy_from_slice(&seq.to_le_bytes());
    QueuedRecord {
        message: Arc::new(MessageRecord {
            topic: "sensors/building-7/floor-3/temperature".into(),
            payload: Bytes::copy_from_slice(&payload),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::default(),
            expires_at_ms: None,
            origin: Some("sensor-4711".into()),
        }),
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: vec![],
        shared_filter: None,
        state: QueuedState::Queued,
    }
}

fn session() -> SessionRecord {
    SessionRecord {
        protocol_version: 5,
        expiry_interval: 86_400,
        disconnected_at_ms: Some(1_700_000_000_000),
        pending_will: None,
        will_at_ms: None,
        username: None,
    }
}

fn fresh(dir: &Path, cache_mib: usize) -> RedbStore {
    let _ = std::fs::remove_dir_all(dir);
    let options = RedbOptions {
        cache_bytes: cache_mib << 20,
        ..RedbOptions::default()
    };
    RedbStore::open(dir, &options).unwrap()
}

/// 100 subscriber sessions receive the messages, round robin (the fan-in: many publishers,
/// few subscribers).
const SUBSCRIBERS: u64 = 100;

fn client(i: u64) -> Arc<str> {
    format!("subscriber-{:03}", i % SUBSCRIBERS).into()
}

fn fanin(a: &Args) {
    println!("fan-in, direct: groups committed with fsync; each also deletes the previous group");
    println!(
        "{:>6} {:>10} {:>12} {:>14}",
        "group", "messages", "msg/s", "commit mean"
    );
    for group in [1u64, 10, 100, 1000] {
        let mut store = fresh(&a.dir, a.cache_mib);
        let mut setup: Vec<Op> = (0..SUBSCRIBERS)
            .map(|i| Op::PutSession {
                client_id: client(i),
                record: session(),
            })
            .collect();
        setup.push(Op::PutSession {
            client_id: "x".into(),
            record: session(),
        });
        store.apply(&setup, true).unwrap();
        // At least 2 s or 200,000 messages, whichever comes first, and 20 groups.
        let started = Instant::now();
        let mut seq = 0u64;
        let mut commits = 0u64;
        while commits < 20 || (started.elapsed() < Duration::from_secs(2) && seq < 200_000) {
            let mut ops = Vec::with_capacity(2 * group as usize);
            for k in 0..group {
                let s = seq + k;
                ops.push(Op::PutQueued {
                    client_id: client(s),
                    seq: s,
                    record: queued(s),
                });
                if s >= group {
                    let old = s - group;
                    ops.push(Op::DeleteQueued {
                        client_id: client(old),
                        seq: old,
                    });
                }
            }
            store.apply(&ops, true).unwrap();
            seq += group;
            commits += 1;
        }
        let took = started.elapsed();
        println!(
            "{group:>6} {seq:>10} {:>12.0} {:>11.2} ms",
            seq as f64 / took.as_secs_f64(),
            took.as_secs_f64() * 1000.0 / commits as f64
        );
    }
}

fn committer(a: &Args) {
    println!();
    println!(
        "fan-in through the Committer: P producers, each with W messages awaiting acknowledgement;"
    );
    println!(
        "a message acknowledged by the store is then delivered and deleted (in a later batch)"
    );
    println!(
        "{:>5} {:>4} {:>10} {:>10} {:>12} {:>10} {:>12} {:>10}",
        "P", "W", "messages", "msg/s", "batches/grp", "ops/grp", "fsync mean", "busy"
    );
    for (producers, window) in [(1u64, 1u64), (16, 8), (64, 16), (256, 16)] {
        let mut store = fresh(&a.dir, a.cache_mib);
        let setup: Vec<Op> = (0..SUBSCRIBERS)
            .map(|i| Op::PutSession {
                client_id: client(i),
                record: session(),
            })
            .collect();
        store.apply(&setup, true).unwrap();
        let committer = Arc::new(Committer::start(
            Box::new(store),
            CommitterOptions::default(),
        ));
        let started = Instant::now();
        let threads: Vec<_> = (0..producers.min(16))
            .map(|t| {
                let committer = committer.clone();
                let per_thread = producers / producers.min(16);
                std::thread::spawn(move || produce(&committer, t, per_thread, window, started))
            })
            .collect();
        let messages: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        let took = started.elapsed();
        let s = committer.stats();
        println!(
            "{producers:>5} {window:>4} {messages:>10} {:>10.0} {:>12.1} {:>10.1} {:>9.2} ms {:>10}",
            messages as f64 / took.as_secs_f64(),
            s.mean_batches_per_commit(),
            s.ops_written as f64 / s.commits.max(1) as f64,
            s.mean_fsync().as_secs_f64() * 1000.0,
            format!("{:.0}%", 100.0 * s.commit_time.as_secs_f64() / took.as_secs_f64())
        );
    }
}

/// One thread standing for `producers` publishers that each keep `window` messages in flight
/// for 2 s. Each acknowledged message is "delivered": its delete goes with the next batch.
fn produce(c: &Committer, t: u64, producers: u64, window: u64, started: Instant) -> u64 {
    let (tx, rx) = mpsc::channel::<(u64, Result<(), StoreError>)>();
    let mut next = 0u64;
    let mut acked = 0u64;
    let mut outstanding = 0u64;
    let seq = |n: u64| (t << 40) | n;
    let submit = |n: u64, delete: Option<u64>| {
        let s = seq(n);
        let mut ops = vec![Op::PutQueued {
            client_id: client(s),
            seq: s,
            record: queued(s),
        }];
        if let Some(d) = delete {
            let d = seq(d);
            ops.push(Op::DeleteQueued {
                client_id: client(d),
                seq: d,
            });
        }
        let tx = tx.clone();
        c.submit(ops, Box::new(move |r| tx.send((n, r)).unwrap()));
    };
    while outstanding < producers * window {
        submit(next, None);
        next += 1;
        outstanding += 1;
    }
    while outstanding > 0 {
        let (n, r) = rx.recv().unwrap();
        r.unwrap();
        acked += 1;
        outstanding -= 1;
        if started.elapsed() < Duration::from_secs(2) {
            submit(next, Some(n));
            next += 1;
            outstanding += 1;
        }
    }
    acked
}

fn load(a: &Args) {
    println!();
    let per = a.messages / a.sessions.max(1);
    println!(
        "load: {} sessions, one subscription each, {} queued messages ({per} each)",
        a.sessions, a.messages
    );
    let mut store = fresh(&a.dir, a.cache_mib);
    let started = Instant::now();
    let chunk = 1000u64;
    for first in (0..a.sessions).step_by(chunk as usize) {
        let mut ops = Vec::new();
        for i in first..(first + chunk).min(a.sessions) {
            let c: Arc<str> = format!("client-{i:07}").into();
            let mut record = session();
            if a.keep {
                record.expiry_interval = makelaar_store::NEVER_EXPIRES;
                record.disconnected_at_ms = None;
            }
            ops.push(Op::PutSession {
                client_id: c.clone(),
                record,
            });
            ops.push(Op::PutSubscription {
                client_id: c.clone(),
                filter: format!("devices/{i}/#").into(),
                record: SubscriptionRecord {
                    options: SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        ..SubscriptionOptions::default()
                    },
                    subscription_id: None,
                },
            });
            for seq in 1..=per {
                ops.push(Op::PutQueued {
                    client_id: c.clone(),
                    seq,
                    record: queued(seq),
                });
            }
        }
        store.apply(&ops, true).unwrap();
    }
    println!(
        "  written in {:.1} s ({:.0} messages/s in groups of {})",
        started.elapsed().as_secs_f64(),
        a.messages as f64 / started.elapsed().as_secs_f64(),
        chunk * (per + 2)
    );
    let bytes = store.file_bytes();
    drop(store);
    println!("  (reads below find the file in the OS page cache, just written)");
    println!(
        "  file size            {:.1} MiB ({:.0} bytes per message)",
        bytes as f64 / 1048576.0,
        bytes as f64 / a.messages.max(1) as f64
    );
    for verify_on_open in [false, true] {
        let options = RedbOptions {
            cache_bytes: a.cache_mib << 20,
            verify_on_open,
        };
        let t = Instant::now();
        let store = RedbStore::open(&a.dir, &options).unwrap();
        let open = t.elapsed();
        let t = Instant::now();
        let index = store.load_index().unwrap();
        let load = t.elapsed();
        assert_eq!(index.sessions.len() as u64, a.sessions);
        assert_eq!(
            index.sessions.iter().map(|s| s.queue.count).sum::<u64>(),
            per * a.sessions
        );
        // 100 sessions spread over the key space, as clients coming back one by one.
        let t = Instant::now();
        let mut n = 0;
        for k in 0..100u64 {
            let i = (k * 7919 * 13) % a.sessions;
            n += store.load_queue(&format!("client-{i:07}")).unwrap().len();
        }
        let one = t.elapsed() / 100;
        let q = vec![(); n / 100];
        println!(
            "  verify_on_open={verify_on_open:<5}  open {:>7.1} ms   load_index {:>7.1} ms   load_queue({} msgs) {:.2} ms",
            open.as_secs_f64() * 1000.0, load.as_secs_f64() * 1000.0, q.len(), one.as_secs_f64() * 1000.0
        );
    }
}

fn main() {
    let a = args();
    println!(
        "store benchmark in {} (cache {} MiB)",
        a.dir.display(),
        a.cache_mib
    );
    match a.what.as_str() {
        "fanin" => fanin(&a),
        "committer" => committer(&a),
        "load" => load(&a),
        _ => {
            fanin(&a);
            committer(&a);
            load(&a);
        }
    }
    if !a.keep {
        let _ = std::fs::remove_dir_all(&a.dir);
    }
}
