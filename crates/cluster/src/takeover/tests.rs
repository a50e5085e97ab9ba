#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use crate::kv::MemoryKv;
use proptest::prelude::*;

const KEY: &str = "client-1";

fn n(name: &str) -> NodeId {
    NodeId::new(name).unwrap()
}

fn entry(node: &str, incarnation: u64, connected: bool) -> RegistryEntry {
    RegistryEntry {
        node: n(node),
        incarnation,
        connected,
        came_from: None,
    }
}

fn came_from(mut e: RegistryEntry, node: &str) -> RegistryEntry {
    e.came_from = Some(n(node));
    e
}

fn read(kv: &MemoryKv) -> Option<(RegistryEntry, Revision)> {
    kv.get(KEY)
        .map(|(v, r)| (RegistryEntry::decode(&v).unwrap(), r))
}

/// What the owner node does when asked to release: closes the connection (0x8E), writes
/// `connected: false` on the revision it holds.
fn release(kv: &mut MemoryKv, revision: Revision) {
    if let Some((mut e, r)) = read(kv) {
        if r == revision {
            e.connected = false;
            kv.update(KEY, e.encode(), r).unwrap();
        }
    }
}

/// Runs one step of `claim` against `kv`. `owner_answers`: whether an asked owner releases.
/// Returns the step taken.
fn step(
    claim: &mut Claim,
    kv: &mut MemoryKv,
    now: Instant,
    alive: &dyn Fn(&NodeId, u64) -> bool,
    owner_answers: bool,
) -> ClaimStep {
    let s = claim.poll(now);
    match &s {
        ClaimStep::Read => claim.handle_read(read(kv), alive),
        ClaimStep::Create(e) => claim.handle_written(kv.create(KEY, e.encode()).ok()),
        ClaimStep::Update(e, r) => claim.handle_written(kv.update(KEY, e.encode(), *r).ok()),
        ClaimStep::AskRelease { revision, .. } => {
            if owner_answers {
                release(kv, *revision);
                claim.handle_released();
            }
        }
        ClaimStep::Wait(_) | ClaimStep::Done(_) => {}
    }
    s
}

fn run(
    claim: &mut Claim,
    kv: &mut MemoryKv,
    now: Instant,
    alive: &dyn Fn(&NodeId, u64) -> bool,
    owner_answers: bool,
) -> (Vec<ClaimStep>, Result<Claimed, ClaimError>) {
    let mut steps = Vec::new();
    let mut now = now;
    for _ in 0..100 {
        let s = step(claim, kv, now, alive, owner_answers);
        match s {
            ClaimStep::Done(r) => return (steps, r),
            // Time passes while the claim waits (a back-off); not a step of its own.
            ClaimStep::Wait(until) => now = now.max(until),
            s => steps.push(s),
        }
    }
    panic!("claim did not finish: {steps:?}");
}

fn all_alive(_: &NodeId, _: u64) -> bool {
    true
}

#[test]
fn free_id_is_created() {
    let mut kv = MemoryKv::new();
    let mut c = Claim::new(n("m2"), 5, ClaimConfig::default());
    let (steps, r) = run(&mut c, &mut kv, Instant::now(), &all_alive, true);
    assert_eq!(
        steps,
        [ClaimStep::Read, ClaimStep::Create(entry("m2", 5, true))]
    );
    let claimed = r.unwrap();
    assert_eq!(claimed.previous, None);
    assert_eq!(read(&kv), Some((entry("m2", 5, true), claimed.revision)));
}

#[test]
fn disconnected_or_own_entry_is_updated_directly() {
    let from_m1 = came_from(entry("m2", 5, true), "m1");
    for (old, new) in [
        (entry("m1", 1, false), from_m1),
        (entry("m2", 5, true), entry("m2", 5, true)),
    ] {
        let mut kv = MemoryKv::new();
        let r0 = kv.put(KEY, old.encode());
        let mut c = Claim::new(n("m2"), 5, ClaimConfig::default());
        let (steps, r) = run(&mut c, &mut kv, Instant::now(), &all_alive, true);
        assert_eq!(steps, [ClaimStep::Read, ClaimStep::Update(new, r0)]);
        assert_eq!(r.unwrap().previous, Some(old));
    }
}

