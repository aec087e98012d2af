//! Garbage collection of the conntrack (`sl_ct_v1`) and NAT (`sl_snat_v1`)
//! tables.
//!
//! The datapath ignores expired entries and the maps are LRU, so stale
//! entries cost nothing until the maps fill, and then they push out live
//! ones. A sweep reads each table (batch lookups), and deletes:
//!
//! - **expired flows, both entries together.** An entry is alive while
//!   `now < last_seen_ns + lifetime_s * 1e9` (`bpf/lib/ct.h`), `now` being
//!   CLOCK_MONOTONIC like `bpf_ktime_get_ns()`. A flow's liveness is that of
//!   the entry the datapath follows: the conntrack FWD entry (an expired one
//!   is never followed: the next client packet picks again and rewrites
//!   both), the NAT OUT entry (likewise: the next packet allocates anew).
//!   When it has expired the flow goes with its partner (REV, IN). A partner
//!   that has expired while the followed entry is alive stays: one-way
//!   traffic from the client never refreshes it, and it is still needed.
//! - **orphans older than the grace period:** a conntrack entry whose
//!   partner is missing (or names another flow), a NAT IN entry whose OUT
//!   entry is missing (or points elsewhere). Age is time since `last_seen_ns`.
//!
//! Partners are found by the key relationships of `bpf/include/ct.h` and
//! `nat.h`: the REV key is the FWD key with the destination replaced by
//! the FWD value's backend, source and destination swapped; the NAT IN key
//! is the OUT key with the source replaced by the OUT value, swapped.
//!
//! Races with the datapath: just before a delete the entry is read again,
//! and it is left alone if its `last_seen_ns` moved (a packet touched it)
//! or it is gone (LRU eviction, or the datapath replaced it).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libbpf_rs::{MapCore, MapFlags, MapHandle};
use serde::{Deserialize, Serialize};

use crate::encode::Pod;
use crate::skel_host::types::{sl_nat_key, sl_nat_val};
use crate::skel_lxc::types::{sl_ct_key, sl_ct_val};
use crate::DatapathError;

const DIR_FWD: u8 = 0;
const DIR_REV: u8 = 1;
const NAT_OUT: u8 = 0;
const NAT_IN: u8 = 1;

/// What one sweep found and deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcCounts {
    pub ct_scanned: u64,
    /// Conntrack entries deleted because their flow expired (partners included).
    pub ct_expired: u64,
    /// Conntrack entries deleted as orphans (partner missing, past the grace period).
    pub ct_orphans: u64,
    pub nat_scanned: u64,
    pub nat_expired: u64,
    pub nat_orphans: u64,
    /// Entries left alone because a packet touched them during the sweep.
    pub raced: u64,
    pub duration_us: u64,
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn alive(last_seen_ns: u64, lifetime_s: u32, now: u64) -> bool {
    now < last_seen_ns.saturating_add(lifetime_s as u64 * 1_000_000_000)
}

fn older_than(last_seen_ns: u64, grace: Duration, now: u64) -> bool {
    now.saturating_sub(last_seen_ns) > grace.as_nanos() as u64
}

/// Every entry of a map: batch lookups, or iteration where they fail.
fn read_all<K: Pod, V: Pod>(m: &MapHandle) -> Vec<(K, V)> {
    const BATCH: u32 = 4096;
    let mut out = Vec::new();
    if let Ok(it) = m.lookup_batch(BATCH, MapFlags::ANY, MapFlags::ANY) {
        out.extend(it.filter_map(|(k, v)| Some((K::from_bytes(&k)?, V::from_bytes(&v)?))));
    }
    if out.is_empty() {
        for k in m.keys() {
            if let Ok(Some(v)) = m.lookup(&k, MapFlags::ANY) {
                if let (Some(k), Some(v)) = (K::from_bytes(&k), V::from_bytes(&v)) {
                    out.push((k, v));
                }
            }
        }
    }
    out
}

/// Delete `key` if its `last_seen_ns` is still `seen`. Returns whether it was deleted.
fn delete_if_unchanged<V: Pod>(m: &MapHandle, key: &[u8], seen: u64, last_seen: impl Fn(&V) -> u64, raced: &mut u64) -> Result<bool, DatapathError> {
    let now = match m.lookup(key, MapFlags::ANY).map_err(DatapathError::bpf("re-reading an entry before deleting it"))? {
        Some(v) => V::from_bytes(&v).map(|v| last_seen(&v)),
        None => return Ok(false),
    };
    if now != Some(seen) {
        *raced += 1;
        return Ok(false);
    }
    match m.delete(key) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(DatapathError::Bpf { what: "deleting an expired entry".into(), source: e }),
    }
}

