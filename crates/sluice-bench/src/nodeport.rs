//! `sluice-bench nodeport`: a NodePort whose backend is on another node,
//! through node1 of the two-node topology ([`TwoNode`]): node1 must DNAT to
//! the backend, SNAT to itself and forward over link0 to node2, where a
//! plain pod serves. Measured per contender (only node1 changes between
//! them; node2 and the backend are plain, the same for all):
//!
//! * packets per second: a UDP flood from the client to
//!   198.18.200.11:30080 (`--flows` source ports, small datagrams, sendmmsg
//!   in a tight loop on one CPU) and a sink in the backend pod counting what
//!   arrives (recvmmsg), over the same time window;
//! * new-connection latency (connect, one request/answer, close) to the
//!   node port, interleaved connection by connection, from one client
//!   process, with the same connection to a server on node2 reached
//!   straight over the fabric (through no contender: a reference that
//!   drifts with the machine, not with the contender).
//!
//! Each flood to the node port is paired, in alternating order, with the
//! same flood to the pod's own address, routed by node1 under the same
//! contender: received(node port) / received(routed), per round, is the
//! cost of translation on a machine whose speed drifts.
//!
//! Contenders: `routing` (nothing loaded; the flood and the connections go
//! to the pod's own address: what forwarding alone costs), `iptables` and
//! `nftables` (kube-proxy's rules for the N services in node1), `sluice-tc`
//! and `sluice-xdp` (`sluice agent` in node1 with `--external-dev eth0`, and
//! `--xdp native`). A contender that cannot be set up, or that forwards
//! nothing, is reported as such; the others are still measured.
//!
//! The client's and the pod's transmit checksum offload is off and GRO is on
//! at every veth end (what XDP needs: full checksums, NAPI at the receiver of
//! redirected frames) for every contender alike, so that node1's datapath is
//! the only difference.
//!
//! Rounds (pps then a share of the latency samples) repeat per contender;
//! contenders run one after the other (loading 10,000 services into nft
//! takes a minute, so switching between them per round is not sensible),
//! in an order that alternates with N.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::Value;
use sluice_testbed::cgroup::TestCgroup;
use sluice_testbed::kubeproxy::{self, Family, KpService, Proto};
use sluice_testbed::netns::Netns;
use sluice_testbed::proc::{run_in, spawn_in_capture, spawn_ready, Spawned};
use sluice_testbed::stats::percentile;
use sluice_testbed::topo2::{kube_proxy_config, NodeId, TwoNode, EXTERNAL_DEV};

use crate::{bin, client_in, fake_endpoint, machine, median, settle, timed_stdin_in, vip, Agent, Cleanup};

/// The measured node port, and the backend's port.
const NODE_PORT: u16 = 30080;
const BACKEND_PORT: u16 = 8080;
/// A server on node2, reached over the fabric: the latency reference.
const REF_PORT: u16 = 7000;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Contender {
    /// No translation: straight to the pod's address, routed by node1.
    Routing,
    /// kube-proxy iptables mode.
    Iptables,
    /// kube-proxy nftables mode.
    Nftables,
    /// Sluice, tcx programs on node1's eth0.
    SluiceTc,
    /// Sluice with `--xdp native`.
    SluiceXdp,
}

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::Routing => "routing",
            Contender::Iptables => "iptables",
            Contender::Nftables => "nftables",
            Contender::SluiceTc => "sluice-tc",
            Contender::SluiceXdp => "sluice-xdp",
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct NodePortArgs {
    /// Numbers of services (the measured one plus N-1 others; the first
    /// 2,767 others get node ports too, the rest are ClusterIP only).
    #[arg(long, value_delimiter = ',', default_value = "1,10000")]
    sizes: Vec<usize>,
    /// Contenders to measure.
    #[arg(long, value_delimiter = ',', default_value = "routing,iptables,nftables,sluice-tc,sluice-xdp")]
    contenders: Vec<Contender>,
    /// Seconds of flood per round.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Rounds per contender (each: one flood, then a share of the latency samples).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Flows in the flood (distinct source ports).
    #[arg(long, default_value_t = 64)]
    flows: usize,
    /// UDP payload bytes.
    #[arg(long, default_value_t = 18)]
    payload: usize,
    /// CPU of the flooder and the latency client.
    #[arg(long, default_value_t = 1)]
    client_cpu: usize,
    /// CPU of the sink and the backend's TCP server.
    #[arg(long, default_value_t = 0)]
    server_cpu: usize,
    /// New connections per contender (each also paired with one straight to the pod).
    #[arg(long, default_value_t = 2000)]
    samples: usize,
    /// Extra `sluice agent` flags for both Sluice contenders, e.g. "--lb-mode snat --ct-max 262144".
    #[arg(long, allow_hyphen_values = true, default_value = "")]
    agent_args: String,
    /// Start the agent without the NodePort datapath's flags (`--node-name`,
    /// `--xdp`): today's agent, to check the plumbing (start, apply of the
    /// NodePort YAML, teardown) before that datapath lands.
    #[arg(long, hide = true)]
    without_nodeport_flags: bool,
    /// Write the results as JSON here.
    #[arg(long, default_value = "bench/nodeport.json")]
    out: PathBuf,
}

