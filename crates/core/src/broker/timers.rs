//! Every deadline of the broker, in one owner: a session's will delay or expiry, the wait of
//! a parked CONNECT for a drain (see `park`), and the expiry of retained messages.
//!
//! The broker arms and cancels them as its state changes; [`Timers::next_deadline`] is what
//! [`Broker::poll_timeout`](super::Broker::poll_timeout) answers, and [`Timers::pop_due`]
//! hands [`Broker::handle_timeout`](super::Broker::handle_timeout) what is due, one typed
//! event at a time. Nothing here looks at a clock: instants come from the caller.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use super::SessionIdx;

/// One armed drain deadline. A client id waits again after its first wait is decided, so a
/// deadline is told from a later one of the same client id by this key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct DrainKey(Instant, u64);

/// What a due deadline is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TimerEvent {
    /// The CONNECTs parked for this client id waited long enough for the drain armed with
    /// `key` (it is still theirs only if their wait still has that key).
    Drain { client_id: Arc<str>, key: DrainKey },
    /// The retained message of this topic has expired.
    RetainedExpiry(Box<str>),
    /// This session's will delay or expiry, whichever came first, has passed.
    Session(SessionIdx),
}

/// The deadlines, each kind in its own index, ordered by instant (and, for equal instants,
/// by arming order).
#[derive(Debug, Default)]
pub(crate) struct Timers {
    /// Tells apart deadlines armed for one instant.
    seq: u64,
    /// One entry per session with a pending will or an expiry.
    sessions: BTreeMap<(Instant, u64), SessionIdx>,
    /// The key of each session's entry in `sessions`, to replace or cancel it.
    session_keys: HashMap<SessionIdx, (Instant, u64)>,
    drains: BTreeMap<DrainKey, Arc<str>>,
    /// (expiry instant, topic) of every retained message that expires.
    retained: BTreeSet<(Instant, Box<str>)>,
}

