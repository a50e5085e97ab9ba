//! CONNECT, takeover, DISCONNECT, connection loss, wills and session expiry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use makelaar_proto::{
    ConnAck, Connect, Disconnect, Packet, Properties, ProtocolVersion, ReasonCode,
};

use super::will::{session_left, will_wait};
use super::{Action, Broker, CloseReason, SessionIdx};
use crate::conn::{effective_keep_alive, Violation};
use crate::session::{ClientLimits, ConnId, Session};

impl Broker {
    /// A decoded CONNECT on a new connection: answers CONNACK and, for a resumed session,
    /// re-sends what was in flight and what was queued. A refused CONNECT is answered and
    /// the connection closed [MQTT-3.2.2-7].
    ///
    /// Authentication is the shell's: it hands over only CONNECTs it accepted, with
    /// `connect.username` set to the identity it authenticated (the certificate's name with
    /// `use_identity_as_username`; `None` for an anonymous client) and the password already
    /// dropped. That username is what access checks use from now on (see [`crate::auth`]).
    ///
    /// A CONNECT whose client id a live connection holds is decided only after that
    /// connection has drained (see [`Action::Drain`]); its CONNACK comes then.
    pub fn handle_connect(&mut self, now: Instant, conn: ConnId, mut connect: Connect) {
        if let Err(reason) = self.check_connect(&connect) {
            self.refuse(conn, reason, connect.protocol);
            return;
        }
        let assigned = connect.client_id.is_empty();
        if assigned {
            // A new id: nobody holds it, nothing to wait for.
            connect.client_id = self.assign_client_id();
            let client_id: Arc<str> = Arc::from(connect.client_id.as_str());
            self.decide_connect(now, conn, client_id.clone(), connect, true);
            if self.sessions.by_conn(conn).is_some() {
                self.export.assigned(&client_id);
            }
            return;
        }
        let client_id: Arc<str> = Arc::from(connect.client_id.as_str());
        // Held by a live connection: what that client sent first (a DISCONNECT, say) must
        // count before this CONNECT is decided (see `park`).
        if self.must_wait(&client_id) {
            self.park(now, conn, &client_id, connect);
        } else {
            self.decide_connect(now, conn, client_id, connect, false);
        }
    }

    /// Decides a checked CONNECT: a takeover if a live connection still holds its client id,
    /// else a plain connect; CONNACK and what the session resumes with.
    pub(super) fn decide_connect(
        &mut self,
        now: Instant,
        conn: ConnId,
        client_id: Arc<str>,
        connect: Connect,
        assigned: bool,
    ) {
        let v5 = connect.protocol.is_v5();
        let existing = self.sessions.by_client_id(&client_id);
        let is_takeover = existing.is_some_and(|i| self.session(i).is_ok_and(|s| s.conn.is_some()));
        let max = self.limits.max_connections;
        if max != 0 && !is_takeover && self.sessions.connected() >= max {
            tracing::warn!(
                max_connections = max,
                "connection refused: max_connections reached"
            );
            self.refuse(conn, ReasonCode::QUOTA_EXCEEDED, connect.protocol);
            return;
        }
        if let Some(idx) = existing {
            self.take_over(now, idx, &connect);
        }
        let (idx, session_present) = self.open_session(now, &client_id, &connect);
        self.attach(now, idx, conn, &connect);
        let mut ack = ConnAck {
            session_present,
            ..ConnAck::default()
        };
        if v5 {
            ack.properties = self.connack_properties(&connect, assigned);
        }
        self.send(conn, Packet::ConnAck(ack));
        self.stats.max_connected = self.stats.max_connected.max(self.sessions.connected());
        if session_present && self.request_backlog(idx) {
            return; // sending resumes once the store has handed the backlog back
        }
        if session_present {
            self.resend_inflight(now, idx);
        }
        self.fill_window(now, idx);
    }

