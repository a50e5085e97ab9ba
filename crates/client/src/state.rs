//! The client's protocol state, sans-IO: packet identifiers, the inflight window, QoS 1/2 flows
//! both ways, keep-alive and what to send again after reconnecting.
//!
//! It is fed packets and instants (`handle_packet(now, ..)`, `handle_timeout(now)`) and
//! requests from the application, and leaves its output in two places the driver drains: the
//! encoded bytes to write (`out`) and the messages to hand to the application (`deliveries`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use makelaar_proto::{
    ConnAck, Connect, Disconnect, Packet, Properties, ProtocolVersion, PubAck, Publish, QoS,
    ReasonCode, SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use tokio::sync::oneshot;

use crate::error::Error;
use crate::message::{Message, PublishAck};
use crate::options::ConnectOptions;

/// Where the answer to a request goes.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, Error>>;

fn answer<T>(reply: Option<Reply<T>>, result: Result<T, Error>) {
    if let Some(r) = reply {
        let _ = r.send(result);
    }
}

/// What the broker announced in CONNACK (5.0; the 3.x defaults otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// QoS 1/2 messages we may have unacknowledged at once.
    pub receive_maximum: u16,
    pub maximum_qos: QoS,
    pub retain_available: bool,
    /// Largest packet the broker accepts.
    pub maximum_packet_size: u32,
    /// Topic aliases we may use towards the broker.
    pub topic_alias_maximum: u16,
    /// The keep-alive in force (Server Keep Alive if the broker sent one).
    pub keep_alive: u16,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            receive_maximum: u16::MAX,
            maximum_qos: QoS::ExactlyOnce,
            retain_available: true,
            maximum_packet_size: 268_435_460,
            topic_alias_maximum: 0,
            keep_alive: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// QoS 1, PUBLISH sent, waiting for PUBACK.
    Ack,
    /// QoS 2, PUBLISH sent, waiting for PUBREC.
    Rec,
    /// QoS 2, PUBREL sent, waiting for PUBCOMP.
    Comp,
}

struct Inflight {
    publish: Publish,
    stage: Stage,
    reply: Option<Reply<PublishAck>>,
    /// Counts against the window (sent on the current connection).
    sent: bool,
}

struct Queued {
    publish: Publish,
    reply: Option<Reply<PublishAck>>,
}

enum Request {
    Subscribe {
        packet: Subscribe,
        reply: Option<Reply<SubAck>>,
    },
    Unsubscribe {
        packet: Unsubscribe,
        reply: Option<Reply<UnsubAck>>,
    },
}

impl Request {
    fn set_id(&mut self, id: u16) {
        match self {
            Request::Subscribe { packet, .. } => packet.packet_id = id,
            Request::Unsubscribe { packet, .. } => packet.packet_id = id,
        }
    }

    fn packet(&self) -> Packet {
        match self {
            Request::Subscribe { packet, .. } => Packet::Subscribe(packet.clone()),
            Request::Unsubscribe { packet, .. } => Packet::Unsubscribe(packet.clone()),
        }
    }

    fn fail(self, e: Error) {
        match self {
            Request::Subscribe { reply, .. } => answer(reply, Err(e)),
            Request::Unsubscribe { reply, .. } => answer(reply, Err(e)),
        }
    }
}

pub(crate) struct State {
    version: ProtocolVersion,
    requested_keep_alive: u16,
    max_inflight: u16,
    /// Topic aliases we allow the broker to use (our Topic Alias Maximum).
    alias_max_in: u16,
    persistent: bool,
    resubscribe: bool,
    pub server: ServerLimits,
    pub connected: bool,
    next_id: u16,
    /// Publishes waiting for the window, in order.
    queue: VecDeque<Queued>,
    /// QoS 1/2 publishes that have a packet identifier.
    inflight: HashMap<u16, Inflight>,
    /// Inflight identifiers in the order they were first sent (resend order).
    order: VecDeque<u16>,
    /// Inflight entries sent on this connection.
    sent_count: u16,
    /// Some inflight entries still wait to be sent again on this connection.
    resend_pending: bool,
    /// SUBSCRIBE/UNSUBSCRIBE not sent yet.
    requests_queue: VecDeque<Request>,
    /// SUBSCRIBE/UNSUBSCRIBE sent, by packet identifier.
    requests: HashMap<u16, Request>,
    /// Subscriptions granted, to make again when the broker lost the session.
    subscriptions: Vec<Subscribe>,
    /// Inbound QoS 2 identifiers between PUBREC and PUBREL (delivered once).
    inbound_qos2: HashSet<u16>,
    aliases_in: HashMap<u16, Arc<str>>,
    /// Encoded packets to write.
    pub out: BytesMut,
    /// Received messages for the application.
    pub deliveries: VecDeque<Message>,
    /// Drop deliveries (nobody reads them any more).
    pub discard_deliveries: bool,
    last_sent: Instant,
    ping_sent: Option<Instant>,
}

