//! `makelaar bench`: a load generator for any MQTT broker.
//!
//! Built directly on `makelaar-proto` and tokio sockets: each simulated client is one task that
//! reads and writes its socket without blocking either way, publishes from a pre-encoded
//! template (patching the packet id and the payload header), and batches every ready packet
//! into one write (TCP_NODELAY on). The payload carries a run id, the publisher's index, a
//! sequence number and the send time (CLOCK_MONOTONIC), so subscribers measure latency and find
//! gaps and duplicates.

mod client;
mod conn;
mod load;
mod net;
mod report;
mod stats;
mod sys;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail};
use clap::{ArgAction, Args, Subcommand};
use makelaar_proto::{ProtocolVersion, QoS};

use net::{Endpoint, TlsOptions};

const BENCH_EXAMPLES: &str = "\
Examples:
  makelaar bench fanin -c 4 -q 0 --duration 10
      4 publishers, as fast as they can, to bench/0..3; 1 subscriber on bench/+.

  makelaar bench fanout -c 8 --rate 20000
      1 publisher at 20,000 msg/s to bench/fanout; 8 subscribers.

  makelaar bench latency -q 1 --rate 1000 --json
      1 publisher at 1,000 msg/s, 1 subscriber: latency percentiles as JSON.

  makelaar bench conn -c 10000 --parallel 100 -t 'idle/%i/cmd' --hold 10 \\
                      --broker-pid $(pidof mosquitto)
      10,000 idle connections with one subscription each; the broker's memory per connection.

  makelaar bench conn --tls --cafile ca.crt -p 8883 -c 2000 -t 'idle/%i/cmd' --hold 2
      The same over TLS, a full handshake per connection (--tls-resume: resume sessions).

  makelaar bench sub -t 'bench/#' &  makelaar bench pub -c 10 --rate 100
      Publishers and subscribers in separate processes (same host: latency still works).";

/// Load generator for any MQTT broker (MQTT 3.1.1 by default).
#[derive(Debug, Args)]
#[command(after_help = BENCH_EXAMPLES)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Open many connections (optionally one subscription each), report the connect rate and
    /// hold them (broker memory per connection with --broker-pid).
    #[command(disable_help_flag = true, disable_version_flag = true)]
    Conn(ConnArgs),
    /// N publishers (-c) at --rate msg/s each, or as fast as possible.
    #[command(disable_help_flag = true, disable_version_flag = true)]
    Pub(LoadArgs),
    /// N subscribers (-c) counting what arrives: rate, latency, gaps, duplicates.
    #[command(disable_help_flag = true, disable_version_flag = true)]
    Sub(LoadArgs),
    /// P publishers (-c, default 4) to one subscriber.
    #[command(disable_help_flag = true, disable_version_flag = true)]
    Fanin(LoadArgs),
    /// One publisher to S subscribers (-c, default 8).
    #[command(disable_help_flag = true, disable_version_flag = true)]
    Fanout(LoadArgs),
    /// One publisher to one subscriber at a fixed rate (default 1,000 msg/s): latency.
    #[command(disable_help_flag = true, disable_version_flag = true)]
    Latency(LoadArgs),
}

/// Where to connect and how; shared by every subcommand.
#[derive(Debug, Clone, Args)]
struct Target {
    /// Broker host.
    #[arg(short = 'h', long, default_value = "127.0.0.1")]
    host: String,

    /// Broker port [default: 1883, or 8883 with TLS].
    #[arg(short = 'p', long)]
    port: Option<u16>,

    /// MQTT version: 31, 311 or 5.
    #[arg(short = 'V', long = "protocol-version", default_value = "311", value_parser = parse_version)]
    version: ProtocolVersion,

    /// User name.
    #[arg(short = 'u', long)]
    username: Option<String>,

    /// Password.
    #[arg(short = 'P', long)]
    password: Option<String>,

    /// Keep-alive in seconds (a PINGREQ goes out every half of it); 0 for none.
    #[arg(short = 'k', long, default_value_t = 60)]
    keepalive: u16,

    /// Connect with TLS (implied by --cafile, --cert, --insecure, --tls-resume).
    #[arg(long)]
    tls: bool,

    /// PEM CA bundle to verify the broker with [default: the system bundle].
    #[arg(long, value_name = "FILE")]
    cafile: Option<PathBuf>,

