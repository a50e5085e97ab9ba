//! The router's way to a connection: a queue of packets plus a wake-up, and the connection's
//! keep-alive clock.
//!
//! The router must never wait on one slow client, so pushing never blocks; the queue is
//! bounded by a byte budget instead (QoS 0 messages past `max_outgoing_bytes` are dropped,
//! QoS 1/2 ones are bounded by the inflight window and the session queue). An idle
//! connection's outbox holds no allocation: memory per connection matters at 10,000s of them.
//!
//! Keep-alive is checked by the router's periodic sweep over every outbox rather than by a
//! timer per connection: a tokio `Sleep` is 112 bytes in every connection task and a timer
//! wheel update on every packet, where a sweep costs one atomic load per connection.
//!
//! The outbox is also the waker the connection polls its stream with: a wake from the reactor
//! stamps the connection's arrival (`arrival::Mark`, see `arrival`) and then wakes the task.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll, Wake};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use makelaar_core::message::queued_cost;
use makelaar_core::CloseReason;
use makelaar_proto::{Packet, QoS};

use crate::arrival;

/// Milliseconds since the first call, on a clock shared by connections and the router.
pub fn millis(now: Instant) -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(now.saturating_duration_since(base).as_millis()).unwrap_or(u64::MAX)
}

/// What the connection task takes out.
#[derive(Debug, Default)]
pub struct Drained {
    pub packets: VecDeque<Packet>,
    /// The router asked to close once these are written, for this reason.
    pub close: Option<CloseReason>,
    /// Another connection to wake once these are written (see [`Outbox::wake_after`]).
    pub then_wake: Option<Arc<Outbox>>,
}

#[derive(Debug, Default)]
struct Inner {
    packets: VecDeque<Packet>,
    bytes: usize,
    close: Option<CloseReason>,
    then_wake: Option<Arc<Outbox>>,
}

/// Why a packet was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A QoS 0 message over the byte budget.
    OverBudget,
    /// The connection is closing.
    Closed,
}

/// One connection's outgoing queue. See the module documentation.
#[derive(Debug, Default)]
pub struct Outbox {
    inner: Mutex<Inner>,
    waker: AtomicWaker,
    /// Something was pushed (or close or expiry was asked) since the connection last looked.
    ready: AtomicBool,
    /// Set while the router has this outbox on its list to wake (one wake per batch).
    wake_listed: AtomicBool,
    /// How long the client may stay silent, in ms (1.5 × keep-alive); 0 for no limit.
    silence_limit_ms: u64,
    /// When the connection last received bytes (`millis`).
    last_heard_ms: AtomicU64,
    /// The keep-alive sweep found the client silent for too long.
    expired: AtomicBool,
    /// The router asked the connection to drain (`core::Action::Drain`).
    drain_asked: AtomicBool,
    /// When the reactor last woke the connection for its socket (see `arrival`).
    arrival: arrival::Mark,
}

/// The waker a connection polls its stream with: the reactor's wake stamps the arrival, then
/// wakes the task (registered by [`Outbox::poll_ready`], which the task calls before it polls
/// the stream). It makes nothing ready: the router's wake for queued packets is
/// [`Outbox::notify`], named apart so that `wake` on an `Arc<Outbox>` can only mean this one.
impl Wake for Outbox {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.arrival.set();
        self.waker.wake();
    }
}

