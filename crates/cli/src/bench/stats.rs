//! What the load generator counts: the payload header, per-client counters, a log-linear
//! latency histogram and a sequence-number set for loss and duplicate detection.

use std::sync::atomic::{AtomicU64, Ordering};

/// First bytes of every bench payload, so a subscriber recognises them among other traffic.
pub const MAGIC: [u8; 4] = *b"MKB\x01";
/// Bytes of the header at the front of a bench payload: magic, run id, publisher index,
/// sequence number, send time.
pub const HEADER_LEN: usize = 4 + 4 + 4 + 8 + 8;

/// The header a publisher writes at the front of every payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Random per `makelaar bench` process: publishers of another run are told apart.
    pub run: u32,
    /// The publisher's client index.
    pub publisher: u32,
    /// 0, 1, 2, ... per publisher.
    pub seq: u64,
    /// CLOCK_MONOTONIC at send time, in nanoseconds (comparable between processes of one host).
    pub sent_ns: u64,
}

impl Header {
    /// Writes the header into the front of `buf` (at least [`HEADER_LEN`] bytes).
    pub fn write(&self, buf: &mut [u8]) {
        if let Some(h) = buf.get_mut(..HEADER_LEN) {
            h[..4].copy_from_slice(&MAGIC);
            h[4..8].copy_from_slice(&self.run.to_be_bytes());
            h[8..12].copy_from_slice(&self.publisher.to_be_bytes());
            h[12..20].copy_from_slice(&self.seq.to_be_bytes());
            h[20..28].copy_from_slice(&self.sent_ns.to_be_bytes());
        }
    }

    /// Reads a header from the front of a payload, if it is a bench payload.
    pub fn read(payload: &[u8]) -> Option<Header> {
        let h = payload.get(..HEADER_LEN)?;
        if h[..4] != MAGIC {
            return None;
        }
        let u32_at = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let u64_at = |i: usize| (u64::from(u32_at(i)) << 32) | u64::from(u32_at(i + 4));
        Some(Header {
            run: u32_at(4),
            publisher: u32_at(8),
            seq: u64_at(12),
            sent_ns: u64_at(20),
        })
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process of the host, so a
/// publisher and a subscriber in different processes can compute latency.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Counters of one simulated client, read by the progress line and the summary. Aligned to a
/// cache line so clients on different threads do not share one.
#[repr(align(64))]
#[derive(Debug, Default)]
pub struct Counters {
    pub published: AtomicU64,
    pub acked: AtomicU64,
    pub delivered: AtomicU64,
    /// QoS 1/2 messages sent and not yet acknowledged.
    pub inflight: AtomicU64,
    pub errors: AtomicU64,
}

impl Counters {
    pub fn add(c: &AtomicU64, n: u64) {
        if n != 0 {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            published: self.published.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            inflight: self.inflight.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

/// A sum of [`Counters`] at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub published: u64,
    pub acked: u64,
    pub delivered: u64,
    pub inflight: u64,
    pub errors: u64,
}

impl Snapshot {
    pub fn sum<'a>(all: impl IntoIterator<Item = &'a Counters>) -> Snapshot {
        let mut s = Snapshot::default();
        for c in all {
            let one = c.snapshot();
            s.published += one.published;
            s.acked += one.acked;
            s.delivered += one.delivered;
            s.inflight += one.inflight;
            s.errors += one.errors;
        }
        s
    }

    /// Counts since `earlier` (gauges such as `inflight` keep the later value).
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            published: self.published.saturating_sub(earlier.published),
            acked: self.acked.saturating_sub(earlier.acked),
            delivered: self.delivered.saturating_sub(earlier.delivered),
            inflight: self.inflight,
            errors: self.errors.saturating_sub(earlier.errors),
        }
    }
}

/// Linear sub-buckets per power of two: values are kept within 1/128 (0.8 %).
const SUB_BITS: u32 = 7;
const SUB: usize = 1 << SUB_BITS;
/// Values up to 2^40 ns (18 minutes) are kept; larger ones count in the last bucket.
const MAX_EXP: u32 = 40;
const BUCKETS: usize = (MAX_EXP as usize - SUB_BITS as usize + 2) * SUB;

/// A log-linear histogram of nanosecond values (HDR-like: relative precision 0.8 %), with the
/// exact maximum. Allocated on the first value.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
    sum: u128,
}

fn bucket_of(v: u64) -> usize {
    if v < (2 * SUB) as u64 {
        return v as usize;
    }
    let e = 63 - v.leading_zeros();
    if e > MAX_EXP {
        return BUCKETS - 1;
    }
    let shift = e - SUB_BITS;
    ((shift as usize) << SUB_BITS) + (v >> shift) as usize
}

/// The highest value that lands in bucket `i`.
fn bucket_high(i: usize) -> u64 {
    if i < 2 * SUB {
        return i as u64;
    }
    let shift = (i >> SUB_BITS) as u32 - 1;
    let top = (i - ((shift as usize) << SUB_BITS)) as u64;
    ((top + 1) << shift) - 1
}

