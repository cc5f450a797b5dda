//! The cgroup driver: a pod's cgroup parent must be of the driver's form, and under the systemd
//! driver containers and their monitors live in scopes of the pod's slice (berth only; run the
//! suite with `CRI_CGROUP_MANAGER=systemd` on a systemd host for the second case).

use super::util::check;
use crate::ctx::{skip, Ctx};
use crate::daemon::TargetKind;
use anyhow::{Context, Result};
use berth::cri::v1 as cri;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A pod whose `cgroup_parent` has the other driver's form (a slice under cgroupfs, a path under
/// systemd) is refused with InvalidArgument naming `config.linux.cgroup_parent` and the driver,
/// and leaves no pod behind. (containerd 1.6 does not check: skipped there with a note.)
pub async fn other_driver_parent_refused(ctx: &Ctx) -> Result<()> {
    if ctx.kind != TargetKind::Berth {
        return skip("containerd 1.6 passes any cgroup_parent to runc unchecked");
    }
    // Under cgroupfs, the slice's path as kubelet's systemd driver sends it.
    let parent = if crate::cgroups::systemd() {
        "/kubepods/besteffort/podx"
    } else {
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podx.slice"
    };
    let mut pc = ctx.pod_config("otherdriver", &[]);
    pc.linux.get_or_insert_with(Default::default).cgroup_parent = parent.into();
    let before = pods(ctx).await?;
    let r = ctx.rt().run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(pc), runtime_handler: String::new() }).await;
    let s = match r {
        Ok(ok) => {
            let id = ok.into_inner().pod_sandbox_id;
            ctx.remove_pod(&id).await?;
            anyhow::bail!("RunPodSandbox with cgroup_parent {parent:?} (the other driver's form) was accepted");
        }
        Err(s) => s,
    };
    check(s.code() == tonic::Code::InvalidArgument, || format!("code {:?} ({}), expected InvalidArgument", s.code(), s.message()))?;
    check(s.message().contains("config.linux.cgroup_parent") && s.message().contains("cgroup_manager"), || {
        format!("message {:?} names neither the field nor the driver", s.message())
    })?;
    let after = pods(ctx).await?;
    check(after == before, || format!("{} pods before, {} after the refused one", before, after))
}

async fn pods(ctx: &Ctx) -> Result<usize> {
    Ok(ctx.rt().list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await.context("ListPodSandbox")?.into_inner().items.len())
}

/// Under the systemd driver, a pod with slice parent `berthtest-pod<n>.slice` (nested in the
/// suite's `berthtest.slice`, as kubelet nests `kubepods-besteffort-pod<uid>.slice`, and given
/// as kubelet gives it, as the slice's cgroupfs path `/berthtest.slice/berthtest-pod<n>.slice`):
/// - its container's cgroupsPath is `<slice>:berth:<id>` and runc put the container's process in
///   `berth-<id>.scope` there, with the 64 MiB memory limit in its `memory.max`;
/// - its monitor is in `berth-monitor-<id>.scope` in the same slice;
/// - systemd knows both scopes as active units;
/// - after RemovePodSandbox neither scope is left (as a unit or a cgroup directory).
pub async fn systemd_scopes(ctx: &Ctx) -> Result<()> {
    if ctx.kind != TargetKind::Berth || !crate::cgroups::systemd() {
        return skip("runs against berth started with CRI_CGROUP_MANAGER=systemd (scripts/v2-guest.sh's systemd lane)");
    }
    // A dash in a slice name nests it one level deeper (systemd.slice(5)).
    let n = ctx.unique().replace('-', "x");
    let slice = format!("berthtest-pod{n}.slice");
    let slice_dir = PathBuf::from(format!("/sys/fs/cgroup/berthtest.slice/{slice}"));
    let mut pc = ctx.pod_config("scopes", &[]);
    pc.linux.get_or_insert_with(Default::default).cgroup_parent = format!("/berthtest.slice/{slice}");
    let pod = ctx.run_pod_with(pc).await?;
    let res = async {
        let mut config = ctx.container_config("scoped", &ctx.images.busybox, &["sleep", "1000"]);
        config.linux = Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources { memory_limit_in_bytes: 64 << 20, ..Default::default() }),
            ..Default::default()
        });
        let id = ctx.create_with(&pod, config).await?;
        ctx.rt().start_container(cri::StartContainerRequest { container_id: id.clone() }).await?;
        ctx.wait_container_state(&id, cri::ContainerState::ContainerRunning, Duration::from_secs(30)).await?;
        let scope = slice_dir.join(format!("berth-{id}.scope"));
        let procs =
            std::fs::read_to_string(scope.join("cgroup.procs")).with_context(|| format!("reading {}/cgroup.procs", scope.display()))?;
        check(!procs.trim().is_empty(), || format!("{} holds no process", scope.display()))?;
        let max = std::fs::read_to_string(scope.join("memory.max")).unwrap_or_default();
        check(max.trim() == (64u64 << 20).to_string(), || format!("{}/memory.max {:?}, expected 67108864", scope.display(), max.trim()))?;
        let monitor_scope = slice_dir.join(format!("berth-monitor-{id}.scope"));
        let mprocs = std::fs::read_to_string(monitor_scope.join("cgroup.procs")).unwrap_or_default();
        let monitor_is_there =
            mprocs.lines().any(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "berth-monitor"));
        check(monitor_is_there, || format!("no berth-monitor in {} (cgroup.procs {mprocs:?})", monitor_scope.display()))?;
        for unit in [format!("berth-{id}.scope"), format!("berth-monitor-{id}.scope")] {
            let state = unit_state(&unit)?;
            check(state == "active", || format!("systemd says {unit} is {state:?}, expected active"))?;
        }
        Ok::<_, anyhow::Error>(id)
    }
    .await;
    ctx.remove_pod(&pod.id).await?;
    let id = res?;
    for unit in [format!("berth-{id}.scope"), format!("berth-monitor-{id}.scope"), format!("berth-{}.scope", pod.id)] {
        let state = unit_state(&unit)?;
        check(state == "inactive", || format!("after RemovePodSandbox systemd says {unit} is {state:?}"))?;
        check(!slice_dir.join(&unit).exists(), || format!("after RemovePodSandbox {} is still there", slice_dir.join(&unit).display()))?;
    }
    // kubelet removes a pod's slice once the pod is gone; so does this stand-in for it.
    let _ = std::process::Command::new("systemctl").args(["stop", &slice]).status();
    check(!Path::new(&slice_dir).exists(), || format!("{} left after systemctl stop", slice_dir.display()))
}

/// `systemctl show -p ActiveState --value UNIT`: `active`, `inactive` (also for a unit systemd
/// does not know), ...
fn unit_state(unit: &str) -> Result<String> {
    let out = std::process::Command::new("systemctl")
        .args(["show", "-p", "ActiveState", "--value", unit])
        .output()
        .with_context(|| format!("systemctl show {unit}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
