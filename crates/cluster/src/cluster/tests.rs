#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use crate::backend::MemoryBackend;

fn layer(backend: &MemoryBackend, node: &str, incarnation: u64) -> Cluster<MemoryBackend> {
    Cluster::new(
        backend.clone(),
        ClusterConfig {
            node: NodeId::new(node).unwrap(),
            incarnation,
            prefix: "mk".into(),
            partitions: PartitionCount::new(8).unwrap(),
            lease: LeaseConfig::default(),
            claim: ClaimConfig {
                handover_timeout: Duration::from_millis(50),
                ..ClaimConfig::default()
            },
        },
    )
}

fn message(payload: &'static str) -> Envelope {
    Envelope {
        qos: makelaar_proto::packet::QoS::AtLeastOnce,
        retain: false,
        origin_node: NodeId::new("m1").unwrap(),
        origin_client: "pub".into(),
        received_at_ms: 0,
        message_expiry: None,
        payload_utf8: false,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
        payload: Bytes::from_static(payload.as_bytes()),
        claim: None,
    }
}

fn record(node: &str) -> SessionRecord {
    SessionRecord {
        node: NodeId::new(node).unwrap(),
        claim: 1,
        protocol: 4,
        expiry_interval: 60,
        disconnected_at_ms: None,
        subscriptions: Vec::new(),
        will: None,
        cursors: Vec::new(),
        outbound: Vec::new(),
        inbound_qos2: Vec::new(),
        will_takers: Vec::new(),
        cursors_of: None,
        writer_late: Vec::new(),
    }
}

#[tokio::test]
async fn claims_and_fenced_session_writes() {
    let engine = MemoryBackend::new();
    let m1 = layer(&engine, "m1", 1);
    let m2 = layer(&engine, "m2", 2);
    let client = ClientKey::new("sensor 1");
    let c1 = m1.claim_client(&client).await.unwrap();
    assert_eq!(c1.previous, None);
    assert!(m1.still_owner(&client, c1.revision).await.unwrap());
    let (none, fence) = m1.load_session(&client).await.unwrap();
    assert!(none.is_none());
    let f1 = m1
        .store_session(&client, &record("m1"), fence)
        .await
        .unwrap();

    // m1 holds a live lease: m2 asks it to hand over; nobody answers on the memory engine
    // (no responder), so m2 goes ahead and m1 is fenced from then on.
    m1.refresh_lease().await.unwrap();
    let c2 = m2.claim_client(&client).await.unwrap();
    assert!(c2.revision > c1.revision);
    assert_eq!(c2.previous.unwrap().node.as_str(), "m1");
    assert!(!m1.still_owner(&client, c1.revision).await.unwrap());
    let (seen, fence) = m2.load_session(&client).await.unwrap();
    assert_eq!(seen.unwrap().node.as_str(), "m1");
    m2.store_session(&client, &record("m2"), fence)
        .await
        .unwrap();
    assert_eq!(
        m1.store_session(&client, &record("m1"), f1).await,
        Err(ClusterError::Fenced(client.clone()))
    );
    assert_eq!(
        m1.mark_disconnected(&client, c1.revision).await,
        Err(ClusterError::Fenced(client.clone()))
    );
    assert_eq!(
        m1.store_session(&client, &record("m1"), Fence::Lost).await,
        Err(ClusterError::Fenced(client.clone()))
    );
    m2.mark_disconnected(&client, c2.revision).await.unwrap();
}

