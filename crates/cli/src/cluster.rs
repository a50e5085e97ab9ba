//! `makelaar cluster status`: the cluster as NATS holds it — servers and their fsync setting,
//! the nodes holding a lease, the streams with their leader, replicas and consumers, the
//! engine's round trip — as tables for people or JSON for scripts.
//!
//! The data comes from `makelaar_cluster::status::gather` (nothing is created or changed
//! on NATS); this module reads the options and prints. Failing to reach NATS, or finding no
//! cluster there, is one sentence and exit status 1.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use makelaar_broker::config::ConfigFile;
use makelaar_cluster::status::{
    gather, ClusterStatus, ReplicaStatus, ServerStatus, StatusConfig, StreamKind,
};
use makelaar_cluster::{checks, nats};

pub const CLUSTER_EXAMPLES: &str = "\
Examples:
  makelaar cluster status --cluster nats://n1:4222,nats://n2:4222,nats://n3:4222
      Servers (version, fsync), nodes alive, streams and consumers, round trip.

  makelaar cluster status --config /etc/makelaar/makelaar.toml --json | jq '.nodes[].name'
      The servers from the file's [cluster] table; the same as one JSON object.";

const STATUS_EXAMPLES: &str = "\
Examples:
  makelaar cluster status --cluster nats://n1:4222
      Tables: the NATS servers with their version and fsync setting (read from their
      monitoring port, as a node's start-up checks do), the nodes holding a lease with the
      age of their last lease write, the buckets and partition streams with leader,
      replicas and lag, each stream's consumers with their pending messages, and the round
      trip to NATS.

  makelaar cluster status --config makelaar.toml --json
      The same as one JSON object: prefix, connected_server, servers[], nodes[],
      lease_ttl_ms, streams[] (with replicas[] and consumers[]), round_trip.

Exit status: 0 when the status was read, 1 when NATS cannot be reached or holds no cluster.";

/// Flags of `makelaar cluster`.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Show the cluster: NATS servers, nodes alive, streams, consumers, round trip.
    #[command(after_help = STATUS_EXAMPLES)]
    Status(StatusArgs),
}

/// Flags of `makelaar cluster status`; the names are `makelaar serve`'s.
#[derive(Debug, Clone, Default, Args)]
struct StatusArgs {
    /// Read the NATS servers (and monitoring URLs) from this file's [cluster] table; flags
    /// given as well override it.
    #[arg(short = 'c', long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// The cluster's NATS servers: nats://HOST:PORT, several separated by commas.
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    cluster: Vec<String>,

    /// The NATS servers' monitoring URLs (http://HOST:8222), several separated by commas.
    /// [default: [cluster] monitor, else port 8222 on each server's host]
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    monitor: Vec<String>,

    #[command(flatten)]
    link: LinkArgs,

    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,

    /// Seconds to wait for each answer from NATS.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    timeout: u64,
}

/// The flags that secure the link to NATS, the same for `serve` and `cluster status`; each
/// replaces its `[cluster]` setting.
#[derive(Args, Debug, Clone, Default)]
pub struct LinkArgs {
    /// PEM file with the CA that signed the NATS servers' certificates (tls:// servers);
    /// without it, the system's CAs. [cluster] ca_file in the file.
    #[arg(long, value_name = "FILE")]
    cluster_cafile: Option<PathBuf>,

    /// PEM certificate presented to NATS servers that verify clients; needs --cluster-key.
    #[arg(long, value_name = "FILE")]
    cluster_cert: Option<PathBuf>,

    /// PEM private key of --cluster-cert.
    #[arg(long, value_name = "FILE")]
    cluster_key: Option<PathBuf>,

    /// NATS credentials file (.creds: user JWT and nkey seed); replaces the credentials in
    /// the file's [cluster] table (user and password, token, nkey_seed_file).
    #[arg(long, value_name = "FILE")]
    cluster_creds: Option<PathBuf>,
}

