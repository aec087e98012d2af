//! Traffic from outside the node, end to end, on two nodes
//! (`sluice_testbed::topo2::TwoNode`): a client on the external network,
//! node1 and node2 each running their own agent (own pins, store, cgroup),
//! pods on both set up by the CNI plugin, a routed link between the nodes.
//! The client sends as any host outside a cluster would: plain sockets in
//! its own namespace, no socket hook anywhere near it.
//!
//! Each backend pod runs a reporter that answers "NAME PEER_ADDRESS", so a
//! test sees which backend answered and which source address it saw (the
//! client's, or the node's after SNAT).

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_e2e::{bin, require_root, NodeAgent};
use sluice_testbed::netns::Netns;
use sluice_testbed::topo2::{ethtool, NodeId, TwoNode, CLIENT_IP4, CLIENT_IP6};

const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;

/// A pod made by the CNI plugin on one node.
struct Pod {
    node: NodeId,
    ns: Netns,
    ip4: IpAddr,
    ip6: IpAddr,
}

/// Answers every TCP connection and UDP datagram with "NAME PEER\n".
struct Reporter {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

impl Reporter {
    fn start(ns: &Netns, name: &str) -> Reporter {
        let (tcp, udp) = ns.enter(|| {
            let t = TcpListener::bind(("::", TCP_PORT)).unwrap();
            let u = UdpSocket::bind(("::", UDP_PORT)).unwrap();
            (t, u)
        });
        tcp.set_nonblocking(true).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (s1, s2) = (stop.clone(), stop.clone());
        let (n1, n2) = (name.to_string(), name.to_string());
        let t1 = std::thread::spawn(move || {
            while !s1.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((mut s, peer)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut line = String::new();
                        let _ = BufReader::new(&s).read_line(&mut line);
                        let _ = s.write_all(format!("{n1} {}\n", unmap(peer.ip())).as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        let t2 = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s2.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(format!("{n2} {}\n", unmap(peer.ip())).as_bytes(), peer);
                }
            }
        });
        Reporter { stop, threads: vec![t1, t2] }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// What a reporter answered: (backend name, the source address it saw).
type Answer = Option<(String, IpAddr)>;

fn parse_answer(line: &str) -> Answer {
    let mut it = line.split_whitespace();
    Some((it.next()?.to_string(), it.next()?.parse().ok()?))
}

/// One TCP request from the client (source port chosen by the kernel).
fn tcp_ask(client: &Netns, to: SocketAddr) -> Answer {
    client.enter(|| {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_millis(1500)).ok()?;
        s.set_read_timeout(Some(Duration::from_millis(1500))).ok()?;
        s.write_all(b"hi\n").ok()?;
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).ok()?;
        parse_answer(&line)
    })
}

/// One UDP request from the client, from `src_port` (0: any).
fn udp_ask(client: &Netns, to: SocketAddr, src_port: u16) -> Answer {
    client.enter(|| {
        let local: SocketAddr = if to.is_ipv4() { (CLIENT_IP4, src_port).into() } else { (CLIENT_IP6, src_port).into() };
        let s = UdpSocket::bind(local).ok()?;
        s.connect(to).ok()?;
        s.set_read_timeout(Some(Duration::from_millis(700))).ok()?;
        let mut buf = [0u8; 256];
        for _ in 0..3 {
            s.send(b"hi").ok()?;
            if let Ok(n) = s.recv(&mut buf) {
                return parse_answer(std::str::from_utf8(&buf[..n]).ok()?);
            }
        }
        None
    })
}

struct Cluster {
    reporters: Vec<Reporter>,
    pods: Vec<Pod>,
    agents: Vec<NodeAgent>,
    topo: TwoNode,
    tmp: std::path::PathBuf,
}

fn unique() -> u32 {
    use std::sync::atomic::AtomicU32;
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

impl Cluster {
    /// Both nodes with an agent each; `extra` flags for both.
    fn new(name: &str, extra: &[&str]) -> Cluster {
        Cluster::with_flags(name, extra, extra)
    }

    fn with_flags(name: &str, node1: &[&str], node2: &[&str]) -> Cluster {
        require_root();
        let topo = TwoNode::new(&format!("sl-np{name}")).unwrap();
        let mut agents = Vec::new();
        for (id, extra) in [(NodeId::Node1, node1), (NodeId::Node2, node2)] {
            let (c4, c6) = (id.pod_cidr4(), id.pod_cidr6());
            let mut args = vec![
                "--node-name",
                id.name(),
                "--external-dev",
                "eth0",
                "--external-dev",
                "link0",
                "--pod-cidr",
                &c4,
                "--pod-cidr",
                &c6,
            ];
            args.extend_from_slice(extra);
            agents.push(NodeAgent::start(topo.node(id), &format!("np{name}-{}", id.name()), &args).unwrap());
        }
        let tmp = std::env::temp_dir().join(format!("sluice-e2e-np{name}-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&tmp).unwrap();
        Cluster { reporters: Vec::new(), pods: Vec::new(), agents, topo, tmp }
    }

    fn agent(&self, id: NodeId) -> &NodeAgent {
        &self.agents[if id == NodeId::Node1 { 0 } else { 1 }]
    }

    /// A pod on `node`, set up by sluice-cni as a runtime runs it, with a
    /// reporter answering as `name`.
    fn add_pod(&mut self, node: NodeId, name: &str) -> usize {
        let ns = Netns::new("sl-np-pod").unwrap();
        let agent = self.agent(node);
        let conf = json!({"cniVersion": "1.1.0", "name": "sluice-e2e", "type": "sluice-cni", "agentSocket": agent.socket});
        let mut cmd = sluice_testbed::proc::command(Some(self.topo.node(node)), None, &bin("sluice-cni"), &[]).unwrap();
        cmd.env_clear()
            .env("CNI_COMMAND", "ADD")
            .env("CNI_PATH", "/opt/cni/bin")
            .env("CNI_CONTAINERID", format!("{name}-{}", unique()))
            .env("CNI_NETNS", ns.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", format!("K8S_POD_NAMESPACE=e2e;K8S_POD_NAME={name}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "CNI ADD of {name}: {}\n{}", String::from_utf8_lossy(&o.stdout), agent.log_text());
        let result: Value = serde_json::from_slice(&o.stdout).unwrap();
        let mut ip4 = None;
        let mut ip6 = None;
        for ip in result["ips"].as_array().unwrap() {
            let a: IpAddr = ip["address"].as_str().unwrap().split('/').next().unwrap().parse().unwrap();
            if a.is_ipv4() {
                ip4 = Some(a);
            } else {
                ip6 = Some(a);
            }
        }
        self.reporters.push(Reporter::start(&ns, name));
        self.pods.push(Pod { node, ns, ip4: ip4.unwrap(), ip6: ip6.unwrap() });
        self.pods.len() - 1
    }

    /// GRO (veth NAPI) on every device that may receive an XDP_REDIRECTed
    /// or XDP_TXed frame, the CNI pods' ends included.
    fn gro_on(&self) {
        self.topo.gro_on().unwrap();
        for p in &self.pods {
            ethtool(&p.ns, "eth0", &["gro", "on"]).unwrap();
        }
    }

    /// Full checksums from the client and the pods (for XDP).
    fn tx_checksums_off(&self) {
        self.topo.tx_checksum_off().unwrap();
        for p in &self.pods {
            ethtool(&p.ns, "eth0", &["tx", "off"]).unwrap();
        }
    }

    /// A Service `web` with ports tcp 80 (node port 30080) and udp 53
    /// (node port 30053), `spec_extra` merged into its spec, and one
    /// EndpointSlice per family with the given pods (and their nodes),
    /// applied to both agents.
    fn apply_web(&self, spec_extra: &str, pods: &[usize]) {
        self.apply_svc("NodePort", spec_extra, pods)
    }

    fn apply_svc(&self, ty: &str, spec_extra: &str, pods: &[usize]) {
        let mut yaml = format!(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: e2e
spec:
  type: {ty}
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  clusterIPs: [198.19.7.10, 'fd00:5c:ee::7:10']
  ports:
  - {{name: http, port: 80, targetPort: {TCP_PORT}, nodePort: 30080, protocol: TCP}}
  - {{name: dns, port: 53, targetPort: {UDP_PORT}, nodePort: 30053, protocol: UDP}}
{spec_extra}"
        );
        for (fam, v6) in [("IPv4", false), ("IPv6", true)] {
            let mut eps = String::new();
            for &i in pods {
                let p = &self.pods[i];
                let a = if v6 { p.ip6 } else { p.ip4 };
                eps.push_str(&format!("\n- addresses: ['{a}']\n  nodeName: {}\n  conditions: {{ready: true}}", p.node.name()));
            }
            if eps.is_empty() {
                eps = " []".into();
            }
            yaml.push_str(&format!(
                "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-{}
  namespace: e2e
  labels: {{kubernetes.io/service-name: web}}
addressType: {fam}
ports:
- {{name: http, port: {TCP_PORT}, protocol: TCP}}
- {{name: dns, port: {UDP_PORT}, protocol: UDP}}
endpoints:{eps}
",
                fam.to_lowercase()
            ));
        }
        let path = self.tmp.join(format!("web-{}.yaml", unique()));
        std::fs::write(&path, &yaml).unwrap();
        for a in &self.agents {
            a.ok(&["apply", "-f", path.to_str().unwrap()]);
        }
    }

    fn client(&self) -> &Netns {
        self.topo.client()
    }

    /// `n` TCP requests to `to`, each on a new connection.
    fn tcp_many(&self, to: SocketAddr, n: usize) -> Vec<Answer> {
        (0..n).map(|_| tcp_ask(self.client(), to)).collect()
    }

    /// `n` UDP requests to `to`, each from a new source port.
    fn udp_many(&self, to: SocketAddr, n: usize) -> Vec<Answer> {
        (0..n).map(|_| udp_ask(self.client(), to, 0)).collect()
    }

    fn logs(&self) -> String {
        self.agents.iter().map(|a| format!("--- {}\n{}", a.name, a.log_text())).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.reporters.clear();
        self.agents.clear();
        self.pods.clear();
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

fn node_addr(id: NodeId, v6: bool) -> IpAddr {
    if v6 {
        id.ip6().into()
    } else {
        id.ip4().into()
    }
}

fn client_addr(v6: bool) -> IpAddr {
    if v6 {
        CLIENT_IP6.into()
    } else {
        CLIENT_IP4.into()
    }
}

/// Names of the backends that answered, and the sources each saw.
fn summary(answers: &[Answer]) -> std::collections::BTreeMap<String, std::collections::BTreeSet<IpAddr>> {
    let mut m = std::collections::BTreeMap::<String, std::collections::BTreeSet<IpAddr>>::new();
    for (name, src) in answers.iter().flatten() {
        m.entry(name.clone()).or_default().insert(*src);
    }
    m
}

#[test]
fn nodeport_from_outside_reaches_local_and_remote_backends_and_comes_back() {
    let mut c = Cluster::new("1", &[]);
    let a = c.add_pod(NodeId::Node1, "pod-n1");
    let b = c.add_pod(NodeId::Node2, "pod-n2");
    c.apply_web("", &[a, b]);
    for v6 in [false, true] {
        for via in [NodeId::Node1, NodeId::Node2] {
            let fam = if v6 { "IPv6" } else { "IPv4" };
            let tcp = c.tcp_many(SocketAddr::new(node_addr(via, v6), 30080), 24);
            let udp = c.udp_many(SocketAddr::new(node_addr(via, v6), 30053), 24);
            for (what, answers) in [("TCP", &tcp), ("UDP", &udp)] {
                assert!(answers.iter().all(Option::is_some), "{fam} {what} via {}: every request answered: {answers:?}\n{}", via.name(), c.logs());
                let s = summary(answers);
                // Both nodes' backends serve; the one on the receiving node
                // sees the client itself, the other the receiving node (SNAT).
                let (local, remote) = if via == NodeId::Node1 { ("pod-n1", "pod-n2") } else { ("pod-n2", "pod-n1") };
                assert_eq!(s.keys().cloned().collect::<Vec<_>>(), vec!["pod-n1".to_string(), "pod-n2".to_string()], "{fam} {what} via {}: {s:?}", via.name());
                assert_eq!(s[local], [client_addr(v6)].into(), "{fam} {what} via {}: the local backend sees the client", via.name());
                assert_eq!(s[remote], [node_addr(via, v6)].into(), "{fam} {what} via {}: the remote backend sees the node (SNAT)", via.name());
            }
        }
    }
    for id in [NodeId::Node1, NodeId::Node2] {
        let ag = c.agent(id);
        assert!(ag.metric("nodeport_local") > 0, "{}", id.name());
        assert!(ag.metric("nodeport_snat") > 0, "{}", id.name());
        assert!(ag.metric("nodeport_reply") > 0, "{}", id.name());
    }
    // The conntrack and NAT listings show the flows, and filters work.
    let ct: Value = serde_json::from_str(&c.agent(NodeId::Node1).ok(&["bpf", "ct", "list", "-o", "json", "--bpffs", c.agent(NodeId::Node1).pin_dir.to_str().unwrap(), "--port", "30080"])).unwrap();
    let kinds: std::collections::BTreeSet<&str> = ct.as_array().unwrap().iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds, ["nodeport", "nodeport-snat"].into(), "conntrack entries for port 30080, both kinds: {ct}");
    let nat: Value = serde_json::from_str(&c.agent(NodeId::Node1).ok(&["bpf", "nat", "list", "-o", "json", "--bpffs", c.agent(NodeId::Node1).pin_dir.to_str().unwrap(), "--proto", "udp"])).unwrap();
    assert!(!nat.as_array().unwrap().is_empty() && nat.as_array().unwrap().iter().all(|e| e["kind"] == "nodeport"), "NAT entries for UDP: {nat}");
}

#[test]
fn external_traffic_policy_local_keeps_the_client_and_drops_without_a_local_backend() {
    let mut c = Cluster::new("2", &[]);
    let a = c.add_pod(NodeId::Node1, "pod-n1");
    let b = c.add_pod(NodeId::Node2, "pod-n2");
    c.apply_web("  externalTrafficPolicy: Local\n", &[a, b]);
    for v6 in [false, true] {
        for (via, only) in [(NodeId::Node1, "pod-n1"), (NodeId::Node2, "pod-n2")] {
            let tcp = c.tcp_many(SocketAddr::new(node_addr(via, v6), 30080), 12);
            let udp = c.udp_many(SocketAddr::new(node_addr(via, v6), 30053), 12);
            for answers in [&tcp, &udp] {
                let s = summary(answers);
                assert_eq!(s.len(), 1, "only the local backend via {}: {s:?}\n{}", via.name(), c.logs());
                assert_eq!(s[only], [client_addr(v6)].into(), "the client's own address reaches the backend");
            }
        }
    }
    // Only node2 has a backend now: node1 drops (as Kubernetes defines).
    c.apply_web("  externalTrafficPolicy: Local\n", &[b]);
    assert_eq!(udp_ask(c.client(), SocketAddr::new(node_addr(NodeId::Node1, false), 30053), 0), None);
    assert_eq!(tcp_ask(c.client(), SocketAddr::new(node_addr(NodeId::Node1, false), 30080)), None);
    assert!(c.agent(NodeId::Node1).metric("drop_no_local_backend") >= 2);
    assert_eq!(summary(&c.udp_many(SocketAddr::new(node_addr(NodeId::Node2, false), 30053), 4)).len(), 1);
    assert_eq!(c.agent(NodeId::Node1).metric("nodeport_snat"), 0, "Local never SNATs");
}

#[test]
fn dsr_backend_answers_the_client_directly() {
    let mut c = Cluster::new("3", &["--lb-mode", "dsr"]);
    let b = c.add_pod(NodeId::Node2, "pod-n2");
    c.apply_web("", &[b]);
    for v6 in [false, true] {
        let to_tcp = SocketAddr::new(node_addr(NodeId::Node1, v6), 30080);
        let to_udp = SocketAddr::new(node_addr(NodeId::Node1, v6), 30053);
        for answers in [c.tcp_many(to_tcp, 8), c.udp_many(to_udp, 8)] {
            assert!(answers.iter().all(Option::is_some), "answered: {answers:?}\n{}", c.logs());
            // No SNAT: the backend sees the client, and answers it with the
            // node port as the source (the client's socket would drop anything else).
            assert_eq!(summary(&answers)["pod-n2"], [client_addr(v6)].into());
        }
    }
    assert!(c.agent(NodeId::Node1).metric("nodeport_dsr") > 0);
    assert_eq!(c.agent(NodeId::Node1).metric("nodeport_reply"), 0, "replies do not come back through node1");
    assert_eq!(c.agent(NodeId::Node1).metric("nodeport_snat"), 0);
    assert!(c.agent(NodeId::Node2).metric("dsr_backend") >= 16, "node2 took the option in");
}

#[test]
fn maglev_picks_the_same_backend_on_both_nodes_and_moves_only_the_flows_of_a_removed_one() {
    let mut c = Cluster::new("4", &["--lb-algorithm", "maglev"]);
    let pods: Vec<usize> = (0..4).map(|i| c.add_pod(if i % 2 == 0 { NodeId::Node1 } else { NodeId::Node2 }, &format!("pod{i}"))).collect();
    // A LoadBalancer IP: the same destination whichever node a flow reaches.
    let lb = "  loadBalancerIP: 198.18.250.10\n";
    let status = "status: {loadBalancer: {ingress: [{ip: 198.18.250.10}]}}\n";
    c.apply_svc("LoadBalancer", &format!("{lb}{status}"), &pods);
    let vip = SocketAddr::new("198.18.250.10".parse().unwrap(), 53);
    let via = |c: &Cluster, n: NodeId| {
        c.client().ip(&["route", "replace", "198.18.250.10/32", "via", &n.ip4().to_string()]).unwrap();
    };
    let ports: Vec<u16> = (0..40).map(|i| 20000 + i).collect();
    let ask_all = |c: &Cluster, ports: &[u16]| -> Vec<String> {
        ports.iter().map(|p| udp_ask(c.client(), vip, *p).map(|a| a.0).unwrap_or_else(|| "no answer".to_string())).collect()
    };
    via(&c, NodeId::Node1);
    let first = ask_all(&c, &ports);
    via(&c, NodeId::Node2);
    let second = ask_all(&c, &ports);
    assert!(!first.iter().any(|b| b == "no answer"), "{first:?}\n{}", c.logs());
    assert_eq!(first, second, "every node sends a flow to the same backend");
    let spread: std::collections::BTreeSet<&String> = first.iter().collect();
    assert!(spread.len() >= 3, "40 flows spread over the 4 backends: {first:?}");

    // New flows through node1, then pod3 leaves; the same flows through
    // node2 (no conntrack entry for them there): only pod3's flows move.
    let fresh: Vec<u16> = (0..40).map(|i| 21000 + i).collect();
    // `sluice lb simulate` on node1's live maps predicts each of them.
    let n1 = c.agent(NodeId::Node1);
    let predicted: Vec<String> = fresh
        .iter()
        .map(|p| {
            let src = format!("{CLIENT_IP4}:{p}");
            let out = n1.ok(&["lb", "simulate", "--src", &src, "--dst", "198.18.250.10:53", "--proto", "udp", "--bpffs", n1.pin_dir.to_str().unwrap(), "-o", "json"]);
            let v: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["selection"]["by"], "maglev", "{v}");
            let addr: SocketAddr = v["backend"]["addr"].as_str().unwrap().parse().unwrap();
            let i = c.pods.iter().position(|pod| pod.ip4 == addr.ip()).unwrap_or_else(|| panic!("{addr} is no pod"));
            format!("pod{i}")
        })
        .collect();
    via(&c, NodeId::Node1);
    let before = ask_all(&c, &fresh);
    assert_eq!(predicted, before, "the simulator agrees with the datapath");
    c.apply_svc("LoadBalancer", &format!("{lb}{status}"), &pods[..3]);
    via(&c, NodeId::Node2);
    let after = ask_all(&c, &fresh);
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        if b == "pod3" {
            assert_ne!(a, "pod3", "flow {i} left the removed backend");
        } else {
            assert_eq!(a, b, "flow {i} stays on its backend");
        }
    }
}

#[test]
fn snat_port_exhaustion_drops_new_flows_and_is_counted() {
    let mut c = Cluster::with_flags("5", &["--snat-ports", "40000-40001"], &[]);
    let b = c.add_pod(NodeId::Node2, "pod-n2");
    c.apply_web("", &[b]);
    let to = SocketAddr::new(node_addr(NodeId::Node1, false), 30053);
    // Two flows get the two ports; the third finds none.
    assert!(udp_ask(c.client(), to, 30001).is_some());
    assert!(udp_ask(c.client(), to, 30002).is_some());
    assert_eq!(udp_ask(c.client(), to, 30003), None, "no port left for a third flow\n{}", c.logs());
    assert!(c.agent(NodeId::Node1).metric("drop_snat_ports_exhausted") >= 1);
    // The first flow still works.
    assert!(udp_ask(c.client(), to, 30001).is_some());
    let n1 = c.agent(NodeId::Node1);
    let status = n1.ok(&["bpf", "metrics", "--bpffs", n1.pin_dir.to_str().unwrap()]);
    assert!(status.contains("drop_snat_ports_exhausted"), "{status}");
}

#[test]
fn xdp_forwards_to_remote_backends_and_tc_does_the_rest() {
    xdp_case("6", "generic");
}

/// Native XDP on veth: the test bed's devices support it once the
/// receiving ends run NAPI (GRO on).
#[test]
fn xdp_native_forwards_to_remote_backends_and_tc_does_the_rest() {
    xdp_case("8", "native");
}

fn xdp_case(name: &str, mode: &str) {
    let mut c = Cluster::with_flags(name, &["--xdp", mode], &[]);
    let a = c.add_pod(NodeId::Node1, "pod-n1");
    let b = c.add_pod(NodeId::Node2, "pod-n2");
    c.tx_checksums_off();
    if mode == "native" {
        c.gro_on();
    }
    c.apply_web("", &[a, b]);
    for v6 in [false, true] {
        let tcp = c.tcp_many(SocketAddr::new(node_addr(NodeId::Node1, v6), 30080), 16);
        let udp = c.udp_many(SocketAddr::new(node_addr(NodeId::Node1, v6), 30053), 16);
        for answers in [&tcp, &udp] {
            let n1 = c.agent(NodeId::Node1);
            assert!(
                answers.iter().all(Option::is_some),
                "{mode}: answered: {answers:?}\n{}",
                n1.ok(&["bpf", "metrics", "--bpffs", n1.pin_dir.to_str().unwrap()])
            );
            let s = summary(answers);
            assert_eq!(s["pod-n1"], [client_addr(v6)].into());
            assert_eq!(s["pod-n2"], [node_addr(NodeId::Node1, v6)].into());
        }
    }
    let n1 = c.agent(NodeId::Node1);
    assert!(n1.metric("xdp_forward") > 0, "XDP forwarded the remote flows");
    assert!(n1.metric("xdp_pass") > 0, "and left the local ones to tc");
    let st = n1.ok(&["status"]);
    assert!(!st.contains("NOT fully attached"), "{st}");
}

#[test]
fn clusterip_from_outside_is_not_served() {
    let mut c = Cluster::new("7", &[]);
    let b = c.add_pod(NodeId::Node2, "pod-n2");
    c.apply_web("", &[b]);
    c.client().ip(&["route", "replace", "198.19.7.10/32", "via", &NodeId::Node1.ip4().to_string()]).unwrap();
    let t0 = Instant::now();
    assert_eq!(udp_ask(c.client(), "198.19.7.10:53".parse().unwrap(), 0), None);
    assert!(t0.elapsed() >= Duration::from_millis(500));
    assert!(c.agent(NodeId::Node1).metric("clusterip_from_outside") >= 1);
}

/// `--xdp native` on a device whose driver has no native XDP (a bridge):
/// the agent stays at tc for it and says so, in its log and `sluice status`.
#[test]
fn xdp_native_without_driver_support_falls_back_to_tc_and_says_so() {
    require_root();
    let ns = Netns::new("sl-np-noxdp").unwrap();
    ns.ip_batch(&["link add br-ext type bridge", "link set br-ext up", "addr add 192.0.2.1/24 dev br-ext"]).unwrap();
    let a = NodeAgent::start(&ns, "np-noxdp", &["--external-dev", "br-ext", "--xdp", "native", "--node-name", "n"]).unwrap();
    let st = a.ok(&["status"]);
    assert!(st.contains("WARNING") && st.contains("br-ext: no native XDP"), "{st}");
    assert!(a.log_text().contains("no native XDP"), "{}", a.log_text());
    // The tcx programs are on the device.
    let o = ns.run("bpftool", &["net", "show", "dev", "br-ext"]).unwrap_or_default();
    let links = std::fs::read_dir(a.pin_dir.join("links").join("host")).unwrap().count();
    assert_eq!(links, 2, "tcx ingress and egress pinned for br-ext: {o}");
    assert!(!a.pin_dir.join("links").join("xdp").join("br-ext_v1").exists());
}

/// One HTTP GET from the client; (status line, body).
fn http_get(client: &Netns, to: SocketAddr) -> Option<(String, String)> {
    client.enter(|| {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_millis(1500)).ok()?;
        s.set_read_timeout(Some(Duration::from_millis(1500))).ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: lb\r\n\r\n").ok()?;
        let mut out = String::new();
        std::io::Read::read_to_string(&mut s, &mut out).ok()?;
        let (head, body) = out.split_once("\r\n\r\n")?;
        Some((head.lines().next()?.to_string(), body.to_string()))
    })
}

/// `externalTrafficPolicy: Local` on a LoadBalancer: each node answers the
/// load balancer's health check on the health check node port with 200 if
/// it has endpoints of the service and 503 if not, as kube-proxy does.
#[test]
fn health_check_node_port_tells_the_load_balancer_which_nodes_have_endpoints() {
    let mut c = Cluster::new("9", &[]);
    let a = c.add_pod(NodeId::Node1, "pod-n1");
    let b = c.add_pod(NodeId::Node2, "pod-n2");
    let spec = "  externalTrafficPolicy: Local\n  healthCheckNodePort: 32100\n";
    c.apply_svc("LoadBalancer", spec, &[b]);
    let at = |id: NodeId| SocketAddr::new(node_addr(id, false), 32100);
    let (st1, body1) = http_get(c.client(), at(NodeId::Node1)).unwrap_or_else(|| panic!("node1 answers\n{}", c.logs()));
    assert_eq!(st1, "HTTP/1.1 503 Service Unavailable", "{body1}");
    assert_eq!(
        serde_json::from_str::<Value>(&body1).unwrap(),
        json!({"service": {"namespace": "e2e", "name": "web"}, "localEndpoints": 0, "serviceProxyHealthy": true})
    );
    let (st2, body2) = http_get(c.client(), at(NodeId::Node2)).unwrap();
    assert_eq!(st2, "HTTP/1.1 200 OK", "{body2}");
    assert_eq!(serde_json::from_str::<Value>(&body2).unwrap()["localEndpoints"], 1);
    // An endpoint appears on node1: its answer follows, over IPv6 too.
    c.apply_svc("LoadBalancer", spec, &[a, b]);
    let (st1, _) = http_get(c.client(), at(NodeId::Node1)).unwrap();
    assert_eq!(st1, "HTTP/1.1 200 OK");
    let (st6, _) = http_get(c.client(), SocketAddr::new(node_addr(NodeId::Node1, true), 32100)).unwrap();
    assert_eq!(st6, "HTTP/1.1 200 OK");
    let status = c.agent(NodeId::Node1).ok(&["status"]);
    assert!(status.contains("health:     :32100 for e2e/web (1 local endpoint: 200)"), "{status}");
    // Back to Cluster: no health check port any more.
    c.apply_svc("LoadBalancer", "", &[a, b]);
    assert_eq!(http_get(c.client(), at(NodeId::Node1)), None, "the port is closed");
}

/// With `--masquerade` on the nodes, a remote backend's reply to the SNAT
/// address of the node that balanced the flow must not be masqueraded again
/// on its way back: `--no-masquerade-cidr` for the node network (and the
/// cluster's pod CIDRs) says so. Without it, that reply cannot find its flow.
#[test]
fn masquerading_nodes_leave_replies_to_another_nodes_snat_alone_when_told() {
    let exempt = [
        "--masquerade",
        "--no-masquerade-cidr",
        "198.18.200.0/24",
        "--no-masquerade-cidr",
        "fd00:5c:c8::/64",
        "--no-masquerade-cidr",
        "198.18.96.0/19",
        "--no-masquerade-cidr",
        "fd00:5c:60::/44",
    ];
    let mut c = Cluster::new("10", &exempt);
    let b = c.add_pod(NodeId::Node2, "pod-n2");
    c.apply_web("", &[b]);
    for v6 in [false, true] {
        let answers = c.tcp_many(SocketAddr::new(node_addr(NodeId::Node1, v6), 30080), 6);
        assert!(answers.iter().all(Option::is_some), "{answers:?}\n{}", c.logs());
        assert_eq!(summary(&answers)["pod-n2"], [node_addr(NodeId::Node1, v6)].into());
    }
    drop(c);
    // The control: masquerade without the exemption breaks that reply.
    let mut c = Cluster::new("11", &["--masquerade"]);
    let b = c.add_pod(NodeId::Node2, "pod-n2");
    c.apply_web("", &[b]);
    assert_eq!(tcp_ask(c.client(), SocketAddr::new(node_addr(NodeId::Node1, false), 30080)), None);
    assert!(c.agent(NodeId::Node2).metric("snat") > 0, "node2 masqueraded the reply");
}
