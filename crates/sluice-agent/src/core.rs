//! Desired state, validation as a whole, and the reconciler.
//!
//! Locking: the server keeps one `Core` behind a mutex; every request runs
//! to completion (store commit and map writes included) while holding it,
//! so requests are serialised and the in-memory state always matches the
//! store and the maps.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Instant;

use serde_json::Value;
use sluice_api::{ChangeReport, Document, ObjectResult, ServiceView, Target};
use sluice_lb::catalog::service_of;
use sluice_lb::dump::flags_str;
use sluice_lb::{Catalog, FrontendKey, LbDump, LbMaps, LbOptions, LbState, MapOp, Scope};
use sluice_model::manifest::from_value;
use sluice_model::{Kind, Manifest, ManifestError, Object, ObjectRef, Origin, ServiceType};
use sluice_store::Store;

/// NodePort range Kubernetes allocates from.
pub const NODE_PORT_RANGE: std::ops::RangeInclusive<u16> = 30000..=32767;

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("{} manifest error(s)", .0.len())]
    Invalid(Vec<ManifestError>),
    #[error("{0}")]
    Store(#[from] sluice_store::StoreError),
    #[error("writing the maps: {0}")]
    Maps(String),
    #[error("{0}")]
    Other(String),
}

/// An IPv4 range cluster IPs are allocated from (`--service-cidr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceCidr {
    pub network: std::net::Ipv4Addr,
    pub prefix: u8,
}

impl std::str::FromStr for ServiceCidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s.split_once('/').ok_or_else(|| format!("{s:?} is not a CIDR such as 10.96.0.0/16"))?;
        let network: std::net::Ipv4Addr = a.parse().map_err(|_| format!("{a:?} is not an IPv4 address"))?;
        let prefix: u8 = p.parse().map_err(|_| format!("{p:?} is not a prefix length"))?;
        if !(8..=30).contains(&prefix) {
            return Err(format!("prefix /{prefix} is out of range (8 to 30)"));
        }
        let mask = u32::MAX << (32 - prefix);
        if u32::from(network) & !mask != 0 {
            return Err(format!("{s} has host bits set (did you mean {}/{prefix}?)", std::net::Ipv4Addr::from(u32::from(network) & mask)));
        }
        Ok(ServiceCidr { network, prefix })
    }
}

impl std::fmt::Display for ServiceCidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl ServiceCidr {
    /// Usable addresses in order: the network and broadcast addresses excluded.
    fn hosts(&self) -> impl Iterator<Item = std::net::Ipv4Addr> {
        let base = u32::from(self.network);
        let size = 1u32 << (32 - self.prefix);
        (1..size - 1).map(move |i| std::net::Ipv4Addr::from(base + i))
    }
}

pub struct Core<M: LbMaps> {
    service_cidr: Option<ServiceCidr>,
    store: Store,
    catalog: Catalog,
    /// Each object as applied, serialised (compact JSON): what `get` shows
    /// and what "unchanged" is judged by. Bytes rather than `Value`s: a
    /// tenth of the memory at 100,000 services.
    raw: BTreeMap<ObjectRef, Vec<u8>>,
    lb: LbState,
    maps: M,
    /// The agent's load-balancing settings: default algorithm and mode,
    /// Maglev table size, this node's name.
    lb_options: LbOptions,
}

/// An object's state before a change: its applied bytes and typed form,
/// or `None` if it did not exist.
type Previous = Option<(Vec<u8>, Object)>;

/// What an apply changed in the catalog, to roll it back.
struct Undo {
    previous: Vec<(ObjectRef, Previous)>,
}

impl<M: LbMaps> Core<M> {
    /// Load the store, adopt what the maps hold, and write the difference.
    /// Returns the core and the number of map writes the adoption needed.
    pub fn new(store: Store, maps: M) -> Result<(Self, usize, Vec<String>), CoreError> {
        Self::with_options(store, maps, LbOptions::default())
    }

