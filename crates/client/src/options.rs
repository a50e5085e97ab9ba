//! What to connect to and how: [`ConnectOptions`], [`TlsOptions`], [`Reconnect`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use makelaar_proto::{Properties, ProtocolVersion, QoS, Will};

/// The inflight window with MQTT 3.x when [`ConnectOptions::max_inflight`] is automatic.
pub const DEFAULT_INFLIGHT_V3: u16 = 100;

/// Everything about one client connection. Fields are public; the methods are shortcuts that
/// can be chained.
///
/// ```
/// use makelaar_client::{ConnectOptions, ProtocolVersion};
///
/// let opts = ConnectOptions::new("localhost", 1883)
///     .version(ProtocolVersion::V5)
///     .client_id("sensor-7")
///     .keep_alive(30)
///     .session_expiry(3600)
///     .credentials("alice", Some("secret"));
/// assert_eq!(opts.properties.session_expiry_interval, Some(3600));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// Host name or IP address of the broker.
    pub host: String,
    /// TCP port (1883 for plain MQTT and 8883 for MQTT over TLS by convention).
    pub port: u16,
    /// Protocol version spoken: 3.1, 3.1.1 (the default) or 5.0.
    pub version: ProtocolVersion,
    /// Client identifier. Empty asks the broker to assign one (5.0; 3.1.1 only with a clean
    /// session).
    pub client_id: String,
    /// Clean Session (3.x) or Clean Start (5.0). Default true.
    pub clean_start: bool,
    /// Keep-alive in seconds; 0 turns it off. Default 60.
    pub keep_alive: u16,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    /// The Last Will and Testament, with its 5.0 properties.
    pub will: Option<Will>,
    /// CONNECT properties (5.0): session expiry, receive maximum, maximum packet size, topic
    /// alias maximum, request response/problem information, user properties, ...
    pub properties: Properties,
    /// Connect over TLS with these settings; `None` for plain TCP.
    pub tls: Option<TlsOptions>,
    /// Reconnect automatically after a lost connection; `None` (the default) ends the client.
    pub reconnect: Option<Reconnect>,
    /// Time allowed for the TCP connection, the TLS handshake and the CONNACK. Default 10 s.
    pub connect_timeout: Duration,
    /// Most QoS 1/2 messages this client has unacknowledged at once; the broker's Receive
    /// Maximum (5.0) lowers it further. 0, the default, means automatic: the broker's Receive
    /// Maximum in 5.0, and [`DEFAULT_INFLIGHT_V3`] with MQTT 3.x, whose brokers announce no
    /// limit but may enforce one.
    pub max_inflight: u16,
    /// Received messages buffered for [`Messages`](crate::Messages) before the client stops
    /// reading from the socket. Default 1,024.
    pub message_buffer: usize,
    /// After reconnecting to a session the broker no longer has, subscribe again to every
    /// filter subscribed before. Default true.
    pub resubscribe: bool,
}

impl ConnectOptions {
    /// Options for `host:port` with the defaults: MQTT 3.1.1, an empty client id, clean
    /// session, keep-alive 60 s, no TLS, no reconnect.
    pub fn new(host: impl Into<String>, port: u16) -> ConnectOptions {
        ConnectOptions {
            host: host.into(),
            port,
            version: ProtocolVersion::V311,
            client_id: String::new(),
            clean_start: true,
            keep_alive: 60,
            username: None,
            password: None,
            will: None,
            properties: Properties::default(),
            tls: None,
            reconnect: None,
            connect_timeout: Duration::from_secs(10),
            max_inflight: 0,
            message_buffer: 1024,
            resubscribe: true,
        }
    }

    /// `host:port` as used in messages (IPv6 addresses in brackets).
    pub fn addr(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub fn version(mut self, v: ProtocolVersion) -> Self {
        self.version = v;
        self
    }

    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = id.into();
        self
    }

    pub fn clean_start(mut self, clean: bool) -> Self {
        self.clean_start = clean;
        self
    }

    pub fn keep_alive(mut self, secs: u16) -> Self {
        self.keep_alive = secs;
        self
    }

    /// User name and optional password.
    pub fn credentials(mut self, user: impl Into<String>, password: Option<&str>) -> Self {
        self.username = Some(user.into());
        self.password = password.map(|p| Bytes::copy_from_slice(p.as_bytes()));
        self
    }

    /// A will: published by the broker when this client goes away without DISCONNECT.
    pub fn will(
        mut self,
        topic: impl Into<String>,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
    ) -> Self {
        self.will = Some(Will {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain,
            properties: Properties::default(),
        });
        self
    }

