//! The message scenarios: `pub`, `sub`, `fanin`, `fanout` and `latency` share one engine.
//!
//! Subscribers connect and subscribe first, then publishers connect; everyone starts together.
//! After the warm-up the counters are taken as the start of the measured window; at its end
//! publishers stop, and the run waits (up to the drain period) for acknowledgements and
//! deliveries still on their way before counting what was lost.

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use makelaar_proto::QoS;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use super::client::{self, interrupted_by_ctrl_c, ClientReport, PubPlan, PubTemplate, Shared};
use super::net::{Conn, Endpoint};
use super::report::{self, BrokerFigures, Summary};
use super::stats::{Counters, Histogram, Snapshot, HEADER_LEN};
use super::sys::{self, BrokerWatch, CpuMark};
use super::{expand, run_id};

/// Read buffer reserved per throughput client.
const READ_CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Pub,
    Sub,
    Fanin,
    Fanout,
    Latency,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Pub => "pub",
            Kind::Sub => "sub",
            Kind::Fanin => "fanin",
            Kind::Fanout => "fanout",
            Kind::Latency => "latency",
        }
    }
}

pub struct LoadPlan {
    pub kind: Kind,
    pub pubs: usize,
    pub subs: usize,
    pub topic: String,
    pub sub_topic: String,
    pub qos: QoS,
    pub size: usize,
    pub rate: f64,
    pub inflight: usize,
    /// `None`: until Ctrl-C.
    pub duration: Option<Duration>,
    pub warmup: Duration,
    pub drain: Duration,
    pub parallel: usize,
    pub json: bool,
    pub broker_pids: Vec<u32>,
    /// The engine's processes (a cluster's NATS servers): their CPU is reported apart.
    pub engine_pids: Vec<u32>,
    /// Subscribers connect here (publishers to `run`'s endpoint): a cluster's other node.
    pub sub_endpoint: Option<Arc<Endpoint>>,
    pub workers: usize,
    pub keep_alive: u16,
}

type Ready = Result<Duration, String>;