#[derive(Debug, Clone, Serialize, Default)]
struct PpsRound {
    sent: f64,
    received: f64,
    /// The same flood to the pod's own address, routed by node1 under the
    /// same contender (not for the routing contender: that is its target).
    routed_sent: Option<f64>,
    routed_received: Option<f64>,
}

/// Medians over rounds.
#[derive(Debug, Clone, Serialize, Default)]
struct Pps {
    sent: f64,
    received: f64,
    /// received / sent.
    ratio: f64,
    routed_received: Option<f64>,
    /// received / routed received, per round.
    vs_routed: Option<f64>,
    rounds: Vec<PpsRound>,
}

#[derive(Debug, Clone, Serialize, Default)]
struct Latency {
    p50_us: f64,
    p99_us: f64,
}

#[derive(Debug, Clone, Serialize)]
struct Row {
    n: usize,
    contender: Contender,
    /// `ok`, or why it was not (fully) measured.
    status: String,
    /// Loading the rules / starting the agent and applying the services.
    setup_ms: Option<f64>,
    /// BPF programs on node1's eth0 while the contender ran (bpftool).
    attached: String,
    pps: Option<Pps>,
    latency: Option<Latency>,
    /// The same client's connections to a server on node2 straight over
    /// the fabric (198.18.200.12:7000: through no contender), interleaved
    /// connection by connection: a reference that drifts with the machine.
    ref_latency: Option<Latency>,
    /// Median over rounds of (target p50 / reference p50).
    vs_ref_p50: Option<f64>,
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we pass; CLOCK_MONOTONIC is
    // system-wide, so every process (in any namespace) reads the same clock.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn wait_until(t: u64) {
    let n = now_ns();
    if t > n {
        std::thread::sleep(Duration::from_nanos(t - n));
    }
}

/// `sluice-bench __flood DST FLOWS PAYLOAD GO_NS START_NS END_NS`: from
/// GO_NS (CLOCK_MONOTONIC) send datagrams to DST from FLOWS connected
/// sockets in turn, a sendmmsg batch each, until a little after END_NS;
/// print `{"sent": N}`, the datagrams accepted between START_NS and END_NS.
pub fn flood_main(args: &[String]) -> anyhow::Result<()> {
    const BATCH: usize = 32;
    let dst: SocketAddr = args[0].parse()?;
    let flows: usize = args[1].parse()?;
    let payload = vec![0x5au8; args[2].parse()?];
    let (go, start, end): (u64, u64, u64) = (args[3].parse()?, args[4].parse()?, args[5].parse()?);
    let any: SocketAddr = if dst.is_ipv4() { "0.0.0.0:0".parse()? } else { "[::]:0".parse()? };
    let socks: Vec<UdpSocket> = (0..flows)
        .map(|_| {
            let s = UdpSocket::bind(any)?;
            s.connect(dst)?;
            Ok(s)
        })
        .collect::<anyhow::Result<_>>()?;
    let mut iov = libc::iovec { iov_base: payload.as_ptr() as *mut libc::c_void, iov_len: payload.len() };
    // SAFETY: an all-zero mmsghdr is valid (no name, no control data).
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for m in &mut msgs {
        m.msg_hdr.msg_iov = &mut iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    wait_until(go);
    let stop = end + 200_000_000;
    let mut sent: u64 = 0;
    'outer: loop {
        for s in &socks {
            // SAFETY: msgs holds BATCH initialised headers whose one iovec
            // points at `payload`, alive for the whole loop; the kernel only
            // reads them (and writes msg_len).
            let n = unsafe { libc::sendmmsg(s.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, libc::MSG_DONTWAIT) };
            let t = now_ns();
            if n > 0 && t >= start && t < end {
                sent += n as u64;
            }
            if t >= stop {
                break 'outer;
            }
        }
    }
    println!("{}", serde_json::json!({ "sent": sent }));
    Ok(())
}

