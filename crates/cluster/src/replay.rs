//! A persistent session's place in the partition streams, when it leaves a node and when it
//! resumes on another (issue 14; docs/cluster.md, "Queued messages across nodes").
//!
//! Plain data and functions; the broker's shell feeds them what its router saw.
//!
//! **Leaving** ([`session_log`]). A node routes its own clients' messages when they arrive
//! (before their append gives them a stream sequence) and other nodes' messages in stream
//! order, as its follower reads them. So, at the moment the node writes a session's last
//! record, what that session has taken in is, per partition: every message below the
//! follower's position (`next`), and the node's own messages appended in the batches handed
//! to the cluster so far (up to `writer_through`), wherever they fall. Of those, the ones not
//! completed are listed with their state ([`Outbound`]); everything else the stream holds is
//! not yet delivered to the session.
//!
//! **Resuming** ([`ReplayPlan`]). The node taking the session in has, at that moment, routed
//! every other node's message below its own follower position `live_from`; from there on its
//! follower brings the rest to the adopted session live. Its own messages published before
//! the adoption (up to its `own_through`) were routed while the session was not here. The
//! replay reads each partition from the cursor (or the oldest listed message) up to
//! `max(live_from - 1, own_through)` and classifies every message once ([`Verdict`]): no gap
//! and no duplicate at the seam, as long as `live_from` is past everything the record says
//! was taken in ([`caught_up`]; the shell waits for its follower otherwise).
//!
//! **Late own messages.** A will of this node whose append failed is routed here at once and
//! appended later by a retry, apart from its batch, so `own_through` never counts it. Those
//! routed before the adoption and appended at or past `live_from` (`late`) are read too, up
//! to the highest; this node's other messages past `own_through` in that range were routed
//! after the adoption and reached the session live.

use std::collections::HashMap;

use crate::ids::NodeId;
use crate::record::{Cursor, Outbound, OutboundState};

/// Where this node's router stands in one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodePosition {
    /// The next stream sequence its follower has not handed to the router yet.
    pub next: u64,
    /// The highest sequence of this node's own messages, over the batches whose appends
    /// have returned; 0 when none.
    pub own_through: u64,
}

/// A message a session took in and has not completed, as the shell sees it when the session
/// leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// Its partition and stream sequence; `None` when its append failed (its publisher was
    /// disconnected without an acknowledgement): it is not in the stream.
    pub position: Option<(u16, u64)>,
    /// Where the exchange stands.
    pub state: OutboundState,
    /// Its packet id (0 while queued).
    pub packet_id: u16,
}

/// The cursors and outbound list of a session leaving this node: `positions` gives this
/// node's position in each partition (every partition, so a resuming node knows where to
/// start in each), `taken` the session's messages not completed, in its order (in flight
/// first). Messages without a position are left out; their number is returned.
pub fn session_log(
    positions: &[(u16, NodePosition)],
    taken: impl IntoIterator<Item = Taken>,
) -> (Vec<Cursor>, Vec<Outbound>, usize) {
    let cursors = positions
        .iter()
        .map(|&(partition, p)| Cursor {
            partition,
            next: p.next,
            writer_through: p.own_through,
        })
        .collect();
    let mut outbound = Vec::new();
    let mut missing = 0;
    for t in taken {
        match t.position {
            Some((partition, seq)) => outbound.push(Outbound {
                packet_id: t.packet_id,
                partition,
                seq,
                state: t.state,
            }),
            None => missing += 1,
        }
    }
    (cursors, outbound, missing)
}

/// A one-line picture of a session's place in the log, for debug logs (target
/// `makelaar::records`): per partition with anything to say, `p<index>:<next>/<writer_through>`,
/// then the held messages as `p<index>@<seq>` with their state's initial (Q queued, A
/// awaiting PUBACK, R awaiting PUBREC, C awaiting PUBCOMP), the first few of each partition.
pub fn place_in_log(cursors: &[Cursor], outbound: &[Outbound]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    for c in cursors
        .iter()
        .filter(|c| c.next > 1 || c.writer_through > 0)
    {
        let _ = write!(s, "p{}:{}/{} ", c.partition, c.next, c.writer_through);
    }
    let mut per: std::collections::BTreeMap<u16, Vec<&Outbound>> = Default::default();
    for o in outbound {
        per.entry(o.partition).or_default().push(o);
    }
    for (p, held) in per {
        let state = |o: &Outbound| match o.state {
            OutboundState::Queued => 'Q',
            OutboundState::AwaitPuback => 'A',
            OutboundState::AwaitPubrec => 'R',
            OutboundState::AwaitPubcomp => 'C',
        };
        let (lo, hi) = held
            .iter()
            .fold((u64::MAX, 0), |(lo, hi), o| (lo.min(o.seq), hi.max(o.seq)));
        let states: String = held.iter().take(8).map(|o| state(o)).collect();
        let _ = write!(s, "held p{p}@{lo}..{hi}x{}[{states}] ", held.len());
    }
    s.truncate(s.trim_end().len());
    s
}

