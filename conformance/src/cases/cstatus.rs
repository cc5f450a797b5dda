//! What a container's config turns into: ContainerStatus fields, CRI mounts, TTY logs and
//! memory limits.

use super::util::{check, read_log};
use crate::ctx::{Ctx, Pod};
use crate::daemon::TargetKind;
use anyhow::{Context, Result};
use berth::cri::v1 as cri;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Labels, annotations, log_path, image, image_ref and a read-only CRI mount come back in
/// ContainerStatus (and labels/annotations in ListContainers); the mount is read-only inside and
/// shows the file the test wrote on the host.
pub async fn container_status_fields(ctx: &Ctx) -> Result<()> {
    let dir = ctx.tmp.join("mounts").join(format!("ro-{}", ctx.unique()));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::write(dir.join("hello.txt"), "from-the-host\n").with_context(|| format!("write {}/hello.txt", dir.display()))?;
    let pod = ctx.run_pod("cstatus").await?;
    let res = status_checks(ctx, &pod, &dir).await;
    let removed = ctx.remove_pod(&pod.id).await;
    let _ = std::fs::remove_dir_all(&dir);
    res.and(removed)
}

async fn status_checks(ctx: &Ctx, pod: &Pod, dir: &Path) -> Result<()> {
    let image = ctx.images.busybox.clone();
    let mut cfg = ctx.container_config("fields", &image, &["sleep", "1000"]);
    cfg.labels.insert("example.com/tier".into(), "backend".into());
    cfg.annotations.insert("example.com/note".into(), "kept verbatim: a=b,c".into());
    cfg.mounts.push(cri::Mount {
        container_path: "/mnt".into(),
        host_path: dir.display().to_string(),
        readonly: true,
        ..Default::default()
    });
    let (labels, annotations, log_rel) = (cfg.labels.clone(), cfg.annotations.clone(), cfg.log_path.clone());
    let id = ctx.create_with(pod, cfg).await?;
    ctx.rt().start_container(cri::StartContainerRequest { container_id: id.clone() }).await.context("StartContainer fields")?;
    let st = ctx.wait_container_state(&id, cri::ContainerState::ContainerRunning, Duration::from_secs(30)).await?;

    check(st.labels == labels, || format!("ContainerStatus labels {:?}, expected {labels:?}", st.labels))?;
    check(st.annotations == annotations, || format!("ContainerStatus annotations {:?}, expected {annotations:?}", st.annotations))?;
    let want_log = PathBuf::from(&pod.config.log_directory).join(&log_rel);
    check(Path::new(&st.log_path) == want_log, || format!("log_path {:?}, expected {}", st.log_path, want_log.display()))?;
    let got_image = st.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
    eprintln!(
        "note container_status_fields: image.image {got_image:?} (asked {image:?}), image_ref {:?}, image_id {:?}",
        st.image_ref, st.image_id
    );
    if ctx.kind == TargetKind::Berth || got_image == image {
        check(got_image == image, || format!("status image.image {got_image:?}, expected what was asked: {image:?}"))?;
    } else {
        // containerd 1.6 answers the image's first repo tag, which may be another tag of the same image.
        let id_of = |r: &str| {
            let r = r.to_string();
            async move {
                ctx.img()
                    .image_status(cri::ImageStatusRequest { image: Some(crate::ctx::spec(&r)), verbose: false })
                    .await
                    .map(|x| x.into_inner().image.map(|i| i.id))
            }
        };
        let (a, b) = (
            id_of(&got_image).await.context("ImageStatus of status image")?,
            id_of(&image).await.context("ImageStatus of the asked image")?,
        );
        check(a.is_some() && a == b, || format!("status image.image {got_image:?} (id {a:?}) is not the asked {image:?} (id {b:?})"))?;
    }
    check(!st.image_ref.is_empty(), || "status image_ref is empty".into())?;
    let m = st.mounts.iter().find(|m| m.container_path == "/mnt").with_context(|| format!("status mounts {:?} lack /mnt", st.mounts))?;
    check(m.host_path == dir.display().to_string() && m.readonly, || {
        format!("status mount {m:?}, expected host_path {} readonly", dir.display())
    })?;

    let listed = ctx
        .rt()
        .list_containers(cri::ListContainersRequest { filter: Some(cri::ContainerFilter { id: id.clone(), ..Default::default() }) })
        .await
        .context("ListContainers by id")?
        .into_inner()
        .containers;
    let c = listed.first().with_context(|| format!("ListContainers id={id}: nothing listed"))?;
    check(c.labels == labels, || format!("ListContainers labels {:?}, expected {labels:?}", c.labels))?;
    check(c.annotations == annotations, || format!("ListContainers annotations {:?}, expected {annotations:?}", c.annotations))?;

    let r = ctx.exec(&id, &["cat", "/mnt/hello.txt"], 10).await?;
    check(r.exit_code == 0 && r.stdout == b"from-the-host\n", || {
        format!(
            "`cat /mnt/hello.txt` exited {} stdout {:?} stderr {:?}",
            r.exit_code,
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        )
    })?;
    let r = ctx.exec(&id, &["touch", "/mnt/x"], 10).await?;
    check(r.exit_code != 0, || "`touch /mnt/x` succeeded on a readonly mount".into())?;
    check(!dir.join("x").exists(), || format!("{}/x exists on the host after touch in a readonly mount", dir.display()))
}

