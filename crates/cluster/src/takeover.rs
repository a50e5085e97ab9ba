//! Claiming a client id across the cluster, sans-IO, and fencing the session writes.
//!
//! Client ids are unique across the cluster ([MQTT-3.1.4-3]: a second connection with the
//! same id takes the session over and the first is closed). The `registry` bucket maps each
//! client id to a [`RegistryEntry`]: the owning node, its incarnation, whether a connection
//! is open there. A node claims an id by compare-and-set on that entry:
//!
//! | the entry read | what [`Claim`] asks for |
//! |---|---|
//! | none (a free id) | create it (only if still absent) |
//! | ours, or not connected anywhere | update it (compare-and-set on the revision read) |
//! | owner's lease expired ([`crate::lease::Leases::is_alive`] says no) | update it directly |
//! | a live connection on another node | ask that node to close it (5.0: DISCONNECT 0x8E, Session taken over) and hand the session over; wait for its answer until a deadline; then read again and update |
//!
//! A create or update that loses a race (someone else wrote first: a conflict) starts over
//! with a fresh read after a pause that doubles from [`ClaimConfig::retry_backoff`] (capped
//! at 32 times it), up to [`ClaimConfig::max_attempts`]. The pause matters: a write that is
//! still being replicated already refuses a competing compare-and-set, but reads do not
//! show it until it is committed, so an immediate retry would read the old state again. Two nodes claiming at once: one
//! wins the compare-and-set, the other reads the winner's entry and asks it to hand over, so
//! the last CONNECT wins as on a single broker.
//!
//! If the owner does not answer by the deadline, the claim goes ahead anyway: the owner is
//! fenced. Every write of a session record carries the revision it read ([`Fence`]); the new
//! owner writes the record once right after its claim, so any later write of the old owner
//! fails its compare-and-set and tells it that it lost the session.

use std::time::{Duration, Instant};

use crate::ids::{NodeId, Revision};
use crate::record::RegistryEntry;

/// Timings and bounds of a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimConfig {
    /// How long to wait for the owning node to close its connection and hand over.
    pub handover_timeout: Duration,
    /// How many compare-and-set conflicts before giving up.
    pub max_attempts: u32,
    /// The pause after the first conflict; it doubles with each further one.
    pub retry_backoff: Duration,
}

impl Default for ClaimConfig {
    /// 3 s for a hand-over, 10 attempts, 5 ms then 10, 20, … 160 ms between them.
    fn default() -> Self {
        ClaimConfig {
            handover_timeout: Duration::from_secs(3),
            max_attempts: 10,
            retry_backoff: Duration::from_millis(5),
        }
    }
}

/// What the claim needs done next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimStep {
    /// Read the registry entry; answer with [`Claim::handle_read`].
    Read,
    /// Create the entry only if absent; answer with [`Claim::handle_written`].
    Create(RegistryEntry),
    /// Replace the entry if its revision is still the one given; answer with
    /// [`Claim::handle_written`].
    Update(RegistryEntry, Revision),
    /// Ask `owner` to close its connection for this id (0x8E) and hand the session over;
    /// answer with [`Claim::handle_released`] when it has (or not at all: the deadline
    /// covers a silent owner).
    AskRelease {
        /// The node holding the connection.
        owner: NodeId,
        /// The registry revision seen: the owner compares it with its own.
        revision: Revision,
    },
    /// Nothing to do until an answer arrives or the instant passes.
    Wait(Instant),
    /// The claim is over.
    Done(Result<Claimed, ClaimError>),
}

/// A successful claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The registry revision written: the fencing epoch of the new connection.
    pub revision: Revision,
    /// The entry replaced (`None` for a free id).
    pub previous: Option<RegistryEntry>,
    /// The live owner, and the revision it was asked under, that this claim went ahead
    /// without: it did not answer the hand-over (silent, or no responder on its subject
    /// while its lease lives: a route between NATS servers down or flapping). It still
    /// holds its connection, and nothing else tells it to close it: it is to be asked again
    /// until it answers (found by the fault harness: 33 s of double serving under packet
    /// loss).
    pub unanswered: Option<(NodeId, Revision)>,
}

/// Why a claim failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// Lost the compare-and-set race too many times in a row.
    #[error("client id claim lost {0} compare-and-set races in a row")]
    Contended(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    NeedRead,
    Reading,
    NeedWrite(ClaimStep),
    Writing {
        previous: Option<RegistryEntry>,
    },
    NeedAsk {
        owner: NodeId,
        revision: Revision,
    },
    AwaitRelease {
        deadline: Instant,
        revision: Revision,
    },
    NeedBackoff,
    Backoff(Instant),
    Done(Result<Claimed, ClaimError>),
}

