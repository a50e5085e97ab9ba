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
        true
    }
}
