//! Durable metadata store and restart recovery.
//!
//! Metadata of pod sandboxes, containers and images lives in one redb database
//! (`<root>/state.redb`), in the role bbolt plays for containerd: every write is one ACID
//! transaction, so a crash leaves either the old or the new record, never a torn one. Values are
//! JSON so records can grow fields without a migration (unknown fields are ignored, missing ones
//! take their serde default).

use redb::{Database, Durability, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Serialize};
use std::path::{Path, PathBuf};

/// Table of pod sandbox records, keyed by sandbox ID.
pub const SANDBOXES: &str = "sandboxes";
/// Table of container records, keyed by container ID.
pub const CONTAINERS: &str = "containers";
/// Table of image records, keyed by image ID (`sha256:<config digest>`).
pub const IMAGES: &str = "images";
/// Table of unpacked layers, keyed by chain ID.
pub const LAYERS: &str = "layers";
/// Table of layer leases: holder (container ID) -> the chain IDs its rootfs stacks.
pub const LEASES: &str = "leases";

/// Errors of the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The database could not be opened (missing directory, another daemon holds it, corruption).
    #[error("metadata store {path}: {message}")]
    Open { path: PathBuf, message: String },
    /// A transaction failed.
    #[error("metadata store table {table}: {message}")]
    Db { table: &'static str, message: String },
    /// A stored value is not valid JSON for its record type.
    #[error("metadata store table {table} key {key}: undecodable record: {message}")]
    Decode { table: &'static str, key: String, message: String },
}

/// The metadata store. Cheap to share behind an `Arc`; every method is one transaction.
pub struct Store {
    db: Database,
}

fn def(table: &'static str) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(table)
}

impl Store {
    /// Opens (creating if needed) `<dir>/state.redb`.
    ///
    /// Errors with [`StateError::Open`] when the file is locked by another process (a second
    /// daemon on the same root) or cannot be created.
    pub fn open(dir: &Path) -> Result<Store, StateError> {
        let path = dir.join("state.redb");
        std::fs::create_dir_all(dir).map_err(|e| StateError::Open { path: path.clone(), message: e.to_string() })?;
        let db = Database::create(&path).map_err(|e| StateError::Open { path: path.clone(), message: e.to_string() })?;
        let store = Store { db };
        // Create every table up front so reads never see "table does not exist".
        let w = store.db.begin_write().map_err(|e| StateError::Open { path: path.clone(), message: e.to_string() })?;
        for t in [SANDBOXES, CONTAINERS, IMAGES, LAYERS, LEASES] {
            w.open_table(def(t)).map_err(|e| StateError::Open { path: path.clone(), message: e.to_string() })?;
        }
        w.commit().map_err(|e| StateError::Open { path, message: e.to_string() })?;
        Ok(store)
    }

    /// Inserts or replaces the record `key` in `table`, durably: on disk (fsynced) when this
    /// returns, with every [`Store::put_lazy`] committed before it.
    pub fn put<T: Serialize>(&self, table: &'static str, key: &str, value: &T) -> Result<(), StateError> {
        self.put_with(table, key, value, Durability::Immediate)
    }

    /// Inserts or replaces the record `key` in `table` without waiting for the disk (redb's
    /// `Durability::None`: no fsync; the data stays in this process until a later durable
    /// commit writes it). Readers of this process see it at once. A crash of the daemon before
    /// the next durable commit (any [`Store::put`] or [`Store::delete`]) loses it, so it is only
    /// for a change that a durable commit follows in the same operation, or that restart
    /// recovery rebuilds from what the runtime reports. Saves one fsync (about 2 ms on a
    /// journaled ext4 disk).
    pub fn put_lazy<T: Serialize>(&self, table: &'static str, key: &str, value: &T) -> Result<(), StateError> {
        self.put_with(table, key, value, Durability::None)
    }

    /// Commits durably with nothing changed: every [`Store::put_lazy`] before it is on disk when
    /// this returns. For a graceful stop, so the records it leaves need no recovery. Errors:
    /// [`StateError::Db`] (table named "*") when redb cannot commit.
    pub fn flush(&self) -> Result<(), StateError> {
        let err = |e: &dyn std::fmt::Display| StateError::Db { table: "*", message: e.to_string() };
        let mut w = self.db.begin_write().map_err(|e| err(&e))?;
        w.set_durability(Durability::Immediate);
        w.commit().map_err(|e| err(&e))
    }

    fn put_with<T: Serialize>(&self, table: &'static str, key: &str, value: &T, durability: Durability) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(value).map_err(|e| StateError::Db { table, message: e.to_string() })?;
        let err = |e: &dyn std::fmt::Display| StateError::Db { table, message: e.to_string() };
        let mut w = self.db.begin_write().map_err(|e| err(&e))?;
        w.set_durability(durability);
        {
            let mut t = w.open_table(def(table)).map_err(|e| err(&e))?;
            t.insert(key, bytes.as_slice()).map_err(|e| err(&e))?;
        }
        w.commit().map_err(|e| err(&e))
    }

    /// Reads the record `key` of `table`; `Ok(None)` when there is none.
    pub fn get<T: DeserializeOwned>(&self, table: &'static str, key: &str) -> Result<Option<T>, StateError> {
        let err = |e: &dyn std::fmt::Display| StateError::Db { table, message: e.to_string() };
        let r = self.db.begin_read().map_err(|e| err(&e))?;
        let t = r.open_table(def(table)).map_err(|e| err(&e))?;
        let Some(v) = t.get(key).map_err(|e| err(&e))? else { return Ok(None) };
        serde_json::from_slice(v.value()).map(Some).map_err(|e| StateError::Decode { table, key: key.to_string(), message: e.to_string() })
    }

    /// Deletes the record `key` of `table`; returns whether it existed. Deleting a missing record
    /// is not an error (undo steps are idempotent).
    pub fn delete(&self, table: &'static str, key: &str) -> Result<bool, StateError> {
        let err = |e: &dyn std::fmt::Display| StateError::Db { table, message: e.to_string() };
        let w = self.db.begin_write().map_err(|e| err(&e))?;
        let existed = {
            let mut t = w.open_table(def(table)).map_err(|e| err(&e))?;
            let old = t.remove(key).map_err(|e| err(&e))?;
            old.is_some()
        };
        w.commit().map_err(|e| err(&e))?;
        Ok(existed)
    }

    /// Every record of `table` as `(key, value)`, in key order.
    pub fn list<T: DeserializeOwned>(&self, table: &'static str) -> Result<Vec<(String, T)>, StateError> {
        let err = |e: &dyn std::fmt::Display| StateError::Db { table, message: e.to_string() };
        let r = self.db.begin_read().map_err(|e| err(&e))?;
        let t = r.open_table(def(table)).map_err(|e| err(&e))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| err(&e))? {
            let (k, v) = item.map_err(|e| err(&e))?;
            let key = k.value().to_string();
            let value =
                serde_json::from_slice(v.value()).map_err(|e| StateError::Decode { table, key: key.clone(), message: e.to_string() })?;
            out.push((key, value));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Rec {
        name: String,
        n: u32,
    }

    #[test]
    fn put_get_list_delete_survive_reopen() {
        let d = tempfile::tempdir().unwrap();
        {
            let s = Store::open(d.path()).unwrap();
            s.put(CONTAINERS, "b", &Rec { name: "two".into(), n: 2 }).unwrap();
            s.put(CONTAINERS, "a", &Rec { name: "one".into(), n: 1 }).unwrap();
            assert!(s.get::<Rec>(SANDBOXES, "a").unwrap().is_none());
        }
        let s = Store::open(d.path()).unwrap();
        assert_eq!(s.get::<Rec>(CONTAINERS, "a").unwrap(), Some(Rec { name: "one".into(), n: 1 }));
        let all: Vec<(String, Rec)> = s.list(CONTAINERS).unwrap();
        assert_eq!(all.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), vec!["a", "b"]);
        assert!(s.delete(CONTAINERS, "a").unwrap());
        assert!(!s.delete(CONTAINERS, "a").unwrap());
        assert_eq!(s.list::<Rec>(CONTAINERS).unwrap().len(), 1);
    }

    /// What a crash leaves: a copy of the file while the store is open. A lazy put is read back
    /// at once but is not on disk until a durable commit follows, which writes it too.
    #[test]
    fn a_lazy_put_reaches_the_disk_with_the_next_durable_commit() {
        let d = tempfile::tempdir().unwrap();
        let crash_copy = |name: &str| {
            let dir = d.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::copy(d.path().join("state.redb"), dir.join("state.redb")).unwrap();
            Store::open(&dir).unwrap()
        };
        let s = Store::open(d.path()).unwrap();
        s.put(CONTAINERS, "a", &Rec { name: "created".into(), n: 1 }).unwrap();
        s.put_lazy(CONTAINERS, "a", &Rec { name: "running".into(), n: 2 }).unwrap();
        assert_eq!(s.get::<Rec>(CONTAINERS, "a").unwrap().unwrap().name, "running");
        let before = crash_copy("before");
        assert_eq!(before.get::<Rec>(CONTAINERS, "a").unwrap().unwrap().name, "created");
        s.put(SANDBOXES, "p", &Rec { name: "pod".into(), n: 3 }).unwrap();
        let after = crash_copy("after");
        assert_eq!(after.get::<Rec>(CONTAINERS, "a").unwrap().unwrap().name, "running");
        assert_eq!(after.get::<Rec>(SANDBOXES, "p").unwrap().unwrap().name, "pod");
        s.put_lazy(CONTAINERS, "a", &Rec { name: "exited".into(), n: 4 }).unwrap();
        s.flush().unwrap();
        let flushed = crash_copy("flushed");
        assert_eq!(flushed.get::<Rec>(CONTAINERS, "a").unwrap().unwrap().name, "exited");
    }
}
