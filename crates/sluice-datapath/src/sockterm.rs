//! Socket termination on demand: destroy the TCP and connected UDP sockets
//! connected to a destination, in every network namespace given.
//!
//! Kernel requirements: TCP and UDP socket iterators (5.9+) and the
//! `bpf_sock_destroy` kfunc (6.5+).
//!
//! Cost: an iterator walks the socket tables of one network namespace, so a
//! call costs one walk per namespace: O(namespaces x sockets per namespace).

use std::io::Read;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Iter, Link, OpenObject};
use serde::{Deserialize, Serialize};
use sluice_lb::Protocol;

use crate::encode::{addr_from_octets, addr_octets, Pod};
use crate::skel_term::types::{sl_addr, sl_term_doomed_key, sl_term_filter, sl_term_record};
use libbpf_rs::MapCore;
use sluice_lb::BackendKey;
use crate::skel_term::SockTermSkelBuilder;
use crate::DatapathError;

// SAFETY: generated from BTF of structs with explicit padding only.
unsafe impl Pod for sl_term_record {}
unsafe impl Pod for sl_term_doomed_key {}

/// This object's own copy of `union sl_addr` (each skeleton generates one).
fn to_c(a: IpAddr) -> sl_addr {
    sl_addr { b: addr_octets(a) }
}

fn from_c(a: &sl_addr) -> IpAddr {
    // SAFETY: both union members are plain bytes of the same size.
    addr_from_octets(unsafe { a.b })
}

/// Which sockets to end.
#[derive(Debug, Clone)]
pub enum TermTarget {
    /// Every TCP and connected UDP socket connected to `dst` (any port when `None`).
    Dst { dst: IpAddr, port: Option<u16> },
    /// Sockets that went through frontend `.0` (by its id) to backend `.1`,
    /// as recorded at connect in the socket's storage.
    Backends(Vec<(u32, BackendKey)>),
}

#[derive(Debug, Clone)]
pub struct TermFilter {
    pub target: TermTarget,
    /// Report the sockets without destroying them.
    pub dry_run: bool,
    /// Pin directory of the datapath, whose socket records to read
    /// (required for `TermTarget::Backends`).
    pub pin_dir: Option<PathBuf>,
}

/// One socket that matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermRecord {
    pub netns: String,
    pub proto: Protocol,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// Kernel TCP state number (1 = established).
    pub state: u8,
    pub destroyed: bool,
    /// `bpf_sock_destroy()`'s result (negative errno), 0 when not called.
    pub err: i32,
    /// The frontend id the socket went through, 0 if it went to `dst` directly.
    pub frontend_id: u32,
}

/// Every network namespace on the machine that has a process in it or a
/// name under /run/netns, deduplicated; the caller's own first.
pub fn all_namespaces() -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    let mut consider = |p: PathBuf| {
        if let Ok(m) = std::fs::metadata(&p) {
            if seen.insert((m.dev(), m.ino())) {
                out.push(p);
            }
        }
    };
    consider(PathBuf::from("/proc/self/ns/net"));
    if let Ok(rd) = std::fs::read_dir("/run/netns") {
        let mut names: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        names.sort();
        names.into_iter().for_each(&mut consider);
    }
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                consider(e.path().join("ns/net"));
            }
        }
    }
    out
}

/// Destroy (or, in a dry run, list) the sockets matching `filter` in each
/// namespace of `namespaces` (paths to namespace files).
pub fn terminate(filter: &TermFilter, namespaces: &[PathBuf]) -> Result<Vec<TermRecord>, DatapathError> {
    let mut storage = Box::new(MaybeUninit::<OpenObject>::uninit());
    let mut open = SockTermSkelBuilder::default()
        .open(&mut storage)
        .map_err(DatapathError::bpf("opening the socket-termination object"))?;
    let rodata = open
        .maps
        .rodata_data
        .as_deref_mut()
        .ok_or_else(|| DatapathError::Other("the socket-termination object has no .rodata".into()))?;
    let (dst, port, mode) = match &filter.target {
        TermTarget::Dst { dst, port } => (*dst, port.unwrap_or(0), 0),
        TermTarget::Backends(_) => (IpAddr::from([0u8; 16]), 0, 1),
    };
    rodata.sl_term_filter = sl_term_filter { dst: to_c(dst), dport: port.to_be(), dry_run: filter.dry_run as u8, mode, pad2: 0 };
    // The socket records live in the datapath's pinned map.
    if let Some(pin_dir) = &filter.pin_dir {
        let pin = crate::loader::map_pin(pin_dir, "sl_sock_lb_v1");
        if pin.exists() {
            open.maps
                .sl_sock_lb_v1
                .reuse_pinned_map(&pin)
                .map_err(DatapathError::bpf(format!("reusing {}", pin.display())))?;
        } else if mode == 1 {
            return Err(DatapathError::Other(format!("{} is missing: is the datapath installed?", pin.display())));
        }
    }
    let skel = open.load().map_err(DatapathError::bpf("loading the socket iterators"))?;
    if let TermTarget::Backends(list) = &filter.target {
        for (id, b) in list {
            let k = sl_term_doomed_key { rev_nat_id: *id, port: b.port.to_be(), pad: 0, addr: to_c(b.addr) };
            skel.maps
                .sl_term_doomed
                .update(k.as_bytes(), &1u32.to_ne_bytes(), libbpf_rs::MapFlags::ANY)
                .map_err(DatapathError::bpf("filling the doomed-backend map"))?;
        }
    }
    let tcp = skel.progs.sl_term_tcp.attach().map_err(DatapathError::bpf("attaching the TCP iterator"))?;
    let udp = skel.progs.sl_term_udp.attach().map_err(DatapathError::bpf("attaching the UDP iterator"))?;

    let mut out = Vec::new();
    for ns in namespaces {
        let name = ns.display().to_string();
        // The iterator walks the namespace of the thread that opens it.
        let bytes = std::thread::scope(|s| {
            s.spawn(|| -> Result<Vec<u8>, DatapathError> {
                enter_netns(ns)?;
                let mut buf = Vec::new();
                for link in [&tcp, &udp] {
                    read_iter(link, &mut buf)?;
                }
                Ok(buf)
            })
            .join()
            .map_err(|_| DatapathError::Other("socket iterator thread panicked".into()))?
        })?;
        let size = std::mem::size_of::<sl_term_record>();
        for chunk in bytes.chunks_exact(size) {
            let r = sl_term_record::from_bytes(chunk).expect("sized chunk");
            out.push(TermRecord {
                netns: name.clone(),
                proto: Protocol::from_number(r.proto).unwrap_or(Protocol::TCP),
                src: SocketAddr::new(from_c(&r.src), r.sport),
                dst: SocketAddr::new(from_c(&r.dst), u16::from_be(r.dport)),
                state: r.state,
                destroyed: r.destroyed != 0,
                err: r.err,
                frontend_id: r.rev_nat_id,
            });
        }
    }
    Ok(out)
}

fn enter_netns(ns: &Path) -> Result<(), DatapathError> {
    let f = std::fs::File::open(ns).map_err(DatapathError::io(format!("opening {}", ns.display())))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| DatapathError::Other(format!("entering {}: {e}", ns.display())))
}

fn read_iter(link: &Link, buf: &mut Vec<u8>) -> Result<(), DatapathError> {
    let mut it = Iter::new(link).map_err(DatapathError::bpf("creating a socket iterator"))?;
    it.read_to_end(buf).map_err(DatapathError::io("reading a socket iterator"))?;
    Ok(())
}
