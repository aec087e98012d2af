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
use crate::podnet::KernelPodNet;
use crate::pods::{CniErr, Pods};

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub state_dir: PathBuf,
    pub cgroup: Option<PathBuf>,
    pub pin_dir: PathBuf,
    pub api_socket: PathBuf,
    pub node_addr_refresh: Duration,
    /// Where cluster IPs are allocated from for Services that give none.
    pub service_cidr: Option<crate::core::ServiceCidr>,
    /// This node's pod address ranges (one per family), for CNI ADD.
    pub pod_cidrs: Vec<crate::ipam::Cidr>,
    /// Masquerade pod traffic leaving through `external_devs`.
    pub masquerade: bool,
    /// The node's external devices: the NodePort and masquerade programs
    /// (tcx) go here, and the XDP program with `xdp`.
    pub external_devs: Vec<String>,
    /// Attach the XDP fast path to the external devices, in this mode.
    pub xdp: Option<sluice_datapath::pod::XdpMode>,
    /// Source ports for masquerading (inclusive).
    pub snat_ports: (u16, u16),
    /// Destinations pod traffic is not masqueraded to, besides the pod
    /// CIDRs (other nodes' pod CIDRs, the node network).
    pub no_masquerade: Vec<(std::net::IpAddr, u8)>,
    /// Tests only: abort at this point of a CNI ADD (simulates a crash).
    pub fail_point: Option<String>,
    /// Default backend selection (`--lb-algorithm`), Maglev table size,
    /// default forwarding mode (`--lb-mode`) and this node's name
    /// (`--node-name`).
    pub lb: sluice_lb::LbOptions,
    /// Conntrack/NAT garbage collection period (`--ct-gc-interval`); zero disables it.
    pub ct_gc_interval: Duration,
    /// Sizes of the conntrack and NAT tables (`--ct-max`, `--nat-max`).
    pub tables: sluice_datapath::TableSizes,
}

struct Shared {
    core: Mutex<Core<KernelMaps>>,
    /// Lock order: never held together with `core` (see `handle`).
    pods: Mutex<Pods<KernelPodNet>>,
    cfg: AgentConfig,
    cgroup: PathBuf,
    started: Instant,
    sockets: Mutex<SocketLog>,
    /// The last conntrack/NAT sweep and when it ran.
    ct_gc: Mutex<Option<(Instant, sluice_api::CtGcView)>>,
    /// From the install (a table pinned with another size).
    warnings: Vec<String>,
    /// Health check node ports (LoadBalancer, externalTrafficPolicy: Local).
    health: Mutex<crate::health::HealthServer>,
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

