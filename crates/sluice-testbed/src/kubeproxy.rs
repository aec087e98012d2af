//! kube-proxy's rules for a set of services, to compare Sluice against: the
//! `iptables-restore` input of kube-proxy's iptables mode and the `nft -f`
//! input of its nftables mode, with the structure, chain names (the same
//! sha256/base32 hashes) and comments kube-proxy itself writes (as of
//! Kubernetes 1.31–1.33), for ClusterIP services and for NodePorts with
//! `externalTrafficPolicy: Cluster` ([`KpService::node_port`]): iptables
//! mode's `KUBE-NODEPORTS` → `KUBE-EXT-<hash>` (mark for masquerade, then
//! the service chain), nftables mode's `service-nodeports` map →
//! `external-<hash>-...` chains, and the `nodeport-ips` set
//! ([`KpConfig::nodeport_ips`], as `--nodeport-addresses primary`, the
//! nftables mode's default, fills it). Either way the marked packets are
//! masqueraded in postrouting, so a backend on another node answers
//! through this node.
//!
//! Not generated: external IPs, load-balancer IPs and their firewalls,
//! session affinity and `externalTrafficPolicy: Local` (the chains and maps
//! for them exist, empty, as kube-proxy creates them regardless).
//!
//! The outputs are self-contained for a fresh network namespace:
//! [`iptables_restore`] declares the built-in chains too, so a plain
//! `iptables-restore` (without `--noflush`) replaces the `filter` and `nat`
//! tables wholesale; [`nft`] first deletes any previous `kube-proxy` tables,
//! so loading it again replaces the rules atomically.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::IpAddr;

use sha2::{Digest, Sha256};

/// A service's transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

/// The name used in the brief; the same type.
pub type Protocol = Proto;

impl Proto {
    /// `tcp` / `udp`, as in rules and in kube-proxy's hashes.
    pub fn lower(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    /// `TCP` / `UDP`, as in Kubernetes objects.
    pub fn upper(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }
}

/// One service port with its endpoints (kube-proxy's unit of work).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KpService {
    pub namespace: String,
    pub name: String,
    /// The service port's name; may be empty for a single unnamed port.
    pub port_name: String,
    /// The cluster IP.
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Proto,
    /// Ready endpoints: address and target port.
    pub endpoints: Vec<(IpAddr, u16)>,
    /// The node port (type NodePort, `externalTrafficPolicy: Cluster`), if any.
    pub node_port: Option<u16>,
}

impl KpService {
    /// kube-proxy's ServicePortName: `namespace/name:port`, or
    /// `namespace/name` for an unnamed port.
    pub fn port_name_string(&self) -> String {
        if self.port_name.is_empty() {
            format!("{}/{}", self.namespace, self.name)
        } else {
            format!("{}/{}:{}", self.namespace, self.name, self.port_name)
        }
    }
}

/// The cluster-wide settings kube-proxy takes from its flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KpConfig {
    /// `--cluster-cidr`: traffic from elsewhere to a cluster IP is masqueraded.
    pub cluster_cidr4: String,
    pub cluster_cidr6: String,
    /// The service CIDRs (nftables mode drops traffic to unallocated IPs in them).
    pub service_cidr4: String,
    pub service_cidr6: String,
    /// `--masquerade-bit` as a mark value.
    pub masquerade_mark: u32,
    /// nftables mode: the addresses that accept NodePort traffic (the
    /// `nodeport-ips` set; `--nodeport-addresses primary` puts the node's
    /// primary IPs there). iptables mode accepts node ports at every local
    /// address (`-m addrtype --dst-type LOCAL`) and ignores this.
    pub nodeport_ips: Vec<IpAddr>,
}

/// The test bed's service ranges.
pub const SERVICE_CIDR4: &str = "198.19.0.0/16";
pub const SERVICE_CIDR6: &str = "fd00:5c:ee::/112";

impl Default for KpConfig {
    /// The test bed's layout: pods in [`crate::topo::POD_CIDR4`] /
    /// [`crate::topo::POD_CIDR6`], services in [`SERVICE_CIDR4`] /
    /// [`SERVICE_CIDR6`], mark 0x4000 (kube-proxy's default bit 14).
    fn default() -> Self {
        KpConfig {
            cluster_cidr4: crate::topo::POD_CIDR4.to_string(),
            cluster_cidr6: crate::topo::POD_CIDR6.to_string(),
            service_cidr4: SERVICE_CIDR4.to_string(),
            service_cidr6: SERVICE_CIDR6.to_string(),
            masquerade_mark: 0x4000,
            nodeport_ips: Vec::new(),
        }
    }
}

