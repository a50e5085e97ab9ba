//! What the cluster keeps in its KV buckets, and the binary form it keeps it in.
//!
//! Every record starts with a format version byte ([`FORMAT`]); a reader refuses versions it
//! does not know ([`DecodeError::UnknownVersion`]) instead of guessing. Integers are LEB128,
//! strings and byte strings length-prefixed (see [`crate::codec`]).
//!
//! - [`SessionRecord`]: a persistent session, or a connection with a will whose session
//!   ends with it (kept until the will is decided, see [`crate::wills`]), in the `sessions`
//!   bucket under its [`ClientKey`](crate::ClientKey), written by the owning node with
//!   compare-and-set.
//! - [`RegistryEntry`]: who holds a client id, in the `registry` bucket.
//! - [`NodeLease`]: a node's liveness, in the `leases` bucket under its name.

use bytes::Bytes;
use makelaar_proto::packet::{QoS, RetainHandling, SubscriptionOptions};

pub use crate::codec::DecodeError;
use crate::codec::{Reader, Writer};
use crate::ids::NodeId;

/// The format version of every record this crate writes.
pub const FORMAT: u8 = 1;

/// A persistent session (or a connection's will) as the cluster keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The node that wrote it.
    pub node: NodeId,
    /// The registry revision of the claim under which it was written: the fencing epoch.
    pub claim: u64,
    /// The MQTT protocol level of the connection that made it (3, 4 or 5).
    pub protocol: u8,
    /// Session Expiry Interval, seconds; `u32::MAX` never expires.
    pub expiry_interval: u32,
    /// When the client disconnected (unix milliseconds); `None` while connected.
    pub disconnected_at_ms: Option<u64>,
    /// The subscriptions, with their options.
    pub subscriptions: Vec<StoredSubscription>,
    /// The will waiting to be published, if any.
    pub will: Option<StoredWill>,
    /// Per partition, where the session stands in the stream (see [`Cursor`]). Written when
    /// the session goes offline or is handed over, and by the checkpoints of a connected
    /// one (see [`crate::checkpoint`]); empty when its node wrote none yet (nothing can be
    /// replayed from it).
    pub cursors: Vec<Cursor>,
    /// Outbound QoS 1/2 messages the session took in and has not completed: in flight
    /// (sent, awaiting PUBACK, PUBREC or PUBCOMP) and queued, in the session's order.
    pub outbound: Vec<Outbound>,
    /// Inbound QoS 2 packet ids received and not yet released (PUBREL), so a resent PUBLISH
    /// after a move to another node is not delivered twice.
    pub inbound_qos2: Vec<u16>,
    /// The last writes that took a will out of this record to publish it, newest first (at
    /// most [`WILL_TAKERS_KEPT`]), kept by every writer after them: a node whose write took
    /// the will out but whose answer got lost, and which finds the record rewritten by
    /// another node since, learns from it that its own write landed and that the will is
    /// its to publish (see [`crate::wills::taken_by_me`]). More than one, because the node
    /// that wrote since may take a will of its own out before the first node looks.
    pub will_takers: Vec<WillTaker>,
    /// The node whose own messages the cursors' `writer_through` count, when that is not
    /// [`SessionRecord::node`]: the record was written again by a node that did not have
    /// the session's place in the log of its own yet (a claimer taking the will out, a
    /// reaper, a node whose replay of the session was not back), and kept the place in the
    /// log its writer had (see [`SessionRecord::log_writer`]).
    pub cursors_of: Option<NodeId>,
    /// The log writer's own messages the session took in that stand past its cursors'
    /// `writer_through` (partition, stream sequence): wills of that node whose append
    /// failed, routed there at once, and appended later by a retry, apart from their
    /// batches (issue 15: a subscriber that got such a will, moved away and back, got it
    /// again from the replay). A replay skips them like the messages below the cursors.
    pub writer_late: Vec<(u16, u64)>,
}

