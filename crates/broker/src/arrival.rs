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
//! (`Builder::disable_lifo_slot`) fixes that and slows every hand-over between tasks
//! (docs/benchmarks.md, "Order between two connections"). Instead:
//!
//! 1. **A stamp from the reactor.** The reactor wakes connection tasks in the order in which
//!    their sockets turned readable (epoll reports them in that order). Each connection polls
//!    its stream with a waker of its own (its `Outbox`, see `outbox`), which takes a number
//!    from one clock when the reactor wakes it, before the task runs ([`Mark::set`]). What the
//!    task then reads carries that number to the router ([`Mark::stamp`];
//!    `router::ToRouter::Packet::arrival`); bytes read without a wake (a busy connection
//!    reading on) get a number after every wake stamped so far (wakes get even numbers, such
//!    reads the odd one after the last wake's). A connection's numbers never go down (the
//!    connection task keeps the largest), so its own packets keep their order.
//! 2. **A short wait, only when another connection is pending.** A connection is pending from
//!    the reactor's wake until its task has forwarded what it read ([`Mark::clear`], after it
//!    decoded what it read and at the end of every poll). When the router wakes from idle
//!    with a packet while another connection is pending, it yields ([`let_pending_forward`],
//!    for at most [`MAX_WAIT`]) so that those tasks run and forward first; otherwise, which is
//!    the common case (one message at a time, or a router that is never idle under load), it
//!    does exactly what it did before. It waits only for connections the reactor woke before
//!    it started waiting: pending connections are counted by generation, and the router
//!    starts a new one as it starts to wait; those woken during the wait count in the new
//!    one, so a steady stream of later wakes does not keep it waiting.
//! 3. **A sort of that batch.** What it then holds is put in stamp order
//!    ([`in_arrival_order`]): runs of consecutive packets are sorted by stamp, stably; any
//!    other message (a CONNECT, a lost connection, a drain, the administrator) is a barrier
//!    nothing is moved across.
//!
//! The cost on the hot path is a few atomic operations per reactor wake and per connection
//! poll; the router yields and sorts only when two connections meet. The clock and the count
//! of pending connections are process-wide (several brokers in one process, as in tests,
//! share them: a router may then yield for another broker's connection, which costs a moment
//! and changes no order).

use std::sync::atomic::Ordering;

use crate::counters::Padded;

/// How long, at most, the router waits for pending connections before it handles what it
/// holds. Each yield lets every task queued on its worker run, and the worker poll the
/// reactor, before the router runs again: that is enough when the pending connection's task
/// is queued there. When another worker took it, that worker's thread may first have to be
/// woken by the kernel, which on a busy machine takes tens of microseconds.
pub const MAX_WAIT: std::time::Duration = std::time::Duration::from_micros(50);

/// The last stamp given (0: none yet).
static CLOCK: Padded = Padded::new(0);
/// The generation new marks count in (its lowest bit picks the count in `PENDING`); the
/// router starts a new one when it starts to wait.
static GENERATION: Padded = Padded::new(0);
/// Connections woken by the reactor whose task has not yet forwarded what it read, by the
/// parity of the generation they were marked in.
static PENDING: [Padded; 2] = [Padded::new(0), Padded::new(0)];

/// A mark that is no longer set: the connection is gone.
const RETIRED: u64 = u64::MAX;

/// A connection's arrival mark: the stamp of the reactor's wake its task has not yet run for
/// (an even number), plus the parity of the generation it counts in; 0: none. Kept in the
/// connection's `Outbox`.
#[derive(Debug, Default)]
pub struct Mark(std::sync::atomic::AtomicU64);

impl Mark {
    /// The reactor found the connection's socket ready: stamps the connection and counts it
    /// pending, unless it already is (or is gone).
    pub fn set(&self) {
        if self.0.load(Ordering::Relaxed) != 0 {
            return;
        }
        // Even stamps for wakes, odd ones for reads without a wake (see `stamp`).
        let stamp = (CLOCK.fetch_add(1, Ordering::Relaxed) + 1) * 2;
        let parity = GENERATION.load(Ordering::Relaxed) & 1;
        if self
            .0
            .compare_exchange(0, stamp | parity, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            pending(parity).fetch_add(1, Ordering::Release);
        }
    }

    /// The stamp of bytes read now: the reactor's, when it woke the task for them; otherwise
    /// one after every wake stamped so far and before the next (an odd number between two
    /// wakes' even ones).
    pub fn stamp(&self) -> u64 {
        match self.0.load(Ordering::Relaxed) {
            0 | RETIRED => CLOCK.load(Ordering::Relaxed) * 2 + 1,
            mark => mark & !1,
        }
    }

