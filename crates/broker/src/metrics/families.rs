//! Every metric family, in the order docs/metrics.md lists them.

use std::sync::atomic::Ordering::Relaxed;

use makelaar_core::Flow;
use makelaar_proto::QoS;
use makelaar_store::{COMMIT_OPS_BOUNDS, COMMIT_SECONDS_BOUNDS};

use super::text::{Exposition, Kind};
use super::{Metrics, RouterFigures};
use crate::counters::AuthFailure;

/// The whole exposition of one scrape.
pub(super) fn render(ctx: &Metrics, f: &RouterFigures) -> String {
    let mut e = Exposition::new();
    process(&mut e, ctx);
    connections(&mut e, ctx, f);
    sessions(&mut e, f);
    messages(&mut e, ctx, f);
    queues(&mut e, ctx, f);
    store(&mut e, f);
    bridges(&mut e, ctx, f);
    cluster(&mut e, ctx);
    e.finish()
}

fn process(e: &mut Exposition, ctx: &Metrics) {
    e.family(
        "makelaar_build_info",
        "Always 1; the labels say which Makelaar this is.",
        Kind::Gauge,
    );
    e.sample(
        "makelaar_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1u64,
    );
    e.single(
        "makelaar_uptime_seconds",
        "Seconds since the broker started.",
        Kind::Gauge,
        ctx.started.elapsed().as_secs_f64(),
    );
}

fn connections(e: &mut Exposition, ctx: &Metrics, f: &RouterFigures) {
    let c = &ctx.counters;
    e.by_label(
        (
            "makelaar_listener_connections",
            "Network connections open now, per listener (MQTT ones before and after CONNECT, \
             and HTTP ones).",
            Kind::Gauge,
        ),
        "listener",
        ctx.listeners.iter().map(|l| (l.url.as_str(), l.open())),
    );
    e.by_label(
        (
            "makelaar_listener_connections_accepted_total",
            "Network connections accepted, per listener.",
            Kind::Counter,
        ),
        "listener",
        ctx.listeners.iter().map(|l| (l.url.as_str(), l.accepted())),
    );
    e.by_label(
        (
            "makelaar_connections_refused_total",
            "Connections refused before authentication: over a listener's max_connections, or \
             over max_connection_rate from one address.",
            Kind::Counter,
        ),
        "reason",
        [
            ("max_connections", c.refused_max_connections.load(Relaxed)),
            ("connection_rate", c.refused_connection_rate.load(Relaxed)),
        ],
    );
    e.by_label(
        (
            "makelaar_auth_failures_total",
            "CONNECTs refused by authentication, by why.",
            Kind::Counter,
        ),
        "reason",
        AuthFailure::ALL
            .iter()
            .map(|&k| (k.label(), c.auth_failures_of(k))),
    );
    e.single(
        "makelaar_clients_connected",
        "MQTT clients connected now (past CONNECT).",
        Kind::Gauge,
        f.clients_connected,
    );
    e.single(
        "makelaar_clients_connected_max",
        "Most MQTT clients connected at once since the start.",
        Kind::Gauge,
        f.stats.max_connected,
    );
    let ends = &f.ends;
    let mut by_reason: Vec<(String, u64)> = vec![
        ("client_disconnect".into(), ends.client_disconnect),
        ("connection_lost".into(), ends.lost),
    ];
    by_reason.extend(
        ends.by_server
            .iter()
            .map(|(r, n)| (r.name().replace(' ', "_").to_ascii_lowercase(), *n)),
    );
    e.by_label(
        (
            "makelaar_disconnects_total",
            "MQTT connections ended after CONNECT, by why: the client's DISCONNECT, a lost \
             connection, or the reason code the broker ended it with (e.g. keep_alive_timeout, \
             session_taken_over, message_rate_too_high).",
            Kind::Counter,
        ),
        "reason",
        by_reason,
    );
}

