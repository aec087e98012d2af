//! Reading manifests: YAML or JSON, one or many documents per file, `List`
//! objects expanded, each document checked on its own.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::endpointslice::EndpointSlice;
use crate::error::{Checker, ManifestError, Origin};
use crate::pod::Pod;
use crate::service::Service;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    Service,
    EndpointSlice,
    Pod,
}

impl Kind {
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Service => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::Pod => "v1",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Pod => "Pod",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "Service" => Some(Kind::Service),
            "EndpointSlice" => Some(Kind::EndpointSlice),
            "Pod" => Some(Kind::Pod),
            _ => None,
        }
    }
}

/// `Kind namespace/name`: how objects are named to people and in the store.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectRef { kind, namespace: namespace.into(), name: name.into() }
    }

    /// The key under which the object is stored.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.kind.as_str(), self.namespace, self.name)
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind.as_str(), self.namespace, self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Service(Service),
    EndpointSlice(EndpointSlice),
    Pod(Pod),
}

/// One accepted document: where it came from, its stored form, its typed form.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub origin: Origin,
    pub object_ref: ObjectRef,
    /// The document as given (JSON form), kept so `get` shows what was applied.
    pub raw: Value,
    pub object: Object,
}

/// Parse every document of one file. All errors of the file are returned,
/// not just the first.
pub fn parse_documents(file: &str, text: &str) -> Result<Vec<Manifest>, Vec<ManifestError>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let origin = Origin::new(file, i + 1);
        let value = match serde_yaml_ng::Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                errors.push(ManifestError::new(&origin, "-", "-", format!("not valid YAML: {e}")));
                // The YAML stream cannot be resumed after a syntax error.
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        let json: Value = match serde_json::to_value(&value) {
            Ok(v) => v,
            Err(e) => {
                errors.push(ManifestError::new(&origin, "-", "-", format!("cannot be read as an object: {e}")));
                continue;
            }
        };
        if json.get("kind").and_then(Value::as_str) == Some("List") {
            match json.get("items").and_then(Value::as_array) {
                Some(items) => {
                    for (j, item) in items.iter().enumerate() {
                        match from_value(&origin, item.clone()) {
                            Ok(m) => out.push(m),
                            Err(es) => errors.extend(es.into_iter().map(|mut e| {
                                e.field = format!("items[{j}].{}", e.field);
                                e
                            })),
                        }
                    }
                }
                None => errors.push(ManifestError::new(&origin, "List", "items", "a List needs an items array")),
            }
            continue;
        }
        match from_value(&origin, json) {
            Ok(m) => out.push(m),
            Err(es) => errors.extend(es),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Check one document given as a JSON value.
pub fn from_value(origin: &Origin, raw: Value) -> Result<Manifest, Vec<ManifestError>> {
    let name_hint = describe(&raw);
    let one = |field: &str, msg: String| vec![ManifestError::new(origin, name_hint.clone(), field, msg)];
    if !raw.is_object() {
        return Err(one("-", "a manifest must be a mapping with apiVersion, kind and metadata".into()));
    }
    let kind_s = match raw.get("kind") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(one("kind", "must be a string".into())),
        None => return Err(one("kind", "is required".into())),
    };
    let kind = Kind::parse(&kind_s).ok_or_else(|| {
        one("kind", format!("unknown kind {kind_s:?}: Sluice accepts Service (v1), EndpointSlice (discovery.k8s.io/v1) and Pod (v1, for its labels)"))
    })?;
    match raw.get("apiVersion").and_then(Value::as_str) {
        Some(v) if v == kind.api_version() => {}
        Some(v) => {
            return Err(one("apiVersion", format!("{v:?} is not supported for {kind_s}; use {:?}", kind.api_version())))
        }
        None => return Err(one("apiVersion", "is required".into())),
    }
    let typed = match kind {
        Kind::Service => typed::<Service>(&raw).map(Object::Service),
        Kind::EndpointSlice => typed::<EndpointSlice>(&raw).map(Object::EndpointSlice),
        Kind::Pod => typed::<Pod>(&raw).map(Object::Pod),
    }
    .map_err(|(field, msg)| one(&field, msg))?;
    let (meta, mut c) = match &typed {
        Object::Service(s) => (&s.metadata, Checker::new(origin, name_hint.clone())),
        Object::EndpointSlice(s) => (&s.metadata, Checker::new(origin, name_hint.clone())),
        Object::Pod(p) => (&p.metadata, Checker::new(origin, name_hint.clone())),
    };
    let object_ref = ObjectRef::new(kind, meta.namespace(), meta.name.clone());
    match &typed {
        Object::Service(s) => s.check(&mut c),
        Object::EndpointSlice(s) => s.check(&mut c),
        Object::Pod(p) => p.check(&mut c),
    }
    c.finish()?;
    Ok(Manifest { origin: origin.clone(), object_ref, raw, object: typed })
}

