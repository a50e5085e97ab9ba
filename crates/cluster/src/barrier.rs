//! A claim's barriers, and the messages they make late (sans-IO).
//!
//! A node that claims a client from another node appends a barrier to every partition
//! stream ([`crate::cluster::Cluster::barriers_since`]). The barrier names the claims its
//! round stands for: each a client id and the registry revision of its claim. Every QoS 1/2
//! envelope names the claim its publisher's connection was registered under
//! ([`crate::envelope::Envelope::claim`]). A message of a client that comes after a barrier
//! of a newer claim of the same client, in the same partition, is a **late append**: its
//! publisher had moved on before it was appended (an append a cut-off node gave up on,
//! committed once the cut healed). Every reader of the partition finds the same order, so
//! every reader drops it alike: the followers of every node, and the replays of sessions
//! taken in. No clock decides it.
//!
//! Nothing acknowledged is among what is dropped: a node acknowledges a QoS 1/2 message only
//! once its own follower is past it, and the follower closes the publisher's connection
//! (5.0: 0x8E) when it meets a barrier of a newer claim of that client first
//! (`router` in the broker).
//!
//! [`Fences`] keeps what the barriers said, per partition and client, for a bounded time and
//! number: a late append comes within seconds of its barrier (the engine gives up a route
//! it cannot reach within seconds, docs/cluster.md "Late appends").

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::codec::{DecodeError, Reader, Writer};
use crate::ids::Revision;
use crate::record::FORMAT;

/// The most claims one round of barriers names; the claims beyond wait for the next round
/// (a barrier is one stream message, and NATS bounds a message's size).
pub const MAX_CLAIMS_PER_ROUND: usize = 1000;

/// How long a barrier's claims are kept for the late appends behind it.
pub const KEEP_BARRIERS: Duration = Duration::from_secs(600);

/// How many (partition, client) marks [`Fences`] keeps at most.
pub const MAX_MARKS: usize = 200_000;

/// One claim a barrier names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BarrierClaim {
    /// The client id claimed.
    pub client: Arc<str>,
    /// The registry revision of that claim.
    pub revision: Revision,
}

/// A barrier's payload: the claims of its round.
pub fn encode_claims(claims: &[BarrierClaim]) -> Bytes {
    let mut w = Writer::new(FORMAT);
    w.uint(claims.len() as u64);
    for c in claims {
        w.str(&c.client);
        w.uint(c.revision.get());
    }
    w.finish()
}

/// Reads a barrier's payload; an empty one (a node before barriers named claims) names none.
pub fn decode_claims(data: &[u8]) -> Result<Vec<BarrierClaim>, DecodeError> {
    if data.is_empty() {
        return Ok(Vec::new());
    }
    let mut r = Reader::new(data, FORMAT)?;
    let n = r.count("claims")?;
    let mut claims = Vec::with_capacity(n);
    for _ in 0..n {
        let client: Arc<str> = r.str("client")?.into();
        let revision =
            Revision::new(r.uint("revision")?).ok_or(DecodeError::BadValue("revision"))?;
        claims.push(BarrierClaim { client, revision });
    }
    r.end()?;
    Ok(claims)
}

/// Where a barrier named a claim: its partition, its sequence, the claim's revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    partition: u16,
    seq: u64,
    revision: Revision,
}

/// What the barriers read so far said, per client, bounded in age and number; the oldest
/// marks go first.
#[derive(Debug, Clone)]
pub struct Fences {
    marks: HashMap<Arc<str>, Vec<Mark>>,
    order: VecDeque<(Instant, Arc<str>, Mark)>,
    keep: Duration,
    max: usize,
    /// Marks forgotten for the bound on their number (not for their age).
    crowded_out: u64,
}

impl Default for Fences {
    fn default() -> Self {
        Fences::new(KEEP_BARRIERS, MAX_MARKS)
    }
}

impl Fences {
    /// Marks kept for `keep`, at most `max` of them.
    pub fn new(keep: Duration, max: usize) -> Fences {
        Fences {
            marks: HashMap::new(),
            order: VecDeque::new(),
            keep,
            max: max.max(1),
            crowded_out: 0,
        }
    }

    /// A barrier read at `now`: in `partition` at `seq`, naming `claims`.
    pub fn handle_barrier(
        &mut self,
        now: Instant,
        partition: u16,
        seq: u64,
        claims: &[BarrierClaim],
    ) {
        for c in claims {
            let mark = Mark {
                partition,
                seq,
                revision: c.revision,
            };
            let client = match self.marks.get_key_value(&*c.client) {
                Some((k, _)) => k.clone(),
                None => c.client.clone(),
            };
            self.marks.entry(client.clone()).or_default().push(mark);
            self.order.push_back((now, client, mark));
        }
        self.forget(now);
    }

    /// Whether a message of `client`, published under `claim`, at `seq` in `partition`, is a
    /// late append: a barrier of a newer claim of that client comes before it there.
    pub fn is_late(&self, partition: u16, seq: u64, client: &str, claim: Revision) -> bool {
        self.marks.get(client).is_some_and(|marks| {
            marks
                .iter()
                .any(|m| m.partition == partition && m.seq < seq && m.revision > claim)
        })
    }

    /// The newest claim of `client` a barrier read so far named (and kept).
    pub fn newest_claim(&self, client: &str) -> Option<Revision> {
        self.marks.get(client)?.iter().map(|m| m.revision).max()
    }

    /// Marks forgotten so far for the bound on their number.
    pub fn crowded_out(&self) -> u64 {
        self.crowded_out
    }