fn sessions(e: &mut Exposition, f: &RouterFigures) {
    e.by_label(
        (
            "makelaar_sessions",
            "Sessions held, with a client connected (online) or kept for one (offline).",
            Kind::Gauge,
        ),
        "state",
        [
            ("online", f.clients_connected),
            ("offline", f.sessions.saturating_sub(f.clients_connected)),
        ],
    );
    e.single(
        "makelaar_sessions_expired_total",
        "Sessions removed because their expiry interval passed.",
        Kind::Counter,
        f.stats.sessions_expired,
    );
    e.by_label(
        (
            "makelaar_subscriptions",
            "Subscriptions held: ordinary ones, and memberships of $share groups.",
            Kind::Gauge,
        ),
        "kind",
        [
            ("regular", f.subscriptions.0),
            ("shared", f.subscriptions.1),
        ],
    );
    e.single(
        "makelaar_retained_messages",
        "Retained messages held.",
        Kind::Gauge,
        f.retained.0,
    );
    e.single(
        "makelaar_retained_bytes",
        "Bytes (topic + payload) of the retained messages.",
        Kind::Gauge,
        f.retained.1,
    );
}

fn qos_label(q: QoS) -> &'static str {
    match q {
        QoS::AtMostOnce => "0",
        QoS::AtLeastOnce => "1",
        QoS::ExactlyOnce => "2",
    }
}

fn messages(e: &mut Exposition, ctx: &Metrics, f: &RouterFigures) {
    let s = &f.stats;
    let flows = |pick: fn(&Flow) -> u64| {
        let dirs = [("in", &s.received), ("out", &s.sent)];
        dirs.into_iter().flat_map(move |(dir, per)| {
            per.iter()
                .map(move |(q, flow)| (dir, qos_label(q), pick(flow)))
        })
    };
    let name = "makelaar_messages_total";
    e.family(
        name,
        "PUBLISH messages received from clients (in) and sent to them (out), by QoS.",
        Kind::Counter,
    );
    for (dir, qos, n) in flows(|f| f.messages) {
        e.sample(name, &[("direction", dir), ("qos", qos)], n);
    }
    let name = "makelaar_message_payload_bytes_total";
    e.family(
        name,
        "Payload bytes of the PUBLISH messages received (in) and sent (out), by QoS.",
        Kind::Counter,
    );
    for (dir, qos, n) in flows(|f| f.payload_bytes) {
        e.sample(name, &[("direction", dir), ("qos", qos)], n);
    }
    let c = &ctx.counters;
    e.by_label(
        (
            "makelaar_network_bytes_total",
            "Bytes read from (in) and written to (out) MQTT connections, every packet.",
            Kind::Counter,
        ),
        "direction",
        [
            ("in", c.bytes_received.load(Relaxed)),
            ("out", c.bytes_sent.load(Relaxed)),
        ],
    );
    e.by_label(
        (
            "makelaar_packets_total",
            "MQTT packets received (in) and sent (out), every kind.",
            Kind::Counter,
        ),
        "direction",
        [
            ("in", c.packets_received.load(Relaxed)),
            ("out", c.packets_sent.load(Relaxed)),
        ],
    );
    e.by_label(
        (
            "makelaar_messages_dropped_total",
            "Messages not delivered, by why: a session queue full (max_queued_messages), \
             expired, larger than the client's maximum packet size, the store full \
             (max_stored_bytes), a client not reading (max_outgoing_bytes, QoS 0), refused by \
             the ACL when published or when delivered, matching no subscription, QoS 0 for \
             an offline session, or back at the broker it started at over bridges.",
            Kind::Counter,
        ),
        "reason",
        [
            ("queue_full", s.dropped_queue_full),
            ("expired", s.dropped_expired),
            ("too_large", s.dropped_too_large),
            ("store_full", s.dropped_store_full),
            ("slow_client", c.dropped_slow_client.load(Relaxed)),
            ("publish_not_authorized", s.publishes_denied),
            ("delivery_not_authorized", s.deliveries_denied),
            ("no_subscribers", s.dropped_no_subscribers),
            ("offline_qos0", s.dropped_offline_qos0),
            ("bridge_loop", s.dropped_bridge_loop),
        ],
    );
}