/// How many will take-outs a session record remembers ([`SessionRecord::will_takers`]):
/// one per node of a three-node cluster, and one more.
pub const WILL_TAKERS_KEPT: usize = 4;

/// Who took a will out of a session record: a node, under its claim of the client id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WillTaker {
    /// The node that wrote the record without the will.
    pub node: NodeId,
    /// The registry revision of its claim.
    pub claim: u64,
    /// The record the will was taken from: its writer, under that writer's claim (another
    /// node's when a claim or a reap took it, the taker's own when it ended its own
    /// connection). A node that wrote a will and gave the session up before it learnt
    /// whether that write landed reads here that the claimer took it, so it does not
    /// publish it too ([`crate::wills::left_in_record`]). `None` in marks made before it
    /// was kept.
    pub from: Option<(NodeId, u64)>,
}

/// One subscription of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSubscription {
    /// The filter as subscribed (`$share/GROUP/…` included).
    pub filter: String,
    /// QoS, No Local, Retain As Published, Retain Handling.
    pub options: SubscriptionOptions,
    /// The subscription identifier (5.0).
    pub identifier: Option<u32>,
}

/// A will as the cluster keeps it (the 5.0 will properties included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredWill {
    /// Will topic.
    pub topic: String,
    /// Will payload.
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will retain.
    pub retain: bool,
    /// Will Delay Interval, seconds.
    pub delay: u32,
    /// Message Expiry Interval, seconds.
    pub message_expiry: Option<u32>,
    /// Payload Format Indicator: UTF-8.
    pub payload_utf8: bool,
    /// Content Type.
    pub content_type: Option<String>,
    /// Response Topic.
    pub response_topic: Option<String>,
    /// Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// User properties, in order.
    pub user_properties: Vec<(String, String)>,
    /// The authenticated username of the connection that set it: the identity the will is
    /// published (and checked for Write access) with, on whichever node publishes it.
    pub username: Option<String>,
}

/// Where a session stands in one partition's stream.
///
/// A node routes the messages its own clients publish when they arrive, before their
/// append gives them a stream sequence, and the messages of other nodes in stream order. So
/// what a session took in on the writing node is: every message below `next`, and its own
/// messages up to `writer_through`, wherever they are. The rest is not yet delivered to it
/// (see [`crate::replay`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The partition index.
    pub partition: u16,
    /// The next stream sequence not yet taken in.
    pub next: u64,
    /// The highest sequence of a message the writing node ([`SessionRecord::log_writer`])
    /// published itself here before the record was taken; 0 when none.
    pub writer_through: u64,
}

/// The state of one outbound QoS 1/2 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundState {
    /// QoS 1 sent, PUBACK awaited.
    AwaitPuback,
    /// QoS 2 sent, PUBREC awaited.
    AwaitPubrec,
    /// PUBREL sent, PUBCOMP awaited: the PUBLISH is never sent again.
    AwaitPubcomp,
    /// Taken in, not sent yet (no packet id).
    Queued,
}

/// One outbound QoS 1/2 message in flight or queued, by its place in a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outbound {
    /// Its packet id on the client's connection (0 while queued).
    pub packet_id: u16,
    /// The partition holding the message.
    pub partition: u16,
    /// Its stream sequence there.
    pub seq: u64,
    /// Where the exchange stands.
    pub state: OutboundState,
}

/// Who holds a client id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryEntry {
    /// The owning node.
    pub node: NodeId,
    /// The owning node's incarnation (its lease's), so a restarted node is not its old self.
    pub incarnation: u64,
    /// Whether a connection is open for it on that node.
    pub connected: bool,
    /// The other node the client was on before this node's claims, until a connection of
    /// this node's has ended normally ([`RegistryEntry::last_elsewhere`]): a claim that
    /// wrote the entry and then failed (the engine refused a read after it) leaves the
    /// entry naming this node, and the client's next claim here must still know that what
    /// it published on that other node may not have reached this node's followers yet.
    pub came_from: Option<NodeId>,
}

