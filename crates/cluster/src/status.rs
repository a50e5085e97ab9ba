//! The whole cluster as an operator sees it (`makelaar cluster status`), read from NATS
//! without changing anything: the servers' versions and fsync setting (from `/varz`, as the
//! start-up checks read it), the nodes holding a lease, the partition streams and buckets
//! with their leader, replicas and consumers, and the engine's round trip.
//!
//! [`gather`] connects on its own (no node needed, nothing created: a missing leases bucket
//! means no cluster of that prefix, [`StatusError::NoCluster`]) and returns typed data;
//! printing it is the CLI's business. Every [`StatusError`] is one sentence naming the fix.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream;
use futures_util::StreamExt;
use serde::Serialize;

use crate::backend::Bucket;
use crate::checks;
use crate::link::{self, LinkError, NatsAuth, NatsTls};
use crate::nats::{fetch_varz, monitor_urls};
use crate::record::NodeLease;

/// Where to look.
#[derive(Debug, Clone)]
pub struct StatusConfig {
    /// The NATS servers' client URLs.
    pub servers: Vec<String>,
    /// Their monitoring URLs; empty: port 8222 on each server's host.
    pub monitor: Vec<String>,
    /// The cluster's prefix (`mk`).
    pub prefix: String,
    /// The longest wait for one answer.
    pub timeout: Duration,
    /// TLS towards the servers (and `https://` monitoring URLs), as a node's.
    pub tls: NatsTls,
    /// The credentials, as a node's.
    pub auth: NatsAuth,
}

impl StatusConfig {
    /// The servers with the defaults: monitoring on port 8222, prefix `mk`, 5 s per answer.
    pub fn new(servers: Vec<String>) -> StatusConfig {
        StatusConfig {
            servers,
            monitor: Vec::new(),
            prefix: "mk".to_owned(),
            timeout: Duration::from_secs(5),
            tls: NatsTls::default(),
            auth: NatsAuth::None,
        }
    }
}

/// The cluster at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterStatus {
    /// The cluster's prefix.
    pub prefix: String,
    /// The NATS server the status was read through (its name and version, from INFO).
    pub connected_server: String,
    /// Each monitoring endpoint asked, in order.
    pub servers: Vec<ServerStatus>,
    /// The nodes with a lease in the bucket, by name.
    pub nodes: Vec<NodeStatus>,
    /// How long a lease lives after its last write (the leases bucket's max age).
    pub lease_ttl_ms: u64,
    /// The buckets, then the partition streams by index.
    pub streams: Vec<StreamStatus>,
    /// Round trips to the engine.
    pub round_trip: RoundTrip,
}

/// One NATS server as its monitoring endpoint describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerStatus {
    /// The monitoring URL asked.
    pub monitor: String,
    /// The server's name; `None` when its endpoint could not be read.
    pub name: Option<String>,
    /// Its version.
    pub version: Option<String>,
    /// Whether JetStream is on.
    pub jetstream: Option<bool>,
    /// Whether it fsyncs before acknowledging (`sync_interval: always`); `None`: unknown.
    pub sync_always: Option<bool>,
    /// How long its routes may stay silent before it closes them, in milliseconds
    /// (`ping_interval` × (`ping_max` + 1)); `None`: unknown.
    pub route_stale_after_ms: Option<u64>,
    /// Why the endpoint could not be read.
    pub error: Option<String>,
}

/// A node holding a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    /// Its name.
    pub name: String,
    /// Its incarnation (different at every start).
    pub incarnation: u64,
    /// How long ago its lease was last written, by this machine's clock against the NATS
    /// server's timestamp (a clock difference between the hosts shows here).
    pub last_write_age_ms: u64,
}

/// What a stream is to the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    /// A KV bucket's stream.
    Bucket,
    /// A partition stream of QoS 1/2 messages.
    Partition,
}

