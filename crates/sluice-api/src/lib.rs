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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Response {
    Changed(ChangeReport),
    Objects { items: Vec<Value> },
    Services { items: Vec<ServiceView> },
    LbDump { dump: LbDump, text: String },
    Status(Status),
    SocketEvents { destroyed_total: u64, failed_total: u64, events: Vec<SocketEvent> },
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
