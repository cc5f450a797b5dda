//! StopContainer/RemoveContainer and ExecSync cases.

use super::util::check;
use crate::ctx::{state_name, Ctx};
use anyhow::{Context, Result};
use berth::cri::v1 as cri;
use std::time::{Duration, Instant};

async fn stop(ctx: &Ctx, id: &str, timeout: i64) -> Result<()> {
    ctx.rt()
        .stop_container(cri::StopContainerRequest { container_id: id.into(), timeout })
        .await
        .with_context(|| format!("StopContainer {id} timeout {timeout}"))?;
    Ok(())
}

async fn remove(ctx: &Ctx, id: &str) -> Result<()> {
    ctx.rt()
        .remove_container(cri::RemoveContainerRequest { container_id: id.into() })
        .await
        .with_context(|| format!("RemoveContainer {id}"))?;
    Ok(())
}

/// StopContainer with timeout 2 kills a process that ignores SIGTERM, in well under 20 s.
pub async fn stop_timeout_kills(ctx: &Ctx) -> Result<()> {
    let pod = ctx.run_pod("stubborn").await?;
    let id = ctx.start_container(&pod, "stubborn", &ctx.images.busybox, &["sh", "-c", "trap '' TERM; echo trapped; sleep 1000"]).await?;
    ctx.wait_container_state(&id, cri::ContainerState::ContainerRunning, Duration::from_secs(30)).await?;
    let st = ctx.container_status(&id).await?;
    super::util::read_log(&pod, &st, 1).await.context("waiting for the trap to be set")?;
    let t0 = Instant::now();
    stop(ctx, &id, 2).await?;
    let took = t0.elapsed();
    let st = ctx.container_status(&id).await?;
    check(st.state == cri::ContainerState::ContainerExited as i32, || {
        format!("after StopContainer the state is {}", state_name(st.state))
    })?;
    check(took < Duration::from_secs(20), || format!("StopContainer with timeout 2 took {took:?}"))?;
    check(took >= Duration::from_millis(1500), || format!("StopContainer returned after {took:?}: did it wait the 2 s grace period?"))?;
    eprintln!("note container_stop_timeout_kills: took {took:?}, exit_code {}, reason {:?}", st.exit_code, st.reason);
    check(st.exit_code == 137, || format!("exit_code {}, expected 137 (SIGKILL)", st.exit_code))?;
    ctx.remove_pod(&pod.id).await
}

/// A forced stop preempts a graceful one (issue #11): while `StopContainer(timeout=60)` waits on
/// a process that ignores SIGTERM, `StopContainer(timeout=0)` (kubelet's force delete) kills it
/// at once, and both calls return within seconds, not after the 60 s grace period.
pub async fn stop_force_preempts_graceful(ctx: &Ctx) -> Result<()> {
    let pod = ctx.run_pod("preempt").await?;
    let result = async {
        let id =
            ctx.start_container(&pod, "stubborn", &ctx.images.busybox, &["sh", "-c", "trap '' TERM; echo trapped; sleep 1000"]).await?;
        ctx.wait_container_state(&id, cri::ContainerState::ContainerRunning, Duration::from_secs(30)).await?;
        let st = ctx.container_status(&id).await?;
        super::util::read_log(&pod, &st, 1).await.context("waiting for the trap to be set")?;
        let t0 = Instant::now();
        let limit = Duration::from_secs(20);
        let graceful = async { (tokio::time::timeout(limit, stop(ctx, &id, 60)).await, t0.elapsed()) };
        let forced = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let t1 = Instant::now();
            (tokio::time::timeout(limit, stop(ctx, &id, 0)).await, t1.elapsed())
        };
        let ((g, g_took), (f, f_took)) = tokio::join!(graceful, forced);
        eprintln!("note container_stop_force_preempts_graceful: graceful returned after {g_took:?}, forced after {f_took:?}");
        check(matches!(f, Ok(Ok(()))), || {
            format!("StopContainer(timeout=0) during a graceful stop: {f:?} after {f_took:?}, expected Ok at once")
        })?;
        check(matches!(g, Ok(Ok(()))), || {
            format!("the graceful StopContainer(timeout=60): {g:?} after {g_took:?}, expected Ok once the forced stop killed it")
        })?;
        check(f_took < Duration::from_secs(10), || format!("the forced stop took {f_took:?}"))?;
        let st = ctx.container_status(&id).await?;
        check(st.state == cri::ContainerState::ContainerExited as i32 && st.exit_code == 137, || {
            format!("after both stops: state {} exit_code {}, expected EXITED 137", state_name(st.state), st.exit_code)
        })
    }
    .await;
    ctx.remove_pod(&pod.id).await?;
    result
}