impl Histogram {
    pub fn record(&mut self, v: u64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS];
        }
        if let Some(c) = self.counts.get_mut(bucket_of(v)) {
            *c += 1;
        }
        self.total += 1;
        self.max = self.max.max(v);
        self.sum += u128::from(v);
    }

    pub fn merge(&mut self, other: &Histogram) {
        if other.total == 0 {
            return;
        }
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS];
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += *b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value at quantile `q` (0.0..=1.0): the highest value of the bucket holding it, never
    /// above the maximum seen. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_high(i).min(self.max);
            }
        }
        self.max
    }
}

/// Which sequence numbers of one publisher were seen: a growable bit set.
#[derive(Debug, Clone, Default)]
pub struct SeqSet {
    words: Vec<u64>,
    distinct: u64,
    min: u64,
    max: u64,
}

/// Sequence numbers above this are not tracked (128 MiB of bits); a corrupt or foreign
/// payload cannot make the generator allocate without bound.
const MAX_TRACKED_SEQ: u64 = 1 << 30;

impl SeqSet {
    /// Adds `seq`; false when it was there already (a duplicate) or is out of range.
    pub fn insert(&mut self, seq: u64) -> bool {
        if seq >= MAX_TRACKED_SEQ {
            return false;
        }
        let w = (seq / 64) as usize;
        if w >= self.words.len() {
            let want = (w + 1).max(self.words.len() * 2).max(16);
            self.words.resize(want, 0);
        }
        let Some(word) = self.words.get_mut(w) else {
            return false;
        };
        let bit = 1u64 << (seq % 64);
        if *word & bit != 0 {
            return false;
        }
        *word |= bit;
        if self.distinct == 0 {
            self.min = seq;
            self.max = seq;
        } else {
            self.min = self.min.min(seq);
            self.max = self.max.max(seq);
        }
        self.distinct += 1;
        true
    }

    #[cfg(test)]
    pub fn contains(&self, seq: u64) -> bool {
        self.words
            .get((seq / 64) as usize)
            .is_some_and(|w| w & (1u64 << (seq % 64)) != 0)
    }

    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.distinct
    }

    /// Numbers between the lowest and the highest seen that are missing.
    pub fn gaps(&self) -> u64 {
        if self.distinct == 0 {
            0
        } else {
            (self.max - self.min + 1) - self.distinct
        }
    }

    /// How many of `0..n` are missing here.
    pub fn missing_below(&self, n: u64) -> u64 {
        let n = n.min(MAX_TRACKED_SEQ);
        let full = (n / 64) as usize;
        let mut present: u64 = self
            .words
            .iter()
            .take(full)
            .map(|w| u64::from(w.count_ones()))
            .sum();
        let rest = n % 64;
        if rest != 0 {
            if let Some(w) = self.words.get(full) {
                present += u64::from((w & ((1u64 << rest) - 1)).count_ones());
            }
        }
        n - present
    }

    /// How many numbers in `wanted` are missing here.
    pub fn missing_of(&self, wanted: &SeqSet) -> u64 {
        wanted
            .words
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let have = self.words.get(i).copied().unwrap_or(0);
                u64::from((w & !have).count_ones())
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = Header {
            run: 0xDEAD_BEEF,
            publisher: 7,
            seq: 1 << 40,
            sent_ns: 123_456_789_012,
        };
        let mut buf = [0u8; 64];
        h.write(&mut buf);
        assert_eq!(Header::read(&buf), Some(h));
        assert_eq!(Header::read(&buf[..HEADER_LEN - 1]), None);
        assert_eq!(Header::read(&[0u8; 64]), None);
    }

    #[test]
    fn buckets_are_contiguous_and_precise() {
        let mut last = 0;
        for v in (0..5_000_000u64).step_by(7).chain([1 << 39, u64::MAX / 2]) {
            let b = bucket_of(v);
            assert!(b >= last, "bucket order at {v}");
            last = b;
            let high = bucket_high(b);
            if v < 1 << MAX_EXP {
                assert!(high >= v, "{v} above its bucket's high {high}");
                assert!((high - v) as f64 <= v as f64 / 128.0 + 1.0, "{v} → {high}");
            }
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 - 5_000_000.0).abs() / 5_000_000.0 < 0.01, "{p50}");
        assert_eq!(h.quantile(1.0), 10_000_000);
        assert_eq!(h.max(), 10_000_000);
        let mut m = Histogram::default();
        m.merge(&h);
        m.merge(&Histogram::default());
        assert_eq!(m.count(), 10_000);
        assert_eq!(Histogram::default().quantile(0.99), 0);
    }

    #[test]
    fn seq_set_counts_gaps_duplicates_and_losses() {
        let mut s = SeqSet::default();
        for seq in [0, 1, 2, 5, 6, 200] {
            assert!(s.insert(seq));
        }
        assert!(!s.insert(5));
        assert!(s.contains(200) && !s.contains(3));
        assert_eq!(s.len(), 6);
        assert_eq!(s.gaps(), 201 - 6);
        assert_eq!(s.missing_below(7), 2);
        assert_eq!(s.missing_below(300), 300 - 6);
        let mut acked = SeqSet::default();
        for seq in 0..10 {
            acked.insert(seq);
        }
        assert_eq!(s.missing_of(&acked), 5); // 3, 4, 7, 8, 9
    }
}
