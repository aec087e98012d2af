//! Pods (v1). In standalone mode a Pod manifest gives the labels of the
//! endpoint the CNI plugin creates for the pod of the same namespace and
//! name; everything else in it (spec, status) is kept but not acted on.

use serde::{Deserialize, Serialize};

use crate::error::Checker;
use crate::meta::{is_dns_subdomain, ObjectMeta};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    #[serde(default)]
    pub metadata: ObjectMeta,
}

impl Pod {
    pub(crate) fn check(&self, c: &mut Checker<'_>) {
        self.metadata.check(c);
        for (k, v) in &self.metadata.labels {
            if let Err(why) = label_key(k) {
                c.err(format!("metadata.labels[{k:?}]"), format!("invalid label key: {why}"));
            }
            if let Err(why) = label_value(v) {
                c.err(format!("metadata.labels[{k:?}]"), format!("invalid label value {v:?}: {why}"));
            }
        }
    }
}

/// A label key as Kubernetes accepts it: `[prefix/]name`, the prefix a DNS
/// subdomain, the name as a label value but not empty.
pub fn label_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        if !is_dns_subdomain(p) {
            return Err(format!("prefix {p:?} is not a DNS subdomain"));
        }
    }
    if name.is_empty() {
        return Err("the name part is empty".into());
    }
    label_value(name)
}

/// A label value: at most 63 characters of `[A-Za-z0-9_.-]`, beginning and
/// ending with an alphanumeric character (or empty).
pub fn label_value(v: &str) -> Result<(), String> {
    if v.len() > 63 {
        return Err("longer than 63 characters".into());
    }
    if !v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        return Err("only letters, digits, '-', '_' and '.' are allowed".into());
    }
    let alnum = |b: Option<u8>| b.map(|b| b.is_ascii_alphanumeric()).unwrap_or(true);
    if !alnum(v.bytes().next()) || !alnum(v.bytes().last()) {
        return Err("must begin and end with a letter or digit".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::parse_documents;

    #[test]
    fn labels_are_checked_and_kept() {
        let ms = parse_documents("p.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: web-0, namespace: shop, labels: {app: web, tier: front}}\nspec: {containers: []}\n").unwrap();
        match &ms[0].object {
            crate::Object::Pod(p) => assert_eq!(p.metadata.labels.get("app").map(String::as_str), Some("web")),
            _ => panic!("not a pod"),
        }
        assert_eq!(ms[0].object_ref.to_string(), "Pod shop/web-0");
        let e = parse_documents("p.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {app: \"-bad\"}}\n").unwrap_err();
        assert_eq!(e[0].field, "metadata.labels[\"app\"]", "{e:?}");
        assert!(e[0].message.contains("begin and end"), "{e:?}");
        let e = parse_documents("p.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {\"x/y/z\": a}}\n").unwrap_err();
        assert!(e[0].message.contains("invalid label key"), "{e:?}");
    }
}
