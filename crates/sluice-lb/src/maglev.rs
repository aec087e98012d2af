//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016, section 3.4), written from
//! the paper's description.
//!
//! A frontend's lookup table has `M` slots (`M` prime). Each backend has a
//! preference list, a permutation of the slots given by two hashes of the
//! backend's identity: `offset` and `skip`, the `j`-th preference being
//! `(offset + j * skip) mod M`. Backends take turns claiming their next
//! preferred slot that is still free until every slot is taken. The
//! datapath then sends a flow to `table[hash(5-tuple) mod M]`.
//!
//! What makes every node agree: the identity hashed is the backend's
//! address, port and protocol (never the agent-local backend id), the
//! backends take turns in a canonical order (sorted), and the flow hash
//! ([`flow_hash`], mirrored in `bpf/lib/maglev.h`) is defined on bytes in
//! network order, not on host words. Two nodes with the same backends
//! compute the same table whatever order they learned them in.
//!
//! Disruption: a backend that leaves frees only its own slots, which the
//! others claim; because the turns interleave, a few slots of the remaining
//! backends move too (the paper's "slightly more than 1/N"). The tests
//! measure it.

use std::fmt;
use std::net::IpAddr;

use crate::types::BackendKey;

/// Default table size: a prime, 100 times 163 backends.
pub const DEFAULT_TABLE_SIZE: u32 = 16381;
/// Smallest and largest accepted table sizes. The datapath keeps one array
/// of `M` 4-byte backend ids per Maglev frontend.
pub const MIN_TABLE_SIZE: u32 = 7;
pub const MAX_TABLE_SIZE: u32 = 131071;

/// A valid table size: a prime in [`MIN_TABLE_SIZE`, `MAX_TABLE_SIZE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableSize(u32);

/// Why a table size was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableSizeError {
    #[error("{m} is not a prime ({m} = {factor} x {}): Maglev needs a prime table size, such as {below} or {above}", m / factor)]
    NotPrime { m: u32, factor: u32, below: u32, above: u32 },
    #[error("{m} is out of range: the table size must be a prime from {MIN_TABLE_SIZE} to {MAX_TABLE_SIZE}")]
    OutOfRange { m: u32 },
}

fn smallest_factor(n: u32) -> Option<u32> {
    if n < 4 {
        return None;
    }
    let mut d = 2u32;
    while (d as u64) * (d as u64) <= n as u64 {
        if n % d == 0 {
            return Some(d);
        }
        d += 1;
    }
    None
}

pub fn is_prime(n: u32) -> bool {
    n >= 2 && smallest_factor(n).is_none()
}

impl TableSize {
    pub fn new(m: u32) -> Result<TableSize, TableSizeError> {
        if !(MIN_TABLE_SIZE..=MAX_TABLE_SIZE).contains(&m) {
            return Err(TableSizeError::OutOfRange { m });
        }
        if let Some(factor) = smallest_factor(m) {
            let below = (MIN_TABLE_SIZE..m).rev().find(|p| is_prime(*p)).unwrap_or(MIN_TABLE_SIZE);
            let above = (m..=MAX_TABLE_SIZE).find(|p| is_prime(*p)).unwrap_or(MAX_TABLE_SIZE);
            return Err(TableSizeError::NotPrime { m, factor, below, above });
        }
        Ok(TableSize(m))
    }

    pub fn get(self) -> u32 {
        self.0
    }

    /// The paper's advice: at least 100 slots per backend keeps each
    /// backend's share within about 1% of the others'. `None` when the size
    /// is comfortable for `backends`.
    pub fn advice(self, backends: usize) -> Option<String> {
        let want = 100u64 * backends as u64;
        if (self.0 as u64) < want {
            Some(format!(
                "Maglev table size {} is less than 100 x {backends} backends: shares will be uneven (use a prime >= {want})",
                self.0
            ))
        } else {
            None
        }
    }
}

impl Default for TableSize {
    fn default() -> Self {
        TableSize(DEFAULT_TABLE_SIZE)
    }
}

impl fmt::Display for TableSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for TableSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let m: u32 = s.trim().parse().map_err(|_| format!("{s:?} is not a number"))?;
        TableSize::new(m).map_err(|e| e.to_string())
    }
}

