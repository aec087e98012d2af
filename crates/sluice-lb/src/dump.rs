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
                    k.frontend,
                    v.count,
                    v.rev_nat_id,
                    flags_str(v.flags),
                    v.affinity_timeout
                );
            } else {
                let _ = writeln!(s, "svc {} slot={} backend={} id={}", k.frontend, k.slot, v.backend_id, v.rev_nat_id);
            }
        }
        for (id, b) in &self.backends {
            let _ = writeln!(s, "backend {id} {b}");
        }
        for (id, f) in &self.revnat {
            let _ = writeln!(s, "revnat {id} {f}");
        }
        for (b, r) in &self.affinity_match {
            let _ = writeln!(s, "affinity-match backend={b} id={r}");
        }
        s
    }
}