impl State {
    pub fn new(opts: &ConnectOptions, now: Instant) -> State {
        State {
            version: opts.version,
            requested_keep_alive: opts.keep_alive,
            max_inflight: match opts.max_inflight {
                0 if opts.version.is_v5() => u16::MAX,
                0 => crate::options::DEFAULT_INFLIGHT_V3,
                n => n,
            },
            alias_max_in: if opts.version.is_v5() {
                opts.properties.topic_alias_maximum.unwrap_or(0)
            } else {
                0
            },
            persistent: opts.is_persistent(),
            resubscribe: opts.resubscribe,
            server: ServerLimits::default(),
            connected: false,
            next_id: 1,
            queue: VecDeque::new(),
            inflight: HashMap::new(),
            order: VecDeque::new(),
            sent_count: 0,
            resend_pending: false,
            requests_queue: VecDeque::new(),
            requests: HashMap::new(),
            subscriptions: Vec::new(),
            inbound_qos2: HashSet::new(),
            aliases_in: HashMap::new(),
            out: BytesMut::with_capacity(4096),
            deliveries: VecDeque::new(),
            discard_deliveries: false,
            last_sent: now,
            ping_sent: None,
        }
    }

    /// The CONNECT for the next connection. After the first, a persistent session is resumed
    /// (clean start off).
    pub fn connect_packet(&self, opts: &ConnectOptions, first: bool) -> Connect {
        Connect {
            bridge: false,
            protocol: opts.version,
            clean_start: if first {
                opts.clean_start
            } else {
                opts.clean_start && !self.persistent
            },
            keep_alive: opts.keep_alive,
            client_id: opts.client_id.clone(),
            will: opts.will.clone(),
            username: opts.username.clone(),
            password: opts.password.clone(),
            properties: if opts.version.is_v5() {
                opts.properties.clone()
            } else {
                Properties::default()
            },
        }
    }

    /// Publishes waiting for the window.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// A CONNACK accepting the connection: take the broker's limits, then resume: make the
    /// subscriptions again if the session is new, send unacknowledged messages again, and
    /// whatever waited for the connection.
    pub fn on_connected(&mut self, ack: &ConnAck, now: Instant) {
        let p = &ack.properties;
        self.server = ServerLimits {
            receive_maximum: p.receive_maximum.unwrap_or(u16::MAX).max(1),
            maximum_qos: p
                .maximum_qos
                .and_then(QoS::from_u8)
                .unwrap_or(QoS::ExactlyOnce),
            retain_available: p.retain_available != Some(0),
            maximum_packet_size: p.maximum_packet_size.unwrap_or(268_435_460),
            topic_alias_maximum: p.topic_alias_maximum.unwrap_or(0),
            keep_alive: p.server_keep_alive.unwrap_or(self.requested_keep_alive),
        };
        self.connected = true;
        self.last_sent = now;
        self.ping_sent = None;
        self.sent_count = 0;
        self.aliases_in.clear();
        for f in self.inflight.values_mut() {
            f.sent = false;
        }
        self.resend_pending = !self.inflight.is_empty();
        if !ack.session_present {
            // The broker has no state for us: it forgot QoS 2 messages it received (PUBREC
            // came, so they were delivered: done), and any other unacknowledged message is
            // sent again as new.
            self.inbound_qos2.clear();
            let done: Vec<u16> = self
                .inflight
                .iter()
                .filter(|(_, f)| f.stage == Stage::Comp)
                .map(|(id, _)| *id)
                .collect();
            for id in done {
                if let Some(f) = self.inflight.remove(&id) {
                    answer(f.reply, Ok(PublishAck::default()));
                }
            }
            self.order.retain(|id| self.inflight.contains_key(id));
            for f in self.inflight.values_mut() {
                f.publish.dup = false;
                f.stage = if f.publish.qos == QoS::ExactlyOnce {
                    Stage::Rec
                } else {
                    Stage::Ack
                };
            }
            if self.resubscribe && !self.subscriptions.is_empty() {
                let subs = self.subscriptions.clone();
                for (i, s) in subs.into_iter().enumerate() {
                    self.requests_queue.insert(
                        i,
                        Request::Subscribe {
                            packet: s,
                            reply: None,
                        },
                    );
                }
            }
        }
        // Requests that were sent on the lost connection were not answered: send them again.
        let mut pending: Vec<(u16, Request)> = self.requests.drain().collect();
        pending.sort_by_key(|(id, _)| *id);
        for (_, r) in pending.into_iter().rev() {
            self.requests_queue.push_front(r);
        }
        self.pump(now);
    }

