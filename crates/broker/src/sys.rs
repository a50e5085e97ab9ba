//! `$SYS/broker/...` topics, published as Mosquitto does every `sys_interval`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use makelaar_core::Broker;

use crate::Counters;

/// Publishes the broker's figures on `$SYS` topics (retained, QoS 0) at a fixed interval.
pub(crate) struct SysPublisher {
    interval: Option<Duration>,
    next: Instant,
}

impl SysPublisher {
    /// `interval` of zero turns `$SYS` off.
    pub(crate) fn new(interval: Duration, now: Instant) -> SysPublisher {
        SysPublisher {
            interval: (!interval.is_zero()).then_some(interval),
            next: now,
        }
    }

    /// When the next publication is due (far away when turned off).
    pub(crate) fn next_due(&self, now: Instant) -> Instant {
        match self.interval {
            Some(_) => self.next,
            None => now + Duration::from_secs(3600),
        }
    }

    /// Publishes every figure when due; true when it did (the router's periodic chores ride
    /// on the same tick).
    pub(crate) fn maybe_publish(
        &mut self,
        now: Instant,
        start: Instant,
        broker: &mut Broker,
        c: &Counters,
    ) -> bool {
        let Some(interval) = self.interval else {
            return false;
        };
        if now < self.next {
            return false;
        }
        self.next = now + interval;
        let stats = broker.stats().clone();
        let connected = broker.clients_connected();
        let total = broker.sessions_total();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed).to_string();
        let figures: Vec<(&str, String)> = vec![
            (
                "$SYS/broker/version",
                format!("makelaar version {}", env!("CARGO_PKG_VERSION")),
            ),
            (
                "$SYS/broker/uptime",
                format!("{} seconds", now.duration_since(start).as_secs()),
            ),
            ("$SYS/broker/clients/connected", connected.to_string()),
            ("$SYS/broker/clients/active", connected.to_string()),
            (
                "$SYS/broker/clients/disconnected",
                total.saturating_sub(connected).to_string(),
            ),
            ("$SYS/broker/clients/total", total.to_string()),
            (
                "$SYS/broker/clients/maximum",
                stats.max_connected.to_string(),
            ),
            (
                "$SYS/broker/clients/expired",
                stats.sessions_expired.to_string(),
            ),
            ("$SYS/broker/messages/received", load(&c.packets_received)),
            ("$SYS/broker/messages/sent", load(&c.packets_sent)),
            (
                "$SYS/broker/publish/messages/received",
                stats.messages_received().to_string(),
            ),
            (
                "$SYS/broker/publish/messages/sent",
                stats.messages_sent().to_string(),
            ),
            (
                "$SYS/broker/publish/messages/dropped",
                (stats.dropped_queue_full + c.dropped_slow_client.load(Ordering::Relaxed))
                    .to_string(),
            ),
            ("$SYS/broker/bytes/received", load(&c.bytes_received)),
            ("$SYS/broker/bytes/sent", load(&c.bytes_sent)),
            (
                "$SYS/broker/subscriptions/count",
                broker.subscription_count().to_string(),
            ),
            (
                "$SYS/broker/retained messages/count",
                broker.retained_count().to_string(),
            ),
            // Makelaar's own: access control and rate limits.
            (
                "$SYS/broker/clients/refused/login",
                c.refused_login().to_string(),
            ),
            (
                "$SYS/broker/clients/refused/max_connections",
                load(&c.refused_max_connections),
            ),
            (
                "$SYS/broker/clients/refused/connection_rate",
                load(&c.refused_connection_rate),
            ),
            (
                "$SYS/broker/clients/disconnected/publish_rate",
                load(&c.disconnected_publish_rate),
            ),
            (
                "$SYS/broker/publish/messages/denied/publish",
                stats.publishes_denied.to_string(),
            ),
            (
                "$SYS/broker/publish/messages/denied/delivery",
                stats.deliveries_denied.to_string(),
            ),
        ];
        for (topic, value) in figures {
            broker.publish_internal(now, topic, Bytes::from(value));
        }
        // Per bridge: `$SYS/broker/bridge/<name>/...`.
        for b in c.bridge_list() {
            let q = broker.bridge_queue(now, &b.local_client_id);
            let mut bridge = vec![
                ("state".to_owned(), b.state_name().to_owned()),
                ("connects".to_owned(), load(&b.connects)),
                ("messages/out".to_owned(), load(&b.forwarded_out)),
                ("messages/in".to_owned(), load(&b.forwarded_in)),
                ("inflight".to_owned(), load(&b.in_flight)),
                ("dropped/loop".to_owned(), load(&b.dropped_loop)),
                ("dropped/other".to_owned(), load(&b.dropped_other)),
                ("downgraded".to_owned(), load(&b.downgraded)),
                ("capped".to_owned(), q.capped.to_string()),
                ("queue/messages".to_owned(), q.messages.to_string()),
                ("queue/bytes".to_owned(), q.bytes.to_string()),
                (
                    "queue/oldest_age".to_owned(),
                    q.oldest_age.map_or(0, |a| a.as_secs()).to_string(),
                ),
            ];
            for (why, n) in q.drops.by_reason() {
                bridge.push((format!("dropped/{why}"), n.to_string()));
            }
            for (leaf, value) in bridge {
                let topic = format!("$SYS/broker/bridge/{}/{leaf}", b.name);
                broker.publish_internal(now, &topic, Bytes::from(value));
            }
        }
        // A cluster node: `$SYS/broker/cluster/...`, this node's view (each node publishes
        // its own; `$SYS` topics stay on their node).
        if let Some(cluster) = &c.cluster {
            for (leaf, value) in cluster_figures(cluster) {
                let topic = format!("$SYS/broker/cluster/{leaf}");
                broker.publish_internal(now, &topic, Bytes::from(value));
            }
        }
        true
    }
}