fn typed<T: serde::de::DeserializeOwned>(raw: &Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(raw).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { "-".to_string() } else { path };
        (path, e.into_inner().to_string())
    })
}

/// `Kind namespace/name` as far as the raw document tells.
fn describe(raw: &Value) -> String {
    let kind = raw.get("kind").and_then(Value::as_str).unwrap_or("object");
    let meta = raw.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str);
    let ns = meta.and_then(|m| m.get("namespace")).and_then(Value::as_str).unwrap_or("default");
    match name {
        Some(n) => format!("{kind} {ns}/{n}"),
        None => format!("{kind} (unnamed)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 198.19.0.1
  ports:
  - {name: http, port: 80, targetPort: web}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
- addresses: [198.18.1.10]
  conditions: {ready: true}
ports:
- {name: http, port: 8080}
"#;

    #[test]
    fn parses_two_documents() {
        let ms = parse_documents("web.yaml", SVC).unwrap();
        assert_eq!(ms.len(), 2);
        assert_eq!(ms[0].object_ref.to_string(), "Service shop/web");
        assert_eq!(ms[1].origin.document, 2);
        match &ms[1].object {
            Object::EndpointSlice(s) => assert_eq!(s.service_name(), Some("web")),
            _ => panic!("not a slice"),
        }
    }

    fn one_error(text: &str) -> ManifestError {
        let errs = parse_documents("f.yaml", text).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        errs.into_iter().next().unwrap()
    }

    #[test]
    fn bad_port_names_the_field() {
        let e = one_error(&SVC.replace("port: 80,", "port: 70000,"));
        assert_eq!(e.object, "Service shop/web");
        assert_eq!(e.field, "spec.ports[0].port");
        assert_eq!(e.origin.document, 1);
        assert!(e.to_string().starts_with("f.yaml (document 1): Service shop/web: spec.ports[0].port: 70000"), "{e}");
    }

    #[test]
    fn bad_address_names_the_field() {
        let e = one_error(&SVC.replace("198.18.1.10", "198.18.1.300"));
        assert_eq!(e.object, "EndpointSlice shop/web-1");
        assert_eq!(e.field, "endpoints[0].addresses[0]");
        let e = one_error(&SVC.replace("clusterIP: 198.19.0.1", "clusterIP: banana"));
        assert_eq!(e.field, "spec.clusterIP");
    }

    #[test]
    fn bad_lb_algorithm_names_the_annotation() {
        let text = SVC.replace("metadata: {name: web, namespace: shop}", "metadata: {name: web, namespace: shop, annotations: {sluice.io/lb-algorithm: ring}}");
        let e = one_error(&text);
        assert_eq!(e.object, "Service shop/web");
        assert_eq!(e.field, "metadata.annotations[\"sluice.io/lb-algorithm\"]");
        assert_eq!(e.message, "\"ring\" is not \"maglev\" or \"random\"");
        let ok = SVC.replace("metadata: {name: web, namespace: shop}", "metadata: {name: web, namespace: shop, annotations: {sluice.io/lb-algorithm: maglev}}");
        let ms = parse_documents("f.yaml", &ok).unwrap();
        match &ms[0].object {
            Object::Service(s) => assert_eq!(s.lb_algorithm(), Some(crate::LbAlgorithm::Maglev)),
            _ => panic!("not a service"),
        }
    }

    #[test]
    fn bad_lb_mode_names_the_annotation() {
        let with = |v: &str| SVC.replace("metadata: {name: web, namespace: shop}", &format!("metadata: {{name: web, namespace: shop, annotations: {{sluice.io/lb-mode: {v}}}}}"));
        let e = one_error(&with("DSR"));
        assert_eq!(e.object, "Service shop/web");
        assert_eq!(e.field, "metadata.annotations[\"sluice.io/lb-mode\"]");
        assert_eq!(e.message, "\"DSR\" is not \"snat\" or \"dsr\"");
        assert!(e.to_string().starts_with("f.yaml (document 1): Service shop/web: metadata.annotations"), "{e}");
        for (v, want) in [("dsr", crate::LbMode::Dsr), ("snat", crate::LbMode::Snat)] {
            match &parse_documents("f.yaml", &with(v)).unwrap()[0].object {
                Object::Service(s) => assert_eq!(s.lb_mode(), Some(want)),
                _ => panic!("not a service"),
            }
        }
        match &parse_documents("f.yaml", SVC).unwrap()[0].object {
            Object::Service(s) => assert_eq!(s.lb_mode(), None),
            _ => panic!("not a service"),
        }
    }

    #[test]
    fn external_traffic_policy_is_checked_as_kubernetes_does() {
        use crate::ExternalTrafficPolicy as P;
        let svc = |ty: &str, extra: &str| {
            SVC.replace("  clusterIP: 198.19.0.1\n", &format!("  type: {ty}\n  clusterIP: 198.19.0.1\n{extra}"))
        };
        let policy = |text: &str| match &parse_documents("f.yaml", text).unwrap()[0].object {
            Object::Service(s) => s.external_traffic_policy(),
            _ => panic!("not a service"),
        };
        // Unset: Cluster.
        assert_eq!(policy(&svc("NodePort", "")), P::Cluster);
        assert_eq!(policy(&svc("NodePort", "  externalTrafficPolicy: Local\n")), P::Local);
        assert_eq!(policy(&svc("LoadBalancer", "  externalTrafficPolicy: Local\n")), P::Local);
        assert_eq!(policy(&svc("LoadBalancer", "  externalTrafficPolicy: Cluster\n")), P::Cluster);
        // A ClusterIP service is externally accessible through external IPs.
        assert_eq!(policy(&svc("ClusterIP", "  externalIPs: [198.19.9.9]\n  externalTrafficPolicy: Local\n")), P::Local);
        // Anything else than the two current spellings is refused, the
        // pre-1.7 ones included.
        for bad in ["OnlyLocal", "Global", "local"] {
            let e = one_error(&svc("NodePort", &format!("  externalTrafficPolicy: {bad}\n")));
            assert_eq!(e.object, "Service shop/web");
            assert_eq!(e.field, "spec.externalTrafficPolicy");
            assert_eq!(e.message, format!("{bad:?} is not one of \"Cluster\", \"Local\""));
        }
        // Not externally accessible: refused, as the API server does.
        for text in [svc("ClusterIP", "  externalTrafficPolicy: Local\n"), SVC.replace("  clusterIP: 198.19.0.1\n", "  clusterIP: 198.19.0.1\n  externalTrafficPolicy: Cluster\n")] {
            let e = one_error(&text);
            assert_eq!(e.field, "spec.externalTrafficPolicy");
            assert!(e.message.starts_with("may only be set for externally-accessible services"), "{e}");
            assert!(e.to_string().starts_with("f.yaml (document 1): Service shop/web: spec.externalTrafficPolicy: "), "{e}");
        }
    }

    #[test]
    fn endpoint_node_name_is_parsed_and_checked() {
        let text = SVC.replace("- addresses: [198.18.1.10]\n", "- addresses: [198.18.1.10]\n  nodeName: node-a.example\n");
        match &parse_documents("f.yaml", &text).unwrap()[1].object {
            Object::EndpointSlice(s) => {
                assert_eq!(s.endpoints[0].node_name.as_deref(), Some("node-a.example"));
                assert!(s.endpoints[0].is_on("node-a.example") && !s.endpoints[0].is_on("node-b"));
            }
            _ => panic!("not a slice"),
        }
        match &parse_documents("f.yaml", SVC).unwrap()[1].object {
            Object::EndpointSlice(s) => assert_eq!(s.endpoints[0].node_name, None),
            _ => panic!("not a slice"),
        }
        let e = one_error(&SVC.replace("- addresses: [198.18.1.10]\n", "- addresses: [198.18.1.10]\n  nodeName: Node_A\n"));
        assert_eq!(e.object, "EndpointSlice shop/web-1");
        assert_eq!(e.field, "endpoints[0].nodeName");
        assert!(e.message.starts_with("\"Node_A\" is not a valid node name"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_path() {
        let e = one_error(&SVC.replace("port: 80,", "port: [80],"));
        assert_eq!(e.field, "spec.ports[0].port");
    }

    #[test]
    fn unknown_kind_and_bad_yaml() {
        let e = one_error("apiVersion: v1\nkind: Gadget\nmetadata: {name: x}\n");
        assert_eq!(e.field, "kind");
        assert!(e.message.contains("Gadget"));
        let e = one_error("apiVersion: v1\nkind: Service\n  metadata: [\n");
        assert!(e.message.contains("not valid YAML"), "{e}");
    }

    #[test]
    fn list_items_are_expanded() {
        let list = r#"{"apiVersion":"v1","kind":"List","items":[
          {"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":{"clusterIP":"198.19.0.2","ports":[{"port":53,"protocol":"UDP"}]}}]}"#;
        let ms = parse_documents("l.json", list).unwrap();
        assert_eq!(ms[0].object_ref.to_string(), "Service default/a");
    }

    #[test]
    fn conditions_follow_kubernetes_defaults() {
        use crate::EndpointConditions as C;
        let unset = C::default();
        assert!(unset.ready() && unset.serving() && !unset.terminating());
        let terminating = C { ready: Some(false), serving: None, terminating: Some(true) };
        assert!(!terminating.serving());
        let draining = C { ready: Some(false), serving: Some(true), terminating: Some(true) };
        assert!(draining.serving() && draining.terminating());
    }
}
