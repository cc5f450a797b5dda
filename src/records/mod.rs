//! The record layer: the pod sandbox and container records, the one place that folds the end of
//! their processes in, and the one place that publishes their events.
//!
//! - [`Table`](table::Table): each redb table (`sandboxes`, `containers`) with a write-through,
//!   in-memory copy, so kubelet's relists (ListPodSandbox and ListContainers every second) never
//!   decode the store.
//! - Reads fold exits in: [`Records::container`] and [`Records::sandbox`] (and the lists) look at
//!   the monitor's exit file of a record that says its process runs, and write the end into the
//!   record ([`container::apply_end`]; a pod whose infra ended becomes NotReady) before returning
//!   it, so an exit that happened while berth was down is seen at the first read. A container's
//!   fold publishes its STOPPED event. The exit watcher (`container::watch`) is only a trigger: it
//!   calls [`Records::fold_container`] for running containers, so a subscriber hears of an exit
//!   nobody asked about; the fold itself is this one.
//! - Every change of a record goes through `put_*`/`delete_*` here, and every event through
//!   `publish_*` here, whose snapshot of the pod is taken from these tables.
//!
//! The lifecycles (`sandbox/`, `container/`) sit above this layer and call it; it imports
//! neither of them, nor the daemon.

pub mod container;
pub mod events;
pub mod liveness;
pub mod sandbox;
pub mod table;
#[cfg(test)]
mod tests;

pub use container::{apply_end, apply_exit, ContainerPaths, ContainerRecord, ContainerState};
pub use events::{ContainerEvent, ContainerEventKind, EventBus, Lagged, Subscription};
pub use sandbox::{namespace_options, SandboxPaths, SandboxRecord, SandboxState};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::state::{StateError, Store};
use table::Table;

/// The two directory trees per-object files live in: `<run_root>/<kind>/<id>` (volatile: the
/// OCI bundle, the exit file, monitor files) and `<root>/<kind>/<id>` (persistent: the writable
/// layer, the pod's hostname, hosts and resolv.conf).
pub trait Roots {
    /// The volatile root (config `run_root`, `/run/berth`).
    fn run_root(&self) -> &Path;
    /// The persistent root (config `root`, `/var/lib/berth`).
    fn root(&self) -> &Path;
}

impl<T: Roots + ?Sized> Roots for Arc<T> {
    fn run_root(&self) -> &Path {
        (**self).run_root()
    }
    fn root(&self) -> &Path {
        (**self).root()
    }
}

impl Roots for crate::config::Config {
    fn run_root(&self) -> &Path {
        &self.run_root
    }
    fn root(&self) -> &Path {
        &self.root
    }
}

/// The pod sandbox and container records and their event bus (`Daemon.records`).
pub struct Records {
    containers: Table<ContainerRecord>,
    sandboxes: Table<SandboxRecord>,
    events: EventBus,
    run_root: PathBuf,
    root: PathBuf,
}

impl Roots for Records {
    fn run_root(&self) -> &Path {
        &self.run_root
    }
    fn root(&self) -> &Path {
        &self.root
    }
}

impl Records {
    /// Loads both tables from `store`; per-object files are found under `roots`.
    /// Errors: the store's, e.g. a record that does not decode.
    pub fn open(store: Arc<Store>, roots: &impl Roots) -> std::result::Result<Records, StateError> {
        Ok(Records {
            containers: Table::open(store.clone())?,
            sandboxes: Table::open(store)?,
            events: EventBus::default(),
            run_root: roots.run_root().to_path_buf(),
            root: roots.root().to_path_buf(),
        })
    }

    /// The event bus (CRI GetContainerEvents subscribes here).
    pub fn events(&self) -> &EventBus {
        &self.events
    }

    // ---- containers ----

    /// Looks a container up by full ID or unique prefix (crictl passes prefixes), with the end
    /// of its process folded in ([`Records::fold_container`]).
    ///
    /// Errors: NotFound when nothing matches; InvalidArgument naming `container_id` when the
    /// prefix is ambiguous or empty; the store's when the fold cannot be written.
    pub fn container(&self, id: &str) -> Result<ContainerRecord> {
        let r = lookup(&self.containers, id, "container", "container_id", "containers")?;
        self.fold_container(r)
    }