/// m1's connection of a client whose hand-over request never reached it (a cut link):
/// m2's claim, written without m1's answer, reaches m1 through the registry watch; m1's
/// own writes do not.
#[tokio::test]
async fn another_nodes_claim_is_seen_by_the_registry_watch() {
    let engine = MemoryBackend::new();
    let m1 = layer(&engine, "m1", 1);
    let m2 = layer(&engine, "m2", 2);
    let mut watch = m1.watch_claims_elsewhere().await.unwrap();
    let client = ClientKey::new("sensor/1 +");
    let c1 = m1.claim_client(&client).await.unwrap();
    m1.refresh_lease().await.unwrap();
    let c2 = m2.claim_client(&client).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("the watch sees m2's claim")
        .unwrap();
    assert_eq!(seen.client_id, "sensor/1 +");
    assert_eq!(seen.node.as_str(), "m2");
    assert_eq!(seen.revision, c2.revision);
    assert!(seen.revision > c1.revision);
    // Nothing else: m1's own claim was not reported.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), watch.next())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn live_subjects_and_partitions() {
    let engine = MemoryBackend::new();
    let m1 = layer(&engine, "m1", 1);
    let mut sub = engine.subscribe(m1.live_filter("a/#"), None).await.unwrap();
    for t in ["a", "a/b", "b", "$SYS/a"] {
        m1.publish(t, &message(t)).await.unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..2 {
        let d = sub.next().await.unwrap();
        let topic = crate::subject::decode_under("mk.live", &d.subject).unwrap();
        let m = Envelope::decode(&d.payload).unwrap();
        assert_eq!(m.payload, topic.as_bytes());
        got.push(topic);
    }
    assert_eq!(got, ["a", "a/b"]);

    let (p, s1) = m1.append("x/y", &message("1")).await.unwrap();
    let (q, s2) = m1.append("x/y", &message("2")).await.unwrap();
    assert_eq!((p, s2), (q, s1 + 1));
    assert_eq!(p, m1.config().partitions.of("x/y"));
    let (_, subject) = m1.partition_subject("x/y");
    assert_eq!(subject.as_str(), format!("mk.p{}.u.x.y._T", p.index()));
    assert_eq!(engine.stream(p).len(), 2);
}

/// The barriers a claim waits for: one appended to every partition after the instant given,
/// above everything appended before (a barrier appended for an earlier instant is not
/// reused for a later one); a follower delivers each as its position only, and a read-back
/// skips them.
#[tokio::test]
async fn partition_barriers_are_appended_after_the_instant_given() {
    let engine = MemoryBackend::new();
    let m1 = layer(&engine, "m1", 1);
    let m2 = layer(&engine, "m2", 2);
    let (p, s1) = m1.append("x/y", &message("1")).await.unwrap();
    let (_, mut follow) = m1.follow_partition(p).await.unwrap();
    let first = Instant::now();
    let barriers = m2.barriers_since(first, None).await.unwrap();
    assert_eq!(
        barriers.len(),
        usize::from(m2.config().partitions.get()),
        "one per partition"
    );
    assert!(barriers.contains(&(p.index(), s1 + 1)));
    assert_eq!(
        engine
            .stream(p)
            .last()
            .map(|(subject, _)| subject.as_str().to_owned()),
        Some(format!("mk.p{}.b.m2", p.index()))
    );
    let (_, s2) = m1.append("x/y", &message("2")).await.unwrap();
    // Shared by a claim that began before those appends.
    assert_eq!(m2.barriers_since(first, None).await.unwrap(), barriers);
    // A claim that began after them appends again, past the later message.
    let later = Instant::now();
    assert!(m2
        .barriers_since(later, None)
        .await
        .unwrap()
        .contains(&(p.index(), s2 + 1)));
    assert_eq!(
        follow.next().await.unwrap(),
        Followed::Barrier {
            partition: p,
            seq: s1 + 1,
            claims: Vec::new(),
        }
    );
    assert_eq!(follow.next().await.unwrap().seq(), s2);
    let back: Vec<u64> = m1
        .read_partition(p, s1, s2 + 1)
        .await
        .unwrap()
        .map(|m| m.unwrap().seq)
        .collect()
        .await;
    assert_eq!(back, [s1, s2], "a read-back holds the messages only");

    // A round that fails is shared as well: the claims waiting behind it do not each try
    // (and wait out a timeout) in turn.
    let failing = Instant::now();
    engine.fail_appends(1, BackendError::Timeout);
    assert!(m2.barriers_since(failing, None).await.is_err());
    assert!(m2.barriers_since(failing, None).await.is_err(), "shared");
    assert!(
        m2.barriers_since(Instant::now(), None).await.is_ok(),
        "a later claim tries again"
    );
}

fn named(client: &str, revision: u64) -> BarrierClaim {
    BarrierClaim {
        client: client.into(),
        revision: Revision::new(revision).unwrap(),
    }
}

/// A claim's barriers name it; a round that does not name a claim is not shared with it,
/// so every claim's barriers name it (the claims waiting at once share one).
#[tokio::test]
async fn a_round_of_barriers_names_the_claims_it_stands_for() {
    let engine = MemoryBackend::new();
    let m2 = layer(&engine, "m2", 2);
    let p = m2.config().partitions.of("x/y");
    let since = Instant::now();
    let first = m2.barriers_since(since, Some(named("a", 5))).await.unwrap();
    let second = m2.barriers_since(since, Some(named("b", 6))).await.unwrap();
    assert_ne!(
        first, second,
        "b was not named by the first round: a round of its own"
    );
    let (both_a, both_b) = tokio::join!(
        m2.barriers_since(since, Some(named("c", 7))),
        m2.barriers_since(since, Some(named("d", 8))),
    );
    let rounds: Vec<Vec<BarrierClaim>> = engine
        .stream(p)
        .iter()
        .map(|(_, payload)| crate::barrier::decode_claims(payload).unwrap())
        .collect();
    assert_eq!(rounds[0], [named("a", 5)]);
    assert_eq!(rounds[1], [named("b", 6)]);
    let later: Vec<BarrierClaim> = rounds[2..].iter().flatten().cloned().collect();
    assert_eq!(later, [named("c", 7), named("d", 8)]);
    assert!(rounds.len() <= 4);
    assert!(both_a.is_ok() && both_b.is_ok());
    // A caller naming no claim shares the last round begun after its instant.
    assert_eq!(
        m2.barriers_since(since, None).await.unwrap(),
        both_b.unwrap()
    );
}

/// A late append: the publisher's message, appended after another node's claim of the
/// publisher had put its barrier in the partition, is dropped by every follower (as its
/// position only) and left out of every replay; its messages under the newer claim, and
/// other clients' messages, are not.
#[tokio::test]
async fn a_late_append_behind_a_barrier_of_a_newer_claim_is_dropped_by_every_reader() {
    use crate::record::Cursor;
    use crate::replay::{NodePosition, ReplayPlan};
    let engine = MemoryBackend::new();
    let m1 = layer(&engine, "m1", 1);
    let m2 = layer(&engine, "m2", 2);
    let m3 = layer(&engine, "m3", 3);
    let p = m1.config().partitions.of("q/1");
    let (_, mut follow) = m3.follow_partition(p).await.unwrap();
    let under = |node: &str, client: &str, claim: u64, payload: &'static str| Envelope {
        origin_node: NodeId::new(node).unwrap(),
        origin_client: client.into(),
        claim: Revision::new(claim),
        ..message(payload)
    };
    let (_, before) = m1
        .append("q/1", &under("m1", "pub", 5, "before"))
        .await
        .unwrap();
    // `pub` claimed on m2 (revision 9): its barriers.
    m2.barriers_since(Instant::now(), Some(named("pub", 9)))
        .await
        .unwrap();
    let (_, late) = m1
        .append("q/1", &under("m1", "pub", 5, "late"))
        .await
        .unwrap();
    m2.append("q/1", &under("m2", "pub", 9, "after"))
        .await
        .unwrap();
    m1.append("q/1", &under("m1", "other", 4, "other"))
        .await
        .unwrap();
    m1.append("q/1", &under("m1", "pub", 0, "will"))
        .await
        .unwrap();

    let mut read = Vec::new();
    for _ in 0..6 {
        read.push(follow.next().await.unwrap());
    }
    let payloads: Vec<String> = read
        .iter()
        .filter_map(|f| f.clone().message())
        .map(|m| String::from_utf8(m.envelope.payload.to_vec()).unwrap())
        .collect();
    assert_eq!(payloads, ["before", "after", "other", "will"]);
    assert!(
        matches!(read[1], Followed::Barrier { ref claims, .. } if *claims == [named("pub", 9)])
    );
    assert_eq!(
        read[2],
        Followed::Late {
            partition: p,
            seq: late,
            client: "pub".into()
        }
    );
    assert_eq!(m3.stats().late_dropped.load(Relaxed), 1);
    // So does a share group's consumer on that node.
    assert!(m3.is_late_share(p, late, &under("m1", "pub", 5, "late")));
    assert!(!m3.is_late_share(p, late + 1, &under("m2", "pub", 9, "after")));
    assert!(!m3.is_late_share(p, before, &under("m1", "pub", 5, "before")));
    assert_eq!(m3.stats().late_dropped.load(Relaxed), 2);

    // A replay on the node whose follower read the barrier leaves it out too.
    let plan = ReplayPlan::new(
        NodeId::new("m1").unwrap(),
        NodeId::new("m3").unwrap(),
        (
            &[Cursor {
                partition: p.index(),
                next: before,
                writer_through: before - 1,
            }],
            &[],
            &[],
        ),
        |_| NodePosition {
            next: late + 4,
            own_through: 0,
        },
        &[],
    );
    let r = m3.replay(&plan, |_| true, 100, 0).await.unwrap();
    let new: Vec<String> = r
        .new
        .iter()
        .map(|m| String::from_utf8(m.envelope.payload.to_vec()).unwrap())
        .collect();
    assert_eq!(new, ["before", "after", "other", "will"]);
    assert_eq!(m3.stats().late_dropped.load(Relaxed), 3);
}

#[tokio::test]
async fn retained_messages() {
    let engine = MemoryBackend::new();
    let m1 = layer(&engine, "m1", 1);
    let m2 = layer(&engine, "m2", 2);
    let door = message("open");
    m1.store_retained("home/hall", Some(&message("on")))
        .await
        .unwrap();
    let mut watch = m2.watch_retained("home/#").await.unwrap();
    let mut everything = m2.watch_retained("#").await.unwrap();
    m1.store_retained("home/door", Some(&door)).await.unwrap();
    m1.store_retained("$SYS/x", Some(&message("s")))
        .await
        .unwrap();
    assert_eq!(m2.load_retained("home/door").await.unwrap(), Some(door));
    let mut topics = m2.retained_topics().await.unwrap();
    topics.sort();
    assert_eq!(topics, ["$SYS/x", "home/door", "home/hall"]);
    // An empty retained message clears it, on every node; clearing twice is harmless.
    m2.store_retained("home/door", None).await.unwrap();
    m2.store_retained("home/door", None).await.unwrap();
    assert_eq!(m1.load_retained("home/door").await.unwrap(), None);
    let mut topics = m1.retained_topics().await.unwrap();
    topics.sort();
    assert_eq!(topics, ["$SYS/x", "home/hall"]);
    // The watch saw the current one, then the changes, never `$SYS/x`.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let c = watch.next().await.unwrap();
        seen.push((c.topic, c.message.map(|m| m.payload)));
    }
    assert_eq!(
        seen,
        [
            ("home/hall".to_owned(), Some(Bytes::from_static(b"on"))),
            ("home/door".to_owned(), Some(Bytes::from_static(b"open"))),
            ("home/door".to_owned(), None),
            ("home/door".to_owned(), None),
        ]
    );
    for _ in 0..4 {
        assert_ne!(everything.next().await.unwrap().topic, "$SYS/x");
    }
}

#[tokio::test]
async fn one_survivor_reaps() {
    let engine = MemoryBackend::new();
    let a = layer(&engine, "a", 1);
    let b = layer(&engine, "b", 2);
    let dead = Expired {
        node: NodeId::new("gone").unwrap(),
        incarnation: 7,
    };
    assert_eq!(a.try_reap(&dead).await.unwrap(), ReapOutcome::Won);
    assert_eq!(b.try_reap(&dead).await.unwrap(), ReapOutcome::Lost);
    assert_eq!(a.try_reap(&dead).await.unwrap(), ReapOutcome::Lost);
    // A node whose lease is there is not reaped.
    let live = layer(&engine, "live", 3);
    live.refresh_lease().await.unwrap();
    let not_dead = Expired {
        node: NodeId::new("live").unwrap(),
        incarnation: 3,
    };
    assert_eq!(
        a.try_reap(&not_dead).await.unwrap(),
        ReapOutcome::StillAlive
    );
}

