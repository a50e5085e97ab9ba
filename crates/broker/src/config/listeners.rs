//! From `listen` URLs and `[[listener]]` tables to [`ListenerConfig`]s: TLS settings and who
//! may connect, each listener inheriting the top-level settings it does not set itself.

use std::path::PathBuf;

use super::listen::{parse_listen_url_with_path, ANY_WEBSOCKET_PATH};
use super::{
    ConfigError, ConfigFile, ListenerAuth, ListenerConfig, ListenerKind, ListenerTable, Network,
    TlsSettings, WebSocketSettings, DEFAULT_LISTEN,
};

/// The settings a listener may have, each `None` when not given.
#[derive(Debug, Clone, Default)]
struct Settings {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    cafile: Option<PathBuf>,
    crlfile: Option<PathBuf>,
    require_certificate: Option<bool>,
    use_identity_as_username: Option<bool>,
    allow_anonymous: Option<bool>,
    password_file: Option<PathBuf>,
}

impl Settings {
    fn top(f: &ConfigFile) -> Settings {
        Settings {
            cert: f.cert.clone(),
            key: f.key.clone(),
            cafile: f.cafile.clone(),
            crlfile: f.crlfile.clone(),
            require_certificate: f.require_certificate,
            use_identity_as_username: f.use_identity_as_username,
            allow_anonymous: f.allow_anonymous,
            password_file: f.password_file.clone(),
        }
    }

    /// A table's own settings over the inherited ones.
    fn under(&self, t: &ListenerTable) -> Settings {
        Settings {
            cert: t.cert.clone().or_else(|| self.cert.clone()),
            key: t.key.clone().or_else(|| self.key.clone()),
            cafile: t.cafile.clone().or_else(|| self.cafile.clone()),
            crlfile: t.crlfile.clone().or_else(|| self.crlfile.clone()),
            require_certificate: t.require_certificate.or(self.require_certificate),
            use_identity_as_username: t.use_identity_as_username.or(self.use_identity_as_username),
            allow_anonymous: t.allow_anonymous.or(self.allow_anonymous),
            password_file: t
                .password_file
                .clone()
                .or_else(|| self.password_file.clone()),
        }
    }
}

/// Every listener of the file: the `listen` URLs (with the top-level settings), then the
/// `[[listener]]` tables; without either, the default listener.
pub(super) fn build(f: &ConfigFile, source_name: &str) -> Result<Vec<ListenerConfig>, ConfigError> {
    let top = Settings::top(f);
    if top.require_certificate == Some(true) && top.cafile.is_none() {
        return Err(ConfigError::Invalid(
            "--require-certificate needs --cafile FILE (or cafile in the config file): \
             the CA bundle that client certificates are checked against"
                .to_string(),
        ));
    }
    let urls = match (&f.listen, f.listener.is_empty()) {
        (None, true) => vec![DEFAULT_LISTEN.to_string()],
        (None, false) => Vec::new(),
        (Some(urls), tables_empty) => {
            if urls.is_empty() && tables_empty {
                return Err(ConfigError::Invalid(format!(
                    "{source_name}: listen is an empty list; name at least one listener, e.g. \
                     listen = [\"{DEFAULT_LISTEN}\"]"
                )));
            }
            urls.clone()
        }
    };
    let mut specs: Vec<(String, Settings, Option<&ListenerTable>)> = Vec::new();
    let mut urls = urls;
    // Only HTTP listeners (`--listen http://...` for metrics): MQTT still gets its default.
    let table_urls = f.listener.iter().map(|t| &t.url);
    if urls.iter().chain(table_urls).all(|u| is_http_url(u)) {
        urls.insert(0, DEFAULT_LISTEN.to_string());
    }
    for url in urls {
        specs.push((url, top.clone(), None));
    }
    for t in &f.listener {
        specs.push((t.url.clone(), top.under(t), Some(t)));
    }

    let mut listeners: Vec<ListenerConfig> = Vec::with_capacity(specs.len());
    for (url, s, table) in specs {
        let (kind, addr, path) = parse_listen_url_with_path(&url)?;
        // Port 0 (any free port) never collides.
        let clash = |l: &&ListenerConfig| l.addr == addr && addr.port() != 0;
        if let Some(other) = listeners.iter().find(clash) {
            return Err(ConfigError::Listener(format!(
                "listeners \"{}\" and \"{url}\" both use {addr}; give each listener its own port",
                other.url
            )));
        }
        let tls = if kind.is_tls() {
            Some(tls_settings(&url, &s)?)
        } else {
            None
        };
        let explicit_identity = table.is_some_and(|t| t.use_identity_as_username.is_some());
        let auth = listener_auth(&url, kind, &s, explicit_identity)?;
        let trusted_proxies = trusted_proxies(&url, kind, table)?;
        let proxy_protocol = table.and_then(|t| t.proxy_protocol).unwrap_or(false);
        if proxy_protocol && kind.is_http() {
            return Err(ConfigError::Invalid(format!(
                "listener \"{url}\": proxy_protocol is for MQTT listeners; the HTTP listener \
                 serves metrics and health directly, so remove proxy_protocol from its table"
            )));
        }
        let websocket = kind.is_websocket().then(|| WebSocketSettings {
            path: path.filter(|p| p != ANY_WEBSOCKET_PATH),
            trusted_proxies,
        });
        listeners.push(ListenerConfig {
            url,
            kind,
            addr,
            tls,
            auth,
            max_connections: table.and_then(|t| t.max_connections).unwrap_or(0),
            websocket,
            proxy_protocol,
        });
    }

    let has_tls = listeners.iter().any(|l| l.kind.is_tls());
    if !has_tls && (f.cert.is_some() || f.key.is_some() || f.cafile.is_some()) {
        tracing::warn!(
            "a certificate, key or cafile is configured but no listener uses TLS; add an \
             mqtts://HOST:PORT listener to use them"
        );
    }
    if !has_tls && f.use_identity_as_username == Some(true) {
        tracing::warn!(
            "use_identity_as_username is set but no listener uses TLS, so no client has a \
             certificate to take a username from; add an mqtts://HOST:PORT listener with cafile"
        );
    }
    Ok(listeners)
}

