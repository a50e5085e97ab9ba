//! The NATS JetStream engine under the cluster layer (async-nats): connecting, the start-up
//! checks, the buckets and partition streams, and [`Backend`] over them.
//!
//! What [`NatsBackend::connect`] sets up, once per cluster (never per client or
//! subscription: rule 2 of docs/cluster.md), and checks on every start:
//!
//! | name | what | kind |
//! |---|---|---|
//! | `{prefix}_registry`, `{prefix}_sessions`, `{prefix}_retained` | [`Bucket`]s, history 1 | KV, file storage |
//! | `{prefix}_leases` | node leases, entries expire after the lease TTL | KV, file storage |
//! | `{prefix}_reapers` | who reaps a dead node, entries expire after a day | KV, file storage |
//! | `{prefix}_p0` … `{prefix}_p{P-1}` | the partition streams, subjects `{prefix}.p{i}.>` | stream, file storage |
//!
//! All with 3 replicas when the NATS cluster has 3 servers or more, else 1 (or as
//! configured). An existing bucket or stream with other replicas or storage is refused, not
//! changed behind the operator's back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend::{Backend, BackendError, Bucket, Delivery, Entry, StreamMessage, WatchEvent};
use crate::checks::{self, ServerReport, StartupError, Warning};
use crate::follow::{self, AfterSilence, ConsumerWatch};
use crate::ids::{MessageId, Revision};
use crate::link::{self, LinkError, NatsAuth, NatsTls};
use crate::partition::{Partition, PartitionCount};
use crate::share::ShareGroup;
use crate::subject::Subject;

/// How to reach and set up the engine.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// The NATS servers' client URLs (`nats://host:4222`, `tls://host:4222`); the client fails
    /// over among them.
    pub servers: Vec<String>,
    /// The servers' monitoring endpoints (`http://host:8222`, or `https://` verified like the
    /// client port), read for the fsync check; empty: `http://` port 8222 on each server's
    /// host.
    pub monitor: Vec<String>,
    /// TLS towards the servers (and `https://` monitoring endpoints).
    pub tls: NatsTls,
    /// This node's credentials.
    pub auth: NatsAuth,
    /// Start although a server fsyncs lazily (or its setting cannot be read), logged loudly.
    pub allow_lazy_fsync: bool,
    /// Replicas of every bucket and stream; `None`: 3 when the NATS cluster has at least 3
    /// servers, else 1.
    pub replicas: Option<usize>,
    /// The first part of every subject, bucket and stream name.
    pub prefix: String,
    /// The number of partition streams.
    pub partitions: PartitionCount,
    /// The leases bucket's entry lifetime (the lease TTL).
    pub lease_ttl: Duration,
    /// How long a partition stream keeps a message: at least the longest session expiry
    /// allowed; zero keeps them until removed otherwise (the broker's default session expiry
    /// limit is "never", so retention by cursors comes with the delivery path).
    pub max_message_age: Duration,
    /// The longest wait for one engine round trip at start-up.
    pub timeout: Duration,
    /// The node this connection serves, named in the descriptions of its consumers so that
    /// `makelaar cluster status` tells whose each is; empty: not named.
    pub node: String,
}

/// How long a round trip to the engine is waited for by default: at start-up, and for
/// every append (a node gives an append up after it and does not acknowledge it).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

impl NatsConfig {
    /// The defaults for these servers: monitoring endpoints on port 8222 of each server's
    /// host, TLS verified by the system's CAs when a server asks for it, no credentials, lazy
    /// fsync refused, replicas by the NATS cluster's size, prefix `mk`, 16
    /// partitions, the default lease TTL ([`crate::lease::LeaseConfig::default`]), messages
    /// kept until removed, 5 s for a round trip at start-up.
    pub fn new(servers: Vec<String>) -> NatsConfig {
        NatsConfig {
            servers,
            monitor: Vec::new(),
            tls: NatsTls::default(),
            auth: NatsAuth::None,
            allow_lazy_fsync: false,
            replicas: None,
            prefix: "mk".to_owned(),
            partitions: crate::cluster::DEFAULT_PARTITIONS,
            lease_ttl: crate::lease::LeaseConfig::default().ttl,
            max_message_age: Duration::ZERO,
            timeout: DEFAULT_TIMEOUT,
            node: String::new(),
        }
    }
}

/// Why the engine could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NatsStartError {
    /// No server could be reached.
    #[error("cannot connect to the NATS servers {servers}: {reason}")]
    Connect {
        /// The URLs tried (passwords hidden).
        servers: String,
        /// Why.
        reason: String,
    },
    /// TLS or the credentials failed (settings, handshake, authorization).
    #[error(transparent)]
    Link(#[from] LinkError),
    /// A server failed a start-up check.
    #[error(transparent)]
    Check(#[from] StartupError),
    /// A bucket or stream could not be created or has another shape.
    #[error("cannot set up JetStream {what}: {reason}")]
    Setup {
        /// The bucket or stream.
        what: String,
        /// Why.
        reason: String,
    },
}

/// A connection to the NATS cluster with the buckets and streams set up.
#[derive(Clone)]
pub struct NatsBackend {
    client: async_nats::Client,
    /// A second connection, with echo, for the share groups' queue subscriptions: a QoS 0
    /// message this node publishes must be able to land in its own queue subscription too
    /// (the server skips a no-echo connection's own subscriptions when it picks a queue
    /// member, so on `client` this node's members would never get its own messages).
    shares: async_nats::Client,
    js: jetstream::Context,
    buckets: HashMap<Bucket, kv::Store>,
    /// Each bucket's stream, for reads answered by its leader.
    bucket_streams: HashMap<Bucket, stream::Stream>,
    prefix: String,
    partitions: PartitionCount,
    node: String,
    /// How long a write waits for the connection to NATS to be up before it gives up
    /// ([`NatsBackend::connected`]), the engine's request timeout.
    timeout: Duration,
}

/// The host of a `nats://host:port` (or bare `host:port`) URL.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let hostport = rest.split('/').next().unwrap_or(rest);
    if let Some(v6) = hostport.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    hostport.rsplit_once(':').map_or(hostport, |(h, _)| h)
}

