//! The broker's configuration: `makelaar.toml`, command-line overrides, and validation.
//!
//! Reading a configuration happens in two steps so that command-line flags can override the
//! file: [`ConfigFile`] mirrors the file's keys one to one (every key optional), the CLI changes
//! the fields its flags name, and [`ConfigFile::into_config`] validates the result into a
//! [`Config`]. [`Config::from_toml_file`] and [`Config::from_toml_str`] do both steps at once.
//!
//! Every error is a [`ConfigError`] whose message is one sentence naming the thing that is wrong
//! and how to fix it; errors found while parsing the file carry `file:line:column`.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use makelaar_core::Limits;
pub use makelaar_store::Durability;
use serde::de::{self, Deserializer, SeqAccess, Unexpected, Visitor};
use serde::Deserialize;

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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listeners: vec![ListenerConfig {
                url: DEFAULT_LISTEN.to_string(),
                kind: ListenerKind::Mqtt,
                addr: SocketAddr::from(([127, 0, 0, 1], 1883)),
                tls: None,
            }],
            limits: Limits::default(),
            sys_interval: Duration::from_secs(DEFAULT_SYS_INTERVAL_SECS),
            in_memory: false,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            durability: Durability::Sync,
            on_corrupt_store: CorruptStorePolicy::Fail,
            deny_subscriptions: Vec::new(),
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
}

impl ListenerKind {
    /// The URL scheme, without `://`.
    pub fn scheme(self) -> &'static str {
        match self {
            ListenerKind::Mqtt => "mqtt",
            ListenerKind::Mqtts => "mqtts",
        }
    }

    /// The port used when the URL names none (1883 for mqtt, 8883 for mqtts).
    pub fn default_port(self) -> u16 {
        match self {
            ListenerKind::Mqtt => 1883,
            ListenerKind::Mqtts => 8883,
        }
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
    /// Certificate settings; `Some` exactly when `kind` is [`ListenerKind::Mqtts`].
    pub tls: Option<TlsSettings>,
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
}

/// `makelaar.toml` as written: every key optional, nothing validated beyond types and ranges.
/// The CLI sets the fields its flags override, then calls [`ConfigFile::into_config`].
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Listener URLs; `None` means the default (`mqtt://127.0.0.1:1883`). A single string is
    /// accepted as a list of one.
    #[serde(default, deserialize_with = "de_listen")]
    pub listen: Option<Vec<String>>,
    /// PEM certificate chain for mqtts listeners.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM private key for mqtts listeners.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// CA bundle that client certificates are verified against.
    #[serde(default)]
    pub cafile: Option<PathBuf>,
    /// Mutual TLS: refuse clients without a certificate signed by `cafile`.
    #[serde(default)]
    pub require_certificate: Option<bool>,
    /// Seconds between `$SYS` updates; 0 turns them off.
    #[serde(default)]
    pub sys_interval: Option<u64>,
    /// Keep all state in memory: nothing survives a restart.
    #[serde(default)]
    pub in_memory: Option<bool>,
    /// Directory of the durable store.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// `"sync"` (acknowledge after fsync) or `"batch"` (fsync at least every
    /// `batch_max_delay_ms`; may lose that much on power loss).
    #[serde(default)]
    pub durability: Option<String>,
    /// The bound of `durability = "batch"`, in milliseconds.
    #[serde(default)]
    pub batch_max_delay_ms: Option<u64>,
    /// `"fail"` or `"move-aside"`: what to do when the store file is damaged.
    #[serde(default)]
    pub on_corrupt_store: Option<String>,
    /// Topic filters every SUBSCRIBE to is refused with reason code 0x80.
    #[serde(default)]
    pub deny_subscriptions: Option<Vec<String>>,
    /// `[limits]`.
    #[serde(default)]
    pub limits: LimitsConfig,
}