    /// The connection is gone; everything unacknowledged is kept for the next one.
    pub fn on_disconnected(&mut self) {
        self.connected = false;
        self.out.clear();
        self.ping_sent = None;
        self.aliases_in.clear();
    }

    /// Fails everything unfinished with `e` (the client is ending).
    pub fn fail_all(&mut self, e: &Error) {
        for q in self.queue.drain(..) {
            answer(q.reply, Err(e.clone()));
        }
        for (_, f) in self.inflight.drain() {
            answer(f.reply, Err(e.clone()));
        }
        self.order.clear();
        for r in self.requests_queue.drain(..) {
            r.fail(e.clone());
        }
        for (_, r) in self.requests.drain() {
            r.fail(e.clone());
        }
    }

    /// Checks a message to publish against the rules and the broker's limits.
    fn check_publish(&self, p: &Publish) -> Result<(), Error> {
        let alias = p.properties.topic_alias;
        if p.topic.is_empty() && (alias.is_none() || !self.version.is_v5()) {
            return Err(Error::Invalid("the topic name is empty".into()));
        }
        // [MQTT-3.3.2-2] a topic name must not contain wildcards.
        if p.topic.contains(['+', '#']) {
            return Err(Error::Invalid(format!(
                "invalid topic name '{}': a topic name cannot contain + or #",
                p.topic
            )));
        }
        if p.topic.contains('\0') {
            return Err(Error::Invalid("a topic name cannot contain U+0000".into()));
        }
        if let Some(a) = alias {
            if !self.version.is_v5() {
                return Err(Error::Invalid("topic aliases need MQTT 5".into()));
            }
            if a == 0 || (self.connected && a > self.server.topic_alias_maximum) {
                return Err(Error::Invalid(format!(
                    "topic alias {a} is not allowed: the broker accepts aliases 1 to {}",
                    self.server.topic_alias_maximum
                )));
            }
        }
        if self.connected {
            if p.qos > self.server.maximum_qos {
                return Err(Error::Invalid(format!(
                    "the broker accepts messages up to QoS {} only",
                    self.server.maximum_qos as u8
                )));
            }
            if p.retain && !self.server.retain_available {
                return Err(Error::Invalid(
                    "the broker does not support retained messages".into(),
                ));
            }
        }
        Ok(())
    }

    /// Queues a message to publish; `reply` gets the acknowledgement.
    pub fn publish(&mut self, msg: Message, reply: Option<Reply<PublishAck>>, now: Instant) {
        let publish = Publish {
            dup: false,
            qos: msg.qos,
            retain: msg.retain,
            topic: msg.topic,
            packet_id: 0,
            properties: if self.version.is_v5() {
                msg.properties
            } else {
                Properties::default()
            },
            payload: msg.payload,
        };
        if let Err(e) = self.check_publish(&publish) {
            answer(reply, Err(e));
            return;
        }
        self.queue.push_back(Queued { publish, reply });
        self.pump(now);
    }

    pub fn subscribe(&mut self, packet: Subscribe, reply: Option<Reply<SubAck>>, now: Instant) {
        if packet.filters.is_empty() {
            answer(reply, Err(Error::Invalid("nothing to subscribe to".into())));
            return;
        }
        for (f, _) in &packet.filters {
            if let Err(e) = check_filter(f) {
                answer(reply, Err(e));
                return;
            }
        }
        self.requests_queue
            .push_back(Request::Subscribe { packet, reply });
        self.pump(now);
    }

