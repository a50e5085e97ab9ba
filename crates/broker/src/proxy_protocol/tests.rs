#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::*;
use proptest::prelude::*;

/// A version 1 line for a TCP connection.
fn v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let proto = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {proto} {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    )
    .into_bytes()
}

/// A version 2 header: PROXY (or LOCAL) over TCP, with `tlvs` appended to the addresses.
fn v2(local: bool, source: SocketAddr, destination: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(if local { 0x20 } else { 0x21 });
    let mut body = Vec::new();
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11);
            body.extend(s.octets());
            body.extend(d.octets());
        }
        (s, d) => {
            out.push(0x21);
            body.extend(to_v6(s).octets());
            body.extend(to_v6(d).octets());
        }
    }
    body.extend(source.port().to_be_bytes());
    body.extend(destination.port().to_be_bytes());
    body.extend(tlvs);
    out.extend((body.len() as u16).to_be_bytes());
    out.extend(body);
    out
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Feeds `bytes` to the parser the way the listener does: reading exactly what it asks for.
fn feed(bytes: &[u8]) -> Result<Parsed, Error> {
    let mut have = 0;
    loop {
        match parse(&bytes[..have])? {
            Parsed::Incomplete { need } => {
                assert!(need > 0);
                if have + need > bytes.len() {
                    return Ok(Parsed::Incomplete { need });
                }
                have += need;
            }
            done => return Ok(done),
        }
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn v1_tcp4_and_tcp6() {
    let line = b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 1883\r\n\x10\x0c";
    assert_eq!(
        feed(line),
        Ok(Parsed::Done {
            header: Header::Proxied {
                source: addr("192.0.2.7:56324"),
                destination: addr("10.0.0.1:1883"),
            },
            len: line.len() - 2,
        })
    );
    let line = b"PROXY TCP6 2001:db8::1 ::1 65535 0\r\n";
    assert_eq!(
        parse(line),
        Ok(Parsed::Done {
            header: Header::Proxied {
                source: addr("[2001:db8::1]:65535"),
                destination: addr("[::1]:0"),
            },
            len: line.len(),
        })
    );
}

#[test]
fn v1_unknown_keeps_the_socket_address() {
    for line in [
        &b"PROXY UNKNOWN\r\n"[..],
        b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n",
    ] {
        assert_eq!(
            feed(line),
            Ok(Parsed::Done {
                header: Header::Local,
                len: line.len()
            })
        );
    }
}

#[test]
fn v1_malformed_lines_are_refused() {
    for line in [
        &b"PROXY TCP4 192.0.2.7 10.0.0.1 56324\r\n"[..],
        b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 1883 x\r\n",
        b"PROXY TCP4 ::1 10.0.0.1 1 2\r\n",
        b"PROXY TCP6 192.0.2.7 ::1 1 2\r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.1 +1 2\r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.1 65536 2\r\n",
        b"PROXY TCP4  192.0.2.7 10.0.0.1 1 2\r\n",
        b"PROXY UDP4 192.0.2.7 10.0.0.1 1 2\r\n",
        b"PROXY TCP4 192.0.2.7\n10.0.0.1 1 2\r\n",
        b"PROXY TCP4 192.0.2.7\r10.0.0.1 1 2\r\n",
    ] {
        assert!(
            matches!(feed(line), Err(Error::BadV1(_))),
            "{:?}",
            String::from_utf8_lossy(line)
        );
    }
}

#[test]
fn v1_without_crlf_is_bounded() {
    let long = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 200]].concat();
    assert_eq!(feed(&long), Err(Error::V1TooLong));
}

#[test]
fn anything_else_is_missing_as_soon_as_it_shows() {
    // An MQTT CONNECT, a TLS ClientHello, an HTTP request.
    for start in [
        &b"\x10\x0c\x00\x04MQTT"[..],
        b"\x16\x03\x01",
        b"GET / HTTP/1.1",
    ] {
        assert_eq!(parse(start), Err(Error::Missing));
        assert_eq!(parse(&start[..1]), Err(Error::Missing));
    }
    assert_eq!(parse(b"PROX"), Ok(Parsed::Incomplete { need: 11 }));
    assert_eq!(parse(b"\r\n\r\n"), Ok(Parsed::Incomplete { need: 12 }));
}

