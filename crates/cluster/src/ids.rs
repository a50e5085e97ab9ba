//! The typed names the cluster passes around: node names, client keys, KV revisions.

use std::fmt;

use crate::subject::{escape_token, unescape_token, SubjectError};

/// A Makelaar node's name (`--node-name`): 1 to 64 bytes of `A`–`Z`, `a`–`z`, `0`–`9`, `-`
/// and `_`, so that it is a NATS subject token and a KV key as it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(String);

/// Why a node name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node name {0:?} must be 1 to 64 characters of A-Z, a-z, 0-9, '-' and '_'")]
pub struct BadNodeName(pub String);

impl NodeId {
    /// Checks and wraps a node name.
    pub fn new(name: &str) -> Result<NodeId, BadNodeName> {
        let ok = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(NodeId(name.to_owned()))
        } else {
            Err(BadNodeName(name.to_owned()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client id as a KV key and subject token: escaped as a topic level is
/// ([`escape_token`]), so any UTF-8 client id has exactly one key and back.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey(String);

impl ClientKey {
    /// The key of a client id.
    pub fn new(client_id: &str) -> ClientKey {
        ClientKey(escape_token(client_id))
    }

    /// The client id back from a key.
    pub fn client_id(&self) -> Result<String, SubjectError> {
        unescape_token(&self.0)
    }

    /// A key as read from the KV store; checked to decode.
    pub fn from_key(key: &str) -> Result<ClientKey, SubjectError> {
        unescape_token(key).map(|_| ClientKey(key.to_owned()))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A KV entry's revision (the sequence of its last write in the bucket's stream): what a
/// compare-and-set write names as the value it replaces. Never 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Revision(u64);

impl Revision {
    /// The first revision.
    pub const MIN: Revision = Revision(1);

    /// A revision from the engine; `None` for 0, which no write has.
    pub fn new(r: u64) -> Option<Revision> {
        (r != 0).then_some(Revision(r))
    }

    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The id of one append that may be tried more than once (a will's: it has no publisher to
/// send it again, so the cluster layer retries it). The engine stores one message per id
/// within its deduplication window, so a retry of an append whose first try was stored
/// after all (its answer lost) stores nothing more (JetStream's `Nats-Msg-Id`).
///
/// Unique per publication: the node, the incarnation it started as (a new one at every
/// start) and a counter of this process (`{node}.{incarnation}.{n}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MessageId(String);

impl MessageId {
    /// The `n`th id of `node` started as `incarnation`.
    pub fn new(node: &NodeId, incarnation: u64, n: u64) -> MessageId {
        MessageId(format!("{node}.{incarnation}.{n}"))
    }

    /// The id as the engine's header carries it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn node_names() {
        assert!(NodeId::new("m1").is_ok());
        assert!(NodeId::new("node_2-b").is_ok());
        assert!(NodeId::new("").is_err());
        assert!(NodeId::new("a.b").is_err());
        assert!(NodeId::new(&"x".repeat(65)).is_err());
        assert!(Revision::new(0).is_none());
    }

    #[test]
    fn message_ids_differ_by_node_incarnation_and_count() {
        let (a, b) = (NodeId::new("a").unwrap(), NodeId::new("b").unwrap());
        let ids = [
            MessageId::new(&a, 1, 1),
            MessageId::new(&a, 1, 2),
            MessageId::new(&a, 2, 1),
            MessageId::new(&b, 1, 1),
        ];
        for (i, x) in ids.iter().enumerate() {
            for y in &ids[i + 1..] {
                assert_ne!(x, y);
            }
        }
        assert_eq!(ids[0].as_str(), "a.1.1");
    }

    proptest! {
        #[test]
        fn client_keys_round_trip(id in "\\PC{0,30}") {
            let k = ClientKey::new(&id);
            prop_assert!(k.as_str().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            prop_assert_eq!(k.client_id(), Ok(id));
            prop_assert_eq!(ClientKey::from_key(k.as_str()), Ok(k.clone()));
        }
    }
}
