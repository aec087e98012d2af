//! Pod networking datapath: the tcx programs of pod devices
//! (`bpf/lxc.bpf.c`: `sl_from_pod`, `sl_to_pod`) and of the node's external
//! devices (`bpf/host.bpf.c`: `sl_host_ingress`, `sl_host_egress`), the
//! endpoint map, the node configuration, and the conntrack and NAT tables.
//!
//! Kernel requirements: tcx links (6.6+), `bpf_redirect_peer` (5.10+).
//! Checked here on 6.18.
//!
//! Pins, under the datapath's pin directory: the programs at
//! `progs/<prog>_v1` (written by [`crate::loader::install`]), and one tcx
//! link per device and direction at `links/pod/<ifname>_{ingress,egress}_v1`
//! and `links/host/<ifname>_{ingress,egress}_v1`. The links survive the
//! agent; a new agent's install swaps its programs into them. When a device
//! is deleted the kernel detaches its links; their pins stay until
//! [`PodDatapath::detach`] (or the next attach under that name) removes them.
//!
//! Locking: every method is one or a few map or bpffs operations; the
//! kernel serialises each. Two callers attaching the same device at once
//! may both create a link; the agent calls these from one task.

use std::ffi::CString;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use libbpf_rs::libbpf_sys;
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapHandle, OpenObject};
use serde::{Deserialize, Serialize};

use crate::encode::{addr_from_octets, addr_octets, Pod};
use crate::lbmaps::{KernelMaps, Metric};
use crate::loader::{check_sizes, map_pin, open_pinned, prog_pin, LinkStatus};
use crate::skel_host::types::{sl_cidr, sl_nat_key, sl_nat_val, sl_node_cfg};
use crate::skel_host::{HostSkel, HostSkelBuilder};
use crate::skel_xdp::{XdpSkel, XdpSkelBuilder};
use crate::skel_lxc::types::{sl_addr, sl_ct_key, sl_ct_val, sl_ep_val};
use crate::skel_lxc::{LxcSkel, LxcSkelBuilder};
use crate::{DatapathError, LAYOUT_VERSION};

// SAFETY: generated from BTF of structs with explicit padding only.
unsafe impl Pod for sl_ep_val {}
unsafe impl Pod for sl_ct_key {}
unsafe impl Pod for sl_ct_val {}
unsafe impl Pod for sl_nat_key {}
unsafe impl Pod for sl_nat_val {}
unsafe impl Pod for sl_node_cfg {}
unsafe impl Pod for sl_addr {}

/// Maps of the pod and host objects (also in [`crate::loader::MAPS`]).
pub const EP_MAP: &str = "sl_ep_v1";
pub const CFG_MAP: &str = "sl_cfg_v1";
pub const CT_MAP: &str = "sl_ct_v1";
pub const SNAT_MAP: &str = "sl_snat_v1";

/// Programs of pod devices and of the node's external devices, in the
/// order ingress, egress of each.
pub const POD_PROGRAMS: [&str; 2] = ["sl_from_pod", "sl_to_pod"];
pub const HOST_PROGRAMS: [&str; 2] = ["sl_host_ingress", "sl_host_egress"];
/// The external devices' XDP program (`bpf/xdp.bpf.c`), pinned under
/// `progs/` like the others; its links under `links/xdp/<ifname>_v1`.
pub const XDP_PROGRAM: &str = "sl_host_xdp";

/// How the XDP program is attached to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// In the driver (`XDP_FLAGS_DRV_MODE`): refused by devices without
    /// native XDP support (the agent then stays at tc and warns).
    Native,
    /// Generic XDP (`XDP_FLAGS_SKB_MODE`): any device, after the skb is
    /// allocated; for testing and devices without driver support.
    Generic,
}

impl XdpMode {
    fn flags(self) -> u32 {
        match self {
            XdpMode::Native => 1 << 2,  // XDP_FLAGS_DRV_MODE
            XdpMode::Generic => 1 << 1, // XDP_FLAGS_SKB_MODE
        }
    }
}

/// `<pin_dir>/links/xdp/<ifname>_v1`.
fn xdp_link_pin(pin_dir: &Path, ifname: &str) -> PathBuf {
    pin_dir.join("links").join("xdp").join(format!("{ifname}_v{LAYOUT_VERSION}"))
}

/// The device an XDP link is attached to (0 once the device is gone).
fn xdp_link_ifindex(link: BorrowedFd<'_>) -> Option<u32> {
    // SAFETY: bpf_link_info is plain data; zero is a valid value.
    let mut info: libbpf_sys::bpf_link_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libbpf_sys::bpf_link_info>() as u32;
    // SAFETY: info and len describe a writable buffer of len bytes.
    let r = unsafe { libbpf_sys::bpf_link_get_info_by_fd(link.as_raw_fd(), &mut info, &mut len) };
    if r != 0 || info.type_ != libbpf_sys::BPF_LINK_TYPE_XDP {
        return None;
    }
    // SAFETY: the kernel filled the xdp member for an XDP link.
    Some(unsafe { info.__bindgen_anon_1.xdp.ifindex })
}

/// Limits of `struct sl_node_cfg` (`bpf/include/cfg.h`).
pub const MAX_POD_CIDRS: usize = 4;
pub const MAX_NO_MASQ_CIDRS: usize = 8;

/// TC verdicts, as `BPF_PROG_TEST_RUN` reports them.
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

/// One pod address's entry in `sl_ep_v1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointEntry {
    pub id: u32,
    /// Host side of the pod's veth (in the node's namespace).
    pub host_ifindex: u32,
    pub host_mac: [u8; 6],
    /// MAC of the pod's own interface.
    pub pod_mac: [u8; 6],
}

/// The node configuration of the pod and host programs (`sl_cfg_v1`),
/// changed at run time without reloading anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfig {
    /// SNAT pod sources leaving through the node's external devices.
    pub masquerade: bool,
    /// Source address per family; a family without one is not masqueraded
    /// (counted as `snat_no_addr`).
    pub masq_ip4: Option<Ipv4Addr>,
    pub masq_ip6: Option<Ipv6Addr>,
    /// Sources that are masqueraded (at most [`MAX_POD_CIDRS`], both families).
    pub pod_cidrs: Vec<(IpAddr, u8)>,
    /// Destinations that are never masqueraded, typically the cluster's pod
    /// CIDRs and the node network (at most [`MAX_NO_MASQ_CIDRS`]).
    pub no_masq_cidrs: Vec<(IpAddr, u8)>,
    /// Inclusive source-port range for masqueraded flows. Keep it outside
    /// the node's `ip_local_port_range` and the NodePort range: a port is
    /// checked against other masqueraded flows only.
    pub snat_ports: (u16, u16),
}

