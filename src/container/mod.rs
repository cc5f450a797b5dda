//! Container lifecycle: CreateContainer ([`create`]), StartContainer ([`start`]),
//! StopContainer ([`stop`]), RemoveContainer ([`remove`]), ContainerStatus ([`get`]),
//! ListContainers ([`list`]), ExecSync ([`exec_sync`]).
//!
//! A container's state is its store record plus its monitor's exit file: the record says what
//! berth did (created, started), the exit file says what happened (it exited, with what code).
//! Every read folds a new exit file into the record, so exits that happen while berth is down are
//! picked up when it comes back.

pub mod apparmor;
mod create;
mod exec;
pub mod imagevol;
mod lifecycle;
pub mod liveness;
pub mod logs;
#[cfg(test)]
mod recover_tests;
pub mod signal;
pub mod stopdeadline;
pub mod streaming;
pub mod table;
mod update;

pub use create::create;
pub use exec::{exec_sync, validate_stream, ExecOutput};
pub use lifecycle::{remove, start, stop};
pub use logs::reopen_log;
pub use update::update_resources;

use crate::cri::v1::ContainerConfig;
use crate::daemon::Daemon;
use crate::error::{Error, Result};
use crate::monitor::ExitInfo;
use liveness::{Ended, Watched};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// State of a container, as CRI `ContainerState` names them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum ContainerState {
    /// `CONTAINER_CREATED`: `runtime create` done, process waiting to be started.
    Created,
    /// `CONTAINER_RUNNING`.
    Running,
    /// `CONTAINER_EXITED`.
    Exited,
    /// `CONTAINER_UNKNOWN`: its runtime state could not be established.
    Unknown,
}

/// One container as stored in the metadata store (table `containers`, key = ID).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// 64-hex ID; also its OCI runtime ID.
    pub id: String,
    /// The pod sandbox it belongs to.
    pub sandbox_id: String,
    /// The CRI config it was created from.
    pub config: ContainerConfig,
    /// Image ID (`sha256:<config digest>`).
    pub image_id: String,
    /// Digested reference (`repo@sha256:...`), or the image ID when the image has no repo digest.
    pub image_ref: String,
    /// The runtime handler of its sandbox.
    pub runtime_handler: String,
    /// Current state, as of the last refresh.
    pub state: ContainerState,
    /// Nanoseconds since the epoch; 0 = not yet.
    pub created_at: i64,
    /// Nanoseconds since the epoch; 0 = not yet.
    pub started_at: i64,
    /// Nanoseconds since the epoch; 0 = not yet.
    pub finished_at: i64,
    /// Exit code (128+signal when killed by a signal).
    pub exit_code: i32,
    /// CRI reason: `Completed`, `Error`, `OOMKilled`.
    pub reason: String,
    /// Human-readable detail.
    pub message: String,
    /// Host PID of the container's init (0 before create finished).
    pub pid: i32,
    /// PID of its `berth-monitor` (0 before create finished).
    #[serde(default)]
    pub monitor_pid: i32,
    /// Absolute CRI log path (log_directory/log_path), empty when none.
    pub log_path: String,
    /// The stop signal: CRI `stop_signal` when the config set one, else the image's StopSignal
    /// (empty = SIGTERM); see [`signal`].
    pub stop_signal: String,
    /// The effective user the spec gave its process (uid, gid, supplemental groups), for
    /// ContainerStatus.user; resolved once at create.
    #[serde(default)]
    pub user: Option<crate::cri::v1::ContainerUser>,
    /// The name reservation key ([`ContainerRecord::name_key`]), kept so it can be released
    /// even after the pod sandbox record is gone.
    pub name_key: String,
}

impl ContainerRecord {
    /// Name reservation key, as kubelet builds container names:
    /// `name_podname_namespace_poduid_attempt`.
    pub fn name_key(config: &ContainerConfig, sandbox: &crate::sandbox::SandboxRecord) -> String {
        let m = config.metadata.clone().unwrap_or_default();
        let p = sandbox.config.metadata.clone().unwrap_or_default();
        format!("{}_{}_{}_{}_{}", m.name, p.name, p.namespace, p.uid, m.attempt)
    }
}

#[cfg(test)]
impl ContainerRecord {
    /// A Created record of container `id` in pod `sandbox_id` with an empty config, for tests.
    pub(crate) fn for_test(id: &str, sandbox_id: &str) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            sandbox_id: sandbox_id.into(),
            config: Default::default(),
            image_id: String::new(),
            image_ref: String::new(),
            runtime_handler: String::new(),
            state: ContainerState::Created,
            created_at: 0,
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            pid: 0,
            monitor_pid: 0,
            log_path: String::new(),
            stop_signal: String::new(),
            name_key: id.into(),
            user: None,
        }
    }
}

