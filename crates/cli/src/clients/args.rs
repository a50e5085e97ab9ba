//! The flags `makelaar pub`, `sub` and `rr` share with Mosquitto's tools: where to connect, who
//! to be, TLS, the will and MQTT 5 properties (-D), and how they become [`ConnectOptions`].

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use makelaar_client::{ConnectOptions, Properties, ProtocolVersion, QoS, TlsOptions, Will};

use super::Failure;

/// Parses -q and --will-qos.
pub fn parse_qos(s: &str) -> Result<QoS, String> {
    match s.trim() {
        "0" => Ok(QoS::AtMostOnce),
        "1" => Ok(QoS::AtLeastOnce),
        "2" => Ok(QoS::ExactlyOnce),
        _ => Err(format!("invalid QoS '{s}': use 0, 1 or 2")),
    }
}

/// Parses -V: 31, 311, 5, mqttv31, mqttv311, mqttv5 (and 3.1, 3.1.1, 5.0).
pub fn parse_version(s: &str) -> Result<ProtocolVersion, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "31" | "mqttv31" | "3.1" => Ok(ProtocolVersion::V31),
        "311" | "mqttv311" | "3.1.1" => Ok(ProtocolVersion::V311),
        "5" | "mqttv5" | "5.0" => Ok(ProtocolVersion::V5),
        _ => Err(format!(
            "unknown protocol version '{s}': use 31, 311 or 5 (or mqttv31, mqttv311, mqttv5)"
        )),
    }
}

/// Parses -x: seconds, or -1 / ∞ / 4294967295 for a session that never expires.
pub fn parse_expiry(s: &str) -> Result<u32, String> {
    match s.trim() {
        "-1" | "∞" | "inf" | "infinity" => Ok(u32::MAX),
        v => v.parse::<u32>().map_err(|_| {
            format!("invalid session expiry '{s}': use 0 to 4294967295 seconds, or -1 for never")
        }),
    }
}

/// Parses --repeat-delay: seconds, fractions allowed.
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0 && *v < 1e9)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("invalid number of seconds '{s}'"))
}

/// The payload given by -m MESSAGE, -f FILE or -s (standard input to its end), or `None` when
/// none of them was: the callers (pub and rr) have checked that at most one source was given.
pub fn read_payload(
    message: Option<&str>,
    file: Option<&Path>,
    stdin: bool,
) -> Result<Option<Bytes>, Failure> {
    if let Some(m) = message {
        return Ok(Some(Bytes::from(m.to_owned())));
    }
    if let Some(f) = file {
        let data = std::fs::read(f).map_err(|e| {
            Failure::usage(format!("cannot read the message file {}: {e}", f.display()))
        })?;
        return Ok(Some(Bytes::from(data)));
    }
    if stdin {
        let mut data = Vec::new();
        std::io::stdin()
            .read_to_end(&mut data)
            .map_err(|e| Failure::runtime(format!("cannot read standard input: {e}"), 1))?;
        return Ok(Some(Bytes::from(data)));
    }
    Ok(None)
}

/// Connection flags, as in mosquitto_pub/sub/rr.
#[derive(Debug, Clone, Default, Args)]
pub struct ConnArgs {
    /// Broker host to connect to. [default: localhost]
    #[arg(short = 'h', long = "host", value_name = "HOST")]
    pub host: Option<String>,

    /// Broker port. [default: 1883, or 8883 with TLS]
    #[arg(short = 'p', long = "port", value_name = "PORT")]
    pub port: Option<u16>,

    /// User, password, host, port and topic in one: mqtt(s)://[USER[:PASS]@]HOST[:PORT]/TOPIC
    #[arg(short = 'L', long = "url", value_name = "URL")]
    pub url: Option<String>,

    /// User name.
    #[arg(short = 'u', long = "username", value_name = "USER")]
    pub username: Option<String>,

    /// Password.
    #[arg(short = 'P', long = "pw", value_name = "PASSWORD")]
    pub password: Option<String>,

