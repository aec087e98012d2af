//! The agent's side of CNI against a fake kernel: addresses, records,
//! idempotency, crash recovery, GC, without privileges.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::rc::Rc;

use sluice_agent::ipam::Cidr;
use sluice_agent::pods::{host_ifname, EndpointRecord, EpState, LinkInfo, LinkSpec, PodNet, Pods};
use sluice_api::{cni_code, Attachment, CniAdd, CniCheck, CniDel};
use sluice_store::{Store, Table};

#[derive(Default)]
struct Kernel {
    /// host device -> (ifindex, spec it was made from)
    devices: BTreeMap<String, (u32, LinkSpec)>,
    attached: BTreeSet<String>,
    endpoints: BTreeMap<IpAddr, u32>,
    next_ifindex: u32,
    fail_setup: bool,
    fail_check: Option<String>,
}

#[derive(Clone, Default)]
struct Fake(Rc<RefCell<Kernel>>);

impl PodNet for Fake {
    fn setup(&mut self, spec: &LinkSpec) -> Result<LinkInfo, String> {
        let mut k = self.0.borrow_mut();
        if k.fail_setup {
            return Err("netlink said no".into());
        }
        k.next_ifindex += 1;
        let i = k.next_ifindex;
        k.devices.insert(spec.host_ifname.clone(), (i, spec.clone()));
        Ok(LinkInfo { host_ifindex: i, host_mac: [2, 0, 0, 0, 0, i as u8], pod_mac: [2, 1, 0, 0, 0, i as u8] })
    }
    fn teardown(&mut self, host_ifname: &str) -> Result<(), String> {
        self.0.borrow_mut().devices.remove(host_ifname);
        Ok(())
    }
    fn check(&mut self, spec: &LinkSpec, _: &LinkInfo) -> Result<(), String> {
        let k = self.0.borrow();
        if !k.devices.contains_key(&spec.host_ifname) {
            return Err("host device gone".into());
        }
        match &k.fail_check {
            Some(m) => Err(m.clone()),
            None => Ok(()),
        }
    }
    fn host_link(&mut self, name: &str) -> Option<u32> {
        self.0.borrow().devices.get(name).map(|d| d.0)
    }
    fn attach(&mut self, host_ifname: &str, _: u32) -> Result<(), String> {
        self.0.borrow_mut().attached.insert(host_ifname.into());
        Ok(())
    }
    fn detach(&mut self, host_ifname: &str) -> Result<(), String> {
        self.0.borrow_mut().attached.remove(host_ifname);
        Ok(())
    }
    fn set_endpoint(&mut self, ip: IpAddr, id: u32, _: &LinkInfo) -> Result<(), String> {
        self.0.borrow_mut().endpoints.insert(ip, id);
        Ok(())
    }
    fn delete_endpoint(&mut self, ip: IpAddr) -> Result<(), String> {
        self.0.borrow_mut().endpoints.remove(&ip);
        Ok(())
    }
    fn endpoint_ips(&mut self) -> Result<Vec<IpAddr>, String> {
        Ok(self.0.borrow().endpoints.keys().copied().collect())
    }
    fn attached(&mut self) -> Vec<String> {
        self.0.borrow().attached.iter().cloned().collect()
    }
    fn host_links(&mut self) -> Result<Vec<String>, String> {
        Ok(self.0.borrow().devices.keys().filter(|d| sluice_agent::pods::is_host_ifname(d)).cloned().collect())
    }
}

struct T {
    dir: tempfile::TempDir,
    netns: String,
    kernel: Fake,
}

impl T {
    fn new() -> T {
        let dir = tempfile::tempdir().unwrap();
        // Any existing path stands for the pod's namespace here.
        let netns = dir.path().to_str().unwrap().to_string();
        T { dir, netns, kernel: Fake::default() }
    }
    fn pods(&self, cidrs: &[&str]) -> (Pods<Fake>, Vec<String>) {
        let cidrs: Vec<Cidr> = cidrs.iter().map(|c| c.parse().unwrap()).collect();
        let store = Store::open(&self.dir.path().join("state")).unwrap();
        Pods::new(store, &cidrs, self.kernel.clone()).unwrap()
    }
    fn add(&self, id: &str) -> CniAdd {
        CniAdd {
            attachment: att(id),
            netns: self.netns.clone(),
            network: "sluice".into(),
            pod_name: Some(format!("pod-{id}")),
            pod_namespace: Some("shop".into()),
            mtu: None,
        }
    }
    fn del(&self, id: &str) -> CniDel {
        CniDel { attachment: att(id), netns: self.netns.clone(), network: "sluice".into() }
    }
    fn k(&self) -> std::cell::Ref<'_, Kernel> {
        self.kernel.0.borrow()
    }
}

