//! kube-proxy's rules for the same services, to benchmark against: the
//! iptables-mode `nat` table and the nftables-mode `kube-proxy` table, in
//! the structure kube-proxy itself writes (chain per service, chain per
//! endpoint, random-probability or numgen selection, mark-for-masquerade),
//! as of Kubernetes 1.31.

use std::fmt::Write;
use std::net::IpAddr;

use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn lower(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
    pub fn upper(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }
}

#[derive(Debug, Clone)]
pub struct KpService {
    pub namespace: String,
    pub name: String,
    pub port_name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Proto,
    pub endpoints: Vec<(IpAddr, u16)>,
}

impl KpService {
    /// `namespace/name:port`, kube-proxy's ServicePortName.
    fn spn(&self) -> String {
        format!("{}/{}:{}", self.namespace, self.name, self.port_name)
    }
}

/// The pod CIDR whose traffic is not masqueraded (`--cluster-cidr`).
pub const CLUSTER_CIDR: &str = "198.18.0.0/16";

/// base32(sha256(s))[..16], kube-proxy's chain-name hash.
fn hash16(s: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(s.as_bytes());
    let mut out = String::new();
    let mut buf: u64 = 0;
    let mut bits = 0;
    for b in digest.iter() {
        buf = (buf << 8) | *b as u64;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buf >> bits) & 31) as usize] as char);
            if out.len() == 16 {
                return out;
            }
        }
    }
    out
}

fn svc_chain(s: &KpService) -> String {
    format!("KUBE-SVC-{}", hash16(&format!("{}{}", s.spn(), s.protocol.lower())))
}

fn sep_chain(s: &KpService, ep: &(IpAddr, u16)) -> String {
    format!("KUBE-SEP-{}", hash16(&format!("{}{}{}:{}", s.spn(), s.protocol.lower(), ep.0, ep.1)))
}

/// `iptables-restore` input for the nat table (IPv4 services only).
pub fn iptables_restore(services: &[KpService]) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    let _ = writeln!(chains, "*nat");
    for c in ["PREROUTING ACCEPT", "INPUT ACCEPT", "OUTPUT ACCEPT", "POSTROUTING ACCEPT"] {
        let _ = writeln!(chains, ":{c} [0:0]");
    }
    for c in ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"] {
        let _ = writeln!(chains, ":{c} - [0:0]");
    }
    let _ = writeln!(rules, "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES");
    let _ = writeln!(rules, "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES");
    let _ = writeln!(rules, "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING");
    let _ = writeln!(rules, "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN");
    let _ = writeln!(rules, "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000");
    let _ = writeln!(
        rules,
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully"
    );
    let _ = writeln!(rules, "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000");
    let mut per_service = String::new();
    for s in services {
        let svc = svc_chain(s);
        let spn = s.spn();
        let p = s.protocol.lower();
        let _ = writeln!(chains, ":{svc} - [0:0]");
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -m comment --comment \"{spn} cluster IP\" -m {p} -p {p} -d {}/32 --dport {} -j {svc}",
            s.vip, s.port
        );
        let _ = writeln!(
            per_service,
            "-A {svc} -m comment --comment \"{spn} cluster IP\" -m {p} -p {p} -d {}/32 --dport {} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ",
            s.vip, s.port
        );
        let n = s.endpoints.len();
        for (i, ep) in s.endpoints.iter().enumerate() {
            let sep = sep_chain(s, ep);
            let _ = writeln!(chains, ":{sep} - [0:0]");
            if i + 1 < n {
                let prob = 1.0 / (n - i) as f64;
                let _ = writeln!(
                    per_service,
                    "-A {svc} -m comment --comment \"{spn} -> {}:{}\" -m statistic --mode random --probability {prob:.10} -j {sep}",
                    ep.0, ep.1
                );
            } else {
                let _ = writeln!(per_service, "-A {svc} -m comment --comment \"{spn} -> {}:{}\" -j {sep}", ep.0, ep.1);
            }
            let _ = writeln!(per_service, "-A {sep} -m comment --comment {spn} -s {}/32 -j KUBE-MARK-MASQ", ep.0);
            let _ = writeln!(
                per_service,
                "-A {sep} -m comment --comment {spn} -m {p} -p {p} -j DNAT --to-destination {}:{}",
                ep.0, ep.1
            );
        }
    }
    let _ = writeln!(
        rules,
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    );
    chains + &rules + &per_service + "COMMIT\n"
}

fn nft_hash8(s: &str) -> String {
    hash16(s)[..8].to_string()
}

fn nft_svc_chain(s: &KpService) -> String {
    let base = format!("{}/{}/{}/{}", s.namespace, s.name, s.protocol.lower(), s.port_name);
    format!("service-{}-{base}", nft_hash8(&base))
}

