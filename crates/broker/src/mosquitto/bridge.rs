//! `connection` sections: Mosquitto's bridge directives, read into the `[[bridge]]` table
//! ([`BridgeTable`]) a `makelaar.toml` would have, with Mosquitto's defaults. One value's
//! mistake is reported at its line; a whole bridge's (no address, no topic, the same local
//! client id twice) at its `connection` line.

use std::path::Path;

use super::apply::Draft;
use super::lines::{resolve, Directive, Place};
use crate::config::{
    check_bridge_name, parse_address, restart_from, topic_from, BridgeProtocolName, BridgeTable,
    BridgeTlsTable, BridgeTopicTable, ConfigError, DirectionName, ReloadTypeName, StartTypeName,
    TlsVersionName, MIN_KEEPALIVE_SECS, MQTT_PORT,
};

/// Every directive that belongs to a `connection` section.
pub(super) const DIRECTIVES: &[&str] = &[
    "connection",
    "address",
    "addresses",
    "round_robin",
    "topic",
    "bridge_attempt_unsubscribe",
    "cleansession",
    "local_cleansession",
    "bridge_protocol_version",
    "try_private",
    "remote_clientid",
    "clientid",
    "local_clientid",
    "remote_username",
    "username",
    "remote_password",
    "password",
    "local_username",
    "local_password",
    "keepalive_interval",
    "restart_timeout",
    "start_type",
    "threshold",
    "idle_timeout",
    "notifications",
    "notifications_local_only",
    "notification_topic",
    "bridge_outgoing_retain",
    "bridge_max_packet_size",
    "bridge_max_topic_alias",
    "bridge_receive_maximum",
    "bridge_session_expiry_interval",
    "bridge_bind_address",
    "bridge_tcp_keepalive",
    "bridge_tcp_user_timeout",
    "bridge_reload_type",
    "bridge_cafile",
    "bridge_capath",
    "bridge_tls_use_os_certs",
    "bridge_certfile",
    "bridge_keyfile",
    "bridge_insecure",
    "bridge_tls_version",
    "bridge_alpn",
    "bridge_ciphers",
    "bridge_ciphers_tls1.3",
    "bridge_require_ocsp",
    "bridge_identity",
    "bridge_psk",
];

/// One `connection` section as read so far.
#[derive(Debug, Clone)]
pub(super) struct BridgeDraft {
    /// The `connection` line.
    pub place: Place,
    pub table: BridgeTable,
    /// A trust source was given (`bridge_cafile`, `bridge_capath`, `bridge_tls_use_os_certs
    /// true`): Mosquitto then connects with TLS.
    pub tls_on: bool,
    /// The first line that only makes sense with TLS, for the error when it is not on.
    pub tls_only: Option<(Place, String)>,
}

