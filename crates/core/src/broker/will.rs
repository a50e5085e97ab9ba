//! Wills: published as their client would have published them, when their time comes.
//!
//! The timing rules live here once, for a single broker and for a cluster alike: when a will
//! is due after its connection ended ([`will_wait`]), how long its session lives on
//! ([`session_left`]), and whether a takeover publishes the old connection's will
//! ([`Broker::published_at_takeover`]). A cluster node that finds a will another node left
//! (a hand-over, a dead node) applies the same rules through
//! [`Broker::take_over_remote_will`] and [`Broker::adopt_orphan`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use makelaar_proto::{QoS, Will};

use super::{Broker, SessionIdx, WillOnTakeover};
use crate::message::Message;

/// How long a will still waits, `offline_for` after its connection ended without
/// DISCONNECT; `None`: it is due now. A will is published after its Will Delay Interval
/// or when its session ends, whichever comes first [MQTT-3.1.3-9]; a session with
/// expiry 0 ends with its connection [MQTT-3.1.2-23], and a will without delay goes out at
/// once [MQTT-3.1.2-8].
pub fn will_wait(delay: u32, session_expiry: u32, offline_for: Duration) -> Option<Duration> {
    if delay == 0 || session_expiry == 0 {
        return None;
    }
    let wait = Duration::from_secs(u64::from(delay.min(session_expiry)));
    let left = wait.saturating_sub(offline_for);
    (!left.is_zero()).then_some(left)
}

/// How long a session still lives offline, `offline_for` after its connection ended:
/// `None` when it has ended, `Some(None)` when it never expires (`u32::MAX`).
pub fn session_left(expiry: u32, offline_for: Duration) -> Option<Option<Duration>> {
    if expiry == u32::MAX {
        return Some(None);
    }
    let left = Duration::from_secs(u64::from(expiry)).saturating_sub(offline_for);
    (!left.is_zero()).then_some(Some(left))
}

/// A will another cluster node left in the record of a session this broker's client now
/// takes over (the other node handed the connection over, or died), with what the rules
/// need to decide it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteWill {
    /// The will.
    pub will: Box<Will>,
    /// The identity it is published with (its connection's authenticated username).
    pub username: Option<Arc<str>>,
    /// The Session Expiry Interval of the session it belonged to (0: that session ended
    /// with its connection).
    pub expiry_interval: u32,
    /// How long ago its connection ended (it was waiting out its delay); `None`: the
    /// connection was open when the record was written, and is taken over now.
    pub offline_for: Option<Duration>,
}

impl Broker {
    /// Whether a takeover publishes the old connection's will, by the configured policy
    /// (see [`WillOnTakeover`]): `delayed` when it has a Will Delay Interval, `session_goes_on`
    /// when the new connection continues the session.
    pub(super) fn published_at_takeover(&self, delayed: bool, session_goes_on: bool) -> bool {
        match self.policy.will_on_takeover {
            // A delayed will goes out when its session ends, whichever comes first
            // [MQTT-3.1.3-9]; otherwise the closed connection publishes it [MQTT-3.1.2-8].
            WillOnTakeover::Spec => !session_goes_on || !delayed,
            // Mosquitto: a resumed session drops the will.
            WillOnTakeover::Mosquitto => !session_goes_on,
        }
    }

    /// Decides a will another cluster node left for the client of `client_id`, whose
    /// CONNECT (`clean_start`) this broker is about to decide: published now if it was due
    /// already, or as a takeover publishes the old connection's will [MQTT-3.1.4-3]
    /// [MQTT-3.1.3-9]; otherwise dropped, as the session goes on. Returns whether it was
    /// published. Call it once the cluster has taken the will out of the record (so no
    /// other node decides it too), before the CONNECT.
    pub fn take_over_remote_will(
        &mut self,
        now: Instant,
        client_id: &Arc<str>,
        remote: RemoteWill,
        clean_start: bool,
    ) -> bool {
        let delay = remote.will.properties.will_delay_interval.unwrap_or(0);
        let ends = remote.expiry_interval == 0;
        let publish = match remote.offline_for {
            // Its connection had ended: it waited for its delay, or its session's end.
            Some(offline) => {
                will_wait(delay, remote.expiry_interval, offline).is_none()
                    || session_left(remote.expiry_interval, offline).is_none()
                    // Resumed in time: not published [MQTT-3.1.3-9]; a clean start ends
                    // the session, and the will goes out with it.
                    || clean_start
            }
            None => self.published_at_takeover(delay > 0, !clean_start && !ends),
        };
        if publish {
            self.publish_will_message(now, client_id, remote.username.as_deref(), remote.will);
        } else {
            tracing::debug!(client_id = %client_id, "will of the taken-over session dropped: the session goes on [MQTT-3.1.3-9]");
        }
        publish
    }

