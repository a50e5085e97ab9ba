//! Node leases, sans-IO: when to refresh our own, when a peer's has expired, when we must
//! stop serving because ours may have, and which survivor publishes a dead node's wills.
//!
//! Each node writes its [`NodeLease`](crate::record::NodeLease) into the `leases` bucket every
//! [`LeaseConfig::refresh`]; the bucket's entries expire [`LeaseConfig::ttl`] after their last
//! write. Peers are judged by this node's own clock: a peer is expired when no write of its
//! lease was seen for `ttl` (no clocks are compared across hosts).
//!
//! Leases are not locks (rule 3 of docs/cluster.md): an expired peer may still be running.
//! What it can no longer do is write: every session write is compare-and-set on the revision
//! it read ([`crate::takeover::Fence`]). And a node that cannot refresh its own lease stops
//! serving before the lease could expire for the others ([`OwnLease::poll`] says
//! [`OwnState::StepDown`] after `ttl - margin`), so its clients move to a node that can.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::ids::NodeId;

/// The lease timings, the same on every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How often a node writes its lease.
    pub refresh: Duration,
    /// How long a lease lives after its last write; longer than a JetStream leader election.
    pub ttl: Duration,
    /// How long before `ttl` a node that could not refresh stops serving.
    pub margin: Duration,
}

/// Why a lease configuration is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LeaseConfigError {
    /// The refresh interval is zero.
    #[error("lease refresh interval must be more than zero")]
    ZeroRefresh,
    /// TTL − margin leaves no room for two missed refreshes.
    #[error("lease ttl minus margin must be at least three refresh intervals")]
    TooShort,
}

impl Default for LeaseConfig {
    /// Refresh every 2 s, live 15 s, step down at 10 s without a refresh.
    fn default() -> Self {
        LeaseConfig {
            refresh: Duration::from_secs(2),
            ttl: Duration::from_secs(15),
            margin: Duration::from_secs(5),
        }
    }
}

impl LeaseConfig {
    /// Checks the timings: `ttl - margin >= 3 × refresh`, so two refreshes may fail in a row
    /// before a node steps down.
    pub fn validate(self) -> Result<LeaseConfig, LeaseConfigError> {
        if self.refresh.is_zero() {
            return Err(LeaseConfigError::ZeroRefresh);
        }
        let room = self.ttl.saturating_sub(self.margin);
        if room < self.refresh.saturating_mul(3) {
            return Err(LeaseConfigError::TooShort);
        }
        Ok(self)
    }
}

/// What this node should do about its own lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnState {
    /// Nothing before the instant given.
    Idle(Instant),
    /// Write the lease now.
    Refresh,
    /// The last successful write is older than `ttl - margin`: stop acknowledging and
    /// accepting, disconnect the clients (rule 5 of docs/cluster.md). Said once; refreshes
    /// go on being asked for.
    StepDown,
    /// The lease is held: serve. Said once after the first successful write, and once after
    /// each step-down when a write succeeds again. A node serves nothing before it.
    Resume,
    /// Stepped down, and no lease write has been confirmed for a whole `ttl`: connect to
    /// another server of the engine's cluster. The server this node is connected to may
    /// answer the connection's pings yet not get its writes through (found by the fault
    /// harness: a NATS server left with routes it could not use after a cut link kept its
    /// node stepped down for 90 s while the other nodes, on other servers, served), or be
    /// stalled altogether (a pause, a disk that hangs its fsync) with the connection still
    /// open. Said again after every further `ttl` of failures.
    MoveServer,
}

/// This node's lease.
#[derive(Debug, Clone)]
pub struct OwnLease {
    config: LeaseConfig,
    /// The last write the engine confirmed (counted from when it was sent).
    confirmed: Option<Instant>,
    /// A write is on its way, sent at this instant.
    in_flight: Option<Instant>,
    next: Instant,
    down: bool,
    resume_pending: bool,
    /// Since when this node's lease writes have all failed, after it had served (or since
    /// it last asked to move to another server): see [`OwnState::MoveServer`].
    failing_since: Option<Instant>,
}

impl OwnLease {
    /// A lease to be written at once; not serving until it is.
    pub fn new(config: LeaseConfig, now: Instant) -> OwnLease {
        OwnLease {
            config,
            confirmed: None,
            in_flight: None,
            next: now,
            down: true,
            resume_pending: false,
            failing_since: None,
        }
    }

