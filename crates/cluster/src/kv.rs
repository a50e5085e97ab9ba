//! An in-memory key-value bucket with the compare-and-set semantics of a JetStream KV
//! bucket: every write gets the next revision of the bucket; create succeeds only when the
//! key is absent (or deleted); update only when the key's revision is the one named.
//!
//! It is the model the sans-IO tests drive the state machines against, and the store of
//! [`crate::backend::MemoryBackend`].

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::ids::Revision;

/// A compare-and-set write refused: the key is not in the state the writer expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("compare-and-set conflict: the key changed since it was read")]
pub struct Conflict;

/// One bucket.
#[derive(Debug, Clone, Default)]
pub struct MemoryKv {
    last: u64,
    entries: BTreeMap<String, (Bytes, Revision)>,
}

impl MemoryKv {
    /// An empty bucket.
    pub fn new() -> MemoryKv {
        MemoryKv::default()
    }

    fn next(&mut self) -> Revision {
        self.last += 1;
        // `last` starts at 0 and only grows: never 0 here.
        Revision::new(self.last).unwrap_or(Revision::MIN)
    }

    /// The value and revision of `key`.
    pub fn get(&self, key: &str) -> Option<(Bytes, Revision)> {
        self.entries.get(key).cloned()
    }

    /// Writes `key` whatever it holds.
    pub fn put(&mut self, key: &str, value: Bytes) -> Revision {
        let r = self.next();
        self.entries.insert(key.to_owned(), (value, r));
        r
    }

    /// Writes `key` only if it is absent.
    pub fn create(&mut self, key: &str, value: Bytes) -> Result<Revision, Conflict> {
        if self.entries.contains_key(key) {
            return Err(Conflict);
        }
        Ok(self.put(key, value))
    }

    /// Writes `key` only if its revision is `expected`.
    pub fn update(
        &mut self,
        key: &str,
        value: Bytes,
        expected: Revision,
    ) -> Result<Revision, Conflict> {
        match self.entries.get(key) {
            Some((_, r)) if *r == expected => Ok(self.put(key, value)),
            _ => Err(Conflict),
        }
    }

    /// Removes `key`, if its revision is `expected` when one is given.
    pub fn delete(&mut self, key: &str, expected: Option<Revision>) -> Result<(), Conflict> {
        match (self.entries.get(key), expected) {
            (Some((_, r)), Some(e)) if *r != e => Err(Conflict),
            (None, Some(_)) => Err(Conflict),
            _ => {
                self.last += 1;
                self.entries.remove(key);
                Ok(())
            }
        }
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }
}
