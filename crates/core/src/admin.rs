//! What an administrator may ask the broker (the dashboard's questions), as plain data.
//!
//! The answers are computed by [`crate::Broker`] (`broker::admin`) from the state the router
//! owns; the shell carries the questions to the router and the answers back. Every list is a
//! [`Page`]: at most [`MAX_PAGE`] rows, sorted by a stable key, with the total count of what
//! matched, so a broker with a million sessions answers one page without building a million
//! rows.

use std::sync::Arc;
use std::time::Instant;

use makelaar_proto::{ProtocolVersion, QoS, RetainHandling};

use crate::message::Message;
use crate::session::ConnId;

/// The most rows one page holds.
pub const MAX_PAGE: usize = 1000;

/// Which rows of a list to return.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Rows to skip, in sort order.
    pub offset: usize,
    /// Rows to return; capped at [`MAX_PAGE`] (0 is taken as [`MAX_PAGE`]).
    pub limit: usize,
    /// Only rows whose key (client id, filter or topic) contains this text.
    pub contains: Option<String>,
}

impl ListQuery {
    /// The number of rows a page holds.
    pub fn page_size(&self) -> usize {
        if self.limit == 0 {
            MAX_PAGE
        } else {
            self.limit.min(MAX_PAGE)
        }
    }

    /// Whether `text` passes the `contains` filter.
    pub fn accepts(&self, text: &str) -> bool {
        self.contains.as_deref().is_none_or(|c| text.contains(c))
    }
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// Rows that matched the query, on every page together.
    pub total: usize,
    /// The offset of the first row.
    pub offset: usize,
    /// The rows, in sort order.
    pub items: Vec<T>,
}

/// One session, connected or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    pub client_id: Arc<str>,
    /// The connection attached now; `None` for a persistent session whose client is away.
    pub conn: Option<ConnId>,
    /// The authenticated username of the last connection.
    pub username: Option<Arc<str>>,
    pub protocol: ProtocolVersion,
    /// The keep-alive in force, in seconds (the server's, when it overrode the client's).
    pub keep_alive: u16,
    /// Session Expiry Interval in seconds (`u32::MAX`: never).
    pub session_expiry: u32,
    /// Since when the client is connected, or away; `None` for a session restored from the
    /// store whose client has not come back yet.
    pub since: Option<Instant>,
    pub subscriptions: usize,
    /// Messages sent and not yet acknowledged.
    pub inflight: usize,
    /// Messages waiting to be sent (in memory and in the store).
    pub queued: usize,
    /// Bytes of the queued messages (topic + payload).
    pub queued_bytes: usize,
}

/// One subscription of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionInfo {
    pub client_id: Arc<str>,
    /// The filter as subscribed (`$share/GROUP/...` included).
    pub filter: String,
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
    /// The 5.0 subscription identifier.
    pub identifier: Option<u32>,
    /// Whether the session's client is connected.
    pub online: bool,
}

/// One retained message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedInfo {
    pub topic: Arc<str>,
    /// Payload bytes.
    pub size: usize,
    pub qos: QoS,
    /// When its Message Expiry Interval runs out.
    pub expires_at: Option<Instant>,
}

/// Figures for the dashboard's overview, read in one go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overview {
    pub clients_connected: usize,
    pub sessions: usize,
    pub subscriptions: usize,
    pub retained: usize,
    pub stats: crate::Stats,
    /// Topic watches open (see [`crate::watch`]).
    pub watches: usize,
}

/// A watched message, for the topic viewer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    pub msg: Arc<Message>,
    /// It was the topic's retained message when the watch began (not a live one).
    pub replay: bool,
}

/// The rows of `keys` (sorted by `Ord`) on the page `offset..offset + limit`, and how many
/// keys there were. Runs in linear time plus sorting the page only: the keys before the
/// page's end are selected first, so a page costs O(n + (offset + limit) log(...)) at worst
/// and O(n) for the first pages.
pub fn page_of<K: Ord>(mut keys: Vec<K>, offset: usize, limit: usize) -> (usize, Vec<K>) {
    let total = keys.len();
    let end = offset.saturating_add(limit).min(total);
    if offset >= end {
        return (total, Vec::new());
    }
    if end < total {
        // Everything before `end` is now the `end` smallest keys, in some order.
        keys.select_nth_unstable(end);
        keys.truncate(end);
    }
    keys.sort_unstable();
    let page = keys.split_off(offset);
    (total, page)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn pages_cover_the_sorted_keys_once() {
        let keys: Vec<u32> = (0..2500).map(|i| (i * 7919) % 2500).collect();
        let mut seen = Vec::new();
        let mut offset = 0;
        loop {
            let (total, page) = page_of(keys.clone(), offset, 1000);
            assert_eq!(total, 2500);
            if page.is_empty() {
                break;
            }
            offset += page.len();
            seen.extend(page);
        }
        assert_eq!(seen, (0..2500).collect::<Vec<u32>>());
    }

    #[test]
    fn page_past_the_end_is_empty_with_the_total() {
        assert_eq!(page_of(vec![3, 1, 2], 3, 10), (3, vec![]));
        assert_eq!(page_of(vec![3, 1, 2], 1, 10), (3, vec![2, 3]));
        assert_eq!(page_of(vec![3, 1, 2], usize::MAX, usize::MAX), (3, vec![]));
        assert_eq!(page_of(Vec::<u8>::new(), 0, 10), (0, vec![]));
    }

    #[test]
    fn page_size_is_capped() {
        let q = ListQuery::default();
        assert_eq!(q.page_size(), MAX_PAGE);
        let q = ListQuery {
            limit: 5000,
            ..ListQuery::default()
        };
        assert_eq!(q.page_size(), MAX_PAGE);
        let q = ListQuery {
            limit: 20,
            ..ListQuery::default()
        };
        assert_eq!(q.page_size(), 20);
    }
}