/// tty=true: `echo hello-tty` gives the CRI log line `stdout F hello-tty` (no trailing `\r`
/// from the terminal's CRLF).
pub async fn tty_container_logs(ctx: &Ctx) -> Result<()> {
    let pod = ctx.run_pod("tty").await?;
    let res = async {
        let mut cfg = ctx.container_config("tty", &ctx.images.busybox, &["echo", "hello-tty"]);
        cfg.tty = true;
        let id = ctx.create_with(&pod, cfg).await?;
        ctx.rt().start_container(cri::StartContainerRequest { container_id: id.clone() }).await.context("StartContainer tty")?;
        let st = ctx.wait_container_state(&id, cri::ContainerState::ContainerExited, Duration::from_secs(60)).await?;
        check(st.exit_code == 0, || format!("`echo hello-tty` exited {}", st.exit_code))?;
        let lines = read_log(&pod, &st, 1).await?;
        eprintln!(
            "note tty_container_logs: log lines {:?}",
            lines.iter().map(|l| format!("{} {} {:?}", l.stream, l.tag, l.text)).collect::<Vec<_>>()
        );
        check(lines.iter().any(|l| l.stream == "stdout" && l.tag == "F" && l.text == "hello-tty"), || {
            format!("log lacks `stdout F hello-tty`: {lines:?}")
        })
    }
    .await;
    ctx.remove_pod(&pod.id).await?;
    res
}

/// linux.resources.memory_limit_in_bytes = 64 MiB: the container's memory cgroup says 67108864
/// (cgroup v1 `memory.limit_in_bytes`, else cgroup v2 `memory.max`).
pub async fn memory_limit_applied(ctx: &Ctx) -> Result<()> {
    const LIMIT: i64 = 64 * 1024 * 1024;
    let pod = ctx.run_pod("memlimit").await?;
    let res = async {
        let mut cfg = ctx.container_config("memlimit", &ctx.images.busybox, &["sleep", "1000"]);
        cfg.linux.get_or_insert_with(Default::default).resources = Some(cri::LinuxContainerResources { memory_limit_in_bytes: LIMIT, ..Default::default() });
        let id = ctx.create_with(&pod, cfg).await?;
        ctx.rt().start_container(cri::StartContainerRequest { container_id: id.clone() }).await.context("StartContainer memlimit")?;
        ctx.wait_container_state(&id, cri::ContainerState::ContainerRunning, Duration::from_secs(30)).await?;
        let script = "if [ -e /sys/fs/cgroup/memory/memory.limit_in_bytes ]; then cat /sys/fs/cgroup/memory/memory.limit_in_bytes; else cat /sys/fs/cgroup/memory.max; fi";
        let r = ctx.exec(&id, &["sh", "-c", script], 10).await?;
        let out = String::from_utf8_lossy(&r.stdout).trim().to_string();
        check(r.exit_code == 0, || format!("reading the memory limit exited {}: {:?}", r.exit_code, String::from_utf8_lossy(&r.stderr)))?;
        check(out == LIMIT.to_string(), || format!("memory limit inside the container {out:?}, expected {LIMIT}"))
    }
    .await;
    ctx.remove_pod(&pod.id).await?;
    res
}
