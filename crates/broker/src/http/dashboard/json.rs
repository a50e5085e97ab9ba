//! The dashboard API's JSON shapes, built from the router's answers.

use std::time::Instant;

use makelaar_core::admin::{Overview, Page, RetainedInfo, SubscriptionInfo, Watched};
use makelaar_proto::ProtocolVersion;
use serde::Serialize;

use crate::admin::{unix_millis, ClientRow};
use crate::Counters;

/// Payload bytes shown of a watched message; the rest is cut (the size says how much).
pub(crate) const PAYLOAD_SHOWN: usize = 2048;

#[derive(Serialize)]
pub(crate) struct PageJson<T> {
    pub total: usize,
    pub offset: usize,
    pub items: Vec<T>,
}

impl<T> PageJson<T> {
    pub fn from<U>(page: Page<U>, f: impl Fn(U) -> T) -> PageJson<T> {
        PageJson {
            total: page.total,
            offset: page.offset,
            items: page.items.into_iter().map(f).collect(),
        }
    }
}

fn protocol(v: ProtocolVersion) -> &'static str {
    match v {
        ProtocolVersion::V31 => "3.1",
        ProtocolVersion::V311 => "3.1.1",
        ProtocolVersion::V5 => "5.0",
    }
}

#[derive(Serialize)]
pub(crate) struct ClientJson {
    pub client_id: String,
    pub address: Option<String>,
    pub protocol: &'static str,
    pub keep_alive: u16,
    pub session_expiry: u32,
    pub online: bool,
    pub username: Option<String>,
    pub since_ms: Option<u64>,
    pub subscriptions: usize,
    pub inflight: usize,
    pub queued: usize,
    pub queued_bytes: usize,
}

impl From<ClientRow> for ClientJson {
    fn from(row: ClientRow) -> Self {
        let c = row.info;
        ClientJson {
            client_id: c.client_id.to_string(),
            address: row.peer.map(|p| p.to_string()),
            protocol: protocol(c.protocol),
            keep_alive: c.keep_alive,
            session_expiry: c.session_expiry,
            online: c.conn.is_some(),
            username: c.username.map(|u| u.to_string()),
            since_ms: c.since.map(unix_millis),
            subscriptions: c.subscriptions,
            inflight: c.inflight,
            queued: c.queued,
            queued_bytes: c.queued_bytes,
        }
    }
}

#[derive(Serialize)]
pub(crate) struct SubscriptionJson {
    pub client_id: String,
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
    pub identifier: Option<u32>,
    pub online: bool,
}

impl From<SubscriptionInfo> for SubscriptionJson {
    fn from(s: SubscriptionInfo) -> Self {
        SubscriptionJson {
            client_id: s.client_id.to_string(),
            filter: s.filter,
            qos: s.qos as u8,
            no_local: s.no_local,
            retain_as_published: s.retain_as_published,
            retain_handling: s.retain_handling as u8,
            identifier: s.identifier,
            online: s.online,
        }
    }
}

#[derive(Serialize)]
pub(crate) struct RetainedJson {
    pub topic: String,
    pub size: usize,
    pub qos: u8,
    pub expires_in_secs: Option<u64>,
}

impl From<RetainedInfo> for RetainedJson {
    fn from(r: RetainedInfo) -> Self {
        let now = Instant::now();
        RetainedJson {
            topic: r.topic.to_string(),
            size: r.size,
            qos: r.qos as u8,
            expires_in_secs: r
                .expires_at
                .map(|at| at.saturating_duration_since(now).as_secs()),
        }
    }
}

/// The overview figures and the counters, as the live charts take them.
#[derive(Serialize)]
pub(crate) struct StatsJson {
    pub version: &'static str,
    pub time_ms: u64,
    pub uptime_secs: u64,
    pub clients_connected: usize,
    pub sessions: usize,
    pub subscriptions: usize,
    pub retained: usize,
    pub topic_watches: usize,
    pub messages_received: u64,
    pub messages_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub dropped_queue_full: u64,
    pub dropped_slow_client: u64,
}

