//! What a cluster must hear from this broker (issue 14, docs/cluster.md), and how messages
//! from other nodes come in. Off unless the shell turns it on
//! ([`Broker::enable_cluster_export`]); then the broker records, like the journal:
//!
//! - every message its clients publish and every will it publishes ([`Exported`]), for the
//!   shell to send to the other nodes (QoS 0 on their live subjects, QoS 1/2 appended to a
//!   partition before the acknowledgement, retained ones set in the cluster's bucket);
//! - the distinct plain filters its sessions subscribe to, reference-counted
//!   ([`FilterChange`]): the node follows each one once on the cluster, whatever the number of
//!   sessions subscribing it; and the share groups (`$share/GROUP/FILTER`) with a member
//!   here, followed once per node so that the cluster hands each of their messages to one
//!   node ([`FilterChange::GroupAdded`]), which gives it to one local member
//!   ([`Broker::route_shared_remote`]). With the cluster on, the broker's own routing leaves
//!   share groups out: every message reaches them through the cluster, also one published
//!   here, so that exactly one member in the whole cluster gets it (5.0 section 4.8.2).
//!
//! Messages from other nodes are routed to this broker's subscribers with
//! [`Broker::route_remote`] (never exported again), and retained messages set or cleared
//! elsewhere are applied with [`Broker::apply_remote_retained`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use makelaar_proto::topic::parse_shared;
use makelaar_proto::{Disconnect, Packet, ReasonCode, Will};

use super::{Action, Broker, CloseReason};
use crate::message::Message;
use crate::persist::{KeptState, LoadedMessage};
use crate::session::ConnId;
use crate::session::OutboundState;

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
    /// The first member of a share group (`$share/GROUP/FILTER`) on this broker.
    GroupAdded(String),
    /// The last member of a share group on this broker left it.
    GroupRemoved(String),
}

/// What the cluster keeps of a session that outlives its connection (its subscriptions,
/// inbound QoS 2 ids and the QoS 1/2 messages it holds), so that it follows its client to
/// another node, or of a connection with a will (its will, so that exactly one node
/// publishes it, also when this one dies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSnapshot {
    /// The protocol level of its last connection.
    pub version: makelaar_proto::ProtocolVersion,
    /// Session Expiry Interval, seconds (0 only for a connection with a will: its session
    /// ends with it).
    pub expiry_interval: u32,
    /// Its subscriptions, by filter.
    pub subscriptions: Vec<(String, crate::session::Subscription)>,
    /// When its connection ended; `None` while one is open.
    pub offline_since: Option<Instant>,
    /// The will not yet published: the open connection's, or (offline) the one waiting out
    /// its delay.
    pub will: Option<KeptWill>,
    /// Whether a client is connected to it.
    pub connected: bool,
    /// Inbound QoS 2 packet ids acknowledged with PUBREC and not yet released: a PUBLISH
    /// resent with one of them after a move is not delivered again [MQTT-4.3.3-10].
    pub inbound_qos2: Vec<u16>,
    /// The outbound QoS 1/2 messages it holds and has not completed, in its order: in flight
    /// first, then queued. Empty in a snapshot taken in.
    pub outbound: Vec<KeptMessage>,
}

/// What [`Broker::handle_cluster_backlog`] did with a session's messages read back from the
/// cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterBacklog {
    /// Taken in: messages sent before and not completed, messages to send, and the newest
    /// dropped over the session's queue limits.
    Taken {
        in_flight: usize,
        queued: usize,
        dropped: usize,
    },
    /// No session of that client id here.
    NoSession,
    /// The session is not waiting for messages from the cluster.
    NotWaiting,
}

/// An outbound message a session holds: sent and not completed, or queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptMessage {
    /// The message.
    pub msg: Arc<Message>,
    /// The QoS it goes out with.
    pub qos: makelaar_proto::QoS,
    /// Where it stands.
    pub state: KeptState,
}

/// A will a session holds, with the identity it is to be published with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptWill {
    /// The will.
    pub will: Box<Will>,
    /// The authenticated username of the connection that set it.
    pub username: Option<Arc<str>>,
}

/// A will of one of this broker's own sessions that its rules say is due now, held back
/// until the cluster has taken it out of the session's record (see
/// [`Broker::drain_due_wills`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueWill {
    /// The client whose will it is.
    pub client_id: Arc<str>,
    /// The will, with the identity it is published with.
    pub will: KeptWill,
}

/// The recorder (see the module documentation).
#[derive(Debug, Default)]
pub(super) struct Export {
    enabled: bool,
    /// Wills due now, waiting for the cluster's decision (see [`Broker::drain_due_wills`]).
    wills: Vec<DueWill>,
    /// Client ids this broker assigned, whose sessions the cluster must hear of although
    /// their CONNECTs claimed nothing (see [`Broker::drain_assigned_ids`]).
    assigned: Vec<Arc<str>>,
    /// Sessions whose kept state changed (their snapshot is to be written) or that ended.
    sessions: Vec<Arc<str>>,
    messages: Vec<Exported>,
    /// Sessions per plain filter.
    filters: HashMap<Box<str>, usize>,
    /// Members per share group (`$share/GROUP/FILTER`).
    groups: HashMap<Box<str>, usize>,
    changes: Vec<FilterChange>,
}

/// Whether a subscription is to a share group (followed as a group, not as a filter).
fn is_shared(filter: &str) -> bool {
    matches!(parse_shared(filter), Ok(Some(_)))
}

/// Counts one more holder of `key`; true for the first.
fn count_up(map: &mut HashMap<Box<str>, usize>, key: &str) -> bool {
    let n = map.entry(key.into()).or_insert(0);
    *n += 1;
    *n == 1
}

/// Counts one holder of `key` less; true when it was the last.
fn count_down(map: &mut HashMap<Box<str>, usize>, key: &str) -> bool {
    let Some(n) = map.get_mut(key) else {
        return false;
    };
    *n = n.saturating_sub(1);
    if *n == 0 {
        map.remove(key);
        return true;
    }
    false
}

