//! Namespace modes (issue #5): a container's PID namespace POD (shared with the pod), CONTAINER
//! (its own) and NODE (the host's), and IPC POD and NODE, compared by the namespace links
//! (`readlink /proc/self/ns/{pid,ipc}`) inside each container and in this test process, which
//! runs in the host's namespaces.

use super::util::{check, read_log};
use super::Case;
use crate::ctx::{Ctx, Pod};
use anyhow::{Context, Result};
use berth::cri::v1 as cri;
use std::time::Duration;

/// The cases of this module, in run order.
pub fn cases() -> Vec<Case> {
    vec![
        case!("namespaces_pid_ipc_modes", pid_ipc_modes),
        case!("namespaces_pod_pid_children_die_with_main", pod_pid_children_die_with_main),
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
    let pod = ctx.run_pod("nsmodes").await?;
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
    let pod = ctx.run_pod("pidkill").await?;
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
