//! The start-up checks on the NATS servers, sans-IO: what a server reports, and whether
//! cluster mode may start on it.
//!
//! Rule 1 of docs/cluster.md: a PUBACK from any node means the message is on disk on a
//! majority of the NATS cluster. JetStream fsyncs lazily by default (`sync_interval`, every
//! two minutes), which loses acknowledged writes when hosts fail together; and servers older
//! than 2.12 lack fixes this design relies on. A server reports its version in its INFO and
//! its monitoring endpoint `/varz` (`version`), and its fsync setting only in `/varz`:
//! `jetstream.config.sync_always` is `true` when it runs with `sync_interval: always` and
//! absent otherwise. So every server is checked through its monitoring port; a server that
//! cannot be asked is refused like a lazy one (the fsync setting cannot be known).
//!
//! `allow_lazy_fsync` turns the fsync refusals into a [`Warning`] that the caller logs
//! loudly; the version floor has no override.

use serde::Deserialize;

/// The oldest NATS server version accepted (major, minor).
pub const MIN_VERSION: (u64, u64) = (2, 12);

/// What one NATS server told about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerReport {
    /// The server's name (or where it was asked).
    pub name: String,
    /// Its version, as reported (`2.15.1`, `2.12.0-beta.1`).
    pub version: String,
    /// Whether JetStream is enabled.
    pub jetstream: bool,
    /// Whether it fsyncs before acknowledging (`sync_interval: always`).
    pub sync_always: bool,
    /// The size of its JetStream cluster (the meta group), from its configuration: known as
    /// soon as it runs, before its routes are up; 0 when it does not say (a single server).
    pub cluster_size: usize,
}

/// Why cluster mode refuses a server. Each message is one sentence naming the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    /// The server fsyncs lazily.
    #[error(
        "NATS server {server} fsyncs lazily (its JetStream sync_interval is not 'always'), so \
         an acknowledged message could be lost: set `jetstream {{ sync_interval: always }}` in \
         its configuration, or start with --allow-lazy-fsync to accept that risk"
    )]
    LazyFsync {
        /// The server.
        server: String,
    },
    /// The server's monitoring endpoint could not be read, so its fsync setting is unknown.
    #[error(
        "cannot read {url} to check the fsync setting of NATS server {server} ({reason}): \
         enable its monitoring port (`http: 127.0.0.1:8222` in its configuration) and name it \
         in the cluster's monitor list, or start with --allow-lazy-fsync to accept the risk"
    )]
    MonitorUnreachable {
        /// The server.
        server: String,
        /// The URL tried.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The server is too old.
    #[error(
        "NATS server {server} is version {version}, older than 2.12: upgrade it to 2.12 or newer"
    )]
    TooOld {
        /// The server.
        server: String,
        /// Its version.
        version: String,
    },
    /// JetStream is off.
    #[error(
        "NATS server {server} runs without JetStream: add a `jetstream {{ store_dir: ..., \
         sync_interval: always }}` block to its configuration"
    )]
    NoJetStream {
        /// The server.
        server: String,
    },
}

/// What a passed check still wants said, loudly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// Lazy fsync accepted by `allow_lazy_fsync`: the refusal it replaces.
    LazyFsyncAllowed(StartupError),
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Warning::LazyFsyncAllowed(e) => write!(
                f,
                "--allow-lazy-fsync: starting although {e}; acknowledged QoS 1/2 messages, \
                 sessions and retained messages can be lost when NATS hosts fail"
            ),
        }
    }
}

/// `major.minor.patch` of a version string (a `-suffix` or `+build` ignored).
pub fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let core = v.trim_start_matches('v');
    let core = core.split(['-', '+']).next()?;
    let mut parts = core.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next().map_or(Some(0), |p| p.parse().ok())?;
    Some((major, minor, patch))
}

/// Checks one server's report.
pub fn check(
    report: &ServerReport,
    allow_lazy_fsync: bool,
) -> Result<Option<Warning>, StartupError> {
    let old = parse_version(&report.version).is_none_or(|(ma, mi, _)| (ma, mi) < MIN_VERSION);
    if old {
        return Err(StartupError::TooOld {
            server: report.name.clone(),
            version: report.version.clone(),
        });
    }
    if !report.jetstream {
        return Err(StartupError::NoJetStream {
            server: report.name.clone(),
        });
    }
    if !report.sync_always {
        return lazy(
            StartupError::LazyFsync {
                server: report.name.clone(),
            },
            allow_lazy_fsync,
        );
    }
    Ok(None)
}

