//! Counters kept outside the router: by the connection tasks (bytes, packets, refusals) and
//! the accept loops. `$SYS` and `/metrics` read them.
//!
//! They are shared atomics, so the hot ones are kept off the per-packet path: a connection
//! task tallies bytes and packets in plain fields and adds them here once per wake-up
//! (`connection::io`), and each hot counter has a cache line of its own, so connection tasks
//! on different cores do not fight over one line.

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};

/// An atomic counter alone on its cache line (128 bytes: two lines are fetched together on
/// current x86, and Apple's cores use 128-byte lines).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Padded(AtomicU64);

impl Padded {
    pub const fn new(value: u64) -> Padded {
        Padded(AtomicU64::new(value))
    }
}

impl Deref for Padded {
    type Target = AtomicU64;
    fn deref(&self) -> &AtomicU64 {
        &self.0
    }
}

/// Why a CONNECT was refused by authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// A username the password file does not have.
    UnknownUser,
    /// A known user with a wrong or missing password.
    WrongPassword,
    /// No username where anonymous clients are not allowed.
    Anonymous,
    /// `use_identity_as_username` and no name in a verified client certificate.
    NoCertificateName,
    /// Refused unchecked: too many failed attempts queued from the address.
    Throttled,
    /// The listener's settings could not be found (a bug, never expected).
    Unavailable,
}

impl AuthFailure {
    /// Every kind, in the order of [`Counters::auth_failures`].
    pub const ALL: [AuthFailure; 6] = [
        AuthFailure::UnknownUser,
        AuthFailure::WrongPassword,
        AuthFailure::Anonymous,
        AuthFailure::NoCertificateName,
        AuthFailure::Throttled,
        AuthFailure::Unavailable,
    ];

    /// The `reason` label of `makelaar_auth_failures_total`.
    pub fn label(self) -> &'static str {
        match self {
            AuthFailure::UnknownUser => "unknown_user",
            AuthFailure::WrongPassword => "wrong_password",
            AuthFailure::Anonymous => "anonymous",
            AuthFailure::NoCertificateName => "no_certificate_name",
            AuthFailure::Throttled => "throttled",
            AuthFailure::Unavailable => "unavailable",
        }
    }
}

/// Counters kept outside the router.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes read from MQTT clients.
    pub bytes_received: Padded,
    /// Bytes written to MQTT clients.
    pub bytes_sent: Padded,
    /// MQTT packets decoded.
    pub packets_received: Padded,
    /// MQTT packets encoded for sending.
    pub packets_sent: Padded,
    /// QoS 0 messages dropped because their client was not reading (max_outgoing_bytes).
    /// Written by the router alone.
    pub dropped_slow_client: AtomicU64,
    /// CONNECTs refused by authentication, by [`AuthFailure`] (in the order of `ALL`).
    pub auth_failures: [AtomicU64; AuthFailure::ALL.len()],
    /// Connections refused for their listener's `max_connections`.
    pub refused_max_connections: AtomicU64,
    /// Connections refused for `max_connection_rate`.
    pub refused_connection_rate: AtomicU64,
    /// Clients disconnected for `max_publish_rate`.
    pub disconnected_publish_rate: AtomicU64,
    /// One entry per running bridge (`$SYS/broker/bridge/<name>/...`, metrics, dashboard);
    /// replaced when a reload starts or stops bridges.
    pub bridges: std::sync::RwLock<Vec<std::sync::Arc<BridgeCounters>>>,
    /// This node's cluster figures, when it is a cluster node (`$SYS/broker/cluster/...`,
    /// metrics, dashboard).
    pub cluster: Option<ClusterCounters>,
}

/// What a cluster node shows of its part: its name and the figures the cluster layer keeps
/// (`makelaar_cluster::stats::NodeStats`, written by the lease task, the writer, the
/// followers and the claims; the router's queue to the cluster by the router and writer).
#[derive(Debug, Clone)]
pub struct ClusterCounters {
    /// This node's name in the cluster.
    pub node: String,
    /// The figures.
    pub stats: std::sync::Arc<makelaar_cluster::stats::NodeStats>,
}

/// What one bridge's task reports, written by that task alone.
#[derive(Debug, Default)]
pub struct BridgeCounters {
    pub name: String,
    /// The client id of its local session (whose queue is the bridge's, see
    /// `makelaar_core::Broker::bridge_queue`).
    pub local_client_id: String,
    /// The remote's address in use or last tried (`host:port`).
    pub address: std::sync::Mutex<String>,
    /// Why the last link ended or the last attempt failed; empty before that.
    pub last_error: std::sync::Mutex<String>,
    /// The link's state (`makelaar_core::bridge::LinkState` as `u8`, see
    /// [`BridgeCounters::state_name`]).
    pub state: std::sync::atomic::AtomicU8,
    /// Links the remote accepted.
    pub connects: AtomicU64,
    /// Messages relayed to the remote and from it.
    pub forwarded_out: AtomicU64,
    pub forwarded_in: AtomicU64,
    /// Messages relayed and not yet acknowledged, both ways.
    pub in_flight: AtomicU64,
    /// Messages dropped by the loop guard.
    pub dropped_loop: AtomicU64,
    /// Messages dropped for another reason (no route, too large, refused by the remote).
    pub dropped_other: AtomicU64,
    /// Messages sent at a lower QoS than they came with (the remote's Maximum QoS).
    pub downgraded: AtomicU64,
}

