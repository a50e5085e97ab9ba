//! The rules of one connection's life, sans-IO, run by the connection task beside the socket
//! with the same contract as [`crate::Broker`]: it is told what happened (with the time) and
//! says what to do; the task only moves bytes and timers.
//!
//! It owns what belongs to one network connection rather than to the session: the CONNECT
//! phase ([`first_packet`], the refusing CONNACK [`refusal`]), the packet sequence (CONNECT
//! first and once, CONNACK before any PINGRESP), the keep-alive limit, topic aliases in both
//! directions, the inbound Receive Maximum quota and PUBLISH rate, and the one list of
//! [`Violation`]s that end a connection. The router never sees a topic alias or a PINGREQ.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use makelaar_proto::{Connect, Packet, ProtocolVersion, QoS};

use crate::limits::Limits;
use crate::rate::TokenBucket;

mod opening;
mod violation;
pub use opening::{first_packet, refusal, Opening, MAX_CONNECT_SIZE};
pub use violation::Violation;

/// The keep-alive the server applies: the client's, unless a maximum is configured and the
/// client asks for more or for none; 5.0 clients are then told with Server Keep Alive
/// [MQTT-3.2.2-21]. 3.x clients cannot be told, so their own value stands.
pub fn effective_keep_alive(connect: &Connect, limits: &Limits) -> (u16, Option<u16>) {
    let asked = connect.keep_alive;
    let max = limits.max_keep_alive;
    let over = max != 0 && (asked == 0 || asked > max);
    if over && connect.protocol.is_v5() {
        (max, Some(max))
    } else {
        (asked, None)
    }
}

/// What the shell does after writing a packet to the client (see [`ConnState::outbound`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Outbound {
    /// Carry on.
    Continue,
    /// It was the CONNACK accepting the client: now write this many PINGRESP, owed for the
    /// PINGREQs that came before it [MQTT-3.2.0-1].
    PingResps(u8),
    /// It was a refusing CONNACK: write nothing more, close, for this reason
    /// [MQTT-3.2.2-7].
    Close(makelaar_proto::ReasonCode),
}

/// What the shell does with a packet from the client that passed [`ConnState::inbound`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// Forward it to the router.
    Route,
    /// PINGREQ: answer PINGRESP now [MQTT-3.12.4-1].
    PingResp,
    /// PINGREQ before the CONNACK went out: the CONNACK must be the first packet the server
    /// sends [MQTT-3.2.0-1], so the PINGRESP is owed (see [`Outbound::PingResps`]).
    Owed,
}

/// One and a half times a keep-alive of `seconds` [MQTT-3.1.2-24]; `None` for 0 (no
/// keep-alive [MQTT-3.1.2-22]).
fn silence_limit(seconds: u16) -> Option<Duration> {
    let k = Duration::from_secs(u64::from(seconds));
    (seconds > 0).then(|| k + k / 2)
}

/// Protocol state of one connection after its CONNECT was accepted.
#[derive(Debug)]
pub struct ConnState {
    pub version: ProtocolVersion,
    /// The client set the bridge bit in its CONNECT (Mosquitto's `try_private`): it is
    /// another broker, and its subscriptions are made No Local and Retain As Published.
    bridge: bool,
    /// How long the client may stay silent (see [`ConnState::silence_limit`]).
    silence_limit: Option<Duration>,
    /// Inbound aliases: index alias-1 → topic [MQTT-3.3.2-12].
    inbound_aliases: Vec<Option<Arc<str>>>,
    /// Outbound aliases given to topics so far, up to the client's Topic Alias Maximum.
    outbound_aliases: HashMap<Arc<str>, u16>,
    outbound_alias_max: u16,
    /// QoS 1/2 publishes received and not yet fully acknowledged.
    inbound_unacked: u16,
    receive_maximum: u16,
    inbound_qos2: Vec<u16>,
    /// PUBLISH packets per second, when `max_publish_rate` is set.
    publish_rate: Option<TokenBucket>,
    /// The CONNACK accepting the client went out.
    connack_sent: bool,
    /// PINGREQs received before that, each owed a PINGRESP right after it.
    pings_owed: u8,
}

