//! The acknowledgement rule: a packet that tells a client its message or subscription is
//! safe (PUBACK, PUBREC, PUBCOMP, SUBACK, UNSUBACK, CONNACK), every QoS 2 delivery and every
//! PUBREL leave
//! the broker only once the store has committed every change made before them. Other packets
//! go at once, unless something is already held for their connection: a connection's packets
//! keep their order.
//!
//! Changes are committed in numbered groups ("epochs"); a held packet waits for the epoch
//! that was the latest submitted when it was produced.

use std::collections::{HashMap, VecDeque};

use makelaar_core::session::ConnId;
use makelaar_core::CloseReason;
use makelaar_proto::{Packet, QoS};

/// What waits for a commit.
// Held packets are moved, not copied around: boxing would cost an allocation per ack.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Held {
    Send(Packet),
    Close(CloseReason),
}

/// Packets held per connection until their epoch is durable.
#[derive(Default)]
pub(crate) struct Gate {
    /// The latest epoch handed to the store.
    submitted: u64,
    /// The latest epoch the store has committed.
    durable: u64,
    held: HashMap<ConnId, VecDeque<(u64, Held)>>,
}

impl Gate {
    /// Numbers the next group of changes handed to the store.
    pub(crate) fn next_epoch(&mut self) -> u64 {
        self.submitted += 1;
        self.submitted
    }

    /// The latest epoch numbered.
    pub(crate) fn submitted(&self) -> u64 {
        self.submitted
    }

    /// Whether this must wait: it is held (and kept here) when its connection already has
    /// packets waiting, or when it needs durability and a commit is outstanding.
    pub(crate) fn hold(&mut self, conn: ConnId, what: Held) -> Option<Held> {
        let outstanding = self.submitted > self.durable;
        let must_wait = match &what {
            Held::Send(p) => outstanding && needs_durability(p),
            Held::Close(_) => false,
        };
        match self.held.get_mut(&conn) {
            Some(queue) => queue.push_back((self.submitted, what)),
            None if must_wait => {
                self.held
                    .insert(conn, VecDeque::from([(self.submitted, what)]));
            }
            None => return Some(what),
        }
        None
    }

    /// Records that `epoch` is durable and hands back, per connection in order, what may
    /// go now.
    pub(crate) fn committed(&mut self, epoch: u64, mut release: impl FnMut(ConnId, Held)) {
        self.durable = self.durable.max(epoch);
        let durable = self.durable;
        self.held.retain(|&conn, queue| {
            while let Some((e, _)) = queue.front() {
                if *e > durable {
                    break;
                }
                if let Some((_, what)) = queue.pop_front() {
                    release(conn, what);
                }
            }
            !queue.is_empty()
        });
    }

    /// Forgets what is held for a connection that ends without it (its acknowledgements
    /// must never go out).
    pub(crate) fn discard(&mut self, conn: ConnId) {
        self.held.remove(&conn);
    }

    /// Packets held now, over all connections (a scrape's figure: it visits each
    /// connection with packets held).
    pub(crate) fn held_count(&self) -> usize {
        self.held.values().map(VecDeque::len).sum()
    }
}

/// Whether a packet promises the client that something is kept.
fn needs_durability(p: &Packet) -> bool {
    match p {
        Packet::PubAck(_)
        | Packet::PubRec(_)
        | Packet::PubComp(_)
        | Packet::SubAck(_)
        | Packet::UnsubAck(_)
        | Packet::ConnAck(_) => true,
        // Exactly once: a delivery made before the inbound state is stored could be made
        // again after a crash, when the publisher re-sends.
        Packet::Publish(p) => p.qos == QoS::ExactlyOnce,
        // Once PUBREL is sent the PUBLISH must never be sent again (5.0 [MQTT-4.3.3-6]): the
        // subscriber answers PUBCOMP, forgets the packet id, and takes a PUBLISH with it as a
        // new message [MQTT-4.3.3-12]. So PUBREL waits until the store has the message as
        // awaiting PUBCOMP; sent earlier, a crash would bring it back as awaiting PUBREC and
        // re-send it: delivered twice.
        Packet::PubRel(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use makelaar_proto::PubAck;

    fn sent(h: Option<Held>) -> bool {
        matches!(h, Some(Held::Send(_)))
    }

    #[test]
    fn acks_wait_for_their_epoch_and_later_packets_queue_behind_them() {
        let mut g = Gate::default();
        assert!(sent(g.hold(1, Held::Send(Packet::PubAck(PubAck::new(1))))));
        let e = g.next_epoch();
        assert!(g
            .hold(1, Held::Send(Packet::PubAck(PubAck::new(2))))
            .is_none());
        // Not an ack, but behind one on the same connection.
        assert!(g.hold(1, Held::Send(Packet::PingResp)).is_none());
        // Another connection's plain packet goes at once.
        assert!(sent(g.hold(2, Held::Send(Packet::PingResp))));
        assert_eq!(g.held_count(), 2);
        let mut out = Vec::new();
        g.committed(e, |c, h| {
            out.push((c, matches!(h, Held::Send(Packet::PubAck(_)))))
        });
        assert_eq!(out, vec![(1, true), (1, false)]);
        assert_eq!(g.held_count(), 0);
        assert!(sent(g.hold(1, Held::Send(Packet::PubAck(PubAck::new(3))))));
    }

    #[test]
    fn pubrel_waits_for_the_commit_of_its_state() {
        let mut g = Gate::default();
        let e = g.next_epoch();
        assert!(g
            .hold(1, Held::Send(Packet::PubRel(PubAck::new(7))))
            .is_none());
        assert_eq!(g.held_count(), 1);
        let mut n = 0;
        g.committed(e, |_, _| n += 1);
        assert_eq!(n, 1);
    }

    #[test]
    fn a_later_epoch_is_not_released_by_an_earlier_commit() {
        let mut g = Gate::default();
        let e1 = g.next_epoch();
        assert!(g
            .hold(1, Held::Send(Packet::PubAck(PubAck::new(1))))
            .is_none());
        let e2 = g.next_epoch();
        assert!(g
            .hold(1, Held::Send(Packet::PubAck(PubAck::new(2))))
            .is_none());
        let mut n = 0;
        g.committed(e1, |_, _| n += 1);
        assert_eq!(n, 1);
        g.committed(e2, |_, _| n += 1);
        assert_eq!(n, 2);
    }
}
