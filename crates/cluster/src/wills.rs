//! Wills across the cluster, sans-IO: who decides a will left in a session record, and how
//! the records of a dead node are taken over. The MQTT timing rules themselves (when a will
//! is due, when a session ends) are the core's (`makelaar_core::broker::will_wait`,
//! `session_left`); this module only says whose turn it is and reads the wall-clock times
//! the records carry.
//!
//! Every client with a will has a [`SessionRecord`] in the `sessions` bucket while the will
//! is not yet decided (a session that ends with its connection has one only then): written
//! at CONNECT, rewritten when the will is published, waits out its delay or is discarded,
//! deleted with the session. A will in a record is decided exactly once, by the one node
//! whose compare-and-set write takes it out (or keeps it as its own):
//!
//! - the node holding the connection, when the connection ends there (its core decides
//!   when the will is due, as on a single broker; the node writes the record without it by
//!   compare-and-set and publishes it only if that write won: [`verdict`]);
//! - a node a client connects to while the record still holds a will it does not hold
//!   itself (a hand-over from a live node, or a node that died): [`claimer_decides`], then
//!   [`will_taken`] written by compare-and-set before the core decides the will by the
//!   takeover rules;
//! - the survivor that reaps a dead node ([`crate::cluster::LeaseEvent::Reap`]): for each
//!   record [`left_by`] the dead incarnation it moves the registry entry to itself, then
//!   writes [`reaped`] by compare-and-set, and only then publishes what is due.
//!
//! A write that loses its compare-and-set means another node took the record first; the
//! loser publishes nothing. That holds for the node holding the connection too: when its
//! core says a will is due (`makelaar_core::broker::Broker::drain_due_wills`), it writes the
//! session's record without the will first, and publishes only if that write won
//! ([`verdict`]): so a connection lost on one node at the very moment its client connects on
//! another, or a reaper's delayed will falling due as its client connects elsewhere, has its
//! will published by one of them, never both. A node that cannot write (cut off from NATS,
//! stepped down) publishes nothing either: the will stays in the record for the node that
//! takes it next (the client's new node, or the reaper), or for this node's next attempt
//! once it can write again.

use std::time::Duration;

use crate::ids::{NodeId, Revision};
use crate::lease::Expired;
use crate::record::{RegistryEntry, SessionRecord, StoredWill, WillTaker, WILL_TAKERS_KEPT};

/// How long ago the connection of a record ended, by the wall clock (unix milliseconds):
/// `None` when the record was written while its connection was open. A writer's clock
/// ahead of this node's counts as no time passed.
pub fn offline_for(record: &SessionRecord, now_ms: u64) -> Option<Duration> {
    record
        .disconnected_at_ms
        .map(|at| Duration::from_millis(now_ms.saturating_sub(at)))
}

/// Whether a node that has just claimed a client id decides the will the session record
/// may hold: yes, unless the claim replaced this very node's own entry (this node in this
/// incarnation held the client, and its core holds the will and decides it as a single
/// broker does) and the record is this node's (`writer`). A record another node wrote
/// holds that node's will, which this node's core never had: this node's entry then
/// named it only because a write of its own landed unanswered (a reaper's take-over
/// that got a 503 though the registry took it, found by the fault harness: the will was
/// left to nobody).
pub fn claimer_decides(
    previous: Option<&RegistryEntry>,
    writer: &NodeId,
    me: &NodeId,
    incarnation: u64,
) -> bool {
    writer != me || !previous.is_some_and(|p| p.node == *me && p.incarnation == incarnation)
}

/// Whether a reaper's retry of a dead node's session (its first take-over failed on the
/// engine) finds the registry write of that first try landed unanswered: the entry names
/// this node's current incarnation, offline, and the record is still the dead node's. The
/// session is then this node's orphan as if the write had answered.
pub fn reaped_unanswered(
    record: &SessionRecord,
    holder: &RegistryEntry,
    dead: &Expired,
    me: &NodeId,
    incarnation: u64,
) -> bool {
    record.node == dead.node
        && holder.node == *me
        && holder.incarnation == incarnation
        && !holder.connected
}