/// `SL_CT_F_DSR_BACKEND` (bpf/include/ct.h).
const CT_F_DSR_BACKEND: u16 = 1 << 4;

fn ct_partner(k: &sl_ct_key, v: &sl_ct_val) -> sl_ct_key {
    if k.dir == DIR_FWD {
        sl_ct_key { saddr: v.nat_addr, daddr: k.saddr, sport: v.nat_port, dport: k.sport, proto: k.proto, dir: DIR_REV, pad: 0 }
    } else {
        sl_ct_key { saddr: k.daddr, daddr: v.nat_addr, sport: k.dport, dport: v.nat_port, proto: k.proto, dir: DIR_FWD, pad: 0 }
    }
}

fn nat_partner(k: &sl_nat_key, v: &sl_nat_val) -> sl_nat_key {
    if k.dir == NAT_OUT {
        sl_nat_key { saddr: k.daddr, daddr: v.addr, sport: k.dport, dport: v.port, proto: k.proto, dir: NAT_IN, pad: 0 }
    } else {
        sl_nat_key { saddr: v.addr, daddr: k.saddr, sport: v.port, dport: k.sport, proto: k.proto, dir: NAT_OUT, pad: 0 }
    }
}

type Bytes = Vec<u8>;

/// The decision for one table, from entries read as generic tuples:
/// (key bytes, partner key bytes, followed?, last_seen_ns, lifetime_s).
struct Entry {
    key: Bytes,
    partner: Bytes,
    /// The entry the datapath follows (FWD, OUT): it decides the flow's liveness.
    followed: bool,
    /// Alone by design (the REV entry a DSR option leaves on the backend's
    /// node): never an orphan, only expires.
    alone: bool,
    last_seen: u64,
    lifetime: u32,
}

/// (entries to delete as expired, entries to delete as orphans), each with
/// the last_seen_ns that was read.
/// Keys to delete, each with the `last_seen_ns` that was read.
type Doomed = Vec<(Bytes, u64)>;

fn decide(entries: &[Entry], now: u64, grace: Duration, orphan_followed_too: bool) -> (Doomed, Doomed) {
    let by_key: HashMap<&[u8], &Entry> = entries.iter().map(|e| (e.key.as_slice(), e)).collect();
    let mut expired = Vec::new();
    let mut orphans = Vec::new();
    for e in entries {
        // A partner only counts if it points back at this entry.
        let partner = by_key.get(e.partner.as_slice()).filter(|p| p.partner == e.key);
        match partner {
            Some(p) => {
                let f = if e.followed { e } else { *p };
                if !alive(f.last_seen, f.lifetime, now) {
                    expired.push((e.key.clone(), e.last_seen));
                }
            }
            None => {
                if !alive(e.last_seen, e.lifetime, now) {
                    expired.push((e.key.clone(), e.last_seen));
                } else if !e.alone && (orphan_followed_too || !e.followed) && older_than(e.last_seen, grace, now) {
                    orphans.push((e.key.clone(), e.last_seen));
                }
            }
        }
    }
    (expired, orphans)
}