impl BridgeCounters {
    pub fn new(name: &str, local_client_id: &str) -> BridgeCounters {
        BridgeCounters {
            name: name.to_owned(),
            local_client_id: local_client_id.to_owned(),
            ..BridgeCounters::default()
        }
    }

    /// Records the address in use.
    pub fn set_address(&self, a: String) {
        if let Ok(mut g) = self.address.lock() {
            *g = a;
        }
    }

    /// Records why the link ended or an attempt failed.
    pub fn set_last_error(&self, e: String) {
        if let Ok(mut g) = self.last_error.lock() {
            *g = e;
        }
    }

    /// The address in use or last tried.
    pub fn address(&self) -> String {
        self.address.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// Why the last link ended; empty before that.
    pub fn last_error(&self) -> String {
        self.last_error
            .lock()
            .map(|g| g.clone())
            .unwrap_or_default()
    }

    /// Records the link's state.
    pub fn set_state(&self, state: makelaar_core::bridge::LinkState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    /// The link's state.
    pub fn link_state(&self) -> makelaar_core::bridge::LinkState {
        use makelaar_core::bridge::LinkState;
        [
            LinkState::Down,
            LinkState::Connecting,
            LinkState::Connected,
            LinkState::Stopped,
        ]
        .into_iter()
        .find(|s| *s as u8 == self.state.load(Ordering::Relaxed))
        .unwrap_or(LinkState::Down)
    }

    /// The state as `$SYS` shows it.
    pub fn state_name(&self) -> &'static str {
        self.link_state().name()
    }
}

impl Counters {
    /// The running bridges' counters.
    pub fn bridge_list(&self) -> Vec<std::sync::Arc<BridgeCounters>> {
        self.bridges.read().map(|b| b.clone()).unwrap_or_default()
    }

    /// Replaces the running bridges' counters.
    pub fn set_bridges(&self, list: Vec<std::sync::Arc<BridgeCounters>>) {
        if let Ok(mut b) = self.bridges.write() {
            *b = list;
        }
    }

    /// Counts a refused login.
    pub fn auth_failed(&self, why: AuthFailure) {
        let i = AuthFailure::ALL.iter().position(|&k| k == why);
        if let Some(c) = i.and_then(|i| self.auth_failures.get(i)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Refused logins of one kind.
    pub fn auth_failures_of(&self, why: AuthFailure) -> u64 {
        let i = AuthFailure::ALL.iter().position(|&k| k == why);
        i.and_then(|i| self.auth_failures.get(i))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Refused logins, every kind.
    pub fn refused_login(&self) -> u64 {
        self.auth_failures
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// Bytes and packets a connection task counts in plain fields between two flushes into the
/// shared [`Counters`].
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub packets_received: u64,
    pub packets_sent: u64,
}

impl Tally {
    /// Adds what was counted to `c` and starts again from zero; touches only what moved.
    pub(crate) fn flush(&mut self, c: &Counters) {
        let pairs = [
            (&mut self.bytes_received, &c.bytes_received),
            (&mut self.bytes_sent, &c.bytes_sent),
            (&mut self.packets_received, &c.packets_received),
            (&mut self.packets_sent, &c.packets_sent),
        ];
        for (mine, shared) in pairs {
            if *mine != 0 {
                shared.fetch_add(std::mem::take(mine), Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_auth_failure_has_its_own_counter() {
        let c = Counters::default();
        c.auth_failed(AuthFailure::WrongPassword);
        c.auth_failed(AuthFailure::WrongPassword);
        c.auth_failed(AuthFailure::Throttled);
        assert_eq!(c.auth_failures_of(AuthFailure::WrongPassword), 2);
        assert_eq!(c.auth_failures_of(AuthFailure::Throttled), 1);
        assert_eq!(c.auth_failures_of(AuthFailure::UnknownUser), 0);
        assert_eq!(c.refused_login(), 3);
    }

    #[test]
    fn a_tally_flushes_into_the_counters_once() {
        let c = Counters::default();
        let mut t = Tally {
            bytes_received: 10,
            packets_sent: 2,
            ..Tally::default()
        };
        t.flush(&c);
        t.flush(&c);
        assert_eq!(c.bytes_received.load(Ordering::Relaxed), 10);
        assert_eq!(c.packets_sent.load(Ordering::Relaxed), 2);
        assert_eq!(c.bytes_sent.load(Ordering::Relaxed), 0);
        assert_eq!(t.bytes_received, 0);
    }
}
