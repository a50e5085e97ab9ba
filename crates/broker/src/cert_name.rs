//! The Common Name of a client certificate, for `use_identity_as_username`.
//!
//! The certificate has already been verified by rustls (signature, validity, chain), so it is
//! well-formed DER; this reads just enough of it to find the subject's first Common Name, as
//! Mosquitto does (`X509_NAME_get_index_by_NID(name, NID_commonName, -1)`). Nothing here
//! panics on odd input: every step that does not fit gives `None`, and the client is refused.

/// DER of the Common Name attribute type, OID 2.5.4.3.
const CN_OID: &[u8] = &[0x55, 0x04, 0x03];

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const VERSION: u8 = 0xA0; // [0] EXPLICIT, before the serial number

/// The first Common Name in the subject of the DER certificate `der`, if it has one that is
/// a valid MQTT username: UTF-8 (UTF8String, PrintableString, IA5String or BMPString) without
/// U+0000 (Mosquitto refuses a CN with an embedded NUL, too).
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, subject) = issuer_and_subject(der)?;
    first_cn(subject)
}

/// The issuer and the subject of the DER certificate `der`, as their DER Names (the
/// contents of each SEQUENCE), to match a certificate with its issuer.
pub(crate) fn issuer_and_subject(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let (tag, cert, _) = tlv(der)?;
    expect(tag, SEQUENCE)?;
    let (tag, tbs, _) = tlv(cert)?;
    expect(tag, SEQUENCE)?;
    let mut rest = tbs;
    let (tag, _, after) = tlv(rest)?;
    if tag == VERSION {
        rest = after;
    }
    // serialNumber, signature, then the issuer, validity, subject.
    for _ in 0..2 {
        let (_, _, after) = tlv(rest)?;
        rest = after;
    }
    let (tag, issuer, after) = tlv(rest)?;
    expect(tag, SEQUENCE)?;
    let (_, _, after) = tlv(after)?;
    let (tag, subject, _) = tlv(after)?;
    expect(tag, SEQUENCE)?;
    Some((issuer, subject))
}

/// The first Common Name of a DER Name (the contents of its SEQUENCE), for messages.
pub(crate) fn name_cn(name: &[u8]) -> Option<String> {
    first_cn(name)
}

/// Walks the RelativeDistinguishedNames of a Name for the first CN attribute.
fn first_cn(mut name: &[u8]) -> Option<String> {
    while !name.is_empty() {
        let (tag, mut rdn, after) = tlv(name)?;
        expect(tag, SET)?;
        name = after;
        while !rdn.is_empty() {
            let (tag, attribute, after) = tlv(rdn)?;
            expect(tag, SEQUENCE)?;
            rdn = after;
            let (tag, oid, value) = tlv(attribute)?;
            expect(tag, OID)?;
            if oid == CN_OID {
                let (tag, text, _) = tlv(value)?;
                return string_value(tag, text);
            }
        }
    }
    None
}

/// A directory string as UTF-8; `None` for other string types and for U+0000.
fn string_value(tag: u8, bytes: &[u8]) -> Option<String> {
    let text = match tag {
        // UTF8String, PrintableString, IA5String.
        0x0C | 0x13 | 0x16 => std::str::from_utf8(bytes).ok()?.to_string(),
        // BMPString: UTF-16, big-endian.
        0x1E => {
            if !bytes.len().is_multiple_of(2) {
                return None;
            }
            let units = bytes
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c.first().copied()?, c.get(1).copied()?]).into())
                .collect::<Option<Vec<u16>>>()?;
            String::from_utf16(&units).ok()?
        }
        _ => return None,
    };
    (!text.is_empty() && !text.contains('\0')).then_some(text)
}

fn expect(tag: u8, wanted: u8) -> Option<()> {
    (tag == wanted).then_some(())
}

/// One DER element: (tag, contents, what follows). Only the short tag form, and definite
/// lengths of at most four bytes.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1F == 0x1F {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for _ in 0..n {
            let (&b, after) = rest.split_first()?;
            len = (len << 8) | usize::from(b);
            rest = after;
        }
        len
    };
    if len > rest.len() {
        return None;
    }
    let (contents, after) = rest.split_at(len);
    Some((tag, contents, after))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, DnValue, KeyPair};

    fn cert_with(dn: DistinguishedName) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = dn;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn finds_the_common_name() {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Makelaar tests");
        dn.push(DnType::CommonName, "sensor-7");
        assert_eq!(common_name(&cert_with(dn)).as_deref(), Some("sensor-7"));
    }

    #[test]
    fn reads_utf8_printable_and_bmp_strings() {
        for (value, want) in [
            (DnValue::Utf8String("Zoë".into()), "Zoë"),
            (
                DnValue::PrintableString("plain name".try_into().unwrap()),
                "plain name",
            ),
            (DnValue::BmpString("bmp".try_into().unwrap()), "bmp"),
        ] {
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, value);
            assert_eq!(common_name(&cert_with(dn)).as_deref(), Some(want));
        }
    }

    #[test]
    fn no_common_name_is_none() {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "no cn here");
        assert_eq!(common_name(&cert_with(dn)), None);
    }

    #[test]
    fn a_nul_in_the_name_is_refused() {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, DnValue::Utf8String("ali\0ce".into()));
        assert_eq!(common_name(&cert_with(dn)), None);
    }

    #[test]
    fn damaged_der_is_none_at_every_cut() {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "cut");
        let der = cert_with(dn);
        for cut in 0..der.len() {
            // Never panics; a cut inside the subject gives no name.
            let _ = common_name(&der[..cut]);
        }
        assert_eq!(common_name(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]), None);
        assert_eq!(common_name(&[]), None);
    }
}