fn att(id: &str) -> Attachment {
    Attachment { container_id: id.into(), ifname: "eth0".into() }
}

const DUAL: &[&str] = &["10.0.0.0/24", "fd00:1::/112"];

#[test]
fn add_sets_up_a_dual_stack_pod_and_del_removes_everything() {
    let t = T::new();
    let (mut pods, _) = t.pods(DUAL);
    let r = pods.add(&t.add("c1")).unwrap();
    assert_eq!(r.ips.len(), 2);
    assert_eq!(r.ips[0].address, "10.0.0.2/32");
    assert_eq!(r.ips[0].gateway.as_deref(), Some("10.0.0.1"));
    assert_eq!(r.ips[1].address, "fd00:1::1/128");
    assert_eq!(r.ips[1].gateway.as_deref(), Some("fe80::1"));
    assert!(r.routes.iter().any(|x| x.dst == "0.0.0.0/0" && x.gw.as_deref() == Some("10.0.0.1")));
    assert!(r.routes.iter().any(|x| x.dst == "::/0"));
    assert_eq!(r.host_ifname, host_ifname(&att("c1")));
    assert!(r.host_ifname.len() <= 15);
    assert_eq!(r.mtu, 1500);
    {
        let k = t.k();
        assert_eq!(k.devices.len(), 1);
        assert!(k.attached.contains(&r.host_ifname));
        assert_eq!(k.endpoints.len(), 2);
    }
    // ADD again: the same answer, nothing new.
    assert_eq!(pods.add(&t.add("c1")).unwrap(), r);
    assert_eq!(t.k().devices.len(), 1);
    let list = pods.list(|ns, n| {
        assert_eq!((ns, n), ("shop", "pod-c1"));
        [("app".to_string(), "web".to_string())].into()
    });
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].state, "ready");
    assert_eq!(list[0].labels["app"], "web");
    assert_eq!(pods.pod_of("10.0.0.2".parse().unwrap()).as_deref(), Some("shop/pod-c1"));

    assert!(pods.del(&t.del("c1")).unwrap().contains("deleted"));
    {
        let k = t.k();
        assert!(k.devices.is_empty() && k.attached.is_empty() && k.endpoints.is_empty());
    }
    assert!(pods.del(&t.del("c1")).unwrap().contains("nothing to delete"));
    assert!(pods.ipam().allocations().is_empty());
    let store = Store::open(&t.dir.path().join("state"));
    // The store is in use by `pods`; its tables are checked after a restart below.
    drop(store);
    drop(pods);
    let (pods, warnings) = t.pods(DUAL);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(pods.is_empty());
}

#[test]
fn addresses_survive_a_restart_and_are_never_given_twice() {
    let t = T::new();
    let (mut pods, _) = t.pods(&["10.0.0.0/29"]);
    let a = pods.add(&t.add("a")).unwrap();
    drop(pods);
    let (mut pods, warnings) = t.pods(&["10.0.0.0/29"]);
    assert!(warnings.is_empty(), "{warnings:?}");
    let b = pods.add(&t.add("b")).unwrap();
    assert_ne!(a.ips[0].address, b.ips[0].address);
    // Five usable addresses in a /29.
    for i in 0..3 {
        pods.add(&t.add(&format!("x{i}"))).unwrap();
    }
    let e = pods.add(&t.add("full")).unwrap_err();
    assert_eq!(e.code, cni_code::POOL_EXHAUSTED, "{e:?}");
    assert!(e.msg.contains("10.0.0.0/29"), "{e:?}");
    // The refused ADD left nothing.
    assert_eq!(t.k().devices.len(), 5);
    assert_eq!(pods.len(), 5);
    let status = pods.status().unwrap_err();
    assert_eq!(status.code, cni_code::PLUGIN_NOT_AVAILABLE);
    pods.del(&t.del("a")).unwrap();
    assert!(pods.status().unwrap().starts_with("ready"));
}