impl Draft {
    /// Applies one bridge directive to the `connection` section it is in.
    pub(super) fn bridge(&mut self, d: &Directive) -> Result<(), ConfigError> {
        if d.name == "connection" {
            return self.connection(d);
        }
        let Some(b) = self.bridges.last_mut() else {
            return Err(d.error(
                "belongs to a bridge, but no \"connection\" line comes before it; start the \
                 bridge with \"connection <name>\" above it",
            ));
        };
        let path = || resolve(&d.place.file, Path::new(&d.value));
        let t = &mut b.table;
        let mut note = None;
        match d.name.as_str() {
            "address" | "addresses" => {
                let words = d.words();
                if words.is_empty() {
                    return Err(d.error("needs host[:port]; give the remote broker's address"));
                }
                for w in words {
                    let a = parse_address(w, MQTT_PORT).map_err(|e| d.error(e))?;
                    let host = if a.host.contains(':') {
                        format!("[{}]", a.host)
                    } else {
                        a.host
                    };
                    t.addresses.push(format!("{host}:{}", a.port));
                }
            }
            "round_robin" => t.round_robin = Some(boolean(d)?),
            "topic" => {
                let topic = topic_line(d)?;
                topic_from(&topic).map_err(|e| d.error(e))?;
                if t.topic.contains(&topic) {
                    note = Some(format!(
                        "{}: \"topic\" repeats an earlier topic line of its bridge and is \
                         skipped, as by Mosquitto",
                        d.place
                    ));
                } else {
                    t.topic.push(topic);
                }
            }
            "bridge_attempt_unsubscribe" => t.attempt_unsubscribe = Some(boolean(d)?),
            "cleansession" => t.clean_session = Some(boolean(d)?),
            "local_cleansession" => t.local_clean_session = Some(boolean(d)?),
            "bridge_protocol_version" => {
                t.protocol_version = Some(match d.value.as_str() {
                    "mqttv31" => BridgeProtocolName::V31,
                    "mqttv311" => BridgeProtocolName::V311,
                    "mqttv50" => BridgeProtocolName::V5,
                    _ => return Err(d.error("must be mqttv31, mqttv311 or mqttv50")),
                })
            }
            "try_private" => t.try_private = Some(boolean(d)?),
            "remote_clientid" | "clientid" => t.remote_client_id = Some(word(d)?),
            "local_clientid" => t.local_client_id = Some(word(d)?),
            "remote_username" | "username" => t.remote_username = Some(text(d)?),
            "remote_password" | "password" => t.remote_password = Some(text(d)?),
            "local_username" => t.local_username = Some(text(d)?),
            "local_password" => t.local_password = Some(text(d)?),
            "keepalive_interval" => {
                let v = number(d, 0, u64::from(u16::MAX))?;
                let min = MIN_KEEPALIVE_SECS;
                if v < min {
                    note = Some(format!(
                        "{}: \"keepalive_interval\" {v} is read as {min} seconds, the \
                         shortest there is (as by Mosquitto)",
                        d.place
                    ));
                }
                t.keepalive = Some(v.max(min));
            }
            "restart_timeout" => {
                let words = d.words();
                let values = words
                    .iter()
                    .map(|w| w.parse::<u64>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| d.error("must be seconds: one number, or base and cap"))?;
                if values.len() > 3 || values.is_empty() {
                    return Err(d.error("must be seconds: one number, or base and cap"));
                }
                restart_from(&values).map_err(|e| d.error(format_args!("has a value {e}")))?;
                t.restart_timeout = Some(values);
            }
            "start_type" => {
                t.start_type = Some(match d.value.as_str() {
                    "automatic" => StartTypeName::Automatic,
                    "lazy" => StartTypeName::Lazy,
                    "once" => StartTypeName::Once,
                    "manual" => {
                        return Err(d.error(
                            "manual is not supported (Mosquitto does not start such bridges \
                             either); use automatic, lazy or once",
                        ))
                    }
                    _ => return Err(d.error("must be automatic, lazy or once")),
                })
            }
            "threshold" => t.threshold = Some(number(d, 1, u64::from(u32::MAX))? as u32),
            "idle_timeout" => t.idle_timeout = Some(number(d, 1, u64::from(u32::MAX))?),
            "notifications" => t.notifications = Some(boolean(d)?),
            "notifications_local_only" => t.notifications_local_only = Some(boolean(d)?),
            "notification_topic" => {
                let v = text(d)?;
                if let Err(e) = makelaar_proto::topic::validate_topic_name(&v) {
                    return Err(d.error(format_args!(
                        "\"{v}\" is not a topic name ({e}); give one without wildcards"
                    )));
                }
                t.notification_topic = Some(v);
            }
            "bridge_outgoing_retain" => t.outgoing_retain = Some(boolean(d)?),
            "bridge_max_packet_size" => {
                t.max_packet_size =
                    Some(number(d, 0, u64::from(super::apply::MQTT_MAX_PACKET))? as u32)
            }
            "bridge_max_topic_alias" => {
                t.max_topic_alias = Some(number(d, 0, u64::from(u16::MAX))? as u16)
            }
            "bridge_receive_maximum" => {
                t.receive_maximum = Some(number(d, 1, u64::from(u16::MAX))? as u16)
            }
            "bridge_session_expiry_interval" => {
                t.session_expiry_interval = Some(number(d, 0, u64::from(u32::MAX))? as u32)
            }
            "bridge_bind_address" => {
                let v = text(d)?;
                if v.parse::<std::net::IpAddr>().is_err() {
                    return Err(d.error(format_args!(
                        "\"{v}\" is not an IP address; give one of this machine's addresses"
                    )));
                }
                t.bind_address = Some(v);
            }
            "bridge_tcp_keepalive" => {
                let values: Vec<u64> = d
                    .words()
                    .iter()
                    .filter_map(|w| w.parse().ok())
                    .filter(|v| *v > 0)
                    .collect();
                if values.len() != 3 || d.words().len() != 3 {
                    return Err(d.error(
                        "must be three numbers above 0: idle seconds, interval seconds and \
                         probe count",
                    ));
                }
                t.tcp_keepalive = Some(values);
            }
            "bridge_tcp_user_timeout" => {
                t.tcp_user_timeout_ms = Some(number(d, 0, u64::from(u32::MAX))?)
            }
            "bridge_reload_type" => {
                t.reload_type = Some(match d.value.as_str() {
                    "lazy" => ReloadTypeName::Lazy,
                    "immediate" => ReloadTypeName::Immediate,
                    _ => return Err(d.error("must be lazy or immediate")),
                })
            }
            "bridge_cafile" => {
                tls(t).cafile = Some(path());
                b.tls_on = true;
            }
            "bridge_capath" => {
                tls(t).capath = Some(path());
                b.tls_on = true;
            }
            "bridge_tls_use_os_certs" => {
                let v = boolean(d)?;
                tls(t).use_os_certs = Some(v);
                b.tls_on |= v;
            }
            "bridge_certfile" => {
                tls(t).certfile = Some(path());
                tls_only(b, d);
            }
            "bridge_keyfile" => {
                tls(t).keyfile = Some(path());
                tls_only(b, d);
            }
            "bridge_insecure" => {
                let v = boolean(d)?;
                tls(t).insecure = Some(v);
                if v {
                    tls_only(b, d);
                }
            }
            "bridge_tls_version" => {
                tls(t).min_version = Some(match d.value.as_str() {
                    "tlsv1.2" => TlsVersionName::Tls12,
                    "tlsv1.3" => TlsVersionName::Tls13,
                    "tlsv1" | "tlsv1.1" => {
                        return Err(d.error(
                            "asks for a TLS version older than 1.2, which Makelaar does not \
                             speak (rustls offers TLS 1.2 and 1.3); use tlsv1.2",
                        ))
                    }
                    _ => return Err(d.error("must be tlsv1.2 or tlsv1.3")),
                });
                tls_only(b, d);
            }
            "bridge_alpn" => {
                tls(t).alpn = Some(word(d)?);
                tls_only(b, d);
            }
            "bridge_ciphers" | "bridge_ciphers_tls1.3" => {
                return Err(d.error(
                    "is not supported: Makelaar offers TLS 1.2 and 1.3 with rustls's safe \
                     cipher suites; remove the line",
                ))
            }
            "bridge_identity" | "bridge_psk" => {
                return Err(d.error(
                    "is TLS-PSK, which is not supported (rustls has no TLS-PSK); give the \
                     bridge a CA (bridge_cafile) and, if the remote requires one, a client \
                     certificate (bridge_certfile, bridge_keyfile) instead",
                ))
            }
            "bridge_require_ocsp" => {
                if boolean(d)? {
                    return Err(d.error(
                        "true is not supported: Makelaar does not check OCSP responses yet; \
                         remove the line (or set it false)",
                    ));
                }
            }
            _ => return Err(d.error("is a bridge directive Makelaar does not know")),
        }
        self.notes.extend(note);
        Ok(())
    }

