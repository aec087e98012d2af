//! The Sluice CNI plugin: a thin client of the agent.
//!
//! A container runtime runs `sluice-cni` with the CNI parameters in its
//! environment and the network configuration on stdin. The plugin validates
//! both, sends one request to the agent over its unix socket, and turns the
//! reply into a CNI result or error on stdout. The agent does the work:
//! address allocation (from its `--pod-cidr`), the veth pair, the pod's
//! addresses and routes, the datapath, the endpoint record.
#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod env;
pub mod error;
pub mod result;
pub mod version;

use serde_json::Value;
use sluice_api::{CniAdd, CniCheck, CniDel, CniGc, Request, Response};

use crate::client::{Agent, CallError};
use crate::config::NetConf;
use crate::env::{Command, Env};
use crate::error::{code, CniError, INTERNAL};
use crate::version::{Version, LATEST};

/// The sample configuration, as shipped in the repository.
pub const SAMPLE_CONFIG: &str = "docs/cni/10-sluice.conflist";

pub fn usage() -> String {
    format!(
        "\
sluice-cni {pkg}: the Sluice CNI plugin (CNI specification {versions})

A container runtime runs this program, not people. The runtime sets CNI_COMMAND
(ADD, DEL, CHECK, GC, STATUS or VERSION), CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME,
CNI_ARGS and CNI_PATH, writes the network configuration as JSON on stdin, and
reads the result (or an error: cniVersion, code, msg, details) on stdout.

The plugin is a thin client of the Sluice agent: it checks its input and asks
the agent, over the agent's unix socket, to do the work. The agent allocates
the pod's addresses from its --pod-cidr, creates the veth pair, configures the
pod's namespace and attaches the datapath. Run the agent first:

    sluice agent --pod-cidr 10.244.1.0/24 [--pod-cidr fd00:10:244:1::/112]

Install: copy this binary into the runtime's CNI directory (usually
/opt/cni/bin) and a network configuration into /etc/cni/net.d/; a sample
is in the Sluice repository at {sample}. Configuration fields:

    cniVersion       one of {versions}
    name             the network's name
    type             \"sluice-cni\"
    agentSocket      the agent's API socket (default {socket})
    mtu              MTU of the pod's device (default: the agent's)
    timeoutSeconds   how long to wait for the agent (default {timeout} s)
    dns              copied into ADD's result
    (no \"ipam\": addresses come from the agent's --pod-cidr)

Try it by hand:

    echo '{{\"cniVersion\":\"1.1.0\"}}' | CNI_COMMAND=VERSION sluice-cni
    echo '{{\"cniVersion\":\"1.1.0\",\"name\":\"sluice\",\"type\":\"sluice-cni\"}}' | CNI_COMMAND=STATUS sluice-cni

More: docs/cni.md in the Sluice repository.
",
        pkg = env!("CARGO_PKG_VERSION"),
        versions = version::SUPPORTED.join(", "),
        sample = SAMPLE_CONFIG,
        socket = sluice_api::DEFAULT_SOCKET,
        timeout = config::DEFAULT_TIMEOUT.as_secs(),
    )
}

/// A failed invocation: the error and the `cniVersion` to report it in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub error: CniError,
    pub version: String,
}

impl Failure {
    pub fn to_json(&self) -> Value {
        self.error.to_json(&self.version)
    }
}