/// Whether the record a create of `me` left (the create got no answer), found gone when
/// `me` deletes it to end the session, was taken by a reaper, which decided the will it
/// held: the client's registry entry (`holder`) is gone (a reaper that ends a session
/// deletes its record, then the entry) or names another node holding the client offline
/// (that reaper between its two deletes). An entry of `me`'s, or of a node the client is
/// connected to (its claim found no record of `me`'s: the create never landed), leaves the
/// will to `me` (found by `test_a_stepped_down_nodes_wills_are_published_once_after_all`:
/// the reaper of the stepped-down node came first, and both published the will).
pub fn unanswered_create_taken(holder: Option<&RegistryEntry>, me: &NodeId) -> bool {
    !matches!(holder, Some(h) if h.node == *me || h.connected)
}

/// The record a claiming node writes to take its will out: the same session, written by
/// `node` under its claim `claim`, without the will; and the will taken.
pub fn will_taken(
    record: &SessionRecord,
    node: NodeId,
    claim: Revision,
) -> (SessionRecord, Option<StoredWill>) {
    let mut r = record.written_again_by(node, claim.get());
    let will = r.will.take();
    if will.is_some() {
        mark_taken(&mut r, claim, writer_of(record));
    }
    (r, will)
}

/// Marks `record` (written by its `node` under `claim`) as the write that takes its will
/// out: every later writer keeps the mark (they rewrite the record they read), so the
/// taker learns that its write landed even when its answer got lost and another node wrote
/// the record since ([`taken_by_me`]). The marks of earlier take-outs stay behind it (the
/// newest [`WILL_TAKERS_KEPT`]): the node that wrote since may take a will of its own out
/// before the earlier taker looks. `from` is the writer of the record the will was taken
/// from, under its claim ([`writer_of`]; see [`left_in_record`]).
pub fn mark_taken(record: &mut SessionRecord, claim: Revision, from: (NodeId, u64)) {
    let mark = WillTaker {
        node: record.node.clone(),
        claim: claim.get(),
        from: Some(from),
    };
    record
        .will_takers
        .retain(|t| t.node != mark.node || t.claim != mark.claim);
    record.will_takers.insert(0, mark);
    record.will_takers.truncate(WILL_TAKERS_KEPT);
}

/// The writer of `record` and the claim it wrote it under: where a will taken out of it
/// came from ([`WillTaker::from`]).
pub fn writer_of(record: &SessionRecord) -> (NodeId, u64) {
    (record.node.clone(), record.claim)
}

/// The record a node writes over a session that ends with a will it is about to publish,
/// before it deletes it: ended (expiry 0, so no claim takes it for a session), with no will,
/// marked as taken by `node` under its claim `claim` ([`mark_taken`]), after the marks of
/// other nodes' take-outs it carried (`others`: then it is left in place instead of
/// deleted, as [`ended_keeping`]). A delete that lands
/// but loses its answer leaves nothing to tell whose it was, and the retry, refused, would
/// take it for another node's and withhold the will (found by the fault harness: a probe's
/// will never published after its node stepped down and came back). A write of this record
/// that lands unanswered is known on the retry ([`written_under`], [`taken_by_me`]); the
/// delete after it only tidies up.
pub fn ended(node: NodeId, claim: Revision, now_ms: u64, others: Vec<WillTaker>) -> SessionRecord {
    let mut r = ended_keeping(node, claim, now_ms, others);
    // The will was in this node's own record of the session.
    let own = writer_of(&r);
    mark_taken(&mut r, claim, own);
    r
}

