//! StartContainer, StopContainer, RemoveContainer.

use super::{ContainerPaths, ContainerRecord, ContainerState};
use crate::daemon::Daemon;
use crate::error::{ok_if_missing, Error, Result};
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

/// How long a SIGKILLed container may take to be reaped before Stop reports DeadlineExceeded.
const KILL_GRACE: Duration = Duration::from_secs(15);

/// Starts a CREATED container (`runtime start`). The Running record is stored lazily
/// ([`crate::records::Records::put_container_lazy`]); restart recovery rebuilds it.
///
/// Errors: NotFound; FailedPrecondition when it is not CREATED (already running or exited).
pub async fn start(d: &Daemon, id: &str) -> Result<()> {
    let r = super::get(d, id)?;
    let lock = d.lock_for(&r.id);
    let _guard = lock.lock().await;
    let span = tracing::info_span!("start_container", container = %r.id, sandbox = %r.sandbox_id);
    async {
        let mut r = super::get(d, &r.id)?;
        if r.state != ContainerState::Created {
            return Err(Error::FailedPrecondition(format!(
                "container {} is {}, not CREATED: only a created container can be started",
                r.id,
                state_name(r.state)
            )));
        }
        let nri = d.nri_pod(&r.sandbox_id);
        let _nri_sync = d.nri_block_sync().await;
        if let Some((nri, pod)) = &nri {
            nri.start_container(pod, &crate::records::nri_container(&r)).await;
        }
        let started_at = crate::util::now_nanos();
        d.runtime(&r.runtime_handler)?.start(&r.id).await?;
        r.started_at = started_at;
        r.state = ContainerState::Running;
        // No fsync of its own: a daemon that dies before the next durable commit restarts with
        // this record Created, and `recover` reads Running back from the runtime's state.
        d.records.put_container_lazy(&r)?;
        // It may have exited already: the exit path folds that in (and publishes STOPPED) once
        // this start lets go of the lock.
        d.records.publish_container(crate::records::ContainerEventKind::Started, &r);
        tracing::info!("container started");
        if let Some((nri, pod)) = &nri {
            nri.post_start_container(pod, &crate::records::nri_container(&r)).await;
        }
        Ok(())
    }
    .instrument(span)
    .await
}

/// Stops a container: its stop signal (the image's StopSignal, else SIGTERM), then SIGKILL after
/// `timeout` seconds (0 = SIGKILL at once). A container that is not running, or does not exist,
/// is Ok (CRI: StopContainer is idempotent).
///
/// A call made while another stop of the same container waits for it to end moves that stop's
/// SIGKILL to this call's deadline when it is sooner (`stopdeadline`), then returns once the
/// container has ended.
pub async fn stop(d: &Daemon, id: &str, timeout: i64) -> Result<()> {
    let Some(r) = ok_if_missing(super::get(d, id))? else { return Ok(()) };
    d.stop_deadlines.shorten(&r.id, Instant::now() + Duration::from_secs(timeout.max(0) as u64));
    let lock = d.lock_for(&r.id);
    let _guard = lock.lock().await;
    let span = tracing::info_span!("stop_container", container = %r.id, sandbox = %r.sandbox_id);
    async {
        let r = super::get(d, &r.id)?;
        let r = stop_locked(d, r, timeout).await?;
        // A stopped container never runs again (the CRI has no restart), so its image volumes
        // go now; its rootfs stays until RemoveContainer.
        super::imagevol::unmount_all(&ContainerPaths::new(d, &r.id))
    }
    .instrument(span)
    .await
}

