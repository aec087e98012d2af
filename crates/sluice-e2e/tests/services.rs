//! Socket-level service translation, end to end: the real agent and
//! datapath, clients and backends in throwaway namespaces, the hooks on a
//! test cgroup. Run as root.

use std::collections::BTreeSet;

use sluice_e2e::*;

fn slice(name: &str, svc: &str, family: &str, port: u16, proto: &str, addrs: &[String]) -> String {
    let eps: Vec<String> = addrs.iter().map(|a| format!("- addresses: [\"{a}\"]")).collect();
    format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, labels: {{kubernetes.io/service-name: {svc}}}}}\naddressType: {family}\nports: [{{name: p, port: {port}, protocol: {proto}}}]\nendpoints:\n{}\n",
        eps.join("\n")
    )
}

fn set(v: Vec<String>) -> BTreeSet<String> {
    v.into_iter().collect()
}

/// Pods 1..=3 serve TCP and UDP on 8080 (both families); pod 0 is the client.
fn three_backends(name: &str) -> Env {
    let mut env = Env::new(name, 4).unwrap();
    for i in 1..=3 {
        let p = &env.topo.pods()[i];
        let (a4, a6) = (format!("{}:8080", p.ip4), format!("[{}]:8080", p.ip6));
        env.serve(i, &["--tcp", &a4, "--udp", &a4, "--tcp", &a6, "--udp", &a6]).unwrap();
    }
    env
}

fn pod_ips(env: &Env, v6: bool) -> Vec<String> {
    env.topo.pods()[1..=3].iter().map(|p| if v6 { p.ip6.to_string() } else { p.ip4.to_string() }).collect()
}

fn web(env: &Env, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  clusterIP: 198.19.0.1\n  clusterIPs: [198.19.0.1, \"fd00:5c:ee::1\"]\n{extra_spec}  ports:\n  - {{name: p, port: 80, targetPort: 8080}}\n  - {{name: u, port: 53, protocol: UDP, targetPort: 8080}}\n{}{}{}{}",
        slice("web-v4", "web", "IPv4", 8080, "TCP", &pod_ips(env, false)),
        slice("web-v6", "web", "IPv6", 8080, "TCP", &pod_ips(env, true)),
        slice("web-v4u", "web", "IPv4", 8080, "UDP", &pod_ips(env, false)).replace("name: p,", "name: u,"),
        slice("web-v6u", "web", "IPv6", 8080, "UDP", &pod_ips(env, true)).replace("name: p,", "name: u,"),
    )
}

