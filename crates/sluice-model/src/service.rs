//! `v1 Service`: the frontends (cluster IPs, node ports, external and load
//! balancer IPs) that clients address.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::error::Checker;
use crate::meta::{is_dns_label, ObjectMeta};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ServiceSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ServiceStatus>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
    ExternalName,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    #[serde(default, rename = "clusterIP", skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<String>,
    #[serde(default, rename = "clusterIPs", skip_serializing_if = "Vec::is_empty")]
    pub cluster_ips: Vec<String>,
    #[serde(default, rename = "externalIPs", skip_serializing_if = "Vec::is_empty")]
    pub external_ips: Vec<String>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity_config: Option<SessionAffinityConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<String>,
    /// For a LoadBalancer with `externalTrafficPolicy: Local`: the node
    /// port where the agent answers load balancers' health checks (200
    /// with local endpoints, 503 without). Allocated when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_node_port: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionAffinityConfig {
    #[serde(default, rename = "clientIP", skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<ClientIpConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientIpConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadBalancerStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<LoadBalancerIngress>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadBalancerIngress {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Protocol {
    #[default]
    TCP,
    UDP,
    SCTP,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::TCP => 6,
            Protocol::UDP => 17,
            Protocol::SCTP => 132,
        }
    }

    pub fn from_number(n: u8) -> Option<Protocol> {
        match n {
            6 => Some(Protocol::TCP),
            17 => Some(Protocol::UDP),
            132 => Some(Protocol::SCTP),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::TCP => "TCP",
            Protocol::UDP => "UDP",
            Protocol::SCTP => "SCTP",
        }
    }
}

/// A port given as a number or as the name of a port the endpoints offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i64),
    String(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub protocol: Protocol,
    pub port: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<i64>,
}

impl ServicePort {
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    /// The port number the service listens on (checked to be in range).
    pub fn port_u16(&self) -> u16 {
        self.port as u16
    }
}

/// Annotation that turns socket termination off for a service: `"false"`.
pub const TERMINATE_SOCKETS_ANNOTATION: &str = "sluice.io/terminate-sockets";

/// Annotation that chooses how the per-packet paths pick a backend:
/// `maglev` or `random`. Without it the agent's `--lb-algorithm` applies.
pub const LB_ALGORITHM_ANNOTATION: &str = "sluice.io/lb-algorithm";

/// How backends are picked on the per-packet paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LbAlgorithm {
    /// A random active backend (and ClientIP affinity where asked for).
    #[default]
    Random,
    /// Maglev consistent hashing of the 5-tuple: every node picks the same
    /// backend for a flow, and a backend change moves few flows.
    Maglev,
}

impl LbAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            LbAlgorithm::Random => "random",
            LbAlgorithm::Maglev => "maglev",
        }
    }
}

impl std::fmt::Display for LbAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for LbAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "random" => Ok(LbAlgorithm::Random),
            "maglev" => Ok(LbAlgorithm::Maglev),
            _ => Err(format!("{s:?} is not \"maglev\" or \"random\"")),
        }
    }
}

/// Annotation that chooses how traffic from outside the node reaches a
/// backend on another node: `snat` or `dsr`. Without it the agent's
/// `--lb-mode` applies. Only external frontends (node ports, external and
/// load-balancer IPs) are affected; a ClusterIP service may carry it.
pub const LB_MODE_ANNOTATION: &str = "sluice.io/lb-mode";

/// How external traffic is forwarded to a backend on another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LbMode {
    /// The node translates source and destination; replies come back
    /// through it.
    #[default]
    Snat,
    /// Direct server return: the remote backend answers the client itself.
    Dsr,
}

impl LbMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LbMode::Snat => "snat",
            LbMode::Dsr => "dsr",
        }
    }
}

impl std::fmt::Display for LbMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for LbMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "snat" => Ok(LbMode::Snat),
            "dsr" => Ok(LbMode::Dsr),
            _ => Err(format!("{s:?} is not \"snat\" or \"dsr\"")),
        }
    }
}

/// `spec.externalTrafficPolicy`: which endpoints traffic from outside the
/// cluster (node ports, external IPs, load-balancer IPs) may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ExternalTrafficPolicy {
    /// Every endpoint of the service, on any node (the default).
    #[default]
    Cluster,
    /// Only the endpoints on the node the traffic arrived at; a node with
    /// none drops it (the client's address is preserved).
    Local,
}

impl ExternalTrafficPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ExternalTrafficPolicy::Cluster => "Cluster",
            ExternalTrafficPolicy::Local => "Local",
        }
    }
}

impl std::str::FromStr for ExternalTrafficPolicy {
    type Err = String;
    /// Only the current spellings: the pre-1.7 `Global`/`OnlyLocal` were
    /// removed from Kubernetes and are refused here too.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "Cluster" => Ok(ExternalTrafficPolicy::Cluster),
            "Local" => Ok(ExternalTrafficPolicy::Local),
            _ => Err(format!("{s:?} is not one of \"Cluster\", \"Local\"")),
        }
    }
}

/// Default timeout of ClientIP session affinity (Kubernetes: 3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