/// One sweep of both tables at `now_ns` (CLOCK_MONOTONIC, see [`monotonic_ns`]).
pub fn sweep(ct: &MapHandle, snat: &MapHandle, now_ns: u64, grace: Duration) -> Result<GcCounts, DatapathError> {
    let t0 = Instant::now();
    let mut c = GcCounts::default();

    let cts: Vec<(sl_ct_key, sl_ct_val)> = read_all(ct);
    c.ct_scanned = cts.len() as u64;
    let entries: Vec<Entry> = cts
        .iter()
        .map(|(k, v)| Entry {
            key: k.as_bytes().to_vec(),
            partner: ct_partner(k, v).as_bytes().to_vec(),
            followed: k.dir == DIR_FWD,
            alone: v.flags & CT_F_DSR_BACKEND != 0,
            last_seen: v.last_seen_ns,
            lifetime: v.lifetime_s,
        })
        .collect();
    // Either half of a conntrack pair without the other is an orphan.
    let (expired, orphans) = decide(&entries, now_ns, grace, true);
    let ls = |v: &sl_ct_val| v.last_seen_ns;
    for (k, seen) in &expired {
        c.ct_expired += delete_if_unchanged(ct, k, *seen, ls, &mut c.raced)? as u64;
    }
    for (k, seen) in &orphans {
        c.ct_orphans += delete_if_unchanged(ct, k, *seen, ls, &mut c.raced)? as u64;
    }

    let nats: Vec<(sl_nat_key, sl_nat_val)> = read_all(snat);
    c.nat_scanned = nats.len() as u64;
    let entries: Vec<Entry> = nats
        .iter()
        .map(|(k, v)| Entry {
            key: k.as_bytes().to_vec(),
            partner: nat_partner(k, v).as_bytes().to_vec(),
            followed: k.dir == NAT_OUT,
            alone: false,
            last_seen: v.last_seen_ns,
            lifetime: v.lifetime_s,
        })
        .collect();
    // An OUT entry without its IN is replaced by the datapath at the next
    // packet; only an IN without its OUT is an orphan here.
    let (expired, orphans) = decide(&entries, now_ns, grace, false);
    let ls = |v: &sl_nat_val| v.last_seen_ns;
    for (k, seen) in &expired {
        c.nat_expired += delete_if_unchanged(snat, k, *seen, ls, &mut c.raced)? as u64;
    }
    for (k, seen) in &orphans {
        c.nat_orphans += delete_if_unchanged(snat, k, *seen, ls, &mut c.raced)? as u64;
    }
    c.duration_us = t0.elapsed().as_micros() as u64;
    Ok(c)
}

/// [`sweep`] on the maps of a [`crate::pod::PodDatapath`], now.
pub fn sweep_now(dp: &crate::pod::PodDatapath, grace: Duration) -> Result<GcCounts, DatapathError> {
    let (ct, snat) = dp.gc_maps();
    sweep(ct, snat, monotonic_ns(), grace)
}

/// The default grace period of orphans.
pub const DEFAULT_ORPHAN_GRACE: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    fn e(key: &str, partner: &str, followed: bool, last_seen: u64, lifetime: u32) -> Entry {
        Entry { key: key.as_bytes().to_vec(), partner: partner.as_bytes().to_vec(), followed, alone: false, last_seen, lifetime }
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn decisions() {
        let now = 1000 * S;
        let grace = Duration::from_secs(30);
        let entries = vec![
            // live pair
            e("f1", "r1", true, now - S, 60),
            e("r1", "f1", false, now - S, 60),
            // followed entry expired: both go
            e("f2", "r2", true, now - 100 * S, 60),
            e("r2", "f2", false, now - S, 60),
            // partner expired, followed alive: both stay
            e("f3", "r3", true, now - S, 60),
            e("r3", "f3", false, now - 100 * S, 60),
            // orphan, young: stays; old: goes
            e("r4", "f4", false, now - 10 * S, 600),
            e("r5", "f5", false, now - 100 * S, 600),
            // a partner that points elsewhere does not count
            e("f6", "r6", true, now - 100 * S, 600),
            e("r6", "fX", false, now - S, 600),
        ];
        let (expired, orphans) = decide(&entries, now, grace, true);
        let names = |v: &[(Bytes, u64)]| v.iter().map(|(k, _)| String::from_utf8(k.clone()).unwrap()).collect::<Vec<_>>();
        assert_eq!(names(&expired), ["f2", "r2"]);
        assert_eq!(names(&orphans), ["r5", "f6"]);
        let (_, orphans) = decide(&entries, now, grace, false);
        assert_eq!(names(&orphans), ["r5"], "followed entries are not orphans when asked so");

        // A DSR backend's REV entry is alone by design: old but alive, it
        // stays; expired, it goes.
        let mut alone = e("r7", "f7", false, now - 100 * S, 600);
        alone.alone = true;
        let mut gone = e("r8", "f8", false, now - 100 * S, 60);
        gone.alone = true;
        let (expired, orphans) = decide(&[alone, gone], now, grace, true);
        assert_eq!(names(&expired), ["r8"]);
        assert!(orphans.is_empty());
    }
}
