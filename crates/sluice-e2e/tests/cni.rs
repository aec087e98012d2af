//! Pod networking through the CNI plugin, end to end: the real agent (with
//! `--pod-cidr`) in a throwaway node namespace, `sluice-cni` run in that
//! namespace exactly as a container runtime runs it (a clean environment with
//! the CNI variables, the configuration on stdin), pods in throwaway
//! namespaces of their own (`sl-cni...`). Run as root.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_e2e::*;
use sluice_testbed::netns::Netns;
use sluice_testbed::proc::{run_in, spawn_ready, Spawned};
use sluice_testbed::topo::{NODE_IP4, NODE_IP6};

/// What the plugin did: exit code, stdout, stderr.
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?} stderr {:?}", self.stdout, self.stderr))
    }

    fn ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "plugin failed: {} {}", self.stdout, self.stderr);
        self
    }

    fn ok_silent(&self) {
        self.ok();
        assert_eq!(self.stdout, "", "expected no output");
    }

    /// A CNI error result with this code.
    fn err(&self, code: u64) -> Value {
        assert_ne!(self.code, Some(0), "expected error {code}, got success: {}", self.stdout);
        let v = self.json();
        assert_eq!(v["code"], code, "{v:#}\nstderr: {}", self.stderr);
        v
    }
}

/// The agent, the pods made for it, servers started in them. Drops in
/// field order: servers, pods (their namespaces and so their veths), then
/// the agent with its node namespace, pins and cgroup.
struct Node {
    servers: Vec<Spawned>,
    pods: Vec<Pod>,
    env: Env,
    /// `sluice-cni`, checked fresh once.
    cni: PathBuf,
}

struct Pod {
    ns: Option<Netns>,
    /// CNI_CONTAINERID.
    id: String,
    /// The ADD result.
    result: Value,
}

impl Pod {
    fn ns(&self) -> &Netns {
        self.ns.as_ref().expect("pod namespace")
    }

    fn netns_path(&self) -> String {
        self.ns().path().to_str().unwrap().to_string()
    }

    /// The addresses of the ADD result, without prefix length: (v4, v6).
    fn ips(&self) -> (Option<String>, Option<String>) {
        let mut v4 = None;
        let mut v6 = None;
        for ip in self.result["ips"].as_array().into_iter().flatten() {
            let a = ip["address"].as_str().unwrap().split('/').next().unwrap().to_string();
            if a.contains(':') {
                v6 = Some(a);
            } else {
                v4 = Some(a);
            }
        }
        (v4, v6)
    }

    fn ip4(&self) -> String {
        self.ips().0.expect("an IPv4 address")
    }

    fn ip6(&self) -> String {
        self.ips().1.expect("an IPv6 address")
    }
}

fn unique() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

impl Node {
    /// An agent with `--pod-cidr 198.18.<octet>.0/24` and `fd00:5c:<octet>::/112`.
    fn new(name: &str, octet: u8) -> Node {
        Node::with_cidrs(name, &[&format!("198.18.{octet}.0/24"), &format!("fd00:5c:{octet}::/112")], &[])
    }

    fn with_cidrs(name: &str, cidrs: &[&str], extra: &[&str]) -> Node {
        let mut args = Vec::new();
        for c in cidrs {
            args.extend(["--pod-cidr", c]);
        }
        args.extend_from_slice(extra);
        let cni = bin("sluice-cni");
        let env = Env::with_agent_args(&format!("cni-{name}"), 0, &args).unwrap();
        Node { servers: Vec::new(), pods: Vec::new(), env, cni }
    }

