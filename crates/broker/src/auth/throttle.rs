//! Slowing down repeated failed logins from one address.
//!
//! Each address with failed logins gets a schedule: its next attempt may start only at
//! `next_slot`, and each attempt pushes the slot on by a pause that doubles with every failure
//! (from [`FIRST_PAUSE`] up to [`MAX_PAUSE`]). So attempts from a guessing address are
//! serialized, whether they come one after the other or all at once, and cost the password
//! pool at most one hash per pause; other addresses are not slowed at all. A successful login
//! clears the address, and so do [`FORGET_AFTER`] without a failure.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The pause after the first failure.
pub(crate) const FIRST_PAUSE: Duration = Duration::from_millis(200);
/// The longest pause between two attempts of one address.
pub(crate) const MAX_PAUSE: Duration = Duration::from_secs(8);
/// How long an address is remembered after its last failure.
pub(crate) const FORGET_AFTER: Duration = Duration::from_secs(600);
/// An attempt that would have to wait longer than this is refused at once.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(30);
/// Addresses remembered at most (a flood from many addresses must not grow this without end).
const MAX_ADDRESSES: usize = 100_000;
/// Failures after which an address is logged as being slowed down.
const LOG_AT: u32 = 5;

#[derive(Debug)]
struct Entry {
    failures: u32,
    next_slot: Instant,
    last_failure: Instant,
}

/// What [`Throttle::reserve`] decided for one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// Go ahead after this wait (zero for an address without failures).
    After(Duration),
    /// The address has so many attempts queued that this one is refused without trying.
    Refused,
}

/// Failed logins per source address. Shared by the connection tasks; each call holds the lock
/// for a hash-map operation only.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    addresses: Mutex<HashMap<IpAddr, Entry>>,
}

fn pause(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_PAUSE.saturating_mul(1 << doublings).min(MAX_PAUSE)
}

impl Throttle {
    /// When an attempt from `ip` starting `now` may check its password.
    pub(crate) fn reserve(&self, ip: IpAddr, now: Instant) -> Slot {
        let mut map = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
        let Some(e) = map.get_mut(&ip) else {
            return Slot::After(Duration::ZERO);
        };
        if now.saturating_duration_since(e.last_failure) >= FORGET_AFTER {
            map.remove(&ip);
            return Slot::After(Duration::ZERO);
        }
        let slot = e.next_slot.max(now);
        let wait = slot - now;
        if wait > MAX_WAIT {
            return Slot::Refused;
        }
        e.next_slot = slot + pause(e.failures);
        Slot::After(wait)
    }

    /// Records a failed login from `ip`.
    pub(crate) fn failed(&self, ip: IpAddr, now: Instant) {
        let mut map = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_ADDRESSES && !map.contains_key(&ip) {
            map.retain(|_, e| now.saturating_duration_since(e.last_failure) < FORGET_AFTER);
            if map.len() >= MAX_ADDRESSES {
                return; // still full: this address goes untracked rather than memory growing
            }
        }
        let e = map.entry(ip).or_insert(Entry {
            failures: 0,
            next_slot: now,
            last_failure: now,
        });
        e.failures = e.failures.saturating_add(1);
        e.last_failure = now;
        e.next_slot = e.next_slot.max(now + pause(e.failures));
        if e.failures == LOG_AT {
            tracing::warn!(%ip, failures = e.failures, "repeated failed logins from this address: slowing down its attempts");
        }
    }

    /// Forgets the failures of `ip` after a successful login.
    pub(crate) fn succeeded(&self, ip: IpAddr) {
        let mut map = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&ip);
    }

    /// Addresses currently remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.addresses.lock().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn an_address_without_failures_never_waits() {
        let t = Throttle::default();
        let now = Instant::now();
        for _ in 0..100 {
            assert_eq!(t.reserve(A, now), Slot::After(Duration::ZERO));
        }
    }

    #[test]
    fn failures_serialize_and_space_out_attempts() {
        let t = Throttle::default();
        let now = Instant::now();
        t.failed(A, now);
        // Three attempts at once: one slot each, FIRST_PAUSE apart.
        assert_eq!(t.reserve(A, now), Slot::After(FIRST_PAUSE));
        assert_eq!(t.reserve(A, now), Slot::After(FIRST_PAUSE * 2));
        assert_eq!(t.reserve(A, now), Slot::After(FIRST_PAUSE * 3));
        // Another address is not affected.
        assert_eq!(t.reserve(B, now), Slot::After(Duration::ZERO));
    }

    #[test]
    fn the_pause_doubles_up_to_its_maximum() {
        assert_eq!(pause(1), FIRST_PAUSE);
        assert_eq!(pause(2), FIRST_PAUSE * 2);
        assert_eq!(pause(3), FIRST_PAUSE * 4);
        assert_eq!(pause(100), MAX_PAUSE);
        assert_eq!(pause(u32::MAX), MAX_PAUSE);
    }

    #[test]
    fn a_flood_is_refused_beyond_the_longest_wait() {
        let t = Throttle::default();
        let now = Instant::now();
        for _ in 0..20 {
            t.failed(A, now);
        }
        let mut refused = 0;
        let mut admitted = 0;
        for _ in 0..1000 {
            match t.reserve(A, now) {
                Slot::After(w) => {
                    assert!(w <= MAX_WAIT);
                    admitted += 1;
                }
                Slot::Refused => refused += 1,
            }
        }
        // At most one attempt per MAX_PAUSE within MAX_WAIT.
        assert!(admitted <= (MAX_WAIT.as_secs() / MAX_PAUSE.as_secs() + 2) as usize);
        assert_eq!(admitted + refused, 1000);
    }

    #[test]
    fn success_and_time_forget_an_address() {
        let t = Throttle::default();
        let now = Instant::now();
        t.failed(A, now);
        t.succeeded(A);
        assert_eq!(t.reserve(A, now), Slot::After(Duration::ZERO));
        t.failed(B, now);
        assert_eq!(
            t.reserve(B, now + FORGET_AFTER),
            Slot::After(Duration::ZERO)
        );
        assert_eq!(t.len(), 0);
    }
}
