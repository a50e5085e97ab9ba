#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A CA or server certificate named `cn`, signed by `issuer` (self-signed without one); its
/// DER and what signs with it.
struct Made {
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

fn make(cn: &str, ca: bool, issuer: Option<&Made>) -> Made {
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    if ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    }
    let key = KeyPair::generate().unwrap();
    let cert = match issuer {
        Some(i) => params.signed_by(&key, &i.issuer).unwrap(),
        None => params.self_signed(&key).unwrap(),
    };
    Made {
        der: cert.der().clone(),
        issuer: Issuer::new(params, key),
    }
}

/// root → intermediate 1 → intermediate 2 → server.
fn pki() -> [CertificateDer<'static>; 4] {
    let root = make("Test root", true, None);
    let i1 = make("Test intermediate 1", true, Some(&root));
    let i2 = make("Test intermediate 2", true, Some(&i1));
    let server = make("localhost", false, Some(&i2));
    [root.der, i1.der, i2.der, server.der]
}

#[test]
fn intermediates_in_cafile_are_appended_but_not_the_root() {
    let [root, i1, i2, server] = pki();
    let mut chain = vec![server.clone()];
    // In any order, with unrelated certificates around.
    let unrelated = make("Other CA", true, None).der;
    let cafile = [unrelated, root.clone(), i2.clone(), i1.clone()];
    assert_eq!(complete(&mut chain, &cafile), Completion::Added(2));
    assert_eq!(chain, vec![server, i2, i1]);
}

#[test]
fn a_partial_chain_is_completed_from_where_it_ends() {
    let [root, i1, i2, server] = pki();
    let mut chain = vec![server.clone(), i2.clone()];
    assert_eq!(
        complete(&mut chain, &[i1.clone(), root]),
        Completion::Added(1)
    );
    assert_eq!(chain, vec![server, i2, i1]);
}

#[test]
fn complete_chains_are_left_alone() {
    let [root, i1, i2, server] = pki();
    // The whole chain in the file, with or without the root; cafile with the root only.
    for given in [
        vec![server.clone(), i2.clone(), i1.clone()],
        vec![server.clone(), i2.clone(), i1.clone(), root.clone()],
    ] {
        let mut chain = given.clone();
        assert_eq!(
            complete(&mut chain, std::slice::from_ref(&root)),
            Completion::Complete
        );
        assert_eq!(chain, given);
    }
    // A server certificate signed by the root directly, which cafile holds.
    let root = make("Direct root", true, None);
    let direct = make("localhost", false, Some(&root));
    let mut chain = vec![direct.der.clone()];
    assert_eq!(complete(&mut chain, &[root.der]), Completion::Complete);
    assert_eq!(chain.len(), 1);
    // A self-signed server certificate.
    let mut chain = vec![make("localhost", false, None).der];
    assert_eq!(complete(&mut chain, &[]), Completion::Complete);
    assert_eq!(chain.len(), 1);
}

#[test]
fn an_issuer_in_neither_file_is_reported_by_name() {
    let [root, _i1, _i2, server] = pki();
    for cafile in [vec![], vec![root]] {
        let mut chain = vec![server.clone()];
        assert_eq!(
            complete(&mut chain, &cafile),
            Completion::IssuerMissing(Some("Test intermediate 2".to_string()))
        );
        assert_eq!(chain, vec![server.clone()]);
    }
}

#[test]
fn a_chain_given_in_the_file_is_not_reported_when_its_root_is_unknown() {
    // Like a public CA's fullchain.pem: the root is in the client's store, not in cafile.
    let [_root, i1, i2, server] = pki();
    let mut chain = vec![server, i2, i1];
    assert_eq!(complete(&mut chain, &[]), Completion::Complete);
    assert_eq!(chain.len(), 3);
}

#[test]
fn garbage_is_left_for_rustls_to_refuse() {
    let mut chain = vec![CertificateDer::from(vec![0x30, 0x03, 0x01, 0x02])];
    assert_eq!(complete(&mut chain, &[]), Completion::Complete);
    assert_eq!(chain.len(), 1);
}
