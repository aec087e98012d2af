//! Traffic from outside the node at the external device (bpf/lib/nodeport.h),
//! with BPF_PROG_TEST_RUN and packet fixtures: input frame, expected
//! verdict, expected output bytes (a pcap in the test target's tmp dir on a
//! mismatch). IPv4 and IPv6, TCP and UDP.
//!
//! The programs forward translated packets after a FIB lookup, so the runs
//! happen inside a throwaway network namespace with a known routing table:
//! `ext0` (MAC 02:00:00:00:00:01) holds the node's addresses, the clients'
//! network is behind a router (MAC 02:00:00:00:00:fe) and the remote
//! backends' pod network behind the other node (MAC 02:00:00:00:00:02),
//! both with permanent neighbour entries, so the expected MACs are known.

mod common;

use std::net::{IpAddr, SocketAddr};

use common::*;
use sluice_datapath::pod::DeviceProgram::{FromPod, HostEgress, HostIngress};
use sluice_datapath::pod::{EndpointEntry, LoadedDevices, NodeConfig, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX};
use sluice_lb::{BackendKey, FrontendKey, LbMaps, MapOp, Protocol, Scope, SvcKey, SvcVal};
use libbpf_rs::MapCore;
use sluice_testbed::netns::Netns;

const NODE4: &str = "192.0.2.1";
const NODE6: &str = "fd00:50::1";
const EXT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
const OTHER_NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const POD_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x0a];
const HOST_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 0x0a];

const SVC_F_NODEPORT: u16 = 1 << 1;
const SVC_F_EXTERNAL_IP: u16 = 1 << 2;
const SVC_F_DSR: u16 = 1 << 6;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sock(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

fn proto_of(p: u8) -> Protocol {
    if p == TCP {
        Protocol::TCP
    } else {
        Protocol::UDP
    }
}

fn combos() -> Vec<(bool, u8)> {
    vec![(false, TCP), (false, UDP), (true, TCP), (true, UDP)]
}

fn label(v6: bool, proto: u8) -> String {
    format!("{}-{}", if v6 { "ipv6" } else { "ipv4" }, if proto == TCP { "tcp" } else { "udp" })
}

fn node(v6: bool) -> &'static str {
    if v6 {
        NODE6
    } else {
        NODE4
    }
}

fn client(v6: bool) -> &'static str {
    if v6 {
        "2001:db8::7"
    } else {
        "203.0.113.7"
    }
}

/// A pod on this node (an endpoint in sl_ep_v1).
fn local_pod(v6: bool) -> &'static str {
    if v6 {
        "fd00:1::a"
    } else {
        "10.1.0.10"
    }
}

/// A pod on the other node (routed via 192.0.2.2 / fd00:50::2).
fn remote_pod(v6: bool) -> &'static str {
    if v6 {
        "fd00:2::5"
    } else {
        "10.2.0.5"
    }
}

/// The namespace the runs happen in (see the module docs).
fn topology() -> Netns {
    let ns = Netns::new("sl-nppkt").unwrap();
    ns.ip_batch(&[
        "link set lo up",
        "link add ext0 address 02:00:00:00:00:01 type veth peer name ext0p",
        "link set ext0 up",
        "link set ext0p up",
        "addr add 192.0.2.1/24 dev ext0",
        "addr add fd00:50::1/64 dev ext0 nodad",
        "route add 203.0.113.0/24 via 192.0.2.254",
        "route add 10.2.0.0/16 via 192.0.2.2",
        "route add 2001:db8::/64 via fd00:50::fe",
        "route add fd00:2::/64 via fd00:50::2",
        "neigh add 192.0.2.254 lladdr 02:00:00:00:00:fe dev ext0 nud permanent",
        "neigh add 192.0.2.2 lladdr 02:00:00:00:00:02 dev ext0 nud permanent",
        "neigh add fd00:50::fe lladdr 02:00:00:00:00:fe dev ext0 nud permanent",
        "neigh add fd00:50::2 lladdr 02:00:00:00:00:02 dev ext0 nud permanent",
    ])
    .unwrap();
    ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
    ns.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
    ns
}

