//! The agent's behaviour against in-memory maps: all-or-nothing applies,
//! errors that name file, object and field, conflicts, node ports, restart.

use serde_json::Value;
use sluice_agent::core::CoreError;
use sluice_agent::Core;
use sluice_api::{Document, Target};
use sluice_lb::{LbMaps, MemMaps};
use sluice_model::{parse_documents, Kind, Origin};
use sluice_store::Store;

fn docs(file: &str, text: &str) -> Vec<Document> {
    parse_documents(file, text).unwrap().into_iter().map(|m| Document { origin: m.origin, raw: m.raw }).collect()
}

fn raw_docs(file: &str, text: &str) -> Vec<Document> {
    // Documents as sent by a client that skipped local checks.
    text.split("---")
        .enumerate()
        .map(|(i, t)| {
            let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(t).unwrap();
            Document { origin: Origin::new(file, i + 1), raw: serde_json::to_value(v).unwrap() }
        })
        .collect()
}

const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 198.19.0.1
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [198.18.1.10]
- addresses: [198.18.1.11]
"#;

fn core(dir: &std::path::Path) -> Core<MemMaps> {
    Core::new(Store::open(dir).unwrap(), MemMaps::default()).unwrap().0
}

fn invalid(r: Result<sluice_api::ChangeReport, CoreError>) -> Vec<sluice_model::ManifestError> {
    match r {
        Err(CoreError::Invalid(es)) => es,
        other => panic!("expected invalid, got {other:?}"),
    }
}

#[test]
fn apply_programs_the_maps_and_reports_actions() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = core(dir.path());
    let r = c.apply(docs("web.yaml", WEB), false).unwrap();
    let actions: Vec<&str> = r.results.iter().map(|o| o.action.as_str()).collect();
    assert_eq!(actions, ["created", "created"]);
    let v = c.services().unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].service.as_deref(), Some("default/web"));
    assert_eq!(v[0].backends.len(), 2);
    let r = c.apply(docs("web.yaml", WEB), false).unwrap();
    assert_eq!(r.map_writes, 0);
    assert!(r.results.iter().all(|o| o.action == "unchanged"));
}

#[test]
fn a_bad_document_rejects_the_whole_batch_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = core(dir.path());
    c.apply(docs("web.yaml", WEB), false).unwrap();
    let before = c.lb_dump().unwrap();
    // One good change (a third backend) and one bad service in the same batch.
    let text = format!(
        "{}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: bad}}\nspec:\n  clusterIP: 198.19.0.2\n  ports: [{{port: 99999}}]\n",
        WEB.replace("- addresses: [198.18.1.11]", "- addresses: [198.18.1.11]\n- addresses: [198.18.1.12]")
    );
    let es = invalid(c.apply(raw_docs("batch.yaml", &text), false));
    assert_eq!(es.len(), 1);
    assert_eq!(es[0].origin, Origin::new("batch.yaml", 3));
    assert_eq!(es[0].object, "Service default/bad");
    assert_eq!(es[0].field, "spec.ports[0].port");
    assert_eq!(c.lb_dump().unwrap(), before, "maps unchanged");
    assert_eq!(c.get(Kind::Service).len(), 1, "catalog unchanged");
}

#[test]
fn frontend_conflicts_are_refused_with_both_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = core(dir.path());
    c.apply(docs("web.yaml", WEB), false).unwrap();
    let other = "apiVersion: v1\nkind: Service\nmetadata: {name: other, namespace: team}\nspec:\n  clusterIP: 198.19.0.1\n  ports: [{port: 80}]\n";
    let es = invalid(c.apply(docs("other.yaml", other), false));
    assert_eq!(es[0].object, "Service team/other");
    assert!(es[0].message.contains("198.19.0.1:80/TCP") && es[0].message.contains("default/web"), "{}", es[0].message);
    // Two new services claiming the same VIP in one batch.
    let two = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  clusterIP: 198.19.0.7\n  ports: [{port: 80}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec:\n  clusterIP: 198.19.0.7\n  ports: [{port: 80}]\n";
    let es = invalid(c.apply(docs("two.yaml", two), false));
    assert_eq!(es.len(), 1);
    assert_eq!(es[0].object, "Service default/b");
    assert_eq!(c.get(Kind::Service).len(), 1);
}

