//! The router task: the one owner of the core [`Broker`] state. Connection tasks send it
//! what their clients did over one bounded channel; it answers through each connection's
//! `Outbox`, and sweeps their keep-alive clocks. Nothing else touches sessions, subscriptions
//! or retained messages.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use makelaar_core::session::ConnId;
use makelaar_core::{Action, Broker};
use makelaar_proto::{Connect, Packet, ReasonCode};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::outbox::{self, Outbox, Refused};
use crate::sys::SysPublisher;
use crate::Counters;

/// How often keep-alives are checked: a 1 s keep-alive is then enforced between 1.5 and
/// 1.75 s of silence.
const KEEP_ALIVE_SWEEP: Duration = Duration::from_millis(250);

/// What a connection task tells the router.
// Packets travel by value: a memcpy is cheaper than an allocation per packet.
#[allow(clippy::large_enum_variant)]
pub enum ToRouter {
    /// A CONNECT was received; `out` is where the router puts this connection's packets.
    Connect {
        conn: ConnId,
        connect: Box<Connect>,
        out: Arc<Outbox>,
    },
    /// A packet from a connected client, already checked by its `ConnState`.
    Packet { conn: ConnId, packet: Packet },
    /// The connection broke the protocol; the task has told the client (5.0) and closes.
    Violation {
        conn: ConnId,
        reason: ReasonCode,
        text: &'static str,
    },
    /// The connection ended without DISCONNECT.
    Lost { conn: ConnId },
}

pub(crate) struct Router {
    broker: Broker,
    conns: HashMap<ConnId, Arc<Outbox>>,
    max_outgoing: usize,
    counters: Arc<Counters>,
    sys: SysPublisher,
    slow_logged: HashMap<ConnId, ()>,
    /// Outboxes written in this batch, woken together at its end.
    to_wake: Vec<Arc<Outbox>>,
}

impl Router {
    pub(crate) fn new(broker: Broker, counters: Arc<Counters>, sys: SysPublisher) -> Router {
        let max_outgoing = broker.limits().max_outgoing_bytes;
        Router {
            broker,
            conns: HashMap::new(),
            max_outgoing,
            counters,
            sys,
            slow_logged: HashMap::new(),
            to_wake: Vec::new(),
        }
    }

    /// Runs until `shutdown` is cancelled, then tells every client and returns.
    pub(crate) async fn run(
        mut self,
        mut rx: mpsc::Receiver<ToRouter>,
        shutdown: CancellationToken,
    ) {
        let start = Instant::now();
        let far = Duration::from_secs(3600);
        let mut next_sweep = start + KEEP_ALIVE_SWEEP;
        loop {
            let now = Instant::now();
            let timer = self
                .broker
                .poll_timeout()
                .unwrap_or(now + far)
                .min(self.sys.next_due(now))
                .min(next_sweep);
            tokio::select! {
                msg = rx.recv() => {
                    let Some(msg) = msg else { break };
                    let now = Instant::now();
                    self.handle(now, msg);
                    // Take what else is ready before flushing: fewer wake-ups per packet.
                    for _ in 0..256 {
                        match rx.try_recv() {
                            Ok(msg) => self.handle(now, msg),
                            Err(_) => break,
                        }
                    }
                }
                _ = tokio::time::sleep_until(timer.into()) => {
                    let now = Instant::now();
                    if now >= next_sweep {
                        self.sweep_keep_alive(now);
                        next_sweep = now + KEEP_ALIVE_SWEEP;
                    }
                    self.broker.handle_timeout(now);
                    if self.sys.maybe_publish(now, start, &mut self.broker, &self.counters) {
                        self.broker.purge_expired_retained(now);
                    }
                }
                _ = shutdown.cancelled() => {
                    self.broker.shutdown(ReasonCode::SERVER_SHUTTING_DOWN);
                    self.flush();
                    break;
                }
            }
            self.flush();
        }
    }

    fn handle(&mut self, now: Instant, msg: ToRouter) {
        match msg {
            ToRouter::Connect { conn, connect, out } => {
                self.conns.insert(conn, out);
                self.broker.handle_connect(now, conn, *connect);
            }
            ToRouter::Packet { conn, packet } => self.broker.handle_packet(now, conn, packet),
            ToRouter::Violation { conn, reason, text } => {
                tracing::debug!(conn, %reason, text, "protocol violation");
                self.broker.handle_connection_lost(now, conn);
                self.close(conn);
            }
            ToRouter::Lost { conn } => {
                self.broker.handle_connection_lost(now, conn);
                self.close(conn);
            }
        }
    }

    /// Carries out what the broker decided, then wakes every connection that got packets:
    /// once each, and in reverse order. Tokio runs the task woken last first, on this worker:
    /// that is the receiver of the batch's first packet, usually a delivery rather than the
    /// publisher's acknowledgement, which keeps delivery latency low.
    fn flush(&mut self) {
        while let Some(action) = self.broker.poll_action() {
            match action {
                Action::Send(conn, packet) => self.send(conn, packet),
                Action::Close(conn) => self.close(conn),
                // Only a broker restored from a store has backlogs, and this one has none.
                Action::LoadBacklog(client_id) => {
                    self.broker
                        .handle_backlog_loaded(Instant::now(), &client_id, Vec::new());
                }
            }
        }
        for out in self.to_wake.drain(..).rev() {
            out.wake();
        }
    }

    fn send(&mut self, conn: ConnId, packet: Packet) {
        let Some(out) = self.conns.get(&conn) else {
            return;
        };
        match out.push_quiet(packet, self.max_outgoing) {
            Ok(()) => {
                if out.list_for_wake() {
                    self.to_wake.push(out.clone());
                }
                return;
            }
            Err(Refused::Closed) => return,
            Err(Refused::OverBudget) => {}
        }
        self.counters
            .dropped_slow_client
            .fetch_add(1, Ordering::Relaxed);
        if self.slow_logged.insert(conn, ()).is_none() {
            tracing::warn!(conn, max_outgoing_bytes = self.max_outgoing, "client is not reading fast enough: dropping QoS 0 messages to it (max_outgoing_bytes)");
        }
    }

    /// Wakes every connection whose client has been silent past 1.5 × its keep-alive; the
    /// connection then closes itself as a keep-alive violation [MQTT-3.1.2-24].
    fn sweep_keep_alive(&mut self, now: Instant) {
        let now_ms = outbox::millis(now);
        for (conn, out) in &self.conns {
            if out.expire_if_silent(now_ms) {
                tracing::debug!(conn, "keep-alive expired");
            }
        }
    }

    fn close(&mut self, conn: ConnId) {
        self.slow_logged.remove(&conn);
        if let Some(out) = self.conns.remove(&conn) {
            out.close();
        }
    }
}
