//! `discovery.k8s.io/v1 EndpointSlice`: the backends of a service.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::error::Checker;
use crate::meta::ObjectMeta;
use crate::service::{is_valid_port_name, Protocol};

/// The label that ties a slice to its service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    pub metadata: ObjectMeta,
    pub address_type: String,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub ports: Vec<EndpointPort>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub conditions: EndpointConditions,
    /// The node the endpoint runs on: what `externalTrafficPolicy: Local`
    /// compares with the agent's `--node-name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// Conditions as Kubernetes defines them: an unset `ready` means ready, an
/// unset `serving` follows `ready`, an unset `terminating` means not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointConditions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminating: Option<bool>,
}

impl Endpoint {
    /// Whether the endpoint runs on the node named `node`.
    pub fn is_on(&self, node: &str) -> bool {
        self.node_name.as_deref() == Some(node)
    }
}

impl EndpointConditions {
    pub fn ready(&self) -> bool {
        self.ready.unwrap_or(true)
    }
    pub fn serving(&self) -> bool {
        self.serving.unwrap_or_else(|| self.ready())
    }
    pub fn terminating(&self) -> bool {
        self.terminating.unwrap_or(false)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    #[serde(default)]
    pub protocol: Protocol,
}

impl EndpointPort {
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }
}

impl EndpointSlice {
    /// The service this slice belongs to (its `kubernetes.io/service-name` label).
    pub fn service_name(&self) -> Option<&str> {
        self.metadata.labels.get(SERVICE_NAME_LABEL).map(|s| s.as_str())
    }

    pub fn is_ipv6(&self) -> bool {
        self.address_type == "IPv6"
    }

    pub(crate) fn check(&self, c: &mut Checker<'_>) {
        self.metadata.check(c);
        if self.service_name().is_none() {
            c.err(
                format!("metadata.labels[{SERVICE_NAME_LABEL:?}]"),
                "is required: it names the service this slice belongs to",
            );
        }
        let v6 = match self.address_type.as_str() {
            "IPv4" => false,
            "IPv6" => true,
            "FQDN" => {
                c.err("addressType", "FQDN endpoints are not supported (IPv4 and IPv6 are)");
                return;
            }
            other => {
                c.err("addressType", format!("{other:?} is not one of \"IPv4\", \"IPv6\""));
                return;
            }
        };
        for (i, ep) in self.endpoints.iter().enumerate() {
            if let Some(n) = &ep.node_name {
                if !crate::meta::is_dns_subdomain(n) {
                    c.err(
                        format!("endpoints[{i}].nodeName"),
                        format!("{n:?} is not a valid node name (lower-case letters, digits, '-' and '.', at most 253 characters)"),
                    );
                }
            }
            if ep.addresses.is_empty() {
                c.err(format!("endpoints[{i}].addresses"), "needs at least one address");
            }
            for (j, a) in ep.addresses.iter().enumerate() {
                let f = format!("endpoints[{i}].addresses[{j}]");
                match a.parse::<IpAddr>() {
                    Ok(ip) if ip.is_ipv6() != v6 => c.err(
                        f,
                        format!("{a} is not an {} address (addressType is {})", self.address_type, self.address_type),
                    ),
                    Ok(ip) if ip.is_unspecified() || ip.is_multicast() => {
                        c.err(f, format!("{a} cannot be an endpoint address"))
                    }
                    Ok(_) => {}
                    Err(_) => c.err(f, format!("{a:?} is not an IP address")),
                }
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in self.ports.iter().enumerate() {
            let f = format!("ports[{i}]");
            match p.port {
                Some(n) if !(1..=65535).contains(&n) => {
                    c.err(format!("{f}.port"), format!("{n} is not a valid port (1 to 65535)"))
                }
                _ => {}
            }
            if let Some(n) = &p.name {
                if !n.is_empty() && !is_valid_port_name(n) && !crate::meta::is_dns_label(n) {
                    c.err(format!("{f}.name"), format!("{n:?} is not a valid port name"));
                }
            }
            if p.protocol == Protocol::SCTP {
                c.err(format!("{f}.protocol"), "SCTP is not supported yet (TCP and UDP are)");
            }
            if !seen.insert((p.name().to_string(), p.protocol)) {
                c.err(format!("{f}.name"), format!("{:?}/{} is listed twice", p.name(), p.protocol.as_str()));
            }
        }
    }
}
