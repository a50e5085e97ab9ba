//! `[cluster]`: this node as one of several Makelaar nodes on a NATS JetStream cluster
//! (docs/cluster.md). Without `servers` (or `--cluster`) the broker runs alone and touches
//! nothing of NATS.

use std::path::PathBuf;

use makelaar_cluster::link::{NatsAuth, NatsTls, Secret};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The default number of partition streams (`partitions`).
pub const DEFAULT_CLUSTER_PARTITIONS: u16 = 16;

/// The default of `checkpoint_interval_ms`.
pub const DEFAULT_CHECKPOINT_INTERVAL_MS: u64 = 1000;

/// The default of `checkpoint_acks`.
pub const DEFAULT_CHECKPOINT_ACKS: u32 = 1000;

/// The default bound of the router's queue to the cluster (`max_queued_messages`): about
/// two seconds of the throughput measured on three NATS servers (docs/cluster.md).
pub const DEFAULT_CLUSTER_MAX_QUEUED: usize = 50_000;

/// `[cluster]` as written in `makelaar.toml`. The field documentation is the user's
/// reference (`makelaar config reference`; docs/cluster.md tells more). `Debug` hides the
/// password and the token.
#[derive(Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterTable {
    /// The NATS servers' client URLs (`nats://host:4222`, or `tls://host:4222` for TLS);
    /// setting them makes this broker a cluster node (preview, docs/cluster.md). The servers
    /// need JetStream with `sync_interval: always` and NATS 2.12 or newer. `--cluster
    /// URL[,URL...]` sets them on the command line.
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
    /// The NATS servers' monitoring URLs (`http://host:8222`, or `https://` verified like
    /// the client port), read at start-up to check that each server fsyncs before
    /// acknowledging; when left out, `http://` port 8222 on each server's host.
    #[serde(default)]
    pub monitor: Option<Vec<String>>,
    /// PEM file with the CA certificates that signed the NATS servers' certificates, for
    /// `tls://` servers (and `nats://` servers that require TLS); when left out, the system's
    /// CA bundle. `--cluster-cafile` sets it on the command line.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM certificate this node presents to NATS servers that verify clients (`verify:
    /// true` in their `tls` block); needs `key_file`. `--cluster-cert` sets it on the command line.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`. `--cluster-key` sets it on the command line.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Start TLS before the NATS server's first message, for servers with `handshake_first:
    /// true` in their `tls` block.
    #[serde(default)]
    pub tls_first: Option<bool>,
    /// The NATS user this node connects as; needs `password`. One way of authenticating at
    /// most: user and password, `token`, `creds_file` or `nkey_seed_file`.
    #[serde(default)]
    pub user: Option<String>,
    /// The password of `user` (never logged; keep this file readable by the broker only).
    #[serde(default)]
    pub password: Option<String>,
    /// The token the NATS servers expect (`authorization { token: ... }`; never logged).
    #[serde(default)]
    pub token: Option<String>,
    /// A NATS credentials file (`.creds`: a user JWT and its nkey seed), for servers in
    /// operator mode. `--cluster-creds` sets it on the command line.
    #[serde(default)]
    pub creds_file: Option<PathBuf>,
    /// A file holding this node's user nkey seed (`SU...`), for servers that list the user's
    /// public nkey.
    #[serde(default)]
    pub nkey_seed_file: Option<PathBuf>,
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
    /// The least time, in milliseconds, between two writes of a connected persistent
    /// session's record for its QoS 1 progress (`makelaar_cluster::checkpoint`): what a
    /// survivor replays after this node's death is at most this old (more duplicates, never
    /// a loss). QoS 2 deliveries do not wait for it.
    #[serde(default)]
    pub checkpoint_interval_ms: Option<u64>,
    /// Acknowledgements from a client after which its session's record is written without
    /// waiting for the interval; 0: by the interval only.
    #[serde(default)]
    pub checkpoint_acks: Option<u32>,
    /// Late appends fenced (`makelaar_cluster::barrier`): this node's QoS 1/2 messages name
    /// their publisher's claim, so every reader drops one stored after that publisher moved
    /// on (a QoS 2 message never comes twice), and their acknowledgements wait until this
    /// node's follower is past them (so nothing acknowledged is dropped). Off: acknowledged
    /// when the append returns (higher QoS 1/2 throughput per in-flight window), and a
    /// message given up under a fault may come twice or late. Per node: a node with it off
    /// names no claims, so nothing of its is dropped.
    #[serde(default)]
    pub fence_late_appends: Option<bool>,
}

