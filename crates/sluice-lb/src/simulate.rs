//! What the per-packet datapath would do with one packet: which frontend
//! it matches, how the backend is chosen, and where the packet goes.
//!
//! The logic mirrors `bpf/lib/lb.h` (`sl_lb_lookup_frontend` with no
//! network namespace, `sl_lb_pick`), `bpf/lib/ct.h` (an existing forward
//! entry is followed) and the NodePort rules of the node's external
//! devices (local twin for externalTrafficPolicy: Local, local pod / local
//! host / DSR / SNAT). It reads the maps through [`SimSource`], one lookup
//! at a time as the datapath does, so it costs the same at any number of
//! services: the datapath crate implements it on the pinned maps,
//! [`MemSim`] in memory for tests.
//!
//! The simulation only reads: no conntrack, affinity or NAT entry is written.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::Serialize;

use crate::maglev;
use crate::types::{BackendKey, Protocol, SvcVal, SVC_F_AFFINITY, SVC_F_EXTERNAL_IP, SVC_F_LOADBALANCER, SVC_F_MAGLEV, SVC_F_NODEPORT};

// Values of bpf/include/lb.h that sluice-lb's types do not carry (yet).
/// `SL_SVC_F_ETP_LOCAL`: externalTrafficPolicy: Local, see the local twin.
pub const SIM_SVC_F_ETP_LOCAL: u16 = 1 << 5;
/// `SL_SVC_F_DSR`: remote backends answer the client directly.
pub const SIM_SVC_F_DSR: u16 = 1 << 6;
/// `SL_SCOPE_VIP`, `SL_SCOPE_NODEPORT`, and the bit of the local twin.
pub const SIM_SCOPE_VIP: u8 = 0;
pub const SIM_SCOPE_NODEPORT: u8 = 1;
pub const SIM_SCOPE_LOCAL: u8 = 2;
/// `SL_CT_DIR_FWD`.
pub const CT_DIR_FWD: u8 = 0;

/// Errors of a map source.
pub type SimError = Box<dyn std::error::Error + Send + Sync>;

/// A service-map key with its raw scope (0..3, the local twins included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RawSvcKey {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Protocol,
    pub scope: u8,
    pub slot: u16,
}

/// A 5-tuple, ports in host order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Tuple {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub proto: Protocol,
}

/// The part of a conntrack entry the simulation uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtFwd {
    /// The backend the flow was sent to.
    pub nat: SocketAddr,
    pub backend_id: u32,
    pub rev_nat_id: u32,
    pub flags: u16,
    pub lifetime_s: u32,
    pub last_seen_ns: u64,
}

/// An entry of the endpoint map (`sl_ep_v1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimEndpoint {
    pub id: u32,
    pub host_ifindex: u32,
    /// The host device's name, when the source can tell.
    pub host_ifname: Option<String>,
}

/// The node configuration the paths use (`sl_cfg_v1`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimNodeCfg {
    pub masq4: Option<Ipv4Addr>,
    pub masq6: Option<Ipv6Addr>,
    pub snat_ports: (u16, u16),
}

/// ClientIP affinity of one client and frontend (`sl_lb_aff_v1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimAffinity {
    pub backend_id: u32,
    pub last_used_ns: u64,
}

/// A Maglev lookup: the table's size and the backend id in the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimMaglevSlot {
    pub size: u32,
    pub backend_id: u32,
}

/// Where the simulation reads the maps from.
pub trait SimSource {
    fn service(&self, k: &RawSvcKey) -> Result<Option<SvcVal>, SimError>;
    fn backend(&self, id: u32) -> Result<Option<BackendKey>, SimError>;
    /// The Maglev table of frontend `rev_nat_id`, slot `hash % size`; None
    /// without a table.
    fn maglev_slot(&self, rev_nat_id: u32, hash: u32) -> Result<Option<SimMaglevSlot>, SimError>;
    fn is_node_addr(&self, a: IpAddr) -> Result<bool, SimError>;
    fn endpoint(&self, a: IpAddr) -> Result<Option<SimEndpoint>, SimError>;
    fn node_cfg(&self) -> Result<SimNodeCfg, SimError>;
    /// The forward conntrack entry keyed by exactly this tuple.
    fn ct_fwd(&self, t: &Tuple) -> Result<Option<CtFwd>, SimError>;
    fn affinity(&self, client: u64, rev_nat_id: u32) -> Result<Option<SimAffinity>, SimError>;
    fn affinity_match(&self, backend_id: u32, rev_nat_id: u32) -> Result<bool, SimError>;
    /// bpf_ktime_get_ns() now: CLOCK_MONOTONIC.
    fn now_ns(&self) -> u64;
}

/// Where the packet enters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// At the node's external devices (NodePort datapath).
    Outside,
    /// At a pod's device (the pod datapath).
    Pod,
}

/// The scope a frontend matched in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MatchScope {
    Vip,
    NodePort,
    VipLocal,
    NodePortLocal,
}

impl MatchScope {
    fn of(scope: u8) -> MatchScope {
        match scope {
            0 => MatchScope::Vip,
            1 => MatchScope::NodePort,
            2 => MatchScope::VipLocal,
            _ => MatchScope::NodePortLocal,
        }
    }
    pub fn describe(self) -> &'static str {
        match self {
            MatchScope::Vip => "VIP",
            MatchScope::NodePort => "NodePort (any node address)",
            MatchScope::VipLocal => "VIP, local twin (externalTrafficPolicy: Local)",
            MatchScope::NodePortLocal => "NodePort, local twin (externalTrafficPolicy: Local)",
        }
    }
}

/// The matched frontend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FrontendMatch {
    /// As the service map keys it: the VIP, or `*` for a NodePort.
    pub frontend: String,
    pub scope: MatchScope,
    pub rev_nat_id: u32,
    pub flags: Vec<&'static str>,
    /// Active backend slots.
    pub count: u32,
    pub affinity_timeout_s: u32,
}

/// A backend as the simulation names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SimBackend {
    pub id: u32,
    pub addr: SocketAddr,
}