    pub fn unsubscribe(
        &mut self,
        packet: Unsubscribe,
        reply: Option<Reply<UnsubAck>>,
        now: Instant,
    ) {
        if packet.filters.is_empty() {
            answer(
                reply,
                Err(Error::Invalid("nothing to unsubscribe from".into())),
            );
            return;
        }
        // Not to be made again after a reconnect.
        for s in &mut self.subscriptions {
            s.filters.retain(|(f, _)| !packet.filters.contains(f));
        }
        self.subscriptions.retain(|s| !s.filters.is_empty());
        self.requests_queue
            .push_back(Request::Unsubscribe { packet, reply });
        self.pump(now);
    }

    /// Encodes DISCONNECT (the driver then closes the socket).
    pub fn disconnect(&mut self, reason: ReasonCode, properties: Properties, now: Instant) {
        if self.connected {
            let _ = self.send(&Packet::Disconnect(Disconnect { reason, properties }), now);
        }
    }

    fn window(&self) -> u16 {
        self.server.receive_maximum.min(self.max_inflight)
    }

    fn alloc_id(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            let id = self.next_id;
            self.next_id = if id == u16::MAX { 1 } else { id + 1 };
            if !self.inflight.contains_key(&id) && !self.requests.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }

    fn send(&mut self, packet: &Packet, now: Instant) -> Result<(), Error> {
        let len = packet.encoded_len(self.version);
        if len > self.server.maximum_packet_size as usize {
            return Err(Error::Invalid(format!(
                "the {} packet of {len} bytes exceeds the broker's maximum packet size of {} bytes",
                packet.name(),
                self.server.maximum_packet_size
            )));
        }
        packet.encode(self.version, &mut self.out)?;
        tracing::debug!(target: "makelaar_client", "sending {}", describe(packet));
        self.last_sent = now;
        Ok(())
    }

    /// Sends what the connection and the window allow: requests, unacknowledged messages
    /// again (in their order), then queued messages.
    fn pump(&mut self, now: Instant) {
        if !self.connected {
            return;
        }
        while let Some(mut r) = self.requests_queue.pop_front() {
            let Some(id) = self.alloc_id() else {
                self.requests_queue.push_front(r);
                break;
            };
            r.set_id(id);
            match self.send(&r.packet(), now) {
                Ok(()) => {
                    self.requests.insert(id, r);
                }
                Err(e) => r.fail(e),
            }
        }
        // Resend after a reconnect, oldest first.
        if self.resend_pending {
            self.resend(now);
            if self.resend_pending {
                return;
            }
        }
        self.send_queued(now);
    }

    /// Sends unacknowledged messages again (after a reconnect), as the window allows.
    fn resend(&mut self, now: Instant) {
        let resend: Vec<u16> = self
            .order
            .iter()
            .copied()
            .filter(|id| self.inflight.get(id).is_some_and(|f| !f.sent))
            .collect();
        for id in resend {
            if self.sent_count >= self.window() {
                return;
            }
            let Some(f) = self.inflight.get(&id) else {
                continue;
            };
            let packet = match f.stage {
                Stage::Comp => Packet::PubRel(PubAck::new(id)),
                _ => Packet::Publish(f.publish.clone()),
            };
            match self.send(&packet, now) {
                Ok(()) => {
                    if let Some(f) = self.inflight.get_mut(&id) {
                        f.sent = true;
                        f.publish.dup = true;
                        self.sent_count += 1;
                    }
                }
                Err(e) => self.finish(id, Err(e)),
            }
        }
        self.resend_pending = false;
    }

    /// Sends queued messages as the window allows (QoS 0 at once, in order).
    fn send_queued(&mut self, now: Instant) {
        while let Some(front) = self.queue.front() {
            if front.publish.qos == QoS::AtMostOnce {
                let Some(q) = self.queue.pop_front() else {
                    break;
                };
                // Checked again: the broker's limits may be known only now.
                let res = self
                    .check_publish(&q.publish)
                    .and_then(|()| self.send(&Packet::Publish(q.publish), now));
                answer(q.reply, res.map(|()| PublishAck::default()));
                continue;
            }
            if self.sent_count >= self.window() {
                break;
            }
            let Some(id) = self.alloc_id() else {
                break;
            };
            let Some(mut q) = self.queue.pop_front() else {
                break;
            };
            if let Err(e) = self.check_publish(&q.publish) {
                answer(q.reply, Err(e));
                continue;
            }
            q.publish.packet_id = id;
            match self.send(&Packet::Publish(q.publish.clone()), now) {
                Ok(()) => {
                    let stage = if q.publish.qos == QoS::ExactlyOnce {
                        Stage::Rec
                    } else {
                        Stage::Ack
                    };
                    // A resend of this PUBLISH carries DUP [MQTT-3.3.1-1].
                    q.publish.dup = true;
                    self.inflight.insert(
                        id,
                        Inflight {
                            publish: q.publish,
                            stage,
                            reply: q.reply,
                            sent: true,
                        },
                    );
                    self.order.push_back(id);
                    self.sent_count += 1;
                }
                Err(e) => answer(q.reply, Err(e)),
            }
        }
    }

