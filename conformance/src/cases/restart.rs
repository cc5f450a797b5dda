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
    check(st.state == cri::ContainerState::ContainerRunning as i32, || {
        format!("after restart `long` is {}, expected RUNNING", state_name(st.state))
    })?;
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

/// A daemon killed (SIGKILL) right after StartContainer or CreateContainer: after the restart a
/// started container is RUNNING with a start time, a created one CREATED and startable, one that
/// ended while the daemon was down EXITED with its exit code, and all stop and remove (berth stores a create's PIDs and a start without an fsync of their own and
/// rebuilds them from the monitor's pid file and the runtime at restart, issue #15).
pub async fn killed_keeps_containers(ctx: &Ctx) -> Result<()> {
    if !ctx.can_restart() {
        return skip("the harness does not own the daemon (BERTH_ENDPOINT)");
    }
    let pod = ctx.run_pod("killed").await?;
    let crash = |what: &'static str| async move {
        ctx.kill_daemon().await?;
        ctx.start_daemon().await.with_context(|| format!("start the daemon again after SIGKILL {what}"))
    };
    let running = |id: String, what: &'static str| async move {
        let st = ctx.container_status(&id).await?;
        check(st.state == cri::ContainerState::ContainerRunning as i32 && st.started_at > 0 && st.started_at >= st.created_at, || {
            format!(
                "after SIGKILL {what} and a restart, container {id} is {} (started_at {}, created_at {}), expected RUNNING with a start time",
                state_name(st.state),
                st.started_at,
                st.created_at
            )
        })
    };
    let created = |id: String, what: &'static str| async move {
        let st = ctx.container_status(&id).await?;
        check(st.state == cri::ContainerState::ContainerCreated as i32 && st.started_at == 0, || {
            format!(
                "after SIGKILL {what} and a restart, container {id} is {} (started_at {}), expected CREATED",
                state_name(st.state),
                st.started_at
            )
        })
    };
    let start = |id: String| async move {
        ctx.rt()
            .start_container(cri::StartContainerRequest { container_id: id.clone() })
            .await
            .with_context(|| format!("StartContainer {id} after a restart"))
    };
    let config = |name: &str| ctx.container_config(name, &ctx.images.busybox, &["sleep", "1000"]);

    let a = ctx.create_with(&pod, config("a")).await?;
    let b = ctx.start_container(&pod, "b", &ctx.images.busybox, &["sleep", "1000"]).await?;
    crash("after StartContainer").await?;
    running(b.clone(), "after StartContainer").await?;
    created(a.clone(), "after StartContainer").await?;

    start(a.clone()).await?;
    crash("after a StartContainer following a restart").await?;
    running(a.clone(), "after a StartContainer following a restart").await?;

    let c = ctx.create_with(&pod, config("c")).await?;
    crash("after CreateContainer").await?;
    created(c.clone(), "after CreateContainer").await?;
    start(c.clone()).await?;
    running(c.clone(), "after CreateContainer, then StartContainer").await?;

    for id in [&a, &b, &c] {
        let r = ctx.exec(id, &["true"], 10).await?;
        check(r.exit_code == 0, || format!("ExecSync in {id} after the restarts exited {}", r.exit_code))?;
    }

    // Killed right after a start, and the container ends while the daemon is down.
    let e = ctx.start_container(&pod, "e", &ctx.images.busybox, &["sh", "-c", "sleep 2; exit 7"]).await?;
    ctx.kill_daemon().await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    ctx.start_daemon().await.context("start the daemon again after SIGKILL and downtime")?;
    let st = ctx.wait_container_state(&e, cri::ContainerState::ContainerExited, Duration::from_secs(10)).await?;
    check(st.exit_code == 7, || {
        format!("a container that exited while the killed daemon was down: exit_code {} (reason {:?}), expected 7", st.exit_code, st.reason)
    })?;
    ctx.remove_pod(&pod.id).await
}

