//! The cluster layer against real NATS servers on loopback: three servers with routes and
//! `sync_interval: always` for claims, fencing, leases and the set-up; one lazy server for
//! the start-up refusal. Skipped, saying so, when `nats-server` is not installed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use makelaar_cluster::backend::{Backend, Bucket};
use makelaar_cluster::checks::StartupError;
use makelaar_cluster::cluster::{Cluster, ClusterConfig, ClusterError, LeaseEvent};
use makelaar_cluster::envelope::Envelope;
use makelaar_cluster::lease::LeaseConfig;
use makelaar_cluster::nats::{NatsBackend, NatsConfig, NatsStartError};
use makelaar_cluster::partition::PartitionCount;
use makelaar_cluster::record::{RegistryEntry, SessionRecord};
use makelaar_cluster::subject::decode_under;
use makelaar_cluster::takeover::{ClaimConfig, Fence};
use makelaar_cluster::{ClientKey, NodeId, Revision};
use makelaar_proto::packet::QoS;
use support::{Fsync, Servers};

const PARTITIONS: u16 = 4;

fn nats_config(servers: &Servers, prefix: &str) -> NatsConfig {
    NatsConfig {
        servers: servers.client_urls.clone(),
        monitor: servers.monitor_urls.clone(),
        tls: Default::default(),
        auth: Default::default(),
        allow_lazy_fsync: false,
        replicas: None,
        prefix: prefix.to_owned(),
        partitions: PartitionCount::new(PARTITIONS).unwrap(),
        lease_ttl: Duration::from_secs(3),
        max_message_age: Duration::from_secs(3600),
        timeout: Duration::from_secs(10),
        node: String::new(),
    }
}

fn lease_config() -> LeaseConfig {
    LeaseConfig {
        refresh: Duration::from_millis(300),
        ttl: Duration::from_secs(3),
        margin: Duration::from_secs(1),
    }
    .validate()
    .unwrap()
}

/// A node: the cluster layer over its own connection (to one of the servers), and what it
/// holds: the claimed revision of each client id connected here.
struct Node {
    cluster: Arc<Cluster<NatsBackend>>,
    held: Arc<Mutex<HashMap<ClientKey, Revision>>>,
    /// Hand-over requests received.
    asked: Arc<AtomicUsize>,
    /// The lease task (abort it to make the node "die").
    lease_task: tokio::task::JoinHandle<()>,
    events: tokio::sync::mpsc::Receiver<LeaseEvent>,
}

async fn node(
    servers: &Servers,
    prefix: &str,
    name: &str,
    incarnation: u64,
    server: usize,
) -> Node {
    node_answering(servers, prefix, name, incarnation, server, true).await
}

