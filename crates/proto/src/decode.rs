//! The decoder: bytes from the network into [`Packet`]s.
//!
//! [`Decoder::decode`] looks at the fixed header first and refuses a packet larger than the
//! configured maximum before its body is buffered; a complete packet is split off the front of
//! the buffer and parsed from a shared [`Bytes`](bytes::Bytes), so the PUBLISH payload (and binary fields such
//! as correlation data) are slices of the received bytes, not copies.
//!
//! The decoder enforces what can be checked on one packet alone (format, flags, lengths,
//! UTF-8, property placement and values, the syntax of topic names and filters). Rules that need session state (first packet is
//! CONNECT, packet identifiers in use, topic alias ranges, receive maximum, ...) belong to the
//! broker.

pub(crate) mod properties;
mod reader;

use std::sync::Arc;

use bytes::{Buf, BytesMut};

use crate::error::DecodeError;
use crate::packet::{
    Auth, ConnAck, Connect, Disconnect, Packet, ProtocolVersion, PubAck, Publish, QoS,
    RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe, Will,
};
use crate::properties::Properties;
use crate::reason::ReasonCode;
use crate::topic::validate_filter_syntax;

use properties::{read_properties, Context};
use reader::{utf8, Reader};

pub(crate) const CONNECT: u8 = 1;
pub(crate) const CONNACK: u8 = 2;
pub(crate) const PUBLISH: u8 = 3;
pub(crate) const PUBACK: u8 = 4;
pub(crate) const PUBREC: u8 = 5;
pub(crate) const PUBREL: u8 = 6;
pub(crate) const PUBCOMP: u8 = 7;
pub(crate) const SUBSCRIBE: u8 = 8;
pub(crate) const SUBACK: u8 = 9;
pub(crate) const UNSUBSCRIBE: u8 = 10;
pub(crate) const UNSUBACK: u8 = 11;
pub(crate) const PINGREQ: u8 = 12;
pub(crate) const PINGRESP: u8 = 13;
pub(crate) const DISCONNECT: u8 = 14;
pub(crate) const AUTH: u8 = 15;

/// The largest value a Variable Byte Integer holds (268,435,455).
pub(crate) const MAX_VBI: usize = 268_435_455;

/// Turns a byte stream into packets, one complete packet at a time.
///
/// A server creates it without a version; the first CONNECT sets it. A client sets the version
/// it sent in CONNECT with [`Decoder::set_version`] before decoding the CONNACK.
#[derive(Debug, Clone)]
pub struct Decoder {
    max_packet_size: usize,
    version: Option<ProtocolVersion>,
}

impl Decoder {
    /// A decoder refusing packets larger than `max_packet_size` bytes (fixed header included).
    pub fn new(max_packet_size: usize) -> Decoder {
        Decoder {
            max_packet_size,
            version: None,
        }
    }

    /// Sets the protocol version that packets other than CONNECT are decoded with.
    pub fn set_version(&mut self, v: ProtocolVersion) {
        self.version = Some(v);
    }

    /// The protocol version in use: set explicitly or by the first CONNECT decoded.
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    /// Changes the largest packet accepted (fixed header included).
    pub fn set_max_packet_size(&mut self, n: usize) {
        self.max_packet_size = n;
    }

    /// The largest packet accepted (fixed header included).
    pub fn max_packet_size(&self) -> usize {
        self.max_packet_size
    }