pub async fn run(ep: Arc<Endpoint>, plan: LoadPlan) -> anyhow::Result<()> {
    sys::raise_nofile_limit();
    if plan.size < HEADER_LEN && !plan.json {
        eprintln!(
            "note: payloads under {HEADER_LEN} bytes carry no sequence number or send time: \
             no latency, loss or duplicate figures"
        );
    }
    let run = run_id();
    let shared = Arc::new(Shared::new(run, plan.keep_alive, ep.version));
    let interrupted = interrupted_by_ctrl_c();
    let watch = BrokerWatch::start(&plan.broker_pids);
    if !plan.broker_pids.is_empty() && watch.is_none() && !plan.json {
        eprintln!("note: cannot read /proc of the broker process: no broker figures");
    }
    let rss_start = watch.as_ref().map(|w| w.max_rss_kib());
    let permits = Arc::new(Semaphore::new(plan.parallel));
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Ready>();
    let mut counters: Vec<Arc<Counters>> = Vec::new();
    let mut handles: Vec<JoinHandle<ClientReport>> = Vec::new();
    let track = plan.size >= HEADER_LEN;
    let connect_start = Instant::now();
    let mut connect_lat = Histogram::default();

    // Subscribers first, so that nothing published is missed.
    for i in 0..plan.subs {
        let c = Arc::new(Counters::default());
        counters.push(c.clone());
        let (ep, shared, permits, tx) = (
            plan.sub_endpoint.clone().unwrap_or_else(|| ep.clone()),
            shared.clone(),
            permits.clone(),
            ready_tx.clone(),
        );
        let filter = expand(&plan.sub_topic, i);
        let qos = plan.qos;
        let id = format!("mkb-{run:08x}-s{i}");
        handles.push(tokio::spawn(async move {
            let opened = async {
                let _permit = permits.acquire().await;
                let t = Instant::now();
                let mut conn = Conn::open(&ep, &id, READ_CHUNK).await?;
                conn.subscribe(&filter, qos).await?;
                anyhow::Ok((conn, t.elapsed()))
            }
            .await;
            match opened {
                Ok((conn, took)) => {
                    let _ = tx.send(Ok(took));
                    client::drive(conn, None, true, shared, c).await
                }
                Err(e) => {
                    c.errors.fetch_add(1, Ordering::Relaxed);
                    let _ = tx.send(Err(format!("{e:#}")));
                    ClientReport {
                        error: Some(format!("{e:#}")),
                        ..ClientReport::default()
                    }
                }
            }
        }));
    }
    let mut tally = Tally::default();
    for _ in 0..plan.subs {
        match ready_rx.recv().await {
            Some(r) => tally.add(r, &mut connect_lat),
            None => break,
        }
    }
    let subs_ok = tally.connected;
    for i in 0..plan.pubs {
        let c = Arc::new(Counters::default());
        counters.push(c.clone());
        let (ep, shared, permits, tx) = (
            ep.clone(),
            shared.clone(),
            permits.clone(),
            ready_tx.clone(),
        );
        let topic = expand(&plan.topic, i);
        let template = PubTemplate::new(&topic, plan.qos, plan.size, ep.version)?;
        let id = format!("mkb-{run:08x}-p{i}");
        let phase = if plan.rate > 0.0 {
            Duration::from_secs_f64(i as f64 / plan.pubs as f64 / plan.rate)
        } else {
            Duration::ZERO
        };
        let pub_plan = PubPlan {
            index: i as u32,
            template,
            qos: plan.qos,
            rate: plan.rate,
            phase,
            inflight: plan.inflight,
        };
        handles.push(tokio::spawn(async move {
            let opened = async {
                let _permit = permits.acquire().await;
                let t = Instant::now();
                let conn = Conn::open(&ep, &id, READ_CHUNK).await?;
                anyhow::Ok((conn, t.elapsed()))
            }
            .await;
            match opened {
                Ok((conn, took)) => {
                    let _ = tx.send(Ok(took));
                    client::drive(conn, Some(pub_plan), false, shared, c).await
                }
                Err(e) => {
                    c.errors.fetch_add(1, Ordering::Relaxed);
                    let _ = tx.send(Err(format!("{e:#}")));
                    ClientReport {
                        publisher: Some(i as u32),
                        error: Some(format!("{e:#}")),
                        ..ClientReport::default()
                    }
                }
            }
        }));
    }
    for _ in 0..plan.pubs {
        match ready_rx.recv().await {
            Some(r) => tally.add(r, &mut connect_lat),
            None => break,
        }
    }
    let connect_secs = connect_start.elapsed().as_secs_f64();
    let pubs_ok = tally.connected - subs_ok;
    if (plan.subs > 0 && subs_ok == 0) || (plan.pubs > 0 && pubs_ok == 0) {
        shared.stop_all.cancel();
        bail!(
            "{}",
            tally
                .first_error
                .unwrap_or_else(|| "no client could connect".to_string())
        );
    }
    let tty = std::io::stdout().is_terminal() && !plan.json;

    // Run: warm-up, then the measured window.
    let t0 = Instant::now();
    shared.go.cancel();
    let sum = |cs: &[Arc<Counters>]| Snapshot::sum(cs.iter().map(|c| c.as_ref()));
    let mut window_start: Option<(Snapshot, CpuMark)> = None;
    if plan.warmup.is_zero() {
        window_start = Some(open_window(&shared, &counters, &plan));
    }
    let mut last = (sum(&counters), CpuMark::now(&[], &[]));
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let end_at = plan.duration.map(|d| t0 + plan.warmup + d);
    loop {
        let next_stop = match (&window_start, end_at) {
            (None, _) => Some(t0 + plan.warmup),
            (Some(_), end) => end,
        };
        let wait = next_stop.map(tokio::time::Instant::from_std);
        tokio::select! {
            _ = tick.tick() => {
                if tty {
                    let now = (sum(&counters), CpuMark::now(&[], &[]));
                    progress(&plan, t0, &last, &now, window_start.is_some());
                    last = now;
                }
            }
            _ = async { match wait { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } } => {
                if window_start.is_none() {
                    window_start = Some(open_window(&shared, &counters, &plan));
                } else {
                    break;
                }
            }
            _ = interrupted.cancelled() => {
                if window_start.is_none() {
                    window_start = Some(open_window(&shared, &counters, &plan));
                }
                break;
            }
        }
    }
    let Some((start_snap, start_cpu)) = window_start else {
        bail!("the measured window never started");
    };
    shared
        .window_end_ns
        .store(super::stats::mono_ns(), Ordering::Relaxed);
    let end_snap = sum(&counters);
    let end_cpu = CpuMark::now(&plan.broker_pids, &plan.engine_pids);
    if tty {
        print!("\r\x1b[2K");
        let _ = std::io::stdout().flush();
    }
    shared.stop_pub.cancel();

    // Drain: wait for acknowledgements and deliveries still on their way.
    if plan.subs > 0 || plan.qos != QoS::AtMostOnce {
        let drain_end = Instant::now() + plan.drain;
        let mut last_delivered = sum(&counters).delivered;
        let mut quiet_since = Instant::now();
        while Instant::now() < drain_end {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let s = sum(&counters);
            let expected = s.published.saturating_mul(subs_ok as u64);
            if s.delivered != last_delivered {
                last_delivered = s.delivered;
                quiet_since = Instant::now();
            }
            let acks_done = s.inflight == 0 || pubs_ok == 0;
            let all_in = plan.subs == 0 || s.delivered >= expected;
            let quiet = quiet_since.elapsed() >= Duration::from_millis(500);
            if acks_done && (all_in || (quiet && plan.pubs > 0) || plan.pubs == 0) {
                break;
            }
        }
    }
    shared.stop_all.cancel();
    let mut reports = Vec::new();
    for h in handles {
        match tokio::time::timeout(Duration::from_secs(10), h).await {
            Ok(Ok(r)) => reports.push(r),
            Ok(Err(e)) => bail!("a client task failed: {e}"),
            Err(_) => bail!("a client did not stop within 10 s"),
        }
    }
    let total = sum(&counters);

    // Loss: every subscriber here subscribes to every publisher's topic.
    let (pub_reports, sub_reports): (Vec<_>, Vec<_>) =
        reports.iter().partition(|r| r.publisher.is_some());
    let mut latency = Histogram::default();
    let mut duplicates = 0;
    for r in &sub_reports {
        latency.merge(&r.latency);
        duplicates += r.duplicates;
    }
    let lost = (track && plan.pubs > 0 && plan.subs > 0).then(|| {
        let mut lost = 0;
        for s in &sub_reports {
            for p in &pub_reports {
                let Some(i) = p.publisher else { continue };
                let seen = s.seen_own.get(i as usize);
                let empty = Default::default();
                let seen = seen.unwrap_or(&empty);
                lost += if plan.qos == QoS::AtMostOnce {
                    seen.missing_below(p.published)
                } else {
                    seen.missing_of(&p.acked)
                };
            }
        }
        lost
    });
    let gaps = (track && plan.pubs == 0).then(|| {
        sub_reports
            .iter()
            .map(|r| {
                r.seen_own.iter().map(|s| s.gaps()).sum::<u64>()
                    + r.seen_other.values().map(|s| s.gaps()).sum::<u64>()
            })
            .sum()
    });
    let errors_first = reports
        .iter()
        .find_map(|r| r.error.clone())
        .or(tally.first_error);
    let window = end_cpu.at.duration_since(start_cpu.at).as_secs_f64();
    let counted = end_snap.since(&start_snap);
    let broker = watch.as_ref().map(|w| BrokerFigures {
        pids: w.pids.clone(),
        cpu_secs: match (start_cpu.broker, end_cpu.broker) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        },
        rss_start_kib: rss_start.unwrap_or(0),
        rss_max_kib: w.max_rss_kib(),
        rss_end_kib: sys::rss_of(&w.pids).unwrap_or(0),
        engine_cpu_secs: match (start_cpu.engine, end_cpu.engine) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        },
    });
    let summary = Summary {
        scenario: plan.kind.name(),
        pubs: plan.pubs,
        subs: plan.subs,
        qos: plan.qos as u8,
        size: plan.size,
        rate: plan.rate,
        inflight: plan.inflight,
        topic: plan.topic.clone(),
        sub_topic: plan.sub_topic.clone(),
        version: ep.version,
        host: format!("{}:{}", ep.host, ep.port),
        sub_host: plan
            .sub_endpoint
            .as_ref()
            .map(|e| format!("{}:{}", e.host, e.port)),
        warmup: plan.warmup.as_secs_f64(),
        window,
        counted,
        total,
        lost,
        gaps,
        duplicates,
        latency,
        connections: tally.connected,
        connect_failed: tally.failed,
        connect_secs,
        connect_latency: connect_lat,
        errors: total.errors,
        first_error: errors_first,
        gen_cpu_secs: end_cpu.own - start_cpu.own,
        workers: plan.workers,
        broker,
        drain: plan.drain.as_secs_f64(),
    };
    report::print_load(&summary, plan.json);
    Ok(())
}

