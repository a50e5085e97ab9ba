#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;

fn n(name: &str) -> NodeId {
    NodeId::new(name).unwrap()
}

fn cfg() -> LeaseConfig {
    LeaseConfig::default().validate().unwrap()
}

#[test]
fn config_checks() {
    assert!(LeaseConfig::default().validate().is_ok());
    let bad = LeaseConfig {
        refresh: Duration::from_secs(5),
        ttl: Duration::from_secs(15),
        margin: Duration::from_secs(5),
    };
    assert_eq!(bad.validate(), Err(LeaseConfigError::TooShort));
    let zero = LeaseConfig {
        refresh: Duration::ZERO,
        ..LeaseConfig::default()
    };
    assert_eq!(zero.validate(), Err(LeaseConfigError::ZeroRefresh));
}

#[test]
fn own_lease_refreshes_on_time() {
    let t0 = Instant::now();
    let mut l = OwnLease::new(cfg(), t0);
    assert!(!l.is_serving(t0));
    assert_eq!(l.poll(t0), OwnState::Refresh);
    // One write at a time.
    assert!(matches!(l.poll(t0), OwnState::Idle(_)));
    l.handle_written(t0 + Duration::from_millis(3));
    assert!(l.is_serving(t0 + Duration::from_millis(3)));
    // Serving from the first write on, said once.
    assert_eq!(l.poll(t0 + Duration::from_millis(3)), OwnState::Resume);
    assert_eq!(
        l.poll(t0 + Duration::from_secs(1)),
        OwnState::Idle(t0 + Duration::from_secs(2))
    );
    assert_eq!(l.poll(t0 + Duration::from_secs(2)), OwnState::Refresh);
}

#[test]
fn own_lease_steps_down_before_others_see_it_expire() {
    let t0 = Instant::now();
    let mut l = OwnLease::new(cfg(), t0);
    assert_eq!(l.poll(t0), OwnState::Refresh);
    l.handle_written(t0);
    assert_eq!(l.poll(t0), OwnState::Resume);
    // Every later write fails: the engine is unreachable from here.
    let mut t = t0;
    loop {
        t += Duration::from_millis(500);
        match l.poll(t) {
            OwnState::Refresh => l.handle_failed(t),
            OwnState::Idle(_) => {}
            OwnState::StepDown => break,
            OwnState::Resume => panic!("no write succeeded"),
            OwnState::MoveServer => panic!("not before the step-down"),
        }
    }
    // ttl 15 s − margin 5 s: down at 10 s, 5 s before any peer can call the lease expired.
    assert_eq!(t - t0, Duration::from_secs(10));
    assert!(!l.is_serving(t));
    // Refreshes go on; the first that succeeds resumes service, once.
    t += Duration::from_secs(2);
    assert_eq!(l.poll(t), OwnState::Refresh);
    l.handle_written(t);
    assert_eq!(l.poll(t), OwnState::Resume);
    assert!(l.is_serving(t));
    assert!(matches!(l.poll(t), OwnState::Idle(_)));
}

/// A node whose lease writes keep failing after it served (its NATS server answers the
/// connection but gets nothing through, or is stalled) asks to move to another server a
/// `ttl` after the first failure, and again after each further `ttl` of failures; never
/// while its writes go through, nor before it ever served (its start-up gives up instead).
#[test]
fn a_node_whose_lease_writes_keep_failing_moves_to_another_server() {
    let t0 = Instant::now();
    let mut l = serving(t0);
    let (mut t, mut moves, mut first_failure) = (t0, Vec::new(), None);
    while t < t0 + Duration::from_secs(50) {
        t += Duration::from_millis(250);
        match l.poll(t) {
            OwnState::Refresh => {
                first_failure.get_or_insert(t);
                l.handle_failed(t);
            }
            OwnState::MoveServer => moves.push(t - first_failure.unwrap()),
            OwnState::Idle(wake) => assert!(wake > t),
            OwnState::StepDown | OwnState::Resume => {}
        }
    }
    let ttl = cfg().ttl;
    assert_eq!(moves, vec![ttl, ttl * 2, ttl * 3]);
    // A write that goes through ends it.
    t += Duration::from_secs(2);
    assert_eq!(l.poll(t), OwnState::Refresh);
    l.handle_written(t);
    assert_eq!(l.poll(t), OwnState::Resume);
    for _ in 0..200 {
        t += Duration::from_millis(250);
        match l.poll(t) {
            OwnState::Refresh => l.handle_written(t),
            OwnState::Idle(_) => {}
            other => panic!("{other:?} while its writes go through"),
        }
    }
    // Never before the node first served.
    let mut l = OwnLease::new(cfg(), t0);
    let mut t = t0;
    for _ in 0..200 {
        if l.poll(t) == OwnState::Refresh {
            l.handle_failed(t);
        }
        assert_ne!(l.poll(t), OwnState::MoveServer);
        t += Duration::from_millis(250);
    }
}

