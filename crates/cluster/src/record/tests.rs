#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use proptest::prelude::*;

fn qos() -> impl Strategy<Value = QoS> {
    prop::sample::select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
}

fn node() -> impl Strategy<Value = NodeId> {
    "[A-Za-z0-9_-]{1,64}".prop_map(|n| NodeId::new(&n).unwrap())
}

fn subscription() -> impl Strategy<Value = StoredSubscription> {
    (
        "\\PC{1,30}",
        qos(),
        any::<bool>(),
        any::<bool>(),
        prop::sample::select(vec![
            RetainHandling::SendAtSubscribe,
            RetainHandling::SendIfNew,
            RetainHandling::DoNotSend,
        ]),
        prop::option::of(1u32..=268_435_455),
    )
        .prop_map(
            |(filter, qos, no_local, rap, rh, identifier)| StoredSubscription {
                filter,
                options: SubscriptionOptions {
                    qos,
                    no_local,
                    retain_as_published: rap,
                    retain_handling: rh,
                },
                identifier,
            },
        )
}

fn will() -> impl Strategy<Value = StoredWill> {
    (
        (
            "\\PC{1,30}",
            prop::collection::vec(any::<u8>(), 0..64),
            qos(),
            any::<bool>(),
            any::<u32>(),
            prop::option::of(any::<u32>()),
        ),
        (
            any::<bool>(),
            prop::option::of("\\PC{0,10}"),
            prop::option::of("\\PC{1,10}"),
            prop::option::of(prop::collection::vec(any::<u8>(), 0..16)),
            prop::collection::vec(("\\PC{0,8}", "\\PC{0,8}"), 0..4),
            prop::option::of("\\PC{0,10}"),
        ),
    )
        .prop_map(
            |(
                (topic, payload, qos, retain, delay, message_expiry),
                (utf8, ct, rt, cd, up, user),
            )| {
                StoredWill {
                    topic,
                    payload: payload.into(),
                    qos,
                    retain,
                    delay,
                    message_expiry,
                    payload_utf8: utf8,
                    content_type: ct,
                    response_topic: rt,
                    correlation_data: cd.map(Into::into),
                    user_properties: up,
                    username: user,
                }
            },
        )
}

fn record() -> impl Strategy<Value = SessionRecord> {
    (
        (
            node(),
            any::<u64>(),
            3u8..=5,
            any::<u32>(),
            prop::option::of(any::<u64>()),
        ),
        (
            prop::collection::vec(subscription(), 0..5),
            prop::option::of(will()),
            prop::collection::vec(
                (any::<u16>(), any::<u64>(), any::<u64>()).prop_map(
                    |(partition, next, writer_through)| Cursor {
                        partition,
                        next,
                        writer_through,
                    },
                ),
                0..8,
            ),
            prop::collection::vec(
                (
                    any::<u16>(),
                    any::<u16>(),
                    any::<u64>(),
                    prop::sample::select(vec![
                        OutboundState::AwaitPuback,
                        OutboundState::AwaitPubrec,
                        OutboundState::AwaitPubcomp,
                        OutboundState::Queued,
                    ]),
                )
                    .prop_map(|(packet_id, partition, seq, state)| Outbound {
                        packet_id,
                        partition,
                        seq,
                        state,
                    }),
                0..6,
            ),
            prop::collection::vec(any::<u16>(), 0..6),
        ),
        (
            prop::collection::vec(
                (
                    node(),
                    any::<u64>(),
                    prop::option::of((node(), any::<u64>())),
                )
                    .prop_map(|(node, claim, from)| WillTaker {
                        node,
                        claim,
                        from,
                    }),
                0..=WILL_TAKERS_KEPT,
            ),
            prop::option::of(node()),
            prop::collection::vec((any::<u16>(), any::<u64>()), 0..4),
        ),
    )
        .prop_map(
            |(
                (node, claim, protocol, expiry_interval, disconnected_at_ms),
                (subscriptions, will, cursors, outbound, inbound_qos2),
                (will_takers, cursors_of, writer_late),
            )| {
                SessionRecord {
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
                }
            },
        )
}

/// `r` as a record written when it kept one will take-out mark: its newest.
fn newest_taker_only(mut r: SessionRecord) -> SessionRecord {
    r.will_takers.truncate(1);
    without_sources(r)
}

/// `r` as a record written before the marks said where their wills came from; and the
/// bytes that field takes in `r` then (its count, and one "absent" per mark).
fn without_sources(mut r: SessionRecord) -> SessionRecord {
    for t in &mut r.will_takers {
        t.from = None;
    }
    r
}

fn sources_len(r: &SessionRecord) -> usize {
    1 + r.will_takers.len()
}

