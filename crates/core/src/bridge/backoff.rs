//! The pause before a bridge reconnects (`restart_timeout`): constant, or decorrelated jitter
//! between a base and a cap, back to the base after a connection that lasted long enough.

use std::time::Duration;

/// `restart_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Always this long.
    Constant(Duration),
    /// Decorrelated jitter: each pause is random between `base` and three times the last,
    /// at most `cap`; a connection that lasted `stable` (or, without it, any accepted
    /// connection) starts again from `base`.
    Jitter {
        base: Duration,
        cap: Duration,
        stable: Option<Duration>,
    },
}

/// The backoff state of one bridge. Random numbers come from a small generator seeded by
/// the shell, so a test can fix them.
#[derive(Debug, Clone)]
pub struct Backoff {
    restart: Restart,
    last: Duration,
    rng: u64,
}

impl Backoff {
    pub fn new(restart: Restart, seed: u64) -> Backoff {
        let last = match restart {
            Restart::Constant(d) => d,
            Restart::Jitter { base, .. } => base,
        };
        Backoff {
            restart,
            last,
            rng: seed | 1,
        }
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// The pause before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        match self.restart {
            Restart::Constant(d) => d,
            Restart::Jitter { base, cap, .. } => {
                let lo = base.as_millis() as u64;
                let hi = (self.last.as_millis() as u64).saturating_mul(3).max(lo + 1);
                let pick = lo + self.next_random() % (hi - lo);
                let d = Duration::from_millis(pick).min(cap);
                self.last = d;
                d
            }
        }
    }

    /// A connection was accepted and lasted `lasted`: back to the base pause when it was
    /// stable.
    pub fn connection_ended(&mut self, lasted: Duration) {
        if let Restart::Jitter { base, stable, .. } = self.restart {
            if stable.is_none_or(|s| lasted >= s) {
                self.last = base;
            }
        }
    }
}
