//! The administrator's questions and the one action (see [`crate::admin`]): list clients,
//! subscriptions and retained messages a page at a time, disconnect a client, and watch
//! topics ([`crate::watch`]).

use std::sync::Arc;
use std::time::Instant;

use makelaar_proto::ReasonCode;

use super::{Broker, SessionIdx};
use crate::admin::{
    page_of, ClientInfo, ListQuery, Overview, Page, RetainedInfo, SubscriptionInfo, Watched,
};
use crate::watch::{WatchError, WatchId};

/// Topic watches open at once, at most.
pub const MAX_WATCHES: usize = 64;

impl Broker {
    /// Sessions by client id, connected or not.
    pub fn admin_clients(&self, q: &ListQuery) -> Page<ClientInfo> {
        let keys: Vec<(&str, SessionIdx)> = self
            .sessions
            .client_ids()
            .filter(|(id, _)| q.accepts(id))
            .map(|(id, idx)| (&**id, idx))
            .collect();
        let (total, page) = page_of(keys, q.offset, q.page_size());
        let items = page
            .into_iter()
            .filter_map(|(_, idx)| self.session(idx).ok())
            .map(|s| ClientInfo {
                client_id: s.client_id.clone(),
                conn: s.conn,
                username: s.username.clone(),
                protocol: s.version,
                keep_alive: s.keep_alive,
                session_expiry: s.expiry_interval,
                since: s.since,
                subscriptions: s.subscriptions.len(),
                inflight: s.inflight.len(),
                queued: s.queued_count(),
                queued_bytes: s.queued_weight(),
            })
            .collect();
        Page {
            total,
            offset: q.offset,
            items,
        }
    }

    /// Subscriptions by (client id, filter); `contains` matches either.
    pub fn admin_subscriptions(&self, q: &ListQuery) -> Page<SubscriptionInfo> {
        let mut keys: Vec<(&str, &str, SessionIdx)> = Vec::new();
        for (id, idx) in self.sessions.client_ids() {
            let Ok(s) = self.session(idx) else { continue };
            let id_matches = q.accepts(id);
            for filter in s.subscriptions.keys() {
                if id_matches || q.accepts(filter) {
                    keys.push((id, filter, idx));
                }
            }
        }
        let (total, page) = page_of(keys, q.offset, q.page_size());
        let items = page
            .into_iter()
            .filter_map(|(_, filter, idx)| {
                let s = self.session(idx).ok()?;
                let sub = s.subscriptions.get(filter)?;
                Some(SubscriptionInfo {
                    client_id: s.client_id.clone(),
                    filter: filter.to_owned(),
                    qos: sub.options.qos,
                    no_local: sub.options.no_local,
                    retain_as_published: sub.options.retain_as_published,
                    retain_handling: sub.options.retain_handling,
                    identifier: sub.id,
                    online: s.conn.is_some(),
                })
            })
            .collect();
        Page {
            total,
            offset: q.offset,
            items,
        }
    }

    /// Retained messages by topic (`$SYS` included).
    pub fn admin_retained(&self, q: &ListQuery) -> Page<RetainedInfo> {
        let mut keys: Vec<Arc<str>> = Vec::new();
        self.retained.for_each(|topic, msg| {
            if q.accepts(topic) {
                keys.push(msg.topic.clone());
            }
        });
        let (total, page) = page_of(keys, q.offset, q.page_size());
        let items = page
            .into_iter()
            .filter_map(|topic| {
                let m = self.retained.get(&topic)?;
                Some(RetainedInfo {
                    size: m.payload.len(),
                    qos: m.qos,
                    expires_at: m.expires_at,
                    topic,
                })
            })
            .collect();
        Page {
            total,
            offset: q.offset,
            items,
        }
    }

    /// The overview figures.
    pub fn admin_overview(&self) -> Overview {
        Overview {
            clients_connected: self.clients_connected(),
            sessions: self.sessions_total(),
            subscriptions: self.subscription_count(),
            retained: self.retained_count(),
            stats: self.stats.clone(),
            watches: self.watches.len(),
        }
    }

    /// Disconnects the client connected with `client_id`; false if none is connected.
    ///
    /// A 5.0 client is sent DISCONNECT with reason 0x98 Administrative action, the last
    /// packet on the connection [MQTT-3.14.4-1], which is then closed [MQTT-3.14.4-2]; a
    /// 3.x client has no server DISCONNECT and is just closed. Its will is published (or its
    /// delay starts): the server closed the connection without a DISCONNECT 0x00 from the
    /// client [MQTT-3.1.2-8]. A persistent session stays, offline, as after any other loss.
    pub fn admin_disconnect(&mut self, now: Instant, client_id: &str) -> bool {
        tracing::debug!(%client_id, "disconnecting client: administrative action");
        self.disconnect_client(now, client_id, ReasonCode::ADMINISTRATIVE_ACTION)
    }

    /// Opens a topic watch on `filter`; the retained messages it matches come first, marked
    /// as replays. Copies are collected with [`Broker::drain_watched`].
    pub fn watch(&mut self, filter: &str) -> Result<WatchId, WatchError> {
        let id = self.watches.open(filter, MAX_WATCHES)?;
        let mut replay = Vec::new();
        self.retained
            .for_each_match(filter, |_, m| replay.push(m.clone()));
        for msg in replay {
            self.watches.push(id, Watched { msg, replay: true });
        }
        Ok(id)
    }

    /// Closes a topic watch.
    pub fn unwatch(&mut self, id: WatchId) -> bool {
        self.watches.close(id)
    }

    /// Whether any topic watch is open.
    #[inline]
    pub fn has_watches(&self) -> bool {
        !self.watches.is_empty()
    }

    /// Moves the watched copies not yet taken into `out`, with the id of their watch.
    pub fn drain_watched(&mut self, out: &mut Vec<(WatchId, Watched)>) {
        self.watches.drain(out);
    }

    /// Watched copies dropped because the shell did not drain them in time.
    pub fn watch_dropped(&self) -> u64 {
        self.watches.dropped
    }
}
