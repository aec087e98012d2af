//! The embedded store of applied objects.
//!
//! One redb database, `<state-dir>/objects.redb`, one table from the object
//! key (`Kind/namespace/name`) to the object as applied (JSON). An apply or
//! delete is one write transaction: after a crash the store holds either
//! all of it or none of it.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::Value;

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects_v1");

/// The store's tables besides applied objects: each maps a string key to a
/// JSON record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Applied objects (`Kind/namespace/name`).
    Objects,
    /// Pod endpoints (`containerID/ifname`), written by CNI ADD.
    Endpoints,
    /// Pod address allocations (`address` -> `containerID/ifname`).
    Ipam,
}

impl Table {
    fn def(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        match self {
            Table::Objects => OBJECTS,
            Table::Endpoints => TableDefinition::new("endpoints_v1"),
            Table::Ipam => TableDefinition::new("ipam_v1"),
        }
    }
}

/// One write to a table: a put (key, JSON bytes) or a delete (key, None).
pub type Write = (Table, String, Option<Vec<u8>>);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {message}")]
    Db { path: PathBuf, message: String },
    #[error("store {path}: object {key} is not valid JSON: {source}")]
    Corrupt {
        path: PathBuf,
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A handle on the store; clones share one database (redb serialises
/// write transactions).
#[derive(Clone)]
pub struct Store {
    db: std::sync::Arc<Database>,
    path: PathBuf,
}

impl Store {
    /// Open (or create) the store in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join("objects.redb");
        let err = |e: &dyn std::fmt::Display| StoreError::Db { path: path.clone(), message: e.to_string() };
        std::fs::create_dir_all(state_dir).map_err(|e| err(&e))?;
        let db = Database::create(&path).map_err(|e| err(&e))?;
        let tx = db.begin_write().map_err(|e| err(&e))?;
        for t in [Table::Objects, Table::Endpoints, Table::Ipam] {
            tx.open_table(t.def()).map_err(|e| err(&e))?;
        }
        tx.commit().map_err(|e| err(&e))?;
        Ok(Store { db: std::sync::Arc::new(db), path })
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Db { path: self.path.clone(), message: e.to_string() }
    }

    /// Every stored object, in key order.
    pub fn load_all(&self) -> Result<Vec<(String, Value)>, StoreError> {
        self.load_table(Table::Objects)
    }

    /// Every record of a table, in key order.
    pub fn load_table(&self, table: Table) -> Result<Vec<(String, Value)>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(table.def()).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let key = k.value().to_string();
            let val = serde_json::from_slice(v.value())
                .map_err(|source| StoreError::Corrupt { path: self.path.clone(), key: key.clone(), source })?;
            out.push((key, val));
        }
        Ok(out)
    }

    /// Write `puts` (objects already serialised as JSON) and remove
    /// `deletes` in one transaction.
    pub fn commit(&self, puts: &[(String, Vec<u8>)], deletes: &[String]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = tx.open_table(OBJECTS).map_err(|e| self.err(e))?;
            for (k, v) in puts {
                t.insert(k.as_str(), v.as_slice()).map_err(|e| self.err(e))?;
            }
            for k in deletes {
                t.remove(k.as_str()).map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Apply writes to any tables in one transaction: after a crash the
    /// store holds all of them or none.
    pub fn write(&self, writes: &[Write]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        for table in [Table::Objects, Table::Endpoints, Table::Ipam] {
            if !writes.iter().any(|(t, _, _)| *t == table) {
                continue;
            }
            let mut t = tx.open_table(table.def()).map_err(|e| self.err(e))?;
            for (_, k, v) in writes.iter().filter(|(t, _, _)| *t == table) {
                match v {
                    Some(v) => {
                        t.insert(k.as_str(), v.as_slice()).map_err(|e| self.err(e))?;
                    }
                    None => {
                        t.remove(k.as_str()).map_err(|e| self.err(e))?;
                    }
                }
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            let put = |k: &str, v: serde_json::Value| (k.to_string(), serde_json::to_vec(&v).unwrap());
            s.commit(&[put("Service/a/x", serde_json::json!({"k": 1})), put("Service/a/y", serde_json::json!(2))], &[])
                .unwrap();
            s.commit(&[], &["Service/a/y".into()]).unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.load_all().unwrap(), vec![("Service/a/x".to_string(), serde_json::json!({"k": 1}))]);
    }

    #[test]
    fn tables_are_separate_and_written_together() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.write(&[
                (Table::Ipam, "10.0.0.2".into(), Some(b"\"c1/eth0\"".to_vec())),
                (Table::Endpoints, "c1/eth0".into(), Some(b"{}".to_vec())),
            ])
            .unwrap();
            s.write(&[(Table::Ipam, "10.0.0.3".into(), Some(b"\"c2/eth0\"".to_vec()))]).unwrap();
            s.write(&[(Table::Ipam, "10.0.0.2".into(), None)]).unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert!(s.load_all().unwrap().is_empty());
        assert_eq!(s.load_table(Table::Ipam).unwrap(), vec![("10.0.0.3".to_string(), serde_json::json!("c2/eth0"))]);
        assert_eq!(s.load_table(Table::Endpoints).unwrap().len(), 1);
    }
}
