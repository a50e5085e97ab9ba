//! QoS 1 throughput and latency of the cluster's delivery path with the Rust client (async-nats):
//! three "nodes", each on its own NATS server with one ordered consumer per partition (mode A:
//! filtered on the node's 1,000 filters; mode C: unfiltered, matched locally), and publishers
//! with a window of acknowledgements in flight on each of the three servers.
//!
//! cluster-probe MODE SECONDS WINDOW PARTITIONS [FAULT]   (servers on 127.0.0.1:14222..14224)
//!
//! FAULT `stop` (SIGSTOP n3 for 5 s) or `restart` (kill -9 n3, start it again 5 s later), 3 s
//! into the run, with the publishers on n1 and n2 only; n3's pid and configuration are read from
//! $PROBE_DIR (bench/cluster/probe.sh sets it). Every acknowledged message is then checked off
//! against what arrived: missing and duplicated messages are reported.

use std::collections::{HashMap, HashSet};
use std::future::IntoFuture;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer, stream};
use futures_util::stream::{FuturesUnordered, StreamExt};

const NODES: usize = 3;
const N_EXACT: usize = 850;
const N_PLUS: usize = 100;
const N_HASH: usize = 50;

fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn partition(topic: &str, p: usize) -> usize {
    (fnv(topic) % p as u64) as usize
}

fn subject(topic: &str, p: usize) -> String {
    format!("m.{}.{}.$", partition(topic, p), topic.replace('/', "."))
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn topic_for(n: usize, r: &mut Rng) -> String {
    let x = r.below(100);
    if x < 85 {
        format!("dev/n{n}-{}/cmd", r.below(N_EXACT))
    } else if x < 95 {
        format!("site/n{n}-{}/d{}/status", r.below(N_PLUS), r.below(50))
    } else {
        format!("fleet/n{n}-{}/t{}/x", r.below(N_HASH), r.below(9))
    }
}

/// The node's filters as subject filters for partition q (mode A).
fn filters_for(n: usize, q: usize, p: usize) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..N_EXACT {
        let t = format!("dev/n{n}-{i}/cmd");
        if partition(&t, p) == q {
            out.push(subject(&t, p));
        }
    }
    for k in 0..N_PLUS {
        out.push(format!("m.{q}.site.n{n}-{k}.*.status.$"));
    }
    for k in 0..N_HASH {
        out.push(format!("m.{q}.fleet.n{n}-{k}.>"));
    }
    out
}

