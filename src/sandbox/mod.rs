//! Pod sandbox lifecycle: a pinned network namespace wired by CNI, the pod's `/dev/shm`, its
//! hostname/hosts/resolv.conf files, and what holds the pod's IPC, UTS and PID namespaces: the
//! infra container (`berth-pause` run through `berth-monitor` and the OCI runtime) when the pod
//! shares a PID namespace or has its own user namespace, else nothing but pinned files
//! ([`pinns`]).
//!
//! CRI RPCs served from here: RunPodSandbox ([`run`]), StopPodSandbox ([`stop`]),
//! RemovePodSandbox ([`remove`]), PodSandboxStatus ([`get`]), ListPodSandbox ([`list`]).

pub mod files;
pub mod pinns;
mod run;
mod stop;
pub mod sysctl;

pub use run::run;
pub use stop::{remove, stop};

pub use crate::records::{namespace_options, PinnedNamespaces, SandboxPaths, SandboxRecord, SandboxState};

use crate::daemon::Daemon;
use crate::error::{Error, Result};

/// Looks a sandbox up by full ID or unique ID prefix (crictl passes prefixes).
///
/// Errors: NotFound when nothing matches; InvalidArgument when the prefix is ambiguous or empty.
pub fn get(d: &Daemon, id: &str) -> Result<SandboxRecord> {
    d.records.sandbox(id)
}

/// UpdatePodSandboxResources (cri-api v0.36; kubelet's in-place pod resize): records the pod's
/// new `overhead` and `resources` in its config, as CRI-O and containerd do. kubelet has already
/// written the pod-level cgroup when it calls this (the CRI says so), so no cgroup is touched
/// here; the record is what NRI plugins (issue #14) and PodSandboxStatus verbose info read.
///
/// Errors: NotFound for an unknown pod; FailedPrecondition for a pod that is not READY.
pub async fn update_resources(
    d: &Daemon,
    id: &str,
    overhead: Option<crate::cri::v1::LinuxContainerResources>,
    resources: Option<crate::cri::v1::LinuxContainerResources>,
) -> Result<()> {
    let r = get(d, id)?;
    let lock = d.lock_for(&r.id);
    let _guard = lock.lock().await;
    let mut r = get(d, &r.id)?;
    if r.state != SandboxState::Ready {
        return Err(Error::FailedPrecondition(format!("pod sandbox {} is not ready: its resources cannot change", r.id)));
    }
    let linux = r.config.linux.get_or_insert_with(Default::default);
    linux.overhead = overhead;
    linux.resources = resources;
    d.records.put_sandbox(&r)?;
    tracing::info!(sandbox = %r.id, "pod sandbox resources updated");
    Ok(())
}

/// Every sandbox, as stored, in ID order, but those whose RunPodSandbox is under way and has
/// not stored them Ready yet ([`Daemon::creating`]).
pub fn list(d: &Daemon) -> Vec<SandboxRecord> {
    let mut all = d.records.sandboxes();
    d.retain_created(&mut all);
    all
}

/// Restart recovery: re-reserve names, fold in the ends of infra processes that ended while
/// berth was down (the one fold of recovery) and mark pods whose infra is gone NotReady (for a
/// pod without an infra process: whose pinned namespaces are gone, or that was made before the
/// last reboot), then remove the pins no record names. The pods with an infra still Ready are
/// watched from here on ([`crate::records::Records::watch_sandbox`]).
pub async fn recover(d: &Daemon) -> Result<()> {
    let mut pinned = std::collections::HashSet::new();
    for r in d.records.sandboxes() {
        d.reserve_name("pod sandbox", &SandboxRecord::name_key(&r.config), &r.id)?;
        let mut r = d.records.fold_sandbox(r)?;
        pinned.extend(r.pinned.iter().flat_map(|p| p.files().cloned()));
        if let (SandboxState::Ready, Some(pins)) = (r.state, &r.pinned) {
            // No infra to ask: the pod is as alive as its pins, and none outlives a reboot.
            let missing = pinns::missing(pins, r.netns_path.as_deref());
            let rebooted = pinns::from_earlier_boot(pins);
            if rebooted || !missing.is_empty() {
                tracing::warn!(sandbox = %r.id, missing = ?missing, rebooted, "pod namespaces are gone; marking pod sandbox NotReady");
                r.state = SandboxState::NotReady;
                d.records.put_sandbox(&r)?;
            }
        } else if r.state == SandboxState::Ready {
            // A pod whose handler is gone from this host (binary removed, config changed) is
            // logged and left as it is (and watched: its monitor still tells its end): one such
            // pod must not keep the daemon from starting.
            match d.runtime(&r.runtime_handler) {
                Ok(rt) => {
                    if !matches!(rt.state(&r.id).await?, Some(s) if s.status == "running") {
                        tracing::warn!(sandbox = %r.id, "infra container is gone; marking pod sandbox NotReady");
                        r.state = SandboxState::NotReady;
                        d.records.put_sandbox(&r)?;
                    }
                }
                Err(e) => tracing::error!(sandbox = %r.id, error = %e, "recovery: cannot ask the pod's runtime handler"),
            }
        }
        d.records.watch_sandbox(&r);
    }
    pinns::sweep_orphans(&SandboxPaths::ns_dir(d), &pinned);
    Ok(())
}
