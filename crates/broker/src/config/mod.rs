//! The broker's configuration: `makelaar.toml`, command-line overrides, and validation.
//!
//! Reading a configuration happens in two steps so that command-line flags can override the
//! file: [`ConfigFile`] mirrors the file's keys one to one (every key optional), the CLI changes
//! the fields its flags name, and [`ConfigFile::into_config`] validates the result into a
//! [`Config`]. [`Config::from_toml_file`] and [`Config::from_toml_str`] do both steps at once.
//!
//! Every error is a [`ConfigError`] whose message is one sentence naming the thing that is wrong
//! and how to fix it; errors found while parsing the file carry `file:line:column`.

mod bridge;
mod bridge_table;
mod build;
mod cluster;
mod dashboard;
mod defaults;
mod file;
mod listen;
mod listeners;
mod messages;
pub mod reference;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use makelaar_core::broker::WillOnTakeover;
use makelaar_core::Limits;
pub use makelaar_store::Durability;

pub use crate::forwarded::Network;
pub use bridge::*;
pub(crate) use bridge_table::{
    check_name as check_bridge_name, hostname, parse_address, restart_from, topic_from,
    warnings as bridge_warnings,
};
pub use bridge_table::{
    BridgeProtocolName, BridgeQueueTable, BridgeTable, BridgeTlsTable, BridgeTopicTable,
    DirectionName, LoopGuardTable, OverflowName, ReloadTypeName, StartTypeName, TlsVersionName,
};
pub use bridge_table::{
    DEFAULT_QUEUE_BYTES, DEFAULT_QUEUE_MESSAGES, MIN_KEEPALIVE_SECS, MQTTS_PORT, MQTT_PORT,
};
pub use cluster::{ClusterSettings, ClusterTable, DEFAULT_CLUSTER_PARTITIONS};
pub use dashboard::{DashboardConfig, DashboardTable};
pub use file::{ConfigFile, ListenerTable, LogFormat};
use listen::de_listen;
pub use listen::{
    parse_listen_url, parse_listen_url_with_path, ANY_WEBSOCKET_PATH, DEFAULT_WEBSOCKET_PATH,
};
use messages::describe_toml_error;
pub(crate) use messages::io_reason;
pub use reference::{example_toml, reference_markdown};

/// The listener used when neither the file nor the command line names one.
pub const DEFAULT_LISTEN: &str = "mqtt://127.0.0.1:1883";
/// Seconds between `$SYS/broker/...` updates unless configured.
pub const DEFAULT_SYS_INTERVAL_SECS: u64 = 10;
/// Where the durable store will live (accepted now, unused until the store exists).
pub const DEFAULT_DATA_DIR: &str = "makelaar-data";
/// The default bound of `durability = "batch"`, in milliseconds.
pub const DEFAULT_BATCH_MS: u64 = 10;

/// A configuration problem. Its `Display` is one sentence naming the thing and the fix, meant to
/// be shown to the user as is (the CLI prints `makelaar: <sentence>`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("{0}")]
    Read(String),
    /// The file is not valid TOML, has an unknown key, or a value of the wrong type or range.
    #[error("{0}")]
    Parse(String),
    /// The settings are inconsistent (e.g. `require_certificate` without `cafile`).
    #[error("{0}")]
    Invalid(String),
    /// A listener URL is malformed or uses a scheme that is not supported.
    #[error("{0}")]
    Listener(String),
    /// A certificate, key or CA file is missing, unreadable or does not fit.
    #[error("{0}")]
    Tls(String),
    /// A listener could not bind its address (port in use, permission denied, ...).
    #[error("{0}")]
    Bind(String),
    /// The durable store could not be opened (in use, damaged, unreadable).
    #[error("{0}")]
    Store(String),
    /// A password file or ACL file is unreadable or has a broken line.
    #[error("{0}")]
    Auth(String),
    /// The cluster could not be joined (NATS unreachable, a server that fsyncs lazily, ...).
    #[error("{0}")]
    Cluster(String),
}

