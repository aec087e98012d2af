//! The kernel side of pods: veth pairs, addresses and routes over netlink
//! (rtnetlink), and the pod datapath (tc filters, endpoint map).
//!
//! Netlink sockets belong to the network namespace of the thread that
//! opens them, so each operation runs on a short-lived thread: one in the
//! agent's own namespace for the host side, one that has entered the pod's
//! namespace (`setns`) for the pod side. The agent's other threads never
//! change namespace.
//!
//! Layout of a pod (IPv4 and IPv6 both optional):
//!
//! ```text
//!  pod netns                                   agent's netns (the node)
//!  eth0: 10.244.0.5/32, fd00::5/128    veth    slXXXXXXXXXXXX: 10.244.0.1/32 (the gateway), fe80::1/64
//!  10.244.0.1 dev eth0 scope link  <-------->  route 10.244.0.5/32 dev slXXXX
//!  default via 10.244.0.1                      route fd00::5/128 dev slXXXX
//!  ::/0 via fe80::1 dev eth0                   tc ingress sl_from_pod, tc egress sl_to_pod
//! ```

use std::fs::File;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteScope, RouteVia};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};
use sluice_datapath::pod::{EndpointEntry, PodDatapath};

use crate::pods::{LinkInfo, LinkSpec, PodNet, GATEWAY6};

/// Run `f` with a netlink handle in `netns` (None: the agent's own), on a
/// thread of its own.
fn nl<R, F, Fut>(netns: Option<&Path>, f: F) -> Result<R, String>
where
    R: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<R, String>>,
{
    let ns_file = match netns {
        Some(p) => Some(File::open(p).map_err(|e| format!("opening network namespace {}: {e}", p.display()))?),
        None => None,
    };
    std::thread::scope(|s| {
        s.spawn(move || {
            if let Some(f) = ns_file {
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| format!("entering the pod's network namespace: {e}"))?;
            }
            let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| format!("netlink socket: {e}"))?;
                tokio::spawn(conn);
                f(handle).await
            })
        })
        .join()
        .unwrap_or_else(|_| Err("netlink thread panicked".into()))
    })
}

/// Write a `net.*` sysctl of the calling thread's network namespace.
fn sysctl(key: &str, value: &str) -> Result<(), String> {
    let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
    std::fs::write(&path, value).map_err(|e| format!("writing {}: {e}", path.display()))
}

fn nlerr(what: &str) -> impl Fn(rtnetlink::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>, String> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(l) => Ok(l),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(format!("looking up {name}: {e}")),
    }
}

fn mac_of(l: &LinkMessage) -> [u8; 6] {
    let mut m = [0u8; 6];
    for a in &l.attributes {
        if let LinkAttribute::Address(b) = a {
            if b.len() == 6 {
                m.copy_from_slice(b);
            }
        }
    }
    m
}

fn is_up(l: &LinkMessage) -> bool {
    l.header.flags.contains(LinkFlags::Up)
}

async fn add_addr(h: &Handle, index: u32, ip: IpAddr, prefix: u8) -> Result<(), String> {
    let mut req = h.address().add(index, ip, prefix);
    if ip.is_ipv6() {
        // No duplicate address detection: the address works at once.
        req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    req.execute().await.map_err(|e| format!("adding {ip}/{prefix}: {e}"))
}

async fn addrs_of(h: &Handle, index: u32) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    let mut s = h.address().get().set_link_index_filter(index).execute();
    while let Some(a) = s.try_next().await.map_err(nlerr("listing addresses"))? {
        for attr in &a.attributes {
            if let AddressAttribute::Address(ip) = attr {
                out.push(*ip);
            }
        }
    }
    Ok(out)
}

/// (destination/prefix, gateway) of every main-table route through `index`.
async fn routes_of(h: &Handle, index: u32) -> Result<Vec<(String, Option<IpAddr>)>, String> {
    let mut out = Vec::new();
    for family in [RouteMessageBuilder::<Ipv4Addr>::new().build(), RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()] {
        let mut s = h.route().get(family).execute();
        while let Some(r) = s.try_next().await.map_err(nlerr("listing routes"))? {
            let mut dst = None;
            let mut gw = None;
            let mut oif = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(IpAddr::V4(*d)),
                    RouteAttribute::Destination(RouteAddress::Inet6(d)) => dst = Some(IpAddr::V6(*d)),
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(IpAddr::V4(*g)),
                    RouteAttribute::Gateway(RouteAddress::Inet6(g)) => gw = Some(IpAddr::V6(*g)),
                    RouteAttribute::Via(RouteVia::Inet6(g)) => gw = Some(IpAddr::V6(*g)),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            if oif != Some(index) || r.header.table != 254 {
                continue;
            }
            let v4 = r.header.address_family == rtnetlink::packet_route::AddressFamily::Inet;
            let d = dst.map(|d| d.to_string()).unwrap_or_else(|| if v4 { "0.0.0.0".into() } else { "::".into() });
            out.push((format!("{d}/{}", r.header.destination_prefix_length), gw));
        }
    }
    Ok(out)
}