impl Export {
    /// Whether this broker is one node of a cluster (it records what the cluster must hear).
    pub(super) fn in_cluster(&self) -> bool {
        self.enabled
    }

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
        if is_shared(filter) {
            if count_up(&mut self.groups, filter) {
                self.changes
                    .push(FilterChange::GroupAdded(filter.to_owned()));
            }
        } else if count_up(&mut self.filters, filter) {
            self.changes.push(FilterChange::Added(filter.to_owned()));
        }
    }

    /// A session's subscription to `filter` is gone.
    pub(super) fn unsubscribed(&mut self, filter: &str) {
        if !self.enabled {
            return;
        }
        if is_shared(filter) {
            if count_down(&mut self.groups, filter) {
                self.changes
                    .push(FilterChange::GroupRemoved(filter.to_owned()));
            }
        } else if count_down(&mut self.filters, filter) {
            self.changes.push(FilterChange::Removed(filter.to_owned()));
        }
    }
}

impl Export {
    pub(super) fn session_changed(&mut self, client_id: &Arc<str>) {
        if self.enabled && self.sessions.last() != Some(client_id) {
            self.sessions.push(client_id.clone());
        }
    }

    pub(super) fn enabled(&self) -> bool {
        self.enabled
    }

    /// Holds a due will back for the cluster's decision; its session's record is to be
    /// written (without it) first.
    pub(super) fn will_due(&mut self, client_id: &Arc<str>, will: KeptWill) {
        self.wills.push(DueWill {
            client_id: client_id.clone(),
            will,
        });
        self.session_changed(client_id);
    }

    /// A client id assigned to a CONNECT now.
    pub(super) fn assigned(&mut self, client_id: &Arc<str>) {
        if self.enabled {
            self.assigned.push(client_id.clone());
            self.session_changed(client_id);
        }
    }
}

impl Broker {
    /// Hands over the client ids whose session changed or ended since the last call; ask
    /// [`Broker::session_snapshot`] what each holds now (`None`: ended, or not kept).
    pub fn drain_session_changes(&mut self, out: &mut Vec<Arc<str>>) {
        out.append(&mut self.export.sessions);
        out.dedup();
    }

    /// What the cluster keeps of the session of `client_id`: `None` when there is none, or
    /// when it ends with its connection (Session Expiry Interval 0) and has no will.
    pub fn session_snapshot(&self, client_id: &str) -> Option<SessionSnapshot> {
        let idx = self.sessions.by_client_id(client_id)?;
        let s = self.session(idx).ok()?;
        let will = match s.conn {
            Some(_) => s.will.as_ref(),
            None => s.pending_will.as_ref(),
        };
        if s.expiry_interval == 0 && will.is_none() {
            return None;
        }
        let mut subscriptions: Vec<_> = s
            .subscriptions
            .iter()
            .map(|(f, sub)| (f.clone(), sub.clone()))
            .collect();
        subscriptions.sort_by(|a, b| a.0.cmp(&b.0));
        let in_flight = s.inflight.iter().map(|m| KeptMessage {
            msg: m.delivery.msg.clone(),
            qos: m.delivery.qos,
            state: match m.state {
                OutboundState::AwaitingAck => KeptState::AwaitingAck(m.packet_id),
                OutboundState::AwaitingComp => KeptState::AwaitingComp(m.packet_id),
            },
        });
        let queued = s.queue.iter().map(|d| KeptMessage {
            msg: d.msg.clone(),
            qos: d.qos,
            state: KeptState::Queued,
        });
        Some(SessionSnapshot {
            version: s.version,
            expiry_interval: s.expiry_interval,
            subscriptions,
            offline_since: if s.conn.is_some() { None } else { s.since },
            will: will.map(|w| KeptWill {
                will: w.clone(),
                username: s.username.clone(),
            }),
            connected: s.conn.is_some(),
            inbound_qos2: s.inbound_qos2.clone(),
            outbound: in_flight
                .chain(queued)
                .filter(|k| k.qos != makelaar_proto::QoS::AtMostOnce)
                .collect(),
        })
    }

    /// Takes in a session a dead cluster node left (its will and timings decided with
    /// [`will_wait`](super::will_wait) and [`session_left`](super::session_left) by the
    /// node that reaped it), unless this broker has one for that client id already: offline,
    /// its will (if any) published in `will_in` unless its client returns first
    /// [MQTT-3.1.3-9], the session ended in `expires_in` (`None`: never). From here on it is
    /// this broker's like any offline session. Returns whether it was taken in.
    pub fn adopt_orphan(
        &mut self,
        now: Instant,
        client_id: &str,
        snapshot: SessionSnapshot,
        will_in: Duration,
        expires_in: Option<Duration>,
    ) -> bool {
        if self.sessions.by_client_id(client_id).is_some() {
            return false;
        }
        let username = snapshot.will.as_ref().and_then(|w| w.username.clone());
        self.restore_session(crate::persist::RestoredSession {
            client_id: Arc::from(client_id),
            state: crate::persist::SessionState {
                version: snapshot.version,
                expiry_interval: snapshot.expiry_interval,
                expires_at: expires_in.map(|d| now + d),
                pending_will: snapshot.will.map(|w| (w.will, now + will_in)),
                connected: false,
                username,
            },
            subscriptions: snapshot.subscriptions,
            inbound_qos2: snapshot.inbound_qos2,
            backlog: crate::persist::Backlog::default(),
        });
        if let Some(idx) = self.sessions.by_client_id(client_id) {
            if let Ok(s) = self.session_mut(idx) {
                s.since = Some(now);
            }
        }
        true
    }

    /// Takes in a session kept on the cluster, for a client about to connect here, unless
    /// this broker has one for that client id already; it is then decided like a session
    /// this broker kept itself (Session Present, its subscriptions, its inbound QoS 2 ids).
    /// Its will, if the record held one, is not taken in: the cluster takes it out of the
    /// record and hands it to [`Broker::take_over_remote_will`].
    /// With `resume`, the messages it held or missed follow ([`Broker::handle_cluster_backlog`]):
    /// until then nothing is sent to it, and what is routed to it meanwhile waits behind
    /// them, as for a session's backlog in the store.
    /// Returns whether it was taken in.
    pub fn adopt_session(
        &mut self,
        client_id: &str,
        snapshot: SessionSnapshot,
        resume: bool,
    ) -> bool {
        if self.sessions.by_client_id(client_id).is_some() {
            return false;
        }
        self.restore_session(crate::persist::RestoredSession {
            client_id: Arc::from(client_id),
            state: crate::persist::SessionState {
                version: snapshot.version,
                expiry_interval: snapshot.expiry_interval,
                expires_at: None,
                pending_will: None,
                connected: false,
                username: None,
            },
            subscriptions: snapshot.subscriptions,
            inbound_qos2: snapshot.inbound_qos2,
            backlog: crate::persist::Backlog::default(),
        });
        if resume {
            if let Some(idx) = self.sessions.by_client_id(client_id) {
                if let Ok(s) = self.session_mut(idx) {
                    s.backlog = Some(crate::persist::Backlog::default());
                }
            }
        }
        true
    }

