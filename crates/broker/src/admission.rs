//! Admission of new connections: the `max_connections` of its listener, counted when a
//! connection is accepted, and `max_connection_rate` per client address, counted once the
//! address is known (after a PROXY header or WebSocket upgrade that may name another). A connection over a limit is
//! still read up to its CONNECT (within `connect_timeout`), so that it can be told why:
//! CONNACK 0x97 Quota exceeded or 0x9F Connection rate exceeded (3.1.1: 3, server
//! unavailable). The broker-wide `max_connections` is the core's (CONNACK 0x97 too).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use makelaar_core::rate::TokenBucket;
use makelaar_proto::ReasonCode;

/// Source addresses remembered at most; when full, addresses whose bucket is full again
/// (they have been quiet for a second or more) are forgotten first.
const MAX_ADDRESSES: usize = 100_000;

/// The open connections of one listener, against its `max_connections`, and how many it
/// accepted (for the metrics). Only its accept loop adds, so the atomics are not contended.
#[derive(Debug)]
pub(crate) struct ListenerCount {
    /// `scheme://address` as bound: the `listener` label of the metrics.
    pub url: String,
    open: AtomicUsize,
    accepted: AtomicU64,
    max: usize,
}

impl ListenerCount {
    pub(crate) fn new(url: &str, max: usize) -> Arc<ListenerCount> {
        Arc::new(ListenerCount {
            url: url.to_string(),
            open: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            max,
        })
    }

    /// Counts an accepted connection as open until the returned guard is dropped; also
    /// returns how many are open with it.
    pub(crate) fn add(self: &Arc<Self>) -> (Counted, usize) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        (Counted(self.clone()), open)
    }

    /// Connections open now (accepted and not yet closed, whether or not they got in).
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// The listener's `max_connections`; 0 is no limit.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Connections accepted since the start.
    pub(crate) fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// One open connection, counted until it is dropped.
#[derive(Debug)]
pub(crate) struct Counted(Arc<ListenerCount>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The per-address connection rate.
#[derive(Debug)]
pub(crate) struct Admission {
    rate: u32,
    buckets: Mutex<HashMap<IpAddr, TokenBucket>>,
}

impl Admission {
    /// `rate` new connections per second per source address; 0 is no limit.
    pub(crate) fn new(rate: u32) -> Admission {
        Admission {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a connection accepted on `listener`: the count to hold while it is open, and
    /// the reason to refuse it with if the listener is full.
    pub(crate) fn enter(&self, listener: &Arc<ListenerCount>) -> (Counted, Option<ReasonCode>) {
        let (counted, open) = listener.add();
        if listener.max != 0 && open > listener.max {
            return (counted, Some(ReasonCode::QUOTA_EXCEEDED));
        }
        (counted, None)
    }

    /// Counts a new connection from the client address `ip` against `max_connection_rate`:
    /// the reason to refuse it with, if it is over.
    pub(crate) fn check_rate(&self, ip: IpAddr, now: Instant) -> Option<ReasonCode> {
        if self.rate != 0 && !self.allow(ip, now) {
            return Some(ReasonCode::CONNECTION_RATE_EXCEEDED);
        }
        None
    }

    fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_ADDRESSES && !buckets.contains_key(&ip) {
            buckets.retain(|_, b| !b.is_full(now));
            if buckets.len() >= MAX_ADDRESSES {
                return true; // still full: this address goes unlimited rather than memory grow
            }
        }
        buckets
            .entry(ip)
            .or_insert_with(|| TokenBucket::new(self.rate, now))
            .allow(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn a_listener_refuses_past_its_maximum_until_one_closes() {
        let adm = Admission::new(0);
        let l = ListenerCount::new("mqtt://x", 2);
        let (first, r1) = adm.enter(&l);
        let (_second, r2) = adm.enter(&l);
        let (third, r3) = adm.enter(&l);
        assert_eq!((r1, r2, r3), (None, None, Some(ReasonCode::QUOTA_EXCEEDED)));
        assert_eq!((l.open(), l.accepted()), (3, 3));
        drop(third);
        drop(first);
        assert_eq!(l.open(), 1);
        assert_eq!(adm.enter(&l).1, None);
        assert_eq!((l.open(), l.accepted()), (1, 4));
    }

    #[test]
    fn the_rate_is_per_source_address() {
        let adm = Admission::new(3);
        let now = Instant::now();
        let refused = (0..5)
            .filter(|_| adm.check_rate(A, now) == Some(ReasonCode::CONNECTION_RATE_EXCEEDED))
            .count();
        assert_eq!(refused, 2);
        assert_eq!(adm.check_rate(B, now), None);
        assert_eq!(adm.check_rate(A, now + Duration::from_secs(1)), None);
    }
}