    /// Every container, each with its end folded in.
    pub fn containers(&self) -> Result<Vec<ContainerRecord>> {
        self.containers.list().into_iter().map(|r| self.fold_container(r)).collect()
    }

    /// The containers of pod sandbox `sandbox_id`, each with its end folded in.
    pub fn containers_in(&self, sandbox_id: &str) -> Result<Vec<ContainerRecord>> {
        self.containers.list().into_iter().filter(|r| r.sandbox_id == sandbox_id).map(|r| self.fold_container(r)).collect()
    }

    /// The stored record with exactly this ID, as it is (no fold): for an operation that holds
    /// the container's lock and decides itself what its end means.
    pub fn stored_container(&self, id: &str) -> Option<ContainerRecord> {
        self.containers.get(id)
    }

    /// Every stored container record, as it is (restart recovery, the exit watcher).
    pub fn stored_containers(&self) -> Vec<ContainerRecord> {
        self.containers.list()
    }

    /// Stores `r` (new or changed). Errors: the store's (nothing changed).
    pub fn put_container(&self, r: &ContainerRecord) -> std::result::Result<(), StateError> {
        self.containers.put(r)
    }

    /// Deletes the record `id`; `true` when it existed. Errors: the store's.
    pub fn delete_container(&self, id: &str) -> std::result::Result<bool, StateError> {
        self.containers.delete(id)
    }

    /// Folds the end of the container's process into a Created or Running record, stores the
    /// change and publishes STOPPED: the monitor's exit file, or, when the monitor and the
    /// process are both gone without one, EXITED with code 255 and reason `Unknown`. A record
    /// that RemoveContainer deleted meanwhile is never written back. Errors: the store's.
    pub fn fold_container(&self, r: ContainerRecord) -> Result<ContainerRecord> {
        if !matches!(r.state, ContainerState::Created | ContainerState::Running) {
            return Ok(r);
        }
        // CreateContainer stores the record before the runtime runs and has no monitor to watch
        // until it returns: a Created record without a monitor PID is a create in progress, not
        // a lost process (one a crash cut short is settled by `container::recover`).
        if r.state == ContainerState::Created && r.monitor_pid == 0 {
            return Ok(r);
        }
        let paths = ContainerPaths::new(self, &r.id);
        let Some(ended) = paths.watched(&r).observe() else { return Ok(r) };
        // Fold into the record as stored now, not into `r`: a Stop that finished meanwhile wrote
        // the exit it saw (and a fold of `r` would overwrite it, or with "lost" once the bundle
        // is gone). Removed meanwhile: nothing is written, `r` goes back as it was.
        let mut folded = false;
        let stored = self.containers.modify(&r.id, |cur| {
            folded = matches!(cur.state, ContainerState::Created | ContainerState::Running);
            if folded {
                *cur = apply_end(cur.clone(), &ended);
            }
            folded
        })?;
        match stored {
            Some(stored) => {
                if folded {
                    self.publish_container(ContainerEventKind::Stopped, &stored);
                }
                Ok(stored)
            }
            None => Ok(r),
        }
    }

    /// Publishes a container event. `r` is the container's record after the change (for
    /// DELETED: its last record, no longer stored). A STOPPED of a started container publishes
    /// its missing STARTED first.
    pub fn publish_container(&self, kind: ContainerEventKind, r: &ContainerRecord) {
        let fill = (kind == ContainerEventKind::Stopped && r.started_at != 0).then_some(ContainerEventKind::Started);
        let current = (kind != ContainerEventKind::Deleted).then_some(r);
        let sent = self.events.publish_with(kind, &r.id, fill, || self.snapshot(&r.sandbox_id, current));
        if !sent.is_empty() {
            tracing::debug!(container = %r.id, events = ?sent, "container events published");
        }
    }

    // ---- pod sandboxes ----

    /// Looks a pod sandbox up by full ID or unique prefix, with the end of its infra folded in
    /// ([`Records::fold_sandbox`]).
    ///
    /// Errors: NotFound when nothing matches; InvalidArgument naming `pod_sandbox_id` when the
    /// prefix is ambiguous or empty; the store's when the fold cannot be written.
    pub fn sandbox(&self, id: &str) -> Result<SandboxRecord> {
        let r = lookup(&self.sandboxes, id, "pod sandbox", "pod_sandbox_id", "pod sandboxes")?;
        self.fold_sandbox(r)
    }