    /// Decodes one packet from the front of `buf` when it is complete, consuming its bytes;
    /// `Ok(None)` when more bytes are needed (`buf` untouched).
    ///
    /// Before a version is known (a server before CONNECT), only CONNECT is accepted, and it
    /// sets the version from its protocol name and level, even when the rest of the CONNECT
    /// then turns out to be invalid (so the CONNACK refusing it can use the client's version). A remaining length that makes the
    /// packet exceed the maximum packet size is [`DecodeError::TooLarge`] as soon as the fixed
    /// header is readable, before the body is buffered. After an error the stream cannot be
    /// resynchronised: the connection is to be closed (with a reason code from
    /// [`DecodeError::reason_code`] where the protocol allows one).
    /// The total size of the packet at the front of `buf` once its fixed header is complete
    /// (`None` before). Lets the caller reserve memory for a large packet before reading it;
    /// errors are left to [`Decoder::decode`].
    pub fn pending_packet_len(buf: &[u8]) -> Option<usize> {
        match fixed_header_length(buf) {
            Ok(Some((remaining, header_len))) => Some(header_len.saturating_add(remaining)),
            _ => None,
        }
    }

    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        let ptype = first >> 4;
        check_fixed_header(first, self.version)?;
        let Some((remaining, header_len)) = fixed_header_length(buf)? else {
            return Ok(None);
        };
        let total = header_len.saturating_add(remaining);
        if total > self.max_packet_size {
            return Err(DecodeError::TooLarge {
                size: total,
                max: self.max_packet_size,
            });
        }
        if buf.len() < total {
            return Ok(None);
        }
        let mut packet = buf.split_to(total);
        packet.advance(header_len);
        let mut r = Reader::new(packet.freeze());

        if ptype == CONNECT {
            let (protocol, bridge) = decode_protocol(&mut r)?;
            // Set as soon as it is known, so that after an error in the rest of the CONNECT
            // the server can still answer with a CONNACK of the client's version.
            if self.version.is_none() {
                self.version = Some(protocol);
            }
            let mut connect = decode_connect(&mut r, protocol)?;
            connect.bridge = bridge;
            return Ok(Some(Packet::Connect(Box::new(connect))));
        }
        // check_fixed_header refused every other packet type while the version is unknown.
        let version = self.version.unwrap_or(ProtocolVersion::V311);
        let v5 = version.is_v5();
        let packet = match ptype {
            CONNACK => Packet::ConnAck(decode_connack(&mut r, version)?),
            PUBLISH => Packet::Publish(decode_publish(first, &mut r, v5)?),
            PUBACK => Packet::PubAck(decode_puback(&mut r, v5)?),
            PUBREC => Packet::PubRec(decode_puback(&mut r, v5)?),
            PUBREL => Packet::PubRel(decode_puback(&mut r, v5)?),
            PUBCOMP => Packet::PubComp(decode_puback(&mut r, v5)?),
            SUBSCRIBE => Packet::Subscribe(decode_subscribe(&mut r, v5)?),
            SUBACK => Packet::SubAck(decode_suback(&mut r, v5)?),
            UNSUBSCRIBE => Packet::Unsubscribe(decode_unsubscribe(&mut r, v5)?),
            UNSUBACK => Packet::UnsubAck(decode_unsuback(&mut r, v5)?),
            PINGREQ => {
                r.finish()?;
                Packet::PingReq
            }
            PINGRESP => {
                r.finish()?;
                Packet::PingResp
            }
            DISCONNECT => Packet::Disconnect(decode_disconnect(&mut r, v5)?),
            AUTH => Packet::Auth(decode_auth(&mut r)?),
            _ => return Err(DecodeError::Malformed("reserved packet type")),
        };
        Ok(Some(packet))
    }
}

