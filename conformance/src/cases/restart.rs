//! Daemon restart while containers run (only when the harness started the daemon).

use super::util::check;
use crate::ctx::{skip, state_name, Ctx};
use anyhow::{Context, Result};
use berth::cri::v1 as cri;
use std::time::Duration;

/// A running container stays RUNNING across a daemon restart; one that exits while the daemon is
/// down shows EXITED with its exit code afterwards; stop and remove still work.
pub async fn keeps_containers(ctx: &Ctx) -> Result<()> {
    if !ctx.can_restart() {
        return skip("the harness does not own the daemon (BERTH_ENDPOINT)");
    }
    let pod = ctx.run_pod("restart").await?;
    let long = ctx.start_container(&pod, "long", &ctx.images.busybox, &["sleep", "1000"]).await?;
    let short = ctx.start_container(&pod, "short", &ctx.images.busybox, &["sh", "-c", "sleep 3; exit 5"]).await?;
    ctx.wait_container_state(&long, cri::ContainerState::ContainerRunning, Duration::from_secs(30)).await?;
    ctx.wait_container_state(&short, cri::ContainerState::ContainerRunning, Duration::from_secs(30)).await?;
    ctx.stop_daemon().await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    ctx.start_daemon().await.context("start the daemon again")?;
    let st = ctx.container_status(&long).await?;
    check(st.state == cri::ContainerState::ContainerRunning as i32, || format!("after restart `long` is {}, expected RUNNING", state_name(st.state)))?;
    let st = ctx.wait_container_state(&short, cri::ContainerState::ContainerExited, Duration::from_secs(10)).await?;
    check(st.exit_code == 5, || format!("`short` exited during downtime: exit_code {}, expected 5", st.exit_code))?;
    let r = ctx.exec(&long, &["true"], 10).await?;
    check(r.exit_code == 0, || format!("ExecSync after restart exited {}", r.exit_code))?;
    ctx.rt()
        .stop_container(cri::StopContainerRequest { container_id: long.clone(), timeout: 1 })
        .await
        .context("StopContainer after restart")?;
    let st = ctx.container_status(&long).await?;
    check(st.state == cri::ContainerState::ContainerExited as i32, || format!("after StopContainer `long` is {}", state_name(st.state)))?;
    for id in [&long, &short] {
        ctx.rt()
            .remove_container(cri::RemoveContainerRequest { container_id: id.to_string() })
            .await
            .with_context(|| format!("RemoveContainer {id} after restart"))?;
    }
    ctx.remove_pod(&pod.id).await
}
