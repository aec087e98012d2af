//! From a Service and its EndpointSlices to frontends with active backends.
//!
//! Kubernetes' rules, as kube-proxy applies them:
//! - an endpoint is used when it is ready; when a family has no ready
//!   endpoint at all, the endpoints that are serving and terminating are
//!   used instead, so that connections drain rather than fail;
//! - a service port is matched to a slice port by the service port's name
//!   (and protocol); a slice's port number is the resolved target port;
//! - `externalTrafficPolicy: Local`: traffic from outside the cluster to an
//!   external frontend (node port, external IP, load-balancer IP; never the
//!   cluster IP) only reaches the endpoints whose `nodeName` is this node:
//!   the ready ones, else the serving and terminating ones, else none (the
//!   node drops it). Each external frontend then has a local twin
//!   ([`Scope::VipLocal`], [`Scope::NodePortLocal`]) with those backends,
//!   and its ordinary entry (every backend, for traffic from inside the
//!   cluster) is flagged [`SVC_F_ETP_LOCAL`].

use std::collections::BTreeSet;
use std::net::IpAddr;

use sluice_model::{EndpointSlice, ExternalTrafficPolicy, IntOrString, LbAlgorithm, LbMode, ObjectRef, Service, ServiceType};

use crate::types::*;

/// A service that cannot be programmed as it stands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {field}: {message}")]
pub struct ResolveError {
    pub object: ObjectRef,
    pub field: String,
    pub message: String,
}

/// What resolving needs to know of the agent and the node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResolveContext {
    /// For services without a `sluice.io/lb-algorithm` annotation.
    pub default_algorithm: LbAlgorithm,
    /// For services without a `sluice.io/lb-mode` annotation.
    pub default_mode: LbMode,
    /// This node's name: endpoints with this `nodeName` are local.
    pub node_name: String,
}

/// Frontends of `svc` with their active backends. `slices` are the slices
/// whose service-name label names `svc`. Backends are picked at random
/// unless the service's annotation asks for Maglev.
pub fn resolve_service(
    svc: &Service,
    slices: &[(&ObjectRef, &EndpointSlice)],
) -> Result<Vec<DesiredFrontend>, Vec<ResolveError>> {
    resolve_service_in(svc, slices, &ResolveContext::default())
}

/// [`resolve_service`], with `default` for a service without a
/// `sluice.io/lb-algorithm` annotation (and no node name: an
/// `externalTrafficPolicy: Local` service has no local backend).
pub fn resolve_service_with(
    svc: &Service,
    slices: &[(&ObjectRef, &EndpointSlice)],
    default: LbAlgorithm,
) -> Result<Vec<DesiredFrontend>, Vec<ResolveError>> {
    resolve_service_in(svc, slices, &ResolveContext { default_algorithm: default, ..Default::default() })
}