/// A node; `answers`: whether it answers hand-over requests (a hung node does not).
async fn node_answering(
    servers: &Servers,
    prefix: &str,
    name: &str,
    incarnation: u64,
    server: usize,
    answers: bool,
) -> Node {
    let mut config = nats_config(servers, prefix);
    config.node = name.to_owned();
    // Each node talks to its own server first.
    config.servers.rotate_left(server);
    let (backend, warnings) = NatsBackend::connect(&config)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}\n{}", servers.logs()));
    assert!(warnings.is_empty(), "{warnings:?}");
    let cluster = Arc::new(Cluster::new(
        backend,
        ClusterConfig {
            node: NodeId::new(name).unwrap(),
            incarnation,
            prefix: prefix.to_owned(),
            partitions: PartitionCount::new(PARTITIONS).unwrap(),
            lease: lease_config(),
            claim: ClaimConfig {
                handover_timeout: Duration::from_secs(2),
                ..ClaimConfig::default()
            },
        },
    ));
    let held: Arc<Mutex<HashMap<ClientKey, Revision>>> = Arc::default();
    // The owner's side of a hand-over: "close" the connection, mark the entry disconnected,
    // answer.
    let mut requests = cluster.release_requests().await.unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let (c, h, a) = (cluster.clone(), held.clone(), asked.clone());
    tokio::spawn(async move {
        while let Some(req) = requests.recv().await {
            a.fetch_add(1, Ordering::SeqCst);
            if !answers {
                continue;
            }
            h.lock().unwrap().remove(&req.client);
            // Refused harmlessly when the entry moved on since the request was made.
            let _ = c.mark_disconnected(&req.client, req.revision).await;
            let _ = c.answer_release(&req).await;
        }
    });
    // Let the subscription reach the servers before anyone asks.
    cluster.backend().client().flush().await.unwrap();
    let (tx, events) = tokio::sync::mpsc::channel(8);
    let c = cluster.clone();
    let lease_task = tokio::spawn(async move { c.run_leases(tx).await });
    // Alive for the others once the first lease is in the bucket (asking the layer about
    // itself would not read it).
    let mut written = false;
    for _ in 0..100 {
        if cluster
            .backend()
            .get(Bucket::Leases, name)
            .await
            .unwrap()
            .is_some()
        {
            written = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(written, "{name} did not write its lease within 5 s");
    Node {
        cluster,
        held,
        asked,
        lease_task,
        events,
    }
}

impl Node {
    async fn claim(&self, client: &ClientKey) -> Result<Revision, ClusterError> {
        let c = self.cluster.claim_client(client).await?;
        self.held.lock().unwrap().insert(client.clone(), c.revision);
        // A hand-over request may have come between the claim and the line above: confirm.
        if !self.cluster.still_owner(client, c.revision).await? {
            self.held.lock().unwrap().remove(client);
        }
        Ok(c.revision)
    }
}

async fn registry(n: &Node, client: &ClientKey) -> Option<(RegistryEntry, Revision)> {
    n.cluster
        .backend()
        .get(Bucket::Registry, client.as_str())
        .await
        .unwrap()
        .map(|e| (RegistryEntry::decode(&e.value).unwrap(), e.revision))
}

fn record(node: &str, claim: Revision) -> SessionRecord {
    SessionRecord {
        node: NodeId::new(node).unwrap(),
        claim: claim.get(),
        protocol: 5,
        expiry_interval: 3600,
        disconnected_at_ms: None,
        subscriptions: Vec::new(),
        will: None,
        cursors: Vec::new(),
        outbound: Vec::new(),
        inbound_qos2: Vec::new(),
        will_takers: Vec::new(),
        cursors_of: None,
        writer_late: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nats_servers() {
    let Some(bin) = support::nats_server_bin() else {
        eprintln!("{}", support::skip_message());
        return;
    };
    let mut servers = Servers::start(&bin, 3, Fsync::Always, true);
    servers.wait_ready(Duration::from_secs(60)).await;

    let m1 = node(&servers, "t", "m1", 1, 0).await;
    let m2 = node(&servers, "t", "m2", 2, 1).await;

    set_up_once_and_counted(&servers, &m1).await;
    claim_races(&m1, &m2).await;
    fencing(&m1, &m2).await;
    silent_owner(&servers, &m2).await;
    messages(&m1, &m2).await;
    status_and_stats(&servers, &m1, &m2).await;
    lease_expiry(&servers).await;
}

/// `makelaar cluster status`'s data read from outside, and what the nodes counted.
async fn status_and_stats(servers: &Servers, m1: &Node, m2: &Node) {
    use makelaar_cluster::status::{gather, StatusConfig, StatusError, StreamKind};
    let mut config = StatusConfig::new(servers.client_urls.clone());
    config.monitor = servers.monitor_urls.clone();
    config.prefix = "t".to_owned();
    let s = gather(&config).await.unwrap();
    assert_eq!(s.servers.len(), 3);
    assert!(
        s.servers.iter().all(|v| v.sync_always == Some(true)),
        "{:?}",
        s.servers
    );
    let names: Vec<&str> = s.nodes.iter().map(|n| n.name.as_str()).collect();
    assert!(names.contains(&"m1") && names.contains(&"m2"), "{names:?}");
    assert!(s.nodes.iter().all(|n| n.last_write_age_ms < s.lease_ttl_ms));
    let partitions: Vec<_> = s
        .streams
        .iter()
        .filter(|x| x.kind == StreamKind::Partition)
        .collect();
    assert_eq!(partitions.len(), usize::from(PARTITIONS));
    assert_eq!(s.streams.len(), Bucket::ALL.len() + usize::from(PARTITIONS));
    assert!(s
        .streams
        .iter()
        .all(|x| x.leader.is_some() && x.replicas.len() == 2));
    // messages() appended four messages to one partition (one of them twice, stored once),
    // and a barrier to every partition.
    assert_eq!(
        partitions.iter().map(|p| p.messages).sum::<u64>(),
        4 + u64::from(PARTITIONS)
    );
    assert!(s.round_trip.core_ms > 0.0 && s.round_trip.jetstream_ms > 0.0);
    // Another prefix: no cluster there, one sentence.
    config.prefix = "nothing".to_owned();
    let e = gather(&config).await.unwrap_err();
    assert!(matches!(e, StatusError::NoCluster { .. }), "{e}");

    // What the nodes counted themselves.
    let st = m1.cluster.stats();
    assert!(st.serving());
    assert_eq!(st.appends.load(Ordering::SeqCst), 4);
    assert_eq!(st.append_failures.load(Ordering::SeqCst), 0);
    assert!(st.claims.load(Ordering::SeqCst) >= 100);
    assert!(st.nodes_alive.load(Ordering::SeqCst) >= 2);
    assert!(st.round_trip().is_some());
    let handed = m1.cluster.stats().handovers_given.load(Ordering::SeqCst)
        + m2.cluster.stats().handovers_given.load(Ordering::SeqCst);
    assert_eq!(
        handed,
        (m1.asked.load(Ordering::SeqCst) + m2.asked.load(Ordering::SeqCst)) as u64
    );
}

/// Buckets and streams exist once per cluster, R3, never per client.
async fn set_up_once_and_counted(servers: &Servers, m1: &Node) {
    let js = m1.cluster.backend().jetstream();
    let expected = Bucket::ALL.len() + usize::from(PARTITIONS);
    assert_eq!(js.query_account().await.unwrap().streams, expected);
    let mut s = js.get_stream("t_p0").await.unwrap();
    assert_eq!(s.info().await.unwrap().config.num_replicas, 3);
    let mut s = js.get_stream("KV_t_registry").await.unwrap();
    assert_eq!(s.info().await.unwrap().config.num_replicas, 3);
    // m1 created them, m2 found them; a third start verifies them and creates nothing.
    let (_third, warnings) = NatsBackend::connect(&nats_config(servers, "t"))
        .await
        .unwrap();
    assert!(warnings.is_empty());
    assert_eq!(js.query_account().await.unwrap().streams, expected);
    for i in 0..100 {
        m1.claim(&ClientKey::new(&format!("count-{i}")))
            .await
            .unwrap();
    }
    let account = js.query_account().await.unwrap();
    assert_eq!(account.streams, expected, "streams grew with clients");
    assert_eq!(account.consumers, 0, "consumers grew with clients");
}

/// Two nodes claim the same ids at the same moment: both claims end, the later write owns
/// the id, and the earlier owner no longer holds it (it was asked to hand over, or found out
/// when it confirmed its claim with `still_owner`).
async fn claim_races(m1: &Node, m2: &Node) {
    let asked_before = m1.asked.load(Ordering::SeqCst) + m2.asked.load(Ordering::SeqCst);
    for i in 0..20 {
        let client = ClientKey::new(&format!("race/{i} ü"));
        let (a, b) = tokio::join!(m1.claim(&client), m2.claim(&client));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_ne!(a, b);
        let (entry, rev) = registry(m1, &client).await.unwrap();
        assert_eq!(rev, a.max(b), "the later claim holds the id");
        let winner = if a > b { "m1" } else { "m2" };
        assert_eq!(entry.node.as_str(), winner);
        assert!(entry.connected);
        // The earlier owner let go.
        let loser = if a > b { m2 } else { m1 };
        assert!(!loser.held.lock().unwrap().contains_key(&client));
    }
    // Both alive and connected: every race's second claim asked the first to hand over.
    let asked = m1.asked.load(Ordering::SeqCst) + m2.asked.load(Ordering::SeqCst) - asked_before;
    assert!(asked >= 20, "only {asked} hand-over requests in 20 races");
}

/// A node that lost a session cannot overwrite it.
async fn fencing(m1: &Node, m2: &Node) {
    let client = ClientKey::new("fenced");
    let r1 = m1.claim(&client).await.unwrap();
    let (none, fence) = m1.cluster.load_session(&client).await.unwrap();
    assert!(none.is_none());
    let m1_fence = m1
        .cluster
        .store_session(&client, &record("m1", r1), fence)
        .await
        .unwrap();
    // m2 takes the id over, reads the record and writes it at once (the fencing write).
    let r2 = m2.claim(&client).await.unwrap();
    let (seen, fence) = m2.cluster.load_session(&client).await.unwrap();
    assert_eq!(seen.unwrap().node.as_str(), "m1");
    let m2_fence = m2
        .cluster
        .store_session(&client, &record("m2", r2), fence)
        .await
        .unwrap();
    // m1, not yet aware, writes with what it holds: refused.
    let stale = m1
        .cluster
        .store_session(&client, &record("m1", r1), m1_fence)
        .await;
    assert_eq!(stale, Err(ClusterError::Fenced(client.clone())));
    assert_eq!(
        m1.cluster.delete_session(&client, m1_fence).await,
        Err(ClusterError::Fenced(client.clone()))
    );
    assert!(matches!(m2_fence, Fence::At(_)));
    let (now, _) = m2.cluster.load_session(&client).await.unwrap();
    assert_eq!(now.unwrap(), record("m2", r2));
    // And m1 cannot mark the registry entry disconnected either.
    assert_eq!(
        m1.cluster.mark_disconnected(&client, r1).await,
        Err(ClusterError::Fenced(client.clone()))
    );
}

/// An owner that is alive (its lease is fresh) but does not answer the hand-over request:
/// the claim waits for the hand-over deadline, then takes the id; the owner is fenced.
async fn silent_owner(servers: &Servers, m2: &Node) {
    let hung = node_answering(servers, "t", "hung", 3, 2, false).await;
    let client = ClientKey::new("held-by-a-hung-node");
    let r = hung.claim(&client).await.unwrap();
    // Its lease is there: it counts as alive.
    assert!(m2
        .cluster
        .lease_alive(&NodeId::new("hung").unwrap(), 3)
        .await
        .unwrap());
    let started = std::time::Instant::now();
    let taken = m2.claim(&client).await.unwrap();
    let waited = started.elapsed();
    // handover_timeout is 2 s in these tests.
    assert!(waited >= Duration::from_secs(2), "did not wait: {waited:?}");
    assert!(
        waited < Duration::from_secs(10),
        "waited too long: {waited:?}"
    );
    assert!(taken > r);
    assert_eq!(registry(m2, &client).await.unwrap().0.node.as_str(), "m2");
    assert!(!hung.cluster.still_owner(&client, r).await.unwrap());
    assert_eq!(
        hung.cluster.mark_disconnected(&client, r).await,
        Err(ClusterError::Fenced(client.clone()))
    );
    hung.lease_task.abort();
}

fn message(payload: &'static str) -> Envelope {
    Envelope {
        qos: QoS::AtLeastOnce,
        retain: false,
        origin_node: NodeId::new("m1").unwrap(),
        origin_client: "publisher".into(),
        received_at_ms: 1_700_000_000_000,
        message_expiry: Some(60),
        payload_utf8: true,
        content_type: Some("text/plain".into()),
        response_topic: None,
        correlation_data: None,
        user_properties: vec![("k".into(), "v".into())],
        payload: Bytes::from_static(payload.as_bytes()),
        claim: None,
    }
}

/// Messages between nodes on different servers: QoS 0 on core subjects (a `#` filter is one
/// subscription and matches its parent), QoS 1/2 appended to the topic's partition stream,
/// retained messages seen and cleared from any node.
async fn messages(m1: &Node, m2: &Node) {
    let mut sub = m2
        .cluster
        .backend()
        .subscribe(m2.cluster.live_filter("sensor/#"), None)
        .await
        .unwrap();
    m2.cluster.backend().client().flush().await.unwrap();
    // The publishing node does not get its own messages back (no echo).
    let mut own = m1
        .cluster
        .backend()
        .subscribe(m1.cluster.live_filter("sensor/#"), None)
        .await
        .unwrap();
    m1.cluster.backend().client().flush().await.unwrap();
    // m2's interest reaches m1's server over the route a moment after the subscription:
    // probe until it has (core NATS drops what finds no interest).
    let mut arrived = false;
    for _ in 0..50 {
        m1.cluster
            .publish("sensor/probe", &message("p"))
            .await
            .unwrap();
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), sub.next()).await {
            arrived = true;
            break;
        }
    }
    assert!(arrived, "m2's subscription never reached m1's server");
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {}
    for t in ["sensor", "sensor/1/temp", "other", "$SYS/sensor"] {
        m1.cluster.publish(t, &message("x")).await.unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..2 {
        let d = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(Envelope::decode(&d.payload).unwrap(), message("x"));
        got.push(decode_under("t.live", &d.subject).unwrap());
    }
    assert_eq!(got, ["sensor", "sensor/1/temp"]);
    assert!(tokio::time::timeout(Duration::from_millis(300), sub.next())
        .await
        .is_err());
    assert!(tokio::time::timeout(Duration::from_millis(100), own.next())
        .await
        .is_err());

    let (p, first) = m1
        .cluster
        .append("sensor/1/temp", &message("20"))
        .await
        .unwrap();
    let (q, second) = m1
        .cluster
        .append("sensor/1/temp", &message("21"))
        .await
        .unwrap();
    assert_eq!(p, q);
    assert_eq!(second, first + 1, "one topic, one ordered log");
    let js = m1.cluster.backend().jetstream();
    let mut s = js.get_stream(format!("t_p{}", p.index())).await.unwrap();
    assert_eq!(s.info().await.unwrap().state.messages, 2);
    // The barriers a claim from another node waits for: one in every partition, this
    // one's right after its last message.
    let barriers = m2
        .cluster
        .barriers_since(std::time::Instant::now(), None)
        .await
        .unwrap();
    assert_eq!(
        barriers.len(),
        usize::from(m2.cluster.config().partitions.get())
    );
    assert!(barriers.contains(&(p.index(), second + 1)));
    // A follower starts right after the stream's last entry, and says where; a stretch
    // of the stream reads back in order and ends (the replay of a resumed session).
    let (next, _follow) = m2.cluster.follow_partition(p).await.unwrap();
    assert_eq!(next, second + 2);
    let back: Vec<(u64, Vec<u8>)> = m2
        .cluster
        .read_partition(p, first, second)
        .await
        .unwrap()
        .map(|m| m.map(|m| (m.seq, m.envelope.payload.to_vec())).unwrap())
        .collect()
        .await;
    assert_eq!(back, [(first, b"20".to_vec()), (second, b"21".to_vec())]);

    // An append tried again under its id (a will's, its first answer lost) is stored once,
    // from whichever connection: the stream remembers ids for its duplicate window.
    let info = s.info().await.unwrap();
    assert_eq!(
        info.config.duplicate_window,
        makelaar_cluster::nats::DUPLICATE_WINDOW
    );
    let id = m1.cluster.next_message_id();
    let (r, once) = m1
        .cluster
        .append_once("sensor/1/temp", &message("will"), &id)
        .await
        .unwrap();
    assert_eq!((r, once), (p, second + 2), "after the barrier");
    let again = m2
        .cluster
        .append_once("sensor/1/temp", &message("will"), &id)
        .await
        .unwrap();
    assert_eq!(again, (p, once), "the one stored first");
    assert_eq!(
        s.info().await.unwrap().state.messages,
        4,
        "two, a barrier and one"
    );
    let other = m1
        .cluster
        .append_once(
            "sensor/1/temp",
            &message("will"),
            &m1.cluster.next_message_id(),
        )
        .await
        .unwrap();
    assert_eq!(other, (p, once + 1), "another id, another message");

    let mut watch = m2.cluster.watch_retained("home/+").await.unwrap();
    m1.cluster
        .store_retained("home/door", Some(&message("open")))
        .await
        .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.topic, "home/door");
    assert_eq!(seen.message, Some(message("open")));
    assert_eq!(
        m2.cluster.load_retained("home/door").await.unwrap(),
        Some(message("open"))
    );
    assert_eq!(m2.cluster.retained_topics().await.unwrap(), ["home/door"]);
    m2.cluster.store_retained("home/door", None).await.unwrap();
    let cleared = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (cleared.topic.as_str(), cleared.message),
        ("home/door", None)
    );
    assert_eq!(m1.cluster.load_retained("home/door").await.unwrap(), None);
    assert!(m1.cluster.retained_topics().await.unwrap().is_empty());
}

