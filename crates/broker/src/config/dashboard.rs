//! `[dashboard]`: the web dashboard served on the `http://` listeners (see `crate::http`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `[dashboard]` as written in `makelaar.toml`. The field documentation is the user's
/// reference (`makelaar config reference`; docs/dashboard.md tells more).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DashboardTable {
    /// Serve the web dashboard (`/`, and its API under `/api/`) on the `http://` and
    /// `https://` listeners.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Users of the HTTP listener's password file who may use the dashboard (the admin role).
    /// With a password file, the dashboard asks for a login (HTTP Basic) and refuses everyone
    /// else.
    #[serde(default)]
    pub admin_users: Option<Vec<String>>,
    /// Without a password file the dashboard needs no login, so it answers only this machine
    /// (loopback addresses) and only when opened by IP address or as `localhost`; true
    /// answers other machines too.
    #[serde(default)]
    pub allow_remote_without_password: Option<bool>,
}

impl DashboardTable {
    /// Every key at its default (see `ConfigFile::defaults`).
    pub fn defaults() -> DashboardTable {
        let d = DashboardConfig::default();
        DashboardTable {
            enabled: Some(d.enabled),
            admin_users: Some(d.admin_users),
            allow_remote_without_password: Some(d.allow_remote_without_password),
        }
    }
}

/// The dashboard's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DashboardConfig {
    /// Whether `/` and `/api/...` are served.
    pub enabled: bool,
    /// Usernames with the admin role.
    pub admin_users: Vec<String>,
    /// Serve remote clients without a password file.
    pub allow_remote_without_password: bool,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            enabled: true,
            admin_users: Vec::new(),
            allow_remote_without_password: false,
        }
    }
}

impl From<DashboardTable> for DashboardConfig {
    fn from(t: DashboardTable) -> Self {
        let d = DashboardConfig::default();
        DashboardConfig {
            enabled: t.enabled.unwrap_or(d.enabled),
            admin_users: t.admin_users.unwrap_or_default(),
            allow_remote_without_password: t
                .allow_remote_without_password
                .unwrap_or(d.allow_remote_without_password),
        }
    }
}
