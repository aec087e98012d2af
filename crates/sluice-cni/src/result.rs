//! Success results: ADD's (in the configuration's `cniVersion`) and VERSION's.
//!
//! | field | 0.3.1, 0.4.0 | 1.0.0 | 1.1.0 |
//! |---|---|---|---|
//! | `interfaces[]` | name, mac, sandbox | name, mac, sandbox | + mtu |
//! | `ips[]` | version, address, gateway, interface | address, gateway, interface | same |
//! | `routes[]` | dst, gw | dst, gw | + scope (and mtu, advmss, priority, table) |

use std::net::IpAddr;

use serde_json::{json, Map, Value};
use sluice_api::CniAddResult;

use crate::error::{code, CniError, INTERNAL};
use crate::version::{Version, SUPPORTED};

/// VERSION's result: `cniVersion` echoes the input's, when there is one.
pub fn version_result(input_version: Option<&str>) -> Value {
    json!({
        "cniVersion": input_version.unwrap_or(crate::version::LATEST),
        "supportedVersions": SUPPORTED,
    })
}

/// ADD's result. A `prevResult` (another plugin ran before this one in the
/// chain) is kept and this attachment's interfaces, addresses and routes are
/// appended to it; `dns` (from the configuration) replaces the previous one.
pub fn add_result(version: Version, r: &CniAddResult, dns: Option<&Value>, prev: Option<&Value>) -> Result<Value, CniError> {
    let mut interfaces = prev_list(prev, "interfaces")?;
    let mut ips = prev_list(prev, "ips")?;
    let mut routes = prev_list(prev, "routes")?;

    let host = json!({"name": r.host_ifname, "mac": r.host_mac});
    let mut pod = json!({"name": r.pod_ifname, "mac": r.pod_mac, "sandbox": r.sandbox});
    if version.has_mtu_and_scope() {
        pod["mtu"] = json!(r.mtu);
    }
    let pod_index = interfaces.len() + 1;
    interfaces.push(host);
    interfaces.push(pod);

    for ip in &r.ips {
        let family = family_of(&ip.address)?;
        let mut o = Map::new();
        if version.ips_carry_version() {
            o.insert("version".into(), json!(if family.is_ipv4() { "4" } else { "6" }));
        }
        o.insert("address".into(), json!(ip.address));
        if let Some(gw) = &ip.gateway {
            o.insert("gateway".into(), json!(gw));
        }
        o.insert("interface".into(), json!(pod_index));
        ips.push(Value::Object(o));
    }

    for rt in &r.routes {
        family_of(&rt.dst)?;
        let mut o = Map::new();
        o.insert("dst".into(), json!(rt.dst));
        if let Some(gw) = &rt.gw {
            o.insert("gw".into(), json!(gw));
        }
        if version.has_mtu_and_scope() {
            if let Some(scope) = rt.scope {
                o.insert("scope".into(), json!(scope));
            }
        }
        routes.push(Value::Object(o));
    }

    let dns = match (dns, prev.and_then(|p| p.get("dns"))) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) if d.is_object() => d.clone(),
        _ => json!({}),
    };

    Ok(json!({
        "cniVersion": version.as_str(),
        "interfaces": interfaces,
        "ips": ips,
        "routes": routes,
        "dns": dns,
    }))
}

fn prev_list(prev: Option<&Value>, key: &str) -> Result<Vec<Value>, CniError> {
    match prev.and_then(|p| p.get(key)) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => Ok(a.clone()),
        Some(other) => Err(CniError::new(
            code::INVALID_CONFIG,
            format!("invalid \"prevResult\": \"{key}\" is not a list"),
            format!("prevResult.{key} = {other}"),
        )),
    }
}