impl fmt::Display for SimBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (backend {})", self.addr, self.id)
    }
}

/// How the backend was chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "by", rename_all = "kebab-case")]
pub enum Selection {
    /// A live forward conntrack entry of this exact 5-tuple.
    Conntrack { idle_s: u64, left_s: u64, closing: bool },
    /// ClientIP affinity (the client is the source address).
    Affinity { idle_s: u64, timeout_s: u32 },
    /// The frontend's Maglev table.
    Maglev { hash: u32, slot: u32, size: u32 },
    /// A random slot of 1..=count: any of `candidates`.
    Random { candidates: Vec<Candidate> },
}

/// One possible backend of a random pick, and where the packet would go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candidate {
    pub slot: u16,
    /// None: the slot or its backend is missing (that pick drops).
    pub backend: Option<SimBackend>,
    pub path: PacketPath,
}

/// Why the packet is not translated or is dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    NoFrontend,
    /// A ClusterIP-only frontend, from outside: not reachable, untouched.
    NotExternal,
    NoBackend,
    NoLocalBackend,
    BackendMissing,
    FamilyMismatch,
    /// Remote backend, SNAT needed, no node address of the family in sl_cfg_v1.
    NoSnatAddress,
}

impl Reason {
    pub fn describe(&self) -> &'static str {
        match self {
            Reason::NoFrontend => "no frontend matches this destination",
            Reason::NotExternal => "the frontend is ClusterIP only: not reachable from outside the node",
            Reason::NoBackend => "no backend: the frontend has no active backend slot",
            Reason::NoLocalBackend => "no local backend: externalTrafficPolicy: Local and this node has none",
            Reason::BackendMissing => "a slot names a backend that does not exist (an interrupted write?)",
            Reason::FamilyMismatch => "family mismatch: the backend's address family differs from the packet's",
            Reason::NoSnatAddress => "remote backend needs SNAT but the node has no address of this family in sl_cfg_v1",
        }
    }
}

/// Where the packet goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "path", rename_all = "kebab-case")]
pub enum PacketPath {
    /// Not a service packet: left untouched.
    Pass { reason: Reason },
    Drop { reason: Reason },
    /// DNAT, then bpf_redirect_peer into the pod's host device.
    LocalPod { host_ifindex: u32, host_ifname: Option<String>, endpoint_id: u32 },
    /// DNAT, then the node's own stack.
    LocalHost,
    /// From a pod: DNAT, then the node's stack routes it.
    Stack,
    /// DNAT, the frontend in an IP option, FIB lookup and redirect.
    RemoteDsr,
    /// DNAT and SNAT to the node's address with a port of the range, FIB lookup and redirect.
    RemoteSnat { snat_addr: IpAddr, ports: (u16, u16) },
    /// eTP Local flows are never SNATed (a remote backend in a local twin is unexpected).
    RemoteNoSnat,
}

impl PacketPath {
    pub fn describe(&self) -> String {
        match self {
            PacketPath::Pass { reason } => format!("PASS untouched: {}", reason.describe()),
            PacketPath::Drop { reason } => format!("DROP: {}", reason.describe()),
            PacketPath::LocalPod { host_ifindex, host_ifname, endpoint_id } => format!(
                "local pod (endpoint {endpoint_id}): DNAT, bpf_redirect_peer into {} (ifindex {host_ifindex})",
                host_ifname.as_deref().unwrap_or("?")
            ),
            PacketPath::LocalHost => "local host: DNAT, to the node's stack".into(),
            PacketPath::Stack => "DNAT, then the node's stack routes it (not a pod on this node)".into(),
            PacketPath::RemoteDsr => "remote, DSR: DNAT, the frontend carried in an IP option, FIB lookup and redirect; the backend answers the client directly".into(),
            PacketPath::RemoteSnat { snat_addr, ports } => format!(
                "remote: DNAT and SNAT to the node's address {snat_addr} with a port from {}-{}, FIB lookup and redirect",
                ports.0, ports.1
            ),
            PacketPath::RemoteNoSnat => "remote, NOT SNATed (externalTrafficPolicy: Local flows never are): DNAT, FIB lookup and redirect".into(),
        }
    }
}

/// The whole answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SimResult {
    pub from: Origin,
    pub tuple: Tuple,
    /// The source port was not given and was picked by the simulator.
    pub src_port_picked: bool,
    pub frontend: Option<FrontendMatch>,
    /// The frontend whose master named the local twin (eTP Local).
    pub etp_local_of: Option<FrontendMatch>,
    pub selection: Option<Selection>,
    /// The chosen backend; None for a random pick (see the candidates) or a drop.
    pub backend: Option<SimBackend>,
    pub path: PacketPath,
    /// Fallbacks and other remarks, in order.
    pub notes: Vec<String>,
}

/// The source port used when none is given (the first of the IANA ephemeral range).
pub const DEFAULT_SRC_PORT: u16 = 49152;

/// `sl_ct_client()`: the client of per-packet affinity, from its address.
pub fn ct_client(a: IpAddr) -> u64 {
    let b = match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    // The datapath reads the network-order bytes as native-endian words.
    let w = |i: usize| u32::from_ne_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
    (1u64 << 63) | (((w(0) ^ w(1) ^ w(2)) as u64) << 32) | w(3) as u64
}

pub fn flag_names(flags: u16) -> Vec<&'static str> {
    [
        (SVC_F_AFFINITY, "affinity"),
        (SVC_F_NODEPORT, "nodeport"),
        (SVC_F_EXTERNAL_IP, "externalip"),
        (SVC_F_LOADBALANCER, "loadbalancer"),
        (SVC_F_MAGLEV, "maglev"),
        (SIM_SVC_F_ETP_LOCAL, "etp-local"),
        (SIM_SVC_F_DSR, "dsr"),
    ]
    .into_iter()
    .filter(|(b, _)| flags & b != 0)
    .map(|(_, n)| n)
    .collect()
}

fn unspecified(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
}

