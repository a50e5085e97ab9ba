//! The router's way to a connection: a queue of packets plus a wake-up.
//!
//! The router must never wait on one slow client, so pushing never blocks; the queue is
//! bounded by a byte budget instead (QoS 0 messages past `max_outgoing_bytes` are dropped,
//! QoS 1/2 ones are bounded by the inflight window and the session queue). An idle
//! connection's outbox holds no allocation: memory per connection matters at 10,000s of them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use makelaar_proto::{Packet, QoS};
use tokio::sync::Notify;

/// What the connection task takes out.
#[derive(Debug, Default)]
pub struct Drained {
    pub packets: VecDeque<Packet>,
    /// The router asked to close once these are written.
    pub close: bool,
}

#[derive(Debug, Default)]
struct Inner {
    packets: VecDeque<Packet>,
    bytes: usize,
    close: bool,
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
    notify: Notify,
    /// Set while the router has this outbox on its list to wake (one wake per batch).
    wake_listed: AtomicBool,
}

/// Estimated memory a packet holds while queued.
fn cost(p: &Packet) -> usize {
    match p {
        Packet::Publish(p) => p.topic.len() + p.payload.len() + 64,
        _ => 64,
    }
}

impl Outbox {
    /// Queues a packet without waking the connection task: the caller wakes it later with
    /// [`Outbox::wake`], once for a whole batch. A QoS 0 PUBLISH over `budget` bytes already
    /// queued is refused.
    pub fn push_quiet(&self, packet: Packet, budget: usize) -> Result<(), Refused> {
        let c = cost(&packet);
        {
            let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            if inner.close {
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

    /// Marks the outbox as due for a wake; true the first time since the last [`Outbox::wake`]
    /// (so a batch wakes each connection once).
    pub fn list_for_wake(&self) -> bool {
        !self.wake_listed.swap(true, Ordering::Relaxed)
    }

    /// Wakes the connection task for what `push_quiet` queued.
    pub fn wake(&self) {
        self.wake_listed.store(false, Ordering::Relaxed);
        self.notify.notify_one();
    }

    /// Asks the connection task to close after writing what is queued.
    pub fn close(&self) {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .close = true;
        self.notify.notify_one();
    }

    /// Waits until something was pushed (or close was asked) since the last `drain`.
    pub async fn ready(&self) {
        self.notify.notified().await;
    }

    /// Moves up to `max` packets into `out`. An outbox left empty after a small batch gives
    /// its memory back, so idle connections hold none.
    pub fn drain(&self, out: &mut Drained, max: usize) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let n = inner.packets.len().min(max);
        let mut freed = 0;
        for p in inner.packets.drain(..n) {
            freed += cost(&p);
            out.packets.push_back(p);
        }
        inner.bytes = inner.bytes.saturating_sub(freed);
        if inner.packets.is_empty() && n <= 4 {
            inner.packets.shrink_to_fit();
        }
        out.close = inner.close && inner.packets.is_empty();
        if !inner.packets.is_empty() {
            // More is waiting: make sure the next `ready` returns at once.
            self.notify.notify_one();
        }
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
        o.close();
        assert_eq!(o.push_quiet(Packet::PingResp, 100), Err(Refused::Closed));
        let mut d = Drained::default();
        o.drain(&mut d, 1);
        assert!(!d.close);
        o.drain(&mut d, 1);
        assert!(d.close);
    }
}