/// A claim that wrote the entry and failed afterwards leaves it naming its node: the
/// client's next claim there still learns the node it came from, so its CONNECT waits for
/// the barriers behind what it published there [MQTT-4.6.0-6]. A connection of that node
/// that ended normally forgets it.
#[test]
fn the_entry_remembers_the_node_the_client_came_from_until_a_connection_here_ends() {
    // A claim by `node` (its owner, if connected, answers): the other node it finds the
    // client was last on.
    fn claim(kv: &mut MemoryKv, node: &str, incarnation: u64) -> Claimed {
        let mut c = Claim::new(n(node), incarnation, ClaimConfig::default());
        let (_, r) = run(&mut c, kv, Instant::now(), &|_: &NodeId, _| false, true);
        r.unwrap()
    }
    let elsewhere = |c: &Claimed, me: &str| {
        let previous = c.previous.clone().unwrap();
        previous.last_elsewhere(&n(me)).cloned()
    };
    let mut kv = MemoryKv::new();
    kv.put(KEY, entry("m1", 1, false).encode());
    let first = claim(&mut kv, "m2", 5);
    assert_eq!(elsewhere(&first, "m2"), Some(n("m1")));
    assert_eq!(read(&kv).unwrap().0, came_from(entry("m2", 5, true), "m1"));

    // That claim failed after its write: the client connects to m2 again.
    let again = claim(&mut kv, "m2", 5);
    assert_eq!(elsewhere(&again, "m2"), Some(n("m1")));
    assert_eq!(read(&kv).unwrap().0, came_from(entry("m2", 5, true), "m1"));

    // Its connection there ended (written as `Cluster::mark_disconnected` does).
    kv.update(KEY, entry("m2", 5, false).encode(), again.revision)
        .unwrap();
    let third = claim(&mut kv, "m2", 5);
    assert_eq!(elsewhere(&third, "m2"), None);
    assert_eq!(read(&kv).unwrap().0, entry("m2", 5, true));

    // Back on m1: the entry names m2.
    let back = claim(&mut kv, "m1", 1);
    assert_eq!(elsewhere(&back, "m1"), Some(n("m2")));
    assert_eq!(read(&kv).unwrap().0, came_from(entry("m1", 1, true), "m2"));
}

#[test]
fn live_owner_is_asked_to_hand_over() {
    let mut kv = MemoryKv::new();
    let r0 = kv.put(KEY, entry("m1", 1, true).encode());
    let mut c = Claim::new(n("m2"), 5, ClaimConfig::default());
    let (steps, r) = run(&mut c, &mut kv, Instant::now(), &all_alive, true);
    let r1 = Revision::new(r0.get() + 1).unwrap();
    assert_eq!(
        steps,
        [
            ClaimStep::Read,
            ClaimStep::AskRelease {
                owner: n("m1"),
                revision: r0
            },
            ClaimStep::Read,
            ClaimStep::Update(came_from(entry("m2", 5, true), "m1"), r1),
        ]
    );
    let claimed = r.unwrap();
    // The owner's release came first: the previous entry says it is no longer connected.
    assert_eq!(claimed.previous, Some(entry("m1", 1, false)));
    assert_eq!(read(&kv).unwrap().0, came_from(entry("m2", 5, true), "m1"));
}