#[test]
fn a_failed_setup_leaves_nothing() {
    let t = T::new();
    let (mut pods, _) = t.pods(DUAL);
    t.kernel.0.borrow_mut().fail_setup = true;
    let e = pods.add(&t.add("c1")).unwrap_err();
    assert_eq!(e.code, cni_code::SETUP_FAILED);
    assert!(e.msg.contains("netlink said no"), "{e:?}");
    assert!(pods.is_empty());
    assert!(pods.ipam().allocations().is_empty());
    drop(pods);
    let (pods, warnings) = t.pods(DUAL);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(pods.is_empty());
}

#[test]
fn an_add_interrupted_by_a_crash_is_undone_at_restart() {
    let t = T::new();
    let (mut pods, _) = t.pods(DUAL);
    pods.add(&t.add("keep")).unwrap();
    drop(pods);
    // What a crash after the allocation and the device, before "ready", leaves.
    let store = Store::open(&t.dir.path().join("state")).unwrap();
    let a = att("crashed");
    let host = host_ifname(&a);
    let rec = EndpointRecord {
        id: 9,
        attachment: a.clone(),
        network: "sluice".into(),
        netns: t.netns.clone(),
        pod_name: None,
        pod_namespace: None,
        ips: vec!["10.0.0.50".parse().unwrap()],
        host_ifname: host.clone(),
        mtu: 1500,
        link: None,
        state: EpState::Creating,
    };
    store
        .write(&[
            (Table::Endpoints, a.to_string(), Some(serde_json::to_vec(&rec).unwrap())),
            (Table::Ipam, "10.0.0.50".into(), Some(serde_json::to_vec(&a.to_string()).unwrap())),
            // An allocation whose endpoint record never made it.
            (Table::Ipam, "10.0.0.51".into(), Some(serde_json::to_vec(&"ghost/eth0").unwrap())),
        ])
        .unwrap();
    drop(store);
    {
        let mut k = t.kernel.0.borrow_mut();
        k.devices.insert(host.clone(), (99, LinkSpec { host_ifname: host.clone(), pod_ifname: "eth0".into(), netns: t.netns.clone().into(), mtu: 1500, ips: vec![], gateway4: None }));
        k.attached.insert(host.clone());
        k.endpoints.insert("10.0.0.50".parse().unwrap(), 9);
        // And a map entry nobody owns.
        k.endpoints.insert("10.0.0.77".parse().unwrap(), 12);
        // A device of an ADD that died before its commit, and one not ours.
        let orphan = host_ifname(&att("died-before-commit"));
        for d in [orphan.clone(), "eth7".to_string()] {
            k.devices.insert(d.clone(), (98, LinkSpec { host_ifname: d, pod_ifname: "eth0".into(), netns: t.netns.clone().into(), mtu: 1500, ips: vec![], gateway4: None }));
        }
        k.attached.insert(orphan);
    }
    let (mut pods, warnings) = t.pods(DUAL);
    assert!(warnings.iter().any(|w| w.contains("undoing the unfinished ADD of crashed/eth0")), "{warnings:?}");
    assert!(warnings.iter().any(|w| w.contains("releasing 10.0.0.51")), "{warnings:?}");
    assert_eq!(pods.len(), 1);
    {
        let k = t.k();
        assert!(!k.devices.contains_key(&host));
        assert!(!k.attached.contains(&host));
        assert!(!k.devices.contains_key(&host_ifname(&att("died-before-commit"))));
        assert!(k.attached.len() == 1 && k.devices.contains_key("eth7"), "only ours are removed");
        let ips: Vec<String> = k.endpoints.keys().map(|i| i.to_string()).collect();
        assert_eq!(ips.len(), 2, "only keep's two addresses: {ips:?}");
        assert!(!ips.contains(&"10.0.0.50".to_string()) && !ips.contains(&"10.0.0.77".to_string()));
    }
    let owners: Vec<String> = pods.ipam().allocations().into_iter().map(|(_, o)| o).collect();
    assert!(owners.iter().all(|o| o == "keep/eth0"), "{owners:?}");
    // The runtime's DEL and a new ADD of the crashed pod both work.
    pods.del(&t.del("crashed")).unwrap();
    pods.add(&t.add("crashed")).unwrap();
    assert_eq!(pods.len(), 2);
}