/// A node's lease: what it writes every refresh interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLease {
    /// The node.
    pub node: NodeId,
    /// Chosen at start-up, different at every start (a random number or the start time).
    pub incarnation: u64,
}

fn qos_from(v: u8, field: &'static str) -> Result<QoS, DecodeError> {
    QoS::from_u8(v).ok_or(DecodeError::BadValue(field))
}

fn node_from(r: &mut Reader<'_>) -> Result<NodeId, DecodeError> {
    NodeId::new(&r.str("node")?).map_err(|_| DecodeError::BadValue("node"))
}

fn retain_handling(v: u8) -> Result<RetainHandling, DecodeError> {
    match v {
        0 => Ok(RetainHandling::SendAtSubscribe),
        1 => Ok(RetainHandling::SendIfNew),
        2 => Ok(RetainHandling::DoNotSend),
        _ => Err(DecodeError::BadValue("retain_handling")),
    }
}

impl SessionRecord {
    /// The binary form.
    pub fn encode(&self) -> Bytes {
        let mut w = Writer::new(FORMAT);
        w.str(self.node.as_str());
        w.uint(self.claim);
        w.u8(self.protocol);
        w.uint(u64::from(self.expiry_interval));
        w.opt_uint(self.disconnected_at_ms);
        w.uint(self.subscriptions.len() as u64);
        for s in &self.subscriptions {
            w.str(&s.filter);
            let o = s.options;
            w.u8(o.qos as u8);
            w.bool(o.no_local);
            w.bool(o.retain_as_published);
            w.u8(o.retain_handling as u8);
            w.opt_uint(s.identifier.map(u64::from));
        }
        w.bool(self.will.is_some());
        if let Some(will) = &self.will {
            w.str(&will.topic);
            w.bytes(&will.payload);
            w.u8(will.qos as u8);
            w.bool(will.retain);
            w.uint(u64::from(will.delay));
            w.opt_uint(will.message_expiry.map(u64::from));
            w.bool(will.payload_utf8);
            w.opt_str(will.content_type.as_deref());
            w.opt_str(will.response_topic.as_deref());
            w.opt_bytes(will.correlation_data.as_deref());
            w.uint(will.user_properties.len() as u64);
            for (k, v) in &will.user_properties {
                w.str(k);
                w.str(v);
            }
            w.opt_str(will.username.as_deref());
        }
        w.uint(self.cursors.len() as u64);
        for c in &self.cursors {
            w.uint(u64::from(c.partition));
            w.uint(c.next);
            w.uint(c.writer_through);
        }
        w.uint(self.outbound.len() as u64);
        for o in &self.outbound {
            w.uint(u64::from(o.packet_id));
            w.uint(u64::from(o.partition));
            w.uint(o.seq);
            w.u8(match o.state {
                OutboundState::AwaitPuback => 0,
                OutboundState::AwaitPubrec => 1,
                OutboundState::AwaitPubcomp => 2,
                OutboundState::Queued => 3,
            });
        }
        w.uint(self.inbound_qos2.len() as u64);
        for id in &self.inbound_qos2 {
            w.uint(u64::from(*id));
        }
        // The newest take-out here (where records had their only one), the others last.
        w.bool(!self.will_takers.is_empty());
        if let Some(t) = self.will_takers.first() {
            w.str(t.node.as_str());
            w.uint(t.claim);
        }
        w.bool(self.cursors_of.is_some());
        if let Some(n) = &self.cursors_of {
            w.str(n.as_str());
        }
        w.uint(self.writer_late.len() as u64);
        for &(partition, seq) in &self.writer_late {
            w.uint(u64::from(partition));
            w.uint(seq);
        }
        let earlier = self.will_takers.get(1..).unwrap_or_default();
        w.uint(earlier.len() as u64);
        for t in earlier {
            w.str(t.node.as_str());
            w.uint(t.claim);
        }
        // Where each mark's will came from, in the marks' order (added last).
        w.uint(self.will_takers.len() as u64);
        for t in &self.will_takers {
            w.bool(t.from.is_some());
            if let Some((node, claim)) = &t.from {
                w.str(node.as_str());
                w.uint(*claim);
            }
        }
        w.finish()
    }