/// Checks the first byte: packet type and the flags each type fixes.
fn check_fixed_header(first: u8, version: Option<ProtocolVersion>) -> Result<(), DecodeError> {
    let ptype = first >> 4;
    let flags = first & 0x0F;
    match ptype {
        0 => return Err(DecodeError::Malformed("reserved packet type 0")),
        AUTH if version.is_some_and(|v| !v.is_v5()) => {
            return Err(DecodeError::Malformed(
                "reserved packet type 15 (AUTH is MQTT 5.0 only)",
            ))
        }
        _ => {}
    }
    if ptype != CONNECT && version.is_none() {
        // [MQTT-3.1.0-1] the first packet from the client must be CONNECT; before it, the
        // protocol version of anything else is unknown.
        return Err(DecodeError::Protocol("first packet is not CONNECT"));
    }
    if ptype == PUBLISH {
        let qos = (flags >> 1) & 0x03;
        // [MQTT-3.3.1-4] a PUBLISH must not have both QoS bits set.
        if qos == 3 {
            return Err(DecodeError::Malformed("PUBLISH with QoS 3"));
        }
        // [MQTT-3.3.1-2] the DUP flag must be 0 for QoS 0 messages.
        if qos == 0 && flags & 0x08 != 0 {
            return Err(DecodeError::Malformed("PUBLISH with DUP set on QoS 0"));
        }
        return Ok(());
    }
    let expected = match ptype {
        PUBREL | SUBSCRIBE | UNSUBSCRIBE => 0b0010,
        _ => 0,
    };
    // MQTT 3.1 (section 2.1, DUP flag) has a client set DUP when it retries a PUBREL,
    // SUBSCRIBE or UNSUBSCRIBE (QoS 1 each); the fixed flags below came with 3.1.1.
    if version == Some(ProtocolVersion::V31) && expected != 0 && flags == expected | 0b1000 {
        return Ok(());
    }
    // [MQTT-2.2.2-1] (3.1.1) / [MQTT-2.1.3-1] (5.0) reserved flag bits must be exactly as the
    // packet type specifies.
    if flags != expected {
        return Err(DecodeError::Malformed("invalid fixed header flags"));
    }
    Ok(())
}

/// Reads the remaining length after the first byte: `(remaining length, fixed header length)`,
/// or `None` while it is incomplete.
fn fixed_header_length(buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value: usize = 0;
    for i in 0..4usize {
        let Some(&byte) = buf.get(i + 1) else {
            return Ok(None);
        };
        // [MQTT-1.5.5-1] the minimum number of bytes: a final 0 continuation is not.
        if i > 0 && byte == 0 {
            return Err(DecodeError::Malformed(
                "remaining length is not minimally encoded",
            ));
        }
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 2)));
        }
    }
    // At most four bytes of Variable Byte Integer (section 1.5.5).
    Err(DecodeError::Malformed(
        "remaining length longer than four bytes",
    ))
}

fn topic_error(msg: &'static str) -> DecodeError {
    DecodeError::TopicNameInvalid(msg)
}

/// Checks a topic name (PUBLISH or will): UTF-8 [MQTT-1.5.4-1], no U+0000 (a malformed string,
/// [MQTT-1.5.4-2]), no wildcards [MQTT-3.3.2-2]. Empty names are checked by the caller (allowed
/// with a topic alias).
fn topic_name(raw: &[u8]) -> Result<&str, DecodeError> {
    let s = utf8(raw)?;
    for &b in raw {
        match b {
            0 => return Err(DecodeError::Malformed("topic name contains U+0000")),
            b'+' | b'#' => return Err(topic_error("topic name contains a wildcard")),
            _ => {}
        }
    }
    Ok(s)
}

/// Reads a topic filter of SUBSCRIBE or UNSUBSCRIBE and checks its syntax (section 4.7). A
/// filter breaking it (`a/#/b`, `a+`, `#a`, empty) is a protocol violation, not a filter the
/// server may refuse with a SUBACK code: [MQTT-4.7.1-2] [MQTT-4.7.1-3] [MQTT-4.7.3-1] (3.1.1;
/// 5.0: [MQTT-4.7.1-1] [MQTT-4.7.1-2] [MQTT-4.7.3-1]), so the connection is closed (3.1.1
/// [MQTT-4.8.0-1]). 5.0 keeps Topic Filter invalid (0x8F) for a filter that "is correctly
/// formed but is not allowed for this Client" (section 3.9.3), and its DISCONNECT reason
/// 0x81 is for a packet that "does not conform to this specification" (section 3.14.2.1):
/// a filter that is not correctly formed is a Malformed Packet. Whether a well-formed
/// `$share/…` filter is a valid shared subscription stays the broker's (0x8F).
fn topic_filter(r: &mut Reader) -> Result<String, DecodeError> {
    let filter = r.string()?;
    match validate_filter_syntax(&filter) {
        Ok(()) => Ok(filter),
        Err(e) => Err(DecodeError::Malformed(e.as_str())),
    }
}

