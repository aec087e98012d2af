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
    ops.push(MapOp::UpsertRevNat(rev_nat_id, frontend));
    for (i, (id, _)) in backends.iter().enumerate() {
        ops.push(MapOp::UpsertService(
            SvcKey { frontend, slot: i as u16 + 1 },
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

// ------------------------------------------------------------ (c) services

fn vip(v6: bool) -> &'static str {
    if v6 {
        "fd00:96::10"
    } else {
        "10.96.0.10"
    }
}

const REMOTE_V4: &str = "10.2.0.5";
const REMOTE_V6: &str = "fd00:2::5";

fn remote(v6: bool) -> &'static str {
    if v6 {
        REMOTE_V6
    } else {
        REMOTE_V4
    }
}

/// Service VIP:80 -> one backend at `backend`:8080, per family and protocol.
fn one_backend_services(d: &LoadedDevices, backend: impl Fn(bool) -> &'static str) {
    let mut id = 100;
    for (v6, proto) in combos() {
        id += 1;
        set_service(d, id, sock(vip(v6), 80), proto, &[(id, sock(backend(v6), 8080))]);
    }
}

fn checked(f: &[u8], what: &str) -> Parsed {
    parse_and_verify(f).unwrap_or_else(|e| {
        let p = write_pcap(what, &[f.to_vec()]);
        panic!("{what}: {e} (pcap: {})", p.display())
    })
}

#[test]
fn service_dnat_to_local_backend_and_reply_from_it() {
    let d = setup();
    one_backend_services(&d, |v6| addr(&POD_B, v6));
    for (v6, proto) in combos() {
        let l = label(v6, proto);
        let client = sock(addr(&POD_A, v6), 40000);
        let backend = sock(addr(&POD_B, v6), 8080);
        let front = sock(vip(v6), 80);

        let out = Pkt::new(&client.to_string(), &front.to_string(), proto);
        let expected = out.clone().with_dst(backend).macs(POD_B.entry.pod_mac, POD_B.entry.host_mac);
        let r = run(&d, &Fixture::new(format!("svc-dnat-local-{l}"), FromPod, out.build(), TC_ACT_REDIRECT, Expect::Bytes(expected.build())));
        let p = checked(&r.packet, &format!("svc-dnat-local-{l}"));
        assert_eq!((p.src, p.dst), (client, backend), "{l}");

        // The backend's reply leaves its own veth: source back to the VIP,
        // delivered straight to the client pod.
        let reply = Pkt::new(&backend.to_string(), &client.to_string(), proto);
        let expected = reply.clone().with_src(front).macs(POD_A.entry.pod_mac, POD_A.entry.host_mac);
        let r = run(&d, &Fixture::new(format!("svc-reply-from-pod-{l}"), FromPod, reply.build(), TC_ACT_REDIRECT, Expect::Bytes(expected.build())));
        let p = checked(&r.packet, &format!("svc-reply-from-pod-{l}"));
        assert_eq!((p.src, p.dst), (front, client), "{l}");
    }
    assert_eq!(metric(&d, "svc_dnat"), 4);
    assert_eq!(metric(&d, "svc_rev_dnat"), 4);
    assert_eq!(metric(&d, "pod_redirect_peer"), 8);
    // Each flow has a forward and a reverse entry naming each other.
    let ct = d.pod_datapath().unwrap().ct_entries().unwrap();
    assert_eq!(ct.len(), 8, "{ct:#?}");
    for e in ct.iter().filter(|e| !e.reverse) {
        let rev = ct.iter().find(|r| r.reverse && r.src == e.nat && r.dst == e.src && r.proto == e.proto);
        let rev = rev.unwrap_or_else(|| panic!("no reverse entry for {e:?}"));
        assert_eq!(rev.nat, e.dst);
        assert_eq!(rev.backend_id, e.backend_id);
    }
}

#[test]
fn service_dnat_to_remote_backend_and_reply_through_the_stack() {
    let d = setup();
    one_backend_services(&d, remote);
    for (v6, proto) in combos() {
        let l = label(v6, proto);
        let client = sock(addr(&POD_A, v6), 40001);
        let backend = sock(remote(v6), 8080);
        let front = sock(vip(v6), 80);

        // Not a local pod: translated and handed to the stack, MACs kept.
        let out = Pkt::new(&client.to_string(), &front.to_string(), proto);
        let expected = out.clone().with_dst(backend);
        let r = run(&d, &Fixture::new(format!("svc-dnat-remote-{l}"), FromPod, out.build(), TC_ACT_OK, Expect::Bytes(expected.build())));
        checked(&r.packet, &format!("svc-dnat-remote-{l}"));

        // The reply comes through the stack into the client's veth.
        let reply = Pkt::new(&backend.to_string(), &client.to_string(), proto).macs(POD_A.entry.pod_mac, POD_A.entry.host_mac);
        let expected = reply.clone().with_src(front);
        let r = run(&d, &Fixture::new(format!("svc-reply-to-pod-{l}"), ToPod, reply.build(), TC_ACT_OK, Expect::Bytes(expected.build())));
        let p = checked(&r.packet, &format!("svc-reply-to-pod-{l}"));
        assert_eq!((p.src, p.dst), (front, client));

        // A packet from that backend to another port of the client is not
        // the flow's reply: untouched.
        let other = Pkt::new(&backend.to_string(), &sock(addr(&POD_A, v6), 40999).to_string(), proto);
        run(&d, &Fixture::new(format!("svc-not-a-reply-{l}"), ToPod, other.build(), TC_ACT_OK, Expect::Unchanged));
    }
    assert_eq!(metric(&d, "svc_dnat"), 4);
    assert_eq!(metric(&d, "svc_rev_dnat"), 4);
    assert_eq!(metric(&d, "pod_redirect_peer"), 0);
}

#[test]
fn nodeport_at_a_node_address_is_translated_too() {
    let d = setup();
    let maps = d.lb_maps().unwrap();
    maps.set_node_addrs(&[ip("192.168.50.1"), ip("fd00:50::1")].into_iter().collect()).unwrap();
    let mut lb = d.lb_maps().unwrap();
    for (i, (v6, proto)) in combos().into_iter().enumerate() {
        let id = 200 + i as u32;
        let frontend = FrontendKey::node_port(v6, 30080, proto_of(proto));
        lb.apply(&[
            MapOp::UpsertBackend(id, BackendKey { addr: ip(addr(&POD_B, v6)), port: 8080, proto: proto_of(proto) }),
            MapOp::UpsertRevNat(id, frontend),
            MapOp::UpsertService(SvcKey { frontend, slot: 1 }, SvcVal { backend_id: id, count: 0, rev_nat_id: id, affinity_timeout: 0, flags: 2 }),
            MapOp::UpsertService(SvcKey { frontend, slot: 0 }, SvcVal { backend_id: 0, count: 1, rev_nat_id: id, affinity_timeout: 0, flags: 2 }),
        ])
        .unwrap();
        let node = if v6 { "fd00:50::1" } else { "192.168.50.1" };
        let client = sock(addr(&POD_A, v6), 40002);
        let out = Pkt::new(&client.to_string(), &sock(node, 30080).to_string(), proto);
        let expected = out.clone().with_dst(sock(addr(&POD_B, v6), 8080)).macs(POD_B.entry.pod_mac, POD_B.entry.host_mac);
        run(&d, &Fixture::new(format!("nodeport-{}", label(v6, proto)), FromPod, out.build(), TC_ACT_REDIRECT, Expect::Bytes(expected.build())));
        // The same port at an address that is not the node's: untouched.
        let other = Pkt::new(&client.to_string(), &sock(remote(v6), 30080).to_string(), proto);
        run(&d, &Fixture::new(format!("nodeport-elsewhere-{}", label(v6, proto)), FromPod, other.build(), TC_ACT_OK, Expect::Unchanged));
    }
    assert_eq!(metric(&d, "svc_dnat"), 4);
}

/// The backend a forward packet was sent to.
fn dnat_dst(d: &LoadedDevices, pkt: &Pkt, what: &str) -> SocketAddr {
    let r = d.run(FromPod, &pkt.build()).unwrap();
    assert_eq!(r.verdict, TC_ACT_OK, "{what}: verdict {}", verdict_name(r.verdict));
    checked(&r.packet, what).dst
}

#[test]
fn conntrack_keeps_the_backend_until_it_is_gone() {
    let d = setup();
    for (v6, proto) in combos() {
        let l = label(v6, proto);
        let front = sock(vip(v6), 80);
        let b1 = sock(remote(v6), 8081);
        let b2 = sock(remote(v6), 8082);
        set_service(&d, 300, front, proto, &[(301, b1)]);
        let flow = Pkt::new(&sock(addr(&POD_A, v6), 41000).to_string(), &front.to_string(), proto);
        assert_eq!(dnat_dst(&d, &flow, &l), b1);

        // The service now has only b2 (b1 still exists as a backend, as
        // when another service uses it): the flow stays on b1, new flows go
        // to b2.
        set_service(&d, 300, front, proto, &[(302, b2)]);
        for i in 0..20 {
            assert_eq!(dnat_dst(&d, &flow, &format!("{l} packet {i}")), b1);
        }
        let new_flow = flow.clone().src(&sock(addr(&POD_A, v6), 41001).to_string());
        assert_eq!(dnat_dst(&d, &new_flow, &l), b2);

        // b1 is deleted: the flow picks again.
        let repicks = metric(&d, "ct_repick");
        delete_backend(&d, 301);
        assert_eq!(dnat_dst(&d, &flow, &l), b2);
        assert_eq!(metric(&d, "ct_repick"), repicks + 1);
        // And stays there.
        set_service(&d, 300, front, proto, &[(301, b1)]);
        assert_eq!(dnat_dst(&d, &flow, &l), b2);
        delete_backend(&d, 302);
        delete_backend(&d, 301);
    }
}

#[test]
fn random_backends_are_spread_and_each_flow_is_sticky() {
    let d = setup();
    let front = sock(vip(false), 80);
    let backends: Vec<(u32, SocketAddr)> = (0..4).map(|i| (400 + i, sock(REMOTE_V4, 9000 + i as u16))).collect();
    set_service(&d, 400, front, TCP, &backends);
    let mut seen = std::collections::BTreeSet::new();
    for port in 0..64u16 {
        let flow = Pkt::tcp(&sock(POD_A.v4, 42000 + port).to_string(), &front.to_string());
        let first = dnat_dst(&d, &flow, "spread");
        assert!(backends.iter().any(|(_, b)| *b == first), "{first} is not a backend");
        assert_eq!(dnat_dst(&d, &flow, "sticky"), first);
        seen.insert(first);
    }
    // 64 flows over 4 backends: all used unless the picker is broken
    // (chance of missing one with a fair picker: 4 * 0.75^64 ~ 1e-8).
    assert_eq!(seen.len(), 4, "{seen:?}");
}

#[test]
fn service_without_backend_drops_with_its_counter() {
    let d = setup();
    for (v6, proto) in combos() {
        set_service(&d, 500, sock(vip(v6), 81), proto, &[]);
        let pkt = Pkt::new(&sock(addr(&POD_A, v6), 40000).to_string(), &sock(vip(v6), 81).to_string(), proto);
        run(&d, &Fixture::new(format!("svc-no-backend-{}", label(v6, proto)), FromPod, pkt.build(), TC_ACT_SHOT, Expect::Any));
    }
    assert_eq!(metric(&d, "drop_no_backend"), 4);
    assert_eq!(metric(&d, "svc_dnat"), 0);
    assert!(d.pod_datapath().unwrap().ct_entries().unwrap().is_empty());
}

#[test]
fn tcp_fin_and_rst_shorten_the_conntrack_lifetime() {
    let d = setup();
    one_backend_services(&d, remote);
    for (i, closing) in [FIN | ACK, RST].into_iter().enumerate() {
        let client = sock(POD_A.v4, 43000 + i as u16);
        let front = sock(vip(false), 80);
        let flow = Pkt::tcp(&client.to_string(), &front.to_string()).flags(SYN);
        dnat_dst(&d, &flow, "syn");
        let ct = d.pod_datapath().unwrap().ct_entries().unwrap();
        let fwd = ct.iter().find(|e| !e.reverse && e.src == client).unwrap();
        assert!(!fwd.closing && fwd.lifetime_s > 3600, "{fwd:?}");

        // The backend closes: both entries of the flow get the short life.
        let reply = Pkt::tcp(&sock(REMOTE_V4, 8080).to_string(), &client.to_string()).flags(closing);
        let r = d.run(ToPod, &reply.build()).unwrap();
        assert_eq!(checked(&r.packet, "closing reply").src, front);
        let ct = d.pod_datapath().unwrap().ct_entries().unwrap();
        let mine: Vec<_> = ct.iter().filter(|e| e.src == client || e.dst == client).collect();
        assert_eq!(mine.len(), 2);
        for e in mine {
            assert!(e.closing && e.lifetime_s == 10, "{e:?}");
        }
    }
    // A client-side FIN on a new flow shortens it as well.
    let client = sock(POD_A.v4, 43100);
    dnat_dst(&d, &Pkt::tcp(&client.to_string(), &sock(vip(false), 80).to_string()).flags(SYN), "syn");
    dnat_dst(&d, &Pkt::tcp(&client.to_string(), &sock(vip(false), 80).to_string()).flags(FIN | ACK), "fin");
    let ct = d.pod_datapath().unwrap().ct_entries().unwrap();
    let fwd = ct.iter().find(|e| !e.reverse && e.src == client).unwrap();
    assert!(fwd.closing && fwd.lifetime_s == 10, "{fwd:?}");
}

// ---------------------------------------------------------- (d) masquerade

const MASQ4: &str = "192.168.50.1";
const MASQ6: &str = "fd00:50::1";

fn internet(v6: bool) -> &'static str {
    if v6 {
        "2001:db8::7"
    } else {
        "203.0.113.7"
    }
}

