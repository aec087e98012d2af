//! The pod and host tc programs with real packets through BPF_PROG_TEST_RUN
//! (root). Each test loads the objects without pins, into fresh maps, and
//! fills them through the agent's API (PodDatapath, KernelMaps).

mod common;

use std::net::{IpAddr, SocketAddr};

use common::*;
use sluice_datapath::pod::{
    DeviceProgram::{FromPod, HostEgress, HostIngress, ToPod},
    EndpointEntry, LoadedDevices, NodeConfig, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT,
};
use sluice_lb::{BackendKey, FrontendKey, LbMaps, MapOp, Protocol, Scope, SvcKey, SvcVal};

struct PodDef {
    v4: &'static str,
    v6: &'static str,
    entry: EndpointEntry,
}

const POD_A: PodDef = PodDef {
    v4: "10.1.0.10",
    v6: "fd00:1::10",
    entry: EndpointEntry { id: 1, host_ifindex: 11, host_mac: [0x02, 0xbb, 0, 0, 0, 0x0a], pod_mac: [0x02, 0xaa, 0, 0, 0, 0x0a] },
};
const POD_B: PodDef = PodDef {
    v4: "10.1.0.20",
    v6: "fd00:1::20",
    entry: EndpointEntry { id: 2, host_ifindex: 12, host_mac: [0x02, 0xbb, 0, 0, 0, 0x14], pod_mac: [0x02, 0xaa, 0, 0, 0, 0x14] },
};

/// Original MACs of a frame a pod sends to its gateway.
const POD_SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn setup() -> LoadedDevices {
    require_root();
    let d = LoadedDevices::load().expect("loading the pod and host objects");
    let pod = d.pod_datapath().unwrap();
    for p in [&POD_A, &POD_B] {
        pod.set_endpoint(ip(p.v4), &p.entry).unwrap();
        pod.set_endpoint(ip(p.v6), &p.entry).unwrap();
    }
    d
}

fn proto_of(p: u8) -> Protocol {
    if p == TCP {
        Protocol::TCP
    } else {
        Protocol::UDP
    }
}

/// A ClusterIP frontend with the given backends (ids chosen by the caller),
/// written as the agent writes it: backends, reverse NAT, slots, master.
fn set_service(d: &LoadedDevices, rev_nat_id: u32, vip: SocketAddr, proto: u8, backends: &[(u32, SocketAddr)]) {
    let mut maps = d.lb_maps().unwrap();
    let frontend = FrontendKey { addr: vip.ip(), port: vip.port(), proto: proto_of(proto), scope: Scope::Vip };
    let mut ops = Vec::new();
    for (id, b) in backends {
        ops.push(MapOp::UpsertBackend(*id, BackendKey { addr: b.ip(), port: b.port(), proto: proto_of(proto) }));
    }
    ops.push(MapOp::UpsertRevNat(rev_nat_id, frontend.clone()));
    for (i, (id, _)) in backends.iter().enumerate() {
        ops.push(MapOp::UpsertService(
            SvcKey { frontend: frontend.clone(), slot: i as u16 + 1 },
            SvcVal { backend_id: *id, count: 0, rev_nat_id, affinity_timeout: 0, flags: 0 },
        ));
    }
    ops.push(MapOp::UpsertService(
        SvcKey { frontend, slot: 0 },
        SvcVal { backend_id: 0, count: backends.len() as u32, rev_nat_id, affinity_timeout: 0, flags: 0 },
    ));
    maps.apply(&ops).unwrap();
}

fn delete_backend(d: &LoadedDevices, id: u32) {
    d.lb_maps().unwrap().apply(&[MapOp::DeleteBackend(id)]).unwrap();
}

/// Every (family, protocol) combination, with pod addresses of that family.
fn combos() -> Vec<(bool, u8)> {
    vec![(false, TCP), (false, UDP), (true, TCP), (true, UDP)]
}

fn addr(p: &PodDef, v6: bool) -> &'static str {
    if v6 {
        p.v6
    } else {
        p.v4
    }
}

fn label(v6: bool, proto: u8) -> String {
    format!("{}-{}", if v6 { "ipv6" } else { "ipv4" }, if proto == TCP { "tcp" } else { "udp" })
}

