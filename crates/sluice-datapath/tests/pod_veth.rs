//! The pod datapath on real devices (root): a node namespace and two pod
//! namespaces joined by veth pairs, the programs pinned under a throwaway
//! /sys/fs/bpf/sluice-e2e-* directory and attached through PodDatapath to
//! the host-side veths, real TCP between the pods.
//!
//! The node namespace does not forward (ip_forward stays 0), so a pod can
//! reach the other only through the datapath's redirect into the peer.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::require_root;
use sluice_datapath::pod::{install_devices, EndpointEntry, PodDatapath};
use sluice_datapath::KernelMaps;
use sluice_lb::{BackendKey, FrontendKey, LbMaps, MapOp, Protocol, Scope, SvcKey, SvcVal};
use sluice_testbed::netns::Netns;

/// Removes every pin (detaching the links) on drop, also on failure.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        if let Err(e) = sluice_datapath::uninstall(&self.0) {
            eprintln!("removing {}: {e}", self.0.display());
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// ifindex and MAC of a device, from `ip -o link show dev NAME` in `ns`.
fn link_info(ns: &Netns, dev: &str) -> (u32, [u8; 6]) {
    let out = ns.ip(&["-o", "link", "show", "dev", dev]).unwrap();
    let ifindex = out.split(':').next().unwrap().trim().parse().unwrap();
    let mac_str = out.split("link/ether ").nth(1).unwrap().split_whitespace().next().unwrap();
    let mut mac = [0u8; 6];
    for (i, b) in mac_str.split(':').enumerate() {
        mac[i] = u8::from_str_radix(b, 16).unwrap();
    }
    (ifindex, mac)
}

struct PodNs {
    ns: Netns,
    host_dev: String,
    ip4: IpAddr,
    ip6: IpAddr,
    entry: EndpointEntry,
}

const GW4: &str = "169.254.1.1";
const GW6: &str = "fe80::1";

/// A pod namespace with eth0, whose host side `host_dev` is in `node`; the
/// pod routes everything to a gateway whose MAC is the host side's.
fn make_pod(node: &Netns, id: u32, host_dev: &str, ip4: &str, ip6: &str) -> PodNs {
    let ns = Netns::new("sl-pod").unwrap();
    node.ip(&["link", "add", host_dev, "type", "veth", "peer", "name", "eth0", "netns", ns.name()]).unwrap();
    node.ip(&["link", "set", host_dev, "up"]).unwrap();
    let (host_ifindex, host_mac) = link_info(node, host_dev);
    let (_, pod_mac) = link_info(&ns, "eth0");
    let hm = host_mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    ns.ip_batch(&[
        format!("addr add {ip4}/32 dev eth0"),
        format!("addr add {ip6}/128 dev eth0 nodad"),
        "link set eth0 up".to_string(),
        format!("neigh add {GW4} lladdr {hm} dev eth0 nud permanent"),
        format!("neigh add {GW6} lladdr {hm} dev eth0 nud permanent"),
        format!("route add default via {GW4} dev eth0 onlink"),
        format!("route add ::/0 via {GW6} dev eth0"),
    ])
    .unwrap();
    PodNs {
        ns,
        host_dev: host_dev.to_string(),
        ip4: ip4.parse().unwrap(),
        ip6: ip6.parse().unwrap(),
        entry: EndpointEntry { id, host_ifindex, host_mac, pod_mac },
    }
}

fn metric(pin_dir: &Path, name: &str) -> u64 {
    KernelMaps::open(pin_dir).unwrap().metrics().unwrap().into_iter().find(|m| m.name == name).unwrap().value
}

/// An echo server in `pod` on `addr`: each connection gets its first
/// message back. Runs until the process ends (the namespace goes with it).
fn echo_server(pod: &PodNs, addr: SocketAddr) {
    let l = pod.ns.enter(|| TcpListener::bind(addr)).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 64];
            if let Ok(n) = s.read(&mut buf) {
                let _ = s.write_all(&buf[..n]);
            }
        }
    });
}

/// Connect from `pod` to `dst`, send a message and read the echo; returns
/// the peer address the client's socket reports.
fn echo_from(pod: &PodNs, dst: SocketAddr, timeout: Duration) -> std::io::Result<SocketAddr> {
    pod.ns.enter(|| {
        let mut s = TcpStream::connect_timeout(&dst, timeout)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"hello through the pod datapath")?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf)?;
        assert_eq!(&buf[..n], b"hello through the pod datapath");
        s.peer_addr()
    })
}