#[test]
fn tcp_connections_spread_over_backends_and_getpeername_reports_the_vip() {
    let env = three_backends("tcp");
    env.apply("web.yaml", &web(&env, ""));
    let all: BTreeSet<String> = env.topo.pods()[1..=3].iter().map(|p| p.name.clone()).collect();
    for (vip, peer) in [("198.19.0.1:80", "198.19.0.1:80"), ("[fd00:5c:ee::1]:80", "[fd00:5c:ee::1]:80")] {
        let v = env.probe(env.pod_ns(0), &["connect", "--to", vip, "--count", "40"]).unwrap();
        assert!(errors(&v).is_empty(), "{vip}: {v}");
        let seen = set(backends(&v));
        assert_eq!(seen, all, "{vip}: 40 connections should reach all three backends");
        assert_eq!(set(peers(&v)), set(vec![peer.to_string()]), "getpeername must report the VIP");
    }
    // The API socket is root's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&env.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "API socket mode {mode:o}");
    // `service list` reads the frontends back from the maps.
    let list = env.ok(&["service", "list", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 4, "2 ports x 2 families: {list}");
    assert!(v.as_array().unwrap().iter().all(|f| f["backends"].as_array().unwrap().len() == 3), "{list}");
}

#[test]
fn udp_unconnected_and_connected_see_the_vip() {
    let env = three_backends("udp");
    env.apply("web.yaml", &web(&env, ""));
    for (vip, peer) in [("198.19.0.1:53", "198.19.0.1:53"), ("[fd00:5c:ee::1]:53", "[fd00:5c:ee::1]:53")] {
        // Unconnected: translated at each sendmsg; recvmsg reports the VIP.
        let v = env.probe(env.pod_ns(0), &["connect", "--udp", "--to", vip, "--count", "20"]).unwrap();
        assert!(errors(&v).is_empty(), "{v}");
        assert_eq!(set(peers(&v)), set(vec![peer.to_string()]), "recvmsg must report the VIP");
        assert!(set(backends(&v)).len() >= 2, "{v}");
        // Connected: translated once at connect; getpeername reports the VIP.
        let v = env.probe(env.pod_ns(0), &["connect", "--connected-udp", "--to", vip, "--count", "20"]).unwrap();
        assert!(errors(&v).is_empty(), "{v}");
        assert_eq!(set(peers(&v)), set(vec![peer.to_string()]));
    }
}

#[test]
fn a_service_without_backends_refuses_at_once() {
    let env = Env::new("refuse", 1).unwrap();
    env.apply(
        "empty.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: empty}\nspec:\n  clusterIP: 198.19.0.9\n  ports: [{name: t, port: 80}, {name: u, port: 53, protocol: UDP}]\n",
    );
    let v = env.probe(env.pod_ns(0), &["connect", "--to", "198.19.0.9:80", "--count", "3"]).unwrap();
    assert_eq!(errors(&v), vec!["ECONNREFUSED"; 3], "{v}");
    let v = env.probe(env.pod_ns(0), &["connect", "--udp", "--to", "198.19.0.9:53", "--count", "2"]).unwrap();
    assert_eq!(errors(&v), vec!["ECONNREFUSED"; 2], "{v}");
    let m = env.ok(&["bpf", "metrics", "--bpffs", env.pin_dir().to_str().unwrap(), "-o", "json"]);
    assert!(m.contains("\"reject_no_backend\""), "{m}");
}

#[test]
fn node_ports_external_and_load_balancer_ips() {
    let env = three_backends("nodeport");
    let spec = "  type: LoadBalancer\n  externalIPs: [198.19.50.1]\n";
    let text = web(&env, spec)
        .replace("{name: p, port: 80, targetPort: 8080}", "{name: p, port: 80, targetPort: 8080, nodePort: 30080}");
    // The LoadBalancer ingress IP comes in the service's status.
    let with_status = text.replacen(
        "---\napiVersion: discovery.k8s.io/v1",
        "status: {loadBalancer: {ingress: [{ip: 198.19.60.1}]}}\n---\napiVersion: discovery.k8s.io/v1",
        1,
    );
    env.apply("lb.yaml", &with_status);
    let node4 = env.topo.node_ip4().to_string();
    let node6 = env.topo.node_ip6().to_string();
    // From a pod: the node's addresses, an external IP, the LB IP.
    for to in [
        format!("{node4}:30080"),
        format!("[{node6}]:30080"),
        "198.19.50.1:80".to_string(),
        "198.19.60.1:80".to_string(),
    ] {
        let v = env.probe(env.pod_ns(0), &["connect", "--to", &to, "--count", "6"]).unwrap();
        assert!(errors(&v).is_empty(), "{to}: {v}");
        assert!(!backends(&v).is_empty(), "{to}: {v}");
    }
    // From the node itself, loopback included.
    for to in ["127.0.0.1:30080".to_string(), format!("{node4}:30080"), "[::1]:30080".to_string()] {
        let v = env.probe(env.topo.node(), &["connect", "--to", &to, "--count", "4"]).unwrap();
        assert!(errors(&v).is_empty(), "{to}: {v}");
        assert!(!backends(&v).is_empty(), "{to}: {v}");
    }
    // In a pod, 127.0.0.1 is the pod itself: no NodePort there.
    let v = env.probe(env.pod_ns(0), &["connect", "--to", "127.0.0.1:30080", "--count", "1"]).unwrap();
    assert_eq!(errors(&v), vec!["ECONNREFUSED"], "{v}");
}

#[test]
fn client_ip_affinity_sticks_to_one_backend() {
    let env = three_backends("affinity");
    env.apply("web.yaml", &web(&env, "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n"));
    let v = env.probe(env.pod_ns(0), &["connect", "--to", "198.19.0.1:80", "--count", "20"]).unwrap();
    assert!(errors(&v).is_empty(), "{v}");
    assert_eq!(set(backends(&v)).len(), 1, "{v}");
    // A removed backend is not reused by affinity.
    let chosen = backends(&v)[0].clone();
    let idx = env.topo.pods().iter().position(|p| p.name == chosen).unwrap();
    let rest: Vec<String> = env.topo.pods()[1..=3].iter().enumerate().filter(|(i, _)| i + 1 != idx).map(|(_, p)| p.ip4.to_string()).collect();
    env.apply("slice.yaml", &slice("web-v4", "web", "IPv4", 8080, "TCP", &rest));
    let v = env.probe(env.pod_ns(0), &["connect", "--to", "198.19.0.1:80", "--count", "10"]).unwrap();
    let after = set(backends(&v));
    assert_eq!(after.len(), 1, "{v}");
    assert!(!after.contains(&chosen), "affinity kept a removed backend: {v}");
}

#[test]
fn client_ip_affinity_expires_after_timeout_seconds() {
    let env = three_backends("afftimeout");
    env.apply("web.yaml", &web(&env, "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 1}}\n"));
    let mut chosen = BTreeSet::new();
    // Within the window a client sticks; after it, the choice is made anew.
    // Eight windows all landing on one of three backends: p = 3 * 3^-8.
    for _ in 0..8 {
        let v = env.probe(env.pod_ns(0), &["connect", "--to", "198.19.0.1:80", "--count", "3"]).unwrap();
        let b = set(backends(&v));
        assert_eq!(b.len(), 1, "not sticky within the timeout: {v}");
        chosen.extend(b);
        std::thread::sleep(std::time::Duration::from_millis(1300));
    }
    assert!(chosen.len() >= 2, "affinity never expired: always {chosen:?}");
}

#[test]
fn a_service_without_cluster_ip_gets_one_and_works() {
    let env = three_backends("allocate");
    let ips = pod_ips(&env, false);
    env.apply(
        "web.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  ports: [{{name: p, port: 80, targetPort: 8080}}]\n{}",
            slice("web-v4", "web", "IPv4", 8080, "TCP", &ips)
        ),
    );
    let got: serde_json::Value = serde_json::from_str(&env.ok(&["get", "services", "-o", "json"])).unwrap();
    let vip = got["items"][0]["spec"]["clusterIP"].as_str().unwrap().to_string();
    assert_eq!(vip, "198.19.128.1", "{got}");
    let v = env.probe(env.pod_ns(0), &["connect", "--to", &format!("{vip}:80"), "--count", "5"]).unwrap();
    assert!(errors(&v).is_empty(), "{v}");
    assert_eq!(set(peers(&v)), set(vec![format!("{vip}:80")]));
}