/// An IP family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn has(self, ip: &IpAddr) -> bool {
        matches!(
            (self, ip),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
        )
    }
}

// ---------------------------------------------------------------- hashes

/// RFC 4648 base32 (standard alphabet) of `data`, without padding.
pub fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let mut buf: u32 = 0;
    let mut bits = 0;
    for &b in data {
        buf = (buf << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn hash_b32(s: &str, n: usize) -> String {
    let mut h = base32(&Sha256::digest(s.as_bytes()));
    h.truncate(n);
    h
}

/// `ip:port`, or `[ip]:port` for IPv6 (Go's net.JoinHostPort).
fn join_host_port(ip: &IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// iptables mode's `KUBE-SVC-<hash>` chain of a service port.
pub fn svc_chain(s: &KpService) -> String {
    format!(
        "KUBE-SVC-{}",
        hash_b32(
            &format!("{}{}", s.port_name_string(), s.protocol.lower()),
            16
        )
    )
}

/// iptables mode's `KUBE-EXT-<hash>` chain of a service port (the same hash
/// as its `KUBE-SVC-` chain): where NodePort (and external) traffic goes.
pub fn ext_chain(s: &KpService) -> String {
    format!(
        "KUBE-EXT-{}",
        hash_b32(
            &format!("{}{}", s.port_name_string(), s.protocol.lower()),
            16
        )
    )
}

/// iptables mode's `KUBE-SEP-<hash>` chain of one endpoint of a service port.
pub fn sep_chain(s: &KpService, ep: &(IpAddr, u16)) -> String {
    let key = format!(
        "{}{}{}",
        s.port_name_string(),
        s.protocol.lower(),
        join_host_port(&ep.0, ep.1)
    );
    format!("KUBE-SEP-{}", hash_b32(&key, 16))
}

/// nftables mode's chain-name suffix: 8 hash characters, `-`, the name
/// (truncated to 240 characters with `...`).
fn hash_and_truncate(name: &str) -> String {
    let mut n = format!("{}-{name}", hash_b32(name, 8));
    if n.len() > 240 {
        n.truncate(237);
        n.push_str("...");
    }
    n
}

/// nftables mode's `service-<hash>-ns/name/proto/port` chain.
pub fn nft_service_chain(s: &KpService) -> String {
    let base = format!(
        "{}/{}/{}/{}",
        s.namespace,
        s.name,
        s.protocol.lower(),
        s.port_name
    );
    format!("service-{}", hash_and_truncate(&base))
}

/// nftables mode's `external-<hash>-ns/name/proto/port` chain (NodePort
/// traffic; the same hash as the service chain).
pub fn nft_external_chain(s: &KpService) -> String {
    let base = format!(
        "{}/{}/{}/{}",
        s.namespace,
        s.name,
        s.protocol.lower(),
        s.port_name
    );
    format!("external-{}", hash_and_truncate(&base))
}

/// nftables mode's `endpoint-<hash>-ns/name/proto/port__ip/port` chain
/// (an IPv6 address's colons become dots).
pub fn nft_endpoint_chain(s: &KpService, ep: &(IpAddr, u16)) -> String {
    let ip = ep.0.to_string().replace(':', ".");
    let base = format!(
        "{}/{}/{}/{}__{}/{}",
        s.namespace,
        s.name,
        s.protocol.lower(),
        s.port_name,
        ip,
        ep.1
    );
    format!("endpoint-{}", hash_and_truncate(&base))
}

// ---------------------------------------------------------------- iptables

/// `iptables-restore` input (IPv4 services only) for the default
/// [`KpConfig`].
pub fn iptables_restore(services: &[KpService]) -> String {
    iptables_restore_with(&KpConfig::default(), Family::V4, services)
}

/// `ip6tables-restore` input (IPv6 services only) for the default
/// [`KpConfig`].
pub fn ip6tables_restore(services: &[KpService]) -> String {
    iptables_restore_with(&KpConfig::default(), Family::V6, services)
}

/// Quote an iptables-restore argument the way kube-proxy does: only when it
/// contains a space.
fn quote(s: &str) -> String {
    if s.contains(' ') {
        format!("\"{s}\"")
    } else {
        s.to_string()
    }
}

/// The `filter` and `nat` tables kube-proxy's iptables mode keeps, for the
/// services of one family (services and endpoints of the other family are
/// skipped).
pub fn iptables_restore_with(cfg: &KpConfig, family: Family, services: &[KpService]) -> String {
    let mark = format!("{:#x}", cfg.masquerade_mark);
    let cluster_cidr = match family {
        Family::V4 => &cfg.cluster_cidr4,
        Family::V6 => &cfg.cluster_cidr6,
    };
    let svcs: Vec<&KpService> = services.iter().filter(|s| family.has(&s.vip)).collect();
    let mut o = String::new();

    // filter: rejects for services without endpoints, forwarding of marked
    // and established traffic.
    o.push_str("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    for c in [
        "KUBE-NODEPORTS",
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FIREWALL",
        "KUBE-FORWARD",
        "KUBE-PROXY-FIREWALL",
    ] {
        let _ = writeln!(o, ":{c} - [0:0]");
    }
    let lbfw = "-m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL";
    let portals = "-m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES";
    let external =
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES";
    let _ = writeln!(o, "-A INPUT {lbfw}");
    let _ = writeln!(
        o,
        "-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS"
    );
    let _ = writeln!(o, "-A INPUT {external}");
    let _ = writeln!(o, "-A INPUT -j KUBE-FIREWALL");
    let _ = writeln!(o, "-A FORWARD {lbfw}");
    let _ = writeln!(
        o,
        "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD"
    );
    let _ = writeln!(o, "-A FORWARD {portals}");
    let _ = writeln!(o, "-A FORWARD {external}");
    let _ = writeln!(o, "-A OUTPUT {lbfw}");
    let _ = writeln!(o, "-A OUTPUT {portals}");
    let _ = writeln!(o, "-A OUTPUT -j KUBE-FIREWALL");
    for s in &svcs {
        if s.endpoints.iter().any(|e| family.has(&e.0)) {
            continue;
        }
        let p = s.protocol.lower();
        let _ = writeln!(
            o,
            "-A KUBE-SERVICES -m comment --comment \"{} has no endpoints\" -m {p} -p {p} -d {} --dport {} -j REJECT",
            s.port_name_string(),
            s.vip,
            s.port
        );
        if let Some(np) = s.node_port {
            let _ = writeln!(
                o,
                "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"{} has no endpoints\" -m addrtype --dst-type LOCAL -m {p} -p {p} --dport {np} -j REJECT",
                s.port_name_string(),
            );
        }
    }
    if family == Family::V4 {
        let _ = writeln!(
            o,
            "-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
        );
    }
    let _ = writeln!(o, "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP");
    let _ = writeln!(o, "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {mark}/{mark} -j ACCEPT");
    let _ = writeln!(
        o,
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    );
    o.push_str("COMMIT\n");

    // nat: the service chains.
    let mut chains = String::from("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n");
    for c in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        let _ = writeln!(chains, ":{c} - [0:0]");
    }
    let mut rules = String::new();
    let _ = writeln!(
        rules,
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
    );
    let _ = writeln!(
        rules,
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
    );
    let _ = writeln!(
        rules,
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING"
    );
    let _ = writeln!(
        rules,
        "-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN"
    );
    let _ = writeln!(rules, "-A KUBE-POSTROUTING -j MARK --xor-mark {mark}");
    let _ = writeln!(
        rules,
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully"
    );
    let _ = writeln!(rules, "-A KUBE-MARK-MASQ -j MARK --or-mark {mark}");
    let mut per_service = String::new();
    for s in &svcs {
        let eps: Vec<&(IpAddr, u16)> = s.endpoints.iter().filter(|e| family.has(&e.0)).collect();
        if eps.is_empty() {
            continue; // rejected in filter
        }
        let svc = svc_chain(s);
        let spn = s.port_name_string();
        let p = s.protocol.lower();
        let _ = writeln!(chains, ":{svc} - [0:0]");
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -m comment --comment \"{spn} cluster IP\" -m {p} -p {p} -d {} --dport {} -j {svc}",
            s.vip, s.port
        );
        if let Some(np) = s.node_port {
            let ext = ext_chain(s);
            let _ = writeln!(chains, ":{ext} - [0:0]");
            let _ = writeln!(
                rules,
                "-A KUBE-NODEPORTS -m comment --comment {} -m {p} -p {p} --dport {np} -j {ext}",
                quote(&spn)
            );
        }
        let _ = writeln!(
            per_service,
            "-A {svc} -m comment --comment \"{spn} cluster IP\" -m {p} -p {p} -d {} --dport {} ! -s {cluster_cidr} -j KUBE-MARK-MASQ",
            s.vip, s.port
        );
        if s.node_port.is_some() {
            // externalTrafficPolicy: Cluster: the backend may be on another
            // node, so masquerade whatever comes from outside.
            let ext = ext_chain(s);
            let _ = writeln!(
                per_service,
                "-A {ext} -m comment --comment \"masquerade traffic for {spn} external destinations\" -j KUBE-MARK-MASQ"
            );
            let _ = writeln!(per_service, "-A {ext} -j {svc}");
        }
        let n = eps.len();
        let mut sep_rules = String::new();
        for (i, ep) in eps.iter().enumerate() {
            let sep = sep_chain(s, ep);
            let hp = join_host_port(&ep.0, ep.1);
            let _ = writeln!(chains, ":{sep} - [0:0]");
            let stat = if i + 1 < n {
                format!(
                    " -m statistic --mode random --probability {:.10}",
                    1.0 / (n - i) as f64
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                per_service,
                "-A {svc} -m comment --comment \"{spn} -> {hp}\"{stat} -j {sep}"
            );
            let c = quote(&spn);
            let _ = writeln!(
                sep_rules,
                "-A {sep} -m comment --comment {c} -s {} -j KUBE-MARK-MASQ",
                ep.0
            );
            let _ = writeln!(
                sep_rules,
                "-A {sep} -m comment --comment {c} -m {p} -p {p} -j DNAT --to-destination {hp}"
            );
        }
        per_service.push_str(&sep_rules);
    }
    let _ = writeln!(
        rules,
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    );
    o.push_str(&chains);
    o.push_str(&rules);
    o.push_str(&per_service);
    o.push_str("COMMIT\n");
    o
}

/// `iptables-restore` input that empties the `filter` and `nat` tables
/// again (built-in chains emptied, with policy ACCEPT; our chains deleted).
pub const IPTABLES_FLUSH: &str = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n\
*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n";

/// The `iptables-restore` this machine uses by default. On Debian 12 that
/// is the nf_tables backend (`iptables-nft-restore`); the legacy one
/// (`iptables-legacy-restore`) works here too.
pub const IPTABLES_RESTORE: &str = "iptables-restore";
pub const IP6TABLES_RESTORE: &str = "ip6tables-restore";

/// Load [`iptables_restore`] / [`ip6tables_restore`] output into `ns` with
/// `ip netns exec NS iptables-restore` (or `ip6tables-restore`).
pub fn load_iptables(ns: &crate::netns::Netns, family: Family, rules: &str) -> anyhow::Result<()> {
    let tool = match family {
        Family::V4 => IPTABLES_RESTORE,
        Family::V6 => IP6TABLES_RESTORE,
    };
    ns.exec_stdin(&[tool], rules).map(|_| ())
}

/// Load [`nft`] output into `ns` with `ip netns exec NS nft -f -`.
pub fn load_nft(ns: &crate::netns::Netns, rules: &str) -> anyhow::Result<()> {
    ns.exec_stdin(&["nft", "-f", "-"], rules).map(|_| ())
}

// ---------------------------------------------------------------- nftables

/// `nft -f` input for the default [`KpConfig`]: a `table ip kube-proxy` for
/// the IPv4 services and, if there are IPv6 services, a `table ip6
/// kube-proxy` for those, as kube-proxy's nftables mode keeps them. Any
/// previous `kube-proxy` tables of either family are deleted first, in the
/// same transaction.
pub fn nft(services: &[KpService]) -> String {
    nft_with(&KpConfig::default(), services)
}

/// [`nft`] with the given settings.
pub fn nft_with(cfg: &KpConfig, services: &[KpService]) -> String {
    let mut o = String::from(NFT_FLUSH);
    nft_family(&mut o, cfg, Family::V4, services);
    if services.iter().any(|s| Family::V6.has(&s.vip)) {
        nft_family(&mut o, cfg, Family::V6, services);
    }
    o
}

/// `nft -f` input deleting the `kube-proxy` tables (no error if absent).
pub const NFT_FLUSH: &str = "add table ip kube-proxy\ndelete table ip kube-proxy\nadd table ip6 kube-proxy\ndelete table ip6 kube-proxy\n";

fn nft_family(o: &mut String, cfg: &KpConfig, family: Family, services: &[KpService]) {
    let (x, addr_type, cluster_cidr, service_cidr) = match family {
        Family::V4 => ("ip", "ipv4_addr", &cfg.cluster_cidr4, &cfg.service_cidr4),
        Family::V6 => ("ip6", "ipv6_addr", &cfg.cluster_cidr6, &cfg.service_cidr6),
    };
    let t = format!("{x} kube-proxy");
    let mark = format!("{:#x}", cfg.masquerade_mark);
    let _ = writeln!(o, "add table {t} {{ comment \"rules for kube-proxy\" ; }}");
    let _ = writeln!(
        o,
        "add set {t} cluster-ips {{ type {addr_type} ; comment \"Active ClusterIPs\" ; }}"
    );
    let _ = writeln!(o, "add set {t} nodeport-ips {{ type {addr_type} ; comment \"IPs that accept NodePort traffic\" ; }}");
    let tuple = format!("{addr_type} . inet_proto . inet_service : verdict");
    for (name, ty, comment) in [
        (
            "firewall-ips",
            tuple.as_str(),
            "destinations that are subject to LoadBalancerSourceRanges",
        ),
        (
            "no-endpoint-nodeports",
            "inet_proto . inet_service : verdict",
            "vmap to drop or reject packets to service nodeports with no endpoints",
        ),
        (
            "no-endpoint-services",
            tuple.as_str(),
            "vmap to drop or reject packets to services with no endpoints",
        ),
        (
            "service-ips",
            tuple.as_str(),
            "ClusterIP, ExternalIP and LoadBalancer IP traffic",
        ),
        (
            "service-nodeports",
            "inet_proto . inet_service : verdict",
            "NodePort traffic",
        ),
    ] {
        let _ = writeln!(
            o,
            "add map {t} {name} {{ type {ty} ; comment \"{comment}\" ; }}"
        );
    }
    for (name, spec) in [
        ("cluster-ips-check", ""),
        (
            "filter-prerouting-pre-dnat",
            " { type filter hook prerouting priority -110 ; }",
        ),
        (
            "filter-output-pre-dnat",
            " { type filter hook output priority -110 ; }",
        ),
        (
            "filter-forward",
            " { type filter hook forward priority 0 ; }",
        ),
        ("filter-input", " { type filter hook input priority 0 ; }"),
        ("filter-output", " { type filter hook output priority 0 ; }"),
        ("firewall-check", ""),
        ("mark-for-masquerade", ""),
        ("masquerading", ""),
        ("nat-output", " { type nat hook output priority -100 ; }"),
        (
            "nat-postrouting",
            " { type nat hook postrouting priority 100 ; }",
        ),
        (
            "nat-prerouting",
            " { type nat hook prerouting priority -100 ; }",
        ),
        ("nodeport-endpoints-check", ""),
        (
            "reject-chain",
            " { comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }",
        ),
        ("services", ""),
        ("service-endpoints-check", ""),
    ] {
        let _ = writeln!(o, "add chain {t} {name}{spec}");
    }
    for rule in [
        format!("cluster-ips-check {x} daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\""),
        format!("cluster-ips-check {x} daddr {{ {service_cidr} }} drop comment \"Drop traffic to unallocated ClusterIPs\""),
        "filter-prerouting-pre-dnat ct state new jump firewall-check".to_string(),
        "filter-forward ct state new jump service-endpoints-check".to_string(),
        "filter-forward ct state new jump cluster-ips-check".to_string(),
        "filter-input ct state new jump nodeport-endpoints-check".to_string(),
        "filter-input ct state new jump service-endpoints-check".to_string(),
        "filter-output ct state new jump service-endpoints-check".to_string(),
        "filter-output-pre-dnat ct state new jump firewall-check".to_string(),
        "filter-output ct state new jump cluster-ips-check".to_string(),
        format!("firewall-check {x} daddr . meta l4proto . th dport vmap @firewall-ips"),
        format!("mark-for-masquerade mark set mark or {mark}"),
        format!("masquerading mark and {mark} == 0 return"),
        format!("masquerading mark set mark xor {mark}"),
        "masquerading masquerade fully-random".to_string(),
        "nat-output jump services".to_string(),
        "nat-postrouting jump masquerading".to_string(),
        "nat-prerouting jump services".to_string(),
        format!("nodeport-endpoints-check {x} daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports"),
        "reject-chain reject".to_string(),
        format!("services {x} daddr . meta l4proto . th dport vmap @service-ips"),
        format!("services {x} daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"),
        format!("service-endpoints-check {x} daddr . meta l4proto . th dport vmap @no-endpoint-services"),
    ] {
        let _ = writeln!(o, "add rule {t} {rule}");
    }
    for ip in cfg.nodeport_ips.iter().filter(|ip| family.has(ip)) {
        let _ = writeln!(o, "add element {t} nodeport-ips {{ {ip} }}");
    }
    let mut cluster_ips = BTreeSet::new();
    for s in services.iter().filter(|s| family.has(&s.vip)) {
        let p = s.protocol.lower();
        let eps: Vec<&(IpAddr, u16)> = s.endpoints.iter().filter(|e| family.has(&e.0)).collect();
        if cluster_ips.insert(s.vip) {
            let _ = writeln!(o, "add element {t} cluster-ips {{ {} }}", s.vip);
        }
        if eps.is_empty() {
            let _ = writeln!(
                o,
                "add element {t} no-endpoint-services {{ {} . {p} . {} comment \"{}\" : goto reject-chain }}",
                s.vip,
                s.port,
                s.port_name_string()
            );
            if let Some(np) = s.node_port {
                let _ = writeln!(
                    o,
                    "add element {t} no-endpoint-nodeports {{ {p} . {np} comment \"{}\" : goto reject-chain }}",
                    s.port_name_string()
                );
            }
            continue;
        }
        let svc = nft_service_chain(s);
        let _ = writeln!(o, "add chain {t} {svc}");
        let _ = writeln!(
            o,
            "add rule {t} {svc} {x} daddr {} {x} saddr != {cluster_cidr} jump mark-for-masquerade",
            s.vip
        );
        let mut vmap = Vec::with_capacity(eps.len());
        for (i, ep) in eps.iter().enumerate() {
            let epc = nft_endpoint_chain(s, ep);
            let _ = writeln!(o, "add chain {t} {epc}");
            let _ = writeln!(
                o,
                "add rule {t} {epc} {x} saddr {} jump mark-for-masquerade",
                ep.0
            );
            let _ = writeln!(
                o,
                "add rule {t} {epc} meta l4proto {p} dnat to {}",
                join_host_port(&ep.0, ep.1)
            );
            vmap.push(format!("{i} : goto {epc}"));
        }
        let _ = writeln!(
            o,
            "add rule {t} {svc} numgen random mod {} vmap {{ {} }}",
            vmap.len(),
            vmap.join(" , ")
        );
        let _ = writeln!(
            o,
            "add element {t} service-ips {{ {} . {p} . {} : goto {svc} }}",
            s.vip, s.port
        );
        if let Some(np) = s.node_port {
            let ext = nft_external_chain(s);
            let _ = writeln!(o, "add chain {t} {ext}");
            let _ = writeln!(o, "add rule {t} {ext} jump mark-for-masquerade");
            let _ = writeln!(o, "add rule {t} {ext} goto {svc}");
            let _ = writeln!(
                o,
                "add element {t} service-nodeports {{ {p} . {np} : goto {ext} }}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(ns: &str, name: &str, vip: &str, eps: &[&str]) -> KpService {
        KpService {
            namespace: ns.into(),
            name: name.into(),
            port_name: "p80".into(),
            vip: vip.parse().unwrap(),
            port: 80,
            protocol: Proto::Tcp,
            endpoints: eps.iter().map(|e| (e.parse().unwrap(), 80)).collect(),
            node_port: None,
        }
    }

    #[test]
    fn base32_matches_rfc4648() {
        assert_eq!(base32(b""), "");
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(base32(b"fo"), "MZXQ");
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
    }

    /// Chain names from kube-proxy's own unit tests.
    #[test]
    fn chain_names_match_kube_proxy() {
        let s1 = svc("ns1", "svc1", "172.30.0.41", &["10.180.0.1"]);
        assert_eq!(svc_chain(&s1), "KUBE-SVC-XPGD46QRK7WJZT7O");
        assert_eq!(
            sep_chain(&s1, &s1.endpoints[0]),
            "KUBE-SEP-SXIVWICOYRO3J4NJ"
        );
        let s3 = svc("ns3", "svc3", "172.30.0.43", &["10.180.0.3"]);
        assert_eq!(svc_chain(&s3), "KUBE-SVC-X27LE4BHSL4DOUIK");
        assert_eq!(
            sep_chain(&s3, &s3.endpoints[0]),
            "KUBE-SEP-OYPFS5VJICHGATKP"
        );
        let s5 = svc("ns5", "svc5", "172.30.0.45", &["10.180.0.3"]);
        assert_eq!(
            sep_chain(&s5, &s5.endpoints[0]),
            "KUBE-SEP-I77PXRDZVX7PMWMN"
        );

        assert_eq!(nft_service_chain(&s1), "service-ULMVA6XW-ns1/svc1/tcp/p80");
        assert_eq!(
            nft_endpoint_chain(&s1, &s1.endpoints[0]),
            "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        );
        let s4 = svc("ns4", "svc4", "172.30.0.44", &["10.180.0.4", "10.180.0.5"]);
        assert_eq!(nft_service_chain(&s4), "service-LAUZTJTB-ns4/svc4/tcp/p80");
        assert_eq!(
            nft_endpoint_chain(&s4, &s4.endpoints[0]),
            "endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80"
        );
        assert_eq!(
            nft_endpoint_chain(&s4, &s4.endpoints[1]),
            "endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80"
        );
        let s2 = svc("ns2", "svc2", "172.30.0.42", &["10.180.0.2"]);
        assert_eq!(nft_service_chain(&s2), "service-42NFTM6N-ns2/svc2/tcp/p80");
    }

    #[test]
    fn iptables_has_kube_proxys_shape() {
        let cfg = KpConfig {
            cluster_cidr4: "10.0.0.0/8".into(),
            ..KpConfig::default()
        };
        let t = iptables_restore_with(
            &cfg,
            Family::V4,
            &[
                svc("ns1", "svc1", "172.30.0.41", &["10.180.0.1"]),
                svc(
                    "ns4",
                    "svc4",
                    "172.30.0.44",
                    &["10.180.0.4", "10.180.0.5", "10.180.0.6"],
                ),
                svc("ns6", "svc6", "172.30.0.46", &[]),
                svc("ns7", "svc7", "fd00:5c:ee::7", &["fd00:5c:1::10"]),
            ],
        );
        for line in [
            "-A KUBE-SERVICES -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O",
            "-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ",
            "-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment \"ns1/svc1:p80 -> 10.180.0.1:80\" -j KUBE-SEP-SXIVWICOYRO3J4NJ",
            "-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ",
            "-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80",
            "-A KUBE-SERVICES -m comment --comment \"ns6/svc6:p80 has no endpoints\" -m tcp -p tcp -d 172.30.0.46 --dport 80 -j REJECT",
            "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
            "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
        ] {
            assert!(t.lines().any(|l| l == line), "missing {line}\n{t}");
        }
        assert_eq!(t.matches("--probability 0.3333333333 ").count(), 1, "{t}");
        assert_eq!(t.matches("--probability 0.5000000000 ").count(), 1, "{t}");
        assert_eq!(t.matches(":KUBE-SEP-").count(), 4);
        assert!(!t.contains("fd00"), "IPv6 service in the IPv4 rules\n{t}");
        // The nodeports jump is the last rule of KUBE-SERVICES.
        let last = t
            .lines()
            .rfind(|l| l.starts_with("-A KUBE-SERVICES") && !l.contains("REJECT"))
            .unwrap();
        assert!(last.contains("KUBE-NODEPORTS"), "{last}");
        assert!(t.ends_with("COMMIT\n"));

        let t6 = ip6tables_restore(&[svc("ns7", "svc7", "fd00:5c:ee::7", &["fd00:5c:1::10"])]);
        assert!(
            t6.contains("-j DNAT --to-destination [fd00:5c:1::10]:80"),
            "{t6}"
        );
        assert!(t6.contains("! -s fd00:5c:1::/64 -j KUBE-MARK-MASQ"), "{t6}");
    }

    /// NodePort (externalTrafficPolicy: Cluster) rules, names and comments
    /// as in kube-proxy's own unit tests (ns3/svc3 there has node port 3003).
    #[test]
    fn node_port_rules() {
        let mut s3 = svc("ns3", "svc3", "172.30.0.43", &["10.180.0.3"]);
        s3.node_port = Some(3003);
        let mut s6 = svc("ns6", "svc6", "172.30.0.46", &[]);
        s6.node_port = Some(3006);
        let plain = svc("ns1", "svc1", "172.30.0.41", &["10.180.0.1"]);
        let t = iptables_restore(&[s3.clone(), s6.clone(), plain.clone()]);
        assert_eq!(ext_chain(&s3), "KUBE-EXT-X27LE4BHSL4DOUIK");
        for line in [
            ":KUBE-EXT-X27LE4BHSL4DOUIK - [0:0]",
            "-A KUBE-NODEPORTS -m comment --comment ns3/svc3:p80 -m tcp -p tcp --dport 3003 -j KUBE-EXT-X27LE4BHSL4DOUIK",
            "-A KUBE-EXT-X27LE4BHSL4DOUIK -m comment --comment \"masquerade traffic for ns3/svc3:p80 external destinations\" -j KUBE-MARK-MASQ",
            "-A KUBE-EXT-X27LE4BHSL4DOUIK -j KUBE-SVC-X27LE4BHSL4DOUIK",
            "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"ns6/svc6:p80 has no endpoints\" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3006 -j REJECT",
            "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully",
        ] {
            assert!(t.lines().any(|l| l == line), "missing {line}\n{t}");
        }
        // The masquerade mark comes before the jump to the service chain.
        let mark = t.find("-A KUBE-EXT-X27LE4BHSL4DOUIK -m comment").unwrap();
        let jump = t.find("-A KUBE-EXT-X27LE4BHSL4DOUIK -j").unwrap();
        assert!(mark < jump);
        assert_eq!(t.matches("KUBE-EXT-").count(), 4, "{t}");
        // Without node ports, nothing changes.
        let without = iptables_restore(std::slice::from_ref(&plain));
        assert!(!without.contains("KUBE-EXT-") && !without.contains("-A KUBE-NODEPORTS"));

        let cfg = KpConfig {
            nodeport_ips: vec!["198.18.200.11".parse().unwrap(), "fd00:5c:c8::11".parse().unwrap()],
            ..KpConfig::default()
        };
        let n = nft_with(&cfg, &[s3.clone(), s6, plain.clone()]);
        assert_eq!(nft_external_chain(&s3), "external-4AT6LBPK-ns3/svc3/tcp/p80");
        for line in [
            "add chain ip kube-proxy external-4AT6LBPK-ns3/svc3/tcp/p80\n",
            "add rule ip kube-proxy external-4AT6LBPK-ns3/svc3/tcp/p80 jump mark-for-masquerade\n",
            "add rule ip kube-proxy external-4AT6LBPK-ns3/svc3/tcp/p80 goto service-4AT6LBPK-ns3/svc3/tcp/p80\n",
            "add element ip kube-proxy service-nodeports { tcp . 3003 : goto external-4AT6LBPK-ns3/svc3/tcp/p80 }\n",
            "add element ip kube-proxy no-endpoint-nodeports { tcp . 3006 comment \"ns6/svc6:p80\" : goto reject-chain }\n",
            "add element ip kube-proxy nodeport-ips { 198.18.200.11 }\n",
            "add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports\n",
            "add rule ip kube-proxy masquerading masquerade fully-random\n",
        ] {
            assert!(n.contains(line), "missing {line}\n{n}");
        }
        assert!(!n.contains("fd00:5c:c8::11"), "an IPv6 node IP in the IPv4 table\n{n}");
        let without = nft(&[plain]);
        assert!(!without.contains("external-") && !without.contains("add element ip kube-proxy service-nodeports"), "{without}");
    }

    #[test]
    fn nft_has_kube_proxys_shape() {
        let t = nft(&[
            svc(
                "ns4",
                "svc4",
                "198.19.0.44",
                &["198.18.1.10", "198.18.1.11"],
            ),
            svc("ns6", "svc6", "198.19.0.46", &[]),
        ]);
        for line in [
            "add rule ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80 numgen random mod 2 vmap { 0 : goto endpoint-",
            "add element ip kube-proxy service-ips { 198.19.0.44 . tcp . 80 : goto service-LAUZTJTB-ns4/svc4/tcp/p80 }",
            "add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips",
            "add element ip kube-proxy no-endpoint-services { 198.19.0.46 . tcp . 80 comment \"ns6/svc6:p80\" : goto reject-chain }",
            "add rule ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80 ip daddr 198.19.0.44 ip saddr != 198.18.1.0/24 jump mark-for-masquerade",
        ] {
            assert!(t.contains(line), "missing {line}\n{t}");
        }
        assert!(
            !t.contains("add table ip6 kube-proxy {"),
            "no IPv6 table without IPv6 services"
        );
        let t6 = nft(&[svc("ns7", "svc7", "fd00:5c:ee::7", &["fd00:5c:1::10"])]);
        assert!(t6.contains("endpoint-"), "{t6}");
        assert!(t6.contains("__fd00.5c.1..10/80"), "{t6}");
        assert!(
            t6.contains("meta l4proto tcp dnat to [fd00:5c:1::10]:80"),
            "{t6}"
        );
    }
}