impl NodeConfig {
    /// Above Linux's default `ip_local_port_range` (32768-60999).
    pub const DEFAULT_SNAT_PORTS: (u16, u16) = (61000, 65535);
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            masquerade: false,
            masq_ip4: None,
            masq_ip6: None,
            pod_cidrs: Vec::new(),
            no_masq_cidrs: Vec::new(),
            snat_ports: Self::DEFAULT_SNAT_PORTS,
        }
    }
}

/// A conntrack entry of per-packet service translation (`sl_ct_v1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtEntry {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub proto: u8,
    /// false: client -> frontend, `nat` is the backend; true: the reply
    /// backend -> client, `nat` is the frontend.
    pub reverse: bool,
    pub nat: SocketAddr,
    pub backend_id: u32,
    pub rev_nat_id: u32,
    /// FIN or RST seen: the lifetime was shortened.
    pub closing: bool,
    /// Which path made it: `pod` (per-packet service translation at a pod
    /// device), `nodeport` (from outside, local backend), `nodeport-snat`,
    /// `nodeport-dsr`, or `dsr-backend` (taken in from a DSR option).
    #[serde(default)]
    pub kind: String,
    pub lifetime_s: u32,
    pub last_seen_ns: u64,
}

/// The kind of a conntrack entry, from its flags (`SL_CT_F_*`, ct.h).
pub fn ct_kind(flags: u16) -> &'static str {
    const NODEPORT: u16 = 1 << 1;
    const SNAT: u16 = 1 << 2;
    const DSR: u16 = 1 << 3;
    const DSR_BACKEND: u16 = 1 << 4;
    if flags & DSR_BACKEND != 0 {
        "dsr-backend"
    } else if flags & NODEPORT == 0 {
        "pod"
    } else if flags & SNAT != 0 {
        "nodeport-snat"
    } else if flags & DSR != 0 {
        "nodeport-dsr"
    } else {
        "nodeport"
    }
}

/// An entry of the NAT table (`sl_snat_v1`): masquerade and NodePort SNAT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatEntry {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub proto: u8,
    /// false: pod -> remote, `nat` is the new source; true: the reply
    /// remote -> node, `nat` is the pod.
    pub inbound: bool,
    pub nat: SocketAddr,
    pub closing: bool,
    /// `masquerade` (a pod's flow leaving the node) or `nodeport` (a
    /// NodePort flow to a remote backend).
    #[serde(default)]
    pub kind: String,
    pub lifetime_s: u32,
    pub last_seen_ns: u64,
}

fn to_c(a: IpAddr) -> sl_addr {
    sl_addr { b: addr_octets(a) }
}

fn from_c(a: &sl_addr) -> IpAddr {
    // SAFETY: both union members are plain bytes of the same size.
    addr_from_octets(unsafe { a.b })
}

fn host_addr(a: &crate::skel_host::types::sl_addr) -> IpAddr {
    // SAFETY: both union members are plain bytes of the same size.
    addr_from_octets(unsafe { a.b })
}

fn host_c(a: IpAddr) -> crate::skel_host::types::sl_addr {
    crate::skel_host::types::sl_addr { b: addr_octets(a) }
}

/// A CIDR in the 16-byte form: IPv4 /n is the mapped address /96+n. Host
/// bits are cleared.
fn cidr_to_c(addr: IpAddr, len: u8) -> Result<sl_cidr, DatapathError> {
    let (max, off) = match addr {
        IpAddr::V4(_) => (32u32, 96u32),
        IpAddr::V6(_) => (128, 0),
    };
    if len as u32 > max {
        return Err(DatapathError::Other(format!("{addr}/{len}: prefix longer than {max}")));
    }
    let plen = off + len as u32;
    let mut b = addr_octets(addr);
    for (i, byte) in b.iter_mut().enumerate() {
        let bit = (i as u32) * 8;
        if bit >= plen {
            *byte = 0;
        } else if bit + 8 > plen {
            *byte &= 0xffu8 << (8 - (plen - bit));
        }
    }
    Ok(sl_cidr { addr: crate::skel_host::types::sl_addr { b }, prefix_len: plen })
}

fn node_cfg_to_c(c: &NodeConfig) -> Result<sl_node_cfg, DatapathError> {
    let mut out = sl_node_cfg::default();
    if c.pod_cidrs.len() > MAX_POD_CIDRS {
        return Err(DatapathError::Other(format!("{} pod CIDRs: at most {MAX_POD_CIDRS}", c.pod_cidrs.len())));
    }
    if c.no_masq_cidrs.len() > MAX_NO_MASQ_CIDRS {
        return Err(DatapathError::Other(format!(
            "{} no-masquerade CIDRs: at most {MAX_NO_MASQ_CIDRS}",
            c.no_masq_cidrs.len()
        )));
    }
    let (lo, hi) = c.snat_ports;
    if c.masquerade && (lo == 0 || hi < lo) {
        return Err(DatapathError::Other(format!("SNAT port range {lo}-{hi}: need 1 <= first <= last")));
    }
    for (i, (a, l)) in c.pod_cidrs.iter().enumerate() {
        out.pod_cidrs[i] = cidr_to_c(*a, *l)?;
    }
    for (i, (a, l)) in c.no_masq_cidrs.iter().enumerate() {
        out.no_masq_cidrs[i] = cidr_to_c(*a, *l)?;
    }
    out.n_pod_cidrs = c.pod_cidrs.len() as u8;
    out.n_no_masq_cidrs = c.no_masq_cidrs.len() as u8;
    if let Some(a) = c.masq_ip4 {
        out.masq_addr4 = host_c(IpAddr::V4(a));
    }
    if let Some(a) = c.masq_ip6 {
        out.masq_addr6 = host_c(IpAddr::V6(a));
    }
    out.flags = if c.masquerade { 1 } else { 0 };
    out.snat_port_min = lo;
    out.snat_port_max = hi;
    Ok(out)
}

fn node_cfg_from_c(c: &sl_node_cfg) -> NodeConfig {
    let cidr = |x: &sl_cidr| {
        let a = host_addr(&x.addr);
        let len = if a.is_ipv4() { x.prefix_len.saturating_sub(96) } else { x.prefix_len };
        (a, len as u8)
    };
    let v4 = match host_addr(&c.masq_addr4) {
        IpAddr::V4(a) if !a.is_unspecified() => Some(a),
        _ => None,
    };
    let v6 = match host_addr(&c.masq_addr6) {
        IpAddr::V6(a) if !a.is_unspecified() => Some(a),
        _ => None,
    };
    NodeConfig {
        masquerade: c.flags & 1 != 0,
        masq_ip4: v4,
        masq_ip6: v6,
        pod_cidrs: c.pod_cidrs.iter().take(c.n_pod_cidrs as usize).map(cidr).collect(),
        no_masq_cidrs: c.no_masq_cidrs.iter().take(c.n_no_masq_cidrs as usize).map(cidr).collect(),
        snat_ports: (c.snat_port_min, c.snat_port_max),
    }
}