async fn stop_locked(d: &Daemon, r: ContainerRecord, timeout: i64) -> Result<ContainerRecord> {
    if !matches!(r.state, ContainerState::Created | ContainerState::Running) {
        return Ok(r);
    }
    let runtime = d.runtime(&r.runtime_handler)?;
    let paths = ContainerPaths::new(d, &r.id);
    // Ended already, its end not folded in yet (the exit path waits for this lock): settle it
    // here rather than signal a process that is gone.
    if let Some(ended) = paths.watched(&r).observe() {
        return finish(d, r, &ended).await;
    }
    if timeout > 0 {
        let signal = super::signal::parse_signal(&r.stop_signal).unwrap_or(libc::SIGTERM);
        let mut reg = d.stop_deadlines.begin(&r.id, Instant::now() + Duration::from_secs(timeout as u64));
        runtime.kill(&r.id, signal, false).await?;
        let w = paths.watched(&r);
        loop {
            let remaining = reg.deadline.borrow_and_update().saturating_duration_since(Instant::now());
            tokio::select! {
                ended = w.wait(remaining) => match ended {
                    Some(ended) => return finish(d, r, &ended).await,
                    None => break,
                },
                // A later stop or a remove shortened the deadline: wait again with what is left.
                // (An Err, the sender gone, disables this branch; the wait then runs out.)
                Ok(()) = reg.deadline.changed() => {}
            }
        }
        drop(reg);
        tracing::info!(timeout, "container did not end on its stop signal in time; sending SIGKILL");
    }
    runtime.kill(&r.id, libc::SIGKILL, false).await?;
    match paths.watched(&r).wait(KILL_GRACE).await {
        Some(ended) => finish(d, r, &ended).await,
        None => Err(Error::DeadlineExceeded(format!(
            "container {} was sent SIGKILL but its monitor reported no exit within {}s",
            r.id,
            KILL_GRACE.as_secs()
        ))),
    }
}

/// Stores the end of a container that was running, publishes STOPPED and tells NRI plugins
/// (StopContainer, once: only a container that was running gets here).
async fn finish(d: &Daemon, r: ContainerRecord, ended: &super::liveness::Ended) -> Result<ContainerRecord> {
    let _nri_sync = d.nri_block_sync().await;
    let r = super::apply_end(r, ended);
    d.records.put_container(&r)?;
    d.records.publish_container(crate::records::ContainerEventKind::Stopped, &r);
    tracing::info!(exit_code = r.exit_code, "container stopped");
    d.nri_container_stopped(&r).await;
    Ok(r)
}

/// Removes a container: kills it if it still runs, deletes it from the runtime, unmounts its
/// rootfs, removes its bundle and writable layer and its record. Its log file stays (kubelet
/// owns log rotation and removal). A container that does not exist is Ok.
pub async fn remove(d: &Daemon, id: &str) -> Result<()> {
    let Some(r) = ok_if_missing(super::get(d, id))? else { return Ok(()) };
    let full_id = r.id.clone();
    // A graceful stop waiting on it ends now: removal kills at once.
    d.stop_deadlines.shorten(&full_id, Instant::now());
    let lock = d.lock_for(&full_id);
    let guard = lock.lock().await;
    let span = tracing::info_span!("remove_container", container = %r.id, sandbox = %r.sandbox_id);
    async {
        let Some(r) = d.records.stored_container(&r.id) else { return Ok::<(), Error>(()) };
        let r = stop_locked(d, r, 0).await?;
        d.runtime(&r.runtime_handler)?.delete(&r.id, true).await?;
        if let Some(sd) = &d.systemd {
            sd.remove_monitor_scope(&r.id).await;
        }
        let paths = ContainerPaths::new(d, &r.id);
        crate::storage::unmount(&paths.rootfs)?;
        super::imagevol::unmount_all(&paths)?;
        // A crash between making idmapped volume copies and detaching them leaves them here;
        // removing the tree must never walk into a volume.
        crate::storage::idmap::detach_under(&paths.state.join("idmap"))?;
        for dir in [&paths.bundle, &paths.state] {
            Error::remove_dir(dir)?;
        }
        d.images.release_layers(&r.id).await?;
        let _nri_sync = d.nri_block_sync().await;
        d.records.delete_container(&r.id)?;
        d.release_name(&r.name_key, &r.id);
        // A container removed before anyone saw it stop still gets its STOPPED first.
        if r.state == ContainerState::Exited {
            d.records.publish_container(crate::records::ContainerEventKind::Stopped, &r);
        }
        d.records.publish_container(crate::records::ContainerEventKind::Deleted, &r);
        tracing::info!("container removed");
        if let Some((nri, pod)) = d.nri_pod(&r.sandbox_id) {
            nri.remove_container(&pod, &crate::records::nri_container(&r)).await;
        }
        Ok(())
    }
    .instrument(span)
    .await?;
    drop(guard);
    d.drop_lock(&full_id);
    Ok(())
}

/// The CRI spelling of a state, for messages.
pub fn state_name(s: ContainerState) -> &'static str {
    match s {
        ContainerState::Created => "CREATED",
        ContainerState::Running => "RUNNING",
        ContainerState::Exited => "EXITED",
        ContainerState::Unknown => "UNKNOWN",
    }
}