    /// Reads the binary form.
    pub fn decode(data: &[u8]) -> Result<SessionRecord, DecodeError> {
        let mut r = Reader::new(data, FORMAT)?;
        let node = node_from(&mut r)?;
        let claim = r.uint("claim")?;
        let protocol = r.u8()?;
        if !(3..=5).contains(&protocol) {
            return Err(DecodeError::BadValue("protocol"));
        }
        let expiry_interval = r.int("expiry_interval")?;
        let disconnected_at_ms = r.opt_uint("disconnected_at_ms")?;
        let n = r.count("subscriptions")?;
        let mut subscriptions = Vec::with_capacity(n);
        for _ in 0..n {
            let filter = r.str("filter")?;
            let options = SubscriptionOptions {
                qos: qos_from(r.u8()?, "qos")?,
                no_local: r.bool("no_local")?,
                retain_as_published: r.bool("retain_as_published")?,
                retain_handling: retain_handling(r.u8()?)?,
            };
            let identifier = r
                .opt_uint("identifier")?
                .map(|v| u32::try_from(v).map_err(|_| DecodeError::BadValue("identifier")))
                .transpose()?;
            subscriptions.push(StoredSubscription {
                filter,
                options,
                identifier,
            });
        }
        let will = if r.bool("will")? {
            Some(StoredWill {
                topic: r.str("will_topic")?,
                payload: Bytes::copy_from_slice(r.bytes("will_payload")?),
                qos: qos_from(r.u8()?, "will_qos")?,
                retain: r.bool("will_retain")?,
                delay: r.int("will_delay")?,
                message_expiry: r
                    .opt_uint("message_expiry")?
                    .map(|v| u32::try_from(v).map_err(|_| DecodeError::BadValue("message_expiry")))
                    .transpose()?,
                payload_utf8: r.bool("payload_utf8")?,
                content_type: r.opt_str("content_type")?,
                response_topic: r.opt_str("response_topic")?,
                correlation_data: r.opt_bytes("correlation_data")?,
                user_properties: {
                    let n = r.count("user_properties")?;
                    let mut v = Vec::with_capacity(n);
                    for _ in 0..n {
                        v.push((r.str("user_property")?, r.str("user_property")?));
                    }
                    v
                },
                username: r.opt_str("will_username")?,
            })
        } else {
            None
        };
        let n = r.count("cursors")?;
        let mut cursors = Vec::with_capacity(n);
        for _ in 0..n {
            cursors.push(Cursor {
                partition: r.int("partition")?,
                next: r.uint("next")?,
                writer_through: r.uint("writer_through")?,
            });
        }
        let n = r.count("outbound")?;
        let mut outbound = Vec::with_capacity(n);
        for _ in 0..n {
            outbound.push(Outbound {
                packet_id: r.int("packet_id")?,
                partition: r.int("partition")?,
                seq: r.uint("seq")?,
                state: match r.u8()? {
                    0 => OutboundState::AwaitPuback,
                    1 => OutboundState::AwaitPubrec,
                    2 => OutboundState::AwaitPubcomp,
                    3 => OutboundState::Queued,
                    _ => return Err(DecodeError::BadValue("outbound_state")),
                },
            });
        }
        let n = r.count("inbound_qos2")?;
        let mut inbound_qos2 = Vec::with_capacity(n);
        for _ in 0..n {
            inbound_qos2.push(r.int("inbound_qos2")?);
        }
        // Absent from records written before it existed.
        let mut will_takers = Vec::new();
        if !r.is_empty() && r.bool("will_taken_by")? {
            will_takers.push(WillTaker {
                node: node_from(&mut r)?,
                claim: r.uint("will_taken_claim")?,
                from: None,
            });
        }
        let cursors_of = if !r.is_empty() && r.bool("cursors_of")? {
            Some(node_from(&mut r)?)
        } else {
            None
        };
        let mut writer_late = Vec::new();
        if !r.is_empty() {
            let n = r.count("writer_late")?;
            writer_late.reserve(n);
            for _ in 0..n {
                writer_late.push((r.int("partition")?, r.uint("seq")?));
            }
        }
        // Absent from records written before it existed.
        if !r.is_empty() {
            let n = r.count("will_takers")?;
            for _ in 0..n {
                will_takers.push(WillTaker {
                    node: node_from(&mut r)?,
                    claim: r.uint("will_taken_claim")?,
                    from: None,
                });
            }
        }
        // Absent from records written before it existed.
        if !r.is_empty() {
            let n = r.count("will_taken_from")?;
            for i in 0..n {
                let from = if r.bool("will_taken_from")? {
                    Some((node_from(&mut r)?, r.uint("will_taken_from_claim")?))
                } else {
                    None
                };
                if let Some(t) = will_takers.get_mut(i) {
                    t.from = from;
                }
            }
        }
        r.end()?;
        Ok(SessionRecord {
            node,
            claim,
            protocol,
            expiry_interval,
            disconnected_at_ms,
            subscriptions,
            will,
            cursors,
            outbound,
            inbound_qos2,
            will_takers,
            cursors_of,
            writer_late,
        })
    }