proptest! {
    #[test]
    fn session_record_round_trip(r in record()) {
        let data = r.encode();
        prop_assert_eq!(SessionRecord::decode(&data), Ok(r));
    }

    #[test]
    fn truncated_records_are_refused(r in record(), cut in any::<prop::sample::Index>()) {
        let data = r.encode();
        let cut = cut.index(data.len());
        match SessionRecord::decode(&data[..cut]) {
            Err(_) => {}
            // A cut just before a field added later reads as a record written before it
            // existed: everything else whole, that field and the ones after it absent. Any
            // other cut is refused.
            Ok(d) => {
                let without_sources = without_sources(r.clone());
                let without_earlier = newest_taker_only(r.clone());
                let without_late = SessionRecord { writer_late: Vec::new(), ..without_earlier.clone() };
                let without_cursors_of = SessionRecord { cursors_of: None, ..without_late.clone() };
                let older = SessionRecord { will_takers: Vec::new(), ..without_cursors_of.clone() };
                prop_assert!(
                    d == without_sources || d == without_earlier || d == without_late || d == without_cursors_of || d == older,
                    "{d:?} from {r:?}"
                );
            }
        }
    }

    #[test]
    fn records_written_before_the_will_taker_field_still_decode(r in record()) {
        let r = SessionRecord { will_takers: Vec::new(), cursors_of: None, writer_late: Vec::new(), ..r };
        let data = r.encode();
        // The older form ends before the two fields' presence bytes and the three counts.
        prop_assert_eq!(SessionRecord::decode(&data[..data.len() - 5]), Ok(r));
    }

    #[test]
    fn records_written_before_the_cursor_writer_field_still_decode(r in record()) {
        let r = SessionRecord { cursors_of: None, writer_late: Vec::new(), ..newest_taker_only(r) };
        let data = r.encode();
        prop_assert_eq!(SessionRecord::decode(&data[..data.len() - 3 - sources_len(&r)]), Ok(r));
    }

    #[test]
    fn records_written_before_the_late_own_messages_field_still_decode(r in record()) {
        let r = SessionRecord { writer_late: Vec::new(), ..newest_taker_only(r) };
        let data = r.encode();
        prop_assert_eq!(SessionRecord::decode(&data[..data.len() - 2 - sources_len(&r)]), Ok(r));
    }

    #[test]
    fn records_written_with_one_will_taker_still_decode(r in record()) {
        let r = newest_taker_only(r);
        let data = r.encode();
        prop_assert_eq!(SessionRecord::decode(&data[..data.len() - 1 - sources_len(&r)]), Ok(r));
    }

    #[test]
    fn records_written_before_the_will_source_field_still_decode(r in record()) {
        let r = without_sources(r);
        let data = r.encode();
        prop_assert_eq!(SessionRecord::decode(&data[..data.len() - sources_len(&r)]), Ok(r));
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = SessionRecord::decode(&data);
        let _ = RegistryEntry::decode(&data);
        let _ = NodeLease::decode(&data);
    }

    #[test]
    fn registry_and_lease_round_trip(
        n in node(),
        inc in any::<u64>(),
        connected in any::<bool>(),
        came_from in prop::option::of(node()),
    ) {
        let e = RegistryEntry { node: n.clone(), incarnation: inc, connected, came_from };
        prop_assert_eq!(RegistryEntry::decode(&e.encode()), Ok(e));
        let l = NodeLease { node: n, incarnation: inc };
        prop_assert_eq!(NodeLease::decode(&l.encode()), Ok(l));
    }
}

#[test]
fn versions_and_trailing_bytes() {
    let e = RegistryEntry {
        node: NodeId::new("m1").unwrap(),
        incarnation: 7,
        connected: true,
        came_from: None,
    };
    let mut data = e.encode().to_vec();
    // An entry without the node it came from is as written before that field existed.
    assert_eq!(data, [1, 2, b'm', b'1', 7, 1]);
    let moved = RegistryEntry {
        came_from: Some(NodeId::new("m2").unwrap()),
        ..e.clone()
    };
    assert_eq!(
        moved.encode().to_vec(),
        [1, 2, b'm', b'1', 7, 1, 2, b'm', b'2']
    );
    data.extend_from_slice(&[2, b'm', b'2', 0]);
    assert_eq!(RegistryEntry::decode(&data), Err(DecodeError::Trailing));
    data.truncate(6);
    data[0] = 2;
    assert_eq!(
        RegistryEntry::decode(&data),
        Err(DecodeError::UnknownVersion(2))
    );
}

proptest! {
    /// A record written again by another node (a claimer taking the will out, a reaper, a
    /// node whose replay is not back) keeps counting its cursors by the node that had the
    /// session's place in the log; written again by that node, the record is its own again.
    #[test]
    fn a_record_written_again_keeps_whose_messages_its_cursors_count(
        r in record(), other in node(), claim in any::<u64>()
    ) {
        let first = r.log_writer().clone();
        let again = r.written_again_by(other.clone(), claim);
        prop_assert_eq!(&again.node, &other);
        prop_assert_eq!(again.claim, claim);
        prop_assert_eq!(again.log_writer(), &first);
        prop_assert_eq!(&again.cursors, &r.cursors);
        prop_assert_eq!(&again.outbound, &r.outbound);
        let back = again.written_again_by(first.clone(), claim);
        prop_assert_eq!(&back.cursors_of, &None);
        prop_assert_eq!(back.log_writer(), &first);
    }
}
