//! berth's per-container monitor killed with SIGKILL: the container and its pod must still stop
//! and be removed promptly (kubelet would otherwise retry forever). berth only: other runtimes
//! have other shims with other recovery rules.

use super::util::check;
use crate::ctx::{skip, state_name, Ctx};
use crate::daemon::TargetKind;
use anyhow::{bail, Context, Result};
use berth::cri::v1 as cri;
use std::time::{Duration, Instant};

/// The parent PID and command name of `pid`, from /proc/<pid>/stat.
fn parent_of(pid: i64) -> Result<(i32, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    let close = stat.rfind(')').context("malformed stat")?;
    let ppid: i32 = stat[close + 2..].split_whitespace().nth(1).context("no ppid")?.parse()?;
    let comm = std::fs::read_to_string(format!("/proc/{ppid}/comm")).unwrap_or_default().trim().to_string();
    Ok((ppid, comm))
}

/// `info["info"].pid` of a verbose status.
pub(super) fn info_pid(info: &std::collections::HashMap<String, String>) -> Result<i64> {
    let v: serde_json::Value = serde_json::from_str(info.get("info").context("verbose status has no info")?)?;
    v["pid"].as_i64().filter(|p| *p > 0).context("verbose info has no pid")
}

fn kill_monitor_of(pid: i64, what: &str) -> Result<()> {
    let (monitor, comm) = parent_of(pid)?;
    if comm != "berth-monitor" {
        bail!("the parent of {what} (pid {pid}) is {comm:?} (pid {monitor}), expected berth-monitor");
    }
    let status = std::process::Command::new("kill").args(["-9", &monitor.to_string()]).status().context("running kill")?;
    check(status.success(), || format!("kill -9 {monitor} failed: {status}"))
}

/// kill -9 of a container's monitor: the container still reports RUNNING (its process lives),
/// StopContainer ends it within its timeout, RemoveContainer works; kill -9 of the pod's infra
/// monitor: StopPodSandbox and RemovePodSandbox still finish promptly.
pub async fn monitor_killed(ctx: &Ctx) -> Result<()> {
    if ctx.kind != TargetKind::Berth {
        return skip("berth-monitor is berth's; other runtimes' shims recover differently");
    }
    // A pod sharing one PID namespace, so that it has an infra process (and monitor) to kill.
    let pod = ctx.run_pod_with(ctx.shared_pid_pod_config("monkill", &[])).await?;
    let res = async {
        let c = ctx.start_container(&pod, "victim", &ctx.images.busybox, &["sleep", "1000"]).await?;
        let st = ctx
            .rt()
            .container_status(cri::ContainerStatusRequest { container_id: c.clone(), verbose: true })
            .await
            .context("ContainerStatus verbose")?
            .into_inner();
        kill_monitor_of(info_pid(&st.info)?, "the container")?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let st = ctx.container_status(&c).await?;
        check(st.state == cri::ContainerState::ContainerRunning as i32, || {
            format!("container whose monitor died is {}, expected RUNNING (its process still runs)", state_name(st.state))
        })?;
        let t = Instant::now();
        ctx.rt().stop_container(cri::StopContainerRequest { container_id: c.clone(), timeout: 2 }).await.context("StopContainer")?;
        check(t.elapsed() < Duration::from_secs(10), || format!("StopContainer took {:?}", t.elapsed()))?;
        let st = ctx.container_status(&c).await?;
        check(st.state == cri::ContainerState::ContainerExited as i32, || format!("after StopContainer it is {}", state_name(st.state)))?;
        eprintln!("note monitor_killed: exit_code {} reason {:?} message {:?}", st.exit_code, st.reason, st.message);
        ctx.rt().remove_container(cri::RemoveContainerRequest { container_id: c.clone() }).await.context("RemoveContainer")?;

        let ps = ctx
            .rt()
            .pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: pod.id.clone(), verbose: true })
            .await
            .context("PodSandboxStatus verbose")?
            .into_inner();
        kill_monitor_of(info_pid(&ps.info)?, "the pod's infra process")?;
        let t = Instant::now();
        ctx.rt()
            .stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.id.clone() })
            .await
            .context("StopPodSandbox after its infra monitor was killed")?;
        check(t.elapsed() < Duration::from_secs(8), || format!("StopPodSandbox took {:?}", t.elapsed()))?;
        Ok::<(), anyhow::Error>(())
    }
    .await;
    ctx.remove_pod(&pod.id).await?;
    res
}