/// A refusal about fsync, or its warning under `allow_lazy_fsync`.
pub fn lazy(e: StartupError, allow_lazy_fsync: bool) -> Result<Option<Warning>, StartupError> {
    if allow_lazy_fsync {
        Ok(Some(Warning::LazyFsyncAllowed(e)))
    } else {
        Err(e)
    }
}

#[derive(Deserialize)]
struct Varz {
    server_name: String,
    version: String,
    #[serde(default)]
    jetstream: Option<VarzJetStream>,
}

#[derive(Deserialize)]
struct VarzJetStream {
    #[serde(default)]
    config: Option<VarzJsConfig>,
    #[serde(default)]
    meta: Option<VarzJsMeta>,
}

#[derive(Deserialize)]
struct VarzJsMeta {
    #[serde(default)]
    cluster_size: usize,
}

#[derive(Deserialize)]
struct VarzJsConfig {
    #[serde(default)]
    sync_always: bool,
}

/// Reads a server's report out of its `/varz` JSON.
pub fn report_from_varz(json: &[u8]) -> Result<ServerReport, serde_json::Error> {
    let v: Varz = serde_json::from_slice(json)?;
    let cluster_size = v
        .jetstream
        .as_ref()
        .and_then(|j| j.meta.as_ref())
        .map_or(0, |m| m.cluster_size);
    let config = v.jetstream.and_then(|j| j.config);
    Ok(ServerReport {
        name: v.server_name,
        version: v.version,
        jetstream: config.is_some(),
        sync_always: config.is_some_and(|c| c.sync_always),
        cluster_size,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    fn report(version: &str, sync_always: bool) -> ServerReport {
        ServerReport {
            name: "n1".into(),
            version: version.into(),
            jetstream: true,
            sync_always,
            cluster_size: 0,
        }
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("2.15.1"), Some((2, 15, 1)));
        assert_eq!(parse_version("v2.12.0-beta.1"), Some((2, 12, 0)));
        assert_eq!(parse_version("2.9"), Some((2, 9, 0)));
        assert_eq!(parse_version("x"), None);
        assert!(check(&report("2.12.0", true), false).is_ok());
        assert!(check(&report("3.0.0", true), false).is_ok());
        let e = check(&report("2.11.9", true), true).unwrap_err();
        assert_eq!(
            e.to_string(),
            "NATS server n1 is version 2.11.9, older than 2.12: upgrade it to 2.12 or newer"
        );
        assert!(check(&report("garbage", true), false).is_err());
    }

    #[test]
    fn lazy_fsync_is_refused_unless_allowed() {
        let e = check(&report("2.15.1", false), false).unwrap_err();
        assert!(matches!(e, StartupError::LazyFsync { .. }));
        let text = e.to_string();
        assert!(text.contains("sync_interval: always"), "{text}");
        assert!(text.contains("--allow-lazy-fsync"), "{text}");
        assert!(!text.contains(". "), "one sentence: {text}");
        let w = check(&report("2.15.1", false), true).unwrap().unwrap();
        assert!(w.to_string().contains("can be lost"));
        assert_eq!(check(&report("2.15.1", true), false), Ok(None));
    }

    #[test]
    fn varz() {
        let always = br#"{"server_name":"n1","version":"2.15.1","jetstream":{"config":{"sync_interval":120000000000,"sync_always":true}}}"#;
        let r = report_from_varz(always).unwrap();
        assert_eq!(r, report("2.15.1", true));
        // The JetStream cluster's size, from the server's configuration (the default
        // replica count comes from it).
        let clustered = br#"{"server_name":"n1","version":"2.15.1","jetstream":{"config":{"sync_always":true},"meta":{"name":"mk","cluster_size":3,"quorum_needed":2}}}"#;
        assert_eq!(report_from_varz(clustered).unwrap().cluster_size, 3);
        let lazy = br#"{"server_name":"n1","version":"2.15.1","jetstream":{"config":{"sync_interval":120000000000}}}"#;
        assert!(!report_from_varz(lazy).unwrap().sync_always);
        let none = br#"{"server_name":"n1","version":"2.15.1"}"#;
        assert!(!report_from_varz(none).unwrap().jetstream);
        assert!(report_from_varz(b"{").is_err());
    }
}