/// One node's claim of one client id.
#[derive(Debug, Clone)]
pub struct Claim {
    me: RegistryEntry,
    config: ClaimConfig,
    state: State,
    conflicts: u32,
    /// The revision whose owner was asked and answered or timed out: not asked again.
    settled: Option<Revision>,
    /// The entry of the last read.
    last_read: Option<RegistryEntry>,
    /// The owner asked under `settled` that did not answer (see [`Claimed::unanswered`]).
    silent: Option<(NodeId, Revision)>,
    /// That owner, when the entry the claim replaces is still its connected one.
    unanswered: Option<(NodeId, Revision)>,
}

impl Claim {
    /// A claim by `node` (in `incarnation`) for a connection about to open.
    pub fn new(node: NodeId, incarnation: u64, config: ClaimConfig) -> Claim {
        Claim {
            me: RegistryEntry {
                node,
                incarnation,
                connected: true,
                came_from: None,
            },
            config,
            state: State::NeedRead,
            conflicts: 0,
            settled: None,
            last_read: None,
            silent: None,
            unanswered: None,
        }
    }

    /// The next step. A step that asks for I/O is returned once; then `Wait` until the
    /// answer is handled. `Done` is returned for as long as it is asked.
    pub fn poll(&mut self, now: Instant) -> ClaimStep {
        match &self.state {
            State::NeedRead => {
                self.state = State::Reading;
                ClaimStep::Read
            }
            State::NeedWrite(step) => {
                let step = step.clone();
                let previous = match &step {
                    ClaimStep::Update(_, _) => self.last_read.clone(),
                    _ => None,
                };
                self.state = State::Writing { previous };
                step
            }
            State::NeedAsk { owner, revision } => {
                let step = ClaimStep::AskRelease {
                    owner: owner.clone(),
                    revision: *revision,
                };
                self.state = State::AwaitRelease {
                    deadline: now + self.config.handover_timeout,
                    revision: *revision,
                };
                step
            }
            State::AwaitRelease { deadline, revision } => {
                if now >= *deadline {
                    // A silent owner: go ahead; it is fenced by the revision.
                    self.settled = Some(*revision);
                    self.silent = self.asked(*revision);
                    self.state = State::Reading;
                    ClaimStep::Read
                } else {
                    ClaimStep::Wait(*deadline)
                }
            }
            State::NeedBackoff => {
                let doublings = self.conflicts.saturating_sub(1).min(5);
                let until = now + self.config.retry_backoff * (1u32 << doublings);
                self.state = State::Backoff(until);
                ClaimStep::Wait(until)
            }
            State::Backoff(until) => {
                if now >= *until {
                    self.state = State::Reading;
                    ClaimStep::Read
                } else {
                    ClaimStep::Wait(*until)
                }
            }
            State::Reading | State::Writing { .. } => ClaimStep::Wait(now),
            State::Done(r) => ClaimStep::Done(r.clone()),
        }
    }

    /// The registry entry as read (`None`: absent). `alive` says whether a node in an
    /// incarnation holds a live lease.
    pub fn handle_read(
        &mut self,
        entry: Option<(RegistryEntry, Revision)>,
        alive: impl Fn(&NodeId, u64) -> bool,
    ) {
        if self.state != State::Reading {
            return;
        }
        let Some((entry, revision)) = entry else {
            self.last_read = None;
            self.me.came_from = None;
            self.state = State::NeedWrite(ClaimStep::Create(self.me.clone()));
            return;
        };
        // The entry written names the other node the client was on last, whatever
        // happens to this claim after it is written.
        self.me.came_from = entry.last_elsewhere(&self.me.node).cloned();
        let ours = entry.node == self.me.node && entry.incarnation == self.me.incarnation;
        let free = !entry.connected || !alive(&entry.node, entry.incarnation);
        let settled = self.settled == Some(revision);
        // Replacing the connected entry of an owner that never answered: it is to be told.
        self.unanswered = self.silent.clone().filter(|(owner, asked)| {
            settled && entry.connected && *owner == entry.node && *asked == revision
        });
        self.state = if ours || free || settled {
            State::NeedWrite(ClaimStep::Update(self.me.clone(), revision))
        } else {
            State::NeedAsk {
                owner: entry.node.clone(),
                revision,
            }
        };
        self.last_read = Some(entry);
    }

    /// The outcome of the last create or update: the new revision, or `None` for a
    /// compare-and-set conflict.
    pub fn handle_written(&mut self, result: Option<Revision>) {
        let State::Writing { previous } = &self.state else {
            return;
        };
        self.state = match result {
            Some(revision) => State::Done(Ok(Claimed {
                revision,
                previous: previous.clone(),
                unanswered: self.unanswered.clone(),
            })),
            None => {
                self.conflicts += 1;
                if self.conflicts >= self.config.max_attempts {
                    State::Done(Err(ClaimError::Contended(self.conflicts)))
                } else {
                    State::NeedBackoff
                }
            }
        };
    }