#[test]
fn never_written_never_serves() {
    let t0 = Instant::now();
    let mut l = OwnLease::new(cfg(), t0);
    let mut t = t0;
    for _ in 0..100 {
        match l.poll(t) {
            OwnState::Refresh => l.handle_failed(t),
            OwnState::Idle(_) => {}
            other => panic!("{other:?} without a lease"),
        }
        assert!(!l.is_serving(t));
        t += Duration::from_millis(500);
    }
}

#[test]
fn peers_expire_once_per_incarnation() {
    let t0 = Instant::now();
    let mut leases = Leases::new(cfg(), n("m1"));
    assert_eq!(leases.handle_seen(&n("m1"), 1, 1, t0), None);
    assert_eq!(leases.handle_seen(&n("m2"), 10, 2, t0), None);
    assert_eq!(leases.handle_seen(&n("m3"), 20, 3, t0), None);
    assert!(leases.is_alive(&n("m2"), 10, t0));
    assert!(!leases.is_alive(&n("m2"), 11, t0));
    assert!(leases.is_alive(&n("m1"), 1, t0));
    // m3 keeps refreshing, m2 stops.
    for s in (2..=14).step_by(2) {
        let t = t0 + Duration::from_secs(s);
        leases.handle_seen(&n("m3"), 20, 100 + s, t);
        // m2's entry is still in the bucket, unchanged: that is no refresh.
        leases.handle_seen(&n("m2"), 10, 2, t);
    }
    assert!(leases.poll_expired(t0 + Duration::from_secs(14)).is_empty());
    assert_eq!(leases.next_deadline(), Some(t0 + Duration::from_secs(15)));
    let expired = leases.poll_expired(t0 + Duration::from_secs(15));
    assert_eq!(
        expired,
        vec![Expired {
            node: n("m2"),
            incarnation: 10
        }]
    );
    assert_eq!(expired[0].reaper_key(), "m2.10");
    assert!(leases.poll_expired(t0 + Duration::from_secs(16)).is_empty());
    // The engine had not removed the entry yet: reported again at the next poll.
    leases.handle_not_reaped(&expired[0]);
    assert_eq!(leases.poll_expired(t0 + Duration::from_secs(17)), expired);
    // Unless it is written again in between.
    leases.handle_not_reaped(&expired[0]);
    leases.handle_seen(&n("m2"), 10, 99, t0 + Duration::from_secs(17));
    assert!(leases.poll_expired(t0 + Duration::from_secs(18)).is_empty());
    let expired = leases.poll_expired(t0 + Duration::from_secs(32));
    assert_eq!(expired.len(), 2);
    assert!(!leases.is_alive(&n("m2"), 10, t0 + Duration::from_secs(32)));
    assert!(leases.alive(t0 + Duration::from_secs(32)).is_empty());
}

#[test]
fn a_restarted_peer_reports_its_old_incarnation() {
    let t0 = Instant::now();
    let mut leases = Leases::new(cfg(), n("m1"));
    leases.handle_seen(&n("m2"), 10, 2, t0);
    // m2 restarts within the TTL: the old incarnation died all the same.
    let e = leases.handle_seen(&n("m2"), 11, 5, t0 + Duration::from_secs(3));
    assert_eq!(
        e,
        Some(Expired {
            node: n("m2"),
            incarnation: 10
        })
    );
    assert!(leases.is_alive(&n("m2"), 11, t0 + Duration::from_secs(3)));
}

