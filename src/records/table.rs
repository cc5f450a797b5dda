//! One record table: a redb table (`containers` or `sandboxes`) with a write-through, in-memory
//! copy of every record, so listing (kubelet's relist calls ListContainers and ListPodSandbox
//! every second) and lookups do not decode every record's JSON from the store each time.
//!
//! The store stays the truth: every change is written to redb first and reaches the copy only
//! once that transaction committed, under the copy's write lock, so readers never see a record
//! the store does not hold. The copy is loaded once when the daemon opens. Nothing else may
//! write these tables.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::state::{StateError, Store};

/// A record kept in a [`Table`]: its redb table and its key.
pub trait Record: Clone + Serialize + DeserializeOwned {
    /// The redb table (`crate::state::CONTAINERS`, `crate::state::SANDBOXES`).
    const TABLE: &'static str;
    /// The key: the object's 64-hex ID.
    fn id(&self) -> &str;
}

/// A table of records and its in-memory copy.
pub struct Table<R: Record> {
    store: Arc<Store>,
    records: RwLock<HashMap<String, R>>,
}

impl<R: Record> Table<R> {
    /// Loads every record of `store`'s table `R::TABLE`. Errors: the store's, e.g. a record that
    /// does not decode.
    pub fn open(store: Arc<Store>) -> Result<Table<R>, StateError> {
        let records = store.list::<R>(R::TABLE)?.into_iter().collect();
        Ok(Table { store, records: RwLock::new(records) })
    }

    /// The record with exactly this ID.
    pub fn get(&self, id: &str) -> Option<R> {
        self.records.read().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    /// Every record (in no particular order).
    pub fn list(&self) -> Vec<R> {
        self.records.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// The records whose ID starts with `prefix`.
    pub fn with_prefix(&self, prefix: &str) -> Vec<R> {
        self.records.read().unwrap_or_else(|p| p.into_inner()).values().filter(|r| r.id().starts_with(prefix)).cloned().collect()
    }

    /// Writes `r` to the store, then to the copy. Errors: the store's (the copy is unchanged).
    pub fn put(&self, r: &R) -> Result<(), StateError> {
        let mut records = self.records.write().unwrap_or_else(|p| p.into_inner());
        self.store.put(R::TABLE, r.id(), r)?;
        records.insert(r.id().to_string(), r.clone());
        Ok(())
    }

    /// Writes `r` as [`Table::put`] does, but only while a record with its ID is still there:
    /// folding an exit into a record listed earlier must not bring back an object that a Remove
    /// deleted meanwhile. `Ok(false)` when it was gone (nothing written). Errors: the store's
    /// (the copy is unchanged).
    pub fn update(&self, r: &R) -> Result<bool, StateError> {
        let mut records = self.records.write().unwrap_or_else(|p| p.into_inner());
        if !records.contains_key(r.id()) {
            return Ok(false);
        }
        self.store.put(R::TABLE, r.id(), r)?;
        records.insert(r.id().to_string(), r.clone());
        Ok(true)
    }

    /// Deletes the record `id` from the store, then from the copy; `true` when it existed.
    /// Errors: the store's (the copy is unchanged).
    pub fn delete(&self, id: &str) -> Result<bool, StateError> {
        let mut records = self.records.write().unwrap_or_else(|p| p.into_inner());
        let existed = self.store.delete(R::TABLE, id)?;
        records.remove(id);
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::ContainerRecord;
    use crate::state::CONTAINERS;

    fn record(id: &str) -> ContainerRecord {
        ContainerRecord::for_test(id, "s")
    }

    #[test]
    fn writes_reach_the_store_and_the_copy_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let t = Table::<ContainerRecord>::open(store.clone()).unwrap();
        t.put(&record("abc1")).unwrap();
        t.put(&record("abd2")).unwrap();
        assert_eq!(t.get("abc1").unwrap().id, "abc1");
        assert_eq!(t.with_prefix("ab").len(), 2);
        assert!(t.delete("abd2").unwrap());
        assert!(!t.delete("abd2").unwrap());
        let again = Table::<ContainerRecord>::open(store.clone()).unwrap();
        assert_eq!(again.list().iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["abc1"]);
        assert_eq!(store.get::<ContainerRecord>(CONTAINERS, "abc1").unwrap().unwrap().id, "abc1");
    }

    #[test]
    fn update_never_brings_back_a_deleted_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let t = Table::<ContainerRecord>::open(store.clone()).unwrap();
        let mut r = record("gone");
        t.put(&r).unwrap();
        r.exit_code = 7;
        assert!(t.update(&r).unwrap());
        assert_eq!(t.get("gone").unwrap().exit_code, 7);
        assert!(t.delete("gone").unwrap());
        assert!(!t.update(&r).unwrap(), "update of a deleted record must write nothing");
        assert!(t.get("gone").is_none());
        assert!(store.get::<ContainerRecord>(CONTAINERS, "gone").unwrap().is_none());
    }
}
