//! Command-line interface.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use sluice_api::{call, Document, Request, Response, Target, DEFAULT_SOCKET};
use sluice_lb::LbMaps;
use sluice_model::{parse_documents, Kind, ManifestError};

use crate::output::{json, table, Format};

const LONG_ABOUT: &str = "\
Sluice replaces kube-proxy with eBPF: services are translated at the socket
(connect, sendmsg, recvmsg, getpeername) with no iptables rule.

Standalone, on one host:
  sluice agent &                      # load the datapath, serve the API
  sluice apply -f service.yaml        # Services and EndpointSlices
  sluice service list                 # what the maps hold, per frontend
  sluice status                       # is the datapath attached? counters

Stopping the agent leaves the datapath running; the next agent adopts it.
`sluice datapath uninstall` removes it.";

#[derive(Parser, Debug)]
#[command(name = "sluice", version, about = "eBPF service load balancing for Kubernetes-style networking", long_about = LONG_ABOUT)]
struct Cli {
    /// The agent's API socket (root only).
    #[arg(long, global = true, env = "SLUICE_API_SOCKET", default_value = DEFAULT_SOCKET)]
    api_socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the node agent: load and attach the datapath, adopt what an
    /// earlier agent left pinned, and serve the API until SIGINT/SIGTERM.
    Agent(AgentArgs),
    /// Create or update objects from manifests (YAML or JSON, many documents
    /// per file). All of them are applied, or on any error none.
    Apply(ApplyArgs),
    /// Delete the objects named in manifests. All of them, or on any error none.
    Delete(DeleteArgs),
    /// Show applied objects.
    Get(GetArgs),
    /// Services as the datapath sees them.
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Inspect the BPF maps directly (works while the agent is down).
    #[command(subcommand)]
    Bpf(BpfCmd),
    /// Load balancing as the datapath does it.
    #[command(subcommand)]
    Lb(LbCmd),
    /// Agent and datapath health: programs attached, object counts, counters.
    Status(OutArgs),
    /// Manage the loaded datapath.
    #[command(subcommand)]
    Datapath(DatapathCmd),
    /// Find and end sockets, in every network namespace.
    #[command(subcommand)]
    Socket(SocketCmd),
    /// Pods on this node that the CNI plugin gave a network.
    #[command(subcommand)]
    Endpoint(EndpointCmd),
}

#[derive(Subcommand, Debug)]
enum EndpointCmd {
    /// Every endpoint: pod, addresses, host device, labels (from an applied
    /// v1 Pod of the same namespace and name).
    List(OutArgs),
}

#[derive(Subcommand, Debug)]
enum SocketCmd {
    /// Destroy the TCP and connected UDP sockets connected to a destination,
    /// with BPF socket iterators and bpf_sock_destroy (Linux 6.5+). TCP
    /// clients see ECONNABORTED; a connected UDP socket fails its next call.
    /// Listening and unconnected sockets are never touched.
    Kill(SocketKillArgs),
    /// Sockets the agent ended because their backend left a service (the
    /// most recent 1,000), with totals.
    Events(OutArgs),
}

#[derive(Args, Debug)]
struct SocketKillArgs {
    /// Destination address, with or without a port: 10.0.0.5, 10.0.0.5:80, [fd00::5]:53, fd00::5.
    #[arg(long)]
    dst: String,
    /// List the sockets that would be destroyed, and destroy none.
    #[arg(long)]
    dry_run: bool,
    /// Only these network namespaces (a path such as /run/netns/NAME or
    /// /proc/PID/ns/net); repeatable [default: every namespace on the host].
    #[arg(long)]
    netns: Vec<PathBuf>,
    /// Pin directory of the datapath, to show which service each socket went through.
    #[arg(long, default_value = "/sys/fs/bpf/sluice")]
    bpffs: PathBuf,
    #[command(flatten)]
    out: OutArgs,
}