/// The real kernel side.
pub struct KernelPodNet {
    dp: PodDatapath,
}

impl KernelPodNet {
    pub fn new(pin_dir: &Path) -> Result<Self, String> {
        Ok(KernelPodNet { dp: PodDatapath::open(pin_dir).map_err(|e| e.to_string())? })
    }

    pub fn datapath(&self) -> &PodDatapath {
        &self.dp
    }

    fn setup_inner(&self, spec: &LinkSpec) -> Result<LinkInfo, String> {
        let ns = File::open(&spec.netns).map_err(|e| format!("opening {}: {e}", spec.netns.display()))?;
        let has4 = spec.ips.iter().any(|i| i.is_ipv4());
        let has6 = spec.ips.iter().any(|i| i.is_ipv6());
        // Host side, in the agent's namespace.
        let (host_ifindex, host_mac) = nl(None, |h| async move {
            use std::os::fd::AsRawFd;
            if let Some(old) = link_by_name(&h, &spec.host_ifname).await? {
                h.link().del(old.header.index).execute().await.map_err(nlerr("removing a leftover device"))?;
            }
            let peer = LinkUnspec::new_with_name(&spec.pod_ifname).mtu(spec.mtu).setns_by_fd(ns.as_raw_fd()).build();
            let msg = LinkVeth::new(&spec.host_ifname, &spec.pod_ifname)
                .mtu(spec.mtu)
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                .build();
            h.link().add(msg).execute().await.map_err(|e| format!("creating veth {}: {e}", spec.host_ifname))?;
            let l = link_by_name(&h, &spec.host_ifname).await?.ok_or("the new veth vanished")?;
            let index = l.header.index;
            if has6 {
                sysctl(&format!("net.ipv6.conf.{}.accept_dad", spec.host_ifname), "0")?;
            }
            if let (true, Some(g)) = (has4, spec.gateway4) {
                add_addr(&h, index, IpAddr::V4(g), 32).await?;
            }
            if has6 {
                add_addr(&h, index, IpAddr::V6(GATEWAY6), 64).await?;
            }
            h.link().set(LinkUnspec::new_with_index(index).up().build()).execute().await.map_err(nlerr("setting the host end up"))?;
            for ip in &spec.ips {
                let msg = match ip {
                    IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(*a, 32).output_interface(index).scope(RouteScope::Link).build(),
                    IpAddr::V6(a) => RouteMessageBuilder::<std::net::Ipv6Addr>::new().destination_prefix(*a, 128).output_interface(index).build(),
                };
                h.route().add(msg).replace().execute().await.map_err(|e| format!("route to {ip}: {e}"))?;
            }
            Ok((index, mac_of(&l)))
        })?;
        // Pod side, in the pod's namespace.
        let pod_mac = nl(Some(&spec.netns), |h| async move {
            if let Some(lo) = link_by_name(&h, "lo").await? {
                if !is_up(&lo) {
                    h.link().set(LinkUnspec::new_with_index(lo.header.index).up().build()).execute().await.map_err(nlerr("setting lo up"))?;
                }
            }
            let l = link_by_name(&h, &spec.pod_ifname).await?.ok_or_else(|| format!("{} did not arrive in the pod", spec.pod_ifname))?;
            let index = l.header.index;
            if has6 {
                sysctl(&format!("net.ipv6.conf.{}.accept_dad", spec.pod_ifname), "0")?;
            }
            for ip in &spec.ips {
                add_addr(&h, index, *ip, if ip.is_ipv4() { 32 } else { 128 }).await?;
            }
            h.link().set(LinkUnspec::new_with_index(index).up().build()).execute().await.map_err(nlerr("setting the pod end up"))?;
            if let (true, Some(g)) = (has4, spec.gateway4) {
                let to_gw = RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(g, 32).output_interface(index).scope(RouteScope::Link).build();
                h.route().add(to_gw).execute().await.map_err(nlerr("route to the gateway"))?;
                let def = RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(Ipv4Addr::UNSPECIFIED, 0).gateway(g).output_interface(index).build();
                h.route().add(def).execute().await.map_err(nlerr("IPv4 default route"))?;
            }
            if has6 {
                let def = RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                    .destination_prefix(std::net::Ipv6Addr::UNSPECIFIED, 0)
                    .gateway(GATEWAY6)
                    .output_interface(index)
                    .build();
                h.route().add(def).execute().await.map_err(nlerr("IPv6 default route"))?;
            }
            Ok(mac_of(&l))
        })?;
        Ok(LinkInfo { host_ifindex, host_mac, pod_mac })
    }
}