/// The address family of `a.b.c.d/n` or `x::y/n`; the agent must send CIDRs.
fn family_of(cidr: &str) -> Result<IpAddr, CniError> {
    let bad = || {
        CniError::new(INTERNAL, "the agent returned an invalid address", format!("{cidr:?} is not an address in CIDR notation"))
    };
    let (addr, len) = cidr.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if len > if addr.is_ipv4() { 32 } else { 128 } {
        return Err(bad());
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use sluice_api::{CniIp, CniRoute};

    use super::*;

    /// What the agent returns for a dual-stack pod.
    fn added() -> CniAddResult {
        CniAddResult {
            host_ifname: "sl4f2a91c03b".into(),
            host_mac: "ee:ee:ee:00:00:01".into(),
            pod_ifname: "eth0".into(),
            pod_mac: "02:00:00:00:00:02".into(),
            sandbox: "/run/netns/pod1".into(),
            mtu: 1500,
            ips: vec![
                CniIp { address: "198.18.64.5/32".into(), gateway: Some("169.254.1.1".into()) },
                CniIp { address: "fd00:5c:64::5/128".into(), gateway: Some("fe80::1".into()) },
            ],
            routes: vec![
                CniRoute { dst: "169.254.1.1/32".into(), gw: None, scope: Some(253) },
                CniRoute { dst: "0.0.0.0/0".into(), gw: Some("169.254.1.1".into()), scope: None },
                CniRoute { dst: "::/0".into(), gw: Some("fe80::1".into()), scope: None },
            ],
        }
    }

    fn golden(version: Version) -> Value {
        add_result(version, &added(), None, None).unwrap()
    }

    #[test]
    fn golden_1_1_0() {
        assert_eq!(
            golden(Version::V1_1_0),
            json!({
                "cniVersion": "1.1.0",
                "interfaces": [
                    {"name": "sl4f2a91c03b", "mac": "ee:ee:ee:00:00:01"},
                    {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/run/netns/pod1", "mtu": 1500}
                ],
                "ips": [
                    {"address": "198.18.64.5/32", "gateway": "169.254.1.1", "interface": 1},
                    {"address": "fd00:5c:64::5/128", "gateway": "fe80::1", "interface": 1}
                ],
                "routes": [
                    {"dst": "169.254.1.1/32", "scope": 253},
                    {"dst": "0.0.0.0/0", "gw": "169.254.1.1"},
                    {"dst": "::/0", "gw": "fe80::1"}
                ],
                "dns": {}
            })
        );
    }

    #[test]
    fn golden_1_0_0() {
        assert_eq!(
            golden(Version::V1_0_0),
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": "sl4f2a91c03b", "mac": "ee:ee:ee:00:00:01"},
                    {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/run/netns/pod1"}
                ],
                "ips": [
                    {"address": "198.18.64.5/32", "gateway": "169.254.1.1", "interface": 1},
                    {"address": "fd00:5c:64::5/128", "gateway": "fe80::1", "interface": 1}
                ],
                "routes": [
                    {"dst": "169.254.1.1/32"},
                    {"dst": "0.0.0.0/0", "gw": "169.254.1.1"},
                    {"dst": "::/0", "gw": "fe80::1"}
                ],
                "dns": {}
            })
        );
    }

    #[test]
    fn golden_0_4_0_and_0_3_1() {
        for v in [Version::V0_4_0, Version::V0_3_1] {
            assert_eq!(
                golden(v),
                json!({
                    "cniVersion": v.as_str(),
                    "interfaces": [
                        {"name": "sl4f2a91c03b", "mac": "ee:ee:ee:00:00:01"},
                        {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/run/netns/pod1"}
                    ],
                    "ips": [
                        {"version": "4", "address": "198.18.64.5/32", "gateway": "169.254.1.1", "interface": 1},
                        {"version": "6", "address": "fd00:5c:64::5/128", "gateway": "fe80::1", "interface": 1}
                    ],
                    "routes": [
                        {"dst": "169.254.1.1/32"},
                        {"dst": "0.0.0.0/0", "gw": "169.254.1.1"},
                        {"dst": "::/0", "gw": "fe80::1"}
                    ],
                    "dns": {}
                })
            );
        }
    }

    #[test]
    fn no_gateway_is_left_out() {
        let mut r = added();
        r.ips = vec![CniIp { address: "198.18.64.5/32".into(), gateway: None }];
        let v = add_result(Version::V1_1_0, &r, None, None).unwrap();
        assert_eq!(v["ips"], json!([{"address": "198.18.64.5/32", "interface": 1}]));
    }

    #[test]
    fn dns_from_the_configuration() {
        let dns = json!({"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"]});
        let v = add_result(Version::V1_0_0, &added(), Some(&dns), None).unwrap();
        assert_eq!(v["dns"], dns);
    }

    #[test]
    fn prev_result_is_kept_and_indexes_shift() {
        let prev = json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "lo", "sandbox": "/run/netns/pod1"}],
            "ips": [{"address": "127.0.0.1/8", "interface": 0}],
            "routes": [],
            "dns": {"nameservers": ["1.1.1.1"]}
        });
        let v = add_result(Version::V1_1_0, &added(), None, Some(&prev)).unwrap();
        let ifs = v["interfaces"].as_array().unwrap();
        assert_eq!(ifs.len(), 3);
        assert_eq!(ifs[0]["name"], "lo");
        assert_eq!(ifs[2]["name"], "eth0");
        let ips = v["ips"].as_array().unwrap();
        assert_eq!(ips[0], json!({"address": "127.0.0.1/8", "interface": 0}));
        assert_eq!(ips[1]["interface"], 2);
        assert_eq!(ips[2]["interface"], 2);
        assert_eq!(v["dns"], json!({"nameservers": ["1.1.1.1"]}));
        let e = add_result(Version::V1_1_0, &added(), None, Some(&json!({"ips": {}}))).unwrap_err();
        assert_eq!(e.code, 7);
    }

    #[test]
    fn agent_garbage_is_an_internal_error() {
        for bad in ["198.18.64.5", "198.18.64.5/33", "fd00::1/129", "x/32", ""] {
            let mut r = added();
            r.ips = vec![CniIp { address: bad.into(), gateway: None }];
            let e = add_result(Version::V1_1_0, &r, None, None).unwrap_err();
            assert_eq!(e.code, INTERNAL, "{bad}");
        }
    }

    #[test]
    fn version() {
        assert_eq!(
            version_result(Some("0.4.0")),
            json!({"cniVersion": "0.4.0", "supportedVersions": ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
        );
        assert_eq!(version_result(None)["cniVersion"], "1.1.0");
    }
}