    fn connection(&mut self, d: &Directive) -> Result<(), ConfigError> {
        let name = match d.words().as_slice() {
            [name] => name.to_string(),
            _ => return Err(d.error("must be followed by the bridge's name, one word")),
        };
        check_bridge_name(&name).map_err(|e| d.error(e))?;
        if let Some(b) = self.bridges.iter().find(|b| b.table.name == name) {
            return Err(d.error(format_args!(
                "names \"{name}\" again (the first is at {}); give each bridge a name of its own",
                b.place
            )));
        }
        self.bridges.push(BridgeDraft {
            place: d.place.clone(),
            table: BridgeTable {
                name,
                ..BridgeTable::default()
            },
            tls_on: false,
            tls_only: None,
        });
        Ok(())
    }
}

fn tls(t: &mut BridgeTable) -> &mut BridgeTlsTable {
    t.tls.get_or_insert_with(BridgeTlsTable::default)
}

fn tls_only(b: &mut BridgeDraft, d: &Directive) {
    b.tls_only
        .get_or_insert_with(|| (d.place.clone(), d.name.clone()));
}

/// The bridges, checked whole, into `[[bridge]]` tables: TLS, the queue's bounds from
/// `max_queued_messages` / `max_queued_bytes`, everything `[[bridge]]` checks, and local
/// client ids unique.
pub(super) fn finish(d: &mut Draft) -> Result<Vec<BridgeTable>, ConfigError> {
    let host = crate::config::hostname();
    let mut out: Vec<(BridgeTable, Place, String)> = Vec::new();
    for b in std::mem::take(&mut d.bridges) {
        let mut t = b.table;
        if !b.tls_on {
            if let Some((place, name)) = &b.tls_only {
                return Err(ConfigError::Invalid(format!(
                    "{place}: \"{name}\" needs TLS, which a bridge has only with \
                     bridge_cafile, bridge_capath or bridge_tls_use_os_certs true; add one of \
                     them to bridge \"{}\", or remove the line",
                    t.name
                )));
            }
            t.tls = None;
        }
        if let Some(place) = &d.queued_messages {
            let q = t.queue.get_or_insert_with(Default::default);
            q.max_messages = Some(d.limits.max_queued_messages as u64);
            d.notes.push(format!(
                "{place}: \"max_queued_messages\" also bounds the queue of bridge \"{}\"; when \
                 it is full, new messages are refused and counted, not dropped silently",
                t.name
            ));
        }
        if let Some((bytes, _)) = &d.queued_bytes {
            if *bytes > 0 {
                let q = t.queue.get_or_insert_with(Default::default);
                q.max_bytes = Some(*bytes);
            }
        }
        let at =
            |e: String| ConfigError::Invalid(format!("{}: bridge \"{}\" {e}", b.place, t.name));
        let bridge = t.to_bridge(&host).map_err(at)?;
        if let Some((_, first, other)) = out.iter().find(|(_, _, id)| *id == bridge.local_client_id)
        {
            return Err(ConfigError::Invalid(format!(
                "{}: bridge \"{}\" has the local client id \"{}\" of the bridge at {first}; \
                 give one of them another local_clientid",
                b.place, t.name, other
            )));
        }
        out.push((t, b.place, bridge.local_client_id));
    }
    Ok(out.into_iter().map(|(t, ..)| t).collect())
}