/// A node that stops refreshing its lease is found dead by the others, and exactly one of
/// them wins the right to publish its wills.
async fn lease_expiry(servers: &Servers) {
    let mut a = node(servers, "l", "a", 10, 0).await;
    let mut b = node(servers, "l", "b", 20, 1).await;
    let doomed = node(servers, "l", "doomed", 30, 2).await;
    let doomed_name = NodeId::new("doomed").unwrap();
    // Wait until a and b have seen the doomed node's lease written at least twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // All three alive: each serves from its first lease on; nobody is reaped, nobody steps
    // down.
    assert!(a.cluster.lease_alive(&doomed_name, 30).await.unwrap());
    for n in [&mut a, &mut b] {
        assert_eq!(n.events.try_recv(), Ok(LeaseEvent::Serving));
        assert!(n.events.try_recv().is_err());
    }
    // The doomed node stops (as if killed): its lease is no longer written.
    doomed.lease_task.abort();
    let stopped = std::time::Instant::now();
    let (reaper, event) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::select! {
            e = a.events.recv() => ("a", e),
            e = b.events.recv() => ("b", e),
        }
    })
    .await
    .expect("no node found the dead one within 20 s");
    let Some(LeaseEvent::Reap(dead)) = event else {
        panic!("unexpected {event:?}")
    };
    assert_eq!(dead.node, doomed_name);
    assert_eq!(dead.incarnation, 30);
    // Not before its lease (TTL 3 s) could have run out: the last write came at most one
    // refresh interval (0.3 s) before the stop. And its lease is gone from the bucket.
    let took = stopped.elapsed();
    eprintln!("the dead node was reaped by {reaper} {took:?} after it stopped");
    assert!(
        took >= Duration::from_millis(2700),
        "found dead too early: {took:?}"
    );
    assert!(!a.cluster.lease_alive(&doomed_name, 30).await.unwrap());
    // The other survivor does not reap it too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let other = if reaper == "a" { &mut b } else { &mut a };
    assert!(
        other.events.try_recv().is_err(),
        "{reaper} reaped, and the other survivor too"
    );
    a.lease_task.abort();
    b.lease_task.abort();
}

