//! The link from a node to its NATS servers: TLS and credentials (docs/cluster.md, "Securing
//! the link to NATS").
//!
//! TLS: the rustls client configuration is always built here, with the ring provider chosen
//! explicitly, and handed to async-nats. The workspace enables both ring and aws-lc-rs, so
//! rustls has no process default, and async-nats would fall back to that default (and panic)
//! the moment a `nats://` server asks for TLS. The certificates are verified against the CA
//! file when one is given, else the system's CA bundle ([`makelaar_client::tls_config`]
//! builds it, as for bridges).
//!
//! Credentials: at most one of user and password, a token, a `.creds` file (user JWT and
//! nkey seed) or an nkey seed file. Passwords and tokens are [`Secret`]s: neither `Debug`
//! nor an error message shows them, and URLs are shown with their password replaced
//! ([`redact_url`]).
//!
//! Failures become one sentence naming the server list and the setting to check
//! ([`LinkError`], chosen by [`classify`] from async-nats's error).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_nats::{ConnectErrorKind, ConnectOptions};
use makelaar_client::TlsOptions;
use rustls::{AlertDescription, CertificateError, ClientConfig};

/// A password or token: shown as `***` by `Debug`, read only by [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// TLS towards the NATS servers. `tls://` URLs (and `nats://` servers that require TLS)
/// use it; without a CA file the system's CA bundle verifies the servers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsTls {
    /// PEM CA certificates that signed the servers' certificates (`[cluster] ca_file`).
    pub ca_file: Option<PathBuf>,
    /// This node's PEM certificate, for servers that verify clients (`cert_file`).
    pub cert_file: Option<PathBuf>,
    /// Its PEM private key (`key_file`).
    pub key_file: Option<PathBuf>,
    /// Start TLS before the server's INFO (`tls_first`; the servers need
    /// `tls { handshake_first: true }`).
    pub tls_first: bool,
}

impl NatsTls {
    /// Whether TLS was asked for: a setting given, or a `tls://` URL among `servers`.
    pub fn wanted(&self, servers: &[String]) -> bool {
        self.ca_file.is_some()
            || self.cert_file.is_some()
            || self.tls_first
            || servers.iter().any(|s| s.starts_with("tls://"))
    }
}

/// How a node proves who it is to the NATS servers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials (or only those written in the server URLs).
    #[default]
    None,
    /// `user` and `password`.
    UserPassword {
        /// The user name.
        user: String,
        /// The password.
        password: Secret,
    },
    /// `token`.
    Token(Secret),
    /// `creds_file`: a NATS `.creds` file (a user JWT and its nkey seed).
    CredsFile(PathBuf),
    /// `nkey_seed_file`: a file holding a user nkey seed (`SU...`).
    NkeySeedFile(PathBuf),
}

impl NatsAuth {
    /// The fix to name when the servers refuse these credentials.
    fn refusal_fix(&self) -> String {
        match self {
            NatsAuth::None => "give the credentials the servers expect in [cluster]: user and \
                               password, token, creds_file (--cluster-creds) or nkey_seed_file"
                .to_owned(),
            NatsAuth::UserPassword { user, .. } => {
                format!("check [cluster] user (\"{user}\") and password")
            }
            NatsAuth::Token(_) => "check [cluster] token".to_owned(),
            NatsAuth::CredsFile(p) => format!(
                "check that {} ([cluster] creds_file, --cluster-creds) holds a user of the \
                 servers' account that is neither expired nor revoked",
                p.display()
            ),
            NatsAuth::NkeySeedFile(p) => format!(
                "check that the seed in {} ([cluster] nkey_seed_file) is that of a user the \
                 servers list",
                p.display()
            ),
        }
    }
}