fn queues(e: &mut Exposition, ctx: &Metrics, f: &RouterFigures) {
    let q = &f.queues;
    e.single(
        "makelaar_queued_messages",
        "Messages waiting in sessions' queues (in memory, and in the store for clients that \
         have not come back).",
        Kind::Gauge,
        q.queued_messages,
    );
    e.single(
        "makelaar_queued_bytes",
        "Bytes (topic + payload) of the queued messages.",
        Kind::Gauge,
        q.queued_bytes,
    );
    e.single(
        "makelaar_queued_messages_longest",
        "The longest queue of one session, in messages.",
        Kind::Gauge,
        q.longest_queue,
    );
    e.single(
        "makelaar_inflight_messages",
        "QoS 1 and 2 messages sent to clients and not yet acknowledged.",
        Kind::Gauge,
        q.inflight_messages,
    );
    let router = &ctx.router;
    e.single(
        "makelaar_router_queue_messages",
        "Messages from connections waiting for the router (its channel holds \
         makelaar_router_queue_capacity; when full, connections stop reading).",
        Kind::Gauge,
        router.max_capacity().saturating_sub(router.capacity()),
    );
    e.single(
        "makelaar_router_queue_capacity",
        "Capacity of the router's channel.",
        Kind::Gauge,
        router.max_capacity(),
    );
}

fn store(e: &mut Exposition, f: &RouterFigures) {
    let (stats, enabled) = match &f.store {
        Some((s, _)) => (*s, true),
        None => (Default::default(), false),
    };
    e.single(
        "makelaar_store_enabled",
        "1 with a durable store, 0 with --in-memory (then every makelaar_store_ figure is 0).",
        Kind::Gauge,
        enabled,
    );
    e.single(
        "makelaar_store_commits_total",
        "Groups committed to the store (one transaction each).",
        Kind::Counter,
        stats.commits,
    );
    e.single(
        "makelaar_store_fsyncs_total",
        "Commits made durable with fsync.",
        Kind::Counter,
        stats.fsyncs,
    );
    e.single(
        "makelaar_store_batches_committed_total",
        "Router batches committed; divided by commits, how well group commit groups.",
        Kind::Counter,
        stats.batches_committed,
    );
    e.by_label(
        (
            "makelaar_store_ops_total",
            "Store operations written, and cancelled by a later one in the same group \
             before reaching the disk.",
            Kind::Counter,
        ),
        "outcome",
        [
            ("written", stats.ops_written),
            ("cancelled", stats.ops_cancelled),
        ],
    );
    e.single(
        "makelaar_store_pending_ops",
        "Operations waiting for the next commit.",
        Kind::Gauge,
        stats.pending_ops,
    );
    e.single(
        "makelaar_store_pending_bytes",
        "Bytes of the operations waiting for the next commit.",
        Kind::Gauge,
        stats.pending_bytes,
    );
    e.single(
        "makelaar_store_message_bytes",
        "Bytes of messages kept in the store (queued for durable sessions, and retained), \
         against max_stored_bytes.",
        Kind::Gauge,
        f.stored_bytes,
    );
    e.single(
        "makelaar_store_held_packets",
        "Acknowledgements waiting for the store to commit what they acknowledge.",
        Kind::Gauge,
        f.held_for_store,
    );
    e.histogram(
        "makelaar_store_commit_duration_seconds",
        "Time of each commit (writes and, when durable, fsync).",
        &COMMIT_SECONDS_BOUNDS,
        &stats.commit_seconds,
        stats.commit_time.as_secs_f64(),
    );
    e.histogram(
        "makelaar_store_commit_ops",
        "Operations written per commit: the group commit's batch size.",
        &COMMIT_OPS_BOUNDS,
        &stats.commit_ops,
        stats.ops_written as f64,
    );
}

