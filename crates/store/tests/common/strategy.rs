//! Proptest strategies: records with every field exercised, and op sequences over a small key
//! space so that keys collide (overwrites, deletes of present and absent keys).

use std::sync::Arc;

use bytes::Bytes;
use makelaar_proto::{Properties, QoS, RetainHandling, SubscriptionOptions, Will};
use makelaar_store::{
    MessageRecord, Op, QueuedRecord, QueuedState, SessionRecord, SubscriptionRecord,
};
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;

/// Client ids; "a", "a\0" and "ab" sit right next to each other in key order, to catch a
/// DeleteSession range that reaches into a neighbour.
pub const CLIENTS: &[&str] = &["a", "a\0", "ab", "b", "", "ü/x"];
const FILTERS: &[&str] = &["x", "x/#", "$share/g/x", "", "+/y"];
const TOPICS: &[&str] = &["t", "t/1", "", "ü"];

fn pick(set: &'static [&'static str]) -> impl Strategy<Value = Arc<str>> {
    proptest::sample::select(set).prop_map(Arc::from)
}

fn text() -> impl Strategy<Value = String> {
    "[a-zé\\x00/]{0,6}"
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

/// Properties with any field set, including ones a PUBLISH never carries: the store keeps
/// whatever it is given.
pub fn properties() -> BoxedStrategy<Properties> {
    let bytes8 = (
        of(any::<u8>()),
        of(any::<u8>()),
        of(any::<u8>()),
        of(any::<u8>()),
        of(any::<u8>()),
        of(any::<u8>()),
        of(any::<u8>()),
        of(any::<u8>()),
    );
    let shorts = (
        of(any::<u16>()),
        of(any::<u16>()),
        of(any::<u16>()),
        of(any::<u16>()),
    );
    let ints = (
        of(any::<u32>()),
        of(any::<u32>()),
        of(any::<u32>()),
        of(any::<u32>()),
    );
    let strings = (
        of(text()),
        of(text()),
        of(text()),
        of(text()),
        of(text()),
        of(text()),
        of(text()),
    );
    let rest = (
        of(bytes(8)),
        of(bytes(8)),
        vec(any::<u32>(), 0..3),
        vec((text(), text()), 0..3),
    );
    (bytes8, shorts, ints, strings, rest)
        .prop_map(|(b, s, i, t, r)| Properties {
            payload_format_indicator: b.0,
            request_problem_information: b.1,
            request_response_information: b.2,
            maximum_qos: b.3,
            retain_available: b.4,
            wildcard_subscription_available: b.5,
            subscription_identifier_available: b.6,
            shared_subscription_available: b.7,
            server_keep_alive: s.0,
            receive_maximum: s.1,
            topic_alias_maximum: s.2,
            topic_alias: s.3,
            message_expiry_interval: i.0,
            session_expiry_interval: i.1,
            will_delay_interval: i.2,
            maximum_packet_size: i.3,
            content_type: t.0,
            response_topic: t.1,
            assigned_client_identifier: t.2,
            authentication_method: t.3,
            response_information: t.4,
            server_reference: t.5,
            reason_string: t.6,
            correlation_data: r.0,
            authentication_data: r.1,
            subscription_identifiers: r.2,
            user_properties: r.3,
        })
        .boxed()
}

pub fn will() -> BoxedStrategy<Will> {
    (text(), bytes(32), qos(), any::<bool>(), properties())
        .prop_map(|(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        })
        .boxed()
}

pub fn session() -> BoxedStrategy<SessionRecord> {
    (
        3u8..=5,
        any::<u32>(),
        of(any::<u64>()),
        of(will().prop_map(Box::new)),
        of(any::<u64>()),
        of(text()),
    )
        .prop_map(
            |(
                protocol_version,
                expiry_interval,
                disconnected_at_ms,
                pending_will,
                will_at_ms,
                username,
            )| {
                SessionRecord {
                    protocol_version,
                    expiry_interval,
                    disconnected_at_ms,
                    pending_will,
                    will_at_ms,
                    username,
                }
            },
        )
        .boxed()
}

pub fn subscription() -> BoxedStrategy<SubscriptionRecord> {
    let handling = prop_oneof![
        Just(RetainHandling::SendAtSubscribe),
        Just(RetainHandling::SendIfNew),
        Just(RetainHandling::DoNotSend)
    ];
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        handling,
        of(any::<u32>()),
    )
        .prop_map(
            |(qos, no_local, retain_as_published, retain_handling, subscription_id)| {
                SubscriptionRecord {
                    options: SubscriptionOptions {
                        qos,
                        no_local,
                        retain_as_published,
                        retain_handling,
                    },
                    subscription_id,
                }
            },
        )
        .boxed()
}

pub fn message() -> BoxedStrategy<MessageRecord> {
    (
        pick(TOPICS),
        bytes(64),
        qos(),
        any::<bool>(),
        properties(),
        of(any::<u64>()),
        of(pick(CLIENTS)),
    )
        .prop_map(
            |(topic, payload, qos, retain, properties, expires_at_ms, origin)| MessageRecord {
                topic,
                payload,
                qos,
                retain,
                properties,
                expires_at_ms,
                origin,
            },
        )
        .boxed()
}

pub fn queued() -> BoxedStrategy<QueuedRecord> {
    let state = prop_oneof![
        Just(QueuedState::Queued),
        any::<u16>().prop_map(|packet_id| QueuedState::AwaitingAck { packet_id }),
        any::<u16>().prop_map(|packet_id| QueuedState::AwaitingComp { packet_id }),
    ];
    (
        message().prop_map(Arc::new),
        qos(),
        any::<bool>(),
        vec(any::<u32>(), 0..3),
        of(pick(FILTERS)),
        state,
    )
        .prop_map(
            |(message, qos, retain, subscription_ids, shared_filter, state)| QueuedRecord {
                message,
                qos,
                retain,
                subscription_ids,
                shared_filter,
                state,
            },
        )
        .boxed()
}

pub fn op() -> BoxedStrategy<Op> {
    let c = || pick(CLIENTS);
    let seq = || prop_oneof![0u64..6, Just(u64::MAX)];
    let pid = || prop_oneof![0u16..4, Just(u16::MAX)];
    prop_oneof![
        3 => (c(), session()).prop_map(|(client_id, record)| Op::PutSession { client_id, record }),
        1 => c().prop_map(|client_id| Op::DeleteSession { client_id }),
        2 => (c(), pick(FILTERS), subscription())
            .prop_map(|(client_id, filter, record)| Op::PutSubscription { client_id, filter, record }),
        1 => (c(), pick(FILTERS)).prop_map(|(client_id, filter)| Op::DeleteSubscription { client_id, filter }),
        4 => (c(), seq(), queued()).prop_map(|(client_id, seq, record)| Op::PutQueued { client_id, seq, record }),
        3 => (c(), seq()).prop_map(|(client_id, seq)| Op::DeleteQueued { client_id, seq }),
        2 => (c(), pid()).prop_map(|(client_id, packet_id)| Op::PutInbound { client_id, packet_id }),
        1 => (c(), pid()).prop_map(|(client_id, packet_id)| Op::DeleteInbound { client_id, packet_id }),
        2 => (pick(TOPICS), message()).prop_map(|(topic, message)| Op::PutRetained { topic, message: Arc::new(message) }),
        1 => pick(TOPICS).prop_map(|topic| Op::DeleteRetained { topic }),
    ]
    .boxed()
}

/// Batches of ops.
pub fn batches() -> impl Strategy<Value = Vec<Vec<Op>>> {
    vec(vec(op(), 0..10), 1..8)
}