impl ConfigFile {
    /// Reads a `makelaar.toml`; relative paths in it are made relative to its directory.
    pub fn from_toml_file(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::Read(format!(
                "cannot read config file \"{}\": {}; check the path given to --config",
                path.display(),
                io_reason(&e)
            ))
        })?;
        let mut file = ConfigFile::from_toml_str(&text, &path.display().to_string())?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            for p in [
                &mut file.cert,
                &mut file.key,
                &mut file.cafile,
                &mut file.data_dir,
            ]
            .into_iter()
            .flatten()
            {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            }
        }
        Ok(file)
    }

    /// Parses a configuration held in a string; `source_name` starts every error message.
    pub fn from_toml_str(s: &str, source_name: &str) -> Result<ConfigFile, ConfigError> {
        toml::from_str(s).map_err(|e| ConfigError::Parse(describe_toml_error(&e, s, source_name)))
    }

    /// Validates the settings and builds the [`Config`]: listener URLs parsed and resolved,
    /// certificate settings attached to TLS listeners, limits converted. `source_name` names
    /// where the settings came from in messages. Files are not opened here; certificates are
    /// loaded when the listener binds ([`crate::listener::Listener::bind`]).
    pub fn into_config(self, source_name: &str) -> Result<Config, ConfigError> {
        let urls = self
            .listen
            .unwrap_or_else(|| vec![DEFAULT_LISTEN.to_string()]);
        if urls.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "{source_name}: listen is an empty list; name at least one listener, e.g. \
                 listen = [\"{DEFAULT_LISTEN}\"]"
            )));
        }

        let require_certificate = self.require_certificate.unwrap_or(false);
        if require_certificate && self.cafile.is_none() {
            return Err(ConfigError::Invalid(
                "--require-certificate needs --cafile FILE (or cafile in the config file): \
                 the CA bundle that client certificates are checked against"
                    .to_string(),
            ));
        }

        let mut listeners: Vec<ListenerConfig> = Vec::with_capacity(urls.len());
        for url in &urls {
            let (kind, addr) = parse_listen_url(url)?;
            if let Some(other) = listeners.iter().find(|l| l.addr == addr) {
                return Err(ConfigError::Listener(format!(
                    "listeners \"{}\" and \"{url}\" both use {addr}; give each listener its own \
                     port",
                    other.url
                )));
            }
            let tls = match kind {
                ListenerKind::Mqtt => None,
                ListenerKind::Mqtts => Some(tls_settings(
                    url,
                    &self.cert,
                    &self.key,
                    &self.cafile,
                    require_certificate,
                )?),
            };
            listeners.push(ListenerConfig {
                url: url.clone(),
                kind,
                addr,
                tls,
            });
        }

        let has_tls = listeners.iter().any(|l| l.kind == ListenerKind::Mqtts);
        if !has_tls && (self.cert.is_some() || self.key.is_some() || self.cafile.is_some()) {
            tracing::warn!(
                "a certificate, key or cafile is configured but no listener uses TLS; add an \
                 mqtts://HOST:PORT listener to use them"
            );
        }

        let durability = durability_from(
            source_name,
            self.durability.as_deref(),
            self.batch_max_delay_ms,
        )?;
        let on_corrupt_store = match self.on_corrupt_store.as_deref() {
            None | Some("fail") => CorruptStorePolicy::Fail,
            Some("move-aside") => CorruptStorePolicy::MoveAside,
            Some(other) => {
                return Err(ConfigError::Invalid(format!(
                    "{source_name}: on_corrupt_store = \"{other}\" is not known; use \"fail\" \
                     or \"move-aside\""
                )))
            }
        };

        let deny_subscriptions = self.deny_subscriptions.unwrap_or_default();
        for filter in &deny_subscriptions {
            if let Err(e) = makelaar_proto::topic::validate_topic_filter(filter) {
                return Err(ConfigError::Invalid(format!(
                    "{source_name}: deny_subscriptions entry \"{filter}\" is not a valid topic \
                     filter ({e}); write it as a client would subscribe to it"
                )));
            }
        }

        Ok(Config {
            deny_subscriptions,
            listeners,
            limits: self.limits.into(),
            sys_interval: Duration::from_secs(
                self.sys_interval.unwrap_or(DEFAULT_SYS_INTERVAL_SECS),
            ),
            in_memory: self.in_memory.unwrap_or(false),
            durability,
            on_corrupt_store,
            data_dir: self
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        })
    }
}

fn durability_from(
    source_name: &str,
    mode: Option<&str>,
    batch_ms: Option<u64>,
) -> Result<Durability, ConfigError> {
    match (mode, batch_ms) {
        (None | Some("sync"), None) => Ok(Durability::Sync),
        (Some("batch"), ms) => Ok(Durability::Batch {
            max_delay_ms: ms.unwrap_or(DEFAULT_BATCH_MS).max(1),
        }),
        (None | Some("sync"), Some(_)) => Err(ConfigError::Invalid(format!(
            "{source_name}: batch_max_delay_ms only applies to durability = \"batch\"; set \
             that too, or remove batch_max_delay_ms"
        ))),
        (Some(other), _) => Err(ConfigError::Invalid(format!(
            "{source_name}: durability = \"{other}\" is not known; use \"sync\" (the default) \
             or \"batch\""
        ))),
    }
}