/// A non-zero packet identifier: [MQTT-2.2.1-3] (5.0), [MQTT-2.3.1-1] (3.1.1).
fn packet_id(r: &mut Reader) -> Result<u16, DecodeError> {
    let id = r.u16()?;
    if id == 0 {
        return Err(DecodeError::Protocol("packet identifier 0"));
    }
    Ok(id)
}

/// A payload format indicator of 1 announces UTF-8 character data (5.0 sections 3.3.2.3.2 and
/// 3.1.3.2.3); the receiver may check it and answer "payload format invalid".
fn check_payload_format(props: &Properties, payload: &[u8]) -> Result<(), DecodeError> {
    if props.payload_format_indicator == Some(1) && std::str::from_utf8(payload).is_err() {
        return Err(DecodeError::PayloadFormatInvalid);
    }
    Ok(())
}

/// The protocol name and level that open a CONNECT.
/// With the bridge bit (level | 0x80, 3.1 and 3.1.1 only), the second value is true.
fn decode_protocol(r: &mut Reader) -> Result<(ProtocolVersion, bool), DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    Ok(match (&name[..], level) {
        (b"MQTT", 4) => (ProtocolVersion::V311, false),
        (b"MQTT", 5) => (ProtocolVersion::V5, false),
        (b"MQIsdp", 3) => (ProtocolVersion::V31, false),
        // Not in the specifications: Mosquitto's bridges (`try_private`) mark themselves so,
        // and Mosquitto's servers accept it. 5.0 has no such level.
        (b"MQTT", 0x84) => (ProtocolVersion::V311, true),
        (b"MQIsdp", 0x83) => (ProtocolVersion::V31, true),
        // [MQTT-3.1.2-2] a known protocol at a level the server does not support: answered
        // with CONNACK "unsupported protocol version".
        (b"MQTT", _) | (b"MQIsdp", _) => return Err(DecodeError::UnsupportedProtocol),
        // [MQTT-3.1.2-1] an unknown protocol name: the server may disconnect.
        _ => return Err(DecodeError::Protocol("unknown protocol name")),
    })
}