    let report = loader::install(&DatapathConfig {
        pin_dir: cfg.pin_dir.clone(),
        cgroup: cgroup.clone(),
        maglev_size: cfg.lb.maglev_size.get(),
        tables: cfg.tables,
    })
        .context("installing the datapath")?;
    for l in &report.links {
        info!(program = %l.program, state = %l.state, "link");
    }
    for w in &report.warnings {
        warn!("{w}");
    }
    let maps = KernelMaps::open(&cfg.pin_dir)?;
    let podnet = KernelPodNet::new(&cfg.pin_dir).map_err(|e| anyhow::anyhow!("opening the pod datapath: {e}"))?;
    let node_warnings = configure_node(&cfg, podnet.datapath())?;
    let (mut pods, pod_warnings) =
        Pods::new(store.clone(), &cfg.pod_cidrs, podnet).map_err(|e| anyhow::anyhow!("loading pod endpoints: {e}"))?;
    pods.set_fail_point(cfg.fail_point.clone());
    for w in pod_warnings {
        warn!("{w}");
    }
    let (mut core, writes, warnings) = Core::with_options(store, maps, cfg.lb.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
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
        endpoints = pods.len(),
        pod_cidrs = ?cfg.pod_cidrs.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        node_name = %cfg.lb.node_name,
        lb_mode = %cfg.lb.default_mode,
        ms = t0.elapsed().as_millis() as u64,
        "agent ready on {}",
        cfg.api_socket.display()
    );
    let shared = Arc::new(Shared {
        core: Mutex::new(core),
        pods: Mutex::new(pods),
        cfg: cfg.clone(),
        cgroup,
        started: Instant::now(),
        sockets: Mutex::new(SocketLog::default()),
        ct_gc: Mutex::new(None),
        warnings: report.warnings.iter().chain(&node_warnings).cloned().collect(),
        health: Mutex::new(crate::health::HealthServer::default()),
    });
    reconcile_health(&shared);
    if !cfg.ct_gc_interval.is_zero() {
        spawn_ct_gc(shared.clone())?;
    }
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

/// The pod datapath's node settings, and its programs on the external
/// devices. Returns warnings for `sluice status` (an XDP fallback).
fn configure_node(cfg: &AgentConfig, dp: &sluice_datapath::pod::PodDatapath) -> anyhow::Result<Vec<String>> {
    let mut warnings = Vec::new();
    let mut masq_ip4 = None;
    let mut masq_ip6 = None;
    for dev in &cfg.external_devs {
        let ifindex = nix::net::if_::if_nametoindex(dev.as_str()).with_context(|| format!("external device {dev} (--external-dev)"))?;
        for ifa in nix::ifaddrs::getifaddrs()? {
            if ifa.interface_name != *dev {
                continue;
            }
            let Some(a) = ifa.address else { continue };
            if let Some(v4) = a.as_sockaddr_in() {
                masq_ip4.get_or_insert(v4.ip());
            } else if let Some(v6) = a.as_sockaddr_in6() {
                let ip = v6.ip();
                if (ip.segments()[0] & 0xffc0) != 0xfe80 {
                    masq_ip6.get_or_insert(ip);
                }
            }
        }
        dp.attach_host(dev, ifindex).with_context(|| format!("attaching to external device {dev}"))?;
        match cfg.xdp {
            Some(mode) => match dp.attach_xdp(dev, ifindex, mode) {
                Ok(state) => info!(device = %dev, ifindex, xdp = ?mode, state, "external device attached (tcx and XDP)"),
                // A device without native XDP: the tcx programs do the
                // same translation, only later (after the skb exists).
                Err(e) if mode == sluice_datapath::pod::XdpMode::Native && e.to_string().contains("no native XDP") => {
                    let w = format!(
                        "{dev}: no native XDP in its driver, so NodePort traffic is translated at tc only \
                         (same result, later in the stack); --xdp generic would attach XDP in generic mode, which is no faster than tc"
                    );
                    warn!("{w}");
                    warnings.push(w);
                }
                Err(e) => return Err(anyhow::Error::new(e).context(format!("--xdp {mode:?} on {dev}"))),
            },
            None => {
                if dp.detach_xdp(dev)? {
                    info!(device = %dev, "XDP detached (--xdp off)");
                }
                info!(device = %dev, ifindex, "external device attached (tcx)");
            }
        }
    }
    // XDP links of devices no longer named by --external-dev.
    for dev in dp.attached_xdp() {
        if !cfg.external_devs.contains(&dev) {
            dp.detach_xdp(&dev)?;
            info!(device = %dev, "XDP detached: not an --external-dev any more");
        }
    }
    if cfg.xdp.is_some() && cfg.external_devs.is_empty() {
        bail!("--xdp needs --external-dev: the devices to attach it to");
    }
    if cfg.masquerade && cfg.external_devs.is_empty() {
        bail!("--masquerade needs --external-dev: the device pod traffic leaves the node through");
    }
    if cfg.masquerade && masq_ip4.is_none() && masq_ip6.is_none() {
        bail!("--masquerade: the external device(s) {} have no address to masquerade to", cfg.external_devs.join(", "));
    }
    let cidrs: Vec<(std::net::IpAddr, u8)> = cfg.pod_cidrs.iter().map(|c| (c.network, c.prefix)).collect();
    dp.set_node_config(&sluice_datapath::pod::NodeConfig {
        masquerade: cfg.masquerade,
        masq_ip4,
        masq_ip6,
        pod_cidrs: cidrs.clone(),
        no_masq_cidrs: cidrs.iter().copied().chain(cfg.no_masquerade.iter().copied()).collect(),
        snat_ports: cfg.snat_ports,
    })
    .context("writing the pod datapath's node settings")?;
    if cfg.masquerade {
        info!(ipv4 = ?masq_ip4, ipv6 = ?masq_ip6, ports = ?cfg.snat_ports, "masquerading pod traffic");
    }
    Ok(warnings)
}

fn cni_error(e: CniErr) -> Response {
    Response::CniError { code: e.code, msg: e.msg, details: e.details }
}

/// CNI requests and endpoint listings: they take the pods lock, and the
/// core lock only after releasing it. Any other request is handed back
/// (`Err`) for the core's handler: moved, not copied, once per request.
#[allow(clippy::result_large_err)]
fn handle_pods(shared: &Shared, req: Request) -> Result<Response, Request> {
    let t0 = Instant::now();
    let resp = match req {
        Request::CniAdd(a) => {
            let r = shared.pods.lock().unwrap().add(&a);
            match r {
                Ok(res) => {
                    info!(attachment = %a.attachment, device = %res.host_ifname, ips = ?res.ips.iter().map(|i| i.address.clone()).collect::<Vec<_>>(), us = t0.elapsed().as_micros() as u64, "CNI ADD");
                    Response::CniAdded(res)
                }
                Err(e) => {
                    warn!(attachment = %a.attachment, code = e.code, "CNI ADD failed: {}: {}", e.msg, e.details);
                    cni_error(e)
                }
            }
        }
        Request::CniDel(d) => match shared.pods.lock().unwrap().del(&d) {
            Ok(message) => {
                info!(us = t0.elapsed().as_micros() as u64, "CNI DEL: {message}");
                Response::CniDone { message }
            }
            Err(e) => cni_error(e),
        },
        Request::CniCheck(c) => match shared.pods.lock().unwrap().check(&c) {
            Ok(message) => Response::CniDone { message },
            Err(e) => cni_error(e),
        },
        Request::CniGc(g) => match shared.pods.lock().unwrap().gc(&g.network, &g.valid) {
            Ok(message) => {
                info!("CNI GC: {message}");
                Response::CniDone { message }
            }
            Err(e) => cni_error(e),
        },
        Request::CniStatus => {
            let links = loader::link_status(&shared.cfg.pin_dir);
            if let Some(l) = links.iter().find(|l| l.state != "attached") {
                cni_error(CniErr { code: sluice_api::cni_code::PLUGIN_NOT_AVAILABLE, msg: format!("the datapath is not attached: {} is {}", l.program, l.state), details: String::new() })
            } else {
                match shared.pods.lock().unwrap().status() {
                    Ok(message) => Response::CniDone { message },
                    Err(e) => cni_error(e),
                }
            }
        }
        Request::Endpoints => {
            let mut items = shared.pods.lock().unwrap().list(|_, _| Default::default());
            let core = shared.core.lock().unwrap();
            for e in &mut items {
                if let Some(n) = &e.pod_name {
                    e.labels = core.pod_labels(e.pod_namespace.as_deref().unwrap_or("default"), n);
                }
            }
            Response::Endpoints { items }
        }
        other => return Err(other),
    };
    Ok(resp)
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

/// Sweep the conntrack and NAT tables every `ct_gc_interval`, on a thread
/// of its own (it holds no lock of the agent's while it works).
fn spawn_ct_gc(shared: Arc<Shared>) -> anyhow::Result<()> {
    let dp = sluice_datapath::pod::PodDatapath::open(&shared.cfg.pin_dir).map_err(|e| anyhow::anyhow!("opening the conntrack tables: {e}"))?;
    let interval = shared.cfg.ct_gc_interval;
    std::thread::Builder::new().name("ct-gc".into()).spawn(move || loop {
        std::thread::sleep(interval);
        let view = match sluice_datapath::ctgc::sweep_now(&dp, sluice_datapath::ctgc::DEFAULT_ORPHAN_GRACE) {
            Ok(c) => {
                tracing::debug!(
                    ct_scanned = c.ct_scanned,
                    ct_expired = c.ct_expired,
                    ct_orphans = c.ct_orphans,
                    nat_scanned = c.nat_scanned,
                    nat_expired = c.nat_expired,
                    nat_orphans = c.nat_orphans,
                    raced = c.raced,
                    us = c.duration_us,
                    "conntrack/NAT sweep"
                );
                sluice_api::CtGcView {
                    ago_s: 0,
                    interval_s: interval.as_secs(),
                    ct_scanned: c.ct_scanned,
                    ct_expired: c.ct_expired,
                    ct_orphans: c.ct_orphans,
                    nat_scanned: c.nat_scanned,
                    nat_expired: c.nat_expired,
                    nat_orphans: c.nat_orphans,
                    duration_us: c.duration_us,
                    error: None,
                }
            }
            Err(e) => {
                warn!("conntrack/NAT sweep: {e}");
                sluice_api::CtGcView { interval_s: interval.as_secs(), error: Some(e.to_string()), ..Default::default() }
            }
        };
        *shared.ct_gc.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), view));
    })?;
    Ok(())
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