impl LinkArgs {
    /// These flags over the file's `[cluster]` table.
    pub fn apply(&self, table: &mut makelaar_broker::config::ClusterTable) {
        table.override_link(
            self.cluster_cafile.as_ref(),
            self.cluster_cert.as_ref(),
            self.cluster_key.as_ref(),
            self.cluster_creds.as_ref(),
        );
    }
}

impl StatusArgs {
    /// The file's [cluster] table with the flags over it.
    fn status_config(&self) -> anyhow::Result<StatusConfig> {
        let mut table = match &self.config {
            Some(path) => ConfigFile::from_toml_file(path)?.cluster,
            None => Default::default(),
        };
        self.link.apply(&mut table);
        // TLS and credentials as the nodes use them (read before `servers` is taken out).
        let source = self
            .config
            .as_ref()
            .map_or("the command line".to_owned(), |p| p.display().to_string());
        let (tls, auth) = table.link(&source)?;
        let servers = if self.cluster.is_empty() {
            table.servers.unwrap_or_default()
        } else {
            self.cluster.clone()
        };
        let mut config = StatusConfig::new(servers);
        config.monitor = if self.monitor.is_empty() {
            table.monitor.unwrap_or_default()
        } else {
            self.monitor.clone()
        };
        config.timeout = Duration::from_secs(self.timeout.max(1));
        config.tls = tls;
        config.auth = auth;
        Ok(config)
    }
}

pub fn run(args: ClusterArgs) -> anyhow::Result<()> {
    match args.command {
        ClusterCommand::Status(a) => status(&a),
    }
}

fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let config = args.status_config()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow!("cannot start the async runtime: {e}"))?;
    let status = runtime.block_on(gather(&config))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status));
    }
    Ok(())
}

/// Columns padded to their widest cell, two spaces apart; the last column unpadded.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let head: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&head).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A duration in milliseconds as people read it.
fn age(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 120_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{} min", ms / 60_000)
    }
}

fn fsync(s: &ServerStatus) -> String {
    match (s.sync_always, &s.error) {
        (Some(true), _) => "always".to_owned(),
        (Some(false), _) => "LAZY (sync_interval is not always)".to_owned(),
        (None, Some(e)) => format!("unknown ({e})"),
        (None, None) => "unknown".to_owned(),
    }
}

fn replica(r: &ReplicaStatus) -> String {
    let state = if r.offline {
        "offline".to_owned()
    } else if r.current {
        "current".to_owned()
    } else {
        match r.lag {
            Some(lag) => format!("behind by {lag}"),
            None => "behind".to_owned(),
        }
    };
    format!("{} {state}", r.server)
}