    /// The network configuration a runtime would pass.
    fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "sluice-e2e",
            "type": "sluice-cni",
            "agentSocket": self.env.socket,
            "timeoutSeconds": 30,
        })
    }

    /// Run the plugin in the node's namespace, with only the CNI variables.
    fn plugin(&self, command: &str, vars: &[(&str, &str)], conf: &Value) -> Out {
        let mut cmd =
            sluice_testbed::proc::command(Some(self.env.topo.node()), None, &self.cni, &[]).unwrap();
        cmd.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_PATH", "/opt/cni/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("starting sluice-cni");
        child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
        // The plugin's own timeoutSeconds bounds it; this is a backstop.
        let t0 = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if t0.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let o = child.wait_with_output().unwrap();
        Out {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    fn att_vars<'a>(id: &'a str, netns: &'a str) -> Vec<(&'static str, &'a str)> {
        vec![
            ("CNI_CONTAINERID", id),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", netns),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=e2e;K8S_POD_NAME=pod"),
        ]
    }

    /// A new pod namespace and a container id for it (nothing added yet).
    fn new_pod(&mut self) -> usize {
        let ns = Netns::new("sl-cni-pod").unwrap();
        let id = format!("c{}x{}", std::process::id(), unique());
        self.pods.push(Pod { ns: Some(ns), id, result: Value::Null });
        self.pods.len() - 1
    }

    fn try_add(&self, i: usize, conf: &Value) -> Out {
        let p = &self.pods[i];
        let path = p.netns_path();
        self.plugin("ADD", &Self::att_vars(&p.id, &path), conf)
    }

    /// A pod added with CNI 1.1.0; its result kept.
    fn add_pod(&mut self) -> usize {
        let i = self.new_pod();
        let conf = self.conf("1.1.0");
        let o = self.try_add(i, &conf);
        self.pods[i].result = o.ok().json();
        i
    }

    fn del(&self, id: &str, netns: &str) -> Out {
        self.plugin("DEL", &Self::att_vars(id, netns), &self.conf("1.1.0"))
    }

    fn del_pod(&self, i: usize) -> Out {
        let p = &self.pods[i];
        let path = p.ns.as_ref().map(|n| n.path().to_str().unwrap().to_string()).unwrap_or_default();
        self.del(&p.id, &path)
    }

    fn check(&self, i: usize) -> Out {
        let p = &self.pods[i];
        let mut conf = self.conf("1.1.0");
        conf["prevResult"] = p.result.clone();
        let path = p.netns_path();
        self.plugin("CHECK", &Self::att_vars(&p.id, &path), &conf)
    }

    /// `sluice endpoint list -o json`.
    fn endpoints(&self) -> Vec<Value> {
        let v: Value = serde_json::from_str(&self.env.ok(&["endpoint", "list", "-o", "json"])).unwrap();
        v.as_array().unwrap().clone()
    }

    /// Devices in the node's namespace whose name starts with `sl`.
    fn node_sl_links(&self) -> Vec<String> {
        let v: Value = serde_json::from_str(&self.env.topo.node().ip(&["-j", "link", "show"]).unwrap()).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["ifname"].as_str())
            .filter(|n| n.starts_with("sl"))
            .map(String::from)
            .collect()
    }

    /// Entries of the datapath's endpoint map (bpftool; `sluice bpf` has no
    /// endpoint listing).
    fn endpoint_map(&self) -> Vec<Value> {
        let pin = self.env.pin_dir().join("maps").join("sl_ep_v1");
        let out = std::process::Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned", pin.to_str().unwrap()])
            .output()
            .expect("bpftool");
        assert!(out.status.success(), "bpftool map dump {}: {}", pin.display(), String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array().unwrap().clone()
    }

    /// No endpoint, no `sl…` device, no endpoint map entry.
    fn assert_empty(&self) {
        assert_eq!(self.endpoints(), Vec::<Value>::new(), "endpoints left");
        assert_eq!(self.node_sl_links(), Vec::<String>::new(), "host devices left");
        assert_eq!(self.endpoint_map(), Vec::<Value>::new(), "endpoint map entries left");
    }

    /// `sluice-probe serve` in a namespace, answering with `name`.
    fn serve(&mut self, ns: &Netns, name: &str, addrs: &[String]) {
        let mut a = vec!["serve".to_string(), "--name".into(), name.into()];
        for addr in addrs {
            a.extend(["--tcp".to_string(), addr.clone()]);
        }
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        self.servers.push(spawn_ready(Some(ns), None, &bin("sluice-probe"), &a).unwrap());
    }

    /// `sluice-probe connect` from a namespace, in the test cgroup (socket
    /// hooks) or outside it (the per-packet datapath only).
    fn connect(&self, ns: &Netns, to: &str, count: usize, in_cgroup: bool) -> Value {
        let count = count.to_string();
        let args = ["connect", "--to", to, "--count", &count];
        let cg = if in_cgroup { Some(&self.env.cgroup) } else { None };
        let o = run_in(Some(ns), cg, &bin("sluice-probe"), &args, Duration::from_secs(60)).unwrap();
        assert!(o.status.success(), "probe {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(&self.env.log).unwrap_or_default()
    }
}

fn json_of(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

fn in_cidr4(ip: &str, prefix: &str) -> bool {
    ip.starts_with(prefix)
}

#[test]
fn add_check_del() {
    let mut n = Node::new("add", 64);
    let i = n.add_pod();
    let r = n.pods[i].result.clone();
    let path = n.pods[i].netns_path();

    // The result: CNI 1.1.0, host veth then pod interface, addresses on the pod's.
    assert_eq!(r["cniVersion"], "1.1.0", "{r:#}");
    let ifs = r["interfaces"].as_array().unwrap();
    assert_eq!(ifs.len(), 2, "{r:#}");
    let host = ifs[0]["name"].as_str().unwrap().to_string();
    assert!(host.starts_with("sl") && host.len() <= 15, "{r:#}");
    assert!(ifs[0]["mac"].as_str().unwrap().len() == 17 && ifs[0].get("sandbox").is_none(), "{r:#}");
    assert_eq!(ifs[1]["name"], "eth0");
    assert_eq!(ifs[1]["sandbox"], path.as_str());
    assert_eq!(ifs[1]["mtu"], 1500);
    let pod_mac = ifs[1]["mac"].as_str().unwrap().to_string();
    let ips = r["ips"].as_array().unwrap();
    assert_eq!(ips.len(), 2, "dual-stack: {r:#}");
    assert!(ips.iter().all(|ip| ip["interface"] == 1), "{r:#}");
    let (ip4, ip6) = (n.pods[i].ip4(), n.pods[i].ip6());
    assert!(in_cidr4(&ip4, "198.18.64."), "{ip4}");
    assert!(ip6.starts_with("fd00:5c:64::"), "{ip6}");
    let routes = r["routes"].as_array().unwrap();
    assert!(routes.iter().any(|rt| rt["dst"] == "0.0.0.0/0"), "{r:#}");
    assert!(routes.iter().any(|rt| rt["dst"] == "::/0"), "{r:#}");
    assert!(r["dns"].is_object());

    // The kernel agrees: eth0 in the pod with that MAC, MTU and the addresses...
    let pod = n.pods[i].ns();
    let l = json_of(&pod.ip(&["-j", "addr", "show", "dev", "eth0"]).unwrap());
    let l = &l[0];
    assert_eq!(l["address"], pod_mac.as_str());
    assert_eq!(l["mtu"], 1500);
    assert!(l["flags"].as_array().unwrap().contains(&json!("UP")), "{l}");
    let addrs: BTreeSet<String> =
        l["addr_info"].as_array().unwrap().iter().map(|a| a["local"].as_str().unwrap().to_string()).collect();
    assert!(addrs.contains(&ip4) && addrs.contains(&ip6), "{addrs:?}");
    // ...routes as the result says...
    let r4 = json_of(&pod.ip(&["-j", "-4", "route", "show"]).unwrap());
    let r6 = json_of(&pod.ip(&["-j", "-6", "route", "show"]).unwrap());
    for rt in routes {
        let dst = rt["dst"].as_str().unwrap();
        let (table, want) = if dst.contains(':') { (&r6, dst) } else { (&r4, dst) };
        let want = match want {
            "0.0.0.0/0" | "::/0" => "default",
            d if d.ends_with("/32") || d.ends_with("/128") => d.split('/').next().unwrap(),
            d => d,
        };
        let found = table.as_array().unwrap().iter().find(|k| k["dst"] == want);
        let found = found.unwrap_or_else(|| panic!("route {rt} not in the pod: {table}"));
        if let Some(gw) = rt["gw"].as_str() {
            assert_eq!(found["gateway"], gw, "{found}");
        }
    }
    // ...and the host side in the node, up.
    let h = json_of(&n.env.topo.node().ip(&["-j", "link", "show", "dev", &host]).unwrap());
    assert_eq!(h[0]["address"], ifs[0]["mac"]);
    assert_eq!(n.node_sl_links(), vec![host.clone()]);

    // The agent's record and the datapath's endpoint map.
    let eps = n.endpoints();
    assert_eq!(eps.len(), 1, "{eps:?}");
    assert_eq!(eps[0]["attachment"]["container_id"], n.pods[i].id.as_str());
    assert_eq!(eps[0]["pod_name"], "pod");
    assert_eq!(eps[0]["pod_namespace"], "e2e");
    assert_eq!(eps[0]["state"], "ready");
    assert_eq!(n.endpoint_map().len(), 2, "one entry per address");

    // CHECK: fine as ADD left it.
    n.check(i).ok_silent();
    // Without the IPv4 default route: an error naming it; back again: fine.
    let gw4 = routes.iter().find(|rt| rt["dst"] == "0.0.0.0/0").unwrap()["gw"].as_str().unwrap().to_string();
    pod.ip(&["route", "del", "default"]).unwrap();
    let v = n.check(i).err(101);
    let text = format!("{} {}", v["msg"], v["details"]);
    assert!(text.contains("route"), "{v}");
    pod.ip(&["route", "add", "default", "via", &gw4, "dev", "eth0"]).unwrap();
    n.check(i).ok_silent();
    // Without its IPv6 address: an error naming it.
    pod.ip(&["addr", "del", &format!("{ip6}/128"), "dev", "eth0"]).unwrap();
    let v = n.check(i).err(101);
    let text = format!("{} {}", v["msg"], v["details"]);
    assert!(text.contains(&ip6), "{v}");

    // DEL, and DEL again: both succeed; nothing is left.
    n.del_pod(i).ok_silent();
    n.del_pod(i).ok_silent();
    n.assert_empty();
    assert!(pod.ip(&["link", "show", "eth0"]).is_err(), "eth0 is gone from the pod");
}

#[test]
fn result_formats_and_mtu() {
    let mut n = Node::new("fmt", 65);
    for (version, mtu) in [("0.3.1", 1400u32), ("0.4.0", 1450), ("1.0.0", 9000)] {
        let i = n.new_pod();
        let mut conf = n.conf(version);
        conf["mtu"] = json!(mtu);
        conf["dns"] = json!({"nameservers": ["198.19.0.10"], "search": ["e2e.svc.cluster.local"]});
        let r = n.try_add(i, &conf).ok().json();
        assert_eq!(r["cniVersion"], version);
        let ips = r["ips"].as_array().unwrap();
        let old = version != "1.0.0";
        for ip in ips {
            assert_eq!(ip.get("version").is_some(), old, "{version}: {r:#}");
            if old {
                let want = if ip["address"].as_str().unwrap().contains(':') { "6" } else { "4" };
                assert_eq!(ip["version"], want);
            }
        }
        assert!(r["interfaces"][1].get("mtu").is_none(), "no interface mtu before 1.1.0");
        assert_eq!(r["dns"]["nameservers"], json!(["198.19.0.10"]));
        let l = json_of(&n.pods[i].ns().ip(&["-j", "link", "show", "eth0"]).unwrap());
        assert_eq!(l[0]["mtu"], mtu, "{version}");
        let host = r["interfaces"][0]["name"].as_str().unwrap();
        let h = json_of(&n.env.topo.node().ip(&["-j", "link", "show", host]).unwrap());
        assert_eq!(h[0]["mtu"], mtu, "both ends");
        n.pods[i].result = r;
    }
    // CHECK is refused before 0.4.0 by the plugin itself, and works at 0.4.0.
    let p = &n.pods[0];
    let mut conf = n.conf("0.3.1");
    conf["prevResult"] = p.result.clone();
    let path = p.netns_path();
    n.plugin("CHECK", &Node::att_vars(&p.id, &path), &conf).err(1);
    let p = &n.pods[1];
    let mut conf = n.conf("0.4.0");
    conf["prevResult"] = p.result.clone();
    let path = p.netns_path();
    n.plugin("CHECK", &Node::att_vars(&p.id, &path), &conf).ok_silent();
    for i in 0..3 {
        n.del_pod(i).ok_silent();
    }
    n.assert_empty();
}

#[test]
fn del_after_the_namespace_is_gone() {
    let mut n = Node::new("delgone", 66);
    let a = n.add_pod();
    let b = n.add_pod();
    let path_a = n.pods[a].netns_path();
    // The runtime removed the namespaces before DEL (the veths die with them).
    n.pods[a].ns = None;
    n.pods[b].ns = None;
    // DEL naming the vanished path, and DEL with CNI_NETNS empty: both fine.
    n.del(&n.pods[a].id, &path_a).ok_silent();
    n.del(&n.pods[b].id, "").ok_silent();
    n.del(&n.pods[b].id, "").ok_silent();
    n.assert_empty();
    // ADD into a namespace that no longer exists: container unknown.
    let c = n.new_pod();
    let conf = n.conf("1.1.0");
    let gone = n.pods[c].netns_path();
    n.pods[c].ns = None;
    let v = n.plugin("ADD", &Node::att_vars(&n.pods[c].id, &gone), &conf).err(3);
    assert!(v["msg"].as_str().unwrap().contains(&gone), "{v}");
    n.assert_empty();
}

#[test]
fn gc_releases_what_is_not_listed() {
    let mut n = Node::new("gc", 67);
    let keep = n.add_pod();
    let drop1 = n.add_pod();
    let drop2 = n.add_pod();
    assert_eq!(n.endpoints().len(), 3);
    // GC of another network touches nothing of ours.
    let mut other = n.conf("1.1.0");
    other["name"] = json!("another-network");
    other["cni.dev/valid-attachments"] = json!([]);
    n.plugin("GC", &[], &other).ok_silent();
    assert_eq!(n.endpoints().len(), 3, "GC is per network");
    // GC listing one attachment: the other two are released.
    let mut conf = n.conf("1.1.0");
    conf["cni.dev/valid-attachments"] = json!([{"containerID": n.pods[keep].id, "ifname": "eth0"}]);
    n.plugin("GC", &[], &conf).ok_silent();
    let eps = n.endpoints();
    assert_eq!(eps.len(), 1, "{eps:?}");
    assert_eq!(eps[0]["attachment"]["container_id"], n.pods[keep].id.as_str());
    let host_keep = n.pods[keep].result["interfaces"][0]["name"].as_str().unwrap().to_string();
    assert_eq!(n.node_sl_links(), vec![host_keep], "the released pods' devices are gone");
    assert_eq!(n.endpoint_map().len(), 2, "only the kept pod's two addresses");
    n.check(keep).ok_silent();
    // Released attachments: DEL still succeeds.
    n.del_pod(drop1).ok_silent();
    n.del_pod(drop2).ok_silent();
    // GC without the list is refused, not read as "release everything".
    n.plugin("GC", &[], &n.conf("1.1.0")).err(7);
    assert_eq!(n.endpoints().len(), 1);
    // GC on a 1.0.0 configuration: refused.
    let mut old = n.conf("1.0.0");
    old["cni.dev/valid-attachments"] = json!([]);
    n.plugin("GC", &[], &old).err(1);
    n.del_pod(keep).ok_silent();
    n.assert_empty();
}

#[test]
fn status_version_and_errors() {
    let mut n = Node::new("status", 68);
    // STATUS with a ready agent: exit 0, no output.
    n.plugin("STATUS", &[], &n.conf("1.1.0")).ok_silent();
    n.plugin("STATUS", &[], &n.conf("1.0.0")).err(1);
    let v = n.plugin("VERSION", &[], &json!({"cniVersion": "1.0.0"})).ok().json();
    assert_eq!(v, json!({"cniVersion": "1.0.0", "supportedVersions": ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]}));

    let i = n.new_pod();
    let path = n.pods[i].netns_path();
    let id = n.pods[i].id.clone();
    let vars = Node::att_vars(&id, &path);
    // Configuration errors, refused before the agent is asked.
    let mut c = n.conf("1.1.0");
    c["ipam"] = json!({"type": "host-local", "subnet": "10.1.0.0/24"});
    assert!(n.plugin("ADD", &vars, &c).err(7)["details"].as_str().unwrap().contains("--pod-cidr"));
    let mut c = n.conf("1.1.0");
    c["mtu"] = json!(1);
    n.plugin("ADD", &vars, &c).err(7);
    n.plugin("ADD", &vars, &n.conf("0.2.0")).err(1);
    let mut c = n.conf("1.1.0");
    c.as_object_mut().unwrap().remove("name");
    n.plugin("ADD", &vars, &c).err(7);
    // Environment errors.
    let bad_id: Vec<_> = vars.iter().map(|&(k, v)| if k == "CNI_CONTAINERID" { (k, "-bad") } else { (k, v) }).collect();
    n.plugin("ADD", &bad_id, &n.conf("1.1.0")).err(4);
    let long_if: Vec<_> = vars.iter().map(|&(k, v)| if k == "CNI_IFNAME" { (k, "eth0123456789abc") } else { (k, v) }).collect();
    n.plugin("ADD", &long_if, &n.conf("1.1.0")).err(4);
    let no_ns: Vec<_> = vars.iter().copied().filter(|(k, _)| *k != "CNI_NETNS").collect();
    n.plugin("ADD", &no_ns, &n.conf("1.1.0")).err(4);
    n.plugin("FROB", &vars, &n.conf("1.1.0")).err(4);
    n.assert_empty();

    // A second attachment into a namespace whose eth0 is taken: refused by
    // the agent, and nothing of it is left.
    let a = n.add_pod();
    let path_a = n.pods[a].netns_path();
    let v = n.plugin("ADD", &Node::att_vars("intruder1", &path_a), &n.conf("1.1.0"));
    assert_ne!(v.code, Some(0), "{}", v.stdout);
    let code = v.json()["code"].as_u64().unwrap();
    assert!(code >= 100, "an agent error: {}", v.stdout);
    assert_eq!(n.endpoints().len(), 1, "the refused ADD left no endpoint");
    assert_eq!(n.node_sl_links().len(), 1, "the refused ADD left no device");
    assert_eq!(n.endpoint_map().len(), 2);
    n.del("intruder1", &path_a).ok_silent();
    n.check(a).ok_silent();

    // The agent down: STATUS 50, the others 11 (try again later); back up: fine.
    n.env.kill_agent();
    let v = n.plugin("STATUS", &[], &n.conf("1.1.0")).err(50);
    assert!(v["details"].as_str().unwrap().contains(n.env.socket.to_str().unwrap()), "{v}");
    n.plugin("ADD", &vars, &n.conf("1.1.0")).err(11);
    n.del_pod(a).err(11);
    n.env.start_agent().unwrap();
    n.plugin("STATUS", &[], &n.conf("1.1.0")).ok_silent();
    n.check(a).ok_silent();
    n.del_pod(a).ok_silent();
    n.assert_empty();
}

#[test]
fn pool_exhausted() {
    // A /29: the agent reserves the network, gateway and broadcast addresses.
    let mut n = Node::with_cidrs("pool", &["198.18.69.0/29"], &[]);
    let mut added = Vec::new();
    let code = loop {
        let i = n.new_pod();
        let o = n.try_add(i, &n.conf("1.1.0"));
        if o.code == Some(0) {
            n.pods[i].result = o.json();
            added.push(i);
            assert!(added.len() <= 8, "a /29 cannot hold {} pods", added.len());
            continue;
        }
        break o.json()["code"].as_u64().unwrap();
    };
    assert_eq!(code, 100, "pool exhausted");
    assert!(!added.is_empty());
    let ips: BTreeSet<String> = added.iter().map(|&i| n.pods[i].ip4()).collect();
    assert_eq!(ips.len(), added.len(), "distinct addresses");
    // STATUS says the agent cannot ADD.
    let v = n.plugin("STATUS", &[], &n.conf("1.1.0")).err(50);
    assert!(format!("{v}").contains("198.18.69.0/29"), "{v}");
    // One DEL frees one address: STATUS is fine and one more ADD works.
    n.del_pod(added[0]).ok_silent();
    n.plugin("STATUS", &[], &n.conf("1.1.0")).ok_silent();
    let i = n.new_pod();
    n.try_add(i, &n.conf("1.1.0")).ok();
    n.del_pod(i).ok_silent();
    for &i in &added[1..] {
        n.del_pod(i).ok_silent();
    }
    n.assert_empty();
}

#[test]
fn pod_to_pod_and_pod_to_node() {
    let mut n = Node::new("conn", 70);
    let a = n.add_pod();
    let b = n.add_pod();
    let (b4, b6) = (n.pods[b].ip4(), n.pods[b].ip6());
    let addrs = vec![format!("{b4}:8080"), format!("[{b6}]:8080")];
    let ns_b = n.pods[b].ns.take().unwrap();
    n.serve(&ns_b, "pod-b", &addrs);
    n.pods[b].ns = Some(ns_b);
    let node_addrs = vec![format!("{NODE_IP4}:9090"), format!("[{NODE_IP6}]:9090")];
    let s = spawn_ready(
        Some(n.env.topo.node()),
        None,
        &bin("sluice-probe"),
        &["serve", "--name", "node", "--tcp", &node_addrs[0], "--tcp", &node_addrs[1]],
    )
    .unwrap();
    n.servers.push(s);
    // Pod to pod, both families, outside the test cgroup (plain packets) and inside it.
    for to in &addrs {
        for in_cgroup in [false, true] {
            let v = n.connect(n.pods[a].ns(), to, 5, in_cgroup);
            assert!(errors(&v).is_empty(), "{to} (cgroup {in_cgroup}): {v}\n{}", n.agent_log());
            assert_eq!(backends(&v), vec!["pod-b"; 5], "{v}");
        }
    }
    // Pod to node, both families.
    for to in &node_addrs {
        let v = n.connect(n.pods[a].ns(), to, 5, false);
        assert!(errors(&v).is_empty(), "{to}: {v}");
        assert_eq!(backends(&v), vec!["node"; 5], "{v}");
    }
    // Node to pod, both families (through the host veth's egress program).
    for to in &addrs {
        let v = n.connect(n.env.topo.node(), to, 5, false);
        assert!(errors(&v).is_empty(), "node to {to}: {v}");
        assert_eq!(backends(&v), vec!["pod-b"; 5], "{v}");
    }
    // The server saw the pod's own address (no masquerade on the node).
    let v = n.connect(n.pods[a].ns(), &addrs[0], 1, false);
    assert_eq!(v["results"][0]["local"].as_str().unwrap().split(':').next().unwrap(), n.pods[a].ip4(), "{v}");
}

#[test]
fn pod_to_service_inside_and_outside_the_cgroup() {
    let mut n = Node::new("svc", 71);
    let client = n.add_pod();
    let b1 = n.add_pod();
    let b2 = n.add_pod();
    for (i, name) in [(b1, "backend-1"), (b2, "backend-2")] {
        let addrs = vec![format!("{}:8080", n.pods[i].ip4()), format!("[{}]:8080", n.pods[i].ip6())];
        let ns = n.pods[i].ns.take().unwrap();
        n.serve(&ns, name, &addrs);
        n.pods[i].ns = Some(ns);
    }
    let v4 = [n.pods[b1].ip4(), n.pods[b2].ip4()];
    let v6 = [n.pods[b1].ip6(), n.pods[b2].ip6()];
    let slice = |name: &str, family: &str, addrs: &[String]| {
        let eps: Vec<String> = addrs.iter().map(|a| format!("- addresses: [\"{a}\"]")).collect();
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, labels: {{kubernetes.io/service-name: web}}}}\naddressType: {family}\nports: [{{name: p, port: 8080, protocol: TCP}}]\nendpoints:\n{}\n",
            eps.join("\n")
        )
    };
    let manifest = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  clusterIP: 198.19.0.71\n  clusterIPs: [198.19.0.71, \"fd00:5c:ee::71\"]\n  ports:\n  - {{name: p, port: 80, targetPort: 8080}}\n{}{}",
        slice("web-v4", "IPv4", &v4),
        slice("web-v6", "IPv6", &v6)
    );
    n.env.apply("web.yaml", &manifest);
    let all: BTreeSet<String> = ["backend-1", "backend-2"].iter().map(|s| s.to_string()).collect();
    for vip in ["198.19.0.71:80", "[fd00:5c:ee::71]:80"] {
        for in_cgroup in [true, false] {
            let v = n.connect(n.pods[client].ns(), vip, 30, in_cgroup);
            assert!(errors(&v).is_empty(), "{vip} (cgroup {in_cgroup}): {v}\n{}", n.agent_log());
            let seen: BTreeSet<String> = backends(&v).into_iter().collect();
            assert_eq!(seen, all, "{vip} (cgroup {in_cgroup}): 30 connections reach both backends");
            // The client sees the VIP as its peer either way.
            assert!(peers(&v).iter().all(|p| p == vip), "{vip} (cgroup {in_cgroup}): {:?}", peers(&v));
        }
    }
}

