//! Decoding of MQTT 5.0 property blocks (section 2.2.2), with the per-packet rules of the
//! property table (section 2.2.2.2).

use crate::error::DecodeError;
use crate::properties::Properties;

use super::reader::Reader;

/// Where a property block sits: decides which identifiers are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Context {
    Connect,
    ConnAck,
    Publish,
    Will,
    /// PUBACK, PUBREC, PUBREL and PUBCOMP.
    PubAck,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

pub(crate) const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
pub(crate) const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
pub(crate) const CONTENT_TYPE: u8 = 0x03;
pub(crate) const RESPONSE_TOPIC: u8 = 0x08;
pub(crate) const CORRELATION_DATA: u8 = 0x09;
pub(crate) const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
pub(crate) const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
pub(crate) const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
pub(crate) const SERVER_KEEP_ALIVE: u8 = 0x13;
pub(crate) const AUTHENTICATION_METHOD: u8 = 0x15;
pub(crate) const AUTHENTICATION_DATA: u8 = 0x16;
pub(crate) const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
pub(crate) const WILL_DELAY_INTERVAL: u8 = 0x18;
pub(crate) const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
pub(crate) const RESPONSE_INFORMATION: u8 = 0x1A;
pub(crate) const SERVER_REFERENCE: u8 = 0x1C;
pub(crate) const REASON_STRING: u8 = 0x1F;
pub(crate) const RECEIVE_MAXIMUM: u8 = 0x21;
pub(crate) const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
pub(crate) const TOPIC_ALIAS: u8 = 0x23;
pub(crate) const MAXIMUM_QOS: u8 = 0x24;
pub(crate) const RETAIN_AVAILABLE: u8 = 0x25;
pub(crate) const USER_PROPERTY: u8 = 0x26;
pub(crate) const MAXIMUM_PACKET_SIZE: u8 = 0x27;
pub(crate) const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
pub(crate) const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
pub(crate) const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

const fn bit(id: u8) -> u64 {
    1u64 << id
}

/// Identifiers valid on the messages (PUBLISH and the will).
const MESSAGE: u64 = bit(PAYLOAD_FORMAT_INDICATOR)
    | bit(MESSAGE_EXPIRY_INTERVAL)
    | bit(CONTENT_TYPE)
    | bit(RESPONSE_TOPIC)
    | bit(CORRELATION_DATA)
    | bit(USER_PROPERTY);

/// The property table of MQTT 5.0 section 2.2.2.2, by packet.
fn allowed(ctx: Context) -> u64 {
    match ctx {
        Context::Connect => {
            bit(SESSION_EXPIRY_INTERVAL)
                | bit(AUTHENTICATION_METHOD)
                | bit(AUTHENTICATION_DATA)
                | bit(REQUEST_PROBLEM_INFORMATION)
                | bit(REQUEST_RESPONSE_INFORMATION)
                | bit(RECEIVE_MAXIMUM)
                | bit(TOPIC_ALIAS_MAXIMUM)
                | bit(USER_PROPERTY)
                | bit(MAXIMUM_PACKET_SIZE)
        }
        Context::ConnAck => {
            bit(SESSION_EXPIRY_INTERVAL)
                | bit(ASSIGNED_CLIENT_IDENTIFIER)
                | bit(SERVER_KEEP_ALIVE)
                | bit(AUTHENTICATION_METHOD)
                | bit(AUTHENTICATION_DATA)
                | bit(RESPONSE_INFORMATION)
                | bit(SERVER_REFERENCE)
                | bit(REASON_STRING)
                | bit(RECEIVE_MAXIMUM)
                | bit(TOPIC_ALIAS_MAXIMUM)
                | bit(MAXIMUM_QOS)
                | bit(RETAIN_AVAILABLE)
                | bit(USER_PROPERTY)
                | bit(MAXIMUM_PACKET_SIZE)
                | bit(WILDCARD_SUBSCRIPTION_AVAILABLE)
                | bit(SUBSCRIPTION_IDENTIFIER_AVAILABLE)
                | bit(SHARED_SUBSCRIPTION_AVAILABLE)
        }
        Context::Publish => MESSAGE | bit(SUBSCRIPTION_IDENTIFIER) | bit(TOPIC_ALIAS),
        Context::Will => MESSAGE | bit(WILL_DELAY_INTERVAL),
        Context::PubAck | Context::SubAck | Context::UnsubAck => {
            bit(REASON_STRING) | bit(USER_PROPERTY)
        }
        Context::Subscribe => bit(SUBSCRIPTION_IDENTIFIER) | bit(USER_PROPERTY),
        Context::Unsubscribe => bit(USER_PROPERTY),
        Context::Disconnect => {
            bit(SESSION_EXPIRY_INTERVAL)
                | bit(SERVER_REFERENCE)
                | bit(REASON_STRING)
                | bit(USER_PROPERTY)
        }
        Context::Auth => {
            bit(AUTHENTICATION_METHOD)
                | bit(AUTHENTICATION_DATA)
                | bit(REASON_STRING)
                | bit(USER_PROPERTY)
        }
    }
}