#[test]
fn silent_owner_is_fenced_after_the_deadline() {
    let mut kv = MemoryKv::new();
    let r0 = kv.put(KEY, entry("m1", 1, true).encode());
    let config = ClaimConfig::default();
    let mut c = Claim::new(n("m2"), 5, config);
    let t0 = Instant::now();
    assert_eq!(
        step(&mut c, &mut kv, t0, &all_alive, false),
        ClaimStep::Read
    );
    assert!(matches!(
        step(&mut c, &mut kv, t0, &all_alive, false),
        ClaimStep::AskRelease { .. }
    ));
    let deadline = t0 + config.handover_timeout;
    let almost = deadline - Duration::from_millis(1);
    assert_eq!(
        step(&mut c, &mut kv, almost, &all_alive, false),
        ClaimStep::Wait(deadline)
    );
    assert_eq!(
        step(&mut c, &mut kv, deadline, &all_alive, false),
        ClaimStep::Read
    );
    // The same revision as asked about: not asked again, claimed.
    assert_eq!(
        step(&mut c, &mut kv, deadline, &all_alive, false),
        ClaimStep::Update(came_from(entry("m2", 5, true), "m1"), r0)
    );
    // The owner that never answered still holds its connection: it is to be told.
    let ClaimStep::Done(Ok(claimed)) = c.poll(deadline) else {
        panic!("claimed");
    };
    assert_eq!(claimed.unanswered, Some((n("m1"), r0)));
}

/// m2 claims the id in `kv`; its hand-over request finds no responder, after
/// `meanwhile` (what the owner did in the meantime).
fn claim_without_responder(
    kv: &mut MemoryKv,
    t0: Instant,
    meanwhile: impl FnOnce(&mut MemoryKv),
) -> Claimed {
    let mut c = Claim::new(n("m2"), 5, ClaimConfig::default());
    assert_eq!(c.poll(t0), ClaimStep::Read);
    c.handle_read(read(kv), all_alive);
    assert!(matches!(c.poll(t0), ClaimStep::AskRelease { .. }));
    meanwhile(kv);
    c.handle_no_responder();
    assert_eq!(c.poll(t0), ClaimStep::Read);
    c.handle_read(read(kv), all_alive);
    let ClaimStep::Update(e, rev) = c.poll(t0) else {
        panic!("an update");
    };
    c.handle_written(kv.update(KEY, e.encode(), rev).ok());
    let ClaimStep::Done(Ok(claimed)) = c.poll(t0) else {
        panic!("claimed");
    };
    claimed
}

/// An owner that answers is told nothing more; one whose subject has no responder while
/// its lease lives (a route down) is asked again, unless the entry shows it released.
#[test]
fn an_owner_that_did_not_answer_is_named_for_asking_again() {
    let t0 = Instant::now();
    let config = ClaimConfig::default();
    // Answered.
    let mut kv = MemoryKv::new();
    kv.put(KEY, entry("m1", 1, true).encode());
    let mut c = Claim::new(n("m2"), 5, config);
    let (_, r) = run(&mut c, &mut kv, t0, &all_alive, true);
    assert_eq!(r.unwrap().unanswered, None);
    // No responder, the entry unchanged: asked again.
    let mut kv = MemoryKv::new();
    let r0 = kv.put(KEY, entry("m1", 1, true).encode());
    let claimed = claim_without_responder(&mut kv, t0, |_| {});
    assert_eq!(claimed.unanswered, Some((n("m1"), r0)));
    // No responder, but the owner had released meanwhile (the entry says disconnected).
    let mut kv = MemoryKv::new();
    let r0 = kv.put(KEY, entry("m1", 1, true).encode());
    let claimed = claim_without_responder(&mut kv, t0, |kv| release(kv, r0));
    assert_eq!(claimed.unanswered, None);
}

#[test]
fn expired_owner_is_claimed_directly() {
    let mut kv = MemoryKv::new();
    let r0 = kv.put(KEY, entry("m1", 1, true).encode());
    let mut c = Claim::new(n("m2"), 5, ClaimConfig::default());
    let only_m2 = |node: &NodeId, _: u64| node.as_str() == "m2";
    let (steps, r) = run(&mut c, &mut kv, Instant::now(), &only_m2, true);
    let from_m1 = came_from(entry("m2", 5, true), "m1");
    assert_eq!(steps, [ClaimStep::Read, ClaimStep::Update(from_m1, r0)]);
    assert!(r.is_ok());
    // An old incarnation of a live node name is dead too.
    let mut kv = MemoryKv::new();
    kv.put(KEY, entry("m1", 1, true).encode());
    let mut c = Claim::new(n("m2"), 5, ClaimConfig::default());
    let m1_restarted = |node: &NodeId, inc: u64| node.as_str() != "m1" || inc == 2;
    let (steps, _) = run(&mut c, &mut kv, Instant::now(), &m1_restarted, true);
    assert_eq!(steps.len(), 2);
}