/// StopContainer twice and RemoveContainer twice are all Ok; the container is then gone.
pub async fn stop_remove_twice(ctx: &Ctx) -> Result<()> {
    let pod = ctx.run_pod("twice").await?;
    let id = ctx.start_container(&pod, "sleeper", &ctx.images.busybox, &["sleep", "1000"]).await?;
    ctx.wait_container_state(&id, cri::ContainerState::ContainerRunning, Duration::from_secs(30)).await?;
    stop(ctx, &id, 1).await?;
    stop(ctx, &id, 1).await.context("second StopContainer must be Ok")?;
    remove(ctx, &id).await?;
    remove(ctx, &id).await.context("second RemoveContainer must be Ok")?;
    check(ctx.container_status(&id).await.is_err(), || format!("ContainerStatus {id} still answers after RemoveContainer"))?;
    ctx.remove_pod(&pod.id).await
}

async fn sleeper(ctx: &Ctx, name: &str) -> Result<(crate::ctx::Pod, String)> {
    let pod = ctx.run_pod(name).await?;
    let id = ctx.start_container(&pod, name, &ctx.images.busybox, &["sleep", "1000"]).await?;
    ctx.wait_container_state(&id, cri::ContainerState::ContainerRunning, Duration::from_secs(30)).await?;
    Ok((pod, id))
}

/// ExecSync returns stdout, stderr and the exit code.
pub async fn exec_sync_output(ctx: &Ctx) -> Result<()> {
    let (pod, id) = sleeper(ctx, "exec").await?;
    let r = ctx.exec(&id, &["sh", "-c", "echo out; echo err >&2; exit 3"], 10).await?;
    check(r.stdout == b"out\n", || format!("stdout {:?}, expected \"out\\n\"", String::from_utf8_lossy(&r.stdout)))?;
    check(r.stderr == b"err\n", || format!("stderr {:?}, expected \"err\\n\"", String::from_utf8_lossy(&r.stderr)))?;
    check(r.exit_code == 3, || format!("exit_code {}, expected 3", r.exit_code))?;
    let r = ctx.exec(&id, &["cat", "/etc/hostname"], 10).await?;
    check(r.exit_code == 0, || format!("`cat /etc/hostname` exited {}", r.exit_code))?;
    ctx.remove_pod(&pod.id).await
}

/// ExecSync with timeout 1 on `sleep 10` returns in well under 10 s with an error or a non-zero
/// exit code; what the runtime does is printed as a note.
pub async fn exec_sync_timeout(ctx: &Ctx) -> Result<()> {
    // The container's init never reaps (as critest's `top`): a killed exec process that its
    // runtime did not reap stays a zombie there, visible to ps.
    let pod = ctx.run_pod("exectimeout").await?;
    let id = ctx.start_container(&pod, "exectimeout", &ctx.images.busybox, &["tail", "-f", "/dev/null"]).await?;
    ctx.wait_container_state(&id, cri::ContainerState::ContainerRunning, Duration::from_secs(30)).await?;
    let t0 = Instant::now();
    let r =
        ctx.rt().exec_sync(cri::ExecSyncRequest { container_id: id.clone(), cmd: vec!["sleep".into(), "4321".into()], timeout: 1 }).await;
    let took = t0.elapsed();
    let outcome = match &r {
        Ok(x) => format!("Ok exit_code {} stderr {:?}", x.get_ref().exit_code, String::from_utf8_lossy(&x.get_ref().stderr)),
        Err(s) => format!("error code {:?}: {}", s.code(), s.message()),
    };
    eprintln!("note exec_sync_timeout: after {took:?}: {outcome}");
    check(took < Duration::from_secs(6), || format!("ExecSync with timeout 1 took {took:?}: {outcome}"))?;
    if let Ok(x) = &r {
        check(x.get_ref().exit_code != 0, || format!("ExecSync timed out but reports success: {outcome}"))?;
    }
    // The timed-out process is gone, not even a zombie, by the time the reply came (critest
    // checks this with `pgrep sleep` right after), and the container is still usable.
    let after = ctx.exec(&id, &["sh", "-c", "ps -o pid,stat,comm | grep sleep || true"], 10).await?;
    check(after.exit_code == 0 && after.stdout.trim_ascii().is_empty(), || {
        format!("after the timeout, ps in the container shows: {:?}", String::from_utf8_lossy(&after.stdout))
    })?;
    ctx.remove_pod(&pod.id).await
}
