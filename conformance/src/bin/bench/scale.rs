//! Scale rows of the bench: a node with many running containers, as kubelet's relist and
//! /stats/summary see it.
//!
//! `--scale-pods` pods (default 10) each run `--scale-per-pod` busybox `sleep 3600` containers
//! (default 10: 100 containers). Once all are RUNNING and a few seconds have passed:
//! - ListContainers (no filter) and ListContainerStats (no filter), `--runs` times each (after one
//!   untimed call each), median reported; each answer must list at least every bench container;
//! - idle CPU over `--idle-secs` (default 30) with no client calls: utime+stime of the daemon
//!   from /proc/PID/stat (fields 14 and 15, clock ticks), and the same summed over every
//!   berth-monitor / containerd-shim-runc-v2 of the target (which differ in count: berth has one
//!   per container and one per pod infra, which only pods sharing a PID namespace have;
//!   containerd one per pod). Reported as % of one core.

use crate::procfs::pids_of;
use crate::rpc::{create_start, pod_config, remove_pod, run_pod, sleep_config};
use crate::Samples;
use anyhow::{bail, Context, Result};
use berth::cri::v1 as cri;
use berth_conformance::client::Clients;
use berth_conformance::daemon::TargetKind;
use std::path::Path;
use std::time::{Duration, Instant};

/// What the scale phase measured on one target.
#[derive(Default)]
pub struct ScaleResults {
    /// Running bench containers during the measurement.
    pub containers: usize,
    pub list_containers: Samples,
    pub list_stats: Samples,
    /// Daemon CPU while idle, % of one core.
    pub daemon_idle_cpu: Option<f64>,
    /// All monitors / shims together while idle, % of one core, and how many there were.
    pub monitors_idle_cpu: Option<f64>,
    pub monitor_count: usize,
    /// Seconds of the idle window.
    pub idle_secs: u64,
}

/// Sizes of the phase.
pub struct ScaleOpts {
    pub pods: usize,
    pub per_pod: usize,
    pub runs: usize,
    pub idle_secs: u64,
}

/// utime + stime of `pid` in clock ticks (/proc/PID/stat fields 14 and 15).
fn cpu_ticks(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the parenthesised comm: field 3 is index 0, so 14 and 15 are indexes 11 and 12.
    let mut f = text.rsplit_once(')')?.1.split_whitespace().skip(11);
    Some(f.next()?.parse::<u64>().ok()? + f.next()?.parse::<u64>().ok()?)
}

/// USER_HZ, the unit of /proc/PID/stat times (100 on Linux x86_64 and arm64).
#[allow(unsafe_code)]
fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf reads a constant of the C library; no pointers, no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Runs the scale rows; removes its pods (errors reported).
pub async fn phase_scale(
    kind: TargetKind,
    dir: &Path,
    c: &mut Clients,
    daemon_pid: i32,
    image: &str,
    o: &ScaleOpts,
    r: &mut ScaleResults,
) -> Result<()> {
    let mut pods = Vec::new();
    let res = measure(kind, dir, c, daemon_pid, image, o, r, &mut pods).await;
    let mut rm = Ok(());
    for p in pods {
        if let Err(e) = remove_pod(c, &p).await {
            rm = Err(e);
        }
    }
    res.and(rm)
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    kind: TargetKind,
    dir: &Path,
    c: &mut Clients,
    daemon_pid: i32,
    image: &str,
    o: &ScaleOpts,
    r: &mut ScaleResults,
    pods: &mut Vec<String>,
) -> Result<()> {
    let want = o.pods * o.per_pod;
    // Untimed; needed when the pull phase did not run (`--only scale`).
    let spec = cri::ImageSpec { image: image.into(), ..Default::default() };
    c.img
        .pull_image(cri::PullImageRequest { image: Some(spec), auth: None, sandbox_config: None })
        .await
        .with_context(|| format!("PullImage {image}"))?;
    let t = Instant::now();
    for p in 0..o.pods {
        let cfg = pod_config(dir, &format!("scale-{p}"));
        let pod = run_pod(c, &cfg).await?;
        pods.push(pod.clone());
        for i in 0..o.per_pod {
            create_start(c, &pod, &cfg, sleep_config(&format!("sleep-{i}"), image)).await?;
        }
    }
    eprintln!("bench: {want} containers in {} pods started in {:.1} s", o.pods, t.elapsed().as_secs_f64());
    let running = cri::ContainerFilter {
        state: Some(cri::ContainerStateValue { state: cri::ContainerState::ContainerRunning as i32 }),
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n =
            c.rt.list_containers(cri::ListContainersRequest { filter: Some(running.clone()) })
                .await
                .context("ListContainers running")?
                .into_inner()
                .containers
                .len();
        if n >= want {
            r.containers = n;
            break;
        }
        if Instant::now() > deadline {
            bail!("{n} of {want} containers RUNNING after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    c.rt.list_containers(cri::ListContainersRequest { filter: None }).await.context("ListContainers (warm-up)")?;
    for i in 0..o.runs {
        let t = Instant::now();
        let n =
            c.rt.list_containers(cri::ListContainersRequest { filter: None })
                .await
                .with_context(|| format!("ListContainers {i}"))?
                .into_inner()
                .containers
                .len();
        r.list_containers.0.push(t.elapsed());
        if n < want {
            bail!("ListContainers {i}: {n} containers listed, expected at least {want}");
        }
    }
    c.rt.list_container_stats(cri::ListContainerStatsRequest { filter: None }).await.context("ListContainerStats (warm-up)")?;
    for i in 0..o.runs {
        let t = Instant::now();
        let n =
            c.rt.list_container_stats(cri::ListContainerStatsRequest { filter: None })
                .await
                .with_context(|| format!("ListContainerStats {i}"))?
                .into_inner()
                .stats
                .len();
        r.list_stats.0.push(t.elapsed());
        if n < want {
            bail!("ListContainerStats {i}: {n} stats, expected at least {want}");
        }
    }

    // Idle: no RPCs for idle_secs.
    let exe = if kind == TargetKind::Berth { "berth-monitor" } else { "containerd-shim-runc-v2" };
    let monitors = pids_of(exe, &dir.display().to_string());
    r.monitor_count = monitors.len();
    let before_d = cpu_ticks(daemon_pid);
    let before_m: Vec<Option<u64>> = monitors.iter().map(|p| cpu_ticks(*p)).collect();
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(o.idle_secs)).await;
    let secs = t.elapsed().as_secs_f64();
    r.idle_secs = o.idle_secs;
    let hz = clock_ticks_per_sec();
    let pct = |ticks: u64| ticks as f64 / hz / secs * 100.0;
    r.daemon_idle_cpu = match (before_d, cpu_ticks(daemon_pid)) {
        (Some(a), Some(b)) => Some(pct(b.saturating_sub(a))),
        _ => None,
    };
    let mut sum = 0;
    for (p, b) in monitors.iter().zip(before_m) {
        if let (Some(a), Some(b)) = (b, cpu_ticks(*p)) {
            sum += b.saturating_sub(a);
        }
    }
    r.monitors_idle_cpu = (!monitors.is_empty()).then(|| pct(sum));
    eprintln!("bench: idle {secs:.0} s: daemon {}, {} {exe} {}", percent(r.daemon_idle_cpu), monitors.len(), percent(r.monitors_idle_cpu));
    Ok(())
}

/// `x.xx %` or `n/a`.
pub fn percent(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2} %")).unwrap_or_else(|| "n/a".into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_cpu_ticks() {
        assert!(super::cpu_ticks(std::process::id() as i32).is_some());
    }
}