    /// The messages a session taken over from a dead node ([`Broker::adopt_orphan`]) held
    /// or missed follow from the cluster ([`Broker::handle_cluster_backlog`]): until then
    /// nothing is sent to it, should its client connect, and what is routed to it
    /// meanwhile waits behind them. False when there is no such session here.
    pub fn expect_cluster_backlog(&mut self, client_id: &str) -> bool {
        let Some(idx) = self.sessions.by_client_id(client_id) else {
            return false;
        };
        match self.session_mut(idx) {
            Ok(s) => {
                s.backlog = Some(crate::persist::Backlog::default());
                true
            }
            Err(_) => false,
        }
    }

    /// The messages of a session taken in with `resume` ([`Broker::adopt_session`]), read
    /// back from the cluster: `in_flight`, sent on the other node and not completed, are
    /// sent again with their packet ids, PUBLISH with DUP or PUBREL (so a QoS 2 message
    /// whose PUBREC came back is never published twice) [MQTT-4.4.0-1]; `queued`, taken in
    /// there but not sent and published while the session was away, in order per topic, are
    /// matched against its subscriptions here (QoS, Retain As Published, subscription
    /// identifiers, No Local, access) and go before anything routed to it since. Expired
    /// ones are dropped [MQTT-3.3.2-5]; the session's queue limits apply, and when they bite
    /// the newest are dropped, logged.
    /// What was taken in is returned; a session that is not here, or not waiting for its
    /// messages, takes nothing (the caller's invariant is broken then: it shows it).
    pub fn handle_cluster_backlog(
        &mut self,
        now: Instant,
        client_id: &str,
        in_flight: Vec<KeptMessage>,
        queued: Vec<Arc<Message>>,
    ) -> ClusterBacklog {
        let Some(idx) = self.sessions.by_client_id(client_id) else {
            return ClusterBacklog::NoSession;
        };
        if !self.session(idx).is_ok_and(|s| s.backlog.is_some()) {
            return ClusterBacklog::NotWaiting;
        }
        let mut loaded: Vec<LoadedMessage> = in_flight
            .into_iter()
            .filter(|k| k.state != KeptState::Queued)
            .map(|k| {
                let delivery = match self.delivery_for(idx, &k.msg) {
                    Some(mut d) => {
                        d.qos = k.qos;
                        d
                    }
                    // Unsubscribed since it was sent: it is still resent as it was.
                    None => crate::message::Delivery {
                        msg: k.msg,
                        qos: k.qos,
                        retain: false,
                        subscription_ids: Vec::new(),
                        shared_group: None,
                        seq: 0,
                    },
                };
                LoadedMessage {
                    delivery,
                    state: k.state,
                }
            })
            .collect();
        let (max_msgs, max_bytes) = (
            self.limits.max_queued_messages,
            self.limits.max_queued_bytes,
        );
        let (mut count, mut bytes) = self
            .session(idx)
            .map_or((0, 0), |s| (s.queue.len(), s.queued_bytes));
        let mut dropped = 0usize;
        for msg in queued {
            if msg.is_expired(now) {
                self.stats.dropped_expired += 1; // [MQTT-3.3.2-5]
                continue;
            }
            let Some(delivery) = self.delivery_for(idx, &msg) else {
                continue;
            };
            if delivery.qos == makelaar_proto::QoS::AtMostOnce {
                continue;
            }
            let weight = msg.weight();
            if count >= max_msgs || (max_bytes != 0 && bytes + weight > max_bytes) {
                dropped += 1;
                continue;
            }
            count += 1;
            bytes += weight;
            loaded.push(LoadedMessage {
                delivery,
                state: KeptState::Queued,
            });
        }
        if dropped > 0 {
            self.stats.dropped_queue_full += dropped as u64;
            tracing::warn!(
                client_id,
                dropped,
                max_queued_messages = max_msgs,
                max_queued_bytes = max_bytes,
                "session resumed from the cluster with more messages than its queue holds: the newest were dropped (max_queued_messages, max_queued_bytes)"
            );
        }
        let taken = ClusterBacklog::Taken {
            in_flight: loaded
                .iter()
                .filter(|m| m.state != KeptState::Queued)
                .count(),
            queued: loaded
                .iter()
                .filter(|m| m.state == KeptState::Queued)
                .count(),
            dropped,
        };
        self.handle_backlog_loaded(now, client_id, loaded);
        taken
    }

    /// Another cluster node takes the client of `client_id` over: its connection here, if
    /// any, is closed (5.0: DISCONNECT 0x8E Session taken over [MQTT-3.1.4-3]) and the
    /// session ends here without its will being published: the cluster's record of the
    /// session holds the will, and the claiming node decides it by the takeover rules
    /// ([`Broker::take_over_remote_will`]), so that exactly one node does. Returns whether a
    /// connection was closed.
    pub fn hand_over(&mut self, now: Instant, client_id: &str) -> bool {
        let closed = self.close_for_hand_over(now, client_id);
        self.forget_session(now, client_id);
        closed
    }

    /// [`Broker::hand_over`] without its end: the connection is closed (0x8E) and the will
    /// dropped here, and the session stays, offline, so that the shell records where it
    /// stands (what it holds; with the will it had, which the claiming node decides) before
    /// it calls [`Broker::forget_session`]. Returns whether a connection was closed.
    pub fn close_for_hand_over(&mut self, now: Instant, client_id: &str) -> bool {
        if let Some(idx) = self.sessions.by_client_id(client_id) {
            if let Ok(s) = self.session_mut(idx) {
                s.will = None;
                s.pending_will = None;
            }
        }
        self.disconnect_client(now, client_id, ReasonCode::SESSION_TAKEN_OVER)
    }

