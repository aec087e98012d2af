//! The built `sluice-cni`, run exactly as a container runtime runs it: a
//! clean environment with the CNI variables, the configuration on stdin, the
//! result or error read from stdout and the exit status. No privileges: the
//! agent is absent, or a fake one on a socket in a temporary directory.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }

    /// A CNI error result with `code`: non-zero exit, the four fields.
    fn cni_error(&self, code: u64) -> Value {
        assert_ne!(self.code, Some(0), "expected failure; stdout {}", self.stdout);
        let v = self.json();
        assert_eq!(v["code"], code, "{v:#}\nstderr: {}", self.stderr);
        for k in ["cniVersion", "msg", "details"] {
            assert!(v[k].is_string(), "error result lacks {k}: {v:#}");
        }
        v
    }

    fn ok_silent(&self) {
        assert_eq!(self.code, Some(0), "stdout {} stderr {}", self.stdout, self.stderr);
        assert_eq!(self.stdout, "", "expected no output");
    }
}

fn plugin(env: &[(&str, &str)], stdin: &str, args: &[&str]) -> Out {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sluice-cni"));
    c.env_clear().args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().expect("spawn sluice-cni");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    Out {
        code: o.status.code(),
        stdout: String::from_utf8(o.stdout).unwrap(),
        stderr: String::from_utf8(o.stderr).unwrap(),
    }
}

/// A directory of our own; removed on drop.
struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Tmp {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "sluice-cni-test-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }

    fn sock(&self) -> PathBuf {
        self.0.join("agent.sock")
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn conf(version: &str, socket: &Path) -> Value {
    json!({
        "cniVersion": version,
        "name": "sluice",
        "type": "sluice-cni",
        "agentSocket": socket,
        "timeoutSeconds": 2,
    })
}

/// An existing path to stand for the pod's namespace.
const NETNS: &str = "/proc/self/ns/net";

fn env_for(cmd: &'static str) -> Vars {
    vec![
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", "3f2a91c03b7e"),
        ("CNI_NETNS", NETNS),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=3f2a91c03b7e"),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
}

type Vars = Vec<(&'static str, &'static str)>;

fn set(mut env: Vars, k: &'static str, v: Option<&'static str>) -> Vars {
    env.retain(|(kk, _)| *kk != k);
    if let Some(v) = v {
        env.push((k, v));
    }
    env
}

#[test]
fn help_and_version_for_people() {
    for a in ["--help", "-h"] {
        let o = plugin(&[], "", &[a]);
        assert_eq!(o.code, Some(0));
        for needle in ["CNI_COMMAND", "docs/cni/10-sluice.conflist", "--pod-cidr", "agentSocket", "/opt/cni/bin"] {
            assert!(o.stdout.contains(needle), "--help lacks {needle}:\n{}", o.stdout);
        }
    }
    let o = plugin(&[], "", &["--version"]);
    assert_eq!(o.code, Some(0));
    assert!(o.stdout.starts_with("sluice-cni ") && o.stdout.contains("1.1.0"), "{}", o.stdout);
    // No command and no flag: the text on stderr, an error result on stdout.
    let o = plugin(&[], "", &[]);
    let v = o.cni_error(4);
    assert!(v["msg"].as_str().unwrap().contains("CNI_COMMAND"));
    assert!(o.stderr.contains("docs/cni/10-sluice.conflist"));
}

#[test]
fn version() {
    for v in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let o = plugin(&[("CNI_COMMAND", "VERSION")], &json!({"cniVersion": v}).to_string(), &[]);
        assert_eq!(o.code, Some(0), "{}", o.stderr);
        assert_eq!(o.json(), json!({"cniVersion": v, "supportedVersions": ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]}));
    }
    // Runtimes ask with any configuration; the other env vars are not needed.
    let o = plugin(&[("CNI_COMMAND", "VERSION")], "", &[]);
    assert_eq!(o.json()["cniVersion"], "1.1.0");
    plugin(&[("CNI_COMMAND", "VERSION")], "{not json", &[]).cni_error(6);
}

#[test]
fn config_errors() {
    let t = Tmp::new("cfg");
    let base = conf("1.1.0", &t.sock());
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b.to_string()
    };
    let without = |k: &str| {
        let mut b = base.clone();
        b.as_object_mut().unwrap().remove(k);
        b.to_string()
    };
    let env = env_for("ADD");
    // (stdin, code, a word the message must have)
    let cases: Vec<(String, u64, &str)> = vec![
        ("{\"cniVersion\": \"1.1.0\",".into(), 6, "JSON"),
        ("".into(), 6, "JSON"),
        ("[1]".into(), 6, "object"),
        (with("cniVersion", json!("0.2.0")), 1, "0.2.0"),
        (with("cniVersion", json!("2.0.0")), 1, "2.0.0"),
        (without("cniVersion"), 7, "cniVersion"),
        (without("name"), 7, "name"),
        (with("name", json!("bad name")), 7, "name"),
        (without("type"), 7, "type"),
        (with("mtu", json!(20)), 7, "mtu"),
        (with("mtu", json!("1500")), 7, "mtu"),
        (with("timeoutSeconds", json!(-3)), 7, "timeoutSeconds"),
        (with("agentSocket", json!("relative.sock")), 7, "agentSocket"),
        (with("ipam", json!({"type": "host-local", "subnet": "10.1.0.0/16"})), 7, "ipam"),
        (with("dns", json!({"nameservers": ["not-an-ip"]})), 7, "dns"),
        (with("prevResult", json!("x")), 7, "prevResult"),
    ];
    for (stdin, code, word) in cases {
        let o = plugin(&env, &stdin, &[]);
        let v = o.cni_error(code);
        let text = format!("{} {}", v["msg"], v["details"]);
        assert!(text.contains(word), "{stdin}: {text}");
        assert!(o.stderr.starts_with("sluice-cni: "), "a line for people on stderr: {:?}", o.stderr);
    }
    // The ipam error says where addresses come from.
    let v = plugin(&env, &with("ipam", json!({"type": "host-local"})), &[]).cni_error(7);
    assert!(v["details"].as_str().unwrap().contains("--pod-cidr"), "{v}");
    // Unknown fields and runtimeConfig are accepted: with no agent, ADD gets as far as connecting.
    let extra = with("runtimeConfig", json!({"portMappings": [{"hostPort": 80}]}));
    let mut extra: Value = serde_json::from_str(&extra).unwrap();
    extra["someOtherPluginsField"] = json!({"x": [1, 2]});
    plugin(&env, &extra.to_string(), &[]).cni_error(11);
}