#[test]
fn conflict_retries_with_a_fresh_read_then_gives_up() {
    let mut kv = MemoryKv::new();
    let mut c = Claim::new(n("m2"), 5, ClaimConfig::default());
    let t = Instant::now();
    assert_eq!(step(&mut c, &mut kv, t, &all_alive, true), ClaimStep::Read);
    // Someone creates the entry between our read and our create.
    kv.put(KEY, entry("m3", 9, false).encode());
    assert!(matches!(
        step(&mut c, &mut kv, t, &all_alive, true),
        ClaimStep::Create(_)
    ));
    // A pause before the fresh read.
    let backoff = ClaimConfig::default().retry_backoff;
    assert_eq!(
        step(&mut c, &mut kv, t, &all_alive, true),
        ClaimStep::Wait(t + backoff)
    );
    assert_eq!(
        step(&mut c, &mut kv, t, &all_alive, true),
        ClaimStep::Wait(t + backoff)
    );
    let t = t + backoff;
    assert_eq!(step(&mut c, &mut kv, t, &all_alive, true), ClaimStep::Read);
    assert!(matches!(
        step(&mut c, &mut kv, t, &all_alive, true),
        ClaimStep::Update(..)
    ));
    assert!(matches!(c.poll(t), ClaimStep::Done(Ok(_))));

    // A key that changes before every write: the claim gives up after max_attempts.
    let config = ClaimConfig {
        max_attempts: 3,
        ..ClaimConfig::default()
    };
    let mut c = Claim::new(n("m2"), 5, config);
    let mut t = t;
    let mut pauses = Vec::new();
    for _ in 0..3 {
        let mut s = c.poll(t);
        if let ClaimStep::Wait(until) = s {
            pauses.push(until - t);
            t = until;
            s = c.poll(t);
        }
        assert_eq!(s, ClaimStep::Read);
        c.handle_read(read(&kv), all_alive);
        let s = c.poll(t);
        assert!(matches!(s, ClaimStep::Update(..)));
        kv.put(KEY, entry("m3", 9, false).encode());
        c.handle_written(None);
    }
    assert_eq!(c.poll(t), ClaimStep::Done(Err(ClaimError::Contended(3))));
    // The pause doubles.
    assert_eq!(pauses, [config.retry_backoff, config.retry_backoff * 2]);
}

#[test]
fn two_concurrent_claims_the_later_one_takes_over() {
    let mut kv = MemoryKv::new();
    let t = Instant::now();
    let mut b = Claim::new(n("m2"), 2, ClaimConfig::default());
    let mut c = Claim::new(n("m3"), 3, ClaimConfig::default());
    // Both read the free id; both try to create it; b wins.
    assert_eq!(step(&mut b, &mut kv, t, &all_alive, true), ClaimStep::Read);
    assert_eq!(step(&mut c, &mut kv, t, &all_alive, true), ClaimStep::Read);
    assert!(matches!(
        step(&mut b, &mut kv, t, &all_alive, true),
        ClaimStep::Create(_)
    ));
    assert!(matches!(
        step(&mut c, &mut kv, t, &all_alive, true),
        ClaimStep::Create(_)
    ));
    let ClaimStep::Done(Ok(won)) = b.poll(t) else {
        panic!("b should have won")
    };
    // c reads b's entry, asks b to hand over, then claims.
    let (steps, r) = run(&mut c, &mut kv, t, &all_alive, true);
    assert_eq!(steps.first(), Some(&ClaimStep::Read));
    assert!(steps.contains(&ClaimStep::AskRelease {
        owner: n("m2"),
        revision: won.revision
    }));
    assert!(r.unwrap().revision > won.revision);
    assert_eq!(read(&kv).unwrap().0, came_from(entry("m3", 3, true), "m2"));
}