#[derive(Args, Debug)]
struct AgentArgs {
    /// Directory of the embedded store of applied objects.
    #[arg(long, default_value = "/var/lib/sluice")]
    state_dir: PathBuf,
    /// cgroup v2 directory whose sockets are translated [default: the cgroup v2 root, from mountinfo].
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Directory on a bpffs where maps and links are pinned (bpffs is mounted on /sys/fs/bpf if missing).
    #[arg(long, default_value = "/sys/fs/bpf/sluice")]
    bpffs: PathBuf,
    /// How often the node's addresses (NodePort targets) are re-read, in seconds.
    #[arg(long, default_value_t = 2.0)]
    node_addr_refresh: f64,
    /// IPv4 range cluster IPs are allocated from for Services that give
    /// none (`none` to require spec.clusterIP).
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: String,
    /// This node's pod address range, for the CNI plugin (`sluice-cni`):
    /// one IPv4 and/or one IPv6 CIDR, e.g. `--pod-cidr 10.244.1.0/24
    /// --pod-cidr fd00:10:244:1::/112`. Without it CNI ADD is refused.
    #[arg(long = "pod-cidr", value_name = "CIDR")]
    pod_cidrs: Vec<String>,
    /// Masquerade (SNAT) pod traffic that leaves the node through
    /// --external-dev to that device's address, in the datapath.
    #[arg(long, requires = "external_devs")]
    masquerade: bool,
    /// The node's external device(s): where traffic from outside arrives
    /// (NodePort, ExternalIP and LoadBalancer IPs are balanced there, per
    /// packet, by tcx programs) and pod traffic leaves (masquerade).
    /// Repeatable; every device that carries such traffic, the links to
    /// other nodes included.
    #[arg(long = "external-dev", value_name = "DEV")]
    external_devs: Vec<String>,
    /// XDP fast path on the external devices: `native` (in the driver; a
    /// device whose driver has none stays at tc, with a warning in the log
    /// and `sluice status`), `generic` (any device, after the skb is made:
    /// no faster than tc, for testing) or `off`.
    /// XDP forwards NodePort flows to remote backends and their replies;
    /// everything else goes on to the tcx programs.
    #[arg(long, value_name = "MODE", default_value = "off", value_parser = parse_xdp, requires = "external_devs")]
    xdp: XdpArg,
    /// Destinations pod traffic is not masqueraded to, besides this node's
    /// pod CIDRs: other nodes' pod CIDRs and the node network, so that pods
    /// keep their address inside the cluster and replies to another node's
    /// NodePort SNAT address are not masqueraded again. Repeatable; at
    /// most 8 CIDRs in all with the pod CIDRs.
    #[arg(long = "no-masquerade-cidr", value_name = "CIDR")]
    no_masquerade: Vec<String>,
    /// Source ports the datapath uses to masquerade, `FIRST-LAST`. Keep it
    /// outside net.ipv4.ip_local_port_range so local sockets never collide.
    #[arg(long, default_value = "61000-65535")]
    snat_ports: String,
    /// How the per-packet paths pick a backend for Services without a
    /// `sluice.io/lb-algorithm` annotation: `random` or `maglev`
    /// (consistent hashing of the 5-tuple: every node picks the same backend).
    #[arg(long, default_value = "random", value_parser = parse_lb_algorithm)]
    lb_algorithm: sluice_lb::LbAlgorithm,
    /// How traffic from outside reaches a backend on another node, for
    /// Services without a `sluice.io/lb-mode` annotation: `snat` (replies
    /// come back through this node) or `dsr` (direct server return: the
    /// backend answers the client itself). Sets SVC_F_DSR on node-port,
    /// external-IP and load-balancer-IP frontends.
    #[arg(long, default_value = "snat", value_parser = parse_lb_mode)]
    lb_mode: sluice_lb::LbMode,
    /// This node's name, as EndpointSlices give it in `endpoints[].nodeName`:
    /// `externalTrafficPolicy: Local` services send traffic from outside
    /// only to those endpoints [default: the host name, lower case].
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,
    /// Slots of each Maglev table: a prime, at least 100 times the largest
    /// number of backends of a Maglev service (4 bytes a slot, per frontend).
    #[arg(long, value_name = "M", default_value = "16381", value_parser = parse_maglev_size)]
    maglev_table_size: sluice_lb::maglev::TableSize,
    /// Seconds between sweeps of expired conntrack and NAT entries (0 disables them).
    #[arg(long, default_value_t = 10)]
    ct_gc_interval: u64,
    /// Entries of the conntrack table sl_ct_v1 (1 to 16777216). A table
    /// already pinned with another size keeps it until `sluice datapath uninstall`.
    #[arg(long, default_value_t = sluice_datapath::loader::DEFAULT_CT_MAX)]
    ct_max: u32,
    /// Entries of the NAT table sl_snat_v1 (1 to 16777216); as --ct-max.
    #[arg(long, default_value_t = sluice_datapath::loader::DEFAULT_NAT_MAX)]
    nat_max: u32,
    /// Tests only: abort during a CNI ADD (`cni-add-after-alloc`, `cni-add-after-link`).
    #[arg(long, hide = true)]
    fail_point: Option<String>,
    /// Log filter (tracing syntax), e.g. `info` or `sluice_agent=debug`.
    #[arg(long, env = "SLUICE_LOG", default_value = "info")]
    log: String,
}

#[derive(Args, Debug)]
struct FileArgs {
    /// A manifest file, a directory of them (*.yaml, *.yml, *.json), or `-` for standard input. Repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<String>,
}

#[derive(Args, Debug)]
struct OutArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
    output: Format,
}

#[derive(Args, Debug)]
struct ApplyArgs {
    #[command(flatten)]
    files: FileArgs,
    /// Validate against the running state and report what would change, without changing it.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    out: OutArgs,
}