#[test]
fn env_errors() {
    let t = Tmp::new("env");
    let stdin = conf("1.1.0", &t.sock()).to_string();
    // (env, code, the variable the message must name)
    let cases: Vec<(Vars, u64, &str)> = vec![
        (set(env_for("ADD"), "CNI_COMMAND", Some("FROB")), 4, "CNI_COMMAND"),
        (set(env_for("ADD"), "CNI_COMMAND", Some("add")), 4, "CNI_COMMAND"),
        (set(env_for("ADD"), "CNI_CONTAINERID", None), 4, "CNI_CONTAINERID"),
        (set(env_for("ADD"), "CNI_CONTAINERID", Some("-leading-dash")), 4, "CNI_CONTAINERID"),
        (set(env_for("DEL"), "CNI_CONTAINERID", Some("has space")), 4, "CNI_CONTAINERID"),
        (set(env_for("ADD"), "CNI_IFNAME", None), 4, "CNI_IFNAME"),
        (set(env_for("ADD"), "CNI_IFNAME", Some("a-very-long-name")), 4, "CNI_IFNAME"),
        (set(env_for("CHECK"), "CNI_IFNAME", Some("eth/0")), 4, "CNI_IFNAME"),
        (set(env_for("ADD"), "CNI_IFNAME", Some("eth 0")), 4, "CNI_IFNAME"),
        (set(env_for("ADD"), "CNI_NETNS", None), 4, "CNI_NETNS"),
        (set(env_for("CHECK"), "CNI_NETNS", None), 4, "CNI_NETNS"),
        (set(env_for("ADD"), "CNI_ARGS", Some("K8S_POD_NAME=a;FOO=1")), 4, "CNI_ARGS"),
        (set(env_for("ADD"), "CNI_ARGS", Some("garbage")), 4, "CNI_ARGS"),
        (set(env_for("ADD"), "CNI_NETNS", Some("/run/netns/sl-cni-test-no-such-ns")), 3, "CNI_NETNS"),
        (set(env_for("CHECK"), "CNI_NETNS", Some("/run/netns/sl-cni-test-no-such-ns")), 3, "CNI_NETNS"),
    ];
    for (env, code, var) in cases {
        let v = plugin(&env, &stdin, &[]).cni_error(code);
        assert!(v["msg"].as_str().unwrap().contains(var), "{env:?}: {v}");
        assert_eq!(v["cniVersion"], "1.1.0");
    }
    // Several at once: all named.
    let v = plugin(&[("CNI_COMMAND", "ADD")], &stdin, &[]).cni_error(4);
    assert_eq!(v["msg"], "invalid environment variable(s): CNI_CONTAINERID, CNI_IFNAME, CNI_NETNS");
}