fn fmatch(k: &RawSvcKey, v: &SvcVal) -> FrontendMatch {
    let shown = if k.scope & SIM_SCOPE_NODEPORT != 0 {
        match k.addr {
            IpAddr::V4(_) => format!("*:{}/{}", k.port, k.proto.as_str()),
            IpAddr::V6(_) => format!("[*]:{}/{}", k.port, k.proto.as_str()),
        }
    } else {
        format!("{}/{}", SocketAddr::new(k.addr, k.port), k.proto.as_str())
    };
    FrontendMatch {
        frontend: shown,
        scope: MatchScope::of(k.scope),
        rev_nat_id: v.rev_nat_id,
        flags: flag_names(v.flags),
        count: v.count,
        affinity_timeout_s: v.affinity_timeout,
    }
}

/// `sl_lb_lookup_frontend` with no network namespace: the VIP, else (at a
/// node address) the family's NodePort wildcard.
fn lookup_frontend<S: SimSource>(s: &S, t: &Tuple) -> Result<Option<(RawSvcKey, SvcVal)>, SimError> {
    let mut k = RawSvcKey { addr: t.dst.ip(), port: t.dst.port(), proto: t.proto, scope: SIM_SCOPE_VIP, slot: 0 };
    if let Some(v) = s.service(&k)? {
        return Ok(Some((k, v)));
    }
    if !s.is_node_addr(t.dst.ip())? {
        return Ok(None);
    }
    k.addr = unspecified(t.dst.is_ipv6());
    k.scope = SIM_SCOPE_NODEPORT;
    Ok(s.service(&k)?.map(|v| (k, v)))
}

fn secs(ns: u64) -> u64 {
    ns / 1_000_000_000
}

fn backend_of<S: SimSource>(s: &S, id: u32) -> Result<Option<SimBackend>, SimError> {
    Ok(s.backend(id)?.map(|b| SimBackend { id, addr: SocketAddr::new(b.addr, b.port) }))
}

/// Where a packet to backend `b` goes from `from`, for a frontend with
/// `flags` (the master's), `etp_local` when the local twin was used.
fn path_to<S: SimSource>(s: &S, from: Origin, t: &Tuple, b: &SimBackend, flags: u16, etp_local: bool) -> Result<PacketPath, SimError> {
    if b.addr.is_ipv6() != t.dst.is_ipv6() {
        return Ok(PacketPath::Drop { reason: Reason::FamilyMismatch });
    }
    if let Some(ep) = s.endpoint(b.addr.ip())? {
        return Ok(PacketPath::LocalPod { host_ifindex: ep.host_ifindex, host_ifname: ep.host_ifname, endpoint_id: ep.id });
    }
    if from == Origin::Pod {
        return Ok(PacketPath::Stack);
    }
    if s.is_node_addr(b.addr.ip())? {
        return Ok(PacketPath::LocalHost);
    }
    if etp_local {
        return Ok(PacketPath::RemoteNoSnat);
    }
    if flags & SIM_SVC_F_DSR != 0 {
        return Ok(PacketPath::RemoteDsr);
    }
    let cfg = s.node_cfg()?;
    let masq = match b.addr.ip() {
        IpAddr::V4(_) => cfg.masq4.map(IpAddr::V4),
        IpAddr::V6(_) => cfg.masq6.map(IpAddr::V6),
    };
    Ok(match masq {
        Some(a) => PacketPath::RemoteSnat { snat_addr: a, ports: cfg.snat_ports },
        None => PacketPath::Drop { reason: Reason::NoSnatAddress },
    })
}