#[test]
fn defaults() {
    let c = ClusterConfig::new(NodeId::new("m1").unwrap(), new_incarnation());
    assert_eq!(c.partitions.get(), 16);
    assert!(c.lease.validate().is_ok());
    let n = crate::nats::NatsConfig::new(vec!["nats://127.0.0.1:4222".into()]);
    assert_eq!(n.lease_ttl, c.lease.ttl);
    assert_eq!(n.partitions, c.partitions);
    assert_ne!(new_incarnation(), 0);
}

#[test]
fn release_requests_round_trip() {
    let client = ClientKey::new("c/1");
    let payload = ReleaseRequest::encode(&client, Revision::new(9).unwrap());
    let req = ReleaseRequest::decode(&payload, Some("_INBOX.x".into())).unwrap();
    assert_eq!(req.client, client);
    assert_eq!(req.revision.get(), 9);
    assert!(ReleaseRequest::decode(&payload[..payload.len() - 1], None).is_err());
}

#[test]
fn moved_notices_round_trip_and_a_truncated_one_is_refused() {
    let notice = MovedNotice {
        client: ClientKey::new("c/1"),
        revision: Revision::new(11).unwrap(),
    };
    let payload = notice.encode();
    assert_eq!(MovedNotice::decode(&payload).unwrap(), notice);
    assert!(MovedNotice::decode(&payload[..payload.len() - 1]).is_err());
    assert!(
        MovedNotice::decode(b"c/1").is_err(),
        "the former, bare client key"
    );
}

#[tokio::test]
async fn partitions_are_followed_from_new_messages_on_and_retained_watched_whole() {
    let backend = MemoryBackend::new();
    let m1 = layer(&backend, "m1", 1);
    let m2 = layer(&backend, "m2", 1);
    m1.append("a/b", &message("old")).await.unwrap();
    let (p, _) = m2.partition_subject("a/b");
    let (next, mut follow) = m2.follow_partition(p).await.unwrap();
    assert_eq!(next, 2, "the old message is before the follower's start");
    m1.append("a/b", &message("one")).await.unwrap();
    m1.append("a/b", &message("two")).await.unwrap();
    for (want, seq) in [("one", 2), ("two", 3)] {
        let m = follow.next().await.unwrap().message().unwrap();
        assert_eq!(
            (m.topic.as_str(), &m.envelope.payload[..], m.seq),
            ("a/b", want.as_bytes(), seq)
        );
    }
    let back: Vec<u64> = m2
        .read_partition(p, 1, 2)
        .await
        .unwrap()
        .map(|m| m.unwrap().seq)
        .collect()
        .await;
    assert_eq!(back, [1, 2]);

    m1.store_retained("$SYS/x", Some(&message("s")))
        .await
        .unwrap();
    m1.store_retained("r/1", Some(&message("r"))).await.unwrap();
    let mut watch = m2.watch_all_retained().await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(watch.next().await.unwrap().topic);
    }
    seen.sort();
    assert_eq!(seen, ["$SYS/x", "r/1"]);
    m1.store_retained("r/1", None).await.unwrap();
    let cleared = watch.next().await.unwrap();
    assert_eq!((cleared.topic.as_str(), cleared.message), ("r/1", None));
}

#[tokio::test]
async fn moved_clients_are_told() {
    let backend = MemoryBackend::new();
    let m1 = layer(&backend, "m1", 1);
    let m2 = layer(&backend, "m2", 1);
    let mut moved = m1.moved_clients().await.unwrap();
    let key = ClientKey::new("dev/1");
    let revision = Revision::new(42).unwrap();
    m2.notify_moved(&NodeId::new("m1").unwrap(), &key, revision)
        .await
        .unwrap();
    let notice = moved.recv().await.unwrap();
    assert_eq!((notice.client, notice.revision), (key, revision));
}

fn stored_will() -> StoredWill {
    StoredWill {
        topic: "status/x".into(),
        payload: Bytes::from_static(b"offline"),
        qos: makelaar_proto::packet::QoS::AtLeastOnce,
        retain: false,
        delay: 0,
        message_expiry: None,
        payload_utf8: false,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
        username: None,
    }
}

#[tokio::test]
async fn a_will_left_in_a_record_is_taken_by_one_claimer_only() {
    let engine = MemoryBackend::new();
    let m1 = layer(&engine, "m1", 1);
    let m2 = layer(&engine, "m2", 2);
    let m3 = layer(&engine, "m3", 3);
    let client = ClientKey::new("w1");
    let c1 = m1.claim_client(&client).await.unwrap();
    let found = m1.load_claimed_session(&client, &c1, 0).await.unwrap();
    assert_eq!((found.record, found.will), (None, None));
    let mut r = record("m1");
    r.will = Some(stored_will());
    let f1 = m1.store_session(&client, &r, found.fence).await.unwrap();
    // m1 claims again (a takeover on the same node): its core has the will, it takes none.
    let again = m1.claim_client(&client).await.unwrap();
    let found = m1.load_claimed_session(&client, &again, 0).await.unwrap();
    assert!(found.will.is_none());
    assert!(found.record.unwrap().will.is_some());

    // m2 claims it (m1 does not answer on the memory engine): it takes the will out.
    let c2 = m2.claim_client(&client).await.unwrap();
    let found = m2.load_claimed_session(&client, &c2, 5_000).await.unwrap();
    let taken = found.will.unwrap();
    assert_eq!(taken.will, stored_will());
    assert_eq!((taken.expiry_interval, taken.offline_for), (60, None));
    assert!(found.record.as_ref().unwrap().will.is_none());
    assert_eq!(found.record.unwrap().node.as_str(), "m2");
    // The record no longer holds it: the next claimer has nothing to decide, and m1 is fenced.
    let c3 = m3.claim_client(&client).await.unwrap();
    assert!(m3
        .load_claimed_session(&client, &c3, 0)
        .await
        .unwrap()
        .will
        .is_none());
    assert!(matches!(
        m1.store_session(&client, &r, f1).await,
        Err(ClusterError::Fenced(_))
    ));
}

/// A claim that reads the record late (its task slow, the engine refusing it meanwhile),
/// after a later claim took the old will and wrote its own connection's record with that
/// connection's will: the later claim's will is not taken.
#[tokio::test]
async fn a_stale_claim_takes_no_will_from_a_record_of_a_later_claim() {
    let engine = MemoryBackend::new();
    let m1 = layer(&engine, "m1", 1);
    let m2 = layer(&engine, "m2", 2);
    let m3 = layer(&engine, "m3", 3);
    let client = ClientKey::new("w1");
    let c1 = m1.claim_client(&client).await.unwrap();
    let mut r = record("m1");
    r.claim = c1.revision.get();
    r.will = Some(stored_will());
    m1.store_session(&client, &r, Fence::Absent).await.unwrap();

    let stale = m2.claim_client(&client).await.unwrap();
    let c3 = m3.claim_client(&client).await.unwrap();
    let found = m3.load_claimed_session(&client, &c3, 0).await.unwrap();
    assert!(found.will.is_some(), "the later claim takes the old will");
    let mut live = record("m3");
    live.claim = c3.revision.get();
    live.will = Some(StoredWill {
        topic: "status/live".into(),
        ..stored_will()
    });
    m3.store_session(&client, &live, found.fence).await.unwrap();

    let late = m2.load_claimed_session(&client, &stale, 0).await.unwrap();
    assert!(late.will.is_none());
    let (now, _) = m2.load_session(&client).await.unwrap();
    assert_eq!(now.unwrap().will.unwrap().topic, "status/live");
}

