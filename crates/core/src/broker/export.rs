//! What a cluster must hear from this broker (issue 14, docs/cluster.md), and how messages
//! from other nodes come in. Off unless the shell turns it on
//! ([`Broker::enable_cluster_export`]); then the broker records, like the journal:
//!
//! - every message its clients publish and every will it publishes ([`Exported`]), for the
//!   shell to send to the other nodes (QoS 0 on their live subjects, QoS 1/2 appended to a
//!   partition before the acknowledgement, retained ones set in the cluster's bucket);
//! - the distinct plain filters its sessions subscribe to, reference-counted
//!   ([`FilterChange`]): the node follows each one once on the cluster, whatever the number of
//!   sessions subscribing it. A shared subscription counts as its inner filter.
//!
//! Messages from other nodes are routed to this broker's subscribers with
//! [`Broker::route_remote`] (never exported again), and retained messages set or cleared
//! elsewhere are applied with [`Broker::apply_remote_retained`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use makelaar_proto::topic::parse_shared;
use makelaar_proto::{Disconnect, Packet, ReasonCode};

use super::{Action, Broker, CloseReason};
use crate::message::Message;
use crate::session::ConnId;

/// A message this broker accepted from a client (or a will it published), for the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    /// The message as routed here.
    pub msg: Arc<Message>,
    /// The publisher's connection; `None` for a will.
    pub from: Option<ConnId>,
}

/// A change to the set of distinct filters this broker's sessions subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterChange {
    /// The first session subscribed to this filter.
    Added(String),
    /// The last session subscribed to this filter left it.
    Removed(String),
}

/// The recorder (see the module documentation).
#[derive(Debug, Default)]
pub(super) struct Export {
    enabled: bool,
    messages: Vec<Exported>,
    /// Sessions per plain filter.
    filters: HashMap<Box<str>, usize>,
    changes: Vec<FilterChange>,
}

/// The plain filter a subscription is followed by on the cluster: a shared subscription's
/// inner filter, or the filter itself.
fn plain(filter: &str) -> &str {
    match parse_shared(filter) {
        Ok(Some((_, inner))) => inner,
        _ => filter,
    }
}

impl Export {
    pub(super) fn message(&mut self, msg: &Arc<Message>, from: Option<ConnId>) {
        if self.enabled {
            self.messages.push(Exported {
                msg: msg.clone(),
                from,
            });
        }
    }

    /// A session subscribed to `filter` (it had no subscription to it before).
    pub(super) fn subscribed(&mut self, filter: &str) {
        if !self.enabled {
            return;
        }
        let n = self.filters.entry(plain(filter).into()).or_insert(0);
        *n += 1;
        if *n == 1 {
            self.changes
                .push(FilterChange::Added(plain(filter).to_owned()));
        }
    }

    /// A session's subscription to `filter` is gone.
    pub(super) fn unsubscribed(&mut self, filter: &str) {
        if !self.enabled {
            return;
        }
        let key = plain(filter);
        let Some(n) = self.filters.get_mut(key) else {
            return;
        };
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.filters.remove(key);
            self.changes.push(FilterChange::Removed(key.to_owned()));
        }
    }
}

impl Broker {
    /// Turns on recording what the cluster must hear (see the module documentation). The
    /// filters of sessions already present (restored from a store) are reported as added.
    pub fn enable_cluster_export(&mut self) {
        self.export.enabled = true;
        let filters: Vec<String> = self
            .sessions
            .iter()
            .flat_map(|s| s.subscriptions.keys().cloned().collect::<Vec<_>>())
            .collect();
        for f in filters {
            self.export.subscribed(&f);
        }
    }

    /// Hands over the messages accepted since the last call, in order.
    pub fn drain_exported(&mut self, out: &mut Vec<Exported>) {
        out.append(&mut self.export.messages);
    }

    /// Hands over the changes to the distinct filters since the last call, in order.
    pub fn drain_filter_changes(&mut self, out: &mut Vec<FilterChange>) {
        out.append(&mut self.export.changes);
    }

    /// Routes a message another node received to this broker's subscribers (No Local by
    /// its `origin`, Retain As Published by its `retain`), without storing it as retained
    /// (retained messages come through [`Broker::apply_remote_retained`]) and without
    /// exporting it again. Returns how many sessions got it.
    pub fn route_remote(&mut self, now: Instant, msg: Arc<Message>) -> usize {
        if msg.is_expired(now) {
            return 0;
        }
        self.route(now, msg)
    }

    /// Applies a retained message set (`Some`) or cleared (`None`) on the cluster, by any
    /// node: this broker's retained messages follow the cluster's.
    pub fn apply_remote_retained(&mut self, topic: &str, msg: Option<Arc<Message>>) {
        let msg = match msg {
            Some(m) => m,
            // An empty retained message clears the topic [MQTT-3.3.1-10] [MQTT-3.3.1-11].
            None => Arc::new(Message {
                topic: Arc::from(topic),
                payload: bytes::Bytes::new(),
                qos: makelaar_proto::QoS::AtMostOnce,
                retain: true,
                properties: makelaar_proto::Properties::default(),
                expires_at: None,
                origin: None,
            }),
        };
        self.store_retained(&msg);
    }

    /// Closes the connection holding `client_id`, if one does, with `reason` (5.0: a
    /// DISCONNECT with it first), as a takeover or the administrator does. Returns whether a
    /// connection was closed.
    pub fn disconnect_client(&mut self, now: Instant, client_id: &str, reason: ReasonCode) -> bool {
        let Some(idx) = self.sessions.by_client_id(client_id) else {
            return false;
        };
        let Ok(s) = self.session(idx) else {
            return false;
        };
        let Some(conn) = s.conn else {
            return false;
        };
        if s.version.is_v5() {
            let d = Disconnect {
                reason,
                ..Disconnect::default()
            };
            self.send(conn, Packet::Disconnect(d));
        }
        self.detach(now, conn);
        self.actions
            .push_back(Action::Close(conn, CloseReason::Server(reason)));
        true
    }
}