fn setup(snat_ports: (u16, u16)) -> LoadedDevices {
    require_root();
    let d = LoadedDevices::load().expect("loading the pod and host objects");
    let pod = d.pod_datapath().unwrap();
    let e = EndpointEntry { id: 1, host_ifindex: 11, host_mac: HOST_MAC, pod_mac: POD_MAC };
    pod.set_endpoint(ip(local_pod(false)), &e).unwrap();
    pod.set_endpoint(ip(local_pod(true)), &e).unwrap();
    pod.set_node_config(&NodeConfig {
        masquerade: false,
        masq_ip4: Some(ip(NODE4).to_string().parse().unwrap()),
        masq_ip6: Some(ip(NODE6).to_string().parse().unwrap()),
        pod_cidrs: vec![(ip("10.1.0.0"), 16), (ip("fd00:1::"), 64)],
        no_masq_cidrs: vec![],
        snat_ports,
    })
    .unwrap();
    d.lb_maps().unwrap().set_node_addrs(&[ip(NODE4), ip(NODE6)].into_iter().collect()).unwrap();
    d
}

/// A frontend with its backends, written as the agent writes one.
fn frontend(d: &LoadedDevices, id: u32, frontend: FrontendKey, flags: u16, backends: &[(u32, SocketAddr)]) {
    let mut ops = Vec::new();
    for (bid, b) in backends {
        ops.push(MapOp::UpsertBackend(*bid, BackendKey { addr: b.ip(), port: b.port(), proto: frontend.proto }));
    }
    ops.push(MapOp::UpsertRevNat(id, frontend));
    for (i, (bid, _)) in backends.iter().enumerate() {
        ops.push(MapOp::UpsertService(
            SvcKey { frontend, slot: i as u16 + 1 },
            SvcVal { backend_id: *bid, count: 0, rev_nat_id: id, affinity_timeout: 0, flags: 0 },
        ));
    }
    ops.push(MapOp::UpsertService(
        SvcKey { frontend, slot: 0 },
        SvcVal { backend_id: 0, count: backends.len() as u32, rev_nat_id: id, affinity_timeout: 0, flags },
    ));
    d.lb_maps().unwrap().apply(&ops).unwrap();
}

fn node_port(d: &LoadedDevices, id: u32, v6: bool, proto: u8, flags: u16, backend: SocketAddr) {
    frontend(d, id, FrontendKey::node_port(v6, 30080, proto_of(proto)), flags | SVC_F_NODEPORT, &[(id, backend)]);
}

#[test]
fn nodeport_to_a_local_pod_and_its_reply() {
    let ns = topology();
    let d = setup((40000, 40999));
    ns.enter(|| {
        for (i, (v6, proto)) in combos().into_iter().enumerate() {
            let l = label(v6, proto);
            let backend = sock(local_pod(v6), 8080);
            node_port(&d, 10 + i as u32, v6, proto, 0, backend);
            let c = sock(client(v6), 40000);
            let front = sock(node(v6), 30080);
            // In: DNAT, straight into the pod (redirect_peer) with its MACs;
            // the client's address is kept.
            let input = Pkt::new(&c.to_string(), &front.to_string(), proto).macs(EXT_MAC, ROUTER_MAC);
            let expected = input.clone().with_dst(backend).macs(POD_MAC, HOST_MAC);
            run(&d, &Fixture::new(format!("np-local-in-{l}"), HostIngress, input.build(), TC_ACT_REDIRECT, Expect::Bytes(expected.build())));
            // Out: the pod's reply gets the node address and node port back as
            // its source and is forwarded to the client's router.
            let reply = Pkt::new(&backend.to_string(), &c.to_string(), proto).macs(HOST_MAC, POD_MAC);
            let expected = reply.clone().with_src(front).macs(ROUTER_MAC, EXT_MAC);
            run(&d, &Fixture::new(format!("np-local-reply-{l}"), FromPod, reply.build(), TC_ACT_REDIRECT, Expect::Bytes(expected.build())));
            // The next packet of the flow follows conntrack.
            run(&d, &Fixture::new(format!("np-local-again-{l}"), HostIngress, input.build(), TC_ACT_REDIRECT, Expect::Bytes(input.clone().with_dst(backend).macs(POD_MAC, HOST_MAC).build())));
        }
    });
    assert_eq!(metric(&d, "nodeport_local"), 8);
    assert_eq!(metric(&d, "fib_redirect"), 4);
}

