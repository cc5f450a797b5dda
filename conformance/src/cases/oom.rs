//! Out-of-memory kills as a CRI user sees them: ContainerStatus reason `OOMKilled`, exit code 137.

use super::util::check;
use crate::ctx::Ctx;
use anyhow::{Context, Result};
use k8s_cri::v1 as cri;
use std::time::Duration;

/// memory_limit_in_bytes = 32 MiB, and the container's shell collects 200 MB of output in a
/// variable: the kernel's OOM killer ends it; ContainerStatus says EXITED, reason `OOMKilled`,
/// exit code 137 (128 + SIGKILL), as kubelet expects from CRI-O and containerd. Needs no swap
/// (or the memsw limit = the memory limit, which berth and containerd set on cgroup v1).
pub async fn oom_killed(ctx: &Ctx) -> Result<()> {
    const LIMIT: i64 = 32 * 1024 * 1024;
    let pod = ctx.run_pod("oom").await?;
    let res = async {
        let script = "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived ${#x}";
        let mut cfg = ctx.container_config("oom", &ctx.images.busybox, &["sh", "-c", script]);
        cfg.linux.get_or_insert_with(Default::default).resources =
            Some(cri::LinuxContainerResources { memory_limit_in_bytes: LIMIT, ..Default::default() });
        let id = ctx.create_with(&pod, cfg).await?;
        ctx.rt().start_container(cri::StartContainerRequest { container_id: id.clone() }).await.context("StartContainer oom")?;
        let st = ctx.wait_container_state(&id, cri::ContainerState::ContainerExited, Duration::from_secs(120)).await?;
        eprintln!("note oom_killed: exit_code {} reason {:?} message {:?}", st.exit_code, st.reason, st.message);
        check(st.reason == "OOMKilled", || format!("ContainerStatus reason {:?} (exit code {}), expected \"OOMKilled\"", st.reason, st.exit_code))?;
        check(st.exit_code == 137, || format!("ContainerStatus exit_code {}, expected 137 (SIGKILL by the OOM killer)", st.exit_code))
    }
    .await;
    ctx.remove_pod(&pod.id).await?;
    res
}