/// The default monitoring URLs: port 8222 on each server's host.
pub fn monitor_urls(servers: &[String]) -> Vec<String> {
    servers
        .iter()
        .map(|s| {
            let h = host_of(s);
            if h.contains(':') {
                format!("http://[{h}]:8222")
            } else {
                format!("http://{h}:8222")
            }
        })
        .collect()
}

/// Reads `GET {url}/varz` with an HTTP/1.0 request (a whole-body answer without chunking).
/// `https://` URLs need `tls`, the configuration the client port is verified with (a server
/// with `https:` monitoring serves it with its TLS certificate).
pub async fn fetch_varz(
    url: &str,
    timeout: Duration,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Vec<u8>, String> {
    let (rest, secure) = if let Some(rest) = url.strip_prefix("http://") {
        (rest, false)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (rest, true)
    } else {
        return Err("only http:// and https:// monitoring URLs are supported".to_owned());
    };
    let hostport = rest.trim_end_matches('/');
    let host = host_of(hostport);
    let work = async {
        let tcp = tokio::net::TcpStream::connect(hostport)
            .await
            .map_err(|e| e.to_string())?;
        let req = format!("GET /varz HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\n\r\n");
        if secure {
            let config = tls.ok_or_else(|| "no TLS configuration for https://".to_owned())?;
            let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|_| format!("'{host}' is not a valid host name for TLS"))?;
            let stream = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            read_answer(stream, &req).await
        } else {
            read_answer(tcp, &req).await
        }
    };
    let buf = tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| "no answer in time".to_owned())??;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| "not an HTTP answer".to_owned())?;
    let (head, body) = buf.split_at(split);
    let status = head.split(|&b| b == b'\n').next().unwrap_or_default();
    if !String::from_utf8_lossy(status).contains(" 200") {
        return Err(format!(
            "answered {}",
            String::from_utf8_lossy(status).trim()
        ));
    }
    Ok(body.get(4..).unwrap_or_default().to_vec())
}

/// Sends `req` and reads the whole answer (at most 8 MiB).
async fn read_answer<S>(mut stream: S, req: &str) -> Result<Vec<u8>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    // A TLS server may close without close_notify after an HTTP/1.0 answer: what was read
    // by then is the answer.
    match stream.take(8 << 20).read_to_end(&mut buf).await {
        Ok(_) => Ok(buf),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => Ok(buf),
        Err(e) => Err(e.to_string()),
    }
}

fn setup_err(what: &str, reason: impl std::fmt::Display) -> NatsStartError {
    NatsStartError::Setup {
        what: what.to_owned(),
        reason: reason.to_string(),
    }
}

fn engine(e: impl std::fmt::Display) -> BackendError {
    BackendError::Engine(e.to_string())
}

impl NatsBackend {
    /// Connects, checks every server (version, JetStream, fsync), and creates or verifies the
    /// buckets and partition streams. The warnings (lazy fsync allowed: at error level; a
    /// server slow to close a cut-off route: at warn level) are logged here and returned,
    /// for the caller to show where it shows such things.
    pub async fn connect(
        config: &NatsConfig,
    ) -> Result<(NatsBackend, Vec<Warning>), NatsStartError> {
        let servers: Vec<async_nats::ServerAddr> = config
            .servers
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()
            .map_err(|e: std::io::Error| NatsStartError::Connect {
                servers: link::redact_urls(&config.servers),
                reason: e.to_string(),
            })?;
        let tls = link::client_config(&config.tls, &config.servers)?;
        // No echo: a node's own QoS 0 publishes do not come back to its subscriptions (its
        // local subscribers got them from the local path already).
        // The node's name in the connection's, as the servers' monitoring (`/connz`) shows it.
        let options = async_nats::ConnectOptions::new()
            .name(connection_name("makelaar", &config.node))
            .event_callback(|e| log_connection_event("main", e))
            .no_echo()
            .connection_timeout(config.timeout)
            .request_timeout(Some(config.timeout));
        let options = link::apply(options, &config.tls, &tls, &config.auth).await?;
        let share_options = async_nats::ConnectOptions::new()
            .name(connection_name("makelaar-shares", &config.node))
            .event_callback(|e| log_connection_event("shares", e))
            .connection_timeout(config.timeout)
            .request_timeout(Some(config.timeout));
        let share_options = link::apply(share_options, &config.tls, &tls, &config.auth).await?;
        let share_servers = servers.clone();
        let connect_err = |e: async_nats::ConnectError| match link::classify(
            &e,
            &config.servers,
            &config.tls,
            &config.auth,
        ) {
            Some(l) => NatsStartError::Link(l),
            None => NatsStartError::Connect {
                servers: link::redact_urls(&config.servers),
                reason: e.to_string(),
            },
        };
        let client = options.connect(servers).await.map_err(connect_err)?;
        // A second connection, with echo on, for share groups' QoS 0 queue groups: a node's
        // own members must be able to win a message it published itself.
        let shares = share_options
            .connect(share_servers)
            .await
            .map_err(connect_err)?;
        let (warnings, cluster_size) = Self::check_servers(&client, config, &tls).await?;
        for w in &warnings {
            if w.risks_acknowledged() {
                tracing::error!("{w}");
            } else {
                tracing::warn!("{w}");
            }
        }
        // The servers' own configuration says how many JetStream servers there are, from the
        // start: the client's INFO lists only the servers routed so far, so a node starting
        // while the NATS cluster forms would otherwise make single-replica buckets, which
        // the next node refuses (and which keep a message on one disk only).
        let info = client.server_info();
        let known = config
            .servers
            .len()
            .max(info.connect_urls.len())
            .max(cluster_size);
        let replicas = config.replicas.unwrap_or(if known >= 3 { 3 } else { 1 });
        let mut js = jetstream::new(client.clone());
        js.set_timeout(config.timeout);
        let mut buckets = HashMap::new();
        let mut bucket_streams = HashMap::new();
        for b in Bucket::ALL {
            let (store, stream) = Self::ensure_bucket(&js, config, b, replicas).await?;
            buckets.insert(b, store);
            bucket_streams.insert(b, stream);
        }
        for p in config.partitions.all() {
            Self::ensure_stream(&js, config, p, replicas).await?;
        }
        Ok((
            NatsBackend {
                client,
                shares,
                js,
                buckets,
                bucket_streams,
                prefix: config.prefix.clone(),
                partitions: config.partitions,
                node: config.node.clone(),
                timeout: config.timeout,
            },
            warnings,
        ))
    }

