//! `[cluster]`: this node as one of several Makelaar nodes on a NATS JetStream cluster
//! (docs/cluster.md). Without `servers` (or `--cluster`) the broker runs alone and touches
//! nothing of NATS.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The default number of partition streams (`partitions`).
pub const DEFAULT_CLUSTER_PARTITIONS: u16 = 16;

/// The default bound of the router's queue to the cluster (`max_queued_messages`): about
/// two seconds of the throughput measured on three NATS servers (docs/cluster.md).
pub const DEFAULT_CLUSTER_MAX_QUEUED: usize = 50_000;

/// `[cluster]` as written in `makelaar.toml`. The field documentation is the user's
/// reference (`makelaar config reference`; docs/cluster.md tells more).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterTable {
    /// The NATS servers' client URLs (`nats://host:4222`); setting them makes this broker a
    /// cluster node (preview, docs/cluster.md). The servers need JetStream with
    /// `sync_interval: always` and NATS 2.12 or newer. `--cluster URL[,URL...]` sets them
    /// on the command line.
    #[serde(default)]
    pub servers: Option<Vec<String>>,
    /// This node's name, unique in the cluster and the same at every restart (letters,
    /// digits, `-`, `_`); required with `servers`. `--node-name` sets it on the command line.
    #[serde(default)]
    pub node_name: Option<String>,
    /// The number of partition streams QoS 1/2 messages are spread over; the same on every
    /// node (changing it moves topics to other streams).
    #[serde(default)]
    pub partitions: Option<u16>,
    /// The NATS servers' monitoring URLs (`http://host:8222`), read at start-up to check
    /// that each server fsyncs before acknowledging; when left out, port 8222 on each
    /// server's host.
    #[serde(default)]
    pub monitor: Option<Vec<String>>,
    /// Start although a NATS server fsyncs lazily (or its monitoring port cannot be read):
    /// an acknowledged message could then be lost when servers lose power together. Logged
    /// at error level at every start.
    #[serde(default)]
    pub allow_lazy_fsync: Option<bool>,
    /// The most messages this node holds for the cluster before they are written to NATS.
    /// When NATS is slower than the publishers and the queue is full, the node stops taking
    /// packets from its clients (they wait; nothing acknowledged is lost, acknowledgements
    /// go out only once NATS has the messages) until NATS catches up, and logs a warning.
    #[serde(default)]
    pub max_queued_messages: Option<usize>,
}

impl ClusterTable {
    /// Every key at its default (see `ConfigFile::defaults`).
    pub fn defaults() -> ClusterTable {
        ClusterTable {
            servers: None,
            node_name: None,
            partitions: Some(DEFAULT_CLUSTER_PARTITIONS),
            monitor: None,
            allow_lazy_fsync: Some(false),
            max_queued_messages: Some(DEFAULT_CLUSTER_MAX_QUEUED),
        }
    }

    /// The settings, `None` when no servers are given; one sentence when they do not fit.
    pub fn into_settings(self, source_name: &str) -> Result<Option<ClusterSettings>, ConfigError> {
        let servers = self.servers.unwrap_or_default();
        if servers.is_empty() {
            return Ok(None);
        }
        let Some(node_name) = self.node_name.filter(|n| !n.is_empty()) else {
            return Err(ConfigError::Invalid(format!(
                "{source_name}: a cluster node needs a name: set node_name in [cluster] or pass --node-name NAME (unique in the cluster, the same at every restart)"
            )));
        };
        if let Err(e) = makelaar_cluster::NodeId::new(&node_name) {
            return Err(ConfigError::Invalid(format!(
                "{source_name}: the cluster node name \"{node_name}\" cannot be used ({e}); use letters, digits, '-' or '_'"
            )));
        }
        for s in &servers {
            let rest = s.split_once("://").map(|(scheme, _)| scheme);
            if !matches!(rest, Some("nats" | "tls")) {
                return Err(ConfigError::Invalid(format!(
                    "{source_name}: the cluster server \"{s}\" is not a NATS URL; write it as nats://HOST:PORT"
                )));
            }
        }
        let partitions = self.partitions.unwrap_or(DEFAULT_CLUSTER_PARTITIONS);
        if partitions == 0 {
            return Err(ConfigError::Invalid(format!(
                "{source_name}: cluster partitions = 0 cannot be used; set it to 1 or more, the same on every node"
            )));
        }
        let max_queued_messages = self
            .max_queued_messages
            .unwrap_or(DEFAULT_CLUSTER_MAX_QUEUED);
        if max_queued_messages == 0 {
            return Err(ConfigError::Invalid(format!(
                "{source_name}: cluster max_queued_messages = 0 cannot be used; set it to 1 or more (default {DEFAULT_CLUSTER_MAX_QUEUED})"
            )));
        }
        Ok(Some(ClusterSettings {
            servers,
            node_name,
            partitions,
            monitor: self.monitor.unwrap_or_default(),
            allow_lazy_fsync: self.allow_lazy_fsync.unwrap_or(false),
            max_queued_messages,
        }))
    }
}

