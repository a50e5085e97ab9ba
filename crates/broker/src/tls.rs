//! TLS for `mqtts://` listeners: loads the PEM certificate chain, private key and optional CA
//! bundle into a rustls `ServerConfig` (aws-lc-rs provider, TLS 1.2 and 1.3). A chain the
//! certificate file leaves incomplete is completed from the CA bundle (`chain`), as
//! Mosquitto's OpenSSL does.

mod chain;

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::config::{io_reason, ConfigError, TlsSettings};
use crate::status::STATUS_TARGET;
use chain::Completion;

/// Builds the rustls server configuration for the TLS listeners.
///
/// With `cafile`, clients are asked for a certificate and one that is presented must chain to a
/// CA in the bundle and be valid now (an expired one is refused); `require_certificate` also
/// refuses clients that present none. With `crlfile`, a client certificate revoked by its
/// issuer's CRL is refused, and so is one whose issuer has no CRL in the file (as Mosquitto,
/// that is, OpenSSL's CRL check of the end certificate, does).
///
/// A certificate file without the intermediate CA certificates of its chain is completed from
/// `cafile` (see `chain`), and the log says so; when the server certificate's issuer is in
/// neither file, a warning names the file to append them to.
pub fn server_config(tls: &TlsSettings) -> Result<Arc<ServerConfig>, ConfigError> {
    let provider = crypto_provider();

    let mut certs = load_certs(&tls.cert, "certificate file", "--cert")?;
    let cas = match &tls.cafile {
        Some(cafile) => load_certs(cafile, "CA file", "--cafile")?,
        None => Vec::new(),
    };
    let completion = chain::complete(&mut certs, &cas);
    let key = load_key(&tls.key)?;
    // Check the key on its own first, so "not a usable key" and "does not match" differ.
    if let Err(e) = provider.key_provider.load_private_key(key.clone_key()) {
        return Err(ConfigError::Tls(format!(
            "the private key in \"{}\" cannot be used ({e}); give --key an RSA, ECDSA or Ed25519 \
             key in PEM (PKCS#8, PKCS#1 or SEC1)",
            tls.key.display()
        )));
    }

    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Tls(format!("cannot set up TLS 1.2 and 1.3 ({e})")))?;

    let builder = match &tls.cafile {
        None => builder.with_no_client_auth(),
        Some(cafile) => {
            let mut roots = RootCertStore::empty();
            for ca in cas {
                roots.add(ca).map_err(|e| {
                    ConfigError::Tls(format!(
                        "the CA file \"{}\" holds a certificate that cannot be used as a trust \
                         anchor ({e}); give --cafile the PEM certificates of the CAs that sign \
                         client certificates",
                        cafile.display()
                    ))
                })?;
            }
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if let Some(crlfile) = &tls.crlfile {
                verifier = verifier
                    .with_crls(load_crls(crlfile)?)
                    .only_check_end_entity_revocation();
            }
            let verifier = if tls.require_certificate {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier.build().map_err(|e| {
                ConfigError::Tls(format!(
                    "cannot verify client certificates with the CA file \"{}\" ({e}); give \
                     --cafile a PEM bundle of CA certificates",
                    cafile.display()
                ))
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };

    let mut config = builder.with_single_cert(certs, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => ConfigError::Tls(format!(
            "the private key \"{}\" does not belong to the certificate \"{}\"; pass the key that \
             was generated with that certificate",
            tls.key.display(),
            tls.cert.display()
        )),
        other => ConfigError::Tls(format!(
            "the certificate \"{}\" cannot be used with the key \"{}\" ({other}); check that \
             --cert holds a PEM certificate chain, server certificate first",
            tls.cert.display(),
            tls.key.display()
        )),
    })?;
    log_completion(&completion, tls);
    resumption(&mut config)?;
    Ok(Arc::new(config))
}

/// Says what completing the chain did: one line at info when intermediates were added from
/// the CA file, a warning when the server certificate's issuer is in neither the certificate
/// file nor the CA file.
fn log_completion(completion: &Completion, tls: &TlsSettings) {
    let cert = tls.cert.display();
    match (completion, &tls.cafile) {
        (Completion::Complete, _) => {}
        (Completion::Added(n), cafile) => tracing::info!(
            target: STATUS_TARGET,
            "the certificate file \"{cert}\" lacks {n} intermediate CA certificate(s) of its \
             chain, which are sent from the CA file \"{}\", as Mosquitto (OpenSSL) does",
            cafile.as_deref().unwrap_or(Path::new("")).display()
        ),
        // Without a CA file there is nothing to tell a server certificate issued by a root
        // the clients trust (a common, valid setup) from one missing its intermediate: only
        // a debug line then.
        (Completion::IssuerMissing(issuer), None) => tracing::debug!(
            "the certificate file \"{cert}\" holds the server certificate without its issuer \
             {issuer:?}, and no cafile is set to complete the chain from"
        ),
        (Completion::IssuerMissing(issuer), Some(cafile)) => {
            let issuer = issuer.as_deref().unwrap_or("(no common name)");
            tracing::warn!(
                "the certificate file \"{cert}\" holds the server certificate without its \
                 issuer \"{issuer}\", which is not in the CA file \"{}\" either, so clients \
                 that trust only the root CA will refuse it (UnknownCA): append the \
                 intermediate certificate(s) to \"{cert}\", after the server certificate, \
                 unless clients trust \"{issuer}\" itself",
                cafile.display()
            );
        }
    }
}

/// Session resumption: a client that comes back (a reconnect after a network blip, a broker
/// restart, a redeploy of many clients) skips the certificate and its signature, the costly
/// part of a full handshake. rustls keeps only 256 sessions in memory by default, so with more
/// clients than that most could not resume; self-contained tickets (encrypted under a key the
/// broker makes at start and rotates every 6 hours; a reload makes a new one) let every
/// client resume, at no memory per client. One ticket per handshake: an MQTT client reconnects
/// one connection at a time, and each resumed connection receives its next ticket.
fn resumption(config: &mut ServerConfig) -> Result<(), ConfigError> {
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| {
        ConfigError::Tls(format!(
            "cannot make a key for TLS session tickets ({e}); check that the system's random \
             number source (getrandom) works"
        ))
    })?;
    config.send_tls13_tickets = 1;
    Ok(())
}

fn load_certs(
    path: &Path,
    what: &str,
    flag: &str,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let unreadable = |e: &std::io::Error| {
        ConfigError::Tls(format!(
            "cannot read {what} \"{}\": {}; check the path given to {flag}",
            path.display(),
            io_reason(e)
        ))
    };
    let bad_pem = |e: pem::Error| {
        ConfigError::Tls(format!(
            "the {what} \"{}\" is not valid PEM ({}); give {flag} a file with \"-----BEGIN \
             CERTIFICATE-----\" blocks",
            path.display(),
            pem_reason(&e)
        ))
    };
    // Read the whole file first so I/O errors (missing file, permissions) are told apart.
    let bytes = std::fs::read(path).map_err(|e| unreadable(&e))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad_pem)?;
    if certs.is_empty() {
        return Err(ConfigError::Tls(format!(
            "the {what} \"{}\" holds no certificate; give {flag} a PEM file with \"-----BEGIN \
             CERTIFICATE-----\" blocks",
            path.display()
        )));
    }
    Ok(certs)
}

fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| {
        ConfigError::Tls(format!(
            "cannot read the CRL file \"{}\": {}; check the path given to crlfile",
            path.display(),
            io_reason(&e)
        ))
    })?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            ConfigError::Tls(format!(
                "the CRL file \"{}\" is not valid PEM ({}); give crlfile a file with \"-----BEGIN \
                 X509 CRL-----\" blocks (openssl ca -gencrl writes one)",
                path.display(),
                pem_reason(&e)
            ))
        })?;
    if crls.is_empty() {
        return Err(ConfigError::Tls(format!(
            "the CRL file \"{}\" holds no revocation list; give crlfile a PEM file with \
             \"-----BEGIN X509 CRL-----\" blocks",
            path.display()
        )));
    }
    Ok(crls)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| {
        ConfigError::Tls(format!(
            "cannot read private key file \"{}\": {}; check the path given to --key",
            path.display(),
            io_reason(&e)
        ))
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => ConfigError::Tls(format!(
            "the key file \"{}\" holds no private key; give --key a PEM file with a \"-----BEGIN \
             PRIVATE KEY-----\" (or RSA / EC PRIVATE KEY) block",
            path.display()
        )),
        other => ConfigError::Tls(format!(
            "the key file \"{}\" is not valid PEM ({}); give --key the PEM private key of the \
             certificate",
            path.display(),
            pem_reason(&other)
        )),
    })
}

fn pem_reason(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "a section does not end with \"{}\"",
            String::from_utf8_lossy(end_marker)
        ),
        pem::Error::IllegalSectionStart { line } => {
            format!("bad section start \"{}\"", String::from_utf8_lossy(line))
        }
        pem::Error::Base64Decode(s) => format!("bad base64: {s}"),
        pem::Error::Io(e) => io_reason(e),
        pem::Error::NoItemsFound => "nothing found".to_string(),
        pem::Error::SectionTooLarge => "a section is too large".to_string(),
        other => format!("{other:?}"),
    }
}

/// The provider every TLS piece of the broker uses: aws-lc-rs, chosen explicitly so the build
/// does not depend on which providers other crates enable. A full handshake's cost is mostly
/// the signature with the server's key, and aws-lc signs with RSA 2048 in half the time ring
/// takes (AVX-512 IFMA where the CPU has it: 220 against 440 µs on the benchmark machine,
/// docs/benchmarks.md), about what OpenSSL (Mosquitto) takes.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}