proptest! {
    /// Any interleaving of two claims against a live owner: both finish without running out
    /// of attempts, and the claim written last owns the id.
    #[test]
    fn interleaved_claims_settle(schedule in prop::collection::vec(any::<bool>(), 1..60)) {
        let mut kv = MemoryKv::new();
        kv.put(KEY, entry("m1", 1, true).encode());
        let mut t = Instant::now();
        let mut claims = [
            Claim::new(n("m2"), 2, ClaimConfig::default()),
            Claim::new(n("m3"), 3, ClaimConfig::default()),
        ];
        let mut done: Vec<(usize, Claimed)> = Vec::new();
        let mut pick = schedule.iter().cycle();
        for _ in 0..400 {
            if done.len() == 2 {
                break;
            }
            let mut i = usize::from(*pick.next().unwrap());
            if done.iter().any(|(j, _)| *j == i) {
                i = 1 - i;
            }
            let s = step(&mut claims[i], &mut kv, t, &all_alive, true);
            if let ClaimStep::Wait(until) = s {
                t = t.max(until);
            }
            if let ClaimStep::Done(r) = s {
                let claimed = r.map_err(|e| TestCaseError::fail(e.to_string()))?;
                done.push((i, claimed));
            }
        }
        prop_assert_eq!(done.len(), 2);
        done.sort_by_key(|(_, c)| c.revision);
        let (first, last) = (&done[0], &done[1]);
        prop_assert!(last.1.revision > first.1.revision);
        // The later write holds the id, and it replaced (or followed) the earlier claim's.
        let (owner, rev) = read(&kv).unwrap();
        prop_assert_eq!(rev, last.1.revision);
        prop_assert_eq!(owner.node.as_str(), if last.0 == 0 { "m2" } else { "m3" });
    }
}

#[test]
fn a_stale_writer_is_fenced() {
    let mut sessions = MemoryKv::new();
    // m1 owns the session and has written it.
    let mut a = Fence::from_read(None);
    assert_eq!(a, Fence::Absent);
    let r = sessions.create(KEY, "v1".into()).ok();
    a = a.after_write(r);
    // m2 claims the id, reads the record and writes it once at once (the fencing write).
    let (_, seen) = sessions.get(KEY).unwrap();
    let mut b = Fence::from_read(Some(seen));
    b = b.after_write(sessions.update(KEY, "v2".into(), seen).ok());
    assert!(matches!(b, Fence::At(_)));
    // m1, unaware, writes with the revision it holds: refused, and it knows it lost.
    let Fence::At(stale) = a else { panic!() };
    a = a.after_write(sessions.update(KEY, "stale".into(), stale).ok());
    assert_eq!(a, Fence::Lost);
    assert!(!a.may_write());
    assert_eq!(sessions.get(KEY).unwrap().0, "v2");
    // Lost stays lost.
    assert_eq!(a.after_write(Some(Revision::MIN)), Fence::Lost);
}

