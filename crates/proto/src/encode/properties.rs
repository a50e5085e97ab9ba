//! Encoding of MQTT 5.0 property blocks. Properties are written in identifier order; the
//! decoder enforces which ones a packet may carry, the encoder writes whatever is set.

use bytes::{BufMut, BytesMut};

use crate::decode::properties as id;
use crate::error::EncodeError;
use crate::properties::Properties;

use super::{put_binary, put_str, put_vbi, vbi_len};

/// Bytes of a string or binary property: identifier, two-byte length, data.
fn field(len: usize) -> usize {
    3 + len
}

/// The length of the properties themselves (without the Property Length in front).
pub(crate) fn properties_len(p: &Properties) -> usize {
    let mut n = 0;
    let s = |o: &Option<String>| o.as_ref().map_or(0, |v| field(v.len()));
    let b = |o: &Option<bytes::Bytes>| o.as_ref().map_or(0, |v| field(v.len()));
    let fixed = |present: bool, size: usize| if present { 1 + size } else { 0 };
    n += fixed(p.payload_format_indicator.is_some(), 1);
    n += fixed(p.message_expiry_interval.is_some(), 4);
    n += s(&p.content_type);
    n += s(&p.response_topic);
    n += b(&p.correlation_data);
    for &v in &p.subscription_identifiers {
        n += 1 + vbi_len(v as usize);
    }
    n += fixed(p.session_expiry_interval.is_some(), 4);
    n += s(&p.assigned_client_identifier);
    n += fixed(p.server_keep_alive.is_some(), 2);
    n += s(&p.authentication_method);
    n += b(&p.authentication_data);
    n += fixed(p.request_problem_information.is_some(), 1);
    n += fixed(p.will_delay_interval.is_some(), 4);
    n += fixed(p.request_response_information.is_some(), 1);
    n += s(&p.response_information);
    n += s(&p.server_reference);
    n += s(&p.reason_string);
    n += fixed(p.receive_maximum.is_some(), 2);
    n += fixed(p.topic_alias_maximum.is_some(), 2);
    n += fixed(p.topic_alias.is_some(), 2);
    n += fixed(p.maximum_qos.is_some(), 1);
    n += fixed(p.retain_available.is_some(), 1);
    for (k, v) in &p.user_properties {
        n += 1 + 2 + k.len() + 2 + v.len();
    }
    n += fixed(p.maximum_packet_size.is_some(), 4);
    n += fixed(p.wildcard_subscription_available.is_some(), 1);
    n += fixed(p.subscription_identifier_available.is_some(), 1);
    n += fixed(p.shared_subscription_available.is_some(), 1);
    n
}

/// Writes the Property Length (`len`, from [`properties_len`]) and the properties.
pub(crate) fn put_properties(
    buf: &mut BytesMut,
    p: &Properties,
    len: usize,
) -> Result<(), EncodeError> {
    put_vbi(buf, len)?;
    if len == 0 {
        return Ok(());
    }
    fn byte(buf: &mut BytesMut, i: u8, v: Option<u8>) {
        if let Some(v) = v {
            buf.put_u8(i);
            buf.put_u8(v);
        }
    }
    fn two(buf: &mut BytesMut, i: u8, v: Option<u16>) {
        if let Some(v) = v {
            buf.put_u8(i);
            buf.put_u16(v);
        }
    }
    fn four(buf: &mut BytesMut, i: u8, v: Option<u32>) {
        if let Some(v) = v {
            buf.put_u8(i);
            buf.put_u32(v);
        }
    }
    fn string(
        buf: &mut BytesMut,
        i: u8,
        v: &Option<String>,
        what: &'static str,
    ) -> Result<(), EncodeError> {
        if let Some(v) = v {
            buf.put_u8(i);
            put_str(buf, v, what)?;
        }
        Ok(())
    }
    fn binary(
        buf: &mut BytesMut,
        i: u8,
        v: &Option<bytes::Bytes>,
        what: &'static str,
    ) -> Result<(), EncodeError> {
        if let Some(v) = v {
            buf.put_u8(i);
            put_binary(buf, v, what)?;
        }
        Ok(())
    }

    byte(
        buf,
        id::PAYLOAD_FORMAT_INDICATOR,
        p.payload_format_indicator,
    );
    four(buf, id::MESSAGE_EXPIRY_INTERVAL, p.message_expiry_interval);
    string(buf, id::CONTENT_TYPE, &p.content_type, "content type")?;
    string(buf, id::RESPONSE_TOPIC, &p.response_topic, "response topic")?;
    binary(
        buf,
        id::CORRELATION_DATA,
        &p.correlation_data,
        "correlation data",
    )?;
    for &v in &p.subscription_identifiers {
        buf.put_u8(id::SUBSCRIPTION_IDENTIFIER);
        put_vbi(buf, v as usize)
            .map_err(|_| EncodeError::FieldTooLong("subscription identifier"))?;
    }
    four(buf, id::SESSION_EXPIRY_INTERVAL, p.session_expiry_interval);
    string(
        buf,
        id::ASSIGNED_CLIENT_IDENTIFIER,
        &p.assigned_client_identifier,
        "assigned client identifier",
    )?;
    two(buf, id::SERVER_KEEP_ALIVE, p.server_keep_alive);
    string(
        buf,
        id::AUTHENTICATION_METHOD,
        &p.authentication_method,
        "authentication method",
    )?;
    binary(
        buf,
        id::AUTHENTICATION_DATA,
        &p.authentication_data,
        "authentication data",
    )?;
    byte(
        buf,
        id::REQUEST_PROBLEM_INFORMATION,
        p.request_problem_information,
    );
    four(buf, id::WILL_DELAY_INTERVAL, p.will_delay_interval);
    byte(
        buf,
        id::REQUEST_RESPONSE_INFORMATION,
        p.request_response_information,
    );
    string(
        buf,
        id::RESPONSE_INFORMATION,
        &p.response_information,
        "response information",
    )?;
    string(
        buf,
        id::SERVER_REFERENCE,
        &p.server_reference,
        "server reference",
    )?;
    string(buf, id::REASON_STRING, &p.reason_string, "reason string")?;
    two(buf, id::RECEIVE_MAXIMUM, p.receive_maximum);
    two(buf, id::TOPIC_ALIAS_MAXIMUM, p.topic_alias_maximum);
    two(buf, id::TOPIC_ALIAS, p.topic_alias);
    byte(buf, id::MAXIMUM_QOS, p.maximum_qos);
    byte(buf, id::RETAIN_AVAILABLE, p.retain_available);
    for (k, v) in &p.user_properties {
        buf.put_u8(id::USER_PROPERTY);
        put_str(buf, k, "user property name")?;
        put_str(buf, v, "user property value")?;
    }
    four(buf, id::MAXIMUM_PACKET_SIZE, p.maximum_packet_size);
    byte(
        buf,
        id::WILDCARD_SUBSCRIPTION_AVAILABLE,
        p.wildcard_subscription_available,
    );
    byte(
        buf,
        id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        p.subscription_identifier_available,
    );
    byte(
        buf,
        id::SHARED_SUBSCRIPTION_AVAILABLE,
        p.shared_subscription_available,
    );
    Ok(())
}
