//! A node namespace with pod namespaces behind it.
//!
//! ```text
//!  pod i  (netns "<name>-pod<i>-<pid>-<n>")          node (netns "<name>-node-<pid>-<n>")
//!  eth0: 198.18.1.(10+i)/32                 veth pair  veth<i>: 198.18.0.1/32, fe80::1/64
//!        fd00:5c:1::(10+i)/128      <---------------->  routes 198.18.1.(10+i)/32, fd00:5c:1::(10+i)/128
//!  default via 198.18.0.1 onlink                        node address (dummy "node0", or lo where the
//!  ::/0 via fe80::1                                     dummy driver is missing): 198.18.255.1/32,
//!                                                       fd00:5c:ff::1/128; ip_forward on (v4 and v6)
//! ```
//!
//! The node also has a default route (v4 and v6) into a sink: `uplink0`, a
//! veth whose peer `uplink0p` stays down, so whatever is sent there is
//! dropped inside the node. Like on a real node, traffic to an address no
//! one has (say a service IP without rules) is thus routed, passes the
//! node's FORWARD/OUTPUT netfilter hooks (where kube-proxy rejects or drops
//! it) and then vanishes (a timeout), instead of failing at routing with
//! ENETUNREACH.
//!
//! (The pod's IPv6 host part repeats the IPv4 last octet's digits: pod 0 is
//! 198.18.1.10 and fd00:5c:1::10.) Pods reach each other and the node address
//! through the node, in both families. Each veth pair is created inside the
//! node namespace with its peer placed directly into the pod namespace, so
//! nothing ever appears in the host's namespace. IPv6 duplicate address
//! detection is off in every namespace, so all addresses work at once.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Context};

use crate::netns::Netns;

/// The node's address (on its dummy device, or on `lo`).
pub const NODE_IP4: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 1);
pub const NODE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5c, 0xff, 0, 0, 0, 0, 1);
/// The pods' gateway: on every node-side veth.
pub const GATEWAY4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// Where pod addresses come from (kube-proxy's `--cluster-cidr` for them).
pub const POD_CIDR4: &str = "198.18.1.0/24";
pub const POD_CIDR6: &str = "fd00:5c:1::/64";
/// The node's sink for traffic to unknown addresses (see the module docs).
pub const UPLINK: &str = "uplink0";
/// At most this many pods per topology (198.18.1.10 ..= 198.18.1.254).
pub const MAX_PODS: usize = 245;

/// The address of pod `i`.
pub fn pod_ip4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, (10 + i) as u8)
}

/// The IPv6 address of pod `i`: `fd00:5c:1::<10+i>`, the decimal digits of
/// the IPv4 address's last octet read as hex.
pub fn pod_ip6(i: usize) -> Ipv6Addr {
    let last =
        u16::from_str_radix(&(10 + i).to_string(), 16).expect("decimal digits are hex digits");
    Ipv6Addr::new(0xfd00, 0x5c, 1, 0, 0, 0, 0, last)
}

#[derive(Debug)]
pub struct Pod {
    pub netns: Netns,
    /// `pod<i>`.
    pub name: String,
    pub ip4: Ipv4Addr,
    pub ip6: Ipv6Addr,
    /// The pod's veth end in the node namespace (`veth<i>`); the pod's own
    /// end is `eth0`.
    pub host_veth: String,
}

/// Dropping it deletes the pods' namespaces (and so the veth pairs), then the
/// node's.
#[derive(Debug)]
pub struct Topology {
    // Fields drop in declaration order: pods before the node.
    pods: Vec<Pod>,
    node: Netns,
    name: String,
    node_dev: String,
}