/// `sluice-bench __sink BIND START_NS END_NS`: count the datagrams received
/// on BIND (recvmmsg) between START_NS and END_NS; print `{"received": N}`.
pub fn sink_main(args: &[String]) -> anyhow::Result<()> {
    const BATCH: usize = 64;
    let bind: SocketAddr = args[0].parse()?;
    let (start, end): (u64, u64) = (args[1].parse()?, args[2].parse()?);
    let s = UdpSocket::bind(bind).with_context(|| format!("binding {bind}"))?;
    s.set_read_timeout(Some(Duration::from_millis(20)))?;
    let size: libc::c_int = 16 << 20;
    // SAFETY: setsockopt reads an int from the pointer we pass with its size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    let mut bufs = vec![[0u8; 256]; BATCH];
    let mut iovs: Vec<libc::iovec> =
        bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect();
    // SAFETY: an all-zero mmsghdr is valid.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let mut received: u64 = 0;
    loop {
        // SAFETY: each header points at its own iovec and 256-byte buffer,
        // all alive for the loop; the kernel writes at most iov_len bytes.
        let n = unsafe {
            libc::recvmmsg(s.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, libc::MSG_WAITFORONE, std::ptr::null_mut())
        };
        let t = now_ns();
        if n > 0 && t >= start && t < end {
            received += n as u64;
        }
        if t >= end {
            break;
        }
    }
    println!("{}", serde_json::json!({ "received": received }));
    Ok(())
}

/// One flood round: (sent pps, received pps).
fn pps_round(t: &TwoNode, backend: &Netns, dst: &str, args: &NodePortArgs) -> anyhow::Result<(f64, f64)> {
    let me = std::env::current_exe()?;
    let me = me.to_str().unwrap();
    // Both start well after they are spawned; the first 0.5 s is warm-up.
    let go = now_ns() + 1_000_000_000;
    let start = go + 500_000_000;
    let end = start + (args.secs * 1e9) as u64;
    let (s, e, g) = (start.to_string(), end.to_string(), go.to_string());
    let (scpu, ccpu) = (args.server_cpu.to_string(), args.client_cpu.to_string());
    let bind = format!("0.0.0.0:{BACKEND_PORT}");
    let sink = spawn_in_capture(Some(backend), None, Path::new("taskset"), &["-c", &scpu, me, "__sink", &bind, &s, &e])?;
    let (flows, payload) = (args.flows.to_string(), args.payload.to_string());
    let flood = spawn_in_capture(
        Some(t.client()),
        None,
        Path::new("taskset"),
        &["-c", &ccpu, me, "__flood", dst, &flows, &payload, &g, &s, &e],
    )?;
    let timeout = Duration::from_secs_f64(args.secs + 30.0);
    let fo = flood.wait_output(timeout)?;
    let so = sink.wait_output(timeout)?;
    if !fo.status.success() {
        bail!("flooder: {}", String::from_utf8_lossy(&fo.stderr));
    }
    if !so.status.success() {
        bail!("sink: {}", String::from_utf8_lossy(&so.stderr));
    }
    let sent = serde_json::from_slice::<Value>(&fo.stdout)?["sent"].as_f64().unwrap_or(0.0);
    let recv = serde_json::from_slice::<Value>(&so.stdout)?["received"].as_f64().unwrap_or(0.0);
    let secs = (end - start) as f64 / 1e9;
    Ok((sent / secs, recv / secs))
}

/// The services: N-1 others (TCP, two endpoints nobody answers, node
/// ports while they last) and the measured one last, `np`, TCP and UDP,
/// node port 30080, one endpoint: the backend pod on node2.
fn services(n: usize, backend: Ipv4Addr) -> Vec<KpService> {
    let free_ports: Vec<u16> = (30000..=32767).filter(|p| *p != NODE_PORT).collect();
    let mut v: Vec<KpService> = (0..n.saturating_sub(1))
        .map(|i| {
            let (ip, port) = vip(i);
            KpService {
                namespace: "bench".into(),
                name: format!("svc-{i}"),
                port_name: "http".into(),
                vip: IpAddr::V4(ip),
                port,
                protocol: Proto::Tcp,
                endpoints: vec![fake_endpoint(2 * i), fake_endpoint(2 * i + 1)],
                node_port: free_ports.get(i).copied(),
            }
        })
        .collect();
    let (ip, _) = vip(n.max(1) - 1);
    for (pn, proto) in [("tcp", Proto::Tcp), ("udp", Proto::Udp)] {
        v.push(KpService {
            namespace: "bench".into(),
            name: "np".into(),
            port_name: pn.into(),
            vip: IpAddr::V4(ip),
            port: 80,
            protocol: proto,
            endpoints: vec![(IpAddr::V4(backend), BACKEND_PORT)],
            node_port: Some(NODE_PORT),
        });
    }
    v
}