/// A claim's take-out of a will whose write lands but whose answer is lost (a timeout, a
/// 503 after the write) still gives the claimer the will: the record read again carries the
/// claimer's mark. A take-out that did not land is written again. Without this, the record
/// no longer held the will and no node decided it.
#[tokio::test]
async fn a_will_taken_out_by_a_write_whose_answer_is_lost_is_still_the_claimers() {
    for lands in [true, false] {
        let engine = MemoryBackend::new();
        let m1 = layer(&engine, "m1", 1);
        let m2 = layer(&engine, "m2", 2);
        let client = ClientKey::new("w1");
        let c1 = m1.claim_client(&client).await.unwrap();
        let mut r = record("m1");
        r.claim = c1.revision.get();
        r.will = Some(stored_will());
        m1.store_session(&client, &r, Fence::Absent).await.unwrap();

        let c2 = m2.claim_client(&client).await.unwrap();
        if lands {
            engine.lose_answers(Bucket::Sessions, 1, BackendError::Timeout);
        } else {
            engine.fail_writes(Bucket::Sessions, 1, BackendError::Timeout);
        }
        let found = m2.load_claimed_session(&client, &c2, 0).await.unwrap();
        assert_eq!(
            found.will.map(|w| w.will),
            Some(stored_will()),
            "write lands: {lands}"
        );
        assert_eq!(found.written_by.unwrap().as_str(), "m1");
        let (now, _) = m2.load_session(&client).await.unwrap();
        let now = now.unwrap();
        assert!(now.will.is_none());
        assert!(wills::taken_by_me(
            &now,
            &NodeId::new("m2").unwrap(),
            c2.revision
        ));
    }
}

/// A dead node's session whose take-over fails on the engine (JetStream electing leaders
/// after the loss that killed the node) is reported, and taken when tried again: a session
/// nobody takes loses its will.
#[tokio::test]
async fn a_dead_nodes_session_the_engine_failed_to_give_is_taken_when_tried_again() {
    let engine = MemoryBackend::new();
    let dead = layer(&engine, "dead", 1);
    let r1 = layer(&engine, "r1", 2);
    let client = ClientKey::new("probe");
    let c = dead.claim_client(&client).await.unwrap();
    let mut r = record("dead");
    r.claim = c.revision.get();
    r.will = Some(stored_will());
    let (_, fence) = dead.load_session(&client).await.unwrap();
    dead.store_session(&client, &r, fence).await.unwrap();
    let expired = Expired {
        node: NodeId::new("dead").unwrap(),
        incarnation: 1,
    };
    // The registry write that takes it fails once.
    engine.fail_writes(
        Bucket::Registry,
        1,
        BackendError::Engine("JetStream system temporarily unavailable".into()),
    );
    let Orphans { taken, failed, .. } = r1.orphans(&expired, None).await.unwrap();
    assert!(taken.is_empty());
    assert_eq!(failed, std::slice::from_ref(&client));
    let Orphans { taken, failed, .. } = r1.orphans(&expired, Some(failed)).await.unwrap();
    assert!(failed.is_empty());
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].client, client);
    assert!(taken[0].record.will.is_some());
}

#[tokio::test]
async fn a_dead_nodes_records_are_taken_over_once_and_not_when_claimed_elsewhere() {
    let engine = MemoryBackend::new();
    let dead = layer(&engine, "dead", 1);
    let r1 = layer(&engine, "r1", 2);
    let r2 = layer(&engine, "r2", 3);
    let mut ids = Vec::new();
    for id in ["left", "moved", "waiting"] {
        let client = ClientKey::new(id);
        let c = dead.claim_client(&client).await.unwrap();
        let mut r = record("dead");
        r.claim = c.revision.get();
        r.will = Some(stored_will());
        if id == "waiting" {
            r.disconnected_at_ms = Some(1_000);
        }
        let (_, fence) = dead.load_session(&client).await.unwrap();
        dead.store_session(&client, &r, fence).await.unwrap();
        ids.push(client);
    }
    // "waiting" went offline on the dead node (its will waits out its delay there).
    let (entry, rev) = dead.read_registry(&ids[2]).await.unwrap().unwrap();
    assert!(entry.connected);
    dead.mark_disconnected(&ids[2], rev).await.unwrap();
    // "moved" connected to r2 before the dead node was reaped: r2 decided its will.
    let c = r2.claim_client(&ids[1]).await.unwrap();
    let taken = r2.load_claimed_session(&ids[1], &c, 0).await.unwrap();
    assert!(taken.will.is_some());

    let expired = Expired {
        node: NodeId::new("dead").unwrap(),
        incarnation: 1,
    };
    let mut orphans = r1.orphans(&expired, None).await.unwrap().taken;
    orphans.sort_by(|a, b| a.client.cmp(&b.client));
    let names: Vec<_> = orphans.iter().map(|o| o.client.as_str()).collect();
    assert_eq!(names, ["left", "waiting"]);
    for o in &orphans {
        let (entry, rev) = r1.read_registry(&o.client).await.unwrap().unwrap();
        assert_eq!(
            (entry.node.as_str(), entry.connected, rev),
            ("r1", false, o.claim)
        );
        assert!(o.record.will.is_some());
    }
    // A second survivor finds nothing left to take (the registry names r1 now).
    assert!(r2.orphans(&expired, None).await.unwrap().taken.is_empty());
    // The record is written by r1 at the fence read; a claimer that wrote first wins.
    let o = &orphans[0];
    let kept = crate::wills::reaped(&o.record, NodeId::new("r1").unwrap(), o.claim, 9_000, true);
    let fence = r1.store_session(&o.client, &kept, o.fence).await.unwrap();
    assert!(fence.may_write());
    assert!(matches!(
        r1.store_session(&o.client, &kept, o.fence).await,
        Err(ClusterError::Fenced(_))
    ));
}

/// A record of `node` under `claim` holding a will, written at `fence`; its new fence.
async fn with_will(
    layer: &Cluster<MemoryBackend>,
    client: &ClientKey,
    claim: Revision,
    fence: Fence,
    offline_since: Option<u64>,
) -> (SessionRecord, Fence) {
    let mut r = record(layer.config().node.as_str());
    r.claim = claim.get();
    r.will = Some(stored_will());
    r.disconnected_at_ms = offline_since;
    let f = layer.store_session(client, &r, fence).await.unwrap();
    (r, f)
}

/// Whether the holder's write taking the will out won, and whether the claimer took it.
async fn race(
    holder: &Cluster<MemoryBackend>,
    claimer: &Cluster<MemoryBackend>,
    client: &ClientKey,
    (record, claim, fence): (&SessionRecord, Revision, Fence),
    order: usize,
) -> (bool, bool) {
    let mut without = record.clone();
    without.will = None;
    let hold = async {
        let r = holder
            .write_own_session(client, Some(&without), claim, fence)
            .await;
        crate::wills::verdict(&r) == crate::wills::WillVerdict::Publish
    };
    let claim = async {
        let c = claimer.claim_client(client).await.unwrap();
        let found = claimer.load_claimed_session(client, &c, 0).await.unwrap();
        found.will.is_some()
    };
    match order {
        0 => {
            let h = hold.await;
            (h, claim.await)
        }
        1 => {
            let c = claim.await;
            (hold.await, c)
        }
        _ => tokio::join!(hold, claim),
    }
}

#[tokio::test]
async fn a_will_due_on_its_node_as_its_client_connects_elsewhere_is_published_once() {
    // [MQTT-3.1.2-8] the will of a lost connection is published; [MQTT-3.1.4-3] a CONNECT
    // elsewhere takes the session over: whichever node's write takes the will out of the
    // record publishes it, the other does not.
    for order in 0..3 {
        let engine = MemoryBackend::new();
        let m1 = layer(&engine, "m1", 1);
        let m2 = layer(&engine, "m2", 2);
        let client = ClientKey::new("racer");
        let c1 = m1.claim_client(&client).await.unwrap();
        let (r, f) = with_will(&m1, &client, c1.revision, Fence::Absent, None).await;
        let (held, claimed) = race(&m1, &m2, &client, (&r, c1.revision, f), order).await;
        assert!(
            held ^ claimed,
            "order {order}: holder {held}, claimer {claimed}"
        );
    }
}