/// Why the link to NATS could not be made. Each message is one sentence naming the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The CA file, certificate or key cannot be used.
    #[error(
        "cannot use the TLS settings for the NATS servers ({reason}): check [cluster] ca_file, \
         cert_file and key_file (PEM files)"
    )]
    TlsSettings {
        /// What is wrong, naming the file.
        reason: String,
    },
    /// The TLS handshake failed.
    #[error("the TLS handshake with the NATS servers {servers} failed ({reason}): {fix}")]
    Handshake {
        /// The servers tried (passwords hidden).
        servers: String,
        /// rustls's reason.
        reason: String,
        /// What to check.
        fix: String,
    },
    /// The servers refused the credentials (authorization violation), or they could not sign
    /// the server's challenge.
    #[error("the NATS servers {servers} refused this node's credentials ({reason}): {fix}")]
    Refused {
        /// The servers tried (passwords hidden).
        servers: String,
        /// async-nats's reason.
        reason: String,
        /// What to check.
        fix: String,
    },
    /// A credentials file cannot be read or parsed.
    #[error("cannot read the NATS credentials in {path} ({reason}): check [cluster] {setting}")]
    CredentialsFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
        /// The setting naming it.
        setting: &'static str,
    },
}

/// `url` with the password (or a token alone) of its user information replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let redacted = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}{path}"),
            None => format!("***@{host}{path}"),
        },
        None => return url.to_owned(),
    };
    match scheme {
        Some(s) => format!("{s}://{redacted}"),
        None => redacted,
    }
}

/// The server list for messages: comma-separated, passwords hidden.
pub fn redact_urls(servers: &[String]) -> String {
    servers
        .iter()
        .map(|s| redact_url(s))
        .collect::<Vec<_>>()
        .join(",")
}

/// The rustls client configuration for the NATS servers (and `https://` monitoring URLs):
/// ring provider, the CA file or the system's bundle, the client certificate.
pub fn client_config(tls: &NatsTls, servers: &[String]) -> Result<Arc<ClientConfig>, LinkError> {
    let mut opts = TlsOptions::default();
    opts.ca_file.clone_from(&tls.ca_file);
    opts.client_cert.clone_from(&tls.cert_file);
    opts.client_key.clone_from(&tls.key_file);
    match makelaar_client::tls_config(&opts) {
        Ok(config) => Ok(config),
        // No TLS asked for and no system CA bundle on this host: a configuration that trusts
        // nothing, so that a `nats://` server that unexpectedly requires TLS fails its
        // handshake with a sentence naming ca_file instead of failing the start here.
        Err(_) if !tls.wanted(servers) => {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| LinkError::TlsSettings {
                    reason: e.to_string(),
                })?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            Ok(Arc::new(config))
        }
        Err(e) => Err(LinkError::TlsSettings {
            reason: e.to_string().trim_start_matches("TLS error: ").to_owned(),
        }),
    }
}

/// `options` with TLS (always a configuration of ours, see the module documentation) and the
/// credentials.
pub async fn apply(
    mut options: ConnectOptions,
    tls: &NatsTls,
    tls_config: &ClientConfig,
    auth: &NatsAuth,
) -> Result<ConnectOptions, LinkError> {
    options = options.tls_client_config(tls_config.clone());
    if tls.tls_first {
        options = options.tls_first();
    }
    Ok(match auth {
        NatsAuth::None => options,
        NatsAuth::UserPassword { user, password } => {
            options.user_and_password(user.clone(), password.expose().to_owned())
        }
        NatsAuth::Token(t) => options.token(t.expose().to_owned()),
        NatsAuth::CredsFile(path) => {
            let creds = read_secret_file(path, "creds_file").await?;
            options
                .credentials(&creds)
                .map_err(|e| LinkError::CredentialsFile {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                    setting: "creds_file",
                })?
        }
        NatsAuth::NkeySeedFile(path) => {
            let text = read_secret_file(path, "nkey_seed_file").await?;
            options.nkey(
                nkey_seed(&text).map_err(|reason| LinkError::CredentialsFile {
                    path: path.display().to_string(),
                    reason,
                    setting: "nkey_seed_file",
                })?,
            )
        }
    })
}