    /// An inflight message is done (acknowledged or refused): free its slot.
    fn finish(&mut self, id: u16, result: Result<PublishAck, Error>) {
        if let Some(f) = self.inflight.remove(&id) {
            if f.sent {
                self.sent_count = self.sent_count.saturating_sub(1);
            }
            if let Some(pos) = self.order.iter().position(|x| *x == id) {
                self.order.remove(pos);
            }
            answer(f.reply, result);
        }
    }

    fn ack_result(&self, a: &PubAck) -> Result<PublishAck, Error> {
        if a.reason.is_error() {
            Err(Error::PublishRefused {
                reason: a.reason,
                reason_string: a.properties.reason_string.clone(),
            })
        } else {
            Ok(PublishAck {
                reason: a.reason,
                properties: a.properties.clone(),
            })
        }
    }

    /// A packet from the broker. An error ends the connection.
    pub fn handle_packet(&mut self, packet: Packet, now: Instant) -> Result<(), Error> {
        tracing::debug!(target: "makelaar_client", "received {}", describe(&packet));
        match packet {
            Packet::Publish(p) => self.handle_publish(p, now)?,
            Packet::PubAck(a) => {
                match self.inflight.get(&a.packet_id) {
                    Some(f) if f.stage == Stage::Ack => {
                        let res = self.ack_result(&a);
                        self.finish(a.packet_id, res);
                    }
                    // An acknowledgement for nothing we sent: ignore it.
                    _ => {}
                }
            }
            Packet::PubRec(a) => {
                let id = a.packet_id;
                let stage = self.inflight.get(&id).map(|f| f.stage);
                match stage {
                    Some(Stage::Rec | Stage::Comp) if a.reason.is_error() => {
                        let res = self.ack_result(&a);
                        self.finish(id, res);
                    }
                    Some(Stage::Rec | Stage::Comp) => {
                        if let Some(f) = self.inflight.get_mut(&id) {
                            f.stage = Stage::Comp;
                        }
                        self.send(&Packet::PubRel(PubAck::new(id)), now)?;
                    }
                    _ => {
                        let mut rel = PubAck::new(id);
                        if self.version.is_v5() {
                            rel.reason = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                        }
                        self.send(&Packet::PubRel(rel), now)?;
                    }
                }
            }
            Packet::PubComp(a) => {
                if self
                    .inflight
                    .get(&a.packet_id)
                    .is_some_and(|f| f.stage == Stage::Comp)
                {
                    let res = self.ack_result(&a);
                    self.finish(a.packet_id, res);
                }
            }
            Packet::PubRel(a) => {
                let known = self.inbound_qos2.remove(&a.packet_id);
                let mut comp = PubAck::new(a.packet_id);
                if !known && self.version.is_v5() {
                    comp.reason = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                }
                self.send(&Packet::PubComp(comp), now)?;
            }
            Packet::SubAck(s) => match self.requests.remove(&s.packet_id) {
                Some(Request::Subscribe { packet, reply }) => {
                    let granted: Vec<(String, makelaar_proto::SubscriptionOptions)> = packet
                        .filters
                        .iter()
                        .zip(s.reasons.iter())
                        .filter(|(_, r)| !r.is_error())
                        .map(|(f, _)| f.clone())
                        .collect();
                    if !granted.is_empty() {
                        // Remembered to be made again if the broker loses the session.
                        for sub in &mut self.subscriptions {
                            sub.filters
                                .retain(|(f, _)| !granted.iter().any(|(g, _)| g == f));
                        }
                        self.subscriptions.retain(|s| !s.filters.is_empty());
                        self.subscriptions.push(Subscribe {
                            packet_id: 0,
                            filters: granted,
                            properties: packet.properties.clone(),
                        });
                    }
                    answer(reply, Ok(s));
                }
                Some(other) => {
                    self.requests.insert(s.packet_id, other);
                    return Err(Error::Protocol(format!(
                        "SUBACK for packet {} which is an UNSUBSCRIBE",
                        s.packet_id
                    )));
                }
                None => {}
            },
            Packet::UnsubAck(u) => match self.requests.remove(&u.packet_id) {
                Some(Request::Unsubscribe { reply, .. }) => answer(reply, Ok(u)),
                Some(other) => {
                    self.requests.insert(u.packet_id, other);
                    return Err(Error::Protocol(format!(
                        "UNSUBACK for packet {} which is a SUBSCRIBE",
                        u.packet_id
                    )));
                }
                None => {}
            },
            Packet::PingResp => self.ping_sent = None,
            Packet::Disconnect(d) => {
                return Err(Error::DisconnectedByServer {
                    reason: d.reason,
                    reason_string: d.properties.reason_string,
                })
            }
            Packet::ConnAck(_) => {
                return Err(Error::Protocol("a second CONNACK".into()));
            }
            Packet::Auth(_) => {
                return Err(Error::Protocol(
                    "AUTH received, but this client does not do enhanced authentication".into(),
                ));
            }
            p @ (Packet::Connect(_)
            | Packet::Subscribe(_)
            | Packet::Unsubscribe(_)
            | Packet::PingReq) => {
                return Err(Error::Protocol(format!(
                    "{} is a packet only clients send",
                    p.name()
                )));
            }
        }
        self.pump(now);
        Ok(())
    }

