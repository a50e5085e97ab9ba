//! Folding the batches of one commit group into the ops actually written.
//!
//! Within a group the last op on a key wins, so an earlier op on the same key is dropped: a
//! message queued and acknowledged within one fsync never costs a write. A delete that follows
//! a put is still applied, because the key may have been stored by an earlier group; redb then
//! finds nothing and writes nothing when it was not. Only when the session was deleted earlier
//! in the same group is the key known to be absent, and the delete is dropped as well.
//! `DeleteSession` drops every earlier op of that client.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::Op;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Session(Arc<str>),
    /// `DeleteSession` has a key of its own: it removes more than the session record, so a
    /// later `PutSession` (a client reconnecting with Clean Start and a new persistent session)
    /// must not cancel it, or the old session's subscriptions and messages would stay.
    SessionEnded(Arc<str>),
    Subscription(Arc<str>, Arc<str>),
    Queued(Arc<str>, u64),
    Inbound(Arc<str>, u16),
    Retained(Arc<str>),
}

/// The key an op writes, its client (for `DeleteSession`), and whether it deletes.
fn key_of(op: &Op) -> (Key, Option<&Arc<str>>, bool) {
    match op {
        Op::PutSession { client_id, .. } => {
            (Key::Session(client_id.clone()), Some(client_id), false)
        }
        Op::DeleteSession { client_id } => {
            (Key::SessionEnded(client_id.clone()), Some(client_id), true)
        }
        Op::PutSubscription {
            client_id, filter, ..
        } => (
            Key::Subscription(client_id.clone(), filter.clone()),
            Some(client_id),
            false,
        ),
        Op::DeleteSubscription { client_id, filter } => (
            Key::Subscription(client_id.clone(), filter.clone()),
            Some(client_id),
            true,
        ),
        Op::PutQueued { client_id, seq, .. } => {
            (Key::Queued(client_id.clone(), *seq), Some(client_id), false)
        }
        Op::DeleteQueued { client_id, seq } => {
            (Key::Queued(client_id.clone(), *seq), Some(client_id), true)
        }
        Op::PutInbound {
            client_id,
            packet_id,
        } => (
            Key::Inbound(client_id.clone(), *packet_id),
            Some(client_id),
            false,
        ),
        Op::DeleteInbound {
            client_id,
            packet_id,
        } => (
            Key::Inbound(client_id.clone(), *packet_id),
            Some(client_id),
            true,
        ),
        Op::PutRetained { topic, .. } => (Key::Retained(topic.clone()), None, false),
        Op::DeleteRetained { topic } => (Key::Retained(topic.clone()), None, true),
    }
}

/// The ops of a group after merging, in an order with the same effect as the batches in
/// submission order.
#[derive(Debug, Default)]
pub(crate) struct Merged {
    pub ops: Vec<Op>,
    /// Submitted ops that are not written.
    pub cancelled: u64,
}

/// Merges the batches of one group (in submission order).
pub(crate) fn merge(batches: Vec<Vec<Op>>) -> Merged {
    // Per-client bookkeeping only when a session is deleted in this group (rarely).
    let track_clients = batches
        .iter()
        .flatten()
        .any(|op| matches!(op, Op::DeleteSession { .. }));
    let mut out: Vec<Option<Op>> = Vec::with_capacity(batches.iter().map(Vec::len).sum());
    // Position in `out` of the last op on each key (it may have been dropped since).
    let mut last: HashMap<Key, usize> = HashMap::new();
    // Positions of every op of each client, for DeleteSession.
    let mut by_client: HashMap<Arc<str>, Vec<usize>> = HashMap::new();
    // Clients deleted earlier in this group: their keys are absent unless put again since.
    let mut deleted: HashSet<Arc<str>> = HashSet::new();
    let mut cancelled = 0u64;
    for op in batches.into_iter().flatten() {
        let (key, client, is_delete) = key_of(&op);
        if let Op::DeleteSession { client_id } = &op {
            for i in by_client.remove(client_id).unwrap_or_default() {
                if out.get_mut(i).and_then(Option::take).is_some() {
                    cancelled += 1;
                }
            }
            deleted.insert(client_id.clone());
        } else {
            if let Some(i) = last.get(&key) {
                if out.get_mut(*i).and_then(Option::take).is_some() {
                    cancelled += 1;
                }
            }
            if is_delete && client.is_some_and(|c| deleted.contains(c)) {
                cancelled += 1;
                continue;
            }
        }
        let pos = out.len();
        if let Some(c) = client.filter(|_| track_clients) {
            by_client.entry(c.clone()).or_default().push(pos);
        }
        last.insert(key, pos);
        out.push(Some(op));
    }
    Merged {
        ops: out.into_iter().flatten().collect(),
        cancelled,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn put_inbound(c: &str, id: u16) -> Op {
        Op::PutInbound {
            client_id: c.into(),
            packet_id: id,
        }
    }
    fn del_inbound(c: &str, id: u16) -> Op {
        Op::DeleteInbound {
            client_id: c.into(),
            packet_id: id,
        }
    }

    #[test]
    fn last_op_on_a_key_wins() {
        let m = merge(vec![
            vec![put_inbound("a", 1), put_inbound("a", 2)],
            vec![put_inbound("a", 1)],
        ]);
        assert_eq!(m.ops, vec![put_inbound("a", 2), put_inbound("a", 1)]);
        assert_eq!(m.cancelled, 1);
    }

    #[test]
    fn put_then_delete_keeps_only_the_delete() {
        let m = merge(vec![vec![put_inbound("a", 1)], vec![del_inbound("a", 1)]]);
        assert_eq!(m.ops, vec![del_inbound("a", 1)]);
        assert_eq!(m.cancelled, 1);
    }

    #[test]
    fn delete_session_drops_what_came_before_and_after_it_is_known_absent() {
        let del = Op::DeleteSession {
            client_id: "a".into(),
        };
        let m = merge(vec![
            vec![put_inbound("a", 1), put_inbound("b", 1)],
            vec![
                del.clone(),
                put_inbound("a", 2),
                del_inbound("a", 2),
                put_inbound("a", 3),
            ],
        ]);
        assert_eq!(m.ops, vec![put_inbound("b", 1), del, put_inbound("a", 3)]);
        assert_eq!(m.cancelled, 3);
    }

    #[test]
    fn a_session_ended_and_begun_again_in_one_group_is_deleted_first() {
        // [MQTT-3.1.2-4] Clean Start discards the session; a new one (5.0 expiry > 0) is
        // stored at once. The delete must still reach the disk, before the new record.
        let del = Op::DeleteSession {
            client_id: "a".into(),
        };
        let put = Op::PutSession {
            client_id: "a".into(),
            record: crate::SessionRecord {
                protocol_version: 5,
                expiry_interval: 600,
                disconnected_at_ms: None,
                pending_will: None,
                will_at_ms: None,
                username: None,
            },
        };
        let m = merge(vec![vec![put.clone()], vec![del.clone(), put.clone()]]);
        assert_eq!(m.ops, vec![del.clone(), put.clone()]);
        assert_eq!(m.cancelled, 1);
        // Ended again: one delete is enough.
        let m = merge(vec![vec![del.clone(), put], vec![del.clone()]]);
        assert_eq!(m.ops, vec![del]);
        assert_eq!(m.cancelled, 2);
    }
}
