//! What one node counts about its part in the cluster, for its `/metrics`, `$SYS` topics and
//! dashboard: plain atomics written where the work happens (the lease task, appends, the
//! partition followers, claims and hand-overs) and read by whoever shows them. Nothing here
//! asks NATS anything; `makelaar cluster status` ([`crate::status`]) is the view from outside.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::partition::{Partition, PartitionCount};

/// A node's cluster figures. Counters only grow; gauges hold the latest value.
#[derive(Debug)]
pub struct NodeStats {
    /// Whether this node holds its lease and serves (false before the first lease write and
    /// while stepped down).
    serving: AtomicBool,
    /// Times this node stepped down (its lease not refreshed in time).
    pub step_downs: AtomicU64,
    /// Nodes whose lease is in the leases bucket at the last read, this one included.
    pub nodes_alive: AtomicU64,
    /// The last lease write's round trip to the engine, in microseconds (0: none yet).
    pub round_trip_us: AtomicU64,
    /// Lease writes that succeeded.
    pub lease_writes: AtomicU64,
    /// Lease writes that failed.
    pub lease_failures: AtomicU64,
    /// QoS 1/2 messages appended to their partition stream (on disk on a majority).
    pub appends: AtomicU64,
    /// Appends that failed (their publishers were disconnected unacknowledged).
    pub append_failures: AtomicU64,
    /// QoS 0 messages published on the live subjects.
    pub published: AtomicU64,
    /// QoS 0 publishes that failed.
    pub publish_failures: AtomicU64,
    /// Retained messages set or cleared in the cluster's bucket.
    pub retained_writes: AtomicU64,
    /// Client-id claims won.
    pub claims: AtomicU64,
    /// Client-id claims that failed.
    pub claim_failures: AtomicU64,
    /// Claims that had to ask another node to hand a live connection over.
    pub handovers_asked: AtomicU64,
    /// Hand-over requests this node received (another node took a client from here).
    pub handovers_given: AtomicU64,
    /// Late appends this node's followers and replays dropped: messages appended after a
    /// barrier of a newer claim of their publisher (`crate::barrier`).
    pub late_dropped: AtomicU64,
    /// Messages in the router's queue to the cluster (written by the broker).
    pub queued: AtomicU64,
    /// The bound of that queue (0: none).
    pub queue_limit: AtomicU64,
    /// Times that queue was full and the router waited.
    pub queue_full: AtomicU64,
    partitions: Vec<PartitionStats>,
}

/// One partition stream as this node sees it.
#[derive(Debug, Default)]
pub struct PartitionStats {
    /// The stream sequence of this node's last append (0: none yet).
    pub last_appended: AtomicU64,
    /// The stream sequence of the last message this node's follower read (0: none yet).
    pub last_followed: AtomicU64,
    /// Messages in the stream after the last one the follower read, as the engine said
    /// with it: the follower's lag.
    pub follow_pending: AtomicU64,
    /// Messages the follower read (every node's, this one's too).
    pub followed: AtomicU64,
}

impl NodeStats {
    /// Figures at zero for `partitions` partition streams.
    pub fn new(partitions: PartitionCount) -> NodeStats {
        NodeStats {
            serving: AtomicBool::new(false),
            step_downs: AtomicU64::new(0),
            nodes_alive: AtomicU64::new(0),
            round_trip_us: AtomicU64::new(0),
            lease_writes: AtomicU64::new(0),
            lease_failures: AtomicU64::new(0),
            appends: AtomicU64::new(0),
            append_failures: AtomicU64::new(0),
            published: AtomicU64::new(0),
            publish_failures: AtomicU64::new(0),
            retained_writes: AtomicU64::new(0),
            claims: AtomicU64::new(0),
            claim_failures: AtomicU64::new(0),
            handovers_asked: AtomicU64::new(0),
            handovers_given: AtomicU64::new(0),
            late_dropped: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            queue_limit: AtomicU64::new(0),
            queue_full: AtomicU64::new(0),
            partitions: partitions
                .all()
                .map(|_| PartitionStats::default())
                .collect(),
        }
    }

    /// Whether this node serves.
    pub fn serving(&self) -> bool {
        self.serving.load(Relaxed)
    }

    /// Records that this node serves (`true`) or stepped down.
    pub fn set_serving(&self, serving: bool) {
        let was = self.serving.swap(serving, Relaxed);
        if was && !serving {
            self.step_downs.fetch_add(1, Relaxed);
        }
    }

    /// The last measured round trip to the engine; `None` before the first.
    pub fn round_trip(&self) -> Option<Duration> {
        match self.round_trip_us.load(Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Records a round trip (at least a microsecond, so that 0 keeps meaning "none").
    pub fn set_round_trip(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        self.round_trip_us.store(us, Relaxed);
    }

    /// A partition's figures.
    pub fn partition(&self, p: Partition) -> Option<&PartitionStats> {
        self.partitions.get(usize::from(p.index()))
    }

    /// Every partition's figures, by index.
    pub fn partitions(&self) -> &[PartitionStats] {
        &self.partitions
    }

    /// Records an append's outcome.
    pub fn appended(&self, p: Partition, sequence: Option<u64>) {
        match sequence {
            Some(seq) => {
                self.appends.fetch_add(1, Relaxed);
                if let Some(s) = self.partition(p) {
                    s.last_appended.fetch_max(seq, Relaxed);
                }
            }
            None => {
                self.append_failures.fetch_add(1, Relaxed);
            }
        }
    }

    /// Records a message the follower of `p` read at `sequence`, with `pending` after it.
    pub fn followed(&self, p: Partition, sequence: Option<u64>, pending: Option<u64>) {
        if let Some(s) = self.partition(p) {
            s.followed.fetch_add(1, Relaxed);
            if let Some(seq) = sequence {
                s.last_followed.store(seq, Relaxed);
            }
            if let Some(n) = pending {
                s.follow_pending.store(n, Relaxed);
            }
        }
    }

    /// The sum of the followers' lag over every partition.
    pub fn follow_pending_total(&self) -> u64 {
        self.partitions
            .iter()
            .map(|p| p.follow_pending.load(Relaxed))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn serving_and_step_downs() {
        let s = NodeStats::new(PartitionCount::new(2).unwrap());
        assert!(!s.serving());
        // The first Serving is no step-down, nor is a start that never served.
        s.set_serving(false);
        assert_eq!(s.step_downs.load(Relaxed), 0);
        s.set_serving(true);
        s.set_serving(false);
        s.set_serving(false);
        assert_eq!(s.step_downs.load(Relaxed), 1);
        assert!(!s.serving());
    }

    #[test]
    fn appends_and_follows_per_partition() {
        let count = PartitionCount::new(2).unwrap();
        let s = NodeStats::new(count);
        let p1 = count.all().nth(1).unwrap();
        s.appended(p1, Some(7));
        s.appended(p1, Some(5)); // a later-finishing earlier append does not go back
        s.appended(p1, None);
        assert_eq!(s.appends.load(Relaxed), 2);
        assert_eq!(s.append_failures.load(Relaxed), 1);
        assert_eq!(s.partitions()[1].last_appended.load(Relaxed), 7);
        assert_eq!(s.partitions()[0].last_appended.load(Relaxed), 0);
        s.followed(p1, Some(8), Some(3));
        assert_eq!(s.partitions()[1].last_followed.load(Relaxed), 8);
        assert_eq!(s.follow_pending_total(), 3);
        assert_eq!(s.round_trip(), None);
        s.set_round_trip(Duration::from_nanos(10));
        assert_eq!(s.round_trip(), Some(Duration::from_micros(1)));
    }
}
