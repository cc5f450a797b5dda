//! Stats and resource updates: ContainerStats / ListContainerStats that move with real CPU and
//! memory use, PodSandboxStats with the pod's network counters, UpdateContainerResources seen in
//! the container's cgroup and in ContainerStatus.resources.

use super::util::check;
use crate::ctx::{skip, Ctx, Pod};
use crate::daemon::TargetKind;
use anyhow::{Context, Result};
use berth::cri::v1 as cri;
use std::time::Duration;

fn val(v: &Option<cri::UInt64Value>) -> Option<u64> {
    v.as_ref().map(|v| v.value)
}

async fn container_stats(ctx: &Ctx, id: &str) -> Result<cri::ContainerStats> {
    ctx.rt()
        .container_stats(cri::ContainerStatsRequest { container_id: id.into() })
        .await
        .with_context(|| format!("ContainerStats {id}"))?
        .into_inner()
        .stats
        .with_context(|| format!("ContainerStats {id}: no stats in the reply"))
}

async fn running(ctx: &Ctx, pod: &Pod, name: &str, cmd: &[&str], labels: &[(&str, &str)]) -> Result<String> {
    let mut cfg = ctx.container_config(name, &ctx.images.busybox, cmd);
    cfg.labels.extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let id = ctx.create_with(pod, cfg).await?;
    ctx.rt()
        .start_container(cri::StartContainerRequest { container_id: id.clone() })
        .await
        .with_context(|| format!("StartContainer {name}"))?;
    ctx.wait_container_state(&id, cri::ContainerState::ContainerRunning, Duration::from_secs(30)).await?;
    Ok(id)
}

/// A container burning CPU: usage_core_nano_seconds grows between two ContainerStats calls
/// 1.5 s apart and the second reports usage_nano_cores > 0; attributes, memory and the
/// writable layer are filled. On berth the writable layer counts its upper dir itself (>= 1
/// inode); containerd 1.6 refreshes snapshot usage every 10 s, so it may still say 0.
pub async fn cpu_moves(ctx: &Ctx) -> Result<()> {
    let pod = ctx.run_pod("statscpu").await?;
    let res = async {
        let id = running(ctx, &pod, "burn", &["sh", "-c", "while :; do :; done"], &[]).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let a = container_stats(ctx, &id).await?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let b = container_stats(ctx, &id).await?;
        let attrs = b.attributes.as_ref().context("stats.attributes missing")?;
        check(attrs.id == id, || format!("attributes.id {:?}, expected {id}", attrs.id))?;
        check(attrs.metadata.as_ref().map(|m| m.name.as_str()) == Some("burn"), || format!("attributes.metadata {:?}", attrs.metadata))?;
        let (ca, cb) = (a.cpu.context("first stats: cpu missing")?, b.cpu.context("second stats: cpu missing")?);
        let (ua, ub) = (val(&ca.usage_core_nano_seconds).unwrap_or(0), val(&cb.usage_core_nano_seconds).unwrap_or(0));
        eprintln!(
            "note stats_cpu_moves: usage {ua} -> {ub} ns, nano_cores {:?} -> {:?}",
            val(&ca.usage_nano_cores),
            val(&cb.usage_nano_cores)
        );
        check(ub > ua + 500_000_000, || format!("usage_core_nano_seconds {ua} -> {ub}: expected > 0.5 s of CPU in 1.5 s of spinning"))?;
        check(cb.timestamp > ca.timestamp, || format!("cpu.timestamp {} -> {}", ca.timestamp, cb.timestamp))?;
        let cores = val(&cb.usage_nano_cores).unwrap_or(0);
        check(cores > 300_000_000, || format!("second usage_nano_cores {cores}: expected > 0.3 core for a spinning shell"))?;
        let mem = b.memory.as_ref().context("stats.memory missing")?;
        check(val(&mem.working_set_bytes).unwrap_or(0) > 0, || format!("memory.working_set_bytes {:?}", mem.working_set_bytes))?;
        let wl = b.writable_layer.as_ref().context("stats.writable_layer missing")?;
        eprintln!("note stats_cpu_moves: writable_layer bytes {:?} inodes {:?}", val(&wl.used_bytes), val(&wl.inodes_used));
        check(ctx.kind != TargetKind::Berth || val(&wl.inodes_used).unwrap_or(0) >= 1, || {
            format!("writable_layer.inodes_used {:?}", wl.inodes_used)
        })
    }
    .await;
    ctx.remove_pod(&pod.id).await?;
    res
}

