//! CONNECTs that wait for the connection holding their client id to drain.
//!
//! Each connection feeds the router on its own, so a client that sends DISCONNECT, closes
//! and reconnects at once can have its new CONNECT handled before the DISCONNECT its old
//! connection had already received: the old connection would be taken over, its will
//! published although it left normally [MQTT-3.14.4-3], and a session it ended handed back
//! [MQTT-3.1.2-23]. What a client sent before it opened the new connection must count first.
//!
//! So a CONNECT whose client id is held by a live connection is parked, and the shell is
//! asked to drain the old connection ([`Action::Drain`]): its task forwards what its client
//! had already sent, in order, then says so ([`Broker::handle_drained`]). Since one
//! connection's messages reach the core in order, everything the old connection had is
//! applied before the parked CONNECT is decided: as a takeover if the old connection is still
//! attached, else as a plain connect. A deadline ([`DRAIN_DEADLINE`], through
//! [`Broker::poll_timeout`]) bounds the wait for a connection that never answers.
//!
//! Several CONNECTs for one client id are decided one after the other, in arrival order, each
//! after the connection holding the id then has drained. Packets a parked connection sends
//! behind its CONNECT are held (up to [`HELD_MAX_BYTES`]) and handled right after it is
//! decided.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use makelaar_proto::{Connect, Packet, ReasonCode};

use super::timers::DrainKey;
use super::{Action, Broker};
use crate::message::queued_cost;
use crate::session::ConnId;

/// How long a parked CONNECT waits for the old connection to drain before it is decided
/// anyway (the old connection is then taken over with what the core has of it).
pub const DRAIN_DEADLINE: Duration = Duration::from_millis(200);

/// Estimated bytes of packets held for one parked connection; past them, its CONNECT is
/// decided at once rather than hold more.
pub const HELD_MAX_BYTES: usize = 256 * 1024;

/// A CONNECT waiting for its turn.
#[derive(Debug)]
pub(super) struct Parked {
    conn: ConnId,
    connect: Box<Connect>,
    /// Packets the connection sent behind its CONNECT, in order.
    held: Vec<Packet>,
    held_bytes: usize,
}

/// The CONNECTs waiting for one client id.
#[derive(Debug)]
pub(super) struct Waiting {
    /// The connection asked to drain, whose answer (or end) decides the first in `queue`.
    draining: ConnId,
    /// The deadline armed for this wait in the broker's timers.
    deadline: DrainKey,
    queue: VecDeque<Parked>,
}

impl Broker {
    /// Whether a CONNECT for `client_id` must wait: a live connection holds the id, or other
    /// CONNECTs already wait for it.
    pub(super) fn must_wait(&self, client_id: &Arc<str>) -> bool {
        self.parked.contains_key(client_id) || self.live_conn_of(client_id).is_some()
    }

    /// Parks `connect` behind the others waiting for `client_id`, or asks the holder of the
    /// id to drain (see [`Broker::must_wait`]).
    pub(super) fn park(
        &mut self,
        now: Instant,
        conn: ConnId,
        client_id: &Arc<str>,
        connect: Connect,
    ) {
        let parked = Parked {
            conn,
            connect: Box::new(connect),
            held: Vec::new(),
            held_bytes: 0,
        };
        if let Some(w) = self.parked.get_mut(client_id) {
            w.queue.push_back(parked);
            self.parked_ids.insert(conn, client_id.clone());
            return;
        }
        let Some(old) = self.live_conn_of(client_id) else {
            // Not held after all: decided now.
            self.decide_connect(now, conn, client_id.clone(), *parked.connect, false);
            return;
        };
        let deadline = self.arm_drain(now, client_id);
        let mut queue = VecDeque::new();
        queue.push_back(parked);
        let w = Waiting {
            draining: old,
            deadline,
            queue,
        };
        self.parked.insert(client_id.clone(), w);
        self.parked_ids.insert(conn, client_id.clone());
        tracing::debug!(conn, old, client_id = %client_id, "CONNECT waits for the old connection to drain");
        self.actions.push_back(Action::Drain(old));
    }

    /// The shell has forwarded everything connection `conn` had received when it was asked
    /// to drain ([`Action::Drain`]): a CONNECT waiting for it is decided now.
    pub fn handle_drained(&mut self, now: Instant, conn: ConnId) {
        let Some(id) = self.session_of_conn(conn).map(|s| s.client_id.clone()) else {
            return; // gone meanwhile: what waited for it was decided then
        };
        if self.parked.get(&id).is_some_and(|w| w.draining == conn) {
            self.release_parked(now, &id);
        }
    }

    /// Whether `conn` is a CONNECT still waiting for its turn.
    pub fn is_parked(&self, conn: ConnId) -> bool {
        self.parked_ids.contains_key(&conn)
    }

