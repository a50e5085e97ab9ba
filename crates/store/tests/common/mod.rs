//! Records for tests: small fixed ones and proptest strategies.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

pub mod strategy;

use std::sync::Arc;

use bytes::Bytes;
use makelaar_proto::{Properties, QoS, SubscriptionOptions};
use makelaar_store::{
    MessageRecord, Op, QueuedRecord, QueuedState, SessionRecord, SubscriptionRecord,
};

pub fn session() -> SessionRecord {
    SessionRecord {
        protocol_version: 5,
        expiry_interval: 3600,
        disconnected_at_ms: Some(1_700_000_000_000),
        pending_will: None,
        will_at_ms: None,
        username: Some("alice".into()),
    }
}

pub fn message(topic: &str, payload: &[u8]) -> MessageRecord {
    MessageRecord {
        topic: Arc::from(topic),
        payload: Bytes::copy_from_slice(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::default(),
        expires_at_ms: None,
        origin: Some(Arc::from("publisher")),
    }
}

pub fn queued(topic: &str, payload: &[u8]) -> QueuedRecord {
    QueuedRecord {
        message: Arc::new(message(topic, payload)),
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: vec![],
        shared_filter: None,
        state: QueuedState::Queued,
    }
}

pub fn put_session(c: &str) -> Op {
    Op::PutSession {
        client_id: c.into(),
        record: session(),
    }
}

pub fn put_sub(c: &str, filter: &str) -> Op {
    Op::PutSubscription {
        client_id: c.into(),
        filter: filter.into(),
        record: SubscriptionRecord {
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..SubscriptionOptions::default()
            },
            subscription_id: None,
        },
    }
}

pub fn put_queued(c: &str, seq: u64, payload: &[u8]) -> Op {
    Op::PutQueued {
        client_id: c.into(),
        seq,
        record: queued("t", payload),
    }
}

pub fn del_queued(c: &str, seq: u64) -> Op {
    Op::DeleteQueued {
        client_id: c.into(),
        seq,
    }
}
