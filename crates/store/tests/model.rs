//! Every op, through every path, against a plain model: random batches applied to the
//! MemoryStore and to the RedbStore (closed and reopened in between), and submitted to the
//! Committer as one merged group, must read back exactly what the model holds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::sync::{mpsc, Arc};

use common::strategy::{batches, CLIENTS};
use makelaar_store::{
    Committer, CommitterOptions, Index, MemoryStore, MessageRecord, Op, QueueDepth, QueuedRecord,
    RedbOptions, RedbStore, SessionIndex, SessionRecord, Store, SubscriptionRecord,
};
use proptest::prelude::*;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum K {
    Session(String),
    Sub(String, String),
    Queued(String, u64),
    Inbound(String, u16),
    Retained(String),
}

#[derive(Debug, Clone)]
enum V {
    Session(SessionRecord),
    Sub(SubscriptionRecord),
    Queued(QueuedRecord),
    Inbound,
    Retained(Arc<MessageRecord>),
}

/// The simplest thing that could be right: one flat ordered map.
#[derive(Default)]
struct Model {
    map: BTreeMap<K, V>,
    next_seq: BTreeMap<String, u64>,
}

fn client_of(k: &K) -> Option<&str> {
    match k {
        K::Session(c) | K::Sub(c, _) | K::Queued(c, _) | K::Inbound(c, _) => Some(c),
        K::Retained(_) => None,
    }
}

impl Model {
    fn apply(&mut self, op: &Op) {
        let s = |a: &str| a.to_owned();
        match op {
            Op::PutSession { client_id, record } => {
                self.map
                    .insert(K::Session(s(client_id)), V::Session(record.clone()));
            }
            Op::DeleteSession { client_id } => {
                self.map.retain(|k, _| client_of(k) != Some(&**client_id));
                self.next_seq.remove(&**client_id);
            }
            Op::PutSubscription {
                client_id,
                filter,
                record,
            } => {
                self.map
                    .insert(K::Sub(s(client_id), s(filter)), V::Sub(*record));
            }
            Op::DeleteSubscription { client_id, filter } => {
                self.map.remove(&K::Sub(s(client_id), s(filter)));
            }
            Op::PutQueued {
                client_id,
                seq,
                record,
            } => {
                self.map
                    .insert(K::Queued(s(client_id), *seq), V::Queued(record.clone()));
                let next = self.next_seq.entry(s(client_id)).or_default();
                *next = (*next).max(seq.saturating_add(1));
            }
            Op::DeleteQueued { client_id, seq } => {
                self.map.remove(&K::Queued(s(client_id), *seq));
            }
            Op::PutInbound {
                client_id,
                packet_id,
            } => {
                self.map
                    .insert(K::Inbound(s(client_id), *packet_id), V::Inbound);
            }
            Op::DeleteInbound {
                client_id,
                packet_id,
            } => {
                self.map.remove(&K::Inbound(s(client_id), *packet_id));
            }
            Op::PutRetained { topic, message } => {
                self.map
                    .insert(K::Retained(s(topic)), V::Retained(message.clone()));
            }
            Op::DeleteRetained { topic } => {
                self.map.remove(&K::Retained(s(topic)));
            }
        }
    }

    fn index(&self) -> Index {
        let mut index = Index::default();
        let has_session = |c: &str| self.map.contains_key(&K::Session(c.to_owned()));
        for (k, v) in &self.map {
            match (k, v) {
                (K::Session(c), V::Session(session)) => {
                    let mut s = SessionIndex {
                        client_id: c.clone(),
                        session: session.clone(),
                        subscriptions: vec![],
                        inbound_qos2: vec![],
                        queue: QueueDepth {
                            next_seq: self.next_seq.get(c).copied().unwrap_or(0),
                            ..QueueDepth::default()
                        },
                    };
                    for (k, v) in &self.map {
                        match (k, v) {
                            (K::Sub(c2, f), V::Sub(r)) if c2 == c => {
                                s.subscriptions.push((f.clone(), *r))
                            }
                            (K::Inbound(c2, id), _) if c2 == c => s.inbound_qos2.push(*id),
                            (K::Queued(c2, _), V::Queued(q)) if c2 == c => {
                                s.queue.count += 1;
                                s.queue.bytes += q.message.weight();
                            }
                            _ => {}
                        }
                    }
                    index.sessions.push(s);
                }
                (K::Retained(t), V::Retained(m)) => index.retained.push((t.clone(), (**m).clone())),
                (k, _) if !has_session(client_of(k).unwrap()) => index.orphans += 1,
                _ => {}
            }
        }
        index
    }

