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
//!
//! One more setting is only warned about: how soon a server closes a route whose peer went
//! silent (`ping_interval`, at most 30 s for a route, × (`ping_max` + 1), in `/varz` too). A node gives an append up
//! after its engine timeout and tells the publisher so (no PUBACK/PUBREC). If the
//! append then still sits in a route's TCP buffer, cut off, and the cut heals before the
//! route is closed, it is stored late: after later messages of its publisher, which had
//! moved on (docs/cluster.md, "Faults"). A route closed before the node gives up drops it.

use std::time::Duration;

use serde::Deserialize;

/// The longest ping interval a NATS server uses on a route, whatever its `ping_interval`
/// (nats-server's own ceiling for routes).
pub const ROUTE_PING_CEILING: Duration = Duration::from_secs(30);

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
    /// How long its routes may stay silent before it closes them: `ping_interval` (at most
    /// [`ROUTE_PING_CEILING`]) × (`ping_max` + 1); `None` when it does not say, or has no
    /// routes (a JetStream cluster of one). (A `cluster { ping_interval }`
    /// of its own is not in `/varz`: the server-wide setting is the one checked.)
    pub route_stale_after: Option<Duration>,
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

/// What a passed check still wants said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// Lazy fsync accepted by `allow_lazy_fsync`: the refusal it replaces.
    LazyFsyncAllowed(StartupError),
    /// The server closes a silent route no sooner than a node gives an append up, so an
    /// append given up on can still be stored once a network cut heals.
    SlowRouteCheck {
        /// The server.
        server: String,
        /// Its `ping_interval` × (`ping_max` + 1).
        stale_after: Duration,
        /// How long a node waits for an append.
        append_wait: Duration,
    },
}