fn tls_settings(
    url: &str,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
    cafile: &Option<PathBuf>,
    require_certificate: bool,
) -> Result<TlsSettings, ConfigError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(TlsSettings {
            cert: cert.clone(),
            key: key.clone(),
            cafile: cafile.clone(),
            require_certificate,
        }),
        (None, None) => Err(ConfigError::Invalid(format!(
            "listener \"{url}\" needs a certificate: pass --cert FILE and --key FILE (PEM), or \
             set cert and key in the config file"
        ))),
        (Some(_), None) => Err(ConfigError::Invalid(format!(
            "listener \"{url}\" has a certificate but no private key: pass --key FILE (PEM), or \
             set key in the config file"
        ))),
        (None, Some(_)) => Err(ConfigError::Invalid(format!(
            "listener \"{url}\" has a private key but no certificate: pass --cert FILE (PEM), or \
             set cert in the config file"
        ))),
    }
}

/// Parses `mqtt://HOST:PORT` / `mqtts://HOST:PORT` (port optional: 1883 / 8883; IPv6 hosts in
/// brackets) and resolves the host.
pub fn parse_listen_url(url: &str) -> Result<(ListenerKind, SocketAddr), ConfigError> {
    let bad = |msg: String| Err(ConfigError::Listener(msg));
    let Some((scheme, rest)) = url.split_once("://") else {
        return bad(format!(
            "listener URL \"{url}\" has no scheme; write it as mqtt://{url} (or mqtts://{url} \
             for TLS)"
        ));
    };
    let kind = match scheme.to_ascii_lowercase().as_str() {
        "mqtt" => ListenerKind::Mqtt,
        "mqtts" => ListenerKind::Mqtts,
        "ws" | "wss" | "http" | "https" => {
            return bad(format!(
                "listener URL \"{url}\": {scheme}:// listeners are not supported yet; use \
                 mqtt://HOST:PORT or mqtts://HOST:PORT"
            ))
        }
        _ => {
            return bad(format!(
                "listener URL \"{url}\" has an unknown scheme \"{scheme}\"; use mqtt://HOST:PORT \
                 or mqtts://HOST:PORT"
            ))
        }
    };
    let hostport = rest.strip_suffix('/').unwrap_or(rest);
    if hostport.contains('/') || hostport.contains('?') || hostport.contains('#') {
        return bad(format!(
            "listener URL \"{url}\" has a path; write only {scheme}://HOST:PORT"
        ));
    }
    if hostport.contains('@') {
        return bad(format!(
            "listener URL \"{url}\" contains user information; write only {scheme}://HOST:PORT"
        ));
    }
    let (host, port) = split_host_port(hostport).map_err(|why| {
        ConfigError::Listener(format!(
            "listener URL \"{url}\" {why}; use {scheme}://HOST:PORT, e.g. {scheme}://0.0.0.0:{}",
            kind.default_port()
        ))
    })?;
    let port = port.unwrap_or(kind.default_port());
    if host.is_empty() {
        return bad(format!(
            "listener URL \"{url}\" has no host; use {scheme}://0.0.0.0:{port} to listen on every \
             interface or {scheme}://127.0.0.1:{port} for this machine only"
        ));
    }
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok((kind, SocketAddr::new(ip, port)));
    }
    let resolved = (host, port).to_socket_addrs().map_err(|e| {
        ConfigError::Listener(format!(
            "listener URL \"{url}\": cannot resolve host \"{host}\" ({}); use an IP address such \
             as 0.0.0.0 or 127.0.0.1",
            io_reason(&e)
        ))
    })?;
    let addrs: Vec<SocketAddr> = resolved.collect();
    // Prefer IPv4 (what `localhost` means to most MQTT clients), else the first address.
    match addrs.iter().find(|a| a.is_ipv4()).or_else(|| addrs.first()) {
        Some(addr) => Ok((kind, *addr)),
        None => bad(format!(
            "listener URL \"{url}\": host \"{host}\" has no address; use an IP address such as \
             0.0.0.0 or 127.0.0.1"
        )),
    }
}

