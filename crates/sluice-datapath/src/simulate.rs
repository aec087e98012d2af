//! `sluice lb simulate` on the live maps: [`sluice_lb::simulate`] reading
//! the pinned maps one lookup at a time (works while the agent is down).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use libbpf_rs::{MapCore, MapFlags, MapHandle};
use sluice_lb::simulate::{CtFwd, RawSvcKey, SimAffinity, SimEndpoint, SimError, SimMaglevSlot, SimNodeCfg, SimSource, Tuple, CT_DIR_FWD};
use sluice_lb::{BackendKey, SvcVal};

use crate::encode::{addr_octets, backend_from_c, svc_val_from_c, Pod};
use crate::lbmaps::MAGLEV_MAP;
use crate::loader::{check_sizes, open_pinned};
use crate::pod::{PodDatapath, CT_MAP, EP_MAP};
use crate::skel::types::{sl_addr, sl_affinity_key, sl_affinity_val, sl_backend, sl_svc_key, sl_svc_val};
use crate::skel_lxc::types::{sl_ct_key, sl_ct_val, sl_ep_val};
use crate::DatapathError;

// SAFETY: generated from BTF of structs with explicit padding only.
unsafe impl Pod for sl_affinity_key {}
unsafe impl Pod for sl_affinity_val {}

/// The maps the simulation reads.
pub struct KernelSim {
    pod: PodDatapath,
    svc: MapHandle,
    be: MapHandle,
    maglev: MapHandle,
    node: MapHandle,
    aff: MapHandle,
    affm: MapHandle,
    ep: MapHandle,
    ct: MapHandle,
    /// Pod device names by ifindex, from the pinned links (the agent's
    /// namespace, which need not be the caller's).
    devices: std::collections::HashMap<u32, String>,
}

fn checked<K, V>(get: &dyn Fn(&str) -> Result<MapHandle, DatapathError>, name: &str) -> Result<MapHandle, DatapathError> {
    let h = get(name)?;
    check_sizes(&h, name, std::mem::size_of::<K>(), std::mem::size_of::<V>())?;
    Ok(h)
}

fn lookup(m: &MapHandle, key: &[u8], what: &str) -> Result<Option<Vec<u8>>, SimError> {
    m.lookup(key, MapFlags::ANY).map_err(|e| format!("reading {what}: {e}").into())
}

fn c_addr(a: IpAddr) -> sl_addr {
    sl_addr { b: addr_octets(a) }
}

impl KernelSim {
    /// The maps pinned under `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<KernelSim, DatapathError> {
        let mut s = Self::from_source(&|name| open_pinned(pin_dir, name))?;
        s.devices = crate::pod::pod_device_names(pin_dir);
        Ok(s)
    }

    /// Names of pod host devices by ifindex (from the agent's endpoint
    /// list: the devices live in its network namespace).
    pub fn add_device_names(&mut self, names: impl IntoIterator<Item = (u32, String)>) {
        self.devices.extend(names);
    }

    /// The maps as `get` finds them by name (tests: an unpinned load).
    pub fn from_source(get: &dyn Fn(&str) -> Result<MapHandle, DatapathError>) -> Result<KernelSim, DatapathError> {
        use crate::skel::types::{sl_affinity_match_key, sl_node_addr_val};
        Ok(KernelSim {
            pod: PodDatapath::from_source(get)?,
            svc: checked::<sl_svc_key, sl_svc_val>(get, "sl_lb_svc_v1")?,
            be: checked::<u32, sl_backend>(get, "sl_lb_be_v1")?,
            maglev: checked::<u32, u32>(get, MAGLEV_MAP)?,
            node: checked::<sl_addr, sl_node_addr_val>(get, "sl_node_addr_v1")?,
            aff: checked::<sl_affinity_key, sl_affinity_val>(get, "sl_lb_aff_v1")?,
            affm: checked::<sl_affinity_match_key, u32>(get, "sl_lb_affm_v1")?,
            ep: checked::<sl_addr, sl_ep_val>(get, EP_MAP)?,
            ct: checked::<sl_ct_key, sl_ct_val>(get, CT_MAP)?,
            devices: Default::default(),
        })
    }
}