#[test]
fn a_named_target_port_nobody_offers_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = core(dir.path());
    let text = WEB.replace("ports: [{name: http, port: 8080}]", "ports: [{name: metrics, port: 9090}]");
    let es = invalid(c.apply(docs("web.yaml", &text), false));
    assert_eq!(es[0].field, "spec.ports[0].targetPort");
    assert_eq!(es[0].object, "Service default/web");
    assert!(c.get(Kind::Service).is_empty());
    assert!(c.lb_dump().unwrap().services.is_empty());
}

#[test]
fn node_ports_are_allocated_kept_and_conflicts_found() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = core(dir.path());
    let np = WEB.replace("clusterIP: 198.19.0.1", "type: NodePort\n  clusterIP: 198.19.0.1");
    c.apply(docs("np.yaml", &np), false).unwrap();
    let stored = c.get(Kind::Service);
    assert_eq!(stored[0].pointer("/spec/ports/0/nodePort"), Some(&Value::from(30000)));
    // Re-applying without a nodePort keeps the allocated one.
    c.apply(docs("np.yaml", &np), false).unwrap();
    assert_eq!(c.get(Kind::Service)[0].pointer("/spec/ports/0/nodePort"), Some(&Value::from(30000)));
    let clash = "apiVersion: v1\nkind: Service\nmetadata: {name: clash}\nspec:\n  type: NodePort\n  clusterIP: 198.19.0.3\n  ports: [{port: 80, nodePort: 30000}]\n";
    let es = invalid(c.apply(docs("clash.yaml", clash), false));
    assert!(es[0].message.contains("node port *:30000/TCP"), "{}", es[0].message);
}

#[test]
fn dry_run_and_delete_are_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = core(dir.path());
    let r = c.apply(docs("web.yaml", WEB), true).unwrap();
    assert!(r.dry_run);
    assert!(c.get(Kind::Service).is_empty());
    c.apply(docs("web.yaml", WEB), false).unwrap();
    let targets = vec![
        Target { origin: Origin::new("d.yaml", 1), kind: Kind::Service, namespace: "default".into(), name: "web".into() },
        Target { origin: Origin::new("d.yaml", 2), kind: Kind::Service, namespace: "default".into(), name: "nope".into() },
    ];
    let es = invalid(c.delete(targets.clone(), false));
    assert_eq!(es[0].object, "Service default/nope");
    assert_eq!(c.get(Kind::Service).len(), 1);
    let r = c.delete(targets, true).unwrap();
    assert_eq!(r.results[1].action, "not found");
    assert!(c.lb_dump().unwrap().services.is_empty());
}

#[test]
fn a_restarted_agent_adopts_the_maps_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let maps = {
        let mut c = core(dir.path());
        c.apply(docs("web.yaml", WEB), false).unwrap();
        c.maps().clone()
    };
    let before = maps.dump().unwrap();
    let (c, writes, warnings) = Core::new(Store::open(dir.path()).unwrap(), maps).unwrap();
    assert_eq!(writes, 0);
    assert!(warnings.is_empty());
    assert_eq!(c.lb_dump().unwrap(), before);
    drop(c);
    // And one that finds maps emptied (e.g. after a reboot) rebuilds them.
    let (c, writes, _) = Core::new(Store::open(dir.path()).unwrap(), MemMaps::default()).unwrap();
    assert!(writes > 0);
    assert_eq!(c.lb_dump().unwrap().services.len(), before.services.len());
}

#[test]
fn cluster_ips_are_allocated_kept_and_exhaustion_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = core(dir.path());
    let svc = |name: &str| format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  ports: [{{port: 80}}]\n");
    // Without a service CIDR, a Service must name its cluster IP.
    let es = invalid(c.apply(docs("a.yaml", &svc("a")), false));
    assert_eq!(es[0].field, "spec.clusterIP");
    c.set_service_cidr(Some("198.19.250.0/30".parse().unwrap()));
    c.apply(docs("a.yaml", &svc("a")), false).unwrap();
    let ip = |c: &Core<MemMaps>, n: usize| c.get(Kind::Service)[n].pointer("/spec/clusterIP").cloned();
    assert_eq!(ip(&c, 0), Some(Value::from("198.19.250.1")));
    // Re-applied without one, it keeps its address; the next gets the next.
    c.apply(docs("a.yaml", &svc("a")), false).unwrap();
    c.apply(docs("b.yaml", &svc("b")), false).unwrap();
    assert_eq!(ip(&c, 0), Some(Value::from("198.19.250.1")));
    assert_eq!(ip(&c, 1), Some(Value::from("198.19.250.2")));
    // A /30 has two usable addresses.
    let es = invalid(c.apply(docs("c.yaml", &svc("c")), false));
    assert!(es[0].message.contains("no free address left in the service CIDR 198.19.250.0/30"), "{}", es[0].message);
    assert_eq!(c.services().unwrap().len(), 2);
}