/// Kubernetes YAML for `svcs` (service ports of the same service grouped
/// into one Service and one EndpointSlice); every endpoint is on `node`.
fn yaml(svcs: &[KpService], node: &str) -> String {
    let mut o = String::with_capacity(svcs.len() * 700);
    let mut i = 0;
    while i < svcs.len() {
        let first = &svcs[i];
        let mut j = i;
        while j < svcs.len() && svcs[j].namespace == first.namespace && svcs[j].name == first.name {
            j += 1;
        }
        let group = &svcs[i..j];
        let kind = if group.iter().any(|s| s.node_port.is_some()) { "NodePort" } else { "ClusterIP" };
        let _ = write!(
            o,
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {}\n  namespace: {}\nspec:\n  type: {kind}\n  clusterIP: {}\n  ports:\n",
            first.name, first.namespace, first.vip
        );
        for s in group {
            let np = s.node_port.map(|p| format!(", nodePort: {p}")).unwrap_or_default();
            let _ = writeln!(
                o,
                "  - {{name: {}, protocol: {}, port: {}, targetPort: {}{np}}}",
                s.port_name,
                s.protocol.upper(),
                s.port,
                s.endpoints[0].1
            );
        }
        let ports: Vec<String> = group
            .iter()
            .map(|s| format!("{{name: {}, protocol: {}, port: {}}}", s.port_name, s.protocol.upper(), s.endpoints[0].1))
            .collect();
        let _ = write!(
            o,
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {n}-1\n  namespace: {ns}\n  labels: {{kubernetes.io/service-name: {n}}}\naddressType: IPv4\nports: [{}]\nendpoints:\n",
            ports.join(", "),
            n = first.name,
            ns = first.namespace,
        );
        for (ip, _) in &first.endpoints {
            let _ = writeln!(o, "- addresses: [{ip}]\n  nodeName: {node}");
        }
        i = j;
    }
    o
}

/// What a contender left running in node1 while it is measured.
enum Active {
    Nothing,
    Iptables,
    Nft,
    Agent(Agent),
}

struct Bed {
    topo: TwoNode,
    cg: TestCgroup,
    dir: PathBuf,
    /// The backend pod's address.
    backend: Ipv4Addr,
}

impl Bed {
    fn node1(&self) -> &Netns {
        self.topo.node(NodeId::Node1)
    }

    /// Set the contender up in node1; the setup time.
    fn setup(&self, c: Contender, svcs: &[KpService], n: usize, args: &NodePortArgs) -> anyhow::Result<(Active, f64)> {
        let t0 = Instant::now();
        let cfg = kube_proxy_config(NodeId::Node1);
        Ok(match c {
            Contender::Routing => (Active::Nothing, 0.0),
            Contender::Iptables => {
                let rules = kubeproxy::iptables_restore_with(&cfg, Family::V4, svcs);
                let ms = timed_stdin_in(self.node1(), "iptables-restore", &[], &rules)?;
                (Active::Iptables, ms)
            }
            Contender::Nftables => {
                let rules = kubeproxy::nft_with(&cfg, svcs);
                let ms = timed_stdin_in(self.node1(), "nft", &["-f", "-"], &rules)?;
                (Active::Nft, ms)
            }
            Contender::SluiceTc | Contender::SluiceXdp => {
                let tag = format!("{}-{n}", c.name());
                let pins = PathBuf::from(format!("/sys/fs/bpf/sl-bench-np-{}-{tag}", std::process::id()));
                let (c4, c6) = (NodeId::Node1.pod_cidr4(), NodeId::Node1.pod_cidr6());
                let mut extra = vec!["--external-dev", EXTERNAL_DEV, "--pod-cidr", c4.as_str(), "--pod-cidr", c6.as_str()];
                if !args.without_nodeport_flags {
                    extra.extend(["--node-name", NodeId::Node1.name()]);
                    if c == Contender::SluiceXdp {
                        extra.extend(["--xdp", "native"]);
                    }
                }
                extra.extend(args.agent_args.split_whitespace());
                let agent = Agent::start_pinned(self.node1(), &self.cg, &self.dir, &tag, pins, &extra)?;
                let file = self.dir.join(format!("services-{n}.yaml"));
                std::fs::write(&file, yaml(svcs, NodeId::Node2.name()))?;
                agent.apply(&file)?;
                let ms = t0.elapsed().as_secs_f64() * 1000.0;
                (Active::Agent(agent), ms)
            }
        })
    }