/// Splits `host:port`, `[v6]:port`, `host` or `[v6]`; the error completes "listener URL ... ".
fn split_host_port(s: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err("has an IPv6 address without its closing \"]\"".to_string());
        };
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(format!("has \"{after}\" after the IPv6 address")),
            },
        }
    } else {
        match s.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err("has an IPv6 address that is not in brackets".to_string())
            }
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) => Some(n),
            Err(_) => return Err(format!("has an invalid port \"{p}\" (use 0 to 65535)")),
        },
    };
    Ok((host, port))
}

// ---------------------------------------------------------------------------------------------
// [limits]

/// `[limits]` as written in the file: the same fields and defaults as [`makelaar_core::Limits`]
/// (durations in seconds), with their ranges checked while parsing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    #[serde(deserialize_with = "de_max_packet_size")]
    pub max_packet_size: u32,
    pub max_keep_alive: u16,
    #[serde(deserialize_with = "de_connect_timeout")]
    pub connect_timeout: u64,
    pub max_queued_messages: usize,
    pub max_queued_bytes: usize,
    pub max_stored_bytes: usize,
    pub queue_qos0_messages: bool,
    #[serde(deserialize_with = "de_at_least_one")]
    pub max_inflight_messages: u16,
    #[serde(deserialize_with = "de_at_least_one")]
    pub receive_maximum: u16,
    pub topic_alias_maximum: u16,
    pub max_outgoing_bytes: usize,
    /// Bytes of large packets (over 64 KiB) being received at once over all clients.
    pub large_packet_budget: usize,
    pub max_session_expiry: u32,
    pub persistent_session_expiry: u32,
    pub max_subscriptions_per_session: usize,
    pub max_connections: usize,
    pub max_retained_messages: usize,
    pub retain_available: bool,
    pub allow_zero_length_client_id: bool,
    #[serde(deserialize_with = "de_max_client_id_len")]
    pub max_client_id_len: usize,
    #[serde(deserialize_with = "de_max_qos")]
    pub max_qos: u8,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig::from(&Limits::default())
    }
}

impl From<&Limits> for LimitsConfig {
    fn from(l: &Limits) -> Self {
        // Destructured without `..` so that a new field in `Limits` fails to compile here.
        let Limits {
            max_packet_size,
            max_keep_alive,
            connect_timeout,
            max_queued_messages,
            max_queued_bytes,
            max_stored_bytes,
            queue_qos0_messages,
            max_inflight_messages,
            receive_maximum,
            topic_alias_maximum,
            max_outgoing_bytes,
            large_packet_budget,
            max_session_expiry,
            persistent_session_expiry,
            max_subscriptions_per_session,
            max_connections,
            max_retained_messages,
            retain_available,
            allow_zero_length_client_id,
            max_client_id_len,
            max_qos,
        } = l.clone();
        LimitsConfig {
            max_packet_size,
            max_keep_alive,
            connect_timeout: connect_timeout.as_secs(),
            max_queued_messages,
            max_queued_bytes,
            max_stored_bytes,
            queue_qos0_messages,
            max_inflight_messages,
            receive_maximum,
            topic_alias_maximum,
            max_outgoing_bytes,
            large_packet_budget,
            max_session_expiry,
            persistent_session_expiry,
            max_subscriptions_per_session,
            max_connections,
            max_retained_messages,
            retain_available,
            allow_zero_length_client_id,
            max_client_id_len,
            max_qos,
        }
    }
}

impl From<LimitsConfig> for Limits {
    fn from(c: LimitsConfig) -> Self {
        Limits {
            max_packet_size: c.max_packet_size,
            max_keep_alive: c.max_keep_alive,
            connect_timeout: Duration::from_secs(c.connect_timeout),
            max_queued_messages: c.max_queued_messages,
            max_queued_bytes: c.max_queued_bytes,
            max_stored_bytes: c.max_stored_bytes,
            queue_qos0_messages: c.queue_qos0_messages,
            max_inflight_messages: c.max_inflight_messages,
            receive_maximum: c.receive_maximum,
            topic_alias_maximum: c.topic_alias_maximum,
            max_outgoing_bytes: c.max_outgoing_bytes,
            large_packet_budget: c.large_packet_budget,
            max_session_expiry: c.max_session_expiry,
            persistent_session_expiry: c.persistent_session_expiry,
            max_subscriptions_per_session: c.max_subscriptions_per_session,
            max_connections: c.max_connections,
            max_retained_messages: c.max_retained_messages,
            retain_available: c.retain_available,
            allow_zero_length_client_id: c.allow_zero_length_client_id,
            max_client_id_len: c.max_client_id_len,
            max_qos: c.max_qos,
        }
    }
}