    /// The task has forwarded what it read (or found nothing to read): the connection is no
    /// longer pending. (Release: a router that sees it so also sees what was forwarded.)
    pub fn clear(&self) {
        let mark = self.0.load(Ordering::Relaxed);
        if mark != 0
            && mark != RETIRED
            && self
                .0
                .compare_exchange(mark, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            pending(mark & 1).fetch_sub(1, Ordering::Release);
        }
    }

    /// The connection is gone: no longer pending, and never again.
    pub fn retire(&self) {
        let mark = self.0.swap(RETIRED, Ordering::Relaxed);
        if mark != 0 && mark != RETIRED {
            pending(mark & 1).fetch_sub(1, Ordering::Release);
        }
    }
}

/// The count of pending connections marked in generations of this parity.
fn pending(parity: u64) -> &'static Padded {
    if parity == 0 {
        &PENDING[0]
    } else {
        &PENDING[1]
    }
}

/// Whether some connection was woken by the reactor and has not yet forwarded what it read.
pub fn others_pending() -> bool {
    pending(0).load(Ordering::Acquire) + pending(1).load(Ordering::Acquire) > 0
}

/// Yields while some connection the reactor woke before this call is pending, for at most
/// [`MAX_WAIT`], so that what it read reaches the router's channel first. Connections woken
/// from here on count in a new generation and are not waited for.
pub async fn let_pending_forward() {
    let earlier = pending(GENERATION.fetch_add(1, Ordering::AcqRel) & 1);
    let start = std::time::Instant::now();
    while earlier.load(Ordering::Acquire) > 0 && start.elapsed() < MAX_WAIT {
        tokio::task::yield_now().await;
    }
}

/// Puts a batch in arrival order: each run of stamped messages (`stamp` gives `Some`) is
/// sorted by stamp, keeping the order of equal stamps; an unstamped message is a barrier that
/// nothing moves across. Sorting moves nothing when the run is already in order.
pub fn in_arrival_order<T>(batch: &mut [T], stamp: impl Fn(&T) -> Option<u64>) {
    for run in batch.split_mut(|m| stamp(m).is_none()) {
        if !run.is_sorted_by_key(&stamp) {
            run.sort_by_key(&stamp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (connection, stamp; `None` for a barrier, sequence within the connection)
    type Msg = (char, Option<u64>, u32);

    fn sorted(mut batch: Vec<Msg>) -> Vec<Msg> {
        in_arrival_order(&mut batch, |m| m.1);
        batch
    }

    #[test]
    fn a_later_stamp_forwarded_first_goes_after_an_earlier_one() {
        let batch = vec![('a', Some(7), 0), ('b', Some(5), 0)];
        assert_eq!(sorted(batch), vec![('b', Some(5), 0), ('a', Some(7), 0)]);
    }

    #[test]
    fn a_connections_own_packets_keep_their_order() {
        // Equal stamps (one read) stay in channel order; a connection's stamps never go down.
        let batch = vec![
            ('a', Some(9), 0),
            ('a', Some(9), 1),
            ('b', Some(4), 0),
            ('a', Some(9), 2),
            ('b', Some(4), 1),
        ];
        let got = sorted(batch);
        let order: Vec<(char, u32)> = got.iter().map(|m| (m.0, m.2)).collect();
        assert_eq!(
            order,
            vec![('b', 0), ('b', 1), ('a', 0), ('a', 1), ('a', 2)]
        );
    }

    #[test]
    fn nothing_moves_across_a_barrier() {
        let batch = vec![
            ('a', Some(8), 0),
            ('b', Some(2), 0),
            ('c', None, 0),
            ('a', Some(9), 1),
            ('b', Some(3), 1),
        ];
        let got = sorted(batch);
        let order: Vec<char> = got.iter().map(|m| m.0).collect();
        assert_eq!(order, vec!['b', 'a', 'c', 'b', 'a']);
    }

    #[test]
    fn a_mark_is_pending_from_the_wake_until_cleared_and_never_after_retiring() {
        // PENDING is process-wide and other tests' connections may move it: only this mark's
        // own transitions are checked.
        let m = Mark::default();
        let before = m.stamp();
        m.set();
        let stamp = m.stamp();
        assert!(
            stamp > before,
            "a wake's stamp is after what was read before it"
        );
        assert_eq!(stamp % 2, 0);
        m.set();
        assert_eq!(m.stamp(), stamp, "a second wake keeps the first stamp");
        assert!(others_pending());
        m.clear();
        assert!(
            m.stamp() > stamp,
            "read without a wake: after every stamp given"
        );
        m.retire();
        m.set();
        assert_eq!(
            m.0.load(Ordering::Relaxed),
            RETIRED,
            "a gone connection is never marked"
        );
        m.clear();
        assert_eq!(m.0.load(Ordering::Relaxed), RETIRED);
    }
}