/// The `$SYS/broker/cluster/<leaf>` figures of a cluster node, as (leaf, value).
pub(crate) fn cluster_figures(c: &crate::counters::ClusterCounters) -> Vec<(String, String)> {
    let s = &c.stats;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed).to_string();
    let mut out = vec![
        ("node".to_owned(), c.node.clone()),
        (
            "state".to_owned(),
            if s.serving() {
                "serving"
            } else {
                "stepped-down"
            }
            .to_owned(),
        ),
        ("nodes/alive".to_owned(), load(&s.nodes_alive)),
        (
            "round_trip_ms".to_owned(),
            s.round_trip()
                .map_or_else(String::new, |d| format!("{:.3}", d.as_secs_f64() * 1000.0)),
        ),
        ("step_downs".to_owned(), load(&s.step_downs)),
        ("appends".to_owned(), load(&s.appends)),
        ("appends/failed".to_owned(), load(&s.append_failures)),
        ("published".to_owned(), load(&s.published)),
        ("published/failed".to_owned(), load(&s.publish_failures)),
        ("retained/writes".to_owned(), load(&s.retained_writes)),
        ("claims".to_owned(), load(&s.claims)),
        ("claims/failed".to_owned(), load(&s.claim_failures)),
        ("handovers/asked".to_owned(), load(&s.handovers_asked)),
        ("handovers/given".to_owned(), load(&s.handovers_given)),
        ("late_appends/dropped".to_owned(), load(&s.late_dropped)),
        (
            "follow/lag".to_owned(),
            s.follow_pending_total().to_string(),
        ),
        ("queue/messages".to_owned(), load(&s.queued)),
        ("queue/limit".to_owned(), load(&s.queue_limit)),
        ("queue/full".to_owned(), load(&s.queue_full)),
    ];
    for (i, p) in s.partitions().iter().enumerate() {
        out.push((
            format!("partition/{i}/appended_sequence"),
            load(&p.last_appended),
        ));
        out.push((
            format!("partition/{i}/followed_sequence"),
            load(&p.last_followed),
        ));
        out.push((format!("partition/{i}/follow_lag"), load(&p.follow_pending)));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::HashMap;
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::Arc;
    use std::time::Duration;

    use makelaar_cluster::partition::PartitionCount;
    use makelaar_cluster::stats::NodeStats;

    use super::cluster_figures;
    use crate::counters::ClusterCounters;

    #[test]
    fn cluster_topics_carry_the_nodes_figures() {
        let count = PartitionCount::new(2).unwrap();
        let stats = Arc::new(NodeStats::new(count));
        stats.set_serving(true);
        stats.nodes_alive.store(3, Relaxed);
        stats.set_round_trip(Duration::from_micros(1500));
        stats.appended(count.all().nth(1).unwrap(), Some(9));
        let c = ClusterCounters {
            node: "m1".into(),
            stats: stats.clone(),
        };
        let figures: HashMap<String, String> = cluster_figures(&c).into_iter().collect();
        assert_eq!(figures["node"], "m1");
        assert_eq!(figures["state"], "serving");
        assert_eq!(figures["nodes/alive"], "3");
        assert_eq!(figures["round_trip_ms"], "1.500");
        assert_eq!(figures["appends"], "1");
        assert_eq!(figures["partition/1/appended_sequence"], "9");
        assert_eq!(figures["partition/0/appended_sequence"], "0");
        stats.set_serving(false);
        let figures: HashMap<String, String> = cluster_figures(&c).into_iter().collect();
        assert_eq!(figures["state"], "stepped-down");
        assert_eq!(figures["step_downs"], "1");
    }
}
