//! The record layer: the pod sandbox and container records, the one place that folds the end of
//! their processes in, and the one place that publishes their events.
//!
//! - [`Table`](table::Table): each redb table (`sandboxes`, `containers`) with a write-through,
//!   in-memory copy, so kubelet's relists (ListPodSandbox and ListContainers every second) never
//!   decode the store.
//! - Reads never write: [`Records::container`], [`Records::sandbox`] and the lists return the
//!   records as stored.
//! - One exit path: every live infra and container process is watched ([`Records::watch_container`],
//!   [`Records::watch_sandbox`]; a pidfd of its monitor, [`watch`]) from the moment its monitor
//!   runs, and after a restart from recovery. Its end comes out of [`Records::take_ends`]; the
//!   daemon's exit path (`src/exits.rs`) takes the object's lock and calls
//!   [`Records::fold_container`] or [`Records::fold_sandbox`], which write the end into the record
//!   ([`container::apply_end`]; a pod whose infra ended becomes NotReady) and publish the
//!   container's STOPPED event. An operation holding the object's lock (StopContainer) may settle
//!   an end it waited for itself; the fold that follows then finds nothing to do.
//! - Every change of a record goes through `put_*`/`delete_*` here, and every event through
//!   `publish_*` here, whose snapshot of the pod is taken from these tables.
//!
//! The lifecycles (`sandbox/`, `container/`) sit above this layer and call it; it imports
//! neither of them, nor the daemon.

pub mod container;
pub mod events;
pub mod liveness;
mod nri;
pub mod sandbox;
pub mod table;
#[cfg(test)]
mod tests;
pub mod watch;

pub use container::{apply_end, apply_exit, ContainerPaths, ContainerRecord, ContainerState};
pub use events::{ContainerEvent, ContainerEventKind, EventBus, Lagged, Subscription};
pub use nri::{nri_container, nri_pod};
pub use sandbox::{namespace_options, PinnedNamespaces, SandboxPaths, SandboxRecord, SandboxState};

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
    exits: watch::ExitWatch,
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
            exits: watch::ExitWatch::default(),
            run_root: roots.run_root().to_path_buf(),
            root: roots.root().to_path_buf(),
        })
    }

    /// The event bus (CRI GetContainerEvents subscribes here).
    pub fn events(&self) -> &EventBus {
        &self.events
    }

    // ---- the exit path ----

    /// Starts waiting for the end of container `r`'s process (a Created or Running record whose
    /// monitor runs); its end comes out of [`Records::take_ends`]. A record of another state, or
    /// without a monitor yet, is not watched; nor is one watched already.
    pub fn watch_container(&self, r: &ContainerRecord) {
        if matches!(r.state, ContainerState::Created | ContainerState::Running) && r.monitor_pid != 0 {
            let exit_file = ContainerPaths::new(self, &r.id).exit_file;
            self.exits.watch(watch::Kind::Container, &r.id, exit_file, r.monitor_pid, r.pid);
        }
    }

    /// Starts waiting for the end of pod sandbox `r`'s infra process (a Ready record); its end
    /// comes out of [`Records::take_ends`]. A pod without an infra process has nothing to watch.
    pub fn watch_sandbox(&self, r: &SandboxRecord) {
        if r.state == SandboxState::Ready && r.has_infra() {
            let exit_file = SandboxPaths::new(self, &r.id).exit_file;
            self.exits.watch(watch::Kind::Sandbox, &r.id, exit_file, r.monitor_pid, r.infra_pid);
        }
    }

    /// The ends of watched processes, for the daemon's exit path; handed out once.
    pub fn take_ends(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<watch::End>> {
        self.exits.take_ends()
    }

    /// How many infra and container processes are being waited on.
    #[cfg(test)]
    pub(crate) fn watched(&self) -> usize {
        self.exits.watched()
    }

    // ---- containers ----

    /// Looks a container up by full ID or unique prefix (crictl passes prefixes).
    ///
    /// Errors: NotFound when nothing matches; InvalidArgument naming `container_id` when the
    /// prefix is ambiguous or empty.
    pub fn container(&self, id: &str) -> Result<ContainerRecord> {
        lookup(&self.containers, id, "container", "container_id", "containers")
    }

    /// Every container.
    pub fn containers(&self) -> Vec<ContainerRecord> {
        self.containers.list()
    }

    /// The containers of pod sandbox `sandbox_id`.
    pub fn containers_in(&self, sandbox_id: &str) -> Vec<ContainerRecord> {
        self.containers.list().into_iter().filter(|r| r.sandbox_id == sandbox_id).collect()
    }

    /// The record with exactly this ID (no prefix match).
    pub fn stored_container(&self, id: &str) -> Option<ContainerRecord> {
        self.containers.get(id)
    }

    /// Stores `r` (new or changed). Errors: the store's (nothing changed).
    pub fn put_container(&self, r: &ContainerRecord) -> std::result::Result<(), StateError> {
        self.containers.put(r)
    }

    /// Stores `r` without waiting for the disk: a daemon that dies before the next durable commit
    /// loses it ([`crate::state::Store::put_lazy`]). Only for what `container::recover` rebuilds
    /// from the runtime's state and the monitor's pid file: CreateContainer's PIDs and
    /// StartContainer's Created -> Running. Errors: the store's.
    pub fn put_container_lazy(&self, r: &ContainerRecord) -> std::result::Result<(), StateError> {
        self.containers.put_lazy(r)
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

    /// Looks a pod sandbox up by full ID or unique prefix.
    ///
    /// Errors: NotFound when nothing matches; InvalidArgument naming `pod_sandbox_id` when the
    /// prefix is ambiguous or empty.
    pub fn sandbox(&self, id: &str) -> Result<SandboxRecord> {
        lookup(&self.sandboxes, id, "pod sandbox", "pod_sandbox_id", "pod sandboxes")
    }

    /// Every pod sandbox, in ID order.
    pub fn sandboxes(&self) -> Vec<SandboxRecord> {
        let mut all = self.sandboxes.list();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// The record with exactly this ID (no prefix match).
    pub fn stored_sandbox(&self, id: &str) -> Option<SandboxRecord> {
        self.sandboxes.get(id)
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
    /// deleted since it was read. A pod without an infra process is returned as it is.
    /// Errors: the store's.
    pub fn fold_sandbox(&self, mut r: SandboxRecord) -> Result<SandboxRecord> {
        if r.state != SandboxState::Ready || !r.has_infra() || r.infra_watched(&SandboxPaths::new(self, &r.id)).observe().is_none() {
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