/// The record a node writes over a session that ends without a will of its own to take
/// out, when the record carries take-out marks of other nodes (`taken`): the same ended
/// record as [`ended`], keeping those marks, and left in place instead of deleted.
/// That node's take-out landed but its answer was lost, so the will waits there to be
/// tried again; its retry, refused, learns from the mark that the will is its own
/// ([`taken_by_me`]), and deletes the record then ([`is_ended`]). Deleted now, the mark
/// would go with it and the will be withheld by everyone (found by the fault harness: a
/// probe's clean-start connection on the claiming node ended 7 s after its claim).
pub fn ended_keeping(
    node: NodeId,
    claim: Revision,
    now_ms: u64,
    taken: Vec<WillTaker>,
) -> SessionRecord {
    SessionRecord {
        will_takers: taken,
        ..ended_record(node, claim, now_ms)
    }
}

/// The take-out marks `taken` (as a record carried them) of nodes other than `me`: an ended
/// session's record that carries any is left in place for those nodes' retries
/// ([`ended_keeping`]).
pub fn others_marks(taken: &[WillTaker], me: &NodeId) -> Vec<WillTaker> {
    taken.iter().filter(|t| t.node != *me).cloned().collect()
}

/// Whether `record` is one of a session that has ended ([`ended`], [`ended_keeping`]):
/// Session Expiry 0, its connection gone, no will. No claim takes such a record for a
/// session; it is left only for the mark it carries.
pub fn is_ended(record: &SessionRecord) -> bool {
    record.expiry_interval == 0
        && record.disconnected_at_ms.is_some()
        && record.will.is_none()
        && record.subscriptions.is_empty()
}