    /// [`Core::new`] with the agent's load-balancing settings. Maglev
    /// tables of another size found in the maps are rewritten.
    pub fn with_options(store: Store, mut maps: M, opts: LbOptions) -> Result<(Self, usize, Vec<String>), CoreError> {
        let mut catalog = Catalog::new();
        catalog.set_context(opts.resolve_context());
        let mut raw = BTreeMap::new();
        let mut warnings = Vec::new();
        for (key, value) in store.load_all()? {
            match from_value(&Origin::new(format!("store:{key}"), 1), value.clone()) {
                Ok(m) => {
                    catalog.upsert(&m.object_ref, m.object);
                    raw.insert(m.object_ref, serde_json::to_vec(&value).expect("JSON values serialise"));
                }
                Err(es) => warnings.extend(es.iter().map(|e| format!("skipping stored object: {e}"))),
            }
        }
        let dump = maps.dump().map_err(|e| CoreError::Maps(e.to_string()))?;
        let mut lb = LbState::adopt(&dump);
        lb.set_maglev_size(opts.maglev_size);
        let mut resolved = Vec::new();
        // Stored services were checked against each other when applied; a
        // store that disagrees (edited by hand, say) keeps the first claim.
        let mut claimed: HashMap<FrontendKey, String> = HashMap::new();
        let names: Vec<String> = catalog.services().map(|(n, _)| n.clone()).collect();
        for name in names {
            match catalog.resolve(&name) {
                Ok(ds) => match ds.iter().find_map(|d| claimed.get(&d.key).map(|o| (d.key, o))) {
                    None => {
                        claimed.extend(ds.iter().map(|d| (d.key, name.clone())));
                        resolved.push((name, ds));
                    }
                    Some((k, o)) => warnings.push(format!("Service {name}: not programmed: {k} is already used by Service {o}")),
                },
                Err(es) => warnings.extend(es.iter().map(|e| format!("not programmed: {e}"))),
            }
        }
        let mut ops = lb.set_services(resolved.iter().map(|(n, d)| (n.as_str(), d.as_slice())));
        ops.extend(lb.finish_adoption());
        warnings.extend(lb.take_advice().into_iter().map(|(s, a)| format!("Service {s}: {a}")));
        maps.apply(&ops).map_err(|e| CoreError::Maps(e.to_string()))?;
        let repair = lb.repair_ops(&maps.dump().map_err(|e| CoreError::Maps(e.to_string()))?);
        maps.apply(&repair).map_err(|e| CoreError::Maps(e.to_string()))?;
        let writes = ops.len() + repair.len();
        Ok((Core { service_cidr: None, store, catalog, raw, lb, maps, lb_options: opts }, writes, warnings))
    }

    /// The load-balancing settings in force.
    pub fn lb_options(&self) -> &LbOptions {
        &self.lb_options
    }

    /// Change the default algorithm, the default mode or the node's name:
    /// every service is resolved again and only the entries that change
    /// are written (a new node name rewrites only the local twins). The
    /// Maglev table size cannot change while the datapath runs.
    /// Returns the number of map writes.
    pub fn set_lb_options(&mut self, opts: LbOptions) -> Result<usize, CoreError> {
        if opts.maglev_size != self.lb_options.maglev_size {
            return Err(CoreError::Other("the Maglev table size is fixed until the agent restarts".into()));
        }
        self.catalog.set_context(opts.resolve_context());
        self.lb_options = opts;
        // The settings cannot make a service invalid nor create conflicts
        // (a twin is derived from a frontend its service already owns).
        let names: Vec<String> = self.catalog.services().map(|(n, _)| n.clone()).collect();
        let resolved = names
            .into_iter()
            .filter_map(|n| self.catalog.resolve(&n).ok().map(|ds| (n, ds)))
            .collect();
        self.reconcile(resolved)
    }

