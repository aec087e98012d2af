//! Pods: what CNI ADD, DEL, CHECK, GC and STATUS do on the agent's side.
//!
//! Each pod interface (an [`Attachment`]: container id + ifname) becomes an
//! endpoint: addresses from [`Ipam`], a veth pair (the host end named after
//! the attachment), the pod datapath attached to the host end, and one
//! endpoint-map entry per address.
//!
//! Crash safety: ADD allocates in memory, sets up the kernel side, and only
//! then commits the endpoint record with its address allocations, in one
//! store transaction (one fsync per ADD). An agent that dies before that
//! commit has stored nothing; at its next start it removes every host
//! device of Sluice's naming (`sl` and 12 hex digits) that no record owns,
//! which takes the pod's end and its addresses along, and every datapath
//! entry and datapath attachment no record owns. So nothing leaks and no address is
//! handed out twice; the runtime's DEL or a new ADD then finds a clean
//! slate. (Records in state `creating`, which older agents wrote, are
//! undone the same way.) DEL removes the kernel side before it forgets the
//! record, so a crash during DEL is finished by the next DEL or GC.
//!
//! The kernel side is behind [`PodNet`], so this logic is tested without
//! privileges against a fake.
//!
//! Locking: the server keeps one `Pods` behind a mutex; every CNI request
//! runs to completion while holding it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sluice_api::{cni_code, Attachment, CniAdd, CniAddResult, CniCheck, CniDel, CniIp, CniRoute, EndpointView};
use sluice_store::{Store, Table};

use crate::ipam::{Cidr, Ipam, IpamError};

/// The pods' IPv6 gateway: link-local, on every host-side veth.
pub const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
pub const DEFAULT_MTU: u32 = 1500;

/// What the kernel side needs to set a pod up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSpec {
    pub host_ifname: String,
    pub pod_ifname: String,
    pub netns: PathBuf,
    pub mtu: u32,
    pub ips: Vec<IpAddr>,
    /// The pods' IPv4 gateway (first address of the IPv4 pod CIDR).
    pub gateway4: Option<Ipv4Addr>,
}

/// What the kernel side reports back after setting a pod up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkInfo {
    pub host_ifindex: u32,
    pub host_mac: [u8; 6],
    pub pod_mac: [u8; 6],
}

/// The kernel side of pods: devices, addresses, routes, the pod datapath.
pub trait PodNet {
    /// Create the veth pair (the pod end straight into the pod's
    /// namespace) and configure both ends. On error, leaves nothing behind.
    fn setup(&mut self, spec: &LinkSpec) -> Result<LinkInfo, String>;
    /// Remove the pair by its host end; Ok if it is already gone.
    fn teardown(&mut self, host_ifname: &str) -> Result<(), String>;
    /// Is everything as `setup` left it? Err says what differs.
    fn check(&mut self, spec: &LinkSpec, info: &LinkInfo) -> Result<(), String>;
    /// The ifindex of a host device, if it exists.
    fn host_link(&mut self, name: &str) -> Option<u32>;
    /// Attach the pod datapath to the host end (idempotent).
    fn attach(&mut self, host_ifname: &str, ifindex: u32) -> Result<(), String>;
    fn detach(&mut self, host_ifname: &str) -> Result<(), String>;
    fn set_endpoint(&mut self, ip: IpAddr, id: u32, info: &LinkInfo) -> Result<(), String>;
    fn delete_endpoint(&mut self, ip: IpAddr) -> Result<(), String>;
    /// Addresses in the datapath's endpoint map.
    fn endpoint_ips(&mut self) -> Result<Vec<IpAddr>, String>;
    /// Host devices with the pod datapath attached.
    fn attached(&mut self) -> Vec<String>;
    /// Host devices named as Sluice names them ([`is_host_ifname`]).
    fn host_links(&mut self) -> Result<Vec<String>, String>;
}

