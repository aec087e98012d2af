//! What the maps hold, and the minimal writes to change it.
//!
//! Locking: `LbState` is plain data; the agent owns it behind one lock and
//! applies the returned ops before releasing it, so the state always
//! describes the maps.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::dump::LbDump;
use crate::maglev::{self, TableSize};
use crate::types::*;

/// A frontend another service already owns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{frontend} is already owned by Service {owner}")]
pub struct Conflict {
    pub frontend: FrontendKey,
    pub owner: ServiceName,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Frontend {
    id: u32,
    flags: u16,
    affinity_timeout: u32,
    /// Backend ids by slot: `slots[i]` is slot `i + 1`.
    slots: Vec<u32>,
    /// `None` for a frontend found in pinned maps that no service has claimed yet.
    owner: Option<ServiceName>,
    port_name: String,
    /// Backends whose sockets may stay (see `DesiredFrontend::serving`).
    serving: BTreeSet<BackendKey>,
    /// The Maglev table as written (backend id per slot), for frontends
    /// with `SVC_F_MAGLEV` and at least one backend. Kept to diff against:
    /// as large as the kernel's copy (4 bytes a slot).
    maglev: Option<Vec<u32>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Backend {
    id: u32,
    refs: u32,
}

/// Allocates ids, lowest-next first, never 0, skipping ids in use.
#[derive(Debug, Default, Clone)]
struct Ids {
    used: BTreeSet<u32>,
    next: u32,
}

impl Ids {
    fn alloc(&mut self) -> u32 {
        loop {
            self.next = self.next.wrapping_add(1).max(1);
            if self.used.insert(self.next) {
                return self.next;
            }
        }
    }
    fn take(&mut self, id: u32) {
        self.used.insert(id);
        self.next = self.next.max(id);
    }
    fn release(&mut self, id: u32) {
        self.used.remove(&id);
    }
}

/// The load-balancing maps' contents, with ownership and ids.
#[derive(Debug, Default, Clone)]
pub struct LbState {
    frontends: HashMap<FrontendKey, Frontend>,
    by_service: HashMap<ServiceName, Vec<FrontendKey>>,
    backends: HashMap<BackendKey, Backend>,
    backend_keys: HashMap<u32, BackendKey>,
    frontend_ids: Ids,
    backend_ids: Ids,
    /// Backends that left a frontend since the last `take_doomed`, whose
    /// sockets are to be ended: (service, frontend id, backend).
    doomed: Vec<(ServiceName, u32, BackendKey)>,
    /// Slots of every Maglev table.
    maglev_size: TableSize,
    /// Frontends whose Maglev table is too small for their backends, since
    /// the last `take_advice`: (service, advice).
    advice: Vec<(ServiceName, String)>,
}

/// A frontend as read back: for `service list`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FrontendView {
    pub frontend: FrontendKey,
    pub id: u32,
    pub flags: u16,
    pub affinity_timeout: u32,
    pub service: Option<ServiceName>,
    pub port_name: String,
    pub backends: Vec<(u32, BackendKey)>,
}

impl LbState {
    pub fn new() -> Self {
        Self::default()
    }

    /// The Maglev table size (`--maglev-table-size`); set it before the
    /// first `set_service`. Tables of another size (adopted from a run
    /// with another size) are rewritten whole when their frontend is set.
    pub fn set_maglev_size(&mut self, m: TableSize) {
        self.maglev_size = m;
    }

    pub fn maglev_size(&self) -> TableSize {
        self.maglev_size
    }

    /// Rebuild the state from maps a previous agent left pinned. Every
    /// frontend starts unowned; [`LbState::set_service`] claims them and
    /// [`LbState::finish_adoption`] removes what nobody claimed.
    pub fn adopt(dump: &LbDump) -> Self {
        let mut st = LbState::new();
        for (id, be) in &dump.backends {
            st.backends.insert(*be, Backend { id: *id, refs: 0 });
            st.backend_keys.insert(*id, *be);
            st.backend_ids.take(*id);
        }
        let mut slots: BTreeMap<FrontendKey, BTreeMap<u16, u32>> = BTreeMap::new();
        for (k, v) in &dump.services {
            if k.slot == 0 {
                st.frontends.insert(
                    k.frontend,
                    Frontend {
                        id: v.rev_nat_id,
                        flags: v.flags,
                        affinity_timeout: v.affinity_timeout,
                        slots: Vec::new(),
                        owner: None,
                        port_name: String::new(),
                        serving: BTreeSet::new(),
                        maglev: dump.maglev.get(&v.rev_nat_id).cloned(),
                    },
                );
                st.frontend_ids.take(v.rev_nat_id);
            } else {
                slots.entry(k.frontend).or_default().insert(k.slot, v.backend_id);
            }
        }
        for (key, fe) in st.frontends.iter_mut() {
            let count = dump
                .services
                .get(&SvcKey { frontend: *key, slot: 0 })
                .map(|v| v.count)
                .unwrap_or(0);
            if let Some(s) = slots.get(key) {
                // Only slots 1..=count are live; anything past it is debris of
                // an interrupted write and is rewritten or deleted below.
                for slot in 1..=count as u16 {
                    match s.get(&slot) {
                        Some(id) if st.backend_keys.contains_key(id) => fe.slots.push(*id),
                        _ => break,
                    }
                }
            }
            for id in &fe.slots {
                if let Some(bk) = st.backend_keys.get(id) {
                    if let Some(b) = st.backends.get_mut(bk) {
                        b.refs += 1;
                    }
                }
            }
        }
        st
    }