/// [`resolve_service`] on the node and with the defaults of `ctx`.
pub fn resolve_service_in(
    svc: &Service,
    slices: &[(&ObjectRef, &EndpointSlice)],
    ctx: &ResolveContext,
) -> Result<Vec<DesiredFrontend>, Vec<ResolveError>> {
    let svc_ref = ObjectRef::new(sluice_model::Kind::Service, svc.metadata.namespace(), &svc.metadata.name);
    let mut out = Vec::new();
    let mut errors = Vec::new();
    if svc.spec.type_ == ServiceType::ExternalName {
        return Ok(out);
    }
    let cluster_ips = svc.cluster_ips();
    let affinity = svc.affinity_timeout();
    let mut base_flags = if affinity.is_some() { SVC_F_AFFINITY } else { 0 };
    if svc.lb_algorithm().unwrap_or(ctx.default_algorithm) == LbAlgorithm::Maglev {
        base_flags |= SVC_F_MAGLEV;
    }
    // Flags of the external frontends only (node ports, external and
    // load-balancer IPs).
    let etp_local = svc.external_traffic_policy() == ExternalTrafficPolicy::Local;
    let mut external_flags = 0;
    if etp_local {
        external_flags |= SVC_F_ETP_LOCAL;
    }
    if svc.lb_mode().unwrap_or(ctx.default_mode) == LbMode::Dsr {
        external_flags |= SVC_F_DSR;
    }
    let timeout = affinity.unwrap_or(0);

    for (pi, port) in svc.spec.ports.iter().enumerate() {
        for v6 in [false, true] {
            let vips: Vec<IpAddr> = cluster_ips.iter().copied().filter(|a| a.is_ipv6() == v6).collect();
            let ext: Vec<IpAddr> = svc.external_ips().into_iter().filter(|a| a.is_ipv6() == v6).collect();
            let lbs: Vec<IpAddr> = if svc.spec.type_ == ServiceType::LoadBalancer {
                svc.load_balancer_ips().into_iter().filter(|a| a.is_ipv6() == v6).collect()
            } else {
                Vec::new()
            };
            let node_port = if svc.has_node_ports() && !vips.is_empty() { port.node_port } else { None };
            if vips.is_empty() && ext.is_empty() && lbs.is_empty() {
                continue;
            }
            let be = match backends_for(svc, &svc_ref, pi, v6, slices, &ctx.node_name) {
                Ok(b) => b,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            let proto = port.protocol;
            let mut push = |key: FrontendKey, flags: u16| {
                let external = flags & (SVC_F_EXTERNAL_IP | SVC_F_LOADBALANCER | SVC_F_NODEPORT) != 0;
                let flags = base_flags | flags | if external { external_flags } else { 0 };
                out.push(DesiredFrontend {
                    key,
                    flags,
                    affinity_timeout: timeout,
                    port_name: port.name().to_string(),
                    backends: be.active.clone(),
                    serving: be.serving.clone(),
                });
                if external && etp_local {
                    out.push(DesiredFrontend {
                        key: key.local_twin(),
                        flags,
                        affinity_timeout: timeout,
                        port_name: port.name().to_string(),
                        backends: be.local_active.clone(),
                        serving: be.local_serving.clone(),
                    });
                }
            };
            for a in vips {
                push(FrontendKey { addr: a, port: port.port_u16(), proto, scope: Scope::Vip }, 0);
            }
            for a in ext {
                push(FrontendKey { addr: a, port: port.port_u16(), proto, scope: Scope::Vip }, SVC_F_EXTERNAL_IP);
            }
            for a in lbs {
                push(FrontendKey { addr: a, port: port.port_u16(), proto, scope: Scope::Vip }, SVC_F_LOADBALANCER);
            }
            if let Some(np) = node_port {
                push(FrontendKey::node_port(v6, np as u16, proto), SVC_F_NODEPORT);
            }
        }
    }
    // One frontend listed twice by the same service (an external IP equal to
    // the cluster IP, say) is a manifest error, not a silent merge.
    let mut seen = BTreeSet::new();
    for f in &out {
        if !seen.insert(f.key) {
            errors.push(ResolveError {
                object: svc_ref.clone(),
                field: "spec".into(),
                message: format!("frontend {} is listed twice in this service", f.key),
            });
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The backends of one service port in one family.
struct Backends {
    /// Active: ready endpoints, else serving and terminating ones.
    active: Vec<BackendKey>,
    /// Every serving endpoint (sockets to them may stay).
    serving: Vec<BackendKey>,
    /// The same among the endpoints on this node, chosen on their own (a
    /// node with no ready local endpoint falls back to its terminating
    /// ones, even when other nodes have ready ones: as kube-proxy does).
    local_active: Vec<BackendKey>,
    local_serving: Vec<BackendKey>,
}

fn backends_for(
    svc: &Service,
    svc_ref: &ObjectRef,
    port_index: usize,
    v6: bool,
    slices: &[(&ObjectRef, &EndpointSlice)],
    node_name: &str,
) -> Result<Backends, ResolveError> {
    let port = &svc.spec.ports[port_index];
    let mut ready = BTreeSet::new();
    let mut draining = BTreeSet::new();
    let mut local_ready = BTreeSet::new();
    let mut local_draining = BTreeSet::new();
    let mut offered_names: BTreeSet<String> = BTreeSet::new();
    let mut any_endpoint = false;
    let mut matched_any = false;

    for (_, slice) in slices.iter().filter(|(_, s)| s.is_ipv6() == v6) {
        for p in &slice.ports {
            offered_names.insert(p.name().to_string());
        }
        any_endpoint |= !slice.endpoints.is_empty();
        let target = match slice_port(slice, port) {
            Some(t) => t,
            None => continue,
        };
        matched_any = true;
        for ep in &slice.endpoints {
            let c = &ep.conditions;
            let local = !node_name.is_empty() && ep.is_on(node_name);
            let (set, local_set) = if c.ready() {
                (&mut ready, &mut local_ready)
            } else if c.serving() && c.terminating() {
                (&mut draining, &mut local_draining)
            } else {
                continue;
            };
            for a in ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                let b = BackendKey { addr: a, port: target, proto: port.protocol };
                set.insert(b);
                if local {
                    local_set.insert(b);
                }
            }
        }
    }
    if any_endpoint && !matched_any {
        let wanted = match &port.target_port {
            Some(IntOrString::String(n)) => format!("named target port {n:?} (or a slice port named {:?})", port.name()),
            _ => format!("a slice port named {:?}", port.name()),
        };
        let offered: Vec<String> = offered_names.into_iter().map(|n| format!("{n:?}")).collect();
        return Err(ResolveError {
            object: svc_ref.clone(),
            field: format!("spec.ports[{port_index}].targetPort"),
            message: format!(
                "no {} EndpointSlice of this service offers {wanted}/{} (ports offered: {})",
                if v6 { "IPv6" } else { "IPv4" },
                port.protocol.as_str(),
                if offered.is_empty() { "none".to_string() } else { offered.join(", ") }
            ),
        });
    }
    let pick = |ready: BTreeSet<BackendKey>, draining: BTreeSet<BackendKey>| {
        let serving: Vec<BackendKey> = ready.union(&draining).copied().collect();
        let chosen = if ready.is_empty() { draining } else { ready };
        (chosen.into_iter().collect::<Vec<_>>(), serving)
    };
    let (active, serving) = pick(ready, draining);
    let (local_active, local_serving) = pick(local_ready, local_draining);
    Ok(Backends { active, serving, local_active, local_serving })
}

/// The port number endpoints of `slice` serve `port` on, if they serve it.
fn slice_port(slice: &EndpointSlice, port: &sluice_model::ServicePort) -> Option<u16> {
    let by_name = |name: &str| {
        slice
            .ports
            .iter()
            .find(|p| p.name() == name && p.protocol == port.protocol)
            .and_then(|p| p.port)
            .map(|n| n as u16)
    };
    // Kubernetes: the slice port carries the service port's name.
    if let Some(n) = by_name(port.name()) {
        return Some(n);
    }
    match &port.target_port {
        // A hand-written slice may name the container port instead.
        Some(IntOrString::String(n)) => by_name(n),
        // A slice without ports serves the numeric target port.
        Some(IntOrString::Int(n)) if slice.ports.is_empty() => Some(*n as u16),
        None if slice.ports.is_empty() => Some(port.port_u16()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_model::{parse_documents, Object};

    fn load(text: &str) -> (Service, Vec<(ObjectRef, EndpointSlice)>) {
        let mut svc = None;
        let mut slices = Vec::new();
        for m in parse_documents("t.yaml", text).unwrap() {
            match m.object {
                Object::Service(s) => svc = Some(s),
                Object::EndpointSlice(s) => slices.push((m.object_ref, s)),
                Object::Pod(_) => {}
            }
        }
        (svc.unwrap(), slices)
    }

    fn resolve(text: &str) -> Result<Vec<DesiredFrontend>, Vec<ResolveError>> {
        let (svc, slices) = load(text);
        let refs: Vec<(&ObjectRef, &EndpointSlice)> = slices.iter().map(|(r, s)| (r, s)).collect();
        resolve_service(&svc, &refs)
    }

    const BASE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  clusterIP: 198.19.0.1
  externalIPs: [198.19.9.9]
  ports: [{name: http, port: 80, targetPort: web, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [198.18.1.10], conditions: {ready: true}}
- {addresses: [198.18.1.11], conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [198.18.1.12]}
- {addresses: [198.18.1.13], conditions: {ready: false}}
"#;

    #[test]
    fn ready_endpoints_on_every_frontend() {
        let fs = resolve(BASE).unwrap();
        let keys: Vec<String> = fs.iter().map(|f| f.key.to_string()).collect();
        assert_eq!(keys, ["198.19.0.1:80/TCP", "198.19.9.9:80/TCP", "*:30080/TCP"]);
        let be: Vec<String> = fs[0].backends.iter().map(|b| b.to_string()).collect();
        assert_eq!(be, ["198.18.1.10:8080/TCP", "198.18.1.12:8080/TCP"]);
        assert_eq!(fs[1].flags, SVC_F_EXTERNAL_IP);
        assert_eq!(fs[2].flags, SVC_F_NODEPORT);
    }

    #[test]
    fn terminating_serving_endpoints_are_the_fallback() {
        let text = BASE.replace("conditions: {ready: true}", "conditions: {ready: false}")
            .replace("- {addresses: [198.18.1.12]}", "");
        let fs = resolve(&text).unwrap();
        let be: Vec<String> = fs[0].backends.iter().map(|b| b.to_string()).collect();
        assert_eq!(be, ["198.18.1.11:8080/TCP"]);
    }

    #[test]
    fn unmatched_named_port_is_an_error() {
        let text = BASE.replace("ports: [{name: http, port: 8080}]", "ports: [{name: metrics, port: 9090}]");
        let errs = resolve(&text).unwrap_err();
        assert_eq!(errs[0].field, "spec.ports[0].targetPort");
        assert!(errs[0].message.contains("\"web\""), "{}", errs[0].message);
        assert!(errs[0].message.contains("\"metrics\""), "{}", errs[0].message);
    }

    #[test]
    fn slice_port_named_after_target_port_is_accepted() {
        let text = BASE.replace("ports: [{name: http, port: 8080}]", "ports: [{name: web, port: 8081}]");
        let fs = resolve(&text).unwrap();
        assert_eq!(fs[0].backends[0].port, 8081);
    }

    #[test]
    fn maglev_by_annotation_or_by_default() {
        let (svc, slices) = load(BASE);
        let refs: Vec<(&ObjectRef, &EndpointSlice)> = slices.iter().map(|(r, s)| (r, s)).collect();
        let fs = resolve_service_with(&svc, &refs, LbAlgorithm::Random).unwrap();
        assert!(fs.iter().all(|f| f.flags & SVC_F_MAGLEV == 0));
        let fs = resolve_service_with(&svc, &refs, LbAlgorithm::Maglev).unwrap();
        assert!(fs.iter().all(|f| f.flags & SVC_F_MAGLEV != 0));
        assert_eq!(fs[2].flags, SVC_F_NODEPORT | SVC_F_MAGLEV);
        // The annotation wins over the default, both ways.
        for (value, want) in [("random", 0), ("maglev", SVC_F_MAGLEV)] {
            let text = BASE.replace("metadata: {name: web}", &format!("metadata: {{name: web, annotations: {{sluice.io/lb-algorithm: {value}}}}}"));
            let (svc, slices) = load(&text);
            let refs: Vec<(&ObjectRef, &EndpointSlice)> = slices.iter().map(|(r, s)| (r, s)).collect();
            for default in [LbAlgorithm::Random, LbAlgorithm::Maglev] {
                let fs = resolve_service_with(&svc, &refs, default).unwrap();
                assert!(fs.iter().all(|f| f.flags & SVC_F_MAGLEV == want), "{value} over {default}");
            }
        }
    }

    /// A LoadBalancer service with an external IP and a load-balancer IP,
    /// endpoints on node-a (two ready), node-b (one ready) and one with no
    /// node name.
    const LOCAL: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  sessionAffinity: ClientIP
  clusterIP: 198.19.0.1
  externalIPs: [198.19.9.9]
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]
status: {loadBalancer: {ingress: [{ip: 198.19.8.8}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [198.18.1.10], nodeName: node-a}
- {addresses: [198.18.1.11], nodeName: node-a}
- {addresses: [198.18.1.12], nodeName: node-a, conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [198.18.2.10], nodeName: node-b}
- {addresses: [198.18.3.10]}
"#;

    fn resolve_on(text: &str, node: &str, mode: LbMode) -> Vec<DesiredFrontend> {
        let (svc, slices) = load(text);
        let refs: Vec<(&ObjectRef, &EndpointSlice)> = slices.iter().map(|(r, s)| (r, s)).collect();
        let ctx = ResolveContext { default_algorithm: LbAlgorithm::Random, default_mode: mode, node_name: node.into() };
        resolve_service_in(&svc, &refs, &ctx).unwrap()
    }

    fn addrs(bs: &[BackendKey]) -> Vec<String> {
        bs.iter().map(|b| b.addr.to_string()).collect()
    }

    #[test]
    fn local_policy_gives_each_external_frontend_a_twin_with_local_backends() {
        let fs = resolve_on(LOCAL, "node-a", LbMode::Snat);
        let keys: Vec<String> = fs.iter().map(|f| f.key.to_string()).collect();
        assert_eq!(
            keys,
            [
                "198.19.0.1:80/TCP",
                "198.19.9.9:80/TCP",
                "198.19.9.9:80/TCP[local]",
                "198.19.8.8:80/TCP",
                "198.19.8.8:80/TCP[local]",
                "*:30080/TCP",
                "*:30080/TCP[local]",
            ]
        );
        let all = ["198.18.1.10", "198.18.1.11", "198.18.2.10", "198.18.3.10"];
        for f in &fs {
            if f.key.scope.is_local() {
                // Only node-a's ready endpoints; the terminating one still
                // serves (its sockets are kept) but is not active.
                assert_eq!(addrs(&f.backends), ["198.18.1.10", "198.18.1.11"], "{}", f.key);
                assert_eq!(addrs(&f.serving), ["198.18.1.10", "198.18.1.11", "198.18.1.12"]);
                assert_eq!(f.key.scope.number() & 2, 2);
            } else {
                assert_eq!(addrs(&f.backends), all, "{}: every backend", f.key);
            }
        }
        // The cluster IP: no ETP flag, no twin. External ones: the flag on
        // both the ordinary entry and the twin, with the same other flags.
        assert_eq!(fs[0].flags, SVC_F_AFFINITY);
        assert_eq!(fs[1].flags, SVC_F_AFFINITY | SVC_F_EXTERNAL_IP | SVC_F_ETP_LOCAL);
        assert_eq!(fs[3].flags, SVC_F_AFFINITY | SVC_F_LOADBALANCER | SVC_F_ETP_LOCAL);
        assert_eq!(fs[5].flags, SVC_F_AFFINITY | SVC_F_NODEPORT | SVC_F_ETP_LOCAL);
        for pair in [(1, 2), (3, 4), (5, 6)] {
            assert_eq!(fs[pair.0].flags, fs[pair.1].flags);
            assert_eq!(fs[pair.0].affinity_timeout, fs[pair.1].affinity_timeout);
            assert_eq!(fs[pair.0].key.local_twin(), fs[pair.1].key);
        }
        assert_eq!(fs[6].key.scope, Scope::NodePortLocal);
        assert_eq!(fs[2].key.scope, Scope::VipLocal);

        let fs = resolve_on(LOCAL, "node-b", LbMode::Snat);
        assert_eq!(addrs(&fs[2].backends), ["198.18.2.10"]);
    }

    #[test]
    fn local_policy_without_local_endpoints_has_empty_twins() {
        for node in ["node-c", ""] {
            let fs = resolve_on(LOCAL, node, LbMode::Snat);
            assert_eq!(fs.len(), 7);
            for f in fs.iter().filter(|f| f.key.scope.is_local()) {
                assert!(f.backends.is_empty() && f.serving.is_empty(), "{node:?} {}", f.key);
            }
            assert_eq!(fs[5].backends.len(), 4, "the ordinary entry keeps every backend");
        }
    }

    #[test]
    fn local_terminating_endpoints_are_the_local_fallback() {
        // node-a has no ready endpoint left, only a terminating one: the
        // twin uses it, although node-b has a ready one.
        let text = LOCAL.replace("- {addresses: [198.18.1.10], nodeName: node-a}\n- {addresses: [198.18.1.11], nodeName: node-a}\n", "");
        let fs = resolve_on(&text, "node-a", LbMode::Snat);
        assert_eq!(addrs(&fs[6].backends), ["198.18.1.12"]);
        assert_eq!(addrs(&fs[5].backends), ["198.18.2.10", "198.18.3.10"]);
    }

    #[test]
    fn cluster_policy_has_no_twin_and_no_flag() {
        for text in [LOCAL.replace("  externalTrafficPolicy: Local\n", ""), LOCAL.replace("externalTrafficPolicy: Local", "externalTrafficPolicy: Cluster")] {
            let fs = resolve_on(&text, "node-a", LbMode::Snat);
            assert_eq!(fs.len(), 4);
            assert!(fs.iter().all(|f| !f.key.scope.is_local() && f.flags & (SVC_F_ETP_LOCAL | SVC_F_DSR) == 0));
        }
    }

    #[test]
    fn dsr_is_set_on_external_frontends_only() {
        // By the agent's default...
        let fs = resolve_on(LOCAL, "node-a", LbMode::Dsr);
        assert_eq!(fs[0].flags & SVC_F_DSR, 0, "not on the cluster IP");
        assert!(fs[1..].iter().all(|f| f.flags & SVC_F_DSR != 0), "on every external frontend and twin");
        // ...or the annotation, which wins both ways.
        let annotated = |v: &str| LOCAL.replace("metadata: {name: web}", &format!("metadata: {{name: web, annotations: {{sluice.io/lb-mode: {v}}}}}"));
        for default in [LbMode::Snat, LbMode::Dsr] {
            let fs = resolve_on(&annotated("dsr"), "node-a", default);
            assert_eq!(fs.iter().map(|f| f.flags & SVC_F_DSR != 0).collect::<Vec<_>>(), [false, true, true, true, true, true, true]);
            let fs = resolve_on(&annotated("snat"), "node-a", default);
            assert!(fs.iter().all(|f| f.flags & SVC_F_DSR == 0));
        }
        // With the Cluster policy too, and without twins.
        let fs = resolve_on(&annotated("dsr").replace("  externalTrafficPolicy: Local\n", ""), "node-a", LbMode::Snat);
        assert_eq!(fs.iter().map(|f| f.flags).collect::<Vec<_>>(), [
            SVC_F_AFFINITY,
            SVC_F_AFFINITY | SVC_F_EXTERNAL_IP | SVC_F_DSR,
            SVC_F_AFFINITY | SVC_F_LOADBALANCER | SVC_F_DSR,
            SVC_F_AFFINITY | SVC_F_NODEPORT | SVC_F_DSR,
        ]);
    }

    #[test]
    fn local_twins_of_maglev_services_are_maglev_too() {
        let text = LOCAL.replace("metadata: {name: web}", "metadata: {name: web, annotations: {sluice.io/lb-algorithm: maglev}}");
        let fs = resolve_on(&text, "node-a", LbMode::Snat);
        assert!(fs.iter().all(|f| f.flags & SVC_F_MAGLEV != 0));
    }

    #[test]
    fn affinity_and_no_backends() {
        let text = r#"
apiVersion: v1
kind: Service
metadata: {name: dns}
spec:
  clusterIP: fd00:5c:ff::53
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  ports: [{port: 53, protocol: UDP}]
"#;
        let fs = resolve(text).unwrap();
        assert_eq!(fs.len(), 1);
        assert_eq!(fs[0].key.to_string(), "[fd00:5c:ff::53]:53/UDP");
        assert_eq!(fs[0].flags, SVC_F_AFFINITY);
        assert_eq!(fs[0].affinity_timeout, 60);
        assert!(fs[0].backends.is_empty());
    }
}