proptest! {
    /// Three claims at once, owners that answer or stay silent, owners alive or not, any
    /// interleaving: every claim ends, and the registry holds exactly the last claim written.
    #[test]
    fn three_claims_any_owner_behaviour(
        schedule in prop::collection::vec(0usize..3, 1..80),
        answers in any::<bool>(),
        alive in any::<bool>(),
    ) {
        let mut kv = MemoryKv::new();
        kv.put(KEY, entry("m0", 1, true).encode());
        let mut t = Instant::now();
        let mut claims: Vec<Claim> = (1..=3)
            .map(|i| Claim::new(n(&format!("m{i}")), i, ClaimConfig::default()))
            .collect();
        let liveness = move |node: &NodeId, _: u64| alive || node.as_str() != "m0";
        let mut results: Vec<Option<Result<Claimed, ClaimError>>> = vec![None, None, None];
        let mut pick = schedule.iter().cycle();
        for _ in 0..5000 {
            if results.iter().all(Option::is_some) {
                break;
            }
            let mut i = *pick.next().unwrap();
            while results[i].is_some() {
                i = (i + 1) % 3;
            }
            match step(&mut claims[i], &mut kv, t, &liveness, answers) {
                ClaimStep::Done(r) => results[i] = Some(r),
                // Time jumps to what a claim waits for (another claim's deadline may pass
                // meanwhile: one more legal schedule).
                ClaimStep::Wait(until) => t = t.max(until),
                _ => {}
            }
        }
        prop_assert!(results.iter().all(Option::is_some), "claims did not end: {:?}", results);
        let won: Vec<(usize, Revision)> = results
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match r {
                Some(Ok(c)) => Some((i, c.revision)),
                _ => None,
            })
            .collect();
        prop_assert!(!won.is_empty());
        let (last, rev) = *won.iter().max_by_key(|(_, r)| *r).unwrap();
        let (owner, stored) = read(&kv).unwrap();
        prop_assert_eq!(stored, rev);
        prop_assert_eq!(owner.node.as_str(), format!("m{}", last + 1));
    }
}

#[test]
fn a_claim_writes_at_the_newer_of_its_read_and_the_nodes_own_last_write() {
    let r = |n| Revision::new(n).unwrap();
    // The read at the claim predates this node's own write for the previous connection.
    assert_eq!(Fence::At(r(4)).newest(Fence::At(r(7))), Fence::At(r(7)));
    assert_eq!(Fence::Absent.newest(Fence::At(r(7))), Fence::At(r(7)));
    // Another node wrote since this node's last write: the read is the newer.
    assert_eq!(Fence::At(r(9)).newest(Fence::At(r(7))), Fence::At(r(9)));
    // The previous connection was fenced, or this node never wrote: the read.
    assert_eq!(Fence::At(r(4)).newest(Fence::Lost), Fence::At(r(4)));
    assert_eq!(Fence::Absent.newest(Fence::Absent), Fence::Absent);
    // This node's create for the previous connection got no answer: it may have landed.
    assert_eq!(Fence::Absent.newest(Fence::Unanswered), Fence::Unanswered);
    assert_eq!(Fence::At(r(4)).newest(Fence::Unanswered), Fence::At(r(4)));
}

#[test]
fn a_hand_over_request_older_than_the_connection_held_is_ignored() {
    let r = |n| Revision::new(n).unwrap();
    // Asked under the revision of the connection held here: it ends.
    assert!(!release_is_stale(r(7), Some(r(7))));
    // Asked under an older one: the client reconnected here since; that connection stays.
    assert!(release_is_stale(r(7), Some(r(9))));
    // Nothing connected here (the session is offline here): handed over.
    assert!(!release_is_stale(r(7), None));
}

#[test]
fn a_create_without_an_answer_leaves_the_record_unknown_until_a_write_answers() {
    let r = |n| Revision::new(n).unwrap();
    // Only a create (from `Absent`) can leave a record this writer does not know of.
    assert_eq!(Fence::Absent.after_no_answer(), Fence::Unanswered);
    assert_eq!(Fence::Unanswered.after_no_answer(), Fence::Unanswered);
    assert_eq!(Fence::At(r(3)).after_no_answer(), Fence::At(r(3)));
    assert_eq!(Fence::Lost.after_no_answer(), Fence::Lost);
    assert!(Fence::Unanswered.may_write());
    assert_eq!(Fence::Unanswered.after_write(Some(r(5))), Fence::At(r(5)));
    assert_eq!(Fence::Unanswered.after_write(None), Fence::Lost);
}

/// A moved-client notice from a claim older than this node's own claim of the client is
/// stale; one from a newer claim, or for a client this node holds no claim of, is obeyed.
#[test]
fn a_moved_notice_older_than_this_nodes_claim_is_ignored() {
    let r = |n| Revision::new(n).unwrap();
    assert!(moved_is_stale(r(7), Some(r(9))));
    assert!(!moved_is_stale(r(9), Some(r(7))));
    assert!(!moved_is_stale(r(7), None));
}