// ------------------------------------------------------------------ hashing
//
// A 32-bit multiply-rotate hash over 32-bit words, each word read big-endian
// from bytes in network order, so that little- and big-endian nodes agree.
// The mixing constants are the usual ones of 32-bit multiply-rotate hashes
// (odd, with well-spread bits); the finaliser avalanches every input bit
// over the output. `bpf/lib/maglev.h` has the same steps in C; the packet
// tests check that both agree on many tuples.

/// Seed of the flow hash; part of the wire contract between nodes.
pub const FLOW_SEED: u32 = 0x5c1c_e5ed;
/// Seeds of the two backend hashes (offset and skip).
const OFFSET_SEED: u32 = 0x0ff5_e7a1;
const SKIP_SEED: u32 = 0x5c1b_9e37;

#[inline]
fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(0xcc9e_2d51).rotate_left(15).wrapping_mul(0x1b87_3593);
    (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[inline]
fn finish(h: u32, len: u32) -> u32 {
    let mut h = h ^ len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

fn hash_words(seed: u32, words: &[u32]) -> u32 {
    let h = words.iter().fold(seed, |h, w| mix(h, *w));
    finish(h, 4 * words.len() as u32)
}

fn addr_words(a: IpAddr) -> [u32; 4] {
    let b = match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    [0, 4, 8, 12].map(|i| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]))
}

/// The hash of a flow, as the datapath computes it (`sl_maglev_flow_hash`):
/// source and destination address (16 bytes each, IPv4 as `::ffff:a.b.c.d`),
/// then `sport << 16 | dport`, then the protocol number. Ports in host order
/// here; the datapath converts from the wire.
pub fn flow_hash(saddr: IpAddr, daddr: IpAddr, sport: u16, dport: u16, proto: u8) -> u32 {
    let s = addr_words(saddr);
    let d = addr_words(daddr);
    let words = [s[0], s[1], s[2], s[3], d[0], d[1], d[2], d[3], (sport as u32) << 16 | dport as u32, proto as u32];
    hash_words(FLOW_SEED, &words)
}

fn backend_words(b: &BackendKey) -> [u32; 5] {
    let a = addr_words(b.addr);
    [a[0], a[1], a[2], a[3], (b.port as u32) << 16 | b.proto.number() as u32]
}

/// A backend's place in the table: `(offset, skip)` for a table of `m`.
pub fn permutation(b: &BackendKey, m: TableSize) -> (u32, u32) {
    let w = backend_words(b);
    let m = m.get();
    let offset = hash_words(OFFSET_SEED, &w) % m;
    let skip = hash_words(SKIP_SEED, &w) % (m - 1) + 1;
    (offset, skip)
}

// -------------------------------------------------------------------- table

/// A computed lookup table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// The backends in the canonical order (sorted, without duplicates).
    pub backends: Vec<BackendKey>,
    /// For each slot, an index into `backends`. Empty when there are no backends.
    pub slots: Vec<u32>,
}

impl Table {
    /// The backend of each slot.
    pub fn backend_at(&self, slot: usize) -> &BackendKey {
        &self.backends[self.slots[slot] as usize]
    }

    /// Slots per backend, in `backends` order.
    pub fn counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.backends.len()];
        for s in &self.slots {
            c[*s as usize] += 1;
        }
        c
    }

    /// The backend a flow hash lands on.
    pub fn lookup(&self, hash: u32) -> Option<&BackendKey> {
        if self.slots.is_empty() {
            return None;
        }
        Some(self.backend_at((hash % self.slots.len() as u32) as usize))
    }
}