    /// Backends that left their services since the last call, whose
    /// sockets are to be ended: (service, frontend id, backend). Services
    /// annotated `sluice.io/terminate-sockets: "false"` are left out.
    pub fn take_doomed(&mut self) -> Vec<(String, u32, sluice_lb::BackendKey)> {
        let doomed = self.lb.take_doomed();
        doomed
            .into_iter()
            .filter(|(svc, _, _)| self.catalog.service(svc).map(|s| s.terminates_sockets()).unwrap_or(true))
            .collect()
    }

    /// Allocate cluster IPs for Services that give none from `cidr`.
    pub fn set_service_cidr(&mut self, cidr: Option<ServiceCidr>) {
        self.service_cidr = cidr;
    }

    /// Labels of the applied Pod `namespace/name` (empty if none was applied).
    pub fn pod_labels(&self, namespace: &str, name: &str) -> BTreeMap<String, String> {
        self.catalog.pod(namespace, name).map(|p| p.metadata.labels.clone()).unwrap_or_default()
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let (s, e) = self.catalog.len();
        let (f, b) = self.lb.counts();
        (s, e, f, b)
    }

    /// Every stored object of a kind, as applied.
    pub fn get(&self, kind: Kind) -> Vec<Value> {
        self.raw
            .iter()
            .filter(|(r, _)| r.kind == kind)
            .filter_map(|(_, v)| serde_json::from_slice(v).ok())
            .collect()
    }

    /// Apply documents as one change: all of it or, on any error, none.
    pub fn apply(&mut self, docs: Vec<Document>, dry_run: bool) -> Result<ChangeReport, CoreError> {
        let t0 = Instant::now();
        let mut errors = Vec::new();
        let mut batch: Vec<Manifest> = Vec::new();
        let mut seen: HashMap<ObjectRef, Origin> = HashMap::new();
        for d in docs {
            match from_value(&d.origin, d.raw) {
                Ok(m) => {
                    if let Some(first) = seen.get(&m.object_ref) {
                        errors.push(ManifestError::new(
                            &m.origin,
                            m.object_ref.to_string(),
                            "metadata.name",
                            format!("the same object is also given in {first}"),
                        ));
                        continue;
                    }
                    seen.insert(m.object_ref.clone(), m.origin.clone());
                    batch.push(m);
                }
                Err(es) => errors.extend(es),
            }
        }
        if !errors.is_empty() {
            return Err(CoreError::Invalid(errors));
        }
        let t_parse = t0.elapsed();
        self.allocate_cluster_ips(&mut batch)?;
        self.allocate_node_ports(&mut batch)?;

        // Tentatively apply to the catalog; validate every touched service.
        let mut undo = Undo { previous: Vec::new() };
        let mut touched = BTreeSet::new();
        let mut results = Vec::new();
        let mut puts = Vec::new();
        for m in &batch {
            let bytes = serde_json::to_vec(&m.raw).expect("JSON values serialise");
            let prev = self.raw.get(&m.object_ref).cloned();
            let action = match &prev {
                None => "created",
                Some(v) if *v == bytes => "unchanged",
                Some(_) => "configured",
            };
            results.push(ObjectResult { object: m.object_ref.to_string(), action: action.into() });
            if action == "unchanged" {
                continue;
            }
            let prev_obj = prev.map(|v| (v, self.current_object(&m.object_ref)));
            undo.previous.push((m.object_ref.clone(), prev_obj.and_then(|(v, o)| o.map(|o| (v, o)))));
            touched.extend(self.catalog.upsert(&m.object_ref, m.object.clone()));
            puts.push((m.object_ref.key(), bytes.clone()));
            self.raw.insert(m.object_ref.clone(), bytes);
        }
        let t_catalog = t0.elapsed();
        let resolved = match self.validate(&touched, &batch) {
            Ok(r) => r,
            Err(es) => {
                self.rollback(undo);
                return Err(CoreError::Invalid(es));
            }
        };
        if dry_run || puts.is_empty() {
            self.rollback(undo);
            return Ok(ChangeReport { results, dry_run, map_writes: 0, apply_us: t0.elapsed().as_micros() as u64, reconcile_us: 0 });
        }
        let t_validate = t0.elapsed();
        if let Err(e) = self.store.commit(&puts, &[]) {
            self.rollback(undo);
            return Err(e.into());
        }
        let t1 = Instant::now();
        let writes = self.reconcile(resolved)?;
        tracing::debug!(
            parse_ms = t_parse.as_millis() as u64,
            catalog_ms = (t_catalog - t_parse).as_millis() as u64,
            validate_ms = (t_validate - t_catalog).as_millis() as u64,
            store_ms = (t1 - t0 - t_validate).as_millis() as u64,
            maps_ms = t1.elapsed().as_millis() as u64,
            "apply phases"
        );
        Ok(ChangeReport {
            results,
            dry_run,
            map_writes: writes,
            apply_us: t0.elapsed().as_micros() as u64,
            reconcile_us: t1.elapsed().as_micros() as u64,
        })
    }

