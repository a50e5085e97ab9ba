//! A token bucket: at most `rate` events per second on average, with bursts of up to `rate`.
//! Sans-IO like the rest of the core: the caller passes the time.

use std::time::Instant;

/// Thousandths of a token: integer arithmetic, exact at every rate.
const MILLI: u64 = 1000;

/// Counts events against a rate per second.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    /// Available, in thousandths of an event.
    tokens: u64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket for `rate` events per second (at least 1).
    pub fn new(rate: u32, now: Instant) -> TokenBucket {
        let rate = u64::from(rate.max(1));
        TokenBucket {
            rate,
            tokens: rate * MILLI,
            last: now,
        }
    }

    /// Takes one event if the rate allows it at `now`.
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed_ms = now.saturating_duration_since(self.last).as_millis();
        let elapsed_ms = u64::try_from(elapsed_ms).unwrap_or(u64::MAX);
        if elapsed_ms > 0 {
            // Tokens per millisecond = rate / 1000, in thousandths: rate per millisecond.
            let refill = elapsed_ms.saturating_mul(self.rate);
            self.tokens = self.tokens.saturating_add(refill).min(self.rate * MILLI);
            self.last = now;
        }
        if self.tokens >= MILLI {
            self.tokens -= MILLI;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is full at `now` (it then remembers nothing worth keeping).
    pub fn is_full(&self, now: Instant) -> bool {
        let elapsed_ms = now.saturating_duration_since(self.last).as_millis();
        let refill = u64::try_from(elapsed_ms)
            .unwrap_or(u64::MAX)
            .saturating_mul(self.rate);
        self.tokens.saturating_add(refill) >= self.rate * MILLI
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_of_rate_then_rate_per_second() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, t0);
        assert_eq!((0..20).filter(|_| b.allow(t0)).count(), 10);
        // 100 ms later: one more.
        let t1 = t0 + Duration::from_millis(100);
        assert!(b.allow(t1));
        assert!(!b.allow(t1));
        // A long pause refills to the burst, no more.
        let t2 = t1 + Duration::from_secs(60);
        assert!(b.is_full(t2));
        assert_eq!((0..20).filter(|_| b.allow(t2)).count(), 10);
    }

    #[test]
    fn over_a_long_run_the_average_holds() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(7, t0);
        let mut allowed = 0;
        for ms in 0..10_000u64 {
            if b.allow(t0 + Duration::from_millis(ms)) {
                allowed += 1;
            }
        }
        // 7 at once, then 7 per second for 10 s.
        assert!((70..=78).contains(&allowed), "{allowed}");
    }
}