/// Writing 64 MiB to /dev/shm (tmpfs, charged as shmem to the writer's memory cgroup) raises
/// the container's memory working set by at least 48 MiB.
pub async fn memory_grows(ctx: &Ctx) -> Result<()> {
    let pod = ctx.run_pod("statsmem").await?;
    let res = async {
        let id = running(ctx, &pod, "alloc", &["sleep", "1000"], &[]).await?;
        let ws = |s: &cri::ContainerStats| s.memory.as_ref().and_then(|m| val(&m.working_set_bytes)).unwrap_or(0);
        let before = ws(&container_stats(ctx, &id).await?);
        let r = ctx.exec(&id, &["dd", "if=/dev/zero", "of=/dev/shm/x", "bs=1M", "count=64"], 30).await?;
        check(r.exit_code == 0, || format!("dd exited {}: {}", r.exit_code, String::from_utf8_lossy(&r.stderr)))?;
        let after_stats = container_stats(ctx, &id).await?;
        let after = ws(&after_stats);
        eprintln!("note stats_memory_grows: working set {before} -> {after} bytes; memory {:?}", after_stats.memory);
        check(after >= before + (48 << 20), || {
            format!("working_set_bytes {before} -> {after}: expected +48 MiB after a 64 MiB /dev/shm write")
        })?;
        let m = after_stats.memory.as_ref().context("memory missing")?;
        check(val(&m.usage_bytes).unwrap_or(0) >= after, || format!("usage_bytes {:?} < working set {after}", m.usage_bytes))
    }
    .await;
    ctx.remove_pod(&pod.id).await?;
    res
}

/// ListContainerStats filters: by container id, by pod sandbox id, by labels; an exited
/// container has no stats on berth (containerd 1.6 still reports one until it is removed: noted,
/// not failed); no filter lists every running container of ours.
pub async fn list_filters(ctx: &Ctx) -> Result<()> {
    let a = ctx.run_pod("statsla").await?;
    let b = match ctx.run_pod("statslb").await {
        Ok(b) => b,
        Err(e) => {
            ctx.remove_pod(&a.id).await?;
            return Err(e);
        }
    };
    let res = async {
        let a1 = running(ctx, &a, "a1", &["sleep", "1000"], &[("stats-app", "one")]).await?;
        let a2 = running(ctx, &a, "a2", &["sleep", "1000"], &[("stats-app", "two")]).await?;
        let b1 = running(ctx, &b, "b1", &["sleep", "1000"], &[("stats-app", "one")]).await?;
        let done = running(ctx, &b, "done", &["sh", "-c", "sleep 0.5"], &[]).await.or_else(|_| Ok::<_, anyhow::Error>(String::new()))?;
        if !done.is_empty() {
            ctx.wait_container_state(&done, cri::ContainerState::ContainerExited, Duration::from_secs(30)).await?;
        }
        let list = |f: cri::ContainerStatsFilter| async move {
            let mut ids: Vec<String> = ctx
                .rt()
                .list_container_stats(cri::ListContainerStatsRequest { filter: Some(f.clone()) })
                .await
                .with_context(|| format!("ListContainerStats {f:?}"))?
                .into_inner()
                .stats
                .into_iter()
                .filter_map(|s| s.attributes.map(|a| a.id))
                .collect();
            ids.sort();
            Ok::<_, anyhow::Error>(ids)
        };
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        let all = list(Default::default()).await?;
        check(all.contains(&a1) && all.contains(&a2) && all.contains(&b1), || {
            format!("unfiltered list {all:?} lacks one of {a1} {a2} {b1}")
        })?;
        if !done.is_empty() && all.contains(&done) {
            eprintln!("note stats_list_filters: exited container {done} is listed with stats by this runtime");
            check(ctx.kind != TargetKind::Berth, || format!("exited container {done} has stats"))?;
        }
        let by_id = list(cri::ContainerStatsFilter { id: a2.clone(), ..Default::default() }).await?;
        check(by_id == vec![a2.clone()], || format!("filter id={a2}: {by_id:?}"))?;
        let by_pod = list(cri::ContainerStatsFilter { pod_sandbox_id: a.id.clone(), ..Default::default() }).await?;
        check(by_pod == sorted(vec![a1.clone(), a2.clone()]), || format!("filter pod={}: {by_pod:?}", a.id))?;
        let sel = [("stats-app".to_string(), "one".to_string())].into();
        let by_label = list(cri::ContainerStatsFilter { label_selector: sel, ..Default::default() }).await?;
        check(by_label == sorted(vec![a1.clone(), b1.clone()]), || format!("filter stats-app=one: {by_label:?}"))?;
        let sel = [("stats-app".to_string(), "one".to_string())].into();
        let both = list(cri::ContainerStatsFilter { pod_sandbox_id: b.id.clone(), label_selector: sel, ..Default::default() }).await?;
        check(both == vec![b1.clone()], || format!("filter pod={} + stats-app=one: {both:?}", b.id))
    }
    .await;
    ctx.remove_pod(&a.id).await?;
    ctx.remove_pod(&b.id).await?;
    res
}

