//! Keeping a connected persistent session's record current, so that a node that dies while
//! its client is connected loses nothing of that session (docs/cluster.md, "Queued
//! messages across nodes", "Checkpoints while connected").
//!
//! Plain data and functions, the time passed in; the router's shell writes the records and
//! holds the packets these rules say must wait.
//!
//! **What a checkpoint is.** The same record a session gets when it leaves a node
//! ([`crate::replay::session_log`]): per partition where this node stands, and every QoS
//! 1/2 message the session holds (in flight with its packet id and state, then queued), all
//! taken at one moment, after the appends of the batches handed to the cluster before it.
//! A survivor that takes the session over replays from it: what the session held comes
//! again (QoS 1 with DUP and the same packet id, QoS 2 as below), what it took in later is
//! new, what it completed before the checkpoint is skipped. So a checkpoint of any age loses
//! no QoS 1 message; an older one only means more duplicates after a crash. Hence QoS 1
//! needs no write per message: a session is written when its record is at least
//! [`CheckpointConfig::interval`] old and something moved (a QoS 1/2 PUBLISH sent, an
//! acknowledgement received), or at once after [`CheckpointConfig::acks`]
//! acknowledgements, one write in flight per session at most.
//!
//! **QoS 2, exactly once across a crash.** The subscriber keeps the packet id of a QoS 2
//! message from its PUBLISH until PUBREL and takes a PUBLISH with a kept id as the same
//! message [MQTT-4.3.3-9] [MQTT-4.3.3-10]; after PUBREL it forgets the id, and a PUBLISH
//! with it is a new message [MQTT-4.3.3-12]. So a survivor must never send as new a message
//! the client may have had, nor send again the PUBLISH of one it may have released. Two
//! packets therefore leave this node only once a checkpoint made after them is written
//! ([`waits_for_record`]):
//!
//! - a QoS 2 **PUBLISH**: the record then holds the message with its packet id awaiting
//!   PUBREC, and the survivor sends it again with that id and DUP [MQTT-4.3.3-x]
//!   (`PUBLISH` retried with the same id: [MQTT-4.4.0-1]);
//! - a **PUBREL**: the record then holds the message awaiting PUBCOMP, and the survivor
//!   sends PUBREL, never the PUBLISH again [MQTT-4.3.3-6] [MQTT-4.4.0-1].
//!
//! Both wait for one write of the session's record per round trip at most: the packets
//! that come while a write is in flight go with the next ([`Checkpoints::hold`]). The
//! writes are compare-and-set on the record's revision like every session write
//! ([`crate::takeover::Fence`]): a node that lost the session cannot overwrite the new
//! owner's record, and what it held back never goes out.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use makelaar_proto::{Packet, QoS};

/// How often a connected persistent session's record is brought up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointConfig {
    /// The least time between two writes of one session's record for QoS 1 progress
    /// (`[cluster] checkpoint_interval_ms`).
    pub interval: Duration,
    /// Acknowledgements (PUBACK, PUBREC, PUBCOMP) after which a session is written without
    /// waiting for the interval (`[cluster] checkpoint_acks`); 0: only by the interval.
    pub acks: u32,
}

impl Default for CheckpointConfig {
    /// 1 s, or 1,000 acknowledgements.
    fn default() -> Self {
        CheckpointConfig {
            interval: Duration::from_millis(1000),
            acks: 1000,
        }
    }
}

/// Whether a packet to a connected persistent session must wait until a checkpoint of the
/// session made after it is written (see the module documentation): a QoS 2 PUBLISH and
/// PUBREL.
pub fn waits_for_record(packet: &Packet) -> bool {
    match packet {
        Packet::Publish(p) => p.qos == QoS::ExactlyOnce,
        Packet::PubRel(_) => true,
        _ => false,
    }
}

/// Whether a packet from the client moves its session's progress (an acknowledgement of a
/// QoS 1/2 message sent to it).
pub fn is_progress(packet: &Packet) -> bool {
    matches!(
        packet,
        Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_)
    )
}

#[derive(Debug, Clone)]
struct Session {
    /// When its last checkpoint started (`None`: none yet).
    last: Option<Instant>,
    /// Something moved since the last checkpoint started.
    dirty: bool,
    /// Acknowledgements since the last checkpoint started.
    acks: u32,
    /// Packets wait for the next checkpoint.
    urgent: bool,
    /// The checkpoint being written, if any.
    in_flight: Option<u64>,
    /// The number the next checkpoint gets, once a packet waits for it.
    next: Option<u64>,
}

/// The checkpoints of the connected persistent sessions of one node, by a key of the
/// shell's choosing (the client id).
#[derive(Debug, Clone)]
pub struct Checkpoints<K> {
    config: CheckpointConfig,
    sessions: HashMap<K, Session>,
    /// Sessions that may be due before the next scan (packets wait, or enough acks).
    soon: Vec<K>,
    /// When every session is looked at next (for the interval).
    next_scan: Option<Instant>,
    /// The last checkpoint number given, over all sessions: numbers only grow, so a late
    /// answer for a session's earlier tracking releases nothing of a later one.
    numbered: u64,
}