    fn check_connect(&self, connect: &Connect) -> Result<(), ReasonCode> {
        let id = &connect.client_id;
        if id.is_empty() {
            // [MQTT-3.1.3-8] 3.1.1: an empty id needs clean session; 3.1 has no empty ids.
            let allowed = self.limits.allow_zero_length_client_id
                && match connect.protocol {
                    ProtocolVersion::V31 => false,
                    ProtocolVersion::V311 => connect.clean_start,
                    ProtocolVersion::V5 => true,
                };
            if !allowed {
                return Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
            }
        }
        if id.len() > self.limits.max_client_id_len {
            return Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
        }
        // No enhanced authentication method is configured [MQTT-4.12.0-1].
        if connect.properties.authentication_method.is_some() {
            return Err(ReasonCode::BAD_AUTHENTICATION_METHOD);
        }
        if let Some(will) = &connect.will {
            if will.qos as u8 > self.limits.max_qos {
                return Err(ReasonCode::QOS_NOT_SUPPORTED); // [MQTT-3.2.2-12]
            }
            if will.retain && !self.limits.retain_available {
                return Err(ReasonCode::RETAIN_NOT_SUPPORTED); // [MQTT-3.2.2-13]
            }
            if let Some(levels) = self.limits.excess_topic_levels(&will.topic) {
                let max = self.limits.max_topic_levels;
                super::publish::log_topic_too_deep(id, "will topic", levels, max);
                // 5.0 CONNACK 0x90: "The Will Topic Name is not malformed, but is not
                // accepted by this Server" (section 3.2.2.2).
                return Err(ReasonCode::TOPIC_NAME_INVALID);
            }
        }
        Ok(())
    }

    pub(super) fn refuse(&mut self, conn: ConnId, reason: ReasonCode, version: ProtocolVersion) {
        tracing::debug!(conn, %reason, "CONNECT refused");
        self.send(conn, crate::conn::refusal(version, reason));
        // [MQTT-3.2.2-7] nothing follows a refusing CONNACK.
        self.actions
            .push_back(Action::Close(conn, CloseReason::Server(reason)));
    }

    fn assign_client_id(&mut self) -> String {
        loop {
            self.assigned_ids += 1;
            // With a cluster node's name in it, unique across the cluster too.
            let id = match &self.id_node {
                Some(node) => format!("makelaar-{node}-{:x}-{}", self.id_seed, self.assigned_ids),
                None => format!("makelaar-{:x}-{}", self.id_seed, self.assigned_ids),
            };
            if self.sessions.by_client_id(&id).is_none() {
                return id;
            }
        }
    }

    /// Another connection holds this client id: close it (5.0: DISCONNECT 0x8E
    /// [MQTT-3.1.4-3]) and publish its will unless the session carries on and the will
    /// was to wait [MQTT-3.1.3-9].
    fn take_over(&mut self, now: Instant, idx: SessionIdx, connect: &Connect) {
        // Ok(None): the session is offline, there is no connection to take over.
        let Ok(Some(old)) = self.sessions.take_conn(idx) else {
            return;
        };
        let Ok(s) = self.session_mut(idx) else {
            return;
        };
        let old_v5 = s.version.is_v5();
        // A session that lasts only as long as its network connection (3.1.1 CleanSession
        // 1, 5.0 Session Expiry 0) ends with the connection closed here [MQTT-3.1.2-6]
        // [MQTT-3.1.2-23]: the new connection must not find it (no session present).
        let ends = s.expiry_interval == 0;
        let will = s.will.take();
        if old_v5 {
            let d = Disconnect {
                reason: ReasonCode::SESSION_TAKEN_OVER,
                ..Disconnect::default()
            };
            self.send(old, Packet::Disconnect(d));
        }
        let reason = CloseReason::Server(ReasonCode::SESSION_TAKEN_OVER);
        self.actions.push_back(Action::Close(old, reason));
        if let Some(will) = will {
            let delayed = will.properties.will_delay_interval.unwrap_or(0) > 0;
            let session_goes_on = !connect.clean_start && !ends;
            let publish = self.published_at_takeover(delayed, session_goes_on);
            // Published here, before the new connection's CONNACK is queued: routed and, if
            // retained, stored before anything the new connection publishes.
            if publish {
                self.publish_will(now, idx, will);
            }
        }
        if ends {
            self.end_session(now, idx);
        }
    }

