//! The broker's rules, sans-IO: sessions, QoS flows, the topic tree, retained messages and wills.
//!
//! No sockets, no runtime and no clock: inputs come in as method calls with the current time,
//! outputs are queued actions the async shell polls and carries out.
//!
//! - [`bridge`]: a bridge to another broker as a packet relay between two connections.
//! - [`conn`]: what belongs to one network connection (keep-alive, topic aliases, receive
//!   maximum), run beside the socket.
//! - [`broker`]: the router's state: sessions, subscriptions, shared groups, retained messages,
//!   wills, session expiry.
//! - [`topic`] and [`retain`]: the indexes that match topics against filters.
//! - [`persist`]: the journal of changes a durable store mirrors, and what it gives back.
//! - [`auth`]: the authorization hook the shell plugs an ACL into.
//! - [`rate`]: a token bucket for the rate limits.
//! - [`admin`] and [`watch`]: the administrator's questions (the dashboard's lists) and topic
//!   watches.

pub mod admin;
pub mod auth;
pub mod bridge;
pub mod broker;
pub mod conn;
pub mod limits;
pub mod message;
pub mod persist;
pub mod rate;
pub mod retain;
pub mod session;
pub mod topic;
pub mod watch;

pub use auth::{Access, Authorizer};
pub use broker::{Action, Broker, CloseReason, Flow, PerQos, Policy, QueueTotals, Stats};
pub use limits::Limits;
