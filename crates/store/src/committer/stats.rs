//! The committer's counters: atomics written by its thread (once per commit, never per
//! message), read from any thread.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::merge::Merged;

#[derive(Default)]
pub(super) struct Counters {
    commits: AtomicU64,
    fsyncs: AtomicU64,
    batches_submitted: AtomicU64,
    ops_submitted: AtomicU64,
    batches_committed: AtomicU64,
    ops_written: AtomicU64,
    ops_cancelled: AtomicU64,
    commit_nanos: AtomicU64,
    fsync_nanos: AtomicU64,
    last_commit_nanos: AtomicU64,
    max_commit_nanos: AtomicU64,
    pending_ops: AtomicU64,
    pending_bytes: AtomicU64,
    /// Commits by duration: bucket `i` counts those up to `COMMIT_SECONDS_BOUNDS[i]`, the
    /// last one the rest.
    commit_seconds: [AtomicU64; COMMIT_SECONDS_BOUNDS.len() + 1],
    /// Commits by ops written, likewise against `COMMIT_OPS_BOUNDS`.
    commit_ops: [AtomicU64; COMMIT_OPS_BOUNDS.len() + 1],
}

/// Upper bounds (seconds) of the commit-duration histogram: 100 µs to 2.5 s, about 2.5× apart.
pub const COMMIT_SECONDS_BOUNDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Upper bounds of the ops-per-commit histogram (the group commit's batch size).
pub const COMMIT_OPS_BOUNDS: [f64; 12] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0, 20000.0,
];

/// The bucket of `v` among `bounds` (the one past the end when larger than all).
fn bucket(bounds: &[f64], v: f64) -> usize {
    bounds.iter().position(|&b| v <= b).unwrap_or(bounds.len())
}

fn load_all<const N: usize>(a: &[AtomicU64; N]) -> [u64; N] {
    std::array::from_fn(|i| a.get(i).map_or(0, |x| x.load(Relaxed)))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Counters {
    pub(super) fn submitted(&self, ops: usize, pending_ops: usize, pending_bytes: usize) {
        self.batches_submitted.fetch_add(1, Relaxed);
        self.ops_submitted.fetch_add(ops as u64, Relaxed);
        self.pending(pending_ops, pending_bytes);
    }

    pub(super) fn pending(&self, ops: usize, bytes: usize) {
        self.pending_ops.store(ops as u64, Relaxed);
        self.pending_bytes.store(bytes as u64, Relaxed);
    }

    pub(super) fn committed(&self, batches: usize, merged: &Merged, sync: bool, took: Duration) {
        let ns = nanos(took);
        self.commits.fetch_add(1, Relaxed);
        self.batches_committed.fetch_add(batches as u64, Relaxed);
        self.ops_written.fetch_add(merged.ops.len() as u64, Relaxed);
        self.ops_cancelled.fetch_add(merged.cancelled, Relaxed);
        self.commit_nanos.fetch_add(ns, Relaxed);
        self.last_commit_nanos.store(ns, Relaxed);
        self.max_commit_nanos.fetch_max(ns, Relaxed);
        if sync {
            self.fsyncs.fetch_add(1, Relaxed);
            self.fsync_nanos.fetch_add(ns, Relaxed);
        }
        let i = bucket(&COMMIT_SECONDS_BOUNDS, took.as_secs_f64());
        if let Some(b) = self.commit_seconds.get(i) {
            b.fetch_add(1, Relaxed);
        }
        let i = bucket(&COMMIT_OPS_BOUNDS, merged.ops.len() as f64);
        if let Some(b) = self.commit_ops.get(i) {
            b.fetch_add(1, Relaxed);
        }
    }

    pub(super) fn snapshot(&self) -> CommitStats {
        let d = |a: &AtomicU64| Duration::from_nanos(a.load(Relaxed));
        CommitStats {
            commits: self.commits.load(Relaxed),
            fsyncs: self.fsyncs.load(Relaxed),
            batches_submitted: self.batches_submitted.load(Relaxed),
            ops_submitted: self.ops_submitted.load(Relaxed),
            batches_committed: self.batches_committed.load(Relaxed),
            ops_written: self.ops_written.load(Relaxed),
            ops_cancelled: self.ops_cancelled.load(Relaxed),
            commit_time: d(&self.commit_nanos),
            fsync_time: d(&self.fsync_nanos),
            last_commit: d(&self.last_commit_nanos),
            max_commit: d(&self.max_commit_nanos),
            pending_ops: self.pending_ops.load(Relaxed),
            pending_bytes: self.pending_bytes.load(Relaxed),
            commit_seconds: load_all(&self.commit_seconds),
            commit_ops: load_all(&self.commit_ops),
        }
    }
}

/// A snapshot of the committer's counters (for `$SYS` and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommitStats {
    /// Groups committed (one write transaction each, the empty durable ones of batch mode
    /// included).
    pub commits: u64,
    /// Commits made durable with fsync.
    pub fsyncs: u64,
    pub batches_submitted: u64,
    pub ops_submitted: u64,
    /// Batches whose group was committed.
    pub batches_committed: u64,
    /// Ops written after merging.
    pub ops_written: u64,
    /// Ops dropped by merging: overwritten or deleted within their group.
    pub ops_cancelled: u64,
    /// Total time spent committing.
    pub commit_time: Duration,
    /// Total time spent in durable commits (writes and fsync).
    pub fsync_time: Duration,
    pub last_commit: Duration,
    pub max_commit: Duration,
    /// Ops and bytes waiting for the next group.
    pub pending_ops: u64,
    pub pending_bytes: u64,
    /// Commits by duration, against [`COMMIT_SECONDS_BOUNDS`] (not cumulative; the last
    /// bucket counts those longer than every bound).
    pub commit_seconds: [u64; COMMIT_SECONDS_BOUNDS.len() + 1],
    /// Commits by ops written, against [`COMMIT_OPS_BOUNDS`] (likewise).
    pub commit_ops: [u64; COMMIT_OPS_BOUNDS.len() + 1],
}