#[test]
fn commands_and_versions() {
    let t = Tmp::new("ver");
    for (cmd, version) in [("GC", "1.0.0"), ("GC", "0.3.1"), ("STATUS", "1.0.0"), ("STATUS", "0.4.0"), ("CHECK", "0.3.1")] {
        let mut c = conf(version, &t.sock());
        c["prevResult"] = json!({"cniVersion": version, "interfaces": []});
        c["cni.dev/valid-attachments"] = json!([]);
        let v = plugin(&env_for(cmd), &c.to_string(), &[]).cni_error(1);
        assert_eq!(v["cniVersion"], version, "reported in the configuration's own version");
        assert!(v["msg"].as_str().unwrap().contains(cmd), "{v}");
    }
    // CHECK without prevResult, GC without the list: 7.
    let v = plugin(&env_for("CHECK"), &conf("1.1.0", &t.sock()).to_string(), &[]).cni_error(7);
    assert!(v["msg"].as_str().unwrap().contains("prevResult"));
    let v = plugin(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")], &conf("1.1.0", &t.sock()).to_string(), &[]).cni_error(7);
    assert!(v["msg"].as_str().unwrap().contains("cni.dev/valid-attachments"));
}

#[test]
fn no_agent_status_is_50_and_the_rest_11() {
    let t = Tmp::new("noagent");
    let stdin = conf("1.1.0", &t.sock()).to_string();
    let v = plugin(&[("CNI_COMMAND", "STATUS")], &stdin, &[]).cni_error(50);
    assert!(v["details"].as_str().unwrap().contains(t.sock().to_str().unwrap()), "names the socket: {v}");
    plugin(&env_for("ADD"), &stdin, &[]).cni_error(11);
    plugin(&env_for("DEL"), &stdin, &[]).cni_error(11);
    // DEL after the runtime removed the namespace: no CNI_NETNS is fine (the agent is still needed).
    plugin(&set(env_for("DEL"), "CNI_NETNS", None), &stdin, &[]).cni_error(11);
    let mut c = conf("1.1.0", &t.sock());
    c["prevResult"] = json!({"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": NETNS}], "ips": []});
    plugin(&env_for("CHECK"), &c.to_string(), &[]).cni_error(11);
    // A prevResult of another attachment: refused before asking the agent.
    c["prevResult"] = json!({"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": "/run/netns/other"}]});
    let v = plugin(&env_for("CHECK"), &c.to_string(), &[]).cni_error(101);
    assert!(v["msg"].as_str().unwrap().contains("prevResult"), "{v}");
    let mut c = conf("1.1.0", &t.sock());
    c["cni.dev/valid-attachments"] = json!([{"containerID": "a", "ifname": "eth0"}]);
    plugin(&[("CNI_COMMAND", "GC")], &c.to_string(), &[]).cni_error(11);
    // A socket file nobody listens on: the same.
    let l = UnixListener::bind(t.sock()).unwrap();
    drop(l);
    plugin(&[("CNI_COMMAND", "STATUS")], &stdin, &[]).cni_error(50);
}