    /// The node whose own messages the cursors' `writer_through` count (see [`Cursor`]).
    pub fn log_writer(&self) -> &NodeId {
        self.cursors_of.as_ref().unwrap_or(&self.node)
    }

    /// The same session, written by `node` under its claim `claim`, keeping the place in
    /// the log this record gives (its cursors still count their writer's own messages).
    pub fn written_again_by(&self, node: NodeId, claim: u64) -> SessionRecord {
        let cursors_of = (*self.log_writer() != node).then(|| self.log_writer().clone());
        SessionRecord {
            node,
            claim,
            cursors_of,
            ..self.clone()
        }
    }
}

impl RegistryEntry {
    /// The binary form.
    pub fn encode(&self) -> Bytes {
        let mut w = Writer::new(FORMAT);
        w.str(self.node.as_str());
        w.uint(self.incarnation);
        w.bool(self.connected);
        // Last and optional: an entry written before the field reads as `None`.
        if let Some(n) = &self.came_from {
            w.str(n.as_str());
        }
        w.finish()
    }

    /// Reads the binary form.
    pub fn decode(data: &[u8]) -> Result<RegistryEntry, DecodeError> {
        let mut r = Reader::new(data, FORMAT)?;
        let mut e = RegistryEntry {
            node: node_from(&mut r)?,
            incarnation: r.uint("incarnation")?,
            connected: r.bool("connected")?,
            came_from: None,
        };
        if !r.is_empty() {
            e.came_from = Some(node_from(&mut r)?);
        }
        r.end()?;
        Ok(e)
    }

    /// The other node than `me` the client was on last, as far as this entry knows: its
    /// holder, or the node it came from before claims of `me` ([`RegistryEntry::came_from`]).
    pub fn last_elsewhere(&self, me: &NodeId) -> Option<&NodeId> {
        if self.node != *me {
            Some(&self.node)
        } else {
            self.came_from.as_ref().filter(|n| *n != me)
        }
    }
}

impl NodeLease {
    /// The binary form.
    pub fn encode(&self) -> Bytes {
        let mut w = Writer::new(FORMAT);
        w.str(self.node.as_str());
        w.uint(self.incarnation);
        w.finish()
    }

    /// Reads the binary form.
    pub fn decode(data: &[u8]) -> Result<NodeLease, DecodeError> {
        let mut r = Reader::new(data, FORMAT)?;
        let l = NodeLease {
            node: node_from(&mut r)?,
            incarnation: r.uint("incarnation")?,
        };
        r.end()?;
        Ok(l)
    }
}

#[cfg(test)]
mod tests;
