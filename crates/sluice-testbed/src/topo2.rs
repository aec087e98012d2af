//! Two nodes, a client and an "external network" between them, for the
//! per-packet NodePort paths (traffic arriving at a node's external device).
//!
//! ```text
//!                         fabric (netns): bridge br0, no address
//!          +----------------------+----------------------+
//!        fc0                    fn1                    fn2          (bridge ports)
//!          |                      |                      |
//!   client eth0            node1 eth0              node2 eth0
//!   198.18.200.2/24        198.18.200.11/24        198.18.200.12/24
//!   fd00:5c:c8::2/64       fd00:5c:c8::11/64       fd00:5c:c8::12/64
//!   default via .11        link0 198.18.210.1/30 --- link0 198.18.210.2/30
//!   (and ::11)                   fd00:5c:d2::1/126     fd00:5c:d2::2/126
//!                          pods 198.18.101.0/24    pods 198.18.102.0/24
//!                               fd00:5c:65::/112        fd00:5c:66::/112
//!                          198.18.102.0/24 via .2  198.18.101.0/24 via .1
//!                          (link0), same for v6    (link0), same for v6
//! ```
//!
//! Each node forwards (v4 and v6), with rp_filter off: with SNAT to the
//! node's eth0 address a reply may come back over the fabric while the
//! request went over link0. The client's only routes are its fabric subnet
//! and defaults via node1, so whatever it sends to a service address (an
//! external IP, a load-balancer IP) goes to node1, as a router upstream of
//! a cluster would send it.
//!
//! Plain pods ([`TwoNode::add_plain_pod`]) hang off a node as in
//! [`crate::topo`]: `eth0` in the pod, `vethp<i>` on the node, the pod's
//! address a /32 (/128) with a default route via an on-link gateway
//! (169.254.1.1 / fe80::1, held by every `vethp<i>`). Pods managed by Sluice
//! are created by its CNI plugin instead, run by the caller in the node
//! namespaces ([`TwoNode::node`]).
//!
//! Every veth pair is created inside one of our namespaces with its peer
//! placed straight into another, so nothing ever appears in the host's
//! namespace. IPv6 duplicate address detection is off everywhere.
//!
//! XDP programs see packets before the stack fills in offloaded checksums,
//! and a frame XDP_REDIRECTed (or XDP_TXed) into a veth is dropped unless
//! the peer runs NAPI (GRO on, or an XDP program of its own): see
//! [`TwoNode::tx_checksum_off`] and [`TwoNode::gro_on`].

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Context};

use crate::netns::Netns;
use crate::topo::Pod;

pub const FABRIC_NET4: &str = "198.18.200.0/24";
pub const FABRIC_NET6: &str = "fd00:5c:c8::/64";
pub const CLIENT_IP4: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 2);
pub const CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5c, 0xc8, 0, 0, 0, 0, 2);
/// The bridge in the fabric namespace.
pub const BRIDGE: &str = "br0";
/// The nodes' external device (on the fabric) and their link to each other.
pub const EXTERNAL_DEV: &str = "eth0";
pub const LINK_DEV: &str = "link0";
/// The pods' gateway, on every node-side pod veth.
pub const POD_GATEWAY4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
pub const POD_GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// At most this many plain pods per node (base + 10 ..= base + 254).
pub const MAX_PODS: usize = 245;

/// One of the two nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeId {
    Node1,
    Node2,
}

