//! Crash safety: a child process (this test binary, re-run with an environment variable)
//! commits groups in a loop and reports each acknowledged one on stdout; it is killed with
//! SIGKILL at a random moment, and the reopened store must hold every acknowledged group,
//! and each writer's groups must be there as a whole prefix (no torn group).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use makelaar_proto::{Properties, QoS};
use makelaar_store::{
    Committer, CommitterOptions, Durability, MessageRecord, Op, QueuedRecord, QueuedState,
    RedbOptions, RedbStore, SessionRecord, Store, StoreError,
};

const CHILD_ENV: &str = "MAKELAAR_STORE_CRASH_CHILD";
/// Writer threads in the child, each with its own client id and retained topic.
const WRITERS: u64 = 4;
/// Groups a writer may have submitted and not yet seen acknowledged.
const WINDOW: u64 = 4;
/// Messages a writer keeps queued: group g deletes the message of group g - KEEP.
const KEEP: u64 = 8;
/// `max_delay_ms` of the batch-mode child.
const BATCH_DELAY_MS: u64 = 20;

fn message(topic: &str, g: u64) -> MessageRecord {
    let mut payload = vec![0u8; 64];
    payload[..8].copy_from_slice(&g.to_le_bytes());
    MessageRecord {
        topic: topic.into(),
        payload: Bytes::from(payload),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Properties::default(),
        expires_at_ms: None,
        origin: None,
    }
}

fn group_of(m: &MessageRecord) -> u64 {
    u64::from_le_bytes(m.payload[..8].try_into().unwrap())
}

/// Writer `w`'s group `g` in cycle `cycle`.
fn group(cycle: u32, w: u64, g: u64) -> Vec<Op> {
    let client: Arc<str> = format!("{cycle}-{w}").into();
    let topic = format!("{cycle}/{w}");
    let mut ops = Vec::new();
    if g == 0 {
        ops.push(Op::PutSession {
            client_id: client.clone(),
            record: SessionRecord {
                protocol_version: 5,
                expiry_interval: u32::MAX,
                disconnected_at_ms: None,
                pending_will: None,
                will_at_ms: None,
                username: None,
            },
        });
    }
    ops.push(Op::PutQueued {
        client_id: client.clone(),
        seq: g,
        record: QueuedRecord {
            message: Arc::new(message(&topic, g)),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![],
            shared_filter: None,
            state: QueuedState::Queued,
        },
    });
    if g >= KEEP {
        ops.push(Op::DeleteQueued {
            client_id: client,
            seq: g - KEEP,
        });
    }
    ops.push(Op::PutRetained {
        topic: topic.clone().into(),
        message: Arc::new(message(&topic, g)),
    });
    ops
}

