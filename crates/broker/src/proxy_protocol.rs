//! The PROXY protocol (HAProxy's, versions 1 and 2), sans-IO: the header a load balancer
//! sends before anything else on a connection, naming the client it accepted the connection
//! from. The listener (`proxy_protocol = true`) reads it before the TLS handshake, so the
//! client's real address reaches admission, authentication and the logs.
//!
//! [`parse`] looks at the bytes received so far and either asks for more ([`Parsed::Incomplete`]
//! with the number of bytes that are certainly still part of the header, so the caller never
//! reads past it into the MQTT or TLS bytes that follow), or returns the header and its length.
//! Everything is bounded: a version 1 line is at most 107 bytes, a version 2 header at most
//! [`MAX_V2_LEN`]. It never panics, whatever the bytes.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12 bytes that start a version 2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A version 1 line, `PROXY ...\r\n`, is at most this long (the specification's bound).
pub const V1_MAX_LEN: usize = 107;
/// The shortest version 1 line, `PROXY UNKNOWN\r\n`.
const V1_MIN_LEN: usize = 15;
/// The fixed part of a version 2 header: signature, version and command, family, length.
const V2_FIXED_LEN: usize = 16;
/// The longest version 2 header accepted (fixed part, addresses and TLVs). The protocol
/// allows 64 KiB; load balancers send a few hundred bytes at most.
pub const MAX_V2_LEN: usize = 4096;

/// What the header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The connection was made by the proxy itself (a v2 LOCAL command, e.g. a health check)
    /// or for a client it cannot name (v1 `UNKNOWN`, v2 UNSPEC or UNIX addresses): the
    /// socket's own addresses stand.
    Local,
    /// A TCP connection the proxy accepted from `source` on its address `destination`.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
}

/// The result of looking at the bytes received so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// The header is not complete: at least `need` more bytes (all of them header bytes) must
    /// be read before calling [`parse`] again.
    Incomplete { need: usize },
    /// A whole header, `len` bytes long; what follows it belongs to the connection.
    Done { header: Header, len: usize },
}

/// Why the bytes are not a PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The connection does not start with a PROXY header at all.
    Missing,
    /// A version 1 line that breaks the format (the part that is wrong).
    BadV1(&'static str),
    /// A version 1 line without its CRLF within 107 bytes.
    V1TooLong,
    /// A version 2 header with another version or an unknown command, family or protocol.
    BadV2(&'static str),
    /// A version 2 header longer than [`MAX_V2_LEN`].
    V2TooLong(usize),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Missing => f.write_str("the connection does not start with a PROXY header"),
            Error::BadV1(what) => write!(f, "malformed PROXY v1 header: {what}"),
            Error::V1TooLong => {
                write!(f, "PROXY v1 header without CRLF within {V1_MAX_LEN} bytes")
            }
            Error::BadV2(what) => write!(f, "malformed PROXY v2 header: {what}"),
            Error::V2TooLong(n) => {
                write!(
                    f,
                    "PROXY v2 header of {n} bytes (at most {MAX_V2_LEN} are accepted)"
                )
            }
        }
    }
}

impl std::error::Error for Error {}

