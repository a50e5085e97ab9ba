//! The `makelaar.toml` equivalent of a converted `mosquitto.conf`: only what differs from
//! Makelaar's defaults, with the conversion notes as comments.

use std::fmt::Write;
use std::path::Path;

use makelaar_core::Limits;

use super::Converted;

/// A TOML string literal, escaped.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn path(p: &Path) -> String {
    quoted(&p.display().to_string())
}

pub(super) fn toml(c: &Converted, source: &Path) -> String {
    let f = &c.file;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# makelaar.toml converted from {} by `makelaar config convert`.",
        source.display()
    );
    out.push_str("# Every setting of this file is described in docs/config-reference.md.\n");
    for note in &c.notes {
        let _ = writeln!(out, "# Note: {note}.");
    }
    out.push('\n');
    let mut line = |key: &str, value: String| {
        let _ = writeln!(out, "{key} = {value}");
    };
    if let Some(v) = f.in_memory {
        line("in_memory", v.to_string());
    }
    if let Some(p) = &f.data_dir {
        line("data_dir", path(p));
    }
    if let Some(v) = f.sys_interval {
        line("sys_interval", v.to_string());
    }
    if let Some(v) = f.allow_anonymous {
        line("allow_anonymous", v.to_string());
    }
    if let Some(p) = &f.password_file {
        line("password_file", path(p));
    }
    if let Some(p) = &f.acl_file {
        line("acl_file", path(p));
    }
    if let Some(v) = &f.will_on_takeover {
        line("will_on_takeover", quoted(v));
    }
    for l in &f.listener {
        out.push_str("\n[[listener]]\n");
        let _ = writeln!(out, "url = {}", quoted(&l.url));
        for (key, value) in [
            ("cert", &l.cert),
            ("key", &l.key),
            ("cafile", &l.cafile),
            ("crlfile", &l.crlfile),
            ("password_file", &l.password_file),
        ] {
            if let Some(p) = value {
                let _ = writeln!(out, "{key} = {}", path(p));
            }
        }
        for (key, value) in [
            ("require_certificate", l.require_certificate),
            ("use_identity_as_username", l.use_identity_as_username),
            ("allow_anonymous", l.allow_anonymous),
        ] {
            if let Some(v) = value {
                let _ = writeln!(out, "{key} = {v}");
            }
        }
        if let Some(n) = l.max_connections {
            let _ = writeln!(out, "max_connections = {n}");
        }
    }
    if !f.bridge.is_empty() {
        out.push('\n');
        out.push_str(&bridges(&f.bridge));
    }
    let limits = changed_limits(&f.limits);
    if !limits.is_empty() {
        out.push_str("\n[limits]\n");
        for (key, value) in limits {
            let _ = writeln!(out, "{key} = {value}");
        }
    }
    out
}

/// The `[limits]` keys whose values differ from Makelaar's defaults, sorted by name.
fn changed_limits(limits: &Limits) -> Vec<(String, toml::Value)> {
    let table = |l: &Limits| match toml::Value::try_from(l) {
        Ok(toml::Value::Table(t)) => t,
        _ => toml::map::Map::new(),
    };
    let (now, default) = (table(limits), table(&Limits::default()));
    now.into_iter()
        .filter(|(k, v)| default.get(k) != Some(v))
        .collect()
}

/// The `[[bridge]]` tables, with the keys the `connection` sections set (the rest keep
/// their defaults, which are Mosquitto's; the remote client id, when not given, stays
/// `<hostname>.<name>` of the machine the broker runs on).
fn bridges(tables: &[crate::config::BridgeTable]) -> String {
    #[derive(serde::Serialize)]
    struct Bridges<'a> {
        bridge: &'a [crate::config::BridgeTable],
    }
    toml::to_string(&Bridges { bridge: tables }).unwrap_or_else(|e| {
        // Every value of the table is TOML (strings, integers, booleans, lists, tables).
        format!("# the bridges could not be written as TOML: {e}\n")
    })
}