#[tokio::test]
async fn a_reapers_delayed_will_due_as_its_client_connects_elsewhere_is_published_once() {
    // [MQTT-3.1.3-9] the delayed will of a session a dead node left falls due on its
    // reaper while its client connects to a third node.
    for order in 0..3 {
        let engine = MemoryBackend::new();
        let dead = layer(&engine, "dead", 1);
        let r1 = layer(&engine, "r1", 2);
        let m3 = layer(&engine, "m3", 3);
        let client = ClientKey::new("late");
        let c = dead.claim_client(&client).await.unwrap();
        with_will(&dead, &client, c.revision, Fence::Absent, None).await;
        let expired = Expired {
            node: NodeId::new("dead").unwrap(),
            incarnation: 1,
        };
        let o = r1
            .orphans(&expired, None)
            .await
            .unwrap()
            .taken
            .pop()
            .unwrap();
        let kept = crate::wills::reaped(&o.record, NodeId::new("r1").unwrap(), o.claim, 1, false);
        let f = r1.store_session(&o.client, &kept, o.fence).await.unwrap();
        let (held, claimed) = race(&r1, &m3, &client, (&kept, o.claim, f), order).await;
        assert!(
            held ^ claimed,
            "order {order}: reaper {held}, claimer {claimed}"
        );
    }
}

#[tokio::test]
async fn an_own_write_whose_answer_was_lost_is_written_again_but_never_over_another_nodes() {
    let engine = MemoryBackend::new();
    let m1 = layer(&engine, "m1", 1);
    let m2 = layer(&engine, "m2", 2);
    let client = ClientKey::new("unanswered");
    let c1 = m1.claim_client(&client).await.unwrap();
    let (mut r, f1) = with_will(&m1, &client, c1.revision, Fence::Absent, None).await;
    // A write at f1 landed, but m1 never heard back: it still holds f1.
    m1.store_session(&client, &r, f1).await.unwrap();
    r.will = None;
    let again = m1
        .write_own_session(&client, Some(&r), c1.revision, f1)
        .await;
    assert_eq!(
        crate::wills::verdict(&again),
        crate::wills::WillVerdict::Publish
    );
    let (stored, _) = m1.load_session(&client).await.unwrap();
    assert!(stored.unwrap().will.is_none());
    // A write of this node under an older claim is another writer's: fenced.
    let c2 = m1.claim_client(&client).await.unwrap();
    let (_, f) = m1.load_session(&client).await.unwrap();
    let (_, _) = with_will(&m1, &client, c2.revision, f, None).await;
    assert!(matches!(
        m1.write_own_session(&client, Some(&r), c1.revision, f1)
            .await,
        Err(ClusterError::Fenced(_))
    ));
    // Another node's record: fenced, the will is that node's to decide.
    let c3 = m2.claim_client(&client).await.unwrap();
    assert!(m2
        .load_claimed_session(&client, &c3, 0)
        .await
        .unwrap()
        .will
        .is_some());
    let gone = m1.write_own_session(&client, None, c2.revision, f).await;
    assert_eq!(
        crate::wills::verdict(&gone),
        crate::wills::WillVerdict::Withhold
    );
}

#[tokio::test]
async fn a_will_taken_out_by_a_write_whose_answer_was_lost_is_published_by_its_taker_once() {
    // [MQTT-3.1.2-8] the will of a lost connection is published, once: m1's write taking it
    // out landed but m1 never heard back; m2 claimed the client before m1's retry and found
    // no will to decide; m1's retry is fenced, but the mark its write left tells m1 that the
    // will is its own to publish.
    let engine = MemoryBackend::new();
    let m1 = layer(&engine, "m1", 1);
    let m2 = layer(&engine, "m2", 2);
    let client = ClientKey::new("unheard");
    let c1 = m1.claim_client(&client).await.unwrap();
    let (mut r, f1) = with_will(&m1, &client, c1.revision, Fence::Absent, None).await;
    r.will = None;
    let own = crate::wills::writer_of(&r);
    crate::wills::mark_taken(&mut r, c1.revision, own);
    // The write that took the will out landed; its answer was lost (m1 keeps fence f1).
    m1.store_session(&client, &r, f1).await.unwrap();
    let c2 = m2.claim_client(&client).await.unwrap();
    let claimed = m2.load_claimed_session(&client, &c2, 0).await.unwrap();
    assert!(claimed.will.is_none(), "m2 finds no will to decide");
    // m2 then writes the session as its own (after its CONNACK), keeping the mark, as the
    // broker's session writer does.
    let mut mine = record("m2");
    mine.claim = c2.revision.get();
    mine.will = None;
    mine.will_takers = claimed.record.unwrap().will_takers;
    m2.store_session(&client, &mine, claimed.fence)
        .await
        .unwrap();
    let retry = m1
        .write_own_session(&client, Some(&r), c1.revision, f1)
        .await;
    assert_eq!(
        crate::wills::verdict(&retry),
        crate::wills::WillVerdict::PublishFenced
    );
    // m2's record was not written over.
    let (stored, _) = m1.load_session(&client).await.unwrap();
    assert_eq!(stored.unwrap().node.as_str(), "m2");
    // A node whose write did not take the will out (m2 took it) withholds as before.
    let engine = MemoryBackend::new();
    let m1 = layer(&engine, "m1", 1);
    let m2 = layer(&engine, "m2", 2);
    let c1 = m1.claim_client(&client).await.unwrap();
    let (mut r, f1) = with_will(&m1, &client, c1.revision, Fence::Absent, None).await;
    let c2 = m2.claim_client(&client).await.unwrap();
    assert!(m2
        .load_claimed_session(&client, &c2, 0)
        .await
        .unwrap()
        .will
        .is_some());
    r.will = None;
    let own = crate::wills::writer_of(&r);
    crate::wills::mark_taken(&mut r, c1.revision, own);
    let late = m1
        .write_own_session(&client, Some(&r), c1.revision, f1)
        .await;
    assert_eq!(
        crate::wills::verdict(&late),
        crate::wills::WillVerdict::Withhold
    );
}

#[tokio::test]
async fn an_assigned_client_is_registered_reaped_and_forgotten() {
    let engine = MemoryBackend::new();
    let dead = layer(&engine, "dead", 1);
    let r1 = layer(&engine, "r1", 2);
    let client = ClientKey::new("makelaar-dead-1f-1");
    let claim = dead.register_assigned(&client).await.unwrap();
    // Unique: never registered twice.
    assert!(matches!(
        dead.register_assigned(&client).await,
        Err(ClusterError::Fenced(_))
    ));
    with_will(&dead, &client, claim, Fence::Absent, None).await;
    let expired = Expired {
        node: NodeId::new("dead").unwrap(),
        incarnation: 1,
    };
    // Its node died: the reaper finds it, with its will.
    let o = r1
        .orphans(&expired, None)
        .await
        .unwrap()
        .taken
        .pop()
        .unwrap();
    assert_eq!(o.client, client);
    assert!(o.record.will.is_some());
    r1.delete_session(&o.client, o.fence).await.unwrap();
    // Its session ended: the registry forgets it, unless claimed since.
    assert!(!r1.forget_client(&client, claim).await.unwrap());
    assert!(r1.forget_client(&client, o.claim).await.unwrap());
    assert!(r1.read_registry(&client).await.unwrap().is_none());
}

