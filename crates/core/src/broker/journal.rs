//! Writing the journal of durable changes (see [`crate::persist`]), restoring from a store at
//! start-up, and loading a returning session's backlog.

use std::sync::Arc;
use std::time::Instant;

use super::{Action, Broker, SessionIdx};
use crate::message::{Delivery, Message};
use crate::persist::{Change, KeptState, LoadedMessage, RestoredSession, SessionState};
use crate::session::{Inflight, OutboundState, Session, Subscription};

/// The changes to durable state not yet handed to the store, in order (see
/// [`crate::persist`]). Off until [`Journal::enable`]: a broker without a store records
/// nothing, and every `record` is then a no-op, so the rules call it without asking first.
#[derive(Debug, Default)]
pub(crate) struct Journal {
    /// `None` while the journal is off.
    changes: Option<Vec<Change>>,
}

impl Journal {
    /// Turns recording on (staying on: there is no way back, a store once fed must see
    /// every later change).
    pub(crate) fn enable(&mut self) {
        self.changes.get_or_insert_with(Vec::new);
    }

    /// Whether changes are recorded.
    pub(crate) fn is_enabled(&self) -> bool {
        self.changes.is_some()
    }

    /// Records one change; nothing when the journal is off.
    pub(crate) fn record(&mut self, change: Change) {
        if let Some(changes) = &mut self.changes {
            changes.push(change);
        }
    }

    /// Moves the changes recorded since the last call to the end of `out`, in order.
    pub(crate) fn drain(&mut self, out: &mut Vec<Change>) {
        if let Some(changes) = &mut self.changes {
            out.append(changes);
        }
    }

    /// Whether changes are waiting to be drained.
    pub(crate) fn has_changes(&self) -> bool {
        self.changes.as_ref().is_some_and(|c| !c.is_empty())
    }
}

impl Broker {
    /// Turns the journal on: from now on every change to durable state is recorded for
    /// [`Broker::drain_changes`]. Call it after restoring, before serving.
    pub fn enable_journal(&mut self) {
        self.journal.enable();
    }

    /// Moves the changes recorded since the last call to the end of `out`, in order.
    pub fn drain_changes(&mut self, out: &mut Vec<Change>) {
        self.journal.drain(out);
    }

    /// Whether changes are waiting to be drained.
    pub fn has_changes(&self) -> bool {
        self.journal.has_changes()
    }

    /// The session's id when it is journaled.
    fn stored_id(&self, idx: SessionIdx) -> Option<Arc<str>> {
        if !self.journal.is_enabled() {
            return None;
        }
        self.session(idx)
            .ok()
            .filter(|s| s.stored)
            .map(|s| s.client_id.clone())
    }

    /// Records the session's attributes after a change. A session that now outlives its
    /// connection enters the store with everything it holds; one that no longer does leaves.
    pub(super) fn journal_session(&mut self, idx: SessionIdx) {
        if !self.journal.is_enabled() {
            return;
        }
        let journal = &mut self.journal;
        let Ok(s) = self.sessions.get_mut(idx) else {
            return;
        };
        if s.expiry_interval == 0 {
            if s.stored {
                s.stored = false;
                self.stored_bytes = self.stored_bytes.saturating_sub(s.stored_weight);
                s.stored_weight = 0;
                journal.record(Change::SessionEnded {
                    client_id: s.client_id.clone(),
                });
            }
            return;
        }
        journal.record(Change::Session {
            client_id: s.client_id.clone(),
            state: session_state(s),
        });
        if !s.stored {
            s.stored = true;
            self.stored_bytes += snapshot(s, journal);
        }
    }

    /// Records that a journaled session ended.
    pub(super) fn journal_session_ended(&mut self, s: &Session) {
        self.stored_bytes = self.stored_bytes.saturating_sub(s.stored_weight);
        if s.stored {
            self.journal.record(Change::SessionEnded {
                client_id: s.client_id.clone(),
            });
        }
    }

    /// Records a message the session now keeps (numbering it) or one that moved on.
    pub(super) fn journal_keep(&mut self, idx: SessionIdx, d: &mut Delivery, state: KeptState) {
        if !self.journal.is_enabled() {
            return;
        }
        let journal = &mut self.journal;
        let Ok(s) = self.sessions.get_mut(idx) else {
            return;
        };
        if !s.stored {
            return;
        }
        let client_id = s.client_id.clone();
        if d.seq == 0 {
            d.seq = s.next_seq();
            s.stored_weight += d.msg.weight();
            self.stored_bytes += d.msg.weight();
            journal.record(Change::Kept {
                client_id,
                delivery: d.clone(),
                state,
            });
        } else {
            journal.record(Change::Moved {
                client_id,
                delivery: d.clone(),
                state,
            });
        }
    }