impl Warning {
    /// Whether it is about acknowledged messages (logged as an error) rather than about
    /// unacknowledged ones (a warning).
    pub fn risks_acknowledged(&self) -> bool {
        matches!(self, Warning::LazyFsyncAllowed(_))
    }
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Warning::LazyFsyncAllowed(e) => write!(
                f,
                "--allow-lazy-fsync: starting although {e}; acknowledged QoS 1/2 messages, \
                 sessions and retained messages can be lost when NATS hosts fail"
            ),
            Warning::SlowRouteCheck {
                server,
                stale_after,
                append_wait,
            } => write!(
                f,
                "NATS server {server} closes a silent route only after {:.0} s, no sooner \
                 than the {:.0} s a node waits for an append, so after a network cut heals a \
                 QoS 1/2 message whose publisher was not acknowledged can still be stored out \
                 of order: set `ping_interval: \"1s\"` and `ping_max: 2` in its configuration",
                stale_after.as_secs_f64(),
                append_wait.as_secs_f64()
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

/// Checks one server's report; `append_wait` is how long a node waits for an append.
pub fn check(
    report: &ServerReport,
    allow_lazy_fsync: bool,
    append_wait: Duration,
) -> Result<Vec<Warning>, StartupError> {
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
    let mut warnings = Vec::new();
    if !report.sync_always {
        warnings.extend(lazy(
            StartupError::LazyFsync {
                server: report.name.clone(),
            },
            allow_lazy_fsync,
        )?);
    }
    warnings.extend(route_check(
        &report.name,
        report.route_stale_after,
        append_wait,
    ));
    Ok(warnings)
}

/// The warning about a server that closes a silent route no sooner than an append is
/// given up (`stale_after` unknown: none).
pub fn route_check(
    server: &str,
    stale_after: Option<Duration>,
    append_wait: Duration,
) -> Option<Warning> {
    let stale_after = stale_after.filter(|s| *s >= append_wait)?;
    Some(Warning::SlowRouteCheck {
        server: server.to_owned(),
        stale_after,
        append_wait,
    })
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
    /// Nanoseconds.
    #[serde(default)]
    ping_interval: Option<u64>,
    #[serde(default)]
    ping_max: Option<u32>,
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
    let routed = cluster_size > 1;
    let pings = v.ping_interval.zip(v.ping_max).filter(|_| routed);
    let route_stale_after = pings.map(|(interval, max)| {
        let interval = Duration::from_nanos(interval).min(ROUTE_PING_CEILING);
        interval.saturating_mul(max.saturating_add(1))
    });
    Ok(ServerReport {
        name: v.server_name,
        version: v.version,
        jetstream: config.is_some(),
        sync_always: config.is_some_and(|c| c.sync_always),
        cluster_size,
        route_stale_after,
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
            route_stale_after: None,
        }
    }

    const WAIT: Duration = Duration::from_secs(5);

    #[test]
    fn versions() {
        assert_eq!(parse_version("2.15.1"), Some((2, 15, 1)));
        assert_eq!(parse_version("v2.12.0-beta.1"), Some((2, 12, 0)));
        assert_eq!(parse_version("2.9"), Some((2, 9, 0)));
        assert_eq!(parse_version("x"), None);
        assert!(check(&report("2.12.0", true), false, WAIT).is_ok());
        assert!(check(&report("3.0.0", true), false, WAIT).is_ok());
        let e = check(&report("2.11.9", true), true, WAIT).unwrap_err();
        assert_eq!(
            e.to_string(),
            "NATS server n1 is version 2.11.9, older than 2.12: upgrade it to 2.12 or newer"
        );
        assert!(check(&report("garbage", true), false, WAIT).is_err());
    }

    #[test]
    fn lazy_fsync_is_refused_unless_allowed() {
        let e = check(&report("2.15.1", false), false, WAIT).unwrap_err();
        assert!(matches!(e, StartupError::LazyFsync { .. }));
        let text = e.to_string();
        assert!(text.contains("sync_interval: always"), "{text}");
        assert!(text.contains("--allow-lazy-fsync"), "{text}");
        assert!(!text.contains(". "), "one sentence: {text}");
        let w = check(&report("2.15.1", false), true, WAIT).unwrap();
        assert_eq!(w.len(), 1);
        assert!(w[0].to_string().contains("can be lost"));
        assert!(w[0].risks_acknowledged());
        assert_eq!(check(&report("2.15.1", true), false, WAIT), Ok(vec![]));
    }

    /// NATS's defaults (2 minutes, 30 s for a route, × 3) keep a cut-off route, and the
    /// appends in its buffer, long past a node's wait; 1 s × 3 closes it first.
    #[test]
    fn a_route_closed_later_than_an_append_is_given_up_is_warned_about() {
        let mut r = report("2.15.1", true);
        r.route_stale_after = Some(Duration::from_secs(90));
        let w = check(&r, false, WAIT).unwrap();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(!w[0].risks_acknowledged());
        let text = w[0].to_string();
        assert!(
            text.starts_with("NATS server n1 closes a silent route only after 90 s"),
            "{text}"
        );
        assert!(
            text.contains("ping_interval: \"1s\"` and `ping_max: 2`"),
            "{text}"
        );
        assert!(!text.contains(". "), "one sentence: {text}");
        r.route_stale_after = Some(WAIT);
        assert_eq!(
            check(&r, false, WAIT).unwrap().len(),
            1,
            "as late as the wait"
        );
        r.route_stale_after = Some(Duration::from_secs(3));
        assert_eq!(check(&r, false, WAIT), Ok(vec![]));
        // Both said when both apply.
        r.sync_always = false;
        r.route_stale_after = Some(Duration::from_secs(90));
        assert_eq!(check(&r, true, WAIT).unwrap().len(), 2);
    }

    #[test]
    fn varz() {
        let always = br#"{"server_name":"n1","version":"2.15.1","jetstream":{"config":{"sync_interval":120000000000,"sync_always":true}}}"#;
        let r = report_from_varz(always).unwrap();
        assert_eq!(r, report("2.15.1", true));
        let pings = br#"{"server_name":"n1","version":"2.15.1","ping_interval":120000000000,"ping_max":2,"jetstream":{"config":{"sync_always":true},"meta":{"cluster_size":3}}}"#;
        // NATS's defaults: 2 minutes, capped at 30 s on a route, × 3.
        assert_eq!(
            report_from_varz(pings).unwrap().route_stale_after,
            Some(Duration::from_secs(90))
        );
        let fast = br#"{"server_name":"n1","version":"2.15.1","ping_interval":1000000000,"ping_max":2,"jetstream":{"meta":{"cluster_size":3}}}"#;
        assert_eq!(
            report_from_varz(fast).unwrap().route_stale_after,
            Some(Duration::from_secs(3))
        );
        // A server alone has no routes to close.
        let alone = br#"{"server_name":"n1","version":"2.15.1","ping_interval":120000000000,"ping_max":2,"jetstream":{"config":{"sync_always":true}}}"#;
        assert_eq!(report_from_varz(alone).unwrap().route_stale_after, None);
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