/// Files of a container.
pub struct ContainerPaths {
    /// `<run_root>/containers/<id>`: the OCI bundle (config.json, monitor files).
    pub bundle: PathBuf,
    /// `<bundle>/rootfs`: the overlay mount point.
    pub rootfs: PathBuf,
    /// `<bundle>/exit`: the monitor's exit file.
    pub exit_file: PathBuf,
    /// `<root>/containers/<id>`: upper and work dirs of the writable layer.
    pub state: PathBuf,
}

impl ContainerPaths {
    /// Paths of container `id`.
    pub fn new(d: &Daemon, id: &str) -> ContainerPaths {
        let bundle = d.run_dir("containers", id);
        ContainerPaths { rootfs: bundle.join("rootfs"), exit_file: bundle.join("exit"), bundle, state: d.state_dir("containers", id) }
    }
}

/// Looks a container up by full ID or unique prefix and folds in its exit file.
///
/// Errors: NotFound when nothing matches; InvalidArgument when the prefix is ambiguous or empty.
pub fn get(d: &Daemon, id: &str) -> Result<ContainerRecord> {
    if id.is_empty() {
        return Err(Error::invalid("container_id", "must not be empty"));
    }
    let r = match d.containers.get(id) {
        Some(r) => r,
        None => {
            let mut m = d.containers.with_prefix(id);
            match m.len() {
                0 => return Err(Error::NotFound { kind: "container", id: id.to_string() }),
                1 => m.remove(0),
                n => return Err(Error::invalid("container_id", format!("prefix {id:?} matches {n} containers"))),
            }
        }
    };
    refresh(d, r)
}

/// Every container, refreshed.
pub fn list(d: &Daemon) -> Result<Vec<ContainerRecord>> {
    d.containers.list().into_iter().map(|r| refresh(d, r)).collect()
}

/// The containers of one pod sandbox, refreshed.
pub fn list_in_sandbox(d: &Daemon, sandbox_id: &str) -> Result<Vec<ContainerRecord>> {
    Ok(list(d)?.into_iter().filter(|c| c.sandbox_id == sandbox_id).collect())
}

/// Folds the end of the container's process into a Created or Running record (and persists the
/// change): the monitor's exit file, or, when the monitor and the process are both gone without
/// one, EXITED with code 255 and reason `Unknown`.
pub fn refresh(d: &Daemon, r: ContainerRecord) -> Result<ContainerRecord> {
    if !matches!(r.state, ContainerState::Created | ContainerState::Running) {
        return Ok(r);
    }
    // CreateContainer stores the record before the runtime runs and has no monitor to watch
    // until it returns: a Created record without a monitor PID is a create in progress, not a
    // lost process (one a crash cut short is settled by `recover`).
    if r.state == ContainerState::Created && r.monitor_pid == 0 {
        return Ok(r);
    }
    let paths = ContainerPaths::new(d, &r.id);
    match watched(&paths, &r).observe() {
        // Removed while we looked (its exit file went with its bundle): nothing to fold in.
        Some(_) if d.containers.get(&r.id).is_none() => Ok(r),
        Some(ended) => {
            let r = apply_end(r, &ended);
            if d.containers.update(&r)? {
                crate::events::container_event(d, crate::events::ContainerEventKind::Stopped, &r);
            }
            Ok(r)
        }
        None => Ok(r),
    }
}

/// The container's process as the liveness checks see it.
pub(crate) fn watched<'a>(paths: &'a ContainerPaths, r: &ContainerRecord) -> Watched<'a> {
    Watched { exit_file: &paths.exit_file, monitor_pid: r.monitor_pid, pid: r.pid }
}

/// The record after its process ended, recorded or lost.
pub fn apply_end(r: ContainerRecord, ended: &Ended) -> ContainerRecord {
    match ended {
        Ended::Recorded(exit) => apply_exit(r, exit),
        Ended::Lost => {
            tracing::warn!(container = %r.id, "container process and its monitor are gone without an exit file");
            let mut r = r;
            r.state = ContainerState::Exited;
            r.finished_at = crate::util::now_nanos().max(r.started_at);
            r.exit_code = 255;
            r.reason = "Unknown".into();
            r.message = "berth-monitor of this container exited without recording an exit code (killed?)".into();
            r
        }
    }
}