    fn teardown(&self, a: Active) -> anyhow::Result<()> {
        match a {
            Active::Nothing => {}
            Active::Iptables => {
                timed_stdin_in(self.node1(), "iptables-restore", &[], kubeproxy::IPTABLES_FLUSH)?;
                timed_stdin_in(self.node1(), "iptables", &["-t", "nat", "-X"], "")?;
            }
            Active::Nft => {
                timed_stdin_in(self.node1(), "nft", &["-f", "-"], kubeproxy::NFT_FLUSH)?;
            }
            Active::Agent(agent) => drop(agent),
        }
        // Whatever a contender attached to eth0 must be gone before the next.
        let left = attached(self.node1(), EXTERNAL_DEV);
        if !left.is_empty() {
            bail!("programs still attached to node1's {EXTERNAL_DEV} after the contender: {left}");
        }
        Ok(())
    }
}

/// BPF programs attached to `dev` in `ns`: XDP and classic tc as bpftool
/// lists them, and tcx by asking the kernel (Debian 12's bpftool 7.1
/// predates tcx). Empty if none.
fn attached(ns: &Netns, dev: &str) -> String {
    let out = ns.run("bpftool", &["-j", "net", "show", "dev", dev]).unwrap_or_default();
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    let mut found = Vec::new();
    for entry in v.as_array().into_iter().flatten() {
        for (kind, list) in entry.as_object().into_iter().flatten() {
            for p in list.as_array().into_iter().flatten() {
                found.push(format!("{kind}: {}", p["name"].as_str().unwrap_or("?")));
            }
        }
    }
    let dev_c = std::ffi::CString::new(dev).expect("device name");
    let tcx = ns.try_enter(|| {
        // SAFETY: if_nametoindex reads a NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(dev_c.as_ptr()) };
        [("tcx_ingress", 46u32), ("tcx_egress", 47u32)].map(|(name, attach_type)| (name, tcx_count(ifindex, attach_type)))
    });
    for (name, n) in tcx.into_iter().flatten() {
        match n {
            Some(n) if n > 0 => found.push(format!("{name}: {n} program(s)")),
            _ => {}
        }
    }
    found.join(", ")
}

/// How many programs are attached at `attach_type` (BPF_TCX_INGRESS = 46,
/// BPF_TCX_EGRESS = 47) of `ifindex` (in the calling thread's network
/// namespace): BPF_PROG_QUERY without an id buffer. None if the kernel
/// refuses (tcx needs Linux 6.6).
fn tcx_count(ifindex: u32, attach_type: u32) -> Option<u32> {
    const BPF_PROG_QUERY: libc::c_long = 16;
    // union bpf_attr's `query`: target_ifindex at 0, attach_type at 4,
    // prog_ids at 16 (0: no buffer), prog_cnt at 24 (out); 64 bytes.
    let mut attr = [0u8; 64];
    attr[0..4].copy_from_slice(&ifindex.to_ne_bytes());
    attr[4..8].copy_from_slice(&attach_type.to_ne_bytes());
    // SAFETY: bpf(2) reads and writes at most the 64 bytes we pass.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_QUERY, attr.as_mut_ptr(), attr.len() as u32) };
    (r == 0).then(|| u32::from_ne_bytes(attr[24..28].try_into().unwrap()))
}

/// Does `to` answer a TCP request from the client (3 tries, 1 s each)?
fn answers(t: &TwoNode, to: &str) -> anyhow::Result<bool> {
    let o = run_in(
        Some(t.client()),
        None,
        &bin("sluice-probe"),
        &["connect", "--to", to, "--count", "3", "--timeout-ms", "1000"],
        Duration::from_secs(30),
    )?;
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    Ok(v["backends"].as_object().is_some_and(|b| !b.is_empty()))
}

fn summarize(mut v: Vec<u64>) -> Latency {
    Latency { p50_us: percentile(&mut v, 50.0) as f64 / 1000.0, p99_us: percentile(&mut v, 99.0) as f64 / 1000.0 }
}