#[derive(Args, Debug)]
struct DeleteArgs {
    #[command(flatten)]
    files: FileArgs,
    /// Skip objects that do not exist instead of failing.
    #[arg(long)]
    ignore_not_found: bool,
    #[command(flatten)]
    out: OutArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum GetKind {
    #[value(alias = "service", alias = "svc")]
    Services,
    #[value(alias = "endpointslice", alias = "eps")]
    Endpointslices,
    #[value(alias = "pod", alias = "po")]
    Pods,
}

#[derive(Args, Debug)]
struct GetArgs {
    /// What to list.
    kind: GetKind,
    /// Only this namespace.
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    #[command(flatten)]
    out: OutArgs,
}

#[derive(Subcommand, Debug)]
enum ServiceCmd {
    /// Each frontend with its backends, as read back from the maps.
    List(OutArgs),
}

#[derive(Subcommand, Debug)]
enum LbCmd {
    /// What the per-packet datapath would do with one packet, from the live
    /// maps (reads only; works while the agent is down): the frontend it
    /// matches, how the backend is chosen, the backend, and where the packet
    /// goes (local pod, local host, remote with SNAT or DSR, or the drop and why).
    Simulate(SimulateArgs),
}

#[derive(Args, Debug)]
struct SimulateArgs {
    /// Client address, optionally with a port: 198.51.100.7, 198.51.100.7:40000, [2001:db8::7]:40000.
    /// Without a port one is picked (and said so): Maglev depends on it.
    #[arg(long)]
    src: String,
    /// Destination as the packet arrives: a VIP or a node address, with the port (10.96.0.10:80, 192.0.2.10:30080).
    #[arg(long)]
    dst: String,
    /// tcp or udp.
    #[arg(long)]
    proto: String,
    /// Where the packet enters: `outside` (the node's external devices:
    /// NodePort, ExternalIP, LoadBalancer; externalTrafficPolicy: Local
    /// honoured) or `pod` (a pod's device: every frontend, every backend).
    #[arg(long, value_enum, default_value_t = SimFrom::Outside)]
    from: SimFrom,
    /// Pin directory of the datapath.
    #[arg(long, default_value = "/sys/fs/bpf/sluice")]
    bpffs: PathBuf,
    #[command(flatten)]
    out: OutArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SimFrom {
    Outside,
    Pod,
}

#[derive(Subcommand, Debug)]
enum BpfCmd {
    /// Load-balancing maps.
    #[command(subcommand)]
    Lb(BpfLbCmd),
    /// The endpoint map: pod addresses the pod datapath delivers to directly.
    #[command(subcommand)]
    Ep(BpfListCmd),
    /// Conntrack of per-packet service translation at pod devices (sl_ct_v1).
    #[command(subcommand)]
    Ct(BpfFilteredCmd),
    /// The masquerade table (sl_snat_v1).
    #[command(subcommand)]
    Nat(BpfFilteredCmd),
    /// Datapath counters, by reason.
    Metrics(BpfArgs),
}

#[derive(Subcommand, Debug)]
enum BpfLbCmd {
    /// Raw contents of the service, backend, reverse-NAT and affinity-match maps.
    List(BpfArgs),
}

#[derive(Subcommand, Debug)]
enum BpfListCmd {
    /// Every entry, decoded.
    List(BpfArgs),
}

#[derive(Subcommand, Debug)]
enum BpfFilteredCmd {
    /// Every entry, decoded; filters narrow it down.
    List(BpfFilterArgs),
}

#[derive(Args, Debug)]
struct BpfFilterArgs {
    #[command(flatten)]
    bpf: BpfArgs,
    /// Only entries with this address (source, destination or translated).
    #[arg(long)]
    addr: Option<std::net::IpAddr>,
    /// Only entries with this port (source, destination or translated).
    #[arg(long)]
    port: Option<u16>,
    /// Only this protocol.
    #[arg(long, value_parser = ["tcp", "udp", "icmp", "icmpv6"])]
    proto: Option<String>,
}

impl BpfFilterArgs {
    fn keep(&self, addrs: &[std::net::SocketAddr], proto: u8) -> bool {
        self.addr.map(|a| addrs.iter().any(|s| s.ip() == a)).unwrap_or(true)
            && self.port.map(|p| addrs.iter().any(|s| s.port() == p)).unwrap_or(true)
            && self.proto.as_deref().map(|p| proto_name(proto) == p).unwrap_or(true)
    }
}

fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "tcp",
        17 => "udp",
        1 => "icmp",
        58 => "icmpv6",
        _ => "other",
    }
}

#[derive(Args, Debug)]
struct BpfArgs {
    /// Pin directory of the datapath.
    #[arg(long, default_value = "/sys/fs/bpf/sluice")]
    bpffs: PathBuf,
    #[command(flatten)]
    out: OutArgs,
}

#[derive(Subcommand, Debug)]
enum DatapathCmd {
    /// Detach the programs and remove every pinned map and link. Sockets
    /// are no longer translated afterwards. Stop the agent first.
    Uninstall {
        #[arg(long, default_value = "/sys/fs/bpf/sluice")]
        bpffs: PathBuf,
    },
}

pub fn main() -> anyhow::Result<i32> {
    let cli = Cli::parse();
    let sock = cli.api_socket.clone();
    match cli.cmd {
        Cmd::Agent(a) => agent(a, cli.api_socket),
        Cmd::Apply(a) => {
            let documents = read_documents(&a.files.files)?;
            if documents.is_empty() {
                bail!("no objects found in {}", a.files.files.join(", "));
            }
            change(&sock, Request::Apply { documents, dry_run: a.dry_run }, a.out.output)
        }
        Cmd::Delete(a) => {
            let mut targets = Vec::new();
            for d in read_documents(&a.files.files)? {
                let kind = match d.raw.get("kind").and_then(|k| k.as_str()) {
                    Some("Service") => Kind::Service,
                    Some("EndpointSlice") => Kind::EndpointSlice,
                    Some("Pod") => Kind::Pod,
                    _ => unreachable!("read_documents checked the kind"),
                };
                let meta = d.raw.get("metadata");
                let s = |k: &str| meta.and_then(|m| m.get(k)).and_then(|v| v.as_str()).map(String::from);
                targets.push(Target {
                    origin: d.origin,
                    kind,
                    namespace: s("namespace").unwrap_or_else(|| "default".into()),
                    name: s("name").unwrap_or_default(),
                });
            }
            change(&sock, Request::Delete { targets, ignore_not_found: a.ignore_not_found }, a.out.output)
        }
        Cmd::Get(g) => get(&sock, g),
        Cmd::Service(ServiceCmd::List(o)) => service_list(&sock, o.output),
        Cmd::Bpf(BpfCmd::Lb(BpfLbCmd::List(b))) => bpf_lb_list(&b),
        Cmd::Bpf(BpfCmd::Metrics(b)) => bpf_metrics(&b),
        Cmd::Bpf(BpfCmd::Ep(BpfListCmd::List(b))) => bpf_ep_list(&b),
        Cmd::Bpf(BpfCmd::Ct(BpfFilteredCmd::List(f))) => bpf_ct_list(&f),
        Cmd::Bpf(BpfCmd::Nat(BpfFilteredCmd::List(f))) => bpf_nat_list(&f),
        Cmd::Lb(LbCmd::Simulate(a)) => lb_simulate(&sock, &a),
        Cmd::Status(o) => status(&sock, o.output),
        Cmd::Socket(SocketCmd::Kill(k)) => socket_kill(k),
        Cmd::Socket(SocketCmd::Events(o)) => socket_events(&sock, o.output),
        Cmd::Endpoint(EndpointCmd::List(o)) => endpoint_list(&sock, o.output),
        Cmd::Datapath(DatapathCmd::Uninstall { bpffs }) => {
            let removed = sluice_datapath::uninstall(&bpffs)?;
            if removed.is_empty() {
                println!("nothing pinned under {}", bpffs.display());
            }
            for r in removed {
                println!("removed {r}");
            }
            Ok(0)
        }
    }
}