    fn limit(&self) -> Duration {
        self.config.ttl.saturating_sub(self.config.margin)
    }

    /// The next thing to do. `Refresh` is returned once per due write; call
    /// [`OwnLease::handle_written`] or [`OwnLease::handle_failed`] with its outcome.
    pub fn poll(&mut self, now: Instant) -> OwnState {
        let step_down_at = self.confirmed.map(|at| at + self.limit());
        if !self.down && step_down_at.is_some_and(|t| now >= t) {
            self.down = true;
            return OwnState::StepDown;
        }
        if self.resume_pending {
            self.resume_pending = false;
            return OwnState::Resume;
        }
        let move_at = self.move_at();
        if move_at.is_some_and(|t| now >= t) {
            self.failing_since = Some(now);
            return OwnState::MoveServer;
        }
        if self.in_flight.is_none() && now >= self.next {
            self.in_flight = Some(now);
            return OwnState::Refresh;
        }
        let mut wake = self.next.max(now);
        if let Some(t) = step_down_at.filter(|_| !self.down) {
            wake = wake.min(t);
        }
        if let Some(t) = move_at {
            wake = wake.min(t);
        }
        OwnState::Idle(wake)
    }

    /// When to connect to another server ([`OwnState::MoveServer`]): a `ttl` after the
    /// first of the failed writes of a stepped-down node that had served.
    fn move_at(&self) -> Option<Instant> {
        let since = self.failing_since.filter(|_| self.down)?;
        Some(since + self.config.ttl)
    }

    /// The engine confirmed the write sent at the last `Refresh`.
    pub fn handle_written(&mut self, _now: Instant) {
        if let Some(sent) = self.in_flight.take() {
            // The lease lives from when the write was sent at the latest: count from there.
            self.confirmed = Some(self.confirmed.map_or(sent, |c| c.max(sent)));
            self.next = sent + self.config.refresh;
            if self.down {
                self.down = false;
                self.resume_pending = true;
            }
            self.failing_since = None;
        }
    }

    /// The write failed: try again after one refresh interval.
    pub fn handle_failed(&mut self, now: Instant) {
        self.in_flight = None;
        self.next = now + self.config.refresh;
        if self.confirmed.is_some() {
            self.failing_since.get_or_insert(now);
        }
    }

    /// When this node steps down unless a refresh is confirmed first (`None`: stepped down
    /// already, or not serving yet). The shell bounds every engine round trip of the lease
    /// task by it: a write or a read that hangs (a NATS server cut off with this node
    /// answers nothing until the request times out) must not hold the step-down back past
    /// the instant the peers may call the lease expired (rule 5 of docs/cluster.md).
    pub fn step_down_at(&self) -> Option<Instant> {
        if self.down {
            return None;
        }
        self.confirmed.map(|at| at + self.limit())
    }

    /// Whether this node holds a lease that is not yet to be given up.
    pub fn is_serving(&self, now: Instant) -> bool {
        self.confirmed
            .is_some_and(|at| now.saturating_duration_since(at) < self.limit())
    }

    /// Whether this node may reap dead peers now: only while it holds its own lease
    /// ([`OwnLease::is_serving`]). A node that does not (stepped down, or not serving yet)
    /// is most likely the one cut off: its reads of the leases fail, or come from a server
    /// cut from their leader (stale or absent), so its live peers look dead to it. The fault
    /// harness saw a stepped-down node try to reap live ones (a cut link; only a timeout
    /// kept it from taking their sessions over and publishing their clients' wills). The
    /// dead peers it sees meanwhile are reaped once it holds its lease again
    /// ([`Leases::reapable`]), by it or by a peer that holds its own.
    pub fn may_reap(&self, now: Instant) -> bool {
        self.is_serving(now)
    }
}

