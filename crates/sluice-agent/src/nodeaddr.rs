//! The node's own addresses, where NodePorts are reachable.

use std::collections::BTreeSet;
use std::net::IpAddr;

/// Every address of the agent's network namespace except loopback (which
/// the datapath handles itself) and IPv6 link-local addresses.
pub fn node_addresses() -> std::io::Result<BTreeSet<IpAddr>> {
    let mut out = BTreeSet::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)? {
        let Some(addr) = ifa.address else { continue };
        let ip = if let Some(v4) = addr.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        let link_local = matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
        if !ip.is_loopback() && !link_local && !ip.is_unspecified() {
            out.insert(ip);
        }
    }
    Ok(out)
}
