//! Pod address management from the node's pod CIDRs (one IPv4 and/or one
//! IPv6 range, `--pod-cidr`).
//!
//! Pure bookkeeping: which address belongs to which attachment. The caller
//! (the pod manager) persists every change in the store in the same
//! transaction as the endpoint record, before the pod is set up, so an
//! address is never handed out twice, also across restarts.
//!
//! Reserved: the network address of each range; in IPv4 also the first host
//! address (the pods' gateway, on every host-side veth) and the broadcast
//! address. Allocation goes round from the last address handed out, so an
//! address just released is not reused at once (a stale peer of the old pod
//! reaching the new one).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address range, `10.244.0.0/24` or `fd00:10:244::/112`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub network: IpAddr,
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s.split_once('/').ok_or_else(|| format!("{s:?} is not a CIDR such as 10.244.0.0/24"))?;
        let network: IpAddr = a.parse().map_err(|_| format!("{a:?} is not an IP address"))?;
        let prefix: u8 = p.parse().map_err(|_| format!("{p:?} is not a prefix length"))?;
        let (min, max) = if network.is_ipv4() { (8, 30) } else { (64, 126) };
        if !(min..=max).contains(&prefix) {
            return Err(format!("prefix /{prefix} is out of range for a pod CIDR ({min} to {max})"));
        }
        let c = Cidr { network, prefix };
        if c.host_bits_of(network) != 0 {
            return Err(format!("{s} has host bits set (did you mean {}/{prefix}?)", c.nth(0)));
        }
        Ok(c)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Cidr {
    fn bits(&self) -> u32 {
        if self.network.is_ipv4() {
            32
        } else {
            128
        }
    }

    /// Number of addresses in the range (saturating at u128::MAX).
    pub fn size(&self) -> u128 {
        1u128.checked_shl(self.bits() - self.prefix as u32).unwrap_or(u128::MAX)
    }

    fn as_u128(ip: IpAddr) -> u128 {
        match ip {
            IpAddr::V4(a) => u32::from(a) as u128,
            IpAddr::V6(a) => u128::from(a),
        }
    }

    fn host_bits_of(&self, ip: IpAddr) -> u128 {
        Self::as_u128(ip) & (self.size() - 1)
    }

    /// The `i`th address of the range.
    pub fn nth(&self, i: u128) -> IpAddr {
        let base = Self::as_u128(self.network) & !(self.size() - 1);
        match self.network {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from((base + i) as u32)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(base + i)),
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.network.is_ipv4()
            && (Self::as_u128(ip) & !(self.size() - 1)) == (Self::as_u128(self.network) & !(self.size() - 1))
    }

    /// The pods' IPv4 gateway (first host address), on every host-side
    /// veth. IPv6 pods use the link-local `fe80::1` instead.
    pub fn gateway(&self) -> Option<IpAddr> {
        self.network.is_ipv4().then(|| self.nth(1))
    }

    fn reserved(&self, i: u128) -> bool {
        match self.network {
            IpAddr::V4(_) => i == 0 || i == 1 || i == self.size() - 1,
            IpAddr::V6(_) => i == 0,
        }
    }

    /// Addresses pods can get.
    pub fn usable(&self) -> u128 {
        match self.network {
            IpAddr::V4(_) => self.size() - 3,
            IpAddr::V6(_) => self.size() - 1,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    #[error("no free address left in pod CIDR {cidr} ({used} of {usable} in use)")]
    Exhausted { cidr: Cidr, used: usize, usable: u128 },
    #[error("no pod CIDR is configured (start the agent with --pod-cidr)")]
    NoPool,
}

#[derive(Debug, Clone)]
struct Pool {
    cidr: Cidr,
    /// Address -> owner (`containerID/ifname`).
    used: BTreeMap<IpAddr, String>,
    /// Index of the last address handed out.
    cursor: u128,
}

impl Pool {
    fn allocate(&mut self, owner: &str) -> Result<IpAddr, IpamError> {
        let size = self.cidr.size();
        if self.used.len() as u128 >= self.cidr.usable() {
            return Err(IpamError::Exhausted { cidr: self.cidr, used: self.used.len(), usable: self.cidr.usable() });
        }
        // At most used+reserved+1 steps: the pool is not full.
        let mut i = self.cursor;
        loop {
            i = (i + 1) % size;
            if self.cidr.reserved(i) {
                continue;
            }
            let ip = self.cidr.nth(i);
            if let std::collections::btree_map::Entry::Vacant(e) = self.used.entry(ip) {
                e.insert(owner.to_string());
                self.cursor = i;
                return Ok(ip);
            }
        }
    }
}

/// Every pool of the node.
#[derive(Debug, Clone, Default)]
pub struct Ipam {
    pools: Vec<Pool>,
}

impl Ipam {
    /// At most one range per family.
    pub fn new(cidrs: &[Cidr]) -> Result<Ipam, String> {
        if cidrs.iter().filter(|c| c.network.is_ipv4()).count() > 1 || cidrs.iter().filter(|c| c.network.is_ipv6()).count() > 1 {
            return Err("give at most one IPv4 and one IPv6 --pod-cidr".into());
        }
        Ok(Ipam { pools: cidrs.iter().map(|c| Pool { cidr: *c, used: BTreeMap::new(), cursor: 0 }).collect() })
    }

    pub fn cidrs(&self) -> Vec<Cidr> {
        self.pools.iter().map(|p| p.cidr).collect()
    }

    /// Record an allocation read back from the store. An address outside
    /// every range (the ranges changed) is refused: the caller releases it.
    pub fn restore(&mut self, ip: IpAddr, owner: &str) -> Result<(), String> {
        let pool = self.pools.iter_mut().find(|p| p.cidr.contains(ip)).ok_or_else(|| format!("{ip} is in no configured pod CIDR"))?;
        if let Some(other) = pool.used.get(&ip) {
            if other != owner {
                return Err(format!("{ip} is recorded for both {other} and {owner}"));
            }
        }
        pool.used.insert(ip, owner.to_string());
        let i = Cidr::as_u128(ip) & (pool.cidr.size() - 1);
        pool.cursor = pool.cursor.max(i);
        Ok(())
    }

    /// One address from every range, or none at all.
    pub fn allocate(&mut self, owner: &str) -> Result<Vec<IpAddr>, IpamError> {
        if self.pools.is_empty() {
            return Err(IpamError::NoPool);
        }
        let mut got = Vec::new();
        for k in 0..self.pools.len() {
            match self.pools[k].allocate(owner) {
                Ok(ip) => got.push(ip),
                Err(e) => {
                    for ip in got {
                        self.release(ip);
                    }
                    return Err(e);
                }
            }
        }
        Ok(got)
    }

    pub fn release(&mut self, ip: IpAddr) {
        for p in &mut self.pools {
            p.used.remove(&ip);
        }
    }

    pub fn owner(&self, ip: IpAddr) -> Option<&str> {
        self.pools.iter().find_map(|p| p.used.get(&ip).map(String::as_str))
    }

    /// Every allocation: address -> owner.
    pub fn allocations(&self) -> Vec<(IpAddr, String)> {
        self.pools.iter().flat_map(|p| p.used.iter().map(|(a, o)| (*a, o.clone()))).collect()
    }

    /// (range, in use, usable) for each range.
    pub fn usage(&self) -> Vec<(Cidr, usize, u128)> {
        self.pools.iter().map(|p| (p.cidr, p.used.len(), p.cidr.usable())).collect()
    }

    /// The range an address belongs to.
    pub fn cidr_of(&self, ip: IpAddr) -> Option<Cidr> {
        self.pools.iter().map(|p| p.cidr).find(|c| c.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parse_errors_say_why() {
        assert!("10.0.0.0".parse::<Cidr>().unwrap_err().contains("not a CIDR"));
        assert!("10.0.0.1/24".parse::<Cidr>().unwrap_err().contains("did you mean 10.0.0.0/24"));
        assert!("10.0.0.0/31".parse::<Cidr>().unwrap_err().contains("out of range"));
        assert!("fd00::/48".parse::<Cidr>().unwrap_err().contains("out of range"));
        assert!("banana/24".parse::<Cidr>().unwrap_err().contains("not an IP address"));
        assert_eq!(c("fd00:5c:64::/112").to_string(), "fd00:5c:64::/112");
    }

    #[test]
    fn skips_reserved_and_fills_the_range() {
        let mut ipam = Ipam::new(&[c("10.0.0.0/29")]).unwrap();
        let mut got = Vec::new();
        for i in 0..5 {
            got.push(ipam.allocate(&format!("c{i}/eth0")).unwrap()[0].to_string());
        }
        // .0 network, .1 gateway, .7 broadcast.
        assert_eq!(got, ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]);
        let e = ipam.allocate("c9/eth0").unwrap_err();
        assert_eq!(e.to_string(), "no free address left in pod CIDR 10.0.0.0/29 (5 of 5 in use)");
        // A released address comes back, but only after the others.
        ipam.release("10.0.0.3".parse().unwrap());
        assert_eq!(ipam.allocate("c10/eth0").unwrap()[0].to_string(), "10.0.0.3");
    }

    #[test]
    fn released_addresses_are_not_reused_at_once() {
        let mut ipam = Ipam::new(&[c("10.0.0.0/24")]).unwrap();
        let a = ipam.allocate("a/eth0").unwrap()[0];
        ipam.release(a);
        let b = ipam.allocate("b/eth0").unwrap()[0];
        assert_ne!(a, b);
    }

    #[test]
    fn dual_stack_is_all_or_nothing() {
        let mut ipam = Ipam::new(&[c("10.0.0.0/30"), c("fd00::/126")]).unwrap();
        // IPv4 /30 has one usable address, IPv6 /126 three.
        let got = ipam.allocate("a/eth0").unwrap();
        assert_eq!(got.len(), 2);
        assert!(matches!(ipam.allocate("b/eth0"), Err(IpamError::Exhausted { .. })));
        // b's IPv6 address was given back.
        assert_eq!(ipam.allocations().len(), 2);
        assert!(Ipam::new(&[c("10.0.0.0/24"), c("10.1.0.0/24")]).is_err());
        assert_eq!(Ipam::new(&[]).unwrap().allocate("x").unwrap_err(), IpamError::NoPool);
    }

    #[test]
    fn restore_keeps_owners_and_refuses_conflicts() {
        let mut ipam = Ipam::new(&[c("10.0.0.0/24")]).unwrap();
        ipam.restore("10.0.0.7".parse().unwrap(), "a/eth0").unwrap();
        assert!(ipam.restore("10.0.0.7".parse().unwrap(), "b/eth0").is_err());
        assert!(ipam.restore("10.9.0.7".parse().unwrap(), "b/eth0").is_err());
        // New allocations continue after the highest restored address.
        assert_eq!(ipam.allocate("c/eth0").unwrap()[0].to_string(), "10.0.0.8");
        assert_eq!(ipam.owner("10.0.0.7".parse().unwrap()), Some("a/eth0"));
    }

    #[test]
    fn never_hands_out_an_address_twice() {
        // Random allocate/release sequence against a model.
        let mut ipam = Ipam::new(&[c("10.0.0.0/27"), c("fd00::/123")]).unwrap();
        let mut live: BTreeMap<IpAddr, String> = BTreeMap::new();
        let mut seed = 0x2545F4914F6CDD1Du64;
        for step in 0..5000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            if seed % 3 != 0 || live.is_empty() {
                let owner = format!("c{step}/eth0");
                match ipam.allocate(&owner) {
                    Ok(ips) => {
                        for ip in ips {
                            assert!(live.insert(ip, owner.clone()).is_none(), "{ip} handed out twice");
                        }
                    }
                    Err(IpamError::Exhausted { .. }) => assert!(live.len() >= 29 * 2 - 1),
                    Err(e) => panic!("{e}"),
                }
            } else {
                let victim = live.keys().nth((seed as usize / 7) % live.len()).copied().unwrap();
                let owner = live[&victim].clone();
                for ip in live.iter().filter(|(_, o)| **o == owner).map(|(a, _)| *a).collect::<Vec<_>>() {
                    ipam.release(ip);
                    live.remove(&ip);
                }
            }
            assert_eq!(ipam.allocations().len(), live.len());
        }
    }
}