fn agent(a: AgentArgs, api_socket: PathBuf) -> anyhow::Result<i32> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&a.log).context("--log")?)
        .with_writer(std::io::stderr)
        .init();
    if !(0.1..=3600.0).contains(&a.node_addr_refresh) {
        bail!("--node-addr-refresh must be between 0.1 and 3600 seconds");
    }
    let service_cidr = match a.service_cidr.as_str() {
        "none" => None,
        s => Some(s.parse::<sluice_agent::core::ServiceCidr>().map_err(|e| anyhow::anyhow!("--service-cidr: {e}"))?),
    };
    let pod_cidrs = a
        .pod_cidrs
        .iter()
        .map(|c| c.parse::<sluice_agent::ipam::Cidr>().map_err(|e| anyhow::anyhow!("--pod-cidr {c}: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    sluice_agent::ipam::Ipam::new(&pod_cidrs).map_err(|e| anyhow::anyhow!("--pod-cidr: {e}"))?;
    let no_masquerade = a
        .no_masquerade
        .iter()
        .map(|c| parse_cidr(c).map_err(|e| anyhow::anyhow!("--no-masquerade-cidr {c}: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if pod_cidrs.len() + no_masquerade.len() > 8 {
        bail!("--no-masquerade-cidr: at most 8 CIDRs together with the --pod-cidr ones ({} given)", pod_cidrs.len() + no_masquerade.len());
    }
    let snat_ports = match a.snat_ports.split_once('-').map(|(x, y)| (x.parse::<u16>(), y.parse::<u16>())) {
        Some((Ok(x), Ok(y))) if 1024 <= x && x <= y => (x, y),
        _ => bail!("--snat-ports {:?}: give FIRST-LAST with 1024 <= FIRST <= LAST <= 65535, e.g. 61000-65535", a.snat_ports),
    };
    let node_name = match a.node_name {
        Some(n) => n,
        None => sluice_agent::nodeaddr::host_node_name().context("reading the host name (give --node-name)")?,
    };
    sluice_agent::nodeaddr::check_node_name(&node_name).map_err(|e| anyhow::anyhow!("--node-name: {e}"))?;
    let tables = sluice_datapath::TableSizes { ct_max: a.ct_max, nat_max: a.nat_max };
    tables.validate().map_err(|e| anyhow::anyhow!(e))?;
    if a.ct_gc_interval > 86400 {
        bail!("--ct-gc-interval {}: give seconds from 1 to 86400, or 0 to disable the sweep", a.ct_gc_interval);
    }
    let cfg = sluice_agent::AgentConfig {
        service_cidr,
        state_dir: a.state_dir,
        cgroup: a.cgroup,
        pin_dir: a.bpffs,
        api_socket,
        node_addr_refresh: Duration::from_secs_f64(a.node_addr_refresh),
        pod_cidrs,
        masquerade: a.masquerade,
        external_devs: a.external_devs,
        xdp: a.xdp.0,
        snat_ports,
        no_masquerade,
        fail_point: a.fail_point,
        lb: sluice_lb::LbOptions {
            default_algorithm: a.lb_algorithm,
            maglev_size: a.maglev_table_size,
            default_mode: a.lb_mode,
            node_name,
        },
        ct_gc_interval: Duration::from_secs(a.ct_gc_interval),
        tables,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(sluice_agent::run(cfg))?;
    Ok(0)
}

/// `ADDRESS/LENGTH`, the address being the network's (host bits zero).
fn parse_cidr(s: &str) -> Result<(std::net::IpAddr, u8), String> {
    let (a, l) = s.split_once('/').ok_or("give ADDRESS/LENGTH, e.g. 10.244.0.0/16")?;
    let addr: std::net::IpAddr = a.parse().map_err(|_| format!("{a:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len: u8 = l.parse().ok().filter(|n| *n <= max).ok_or(format!("{l:?} is not a prefix length (0 to {max})"))?;
    let bits: u128 = match addr {
        std::net::IpAddr::V4(v) => u32::from(v) as u128,
        std::net::IpAddr::V6(v) => u128::from(v),
    };
    let host = if len == max { 0 } else { bits & ((1u128 << (max - len)) - 1) };
    if host != 0 {
        return Err(format!("{addr} has bits set past /{len}: the network address is wanted"));
    }
    Ok((addr, len))
}

#[derive(Debug, Clone, Copy)]
struct XdpArg(Option<sluice_datapath::pod::XdpMode>);

fn parse_xdp(s: &str) -> Result<XdpArg, String> {
    use sluice_datapath::pod::XdpMode;
    match s {
        "off" => Ok(XdpArg(None)),
        "native" => Ok(XdpArg(Some(XdpMode::Native))),
        "generic" => Ok(XdpArg(Some(XdpMode::Generic))),
        _ => Err(format!("{s:?}: one of off, native, generic")),
    }
}

fn parse_lb_algorithm(s: &str) -> Result<sluice_lb::LbAlgorithm, String> {
    s.parse()
}

fn parse_lb_mode(s: &str) -> Result<sluice_lb::LbMode, String> {
    s.parse()
}

fn parse_maglev_size(s: &str) -> Result<sluice_lb::maglev::TableSize, String> {
    s.parse()
}

/// Read and check every document locally, so that syntax errors are
/// reported (all of them) before anything is sent.
fn read_documents(files: &[String]) -> anyhow::Result<Vec<Document>> {
    let mut paths: Vec<String> = Vec::new();
    for f in files {
        let p = Path::new(f);
        if f != "-" && p.is_dir() {
            let mut entries: Vec<String> = std::fs::read_dir(p)
                .with_context(|| format!("reading directory {f}"))?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")))
                .map(|p| p.display().to_string())
                .collect();
            entries.sort();
            if entries.is_empty() {
                bail!("{f}: no *.yaml, *.yml or *.json files in this directory");
            }
            paths.extend(entries);
        } else {
            paths.push(f.clone());
        }
    }
    let mut docs = Vec::new();
    let mut errors: Vec<ManifestError> = Vec::new();
    for p in paths {
        let text = if p == "-" {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("reading standard input")?;
            s
        } else {
            std::fs::read_to_string(&p).with_context(|| format!("reading {p}"))?
        };
        match parse_documents(&p, &text) {
            Ok(ms) => docs.extend(ms.into_iter().map(|m| Document { origin: m.origin, raw: m.raw })),
            Err(es) => errors.extend(es),
        }
    }
    if !errors.is_empty() {
        print_invalid(&errors);
        bail!("{} error(s) in the manifests; nothing was sent to the agent", errors.len());
    }
    Ok(docs)
}

fn print_invalid(errors: &[ManifestError]) {
    for e in errors {
        eprintln!("error: {e}");
    }
}

fn request(sock: &Path, req: &Request) -> anyhow::Result<Response> {
    Ok(call(sock, req)?)
}

/// Print an error reply; returns the exit code.
fn fail(resp: &Response, out: Format) -> i32 {
    if out == Format::Json {
        json(resp);
    }
    if let Response::Error { message, invalid } = resp {
        print_invalid(invalid);
        eprintln!("error: {message}");
    }
    1
}

fn change(sock: &Path, req: Request, out: Format) -> anyhow::Result<i32> {
    let resp = request(sock, &req)?;
    match &resp {
        Response::Changed(r) => {
            if out == Format::Json {
                json(&resp);
            } else {
                let suffix = if r.dry_run { " (dry run)" } else { "" };
                for o in &r.results {
                    println!("{} {}{suffix}", o.object, o.action);
                }
                if !r.dry_run {
                    println!("{} map writes in {} us", r.map_writes, r.reconcile_us);
                }
            }
            Ok(0)
        }
        _ => Ok(fail(&resp, out)),
    }
}

fn get(sock: &Path, g: GetArgs) -> anyhow::Result<i32> {
    let kind = match g.kind {
        GetKind::Services => Kind::Service,
        GetKind::Endpointslices => Kind::EndpointSlice,
        GetKind::Pods => Kind::Pod,
    };
    let resp = request(sock, &Request::Get { kind })?;
    let Response::Objects { items } = &resp else { return Ok(fail(&resp, g.out.output)) };
    let ns_of = |v: &serde_json::Value| {
        v.pointer("/metadata/namespace").and_then(|n| n.as_str()).unwrap_or("default").to_string()
    };
    let items: Vec<&serde_json::Value> =
        items.iter().filter(|v| g.namespace.as_ref().map(|n| *n == ns_of(v)).unwrap_or(true)).collect();
    match g.out.output {
        Format::Json => json(&serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})),
        Format::Yaml => {
            for v in &items {
                print!("---\n{}", serde_yaml_ng::to_string(v)?);
            }
        }
        Format::Text => {
            let s = |v: &serde_json::Value, p: &str| v.pointer(p).map(short).unwrap_or_default();
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|v| match kind {
                    Kind::Service => vec![
                        ns_of(v),
                        s(v, "/metadata/name"),
                        v.pointer("/spec/type").and_then(|t| t.as_str()).unwrap_or("ClusterIP").to_string(),
                        s(v, "/spec/clusterIP"),
                        ports(v),
                    ],
                    Kind::EndpointSlice => vec![
                        ns_of(v),
                        s(v, "/metadata/name"),
                        s(v, "/metadata/labels/kubernetes.io~1service-name"),
                        s(v, "/addressType"),
                        endpoints(v),
                    ],
                    Kind::Pod => vec![ns_of(v), s(v, "/metadata/name"), labels(v)],
                })
                .collect();
            match kind {
                Kind::Service => table(&["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "PORT(S)"], &rows),
                Kind::EndpointSlice => table(&["NAMESPACE", "NAME", "SERVICE", "ADDRESSTYPE", "ENDPOINTS"], &rows),
                Kind::Pod => table(&["NAMESPACE", "NAME", "LABELS"], &rows),
            }
        }
    }
    Ok(0)
}

/// `k=v,k2=v2`, as kubectl shows labels.
fn labels(v: &serde_json::Value) -> String {
    let Some(m) = v.pointer("/metadata/labels").and_then(|l| l.as_object()) else { return "<none>".into() };
    if m.is_empty() {
        return "<none>".into();
    }
    m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(",")
}

fn short(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn ports(v: &serde_json::Value) -> String {
    let ps = v.pointer("/spec/ports").and_then(|p| p.as_array()).cloned().unwrap_or_default();
    ps.iter()
        .map(|p| {
            let port = p.get("port").map(short).unwrap_or_default();
            let proto = p.get("protocol").and_then(|x| x.as_str()).unwrap_or("TCP");
            match p.get("nodePort") {
                Some(np) => format!("{port}:{}/{proto}", short(np)),
                None => format!("{port}/{proto}"),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn endpoints(v: &serde_json::Value) -> String {
    let eps = v.pointer("/endpoints").and_then(|p| p.as_array()).cloned().unwrap_or_default();
    let list: Vec<String> = eps
        .iter()
        .flat_map(|e| e.get("addresses").and_then(|a| a.as_array()).cloned().unwrap_or_default())
        .map(|a| short(&a))
        .collect();
    if list.is_empty() {
        "<none>".into()
    } else {
        list.join(",")
    }
}

fn service_list(sock: &Path, out: Format) -> anyhow::Result<i32> {
    let resp = request(sock, &Request::Services)?;
    let Response::Services { items } = &resp else { return Ok(fail(&resp, out)) };
    if out != Format::Text {
        json(items);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|v| {
            let svc = match (&v.service, v.port_name.as_str()) {
                (Some(s), "") => s.clone(),
                (Some(s), p) => format!("{s}:{p}"),
                (None, _) => "<unowned>".into(),
            };
            let backends = if v.backends.is_empty() && v.frontend.scope.is_local() {
                "<none on this node: external traffic dropped>".to_string()
            } else if v.backends.is_empty() {
                "<none: connects refused>".to_string()
            } else {
                v.backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| match v.backend_pods.get(i).cloned().flatten() {
                        Some(pod) => format!("{b} ({pod})"),
                        None => b.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let kind = match v.affinity_timeout {
                Some(t) => format!("{} ({t}s)", v.kind),
                None => v.kind.clone(),
            };
            vec![v.id.to_string(), v.frontend.to_string(), svc, kind, backends]
        })
        .collect();
    table(&["ID", "FRONTEND", "SERVICE", "FLAGS", "BACKENDS"], &rows);
    Ok(0)
}

fn mac(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn bpf_ep_list(b: &BpfArgs) -> anyhow::Result<i32> {
    let dp = sluice_datapath::pod::PodDatapath::open(&b.bpffs)?;
    let mut eps = dp.endpoints()?;
    eps.sort_by_key(|(ip, e)| (e.id, *ip));
    if b.out.output != Format::Text {
        let v: Vec<serde_json::Value> = eps
            .iter()
            .map(|(ip, e)| serde_json::json!({"address": ip, "id": e.id, "host_ifindex": e.host_ifindex, "host_mac": mac(&e.host_mac), "pod_mac": mac(&e.pod_mac)}))
            .collect();
        json(&v);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> =
        eps.iter().map(|(ip, e)| vec![ip.to_string(), e.id.to_string(), e.host_ifindex.to_string(), mac(&e.host_mac), mac(&e.pod_mac)]).collect();
    table(&["ADDRESS", "ENDPOINT", "HOST-IFINDEX", "HOST-MAC", "POD-MAC"], &rows);
    Ok(0)
}

/// Seconds since boot (CLOCK_MONOTONIC), to show entries' age.
fn mono_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64).unwrap_or(0)
}

fn age(last_seen_ns: u64, lifetime_s: u32) -> (String, String) {
    let age = mono_ns().saturating_sub(last_seen_ns) / 1_000_000_000;
    let state = if age > lifetime_s as u64 { "expired".to_string() } else { format!("{}s left", lifetime_s as u64 - age) };
    (format!("{age}s"), state)
}

/// Print translation-table entries: JSON, or a table with a count.
fn print_entries<T: serde::Serialize>(out: Format, entries: &[T], header: &[&str], row: impl Fn(&T) -> Vec<String>) {
    if out != Format::Text {
        json(&entries);
        return;
    }
    let rows: Vec<Vec<String>> = entries.iter().map(row).collect();
    table(header, &rows);
    println!("{} entr{}", entries.len(), if entries.len() == 1 { "y" } else { "ies" });
}

fn state(last_seen_ns: u64, lifetime_s: u32, closing: bool) -> (String, String) {
    let (idle, left) = age(last_seen_ns, lifetime_s);
    (idle, format!("{left}{}", if closing { ", closing" } else { "" }))
}

fn bpf_ct_list(f: &BpfFilterArgs) -> anyhow::Result<i32> {
    let dp = sluice_datapath::pod::PodDatapath::open(&f.bpf.bpffs)?;
    let entries: Vec<_> = dp.ct_entries()?.into_iter().filter(|e| f.keep(&[e.src, e.dst, e.nat], e.proto)).collect();
    print_entries(f.bpf.out.output, &entries, &["PROTO", "SOURCE", "DESTINATION", "DIR", "TRANSLATION", "BACKEND", "KIND", "IDLE", "STATE"], |e| {
        let (idle, st) = state(e.last_seen_ns, e.lifetime_s, e.closing);
        let (dir, nat) = if e.reverse { ("reply", format!("src -> {}", e.nat)) } else { ("original", format!("dst -> {}", e.nat)) };
        vec![proto_name(e.proto).into(), e.src.to_string(), e.dst.to_string(), dir.into(), nat, e.backend_id.to_string(), e.kind.clone(), idle, st]
    });
    Ok(0)
}

fn bpf_nat_list(f: &BpfFilterArgs) -> anyhow::Result<i32> {
    let dp = sluice_datapath::pod::PodDatapath::open(&f.bpf.bpffs)?;
    let entries: Vec<_> = dp.nat_entries()?.into_iter().filter(|e| f.keep(&[e.src, e.dst, e.nat], e.proto)).collect();
    print_entries(f.bpf.out.output, &entries, &["PROTO", "SOURCE", "DESTINATION", "DIR", "TRANSLATION", "KIND", "IDLE", "STATE"], |e| {
        let (idle, st) = state(e.last_seen_ns, e.lifetime_s, e.closing);
        let (dir, nat) = if e.inbound { ("reply", format!("dst -> {}", e.nat)) } else { ("original", format!("src -> {}", e.nat)) };
        vec![proto_name(e.proto).into(), e.src.to_string(), e.dst.to_string(), dir.into(), nat, e.kind.clone(), idle, st]
    });
    Ok(0)
}

fn bpf_lb_list(b: &BpfArgs) -> anyhow::Result<i32> {
    let maps = sluice_datapath::KernelMaps::open(&b.bpffs)?;
    let dump = maps.dump()?;
    match b.out.output {
        Format::Text => print!("{}", dump.to_text()),
        _ => json(&dump),
    }
    Ok(0)
}

fn lb_simulate(sock: &Path, a: &SimulateArgs) -> anyhow::Result<i32> {
    use sluice_lb::simulate::{flow_from_args, simulate, Origin};
    let (tuple, picked) = flow_from_args(&a.src, &a.dst, &a.proto).map_err(|e| anyhow::anyhow!(e))?;
    if !a.bpffs.join("maps").is_dir() {
        bail!("no datapath pinned under {} (is the agent installed? see --bpffs)", a.bpffs.display());
    }
    let mut maps = sluice_datapath::simulate::KernelSim::open(&a.bpffs).context("opening the pinned maps")?;
    // Pod device names live in the agent's network namespace; the agent
    // knows them (without it, devices are shown by ifindex only).
    if let Ok(Response::Endpoints { items }) = request(sock, &Request::Endpoints) {
        maps.add_device_names(items.into_iter().map(|e| (e.host_ifindex, e.host_ifname)));
    }
    let from = match a.from {
        SimFrom::Outside => Origin::Outside,
        SimFrom::Pod => Origin::Pod,
    };
    let r = simulate(&maps, from, tuple, picked).map_err(|e| anyhow::anyhow!("reading the maps: {e}"))?;
    match a.out.output {
        Format::Text => print!("{}", r.to_text()),
        _ => json(&r),
    }
    Ok(0)
}

fn bpf_metrics(b: &BpfArgs) -> anyhow::Result<i32> {
    let maps = sluice_datapath::KernelMaps::open(&b.bpffs)?;
    let m = maps.metrics()?;
    match b.out.output {
        Format::Text => table(&["COUNTER", "VALUE"], &m.iter().map(|m| vec![m.name.clone(), m.value.to_string()]).collect::<Vec<_>>()),
        _ => json(&m),
    }
    Ok(0)
}

fn status(sock: &Path, out: Format) -> anyhow::Result<i32> {
    let resp = request(sock, &Request::Status)?;
    let Response::Status(s) = &resp else { return Ok(fail(&resp, out)) };
    if out != Format::Text {
        json(s);
        return Ok(0);
    }
    println!("agent:      running (v{}, up {}s)", s.version, s.uptime_s);
    println!("datapath:   {}", if s.datapath_loaded { "loaded, all programs attached" } else { "NOT fully attached" });
    println!("cgroup:     {}", s.cgroup);
    println!("pins:       {}", s.pin_dir);
    println!("store:      {}", s.state_dir);
    println!("objects:    {} services, {} endpoint slices", s.services, s.endpoint_slices);
    println!("maps:       {} frontends, {} backends, {} socket reverse-NAT entries", s.frontends, s.backends, s.sock_revnat_entries);
    println!("node addrs: {}", if s.node_addresses.is_empty() { "-".into() } else { s.node_addresses.join(", ") });
    for t in &s.table_sizes {
        let pinned = match t.pinned {
            Some(p) if p != t.configured => format!("{p} entries pinned, NOT the configured {} (kept until `sluice datapath uninstall`)", t.configured),
            Some(p) => format!("{p} entries"),
            None => "not pinned".into(),
        };
        println!("{:<11} {pinned}", format!("{}:", t.map));
    }
    match &s.ct_gc {
        Some(g) if g.error.is_some() => println!("ct gc:      last sweep {}s ago FAILED: {}", g.ago_s, g.error.as_deref().unwrap_or_default()),
        Some(g) => println!(
            "ct gc:      last sweep {}s ago (every {}s, {} us): conntrack {} scanned, {} expired, {} orphans deleted; NAT {} scanned, {} expired, {} orphans deleted",
            g.ago_s, g.interval_s, g.duration_us, g.ct_scanned, g.ct_expired, g.ct_orphans, g.nat_scanned, g.nat_expired, g.nat_orphans
        ),
        None => println!("ct gc:      no sweep yet (or --ct-gc-interval 0)"),
    }
    for h in &s.health_checks {
        println!(
            "health:     :{} for {} ({} local endpoint{}: {})",
            h.port,
            h.service,
            h.local_endpoints,
            if h.local_endpoints == 1 { "" } else { "s" },
            if h.local_endpoints > 0 { "200" } else { "503" }
        );
    }
    for w in &s.warnings {
        println!("WARNING:    {w}");
    }
    println!("programs:");
    for l in &s.links {
        println!("  {:<18} {}", l.program, l.state);
    }
    println!("counters:");
    for (n, v) in &s.counters {
        println!("  {n:<24} {v}");
    }
    Ok(if s.datapath_loaded { 0 } else { 2 })
}

/// `ADDR`, `ADDR:PORT`, `[V6]:PORT` or a bare IPv6 address.
fn parse_dst(s: &str) -> anyhow::Result<(std::net::IpAddr, Option<u16>)> {
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        if sa.port() == 0 {
            bail!("--dst {s}: port 0 is not a port (leave the port out to match any)");
        }
        return Ok((sa.ip(), Some(sa.port())));
    }
    if let Ok(ip) = s.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>() {
        return Ok((ip, None));
    }
    bail!("--dst {s:?}: expected an address, optionally with a port (10.0.0.5, 10.0.0.5:80, [fd00::5]:53)")
}

fn socket_kill(k: SocketKillArgs) -> anyhow::Result<i32> {
    let (dst, port) = parse_dst(&k.dst)?;
    let namespaces = if k.netns.is_empty() { sluice_datapath::sockterm::all_namespaces() } else { k.netns.clone() };
    for ns in &namespaces {
        if !ns.exists() {
            bail!("--netns {}: no such namespace file", ns.display());
        }
    }
    let filter = sluice_datapath::sockterm::TermFilter {
        target: sluice_datapath::sockterm::TermTarget::Dst { dst, port },
        dry_run: k.dry_run,
        pin_dir: Some(k.bpffs.clone()),
    };
    let records = sluice_datapath::sockterm::terminate(&filter, &namespaces)?;
    if k.out.output != Format::Text {
        json(&serde_json::json!({ "dry_run": k.dry_run, "namespaces": namespaces.len(), "sockets": records }));
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            let result = if k.dry_run {
                "would destroy".to_string()
            } else if r.destroyed {
                "destroyed".to_string()
            } else {
                format!("failed ({})", std::io::Error::from_raw_os_error(-r.err))
            };
            vec![r.netns.clone(), r.proto.as_str().to_string(), r.src.to_string(), r.dst.to_string(), result]
        })
        .collect();
    if !rows.is_empty() {
        table(&["NETNS", "PROTO", "SOURCE", "DESTINATION", "RESULT"], &rows);
    }
    let failed = records.iter().filter(|r| !k.dry_run && !r.destroyed).count();
    println!(
        "{} socket(s) {} in {} namespace(s) searched{}",
        records.len(),
        if k.dry_run { "match (dry run: none destroyed)" } else { "matched" },
        namespaces.len(),
        if failed > 0 { format!("; {failed} could not be destroyed") } else { String::new() }
    );
    Ok(if failed > 0 { 1 } else { 0 })
}

fn endpoint_list(sock: &Path, out: Format) -> anyhow::Result<i32> {
    let resp = request(sock, &Request::Endpoints)?;
    let Response::Endpoints { items } = &resp else { return Ok(fail(&resp, out)) };
    if out != Format::Text {
        json(items);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|e| {
            let pod = match (&e.pod_namespace, &e.pod_name) {
                (ns, Some(n)) => format!("{}/{n}", ns.as_deref().unwrap_or("default")),
                _ => "-".into(),
            };
            let labels = if e.labels.is_empty() {
                "<none>".to_string()
            } else {
                e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
            };
            let cid: String = e.attachment.container_id.chars().take(12).collect();
            vec![e.id.to_string(), pod, e.ips.join(","), format!("{}/{}", cid, e.attachment.ifname), e.host_ifname.clone(), e.state.clone(), labels]
        })
        .collect();
    table(&["ID", "POD", "ADDRESSES", "CONTAINER/IF", "HOST-DEV", "STATE", "LABELS"], &rows);
    Ok(0)
}

fn socket_events(sock: &Path, out: Format) -> anyhow::Result<i32> {
    let resp = request(sock, &Request::SocketEvents)?;
    let Response::SocketEvents { destroyed_total, failed_total, events } = &resp else { return Ok(fail(&resp, out)) };
    if out != Format::Text {
        json(&resp);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                e.time.to_string(),
                if e.service.is_empty() { "-".into() } else { e.service.clone() },
                e.backend.to_string(),
                e.netns.clone(),
                e.proto.clone(),
                e.src.clone(),
                if e.destroyed { "destroyed".into() } else { format!("failed: {}", e.error.clone().unwrap_or_default()) },
            ]
        })
        .collect();
    if !rows.is_empty() {
        table(&["TIME", "SERVICE", "BACKEND", "NETNS", "PROTO", "SOURCE", "RESULT"], &rows);
    }
    println!("{destroyed_total} socket(s) destroyed, {failed_total} failed, since the agent started");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::parse_cidr;

    #[test]
    fn cidrs_are_parsed_and_bad_ones_named() {
        assert_eq!(parse_cidr("10.0.0.0/8"), Ok(("10.0.0.0".parse().unwrap(), 8)));
        assert_eq!(parse_cidr("fd00:5c:60::/44"), Ok(("fd00:5c:60::".parse().unwrap(), 44)));
        assert_eq!(parse_cidr("0.0.0.0/0"), Ok(("0.0.0.0".parse().unwrap(), 0)));
        assert_eq!(parse_cidr("192.0.2.1/32"), Ok(("192.0.2.1".parse().unwrap(), 32)));
        assert!(parse_cidr("10.0.0.1/8").unwrap_err().contains("network address"));
        assert!(parse_cidr("fd00::/130").unwrap_err().contains("prefix length"));
        assert!(parse_cidr("x/3").unwrap_err().contains("not an IP address"));
        assert!(parse_cidr("10.0.0.0").unwrap_err().contains("ADDRESS/LENGTH"));
    }
}