impl ConnState {
    /// State for a connection whose CONNECT was accepted, with the keep-alive in force.
    pub fn new(now: Instant, connect: &Connect, limits: &Limits) -> ConnState {
        let (keep_alive, _) = effective_keep_alive(connect, limits);
        let alias_slots = if connect.protocol.is_v5() {
            limits.topic_alias_maximum
        } else {
            0
        };
        ConnState {
            version: connect.protocol,
            bridge: connect.bridge,
            silence_limit: silence_limit(keep_alive),
            inbound_aliases: vec![None; usize::from(alias_slots)],
            outbound_aliases: HashMap::new(),
            outbound_alias_max: connect.properties.topic_alias_maximum.unwrap_or(0),
            inbound_unacked: 0,
            // 3.x clients are never told a Receive Maximum, so it cannot be held against them;
            // their QoS 1/2 flow is bounded by the 16-bit packet identifier space.
            receive_maximum: if connect.protocol.is_v5() {
                limits.receive_maximum
            } else {
                u16::MAX
            },
            inbound_qos2: Vec::new(),
            publish_rate: (limits.max_publish_rate > 0)
                .then(|| TokenBucket::new(limits.max_publish_rate, now)),
            connack_sent: false,
            pings_owed: 0,
        }
    }

    /// How long the client may stay silent before the connection is closed as a
    /// [`Violation::KeepAliveTimeout`]: one and a half times the keep-alive in force
    /// [MQTT-3.1.2-24]; `None` when there is none. The shell measures the silence (the
    /// router's sweep over the outboxes: cheaper than a timer per connection); the limit
    /// is decided here alone.
    pub fn silence_limit(&self) -> Option<Duration> {
        self.silence_limit
    }

