//! Wills: published as their client would have published them, when their time comes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use makelaar_proto::{QoS, Will};

use super::{Broker, SessionIdx};
use crate::message::Message;

impl Broker {
    /// Publishes the will of session `idx` with the identity of that session.
    pub(super) fn publish_will(&mut self, now: Instant, idx: SessionIdx, will: Box<Will>) {
        let Ok(s) = self.session(idx) else {
            return;
        };
        let (id, username) = (s.client_id.clone(), s.username.clone());
        self.publish_will_message(now, &id, username.as_deref(), will);
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