    /// Client id. [default: generated for 3.1/3.1.1, assigned by the broker for 5]
    #[arg(short = 'i', long = "id", value_name = "ID")]
    pub id: Option<String>,

    /// Client id made of this prefix and the process id.
    #[arg(
        short = 'I',
        long = "id-prefix",
        value_name = "PREFIX",
        conflicts_with = "id"
    )]
    pub id_prefix: Option<String>,

    /// Keep-alive in seconds (0 turns it off).
    #[arg(
        short = 'k',
        long = "keepalive",
        value_name = "SECS",
        default_value_t = 60
    )]
    pub keepalive: u16,

    /// Disable clean session: a persistent session that survives disconnecting (needs -i).
    #[arg(short = 'c', long = "disable-clean-session")]
    pub no_clean: bool,

    /// Session expiry interval in seconds (MQTT 5); -1 never expires. [default: -1 with -c, else 0]
    #[arg(short = 'x', long = "session-expiry", value_name = "SECS", allow_hyphen_values = true, value_parser = parse_expiry)]
    pub session_expiry: Option<u32>,

    /// MQTT version: 31, 311 or 5 (also mqttv31, mqttv311, mqttv5).
    #[arg(short = 'V', long = "protocol-version", value_name = "VERSION", value_parser = parse_version)]
    pub version: Option<ProtocolVersion>,

    /// MQTT 5 property: -D COMMAND NAME VALUE (user-property: -D COMMAND user-property KEY VALUE).
    /// Commands: connect, publish, subscribe, unsubscribe, disconnect, will.
    #[arg(id = "property", short = 'D', long = "property", num_args = 3..=4, value_names = ["COMMAND", "NAME", "VALUE"], action = clap::ArgAction::Append)]
    pub property_values: Vec<String>,

    /// The -D occurrences, one group of values each (filled from the parsed matches).
    #[arg(skip)]
    pub property: Vec<Vec<String>>,

    /// Print the packets sent and received (on stderr).
    #[arg(short = 'd', long = "debug")]
    pub debug: bool,

    /// Do not print errors that happen while running (bad flags are still reported).
    #[arg(long)]
    pub quiet: bool,

    /// Accepted for compatibility: TCP_NODELAY is always on.
    #[arg(long, hide = true)]
    pub nodelay: bool,

    /// PEM file of CA certificates to verify the broker with (turns TLS on).
    #[arg(long, value_name = "FILE")]
    pub cafile: Option<PathBuf>,

    /// Directory of PEM CA certificates (turns TLS on).
    #[arg(long, value_name = "DIR")]
    pub capath: Option<PathBuf>,

    /// PEM client certificate, for brokers that require one.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,

    /// PEM private key of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,

    /// Do not check that the broker's certificate matches its host name (testing only).
    #[arg(long)]
    pub insecure: bool,

    /// Trust the system's CA certificates (turns TLS on).
    #[arg(long)]
    pub tls_use_os_certs: bool,

    /// ALPN protocol to offer in the TLS handshake.
    #[arg(long, value_name = "PROTOCOL")]
    pub tls_alpn: Option<String>,

    /// Topic of the will, published by the broker if this client disappears.
    #[arg(long, value_name = "TOPIC")]
    pub will_topic: Option<String>,

    /// Payload of the will. [default: empty]
    #[arg(long, value_name = "PAYLOAD", requires = "will_topic")]
    pub will_payload: Option<String>,

    /// QoS of the will.
    #[arg(long, value_name = "QOS", value_parser = parse_qos, requires = "will_topic")]
    pub will_qos: Option<QoS>,

    /// Retain the will.
    #[arg(long, requires = "will_topic")]
    pub will_retain: bool,
}

/// The -D properties, by the packet they go on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PropSet {
    pub connect: Properties,
    pub publish: Properties,
    pub subscribe: Properties,
    pub unsubscribe: Properties,
    pub disconnect: Properties,
    pub will: Properties,
}