/// The child: writes until killed (or for 20 s, should the parent be gone).
#[test]
fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return; // an ordinary test run: nothing to do
    };
    let mut parts = spec.split('|');
    let (dir, cycle, mode) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let cycle: u32 = cycle.parse().unwrap();
    let batch = mode == "batch";
    let durability = match mode {
        "batch" => Durability::Batch {
            max_delay_ms: BATCH_DELAY_MS,
        },
        _ => Durability::Sync,
    };
    let store = RedbStore::open(dir, &RedbOptions::default()).unwrap();
    let options = CommitterOptions {
        durability,
        ..CommitterOptions::default()
    };
    let committer = Arc::new(Committer::start(Box::new(store), options));
    let threads: Vec<_> = (0..WRITERS)
        .map(|w| {
            let committer = committer.clone();
            std::thread::spawn(move || {
                let (tx, rx) = mpsc::channel::<Result<(), StoreError>>();
                let started = Instant::now();
                for g in 0.. {
                    if g >= WINDOW {
                        rx.recv().unwrap().unwrap();
                    }
                    if started.elapsed() > Duration::from_secs(20) {
                        break;
                    }
                    // In batch mode, idle now and then: only the timed durable commit then
                    // makes the last groups durable.
                    if batch && g % 200 == 199 {
                        std::thread::sleep(Duration::from_millis(150));
                    }
                    let tx = tx.clone();
                    let done = Box::new(move |r: Result<(), StoreError>| {
                        if r.is_ok() {
                            println!("ACK {w} {g}");
                        }
                        let _ = tx.send(r);
                    });
                    committer.submit(group(cycle, w, g), done);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Runs one child and kills it: `delay` after its first acknowledgement, or with `early`,
/// `delay` after it started (perhaps while it is still recovering from the last kill).
fn crash_cycle(dir: &Path, cycle: u32, mode: &str, delay: Duration, early: bool) -> Cycle {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(CHILD_ENV, format!("{}|{cycle}|{mode}", dir.display()))
        .stdout(Stdio::piped())
        // Inherited: should the child fail (it prints nothing otherwise), the reason shows.
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let mut words = line.split_whitespace();
            if words.next() == Some("ACK") {
                let w: u64 = words.next().and_then(|s| s.parse().ok()).unwrap();
                let g: u64 = words.next().and_then(|s| s.parse().ok()).unwrap();
                let _ = tx.send((w, g, Instant::now()));
            }
        }
    });
    let mut acks = Vec::new();
    if !early {
        acks.push(
            // Generous: on a loaded 2-core machine, recovery after the last kill can be slow.
            rx.recv_timeout(Duration::from_secs(60))
                .expect("the child acknowledged nothing"),
        );
        // The child holds the directory: another process is refused, naming its pid.
        match RedbStore::open(dir, &RedbOptions::default()) {
            Err(StoreError::Locked { pid, .. }) => assert_eq!(pid, Some(child.id())),
            other => panic!("open beside a running child: {:?}", other.map(|_| ())),
        }
    }
    std::thread::sleep(delay);
    let killed_at = Instant::now();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap();
    let mut cycle = Cycle {
        acks: vec![Vec::new(); WRITERS as usize],
        killed_at,
    };
    for (w, g, at) in acks.into_iter().chain(rx.try_iter()) {
        let acks = &mut cycle.acks[w as usize];
        assert_eq!(g, acks.len() as u64, "acknowledgements out of order");
        acks.push(at);
    }
    cycle
}

/// What the parent saw of one child.
struct Cycle {
    /// Per writer, when each group's acknowledgement arrived (group g at index g).
    acks: Vec<Vec<Instant>>,
    killed_at: Instant,
}

impl Cycle {
    /// Per writer, the last group acknowledged no later than `cutoff`.
    fn acked_by(&self, cutoff: Instant) -> Vec<Option<u64>> {
        let last = |a: &Vec<Instant>| a.iter().rposition(|t| *t <= cutoff).map(|g| g as u64);
        self.acks.iter().map(last).collect()
    }

    /// Per writer, the last group acknowledged.
    fn acked(&self) -> Vec<Option<u64>> {
        self.acked_by(self.killed_at + Duration::from_secs(3600))
    }
}

/// Checks cycle `cycle`: each writer's state is that of a prefix of its groups, at least as
/// long as `kept` and at most WINDOW groups longer than what was acknowledged.
fn check_cycle(store: &RedbStore, cycle: u32, kept: &[Option<u64>], acked: &[Option<u64>]) {
    let index = store.load_index().unwrap();
    for (w, (kept, acked)) in kept.iter().zip(acked).enumerate() {
        let client = format!("{cycle}-{w}");
        let topic = format!("{cycle}/{w}");
        let retained = index.retained.iter().find(|(t, _)| *t == topic);
        let Some((_, retained)) = retained else {
            assert!(kept.is_none(), "writer {client}: acknowledged groups lost");
            continue;
        };
        let last = group_of(retained);
        if let Some(kept) = *kept {
            assert!(
                last >= kept,
                "writer {client}: group {kept} acknowledged, found {last}"
            );
        }
        let submitted = acked.map_or(WINDOW - 1, |a| a + WINDOW);
        assert!(
            last <= submitted,
            "writer {client}: {last} was never submitted"
        );
        let queue = store.load_queue(&client).unwrap();
        let seqs: Vec<u64> = queue.iter().map(|(s, _)| *s).collect();
        let expected: Vec<u64> = (last.saturating_sub(KEEP - 1)..=last).collect();
        assert_eq!(
            seqs, expected,
            "writer {client}: queue is not that of group {last}"
        );
        assert!(queue.iter().all(|(s, q)| group_of(&q.message) == *s));
        let session = index
            .sessions
            .iter()
            .find(|s| s.client_id == client)
            .unwrap();
        assert_eq!(session.queue.count, expected.len() as u64);
    }
}

#[test]
fn acknowledged_groups_survive_kill_9() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    println!("seed {seed}");
    let started = Instant::now();
    let mut history = Vec::new();
    for cycle in 0..10 {
        // xorshift: a kill 0-250 ms after the first acknowledgement, or every third cycle
        // 0-20 ms after the start.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let early = cycle % 3 == 2;
        let delay = Duration::from_millis(seed % if early { 20 } else { 250 });
        let acked = crash_cycle(dir.path(), cycle, "sync", delay, early).acked();
        println!(
            "cycle {cycle}: killed {delay:?} after {}, acknowledged {acked:?}",
            if early {
                "the start"
            } else {
                "the first acknowledgement"
            }
        );
        history.push(acked);
        // Every earlier cycle too: recovering from this crash must not lose older groups.
        let store = RedbStore::open(dir.path(), &RedbOptions::default()).unwrap();
        for (cycle, acked) in history.iter().enumerate() {
            check_cycle(&store, cycle as u32, acked, acked);
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}

/// Batch mode may lose what was acknowledged within the last `max_delay_ms` before the kill
/// (plus a margin for scheduling on a busy machine), and nothing older: the durable commit
/// that follows non-durable ones, even when idle, really reaches the disk.
#[test]
fn batch_mode_loses_at_most_the_last_delay() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    const MARGIN: Duration = Duration::from_millis(250);
    let dir = tempfile::tempdir().unwrap();
    for cycle in 0..3 {
        let delay = Duration::from_millis(300 + 100 * cycle as u64);
        let c = crash_cycle(dir.path(), cycle, "batch", delay, false);
        let cutoff = c.killed_at - Duration::from_millis(BATCH_DELAY_MS) - MARGIN;
        let (kept, acked) = (c.acked_by(cutoff), c.acked());
        println!("batch cycle {cycle}: acknowledged {acked:?}, older than the delay {kept:?}");
        assert!(
            kept.iter().all(Option::is_some),
            "the cycle ran too briefly to tell"
        );
        let store = RedbStore::open(dir.path(), &RedbOptions::default()).unwrap();
        check_cycle(&store, cycle, &kept, &acked);
    }
}