/// Fill a table of `m` slots for `backends` (any order, duplicates ignored).
/// Cost: O(M log M) expected, independent of the input order.
pub fn compute(backends: &[BackendKey], m: TableSize) -> Table {
    let mut bs: Vec<BackendKey> = backends.to_vec();
    bs.sort();
    bs.dedup();
    let size = m.get() as usize;
    if bs.is_empty() {
        return Table { backends: bs, slots: Vec::new() };
    }
    let mut pos: Vec<u32> = Vec::with_capacity(bs.len());
    let mut skip: Vec<u32> = Vec::with_capacity(bs.len());
    for b in &bs {
        let (o, s) = permutation(b, m);
        pos.push(o);
        skip.push(s);
    }
    const FREE: u32 = u32::MAX;
    let mut slots = vec![FREE; size];
    let mut filled = 0usize;
    'fill: loop {
        for i in 0..bs.len() {
            // The next preferred slot that is still free. A permutation of
            // all M slots, so this ends while any slot is free.
            loop {
                let c = pos[i] as usize;
                pos[i] = ((pos[i] as u64 + skip[i] as u64) % size as u64) as u32;
                if slots[c] == FREE {
                    slots[c] = i as u32;
                    filled += 1;
                    break;
                }
            }
            if filled == size {
                break 'fill;
            }
        }
    }
    Table { backends: bs, slots }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_model::Protocol;
    use std::collections::BTreeSet;

    fn be(i: u32) -> BackendKey {
        BackendKey { addr: IpAddr::from([10, 1, (i >> 8) as u8, i as u8]), port: 8080, proto: Protocol::TCP }
    }

    fn size(m: u32) -> TableSize {
        TableSize::new(m).unwrap()
    }

    /// Small deterministic generator for the randomised test.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    /// Slots whose backend differs between two tables of the same size.
    fn moved(a: &Table, b: &Table) -> Vec<usize> {
        (0..a.slots.len()).filter(|i| a.backend_at(*i) != b.backend_at(*i)).collect()
    }

    #[test]
    fn table_sizes_are_validated() {
        assert_eq!(TableSize::new(16381).unwrap().get(), 16381);
        assert_eq!(TableSize::default().get(), DEFAULT_TABLE_SIZE);
        assert!(is_prime(DEFAULT_TABLE_SIZE) && is_prime(MAX_TABLE_SIZE) && is_prime(MIN_TABLE_SIZE));
        let e = TableSize::new(16384).unwrap_err();
        assert_eq!(e, TableSizeError::NotPrime { m: 16384, factor: 2, below: 16381, above: 16411 });
        assert_eq!(
            e.to_string(),
            "16384 is not a prime (16384 = 2 x 8192): Maglev needs a prime table size, such as 16381 or 16411"
        );
        assert!(matches!(TableSize::new(1), Err(TableSizeError::OutOfRange { .. })));
        assert!(matches!(TableSize::new(MAX_TABLE_SIZE + 2), Err(TableSizeError::OutOfRange { .. })));
        assert!("1000".parse::<TableSize>().unwrap_err().contains("not a prime"));
        assert!("abc".parse::<TableSize>().unwrap_err().contains("not a number"));
        assert!(size(16381).advice(163).is_none());
        assert!(size(16381).advice(164).unwrap().contains(">= 16400"));
    }

    #[test]
    fn every_slot_is_filled_and_shares_are_even() {
        for (m, n) in [(16381, 1), (16381, 3), (16381, 10), (16381, 100), (65521, 50), (251, 2)] {
            let bs: Vec<BackendKey> = (0..n).map(be).collect();
            let t = compute(&bs, size(m));
            assert_eq!(t.slots.len(), m as usize);
            assert!(t.slots.iter().all(|s| (*s as usize) < n as usize));
            let ideal = m as f64 / n as f64;
            for (i, c) in t.counts().into_iter().enumerate() {
                // Maglev's turns give each backend floor(M/N) or one more.
                let dev = (c as f64 - ideal).abs() / ideal;
                assert!(dev < 0.02, "M={m} N={n}: backend {i} has {c} slots, ideal {ideal:.1}");
            }
        }
        assert!(compute(&[], size(251)).slots.is_empty());
        assert_eq!(compute(&[], size(251)).lookup(7), None);
    }

    #[test]
    fn the_same_backends_in_any_order_give_the_same_table() {
        let bs: Vec<BackendKey> = (0..20).map(be).collect();
        let t = compute(&bs, size(16381));
        let mut rev = bs.clone();
        rev.reverse();
        assert_eq!(compute(&rev, size(16381)), t);
        let mut rng = Lcg(5);
        for _ in 0..10 {
            let mut sh = bs.clone();
            for i in (1..sh.len()).rev() {
                sh.swap(i, rng.next(i as u64 + 1) as usize);
            }
            // Duplicates (one backend in two slices) change nothing either.
            sh.push(sh[0]);
            assert_eq!(compute(&sh, size(16381)), t);
        }
    }

    /// Removing one of N backends: every slot it had moves (it must), and
    /// few others do. Returns (moved slots / M, other slots moved / M).
    fn removal(n: u32, m: u32, gone: u32) -> (f64, f64) {
        let bs: Vec<BackendKey> = (0..n).map(be).collect();
        let before = compute(&bs, size(m));
        let after_bs: Vec<BackendKey> = bs.iter().copied().filter(|b| *b != be(gone)).collect();
        let after = compute(&after_bs, size(m));
        let mv = moved(&before, &after);
        let forced = mv.iter().filter(|i| *before.backend_at(**i) == be(gone)).count();
        let owned = before.counts()[before.backends.iter().position(|b| *b == be(gone)).unwrap()];
        assert_eq!(forced, owned, "every slot of the removed backend moves");
        for i in &mv {
            assert_ne!(*after.backend_at(*i), be(gone));
        }
        (mv.len() as f64 / m as f64, (mv.len() - forced) as f64 / m as f64)
    }

    #[test]
    fn removing_one_backend_moves_about_one_nth() {
        let m = 16381;
        for n in [3u32, 5, 10, 20, 50, 100] {
            for gone in [0, n / 2, n - 1] {
                let (all, others) = removal(n, m, gone);
                let ideal = 1.0 / n as f64;
                // Measured (see the report in docs): the moved fraction is
                // 1/N plus at most ~1.5% of the table for these N.
                assert!(all >= ideal * 0.97, "N={n}: moved {all:.4} < 1/N");
                assert!(others < 0.02 && all < ideal + 0.02, "N={n} gone={gone}: moved {all:.4} (1/N = {ideal:.4}), others {others:.4}");
            }
        }
    }

    #[test]
    fn adding_one_backend_moves_about_one_over_n_plus_one() {
        let m = 16381;
        for n in [2u32, 4, 9, 19, 49, 99] {
            let bs: Vec<BackendKey> = (0..n).map(be).collect();
            let before = compute(&bs, size(m));
            let mut more = bs.clone();
            more.push(be(1000));
            let after = compute(&more, size(m));
            let mv = moved(&before, &after);
            let to_new = mv.iter().filter(|i| *after.backend_at(**i) == be(1000)).count();
            let ideal = 1.0 / (n + 1) as f64;
            let all = mv.len() as f64 / m as f64;
            let others = (mv.len() - to_new) as f64 / m as f64;
            assert!(all >= ideal * 0.97 && all < ideal + 0.02, "N={n}+1: moved {all:.4} (ideal {ideal:.4})");
            assert!(others < 0.02, "N={n}+1: {others:.4} moved between old backends");
        }
    }

    #[test]
    fn randomised_backend_sets_keep_the_properties() {
        let mut rng = Lcg(42);
        let m = size(16381);
        let mut worst: f64 = 0.0;
        for round in 0..40 {
            let n = 2 + rng.next(30) as u32;
            let mut set: BTreeSet<BackendKey> = BTreeSet::new();
            while set.len() < n as usize {
                let i = rng.next(5000) as u32;
                let mut b = be(i);
                if rng.next(3) == 0 {
                    b.addr = IpAddr::from([0xfd00, 0, 0, 0, 0, 0, (i >> 16) as u16, i as u16]);
                }
                if rng.next(4) == 0 {
                    b.proto = Protocol::UDP;
                }
                b.port = 1 + rng.next(65535) as u16;
                set.insert(b);
            }
            let bs: Vec<BackendKey> = set.iter().copied().collect();
            let t = compute(&bs, m);
            let ideal = m.get() as f64 / n as f64;
            for c in t.counts() {
                assert!((c as f64 - ideal).abs() <= ideal * 0.02 + 1.0, "round {round}: {c} vs {ideal:.1}");
            }
            // Remove a random backend: its slots move, few others.
            let gone = bs[rng.next(n as u64) as usize];
            let rest: Vec<BackendKey> = bs.iter().copied().filter(|b| *b != gone).collect();
            let after = compute(&rest, m);
            let mv = moved(&t, &after);
            let others = mv.iter().filter(|i| *t.backend_at(**i) != gone).count() as f64 / m.get() as f64;
            // Measured: at most ~1.1% of the table for N <= 31 at M = 16381.
            assert!(others < 0.02, "round {round}: N={n}, {others:.4} of other slots moved");
            worst = worst.max(others);
            // Flows land on a backend of the set.
            for h in 0..100u32 {
                assert!(set.contains(t.lookup(h.wrapping_mul(2654435761)).unwrap()));
            }
        }
        println!("worst share of other slots moved: {:.2}%", worst * 100.0);
    }

    #[test]
    fn flow_hash_is_defined_on_network_order_and_spreads() {
        let a: IpAddr = "10.1.0.10".parse().unwrap();
        let b: IpAddr = "10.96.0.10".parse().unwrap();
        let h = flow_hash(a, b, 40000, 80, 6);
        // Pinned value: changing the hash changes which backend every
        // existing flow of every node maps to; it is a wire contract.
        assert_eq!(h, 3602942676);
        assert_ne!(h, flow_hash(b, a, 40000, 80, 6));
        assert_ne!(h, flow_hash(a, b, 40001, 80, 6));
        assert_ne!(h, flow_hash(a, b, 40000, 80, 17));
        // Consecutive source ports spread evenly over 7 buckets.
        let mut buckets = [0u32; 7];
        for p in 0..7000u16 {
            buckets[(flow_hash(a, b, 30000 + p, 80, 6) % 7) as usize] += 1;
        }
        assert!(buckets.iter().all(|c| (900..1100).contains(c)), "{buckets:?}");
    }
}