/// The agent aborts mid-ADD (`--fail-point`); restarted, it undoes the
/// half-done ADD: the runtime's DEL and a new ADD succeed, and no device
/// or address is leaked (the pool holds as many pods as before).
#[test]
fn agent_crash_mid_add() {
    let cidrs = ["198.18.72.0/29", "fd00:5c:72::/112"];
    let mut n = Node::with_cidrs("crash", &cidrs, &[]);
    let base_args = n.env.agent_args.clone();
    // How many pods the pool holds, on a fresh agent.
    let fill = |n: &mut Node| -> Vec<usize> {
        let mut added = Vec::new();
        loop {
            let i = n.new_pod();
            let o = n.try_add(i, &n.conf("1.1.0"));
            if o.code != Some(0) {
                assert_eq!(o.json()["code"], 100, "{}", o.stdout);
                n.pods[i].ns = None;
                return added;
            }
            n.pods[i].result = o.json();
            added.push(i);
            assert!(added.len() <= 8);
        }
    };
    let first = fill(&mut n);
    let capacity = first.len();
    assert!(capacity > 0);
    for &i in &first {
        n.del_pod(i).ok_silent();
    }
    n.assert_empty();

    for point in ["cni-add-after-alloc", "cni-add-after-link"] {
        n.env.kill_agent();
        n.env.agent_args = base_args.clone();
        n.env.agent_args.extend(["--fail-point".to_string(), point.to_string()]);
        n.env.start_agent().unwrap();
        let i = n.new_pod();
        let v = n.try_add(i, &n.conf("1.1.0")).err(11);
        assert!(v["details"].as_str().unwrap().contains("without answering"), "{point}: {v}");
        // The agent is dead; restart it without the fail point.
        n.env.kill_agent();
        n.env.agent_args = base_args.clone();
        n.env.start_agent().unwrap();
        // The runtime's DEL after the failed ADD, then its new ADD.
        n.del_pod(i).ok_silent();
        n.assert_empty();
        assert!(n.pods[i].ns().ip(&["link", "show", "eth0"]).is_err(), "{point}: no eth0 left in the pod");
        let r = n.try_add(i, &n.conf("1.1.0")).ok().json();
        n.pods[i].result = r;
        n.check(i).ok_silent();
        assert_eq!(n.endpoints().len(), 1, "{point}");
        assert_eq!(n.node_sl_links().len(), 1, "{point}");
        // The pool still holds `capacity` pods: nothing leaked.
        let more = fill(&mut n);
        assert_eq!(more.len() + 1, capacity, "{point}: the pool lost addresses");
        n.del_pod(i).ok_silent();
        for &k in &more {
            n.del_pod(k).ok_silent();
        }
        n.assert_empty();
    }
}

