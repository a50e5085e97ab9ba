//! Arrival order between connections: the one home of the rule (issue 12).
//!
//! MQTT orders the messages of one client [MQTT-4.6.0-5]; between two clients it promises
//! nothing. Clients still count on the order in which their bytes reached the broker: a
//! responder that sends SUBSCRIBE and, without waiting for the SUBACK, has a requester publish
//! to that topic (Eclipse Paho's 5.0 interop test `test_request_response`) expects the PUBLISH
//! to find the subscription, as it mostly does with Mosquitto's single event loop.
//!
//! Makelaar's connection tasks run on tokio's multi-threaded scheduler, which runs the task
//! woken *last* by a turn of the reactor first (the worker's LIFO slot; the others wait in its
//! run queue). So of two clients whose packets arrive within one reactor turn, the later one's
//! task runs first, and its PUBLISH wakes the router (through the same slot) before the
//! earlier client's task has even read its SUBSCRIBE. Turning the slot off
//! (`Builder::disable_lifo_slot`) fixes that and slows every hand-over between tasks, and
//! making the router wait for pending connections cost the QoS 1 fan-in a tenth of its
//! throughput (docs/benchmarks.md, "Order between two connections"). Instead, the task that
//! jumped the queue steps back:
//!
//! 1. **A stamp from the reactor.** The reactor wakes connection tasks in the order in which
//!    their sockets turned readable (epoll reports them in that order). Each connection polls
//!    its stream with a waker of its own (its `Outbox`, see `outbox`), which takes a number
//!    from one clock when the reactor wakes it, before the task runs ([`Mark::set`]), and
//!    notes it in a small ring of recent wakes. What the task then reads carries that number
//!    ([`Mark::stamp`]); bytes read without a wake (a busy connection reading on) get a
//!    number after every wake stamped so far. A connection is *pending* from the reactor's
//!    wake until its task has forwarded what it read ([`Mark::clear`]). A wake that comes
//!    while the task is still at the previous one (a SUBSCRIBE right behind a PUBACK) keeps
//!    the connection pending, under that wake's own stamp, until the next poll has forwarded
//!    too: the task may have read before those bytes came.
//! 2. **The later one yields.** Before a task forwards what it read, it looks whether a
//!    connection woken shortly before its stamp is still pending ([`earlier_pending`]); if so
//!    it yields ([`let_earlier_forward`], at most [`MAX_YIELDS`] times and [`MAX_WAIT`]) so
//!    that the earlier task, queued on the same worker behind the LIFO slot, runs and
//!    forwards first. The router never waits, and only the task that actually jumped the
//!    queue pays (one extra trip through its worker's run queue).
//!
//! Only the last [`RING`] wakes are looked at: a connection woken earlier than that has had
//! time to run. A ring slot taken over by a later wake forgets the earlier one, which then is
//! not waited for (an order not kept, never a wait too many). The clock and the ring are
//! process-wide (several brokers in one process, as in tests, share them: a task may then
//! yield for another broker's connection, which costs a moment and changes no order).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::counters::Padded;

/// At most this many yields before a task forwards anyway: one lets every task queued on its
/// worker run first; a second covers a task that the first turn only woke.
pub const MAX_YIELDS: u32 = 2;
/// At most this long a task holds back what it read: when another worker took the earlier
/// task, that worker's thread may first have to be woken by the kernel.
pub const MAX_WAIT: Duration = Duration::from_micros(50);
/// How many of the latest wakes are remembered (a power of two). Tasks woken by one turn of
/// the reactor get consecutive stamps; a few dozen covers a busy turn.
const RING: u64 = 64;

/// The last wake's number (0: none yet). Stamps are twice the number: even for a wake, odd
/// (`2n + 1`) for a read after wake `n` without a wake of its own.
static CLOCK: Padded = Padded::new(0);
/// The stamps of the last `RING` wakes whose connection is still pending (0 once it is not),
/// at `number % RING`.
static RECENT: [AtomicU64; RING as usize] = [const { AtomicU64::new(0) }; RING as usize];

/// A mark that is no longer set: the connection is gone.
const RETIRED: u64 = u64::MAX;

fn slot(stamp: u64) -> &'static AtomicU64 {
    &RECENT[((stamp / 2) % RING) as usize]
}

/// A connection's arrival mark: the (even) stamp of the reactor's wake its task has not yet
/// forwarded for, and of a second wake that came while the task was still at the first. Kept
/// in the connection's `Outbox`.
///
/// Locked rather than lock-free: the reactor (on any thread) and the task both change the
/// two stamps together, it is taken once per wake and per read, and it is nearly never
/// contended.
#[derive(Debug, Default)]
pub struct Mark(Mutex<Stamps>);

#[derive(Debug, Default)]
struct Stamps {
    /// The wake the task has not yet forwarded for; 0: none; [`RETIRED`]: gone.
    first: u64,
    /// A wake that came while `first` was pending (0: none): the task may already have been
    /// past its read for it, so once `first` is forwarded the connection stays pending under
    /// this stamp until the next poll has read and forwarded what it woke for.
    again: u64,
}

impl Mark {
    fn lock(&self) -> std::sync::MutexGuard<'_, Stamps> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The reactor found the connection's socket ready: stamps the connection and notes it
    /// pending. A wake while it already is pending is noted as `again` (once).
    pub fn set(&self) {
        let mut m = self.lock();
        if m.first == RETIRED || m.again != 0 {
            return;
        }
        let stamp = (CLOCK.fetch_add(1, Ordering::Relaxed) + 1) * 2;
        slot(stamp).store(stamp, Ordering::Release);
        if m.first == 0 {
            m.first = stamp;
        } else {
            m.again = stamp;
        }
    }