    /// Ends the session of `client_id` here, if it has no connection: it moved to another
    /// node, which keeps it now. A will waiting for its delay is dropped here: the node the
    /// client connected to took it out of the cluster's record and decided it
    /// ([`Broker::take_over_remote_will`]).
    pub fn forget_session(&mut self, now: Instant, client_id: &str) {
        let Some(idx) = self.sessions.by_client_id(client_id) else {
            return;
        };
        let Ok(s) = self.session_mut(idx) else {
            return;
        };
        if s.conn.is_none() {
            s.pending_will = None;
            self.end_session(now, idx);
        }
    }

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

    /// Hands over the wills of this broker's own sessions that fell due since the last
    /// call, in order. With the cluster on, a will that its rules say is due (a connection
    /// lost [MQTT-3.1.2-8], a Will Delay Interval or session run out [MQTT-3.1.3-9], a
    /// takeover [MQTT-3.1.4-3]) is not published at once: the record of its session on the
    /// cluster may hold it, and another node (the one its client connects to, or the reaper
    /// of this one) may decide it at the same moment. The shell first writes the session's
    /// record without it by compare-and-set (the session changed with it: see
    /// [`Broker::drain_session_changes`]) and publishes it with
    /// [`Broker::publish_remote_will`] only if that write won; a write refused because
    /// another node took the record means that node decides the will, and it is dropped
    /// here. So every will is published by exactly one node.
    pub fn drain_due_wills(&mut self, out: &mut Vec<DueWill>) {
        out.append(&mut self.export.wills);
    }

