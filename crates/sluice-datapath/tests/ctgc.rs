//! Conntrack/NAT garbage collection and the simulator on real (unpinned)
//! maps (root): entries written with old `last_seen_ns`, one sweep, and
//! what remains is checked; the simulator's kernel reader agrees with the
//! in-memory one.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::require_root;
use libbpf_rs::{MapCore, MapFlags};
use sluice_datapath::ctgc::{monotonic_ns, sweep};
use sluice_datapath::encode::{addr_octets, Pod};
use sluice_datapath::pod::LoadedDevices;
use sluice_datapath::skel_host::types as host;
use sluice_datapath::skel_lxc::types as lxc;

const S: u64 = 1_000_000_000;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn la(a: IpAddr) -> lxc::sl_addr {
    lxc::sl_addr { b: addr_octets(a) }
}

fn ha(a: IpAddr) -> host::sl_addr {
    host::sl_addr { b: addr_octets(a) }
}

/// A conntrack pair client -> frontend -> backend (either half can be left out).
fn ct_pair(d: &LoadedDevices, client: &str, fe: &str, be: &str, fwd_seen: Option<u64>, rev_seen: Option<u64>, lifetime: u32) {
    let m = d.map("sl_ct_v1").unwrap();
    let (c, f, b) = (sa(client), sa(fe), sa(be));
    let val = |nat: SocketAddr, seen: u64| lxc::sl_ct_val {
        nat_addr: la(nat.ip()),
        nat_port: nat.port().to_be(),
        flags: 0,
        rev_nat_id: 1,
        backend_id: 1,
        lifetime_s: lifetime,
        last_seen_ns: seen,
        created_ns: seen,
    };
    if let Some(seen) = fwd_seen {
        let k = lxc::sl_ct_key { saddr: la(c.ip()), daddr: la(f.ip()), sport: c.port().to_be(), dport: f.port().to_be(), proto: 6, dir: 0, pad: 0 };
        m.update(k.as_bytes(), val(b, seen).as_bytes(), MapFlags::ANY).unwrap();
    }
    if let Some(seen) = rev_seen {
        let k = lxc::sl_ct_key { saddr: la(b.ip()), daddr: la(c.ip()), sport: b.port().to_be(), dport: c.port().to_be(), proto: 6, dir: 1, pad: 0 };
        m.update(k.as_bytes(), val(f, seen).as_bytes(), MapFlags::ANY).unwrap();
    }
}

/// A NAT pair pod -> remote, source rewritten to `masq`.
fn nat_pair(d: &LoadedDevices, pod: &str, remote: &str, masq: &str, out_seen: Option<u64>, in_seen: Option<u64>, lifetime: u32) {
    let m = d.map("sl_snat_v1").unwrap();
    let (p, r, n) = (sa(pod), sa(remote), sa(masq));
    let val = |a: SocketAddr, seen: u64| host::sl_nat_val { addr: ha(a.ip()), port: a.port().to_be(), flags: 0, lifetime_s: lifetime, last_seen_ns: seen };
    if let Some(seen) = out_seen {
        let k = host::sl_nat_key { saddr: ha(p.ip()), daddr: ha(r.ip()), sport: p.port().to_be(), dport: r.port().to_be(), proto: 6, dir: 0, pad: 0 };
        m.update(k.as_bytes(), val(n, seen).as_bytes(), MapFlags::ANY).unwrap();
    }
    if let Some(seen) = in_seen {
        let k = host::sl_nat_key { saddr: ha(r.ip()), daddr: ha(n.ip()), sport: r.port().to_be(), dport: n.port().to_be(), proto: 6, dir: 1, pad: 0 };
        m.update(k.as_bytes(), val(p, seen).as_bytes(), MapFlags::ANY).unwrap();
    }
}