#[test]
fn v2_proxy_local_and_tlvs() {
    let (s, d) = (addr("198.51.100.4:40000"), addr("10.1.2.3:8883"));
    // A TLV (PP2_TYPE_AUTHORITY "example") after the addresses is skipped.
    let tlv = [&[0x02, 0x00, 0x07][..], b"example"].concat();
    let mut bytes = v2(false, s, d, &tlv);
    let len = bytes.len();
    bytes.extend(b"\x16\x03\x01 TLS follows");
    assert_eq!(
        feed(&bytes),
        Ok(Parsed::Done {
            header: Header::Proxied {
                source: s,
                destination: d
            },
            len
        })
    );
    let local = v2(true, s, d, &[]);
    assert_eq!(
        feed(&local),
        Ok(Parsed::Done {
            header: Header::Local,
            len: local.len()
        })
    );
}

#[test]
fn v2_unspec_and_unix_keep_the_socket_address() {
    let mut unspec = V2_SIGNATURE.to_vec();
    unspec.extend([0x21, 0x00, 0x00, 0x00]);
    assert_eq!(
        parse(&unspec),
        Ok(Parsed::Done {
            header: Header::Local,
            len: 16
        })
    );
    let mut unix = V2_SIGNATURE.to_vec();
    unix.extend([0x21, 0x31, 0x00, 216]);
    unix.extend([0u8; 216]);
    assert_eq!(
        feed(&unix),
        Ok(Parsed::Done {
            header: Header::Local,
            len: 232
        })
    );
}

#[test]
fn v2_malformed_headers_are_refused() {
    let good = v2(false, addr("1.2.3.4:1"), addr("5.6.7.8:2"), &[]);
    let with = |i: usize, b: u8| {
        let mut h = good.clone();
        h[i] = b;
        h
    };
    assert!(matches!(parse(&with(12, 0x11)), Err(Error::BadV2(_)))); // version 1
    assert!(matches!(parse(&with(12, 0x22)), Err(Error::BadV2(_)))); // command 2
    assert!(matches!(parse(&with(13, 0x41)), Err(Error::BadV2(_)))); // family 4
    assert!(matches!(parse(&with(13, 0x13)), Err(Error::BadV2(_)))); // protocol 3
                                                                     // An IPv6 family with an IPv4-sized block.
    assert!(matches!(parse(&with(13, 0x21)), Err(Error::BadV2(_))));
    let mut huge = good.clone();
    huge[14] = 0xFF;
    assert_eq!(parse(&huge), Err(Error::V2TooLong(16 + 0xFF0C)));
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
    ]
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse(&bytes);
        let _ = feed(&bytes);
    }

    #[test]
    fn random_bytes_after_a_signature_never_panic(
        v2_start in any::<bool>(),
        rest in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let start: &[u8] = if v2_start { &V2_SIGNATURE } else { b"PROXY " };
        let bytes = [start, &rest].concat();
        if let Ok(Parsed::Done { len, .. }) = feed(&bytes) {
            prop_assert!(len <= bytes.len());
        }
    }

    #[test]
    fn generated_headers_round_trip(
        source in socket_addr(),
        destination in socket_addr(),
        version in 1u8..=2,
        tlvs in proptest::collection::vec(any::<u8>(), 0..64),
        after in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        // v1 needs both addresses of one family.
        let destination = match (source, destination) {
            (SocketAddr::V4(_), SocketAddr::V6(d)) if version == 1 => {
                SocketAddr::from(([1, 2, 3, 4], d.port()))
            }
            (SocketAddr::V6(_), SocketAddr::V4(d)) if version == 1 => {
                SocketAddr::new(IpAddr::V6(d.ip().to_ipv6_mapped()), d.port())
            }
            _ => destination,
        };
        let header = if version == 1 { v1(source, destination) } else {
            v2(false, source, destination, &tlvs)
        };
        let bytes = [&header[..], &after].concat();
        let expected = if version == 2 && source.is_ipv4() != destination.is_ipv4() {
            // Mixed families are sent as IPv6 (IPv4-mapped).
            Header::Proxied {
                source: SocketAddr::new(IpAddr::V6(to_v6(source.ip())), source.port()),
                destination: SocketAddr::new(IpAddr::V6(to_v6(destination.ip())), destination.port()),
            }
        } else {
            Header::Proxied { source, destination }
        };
        prop_assert_eq!(feed(&bytes), Ok(Parsed::Done { header: expected, len: header.len() }));
    }
}
