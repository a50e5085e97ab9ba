//! The encoder: [`Packet`]s into bytes for a given protocol version.
//!
//! Lengths are computed first, the buffer is reserved once, and the fields are written straight
//! into it. For 3.1 and 3.1.1 properties are left out and reason codes become the older return
//! codes; 5.0 acknowledgements use the short forms when they can.

mod properties;

use bytes::{BufMut, BytesMut};

use crate::decode::{
    AUTH, CONNACK, CONNECT, DISCONNECT, MAX_VBI, PINGREQ, PINGRESP, PUBACK, PUBCOMP, PUBLISH,
    PUBREC, PUBREL, SUBACK, SUBSCRIBE, UNSUBACK, UNSUBSCRIBE,
};
use crate::error::EncodeError;
use crate::packet::{Connect, Packet, ProtocolVersion, PubAck, Publish, QoS, SubscriptionOptions};
use crate::properties::Properties;
use crate::reason::ReasonCode;

use properties::{properties_len, put_properties};

/// Bytes a Variable Byte Integer takes for `v` (four for anything larger than it can hold).
pub(crate) fn vbi_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes a Variable Byte Integer; values above 268,435,455 cannot be expressed.
pub(crate) fn put_vbi(buf: &mut BytesMut, mut v: usize) -> Result<(), EncodeError> {
    if v > MAX_VBI {
        return Err(EncodeError::PacketTooLarge);
    }
    loop {
        // Lossless: masked to seven bits.
        let mut byte = (v & 0x7F) as u8;
        v >>= 7;
        if v > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if v == 0 {
            return Ok(());
        }
    }
}

/// Writes Binary Data: a two-byte length and the bytes.
pub(crate) fn put_binary(
    buf: &mut BytesMut,
    b: &[u8],
    what: &'static str,
) -> Result<(), EncodeError> {
    let n = u16::try_from(b.len()).map_err(|_| EncodeError::FieldTooLong(what))?;
    buf.put_u16(n);
    buf.put_slice(b);
    Ok(())
}

/// Writes a UTF-8 Encoded String: a two-byte length and the bytes.
pub(crate) fn put_str(buf: &mut BytesMut, s: &str, what: &'static str) -> Result<(), EncodeError> {
    put_binary(buf, s.as_bytes(), what)
}

/// A property block's size on the wire: its Property Length and the properties.
fn block(props_len: usize) -> usize {
    vbi_len(props_len) + props_len
}

/// What a packet needs on the wire, computed before writing it.
struct Plan {
    first: u8,
    remaining: usize,
    /// Length of the packet's properties (5.0), without the Property Length.
    props: usize,
    /// Length of the will properties (5.0 CONNECT).
    will_props: usize,
}

fn plan(packet: &Packet, version: ProtocolVersion) -> Plan {
    let v5 = version.is_v5();
    let props_of = |p: &Properties| if v5 { properties_len(p) } else { 0 };
    let mut will_props = 0;
    let (first, props, remaining) = match packet {
        Packet::Connect(c) => {
            let props = props_of(&c.properties);
            let mut n = connect_header_len(version) + 2 + c.client_id.len();
            if v5 {
                n += block(props);
            }
            if let Some(w) = &c.will {
                will_props = props_of(&w.properties);
                if v5 {
                    n += block(will_props);
                }
                n += 2 + w.topic.len() + 2 + w.payload.len();
            }
            if let Some(u) = &c.username {
                n += 2 + u.len();
            }
            if let Some(p) = &c.password {
                n += 2 + p.len();
            }
            (CONNECT << 4, props, n)
        }
        Packet::ConnAck(c) => {
            let props = props_of(&c.properties);
            let n = if v5 { 2 + block(props) } else { 2 };
            (CONNACK << 4, props, n)
        }
        Packet::Publish(p) => {
            let (props, n) = publish_lens(p, v5);
            (publish_first_byte(p), props, n)
        }
        Packet::PubAck(a) => puback_plan(PUBACK << 4, a, v5),
        Packet::PubRec(a) => puback_plan(PUBREC << 4, a, v5),
        Packet::PubRel(a) => puback_plan(PUBREL << 4 | 0b0010, a, v5),
        Packet::PubComp(a) => puback_plan(PUBCOMP << 4, a, v5),
        Packet::Subscribe(s) => {
            let props = props_of(&s.properties);
            let mut n = 2 + if v5 { block(props) } else { 0 };
            for (f, _) in &s.filters {
                n += 2 + f.len() + 1;
            }
            (SUBSCRIBE << 4 | 0b0010, props, n)
        }
        Packet::SubAck(s) => {
            let props = props_of(&s.properties);
            let n = 2 + if v5 { block(props) } else { 0 } + s.reasons.len();
            (SUBACK << 4, props, n)
        }
        Packet::Unsubscribe(u) => {
            let props = props_of(&u.properties);
            let mut n = 2 + if v5 { block(props) } else { 0 };
            for f in &u.filters {
                n += 2 + f.len();
            }
            (UNSUBSCRIBE << 4 | 0b0010, props, n)
        }
        Packet::UnsubAck(u) => {
            let props = props_of(&u.properties);
            let n = if v5 {
                2 + block(props) + u.reasons.len()
            } else {
                2
            };
            (UNSUBACK << 4, props, n)
        }
        Packet::PingReq => (PINGREQ << 4, 0, 0),
        Packet::PingResp => (PINGRESP << 4, 0, 0),
        Packet::Disconnect(d) => {
            let props = props_of(&d.properties);
            let n = if v5 {
                reason_tail_len(d.reason, props)
            } else {
                0
            };
            (DISCONNECT << 4, props, n)
        }
        Packet::Auth(a) => {
            let props = props_of(&a.properties);
            (AUTH << 4, props, reason_tail_len(a.reason, props))
        }
    };
    Plan {
        first,
        remaining,
        props,
        will_props,
    }
}