impl NodeId {
    /// `node1` / `node2` (also the Kubernetes node name).
    pub fn name(self) -> &'static str {
        match self {
            NodeId::Node1 => "node1",
            NodeId::Node2 => "node2",
        }
    }

    fn index(self) -> u8 {
        match self {
            NodeId::Node1 => 1,
            NodeId::Node2 => 2,
        }
    }

    pub fn other(self) -> NodeId {
        match self {
            NodeId::Node1 => NodeId::Node2,
            NodeId::Node2 => NodeId::Node1,
        }
    }

    /// The node's address on the fabric (its eth0): 198.18.200.11 / .12.
    pub fn ip4(self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 200, 10 + self.index())
    }

    /// fd00:5c:c8::11 / ::12.
    pub fn ip6(self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x5c, 0xc8, 0, 0, 0, 0, 0x10 + self.index() as u16)
    }

    /// The node's end of link0: 198.18.210.1 / .2.
    pub fn link_ip4(self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 210, self.index())
    }

    /// fd00:5c:d2::1 / ::2.
    pub fn link_ip6(self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x5c, 0xd2, 0, 0, 0, 0, self.index() as u16)
    }

    /// 198.18.101.0/24 / 198.18.102.0/24.
    pub fn pod_cidr4(self) -> String {
        format!("198.18.{}.0/24", 100 + self.index())
    }

    /// fd00:5c:65::/112 / fd00:5c:66::/112.
    pub fn pod_cidr6(self) -> String {
        format!("fd00:5c:{:x}::/112", 100 + self.index())
    }

    /// Plain pod `i`'s address: pod CIDR base + (10 + i).
    pub fn pod_ip4(self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 100 + self.index(), (10 + i) as u8)
    }

    /// Plain pod `i`'s IPv6 address: base + (10 + i) (numerically, so pod 0
    /// is `::a`).
    pub fn pod_ip6(self, i: usize) -> Ipv6Addr {
        Ipv6Addr::new(
            0xfd00,
            0x5c,
            100 + self.index() as u16,
            0,
            0,
            0,
            0,
            (10 + i) as u16,
        )
    }
}

/// The two-node topology. Dropping it deletes the pods, the client, the
/// nodes and the fabric (each namespace takes its devices along).
#[derive(Debug)]
pub struct TwoNode {
    // Fields drop in declaration order: pods, client, nodes, fabric.
    pods: Vec<(NodeId, usize, Pod)>,
    client: Netns,
    node1: Netns,
    node2: Netns,
    fabric: Netns,
    name: String,
}

fn dad_off(ns: &Netns) -> anyhow::Result<()> {
    // Before any veth exists, so that link-local addresses skip DAD too.
    ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
    ns.sysctl("net.ipv6.conf.default.accept_dad", "0")
}

impl TwoNode {
    /// Build the topology; namespace names start with `name` (use an `sl-`
    /// prefix so leftovers are recognisable).
    pub fn new(name: &str) -> anyhow::Result<TwoNode> {
        let fabric = Netns::new(&format!("{name}-fabric"))?;
        let client = Netns::new(&format!("{name}-client"))?;
        let node1 = Netns::new(&format!("{name}-node1"))?;
        let node2 = Netns::new(&format!("{name}-node2"))?;
        for ns in [&fabric, &client, &node1, &node2] {
            dad_off(ns)?;
        }
        for ns in [&node1, &node2] {
            for (k, v) in [
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv6.conf.all.forwarding", "1"),
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
            ] {
                ns.sysctl(k, v)?;
            }
        }
        // The fabric: a bridge, no address, ports to the client and nodes.
        let mut cmds = vec![
            format!("link add {BRIDGE} type bridge stp_state 0 mcast_snooping 0"),
            format!("link set {BRIDGE} up"),
        ];
        for (port, peer) in [("fc0", &client), ("fn1", &node1), ("fn2", &node2)] {
            cmds.extend([
                format!(
                    "link add {port} type veth peer name {EXTERNAL_DEV} netns {}",
                    peer.name()
                ),
                format!("link set {port} master {BRIDGE}"),
                format!("link set {port} up"),
            ]);
        }
        fabric.ip_batch(&cmds).context("fabric bridge and ports")?;
        client
            .ip_batch(&[
                format!("link set {EXTERNAL_DEV} up"),
                format!("addr add {CLIENT_IP4}/24 dev {EXTERNAL_DEV}"),
                format!("addr add {CLIENT_IP6}/64 dev {EXTERNAL_DEV} nodad"),
                format!("route add default via {}", NodeId::Node1.ip4()),
                format!("route add ::/0 via {}", NodeId::Node1.ip6()),
            ])
            .context("client addresses and routes")?;
        // The routed link between the nodes.
        node1
            .ip(&[
                "link",
                "add",
                LINK_DEV,
                "type",
                "veth",
                "peer",
                "name",
                LINK_DEV,
                "netns",
                node2.name(),
            ])
            .context("link0 between the nodes")?;
        for (id, ns) in [(NodeId::Node1, &node1), (NodeId::Node2, &node2)] {
            let other = id.other();
            ns.ip_batch(&[
                format!("link set {EXTERNAL_DEV} up"),
                format!("addr add {}/24 dev {EXTERNAL_DEV}", id.ip4()),
                format!("addr add {}/64 dev {EXTERNAL_DEV} nodad", id.ip6()),
                format!("link set {LINK_DEV} up"),
                format!("addr add {}/30 dev {LINK_DEV}", id.link_ip4()),
                format!("addr add {}/126 dev {LINK_DEV} nodad", id.link_ip6()),
                format!(
                    "route add {} via {} dev {LINK_DEV}",
                    other.pod_cidr4(),
                    other.link_ip4()
                ),
                format!(
                    "route add {} via {} dev {LINK_DEV}",
                    other.pod_cidr6(),
                    other.link_ip6()
                ),
            ])
            .with_context(|| format!("{} addresses and routes", id.name()))?;
        }
        Ok(TwoNode {
            pods: Vec::new(),
            client,
            node1,
            node2,
            fabric,
            name: name.to_string(),
        })
    }