impl StatsJson {
    pub fn new(o: Overview, counters: &Counters, started: Instant) -> StatsJson {
        use std::sync::atomic::Ordering::Relaxed;
        StatsJson {
            version: env!("CARGO_PKG_VERSION"),
            time_ms: unix_millis(Instant::now()),
            uptime_secs: started.elapsed().as_secs(),
            clients_connected: o.clients_connected,
            sessions: o.sessions,
            subscriptions: o.subscriptions,
            retained: o.retained,
            topic_watches: o.watches,
            messages_received: o.stats.messages_received(),
            messages_sent: o.stats.messages_sent(),
            bytes_received: counters.bytes_received.load(Relaxed),
            bytes_sent: counters.bytes_sent.load(Relaxed),
            dropped_queue_full: o.stats.dropped_queue_full,
            dropped_slow_client: counters.dropped_slow_client.load(Relaxed),
        }
    }
}

/// A bridge on the dashboard's panel: its link, its queue and what it counted.
#[derive(Serialize)]
pub(crate) struct BridgeJson {
    pub name: String,
    /// `connected`, `connecting`, `down` or `stopped`.
    pub state: &'static str,
    /// The remote's address in use or last tried.
    pub address: String,
    pub queued: usize,
    pub queued_bytes: usize,
    pub oldest_queued_secs: Option<u64>,
    pub inflight: u64,
    pub forwarded_out: u64,
    pub forwarded_in: u64,
    /// Links the remote accepted (the first one and every reconnect).
    pub connects: u64,
    pub last_error: String,
    /// Messages dropped, by reason (as in `/metrics`).
    pub dropped: std::collections::BTreeMap<&'static str, u64>,
}

impl BridgeJson {
    pub fn new(
        b: &crate::counters::BridgeCounters,
        q: makelaar_core::broker::BridgeQueue,
    ) -> BridgeJson {
        use std::sync::atomic::Ordering::Relaxed;
        let mut dropped: std::collections::BTreeMap<&'static str, u64> =
            q.drops.by_reason().into_iter().collect();
        dropped.insert("loop", b.dropped_loop.load(Relaxed));
        dropped.insert("other", b.dropped_other.load(Relaxed));
        BridgeJson {
            name: b.name.clone(),
            state: b.state_name(),
            address: b.address(),
            queued: q.messages,
            queued_bytes: q.bytes,
            oldest_queued_secs: q.oldest_age.map(|a| a.as_secs()),
            inflight: b.in_flight.load(Relaxed),
            forwarded_out: b.forwarded_out.load(Relaxed),
            forwarded_in: b.forwarded_in.load(Relaxed),
            connects: b.connects.load(Relaxed),
            last_error: b.last_error(),
            dropped,
        }
    }
}

/// This node's part in a cluster, for the dashboard's cluster panel (the same figures as
/// `/metrics` and `$SYS/broker/cluster/...`).
#[derive(Serialize)]
pub(crate) struct ClusterJson {
    pub node: String,
    /// `serving` or `stepped-down`.
    pub state: &'static str,
    pub nodes_alive: u64,
    /// The last lease write's round trip; `None` before the first.
    pub round_trip_ms: Option<f64>,
    pub step_downs: u64,
    pub appends: u64,
    pub append_failures: u64,
    pub published: u64,
    pub publish_failures: u64,
    pub claims: u64,
    pub claim_failures: u64,
    pub handovers_asked: u64,
    pub handovers_given: u64,
    pub queued: u64,
    pub queue_limit: u64,
    pub queue_full: u64,
    /// Per partition, by index.
    pub partitions: Vec<PartitionJson>,
}

/// One partition stream as this node sees it.
#[derive(Serialize)]
pub(crate) struct PartitionJson {
    pub appended_sequence: u64,
    pub followed_sequence: u64,
    pub follow_lag: u64,
    pub followed: u64,
}