#[test]
fn removing_a_backend_stops_new_connections_to_it() {
    let env = three_backends("remove");
    env.apply("web.yaml", &web(&env, ""));
    let ips = pod_ips(&env, false);
    env.apply("slice.yaml", &slice("web-v4", "web", "IPv4", 8080, "TCP", &ips[..2]));
    let v = env.probe(env.pod_ns(0), &["connect", "--to", "198.19.0.1:80", "--count", "30"]).unwrap();
    let names: BTreeSet<String> = env.topo.pods()[1..=2].iter().map(|p| p.name.clone()).collect();
    assert_eq!(set(backends(&v)), names, "{v}");
}

#[test]
fn bad_input_is_refused_with_file_object_and_field_and_changes_nothing() {
    let env = three_backends("badinput");
    env.apply("web.yaml", &web(&env, ""));
    let before = env.ok(&["bpf", "lb", "list", "--bpffs", env.pin_dir().to_str().unwrap()]);
    let cases = [
        ("yaml.yaml", "apiVersion: v1\nkind: Service\n  metadata: [\n", "not valid YAML"),
        ("kind.yaml", "apiVersion: v1\nkind: Gizmo\nmetadata: {name: g}\n", "kind: unknown kind \"Gizmo\""),
        ("ip.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {clusterIP: 198.19.0.300, ports: [{port: 80}]}\n", "Service default/x: spec.clusterIP"),
        ("port.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {clusterIP: 198.19.0.3, ports: [{port: 0}]}\n", "Service default/x: spec.ports[0].port"),
        ("dup.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {clusterIP: 198.19.0.1, ports: [{port: 80}]}\n", "198.19.0.1:80/TCP is already used by Service default/web"),
        ("named.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: 198.19.0.1, ports: [{name: q, port: 80, targetPort: nothere}]}\n---\n", "spec.ports[0].targetPort"),
    ];
    for (file, text, want) in cases {
        // Each bad document rides along with a good change that must not land.
        let good = "apiVersion: v1\nkind: Service\nmetadata: {name: good}\nspec: {clusterIP: 198.19.0.4, ports: [{port: 80}]}\n---\n";
        let p = env.write(file, &format!("{good}{text}"));
        let o = env.cli(&["apply", "-f", p.to_str().unwrap()]).unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{file} was accepted");
        assert!(err.contains(p.to_str().unwrap()), "{file}: error does not name the file: {err}");
        assert!(err.contains(want), "{file}: expected {want:?} in: {err}");
        let after = env.ok(&["bpf", "lb", "list", "--bpffs", env.pin_dir().to_str().unwrap()]);
        assert_eq!(after, before, "{file} changed the maps");
    }
    // And the service still works.
    let v = env.probe(env.pod_ns(0), &["connect", "--to", "198.19.0.1:80", "--count", "3"]).unwrap();
    assert!(errors(&v).is_empty(), "{v}");
}

