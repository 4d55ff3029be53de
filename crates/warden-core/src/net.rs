//! Network destinations as the manifest writes them, and which addresses are public: shared by
//! the manifest's validation and the sandbox's egress proxy (no I/O here).

use std::net::{IpAddr, Ipv4Addr};

/// Why a destination or network as the manifest writes it does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NetParseError {
    /// `host:port` with something else than a port after the colon.
    #[error("`{rule}`: `{port}` is not a port")]
    Port {
        /// The rule as written.
        rule: String,
        /// What stood for the port.
        port: String,
    },
    /// A host that is not a host name or an IP address.
    #[error(
        "`{0}`: a host is letters, digits, `-` and `.` (or an IP address), optionally `*.` first"
    )]
    Host(String),
    /// A network without `/prefix`.
    #[error("`{0}` is not addr/prefix")]
    NotANetwork(String),
    /// A network whose address is not an IP address.
    #[error("`{0}` is not an IP address")]
    Address(String),
    /// A prefix longer than the address.
    #[error("`{prefix}` is not a prefix length for {addr}")]
    Prefix {
        /// The prefix as written.
        prefix: String,
        /// The address.
        addr: String,
    },
}

/// An allowed destination: `host` exactly, or `*.suffix` for its subdomains; any port when
/// `port` is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRule {
    /// The host (lower case) or `*.suffix`.
    pub host: String,
    /// The port.
    pub port: Option<u16>,
}

impl HostRule {
    /// Parses `host`, `host:port`, `*.suffix` or `*.suffix:port`.
    ///
    /// # Errors
    /// [`NetParseError`] for anything else, with the reason.
    pub fn parse(s: &str) -> Result<HostRule, NetParseError> {
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => (
                h,
                Some(p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                    NetParseError::Port {
                        rule: s.to_owned(),
                        port: p.to_owned(),
                    }
                })?),
            ),
            None => (s, None),
        };
        let name = host.strip_prefix("*.").unwrap_or(host);
        if !valid_host(name) {
            return Err(NetParseError::Host(s.to_owned()));
        }
        Ok(HostRule {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// Whether it allows `host` (lower case) on `port`.
    #[must_use]
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        match self.host.strip_prefix("*.") {
            Some(suffix) => host
                .strip_suffix(suffix)
                .is_some_and(|head| head.ends_with('.') && head.len() > 1),
            None => self.host == host,
        }
    }
}

/// Whether `h` is a plausible host name (letters, digits, `-`, `.`).
#[must_use]
pub fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !h.starts_with('.')
        && !h.ends_with('.')
}

/// A network the operator allows despite being non-public (an internal API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    /// The network address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl Net {
    /// Parses `addr/prefix`.
    ///
    /// # Errors
    /// [`NetParseError`] for anything else.
    pub fn parse(s: &str) -> Result<Net, NetParseError> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| NetParseError::NotANetwork(s.to_owned()))?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| NetParseError::Address(a.to_owned()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix =
            p.parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| NetParseError::Prefix {
                    prefix: p.to_owned(),
                    addr: a.to_owned(),
                })?;
        Ok(Net { addr, prefix })
    }

    /// Whether `ip` is in it.
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4-mapped answer is the IPv4 address it maps.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(i) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(i) & mask
            }
            _ => false,
        }
    }
}

/// Why `ip` is not a public address, or `None` if it is.
#[must_use]
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return non_public_v4(v4);
            }
            let s = v6.segments();
            let first = s.first().copied().unwrap_or(0);
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if first & 0xfe00 == 0xfc00 {
                Some("unique local (fc00::/7, incl. fd00:ec2::254)")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if first & 0xff00 == 0xff00 {
                Some("multicast")
            } else if first == 0x2001 && s.get(1) == Some(&0x0db8) {
                Some("documentation")
            } else if first & 0xffc0 == 0xfec0 {
                Some("site-local (fec0::/10)")
            } else if first == 0x0064 && s.get(1) == Some(&0xff9b) {
                // The well-known NAT64 prefix (64:ff9b::/96): judge the embedded IPv4
                // address. The rest of 64:ff9b::/32 (local-use 64:ff9b:1::/48) is private.
                if s.iter().skip(2).take(4).all(|x| *x == 0) {
                    let low = u32::try_from(u128::from(v6) & u128::from(u32::MAX)).unwrap_or(0);
                    non_public_v4(Ipv4Addr::from(low))
                } else {
                    Some("local-use NAT64 (64:ff9b:1::/48)")
                }
            } else if first == 0x2002 {
                Some("6to4 (2002::/16): tunnels to an embedded IPv4 address")
            } else if first == 0x2001 && s.get(1) == Some(&0) {
                Some("Teredo (2001::/32): tunnels to an embedded IPv4 address")
            } else if first == 0x0100 && s.iter().skip(1).take(3).all(|x| *x == 0) {
                Some("discard (100::/64)")
            } else if s.iter().take(6).all(|x| *x == 0)
                || (s.iter().take(4).all(|x| *x == 0) && s.get(4) == Some(&0xffff))
            {
                Some("IPv4-compatible or IPv4-translated")
            } else {
                None
            }
        }
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private (RFC 1918)")
    } else if ip.is_link_local() {
        Some("link-local (169.254.0.0/16, the metadata service)")
    } else if a == 100 && (64..128).contains(&b) {
        Some("carrier-grade NAT (100.64.0.0/10)")
    } else if a == 0 || ip.is_broadcast() || a >= 224 {
        Some("reserved, broadcast or multicast")
    } else if (a == 192 && b == 0 && c == 0) || (a == 198 && (18..20).contains(&b)) {
        Some("reserved (192.0.0.0/24, 198.18.0.0/15)")
    } else if ip.is_documentation() {
        Some("documentation")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_private_and_ula_addresses_are_not_public() {
        for ip in [
            "169.254.169.254",
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::808:808",
            "2002:a9fe:a9fe::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "fec0::1",
            "100::1",
            "::ffff:0:a9fe:a9fe",
        ] {
            assert!(non_public(ip.parse().unwrap()).is_some(), "{ip}");
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "2606:4700:4700::1111",
            "64:ff9b::808:808",
        ] {
            assert_eq!(non_public(ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[test]
    fn host_rules_match_exact_hosts_subdomains_and_ports() {
        let r = HostRule::parse("*.example.com:443").unwrap();
        assert!(r.matches("api.example.com", 443));
        assert!(!r.matches("example.com", 443));
        assert!(!r.matches("evilexample.com", 443));
        assert!(!r.matches("api.example.com", 80));
        let e = HostRule::parse("api.github.com").unwrap();
        assert!(e.matches("api.github.com", 8443));
        assert!(HostRule::parse("a b").is_err());
        assert!(HostRule::parse("host:0").is_err());
        assert!(HostRule::parse("host:http").is_err());
    }

    #[test]
    fn networks_contain_their_addresses() {
        let n = Net::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.9.9.9".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        let one = Net::parse("127.0.0.1/32").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        assert!(Net::parse("10.0.0.0/33").is_err());
        assert!(Net::parse("10.0.0.0").is_err());
        assert!(Net::parse("::/0").unwrap().contains("::1".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.2.3".parse().unwrap()));
    }
}
