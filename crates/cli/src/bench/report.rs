//! The summary at the end of a run: text for people, one JSON object with `--json`.

use makelaar_proto::ProtocolVersion;
use serde_json::{json, Value};

use super::stats::{Histogram, Snapshot};

/// What the broker process did during the measured window (with `--broker-pid`).
pub struct BrokerFigures {
    /// The broker's processes (several: a cluster's nodes, counted together).
    pub pids: Vec<u32>,
    /// CPU seconds (user + system) during the measured window.
    pub cpu_secs: Option<f64>,
    pub rss_start_kib: u64,
    pub rss_max_kib: u64,
    pub rss_end_kib: u64,
    /// CPU seconds of the engine's processes (`--engine-pid`) during the measured window.
    pub engine_cpu_secs: Option<f64>,
}

/// Everything a message scenario reports.
pub struct Summary {
    pub scenario: &'static str,
    pub pubs: usize,
    pub subs: usize,
    pub qos: u8,
    pub size: usize,
    pub rate: f64,
    pub inflight: usize,
    pub topic: String,
    pub sub_topic: String,
    pub version: ProtocolVersion,
    pub host: String,
    /// Where the subscribers connected, when not to `host`.
    pub sub_host: Option<String>,
    pub warmup: f64,
    /// Seconds measured.
    pub window: f64,
    /// Counts within the measured window.
    pub counted: Snapshot,
    /// Counts over the whole run (warm-up and drain included).
    pub total: Snapshot,
    /// Published (QoS 0) or acknowledged (QoS 1/2) and never delivered.
    pub lost: Option<u64>,
    /// Subscribers only: sequence numbers missing between the lowest and highest seen.
    pub gaps: Option<u64>,
    pub duplicates: u64,
    pub latency: Histogram,
    pub connections: usize,
    pub connect_failed: usize,
    pub connect_secs: f64,
    pub connect_latency: Histogram,
    pub errors: u64,
    pub first_error: Option<String>,
    pub gen_cpu_secs: f64,
    pub workers: usize,
    pub broker: Option<BrokerFigures>,
    pub drain: f64,
}

/// 1234567 → "1,234,567".
pub fn thousands(n: u64) -> String {
    let digits: Vec<char> = n.to_string().chars().rev().collect();
    let groups: Vec<String> = digits
        .chunks(3)
        .map(|c| c.iter().rev().collect())
        .rev()
        .collect();
    groups.join(",")
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

fn version_name(v: ProtocolVersion) -> &'static str {
    match v {
        ProtocolVersion::V31 => "3.1",
        ProtocolVersion::V311 => "3.1.1",
        ProtocolVersion::V5 => "5.0",
    }
}

pub fn latency_json(h: &Histogram) -> Value {
    json!({
        "count": h.count(),
        "p50": round(ms(h.quantile(0.50)), 4),
        "p90": round(ms(h.quantile(0.90)), 4),
        "p99": round(ms(h.quantile(0.99)), 4),
        "p999": round(ms(h.quantile(0.999)), 4),
        "max": round(ms(h.max()), 4),
        "mean": round(h.mean() / 1e6, 4),
    })
}

pub fn latency_text(h: &Histogram) -> String {
    if h.count() == 0 {
        return "no samples".to_string();
    }
    format!(
        "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3} ms  ({} samples)",
        ms(h.quantile(0.50)),
        ms(h.quantile(0.90)),
        ms(h.quantile(0.99)),
        ms(h.quantile(0.999)),
        ms(h.max()),
        thousands(h.count())
    )
}

/// The generator's own CPU use: cores busy on average, and whether it looks saturated.
pub fn generator_json(cpu_secs: f64, wall: f64, workers: usize) -> Value {
    let cores = if wall > 0.0 { cpu_secs / wall } else { 0.0 };
    json!({
        "cpu_s": round(cpu_secs, 3),
        "wall_s": round(wall, 3),
        "cores_used": round(cores, 3),
        "worker_threads": workers,
        "saturated": cores >= 0.9 * workers as f64,
    })
}

pub fn generator_text(cpu_secs: f64, wall: f64, workers: usize) -> String {
    let cores = if wall > 0.0 { cpu_secs / wall } else { 0.0 };
    let mut s = format!(
        "{cpu_secs:.2} s CPU over {wall:.2} s = {cores:.2} cores (of {workers} worker threads)"
    );
    if cores >= 0.9 * workers as f64 {
        s += "  SATURATED: the generator may be the bottleneck";
    }
    s
}

