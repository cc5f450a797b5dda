//! Container lifecycle: CreateContainer ([`create`]), StartContainer ([`start`]),
//! StopContainer ([`stop`]), RemoveContainer ([`remove`]), ContainerStatus ([`get`]),
//! ListContainers ([`list`]), ExecSync ([`exec_sync`]).
//!
//! The records, and how an exit is folded into them, are the record layer's
//! ([`crate::records`]); an exit reaches a record through the daemon's one exit path
//! ([`crate::exits`]). CreateContainer and [`recover`] start the wait on each container's end.

mod create;
mod exec;
pub mod imagevol;
mod lifecycle;
pub mod logs;
#[cfg(test)]
mod recover_tests;
pub mod signal;

pub mod streaming;
mod update;

pub use create::create;
pub use exec::{exec_sync, validate_stream, ExecOutput};
pub use lifecycle::{remove, start, stop};
pub use logs::reopen_log;
pub use update::{apply_nri_update, update_resources};

pub use crate::records::{apply_end, apply_exit, liveness, ContainerPaths, ContainerRecord, ContainerState};

use crate::daemon::Daemon;
use crate::error::Result;

/// Looks a container up by full ID or unique prefix, as stored
/// ([`crate::records::Records::container`]).
///
/// Errors: NotFound when nothing matches; InvalidArgument when the prefix is ambiguous or empty.
pub fn get(d: &Daemon, id: &str) -> Result<ContainerRecord> {
    d.records.container(id)
}

/// Every container, as stored.
pub fn list(d: &Daemon) -> Vec<ContainerRecord> {
    d.records.containers()
}

/// The containers of one pod sandbox, as stored.
pub fn list_in_sandbox(d: &Daemon, sandbox_id: &str) -> Vec<ContainerRecord> {
    d.records.containers_in(sandbox_id)
}

/// Restart recovery: re-reserve names; fold in the ends of processes that ended while berth was
/// down (the one fold of recovery); a container the record calls Created or Running whose
/// process is gone without an exit file (its monitor died too, or the node rebooted) becomes
/// Exited with code 255 and reason `Unknown` (unless an exit file tells better, or its monitor
/// still runs and will write one); a container stored Created that the runtime calls running
/// or paused becomes Running (StartContainer's record is stored lazily), its start time the
/// create time; one stored Created without a monitor PID is taken in when its create reached
/// the monitor ([`adopt_created`]). The containers still live are watched from here on
/// ([`crate::records::Records::watch_container`]).
pub async fn recover(d: &Daemon) -> Result<()> {
    let records = d.records.containers();
    let known: std::collections::HashSet<String> = records.iter().map(|r| r.id.clone()).collect();
    sweep_orphans(d, &known).await;
    for r in records {
        d.reserve_name("container", &r.name_key, &r.id)?;
        let r = if r.state == ContainerState::Created && r.monitor_pid == 0 { adopt_created(d, r).await? } else { r };
        let mut r = if r.state == ContainerState::Created && r.monitor_pid == 0 {
            // A CreateContainer the stop of berth cut short after storing the record.
            let mut r = r;
            r.state = ContainerState::Exited;
            r.finished_at = crate::util::now_nanos();
            r.exit_code = 255;
            r.reason = "Unknown".into();
            r.message = "berth stopped while creating this container; it never ran".into();
            tracing::warn!(container = %r.id, "recovery: container creation was interrupted");
            d.records.put_container(&r)?;
            r
        } else {
            d.records.fold_container(r)?
        };
        if matches!(r.state, ContainerState::Created | ContainerState::Running) {
            let status = match d.runtime(&r.runtime_handler) {
                Ok(rt) => Some(rt.state(&r.id).await?.map(|s| s.status).unwrap_or_default()),
                Err(e) => {
                    // Left as it is (and watched: its monitor still tells its end).
                    tracing::error!(container = %r.id, error = %e, "recovery: cannot ask the container's runtime handler");
                    None
                }
            };
            // A monitor still running writes the exit file when it ends (it may be just doing so):
            // the watch reads it then.
            let gone = status.as_deref().is_some_and(|s| !matches!(s, "running" | "created" | "paused"))
                && !ContainerPaths::new(d, &r.id).watched(&r).monitor_alive();
            if r.state == ContainerState::Created && matches!(status.as_deref(), Some("running" | "paused")) {
                // StartContainer stores Running lazily; berth died before a durable commit wrote
                // it. The start time is lost with it: the create time stands in (kubelet starts a
                // container right after creating it).
                tracing::warn!(container = %r.id, "recovery: the runtime runs a container stored as created; storing it as running");
                r.state = ContainerState::Running;
                r.started_at = r.created_at;
                d.records.put_container(&r)?;
            }
            if gone {
                tracing::warn!(container = %r.id, "container process is gone and left no exit file");
                r.state = ContainerState::Exited;
                r.finished_at = crate::util::now_nanos();
                r.exit_code = 255;
                r.reason = "Unknown".into();
                r.message = "the container's monitor exited without recording an exit code".into();
                d.records.put_container(&r)?;
            }
        }
        // Still live: its end reaches the record through the exit path from now on.
        d.records.watch_container(&r);
    }
    Ok(())
}

/// A record stored Created without a monitor PID whose create reached its monitor: the monitor
/// wrote `<bundle>/monitor.pid` and, since, left an exit file, or still runs, or the runtime
/// holds the container (created, running or paused; its monitor may have been killed while
/// berth was down). CreateContainer stores its last record (the PIDs) lazily, and a monitor
/// finishes a `runtime create` whatever happens to berth, so this is a create that completed
/// (or is completing) while berth died. Returns the record with the monitor PID, and the
/// container's PID when the runtime has one, stored durably: the fold and the watch that
/// follow then read its end as for any container (the exit file first, so an exit code is
/// never lost to a monitor still finishing). Any other record goes back as it is (the caller
/// settles it as an interrupted create). Errors: the store's or the runtime's.
async fn adopt_created(d: &Daemon, mut r: ContainerRecord) -> Result<ContainerRecord> {
    let paths = ContainerPaths::new(d, &r.id);
    let Some(monitor_pid) = crate::monitor::read_pid(&paths.bundle.join(crate::monitor::PID_FILE)) else { return Ok(r) };
    let ended = matches!(crate::monitor::read_exit_file(&paths.exit_file), Ok(Some(_)));
    let held = match d.runtime(&r.runtime_handler) {
        Ok(rt) => rt.state(&r.id).await?.filter(|s| matches!(s.status.as_str(), "created" | "running" | "paused") && s.pid > 0),
        Err(e) => {
            tracing::error!(container = %r.id, error = %e, "recovery: cannot ask the container's runtime handler");
            None
        }
    };
    let probe = crate::records::liveness::Watched { exit_file: &paths.exit_file, monitor_pid, pid: 0 };
    if !ended && held.is_none() && !probe.monitor_alive() {
        return Ok(r);
    }
    let pid = held.map_or(0, |s| s.pid);
    tracing::warn!(container = %r.id, monitor_pid, pid, ended, "recovery: CreateContainer's last record was lost; taking in the container its monitor created");
    r.monitor_pid = monitor_pid;
    r.pid = pid;
    d.records.put_container(&r)?;
    Ok(r)
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
