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

/// This node's name as Kubernetes spells it by default: the host name
/// (uname's nodename), in lower case. `--node-name` overrides it; it is
/// what `externalTrafficPolicy: Local` compares endpoints' `nodeName` with.
pub fn host_node_name() -> std::io::Result<String> {
    // SAFETY: `uname` fills the zeroed struct it is given; every field is a
    // NUL-terminated array of c_char (the kernel guarantees the NUL).
    let name = unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        std::ffi::CStr::from_ptr(u.nodename.as_ptr()).to_string_lossy().into_owned()
    };
    Ok(name.to_ascii_lowercase())
}

/// A node name Kubernetes would accept (an RFC 1123 subdomain).
pub fn check_node_name(name: &str) -> Result<(), String> {
    if sluice_model::meta::is_dns_subdomain(name) {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid node name (lower-case letters, digits, '-' and '.', at most 253 characters)"))
    }
}