/// The validated configuration the broker runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where to accept connections; never empty.
    pub listeners: Vec<ListenerConfig>,
    /// Limits and protocol options enforced by the core.
    pub limits: Limits,
    /// Time between `$SYS/broker/...` updates; zero turns them off.
    pub sys_interval: Duration,
    /// Keep everything in memory: nothing survives a restart.
    pub in_memory: bool,
    /// Directory of the durable store (unless `in_memory`).
    pub data_dir: PathBuf,
    /// When an acknowledged change counts as stored.
    pub durability: Durability,
    /// What to do when the store file is damaged.
    pub on_corrupt_store: CorruptStorePolicy,
    /// Topic filters refused outright: SUBACK 0x80 for a SUBSCRIBE to exactly this filter.
    pub deny_subscriptions: Vec<String>,
    /// Whether a takeover publishes the old connection's will (`will_on_takeover`).
    pub will_on_takeover: WillOnTakeover,
    /// Mosquitto ACL file checked for every PUBLISH, SUBSCRIBE and delivery; `None`: no
    /// access control.
    pub acl_file: Option<PathBuf>,
    /// The web dashboard on the HTTP listeners (`[dashboard]`).
    pub dashboard: DashboardConfig,
    /// Bridges to other brokers (`[[bridge]]`, or `connection` sections of mosquitto.conf).
    pub bridges: Vec<BridgeConfig>,
    /// This node in a cluster on NATS (`[cluster]`); `None`: the broker runs alone.
    pub cluster: Option<ClusterSettings>,
    /// The file the configuration came from, read again by a reload (SIGHUP) for its
    /// bridges; `None`: the command line alone.
    pub source: Option<ConfigSource>,
}

/// The file a configuration was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A `makelaar.toml` (`--config`).
    Toml(PathBuf),
    /// A `mosquitto.conf` (`--mosquitto-conf`).
    Mosquitto(PathBuf),
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listeners: vec![ListenerConfig::new(
                DEFAULT_LISTEN,
                ListenerKind::Mqtt,
                SocketAddr::from(([127, 0, 0, 1], 1883)),
            )],
            limits: Limits::default(),
            sys_interval: Duration::from_secs(DEFAULT_SYS_INTERVAL_SECS),
            in_memory: false,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            durability: Durability::Sync,
            on_corrupt_store: CorruptStorePolicy::Fail,
            deny_subscriptions: Vec::new(),
            will_on_takeover: WillOnTakeover::Spec,
            acl_file: None,
            dashboard: DashboardConfig::default(),
            bridges: Vec::new(),
            cluster: None,
            source: None,
        }
    }
}

/// What to do when the store file is damaged (`on_corrupt_store`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CorruptStorePolicy {
    /// Refuse to start, naming the file and the way out.
    #[default]
    Fail,
    /// Rename the damaged file (kept for inspection) and start with an empty store.
    MoveAside,
}

/// The durable store's settings, when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub dir: PathBuf,
    pub durability: Durability,
    pub on_corrupt: CorruptStorePolicy,
}

impl Config {
    /// The store's settings; `None` for an in-memory broker.
    pub fn store(&self) -> Option<StoreConfig> {
        (!self.in_memory).then(|| StoreConfig {
            dir: self.data_dir.clone(),
            durability: self.durability,
            on_corrupt: self.on_corrupt_store,
        })
    }
}

impl Config {
    /// Reads and validates a `makelaar.toml`. Relative paths in the file (`cert`, `key`,
    /// `cafile`, `data_dir`) are taken relative to the file's directory.
    pub fn from_toml_file(path: &Path) -> Result<Config, ConfigError> {
        let file = ConfigFile::from_toml_file(path)?;
        file.into_config(&path.display().to_string())
    }

    /// Parses and validates a configuration held in a string; `source_name` (usually the file
    /// name) starts every error message. Paths are used as written.
    pub fn from_toml_str(s: &str, source_name: &str) -> Result<Config, ConfigError> {
        ConfigFile::from_toml_str(s, source_name)?.into_config(source_name)
    }
}

/// The kind of a listener, from its URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerKind {
    /// `mqtt://`: MQTT over plain TCP.
    Mqtt,
    /// `mqtts://`: MQTT over TLS.
    Mqtts,
    /// `ws://`: MQTT over WebSocket.
    Ws,
    /// `wss://`: MQTT over WebSocket over TLS.
    Wss,
    /// `http://`: the HTTP listener (metrics, health; see `crate::http`).
    Http,
    /// `https://`: the HTTP listener over TLS.
    Https,
}