    async fn check_servers(
        client: &async_nats::Client,
        config: &NatsConfig,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<(Vec<Warning>, usize), NatsStartError> {
        let info = client.server_info();
        // The connected server's INFO: the version floor holds even without monitoring.
        checks::check(
            &ServerReport {
                name: info.server_name.clone(),
                version: info.version.clone(),
                jetstream: true,
                sync_always: true,
                cluster_size: 0,
                route_stale_after: None,
            },
            false,
            config.timeout,
        )?;
        let monitor: Vec<String> = if config.monitor.is_empty() {
            monitor_urls(&config.servers)
        } else {
            config.monitor.clone()
        };
        let mut warnings = Vec::new();
        let mut cluster_size = 0;
        for url in monitor {
            let report = match fetch_varz(&url, config.timeout, Some(tls)).await {
                Ok(body) => checks::report_from_varz(&body).map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            let outcome = match report {
                Ok(r) => {
                    cluster_size = cluster_size.max(r.cluster_size);
                    // The engine's request timeout is how long an append is waited for.
                    checks::check(&r, config.allow_lazy_fsync, config.timeout)
                }
                Err(reason) => checks::lazy(
                    StartupError::MonitorUnreachable {
                        server: info.server_name.clone(),
                        url: url.clone(),
                        reason,
                    },
                    config.allow_lazy_fsync,
                )
                .map(Vec::from_iter),
            };
            warnings.extend(outcome?);
        }
        Ok((warnings, cluster_size))
    }

    fn bucket_name(prefix: &str, b: Bucket) -> String {
        format!("{prefix}_{}", b.suffix())
    }

    async fn ensure_bucket(
        js: &jetstream::Context,
        config: &NatsConfig,
        b: Bucket,
        replicas: usize,
    ) -> Result<(kv::Store, stream::Stream), NatsStartError> {
        let name = Self::bucket_name(&config.prefix, b);
        let what = format!("bucket {name}");
        let max_age = match b {
            Bucket::Leases => config.lease_ttl,
            Bucket::Reapers => Duration::from_secs(24 * 3600),
            _ => Duration::ZERO,
        };
        let store = match js.get_key_value(&name).await {
            Ok(store) => store,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: name.clone(),
                    history: 1,
                    max_age,
                    storage: stream::StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| setup_err(&what, e))?,
        };
        let mut s = js
            .get_stream(format!("KV_{name}"))
            .await
            .map_err(|e| setup_err(&what, e))?;
        let info = s.info().await.map_err(|e| setup_err(&what, e))?;
        verify(&what, &info.config, replicas)?;
        Ok((store, s))
    }

    async fn ensure_stream(
        js: &jetstream::Context,
        config: &NatsConfig,
        p: Partition,
        replicas: usize,
    ) -> Result<(), NatsStartError> {
        let name = format!("{}_p{}", config.prefix, p.index());
        let what = format!("stream {name}");
        let subject = format!("{}.p{}.>", config.prefix, p.index());
        let mut s = match js.get_stream(&name).await {
            Ok(s) => s,
            Err(_) => js
                .create_stream(stream::Config {
                    name: name.clone(),
                    subjects: vec![subject.clone()],
                    storage: stream::StorageType::File,
                    num_replicas: replicas,
                    max_age: config.max_message_age,
                    duplicate_window: duplicate_window(config.max_message_age),
                    ..Default::default()
                })
                .await
                .map_err(|e| setup_err(&what, e))?,
        };
        let info = s.info().await.map_err(|e| setup_err(&what, e))?;
        verify(&what, &info.config, replicas)?;
        if info.config.duplicate_window < duplicate_window(info.config.max_age) {
            // Made by another version or by hand: retried appends may be stored twice.
            tracing::warn!(
                stream = %name,
                window = ?info.config.duplicate_window,
                wanted = ?DUPLICATE_WINDOW,
                "the stream's duplicate window is shorter than a will's append is retried: a retried will may be delivered twice (`nats stream edit --dupe-window 2m`)"
            );
        }
        if info.config.subjects != [subject.clone()] {
            return Err(setup_err(
                &what,
                format!(
                    "it takes subjects {:?}, not [{subject}]: delete it or choose another prefix",
                    info.config.subjects
                ),
            ));
        }
        Ok(())
    }

    /// The JetStream context (for inspection: stream counts, infos).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// The core client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The prefix of every name.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The number of partition streams.
    pub fn partitions(&self) -> PartitionCount {
        self.partitions
    }

    /// Follows a share group's inner filter on the live subjects (QoS 0) in the group's
    /// queue group, on the connection with echo: NATS hands each message to one of the
    /// nodes that follow the group, this one included for its own publishes.
    pub async fn share_subscribe(
        &self,
        group: &ShareGroup,
    ) -> Result<<Self as Backend>::Subscription, BackendError> {
        let sub = self
            .shares
            .queue_subscribe(
                group.live_subject(&self.prefix).into_string(),
                group.queue(&self.prefix),
            )
            .await
            .map_err(engine)?;
        Ok(sub.map(delivery as fn(async_nats::Message) -> Delivery))
    }

    /// A share group's durable consumer in one partition (created by the first node that
    /// asks, bound to by the others), for [`ShareConsumer::pull`]: each message goes to one
    /// of the nodes pulling; one not acknowledged within [`SHARE_ACK_WAIT`] (or refused)
    /// goes again, to any node still pulling. A consumer made here starts with the messages
    /// appended from `since` on (when the group's first member here subscribed), so a
    /// message published after the SUBACK and before the consumer exists is not missed; one
    /// that exists is bound to as it is. A consumer no node has pulled from for
    /// [`SHARE_IDLE`] is removed by the server (the group has no member left).
    pub async fn share_consumer(
        &self,
        group: &ShareGroup,
        partition: Partition,
        since: std::time::SystemTime,
    ) -> Result<ShareConsumer, BackendError> {
        let nanos = since
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX));
        let start_time = async_nats::datetime::from_nanos(nanos).map_err(engine)?;
        let name = format!("{}_p{}", self.prefix, partition.index());
        let stream = self.js.get_stream(&name).await.map_err(engine)?;
        let consumer_name = group.consumer(&self.prefix, partition);
        let consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                &consumer_name,
                jetstream::consumer::pull::Config {
                    durable_name: Some(consumer_name.clone()),
                    description: Some(format!("share group {}", group.full())),
                    filter_subject: group.stream_filter(&self.prefix, partition).into_string(),
                    deliver_policy: jetstream::consumer::DeliverPolicy::ByStartTime { start_time },
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: SHARE_ACK_WAIT,
                    inactive_threshold: SHARE_IDLE,
                    ..Default::default()
                },
            )
            .await
            .map_err(engine)?;
        Ok(ShareConsumer(consumer))
    }

    /// An append, with JetStream's deduplication header when `id` is given (the stream
    /// then acknowledges a duplicate with the sequence of the message stored first).
    async fn append_with(
        &self,
        partition: Partition,
        subject: Subject,
        payload: Bytes,
        id: Option<&MessageId>,
    ) -> Result<u64, BackendError> {
        // `<prefix>.p<i>.…`, checked without building the prefix (this is per message).
        let in_partition = subject
            .as_str()
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix(".p"))
            .and_then(|r| r.split_once('.'))
            .is_some_and(|(i, _)| i.parse::<u16>() == Ok(partition.index()));
        if !in_partition {
            return Err(BackendError::Engine(format!(
                "subject {subject} is not in partition {partition}"
            )));
        }
        self.connected().await?;
        let sent = match id {
            None => self.js.publish(subject.into_string(), payload).await,
            Some(id) => {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
                self.js
                    .publish_with_headers(subject.into_string(), headers, payload)
                    .await
            }
        };
        let ack = sent.map_err(engine)?.await.map_err(engine)?;
        Ok(ack.sequence)
    }

    /// Waits until the connection to NATS is up, for at most the engine's timeout. A write
    /// is handed to async-nats only then: what it takes while its connection is down it
    /// keeps and sends once it has reconnected, however late, with no way to withdraw it;
    /// so an append this node gave up (its publisher disconnected without an
    /// acknowledgement, gone on to publish elsewhere) was stored after the publisher's
    /// later messages, and a retained write over a newer value (found by the fault
    /// harness's late appends). One that waited here in vain was never sent.
    async fn connected(&self) -> Result<(), BackendError> {
        use async_nats::connection::State;
        if self.client.connection_state() == State::Connected {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if self.client.connection_state() == State::Connected {
                return Ok(());
            }
        }
        Err(BackendError::Engine(
            "not connected to any NATS server: the write was not sent".to_owned(),
        ))
    }

    fn store(&self, b: Bucket) -> Result<&kv::Store, BackendError> {
        self.buckets
            .get(&b)
            .ok_or_else(|| BackendError::Engine(format!("bucket {} not set up", b.suffix())))
    }
}