    fn queue(&self, client: &str) -> Vec<(u64, QueuedRecord)> {
        self.map
            .iter()
            .filter_map(|(k, v)| match (k, v) {
                (K::Queued(c, seq), V::Queued(q)) if c == client => Some((*seq, q.clone())),
                _ => None,
            })
            .collect()
    }

    /// Asserts that the store reads back what the model holds. With `exact_seq` false,
    /// `next_seq` need only lie above every stored seq and not above the model's high-water
    /// mark: merging may leave out seqs that were put and deleted in one group.
    fn check(&self, store: &dyn Store, exact_seq: bool) {
        let mut found = store.load_index().unwrap();
        let expected = self.index();
        if !exact_seq {
            for (f, e) in found.sessions.iter_mut().zip(&expected.sessions) {
                let stored_max = self
                    .queue(&e.client_id)
                    .last()
                    .map_or(0, |(seq, _)| seq.saturating_add(1));
                assert!(f.queue.next_seq >= stored_max && f.queue.next_seq <= e.queue.next_seq);
                f.queue.next_seq = e.queue.next_seq;
            }
        }
        assert_eq!(found, expected);
        for c in CLIENTS {
            assert_eq!(
                store.load_queue(c).unwrap(),
                self.queue(c),
                "queue of {c:?}"
            );
        }
    }
}

fn redb_open(dir: &std::path::Path) -> RedbStore {
    RedbStore::open(dir, &RedbOptions::default()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn memory_store_matches_the_model(batches in batches()) {
        let mut model = Model::default();
        let mut store = MemoryStore::default();
        for batch in &batches {
            store.apply(batch, false).unwrap();
            batch.iter().for_each(|op| model.apply(op));
            model.check(&store, true);
        }
    }

    #[test]
    fn redb_store_matches_the_model_across_reopens(batches in batches()) {
        let dir = tempfile::tempdir().unwrap();
        let mut model = Model::default();
        let mut store = redb_open(dir.path());
        for (i, batch) in batches.iter().enumerate() {
            store.apply(batch, i % 2 == 0).unwrap();
            batch.iter().for_each(|op| model.apply(op));
            if i % 3 == 2 {
                drop(store);
                store = redb_open(dir.path());
            }
            model.check(&store, true);
        }
        drop(store);
        model.check(&redb_open(dir.path()), true);
    }

    /// All batches in one group: what merging keeps and drops must not change the outcome.
    #[test]
    fn a_merged_group_has_the_effect_of_its_batches_in_order(batches in batches()) {
        let dir = tempfile::tempdir().unwrap();
        let mut model = Model::default();
        for batch in &batches {
            batch.iter().for_each(|op| model.apply(op));
        }
        for store in [Box::new(MemoryStore::default()) as Box<dyn Store>, Box::new(redb_open(dir.path()))] {
            let committer = Committer::start(store, CommitterOptions::default());
            // Hold the committer thread so that every batch lands in the same group.
            let (release, held) = mpsc::channel::<()>();
            committer.read(move |_| { let _ = held.recv(); });
            let (tx, rx) = mpsc::channel();
            for batch in batches.clone() {
                let tx = tx.clone();
                committer.submit(batch, Box::new(move |r| tx.send(r).unwrap()));
            }
            release.send(()).unwrap();
            for _ in &batches {
                rx.recv().unwrap().unwrap();
            }
            let stats = committer.stats();
            prop_assert_eq!(stats.commits, 1);
            prop_assert_eq!(stats.ops_written + stats.ops_cancelled, stats.ops_submitted);
            let store = committer.shutdown().unwrap();
            model.check(&*store, false);
        }
        model.check(&redb_open(dir.path()), false);
    }
}
