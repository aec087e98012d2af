//! Between the logical entries of `sluice-lb` and the C structs of
//! `bpf/include/lb.h`, whose Rust form is generated from the object's BTF.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sluice_lb::{BackendKey, FrontendKey, Protocol, Scope, SvcKey, SvcVal};

use crate::skel::types::{
    sl_affinity_match_key, sl_addr, sl_backend, sl_revnat, sl_svc_key, sl_svc_val,
};

/// Plain data that can be viewed as bytes.
///
/// # Safety
/// Implement only for `#[repr(C)]` types made of integers, with every
/// padding byte an explicit field, as the generated map types are.
pub unsafe trait Pod: Copy + 'static {
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: Pod types are repr(C) with no implicit padding, so every
        // byte is initialised.
        unsafe { std::slice::from_raw_parts(self as *const Self as *const u8, std::mem::size_of::<Self>()) }
    }
    fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != std::mem::size_of::<Self>() {
            return None;
        }
        // SAFETY: length checked; any bit pattern is a valid value of a Pod
        // type; read_unaligned copes with the buffer's alignment.
        Some(unsafe { std::ptr::read_unaligned(b.as_ptr() as *const Self) })
    }
}

// SAFETY: generated from BTF of structs with explicit padding only.
unsafe impl Pod for sl_svc_key {}
unsafe impl Pod for sl_svc_val {}
unsafe impl Pod for sl_backend {}
unsafe impl Pod for sl_revnat {}
unsafe impl Pod for sl_addr {}
unsafe impl Pod for sl_affinity_match_key {}
unsafe impl Pod for u32 {}
unsafe impl Pod for u64 {}

/// The 16 bytes of `union sl_addr`: IPv4 as an IPv4-mapped IPv6 address.
/// Each skeleton generates its own copy of the union; all of them are
/// built from and read into these bytes.
pub fn addr_octets(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

pub fn addr_from_octets(b: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(b);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

pub fn addr_to_c(a: IpAddr) -> sl_addr {
    sl_addr { b: addr_octets(a) }
}

pub fn addr_from_c(a: &sl_addr) -> IpAddr {
    // SAFETY: both union members are plain bytes of the same size.
    addr_from_octets(unsafe { a.b })
}

fn proto_from(n: u8) -> Protocol {
    Protocol::from_number(n).unwrap_or(Protocol::TCP)
}

pub fn svc_key_to_c(k: &SvcKey) -> sl_svc_key {
    sl_svc_key {
        addr: addr_to_c(k.frontend.addr),
        dport: k.frontend.port.to_be(),
        proto: k.frontend.proto.number(),
        scope: k.frontend.scope.number(),
        slot: k.slot,
        pad: 0,
    }
}

pub fn svc_key_from_c(k: &sl_svc_key) -> SvcKey {
    let scope = Scope::from_number(k.scope).unwrap_or(Scope::Vip);
    let mut addr = addr_from_c(&k.addr);
    if scope.is_node_port() && addr.is_unspecified() {
        addr = match addr {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
    }
    SvcKey {
        frontend: FrontendKey { addr, port: u16::from_be(k.dport), proto: proto_from(k.proto), scope },
        slot: k.slot,
    }
}

pub fn svc_val_to_c(v: &SvcVal) -> sl_svc_val {
    sl_svc_val {
        backend_id: v.backend_id,
        count: v.count,
        rev_nat_id: v.rev_nat_id,
        affinity_timeout: v.affinity_timeout,
        flags: v.flags,
        pad: 0,
        pad2: 0,
    }
}

pub fn svc_val_from_c(v: &sl_svc_val) -> SvcVal {
    SvcVal {
        backend_id: v.backend_id,
        count: v.count,
        rev_nat_id: v.rev_nat_id,
        affinity_timeout: v.affinity_timeout,
        flags: v.flags,
    }
}

pub fn backend_to_c(b: &BackendKey) -> sl_backend {
    sl_backend { addr: addr_to_c(b.addr), port: b.port.to_be(), proto: b.proto.number(), flags: 0, pad: 0 }
}

pub fn backend_from_c(b: &sl_backend) -> BackendKey {
    BackendKey { addr: addr_from_c(&b.addr), port: u16::from_be(b.port), proto: proto_from(b.proto) }
}

pub fn revnat_to_c(f: &FrontendKey) -> sl_revnat {
    sl_revnat { addr: addr_to_c(f.addr), port: f.port.to_be(), proto: f.proto.number(), scope: f.scope.number(), pad: 0 }
}

pub fn revnat_from_c(r: &sl_revnat) -> FrontendKey {
    let scope = Scope::from_number(r.scope).unwrap_or(Scope::Vip);
    let key = svc_key_from_c(&sl_svc_key {
        addr: r.addr,
        dport: r.port,
        proto: r.proto,
        scope: scope.number(),
        slot: 0,
        pad: 0,
    });
    key.frontend
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for addr in ["198.19.0.1", "fd00:5c::1", "0.0.0.0", "::"] {
            let a: IpAddr = addr.parse().unwrap();
            assert_eq!(addr_from_c(&addr_to_c(a)), a);
        }
        let k = SvcKey { frontend: FrontendKey::node_port(false, 30080, Protocol::UDP), slot: 3 };
        assert_eq!(svc_key_from_c(&svc_key_to_c(&k)), k);
        // Local twins (externalTrafficPolicy: Local) keep their scope: 2 and 3.
        for f in [FrontendKey::node_port(true, 30080, Protocol::TCP), FrontendKey { addr: "198.19.9.9".parse().unwrap(), port: 80, proto: Protocol::TCP, scope: Scope::Vip }] {
            let t = SvcKey { frontend: f.local_twin(), slot: 0 };
            assert_eq!(svc_key_to_c(&t).scope, f.scope.number() | 2);
            assert_eq!(svc_key_from_c(&svc_key_to_c(&t)), t);
            assert_eq!(revnat_from_c(&revnat_to_c(&t.frontend)), t.frontend);
        }
        let c = svc_key_to_c(&k);
        assert_eq!(c.as_bytes().len(), 24);
        assert_eq!(sl_svc_key::from_bytes(c.as_bytes()).map(|x| svc_key_from_c(&x)), Some(k));
        // Ports are in network order in the map.
        assert_eq!(&c.as_bytes()[16..18], &30080u16.to_be_bytes());
    }
}