#[test]
fn sweep_deletes_expired_pairs_and_old_orphans() {
    require_root();
    let d = LoadedDevices::load().unwrap();
    // The sweep takes its clock as an argument; entries are dated against
    // a "now" far enough from boot for every age below.
    let now = monotonic_ns() + 1000 * S;
    let fe = "10.96.0.1:80";
    // Live pair; expired pair; followed entry expired (both go); reverse
    // expired but forward alive (both stay); old and young orphans.
    ct_pair(&d, "10.1.0.1:1001", fe, "10.2.0.1:8080", Some(now - S), Some(now - S), 60);
    ct_pair(&d, "10.1.0.2:1002", fe, "10.2.0.1:8080", Some(now - 100 * S), Some(now - 100 * S), 60);
    ct_pair(&d, "10.1.0.3:1003", fe, "10.2.0.1:8080", Some(now - 100 * S), Some(now - S), 60);
    ct_pair(&d, "10.1.0.4:1004", fe, "10.2.0.1:8080", Some(now - S), Some(now - 100 * S), 60);
    ct_pair(&d, "10.1.0.5:1005", fe, "10.2.0.1:8080", None, Some(now - 500 * S), 21600);
    ct_pair(&d, "10.1.0.6:1006", fe, "10.2.0.1:8080", Some(now - 500 * S), None, 21600);
    ct_pair(&d, "10.1.0.7:1007", fe, "10.2.0.1:8080", None, Some(now - 5 * S), 21600);
    ct_pair(&d, "[fd00:1::8]:1008", "[fd00:96::1]:80", "[fd00:2::1]:8080", Some(now - 100 * S), Some(now - 100 * S), 60);

    let masq = "192.0.2.10";
    nat_pair(&d, "10.1.0.1:1001", "203.0.113.1:443", &format!("{masq}:61001"), Some(now - S), Some(now - S), 60);
    nat_pair(&d, "10.1.0.2:1002", "203.0.113.1:443", &format!("{masq}:61002"), Some(now - 100 * S), Some(now - 100 * S), 60);
    nat_pair(&d, "10.1.0.3:1003", "203.0.113.1:443", &format!("{masq}:61003"), None, Some(now - 500 * S), 21600);
    nat_pair(&d, "10.1.0.4:1004", "203.0.113.1:443", &format!("{masq}:61004"), None, Some(now - 5 * S), 21600);
    // An OUT without its IN, alive: the datapath replaces it; not an orphan here.
    nat_pair(&d, "10.1.0.5:1005", "203.0.113.1:443", &format!("{masq}:61005"), Some(now - 500 * S), None, 21600);

    let c = sweep(&d.map("sl_ct_v1").unwrap(), &d.map("sl_snat_v1").unwrap(), now + S, Duration::from_secs(60)).unwrap();
    assert_eq!((c.ct_scanned, c.ct_expired, c.ct_orphans), (13, 6, 2), "{c:?}");
    assert_eq!((c.nat_scanned, c.nat_expired, c.nat_orphans), (7, 2, 1), "{c:?}");

    let dp = d.pod_datapath().unwrap();
    let mut left: Vec<(String, bool)> = dp.ct_entries().unwrap().into_iter().map(|e| (if e.reverse { e.dst } else { e.src }.to_string(), e.reverse)).collect();
    left.sort();
    assert_eq!(
        left,
        [
            ("10.1.0.1:1001".to_string(), false),
            ("10.1.0.1:1001".to_string(), true),
            ("10.1.0.4:1004".to_string(), false),
            ("10.1.0.4:1004".to_string(), true),
            ("10.1.0.7:1007".to_string(), true),
        ]
    );
    let mut left: Vec<(String, bool)> = dp.nat_entries().unwrap().into_iter().map(|e| (if e.inbound { e.nat } else { e.src }.to_string(), e.inbound)).collect();
    left.sort();
    assert_eq!(
        left,
        [
            ("10.1.0.1:1001".to_string(), false),
            ("10.1.0.1:1001".to_string(), true),
            ("10.1.0.4:1004".to_string(), true),
            ("10.1.0.5:1005".to_string(), false),
        ]
    );

    // A second sweep finds nothing more to do.
    let c = sweep(&d.map("sl_ct_v1").unwrap(), &d.map("sl_snat_v1").unwrap(), now + S, Duration::from_secs(60)).unwrap();
    assert_eq!((c.ct_expired, c.ct_orphans, c.nat_expired, c.nat_orphans), (0, 0, 0, 0), "{c:?}");
}