fn masq(v6: bool) -> &'static str {
    if v6 {
        MASQ6
    } else {
        MASQ4
    }
}

fn node_config(ports: (u16, u16)) -> NodeConfig {
    NodeConfig {
        masquerade: true,
        masq_ip4: Some(MASQ4.parse().unwrap()),
        masq_ip6: Some(MASQ6.parse().unwrap()),
        pod_cidrs: vec![(ip("10.1.0.0"), 16), (ip("fd00:1::"), 64)],
        no_masq_cidrs: vec![(ip("10.0.0.0"), 8), (ip("172.16.0.0"), 12), (ip("fd00:1::"), 48)],
        snat_ports: ports,
    }
}

/// Send `pkt` out of the node; returns the source it was given.
fn snat_src(d: &LoadedDevices, pkt: &Pkt, what: &str) -> SocketAddr {
    let r = d.run(HostEgress, &pkt.build()).unwrap();
    assert_eq!(r.verdict, TC_ACT_OK, "{what}: verdict {}", verdict_name(r.verdict));
    let p = checked(&r.packet, what);
    assert_eq!(p.dst, pkt.dst, "{what}: destination changed");
    p.src
}

#[test]
fn masquerade_snat_and_reverse() {
    let d = setup();
    d.pod_datapath().unwrap().set_node_config(&node_config((40000, 40999))).unwrap();
    for (v6, proto) in combos() {
        let l = label(v6, proto);
        let pod = sock(addr(&POD_A, v6), 12345);
        let server = sock(internet(v6), 443);
        let out = Pkt::new(&pod.to_string(), &server.to_string(), proto);
        let r = d.run(HostEgress, &out.build()).unwrap();
        assert_eq!(r.verdict, TC_ACT_OK, "{l}");
        let p = checked(&r.packet, &format!("snat-{l}"));
        assert_eq!(p.src.ip(), ip(masq(v6)), "{l}");
        let port = p.src.port();
        assert!((40000..=40999).contains(&port), "{l}: port {port}");
        // Exactly the input with the new source (checksums from scratch).
        let expected = out.clone().with_src(p.src);
        run(&d, &Fixture::new(format!("snat-again-{l}"), HostEgress, out.build(), TC_ACT_OK, Expect::Bytes(expected.build())));

        // The reply gets the pod back as its destination, and goes
        // straight into the pod (a local endpoint) with its MACs.
        let reply = Pkt::new(&server.to_string(), &p.src.to_string(), proto);
        let expected = reply.clone().with_dst(pod).macs(POD_A.entry.pod_mac, POD_A.entry.host_mac);
        let r = run(&d, &Fixture::new(format!("rev-snat-{l}"), HostIngress, reply.build(), TC_ACT_REDIRECT, Expect::Bytes(expected.build())));
        checked(&r.packet, &format!("rev-snat-{l}"));

        // Not the flow's reply (other remote port): untouched.
        let stray = Pkt::new(&sock(internet(v6), 444).to_string(), &p.src.to_string(), proto);
        run(&d, &Fixture::new(format!("rev-snat-stray-{l}"), HostIngress, stray.build(), TC_ACT_OK, Expect::Unchanged));
    }
    assert_eq!(metric(&d, "snat"), 8);
    assert_eq!(metric(&d, "rev_snat"), 4);
    let nat = d.pod_datapath().unwrap().nat_entries().unwrap();
    assert_eq!(nat.len(), 8, "{nat:#?}");
    for e in nat.iter().filter(|e| !e.inbound) {
        let back = nat.iter().find(|i| i.inbound && i.src == e.dst && i.dst == e.nat && i.proto == e.proto);
        assert_eq!(back.map(|i| i.nat), Some(e.src), "{e:?}");
    }
}

