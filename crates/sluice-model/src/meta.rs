//! Object metadata.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::Checker;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl ObjectMeta {
    /// The namespace, `default` when the manifest leaves it out (as kubectl does).
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }

    pub(crate) fn check(&self, c: &mut Checker<'_>) {
        if self.name.is_empty() {
            c.err("metadata.name", "is required");
        } else if !is_dns_subdomain(&self.name) {
            c.err(
                "metadata.name",
                format!("{:?} is not a valid name (lower-case letters, digits, '-' and '.', at most 253 characters)", self.name),
            );
        }
        if let Some(ns) = &self.namespace {
            if !is_dns_label(ns) {
                c.err(
                    "metadata.namespace",
                    format!("{ns:?} is not a valid namespace (a DNS label: lower-case letters, digits and '-', at most 63 characters)"),
                );
            }
        }
    }
}

/// RFC 1123 label, as Kubernetes checks namespace and port names.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain, as Kubernetes checks object names.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}