/// The highest stream sequence a record says its session took in, per partition: what the
/// resuming node's follower must be past before it adopts the session, or a message would
/// reach it both live and from the record.
fn high_marks(
    cursors: &[Cursor],
    outbound: &[Outbound],
    writer_late: &[(u16, u64)],
) -> HashMap<u16, u64> {
    let mut high: HashMap<u16, u64> = HashMap::new();
    let mut mark = |partition: u16, seq: u64| {
        let e = high.entry(partition).or_default();
        *e = (*e).max(seq);
    };
    for c in cursors {
        mark(c.partition, c.next.saturating_sub(1).max(c.writer_through));
    }
    for o in outbound {
        mark(o.partition, o.seq);
    }
    for &(partition, seq) in writer_late {
        mark(partition, seq);
    }
    high
}

/// Of `landed` (this node's own messages routed here before a session's snapshot and
/// appended late, apart from their batches: see the module documentation), the ones its
/// `cursors` do not count already: past the follower position and past `writer_through`.
/// A record lists them (`SessionRecord::writer_late`), or the node resuming the session
/// would deliver them again.
pub fn late_past(cursors: &[Cursor], landed: &[(u16, u64)]) -> Vec<(u16, u64)> {
    landed
        .iter()
        .copied()
        .filter(|&(partition, seq)| {
            cursors
                .iter()
                .find(|c| c.partition == partition)
                .is_none_or(|c| seq >= c.next && seq > c.writer_through)
        })
        .collect()
}

/// Whether this node's follower is past everything the record says its session took in
/// (`next_of(partition)`: the next sequence its follower has not handed to the router).
pub fn caught_up(
    cursors: &[Cursor],
    outbound: &[Outbound],
    writer_late: &[(u16, u64)],
    next_of: impl Fn(u16) -> u64,
) -> bool {
    high_marks(cursors, outbound, writer_late)
        .into_iter()
        .all(|(p, high)| next_of(p) > high)
}

/// Whether this node's followers are past the partitions' tails read at a client's claim
/// (`tails`: partition and last sequence then): everything the client published on the
/// node it came from and had acknowledged has reached this node's router, so what it
/// publishes here, routed on arrival, comes after it at every subscriber here
/// [MQTT-4.6.0-6].
pub fn past_tails(tails: &[(u16, u64)], next_of: impl Fn(u16) -> u64) -> bool {
    // (An empty partition, last 0, holds nothing to wait for.)
    tails
        .iter()
        .all(|&(p, last)| last == 0 || next_of(p) > last)
}

/// What the replay does with one message of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The record's outbound entry at this index: resumed with its state.
    Kept(usize),
    /// Taken in on the old node already, or coming to the session live here.
    Skip,
    /// Not yet delivered to the session: matched against its subscriptions.
    New,
}

/// The replay of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPlan {
    /// The partition index.
    pub partition: u16,
    /// The first sequence to read.
    pub from: u64,
    /// The last sequence to read (inclusive).
    pub to: u64,
    /// The record's cursor (a default one, all zeros, when the record had none here).
    pub cursor: Cursor,
    /// This node's follower position at the adoption: other nodes' messages from here on
    /// come to the session live.
    pub live_from: u64,
    /// Sequence → index in the record's outbound list, for the entries to read back.
    pub kept: HashMap<u64, usize>,
    /// This node's own messages appended through here by the adoption's batches: routed
    /// before the adoption.
    pub own_through: u64,
    /// This node's own messages at or past `live_from` and past `own_through` routed before
    /// the adoption all the same (a will appended late by its retry).
    pub late: std::collections::BTreeSet<u64>,
    /// The record writer's own messages past `cursor.writer_through` the session took in
    /// all the same (`SessionRecord::writer_late`).
    pub writer_late: std::collections::BTreeSet<u64>,
}