/// The kernel reader of the simulator against maps written by the agent's code.
#[test]
fn simulate_reads_the_kernel_maps() {
    use sluice_lb::maglev::{compute, flow_hash, TableSize};
    use sluice_lb::simulate::{flow_from_args, simulate, Origin, PacketPath, Selection};
    use sluice_lb::{BackendKey, DesiredFrontend, FrontendKey, LbMaps, LbState, Protocol, SVC_F_MAGLEV, SVC_F_NODEPORT};

    require_root();
    let d = LoadedDevices::load_sized(251).unwrap();
    let mut maps = d.lb_maps().unwrap();
    let node: IpAddr = "192.0.2.10".parse().unwrap();
    maps.set_node_addrs(&[node].into_iter().collect()).unwrap();
    let bes: Vec<BackendKey> = ["10.2.0.1", "10.2.0.2", "10.2.0.3"]
        .iter()
        .map(|a| BackendKey { addr: a.parse().unwrap(), port: 8080, proto: Protocol::TCP })
        .collect();
    let fe = DesiredFrontend {
        key: FrontendKey::node_port(false, 30080, Protocol::TCP),
        flags: SVC_F_NODEPORT | SVC_F_MAGLEV,
        affinity_timeout: 0,
        port_name: String::new(),
        backends: bes.clone(),
        serving: bes.clone(),
    };
    let mut st = LbState::new();
    st.set_maglev_size(TableSize::new(251).unwrap());
    let ops = st.set_service("default/web", &[fe]);
    maps.apply(&ops).unwrap();
    let mut cfg = d.pod_datapath().unwrap().node_config().unwrap();
    cfg.masq_ip4 = Some("192.0.2.10".parse().unwrap());
    d.pod_datapath().unwrap().set_node_config(&cfg).unwrap();

    let sim = sluice_datapath::simulate::KernelSim::from_source(&|n| d.map(n)).unwrap();
    let table = compute(&bes, TableSize::new(251).unwrap());
    for sport in 2000..2050u16 {
        let (t, _) = flow_from_args(&format!("198.51.100.1:{sport}"), "192.0.2.10:30080", "tcp").unwrap();
        let r = simulate(&sim, Origin::Outside, t, false).unwrap();
        let hash = flow_hash(t.src.ip(), t.dst.ip(), sport, 30080, 6);
        assert_eq!(r.selection, Some(Selection::Maglev { hash, slot: hash % 251, size: 251 }));
        let want = table.lookup(hash).unwrap();
        assert_eq!(r.backend.unwrap().addr, SocketAddr::new(want.addr, want.port));
        assert_eq!(r.path, PacketPath::RemoteSnat { snat_addr: node, ports: cfg.snat_ports });
    }
    // Not a node address: no frontend.
    let (t, _) = flow_from_args("198.51.100.1:2000", "192.0.2.99:30080", "tcp").unwrap();
    let r = simulate(&sim, Origin::Outside, t, false).unwrap();
    assert!(r.frontend.is_none());
}

/// --ct-max/--nat-max: both objects get the sizes; a pin of another size is
/// kept (libbpf could not reuse it otherwise) and reported.
#[test]
fn table_sizes_apply_and_a_pinned_size_is_kept_and_reported() {
    use sluice_datapath::loader::{pinned_table_sizes, TableSizes};
    require_root();
    // Under the prefix scripts/test.sh checks for leftovers; removed even
    // if an assertion fails.
    struct Pins(std::path::PathBuf);
    impl Drop for Pins {
        fn drop(&mut self) {
            let _ = sluice_datapath::uninstall(&self.0);
        }
    }
    let pins = Pins(std::path::PathBuf::from(format!("/sys/fs/bpf/sluice-e2e-sizing-{}", std::process::id())));
    let pin_dir = pins.0.clone();
    let cookie = sluice_datapath::fsutil::netns_cookie().unwrap();
    let sizes = TableSizes { ct_max: 1000, nat_max: 3000 };
    let (_, _, warnings) = sluice_datapath::pod::install_devices_with(&pin_dir, cookie, 251, &sizes).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(pinned_table_sizes(&pin_dir), (Some(1000), Some(3000)));

    let (_, _, warnings) = sluice_datapath::pod::install_devices_with(&pin_dir, cookie, 251, &TableSizes { ct_max: 2000, nat_max: 3000 }).unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("sl_ct_v1") && warnings[0].contains("1000") && warnings[0].contains("--ct-max"), "{}", warnings[0]);
    assert_eq!(pinned_table_sizes(&pin_dir), (Some(1000), Some(3000)));

    sluice_datapath::uninstall(&pin_dir).unwrap();
    assert!(!pin_dir.exists(), "uninstall removes the whole pin directory");
    drop(pins);
    assert!(TableSizes { ct_max: 0, nat_max: 1 }.validate().is_err());
    assert!(TableSizes { ct_max: 1, nat_max: (16 << 20) + 1 }.validate().is_err());
    assert!(TableSizes { ct_max: 100_000, nat_max: 16 << 20 }.validate().is_ok());
}