/// Per bridge (`[[bridge]]`): the families are always listed, with no samples without
/// bridges.
fn bridges(e: &mut Exposition, ctx: &Metrics, f: &RouterFigures) {
    let bridges = ctx.counters.bridge_list();
    let bridges = bridges.as_slice();
    let queue = |b: &crate::counters::BridgeCounters| {
        f.bridge_queues
            .get(&b.local_client_id)
            .copied()
            .unwrap_or_default()
    };
    e.family(
        "makelaar_bridge_connected",
        "1 while the bridge's link to its remote broker is up, else 0.",
        Kind::Gauge,
    );
    for b in bridges {
        let up = u64::from(b.link_state() == makelaar_core::bridge::LinkState::Connected);
        e.sample("makelaar_bridge_connected", &[("bridge", &b.name)], up);
    }
    e.family(
        "makelaar_bridge_connects_total",
        "Links the remote broker accepted (the first one and every reconnect).",
        Kind::Counter,
    );
    for b in bridges {
        let n = b.connects.load(Relaxed);
        e.sample("makelaar_bridge_connects_total", &[("bridge", &b.name)], n);
    }
    e.family(
        "makelaar_bridge_messages_total",
        "Messages relayed: to the remote (`out`) and from it (`in`).",
        Kind::Counter,
    );
    for b in bridges {
        for (dir, n) in [("out", &b.forwarded_out), ("in", &b.forwarded_in)] {
            let labels = [("bridge", b.name.as_str()), ("direction", dir)];
            e.sample("makelaar_bridge_messages_total", &labels, n.load(Relaxed));
        }
    }
    e.family(
        "makelaar_bridge_inflight_messages",
        "Messages relayed and not yet acknowledged by the other side, both ways.",
        Kind::Gauge,
    );
    for b in bridges {
        let n = b.in_flight.load(Relaxed);
        e.sample(
            "makelaar_bridge_inflight_messages",
            &[("bridge", &b.name)],
            n,
        );
    }
    e.family(
        "makelaar_bridge_dropped_total",
        "Messages the bridge did not relay, by why: the loop guard (`loop`), another reason \
         of the relay (`other`: no topic line carries it, larger than the remote accepts, \
         refused by the remote), or its queue's bounds (`queue_full`: refused when full, \
         `queue_oldest` and `queue_qos0`: dropped to make room, `max_age`: waited too long).",
        Kind::Counter,
    );
    for b in bridges {
        for (why, n) in [("loop", &b.dropped_loop), ("other", &b.dropped_other)] {
            let labels = [("bridge", b.name.as_str()), ("reason", why)];
            e.sample("makelaar_bridge_dropped_total", &labels, n.load(Relaxed));
        }
        for (why, n) in queue(b).drops.by_reason() {
            let labels = [("bridge", b.name.as_str()), ("reason", why)];
            e.sample("makelaar_bridge_dropped_total", &labels, n);
        }
    }
    e.family(
        "makelaar_bridge_queued_messages",
        "Messages waiting in the bridge's queue (its local session) for the remote.",
        Kind::Gauge,
    );
    for b in bridges {
        let n = queue(b).messages as u64;
        e.sample("makelaar_bridge_queued_messages", &[("bridge", &b.name)], n);
    }
    e.family(
        "makelaar_bridge_queued_bytes",
        "Bytes (topic and payload) of the messages waiting in the bridge's queue.",
        Kind::Gauge,
    );
    for b in bridges {
        let n = queue(b).bytes as u64;
        e.sample("makelaar_bridge_queued_bytes", &[("bridge", &b.name)], n);
    }
    e.family(
        "makelaar_bridge_oldest_queued_seconds",
        "How long the oldest message in the bridge's queue has waited (0 when it is empty).",
        Kind::Gauge,
    );
    for b in bridges {
        let n = queue(b).oldest_age.map_or(0, |a| a.as_secs());
        e.sample(
            "makelaar_bridge_oldest_queued_seconds",
            &[("bridge", &b.name)],
            n,
        );
    }
    e.family(
        "makelaar_bridge_downgraded_total",
        "Messages carried at a lower QoS than published, by why: the QoS of their topic line \
         (`topic_line`) or the remote's Maximum QoS (`remote`).",
        Kind::Counter,
    );
    for b in bridges {
        let by = [
            ("topic_line", queue(b).capped),
            ("remote", b.downgraded.load(Relaxed)),
        ];
        for (why, n) in by {
            let labels = [("bridge", b.name.as_str()), ("reason", why)];
            e.sample("makelaar_bridge_downgraded_total", &labels, n);
        }
    }
}