impl SimSource for KernelSim {
    fn service(&self, k: &RawSvcKey) -> Result<Option<SvcVal>, SimError> {
        let key = sl_svc_key { addr: c_addr(k.addr), dport: k.port.to_be(), proto: k.proto.number(), scope: k.scope, slot: k.slot, pad: 0 };
        Ok(lookup(&self.svc, key.as_bytes(), "services")?.and_then(|v| sl_svc_val::from_bytes(&v)).map(|v| svc_val_from_c(&v)))
    }

    fn backend(&self, id: u32) -> Result<Option<BackendKey>, SimError> {
        Ok(lookup(&self.be, &id.to_ne_bytes(), "backends")?.and_then(|v| sl_backend::from_bytes(&v)).map(|b| backend_from_c(&b)))
    }

    fn maglev_slot(&self, rev_nat_id: u32, hash: u32) -> Result<Option<SimMaglevSlot>, SimError> {
        let Some(v) = lookup(&self.maglev, &rev_nat_id.to_ne_bytes(), "Maglev tables")? else { return Ok(None) };
        let Some(id) = u32::from_bytes(&v) else { return Ok(None) };
        let inner = match MapHandle::from_map_id(id) {
            Ok(h) => h,
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("opening Maglev table {id}: {e}").into()),
        };
        let size = inner.max_entries();
        if size == 0 {
            return Ok(None);
        }
        let slot = hash % size;
        let Some(b) = lookup(&inner, &slot.to_ne_bytes(), "a Maglev table")? else { return Ok(None) };
        Ok(u32::from_bytes(&b).map(|backend_id| SimMaglevSlot { size, backend_id }))
    }

    fn is_node_addr(&self, a: IpAddr) -> Result<bool, SimError> {
        Ok(lookup(&self.node, c_addr(a).as_bytes(), "node addresses")?.is_some())
    }

    fn endpoint(&self, a: IpAddr) -> Result<Option<SimEndpoint>, SimError> {
        Ok(lookup(&self.ep, c_addr(a).as_bytes(), "endpoints")?
            .and_then(|v| sl_ep_val::from_bytes(&v))
            .map(|e| SimEndpoint { id: e.id, host_ifindex: e.host_ifindex, host_ifname: self.devices.get(&e.host_ifindex).cloned() }))
    }

    fn node_cfg(&self) -> Result<SimNodeCfg, SimError> {
        let c = self.pod.node_config()?;
        Ok(SimNodeCfg { masq4: c.masq_ip4, masq6: c.masq_ip6, snat_ports: c.snat_ports })
    }

    fn ct_fwd(&self, t: &Tuple) -> Result<Option<CtFwd>, SimError> {
        let a = |x: IpAddr| crate::skel_lxc::types::sl_addr { b: addr_octets(x) };
        let key = sl_ct_key {
            saddr: a(t.src.ip()),
            daddr: a(t.dst.ip()),
            sport: t.src.port().to_be(),
            dport: t.dst.port().to_be(),
            proto: t.proto.number(),
            dir: CT_DIR_FWD,
            pad: 0,
        };
        Ok(lookup(&self.ct, key.as_bytes(), "conntrack")?.and_then(|v| sl_ct_val::from_bytes(&v)).map(|v| {
            // SAFETY: both union members are plain bytes of the same size.
            let nat = crate::encode::addr_from_octets(unsafe { v.nat_addr.b });
            CtFwd {
                nat: SocketAddr::new(nat, u16::from_be(v.nat_port)),
                backend_id: v.backend_id,
                rev_nat_id: v.rev_nat_id,
                flags: v.flags,
                lifetime_s: v.lifetime_s,
                last_seen_ns: v.last_seen_ns,
            }
        }))
    }

    fn affinity(&self, client: u64, rev_nat_id: u32) -> Result<Option<SimAffinity>, SimError> {
        let key = sl_affinity_key { client, rev_nat_id, pad: 0 };
        Ok(lookup(&self.aff, key.as_bytes(), "affinity")?
            .and_then(|v| sl_affinity_val::from_bytes(&v))
            .map(|v| SimAffinity { backend_id: v.backend_id, last_used_ns: v.last_used_ns }))
    }

    fn affinity_match(&self, backend_id: u32, rev_nat_id: u32) -> Result<bool, SimError> {
        let key = crate::skel::types::sl_affinity_match_key { backend_id, rev_nat_id };
        Ok(lookup(&self.affm, key.as_bytes(), "affinity matches")?.is_some())
    }

    fn now_ns(&self) -> u64 {
        crate::ctgc::monotonic_ns()
    }
}
