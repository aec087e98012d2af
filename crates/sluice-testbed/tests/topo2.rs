//! The two-node topology (as root; skipped otherwise): the client reaches
//! node1, node1 reaches a pod on node2 over link0, the offload helpers
//! work, and nothing is left after drop.

mod common;

use common::*;
use sluice_testbed::topo2::{NodeId, TwoNode, CLIENT_IP4};

fn backends(v: &serde_json::Value) -> Vec<String> {
    field(v, "backend")
}

#[test]
fn two_node_topology() {
    root_or_skip!();
    let links_before = host_links();
    let mut t = TwoNode::new("sl-tb2").unwrap();
    let p2 = t.add_plain_pod(NodeId::Node2, 0).unwrap();
    assert_eq!(p2.ip4.to_string(), "198.18.102.10");
    let p1 = t.add_plain_pod(NodeId::Node1, 3).unwrap();
    assert_eq!(p1.ip4.to_string(), "198.18.101.13");
    assert!(
        t.add_plain_pod(NodeId::Node1, 3).is_err(),
        "the same pod twice"
    );
    let names: Vec<String> = t
        .namespaces()
        .iter()
        .map(|n| n.name().to_string())
        .collect();
    assert_eq!(names.len(), 6);
    assert!(names.iter().all(|n| n.starts_with("sl-tb2-")), "{names:?}");
    t.tx_checksum_off().unwrap();
    t.gro_on().unwrap();
    let feat = t.client().run("ethtool", &["-k", "eth0"]).unwrap();
    assert!(feat.contains("tx-checksumming: off"), "{feat}");
    let feat = t
        .node(NodeId::Node2)
        .run("ethtool", &["-k", "link0"])
        .unwrap();
    assert!(feat.contains("generic-receive-offload: on"), "{feat}");

    let pod2 = t.pod(NodeId::Node2, 0).unwrap();
    let pod1 = t.pod(NodeId::Node1, 3).unwrap();
    let servers = vec![
        serve(
            t.node(NodeId::Node1),
            "node1",
            &["--tcp", "[::]:7000", "--udp", "[::]:7001"],
        ),
        serve(&pod2.netns, "pod2", &["--tcp", "[::]:8080"]),
        serve(&pod1.netns, "pod1", &["--tcp", "[::]:8080"]),
    ];

    // Client -> node1's fabric address, both families, TCP and UDP.
    for to in ["198.18.200.11:7000", "[fd00:5c:c8::11]:7000"] {
        let r = connect(t.client(), &["--to", to, "--count", "3"]);
        assert_eq!(backends(&r), vec!["node1"; 3], "{to}: {r}");
    }
    let r = connect(t.client(), &["--to", "198.18.200.11:7001", "--udp"]);
    assert_eq!(backends(&r), vec!["node1"], "{r}");
    // The client sees node1 answer from its address; node1 sees the client's.
    let local: Vec<String> = field(
        &connect(t.client(), &["--to", "198.18.200.11:7000"]),
        "local",
    );
    assert!(local[0].starts_with(&format!("{CLIENT_IP4}:")), "{local:?}");

    // node1 -> pod on node2, across link0 (both families), and back.
    for to in ["198.18.102.10:8080", "[fd00:5c:66::a]:8080"] {
        let r = connect(t.node(NodeId::Node1), &["--to", to, "--count", "2"]);
        assert_eq!(backends(&r), vec!["pod2"; 2], "{to}: {r}");
    }
    let route = t
        .node(NodeId::Node1)
        .ip(&["route", "get", "198.18.102.10"])
        .unwrap();
    assert!(route.contains("via 198.18.210.2 dev link0"), "{route}");
    // Pod to pod across the nodes; pod to the other node's fabric address.
    let r = connect(&pod1.netns, &["--to", "198.18.102.10:8080"]);
    assert_eq!(backends(&r), vec!["pod2"], "{r}");
    let r = connect(&pod2.netns, &["--to", "[fd00:5c:65::d]:8080"]);
    assert_eq!(backends(&r), vec!["pod1"], "{r}");
    let r = connect(&pod2.netns, &["--to", "198.18.200.11:7000"]);
    assert_eq!(backends(&r), vec!["node1"], "{r}");
    // The client has no route to pods except through node1 (its default).
    let route = t.client().ip(&["route", "get", "198.18.102.10"]).unwrap();
    assert!(route.contains("via 198.18.200.11 dev eth0"), "{route}");

    drop(servers);
    drop(t);
    assert_netns_gone(&names);
    assert_eq!(host_links(), links_before, "the host's links changed");
}
