//! The maps' contents read back, and their text form for golden tests and
//! `sluice bpf lb list`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::types::*;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbDump {
    #[serde(with = "pairs")]
    pub services: BTreeMap<SvcKey, SvcVal>,
    pub backends: BTreeMap<u32, BackendKey>,
    pub revnat: BTreeMap<u32, FrontendKey>,
    pub affinity_match: BTreeSet<(u32, u32)>,
    /// Maglev tables by frontend id: the backend id of each slot.
    #[serde(default)]
    pub maglev: BTreeMap<u32, Vec<u32>>,
}

/// JSON objects need string keys: store the service map as a list of pairs.
mod pairs {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(m: &BTreeMap<SvcKey, SvcVal>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.iter())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<SvcKey, SvcVal>, D::Error> {
        let v: Vec<(SvcKey, SvcVal)> = Vec::deserialize(d)?;
        Ok(v.into_iter().collect())
    }
}

pub fn flags_str(flags: u16) -> String {
    let mut v = Vec::new();
    for (bit, name) in [
        (SVC_F_AFFINITY, "affinity"),
        (SVC_F_NODEPORT, "nodeport"),
        (SVC_F_EXTERNAL_IP, "externalip"),
        (SVC_F_LOADBALANCER, "loadbalancer"),
        (SVC_F_MAGLEV, "maglev"),
        (SVC_F_ETP_LOCAL, "etp-local"),
        (SVC_F_DSR, "dsr"),
    ] {
        if flags & bit != 0 {
            v.push(name);
        }
    }
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

/// A frontend in a dump line: its address, and for a local twin its scope
/// spelled out (`*:30080/TCP scope=nodeport-local`).
fn frontend_text(k: &FrontendKey) -> String {
    if k.scope.is_local() {
        format!("{} scope={}", k.address(), k.scope.as_str())
    } else {
        k.to_string()
    }
}

impl LbDump {
    /// One line per map entry, sorted: stable enough to compare with a
    /// golden file.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.services {
            if k.slot == 0 {
                let _ = writeln!(
                    s,
                    "svc {} slot=0 count={} id={} flags={} affinity={}s",
                    frontend_text(&k.frontend),
                    v.count,
                    v.rev_nat_id,
                    flags_str(v.flags),
                    v.affinity_timeout
                );
            } else {
                let _ = writeln!(s, "svc {} slot={} backend={} id={}", frontend_text(&k.frontend), k.slot, v.backend_id, v.rev_nat_id);
            }
        }
        for (id, b) in &self.backends {
            let _ = writeln!(s, "backend {id} {b}");
        }
        for (id, f) in &self.revnat {
            let _ = writeln!(s, "revnat {id} {}", frontend_text(f));
        }
        for (b, r) in &self.affinity_match {
            let _ = writeln!(s, "affinity-match backend={b} id={r}");
        }
        for (id, table) in &self.maglev {
            let _ = writeln!(s, "maglev id={id} {}", maglev_summary(table));
        }
        s
    }
}

/// A Maglev table in one line: its size and the slots of each backend,
/// `size=16381 backend=1:5461 backend=2:5460 ...` (id 0 is an empty slot).
pub fn maglev_summary(table: &[u32]) -> String {
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for id in table {
        *counts.entry(*id).or_default() += 1;
    }
    let mut s = format!("size={}", table.len());
    for (id, n) in counts {
        let _ = write!(s, " backend={id}:{n}");
    }
    s
}