/// PodSandboxStats: after the pod's container opens a TCP connection to another pod (both in
/// namespaces the suite made), eth0 shows rx and tx bytes; the container is listed; cpu,
/// memory and process count are there. ListPodSandboxStats filters by id. Skipped when the
/// runtime does not implement it, or (containerd 1.6) serves it only for pods with a cgroup
/// parent ("cgroupPath is empty": the suite's pods give none).
pub async fn pod_stats_network(ctx: &Ctx) -> Result<()> {
    let a = ctx.run_pod("statsnet-a").await?;
    let b = match ctx.run_pod("statsnet-b").await {
        Ok(b) => b,
        Err(e) => {
            ctx.remove_pod(&a.id).await?;
            return Err(e);
        }
    };
    let res = async {
        let ip = ctx
            .rt()
            .pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: a.id.clone(), verbose: false })
            .await
            .context("PodSandboxStatus")?
            .into_inner()
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default();
        check(!ip.is_empty(), || format!("pod {} has no IP", a.id))?;
        let id = running(ctx, &b, "client", &["sleep", "1000"], &[]).await?;
        // A refused connection still moves packets both ways (ARP, SYN, RST).
        let url = format!("http://{ip}:1/");
        let _ = ctx.exec(&id, &["wget", "-T", "3", "-q", "-O", "/dev/null", &url], 10).await?;
        let stats = match ctx.rt().pod_sandbox_stats(cri::PodSandboxStatsRequest { pod_sandbox_id: b.id.clone() }).await {
            Err(s) if s.code() == tonic::Code::Unimplemented => return skip("PodSandboxStats is unimplemented by this runtime"),
            Err(s) if ctx.kind != TargetKind::Berth && s.message().contains("cgroupPath is empty") => {
                return skip("this runtime serves PodSandboxStats only for pods with a cgroup_parent")
            }
            r => r.context("PodSandboxStats")?.into_inner().stats.context("PodSandboxStats: no stats")?,
        };
        let linux = stats.linux.as_ref().context("stats.linux missing")?;
        eprintln!("note stats_pod_network: network {:?}, process {:?}", linux.network, linux.process);
        check(stats.attributes.as_ref().map(|a| a.id.as_str()) == Some(b.id.as_str()), || format!("attributes {:?}", stats.attributes))?;
        let net = linux.network.as_ref().context("linux.network missing")?;
        let eth0 = net.interfaces.iter().find(|i| i.name == "eth0").with_context(|| format!("no eth0 in {:?}", net.interfaces))?;
        check(val(&eth0.rx_bytes).unwrap_or(0) > 0 && val(&eth0.tx_bytes).unwrap_or(0) > 0, || format!("eth0 counters {eth0:?}"))?;
        check(net.default_interface.as_ref().map(|i| i.name.as_str()) == Some("eth0"), || {
            format!("default_interface {:?}", net.default_interface)
        })?;
        check(linux.containers.iter().any(|c| c.attributes.as_ref().map(|a| a.id.as_str()) == Some(id.as_str())), || {
            format!(
                "containers {:?} lack {id}",
                linux.containers.iter().map(|c| c.attributes.as_ref().map(|a| a.id.clone())).collect::<Vec<_>>()
            )
        })?;
        check(linux.cpu.as_ref().and_then(|c| val(&c.usage_core_nano_seconds)).unwrap_or(0) > 0, || format!("cpu {:?}", linux.cpu))?;
        check(linux.memory.as_ref().and_then(|m| val(&m.working_set_bytes)).unwrap_or(0) > 0, || format!("memory {:?}", linux.memory))?;
        let procs = linux.process.as_ref().and_then(|p| val(&p.process_count)).unwrap_or(0);
        check(procs >= 1, || format!("process_count {procs}"))?;
        let listed = ctx
            .rt()
            .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest {
                filter: Some(cri::PodSandboxStatsFilter { id: b.id.clone(), ..Default::default() }),
            })
            .await
            .context("ListPodSandboxStats")?
            .into_inner()
            .stats;
        let ids: Vec<String> = listed.iter().filter_map(|s| s.attributes.as_ref().map(|a| a.id.clone())).collect();
        check(ids == vec![b.id.clone()], || format!("ListPodSandboxStats id={}: {ids:?}", b.id))
    }
    .await;
    ctx.remove_pod(&a.id).await?;
    ctx.remove_pod(&b.id).await?;
    res
}