/// A write that hangs (the NATS server answers nothing) must not hold the step-down back:
/// the shell bounds each round trip by `step_down_at`, which is the last confirmed write
/// plus TTL - margin, before any peer can call the lease expired (rule 5).
#[test]
fn a_hanging_write_is_bounded_by_the_step_down_instant() {
    let t0 = Instant::now();
    let mut l = OwnLease::new(cfg(), t0);
    assert_eq!(
        l.step_down_at(),
        None,
        "not serving yet: nothing to step down from"
    );
    assert_eq!(l.poll(t0), OwnState::Refresh);
    l.handle_written(t0);
    assert_eq!(l.poll(t0), OwnState::Resume);
    let limit = t0 + Duration::from_secs(10);
    assert_eq!(l.step_down_at(), Some(limit));
    assert!(limit < t0 + cfg().ttl, "before the peers' TTL");
    // The next refresh is sent at 2 s and never answered: the shell gives it up at the
    // step-down instant, and the next poll steps down there, not when the request times out.
    assert_eq!(l.poll(t0 + Duration::from_secs(2)), OwnState::Refresh);
    assert_eq!(l.step_down_at(), Some(limit));
    l.handle_failed(limit);
    assert_eq!(l.poll(limit), OwnState::StepDown);
    assert_eq!(
        l.step_down_at(),
        None,
        "stepped down: no deadline until serving again"
    );
}

/// A node paused past its TTL is reaped; back, it steps down and writes its lease as a new
/// incarnation, so when it dies later its reaper key is a new one and a survivor reaps it
/// again (under the old incarnation the key existed: nobody would have).
#[test]
fn a_node_back_from_a_lapse_is_a_new_incarnation_reaped_again_when_it_dies() {
    let t0 = Instant::now();
    let a = n("a");
    let mut own = OwnLease::new(cfg(), t0);
    let mut inc = Incarnations::new(1);
    let mut b = Leases::new(cfg(), n("b"));
    assert_eq!(own.poll(t0), OwnState::Refresh);
    assert_eq!(inc.lease(), 1);
    own.handle_written(t0);
    assert!(!inc.lease_written(1));
    assert_eq!(own.poll(t0), OwnState::Resume);
    assert_eq!(b.handle_seen(&a, inc.lease(), 1, t0), None);

    // Paused for 20 s: b calls it expired after the TTL and reaps `a.1`.
    let first = b.poll_expired(t0 + Duration::from_secs(15));
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].reaper_key(), "a.1");

    // Running again: it steps down before anything else, and comes back as a new one.
    let back = t0 + Duration::from_secs(20);
    assert_eq!(own.poll(back), OwnState::StepDown);
    inc.stepped_down(7);
    // Registry entries name the old one until the new one is in the lease.
    assert_eq!((inc.current(), inc.lease()), (1, 7));
    inc.stepped_down(8);
    assert_eq!(inc.lease(), 7, "one new incarnation per step-down");
    assert_eq!(own.poll(back), OwnState::Refresh);
    own.handle_written(back);
    assert!(inc.lease_written(7));
    assert_eq!(own.poll(back), OwnState::Resume);
    assert_eq!(inc.current(), 7);
    assert!(inc.is_mine(1) && inc.is_mine(7) && !inc.is_mine(8));
    // b sees the new incarnation (the old one it reported already).
    assert_eq!(b.handle_seen(&a, inc.lease(), 2, back), None);
    assert!(b.is_alive(&a, 7, back));

    // Killed a second later: reaped again, under a key of its own.
    let second = b.poll_expired(back + Duration::from_secs(16));
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].reaper_key(), "a.7");
}

#[test]
fn a_peer_back_as_a_new_incarnation_before_being_called_dead_has_the_old_one_reaped() {
    let t0 = Instant::now();
    let a = n("a");
    let mut b = Leases::new(cfg(), n("b"));
    assert_eq!(b.handle_seen(&a, 1, 1, t0), None);
    // Stepped down for 12 s (not yet expired for b) and back as incarnation 2: the old one
    // is reported at once, to be reaped (what it held is taken over).
    let back = t0 + Duration::from_secs(12);
    assert!(b.poll_expired(back).is_empty());
    let old = b.handle_seen(&a, 2, 2, back).unwrap();
    assert_eq!(old.reaper_key(), "a.1");
    assert!(b.poll_expired(back + Duration::from_secs(1)).is_empty());
}