    /// Would `desired` collide with frontends of other services?
    pub fn check(&self, service: &str, desired: &[DesiredFrontend]) -> Result<(), Conflict> {
        for d in desired {
            if let Some(fe) = self.frontends.get(&d.key) {
                if let Some(owner) = &fe.owner {
                    if owner != service {
                        return Err(Conflict { frontend: d.key, owner: owner.clone() });
                    }
                }
            }
        }
        Ok(())
    }

    /// Make `service` have exactly `desired` frontends; returns the writes.
    /// Conflicts must have been ruled out with [`LbState::check`].
    pub fn set_service(&mut self, service: &str, desired: &[DesiredFrontend]) -> Vec<MapOp> {
        let mut ops = Ops::default();
        self.set_service_into(service, desired, &mut ops);
        ops.finish()
    }

    /// Several services at once. The writes are grouped by phase across all
    /// of them (every new backend, then every slot, then every master...),
    /// which keeps each service's ordering and lets the datapath write long
    /// runs of one kind in batches.
    pub fn set_services<'a>(
        &mut self,
        items: impl IntoIterator<Item = (&'a str, &'a [DesiredFrontend])>,
    ) -> Vec<MapOp> {
        let mut ops = Ops::default();
        for (service, desired) in items {
            self.set_service_into(service, desired, &mut ops);
        }
        ops.finish()
    }

    fn set_service_into(&mut self, service: &str, desired: &[DesiredFrontend], ops: &mut Ops) {
        let old: Vec<FrontendKey> = self.by_service.remove(service).unwrap_or_default();
        let wanted: BTreeSet<FrontendKey> = desired.iter().map(|d| d.key).collect();
        // Local twins first: a master entry flagged SVC_F_ETP_LOCAL is only
        // written once its twin's master is (the external devices look the
        // twin up when they see the flag)...
        for d in desired.iter().filter(|d| d.key.scope.is_local()).chain(desired.iter().filter(|d| !d.key.scope.is_local())) {
            self.write_frontend(service, d, ops);
        }
        // ...and a twin is deleted after the ordinary entry that pointed to it
        // was rewritten or deleted.
        let gone = old.iter().filter(|k| !wanted.contains(k));
        let gone: Vec<&FrontendKey> = gone.clone().filter(|k| !k.scope.is_local()).chain(gone.filter(|k| k.scope.is_local())).collect();
        for key in gone {
            // A frontend another service took over in the same change is
            // no longer ours to delete.
            let ours = self.frontends.get(key).and_then(|f| f.owner.as_deref()) == Some(service);
            if ours {
                self.delete_frontend(key, ops);
            }
        }
        if !desired.is_empty() {
            self.by_service.insert(service.to_string(), desired.iter().map(|d| d.key).collect());
        }
    }

    pub fn remove_service(&mut self, service: &str) -> Vec<MapOp> {
        self.set_service(service, &[])
    }

    /// After every service was set following [`LbState::adopt`]: delete what
    /// no service claimed.
    pub fn finish_adoption(&mut self) -> Vec<MapOp> {
        let mut ops = Ops::default();
        let mut orphans: Vec<FrontendKey> =
            self.frontends.iter().filter(|(_, f)| f.owner.is_none()).map(|(k, _)| *k).collect();
        // Ordinary entries before local twins (see `set_service_into`).
        orphans.sort_by_key(|k| (k.scope.is_local(), *k));
        for key in orphans {
            self.delete_frontend(&key, &mut ops);
        }
        let unused: Vec<BackendKey> =
            self.backends.iter().filter(|(_, b)| b.refs == 0).map(|(k, _)| *k).collect();
        for bk in unused {
            let b = self.backends.remove(&bk).unwrap();
            self.backend_keys.remove(&b.id);
            self.backend_ids.release(b.id);
            ops.late.push(MapOp::DeleteBackend(b.id));
        }
        ops.finish()
    }