/// How long a partition stream remembers the ids of the appends that carry one
/// ([`Backend::append_once`]): longer than anything tries such an append again (the broker
/// retries a will's for a minute), so a retry never stores a second copy. NATS's own
/// default, set explicitly so that a change of that default cannot shorten it.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The duplicate window of a stream keeping messages for `max_age` (zero: for good): the
/// server allows none longer than the messages live.
fn duplicate_window(max_age: Duration) -> Duration {
    if max_age.is_zero() {
        DUPLICATE_WINDOW
    } else {
        DUPLICATE_WINDOW.min(max_age)
    }
}

fn verify(what: &str, c: &stream::Config, replicas: usize) -> Result<(), NatsStartError> {
    if c.storage != stream::StorageType::File {
        return Err(setup_err(
            what,
            "it uses memory storage, not file storage: delete it so that it is made again",
        ));
    }
    if c.num_replicas != replicas {
        return Err(setup_err(
            what,
            format!(
                "it has {} replicas where {replicas} are wanted: change it with `nats stream edit --replicas {replicas}`",
                c.num_replicas
            ),
        ));
    }
    Ok(())
}

/// What a partition consumer is made from, and made again from.
#[derive(Clone)]
struct ConsumerSource {
    stream: jetstream::stream::Stream,
    /// For the consumers' inboxes.
    client: async_nats::Client,
    /// The stream's name, for the logs.
    name: String,
    /// The consumer's description (a follower names its node, for the status).
    description: Option<String>,
}

impl NatsBackend {
    async fn consumer_source(&self, partition: Partition) -> Result<ConsumerSource, BackendError> {
        let name = format!("{}_p{}", self.prefix, partition.index());
        let stream = self.js.get_stream(&name).await.map_err(engine)?;
        Ok(ConsumerSource {
            stream,
            client: self.client.clone(),
            name,
            description: (!self.node.is_empty())
                .then(|| crate::status::follower_description(&self.node)),
        })
    }
}