    /// A plain pod (no CNI plugin, no Sluice) on `node`, numbered `i`:
    /// address [`NodeId::pod_ip4`] / [`NodeId::pod_ip6`], host-side veth
    /// `vethp<i>` in the node. The topology owns it (see [`TwoNode::pod`]).
    pub fn add_plain_pod(&mut self, node: NodeId, i: usize) -> anyhow::Result<&Pod> {
        if i >= MAX_PODS {
            bail!("at most {MAX_PODS} plain pods per node");
        }
        if self.pods.iter().any(|(n, k, _)| *n == node && *k == i) {
            bail!("{} already has plain pod {i}", node.name());
        }
        let netns = Netns::new(&format!("{}-{}pod{i}", self.name, node.name()))?;
        dad_off(&netns)?;
        let (ip4, ip6, veth) = (node.pod_ip4(i), node.pod_ip6(i), format!("vethp{i}"));
        // On failure the pod's namespace drops here, taking the veth along.
        self.node(node)
            .ip_batch(&[
                format!(
                    "link add {veth} type veth peer name eth0 netns {}",
                    netns.name()
                ),
                format!("addr add {POD_GATEWAY4}/32 dev {veth}"),
                format!("addr add {POD_GATEWAY6}/64 dev {veth} nodad"),
                format!("link set {veth} up"),
                format!("route add {ip4}/32 dev {veth} src {}", node.ip4()),
                format!("route add {ip6}/128 dev {veth} src {}", node.ip6()),
            ])
            .with_context(|| format!("node side of {}'s pod {i}", node.name()))?;
        netns
            .ip_batch(&[
                "link set eth0 up".to_string(),
                format!("addr add {ip4}/32 dev eth0"),
                format!("addr add {ip6}/128 dev eth0 nodad"),
                format!("route add default via {POD_GATEWAY4} dev eth0 onlink src {ip4}"),
                format!("route add ::/0 via {POD_GATEWAY6} dev eth0 src {ip6}"),
            ])
            .with_context(|| format!("setting up {}'s pod {i}", node.name()))?;
        self.pods.push((
            node,
            i,
            Pod {
                netns,
                name: format!("{}-pod{i}", node.name()),
                ip4,
                ip6,
                host_veth: veth,
            },
        ));
        Ok(&self.pods.last().expect("just pushed").2)
    }

    /// Plain pod `i` of `node`, if added.
    pub fn pod(&self, node: NodeId, i: usize) -> Option<&Pod> {
        self.pods
            .iter()
            .find(|(n, k, _)| *n == node && *k == i)
            .map(|(_, _, p)| p)
    }