    /// Delete objects as one change. A target that does not exist is an
    /// error (and nothing is deleted) unless `ignore_not_found`.
    pub fn delete(&mut self, targets: Vec<Target>, ignore_not_found: bool) -> Result<ChangeReport, CoreError> {
        let t0 = Instant::now();
        let mut errors = Vec::new();
        let mut refs = Vec::new();
        let mut results = Vec::new();
        for t in targets {
            let r = ObjectRef::new(t.kind, t.namespace, t.name);
            if self.raw.contains_key(&r) {
                if !refs.contains(&r) {
                    refs.push(r.clone());
                    results.push(ObjectResult { object: r.to_string(), action: "deleted".into() });
                }
            } else if ignore_not_found {
                results.push(ObjectResult { object: r.to_string(), action: "not found".into() });
            } else {
                errors.push(ManifestError::new(&t.origin, r.to_string(), "metadata.name", "not found (nothing was deleted; --ignore-not-found skips missing objects)"));
            }
        }
        if !errors.is_empty() {
            return Err(CoreError::Invalid(errors));
        }
        let keys: Vec<String> = refs.iter().map(|r| r.key()).collect();
        self.store.commit(&[], &keys)?;
        let mut touched = BTreeSet::new();
        for r in &refs {
            touched.extend(self.catalog.remove(r));
            self.raw.remove(r);
        }
        let t1 = Instant::now();
        // Removing objects cannot create conflicts; a service whose slices
        // went away simply has no backends.
        let resolved = touched
            .into_iter()
            .map(|s| {
                let ds = self.catalog.resolve(&s).unwrap_or_default();
                (s, ds)
            })
            .collect();
        let writes = self.reconcile(resolved)?;
        Ok(ChangeReport {
            results,
            dry_run: false,
            map_writes: writes,
            apply_us: t0.elapsed().as_micros() as u64,
            reconcile_us: t1.elapsed().as_micros() as u64,
        })
    }

    fn reconcile(&mut self, resolved: Vec<(String, Vec<sluice_lb::DesiredFrontend>)>) -> Result<usize, CoreError> {
        let ops: Vec<MapOp> = self.lb.set_services(resolved.iter().map(|(n, d)| (n.as_str(), d.as_slice())));
        for (svc, advice) in self.lb.take_advice() {
            tracing::warn!("Service {svc}: {advice}");
        }
        self.maps.apply(&ops).map_err(|e| CoreError::Maps(e.to_string()))?;
        Ok(ops.len())
    }

    fn current_object(&self, r: &ObjectRef) -> Option<Object> {
        match r.kind {
            Kind::Service => self.catalog.service(&format!("{}/{}", r.namespace, r.name)).cloned().map(Object::Service),
            Kind::EndpointSlice => self.catalog.slice(r).cloned().map(Object::EndpointSlice),
            Kind::Pod => self.catalog.pod(&r.namespace, &r.name).cloned().map(Object::Pod),
        }
    }