impl Timers {
    /// The earliest deadline of any kind.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let session = self.sessions.keys().next().map(|(at, _)| *at);
        let drain = self.drains.keys().next().map(|k| k.0);
        let retained = self.retained.first().map(|(at, _)| *at);
        [session, drain, retained].into_iter().flatten().min()
    }

    /// Removes and returns one deadline due at `now`; `None` when none is. Call it until
    /// `None`. Kinds go in a fixed order — drain deadlines, then retained messages, then
    /// sessions — each kind earliest first: the order the broker fired them in before they
    /// had one owner, kept so that this move changed no behaviour.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<TimerEvent> {
        self.pop_drain(now)
            .or_else(|| self.pop_retained(now))
            .or_else(|| self.pop_session(now))
    }

    fn pop_drain(&mut self, now: Instant) -> Option<TimerEvent> {
        let (key, _) = self.drains.first_key_value()?;
        if key.0 > now {
            return None;
        }
        let (key, client_id) = self.drains.pop_first()?;
        Some(TimerEvent::Drain { client_id, key })
    }

    fn pop_retained(&mut self, now: Instant) -> Option<TimerEvent> {
        let (at, _) = self.retained.first()?;
        if *at > now {
            return None;
        }
        let (_, topic) = self.retained.pop_first()?;
        Some(TimerEvent::RetainedExpiry(topic))
    }

    fn pop_session(&mut self, now: Instant) -> Option<TimerEvent> {
        let (key, _) = self.sessions.first_key_value()?;
        if key.0 > now {
            return None;
        }
        let (_, idx) = self.sessions.pop_first()?;
        self.session_keys.remove(&idx);
        Some(TimerEvent::Session(idx))
    }

    /// Sets the one deadline of session `idx` to `at`, replacing the one it had; `None`
    /// cancels it.
    pub(crate) fn set_session(&mut self, idx: SessionIdx, at: Option<Instant>) {
        self.cancel_session(idx);
        let Some(at) = at else { return };
        let key = (at, self.next_seq());
        self.sessions.insert(key, idx);
        self.session_keys.insert(idx, key);
    }

    /// Cancels the deadline of session `idx`, if it has one.
    pub(crate) fn cancel_session(&mut self, idx: SessionIdx) {
        if let Some(key) = self.session_keys.remove(&idx) {
            self.sessions.remove(&key);
        }
    }

    /// Arms a drain deadline for the CONNECTs parked for `client_id`.
    pub(crate) fn arm_drain(&mut self, at: Instant, client_id: Arc<str>) -> DrainKey {
        let key = DrainKey(at, self.next_seq());
        self.drains.insert(key, client_id);
        key
    }

    /// Cancels a drain deadline (its wait was decided before it).
    pub(crate) fn cancel_drain(&mut self, key: DrainKey) {
        self.drains.remove(&key);
    }

    /// Cancels every drain deadline (shutting down: nothing waits any more).
    pub(crate) fn clear_drains(&mut self) {
        self.drains.clear();
    }

    /// The retained message of `topic`, which expired at `old` (if it did), is replaced by
    /// one expiring at `new` (`None`: by one that does not expire, or by none at all).
    pub(crate) fn retained_replaced(
        &mut self,
        topic: &str,
        old: Option<Instant>,
        new: Option<Instant>,
    ) {
        if let Some(at) = old {
            self.retained.remove(&(at, Box::from(topic)));
        }
        if let Some(at) = new {
            self.retained.insert((at, Box::from(topic)));
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    fn idx(n: u32) -> SessionIdx {
        SessionIdx::made_up(n)
    }

    fn at(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    fn drain_all(t: &mut Timers, now: Instant) -> Vec<TimerEvent> {
        std::iter::from_fn(|| t.pop_due(now)).collect()
    }

    #[test]
    fn nothing_armed_nothing_due() {
        let mut t = Timers::default();
        assert_eq!(t.next_deadline(), None);
        assert_eq!(t.pop_due(Instant::now()), None);
    }

    #[test]
    fn sessions_fire_earliest_first_and_only_when_due() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.set_session(idx(1), Some(at(t0, 30)));
        t.set_session(idx(2), Some(at(t0, 10)));
        t.set_session(idx(3), Some(at(t0, 10))); // same instant: in arming order
        assert_eq!(t.next_deadline(), Some(at(t0, 10)));
        assert_eq!(t.pop_due(at(t0, 9)), None);
        assert_eq!(
            drain_all(&mut t, at(t0, 10)),
            [TimerEvent::Session(idx(2)), TimerEvent::Session(idx(3))]
        );
        assert_eq!(t.next_deadline(), Some(at(t0, 30)));
        assert_eq!(drain_all(&mut t, at(t0, 99)), [TimerEvent::Session(idx(1))]);
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn a_session_has_one_deadline_replaced_or_cancelled() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.set_session(idx(1), Some(at(t0, 10)));
        t.set_session(idx(1), Some(at(t0, 20))); // replaces: the earlier one is gone
        assert_eq!(t.next_deadline(), Some(at(t0, 20)));
        t.set_session(idx(1), None);
        assert_eq!(t.next_deadline(), None);
        t.set_session(idx(2), Some(at(t0, 5)));
        t.cancel_session(idx(2));
        t.cancel_session(idx(7)); // none armed: nothing happens
        assert_eq!(drain_all(&mut t, at(t0, 99)), []);
        // Fired, then armed again: the new deadline counts.
        t.set_session(idx(3), Some(at(t0, 1)));
        assert_eq!(drain_all(&mut t, at(t0, 1)), [TimerEvent::Session(idx(3))]);
        t.cancel_session(idx(3)); // fired already: nothing left to cancel
        t.set_session(idx(3), Some(at(t0, 2)));
        assert_eq!(drain_all(&mut t, at(t0, 2)), [TimerEvent::Session(idx(3))]);
    }

    #[test]
    fn drain_deadlines_are_told_apart_by_key() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        let id: Arc<str> = Arc::from("c");
        let first = t.arm_drain(at(t0, 1), id.clone());
        let second = t.arm_drain(at(t0, 1), id.clone());
        assert_ne!(first, second);
        t.cancel_drain(first);
        assert_eq!(
            drain_all(&mut t, at(t0, 1)),
            [TimerEvent::Drain {
                client_id: id.clone(),
                key: second
            }]
        );
        t.arm_drain(at(t0, 2), id);
        t.clear_drains();
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn retained_expiry_follows_replacement() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.retained_replaced("late", None, Some(at(t0, 30)));
        t.retained_replaced("soon", None, Some(at(t0, 10)));
        t.retained_replaced("same", None, Some(at(t0, 10)));
        // Replaced: the new message's expiry counts, the old one's is forgotten.
        t.retained_replaced("soon", Some(at(t0, 10)), Some(at(t0, 20)));
        assert_eq!(t.next_deadline(), Some(at(t0, 10)));
        assert_eq!(
            drain_all(&mut t, at(t0, 19)),
            [TimerEvent::RetainedExpiry(Box::from("same"))]
        );
        // Removed (an empty retained message): no longer due.
        t.retained_replaced("soon", Some(at(t0, 20)), None);
        assert_eq!(t.next_deadline(), Some(at(t0, 30)));
        // Replaced by a message that never expires.
        t.retained_replaced("late", Some(at(t0, 30)), None);
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn kinds_go_in_a_fixed_order_whatever_their_instants() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.set_session(idx(1), Some(at(t0, 1)));
        t.retained_replaced("r", None, Some(at(t0, 2)));
        let key = t.arm_drain(at(t0, 3), Arc::from("c"));
        assert_eq!(t.next_deadline(), Some(at(t0, 1)));
        assert_eq!(
            drain_all(&mut t, at(t0, 3)),
            [
                TimerEvent::Drain {
                    client_id: Arc::from("c"),
                    key
                },
                TimerEvent::RetainedExpiry(Box::from("r")),
                TimerEvent::Session(idx(1)),
            ]
        );
    }
}
