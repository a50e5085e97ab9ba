//! `mosquitto.conf`, read as Mosquitto 2.0 reads it: `makelaar serve --mosquitto-conf FILE`
//! and `makelaar config convert FILE`.
//!
//! The file becomes a [`ConfigFile`], exactly what a `makelaar.toml` would say, with
//! Mosquitto's defaults where they differ from Makelaar's (no persistence, no packet size
//! limit, anonymous clients refused unless no listener is configured). The supported subset
//! and what each directive becomes are listed in `docs/migrating-from-mosquitto.md`. A
//! directive Makelaar does not support stops the conversion with one line naming the file,
//! the line, the directive and what to do; harmless ones (logging, `pid_file`, `user`,
//! autosave) are noted and ignored.

mod apply;
mod bridge;
mod emit;
mod lines;
#[cfg(test)]
mod tests;

use std::path::Path;

use crate::config::{ConfigError, ConfigFile, ListenerTable};
use apply::{Draft, ListenerDraft, Security};
use lines::Place;

/// A converted `mosquitto.conf`.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The equivalent settings.
    pub file: ConfigFile,
    /// Directives ignored or approximated, one sentence each, naming their place.
    pub notes: Vec<String>,
}

impl Converted {
    /// The equivalent `makelaar.toml`, with the notes as comments.
    pub fn to_toml(&self, source: &Path) -> String {
        emit::toml(self, source)
    }
}

/// Reads `path` (and its `include_dir`s) as Mosquitto 2.0 does.
pub fn read_mosquitto_conf(path: &Path) -> Result<Converted, ConfigError> {
    let directives = lines::read_all(path)?;
    let mut draft = Draft::new();
    // Mosquitto applies per_listener_settings to the whole file, wherever it is written.
    for d in directives
        .iter()
        .filter(|d| d.name == "per_listener_settings")
    {
        draft.apply(d)?;
    }
    for d in directives
        .iter()
        .filter(|d| d.name != "per_listener_settings")
    {
        draft.apply(d)?;
    }
    build(draft)
}

fn build(mut d: Draft) -> Result<Converted, ConfigError> {
    let local_only = d.listeners.is_empty() && !d.default_declared;
    if local_only {
        // Mosquitto 2.0 without a listener: this machine only, anonymous clients allowed.
        d.default
            .bind
            .get_or_insert_with(|| "127.0.0.1".to_string());
    }
    let mut drafts = Vec::new();
    if d.default_declared || local_only {
        drafts.push(d.default.clone());
    } else if d.default.tls_only.is_some() || d.default.certfile.is_some() {
        d.notes.push(
            "listener options before the first \"listener\" line are ignored: they belong to \
             the listener of \"port\", and there is none"
                .to_string(),
        );
    }
    let s = &d.default.security;
    let default_security = s.allow_anonymous.is_some()
        || s.password_file.is_some()
        || s.acl_file.is_some()
        || s.allow_zero_length_clientid.is_some();
    if d.per_listener_settings && default_security && !(d.default_declared || local_only) {
        d.notes.push(
            "with per_listener_settings true, security options before the first \"listener\" \
             line belong to the listener of \"port\", and there is none: they are ignored"
                .to_string(),
        );
    }
    drafts.extend(d.listeners.iter().cloned());
    let anonymous_default = local_only;

    let mut file = ConfigFile::default();
    let mut acl: Option<(std::path::PathBuf, Place)> = d.security.acl_file.clone();
    let mut zero_len: Option<(bool, Place)> = d.security.allow_zero_length_clientid.clone();
    if !d.per_listener_settings {
        file.allow_anonymous = Some(d.security.allow_anonymous.unwrap_or(anonymous_default));
        file.password_file = d.security.password_file.clone();
    }
    let (mut max_qos, mut max_alias) = (None, None);
    for l in &drafts {
        let mut table = listener_table(l)?;
        if d.per_listener_settings {
            let s: &Security = &l.security;
            table.allow_anonymous = Some(s.allow_anonymous.unwrap_or(anonymous_default));
            table.password_file = s.password_file.clone();
            same(&mut acl, s.acl_file.clone(), "acl_file", "one ACL file for every listener (its user sections can hold every listener's rules)")?;
            same(
                &mut zero_len,
                s.allow_zero_length_clientid.clone(),
                "allow_zero_length_clientid",
                "the same value on every listener",
            )?;
        }
        same(
            &mut max_qos,
            l.max_qos.clone(),
            "max_qos",
            "the same value on every listener",
        )?;
        same(
            &mut max_alias,
            l.max_topic_alias.clone(),
            "max_topic_alias",
            "the same value on every listener",
        )?;
        file.listener.push(table);
    }
    file.acl_file = acl.map(|(p, _)| p);
    if let Some((v, _)) = zero_len {
        d.limits.allow_zero_length_client_id = v;
    }
    if let Some((v, _)) = max_qos {
        d.limits.max_qos = v;
    }
    if let Some((v, _)) = max_alias {
        d.limits.topic_alias_maximum = v;
    }
    // Mosquitto keeps nothing on disk unless persistence is on.
    let persistent = d.persistence.unwrap_or(false);
    file.in_memory = Some(!persistent);
    if persistent {
        file.data_dir = d.persistence_location.clone();
    }
    file.sys_interval = d.sys_interval;
    file.limits = d.limits.clone();
    file.bridge = bridge::finish(&mut d)?;
    // Mosquitto's rule: resuming a persistent session does not publish the will.
    file.will_on_takeover = Some("mosquitto".to_string());
    Ok(Converted {
        file,
        notes: d.notes,
    })
}