/// Whether a device name is of the form [`host_ifname`] gives.
pub fn is_host_ifname(name: &str) -> bool {
    name.len() == 14 && name.starts_with("sl") && name[2..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EpState {
    Creating,
    Ready,
}

/// An endpoint as stored (`endpoints_v1`, key `containerID/ifname`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub id: u32,
    pub attachment: Attachment,
    pub network: String,
    pub netns: String,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    pub ips: Vec<IpAddr>,
    pub host_ifname: String,
    pub mtu: u32,
    pub link: Option<LinkInfo>,
    pub state: EpState,
}

/// A CNI error to hand back to the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniErr {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniErr {
    fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniErr { code, msg: msg.into(), details: details.into() }
    }
}

/// The host-side device name of an attachment: `sl` and 12 hex digits of a
/// hash of `containerID/ifname` (15 characters is the kernel's limit).
pub fn host_ifname(a: &Attachment) -> String {
    // FNV-1a, 64 bits: stable across releases (unlike std's hasher).
    let mut h: u64 = 0xcbf29ce484222325;
    for b in a.container_id.bytes().chain(std::iter::once(b'/')).chain(a.ifname.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("sl{:012x}", h & 0xffff_ffff_ffff)
}

pub fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

pub struct Pods<N: PodNet> {
    store: Store,
    ipam: Ipam,
    records: BTreeMap<Attachment, EndpointRecord>,
    net: N,
    fail_point: Option<String>,
}

impl<N: PodNet> Pods<N> {
    /// Load the records and allocations, undo ADDs a crash interrupted,
    /// drop what no record owns, and make the datapath match the records.
    /// Returns warnings for the log.
    pub fn new(store: Store, cidrs: &[Cidr], net: N) -> Result<(Self, Vec<String>), String> {
        let ipam = Ipam::new(cidrs)?;
        let mut pods = Pods { store, ipam, records: BTreeMap::new(), net, fail_point: None };
        let warnings = pods.recover()?;
        Ok((pods, warnings))
    }

    /// Abort the process at the named point (tests simulate a crash).
    pub fn set_fail_point(&mut self, name: Option<String>) {
        self.fail_point = name;
    }

    fn fail(&self, point: &str) {
        if self.fail_point.as_deref() == Some(point) {
            eprintln!("sluice agent: fail point {point}: aborting");
            std::process::abort();
        }
    }

    fn recover(&mut self) -> Result<Vec<String>, String> {
        let mut warnings = Vec::new();
        let serr = |e: sluice_store::StoreError| e.to_string();
        for (key, v) in self.store.load_table(Table::Endpoints).map_err(serr)? {
            match serde_json::from_value::<EndpointRecord>(v) {
                Ok(r) => {
                    self.records.insert(r.attachment.clone(), r);
                }
                Err(e) => warnings.push(format!("skipping stored endpoint {key}: {e}")),
            }
        }
        let mut stale_ips = Vec::new();
        for (ip, v) in self.store.load_table(Table::Ipam).map_err(serr)? {
            let owner = v.as_str().unwrap_or_default().to_string();
            let Ok(addr) = ip.parse::<IpAddr>() else {
                stale_ips.push(ip);
                continue;
            };
            let owned = self.records.values().any(|r| r.attachment.to_string() == owner && r.ips.contains(&addr));
            if !owned {
                warnings.push(format!("releasing {ip}: allocated to {owner}, which has no endpoint"));
                stale_ips.push(ip);
            } else if let Err(e) = self.ipam.restore(addr, &owner) {
                warnings.push(format!("endpoint {owner}: {e}"));
            }
        }
        if !stale_ips.is_empty() {
            let writes: Vec<_> = stale_ips.into_iter().map(|k| (Table::Ipam, k, None)).collect();
            self.store.write(&writes).map_err(serr)?;
        }
        // ADDs that a crash interrupted: undo them.
        let creating: Vec<EndpointRecord> = self.records.values().filter(|r| r.state == EpState::Creating).cloned().collect();
        for r in creating {
            warnings.push(format!("undoing the unfinished ADD of {} ({})", r.attachment, r.host_ifname));
            if let Err(e) = self.remove(&r) {
                warnings.push(format!("undoing {}: {e}", r.attachment));
            }
        }
        // Devices of ADDs that a crash interrupted before their commit.
        for dev in self.net.host_links()? {
            if !self.records.values().any(|r| r.host_ifname == dev) {
                warnings.push(format!("removing device {dev}: no endpoint owns it (an ADD interrupted by a crash?)"));
                self.net.teardown(&dev)?;
                self.net.detach(&dev)?;
            }
        }
        // Make the datapath match the records.
        let mut wanted_ips = BTreeMap::new();
        for r in self.records.values() {
            let (Some(info), Some(ifindex)) = (r.link, self.net.host_link(&r.host_ifname)) else { continue };
            if ifindex != info.host_ifindex {
                warnings.push(format!("{}: device {} has a new ifindex", r.attachment, r.host_ifname));
                continue;
            }
            for ip in &r.ips {
                wanted_ips.insert(*ip, (r.id, info, r.host_ifname.clone()));
            }
        }
        for (ip, (id, info, dev)) in &wanted_ips {
            if let Err(e) = self.net.attach(dev, info.host_ifindex).and_then(|_| self.net.set_endpoint(*ip, *id, info)) {
                warnings.push(format!("restoring the datapath of {dev}: {e}"));
            }
        }
        for ip in self.net.endpoint_ips()? {
            if !wanted_ips.contains_key(&ip) {
                warnings.push(format!("removing endpoint map entry {ip}: no endpoint owns it"));
                self.net.delete_endpoint(ip)?;
            }
        }
        for dev in self.net.attached() {
            if !self.records.values().any(|r| r.host_ifname == dev) {
                warnings.push(format!("removing datapath links of {dev}: no endpoint owns it"));
                self.net.detach(&dev)?;
            }
        }
        Ok(warnings)
    }

    fn put(&self, r: &EndpointRecord, ips: &[IpAddr], release: &[IpAddr]) -> Result<(), CniErr> {
        let mut writes = vec![(
            Table::Endpoints,
            r.attachment.to_string(),
            Some(serde_json::to_vec(r).expect("records serialise")),
        )];
        for ip in ips {
            writes.push((Table::Ipam, ip.to_string(), Some(serde_json::to_vec(&r.attachment.to_string()).unwrap())));
        }
        for ip in release {
            writes.push((Table::Ipam, ip.to_string(), None));
        }
        self.store.write(&writes).map_err(|e| CniErr::new(cni_code::IO_FAILURE, "cannot write the agent's store", e.to_string()))
    }

    fn next_id(&self) -> u32 {
        let used: std::collections::BTreeSet<u32> = self.records.values().map(|r| r.id).collect();
        (1..).find(|i| !used.contains(i)).unwrap()
    }

    fn spec(&self, r: &EndpointRecord) -> LinkSpec {
        LinkSpec {
            host_ifname: r.host_ifname.clone(),
            pod_ifname: r.attachment.ifname.clone(),
            netns: PathBuf::from(&r.netns),
            mtu: r.mtu,
            ips: r.ips.clone(),
            gateway4: self.gateway4(),
        }
    }

    fn gateway4(&self) -> Option<Ipv4Addr> {
        self.ipam.cidrs().iter().find_map(|c| match c.gateway() {
            Some(IpAddr::V4(g)) => Some(g),
            _ => None,
        })
    }

    /// CNI ADD.
    pub fn add(&mut self, req: &CniAdd) -> Result<CniAddResult, CniErr> {
        let netns = std::path::Path::new(&req.netns);
        if req.netns.is_empty() || !netns.exists() {
            return Err(CniErr::new(
                cni_code::CONTAINER_UNKNOWN,
                format!("network namespace {:?} does not exist", req.netns),
                "CNI_NETNS must name the pod's network namespace (a path such as /run/netns/NAME or /proc/PID/ns/net)",
            ));
        }
        if let Some(r) = self.records.get(&req.attachment).cloned() {
            if r.state == EpState::Ready && r.netns == req.netns && r.link.is_some() && self.net.host_link(&r.host_ifname).is_some() {
                return Ok(self.result(&r));
            }
            // Half there (its namespace was replaced, its device removed): start over.
            self.remove(&r).map_err(|e| CniErr::new(cni_code::SETUP_FAILED, "cannot clean up the previous attempt", e))?;
        }
        let host = host_ifname(&req.attachment);
        if let Some(owner) = self.records.values().find(|r| r.host_ifname == host) {
            return Err(CniErr::new(
                cni_code::SETUP_FAILED,
                format!("host device name {host} is already used by {}", owner.attachment),
                "two attachments hash to the same device name; use another CNI_IFNAME",
            ));
        }
        let t0 = std::time::Instant::now();
        let owner = req.attachment.to_string();
        let ips = self.ipam.allocate(&owner).map_err(|e| match e {
            IpamError::Exhausted { .. } => CniErr::new(cni_code::POOL_EXHAUSTED, e.to_string(), "delete pods or give the agent a larger --pod-cidr"),
            IpamError::NoPool => CniErr::new(cni_code::INVALID_CONFIG, e.to_string(), ""),
        })?;
        let mut rec = EndpointRecord {
            id: self.next_id(),
            attachment: req.attachment.clone(),
            network: req.network.clone(),
            netns: req.netns.clone(),
            pod_name: req.pod_name.clone(),
            pod_namespace: req.pod_namespace.clone(),
            ips: ips.clone(),
            host_ifname: host,
            mtu: req.mtu.unwrap_or(DEFAULT_MTU),
            link: None,
            state: EpState::Creating,
        };
        // In memory only until the kernel side is done (see the module docs).
        self.records.insert(rec.attachment.clone(), rec.clone());
        self.fail("cni-add-after-alloc");
        let t_alloc = t0.elapsed();

        let spec = self.spec(&rec);
        let mut t_link = t_alloc;
        let setup = self.net.setup(&spec).and_then(|info| {
            self.fail("cni-add-after-link");
            t_link = t0.elapsed();
            self.net.attach(&rec.host_ifname, info.host_ifindex)?;
            for ip in &rec.ips {
                self.net.set_endpoint(*ip, rec.id, &info)?;
            }
            Ok(info)
        });
        let info = match setup {
            Ok(info) => info,
            Err(e) => {
                let undo = self.remove(&rec);
                let details = match undo {
                    Ok(()) => "nothing was left behind".to_string(),
                    Err(u) => format!("cleaning up also failed: {u}"),
                };
                return Err(CniErr::new(cni_code::SETUP_FAILED, format!("setting up the pod's network: {e}"), details));
            }
        };
        rec.link = Some(info);
        rec.state = EpState::Ready;
        let t_dp = t0.elapsed();
        if let Err(e) = self.put(&rec, &ips, &[]) {
            let _ = self.remove(&rec);
            return Err(e);
        }
        tracing::debug!(
            alloc_us = t_alloc.as_micros() as u64,
            link_us = (t_link - t_alloc).as_micros() as u64,
            datapath_us = (t_dp - t_link).as_micros() as u64,
            commit_us = (t0.elapsed() - t_dp).as_micros() as u64,
            "ADD phases"
        );
        self.records.insert(rec.attachment.clone(), rec.clone());
        Ok(self.result(&rec))
    }

    fn result(&self, r: &EndpointRecord) -> CniAddResult {
        let info = r.link.expect("a ready endpoint has its link");
        let mut ips = Vec::new();
        let mut routes = Vec::new();
        for ip in &r.ips {
            match ip {
                IpAddr::V4(a) => {
                    let gw = self.gateway4();
                    ips.push(CniIp { address: format!("{a}/32"), gateway: gw.map(|g| g.to_string()) });
                    if let Some(g) = gw {
                        routes.push(CniRoute { dst: format!("{g}/32"), gw: None, scope: Some(253) });
                        routes.push(CniRoute { dst: "0.0.0.0/0".into(), gw: Some(g.to_string()), scope: None });
                    }
                }
                IpAddr::V6(a) => {
                    ips.push(CniIp { address: format!("{a}/128"), gateway: Some(GATEWAY6.to_string()) });
                    routes.push(CniRoute { dst: "::/0".into(), gw: Some(GATEWAY6.to_string()), scope: None });
                }
            }
        }
        CniAddResult {
            host_ifname: r.host_ifname.clone(),
            host_mac: fmt_mac(&info.host_mac),
            pod_ifname: r.attachment.ifname.clone(),
            pod_mac: fmt_mac(&info.pod_mac),
            sandbox: r.netns.clone(),
            mtu: r.mtu,
            ips,
            routes,
        }
    }

    /// Undo everything of an endpoint, kernel side first, then forget it.
    fn remove(&mut self, r: &EndpointRecord) -> Result<(), String> {
        for ip in &r.ips {
            self.net.delete_endpoint(*ip)?;
        }
        // The device first: its tc filters go with it; detach then only
        // cleans up what an earlier version pinned.
        self.net.teardown(&r.host_ifname)?;
        self.net.detach(&r.host_ifname)?;
        let mut writes = vec![(Table::Endpoints, r.attachment.to_string(), None)];
        let owner = r.attachment.to_string();
        for ip in &r.ips {
            if self.ipam.owner(*ip) == Some(owner.as_str()) {
                writes.push((Table::Ipam, ip.to_string(), None));
            }
        }
        self.store.write(&writes).map_err(|e| e.to_string())?;
        for ip in &r.ips {
            if self.ipam.owner(*ip) == Some(owner.as_str()) {
                self.ipam.release(*ip);
            }
        }
        self.records.remove(&r.attachment);
        Ok(())
    }

    /// CNI DEL: idempotent.
    pub fn del(&mut self, req: &CniDel) -> Result<String, CniErr> {
        let Some(r) = self.records.get(&req.attachment).cloned() else {
            // Nothing recorded; a device of that name would be a leftover.
            let host = host_ifname(&req.attachment);
            if self.net.host_link(&host).is_some() {
                self.net.teardown(&host).and_then(|_| self.net.detach(&host)).map_err(|e| CniErr::new(cni_code::SETUP_FAILED, "removing a leftover device", e))?;
                return Ok(format!("{}: removed leftover device {host}", req.attachment));
            }
            return Ok(format!("{}: nothing to delete", req.attachment));
        };
        self.remove(&r).map_err(|e| CniErr::new(cni_code::SETUP_FAILED, format!("deleting {}", r.attachment), e))?;
        let ips: Vec<String> = r.ips.iter().map(|i| i.to_string()).collect();
        Ok(format!("{}: deleted {} and released {}", r.attachment, r.host_ifname, ips.join(", ")))
    }

    /// CNI CHECK.
    pub fn check(&mut self, req: &CniCheck) -> Result<String, CniErr> {
        let Some(r) = self.records.get(&req.attachment).cloned() else {
            return Err(CniErr::new(cni_code::CONTAINER_UNKNOWN, format!("{} is not attached to this network", req.attachment), "no ADD was done for it, or it was deleted"));
        };
        let failed = |msg: String| CniErr::new(cni_code::CHECK_FAILED, msg, format!("endpoint {} ({})", r.attachment, r.host_ifname));
        if r.netns != req.netns {
            return Err(failed(format!("the pod was added in {:?}, not {:?}", r.netns, req.netns)));
        }
        let Some(info) = r.link.filter(|_| r.state == EpState::Ready) else {
            return Err(failed("the ADD of this pod has not finished".into()));
        };
        if let Some(prev) = &req.prev_result {
            let mut given: Vec<String> = prev
                .get("ips")
                .and_then(|v| v.as_array())
                .map(|a| a.iter().filter_map(|i| i.get("address").and_then(|s| s.as_str())).map(|s| s.split('/').next().unwrap_or(s).to_string()).collect())
                .unwrap_or_default();
            let mut have: Vec<String> = r.ips.iter().map(|i| i.to_string()).collect();
            given.sort();
            have.sort();
            if given != have {
                return Err(failed(format!("prevResult lists addresses {given:?}, the pod has {have:?}")));
            }
        }
        self.net.check(&self.spec(&r), &info).map_err(failed)?;
        Ok(format!("{}: ok", r.attachment))
    }

    /// CNI GC: delete every endpoint of `network` not in `valid`.
    pub fn gc(&mut self, network: &str, valid: &[Attachment]) -> Result<String, CniErr> {
        let doomed: Vec<EndpointRecord> =
            self.records.values().filter(|r| r.network == network && !valid.contains(&r.attachment)).cloned().collect();
        let mut errors = Vec::new();
        for r in &doomed {
            if let Err(e) = self.remove(r) {
                errors.push(format!("{}: {e}", r.attachment));
            }
        }
        if !errors.is_empty() {
            return Err(CniErr::new(cni_code::SETUP_FAILED, "garbage collection left some endpoints", errors.join("; ")));
        }
        Ok(format!("released {} attachment(s)", doomed.len()))
    }

    /// CNI STATUS: can an ADD succeed now?
    pub fn status(&self) -> Result<String, CniErr> {
        let usage = self.ipam.usage();
        if usage.is_empty() {
            return Err(CniErr::new(cni_code::PLUGIN_NOT_AVAILABLE, "the agent has no pod CIDR", "start it with --pod-cidr"));
        }
        for (cidr, used, usable) in &usage {
            if *used as u128 >= *usable {
                return Err(CniErr::new(cni_code::PLUGIN_NOT_AVAILABLE, format!("pod CIDR {cidr} is exhausted ({used} in use)"), ""));
            }
        }
        let s: Vec<String> = usage.iter().map(|(c, u, n)| format!("{c}: {u} of {n} in use")).collect();
        Ok(format!("ready; {}", s.join(", ")))
    }

    /// Endpoints for `sluice endpoint list`; `labels` looks up the Pod.
    pub fn list(&self, labels: impl Fn(&str, &str) -> BTreeMap<String, String>) -> Vec<EndpointView> {
        self.records
            .values()
            .map(|r| EndpointView {
                id: r.id,
                attachment: r.attachment.clone(),
                network: r.network.clone(),
                netns: r.netns.clone(),
                pod_name: r.pod_name.clone(),
                pod_namespace: r.pod_namespace.clone(),
                labels: match &r.pod_name {
                    Some(n) => labels(r.pod_namespace.as_deref().unwrap_or("default"), n),
                    None => BTreeMap::new(),
                },
                ips: r.ips.iter().map(|i| i.to_string()).collect(),
                host_ifname: r.host_ifname.clone(),
                host_ifindex: r.link.map(|l| l.host_ifindex).unwrap_or(0),
                state: match r.state {
                    EpState::Creating => "creating".into(),
                    EpState::Ready => "ready".into(),
                },
            })
            .collect()
    }

    /// `namespace/name` of the pod holding an address, for service backends.
    pub fn pod_of(&self, ip: IpAddr) -> Option<String> {
        self.records.values().find(|r| r.ips.contains(&ip)).map(|r| match &r.pod_name {
            Some(n) => format!("{}/{n}", r.pod_namespace.as_deref().unwrap_or("default")),
            None => r.attachment.to_string(),
        })
    }

    pub fn net(&mut self) -> &mut N {
        &mut self.net
    }

    pub fn ipam(&self) -> &Ipam {
        &self.ipam
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}