/// A stream of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamStatus {
    /// The stream's name (`KV_mk_leases`, `mk_p0`).
    pub name: String,
    /// A bucket or a partition.
    pub kind: StreamKind,
    /// Messages and bytes held.
    pub messages: u64,
    /// Bytes held.
    pub bytes: u64,
    /// The last sequence assigned.
    pub last_sequence: u64,
    /// The replicas configured.
    pub replicas_configured: usize,
    /// The server leading its Raft group; `None`: no leader (unavailable) or not clustered.
    pub leader: Option<String>,
    /// The other replicas.
    pub replicas: Vec<ReplicaStatus>,
    /// Its consumers, by name.
    pub consumers: Vec<ConsumerStatus>,
}

/// A follower replica of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicaStatus {
    /// The server holding it.
    pub server: String,
    /// Up to date with the leader.
    pub current: bool,
    /// Considered offline by its group.
    pub offline: bool,
    /// Operations behind the leader, when reported.
    pub lag: Option<u64>,
    /// Since the leader last heard from it.
    pub active_ms: u64,
}

/// A consumer of a stream (a node's partition follower, a bucket watch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsumerStatus {
    /// Its name (generated for ephemeral ones).
    pub name: String,
    /// The node whose partition follower it is, from its description
    /// ([`follower_description`]); `None` for other consumers (a node's retained watch).
    pub node: Option<String>,
    /// Messages in the stream not yet delivered to it: its lag.
    pub num_pending: u64,
    /// Messages delivered and not yet acknowledged.
    pub num_ack_pending: u64,
    /// The stream sequence last delivered.
    pub delivered_sequence: u64,
    /// Whether a client is bound to it (a push consumer being read).
    pub push_bound: bool,
}

/// Round trips to the engine, through the connected server.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RoundTrip {
    /// A core request the server answers itself (no responders), in milliseconds (the best
    /// of three).
    pub core_ms: f64,
    /// A JetStream API request (account info, answered through the cluster), in
    /// milliseconds (the best of three).
    pub jetstream_ms: f64,
}

/// Why the status could not be read. Each is one sentence naming the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    /// No servers were named.
    #[error(
        "no NATS servers to ask: pass --cluster nats://HOST:PORT or --config with a [cluster] \
         servers list"
    )]
    NoServers,
    /// No server could be reached.
    #[error(
        "cannot reach the NATS servers {servers} ({reason}): check that they run and that \
         --cluster (or [cluster] servers) names their client ports"
    )]
    Connect {
        /// The URLs tried.
        servers: String,
        /// Why.
        reason: String,
    },
    /// The TLS settings or credentials could not be used, or were refused.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// NATS answered, but holds no cluster of that prefix.
    #[error(
        "the NATS servers {servers} hold no Makelaar cluster with prefix {prefix} (no \
         {prefix}_leases bucket): check that --cluster names your cluster's servers, or start \
         a node on them with makelaar serve --cluster"
    )]
    NoCluster {
        /// The URLs asked.
        servers: String,
        /// The prefix looked for.
        prefix: String,
    },
    /// JetStream did not answer a question.
    #[error(
        "cannot read {what} from the NATS servers {servers} ({reason}): check that JetStream \
         is enabled on them and has a leader"
    )]
    JetStream {
        /// What was asked.
        what: String,
        /// The URLs asked.
        servers: String,
        /// Why.
        reason: String,
    },
}