/// Measure one contender that is set up: rounds of floods and a share of
/// the latency samples.
fn measure(bed: &Bed, c: Contender, args: &NodePortArgs, row: &mut Row) -> anyhow::Result<()> {
    // The pod's own address, routed by node1 (under whatever the contender
    // loaded): the routing contender's target, and every other's reference
    // flood. Not a TCP reference: the reply to a routed connection comes
    // back over the fabric, not through node1, and kube-proxy's rules in
    // node1 drop the half of a connection they see as INVALID.
    let routed = format!("{}:{BACKEND_PORT}", bed.backend);
    let target = if c == Contender::Routing { routed.clone() } else { format!("{}:{NODE_PORT}", NodeId::Node1.ip4()) };
    let reference = format!("{}:{REF_PORT}", NodeId::Node2.ip4());
    let tcp_ok = answers(&bed.topo, &target)?;
    let backend = &bed.topo.pod(NodeId::Node2, 0).expect("backend pod").netns;
    let per = (args.samples / args.rounds.max(1)).max(1);
    let (mut rounds, mut lat, mut lat_ref, mut ratios) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in 0..args.rounds.max(1) {
        // The node port and the routed reference, in alternating order.
        let mut round = PpsRound::default();
        let with_ref = c != Contender::Routing;
        for k in 0..2 {
            if (k == 0) == (r % 2 == 0) {
                (round.sent, round.received) = pps_round(&bed.topo, backend, &target, args)?;
            } else if with_ref {
                let (s, rcv) = pps_round(&bed.topo, backend, &routed, args)?;
                (round.routed_sent, round.routed_received) = (Some(s), Some(rcv));
            }
        }
        eprintln!(
            "   {:<10} round {r}: sent {:>9.0} pps, received {:>9.0} pps{}",
            c.name(),
            round.sent,
            round.received,
            round.routed_received.map(|x| format!(" (routed to the pod: {x:.0})")).unwrap_or_default()
        );
        rounds.push(round);
        if tcp_ok {
            let got = client_in(bed.topo.client(), None, &[target.as_str(), reference.as_str()], per, (per / 5).max(5))?;
            let mut a = got[0].clone();
            let mut b = got[1].clone();
            ratios.push(percentile(&mut a, 50.0) as f64 / percentile(&mut b, 50.0) as f64);
            lat.extend(&got[0]);
            lat_ref.extend(&got[1]);
        }
    }
    let med = |f: &dyn Fn(&PpsRound) -> Option<f64>| {
        let mut v: Vec<f64> = rounds.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| median(&mut v))
    };
    let pps = Pps {
        sent: med(&|r| Some(r.sent)).unwrap_or(0.0),
        received: med(&|r| Some(r.received)).unwrap_or(0.0),
        ratio: med(&|r| Some(if r.sent > 0.0 { r.received / r.sent } else { 0.0 })).unwrap_or(0.0),
        routed_received: med(&|r| r.routed_received),
        vs_routed: med(&|r| r.routed_received.filter(|x| *x > 0.0).map(|x| r.received / x)),
        rounds,
    };
    let forwarded = pps.received > 0.0;
    row.status = match (tcp_ok, forwarded) {
        (true, true) => "ok".into(),
        (true, false) => "TCP answered, no UDP datagram forwarded".into(),
        (false, true) => "UDP forwarded, TCP not answered (no latency)".into(),
        (false, false) => "forwards nothing".into(),
    };
    row.pps = Some(pps);
    if tcp_ok {
        row.latency = Some(summarize(lat));
        row.ref_latency = Some(summarize(lat_ref));
        row.vs_ref_p50 = Some(median(&mut ratios));
    }
    Ok(())
}