/// Run `input` through the external device's ingress; expect a redirect to
/// the other node with the backend as destination, the node address as
/// source; return the allocated source.
fn snat_out(d: &LoadedDevices, desc: &str, input: &Pkt, backend: SocketAddr) -> SocketAddr {
    let r = d.run(HostIngress, &input.build()).unwrap();
    assert_eq!(verdict_name(r.verdict), verdict_name(TC_ACT_REDIRECT), "{desc}");
    let p = parse_and_verify(&r.packet).unwrap_or_else(|e| panic!("{desc}: {e}"));
    assert_eq!(p.dst, backend, "{desc}");
    assert_eq!(p.dst_mac, OTHER_NODE_MAC, "{desc}");
    assert_eq!(p.src_mac, EXT_MAC, "{desc}");
    // Exactly the input with the new addresses (checksums from scratch).
    let expected = input.clone().with_dst(backend).with_src(p.src).macs(OTHER_NODE_MAC, EXT_MAC);
    assert_eq!(r.packet, expected.build(), "{desc}: bytes");
    p.src
}

#[test]
fn nodeport_to_a_remote_backend_is_snated_and_its_reply_translated_back() {
    let ns = topology();
    let d = setup((40000, 40999));
    ns.enter(|| {
        for (i, (v6, proto)) in combos().into_iter().enumerate() {
            let l = label(v6, proto);
            let backend = sock(remote_pod(v6), 8080);
            node_port(&d, 20 + i as u32, v6, proto, 0, backend);
            let c = sock(client(v6), 40000);
            let front = sock(node(v6), 30080);
            let input = Pkt::new(&c.to_string(), &front.to_string(), proto).macs(EXT_MAC, ROUTER_MAC);
            let snat = snat_out(&d, &format!("np-snat-{l}"), &input, backend);
            assert_eq!(snat.ip(), ip(node(v6)), "{l}");
            assert!((40000..=40999).contains(&snat.port()), "{l}: port {}", snat.port());
            // Same flow, same port.
            assert_eq!(snat_out(&d, &format!("np-snat-again-{l}"), &input, backend), snat, "{l}");

            // The reply from the other node: client back as destination, the
            // node port as source, to the client's router.
            let reply = Pkt::new(&backend.to_string(), &snat.to_string(), proto).macs(EXT_MAC, OTHER_NODE_MAC);
            let expected = reply.clone().with_dst(c).with_src(front).macs(ROUTER_MAC, EXT_MAC);
            run(&d, &Fixture::new(format!("np-snat-reply-{l}"), HostIngress, reply.build(), TC_ACT_REDIRECT, Expect::Bytes(expected.build())));

            // Leaving through the external device, neither direction is
            // touched again.
            run(&d, &Fixture::new(format!("np-snat-egress-{l}"), HostEgress, expected.build(), TC_ACT_OK, Expect::Unchanged));
        }
    });
    assert_eq!(metric(&d, "nodeport_snat"), 8);
    assert_eq!(metric(&d, "nodeport_reply"), 4);
    let nat = d.pod_datapath().unwrap().nat_entries().unwrap();
    assert_eq!(nat.len(), 8, "{nat:#?}");
    let ct = d.pod_datapath().unwrap().ct_entries().unwrap();
    assert_eq!(ct.len(), 8, "{ct:#?}");
    assert!(ct.iter().all(|e| e.kind == "nodeport-snat"), "{ct:#?}");
    assert!(nat.iter().all(|e| e.kind == "nodeport"), "{nat:#?}");
}

#[test]
fn a_nat_entry_without_its_conntrack_entry_is_dropped_and_removed() {
    let ns = topology();
    let d = setup((40000, 40999));
    ns.enter(|| {
        let backend = sock(remote_pod(false), 8080);
        node_port(&d, 30, false, TCP, 0, backend);
        let c = sock(client(false), 40000);
        let input = Pkt::tcp(&c.to_string(), &sock(NODE4, 30080).to_string());
        let snat = snat_out(&d, "orphan-out", &input, backend);
        // Conntrack loses the flow (LRU eviction, say).
        let ct_map = d.map("sl_ct_v1").unwrap();
        for k in ct_map.keys().collect::<Vec<_>>() {
            ct_map.delete(&k).unwrap();
        }
        let reply = Pkt::tcp(&backend.to_string(), &snat.to_string());
        run(&d, &Fixture::new("orphan-reply", HostIngress, reply.build(), TC_ACT_SHOT, Expect::Any));
    });
    assert_eq!(metric(&d, "drop_nat_orphan"), 1);
    assert!(d.pod_datapath().unwrap().nat_entries().unwrap().is_empty(), "the NAT pair went with it");
}