/// Reads the cluster's status.
pub async fn gather(config: &StatusConfig) -> Result<ClusterStatus, StatusError> {
    if config.servers.is_empty() {
        return Err(StatusError::NoServers);
    }
    let servers_text = link::redact_urls(&config.servers);
    let connect_err = |reason: String| StatusError::Connect {
        servers: servers_text.clone(),
        reason,
    };
    let addrs: Vec<async_nats::ServerAddr> = config
        .servers
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, std::io::Error>>()
        .map_err(|e| connect_err(e.to_string()))?;
    let tls = Arc::new(link::client_config(&config.tls, &config.servers)?);
    let options = async_nats::ConnectOptions::new()
        .name("makelaar cluster status")
        .connection_timeout(config.timeout)
        .request_timeout(Some(config.timeout));
    let options = link::apply(options, &config.tls, &tls, &config.auth).await?;
    let client = tokio::time::timeout(config.timeout, options.connect(addrs))
        .await
        .map_err(|_| connect_err("no answer in time".to_owned()))?
        .map_err(
            |e| match link::classify(&e, &config.servers, &config.tls, &config.auth) {
                Some(l) => StatusError::Link(l),
                None => connect_err(e.to_string()),
            },
        )?;
    let js_err = |what: &str, reason: String| StatusError::JetStream {
        what: what.to_owned(),
        servers: servers_text.clone(),
        reason,
    };
    let mut js = jetstream::new(client.clone());
    js.set_timeout(config.timeout);

    let monitors = if config.monitor.is_empty() {
        monitor_urls(&config.servers)
    } else {
        config.monitor.clone()
    };
    let servers = futures_util::future::join_all(
        monitors
            .iter()
            .map(|url| server_status(url.clone(), config.timeout, &tls)),
    )
    .await;

    let mut infos = Vec::new();
    let mut list = js.streams();
    while let Some(info) = list.next().await {
        infos.push(info.map_err(|e| js_err("the JetStream streams", e.to_string()))?);
    }
    let leases_stream = format!("KV_{}_{}", config.prefix, Bucket::Leases.suffix());
    let Some(leases_info) = infos.iter().find(|i| i.config.name == leases_stream) else {
        return Err(StatusError::NoCluster {
            servers: servers_text.clone(),
            prefix: config.prefix.clone(),
        });
    };
    let lease_ttl_ms = millis(leases_info.config.max_age);

    let mut streams = Vec::new();
    for info in &infos {
        let Some(kind) = stream_kind(&config.prefix, &info.config.name) else {
            continue;
        };
        let stream = js
            .get_stream_no_info(&info.config.name)
            .await
            .map_err(|e| js_err(&format!("stream {}", info.config.name), e.to_string()))?;
        let mut consumers = Vec::new();
        let mut cs = stream.consumers();
        while let Some(c) = cs.next().await {
            let c = c.map_err(|e| {
                js_err(
                    &format!("the consumers of stream {}", info.config.name),
                    e.to_string(),
                )
            })?;
            consumers.push(ConsumerStatus {
                node: c.config.description.as_deref().and_then(follower_of),
                name: c.name,
                num_pending: c.num_pending,
                num_ack_pending: c.num_ack_pending as u64,
                delivered_sequence: c.delivered.stream_sequence,
                push_bound: c.push_bound,
            });
        }
        consumers.sort_by(|a, b| a.name.cmp(&b.name));
        let cluster = info.cluster.as_ref();
        streams.push(StreamStatus {
            name: info.config.name.clone(),
            kind,
            messages: info.state.messages,
            bytes: info.state.bytes,
            last_sequence: info.state.last_sequence,
            replicas_configured: info.config.num_replicas,
            leader: cluster.and_then(|c| c.leader.clone()),
            replicas: cluster
                .map(|c| {
                    c.replicas
                        .iter()
                        .map(|r| ReplicaStatus {
                            server: r.name.clone(),
                            current: r.current,
                            offline: r.offline,
                            lag: r.lag,
                            active_ms: millis(r.active),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            consumers,
        });
    }
    streams.sort_by_key(|s| stream_order(&config.prefix, s));

    let nodes = nodes(&js, config, &leases_stream)
        .await
        .map_err(|reason| js_err(&format!("bucket {}_leases", config.prefix), reason))?;

    // A request on a subject nobody follows: the server answers "no responders" at once, so
    // its time is one client-server round trip (a flush alone does not wait for the server).
    let ping = format!("{}.status.ping", config.prefix);
    let round_trip = RoundTrip {
        core_ms: best_of_three(|| async {
            match client.request(ping.clone(), bytes::Bytes::new()).await {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
        .map_err(connect_err)?,
        jetstream_ms: best_of_three(|| async {
            js.query_account()
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|reason| js_err("the account information", reason))?,
    };
    let info = client.server_info();
    Ok(ClusterStatus {
        prefix: config.prefix.clone(),
        connected_server: format!("{} {}", info.server_name, info.version),
        servers,
        nodes,
        lease_ttl_ms,
        streams,
        round_trip,
    })
}

/// The default monitoring URLs are derived like the start-up checks'; the version and
/// fsync setting are read the same way ([`checks::report_from_varz`]).
async fn server_status(
    url: String,
    timeout: Duration,
    tls: &Arc<rustls::ClientConfig>,
) -> ServerStatus {
    let report = match fetch_varz(&url, timeout, Some(tls)).await {
        Ok(body) => checks::report_from_varz(&body).map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    match report {
        Ok(r) => ServerStatus {
            monitor: url,
            name: Some(r.name),
            version: Some(r.version),
            jetstream: Some(r.jetstream),
            sync_always: Some(r.sync_always),
            route_stale_after_ms: r
                .route_stale_after
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            error: None,
        },
        Err(e) => ServerStatus {
            monitor: url,
            name: None,
            version: None,
            jetstream: None,
            sync_always: None,
            route_stale_after_ms: None,
            error: Some(e),
        },
    }
}

/// The leases in the bucket, read from the stream's subject list (no consumer made).
async fn nodes(
    js: &jetstream::Context,
    config: &StatusConfig,
    leases_stream: &str,
) -> Result<Vec<NodeStatus>, String> {
    let bucket = format!("{}_{}", config.prefix, Bucket::Leases.suffix());
    let kv = js.get_key_value(&bucket).await.map_err(|e| e.to_string())?;
    let stream = js
        .get_stream_no_info(leases_stream)
        .await
        .map_err(|e| e.to_string())?;
    let prefix = format!("$KV.{bucket}.");
    let mut subjects = stream
        .info_with_subjects(format!("{prefix}>"))
        .await
        .map_err(|e| e.to_string())?;
    let mut keys = Vec::new();
    while let Some(s) = subjects.next().await {
        let (subject, _) = s.map_err(|e| e.to_string())?;
        if let Some(key) = subject.strip_prefix(prefix.as_str()) {
            keys.push(key.to_owned());
        }
    }
    let now = unix_nanos(SystemTime::now());
    let mut out = Vec::new();
    for key in keys {
        let Some(entry) = kv.entry(&key).await.map_err(|e| e.to_string())? else {
            continue;
        };
        if entry.operation != jetstream::kv::Operation::Put {
            continue;
        }
        let Ok(lease) = NodeLease::decode(&entry.value) else {
            continue;
        };
        out.push(NodeStatus {
            name: lease.node.to_string(),
            incarnation: lease.incarnation,
            last_write_age_ms: age_ms(now, entry.created.unix_timestamp_nanos()),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The best of three round trips, in milliseconds.
async fn best_of_three<F, Fut>(mut f: F) -> Result<f64, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let sent = Instant::now();
        f().await?;
        best = best.min(sent.elapsed());
    }
    Ok(best.as_secs_f64() * 1000.0)
}

/// The description of a node's partition follower (a consumer), which names the node.
pub fn follower_description(node: &str) -> String {
    format!("makelaar node {node}: partition follower")
}

/// The node a consumer description of [`follower_description`] names.
pub fn follower_of(description: &str) -> Option<String> {
    description
        .strip_prefix("makelaar node ")?
        .strip_suffix(": partition follower")
        .map(str::to_owned)
}

/// Whether a stream belongs to the cluster of `prefix`, and as what.
pub fn stream_kind(prefix: &str, name: &str) -> Option<StreamKind> {
    if let Some(rest) = name.strip_prefix(&format!("{prefix}_p")) {
        if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
            return Some(StreamKind::Partition);
        }
    }
    let bucket = name.strip_prefix(&format!("KV_{prefix}_"))?;
    Bucket::ALL
        .iter()
        .any(|b| b.suffix() == bucket)
        .then_some(StreamKind::Bucket)
}

/// Buckets first (in [`Bucket::ALL`]'s order), then partitions by index.
fn stream_order(prefix: &str, s: &StreamStatus) -> (u8, usize) {
    match s.kind {
        StreamKind::Bucket => {
            let suffix = s.name.rsplit('_').next().unwrap_or("");
            let i = Bucket::ALL
                .iter()
                .position(|b| b.suffix() == suffix)
                .unwrap_or(usize::MAX);
            (0, i)
        }
        StreamKind::Partition => {
            let index = s
                .name
                .strip_prefix(&format!("{prefix}_p"))
                .and_then(|i| i.parse().ok())
                .unwrap_or(usize::MAX);
            (1, index)
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unix_nanos(t: SystemTime) -> i128 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
}

/// Milliseconds from `then` to `now` (both Unix nanoseconds); 0 when `then` is ahead (the
/// NATS host's clock is ahead of this one's).
pub fn age_ms(now: i128, then: i128) -> u64 {
    u64::try_from(now.saturating_sub(then).max(0) / 1_000_000).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn streams_of_the_cluster() {
        assert_eq!(stream_kind("mk", "mk_p0"), Some(StreamKind::Partition));
        assert_eq!(stream_kind("mk", "mk_p15"), Some(StreamKind::Partition));
        assert_eq!(stream_kind("mk", "KV_mk_leases"), Some(StreamKind::Bucket));
        assert_eq!(stream_kind("mk", "KV_mk_reapers"), Some(StreamKind::Bucket));
        // Another prefix's, another bucket, or no partition number: not ours.
        assert_eq!(stream_kind("mk", "mkx_p0"), None);
        assert_eq!(stream_kind("mk", "mk_p"), None);
        assert_eq!(stream_kind("mk", "mk_px"), None);
        assert_eq!(stream_kind("mk", "KV_mk_other"), None);
        assert_eq!(stream_kind("mk", "KV_other_leases"), None);
        assert_eq!(stream_kind("mk", "ORDERS"), None);
    }

    fn stream(name: &str, kind: StreamKind) -> StreamStatus {
        StreamStatus {
            name: name.into(),
            kind,
            messages: 0,
            bytes: 0,
            last_sequence: 0,
            replicas_configured: 1,
            leader: None,
            replicas: Vec::new(),
            consumers: Vec::new(),
        }
    }

    #[test]
    fn buckets_then_partitions_by_index() {
        let mut v = [
            stream("mk_p10", StreamKind::Partition),
            stream("KV_mk_leases", StreamKind::Bucket),
            stream("mk_p2", StreamKind::Partition),
            stream("KV_mk_registry", StreamKind::Bucket),
        ];
        v.sort_by_key(|s| stream_order("mk", s));
        let names: Vec<_> = v.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["KV_mk_registry", "KV_mk_leases", "mk_p2", "mk_p10"]);
    }

    #[test]
    fn followers_name_their_node() {
        assert_eq!(
            follower_of(&follower_description("m-1")).as_deref(),
            Some("m-1")
        );
        assert_eq!(follower_of("something else"), None);
        assert_eq!(follower_of(""), None);
    }

    #[test]
    fn ages() {
        assert_eq!(age_ms(5_000_000_000, 2_000_000_000), 3000);
        assert_eq!(age_ms(1, 2_000_000_000), 0);
    }

    #[test]
    fn errors_are_one_sentence_naming_the_fix() {
        let e = StatusError::Connect {
            servers: "nats://127.0.0.1:1".into(),
            reason: "connection refused".into(),
        }
        .to_string();
        assert!(
            e.contains("nats://127.0.0.1:1") && e.contains("--cluster"),
            "{e}"
        );
        let n = StatusError::NoCluster {
            servers: "nats://h:4222".into(),
            prefix: "mk".into(),
        }
        .to_string();
        assert!(
            n.contains("mk_leases") && n.contains("makelaar serve"),
            "{n}"
        );
        for text in [e, n, StatusError::NoServers.to_string()] {
            assert!(!text.contains(". "), "one sentence: {text}");
        }
    }
}