/// The disruption figures of the report: `cargo test -p sluice-lb --lib
/// maglev::measure -- --ignored --nocapture`.
#[cfg(test)]
mod measure {
    use super::*;
    use sluice_model::Protocol;

    fn be(i: u32) -> BackendKey {
        BackendKey { addr: IpAddr::from([10, 1, (i >> 8) as u8, i as u8]), port: 8080, proto: Protocol::TCP }
    }

    #[test]
    #[ignore]
    fn disruption() {
        for m in [4093u32, 16381, 65521] {
            let m = TableSize::new(m).unwrap();
            for n in [2u32, 3, 5, 10, 20, 50, 100, 163, 500] {
                let bs: Vec<BackendKey> = (0..n).map(be).collect();
                let t = compute(&bs, m);
                let counts = t.counts();
                let ideal = m.get() as f64 / n as f64;
                let spread = counts.iter().map(|c| (*c as f64 - ideal).abs() / ideal).fold(0.0, f64::max);
                // Remove each of up to 10 backends in turn; average and worst.
                let (mut sum_all, mut max_all, mut sum_oth, mut max_oth, mut k) = (0.0, 0.0f64, 0.0, 0.0f64, 0);
                for g in (0..n).step_by((n as usize / 10).max(1)) {
                    let rest: Vec<BackendKey> = bs.iter().copied().filter(|b| *b != be(g)).collect();
                    let a = compute(&rest, m);
                    let mv: Vec<usize> = (0..t.slots.len()).filter(|i| t.backend_at(*i) != a.backend_at(*i)).collect();
                    let oth = mv.iter().filter(|i| *t.backend_at(**i) != be(g)).count() as f64 / m.get() as f64;
                    let all = mv.len() as f64 / m.get() as f64;
                    sum_all += all;
                    sum_oth += oth;
                    max_all = max_all.max(all);
                    max_oth = max_oth.max(oth);
                    k += 1;
                }
                let mut more = bs.clone();
                more.push(be(9999));
                let a = compute(&more, m);
                let add = (0..t.slots.len()).filter(|i| t.backend_at(*i) != a.backend_at(*i)).count() as f64 / m.get() as f64;
                println!(
                    "M={:>5} N={n:>3} share-dev={:.3}% remove: moved {:.2}% (1/N {:.2}%, worst {:.2}%), others {:.2}% (worst {:.2}%); add: moved {:.2}% (1/(N+1) {:.2}%)",
                    m.get(),
                    spread * 100.0,
                    sum_all / k as f64 * 100.0,
                    100.0 / n as f64,
                    max_all * 100.0,
                    sum_oth / k as f64 * 100.0,
                    max_oth * 100.0,
                    add * 100.0,
                    100.0 / (n + 1) as f64
                );
            }
        }
    }
}