#[test]
fn snat_port_exhaustion_drops_new_flows_and_counts_them() {
    let ns = topology();
    // One port: the second client to the same backend finds it taken.
    let d = setup((40000, 40000));
    ns.enter(|| {
        let backend = sock(remote_pod(false), 8080);
        node_port(&d, 31, false, UDP, 0, backend);
        let first = Pkt::udp(&sock(client(false), 1000).to_string(), &sock(NODE4, 30080).to_string());
        assert_eq!(snat_out(&d, "exhaust-first", &first, backend).port(), 40000);
        let second = Pkt::udp(&sock(client(false), 1001).to_string(), &sock(NODE4, 30080).to_string());
        run(&d, &Fixture::new("exhaust-second", HostIngress, second.build(), TC_ACT_SHOT, Expect::Any));
        // The first flow still works.
        assert_eq!(snat_out(&d, "exhaust-first-again", &first, backend).port(), 40000);
    });
    assert_eq!(metric(&d, "drop_snat_ports_exhausted"), 1);
}

#[test]
fn dsr_carries_the_frontend_to_the_backends_node_which_takes_it_out() {
    let ns = topology();
    let d = setup((40000, 40999));
    ns.enter(|| {
        for (i, (v6, proto)) in combos().into_iter().enumerate() {
            let l = label(v6, proto);
            let backend = sock(remote_pod(v6), 8080);
            node_port(&d, 40 + i as u32, v6, proto, SVC_F_DSR, backend);
            let c = sock(client(v6), 40000);
            let front = sock(node(v6), 30080);
            // First packet (a SYN for TCP): DNAT, the client stays the
            // source, the frontend rides along in the option.
            let mut first = Pkt::new(&c.to_string(), &front.to_string(), proto).macs(EXT_MAC, ROUTER_MAC);
            if proto == TCP {
                first = first.flags(SYN);
            }
            let plain = first.clone().with_dst(backend).macs(OTHER_NODE_MAC, EXT_MAC).build();
            let expected = with_dsr_option(&plain, front);
            run(&d, &Fixture::new(format!("dsr-first-{l}"), HostIngress, first.build(), TC_ACT_REDIRECT, Expect::Bytes(expected)));
            // Later TCP packets carry no option; UDP always does.
            let next = Pkt::new(&c.to_string(), &front.to_string(), proto).macs(EXT_MAC, ROUTER_MAC);
            let plain = next.clone().with_dst(backend).macs(OTHER_NODE_MAC, EXT_MAC).build();
            let expected = if proto == TCP { plain } else { with_dsr_option(&plain, front) };
            run(&d, &Fixture::new(format!("dsr-next-{l}"), HostIngress, next.build(), TC_ACT_REDIRECT, Expect::Bytes(expected)));
        }
    });
    assert_eq!(metric(&d, "nodeport_dsr"), 8);
    assert!(d.pod_datapath().unwrap().nat_entries().unwrap().is_empty(), "DSR needs no NAT entry");

    // The backend's node: a DSR packet to a pod here loses its option, goes
    // into the pod, and the pod's reply leaves with the frontend as source.
    let d2 = setup((40000, 40999));
    ns.enter(|| {
        for (v6, proto) in combos() {
            let l = label(v6, proto);
            let backend = sock(local_pod(v6), 8080);
            let c = sock(client(v6), 41000);
            let front = sock("198.51.100.20", 80);
            let front = if v6 { sock("2001:db8:f::20", 80) } else { front };
            let mut pkt = Pkt::new(&c.to_string(), &backend.to_string(), proto).macs(EXT_MAC, OTHER_NODE_MAC);
            if proto == TCP {
                pkt = pkt.flags(SYN);
            }
            let with_opt = with_dsr_option(&pkt.build(), front);
            let expected = pkt.clone().macs(POD_MAC, HOST_MAC);
            run(&d2, &Fixture::new(format!("dsr-backend-in-{l}"), HostIngress, with_opt, TC_ACT_REDIRECT, Expect::Bytes(expected.build())));
            let reply = Pkt::new(&backend.to_string(), &c.to_string(), proto).macs(HOST_MAC, POD_MAC);
            let expected = reply.clone().with_src(front).macs(ROUTER_MAC, EXT_MAC);
            run(&d2, &Fixture::new(format!("dsr-backend-reply-{l}"), FromPod, reply.build(), TC_ACT_REDIRECT, Expect::Bytes(expected.build())));
        }
    });
    assert_eq!(metric(&d2, "dsr_backend"), 4);
}