    /// Checks and rewrites a packet from the client before it goes to the router: resolves
    /// topic aliases, counts the Receive Maximum quota, refuses a second CONNECT, answers
    /// PINGREQ here (see [`Inbound`]).
    pub fn inbound(&mut self, now: Instant, packet: &mut Packet) -> Result<Inbound, Violation> {
        match packet {
            // [MQTT-3.1.0-2] a second CONNECT is a protocol violation.
            Packet::Connect(_) => Err(Violation::SecondConnect),
            Packet::PingReq => Ok(self.ping()),
            Packet::Publish(p) => {
                if !p.properties.subscription_identifiers.is_empty() {
                    // [MQTT-3.3.4-6] only the server puts subscription identifiers in PUBLISH.
                    return Err(Violation::SubscriptionIdFromClient);
                }
                if self.publish_rate.as_mut().is_some_and(|b| !b.allow(now)) {
                    // 5.0: DISCONNECT 0x96, "the client is sending messages faster than the
                    // server can accept" (section 3.14.2.1).
                    return Err(Violation::PublishRateTooHigh);
                }
                self.resolve_alias(p)?;
                self.count_inbound(p.qos, p.packet_id)?;
                Ok(Inbound::Route)
            }
            Packet::Subscribe(sub) if self.bridge => {
                mark_bridge_subscriptions(sub);
                Ok(Inbound::Route)
            }
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                Err(Violation::ServerOnlyPacket)
            }
            _ => Ok(Inbound::Route),
        }
    }

    /// Whether the client set the bridge bit in its CONNECT (Mosquitto's `try_private`): it
    /// is another broker, and its subscriptions are made No Local and Retain As Published.
    pub fn is_bridge(&self) -> bool {
        self.bridge
    }

    /// A PINGREQ is answered at once, unless the CONNACK has not gone out yet.
    fn ping(&mut self) -> Inbound {
        if self.connack_sent {
            return Inbound::PingResp;
        }
        // More than 255 pings before the CONNACK get 255 answers: the client is alive.
        self.pings_owed = self.pings_owed.saturating_add(1);
        Inbound::Owed
    }

    fn resolve_alias(&mut self, p: &mut makelaar_proto::Publish) -> Result<(), Violation> {
        let Some(alias) = p.properties.topic_alias.take() else {
            return Ok(());
        };
        // [MQTT-3.3.2-9] [MQTT-3.3.2-10] an alias must be 1..=our Topic Alias Maximum.
        let slot = usize::from(alias)
            .checked_sub(1)
            .and_then(|i| self.inbound_aliases.get_mut(i))
            .ok_or(Violation::TopicAliasOutOfRange)?;
        if p.topic.is_empty() {
            match slot {
                Some(topic) => p.topic = topic.clone(),
                // [MQTT-3.3.4-?] an alias that was never set is a protocol error.
                None => return Err(Violation::TopicAliasUnset),
            }
        } else {
            *slot = Some(p.topic.clone());
        }
        Ok(())
    }

    fn count_inbound(&mut self, qos: QoS, packet_id: u16) -> Result<(), Violation> {
        match qos {
            QoS::AtMostOnce => return Ok(()),
            // A resent QoS 2 PUBLISH does not take another slot.
            QoS::ExactlyOnce if self.inbound_qos2.contains(&packet_id) => return Ok(()),
            QoS::ExactlyOnce => self.inbound_qos2.push(packet_id),
            QoS::AtLeastOnce => {}
        }
        self.inbound_unacked = self.inbound_unacked.saturating_add(1);
        if self.inbound_unacked > self.receive_maximum {
            // [MQTT-3.3.4-9] more unacknowledged QoS 1/2 publishes than our Receive Maximum.
            return Err(Violation::ReceiveMaximumExceeded);
        }
        Ok(())
    }

    /// Rewrites a packet going to the client: frees Receive Maximum slots as acknowledgements
    /// go out and replaces repeated topics with aliases when the client allows them. Says
    /// what the shell does once the packet is written.
    pub fn outbound(&mut self, packet: &mut Packet) -> Outbound {
        match packet {
            Packet::PubAck(_) => self.release_inbound(None),
            Packet::PubRec(a) if a.reason.is_error() => self.release_inbound(Some(a.packet_id)),
            Packet::PubComp(a) => self.release_inbound(Some(a.packet_id)),
            Packet::Publish(p) if self.outbound_alias_max > 0 => self.apply_alias(p),
            // [MQTT-3.2.2-5] [MQTT-3.2.2-7] nothing may follow a refusing CONNACK.
            Packet::ConnAck(a) if a.reason.is_error() => return Outbound::Close(a.reason),
            Packet::ConnAck(_) if !self.connack_sent => {
                self.connack_sent = true;
                return Outbound::PingResps(std::mem::take(&mut self.pings_owed));
            }
            _ => {}
        }
        Outbound::Continue
    }

    fn release_inbound(&mut self, qos2_id: Option<u16>) {
        if let Some(id) = qos2_id {
            match self.inbound_qos2.iter().position(|&p| p == id) {
                Some(pos) => {
                    self.inbound_qos2.swap_remove(pos);
                }
                None => return,
            }
        }
        self.inbound_unacked = self.inbound_unacked.saturating_sub(1);
    }

    fn apply_alias(&mut self, p: &mut makelaar_proto::Publish) {
        if let Some(&alias) = self.outbound_aliases.get(&p.topic) {
            p.properties.topic_alias = Some(alias);
            p.topic = Arc::from("");
            return;
        }
        let used = self.outbound_aliases.len();
        if let Ok(next) = u16::try_from(used + 1) {
            if next <= self.outbound_alias_max {
                self.outbound_aliases.insert(p.topic.clone(), next);
                p.properties.topic_alias = Some(next);
            }
        }
    }
}

#[cfg(test)]
mod tests;

/// A bridge's subscriptions (the bridge bit of 3.1/3.1.1, which has no subscription options)
/// behave as a 5.0 bridge asks for them: No Local, so that what the bridge publishes here is
/// not sent back to it [MQTT-3.8.3-3], and Retain As Published, so that a retained message
/// stays retained on the other broker [MQTT-3.3.1-12]; as Mosquitto does for such clients.
/// A shared subscription keeps its options: No Local is not allowed on one [MQTT-3.8.3-4].
fn mark_bridge_subscriptions(sub: &mut makelaar_proto::Subscribe) {
    for (filter, options) in &mut sub.filters {
        if matches!(makelaar_proto::topic::parse_shared(filter), Ok(None)) {
            options.no_local = true;
            options.retain_as_published = true;
        }
    }
}