/// UpdateContainerResources from 64 MiB to 128 MiB (and a CPU quota): the cgroup inside the
/// container says 134217728 and ContainerStatus.resources shows the new values.
pub async fn update_resources(ctx: &Ctx) -> Result<()> {
    const BEFORE: i64 = 64 << 20;
    const AFTER: i64 = 128 << 20;
    let pod = ctx.run_pod("update").await?;
    let res = async {
        let mut cfg = ctx.container_config("update", &ctx.images.busybox, &["sleep", "1000"]);
        cfg.linux.get_or_insert_with(Default::default).resources =
            Some(cri::LinuxContainerResources { memory_limit_in_bytes: BEFORE, cpu_shares: 512, ..Default::default() });
        let id = ctx.create_with(&pod, cfg).await?;
        ctx.rt().start_container(cri::StartContainerRequest { container_id: id.clone() }).await.context("StartContainer update")?;
        ctx.wait_container_state(&id, cri::ContainerState::ContainerRunning, Duration::from_secs(30)).await?;
        let read_limit = || async {
            let script = "if [ -e /sys/fs/cgroup/memory/memory.limit_in_bytes ]; then cat /sys/fs/cgroup/memory/memory.limit_in_bytes; else cat /sys/fs/cgroup/memory.max; fi";
            let r = ctx.exec(&id, &["sh", "-c", script], 10).await?;
            Ok::<_, anyhow::Error>(String::from_utf8_lossy(&r.stdout).trim().to_string())
        };
        let before = read_limit().await?;
        check(before == BEFORE.to_string(), || format!("limit before the update {before:?}, expected {BEFORE}"))?;
        ctx.rt()
            .update_container_resources(cri::UpdateContainerResourcesRequest {
                container_id: id.clone(),
                linux: Some(cri::LinuxContainerResources { memory_limit_in_bytes: AFTER, cpu_period: 100_000, cpu_quota: 50_000, ..Default::default() }),
                ..Default::default()
            })
            .await
            .context("UpdateContainerResources")?;
        let after = read_limit().await?;
        check(after == AFTER.to_string(), || format!("limit after the update {after:?}, expected {AFTER}"))?;
        let st = ctx.container_status(&id).await?;
        let linux = st.resources.as_ref().and_then(|r| r.linux.clone());
        eprintln!("note stats_update_resources: ContainerStatus.resources.linux {linux:?}");
        let linux = linux.context("ContainerStatus.resources.linux missing")?;
        check(linux.memory_limit_in_bytes == AFTER, || format!("status memory_limit_in_bytes {}, expected {AFTER}", linux.memory_limit_in_bytes))?;
        check(linux.cpu_quota == 50_000 && linux.cpu_period == 100_000, || format!("status cpu quota/period {}/{}", linux.cpu_quota, linux.cpu_period))?;
        check(linux.cpu_shares == 512, || format!("status cpu_shares {} (the update did not name it: it must stay 512)", linux.cpu_shares))
    }
    .await;
    ctx.remove_pod(&pod.id).await?;
    res
}