impl Topology {
    /// A node and `pods` pods, named after `name`.
    pub fn new(name: &str, pods: usize) -> anyhow::Result<Topology> {
        let node = Netns::new(&format!("{name}-node"))?;
        for (k, v) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
        ] {
            node.sysctl(k, v)?;
        }
        // A dummy device holds the node's address where the driver exists;
        // otherwise lo does (same effect: a local address not tied to a pod).
        let node_dev = if node.ip(&["link", "add", "node0", "type", "dummy"]).is_ok() {
            node.ip(&["link", "set", "node0", "up"])?;
            "node0"
        } else {
            "lo"
        };
        node.ip_batch(&[
            format!("addr add {NODE_IP4}/32 dev {node_dev}"),
            format!("addr add {NODE_IP6}/128 dev {node_dev} nodad"),
            format!("link add {UPLINK} type veth peer name {UPLINK}p"),
            format!("link set {UPLINK} up"),
            format!("route add default dev {UPLINK}"),
            format!("route add ::/0 dev {UPLINK}"),
        ])
        .context("node addresses and default route")?;
        let mut t = Topology {
            pods: Vec::new(),
            node,
            name: name.to_string(),
            node_dev: node_dev.to_string(),
        };
        t.add_pods(pods)?;
        Ok(t)
    }

    /// Add `n` more pods (numbered on from the existing ones).
    pub fn add_pods(&mut self, n: usize) -> anyhow::Result<()> {
        let first = self.pods.len();
        if first + n > MAX_PODS {
            bail!("at most {MAX_PODS} pods per topology");
        }
        let mut new = Vec::with_capacity(n);
        let mut node_cmds = Vec::new();
        for i in first..first + n {
            let netns = Netns::new(&format!("{}-pod{i}", self.name))?;
            // Before eth0 exists, so that its link-local address skips DAD too.
            netns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
            netns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
            let (ip4, ip6, veth) = (pod_ip4(i), pod_ip6(i), format!("veth{i}"));
            node_cmds.extend([
                format!(
                    "link add {veth} type veth peer name eth0 netns {}",
                    netns.name()
                ),
                format!("addr add {GATEWAY4}/32 dev {veth}"),
                format!("addr add {GATEWAY6}/64 dev {veth} nodad"),
                format!("link set {veth} up"),
                format!("route add {ip4}/32 dev {veth} src {NODE_IP4}"),
                format!("route add {ip6}/128 dev {veth} src {NODE_IP6}"),
            ]);
            new.push(Pod {
                netns,
                name: format!("pod{i}"),
                ip4,
                ip6,
                host_veth: veth,
            });
        }
        // On failure the new namespaces drop here, taking their veths along.
        self.node
            .ip_batch(&node_cmds)
            .context("node side of the pods' veth pairs")?;
        for p in &new {
            p.netns
                .ip_batch(&[
                    "link set eth0 up".to_string(),
                    format!("addr add {}/32 dev eth0", p.ip4),
                    format!("addr add {}/128 dev eth0 nodad", p.ip6),
                    format!(
                        "route add default via {GATEWAY4} dev eth0 onlink src {}",
                        p.ip4
                    ),
                    format!("route add ::/0 via {GATEWAY6} dev eth0 src {}", p.ip6),
                ])
                .with_context(|| format!("setting up {}", p.name))?;
        }
        self.pods.extend(new);
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn node(&self) -> &Netns {
        &self.node
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    pub fn pod(&self, i: usize) -> &Pod {
        &self.pods[i]
    }

    pub fn node_ip4(&self) -> Ipv4Addr {
        NODE_IP4
    }

    pub fn node_ip6(&self) -> Ipv6Addr {
        NODE_IP6
    }

    /// The device in the node namespace holding the node address: `node0`
    /// (a dummy) or `lo` where the dummy driver is not available.
    pub fn node_addr_dev(&self) -> &str {
        &self.node_dev
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pod_addresses() {
        assert_eq!(super::pod_ip4(0).to_string(), "198.18.1.10");
        assert_eq!(super::pod_ip6(0).to_string(), "fd00:5c:1::10");
        assert_eq!(super::pod_ip6(244).to_string(), "fd00:5c:1::254");
        assert_eq!(super::pod_ip4(244).to_string(), "198.18.1.254");
    }
}