    /// Finds or creates the session for `client_id`: returns it and the session-present flag.
    fn open_session(
        &mut self,
        now: Instant,
        client_id: &Arc<str>,
        c: &Connect,
    ) -> (SessionIdx, bool) {
        if let Some(idx) = self.sessions.by_client_id(client_id) {
            if c.clean_start {
                self.end_session(now, idx); // [MQTT-3.1.2-4] clean start discards it
            } else {
                self.cancel_timer(idx);
                if let Ok(s) = self.session_mut(idx) {
                    // [MQTT-3.1.3-9] reconnecting in time means the delayed will is not sent.
                    s.pending_will = None;
                    s.will_at = None;
                    s.expires_at = None;
                }
                return (idx, true);
            }
        }
        let client = ClientLimits {
            inflight_window: 1,
            max_packet_size: None,
            problem_information: true,
        };
        let session = Session::new(client_id.clone(), c.protocol, client);
        (self.insert_session(session), false)
    }

    /// Adds a new session, indexed by client id.
    pub(super) fn insert_session(&mut self, session: Session) -> SessionIdx {
        self.sessions.insert(session)
    }

    /// Binds the new connection to the session with what its CONNECT asked for.
    fn attach(&mut self, now: Instant, idx: SessionIdx, conn: ConnId, c: &Connect) {
        let max_inflight = self.limits.max_inflight_messages;
        let expiry = self.session_expiry_for(c);
        let keep_alive = effective_keep_alive(c, &self.limits).0;
        let bridge = self.policy.bridges.contains_key(c.client_id.as_str());
        let Ok(s) = self.sessions.attach(idx, conn) else {
            return;
        };
        // A bridge's relay passes these packet ids on to the remote and keeps the ones
        // above for its own packets there (see `crate::bridge`), so that they never name a
        // relayed exchange still open in a resumed remote session [MQTT-2.2.1-3].
        s.id_ceiling = if bridge {
            crate::bridge::RELAYED_ID_MAX
        } else {
            u16::MAX
        };
        s.keep_alive = keep_alive;
        s.since = Some(now);
        s.version = c.protocol;
        // The identity may change between connections of one client id; what is queued for
        // the session is checked against the new one as it is sent.
        s.username = c.username.as_deref().map(Arc::from);
        // Boxed: most sessions have no will, and a will is large (it carries properties).
        s.will = c.will.clone().map(Box::new);
        s.expiry_interval = expiry;
        let receive_max = c.properties.receive_maximum.unwrap_or(u16::MAX);
        s.client = ClientLimits {
            inflight_window: receive_max.min(max_inflight).max(1),
            max_packet_size: c.properties.maximum_packet_size,
            problem_information: c.properties.request_problem_information != Some(0),
        };
        self.journal_session(idx);
        if bridge {
            self.prune_bridge_subscriptions(idx);
        }
    }

    /// Removes the subscriptions of a bridge's local session that none of its `out` topic
    /// lines makes any more (a line removed from the configuration): what they matched
    /// would otherwise keep filling the bridge's queue.
    fn prune_bridge_subscriptions(&mut self, idx: SessionIdx) {
        let Ok(s) = self.session(idx) else {
            return;
        };
        let Some(keep) = self.policy.bridge_filters.get(&*s.client_id) else {
            return;
        };
        let stale: Vec<String> = s
            .subscriptions
            .keys()
            .filter(|f| !keep.iter().any(|k| k == *f))
            .cloned()
            .collect();
        let client_id = s.client_id.clone();
        for filter in stale {
            if let Ok(s) = self.session_mut(idx) {
                s.subscriptions.remove(&filter);
            }
            self.unsubscribe_filter(idx, &filter);
            self.journal_subscription(idx, &filter, None);
            tracing::info!(client_id = %client_id, filter = %filter, "bridge: unsubscribed a topic the configuration no longer carries out");
        }
    }