/// A lazy server is refused with one sentence naming the fix; the override warns instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_fsync_is_refused() {
    let Some(bin) = support::nats_server_bin() else {
        eprintln!("{}", support::skip_message());
        return;
    };
    let mut servers = Servers::start(&bin, 1, Fsync::Lazy, true);
    servers.wait_ready(Duration::from_secs(30)).await;
    let mut config = nats_config(&servers, "z");
    let err = NatsBackend::connect(&config).await.err().expect("refused");
    let text = err.to_string();
    assert!(
        matches!(err, NatsStartError::Check(StartupError::LazyFsync { .. })),
        "{text}"
    );
    assert_eq!(
        text,
        "NATS server n0 fsyncs lazily (its JetStream sync_interval is not 'always'), so an \
         acknowledged message could be lost: set `jetstream { sync_interval: always }` in its \
         configuration, or start with --allow-lazy-fsync to accept that risk"
    );
    // Nothing was created on a refused server.
    let c = async_nats::connect(servers.client_urls[0].as_str())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(c);
    assert_eq!(js.query_account().await.unwrap().streams, 0);

    config.allow_lazy_fsync = true;
    let (_backend, warnings) = NatsBackend::connect(&config).await.unwrap();
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].to_string().contains("--allow-lazy-fsync"));
    // One server: one replica.
    let mut s = js.get_stream("z_p0").await.unwrap();
    assert_eq!(s.info().await.unwrap().config.num_replicas, 1);
}

/// A server whose monitoring port is not open cannot show its fsync setting: refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fsync_is_refused() {
    let Some(bin) = support::nats_server_bin() else {
        eprintln!("{}", support::skip_message());
        return;
    };
    let mut servers = Servers::start(&bin, 1, Fsync::Always, false);
    servers.wait_ready(Duration::from_secs(30)).await;
    let config = nats_config(&servers, "u");
    let err = NatsBackend::connect(&config).await.err().expect("refused");
    assert!(
        matches!(
            err,
            NatsStartError::Check(StartupError::MonitorUnreachable { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("monitoring port"), "{err}");
}