/// `topic pattern [direction [qos [local-prefix [remote-prefix]]]]`; a word may be quoted
/// (`"a b/#"`), and `""` is empty.
fn topic_line(d: &Directive) -> Result<BridgeTopicTable, ConfigError> {
    let words = quoted_words(&d.value).map_err(|e| d.error(e))?;
    let mut w = words.into_iter();
    let Some(pattern) = w.next() else {
        return Err(d.error("needs a topic pattern, e.g. topic sensors/# out 1"));
    };
    let direction = match w.next().as_deref() {
        None => None,
        Some("out") => Some(DirectionName::Out),
        Some("in") => Some(DirectionName::In),
        Some("both") => Some(DirectionName::Both),
        Some(other) => {
            return Err(d.error(format_args!(
                "has the direction \"{other}\"; use out, in or both"
            )))
        }
    };
    let qos = match w.next() {
        None => None,
        Some(q) => match q.as_str() {
            "0" => Some(0),
            "1" => Some(1),
            "2" => Some(2),
            _ => return Err(d.error(format_args!("has the QoS \"{q}\"; use 0, 1 or 2"))),
        },
    };
    let local_prefix = w.next();
    let remote_prefix = w.next();
    if let Some(extra) = w.next() {
        return Err(d.error(format_args!(
            "has \"{extra}\" after the remote prefix; quote a pattern or prefix that holds a \
             space"
        )));
    }
    if local_prefix.is_some() && remote_prefix.is_none() {
        return Err(
            d.error("has a local prefix without a remote prefix; give both (\"\" for none)")
        );
    }
    Ok(BridgeTopicTable {
        pattern,
        direction,
        qos,
        local_prefix: local_prefix.filter(|p| !p.is_empty()),
        remote_prefix: remote_prefix.filter(|p| !p.is_empty()),
    })
}

/// Words separated by spaces or tabs; a word in double quotes may hold spaces, and `""` is
/// an empty word.
pub(super) fn quoted_words(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
        let Some(c) = chars.next() else {
            return Ok(out);
        };
        let mut word = String::new();
        if c == '"' {
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some(c) => word.push(c),
                    None => {
                        return Err("has a quote without its closing quote; close it".to_string())
                    }
                }
            }
            if chars.peek().is_some_and(|c| *c != ' ' && *c != '\t') {
                return Err(
                    "has text right after a closing quote; put a space after it".to_string()
                );
            }
        } else {
            word.push(c);
            while let Some(c) = chars.next_if(|c| *c != ' ' && *c != '\t') {
                word.push(c);
            }
        }
        out.push(word);
    }
}

fn boolean(d: &Directive) -> Result<bool, ConfigError> {
    match d.value.as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(d.error(format_args!("must be true or false, not \"{other}\""))),
    }
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

/// The rest of the line (a username or password may hold spaces).
fn text(d: &Directive) -> Result<String, ConfigError> {
    if d.value.is_empty() {
        return Err(d.error("needs a value; add it or remove the line"));
    }
    Ok(d.value.clone())
}

/// One word.
fn word(d: &Directive) -> Result<String, ConfigError> {
    match d.words().as_slice() {
        [w] => Ok(w.to_string()),
        [] => Err(d.error("needs a value; add it or remove the line")),
        _ => Err(d.error("must be one word, without spaces")),
    }
}