/// The node's local topic tree, reduced to what the probe's topics need.
struct Matcher {
    exact: HashSet<String>,
    n: usize,
}
impl Matcher {
    fn matches(&self, topic: &str) -> bool {
        if self.exact.contains(topic) {
            return true;
        }
        let lv: Vec<&str> = topic.split('/').collect();
        let mine = |s: &str, max: usize| {
            s.strip_prefix(&format!("n{}-", self.n))
                .and_then(|k| k.parse::<usize>().ok())
                .is_some_and(|k| k < max)
        };
        match lv.as_slice() {
            ["site", s, _, "status"] => mine(s, N_PLUS),
            ["fleet", s, ..] => mine(s, N_HASH),
            _ => false,
        }
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let a: Vec<String> = std::env::args().collect();
    let mode = a.get(1).map(String::as_str).unwrap_or("C").to_string();
    let seconds: u64 = a.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
    let window: usize = a.get(3).and_then(|s| s.parse().ok()).unwrap_or(256);
    let p: usize = a.get(4).and_then(|s| s.parse().ok()).unwrap_or(16);
    let fault = a.get(5).cloned().unwrap_or_else(|| "none".into());
    let urls: Vec<String> = (0..NODES)
        .map(|i| format!("nats://127.0.0.1:{}", 14222 + i))
        .collect();

    let admin = jetstream::new(async_nats::connect(&urls[0]).await?);
    for q in 0..p {
        admin
            .get_or_create_stream(stream::Config {
                name: format!("MQ{q}"),
                subjects: vec![format!("m.{q}.>")],
                num_replicas: 3,
                storage: stream::StorageType::File,
                max_age: Duration::from_secs(3600),
                duplicate_window: Duration::from_secs(60),
                allow_direct: true,
                ..Default::default()
            })
            .await?;
    }

    // the nodes
    let delivered = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(Vec::<u64>::new()));
    let got = Arc::new(Mutex::new(HashMap::<u64, u32>::new()));
    for (n, url) in urls.iter().enumerate() {
        let js = jetstream::new(async_nats::connect(url).await?);
        let matcher = Arc::new(Matcher {
            exact: (0..N_EXACT).map(|i| format!("dev/n{n}-{i}/cmd")).collect(),
            n,
        });
        for q in 0..p {
            let st = js.get_stream(format!("MQ{q}")).await?;
            let cfg = consumer::pull::OrderedConfig {
                filter_subjects: if mode == "A" {
                    filters_for(n, q, p)
                } else {
                    vec![]
                },
                deliver_policy: consumer::DeliverPolicy::New,
                ..Default::default()
            };
            let c = st.create_consumer(cfg).await?;
            let mut msgs = c.messages().await?;
            let (delivered, lat, matcher, got) =
                (delivered.clone(), lat.clone(), matcher.clone(), got.clone());
            tokio::spawn(async move {
                while let Some(r) = msgs.next().await {
                    // the ordered consumer reports trouble (missed heartbeats, a lost consumer)
                    // as an error and carries on after re-creating itself: keep reading
                    let m = match r {
                        Ok(m) => m,
                        Err(e) => {
                            eprintln!("node {} partition {q}: {e}", n + 1);
                            continue;
                        }
                    };
                    let subj = m.subject.as_str();
                    let topic = subj.splitn(3, '.').nth(2).unwrap_or("");
                    let topic = topic.strip_suffix(".$").unwrap_or(topic).replace('.', "/");
                    if !matcher.matches(&topic) {
                        continue;
                    }
                    delivered.fetch_add(1, Ordering::Relaxed);
                    if m.payload.len() >= 16 {
                        let t0 = u64::from_le_bytes(m.payload[..8].try_into().unwrap());
                        lat.lock().unwrap().push(now_ns().saturating_sub(t0));
                        let id = u64::from_le_bytes(m.payload[8..16].try_into().unwrap());
                        *got.lock().unwrap().entry(id).or_insert(0) += 1;
                    }
                }
            });
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // the publishers: one per server, WINDOW acknowledgements in flight each
    let acked = Arc::new(AtomicU64::new(0));
    let acked_ids = Arc::new(Mutex::new(HashSet::<u64>::new()));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut pubs = Vec::new();
    let publish_on = if fault == "none" { NODES } else { 2 };
    for (i, url) in urls.iter().enumerate().take(publish_on) {
        let js = jetstream::new(async_nats::connect(url).await?);
        let (acked, failed, acked_ids) = (acked.clone(), failed.clone(), acked_ids.clone());
        pubs.push(tokio::spawn(async move {
            let mut rng = Rng(0x9e3779b97f4a7c15 ^ (i as u64 + 1));
            let mut inflight = FuturesUnordered::new();
            let mut seq: u64 = 0;
            loop {
                let more = Instant::now() < deadline;
                if more && inflight.len() < window {
                    let dest = rng.below(NODES);
                    let topic = topic_for(dest, &mut rng);
                    let mut payload = vec![b' '; 100];
                    seq += 1;
                    let id = ((dest as u64) << 56)
                        | ((partition(&topic, p) as u64) << 48)
                        | ((i as u64) << 40)
                        | seq;
                    payload[..8].copy_from_slice(&now_ns().to_le_bytes());
                    payload[8..16].copy_from_slice(&id.to_le_bytes());
                    match js.publish(subject(&topic, p), payload.into()).await {
                        Ok(f) => inflight.push(async move { (id, f.into_future().await) }),
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    continue;
                }
                match inflight.next().await {
                    Some((id, Ok(_))) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                        acked_ids.lock().unwrap().insert(id);
                    }
                    Some((_, Err(_))) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    None => break,
                }
            }
        }));
    }
    if fault != "none" {
        let dir = std::env::var("PROBE_DIR")
            .map_err(|_| "PROBE_DIR is not set (run through probe.sh)")?;
        let pid = std::fs::read_to_string(format!("{dir}/n3.pid"))?
            .trim()
            .to_string();
        tokio::time::sleep(Duration::from_secs(3)).await;
        if fault == "stop" {
            std::process::Command::new("kill")
                .args(["-STOP", &pid])
                .status()?;
            tokio::time::sleep(Duration::from_secs(5)).await;
            std::process::Command::new("kill")
                .args(["-CONT", &pid])
                .status()?;
        } else {
            std::process::Command::new("kill")
                .args(["-9", &pid])
                .status()?;
            tokio::time::sleep(Duration::from_secs(5)).await;
            let log = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(format!("{dir}/n3.log"))?;
            let child = std::process::Command::new("nats-server")
                .args(["-c", &format!("{dir}/n3.conf")])
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?;
            std::fs::write(format!("{dir}/n3.pid"), format!("{}\n", child.id()))?;
        }
        println!("fault: {fault} of n3 at 3 s for 5 s");
    }
    for h in pubs {
        h.await?;
    }
    let el = start.elapsed().as_secs_f64();
    // time for the stragglers; DRAIN=SECONDS overrides (async-nats's ordered pull consumer notices
    // a lost consumer only after 2 missed 15 s heartbeats)
    let drain = std::env::var("DRAIN").ok().and_then(|s| s.parse().ok());
    let drain = drain.unwrap_or(if fault == "none" { 3 } else { 15 });
    tokio::time::sleep(Duration::from_secs(drain)).await;
    {
        let acked_ids = acked_ids.lock().unwrap();
        let got = got.lock().unwrap();
        let missing = acked_ids.iter().filter(|id| !got.contains_key(id)).count();
        let mut by_node = [0usize; NODES];
        let mut by_part = HashMap::<u64, usize>::new();
        for id in acked_ids.iter().filter(|id| !got.contains_key(id)) {
            by_node[(id >> 56) as usize] += 1;
            *by_part.entry((id >> 48) & 0xff).or_insert(0) += 1;
        }
        if missing > 0 {
            let mut parts: Vec<_> = by_part.into_iter().collect();
            parts.sort();
            println!("missing by node {by_node:?}, by partition {parts:?}");
        }
        let dups: u64 = got.values().map(|&c| c as u64 - 1).sum();
        println!(
            "check: {} acknowledged, {missing} never arrived, {dups} duplicates",
            acked_ids.len()
        );
    }
    let (ack, fail, del) = (
        acked.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        delivered.load(Ordering::Relaxed),
    );
    let mut l = lat.lock().unwrap().clone();
    l.sort_unstable();
    let pc = |x: f64| {
        if l.is_empty() {
            f64::NAN
        } else {
            l[((l.len() - 1) as f64 * x) as usize] as f64 / 1e6
        }
    };
    println!(
        "rust mode {mode}, P={p}, window {window}x{publish_on}: {:.0} acked msg/s ({ack} in {el:.1} s, {fail} failed), \
         delivered to the subscribing node {del}; arrival p50 {:.2} ms p99 {:.2} ms max {:.0} ms",
        ack as f64 / el,
        pc(0.5),
        pc(0.99),
        pc(1.0)
    );
    Ok(())
}
