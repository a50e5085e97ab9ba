//! `[dashboard]`: the web dashboard served on the `http://` listeners (see `crate::http`).

use serde::Deserialize;

/// `[dashboard]` as written in `makelaar.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardTable {
    /// Serve the dashboard (`/` and `/api/...`) on the HTTP listeners; default true.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Users of the HTTP listener's password file who may use the dashboard (the admin
    /// role). With a password file, everyone else is refused (403).
    #[serde(default)]
    pub admin_users: Option<Vec<String>>,
    /// Without a password file the dashboard answers only clients on the same machine
    /// (loopback addresses); true opens it to the network, unauthenticated.
    #[serde(default)]
    pub allow_remote_without_password: Option<bool>,
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