/// Protocol name, level, connect flags and keep alive.
fn connect_header_len(version: ProtocolVersion) -> usize {
    let name = if version == ProtocolVersion::V31 {
        6
    } else {
        4
    };
    2 + name + 1 + 1 + 2
}

/// DISCONNECT and AUTH in 5.0: nothing for success without properties, else the reason code
/// and, when there are properties, the property block.
fn reason_tail_len(reason: ReasonCode, props: usize) -> usize {
    if props > 0 {
        1 + block(props)
    } else if reason != ReasonCode::SUCCESS {
        1
    } else {
        0
    }
}

fn puback_plan(first: u8, a: &PubAck, v5: bool) -> (u8, usize, usize) {
    if !v5 {
        return (first, 0, 2);
    }
    let props = properties_len(&a.properties);
    (first, props, 2 + reason_tail_len(a.reason, props))
}

fn publish_first_byte(p: &Publish) -> u8 {
    PUBLISH << 4 | u8::from(p.dup) << 3 | (p.qos as u8) << 1 | u8::from(p.retain)
}

/// `(properties length, remaining length)` of a PUBLISH.
fn publish_lens(p: &Publish, v5: bool) -> (usize, usize) {
    let mut n = 2 + p.topic.len() + p.payload.len();
    if p.qos != QoS::AtMostOnce {
        n += 2;
    }
    let mut props = 0;
    if v5 {
        props = properties_len(&p.properties);
        n += block(props);
    }
    (props, n)
}

fn options_byte(o: &SubscriptionOptions, v5: bool) -> u8 {
    let mut b = o.qos as u8;
    if v5 {
        b |= u8::from(o.no_local) << 2;
        b |= u8::from(o.retain_as_published) << 3;
        b |= (o.retain_handling as u8) << 4;
    }
    b
}