/// The record after its process exited: state, finished_at, exit code and CRI reason.
pub fn apply_exit(mut r: ContainerRecord, exit: &ExitInfo) -> ContainerRecord {
    r.state = ContainerState::Exited;
    r.finished_at = exit.exited_at.max(r.started_at);
    r.exit_code = exit.exit_code;
    if exit.oom_killed {
        crate::metrics::container_oom_killed();
    }
    r.reason = if exit.oom_killed {
        "OOMKilled"
    } else if exit.exit_code == 0 {
        "Completed"
    } else {
        "Error"
    }
    .to_string();
    r
}

/// Restart recovery: re-reserve names; a container the record calls Created or Running whose
/// process is gone without an exit file (its monitor died too, or the node rebooted) becomes
/// Exited with code 255 and reason `Unknown`... unless an exit file tells better.
pub async fn recover(d: &Daemon) -> Result<()> {
    let records = d.containers.list();
    let known: std::collections::HashSet<String> = records.iter().map(|r| r.id.clone()).collect();
    sweep_orphans(d, &known).await;
    for r in records {
        d.reserve_name("container", &r.name_key, &r.id)?;
        let mut r = if r.state == ContainerState::Created && r.monitor_pid == 0 {
            // A CreateContainer the stop of berth cut short after storing the record.
            let mut r = r;
            r.state = ContainerState::Exited;
            r.finished_at = crate::util::now_nanos();
            r.exit_code = 255;
            r.reason = "Unknown".into();
            r.message = "berth stopped while creating this container; it never ran".into();
            tracing::warn!(container = %r.id, "recovery: container creation was interrupted");
            d.containers.put(&r)?;
            r
        } else {
            refresh(d, r)?
        };
        if matches!(r.state, ContainerState::Created | ContainerState::Running) {
            let st = match d.runtime(&r.runtime_handler) {
                Ok(rt) => rt.state(&r.id).await?,
                Err(e) => {
                    tracing::error!(container = %r.id, error = %e, "recovery: cannot ask the container's runtime handler");
                    continue;
                }
            };
            let alive = matches!(&st, Some(s) if s.status == "running" || s.status == "created" || s.status == "paused");
            if !alive {
                tracing::warn!(container = %r.id, "container process is gone and left no exit file");
                r.state = ContainerState::Exited;
                r.finished_at = crate::util::now_nanos();
                r.exit_code = 255;
                r.reason = "Unknown".into();
                r.message = "the container's monitor exited without recording an exit code".into();
                d.containers.put(&r)?;
            }
        }
    }
    Ok(())
}

/// Cleans up what a CreateContainer cut short by a crash left without a record (the record is
/// stored only just before the runtime is asked to create): for every container ID that has a
/// bundle or state directory or a layer lease but no record, unmounts its rootfs, detaches its
/// idmapped scratch mounts, removes its directories (never across a mount: the removal refuses
/// and the directory stays, logged) and drops its lease. Errors are logged, not returned: one
/// stuck leftover must not stop the daemon.
async fn sweep_orphans(d: &Daemon, known: &std::collections::HashSet<String>) {
    let mut orphans = std::collections::BTreeSet::new();
    for parent in [d.config.run_root.join("containers"), d.config.root.join("containers")] {
        if let Ok(entries) = std::fs::read_dir(&parent) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                if !known.contains(&id) {
                    orphans.insert(id);
                }
            }
        }
    }
    match d.images.lease_holders() {
        Ok(holders) => orphans.extend(holders.into_iter().filter(|h| !known.contains(h))),
        Err(e) => tracing::warn!(error = %e, "recovery: listing layer leases"),
    }
    for id in orphans {
        tracing::warn!(container = %id, "recovery: removing what an interrupted CreateContainer left");
        let paths = ContainerPaths::new(d, &id);
        if let Err(e) = crate::storage::unmount(&paths.rootfs) {
            tracing::warn!(container = %id, error = %e, "recovery: unmounting an orphan rootfs");
        }
        if let Err(e) = imagevol::unmount_all(&paths) {
            tracing::warn!(container = %id, error = %e, "recovery: unmounting an orphan's image volumes");
        }
        if let Err(e) = crate::storage::idmap::detach_under(&paths.state.join("idmap")) {
            tracing::warn!(container = %id, error = %e, "recovery: detaching orphan idmapped mounts");
        }
        for dir in [&paths.bundle, &paths.state] {
            if let Err(e) = crate::util::remove_dir_all_idempotent(dir) {
                tracing::warn!(container = %id, error = %e, "recovery: keeping {}", dir.display());
            }
        }
        if let Err(e) = d.images.release_layers(&id).await {
            tracing::warn!(container = %id, error = %e, "recovery: releasing an orphan lease");
        }
    }
}
