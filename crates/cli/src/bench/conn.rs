//! `makelaar bench conn`: many connections, optionally one subscription each, opened
//! `--parallel` at a time; the connect rate, then the connections held idle (keep-alive pings
//! only) while the broker's memory is read.

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use makelaar_proto::QoS;
use serde_json::json;
use tokio::sync::{mpsc, Semaphore};

use super::client::{self, interrupted_by_ctrl_c, Shared};
use super::net::{Conn, Endpoint};
use super::report::{generator_json, generator_text, latency_json, latency_text, thousands};
use super::stats::{Counters, Histogram};
use super::sys::{self, BrokerWatch};
use super::{expand, run_id};

/// Read buffer of an idle connection: it only ever sees PINGRESP.
const IDLE_READ_CHUNK: usize = 256;
/// Pause after the last connection before the broker's memory is read.
const SETTLE: Duration = Duration::from_secs(1);

pub struct ConnPlan {
    pub clients: usize,
    pub parallel: usize,
    pub topic: Option<String>,
    pub qos: QoS,
    /// `None`: until Ctrl-C.
    pub hold: Option<Duration>,
    pub json: bool,
    pub broker_pids: Vec<u32>,
    pub workers: usize,
    /// TLS sessions are resumed where the broker allows (`--tls-resume`).
    pub tls_resume: bool,
}

/// How the TLS handshakes of a run went.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Handshakes {
    full: u64,
    resumed: u64,
}

impl Handshakes {
    /// Counts one connection: `None` is plain TCP, `Some(true)` a resumed TLS session.
    fn record(&mut self, resumed: Option<bool>) {
        match resumed {
            None => {}
            Some(false) => self.full += 1,
            Some(true) => self.resumed += 1,
        }
    }

    /// The report's `tls` field: `null` without TLS.
    fn json(&self, tls: bool, resume: bool) -> serde_json::Value {
        if !tls {
            return serde_json::Value::Null;
        }
        json!({
            "resume": resume,
            "full_handshakes": self.full,
            "resumed_handshakes": self.resumed,
        })
    }
}