impl ClusterJson {
    pub fn new(c: &crate::counters::ClusterCounters) -> ClusterJson {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &c.stats;
        ClusterJson {
            node: c.node.clone(),
            state: if s.serving() {
                "serving"
            } else {
                "stepped-down"
            },
            nodes_alive: s.nodes_alive.load(Relaxed),
            round_trip_ms: s.round_trip().map(|d| d.as_secs_f64() * 1000.0),
            step_downs: s.step_downs.load(Relaxed),
            appends: s.appends.load(Relaxed),
            append_failures: s.append_failures.load(Relaxed),
            published: s.published.load(Relaxed),
            publish_failures: s.publish_failures.load(Relaxed),
            claims: s.claims.load(Relaxed),
            claim_failures: s.claim_failures.load(Relaxed),
            handovers_asked: s.handovers_asked.load(Relaxed),
            handovers_given: s.handovers_given.load(Relaxed),
            queued: s.queued.load(Relaxed),
            queue_limit: s.queue_limit.load(Relaxed),
            queue_full: s.queue_full.load(Relaxed),
            partitions: s
                .partitions()
                .iter()
                .map(|p| PartitionJson {
                    appended_sequence: p.last_appended.load(Relaxed),
                    followed_sequence: p.last_followed.load(Relaxed),
                    follow_lag: p.follow_pending.load(Relaxed),
                    followed: p.followed.load(Relaxed),
                })
                .collect(),
        }
    }
}

/// A watched message for the topic viewer: the payload as text when it is UTF-8, else as
/// hex; at most [`PAYLOAD_SHOWN`] bytes of it.
#[derive(Serialize)]
pub(crate) struct WatchedJson {
    pub time_ms: u64,
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    /// A retained message sent when the watch began.
    pub replay: bool,
    pub size: usize,
    /// `"utf8"` or `"hex"`.
    pub encoding: &'static str,
    pub payload: String,
    pub truncated: bool,
}

impl From<Watched> for WatchedJson {
    fn from(w: Watched) -> Self {
        let payload = &w.msg.payload[..];
        let (encoding, shown, truncated) = show_payload(payload);
        WatchedJson {
            time_ms: unix_millis(Instant::now()),
            topic: w.msg.topic.to_string(),
            qos: w.msg.qos as u8,
            retain: w.msg.retain,
            replay: w.replay,
            size: payload.len(),
            encoding,
            payload: shown,
            truncated,
        }
    }
}

/// (encoding, text, truncated) of a payload as the viewer shows it.
pub(crate) fn show_payload(payload: &[u8]) -> (&'static str, String, bool) {
    let cut = payload.len().min(PAYLOAD_SHOWN);
    let head = payload.get(..cut).unwrap_or(payload);
    let truncated = cut < payload.len();
    // A UTF-8 payload cut in the middle of a character is still text: drop the partial one.
    let text = match std::str::from_utf8(head) {
        Ok(s) => Some(s),
        Err(e) if truncated && e.error_len().is_none() => head
            .get(..e.valid_up_to())
            .and_then(|h| std::str::from_utf8(h).ok()),
        Err(_) => None,
    };
    match text {
        Some(s) => ("utf8", s.to_owned(), truncated),
        None => {
            let mut hex = String::with_capacity(head.len() * 2);
            for b in head {
                hex.push_str(&format!("{b:02x}"));
            }
            ("hex", hex, truncated)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_show_as_text_or_hex_and_are_cut() {
        assert_eq!(show_payload(b"21.5"), ("utf8", "21.5".into(), false));
        assert_eq!(
            show_payload(&[0, 0xff, 0x10]),
            ("hex", "00ff10".into(), false)
        );
        let long = "é".repeat(PAYLOAD_SHOWN); // 2 bytes each: the cut falls on a boundary
        let (enc, text, cut) = show_payload(long.as_bytes());
        assert_eq!((enc, cut), ("utf8", true));
        assert_eq!(text.len(), PAYLOAD_SHOWN);
        let odd = format!("a{long}"); // now the cut falls inside a character
        let (enc, text, cut) = show_payload(odd.as_bytes());
        assert_eq!((enc, cut), ("utf8", true));
        assert_eq!(text.len(), PAYLOAD_SHOWN - 1);
        let (enc, text, cut) = show_payload(&vec![0xffu8; PAYLOAD_SHOWN + 5]);
        assert_eq!((enc, text.len(), cut), ("hex", PAYLOAD_SHOWN * 2, true));
    }
}
