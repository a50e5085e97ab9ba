//! Which partition (JetStream stream) a topic's QoS 1/2 messages go to.
//!
//! The number of partitions P is configuration, the same on every node; it never grows with
//! clients or subscriptions (rule 2 of docs/cluster.md). A topic's partition is
//! `fnv1a64(topic's UTF-8 bytes) mod P`: FNV-1a with the 64-bit offset basis
//! `0xcbf29ce484222325` and prime `0x100000001b3`. It depends on the topic alone, so every
//! node sends a topic to the same partition and the messages of one topic keep their order
//! (one stream is one ordered log). Changing P moves topics between partitions: a cluster
//! changes it only when empty.

use std::fmt;
use std::num::NonZeroU16;

/// The number of partitions, at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartitionCount(NonZeroU16);

impl PartitionCount {
    /// One partition.
    pub const MIN: PartitionCount = PartitionCount(NonZeroU16::MIN);

    /// `n` partitions; `None` for 0.
    pub const fn new(n: u16) -> Option<PartitionCount> {
        match NonZeroU16::new(n) {
            Some(n) => Some(PartitionCount(n)),
            None => None,
        }
    }

    /// The number as an integer.
    pub fn get(self) -> u16 {
        self.0.get()
    }

    /// Every partition, in order.
    pub fn all(self) -> impl Iterator<Item = Partition> {
        (0..self.get()).map(Partition)
    }

    /// The partition of `topic` (a topic name, as published).
    pub fn of(self, topic: &str) -> Partition {
        let n = u64::from(self.get());
        // The remainder is below `n`, which fits u16.
        Partition(u16::try_from(fnv1a64(topic.as_bytes()) % n).unwrap_or(0))
    }

    /// `index` as a partition when it is below the count.
    pub fn partition(self, index: u16) -> Option<Partition> {
        (index < self.get()).then_some(Partition(index))
    }
}

/// One partition: an index below the [`PartitionCount`] it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Partition(u16);

impl Partition {
    /// The index, from 0.
    pub fn index(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// 64-bit FNV-1a.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fnv_vectors() {
        // The published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn pinned_partitions() {
        // Pinned: a change here moves topics between partitions of a running cluster.
        let p = PartitionCount::new(16).unwrap();
        assert_eq!(p.of("a").index(), (0xaf63_dc4c_8601_ec8c_u64 % 16) as u16);
        assert_eq!(
            p.of("foobar").index(),
            (0x8594_4171_f739_67e8_u64 % 16) as u16
        );
        assert!(PartitionCount::new(0).is_none());
        assert_eq!(p.partition(15).map(Partition::index), Some(15));
        assert_eq!(p.partition(16), None);
        assert_eq!(p.all().count(), 16);
    }

    #[test]
    fn spreads_topics() {
        let p = PartitionCount::new(8).unwrap();
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            counts[usize::from(p.of(&format!("sensor/{i}/temp")).index())] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }

    proptest! {
        #[test]
        fn stable_and_in_range(t in "\\PC{1,50}", n in 1u16..512) {
            let p = PartitionCount::new(n).unwrap();
            prop_assert!(p.of(&t).index() < n);
            prop_assert_eq!(p.of(&t), p.of(&t.clone()));
        }
    }
}
