//! A store that keeps everything in memory: for `--in-memory` brokers (the same code path as
//! with a disk, without the disk) and for tests.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use crate::record::{
    Index, MessageRecord, Op, QueueDepth, QueuedRecord, SessionIndex, SessionRecord,
    SubscriptionRecord,
};
use crate::{Store, StoreError, StoreStats};

/// Every record in ordered maps; nothing survives the process.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    sessions: BTreeMap<String, SessionRecord>,
    subscriptions: BTreeMap<(String, String), SubscriptionRecord>,
    queue: BTreeMap<(String, u64), QueuedRecord>,
    /// Highest seq + 1 per client, kept when the messages are deleted (see `QueueDepth`).
    next_seq: BTreeMap<String, u64>,
    inbound: BTreeSet<(String, u16)>,
    retained: BTreeMap<String, Arc<MessageRecord>>,
}

/// Keys `(client_id, _)` of an ordered map, for range operations.
fn client_keys<V, T: Ord + Clone>(
    map: &BTreeMap<(String, T), V>,
    client_id: &str,
    min: T,
) -> Vec<(String, T)> {
    map.range((
        Bound::Included((client_id.to_owned(), min)),
        Bound::Unbounded,
    ))
    .take_while(|((c, _), _)| c == client_id)
    .map(|(k, _)| k.clone())
    .collect()
}

impl MemoryStore {
    fn apply_one(&mut self, op: &Op) {
        match op {
            Op::PutSession { client_id, record } => {
                self.sessions.insert(client_id.to_string(), record.clone());
            }
            Op::DeleteSession { client_id } => {
                let c: &str = client_id;
                self.sessions.remove(c);
                for k in client_keys(&self.subscriptions, c, String::new()) {
                    self.subscriptions.remove(&k);
                }
                for k in client_keys(&self.queue, c, 0) {
                    self.queue.remove(&k);
                }
                self.next_seq.remove(c);
                let ids: Vec<_> = self
                    .inbound
                    .range((c.to_owned(), 0)..=(c.to_owned(), u16::MAX))
                    .cloned()
                    .collect();
                for k in ids {
                    self.inbound.remove(&k);
                }
            }
            Op::PutSubscription {
                client_id,
                filter,
                record,
            } => {
                self.subscriptions
                    .insert((client_id.to_string(), filter.to_string()), *record);
            }
            Op::DeleteSubscription { client_id, filter } => {
                self.subscriptions
                    .remove(&(client_id.to_string(), filter.to_string()));
            }
            Op::PutQueued {
                client_id,
                seq,
                record,
            } => {
                self.queue
                    .insert((client_id.to_string(), *seq), record.clone());
                let next = self.next_seq.entry(client_id.to_string()).or_default();
                *next = (*next).max(seq.saturating_add(1));
            }
            Op::DeleteQueued { client_id, seq } => {
                self.queue.remove(&(client_id.to_string(), *seq));
            }
            Op::PutInbound {
                client_id,
                packet_id,
            } => {
                self.inbound.insert((client_id.to_string(), *packet_id));
            }
            Op::DeleteInbound {
                client_id,
                packet_id,
            } => {
                self.inbound.remove(&(client_id.to_string(), *packet_id));
            }
            Op::PutRetained { topic, message } => {
                self.retained.insert(topic.to_string(), message.clone());
            }
            Op::DeleteRetained { topic } => {
                self.retained.remove(&**topic);
            }
        }
    }
}

impl Store for MemoryStore {
    fn apply(&mut self, ops: &[Op], _sync: bool) -> Result<(), StoreError> {
        // Nothing here can fail half way, so applying in order is all or nothing.
        for op in ops {
            self.apply_one(op);
        }
        Ok(())
    }

    fn load_index(&self) -> Result<Index, StoreError> {
        let mut index = Index::default();
        for (client_id, session) in &self.sessions {
            let subscriptions = client_keys(&self.subscriptions, client_id, String::new())
                .into_iter()
                .filter_map(|k| self.subscriptions.get(&k).map(|s| (k.1, *s)))
                .collect();
            let inbound_qos2 = self
                .inbound
                .range((client_id.clone(), 0)..=(client_id.clone(), u16::MAX))
                .map(|(_, id)| *id)
                .collect();
            let mut queue = QueueDepth {
                next_seq: self.next_seq.get(client_id).copied().unwrap_or(0),
                ..QueueDepth::default()
            };
            for k in client_keys(&self.queue, client_id, 0) {
                if let Some(q) = self.queue.get(&k) {
                    queue.count += 1;
                    queue.bytes += q.message.weight();
                }
            }
            index.sessions.push(SessionIndex {
                client_id: client_id.clone(),
                session: session.clone(),
                subscriptions,
                inbound_qos2,
                queue,
            });
        }
        let orphan = |c: &String| !self.sessions.contains_key(c);
        index.orphans = (self.subscriptions.keys().filter(|(c, _)| orphan(c)).count()
            + self.queue.keys().filter(|(c, _)| orphan(c)).count()
            + self.inbound.iter().filter(|(c, _)| orphan(c)).count())
            as u64;
        index.retained = self
            .retained
            .iter()
            .map(|(t, m)| (t.clone(), (**m).clone()))
            .collect();
        Ok(index)
    }

    fn load_queue(&self, client_id: &str) -> Result<Vec<(u64, QueuedRecord)>, StoreError> {
        Ok(client_keys(&self.queue, client_id, 0)
            .into_iter()
            .filter_map(|k| self.queue.get(&k).map(|q| (k.1, q.clone())))
            .collect())
    }

    fn stats(&self) -> Result<StoreStats, StoreError> {
        Ok(StoreStats {
            sessions: self.sessions.len() as u64,
            subscriptions: self.subscriptions.len() as u64,
            queued: self.queue.len() as u64,
            retained: self.retained.len() as u64,
            file_bytes: 0,
        })
    }
}