impl<K: Clone + Eq + Hash> Checkpoints<K> {
    /// No session yet.
    pub fn new(config: CheckpointConfig) -> Checkpoints<K> {
        Checkpoints {
            config,
            sessions: HashMap::new(),
            soon: Vec::new(),
            next_scan: None,
            numbered: 0,
        }
    }

    /// The rules in use.
    pub fn config(&self) -> CheckpointConfig {
        self.config
    }

    /// A persistent session is connected here: its first checkpoint is due at once (until it
    /// is written, its record may say nothing of where it stands).
    pub fn track(&mut self, key: K) {
        self.sessions.insert(
            key.clone(),
            Session {
                last: None,
                dirty: true,
                acks: 0,
                urgent: false,
                in_flight: None,
                next: None,
            },
        );
        self.soon.push(key);
    }

    /// The session is no longer connected here (its own record write covers it).
    pub fn untrack(&mut self, key: &K) {
        self.sessions.remove(key);
    }

    /// Whether the session is tracked.
    pub fn is_tracked(&self, key: &K) -> bool {
        self.sessions.contains_key(key)
    }

    /// A QoS 1/2 PUBLISH was sent to the session.
    pub fn sent(&mut self, key: &K) {
        if let Some(s) = self.sessions.get_mut(key) {
            s.dirty = true;
        }
    }

    /// The client acknowledged a message (PUBACK, PUBREC, PUBCOMP).
    pub fn acked(&mut self, key: &K) {
        if let Some(s) = self.sessions.get_mut(key) {
            s.dirty = true;
            s.acks = s.acks.saturating_add(1);
            if self.config.acks > 0 && s.acks == self.config.acks {
                self.soon.push(key.clone());
            }
        }
    }

    /// A packet for the session must wait for its record ([`waits_for_record`]): the number
    /// of the checkpoint that will carry it (the next one to start; a write in flight
    /// started before the packet existed). `None` when the session is not tracked.
    pub fn hold(&mut self, key: &K) -> Option<u64> {
        let s = self.sessions.get_mut(key)?;
        s.dirty = true;
        if !s.urgent {
            s.urgent = true;
            self.soon.push(key.clone());
        }
        let numbered = &mut self.numbered;
        Some(*s.next.get_or_insert_with(|| {
            *numbered += 1;
            *numbered
        }))
    }

    /// The checkpoints to start now, each with its number: sessions with packets waiting, or
    /// enough acknowledgements, or whose record is older than the interval while something
    /// moved; never one with a write in flight. Each is marked started.
    pub fn due(&mut self, now: Instant) -> Vec<(K, u64)> {
        let mut out = Vec::new();
        let scan = self.next_scan.is_none_or(|at| now >= at);
        let candidates: Vec<K> = if scan {
            self.next_scan = Some(now + self.config.interval / 4);
            self.soon.clear();
            self.sessions.keys().cloned().collect()
        } else {
            std::mem::take(&mut self.soon)
        };
        let config = self.config;
        for key in candidates {
            let Some(s) = self.sessions.get_mut(&key) else {
                continue;
            };
            if s.in_flight.is_some() {
                // Looked at again when it is written (`written` puts it back if needed).
                continue;
            }
            let old = s
                .last
                .is_none_or(|at| now.saturating_duration_since(at) >= config.interval);
            let acks = config.acks > 0 && s.acks >= config.acks;
            if s.urgent || (s.dirty && (old || acks)) {
                let n = s.next.take().unwrap_or_else(|| {
                    self.numbered += 1;
                    self.numbered
                });
                s.in_flight = Some(n);
                s.last = Some(now);
                s.dirty = false;
                s.acks = 0;
                s.urgent = false;
                out.push((key, n));
            }
        }
        out
    }