/// The cluster settings of a node (`[cluster]`, `--cluster`, `--node-name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// The NATS servers' client URLs.
    pub servers: Vec<String>,
    /// This node's name.
    pub node_name: String,
    /// The number of partition streams.
    pub partitions: u16,
    /// The monitoring URLs; empty: port 8222 on each server's host.
    pub monitor: Vec<String>,
    /// Start despite lazy fsync, loudly.
    pub allow_lazy_fsync: bool,
    /// The bound of the router's queue to the cluster, in messages.
    pub max_queued_messages: usize,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use crate::config::Config;

    fn config(toml: &str) -> Result<Config, String> {
        Config::from_toml_str(toml, "makelaar.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn without_servers_there_is_no_cluster() {
        assert_eq!(config("").unwrap().cluster, None);
        assert_eq!(
            config("[cluster]\nnode_name = \"a\"\n").unwrap().cluster,
            None
        );
    }

    #[test]
    fn a_node_with_its_settings() {
        let c = config(
            "[cluster]\nservers = [\"nats://h1:4222\"]\nnode_name = \"a-1\"\npartitions = 4\n\
             monitor = [\"http://h1:8222\"]\n",
        )
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(c.servers, ["nats://h1:4222"]);
        assert_eq!((c.node_name.as_str(), c.partitions), ("a-1", 4));
        assert_eq!(c.monitor, ["http://h1:8222"]);
        assert!(!c.allow_lazy_fsync);
        assert_eq!(c.max_queued_messages, super::DEFAULT_CLUSTER_MAX_QUEUED);
        let bounded = config(
            "[cluster]\nservers = [\"nats://h1:4222\"]\nnode_name = \"a\"\nmax_queued_messages = 10\n",
        )
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(bounded.max_queued_messages, 10);
        let e = config(
            "[cluster]\nservers = [\"nats://h\"]\nnode_name = \"a\"\nmax_queued_messages = 0\n",
        )
        .unwrap_err();
        assert!(
            e.contains("max_queued_messages = 0") && e.contains("1 or more"),
            "{e}"
        );
    }

    #[test]
    fn mistakes_are_one_sentence_with_the_fix() {
        let e = config("[cluster]\nservers = [\"nats://h1:4222\"]\n").unwrap_err();
        assert!(e.contains("node_name") && e.contains("--node-name"), "{e}");
        let e = config("[cluster]\nservers = [\"h1:4222\"]\nnode_name = \"a\"\n").unwrap_err();
        assert!(e.contains("nats://HOST:PORT"), "{e}");
        let e = config("[cluster]\nservers = [\"nats://h\"]\nnode_name = \"a.b\"\n").unwrap_err();
        assert!(e.contains("a.b"), "{e}");
        let e = config("[cluster]\nservers = [\"nats://h\"]\nnode_name = \"a\"\npartitions = 0\n")
            .unwrap_err();
        assert!(e.contains("partitions"), "{e}");
        let e = config("[cluster]\nserver = [\"nats://h\"]\n").unwrap_err();
        assert!(e.contains("server"), "{e}");
    }
}