#[test]
fn masquerade_leaves_exempt_traffic_alone() {
    let d = setup();
    let pod = d.pod_datapath().unwrap();
    pod.set_node_config(&node_config((40000, 40999))).unwrap();
    for (v6, proto) in combos() {
        let l = label(v6, proto);
        let src = sock(addr(&POD_A, v6), 12345).to_string();
        // Destination in a no-masquerade CIDR.
        let inside = if v6 { "[fd00:1:0:2::9]:80" } else { "10.200.0.9:80" };
        run(&d, &Fixture::new(format!("nomasq-dst-{l}"), HostEgress, Pkt::new(&src, inside, proto).build(), TC_ACT_OK, Expect::Unchanged));
        // Source outside the pod CIDRs (the node itself).
        let node_src = sock(masq(v6), 5555).to_string();
        let out = Pkt::new(&node_src, &sock(internet(v6), 443).to_string(), proto);
        run(&d, &Fixture::new(format!("nomasq-src-{l}"), HostEgress, out.build(), TC_ACT_OK, Expect::Unchanged));
    }
    // An IPv4 no-masquerade /0 does not exempt IPv6.
    let mut c = node_config((40000, 40999));
    c.no_masq_cidrs = vec![(ip("0.0.0.0"), 0)];
    pod.set_node_config(&c).unwrap();
    let v4 = Pkt::tcp(&sock(POD_A.v4, 1000).to_string(), &sock(internet(false), 443).to_string());
    run(&d, &Fixture::new("nomasq-v4-all", HostEgress, v4.build(), TC_ACT_OK, Expect::Unchanged));
    let v6 = Pkt::tcp(&sock(POD_A.v6, 1000).to_string(), &sock(internet(true), 443).to_string());
    assert_eq!(snat_src(&d, &v6, "v4 /0 exempts no IPv6").ip(), ip(MASQ6));

    // No IPv6 masquerade address: IPv6 passes and is counted.
    let mut c = node_config((40000, 40999));
    c.masq_ip6 = None;
    pod.set_node_config(&c).unwrap();
    let v6b = Pkt::tcp(&sock(POD_A.v6, 1001).to_string(), &sock(internet(true), 443).to_string());
    run(&d, &Fixture::new("nomasq-no-v6-addr", HostEgress, v6b.build(), TC_ACT_OK, Expect::Unchanged));
    assert_eq!(metric(&d, "snat_no_addr"), 1);

    // Masquerade off: nothing is translated.
    let mut c = node_config((40000, 40999));
    c.masquerade = false;
    pod.set_node_config(&c).unwrap();
    let v4b = Pkt::udp(&sock(POD_A.v4, 1002).to_string(), &sock(internet(false), 53).to_string());
    run(&d, &Fixture::new("masquerade-off", HostEgress, v4b.build(), TC_ACT_OK, Expect::Unchanged));
    assert_eq!(metric(&d, "snat"), 1);
}