pub async fn run(ep: Arc<Endpoint>, plan: ConnPlan) -> anyhow::Result<()> {
    let limit = sys::raise_nofile_limit();
    if limit != 0 && (plan.clients as u64) + 64 > limit {
        bail!(
            "{} connections need more open files than this process may have ({limit}); raise \
             `ulimit -n` or split the connections over several processes",
            plan.clients
        );
    }
    let run = run_id();
    let shared = Arc::new(Shared::new(run, ep.keep_alive, ep.version));
    let interrupted = interrupted_by_ctrl_c();
    let tty = std::io::stdout().is_terminal() && !plan.json;
    let watch = BrokerWatch::start(&plan.broker_pids);
    let rss_before = sys::rss_of(&plan.broker_pids);
    let broker_cpu_before = sys::cpu_of(&plan.broker_pids);
    let cpu_before = sys::own_cpu_secs();
    let permits = Arc::new(Semaphore::new(plan.parallel));
    let (tx, mut rx) = mpsc::unbounded_channel::<Result<(Duration, Option<bool>), String>>();
    let counters = Arc::new(Counters::default());
    let mut handles = Vec::with_capacity(plan.clients);
    let t0 = Instant::now();
    for i in 0..plan.clients {
        let (ep, shared, permits, tx, counters) = (
            ep.clone(),
            shared.clone(),
            permits.clone(),
            tx.clone(),
            counters.clone(),
        );
        let filter = plan.topic.as_ref().map(|t| expand(t, i));
        let qos = plan.qos;
        let id = format!("mkb-{run:08x}-c{i}");
        handles.push(tokio::spawn(async move {
            let opened = async {
                let _permit = permits.acquire().await;
                let t = Instant::now();
                let mut conn = Conn::open(&ep, &id, IDLE_READ_CHUNK).await?;
                if let Some(f) = &filter {
                    conn.subscribe(f, qos).await?;
                }
                anyhow::Ok((conn, t.elapsed()))
            }
            .await;
            match opened {
                Ok((conn, took)) => {
                    let _ = tx.send(Ok((took, conn.tls_resumed())));
                    let r = client::drive(conn, None, false, shared, counters).await;
                    r.error
                }
                Err(e) => {
                    let _ = tx.send(Err(format!("{e:#}")));
                    None
                }
            }
        }));
    }
    drop(tx);

    let mut latency = Histogram::default();
    let mut handshakes = Handshakes::default();
    let (mut connected, mut failed, mut first_error) = (0usize, 0usize, None::<String>);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut done = 0;
    while done < plan.clients {
        tokio::select! {
            r = rx.recv() => match r {
                Some(Ok((d, resumed))) => {
                    connected += 1;
                    done += 1;
                    latency.record(d.as_nanos() as u64);
                    handshakes.record(resumed);
                }
                Some(Err(e)) => { failed += 1; done += 1; first_error.get_or_insert(e); }
                None => break,
            },
            _ = tick.tick() => if tty {
                print!("\r\x1b[2K[{:>4.0}s] connected {} of {}, {} failed", t0.elapsed().as_secs_f64(), thousands(connected as u64), thousands(plan.clients as u64), failed);
                let _ = std::io::stdout().flush();
            },
            _ = interrupted.cancelled() => break,
        }
    }
    let connect_secs = t0.elapsed().as_secs_f64();
    let cpu_connect = sys::own_cpu_secs() - cpu_before;
    let broker_cpu_connect = match (broker_cpu_before, sys::cpu_of(&plan.broker_pids)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    if tty {
        println!(
            "\r\x1b[2K{} connections in {connect_secs:.2} s ({}/s), {failed} failed; holding{}",
            thousands(connected as u64),
            thousands((connected as f64 / connect_secs.max(1e-9)) as u64),
            match plan.hold {
                Some(h) => format!(" for {:.0} s", h.as_secs_f64()),
                None => " until Ctrl-C".to_string(),
            }
        );
    }

    // Hold: let the broker settle, read its memory, wait.
    let settle = plan.hold.map_or(SETTLE, |h| h.min(SETTLE));
    tokio::select! {
        _ = tokio::time::sleep(settle) => {}
        _ = interrupted.cancelled() => {}
    }
    let rss_held = sys::rss_of(&plan.broker_pids);
    if let Some(rest) = plan.hold.map(|h| h.saturating_sub(settle)) {
        tokio::select! {
            _ = tokio::time::sleep(rest) => {}
            _ = interrupted.cancelled() => {}
        }
    } else {
        interrupted.cancelled().await;
    }
    let rss_end = sys::rss_of(&plan.broker_pids);
    let still_open = connected as u64 - counters.errors.load(Ordering::Relaxed);
    let held_secs = t0.elapsed().as_secs_f64() - connect_secs;
    shared.stop_all.cancel();
    let mut held_error = None;
    for h in handles {
        if let Ok(Ok(Some(e))) = tokio::time::timeout(Duration::from_secs(10), h).await {
            held_error.get_or_insert(e);
        }
    }
    let first_error = first_error.or(held_error);
    let per_conn = |after: Option<u64>| match (rss_before, after) {
        (Some(b), Some(a)) if connected > 0 => {
            Some((a as f64 - b as f64) * 1024.0 / connected as f64)
        }
        _ => None,
    };
    let rate = connected as f64 / connect_secs.max(1e-9);
    let tls = ep.tls.is_some();
    // Broker CPU per connection opened: less noisy than the rate on a shared machine.
    let cpu_per_conn_us = broker_cpu_connect
        .filter(|_| connected > 0)
        .map(|c| (c * 1e6 / connected as f64).round());
    if plan.json {
        let broker = plan.broker_pids.first().copied().map(|pid| {
            json!({
                "pid": pid,
                "pids": plan.broker_pids,
                "rss_before_kib": rss_before,
                "rss_held_kib": rss_held,
                "rss_end_kib": rss_end,
                "rss_max_kib": watch.as_ref().map(|w| w.max_rss_kib()),
                "rss_per_conn_bytes": per_conn(rss_held).map(f64::round),
                "rss_per_conn_end_bytes": per_conn(rss_end).map(f64::round),
                "cpu_connect_s": broker_cpu_connect,
                "cpu_per_conn_us": cpu_per_conn_us,
            })
        });
        let v = json!({
            "scenario": "conn",
            "params": {
                "broker": format!("{}:{}", ep.host, ep.port),
                "clients": plan.clients,
                "parallel": plan.parallel,
                "topic": plan.topic,
                "qos": plan.qos as u8,
                "tls": tls,
            },
            "connections": connected,
            "connect_failed": failed,
            "connect_s": (connect_secs * 1e4).round() / 1e4,
            "connections_per_s": rate.round(),
            "connect_latency_ms": latency_json(&latency),
            "tls": handshakes.json(tls, plan.tls_resume),
            "held_s": (held_secs * 1e3).round() / 1e3,
            "dropped_while_held": connected as u64 - still_open,
            "errors": counters.errors.load(Ordering::Relaxed) + failed as u64,
            "first_error": first_error,
            "generator": generator_json(cpu_connect, connect_secs, plan.workers),
            "broker": broker,
        });
        println!("{v}");
        return Ok(());
    }
    println!(
        "conn: {} {}connections{}, {} at a time",
        thousands(plan.clients as u64),
        if tls { "TLS " } else { "" },
        match &plan.topic {
            Some(t) => format!(" with one subscription each ({t}, QoS {})", plan.qos as u8),
            None => String::new(),
        },
        plan.parallel
    );
    println!(
        "  {:<12} {} in {connect_secs:.3} s = {}/s, {failed} failed",
        "connected",
        thousands(connected as u64),
        thousands(rate as u64)
    );
    println!("  {:<12} {}", "connect time", latency_text(&latency));
    if tls {
        println!(
            "  {:<12} {} full handshakes, {} resumed{}",
            "tls",
            thousands(handshakes.full),
            thousands(handshakes.resumed),
            if plan.tls_resume {
                ""
            } else {
                " (resumption off)"
            }
        );
    }
    println!(
        "  {:<12} {} still open after {held_secs:.1} s",
        "held",
        thousands(still_open)
    );
    if let Some(e) = &first_error {
        println!("  {:<12} {e}", "first error");
    }
    println!(
        "  {:<12} {} (while connecting)",
        "generator",
        generator_text(cpu_connect, connect_secs, plan.workers)
    );
    if let Some(&pid) = plan.broker_pids.first() {
        let kib =
            |k: Option<u64>| k.map_or("?".to_string(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
        println!(
            "  {:<12} pid {pid}: RSS {} before, {} with the connections held, {} at the end",
            "broker",
            kib(rss_before),
            kib(rss_held),
            kib(rss_end)
        );
        if let Some(b) = per_conn(rss_held) {
            println!(
                "  {:<12} {:.0} bytes of broker RSS per connection",
                "per conn", b
            );
        }
        if let Some(c) = broker_cpu_connect {
            println!(
                "  {:<12} {c:.2} s of broker CPU while connecting ({} µs per connection)",
                "",
                cpu_per_conn_us.unwrap_or(0.0)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshakes_are_counted_by_kind_and_reported_only_with_tls() {
        let mut h = Handshakes::default();
        for r in [Some(false), Some(true), Some(false), None] {
            h.record(r);
        }
        assert_eq!(
            h,
            Handshakes {
                full: 2,
                resumed: 1
            }
        );
        assert_eq!(
            h.json(true, false),
            json!({"resume": false, "full_handshakes": 2, "resumed_handshakes": 1})
        );
        assert_eq!(h.json(false, false), serde_json::Value::Null);
    }
}
