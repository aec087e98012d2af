//! Wiring: the datapath, the core, the API socket and the node-address
//! refresher, run until SIGINT or SIGTERM. Stopping the agent leaves the
//! datapath in place: pinned programs keep translating with the maps as
//! they are, and the next agent adopts them.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sluice_api::{LinkView, Request, Response, SocketEvent, Status};
use sluice_datapath::sockterm::{all_namespaces, terminate, TermFilter, TermTarget};
use sluice_datapath::{loader, DatapathConfig, KernelMaps};
use sluice_store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

use crate::core::{Core, CoreError};
use crate::nodeaddr::node_addresses;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub state_dir: PathBuf,
    pub cgroup: Option<PathBuf>,
    pub pin_dir: PathBuf,
    pub api_socket: PathBuf,
    pub node_addr_refresh: Duration,
    /// Where cluster IPs are allocated from for Services that give none.
    pub service_cidr: Option<crate::core::ServiceCidr>,
}

struct Shared {
    core: Mutex<Core<KernelMaps>>,
    cfg: AgentConfig,
    cgroup: PathBuf,
    started: Instant,
    sockets: Mutex<SocketLog>,
}

/// Sockets ended because their backend left a service: counters and the
/// most recent events.
#[derive(Default)]
struct SocketLog {
    destroyed: u64,
    failed: u64,
    events: std::collections::VecDeque<SocketEvent>,
}

const SOCKET_EVENTS_KEPT: usize = 1000;

/// Run the agent until a signal arrives.
pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let cgroup = match &cfg.cgroup {
        Some(c) => c.clone(),
        None => sluice_datapath::fsutil::cgroup2_root()?,
    };
    let t0 = Instant::now();
    let store = Store::open(&cfg.state_dir)
        .with_context(|| format!("opening the store in {} (is another agent using it?)", cfg.state_dir.display()))?;
    let listener = bind_socket(&cfg.api_socket)?;

    let report = loader::install(&DatapathConfig { pin_dir: cfg.pin_dir.clone(), cgroup: cgroup.clone() })
        .context("installing the datapath")?;
    for l in &report.links {
        info!(program = %l.program, state = %l.state, "link");
    }
    let maps = KernelMaps::open(&cfg.pin_dir)?;
    let (mut core, writes, warnings) = Core::new(store, maps).map_err(|e| anyhow::anyhow!("{e}"))?;
    core.set_service_cidr(cfg.service_cidr);
    for w in warnings {
        warn!("{w}");
    }
    let (svcs, slices, fes, bes) = core.counts();
    info!(
        adopted_maps = report.adopted_maps.len(),
        services = svcs,
        endpoint_slices = slices,
        frontends = fes,
        backends = bes,
        map_writes = writes,
        ms = t0.elapsed().as_millis() as u64,
        "agent ready on {}",
        cfg.api_socket.display()
    );
    let shared = Arc::new(Shared {
        core: Mutex::new(core),
        cfg: cfg.clone(),
        cgroup,
        started: Instant::now(),
        sockets: Mutex::new(SocketLog::default()),
    });
    refresh_node_addrs(&shared);

    let refresher = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(shared.cfg.node_addr_refresh);
            loop {
                tick.tick().await;
                refresh_node_addrs(&shared);
            }
        })
    };

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted?;
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(stream, shared).await {
                        warn!("api connection: {e:#}");
                    }
                });
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    refresher.abort();
    let _ = std::fs::remove_file(&cfg.api_socket);
    info!("agent stopped; the datapath stays loaded and keeps translating");
    Ok(())
}

fn refresh_node_addrs(shared: &Shared) {
    match node_addresses() {
        Ok(addrs) => {
            let core = shared.core.lock().unwrap();
            match core.maps().set_node_addrs(&addrs) {
                Ok(true) => info!(addresses = ?addrs, "node addresses updated"),
                Ok(false) => {}
                Err(e) => warn!("updating node addresses: {e}"),
            }
        }
        Err(e) => warn!("listing node addresses: {e}"),
    }
}

/// Bind the API socket: root only, and refuse to steal a live agent's socket.
fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another agent is listening on {}", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let l = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

async fn serve(mut stream: UnixStream, shared: Arc<Shared>) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await?;
    let resp = match serde_json::from_slice::<Request>(&buf) {
        Ok(req) => {
            let shared = shared.clone();
            tokio::task::spawn_blocking(move || handle(shared, req)).await?
        }
        Err(e) => Response::Error { message: format!("malformed request: {e}"), invalid: vec![] },
    };
    let bytes = serde_json::to_vec(&resp)?;
    stream.write_all(&bytes).await?;
    stream.shutdown().await?;
    Ok(())
}

fn error(e: CoreError) -> Response {
    match e {
        CoreError::Invalid(invalid) => Response::Error {
            message: format!("{} error(s); nothing was changed", invalid.len()),
            invalid,
        },
        other => Response::Error { message: other.to_string(), invalid: vec![] },
    }
}

