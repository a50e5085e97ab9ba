//! Topic watches: an administrator's view of the messages that match a filter (the
//! dashboard's topic viewer), without being an MQTT client.
//!
//! A watch is not a subscription: it has no session, no QoS and no flow control, it is never
//! stored, and access rules do not apply (the administrator sees every message). While routing,
//! the broker offers each message to the watches ([`Watches::offer`]) and the shell drains the
//! copies ([`crate::Broker::drain_watched`]) after each batch. With no watch open, routing
//! costs one `is_empty` test per message.

use std::sync::Arc;

use makelaar_proto::topic::{parse_shared, validate_topic_filter, TopicError};

use crate::admin::Watched;
use crate::message::Message;
use crate::topic::TopicTree;

/// Identifies a watch.
pub type WatchId = u64;

/// Copies waiting for the shell past which new ones are dropped (and counted): the shell drains
/// after every batch, so only a huge batch with many watches gets here.
pub const MAX_PENDING: usize = 65_536;

/// Why a watch was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// The filter is not a valid topic filter (MQTT 4.7).
    #[error("invalid topic filter: {0}")]
    Filter(#[from] TopicError),
    /// `$share/...` filters distribute messages among clients; a watch sees every message.
    #[error("a watch takes a plain topic filter, not a $share/ one")]
    Shared,
    /// Too many watches are open.
    #[error("too many topic watches are open ({0}); close one first")]
    TooMany(usize),
}

/// The open watches and the copies not yet drained.
#[derive(Debug, Default)]
pub struct Watches {
    tree: TopicTree<WatchId, ()>,
    /// (id, filter) of every open watch.
    open: Vec<(WatchId, Box<str>)>,
    last_id: WatchId,
    pending: Vec<(WatchId, Watched)>,
    /// Copies dropped because `pending` was full.
    pub dropped: u64,
}

impl Watches {
    /// Whether no watch is open (then nothing is offered).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Open watches.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Opens a watch on `filter`, checked as a SUBSCRIBE filter is, with at most `max` open.
    pub fn open(&mut self, filter: &str, max: usize) -> Result<WatchId, WatchError> {
        validate_topic_filter(filter)?;
        if parse_shared(filter)?.is_some() {
            return Err(WatchError::Shared);
        }
        if self.open.len() >= max {
            return Err(WatchError::TooMany(max));
        }
        self.last_id += 1;
        let id = self.last_id;
        self.tree.insert(filter, id, ());
        self.open.push((id, filter.into()));
        Ok(id)
    }

    /// Closes a watch; false if it was not open.
    pub fn close(&mut self, id: WatchId) -> bool {
        let Some(pos) = self.open.iter().position(|(i, _)| *i == id) else {
            return false;
        };
        let (_, filter) = self.open.swap_remove(pos);
        self.tree.remove(&filter, id);
        self.pending.retain(|(i, _)| *i != id);
        true
    }

    /// Copies `msg` to every watch whose filter matches its topic.
    pub fn offer(&mut self, msg: &Arc<Message>) {
        let (pending, dropped) = (&mut self.pending, &mut self.dropped);
        self.tree.for_each_match(&msg.topic, |id, ()| {
            if pending.len() >= MAX_PENDING {
                *dropped += 1;
                return;
            }
            let copy = Watched {
                msg: msg.clone(),
                replay: false,
            };
            pending.push((id, copy));
        });
    }

    /// Adds a copy for one watch (a retained message replayed when it opens).
    pub fn push(&mut self, id: WatchId, watched: Watched) {
        if self.pending.len() >= MAX_PENDING {
            self.dropped += 1;
        } else {
            self.pending.push((id, watched));
        }
    }

    /// Moves the copies not yet taken into `out`.
    pub fn drain(&mut self, out: &mut Vec<(WatchId, Watched)>) {
        out.append(&mut self.pending);
    }
}
