//! A node namespace with pods behind it.
//!
//! ```text
//!   pod0 (198.18.1.10, fd00:5c:1::10) --eth0/v0--+
//!   pod1 (198.18.1.11, fd00:5c:1::11) --eth0/v1--+-- node (gateway 198.18.0.1 / fd00:5c::1,
//!   ...                                          |         node address 198.18.255.1 / fd00:5c:ff::1)
//! ```
//! Pods route everything via the node; the node routes each pod's /32 and
//! /128 to its veth. Nothing connects to the host's namespace.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::netns::Netns;

pub const GW4: &str = "198.18.0.1";
pub const GW6: &str = "fd00:5c::1";

pub struct Pod {
    pub netns: Netns,
    pub name: String,
    pub ip4: Ipv4Addr,
    pub ip6: Ipv6Addr,
    /// The veth end in the node namespace.
    pub host_veth: String,
}

pub struct Topology {
    // Pods first: they are dropped (deleted) before the node.
    pods: Vec<Pod>,
    node: Netns,
    name: String,
}

impl Topology {
    pub fn new(name: &str, pods: usize) -> anyhow::Result<Topology> {
        let node = Netns::new(&format!("{name}-node"))?;
        node.sysctl("net.ipv4.ip_forward", "1")?;
        node.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        // The node's own address lives on lo (no dummy driver needed).
        node.ip(&["addr", "add", "198.18.255.1/32", "dev", "lo"])?;
        node.ip(&["-6", "addr", "add", "fd00:5c:ff::1/128", "dev", "lo", "nodad"])?;
        let mut t = Topology { pods: Vec::new(), node, name: name.to_string() };
        t.add_pods(pods)?;
        Ok(t)
    }

    /// Add `n` more pods.
    pub fn add_pods(&mut self, n: usize) -> anyhow::Result<()> {
        for _ in 0..n {
            let i = self.pods.len();
            if i >= 240 {
                anyhow::bail!("at most 240 pods per topology");
            }
            let netns = Netns::new(&format!("{}-pod{i}", self.name))?;
            let host_veth = format!("v{i}");
            let ip4 = Ipv4Addr::new(198, 18, 1, 10 + i as u8);
            let ip6: Ipv6Addr = format!("fd00:5c:1::{:x}", 0x10 + i).parse().unwrap();
            let node = &self.node;
            node.ip(&["link", "add", &host_veth, "type", "veth", "peer", "name", "eth0", "netns", netns.name()])?;
            node.ip(&["addr", "add", &format!("{GW4}/32"), "dev", &host_veth])?;
            node.ip(&["-6", "addr", "add", &format!("{GW6}/128"), "dev", &host_veth, "nodad"])?;
            node.ip(&["link", "set", &host_veth, "up"])?;
            node.ip(&["route", "add", &format!("{ip4}/32"), "dev", &host_veth])?;
            node.ip(&["-6", "route", "add", &format!("{ip6}/128"), "dev", &host_veth])?;
            netns.ip(&["addr", "add", &format!("{ip4}/32"), "dev", "eth0"])?;
            netns.ip(&["-6", "addr", "add", &format!("{ip6}/128"), "dev", "eth0", "nodad"])?;
            netns.ip(&["link", "set", "eth0", "up"])?;
            netns.ip(&["route", "add", GW4, "dev", "eth0"])?;
            netns.ip(&["route", "add", "default", "via", GW4, "dev", "eth0"])?;
            netns.ip(&["-6", "route", "add", GW6, "dev", "eth0"])?;
            netns.ip(&["-6", "route", "add", "default", "via", GW6, "dev", "eth0"])?;
            self.pods.push(Pod { netns, name: format!("pod{i}"), ip4, ip6, host_veth });
        }
        Ok(())
    }

    pub fn node(&self) -> &Netns {
        &self.node
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    pub fn node_ip4(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 255, 1)
    }

    pub fn node_ip6(&self) -> Ipv6Addr {
        "fd00:5c:ff::1".parse().unwrap()
    }
}
