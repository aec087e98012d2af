//! The kernel's load-balancing maps, opened from their pins.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use std::os::fd::{AsFd, AsRawFd};

use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};
use serde::{Deserialize, Serialize};
use sluice_lb::{LbDump, LbMaps, MapOp};

use crate::encode::*;
use crate::loader::{check_sizes, open_pinned};
use crate::skel::types::{
    sl_affinity_match_key, sl_addr, sl_backend, sl_revnat, sl_svc_key, sl_svc_val,
};
use crate::DatapathError;

/// Counter names, indexed like `enum sl_metric` in `bpf/include/metrics.h`.
pub const METRIC_NAMES: &[&str] = &[
    "translated_connect",
    "translated_sendmsg",
    "revnat_recvmsg",
    "revnat_getpeername",
    "reject_no_backend",
    "reject_backend_missing",
    "affinity_hit",
    "revnat_map_full",
    "reject_family_mismatch",
    "sock_storage_full",
    "pod_redirect_peer",
    "svc_dnat",
    "svc_rev_dnat",
    "snat",
    "rev_snat",
    "ct_repick",
    "snat_no_addr",
    "drop_malformed",
    "drop_no_backend",
    "drop_backend_missing",
    "drop_family_mismatch",
    "drop_ct_map_full",
    "drop_snat_ports_exhausted",
    "drop_nat_map_full",
    "drop_rewrite_failed",
    "host_malformed_passed",
    "maglev_pick",
    "maglev_fallback",
    "nodeport_local",
    "nodeport_snat",
    "nodeport_dsr",
    "nodeport_reply",
    "dsr_backend",
    "fib_redirect",
    "fib_pass",
    "drop_no_local_backend",
    "drop_dsr_insert",
    "drop_no_node_addr",
    "drop_nat_orphan",
    "xdp_forward",
    "xdp_pass",
    "icmp_error_xlate",
    "clusterip_from_outside",
    "ct_stale_removed",
];

/// The counters map (`bpf/include/metrics.h`); version 2 has 64 entries.
pub const METRICS_MAP: &str = "sl_metrics_v2";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metric {
    pub name: String,
    pub value: u64,
}

pub struct KernelMaps {
    svc: MapHandle,
    be: MapHandle,
    rnat: MapHandle,
    skrn: MapHandle,
    affm: MapHandle,
    node: MapHandle,
    metrics: MapHandle,
    /// Maglev tables: frontend id -> inner array of backend ids.
    maglev: MapHandle,
}

/// The Maglev outer map (`bpf/include/maglev.h`).
pub const MAGLEV_MAP: &str = "sl_lb_maglev_v1";
/// Name of each inner table (names are for bpftool only; 15 bytes at most).
const MAGLEV_TABLE_NAME: &str = "sl_lb_mgl_tbl";

fn checked<K, V>(get: &dyn Fn(&str) -> Result<MapHandle, DatapathError>, name: &str) -> Result<MapHandle, DatapathError> {
    let h = get(name)?;
    check_sizes(&h, name, std::mem::size_of::<K>(), std::mem::size_of::<V>())?;
    Ok(h)
}