#[test]
fn check_reports_changes() {
    let t = T::new();
    let (mut pods, _) = t.pods(DUAL);
    let r = pods.add(&t.add("c1")).unwrap();
    let prev = serde_json::json!({"ips": [{"address": "10.0.0.2/32"}, {"address": "fd00:1::1/128"}]});
    let check = |prev: serde_json::Value| CniCheck { attachment: att("c1"), netns: t.netns.clone(), network: "sluice".into(), prev_result: Some(prev) };
    pods.check(&check(prev.clone())).unwrap();
    let e = pods.check(&check(serde_json::json!({"ips": [{"address": "10.0.0.9/32"}]}))).unwrap_err();
    assert_eq!(e.code, cni_code::CHECK_FAILED);
    t.kernel.0.borrow_mut().fail_check = Some("eth0 lost its address 10.0.0.2".into());
    let e = pods.check(&check(prev.clone())).unwrap_err();
    assert_eq!(e.code, cni_code::CHECK_FAILED);
    assert!(e.msg.contains("lost its address"), "{e:?}");
    t.kernel.0.borrow_mut().fail_check = None;
    t.kernel.0.borrow_mut().devices.remove(&r.host_ifname);
    assert!(pods.check(&check(prev.clone())).unwrap_err().msg.contains("gone"));
    let unknown = CniCheck { attachment: att("nope"), netns: t.netns.clone(), network: "sluice".into(), prev_result: None };
    assert_eq!(pods.check(&unknown).unwrap_err().code, cni_code::CONTAINER_UNKNOWN);
    // ADD of a pod whose device vanished sets it up again.
    let again = pods.add(&t.add("c1")).unwrap();
    assert_ne!(again.host_mac, r.host_mac);
}

#[test]
fn missing_namespace_and_gc() {
    let t = T::new();
    let (mut pods, _) = t.pods(DUAL);
    let mut bad = t.add("c0");
    bad.netns = "/run/netns/sl-does-not-exist".into();
    let e = pods.add(&bad).unwrap_err();
    assert_eq!(e.code, cni_code::CONTAINER_UNKNOWN);
    assert!(e.msg.contains("sl-does-not-exist"));
    for i in 0..5 {
        pods.add(&t.add(&format!("c{i}"))).unwrap();
    }
    let mut other = t.add("o1");
    other.network = "other-net".into();
    pods.add(&other).unwrap();
    let msg = pods.gc("sluice", &[att("c1"), att("c3")]).unwrap();
    assert_eq!(msg, "released 3 attachment(s)");
    let left: BTreeSet<String> = pods.list(|_, _| BTreeMap::new()).into_iter().map(|e| e.attachment.container_id).collect();
    assert_eq!(left, ["c1", "c3", "o1"].iter().map(|s| s.to_string()).collect());
    assert_eq!(t.k().devices.len(), 3);
    assert_eq!(t.k().endpoints.len(), 6);
}

#[test]
fn a_hundred_pods_leave_nothing_behind() {
    let t = T::new();
    let (mut pods, _) = t.pods(DUAL);
    for i in 0..100 {
        pods.add(&t.add(&format!("p{i}"))).unwrap();
    }
    let ips: BTreeSet<IpAddr> = pods.ipam().allocations().into_iter().map(|(a, _)| a).collect();
    assert_eq!(ips.len(), 200);
    let devs: BTreeSet<String> = t.k().devices.keys().cloned().collect();
    assert_eq!(devs.len(), 100, "host device names are distinct");
    for i in 0..100 {
        pods.del(&t.del(&format!("p{i}"))).unwrap();
    }
    assert!(pods.ipam().allocations().is_empty());
    let k = t.k();
    assert!(k.devices.is_empty() && k.attached.is_empty() && k.endpoints.is_empty());
}
