//! MQTT 5 properties as (property id, value) pairs, ended by 0.

use bytes::Bytes;
use makelaar_proto::Properties;

use super::{CodecError, Reader, Result, Writer};

/// Ends the list of properties (0 is no MQTT property id).
const PROPS_END: u8 = 0;

pub(super) fn put_properties(w: &mut Writer, p: &Properties) {
    // No `..`: a new field in `Properties` must be added here (and in `get_properties`).
    let Properties {
        payload_format_indicator,
        message_expiry_interval,
        content_type,
        response_topic,
        correlation_data,
        subscription_identifiers,
        session_expiry_interval,
        assigned_client_identifier,
        server_keep_alive,
        authentication_method,
        authentication_data,
        request_problem_information,
        will_delay_interval,
        request_response_information,
        response_information,
        server_reference,
        reason_string,
        receive_maximum,
        topic_alias_maximum,
        topic_alias,
        maximum_qos,
        retain_available,
        user_properties,
        maximum_packet_size,
        wildcard_subscription_available,
        subscription_identifier_available,
        shared_subscription_available,
    } = p;
    for (id, v) in [
        (0x01, payload_format_indicator),
        (0x17, request_problem_information),
        (0x19, request_response_information),
        (0x24, maximum_qos),
        (0x25, retain_available),
        (0x28, wildcard_subscription_available),
        (0x29, subscription_identifier_available),
        (0x2A, shared_subscription_available),
    ] {
        if let Some(v) = v {
            w.u8(id);
            w.u8(*v);
        }
    }
    for (id, v) in [
        (0x13, server_keep_alive),
        (0x21, receive_maximum),
        (0x22, topic_alias_maximum),
        (0x23, topic_alias),
    ] {
        if let Some(v) = v {
            w.u8(id);
            w.u16(*v);
        }
    }
    for (id, v) in [
        (0x02, message_expiry_interval),
        (0x11, session_expiry_interval),
        (0x18, will_delay_interval),
        (0x27, maximum_packet_size),
    ] {
        if let Some(v) = v {
            w.u8(id);
            w.u32(*v);
        }
    }
    for (id, v) in [
        (0x03, content_type),
        (0x08, response_topic),
        (0x12, assigned_client_identifier),
        (0x15, authentication_method),
        (0x1A, response_information),
        (0x1C, server_reference),
        (0x1F, reason_string),
    ] {
        if let Some(v) = v {
            w.u8(id);
            w.bytes(v.as_bytes());
        }
    }
    for (id, v) in [(0x09, correlation_data), (0x16, authentication_data)] {
        if let Some(v) = v {
            w.u8(id);
            w.bytes(v);
        }
    }
    for v in subscription_identifiers {
        w.u8(0x0B);
        w.u32(*v);
    }
    for (k, v) in user_properties {
        w.u8(0x26);
        w.bytes(k.as_bytes());
        w.bytes(v.as_bytes());
    }
    w.u8(PROPS_END);
}

pub(super) fn get_properties(r: &mut Reader<'_>) -> Result<Properties> {
    const W: &str = "properties";
    let mut p = Properties::default();
    loop {
        let id = r.u8(W)?;
        match id {
            PROPS_END => return Ok(p),
            0x01 => p.payload_format_indicator = Some(r.u8(W)?),
            0x17 => p.request_problem_information = Some(r.u8(W)?),
            0x19 => p.request_response_information = Some(r.u8(W)?),
            0x24 => p.maximum_qos = Some(r.u8(W)?),
            0x25 => p.retain_available = Some(r.u8(W)?),
            0x28 => p.wildcard_subscription_available = Some(r.u8(W)?),
            0x29 => p.subscription_identifier_available = Some(r.u8(W)?),
            0x2A => p.shared_subscription_available = Some(r.u8(W)?),
            0x13 => p.server_keep_alive = Some(r.u16(W)?),
            0x21 => p.receive_maximum = Some(r.u16(W)?),
            0x22 => p.topic_alias_maximum = Some(r.u16(W)?),
            0x23 => p.topic_alias = Some(r.u16(W)?),
            0x02 => p.message_expiry_interval = Some(r.u32(W)?),
            0x11 => p.session_expiry_interval = Some(r.u32(W)?),
            0x18 => p.will_delay_interval = Some(r.u32(W)?),
            0x27 => p.maximum_packet_size = Some(r.u32(W)?),
            0x03 => p.content_type = Some(r.string(W)?),
            0x08 => p.response_topic = Some(r.string(W)?),
            0x12 => p.assigned_client_identifier = Some(r.string(W)?),
            0x15 => p.authentication_method = Some(r.string(W)?),
            0x1A => p.response_information = Some(r.string(W)?),
            0x1C => p.server_reference = Some(r.string(W)?),
            0x1F => p.reason_string = Some(r.string(W)?),
            0x09 => p.correlation_data = Some(Bytes::copy_from_slice(r.bytes(W)?)),
            0x16 => p.authentication_data = Some(Bytes::copy_from_slice(r.bytes(W)?)),
            0x0B => p.subscription_identifiers.push(r.u32(W)?),
            0x26 => {
                let k = r.string(W)?;
                let v = r.string(W)?;
                p.user_properties.push((k, v));
            }
            _ => return Err(CodecError("unknown property id")),
        }
    }
}
