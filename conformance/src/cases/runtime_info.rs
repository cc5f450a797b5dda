//! Runtime-wide RPCs: RuntimeConfig, UpdateRuntimeConfig and ImageFsInfo.

use super::util::check;
use crate::ctx::{skip, Ctx};
use anyhow::{Context, Result};
use berth::cri::v1 as cri;
use std::time::{Duration, Instant};

/// RuntimeConfig: `linux.cgroup_driver` is the driver the runtime runs with (kubelet 1.34+
/// follows it): SYSTEMD for a berth started with `CRI_CGROUP_MANAGER=systemd`, else CGROUPFS.
/// containerd 1.6 predates the RPC and answers Unimplemented: skipped there.
pub async fn runtime_config_cgroup_driver(ctx: &Ctx) -> Result<()> {
    let r = match ctx.rt().runtime_config(cri::RuntimeConfigRequest {}).await {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::Unimplemented => {
            eprintln!("note runtime_config_cgroup_driver: RuntimeConfig is Unimplemented: {}", s.message());
            return skip("the runtime does not implement RuntimeConfig (CRI v1.28+)");
        }
        Err(s) => return Err(s).context("RuntimeConfig"),
    };
    let linux = r.linux.context("RuntimeConfig: no `linux` in the reply")?;
    let want = if ctx.kind == crate::daemon::TargetKind::Berth && crate::cgroups::systemd() {
        cri::CgroupDriver::Systemd
    } else {
        cri::CgroupDriver::Cgroupfs
    };
    check(linux.cgroup_driver == want as i32, || {
        let got = cri::CgroupDriver::try_from(linux.cgroup_driver).map(|d| d.as_str_name()).unwrap_or("UNKNOWN_VALUE");
        format!("linux.cgroup_driver {got}, expected {}", want.as_str_name())
    })
}

/// UpdateRuntimeConfig with `network_config.pod_cidr = "10.88.0.0/16"` is Ok (what kubelet
/// sends once it knows the node's pod CIDR).
pub async fn update_runtime_config(ctx: &Ctx) -> Result<()> {
    let req = cri::UpdateRuntimeConfigRequest {
        runtime_config: Some(cri::RuntimeConfig { network_config: Some(cri::NetworkConfig { pod_cidr: "10.88.0.0/16".into() }) }),
    };
    ctx.rt().update_runtime_config(req).await.context("UpdateRuntimeConfig pod_cidr 10.88.0.0/16")?;
    Ok(())
}

/// ImageFsInfo after a pull: at least one image filesystem, each with a non-empty mountpoint,
/// a timestamp > 0 and used_bytes > 0 (the pulled layers take room). containerd 1.6 reports
/// cached snapshot usage (0 until its syncer runs), so the case polls up to 25 s.
pub async fn image_fs_info(ctx: &Ctx) -> Result<()> {
    ctx.ensure_image(&ctx.images.busybox).await?;
    // containerd refreshes snapshot usage every `stats_collect_period` (10 s): poll that long.
    let t0 = Instant::now();
    let r = loop {
        let r = ctx.img().image_fs_info(cri::ImageFsInfoRequest {}).await.context("ImageFsInfo")?.into_inner();
        let all_used = r.image_filesystems.iter().all(|f| f.used_bytes.as_ref().is_some_and(|u| u.value > 0));
        if (all_used && !r.image_filesystems.is_empty()) || t0.elapsed() > Duration::from_secs(25) {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    if t0.elapsed() > Duration::from_secs(1) {
        eprintln!("note image_fs_info: used_bytes became > 0 only after {:?} of polling", t0.elapsed());
    }
    check(!r.image_filesystems.is_empty(), || "ImageFsInfo: no image_filesystems".into())?;
    for fs in &r.image_filesystems {
        let mp = fs.fs_id.as_ref().map(|f| f.mountpoint.as_str()).unwrap_or("");
        let used = fs.used_bytes.as_ref().map(|u| u.value).unwrap_or(0);
        let inodes = fs.inodes_used.as_ref().map(|u| u.value).unwrap_or(0);
        eprintln!("note image_fs_info: mountpoint {mp:?} used_bytes {used} inodes_used {inodes} timestamp {}", fs.timestamp);
        check(!mp.is_empty(), || format!("image filesystem {fs:?}: empty fs_id.mountpoint"))?;
        check(used > 0, || format!("image filesystem {mp}: used_bytes {used}, expected > 0 after a pull"))?;
        check(fs.timestamp > 0, || format!("image filesystem {mp}: timestamp {}, expected > 0", fs.timestamp))?;
    }
    if !r.container_filesystems.is_empty() {
        eprintln!("note image_fs_info: {} container_filesystems", r.container_filesystems.len());
    }
    Ok(())
}