#[test]
fn a_fresh_incarnation_equal_to_an_earlier_one_is_moved_past_them() {
    let mut inc = Incarnations::new(5);
    inc.stepped_down(5);
    assert_eq!(inc.lease(), 6);
    assert!(inc.lease_written(6));
    inc.stepped_down(5);
    assert_eq!(inc.lease(), 7);
    // A stale write's confirmation changes nothing.
    assert!(!inc.lease_written(6));
    assert_eq!(inc.current(), 6);
}

/// A lease held from `at` on (written once, the resume said).
fn serving(at: Instant) -> OwnLease {
    let mut own = OwnLease::new(cfg(), at);
    assert_eq!(own.poll(at), OwnState::Refresh);
    own.handle_written(at);
    assert_eq!(own.poll(at), OwnState::Resume);
    own
}

/// A node that does not hold its lease reaps nobody: cut off, it sees its live peers'
/// leases stale or absent (the link-cut runs of the fault harness: a stepped-down node
/// tried to reap live ones). The peers it called dead meanwhile are judged again once it
/// holds its lease: a live one (written again) is not reaped, a dead one is.
#[test]
fn a_node_without_its_lease_reaps_nobody_until_it_holds_it_again() {
    let t0 = Instant::now();
    let (alive, dead) = (n("alive"), n("dead"));
    let mut own = serving(t0);
    let mut peers = Leases::new(cfg(), n("me"));
    peers.handle_seen(&alive, 1, 1, t0);
    peers.handle_seen(&dead, 2, 1, t0);
    assert!(own.may_reap(t0));

    // Cut off from t0 on: no lease write is confirmed, and every read sees the entries as
    // they were (no new revision). It steps down at 10 s, the peers look dead at 15 s.
    let down = t0 + Duration::from_secs(10);
    assert_eq!(own.poll(t0 + Duration::from_secs(2)), OwnState::Refresh);
    own.handle_failed(down);
    assert_eq!(own.poll(down), OwnState::StepDown);
    assert!(!own.may_reap(down));
    for s in 15..=30 {
        let t = t0 + Duration::from_secs(s);
        peers.handle_seen(&alive, 1, 1, t);
        peers.handle_seen(&dead, 2, 1, t);
        assert!(peers.reapable(&own, Vec::new(), t).is_empty(), "at {s} s");
    }

    // Back at 31 s (having asked to move to another server, a ttl after its first failed
    // write): its lease is written, and it reads `alive`'s latest write.
    let back = t0 + Duration::from_secs(31);
    assert_eq!(own.poll(back), OwnState::MoveServer);
    assert_eq!(own.poll(back), OwnState::Refresh);
    own.handle_written(back);
    assert!(own.may_reap(back));
    peers.handle_seen(&alive, 1, 9, back);
    let reap = peers.reapable(&own, Vec::new(), back);
    assert_eq!(
        reap,
        vec![Expired {
            node: dead,
            incarnation: 2
        }]
    );
    assert!(peers.reapable(&own, Vec::new(), back).is_empty(), "once");
}

/// A replaced incarnation (dead for sure: its node came back as a new one) seen while this
/// node may not reap, or whose reaping failed, is kept until it is reaped: the peers'
/// tracker knows only the new incarnation, so nothing else would report it again.
#[test]
fn a_replaced_incarnation_not_reaped_is_given_again() {
    let t0 = Instant::now();
    let a = n("a");
    let mut peers = Leases::new(cfg(), n("me"));
    let never = OwnLease::new(cfg(), t0);
    peers.handle_seen(&a, 1, 1, t0);
    let old = peers.handle_seen(&a, 2, 2, t0 + Duration::from_secs(1));
    let old: Vec<Expired> = old.into_iter().collect();
    assert_eq!(old.len(), 1);
    // Not serving yet: kept.
    let t = t0 + Duration::from_secs(2);
    assert!(peers.reapable(&never, old.clone(), t).is_empty());
    let own = serving(t);
    assert_eq!(peers.reapable(&own, Vec::new(), t), old);
    // Its reaping failed (an engine error): given again, once per call.
    peers.handle_not_reaped(&old[0]);
    peers.handle_not_reaped(&old[0]);
    assert_eq!(peers.reapable(&own, Vec::new(), t), old);
    assert!(peers.reapable(&own, Vec::new(), t).is_empty());
    assert!(peers.is_alive(&a, 2, t), "the new incarnation is untouched");
}