/// Deserializes an unsigned integer and checks `min..=max`; the error names the range.
fn de_ranged<'de, D, T>(d: D, min: u64, max: u64, what: &str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    // Read as i64 (TOML's integer type) so negative numbers get the same range message.
    let v = i64::deserialize(d)?;
    let expected = format!("{what} from {min} to {max}");
    let unexpected = Unexpected::Signed(v);
    let Ok(u) = u64::try_from(v) else {
        return Err(de::Error::invalid_value(unexpected, &expected.as_str()));
    };
    if u < min || u > max {
        return Err(de::Error::invalid_value(unexpected, &expected.as_str()));
    }
    T::try_from(u).map_err(|_| de::Error::invalid_value(unexpected, &expected.as_str()))
}

// [MQTT-2.2.3]: the Remaining Length field holds at most 268,435,455; 16 bytes fits a CONNACK.
fn de_max_packet_size<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    de_ranged(d, 16, 268_435_455, "a size in bytes")
}

fn de_connect_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    de_ranged(d, 1, 86_400, "a number of seconds")
}

// Receive Maximum 0 is a Protocol Error [MQTT-3.2.2.3.3]; an inflight window of 0 sends nothing.
fn de_at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    de_ranged(d, 1, u64::from(u16::MAX), "a whole number")
}

// The server MUST allow client ids of 1 to 23 bytes [MQTT-3.1.3-5].
fn de_max_client_id_len<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    de_ranged(d, 23, 65_535, "a length in bytes")
}

fn de_max_qos<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    de_ranged(d, 0, 2, "a QoS")
}

/// `listen` accepts a list of URLs or one URL.
fn de_listen<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    struct ListenVisitor;
    impl<'de> Visitor<'de> for ListenVisitor {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of listener URLs")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(vec![v.to_string()])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(url) = seq.next_element::<String>()? {
                out.push(url);
            }
            Ok(out)
        }
    }
    d.deserialize_any(ListenVisitor).map(Some)
}

// ---------------------------------------------------------------------------------------------
// Error messages

/// The `io::Error` text without the trailing " (os error N)".
pub(crate) fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s.get(..i).unwrap_or(&s).to_string(),
        _ => s,
    }
}

/// Where in the file an error points: line and column (1-based), the `[table]` it is in and
/// the key on that line, when they can be found.
struct Position {
    line: usize,
    column: usize,
    table: Option<String>,
    key: Option<String>,
}

fn position(src: &str, offset: usize) -> Position {
    let offset = offset.min(src.len());
    let before = src.get(..offset).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before
        .get(line_start..)
        .map_or(1, |s| s.chars().count() + 1);
    let line_text = src
        .get(line_start..)
        .unwrap_or("")
        .lines()
        .next()
        .unwrap_or("");
    let table = before.lines().rev().find_map(|l| {
        let t = l.trim();
        let inner = t.strip_prefix('[')?;
        let end = inner.find(']')?;
        Some(inner.get(..end)?.trim_matches(['[', ']', ' ']).to_string())
    });
    let key = line_text
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    Position {
        line,
        column,
        table,
        key,
    }
}

