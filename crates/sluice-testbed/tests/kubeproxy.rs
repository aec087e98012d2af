//! kube-proxy's generated rules load and work (as root; skipped otherwise):
//! each test builds its own topology, loads the rules into the node
//! namespace only, and has a client pod reach backends through the VIPs.

mod common;

use std::net::IpAddr;

use common::*;
use sluice_testbed::kubeproxy::{self, Family, KpService, Proto};
use sluice_testbed::proc::Spawned;
use sluice_testbed::topo::Topology;
use sluice_testbed::topo2::{kube_proxy_config, NodeId, TwoNode};

fn svc(name: &str, vip: &str, port: u16, protocol: Proto, eps: Vec<(IpAddr, u16)>) -> KpService {
    KpService {
        namespace: "default".into(),
        name: name.into(),
        port_name: "p".into(),
        vip: vip.parse().unwrap(),
        port,
        protocol,
        endpoints: eps,
        node_port: None,
    }
}

/// Backends in pod0 and pod1; pod2 is the client.
fn setup(tag: &str) -> (Topology, Vec<Spawned>, Vec<KpService>) {
    let topo = Topology::new(tag, 3).unwrap();
    let mut servers = Vec::new();
    for p in &topo.pods()[..2] {
        servers.push(serve(
            &p.netns,
            &p.name,
            &["--tcp", "[::]:8080", "--udp", "[::]:5353"],
        ));
    }
    let (a, b) = (&topo.pods()[0], &topo.pods()[1]);
    let services = vec![
        svc(
            "web",
            "198.19.0.1",
            80,
            Proto::Tcp,
            vec![(a.ip4.into(), 8080), (b.ip4.into(), 8080)],
        ),
        svc(
            "dns",
            "198.19.0.2",
            53,
            Proto::Udp,
            vec![(a.ip4.into(), 5353), (b.ip4.into(), 5353)],
        ),
        svc("empty", "198.19.0.3", 80, Proto::Tcp, vec![]),
        svc(
            "web6",
            "fd00:5c:ee::1",
            80,
            Proto::Tcp,
            vec![(a.ip6.into(), 8080), (b.ip6.into(), 8080)],
        ),
    ];
    (topo, servers, services)
}

fn both() -> std::collections::BTreeSet<String> {
    set(vec!["pod0".into(), "pod1".into()])
}

/// What every kube-proxy flavour must do for the services of [`setup`].
fn check_services(topo: &Topology) {
    let client = &topo.pods()[2].netns;
    // TCP through the VIP: both backends, the VIP as peer, no errors.
    let v = connect(client, &["--to", "198.19.0.1:80", "--count", "40"]);
    assert!(v["errors"].as_object().unwrap().is_empty(), "{v}");
    assert_eq!(set(field(&v, "backend")), both(), "{v}");
    assert_eq!(
        set(field(&v, "peer")),
        set(vec!["198.19.0.1:80".into()]),
        "{v}"
    );
    // UDP: the answers appear to come from the VIP.
    let v = connect(client, &["--udp", "--to", "198.19.0.2:53", "--count", "30"]);
    assert!(v["errors"].as_object().unwrap().is_empty(), "{v}");
    assert_eq!(set(field(&v, "backend")), both(), "{v}");
    assert_eq!(
        set(field(&v, "peer")),
        set(vec!["198.19.0.2:53".into()]),
        "{v}"
    );
    let v = connect(
        client,
        &["--connected-udp", "--to", "198.19.0.2:53", "--count", "10"],
    );
    assert!(v["errors"].as_object().unwrap().is_empty(), "{v}");
    // No endpoints: rejected.
    let v = connect(client, &["--to", "198.19.0.3:80", "--count", "2"]);
    assert_eq!(v["errors"]["ECONNREFUSED"], 2, "{v}");
    // Hairpin: a backend reaching its own service (masqueraded).
    let v = connect(
        &topo.pods()[0].netns,
        &["--to", "198.19.0.1:80", "--count", "20"],
    );
    assert!(v["errors"].as_object().unwrap().is_empty(), "hairpin: {v}");
    assert_eq!(set(field(&v, "backend")), both(), "{v}");
    // IPv6.
    let v = connect(client, &["--to", "[fd00:5c:ee::1]:80", "--count", "30"]);
    assert!(v["errors"].as_object().unwrap().is_empty(), "{v}");
    assert_eq!(set(field(&v, "backend")), both(), "{v}");
    assert_eq!(
        set(field(&v, "peer")),
        set(vec!["[fd00:5c:ee::1]:80".into()]),
        "{v}"
    );
    // The node itself (OUTPUT path).
    let v = connect(topo.node(), &["--to", "198.19.0.1:80", "--count", "10"]);
    assert!(
        v["errors"].as_object().unwrap().is_empty(),
        "from the node: {v}"
    );
}

