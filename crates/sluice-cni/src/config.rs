//! The network configuration on stdin.
//!
//! Fields this plugin reads: `cniVersion`, `name`, `type`, `agentSocket`,
//! `mtu`, `timeoutSeconds`, `dns`, `prevResult`, and for GC
//! `cni.dev/valid-attachments`. `runtimeConfig`, `args`, `capabilities` and
//! any other field are accepted and ignored. `ipam` is refused: the agent
//! allocates addresses from its `--pod-cidr`.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};
use sluice_api::Attachment;

use crate::env::{check_container_id, check_ifname};
use crate::error::{code, CniError};
use crate::version::{Version, SUPPORTED};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
pub const MAX_TIMEOUT_SECONDS: f64 = 3600.0;
/// IPv4's minimum MTU, and the largest a veth takes.
pub const MTU_RANGE: std::ops::RangeInclusive<u64> = 68..=65535;

#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub version: Version,
    pub name: String,
    pub plugin_type: String,
    pub agent_socket: PathBuf,
    pub mtu: Option<u32>,
    pub timeout: Duration,
    /// The well-known `dns` dictionary, copied into ADD's result.
    pub dns: Option<Value>,
    pub prev_result: Option<Value>,
    /// `cni.dev/valid-attachments` (GC).
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// Parse stdin as JSON: code 6 if it is not a JSON object.
pub fn decode(bytes: &[u8]) -> Result<Map<String, Value>, CniError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(CniError::new(
            code::DECODE_FAILURE,
            "the network configuration on stdin is not a JSON object",
            format!("got {}", kind(&other)),
        )),
        Err(e) => Err(CniError::new(
            code::DECODE_FAILURE,
            "cannot decode the network configuration on stdin as JSON",
            e.to_string(),
        )),
    }
}

/// The configuration's `cniVersion`, if it is one this plugin supports (for
/// the error result's own `cniVersion`).
pub fn peek_version(bytes: &[u8]) -> Option<Version> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    Version::parse(v.get("cniVersion")?.as_str()?)
}

fn invalid(msg: impl Into<String>, details: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_CONFIG, msg, details)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Check the `cniVersion` field: 7 if missing or not a string, 1 if not one we speak.
pub fn version_of(m: &Map<String, Value>) -> Result<Version, CniError> {
    match m.get("cniVersion") {
        None => Err(invalid("the network configuration has no \"cniVersion\"", "cniVersion is required")),
        Some(Value::String(s)) => Version::parse(s).ok_or_else(|| {
            CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("unsupported cniVersion {s:?}"),
                format!("sluice-cni supports cniVersion {}", SUPPORTED.join(", ")),
            )
        }),
        Some(other) => Err(invalid(
            "invalid \"cniVersion\"",
            format!("cniVersion must be a string such as \"1.1.0\", got {}", kind(other)),
        )),
    }
}