impl ClusterTable {
    /// Every key at its default (see `ConfigFile::defaults`).
    pub fn defaults() -> ClusterTable {
        ClusterTable {
            servers: None,
            node_name: None,
            partitions: Some(DEFAULT_CLUSTER_PARTITIONS),
            monitor: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            tls_first: Some(false),
            user: None,
            password: None,
            token: None,
            creds_file: None,
            nkey_seed_file: None,
            allow_lazy_fsync: Some(false),
            max_queued_messages: Some(DEFAULT_CLUSTER_MAX_QUEUED),
            checkpoint_interval_ms: Some(DEFAULT_CHECKPOINT_INTERVAL_MS),
            checkpoint_acks: Some(DEFAULT_CHECKPOINT_ACKS),
            fence_late_appends: Some(true),
        }
    }

    /// The link flags (`--cluster-cafile`, `--cluster-cert`, `--cluster-key`,
    /// `--cluster-creds`) over this table: a flag given replaces the file's setting, and a
    /// credentials file replaces whatever kind of credentials the file gives (one kind at a
    /// time).
    pub fn override_link(
        &mut self,
        ca_file: Option<&PathBuf>,
        cert_file: Option<&PathBuf>,
        key_file: Option<&PathBuf>,
        creds_file: Option<&PathBuf>,
    ) {
        if let Some(ca) = ca_file {
            self.ca_file = Some(ca.clone());
        }
        if let Some(cert) = cert_file {
            self.cert_file = Some(cert.clone());
        }
        if let Some(key) = key_file {
            self.key_file = Some(key.clone());
        }
        if let Some(creds) = creds_file {
            self.user = None;
            self.password = None;
            self.token = None;
            self.nkey_seed_file = None;
            self.creds_file = Some(creds.clone());
        }
    }

    /// TLS and credentials towards NATS, as a node uses them (also `makelaar cluster
    /// status`); one sentence when they do not fit.
    pub fn link(&self, source_name: &str) -> Result<(NatsTls, NatsAuth), ConfigError> {
        Ok((self.tls(source_name)?, self.auth(source_name)?))
    }

    /// TLS towards NATS; one sentence when a certificate comes without its key.
    fn tls(&self, source_name: &str) -> Result<NatsTls, ConfigError> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(ConfigError::Invalid(format!(
                "{source_name}: a client certificate for NATS needs both [cluster] cert_file and key_file (--cluster-cert and --cluster-key)"
            )));
        }
        Ok(NatsTls {
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            tls_first: self.tls_first.unwrap_or(false),
        })
    }

    /// The credentials; one sentence when they are incomplete or several kinds are given.
    fn auth(&self, source_name: &str) -> Result<NatsAuth, ConfigError> {
        let mut given = Vec::new();
        if self.user.is_some() || self.password.is_some() {
            given.push("user and password");
        }
        if self.token.is_some() {
            given.push("token");
        }
        if self.creds_file.is_some() {
            given.push("creds_file");
        }
        if self.nkey_seed_file.is_some() {
            given.push("nkey_seed_file");
        }
        if given.len() > 1 {
            return Err(ConfigError::Invalid(format!(
                "{source_name}: [cluster] gives several kinds of NATS credentials ({}); keep one of them",
                given.join(", ")
            )));
        }
        Ok(match (&self.user, &self.password) {
            (Some(user), Some(password)) => NatsAuth::UserPassword {
                user: user.clone(),
                password: Secret::new(password.clone()),
            },
            (Some(_), None) | (None, Some(_)) => {
                return Err(ConfigError::Invalid(format!(
                    "{source_name}: NATS credentials need both [cluster] user and password"
                )))
            }
            (None, None) => {
                if let Some(t) = &self.token {
                    NatsAuth::Token(Secret::new(t.clone()))
                } else if let Some(p) = &self.creds_file {
                    NatsAuth::CredsFile(p.clone())
                } else if let Some(p) = &self.nkey_seed_file {
                    NatsAuth::NkeySeedFile(p.clone())
                } else {
                    NatsAuth::None
                }
            }
        })
    }

    /// The settings, `None` when no servers are given; one sentence when they do not fit.
    pub fn into_settings(self, source_name: &str) -> Result<Option<ClusterSettings>, ConfigError> {
        let servers = self.servers.clone().unwrap_or_default();
        if servers.is_empty() {
            return Ok(None);
        }
        let tls = self.tls(source_name)?;
        let auth = self.auth(source_name)?;
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
        let checkpoint_interval_ms = self
            .checkpoint_interval_ms
            .unwrap_or(DEFAULT_CHECKPOINT_INTERVAL_MS);
        if checkpoint_interval_ms == 0 {
            return Err(ConfigError::Invalid(format!(
                "{source_name}: cluster checkpoint_interval_ms = 0 cannot be used (a record write per message); set it to 1 or more (default {DEFAULT_CHECKPOINT_INTERVAL_MS})"
            )));
        }
        let checkpoint = makelaar_cluster::checkpoint::CheckpointConfig {
            interval: std::time::Duration::from_millis(checkpoint_interval_ms),
            acks: self.checkpoint_acks.unwrap_or(DEFAULT_CHECKPOINT_ACKS),
        };
        Ok(Some(ClusterSettings {
            servers,
            node_name,
            partitions,
            monitor: self.monitor.unwrap_or_default(),
            tls,
            auth,
            allow_lazy_fsync: self.allow_lazy_fsync.unwrap_or(false),
            max_queued_messages,
            checkpoint,
            fence_late_appends: self.fence_late_appends.unwrap_or(true),
        }))
    }
}