/// 100 pods added and removed: every address distinct, nothing left.
#[test]
fn a_hundred_pods() {
    let mut n = Node::new("hundred", 73);
    let t0 = Instant::now();
    let pods: Vec<usize> = (0..100).map(|_| n.add_pod()).collect();
    let add_time = t0.elapsed();
    let v4: BTreeSet<String> = pods.iter().map(|&i| n.pods[i].ip4()).collect();
    let v6: BTreeSet<String> = pods.iter().map(|&i| n.pods[i].ip6()).collect();
    assert_eq!((v4.len(), v6.len()), (100, 100), "distinct addresses");
    assert_eq!(n.endpoints().len(), 100);
    assert_eq!(n.node_sl_links().len(), 100);
    assert_eq!(n.endpoint_map().len(), 200);
    // First and last can talk.
    let last = *pods.last().unwrap();
    let addr = format!("{}:8080", n.pods[last].ip4());
    let ns = n.pods[last].ns.take().unwrap();
    n.serve(&ns, "last", std::slice::from_ref(&addr));
    n.pods[last].ns = Some(ns);
    let v = n.connect(n.pods[pods[0]].ns(), &addr, 3, false);
    assert!(errors(&v).is_empty(), "{v}");
    n.servers.clear();
    let t1 = Instant::now();
    for &i in &pods {
        n.del_pod(i).ok_silent();
    }
    let del_time = t1.elapsed();
    n.assert_empty();
    for &i in &pods {
        assert!(n.pods[i].ns().ip(&["link", "show", "eth0"]).is_err(), "eth0 left in pod {i}");
    }
    eprintln!("100 pods: ADD {add_time:?}, DEL {del_time:?} (with namespace creation in ADD)");
}