    /// Hands over the client ids this broker assigned (an empty client id in CONNECT) since
    /// the last call. With the cluster on, such a client claims nothing (its id is unique:
    /// [`Broker::set_assigned_id_node`]), so the shell registers it itself when its session
    /// is to be kept on the cluster (it has a will, or outlives its connection), so that
    /// the reaper of this node finds it.
    pub fn drain_assigned_ids(&mut self, out: &mut Vec<Arc<str>>) {
        out.append(&mut self.export.assigned);
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

    /// Hands a message the cluster gave this node for the share group `group`
    /// (`$share/GROUP/FILTER`: a QoS 0 message through the group's queue subscription, a
    /// QoS 1/2 one from the group's consumer) to one of the group's members here, picked as
    /// on one broker (a connected member with room first; at the QoS granted to it [MQTT-4.8.2-3]). Returns whether a
    /// member took it: `false` when the group has no member here any more (or none may read
    /// the topic), so the cluster offers it to another node. An expired message counts as
    /// taken: it is dropped [MQTT-3.3.2-5].
    pub fn route_shared_remote(&mut self, now: Instant, group: &str, msg: Arc<Message>) -> bool {
        if msg.is_expired(now) {
            self.stats.dropped_expired += 1;
            return true;
        }
        self.route_to_group(now, group, &msg)
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
                received_at: None,
                log_position: std::sync::OnceLock::new(),
            }),
        };
        self.store_retained(&msg);
    }

    /// Closes every client's connection with `reason` (5.0: a DISCONNECT with it first), as
    /// [`Broker::disconnect_client`] does for one: their sessions stay, offline.
    pub fn disconnect_all(&mut self, now: Instant, reason: ReasonCode) {
        let ids: Vec<Arc<str>> = self
            .sessions
            .iter()
            .filter(|s| s.conn.is_some())
            .map(|s| s.client_id.clone())
            .collect();
        for id in ids {
            self.disconnect_client(now, &id, reason);
        }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::super::tests::{connect, publish, subscribe, Harness};
    use super::super::RemoteWill;
    use super::*;
    use makelaar_proto::{ProtocolVersion, QoS, Unsubscribe};

    fn changes(h: &mut Harness) -> Vec<FilterChange> {
        let mut out = Vec::new();
        h.broker.drain_filter_changes(&mut out);
        out
    }

    #[test]
    fn off_by_default_records_nothing() {
        let mut h = Harness::new();
        h.connect(1, connect("a", ProtocolVersion::V5, true));
        h.packet(1, subscribe(1, "a/#", QoS::AtMostOnce));
        h.packet(1, publish("a/b", QoS::AtLeastOnce, 2, "x"));
        let mut out = Vec::new();
        h.broker.drain_exported(&mut out);
        assert!(out.is_empty());
        assert!(changes(&mut h).is_empty());
    }

    #[test]
    fn no_matching_subscribers_is_said_only_when_this_broker_is_the_whole_broker() {
        use makelaar_proto::ReasonCode;
        let reason = |cluster: bool| {
            let mut h = Harness::new();
            if cluster {
                h.broker.enable_cluster_export();
            }
            h.connect(1, connect("pub", ProtocolVersion::V5, true));
            let out = h.packet(1, publish("nobody/here", QoS::AtLeastOnce, 1, "m"));
            match &out[..] {
                [Packet::PubAck(a)] => a.reason,
                other => panic!("expected one PUBACK, got {other:?}"),
            }
        };
        // (5.0 section 3.4.2.1) 0x10 on one broker; a cluster node cannot know the other
        // nodes' subscribers, so it says 0x00.
        assert_eq!(reason(false), ReasonCode::NO_MATCHING_SUBSCRIBERS);
        assert_eq!(reason(true), ReasonCode::SUCCESS);
    }

    #[test]
    fn distinct_filters_are_counted_over_sessions() {
        let mut h = Harness::new();
        h.broker.enable_cluster_export();
        h.connect(1, connect("a", ProtocolVersion::V5, true));
        h.connect(2, connect("b", ProtocolVersion::V5, true));
        h.packet(1, subscribe(1, "s/+", QoS::AtMostOnce));
        // Again from the same session: replaced, not counted twice.
        h.packet(1, subscribe(2, "s/+", QoS::AtLeastOnce));
        h.packet(2, subscribe(1, "s/+", QoS::AtMostOnce));
        h.packet(2, subscribe(2, "$share/g/s/+", QoS::AtMostOnce));
        assert_eq!(
            changes(&mut h),
            [
                FilterChange::Added("s/+".into()),
                FilterChange::GroupAdded("$share/g/s/+".into())
            ]
        );
        let unsub = |id, f: &str| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id: id,
                filters: vec![f.into()],
                ..Default::default()
            })
        };
        h.packet(1, unsub(3, "s/+"));
        assert!(changes(&mut h).is_empty());
        h.packet(2, unsub(3, "s/+"));
        assert_eq!(changes(&mut h), [FilterChange::Removed("s/+".into())]);
        // The session ends: its last (shared) subscription goes with it.
        h.broker.handle_connection_lost(h.now, 2);
        assert_eq!(
            changes(&mut h),
            [FilterChange::GroupRemoved("$share/g/s/+".into())]
        );
    }

    #[test]
    fn share_groups_are_served_once_through_the_cluster() {
        use super::super::tests::publishes;
        let mut h = Harness::new();
        h.broker.enable_cluster_export();
        h.connect(1, connect("m1", ProtocolVersion::V5, true));
        h.connect(2, connect("m2", ProtocolVersion::V5, true));
        h.connect(3, connect("plain", ProtocolVersion::V5, true));
        h.connect(4, connect("pub", ProtocolVersion::V5, true));
        h.packet(1, subscribe(1, "$share/g/t/#", QoS::AtLeastOnce));
        h.packet(2, subscribe(1, "$share/g/t/#", QoS::AtLeastOnce));
        h.packet(3, subscribe(1, "t/#", QoS::AtLeastOnce));
        // One group, followed once, and one plain filter.
        assert_eq!(
            changes(&mut h),
            [
                FilterChange::GroupAdded("$share/g/t/#".into()),
                FilterChange::Added("t/#".into())
            ]
        );
        for c in 1..=3 {
            h.take(c);
        }
        // Published here: the plain subscriber gets it at once, the group's members do
        // not (the cluster hands it to one member somewhere), and the publisher is not
        // told that nobody matched.
        let acks = h.packet(4, publish("t/1", QoS::AtLeastOnce, 1, "x"));
        assert!(matches!(acks.as_slice(), [Packet::PubAck(a)] if a.reason == ReasonCode::SUCCESS));
        assert!(publishes(&h.take(1)).is_empty());
        assert!(publishes(&h.take(2)).is_empty());
        assert_eq!(publishes(&h.take(3)).len(), 1);
        // A message from another node through a plain filter: not to the group either.
        let mut out = Vec::new();
        h.broker.drain_exported(&mut out);
        let msg = out[0].msg.clone();
        assert_eq!(h.broker.route_remote(h.now, msg.clone()), 2);
        assert!(publishes(&h.take(1)).is_empty());
        assert!(publishes(&h.take(2)).is_empty());
        h.take(3);
        // The cluster gives this node the group's copy: exactly one member gets each,
        // taking turns.
        for _ in 0..4 {
            assert!(h
                .broker
                .route_shared_remote(h.now, "$share/g/t/#", msg.clone()));
        }
        assert_eq!(publishes(&h.take(1)).len(), 2);
        assert_eq!(publishes(&h.take(2)).len(), 2);
        assert!(publishes(&h.take(3)).is_empty());
        // No member of that group here: the cluster offers it elsewhere.
        assert!(!h
            .broker
            .route_shared_remote(h.now, "$share/other/t/#", msg.clone()));
        h.broker.handle_connection_lost(h.now, 1);
        h.broker.handle_connection_lost(h.now, 2);
        assert_eq!(
            changes(&mut h),
            [FilterChange::GroupRemoved("$share/g/t/#".into())]
        );
        assert!(!h.broker.route_shared_remote(h.now, "$share/g/t/#", msg));
    }

    #[test]
    fn client_messages_are_exported_and_remote_ones_are_not() {
        let mut h = Harness::new();
        h.broker.enable_cluster_export();
        h.connect(1, connect("a", ProtocolVersion::V5, true));
        h.packet(1, subscribe(1, "t", QoS::AtLeastOnce));
        h.packet(1, publish("t", QoS::AtLeastOnce, 2, "mine"));
        let mut out = Vec::new();
        h.broker.drain_exported(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].from, Some(1));
        h.take(1);
        let remote = Arc::new(Message {
            origin: Some(Arc::from("elsewhere")),
            ..(*out[0].msg).clone()
        });
        assert_eq!(h.broker.route_remote(h.now, remote), 1);
        out.clear();
        h.broker.drain_exported(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn remote_retained_messages_are_set_and_cleared() {
        let mut h = Harness::new();
        h.broker.enable_cluster_export();
        let msg = Arc::new(Message {
            topic: Arc::from("r"),
            payload: bytes::Bytes::from_static(b"v"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: makelaar_proto::Properties::default(),
            expires_at: None,
            origin: None,
            received_at: None,
            log_position: std::sync::OnceLock::new(),
        });
        h.broker.apply_remote_retained("r", Some(msg));
        h.connect(1, connect("a", ProtocolVersion::V5, true));
        let got = h.packet(1, subscribe(1, "r", QoS::AtLeastOnce));
        assert_eq!(super::super::tests::publishes(&got).len(), 1);
        h.broker.apply_remote_retained("r", None);
        let got = h.packet(1, subscribe(2, "r", QoS::AtLeastOnce));
        assert!(super::super::tests::publishes(&got).is_empty());
    }

    #[test]
    fn a_kept_session_is_snapshot_adopted_and_forgotten() {
        let mut h = Harness::new();
        h.broker.enable_cluster_export();
        let mut c = connect("p", ProtocolVersion::V5, false);
        c.properties.session_expiry_interval = Some(300);
        h.connect(1, c.clone());
        h.packet(1, subscribe(1, "k/#", QoS::AtLeastOnce));
        let mut ids = Vec::new();
        h.broker.drain_session_changes(&mut ids);
        assert_eq!(ids, [Arc::<str>::from("p")]);
        let snap = h.broker.session_snapshot("p").unwrap();
        assert_eq!(snap.expiry_interval, 300);
        assert_eq!(snap.subscriptions.len(), 1);
        assert_eq!(snap.subscriptions[0].0, "k/#");
        // A session that ends with its connection is not kept.
        h.connect(2, connect("q", ProtocolVersion::V5, true));
        assert!(h.broker.session_snapshot("q").is_none());

        // Another broker takes it in: the CONNECT finds it, with its subscription.
        let mut other = Harness::new();
        other.broker.enable_cluster_export();
        other.broker.adopt_session("p", snap, false);
        let ack = other.connect(1, c);
        assert!(ack.session_present);
        other.connect(2, connect("pub", ProtocolVersion::V5, true));
        other.packet(2, publish("k/x", QoS::AtLeastOnce, 1, "v"));
        assert_eq!(super::super::tests::publishes(&other.take(1)).len(), 1);

        // The first broker forgets its copy only while it has no connection.
        h.broker.forget_session(h.now, "p");
        assert!(h.broker.session_snapshot("p").is_some());
        h.broker.handle_connection_lost(h.now, 1);
        h.broker.forget_session(h.now, "p");
        assert!(h.broker.session_snapshot("p").is_none());
        ids.clear();
        h.broker.drain_session_changes(&mut ids);
        assert!(ids.contains(&Arc::<str>::from("p")));
    }

    /// A session leaves broker A with a QoS 2 message whose PUBREC came back, a QoS 1
    /// message in flight and one queued, and resumes on broker B from the cluster.
    #[test]
    fn a_session_resumes_on_another_broker_with_what_it_held() {
        use makelaar_proto::PubAck;
        let mut a = Harness::new();
        a.broker.enable_cluster_export();
        let mut c = connect("p", ProtocolVersion::V5, false);
        c.properties.session_expiry_interval = Some(300);
        c.properties.receive_maximum = Some(2);
        a.connect(1, c.clone());
        a.packet(1, subscribe(1, "k/#", QoS::ExactlyOnce));
        a.connect(2, connect("pub", ProtocolVersion::V5, true));
        for (i, (qos, payload)) in [
            (QoS::ExactlyOnce, "two"),
            (QoS::AtLeastOnce, "one"),
            (QoS::AtLeastOnce, "queued"),
        ]
        .into_iter()
        .enumerate()
        {
            a.packet(2, publish("k/x", qos, i as u16 + 1, payload));
        }
        let sent = a.take(1);
        let sent = super::super::tests::publishes(&sent);
        assert_eq!(sent.len(), 2, "a window of two");
        let (q2, q1) = (sent[0].packet_id, sent[1].packet_id);
        a.packet(1, Packet::PubRec(PubAck::new(q2)));
        a.broker.handle_connection_lost(a.now, 1);
        let mut ids = Vec::new();
        a.broker.drain_session_changes(&mut ids);
        assert!(ids.contains(&Arc::from("p")), "going offline is recorded");
        let snap = a.broker.session_snapshot("p").unwrap();
        assert!(!snap.connected);
        let states: Vec<_> = snap.outbound.iter().map(|k| (k.qos, k.state)).collect();
        assert_eq!(
            states,
            [
                (QoS::ExactlyOnce, KeptState::AwaitingComp(q2)),
                (QoS::AtLeastOnce, KeptState::AwaitingAck(q1)),
                (QoS::AtLeastOnce, KeptState::Queued),
            ]
        );

        let mut b = Harness::new();
        b.broker.enable_cluster_export();
        let outbound = snap.outbound.clone();
        b.broker.adopt_session("p", snap, true);
        let ack = b.connect(1, c);
        assert!(ack.session_present);
        // Nothing goes out before the cluster's messages are back; a message routed to the
        // session meanwhile waits behind them.
        let mut load = Vec::new();
        while let Some(a) = b.broker.poll_action() {
            if let Action::LoadBacklog(id) = a {
                load.push(id);
            }
        }
        assert_eq!(load, [Arc::<str>::from("p")]);
        b.connect(2, connect("pub", ProtocolVersion::V5, true));
        b.packet(2, publish("k/x", QoS::AtLeastOnce, 9, "live"));
        assert!(super::super::tests::publishes(&b.take(1)).is_empty());
        let mut missed = Message::clone(&outbound[2].msg);
        missed.payload = bytes::Bytes::from_static(b"missed");
        let (in_flight, queued): (Vec<_>, Vec<_>) = outbound
            .into_iter()
            .partition(|k| k.state != KeptState::Queued);
        let mut queued: Vec<_> = queued.into_iter().map(|k| k.msg).collect();
        queued.push(Arc::new(missed));
        b.broker
            .handle_cluster_backlog(b.now, "p", in_flight, queued);
        let got = b.take(1);
        // [MQTT-4.4.0-1] PUBREL for the QoS 2 message, never its PUBLISH again; the QoS 1
        // message again with DUP and its packet id [MQTT-3.3.1-1].
        assert!(matches!(&got[0], Packet::PubRel(r) if r.packet_id == q2));
        let Packet::Publish(p) = &got[1] else {
            panic!("{got:?}")
        };
        assert!(p.dup);
        assert_eq!((p.packet_id, &p.payload[..]), (q1, &b"one"[..]));
        assert_eq!(got.len(), 2, "the window is full");
        let mut pending = b.packet(1, Packet::PubComp(PubAck::new(q2)));
        pending.extend(b.packet(1, Packet::PubAck(PubAck::new(q1))));
        let mut rest = Vec::new();
        let mut i = 0;
        while let Some(p) = pending.get(i).cloned() {
            i += 1;
            if let Packet::Publish(p) = p {
                rest.push(String::from_utf8(p.payload.to_vec()).unwrap());
                pending.extend(b.packet(1, Packet::PubAck(PubAck::new(p.packet_id))));
            }
        }
        assert_eq!(rest, ["queued", "missed", "live"], "in order, once");
    }

    #[test]
    fn a_resumed_session_keeps_its_queue_limit() {
        let mut b = Harness::with(crate::limits::Limits {
            max_queued_messages: 2,
            ..crate::limits::Limits::default()
        });
        let snap = SessionSnapshot {
            version: ProtocolVersion::V311,
            expiry_interval: 60,
            subscriptions: vec![(
                "t".into(),
                crate::session::Subscription {
                    options: makelaar_proto::SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        ..Default::default()
                    },
                    id: None,
                },
            )],
            offline_since: None,
            will: None,
            connected: false,
            inbound_qos2: vec![7],
            outbound: Vec::new(),
        };
        b.broker.adopt_session("s", snap, true);
        let msg = |topic: &str, payload: &'static str, expired: bool| {
            Arc::new(Message {
                topic: Arc::from(topic),
                payload: bytes::Bytes::from_static(payload.as_bytes()),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: makelaar_proto::Properties::default(),
                expires_at: expired.then_some(b.now),
                origin: None,
                received_at: None,
                log_position: std::sync::OnceLock::new(),
            })
        };
        let queued = vec![
            msg("t", "1", false),
            msg("other", "x", false),
            msg("t", "old", true),
            msg("t", "2", false),
            msg("t", "3", false),
        ];
        b.broker
            .handle_cluster_backlog(b.now, "s", Vec::new(), queued);
        assert_eq!(b.broker.stats().dropped_queue_full, 1);
        assert_eq!(b.broker.stats().dropped_expired, 1);
        let ack = b.connect(1, connect("s", ProtocolVersion::V311, false));
        assert!(ack.session_present);
        let got = b.take(1);
        let payloads: Vec<_> = super::super::tests::publishes(&got)
            .iter()
            .map(|p| p.payload.clone())
            .collect();
        assert_eq!(payloads, [&b"1"[..], &b"2"[..]]);
        // The inbound QoS 2 id travelled: a PUBLISH resent with it is not routed again
        // [MQTT-4.3.3-10].
        b.packet(1, subscribe(2, "t", QoS::AtLeastOnce));
        let again = b.packet(1, publish("t", QoS::ExactlyOnce, 7, "dup"));
        assert!(matches!(&again[..], [Packet::PubRec(r)] if r.packet_id == 7));
    }

    fn with_will(id: &str, clean: bool, expiry: u32, delay: u32) -> makelaar_proto::Connect {
        let mut c = connect(id, ProtocolVersion::V5, clean);
        c.properties.session_expiry_interval = Some(expiry);
        c.will = Some(Will {
            topic: "w".into(),
            payload: bytes::Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: makelaar_proto::Properties {
                will_delay_interval: (delay > 0).then_some(delay),
                ..Default::default()
            },
        });
        c
    }

    /// A subscriber to the will topic on connection 9.
    fn watcher(h: &mut Harness) {
        h.connect(9, connect("watcher", ProtocolVersion::V5, true));
        h.packet(9, subscribe(1, "w", QoS::AtLeastOnce));
    }

    fn wills_seen(h: &mut Harness) -> usize {
        super::super::tests::publishes(&h.take(9)).len()
    }

    #[test]
    fn a_connection_with_a_will_is_kept_until_the_will_is_decided() {
        let mut h = Harness::new();
        h.broker.enable_cluster_export();
        // A session that ends with its connection is kept for its will only.
        h.connect(1, with_will("clean", true, 0, 0));
        let snap = h.broker.session_snapshot("clean").unwrap();
        assert_eq!((snap.expiry_interval, snap.offline_since), (0, None));
        assert_eq!(snap.will.unwrap().will.topic, "w");
        // Lost: the will is published [MQTT-3.1.2-8] and nothing is kept.
        h.broker.handle_connection_lost(h.now, 1);
        assert!(h.broker.session_snapshot("clean").is_none());

        // A delayed will of a persistent session waits offline, and is kept with the time
        // its connection ended; once published, the session is kept without it.
        h.connect(2, with_will("slow", false, 300, 10));
        let mut ids = Vec::new();
        h.broker.drain_session_changes(&mut ids);
        h.broker.handle_connection_lost(h.now, 2);
        ids.clear();
        h.broker.drain_session_changes(&mut ids);
        assert!(ids.contains(&Arc::<str>::from("slow")), "{ids:?}");
        let snap = h.broker.session_snapshot("slow").unwrap();
        assert_eq!(snap.offline_since, Some(h.now));
        assert!(snap.will.is_some());
        h.advance(10);
        ids.clear();
        h.broker.drain_session_changes(&mut ids);
        assert!(ids.contains(&Arc::<str>::from("slow")), "{ids:?}");
        assert!(h.broker.session_snapshot("slow").unwrap().will.is_none());

        // A normal DISCONNECT discards it [MQTT-3.1.2-10]: kept without it.
        h.connect(3, with_will("polite", false, 300, 0));
        h.packet(3, Packet::Disconnect(Disconnect::default()));
        assert!(h.broker.session_snapshot("polite").unwrap().will.is_none());
    }

    fn due(h: &mut Harness) -> Vec<DueWill> {
        let mut out = Vec::new();
        h.broker.drain_due_wills(&mut out);
        out
    }

    #[test]
    fn with_the_cluster_a_due_will_waits_for_the_cluster_to_take_it_out() {
        let mut h = Harness::new();
        h.broker.enable_cluster_export();
        watcher(&mut h);
        // Lost: due at once [MQTT-3.1.2-8], but held back, and the session's record is
        // to be written (here: deleted, the session ends with its connection) first.
        h.connect(1, with_will("lost", true, 0, 0));
        let mut ids = Vec::new();
        h.broker.drain_session_changes(&mut ids);
        h.broker.handle_connection_lost(h.now, 1);
        assert_eq!(
            wills_seen(&mut h),
            0,
            "not published before the cluster decides"
        );
        let wills = due(&mut h);
        assert_eq!(wills.len(), 1);
        assert_eq!(&*wills[0].client_id, "lost");
        assert_eq!(wills[0].will.will.topic, "w");
        ids.clear();
        h.broker.drain_session_changes(&mut ids);
        assert_eq!(ids, [Arc::<str>::from("lost")]);
        assert!(h.broker.session_snapshot("lost").is_none());
        // The cluster took it out: published once, as its client would have.
        let w = wills.into_iter().next().unwrap();
        h.broker
            .publish_remote_will(h.now, &w.client_id, None, w.will.will);
        assert_eq!(wills_seen(&mut h), 1);
        assert!(due(&mut h).is_empty());

        // A delayed will falls due after its delay [MQTT-3.1.3-9], held back the same way,
        // and the record then keeps the session without it.
        h.connect(2, with_will("slow", false, 300, 10));
        h.broker.handle_connection_lost(h.now, 2);
        h.advance(9);
        assert!(due(&mut h).is_empty());
        h.advance(1);
        assert_eq!(due(&mut h).len(), 1);
        assert!(h.broker.session_snapshot("slow").unwrap().will.is_none());
        // Its session ending before its delay: due with the end [MQTT-3.1.3-9].
        h.connect(3, with_will("short", false, 5, 30));
        h.broker.handle_connection_lost(h.now, 3);
        h.advance(5);
        assert_eq!(due(&mut h).len(), 1);
        assert!(h.broker.session_snapshot("short").is_none());
        // A normal DISCONNECT discards it [MQTT-3.1.2-10]: nothing due.
        h.connect(4, with_will("polite", true, 0, 0));
        h.packet(4, Packet::Disconnect(Disconnect::default()));
        assert!(due(&mut h).is_empty());
        assert_eq!(wills_seen(&mut h), 0);
    }

    #[test]
    fn with_the_cluster_a_local_takeover_holds_the_old_will_back_too() {
        let mut h = Harness::new();
        h.broker.enable_cluster_export();
        watcher(&mut h);
        // [MQTT-3.1.4-3] the old connection is closed; its will is due [MQTT-3.1.2-8] ...
        h.connect(1, with_will("t", false, 300, 0));
        h.connect(2, with_will("t", false, 300, 0));
        assert_eq!(due(&mut h).len(), 1);
        // ... unless delayed while the session goes on [MQTT-3.1.3-9].
        h.connect(3, with_will("d", false, 300, 30));
        h.connect(4, with_will("d", false, 300, 30));
        assert!(due(&mut h).is_empty());
        assert_eq!(wills_seen(&mut h), 0);
    }

    #[test]
    fn assigned_ids_carry_the_node_and_are_reported() {
        let mut h = Harness::new();
        h.broker.enable_cluster_export();
        h.broker.set_assigned_id_node("m1");
        let ack = h.connect(1, with_will("", true, 0, 0));
        let id = ack.properties.assigned_client_identifier.unwrap();
        assert!(id.starts_with("makelaar-m1-"), "{id}");
        let mut ids = Vec::new();
        h.broker.drain_assigned_ids(&mut ids);
        assert_eq!(ids, [Arc::<str>::from(id.as_str())]);
        // Its session is kept for its will, like any other client's.
        assert!(h.broker.session_snapshot(&id).unwrap().will.is_some());
        // A refused CONNECT assigns nothing (3.1.1 without clean session [MQTT-3.1.3-8]).
        let mut c = connect("", ProtocolVersion::V311, false);
        c.will = None;
        h.broker.handle_connect(h.now, 2, c);
        ids.clear();
        h.broker.drain_assigned_ids(&mut ids);
        assert!(ids.is_empty());
    }

    #[test]
    fn a_hand_over_closes_without_publishing_the_will() {
        let mut h = Harness::new();
        h.broker.enable_cluster_export();
        watcher(&mut h);
        h.connect(1, with_will("moving", false, 300, 0));
        assert!(h.broker.hand_over(h.now, "moving"));
        assert_eq!(
            h.closed(1),
            Some(CloseReason::Server(ReasonCode::SESSION_TAKEN_OVER))
        );
        assert!(h.broker.session_snapshot("moving").is_none());
        assert_eq!(wills_seen(&mut h), 0, "the claiming node decides the will");
    }

    #[test]
    fn a_remote_will_is_decided_by_the_takeover_rules() {
        let remote = |expiry: u32, delay: u32, offline: Option<u64>| {
            let c = with_will("x", false, expiry, delay);
            RemoteWill {
                will: Box::new(c.will.unwrap()),
                username: None,
                expiry_interval: expiry,
                offline_for: offline.map(Duration::from_secs),
            }
        };
        let id: Arc<str> = Arc::from("x");
        // (will, CONNECT's clean start) -> published?
        let cases = [
            // An open connection taken over: published [MQTT-3.1.2-8] [MQTT-3.1.4-3] ...
            (remote(300, 0, None), false, true),
            (remote(0, 30, None), false, true),
            (remote(300, 30, None), true, true),
            // ... unless delayed and the session goes on [MQTT-3.1.3-9].
            (remote(300, 30, None), false, false),
            // Offline and waiting: resumed in time, dropped; a clean start ends the session.
            (remote(300, 30, Some(10)), false, false),
            (remote(300, 30, Some(10)), true, true),
            // Due already (its delay, or its session, ran out meanwhile).
            (remote(300, 30, Some(31)), false, true),
            (remote(20, 30, Some(21)), false, true),
        ];
        for (i, (w, clean, expected)) in cases.into_iter().enumerate() {
            let mut h = Harness::new();
            watcher(&mut h);
            assert_eq!(
                h.broker.take_over_remote_will(h.now, &id, w, clean),
                expected,
                "case {i}"
            );
            assert_eq!(wills_seen(&mut h), usize::from(expected), "case {i}");
        }
    }

    #[test]
    fn an_orphan_publishes_its_will_when_due_unless_its_client_returns() {
        let mut h = Harness::new();
        h.broker.enable_cluster_export();
        watcher(&mut h);
        let mut c = with_will("orphan", false, 300, 10);
        h.connect(1, c.clone());
        let snap = h.broker.session_snapshot("orphan").unwrap();
        let mut other = Harness::new();
        watcher(&mut other);
        assert!(other.broker.adopt_orphan(
            other.now,
            "orphan",
            snap.clone(),
            Duration::from_secs(5),
            Some(Duration::from_secs(60))
        ));
        other.advance(4);
        assert_eq!(wills_seen(&mut other), 0);
        other.advance(1);
        assert_eq!(wills_seen(&mut other), 1);
        assert!(other
            .broker
            .session_snapshot("orphan")
            .unwrap()
            .will
            .is_none());

        // Its client returns in time: the session goes on, the will is not published.
        let mut third = Harness::new();
        watcher(&mut third);
        third
            .broker
            .adopt_orphan(third.now, "orphan", snap, Duration::from_secs(5), None);
        c.will = None;
        assert!(third.connect(1, c).session_present);
        third.advance(10);
        assert_eq!(wills_seen(&mut third), 0);
    }

    #[test]
    fn a_client_is_disconnected_with_the_reason_given() {
        let mut h = Harness::new();
        h.connect(1, connect("a", ProtocolVersion::V5, true));
        assert!(h
            .broker
            .disconnect_client(h.now, "a", ReasonCode::SESSION_TAKEN_OVER));
        assert_eq!(
            h.closed(1),
            Some(CloseReason::Server(ReasonCode::SESSION_TAKEN_OVER))
        );
        assert!(!h
            .broker
            .disconnect_client(h.now, "nobody", ReasonCode::SESSION_TAKEN_OVER));
    }
}