#[test]
fn clusterip_is_not_reachable_from_outside_and_unknown_ports_pass() {
    let ns = topology();
    let d = setup((40000, 40999));
    ns.enter(|| {
        let vip = sock("10.96.0.10", 80);
        let f = FrontendKey { addr: vip.ip(), port: 80, proto: Protocol::TCP, scope: Scope::Vip };
        frontend(&d, 50, f, 0, &[(50, sock(remote_pod(false), 8080))]);
        let input = Pkt::tcp(&sock(client(false), 1).to_string(), &vip.to_string());
        run(&d, &Fixture::new("clusterip-from-outside", HostIngress, input.build(), TC_ACT_OK, Expect::Unchanged));
        // The same address as an ExternalIP frontend is reachable.
        frontend(&d, 51, f, SVC_F_EXTERNAL_IP, &[(51, sock(remote_pod(false), 8080))]);
        snat_out(&d, "externalip-from-outside", &input, sock(remote_pod(false), 8080));
        // Another port of the node: untouched.
        let other = Pkt::tcp(&sock(client(false), 1).to_string(), &sock(NODE4, 22).to_string());
        run(&d, &Fixture::new("node-ssh", HostIngress, other.build(), TC_ACT_OK, Expect::Unchanged));
    });
    assert_eq!(metric(&d, "clusterip_from_outside"), 1);
}

// ---------------------------------------------------------------- XDP

fn xdp_name(v: u32) -> &'static str {
    match v {
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "?",
    }
}

/// Run a frame through XDP as arriving on ext0; check verdict and bytes
/// (a pcap on mismatch, like the tc fixtures).
fn xdp(d: &LoadedDevices, desc: &str, input: &[u8], verdict: u32, expected: Option<&[u8]>) -> Vec<u8> {
    let ifindex = nix::net::if_::if_nametoindex("ext0").unwrap();
    let r = d.run_xdp(input, ifindex).unwrap();
    let want = expected.unwrap_or(input);
    if r.verdict != verdict || r.packet != want {
        let path = write_pcap(desc, &[input.to_vec(), want.to_vec(), r.packet.clone()]);
        panic!("{desc}: verdict {} (expected {}), bytes equal: {}; pcap {}", xdp_name(r.verdict), xdp_name(verdict), r.packet == want, path.display());
    }
    r.packet
}

#[test]
fn xdp_forwards_snat_flows_and_replies_and_leaves_the_rest_to_tc() {
    let ns = topology();
    let d = setup((40000, 40999));
    ns.enter(|| {
        for (i, (v6, proto)) in combos().into_iter().enumerate() {
            let l = label(v6, proto);
            let remote = sock(remote_pod(v6), 8080);
            node_port(&d, 60 + i as u32, v6, proto, 0, remote);
            let c = sock(client(v6), 42000);
            let front = sock(node(v6), 30080);
            let input = Pkt::new(&c.to_string(), &front.to_string(), proto).macs(EXT_MAC, ROUTER_MAC);
            // XDP sends it back out of ext0 (the other node is behind it):
            // a redirect, translated exactly as tc would.
            let ifindex = nix::net::if_::if_nametoindex("ext0").unwrap();
            let r = d.run_xdp(&input.build(), ifindex).unwrap();
            assert_eq!(xdp_name(r.verdict), "XDP_REDIRECT", "{l}");
            let p = parse_and_verify(&r.packet).unwrap_or_else(|e| panic!("xdp-snat-{l}: {e}"));
            assert_eq!(p.dst, remote, "{l}");
            assert_eq!(p.src.ip(), ip(node(v6)), "{l}");
            let expected = input.clone().with_dst(remote).with_src(p.src).macs(OTHER_NODE_MAC, EXT_MAC);
            assert_eq!(r.packet, expected.build(), "xdp-snat-{l}: bytes");
            // tc agrees on the flow (same conntrack and NAT entries).
            assert_eq!(snat_out(&d, &format!("tc-after-xdp-{l}"), &input, remote), p.src, "{l}");
            // The reply, at XDP.
            let reply = Pkt::new(&remote.to_string(), &p.src.to_string(), proto).macs(EXT_MAC, OTHER_NODE_MAC);
            let expected = reply.clone().with_dst(c).with_src(front).macs(ROUTER_MAC, EXT_MAC);
            xdp(&d, &format!("xdp-snat-reply-{l}"), &reply.build(), XDP_REDIRECT, Some(&expected.build()));

            // A local backend: left to tc, untouched.
            node_port(&d, 60 + i as u32, v6, proto, 0, sock(local_pod(v6), 8080));
            let c2 = sock(client(v6), 42001);
            let to_local = Pkt::new(&c2.to_string(), &front.to_string(), proto).macs(EXT_MAC, ROUTER_MAC);
            xdp(&d, &format!("xdp-local-pass-{l}"), &to_local.build(), XDP_PASS, None);
            let expected = to_local.clone().with_dst(sock(local_pod(v6), 8080)).macs(POD_MAC, HOST_MAC);
            run(&d, &Fixture::new(format!("tc-after-xdp-local-{l}"), HostIngress, to_local.build(), TC_ACT_REDIRECT, Expect::Bytes(expected.build())));
        }
    });
    assert_eq!(metric(&d, "xdp_forward"), 8);
    assert_eq!(metric(&d, "xdp_pass"), 4);
}