    /// The stamp of bytes read now: the reactor's first wake not yet forwarded for; without
    /// one, one after every wake stamped so far and before the next.
    pub fn stamp(&self) -> u64 {
        match self.lock().first {
            0 | RETIRED => CLOCK.load(Ordering::Relaxed) * 2 + 1,
            first => first,
        }
    }

    /// The task has forwarded what it read (or found nothing to read) for the first wake: the
    /// connection is pending only under a wake that came since (`again`), if any.
    pub fn clear(&self) {
        let mut m = self.lock();
        if m.first == 0 || m.first == RETIRED {
            return;
        }
        unlist(m.first);
        m.first = std::mem::take(&mut m.again);
    }

    /// The connection is gone: no longer pending, and never again.
    pub fn retire(&self) {
        let mut m = self.lock();
        if m.first != 0 && m.first != RETIRED {
            unlist(m.first);
        }
        if m.again != 0 {
            unlist(m.again);
        }
        *m = Stamps {
            first: RETIRED,
            again: 0,
        };
    }
}

/// Takes a stamp out of the ring, unless a later wake has taken its slot.
fn unlist(stamp: u64) {
    let _ = slot(stamp).compare_exchange(stamp, 0, Ordering::Release, Ordering::Relaxed);
}

/// Whether a connection woken by the reactor before `stamp` (among the last `RING` wakes)
/// has not yet forwarded what it read.
pub fn earlier_pending(stamp: u64) -> bool {
    // The wakes before `stamp`: for a wake's even stamp 2n, numbers n-1 down; for a read's
    // odd 2n+1, n down.
    let last = stamp.saturating_sub(1) / 2;
    (0..RING - 1)
        .map_while(|back| last.checked_sub(back).filter(|&n| n > 0))
        .any(|n| slot(n * 2).load(Ordering::Acquire) == n * 2)
}

/// Yields while a connection woken before `stamp` is pending, at most [`MAX_YIELDS`] times
/// and [`MAX_WAIT`], so that what it read reaches the router first.
pub async fn let_earlier_forward(stamp: u64) {
    let start = Instant::now();
    for _ in 0..MAX_YIELDS {
        tokio::task::yield_now().await;
        if !earlier_pending(stamp) || start.elapsed() >= MAX_WAIT {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // CLOCK and RECENT are process-wide and other tests' connections may move them: only
    // these marks' own stamps are checked.

    #[test]
    fn a_mark_is_pending_from_the_wake_until_cleared_and_never_after_retiring() {
        let m = Mark::default();
        let before = m.stamp();
        m.set();
        let stamp = m.stamp();
        assert!(
            stamp > before,
            "a wake's stamp is after what was read before it"
        );
        assert_eq!(stamp % 2, 0);
        assert_eq!(slot(stamp).load(Ordering::Relaxed), stamp, "listed");
        m.clear();
        assert_ne!(slot(stamp).load(Ordering::Relaxed), stamp, "unlisted");
        let read = m.stamp();
        assert!(
            read > stamp && read % 2 == 1,
            "read without a wake: after every stamp given"
        );
        m.retire();
        m.set();
        assert_eq!(m.lock().first, RETIRED, "a gone connection is never marked");
        m.clear();
        assert_eq!(m.lock().first, RETIRED);
    }

    #[test]
    fn a_wake_while_pending_keeps_the_connection_pending_until_the_next_clear() {
        // The second wake (a SUBSCRIBE behind a PUBACK) may come after the task's read for
        // the first: the connection must stay pending, under the second wake's stamp, until
        // the poll after it has forwarded what it read.
        let (m, other) = (Mark::default(), Mark::default());
        m.set();
        let first = m.stamp();
        m.set();
        assert_eq!(
            m.stamp(),
            first,
            "what is read now counts from the first wake"
        );
        other.set();
        let third = other.stamp();
        m.set();
        m.clear();
        let again = m.stamp();
        assert!(again > first && again < third && again % 2 == 0);
        assert_ne!(slot(first).load(Ordering::Relaxed), first, "first unlisted");
        assert!(
            earlier_pending(third),
            "the second wake is before the other's"
        );
        m.clear();
        assert_ne!(
            slot(again).load(Ordering::Relaxed),
            again,
            "second unlisted"
        );
        assert_eq!(m.stamp() % 2, 1, "no longer pending");
        other.retire();
        m.set();
        m.set();
        let (a, b) = {
            let s = m.lock();
            (s.first, s.again)
        };
        m.retire();
        for stamp in [a, b] {
            assert_ne!(
                slot(stamp).load(Ordering::Relaxed),
                stamp,
                "retired: unlisted"
            );
        }
    }

    #[test]
    fn a_later_wake_sees_an_earlier_pending_one_and_not_the_reverse() {
        let (earlier, later) = (Mark::default(), Mark::default());
        earlier.set();
        later.set();
        let (e, l) = (earlier.stamp(), later.stamp());
        assert!(e < l);
        assert!(earlier_pending(l), "the earlier one has not forwarded");
        earlier.clear();
        later.clear();
        assert_ne!(slot(e).load(Ordering::Relaxed), e);
    }

    #[test]
    fn a_read_without_a_wake_sees_the_last_wake() {
        let woken = Mark::default();
        let reading = Mark::default();
        woken.set();
        let read = reading.stamp();
        assert_eq!(read % 2, 1);
        assert!(read > woken.stamp());
        assert!(earlier_pending(read));
        woken.retire();
    }
}
