//! Makelaar as a cluster on NATS JetStream (issue 14; docs/cluster.md).
//!
//! The sans-IO parts, plain data and functions with the time passed in:
//!
//! - [`subject`]: MQTT topics and filters as NATS subjects, total and reversible;
//! - [`partition`]: which of the P partition streams a topic's QoS 1/2 messages go to;
//! - [`takeover`]: claiming a client id by compare-and-set, hand-over from a live owner,
//!   fencing of session writes;
//! - [`lease`]: node leases, expired peers, stepping down, the survivor that reaps;
//! - [`record`]: the session record, registry entry and lease, versioned binary forms;
//! - [`follow`]: when a silent partition consumer is made again, and when a read-back ends;
//! - [`envelope`]: an application message between nodes, with what No Local, Retain As
//!   Published and message expiry need;
//! - [`checkpoint`]: when a connected persistent session's record is brought up to date,
//!   and which packets to it wait for that (QoS 2 exactly once across a node's death);
//! - [`replay`]: a persistent session's cursors when it leaves a node, and the replay that
//!   resumes it on another without a gap or a duplicate;
//! - [`share`]: the names and subjects of shared subscriptions across nodes (a queue group
//!   for QoS 0, a durable consumer per group and partition for QoS 1/2);
//! - [`wills`]: which node decides a will left in a session record, and how a dead node's
//!   records are taken over;
//! - [`barrier`]: the claims a round of barriers names, and the late appends behind them
//!   that every reader drops.
//!
//! Behind [`backend::Backend`] the engine: [`nats::NatsBackend`] (async-nats, with TLS and
//! credentials from [`link`]), and
//! [`backend::MemoryBackend`] for tests. The router will ask the cluster layer to publish,
//! subscribe, claim a client id, load or store a session; nothing here knows the broker.
//!
//! [`stats::NodeStats`]: what a node counts of its part (for its metrics); [`status`]: the
//! whole cluster as `makelaar cluster status` shows it, read from NATS.

#![warn(missing_docs)]

pub mod backend;
pub mod barrier;
pub mod checkpoint;
pub mod checks;
pub mod cluster;
pub mod codec;
pub mod envelope;
pub mod follow;
pub mod ids;
pub mod kv;
pub mod lease;
pub mod link;
pub mod nats;
pub mod partition;
pub mod record;
pub mod replay;
pub mod share;
pub mod stats;
pub mod status;
pub mod subject;
pub mod takeover;
pub mod wills;

pub use ids::{ClientKey, MessageId, NodeId, Revision};