impl PropSet {
    pub fn is_empty(&self) -> bool {
        *self == PropSet::default()
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Byte,
    U16,
    U32,
    VarInt,
    Text,
    Binary,
    Pair,
}

/// The properties -D accepts: name, type, and the commands it may go on.
const PROPERTIES: &[(&str, Kind, &[&str])] = &[
    ("payload-format-indicator", Kind::Byte, &["publish", "will"]),
    ("message-expiry-interval", Kind::U32, &["publish", "will"]),
    ("content-type", Kind::Text, &["publish", "will"]),
    ("response-topic", Kind::Text, &["publish", "will"]),
    ("correlation-data", Kind::Binary, &["publish", "will"]),
    ("subscription-identifier", Kind::VarInt, &["subscribe"]),
    (
        "session-expiry-interval",
        Kind::U32,
        &["connect", "disconnect"],
    ),
    ("authentication-method", Kind::Text, &["connect"]),
    ("authentication-data", Kind::Binary, &["connect"]),
    ("request-problem-information", Kind::Byte, &["connect"]),
    ("will-delay-interval", Kind::U32, &["will"]),
    ("request-response-information", Kind::Byte, &["connect"]),
    ("receive-maximum", Kind::U16, &["connect"]),
    ("topic-alias-maximum", Kind::U16, &["connect"]),
    ("topic-alias", Kind::U16, &["publish"]),
    ("maximum-packet-size", Kind::U32, &["connect"]),
    (
        "user-property",
        Kind::Pair,
        &[
            "connect",
            "publish",
            "subscribe",
            "unsubscribe",
            "disconnect",
            "will",
        ],
    ),
];

const COMMANDS: &[&str] = &[
    "connect",
    "publish",
    "subscribe",
    "unsubscribe",
    "disconnect",
    "will",
];

fn number<T: std::str::FromStr>(name: &str, v: &str, max: &str) -> Result<T, String> {
    v.parse::<T>()
        .map_err(|_| format!("-D {name}: '{v}' is not a number from 0 to {max}"))
}

/// Parses every -D into the packets they belong to. `allowed` are the commands this tool
/// sends (pub: connect, publish, disconnect, will; sub: connect, subscribe, unsubscribe,
/// disconnect, will).
pub fn parse_properties(raw: &[Vec<String>], allowed: &[&str]) -> Result<PropSet, String> {
    let mut set = PropSet::default();
    for d in raw {
        let (cmd, name, rest) = match d.as_slice() {
            [c, n, rest @ ..] if !rest.is_empty() => {
                (c.to_ascii_lowercase(), n.to_ascii_lowercase(), rest)
            }
            _ => return Err("-D needs a command, a property name and a value".into()),
        };
        if !COMMANDS.contains(&cmd.as_str()) {
            return Err(format!(
                "-D: unknown command '{cmd}': use connect, publish, subscribe, unsubscribe, disconnect or will"
            ));
        }
        let Some((_, kind, cmds)) = PROPERTIES.iter().find(|(n, _, _)| *n == name) else {
            return Err(format!("-D: unknown property '{name}'"));
        };
        if !cmds.contains(&cmd.as_str()) {
            return Err(format!("-D: the {name} property is not allowed on {cmd}"));
        }
        if !allowed.contains(&cmd.as_str()) {
            return Err(format!("-D: this command sends no {cmd} packet"));
        }
        let p = match cmd.as_str() {
            "connect" => &mut set.connect,
            "publish" => &mut set.publish,
            "subscribe" => &mut set.subscribe,
            "unsubscribe" => &mut set.unsubscribe,
            "disconnect" => &mut set.disconnect,
            _ => &mut set.will,
        };
        let value =
            match (kind, rest) {
                (Kind::Pair, [k, v]) => {
                    p.user_properties.push((k.clone(), v.clone()));
                    continue;
                }
                (Kind::Pair, _) => return Err(
                    "-D: user-property needs a key and a value: -D COMMAND user-property KEY VALUE"
                        .into(),
                ),
                (_, [v]) => v.as_str(),
                _ => return Err(format!("-D {name} takes one value")),
            };
        match name.as_str() {
            "payload-format-indicator" => {
                p.payload_format_indicator = Some(number(&name, value, "255")?)
            }
            "message-expiry-interval" => {
                p.message_expiry_interval = Some(number(&name, value, "4294967295")?)
            }
            "content-type" => p.content_type = Some(value.to_string()),
            "response-topic" => p.response_topic = Some(value.to_string()),
            "correlation-data" => {
                p.correlation_data = Some(Bytes::copy_from_slice(value.as_bytes()))
            }
            "subscription-identifier" => {
                let id: u32 = number(&name, value, "268435455")?;
                if id == 0 || id > 268_435_455 {
                    return Err(format!(
                        "-D subscription-identifier: {id} is not from 1 to 268435455"
                    ));
                }
                p.subscription_identifiers = vec![id];
            }
            "session-expiry-interval" => p.session_expiry_interval = Some(parse_expiry(value)?),
            "authentication-method" => p.authentication_method = Some(value.to_string()),
            "authentication-data" => {
                p.authentication_data = Some(Bytes::copy_from_slice(value.as_bytes()))
            }
            "request-problem-information" => {
                p.request_problem_information = Some(number(&name, value, "1")?)
            }
            "will-delay-interval" => {
                p.will_delay_interval = Some(number(&name, value, "4294967295")?)
            }
            "request-response-information" => {
                p.request_response_information = Some(number(&name, value, "1")?)
            }
            "receive-maximum" => p.receive_maximum = Some(number(&name, value, "65535")?),
            "topic-alias-maximum" => p.topic_alias_maximum = Some(number(&name, value, "65535")?),
            "topic-alias" => p.topic_alias = Some(number(&name, value, "65535")?),
            "maximum-packet-size" => {
                p.maximum_packet_size = Some(number(&name, value, "4294967295")?)
            }
            _ => {}
        }
    }
    Ok(set)
}

/// What -L says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Url {
    pub tls: bool,
    pub host: String,
    pub port: Option<u16>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub topic: Option<String>,
}

