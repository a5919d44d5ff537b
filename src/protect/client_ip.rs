//! The client's address: the TCP peer, unless the peer is a proxy we trust, in which
//! case `X-Forwarded-For` is read from the right, skipping our own proxies, and the
//! first address that is not one of them is the client. A header from anyone else is
//! ignored: it is whatever the client wants it to be.

use std::net::IpAddr;
use std::str::FromStr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The `--trusted-proxy` networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(networks: Vec<IpNet>) -> Self {
        TrustedProxies(networks)
    }

    /// Parses `10.0.0.0/8`, or a single address (`10.1.2.3`, a /32 or /128).
    pub fn parse_network(text: &str) -> Result<IpNet, String> {
        let text = text.trim();
        IpNet::from_str(text)
            .or_else(|_| IpAddr::from_str(text).map(IpNet::from))
            .map_err(|_| format!("{text:?} is not a network (e.g. 10.0.0.0/8) or an address"))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`, from a dual-stack socket) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The client of a request that came from `peer`.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let peer = canonical(peer);
    if trusted.is_empty() || !trusted.trusts(peer) {
        return peer;
    }
    // Every X-Forwarded-For line, in order, is one list; the nearest hop is last.
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .rev()
        .flat_map(|v| v.to_str().unwrap_or("garbage").rsplit(','));
    let mut client = peer;
    for hop in hops {
        match IpAddr::from_str(hop.trim()) {
            Ok(ip) => {
                client = canonical(ip);
                if !trusted.trusts(client) {
                    return client;
                }
            }
            // Garbage where a hop should be: the last trusted proxy is all we know.
            Err(_) => return client,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(lines: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append("x-forwarded-for", HeaderValue::from_str(line).unwrap());
        }
        headers
    }

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(
            nets.iter()
                .map(|n| TrustedProxies::parse_network(n).unwrap())
                .collect(),
        )
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_header_is_ignored_unless_the_peer_is_a_trusted_proxy() {
        let forged = headers(&["6.6.6.6"]);
        assert_eq!(
            client_ip(ip("1.2.3.4"), &forged, &trusted(&[])),
            ip("1.2.3.4")
        );
        assert_eq!(
            client_ip(ip("1.2.3.4"), &forged, &trusted(&["10.0.0.0/8"])),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn the_first_untrusted_hop_from_the_right_is_the_client() {
        let proxies = trusted(&["10.0.0.0/8", "192.168.1.1"]);
        // The client wrote its own "6.6.6.6"; our proxies appended what they saw.
        let chain = headers(&["6.6.6.6, 203.0.113.7", "192.168.1.1"]);
        assert_eq!(
            client_ip(ip("10.0.0.2"), &chain, &proxies),
            ip("203.0.113.7")
        );
        // No header: the proxy itself.
        assert_eq!(
            client_ip(ip("10.0.0.2"), &HeaderMap::new(), &proxies),
            ip("10.0.0.2")
        );
        // A garbage hop stops the walk at the last trusted address.
        let garbage = headers(&["203.0.113.7, not-an-ip"]);
        assert_eq!(
            client_ip(ip("10.0.0.2"), &garbage, &proxies),
            ip("10.0.0.2")
        );
        // Mapped addresses count as IPv4.
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.2"), &headers(&["203.0.113.9"]), &proxies),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn networks_parse_as_cidrs_or_addresses() {
        assert!(TrustedProxies::parse_network("10.0.0.0/8").is_ok());
        assert!(TrustedProxies::parse_network("::1").is_ok());
        assert!(TrustedProxies::parse_network("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse_network("proxy").is_err());
    }
}
