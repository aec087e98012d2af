//! The runtime's parameters: `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`,
//! `CNI_IFNAME`, `CNI_ARGS`, `CNI_PATH`.
//!
//! Every problem is an error with code 4 (invalid environment) whose message
//! names the variables at fault; all of them are reported at once.

use sluice_api::Attachment;

use crate::error::{code, CniError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Gc => "GC",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
        }
    }

    /// Commands about one attachment (they need CNI_CONTAINERID and CNI_IFNAME).
    fn names_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }

    /// Commands that need the pod's namespace (DEL may come after it is gone).
    fn needs_netns(self) -> bool {
        matches!(self, Command::Add | Command::Check)
    }
}

/// The parsed and validated environment of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    /// ADD, DEL and CHECK only.
    pub attachment: Option<Attachment>,
    /// Required for ADD and CHECK; `None` when unset or empty.
    pub netns: Option<String>,
    pub args: CniArgs,
}

/// The keys of `CNI_ARGS` this plugin knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    pub pod_uid: Option<String>,
    pub infra_container_id: Option<String>,
    pub ignore_unknown: bool,
}

/// Read the environment through `get` (the process environment in `main`,
/// a map in tests). `CNI_COMMAND` must already be known to be set.
pub fn parse(get: &dyn Fn(&str) -> Option<String>) -> Result<Env, CniError> {
    let raw = get("CNI_COMMAND").unwrap_or_default();
    let command = Command::parse(&raw).ok_or_else(|| {
        CniError::new(
            code::INVALID_ENV,
            format!("invalid CNI_COMMAND {raw:?}"),
            "CNI_COMMAND must be one of ADD, DEL, CHECK, GC, STATUS, VERSION",
        )
    })?;

    let mut problems: Vec<(&str, String)> = Vec::new();
    let non_empty = |k: &str| get(k).filter(|v| !v.is_empty());

    let mut attachment = None;
    let mut args = CniArgs::default();
    if command.names_attachment() {
        let id = non_empty("CNI_CONTAINERID");
        match &id {
            None => problems.push(("CNI_CONTAINERID", "is required".into())),
            Some(id) => {
                if let Err(e) = check_container_id(id) {
                    problems.push(("CNI_CONTAINERID", e));
                }
            }
        }
        let ifname = non_empty("CNI_IFNAME");
        match &ifname {
            None => problems.push(("CNI_IFNAME", "is required".into())),
            Some(name) => {
                if let Err(e) = check_ifname(name) {
                    problems.push(("CNI_IFNAME", e));
                }
            }
        }
        if let (Some(container_id), Some(ifname)) = (id, ifname) {
            attachment = Some(Attachment { container_id, ifname });
        }
        match parse_cni_args(&get("CNI_ARGS").unwrap_or_default()) {
            Ok(a) => args = a,
            Err(e) => problems.push(("CNI_ARGS", e)),
        }
    }
    let netns = non_empty("CNI_NETNS");
    if command.needs_netns() && netns.is_none() {
        problems.push(("CNI_NETNS", format!("is required for {}", command.as_str())));
    }

    if !problems.is_empty() {
        let names: Vec<&str> = problems.iter().map(|(k, _)| *k).collect();
        let details: Vec<String> = problems.iter().map(|(k, e)| format!("{k} {e}")).collect();
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("invalid environment variable(s): {}", names.join(", ")),
            details.join("; "),
        ));
    }
    if !command.names_attachment() {
        attachment = None;
    }
    Ok(Env { command, attachment, netns, args })
}

/// The specification's container ID: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
pub fn check_container_id(id: &str) -> Result<(), String> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(format!(
            "{id:?} is not a valid container ID: it must start with a letter or digit, \
             followed by letters, digits, '_', '.' or '-'"
        ));
    }
    Ok(())
}

/// A name the kernel accepts for a network device: 1 to 15 bytes, not `.` or
/// `..`, no `/`, `:` or whitespace.
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.len() > 15 {
        return Err(format!("{name:?} is longer than 15 bytes (the kernel's limit for device names)"));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid device name"));
    }
    if let Some(c) = name.chars().find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control()) {
        return Err(format!("{name:?} contains {c:?}, which device names cannot contain"));
    }
    Ok(())
}

/// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`. Known keys are the
/// Kubernetes ones; as with every CNI plugin, an unknown key is an error
/// unless `IgnoreUnknown=1` (or `true`) is among the pairs.
pub fn parse_cni_args(s: &str) -> Result<CniArgs, String> {
    let mut a = CniArgs::default();
    let mut unknown = Vec::new();
    for pair in s.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(format!("has {pair:?}, which is not KEY=VALUE"));
        };
        if k.is_empty() {
            return Err(format!("has {pair:?}, whose key is empty"));
        }
        let v = v.to_string();
        match k {
            "K8S_POD_NAME" => a.pod_name = Some(v).filter(|v| !v.is_empty()),
            "K8S_POD_NAMESPACE" => a.pod_namespace = Some(v).filter(|v| !v.is_empty()),
            "K8S_POD_UID" => a.pod_uid = Some(v).filter(|v| !v.is_empty()),
            "K8S_POD_INFRA_CONTAINER_ID" => a.infra_container_id = Some(v).filter(|v| !v.is_empty()),
            "IgnoreUnknown" => {
                a.ignore_unknown = match v.to_ascii_lowercase().as_str() {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    _ => return Err(format!("has IgnoreUnknown={v:?}: the value must be 1, 0, true or false")),
                }
            }
            _ => unknown.push(k.to_string()),
        }
    }
    if !unknown.is_empty() && !a.ignore_unknown {
        return Err(format!(
            "has unknown key(s) {} (add IgnoreUnknown=1 to pass keys this plugin does not use)",
            unknown.join(", ")
        ));
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        parse(&move |k: &str| m.get(k).cloned())
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc123"),
        ("CNI_PATH", "/opt/cni/bin"),
    ];

    fn with(base: &[(&'static str, &'static str)], k: &'static str, v: Option<&'static str>) -> Vec<(&'static str, &'static str)> {
        let mut out: Vec<_> = base.iter().copied().filter(|(kk, _)| *kk != k).collect();
        if let Some(v) = v {
            out.push((k, v));
        }
        out
    }

    #[test]
    fn a_runtimes_add() {
        let e = env_of(ADD).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.attachment, Some(Attachment { container_id: "abc123".into(), ifname: "eth0".into() }));
        assert_eq!(e.netns.as_deref(), Some("/run/netns/x"));
        assert_eq!(e.args.pod_name.as_deref(), Some("web-0"));
        assert_eq!(e.args.pod_namespace.as_deref(), Some("default"));
        assert_eq!(e.args.infra_container_id.as_deref(), Some("abc123"));
        assert!(e.args.ignore_unknown);
    }

    #[test]
    fn every_command() {
        for c in ["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"] {
            let e = env_of(&with(ADD, "CNI_COMMAND", Some(c))).unwrap();
            assert_eq!(e.command.as_str(), c);
            assert_eq!(e.attachment.is_some(), matches!(c, "ADD" | "DEL" | "CHECK"));
        }
    }

    #[test]
    fn unknown_or_lowercase_command_is_code_4() {
        for c in ["add", "PUT", "", " ADD"] {
            let e = env_of(&with(ADD, "CNI_COMMAND", Some(c))).unwrap_err();
            assert_eq!(e.code, 4);
            assert!(e.msg.contains("CNI_COMMAND"), "{e}");
        }
    }

    #[test]
    fn container_id() {
        for ok in ["a", "0", "abc-DEF_1.2", "f".repeat(64).leak()] {
            assert!(check_container_id(ok).is_ok(), "{ok}");
        }
        for bad in ["-a", "_a", ".a", "a/b", "a b", "a:b", "ä", "a\n"] {
            assert!(check_container_id(bad).is_err(), "{bad}");
        }
        let e = env_of(&with(ADD, "CNI_CONTAINERID", None)).unwrap_err();
        assert_eq!((e.code, e.msg.as_str()), (4, "invalid environment variable(s): CNI_CONTAINERID"));
        assert!(e.details.contains("CNI_CONTAINERID is required"), "{e}");
        let e = env_of(&with(ADD, "CNI_CONTAINERID", Some("../etc"))).unwrap_err();
        assert_eq!(e.code, 4);
        assert!(e.details.contains("\"../etc\" is not a valid container ID"), "{e}");
    }

    #[test]
    fn ifname() {
        for ok in ["eth0", "e", "net1", "a234567890abcde", "vlan.10", "p@x"] {
            assert!(check_ifname(ok).is_ok(), "{ok}");
        }
        for bad in ["a234567890abcdef", ".", "..", "a/b", "a b", "a\tb", "a:1"] {
            assert!(check_ifname(bad).is_err(), "{bad}");
        }
        let e = env_of(&with(ADD, "CNI_IFNAME", Some("averyverylongname"))).unwrap_err();
        assert_eq!(e.code, 4);
        assert!(e.msg.contains("CNI_IFNAME") && e.details.contains("longer than 15"), "{e}");
        let e = env_of(&with(ADD, "CNI_IFNAME", None)).unwrap_err();
        assert!(e.msg.contains("CNI_IFNAME"), "{e}");
    }

    #[test]
    fn netns_is_required_for_add_and_check_not_del() {
        for c in ["ADD", "CHECK"] {
            let e = env_of(&with(&with(ADD, "CNI_COMMAND", Some(c)), "CNI_NETNS", None)).unwrap_err();
            assert_eq!(e.code, 4);
            assert!(e.msg.contains("CNI_NETNS"), "{e}");
            let e = env_of(&with(&with(ADD, "CNI_COMMAND", Some(c)), "CNI_NETNS", Some(""))).unwrap_err();
            assert!(e.msg.contains("CNI_NETNS"), "{e}");
        }
        let e = env_of(&with(&with(ADD, "CNI_COMMAND", Some("DEL")), "CNI_NETNS", Some(""))).unwrap();
        assert_eq!(e.netns, None);
        assert!(e.attachment.is_some());
    }

    #[test]
    fn gc_status_version_need_nothing_but_the_command() {
        for c in ["GC", "STATUS", "VERSION"] {
            let e = env_of(&[("CNI_COMMAND", c)]).unwrap();
            assert_eq!(e.attachment, None);
        }
    }

    #[test]
    fn all_problems_named_at_once() {
        let e = env_of(&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "a/b")]).unwrap_err();
        assert_eq!(e.msg, "invalid environment variable(s): CNI_CONTAINERID, CNI_IFNAME, CNI_NETNS");
    }

    #[test]
    fn cni_args() {
        assert_eq!(parse_cni_args("").unwrap(), CniArgs::default());
        let a = parse_cni_args("K8S_POD_NAME=p;K8S_POD_NAMESPACE=ns;K8S_POD_UID=u-1").unwrap();
        assert_eq!(
            a,
            CniArgs {
                pod_name: Some("p".into()),
                pod_namespace: Some("ns".into()),
                pod_uid: Some("u-1".into()),
                infra_container_id: None,
                ignore_unknown: false
            }
        );
        // Trailing separator, value with '=' in it.
        let a = parse_cni_args("IgnoreUnknown=true;FOO=a=b;K8S_POD_NAME=p;").unwrap();
        assert_eq!(a.pod_name.as_deref(), Some("p"));
        // Unknown keys need IgnoreUnknown, wherever it is.
        let e = parse_cni_args("FOO=1;K8S_POD_NAME=p").unwrap_err();
        assert!(e.contains("FOO") && e.contains("IgnoreUnknown=1"), "{e}");
        assert!(parse_cni_args("FOO=1;IgnoreUnknown=1").is_ok());
        assert!(parse_cni_args("FOO=1;IgnoreUnknown=0").is_err());
        assert!(parse_cni_args("IgnoreUnknown=maybe").unwrap_err().contains("IgnoreUnknown"));
        assert!(parse_cni_args("K8S_POD_NAME").unwrap_err().contains("not KEY=VALUE"));
        assert!(parse_cni_args("=x").unwrap_err().contains("key is empty"));
        // Through the environment: code 4 naming CNI_ARGS.
        let e = env_of(&with(ADD, "CNI_ARGS", Some("K8S_POD_NAME"))).unwrap_err();
        assert_eq!((e.code, e.msg.as_str()), (4, "invalid environment variable(s): CNI_ARGS"));
    }
}