impl Outbox {
    /// An outbox for a connection whose client may stay silent for `silence_limit`
    /// (`core::conn::ConnState::silence_limit`, the one place the rule is decided); `None`
    /// for no limit.
    pub fn new(now: Instant, silence_limit: Option<Duration>) -> Outbox {
        Outbox {
            silence_limit_ms: silence_limit
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0),
            last_heard_ms: AtomicU64::new(millis(now)),
            ..Outbox::default()
        }
    }

    /// Records that the client sent something (the keep-alive clock restarts).
    pub fn heard(&self, now_ms: u64) {
        self.last_heard_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Called by the router's sweep: when the client has been silent past its limit, marks
    /// the connection expired, wakes it, and returns true (once).
    pub fn expire_if_silent(&self, now_ms: u64) -> bool {
        if self.silence_limit_ms == 0 {
            return false;
        }
        let last = self.last_heard_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) <= self.silence_limit_ms
            || self.expired.swap(true, Ordering::Relaxed)
        {
            return false;
        }
        self.notify();
        true
    }

    /// Asks the connection task to forward what its client has already sent and then
    /// report `ToRouter::Drained` (a CONNECT for its client id waits for that).
    pub fn ask_drain(&self) {
        self.drain_asked.store(true, Ordering::Relaxed);
        self.ready.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Whether a drain was asked since the last call.
    pub fn take_drain_request(&self) -> bool {
        self.drain_asked.swap(false, Ordering::Relaxed)
    }

    /// The connection's arrival mark (see `arrival`).
    pub fn arrival(&self) -> &arrival::Mark {
        &self.arrival
    }

    /// Whether the keep-alive sweep expired this connection.
    pub fn is_expired(&self) -> bool {
        self.expired.load(Ordering::Relaxed)
    }

    /// Queues a packet without waking the connection task: the caller wakes it later with
    /// [`Outbox::notify`], once for a whole batch. A QoS 0 PUBLISH over `budget` bytes already
    /// queued is refused.
    pub fn push_quiet(&self, packet: Packet, budget: usize) -> Result<(), Refused> {
        let c = queued_cost(&packet);
        {
            let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            if inner.close.is_some() {
                return Err(Refused::Closed);
            }
            let qos0 = matches!(&packet, Packet::Publish(p) if p.qos == QoS::AtMostOnce);
            if qos0 && inner.bytes + c > budget {
                return Err(Refused::OverBudget);
            }
            inner.bytes += c;
            inner.packets.push_back(packet);
        }
        Ok(())
    }

    /// Marks the outbox as due for a wake; true the first time since the last [`Outbox::notify`]
    /// (so a batch wakes each connection once).
    pub fn list_for_wake(&self) -> bool {
        !self.wake_listed.swap(true, Ordering::Relaxed)
    }

    /// Wakes the connection task for what `push_quiet` queued.
    pub fn notify(&self) {
        self.wake_listed.store(false, Ordering::Relaxed);
        self.ready.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Wakes this connection's task and has it wake `next` once it has written what it was
    /// woken for, instead of waking both now.
    ///
    /// Why: on a multi-threaded runtime the second of two wakes from one task moves the first
    /// woken task to the run queue and wakes an idle worker thread to take it (a futex call,
    /// and in a VM an interrupt to another CPU) before either runs. For a QoS 1 message that
    /// is the subscriber's delivery and the publisher's PUBACK: the delivery then waits for
    /// that hand-over. Waking only the subscriber, whose task then wakes the publisher after
    /// its write, keeps the delivery first and both on one worker.
    pub fn wake_after(&self, next: Arc<Outbox>) {
        let earlier = {
            let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            if inner.close.is_some() {
                // Closing: the task may be gone; never leave `next` waiting on it.
                Some(next)
            } else {
                inner.then_wake.replace(next)
            }
        };
        if let Some(earlier) = earlier {
            earlier.notify();
        }
        self.notify();
    }

    /// Asks the connection task to close after writing what is queued; `why` is logged.
    pub fn close(&self, why: CloseReason) {
        let then_wake = {
            let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            inner.close = Some(why);
            inner.then_wake.take()
        };
        self.ready.store(true, Ordering::Release);
        self.waker.wake();
        if let Some(next) = then_wake {
            next.notify();
        }
    }

    /// Ready when something was pushed (or close or expiry was asked) since the last time it
    /// was ready. Registers the task to be woken either way: the stream's wakes come through
    /// the outbox too (see `Wake for Outbox`), and must find the task registered whenever it
    /// waits.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.waker.register(cx.waker());
        if self.ready.swap(false, Ordering::Acquire) {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Moves up to `max` packets into `out`; true when more are left. An outbox left empty
    /// after a small batch gives its memory back, so idle connections hold none.
    pub fn drain(&self, out: &mut Drained, max: usize) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let n = inner.packets.len().min(max);
        let mut freed = 0;
        for p in inner.packets.drain(..n) {
            freed += queued_cost(&p);
            out.packets.push_back(p);
        }
        inner.bytes = inner.bytes.saturating_sub(freed);
        if inner.packets.is_empty() && n <= 4 {
            inner.packets.shrink_to_fit();
        }
        out.close = inner.close.filter(|_| inner.packets.is_empty());
        if let Some(next) = inner.then_wake.take() {
            // One left from an earlier drain not yet acted on is woken now, not dropped.
            if let Some(earlier) = out.then_wake.replace(next) {
                earlier.notify();
            }
        }
        !inner.packets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use makelaar_proto::Publish;
    use std::sync::Arc;

    fn qos0(payload: usize) -> Packet {
        Packet::Publish(Publish {
            topic: Arc::from("t"),
            payload: vec![0u8; payload].into(),
            ..Publish::default()
        })
    }

    #[test]
    fn qos0_over_budget_is_refused_but_acks_are_not() {
        let o = Outbox::default();
        assert_eq!(o.push_quiet(qos0(900), 1000), Ok(()));
        assert_eq!(o.push_quiet(qos0(900), 1000), Err(Refused::OverBudget));
        assert_eq!(o.push_quiet(Packet::PingResp, 1000), Ok(()));
        let mut d = Drained::default();
        o.drain(&mut d, 10);
        assert_eq!(d.packets.len(), 2);
        assert_eq!(
            o.push_quiet(qos0(900), 1000),
            Ok(()),
            "budget freed by drain"
        );
    }

    #[test]
    fn close_is_reported_after_the_queue_is_empty() {
        let o = Outbox::default();
        o.push_quiet(Packet::PingResp, 100).ok();
        o.push_quiet(Packet::PingResp, 100).ok();
        let why = CloseReason::Server(makelaar_proto::ReasonCode::SESSION_TAKEN_OVER);
        o.close(why);
        assert_eq!(o.push_quiet(Packet::PingResp, 100), Err(Refused::Closed));
        let mut d = Drained::default();
        o.drain(&mut d, 1);
        assert_eq!(d.close, None);
        o.drain(&mut d, 1);
        assert_eq!(d.close, Some(why));
    }

    #[test]
    fn a_silent_client_expires_once_after_its_limit_and_hearing_it_restarts_the_clock() {
        let start = Instant::now();
        let o = Outbox::new(start, Some(Duration::from_millis(1500)));
        let t0 = millis(start);
        assert!(!o.expire_if_silent(t0 + 1500));
        o.heard(t0 + 1000);
        assert!(!o.expire_if_silent(t0 + 2400), "heard 1.4 s ago");
        assert!(o.expire_if_silent(t0 + 2600));
        assert!(o.is_expired());
        assert!(!o.expire_if_silent(t0 + 9000), "reported once");
        let none = Outbox::new(start, None);
        assert!(!none.expire_if_silent(u64::MAX));
    }

    #[test]
    fn poll_ready_reports_each_wake_once() {
        let o = Outbox::default();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(o.poll_ready(&mut cx).is_pending());
        o.push_quiet(Packet::PingResp, 100).ok();
        o.notify();
        assert!(o.poll_ready(&mut cx).is_ready());
        assert!(o.poll_ready(&mut cx).is_pending());
        o.close(CloseReason::Server(
            makelaar_proto::ReasonCode::SERVER_SHUTTING_DOWN,
        ));
        assert!(o.poll_ready(&mut cx).is_ready());
    }

    #[test]
    fn wake_after_leaves_the_second_for_the_first_to_wake() {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let (first, second) = (Outbox::default(), Arc::new(Outbox::default()));
        assert!(second.poll_ready(&mut cx).is_pending());
        first.wake_after(second.clone());
        assert!(first.poll_ready(&mut cx).is_ready());
        assert!(
            second.poll_ready(&mut cx).is_pending(),
            "not before the first's write"
        );
        let mut drained = Drained::default();
        first.drain(&mut drained, 64);
        drained.then_wake.take().expect("handed over").notify();
        assert!(second.poll_ready(&mut cx).is_ready());
    }

    #[test]
    fn a_closing_outbox_never_keeps_the_second_waiting() {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let (first, second, third) = (
            Outbox::default(),
            Arc::new(Outbox::default()),
            Arc::new(Outbox::default()),
        );
        first.wake_after(second.clone());
        first.close(CloseReason::Server(
            makelaar_proto::ReasonCode::SERVER_SHUTTING_DOWN,
        ));
        assert!(
            second.poll_ready(&mut cx).is_ready(),
            "close wakes the one left with it"
        );
        first.wake_after(third.clone());
        assert!(
            third.poll_ready(&mut cx).is_ready(),
            "a closed outbox wakes it at once"
        );
    }

    #[test]
    fn a_drain_request_wakes_the_task_and_is_taken_once() {
        let o = Outbox::default();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(o.poll_ready(&mut cx).is_pending());
        assert!(!o.take_drain_request());
        o.ask_drain();
        assert!(o.poll_ready(&mut cx).is_ready());
        assert!(o.take_drain_request());
        assert!(!o.take_drain_request(), "taken once");
    }

    #[test]
    fn the_streams_wake_wakes_the_task_and_marks_the_arrival_but_makes_nothing_ready() {
        let o = Arc::new(Outbox::default());
        let flag = Arc::new(Flag::default());
        let task = std::task::Waker::from(flag.clone());
        let mut cx = Context::from_waker(&task);
        assert!(o.poll_ready(&mut cx).is_pending());
        let stream = std::task::Waker::from(o.clone());
        let before = o.arrival().stamp();
        stream.wake_by_ref();
        assert!(flag.0.load(Ordering::Relaxed), "the task is woken");
        assert!(
            o.arrival().stamp() > before,
            "stamped after what was read before"
        );
        assert_eq!(o.arrival().stamp() % 2, 0, "stamped by the wake (even)");
        assert!(o.poll_ready(&mut cx).is_pending(), "no packet is ready");
        o.arrival().clear();
        assert_eq!(
            o.arrival().stamp() % 2,
            1,
            "cleared: a read without a wake (odd)"
        );
    }

    #[derive(Default)]
    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_second_hand_over_wakes_the_earlier_one() {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let (first, a, b) = (
            Outbox::default(),
            Arc::new(Outbox::default()),
            Arc::new(Outbox::default()),
        );
        first.wake_after(a.clone());
        first.wake_after(b.clone());
        assert!(a.poll_ready(&mut cx).is_ready());
        assert!(b.poll_ready(&mut cx).is_pending());
    }
}