impl CommitStats {
    /// Mean number of submitted batches per commit: how well grouping works.
    pub fn mean_batches_per_commit(&self) -> f64 {
        self.batches_committed as f64 / self.commits.max(1) as f64
    }

    /// Mean time of one commit.
    pub fn mean_commit(&self) -> Duration {
        self.commit_time / u32::try_from(self.commits.max(1)).unwrap_or(u32::MAX)
    }

    /// Mean time of one durable commit (the fsync latency a submitter waits for).
    pub fn mean_fsync(&self) -> Duration {
        self.fsync_time / u32::try_from(self.fsyncs.max(1)).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_fall_in_the_first_bucket_that_holds_them() {
        assert_eq!(bucket(&COMMIT_OPS_BOUNDS, 0.0), 0);
        assert_eq!(bucket(&COMMIT_OPS_BOUNDS, 1.0), 0);
        assert_eq!(bucket(&COMMIT_OPS_BOUNDS, 3.0), 2);
        assert_eq!(bucket(&COMMIT_OPS_BOUNDS, 1e9), COMMIT_OPS_BOUNDS.len());
        assert_eq!(bucket(&COMMIT_SECONDS_BOUNDS, 0.003), 5);
    }

    #[test]
    fn a_commit_is_counted_in_both_histograms() {
        let c = Counters::default();
        let merged = Merged {
            ops: Vec::new(),
            cancelled: 0,
        };
        c.committed(2, &merged, true, Duration::from_millis(3));
        let s = c.snapshot();
        assert_eq!(s.commit_seconds.iter().sum::<u64>(), 1);
        assert_eq!(s.commit_seconds[5], 1);
        assert_eq!(s.commit_ops[0], 1);
        assert_eq!((s.commits, s.fsyncs, s.batches_committed), (1, 1, 2));
    }
}
