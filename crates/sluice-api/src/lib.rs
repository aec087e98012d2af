//! The agent's local API.
//!
//! One request per connection: the client writes a JSON [`Request`], shuts
//! down its write side, and reads one JSON [`Response`]. The socket is
//! created mode 0600, so only root can use it.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_lb::{BackendKey, FrontendKey, LbDump};
use sluice_model::{Kind, ManifestError, Origin};

pub const DEFAULT_SOCKET: &str = "/run/sluice/agent.sock";

/// A document to apply, with where it came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Document {
    pub origin: Origin,
    pub raw: Value,
}

/// An object to delete, with where it was named.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    pub origin: Origin,
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    Apply { documents: Vec<Document>, dry_run: bool },
    Delete { targets: Vec<Target>, ignore_not_found: bool },
    Get { kind: Kind },
    Services,
    LbDump,
    Status,
    SocketEvents,
    /// CNI ADD: allocate addresses, create and configure the pod's device,
    /// attach the pod datapath, register the endpoint. Idempotent for the
    /// same attachment (container id + ifname).
    CniAdd(CniAdd),
    /// CNI DEL: undo ADD. Succeeds for whatever is already gone.
    CniDel(CniDel),
    /// CNI CHECK: is the pod's device, address and routes as ADD left them?
    CniCheck(CniCheck),
    /// CNI GC: release everything of `network` whose attachment is not in `valid`.
    CniGc(CniGc),
    /// CNI STATUS: is the agent ready to ADD (datapath attached, addresses left)?
    CniStatus,
    /// Every endpoint (pod) the agent knows.
    Endpoints,
}

/// A pod's interface as the runtime names it: CNI_CONTAINERID + CNI_IFNAME.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