    fn handle_publish(&mut self, mut p: Publish, now: Instant) -> Result<(), Error> {
        if let Some(alias) = p.properties.topic_alias {
            if alias == 0 || alias > self.alias_max_in {
                return Err(Error::Protocol(format!(
                    "topic alias {alias} is above our Topic Alias Maximum of {}",
                    self.alias_max_in
                )));
            }
            if p.topic.is_empty() {
                match self.aliases_in.get(&alias) {
                    Some(t) => p.topic = t.clone(),
                    None => {
                        return Err(Error::Protocol(format!(
                            "topic alias {alias} used before it was set"
                        )))
                    }
                }
            } else {
                self.aliases_in.insert(alias, p.topic.clone());
            }
        } else if p.topic.is_empty() {
            return Err(Error::Protocol("PUBLISH with an empty topic".into()));
        }
        let deliver = match p.qos {
            QoS::AtMostOnce => true,
            QoS::AtLeastOnce => {
                self.send(&Packet::PubAck(PubAck::new(p.packet_id)), now)?;
                true
            }
            QoS::ExactlyOnce => {
                // Delivered on the first PUBLISH; a resend before PUBREL is not delivered
                // again, only acknowledged again.
                let first = self.inbound_qos2.insert(p.packet_id);
                self.send(&Packet::PubRec(PubAck::new(p.packet_id)), now)?;
                first
            }
        };
        if deliver && !self.discard_deliveries {
            self.deliveries.push_back(Message {
                topic: p.topic,
                payload: p.payload,
                qos: p.qos,
                retain: p.retain,
                dup: p.dup,
                packet_id: p.packet_id,
                properties: p.properties,
            });
        }
        Ok(())
    }

    /// When [`State::handle_timeout`] wants to be called (keep-alive).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.connected || self.server.keep_alive == 0 {
            return None;
        }
        let ka = Duration::from_secs(u64::from(self.server.keep_alive));
        Some(match self.ping_sent {
            Some(t) => t + ka,
            None => self.last_sent + ka,
        })
    }

    /// Sends PINGREQ when nothing was sent for a keep-alive period [MQTT-3.1.2-23]; fails when
    /// its PINGRESP did not come within another.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), Error> {
        let Some(deadline) = self.poll_timeout() else {
            return Ok(());
        };
        if now < deadline {
            return Ok(());
        }
        if self.ping_sent.is_some() {
            return Err(Error::KeepAliveTimeout(self.server.keep_alive));
        }
        self.send(&Packet::PingReq, now)?;
        self.ping_sent = Some(now);
        Ok(())
    }
}

/// Checks a topic filter: not empty, `#` last and alone in its level, `+` alone in its level,
/// no U+0000 [MQTT-4.7.1-1] [MQTT-4.7.1-2] [MQTT-4.7.3-1].
pub(crate) fn check_filter(f: &str) -> Result<(), Error> {
    let bad = |why: &str| Err(Error::Invalid(format!("invalid topic filter '{f}': {why}")));
    if f.is_empty() {
        return bad("it is empty");
    }
    if f.contains('\0') {
        return bad("it contains U+0000");
    }
    let levels: Vec<&str> = f.split('/').collect();
    let n = levels.len();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != n) {
            return bad("# must be the whole last level");
        }
        if level.contains('+') && *level != "+" {
            return bad("+ must be a whole level");
        }
    }
    Ok(())
}