impl KernelMaps {
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        Self::from_source(&|name| open_pinned(pin_dir, name))
    }

    /// The maps as `get` finds them by name: the pins, or (tests, the
    /// simulator) the maps of an object loaded without pinning. Sizes are
    /// checked against this build either way.
    pub fn from_source(get: &dyn Fn(&str) -> Result<MapHandle, DatapathError>) -> Result<Self, DatapathError> {
        use crate::skel::types::{sl_sock_revnat_key, sl_sock_revnat_val, sl_node_addr_val, sl_metric_val};
        Ok(KernelMaps {
            svc: checked::<sl_svc_key, sl_svc_val>(get, "sl_lb_svc_v1")?,
            be: checked::<u32, sl_backend>(get, "sl_lb_be_v1")?,
            rnat: checked::<u32, sl_revnat>(get, "sl_lb_rnat_v1")?,
            skrn: checked::<sl_sock_revnat_key, sl_sock_revnat_val>(get, "sl_lb_skrn_v1")?,
            affm: checked::<sl_affinity_match_key, u32>(get, "sl_lb_affm_v1")?,
            node: checked::<sl_addr, sl_node_addr_val>(get, "sl_node_addr_v1")?,
            metrics: checked::<u32, sl_metric_val>(get, METRICS_MAP)?,
            maglev: checked::<u32, u32>(get, MAGLEV_MAP)?,
        })
    }

    /// Make the node-address map hold exactly `addrs`; returns whether it changed.
    pub fn set_node_addrs(&self, addrs: &BTreeSet<IpAddr>) -> Result<bool, DatapathError> {
        let have: BTreeSet<IpAddr> = self
            .node
            .keys()
            .filter_map(|k| sl_addr::from_bytes(&k))
            .map(|a| addr_from_c(&a))
            .collect();
        let zero = [0u8; 4];
        for a in addrs.difference(&have) {
            self.node
                .update(addr_to_c(*a).as_bytes(), &zero, MapFlags::ANY)
                .map_err(DatapathError::bpf(format!("adding node address {a}")))?;
        }
        for a in have.difference(addrs) {
            self.node
                .delete(addr_to_c(*a).as_bytes())
                .map_err(DatapathError::bpf(format!("removing node address {a}")))?;
        }
        Ok(have != *addrs)
    }

    pub fn node_addrs(&self) -> Vec<IpAddr> {
        self.node.keys().filter_map(|k| sl_addr::from_bytes(&k)).map(|a| addr_from_c(&a)).collect()
    }

    /// Sums of the per-CPU counters.
    pub fn metrics(&self) -> Result<Vec<Metric>, DatapathError> {
        let mut out = Vec::new();
        for (i, name) in METRIC_NAMES.iter().enumerate() {
            let per_cpu = self
                .metrics
                .lookup_percpu(&(i as u32).to_ne_bytes(), MapFlags::ANY)
                .map_err(DatapathError::bpf("reading counters"))?
                .unwrap_or_default();
            let value = per_cpu.iter().filter_map(|b| u64::from_bytes(&b[..8])).sum();
            out.push(Metric { name: name.to_string(), value });
        }
        Ok(out)
    }

    /// Entries in the per-socket reverse-translation map.
    pub fn sock_revnat_entries(&self) -> usize {
        self.skrn.keys().count()
    }
}

/// Largest batch handed to the kernel at once.
const BATCH: usize = 8192;