/// Simulate one packet. `tuple.src.port()` is used as given;
/// `src_port_picked` is only reported.
pub fn simulate<S: SimSource>(s: &S, from: Origin, tuple: Tuple, src_port_picked: bool) -> Result<SimResult, SimError> {
    let mut r = SimResult {
        from,
        tuple,
        src_port_picked,
        frontend: None,
        etp_local_of: None,
        selection: None,
        backend: None,
        path: PacketPath::Pass { reason: Reason::NoFrontend },
        notes: Vec::new(),
    };
    let now = s.now_ns();
    let t = &tuple;
    let found = lookup_frontend(s, t)?;
    if let Some((k, v)) = &found {
        r.frontend = Some(fmatch(k, v));
    }

    // Existing flows follow their conntrack entry first (sl_ct_service).
    if let Some(ct) = s.ct_fwd(t)? {
        let alive = now < ct.last_seen_ns.saturating_add(ct.lifetime_s as u64 * 1_000_000_000);
        let be = backend_of(s, ct.backend_id)?;
        match be {
            Some(b) if alive && b.addr == ct.nat => {
                let idle = now.saturating_sub(ct.last_seen_ns);
                r.selection = Some(Selection::Conntrack {
                    idle_s: secs(idle),
                    left_s: (ct.lifetime_s as u64).saturating_sub(secs(idle)),
                    closing: ct.flags & 1 != 0,
                });
                let flags = found.as_ref().map(|(_, v)| v.flags).unwrap_or(0);
                let etp = from == Origin::Outside && flags & SIM_SVC_F_ETP_LOCAL != 0;
                if found.is_none() {
                    r.notes.push("the frontend is gone; the flow keeps its conntrack entry".into());
                }
                r.path = path_to(s, from, t, &b, flags, etp)?;
                r.backend = Some(b);
                return Ok(r);
            }
            _ if !alive => r.notes.push("a conntrack entry exists but has expired: a new pick".into()),
            _ => r.notes.push(format!("the conntrack entry's backend {} ({}) is gone: a new pick", ct.backend_id, ct.nat)),
        }
    }

    let Some((mut key, mut master)) = found else {
        return Ok(r);
    };
    let mut etp_local = false;
    if from == Origin::Outside {
        let external = master.flags & (SVC_F_NODEPORT | SVC_F_EXTERNAL_IP | SVC_F_LOADBALANCER) != 0 || key.scope == SIM_SCOPE_NODEPORT;
        if !external {
            r.path = PacketPath::Pass { reason: Reason::NotExternal };
            return Ok(r);
        }
        if master.flags & SIM_SVC_F_ETP_LOCAL != 0 {
            etp_local = true;
            let twin = RawSvcKey { scope: key.scope | SIM_SCOPE_LOCAL, ..key };
            r.etp_local_of = r.frontend.take();
            match s.service(&twin)? {
                Some(v) => {
                    r.frontend = Some(fmatch(&twin, &v));
                    key = twin;
                    // Keep the original master's traffic-policy flags.
                    let outer = master.flags;
                    master = v;
                    master.flags |= outer & (SIM_SVC_F_ETP_LOCAL | SIM_SVC_F_DSR);
                }
                None => {
                    r.notes.push("the master entry has etp-local but its local twin is missing".into());
                    r.path = PacketPath::Drop { reason: Reason::NoLocalBackend };
                    return Ok(r);
                }
            }
            if master.count == 0 {
                r.path = PacketPath::Drop { reason: Reason::NoLocalBackend };
                return Ok(r);
            }
        }
    }
    if master.count == 0 {
        r.path = PacketPath::Drop { reason: Reason::NoBackend };
        return Ok(r);
    }

    // sl_lb_choose: affinity, then Maglev, then random.
    if master.flags & SVC_F_AFFINITY != 0 {
        let client = ct_client(t.src.ip());
        match s.affinity(client, master.rev_nat_id)? {
            Some(a) if now.saturating_sub(a.last_used_ns) <= master.affinity_timeout as u64 * 1_000_000_000 => {
                let active = s.affinity_match(a.backend_id, master.rev_nat_id)?;
                match backend_of(s, a.backend_id)? {
                    Some(b) if active => {
                        r.selection = Some(Selection::Affinity { idle_s: secs(now.saturating_sub(a.last_used_ns)), timeout_s: master.affinity_timeout });
                        r.path = path_to(s, from, t, &b, master.flags, etp_local)?;
                        r.backend = Some(b);
                        return Ok(r);
                    }
                    _ => r.notes.push(format!("the affinity entry names backend {}, no longer active: a new pick", a.backend_id)),
                }
            }
            Some(_) => r.notes.push("the client's affinity entry has expired: a new pick".into()),
            None => r.notes.push("no affinity entry for this client yet: a new pick (remembered for next time)".into()),
        }
    }
    if master.flags & SVC_F_MAGLEV != 0 {
        let hash = maglev::flow_hash(t.src.ip(), t.dst.ip(), t.src.port(), t.dst.port(), t.proto.number());
        match s.maglev_slot(master.rev_nat_id, hash)? {
            Some(m) if m.size > 0 => match backend_of(s, m.backend_id)? {
                Some(b) => {
                    r.selection = Some(Selection::Maglev { hash, slot: hash % m.size, size: m.size });
                    r.path = path_to(s, from, t, &b, master.flags, etp_local)?;
                    r.backend = Some(b);
                    return Ok(r);
                }
                None => r.notes.push(format!(
                    "Maglev slot {} of {} names backend {}, which does not exist: random fallback",
                    hash % m.size,
                    m.size,
                    m.backend_id
                )),
            },
            _ => r.notes.push(format!("the frontend has the maglev flag but no table (frontend id {}): random fallback", master.rev_nat_id)),
        }
    }
    let mut candidates = Vec::new();
    for slot in 1..=master.count.min(u16::MAX as u32) as u16 {
        let be = match s.service(&RawSvcKey { slot, ..key })? {
            Some(v) => backend_of(s, v.backend_id)?,
            None => None,
        };
        let path = match &be {
            Some(b) => path_to(s, from, t, b, master.flags, etp_local)?,
            None => PacketPath::Drop { reason: Reason::BackendMissing },
        };
        candidates.push(Candidate { slot, backend: be, path });
    }
    let usable: Vec<&Candidate> = candidates.iter().filter(|c| c.backend.is_some()).collect();
    if usable.is_empty() {
        r.path = PacketPath::Drop { reason: Reason::BackendMissing };
    } else {
        let paths: BTreeSet<String> = candidates.iter().map(|c| c.path.describe()).collect();
        if paths.len() == 1 {
            r.path = candidates[0].path.clone();
        } else {
            r.path = usable[0].path.clone();
            r.notes.push("the path depends on the random pick: see each candidate".into());
        }
        if usable.len() == 1 {
            r.backend = usable[0].backend.clone();
        }
    }
    r.selection = Some(Selection::Random { candidates });
    Ok(r)
}

impl SimResult {
    /// The answer for a tired operator: a few lines, the outcome last.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let t = &self.tuple;
        let from = match self.from {
            Origin::Outside => "from outside (the node's external devices)",
            Origin::Pod => "from a pod (the pod's device)",
        };
        let _ = writeln!(s, "packet:    {} {} -> {} {from}", t.proto.as_str().to_lowercase(), t.src, t.dst);
        if self.src_port_picked {
            let _ = writeln!(s, "           source port {} picked by the simulator (give --src ADDR:PORT: Maglev and conntrack depend on it)", t.src.port());
        }
        if let Some(o) = &self.etp_local_of {
            let _ = writeln!(s, "frontend:  {} id={} [{}] -> externalTrafficPolicy: Local, uses its local twin", o.frontend, o.rev_nat_id, o.flags.join(","));
        }
        match &self.frontend {
            Some(f) => {
                let _ = writeln!(
                    s,
                    "{}{} id={} scope {} flags [{}] {} backend slot(s)",
                    if self.etp_local_of.is_some() { "twin:      " } else { "frontend:  " },
                    f.frontend,
                    f.rev_nat_id,
                    f.scope.describe(),
                    f.flags.join(","),
                    f.count
                );
            }
            None => {
                let _ = writeln!(s, "frontend:  none");
            }
        }
        match &self.selection {
            Some(Selection::Conntrack { idle_s, left_s, closing }) => {
                let _ = writeln!(s, "chosen by: existing conntrack entry of this 5-tuple (idle {idle_s}s, {left_s}s left{})", if *closing { ", closing" } else { "" });
            }
            Some(Selection::Affinity { idle_s, timeout_s }) => {
                let _ = writeln!(s, "chosen by: ClientIP affinity (last used {idle_s}s ago, timeout {timeout_s}s)");
            }
            Some(Selection::Maglev { hash, slot, size }) => {
                let _ = writeln!(s, "chosen by: Maglev, flow hash {hash:#010x} -> slot {slot} of {size}");
            }
            Some(Selection::Random { candidates }) => {
                let _ = writeln!(s, "chosen by: random, one of {} slot(s):", candidates.len());
                for c in candidates {
                    match &c.backend {
                        Some(b) => {
                            let _ = writeln!(s, "             slot {}: {b}: {}", c.slot, c.path.describe());
                        }
                        None => {
                            let _ = writeln!(s, "             slot {}: missing: {}", c.slot, c.path.describe());
                        }
                    }
                }
            }
            None => {}
        }
        if let Some(b) = &self.backend {
            let _ = writeln!(s, "backend:   {b}");
        }
        for n in &self.notes {
            let _ = writeln!(s, "note:      {n}");
        }
        let _ = writeln!(s, "path:      {}", self.path.describe());
        s
    }
}