/// Serve the health check node ports the services now ask for.
fn reconcile_health(shared: &Shared) {
    let checks = shared.core.lock().unwrap().health_checks();
    for p in shared.health.lock().unwrap().reconcile(checks) {
        warn!("{p}");
    }
}

fn handle(shared: Arc<Shared>, req: Request) -> Response {
    let req = match handle_pods(&shared, req) {
        Ok(resp) => return resp,
        Err(req) => req,
    };
    let changes = matches!(req, Request::Apply { dry_run: false, .. } | Request::Delete { .. });
    let mut resp = handle_locked(&shared, req);
    if changes {
        reconcile_health(&shared);
    }
    // Service backends that are local pods, by name.
    if let Response::Services { items } = &mut resp {
        let pods = shared.pods.lock().unwrap();
        for s in items.iter_mut() {
            s.backend_pods = s.backends.iter().map(|b| pods.pod_of(b.addr)).collect();
        }
    }
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
        Request::CniAdd(_) | Request::CniDel(_) | Request::CniCheck(_) | Request::CniGc(_) | Request::CniStatus | Request::Endpoints => {
            unreachable!("handled by handle_pods")
        }
        Request::Status => {
            let (services, endpoint_slices, frontends, backends) = core.counts();
            let links: Vec<LinkView> = loader::link_status(&shared.cfg.pin_dir)
                .into_iter()
                .map(|l| LinkView { program: l.program, state: l.state })
                .collect();
            let maps = core.maps();
            Response::Status(Box::new(Status {
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
                ct_gc: shared
                    .ct_gc
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .map(|(at, v)| sluice_api::CtGcView { ago_s: at.elapsed().as_secs(), ..v.clone() }),
                table_sizes: {
                    let (ct, nat) = loader::pinned_table_sizes(&shared.cfg.pin_dir);
                    vec![
                        sluice_api::TableSizeView { map: "sl_ct_v1".into(), configured: shared.cfg.tables.ct_max, pinned: ct },
                        sluice_api::TableSizeView { map: "sl_snat_v1".into(), configured: shared.cfg.tables.nat_max, pinned: nat },
                    ]
                },
                warnings: shared.warnings.clone(),
                health_checks: core
                    .health_checks()
                    .into_iter()
                    .map(|h| sluice_api::HealthCheckView { port: h.port, service: format!("{}/{}", h.namespace, h.name), local_endpoints: h.local_endpoints })
                    .collect(),
            }))
        }
    }
}

