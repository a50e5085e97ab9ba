//! The directives of `mosquitto.conf`, one by one, into a draft of the settings: which
//! listener each belongs to, which Makelaar setting it becomes, and what is refused.

use std::path::PathBuf;

use makelaar_core::Limits;

use super::lines::{resolve, Directive, Place};
use crate::config::ConfigError;

/// Largest Remaining Length of an MQTT packet: Mosquitto's "no limit" for `max_packet_size`.
pub(super) const MQTT_MAX_PACKET: u32 = *Limits::MAX_PACKET_SIZE_RANGE.end();
/// The smallest `max_packet_size` Makelaar takes; Mosquitto's smaller values are raised to it.
const MIN_PACKET: u32 = *Limits::MAX_PACKET_SIZE_RANGE.start();

/// Authentication settings, global or of one listener (`per_listener_settings`).
#[derive(Debug, Clone, Default)]
pub(super) struct Security {
    pub allow_anonymous: Option<bool>,
    pub password_file: Option<PathBuf>,
    pub acl_file: Option<(PathBuf, Place)>,
    pub allow_zero_length_clientid: Option<(bool, Place)>,
}

/// One listener as the file describes it.
#[derive(Debug, Clone, Default)]
pub(super) struct ListenerDraft {
    /// The `listener` line (`None` for the default listener of `port` / `bind_address`).
    pub place: Option<Place>,
    pub port: Option<u16>,
    pub bind: Option<String>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub cafile: Option<PathBuf>,
    pub crlfile: Option<PathBuf>,
    pub require_certificate: Option<bool>,
    pub use_identity_as_username: Option<bool>,
    pub max_connections: Option<usize>,
    pub max_qos: Option<(u8, Place)>,
    pub max_topic_alias: Option<(u16, Place)>,
    /// `protocol websockets`.
    pub websockets: bool,
    pub security: Security,
    /// A line that is only valid on a TLS listener, for the error when there is no certfile.
    pub tls_only: Option<Place>,
}

/// Everything read from the file.
#[derive(Debug, Default)]
pub(super) struct Draft {
    pub per_listener_settings: bool,
    /// The listener of `port` / `bind_address`, and listener options before any `listener`.
    pub default: ListenerDraft,
    /// Whether `port` or `bind_address` declared the default listener.
    pub default_declared: bool,
    pub listeners: Vec<ListenerDraft>,
    /// Authentication settings when `per_listener_settings` is false.
    pub security: Security,
    pub persistence: Option<bool>,
    pub persistence_location: Option<PathBuf>,
    pub sys_interval: Option<u64>,
    pub limits: Limits,
    /// Directives ignored or approximated, for the log and for `config convert`.
    pub notes: Vec<String>,
    /// The `connection` sections, in order.
    pub bridges: Vec<super::bridge::BridgeDraft>,
    /// The `max_queued_messages` line, which also bounds each bridge's queue.
    pub queued_messages: Option<Place>,
    /// `max_queued_bytes` and its line.
    pub queued_bytes: Option<(u64, Place)>,
}

/// Directives that change nothing Makelaar does: logged and ignored.
const HARMLESS: &[&str] = &[
    "autosave_interval",
    "autosave_on_changes",
    "persistence_file",
    "log_dest",
    "log_type",
    "log_facility",
    "log_timestamp",
    "log_timestamp_format",
    "connection_messages",
    "pid_file",
    "user",
    "set_tcp_nodelay",
    "allow_duplicate_messages",
    "check_retain_source",
    "websockets_log_level",
    "include_dir",
];

impl Draft {
    /// A draft with Mosquitto's defaults where they differ from Makelaar's.
    pub fn new() -> Draft {
        let mut limits = Limits::default();
        // Mosquitto accepts packets up to the protocol's limit unless told otherwise.
        limits.max_packet_size = MQTT_MAX_PACKET;
        // Mosquitto advertises max_inflight_messages (20) as its Receive Maximum.
        limits.receive_maximum = limits.max_inflight_messages;
        Draft {
            limits,
            ..Draft::default()
        }
    }

    fn current(&mut self) -> &mut ListenerDraft {
        match self.listeners.last_mut() {
            Some(l) => l,
            None => &mut self.default,
        }
    }

    fn security(&mut self) -> &mut Security {
        if self.per_listener_settings {
            &mut self.current().security
        } else {
            &mut self.security
        }
    }