#[test]
fn service_cidrs_are_checked() {
    use sluice_agent::core::ServiceCidr;
    assert!("10.96.0.0/12".parse::<ServiceCidr>().is_ok());
    assert!("10.96.0.1/12".parse::<ServiceCidr>().unwrap_err().contains("host bits"));
    assert!("10.96.0.0".parse::<ServiceCidr>().is_err());
    assert!("10.96.0.0/31".parse::<ServiceCidr>().is_err());
}

#[test]
fn maglev_by_default_or_annotation_survives_a_restart_and_a_bad_value_is_refused() {
    use sluice_lb::maglev::TableSize;
    use sluice_lb::{LbAlgorithm, LbOptions};
    let dir = tempfile::tempdir().unwrap();
    let opts = LbOptions { default_algorithm: LbAlgorithm::Maglev, maglev_size: TableSize::new(4093).unwrap(), ..Default::default() };
    let (mut c, _, _) = Core::with_options(Store::open(dir.path()).unwrap(), MemMaps::default(), opts.clone()).unwrap();
    c.apply(docs("web.yaml", WEB), false).unwrap();
    let tables = c.lb_dump().unwrap().maglev;
    assert_eq!(tables.len(), 1);
    assert!(tables.values().all(|t| t.len() == 4093));
    let views = c.services().unwrap();
    assert_eq!(views[0].kind, "maglev/4093");

    // The annotation overrides the default.
    let random = WEB.replace("metadata: {name: web}", "metadata: {name: web, annotations: {sluice.io/lb-algorithm: random}}");
    c.apply(docs("web.yaml", &random), false).unwrap();
    assert!(c.lb_dump().unwrap().maglev.is_empty());
    assert_eq!(c.services().unwrap()[0].kind, "random");
    c.apply(docs("web.yaml", WEB), false).unwrap();

    // A bad value names file, object and field, and changes nothing.
    let bad = WEB.replace("metadata: {name: web}", "metadata: {name: web, annotations: {sluice.io/lb-algorithm: rendezvous}}");
    let es = invalid(c.apply(raw_docs("web.yaml", &bad), false));
    assert_eq!(es.len(), 1, "{es:?}");
    assert_eq!(es[0].object, "Service default/web");
    assert_eq!(es[0].field, "metadata.annotations[\"sluice.io/lb-algorithm\"]");
    assert!(es[0].to_string().starts_with("web.yaml"), "{}", es[0]);

    // Restarted with the same settings: nothing to write. With another
    // table size: only the table is rewritten.
    let maps = c.maps().clone();
    drop(c);
    let (c, writes, warnings) = Core::with_options(Store::open(dir.path()).unwrap(), maps.clone(), opts.clone()).unwrap();
    assert_eq!((writes, warnings.len()), (0, 0), "{warnings:?}");
    drop(c);
    let bigger = LbOptions { maglev_size: TableSize::new(16381).unwrap(), ..opts };
    let (c, writes, _) = Core::with_options(Store::open(dir.path()).unwrap(), maps, bigger).unwrap();
    assert_eq!(writes, 1);
    assert!(c.lb_dump().unwrap().maglev.values().all(|t| t.len() == 16381));
}

const LOCAL: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: edge}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  clusterIP: 198.19.0.7
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30007}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: edge-1, labels: {kubernetes.io/service-name: edge}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [198.18.7.10], nodeName: node-a}
- {addresses: [198.18.7.11], nodeName: node-b}
- {addresses: [198.18.7.12], nodeName: node-b}
"#;

