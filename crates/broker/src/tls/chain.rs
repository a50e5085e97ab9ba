//! Completing the server's certificate chain from `cafile`, as Mosquitto (OpenSSL) does.
//!
//! A TLS server sends its certificate and the intermediate CAs between it and a root the
//! client trusts; the client has only the root. Mosquitto setups often give `certfile` the
//! server certificate alone and put the intermediate in `cafile`: OpenSSL then builds the
//! chain from the CA file by itself. rustls sends exactly the certificates it is given, so
//! the client refused the chain ("UnknownCA"). Here the chain is completed the same way when
//! the certificates are loaded: from the last certificate of the file, each issuer found in
//! `cafile` is appended, up to but not including a self-signed root (the client has that).
//!
//! Certificates are matched by name (issuer to subject, compared as DER), as OpenSSL's chain
//! building starts; the client verifies the signatures.

use rustls_pki_types::CertificateDer;

use crate::cert_name::{issuer_and_subject, name_cn};

/// More intermediates than any real chain has: the walk stops there (and on a loop).
const MAX_ADDED: usize = 8;

/// What completing a chain did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// Nothing was missing: the file's chain ends at a self-signed certificate or at one whose
    /// issuer is in `cafile` as a root, or the file holds the server certificate's issuer.
    Complete,
    /// This many intermediates from `cafile` were appended.
    Added(usize),
    /// The server certificate's issuer is neither in the file nor in `cafile`: clients that
    /// do not trust that issuer itself refuse the chain. Its Common Name, for the message.
    IssuerMissing(Option<String>),
}

/// Appends to `chain` (the certificate file, server certificate first) the intermediates it
/// lacks that `cafile` holds; says what it did. Certificates that cannot be read as X.509
/// are left for rustls to refuse.
pub fn complete(
    chain: &mut Vec<CertificateDer<'static>>,
    cafile: &[CertificateDer<'static>],
) -> Completion {
    let Some((leaf_issuer, leaf_subject)) = chain.first().and_then(|c| names(c)) else {
        return Completion::Complete;
    };
    let leaf_issuer = leaf_issuer.to_vec();
    if leaf_issuer == leaf_subject {
        return Completion::Complete; // self-signed: there is nothing to add
    }
    let mut added = 0;
    while added < MAX_ADDED {
        let Some((issuer, subject)) = chain.last().and_then(|c| names(c)) else {
            break;
        };
        if issuer == subject {
            break; // the file ends at a root
        }
        let Some(found) = cafile
            .iter()
            .find(|ca| names(ca).is_some_and(|(_, s)| s == issuer) && !chain.contains(ca))
        else {
            break;
        };
        if names(found).is_some_and(|(i, s)| i == s) {
            break; // the root: the client has it
        }
        chain.push(found.clone());
        added += 1;
    }
    if added > 0 {
        return Completion::Added(added);
    }
    let known = |c: &CertificateDer<'_>| names(c).is_some_and(|(_, s)| s == leaf_issuer);
    if chain.iter().skip(1).any(known) || cafile.iter().any(known) {
        Completion::Complete
    } else {
        Completion::IssuerMissing(name_cn(&leaf_issuer))
    }
}

fn names<'a>(cert: &'a CertificateDer<'_>) -> Option<(&'a [u8], &'a [u8])> {
    issuer_and_subject(cert.as_ref())
}

#[cfg(test)]
mod tests;