    /// Applies one directive.
    pub fn apply(&mut self, d: &Directive) -> Result<(), ConfigError> {
        let path = || resolve(&d.place.file, std::path::Path::new(&d.value));
        match d.name.as_str() {
            "per_listener_settings" => self.per_listener_settings = boolean(d)?,
            "listener" => self.listener(d)?,
            "port" => {
                self.default.port = Some(number(d, 0, u64::from(u16::MAX))? as u16);
                self.default_declared = true;
                self.note(
                    d,
                    "is deprecated in Mosquitto; read as the listener it describes",
                );
            }
            "bind_address" => {
                self.default.bind = Some(non_empty(d)?.to_string());
                self.default_declared = true;
            }
            "protocol" => match d.value.as_str() {
                "mqtt" => self.current().websockets = false,
                "websockets" => self.current().websockets = true,
                _ => return Err(d.error("must be mqtt or websockets")),
            },
            "certfile" => self.current().certfile = Some(path()),
            "keyfile" => self.current().keyfile = Some(path()),
            "cafile" => self.tls_option(d)?.cafile = Some(path()),
            "crlfile" => self.tls_option(d)?.crlfile = Some(path()),
            "require_certificate" => {
                let v = boolean(d)?;
                self.tls_option(d)?.require_certificate = Some(v);
            }
            "use_identity_as_username" => {
                let v = boolean(d)?;
                self.tls_option(d)?.use_identity_as_username = Some(v);
            }
            "max_connections" => {
                let v = signed(d)?;
                self.current().max_connections = usize::try_from(v).ok();
            }
            "max_qos" => {
                let qos = Limits::MAX_QOS_RANGE;
                let v = number(d, (*qos.start()).into(), (*qos.end()).into())? as u8;
                self.current().max_qos = Some((v, d.place.clone()));
            }
            "max_topic_alias" => {
                let v = number(d, 0, u64::from(u16::MAX))? as u16;
                self.current().max_topic_alias = Some((v, d.place.clone()));
            }
            "allow_anonymous" => {
                let v = boolean(d)?;
                self.security().allow_anonymous = Some(v);
            }
            "password_file" => {
                non_empty(d)?;
                let p = path();
                self.security().password_file = Some(p);
            }
            "acl_file" => {
                non_empty(d)?;
                let p = (path(), d.place.clone());
                self.security().acl_file = Some(p);
            }
            "allow_zero_length_clientid" => {
                let v = (boolean(d)?, d.place.clone());
                self.security().allow_zero_length_clientid = Some(v);
            }
            "persistence" => self.persistence = Some(boolean(d)?),
            "persistence_location" => self.persistence_location = Some(path()),
            "max_queued_messages" => {
                let v = number(d, 0, i64::MAX as u64)?;
                if v == 0 {
                    return Err(d.error(
                        "0 (no maximum) is not supported: every queue is bounded in Makelaar; \
                         give the most messages a session may keep",
                    ));
                }
                self.limits.max_queued_messages = v as usize;
                self.queued_messages = Some(d.place.clone());
            }
            "max_queued_bytes" => {
                let v = number(d, 0, i64::MAX as u64)?;
                self.limits.max_queued_bytes = v as usize;
                self.queued_bytes = Some((v, d.place.clone()));
            }
            "queue_qos0_messages" => self.limits.queue_qos0_messages = boolean(d)?,
            "max_inflight_messages" => {
                // 0 means no maximum in Mosquitto: the most MQTT allows.
                let v = number(d, 0, u64::from(u16::MAX))? as u16;
                let v = if v == 0 { u16::MAX } else { v };
                self.limits.max_inflight_messages = v;
                self.limits.receive_maximum = v;
            }
            "max_packet_size" => {
                let v = number(d, 0, u64::from(MQTT_MAX_PACKET))? as u32;
                self.limits.max_packet_size = if v == 0 {
                    MQTT_MAX_PACKET
                } else {
                    v.max(MIN_PACKET)
                };
            }
            "message_size_limit" => {
                let v = number(d, 0, u64::from(MQTT_MAX_PACKET))? as u32;
                if v > 0 {
                    // The largest header: fixed header, topic of up to 65,535 bytes, packet id
                    // and properties (kept small by Mosquitto's clients).
                    let packet = v.saturating_add(65_535 + 1_024).min(MQTT_MAX_PACKET);
                    self.limits.max_packet_size = self.limits.max_packet_size.min(packet);
                    self.note(
                        d,
                        format_args!(
                            "is read as max_packet_size {packet}: a larger PUBLISH closes the \
                         connection instead of being dropped"
                        ),
                    );
                }
            }
            "max_keepalive" => {
                self.limits.max_keep_alive = number(d, 0, u64::from(u16::MAX))? as u16
            }
            "retain_available" => self.limits.retain_available = boolean(d)?,
            "persistent_client_expiration" => {
                self.limits.persistent_session_expiry = duration(d)?;
            }
            "sys_interval" => self.sys_interval = Some(number(d, 0, 86_400 * 365)?),
            name if super::bridge::DIRECTIVES.contains(&name) => self.bridge(d)?,
            name if HARMLESS.contains(&name) => {
                if name != "include_dir" {
                    self.note(d, "is ignored: it changes nothing Makelaar does");
                }
            }
            name => return Err(unsupported(d, name)),
        }
        Ok(())
    }