/// A one-line description of a packet for debug logs, in the manner of Mosquitto's `-d`.
pub(crate) fn describe(p: &Packet) -> String {
    match p {
        Packet::Connect(c) => format!(
            "CONNECT (client id '{}', clean {}, keep-alive {})",
            c.client_id, c.clean_start as u8, c.keep_alive
        ),
        Packet::ConnAck(a) => format!(
            "CONNACK (session present {}, {})",
            a.session_present as u8, a.reason
        ),
        Packet::Publish(p) => format!(
            "PUBLISH (d{}, q{}, r{}, m{}, '{}', ... ({} bytes))",
            p.dup as u8,
            p.qos as u8,
            p.retain as u8,
            p.packet_id,
            p.topic,
            p.payload.len()
        ),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            format!("{} (m{}, {})", p.name(), a.packet_id, a.reason)
        }
        Packet::Subscribe(s) => {
            let filters: Vec<String> = s
                .filters
                .iter()
                .map(|(f, o)| format!("{f} (QoS {})", o.qos as u8))
                .collect();
            format!("SUBSCRIBE (m{}, {})", s.packet_id, filters.join(", "))
        }
        Packet::SubAck(s) => {
            let r: Vec<String> = s.reasons.iter().map(|r| r.0.to_string()).collect();
            format!("SUBACK (m{}, {})", s.packet_id, r.join(", "))
        }
        Packet::Unsubscribe(u) => {
            format!("UNSUBSCRIBE (m{}, {})", u.packet_id, u.filters.join(", "))
        }
        Packet::UnsubAck(u) => format!("UNSUBACK (m{})", u.packet_id),
        Packet::Disconnect(d) if d.reason.0 == 0 => "DISCONNECT (normal disconnection)".into(),
        Packet::Disconnect(d) => format!("DISCONNECT ({})", d.reason),
        other => other.name().to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use makelaar_proto::Decoder;

    fn opts(v: ProtocolVersion) -> ConnectOptions {
        ConnectOptions::new("localhost", 1883).version(v)
    }

    fn sent(s: &mut State) -> Vec<Packet> {
        let mut d = Decoder::new(usize::MAX);
        d.set_version(s.version);
        let mut out = Vec::new();
        // The decoder is the server's: it must be told CONNECT's version; here we decode
        // what a client sends, which a server decoder accepts after its version is set.
        while let Some(p) = d.decode(&mut s.out).unwrap() {
            out.push(p);
        }
        out
    }

    fn connack(session_present: bool, receive_maximum: Option<u16>) -> ConnAck {
        ConnAck {
            session_present,
            reason: ReasonCode::SUCCESS,
            properties: Properties {
                receive_maximum,
                ..Properties::default()
            },
        }
    }

    #[test]
    fn window_respects_receive_maximum() {
        let now = Instant::now();
        let mut s = State::new(&opts(ProtocolVersion::V5), now);
        s.on_connected(&connack(false, Some(2)), now);
        let mut rxs = Vec::new();
        for i in 0..4 {
            let (tx, rx) = oneshot::channel();
            s.publish(
                Message::new("t", format!("{i}")).with_qos(QoS::AtLeastOnce),
                Some(tx),
                now,
            );
            rxs.push(rx);
        }
        let p = sent(&mut s);
        assert_eq!(p.len(), 2, "only the window is sent: {p:?}");
        assert_eq!(s.queued(), 2);
        let Packet::Publish(first) = &p[0] else {
            panic!()
        };
        s.handle_packet(Packet::PubAck(PubAck::new(first.packet_id)), now)
            .unwrap();
        let p = sent(&mut s);
        assert_eq!(p.len(), 1);
        assert!(rxs[0].try_recv().unwrap().is_ok());
    }

    #[test]
    fn mqtt3_window_has_a_default() {
        let now = Instant::now();
        let mut s = State::new(&opts(ProtocolVersion::V311), now);
        s.on_connected(&connack(false, None), now);
        for _ in 0..150 {
            s.publish(Message::new("t", "x").with_qos(QoS::AtLeastOnce), None, now);
        }
        assert_eq!(
            sent(&mut s).len(),
            usize::from(crate::options::DEFAULT_INFLIGHT_V3)
        );
        let mut s = State::new(&opts(ProtocolVersion::V311).max_inflight(150), now);
        s.on_connected(&connack(false, None), now);
        for _ in 0..150 {
            s.publish(Message::new("t", "x").with_qos(QoS::AtLeastOnce), None, now);
        }
        assert_eq!(sent(&mut s).len(), 150);
    }

    #[test]
    fn qos2_both_ways() {
        let now = Instant::now();
        let mut s = State::new(&opts(ProtocolVersion::V311), now);
        s.on_connected(&connack(false, None), now);
        let (tx, mut rx) = oneshot::channel();
        s.publish(
            Message::new("t", "x").with_qos(QoS::ExactlyOnce),
            Some(tx),
            now,
        );
        let p = sent(&mut s);
        let Packet::Publish(pb) = &p[0] else { panic!() };
        s.handle_packet(Packet::PubRec(PubAck::new(pb.packet_id)), now)
            .unwrap();
        assert_eq!(
            sent(&mut s),
            vec![Packet::PubRel(PubAck::new(pb.packet_id))]
        );
        assert!(rx.try_recv().is_err());
        s.handle_packet(Packet::PubComp(PubAck::new(pb.packet_id)), now)
            .unwrap();
        assert!(rx.try_recv().unwrap().is_ok());

        // Inbound: delivered once even when resent before PUBREL.
        let incoming = Publish {
            qos: QoS::ExactlyOnce,
            topic: "in".into(),
            packet_id: 7,
            ..Publish::default()
        };
        s.handle_packet(Packet::Publish(incoming.clone()), now)
            .unwrap();
        s.handle_packet(
            Packet::Publish(Publish {
                dup: true,
                ..incoming
            }),
            now,
        )
        .unwrap();
        assert_eq!(s.deliveries.len(), 1);
        assert_eq!(
            sent(&mut s),
            vec![
                Packet::PubRec(PubAck::new(7)),
                Packet::PubRec(PubAck::new(7))
            ]
        );
        s.handle_packet(Packet::PubRel(PubAck::new(7)), now)
            .unwrap();
        assert_eq!(sent(&mut s), vec![Packet::PubComp(PubAck::new(7))]);
    }

    #[test]
    fn reconnect_resends_with_dup() {
        let now = Instant::now();
        let mut s = State::new(
            &opts(ProtocolVersion::V311)
                .clean_start(false)
                .client_id("c"),
            now,
        );
        s.on_connected(&connack(false, None), now);
        s.publish(Message::new("a", "1").with_qos(QoS::AtLeastOnce), None, now);
        s.publish(Message::new("b", "2").with_qos(QoS::ExactlyOnce), None, now);
        s.publish(Message::new("c", "3").with_qos(QoS::ExactlyOnce), None, now);
        let p = sent(&mut s);
        let Packet::Publish(c) = &p[2] else { panic!() };
        s.handle_packet(Packet::PubRec(PubAck::new(c.packet_id)), now)
            .unwrap();
        sent(&mut s);
        s.on_disconnected();
        s.on_connected(&connack(true, None), now);
        let p = sent(&mut s);
        assert_eq!(p.len(), 3);
        for (i, pk) in p.iter().take(2).enumerate() {
            let Packet::Publish(pb) = pk else {
                panic!("{pk:?}")
            };
            assert!(pb.dup, "resend {i} carries DUP");
        }
        assert_eq!(p[2], Packet::PubRel(PubAck::new(c.packet_id)));
    }

    #[test]
    fn keep_alive_pings_then_times_out() {
        let now = Instant::now();
        let mut s = State::new(&opts(ProtocolVersion::V311).keep_alive(5), now);
        s.on_connected(&connack(false, None), now);
        assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(5)));
        let t1 = now + Duration::from_secs(5);
        s.handle_timeout(t1).unwrap();
        assert_eq!(sent(&mut s), vec![Packet::PingReq]);
        assert!(s.handle_timeout(t1 + Duration::from_secs(5)).is_err());
    }

    #[test]
    fn filters_are_checked() {
        assert!(check_filter("a/+/b/#").is_ok());
        assert!(check_filter("a/b#").is_err());
        assert!(check_filter("a/#/b").is_err());
        assert!(check_filter("a+").is_err());
        assert!(check_filter("").is_err());
    }
}