    /// PEM client certificate (with --key).
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,

    /// PEM private key of --cert.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,

    /// Do not verify the broker's certificate.
    #[arg(long)]
    insecure: bool,

    /// Resume TLS sessions with the tickets (or session ids) earlier connections received,
    /// where the broker offers them. Without it every connection makes a full TLS handshake
    /// (certificate and key exchange), as a new client does.
    #[arg(long)]
    tls_resume: bool,

    /// Clients keep their sessions (clean session off; 5.0: Session Expiry Interval 1 h), so a
    /// broker must keep what it acknowledges for them (durable brokers: on disk).
    #[arg(long)]
    persistent: bool,

    /// Connections opened at once.
    #[arg(long, default_value_t = 100, value_name = "N")]
    parallel: usize,

    /// Watch this broker process: its CPU seconds and resident memory (same host). Several
    /// (comma-separated, or the flag again) are counted together: a cluster's nodes.
    #[arg(long, value_name = "PID", value_delimiter = ',')]
    broker_pid: Vec<u32>,

    /// Print one JSON object at the end instead of the text summary.
    #[arg(long)]
    json: bool,

    /// Worker threads of the generator [default: the number of CPUs].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,

    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
}

#[derive(Debug, Clone, Args)]
struct ConnArgs {
    #[command(flatten)]
    target: Target,

    /// Connections to open.
    #[arg(short = 'c', long, default_value_t = 1000)]
    clients: usize,

    /// Subscribe each connection to this topic filter (%i: the connection's index).
    #[arg(short = 't', long)]
    topic: Option<String>,

    /// QoS of that subscription.
    #[arg(short = 'q', long, default_value_t = 0, value_parser = parse_qos)]
    qos: u8,

    /// Seconds to hold the connections once open [default: until Ctrl-C].
    #[arg(long, value_name = "SECS")]
    hold: Option<f64>,
}

#[derive(Debug, Clone, Args)]
struct LoadArgs {
    #[command(flatten)]
    target: Target,

    /// Clients: publishers for pub and fanin, subscribers for sub and fanout.
    #[arg(short = 'c', long)]
    clients: Option<usize>,

    /// Messages per second per publisher; 0 = as fast as possible (QoS 1/2: as the --inflight
    /// window allows). [default: 0; latency: 1000]
    #[arg(short = 'r', long)]
    rate: Option<f64>,

    /// Payload size in bytes (at least 28 to carry sequence number and send time).
    #[arg(short = 's', long = "size", default_value_t = 64)]
    size: usize,

    /// QoS of publications and subscriptions.
    #[arg(short = 'q', long, default_value_t = 0, value_parser = parse_qos)]
    qos: u8,

    /// Topic (pattern) publishers send to; %i is the client's index. [default: bench/%i;
    /// fanout: bench/fanout; latency: bench/latency; sub: bench/#]
    #[arg(short = 't', long)]
    topic: Option<String>,

    /// Filter subscribers use [default: the topic with %i as +].
    #[arg(long)]
    sub_topic: Option<String>,

    /// QoS 1/2 messages in flight per publisher.
    #[arg(long, default_value_t = 100)]
    inflight: usize,

    /// Seconds measured (after the warm-up); 0 = until Ctrl-C.
    #[arg(short = 'd', long, default_value_t = 10.0)]
    duration: f64,

    /// Seconds of load before measuring.
    #[arg(short = 'w', long, default_value_t = 2.0)]
    warmup: f64,

    /// Seconds to wait after the last publication for what is still on its way.
    #[arg(long, default_value_t = 2.0)]
    drain: f64,

    /// Subscribers connect to this port (on --sub-host), publishers to --port: publishers and
    /// subscribers on different nodes of a cluster.
    #[arg(long, value_name = "PORT")]
    sub_port: Option<u16>,

    /// Host of --sub-port [default: --host].
    #[arg(long, value_name = "HOST")]
    sub_host: Option<String>,

    /// Also report the CPU of these processes (comma-separated): the engine under a cluster,
    /// its NATS servers.
    #[arg(long, value_name = "PID", value_delimiter = ',')]
    engine_pid: Vec<u32>,
    // --help comes with the flattened `Target`.
}