impl PodNet for KernelPodNet {
    fn setup(&mut self, spec: &LinkSpec) -> Result<LinkInfo, String> {
        let r = self.setup_inner(spec);
        if r.is_err() {
            let _ = self.teardown(&spec.host_ifname);
        }
        r
    }

    fn teardown(&mut self, host_ifname: &str) -> Result<(), String> {
        nl(None, |h| async move {
            if let Some(l) = link_by_name(&h, host_ifname).await? {
                match h.link().del(l.header.index).execute().await {
                    Ok(()) => {}
                    // Gone meanwhile (its pod namespace went away).
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {}
                    Err(e) => return Err(format!("removing {host_ifname}: {e}")),
                }
            }
            Ok(())
        })
    }

    fn check(&mut self, spec: &LinkSpec, info: &LinkInfo) -> Result<(), String> {
        let host = nl(None, |h| async move { link_by_name(&h, &spec.host_ifname).await })?;
        match host {
            None => return Err(format!("host device {} is gone", spec.host_ifname)),
            Some(l) if l.header.index != info.host_ifindex => return Err(format!("host device {} was re-created", spec.host_ifname)),
            Some(l) if !is_up(&l) => return Err(format!("host device {} is down", spec.host_ifname)),
            Some(_) => {}
        }
        if !spec.netns.exists() {
            return Err(format!("network namespace {} is gone", spec.netns.display()));
        }
        let gw4 = spec.gateway4;
        nl(Some(&spec.netns), |h| async move {
            let l = link_by_name(&h, &spec.pod_ifname).await?.ok_or_else(|| format!("{} is gone from the pod", spec.pod_ifname))?;
            if !is_up(&l) {
                return Err(format!("{} is down", spec.pod_ifname));
            }
            if mac_of(&l) != info.pod_mac {
                return Err(format!("{} has another MAC address", spec.pod_ifname));
            }
            let addrs = addrs_of(&h, l.header.index).await?;
            for ip in &spec.ips {
                if !addrs.contains(ip) {
                    return Err(format!("{} lost its address {ip}", spec.pod_ifname));
                }
            }
            let routes = routes_of(&h, l.header.index).await?;
            let has = |dst: &str, gw: Option<IpAddr>| routes.iter().any(|(d, g)| d == dst && *g == gw);
            if let (true, Some(g)) = (spec.ips.iter().any(|i| i.is_ipv4()), gw4) {
                if !has(&format!("{g}/32"), None) {
                    return Err(format!("the route to the gateway {g} is missing"));
                }
                if !has("0.0.0.0/0", Some(IpAddr::V4(g))) {
                    return Err(format!("the IPv4 default route via {g} is missing"));
                }
            }
            if spec.ips.iter().any(|i| i.is_ipv6()) && !has("::/0", Some(IpAddr::V6(GATEWAY6))) {
                return Err(format!("the IPv6 default route via {GATEWAY6} is missing"));
            }
            Ok(())
        })
    }

    fn host_link(&mut self, name: &str) -> Option<u32> {
        nl(None, |h| async move { link_by_name(&h, name).await }).ok().flatten().map(|l| l.header.index)
    }

    fn attach(&mut self, host_ifname: &str, ifindex: u32) -> Result<(), String> {
        self.dp.attach(host_ifname, ifindex).map_err(|e| e.to_string())
    }

    fn detach(&mut self, host_ifname: &str) -> Result<(), String> {
        self.dp.detach(host_ifname).map_err(|e| e.to_string())
    }

    fn set_endpoint(&mut self, ip: IpAddr, id: u32, info: &LinkInfo) -> Result<(), String> {
        let e = EndpointEntry { id, host_ifindex: info.host_ifindex, host_mac: info.host_mac, pod_mac: info.pod_mac };
        self.dp.set_endpoint(ip, &e).map_err(|e| e.to_string())
    }

    fn delete_endpoint(&mut self, ip: IpAddr) -> Result<(), String> {
        self.dp.delete_endpoint(ip).map_err(|e| e.to_string())
    }

    fn endpoint_ips(&mut self) -> Result<Vec<IpAddr>, String> {
        Ok(self.dp.endpoints().map_err(|e| e.to_string())?.into_iter().map(|(ip, _)| ip).collect())
    }

    fn attached(&mut self) -> Vec<String> {
        self.dp.attached()
    }

    fn host_links(&mut self) -> Result<Vec<String>, String> {
        nl(None, |h| async move {
            let mut out = Vec::new();
            let mut links = h.link().get().execute();
            while let Some(l) = links.try_next().await.map_err(nlerr("listing devices"))? {
                for a in &l.attributes {
                    if let LinkAttribute::IfName(n) = a {
                        if crate::pods::is_host_ifname(n) {
                            out.push(n.clone());
                        }
                    }
                }
            }
            Ok(out)
        })
    }
}