/// Write (slot, backend id) pairs into a Maglev table, in batches.
fn write_slots(table: &MapHandle, slots: &[(u32, u32)]) -> Result<(), libbpf_rs::Error> {
    for chunk in slots.chunks(BATCH) {
        let keys: Vec<u8> = chunk.iter().flat_map(|(i, _)| i.to_ne_bytes()).collect();
        let values: Vec<u8> = chunk.iter().flat_map(|(_, b)| b.to_ne_bytes()).collect();
        table.update_batch(&keys, &values, chunk.len() as u32, MapFlags::ANY, MapFlags::ANY)?;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Upsert(MapId),
    Delete(MapId),
    /// Maglev writes: one at a time (each is itself a batch of slots).
    Maglev,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MapId {
    Svc,
    Be,
    Rnat,
    Affm,
}

impl OpKind {
    fn of(op: &MapOp) -> OpKind {
        match op {
            MapOp::UpsertService(..) => OpKind::Upsert(MapId::Svc),
            MapOp::DeleteService(..) => OpKind::Delete(MapId::Svc),
            MapOp::UpsertBackend(..) => OpKind::Upsert(MapId::Be),
            MapOp::DeleteBackend(..) => OpKind::Delete(MapId::Be),
            MapOp::UpsertRevNat(..) => OpKind::Upsert(MapId::Rnat),
            MapOp::DeleteRevNat(..) => OpKind::Delete(MapId::Rnat),
            MapOp::UpsertAffinityMatch { .. } => OpKind::Upsert(MapId::Affm),
            MapOp::DeleteAffinityMatch { .. } => OpKind::Delete(MapId::Affm),
            MapOp::SetMaglev { .. } | MapOp::UpdateMaglevSlots { .. } | MapOp::DeleteMaglev(_) => OpKind::Maglev,
        }
    }
}

/// The key and value bytes of one write.
fn encode(op: &MapOp) -> (Vec<u8>, Vec<u8>) {
    match op {
        MapOp::UpsertService(k, v) => (svc_key_to_c(k).as_bytes().to_vec(), svc_val_to_c(v).as_bytes().to_vec()),
        MapOp::DeleteService(k) => (svc_key_to_c(k).as_bytes().to_vec(), Vec::new()),
        MapOp::UpsertBackend(id, b) => (id.as_bytes().to_vec(), backend_to_c(b).as_bytes().to_vec()),
        MapOp::DeleteBackend(id) => (id.as_bytes().to_vec(), Vec::new()),
        MapOp::UpsertRevNat(id, f) => (id.as_bytes().to_vec(), revnat_to_c(f).as_bytes().to_vec()),
        MapOp::DeleteRevNat(id) => (id.as_bytes().to_vec(), Vec::new()),
        MapOp::UpsertAffinityMatch { backend_id, rev_nat_id } => (
            sl_affinity_match_key { backend_id: *backend_id, rev_nat_id: *rev_nat_id }.as_bytes().to_vec(),
            1u32.to_ne_bytes().to_vec(),
        ),
        MapOp::DeleteAffinityMatch { backend_id, rev_nat_id } => (
            sl_affinity_match_key { backend_id: *backend_id, rev_nat_id: *rev_nat_id }.as_bytes().to_vec(),
            Vec::new(),
        ),
        MapOp::SetMaglev { .. } | MapOp::UpdateMaglevSlots { .. } | MapOp::DeleteMaglev(_) => {
            unreachable!("Maglev writes are not batched with others")
        }
    }
}

impl KernelMaps {
    fn map(&self, id: MapId) -> &MapHandle {
        match id {
            MapId::Svc => &self.svc,
            MapId::Be => &self.be,
            MapId::Rnat => &self.rnat,
            MapId::Affm => &self.affm,
        }
    }

    /// One Maglev write. A new table is a new inner array, filled with one
    /// batch and then published with one write to the outer map: the
    /// datapath sees the old table or the new one, never a mix. Changed
    /// slots are one batch into the existing table; each slot is read as
    /// either its old or its new backend, both valid at that point.
    fn apply_maglev(&self, op: &MapOp) -> Result<(), DatapathError> {
        let what = || format!("Maglev write {}", op.describe());
        match op {
            MapOp::SetMaglev { rev_nat_id, table } => {
                // The kernel stores an inner map only if its flags equal the
                // template's: BPF_F_INNER_MAP (see bpf/include/maglev.h).
                let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
                    sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
                    map_flags: libbpf_rs::libbpf_sys::BPF_F_INNER_MAP,
                    ..Default::default()
                };
                let inner = MapHandle::create(MapType::Array, Some(MAGLEV_TABLE_NAME), 4, 4, table.len() as u32, &opts)
                    .map_err(DatapathError::bpf(what()))?;
                let slots: Vec<(u32, u32)> = table.iter().enumerate().map(|(i, b)| (i as u32, *b)).collect();
                write_slots(&inner, &slots).map_err(DatapathError::bpf(what()))?;
                let fd = inner.as_fd().as_raw_fd() as u32;
                self.maglev.update(&rev_nat_id.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY).map_err(DatapathError::bpf(what()))
            }
            MapOp::UpdateMaglevSlots { rev_nat_id, slots } => {
                let inner = self.maglev_table_map(*rev_nat_id)?.ok_or_else(|| {
                    DatapathError::Other(format!("{}: frontend {rev_nat_id} has no Maglev table", what()))
                })?;
                write_slots(&inner, slots).map_err(DatapathError::bpf(what()))
            }
            MapOp::DeleteMaglev(id) => self.maglev.delete(&id.to_ne_bytes()).map_err(DatapathError::bpf(what())),
            _ => unreachable!("not a Maglev write"),
        }
    }

    /// The inner table of a frontend, opened by its map id.
    fn maglev_table_map(&self, rev_nat_id: u32) -> Result<Option<MapHandle>, DatapathError> {
        let Some(v) = self.maglev.lookup(&rev_nat_id.to_ne_bytes(), MapFlags::ANY).map_err(DatapathError::bpf("reading Maglev tables"))? else {
            return Ok(None);
        };
        let Some(id) = u32::from_bytes(&v) else { return Ok(None) };
        match MapHandle::from_map_id(id) {
            Ok(h) => Ok(Some(h)),
            // Replaced or deleted while we looked.
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(DatapathError::Bpf { what: format!("opening Maglev table {id}"), source: e }),
        }
    }

    /// Every Maglev table: frontend id -> backend id per slot.
    pub fn maglev_tables(&self) -> Result<std::collections::BTreeMap<u32, Vec<u32>>, DatapathError> {
        let mut out = std::collections::BTreeMap::new();
        for k in self.maglev.keys() {
            let Some(fe) = u32::from_bytes(&k) else { continue };
            let Some(inner) = self.maglev_table_map(fe)? else { continue };
            let n = inner.max_entries() as usize;
            let mut table = vec![0u32; n];
            let batch = inner.lookup_batch(n.clamp(1, BATCH) as u32, MapFlags::ANY, MapFlags::ANY).map_err(DatapathError::bpf("reading a Maglev table"))?;
            for (k, v) in batch {
                if let (Some(i), Some(b)) = (u32::from_bytes(&k), u32::from_bytes(&v)) {
                    if let Some(x) = table.get_mut(i as usize) {
                        *x = b;
                    }
                }
            }
            out.insert(fe, table);
        }
        Ok(out)
    }

    fn apply_run(&self, kind: OpKind, run: &[MapOp]) -> Result<(), DatapathError> {
        let mut keys = Vec::new();
        let mut values = Vec::new();
        for op in run {
            let (k, v) = encode(op);
            keys.extend(k);
            values.extend(v);
        }
        let n = run.len() as u32;
        let what = || format!("{} map writes starting with {}", run.len(), run[0].describe());
        match kind {
            OpKind::Maglev => unreachable!("Maglev writes are applied one at a time"),
            OpKind::Upsert(m) if n == 1 => self.map(m).update(&keys, &values, MapFlags::ANY),
            OpKind::Delete(m) if n == 1 => self.map(m).delete(&keys),
            OpKind::Upsert(m) => self.map(m).update_batch(&keys, &values, n, MapFlags::ANY, MapFlags::ANY),
            OpKind::Delete(m) => self.map(m).delete_batch(&keys, n, MapFlags::ANY, MapFlags::ANY),
        }
        .map_err(DatapathError::bpf(what()))
    }
}

impl LbMaps for KernelMaps {
    type Error = DatapathError;

    /// Runs of writes of one kind go to the kernel as one batch
    /// (`BPF_MAP_UPDATE_BATCH` / `BPF_MAP_DELETE_BATCH`, Linux 5.6+); the
    /// order of the runs is the order of `ops`.
    fn apply(&mut self, ops: &[MapOp]) -> Result<(), DatapathError> {
        let mut i = 0;
        while i < ops.len() {
            let kind = OpKind::of(&ops[i]);
            let mut j = i + 1;
            while j < ops.len() && OpKind::of(&ops[j]) == kind && j - i < BATCH {
                j += 1;
            }
            if kind == OpKind::Maglev {
                for op in &ops[i..j] {
                    self.apply_maglev(op)?;
                }
            } else {
                self.apply_run(kind, &ops[i..j])?;
            }
            i = j;
        }
        Ok(())
    }

    fn dump(&self) -> Result<LbDump, DatapathError> {
        let mut d = LbDump::default();
        for k in self.svc.keys() {
            let Some(v) = self.svc.lookup(&k, MapFlags::ANY).map_err(DatapathError::bpf("reading services"))? else {
                continue; // deleted while we walked
            };
            if let (Some(k), Some(v)) = (sl_svc_key::from_bytes(&k), sl_svc_val::from_bytes(&v)) {
                d.services.insert(svc_key_from_c(&k), svc_val_from_c(&v));
            }
        }
        for k in self.be.keys() {
            if let Some(v) = self.be.lookup(&k, MapFlags::ANY).map_err(DatapathError::bpf("reading backends"))? {
                if let (Some(id), Some(b)) = (u32::from_bytes(&k), sl_backend::from_bytes(&v)) {
                    d.backends.insert(id, backend_from_c(&b));
                }
            }
        }
        for k in self.rnat.keys() {
            if let Some(v) = self.rnat.lookup(&k, MapFlags::ANY).map_err(DatapathError::bpf("reading revnat"))? {
                if let (Some(id), Some(r)) = (u32::from_bytes(&k), sl_revnat::from_bytes(&v)) {
                    d.revnat.insert(id, revnat_from_c(&r));
                }
            }
        }
        for k in self.affm.keys() {
            if let Some(m) = sl_affinity_match_key::from_bytes(&k) {
                d.affinity_match.insert((m.backend_id, m.rev_nat_id));
            }
        }
        d.maglev = self.maglev_tables()?;
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::METRIC_NAMES;

    /// `METRIC_NAMES` follows `enum sl_metric` in bpf/include/metrics.h:
    /// same indexes, each name the enumerator's in lower case without
    /// `SL_M_` (one historical exception), and room in the map.
    #[test]
    fn metric_names_follow_the_c_enum() {
        let h = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../bpf/include/metrics.h")).unwrap();
        let mut seen = 0;
        let mut max = None;
        for line in h.lines() {
            let l = line.trim();
            let Some(rest) = l.strip_prefix("SL_M_") else { continue };
            let Some((name, val)) = rest.split_once('=') else { continue };
            let name = name.trim();
            let idx: usize = val.trim().trim_end_matches(|c: char| !c.is_ascii_digit()).split(',').next().unwrap().trim().parse().unwrap();
            if name == "MAX" {
                max = Some(idx);
                continue;
            }
            let want = match name {
                "FAMILY_MISMATCH" => "reject_family_mismatch".to_string(),
                n => n.to_lowercase(),
            };
            assert_eq!(METRIC_NAMES.get(idx).copied(), Some(want.as_str()), "SL_M_{name} = {idx}");
            seen += 1;
        }
        assert_eq!(seen, METRIC_NAMES.len(), "every name has an enumerator");
        assert!(METRIC_NAMES.len() <= max.expect("SL_M_MAX"));
    }
}
