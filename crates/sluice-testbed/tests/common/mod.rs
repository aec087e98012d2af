//! Shared helpers for the root-only integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use sluice_testbed::netns::Netns;
use sluice_testbed::proc::{run_in, spawn_ready, Spawned};

/// Skip (pass) the test unless we are root: the test bed needs
/// CAP_SYS_ADMIN and CAP_NET_ADMIN.
#[macro_export]
macro_rules! root_or_skip {
    () => {
        if !sluice_testbed::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}

pub fn probe_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_sluice-probe"))
}

/// `sluice-probe serve --name NAME args...` in `ns`, once it is ready.
pub fn serve(ns: &Netns, name: &str, args: &[&str]) -> Spawned {
    let mut a = vec!["serve", "--name", name];
    a.extend_from_slice(args);
    spawn_ready(Some(ns), None, probe_bin(), &a).unwrap()
}

/// `sluice-probe connect args...` in `ns`; its JSON report.
pub fn connect(ns: &Netns, args: &[&str]) -> Value {
    let mut a = vec!["connect"];
    a.extend_from_slice(args);
    let o = run_in(Some(ns), None, probe_bin(), &a, Duration::from_secs(30)).unwrap();
    assert!(
        o.status.success(),
        "probe {a:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

pub fn field(v: &Value, f: &str) -> Vec<String> {
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r[f].as_str().map(String::from))
        .collect()
}

pub fn set(v: Vec<String>) -> std::collections::BTreeSet<String> {
    v.into_iter().collect()
}

pub fn netns_list() -> String {
    sluice_testbed::run("ip", &["netns", "list"]).unwrap()
}

/// The host namespace's links (names only); read, never changed.
pub fn host_links() -> Vec<String> {
    let out = sluice_testbed::run("ip", &["-o", "link", "show"]).unwrap();
    let mut v: Vec<String> = out
        .lines()
        .filter_map(|l| l.split(": ").nth(1).map(String::from))
        .collect();
    v.sort();
    v
}

/// None of `names` is still listed by `ip netns list` (deletion is
/// synchronous, but allow a moment).
pub fn assert_netns_gone(names: &[String]) {
    for _ in 0..100 {
        let list = netns_list();
        if names.iter().all(|n| {
            !list
                .lines()
                .any(|l| l.split_whitespace().next() == Some(n.as_str()))
        }) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("namespaces left over: {names:?} in\n{}", netns_list());
}

pub fn assert_path_gone(p: &Path) {
    assert!(!p.exists(), "{} left over", p.display());
}