impl std::fmt::Display for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.container_id, self.ifname)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CniAdd {
    pub attachment: Attachment,
    /// CNI_NETNS: path of the pod's network namespace.
    pub netns: String,
    /// The network configuration's `name`.
    pub network: String,
    /// K8S_POD_NAME / K8S_POD_NAMESPACE from CNI_ARGS, when given.
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    /// MTU of both ends of the veth pair (the configuration's `mtu`).
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CniDel {
    pub attachment: Attachment,
    /// May be empty: the runtime may have removed the namespace already.
    pub netns: String,
    pub network: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CniCheck {
    pub attachment: Attachment,
    pub netns: String,
    pub network: String,
    /// The result ADD returned (the configuration's `prevResult`).
    pub prev_result: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CniGc {
    pub network: String,
    /// `cni.dev/valid-attachments`: everything else is released.
    pub valid: Vec<Attachment>,
}

/// What ADD created, for the plugin to turn into a CNI result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CniAddResult {
    /// Host side of the veth pair (in the agent's namespace).
    pub host_ifname: String,
    pub host_mac: String,
    /// Pod side (CNI_IFNAME) in `sandbox` (CNI_NETNS).
    pub pod_ifname: String,
    pub pod_mac: String,
    pub sandbox: String,
    pub mtu: u32,
    pub ips: Vec<CniIp>,
    pub routes: Vec<CniRoute>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CniIp {
    /// CIDR notation: `10.244.0.5/32`.
    pub address: String,
    pub gateway: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CniRoute {
    /// CIDR notation.
    pub dst: String,
    pub gw: Option<String>,
    /// Route scope (253 = link), as in CNI 1.1's route `scope`.
    pub scope: Option<u8>,
}

/// Error codes of the CNI specification (1.1.0), and Sluice's own (100+).
pub mod cni_code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const CONTAINER_UNKNOWN: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    pub const NOT_AVAILABLE_LIMITED: u32 = 51;
    /// The pod's address pool has no free address.
    pub const POOL_EXHAUSTED: u32 = 100;
    /// CHECK found the pod's device, address or routes changed.
    pub const CHECK_FAILED: u32 = 101;
    /// The agent failed to set the pod up (netlink, datapath).
    pub const SETUP_FAILED: u32 = 102;
}

/// One endpoint (a pod's interface) as the agent knows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EndpointView {
    /// Small number, unique on this node, also in the datapath's endpoint map.
    pub id: u32,
    pub attachment: Attachment,
    pub network: String,
    pub netns: String,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    /// From the applied v1 Pod of the same namespace/name (standalone mode).
    pub labels: std::collections::BTreeMap<String, String>,
    pub ips: Vec<String>,
    pub host_ifname: String,
    pub host_ifindex: u32,
    /// `ready`, or `creating` for an ADD that has not finished.
    pub state: String,
}

/// One socket ended because its backend left a service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SocketEvent {
    /// Seconds since the Unix epoch.
    pub time: u64,
    pub service: String,
    pub frontend_id: u32,
    pub backend: BackendKey,
    pub netns: String,
    pub proto: String,
    pub src: String,
    pub dst: String,
    pub destroyed: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectResult {
    pub object: String,
    /// `created`, `configured`, `unchanged`, `deleted`, `not found`.
    pub action: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangeReport {
    pub results: Vec<ObjectResult>,
    pub dry_run: bool,
    /// Map entries written or deleted.
    pub map_writes: usize,
    /// Time from request parsed to maps written, microseconds.
    pub apply_us: u64,
    /// Of which: computing the diff and writing the maps.
    pub reconcile_us: u64,
}

/// A frontend and its backends as read back from the maps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceView {
    pub service: Option<String>,
    pub port_name: String,
    pub frontend: FrontendKey,
    pub kind: String,
    pub id: u32,
    pub affinity_timeout: Option<u32>,
    pub backends: Vec<BackendKey>,
    /// For each backend, the local pod (`namespace/name`) that has its
    /// address, if any.
    #[serde(default)]
    pub backend_pods: Vec<Option<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkView {
    pub program: String,
    pub state: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pin_dir: String,
    pub cgroup: String,
    pub state_dir: String,
    pub datapath_loaded: bool,
    pub links: Vec<LinkView>,
    pub services: usize,
    pub endpoint_slices: usize,
    pub frontends: usize,
    pub backends: usize,
    pub node_addresses: Vec<String>,
    pub sock_revnat_entries: usize,
    pub counters: Vec<(String, u64)>,
    pub uptime_s: u64,
    /// The last conntrack/NAT garbage collection sweep (None: none yet, or disabled).
    #[serde(default)]
    pub ct_gc: Option<CtGcView>,
    /// Conntrack and NAT table sizes: (configured, pinned).
    #[serde(default)]
    pub table_sizes: Vec<TableSizeView>,
    /// Things the operator should know (a table pinned with another size).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Health check node ports served (LoadBalancer Services with
    /// externalTrafficPolicy: Local).
    #[serde(default)]
    pub health_checks: Vec<HealthCheckView>,
}

/// A health check node port and what it answers (200 with local endpoints).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheckView {
    pub port: u16,
    pub service: String,
    pub local_endpoints: usize,
}

/// What the last conntrack/NAT sweep found and deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtGcView {
    /// Seconds since the sweep ran.
    pub ago_s: u64,
    pub interval_s: u64,
    pub ct_scanned: u64,
    pub ct_expired: u64,
    pub ct_orphans: u64,
    pub nat_scanned: u64,
    pub nat_expired: u64,
    pub nat_orphans: u64,
    pub duration_us: u64,
    /// Set when the sweep failed.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSizeView {
    pub map: String,
    pub configured: u32,
    /// None when not pinned.
    pub pinned: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Response {
    Changed(ChangeReport),
    Objects { items: Vec<Value> },
    Services { items: Vec<ServiceView> },
    LbDump { dump: LbDump, text: String },
    Status(Box<Status>),
    SocketEvents { destroyed_total: u64, failed_total: u64, events: Vec<SocketEvent> },
    CniAdded(CniAddResult),
    /// DEL, CHECK, GC or STATUS succeeded; `message` says what was done.
    CniDone { message: String },
    /// A CNI operation failed: `code` is the CNI error code ([`cni_code`]).
    CniError { code: u32, msg: String, details: String },
    Endpoints { items: Vec<EndpointView> },
    /// Nothing was changed. `invalid` lists manifest errors (file, object,
    /// field); `message` is for anything else.
    Error { message: String, invalid: Vec<ManifestError> },
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the agent at {path} (is `sluice agent` running? see --api-socket)")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the agent")]
    Io(#[from] std::io::Error),
    #[error("the agent sent a reply this CLI does not understand: {0}")]
    Decode(#[from] serde_json::Error),
}

/// Send one request and wait for the reply.
pub fn call(socket: &Path, req: &Request) -> Result<Response, ClientError> {
    let mut s = UnixStream::connect(socket)
        .map_err(|source| ClientError::Connect { path: socket.display().to_string(), source })?;
    // One buffered write: serde_json writes in small pieces.
    let body = serde_json::to_vec(req)?;
    s.write_all(&body)?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    Ok(serde_json::from_slice(&buf)?)
}
