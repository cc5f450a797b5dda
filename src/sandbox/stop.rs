//! StopPodSandbox and RemovePodSandbox. Both are idempotent: a sandbox that is already stopped,
//! half-created or gone is not an error (kubelet retries them).

use super::{SandboxPaths, SandboxRecord, SandboxState};
use crate::daemon::Daemon;
use crate::error::{ok_if_missing, Error, Result};
use std::time::Duration;
use tracing::Instrument;

/// Stops every container of the pod (SIGKILL: kubelet has already given them their grace
/// period), runs CNI DEL, stops the infra container (or, for a pod without one, unpins its IPC
/// and UTS namespaces), unpins the netns and unmounts the pod's `/dev/shm`. The record stays,
/// NotReady. A sandbox that does not exist is Ok.
pub async fn stop(d: &Daemon, id: &str) -> Result<()> {
    let Some(r) = ok_if_missing(super::get(d, id))? else { return Ok(()) };
    let lock = d.lock_for(&r.id);
    let _guard = lock.lock().await;
    let span = tracing::info_span!("stop_pod_sandbox", sandbox = %r.id);
    stop_locked(d, r).instrument(span).await
}

async fn stop_locked(d: &Daemon, mut r: SandboxRecord) -> Result<()> {
    // Re-read under the lock: another Stop may have finished meanwhile.
    if let Some(fresh) = d.records.stored_sandbox(&r.id) {
        r = fresh;
    }
    for c in crate::container::list_in_sandbox(d, &r.id) {
        crate::container::stop(d, &c.id, 0).await?;
    }
    // NRI: once per pod, its containers stopped (and still listed), its network still up.
    if let (false, Some(nri)) = (r.stopped, &d.nri) {
        nri.stop_pod_sandbox(&crate::records::nri_pod(&r)).await;
    }
    let paths = SandboxPaths::new(d, &r.id);
    if r.network_attached {
        if let Some(netns) = &r.netns_path {
            let req = super::run::attach_request(&r, netns);
            d.cni.teardown(&req).await?;
        }
        r.network_attached = false;
        d.records.put_sandbox(&r)?;
    }
    match &r.pinned {
        None => stop_infra(d, &r, &paths).await?,
        Some(pins) => super::pinns::unpin(pins)?,
    }
    if let Some(netns) = &r.netns_path {
        crate::network::netns::remove(netns)?;
    }
    // Always (unmount is idempotent): a crash during RunPodSandbox may have mounted it before
    // the record said so.
    crate::storage::unmount(&paths.shm)?;
    r.shm_mounted = false;
    r.state = SandboxState::NotReady;
    r.stopped = true;
    d.records.put_sandbox(&r)?;
    d.records.publish_sandbox(crate::records::ContainerEventKind::Stopped, &r);
    tracing::info!("pod sandbox stopped");
    Ok(())
}

/// Kills the pod's infra container (while it may still run) and deletes it from the runtime.
async fn stop_infra(d: &Daemon, r: &SandboxRecord, paths: &SandboxPaths) -> Result<()> {
    let runtime = d.runtime(&r.runtime_handler)?;
    // Kill the infra only while it may still run: not when its end is known (exit file, or it and
    // its monitor are gone), nor when the runtime already calls it stopped.
    let running = match r.infra_watched(paths).observe() {
        Some(_) => false,
        None => matches!(runtime.state(&r.id).await?, Some(s) if s.status != "stopped"),
    };
    if running {
        runtime.kill(&r.id, libc::SIGKILL, true).await?;
        if r.infra_watched(paths).wait(Duration::from_secs(10)).await.is_none() {
            return Err(Error::DeadlineExceeded(format!("infra container of pod sandbox {} did not exit within 10s of SIGKILL", r.id)));
        }
    }
    runtime.delete(&r.id, true).await?;
    Ok(())
}

/// Stops the sandbox if needed, removes all its containers, its directories and its record, and
/// releases its name. A sandbox that does not exist is Ok.
pub async fn remove(d: &Daemon, id: &str) -> Result<()> {
    let Some(r) = ok_if_missing(super::get(d, id))? else { return Ok(()) };
    let full_id = r.id.clone();
    let lock = d.lock_for(&full_id);
    let guard = lock.lock().await;
    let span = tracing::info_span!("remove_pod_sandbox", sandbox = %r.id);
    async {
        let id = r.id.clone();
        let name_key = SandboxRecord::name_key(&r.config);
        let last = r.clone();
        stop_locked(d, r).await?;
        for c in crate::container::list_in_sandbox(d, &id) {
            crate::container::remove(d, &c.id).await?;
        }
        // Only an infra has a monitor (and so a scope); saves a D-Bus round trip per pod.
        if let (Some(sd), true) = (&d.systemd, last.has_infra()) {
            sd.remove_monitor_scope(&id).await;
        }
        let paths = SandboxPaths::new(d, &id);
        for dir in [&paths.bundle, &paths.state] {
            Error::remove_dir(dir)?;
        }
        let _nri_sync = d.nri_block_sync().await;
        d.records.delete_sandbox(&id)?;
        d.release_name(&name_key, &id);
        let mut last = last;
        last.state = SandboxState::NotReady;
        d.records.publish_sandbox(crate::records::ContainerEventKind::Deleted, &last);
        tracing::info!("pod sandbox removed");
        if let Some(nri) = &d.nri {
            nri.remove_pod_sandbox(&crate::records::nri_pod(&last)).await;
        }
        Ok::<(), Error>(())
    }
    .instrument(span)
    .await?;
    drop(guard);
    d.drop_lock(&full_id);
    Ok(())
}
