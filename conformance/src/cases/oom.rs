//! Out-of-memory kills as a CRI user sees them (ContainerStatus reason `OOMKilled`, exit code
//! 137), and the per-container log size limit (berth's `log_size_max`).

use super::util::{check, log_file, parse_log_line};
use crate::ctx::{skip, Ctx};
use crate::daemon::TargetKind;
use anyhow::{Context, Result};
use berth::cri::v1 as cri;
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
        check(st.reason == "OOMKilled", || {
            format!("ContainerStatus reason {:?} (exit code {}), expected \"OOMKilled\"", st.reason, st.exit_code)
        })?;
        check(st.exit_code == 137, || format!("ContainerStatus exit_code {}, expected 137 (SIGKILL by the OOM killer)", st.exit_code))
    }
    .await;
    ctx.remove_pod(&pod.id).await?;
    res
}

/// berth with `log_size_max = 16384` (the harness's berth.toml gets the key, the daemon is
/// restarted, and both are put back afterwards): a container writing 3000 numbered lines (about
/// 140 KB of records) leaves a log of at most 16384 bytes, of whole `F` records, ending with the
/// last line, holding consecutive lines and not the first ones (the monitor started the file over,
/// as conmon's `--log-size-max`). berth only: containerd leaves log size to kubelet's rotation.
pub async fn log_size_limit(ctx: &Ctx) -> Result<()> {
    const LIMIT: usize = 16384;
    if ctx.kind != TargetKind::Berth {
        return skip("log_size_max is berth configuration (containerd leaves log size to kubelet's rotation)");
    }
    let cfg_path = ctx.tmp.join("berth.toml");
    let original = std::fs::read_to_string(&cfg_path).with_context(|| format!("read {}", cfg_path.display()))?;
    // A top-level key goes before the first [table].
    std::fs::write(&cfg_path, format!("log_size_max = {LIMIT}\n{original}")).with_context(|| format!("write {}", cfg_path.display()))?;
    let res = async {
        ctx.restart_daemon().await.context("restart with log_size_max")?;
        let pod = ctx.run_pod("logsize").await?;
        let res = async {
            let script = "i=0; while [ $i -lt 3000 ]; do echo \"line $i\"; i=$((i+1)); done";
            let id = ctx.start_container(&pod, "logsize", &ctx.images.busybox, &["sh", "-c", script]).await?;
            let st = ctx.wait_container_state(&id, cri::ContainerState::ContainerExited, Duration::from_secs(60)).await?;
            check(st.exit_code == 0, || format!("the writer exited {}", st.exit_code))?;
            let path = log_file(&pod, &st);
            let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
            check(text.len() <= LIMIT, || format!("log {} is {} bytes, over log_size_max {LIMIT}", path.display(), text.len()))?;
            check(text.ends_with('\n'), || format!("log {} ends inside a record", path.display()))?;
            let mut numbers = Vec::new();
            for line in text.lines() {
                let l = parse_log_line(line)?;
                check(l.stream == "stdout" && l.tag == "F", || format!("record {line:?}: expected stdout F"))?;
                let n: usize = l
                    .text
                    .strip_prefix("line ")
                    .and_then(|n| n.parse().ok())
                    .with_context(|| format!("record {line:?}: expected `line N`"))?;
                numbers.push(n);
            }
            check(numbers.last() == Some(&2999), || format!("last logged line {:?}, expected 2999", numbers.last()))?;
            check(numbers.first().is_some_and(|&n| n > 0), || "the log still starts with line 0: it never started over".into())?;
            check(numbers.windows(2).all(|w| w[1] == w[0] + 1), || "logged lines are not consecutive".into())
        }
        .await;
        ctx.remove_pod(&pod.id).await?;
        res
    }
    .await;
    std::fs::write(&cfg_path, &original).with_context(|| format!("restore {}", cfg_path.display()))?;
    let back = ctx.restart_daemon().await.context("restart with the original configuration");
    res.and(back)
}