    fn rollback(&mut self, undo: Undo) {
        for (r, prev) in undo.previous.into_iter().rev() {
            match prev {
                Some((v, o)) => {
                    self.catalog.upsert(&r, o);
                    self.raw.insert(r, v);
                }
                None => {
                    self.catalog.remove(&r);
                    self.raw.remove(&r);
                }
            }
        }
    }

    /// Resolve every touched service and check it against every other
    /// service's frontends, including the others in this batch.
    fn validate(
        &self,
        touched: &BTreeSet<String>,
        batch: &[Manifest],
    ) -> Result<Vec<(String, Vec<sluice_lb::DesiredFrontend>)>, Vec<ManifestError>> {
        let mut errors = Vec::new();
        let mut out = Vec::new();
        let mut claimed: HashMap<FrontendKey, String> = HashMap::new();
        let blame = Blame::new(batch);
        for name in touched {
            match self.catalog.resolve(name) {
                Ok(ds) => {
                    for d in &ds {
                        // Services touched by this batch are checked against
                        // each other through `claimed`; the rest through the
                        // owners the maps record.
                        let other = match claimed.get(&d.key) {
                            Some(o) if o != name => Some(o.clone()),
                            Some(_) => None,
                            None => self
                                .lb
                                .check(name, std::slice::from_ref(d))
                                .err()
                                .map(|c| c.owner)
                                .filter(|o| !touched.contains(o)),
                        };
                        // A local twin conflicts exactly when its ordinary
                        // frontend does: that one is reported.
                        if let Some(o) = other.filter(|_| !d.key.scope.is_local()) {
                            let (origin, object) = blame.of(name);
                            let field = if d.key.scope.is_node_port() { "spec.ports[].nodePort" } else { "spec" };
                            errors.push(ManifestError::new(
                                &origin,
                                object,
                                field,
                                format!("{} {} is already used by Service {o}", kind_of(d.key), d.key),
                            ));
                        }
                        claimed.insert(d.key, name.clone());
                    }
                    out.push((name.clone(), ds));
                }
                Err(es) => {
                    for e in es {
                        let (origin, object) = blame.of(name);
                        let object = if object == e.object.to_string() { object } else { format!("{object} (for {})", e.object) };
                        errors.push(ManifestError::new(&origin, object, e.field, e.message));
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }

    /// Give Services without a cluster IP the lowest free address of the
    /// service CIDR, keeping the one a previous version of the object had.
    fn allocate_cluster_ips(&self, batch: &mut [Manifest]) -> Result<(), CoreError> {
        let needs = |m: &Manifest| matches!(&m.object, Object::Service(s) if s.needs_cluster_ip());
        if !batch.iter().any(needs) {
            return Ok(());
        }
        let Some(cidr) = self.service_cidr else {
            let errors = batch
                .iter()
                .filter(|m| needs(m))
                .map(|m| {
                    ManifestError::new(
                        &m.origin,
                        m.object_ref.to_string(),
                        "spec.clusterIP",
                        "is not set, and the agent has no --service-cidr to allocate one from",
                    )
                })
                .collect();
            return Err(CoreError::Invalid(errors));
        };
        let name_of = |r: &ObjectRef| format!("{}/{}", r.namespace, r.name);
        let replaced: BTreeSet<String> =
            batch.iter().filter(|m| m.object_ref.kind == Kind::Service).map(|m| name_of(&m.object_ref)).collect();
        let mut used: BTreeSet<IpAddr> = BTreeSet::new();
        for (name, svc) in self.catalog.services() {
            if !replaced.contains(name) {
                used.extend(svc.cluster_ips());
            }
        }
        for m in batch.iter() {
            if let Object::Service(s) = &m.object {
                used.extend(s.cluster_ips());
            }
        }
        // A re-applied Service keeps the address it was given, unless the
        // batch hands that address to another Service explicitly.
        let mut keep: HashMap<ObjectRef, IpAddr> = HashMap::new();
        for m in batch.iter().filter(|m| needs(m)) {
            let prev = self.catalog.service(&name_of(&m.object_ref)).and_then(|p| p.cluster_ips().into_iter().next());
            if let Some(ip) = prev.filter(|ip| !used.contains(ip)) {
                keep.insert(m.object_ref.clone(), ip);
            }
        }
        used.extend(keep.values().copied());
        let mut free = cidr.hosts().filter(|a| !used.contains(&IpAddr::V4(*a)));
        for m in batch.iter_mut() {
            let Object::Service(svc) = &mut m.object else { continue };
            if !svc.needs_cluster_ip() {
                continue;
            }
            let ip = match keep.get(&m.object_ref) {
                Some(ip) => *ip,
                None => match free.next() {
                    Some(a) => IpAddr::V4(a),
                    None => {
                        return Err(CoreError::Invalid(vec![ManifestError::new(
                            &m.origin,
                            m.object_ref.to_string(),
                            "spec.clusterIP",
                            format!("no free address left in the service CIDR {cidr}"),
                        )]))
                    }
                },
            };
            svc.spec.cluster_ip = Some(ip.to_string());
            if let Some(spec) = m.raw.pointer_mut("/spec").and_then(Value::as_object_mut) {
                spec.insert("clusterIP".into(), Value::from(ip.to_string()));
            } else if let Some(obj) = m.raw.as_object_mut() {
                obj.insert("spec".into(), serde_json::json!({ "clusterIP": ip.to_string() }));
            }
        }
        Ok(())
    }

    /// Give NodePort and LoadBalancer ports without a nodePort one from the
    /// NodePort range, keeping the one a previous version of the object had.
    fn allocate_node_ports(&self, batch: &mut [Manifest]) -> Result<(), CoreError> {
        // Only batches with node ports need the scan of every service.
        let needed = batch.iter().any(|m| match &m.object {
            Object::Service(s) => s.has_node_ports(),
            _ => false,
        });
        if !needed {
            return Ok(());
        }
        let replaced: BTreeSet<String> = batch
            .iter()
            .filter(|m| m.object_ref.kind == Kind::Service)
            .map(|m| format!("{}/{}", m.object_ref.namespace, m.object_ref.name))
            .collect();
        // Every node port and health check port in use, and by whom.
        let mut owners: BTreeMap<u16, String> = BTreeMap::new();
        let mut health: BTreeMap<u16, String> = BTreeMap::new();
        for (name, svc) in self.catalog.services() {
            if !replaced.contains(name) {
                for p in svc.spec.ports.iter().filter_map(|p| p.node_port).chain(svc.spec.health_check_node_port) {
                    owners.insert(p as u16, format!("Service {name}"));
                }
                if let Some(hc) = svc.spec.health_check_node_port {
                    health.insert(hc as u16, format!("Service {name}"));
                }
            }
        }
        // No node port may be another service's health check port.
        for m in batch.iter() {
            let Object::Service(s) = &m.object else { continue };
            for (i, p) in s.spec.ports.iter().enumerate() {
                if let Some(other) = p.node_port.and_then(|n| health.get(&(n as u16))) {
                    return Err(CoreError::Invalid(vec![ManifestError::new(
                        &m.origin,
                        m.object_ref.to_string(),
                        format!("spec.ports[{i}].nodePort"),
                        format!("{} is the health check node port of {other}", p.node_port.unwrap_or_default()),
                    )]));
                }
            }
        }
        for m in batch.iter() {
            if let Object::Service(s) = &m.object {
                for p in s.spec.ports.iter().filter_map(|p| p.node_port) {
                    owners.insert(p as u16, format!("Service {}/{}", m.object_ref.namespace, m.object_ref.name));
                }
            }
        }
        // A health check port must be nobody else's port.
        for m in batch.iter() {
            let Object::Service(s) = &m.object else { continue };
            if let Some(hc) = s.spec.health_check_node_port {
                let me = format!("Service {}/{}", m.object_ref.namespace, m.object_ref.name);
                match owners.get(&(hc as u16)) {
                    Some(other) if *other != me || s.spec.ports.iter().any(|p| p.node_port == Some(hc)) => {
                        return Err(CoreError::Invalid(vec![ManifestError::new(
                            &m.origin,
                            m.object_ref.to_string(),
                            "spec.healthCheckNodePort",
                            format!("{hc} is already used by {other}"),
                        )]))
                    }
                    _ => {
                        owners.insert(hc as u16, me);
                    }
                }
            }
        }
        let mut used: BTreeSet<u16> = owners.keys().copied().collect();
        for m in batch.iter_mut() {
            let Object::Service(svc) = &mut m.object else { continue };
            if !svc.has_node_ports() || svc.spec.type_ == ServiceType::ExternalName {
                continue;
            }
            let previous = self.catalog.service(&format!("{}/{}", m.object_ref.namespace, m.object_ref.name)).cloned();
            for (i, p) in svc.spec.ports.iter_mut().enumerate() {
                if p.node_port.is_some() {
                    continue;
                }
                let keep = previous
                    .as_ref()
                    .and_then(|prev| prev.spec.ports.iter().find(|q| q.name() == p.name() && q.protocol == p.protocol))
                    .and_then(|q| q.node_port)
                    .map(|n| n as u16);
                let port = match keep.or_else(|| NODE_PORT_RANGE.clone().find(|n| !used.contains(n))) {
                    Some(n) => n,
                    None => {
                        return Err(CoreError::Invalid(vec![ManifestError::new(
                            &m.origin,
                            m.object_ref.to_string(),
                            format!("spec.ports[{i}].nodePort"),
                            "no free node port left in 30000-32767",
                        )]))
                    }
                };
                used.insert(port);
                p.node_port = Some(port as i64);
                if let Some(ports) = m.raw.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
                    if let Some(obj) = ports.get_mut(i).and_then(Value::as_object_mut) {
                        obj.insert("nodePort".into(), Value::from(port));
                    }
                }
            }
            if svc.needs_health_check() && svc.spec.health_check_node_port.is_none() {
                let keep = previous.as_ref().and_then(|p| p.spec.health_check_node_port).map(|n| n as u16);
                let Some(port) = keep.or_else(|| NODE_PORT_RANGE.clone().find(|n| !used.contains(n))) else {
                    return Err(CoreError::Invalid(vec![ManifestError::new(
                        &m.origin,
                        m.object_ref.to_string(),
                        "spec.healthCheckNodePort",
                        "no free node port left in 30000-32767",
                    )]));
                };
                used.insert(port);
                svc.spec.health_check_node_port = Some(port as i64);
                if let Some(spec) = m.raw.pointer_mut("/spec").and_then(Value::as_object_mut) {
                    spec.insert("healthCheckNodePort".into(), Value::from(port));
                }
            }
        }
        Ok(())
    }

    /// Health check node ports of LoadBalancer services with
    /// `externalTrafficPolicy: Local`, with their endpoints on this node.
    pub fn health_checks(&self) -> Vec<crate::health::HealthCheck> {
        let mut out = Vec::new();
        for (name, svc) in self.catalog.services() {
            let Some(port) = svc.spec.health_check_node_port.filter(|_| svc.needs_health_check()) else { continue };
            // Endpoints, not addresses: a dual-stack pod is one endpoint in
            // each family's slice, so count per family and take the larger.
            let local: BTreeSet<std::net::IpAddr> = self
                .catalog
                .resolve(name)
                .unwrap_or_default()
                .iter()
                .filter(|f| f.key.scope.is_local())
                .flat_map(|f| f.backends.iter().map(|b| b.addr))
                .collect();
            let v4 = local.iter().filter(|a| a.is_ipv4()).count();
            out.push(crate::health::HealthCheck {
                port: port as u16,
                namespace: svc.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
                name: svc.metadata.name.clone(),
                local_endpoints: v4.max(local.len() - v4),
            });
        }
        out
    }

    /// Frontends and backends read back from the maps, annotated with the
    /// service that owns each frontend.
    pub fn services(&self) -> Result<Vec<ServiceView>, CoreError> {
        let dump = self.maps.dump().map_err(|e| CoreError::Maps(e.to_string()))?;
        Ok(views_from_dump(&dump, |k| self.lb.owner_of(k).map(|(s, p)| (s.to_string(), p.to_string()))))
    }

    pub fn lb_dump(&self) -> Result<LbDump, CoreError> {
        self.maps.dump().map_err(|e| CoreError::Maps(e.to_string()))
    }
}

/// Build the per-frontend view from a dump of the maps.
pub fn views_from_dump(dump: &LbDump, owner: impl Fn(&FrontendKey) -> Option<(String, String)>) -> Vec<ServiceView> {
    let mut out = Vec::new();
    for (k, v) in dump.services.iter().filter(|(k, _)| k.slot == 0) {
        let backends = (1..=v.count as u16)
            .filter_map(|slot| dump.services.get(&sluice_lb::SvcKey { frontend: k.frontend, slot }))
            .filter_map(|s| dump.backends.get(&s.backend_id).copied())
            .collect();
        let (service, port_name) = match owner(&k.frontend) {
            Some((s, p)) => (Some(s), p),
            None => (None, String::new()),
        };
        out.push(ServiceView {
            service,
            port_name,
            frontend: k.frontend,
            kind: kind_with_algorithm(k.frontend.scope, v.flags, v.count, dump.maglev.get(&v.rev_nat_id).map(|t| t.len())),
            id: v.rev_nat_id,
            affinity_timeout: (v.flags & sluice_lb::SVC_F_AFFINITY != 0).then_some(v.affinity_timeout),
            backends,
            backend_pods: Vec::new(),
        });
    }
    out
}

/// The FLAGS column of `service list`: the master entry's flags (with
/// `etp-local` for an externalTrafficPolicy: Local service and `dsr` for
/// direct server return), `local-only` for the local twin of an external
/// frontend (this node's backends only, used by traffic from outside),
/// then how the per-packet paths pick a backend (`random`, `maglev/<M>`,
/// or `maglev/no-table` while a Maglev frontend with backends has no
/// table: random then).
fn kind_with_algorithm(scope: Scope, flags: u16, count: u32, maglev_size: Option<usize>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let rest = flags_str(flags & !sluice_lb::SVC_F_MAGLEV);
    if rest != "-" {
        parts.push(rest);
    }
    if scope.is_local() {
        parts.push("local-only".to_string());
    }
    parts.push(match (flags & sluice_lb::SVC_F_MAGLEV != 0, maglev_size) {
        (false, _) => "random".to_string(),
        (true, Some(m)) => format!("maglev/{m}"),
        (true, None) if count == 0 => "maglev".to_string(),
        (true, None) => "maglev/no-table".to_string(),
    });
    parts.join(",")
}

fn kind_of(k: FrontendKey) -> &'static str {
    if k.scope.is_node_port() {
        "node port"
    } else {
        "frontend"
    }
}

/// The batch document to name for a problem of a service: the Service
/// itself if it is in the batch, else the first of its slices that is.
/// Indexed once per batch: a batch of 100,000 conflicting services must
/// not cost 100,000 scans of the batch.
struct Blame {
    by_service: HashMap<String, (Origin, String)>,
}

impl Blame {
    fn new(batch: &[Manifest]) -> Blame {
        let mut by_service: HashMap<String, (Origin, String)> = HashMap::new();
        for m in batch {
            let Some(name) = service_of(&m.object_ref, Some(&m.object)) else { continue };
            let entry = (m.origin.clone(), m.object_ref.to_string());
            if m.object_ref.kind == Kind::Service {
                by_service.insert(name, entry);
            } else {
                by_service.entry(name).or_insert(entry);
            }
        }
        Blame { by_service }
    }

    fn of(&self, name: &str) -> (Origin, String) {
        self.by_service.get(name).cloned().unwrap_or_else(|| (Origin::new("-", 0), format!("Service {name}")))
    }
}