async fn read_secret_file(path: &Path, setting: &'static str) -> Result<String, LinkError> {
    tokio::fs::read_to_string(path)
        .await
        .map_err(|e| LinkError::CredentialsFile {
            path: path.display().to_string(),
            reason: e.to_string(),
            setting,
        })
}

/// The user nkey seed in a seed file: the first line starting `SU` (the `nk` tool writes the
/// seed alone; a file with comments around it is accepted too). The seed itself is checked
/// by the servers' challenge.
pub fn nkey_seed(text: &str) -> Result<String, String> {
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with("SU") && l.len() > 2)
        .map(str::to_owned)
        .ok_or_else(|| "it holds no user nkey seed, a line starting SU".to_owned())
}

/// The rustls error somewhere in `err`'s chain of sources (an `io::Error` hides it in its
/// `get_ref`, which `source` skips).
fn rustls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(r) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(r);
        }
        next = e.source();
    }
    None
}

/// The fix to name for a failed handshake.
pub fn handshake_fix(e: &rustls::Error, tls: &NatsTls) -> String {
    let ca = match &tls.ca_file {
        Some(p) => format!(
            "check that [cluster] ca_file ({}) holds the CA that signed the servers' certificates",
            p.display()
        ),
        None => "the servers' certificates are not signed by a CA this host trusts: name their \
                 CA in [cluster] ca_file (--cluster-cafile)"
            .to_owned(),
    };
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "the servers' certificates are not issued for the host in the URL: connect by a \
                 name or address their certificates list"
                    .to_owned()
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => {
                "a server's certificate has expired or is not valid yet: renew it, or check this \
                 host's clock"
                    .to_owned()
            }
            _ => ca,
        },
        rustls::Error::NoCertificatesPresented
        | rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::AccessDenied
            | AlertDescription::HandshakeFailure,
        ) => {
            if tls.cert_file.is_some() {
                "the servers refused this node's certificate: check that [cluster] cert_file \
                 and key_file hold a certificate signed by a CA the servers trust"
                    .to_owned()
            } else {
                "the servers want a client certificate: set [cluster] cert_file and key_file \
                 (--cluster-cert, --cluster-key)"
                    .to_owned()
            }
        }
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "a server does not answer TLS on that port: check the URLs, and set [cluster] \
             tls_first only for servers with `handshake_first`"
                .to_owned()
        }
        _ => ca,
    }
}