fn host_ruleset() -> String {
    // Read only, to show it does not change.
    sluice_testbed::run("nft", &["list", "ruleset"]).unwrap_or_default()
}

#[test]
fn iptables_rules_load_and_route_through_the_vip() {
    root_or_skip!();
    let host_before = host_ruleset();
    let (topo, _servers, services) = setup("tb-ipt");
    kubeproxy::load_iptables(
        topo.node(),
        Family::V4,
        &kubeproxy::iptables_restore(&services),
    )
    .unwrap();
    kubeproxy::load_iptables(
        topo.node(),
        Family::V6,
        &kubeproxy::ip6tables_restore(&services),
    )
    .unwrap();
    let saved = topo.node().exec(&["iptables-save", "-t", "nat"]).unwrap();
    assert!(
        saved.contains(&kubeproxy::svc_chain(&services[0])),
        "{saved}"
    );
    assert!(saved.contains("--probability 0.5"), "{saved}");
    check_services(&topo);
    // Loading again replaces the rules: now only pod1 backs web.
    let mut changed = services.clone();
    changed[0].endpoints.remove(0);
    kubeproxy::load_iptables(
        topo.node(),
        Family::V4,
        &kubeproxy::iptables_restore(&changed),
    )
    .unwrap();
    let v = connect(
        &topo.pods()[2].netns,
        &["--to", "198.19.0.1:80", "--count", "10"],
    );
    assert_eq!(set(field(&v, "backend")), set(vec!["pod1".into()]), "{v}");
    kubeproxy::load_iptables(topo.node(), Family::V4, kubeproxy::IPTABLES_FLUSH).unwrap();
    let v = connect(
        &topo.pods()[2].netns,
        &["--to", "198.19.0.1:80", "--timeout-ms", "300"],
    );
    assert_eq!(v["errors"]["ETIMEDOUT"], 1, "no rules, no service: {v}");
    drop(_servers);
    drop(topo);
    assert_eq!(
        host_ruleset(),
        host_before,
        "the host's rules must not change"
    );
}

#[test]
fn iptables_legacy_rules_load_and_route_through_the_vip() {
    root_or_skip!();
    if sluice_testbed::run("sh", &["-c", "command -v iptables-legacy-restore"]).is_err() {
        eprintln!("skipped: no iptables-legacy-restore");
        return;
    }
    let (topo, _servers, services) = setup("tb-iptl");
    topo.node()
        .exec_stdin(
            &["iptables-legacy-restore"],
            &kubeproxy::iptables_restore(&services),
        )
        .unwrap();
    topo.node()
        .exec_stdin(
            &["ip6tables-legacy-restore"],
            &kubeproxy::ip6tables_restore(&services),
        )
        .unwrap();
    check_services(&topo);
}

#[test]
fn nft_rules_load_and_route_through_the_vip() {
    root_or_skip!();
    let host_before = host_ruleset();
    let (topo, _servers, services) = setup("tb-nft");
    let rules = kubeproxy::nft(&services);
    kubeproxy::load_nft(topo.node(), &rules).unwrap();
    let listed = topo
        .node()
        .exec(&["nft", "list", "map", "ip", "kube-proxy", "service-ips"])
        .unwrap();
    assert!(
        listed.contains(&kubeproxy::nft_service_chain(&services[0])),
        "{listed}"
    );
    assert!(topo
        .node()
        .exec(&["nft", "list", "table", "ip6", "kube-proxy"])
        .is_ok());
    check_services(&topo);
    // Unallocated cluster IPs are dropped, allocated ones on other ports rejected.
    let client = &topo.pods()[2].netns;
    let v = connect(client, &["--to", "198.19.0.99:80", "--timeout-ms", "300"]);
    assert_eq!(v["errors"]["ETIMEDOUT"], 1, "{v}");
    let v = connect(client, &["--to", "198.19.0.1:81"]);
    assert_eq!(v["errors"]["ECONNREFUSED"], 1, "{v}");
    // Loading again replaces everything atomically: now only pod1 backs web.
    let mut changed = services.clone();
    changed[0].endpoints.remove(0);
    kubeproxy::load_nft(topo.node(), &kubeproxy::nft(&changed)).unwrap();
    let v = connect(client, &["--to", "198.19.0.1:80", "--count", "10"]);
    assert_eq!(set(field(&v, "backend")), set(vec!["pod1".into()]), "{v}");
    kubeproxy::load_nft(topo.node(), kubeproxy::NFT_FLUSH).unwrap();
    assert!(topo
        .node()
        .exec(&["nft", "list", "tables"])
        .unwrap()
        .trim()
        .is_empty());
    drop(_servers);
    drop(topo);
    assert_eq!(
        host_ruleset(),
        host_before,
        "the host's rules must not change"
    );
}

