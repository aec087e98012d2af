//! The test bed itself, for real (as root; each test skips itself
//! otherwise): namespaces, cgroups, processes, the topology and the probe.
//! Everything runs in namespaces these tests create; nothing in the host's.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use sluice_testbed::cgroup::{cgroup2_root, TestCgroup};
use sluice_testbed::netns::Netns;
use sluice_testbed::proc::{run_in, spawn_in, spawn_in_capture};
use sluice_testbed::topo::Topology;

fn ns_inode(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().ino()
}

#[test]
fn netns_lifecycle_exec_enter_sysctl() {
    root_or_skip!();
    let ns = Netns::new("tb-ns").unwrap();
    let name = ns.name().to_string();
    assert!(
        name.starts_with(&format!("tb-ns-{}-", std::process::id())),
        "{name}"
    );
    assert_eq!(ns.path(), Path::new(&format!("/run/netns/{name}")));
    assert!(netns_list().contains(&name));
    // Only lo, and it is up.
    let links = ns.exec(&["ip", "-o", "link"]).unwrap();
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(links.contains("lo:") && links.contains("UP"), "{links}");
    // exec reports stderr on failure.
    let err = ns
        .exec(&["ip", "link", "show", "nosuchdev"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("nosuchdev"), "{err}");
    // run keeps the mount namespace but changes the network namespace.
    let me = ns.run("readlink", &["/proc/self/ns/net"]).unwrap();
    assert!(me.contains(&ns_inode(ns.path()).to_string()), "{me}");
    // sysctls are the namespace's own.
    ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
    assert_eq!(
        ns.exec(&["sysctl", "-n", "net.ipv4.ip_forward"])
            .unwrap()
            .trim(),
        "1"
    );
    assert_eq!(ns.sysctl_get("net.ipv4.ip_forward").unwrap(), "1");
    assert!(
        ns.sysctl("kernel.hostname", "x").is_err(),
        "non-net sysctls are refused"
    );
    // enter: the thread is in the namespace; sockets made there belong to it.
    let (inode, listener) = ns.enter(|| {
        let link = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        (
            link.to_string_lossy().into_owned(),
            TcpListener::bind("127.0.0.1:0").unwrap(),
        )
    });
    assert!(inode.contains(&ns_inode(ns.path()).to_string()), "{inode}");
    let addr = listener.local_addr().unwrap();
    let ss = ns.exec(&["ss", "-Htln"]).unwrap();
    assert!(ss.contains(&addr.to_string()), "{ss}");
    // A panic inside enter comes out here.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ns.enter(|| panic!("inside"))
    }));
    assert!(r.is_err());
    drop(listener);
    drop(ns);
    assert_netns_gone(&[name]);
}

#[test]
fn cgroup_and_processes() {
    root_or_skip!();
    let root = cgroup2_root().unwrap();
    assert!(root.join("cgroup.procs").exists(), "{}", root.display());
    let ns = Netns::new("tb-proc").unwrap();
    let cg = TestCgroup::new("tb-cg").unwrap();
    let cg_path = cg.path().to_path_buf();
    assert!(cg_path.starts_with(&root) && cg_path.is_dir());

    // run_in: in the namespace and the cgroup from the start.
    let o = run_in(
        Some(&ns),
        Some(&cg),
        Path::new("/bin/sh"),
        &[
            "-c",
            "readlink /proc/self/ns/net; grep '^0::' /proc/self/cgroup; echo err >&2; exit 3",
        ],
        Duration::from_secs(5),
    )
    .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(3));
    assert!(out.contains(&ns_inode(ns.path()).to_string()), "{out}");
    let rel = cg_path.strip_prefix(&root).unwrap();
    assert!(out.contains(&format!("0::/{}", rel.display())), "{out}");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n");

    // A long-running child: listed in the cgroup, killed and reaped on drop.
    let child = spawn_in(Some(&ns), Some(&cg), Path::new("/bin/sleep"), &["60"]).unwrap();
    let pid = child.pid();
    assert_eq!(cg.pids().unwrap(), vec![pid]);
    drop(child);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "child {pid} still there"
    );
    assert!(cg.pids().unwrap().is_empty());

    // wait_output gives up after the timeout and kills the child.
    let slow = spawn_in_capture(Some(&ns), Some(&cg), Path::new("/bin/sleep"), &["60"]).unwrap();
    let pid = slow.pid();
    let t0 = Instant::now();
    assert!(slow.wait_output(Duration::from_millis(200)).is_err());
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert!(!Path::new(&format!("/proc/{pid}")).exists());

    // add_pid moves a process of ours.
    let mut child = spawn_in(None, None, Path::new("/bin/sleep"), &["60"]).unwrap();
    cg.add_pid(child.pid()).unwrap();
    assert_eq!(cg.pids().unwrap(), vec![child.pid()]);
    child.kill();
    drop(child);

    let name = ns.name().to_string();
    drop(cg);
    drop(ns);
    assert_path_gone(&cg_path);
    assert_netns_gone(&[name]);
}