/// The sentence for a connection failure that is about TLS or credentials; `None` for the
/// rest (an unreachable server, a timeout), which the caller words itself.
pub fn classify(
    err: &async_nats::ConnectError,
    servers: &[String],
    tls: &NatsTls,
    auth: &NatsAuth,
) -> Option<LinkError> {
    let servers_text = redact_urls(servers);
    if let Some(r) = rustls_error(err) {
        return Some(LinkError::Handshake {
            servers: servers_text,
            reason: r.to_string(),
            fix: handshake_fix(r, tls),
        });
    }
    match err.kind() {
        ConnectErrorKind::Tls => Some(LinkError::Handshake {
            servers: servers_text,
            reason: err.to_string(),
            fix: "check [cluster] ca_file, cert_file and key_file".to_owned(),
        }),
        ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
            Some(LinkError::Refused {
                servers: servers_text,
                reason: err.kind().to_string(),
                fix: auth.refusal_fix(),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(
            redact_url("nats://alice:s3cret@h1:4222"),
            "nats://alice:***@h1:4222"
        );
        assert_eq!(redact_url("tls://t0ken@h1:4222/x"), "tls://***@h1:4222/x");
        assert_eq!(redact_url("nats://h1:4222"), "nats://h1:4222");
        assert_eq!(redact_url("h1:4222"), "h1:4222");
        assert_eq!(
            redact_urls(&["nats://a:b@h1".into(), "nats://h2".into()]),
            "nats://a:***@h1,nats://h2"
        );
    }

    #[test]
    fn secrets_do_not_show() {
        let auth = NatsAuth::UserPassword {
            user: "mk".into(),
            password: Secret::new("hunter2"),
        };
        let text = format!("{auth:?} {:?}", NatsAuth::Token(Secret::new("t0k3n")));
        assert!(
            !text.contains("hunter2") && !text.contains("t0k3n"),
            "{text}"
        );
        assert!(!auth.refusal_fix().contains("hunter2"));
    }

    #[test]
    fn seed_files() {
        assert_eq!(nkey_seed("SUABC\n").unwrap(), "SUABC");
        assert_eq!(
            nkey_seed("# node m1\n  SUXYZ  \n").unwrap(),
            "SUXYZ",
            "comments and blanks around the seed"
        );
        assert!(nkey_seed("UABC\n").is_err(), "a public key is not a seed");
        assert!(nkey_seed("").is_err());
    }

    #[test]
    fn handshake_fixes_name_the_setting() {
        let with_ca = NatsTls {
            ca_file: Some("/etc/mk/nats-ca.pem".into()),
            ..NatsTls::default()
        };
        let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let fix = handshake_fix(&unknown, &with_ca);
        assert!(fix.contains("ca_file (/etc/mk/nats-ca.pem)"), "{fix}");
        let fix = handshake_fix(&unknown, &NatsTls::default());
        assert!(fix.contains("--cluster-cafile"), "{fix}");
        let fix = handshake_fix(
            &rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
            &NatsTls::default(),
        );
        assert!(fix.contains("cert_file and key_file"), "{fix}");
        let fix = handshake_fix(
            &rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
            &with_ca,
        );
        assert!(fix.contains("host in the URL"), "{fix}");
        for e in [
            unknown,
            rustls::Error::AlertReceived(AlertDescription::BadCertificate),
        ] {
            let sentence = LinkError::Handshake {
                servers: "tls://h1:4222".into(),
                reason: e.to_string(),
                fix: handshake_fix(&e, &with_ca),
            }
            .to_string();
            assert!(!sentence.contains(". "), "one sentence: {sentence}");
        }
    }

    #[test]
    fn refusals_name_the_credentials_setting() {
        let refused = |auth: &NatsAuth| {
            LinkError::Refused {
                servers: "nats://h1:4222".into(),
                reason: "authorization violation".into(),
                fix: auth.refusal_fix(),
            }
            .to_string()
        };
        let text = refused(&NatsAuth::UserPassword {
            user: "mk".into(),
            password: Secret::new("pw"),
        });
        assert_eq!(
            text,
            "the NATS servers nats://h1:4222 refused this node's credentials (authorization \
             violation): check [cluster] user (\"mk\") and password"
        );
        assert!(refused(&NatsAuth::Token(Secret::new("t"))).contains("[cluster] token"));
        assert!(refused(&NatsAuth::None).contains("--cluster-creds"));
        assert!(refused(&NatsAuth::CredsFile("/k/m1.creds".into())).contains("/k/m1.creds"));
        assert!(refused(&NatsAuth::NkeySeedFile("/k/m1.nk".into())).contains("nkey_seed_file"));
    }

    #[test]
    fn a_missing_ca_file_is_a_settings_error() {
        let tls = NatsTls {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..NatsTls::default()
        };
        let e = client_config(&tls, &["tls://h1:4222".into()]).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("/nonexistent/ca.pem") && text.contains("[cluster] ca_file"),
            "{text}"
        );
        // Without any TLS setting, a configuration is always made (nats:// servers that
        // turn out to require TLS then fail their handshake with a sentence).
        assert!(client_config(&NatsTls::default(), &["nats://h1:4222".into()]).is_ok());
    }
}