    /// Records that a kept message is done with.
    pub(super) fn journal_done(&mut self, idx: SessionIdx, d: &Delivery) {
        if d.seq == 0 {
            return;
        }
        let weight = d.msg.weight();
        if let Ok(s) = self.sessions.get_mut(idx) {
            s.stored_weight = s.stored_weight.saturating_sub(weight);
        }
        self.stored_bytes = self.stored_bytes.saturating_sub(weight);
        if let Some(client_id) = self.stored_id(idx) {
            self.journal.record(Change::Done {
                client_id,
                seq: d.seq,
            });
        }
    }

    /// Whether storing `extra` more bytes would pass `max_stored_bytes`; when it does, the
    /// refusal is counted and logged (once until the store has room again).
    pub(super) fn store_full(&mut self, extra: usize) -> bool {
        let cap = self.limits.max_stored_bytes;
        if !self.journal.is_enabled() || cap == 0 {
            return false;
        }
        let full = self.stored_bytes.saturating_add(extra) > cap;
        if !full {
            self.store_full_logged = false;
            return false;
        }
        self.stats.dropped_store_full += 1;
        if !self.store_full_logged {
            self.store_full_logged = true;
            tracing::warn!(
                max_stored_bytes = cap,
                stored_bytes = self.stored_bytes,
                "the store is full: new messages are not kept (5.0 publishers get 0x97) until sessions take theirs"
            );
        }
        true
    }

    /// Records a subscription made (`Some`) or removed (`None`).
    pub(super) fn journal_subscription(
        &mut self,
        idx: SessionIdx,
        filter: &str,
        sub: Option<&Subscription>,
    ) {
        let Some(client_id) = self.stored_id(idx) else {
            return;
        };
        let filter = filter.to_owned();
        self.journal.record(match sub {
            Some(sub) => Change::Subscribed {
                client_id,
                filter,
                subscription: sub.clone(),
            },
            None => Change::Unsubscribed { client_id, filter },
        });
    }

    /// Records an inbound QoS 2 packet id awaiting PUBREL (`pending`) or released.
    pub(super) fn journal_inbound_qos2(&mut self, idx: SessionIdx, packet_id: u16, pending: bool) {
        if let Some(client_id) = self.stored_id(idx) {
            self.journal.record(Change::InboundQos2 {
                client_id,
                packet_id,
                pending,
            });
        }
    }

    /// Records the retained message of a topic set or cleared (`old` is the one it replaces).
    /// The broker's own `$SYS` topics are republished after a restart, so they are not kept.
    pub(super) fn journal_retained(
        &mut self,
        topic: &Arc<str>,
        message: Option<&Arc<Message>>,
        old: Option<&Arc<Message>>,
    ) {
        if self.journal.is_enabled() && !crate::topic::sys::is_sys(topic) {
            let old = old.map_or(0, |m| m.weight());
            let new = message.map_or(0, |m| m.weight());
            self.stored_bytes = self.stored_bytes.saturating_sub(old) + new;
            self.journal.record(Change::Retained {
                topic: topic.clone(),
                message: message.cloned(),
            });
        }
    }

    /// Adds a session read back from the store (offline, not journaled again).
    pub fn restore_session(&mut self, r: RestoredSession) {
        let client = crate::session::ClientLimits {
            inflight_window: 1,
            max_packet_size: None,
            problem_information: true,
        };
        let mut s = Session::new(r.client_id.clone(), r.state.version, client);
        s.expiry_interval = r.state.expiry_interval;
        s.expires_at = r.state.expires_at;
        s.username = r.state.username;
        if let Some((will, at)) = r.state.pending_will {
            s.pending_will = Some(will);
            s.will_at = Some(at);
        }
        s.inbound_qos2 = r.inbound_qos2;
        s.stored = true;
        s.last_seq = r.backlog.last_seq;
        s.stored_weight = r.backlog.bytes;
        self.stored_bytes += r.backlog.bytes;
        s.backlog = (r.backlog.count > 0).then_some(r.backlog);
        let idx = self.insert_session(s);
        for (filter, sub) in r.subscriptions {
            self.add_subscription(idx, &filter, sub);
        }
        self.schedule_timer(idx);
    }

    /// Adds a retained message read back from the store.
    pub fn restore_retained(&mut self, msg: Arc<Message>) {
        self.stored_bytes += msg.weight();
        self.retained_bytes += msg.weight();
        if let Some(old) = self.put_retained(msg) {
            self.retained_bytes = self.retained_bytes.saturating_sub(old.weight());
        }
    }