/// Whether a URL names an HTTP listener (errors are left to the URL parser).
fn is_http_url(url: &str) -> bool {
    url.split_once("://").is_some_and(|(scheme, _)| {
        scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")
    })
}

/// Who may connect: `use_identity_as_username` only where there is a verified certificate,
/// and anonymous clients allowed by default only where no credentials are configured.
fn listener_auth(
    url: &str,
    kind: ListenerKind,
    s: &Settings,
    explicit_identity: bool,
) -> Result<ListenerAuth, ConfigError> {
    // An HTTP listener has no MQTT clients to name.
    let wanted = s.use_identity_as_username.unwrap_or(false) && !kind.is_http();
    let use_identity_as_username = if kind.is_tls() {
        wanted
    } else if wanted && explicit_identity {
        // A top-level setting applies to the TLS listeners; a table must not ask for it.
        return Err(ConfigError::Invalid(format!(
            "listener \"{url}\": use_identity_as_username needs TLS, as the username comes \
             from the client's certificate; use an mqtts:// or wss:// URL with cafile, or \
             remove it"
        )));
    } else {
        false
    };
    if use_identity_as_username && s.cafile.is_none() {
        return Err(ConfigError::Invalid(format!(
            "listener \"{url}\": use_identity_as_username needs cafile, the CA bundle that \
             signs the client certificates the usernames are taken from"
        )));
    }
    let has_credentials = s.password_file.is_some() || use_identity_as_username;
    Ok(ListenerAuth {
        allow_anonymous: s.allow_anonymous.unwrap_or(!has_credentials),
        password_file: s.password_file.clone(),
        use_identity_as_username,
    })
}

/// The `trusted_proxies` of a `[[listener]]` table: WebSocket listeners only.
fn trusted_proxies(
    url: &str,
    kind: ListenerKind,
    table: Option<&ListenerTable>,
) -> Result<Vec<Network>, ConfigError> {
    let Some(list) = table
        .and_then(|t| t.trusted_proxies.as_ref())
        .filter(|list| !list.is_empty())
    else {
        return Ok(Vec::new());
    };
    if !kind.is_websocket() {
        return Err(ConfigError::Invalid(format!(
            "listener \"{url}\": trusted_proxies is about the X-Forwarded-For header of \
             WebSocket connections; use it on a ws:// or wss:// listener, or set \
             proxy_protocol = true to learn client addresses over TCP"
        )));
    }
    list.iter()
        .map(|s| {
            s.parse::<Network>().map_err(|why| {
                ConfigError::Invalid(format!(
                    "listener \"{url}\": trusted proxy {why}; write addresses such as 127.0.0.1 \
                     or networks such as 10.0.0.0/8"
                ))
            })
        })
        .collect()
}

fn tls_settings(url: &str, s: &Settings) -> Result<TlsSettings, ConfigError> {
    let require_certificate = s.require_certificate.unwrap_or(false);
    if require_certificate && s.cafile.is_none() {
        return Err(ConfigError::Invalid(format!(
            "listener \"{url}\": require_certificate needs cafile, the CA bundle that client \
             certificates are checked against"
        )));
    }
    if s.crlfile.is_some() && s.cafile.is_none() {
        return Err(ConfigError::Invalid(format!(
            "listener \"{url}\": crlfile needs cafile, the CA bundle whose certificates the \
             revocation list is about"
        )));
    }
    match (&s.cert, &s.key) {
        (Some(cert), Some(key)) => Ok(TlsSettings {
            cert: cert.clone(),
            key: key.clone(),
            cafile: s.cafile.clone(),
            require_certificate,
            crlfile: s.crlfile.clone(),
        }),
        (None, None) => Err(ConfigError::Invalid(format!(
            "listener \"{url}\" needs a certificate: pass --cert FILE and --key FILE (PEM), or \
             set cert and key in the config file"
        ))),
        (Some(_), None) => Err(ConfigError::Invalid(format!(
            "listener \"{url}\" has a certificate but no private key: pass --key FILE (PEM), or \
             set key in the config file"
        ))),
        (None, Some(_)) => Err(ConfigError::Invalid(format!(
            "listener \"{url}\" has a private key but no certificate: pass --cert FILE (PEM), or \
             set cert in the config file"
        ))),
    }
}