#[test]
fn snat_port_exhaustion_drops_with_its_counter() {
    let d = setup();
    d.pod_datapath().unwrap().set_node_config(&node_config((40000, 40000))).unwrap();
    for (v6, proto) in combos() {
        let l = label(v6, proto);
        let server = sock(internet(v6), 443).to_string();
        let first = Pkt::new(&sock(addr(&POD_A, v6), 2000).to_string(), &server, proto);
        assert_eq!(snat_src(&d, &first, &l), sock(masq(v6), 40000));
        // A second flow to the same server has no port left.
        let second = Pkt::new(&sock(addr(&POD_B, v6), 2000).to_string(), &server, proto);
        run(&d, &Fixture::new(format!("snat-exhausted-{l}"), HostEgress, second.build(), TC_ACT_SHOT, Expect::Any));
        // The first flow keeps its port.
        assert_eq!(snat_src(&d, &first, &l), sock(masq(v6), 40000));
        // Another server: the same port is free there.
        let elsewhere = second.clone().dst(&sock(internet(v6), 8443).to_string());
        assert_eq!(snat_src(&d, &elsewhere, &l), sock(masq(v6), 40000));
    }
    assert_eq!(metric(&d, "drop_snat_ports_exhausted"), 4);
}

#[test]
fn node_config_round_trips_and_rejects_what_does_not_fit() {
    let d = setup();
    let pod = d.pod_datapath().unwrap();
    assert!(!pod.node_config().unwrap().masquerade);
    let mut c = node_config((61000, 65535));
    c.pod_cidrs = vec![(ip("10.1.2.3"), 16), (ip("fd00:1::5"), 64)];
    pod.set_node_config(&c).unwrap();
    let back = pod.node_config().unwrap();
    assert_eq!(back.pod_cidrs, vec![(ip("10.1.0.0"), 16), (ip("fd00:1::"), 64)], "host bits cleared");
    assert_eq!(back.no_masq_cidrs, c.no_masq_cidrs);
    assert_eq!((back.masq_ip4, back.masq_ip6, back.snat_ports, back.masquerade), (c.masq_ip4, c.masq_ip6, c.snat_ports, true));

    let mut bad = node_config((40000, 39999));
    assert!(pod.set_node_config(&bad).is_err(), "empty port range");
    bad = node_config((0, 10));
    assert!(pod.set_node_config(&bad).is_err(), "port 0");
    bad = node_config((1, 10));
    bad.pod_cidrs = vec![(ip("10.0.0.0"), 33)];
    assert!(pod.set_node_config(&bad).is_err(), "IPv4 /33");
    bad.pod_cidrs = vec![(ip("10.0.0.0"), 8); 5];
    assert!(pod.set_node_config(&bad).is_err(), "five pod CIDRs");
    // Nothing of a refused configuration was written.
    assert_eq!(pod.node_config().unwrap(), back);
}

