//! Namespace modes (issue #5): a container's PID namespace POD (shared with the pod), CONTAINER
//! (its own) and NODE (the host's), and IPC POD and NODE, compared by the namespace links
//! (`readlink /proc/self/ns/{pid,ipc}`) inside each container and in this test process, which
//! runs in the host's namespaces.

use super::util::{check, read_log};
use super::Case;
use crate::ctx::{Ctx, Pod};
use crate::daemon::TargetKind;
use anyhow::{Context, Result};
use berth::cri::v1 as cri;
use std::time::Duration;

/// The cases of this module, in run order.
pub fn cases() -> Vec<Case> {
    vec![
        case!("namespaces_pid_ipc_modes", pid_ipc_modes),
        case!("namespaces_pod_pid_children_die_with_main", pod_pid_children_die_with_main),
        case!("namespaces_pod_without_infra", pod_without_infra),
    ]
}

/// Runs a container with `opts` in `pod` that prints its pid and ipc namespace links; returns
/// them.
async fn links(ctx: &Ctx, pod: &Pod, name: &str, opts: Option<cri::NamespaceOption>) -> Result<(String, String)> {
    let mut cfg = ctx.container_config(name, &ctx.images.busybox, &["sh", "-c", "readlink /proc/self/ns/pid; readlink /proc/self/ns/ipc"]);
    cfg.linux.get_or_insert_with(Default::default).security_context.get_or_insert_with(Default::default).namespace_options = opts;
    let id = ctx.create_with(pod, cfg).await?;
    ctx.rt()
        .start_container(cri::StartContainerRequest { container_id: id.clone() })
        .await
        .with_context(|| format!("StartContainer {name}"))?;
    let st = ctx.wait_container_state(&id, cri::ContainerState::ContainerExited, Duration::from_secs(60)).await?;
    let out: Vec<String> = read_log(pod, &st, 2).await?.into_iter().map(|l| l.text).collect();
    check(out.len() == 2, || format!("{name}: printed {out:?}, expected two namespace links"))?;
    Ok((out[0].clone(), out[1].clone()))
}