    /// The kept messages of a returning session, read from the store after
    /// [`Action::LoadBacklog`]: they go before anything queued since, in their order, and
    /// what was in flight is re-sent [MQTT-4.4.0-1].
    pub fn handle_backlog_loaded(
        &mut self,
        now: Instant,
        client_id: &str,
        mut loaded: Vec<LoadedMessage>,
    ) {
        // Ended while the store was reading: nothing left to load into.
        let Some(idx) = self.sessions.by_client_id(client_id) else {
            return;
        };
        let Ok(s) = self.session_mut(idx) else {
            return;
        };
        // Not asked for (a session of the same id made since had none).
        let Some(backlog) = s.backlog.take() else {
            return;
        };
        // Newer ones were kept in memory too; the store may have them as well.
        loaded.retain(|m| m.delivery.seq <= backlog.last_seq);
        loaded.sort_by_key(|m| m.delivery.seq);
        let mut queued = Vec::new();
        for m in loaded {
            let state = match m.state {
                KeptState::Queued => {
                    queued.push(m.delivery);
                    continue;
                }
                KeptState::AwaitingAck(id) => (OutboundState::AwaitingAck, id),
                KeptState::AwaitingComp(id) => (OutboundState::AwaitingComp, id),
            };
            s.inflight.push_back(Inflight {
                packet_id: state.1,
                delivery: m.delivery,
                state: state.0,
            });
        }
        let newer = std::mem::take(&mut s.queue);
        s.queued_bytes = 0;
        for d in queued.into_iter().chain(newer) {
            s.push_queue(d);
        }
        if s.conn.is_some() {
            self.resend_inflight(now, idx);
            self.fill_window(now, idx);
        }
    }

    /// Asks the shell for a returning session's backlog; true when it has one (sending
    /// waits for [`Broker::handle_backlog_loaded`]).
    pub(super) fn request_backlog(&mut self, idx: SessionIdx) -> bool {
        let Some(s) = self.session(idx).ok().filter(|s| s.backlog.is_some()) else {
            return false;
        };
        let id = s.client_id.clone();
        self.actions.push_back(Action::LoadBacklog(id));
        true
    }
}

fn session_state(s: &Session) -> SessionState {
    SessionState {
        version: s.version,
        expiry_interval: s.expiry_interval,
        expires_at: s.expires_at,
        pending_will: s.pending_will.clone().zip(s.will_at),
        connected: s.conn.is_some(),
        username: s.username.clone(),
    }
}

/// Everything a session holds, for a session entering the store; returns the bytes of the
/// messages it kept.
fn snapshot(s: &mut Session, journal: &mut Journal) -> usize {
    let client_id = s.client_id.clone();
    for (filter, sub) in &s.subscriptions {
        journal.record(Change::Subscribed {
            client_id: client_id.clone(),
            filter: filter.clone(),
            subscription: sub.clone(),
        });
    }
    for &packet_id in &s.inbound_qos2 {
        journal.record(Change::InboundQos2 {
            client_id: client_id.clone(),
            packet_id,
            pending: true,
        });
    }
    let mut seq = s.last_seq;
    let mut weight = 0;
    let mut keep = |d: &mut Delivery, state| {
        seq += 1;
        d.seq = seq;
        weight += d.msg.weight();
        journal.record(Change::Kept {
            client_id: client_id.clone(),
            delivery: d.clone(),
            state,
        });
    };
    for m in s.inflight.iter_mut() {
        let state = match m.state {
            OutboundState::AwaitingAck => KeptState::AwaitingAck(m.packet_id),
            OutboundState::AwaitingComp => KeptState::AwaitingComp(m.packet_id),
        };
        keep(&mut m.delivery, state);
    }
    for d in s.queue.iter_mut() {
        keep(d, KeptState::Queued);
    }
    s.last_seq = seq;
    s.stored_weight += weight;
    weight
}

#[cfg(test)]
mod journal_type_tests {
    use super::*;

    fn ended(id: &str) -> Change {
        Change::SessionEnded {
            client_id: Arc::from(id),
        }
    }

    fn ids(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                Change::SessionEnded { client_id } => client_id.to_string(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn off_until_enabled_records_nothing() {
        let mut j = Journal::default();
        assert!(!j.is_enabled());
        j.record(ended("a"));
        assert!(!j.has_changes());
        let mut out = Vec::new();
        j.drain(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn drains_in_order_and_empties() {
        let mut j = Journal::default();
        j.enable();
        j.enable(); // idempotent: nothing recorded is lost
        j.record(ended("a"));
        j.record(ended("b"));
        assert!(j.has_changes());
        let mut out = vec![ended("before")];
        j.drain(&mut out);
        assert_eq!(ids(&out), ["before", "a", "b"]);
        assert!(!j.has_changes());
        j.record(ended("c"));
        out.clear();
        j.drain(&mut out);
        assert_eq!(ids(&out), ["c"]);
    }
}