/// This node's incarnations: the one its registry entries and reaper keys name, the one its
/// lease writes carry, and the earlier ones of this process.
///
/// A node that stepped down may have been called dead by its peers (its lease lapsed:
/// paused past the TTL, cut off), and one of them may have reaped it: created the reaper
/// key `node.incarnation` and taken its sessions over. Coming back under the same
/// incarnation would leave that key in place, so when the node died later no survivor
/// could reap it again (its sessions and wills stranded). So a node comes back from every
/// step-down as a new incarnation: its peers see the new one replace the old
/// ([`Leases::handle_seen`] reports the old one expired if they had not), one of them reaps
/// the old one (everything it held is taken over, by compare-and-set, so nothing this
/// process wrote since is lost), and a later death of the new one has a reaper key of its
/// own. A new incarnation rather than a lease revision in the reaper key: the registry
/// entries name their holder's incarnation, so a late reaper of the old one cannot take a
/// client this node claimed after it came back ([`crate::wills::left_by`]), and survivors
/// agree on an incarnation (it is in the lease) where they might not on the last revision
/// each saw. Not only past the TTL: when a peer calls the lease expired is judged by its
/// own clock and reads, so any step-down may have been seen as a death.
///
/// The new incarnation is written into the lease first and named in registry entries only
/// once such a lease write succeeded, so the peers have it to reap when the node dies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incarnations {
    current: u64,
    lease: u64,
    earlier: Vec<u64>,
}

impl Incarnations {
    /// A node starting as `first`.
    pub fn new(first: u64) -> Incarnations {
        Incarnations {
            current: first,
            lease: first,
            earlier: Vec::new(),
        }
    }

    /// The incarnation this node's registry entries and claims name now.
    pub fn current(&self) -> u64 {
        self.current
    }

    /// The incarnation the next lease write carries.
    pub fn lease(&self) -> u64 {
        self.lease
    }

    /// The node stepped down: its lease writes carry `fresh` from now on (a value this
    /// process never had: one after the highest it had if `fresh` is one of them). Once per
    /// step-down; again before a lease write succeeded, it keeps the one chosen.
    pub fn stepped_down(&mut self, fresh: u64) {
        if self.lease != self.current {
            return;
        }
        self.lease = if self.is_mine(fresh) {
            self.all().max().unwrap_or(fresh).saturating_add(1)
        } else {
            fresh
        };
    }

    /// A lease write carrying `incarnation` was confirmed: a new one is this node's from now
    /// on, the old one is one of its earlier incarnations. Whether it changed.
    pub fn lease_written(&mut self, incarnation: u64) -> bool {
        if incarnation != self.lease || incarnation == self.current {
            return false;
        }
        self.earlier.push(self.current);
        self.current = incarnation;
        true
    }

    /// Whether `incarnation` is this process's, now or earlier: what this node's broker
    /// still holds of a client it had under an earlier incarnation is its own to decide
    /// (e.g. the will, [`crate::wills::claimer_decides`]).
    pub fn is_mine(&self, incarnation: u64) -> bool {
        incarnation == self.current
            || incarnation == self.lease
            || self.earlier.contains(&incarnation)
    }

    /// This process's incarnations: the current one, the one its lease is about to carry,
    /// and the earlier ones.
    pub fn all(&self) -> impl Iterator<Item = u64> + '_ {
        [self.current, self.lease]
            .into_iter()
            .chain(self.earlier.iter().copied())
    }
}

/// What is known of one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Peer {
    incarnation: u64,
    revision: u64,
    seen: Instant,
    reported: bool,
}

/// A peer whose lease has expired: its wills are to be published by one survivor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    /// The node.
    pub node: NodeId,
    /// The incarnation whose lease expired.
    pub incarnation: u64,
}

impl Expired {
    /// The key in the `reapers` bucket that survivors create, compare-and-set (create only if
    /// absent): the one whose create succeeds publishes the dead node's due wills and marks
    /// its sessions offline; the others leave it. One key per dead incarnation, so a node that
    /// restarts, or comes back from a step-down ([`Incarnations`]), and dies again is reaped
    /// again.
    pub fn reaper_key(&self) -> String {
        format!("{}.{}", self.node, self.incarnation)
    }
}

/// The peers' leases as this node sees them.
#[derive(Debug, Clone)]
pub struct Leases {
    config: LeaseConfig,
    me: NodeId,
    peers: HashMap<NodeId, Peer>,
    /// Replaced incarnations ([`Leases::handle_seen`]) not reaped yet
    /// ([`Leases::handle_not_reaped`]): given again by [`Leases::reapable`].
    deferred: Vec<Expired>,
}

