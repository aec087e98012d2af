//! The desired objects, indexed so that a change finds the services it
//! touches without a scan.

use std::collections::{BTreeMap, BTreeSet};

use sluice_model::{EndpointSlice, Kind, LbAlgorithm, Object, ObjectRef, Pod, Service};

use crate::resolve::{resolve_service_in, ResolveContext, ResolveError};
use crate::types::{DesiredFrontend, ServiceName};

#[derive(Debug, Default, Clone)]
pub struct Catalog {
    services: BTreeMap<ServiceName, Service>,
    slices: BTreeMap<ObjectRef, EndpointSlice>,
    slices_by_service: BTreeMap<ServiceName, BTreeSet<ObjectRef>>,
    /// Pods give endpoints their labels; they touch no service.
    pods: BTreeMap<ObjectRef, Pod>,
    /// Defaults and the node's name, for resolving.
    ctx: ResolveContext,
}

/// `namespace/name` of the service an object is about.
pub fn service_of(r: &ObjectRef, obj: Option<&Object>) -> Option<ServiceName> {
    match (r.kind, obj) {
        (Kind::Service, _) => Some(format!("{}/{}", r.namespace, r.name)),
        (Kind::EndpointSlice, Some(Object::EndpointSlice(s))) => {
            s.service_name().map(|n| format!("{}/{}", r.namespace, n))
        }
        _ => None,
    }
}

impl Catalog {
    pub fn new() -> Self {
        Self::default()
    }

    /// The algorithm of services that do not name one (`--lb-algorithm`).
    pub fn set_default_algorithm(&mut self, a: LbAlgorithm) {
        self.ctx.default_algorithm = a;
    }

    /// Everything resolving depends on besides the objects: the default
    /// algorithm and mode, and this node's name. The caller re-resolves
    /// (and diffs) every service after a change.
    pub fn set_context(&mut self, ctx: ResolveContext) {
        self.ctx = ctx;
    }

    pub fn context(&self) -> &ResolveContext {
        &self.ctx
    }

    /// Insert or replace; returns the services whose frontends may change.
    pub fn upsert(&mut self, r: &ObjectRef, obj: Object) -> BTreeSet<ServiceName> {
        let mut touched = self.remove(r);
        if let Object::Pod(p) = obj {
            self.pods.insert(r.clone(), p);
            return touched;
        }
        if let Some(s) = service_of(r, Some(&obj)) {
            touched.insert(s.clone());
            match obj {
                Object::Service(svc) => {
                    self.services.insert(s, svc);
                }
                Object::EndpointSlice(sl) => {
                    self.slices_by_service.entry(s).or_default().insert(r.clone());
                    self.slices.insert(r.clone(), sl);
                }
                Object::Pod(_) => unreachable!("pods are handled above"),
            }
        }
        touched
    }

    /// Remove; returns the services whose frontends may change.
    pub fn remove(&mut self, r: &ObjectRef) -> BTreeSet<ServiceName> {
        let mut touched = BTreeSet::new();
        match r.kind {
            Kind::Service => {
                let s = format!("{}/{}", r.namespace, r.name);
                if self.services.remove(&s).is_some() {
                    touched.insert(s);
                }
            }
            Kind::EndpointSlice => {
                if let Some(old) = self.slices.remove(r) {
                    if let Some(s) = service_of(r, Some(&Object::EndpointSlice(old))) {
                        if let Some(set) = self.slices_by_service.get_mut(&s) {
                            set.remove(r);
                            if set.is_empty() {
                                self.slices_by_service.remove(&s);
                            }
                        }
                        touched.insert(s);
                    }
                }
            }
            Kind::Pod => {
                self.pods.remove(r);
            }
        }
        touched
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.get(name)
    }

    pub fn services(&self) -> impl Iterator<Item = (&ServiceName, &Service)> {
        self.services.iter()
    }

    /// The applied Pod of that namespace and name.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods.get(&ObjectRef::new(Kind::Pod, namespace, name))
    }

    pub fn slice(&self, r: &ObjectRef) -> Option<&EndpointSlice> {
        self.slices.get(r)
    }

    pub fn len(&self) -> (usize, usize) {
        (self.services.len(), self.slices.len())
    }

    /// Frontends of one service: empty when the service does not exist.
    pub fn resolve(&self, name: &str) -> Result<Vec<DesiredFrontend>, Vec<ResolveError>> {
        let Some(svc) = self.services.get(name) else { return Ok(Vec::new()) };
        let slices: Vec<(&ObjectRef, &EndpointSlice)> = self
            .slices_by_service
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|r| self.slices.get(r).map(|s| (r, s)))
            .collect();
        resolve_service_in(svc, &slices, &self.ctx)
    }
}
