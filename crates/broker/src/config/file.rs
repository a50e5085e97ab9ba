//! `makelaar.toml` as written ([`ConfigFile`]): the file's keys one to one, every key
//! optional, before validation turns them into a [`Config`](super::Config).

use std::path::{Path, PathBuf};

use makelaar_core::Limits;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::*;

/// `makelaar.toml` as written: every key optional, nothing validated beyond types and ranges.
/// The CLI sets the fields its flags override, then calls [`ConfigFile::into_config`].
///
/// The doc comments of these fields (and of [`ListenerTable`] and [`Limits`], which is
/// `[limits]` as is) are the user's reference: `makelaar config reference` prints them, with each key's type and its
/// default from [`ConfigFile::defaults`]. Write them for users.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Where to accept connections: `mqtt://HOST:PORT` (MQTT over TCP), `mqtts://HOST:PORT`
    /// (MQTT over TLS), `ws://HOST:PORT/PATH` (MQTT over WebSocket) or `wss://HOST:PORT/PATH`
    /// (over WebSocket and TLS); `http://HOST:PORT` or `https://HOST:PORT` serves Prometheus
    /// metrics at /metrics and health at /healthz (docs/metrics.md). `0.0.0.0` or `[::]`
    /// listens on every interface, `127.0.0.1` on this machine only; the port may be left out
    /// (1883 for mqtt, 8883 for mqtts, 80 for ws, 443 for wss, 9883 for http, 9884 for
    /// https). The WebSocket path defaults to `/mqtt`; `/*` serves every path. A single string
    /// is accepted as a list of one. These listeners share the top-level TLS and
    /// authentication settings; see also `[[listener]]`.
    #[serde(default, deserialize_with = "de_listen")]
    #[schemars(with = "Option<Vec<String>>")]
    pub listen: Option<Vec<String>>,
    /// PEM certificate chain (server certificate first) of the mqtts and wss listeners;
    /// required when there is one. RSA, ECDSA and Ed25519 keys work. Re-read on SIGHUP.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// PEM bundle of the CAs that sign client certificates. With it, TLS clients are asked for
    /// a certificate, and one they present must chain to one of these CAs.
    #[serde(default)]
    pub cafile: Option<PathBuf>,
    /// Mutual TLS: refuse TLS clients that present no certificate signed by `cafile` (which it
    /// needs).
    #[serde(default)]
    pub require_certificate: Option<bool>,
    /// Seconds between `$SYS/broker/...` updates; 0 turns them off.
    #[serde(default)]
    pub sys_interval: Option<u64>,
    /// Keep all state in memory: nothing is written to disk and nothing survives a restart.
    #[serde(default)]
    pub in_memory: Option<bool>,
    /// Directory of the durable store (sessions, subscriptions, queued and in-flight
    /// messages, retained messages), created when missing: one redb file, `makelaar.redb`,
    /// and a lock file. A second broker on the same directory is refused, naming the process
    /// that holds it.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// When an acknowledgement (PUBACK, PUBREC, PUBCOMP, SUBACK, UNSUBACK, CONNACK) may go
    /// out. `"sync"`: after the store has committed with fsync what it acknowledges; the writes
    /// of every client that arrive during one fsync are committed together, so throughput
    /// grows with load, and nothing acknowledged is lost, even to a power cut. `"batch"`: after
    /// the commit, before its fsync, which follows within `batch_max_delay_ms`; the last
    /// `batch_max_delay_ms` of acknowledged writes may be lost on power loss or `kill -9`
    /// (never on a clean shutdown).
    #[serde(default)]
    pub durability: Option<String>,
    /// The bound of `durability = "batch"`, in milliseconds; an error with `"sync"`.
    #[serde(default)]
    pub batch_max_delay_ms: Option<u64>,
    /// What to do when the store file is damaged or truncated: `"fail"` stops the start with
    /// one sentence naming the file; `"move-aside"` renames it to
    /// `makelaar.redb.corrupt-<time>` (kept for inspection) and starts with an empty store.
    #[serde(default)]
    pub on_corrupt_store: Option<String>,
    /// Topic filters refused outright: a SUBSCRIBE to exactly one of them gets reason code
    /// 0x80 for it.
    #[serde(default)]
    pub deny_subscriptions: Option<Vec<String>>,
    /// Whether a client that takes over a connection with the same client id publishes the
    /// old connection's will. `"spec"`: as MQTT says, the will is published (unless it has a
    /// Will Delay and the session carries on). `"mosquitto"`: as Mosquitto does, a persistent
    /// session resumed with Clean Start 0 (clean session 0) drops the will instead, so a
    /// device reconnecting after a half-open connection does not flap to "offline"; the will
    /// is still published when the old session ends or the new connection starts clean. The
    /// default with `--mosquitto-conf`. Either way a will published at a takeover is routed
    /// (and stored, if retained) before the new connection's CONNACK.
    #[serde(default)]
    pub will_on_takeover: Option<String>,
    /// PEM certificate revocation lists (`openssl ca -gencrl`): client certificates they
    /// revoke are refused, and so are those whose issuer has no list in the file. Needs
    /// `cafile`. Re-read on SIGHUP.
    #[serde(default)]
    pub crlfile: Option<PathBuf>,
    /// TLS listeners with `cafile`: the username is the Common Name of the client's verified
    /// certificate, and the username and password in CONNECT are ignored.
    #[serde(default)]
    pub use_identity_as_username: Option<bool>,
    /// Accept clients that give no username. When not set: true, unless `password_file` or
    /// `use_identity_as_username` is set.
    #[serde(default)]
    pub allow_anonymous: Option<bool>,
    /// Mosquitto password file (written by `mosquitto_passwd` or `makelaar passwd`): a client
    /// that gives a username must give its password. Re-read on SIGHUP.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Mosquitto ACL file: what each client may publish and receive. Re-read on SIGHUP.
    #[serde(default)]
    pub acl_file: Option<PathBuf>,
    /// What is logged (to standard error): `error`, `warn`, `info`, `debug` or `trace`, or
    /// tracing filter directives such as `"warn,makelaar::clients=info"`. `info` adds one line
    /// per client connecting, disconnecting or refused. When not set: warnings and errors plus
    /// the status lines (listening, reloaded, stopping). `--log-level`, and else the
    /// `RUST_LOG` environment variable, override it.
    #[serde(default)]
    pub log_level: Option<String>,
    /// How log lines are written: `"text"` (for people) or `"json"` (one JSON object per line,
    /// for log collectors). `--log-format` overrides it.
    #[serde(default)]
    pub log_format: Option<LogFormat>,
    /// Listeners with settings of their own; each inherits the top-level settings it does not
    /// set itself.
    #[serde(default)]
    pub listener: Vec<ListenerTable>,
    /// Limits and protocol options: every queue and buffer of the broker is bounded by one of
    /// these.
    #[serde(default)]
    pub limits: Limits,
    /// The web dashboard on the HTTP listeners: who may use it (docs/dashboard.md).
    #[serde(default)]
    pub dashboard: DashboardTable,
    /// Bridges: connections to other MQTT brokers that carry chosen topics one or both ways,
    /// as Mosquitto's bridges do (docs/bridges.md). One table per remote broker.
    #[serde(default)]
    pub bridge: Vec<BridgeTable>,
    /// This broker as a node of a cluster on NATS JetStream (preview, docs/cluster.md).
    #[serde(default)]
    pub cluster: ClusterTable,
}