    /// Session Expiry Interval (5.0) in seconds; `u32::MAX` never expires.
    pub fn session_expiry(mut self, secs: u32) -> Self {
        self.properties.session_expiry_interval = Some(secs);
        self
    }

    /// Receive Maximum (5.0): QoS 1/2 messages the broker may have unacknowledged towards us.
    pub fn receive_maximum(mut self, n: u16) -> Self {
        self.properties.receive_maximum = Some(n);
        self
    }

    /// Maximum Packet Size (5.0) this client accepts; also enforced by its decoder.
    pub fn maximum_packet_size(mut self, n: u32) -> Self {
        self.properties.maximum_packet_size = Some(n);
        self
    }

    /// Topic Alias Maximum (5.0): how many topic aliases the broker may use towards us.
    pub fn topic_alias_maximum(mut self, n: u16) -> Self {
        self.properties.topic_alias_maximum = Some(n);
        self
    }

    /// Asks the broker for Response Information in CONNACK (5.0).
    pub fn request_response_information(mut self, yes: bool) -> Self {
        self.properties.request_response_information = Some(u8::from(yes));
        self
    }

    /// Adds a user property to CONNECT (5.0).
    pub fn user_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties
            .user_properties
            .push((key.into(), value.into()));
        self
    }

    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    pub fn reconnect(mut self, r: Reconnect) -> Self {
        self.reconnect = Some(r);
        self
    }

    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// See [`ConnectOptions::max_inflight`] (0 is automatic).
    pub fn max_inflight(mut self, n: u16) -> Self {
        self.max_inflight = n;
        self
    }

    /// Whether the session outlives the connection: 3.x without clean session, 5.0 with a
    /// non-zero session expiry.
    pub fn is_persistent(&self) -> bool {
        if self.version.is_v5() {
            self.properties.session_expiry_interval.unwrap_or(0) > 0
        } else {
            !self.clean_start
        }
    }
}

/// TLS settings. With no CA given, the system's CA bundle is used (Debian's
/// `/etc/ssl/certs/ca-certificates.crt` and the like).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct TlsOptions {
    /// PEM file of CA certificates trusted to sign the broker's certificate.
    pub ca_file: Option<PathBuf>,
    /// Directory of PEM CA certificates (`*.pem`, `*.crt`).
    pub ca_path: Option<PathBuf>,
    /// PEM client certificate chain, for brokers that require one.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of the client certificate (PKCS#8, PKCS#1 or SEC1).
    pub client_key: Option<PathBuf>,
    /// Accept a certificate whose name does not match the host (the chain is still
    /// verified). For tests only, like Mosquitto's `--insecure`.
    pub insecure: bool,
    /// The name to verify the certificate against, instead of the host.
    pub server_name: Option<String>,
    /// ALPN protocols to offer.
    pub alpn: Vec<Vec<u8>>,
    /// Trust the operating system's CA bundle too, beside `ca_file` and `ca_path` (without
    /// either of them it is trusted anyway).
    pub use_os_certs: bool,
    /// Refuse TLS 1.2: only TLS 1.3 is offered.
    pub tls13_only: bool,
    /// A ready rustls configuration; when set, every other field but `server_name` is ignored.
    pub rustls_config: Option<Arc<rustls::ClientConfig>>,
}

impl TlsOptions {
    /// TLS trusting the CA certificates in `ca_file`.
    pub fn with_ca_file(ca_file: impl Into<PathBuf>) -> TlsOptions {
        TlsOptions {
            ca_file: Some(ca_file.into()),
            ..TlsOptions::default()
        }
    }

    /// Presents a client certificate.
    pub fn client_auth(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert = Some(cert.into());
        self.client_key = Some(key.into());
        self
    }

    /// Skips host name verification (see [`TlsOptions::insecure`]).
    pub fn insecure(mut self, yes: bool) -> Self {
        self.insecure = yes;
        self
    }
}

/// Automatic reconnection after a lost connection, waiting `initial_delay`, then twice as long
/// after each failed attempt, up to `max_delay`. The session is resumed: unacknowledged QoS
/// 1/2 messages are sent again (with DUP set) and, if the broker lost the session,
/// subscriptions are made again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reconnect {
    pub initial_delay: Duration,
    pub max_delay: Duration,
    /// Give up after this many failed attempts in a row; `None` tries forever.
    pub max_attempts: Option<u32>,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_attempts: None,
        }
    }
}

impl Reconnect {
    pub fn new(initial_delay: Duration, max_delay: Duration) -> Reconnect {
        Reconnect {
            initial_delay,
            max_delay: max_delay.max(initial_delay),
            max_attempts: None,
        }
    }

    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }
}
