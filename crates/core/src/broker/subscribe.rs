//! SUBSCRIBE and UNSUBSCRIBE: per-filter reason codes, subscription options, retained
//! messages sent at subscribe.

use std::sync::Arc;
use std::time::Instant;

use makelaar_proto::topic::parse_shared;
use makelaar_proto::{
    Packet, QoS, ReasonCode, RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck,
    Unsubscribe,
};

use super::publish::log_topic_too_deep;
use super::{Broker, SessionIdx};
use crate::auth::Access;
use crate::conn::Violation;
use crate::message::{Delivery, Message};
use crate::session::{ConnId, Subscription};

impl Broker {
    pub(super) fn handle_subscribe(
        &mut self,
        now: Instant,
        conn: ConnId,
        idx: SessionIdx,
        sub: Subscribe,
    ) {
        if let Err(violation) = self.check_subscribe(idx, &sub) {
            self.protocol_violation(now, conn, violation);
            return;
        }
        let v5 = self.version_of(idx).is_v5();
        let id = sub.properties.subscription_identifiers.first().copied();
        let mut reasons = Vec::with_capacity(sub.filters.len());
        let mut retained_for = Vec::new();
        for (filter, options) in sub.filters {
            match self.subscribe_one(idx, &filter, options, id, v5) {
                Ok((granted, send_retained)) => {
                    reasons.push(ReasonCode(granted as u8));
                    if send_retained {
                        retained_for.push((filter, granted));
                    }
                }
                Err(code) => reasons.push(code),
            }
        }
        let ack = SubAck {
            packet_id: sub.packet_id,
            reasons,
            ..SubAck::default()
        };
        self.send(conn, Packet::SubAck(ack));
        for (filter, granted) in retained_for {
            self.send_retained(now, idx, &filter, granted, id);
        }
    }

    /// What refuses a whole SUBSCRIBE, checked before any of its filters is subscribed: the
    /// reason code and text to close the connection with.
    fn check_subscribe(&self, idx: SessionIdx, sub: &Subscribe) -> Result<(), Violation> {
        for (filter, options) in &sub.filters {
            self.check_filter_levels(idx, filter)?;
            // [MQTT-3.8.3-4] no-local on a shared subscription is a protocol error.
            if options.no_local && matches!(parse_shared(filter), Ok(Some(_))) {
                return Err(Violation::NoLocalOnShared);
            }
        }
        Ok(())
    }

    /// A filter deeper than `max_topic_levels` is refused with the connection (logged with
    /// the limit): 5.0 DISCONNECT 0x8F Topic Filter invalid, "correctly formed, but not
    /// accepted by this Server" (section 3.14.2.1); 3.1.1 closes [MQTT-4.8.0-1].
    fn check_filter_levels(&self, idx: SessionIdx, filter: &str) -> Result<(), Violation> {
        let Some(levels) = self.limits.excess_topic_levels(filter) else {
            return Ok(());
        };
        let client_id = self.session(idx).map_or("", |s| &s.client_id);
        log_topic_too_deep(
            client_id,
            "topic filter",
            levels,
            self.limits.max_topic_levels,
        );
        Err(Violation::TopicFilterTooDeep)
    }