    /// How many marks are kept.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no mark is kept.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn forget(&mut self, now: Instant) {
        while let Some((at, _, _)) = self.order.front() {
            let too_many = self.order.len() > self.max;
            if !too_many && now.saturating_duration_since(*at) < self.keep {
                break;
            }
            let Some((_, client, mark)) = self.order.pop_front() else {
                break;
            };
            if too_many {
                self.crowded_out += 1;
                if self.crowded_out.is_power_of_two() {
                    tracing::warn!(max = self.max, forgotten = self.crowded_out, "the marks of claims' barriers are at their bound: the oldest are forgotten, and a late append behind one of them would be delivered");
                }
            }
            if let Some(marks) = self.marks.get_mut(&client) {
                if let Some(i) = marks.iter().position(|m| *m == mark) {
                    marks.swap_remove(i);
                }
                if marks.is_empty() {
                    self.marks.remove(&client);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use proptest::prelude::*;

    fn rev(r: u64) -> Revision {
        Revision::new(r).unwrap()
    }

    fn claim(client: &str, r: u64) -> BarrierClaim {
        BarrierClaim {
            client: client.into(),
            revision: rev(r),
        }
    }

    #[test]
    fn a_message_behind_a_barrier_of_a_newer_claim_is_late() {
        let t = Instant::now();
        let mut f = Fences::default();
        f.handle_barrier(t, 3, 100, &[claim("pub0", 50), claim("pub1", 60)]);
        // Behind the barrier, in the same partition, under an older claim: late.
        assert!(f.is_late(3, 101, "pub0", rev(49)));
        assert!(f.is_late(3, 101, "pub1", rev(10)));
        // Under the barrier's claim or a newer one: the client's own messages after it.
        assert!(!f.is_late(3, 101, "pub0", rev(50)));
        assert!(!f.is_late(3, 101, "pub0", rev(70)));
        // Before the barrier: appended before the claim.
        assert!(!f.is_late(3, 99, "pub0", rev(49)));
        // Another partition, another client.
        assert!(!f.is_late(4, 101, "pub0", rev(49)));
        assert!(!f.is_late(3, 101, "pub2", rev(1)));
        assert_eq!(f.newest_claim("pub0"), Some(rev(50)));
        assert_eq!(f.newest_claim("pub2"), None);
    }

    #[test]
    fn marks_are_forgotten_by_age_and_by_number() {
        let t = Instant::now();
        let mut f = Fences::new(Duration::from_secs(10), 3);
        f.handle_barrier(t, 0, 10, &[claim("a", 5)]);
        f.handle_barrier(t + Duration::from_secs(5), 0, 20, &[claim("b", 6)]);
        assert!(f.is_late(0, 11, "a", rev(1)));
        // Ten seconds after the first: it is gone, the second stays.
        f.handle_barrier(t + Duration::from_secs(10), 1, 30, &[claim("c", 7)]);
        assert!(!f.is_late(0, 11, "a", rev(1)));
        assert!(f.is_late(0, 21, "b", rev(1)));
        assert_eq!(f.len(), 2);
        assert_eq!(f.crowded_out(), 0);
        // Over the bound: the oldest goes.
        f.handle_barrier(
            t + Duration::from_secs(11),
            1,
            40,
            &[claim("d", 8), claim("e", 9)],
        );
        assert_eq!(f.len(), 3);
        assert_eq!(f.crowded_out(), 1);
        assert!(!f.is_late(0, 21, "b", rev(1)));
        assert!(f.is_late(1, 41, "e", rev(1)));
    }

    #[test]
    fn a_barrier_of_an_earlier_node_names_no_claim() {
        assert_eq!(decode_claims(&[]), Ok(Vec::new()));
    }

    fn claims() -> impl Strategy<Value = Vec<BarrierClaim>> {
        prop::collection::vec(("\\PC{0,23}", 1u64..), 0..8).prop_map(|v| {
            v.into_iter()
                .map(|(c, r)| BarrierClaim {
                    client: c.into(),
                    revision: rev(r),
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn claims_round_trip(c in claims()) {
            prop_assert_eq!(decode_claims(&encode_claims(&c)), Ok(c));
        }

        #[test]
        fn truncated_claims_are_refused(c in claims(), cut in any::<prop::sample::Index>()) {
            let data = encode_claims(&c);
            let cut = cut.index(data.len());
            // Cut to nothing: an earlier node's barrier, naming none.
            prop_assert!(cut == 0 || decode_claims(&data[..cut]).is_err());
        }

        #[test]
        fn garbage_never_panics(data in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_claims(&data);
        }

        /// Against the rule spelt out over every barrier read: a message is late exactly
        /// when some barrier before it in its partition named a newer claim of its client.
        #[test]
        fn late_is_a_newer_claim_earlier_in_the_partition(
            barriers in prop::collection::vec((0u16..3, 0u64..50, 0usize..3, 1u64..20), 0..30),
            probes in prop::collection::vec((0u16..3, 0u64..60, 0usize..3, 1u64..20), 1..30),
        ) {
            let names = ["a", "b", "c"];
            let t = Instant::now();
            let mut f = Fences::default();
            for &(p, seq, c, r) in &barriers {
                f.handle_barrier(t, p, seq, &[claim(names[c], r)]);
            }
            for &(p, seq, c, r) in &probes {
                let expected = barriers
                    .iter()
                    .any(|&(bp, bs, bc, br)| bp == p && bs < seq && bc == c && br > r);
                prop_assert_eq!(f.is_late(p, seq, names[c], rev(r)), expected);
            }
        }
    }
}