/// Every identifier MQTT 5.0 defines.
const KNOWN: u64 = MESSAGE
    | bit(SUBSCRIPTION_IDENTIFIER)
    | bit(SESSION_EXPIRY_INTERVAL)
    | bit(ASSIGNED_CLIENT_IDENTIFIER)
    | bit(SERVER_KEEP_ALIVE)
    | bit(AUTHENTICATION_METHOD)
    | bit(AUTHENTICATION_DATA)
    | bit(REQUEST_PROBLEM_INFORMATION)
    | bit(WILL_DELAY_INTERVAL)
    | bit(REQUEST_RESPONSE_INFORMATION)
    | bit(RESPONSE_INFORMATION)
    | bit(SERVER_REFERENCE)
    | bit(REASON_STRING)
    | bit(RECEIVE_MAXIMUM)
    | bit(TOPIC_ALIAS_MAXIMUM)
    | bit(TOPIC_ALIAS)
    | bit(MAXIMUM_QOS)
    | bit(RETAIN_AVAILABLE)
    | bit(MAXIMUM_PACKET_SIZE)
    | bit(WILDCARD_SUBSCRIPTION_AVAILABLE)
    | bit(SUBSCRIPTION_IDENTIFIER_AVAILABLE)
    | bit(SHARED_SUBSCRIPTION_AVAILABLE);

const TWICE: DecodeError = DecodeError::Protocol("property included more than once");

/// Stores `value` in `slot`, refusing a second occurrence: every property except User Property
/// (and Subscription Identifier on PUBLISH) may appear at most once (section 2.2.2.2 and the
/// "It is a Protocol Error to include ... more than once" rule of each property).
fn once<T>(slot: &mut Option<T>, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(TWICE);
    }
    *slot = Some(value);
    Ok(())
}

/// A Byte property that may only be 0 or 1.
fn flag(r: &mut Reader, what: &'static str) -> Result<u8, DecodeError> {
    let v = r.u8()?;
    if v > 1 {
        return Err(DecodeError::Protocol(what));
    }
    Ok(v)
}