impl Service {
    /// Every cluster IP, `clusterIPs` first, without duplicates. Headless
    /// services (`None`) have none.
    pub fn cluster_ips(&self) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = Vec::new();
        let all = self.spec.cluster_ips.iter().chain(self.spec.cluster_ip.iter());
        for s in all {
            if let Ok(ip) = s.parse::<IpAddr>() {
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
        }
        out
    }

    pub fn external_ips(&self) -> Vec<IpAddr> {
        self.spec.external_ips.iter().filter_map(|s| s.parse().ok()).collect()
    }

    pub fn load_balancer_ips(&self) -> Vec<IpAddr> {
        self.status
            .iter()
            .flat_map(|s| s.load_balancer.iter())
            .flat_map(|lb| lb.ingress.iter())
            .filter_map(|i| i.ip.as_deref())
            .filter_map(|s| s.parse().ok())
            .collect()
    }

    /// ClientIP affinity timeout in seconds, or `None` without affinity.
    pub fn affinity_timeout(&self) -> Option<u32> {
        if self.spec.session_affinity.as_deref() != Some("ClientIP") {
            return None;
        }
        let t = self
            .spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .map(|t| t as u32)
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT);
        Some(t)
    }

    /// A service that needs a cluster IP allocated: none given, not
    /// headless, not ExternalName.
    pub fn needs_cluster_ip(&self) -> bool {
        self.spec.type_ != ServiceType::ExternalName && self.spec.cluster_ip.is_none() && self.spec.cluster_ips.is_empty()
    }

    /// Whether sockets to a backend that leaves this service are ended.
    pub fn terminates_sockets(&self) -> bool {
        self.metadata.annotations.get(TERMINATE_SOCKETS_ANNOTATION).map(|v| v != "false").unwrap_or(true)
    }

    /// The algorithm the service's annotation asks for, if any (checked
    /// when the manifest was parsed: an unknown value never gets here).
    pub fn lb_algorithm(&self) -> Option<LbAlgorithm> {
        self.metadata.annotations.get(LB_ALGORITHM_ANNOTATION).and_then(|v| v.parse().ok())
    }

    /// The forwarding mode the service's annotation asks for, if any
    /// (checked when the manifest was parsed).
    pub fn lb_mode(&self) -> Option<LbMode> {
        self.metadata.annotations.get(LB_MODE_ANNOTATION).and_then(|v| v.parse().ok())
    }

    /// Whether traffic from outside the cluster can address the service,
    /// as Kubernetes defines it: NodePort and LoadBalancer services, and
    /// ClusterIP services with external IPs.
    pub fn externally_accessible(&self) -> bool {
        match self.spec.type_ {
            ServiceType::NodePort | ServiceType::LoadBalancer => true,
            ServiceType::ClusterIP => !self.spec.external_ips.is_empty(),
            ServiceType::ExternalName => false,
        }
    }

    /// `spec.externalTrafficPolicy`, `Cluster` when unset (Kubernetes
    /// defaults it so for externally accessible services; other services
    /// cannot set it: see `check`).
    pub fn external_traffic_policy(&self) -> ExternalTrafficPolicy {
        self.spec.external_traffic_policy.as_deref().and_then(|v| v.parse().ok()).unwrap_or_default()
    }

    /// Does this service get a health check node port? (Kubernetes: type
    /// LoadBalancer with externalTrafficPolicy: Local.)
    pub fn needs_health_check(&self) -> bool {
        self.spec.type_ == ServiceType::LoadBalancer && self.external_traffic_policy() == ExternalTrafficPolicy::Local
    }

    pub fn has_node_ports(&self) -> bool {
        matches!(self.spec.type_, ServiceType::NodePort | ServiceType::LoadBalancer)
    }

    pub(crate) fn check(&self, c: &mut Checker<'_>) {
        self.metadata.check(c);
        if let Some(v) = self.metadata.annotations.get(TERMINATE_SOCKETS_ANNOTATION) {
            if v != "true" && v != "false" {
                c.err(
                    format!("metadata.annotations[{TERMINATE_SOCKETS_ANNOTATION:?}]"),
                    format!("{v:?} is not \"true\" or \"false\""),
                );
            }
        }
        if let Some(v) = self.metadata.annotations.get(LB_ALGORITHM_ANNOTATION) {
            if let Err(e) = v.parse::<LbAlgorithm>() {
                c.err(format!("metadata.annotations[{LB_ALGORITHM_ANNOTATION:?}]"), e);
            }
        }
        if let Some(v) = self.metadata.annotations.get(LB_MODE_ANNOTATION) {
            if let Err(e) = v.parse::<LbMode>() {
                c.err(format!("metadata.annotations[{LB_MODE_ANNOTATION:?}]"), e);
            }
        }
        let s = &self.spec;
        let headless = s.cluster_ip.as_deref() == Some("None");
        if s.type_ != ServiceType::ExternalName {
            if let Some(ip) = &s.cluster_ip {
                if !headless && ip.parse::<IpAddr>().is_err() {
                    c.err("spec.clusterIP", format!("{ip:?} is not an IP address (or \"None\" for a headless service)"));
                }
            }
            for (i, ip) in s.cluster_ips.iter().enumerate() {
                if ip != "None" && ip.parse::<IpAddr>().is_err() {
                    c.err(format!("spec.clusterIPs[{i}]"), format!("{ip:?} is not an IP address"));
                }
            }
            if s.cluster_ips.len() > 2 {
                c.err("spec.clusterIPs", "at most two addresses (one per family)");
            }
            if let (Some(a), Some(b)) = (s.cluster_ip.as_ref(), s.cluster_ips.first()) {
                if a != b {
                    c.err("spec.clusterIPs[0]", format!("{b:?} must equal spec.clusterIP {a:?}"));
                }
            }
            if !headless && s.ports.is_empty() {
                c.err("spec.ports", "a service needs at least one port");
            }
        }
        for (i, ip) in s.external_ips.iter().enumerate() {
            if ip.parse::<IpAddr>().is_err() {
                c.err(format!("spec.externalIPs[{i}]"), format!("{ip:?} is not an IP address"));
            }
        }
        if let Some(st) = &self.status {
            for (i, ing) in st.load_balancer.iter().flat_map(|l| l.ingress.iter()).enumerate() {
                if let Some(ip) = &ing.ip {
                    if ip.parse::<IpAddr>().is_err() {
                        c.err(format!("status.loadBalancer.ingress[{i}].ip"), format!("{ip:?} is not an IP address"));
                    }
                }
            }
        }
        match s.session_affinity.as_deref() {
            None | Some("None") | Some("ClientIP") => {}
            Some(other) => c.err("spec.sessionAffinity", format!("{other:?} is not one of \"None\", \"ClientIP\"")),
        }
        if let Some(t) = s
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
        {
            if !(1..=86400).contains(&t) {
                c.err(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    format!("{t} is out of range (1 to 86400 seconds)"),
                );
            }
        }
        // Kubernetes (validateServiceExternalTrafficPolicy): the field is
        // refused on a service nothing outside the cluster can reach
        // (ClusterIP without external IPs, ExternalName), and defaults to
        // Cluster elsewhere.
        if let Some(v) = s.external_traffic_policy.as_deref() {
            if let Err(e) = v.parse::<ExternalTrafficPolicy>() {
                c.err("spec.externalTrafficPolicy", e);
            } else if !self.externally_accessible() {
                c.err(
                    "spec.externalTrafficPolicy",
                    format!(
                        "may only be set for externally-accessible services (type NodePort or LoadBalancer, or with spec.externalIPs); this one is {:?} without external IPs",
                        s.type_
                    ),
                );
            }
        }
        if let Some(hc) = s.health_check_node_port {
            if !self.needs_health_check() {
                c.err(
                    "spec.healthCheckNodePort",
                    "may only be set for type LoadBalancer with externalTrafficPolicy: Local",
                );
            } else if !(1..=65535).contains(&hc) {
                c.err("spec.healthCheckNodePort", format!("{hc} is not a valid port (1 to 65535)"));
            } else if s.ports.iter().any(|p| p.node_port == Some(hc)) {
                c.err("spec.healthCheckNodePort", format!("{hc} is also a node port of this service"));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        let multi = s.ports.len() > 1;
        for (i, p) in s.ports.iter().enumerate() {
            let f = format!("spec.ports[{i}]");
            if !(1..=65535).contains(&p.port) {
                c.err(format!("{f}.port"), format!("{} is not a valid port (1 to 65535)", p.port));
            }
            if p.protocol == Protocol::SCTP {
                c.err(format!("{f}.protocol"), "SCTP is not supported yet (TCP and UDP are)");
            }
            match &p.name {
                Some(n) if !is_dns_label(n) => {
                    c.err(format!("{f}.name"), format!("{n:?} is not a valid port name (a DNS label)"))
                }
                None if multi => c.err(format!("{f}.name"), "is required when a service has more than one port"),
                _ => {}
            }
            if !seen.insert(p.name()) {
                c.err(format!("{f}.name"), format!("{:?} is used by another port of this service", p.name()));
            }
            match &p.target_port {
                Some(IntOrString::Int(t)) if !(1..=65535).contains(t) => {
                    c.err(format!("{f}.targetPort"), format!("{t} is not a valid port (1 to 65535)"))
                }
                Some(IntOrString::String(n)) if !is_valid_port_name(n) => c.err(
                    format!("{f}.targetPort"),
                    format!("{n:?} is neither a port number nor a valid port name (at most 15 lower-case letters, digits and '-', with a letter)"),
                ),
                _ => {}
            }
            if let Some(np) = p.node_port {
                if !self.has_node_ports() {
                    c.err(format!("{f}.nodePort"), format!("only NodePort and LoadBalancer services have node ports (this one is {:?})", s.type_));
                } else if !(1..=65535).contains(&np) {
                    c.err(format!("{f}.nodePort"), format!("{np} is not a valid port (1 to 65535)"));
                }
            }
        }
    }
}

/// IANA service name, as Kubernetes checks named ports.
pub fn is_valid_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}