/// PID POD: two containers share one namespace, not the host's; PID CONTAINER: a namespace of
/// its own; PID NODE: the host's. IPC POD: shared by the pod, not the host's; IPC NODE: the
/// host's. NODE is asked at pod level (and repeated on the container), as kubelet does for
/// hostPID/hostIPC.
pub async fn pid_ipc_modes(ctx: &Ctx) -> Result<()> {
    let host = |ns: &str| std::fs::read_link(format!("/proc/self/ns/{ns}")).map(|p| p.display().to_string());
    let (host_pid, host_ipc) = (host("pid")?, host("ipc")?);
    let pod = ctx.run_pod_with(ctx.shared_pid_pod_config("nsmodes", &[])).await?;
    let r = async {
        let mode = |pid: cri::NamespaceMode, ipc: cri::NamespaceMode| {
            Some(cri::NamespaceOption { network: cri::NamespaceMode::Pod as i32, pid: pid as i32, ipc: ipc as i32, ..Default::default() })
        };
        use cri::NamespaceMode::{Container, Node, Pod as P};
        let a = links(ctx, &pod, "pod-a", None).await?;
        let b = links(ctx, &pod, "pod-b", mode(P, P)).await?;
        let own = links(ctx, &pod, "own-pid", mode(Container, P)).await?;
        // Host PID and IPC are pod-level in Kubernetes (hostPID, hostIPC); kubelet repeats
        // the pod's options on each container.
        let mut pc = ctx.pod_config("nsnode", &[]);
        pc.linux.get_or_insert_with(Default::default).security_context.get_or_insert_with(Default::default).namespace_options =
            mode(Node, Node);
        let node_pod = ctx.run_pod_with(pc).await?;
        let node = links(ctx, &node_pod, "node-pid-ipc", mode(Node, Node)).await;
        let removed = ctx.remove_pod(&node_pod.id).await;
        let node = node?;
        removed?;
        check(a == b, || format!("two POD-mode containers are in different namespaces: {a:?} vs {b:?}"))?;
        check(a.0 != host_pid && a.1 != host_ipc, || format!("POD-mode namespaces {a:?} are the host's ({host_pid}, {host_ipc})"))?;
        check(own.0 != a.0 && own.0 != host_pid, || {
            format!("PID CONTAINER gave {} (pod {}, host {host_pid}): expected its own", own.0, a.0)
        })?;
        check(own.1 == a.1, || format!("PID CONTAINER changed the IPC namespace: {} vs the pod's {}", own.1, a.1))?;
        check(node == (host_pid.clone(), host_ipc.clone()), || {
            format!("PID and IPC NODE gave {node:?}, expected the host's ({host_pid}, {host_ipc})")
        })?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let removed = ctx.remove_pod(&pod.id).await;
    r?;
    removed
}

/// In a pod-level PID namespace, a container's background processes die with its main process
/// (issue #11), as they do with a PID namespace of its own: a second container of the pod sees
/// no `sleep 1234` left once the first has exited.
pub async fn pod_pid_children_die_with_main(ctx: &Ctx) -> Result<()> {
    let pod = ctx.run_pod_with(ctx.shared_pid_pod_config("pidkill", &[])).await?;
    let r = async {
        let watcher = ctx.start_container(&pod, "watcher", &ctx.images.busybox, &["sleep", "100000"]).await?;
        ctx.wait_container_state(&watcher, cri::ContainerState::ContainerRunning, Duration::from_secs(30)).await?;
        let main = ctx.start_container(&pod, "main", &ctx.images.busybox, &["sh", "-c", "sleep 1234 & echo started; sleep 1"]).await?;
        ctx.wait_container_state(&main, cri::ContainerState::ContainerExited, Duration::from_secs(30)).await?;
        let count = "ps | grep -c '[s]leep 1234'";
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let out = ctx.exec(&watcher, &["sh", "-c", count], 10).await?;
            let left = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if left == "0" {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!("{left} `sleep 1234` still running in the pod's PID namespace 5 s after its container exited");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    .await;
    let removed = ctx.remove_pod(&pod.id).await;
    r?;
    removed
}

/// A pod as kubelet sends it by default (PID CONTAINER), which berth runs without an infra
/// process (issue #15): its two containers share the pod's network, IPC and UTS namespaces
/// (none of them the host's) and the pod's hostname, each has a PID namespace of its own, and
/// the pod's IPC and net sysctls are set in them while the host's stay. On berth also, before
/// any container (whose spec would set them again), the pinned files hold the hostname and the
/// sysctls (read with nsenter through them); and: no process mentions the pod's
/// ID while a shared-PID pod's infra does (the control), PodSandboxStatus verbose info says
/// `infraContainer: false` and names the pinned files, a container asking for the pod's PID
/// namespace is refused with InvalidArgument naming `namespace_options.pid`, and the pinned
/// files are gone once the pod is stopped.
pub async fn pod_without_infra(ctx: &Ctx) -> Result<()> {
    let host = |ns: &str| std::fs::read_link(format!("/proc/self/ns/{ns}")).map(|p| p.display().to_string());
    let host_values = || -> Result<Vec<String>> {
        ["kernel/hostname", "kernel/shmmni", "net/ipv4/ip_unprivileged_port_start"]
            .iter()
            .map(|k| {
                std::fs::read_to_string(format!("/proc/sys/{k}"))
                    .map(|v| v.trim().to_string())
                    .with_context(|| format!("reading /proc/sys/{k}"))
            })
            .collect()
    };
    let host_before = host_values()?;
    let mut pc = ctx.pod_config("noinfra", &[]);
    pc.hostname = "noinfra-host".into();
    let l = pc.linux.get_or_insert_with(Default::default);
    l.sysctls.insert("kernel.shmmni".into(), "2345".into());
    l.sysctls.insert("net.ipv4.ip_unprivileged_port_start".into(), "77".into());
    let pod = ctx.run_pod_with(pc).await?;
    let shared = ctx.run_pod_with(ctx.shared_pid_pod_config("infra-control", &[])).await;
    let r = async {
        let shared = shared.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
        if ctx.kind == TargetKind::Berth {
            // Before any container exists (each container's spec carries the hostname and the
            // sysctls again): what the pinned namespaces themselves hold, read through the files.
            let info = super::util::pod_verbose_info(ctx, &pod.id).await?;
            let at = |k: &str| info[k].as_str().map(str::to_string).with_context(|| format!("no {k} in {info}"));
            let (uts, ipc, net) = (at("utsNamespacePath")?, at("ipcNamespacePath")?, at("netNamespacePath")?);
            let enter = |flag: String, file: &str| -> Result<String> {
                let out = std::process::Command::new("nsenter").arg(flag).args(["cat", file]).output().context("nsenter")?;
                check(out.status.success(), || format!("nsenter cat {file}: {}", String::from_utf8_lossy(&out.stderr)))?;
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
            };
            let pinned = [
                enter(format!("--uts={uts}"), "/proc/sys/kernel/hostname")?,
                enter(format!("--ipc={ipc}"), "/proc/sys/kernel/shmmni")?,
                enter(format!("--net={net}"), "/proc/sys/net/ipv4/ip_unprivileged_port_start")?,
            ];
            check(pinned == ["noinfra-host", "2345", "77"], || {
                format!("the pinned namespaces hold hostname, kernel.shmmni, net.ipv4.ip_unprivileged_port_start = {pinned:?}, expected noinfra-host, 2345, 77")
            })?;
        }
        let show = "for n in net ipc uts pid; do readlink /proc/self/ns/$n; done; hostname; \
                    cat /proc/sys/kernel/shmmni /proc/sys/net/ipv4/ip_unprivileged_port_start";
        let mut seen = Vec::new();
        for name in ["a", "b"] {
            // kubelet repeats the pod's namespace options on each container. Without them
            // containerd reads the container's PID mode as POD (the proto default) and joins the
            // sandbox's; berth takes the pod's options.
            let mut cfg = ctx.container_config(name, &ctx.images.busybox, &["sleep", "100000"]);
            cfg.linux.get_or_insert_with(Default::default).security_context.get_or_insert_with(Default::default).namespace_options =
                Some(crate::ctx::kubelet_namespace_options(false));
            let id = ctx.create_with(&pod, cfg).await?;
            ctx.rt().start_container(cri::StartContainerRequest { container_id: id.clone() }).await.context("StartContainer")?;
            ctx.wait_container_state(&id, cri::ContainerState::ContainerRunning, Duration::from_secs(30)).await?;
            let out = ctx.exec(&id, &["sh", "-c", show], 10).await?;
            let lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
            check(lines.len() == 7, || format!("container {name} printed {lines:?} (stderr {:?})", String::from_utf8_lossy(&out.stderr)))?;
            seen.push(lines);
        }
        let (a, b) = (&seen[0], &seen[1]);
        check(a[..3] == b[..3], || format!("the pod's containers differ in net/ipc/uts: {:?} vs {:?}", &a[..3], &b[..3]))?;
        for (i, ns) in ["net", "ipc", "uts", "pid"].iter().enumerate() {
            check(a[i] != host(ns)?, || format!("the pod's {ns} namespace is the host's ({})", a[i]))?;
        }
        check(a[3] != b[3], || format!("PID CONTAINER: both containers are in {}", a[3]))?;
        check(a[4] == "noinfra-host" && b[4] == "noinfra-host", || format!("hostnames {:?} / {:?}, expected noinfra-host", a[4], b[4]))?;
        check(a[5] == "2345" && a[6] == "77", || {
            format!("sysctls kernel.shmmni={} net.ipv4.ip_unprivileged_port_start={}, expected 2345 and 77", a[5], a[6])
        })?;
        let host_after = host_values()?;
        check(host_after == host_before, || format!("the host's hostname and sysctls changed: {host_before:?} -> {host_after:?}"))?;
        if ctx.kind != TargetKind::Berth {
            return Ok(());
        }
        let of_pod = crate::proc::pids_mentioning(&pod.id);
        check(of_pod.is_empty(), || format!("processes of the pod besides its containers: {of_pod:?}"))?;
        check(!crate::proc::pids_mentioning(&shared.id).is_empty(), || {
            "the shared-PID pod has no infra process (the control)".to_string()
        })?;
        let info = super::util::pod_verbose_info(ctx, &pod.id).await?;
        check(info["infraContainer"] == false && info["pid"] == 0, || format!("verbose info {info}"))?;
        let pins: Vec<String> =
            ["ipcNamespacePath", "utsNamespacePath"].iter().filter_map(|k| info[*k].as_str().map(str::to_string)).collect();
        check(pins.len() == 2 && pins.iter().all(|p| std::path::Path::new(p).exists()), || format!("pinned files {pins:?} in {info}"))?;
        let mut cfg = ctx.container_config("shared-pid", &ctx.images.busybox, &["sleep", "1"]);
        cfg.linux.get_or_insert_with(Default::default).security_context.get_or_insert_with(Default::default).namespace_options =
            Some(crate::ctx::kubelet_namespace_options(true));
        match ctx.create_request(&pod, cfg).await {
            Err(s) if s.code() == tonic::Code::InvalidArgument && s.message().contains("namespace_options.pid") => {}
            other => anyhow::bail!("a container asking for the PID namespace of a pod without one: {other:?}"),
        }
        ctx.rt().stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.id.clone() }).await.context("StopPodSandbox")?;
        let left: Vec<&String> = pins.iter().filter(|p| std::path::Path::new(p).exists()).collect();
        check(left.is_empty(), || format!("pinned files left after StopPodSandbox: {left:?}"))
    }
    .await;
    let removed = ctx.remove_pod(&pod.id).await;
    if let Ok(s) = &shared {
        ctx.remove_pod(&s.id).await?;
    }
    r?;
    removed
}