#[tokio::test]
async fn a_replay_reads_each_message_once_across_the_seam() {
    use crate::record::{Cursor, Outbound, OutboundState};
    use crate::replay::{NodePosition, ReplayPlan};
    let backend = MemoryBackend::new();
    let b = layer(&backend, "m2", 1);
    let from = |node: &str, payload: &'static str| Envelope {
        origin_node: NodeId::new(node).unwrap(),
        ..message(payload)
    };
    // 1, 2: read by A's follower (2 still in flight there); 3: A's own, routed on A; 4:
    // published elsewhere while the session was away; 5: B's own, before the adoption;
    // 6, 7: past B's follower at the adoption (live), 7 on another topic.
    for (node, payload, topic) in [
        ("m3", "done", "q/1"),
        ("m3", "inflight", "q/1"),
        ("m1", "own", "q/1"),
        ("m3", "new", "q/1"),
        ("m2", "mine", "q/1"),
        ("m3", "live", "q/1"),
        ("m3", "other", "x/1"),
    ] {
        b.append(topic, &from(node, payload)).await.unwrap();
    }
    let (p, _) = b.partition_subject("q/1");
    let plan = ReplayPlan::new(
        NodeId::new("m1").unwrap(),
        NodeId::new("m2").unwrap(),
        (
            &[Cursor {
                partition: p.index(),
                next: 3,
                writer_through: 3,
            }],
            &[Outbound {
                packet_id: 4,
                partition: p.index(),
                seq: 2,
                state: OutboundState::AwaitPuback,
            }],
            &[],
        ),
        |_| NodePosition {
            next: 6,
            own_through: 5,
        },
        &[],
    );
    let r = b.replay(&plan, |t| t == "q/1", 10, 0).await.unwrap();
    let payload = |m: &LogMessage| String::from_utf8(m.envelope.payload.to_vec()).unwrap();
    assert_eq!(r.kept.len(), 1);
    assert_eq!((r.kept[0].0, payload(&r.kept[0].1)), (0, "inflight".into()));
    let new: Vec<String> = r.new.iter().map(payload).collect();
    assert_eq!(new, ["new", "mine"]);
    assert_eq!((r.dropped, r.missing), (0, 0));
    // The session's queue limit bites: counted, the oldest kept.
    let r = b.replay(&plan, |t| t == "q/1", 1, 0).await.unwrap();
    assert_eq!((r.new.len(), r.dropped), (1, 1));
    assert_eq!(payload(&r.new[0]), "new");
}

/// A node whose lease lapsed (paused past the TTL) and that a survivor reaped comes back as
/// a new incarnation: a client it claims then is not the old incarnation's (a late reaper of
/// that one leaves it), and when it dies for good a survivor reaps it again, under a reaper
/// key of its own.
#[tokio::test]
async fn a_node_back_from_a_lapse_is_reaped_again_when_it_dies() {
    let engine = MemoryBackend::new();
    let a = layer(&engine, "a", 1);
    let b = layer(&engine, "b", 2);
    a.refresh_lease().await.unwrap();
    b.refresh_lease().await.unwrap();
    let before = ClientKey::new("before");
    let c = a.claim_client(&before).await.unwrap();
    with_will(&a, &before, c.revision, Fence::Absent, None).await;
    // One that went offline on `a` under its first incarnation, back on `a` after.
    let mine = ClientKey::new("mine");
    let c = a.claim_client(&mine).await.unwrap();
    let (_, fence) = with_will(&a, &mine, c.revision, Fence::Absent, None).await;
    a.mark_disconnected(&mine, c.revision).await.unwrap();

    // Paused past the TTL: its lease expired, `b` reaps it.
    engine.delete(Bucket::Leases, "a", None).await.unwrap();
    let first = Expired {
        node: NodeId::new("a").unwrap(),
        incarnation: 1,
    };
    assert_eq!(b.try_reap(&first).await.unwrap(), ReapOutcome::Won);

    // Running again: it stepped down, and its next lease write makes it a new incarnation.
    a.stepped_down();
    assert_eq!(
        a.incarnation(),
        1,
        "named in the registry once in the lease"
    );
    a.refresh_lease().await.unwrap();
    let now = a.incarnation();
    assert_ne!(now, 1);
    let lease = engine.get(Bucket::Leases, "a").await.unwrap().unwrap();
    assert_eq!(NodeLease::decode(&lease.value).unwrap().incarnation, now);
    // Its earlier self counts as dead for claims, not as alive.
    assert!(!a.lease_alive(&NodeId::new("a").unwrap(), 1).await.unwrap());
    assert!(a
        .lease_alive(&NodeId::new("a").unwrap(), now)
        .await
        .unwrap());

    // `mine` reconnects to `a`: its broker held the session, and the will in the record
    // is its own to decide (not taken out by the claim).
    let c = a.claim_client(&mine).await.unwrap();
    let found = a.load_claimed_session(&mine, &c, 0).await.unwrap();
    assert!(found.will.is_none());
    assert_eq!(found.fence, fence);
    // A client connecting to `a` after it came back.
    let after = ClientKey::new("after");
    let c = a.claim_client(&after).await.unwrap();
    with_will(&a, &after, c.revision, Fence::Absent, None).await;
    let (entry, _) = a.read_registry(&after).await.unwrap().unwrap();
    assert_eq!(entry.incarnation, now);

    // The reaper of the lapsed incarnation takes only what that one still held.
    let orphans = b.orphans(&first, None).await.unwrap().taken;
    let names: Vec<_> = orphans.iter().map(|o| o.client.as_str()).collect();
    assert_eq!(names, ["before"]);

    // Killed for good: its lease expires, and a survivor reaps it again.
    engine.delete(Bucket::Leases, "a", None).await.unwrap();
    let second = Expired {
        node: NodeId::new("a").unwrap(),
        incarnation: now,
    };
    assert_ne!(second.reaper_key(), first.reaper_key());
    assert_eq!(b.try_reap(&second).await.unwrap(), ReapOutcome::Won);
    let mut orphans = b.orphans(&second, None).await.unwrap().taken;
    orphans.sort_by(|x, y| x.client.cmp(&y.client));
    let names: Vec<_> = orphans.iter().map(|o| o.client.as_str()).collect();
    assert_eq!(names, ["after", "mine"]);
    assert!(orphans.iter().all(|o| o.record.will.is_some()));
}

/// A session handed over whose claimer never took the record (its claim failed after the
/// hand-over) is taken back by the node that handed it over, will and all; not when the
/// record was written since, holds no will, or its client is connected here again.
#[tokio::test]
async fn a_session_handed_over_but_never_taken_is_taken_back_by_its_old_node() {
    let engine = MemoryBackend::new();
    let m0 = layer(&engine, "m0", 1);
    let m1 = layer(&engine, "m1", 2);
    let client = ClientKey::new("probe");
    let c0 = m0.claim_client(&client).await.unwrap();
    let (_, fence) = m0.load_session(&client).await.unwrap();
    let (_, Fence::At(written)) = with_will(&m0, &client, c0.revision, fence, None).await else {
        panic!("a stored record has a revision");
    };
    // m1's claim moved the registry entry (m0 does not answer on the memory engine), then
    // failed before it read the record.
    let c1 = m1.claim_client(&client).await.unwrap();
    let given_up = GivenUp {
        node: m0.config().node.clone(),
        claim: c0.revision.get(),
        at: Some(written),
    };
    let o = m0
        .take_abandoned(&client, &given_up)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(o.client, client);
    assert_eq!(o.record.will, Some(stored_will()));
    assert_eq!(o.fence, Fence::At(written));
    let (holder, revision) = m0.read_registry(&client).await.unwrap().unwrap();
    assert_eq!((holder.node.as_str(), holder.connected), ("m0", false));
    assert_eq!(revision, o.claim);
    assert_ne!(o.claim, c1.revision);
    // Taken once: the registry moved, so a second look finds it moved meanwhile.
    let (_, current) = m0.read_registry(&client).await.unwrap().unwrap();
    assert_eq!(current, o.claim);

    // The claimer took the record (and the will): nothing to take back.
    let c2 = m1.claim_client(&client).await.unwrap();
    let found = m1.load_claimed_session(&client, &c2, 0).await.unwrap();
    assert!(found.will.is_some());
    assert!(m0
        .take_abandoned(&client, &given_up)
        .await
        .unwrap()
        .is_none());

    // No will in the record: nothing to decide.
    let other = ClientKey::new("quiet");
    m0.claim_client(&other).await.unwrap();
    let Fence::At(w) = m0
        .store_session(&other, &record("m0"), Fence::Absent)
        .await
        .unwrap()
    else {
        panic!("a stored record has a revision");
    };
    m1.claim_client(&other).await.unwrap();
    let quiet = GivenUp {
        at: Some(w),
        ..given_up.clone()
    };
    assert!(m0.take_abandoned(&other, &quiet).await.unwrap().is_none());

    // The client came back to this node: its connection here decides.
    let back = ClientKey::new("back");
    let c = m0.claim_client(&back).await.unwrap();
    let (_, Fence::At(w)) = with_will(&m0, &back, c.revision, Fence::Absent, None).await else {
        panic!("a stored record has a revision");
    };
    m0.claim_client(&back).await.unwrap();
    let back_then = GivenUp {
        at: Some(w),
        ..given_up.clone()
    };
    assert!(m0
        .take_abandoned(&back, &back_then)
        .await
        .unwrap()
        .is_none());

    // m0's last write got no answer (its revision never learnt) but landed, with the
    // will: recognised by m0's claim it was written under.
    let lost = ClientKey::new("unanswered");
    let c = m0.claim_client(&lost).await.unwrap();
    let mut r = record("m0");
    r.claim = c.revision.get();
    r.will = Some(stored_will());
    engine.lose_answers(Bucket::Sessions, 1, BackendError::Timeout);
    assert!(m0.store_session(&lost, &r, Fence::Absent).await.is_err());
    m1.claim_client(&lost).await.unwrap();
    let unanswered = GivenUp {
        node: m0.config().node.clone(),
        claim: c.revision.get(),
        at: None,
    };
    let o = m0
        .take_abandoned(&lost, &unanswered)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(o.record.will, Some(stored_will()));
}