pub fn run(args: NodePortArgs) -> anyhow::Result<()> {
    if args.sizes.contains(&0) {
        bail!("--sizes: at least 1 service");
    }
    let mut topo = TwoNode::new("sl-bench-np")?;
    let backend = topo.add_plain_pod(NodeId::Node2, 0)?.ip4;
    // XDP rewrites packets before checksums would be completed, and frames
    // redirected into a veth need NAPI (GRO) at the peer.
    topo.tx_checksum_off()?;
    topo.gro_on()?;
    let cg = TestCgroup::new("sl-bench-np")?;
    let dir = std::env::temp_dir().join(format!("sluice-bench-np-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = Cleanup(dir.clone());
    let bed = Bed { topo, cg, dir, backend };
    let pod = bed.topo.pod(NodeId::Node2, 0).expect("backend pod");
    let probe = bin("sluice-probe");
    let scpu = args.server_cpu.to_string();
    let listen = format!("0.0.0.0:{BACKEND_PORT}");
    let server: Spawned = spawn_ready(
        Some(&pod.netns),
        None,
        Path::new("taskset"),
        &["-c", &scpu, probe.to_str().unwrap(), "serve", "--name", &pod.name, "--tcp", &listen],
    )?;
    let ref_listen = format!("{}:{REF_PORT}", NodeId::Node2.ip4());
    let ref_server: Spawned = spawn_ready(
        Some(bed.topo.node(NodeId::Node2)),
        None,
        Path::new("taskset"),
        &["-c", &scpu, probe.to_str().unwrap(), "serve", "--name", "node2", "--tcp", &ref_listen],
    )?;
    let load_before = loadavg();
    let ipt_version = std::process::Command::new("iptables-restore")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    eprintln!(
        "sluice-bench nodeport: UDP flood {} flows x {} B for {} s x {} rounds; {} connections per contender; {ipt_version}",
        args.flows, args.payload, args.secs, args.rounds, args.samples
    );

    let mut rows = Vec::new();
    for (k, &n) in args.sizes.iter().enumerate() {
        eprintln!("== N = {n}");
        let svcs = services(n, backend);
        let order: Vec<Contender> =
            if k % 2 == 0 { args.contenders.clone() } else { args.contenders.iter().rev().copied().collect() };
        for c in order {
            let mut row = Row {
                n,
                contender: c,
                status: String::new(),
                setup_ms: None,
                attached: String::new(),
                pps: None,
                latency: None,
                ref_latency: None,
                vs_ref_p50: None,
            };
            match bed.setup(c, &svcs, n, &args) {
                Err(e) => {
                    let short = one_line(&e);
                    eprintln!("   {:<10} not set up: {short}", c.name());
                    row.status = format!("not set up: {short}");
                    // A half-started contender may have left something behind.
                    let left = attached(bed.node1(), EXTERNAL_DEV);
                    if !left.is_empty() {
                        bail!("node1's {EXTERNAL_DEV} still has {left} after a failed setup");
                    }
                }
                Ok((active, ms)) => {
                    row.setup_ms = Some(ms);
                    row.attached = attached(bed.node1(), EXTERNAL_DEV);
                    eprintln!(
                        "   {:<10} set up in {ms:.0} ms; on node1's {EXTERNAL_DEV}: {}",
                        c.name(),
                        if row.attached.is_empty() { "no BPF program" } else { &row.attached }
                    );
                    settle();
                    let r = measure(&bed, c, &args, &mut row);
                    bed.teardown(active)?;
                    if let Err(e) = r {
                        row.status = format!("measurement failed: {}", one_line(&e));
                    }
                    eprintln!("   {:<10} {}", c.name(), row.status);
                }
            }
            rows.push(row);
        }
    }
    drop(server);
    drop(ref_server);
    let load_after = loadavg();
    report(&rows, &args, &load_before, &load_after);
    if let Some(d) = args.out.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(
        &args.out,
        serde_json::to_string_pretty(&serde_json::json!({
            "machine": machine(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "iptables": ipt_version,
            "flows": args.flows,
            "payload_bytes": args.payload,
            "secs": args.secs,
            "rounds": args.rounds,
            "samples": args.samples,
            "rows": rows,
        }))?,
    )
    .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("results written to {}", args.out.display());
    Ok(())
}

/// An error on one line for a table cell: its first few non-empty lines
/// (a child's backtrace left out), `|` escaped, at most 300 characters.
fn one_line(e: &anyhow::Error) -> String {
    let msg = format!("{e:#}");
    let short = msg
        .lines()
        .take_while(|l| !l.starts_with("Stack backtrace"))
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "Caused by:")
        .take(3)
        .collect::<Vec<_>>()
        .join(" / ")
        .replace('|', "\\|");
    short.chars().take(300).collect()
}

/// /proc/loadavg's first three fields (the machine may be shared).
fn loadavg() -> String {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn f(v: Option<f64>, prec: usize) -> String {
    v.map(|x| format!("{x:.prec$}")).unwrap_or_else(|| "-".into())
}

/// a / b, or `-` when either is missing or zero.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if a > 0.0 && b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

fn report(rows: &[Row], args: &NodePortArgs, load_before: &str, load_after: &str) {
    println!(
        "\n### NodePort to a backend on another node, through node1 (UDP flood: {} flows, {} B payload, {} s x {} rounds; latency: connect + request/response + close)\n",
        args.flows, args.payload, args.secs, args.rounds
    );
    println!("Load average before / after: {load_before} / {load_after}\n");
    println!("| services | contender | status | setup ms | sent pps | received pps | received / sent | routed received pps (same rules) | received / routed (per round) | p50 us | p99 us | reference p50 us (same client) | p50 / reference p50 (per round) | p50 / routing p50 |");
    println!("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let routing_p50 = |n: usize| {
        rows.iter()
            .find(|r| r.n == n && r.contender == Contender::Routing)
            .and_then(|r| r.latency.as_ref())
            .map(|l| l.p50_us)
    };
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.n,
            r.contender.name(),
            r.status,
            f(r.setup_ms, 0),
            f(r.pps.as_ref().map(|p| p.sent), 0),
            f(r.pps.as_ref().map(|p| p.received), 0),
            f(r.pps.as_ref().map(|p| p.ratio), 3),
            f(r.pps.as_ref().and_then(|p| p.routed_received), 0),
            f(r.pps.as_ref().and_then(|p| p.vs_routed), 3),
            f(r.latency.as_ref().map(|l| l.p50_us), 1),
            f(r.latency.as_ref().map(|l| l.p99_us), 1),
            f(r.ref_latency.as_ref().map(|l| l.p50_us), 1),
            f(r.vs_ref_p50, 3),
            ratio(r.latency.as_ref().map(|l| l.p50_us), routing_p50(r.n)),
        );
    }
    let get = |n: usize, c: Contender| rows.iter().find(|r| r.n == n && r.contender == c && r.status == "ok");
    let pps = |n, c| get(n, c).and_then(|r| r.pps.as_ref()).map(|p| p.received);
    let p50 = |n, c| get(n, c).and_then(|r| r.latency.as_ref()).map(|l| l.p50_us);
    // Each contender's node-port pps over its own routed pps, per round.
    let norm = |n, c| get(n, c).and_then(|r| r.pps.as_ref()).and_then(|p| p.vs_routed);
    use Contender::*;
    println!("\n### Ratios (received pps: higher is better for the first; p50 latency: the slower over the faster)\n");
    println!("| services | xdp / iptables pps | tc / iptables pps | tc / nftables pps | xdp / nftables pps | xdp / iptables pps, each / its routed | tc / iptables pps, each / its routed | tc / nftables pps, each / its routed | iptables / tc p50 | nftables / tc p50 | iptables / xdp p50 | nftables / xdp p50 | iptables / routing pps | nftables / routing pps |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut sizes: Vec<usize> = rows.iter().map(|r| r.n).collect();
    sizes.dedup();
    for n in sizes {
        println!(
            "| {n} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            ratio(pps(n, SluiceXdp), pps(n, Iptables)),
            ratio(pps(n, SluiceTc), pps(n, Iptables)),
            ratio(pps(n, SluiceTc), pps(n, Nftables)),
            ratio(pps(n, SluiceXdp), pps(n, Nftables)),
            ratio(norm(n, SluiceXdp), norm(n, Iptables)),
            ratio(norm(n, SluiceTc), norm(n, Iptables)),
            ratio(norm(n, SluiceTc), norm(n, Nftables)),
            ratio(p50(n, Iptables), p50(n, SluiceTc)),
            ratio(p50(n, Nftables), p50(n, SluiceTc)),
            ratio(p50(n, Iptables), p50(n, SluiceXdp)),
            ratio(p50(n, Nftables), p50(n, SluiceXdp)),
            ratio(pps(n, Iptables), pps(n, Routing)),
            ratio(pps(n, Nftables), pps(n, Routing)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_and_yaml() {
        let b = Ipv4Addr::new(198, 18, 102, 10);
        let s = services(1, b);
        assert_eq!(s.len(), 2);
        assert!(s.iter().all(|x| x.node_port == Some(NODE_PORT)));
        let y = yaml(&s, "node2");
        assert_eq!(y.matches("kind: Service\n").count(), 1, "{y}");
        assert!(y.contains("type: NodePort"), "{y}");
        assert!(y.contains("{name: udp, protocol: UDP, port: 80, targetPort: 8080, nodePort: 30080}"), "{y}");
        assert!(y.contains("- addresses: [198.18.102.10]\n  nodeName: node2"), "{y}");
        let s = services(5000, b);
        assert_eq!(s.len(), 5001);
        let nps: std::collections::BTreeSet<u16> = s.iter().filter_map(|x| x.node_port).collect();
        assert_eq!(nps.len(), 2768, "every node port once, 30080 for np only");
        assert_eq!(s.iter().filter(|x| x.node_port == Some(NODE_PORT)).count(), 2);
    }
}