impl Packet {
    /// Appends the packet encoded for `version` to `buf`. On error nothing is appended.
    ///
    /// For 3.1 and 3.1.1 properties are left out, CONNACK and SUBACK reason codes become return
    /// codes and acknowledgement reason codes are dropped. CONNECT is written for `version`
    /// (protocol name and level), whatever its `protocol` field says.
    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let start = buf.len();
        let result = self.encode_inner(version, buf);
        if result.is_err() {
            buf.truncate(start);
        }
        result
    }

    /// The exact number of bytes [`Packet::encode`] writes for `version` when it succeeds.
    pub fn encoded_len(&self, version: ProtocolVersion) -> usize {
        let remaining = match self {
            Packet::Publish(p) => publish_lens(p, version.is_v5()).1,
            _ => plan(self, version).remaining,
        };
        1 + vbi_len(remaining) + remaining
    }

    fn encode_inner(
        &self,
        version: ProtocolVersion,
        buf: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        let v5 = version.is_v5();
        if let Packet::Publish(p) = self {
            return encode_publish(p, v5, buf);
        }
        if let (Packet::Auth(_), false) = (self, v5) {
            return Err(EncodeError::NotInVersion("AUTH"));
        }
        let plan = plan(self, version);
        if plan.remaining > MAX_VBI {
            return Err(EncodeError::PacketTooLarge);
        }
        buf.reserve(1 + vbi_len(plan.remaining) + plan.remaining);
        buf.put_u8(plan.first);
        put_vbi(buf, plan.remaining)?;
        match self {
            Packet::Connect(c) => encode_connect(c, version, &plan, buf)?,
            Packet::ConnAck(c) => {
                let flags = if version == ProtocolVersion::V31 {
                    0
                } else {
                    u8::from(c.session_present)
                };
                buf.put_u8(flags);
                if v5 {
                    buf.put_u8(c.reason.0);
                    put_properties(buf, &c.properties, plan.props)?;
                } else {
                    buf.put_u8(c.reason.to_v3_connack());
                }
            }
            Packet::Publish(_) | Packet::PingReq | Packet::PingResp => {}
            Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
                buf.put_u16(a.packet_id);
                if v5 {
                    put_reason_tail(buf, a.reason, &a.properties, plan.props)?;
                }
            }
            Packet::Subscribe(s) => {
                buf.put_u16(s.packet_id);
                if v5 {
                    put_properties(buf, &s.properties, plan.props)?;
                }
                for (f, o) in &s.filters {
                    put_str(buf, f, "topic filter")?;
                    buf.put_u8(options_byte(o, v5));
                }
            }
            Packet::SubAck(s) => {
                buf.put_u16(s.packet_id);
                if v5 {
                    put_properties(buf, &s.properties, plan.props)?;
                    for r in &s.reasons {
                        buf.put_u8(r.0);
                    }
                } else {
                    for r in &s.reasons {
                        buf.put_u8(r.to_v3_suback());
                    }
                }
            }
            Packet::Unsubscribe(u) => {
                buf.put_u16(u.packet_id);
                if v5 {
                    put_properties(buf, &u.properties, plan.props)?;
                }
                for f in &u.filters {
                    put_str(buf, f, "topic filter")?;
                }
            }
            Packet::UnsubAck(u) => {
                buf.put_u16(u.packet_id);
                if v5 {
                    put_properties(buf, &u.properties, plan.props)?;
                    for r in &u.reasons {
                        buf.put_u8(r.0);
                    }
                }
            }
            Packet::Disconnect(d) => {
                if v5 {
                    put_reason_tail(buf, d.reason, &d.properties, plan.props)?;
                }
            }
            Packet::Auth(a) => put_reason_tail(buf, a.reason, &a.properties, plan.props)?,
        }
        Ok(())
    }
}

/// The 5.0 reason code and properties of acknowledgements, DISCONNECT and AUTH, in the short
/// form the plan chose (see [`reason_tail_len`]).
fn put_reason_tail(
    buf: &mut BytesMut,
    reason: ReasonCode,
    props: &Properties,
    props_len: usize,
) -> Result<(), EncodeError> {
    if props_len > 0 {
        buf.put_u8(reason.0);
        put_properties(buf, props, props_len)?;
    } else if reason != ReasonCode::SUCCESS {
        buf.put_u8(reason.0);
    }
    Ok(())
}

/// The hot path: one reservation, fields written in place.
fn encode_publish(p: &Publish, v5: bool, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let (props, remaining) = publish_lens(p, v5);
    if remaining > MAX_VBI {
        return Err(EncodeError::PacketTooLarge);
    }
    buf.reserve(1 + vbi_len(remaining) + remaining);
    buf.put_u8(publish_first_byte(p));
    put_vbi(buf, remaining)?;
    put_str(buf, &p.topic, "topic name")?;
    if p.qos != QoS::AtMostOnce {
        buf.put_u16(p.packet_id);
    }
    if v5 {
        put_properties(buf, &p.properties, props)?;
    }
    buf.put_slice(&p.payload);
    Ok(())
}

fn encode_connect(
    c: &Connect,
    version: ProtocolVersion,
    plan: &Plan,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let v5 = version.is_v5();
    let name: &str = if version == ProtocolVersion::V31 {
        "MQIsdp"
    } else {
        "MQTT"
    };
    put_str(buf, name, "protocol name")?;
    // The bridge bit (Mosquitto's `try_private`) exists for 3.1 and 3.1.1 only.
    let bridge = if c.bridge && !v5 { 0x80 } else { 0 };
    buf.put_u8(version.level() | bridge);
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(w) = &c.will {
        flags |= 0x04 | (w.qos as u8) << 3 | u8::from(w.retain) << 5;
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    buf.put_u8(flags);
    buf.put_u16(c.keep_alive);
    if v5 {
        put_properties(buf, &c.properties, plan.props)?;
    }
    put_str(buf, &c.client_id, "client identifier")?;
    if let Some(w) = &c.will {
        if v5 {
            put_properties(buf, &w.properties, plan.will_props)?;
        }
        put_str(buf, &w.topic, "will topic")?;
        put_binary(buf, &w.payload, "will payload")?;
    }
    if let Some(u) = &c.username {
        put_str(buf, u, "user name")?;
    }
    if let Some(p) = &c.password {
        put_binary(buf, p, "password")?;
    }
    Ok(())
}