/// Parses `mqtt(s)://[user[:pass]@]host[:port]/topic`.
pub fn parse_url(url: &str) -> Result<Url, String> {
    let bad = |why: &str| {
        format!("invalid URL '{url}': {why}; use mqtt(s)://[USER[:PASS]@]HOST[:PORT]/TOPIC")
    };
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else {
        return Err(bad("the scheme must be mqtt:// or mqtts://"));
    };
    let (authority, topic) = match rest.split_once('/') {
        Some((a, t)) => (a, (!t.is_empty()).then(|| t.to_string())),
        None => (rest, None),
    };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        Some(u) => match u.split_once(':') {
            Some((user, pass)) => (Some(user.to_string()), Some(pass.to_string())),
            None => (Some(u.to_string()), None),
        },
        None => (None, None),
    };
    let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
        let (h, after) = h.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(bad("unexpected text after ]")),
        };
        (h.to_string(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hostport.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        Some(p) => Some(
            p.parse::<u16>()
                .map_err(|_| bad("the port is not a number from 1 to 65535"))?,
        ),
        None => None,
    };
    Ok(Url {
        tls,
        host,
        port,
        username,
        password,
        topic,
    })
}

/// A client id no other client of this machine uses now: `makelaar-` and 14 random letters
/// and digits (23 characters, the MQTT 3.1 maximum).
pub fn random_client_id() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let mut x = h.finish();
    let mut id = String::from("makelaar-");
    for _ in 0..14 {
        let i = (x % ALPHABET.len() as u64) as usize;
        id.push(ALPHABET.get(i).map_or('x', |&b| b as char));
        x /= ALPHABET.len() as u64;
        if x == 0 {
            x = h.finish().rotate_left(17) ^ 0x9E37_79B9_7F4A_7C15;
            h.write_u64(x);
        }
    }
    id
}