fn ended_record(node: NodeId, claim: Revision, now_ms: u64) -> SessionRecord {
    SessionRecord {
        node,
        claim: claim.get(),
        protocol: 5,
        expiry_interval: 0,
        disconnected_at_ms: Some(now_ms),
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

/// Whether `record` (now another node's) still carries the mark of a write of `node` under
/// `claim` that took its will out ([`mark_taken`]): that write landed, its answer was lost,
/// and the will is `node`'s to publish; the node that wrote since found no will to decide.
pub fn taken_by_me(record: &SessionRecord, node: &NodeId, claim: Revision) -> bool {
    record
        .will_takers
        .iter()
        .any(|t| t.node == *node && t.claim == claim.get())
}

/// Whether the wills `node` has due for a session it gave up (its claim `claim`), which
/// waited behind a write of the record whose outcome it never learnt, are the node's that
/// took the record to decide, as `record` (read now) tells: that write landed with the
/// connection's will, and the record still holds it (the claimer takes it out, or, should
/// its claim fail, `node`'s take-back publishes it), or another node's mark says it took
/// the will out of that write. Otherwise the write never carried the will into the
/// cluster, and `node` publishes it. (A node that gave up such a session published it in
/// both cases, and the claimer a second time.)
pub fn left_in_record(record: &SessionRecord, node: &NodeId, claim: Revision) -> bool {
    let written = (node.clone(), claim.get());
    (writer_of(record) == written && record.will.is_some())
        || (record.will_takers.iter()).any(|t| t.node != *node && t.from.as_ref() == Some(&written))
}

/// Whether a session record is one the dead incarnation `dead` left: written by that node,
/// and the registry (`holder`) still names that incarnation as its client's holder. A
/// client that connected elsewhere since (the registry names another node or incarnation)
/// is not: the node it connected to decided the will.
pub fn left_by(record: &SessionRecord, holder: &RegistryEntry, dead: &Expired) -> bool {
    record.node == dead.node && holder.node == dead.node && holder.incarnation == dead.incarnation
}

/// Whether `node` gave the session of `record` up to a claim that may have failed: the
/// record is still the one `node` wrote, with a will, while the registry (`holder`) names
/// another node. A claim that went through takes the will out (a write naming the
/// claimer), so after the claim's time such a record is taken back with its will
/// (`Cluster::take_abandoned`), by `node`'s next run or by its reaper.
pub fn given_up(record: &SessionRecord, holder: &RegistryEntry, node: &NodeId) -> bool {
    holds_will_of(record, node) && holder.node != *node
}

/// Whether `record` is one `node` wrote holding a will: the part of [`given_up`] read
/// before the registry is.
pub fn holds_will_of(record: &SessionRecord, node: &NodeId) -> bool {
    record.node == *node && record.will.is_some()
}

/// The record as the reaping node keeps it: written by `node` under its claim `claim`,
/// offline since `now_ms` if its connection was open when the dead node wrote it (the will
/// delay and session expiry of a connection that died with its node are counted from the
/// reap: when it ended exactly is not known), and without its will when that is published
/// now (`will_due_now`).
pub fn reaped(
    record: &SessionRecord,
    node: NodeId,
    claim: Revision,
    now_ms: u64,
    will_due_now: bool,
) -> SessionRecord {
    let mut r = record.written_again_by(node, claim.get());
    r.disconnected_at_ms.get_or_insert(now_ms);
    if will_due_now && r.will.take().is_some() {
        mark_taken(&mut r, claim, writer_of(record));
    }
    r
}

/// What a node does with a will it wanted to publish, after the write that was to take it
/// out of its session's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WillVerdict {
    /// The write won: this node took the will out, and publishes it.
    Publish,
    /// An earlier write of this node took the will out (its answer got lost), and another
    /// node has written the record since, finding no will: this node publishes it, and
    /// writes the record no more (the session is the other node's).
    PublishFenced,
    /// Another node wrote the record since (it took the session over, or reaped this node):
    /// that node decides the will; this one drops it.
    Withhold,
    /// The write's outcome is not known (the engine failed or did not answer): the will is
    /// kept, and the write tried again later. A retry that finds the record still this
    /// node's (see [`written_under`]) wins it then; one that finds another node's withholds.
    Retry,
}

/// The verdict on a will after the write (or delete) of its session's record came back
/// with `outcome`.
pub fn verdict<T>(outcome: &Result<T, crate::cluster::ClusterError>) -> WillVerdict {
    use crate::cluster::ClusterError;
    match outcome {
        Ok(_) => WillVerdict::Publish,
        Err(ClusterError::FencedAfterWillTaken(_)) => WillVerdict::PublishFenced,
        // A record that does not decode is nobody's to take the will out of: this node
        // cannot know that it still holds it, and publishing could repeat another node's.
        Err(ClusterError::Fenced(_) | ClusterError::Corrupt { .. }) => WillVerdict::Withhold,
        // (Record writes are not refused for a lapsed lease, only messages: kept if so.)
        Err(ClusterError::Backend(_) | ClusterError::Claim(_) | ClusterError::LeaseLapsed) => {
            WillVerdict::Retry
        }
    }
}

/// Whether `record` is one that `node` wrote under its claim `claim`. Only that node's one
/// writer per claim writes such records (other nodes write their own name, this node's next
/// claim another revision), so a compare-and-set refused by such a record was refused by
/// this node's own earlier write whose answer got lost: writing again at its revision is
/// safe, and takes from no other node.
pub fn written_under(record: &SessionRecord, node: &NodeId, claim: Revision) -> bool {
    record.node == *node && record.claim == claim.get()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::Bytes;
    use makelaar_proto::packet::QoS;

    fn node(n: &str) -> NodeId {
        NodeId::new(n).unwrap()
    }

    fn will() -> StoredWill {
        StoredWill {
            topic: "w".into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            delay: 5,
            message_expiry: None,
            payload_utf8: false,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
            username: Some("u".into()),
        }
    }

    fn record(writer: &str, disconnected_at_ms: Option<u64>) -> SessionRecord {
        SessionRecord {
            node: node(writer),
            claim: 3,
            protocol: 5,
            expiry_interval: 60,
            disconnected_at_ms,
            subscriptions: Vec::new(),
            will: Some(will()),
            cursors: Vec::new(),
            outbound: Vec::new(),
            inbound_qos2: Vec::new(),
            will_takers: Vec::new(),
            cursors_of: None,
            writer_late: Vec::new(),
        }
    }

    fn entry(n: &str, incarnation: u64, connected: bool) -> RegistryEntry {
        RegistryEntry {
            node: node(n),
            incarnation,
            connected,
            came_from: None,
        }
    }

    #[test]
    fn a_will_is_published_only_by_the_write_that_took_it_out() {
        use crate::backend::BackendError;
        use crate::cluster::ClusterError;
        let fenced: Result<(), _> = Err(ClusterError::Fenced(crate::ClientKey::new("c")));
        assert_eq!(verdict(&Ok::<_, ClusterError>(())), WillVerdict::Publish);
        assert_eq!(verdict(&fenced), WillVerdict::Withhold);
        let corrupt: Result<(), _> = Err(ClusterError::Corrupt {
            key: "c".into(),
            error: crate::record::DecodeError::BadValue("x"),
        });
        assert_eq!(verdict(&corrupt), WillVerdict::Withhold);
        let down: Result<(), _> = Err(ClusterError::Backend(BackendError::Timeout));
        assert_eq!(verdict(&down), WillVerdict::Retry);
    }

    #[test]
    fn only_this_nodes_writes_under_this_claim_are_its_own() {
        let r = record("a", None);
        let claim = Revision::new(3).unwrap();
        assert!(written_under(&r, &node("a"), claim));
        // Another claim of the same node (a later CONNECT), or another node's write.
        assert!(!written_under(&r, &node("a"), Revision::new(4).unwrap()));
        assert!(!written_under(&r, &node("b"), claim));
    }

    #[test]
    fn offline_time_comes_from_the_record() {
        assert_eq!(offline_for(&record("a", None), 10_000), None);
        assert_eq!(
            offline_for(&record("a", Some(4_000)), 10_000),
            Some(Duration::from_secs(6))
        );
        // The writer's clock ran ahead: no time passed.
        assert_eq!(
            offline_for(&record("a", Some(12_000)), 10_000),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn a_record_left_by_an_unanswered_create_and_gone_was_taken_by_a_reaper() {
        let me = node("a");
        // The reaper ended the session (record and entry deleted), or is between the two.
        assert!(unanswered_create_taken(None, &me));
        assert!(unanswered_create_taken(Some(&entry("b", 2, false)), &me));
        // Still this node's (any incarnation), or a node the client connected to since.
        assert!(!unanswered_create_taken(Some(&entry("a", 1, false)), &me));
        assert!(!unanswered_create_taken(Some(&entry("a", 1, true)), &me));
        assert!(!unanswered_create_taken(Some(&entry("b", 2, true)), &me));
    }

    #[test]
    fn the_claimer_decides_unless_it_held_the_client_itself() {
        let me = node("b");
        assert!(claimer_decides(None, &me, &me, 7));
        assert!(claimer_decides(Some(&entry("a", 1, true)), &me, &me, 7));
        // This node's earlier self (restarted): its core does not have the will.
        assert!(claimer_decides(Some(&entry("b", 6, false)), &me, &me, 7));
        assert!(!claimer_decides(Some(&entry("b", 7, false)), &me, &me, 7));
        // Its own entry over another node's record (a reaper's registry write that landed
        // unanswered): that node's will is not in this node's core.
        assert!(claimer_decides(
            Some(&entry("b", 7, false)),
            &node("a"),
            &me,
            7
        ));
    }

    #[test]
    fn a_reapers_registry_write_that_landed_unanswered_is_known_on_its_retry() {
        let me = node("b");
        let dead = Expired {
            node: node("a"),
            incarnation: 3,
        };
        let left = record("a", None);
        assert!(reaped_unanswered(
            &left,
            &entry("b", 7, false),
            &dead,
            &me,
            7
        ));
        // Its client connected here since: that connection's claim decides.
        assert!(!reaped_unanswered(
            &left,
            &entry("b", 7, true),
            &dead,
            &me,
            7
        ));
        // Another node's entry, or this node's earlier self.
        assert!(!reaped_unanswered(
            &left,
            &entry("c", 2, false),
            &dead,
            &me,
            7
        ));
        assert!(!reaped_unanswered(
            &left,
            &entry("b", 6, false),
            &dead,
            &me,
            7
        ));
        // A record written since by someone else than the dead node.
        assert!(!reaped_unanswered(
            &record("c", None),
            &entry("b", 7, false),
            &dead,
            &me,
            7
        ));
    }

    #[test]
    fn taking_the_will_rewrites_the_writer_and_claim_only() {
        let r = record("a", Some(1_000));
        let (taken, will) = will_taken(&r, node("b"), Revision::new(9).unwrap());
        assert_eq!(will, Some(self::will()));
        assert_eq!(taken.will, None);
        assert_eq!((taken.node.as_str(), taken.claim), ("b", 9));
        assert_eq!(taken.disconnected_at_ms, r.disconnected_at_ms);
        assert_eq!(taken.subscriptions, r.subscriptions);
    }

    /// The mark of a take-out says which write the will came from; a node that gave up a
    /// session with its record write's outcome unknown reads there, or in the will still
    /// in the record, whether that write carried the will in.
    #[test]
    fn a_will_a_write_carried_in_is_left_to_the_taker_whether_taken_or_still_there() {
        let mine = Revision::new(3).unwrap();
        let a = node("a");
        // a's write landed with the will, and no claim took it out yet.
        let r = record("a", Some(1));
        assert!(left_in_record(&r, &a, mine));
        // Under a claim of a's other than this one: not this write's.
        assert!(!left_in_record(&r, &a, Revision::new(2).unwrap()));
        // b's claim took it out of a's record.
        let (taken, _) = will_taken(&r, node("b"), Revision::new(9).unwrap());
        assert_eq!(
            taken.will_takers.first().unwrap().from,
            Some((a.clone(), 3))
        );
        assert!(left_in_record(&taken, &a, mine));
        // b took out a will of a record b wrote itself (a's write never landed).
        let (of_b, _) = will_taken(&record("b", Some(1)), node("b"), Revision::new(9).unwrap());
        assert!(!left_in_record(&of_b, &a, mine));
        // a's write never carried a will in: the record holds none of a's.
        let mut without = record("a", Some(1));
        without.will = None;
        assert!(!left_in_record(&without, &a, mine));
        // A mark written before marks said where the will came from tells nothing.
        let mut old = taken.clone();
        old.will_takers.first_mut().unwrap().from = None;
        assert!(!left_in_record(&old, &a, mine));
    }

    #[test]
    fn a_dead_incarnations_records_are_the_ones_the_registry_still_names_it_for() {
        let dead = Expired {
            node: node("a"),
            incarnation: 1,
        };
        let r = record("a", None);
        assert!(left_by(&r, &entry("a", 1, true), &dead));
        // Offline (a will waiting out its delay), still that incarnation's.
        assert!(left_by(&r, &entry("a", 1, false), &dead));
        // Connected elsewhere since, or to the node's next incarnation: not reaped.
        assert!(!left_by(&r, &entry("b", 4, true), &dead));
        assert!(!left_by(&r, &entry("a", 2, true), &dead));
        // Written by another node (a claim in progress): not reaped.
        assert!(!left_by(&record("b", None), &entry("a", 1, true), &dead));
    }

    #[test]
    fn a_reaped_record_is_offline_from_the_reap_and_loses_a_will_published_now() {
        let claim = Revision::new(12).unwrap();
        let open = reaped(&record("a", None), node("c"), claim, 50_000, false);
        assert_eq!((open.node.as_str(), open.claim), ("c", 12));
        assert_eq!(open.disconnected_at_ms, Some(50_000));
        assert!(open.will.is_some());
        // Already offline: its own time is kept, the delay runs on from there.
        let waiting = reaped(&record("a", Some(40_000)), node("c"), claim, 50_000, true);
        assert_eq!(waiting.disconnected_at_ms, Some(40_000));
        assert!(waiting.will.is_none());
    }
}