#[test]
fn masquerade_icmp_echo_by_identifier() {
    let d = setup();
    d.pod_datapath().unwrap().set_node_config(&node_config((40000, 40999))).unwrap();
    for v6 in [false, true] {
        let l = if v6 { "icmpv6" } else { "icmp" };
        let pod = addr(&POD_A, v6);
        let request = Pkt::new(&sock(pod, 777).to_string(), &sock(internet(v6), 0).to_string(), ICMP);
        let r = d.run(HostEgress, &request.build()).unwrap();
        assert_eq!(r.verdict, TC_ACT_OK, "{l}");
        let p = checked(&r.packet, &format!("snat-{l}"));
        assert_eq!(p.src.ip(), ip(masq(v6)), "{l}");
        let id = p.src.port();
        assert!((40000..=40999).contains(&id), "{l}: identifier {id}");
        run(&d, &Fixture::new(format!("snat-{l}-exact"), HostEgress, request.build(), TC_ACT_OK, Expect::Bytes(request.clone().with_src(p.src).build())));

        // The echo reply goes back to the pod with its own identifier.
        let reply = Pkt::new(&sock(internet(v6), 0).to_string(), &sock(masq(v6), id).to_string(), ICMP);
        let expected = reply.clone().with_dst(sock(pod, 777)).macs(POD_A.entry.pod_mac, POD_A.entry.host_mac);
        run(&d, &Fixture::new(format!("rev-snat-{l}"), HostIngress, reply.build(), TC_ACT_REDIRECT, Expect::Bytes(expected.build())));
        // An echo reply leaving the node (the node answering a ping) is not masqueraded.
        let answer = Pkt::new(&sock(pod, 0).to_string(), &sock(internet(v6), 5).to_string(), ICMP);
        run(&d, &Fixture::new(format!("echo-reply-out-{l}"), HostEgress, answer.build(), TC_ACT_OK, Expect::Unchanged));
    }
    assert_eq!(metric(&d, "snat"), 4);
    assert_eq!(metric(&d, "rev_snat"), 2);
}