    fn listener(&mut self, d: &Directive) -> Result<(), ConfigError> {
        let words = d.words();
        let (port, bind) = match words.as_slice() {
            [port] => (*port, None),
            [port, bind] => (*port, Some(bind.to_string())),
            _ => return Err(d.error("must be followed by a port and, optionally, an address")),
        };
        let port: u16 = port.parse().map_err(|_| {
            d.error(format_args!(
                "has the invalid port \"{port}\"; use 1 to 65535"
            ))
        })?;
        if port == 0 {
            return Err(d.error(
                "0: Unix socket listeners are not supported; listen on a TCP port instead",
            ));
        }
        self.listeners.push(ListenerDraft {
            place: Some(d.place.clone()),
            port: Some(port),
            bind,
            ..ListenerDraft::default()
        });
        Ok(())
    }

    fn tls_option(&mut self, d: &Directive) -> Result<&mut ListenerDraft, ConfigError> {
        let l = self.current();
        l.tls_only.get_or_insert_with(|| d.place.clone());
        Ok(l)
    }

    fn note(&mut self, d: &Directive, what: impl std::fmt::Display) {
        self.notes
            .push(format!("{}: \"{}\" {what}", d.place, d.name));
    }
}

fn unsupported(d: &Directive, name: &str) -> ConfigError {
    let why = match name {
        "auth_plugin" | "plugin" | "auth_opt" | "plugin_opt" | "global_plugin" => {
            "loads a plugin, and plugins are not supported; use password_file and acl_file"
        }
        "psk_file" | "psk_hint" => "is TLS-PSK, which is not supported; use certificates",
        "capath" => "is not supported; put the CA certificates into one PEM file for cafile",
        "tls_version"
        | "ciphers"
        | "ciphers_tls1.3"
        | "tls_engine"
        | "tls_keyform"
        | "tls_engine_kpass_sha1"
        | "dhparamfile"
        | "ecdh_curve" => {
            "is not supported: Makelaar offers TLS 1.2 and 1.3 with rustls's safe cipher suites; \
             remove the line"
        }
        "use_subject_as_username" => {
            "is not supported; use use_identity_as_username (the certificate's Common Name)"
        }
        "memory_limit"
        | "max_inflight_bytes"
        | "upgrade_outgoing_qos"
        | "mount_point"
        | "clientid_prefixes"
        | "auto_id_prefix"
        | "socket_domain"
        | "http_dir"
        | "use_username_as_clientid"
        | "websockets_headers_size"
        | "accept_protocol_versions"
        | "bind_interface"
        | "retry_interval"
        | "store_clean_interval" => {
            "is not supported by Makelaar; remove the line (docs/migrating-from-mosquitto.md \
             lists what is)"
        }
        n if n.starts_with("auth_opt_") || n.starts_with("plugin_opt_") => {
            "configures a plugin, and plugins are not supported; use password_file and acl_file"
        }
        _ => {
            "is not a directive Makelaar knows; check its spelling, or remove it \
             (docs/migrating-from-mosquitto.md lists what is supported)"
        }
    };
    d.error(why)
}

fn boolean(d: &Directive) -> Result<bool, ConfigError> {
    match d.value.as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(d.error(format_args!("must be true or false, not \"{other}\""))),
    }
}

fn non_empty(d: &Directive) -> Result<&str, ConfigError> {
    if d.value.is_empty() {
        return Err(d.error("needs a value; add it or remove the line"));
    }
    Ok(&d.value)
}

fn number(d: &Directive, min: u64, max: u64) -> Result<u64, ConfigError> {
    match d.value.parse::<u64>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(d.error(format_args!(
            "must be a whole number from {min} to {max}, not \"{}\"",
            d.value
        ))),
    }
}

fn signed(d: &Directive) -> Result<i64, ConfigError> {
    d.value
        .parse::<i64>()
        .map_err(|_| d.error(format_args!("must be a whole number, not \"{}\"", d.value)))
}

/// `persistent_client_expiration`: a number with h, d, w, m (months) or y, as Mosquitto
/// reads it; seconds, capped at what the core keeps (never-expire stays never).
fn duration(d: &Directive) -> Result<u32, ConfigError> {
    let bad = || {
        d.error(format_args!(
            "must be a number followed by h, d, w, m or y (e.g. 2w), not \"{}\"",
            d.value
        ))
    };
    let v = d.value.as_str();
    let unit = v.chars().last().ok_or_else(bad)?;
    let n: u64 = v
        .get(..v.len() - unit.len_utf8())
        .and_then(|n| n.parse().ok())
        .ok_or_else(bad)?;
    let secs = match unit {
        'h' => 3_600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        'm' => 30 * 86_400,
        'y' => 365 * 86_400,
        _ => return Err(bad()),
    };
    Ok(u32::try_from(n.saturating_mul(secs))
        .unwrap_or(u32::MAX - 1)
        .min(u32::MAX - 1))
}