    /// Every pod sandbox in ID order, each with the end of its infra folded in.
    pub fn sandboxes(&self) -> Result<Vec<SandboxRecord>> {
        self.stored_sandboxes().into_iter().map(|r| self.fold_sandbox(r)).collect()
    }

    /// The stored record with exactly this ID, as it is (no fold).
    pub fn stored_sandbox(&self, id: &str) -> Option<SandboxRecord> {
        self.sandboxes.get(id)
    }

    /// Every stored pod sandbox record in ID order, as it is (restart recovery).
    pub fn stored_sandboxes(&self) -> Vec<SandboxRecord> {
        let mut all = self.sandboxes.list();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Stores `r` (new or changed). Errors: the store's (nothing changed).
    pub fn put_sandbox(&self, r: &SandboxRecord) -> std::result::Result<(), StateError> {
        self.sandboxes.put(r)
    }

    /// Deletes the record `id`; `true` when it existed. Errors: the store's.
    pub fn delete_sandbox(&self, id: &str) -> std::result::Result<bool, StateError> {
        self.sandboxes.delete(id)
    }

    /// Marks a Ready pod sandbox NotReady when its infra process has ended (exit file, or it and
    /// its monitor gone), and stores that, never bringing back a sandbox RemovePodSandbox
    /// deleted since it was read. Errors: the store's.
    pub fn fold_sandbox(&self, mut r: SandboxRecord) -> Result<SandboxRecord> {
        if r.state != SandboxState::Ready || r.infra_watched(&SandboxPaths::new(self, &r.id)).observe().is_none() {
            return Ok(r);
        }
        // Only the state changes, in the record as stored now: what a StopPodSandbox wrote
        // meanwhile (`network_attached = false`, `shm_mounted = false`) must stay.
        let stored = self.sandboxes.modify(&r.id, |cur| {
            let ready = cur.state == SandboxState::Ready;
            if ready {
                cur.state = SandboxState::NotReady;
            }
            ready
        })?;
        Ok(stored.unwrap_or_else(|| {
            r.state = SandboxState::NotReady;
            r
        }))
    }

    /// Publishes an event of pod sandbox `r` itself (`container_id` = its ID). `r` is its
    /// record after the change (for DELETED: its last record, no longer stored).
    pub fn publish_sandbox(&self, kind: ContainerEventKind, r: &SandboxRecord) {
        let sent = self.events.publish_with(kind, &r.id, None, || {
            let (stored, containers) = self.snapshot(&r.id, None);
            (stored.or_else(|| Some(r.clone())), containers)
        });
        if !sent.is_empty() {
            tracing::debug!(sandbox = %r.id, events = ?sent, "pod sandbox events published");
        }
    }

    /// The stored records of sandbox `sandbox_id` and its containers (oldest first), with
    /// `current` (the record the caller holds, possibly newer than the stored one) in place of
    /// its stored copy: the pod state an event carries.
    fn snapshot(&self, sandbox_id: &str, current: Option<&ContainerRecord>) -> (Option<SandboxRecord>, Vec<ContainerRecord>) {
        let sandbox = self.sandboxes.get(sandbox_id);
        let mut containers: Vec<ContainerRecord> = self.containers.list().into_iter().filter(|r| r.sandbox_id == sandbox_id).collect();
        if let Some(cur) = current {
            if let Some(slot) = containers.iter_mut().find(|r| r.id == cur.id) {
                *slot = cur.clone();
            }
        }
        containers.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.id.cmp(&b.id)));
        (sandbox, containers)
    }
}

/// The record of `table` whose ID is `id` or, failing that, the one whose ID starts with it.
/// Errors: InvalidArgument naming `field` for an empty or ambiguous prefix; NotFound (`kind`).
fn lookup<R: table::Record>(table: &Table<R>, id: &str, kind: &'static str, field: &'static str, plural: &str) -> Result<R> {
    if id.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if let Some(r) = table.get(id) {
        return Ok(r);
    }
    let mut matches = table.with_prefix(id);
    match matches.len() {
        0 => Err(Error::NotFound { kind, id: id.to_string() }),
        1 => Ok(matches.remove(0)),
        n => Err(Error::invalid(field, format!("prefix {id:?} matches {n} {plural}"))),
    }
}