    fn session_expiry_for(&self, c: &Connect) -> u32 {
        if c.protocol.is_v5() {
            c.properties
                .session_expiry_interval
                .unwrap_or(0)
                .min(self.limits.max_session_expiry)
        } else if c.clean_start {
            0
        } else {
            self.limits.persistent_session_expiry
        }
    }

    fn connack_properties(&self, c: &Connect, assigned: bool) -> Properties {
        let l = &self.limits;
        let mut p = Properties::default();
        let asked = c.properties.session_expiry_interval.unwrap_or(0);
        if asked > l.max_session_expiry {
            p.session_expiry_interval = Some(l.max_session_expiry); // [MQTT-3.2.2-?]
        }
        if l.receive_maximum < u16::MAX {
            p.receive_maximum = Some(l.receive_maximum);
        }
        if l.max_qos < 2 {
            p.maximum_qos = Some(l.max_qos);
        }
        if !l.retain_available {
            p.retain_available = Some(0);
        }
        p.maximum_packet_size = Some(l.max_packet_size);
        if assigned {
            p.assigned_client_identifier = Some(c.client_id.clone()); // [MQTT-3.2.2-16]
        }
        if l.topic_alias_maximum > 0 {
            p.topic_alias_maximum = Some(l.topic_alias_maximum);
        }
        p.server_keep_alive = effective_keep_alive(c, l).1;
        if c.properties.request_response_information == Some(1) {
            let prefix = &self.policy.response_information_prefix;
            p.response_information = Some(format!("{prefix}{}", c.client_id));
        }
        p
    }

    /// DISCONNECT from the client: the will is discarded unless the reason is 0x04
    /// [MQTT-3.14.4-3]; a 5.0 client may change the session expiry here, but not from 0
    /// [MQTT-3.14.2-2].
    pub(super) fn handle_disconnect(
        &mut self,
        now: Instant,
        conn: ConnId,
        idx: SessionIdx,
        d: Disconnect,
    ) {
        let max_expiry = self.limits.max_session_expiry;
        let Ok(s) = self.session_mut(idx) else {
            return;
        };
        if let Some(new) = d.properties.session_expiry_interval {
            if s.expiry_interval == 0 && new != 0 {
                self.protocol_violation(now, conn, Violation::SessionExpiryAfterZero);
                return;
            }
            s.expiry_interval = new.min(max_expiry);
        }
        if d.reason != ReasonCode::DISCONNECT_WITH_WILL {
            s.will = None;
        }
        self.detach(now, conn);
        self.actions
            .push_back(Action::Close(conn, CloseReason::ClientDisconnect(d.reason)));
    }

    /// Unbinds a connection from its session: publishes or schedules the will, hands
    /// shared-subscription messages to other members, ends or schedules the end of the
    /// session. A CONNECT waiting for this connection to drain is decided afterwards.
    pub(super) fn detach(&mut self, now: Instant, conn: ConnId) {
        // Not attached (any more): taken over or closed before; nothing to do.
        let Some(idx) = self.sessions.by_conn(conn) else {
            return;
        };
        let client_id = self.session(idx).map(|s| s.client_id.clone());
        self.detach_session(now, conn);
        if let Ok(id) = client_id {
            self.holder_left(now, &id, conn);
        }
    }