#[test]
fn xdp_forwards_dsr_packets_without_the_option_and_passes_the_ones_with_it() {
    let ns = topology();
    let d = setup((40000, 40999));
    ns.enter(|| {
        let remote = sock(remote_pod(false), 8080);
        node_port(&d, 70, false, TCP, SVC_F_DSR, remote);
        node_port(&d, 71, false, UDP, SVC_F_DSR, remote);
        let front = sock(NODE4, 30080);
        let c = sock(client(false), 43000);
        // The SYN needs the option: tc's.
        let syn = Pkt::tcp(&c.to_string(), &front.to_string()).flags(SYN).macs(EXT_MAC, ROUTER_MAC);
        xdp(&d, "xdp-dsr-syn", &syn.build(), XDP_PASS, None);
        let expected = with_dsr_option(&syn.clone().with_dst(remote).macs(OTHER_NODE_MAC, EXT_MAC).build(), front);
        run(&d, &Fixture::new("tc-dsr-syn", HostIngress, syn.build(), TC_ACT_REDIRECT, Expect::Bytes(expected)));
        // The rest of the TCP flow: XDP.
        let ack = Pkt::tcp(&c.to_string(), &front.to_string()).macs(EXT_MAC, ROUTER_MAC);
        let expected = ack.clone().with_dst(remote).macs(OTHER_NODE_MAC, EXT_MAC);
        xdp(&d, "xdp-dsr-ack", &ack.build(), XDP_REDIRECT, Some(&expected.build()));
        // UDP always carries it: tc's.
        let udp = Pkt::udp(&c.to_string(), &front.to_string()).macs(EXT_MAC, ROUTER_MAC);
        xdp(&d, "xdp-dsr-udp", &udp.build(), XDP_PASS, None);
    });
    assert_eq!(metric(&d, "xdp_forward"), 1);
}

#[test]
fn xdp_drops_what_tc_would_drop() {
    let ns = topology();
    let d = setup((40000, 40999));
    ns.enter(|| {
        // A NodePort without backends.
        frontend(&d, 80, FrontendKey::node_port(false, 30081, Protocol::TCP), SVC_F_NODEPORT, &[]);
        let input = Pkt::tcp(&sock(client(false), 1).to_string(), &sock(NODE4, 30081).to_string());
        let ifindex = nix::net::if_::if_nametoindex("ext0").unwrap();
        assert_eq!(xdp_name(d.run_xdp(&input.build(), ifindex).unwrap().verdict), "XDP_DROP");
        // Not a frontend: passed untouched.
        let other = Pkt::tcp(&sock(client(false), 1).to_string(), &sock(NODE4, 22).to_string());
        xdp(&d, "xdp-not-ours", &other.build(), XDP_PASS, None);
    });
    assert_eq!(metric(&d, "drop_no_backend"), 1);
}

// ------------------------------------------------ externalTrafficPolicy

const SVC_F_ETP_LOCAL: u16 = 1 << 5;