pub fn print_load(s: &Summary, json_out: bool) {
    let per_s = |n: u64| {
        if s.window > 0.0 {
            n as f64 / s.window
        } else {
            0.0
        }
    };
    let broker_cpu = s.broker.as_ref().and_then(|b| b.cpu_secs);
    if json_out {
        let broker = s.broker.as_ref().map(|b| {
            json!({
                "pid": b.pids.first(),
                "pids": b.pids,
                "cpu_s": b.cpu_secs.map(|c| round(c, 3)),
                "cores_used": b.cpu_secs.map(|c| round(c / s.window.max(1e-9), 3)),
                "deliveries_per_cpu_s": b.cpu_secs.filter(|c| *c > 0.0).map(|c| (s.counted.delivered as f64 / c).round()),
                "rss_start_kib": b.rss_start_kib,
                "rss_max_kib": b.rss_max_kib,
                "rss_end_kib": b.rss_end_kib,
                "cpu_us_per_delivery": b.cpu_secs.filter(|_| s.counted.delivered > 0).map(|c| round(c * 1e6 / s.counted.delivered as f64, 3)),
            })
        });
        let engine = s.broker.as_ref().and_then(|b| b.engine_cpu_secs).map(|c| {
            json!({
                "cpu_s": round(c, 3),
                "cores_used": round(c / s.window.max(1e-9), 3),
                "cpu_us_per_delivery": (s.counted.delivered > 0).then(|| round(c * 1e6 / s.counted.delivered as f64, 3)),
            })
        });
        let v = json!({
            "scenario": s.scenario,
            "params": {
                "broker": s.host,
                "sub_broker": s.sub_host,
                "protocol": version_name(s.version),
                "publishers": s.pubs,
                "subscribers": s.subs,
                "qos": s.qos,
                "payload_bytes": s.size,
                "rate_per_publisher": s.rate,
                "inflight": s.inflight,
                "topic": s.topic,
                "sub_topic": s.sub_topic,
                "warmup_s": s.warmup,
                "drain_s": s.drain,
            },
            "duration_s": round(s.window, 3),
            "published": s.counted.published,
            "published_per_s": per_s(s.counted.published).round(),
            "acked": s.counted.acked,
            "acked_per_s": per_s(s.counted.acked).round(),
            "delivered": s.counted.delivered,
            "delivered_per_s": per_s(s.counted.delivered).round(),
            "total": {
                "published": s.total.published,
                "acked": s.total.acked,
                "delivered": s.total.delivered,
            },
            "lost": s.lost,
            "gaps": s.gaps,
            "duplicates": s.duplicates,
            "latency_ms": latency_json(&s.latency),
            "connections": s.connections,
            "connect_failed": s.connect_failed,
            "connect_s": round(s.connect_secs, 4),
            "connections_per_s": if s.connect_secs > 0.0 { (s.connections as f64 / s.connect_secs).round() } else { 0.0 },
            "errors": s.errors,
            "first_error": s.first_error,
            "generator": generator_json(s.gen_cpu_secs, s.window, s.workers),
            "broker": broker,
            "engine": engine,
        });
        println!("{v}");
        return;
    }
    let rate = if s.rate > 0.0 {
        format!("{} msg/s per publisher", thousands(s.rate as u64))
    } else {
        "unthrottled".to_string()
    };
    let who = match (s.pubs, s.subs) {
        (0, n) => format!("{n} subscriber(s) on {}", s.sub_topic),
        (n, 0) => format!("{n} publisher(s) to {}, {rate}", s.topic),
        (p, n) => format!("{p} publisher(s) -> {n} subscriber(s), {rate}"),
    };
    println!(
        "{}: {who}; MQTT {}, QoS {}, {}-byte payloads; {:.1} s measured after {:.1} s warm-up",
        s.scenario,
        version_name(s.version),
        s.qos,
        s.size,
        s.window,
        s.warmup
    );
    let line = |name: &str, n: u64| {
        println!(
            "  {name:<12} {:>14} {:>12}/s",
            thousands(n),
            thousands(per_s(n).round() as u64)
        )
    };
    if s.pubs > 0 {
        line("published", s.counted.published);
        if s.qos > 0 {
            line("acked", s.counted.acked);
        }
    }
    if s.subs > 0 {
        line("delivered", s.counted.delivered);
    }
    if let Some(lost) = s.lost {
        let what = if s.qos == 0 {
            "published"
        } else {
            "acknowledged"
        };
        println!(
            "  {:<12} {:>14}   ({what} during the run, not delivered {:.1} s after its end)",
            "lost",
            thousands(lost),
            s.drain
        );
    }
    if let Some(gaps) = s.gaps {
        println!(
            "  {:<12} {:>14}   (sequence numbers missing between the first and last seen)",
            "gaps",
            thousands(gaps)
        );
    }
    if s.subs > 0 {
        println!("  {:<12} {:>14}", "duplicates", thousands(s.duplicates));
        println!("  {:<12} {}", "latency", latency_text(&s.latency));
    }
    println!(
        "  {:<12} {} in {:.3} s ({}/s), {} failed; connect {}",
        "connections",
        s.connections,
        s.connect_secs,
        thousands(if s.connect_secs > 0.0 {
            (s.connections as f64 / s.connect_secs) as u64
        } else {
            0
        }),
        s.connect_failed,
        latency_text(&s.connect_latency)
    );
    match &s.first_error {
        Some(e) => println!("  {:<12} {} (first: {e})", "errors", s.errors),
        None => println!("  {:<12} {}", "errors", s.errors),
    }
    println!(
        "  {:<12} {}",
        "generator",
        generator_text(s.gen_cpu_secs, s.window, s.workers)
    );
    if let Some(b) = &s.broker {
        let cpu = match broker_cpu {
            Some(c) if c > 0.0 => format!(
                "{c:.2} s CPU = {:.2} cores, {} deliveries per CPU-second",
                c / s.window.max(1e-9),
                thousands((s.counted.delivered as f64 / c) as u64)
            ),
            Some(c) => format!("{c:.2} s CPU"),
            None => "CPU unknown".to_string(),
        };
        println!(
            "  {:<12} pid {}: {cpu}; RSS {:.1} MiB at start, {:.1} MiB max, {:.1} MiB at end",
            "broker",
            b.pids
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join("+"),
            b.rss_start_kib as f64 / 1024.0,
            b.rss_max_kib as f64 / 1024.0,
            b.rss_end_kib as f64 / 1024.0
        );
        if let Some(c) = b.engine_cpu_secs {
            println!(
                "  {:<12} {c:.2} s CPU = {:.2} cores",
                "engine",
                c / s.window.max(1e-9)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