/// On a cgroup v2 host, ContainerStats agrees with what the kernel reports for the container's
/// cgroup (found from `/proc/<pid>/cgroup` of its process): memory usage within 1 MiB of
/// `memory.current`, CPU time no more than `cpu.stat` `usage_usec` read just after, and, where
/// the kernel has PSI (`cpu.pressure` exists), `psi` for CPU, memory and I/O with each `some`
/// total no more than the kernel's (µs there, ns in the CRI). Skipped on cgroup v1.
pub async fn stats_match_kernel_v2(ctx: &Ctx) -> Result<()> {
    if !std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        return skip("this host runs cgroup v1 (the v2 lane, scripts/v2-guest.sh, runs this case)");
    }
    let pod = ctx.run_pod("kernelstats").await?;
    let res = async {
        let id = running(ctx, &pod, "kstats", &["sh", "-c", "head -c 8000000 /dev/zero | cat > /dev/null; exec sleep 1000"], &[]).await?;
        let st = ctx.rt().container_status(cri::ContainerStatusRequest { container_id: id.clone(), verbose: true }).await?.into_inner();
        let pid = super::monitor::info_pid(&st.info)?;
        let proc_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).with_context(|| format!("/proc/{pid}/cgroup"))?;
        let rel = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::")).context("no 0:: line in /proc/PID/cgroup")?;
        let dir = std::path::Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).with_context(|| format!("{}/{f}", dir.display()));
        let s = container_stats(ctx, &id).await?;
        let current: u64 = read("memory.current")?.trim().parse()?;
        let cpu_after =
            read("cpu.stat")?.lines().find_map(|l| l.strip_prefix("usage_usec ")).context("cpu.stat usage_usec")?.trim().parse::<u64>()?
                * 1000;
        let mem = s.memory.as_ref().and_then(|m| val(&m.usage_bytes)).context("no memory.usage_bytes")?;
        check(mem.abs_diff(current) <= 1 << 20, || format!("memory usage {mem}, kernel's memory.current {current}"))?;
        let cpu = s.cpu.as_ref().and_then(|c| val(&c.usage_core_nano_seconds)).context("no cpu.usage_core_nano_seconds")?;
        check(cpu > 0 && cpu <= cpu_after, || format!("cpu usage {cpu} ns, kernel's usage_usec*1000 {cpu_after}"))?;
        if !dir.join("cpu.pressure").exists() {
            eprintln!("note stats_match_kernel_v2: this kernel has no PSI");
            return Ok(());
        }
        let some_total = |f: &str| -> Result<u64> {
            let t = read(f)?;
            let line = t.lines().find(|l| l.starts_with("some ")).with_context(|| format!("{f}: no some line"))?;
            let total = line.split_whitespace().find_map(|w| w.strip_prefix("total=")).with_context(|| format!("{f}: no total"))?;
            Ok(total.parse::<u64>()? * 1000)
        };
        let got = [
            ("cpu", s.cpu.as_ref().and_then(|c| c.psi), "cpu.pressure"),
            ("memory", s.memory.as_ref().and_then(|m| m.psi), "memory.pressure"),
            ("io", s.io.as_ref().and_then(|i| i.psi), "io.pressure"),
        ];
        for (what, psi, file) in got {
            let psi = psi.with_context(|| format!("no {what} psi in ContainerStats on a kernel with PSI"))?;
            let reported = psi.some.map(|d| d.total).unwrap_or(0);
            let kernel = some_total(file)?;
            check(reported <= kernel, || format!("{what} psi some.total {reported} ns, more than the kernel's {kernel} ns read after"))?;
        }
        Ok(())
    }
    .await;
    ctx.remove_pod(&pod.id).await?;
    res
}