/// A TCP server in `ns` that answers every connection with the address it
/// sees the client at (the first line), for `n` connections.
fn peer_reporter(ns: &Netns, addr: &str, n: usize) -> std::thread::JoinHandle<()> {
    let addr = addr.to_string();
    let l = ns.enter(move || std::net::TcpListener::bind(&addr).unwrap());
    std::thread::spawn(move || {
        for _ in 0..n {
            let Ok((mut s, peer)) = l.accept() else { return };
            let _ = s.write_all(format!("{}\n", peer.ip()).as_bytes());
        }
    })
}

#[test]
fn masquerade_to_outside_the_node() {
    let mut n = Node::new("masq", 74);
    // A host outside the node: its own namespace, a link to the node, and no
    // route back to the pods. Replies reach a pod only if the node
    // masqueraded its traffic.
    let ext = Netns::new("sl-cni-ext").unwrap();
    ext.sysctl("net.ipv6.conf.all.accept_dad", "0").unwrap();
    ext.sysctl("net.ipv6.conf.default.accept_dad", "0").unwrap();
    let node = n.env.topo.node();
    node.ip_batch(&[
        format!("link add ext0 type veth peer name eth0 netns {}", ext.name()),
        "addr add 198.18.200.1/24 dev ext0".to_string(),
        "addr add fd00:5c:200::1/64 dev ext0 nodad".to_string(),
        "link set ext0 up".to_string(),
    ])
    .unwrap();
    ext.ip_batch(&["addr add 198.18.200.2/24 dev eth0", "addr add fd00:5c:200::2/64 dev eth0 nodad", "link set eth0 up"]).unwrap();
    let a = n.add_pod();
    let (a4, a6) = (n.pods[a].ip4(), n.pods[a].ip6());
    // Six answered connections each (the first IPv4 attempt never completes).
    let servers = [peer_reporter(&ext, "198.18.200.2:9000", 6), peer_reporter(&ext, "[fd00:5c:200::2]:9000", 6)];

    // Without masquerade the outside host cannot answer.
    let v = n.connect(n.pods[a].ns(), "198.18.200.2:9000", 1, false);
    assert_eq!(errors(&v).len(), 1, "no route back to {a4}, so no answer: {v}");

    // With it (agent restarted: the pod and its datapath stay), both
    // families reach the outside host from the node's external address.
    n.env.kill_agent();
    n.env.agent_args.extend(["--masquerade", "--external-dev", "ext0"].map(String::from));
    n.env.start_agent().unwrap();
    for (to, seen) in [("198.18.200.2:9000", "198.18.200.1"), ("[fd00:5c:200::2]:9000", "fd00:5c:200::1")] {
        for in_cgroup in [false, true] {
            let v = n.connect(n.pods[a].ns(), to, 3, in_cgroup);
            assert!(errors(&v).is_empty(), "{to}: {v}\n{}", n.agent_log());
            assert_eq!(backends(&v), vec![seen; 3], "the outside host sees the node's address: {v}");
        }
    }
    let nat = n.env.ok(&["bpf", "nat", "list", "--bpffs", n.env.pin_dir().to_str().unwrap(), "-o", "json"]);
    let nat: Value = json_of(&nat);
    let from_pod: Vec<&Value> = nat.as_array().unwrap().iter().filter(|e| e["inbound"] == false).collect();
    assert!(from_pod.iter().any(|e| e["src"].as_str().unwrap().starts_with(&a4)), "{nat}");
    assert!(from_pod.iter().any(|e| e["src"].as_str().unwrap().contains(&a6)), "{nat}");
    for e in &from_pod {
        let port: u16 = e["nat"].as_str().unwrap().rsplit(':').next().unwrap().parse().unwrap();
        assert!((61000..=65535).contains(&port), "SNAT port from --snat-ports: {e}");
    }
    let metrics = n.env.ok(&["bpf", "metrics", "--bpffs", n.env.pin_dir().to_str().unwrap()]);
    let count = |name: &str| -> u64 {
        metrics.lines().find(|l| l.split_whitespace().next() == Some(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    assert!(count("snat") >= 12 && count("rev_snat") >= 12, "{metrics}");
    for s in servers {
        s.join().unwrap();
    }
    // Traffic to the node itself is not masqueraded.
    let at_node = peer_reporter(n.env.topo.node(), &format!("{NODE_IP4}:9001"), 1);
    let v = n.connect(n.pods[a].ns(), &format!("{NODE_IP4}:9001"), 1, false);
    assert_eq!(backends(&v), vec![a4.clone()], "{v}");
    at_node.join().unwrap();
}

/// A Maglev service (by annotation) reached per packet, from a process
/// outside the hooks' cgroup: connections (each from a new source port)
/// spread over the backends; `service list` shows the algorithm and the
/// datapath counts Maglev picks. From inside the cgroup the socket hooks
/// still pick at random (no 5-tuple at connect).
#[test]
fn pod_to_maglev_service_outside_the_cgroup() {
    let mut n = Node::new("maglev", 75);
    let client = n.add_pod();
    let backends_idx: Vec<usize> = (0..3).map(|_| n.add_pod()).collect();
    for (k, &i) in backends_idx.iter().enumerate() {
        let addrs = vec![format!("{}:8080", n.pods[i].ip4()), format!("[{}]:8080", n.pods[i].ip6())];
        let ns = n.pods[i].ns.take().unwrap();
        n.serve(&ns, &format!("backend-{k}"), &addrs);
        n.pods[i].ns = Some(ns);
    }
    let eps = |v6: bool| -> String {
        backends_idx
            .iter()
            .map(|&i| format!("- addresses: [\"{}\"]", if v6 { n.pods[i].ip6() } else { n.pods[i].ip4() }))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let manifest = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, annotations: {{sluice.io/lb-algorithm: maglev}}}}\nspec:\n  clusterIP: 198.19.0.75\n  clusterIPs: [198.19.0.75, \"fd00:5c:ee::75\"]\n  ports:\n  - {{name: p, port: 80, targetPort: 8080}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-v4, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{name: p, port: 8080, protocol: TCP}}]\nendpoints:\n{}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-v6, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv6\nports: [{{name: p, port: 8080, protocol: TCP}}]\nendpoints:\n{}\n",
        eps(false),
        eps(true)
    );
    n.env.apply("web.yaml", &manifest);
    let list = n.env.ok(&["service", "list"]);
    assert!(list.contains("maglev/16381"), "{list}");
    let all: BTreeSet<String> = (0..3).map(|k| format!("backend-{k}")).collect();
    for vip in ["198.19.0.75:80", "[fd00:5c:ee::75]:80"] {
        for in_cgroup in [false, true] {
            let v = n.connect(n.pods[client].ns(), vip, 40, in_cgroup);
            assert!(errors(&v).is_empty(), "{vip} (cgroup {in_cgroup}): {v}\n{}", n.agent_log());
            let seen: BTreeSet<String> = backends(&v).into_iter().collect();
            assert_eq!(seen, all, "{vip} (cgroup {in_cgroup}): 40 connections reach every backend");
            assert!(peers(&v).iter().all(|p| p == vip), "{vip}: {:?}", peers(&v));
        }
    }
    let pins = n.env.pin_dir().to_str().unwrap().to_string();
    let metrics = n.env.ok(&["bpf", "metrics", "--bpffs", &pins]);
    let picks: u64 = metrics
        .lines()
        .find(|l| l.split_whitespace().next() == Some("maglev_pick"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no maglev_pick counter in {metrics}"));
    assert!(picks >= 80, "{picks} Maglev picks for 80 per-packet connections\n{metrics}");
    let dump = n.env.ok(&["bpf", "lb", "list", "--bpffs", &pins]);
    assert!(dump.lines().filter(|l| l.starts_with("maglev id=") && l.contains("size=16381")).count() == 2, "{dump}");
}

/// A table size that is not a prime stops the agent before it starts, with
/// the flag and the reason.
#[test]
fn a_maglev_table_size_that_is_not_prime_is_refused() {
    let o = std::process::Command::new(bin("sluice")).args(["agent", "--maglev-table-size", "1000"]).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--maglev-table-size") && err.contains("1000 is not a prime") && err.contains("997 or 1009"), "{err}");
    let o = std::process::Command::new(bin("sluice")).args(["agent", "--lb-algorithm", "ring"]).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--lb-algorithm") && err.contains("\"ring\" is not \"maglev\" or \"random\""), "{err}");
}