#[test]
fn agent_restart_keeps_connections_and_service_and_leaks_nothing() {
    let mut env = three_backends("restart");
    env.apply("web.yaml", &web(&env, ""));
    let dump_before = env.ok(&["bpf", "lb", "list", "--bpffs", env.pin_dir().to_str().unwrap()]);
    // A long-lived connection, opened before the crash.
    let held = sluice_testbed::proc::spawn_in_capture(
        Some(env.pod_ns(0)),
        Some(&env.cgroup),
        &bin("sluice-probe"),
        &["connect", "--to", "198.19.0.1:80", "--hold", "4"],
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    env.kill_agent();
    // While the agent is down, new connections still work.
    let v = env.probe(env.pod_ns(0), &["connect", "--to", "198.19.0.1:80", "--count", "10"]).unwrap();
    assert!(errors(&v).is_empty(), "agent down: {v}");
    assert_eq!(set(peers(&v)), set(vec!["198.19.0.1:80".into()]));
    env.start_agent().unwrap();
    // The long-lived connection never saw an error.
    let out = held.wait_output(std::time::Duration::from_secs(10)).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "held connection failed: {text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains("\"error\":\"") && text.lines().count() >= 20, "{text}");
    // Nothing duplicated or leaked: same map contents, eight cgroup links
    // (device links live in links/pod, links/host and links/xdp), and eight
    // socket programs plus the four tcx device programs and the XDP one pinned.
    let dump_after = env.ok(&["bpf", "lb", "list", "--bpffs", env.pin_dir().to_str().unwrap()]);
    assert_eq!(dump_after, dump_before);
    let links = std::fs::read_dir(env.pin_dir().join("links")).unwrap().filter(|e| e.as_ref().unwrap().file_type().unwrap().is_file()).count();
    assert_eq!(links, 8);
    let progs = std::fs::read_dir(env.pin_dir().join("progs")).unwrap().count();
    assert_eq!(progs, 13);
    let o = std::process::Command::new("bpftool").args(["cgroup", "show", env.cgroup.path().to_str().unwrap()]).output().unwrap();
    let attached = String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.contains("sl_")).count();
    assert_eq!(attached, 8, "{}", String::from_utf8_lossy(&o.stdout));
    let v = env.probe(env.pod_ns(0), &["connect", "--to", "198.19.0.1:80", "--count", "5"]).unwrap();
    assert!(errors(&v).is_empty(), "after restart: {v}");
}