#[test]
fn local_policy_twins_flags_restart_node_name_and_mode() {
    use sluice_lb::{LbMode, LbOptions, Scope};
    let dir = tempfile::tempdir().unwrap();
    let opts = LbOptions { node_name: "node-b".into(), ..Default::default() };
    let (mut c, _, _) = Core::with_options(Store::open(dir.path()).unwrap(), MemMaps::default(), opts.clone()).unwrap();
    assert_eq!(c.lb_options().node_name, "node-b");
    c.apply(docs("edge.yaml", LOCAL), false).unwrap();
    let views = c.services().unwrap();
    let shown: Vec<(String, String, usize)> = views.iter().map(|v| (v.frontend.to_string(), v.kind.clone(), v.backends.len())).collect();
    assert_eq!(
        shown,
        [
            ("*:30007/TCP".to_string(), "nodeport,etp-local,random".to_string(), 3),
            ("*:30007/TCP[local]".to_string(), "nodeport,etp-local,local-only,random".to_string(), 2),
            ("198.19.0.7:80/TCP".to_string(), "random".to_string(), 3),
        ]
    );
    assert_eq!(views[1].frontend.scope, Scope::NodePortLocal);
    assert_eq!(views[1].service.as_deref(), Some("default/edge"));
    assert_ne!(views[0].id, views[1].id);

    // Restarted with the same settings: nothing to write.
    let maps = c.maps().clone();
    drop(c);
    let (c, writes, warnings) = Core::with_options(Store::open(dir.path()).unwrap(), maps.clone(), opts.clone()).unwrap();
    assert_eq!((writes, warnings.len()), (0, 0), "{warnings:?}");
    drop(c);
    // Restarted on another node name: only the twin changes (slot 1
    // rewritten, the count, slot 2 deleted).
    let moved = LbOptions { node_name: "node-a".into(), ..opts.clone() };
    let (mut c, writes, _) = Core::with_options(Store::open(dir.path()).unwrap(), maps, moved.clone()).unwrap();
    assert_eq!(writes, 3);
    assert_eq!(c.services().unwrap()[1].backends.len(), 1);

    // DSR by default while running: the two node-port masters only.
    let writes = c.set_lb_options(LbOptions { default_mode: LbMode::Dsr, ..moved.clone() }).unwrap();
    assert_eq!(writes, 2);
    let kinds: Vec<String> = c.services().unwrap().into_iter().map(|v| v.kind).collect();
    assert_eq!(kinds, ["nodeport,etp-local,dsr,random", "nodeport,etp-local,dsr,local-only,random", "random"]);
    // A node with no endpoint: the twin is empty.
    c.set_lb_options(LbOptions { node_name: "node-c".into(), ..moved.clone() }).unwrap();
    assert!(c.services().unwrap()[1].backends.is_empty());
    assert!(c.take_doomed().is_empty(), "no socket ever goes through a twin");
    assert!(c.set_lb_options(LbOptions { maglev_size: sluice_lb::maglev::TableSize::new(4093).unwrap(), ..moved.clone() }).is_err());

    // Local -> Cluster: the twin goes, the flag too.
    let cluster = LOCAL.replace("externalTrafficPolicy: Local", "externalTrafficPolicy: Cluster");
    c.apply(docs("edge.yaml", &cluster), false).unwrap();
    let views = c.services().unwrap();
    assert_eq!(views.len(), 2);
    assert!(views.iter().all(|v| !v.frontend.scope.is_local() && !v.kind.contains("etp-local")));

    // A bad policy, and a policy on a service nothing outside reaches, name
    // file, object and field, and change nothing.
    let before = c.lb_dump().unwrap();
    let bad = LOCAL.replace("externalTrafficPolicy: Local", "externalTrafficPolicy: OnlyLocal");
    let es = invalid(c.apply(raw_docs("edge.yaml", &bad), false));
    assert_eq!(es.len(), 1, "{es:?}");
    assert_eq!((es[0].object.as_str(), es[0].field.as_str()), ("Service default/edge", "spec.externalTrafficPolicy"));
    assert!(es[0].to_string().starts_with("edge.yaml (document 1)"), "{}", es[0]);
    let internal = LOCAL.replace("  type: NodePort\n", "").replace(", nodePort: 30007", "");
    let es = invalid(c.apply(raw_docs("edge.yaml", &internal), false));
    assert_eq!(es[0].field, "spec.externalTrafficPolicy");
    assert!(es[0].message.contains("externally-accessible"), "{}", es[0]);
    let es = invalid(c.apply(raw_docs("edge.yaml", &LOCAL.replace("metadata: {name: edge}", "metadata: {name: edge, annotations: {sluice.io/lb-mode: direct}}")), false));
    assert_eq!(es[0].field, "metadata.annotations[\"sluice.io/lb-mode\"]");
    assert_eq!(c.lb_dump().unwrap(), before);
}