#[test]
fn everything_is_removed_on_panic() {
    root_or_skip!();
    let (tx, rx) = std::sync::mpsc::channel();
    let r = std::thread::spawn(move || {
        let topo = Topology::new("tb-panic", 1).unwrap();
        let cg = TestCgroup::new("tb-panic").unwrap();
        let child = spawn_in(
            Some(&topo.pods()[0].netns),
            Some(&cg),
            Path::new("/bin/sleep"),
            &["60"],
        )
        .unwrap();
        let names: Vec<String> = std::iter::once(topo.node().name().to_string())
            .chain(topo.pods().iter().map(|p| p.netns.name().to_string()))
            .collect();
        tx.send((names, cg.path().to_path_buf(), child.pid()))
            .unwrap();
        panic!("on purpose");
    })
    .join();
    assert!(r.is_err());
    let (names, cg_path, pid) = rx.recv().unwrap();
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert_path_gone(&cg_path);
    assert_netns_gone(&names);
}

#[test]
fn topology_pods_reach_each_other_and_the_node_in_both_families() {
    root_or_skip!();
    let links_before = host_links();
    let mut topo = Topology::new("tb-topo", 3).unwrap();
    let names: Vec<String> = std::iter::once(topo.node().name().to_string())
        .chain(topo.pods().iter().map(|p| p.netns.name().to_string()))
        .collect();
    assert_eq!(topo.pods()[0].ip4.to_string(), "198.18.1.10");
    assert_eq!(topo.pods()[2].ip6.to_string(), "fd00:5c:1::12");
    assert_eq!(topo.pods()[1].host_veth, "veth1");
    assert_eq!(topo.node_ip4().to_string(), "198.18.255.1");
    assert_eq!(topo.node_ip6().to_string(), "fd00:5c:ff::1");
    // The veths exist only inside the node and pod namespaces.
    assert!(topo.node().ip(&["link", "show", "veth2"]).is_ok());
    assert!(topo.pods()[2].netns.ip(&["link", "show", "eth0"]).is_ok());
    assert_eq!(
        host_links(),
        links_before,
        "the host namespace must not change"
    );
    assert_eq!(topo.node().sysctl_get("net.ipv4.ip_forward").unwrap(), "1");
    assert_eq!(
        topo.node()
            .sysctl_get("net.ipv6.conf.all.forwarding")
            .unwrap(),
        "1"
    );

    let (p0, p1, p2) = (&topo.pods()[0], &topo.pods()[1], &topo.pods()[2]);
    let any = [
        "--tcp",
        "0.0.0.0:8080",
        "--udp",
        "0.0.0.0:5353",
        "--tcp",
        "[::]:8081",
        "--udp",
        "[::]:5354",
    ];
    let _s0 = serve(&p0.netns, "pod0", &any);
    let _s1 = serve(&p1.netns, "pod1", &any);
    // Dual-stack listener in the node, which has several addresses: UDP
    // answers must come from the address asked.
    let _sn = serve(
        topo.node(),
        "node",
        &["--tcp", "[::]:9090", "--udp", "[::]:9091"],
    );

    for (p, name) in [(p0, "pod0"), (p1, "pod1")] {
        for to in [format!("{}:8080", p.ip4), format!("[{}]:8081", p.ip6)] {
            let v = connect(&p2.netns, &["--to", &to, "--count", "3"]);
            assert_eq!(field(&v, "backend"), vec![name; 3], "{to}: {v}");
            assert_eq!(set(field(&v, "peer")), set(vec![to.clone()]), "{v}");
            let local_ip = if to.starts_with('[') {
                p2.ip6.to_string()
            } else {
                p2.ip4.to_string()
            };
            assert!(
                field(&v, "local").iter().all(|l| l.contains(&local_ip)),
                "{v}"
            );
        }
        for to in [format!("{}:5353", p.ip4), format!("[{}]:5354", p.ip6)] {
            let v = connect(&p2.netns, &["--udp", "--to", &to, "--count", "2"]);
            assert_eq!(field(&v, "backend"), vec![name; 2], "{to}: {v}");
            assert_eq!(set(field(&v, "peer")), set(vec![to.clone()]), "{v}");
            let v = connect(&p2.netns, &["--connected-udp", "--to", &to, "--count", "2"]);
            assert_eq!(field(&v, "backend"), vec![name; 2], "{to}: {v}");
        }
    }
    // The node address and the gateway, from a pod, in both families.
    for to in [
        format!("{}:9090", topo.node_ip4()),
        format!("[{}]:9090", topo.node_ip6()),
        "198.18.0.1:9090".to_string(),
    ] {
        let v = connect(&p2.netns, &["--to", &to]);
        assert_eq!(field(&v, "backend"), vec!["node"], "{to}: {v}");
    }
    for to in [
        format!("{}:9091", topo.node_ip4()),
        format!("[{}]:9091", topo.node_ip6()),
        "198.18.0.1:9091".to_string(),
    ] {
        let v = connect(&p0.netns, &["--udp", "--to", &to, "--count", "2"]);
        assert_eq!(field(&v, "backend"), vec!["node"; 2], "{to}: {v}");
        assert_eq!(
            set(field(&v, "peer")),
            set(vec![to.clone()]),
            "answered from the address asked: {v}"
        );
        let v = connect(&p0.netns, &["--connected-udp", "--to", &to]);
        assert_eq!(field(&v, "backend"), vec!["node"], "{to}: {v}");
    }
    // The node reaches the pods; refused connections are reported by errno.
    let v = connect(topo.node(), &["--to", &format!("{}:8080", p1.ip4)]);
    assert_eq!(field(&v, "backend"), vec!["pod1"], "{v}");
    let v = connect(
        &p2.netns,
        &["--to", &format!("{}:1", p0.ip4), "--count", "2"],
    );
    assert_eq!(v["errors"]["ECONNREFUSED"], 2, "{v}");

    // More pods later.
    topo.add_pods(1).unwrap();
    let p3 = &topo.pods()[3];
    assert_eq!(p3.ip4.to_string(), "198.18.1.13");
    let v = connect(
        &p3.netns,
        &["--to", &format!("[{}]:8081", topo.pods()[0].ip6)],
    );
    assert_eq!(field(&v, "backend"), vec!["pod0"], "{v}");
    let mut names = names;
    names.push(p3.netns.name().to_string());

    drop((_s0, _s1, _sn));
    drop(topo);
    assert_netns_gone(&names);
    assert_eq!(host_links(), links_before);
}

