//! When a backend leaves a service, the sockets that reached it through the
//! service are ended, in every namespace, and no other socket is; also
//! across an agent restart. Run as root.

use std::time::Duration;

use sluice_e2e::*;
use sluice_testbed::proc::{spawn_in_capture, Spawned};

fn service(name: &str, vip: &str, addrs: &[String], annotations: &str) -> String {
    let eps: Vec<String> = addrs.iter().map(|a| format!("- addresses: [{a}]")).collect();
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}{annotations}}}\nspec:\n  clusterIP: {vip}\n  ports:\n  - {{name: t, port: 80, targetPort: 8080}}\n  - {{name: u, port: 53, protocol: UDP, targetPort: 8080}}\n\
---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: t, port: 8080}}, {{name: u, port: 8080, protocol: UDP}}]\nendpoints:\n{}\n",
        eps.join("\n")
    )
}

struct Held {
    what: String,
    proc: Spawned,
}

/// (succeeded, first backend, output)
fn finish(h: Held) -> (String, bool, Option<String>, String) {
    let o = h.proc.wait_output(Duration::from_secs(20)).unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let first = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["backend"].as_str().map(String::from));
    (h.what, o.status.success() && !text.contains("\"error\":\"E"), first, text)
}

#[test]
fn a_removed_backends_sockets_end_and_nothing_else_does() {
    let mut env = Env::new("term", 4).unwrap();
    for i in 1..=3 {
        let a = format!("{}:8080", env.topo.pods()[i].ip4);
        env.serve(i, &["--tcp", &a, "--udp", &a]).unwrap();
    }
    let ip = |i: usize| env.topo.pods()[i].ip4.to_string();
    let (p1, p2, p3) = (ip(1), ip(2), ip(3));
    env.apply("web.yaml", &service("web", "198.19.0.1", &[p1.clone(), p2.clone()], ""));
    // Another service with the same backend, and one that opts out.
    env.apply("other.yaml", &service("other", "198.19.0.2", std::slice::from_ref(&p1), ""));
    env.apply(
        "keep.yaml",
        &service("keep", "198.19.0.3", std::slice::from_ref(&p1), ", annotations: {sluice.io/terminate-sockets: \"false\"}"),
    );

    let hold = |what: &str, to: &str, udp: bool, in_cgroup: bool| {
        let mut a = vec!["connect", "--to", to, "--hold", "6"];
        if udp {
            a.push("--connected-udp");
        }
        let cg = if in_cgroup { Some(&env.cgroup) } else { None };
        Held { what: what.to_string(), proc: spawn_in_capture(Some(env.pod_ns(0)), cg, &bin("sluice-probe"), &a).unwrap() }
    };
    let mut through_web = Vec::new();
    for k in 0..4 {
        through_web.push(hold(&format!("web tcp {k}"), "198.19.0.1:80", false, true));
        through_web.push(hold(&format!("web udp {k}"), "198.19.0.1:53", true, true));
    }
    let direct = format!("{p1}:8080");
    let bystanders = vec![
        hold("direct tcp to the backend", &direct, false, true),
        hold("direct udp to the backend", &direct, true, true),
        hold("other service tcp", "198.19.0.2:80", false, true),
        hold("other service udp", "198.19.0.2:53", true, true),
        hold("opted-out service tcp", "198.19.0.3:80", false, true),
    ];
    std::thread::sleep(Duration::from_millis(800));

    // The record of which socket went where lives with the sockets:
    // an agent crash and restart in between loses nothing.
    env.kill_agent();
    env.start_agent().unwrap();

    // pod1 leaves web (and the opted-out service, whose sockets stay).
    env.apply("web.yaml", &service("web", "198.19.0.1", std::slice::from_ref(&p2), ""));
    env.apply(
        "keep.yaml",
        &service("keep", "198.19.0.3", std::slice::from_ref(&p3), ", annotations: {sluice.io/terminate-sockets: \"false\"}"),
    );

    let pod1 = env.topo.pods()[1].name.clone();
    let mut ended = 0;
    for h in through_web {
        let (what, ok, first, text) = finish(h);
        let first = first.unwrap_or_else(|| panic!("{what}: no answer at all: {text}"));
        if first == pod1 {
            assert!(!ok, "{what} reached the removed backend and was not ended: {text}");
            ended += 1;
            if what.contains("tcp") {
                assert!(text.contains("ECONNABORTED"), "{what}: {text}");
            }
        } else {
            assert!(ok, "{what} on a live backend was hurt: {text}");
        }
    }
    for h in bystanders {
        let (what, ok, _, text) = finish(h);
        assert!(ok, "{what} was hurt: {text}");
    }
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["socket", "events", "-o", "json"])).unwrap();
    assert_eq!(v["destroyed_total"].as_u64(), Some(ended), "{v}");
    let events = v["events"].as_array().unwrap();
    assert!(events.iter().all(|e| e["service"] == "default/web"), "{v}");
    // New connections through the VIP land on the live backend.
    let v = env.probe(env.pod_ns(0), &["connect", "--to", "198.19.0.1:80", "--count", "6"]).unwrap();
    assert!(errors(&v).is_empty(), "{v}");
    assert!(backends(&v).iter().all(|b| *b != pod1), "{v}");
}