/// A per-partition family: name, help, kind, and how to read its value.
type PartitionFamily = (
    &'static str,
    &'static str,
    Kind,
    fn(&makelaar_cluster::stats::PartitionStats) -> u64,
);

/// This node's part in a cluster (`[cluster]`, docs/cluster.md): the families are always
/// listed, with no samples when the broker runs alone. The figures are the cluster layer's
/// atomics (`makelaar_cluster::stats::NodeStats`), read as they are: no question to the
/// router or to NATS.
fn cluster(e: &mut Exposition, ctx: &Metrics) {
    let c = ctx.counters.cluster.as_ref();
    let stats = c.map(|c| &*c.stats);
    let node = c.map_or("", |c| c.node.as_str());
    let one = |e: &mut Exposition, name: &str, help: &str, kind: Kind, v: Option<u64>| {
        e.family(name, help, kind);
        if let Some(v) = v {
            e.sample(name, &[], v);
        }
    };
    e.family(
        "makelaar_cluster_node_info",
        "Always 1 on a cluster node; the label is this node's name.",
        Kind::Gauge,
    );
    if c.is_some() {
        e.sample("makelaar_cluster_node_info", &[("node", node)], 1u64);
    }
    one(
        e,
        "makelaar_cluster_serving",
        "1 while this node holds its lease and serves, 0 before its first lease write and \
         while stepped down (clients refused).",
        Kind::Gauge,
        stats.map(|s| u64::from(s.serving())),
    );
    one(
        e,
        "makelaar_cluster_step_downs_total",
        "Times this node stepped down: its lease not refreshed within TTL - margin.",
        Kind::Counter,
        stats.map(|s| s.step_downs.load(Relaxed)),
    );
    one(
        e,
        "makelaar_cluster_nodes_alive",
        "Nodes whose lease is in the cluster's leases bucket (this one included), at the \
         last read (every lease refresh).",
        Kind::Gauge,
        stats.map(|s| s.nodes_alive.load(Relaxed)),
    );
    e.family(
        "makelaar_cluster_round_trip_seconds",
        "The engine's round trip: how long this node's last lease write (one replicated KV \
         write) took.",
        Kind::Gauge,
    );
    if let Some(rt) = stats.and_then(|s| s.round_trip()) {
        e.sample("makelaar_cluster_round_trip_seconds", &[], rt.as_secs_f64());
    }
    e.family(
        "makelaar_cluster_lease_writes_total",
        "Lease writes, by result (`ok`, `failed`).",
        Kind::Counter,
    );
    if let Some(s) = stats {
        for (result, n) in [("ok", &s.lease_writes), ("failed", &s.lease_failures)] {
            let labels = [("result", result)];
            e.sample(
                "makelaar_cluster_lease_writes_total",
                &labels,
                n.load(Relaxed),
            );
        }
    }
    e.family(
        "makelaar_cluster_writes_total",
        "Messages this node handed to the cluster, by kind (`append`: QoS 1/2 appended to \
         its partition stream, on disk on a majority; `publish`: QoS 0 on its live subject; \
         `retained`: set or cleared in the retained bucket) and result (`ok`, `failed`: its \
         publisher was disconnected unacknowledged).",
        Kind::Counter,
    );
    if let Some(s) = stats {
        let by = [
            ("append", "ok", &s.appends),
            ("append", "failed", &s.append_failures),
            ("publish", "ok", &s.published),
            ("publish", "failed", &s.publish_failures),
            ("retained", "ok", &s.retained_writes),
        ];
        for (kind, result, n) in by {
            let labels = [("kind", kind), ("result", result)];
            e.sample("makelaar_cluster_writes_total", &labels, n.load(Relaxed));
        }
    }
    e.family(
        "makelaar_cluster_claims_total",
        "Client-id claims made by CONNECTs on this node, by result (`won`, `failed`).",
        Kind::Counter,
    );
    if let Some(s) = stats {
        for (result, n) in [("won", &s.claims), ("failed", &s.claim_failures)] {
            let labels = [("result", result)];
            e.sample("makelaar_cluster_claims_total", &labels, n.load(Relaxed));
        }
    }
    e.family(
        "makelaar_cluster_late_appends_dropped_total",
        "Messages this node's followers and replays dropped as late appends: appended after \
         a barrier of a newer claim of their publisher, who never had them acknowledged.",
        Kind::Counter,
    );
    if let Some(s) = stats {
        e.sample(
            "makelaar_cluster_late_appends_dropped_total",
            &[],
            s.late_dropped.load(Relaxed),
        );
    }
    e.family(
        "makelaar_cluster_handovers_total",
        "Hand-overs of live connections between nodes: `asked` (a claim here asked another \
         node to close its connection), `given` (another node asked this one).",
        Kind::Counter,
    );
    if let Some(s) = stats {
        for (dir, n) in [("asked", &s.handovers_asked), ("given", &s.handovers_given)] {
            let labels = [("direction", dir)];
            e.sample("makelaar_cluster_handovers_total", &labels, n.load(Relaxed));
        }
    }
    let partitions = stats.map_or(&[][..], |s| s.partitions());
    let per_partition: [PartitionFamily; 4] = [
        (
            "makelaar_cluster_partition_appended_sequence",
            "The stream sequence of this node's last append to the partition (0: none yet).",
            Kind::Gauge,
            |p| p.last_appended.load(Relaxed),
        ),
        (
            "makelaar_cluster_partition_followed_sequence",
            "The stream sequence of the last message this node's follower of the partition \
             read (0: none yet).",
            Kind::Gauge,
            |p| p.last_followed.load(Relaxed),
        ),
        (
            "makelaar_cluster_partition_follow_lag_messages",
            "Messages in the partition stream behind the last one this node's follower read, \
             as NATS reported with it: the follower's lag.",
            Kind::Gauge,
            |p| p.follow_pending.load(Relaxed),
        ),
        (
            "makelaar_cluster_partition_followed_total",
            "Messages this node's follower read from the partition (every node's).",
            Kind::Counter,
            |p| p.followed.load(Relaxed),
        ),
    ];
    for (name, help, kind, read) in per_partition {
        e.family(name, help, kind);
        for (i, p) in partitions.iter().enumerate() {
            e.sample(name, &[("partition", &i.to_string())], read(p));
        }
    }
    one(
        e,
        "makelaar_cluster_queued_messages",
        "Messages the router handed to the cluster that are not written yet.",
        Kind::Gauge,
        stats.map(|s| s.queued.load(Relaxed)),
    );
    one(
        e,
        "makelaar_cluster_queue_limit_messages",
        "The bound of that queue ([cluster] max_queued_messages): above it the router waits.",
        Kind::Gauge,
        stats.map(|s| s.queue_limit.load(Relaxed)),
    );
    one(
        e,
        "makelaar_cluster_queue_full_total",
        "Times the queue to the cluster was full and the router stopped taking packets from \
         clients until the cluster caught up.",
        Kind::Counter,
        stats.map(|s| s.queue_full.load(Relaxed)),
    );
}
