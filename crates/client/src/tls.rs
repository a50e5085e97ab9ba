//! rustls client configuration (ring provider) from [`TlsOptions`]; public for programs that
//! open their own sockets (such as `makelaar bench`).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;

use crate::error::Error;
use crate::options::TlsOptions;

/// Where Linux distributions keep their CA bundle, tried when no CA is given.
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| {
        Error::Tls(format!(
            "cannot read certificates from {}: {e}",
            path.display()
        ))
    })?;
    let certs: Vec<_> = iter.collect::<Result<_, _>>().map_err(|e| {
        Error::Tls(format!(
            "cannot read certificates from {}: {e}",
            path.display()
        ))
    })?;
    if certs.is_empty() {
        return Err(Error::Tls(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(certs)
}

fn add_all(
    roots: &mut RootCertStore,
    certs: Vec<CertificateDer<'static>>,
    path: &Path,
) -> Result<(), Error> {
    for c in certs {
        roots.add(c).map_err(|e| {
            Error::Tls(format!(
                "a CA certificate in {} is not usable: {e}",
                path.display()
            ))
        })?;
    }
    Ok(())
}

fn roots(opts: &TlsOptions) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    if let Some(f) = &opts.ca_file {
        add_all(&mut roots, load_certs(f)?, f)?;
    }
    if let Some(dir) = &opts.ca_path {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            Error::Tls(format!(
                "cannot read the CA directory {}: {e}",
                dir.display()
            ))
        })?;
        for entry in entries.flatten() {
            let p = entry.path();
            // `*.pem`, `*.crt`, and the `HASH.0` links `openssl rehash` makes.
            let is_cert = p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                e == "pem" || e == "crt" || (!e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()))
            });
            if is_cert && p.is_file() {
                if let Ok(certs) = load_certs(&p) {
                    // Skip what rustls cannot use; a directory may hold anything.
                    for c in certs {
                        let _ = roots.add(c);
                    }
                }
            }
        }
        if roots.is_empty() {
            return Err(Error::Tls(format!(
                "no usable CA certificate in {}",
                dir.display()
            )));
        }
    }
    if opts.use_os_certs || (opts.ca_file.is_none() && opts.ca_path.is_none()) {
        for bundle in SYSTEM_CA_BUNDLES {
            let p = Path::new(bundle);
            if let Ok(certs) = load_certs(p) {
                for c in certs {
                    let _ = roots.add(c);
                }
                break;
            }
        }
        if roots.is_empty() {
            return Err(Error::Tls(
                "no CA certificates to verify the broker with: give a CA file (--cafile)".into(),
            ));
        }
    }
    Ok(roots)
}

/// The ring crypto provider, chosen explicitly.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the rustls configuration (ring provider, TLS 1.2 and 1.3) for `opts`: the CA file
/// and directory (or the system bundle), the client certificate, ALPN, and `insecure`.
/// Returns [`TlsOptions::rustls_config`] as is when that is set.
pub fn client_config(opts: &TlsOptions) -> Result<Arc<ClientConfig>, Error> {
    client_config_with_verifier(opts, None)
}

/// [`client_config`], but with `verifier` (when given) checking the broker's certificate
/// instead: the CA options and `insecure` are then not used, and no CA is loaded.
pub fn client_config_with_verifier(
    opts: &TlsOptions,
    verifier: Option<Arc<dyn ServerCertVerifier>>,
) -> Result<Arc<ClientConfig>, Error> {
    if let Some(c) = &opts.rustls_config {
        return Ok(c.clone());
    }
    let provider = provider();
    let versions: &[&rustls::SupportedProtocolVersion] = if opts.tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| Error::Tls(e.to_string()))?;
    let builder = if let Some(v) = verifier {
        builder.dangerous().with_custom_certificate_verifier(v)
    } else if opts.insecure {
        let roots = Arc::new(roots(opts)?);
        let inner = WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| Error::Tls(e.to_string()))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(IgnoreHostname { inner }))
    } else {
        builder.with_root_certificates(roots(opts)?)
    };
    let mut config =
        match (&opts.client_cert, &opts.client_key) {
            (Some(cert), Some(key)) => {
                let certs = load_certs(cert)?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    Error::Tls(format!(
                        "cannot read a private key from {}: {e}",
                        key.display()
                    ))
                })?;
                builder.with_client_auth_cert(certs, key).map_err(|e| {
                    Error::Tls(format!("the client certificate and key do not fit: {e}"))
                })?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err(Error::Tls(
                "a client certificate needs both the certificate and its key (--cert and --key)"
                    .into(),
            )),
        };
    config.alpn_protocols = opts.alpn.clone();
    Ok(Arc::new(config))
}

/// The server name to verify: the override, or the host (an IP address or a DNS name, with or
/// without the brackets of an IPv6 literal).
pub fn server_name(opts: &TlsOptions, host: &str) -> Result<ServerName<'static>, Error> {
    let name = opts.server_name.as_deref().unwrap_or(host);
    let name = name.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(name.to_string())
        .map_err(|_| Error::Tls(format!("'{name}' is not a valid host name for TLS")))
}

/// Verifies the chain like WebPKI but accepts a certificate issued for another name
/// (Mosquitto's `--insecure`).
#[derive(Debug)]
struct IgnoreHostname {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for IgnoreHostname {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(v) => Ok(v),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
