//! The byte encoding of the records stored as redb values.
//!
//! A small length-prefixed little-endian format of our own rather than MQTT packets: the wire
//! decoder validates what a client may send (which properties a PUBLISH may carry, topic
//! rules), and tightening those rules later must never make stored data unreadable. Properties
//! are written as (MQTT property id, value) pairs, so a record written today stays readable
//! when fields are added; the exhaustive destructuring below fails to compile when
//! `Properties` gains a field, so none is silently dropped.

use std::sync::Arc;

use bytes::Bytes;
use makelaar_proto::{QoS, RetainHandling, SubscriptionOptions, Will};

use crate::record::{MessageRecord, QueuedRecord, QueuedState, SessionRecord, SubscriptionRecord};

mod properties;
#[cfg(test)]
mod tests;

use properties::{get_properties, put_properties};

/// A stored value could not be decoded; says what was being read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CodecError(pub &'static str);

type Result<T> = std::result::Result<T, CodecError>;

/// Appends values to a byte vector.
#[derive(Default)]
pub(crate) struct Writer(pub Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        // Values are bounded far below 4 GiB by the packet size limit; saturate rather than
        // wrap so an impossible length can never alias a short one.
        self.u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(b);
    }
    fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.u64(v);
            }
        }
    }
    fn opt_str(&mut self, v: Option<&str>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.bytes(v.as_bytes());
            }
        }
    }
}

/// Reads values from a byte slice, failing (never panicking) on short or bad input.
pub(crate) struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n).ok_or(CodecError(what))?;
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        self.take(N, what)?.try_into().map_err(|_| CodecError(what))
    }
    fn u8(&mut self, what: &'static str) -> Result<u8> {
        Ok(u8::from_le_bytes(self.array(what)?))
    }
    fn u16(&mut self, what: &'static str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8]> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }
    fn string(&mut self, what: &'static str) -> Result<String> {
        let b = self.bytes(what)?;
        String::from_utf8(b.to_vec()).map_err(|_| CodecError(what))
    }
    fn flag(&mut self, what: &'static str) -> Result<bool> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(CodecError(what)),
        }
    }
    fn qos(&mut self, what: &'static str) -> Result<QoS> {
        QoS::from_u8(self.u8(what)?).ok_or(CodecError(what))
    }
    fn opt_u64(&mut self, what: &'static str) -> Result<Option<u64>> {
        Ok(if self.flag(what)? {
            Some(self.u64(what)?)
        } else {
            None
        })
    }
    fn opt_str(&mut self, what: &'static str) -> Result<Option<String>> {
        Ok(if self.flag(what)? {
            Some(self.string(what)?)
        } else {
            None
        })
    }
    fn end(&self, what: &'static str) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(CodecError(what))
        }
    }
}

/// Encodes a session record.
pub(crate) fn encode_session(s: &SessionRecord) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(s.protocol_version);
    w.u32(s.expiry_interval);
    w.opt_u64(s.disconnected_at_ms);
    w.opt_u64(s.will_at_ms);
    match &s.pending_will {
        None => w.u8(0),
        Some(will) => {
            w.u8(1);
            w.bytes(will.topic.as_bytes());
            w.bytes(&will.payload);
            w.u8(will.qos as u8);
            w.u8(u8::from(will.retain));
            put_properties(&mut w, &will.properties);
        }
    }
    // Last, so that records written before it existed still read (as no username).
    w.opt_str(s.username.as_deref());
    w.0
}

/// Decodes a session record.
pub(crate) fn decode_session(b: &[u8]) -> Result<SessionRecord> {
    const W: &str = "session";
    let mut r = Reader(b);
    let protocol_version = r.u8(W)?;
    let expiry_interval = r.u32(W)?;
    let disconnected_at_ms = r.opt_u64(W)?;
    let will_at_ms = r.opt_u64(W)?;
    let pending_will = if r.flag(W)? {
        Some(Box::new(Will {
            topic: r.string(W)?,
            payload: Bytes::copy_from_slice(r.bytes(W)?),
            qos: r.qos(W)?,
            retain: r.flag(W)?,
            properties: get_properties(&mut r)?,
        }))
    } else {
        None
    };
    let username = if r.0.is_empty() { None } else { r.opt_str(W)? };
    r.end(W)?;
    Ok(SessionRecord {
        username,
        protocol_version,
        expiry_interval,
        disconnected_at_ms,
        pending_will,
        will_at_ms,
    })
}

/// Encodes a subscription record.
pub(crate) fn encode_subscription(s: &SubscriptionRecord) -> Vec<u8> {
    let mut w = Writer::default();
    let o = &s.options;
    w.u8(o.qos as u8);
    w.u8(u8::from(o.no_local));
    w.u8(u8::from(o.retain_as_published));
    w.u8(o.retain_handling as u8);
    match s.subscription_id {
        None => w.u8(0),
        Some(id) => {
            w.u8(1);
            w.u32(id);
        }
    }
    w.0
}