/// Many services load quickly (kube-proxy's structure at some scale).
#[test]
fn a_thousand_services_load() {
    root_or_skip!();
    let ns = sluice_testbed::netns::Netns::new("tb-kp-scale").unwrap();
    let services: Vec<KpService> = (0..1000u32)
        .map(|i| {
            let vip = format!("198.19.{}.{}", i / 250, 1 + i % 250);
            let eps = (0..3u8)
                .map(|k| (IpAddr::from([198, 18, 1, 10 + k]), 8080))
                .collect();
            svc(&format!("s{i}"), &vip, 80, Proto::Tcp, eps)
        })
        .collect();
    kubeproxy::load_iptables(&ns, Family::V4, &kubeproxy::iptables_restore(&services)).unwrap();
    kubeproxy::load_nft(&ns, &kubeproxy::nft(&services)).unwrap();
    let n = ns
        .exec(&["iptables-save", "-t", "nat"])
        .unwrap()
        .lines()
        .filter(|l| l.starts_with(":KUBE-SEP-"))
        .count();
    assert_eq!(n, 3000);
}

/// NodePort (externalTrafficPolicy: Cluster) through node1 of the two-node
/// topology to a backend pod on node2: node1 DNATs, masquerades and
/// forwards over link0; the reply comes back through node1 (without the
/// masquerade node2 would answer the client straight over the fabric, from
/// the pod's address, and nothing would connect).
fn check_node_port(t: &TwoNode) {
    for to in ["198.18.200.11:30080", "[fd00:5c:c8::11]:30080"] {
        let v = connect(t.client(), &["--to", to, "--count", "10"]);
        assert!(v["errors"].as_object().unwrap().is_empty(), "{to}: {v}");
        assert_eq!(set(field(&v, "backend")), set(vec!["node2-pod0".into()]), "{v}");
        let v = connect(t.client(), &["--udp", "--to", to, "--count", "10"]);
        assert!(v["errors"].as_object().unwrap().is_empty(), "{to} UDP: {v}");
        assert_eq!(set(field(&v, "peer")), set(vec![to.to_string()]), "{v}");
    }
    // A node port without endpoints is refused.
    let v = connect(t.client(), &["--to", "198.18.200.11:30081", "--count", "2"]);
    assert_eq!(v["errors"]["ECONNREFUSED"], 2, "{v}");
}

fn node_port_setup(tag: &str) -> (TwoNode, Spawned, Vec<KpService>) {
    let mut t = TwoNode::new(tag).unwrap();
    let pod = t.add_plain_pod(NodeId::Node2, 0).unwrap();
    let (ip4, ip6) = (pod.ip4, pod.ip6);
    let server = serve(&pod.netns, &pod.name, &["--tcp", "[::]:8080", "--udp", "[::]:8080"]);
    let with_np = |mut s: KpService, np| {
        s.node_port = Some(np);
        s
    };
    let services = vec![
        with_np(svc("np", "198.19.0.1", 80, Proto::Tcp, vec![(ip4.into(), 8080)]), 30080),
        with_np(svc("np-udp", "198.19.0.1", 80, Proto::Udp, vec![(ip4.into(), 8080)]), 30080),
        with_np(svc("np6", "fd00:5c:ee::1", 80, Proto::Tcp, vec![(ip6.into(), 8080)]), 30080),
        with_np(svc("np6-udp", "fd00:5c:ee::1", 80, Proto::Udp, vec![(ip6.into(), 8080)]), 30080),
        with_np(svc("none", "198.19.0.2", 80, Proto::Tcp, vec![]), 30081),
        with_np(svc("none6", "fd00:5c:ee::2", 80, Proto::Tcp, vec![]), 30081),
    ];
    (t, server, services)
}

#[test]
fn iptables_node_port_reaches_a_backend_on_the_other_node() {
    root_or_skip!();
    let (t, _server, services) = node_port_setup("sl-kpnp-ipt");
    let cfg = kube_proxy_config(NodeId::Node1);
    let node1 = t.node(NodeId::Node1);
    for f in [Family::V4, Family::V6] {
        kubeproxy::load_iptables(node1, f, &kubeproxy::iptables_restore_with(&cfg, f, &services)).unwrap();
    }
    check_node_port(&t);
}

#[test]
fn nft_node_port_reaches_a_backend_on_the_other_node() {
    root_or_skip!();
    let (t, _server, services) = node_port_setup("sl-kpnp-nft");
    let cfg = kube_proxy_config(NodeId::Node1);
    kubeproxy::load_nft(t.node(NodeId::Node1), &kubeproxy::nft_with(&cfg, &services)).unwrap();
    check_node_port(&t);
}
