//! What JetStream's atomic batches (ADR-50, nats-server 2.12) would save the cluster's writer
//! (issue 14): appends to one R3 file stream (sync_interval: always) from one connection,
//! either one PUB with its own acknowledgement per message, WINDOW of them in flight (what the
//! writer does today), or in atomic batches of BATCH messages, INFLIGHT batches at a time
//! (one request to open a batch, plain PUBs, one request to commit it: its acknowledgement
//! gives the batch's last sequence, the others precede it). Prints messages per second and the
//! NATS servers' CPU per message (from /proc, the pids in $PROBE_DIR/n{1,2,3}.pid).
//!
//! batch single WINDOW SECONDS | batch atomic BATCH INFLIGHT SECONDS
//! (servers on 127.0.0.1:14222..14224: bench/cluster/nats3.sh start DIR)

use std::future::IntoFuture;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};

const STREAM: &str = "bp";

fn cpu_ticks() -> u64 {
    let dir = std::env::var("PROBE_DIR").unwrap_or_default();
    (1..=3)
        .filter_map(|i| std::fs::read_to_string(format!("{dir}/n{i}.pid")).ok())
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).ok())
        .map(|stat| {
            // Fields after the command's closing parenthesis; utime and stime are 14 and 15.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let f: Vec<&str> = rest.split_whitespace().collect();
            f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0)
        })
        .sum()
}

fn payload() -> Bytes {
    Bytes::from(vec![b'x'; 200])
}

async fn single(js: jetstream::Context, window: usize, until: Instant, done: Arc<AtomicU64>) {
    let mut pending = FuturesUnordered::new();
    let mut n = 0u64;
    while Instant::now() < until {
        while pending.len() < window {
            let ack = js
                .publish(format!("{STREAM}.t.{}", n % 64), payload())
                .await
                .expect("publish");
            pending.push(ack.into_future());
            n += 1;
        }
        if let Some(ack) = pending.next().await {
            ack.expect("acknowledged");
            done.fetch_add(1, Ordering::Relaxed);
        }
    }
    while let Some(ack) = pending.next().await {
        ack.expect("acknowledged");
        done.fetch_add(1, Ordering::Relaxed);
    }
}

fn batch_headers(id: &str, seq: usize, commit: bool) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("Nats-Batch-Id", id);
    h.insert("Nats-Batch-Sequence", seq.to_string().as_str());
    if commit {
        h.insert("Nats-Batch-Commit", "1");
    }
    h
}

async fn atomic(
    client: async_nats::Client,
    size: usize,
    until: Instant,
    done: Arc<AtomicU64>,
    last_seq: Arc<AtomicU64>,
) {
    let mut k = 0u64;
    while Instant::now() < until {
        let id = format!(
            "{}-{k}",
            client.new_inbox().rsplit('.').next().unwrap_or("b")
        );
        k += 1;
        let subject = |i: usize| format!("{STREAM}.t.{}", i % 64);
        let first = client
            .request_with_headers(subject(0), batch_headers(&id, 1, false), payload())
            .await
            .expect("batch opened");
        assert!(
            first.payload.is_empty(),
            "opening the batch: {:?}",
            std::str::from_utf8(&first.payload)
        );
        for i in 2..size {
            client
                .publish_with_headers(subject(i), batch_headers(&id, i, false), payload())
                .await
                .expect("publish");
        }
        let ack = client
            .request_with_headers(subject(size), batch_headers(&id, size, true), payload())
            .await
            .expect("batch committed");
        let text = String::from_utf8_lossy(&ack.payload);
        let seq: u64 = text
            .split("\"seq\":")
            .nth(1)
            .and_then(|r| r.split([',', '}']).next())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("commit answered {text}"));
        last_seq.fetch_max(seq, Ordering::Relaxed);
        done.fetch_add(size as u64, Ordering::Relaxed);
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let client = async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_secs(30)))
        .connect("127.0.0.1:14222")
        .await
        .expect("connect");
    let js = jetstream::new(client.clone());
    let _ = js.delete_stream(STREAM).await;
    js.create_stream(stream::Config {
        name: STREAM.into(),
        subjects: vec![format!("{STREAM}.>")],
        num_replicas: 3,
        storage: stream::StorageType::File,
        allow_atomic_publish: true,
        ..Default::default()
    })
    .await
    .expect("stream");
    tokio::time::sleep(Duration::from_secs(1)).await;

    let done = Arc::new(AtomicU64::new(0));
    let last_seq = Arc::new(AtomicU64::new(0));
    let (label, seconds) = match args.first().map(String::as_str) {
        Some("single") => {
            let window: usize = args[1].parse().expect("WINDOW");
            (
                format!("single, {window} in flight"),
                args[2].parse::<u64>().expect("SECONDS"),
            )
        }
        Some("atomic") => {
            let size: usize = args[1].parse().expect("BATCH");
            let inflight: usize = args[2].parse().expect("INFLIGHT");
            (
                format!("atomic batches of {size}, {inflight} in flight"),
                args[3].parse::<u64>().expect("SECONDS"),
            )
        }
        _ => panic!("usage: batch single WINDOW SECONDS | batch atomic BATCH INFLIGHT SECONDS"),
    };
    let cpu0 = cpu_ticks();
    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    if args[0] == "single" {
        let window: usize = args[1].parse().expect("WINDOW");
        tasks.push(tokio::spawn(single(
            js.clone(),
            window,
            until,
            done.clone(),
        )));
    } else {
        let size: usize = args[1].parse().expect("BATCH");
        let inflight: usize = args[2].parse().expect("INFLIGHT");
        for _ in 0..inflight {
            tasks.push(tokio::spawn(atomic(
                client.clone(),
                size,
                until,
                done.clone(),
                last_seq.clone(),
            )));
        }
    }
    for t in tasks {
        t.await.expect("task");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let ticks = cpu_ticks() - cpu0;
    let n = done.load(Ordering::Relaxed);
    let tick_us = 1e6 / 100.0;
    let info = js
        .get_stream(STREAM)
        .await
        .expect("stream")
        .info()
        .await
        .expect("info")
        .clone();
    println!(
        "{label}: {n} messages in {elapsed:.1} s = {:.0} msg/s; NATS CPU {:.1} µs per message ({:.2} cores); stream holds {} (last {})",
        n as f64 / elapsed,
        ticks as f64 * tick_us / n.max(1) as f64,
        ticks as f64 * tick_us / 1e6 / elapsed,
        info.state.messages,
        info.state.last_sequence,
    );
}