/// Everything a tool needs from the shared flags.
#[derive(Debug, Clone)]
pub struct Setup {
    pub opts: ConnectOptions,
    pub props: PropSet,
    /// The topic given in -L, if any.
    pub url_topic: Option<String>,
}

impl ConnArgs {
    /// Checks the flags and builds the connection options. `default_version` is the tool's
    /// (3.1.1 for pub and sub, 5 for rr); -D without -V means MQTT 5.
    pub fn setup(
        &self,
        default_version: ProtocolVersion,
        allowed_commands: &[&str],
    ) -> Result<Setup, String> {
        let props = parse_properties(&self.property, allowed_commands)?;
        let version = match self.version {
            Some(v) => {
                if !v.is_v5() && !props.is_empty() {
                    return Err("-D properties need MQTT 5: add -V 5 (or leave -V out)".into());
                }
                v
            }
            None if !props.is_empty() => ProtocolVersion::V5,
            None => default_version,
        };
        let url = match &self.url {
            Some(u) => {
                if self.host.is_some() || self.port.is_some() {
                    return Err("give the broker either with -L or with -h/-p, not both".into());
                }
                Some(parse_url(u)?)
            }
            None => None,
        };
        let tls_wanted = url.as_ref().is_some_and(|u| u.tls)
            || self.cafile.is_some()
            || self.capath.is_some()
            || self.tls_use_os_certs
            || self.cert.is_some();
        if self.insecure && !tls_wanted {
            return Err("--insecure is about TLS: give --cafile (or use mqtts://) as well".into());
        }
        let host = url
            .as_ref()
            .map(|u| u.host.clone())
            .or_else(|| self.host.clone())
            .unwrap_or_else(|| "localhost".into());
        let port = url
            .as_ref()
            .and_then(|u| u.port)
            .or(self.port)
            .unwrap_or(if tls_wanted { 8883 } else { 1883 });
        let mut opts = ConnectOptions::new(host, port).version(version);
        opts.keep_alive = self.keepalive;
        opts.username = url
            .as_ref()
            .and_then(|u| u.username.clone())
            .or_else(|| self.username.clone());
        opts.password = url
            .as_ref()
            .and_then(|u| u.password.clone())
            .or_else(|| self.password.clone())
            .map(Bytes::from);
        if opts.password.is_some() && opts.username.is_none() && !version.is_v5() {
            return Err("a password (-P) needs a user name (-u) with MQTT 3.1.1 and 3.1".into());
        }

        // Sessions as Mosquitto's tools: -c keeps the session (and in 5.0 never expires it
        // unless -x says otherwise); -x alone keeps a clean start with that expiry.
        opts.clean_start = !self.no_clean;
        let never_expires = if version.is_v5() {
            let expiry = self
                .session_expiry
                .or(props.connect.session_expiry_interval)
                .unwrap_or(if self.no_clean { u32::MAX } else { 0 });
            opts.properties = props.connect.clone();
            opts.properties.session_expiry_interval = (expiry > 0).then_some(expiry);
            expiry == u32::MAX
        } else {
            opts.properties = Properties::default();
            self.no_clean
        };
        opts.client_id = match (&self.id, &self.id_prefix) {
            (Some(id), _) => id.clone(),
            (None, Some(prefix)) => format!("{prefix}{}", std::process::id()),
            (None, None) => {
                if never_expires || self.no_clean {
                    return Err(
                        "a persistent session (-c, or -x -1) needs a client id: give one with -i ID"
                            .into(),
                    );
                }
                if version.is_v5() {
                    String::new()
                } else {
                    random_client_id()
                }
            }
        };
        if version == ProtocolVersion::V31 && opts.client_id.len() > 23 {
            return Err(format!(
                "MQTT 3.1 allows client ids of at most 23 characters; '{}' has {}",
                opts.client_id,
                opts.client_id.len()
            ));
        }

        if let Some(topic) = &self.will_topic {
            if topic.is_empty() || topic.contains(['+', '#']) {
                return Err(format!(
                    "invalid will topic '{topic}': it must be a topic name without + or #"
                ));
            }
            opts.will = Some(Will {
                topic: topic.clone(),
                payload: self
                    .will_payload
                    .clone()
                    .map(Bytes::from)
                    .unwrap_or_default(),
                qos: self.will_qos.unwrap_or_default(),
                retain: self.will_retain,
                properties: if version.is_v5() {
                    props.will.clone()
                } else {
                    Properties::default()
                },
            });
        } else if !props.will.is_empty() {
            return Err("-D will ... needs --will-topic".into());
        }

        if tls_wanted {
            let mut tls = TlsOptions::default();
            tls.ca_file = self.cafile.clone();
            tls.ca_path = self.capath.clone();
            tls.client_cert = self.cert.clone();
            tls.client_key = self.key.clone();
            tls.insecure = self.insecure;
            if let Some(alpn) = &self.tls_alpn {
                tls.alpn = vec![alpn.as_bytes().to_vec()];
            }
            opts.tls = Some(tls);
        }
        Ok(Setup {
            opts,
            props,
            url_topic: url.and_then(|u| u.topic),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("mqtts://bob:s3cret@broker.example:8884/a/b").unwrap_or_default();
        assert_eq!(
            u,
            Url {
                tls: true,
                host: "broker.example".into(),
                port: Some(8884),
                username: Some("bob".into()),
                password: Some("s3cret".into()),
                topic: Some("a/b".into()),
            }
        );
        let u = parse_url("mqtt://[::1]/t").unwrap_or_default();
        assert_eq!(
            (u.host.as_str(), u.port, u.topic.as_deref()),
            ("::1", None, Some("t"))
        );
        assert!(parse_url("http://x/t").is_err());
        assert!(parse_url("mqtt://x:99999/t").is_err());
    }

    #[test]
    fn properties() {
        let raw = vec![
            vec!["PUBLISH".into(), "content-type".into(), "text/plain".into()],
            vec![
                "publish".into(),
                "user-property".into(),
                "k".into(),
                "v".into(),
            ],
            vec!["connect".into(), "receive-maximum".into(), "10".into()],
        ];
        let set = parse_properties(&raw, &["connect", "publish"]).unwrap_or_default();
        assert_eq!(set.publish.content_type.as_deref(), Some("text/plain"));
        assert_eq!(set.publish.user_properties, vec![("k".into(), "v".into())]);
        assert_eq!(set.connect.receive_maximum, Some(10));
        let bad = |d: &[&str], allowed: &[&str]| {
            parse_properties(&[d.iter().map(|s| s.to_string()).collect()], allowed).unwrap_err()
        };
        assert_eq!(
            bad(&["connect", "content-type", "x"], &["connect"]),
            "-D: the content-type property is not allowed on connect"
        );
        assert_eq!(
            bad(&["subscribe", "user-property", "a", "b"], &["publish"]),
            "-D: this command sends no subscribe packet"
        );
        assert_eq!(
            bad(&["connect", "receive-maximum", "x"], &["connect"]),
            "-D receive-maximum: 'x' is not a number from 0 to 65535"
        );
        assert_eq!(
            bad(&["connect", "nope", "x"], &["connect"]),
            "-D: unknown property 'nope'"
        );
    }

    #[test]
    fn random_ids_fit_mqtt_31() {
        let a = random_client_id();
        assert_eq!(a.len(), 23);
        assert_ne!(a, random_client_id());
    }

    #[test]
    fn expiry_values() {
        assert_eq!(parse_expiry("-1"), Ok(u32::MAX));
        assert_eq!(parse_expiry("∞"), Ok(u32::MAX));
        assert_eq!(parse_expiry("30"), Ok(30));
        assert!(parse_expiry("-2").is_err());
    }
}