#[test]
fn probe_hold_and_latency() {
    root_or_skip!();
    let topo = Topology::new("tb-hold", 2).unwrap();
    let (p0, p1) = (&topo.pods()[0], &topo.pods()[1]);
    let _s = serve(
        &p0.netns,
        "pod0",
        &["--tcp", "[::]:8080", "--udp", "[::]:8080"],
    );
    let to = format!("{}:8080", p0.ip4);
    // A held connection: one JSON line per 100 ms.
    let held = spawn_in_capture(
        Some(&p1.netns),
        None,
        probe_bin(),
        &["connect", "--to", &to, "--hold", "0.5"],
    )
    .unwrap();
    let out = held.wait_output(Duration::from_secs(5)).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!((4..=7).contains(&lines.len()), "{text}");
    assert!(
        lines
            .iter()
            .all(|l| l["backend"] == "pod0" && l["peer"] == to.as_str() && l["error"].is_null()),
        "{text}"
    );
    // Held connected UDP too.
    let o = run_in(
        Some(&p1.netns),
        None,
        probe_bin(),
        &["connect", "--connected-udp", "--to", &to, "--hold", "0.3"],
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).lines().count() >= 3);
    // A held connection whose server goes away fails with exit status 1.
    let held = spawn_in_capture(
        Some(&p1.netns),
        None,
        probe_bin(),
        &["connect", "--to", &to, "--hold", "3"],
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(_s);
    let out = held.wait_output(Duration::from_secs(5)).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.lines().last().unwrap().contains("\"error\":\""),
        "{text}"
    );

    let _s = serve(&p0.netns, "pod0", &["--tcp", "[::]:8080"]);
    let o = run_in(
        Some(&p1.netns),
        None,
        probe_bin(),
        &["latency", "--to", &to, "--count", "200", "--warmup", "20"],
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["n"], 200, "{v}");
    let (p50, p99, mean) = (
        v["p50_ns"].as_u64().unwrap(),
        v["p99_ns"].as_u64().unwrap(),
        v["mean_ns"].as_u64().unwrap(),
    );
    assert!(0 < p50 && p50 <= p99 && mean > 0, "{v}");
    assert!(v["errors"].as_object().unwrap().is_empty(), "{v}");
    // Unparseable addresses are refused by the CLI.
    let o = run_in(
        Some(&p1.netns),
        None,
        probe_bin(),
        &["connect", "--to", "nonsense"],
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(!o.status.success());
    let _: SocketAddr = to.parse().unwrap();
}
