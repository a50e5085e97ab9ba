#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use bytes::Bytes;
use makelaar_proto::{Properties, QoS};

use super::*;
use crate::record::{MessageRecord, QueuedRecord, QueuedState};
use proptest::prelude::*;

fn decoders() -> [fn(&[u8]) -> bool; 6] {
    [
        |b| decode_session(b).is_ok(),
        |b| decode_subscription(b).is_ok(),
        |b| decode_message(b).is_ok(),
        |b| decode_queued(b).is_ok(),
        |b| queued_weight(b).is_ok(),
        |b| decode_depth(b).is_ok(),
    ]
}

proptest! {
    /// Damaged values fail to decode; they never panic or allocate without bound.
    #[test]
    fn any_bytes_decode_without_panicking(b in proptest::collection::vec(any::<u8>(), 0..200)) {
        for decode in decoders() {
            decode(&b);
        }
    }
}

#[test]
fn every_cut_of_a_value_is_refused() {
    let q = QueuedRecord {
        message: std::sync::Arc::new(MessageRecord {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"payload"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: Properties {
                user_properties: vec![("k".into(), "v".into())],
                message_expiry_interval: Some(9),
                ..Properties::default()
            },
            expires_at_ms: Some(1),
            origin: Some("p".into()),
        }),
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: vec![1, 2],
        shared_filter: Some("$share/g/a/#".into()),
        state: QueuedState::AwaitingComp { packet_id: 3 },
    };
    let full = encode_queued(&q);
    assert_eq!(decode_queued(&full).unwrap(), q);
    assert_eq!(queued_weight(&full).unwrap(), 10);
    for cut in 0..full.len() {
        assert!(decode_queued(&full[..cut]).is_err(), "cut at {cut}");
    }
    let mut longer = full.clone();
    longer.push(0);
    assert!(decode_queued(&longer).is_err());
}

#[test]
fn a_session_record_without_username_reads_as_none() {
    let s = SessionRecord {
        protocol_version: 4,
        expiry_interval: 60,
        disconnected_at_ms: Some(5),
        pending_will: None,
        will_at_ms: None,
        username: Some("alice".into()),
    };
    let full = encode_session(&s);
    assert_eq!(decode_session(&full).unwrap(), s);
    // A record written before usernames were stored ends where the username starts.
    let old = &full[..full.len() - (1 + 4 + 5)];
    let read = decode_session(old).unwrap();
    assert_eq!(read.username, None);
    assert_eq!(read.expiry_interval, 60);
    // A cut inside the username is damage, not an old record.
    assert!(decode_session(&full[..full.len() - 1]).is_err());
}