    /// Writes that bring `dump` (what the maps hold) to this state: used after
    /// adoption for the entries the state does not track one by one (the
    /// reverse-NAT and affinity-match entries).
    pub fn repair_ops(&self, dump: &LbDump) -> Vec<MapOp> {
        let mut ops = Vec::new();
        let mut want_rnat = BTreeMap::new();
        let mut want_affm = BTreeSet::new();
        for (key, fe) in &self.frontends {
            want_rnat.insert(fe.id, *key);
            if fe.flags & SVC_F_AFFINITY != 0 {
                for b in &fe.slots {
                    want_affm.insert((*b, fe.id));
                }
            }
            for (i, b) in fe.slots.iter().enumerate() {
                let k = SvcKey { frontend: *key, slot: i as u16 + 1 };
                let v = slot_val(*b, fe.id);
                if dump.services.get(&k) != Some(&v) {
                    ops.push(MapOp::UpsertService(k, v));
                }
            }
            let mk = SvcKey { frontend: *key, slot: 0 };
            let mv = master_val(fe);
            if dump.services.get(&mk) != Some(&mv) {
                ops.push(MapOp::UpsertService(mk, mv));
            }
            match (&fe.maglev, dump.maglev.get(&fe.id)) {
                (Some(t), have) if have != Some(t) => ops.push(MapOp::SetMaglev { rev_nat_id: fe.id, table: t.clone() }),
                (None, Some(_)) => ops.push(MapOp::DeleteMaglev(fe.id)),
                _ => {}
            }
        }
        let ids: BTreeSet<u32> = self.frontends.values().map(|f| f.id).collect();
        for id in dump.maglev.keys().filter(|id| !ids.contains(id)) {
            ops.push(MapOp::DeleteMaglev(*id));
        }
        for k in dump.services.keys() {
            let live = self.frontends.get(&k.frontend).map(|f| k.slot as usize <= f.slots.len()).unwrap_or(false);
            if !live {
                ops.push(MapOp::DeleteService(*k));
            }
        }
        for (id, fk) in &want_rnat {
            if dump.revnat.get(id) != Some(fk) {
                ops.push(MapOp::UpsertRevNat(*id, *fk));
            }
        }
        for id in dump.revnat.keys().filter(|id| !want_rnat.contains_key(id)) {
            ops.push(MapOp::DeleteRevNat(*id));
        }
        for (b, r) in &want_affm {
            if !dump.affinity_match.contains(&(*b, *r)) {
                ops.push(MapOp::UpsertAffinityMatch { backend_id: *b, rev_nat_id: *r });
            }
        }
        for (b, r) in dump.affinity_match.iter().filter(|p| !want_affm.contains(p)) {
            ops.push(MapOp::DeleteAffinityMatch { backend_id: *b, rev_nat_id: *r });
        }
        ops
    }

