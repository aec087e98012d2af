//! The logical form of the datapath's load-balancing map entries. The
//! datapath crate encodes these into the C structs of `bpf/include/lb.h`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};
pub use sluice_model::Protocol;

/// Master entry flags (`SL_SVC_F_*` in `bpf/include/lb.h`).
pub const SVC_F_AFFINITY: u16 = 1 << 0;
pub const SVC_F_NODEPORT: u16 = 1 << 1;
pub const SVC_F_EXTERNAL_IP: u16 = 1 << 2;
pub const SVC_F_LOADBALANCER: u16 = 1 << 3;
/// The per-packet paths pick backends with the frontend's Maglev table.
pub const SVC_F_MAGLEV: u16 = 1 << 4;

/// `externalTrafficPolicy: Local`: set on the ordinary master entry of
/// each external frontend, whose "local" twin ([`Scope::VipLocal`],
/// [`Scope::NodePortLocal`]) holds only this node's backends. The twin
/// carries the same flags.
pub const SVC_F_ETP_LOCAL: u16 = 1 << 5;
/// Direct server return (`sluice.io/lb-mode: dsr` or `--lb-mode dsr`): set
/// on the master entries of external frontends (ordinary and twin).
pub const SVC_F_DSR: u16 = 1 << 6;

/// How a frontend is matched (`SL_SCOPE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// ClusterIP, ExternalIP, LoadBalancer IP: the address itself.
    Vip,
    /// Any address of the node; the key's address is the family's unspecified address.
    NodePort,
    /// The local twin of an ExternalIP or LoadBalancer-IP frontend
    /// (`SL_SCOPE_VIP_LOCAL`): only this node's backends.
    VipLocal,
    /// The local twin of a node-port frontend (`SL_SCOPE_NODEPORT_LOCAL`).
    NodePortLocal,
}

impl Scope {
    /// `SL_SCOPE_LOCAL`: the bit that makes a scope a local twin.
    pub const LOCAL_BIT: u8 = 2;

    pub fn number(self) -> u8 {
        match self {
            Scope::Vip => 0,
            Scope::NodePort => 1,
            Scope::VipLocal => 2,
            Scope::NodePortLocal => 3,
        }
    }
    pub fn from_number(n: u8) -> Option<Scope> {
        match n {
            0 => Some(Scope::Vip),
            1 => Some(Scope::NodePort),
            2 => Some(Scope::VipLocal),
            3 => Some(Scope::NodePortLocal),
            _ => None,
        }
    }
    /// A local twin (only this node's backends)?
    pub fn is_local(self) -> bool {
        self.number() & Self::LOCAL_BIT != 0
    }
    /// Matched at any address of the node (the key's address is unspecified)?
    pub fn is_node_port(self) -> bool {
        matches!(self, Scope::NodePort | Scope::NodePortLocal)
    }
    /// The local twin of this scope (itself if it is one).
    pub fn local(self) -> Scope {
        if self.is_node_port() {
            Scope::NodePortLocal
        } else {
            Scope::VipLocal
        }
    }
    /// For dumps: `vip`, `nodeport`, `vip-local`, `nodeport-local`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Vip => "vip",
            Scope::NodePort => "nodeport",
            Scope::VipLocal => "vip-local",
            Scope::NodePortLocal => "nodeport-local",
        }
    }
}

/// A frontend: what a client addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FrontendKey {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Protocol,
    pub scope: Scope,
}

impl FrontendKey {
    pub fn node_port(v6: bool, port: u16, proto: Protocol) -> Self {
        let addr = if v6 { IpAddr::V6(Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) };
        FrontendKey { addr, port, proto, scope: Scope::NodePort }
    }

    /// The local twin of this frontend: same address, port and protocol.
    pub fn local_twin(self) -> Self {
        FrontendKey { scope: self.scope.local(), ..self }
    }

    /// `addr:port/proto` (`*` for node ports) without the `[local]` mark.
    pub fn address(&self) -> String {
        match (self.scope.is_node_port(), self.addr) {
            (true, IpAddr::V4(_)) => format!("*:{}/{}", self.port, self.proto.as_str()),
            (true, IpAddr::V6(_)) => format!("[*]:{}/{}", self.port, self.proto.as_str()),
            (false, IpAddr::V4(a)) => format!("{a}:{}/{}", self.port, self.proto.as_str()),
            (false, IpAddr::V6(a)) => format!("[{a}]:{}/{}", self.port, self.proto.as_str()),
        }
    }
}

