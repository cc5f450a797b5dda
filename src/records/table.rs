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

    /// [`Table::put`] without waiting for the disk ([`Store::put_lazy`]: lost if the daemon dies
    /// before the next durable commit). Only for a change restart recovery rebuilds.
    pub fn put_lazy(&self, r: &R) -> Result<(), StateError> {
        let mut records = self.records.write().unwrap_or_else(|p| p.into_inner());
        self.store.put_lazy(R::TABLE, r.id(), r)?;
        records.insert(r.id().to_string(), r.clone());
        Ok(())
    }

    /// Applies `change` to the stored record `id` under the write lock, and writes the result
    /// through when `change` returns true. Returns the record as stored afterwards, or `None`
    /// when there is none (nothing written: a fold must never bring back an object that a
    /// Remove deleted meanwhile). Changing the *stored* record, not a copy read earlier, keeps
    /// what a lifecycle operation wrote meanwhile (a Stop's `network_attached = false`, its exit
    /// code). Errors: the store's (the copy is unchanged).
    pub fn modify(&self, id: &str, change: impl FnOnce(&mut R) -> bool) -> Result<Option<R>, StateError> {
        let mut records = self.records.write().unwrap_or_else(|p| p.into_inner());
        let Some(current) = records.get(id) else { return Ok(None) };
        let mut next = current.clone();
        if change(&mut next) {
            self.store.put(R::TABLE, id, &next)?;
            records.insert(id.to_string(), next.clone());
        }
        Ok(Some(next))
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
    fn modify_changes_the_stored_record_and_never_brings_back_a_deleted_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let t = Table::<ContainerRecord>::open(store.clone()).unwrap();
        let mut r = record("gone");
        t.put(&r).unwrap();
        r.message = "written meanwhile".into();
        t.put(&r).unwrap();
        let after = t.modify("gone", |cur| {
            cur.exit_code = 7;
            true
        });
        let after = after.unwrap().unwrap();
        assert_eq!((after.exit_code, after.message.as_str()), (7, "written meanwhile"));
        assert_eq!(store.get::<ContainerRecord>(CONTAINERS, "gone").unwrap().unwrap().exit_code, 7);
        assert_eq!(t.modify("gone", |_| false).unwrap().unwrap().exit_code, 7);
        assert!(t.delete("gone").unwrap());
        assert!(t.modify("gone", |_| true).unwrap().is_none(), "modify of a deleted record must write nothing");
        assert!(t.get("gone").is_none());
        assert!(store.get::<ContainerRecord>(CONTAINERS, "gone").unwrap().is_none());
    }
}