#[test]
fn external_traffic_policy_local_uses_only_this_nodes_backends_and_keeps_the_client() {
    let ns = topology();
    let d = setup((40000, 40999));
    ns.enter(|| {
        for (i, (v6, proto)) in combos().into_iter().enumerate() {
            let l = label(v6, proto);
            let id = 90 + 2 * i as u32;
            let fk = FrontendKey::node_port(v6, 30080, proto_of(proto));
            let local = sock(local_pod(v6), 8080);
            let remote = sock(remote_pod(v6), 8080);
            // Every backend for traffic from inside; the twin has the local one.
            frontend(&d, id, fk, SVC_F_NODEPORT | SVC_F_ETP_LOCAL, &[(id, remote), (id + 100, local)]);
            frontend(&d, id + 1, fk.local_twin(), SVC_F_NODEPORT | SVC_F_ETP_LOCAL, &[(id + 100, local)]);
            let front = sock(node(v6), 30080);
            // Many flows: every one reaches the local pod, none is SNATed.
            for port in 0..16u16 {
                let c = sock(client(v6), 45000 + port);
                let input = Pkt::new(&c.to_string(), &front.to_string(), proto).macs(EXT_MAC, ROUTER_MAC);
                let expected = input.clone().with_dst(local).macs(POD_MAC, HOST_MAC);
                run(&d, &Fixture::new(format!("etp-local-{l}-{port}"), HostIngress, input.build(), TC_ACT_REDIRECT, Expect::Bytes(expected.build())));
            }
            // No local backend on this node: dropped, as Kubernetes defines.
            frontend(&d, id + 1, fk.local_twin(), SVC_F_NODEPORT | SVC_F_ETP_LOCAL, &[]);
            let c = sock(client(v6), 46000);
            let input = Pkt::new(&c.to_string(), &front.to_string(), proto);
            run(&d, &Fixture::new(format!("etp-local-none-{l}"), HostIngress, input.build(), TC_ACT_SHOT, Expect::Any));
        }
    });
    assert_eq!(metric(&d, "nodeport_local"), 64);
    assert_eq!(metric(&d, "nodeport_snat"), 0);
    assert_eq!(metric(&d, "drop_no_local_backend"), 4);
}

#[test]
fn external_traffic_policy_cluster_spreads_over_both_nodes() {
    let ns = topology();
    let d = setup((40000, 40999));
    ns.enter(|| {
        let fk = FrontendKey::node_port(false, 30080, Protocol::TCP);
        let local = sock(local_pod(false), 8080);
        let remote = sock(remote_pod(false), 8080);
        frontend(&d, 120, fk, SVC_F_NODEPORT, &[(120, remote), (121, local)]);
        let mut seen = std::collections::BTreeSet::new();
        for port in 0..64u16 {
            let input = Pkt::tcp(&sock(client(false), 47000 + port).to_string(), &sock(NODE4, 30080).to_string()).macs(EXT_MAC, ROUTER_MAC);
            let r = d.run(HostIngress, &input.build()).unwrap();
            assert_eq!(r.verdict, TC_ACT_REDIRECT);
            seen.insert(parse_and_verify(&r.packet).unwrap().dst);
        }
        assert_eq!(seen, [local, remote].into_iter().collect(), "both nodes' backends are used");
    });
}

// ---------------------------------------------------------------- ICMP errors

/// The quote an ICMP error carries: the IP header and the first 8 bytes of
/// the L4 header of `pkt`.
fn quote(frame: &[u8]) -> Vec<u8> {
    let ip_len = if frame[12] == 0x08 { 20 } else { 40 };
    frame[14..14 + ip_len + 8].to_vec()
}

/// `q` with the quoted L4 checksum taken from `from` (the datapath leaves
/// the quoted UDP checksum alone; TCP's is not in the first 8 bytes).
fn keep_quoted_csum(mut q: Vec<u8>, from: &[u8], proto: u8) -> Vec<u8> {
    if proto == UDP {
        let ip_len = if q[0] >> 4 == 4 { 20 } else { 40 };
        q[ip_len + 6..ip_len + 8].copy_from_slice(&from[ip_len + 6..ip_len + 8]);
    }
    q
}

/// An ICMP "port unreachable" (IPv4 type 3 code 3, ICMPv6 type 1 code 4)
/// from `src` to `dst` quoting `q`, as an Ethernet frame with checksums.
fn icmp_error(src: IpAddr, dst: IpAddr, q: &[u8], macs: ([u8; 6], [u8; 6])) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend(macs.0);
    f.extend(macs.1);
    let mut icmp = match src {
        IpAddr::V4(_) => vec![3, 3, 0, 0, 0, 0, 0, 0],
        IpAddr::V6(_) => vec![1, 4, 0, 0, 0, 0, 0, 0],
    };
    icmp.extend(q);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend([0x08, 0x00]);
            let c = checksum(&icmp, 0);
            icmp[2..4].copy_from_slice(&c.to_be_bytes());
            let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0];
            ip[2..4].copy_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
            ip.extend(s.octets());
            ip.extend(d.octets());
            let c = checksum(&ip, 0);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend(ip);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend([0x86, 0xdd]);
            let c = checksum(&icmp, pseudo(src, dst, 58, icmp.len()));
            icmp[2..4].copy_from_slice(&c.to_be_bytes());
            let mut ip = vec![0x60, 0, 0, 0];
            ip.extend((icmp.len() as u16).to_be_bytes());
            ip.extend([58, 64]);
            ip.extend(s.octets());
            ip.extend(d.octets());
            f.extend(ip);
        }
        _ => panic!("mixed families"),
    }
    f.extend(icmp);
    f
}