/// Decodes a subscription record.
pub(crate) fn decode_subscription(b: &[u8]) -> Result<SubscriptionRecord> {
    const W: &str = "subscription";
    let mut r = Reader(b);
    let qos = r.qos(W)?;
    let no_local = r.flag(W)?;
    let retain_as_published = r.flag(W)?;
    let retain_handling = match r.u8(W)? {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(CodecError(W)),
    };
    let subscription_id = if r.flag(W)? { Some(r.u32(W)?) } else { None };
    r.end(W)?;
    Ok(SubscriptionRecord {
        options: SubscriptionOptions {
            qos,
            no_local,
            retain_as_published,
            retain_handling,
        },
        subscription_id,
    })
}

// Topic and payload come first so that `queued_weight` finds them without decoding the rest.
fn put_message(w: &mut Writer, m: &MessageRecord) {
    w.bytes(m.topic.as_bytes());
    w.bytes(&m.payload);
    w.u8(m.qos as u8);
    w.u8(u8::from(m.retain));
    w.opt_u64(m.expires_at_ms);
    w.opt_str(m.origin.as_deref());
    put_properties(w, &m.properties);
}

fn get_message(r: &mut Reader<'_>) -> Result<MessageRecord> {
    const W: &str = "message";
    Ok(MessageRecord {
        topic: Arc::from(r.string(W)?),
        payload: Bytes::copy_from_slice(r.bytes(W)?),
        qos: r.qos(W)?,
        retain: r.flag(W)?,
        expires_at_ms: r.opt_u64(W)?,
        origin: r.opt_str(W)?.map(Arc::from),
        properties: get_properties(r)?,
    })
}

/// Encodes a retained message.
pub(crate) fn encode_message(m: &MessageRecord) -> Vec<u8> {
    let mut w = Writer::default();
    put_message(&mut w, m);
    w.0
}

/// Decodes a retained message.
pub(crate) fn decode_message(b: &[u8]) -> Result<MessageRecord> {
    let mut r = Reader(b);
    let m = get_message(&mut r)?;
    r.end("message")?;
    Ok(m)
}

/// Encodes a queued message: the message first, then the delivery and its state.
pub(crate) fn encode_queued(q: &QueuedRecord) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(64 + q.message.weight() as usize));
    put_message(&mut w, &q.message);
    w.u8(q.qos as u8);
    w.u8(u8::from(q.retain));
    w.u32(u32::try_from(q.subscription_ids.len()).unwrap_or(u32::MAX));
    for id in &q.subscription_ids {
        w.u32(*id);
    }
    w.opt_str(q.shared_filter.as_deref());
    match q.state {
        QueuedState::Queued => w.u8(0),
        QueuedState::AwaitingAck { packet_id } => {
            w.u8(1);
            w.u16(packet_id);
        }
        QueuedState::AwaitingComp { packet_id } => {
            w.u8(2);
            w.u16(packet_id);
        }
    }
    w.0
}

/// Decodes a queued message.
pub(crate) fn decode_queued(b: &[u8]) -> Result<QueuedRecord> {
    const W: &str = "queued message";
    let mut r = Reader(b);
    let message = get_message(&mut r)?;
    let qos = r.qos(W)?;
    let retain = r.flag(W)?;
    let n = r.u32(W)?;
    // Bounded by the bytes left, so a damaged count cannot make us allocate gigabytes.
    let mut subscription_ids = Vec::with_capacity((n as usize).min(r.0.len() / 4));
    for _ in 0..n {
        subscription_ids.push(r.u32(W)?);
    }
    let shared_filter = r.opt_str(W)?.map(Arc::from);
    let state = match r.u8(W)? {
        0 => QueuedState::Queued,
        1 => QueuedState::AwaitingAck {
            packet_id: r.u16(W)?,
        },
        2 => QueuedState::AwaitingComp {
            packet_id: r.u16(W)?,
        },
        _ => return Err(CodecError(W)),
    };
    r.end(W)?;
    Ok(QueuedRecord {
        message: Arc::new(message),
        qos,
        retain,
        subscription_ids,
        shared_filter,
        state,
    })
}

/// The weight (topic + payload bytes) of an encoded queued message, read from its head.
pub(crate) fn queued_weight(b: &[u8]) -> Result<u64> {
    const W: &str = "queued message";
    let mut r = Reader(b);
    let topic = r.bytes(W)?.len();
    let payload = r.bytes(W)?.len();
    Ok((topic + payload) as u64)
}

/// Encodes a session's queue depth (count, bytes, next seq).
pub(crate) fn encode_depth(count: u64, bytes: u64, next_seq: u64) -> [u8; 24] {
    let mut out = [0u8; 24];
    for (chunk, v) in out.chunks_exact_mut(8).zip([count, bytes, next_seq]) {
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    out
}

/// Decodes a session's queue depth.
pub(crate) fn decode_depth(b: &[u8]) -> Result<(u64, u64, u64)> {
    const W: &str = "queue depth";
    let mut r = Reader(b);
    let v = (r.u64(W)?, r.u64(W)?, r.u64(W)?);
    r.end(W)?;
    Ok(v)
}