/// A fake agent: answers each connection with the next reply, after a
/// delay; returns the requests it got. `None` closes without replying.
fn fake_agent(path: &Path, replies: Vec<(Option<Value>, Duration)>) -> std::thread::JoinHandle<Vec<Value>> {
    let l = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let mut got = Vec::new();
        for (reply, delay) in replies {
            let (mut c, _) = l.accept().unwrap();
            let mut req = Vec::new();
            c.read_to_end(&mut req).unwrap();
            got.push(serde_json::from_slice(&req).unwrap());
            std::thread::sleep(delay);
            if let Some(r) = reply {
                let _ = c.write_all(r.to_string().as_bytes());
            }
        }
        got
    })
}

fn added() -> Value {
    json!({"result": "cni-added",
        "host_ifname": "sl3f2a91c03b", "host_mac": "ee:ee:ee:00:00:01",
        "pod_ifname": "eth0", "pod_mac": "02:00:00:00:00:02", "sandbox": NETNS, "mtu": 1400,
        "ips": [{"address": "198.18.64.5/32", "gateway": "198.18.64.1"}, {"address": "fd00:5c:64::5/128", "gateway": "fe80::1"}],
        "routes": [{"dst": "198.18.64.1/32", "gw": null, "scope": 253}, {"dst": "0.0.0.0/0", "gw": "198.18.64.1", "scope": null},
                   {"dst": "::/0", "gw": "fe80::1", "scope": null}]})
}

#[test]
fn fake_agent_add_sends_the_request_and_formats_each_version() {
    let t = Tmp::new("add");
    let versions = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"];
    let agent = fake_agent(&t.sock(), versions.iter().map(|_| (Some(added()), Duration::ZERO)).collect());
    for version in versions {
        let mut c = conf(version, &t.sock());
        c["mtu"] = json!(1400);
        c["dns"] = json!({"nameservers": ["198.19.0.10"], "search": ["shop.svc.cluster.local"]});
        let o = plugin(&env_for("ADD"), &c.to_string(), &[]);
        assert_eq!(o.code, Some(0), "{} {}", o.stdout, o.stderr);
        let v = o.json();
        assert_eq!(v["cniVersion"], version);
        assert_eq!(v["interfaces"][0], json!({"name": "sl3f2a91c03b", "mac": "ee:ee:ee:00:00:01"}));
        assert_eq!(v["interfaces"][1]["name"], "eth0");
        assert_eq!(v["interfaces"][1]["sandbox"], NETNS);
        assert_eq!(v["interfaces"][1].get("mtu").is_some(), version == "1.1.0");
        assert_eq!(v["ips"][0]["interface"], 1);
        assert_eq!(v["ips"][0]["address"], "198.18.64.5/32");
        assert_eq!(v["ips"][0].get("version").is_some(), version < "1.0.0");
        assert_eq!(v["routes"][0].get("scope").is_some(), version == "1.1.0");
        assert_eq!(v["dns"]["nameservers"], json!(["198.19.0.10"]));
    }
    let reqs = agent.join().unwrap();
    assert_eq!(
        reqs[0],
        json!({"op": "cni-add", "attachment": {"container_id": "3f2a91c03b7e", "ifname": "eth0"},
               "netns": NETNS, "network": "sluice", "pod_name": "web-0", "pod_namespace": "shop", "mtu": 1400})
    );
}

#[test]
fn fake_agent_del_check_gc_status() {
    let t = Tmp::new("others");
    let done = || (Some(json!({"result": "cni-done", "message": "ok"})), Duration::ZERO);
    let agent = fake_agent(&t.sock(), vec![done(), done(), done(), done(), done()]);
    let stdin = conf("1.1.0", &t.sock());
    plugin(&set(env_for("DEL"), "CNI_NETNS", Some("")), &stdin.to_string(), &[]).ok_silent();
    let prev = json!({"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": NETNS}], "ips": [], "routes": []});
    let mut c = stdin.clone();
    c["prevResult"] = prev.clone();
    plugin(&env_for("CHECK"), &c.to_string(), &[]).ok_silent();
    let mut c = stdin.clone();
    c["cni.dev/valid-attachments"] = json!([{"containerID": "a1", "ifname": "eth0"}, {"containerID": "b2", "ifname": "net1"}]);
    plugin(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")], &c.to_string(), &[]).ok_silent();
    plugin(&[("CNI_COMMAND", "STATUS")], &stdin.to_string(), &[]).ok_silent();
    // DEL without CNI_NETNS at all.
    plugin(&set(env_for("DEL"), "CNI_NETNS", None), &stdin.to_string(), &[]).ok_silent();
    let reqs = agent.join().unwrap();
    assert_eq!(
        reqs[0],
        json!({"op": "cni-del", "attachment": {"container_id": "3f2a91c03b7e", "ifname": "eth0"}, "netns": "", "network": "sluice"})
    );
    assert_eq!(
        reqs[1],
        json!({"op": "cni-check", "attachment": {"container_id": "3f2a91c03b7e", "ifname": "eth0"}, "netns": NETNS,
               "network": "sluice", "prev_result": prev})
    );
    assert_eq!(
        reqs[2],
        json!({"op": "cni-gc", "network": "sluice",
               "valid": [{"container_id": "a1", "ifname": "eth0"}, {"container_id": "b2", "ifname": "net1"}]})
    );
    assert_eq!(reqs[3], json!({"op": "cni-status"}));
    assert_eq!(reqs[4]["netns"], "");
}