/// One invocation: `get` reads the environment, `stdin` is what the runtime
/// wrote. `Ok(Some(json))` is printed, `Ok(None)` is success with no output.
pub fn run(get: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Option<Value>, Failure> {
    let report_version = config::peek_version(stdin).map(Version::as_str).unwrap_or(LATEST);
    let fail = |error: CniError| Failure { error, version: report_version.to_string() };

    let env = env::parse(get).map_err(fail)?;
    if env.command == Command::Version {
        return version(stdin).map(Some).map_err(fail);
    }
    let conf = config::parse(stdin).map_err(fail)?;
    dispatch(&env, &conf).map_err(|error| Failure { error, version: conf.version.as_str().to_string() })
}

fn version(stdin: &[u8]) -> Result<Value, CniError> {
    if stdin.iter().all(u8::is_ascii_whitespace) {
        return Ok(result::version_result(None));
    }
    let m = config::decode(stdin)?;
    Ok(result::version_result(m.get("cniVersion").and_then(Value::as_str)))
}

/// The first version that has a command.
fn since(command: Command) -> Version {
    match command {
        Command::Check => Version::V0_4_0,
        Command::Gc | Command::Status => Version::V1_1_0,
        _ => Version::V0_3_1,
    }
}

fn dispatch(env: &Env, conf: &NetConf) -> Result<Option<Value>, CniError> {
    let first = since(env.command);
    if conf.version < first {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("{} is not part of cniVersion {}", env.command.as_str(), conf.version),
            format!(
                "{} came with CNI {first}; the network configuration says cniVersion {}: \
                 raise it to {first} or later",
                env.command.as_str(),
                conf.version
            ),
        ));
    }
    let agent = Agent::new(&conf.agent_socket, conf.timeout);
    let attachment = || env.attachment.clone().expect("env::parse requires it for ADD, DEL, CHECK");
    let netns = || env.netns.clone().unwrap_or_default();
    match env.command {
        Command::Version => unreachable!("handled before the configuration is parsed"),
        Command::Add => {
            netns_exists(&netns())?;
            let req = Request::CniAdd(CniAdd {
                attachment: attachment(),
                netns: netns(),
                network: conf.name.clone(),
                pod_name: env.args.pod_name.clone(),
                pod_namespace: env.args.pod_namespace.clone(),
                mtu: conf.mtu,
            });
            match ask(&agent, &req, env.command)? {
                Response::CniAdded(r) => {
                    result::add_result(conf.version, &r, conf.dns.as_ref(), conf.prev_result.as_ref()).map(Some)
                }
                other => Err(unexpected(&other)),
            }
        }
        Command::Del => {
            let req = Request::CniDel(CniDel { attachment: attachment(), netns: netns(), network: conf.name.clone() });
            done(ask(&agent, &req, env.command)?)
        }
        Command::Check => {
            netns_exists(&netns())?;
            if conf.prev_result.is_none() {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    "CHECK needs \"prevResult\"",
                    "the runtime must pass the result of the attachment's ADD as prevResult",
                ));
            }
            check_prev_result(conf.prev_result.as_ref().expect("checked above"), &attachment().ifname, &netns())?;
            let req = Request::CniCheck(CniCheck {
                attachment: attachment(),
                netns: netns(),
                network: conf.name.clone(),
                prev_result: conf.prev_result.clone(),
            });
            done(ask(&agent, &req, env.command)?)
        }
        Command::Gc => {
            // Without the list, GC would release every attachment of the network.
            let valid = conf.valid_attachments.clone().ok_or_else(|| {
                CniError::new(
                    code::INVALID_CONFIG,
                    "GC needs \"cni.dev/valid-attachments\"",
                    "the runtime must list the attachments still in use (an empty list releases everything)",
                )
            })?;
            done(ask(&agent, &Request::CniGc(CniGc { network: conf.name.clone(), valid }), env.command)?)
        }
        Command::Status => done(ask(&agent, &Request::CniStatus, env.command)?).map_err(|mut e| {
            if e.code == INTERNAL {
                e.code = code::PLUGIN_NOT_AVAILABLE;
            }
            e
        }),
    }
}

/// CHECK consults `prevResult` for the expected interface: it must list
/// CNI_IFNAME in CNI_NETNS, as ADD returned it. (The agent compares the
/// device, addresses and routes with what it set up.)
fn check_prev_result(prev: &Value, ifname: &str, netns: &str) -> Result<(), CniError> {
    let listed = prev
        .get("interfaces")
        .and_then(Value::as_array)
        .is_some_and(|ifs| ifs.iter().any(|i| i["name"] == ifname && i["sandbox"] == netns));
    if listed {
        return Ok(());
    }
    Err(CniError::new(
        code::CHECK_FAILED,
        format!("prevResult has no interface {ifname} in {netns}"),
        "CHECK must be given the result of this attachment's ADD (same CNI_CONTAINERID, CNI_IFNAME, CNI_NETNS)",
    ))
}

/// ADD and CHECK need the pod's namespace: if it is gone, the container is (3).
fn netns_exists(path: &str) -> Result<(), CniError> {
    match std::path::Path::new(path).try_exists() {
        Ok(false) => Err(CniError::new(
            code::CONTAINER_UNKNOWN,
            format!("CNI_NETNS {path} does not exist"),
            "the container's network namespace is gone (or CNI_NETNS names the wrong path)",
        )),
        _ => Ok(()),
    }
}

/// Send the request; the agent's own CNI errors pass through unchanged.
/// For STATUS every other failure means "cannot service ADD": code 50.
fn ask(agent: &Agent, req: &Request, command: Command) -> Result<Response, CniError> {
    let status = command == Command::Status;
    let internal = |msg: &str, details: String| {
        CniError::new(if status { code::PLUGIN_NOT_AVAILABLE } else { INTERNAL }, msg, details)
    };
    match agent.call(req) {
        Ok(Response::CniError { code, msg, details }) => Err(CniError { code, msg, details }),
        Ok(Response::Error { message, .. }) => Err(internal("the Sluice agent refused the request", message)),
        Ok(r) => Ok(r),
        Err(e @ CallError::Decode(_)) => Err(internal("unexpected reply from the Sluice agent", e.to_string())),
        Err(e) => {
            let (c, msg) = if status {
                (code::PLUGIN_NOT_AVAILABLE, "the Sluice agent is not available")
            } else {
                (code::TRY_AGAIN_LATER, "the Sluice agent is not available; try again later")
            };
            Err(CniError::new(c, msg, e.to_string()))
        }
    }
}