    /// Publishes a will that is due now and that the cluster has taken out of its record,
    /// with the identity of its client: a dead node's, or one of this broker's own once the
    /// cluster has decided it ([`Broker::drain_due_wills`]).
    pub fn publish_remote_will(
        &mut self,
        now: Instant,
        client_id: &Arc<str>,
        username: Option<&str>,
        will: Box<Will>,
    ) {
        self.publish_will_message(now, client_id, username, will);
    }

    /// Publishes the will of session `idx` with the identity of that session, now that its
    /// rules say it is due ([`Broker::will_due`]).
    pub(super) fn publish_will(&mut self, now: Instant, idx: SessionIdx, will: Box<Will>) {
        let Ok(s) = self.session(idx) else {
            return;
        };
        let (id, username) = (s.client_id.clone(), s.username.clone());
        self.will_due(now, &id, username, will);
    }

    /// A will of this broker's own session is due now by the rules above: published at
    /// once on a single broker; with the cluster on, held back until the cluster has taken
    /// it out of the session's record, so that no other node publishes it too
    /// ([`Broker::drain_due_wills`]).
    pub(super) fn will_due(
        &mut self,
        now: Instant,
        client_id: &Arc<str>,
        username: Option<Arc<str>>,
        will: Box<Will>,
    ) {
        if self.export.enabled() {
            tracing::debug!(client_id = %client_id, topic = %will.topic, "will due: waiting for the cluster to take it out of the session record");
            self.export
                .will_due(client_id, super::KeptWill { will, username });
        } else {
            self.publish_will_message(now, client_id, username.as_deref(), will);
        }
    }

    /// Publishes a will as its client would have published it: checked for Write access
    /// first, and never into the broker's own `$SYS` tree (but for a bridge's state).
    pub(super) fn publish_will_message(
        &mut self,
        now: Instant,
        client_id: &Arc<str>,
        username: Option<&str>,
        will: Box<Will>,
    ) {
        let will = *will;
        let allowed = crate::topic::sys::writable_by_clients(&will.topic)
            && self.authorizer.as_ref().is_none_or(|a| {
                a.allowed(client_id, username, &will.topic, crate::auth::Access::Write)
            });
        if !allowed {
            tracing::debug!(client_id = %client_id, topic = %will.topic, "will dropped: not authorized");
            self.stats.publishes_denied += 1;
            return;
        }
        tracing::debug!(client_id = %client_id, topic = %will.topic, "publishing will");
        let mut properties = will.properties;
        properties.will_delay_interval = None;
        let expires_at = properties
            .message_expiry_interval
            .map(|s| now + Duration::from_secs(u64::from(s)));
        let msg = Arc::new(Message {
            topic: Arc::from(will.topic.as_str()),
            payload: will.payload,
            qos: will.qos.min(qos_from(self.limits.max_qos)),
            retain: will.retain && self.limits.retain_available,
            properties,
            expires_at,
            origin: Some(client_id.clone()),
            received_at: Some(now),
            log_position: std::sync::OnceLock::new(),
        });
        self.export.message(&msg, None);
        if msg.retain {
            self.store_retained(&msg);
        }
        self.route(now, msg);
    }
}

fn qos_from(v: u8) -> QoS {
    QoS::from_u8(v.min(2)).unwrap_or(QoS::ExactlyOnce)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_will_waits_for_its_delay_or_its_session_whichever_is_first() {
        // No delay, or a session that ends with its connection: due at once.
        assert_eq!(will_wait(0, 300, S(0)), None);
        assert_eq!(will_wait(30, 0, S(0)), None);
        // The delay, counted from the connection's end [MQTT-3.1.3-9].
        assert_eq!(will_wait(30, 300, S(0)), Some(S(30)));
        assert_eq!(will_wait(30, 300, S(12)), Some(S(18)));
        assert_eq!(will_wait(30, 300, S(30)), None);
        // The session ends first: the will goes with it.
        assert_eq!(will_wait(30, 10, S(4)), Some(S(6)));
        assert_eq!(will_wait(30, u32::MAX, S(0)), Some(S(30)));
    }

    #[test]
    fn a_session_lives_its_expiry_interval_offline() {
        assert_eq!(session_left(0, S(0)), None);
        assert_eq!(session_left(60, S(0)), Some(Some(S(60))));
        assert_eq!(session_left(60, S(59)), Some(Some(S(1))));
        assert_eq!(session_left(60, S(61)), None);
        assert_eq!(session_left(u32::MAX, S(1 << 40)), Some(None));
    }
}