/// The maps in memory, for tests.
#[derive(Debug, Clone, Default)]
pub struct MemSim {
    pub services: BTreeMap<RawSvcKey, SvcVal>,
    pub backends: BTreeMap<u32, BackendKey>,
    pub maglev: BTreeMap<u32, Vec<u32>>,
    pub node_addrs: BTreeSet<IpAddr>,
    pub endpoints: BTreeMap<IpAddr, SimEndpoint>,
    pub cfg: SimNodeCfg,
    pub ct: BTreeMap<Tuple, CtFwd>,
    pub affinity: BTreeMap<(u64, u32), SimAffinity>,
    pub affinity_match: BTreeSet<(u32, u32)>,
    pub now_ns: u64,
}

impl MemSim {
    /// The maps of an [`crate::LbDump`] (scopes 0 and 1 only: the dump has no local twins).
    pub fn from_dump(d: &crate::LbDump) -> MemSim {
        let mut m = MemSim::default();
        for (k, v) in &d.services {
            let f = k.frontend;
            m.services.insert(RawSvcKey { addr: f.addr, port: f.port, proto: f.proto, scope: f.scope.number(), slot: k.slot }, *v);
        }
        m.backends = d.backends.clone();
        m.maglev = d.maglev.clone();
        m.affinity_match = d.affinity_match.clone();
        m
    }
}

impl SimSource for MemSim {
    fn service(&self, k: &RawSvcKey) -> Result<Option<SvcVal>, SimError> {
        Ok(self.services.get(k).copied())
    }
    fn backend(&self, id: u32) -> Result<Option<BackendKey>, SimError> {
        Ok(self.backends.get(&id).copied())
    }
    fn maglev_slot(&self, rev_nat_id: u32, hash: u32) -> Result<Option<SimMaglevSlot>, SimError> {
        Ok(self.maglev.get(&rev_nat_id).filter(|t| !t.is_empty()).map(|t| SimMaglevSlot {
            size: t.len() as u32,
            backend_id: t[(hash % t.len() as u32) as usize],
        }))
    }
    fn is_node_addr(&self, a: IpAddr) -> Result<bool, SimError> {
        Ok(self.node_addrs.contains(&a))
    }
    fn endpoint(&self, a: IpAddr) -> Result<Option<SimEndpoint>, SimError> {
        Ok(self.endpoints.get(&a).cloned())
    }
    fn node_cfg(&self) -> Result<SimNodeCfg, SimError> {
        Ok(self.cfg.clone())
    }
    fn ct_fwd(&self, t: &Tuple) -> Result<Option<CtFwd>, SimError> {
        Ok(self.ct.get(t).copied())
    }
    fn affinity(&self, client: u64, rev_nat_id: u32) -> Result<Option<SimAffinity>, SimError> {
        Ok(self.affinity.get(&(client, rev_nat_id)).copied())
    }
    fn affinity_match(&self, backend_id: u32, rev_nat_id: u32) -> Result<bool, SimError> {
        Ok(self.affinity_match.contains(&(backend_id, rev_nat_id)))
    }
    fn now_ns(&self) -> u64 {
        self.now_ns
    }
}

/// Parse `--src`/`--dst` style addresses: `ADDR`, `ADDR:PORT`, `[V6]:PORT`.
pub fn parse_endpoint(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok((sa.ip(), Some(sa.port())));
    }
    if let Ok(ip) = s.strip_prefix('[').and_then(|x| x.strip_suffix(']')).unwrap_or(s).parse::<IpAddr>() {
        return Ok((ip, None));
    }
    Err(format!("{s:?} is not an address: give ADDR, ADDR:PORT or [IPV6]:PORT (10.0.0.5, 10.0.0.5:80, [fd00::5]:53)"))
}