/// End, in a thread of their own, the sockets of backends that left.
fn terminate_doomed(shared: Arc<Shared>, doomed: Vec<(String, u32, sluice_lb::BackendKey)>) {
    std::thread::spawn(move || {
        let t0 = Instant::now();
        let filter = TermFilter {
            target: TermTarget::Backends(doomed.iter().map(|(_, id, b)| (*id, *b)).collect()),
            dry_run: false,
            pin_dir: Some(shared.cfg.pin_dir.clone()),
        };
        let namespaces = all_namespaces();
        match terminate(&filter, &namespaces) {
            Ok(records) => {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                let mut log = shared.sockets.lock().unwrap();
                for r in &records {
                    let (service, backend) = doomed
                        .iter()
                        .find(|(_, id, b)| *id == r.frontend_id && b.addr == r.dst.ip() && b.port == r.dst.port())
                        .map(|(s, _, b)| (s.clone(), *b))
                        .unwrap_or_else(|| {
                            let b = sluice_lb::BackendKey { addr: r.dst.ip(), port: r.dst.port(), proto: r.proto };
                            (String::new(), b)
                        });
                    if r.destroyed {
                        log.destroyed += 1;
                    } else {
                        log.failed += 1;
                    }
                    log.events.push_back(SocketEvent {
                        time: now,
                        service,
                        frontend_id: r.frontend_id,
                        backend,
                        netns: r.netns.clone(),
                        proto: r.proto.as_str().to_string(),
                        src: r.src.to_string(),
                        dst: r.dst.to_string(),
                        destroyed: r.destroyed,
                        error: (!r.destroyed).then(|| std::io::Error::from_raw_os_error(-r.err).to_string()),
                    });
                    if log.events.len() > SOCKET_EVENTS_KEPT {
                        log.events.pop_front();
                    }
                }
                info!(
                    backends = doomed.len(),
                    sockets = records.len(),
                    namespaces = namespaces.len(),
                    ms = t0.elapsed().as_millis() as u64,
                    "ended the sockets of backends that left their services"
                );
            }
            Err(e) => warn!("ending sockets of removed backends: {e}"),
        }
    });
}

fn handle(shared: Arc<Shared>, req: Request) -> Response {
    let resp = handle_locked(&shared, req);
    let doomed = shared.core.lock().unwrap().take_doomed();
    if !doomed.is_empty() {
        terminate_doomed(shared, doomed);
    }
    resp
}

fn handle_locked(shared: &Shared, req: Request) -> Response {
    let mut core = shared.core.lock().unwrap();
    match req {
        Request::SocketEvents => {
            let log = shared.sockets.lock().unwrap();
            Response::SocketEvents {
                destroyed_total: log.destroyed,
                failed_total: log.failed,
                events: log.events.iter().cloned().collect(),
            }
        }
        Request::Apply { documents, dry_run } => match core.apply(documents, dry_run) {
            Ok(r) => {
                info!(objects = r.results.len(), map_writes = r.map_writes, us = r.apply_us, dry_run, "applied");
                Response::Changed(r)
            }
            Err(e) => error(e),
        },
        Request::Delete { targets, ignore_not_found } => match core.delete(targets, ignore_not_found) {
            Ok(r) => {
                info!(objects = r.results.len(), map_writes = r.map_writes, us = r.apply_us, "deleted");
                Response::Changed(r)
            }
            Err(e) => error(e),
        },
        Request::Get { kind } => Response::Objects { items: core.get(kind) },
        Request::Services => match core.services() {
            Ok(items) => Response::Services { items },
            Err(e) => error(e),
        },
        Request::LbDump => match core.lb_dump() {
            Ok(dump) => Response::LbDump { text: dump.to_text(), dump },
            Err(e) => error(e),
        },
        Request::Status => {
            let (services, endpoint_slices, frontends, backends) = core.counts();
            let links: Vec<LinkView> = loader::link_status(&shared.cfg.pin_dir)
                .into_iter()
                .map(|l| LinkView { program: l.program, state: l.state })
                .collect();
            let maps = core.maps();
            Response::Status(Status {
                version: env!("CARGO_PKG_VERSION").into(),
                pin_dir: shared.cfg.pin_dir.display().to_string(),
                cgroup: shared.cgroup.display().to_string(),
                state_dir: shared.cfg.state_dir.display().to_string(),
                datapath_loaded: links.iter().all(|l| l.state == "attached"),
                links,
                services,
                endpoint_slices,
                frontends,
                backends,
                node_addresses: maps.node_addrs().iter().map(|a| a.to_string()).collect(),
                sock_revnat_entries: maps.sock_revnat_entries(),
                counters: maps.metrics().map(|m| m.into_iter().map(|m| (m.name, m.value)).collect()).unwrap_or_default(),
                uptime_s: shared.started.elapsed().as_secs(),
            })
        }
    }
}