impl ListenerKind {
    /// The URL scheme, without `://`.
    pub fn scheme(self) -> &'static str {
        match self {
            ListenerKind::Mqtt => "mqtt",
            ListenerKind::Mqtts => "mqtts",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
            ListenerKind::Http => "http",
            ListenerKind::Https => "https",
        }
    }

    /// The port used when the URL names none: 1883 for mqtt, 8883 for mqtts, HTTP's 80 and
    /// 443 for ws and wss, 9883 and 9884 for http and https (metrics).
    pub fn default_port(self) -> u16 {
        match self {
            ListenerKind::Mqtt => 1883,
            ListenerKind::Mqtts => 8883,
            ListenerKind::Ws => 80,
            ListenerKind::Wss => 443,
            ListenerKind::Http => 9883,
            ListenerKind::Https => 9884,
        }
    }

    /// Whether connections are encrypted (`mqtts`, `wss`, `https`).
    pub fn is_tls(self) -> bool {
        matches!(
            self,
            ListenerKind::Mqtts | ListenerKind::Wss | ListenerKind::Https
        )
    }

    /// Whether MQTT runs over WebSocket (`ws`, `wss`).
    pub fn is_websocket(self) -> bool {
        matches!(self, ListenerKind::Ws | ListenerKind::Wss)
    }

    /// Whether the listener serves HTTP (metrics, health: `http`, `https`) rather than MQTT.
    pub fn is_http(self) -> bool {
        matches!(self, ListenerKind::Http | ListenerKind::Https)
    }
}

impl fmt::Display for ListenerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.scheme())
    }
}

/// One place to accept connections.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// The URL as the user wrote it (used in messages).
    pub url: String,
    /// Plain or TLS.
    pub kind: ListenerKind,
    /// The address to bind (host names such as `localhost` are resolved when the config is built).
    pub addr: SocketAddr,
    /// Certificate settings; `Some` exactly when `kind` is TLS ([`ListenerKind::is_tls`]).
    pub tls: Option<TlsSettings>,
    /// Who may connect here.
    pub auth: ListenerAuth,
    /// Clients connected through this listener at once; 0 means no limit (for an HTTP
    /// listener: `crate::http::DEFAULT_MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// WebSocket settings; `Some` exactly when `kind` is `ws` or `wss`.
    pub websocket: Option<WebSocketSettings>,
    /// Every connection starts with a PROXY protocol header (v1 or v2), before TLS, giving
    /// the client's address; connections without one are refused.
    pub proxy_protocol: bool,
}

/// The settings of a `ws://` or `wss://` listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSocketSettings {
    /// The one HTTP path served (others get 404); `None` serves every path.
    pub path: Option<String>,
    /// Connections from these addresses may name the client in `X-Forwarded-For`; empty:
    /// the header is ignored.
    pub trusted_proxies: Vec<Network>,
}

impl ListenerConfig {
    /// A listener with no TLS, anonymous clients allowed and no connection limit.
    pub fn new(url: &str, kind: ListenerKind, addr: SocketAddr) -> ListenerConfig {
        ListenerConfig {
            url: url.to_string(),
            kind,
            addr,
            tls: None,
            auth: ListenerAuth::default(),
            max_connections: 0,
            websocket: kind.is_websocket().then(|| WebSocketSettings {
                path: Some(DEFAULT_WEBSOCKET_PATH.to_string()),
                trusted_proxies: Vec::new(),
            }),
            proxy_protocol: false,
        }
    }
}

/// How clients of one listener are authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerAuth {
    /// Accept clients that give no username. Not consulted with
    /// `use_identity_as_username`, where every client needs a certificate with a name.
    pub allow_anonymous: bool,
    /// Mosquitto password file: a client that gives a username must give its password.
    pub password_file: Option<PathBuf>,
    /// Take the username from the Common Name of the client's verified certificate, ignoring
    /// the username and password in CONNECT (TLS listeners with `cafile` only).
    pub use_identity_as_username: bool,
}

impl Default for ListenerAuth {
    fn default() -> Self {
        ListenerAuth {
            allow_anonymous: true,
            password_file: None,
            use_identity_as_username: false,
        }
    }
}

/// Certificate settings shared by the TLS listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM certificate chain, server certificate first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA bundle that client certificates are verified against; without it the server does
    /// not ask for client certificates.
    pub cafile: Option<PathBuf>,
    /// Refuse clients that do not present a certificate signed by `cafile`.
    pub require_certificate: bool,
    /// PEM certificate revocation lists: client certificates they revoke are refused.
    pub crlfile: Option<PathBuf>,
}
