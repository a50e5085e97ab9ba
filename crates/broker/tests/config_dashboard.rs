//! `[dashboard]` in `makelaar.toml`: defaults, the admin role, and mistakes refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use makelaar_broker::config::{Config, DashboardConfig};

fn parse(toml: &str) -> Result<Config, String> {
    Config::from_toml_str(toml, "makelaar.toml").map_err(|e| e.to_string())
}

#[test]
fn the_dashboard_is_on_with_nobody_admin_by_default() {
    let c = parse("").unwrap();
    assert_eq!(c.dashboard, DashboardConfig::default());
    assert!(c.dashboard.enabled);
    assert!(c.dashboard.admin_users.is_empty());
    assert!(!c.dashboard.allow_remote_without_password);
}

#[test]
fn dashboard_table_is_read() {
    let c = parse(
        "listen = [\"mqtt://127.0.0.1:1883\", \"http://127.0.0.1:9883\"]\n\
         [dashboard]\nadmin_users = [\"alice\", \"émile\"]\nenabled = false\n\
         allow_remote_without_password = true\n",
    )
    .unwrap();
    assert_eq!(c.dashboard.admin_users, ["alice", "émile"]);
    assert!(!c.dashboard.enabled);
    assert!(c.dashboard.allow_remote_without_password);
}

#[test]
fn unknown_dashboard_keys_and_wrong_types_are_named() {
    let e = parse("[dashboard]\nadmins = [\"alice\"]\n").unwrap_err();
    assert!(e.contains("admins"), "{e}");
    let e = parse("[dashboard]\nadmin_users = \"alice\"\n").unwrap_err();
    assert!(e.contains("admin_users"), "{e}");
}