/// The lease task of a node that does not hold its lease reaps nobody, though its reads
/// make a live peer look dead (cut off: what it reads of the peer's lease is gone); the
/// peer is reaped once this node holds its lease again and the peer is dead by then.
#[tokio::test]
async fn a_node_that_does_not_hold_its_lease_reaps_nobody() {
    let ms = Duration::from_millis;
    let engine = MemoryBackend::new();
    let mut config = layer(&engine, "a", 1).config().clone();
    config.lease = LeaseConfig {
        refresh: ms(20),
        ttl: ms(200),
        margin: ms(80),
    }
    .validate()
    .unwrap();
    let a = Arc::new(Cluster::new(engine.clone(), config));
    let b = layer(&engine, "b", 2);
    b.refresh_lease().await.unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let task = tokio::spawn({
        let a = a.clone();
        async move { a.run_leases(tx).await }
    });
    assert_eq!(next_event(&mut rx).await, LeaseEvent::Serving);
    // It has read `b`'s lease.
    while a.stats().nodes_alive.load(Relaxed) < 2 {
        tokio::time::sleep(ms(5)).await;
    }

    // Cut off: its lease writes fail, and `b`'s lease reads as gone, though `b` lives.
    engine.delete(Bucket::Leases, "b", None).await.unwrap();
    engine.fail_writes(Bucket::Leases, usize::MAX, BackendError::Timeout);
    assert_eq!(next_event(&mut rx).await, LeaseEvent::StepDown);
    // Past `b`'s TTL as `a` counts it, twice over.
    tokio::time::sleep(ms(400)).await;
    assert!(rx.try_recv().is_err(), "no reaping while stepped down");
    assert!(engine.get(Bucket::Reapers, "b.2").await.unwrap().is_none());

    // Back: `b` is gone for good by now, and reaped.
    engine.fail_writes(Bucket::Leases, 0, BackendError::Timeout);
    assert_eq!(next_event(&mut rx).await, LeaseEvent::Serving);
    let b_dead = Expired {
        node: NodeId::new("b").unwrap(),
        incarnation: 2,
    };
    assert_eq!(next_event(&mut rx).await, LeaseEvent::Reap(b_dead));
    assert!(engine.get(Bucket::Reapers, "b.2").await.unwrap().is_some());
    task.abort();
}

/// An append tried again under the same id stores one message (its first try was stored
/// after all, its answer lost) and says where that one is; another id is another message.
#[tokio::test]
async fn an_append_tried_again_under_its_id_is_stored_once() {
    let engine = MemoryBackend::new();
    let m1 = layer(&engine, "m1", 1);
    let id = m1.next_message_id();
    let first = m1.append_once("w/x", &message("will"), &id).await.unwrap();
    let again = m1.append_once("w/x", &message("will"), &id).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(engine.stream(first.0).len(), 1);
    let other = m1.next_message_id();
    assert_ne!(other, id);
    let second = m1
        .append_once("w/x", &message("will"), &other)
        .await
        .unwrap();
    assert_eq!(second, (first.0, first.1 + 1));
    // A failed try stores nothing; the next one under the same id stores it.
    engine.fail_appends(1, BackendError::Timeout);
    let third = m1.next_message_id();
    assert!(m1.append_once("w/x", &message("w3"), &third).await.is_err());
    assert_eq!(engine.stream(first.0).len(), 2);
    let (_, seq) = m1.append_once("w/x", &message("w3"), &third).await.unwrap();
    assert_eq!(seq, 3);
}

/// A retained write that comes late (a will's, tried again) does not replace a retained
/// message received after it, stores itself otherwise, and finds itself stored when an
/// earlier try was.
#[tokio::test]
async fn a_late_retained_write_keeps_a_newer_retained_message() {
    let engine = MemoryBackend::new();
    let m1 = layer(&engine, "m1", 1);
    let at = |ms: u64, payload: &'static str| Envelope {
        received_at_ms: ms,
        retain: true,
        ..message(payload)
    };
    // Nothing there: stored.
    assert!(m1
        .store_retained_unless_newer("s/c", &at(100, "offline"))
        .await
        .unwrap());
    assert_eq!(
        m1.load_retained("s/c").await.unwrap().unwrap().payload,
        "offline"
    );
    // Stored already (an earlier try's answer lost): nothing more.
    assert!(m1
        .store_retained_unless_newer("s/c", &at(100, "offline"))
        .await
        .unwrap());
    // The client came back and published "online" after the will: kept.
    m1.store_retained("s/c", Some(&at(200, "online")))
        .await
        .unwrap();
    assert!(!m1
        .store_retained_unless_newer("s/c", &at(150, "offline"))
        .await
        .unwrap());
    assert_eq!(
        m1.load_retained("s/c").await.unwrap().unwrap().payload,
        "online"
    );
    // An older one is replaced; an empty will clears it.
    assert!(m1
        .store_retained_unless_newer("s/c", &at(300, "offline"))
        .await
        .unwrap());
    assert_eq!(
        m1.load_retained("s/c").await.unwrap().unwrap().payload,
        "offline"
    );
    assert!(m1
        .store_retained_unless_newer("s/c", &at(400, ""))
        .await
        .unwrap());
    assert!(m1.load_retained("s/c").await.unwrap().is_none());
}

/// The lease task's next event, within 5 s.
async fn next_event(rx: &mut mpsc::Receiver<LeaseEvent>) -> LeaseEvent {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap()
}

