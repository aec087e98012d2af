//! `sluice socket kill`: sockets connected to a destination are destroyed
//! in every namespace, and nothing else is. Run as root.

use std::time::Duration;

use sluice_e2e::*;
use sluice_testbed::proc::spawn_in_capture;

#[test]
fn kill_by_destination_ends_tcp_and_connected_udp_and_spares_bystanders() {
    let mut env = Env::new("sockkill", 3).unwrap();
    for i in 1..=2 {
        let a = format!("{}:8080", env.topo.pods()[i].ip4);
        env.serve(i, &["--tcp", &a, "--udp", &a]).unwrap();
    }
    let target = format!("{}:8080", env.topo.pods()[1].ip4);
    let bystander = format!("{}:8080", env.topo.pods()[2].ip4);
    let hold = |to: &str, extra: &[&str]| {
        let mut a = vec!["connect", "--to", to, "--hold", "5"];
        a.extend_from_slice(extra);
        spawn_in_capture(Some(env.pod_ns(0)), None, &bin("sluice-probe"), &a).unwrap()
    };
    let tcp = hold(&target, &[]);
    let udp = hold(&target, &["--connected-udp"]);
    let other_tcp = hold(&bystander, &[]);
    let other_udp = hold(&bystander, &["--connected-udp"]);
    std::thread::sleep(Duration::from_millis(700));

    // A dry run lists the two client sockets and destroys nothing.
    let pod0 = env.pod_ns(0).path().to_str().unwrap().to_string();
    let out = env.ok(&["socket", "kill", "--dst", &target, "--dry-run", "--netns", &pod0, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let socks = v["sockets"].as_array().unwrap();
    let protos: Vec<&str> = socks.iter().map(|s| s["proto"].as_str().unwrap()).collect();
    assert_eq!(socks.len(), 2, "{out}");
    assert!(protos.contains(&"TCP") && protos.contains(&"UDP"), "{out}");
    assert!(socks.iter().all(|s| s["destroyed"] == false), "{out}");
    std::thread::sleep(Duration::from_millis(300));

    // The real thing, across every namespace on the host.
    let out = env.ok(&["socket", "kill", "--dst", &target, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let socks = v["sockets"].as_array().unwrap();
    assert_eq!(socks.len(), 2, "only the two client sockets match: {out}");
    assert!(socks.iter().all(|s| s["destroyed"] == true), "{out}");

    let text = |s: sluice_testbed::proc::Spawned| {
        let o = s.wait_output(Duration::from_secs(15)).unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stdout).to_string())
    };
    let (ok, t) = text(tcp);
    assert!(!ok && t.contains("ECONNABORTED"), "TCP client should see ECONNABORTED: {t}");
    let (ok, t) = text(udp);
    assert!(!ok && t.contains("\"error\":\"E"), "connected UDP client should fail: {t}");
    // Bystanders: other destinations, and the listening sockets.
    for (name, s) in [("tcp bystander", other_tcp), ("udp bystander", other_udp)] {
        let (ok, t) = text(s);
        assert!(ok && !t.contains("\"error\":\"E"), "{name} was hurt: {t}");
    }
    let v = env.probe(env.pod_ns(0), &["connect", "--to", &target, "--count", "2"]).unwrap();
    assert!(errors(&v).is_empty(), "the listener must survive: {v}");
}

#[test]
fn kill_rejects_bad_destinations() {
    let env = Env::new("sockbad", 1).unwrap();
    for bad in ["nonsense", "198.18.1.1:0", "198.18.1.1:99999"] {
        let o = env.cli(&["socket", "kill", "--dst", bad, "--dry-run"]).unwrap();
        assert!(!o.status.success(), "{bad} accepted");
        assert!(String::from_utf8_lossy(&o.stderr).contains("--dst"), "{bad}: {}", String::from_utf8_lossy(&o.stderr));
    }
}