/// Upgrade: an older berth (`CRI_UPGRADE_FROM=<its binary>`) makes a pod and a running
/// container with env and labels and stops; this berth starts on the same roots and serves them
/// (statuses, the env inside, ExecSync, stop, remove). Its records were written by the older
/// bindings (cri-api v0.32 before issue #9), so this is what "old records still load" means.
pub async fn upgrade_keeps_records(ctx: &Ctx) -> Result<()> {
    let Some(old) = std::env::var_os("CRI_UPGRADE_FROM") else {
        return skip(
            "set CRI_UPGRADE_FROM to an older berth binary to test an upgrade (not BERTH_*: berth reads every BERTH_* variable as config)",
        );
    };
    if ctx.kind != crate::daemon::TargetKind::Berth {
        return skip("an upgrade of berth");
    }
    ctx.stop_daemon().await?;
    let current = ctx.start_daemon_with(old.into()).await.context("starting the older berth")?;
    let made = async {
        let pod = ctx.run_pod("upgrade").await?;
        let mut config = ctx.container_config("long", &ctx.images.busybox, &["sleep", "1000"]);
        config.envs.push(cri::KeyValue { key: "UPGRADE".into(), value: b"from old".to_vec() });
        config.labels.insert("upgrade".into(), "yes".into());
        let id = ctx.create_with(&pod, config).await?;
        ctx.rt().start_container(cri::StartContainerRequest { container_id: id.clone() }).await?;
        ctx.wait_container_state(&id, cri::ContainerState::ContainerRunning, Duration::from_secs(30)).await?;
        Ok::<_, anyhow::Error>((pod, id))
    }
    .await;
    ctx.stop_daemon().await?;
    ctx.start_daemon_with(current).await.context("starting this berth on the older one's state")?;
    let (pod, id) = made?;
    let st = ctx.container_status(&id).await?;
    check(st.state == cri::ContainerState::ContainerRunning as i32 && st.labels.get("upgrade").map(String::as_str) == Some("yes"), || {
        format!("after the upgrade: {} labels {:?}", state_name(st.state), st.labels)
    })?;
    let r = ctx.exec(&id, &["sh", "-c", "echo $UPGRADE"], 10).await?;
    check(r.stdout == b"from old\n", || format!("env after the upgrade: {:?}", String::from_utf8_lossy(&r.stdout)))?;
    let ps =
        ctx.rt().pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: pod.id.clone(), verbose: false }).await?.into_inner();
    check(ps.status.is_some_and(|s| s.state == cri::PodSandboxState::SandboxReady as i32), || {
        "the pod is not READY after the upgrade".into()
    })?;
    ctx.remove_pod(&pod.id).await
}

/// Started as a `Type=notify` unit would start it (`NOTIFY_SOCKET` set), berth sends `READY=1`
/// once its CRI socket answers, and no child inherits the variable: runc would take it as the
/// container's notify socket and make StartContainer wait for a READY from inside the container.
/// A pod and a container run to completion under it; the container's monitor has no
/// `NOTIFY_SOCKET` in its environment (issue #10 item 4).
pub async fn sd_notify_ready(ctx: &Ctx) -> Result<()> {
    if ctx.kind != crate::daemon::TargetKind::Berth {
        return skip(
            "sd_notify is berth's start-up protocol here (containerd's unit is Type=notify too, but the harness starts it directly)",
        );
    }
    let sock_path = ctx.tmp.join("notify.sock");
    let _ = std::fs::remove_file(&sock_path);
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path)?;
    sock.set_read_timeout(Some(Duration::from_secs(30)))?;
    let env = vec![("NOTIFY_SOCKET".to_string(), sock_path.display().to_string())];
    let res = async {
        ctx.restart_daemon_with_env(env).await.context("restart with NOTIFY_SOCKET")?;
        let msg = tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 256];
            sock.recv(&mut buf).map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
        })
        .await?
        .context("no datagram on NOTIFY_SOCKET within 30 s")?;
        check(msg.lines().any(|l| l == "READY=1"), || format!("the notify datagram {msg:?} has no READY=1"))?;
        let pod = ctx.run_pod("sdnotify").await?;
        let r = async {
            let id = ctx.start_container(&pod, "sleeper", &ctx.images.busybox, &["sleep", "30"]).await?;
            ctx.wait_container_state(&id, cri::ContainerState::ContainerRunning, Duration::from_secs(30)).await?;
            let monitors = crate::proc::pids_mentioning(&id);
            check(!monitors.is_empty(), || format!("no process names container {id}"))?;
            for (pid, cmd) in monitors {
                let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                check(!environ.split(|b| *b == 0).any(|kv| kv.starts_with(b"NOTIFY_SOCKET=")), || {
                    format!("process {pid} ({cmd}) of container {id} inherited NOTIFY_SOCKET")
                })?;
            }
            ctx.rt().stop_container(cri::StopContainerRequest { container_id: id.clone(), timeout: 0 }).await?;
            let st = ctx.container_status(&id).await?;
            check(st.state == cri::ContainerState::ContainerExited as i32, || format!("after StopContainer: {}", state_name(st.state)))
        }
        .await;
        ctx.remove_pod(&pod.id).await?;
        r
    }
    .await;
    let back = ctx.restart_daemon_with_env(Vec::new()).await.context("restart without NOTIFY_SOCKET");
    let _ = std::fs::remove_file(&sock_path);
    res?;
    back
}