    fn detach_session(&mut self, now: Instant, conn: ConnId) {
        // Not attached: nothing to unbind (see `detach`).
        let Some(idx) = self.sessions.detach_conn(conn) else {
            return;
        };
        let Ok(s) = self.session_mut(idx) else {
            return;
        };
        s.since = Some(now);
        let expiry = s.expiry_interval;
        if let Some(will) = s.will.take() {
            let delay = will.properties.will_delay_interval.unwrap_or(0);
            match will_wait(delay, expiry, Duration::ZERO) {
                None => self.publish_will(now, idx, will),
                Some(wait) => {
                    if let Ok(s) = self.session_mut(idx) {
                        s.pending_will = Some(will);
                        s.will_at = Some(now + wait);
                    }
                }
            }
        }
        self.redistribute_shared(now, idx);
        self.release_deferred_acks(idx);
        let Some(left) = session_left(expiry, Duration::ZERO) else {
            self.end_session(now, idx);
            return;
        };
        if let Ok(s) = self.session_mut(idx) {
            s.expires_at = left.map(|left| now + left);
            // A cluster keeps the will's new state (published, or waiting since now).
            let id = s.client_id.clone();
            self.export.session_changed(&id);
        }
        self.journal_session(idx);
        // The cluster records where the offline session stands in its log (docs/cluster.md,
        // "Queued messages across nodes").
        if let Ok(id) = self.session(idx).map(|s| s.client_id.clone()) {
            self.export.session_changed(&id);
        }
        self.schedule_timer(idx);
    }

    /// Removes a session for good; a will still waiting is published now, since the
    /// session ends first [MQTT-3.1.3-9].
    pub(super) fn end_session(&mut self, now: Instant, idx: SessionIdx) {
        self.cancel_timer(idx);
        if self.sessions.take_conn(idx).is_err() {
            return;
        }
        self.release_deferred_acks(idx);
        let Ok(mut s) = self.sessions.remove(idx) else {
            return;
        };
        self.export.session_changed(&s.client_id);
        self.journal_session_ended(&s);
        // Nothing may keep the index once it is free: it names the next session inserted.
        for (filter, _) in s.subscriptions.drain() {
            self.unsubscribe_filter(idx, &filter);
        }
        let pending = s.pending_will.take();
        let leftovers: Vec<_> = s
            .inflight
            .drain(..)
            .map(|m| m.delivery)
            .chain(s.queue.drain(..))
            .map(|mut d| {
                d.seq = 0; // ended with the session: a new number wherever it goes
                d
            })
            .collect();
        if let Some(will) = pending {
            self.will_due(now, &s.client_id, s.username.clone(), will);
        }
        self.reroute_shared(now, leftovers);
    }

    /// Arms the session's timer at its pending will or its expiry, whichever comes first;
    /// with neither it has none.
    pub(super) fn schedule_timer(&mut self, idx: SessionIdx) {
        let at = self
            .session(idx)
            .ok()
            .and_then(|s| [s.will_at, s.expires_at].into_iter().flatten().min());
        self.timers.set_session(idx, at);
    }

    fn cancel_timer(&mut self, idx: SessionIdx) {
        self.timers.cancel_session(idx);
    }

    pub(super) fn session_timer_fired(&mut self, now: Instant, idx: SessionIdx) {
        let Ok(s) = self.session_mut(idx) else {
            return;
        };
        if s.conn.is_some() {
            return;
        }
        if s.will_at.is_some_and(|t| t <= now) {
            s.will_at = None;
            if let Some(will) = s.pending_will.take() {
                self.publish_will(now, idx, will);
            }
            if let Ok(id) = self.session(idx).map(|s| s.client_id.clone()) {
                // Published: the cluster's record of it must not keep it.
                self.export.session_changed(&id);
            }
            self.journal_session(idx);
        }
        let expired = self
            .session(idx)
            .ok()
            .and_then(|s| s.expires_at)
            .is_some_and(|t| t <= now);
        if expired {
            self.stats.sessions_expired += 1;
            self.end_session(now, idx);
        } else {
            self.schedule_timer(idx);
        }
    }
}