/// Parse and validate the whole configuration.
pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
    let m = decode(bytes)?;
    let version = version_of(&m)?;

    let name = match m.get("name") {
        None => return Err(invalid("the network configuration has no \"name\"", "name is required")),
        Some(Value::String(s)) => {
            if check_network_name(s).is_err() {
                return Err(invalid(
                    format!("invalid \"name\" {s:?}"),
                    "name must start with a letter or digit, followed by letters, digits, '_', '.' or '-'",
                ));
            }
            s.clone()
        }
        Some(other) => return Err(invalid("invalid \"name\"", format!("name must be a string, got {}", kind(other)))),
    };

    let plugin_type = match m.get("type") {
        None => return Err(invalid("the network configuration has no \"type\"", "type is required (\"sluice-cni\")")),
        Some(Value::String(s)) if !s.is_empty() && !s.contains('/') && !s.contains('\\') => s.clone(),
        Some(other) => {
            return Err(invalid(
                "invalid \"type\"",
                format!("type must be the plugin's file name (\"sluice-cni\"), got {other}"),
            ))
        }
    };

    if let Some(ipam) = m.get("ipam") {
        return Err(invalid(
            "\"ipam\" is not supported by sluice-cni",
            format!(
                "remove \"ipam\" ({ipam}): the Sluice agent allocates pod addresses itself, \
                 from the ranges given to `sluice agent --pod-cidr`"
            ),
        ));
    }

    let agent_socket = match m.get("agentSocket") {
        None => PathBuf::from(sluice_api::DEFAULT_SOCKET),
        Some(Value::String(s)) if s.starts_with('/') => PathBuf::from(s),
        Some(other) => {
            return Err(invalid(
                "invalid \"agentSocket\"",
                format!(
                    "agentSocket must be the absolute path of the agent's API socket (default {}), got {other}",
                    sluice_api::DEFAULT_SOCKET
                ),
            ))
        }
    };

    let mtu = match m.get("mtu") {
        None => None,
        Some(v) => match v.as_u64().filter(|n| MTU_RANGE.contains(n)) {
            Some(n) => Some(n as u32),
            None => {
                return Err(invalid(
                    "invalid \"mtu\"",
                    format!(
                        "mtu must be an integer from {} to {}, got {v}",
                        MTU_RANGE.start(),
                        MTU_RANGE.end()
                    ),
                ))
            }
        },
    };

    let timeout = match m.get("timeoutSeconds") {
        None => DEFAULT_TIMEOUT,
        Some(v) => match v.as_f64().filter(|s| *s > 0.0 && *s <= MAX_TIMEOUT_SECONDS) {
            Some(s) => Duration::from_secs_f64(s),
            None => {
                return Err(invalid(
                    "invalid \"timeoutSeconds\"",
                    format!("timeoutSeconds must be a number of seconds above 0 and at most {MAX_TIMEOUT_SECONDS}, got {v}"),
                ))
            }
        },
    };

    let dns = match m.get("dns") {
        None | Some(Value::Null) => None,
        Some(v) => Some(check_dns(v)?),
    };

    let prev_result = match m.get("prevResult") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(other) => {
            return Err(invalid(
                "invalid \"prevResult\"",
                format!("prevResult must be an object (a previous result), got {}", kind(other)),
            ))
        }
    };

    let valid_attachments = match m.get("cni.dev/valid-attachments") {
        None => None,
        Some(v) => Some(valid_attachments(v)?),
    };

    Ok(NetConf { version, name, plugin_type, agent_socket, mtu, timeout, dns, prev_result, valid_attachments })
}

/// Network names as the specification defines them (like container IDs).
pub fn check_network_name(s: &str) -> Result<(), String> {
    check_container_id(s)
}

/// The `dns` dictionary: `nameservers` (addresses), `domain`, `search`, `options`.
fn check_dns(v: &Value) -> Result<Value, CniError> {
    let bad = |d: String| invalid("invalid \"dns\"", d);
    let Value::Object(m) = v else {
        return Err(bad(format!("dns must be an object, got {}", kind(v))));
    };
    let mut out = Map::new();
    for (k, val) in m {
        match k.as_str() {
            "domain" => match val {
                Value::String(_) => {
                    out.insert(k.clone(), val.clone());
                }
                _ => return Err(bad(format!("dns.domain must be a string, got {}", kind(val)))),
            },
            "nameservers" | "search" | "options" => {
                let list = val
                    .as_array()
                    .filter(|a| a.iter().all(Value::is_string))
                    .ok_or_else(|| bad(format!("dns.{k} must be a list of strings, got {val}")))?;
                if k == "nameservers" {
                    for ns in list {
                        let s = ns.as_str().unwrap_or_default();
                        if s.parse::<std::net::IpAddr>().is_err() {
                            return Err(bad(format!("dns.nameservers: {s:?} is not an IPv4 or IPv6 address")));
                        }
                    }
                }
                out.insert(k.clone(), val.clone());
            }
            // Unknown keys inside dns: not ours to judge, not ours to pass on.
            _ => {}
        }
    }
    Ok(Value::Object(out))
}