/// How to replay a session taken in from a record (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayPlan {
    /// The node that wrote the record.
    pub writer: NodeId,
    /// This node.
    pub me: NodeId,
    /// The partitions with something to read.
    pub partitions: Vec<PartitionPlan>,
}

impl ReplayPlan {
    /// The plan for a record written by `writer` with `cursors`, `outbound` and
    /// `writer_late`, on node `me` whose position in each partition is `here(partition)` at
    /// the adoption, and whose own messages routed before the adoption but appended late
    /// are at `late` (partition, sequence; those below `live_from` are in the range anyway).
    /// Outbound entries awaiting PUBCOMP are not read back (only their packet id matters).
    pub fn new(
        writer: NodeId,
        me: NodeId,
        record: (&[Cursor], &[Outbound], &[(u16, u64)]),
        here: impl Fn(u16) -> NodePosition,
        late: &[(u16, u64)],
    ) -> ReplayPlan {
        let (cursors, outbound, writer_late) = record;
        let mut by_partition: HashMap<u16, PartitionPlan> = HashMap::new();
        let plan_of = |partition: u16| -> PartitionPlan {
            let h = here(partition);
            PartitionPlan {
                partition,
                from: u64::MAX,
                to: h.next.saturating_sub(1).max(h.own_through),
                cursor: Cursor {
                    partition,
                    next: 0,
                    writer_through: 0,
                },
                live_from: h.next,
                kept: HashMap::new(),
                own_through: h.own_through,
                late: std::collections::BTreeSet::new(),
                writer_late: std::collections::BTreeSet::new(),
            }
        };
        for c in cursors {
            let p = by_partition
                .entry(c.partition)
                .or_insert_with(|| plan_of(c.partition));
            p.cursor = *c;
            p.from = p.from.min(c.next);
        }
        for (i, o) in outbound.iter().enumerate() {
            if o.state == OutboundState::AwaitPubcomp {
                continue;
            }
            let p = by_partition
                .entry(o.partition)
                .or_insert_with(|| plan_of(o.partition));
            p.kept.insert(o.seq, i);
            p.from = p.from.min(o.seq);
        }
        for &(partition, seq) in writer_late {
            // Skipped wherever they fall: the range need not reach them.
            by_partition
                .entry(partition)
                .or_insert_with(|| plan_of(partition))
                .writer_late
                .insert(seq);
        }
        for &(partition, seq) in late {
            let p = by_partition
                .entry(partition)
                .or_insert_with(|| plan_of(partition));
            if seq < p.live_from {
                continue;
            }
            p.late.insert(seq);
            p.from = p.from.min(seq);
            p.to = p.to.max(seq);
        }
        let mut partitions: Vec<PartitionPlan> = by_partition
            .into_values()
            .filter(|p| p.from <= p.to)
            .collect();
        partitions.sort_by_key(|p| p.partition);
        ReplayPlan {
            writer,
            me,
            partitions,
        }
    }