#[test]
fn fake_agent_errors() {
    let t = Tmp::new("errs");
    let agent = fake_agent(
        &t.sock(),
        vec![
            (Some(json!({"result": "cni-error", "code": 100, "msg": "pod address pool exhausted", "details": "198.18.64.0/30: 2 of 2 in use"})), Duration::ZERO),
            (Some(json!({"result": "cni-error", "code": 50, "msg": "datapath not attached", "details": ""})), Duration::ZERO),
            (Some(json!({"result": "cni-error", "code": 101, "msg": "eth0: address 198.18.64.5/32 missing", "details": ""})), Duration::ZERO),
            // Crash mid-request: the connection closes with no reply.
            (None, Duration::ZERO),
            // Too slow for timeoutSeconds (1).
            (Some(json!({"result": "cni-done", "message": "late"})), Duration::from_millis(2500)),
            (Some(json!({"result": "error", "message": "unknown op", "invalid": []})), Duration::ZERO),
            (Some(json!({"result": "cni-done", "message": "not what ADD returns"})), Duration::ZERO),
        ],
    );
    let stdin = conf("1.0.0", &t.sock()).to_string();
    let v = plugin(&env_for("ADD"), &stdin, &[]).cni_error(100);
    assert_eq!(v, json!({"cniVersion": "1.0.0", "code": 100, "msg": "pod address pool exhausted", "details": "198.18.64.0/30: 2 of 2 in use"}));
    let status = conf("1.1.0", &t.sock()).to_string();
    plugin(&[("CNI_COMMAND", "STATUS")], &status, &[]).cni_error(50);
    let mut c = conf("1.0.0", &t.sock());
    c["prevResult"] = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": NETNS}]});
    plugin(&env_for("CHECK"), &c.to_string(), &[]).cni_error(101);
    let v = plugin(&env_for("ADD"), &stdin, &[]).cni_error(11);
    assert!(v["details"].as_str().unwrap().contains("without answering"), "{v}");
    let mut slow = conf("1.0.0", &t.sock());
    slow["timeoutSeconds"] = json!(1);
    let t0 = std::time::Instant::now();
    let v = plugin(&env_for("DEL"), &slow.to_string(), &[]).cni_error(11);
    assert!(t0.elapsed() < Duration::from_secs(2), "the timeout holds");
    assert!(v["details"].as_str().unwrap().contains("timeoutSeconds"), "{v}");
    plugin(&env_for("DEL"), &stdin, &[]).cni_error(999);
    plugin(&env_for("ADD"), &stdin, &[]).cni_error(999);
    agent.join().unwrap();
    // STATUS: whatever the agent says that is not "ready" is 50.
    let _ = std::fs::remove_file(t.sock());
    let agent = fake_agent(
        &t.sock(),
        vec![
            (Some(json!({"result": "error", "message": "unknown op", "invalid": []})), Duration::ZERO),
            (Some(json!({"result": "objects", "items": []})), Duration::ZERO),
            (Some(json!({"result": "gibberish"})), Duration::ZERO),
        ],
    );
    for _ in 0..3 {
        plugin(&[("CNI_COMMAND", "STATUS")], &status, &[]).cni_error(50);
    }
    agent.join().unwrap();
}