#[test]
fn a_node_port_taken_by_a_local_service_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = core(dir.path());
    c.apply(docs("edge.yaml", LOCAL), false).unwrap();
    let other = LOCAL.replace("name: edge", "name: other").replace("kubernetes.io/service-name: edge", "kubernetes.io/service-name: other").replace("198.19.0.7", "198.19.0.8");
    let es = invalid(c.apply(docs("other.yaml", &other), false));
    assert_eq!(es.len(), 1, "{es:?}");
    assert_eq!(es[0].field, "spec.ports[].nodePort");
    assert!(es[0].message.contains("*:30007/TCP is already used by Service default/edge"), "{}", es[0]);
}

#[test]
fn health_check_node_ports_are_allocated_kept_reported_and_conflicts_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = core(dir.path());
    let lb = WEB.replace("clusterIP: 198.19.0.1", "type: LoadBalancer\n  externalTrafficPolicy: Local\n  clusterIP: 198.19.0.1");
    c.apply(docs("lb.yaml", &lb), false).unwrap();
    let stored = c.get(Kind::Service);
    // The node port takes 30000, the health check port the next free one.
    assert_eq!(stored[0].pointer("/spec/ports/0/nodePort"), Some(&Value::from(30000)));
    assert_eq!(stored[0].pointer("/spec/healthCheckNodePort"), Some(&Value::from(30001)));
    // Kept on re-apply.
    c.apply(docs("lb.yaml", &lb), false).unwrap();
    assert_eq!(c.get(Kind::Service)[0].pointer("/spec/healthCheckNodePort"), Some(&Value::from(30001)));
    // Reported with the endpoints on this node (none have a nodeName here).
    let hc = c.health_checks();
    assert_eq!(hc.len(), 1);
    assert_eq!((hc[0].port, hc[0].name.as_str(), hc[0].local_endpoints), (30001, "web", 0));
    // Another service may not take it as a node port...
    let clash = "apiVersion: v1\nkind: Service\nmetadata: {name: clash}\nspec:\n  type: NodePort\n  clusterIP: 198.19.0.3\n  ports: [{port: 80, nodePort: 30001}]\n";
    let es = invalid(c.apply(docs("clash.yaml", clash), false));
    assert_eq!(es[0].field, "spec.ports[0].nodePort", "{es:?}");
    assert!(es[0].message.contains("30001 is the health check node port of Service default/web"), "{}", es[0].message);
    // ...nor as its health check port.
    let clash2 = "apiVersion: v1\nkind: Service\nmetadata: {name: clash2}\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 30001\n  clusterIP: 198.19.0.4\n  ports: [{port: 80}]\n";
    let es = invalid(c.apply(docs("clash2.yaml", clash2), false));
    assert_eq!(es[0].field, "spec.healthCheckNodePort");
    assert!(es[0].message.contains("30001 is already used by Service default/web"), "{}", es[0].message);
    // Only for LoadBalancer + Local.
    let wrong = "apiVersion: v1\nkind: Service\nmetadata: {name: wrong}\nspec:\n  type: NodePort\n  healthCheckNodePort: 31000\n  clusterIP: 198.19.0.5\n  ports: [{port: 80}]\n";
    let es = invalid(c.apply(raw_docs("wrong.yaml", wrong), false));
    assert_eq!(es[0].field, "spec.healthCheckNodePort");
    assert!(es[0].message.contains("LoadBalancer with externalTrafficPolicy: Local"), "{}", es[0].message);
    // Switching to Cluster drops it.
    let cluster = lb.replace("  externalTrafficPolicy: Local\n", "");
    c.apply(docs("lb.yaml", &cluster), false).unwrap();
    assert!(c.health_checks().is_empty());
}