/// A client that went to a service per packet and then connects straight
/// to the backend (translated at its socket) from the same port: the new
/// connection's SYN removes the old flow's entries, so the backend's replies
/// keep their own source instead of getting the service's.
#[test]
fn a_new_direct_connection_retires_an_old_translated_flow_on_the_same_ports() {
    let d = setup();
    one_backend_services(&d, |v6| addr(&POD_B, v6));
    for v6 in [false, true] {
        let l = label(v6, TCP);
        let client = sock(addr(&POD_A, v6), 40100);
        let backend = sock(addr(&POD_B, v6), 8080);
        let front = sock(vip(v6), 80);
        // The old flow, through the service.
        run(&d, &Fixture::new(format!("old-flow-{l}"), FromPod, Pkt::tcp(&client.to_string(), &front.to_string()).flags(SYN).build(), TC_ACT_REDIRECT, Expect::Any));
        // The new one, straight to the backend, same ports: a SYN.
        let syn = Pkt::tcp(&client.to_string(), &backend.to_string()).flags(SYN);
        let expected = syn.clone().macs(POD_B.entry.pod_mac, POD_B.entry.host_mac);
        run(&d, &Fixture::new(format!("direct-syn-{l}"), FromPod, syn.build(), TC_ACT_REDIRECT, Expect::Bytes(expected.build())));
        // The backend's SYN-ACK keeps its own address as the source.
        let synack = Pkt::tcp(&backend.to_string(), &client.to_string()).flags(SYN | ACK);
        let expected = synack.clone().macs(POD_A.entry.pod_mac, POD_A.entry.host_mac);
        run(&d, &Fixture::new(format!("direct-synack-{l}"), FromPod, synack.build(), TC_ACT_REDIRECT, Expect::Bytes(expected.build())));
        // A later packet of an ordinary connection (not a SYN) leaves
        // translated flows alone.
        run(&d, &Fixture::new(format!("again-{l}"), FromPod, Pkt::tcp(&client.to_string(), &front.to_string()).flags(SYN).build(), TC_ACT_REDIRECT, Expect::Any));
        let ack = Pkt::tcp(&client.to_string(), &backend.to_string()).flags(ACK);
        run(&d, &Fixture::new(format!("direct-ack-{l}"), FromPod, ack.build(), TC_ACT_REDIRECT, Expect::Any));
        let ct = d.pod_datapath().unwrap().ct_entries().unwrap();
        assert_eq!(ct.iter().filter(|e| e.src.is_ipv6() == v6 && (e.src.port() == 40100 || e.dst.port() == 40100)).count(), 2, "{l}: {ct:#?}");
    }
    assert_eq!(metric(&d, "ct_stale_removed"), 2);
}