fn parse_version(s: &str) -> Result<ProtocolVersion, String> {
    match s {
        "31" | "3.1" | "3" => Ok(ProtocolVersion::V31),
        "311" | "3.1.1" | "4" => Ok(ProtocolVersion::V311),
        "5" | "50" | "5.0" => Ok(ProtocolVersion::V5),
        _ => Err("use 31, 311 or 5".into()),
    }
}

fn parse_qos(s: &str) -> Result<u8, String> {
    match s {
        "0" => Ok(0),
        "1" => Ok(1),
        "2" => Ok(2),
        _ => Err("QoS is 0, 1 or 2".into()),
    }
}

fn qos_of(q: u8) -> QoS {
    QoS::from_u8(q).unwrap_or_default()
}

impl Target {
    fn endpoint(&self) -> anyhow::Result<Endpoint> {
        let tls_on = self.tls
            || self.cafile.is_some()
            || self.cert.is_some()
            || self.insecure
            || self.tls_resume;
        let tls = if tls_on {
            let o = TlsOptions {
                cafile: self.cafile.clone(),
                cert: self.cert.clone(),
                key: self.key.clone(),
                insecure: self.insecure,
                resume: self.tls_resume,
            };
            Some(net::tls_config(&o, &self.host)?)
        } else {
            None
        };
        Ok(Endpoint {
            host: self.host.clone(),
            port: self.port.unwrap_or(if tls_on { 8883 } else { 1883 }),
            tls,
            version: self.version,
            keep_alive: self.keepalive,
            username: self.username.clone(),
            password: self.password.clone(),
            persistent: self.persistent,
        })
    }

    fn runtime(&self) -> anyhow::Result<tokio::runtime::Runtime> {
        let workers = self
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name("bench-worker")
            .enable_all()
            .build()
            .map_err(|e| anyhow!("cannot start the async runtime: {e}"))
    }

    fn workers(&self) -> usize {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

/// Runs `makelaar bench ...`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Conn(a) => {
            let ep = Arc::new(a.target.endpoint()?);
            let plan = conn::ConnPlan {
                clients: a.clients,
                parallel: a.target.parallel.max(1),
                topic: a.topic.clone(),
                qos: qos_of(a.qos),
                hold: a.hold.map(Duration::from_secs_f64),
                json: a.target.json,
                broker_pids: a.target.broker_pid.clone(),
                workers: a.target.workers(),
                tls_resume: a.target.tls_resume,
            };
            // The run's loop hears from every connection: on a worker thread, where that is
            // a task wake-up, not on this thread, where each would be a futex wake and a
            // context switch (about two per connection, a tenth of the generator's CPU).
            let rt = a.target.runtime()?;
            let run = rt.spawn(conn::run(ep, plan));
            rt.block_on(run)
                .map_err(|e| anyhow!("the benchmark stopped: {e}"))?
        }
        BenchCommand::Pub(a) => load(load::Kind::Pub, a),
        BenchCommand::Sub(a) => load(load::Kind::Sub, a),
        BenchCommand::Fanin(a) => load(load::Kind::Fanin, a),
        BenchCommand::Fanout(a) => load(load::Kind::Fanout, a),
        BenchCommand::Latency(a) => load(load::Kind::Latency, a),
    }
}