    fn write_frontend(&mut self, service: &str, d: &DesiredFrontend, ops: &mut Ops) {
        let is_new = !self.frontends.contains_key(&d.key);
        if is_new {
            let id = self.frontend_ids.alloc();
            self.frontends.insert(
                d.key,
                Frontend {
                    id,
                    flags: 0,
                    affinity_timeout: 0,
                    slots: Vec::new(),
                    owner: None,
                    port_name: String::new(),
                    serving: BTreeSet::new(),
                    maglev: None,
                },
            );
            ops.early.push(MapOp::UpsertRevNat(id, d.key));
        }
        let old = self.frontends.get(&d.key).unwrap().clone();
        let id = old.id;

        // Slots: remove what left by moving the last slot into the hole, then
        // append what arrived. Only slots whose backend changed are written.
        let wanted: BTreeSet<BackendKey> = d.backends.iter().copied().collect();
        let mut slots: Vec<u32> = old.slots.clone();
        let mut i = 0;
        while i < slots.len() {
            let bk = self.backend_keys[&slots[i]];
            if wanted.contains(&bk) {
                i += 1;
            } else {
                slots.swap_remove(i);
            }
        }
        let present: BTreeSet<BackendKey> = slots.iter().map(|id| self.backend_keys[id]).collect();
        for bk in &d.backends {
            if present.contains(bk) {
                continue;
            }
            let be_id = self.acquire_backend(*bk, ops);
            slots.push(be_id);
        }
        // References held by this frontend: new slots + retained, minus removed.
        let old_set: BTreeSet<u32> = old.slots.iter().copied().collect();
        let new_set: BTreeSet<u32> = slots.iter().copied().collect();

        for (i, b) in slots.iter().enumerate() {
            if old.slots.get(i) != Some(b) {
                ops.mid.push(MapOp::UpsertService(
                    SvcKey { frontend: d.key, slot: i as u16 + 1 },
                    slot_val(*b, id),
                ));
            }
        }
        let had_aff = old.flags & SVC_F_AFFINITY != 0 && !is_new;
        let has_aff = d.flags & SVC_F_AFFINITY != 0;
        for b in &new_set {
            if has_aff && (!had_aff || !old_set.contains(b)) {
                ops.mid.push(MapOp::UpsertAffinityMatch { backend_id: *b, rev_nat_id: id });
            }
        }
        let serving: BTreeSet<BackendKey> = d.serving.iter().chain(&d.backends).copied().collect();
        // A local twin is never used by the socket hooks: no socket
        // records its id, so nothing is to be ended for it.
        if !d.key.scope.is_local() {
            for b in old.serving.difference(&serving) {
                self.doomed.push((service.to_string(), id, *b));
            }
        }
        // Maglev: the table is written before the master entry that turns
        // it on, and deleted after the one that turns it off; slots move off
        // a removed backend before the backend is deleted.
        let maglev = if d.flags & SVC_F_MAGLEV != 0 && !slots.is_empty() {
            let keys: Vec<BackendKey> = slots.iter().map(|b| self.backend_keys[b]).collect();
            if let Some(a) = self.maglev_size.advice(keys.len()) {
                self.advice.push((service.to_string(), format!("{}: {a}", d.key)));
            }
            Some(self.maglev_ids(&keys))
        } else {
            None
        };
        match (&old.maglev, &maglev) {
            (Some(o), Some(n)) if o.len() == n.len() => {
                let changed: Vec<(u32, u32)> =
                    o.iter().zip(n).enumerate().filter(|(_, (a, b))| a != b).map(|(i, (_, b))| (i as u32, *b)).collect();
                if !changed.is_empty() {
                    ops.mid.push(MapOp::UpdateMaglevSlots { rev_nat_id: id, slots: changed });
                }
            }
            (_, Some(n)) => ops.mid.push(MapOp::SetMaglev { rev_nat_id: id, table: n.clone() }),
            (Some(_), None) => ops.late.push(MapOp::DeleteMaglev(id)),
            (None, None) => {}
        }
        let fe = Frontend {
            id,
            flags: d.flags,
            affinity_timeout: d.affinity_timeout,
            slots: slots.clone(),
            owner: Some(service.to_string()),
            port_name: d.port_name.clone(),
            serving,
            maglev,
        };
        if is_new || master_val(&fe) != master_val(&old) || old.slots.len() != slots.len() {
            ops.master.push(MapOp::UpsertService(SvcKey { frontend: d.key, slot: 0 }, master_val(&fe)));
        }
        for s in slots.len()..old.slots.len() {
            ops.late.push(MapOp::DeleteService(SvcKey { frontend: d.key, slot: s as u16 + 1 }));
        }
        for b in &old_set {
            let gone = !new_set.contains(b);
            if had_aff && (gone || !has_aff) {
                ops.late.push(MapOp::DeleteAffinityMatch { backend_id: *b, rev_nat_id: id });
            }
            if gone {
                self.release_backend(*b, ops);
            }
        }
        self.frontends.insert(d.key, fe);
    }

    fn delete_frontend(&mut self, key: &FrontendKey, ops: &mut Ops) {
        let Some(fe) = self.frontends.remove(key) else { return };
        let slot_backends: Vec<BackendKey> = fe.slots.iter().filter_map(|b| self.backend_keys.get(b).copied()).collect();
        let owner = fe.owner.clone().unwrap_or_default();
        if !key.scope.is_local() {
            for b in fe.serving.iter().copied().chain(slot_backends).collect::<BTreeSet<_>>() {
                self.doomed.push((owner.clone(), fe.id, b));
            }
        }
        // Master first: from then on the frontend is gone for new lookups.
        ops.master.push(MapOp::DeleteService(SvcKey { frontend: *key, slot: 0 }));
        for (i, b) in fe.slots.iter().enumerate() {
            ops.late.push(MapOp::DeleteService(SvcKey { frontend: *key, slot: i as u16 + 1 }));
            if fe.flags & SVC_F_AFFINITY != 0 {
                ops.late.push(MapOp::DeleteAffinityMatch { backend_id: *b, rev_nat_id: fe.id });
            }
            self.release_backend(*b, ops);
        }
        if fe.maglev.is_some() {
            ops.late.push(MapOp::DeleteMaglev(fe.id));
        }
        ops.late.push(MapOp::DeleteRevNat(fe.id));
        self.frontend_ids.release(fe.id);
    }