fn nft_ep_chain(s: &KpService, ep: &(IpAddr, u16)) -> String {
    let base = format!("{}/{}/{}/{}__{}/{}", s.namespace, s.name, s.protocol.lower(), s.port_name, ep.0, ep.1);
    format!("endpoint-{}-{base}", nft_hash8(&base))
}

/// `nft -f` input for the `ip kube-proxy` table (IPv4 services only).
pub fn nft(services: &[KpService]) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "add table ip kube-proxy {{ comment \"rules for kube-proxy\" ; }}");
    let _ = writeln!(o, "add chain ip kube-proxy mark-for-masquerade");
    let _ = writeln!(o, "add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000");
    let _ = writeln!(o, "add chain ip kube-proxy masquerading");
    let _ = writeln!(o, "add rule ip kube-proxy masquerading mark and 0x4000 == 0 return");
    let _ = writeln!(o, "add rule ip kube-proxy masquerading mark set mark xor 0x4000");
    let _ = writeln!(o, "add rule ip kube-proxy masquerading masquerade fully-random");
    let _ = writeln!(
        o,
        "add map ip kube-proxy service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}"
    );
    let _ = writeln!(o, "add map ip kube-proxy service-nodeports {{ type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }}");
    let _ = writeln!(o, "add chain ip kube-proxy services");
    let _ = writeln!(o, "add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips");
    let _ = writeln!(
        o,
        "add rule ip kube-proxy services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports"
    );
    for (chain, hook, prio, target) in [
        ("nat-prerouting", "prerouting", "-100", "services"),
        ("nat-output", "output", "-100", "services"),
        ("nat-postrouting", "postrouting", "100", "masquerading"),
    ] {
        let _ = writeln!(o, "add chain ip kube-proxy {chain} {{ type nat hook {hook} priority {prio} ; }}");
        let _ = writeln!(o, "add rule ip kube-proxy {chain} jump {target}");
    }
    let mut elements = Vec::new();
    for s in services {
        let svc = nft_svc_chain(s);
        let p = s.protocol.lower();
        let _ = writeln!(o, "add chain ip kube-proxy {svc}");
        let _ = writeln!(
            o,
            "add rule ip kube-proxy {svc} ip daddr {} {p} dport {} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade",
            s.vip, s.port
        );
        let mut vmap = Vec::new();
        for (i, ep) in s.endpoints.iter().enumerate() {
            let epc = nft_ep_chain(s, ep);
            let _ = writeln!(o, "add chain ip kube-proxy {epc}");
            let _ = writeln!(o, "add rule ip kube-proxy {epc} ip saddr {} jump mark-for-masquerade", ep.0);
            let _ = writeln!(o, "add rule ip kube-proxy {epc} meta l4proto {p} dnat to {}:{}", ep.0, ep.1);
            vmap.push(format!("{i} : goto {epc}"));
        }
        if !vmap.is_empty() {
            let _ = writeln!(o, "add rule ip kube-proxy {svc} numgen random mod {} vmap {{ {} }}", vmap.len(), vmap.join(" , "));
        }
        elements.push(format!("{} . {p} . {} : goto {svc}", s.vip, s.port));
    }
    for chunk in elements.chunks(1000) {
        let _ = writeln!(o, "add element ip kube-proxy service-ips {{ {} }}", chunk.join(" , "));
    }
    o
}

/// Flush what [`iptables_restore`] loaded.
pub const IPTABLES_FLUSH: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn svc() -> KpService {
        KpService {
            namespace: "default".into(),
            name: "nginx".into(),
            port_name: "http".into(),
            vip: "198.19.0.1".parse().unwrap(),
            port: 80,
            protocol: Proto::Tcp,
            endpoints: vec![("198.18.1.10".parse().unwrap(), 8080), ("198.18.1.11".parse().unwrap(), 8080)],
        }
    }

    #[test]
    fn iptables_has_kube_proxys_shape() {
        let t = iptables_restore(&[svc()]);
        assert!(t.contains("-m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-"), "{t}");
        assert!(t.contains("-j DNAT --to-destination 198.18.1.11:8080"));
        assert_eq!(t.matches(":KUBE-SEP-").count(), 2);
        let chain = svc_chain(&svc());
        assert_eq!(chain.len(), "KUBE-SVC-".len() + 16);
        assert!(chain[9..].bytes().all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)));
        assert!(t.ends_with("COMMIT\n"));
        let _ = Proto::Udp.upper();
    }

    #[test]
    fn nft_has_kube_proxys_shape() {
        let t = nft(&[svc()]);
        assert!(t.contains("numgen random mod 2 vmap { 0 : goto endpoint-"), "{t}");
        assert!(t.contains("198.19.0.1 . tcp . 80 : goto service-"));
    }
}