/// The maps and pins of the pod datapath, opened from the pin directory.
pub struct PodDatapath {
    /// None for objects loaded without pins ([`LoadedDevices`]): no attach.
    pin_dir: Option<PathBuf>,
    ep: MapHandle,
    cfg: MapHandle,
    ct: MapHandle,
    snat: MapHandle,
}

fn checked<K, V>(get: &dyn Fn(&str) -> Result<MapHandle, DatapathError>, name: &str) -> Result<MapHandle, DatapathError> {
    let h = get(name)?;
    check_sizes(&h, name, std::mem::size_of::<K>(), std::mem::size_of::<V>())?;
    Ok(h)
}

fn valid_ifname(ifname: &str) -> Result<(), DatapathError> {
    if ifname.is_empty() || ifname.len() > 15 || ifname.contains('/') || ifname.starts_with('.') {
        return Err(DatapathError::Other(format!("{ifname:?} is not an interface name")));
    }
    Ok(())
}

/// Which device family a link pin belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DevKind {
    Pod,
    Host,
}

impl DevKind {
    fn dir(self) -> &'static str {
        match self {
            DevKind::Pod => "pod",
            DevKind::Host => "host",
        }
    }
    fn programs(self) -> [&'static str; 2] {
        match self {
            DevKind::Pod => POD_PROGRAMS,
            DevKind::Host => HOST_PROGRAMS,
        }
    }
}

const DIRECTIONS: [(&str, libbpf_sys::bpf_attach_type); 2] =
    [("ingress", libbpf_sys::BPF_TCX_INGRESS), ("egress", libbpf_sys::BPF_TCX_EGRESS)];

/// `<pin_dir>/links/{pod,host}/<ifname>_<direction>_v1`.
fn device_link_pin(pin_dir: &Path, kind: DevKind, ifname: &str, direction: &str) -> PathBuf {
    pin_dir.join("links").join(kind.dir()).join(format!("{ifname}_{direction}_v{LAYOUT_VERSION}"))
}

fn cpath(p: &Path) -> Result<CString, DatapathError> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes()).map_err(|_| DatapathError::Other(format!("{}: NUL in path", p.display())))
}

fn sys_err(ret: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(if ret < 0 { -ret } else { libc::EINVAL })
}