#[test]
fn tcp_between_pods_through_redirect_peer_and_a_service() {
    require_root();
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/sluice-e2e-pod-{}", std::process::id()));
    let pins = Pins(pin_dir.clone());
    let node = Netns::new("sl-node").unwrap();
    let cookie = node.enter(sluice_datapath::fsutil::netns_cookie).unwrap();
    install_devices(&pin_dir, cookie).expect("installing the pod and host programs");
    let pd = PodDatapath::open(&pin_dir).unwrap();

    let n = sluice_testbed::next_id();
    let a = make_pod(&node, 1, &format!("sla{n}"), "10.77.0.10", "fd00:77::10");
    let b = make_pod(&node, 2, &format!("slb{n}"), "10.77.0.20", "fd00:77::20");
    echo_server(&b, SocketAddr::new(b.ip4, 8080));
    echo_server(&b, SocketAddr::new(b.ip6, 8080));
    let to_b4 = SocketAddr::new(b.ip4, 8080);

    // Control: without the datapath the node does not forward.
    assert_eq!(node.sysctl_get("net.ipv4.ip_forward").unwrap().trim(), "0");
    assert!(echo_from(&a, to_b4, Duration::from_millis(500)).is_err(), "pods reach each other without the datapath");

    for p in [&a, &b] {
        node.enter(|| pd.attach(&p.host_dev, p.entry.host_ifindex)).unwrap();
        pd.set_endpoint(p.ip4, &p.entry).unwrap();
        pd.set_endpoint(p.ip6, &p.entry).unwrap();
    }
    // Attaching again is a no-op swap of the program.
    node.enter(|| pd.attach(&a.host_dev, a.entry.host_ifindex)).unwrap();
    let mut want = vec![a.host_dev.clone(), b.host_dev.clone()];
    want.sort();
    assert_eq!(node.enter(|| pd.attached()), want);

    let before = metric(&pin_dir, "pod_redirect_peer");
    for dst in [to_b4, SocketAddr::new(b.ip6, 8080)] {
        let peer = echo_from(&a, dst, Duration::from_secs(3)).unwrap_or_else(|e| panic!("pod A to {dst}: {e}"));
        assert_eq!(peer, dst);
    }
    let moved = metric(&pin_dir, "pod_redirect_peer") - before;
    // Each connection: SYN, SYN-ACK, ACKs, data both ways, FINs.
    assert!(moved >= 10, "pod_redirect_peer moved by {moved}");

    // An agent restart loads the programs again: the pinned maps are
    // reused, and attaching again (as the agent does for every endpoint it
    // knows) replaces the programs of the pods' tc filters in place.
    let (adopted, links) = install_devices(&pin_dir, cookie).expect("installing again");
    assert!(adopted.iter().any(|m| m == "sl_ep_v1"), "{adopted:?}");
    assert!(links.is_empty(), "pod devices have tc filters, not pinned links: {links:?}");
    for p in [&a, &b] {
        node.enter(|| pd.attach(&p.host_dev, p.entry.host_ifindex)).unwrap();
    }
    assert_eq!(node.enter(|| pd.attached()), want);
    assert_eq!(pd.endpoints().unwrap().len(), 4);
    let before = metric(&pin_dir, "pod_redirect_peer");
    echo_from(&a, to_b4, Duration::from_secs(3)).expect("pod A to pod B after the restart");
    assert!(metric(&pin_dir, "pod_redirect_peer") > before);

    // A service whose backend is pod B: translated per packet (the pods
    // are not in a cgroup with socket hooks), real checksums on the wire.
    let vip: SocketAddr = "10.96.77.7:80".parse().unwrap();
    let frontend = FrontendKey { addr: vip.ip(), port: 80, proto: Protocol::TCP, scope: Scope::Vip };
    KernelMaps::open(&pin_dir)
        .unwrap()
        .apply(&[
            MapOp::UpsertBackend(7, BackendKey { addr: b.ip4, port: 8080, proto: Protocol::TCP }),
            MapOp::UpsertRevNat(7, frontend),
            MapOp::UpsertService(SvcKey { frontend, slot: 1 }, SvcVal { backend_id: 7, count: 0, rev_nat_id: 7, affinity_timeout: 0, flags: 0 }),
            MapOp::UpsertService(SvcKey { frontend, slot: 0 }, SvcVal { backend_id: 0, count: 1, rev_nat_id: 7, affinity_timeout: 0, flags: 0 }),
        ])
        .unwrap();
    let dnat = metric(&pin_dir, "svc_dnat");
    let peer = echo_from(&a, vip, Duration::from_secs(3)).unwrap_or_else(|e| panic!("pod A to service {vip}: {e}"));
    assert_eq!(peer, vip, "the client sees the VIP");
    assert!(metric(&pin_dir, "svc_dnat") > dnat);
    assert!(metric(&pin_dir, "svc_rev_dnat") > 0);

    // Detach: the filters go, the pods are cut off again.
    for p in [&a, &b] {
        node.enter(|| pd.detach(&p.host_dev)).unwrap();
    }
    node.enter(|| pd.detach(&a.host_dev)).unwrap(); // nothing there: Ok
    assert!(node.enter(|| pd.attached()).is_empty());
    assert!(echo_from(&a, to_b4, Duration::from_millis(500)).is_err(), "still connected after detach");

    drop(a);
    drop(b);
    drop(node);
    drop(pins);
    assert!(!pin_dir.exists(), "{} left behind", pin_dir.display());
}