impl ConsumerSource {
    /// A read-back's consumer is not a follower (the status counts followers by it).
    fn without_description(mut self) -> ConsumerSource {
        self.description = None;
        self
    }

    /// A new ordered consumer delivering from `from`.
    async fn ordered(&self, from: u64) -> Result<jetstream::consumer::push::Ordered, BackendError> {
        let consumer = self
            .stream
            .create_consumer(jetstream::consumer::push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                description: self.description.clone(),
                ..Default::default()
            })
            .await
            .map_err(engine)?;
        consumer.messages().await.map_err(engine)
    }

    /// The stream's first and last sequence now.
    async fn bounds(&self) -> Result<(u64, u64), BackendError> {
        let info = self.stream.get_info().await.map_err(engine)?;
        Ok((info.state.first_sequence, info.state.last_sequence))
    }
}

/// A partition consumer under its [`ConsumerWatch`]: its messages in stream order, each
/// once (a consumer made again may deliver again what the old one did).
pub struct Watched(
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<StreamMessage, BackendError>> + Send>>,
);

impl futures_util::Stream for Watched {
    type Item = Result<StreamMessage, BackendError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.as_mut().poll_next(cx)
    }
}

/// The state [`watched`] carries from message to message.
struct Watching {
    source: ConsumerSource,
    /// `None`: to be made (again).
    messages: Option<jetstream::consumer::push::Ordered>,
    watch: ConsumerWatch,
}

fn watched(
    source: ConsumerSource,
    messages: jetstream::consumer::push::Ordered,
    watch: ConsumerWatch,
) -> Watched {
    let state = Watching {
        source,
        messages: Some(messages),
        watch,
    };
    Watched(Box::pin(futures_util::stream::unfold(
        Some(state),
        |state| async move {
            let mut w = state?;
            let item = next_watched(&mut w).await?;
            let go_on = item.is_ok();
            Some((item, go_on.then_some(w)))
        },
    )))
}