/// `198.19.0.1:80/TCP`, `*:30080/TCP`; a local twin ends in `[local]`.
impl fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.address())?;
        if self.scope.is_local() {
            f.write_str("[local]")?;
        }
        Ok(())
    }
}

/// A backend: where a connection is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BackendKey {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Protocol,
}

impl fmt::Display for BackendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{}/{}", self.port, self.proto.as_str()),
            IpAddr::V6(a) => write!(f, "[{a}]:{}/{}", self.port, self.proto.as_str()),
        }
    }
}

/// A service-map key: the frontend and a slot (0 is the master entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SvcKey {
    pub frontend: FrontendKey,
    pub slot: u16,
}

/// A service-map value. In the master entry `backend_id` is 0; in a slot
/// entry only `backend_id` and `rev_nat_id` are meaningful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SvcVal {
    pub backend_id: u32,
    pub count: u32,
    pub rev_nat_id: u32,
    pub affinity_timeout: u32,
    pub flags: u16,
}

/// One write to the maps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MapOp {
    UpsertService(SvcKey, SvcVal),
    DeleteService(SvcKey),
    UpsertBackend(u32, BackendKey),
    DeleteBackend(u32),
    UpsertRevNat(u32, FrontendKey),
    DeleteRevNat(u32),
    UpsertAffinityMatch { backend_id: u32, rev_nat_id: u32 },
    DeleteAffinityMatch { backend_id: u32, rev_nat_id: u32 },
    /// A frontend's whole Maglev table (backend id per slot): built off to
    /// the side and published with one write, replacing any table it had.
    SetMaglev { rev_nat_id: u32, table: Vec<u32> },
    /// Some slots of a frontend's existing table: (slot, backend id).
    UpdateMaglevSlots { rev_nat_id: u32, slots: Vec<(u32, u32)> },
    DeleteMaglev(u32),
}

impl MapOp {
    /// A short description for error messages (a table is not printed).
    pub fn describe(&self) -> String {
        match self {
            MapOp::SetMaglev { rev_nat_id, table } => format!("SetMaglev {{ rev_nat_id: {rev_nat_id}, {} slots }}", table.len()),
            MapOp::UpdateMaglevSlots { rev_nat_id, slots } => {
                format!("UpdateMaglevSlots {{ rev_nat_id: {rev_nat_id}, {} slots }}", slots.len())
            }
            op => format!("{op:?}"),
        }
    }
}

/// Load-balancing settings of the agent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LbOptions {
    /// For services without a `sluice.io/lb-algorithm` annotation.
    pub default_algorithm: sluice_model::LbAlgorithm,
    /// Slots of every Maglev table.
    pub maglev_size: crate::maglev::TableSize,
    /// For services without a `sluice.io/lb-mode` annotation (`--lb-mode`).
    pub default_mode: sluice_model::LbMode,
    /// This node's name (`--node-name`): endpoints whose `nodeName` equals
    /// it are local (`externalTrafficPolicy: Local`).
    pub node_name: String,
}

impl LbOptions {
    /// What resolving a service needs of these settings.
    pub fn resolve_context(&self) -> crate::resolve::ResolveContext {
        crate::resolve::ResolveContext {
            default_algorithm: self.default_algorithm,
            default_mode: self.default_mode,
            node_name: self.node_name.clone(),
        }
    }
}

/// The service a frontend belongs to, `namespace/name`.
pub type ServiceName = String;

/// A frontend as the model asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredFrontend {
    pub key: FrontendKey,
    pub flags: u16,
    pub affinity_timeout: u32,
    /// The service port's name, for display.
    pub port_name: String,
    /// Active backends in a stable order.
    pub backends: Vec<BackendKey>,
    /// Backends whose established sockets may stay: every serving
    /// endpoint, active or not (a terminating endpoint still drains). A
    /// backend that leaves this set has its sockets ended.
    pub serving: Vec<BackendKey>,
}
