//! An in-memory copy of the load-balancing maps, for tests without
//! privileges. It enforces what the kernel's maps would: a delete of a
//! missing key is an error, so a diff that deletes twice fails here too.

use crate::dump::LbDump;
use crate::types::MapOp;
use crate::LbMaps;

#[derive(Debug, Default, Clone)]
pub struct MemMaps {
    pub maps: LbDump,
    /// Number of writes applied, for tests of the diff's size.
    pub writes: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MemError(String);

impl LbMaps for MemMaps {
    type Error = MemError;

    fn apply(&mut self, ops: &[MapOp]) -> Result<(), MemError> {
        let m = &mut self.maps;
        for op in ops {
            self.writes += 1;
            let missing = match op {
                MapOp::UpsertService(k, v) => {
                    m.services.insert(*k, *v);
                    false
                }
                MapOp::DeleteService(k) => m.services.remove(k).is_none(),
                MapOp::UpsertBackend(id, b) => {
                    m.backends.insert(*id, *b);
                    false
                }
                MapOp::DeleteBackend(id) => m.backends.remove(id).is_none(),
                MapOp::UpsertRevNat(id, f) => {
                    m.revnat.insert(*id, *f);
                    false
                }
                MapOp::DeleteRevNat(id) => m.revnat.remove(id).is_none(),
                MapOp::UpsertAffinityMatch { backend_id, rev_nat_id } => {
                    m.affinity_match.insert((*backend_id, *rev_nat_id));
                    false
                }
                MapOp::DeleteAffinityMatch { backend_id, rev_nat_id } => {
                    !m.affinity_match.remove(&(*backend_id, *rev_nat_id))
                }
                MapOp::SetMaglev { rev_nat_id, table } => {
                    m.maglev.insert(*rev_nat_id, table.clone());
                    false
                }
                MapOp::UpdateMaglevSlots { rev_nat_id, slots } => match m.maglev.get_mut(rev_nat_id) {
                    Some(t) => {
                        for (i, b) in slots {
                            match t.get_mut(*i as usize) {
                                Some(x) => *x = *b,
                                None => return Err(MemError(format!("slot {i} past the end of table {rev_nat_id}"))),
                            }
                        }
                        false
                    }
                    None => true,
                },
                MapOp::DeleteMaglev(id) => m.maglev.remove(id).is_none(),
            };
            if missing {
                return Err(MemError(format!("delete of a missing entry: {}", op.describe())));
            }
        }
        Ok(())
    }

    fn dump(&self) -> Result<LbDump, MemError> {
        Ok(self.maps.clone())
    }
}