/// Reads a Property Length and the properties it covers.
pub(crate) fn read_properties(r: &mut Reader, ctx: Context) -> Result<Properties, DecodeError> {
    let len = r.vbi()? as usize;
    if len > r.remaining() {
        return Err(DecodeError::Malformed(
            "property length is longer than the packet",
        ));
    }
    let mut r = Reader::new(r.take(len)?);
    let mut p = Properties::default();
    let allowed = allowed(ctx);
    while !r.is_empty() {
        // The identifier is a Variable Byte Integer, but every identifier defined by MQTT 5.0
        // fits in one byte: any other value is unknown.
        let id = r.u8()?;
        let mask = if id < 64 { bit(id) } else { 0 };
        if mask & KNOWN == 0 {
            return Err(DecodeError::Malformed("unknown property identifier"));
        }
        // Section 2.2.2.2: "A Control Packet which contains an Identifier which is not valid
        // for its packet type ... is a Malformed Packet."
        if mask & allowed == 0 {
            return Err(DecodeError::Malformed(
                "property not allowed on this packet type",
            ));
        }
        match id {
            PAYLOAD_FORMAT_INDICATOR => {
                let v = flag(&mut r, "payload format indicator must be 0 or 1")?;
                once(&mut p.payload_format_indicator, v)?;
            }
            MESSAGE_EXPIRY_INTERVAL => once(&mut p.message_expiry_interval, r.u32()?)?,
            CONTENT_TYPE => once(&mut p.content_type, r.string()?)?,
            RESPONSE_TOPIC => {
                let topic = r.string()?;
                // [MQTT-3.3.2-14] the response topic is a topic name: no wildcards.
                if topic.is_empty() || topic.contains(['+', '#']) {
                    return Err(DecodeError::Protocol(
                        "response topic is not a valid topic name",
                    ));
                }
                once(&mut p.response_topic, topic)?;
            }
            CORRELATION_DATA => once(&mut p.correlation_data, r.binary()?)?,
            SUBSCRIPTION_IDENTIFIER => {
                let v = r.vbi()?;
                // "It is a Protocol Error if the Subscription Identifier has a value of 0."
                if v == 0 {
                    return Err(DecodeError::Protocol("subscription identifier 0"));
                }
                // More than one only on PUBLISH (one per matching subscription).
                if ctx != Context::Publish && !p.subscription_identifiers.is_empty() {
                    return Err(TWICE);
                }
                p.subscription_identifiers.push(v);
            }
            SESSION_EXPIRY_INTERVAL => once(&mut p.session_expiry_interval, r.u32()?)?,
            ASSIGNED_CLIENT_IDENTIFIER => once(&mut p.assigned_client_identifier, r.string()?)?,
            SERVER_KEEP_ALIVE => once(&mut p.server_keep_alive, r.u16()?)?,
            AUTHENTICATION_METHOD => once(&mut p.authentication_method, r.string()?)?,
            AUTHENTICATION_DATA => once(&mut p.authentication_data, r.binary()?)?,
            REQUEST_PROBLEM_INFORMATION => {
                let v = flag(&mut r, "request problem information must be 0 or 1")?;
                once(&mut p.request_problem_information, v)?;
            }
            WILL_DELAY_INTERVAL => once(&mut p.will_delay_interval, r.u32()?)?,
            REQUEST_RESPONSE_INFORMATION => {
                let v = flag(&mut r, "request response information must be 0 or 1")?;
                once(&mut p.request_response_information, v)?;
            }
            RESPONSE_INFORMATION => once(&mut p.response_information, r.string()?)?,
            SERVER_REFERENCE => once(&mut p.server_reference, r.string()?)?,
            REASON_STRING => once(&mut p.reason_string, r.string()?)?,
            RECEIVE_MAXIMUM => {
                let v = r.u16()?;
                // "It is a Protocol Error to include the Receive Maximum value of 0."
                if v == 0 {
                    return Err(DecodeError::Protocol("receive maximum 0"));
                }
                once(&mut p.receive_maximum, v)?;
            }
            TOPIC_ALIAS_MAXIMUM => once(&mut p.topic_alias_maximum, r.u16()?)?,
            TOPIC_ALIAS => {
                let v = r.u16()?;
                // [MQTT-3.3.2-8] a topic alias of 0 is not permitted.
                if v == 0 {
                    return Err(DecodeError::Protocol("topic alias 0"));
                }
                once(&mut p.topic_alias, v)?;
            }
            MAXIMUM_QOS => {
                let v = flag(&mut r, "maximum QoS must be 0 or 1")?;
                once(&mut p.maximum_qos, v)?;
            }
            RETAIN_AVAILABLE => {
                let v = flag(&mut r, "retain available must be 0 or 1")?;
                once(&mut p.retain_available, v)?;
            }
            USER_PROPERTY => {
                let key = r.string()?;
                let value = r.string()?;
                p.user_properties.push((key, value));
            }
            MAXIMUM_PACKET_SIZE => {
                let v = r.u32()?;
                // "It is a Protocol Error to include the Maximum Packet Size ... value of zero."
                if v == 0 {
                    return Err(DecodeError::Protocol("maximum packet size 0"));
                }
                once(&mut p.maximum_packet_size, v)?;
            }
            WILDCARD_SUBSCRIPTION_AVAILABLE => {
                let v = flag(&mut r, "wildcard subscription available must be 0 or 1")?;
                once(&mut p.wildcard_subscription_available, v)?;
            }
            SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                let v = flag(&mut r, "subscription identifier available must be 0 or 1")?;
                once(&mut p.subscription_identifier_available, v)?;
            }
            SHARED_SUBSCRIPTION_AVAILABLE => {
                let v = flag(&mut r, "shared subscription available must be 0 or 1")?;
                once(&mut p.shared_subscription_available, v)?;
            }
            _ => return Err(DecodeError::Malformed("unknown property identifier")),
        }
    }
    // "It is a Protocol Error to include Authentication Data if there is no Authentication
    // Method." (CONNECT, CONNACK and AUTH)
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(DecodeError::Protocol(
            "authentication data without authentication method",
        ));
    }
    Ok(p)
}