fn load(kind: load::Kind, a: LoadArgs) -> anyhow::Result<()> {
    use load::Kind;
    let n = a.clients;
    let (pubs, subs) = match kind {
        Kind::Pub => (n.unwrap_or(1), 0),
        Kind::Sub => (0, n.unwrap_or(1)),
        Kind::Fanin => (n.unwrap_or(4), 1),
        Kind::Fanout => (1, n.unwrap_or(8)),
        Kind::Latency => (1, 1),
    };
    if kind == Kind::Latency && n.is_some_and(|n| n != 1) {
        bail!("latency runs one publisher and one subscriber; use fanin or fanout for more");
    }
    let topic = a.topic.clone().unwrap_or_else(|| {
        match kind {
            Kind::Fanout => "bench/fanout",
            Kind::Latency => "bench/latency",
            Kind::Sub => "bench/#",
            Kind::Pub | Kind::Fanin => "bench/%i",
        }
        .to_string()
    });
    let sub_topic = a.sub_topic.clone().unwrap_or_else(|| {
        if kind == Kind::Sub {
            topic.clone()
        } else {
            topic.replace("%i", "+")
        }
    });
    if a.inflight == 0 || a.inflight > client::MAX_INFLIGHT {
        bail!("--inflight must be between 1 and {}", client::MAX_INFLIGHT);
    }
    let rate = a
        .rate
        .unwrap_or(if kind == Kind::Latency { 1000.0 } else { 0.0 });
    if !(rate >= 0.0 && rate.is_finite()) {
        bail!("--rate must be 0 (as fast as possible) or a positive number");
    }
    if a.duration < 0.0 || a.warmup < 0.0 || a.drain < 0.0 {
        bail!("--duration, --warmup and --drain are seconds, not negative");
    }
    let ep = Arc::new(a.target.endpoint()?);
    let sub_endpoint = if a.sub_port.is_some() || a.sub_host.is_some() {
        let mut target = a.target.clone();
        if let Some(host) = &a.sub_host {
            target.host.clone_from(host);
        }
        if a.sub_port.is_some() {
            target.port = a.sub_port;
        }
        Some(Arc::new(target.endpoint()?))
    } else {
        None
    };
    let plan = load::LoadPlan {
        kind,
        pubs,
        subs,
        topic,
        sub_topic,
        qos: qos_of(a.qos),
        size: a.size,
        rate,
        inflight: a.inflight,
        duration: (a.duration > 0.0).then(|| Duration::from_secs_f64(a.duration)),
        warmup: Duration::from_secs_f64(a.warmup),
        drain: Duration::from_secs_f64(a.drain),
        parallel: a.target.parallel.max(1),
        json: a.target.json,
        broker_pids: a.target.broker_pid.clone(),
        engine_pids: a.engine_pid.clone(),
        sub_endpoint,
        workers: a.target.workers(),
        keep_alive: a.target.keepalive,
    };
    a.target.runtime()?.block_on(load::run(ep, plan))
}

/// "bench/%i" with index 3 → "bench/3".
fn expand(pattern: &str, index: usize) -> String {
    pattern.replace("%i", &index.to_string())
}

/// A run id for payload headers and client ids: differs between processes and runs.
fn run_id() -> u32 {
    let t = stats::mono_ns();
    let pid = u64::from(std::process::id());
    let x = t ^ (pid << 32) ^ (pid.rotate_left(17));
    // SplitMix64 finaliser: spread the bits.
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_patterns() {
        assert_eq!(parse_version("5"), Ok(ProtocolVersion::V5));
        assert_eq!(parse_version("311"), Ok(ProtocolVersion::V311));
        assert!(parse_version("6").is_err());
        assert_eq!(expand("a/%i/b", 7), "a/7/b");
        assert_ne!(run_id(), run_id());
    }

    /// `makelaar bench ...` as the binary parses it.
    #[derive(Debug, clap::Parser)]
    #[command(disable_help_flag = true)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn conn_args(args: &[&str]) -> ConnArgs {
        use clap::Parser;
        let argv = std::iter::once("bench").chain(args.iter().copied());
        match Cli::try_parse_from(argv).map(|c| c.bench.command) {
            Ok(BenchCommand::Conn(a)) => a,
            other => panic!("not parsed as `bench conn`: {other:?}"),
        }
    }

    #[test]
    fn conn_over_tls_makes_full_handshakes_unless_told_to_resume() {
        let a = conn_args(&["conn", "--tls", "--insecure", "-c", "5"]);
        assert!(a.target.tls && !a.target.tls_resume);
        let ep = a.target.endpoint().unwrap();
        assert_eq!(ep.port, 8883);
        let (config, _) = ep.tls.unwrap();
        assert!(format!("{:?}", config.resumption).contains("Disabled"));

        let a = conn_args(&["conn", "--tls-resume", "--insecure", "-p", "9000"]);
        let ep = a.target.endpoint().unwrap();
        assert_eq!(ep.port, 9000);
        let (config, _) = ep.tls.unwrap();
        assert!(!format!("{:?}", config.resumption).contains("Disabled"));

        let a = conn_args(&["conn", "-c", "5"]);
        let ep = a.target.endpoint().unwrap();
        assert!(ep.tls.is_none());
        assert_eq!(ep.port, 1883);
    }
}