/// Connection attempts: how many succeeded, failed, and the first failure.
#[derive(Default)]
struct Tally {
    connected: usize,
    failed: usize,
    first_error: Option<String>,
}

impl Tally {
    fn add(&mut self, r: Ready, latency: &mut Histogram) {
        match r {
            Ok(d) => {
                self.connected += 1;
                latency.record(d.as_nanos() as u64);
            }
            Err(e) => {
                self.failed += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }
}

/// The measured window starts: counters and CPU now, latencies from now on.
fn open_window(
    shared: &Shared,
    counters: &[Arc<Counters>],
    plan: &LoadPlan,
) -> (Snapshot, CpuMark) {
    shared
        .window_start_ns
        .store(super::stats::mono_ns(), Ordering::Relaxed);
    (
        Snapshot::sum(counters.iter().map(|c| c.as_ref())),
        CpuMark::now(&plan.broker_pids, &plan.engine_pids),
    )
}

/// The live line on a terminal: rates over the last second.
fn progress(
    plan: &LoadPlan,
    t0: Instant,
    last: &(Snapshot, CpuMark),
    now: &(Snapshot, CpuMark),
    measuring: bool,
) {
    let secs = now.1.at.duration_since(last.1.at).as_secs_f64().max(1e-9);
    let d = now.0.since(&last.0);
    let cpu = (now.1.own - last.1.own) / secs;
    let phase = if measuring { "" } else { " warm-up" };
    let mut line = format!(
        "[{:>4.0}s{phase}] pub {:>9}/s",
        t0.elapsed().as_secs_f64(),
        report::thousands((d.published as f64 / secs) as u64)
    );
    if plan.qos != QoS::AtMostOnce {
        line += &format!(
            "  ack {:>9}/s  inflight {:>6}",
            report::thousands((d.acked as f64 / secs) as u64),
            now.0.inflight
        );
    }
    line += &format!(
        "  deliv {:>9}/s  errors {}  generator {:.2} cores",
        report::thousands((d.delivered as f64 / secs) as u64),
        now.0.errors,
        cpu
    );
    print!("\r\x1b[2K{line}");
    let _ = std::io::stdout().flush();
}