/// The flow to simulate from the command line's words: checks families,
/// ports and the protocol; returns the tuple and whether the source port was picked.
pub fn flow_from_args(src: &str, dst: &str, proto: &str) -> Result<(Tuple, bool), String> {
    let proto = match proto.to_ascii_lowercase().as_str() {
        "tcp" => Protocol::TCP,
        "udp" => Protocol::UDP,
        p => return Err(format!("--proto {p:?}: the per-packet datapath translates tcp and udp")),
    };
    let (sip, sport) = parse_endpoint(src).map_err(|e| format!("--src {e}"))?;
    let (dip, dport) = parse_endpoint(dst).map_err(|e| format!("--dst {e}"))?;
    // ::ffff:a.b.c.d is the IPv4 address, as the datapath stores it.
    let (sip, dip) = (sip.to_canonical(), dip.to_canonical());
    let Some(dport) = dport else {
        return Err(format!("--dst {dst}: a port is needed (ADDR:PORT, [IPV6]:PORT): frontends are matched by port"));
    };
    if dport == 0 {
        return Err(format!("--dst {dst}: port 0 is not a port"));
    }
    if sport == Some(0) {
        return Err(format!("--src {src}: port 0 is not a port (leave it out to have one picked)"));
    }
    if sip.is_ipv6() != dip.is_ipv6() {
        return Err(format!(
            "--src {sip} is {} but --dst {dip} is {}: give both in the same family",
            if sip.is_ipv6() { "IPv6" } else { "IPv4" },
            if dip.is_ipv6() { "IPv6" } else { "IPv4" }
        ));
    }
    Ok((Tuple { src: SocketAddr::new(sip, sport.unwrap_or(DEFAULT_SRC_PORT)), dst: SocketAddr::new(dip, dport), proto }, sport.is_none()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maglev::{compute, flow_hash, TableSize};

    const NODE: &str = "192.0.2.10";
    const LOCAL_POD: &str = "10.244.1.5";
    const REMOTE_POD: &str = "10.244.2.7";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn be(a: &str, port: u16) -> BackendKey {
        BackendKey { addr: ip(a), port, proto: Protocol::TCP }
    }

    /// A frontend with `backends` in slots 1..; `scope` raw.
    fn add(m: &mut MemSim, addr: IpAddr, port: u16, scope: u8, id: u32, flags: u16, backends: &[u32]) {
        let k = RawSvcKey { addr, port, proto: Protocol::TCP, scope, slot: 0 };
        m.services.insert(k, SvcVal { backend_id: 0, count: backends.len() as u32, rev_nat_id: id, affinity_timeout: 60, flags });
        for (i, b) in backends.iter().enumerate() {
            m.services.insert(RawSvcKey { slot: i as u16 + 1, ..k }, SvcVal { backend_id: *b, count: 0, rev_nat_id: id, affinity_timeout: 0, flags: 0 });
        }
    }

    fn any4() -> IpAddr {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }

    fn world() -> MemSim {
        let mut m = MemSim { now_ns: 1_000_000_000_000, ..Default::default() };
        m.node_addrs.insert(ip(NODE));
        m.cfg = SimNodeCfg { masq4: Some(NODE.parse().unwrap()), masq6: None, snat_ports: (61000, 65535) };
        m.endpoints.insert(ip(LOCAL_POD), SimEndpoint { id: 7, host_ifindex: 42, host_ifname: Some("sl0123456789ab".into()) });
        m.backends.insert(11, be(LOCAL_POD, 8080));
        m.backends.insert(12, be(REMOTE_POD, 8080));
        m.backends.insert(13, be("10.244.3.9", 8080));
        m.backends.insert(14, be(NODE, 9000));
        m.backends.insert(15, be("fd00::5", 8080));
        add(&mut m, ip("10.96.0.1"), 80, SIM_SCOPE_VIP, 1, 0, &[11]);
        add(&mut m, any4(), 30080, SIM_SCOPE_NODEPORT, 2, SVC_F_NODEPORT, &[11, 12]);
        add(&mut m, any4(), 30081, SIM_SCOPE_NODEPORT, 3, SVC_F_NODEPORT | SIM_SVC_F_ETP_LOCAL, &[11, 12]);
        add(&mut m, any4(), 30081, SIM_SCOPE_NODEPORT | SIM_SCOPE_LOCAL, 3, SVC_F_NODEPORT, &[11]);
        add(&mut m, any4(), 30082, SIM_SCOPE_NODEPORT, 4, SVC_F_NODEPORT | SIM_SVC_F_ETP_LOCAL, &[12]);
        add(&mut m, any4(), 30082, SIM_SCOPE_NODEPORT | SIM_SCOPE_LOCAL, 4, SVC_F_NODEPORT, &[]);
        add(&mut m, any4(), 30083, SIM_SCOPE_NODEPORT, 5, SVC_F_NODEPORT | SIM_SVC_F_DSR, &[12]);
        add(&mut m, any4(), 30085, SIM_SCOPE_NODEPORT, 7, SVC_F_NODEPORT, &[14]);
        add(&mut m, any4(), 30086, SIM_SCOPE_NODEPORT, 8, SVC_F_NODEPORT, &[15]);
        add(&mut m, any4(), 30087, SIM_SCOPE_NODEPORT, 9, SVC_F_NODEPORT, &[]);
        add(&mut m, any4(), 30088, SIM_SCOPE_NODEPORT, 10, SVC_F_NODEPORT | SVC_F_AFFINITY, &[11, 12]);
        add(&mut m, any4(), 30089, SIM_SCOPE_NODEPORT, 11, SVC_F_NODEPORT, &[12]);
        // An external IP, VIP scope, with the flag.
        add(&mut m, ip("203.0.113.7"), 443, SIM_SCOPE_VIP, 12, SVC_F_EXTERNAL_IP, &[12]);
        m
    }

    fn maglev_world() -> (MemSim, Vec<BackendKey>) {
        let mut m = world();
        let ids = [11u32, 12, 13];
        add(&mut m, any4(), 30084, SIM_SCOPE_NODEPORT, 6, SVC_F_NODEPORT | SVC_F_MAGLEV, &ids);
        let bes: Vec<BackendKey> = ids.iter().map(|i| m.backends[i]).collect();
        let t = compute(&bes, TableSize::new(251).unwrap());
        let table = t.slots.iter().map(|i| {
            let b = t.backends[*i as usize];
            *m.backends.iter().find(|(_, x)| **x == b).unwrap().0
        });
        m.maglev.insert(6, table.collect());
        (m, bes)
    }

    fn run(m: &MemSim, from: Origin, src: &str, dst: &str) -> SimResult {
        let (t, picked) = flow_from_args(src, dst, "tcp").unwrap();
        let r = simulate(m, from, t, picked).unwrap();
        // Every answer prints and serialises.
        assert!(r.to_text().contains("path:"));
        serde_json::to_string(&r).unwrap();
        r
    }

    fn np(port: u16) -> String {
        format!("{NODE}:{port}")
    }

    #[test]
    fn no_frontend_passes() {
        let r = run(&world(), Origin::Outside, "198.51.100.1:5000", &np(9999));
        assert_eq!(r.path, PacketPath::Pass { reason: Reason::NoFrontend });
        assert!(r.frontend.is_none());
        let r = run(&world(), Origin::Pod, "10.244.1.9:5000", "10.96.9.9:80");
        assert_eq!(r.path, PacketPath::Pass { reason: Reason::NoFrontend });
    }

    #[test]
    fn cluster_ip_is_untouched_from_outside_and_translated_from_a_pod() {
        let r = run(&world(), Origin::Outside, "198.51.100.1:5000", "10.96.0.1:80");
        assert_eq!(r.path, PacketPath::Pass { reason: Reason::NotExternal });
        assert_eq!(r.frontend.as_ref().unwrap().scope, MatchScope::Vip);
        let r = run(&world(), Origin::Pod, "10.244.1.9:5000", "10.96.0.1:80");
        assert_eq!(r.backend.as_ref().unwrap().id, 11);
        assert!(matches!(r.path, PacketPath::LocalPod { host_ifindex: 42, endpoint_id: 7, .. }), "{:?}", r.path);
        assert!(r.to_text().contains("sl0123456789ab"));
    }

    #[test]
    fn external_ip_is_reachable_from_outside() {
        let r = run(&world(), Origin::Outside, "198.51.100.1:5000", "203.0.113.7:443");
        assert_eq!(r.frontend.as_ref().unwrap().scope, MatchScope::Vip);
        assert_eq!(r.path, PacketPath::RemoteSnat { snat_addr: ip(NODE), ports: (61000, 65535) });
    }

    #[test]
    fn random_lists_every_candidate_with_its_path() {
        let r = run(&world(), Origin::Outside, "198.51.100.1:5000", &np(30080));
        assert_eq!(r.frontend.as_ref().unwrap().scope, MatchScope::NodePort);
        let Some(Selection::Random { candidates }) = &r.selection else { panic!("{:?}", r.selection) };
        assert_eq!(candidates.len(), 2);
        assert!(matches!(candidates[0].path, PacketPath::LocalPod { .. }));
        assert_eq!(candidates[1].path, PacketPath::RemoteSnat { snat_addr: ip(NODE), ports: (61000, 65535) });
        assert!(r.backend.is_none(), "a random pick of two names no single backend");
        assert!(r.to_text().contains("one of 2"));
    }

    #[test]
    fn remote_backend_is_snated_to_the_node_address() {
        let r = run(&world(), Origin::Outside, "198.51.100.1:5000", &np(30089));
        assert_eq!(r.backend.as_ref().unwrap().id, 12);
        assert_eq!(r.path, PacketPath::RemoteSnat { snat_addr: ip(NODE), ports: (61000, 65535) });
        // From a pod the same frontend goes through the node's stack.
        let r = run(&world(), Origin::Pod, "10.244.1.9:5000", &np(30089));
        assert_eq!(r.path, PacketPath::Stack);
    }

    #[test]
    fn remote_without_a_node_address_of_the_family_drops() {
        let mut m = world();
        m.cfg.masq4 = None;
        let r = run(&m, Origin::Outside, "198.51.100.1:5000", &np(30089));
        assert_eq!(r.path, PacketPath::Drop { reason: Reason::NoSnatAddress });
    }

    #[test]
    fn dsr() {
        let r = run(&world(), Origin::Outside, "198.51.100.1:5000", &np(30083));
        assert_eq!(r.path, PacketPath::RemoteDsr);
        assert!(r.frontend.as_ref().unwrap().flags.contains(&"dsr"));
    }

    #[test]
    fn local_host_backend() {
        let r = run(&world(), Origin::Outside, "198.51.100.1:5000", &np(30085));
        assert_eq!(r.path, PacketPath::LocalHost);
    }

    #[test]
    fn etp_local_uses_the_local_twin_from_outside_only() {
        let r = run(&world(), Origin::Outside, "198.51.100.1:5000", &np(30081));
        assert_eq!(r.frontend.as_ref().unwrap().scope, MatchScope::NodePortLocal);
        assert_eq!(r.etp_local_of.as_ref().unwrap().scope, MatchScope::NodePort);
        assert_eq!(r.backend.as_ref().unwrap().id, 11);
        assert!(matches!(r.path, PacketPath::LocalPod { .. }));
        assert!(r.to_text().contains("local twin"));
        // From a pod: every backend, no twin.
        let r = run(&world(), Origin::Pod, "10.244.1.9:5000", &np(30081));
        assert!(r.etp_local_of.is_none());
        let Some(Selection::Random { candidates }) = &r.selection else { panic!() };
        assert_eq!(candidates.len(), 2);
    }

    #[test]
    fn etp_local_without_local_backend_drops() {
        let r = run(&world(), Origin::Outside, "198.51.100.1:5000", &np(30082));
        assert_eq!(r.path, PacketPath::Drop { reason: Reason::NoLocalBackend });
        // A missing twin is reported the same way, with a note.
        let mut m = world();
        m.services.retain(|k, _| !(k.port == 30082 && k.scope == 3));
        let r = run(&m, Origin::Outside, "198.51.100.1:5000", &np(30082));
        assert_eq!(r.path, PacketPath::Drop { reason: Reason::NoLocalBackend });
        assert!(!r.notes.is_empty());
    }

    #[test]
    fn no_backend_and_missing_backend_drop() {
        let r = run(&world(), Origin::Outside, "198.51.100.1:5000", &np(30087));
        assert_eq!(r.path, PacketPath::Drop { reason: Reason::NoBackend });
        let mut m = world();
        m.backends.remove(&12);
        let r = run(&m, Origin::Outside, "198.51.100.1:5000", &np(30089));
        assert_eq!(r.path, PacketPath::Drop { reason: Reason::BackendMissing });
    }

    #[test]
    fn family_mismatch_drops() {
        let r = run(&world(), Origin::Outside, "198.51.100.1:5000", &np(30086));
        assert_eq!(r.path, PacketPath::Drop { reason: Reason::FamilyMismatch });
    }

    #[test]
    fn maglev_answer_equals_the_rust_maglev_computation() {
        let (m, bes) = maglev_world();
        let table = compute(&bes, TableSize::new(251).unwrap());
        let mut seen = BTreeSet::new();
        for sport in 1000..1300u16 {
            let r = run(&m, Origin::Outside, &format!("198.51.100.1:{sport}"), &np(30084));
            let hash = flow_hash(ip("198.51.100.1"), ip(NODE), sport, 30084, 6);
            let want = table.lookup(hash).unwrap();
            let got = r.backend.as_ref().unwrap();
            assert_eq!(got.addr, SocketAddr::new(want.addr, want.port), "sport {sport}");
            assert_eq!(r.selection, Some(Selection::Maglev { hash, slot: hash % 251, size: 251 }));
            seen.insert(got.id);
        }
        assert_eq!(seen.len(), 3, "300 flows reach every backend");
        let r = run(&m, Origin::Outside, "198.51.100.1:1000", &np(30084));
        assert!(r.to_text().contains("of 251"));
    }

    #[test]
    fn maglev_without_a_table_falls_back_to_random() {
        let (mut m, _) = maglev_world();
        m.maglev.clear();
        let r = run(&m, Origin::Outside, "198.51.100.1:1000", &np(30084));
        assert!(matches!(r.selection, Some(Selection::Random { .. })));
        assert!(r.notes.iter().any(|n| n.contains("no table")));
    }

    #[test]
    fn picked_source_port_is_reported() {
        let (m, _) = maglev_world();
        let r = run(&m, Origin::Outside, "198.51.100.1", &np(30084));
        assert!(r.src_port_picked);
        assert_eq!(r.tuple.src.port(), DEFAULT_SRC_PORT);
        assert!(r.to_text().contains("picked by the simulator"));
    }

    #[test]
    fn conntrack_entry_is_followed_while_alive() {
        let mut m = world();
        let (t, _) = flow_from_args("198.51.100.1:5000", &np(30080), "tcp").unwrap();
        let ct = CtFwd { nat: "10.244.2.7:8080".parse().unwrap(), backend_id: 12, rev_nat_id: 2, flags: 0, lifetime_s: 60, last_seen_ns: m.now_ns - 5_000_000_000 };
        m.ct.insert(t, ct);
        let r = run(&m, Origin::Outside, "198.51.100.1:5000", &np(30080));
        assert_eq!(r.selection, Some(Selection::Conntrack { idle_s: 5, left_s: 55, closing: false }));
        assert_eq!(r.backend.as_ref().unwrap().id, 12);
        assert!(matches!(r.path, PacketPath::RemoteSnat { .. }));
        // Expired: a new pick.
        m.ct.get_mut(&t).unwrap().last_seen_ns = m.now_ns - 61_000_000_000;
        let r = run(&m, Origin::Outside, "198.51.100.1:5000", &np(30080));
        assert!(matches!(r.selection, Some(Selection::Random { .. })));
        assert!(r.notes.iter().any(|n| n.contains("expired")));
        // Backend gone: a new pick.
        m.ct.get_mut(&t).unwrap().last_seen_ns = m.now_ns;
        m.ct.get_mut(&t).unwrap().backend_id = 99;
        let r = run(&m, Origin::Outside, "198.51.100.1:5000", &np(30080));
        assert!(matches!(r.selection, Some(Selection::Random { .. })));
    }

    #[test]
    fn affinity_first_when_fresh_and_active() {
        let mut m = world();
        let client = ct_client(ip("198.51.100.1"));
        m.affinity.insert((client, 10), SimAffinity { backend_id: 12, last_used_ns: m.now_ns - 10_000_000_000 });
        m.affinity_match.insert((12, 10));
        let r = run(&m, Origin::Outside, "198.51.100.1:5000", &np(30088));
        assert_eq!(r.selection, Some(Selection::Affinity { idle_s: 10, timeout_s: 60 }));
        assert_eq!(r.backend.as_ref().unwrap().id, 12);
        // No longer active: a new pick, said so.
        m.affinity_match.clear();
        let r = run(&m, Origin::Outside, "198.51.100.1:5000", &np(30088));
        assert!(matches!(r.selection, Some(Selection::Random { .. })));
        assert!(r.notes.iter().any(|n| n.contains("no longer active")));
        // Another client has none.
        let r = run(&m, Origin::Outside, "198.51.100.2:5000", &np(30088));
        assert!(r.notes.iter().any(|n| n.contains("no affinity entry")));
    }

    #[test]
    fn ct_client_matches_the_c_folding() {
        // 10.0.0.1 as ::ffff:10.0.0.1: w0 = w1 = 0, w2 = 0x0000ffff read natively.
        let c = ct_client(ip("10.0.0.1"));
        let w2 = u32::from_ne_bytes([0, 0, 0xff, 0xff]) as u64;
        let w3 = u32::from_ne_bytes([10, 0, 0, 1]) as u64;
        assert_eq!(c, 1 << 63 | w2 << 32 | w3);
    }

    #[test]
    fn bad_arguments_are_refused_clearly() {
        let e = flow_from_args("10.0.0.1", "10.96.0.1", "tcp").unwrap_err();
        assert!(e.contains("a port is needed"), "{e}");
        let e = flow_from_args("fd00::1", "10.96.0.1:80", "tcp").unwrap_err();
        assert!(e.contains("same family"), "{e}");
        let e = flow_from_args("10.0.0.1", "10.96.0.1:80", "sctp").unwrap_err();
        assert!(e.contains("tcp and udp"), "{e}");
        let e = flow_from_args("10.0.0.300", "10.96.0.1:80", "tcp").unwrap_err();
        assert!(e.contains("--src") && e.contains("not an address"), "{e}");
        let e = flow_from_args("10.0.0.1:0", "10.96.0.1:80", "tcp").unwrap_err();
        assert!(e.contains("port 0"), "{e}");
        let (t, picked) = flow_from_args("[fd00::1]:5000", "[fd00::2]:80", "UDP").unwrap();
        assert!(!picked);
        assert_eq!(t.proto, Protocol::UDP);
        // IPv4-mapped is the IPv4 address.
        let (t, _) = flow_from_args("::ffff:10.0.0.1", "10.96.0.1:80", "tcp").unwrap();
        assert_eq!(t.src.ip(), ip("10.0.0.1"));
    }
}