    /// The checkpoint numbered `n` is written: the packets held for it, and for every one
    /// before it, may go. A session whose packets wait for the next one is due again.
    pub fn written(&mut self, key: &K, n: u64) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if s.in_flight == Some(n) {
            s.in_flight = None;
        }
        if s.urgent || (self.config.acks > 0 && s.acks >= self.config.acks) {
            self.soon.push(key.clone());
        }
    }

    /// The checkpoint numbered `n` could not be made now (the session's record cannot say
    /// where it stands yet, e.g. its replay is not back): it is due again, with the packets
    /// that waited for it.
    pub fn not_made(&mut self, key: &K, n: u64) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if s.in_flight == Some(n) {
            s.in_flight = None;
            s.dirty = true;
            s.urgent = true;
            // The packets held for `n` wait for the next: numbers only grow, and the shell
            // releases by "at or below".
            if s.next.is_none() {
                self.numbered += 1;
                s.next = Some(self.numbered);
            }
            self.soon.push(key.clone());
        }
    }

    /// When [`Checkpoints::due`] should be asked next at the latest (`None`: nothing
    /// tracked).
    pub fn next_due(&self) -> Option<Instant> {
        if self.sessions.is_empty() {
            return None;
        }
        self.next_scan
    }

    /// Whether some session may be due before the next scan.
    pub fn has_soon(&self) -> bool {
        !self.soon.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use makelaar_proto::{PubAck, Publish};

    fn config() -> CheckpointConfig {
        CheckpointConfig {
            interval: Duration::from_millis(100),
            acks: 3,
        }
    }

    fn publish(qos: QoS) -> Packet {
        Packet::Publish(Publish {
            qos,
            packet_id: 1,
            topic: "t".into(),
            ..Publish::default()
        })
    }

    #[test]
    fn qos2_publish_and_pubrel_wait_for_the_record_nothing_else_does() {
        assert!(waits_for_record(&publish(QoS::ExactlyOnce)));
        assert!(waits_for_record(&Packet::PubRel(PubAck::new(1))));
        assert!(!waits_for_record(&publish(QoS::AtLeastOnce)));
        assert!(!waits_for_record(&publish(QoS::AtMostOnce)));
        assert!(!waits_for_record(&Packet::PubAck(PubAck::new(1))));
        assert!(is_progress(&Packet::PubAck(PubAck::new(1))));
        assert!(!is_progress(&Packet::PubRel(PubAck::new(1))));
    }

    #[test]
    fn a_new_session_is_written_at_once_then_at_most_every_interval() {
        let t0 = Instant::now();
        let mut c = Checkpoints::new(config());
        c.track("s");
        assert_eq!(c.due(t0), [("s", 1)]);
        c.written(&"s", 1);
        // Something moved, but the record is younger than the interval.
        c.sent(&"s");
        assert!(c.due(t0 + Duration::from_millis(10)).is_empty());
        assert!(c.due(t0 + Duration::from_millis(60)).is_empty());
        assert_eq!(c.due(t0 + Duration::from_millis(100)), [("s", 2)]);
        c.written(&"s", 2);
        // Nothing moved: nothing written, however old the record.
        assert!(c.due(t0 + Duration::from_secs(10)).is_empty());
    }

    #[test]
    fn enough_acks_write_before_the_interval() {
        let t0 = Instant::now();
        let mut c = Checkpoints::new(config());
        c.track("s");
        assert_eq!(c.due(t0), [("s", 1)]);
        c.written(&"s", 1);
        c.acked(&"s");
        c.acked(&"s");
        assert!(c.due(t0 + Duration::from_millis(1)).is_empty());
        c.acked(&"s");
        assert_eq!(c.due(t0 + Duration::from_millis(2)), [("s", 2)]);
    }

    #[test]
    fn held_packets_go_with_the_next_write_and_one_write_is_in_flight_at_most() {
        let t0 = Instant::now();
        let mut c = Checkpoints::new(config());
        c.track("s");
        assert_eq!(c.hold(&"s"), Some(1));
        assert_eq!(c.due(t0), [("s", 1)]);
        // While 1 is in flight, a new packet waits for 2, which starts only after 1.
        assert_eq!(c.hold(&"s"), Some(2));
        assert_eq!(c.hold(&"s"), Some(2));
        assert!(c.due(t0 + Duration::from_millis(1)).is_empty());
        c.written(&"s", 1);
        // Due at once (not after the interval): packets wait.
        assert_eq!(c.due(t0 + Duration::from_millis(2)), [("s", 2)]);
        c.written(&"s", 2);
        assert!(c.due(t0 + Duration::from_millis(3)).is_empty());
        assert_eq!(c.hold(&"untracked"), None);
    }

    #[test]
    fn a_checkpoint_not_made_is_due_again_with_its_packets() {
        let t0 = Instant::now();
        let mut c = Checkpoints::new(config());
        c.track("s");
        assert_eq!(c.hold(&"s"), Some(1));
        assert_eq!(c.due(t0), [("s", 1)]);
        c.not_made(&"s", 1);
        // The next one carries the packets held for 1 (released by "at or below").
        assert_eq!(c.due(t0 + Duration::from_millis(1)), [("s", 2)]);
    }

    #[test]
    fn numbers_grow_over_sessions_and_trackings() {
        let t0 = Instant::now();
        let mut c = Checkpoints::new(config());
        c.track("s");
        assert_eq!(c.due(t0), [("s", 1)]);
        // The client reconnects here: a new tracking, while 1 is still being written.
        c.track("s");
        assert_eq!(c.hold(&"s"), Some(2));
        // The late answer for 1 is not this tracking's (it releases only up to 1).
        c.written(&"s", 1);
        c.track("t");
        let mut due = c.due(t0 + Duration::from_millis(1));
        due.sort();
        assert_eq!(due, [("s", 2), ("t", 3)]);
    }

    #[test]
    fn untracked_sessions_are_never_due() {
        let t0 = Instant::now();
        let mut c = Checkpoints::new(config());
        c.track("s");
        c.untrack(&"s");
        assert!(c.due(t0).is_empty());
        assert_eq!(c.next_due(), None);
    }
}