#[test]
fn icmp_errors_of_a_local_backend_name_the_frontend() {
    let ns = topology();
    let d = setup((40000, 40999));
    ns.enter(|| {
        for (i, (v6, proto)) in combos().into_iter().enumerate() {
            let l = label(v6, proto);
            let backend = sock(local_pod(v6), 8080);
            node_port(&d, 130 + i as u32, v6, proto, 0, backend);
            let c = sock(client(v6), 40000);
            let front = sock(node(v6), 30080);
            let input = Pkt::new(&c.to_string(), &front.to_string(), proto).macs(EXT_MAC, ROUTER_MAC);
            d.run(HostIngress, &input.build()).unwrap();
            // The pod answers "port unreachable", quoting what it received.
            let received = input.clone().with_dst(backend).build();
            let err = icmp_error(backend.ip(), c.ip(), &quote(&received), (HOST_MAC, POD_MAC));
            let want_quote = keep_quoted_csum(quote(&input.build()), &quote(&received), proto);
            let expected = icmp_error(front.ip(), c.ip(), &want_quote, (ROUTER_MAC, EXT_MAC));
            run(&d, &Fixture::new(format!("icmp-local-{l}"), FromPod, err, TC_ACT_REDIRECT, Expect::Bytes(expected)));
        }
    });
    assert_eq!(metric(&d, "icmp_error_xlate"), 4);
}

#[test]
fn icmp_errors_about_a_snated_flow_go_back_to_the_client() {
    let ns = topology();
    let d = setup((40000, 40999));
    ns.enter(|| {
        for (i, (v6, proto)) in combos().into_iter().enumerate() {
            let l = label(v6, proto);
            let backend = sock(remote_pod(v6), 8080);
            node_port(&d, 140 + i as u32, v6, proto, 0, backend);
            let c = sock(client(v6), 40000);
            let front = sock(node(v6), 30080);
            let input = Pkt::new(&c.to_string(), &front.to_string(), proto).macs(EXT_MAC, ROUTER_MAC);
            let r = d.run(HostIngress, &input.build()).unwrap();
            let sent = r.packet;
            let want_quote = keep_quoted_csum(quote(&input.build()), &quote(&sent), proto);
            // From the backend itself: its address becomes the frontend's.
            let err = icmp_error(backend.ip(), ip(node(v6)), &quote(&sent), (EXT_MAC, OTHER_NODE_MAC));
            let expected = icmp_error(front.ip(), c.ip(), &want_quote, (ROUTER_MAC, EXT_MAC));
            run(&d, &Fixture::new(format!("icmp-snat-backend-{l}"), HostIngress, err, TC_ACT_REDIRECT, Expect::Bytes(expected)));
            // From a router on the way: its address stays.
            let router = ip(if v6 { "fd00:50::2" } else { "192.0.2.2" });
            let err = icmp_error(router, ip(node(v6)), &quote(&sent), (EXT_MAC, OTHER_NODE_MAC));
            let expected = icmp_error(router, c.ip(), &want_quote, (ROUTER_MAC, EXT_MAC));
            run(&d, &Fixture::new(format!("icmp-snat-router-{l}"), HostIngress, err, TC_ACT_REDIRECT, Expect::Bytes(expected)));
            // About a flow nobody translated: untouched.
            let stray = icmp_error(router, ip(node(v6)), &quote(&Pkt::new(&sock(node(v6), 1).to_string(), &backend.to_string(), proto).build()), (EXT_MAC, OTHER_NODE_MAC));
            run(&d, &Fixture::new(format!("icmp-stray-{l}"), HostIngress, stray, TC_ACT_OK, Expect::Unchanged));
        }
    });
    assert_eq!(metric(&d, "icmp_error_xlate"), 8);
}