/// A setting Makelaar has once for all listeners: every listener that sets it must agree.
fn same<T: PartialEq + Clone>(
    kept: &mut Option<(T, Place)>,
    next: Option<(T, Place)>,
    name: &str,
    fix: &str,
) -> Result<(), ConfigError> {
    match (kept.as_ref(), next) {
        (_, None) => Ok(()),
        (None, Some(n)) => {
            *kept = Some(n);
            Ok(())
        }
        (Some((a, first)), Some((b, place))) if *a != b => Err(ConfigError::Invalid(format!(
            "{place}: \"{name}\" differs from the one at {first}, and Makelaar has one for the \
             whole broker; use {fix}"
        ))),
        (Some(_), Some(_)) => Ok(()),
    }
}

fn listener_table(l: &ListenerDraft) -> Result<ListenerTable, ConfigError> {
    let at = match &l.place {
        Some(p) => format!("{p}: the listener"),
        None => "the listener of \"port\"".to_string(),
    };
    let tls = match (&l.certfile, &l.keyfile) {
        (Some(_), Some(_)) => true,
        (None, None) => {
            if let Some(place) = &l.tls_only {
                return Err(ConfigError::Invalid(format!(
                    "{place}: this TLS option is on a listener without certfile and keyfile \
                     ({at}); add them to that listener, or remove the option"
                )));
            }
            false
        }
        (Some(_), None) => {
            return Err(ConfigError::Invalid(format!(
                "{at} has certfile but no keyfile; add the keyfile of that certificate"
            )))
        }
        (None, Some(_)) => {
            return Err(ConfigError::Invalid(format!(
                "{at} has keyfile but no certfile; add the certfile of that key"
            )))
        }
    };
    let scheme = match (l.websockets, tls) {
        (false, false) => "mqtt",
        (false, true) => "mqtts",
        (true, false) => "ws",
        (true, true) => "wss",
    };
    // Mosquitto's WebSocket listeners serve every path.
    let path = if l.websockets {
        crate::config::ANY_WEBSOCKET_PATH
    } else {
        ""
    };
    let host = match l.bind.as_deref() {
        None => "0.0.0.0".to_string(),
        Some(h) if h.contains(':') => format!("[{h}]"),
        Some(h) => h.to_string(),
    };
    let port = l.port.unwrap_or(if tls { 8883 } else { 1883 });
    Ok(ListenerTable {
        url: format!("{scheme}://{host}:{port}{path}"),
        cert: l.certfile.clone(),
        key: l.keyfile.clone(),
        cafile: l.cafile.clone(),
        crlfile: l.crlfile.clone(),
        require_certificate: l.require_certificate,
        use_identity_as_username: l.use_identity_as_username,
        allow_anonymous: None,
        password_file: None,
        max_connections: l.max_connections,
        proxy_protocol: None,
        trusted_proxies: None,
    })
}