    /// Every plain pod with its node.
    pub fn pods(&self) -> impl Iterator<Item = (NodeId, &Pod)> {
        self.pods.iter().map(|(n, _, p)| (*n, p))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A node's namespace: run `sluice agent`, `sluice-cni`, `iptables-restore`
    /// or `nft` in it (its path is [`Netns::path`]).
    pub fn node(&self, id: NodeId) -> &Netns {
        match id {
            NodeId::Node1 => &self.node1,
            NodeId::Node2 => &self.node2,
        }
    }

    pub fn client(&self) -> &Netns {
        &self.client
    }

    pub fn fabric(&self) -> &Netns {
        &self.fabric
    }

    /// Every namespace of the topology (pods, client, nodes, fabric).
    pub fn namespaces(&self) -> Vec<&Netns> {
        let mut v: Vec<&Netns> = self.pods.iter().map(|(_, _, p)| &p.netns).collect();
        v.extend([&self.client, &self.node1, &self.node2, &self.fabric]);
        v
    }

    /// Turn transmit checksum offload off (`ethtool -K eth0 tx off`) on the
    /// client's eth0 and every plain pod's eth0, so that their packets carry
    /// full checksums when an XDP program (which runs before the checksum
    /// would be completed) rewrites them. Call again after adding pods.
    pub fn tx_checksum_off(&self) -> anyhow::Result<()> {
        ethtool(&self.client, EXTERNAL_DEV, &["tx", "off"])?;
        for (_, _, p) in &self.pods {
            ethtool(&p.netns, "eth0", &["tx", "off"])?;
        }
        Ok(())
    }

    /// Turn GRO on (`ethtool -K DEV gro on`) on every veth end that can
    /// receive a frame XDP_REDIRECTed or XDP_TXed by its peer: the fabric
    /// ports (XDP_TX from a node's eth0), link0 at both ends (redirect from
    /// eth0 to the other node), the nodes' and client's eth0 (redirect into
    /// the fabric) and both ends of every plain pod's veth. On a veth, GRO
    /// enables the NAPI receive path that takes such frames; without it
    /// (and without an XDP program on the peer) they are dropped.
    pub fn gro_on(&self) -> anyhow::Result<()> {
        for port in ["fc0", "fn1", "fn2"] {
            ethtool(&self.fabric, port, &["gro", "on"])?;
        }
        ethtool(&self.client, EXTERNAL_DEV, &["gro", "on"])?;
        for ns in [&self.node1, &self.node2] {
            ethtool(ns, EXTERNAL_DEV, &["gro", "on"])?;
            ethtool(ns, LINK_DEV, &["gro", "on"])?;
        }
        for (n, _, p) in &self.pods {
            ethtool(&p.netns, "eth0", &["gro", "on"])?;
            ethtool(self.node(*n), &p.host_veth, &["gro", "on"])?;
        }
        Ok(())
    }
}

/// Both nodes' pod CIDRs together (kube-proxy's `--cluster-cidr`).
pub const CLUSTER_CIDR4: &str = "198.18.96.0/19";
pub const CLUSTER_CIDR6: &str = "fd00:5c:60::/44";

/// kube-proxy's settings for `node` of this topology: the cluster CIDRs
/// above, and the node's fabric addresses as the NodePort addresses
/// (`--nodeport-addresses primary`).
pub fn kube_proxy_config(node: NodeId) -> crate::kubeproxy::KpConfig {
    crate::kubeproxy::KpConfig {
        cluster_cidr4: CLUSTER_CIDR4.to_string(),
        cluster_cidr6: CLUSTER_CIDR6.to_string(),
        nodeport_ips: vec![node.ip4().into(), node.ip6().into()],
        ..Default::default()
    }
}

/// `ethtool -K DEV settings...` inside `ns`.
pub fn ethtool(ns: &Netns, dev: &str, settings: &[&str]) -> anyhow::Result<()> {
    let mut a = vec!["-K", dev];
    a.extend_from_slice(settings);
    ns.run("ethtool", &a).with_context(|| {
        format!(
            "ethtool -K {dev} {} in {} (is ethtool installed? scripts/setup.sh)",
            settings.join(" "),
            ns.name()
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::NodeId;

    #[test]
    fn addresses() {
        let (n1, n2) = (NodeId::Node1, NodeId::Node2);
        assert_eq!(n1.ip4().to_string(), "198.18.200.11");
        assert_eq!(n2.ip6().to_string(), "fd00:5c:c8::12");
        assert_eq!(n1.link_ip6().to_string(), "fd00:5c:d2::1");
        assert_eq!(n2.link_ip4().to_string(), "198.18.210.2");
        assert_eq!(n1.pod_cidr4(), "198.18.101.0/24");
        assert_eq!(n2.pod_cidr6(), "fd00:5c:66::/112");
        assert_eq!(n2.pod_ip4(0).to_string(), "198.18.102.10");
        assert_eq!(n1.pod_ip6(0).to_string(), "fd00:5c:65::a");
    }
}