    /// Adds one subscription: the granted QoS and whether retained messages are to be sent,
    /// or the failure reason code for the SUBACK [MQTT-3.9.3-1].
    fn subscribe_one(
        &mut self,
        idx: SessionIdx,
        filter: &str,
        options: SubscriptionOptions,
        id: Option<u32>,
        v5: bool,
    ) -> Result<(QoS, bool), ReasonCode> {
        // The decoder refused malformed filters (section 4.7); a well-formed one that is not a
        // shared subscription of the form [MQTT-4.8.2-1] [MQTT-4.8.2-2] asks for (`$share/g`,
        // `$share//a`) is not allowed: 5.0 0x8F Topic Filter invalid, 3.x 0x80.
        let invalid = if v5 {
            ReasonCode::TOPIC_FILTER_INVALID
        } else {
            ReasonCode::UNSPECIFIED_ERROR
        };
        parse_shared(filter).map_err(|_| invalid)?;
        if self.policy.deny_subscriptions.iter().any(|d| d == filter) {
            return Err(ReasonCode::UNSPECIFIED_ERROR);
        }
        if !self.may(idx, filter, Access::Subscribe) {
            // 3.1.1: failure 0x80 [MQTT-3.8.4-5]; 5.0: 0x87 Not authorized (section 3.9.3).
            return Err(if v5 {
                ReasonCode::NOT_AUTHORIZED
            } else {
                ReasonCode::UNSPECIFIED_ERROR
            });
        }
        let max_subs = self.limits.max_subscriptions_per_session;
        let granted = options
            .qos
            .min(QoS::from_u8(self.limits.max_qos).unwrap_or(QoS::ExactlyOnce));
        let options = SubscriptionOptions {
            qos: granted,
            ..options
        };
        let subscription = Subscription { options, id };
        let s = self
            .session_mut(idx)
            .map_err(|_| ReasonCode::UNSPECIFIED_ERROR)?;
        if max_subs != 0
            && s.subscriptions.len() >= max_subs
            && !s.subscriptions.contains_key(filter)
        {
            tracing::warn!(client_id = %s.client_id, max_subscriptions_per_session = max_subs, "subscription refused: max_subscriptions_per_session reached");
            return Err(if v5 {
                ReasonCode::QUOTA_EXCEEDED
            } else {
                ReasonCode::UNSPECIFIED_ERROR
            });
        }
        let existed = s.subscriptions.contains_key(filter);
        let shared = matches!(parse_shared(filter), Ok(Some(_)));
        self.journal_subscription(idx, filter, Some(&subscription));
        self.add_subscription(idx, filter, subscription);
        // Retained messages are not sent for shared subscriptions (5.0 section 4.8.2).
        let send_retained = !shared
            && match options.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendIfNew => !existed,
                RetainHandling::DoNotSend => false,
            };
        Ok((granted, send_retained))
    }

    /// Sends the retained messages matching a new subscription, with the retain flag set
    /// [MQTT-3.3.1-8] [MQTT-3.8.4-4].
    fn send_retained(
        &mut self,
        now: Instant,
        idx: SessionIdx,
        filter: &str,
        granted: QoS,
        id: Option<u32>,
    ) {
        let mut found: Vec<Arc<Message>> = Vec::new();
        self.retained.for_each_match(filter, |_, m| {
            if !m.is_expired(now) {
                found.push(m.clone());
            }
        });
        for msg in found {
            if !self.may(idx, &msg.topic, Access::Read) {
                self.stats.deliveries_denied += 1;
                continue;
            }
            let d = Delivery {
                qos: msg.qos.min(granted),
                retain: true,
                msg,
                subscription_ids: id.into_iter().collect(),
                shared_group: None,
                seq: 0,
            };
            self.deliver(now, idx, d);
        }
    }

    pub(super) fn handle_unsubscribe(
        &mut self,
        now: Instant,
        conn: ConnId,
        idx: SessionIdx,
        u: Unsubscribe,
    ) {
        for filter in &u.filters {
            if let Err(violation) = self.check_filter_levels(idx, filter) {
                self.protocol_violation(now, conn, violation);
                return;
            }
        }
        let v5 = self.version_of(idx).is_v5();
        let mut reasons = Vec::with_capacity(u.filters.len());
        for filter in &u.filters {
            // A well-formed filter that is not a valid shared subscription could never have
            // been subscribed: the same code as in SUBSCRIBE (5.0 section 3.11.3), not "no
            // subscription existed".
            if parse_shared(filter).is_err() {
                reasons.push(ReasonCode::TOPIC_FILTER_INVALID);
                continue;
            }
            let removed = self
                .session_mut(idx)
                .ok()
                .and_then(|s| s.subscriptions.remove(filter).map(|_| s.client_id.clone()));
            let existed = removed.is_some();
            if let Some(client_id) = removed {
                self.export.session_changed(&client_id);
                self.unsubscribe_filter(idx, filter);
                self.journal_subscription(idx, filter, None);
            }
            reasons.push(if existed {
                ReasonCode::SUCCESS
            } else {
                ReasonCode::NO_SUBSCRIPTION_EXISTED
            });
        }
        if !v5 {
            reasons.clear();
        }
        let ack = UnsubAck {
            packet_id: u.packet_id,
            reasons,
            ..UnsubAck::default()
        };
        self.send(conn, Packet::UnsubAck(ack));
    }

    /// Adds (or replaces) a subscription of a session, in the session and in the topic tree
    /// or its shared group.
    pub(super) fn add_subscription(&mut self, idx: SessionIdx, filter: &str, sub: Subscription) {
        let Ok(s) = self.session_mut(idx) else {
            return;
        };
        let client_id = s.client_id.clone();
        if s.subscriptions
            .insert(filter.to_owned(), sub.clone())
            .is_none()
        {
            self.export.subscribed(filter);
        }
        self.export.session_changed(&client_id);
        match parse_shared(filter) {
            Ok(Some((_, inner))) => {
                self.shared.subscribe(filter, inner, idx, sub);
            }
            _ => {
                self.subs.insert(filter, idx, sub);
            }
        }
    }

    /// Removes a filter of a session from the topic tree or its shared group.
    pub(super) fn unsubscribe_filter(&mut self, idx: SessionIdx, filter: &str) {
        self.export.unsubscribed(filter);
        match parse_shared(filter) {
            Ok(Some((_, inner))) => {
                self.shared.unsubscribe(filter, inner, idx);
            }
            _ => {
                self.subs.remove(filter, idx);
            }
        }
    }
}