/// The rest of a CONNECT, after its protocol name and level.
fn decode_connect(r: &mut Reader, protocol: ProtocolVersion) -> Result<Connect, DecodeError> {
    let v5 = protocol.is_v5();
    let flags = r.u8()?;
    // [MQTT-3.1.2-3] the reserved flag must be 0.
    if flags & 0x01 != 0 {
        return Err(DecodeError::Malformed("CONNECT reserved flag is set"));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag {
        // [MQTT-3.1.2-11] [MQTT-3.1.2-13] [MQTT-3.1.2-15] (3.1.1 numbering; 5.0:
        // [MQTT-3.1.2-11] [MQTT-3.1.2-13]) without a will, will QoS and will retain must be 0.
        if will_qos != 0 || will_retain {
            return Err(DecodeError::Malformed(
                "will QoS or will retain set without the will flag",
            ));
        }
    }
    // [MQTT-3.1.2-14] (3.1.1; 5.0 section 3.1.2.6) will QoS 3 is malformed.
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::Malformed("will QoS 3"))?;
    // [MQTT-3.1.2-22] in 3.1.1 a password needs a user name (5.0 allows it alone; 3.1
    // servers commonly accept it, so it is accepted there too).
    if protocol == ProtocolVersion::V311 && password_flag && !username_flag {
        return Err(DecodeError::Malformed(
            "password flag set without user name flag",
        ));
    }
    let keep_alive = r.u16()?;
    let properties = if v5 {
        read_properties(r, Context::Connect)?
    } else {
        Properties::default()
    };
    // [MQTT-3.1.3-3] the client identifier is a UTF-8 Encoded String (may be empty; the
    // broker decides whether it accepts that).
    let client_id = r.string()?;
    let will = if will_flag {
        let will_props = if v5 {
            read_properties(r, Context::Will)?
        } else {
            Properties::default()
        };
        let raw_topic = r.binary()?;
        let topic = topic_name(&raw_topic)?;
        // [MQTT-3.1.3-11] (3.1.1) the will topic is a topic name, which is never empty
        // [MQTT-4.7.3-1].
        if topic.is_empty() {
            return Err(topic_error("will topic is empty"));
        }
        let payload = r.binary()?;
        check_payload_format(&will_props, &payload)?;
        Some(Will {
            topic: topic.to_owned(),
            payload,
            qos: will_qos,
            retain: will_retain,
            properties: will_props,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string()?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary()?)
    } else {
        None
    };
    r.finish()?;
    Ok(Connect {
        protocol,
        bridge: false,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn decode_connack(r: &mut Reader, version: ProtocolVersion) -> Result<ConnAck, DecodeError> {
    let flags = r.u8()?;
    let code = r.u8()?;
    let session_present = match version {
        // 3.1 has no session present flag: the byte is unused.
        ProtocolVersion::V31 => false,
        _ => {
            // [MQTT-3.2.2-1] bits 7-1 of the acknowledge flags are reserved and must be 0.
            if flags & 0xFE != 0 {
                return Err(DecodeError::Malformed("CONNACK reserved flags are set"));
            }
            flags & 0x01 != 0
        }
    };
    let (reason, properties) = if version.is_v5() {
        (ReasonCode(code), read_properties(r, Context::ConnAck)?)
    } else {
        let reason = ReasonCode::from_v3_connack(code)
            .ok_or(DecodeError::Malformed("reserved CONNACK return code"))?;
        (reason, Properties::default())
    };
    r.finish()?;
    Ok(ConnAck {
        session_present,
        reason,
        properties,
    })
}

fn decode_publish(first: u8, r: &mut Reader, v5: bool) -> Result<Publish, DecodeError> {
    let dup = first & 0x08 != 0;
    // QoS 3 was refused with the fixed header.
    let qos =
        QoS::from_u8((first >> 1) & 0x03).ok_or(DecodeError::Malformed("PUBLISH with QoS 3"))?;
    let retain = first & 0x01 != 0;
    let raw_topic = r.binary()?;
    let topic: Arc<str> = Arc::from(topic_name(&raw_topic)?);
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        packet_id(r)?
    };
    let properties = if v5 {
        read_properties(r, Context::Publish)?
    } else {
        Properties::default()
    };
    // [MQTT-3.3.2-1] (3.1.1) / [MQTT-4.7.3-1] a topic name has at least one character; 5.0
    // allows an empty one when a Topic Alias stands for it, and calls an empty one without an
    // alias a Protocol Error (section 3.3.2.3.4).
    if topic.is_empty() && properties.topic_alias.is_none() {
        return Err(if v5 {
            DecodeError::Protocol("empty topic name without a topic alias")
        } else {
            topic_error("topic name is empty")
        });
    }
    let payload = r.rest();
    check_payload_format(&properties, &payload)?;
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        properties,
        payload,
    })
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP.
fn decode_puback(r: &mut Reader, v5: bool) -> Result<PubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let mut ack = PubAck::new(packet_id);
    // 5.0 section 3.4.2.1: remaining length 2 means success without properties; section
    // 3.4.2.2: less than 4 means no property length.
    if v5 && !r.is_empty() {
        ack.reason = ReasonCode(r.u8()?);
        if !r.is_empty() {
            ack.properties = read_properties(r, Context::PubAck)?;
        }
    }
    r.finish()?;
    Ok(ack)
}

fn decode_subscribe(r: &mut Reader, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = if v5 {
        read_properties(r, Context::Subscribe)?
    } else {
        Properties::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        // UTF-8 [MQTT-1.5.4-1] [MQTT-1.5.4-2] and the filter's syntax (section 4.7).
        let filter = topic_filter(r)?;
        let options = r.u8()?;
        let qos = QoS::from_u8(options & 0x03);
        let options = if v5 {
            // [MQTT-3.8.3-5] reserved bits must be 0; QoS 3 and retain handling 3 are
            // malformed (section 3.8.3.1).
            if options & 0xC0 != 0 {
                return Err(DecodeError::Malformed(
                    "subscription options reserved bits set",
                ));
            }
            let retain_handling = match (options >> 4) & 0x03 {
                0 => RetainHandling::SendAtSubscribe,
                1 => RetainHandling::SendIfNew,
                2 => RetainHandling::DoNotSend,
                _ => return Err(DecodeError::Malformed("retain handling 3")),
            };
            SubscriptionOptions {
                qos: qos.ok_or(DecodeError::Malformed("subscription QoS 3"))?,
                no_local: options & 0x04 != 0,
                retain_as_published: options & 0x08 != 0,
                retain_handling,
            }
        } else {
            // [MQTT-3-8.3-4] the upper six bits of the requested QoS byte are reserved and
            // QoS must be 0, 1 or 2.
            if options & 0xFC != 0 {
                return Err(DecodeError::Malformed("requested QoS reserved bits set"));
            }
            SubscriptionOptions {
                qos: qos.ok_or(DecodeError::Malformed("subscription QoS 3"))?,
                ..SubscriptionOptions::default()
            }
        };
        filters.push((filter, options));
    }
    // [MQTT-3.8.3-3] (3.1.1) / [MQTT-3.8.3-2] (5.0) at least one topic filter.
    if filters.is_empty() {
        return Err(DecodeError::Protocol("SUBSCRIBE without topic filters"));
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

fn decode_suback(r: &mut Reader, v5: bool) -> Result<SubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = if v5 {
        read_properties(r, Context::SubAck)?
    } else {
        Properties::default()
    };
    let codes = r.rest();
    let mut reasons = Vec::with_capacity(codes.len());
    for &code in codes.iter() {
        // 3.x return codes: granted QoS 0, 1, 2 or failure 0x80 [MQTT-3.9.3-2].
        if !v5 && !matches!(code, 0 | 1 | 2 | 0x80) {
            return Err(DecodeError::Malformed("reserved SUBACK return code"));
        }
        reasons.push(ReasonCode(code));
    }
    // One reason code per filter of the SUBSCRIBE, which has at least one.
    if reasons.is_empty() {
        return Err(DecodeError::Protocol("SUBACK without reason codes"));
    }
    Ok(SubAck {
        packet_id,
        reasons,
        properties,
    })
}

fn decode_unsubscribe(r: &mut Reader, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = if v5 {
        read_properties(r, Context::Unsubscribe)?
    } else {
        Properties::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(topic_filter(r)?);
    }
    // [MQTT-3.10.3-2] at least one topic filter.
    if filters.is_empty() {
        return Err(DecodeError::Protocol("UNSUBSCRIBE without topic filters"));
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

fn decode_unsuback(r: &mut Reader, v5: bool) -> Result<UnsubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let mut ack = UnsubAck {
        packet_id,
        ..UnsubAck::default()
    };
    if v5 {
        ack.properties = read_properties(r, Context::UnsubAck)?;
        ack.reasons = r.rest().iter().map(|&c| ReasonCode(c)).collect();
        // One reason code per filter of the UNSUBSCRIBE, which has at least one.
        if ack.reasons.is_empty() {
            return Err(DecodeError::Protocol("UNSUBACK without reason codes"));
        }
    }
    r.finish()?;
    Ok(ack)
}

fn decode_disconnect(r: &mut Reader, v5: bool) -> Result<Disconnect, DecodeError> {
    let mut d = Disconnect::default();
    // 5.0 section 3.14.2.1: remaining length 0 means normal disconnection without properties;
    // section 3.14.2.2: less than 2 means no property length.
    if v5 && !r.is_empty() {
        d.reason = ReasonCode(r.u8()?);
        if !r.is_empty() {
            d.properties = read_properties(r, Context::Disconnect)?;
        }
    }
    r.finish()?;
    Ok(d)
}

fn decode_auth(r: &mut Reader) -> Result<Auth, DecodeError> {
    let mut a = Auth::default();
    // [MQTT-3.15.2-1] remaining length 0 means success without properties.
    if !r.is_empty() {
        a.reason = ReasonCode(r.u8()?);
        if !r.is_empty() {
            a.properties = read_properties(r, Context::Auth)?;
        }
    }
    r.finish()?;
    Ok(a)
}