    /// The owner answered: its connection is closed and the session handed over. Read again
    /// (the owner's release changed the entry); if it did not change, claim it all the same.
    pub fn handle_released(&mut self) {
        if let State::AwaitRelease { revision, .. } = self.state {
            self.settled = Some(revision);
            self.silent = None;
            self.state = State::NeedRead;
        }
    }

    /// Nobody listens on the owner's subject: it holds no connection, or the way to it is
    /// down (a route between NATS servers). Go ahead as after an answer, but the owner, if
    /// still connected per the entry, is to be asked again ([`Claimed::unanswered`]).
    pub fn handle_no_responder(&mut self) {
        if let State::AwaitRelease { revision, .. } = self.state {
            self.settled = Some(revision);
            self.silent = self.asked(revision);
            self.state = State::NeedRead;
        }
    }

    /// The owner asked under `revision` (the entry of the last read).
    fn asked(&self, revision: Revision) -> Option<(NodeId, Revision)> {
        self.last_read
            .as_ref()
            .filter(|e| e.connected)
            .map(|e| (e.node.clone(), revision))
    }
}

/// The revision a writer of one session record last read or wrote: every write names it,
/// so a writer that lost the session cannot overwrite its new owner's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// The record did not exist when read: the write must create it.
    Absent,
    /// As [`Fence::Absent`], but a create of this writer's got no answer (the engine timed
    /// out, or failed after taking it): the record may exist, written by that create. A
    /// write creates it as from `Absent`; deleting it must look first
    /// ([`crate::cluster::Cluster::write_own_session`]), or the record that create left
    /// would outlive the session, with what it holds (a will another node then publishes
    /// a second time).
    Unanswered,
    /// The record's revision when read or last written.
    At(Revision),
    /// A write was refused: another node owns the session now. Nothing more may be written.
    Lost,
}

impl Fence {
    /// The fence after reading the record.
    pub fn from_read(revision: Option<Revision>) -> Fence {
        revision.map_or(Fence::Absent, Fence::At)
    }

    /// After a write: the new revision, or [`Fence::Lost`] on a conflict.
    pub fn after_write(self, result: Option<Revision>) -> Fence {
        match (self, result) {
            (Fence::Lost, _) | (_, None) => Fence::Lost,
            (_, Some(r)) => Fence::At(r),
        }
    }

    /// After a write whose outcome is not known (no answer): a create may have landed.
    pub fn after_no_answer(self) -> Fence {
        match self {
            Fence::Absent => Fence::Unanswered,
            f => f,
        }
    }

    /// Whether a write may still be attempted.
    pub fn may_write(self) -> bool {
        self != Fence::Lost
    }

    /// The fence a node's new claim of a client writes under, given the fence it read at
    /// the claim (`self`) and the one its own last write of the same record left (`mine`):
    /// the newer. A client that reconnects to the node it was on is claimed while that
    /// node's writes for its previous connection may still be on their way (they go out in
    /// order, after the appends before them; the claim does not wait for them), so the read
    /// can be older than the node's own last write; writing at it would be refused by the
    /// node's own record, taken for another node's, and the session given up. A `Lost` of
    /// the previous connection does not carry over: the new claim reads afresh.
    pub fn newest(self, mine: Fence) -> Fence {
        match (self, mine) {
            (Fence::At(read), Fence::At(written)) => Fence::At(read.max(written)),
            (Fence::Absent, Fence::At(written)) => Fence::At(written),
            (Fence::Absent, Fence::Unanswered) => Fence::Unanswered,
            (read, _) => read,
        }
    }
}

/// Whether a hand-over request must be ignored: it names the registry revision the
/// claimer read (`asked`), and this node's connection of that client was claimed since, at
/// `held`. A request delivered late (its claimer gave up waiting and took the id over, and
/// the client came back here meanwhile; a healed network delivers what it held) would
/// otherwise end the newer connection and drop its session: the takeover of
/// [MQTT-3.1.4-3] is of the connection the claimer saw, not of one made after it. A
/// claimer still waiting re-reads the entry after its timeout and asks again under the
/// current revision.
pub fn release_is_stale(asked: Revision, held: Option<Revision>) -> bool {
    held.is_some_and(|held| asked < held)
}

/// Whether a notice that a client moved to another node must be ignored: it names the
/// registry revision of that node's claim (`moved_at`), and this node claimed the client
/// since, at `held`. A claim whose write was answered late (JetStream electing leaders)
/// tells the node it read as the client's last, disconnected owner; meanwhile the client
/// may have connected there again, and that node's newer claim took the entry from it.
/// Obeyed, the late notice would make that node forget the connected session's fence and
/// write its record no more while it goes on serving the client, so the node the client
/// goes to next resumes it from an old record and sends again what it had received (found
/// by the fault harness: 260 QoS 2 duplicates at `sub2`, a claim of `m1` answered 6 s late).
pub fn moved_is_stale(moved_at: Revision, held: Option<Revision>) -> bool {
    release_is_stale(moved_at, held)
}

#[cfg(test)]
mod tests;