/// The node that held a client writes its record late (its waiting write tried again when
/// it serves again after a step-down), between another node's claim and that node's first
/// write: the new owner's write goes over it (the late writer's claim is older), rather
/// than taking itself for fenced and closing its client; the late writer is fenced.
#[tokio::test]
async fn a_late_write_of_the_previous_owner_does_not_fence_the_new_one() {
    let engine = MemoryBackend::new();
    let m0 = layer(&engine, "m0", 1);
    let m1 = layer(&engine, "m1", 2);
    let client = ClientKey::new("sub0");
    let c0 = m0.claim_client(&client).await.unwrap();
    let mut r0 = record("m0");
    r0.claim = c0.revision.get();
    let f0 = m0.store_session(&client, &r0, Fence::Absent).await.unwrap();
    // m1 claims the client and reads the record; before its first write, m0 writes late.
    let c1 = m1.claim_client(&client).await.unwrap();
    let found = m1.load_claimed_session(&client, &c1, 0).await.unwrap();
    r0.expiry_interval = 7;
    let late = m0.store_session(&client, &r0, f0).await.unwrap();
    let mut r1 = record("m1");
    r1.claim = c1.revision.get();
    let written = m1
        .write_own_session(&client, Some(&r1), c1.revision, found.fence)
        .await;
    assert!(matches!(written, Ok(Some(Fence::At(_)))), "{written:?}");
    let (stored, _) = m1.load_session(&client).await.unwrap();
    assert_eq!(stored.unwrap().node.as_str(), "m1");
    // From here m0 is fenced, whatever it writes: m1's claim is the newer.
    assert!(matches!(
        m0.write_own_session(&client, Some(&r0), c0.revision, late)
            .await,
        Err(ClusterError::Fenced(_))
    ));
    let (stored, _) = m1.load_session(&client).await.unwrap();
    assert_eq!(stored.unwrap().node.as_str(), "m1");
}

/// A reaper's take-over whose registry write landed but answered an error (a 503): its
/// retry finds the entry naming itself and takes the session all the same, and a client
/// that connects to the reaper in between takes the will the dead node left (its claim
/// replaced the reaper's own entry, but the record is the dead node's).
#[tokio::test]
async fn a_reapers_registry_write_that_landed_unanswered_leaves_no_will_to_nobody() {
    for connects_between in [false, true] {
        let engine = MemoryBackend::new();
        let dead = layer(&engine, "dead", 1);
        let r1 = layer(&engine, "r1", 2);
        let client = ClientKey::new("probe");
        let c = dead.claim_client(&client).await.unwrap();
        let mut r = record("dead");
        r.claim = c.revision.get();
        r.will = Some(stored_will());
        dead.store_session(&client, &r, Fence::Absent)
            .await
            .unwrap();
        let expired = Expired {
            node: NodeId::new("dead").unwrap(),
            incarnation: 1,
        };
        engine.lose_answers(
            Bucket::Registry,
            1,
            BackendError::Engine("JetStream system temporarily unavailable".into()),
        );
        let Orphans { taken, failed, .. } = r1.orphans(&expired, None).await.unwrap();
        assert!(taken.is_empty());
        assert_eq!(failed, std::slice::from_ref(&client));
        if connects_between {
            let claimed = r1.claim_client(&client).await.unwrap();
            let found = r1.load_claimed_session(&client, &claimed, 0).await.unwrap();
            assert_eq!(found.will.map(|w| w.will), Some(stored_will()));
            // Taken by the claim: the retry has nothing left.
            let Orphans { taken, failed, .. } = r1.orphans(&expired, Some(failed)).await.unwrap();
            assert!(taken.is_empty() && failed.is_empty());
        } else {
            let Orphans { taken, failed, .. } = r1.orphans(&expired, Some(failed)).await.unwrap();
            assert!(failed.is_empty());
            assert_eq!(taken.len(), 1);
            assert_eq!(taken[0].record.will, Some(stored_will()));
            let (_, revision) = r1.read_registry(&client).await.unwrap().unwrap();
            assert_eq!(taken[0].claim, revision);
        }
    }
}

/// A claim that began before this node stepped down and came back as a new incarnation
/// names the new one when it writes: a reaper of the old one does not take the client.
#[tokio::test]
async fn a_claim_across_a_step_down_is_written_under_the_new_incarnation() {
    let engine = MemoryBackend::new();
    let owner = Arc::new(layer(&engine, "m0", 1));
    let m1 = Arc::new(layer(&engine, "m1", 2));
    // m0 holds the client, connected, its lease alive; it does not answer hand-overs.
    let client = ClientKey::new("sub0");
    owner.claim_client(&client).await.unwrap();
    owner.refresh_lease().await.unwrap();
    engine.silent_requests(true);
    m1.refresh_lease().await.unwrap();
    let old = m1.incarnation();
    // m1's claim waits for m0's answer; meanwhile m1 steps down and comes back.
    let claiming = {
        let (m1, client) = (m1.clone(), client.clone());
        tokio::spawn(async move { m1.claim_client(&client).await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    m1.stepped_down();
    m1.refresh_lease().await.unwrap();
    let new = m1.incarnation();
    assert_ne!(old, new);
    claiming.await.unwrap().unwrap();
    let (holder, _) = m1.read_registry(&client).await.unwrap().unwrap();
    assert_eq!((holder.node.as_str(), holder.incarnation), ("m1", new));
    // The reaper of m1's old incarnation finds nothing of it to take.
    let mut r = record("m1");
    r.claim = 1;
    let (_, fence) = m1.load_session(&client).await.unwrap();
    m1.store_session(&client, &r, fence).await.unwrap();
    let reaper = layer(&engine, "m2", 3);
    let expired = Expired {
        node: NodeId::new("m1").unwrap(),
        incarnation: old,
    };
    let Orphans { taken, failed, .. } = reaper.orphans(&expired, None).await.unwrap();
    assert!(taken.is_empty() && failed.is_empty());
}

proptest::proptest! {
    /// Control messages come from the network (any NATS client may publish on their
    /// subjects): bytes of any shape are refused or read, never a panic.
    #[test]
    fn control_payloads_of_any_shape_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
        let _ = MovedNotice::decode(&data);
        let _ = ReleaseRequest::decode(&data, None);
    }
}

/// Rule 5 on the write path: a node whose process stood still past its step-down instant
/// (its lease task with it) handles what its sockets buffered before that task runs again;
/// such a message or retained value is refused, not stored after what its publisher sent
/// elsewhere since. A node that never ran a lease task (these tests) stores freely.
#[tokio::test]
async fn a_node_past_its_step_down_instant_stores_no_message() {
    let engine = MemoryBackend::new();
    // Steps down 800 ms after its last confirmed write: room for a loaded machine.
    let lease = LeaseConfig {
        refresh: Duration::from_millis(50),
        ttl: Duration::from_millis(1200),
        margin: Duration::from_millis(400),
    };
    let node = Arc::new(Cluster::new(
        engine.clone(),
        ClusterConfig {
            lease,
            ..layer(&engine, "m1", 1).config().clone()
        },
    ));
    node.append("a/b", &message("before any lease task"))
        .await
        .unwrap();
    let (tx, mut events) = mpsc::channel(8);
    let n = node.clone();
    let task = tokio::spawn(async move { n.run_leases(tx).await });
    assert_eq!(next_event(&mut events).await, LeaseEvent::Serving);
    let (p, stored) = node
        .append("a/b", &message("within the lease"))
        .await
        .unwrap();
    node.store_retained("a/b", Some(&message("retained")))
        .await
        .unwrap();
    // The process stands still: no refresh, no step-down; then it runs again past the
    // instant it would have stepped down.
    task.abort();
    tokio::time::sleep(Duration::from_millis(900)).await;
    let late = node.append("a/b", &message("buffered")).await;
    assert!(matches!(late, Err(ClusterError::LeaseLapsed)), "{late:?}");
    let late = node.store_retained("a/b", Some(&message("newer?"))).await;
    assert!(matches!(late, Err(ClusterError::LeaseLapsed)), "{late:?}");
    assert_eq!(
        engine.stream(p).len() as u64,
        stored,
        "nothing appended after"
    );
    assert_eq!(
        node.load_retained("a/b").await.unwrap().map(|m| m.payload),
        Some(Bytes::from_static(b"retained"))
    );
    // Once its lease is written again it stores again.
    let (tx, mut events) = mpsc::channel(8);
    let n = node.clone();
    let task = tokio::spawn(async move { n.run_leases(tx).await });
    assert_eq!(next_event(&mut events).await, LeaseEvent::Serving);
    node.append("a/b", &message("after")).await.unwrap();
    task.abort();
}