    /// What to do with the message at `seq` of `plan`'s partition, published on `origin`.
    pub fn classify(&self, plan: &PartitionPlan, seq: u64, origin: &NodeId) -> Verdict {
        if let Some(&i) = plan.kept.get(&seq) {
            return Verdict::Kept(i);
        }
        if seq < plan.cursor.next {
            return Verdict::Skip;
        }
        // The old node routed its own messages when they were published.
        if *origin == self.writer
            && (seq <= plan.cursor.writer_through || plan.writer_late.contains(&seq))
        {
            return Verdict::Skip;
        }
        if seq >= plan.live_from {
            // Another node's message past the seam: this node's follower brings it live.
            if *origin != self.me {
                return Verdict::Skip;
            }
            // This node's own, routed after the adoption: it reached the session live.
            if seq > plan.own_through && !plan.late.contains(&seq) {
                return Verdict::Skip;
            }
        }
        Verdict::New
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn node(n: &str) -> NodeId {
        NodeId::new(n).unwrap()
    }

    fn cursor(partition: u16, next: u64, writer_through: u64) -> Cursor {
        Cursor {
            partition,
            next,
            writer_through,
        }
    }

    fn out(partition: u16, seq: u64, state: OutboundState, packet_id: u16) -> Outbound {
        Outbound {
            packet_id,
            partition,
            seq,
            state,
        }
    }

    #[test]
    fn a_leaving_session_records_every_partition_and_what_it_holds() {
        let positions = [
            (
                0,
                NodePosition {
                    next: 10,
                    own_through: 12,
                },
            ),
            (1, NodePosition::default()),
        ];
        let taken = [
            Taken {
                position: Some((0, 7)),
                state: OutboundState::AwaitPubcomp,
                packet_id: 3,
            },
            Taken {
                position: None,
                state: OutboundState::Queued,
                packet_id: 0,
            },
            Taken {
                position: Some((0, 12)),
                state: OutboundState::Queued,
                packet_id: 0,
            },
        ];
        let (cursors, outbound, missing) = session_log(&positions, taken);
        assert_eq!(cursors, [cursor(0, 10, 12), cursor(1, 0, 0)]);
        assert_eq!(
            outbound,
            [
                out(0, 7, OutboundState::AwaitPubcomp, 3),
                out(0, 12, OutboundState::Queued, 0)
            ]
        );
        assert_eq!(missing, 1);
    }

    /// The stream of partition 0 as A and B saw it; A wrote the record with its follower at
    /// 10 (9 routed), its own messages through 12, one message in flight (5) and one own
    /// message queued (11). B adopts with its follower at 15 and its own messages through 16.
    fn plan() -> ReplayPlan {
        ReplayPlan::new(
            node("a"),
            node("b"),
            (
                &[cursor(0, 10, 12)],
                &[
                    out(0, 5, OutboundState::AwaitPubrec, 7),
                    out(0, 11, OutboundState::Queued, 0),
                ],
                &[],
            ),
            |_| NodePosition {
                next: 15,
                own_through: 16,
            },
            &[],
        )
    }

    #[test]
    fn every_message_is_classified_once_across_the_seam() {
        let plan = plan();
        let p = &plan.partitions[0];
        assert_eq!((p.from, p.to), (5, 16));
        let (a, b, c) = (node("a"), node("b"), node("c"));
        // Kept entries come back with their state, whoever published them.
        assert_eq!(plan.classify(p, 5, &c), Verdict::Kept(0));
        assert_eq!(plan.classify(p, 11, &a), Verdict::Kept(1));
        // Below the cursor: taken in (and completed) on A.
        assert_eq!(plan.classify(p, 6, &c), Verdict::Skip);
        assert_eq!(plan.classify(p, 9, &b), Verdict::Skip);
        // A's own messages up to writer_through were routed on A when published.
        assert_eq!(plan.classify(p, 12, &a), Verdict::Skip);
        // Others' messages A had not read yet: new for the session.
        assert_eq!(plan.classify(p, 10, &c), Verdict::New);
        assert_eq!(plan.classify(p, 13, &b), Verdict::New);
        // Past B's follower: another node's message arrives live, B's own does not.
        assert_eq!(plan.classify(p, 15, &c), Verdict::Skip);
        assert_eq!(plan.classify(p, 15, &a), Verdict::Skip);
        assert_eq!(plan.classify(p, 16, &b), Verdict::New);
    }

    /// B's will routed before the adoption whose append was tried again and landed at 20,
    /// past B's follower and its batches' `own_through` (16): read up to it, new for the
    /// session; B's message at 18, routed after the adoption, came live. One late below
    /// `live_from` changes nothing: the range has it.
    #[test]
    fn a_late_own_message_routed_before_the_adoption_is_read_and_nothing_else_past_it() {
        let plan = ReplayPlan::new(
            node("a"),
            node("b"),
            (&[cursor(0, 10, 12), cursor(1, 4, 0)], &[], &[]),
            |p| NodePosition {
                next: if p == 0 { 15 } else { 4 },
                own_through: if p == 0 { 16 } else { 0 },
            },
            &[(0, 20), (0, 13), (1, 6)],
        );
        let p = &plan.partitions[0];
        assert_eq!((p.from, p.to), (10, 20));
        let (b, c) = (node("b"), node("c"));
        assert_eq!(plan.classify(p, 20, &b), Verdict::New);
        assert_eq!(plan.classify(p, 13, &b), Verdict::New);
        assert_eq!(plan.classify(p, 16, &b), Verdict::New);
        assert_eq!(plan.classify(p, 18, &b), Verdict::Skip);
        assert_eq!(plan.classify(p, 19, &c), Verdict::Skip);
        assert_eq!(p.late.iter().copied().collect::<Vec<_>>(), [20]);
        // A partition whose range was empty is read for its late message alone.
        let q = &plan.partitions[1];
        assert_eq!((q.partition, q.from, q.to), (1, 4, 6));
        assert_eq!(plan.classify(q, 6, &b), Verdict::New);
        assert_eq!(plan.classify(q, 5, &b), Verdict::Skip);
        assert_eq!(plan.classify(q, 5, &c), Verdict::Skip);
    }

    /// A's will, routed on A at once (the session took it in there) and appended late at 14,
    /// past A's follower (10) and its batches (12) when A wrote the record: the record lists
    /// it, and B's replay skips it wherever it falls; another node's message at 14 would
    /// be new. A will A's cursors count already is not listed again.
    #[test]
    fn a_late_own_message_of_the_record_writer_is_not_delivered_again() {
        let cursors = [cursor(0, 10, 12), cursor(1, 4, 0)];
        let listed = late_past(&cursors, &[(0, 14), (0, 11), (0, 9), (1, 4), (2, 1)]);
        assert_eq!(listed, [(0, 14), (1, 4), (2, 1)]);
        let plan = ReplayPlan::new(
            node("a"),
            node("b"),
            (&cursors, &[], &listed),
            |_| NodePosition {
                next: 20,
                own_through: 0,
            },
            &[],
        );
        let p = &plan.partitions[0];
        assert_eq!((p.from, p.to), (10, 19));
        let (a, c) = (node("a"), node("c"));
        assert_eq!(plan.classify(p, 14, &a), Verdict::Skip);
        assert_eq!(plan.classify(p, 13, &a), Verdict::New);
        assert_eq!(plan.classify(p, 14, &c), Verdict::New);
        let q = &plan.partitions[1];
        assert_eq!(plan.classify(q, 4, &a), Verdict::Skip);
        assert_eq!(plan.classify(q, 5, &a), Verdict::New);
    }

    #[test]
    fn partitions_with_nothing_to_read_are_left_out() {
        // Cursor at B's follower position, no own messages of B in transit: nothing.
        let plan = ReplayPlan::new(
            node("a"),
            node("b"),
            (
                &[cursor(0, 15, 0), cursor(1, 3, 0)],
                &[out(1, 2, OutboundState::AwaitPubcomp, 9)],
                &[],
            ),
            |p| NodePosition {
                next: if p == 0 { 15 } else { 8 },
                own_through: 0,
            },
            &[],
        );
        assert_eq!(plan.partitions.len(), 1);
        let p = &plan.partitions[0];
        // A message awaiting PUBCOMP is not read back.
        assert_eq!((p.partition, p.from, p.to), (1, 3, 7));
        assert!(p.kept.is_empty());
    }

    #[test]
    fn adoption_waits_for_the_follower_to_pass_the_record() {
        let cursors = [cursor(0, 10, 12)];
        let outbound = [out(1, 30, OutboundState::Queued, 0)];
        let next = |n0: u64, n1: u64| move |p: u16| if p == 0 { n0 } else { n1 };
        assert!(!caught_up(&cursors, &outbound, &[], next(12, 31)));
        assert!(!caught_up(&cursors, &outbound, &[], next(13, 30)));
        assert!(caught_up(&cursors, &outbound, &[], next(13, 31)));
        assert!(caught_up(&[], &[], &[], next(0, 0)));
        // A late own message the record lists: the follower must be past it too.
        assert!(!caught_up(&cursors, &outbound, &[(0, 20)], next(20, 31)));
        assert!(caught_up(&cursors, &outbound, &[(0, 20)], next(21, 31)));
    }

    #[test]
    fn a_client_from_another_node_waits_for_the_followers_to_pass_the_tails() {
        let tails = [(0, 12), (1, 0)];
        let next = |n0: u64, n1: u64| move |p: u16| if p == 0 { n0 } else { n1 };
        assert!(!past_tails(&tails, next(12, 1)));
        assert!(past_tails(&tails, next(13, 1)));
        // An empty partition: any follower position is past it.
        assert!(past_tails(&[(1, 0)], next(0, 0)));
        assert!(past_tails(&[], next(0, 0)));
    }
}