impl std::fmt::Debug for ClusterTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |s: &Option<String>| s.as_ref().map(|_| "***");
        f.debug_struct("ClusterTable")
            .field("servers", &self.servers)
            .field("node_name", &self.node_name)
            .field("partitions", &self.partitions)
            .field("monitor", &self.monitor)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("tls_first", &self.tls_first)
            .field("user", &self.user)
            .field("password", &hidden(&self.password))
            .field("token", &hidden(&self.token))
            .field("creds_file", &self.creds_file)
            .field("nkey_seed_file", &self.nkey_seed_file)
            .field("allow_lazy_fsync", &self.allow_lazy_fsync)
            .field("max_queued_messages", &self.max_queued_messages)
            .field("checkpoint_interval_ms", &self.checkpoint_interval_ms)
            .field("checkpoint_acks", &self.checkpoint_acks)
            .field("fence_late_appends", &self.fence_late_appends)
            .finish()
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
    /// TLS towards the NATS servers.
    pub tls: NatsTls,
    /// This node's NATS credentials (`Debug` hides secrets).
    pub auth: NatsAuth,
    /// Start despite lazy fsync, loudly.
    pub allow_lazy_fsync: bool,
    /// The bound of the router's queue to the cluster, in messages.
    pub max_queued_messages: usize,
    /// How often connected persistent sessions' records are brought up to date.
    pub checkpoint: makelaar_cluster::checkpoint::CheckpointConfig,
    /// Late appends fenced (`[cluster] fence_late_appends`).
    pub fence_late_appends: bool,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use makelaar_cluster::link::{NatsAuth, NatsTls, Secret};

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
    fn tls_and_credentials() {
        let base = "[cluster]\nservers = [\"tls://h1:4222\"]\nnode_name = \"a\"\n";
        let c = config(&format!(
            "{base}ca_file = \"/etc/mk/ca.pem\"\ncert_file = \"n.pem\"\nkey_file = \"n.key\"\n\
             tls_first = true\nuser = \"mk\"\npassword = \"s3cret\"\n"
        ))
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(
            c.tls,
            NatsTls {
                ca_file: Some("/etc/mk/ca.pem".into()),
                cert_file: Some("n.pem".into()),
                key_file: Some("n.key".into()),
                tls_first: true,
            }
        );
        assert_eq!(
            c.auth,
            NatsAuth::UserPassword {
                user: "mk".into(),
                password: Secret::new("s3cret"),
            }
        );
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "Debug hides the password"
        );
        let table: crate::config::ConfigFile =
            toml::from_str(&format!("{base}token = \"t0k3n\"\n")).unwrap();
        assert!(
            !format!("{table:?}").contains("t0k3n"),
            "Debug hides the token"
        );

        let auth = |extra: &str| config(&format!("{base}{extra}")).map(|c| c.cluster.unwrap().auth);
        assert_eq!(
            auth("token = \"t\"\n").unwrap(),
            NatsAuth::Token(Secret::new("t"))
        );
        assert_eq!(
            auth("creds_file = \"m1.creds\"\n").unwrap(),
            NatsAuth::CredsFile("m1.creds".into())
        );
        assert_eq!(
            auth("nkey_seed_file = \"m1.nk\"\n").unwrap(),
            NatsAuth::NkeySeedFile("m1.nk".into())
        );
        assert_eq!(auth("").unwrap(), NatsAuth::None);
        let e = auth("user = \"mk\"\n").unwrap_err();
        assert!(e.contains("user and password"), "{e}");
        let e = auth("password = \"pw\"\n").unwrap_err();
        assert!(
            e.contains("user and password") && !e.contains("pw\""),
            "{e}"
        );
        let e = auth("token = \"t\"\ncreds_file = \"m1.creds\"\n").unwrap_err();
        assert!(
            e.contains("token, creds_file") && e.contains("keep one"),
            "{e}"
        );
        let e = config(&format!("{base}cert_file = \"n.pem\"\n")).unwrap_err();
        assert!(e.contains("key_file"), "{e}");
        // tls:// is a NATS URL too.
        assert_eq!(
            config(base).unwrap().cluster.unwrap().servers,
            ["tls://h1:4222"]
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