    /// Connection `conn`, which held `client_id`, has left its session: what waited for it
    /// is decided now.
    pub(super) fn holder_left(&mut self, now: Instant, client_id: &Arc<str>, conn: ConnId) {
        if self
            .parked
            .get(client_id)
            .is_some_and(|w| w.draining == conn)
        {
            self.release_parked(now, client_id);
        }
    }

    /// The drain deadline armed with `key` for `client_id` has passed: if the CONNECTs of
    /// that wait still wait, they are decided without the drain's answer.
    pub(super) fn drain_deadline_passed(&mut self, now: Instant, id: &Arc<str>, key: DrainKey) {
        if self.parked.get(id).is_some_and(|w| w.deadline == key) {
            tracing::debug!(client_id = %id, "old connection did not drain in time: deciding the CONNECT");
            self.release_parked(now, id);
        }
    }

    /// Holds a packet a parked connection sent behind its CONNECT; gives it back when `conn`
    /// is not parked. Past [`HELD_MAX_BYTES`] the CONNECTs up to this one's are decided
    /// without waiting longer, and the packet is given back to be handled as usual.
    pub(super) fn hold_if_parked(
        &mut self,
        now: Instant,
        conn: ConnId,
        packet: Packet,
    ) -> Option<Packet> {
        let Some(id) = self.parked_ids.get(&conn).cloned() else {
            return Some(packet);
        };
        let cost = queued_cost(&packet);
        let over = self
            .parked
            .get(&id)
            .and_then(|w| w.queue.iter().find(|p| p.conn == conn))
            .is_some_and(|p| p.held_bytes + cost > HELD_MAX_BYTES);
        if over {
            tracing::debug!(conn, client_id = %id, "parked connection sent too much: deciding its CONNECT now");
            while self.parked_ids.contains_key(&conn) && self.parked.contains_key(&id) {
                self.release_parked(now, &id);
            }
            self.parked_ids.remove(&conn);
            return Some(packet);
        }
        if let Some(p) = self
            .parked
            .get_mut(&id)
            .and_then(|w| w.queue.iter_mut().find(|p| p.conn == conn))
        {
            p.held_bytes += cost;
            p.held.push(packet);
        }
        None
    }

    /// A parked connection ended before its CONNECT was decided: it is forgotten, with
    /// what it sent. True when `conn` was parked.
    pub(super) fn unpark_lost(&mut self, conn: ConnId) -> bool {
        let Some(id) = self.parked_ids.remove(&conn) else {
            return false;
        };
        let Some(w) = self.parked.get_mut(&id) else {
            return true;
        };
        w.queue.retain(|p| p.conn != conn);
        if w.queue.is_empty() {
            // The drain asked for is answered into the void: nothing waits any more.
            let key = w.deadline;
            self.parked.remove(&id);
            self.timers.cancel_drain(key);
        }
        true
    }

    /// Shutting down: every parked CONNECT is refused (server unavailable) and closed.
    pub(super) fn refuse_parked(&mut self) {
        let waiting: Vec<Waiting> = self.parked.drain().map(|(_, w)| w).collect();
        self.parked_ids.clear();
        self.timers.clear_drains();
        for p in waiting.into_iter().flat_map(|w| w.queue) {
            self.refuse(p.conn, ReasonCode::SERVER_UNAVAILABLE, p.connect.protocol);
        }
    }

    /// Decides the first CONNECT waiting for `client_id`, then the next ones: each is
    /// decided at once while nobody holds the id, else after the holder has drained.
    pub(super) fn release_parked(&mut self, now: Instant, client_id: &Arc<str>) {
        let Some(mut w) = self.parked.remove(client_id) else {
            return;
        };
        self.timers.cancel_drain(w.deadline);
        while let Some(p) = w.queue.pop_front() {
            self.parked_ids.remove(&p.conn);
            self.decide_connect(now, p.conn, client_id.clone(), *p.connect, false);
            for packet in p.held {
                self.handle_packet(now, p.conn, packet);
            }
            if w.queue.is_empty() {
                return;
            }
            if let Some(holder) = self.live_conn_of(client_id) {
                w.draining = holder;
                w.deadline = self.arm_drain(now, client_id);
                self.actions.push_back(Action::Drain(holder));
                self.parked.insert(client_id.clone(), w);
                return;
            }
        }
    }

    /// The live connection holding `client_id`, if any.
    fn live_conn_of(&self, client_id: &Arc<str>) -> Option<ConnId> {
        let idx = self.sessions.by_client_id(client_id)?;
        self.session(idx).ok().and_then(|s| s.conn)
    }

    fn arm_drain(&mut self, now: Instant, client_id: &Arc<str>) -> DrainKey {
        self.timers
            .arm_drain(now + DRAIN_DEADLINE, client_id.clone())
    }
}