/// The human-readable status.
fn render(s: &ClusterStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Cluster {}, read through NATS server {}",
        s.prefix, s.connected_server
    );

    let _ = writeln!(out, "\nNATS servers ({})", s.servers.len());
    let rows: Vec<Vec<String>> = s
        .servers
        .iter()
        .map(|v| {
            let unknown = || "?".to_owned();
            vec![
                v.name.clone().unwrap_or_else(unknown),
                v.version.clone().unwrap_or_else(unknown),
                v.jetstream
                    .map_or_else(unknown, |j| if j { "on" } else { "OFF" }.to_owned()),
                fsync(v),
                v.monitor.clone(),
            ]
        })
        .collect();
    out.push_str(&table(
        &["SERVER", "VERSION", "JETSTREAM", "FSYNC", "MONITOR"],
        &rows,
    ));

    let _ = writeln!(
        out,
        "\nNodes alive ({}; a lease lives {} after its last write)",
        s.nodes.len(),
        age(s.lease_ttl_ms)
    );
    let rows: Vec<Vec<String>> = s
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.incarnation.to_string(),
                format!("{} ago", age(n.last_write_age_ms)),
            ]
        })
        .collect();
    out.push_str(&table(&["NODE", "INCARNATION", "LAST LEASE WRITE"], &rows));

    let _ = writeln!(out, "\nStreams ({})", s.streams.len());
    let rows: Vec<Vec<String>> = s
        .streams
        .iter()
        .map(|st| {
            let replicas: Vec<String> = st.replicas.iter().map(replica).collect();
            vec![
                st.name.clone(),
                match st.kind {
                    StreamKind::Bucket => "bucket",
                    StreamKind::Partition => "partition",
                }
                .to_owned(),
                st.messages.to_string(),
                st.bytes.to_string(),
                st.last_sequence.to_string(),
                format!("R{}", st.replicas_configured),
                st.leader.clone().unwrap_or_else(|| "NONE".to_owned()),
                if replicas.is_empty() {
                    "-".to_owned()
                } else {
                    replicas.join(", ")
                },
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "STREAM", "KIND", "MESSAGES", "BYTES", "LAST SEQ", "REPL", "LEADER", "REPLICAS",
        ],
        &rows,
    ));

    let consumers: usize = s.streams.iter().map(|st| st.consumers.len()).sum();
    let _ = writeln!(out, "\nConsumers ({consumers})");
    let rows: Vec<Vec<String>> = s
        .streams
        .iter()
        .flat_map(|st| {
            st.consumers.iter().map(|c| {
                vec![
                    st.name.clone(),
                    c.name.clone(),
                    c.node.clone().unwrap_or_else(|| "-".to_owned()),
                    c.num_pending.to_string(),
                    c.num_ack_pending.to_string(),
                    c.delivered_sequence.to_string(),
                    if c.push_bound { "yes" } else { "no" }.to_owned(),
                ]
            })
        })
        .collect();
    out.push_str(&table(
        &[
            "STREAM",
            "CONSUMER",
            "FOLLOWER OF",
            "PENDING",
            "ACK PENDING",
            "DELIVERED SEQ",
            "BOUND",
        ],
        &rows,
    ));

    let _ = writeln!(
        out,
        "\nRound trip to NATS: {:.2} ms (core request), {:.2} ms (JetStream API request)",
        s.round_trip.core_ms, s.round_trip.jetstream_ms
    );
    for v in &s.servers {
        let name = v.name.as_deref().unwrap_or(&v.monitor);
        match v.sync_always {
            Some(true) => {}
            Some(false) => {
                let _ = writeln!(out, "warning: NATS server {name} fsyncs lazily, so an acknowledged message could be lost: set `jetstream {{ sync_interval: always }}` in its configuration");
            }
            None => {
                let _ = writeln!(out, "warning: the fsync setting of the NATS server at {name} is unknown: enable its monitoring port or pass --monitor");
            }
        }
        let stale_after = v.route_stale_after_ms.map(Duration::from_millis);
        if let Some(w) = checks::route_check(name, stale_after, nats::DEFAULT_TIMEOUT) {
            let _ = writeln!(out, "warning: {w}");
        }
    }
    if s.streams.iter().any(|st| st.leader.is_none()) {
        let _ = writeln!(
            out,
            "warning: a stream without a leader cannot take writes: check that a majority of its replicas' servers run"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use makelaar_cluster::status::{ConsumerStatus, NodeStatus, RoundTrip, StreamStatus};

    fn sample() -> ClusterStatus {
        ClusterStatus {
            prefix: "mk".into(),
            connected_server: "n0 2.12.1".into(),
            servers: vec![
                ServerStatus {
                    monitor: "http://127.0.0.1:8222".into(),
                    name: Some("n0".into()),
                    version: Some("2.12.1".into()),
                    jetstream: Some(true),
                    sync_always: Some(true),
                    route_stale_after_ms: Some(3000),
                    error: None,
                },
                ServerStatus {
                    monitor: "http://127.0.0.1:8223".into(),
                    name: None,
                    version: None,
                    jetstream: None,
                    sync_always: None,
                    route_stale_after_ms: None,
                    error: Some("connection refused".into()),
                },
            ],
            nodes: vec![NodeStatus {
                name: "a".into(),
                incarnation: 42,
                last_write_age_ms: 1500,
            }],
            lease_ttl_ms: 15_000,
            streams: vec![StreamStatus {
                name: "mk_p0".into(),
                kind: StreamKind::Partition,
                messages: 3,
                bytes: 300,
                last_sequence: 3,
                replicas_configured: 3,
                leader: Some("n0".into()),
                replicas: vec![
                    ReplicaStatus {
                        server: "n1".into(),
                        current: true,
                        offline: false,
                        lag: None,
                        active_ms: 10,
                    },
                    ReplicaStatus {
                        server: "n2".into(),
                        current: false,
                        offline: false,
                        lag: Some(2),
                        active_ms: 10,
                    },
                ],
                consumers: vec![ConsumerStatus {
                    name: "c1".into(),
                    node: Some("a".into()),
                    num_pending: 7,
                    num_ack_pending: 0,
                    delivered_sequence: 3,
                    push_bound: true,
                }],
            }],
            round_trip: RoundTrip {
                core_ms: 0.25,
                jetstream_ms: 1.5,
            },
        }
    }

    #[test]
    fn tables_align_their_columns() {
        let t = table(
            &["A", "BB", "C"],
            &[vec!["xxx".into(), "y".into(), "z".into()]],
        );
        assert_eq!(t, "A    BB  C\nxxx  y   z\n");
    }

    #[test]
    fn human_output_shows_every_part() {
        let text = render(&sample());
        assert!(
            text.contains("Nodes alive (1; a lease lives 15.0 s"),
            "{text}"
        );
        assert!(text.contains("a     42           1.5 s ago"), "{text}");
        assert!(text.contains("always"), "{text}");
        assert!(text.contains("unknown (connection refused)"), "{text}");
        assert!(text.contains("n1 current, n2 behind by 2"), "{text}");
        assert!(text.contains("mk_p0   c1        a            7"), "{text}");
        assert!(
            text.contains("0.25 ms (core request), 1.50 ms (JetStream API request)"),
            "{text}"
        );
        // The unknown fsync setting is pointed out.
        assert!(
            text.contains("warning: the fsync setting of the NATS server at http://127.0.0.1:8223"),
            "{text}"
        );
        assert!(!text.contains("without a leader"), "{text}");
        // A server closing cut-off routes in 3 s is fine; one with NATS's defaults is not.
        assert!(!text.contains("silent route"), "{text}");
        let mut slow = sample();
        slow.servers[0].route_stale_after_ms = Some(90_000);
        let text = render(&slow);
        assert!(
            text.contains("warning: NATS server n0 closes a silent route only after 90 s"),
            "{text}"
        );
    }

    #[test]
    fn json_keeps_the_field_names() {
        let v: serde_json::Value = serde_json::to_value(sample()).unwrap();
        assert_eq!(v["nodes"][0]["name"], "a");
        assert_eq!(v["streams"][0]["kind"], "partition");
        assert_eq!(v["streams"][0]["consumers"][0]["num_pending"], 7);
        assert_eq!(v["servers"][0]["sync_always"], true);
        assert!(v["servers"][1]["sync_always"].is_null());
    }

    #[test]
    fn flags_override_the_file() {
        let dir = std::env::temp_dir().join(format!("makelaar-cluster-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("makelaar.toml");
        std::fs::write(
            &path,
            "[cluster]\nservers = [\"nats://h1:4222\"]\nmonitor = [\"http://h1:8222\"]\n",
        )
        .unwrap();
        let from_file = StatusArgs {
            config: Some(path.clone()),
            ..StatusArgs::default()
        }
        .status_config()
        .unwrap();
        assert_eq!(from_file.servers, ["nats://h1:4222"]);
        assert_eq!(from_file.monitor, ["http://h1:8222"]);
        let flags = StatusArgs {
            config: Some(path),
            cluster: vec!["nats://h2:4222".into()],
            ..StatusArgs::default()
        }
        .status_config()
        .unwrap();
        assert_eq!(flags.servers, ["nats://h2:4222"]);
        assert_eq!(flags.monitor, ["http://h1:8222"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ages_read_well() {
        assert_eq!(age(250), "250 ms");
        assert_eq!(age(1500), "1.5 s");
        assert_eq!(age(600_000), "10 min");
    }
}