/// Looks at the first bytes of a connection (everything received so far, nothing more than
/// the header's bytes when earlier calls said how many to read).
pub fn parse(buf: &[u8]) -> Result<Parsed, Error> {
    if buf.is_empty() {
        return Ok(Parsed::Incomplete { need: V1_MIN_LEN });
    }
    let v2_prefix = buf.len().min(V2_SIGNATURE.len());
    if buf.get(..v2_prefix) == V2_SIGNATURE.get(..v2_prefix) {
        return parse_v2(buf);
    }
    let v1_prefix = buf.len().min(6);
    if buf.get(..v1_prefix) == b"PROXY ".get(..v1_prefix) {
        return parse_v1(buf);
    }
    Err(Error::Missing)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, Error> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        // CR and LF only come together, at the end.
        if buf.contains(&b'\n') || buf.iter().rev().skip(1).any(|&b| b == b'\r') {
            return Err(Error::BadV1("CR or LF alone"));
        }
        if buf.len() < V1_MIN_LEN {
            return Ok(Parsed::Incomplete {
                need: V1_MIN_LEN - buf.len(),
            });
        }
        let need = if buf.last() == Some(&b'\r') { 1 } else { 2 };
        if buf.len() + need > V1_MAX_LEN {
            return Err(Error::V1TooLong);
        }
        return Ok(Parsed::Incomplete { need });
    };
    let len = end + 2;
    if len > V1_MAX_LEN {
        return Err(Error::V1TooLong);
    }
    let line = buf.get(..end).ok_or(Error::BadV1("line"))?;
    let line = std::str::from_utf8(line).map_err(|_| Error::BadV1("not ASCII"))?;
    let mut fields = line.split(' ');
    if fields.next() != Some("PROXY") {
        return Err(Error::BadV1("does not start with PROXY"));
    }
    let v6 = match fields.next() {
        Some("TCP4") => false,
        Some("TCP6") => true,
        // The rest of an UNKNOWN line is to be ignored.
        Some("UNKNOWN") => {
            return Ok(Parsed::Done {
                header: Header::Local,
                len,
            })
        }
        _ => return Err(Error::BadV1("protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(Error::BadV1("needs exactly two addresses and two ports"));
    };
    let ip = |s: &str| -> Result<IpAddr, Error> {
        if v6 {
            s.parse::<Ipv6Addr>()
                .map(IpAddr::V6)
                .map_err(|_| Error::BadV1("invalid IPv6 address"))
        } else {
            s.parse::<Ipv4Addr>()
                .map(IpAddr::V4)
                .map_err(|_| Error::BadV1("invalid IPv4 address"))
        }
    };
    let header = Header::Proxied {
        source: SocketAddr::new(ip(src)?, port(sport)?),
        destination: SocketAddr::new(ip(dst)?, port(dport)?),
    };
    Ok(Parsed::Done { header, len })
}

/// A decimal port, 0 to 65535, digits only.
fn port(s: &str) -> Result<u16, Error> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::BadV1("invalid port"));
    }
    s.parse().map_err(|_| Error::BadV1("port above 65535"))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, Error> {
    let (Some(&ver_cmd), Some(&fam), Some(len_hi), Some(len_lo)) =
        (buf.get(12), buf.get(13), buf.get(14), buf.get(15))
    else {
        return Ok(Parsed::Incomplete {
            need: V2_FIXED_LEN - buf.len(),
        });
    };
    if ver_cmd >> 4 != 2 {
        return Err(Error::BadV2("version is not 2"));
    }
    let local = match ver_cmd & 0x0F {
        0 => true,
        1 => false,
        _ => return Err(Error::BadV2("command is neither LOCAL nor PROXY")),
    };
    let family = fam >> 4;
    if family > 3 || fam & 0x0F > 2 {
        return Err(Error::BadV2("unknown address family or protocol"));
    }
    let len = V2_FIXED_LEN + usize::from(u16::from_be_bytes([*len_hi, *len_lo]));
    if len > MAX_V2_LEN {
        return Err(Error::V2TooLong(len));
    }
    let Some(body) = buf.get(V2_FIXED_LEN..len) else {
        return Ok(Parsed::Incomplete {
            need: len - buf.len(),
        });
    };
    if local {
        // LOCAL: the address block (and any TLVs) is to be skipped, whatever it holds.
        return Ok(Parsed::Done {
            header: Header::Local,
            len,
        });
    }
    // What follows the addresses (TLVs) is skipped unread.
    let header = match family {
        1 => {
            let a = body
                .get(..12)
                .ok_or(Error::BadV2("IPv4 address block too short"))?;
            let ip = |i: usize| -> IpAddr {
                let b = |j: usize| a.get(i + j).copied().unwrap_or(0);
                IpAddr::V4(Ipv4Addr::new(b(0), b(1), b(2), b(3)))
            };
            Header::Proxied {
                source: SocketAddr::new(ip(0), be16(a, 8)),
                destination: SocketAddr::new(ip(4), be16(a, 10)),
            }
        }
        2 => {
            let a = body
                .get(..36)
                .ok_or(Error::BadV2("IPv6 address block too short"))?;
            let ip = |i: usize| -> IpAddr {
                let mut octets = [0u8; 16];
                if let Some(src) = a.get(i..i + 16) {
                    octets.copy_from_slice(src);
                }
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            Header::Proxied {
                source: SocketAddr::new(ip(0), be16(a, 32)),
                destination: SocketAddr::new(ip(16), be16(a, 34)),
            }
        }
        // UNSPEC and UNIX: nothing to take for a TCP client; the socket's addresses stand.
        _ => Header::Local,
    };
    Ok(Parsed::Done { header, len })
}

fn be16(a: &[u8], i: usize) -> u16 {
    let b = |j: usize| a.get(i + j).copied().unwrap_or(0);
    u16::from_be_bytes([b(0), b(1)])
}

#[cfg(test)]
mod tests;