/// The next message of a watched consumer; `None` at the end of a read-back.
async fn next_watched(w: &mut Watching) -> Option<Result<StreamMessage, BackendError>> {
    loop {
        if w.watch.is_done() {
            return None;
        }
        let Some(messages) = w.messages.as_mut() else {
            // Bounded below the engine's request timeout: while JetStream elects a new meta
            // leader (the dead server was it), a request waits in vain; the next one goes to
            // the new leader.
            let made =
                tokio::time::timeout(follow::REQUEST_PATIENCE, w.source.ordered(w.watch.next()))
                    .await
                    .unwrap_or(Err(BackendError::Timeout));
            match made {
                Ok(m) => w.messages = Some(m),
                Err(e) => {
                    tracing::warn!(stream = %w.source.name, error = %e, "cannot make a partition consumer again yet");
                    tokio::time::sleep(follow::SILENCE).await;
                    if w.watch.handle_remake_failed() {
                        return Some(Err(e));
                    }
                }
            }
            continue;
        };
        match tokio::time::timeout(follow::SILENCE, messages.next()).await {
            Ok(Some(Ok(m))) => match m.info() {
                Ok(info) if info.stream_sequence < w.watch.next() => {}
                Ok(info) => {
                    w.watch.handle_message(info.stream_sequence);
                    return Some(Ok(StreamMessage {
                        seq: info.stream_sequence,
                        subject: m.subject.to_string(),
                        payload: m.payload.clone(),
                        pending: info.pending,
                    }));
                }
                Err(e) => {
                    tracing::warn!(stream = %w.source.name, error = %e, "a partition message without its stream sequence; skipped");
                }
            },
            Ok(Some(Err(e))) => {
                // async-nats makes the consumer again itself after a gap or missed heartbeats.
                tracing::warn!(stream = %w.source.name, error = %e, "following a partition stream interrupted; it resumes");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(None) => w.messages = None,
            Err(_silence) => {
                match tokio::time::timeout(follow::REQUEST_PATIENCE, w.source.bounds())
                    .await
                    .unwrap_or(Err(BackendError::Timeout))
                {
                    Ok((first, last)) => match w.watch.handle_silence(first, last) {
                        AfterSilence::Wait => {}
                        AfterSilence::Remake { from } => {
                            tracing::warn!(stream = %w.source.name, from, last, "a partition consumer delivered nothing while its stream held more (its server may have died): it is made again");
                            w.messages = None;
                        }
                        AfterSilence::End => {
                            tracing::warn!(stream = %w.source.name, next = w.watch.next(), first, last, "reading a partition stream back: the rest is no longer held");
                            return None;
                        }
                        AfterSilence::Fail => {
                            return Some(Err(BackendError::Engine(format!(
                            "stream {} holds messages from {} on, but no consumer made for them delivers them",
                            w.source.name,
                            w.watch.next()
                        ))));
                        }
                    },
                    Err(e) => {
                        tracing::debug!(stream = %w.source.name, error = %e, "cannot look at a silent partition consumer's stream");
                        w.watch.handle_unknown();
                    }
                }
            }
        }
    }
}

/// The state of a KV watch under [`next_kv_entry`].
struct KvWatching {
    store: kv::Store,
    filter: String,
    /// `None`: to be made (again), from the watch's next revision.
    watch: Option<kv::Watch>,
    consumer: ConsumerWatch,
    /// Whether silences are checked against the bucket's stream: only for a watch of every
    /// key, whose next revision the stream's last sequence can be compared with.
    checked: bool,
}

/// A KV watch's next entry, each once, in revision order. async-nats makes the watch's
/// consumer again after missed heartbeats or a gap; not when the consumer stays, and keeps
/// sending heartbeats, but delivers nothing more (found by the CI's fault test: after a
/// host was cut off and came back, its node's retained messages stayed those from before
/// the cut for the rest of the run). The rule of [`follow`] applies: a silence while the
/// bucket's stream holds a later revision, at two looks in a row, makes the watch again.
async fn next_kv_entry(w: &mut KvWatching) -> kv::Entry {
    loop {
        let Some(watch) = w.watch.as_mut() else {
            let from = w.consumer.next();
            let made = tokio::time::timeout(
                follow::REQUEST_PATIENCE,
                w.store.watch_from_revision(&w.filter, from),
            )
            .await;
            match made {
                Ok(Ok(watch)) => w.watch = Some(watch),
                Ok(Err(e)) => {
                    tracing::warn!(bucket = %w.store.name, error = %e, "cannot make a KV watch again yet");
                    tokio::time::sleep(follow::SILENCE).await;
                }
                Err(_) => {
                    tracing::warn!(bucket = %w.store.name, "cannot make a KV watch again yet: the request timed out");
                }
            }
            continue;
        };
        let next = if w.checked {
            match tokio::time::timeout(follow::SILENCE, watch.next()).await {
                Ok(next) => next,
                Err(_silence) => {
                    look_at_silent_kv_watch(w).await;
                    continue;
                }
            }
        } else {
            watch.next().await
        };
        match next {
            Some(Ok(entry)) if entry.revision < w.consumer.next() => {}
            Some(Ok(entry)) => {
                w.consumer.handle_message(entry.revision);
                return entry;
            }
            Some(Err(e)) => {
                // A missed heartbeat (the server holding the consumer is gone) is not the
                // end: async-nats makes the consumer again on the next poll.
                tracing::warn!(bucket = %w.store.name, error = %e, "KV watch interrupted; it resumes");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            None => {
                tracing::warn!(bucket = %w.store.name, "a KV watch ended; it is made again");
                w.watch = None;
            }
        }
    }
}

/// After a silence of a KV watch: is the bucket's stream as quiet, or is the watch stuck?
async fn look_at_silent_kv_watch(w: &mut KvWatching) {
    let info = tokio::time::timeout(follow::REQUEST_PATIENCE, w.store.stream.get_info()).await;
    match info {
        Ok(Ok(info)) => {
            let (first, last) = (info.state.first_sequence, info.state.last_sequence);
            match w.consumer.handle_silence(first, last) {
                AfterSilence::Remake { from } => {
                    tracing::warn!(bucket = %w.store.name, from, last, "a KV watch delivered nothing while its bucket held more (its server may have been cut off): it is made again");
                    w.watch = None;
                }
                // A follower's watch never ends or fails; it waits.
                AfterSilence::Wait | AfterSilence::End | AfterSilence::Fail => {}
            }
        }
        Ok(Err(e)) => {
            tracing::debug!(bucket = %w.store.name, error = %e, "cannot look at a silent KV watch's bucket");
            w.consumer.handle_unknown();
        }
        Err(_) => w.consumer.handle_unknown(),
    }
}

/// A core NATS message as a [`Delivery`].
fn delivery(m: async_nats::Message) -> Delivery {
    Delivery {
        subject: m.subject.to_string(),
        payload: m.payload,
        reply: m.reply.map(|r| r.to_string()),
    }
}

/// How long a node has to hand a share group's message to a member before the server
/// offers it again (to any node pulling): a node that died with it loses nothing.
pub const SHARE_ACK_WAIT: Duration = Duration::from_secs(30);

/// A share group's consumer that no node pulls from for this long is removed by the
/// server: the group has no member left anywhere, and a later member starts afresh, as on
/// one node, where a group without members holds nothing.
pub const SHARE_IDLE: Duration = Duration::from_secs(300);

/// Messages a node asks a share group's consumer for in one pull request: small, so that
/// the nodes pulling take turns and one node does not sit on many.
const SHARE_BATCH: usize = 16;

/// How long one pull request waits on the server for messages. A node that stops pulling
/// (its last member left) still gets what the server hands to its last request until that
/// request ends, and refuses it: the bound on that tail. Short enough that idle groups cost
/// a request per node, group and partition every few seconds, no more than heartbeats would.
pub const SHARE_PULL_EXPIRES: Duration = Duration::from_secs(5);

/// A share group's durable consumer in one partition, from [`NatsBackend::share_consumer`].
pub struct ShareConsumer(jetstream::consumer::PullConsumer);

impl ShareConsumer {
    /// One pull request: up to `SHARE_BATCH` (16) messages, as the server hands them to this
    /// node, ending when they all came, when the request expired
    /// ([`SHARE_PULL_EXPIRES`]) or with an error (no server answers for the consumer yet or
    /// any more: its leader is being elected, or it is gone). One request at a time and no
    /// more after the last (unlike async-nats' continuous `messages()`, which asks ahead and
    /// after a lost request or a "no responders" asks again only when its 30 s expiry
    /// passed): a node that stops pulling knows that what its last request brings is all
    /// it will get, and refuses it so that it goes to another node at once, rather than
    /// leaving it to wait out the ack wait on a request nobody reads any more.
    pub async fn pull(&self) -> Result<ShareMessages, BackendError> {
        let batch = self
            .0
            .batch()
            .max_messages(SHARE_BATCH)
            .expires(SHARE_PULL_EXPIRES)
            .messages()
            .await
            .map_err(engine)?;
        let out = batch.map(move |r| match r {
            Ok(m) => {
                let (seq, delivered) = m
                    .info()
                    .map_or((0, 1), |i| (i.stream_sequence, i.delivered));
                Ok(ShareMessage {
                    seq,
                    delivered,
                    subject: m.subject.to_string(),
                    payload: m.payload.clone(),
                    ack: ShareAck(m),
                })
            }
            Err(e) => Err(engine(e)),
        });
        Ok(Box::pin(out))
    }
}

/// The messages of one pull request of a share group's consumer, from
/// [`ShareConsumer::pull`].
pub type ShareMessages =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<ShareMessage, BackendError>> + Send>>;

/// One message of a share group's consumer.
pub struct ShareMessage {
    /// Its stream sequence.
    pub seq: u64,
    /// How many times the server has offered it (1 the first time).
    pub delivered: i64,
    /// Its stream subject (`<prefix>.p<i>.<topic tokens>`).
    pub subject: String,
    /// The envelope.
    pub payload: Bytes,
    /// Settles it.
    pub ack: ShareAck,
}

/// Settles a share group's message on the server.
pub struct ShareAck(jetstream::Message);

impl ShareAck {
    /// Handed to a member: the group is done with it.
    pub async fn ack(&self) -> Result<(), BackendError> {
        self.0.ack().await.map_err(engine)
    }

    /// Not taken here (no member left on this node): offered again after `delay`, to any
    /// node pulling.
    pub async fn nak(&self, delay: Duration) -> Result<(), BackendError> {
        self.0
            .ack_with(jetstream::AckKind::Nak(Some(delay)))
            .await
            .map_err(engine)
    }
}

fn revision(r: u64) -> Result<Revision, BackendError> {
    Revision::new(r).ok_or_else(|| BackendError::Engine("revision 0 from the engine".into()))
}

/// Whether an engine error is a compare-and-set refusal (wrong last sequence).
fn is_cas_refusal(e: &impl std::fmt::Display) -> bool {
    let t = e.to_string().to_ascii_lowercase();
    t.contains("wrong last sequence") || t.contains("wrong last revision") || t.contains("10071")
}

impl Backend for NatsBackend {
    type Subscription =
        futures_util::stream::Map<async_nats::Subscriber, fn(async_nats::Message) -> Delivery>;
    type Watch = std::pin::Pin<Box<dyn futures_util::Stream<Item = WatchEvent> + Send>>;
    type Follow = std::pin::Pin<Box<dyn futures_util::Stream<Item = StreamMessage> + Send>>;
    type Read = Watched;

    /// An ordered push consumer (ephemeral, in memory, R1, no acks, flow control and
    /// heartbeats; async-nats recreates it from the last sequence seen after a gap or a
    /// silence), delivering from the sequence after the stream's last one when it is made:
    /// that sequence is returned, so the caller knows exactly where it starts. Interruptions
    /// are logged and resumed from; a consumer that stays silent while its stream holds
    /// more (it lived on a server that died) is made again sooner than async-nats's
    /// heartbeats would ([`crate::follow`]).
    async fn follow(&self, partition: Partition) -> Result<(u64, Self::Follow), BackendError> {
        let source = self.consumer_source(partition).await?;
        let next = source.bounds().await?.1 + 1;
        let messages = source.ordered(next).await?;
        let follow = watched(source, messages, ConsumerWatch::follower(next));
        // A live follower has no end and no failure: `watched` makes it again as often as
        // it takes.
        Ok((
            next,
            Box::pin(follow.filter_map(|r| std::future::ready(r.ok()))),
        ))
    }

    /// A temporary ordered consumer from `from`, dropped once `to` is read. When it goes
    /// silent, the stream says whether the rest is still held: then the consumer is made
    /// again (a few times, then the read fails and is tried again later), else the read
    /// ends ([`crate::follow`]).
    async fn read(
        &self,
        partition: Partition,
        from: u64,
        to: u64,
    ) -> Result<Self::Read, BackendError> {
        let source = self.consumer_source(partition).await?.without_description();
        let messages = source.ordered(from.max(1)).await?;
        Ok(watched(source, messages, ConsumerWatch::read(from, to)))
    }

    /// Read from the bucket stream's leader, not through the direct-get API that any
    /// replica answers: a compare-and-set needs the latest revision, and a follower that
    /// has not applied the last write yet would send a claim round and round.
    async fn get(&self, bucket: Bucket, key: &str) -> Result<Option<Entry>, BackendError> {
        let store = self.store(bucket)?;
        let stream = self.bucket_streams.get(&bucket).ok_or_else(|| {
            BackendError::Engine(format!("bucket {} not set up", bucket.suffix()))
        })?;
        let subject = format!("{}{key}", store.prefix);
        match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => {
                let deleted = m
                    .headers
                    .get("KV-Operation")
                    .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE")
                    || m.headers.get("Nats-Marker-Reason").is_some();
                if deleted {
                    return Ok(None);
                }
                Ok(Some(Entry {
                    value: m.payload,
                    revision: revision(m.sequence)?,
                }))
            }
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(engine(e)),
        }
    }

    async fn create(
        &self,
        bucket: Bucket,
        key: &str,
        value: Bytes,
    ) -> Result<Revision, BackendError> {
        self.connected().await?;
        match self.store(bucket)?.create(key, value).await {
            Ok(r) => revision(r),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists || is_cas_refusal(&e) => {
                Err(BackendError::Conflict)
            }
            Err(e) => Err(engine(e)),
        }
    }

    async fn update(
        &self,
        bucket: Bucket,
        key: &str,
        value: Bytes,
        expected: Revision,
    ) -> Result<Revision, BackendError> {
        self.connected().await?;
        match self.store(bucket)?.update(key, value, expected.get()).await {
            Ok(r) => revision(r),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision || is_cas_refusal(&e) => {
                Err(BackendError::Conflict)
            }
            Err(e) => Err(engine(e)),
        }
    }

    async fn put(&self, bucket: Bucket, key: &str, value: Bytes) -> Result<Revision, BackendError> {
        self.connected().await?;
        revision(self.store(bucket)?.put(key, value).await.map_err(engine)?)
    }

    async fn delete(
        &self,
        bucket: Bucket,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<(), BackendError> {
        self.connected().await?;
        match self
            .store(bucket)?
            .delete_expect_revision(key, expected.map(Revision::get))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision || is_cas_refusal(&e) => {
                Err(BackendError::Conflict)
            }
            Err(e) => Err(engine(e)),
        }
    }

    /// From the stream's subject list (stream info), not the KV key lister, which makes a
    /// consumer for every listing. Deleted keys may be listed; [`Backend::get`] says so.
    async fn keys(&self, bucket: Bucket) -> Result<Vec<String>, BackendError> {
        let store = self.store(bucket)?;
        let stream = self.bucket_streams.get(&bucket).ok_or_else(|| {
            BackendError::Engine(format!("bucket {} not set up", bucket.suffix()))
        })?;
        let mut subjects = stream
            .info_with_subjects(format!("{}>", store.prefix))
            .await
            .map_err(engine)?;
        let mut out = Vec::new();
        while let Some(s) = subjects.next().await {
            let (subject, _) = s.map_err(engine)?;
            if let Some(key) = subject.strip_prefix(store.prefix.as_str()) {
                out.push(key.to_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    /// An ordered consumer on the bucket's stream (one per watch, ephemeral, in memory),
    /// starting with the last entry of every matching key. Resumes by itself after a lost
    /// server (logged), and a watch of every key (`>`) also after its consumer went
    /// silently stuck ([`next_kv_entry`]).
    async fn watch(&self, bucket: Bucket, filter: &str) -> Result<Self::Watch, BackendError> {
        let store = self.store(bucket)?.clone();
        let watch = store.watch_with_history(filter).await.map_err(engine)?;
        let state = KvWatching {
            store,
            filter: filter.to_owned(),
            watch: Some(watch),
            consumer: ConsumerWatch::follower(1),
            checked: filter == ">",
        };
        let entries = futures_util::stream::unfold(state, |mut w| async move {
            let entry = next_kv_entry(&mut w).await;
            Some((entry, w))
        });
        let events = entries.map(|e| WatchEvent {
            key: e.key,
            entry: match (e.operation, Revision::new(e.revision)) {
                (kv::Operation::Put, Some(revision)) => Some(Entry {
                    value: e.value,
                    revision,
                }),
                _ => None,
            },
        });
        Ok(Box::pin(events))
    }

    async fn publish(&self, subject: Subject, payload: Bytes) -> Result<(), BackendError> {
        self.client
            .publish(subject.into_string(), payload)
            .await
            .map_err(engine)
    }

    async fn append(
        &self,
        partition: Partition,
        subject: Subject,
        payload: Bytes,
    ) -> Result<u64, BackendError> {
        self.append_with(partition, subject, payload, None).await
    }

    async fn append_once(
        &self,
        partition: Partition,
        subject: Subject,
        payload: Bytes,
        id: &MessageId,
    ) -> Result<u64, BackendError> {
        self.append_with(partition, subject, payload, Some(id))
            .await
    }

    async fn subscribe(
        &self,
        subject: Subject,
        queue: Option<String>,
    ) -> Result<Self::Subscription, BackendError> {
        let sub = match queue {
            Some(q) => self.client.queue_subscribe(subject.into_string(), q).await,
            None => self.client.subscribe(subject.into_string()).await,
        }
        .map_err(engine)?;
        Ok(sub.map(delivery as fn(async_nats::Message) -> Delivery))
    }

    async fn request(
        &self,
        subject: Subject,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, BackendError> {
        let req = self.client.request(subject.into_string(), payload);
        match tokio::time::timeout(timeout, req).await {
            Err(_) => Err(BackendError::Timeout),
            Ok(Ok(m)) => Ok(m.payload),
            Ok(Err(e)) => match e.kind() {
                async_nats::RequestErrorKind::NoResponders => Err(BackendError::NoResponder),
                async_nats::RequestErrorKind::TimedOut => Err(BackendError::Timeout),
                _ => Err(engine(e)),
            },
        }
    }

    /// Makes the main connection again (the share groups' one carries only QoS 0 messages
    /// and is left as it is). async-nats picks the server among those it knows, at random
    /// among the ones that have not failed (its default), so the same server may come up
    /// again: the lease asks again after another `ttl` of failures. A connection that is
    /// down already is being made again anyway.
    async fn move_server(&self) {
        use async_nats::connection::State;
        if self.client.connection_state() != State::Connected {
            return;
        }
        let from = self.client.server_info().server_name;
        tracing::warn!(server = %from, node = %self.node, "leaving the NATS server this node is connected to: it has not taken this node's lease writes since the node stepped down");
        if let Err(e) = self.client.force_reconnect().await {
            tracing::warn!(error = %e, "cannot connect to another NATS server");
        }
    }
}

/// A connection's name: `what`, followed by the node's name when it has one.
fn connection_name(what: &str, node: &str) -> String {
    if node.is_empty() {
        what.to_owned()
    } else {
        format!("{what} {node}")
    }
}

/// Logs what happens to a connection to NATS (`which`: the main one or the share groups'),
/// for an operator to see when a node lost its server and when it has one again.
async fn log_connection_event(which: &'static str, event: async_nats::Event) {
    use async_nats::Event;
    match event {
        // (async-nats logs every event at info level too: "event: connected".)
        Event::Connected => tracing::debug!(connection = which, "connected to a NATS server"),
        Event::Disconnected => {
            tracing::warn!(
                connection = which,
                "connection to the NATS server lost: connecting to a server of the cluster again"
            );
        }
        Event::LameDuckMode => {
            tracing::warn!(connection = which, "the NATS server is shutting down (lame duck mode): this node connects to another one");
        }
        Event::SlowConsumer(sid) => {
            tracing::warn!(connection = which, sid, "a NATS subscription of this node falls behind (slow consumer): the server drops messages for it");
        }
        other => tracing::debug!(connection = which, event = %other, "NATS connection event"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(host_of("nats://127.0.0.1:4222"), "127.0.0.1");
        assert_eq!(host_of("nats://user:pw@h1:4222"), "h1");
        assert_eq!(host_of("h2:4222"), "h2");
        assert_eq!(host_of("tls://[::1]:4222"), "::1");
        assert_eq!(host_of("nats://h3"), "h3");
    }
}