/// Open a pinned BPF object (program or link).
fn obj_get(p: &Path) -> Result<OwnedFd, DatapathError> {
    let c = cpath(p)?;
    // SAFETY: c is a valid NUL-terminated path; the returned descriptor,
    // if any, is new and owned by us.
    let fd = unsafe { libbpf_sys::bpf_obj_get(c.as_ptr()) };
    if fd < 0 {
        return Err(DatapathError::Io { what: format!("opening {}", p.display()), source: sys_err(fd) });
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The device and direction a tcx link is attached to (ifindex 0 once the
/// device is gone).
fn tcx_link_target(link: BorrowedFd<'_>) -> Option<(u32, libbpf_sys::bpf_attach_type)> {
    // SAFETY: bpf_link_info is plain data; zero is a valid value.
    let mut info: libbpf_sys::bpf_link_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libbpf_sys::bpf_link_info>() as u32;
    // SAFETY: info and len describe a writable buffer of len bytes.
    let r = unsafe { libbpf_sys::bpf_link_get_info_by_fd(link.as_raw_fd(), &mut info, &mut len) };
    if r != 0 || info.type_ != libbpf_sys::BPF_LINK_TYPE_TCX {
        return None;
    }
    // SAFETY: the kernel filled the tcx member for a TCX link.
    let tcx = unsafe { info.__bindgen_anon_1.tcx };
    Some((tcx.ifindex, tcx.attach_type))
}

/// Attach `prog` to `ifindex` in `dir` and pin the link at `pin`. A link
/// already pinned there for the same device and direction gets the program
/// swapped in atomically; one for another device (a name reused by a new
/// device, or a deleted device) is detached and replaced.
fn tcx_attach_pinned(prog: BorrowedFd<'_>, ifindex: u32, dir: libbpf_sys::bpf_attach_type, pin: &Path) -> Result<&'static str, DatapathError> {
    if pin.exists() {
        if let Ok(link) = obj_get(pin) {
            if tcx_link_target(link.as_fd()) == Some((ifindex, dir)) {
                // SAFETY: both descriptors are valid for the call; NULL
                // options mean "replace whatever program is there".
                let r = unsafe { libbpf_sys::bpf_link_update(link.as_raw_fd(), prog.as_raw_fd(), std::ptr::null()) };
                if r == 0 {
                    return Ok("adopted");
                }
            }
            // SAFETY: a valid link descriptor; failure (already detached) is fine.
            unsafe { libbpf_sys::bpf_link_detach(link.as_raw_fd()) };
        }
        std::fs::remove_file(pin).map_err(DatapathError::io(format!("removing {}", pin.display())))?;
    }
    // SAFETY: valid program descriptor; NULL options attach at the end of
    // the device's tcx chain.
    let fd = unsafe { libbpf_sys::bpf_link_create(prog.as_raw_fd(), ifindex as i32, dir, std::ptr::null()) };
    if fd < 0 {
        return Err(DatapathError::Io { what: format!("attaching tcx link for {}", pin.display()), source: sys_err(fd) });
    }
    // SAFETY: fd is a fresh link descriptor that nothing else owns; closing
    // it without a pin detaches the link.
    let link = unsafe { OwnedFd::from_raw_fd(fd) };
    let c = cpath(pin)?;
    // SAFETY: valid descriptor and NUL-terminated path.
    let r = unsafe { libbpf_sys::bpf_obj_pin(link.as_raw_fd(), c.as_ptr()) };
    if r != 0 {
        return Err(DatapathError::Io { what: format!("pinning {}", pin.display()), source: sys_err(r) });
    }
    Ok("attached")
}

/// Detach the link pinned at `pin` (if its device still exists) and remove the pin.
fn unpin_link(pin: &Path) -> Result<bool, DatapathError> {
    if !pin.exists() {
        return Ok(false);
    }
    if let Ok(link) = obj_get(pin) {
        // SAFETY: a valid link descriptor; failure (device gone) is fine.
        unsafe { libbpf_sys::bpf_link_detach(link.as_raw_fd()) };
    }
    std::fs::remove_file(pin).map_err(DatapathError::io(format!("removing {}", pin.display())))?;
    Ok(true)
}

fn attached_names(pin_dir: &Path, kind: DevKind) -> Vec<String> {
    let dir = pin_dir.join("links").join(kind.dir());
    let mut out: Vec<String> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            DIRECTIONS
                .iter()
                .find_map(|(d, _)| name.strip_suffix(&format!("_{d}_v{LAYOUT_VERSION}")).map(str::to_string))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The pod device hook: clsact, handle 1, priority 1, replacing.
fn pod_tc_hook(prog: BorrowedFd<'_>, ifindex: u32, ingress: bool) -> libbpf_rs::TcHook {
    let mut b = libbpf_rs::TcHookBuilder::new(prog);
    b.ifindex(ifindex as i32).replace(true).handle(1).priority(1);
    b.hook(if ingress { libbpf_rs::TC_INGRESS } else { libbpf_rs::TC_EGRESS })
}

/// The name of the program of our filter (handle 1, priority 1) on a
/// device's ingress or egress, if there is one.
fn tc_filter_prog_name(ifindex: u32, ingress: bool) -> Option<String> {
    // SAFETY: bpf_tc_hook and bpf_tc_opts are plain data; zero is valid.
    let mut hook: libbpf_sys::bpf_tc_hook = unsafe { std::mem::zeroed() };
    hook.sz = std::mem::size_of::<libbpf_sys::bpf_tc_hook>() as _;
    hook.ifindex = ifindex as i32;
    hook.attach_point = if ingress { libbpf_sys::BPF_TC_INGRESS } else { libbpf_sys::BPF_TC_EGRESS };
    // SAFETY: as above.
    let mut opts: libbpf_sys::bpf_tc_opts = unsafe { std::mem::zeroed() };
    opts.sz = std::mem::size_of::<libbpf_sys::bpf_tc_opts>() as _;
    opts.handle = 1;
    opts.priority = 1;
    // SAFETY: valid hook and opts of the sizes given.
    if unsafe { libbpf_sys::bpf_tc_query(&hook, &mut opts) } != 0 || opts.prog_id == 0 {
        return None;
    }
    // SAFETY: a plain syscall wrapper; the descriptor, if any, is ours.
    let fd = unsafe { libbpf_sys::bpf_prog_get_fd_by_id(opts.prog_id) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: bpf_prog_info is plain data.
    let mut info: libbpf_sys::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: info and len describe a writable buffer.
    if unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) } != 0 {
        return None;
    }
    let name: Vec<u8> = info.name.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
    Some(String::from_utf8_lossy(&name).into_owned())
}

/// The pod devices with pinned links, by ifindex: names as the agent's
/// network namespace knows them (the caller may be in another one).
pub fn pod_device_names(pin_dir: &Path) -> std::collections::HashMap<u32, String> {
    let mut out = std::collections::HashMap::new();
    for ifname in attached_names(pin_dir, DevKind::Pod) {
        let pin = device_link_pin(pin_dir, DevKind::Pod, &ifname, "ingress");
        if let Ok(link) = obj_get(&pin) {
            if let Some((ifindex, _)) = tcx_link_target(link.as_fd()) {
                if ifindex != 0 {
                    out.insert(ifindex, ifname);
                }
            }
        }
    }
    out
}

/// Swap freshly loaded programs into every device link pinned under
/// `pin_dir` (called by install after the programs are pinned). Pins whose
/// device is gone are removed.
pub(crate) fn adopt_device_links(pin_dir: &Path) -> Result<Vec<LinkStatus>, DatapathError> {
    let mut out = Vec::new();
    for kind in [DevKind::Pod, DevKind::Host] {
        let progs = kind.programs();
        for ifname in attached_names(pin_dir, kind) {
            for (i, (d, dir)) in DIRECTIONS.iter().enumerate() {
                let pin = device_link_pin(pin_dir, kind, &ifname, d);
                if !pin.exists() {
                    continue;
                }
                let prog = obj_get(&prog_pin(pin_dir, progs[i]))?;
                let link = obj_get(&pin)?;
                let state = match tcx_link_target(link.as_fd()) {
                    Some((ifindex, at)) if ifindex != 0 && at == *dir => {
                        // SAFETY: both descriptors are valid for the call.
                        let r = unsafe { libbpf_sys::bpf_link_update(link.as_raw_fd(), prog.as_raw_fd(), std::ptr::null()) };
                        if r == 0 { "adopted".to_string() } else { format!("program swap failed: {}", sys_err(r)) }
                    }
                    _ => {
                        drop(link);
                        std::fs::remove_file(&pin).map_err(DatapathError::io(format!("removing {}", pin.display())))?;
                        "device gone: pin removed".to_string()
                    }
                };
                out.push(LinkStatus { program: progs[i].to_string(), pin: pin.display().to_string(), state });
            }
        }
    }
    let dir = pin_dir.join("links").join("xdp");
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let pin = e.path();
        let prog = obj_get(&prog_pin(pin_dir, XDP_PROGRAM))?;
        let link = obj_get(&pin)?;
        let state = match xdp_link_ifindex(link.as_fd()) {
            Some(ifindex) if ifindex != 0 => {
                // SAFETY: both descriptors are valid for the call.
                let r = unsafe { libbpf_sys::bpf_link_update(link.as_raw_fd(), prog.as_raw_fd(), std::ptr::null()) };
                if r == 0 { "adopted".to_string() } else { format!("program swap failed: {}", sys_err(r)) }
            }
            _ => {
                drop(link);
                std::fs::remove_file(&pin).map_err(DatapathError::io(format!("removing {}", pin.display())))?;
                "device gone: pin removed".to_string()
            }
        };
        out.push(LinkStatus { program: XDP_PROGRAM.to_string(), pin: pin.display().to_string(), state });
    }
    Ok(out)
}

/// Remove every device link pin (detaching the links). For uninstall.
pub(crate) fn remove_device_links(pin_dir: &Path) -> Result<Vec<String>, DatapathError> {
    let mut removed = Vec::new();
    for sub in [DevKind::Pod.dir(), DevKind::Host.dir(), "xdp"] {
        let dir = pin_dir.join("links").join(sub);
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if unpin_link(&p)? {
                removed.push(p.display().to_string());
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }
    Ok(removed)
}

impl PodDatapath {
    /// Open the maps pinned by [`crate::loader::install`].
    pub fn open(pin_dir: &Path) -> Result<PodDatapath, DatapathError> {
        let mut d = Self::from_source(&|name| open_pinned(pin_dir, name))?;
        d.pin_dir = Some(pin_dir.to_path_buf());
        Ok(d)
    }

    /// The maps as `get` finds them by name (sizes checked against this build).
    pub fn from_source(get: &dyn Fn(&str) -> Result<MapHandle, DatapathError>) -> Result<PodDatapath, DatapathError> {
        Ok(PodDatapath {
            pin_dir: None,
            ep: checked::<sl_addr, sl_ep_val>(get, EP_MAP)?,
            cfg: checked::<u32, sl_node_cfg>(get, CFG_MAP)?,
            ct: checked::<sl_ct_key, sl_ct_val>(get, CT_MAP)?,
            snat: checked::<sl_nat_key, sl_nat_val>(get, SNAT_MAP)?,
        })
    }

    fn pins(&self) -> Result<&Path, DatapathError> {
        self.pin_dir
            .as_deref()
            .ok_or_else(|| DatapathError::Other("this datapath was loaded without pins: nothing to attach".into()))
    }

    fn attach_kind(&self, kind: DevKind, ifname: &str, ifindex: u32) -> Result<(), DatapathError> {
        valid_ifname(ifname)?;
        let pin_dir = self.pins()?;
        let dir = pin_dir.join("links").join(kind.dir());
        std::fs::create_dir_all(&dir).map_err(DatapathError::io(format!("creating {}", dir.display())))?;
        for (i, (d, at)) in DIRECTIONS.iter().enumerate() {
            let prog = obj_get(&prog_pin(pin_dir, kind.programs()[i]))?;
            let pin = device_link_pin(pin_dir, kind, ifname, d);
            tcx_attach_pinned(prog.as_fd(), ifindex, *at, &pin)?;
        }
        Ok(())
    }

    fn detach_kind(&self, kind: DevKind, ifname: &str) -> Result<(), DatapathError> {
        valid_ifname(ifname)?;
        let pin_dir = self.pins()?;
        for (d, _) in DIRECTIONS {
            unpin_link(&device_link_pin(pin_dir, kind, ifname, d))?;
        }
        Ok(())
    }

    /// Attach sl_from_pod (ingress) and sl_to_pod (egress) to a host-side
    /// pod veth as tc (clsact, cls_bpf direct-action) filters, handle 1,
    /// priority 1. Idempotent: attaching again replaces the program
    /// atomically (how a restarted agent swaps in its programs).
    ///
    /// Not tcx links, as on the external devices: every tcx attach waits
    /// for an RCU grace period under the RTNL lock (13-16 ms here, twice
    /// per pod), which made CNI ADD slower than the bridge plugin's; a
    /// cls_bpf filter is attached without one. Filters live on the device
    /// (no pin) and go with it. tcx links pinned by an earlier version for
    /// this device are removed first.
    ///
    /// Netlink: acts on the device `ifindex` of the calling thread's
    /// network namespace.
    pub fn attach(&self, ifname: &str, ifindex: u32) -> Result<(), DatapathError> {
        valid_ifname(ifname)?;
        let pin_dir = self.pins()?;
        for (d, _) in DIRECTIONS {
            unpin_link(&device_link_pin(pin_dir, DevKind::Pod, ifname, d))?;
        }
        for (i, ingress) in [(0, true), (1, false)] {
            let prog = obj_get(&prog_pin(pin_dir, POD_PROGRAMS[i]))?;
            let mut hook = pod_tc_hook(prog.as_fd(), ifindex, ingress);
            hook.create().map_err(DatapathError::bpf(format!("clsact qdisc on {ifname}")))?;
            hook.attach().map_err(DatapathError::bpf(format!("tc filter {} on {ifname}", POD_PROGRAMS[i])))?;
        }
        Ok(())
    }

    /// Remove the filters of that device (and any tcx pins an earlier
    /// version left). Ok if nothing is there or the device is gone.
    pub fn detach(&self, ifname: &str) -> Result<(), DatapathError> {
        valid_ifname(ifname)?;
        let pin_dir = self.pins()?;
        for (d, _) in DIRECTIONS {
            unpin_link(&device_link_pin(pin_dir, DevKind::Pod, ifname, d))?;
        }
        let Ok(ifindex) = nix::net::if_::if_nametoindex(ifname) else { return Ok(()) };
        let prog = obj_get(&prog_pin(pin_dir, POD_PROGRAMS[0]))?;
        for ingress in [true, false] {
            let mut hook = pod_tc_hook(prog.as_fd(), ifindex, ingress);
            match hook.detach() {
                Ok(()) => {}
                Err(e) if matches!(e.kind(), libbpf_rs::ErrorKind::NotFound | libbpf_rs::ErrorKind::InvalidInput) => {}
                Err(e) => return Err(DatapathError::Bpf { what: format!("removing the tc filter of {ifname}"), source: e }),
            }
        }
        Ok(())
    }

    /// Devices of the calling thread's network namespace that have the pod
    /// program as their ingress filter (or, from an earlier version, pinned
    /// tcx links).
    pub fn attached(&self) -> Vec<String> {
        let mut out = self.pin_dir.as_deref().map(|p| attached_names(p, DevKind::Pod)).unwrap_or_default();
        if let Ok(ifs) = nix::net::if_::if_nameindex() {
            for i in ifs.iter() {
                let name = i.name().to_string_lossy().to_string();
                if tc_filter_prog_name(i.index(), true).as_deref() == Some(POD_PROGRAMS[0]) {
                    out.push(name);
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Attach sl_host_ingress/sl_host_egress to an external device (links
    /// pinned under `<pin_dir>/links/host/<ifname>_{ingress,egress}_v1`).
    pub fn attach_host(&self, ifname: &str, ifindex: u32) -> Result<(), DatapathError> {
        self.attach_kind(DevKind::Host, ifname, ifindex)
    }

    pub fn detach_host(&self, ifname: &str) -> Result<(), DatapathError> {
        self.detach_kind(DevKind::Host, ifname)
    }

    /// Attach the XDP program to an external device (link pinned under
    /// `<pin_dir>/links/xdp/<ifname>_v1`). A link pinned for the same
    /// device gets the program swapped in; attaching in another mode than
    /// the pinned link's detaches that one first.
    pub fn attach_xdp(&self, ifname: &str, ifindex: u32, mode: XdpMode) -> Result<&'static str, DatapathError> {
        valid_ifname(ifname)?;
        let pin_dir = self.pins()?;
        let pin = xdp_link_pin(pin_dir, ifname);
        let prog = obj_get(&prog_pin(pin_dir, XDP_PROGRAM))?;
        if pin.exists() {
            if let Ok(link) = obj_get(&pin) {
                if xdp_link_ifindex(link.as_fd()) == Some(ifindex) {
                    // SAFETY: both descriptors are valid for the call.
                    let r = unsafe { libbpf_sys::bpf_link_update(link.as_raw_fd(), prog.as_raw_fd(), std::ptr::null()) };
                    if r == 0 {
                        return Ok("adopted");
                    }
                }
                // SAFETY: a valid link descriptor; failure is fine.
                unsafe { libbpf_sys::bpf_link_detach(link.as_raw_fd()) };
            }
            std::fs::remove_file(&pin).map_err(DatapathError::io(format!("removing {}", pin.display())))?;
        }
        std::fs::create_dir_all(pin.parent().unwrap()).map_err(DatapathError::io("creating links/xdp"))?;
        // SAFETY: bpf_link_create_opts is plain data; zero is valid.
        let mut opts: libbpf_sys::bpf_link_create_opts = unsafe { std::mem::zeroed() };
        opts.sz = std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as _;
        opts.flags = mode.flags();
        // SAFETY: valid program descriptor and options.
        let fd = unsafe { libbpf_sys::bpf_link_create(prog.as_raw_fd(), ifindex as i32, libbpf_sys::BPF_XDP, &opts) };
        if fd < 0 {
            let e = sys_err(fd);
            let hint = if mode == XdpMode::Native && e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                " (the driver has no native XDP: use --xdp generic, or --xdp off to stay at tc)"
            } else if e.raw_os_error() == Some(libc::EBUSY) || e.raw_os_error() == Some(libc::EEXIST) {
                " (another XDP program is attached to the device)"
            } else {
                ""
            };
            return Err(DatapathError::Io { what: format!("attaching XDP ({mode:?}) to {ifname}{hint}"), source: e });
        }
        // SAFETY: fd is a fresh link descriptor that nothing else owns.
        let link = unsafe { OwnedFd::from_raw_fd(fd) };
        let c = cpath(&pin)?;
        // SAFETY: valid descriptor and NUL-terminated path.
        let r = unsafe { libbpf_sys::bpf_obj_pin(link.as_raw_fd(), c.as_ptr()) };
        if r != 0 {
            return Err(DatapathError::Io { what: format!("pinning {}", pin.display()), source: sys_err(r) });
        }
        Ok("attached")
    }

    /// Detach the XDP program from a device (removes its link pin).
    pub fn detach_xdp(&self, ifname: &str) -> Result<bool, DatapathError> {
        valid_ifname(ifname)?;
        unpin_link(&xdp_link_pin(self.pins()?, ifname))
    }

    /// Names of devices with a pinned XDP link.
    pub fn attached_xdp(&self) -> Vec<String> {
        let Ok(pin_dir) = self.pins() else { return Vec::new() };
        let mut out: Vec<String> = std::fs::read_dir(pin_dir.join("links").join("xdp"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().strip_suffix(&format!("_v{LAYOUT_VERSION}")).map(str::to_string))
            .collect();
        out.sort();
        out
    }

    /// Names of external devices with pinned host links.
    pub fn attached_host(&self) -> Vec<String> {
        self.pin_dir.as_deref().map(|p| attached_names(p, DevKind::Host)).unwrap_or_default()
    }

    pub fn set_endpoint(&self, ip: IpAddr, e: &EndpointEntry) -> Result<(), DatapathError> {
        let v = sl_ep_val { id: e.id, host_ifindex: e.host_ifindex, pod_mac: e.pod_mac, host_mac: e.host_mac, flags: 0 };
        self.ep
            .update(to_c(ip).as_bytes(), v.as_bytes(), MapFlags::ANY)
            .map_err(DatapathError::bpf(format!("writing endpoint {ip}")))
    }

    /// Ok if absent.
    pub fn delete_endpoint(&self, ip: IpAddr) -> Result<(), DatapathError> {
        match self.ep.delete(to_c(ip).as_bytes()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(DatapathError::Bpf { what: format!("deleting endpoint {ip}"), source: e }),
        }
    }

    pub fn endpoints(&self) -> Result<Vec<(IpAddr, EndpointEntry)>, DatapathError> {
        let mut out = Vec::new();
        for k in self.ep.keys() {
            let Some(v) = self.ep.lookup(&k, MapFlags::ANY).map_err(DatapathError::bpf("reading endpoints"))? else {
                continue; // deleted while we walked
            };
            if let (Some(k), Some(v)) = (sl_addr::from_bytes(&k), sl_ep_val::from_bytes(&v)) {
                out.push((
                    from_c(&k),
                    EndpointEntry { id: v.id, host_ifindex: v.host_ifindex, host_mac: v.host_mac, pod_mac: v.pod_mac },
                ));
            }
        }
        out.sort_by_key(|(a, _)| *a);
        Ok(out)
    }

    /// Replace the node configuration (one map write: the datapath sees the
    /// old or the new configuration, never a mix). Call it at agent start:
    /// the map starts all zero (no masquerade).
    pub fn set_node_config(&self, c: &NodeConfig) -> Result<(), DatapathError> {
        let v = node_cfg_to_c(c)?;
        self.cfg
            .update(&0u32.to_ne_bytes(), v.as_bytes(), MapFlags::ANY)
            .map_err(DatapathError::bpf("writing the node configuration"))
    }

    pub fn node_config(&self) -> Result<NodeConfig, DatapathError> {
        let v = self
            .cfg
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(DatapathError::bpf("reading the node configuration"))?
            .and_then(|b| sl_node_cfg::from_bytes(&b))
            .unwrap_or_default();
        Ok(node_cfg_from_c(&v))
    }

    /// The conntrack and NAT maps, for the sweep ([`crate::ctgc`]).
    pub fn gc_maps(&self) -> (&MapHandle, &MapHandle) {
        (&self.ct, &self.snat)
    }

    /// Every conntrack entry, expired ones included.
    pub fn ct_entries(&self) -> Result<Vec<CtEntry>, DatapathError> {
        let mut out = Vec::new();
        for k in self.ct.keys() {
            let Some(v) = self.ct.lookup(&k, MapFlags::ANY).map_err(DatapathError::bpf("reading conntrack"))? else {
                continue;
            };
            if let (Some(k), Some(v)) = (sl_ct_key::from_bytes(&k), sl_ct_val::from_bytes(&v)) {
                out.push(CtEntry {
                    src: SocketAddr::new(from_c(&k.saddr), u16::from_be(k.sport)),
                    dst: SocketAddr::new(from_c(&k.daddr), u16::from_be(k.dport)),
                    proto: k.proto,
                    reverse: k.dir == 1,
                    nat: SocketAddr::new(from_c(&v.nat_addr), u16::from_be(v.nat_port)),
                    backend_id: v.backend_id,
                    rev_nat_id: v.rev_nat_id,
                    closing: v.flags & 1 != 0,
                    kind: ct_kind(v.flags).to_string(),
                    lifetime_s: v.lifetime_s,
                    last_seen_ns: v.last_seen_ns,
                });
            }
        }
        Ok(out)
    }

    /// Every masquerade entry, expired ones included.
    pub fn nat_entries(&self) -> Result<Vec<NatEntry>, DatapathError> {
        let mut out = Vec::new();
        for k in self.snat.keys() {
            let Some(v) = self.snat.lookup(&k, MapFlags::ANY).map_err(DatapathError::bpf("reading NAT"))? else {
                continue;
            };
            if let (Some(k), Some(v)) = (sl_nat_key::from_bytes(&k), sl_nat_val::from_bytes(&v)) {
                out.push(NatEntry {
                    src: SocketAddr::new(host_addr(&k.saddr), u16::from_be(k.sport)),
                    dst: SocketAddr::new(host_addr(&k.daddr), u16::from_be(k.dport)),
                    proto: k.proto,
                    inbound: k.dir == 1,
                    nat: SocketAddr::new(host_addr(&v.addr), u16::from_be(v.port)),
                    closing: v.flags & 1 != 0,
                    kind: if v.flags & (1 << 1) != 0 { "nodeport" } else { "masquerade" }.to_string(),
                    lifetime_s: v.lifetime_s,
                    last_seen_ns: v.last_seen_ns,
                });
            }
        }
        Ok(out)
    }
}

/// Load the pod and host objects with every map at its pin under
/// `pin_dir`, pin the programs at `progs/<prog>_v1`, and swap them into
/// the device links an earlier agent pinned. Used by
/// [`crate::loader::install`]; on its own for tests that want pinned pod
/// programs without the socket hooks.
pub fn install_devices(pin_dir: &Path, host_netns_cookie: u64) -> Result<(Vec<String>, Vec<LinkStatus>), DatapathError> {
    install_devices_sized(pin_dir, host_netns_cookie, crate::loader::DEFAULT_MAGLEV_SIZE)
}

/// [`install_devices`] with Maglev tables of `maglev_size` slots.
pub fn install_devices_sized(
    pin_dir: &Path,
    host_netns_cookie: u64,
    maglev_size: u32,
) -> Result<(Vec<String>, Vec<LinkStatus>), DatapathError> {
    let (adopted, links, _) = install_devices_with(pin_dir, host_netns_cookie, maglev_size, &crate::loader::TableSizes::default())?;
    Ok((adopted, links))
}

/// Adopted maps, device links, warnings.
pub type DevicesInstalled = (Vec<String>, Vec<LinkStatus>, Vec<String>);

/// [`install_devices_sized`] with conntrack and NAT tables of `tables`
/// sizes; also returns warnings (a table pinned with another size).
pub fn install_devices_with(
    pin_dir: &Path,
    host_netns_cookie: u64,
    maglev_size: u32,
    tables: &crate::loader::TableSizes,
) -> Result<DevicesInstalled, DatapathError> {
    crate::fsutil::ensure_bpffs(pin_dir)?;
    let mut adopted = Vec::new();
    let mut warnings = Vec::new();

    let mut lxc_storage = Box::new(MaybeUninit::<OpenObject>::uninit());
    let mut open = LxcSkelBuilder::default().open(&mut lxc_storage).map_err(DatapathError::bpf("opening the pod object"))?;
    if let Some(ro) = open.maps.rodata_data.as_deref_mut() {
        ro.sl_host_netns_cookie = host_netns_cookie;
        ro.sl_maglev_m = maglev_size;
    }
    let _lxc_template = prepare_pinned(open.open_object_mut(), pin_dir, maglev_size, tables, &mut adopted, &mut warnings)?;
    let lxc = open.load().map_err(load_failed("pod datapath"))?;
    pin_progs(lxc.object(), pin_dir, &POD_PROGRAMS)?;

    // The pod object has just created or reused the pins: the same sizes
    // and settings for the others.
    let mut host_storage = Box::new(MaybeUninit::<OpenObject>::uninit());
    let mut open = HostSkelBuilder::default().open(&mut host_storage).map_err(DatapathError::bpf("opening the host object"))?;
    if let Some(ro) = open.maps.rodata_data.as_deref_mut() {
        ro.sl_host_netns_cookie = host_netns_cookie;
        ro.sl_maglev_m = maglev_size;
    }
    let _host_template = prepare_pinned(open.open_object_mut(), pin_dir, maglev_size, tables, &mut adopted, &mut warnings)?;
    let host = open.load().map_err(load_failed("host datapath"))?;
    pin_progs(host.object(), pin_dir, &HOST_PROGRAMS)?;

    let mut xdp_storage = Box::new(MaybeUninit::<OpenObject>::uninit());
    let mut open = XdpSkelBuilder::default().open(&mut xdp_storage).map_err(DatapathError::bpf("opening the XDP object"))?;
    if let Some(ro) = open.maps.rodata_data.as_deref_mut() {
        ro.sl_host_netns_cookie = host_netns_cookie;
        ro.sl_maglev_m = maglev_size;
    }
    let _xdp_template = prepare_pinned(open.open_object_mut(), pin_dir, maglev_size, tables, &mut adopted, &mut warnings)?;
    let xdp = open.load().map_err(load_failed("XDP datapath"))?;
    pin_progs(xdp.object(), pin_dir, &[XDP_PROGRAM])?;

    let links = adopt_device_links(pin_dir)?;
    adopted.sort();
    adopted.dedup();
    Ok((adopted, links, warnings))
}

/// Make `obj` use the shared maps (crate::loader::MAPS) of objects already
/// loaded, the first that has each.
fn share_maps(obj: &mut OpenObject, loaded: &[&libbpf_rs::Object]) -> Result<(), DatapathError> {
    for mut m in obj.maps_mut() {
        let name = m.name().to_string_lossy().to_string();
        if !crate::loader::MAPS.contains(&name.as_str()) {
            continue;
        }
        if let Some(shared) = loaded.iter().find_map(|o| o.maps().find(|x| x.name().to_string_lossy() == name)) {
            m.reuse_fd(shared.as_fd()).map_err(DatapathError::bpf(format!("sharing {name}")))?;
        }
    }
    Ok(())
}

/// Before loading one device object with pins: pin paths (pinned maps are
/// adopted), the Maglev inner-map template (returned: it must outlive the
/// load) and the conntrack/NAT sizes (warnings added to `warnings`).
fn prepare_pinned(
    obj: &mut OpenObject,
    pin_dir: &Path,
    maglev_size: u32,
    tables: &crate::loader::TableSizes,
    adopted: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Result<Option<MapHandle>, DatapathError> {
    set_pin_paths(obj, pin_dir, adopted)?;
    let template = crate::loader::size_maglev_template(obj, maglev_size)?;
    add_new(warnings, crate::loader::size_tables(obj, Some(pin_dir), tables)?);
    Ok(template)
}

/// The error of loading `what` against the pins.
fn load_failed(what: &str) -> impl FnOnce(libbpf_rs::Error) -> DatapathError + '_ {
    move |e| DatapathError::Bpf {
        what: format!("loading the {what} (a map pinned with another layout is refused: remove it with `sluice datapath uninstall`)"),
        source: e,
    }
}

/// Append the warnings of `more` not already in `warnings`.
fn add_new(warnings: &mut Vec<String>, more: Vec<String>) {
    for w in more {
        if !warnings.contains(&w) {
            warnings.push(w);
        }
    }
}

fn set_pin_paths(obj: &mut OpenObject, pin_dir: &Path, adopted: &mut Vec<String>) -> Result<(), DatapathError> {
    for mut m in obj.maps_mut() {
        let name = m.name().to_string_lossy().to_string();
        if !crate::loader::MAPS.contains(&name.as_str()) {
            continue; // .rodata and friends are per-load
        }
        let path = map_pin(pin_dir, &name);
        if path.exists() {
            adopted.push(name.clone());
        }
        m.set_pin_path(&path).map_err(DatapathError::bpf(format!("pin path for {name}")))?;
    }
    Ok(())
}

fn pin_progs(obj: &libbpf_rs::Object, pin_dir: &Path, names: &[&str]) -> Result<(), DatapathError> {
    for prog in obj.progs_mut() {
        let name = prog.name().to_string_lossy().to_string();
        if !names.contains(&name.as_str()) {
            continue;
        }
        let pin = prog_pin(pin_dir, &name);
        if pin.exists() {
            std::fs::remove_file(&pin).map_err(DatapathError::io(format!("removing {}", pin.display())))?;
        }
        let mut prog = prog;
        prog.pin(&pin).map_err(DatapathError::bpf(format!("pinning {}", pin.display())))?;
    }
    Ok(())
}

/// A program of [`LoadedDevices`] to run a packet through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceProgram {
    /// `sl_from_pod`: what a pod sends (tcx ingress of its host veth).
    FromPod,
    /// `sl_to_pod`: what the stack sends into a pod (tcx egress).
    ToPod,
    /// `sl_host_ingress`: arriving at the node's external device.
    HostIngress,
    /// `sl_host_egress`: leaving through the node's external device.
    HostEgress,
    /// `sl_host_xdp`: the external device's XDP program (run with
    /// [`LoadedDevices::run_xdp`] to give it an ingress device).
    Xdp,
}

/// The verdict and the packet as the program left it.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub verdict: u32,
    pub packet: Vec<u8>,
}

/// The pod and host objects loaded without pins, sharing their maps: a
/// fresh datapath for tests (and, later, a simulator). Nothing is attached.
pub struct LoadedDevices {
    lxc: LxcSkel<'static>,
    host: HostSkel<'static>,
    xdp: XdpSkel<'static>,
}

impl LoadedDevices {
    pub fn load() -> Result<LoadedDevices, DatapathError> {
        Self::load_sized(crate::loader::DEFAULT_MAGLEV_SIZE)
    }

    /// [`LoadedDevices::load`] with Maglev tables of `maglev_size` slots.
    pub fn load_sized(maglev_size: u32) -> Result<LoadedDevices, DatapathError> {
        // The skeletons borrow their OpenObject storage for their whole
        // life; leaking the (pointer-sized) holder gives it 'static. The
        // BPF objects themselves are freed when the skeletons drop.
        let lxc_storage: &'static mut MaybeUninit<OpenObject> = Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = LxcSkelBuilder::default().open(lxc_storage).map_err(DatapathError::bpf("opening the pod object"))?;
        if let Some(ro) = open.maps.rodata_data.as_deref_mut() {
            ro.sl_maglev_m = maglev_size;
        }
        let _template = crate::loader::size_maglev_template(open.open_object_mut(), maglev_size)?;
        let lxc = open.load().map_err(DatapathError::bpf("loading the pod object"))?;

        let host_storage: &'static mut MaybeUninit<OpenObject> = Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = HostSkelBuilder::default().open(host_storage).map_err(DatapathError::bpf("opening the host object"))?;
        if let Some(ro) = open.maps.rodata_data.as_deref_mut() {
            ro.sl_maglev_m = maglev_size;
        }
        share_maps(open.open_object_mut(), &[lxc.object()])?;
        let host = open.load().map_err(DatapathError::bpf("loading the host object"))?;

        let xdp_storage: &'static mut MaybeUninit<OpenObject> = Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = XdpSkelBuilder::default().open(xdp_storage).map_err(DatapathError::bpf("opening the XDP object"))?;
        if let Some(ro) = open.maps.rodata_data.as_deref_mut() {
            ro.sl_maglev_m = maglev_size;
        }
        share_maps(open.open_object_mut(), &[lxc.object(), host.object()])?;
        let xdp = open.load().map_err(DatapathError::bpf("loading the XDP object"))?;
        Ok(LoadedDevices { lxc, host, xdp })
    }

    /// A map of either object by name, as a handle of its own.
    pub fn map(&self, name: &str) -> Result<MapHandle, DatapathError> {
        let found = self
            .lxc
            .object()
            .maps()
            .find(|m| m.name().to_string_lossy() == name)
            .or_else(|| self.host.object().maps().find(|m| m.name().to_string_lossy() == name));
        match found {
            Some(m) => MapHandle::try_from(&m).map_err(DatapathError::bpf(format!("handle for {name}"))),
            None => Err(DatapathError::Other(format!("no map {name} in the pod and host objects"))),
        }
    }

    /// The pod maps through the agent's API (attach is refused: no pins).
    pub fn pod_datapath(&self) -> Result<PodDatapath, DatapathError> {
        PodDatapath::from_source(&|n| self.map(n))
    }

    /// The service maps through the agent's API.
    pub fn lb_maps(&self) -> Result<KernelMaps, DatapathError> {
        KernelMaps::from_source(&|n| self.map(n))
    }

    pub fn metrics(&self) -> Result<Vec<Metric>, DatapathError> {
        self.lb_maps()?.metrics()
    }

    /// Run one packet (an Ethernet frame) through a program with
    /// `BPF_PROG_TEST_RUN`. Redirects are reported, not performed.
    pub fn run(&self, prog: DeviceProgram, packet: &[u8]) -> Result<RunResult, DatapathError> {
        let p = match prog {
            DeviceProgram::FromPod => &self.lxc.progs.sl_from_pod,
            DeviceProgram::ToPod => &self.lxc.progs.sl_to_pod,
            DeviceProgram::HostIngress => &self.host.progs.sl_host_ingress,
            DeviceProgram::HostEgress => &self.host.progs.sl_host_egress,
            DeviceProgram::Xdp => return self.run_xdp(packet, 0),
        };
        let mut out = vec![0u8; packet.len() + 512];
        let input = libbpf_rs::ProgramInput { data_in: Some(packet), data_out: Some(&mut out), ..Default::default() };
        let o = p.test_run(input).map_err(DatapathError::bpf(format!("test run of {prog:?}")))?;
        let n = o.data.as_ref().map(|d| d.len()).unwrap_or(0);
        let verdict = o.return_value;
        out.truncate(n);
        Ok(RunResult { verdict, packet: out })
    }

    /// Run one frame through the XDP program as if it arrived on the
    /// device `ingress_ifindex` (of the calling thread's network
    /// namespace; 0: none). Redirects are reported, not performed.
    pub fn run_xdp(&self, packet: &[u8], ingress_ifindex: u32) -> Result<RunResult, DatapathError> {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(packet.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        let mut out = vec![0u8; packet.len() + 512];
        let input = libbpf_rs::ProgramInput {
            data_in: Some(packet),
            data_out: Some(&mut out),
            context_in: if ingress_ifindex != 0 { Some(&mut ctx) } else { None },
            ..Default::default()
        };
        let o = self.xdp.progs.sl_host_xdp.test_run(input).map_err(DatapathError::bpf("test run of the XDP program"))?;
        let n = o.data.as_ref().map(|d| d.len()).unwrap_or(0);
        let verdict = o.return_value;
        out.truncate(n);
        Ok(RunResult { verdict, packet: out })
    }
}

/// XDP verdicts (`enum xdp_action`).
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;