/// berth started in a chroot (a bind mount of `/`, entered with chroot(1) in a private mount
/// namespace) refuses to serve: there `runc exec` would run in the mount namespace's root,
/// outside the container, and user namespaces are refused by the kernel (berth::chroot). It
/// exits at once with a message saying so and naming pivot_root, and makes no CRI socket.
pub async fn refuses_chroot(ctx: &Ctx) -> Result<()> {
    if ctx.kind != crate::daemon::TargetKind::Berth {
        return skip("berth's own start-up check");
    }
    let dir = ctx.tmp.join("chroot-start");
    std::fs::create_dir_all(&dir)?;
    let (socket, root, run_root) = (dir.join("berth.sock"), dir.join("root"), dir.join("run"));
    let bin = crate::daemon::berth_binary();
    // The chroot is a fresh rbind of / in a private mount namespace; the script unmounts and
    // removes it whatever berth does, and a berth that serves is killed after 20 s.
    let script =
        r#"d=$(mktemp -d) && mount --rbind / "$d" && { timeout -s KILL 20 chroot "$d" "$@"; s=$?; umount -R "$d"; rmdir "$d"; exit $s; }"#;
    let out = tokio::task::spawn_blocking({
        let (socket, root, run_root, config) = (socket.clone(), root.clone(), run_root.clone(), ctx.tmp.join("berth.toml"));
        move || {
            std::process::Command::new("unshare")
                .args(["--mount", "--propagation", "private", "sh", "-c", script, "sh"])
                .arg(&bin)
                .arg("serve")
                .arg("--config")
                .arg(&config)
                .arg("--listen")
                .arg(&socket)
                .arg("--root")
                .arg(&root)
                .arg("--run-root")
                .arg(&run_root)
                .stdin(std::process::Stdio::null())
                .output()
        }
    })
    .await?
    .context("run berth serve in a chroot")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let res = check(
        !out.status.success() && out.status.code() != Some(137) && stderr.contains("running in a chroot") && stderr.contains("pivot_root"),
        || format!("berth serve in a chroot: {} (137: it served until killed), stderr {:?}", out.status, stderr.trim()),
    )
    .and_then(|_| check(!socket.exists(), || format!("berth in a chroot left a CRI socket at {}", socket.display())));
    let _ = std::fs::remove_dir_all(&dir);
    res
}

/// Pods without an infra process across a restart (berth, issue #15): a pod whose pinned
/// namespaces survive stays READY, keeps its running container, and takes a new container
/// into the same network and UTS namespaces; a pod whose pins are gone when berth starts (as
/// after a reboot: they were unmounted while it was down) is NOTREADY, and both stop and
/// remove cleanly; a pin file no pod names, left while berth was down, is gone after the start.
pub async fn pod_without_infra(ctx: &Ctx) -> Result<()> {
    if !ctx.can_restart() {
        return skip("the harness does not own the daemon (BERTH_ENDPOINT)");
    }
    if ctx.kind != crate::daemon::TargetKind::Berth {
        return skip("berth's pods without an infra process (pinned namespace files)");
    }
    let kept = ctx.run_pod("restart-pinned").await?;
    let lost = ctx.run_pod("restart-unpinned").await?;
    let long = ctx.start_container(&kept, "long", &ctx.images.busybox, &["sleep", "1000"]).await?;
    ctx.wait_container_state(&long, cri::ContainerState::ContainerRunning, Duration::from_secs(30)).await?;
    let info = super::util::pod_verbose_info(ctx, &lost.id).await?;
    let pins: Vec<String> =
        ["ipcNamespacePath", "utsNamespacePath", "netNamespacePath"].iter().filter_map(|k| info[*k].as_str().map(str::to_string)).collect();
    check(pins.len() == 3, || format!("pinned files of {}: {info}", lost.id))?;
    ctx.stop_daemon().await?;
    for p in &pins {
        let st = std::process::Command::new("umount").arg(p).status()?;
        check(st.success(), || format!("umount {p}: {st}"))?;
    }
    // A pin no record names (a RunPodSandbox whose undo could not unpin): swept at start.
    let pin_dir = std::path::Path::new(&pins[0]).parent().context("pin dir")?.to_path_buf();
    let orphan = pin_dir.join("ipc-0000deadbeef0000");
    std::fs::write(&orphan, b"")?;
    let st = std::process::Command::new("mount").args(["--bind", "/proc/self/ns/ipc"]).arg(&orphan).status()?;
    check(st.success(), || format!("bind-mounting an orphan pin: {st}"))?;
    ctx.start_daemon().await.context("start the daemon again")?;
    check(!orphan.exists(), || format!("orphan pin {} still there after the restart", orphan.display()))?;
    let state = |id: String| async move {
        let r = ctx.rt().pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: id, verbose: false }).await?;
        Ok::<i32, anyhow::Error>(r.into_inner().status.map(|s| s.state).unwrap_or(-1))
    };
    check(state(kept.id.clone()).await? == cri::PodSandboxState::SandboxReady as i32, || {
        "the pinned pod is not READY after restart".into()
    })?;
    check(state(lost.id.clone()).await? == cri::PodSandboxState::SandboxNotready as i32, || {
        "the pod whose pins were gone at restart is not NOTREADY".into()
    })?;
    let late = ctx.start_container(&kept, "late", &ctx.images.busybox, &["sleep", "1000"]).await?;
    ctx.wait_container_state(&late, cri::ContainerState::ContainerRunning, Duration::from_secs(30)).await?;
    let links = |id: String| async move {
        let out = ctx.exec(&id, &["sh", "-c", "for n in net uts ipc; do readlink /proc/self/ns/$n; done"], 10).await?;
        Ok::<String, anyhow::Error>(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (a, b) = (links(long.clone()).await?, links(late.clone()).await?);
    check(a == b && a.lines().count() == 3, || format!("namespaces before the restart {a:?}, after {b:?}"))?;
    ctx.remove_pod(&lost.id).await?;
    ctx.remove_pod(&kept.id).await
}