fn valid_attachments(v: &Value) -> Result<Vec<Attachment>, CniError> {
    let bad = |d: String| invalid("invalid \"cni.dev/valid-attachments\"", d);
    let list = v
        .as_array()
        .ok_or_else(|| bad(format!("it must be a list of {{\"containerID\", \"ifname\"}} objects, got {}", kind(v))))?;
    let mut out = Vec::with_capacity(list.len());
    for (i, a) in list.iter().enumerate() {
        let field = |f: &str| a.get(f).and_then(Value::as_str).map(str::to_string);
        let (Some(container_id), Some(ifname)) = (field("containerID"), field("ifname")) else {
            return Err(bad(format!("entry {i} must have string fields \"containerID\" and \"ifname\", got {a}")));
        };
        check_container_id(&container_id).map_err(|e| bad(format!("entry {i}: containerID {e}")))?;
        check_ifname(&ifname).map_err(|e| bad(format!("entry {i}: ifname {e}")))?;
        out.push(Attachment { container_id, ifname });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse_v(v: Value) -> Result<NetConf, CniError> {
        parse(v.to_string().as_bytes())
    }

    fn base() -> Value {
        json!({"cniVersion": "1.1.0", "name": "sluice", "type": "sluice-cni"})
    }

    fn with(k: &str, v: Value) -> Value {
        let mut b = base();
        b[k] = v;
        b
    }

    fn without(k: &str) -> Value {
        let mut b = base();
        b.as_object_mut().unwrap().remove(k);
        b
    }

    fn err(v: Value) -> CniError {
        parse_v(v).unwrap_err()
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let c = parse_v(base()).unwrap();
        assert_eq!(
            c,
            NetConf {
                version: Version::V1_1_0,
                name: "sluice".into(),
                plugin_type: "sluice-cni".into(),
                agent_socket: PathBuf::from("/run/sluice/agent.sock"),
                mtu: None,
                timeout: Duration::from_secs(60),
                dns: None,
                prev_result: None,
                valid_attachments: None,
            }
        );
    }

    #[test]
    fn every_field() {
        let c = parse_v(json!({
            "cniVersion": "0.4.0", "name": "pods.v1_x-2", "type": "sluice-cni",
            "agentSocket": "/tmp/a.sock", "mtu": 1400, "timeoutSeconds": 2.5,
            "dns": {"nameservers": ["10.96.0.10", "fd00::a"], "search": ["svc.cluster.local"], "options": ["ndots:5"], "domain": "cluster.local", "x": 1},
            "prevResult": {"cniVersion": "0.4.0", "interfaces": []},
            "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}],
            "runtimeConfig": {"portMappings": []}, "args": {"cni": {}}, "capabilities": {"portMappings": true},
            "somethingElse": [1, 2, 3]
        }))
        .unwrap();
        assert_eq!(c.version, Version::V0_4_0);
        assert_eq!(c.name, "pods.v1_x-2");
        assert_eq!(c.agent_socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert_eq!(
            c.dns,
            Some(json!({"nameservers": ["10.96.0.10", "fd00::a"], "search": ["svc.cluster.local"], "options": ["ndots:5"], "domain": "cluster.local"}))
        );
        assert_eq!(c.prev_result, Some(json!({"cniVersion": "0.4.0", "interfaces": []})));
        assert_eq!(c.valid_attachments, Some(vec![Attachment { container_id: "c1".into(), ifname: "eth0".into() }]));
    }

    #[test]
    fn malformed_json_is_code_6() {
        for bad in ["", "{", "{\"cniVersion\": \"1.1.0\",}", "[]", "\"x\"", "null"] {
            let e = parse(bad.as_bytes()).unwrap_err();
            assert_eq!(e.code, 6, "{bad}: {e}");
        }
    }

    #[test]
    fn version_errors() {
        let e = err(without("cniVersion"));
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("cniVersion"), "{e}");
        assert_eq!(err(with("cniVersion", json!(1))).code, 7);
        for v in ["0.1.0", "0.2.0", "0.3.0", "2.0.0", "1.1", "latest"] {
            let e = err(with("cniVersion", json!(v)));
            assert_eq!(e.code, 1, "{v}");
            assert!(e.msg.contains(v) && e.details.contains("0.3.1, 0.4.0, 1.0.0, 1.1.0"), "{e}");
        }
        for v in SUPPORTED {
            assert!(parse_v(with("cniVersion", json!(v))).is_ok());
        }
        // Version is checked before anything else.
        let e = err(json!({"cniVersion": "9.9.9"}));
        assert_eq!(e.code, 1);
    }

    #[test]
    fn name_and_type_errors_are_code_7() {
        for (v, needle) in [
            (without("name"), "\"name\""),
            (with("name", json!("")), "\"name\""),
            (with("name", json!("-x")), "\"name\""),
            (with("name", json!("a/b")), "\"name\""),
            (with("name", json!(3)), "\"name\""),
            (without("type"), "\"type\""),
            (with("type", json!("../bin/x")), "\"type\""),
            (with("type", json!("")), "\"type\""),
        ] {
            let e = err(v.clone());
            assert_eq!(e.code, 7, "{v}");
            assert!(e.msg.contains(needle), "{v}: {e}");
        }
    }

    #[test]
    fn ipam_is_refused_and_says_why() {
        let e = err(with("ipam", json!({"type": "host-local"})));
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("ipam"), "{e}");
        assert!(e.details.contains("--pod-cidr"), "{e}");
    }

    #[test]
    fn mtu() {
        for ok in [68, 1280, 1500, 9000, 65535] {
            assert_eq!(parse_v(with("mtu", json!(ok))).unwrap().mtu, Some(ok));
        }
        for bad in [json!(0), json!(67), json!(65536), json!(-1), json!(1500.5), json!("1500"), json!(null)] {
            let e = err(with("mtu", bad.clone()));
            assert_eq!(e.code, 7, "{bad}");
            assert!(e.msg.contains("mtu") && e.details.contains(&bad.to_string()), "{e}");
        }
    }

    #[test]
    fn timeout() {
        assert_eq!(parse_v(with("timeoutSeconds", json!(5))).unwrap().timeout, Duration::from_secs(5));
        for bad in [json!(0), json!(-1), json!(1e9), json!("5"), json!(true)] {
            let e = err(with("timeoutSeconds", bad.clone()));
            assert_eq!(e.code, 7, "{bad}");
            assert!(e.msg.contains("timeoutSeconds"), "{e}");
        }
    }

    #[test]
    fn agent_socket() {
        for bad in [json!("run/agent.sock"), json!(""), json!(7)] {
            let e = err(with("agentSocket", bad.clone()));
            assert_eq!(e.code, 7, "{bad}");
            assert!(e.msg.contains("agentSocket"), "{e}");
        }
    }

    #[test]
    fn dns() {
        for bad in [
            json!("8.8.8.8"),
            json!({"nameservers": "8.8.8.8"}),
            json!({"nameservers": ["dns.example"]}),
            json!({"search": [1]}),
            json!({"domain": ["a"]}),
        ] {
            let e = err(with("dns", bad.clone()));
            assert_eq!(e.code, 7, "{bad}");
            assert!(e.msg.contains("dns"), "{e}");
        }
    }

    #[test]
    fn prev_result_must_be_an_object() {
        let e = err(with("prevResult", json!([])));
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("prevResult"));
    }

    #[test]
    fn valid_attachments_errors() {
        for bad in [
            json!({}),
            json!([{"containerID": "c1"}]),
            json!([{"containerID": "c1", "ifname": 3}]),
            json!([{"containerID": "-c1", "ifname": "eth0"}]),
            json!([{"containerID": "c1", "ifname": "a/b"}]),
        ] {
            let e = err(with("cni.dev/valid-attachments", bad.clone()));
            assert_eq!(e.code, 7, "{bad}");
            assert!(e.msg.contains("cni.dev/valid-attachments"), "{e}");
        }
        assert_eq!(parse_v(with("cni.dev/valid-attachments", json!([]))).unwrap().valid_attachments, Some(vec![]));
    }

    #[test]
    fn peek() {
        assert_eq!(peek_version(br#"{"cniVersion":"0.3.1","name":3}"#), Some(Version::V0_3_1));
        assert_eq!(peek_version(br#"{"cniVersion":"0.2.0"}"#), None);
        assert_eq!(peek_version(b"{"), None);
    }
}