fn sock(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

// ---------------------------------------------------------------- (b) pods

#[test]
fn pod_to_local_pod_is_redirected_into_the_peer_with_its_macs() {
    let d = setup();
    for (v6, proto) in combos() {
        let input = Pkt::new(&sock(addr(&POD_A, v6), 40000).to_string(), &sock(addr(&POD_B, v6), 8080).to_string(), proto);
        let expected = input.clone().macs(POD_B.entry.pod_mac, POD_B.entry.host_mac);
        let fx = Fixture::new(
            format!("pod-to-local-pod-{}", label(v6, proto)),
            FromPod,
            input.build(),
            TC_ACT_REDIRECT,
            Expect::Bytes(expected.build()),
        );
        run(&d, &fx);
    }
    assert_eq!(metric(&d, "pod_redirect_peer"), 4);
    assert_eq!(metric(&d, "svc_dnat"), 0);
}

#[test]
fn pod_to_unknown_destination_passes_untouched() {
    let d = setup();
    for (v6, proto) in combos() {
        let dst = if v6 { "[2001:db8::1]:443" } else { "192.0.2.99:443" };
        let input = Pkt::new(&sock(addr(&POD_A, v6), 40000).to_string(), dst, proto);
        run(&d, &Fixture::new(format!("pod-to-unknown-{}", label(v6, proto)), FromPod, input.build(), TC_ACT_OK, Expect::Unchanged));
    }
    // Not IP at all: ARP request.
    let mut arp = vec![0xff; 6];
    arp.extend(POD_SRC_MAC);
    arp.extend([0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    arp.extend(POD_SRC_MAC);
    arp.extend([10, 1, 0, 10, 0, 0, 0, 0, 0, 0, 10, 1, 0, 1]);
    run(&d, &Fixture::new("pod-arp", FromPod, arp, TC_ACT_OK, Expect::Unchanged));
    assert_eq!(metric(&d, "pod_redirect_peer"), 0);
    assert_eq!(metric(&d, "drop_malformed"), 0);
}

#[test]
fn endpoints_round_trip_through_the_api() {
    let d = setup();
    let pod = d.pod_datapath().unwrap();
    let eps = pod.endpoints().unwrap();
    assert_eq!(eps.len(), 4);
    assert!(eps.contains(&(ip(POD_A.v6), POD_A.entry)));
    assert!(eps.contains(&(ip(POD_B.v4), POD_B.entry)));
    pod.delete_endpoint(ip(POD_B.v4)).unwrap();
    pod.delete_endpoint(ip(POD_B.v4)).unwrap(); // absent: still Ok
    assert_eq!(pod.endpoints().unwrap().len(), 3);
    // Gone from the map: no longer redirected.
    let input = Pkt::tcp(&sock(POD_A.v4, 40000).to_string(), &sock(POD_B.v4, 8080).to_string());
    run(&d, &Fixture::new("pod-to-deleted-endpoint", FromPod, input.build(), TC_ACT_OK, Expect::Unchanged));
}

#[test]
fn malformed_packets_are_dropped_at_pods_and_passed_at_the_node() {
    let d = setup();
    let good = Pkt::tcp(&sock(POD_A.v4, 40000).to_string(), &sock(POD_B.v4, 8080).to_string()).build();
    // IPv4 total length larger than the frame.
    let mut long_len = good.clone();
    long_len[16] = 0x05;
    // Frame cut inside the TCP header.
    let truncated = good[..14 + 20 + 10].to_vec();
    // IHL below 5.
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x44;
    // IPv6 payload length beyond the frame.
    let mut v6 = Pkt::udp(&sock(POD_A.v6, 40000).to_string(), &sock(POD_B.v6, 53).to_string()).build();
    v6[18] = 0x7f;
    let cases = [("ipv4-length", long_len), ("tcp-truncated", truncated), ("ipv4-ihl", bad_ihl), ("ipv6-length", v6)];
    for (name, f) in &cases {
        run(&d, &Fixture::new(format!("malformed-from-pod-{name}"), FromPod, f.clone(), TC_ACT_SHOT, Expect::Any));
        run(&d, &Fixture::new(format!("malformed-to-pod-{name}"), ToPod, f.clone(), TC_ACT_SHOT, Expect::Any));
    }
    assert_eq!(metric(&d, "drop_malformed"), 2 * cases.len() as u64);
    // The node's own devices never drop what they cannot parse.
    for (name, f) in &cases {
        run(&d, &Fixture::new(format!("malformed-host-egress-{name}"), HostEgress, f.clone(), TC_ACT_OK, Expect::Unchanged));
        run(&d, &Fixture::new(format!("malformed-host-ingress-{name}"), HostIngress, f.clone(), TC_ACT_OK, Expect::Unchanged));
    }
    assert_eq!(metric(&d, "host_malformed_passed"), 8);
    assert_eq!(metric(&d, "pod_redirect_peer"), 0);
}