fn describe_toml_error(err: &toml::de::Error, src: &str, source_name: &str) -> String {
    let msg = err.message().trim();
    let pos = err.span().map(|s| position(src, s.start));
    let prefix = match &pos {
        Some(p) => format!("{source_name}:{}:{}", p.line, p.column),
        None => source_name.to_string(),
    };
    let table = pos.as_ref().and_then(|p| p.table.clone());
    let key_path = |key: &str| match &table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_string(),
    };
    let value_key = pos.as_ref().and_then(|p| p.key.clone());

    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let (name, known) = rest.split_once('`').unwrap_or((rest, ""));
        let known: Vec<&str> = known
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|k| !k.is_empty())
            .collect();
        // Which struct rejected the key tells the table, more reliably than the text above it.
        let place = if known.contains(&"max_packet_size") {
            "in [limits]".to_string()
        } else if known.contains(&"listen") {
            "at the top level".to_string()
        } else {
            match &table {
                Some(t) => format!("in [{t}]"),
                None => "at the top level".to_string(),
            }
        };
        return match closest(name, &known) {
            Some(guess) => format!(
                "{prefix}: unknown key \"{name}\" {place}; did you mean \"{guess}\"? (every key \
                 is listed in docs/configuration.md)"
            ),
            None => format!(
                "{prefix}: unknown key \"{name}\" {place}; the known keys are {} (see \
                 docs/configuration.md)",
                known.join(", ")
            ),
        };
    }

    if let Some(rest) = msg.strip_prefix("invalid type: ") {
        let (found, expected) = rest
            .split_once(", expected ")
            .unwrap_or((rest, "another type"));
        let what = match &value_key {
            Some(k) => key_path(k),
            None => "this value".to_string(),
        };
        return format!(
            "{prefix}: {what} must be {}, not {}",
            describe_expected(expected),
            found.replace('`', "")
        );
    }

    if let Some(rest) = msg.strip_prefix("invalid value: ") {
        let (found, expected) = rest
            .split_once(", expected ")
            .unwrap_or((rest, "another value"));
        let value = found
            .split('`')
            .nth(1)
            .map_or_else(|| found.to_string(), str::to_string);
        let what = match &value_key {
            Some(k) => format!("{} = {value}", key_path(k)),
            None => value,
        };
        return format!(
            "{prefix}: {what} is out of range; use {}",
            describe_expected(expected)
        );
    }

    if let Some(rest) = msg.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or(rest);
        return format!("{prefix}: the key \"{name}\" is missing; add it");
    }

    // A TOML syntax error; its text may span several lines.
    let text: Vec<&str> = msg
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    format!(
        "{prefix}: this is not valid TOML ({}); see makelaar.example.toml for the syntax",
        text.join("; ")
    )
}

/// serde's name for a type → words a user understands.
fn describe_expected(expected: &str) -> String {
    match expected {
        "u8" => format!("a whole number from 0 to {}", u8::MAX),
        "u16" => format!("a whole number from 0 to {}", u16::MAX),
        "u32" => format!("a whole number from 0 to {}", u32::MAX),
        "u64" | "usize" => format!("a whole number from 0 to {}", i64::MAX),
        "i64" => "a whole number".to_string(),
        "a boolean" => "true or false".to_string(),
        "a string" => "a string in quotes".to_string(),
        "a sequence" => "a list".to_string(),
        other => other.to_string(),
    }
}

/// The known key closest to `name`, if it is close enough to be a likely typo.
fn closest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    let best = known
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        .min_by_key(|(d, _)| *d)?;
    let allowed = (name.chars().count() / 3).clamp(1, 4);
    if best.0 <= allowed {
        return Some(best.1);
    }
    // A key with a word left off or added, e.g. "max_packets" for "max_packet_size".
    let stem = name.trim_end_matches('s');
    if stem.len() >= 6 {
        return known
            .iter()
            .copied()
            .find(|k| k.starts_with(stem) || stem.starts_with(*k));
    }
    None
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let subst = prev.get(j).copied().unwrap_or(0) + usize::from(ca != *cb);
            let del = prev.get(j + 1).copied().unwrap_or(0) + 1;
            let ins = cur.get(j).copied().unwrap_or(0) + 1;
            cur.push(subst.min(del).min(ins));
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_defaults_round_trip() {
        assert_eq!(Limits::from(LimitsConfig::default()), Limits::default());
    }

    #[test]
    fn split_host_port_forms() {
        assert_eq!(split_host_port("a:1"), Ok(("a", Some(1))));
        assert_eq!(split_host_port("a"), Ok(("a", None)));
        assert_eq!(split_host_port("[::1]:2"), Ok(("::1", Some(2))));
        assert_eq!(split_host_port("[::]"), Ok(("::", None)));
        assert!(split_host_port("::1:2").is_err());
        assert!(split_host_port("a:99999").is_err());
    }

    #[test]
    fn edit_distance_works() {
        assert_eq!(edit_distance("max_packets", "max_packet_size"), 4);
        assert_eq!(edit_distance("lisen", "listen"), 1);
        assert_eq!(closest("lisen", &["listen", "cert"]), Some("listen"));
    }
}