impl Leases {
    /// No peer known yet.
    pub fn new(config: LeaseConfig, me: NodeId) -> Leases {
        Leases {
            config,
            me,
            peers: HashMap::new(),
            deferred: Vec::new(),
        }
    }

    /// `node`'s lease was read (or watched) at `revision`. Only a revision not seen before
    /// counts as a refresh: an entry that is still in the bucket but was not written again
    /// does not keep its node alive. A new incarnation replaces the old one, which is
    /// reported expired first if it was not yet: the old incarnation died (its connections
    /// are gone) even though the name is alive again.
    pub fn handle_seen(
        &mut self,
        node: &NodeId,
        incarnation: u64,
        revision: u64,
        now: Instant,
    ) -> Option<Expired> {
        if *node == self.me {
            return None;
        }
        if self
            .peers
            .get(node)
            .is_some_and(|p| p.revision == revision && p.incarnation == incarnation)
        {
            return None;
        }
        let fresh = Peer {
            incarnation,
            revision,
            seen: now,
            reported: false,
        };
        match self.peers.insert(node.clone(), fresh) {
            Some(old) if old.incarnation != incarnation && !old.reported => Some(Expired {
                node: node.clone(),
                incarnation: old.incarnation,
            }),
            _ => None,
        }
    }

    /// Whether `node` in `incarnation` holds a live lease (this node counts as live).
    pub fn is_alive(&self, node: &NodeId, incarnation: u64, now: Instant) -> bool {
        if *node == self.me {
            return true;
        }
        self.peers.get(node).is_some_and(|p| {
            p.incarnation == incarnation && now.saturating_duration_since(p.seen) < self.config.ttl
        })
    }

    /// The peers whose lease expired since the last call, each incarnation reported once.
    pub fn poll_expired(&mut self, now: Instant) -> Vec<Expired> {
        let ttl = self.config.ttl;
        let mut out: Vec<Expired> = self
            .peers
            .iter_mut()
            .filter(|(_, p)| !p.reported && now.saturating_duration_since(p.seen) >= ttl)
            .map(|(n, p)| {
                p.reported = true;
                Expired {
                    node: n.clone(),
                    incarnation: p.incarnation,
                }
            })
            .collect();
        out.sort_by(|a, b| a.node.cmp(&b.node));
        out
    }

    /// A reported expiry was not acted on: its lease turned out to be still in the bucket
    /// (the engine removes expired entries on its own schedule, which may lag this node's
    /// clock), the reaping's claim failed or ran out of time, or this node may not reap now
    /// ([`OwnLease::may_reap`]). The peer's current incarnation is reported again by the
    /// next [`Leases::poll_expired`] unless a new write of it is seen first; one replaced by
    /// a newer incarnation (dead for sure) by the next [`Leases::reapable`].
    pub fn handle_not_reaped(&mut self, expired: &Expired) {
        match self.peers.get_mut(&expired.node) {
            Some(p) if p.incarnation == expired.incarnation => p.reported = false,
            _ => {
                if !self.deferred.contains(expired) {
                    self.deferred.push(expired.clone());
                }
            }
        }
    }

    /// The dead peers this node is to try to reap now: those `found` by the last read of
    /// the leases (incarnations replaced, from [`Leases::handle_seen`]), those given back
    /// by [`Leases::handle_not_reaped`], and those whose lease ran out
    /// ([`Leases::poll_expired`]). None while this node may not reap
    /// ([`OwnLease::may_reap`]): they are kept, and given once it may, unless a peer's
    /// lease is seen written again by then (it was alive; this node was the one cut off).
    pub fn reapable(&mut self, own: &OwnLease, found: Vec<Expired>, now: Instant) -> Vec<Expired> {
        let mut out = found;
        out.append(&mut self.deferred);
        out.extend(self.poll_expired(now));
        if own.may_reap(now) {
            return out;
        }
        for e in &out {
            self.handle_not_reaped(e);
        }
        Vec::new()
    }

    /// The earliest instant at which a known live peer would expire.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.peers
            .values()
            .filter(|p| !p.reported)
            .map(|p| p.seen + self.config.ttl)
            .min()
    }

    /// The peers with a live lease, in name order.
    pub fn alive(&self, now: Instant) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.seen) < self.config.ttl)
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests;
