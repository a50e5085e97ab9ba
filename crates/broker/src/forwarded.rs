//! Whose address a WebSocket connection stands for when it comes through HTTP proxies: the
//! `X-Forwarded-For` header, honoured only from the listener's `trusted_proxies`.
//!
//! Each proxy appends the address it received the connection from, so the header reads
//! "client, proxy1, proxy2" and the connection itself comes from the last proxy. Anyone can
//! write anything at the left end, so the header is read from the right: starting from the
//! connection's address, while the address at hand is a trusted proxy, the next one to the
//! left takes its place. The first untrusted address is the client (the right-most untrusted
//! one); a connection from an untrusted address keeps its own.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An address or a network (`10.0.0.0/8`, `127.0.0.1`, `fd00::/8`) of trusted proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// Whether `ip` is in the network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let full = usize::from(bits / 8);
    let rest = bits % 8;
    if a.get(..full) != b.get(..full) {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xFFu8 << (8 - rest);
    match (a.get(full), b.get(full)) {
        (Some(x), Some(y)) => x & mask == y & mask,
        _ => false,
    }
}

impl FromStr for Network {
    type Err = String;

    /// Parses `ADDRESS` or `ADDRESS/PREFIX`; the error completes "trusted proxy ... ".
    fn from_str(s: &str) -> Result<Network, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("\"{s}\" is not an IP address or network"))?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => {
                    return Err(format!(
                        "\"{s}\" has a prefix length that is not 0 to {max}"
                    ))
                }
            },
        };
        Ok(Network { addr, prefix })
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The client's address: `peer` (the connection's) or, when `peer` is a trusted proxy, the
/// right-most untrusted address of `forwarded_for` (the `X-Forwarded-For` values joined with
/// commas). An entry that is not an address stops the walk at the last good one.
pub fn client_address(peer: IpAddr, forwarded_for: &str, trusted: &[Network]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    let mut client = peer;
    if !is_trusted(peer) {
        return peer;
    }
    for entry in forwarded_for.rsplit(',') {
        let Some(ip) = entry_address(entry) else {
            break;
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:567`, `2001:db8::1`, `[2001:db8::1]:567`.
fn entry_address(entry: &str) -> Option<IpAddr> {
    let e = entry.trim();
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    let host = match e.strip_prefix('[') {
        Some(rest) => rest.split_once(']')?.0,
        None => e.rsplit_once(':')?.0,
    };
    host.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn nets(list: &[&str]) -> Vec<Network> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks() {
        let n: Network = "10.0.0.0/8".parse().unwrap();
        assert!(n.contains(ip("10.255.1.2")));
        assert!(n.contains(ip("::ffff:10.1.1.1")));
        assert!(!n.contains(ip("11.0.0.1")));
        let n: Network = "192.168.4.0/22".parse().unwrap();
        assert!(n.contains(ip("192.168.7.255")) && !n.contains(ip("192.168.8.0")));
        let n: Network = "fd00::/8".parse().unwrap();
        assert!(n.contains(ip("fd12::1")) && !n.contains(ip("fe80::1")));
        assert!("0.0.0.0/0"
            .parse::<Network>()
            .unwrap()
            .contains(ip("8.8.8.8")));
        assert!("::ffff:127.0.0.1"
            .parse::<Network>()
            .unwrap()
            .contains(ip("127.0.0.1")));
        for bad in ["10.0.0.0/33", "::/129", "10.0.0", "localhost", "10.0.0.0/x"] {
            assert!(bad.parse::<Network>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_right_most_untrusted_address_is_the_client() {
        let t = nets(&["127.0.0.1", "10.0.0.0/8"]);
        let lb = ip("127.0.0.1");
        // Through two trusted proxies; the left-most entry is whatever the client wrote.
        let xff = "6.6.6.6, 203.0.113.9, 10.0.0.2";
        assert_eq!(client_address(lb, xff, &t), ip("203.0.113.9"));
        // Only trusted addresses: the left-most.
        assert_eq!(client_address(lb, "10.1.1.1,10.2.2.2", &t), ip("10.1.1.1"));
        // No header, or from an untrusted peer: the connection's own address.
        assert_eq!(client_address(lb, "", &t), lb);
        assert_eq!(client_address(ip("192.0.2.1"), xff, &t), ip("192.0.2.1"));
        assert_eq!(client_address(lb, xff, &[]), lb);
        // Ports and brackets; junk stops the walk at the last good address.
        assert_eq!(
            client_address(lb, "[2001:db8::7]:443", &t),
            ip("2001:db8::7")
        );
        assert_eq!(
            client_address(lb, "198.51.100.1:5000", &t),
            ip("198.51.100.1")
        );
        assert_eq!(
            client_address(lb, "198.51.100.1, unknown, 10.0.0.5", &t),
            ip("10.0.0.5")
        );
        assert_eq!(client_address(lb, "junk", &t), lb);
    }
}