fn done(r: Response) -> Result<Option<Value>, CniError> {
    match r {
        Response::CniDone { .. } => Ok(None),
        other => Err(unexpected(&other)),
    }
}

fn unexpected(r: &Response) -> CniError {
    let s = serde_json::to_string(r).unwrap_or_default();
    let s: String = s.chars().take(200).collect();
    CniError::new(INTERNAL, "unexpected reply from the Sluice agent", s)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;

    fn run_with(env: &[(&str, &str)], stdin: &str) -> Result<Option<Value>, Failure> {
        let m: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        run(&move |k: &str| m.get(k).cloned(), stdin.as_bytes())
    }

    fn conf(version: &str) -> String {
        json!({"cniVersion": version, "name": "sluice", "type": "sluice-cni",
               "agentSocket": "/nonexistent/sluice-cni-test/agent.sock", "timeoutSeconds": 1})
        .to_string()
    }

    #[test]
    fn version_echoes_input() {
        let v = run_with(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.3.1"}"#).unwrap().unwrap();
        assert_eq!(v["cniVersion"], "0.3.1");
        let v = run_with(&[("CNI_COMMAND", "VERSION")], "").unwrap().unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        let f = run_with(&[("CNI_COMMAND", "VERSION")], "{").unwrap_err();
        assert_eq!(f.error.code, 6);
    }

    #[test]
    fn commands_newer_than_the_configuration_are_code_1() {
        for (cmd, version) in [("GC", "1.0.0"), ("STATUS", "1.0.0"), ("STATUS", "0.4.0"), ("CHECK", "0.3.1")] {
            let env = [
                ("CNI_COMMAND", cmd),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", "/proc/self/ns/net"),
            ];
            let f = run_with(&env, &conf(version)).unwrap_err();
            assert_eq!(f.error.code, 1, "{cmd} {version}: {:?}", f.error);
            assert!(f.error.msg.contains(cmd) && f.error.msg.contains(version), "{:?}", f.error);
            assert_eq!(f.version, version, "reported in the configuration's version");
        }
    }

    #[test]
    fn errors_are_reported_in_the_configurations_version() {
        let f = run_with(&[("CNI_COMMAND", "ADD")], &conf("0.4.0")).unwrap_err();
        assert_eq!((f.error.code, f.version.as_str()), (4, "0.4.0"));
        let f = run_with(&[("CNI_COMMAND", "ADD")], &conf("0.2.0")).unwrap_err();
        assert_eq!((f.error.code, f.version.as_str()), (4, "1.1.0"));
        assert_eq!(f.to_json()["cniVersion"], "1.1.0");
    }

    #[test]
    fn no_agent() {
        let f = run_with(&[("CNI_COMMAND", "STATUS")], &conf("1.1.0")).unwrap_err();
        assert_eq!(f.error.code, 50);
        let env = [("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")];
        let f = run_with(&env, &conf("1.1.0")).unwrap_err();
        assert_eq!(f.error.code, 11);
        assert!(f.error.details.contains("/nonexistent/sluice-cni-test/agent.sock"), "{:?}", f.error);
    }

    #[test]
    fn check_without_prev_result_and_gc_without_list_are_code_7() {
        let env = [("CNI_COMMAND", "CHECK"), ("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", "/proc/self/ns/net")];
        let f = run_with(&env, &conf("1.1.0")).unwrap_err();
        assert_eq!(f.error.code, 7);
        assert!(f.error.msg.contains("prevResult"));
        let f = run_with(&[("CNI_COMMAND", "GC")], &conf("1.1.0")).unwrap_err();
        assert_eq!(f.error.code, 7);
        assert!(f.error.msg.contains("cni.dev/valid-attachments"));
    }

    #[test]
    fn check_needs_the_interface_in_prev_result() {
        let prev = json!({"interfaces": [{"name": "sl1", "mac": "x"}, {"name": "eth0", "sandbox": "/run/netns/a"}]});
        assert!(check_prev_result(&prev, "eth0", "/run/netns/a").is_ok());
        for (ifname, netns) in [("eth1", "/run/netns/a"), ("eth0", "/run/netns/b"), ("sl1", "")] {
            let e = check_prev_result(&prev, ifname, netns).unwrap_err();
            assert_eq!(e.code, 101, "{ifname} {netns}");
            assert!(e.msg.contains(ifname), "{e}");
        }
        assert_eq!(check_prev_result(&json!({}), "eth0", "/x").unwrap_err().code, 101);
    }

    #[test]
    fn missing_netns_is_code_3() {
        let env = [("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", "/run/netns/sl-does-not-exist")];
        let f = run_with(&env, &conf("1.1.0")).unwrap_err();
        assert_eq!(f.error.code, 3);
        assert!(f.error.msg.contains("/run/netns/sl-does-not-exist"));
    }
}