/// The format of log lines (`log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, fields (the message among them).
    Json,
}

/// One `[[listener]]` table: a listener whose TLS and authentication settings may differ from
/// the top-level ones, which it inherits where it says nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerTable {
    /// `mqtt://HOST:PORT`, `mqtts://HOST:PORT`, `ws://HOST:PORT/PATH` or
    /// `wss://HOST:PORT/PATH`, as in `listen`; or `http://HOST:PORT` / `https://HOST:PORT`
    /// (metrics and health). Required.
    pub url: String,
    /// As the top-level `cert`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// As the top-level `key`.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// As the top-level `cafile`.
    #[serde(default)]
    pub cafile: Option<PathBuf>,
    /// As the top-level `crlfile`.
    #[serde(default)]
    pub crlfile: Option<PathBuf>,
    /// As the top-level `require_certificate`.
    #[serde(default)]
    pub require_certificate: Option<bool>,
    /// As the top-level `use_identity_as_username`; only on mqtts listeners.
    #[serde(default)]
    pub use_identity_as_username: Option<bool>,
    /// As the top-level `allow_anonymous`.
    #[serde(default)]
    pub allow_anonymous: Option<bool>,
    /// As the top-level `password_file`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Clients connected through this listener at once; 0 means no limit. A client over it
    /// gets CONNACK 0x97 Quota exceeded (3.1.1: 3). On an HTTP listener: connections at once,
    /// 64 when not set; past it a new one is closed at once.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Every connection starts with a PROXY protocol header, v1 or v2 (HAProxy, load
    /// balancers), before TLS: the client address it names is the one used. Connections
    /// without a valid header are refused.
    #[serde(default)]
    pub proxy_protocol: Option<bool>,
    /// `ws`/`wss` listeners: addresses and networks (`"127.0.0.1"`, `"10.0.0.0/8"`) of the
    /// proxies whose `X-Forwarded-For` header names the client (the right-most untrusted
    /// address). Empty: the header is ignored.
    #[serde(default)]
    pub trusted_proxies: Option<Vec<String>>,
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
            file.resolve_paths(dir);
        }
        Ok(file)
    }

    /// Makes every relative path in the settings relative to `dir`.
    pub fn resolve_paths(&mut self, dir: &Path) {
        let top = [
            &mut self.cert,
            &mut self.key,
            &mut self.cafile,
            &mut self.crlfile,
            &mut self.data_dir,
            &mut self.password_file,
            &mut self.acl_file,
        ];
        let tables = self.listener.iter_mut().flat_map(|l| {
            [
                &mut l.cert,
                &mut l.key,
                &mut l.cafile,
                &mut l.crlfile,
                &mut l.password_file,
            ]
        });
        for p in top.into_iter().chain(tables).flatten() {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
        for b in &mut self.bridge {
            b.resolve_paths(dir);
        }
    }

    /// Parses a configuration held in a string; `source_name` starts every error message.
    pub fn from_toml_str(s: &str, source_name: &str) -> Result<ConfigFile, ConfigError> {
        toml::from_str(s).map_err(|e| ConfigError::Parse(describe_toml_error(&e, s, source_name)))
    }
}