    fn acquire_backend(&mut self, bk: BackendKey, ops: &mut Ops) -> u32 {
        if let Some(b) = self.backends.get_mut(&bk) {
            b.refs += 1;
            return b.id;
        }
        let id = self.backend_ids.alloc();
        self.backends.insert(bk, Backend { id, refs: 1 });
        self.backend_keys.insert(id, bk);
        ops.early.push(MapOp::UpsertBackend(id, bk));
        id
    }

    fn release_backend(&mut self, id: u32, ops: &mut Ops) {
        let bk = self.backend_keys[&id];
        let b = self.backends.get_mut(&bk).unwrap();
        b.refs -= 1;
        if b.refs == 0 {
            self.backends.remove(&bk);
            self.backend_keys.remove(&id);
            self.backend_ids.release(id);
            ops.last.push(MapOp::DeleteBackend(id));
        }
    }

    /// The Maglev table of `backends` as backend ids (every backend must
    /// have an id already).
    fn maglev_ids(&self, backends: &[BackendKey]) -> Vec<u32> {
        let t = maglev::compute(backends, self.maglev_size);
        let ids: Vec<u32> = t.backends.iter().map(|b| self.backends[b].id).collect();
        t.slots.iter().map(|i| ids[*i as usize]).collect()
    }

    /// Frontends whose Maglev table is small for their number of backends,
    /// since the last call: (service, advice). For the agent's log.
    pub fn take_advice(&mut self) -> Vec<(ServiceName, String)> {
        std::mem::take(&mut self.advice)
    }

    /// The Maglev table of a frontend (backend id per slot), if it has one.
    pub fn maglev_table(&self, key: &FrontendKey) -> Option<&[u32]> {
        self.frontends.get(key).and_then(|f| f.maglev.as_deref())
    }

    /// Backends that left their frontends since the last call: their
    /// sockets are to be ended.
    pub fn take_doomed(&mut self) -> Vec<(ServiceName, u32, BackendKey)> {
        std::mem::take(&mut self.doomed)
    }

    /// Number of frontends and backends.
    pub fn counts(&self) -> (usize, usize) {
        (self.frontends.len(), self.backends.len())
    }

    /// Every frontend with its backends, sorted by frontend.
    pub fn view(&self) -> Vec<FrontendView> {
        let mut v: Vec<FrontendView> = self
            .frontends
            .iter()
            .map(|(k, f)| FrontendView {
                frontend: *k,
                id: f.id,
                flags: f.flags,
                affinity_timeout: f.affinity_timeout,
                service: f.owner.clone(),
                port_name: f.port_name.clone(),
                backends: f.slots.iter().map(|b| (*b, self.backend_keys[b])).collect(),
            })
            .collect();
        v.sort_by_key(|f| f.frontend);
        v
    }

    /// The service that owns each frontend, for views built from the maps.
    pub fn owner_of(&self, key: &FrontendKey) -> Option<(&str, &str)> {
        self.frontends.get(key).and_then(|f| f.owner.as_deref().map(|o| (o, f.port_name.as_str())))
    }
}

fn slot_val(backend_id: u32, rev_nat_id: u32) -> SvcVal {
    SvcVal { backend_id, count: 0, rev_nat_id, affinity_timeout: 0, flags: 0 }
}

fn master_val(fe: &Frontend) -> SvcVal {
    SvcVal {
        backend_id: 0,
        count: fe.slots.len() as u32,
        rev_nat_id: fe.id,
        affinity_timeout: fe.affinity_timeout,
        flags: fe.flags,
    }
}

/// Writes grouped by phase, so that the datapath never follows a slot to a
/// backend that is not written yet, nor counts a slot that is not there:
/// new backends and reverse-NAT entries, then slots, then master entries,
/// then deletions of slots, then of backends.
#[derive(Default)]
struct Ops {
    early: Vec<MapOp>,
    mid: Vec<MapOp>,
    master: Vec<MapOp>,
    late: Vec<MapOp>,
    last: Vec<MapOp>,
}

impl Ops {
    fn finish(self) -> Vec<MapOp> {
        let mut v = self.early;
        v.extend(self.mid);
        v.extend(self.master);
        v.extend(self.late);
        v.extend(self.last);
        v
    }
}
