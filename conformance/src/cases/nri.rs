//! NRI plugins (issue #14): a plugin's CreateContainer adjustment reaches the container (env,
//! a bind mount, the memory limit), a plugin that hangs is dropped after the request timeout
//! and the runtime goes on, and a late plugin is synchronized with what exists. The plugin is
//! the suite's own ([`crate::nri_plugin`]), connected to the socket the suite's berth config
//! names ([`crate::daemon::nri_socket`]); a target without that socket is skipped (Debian's
//! containerd 1.6 has no NRI).
//!
//! Each plugin acts only on containers carrying this case's annotation, and is disconnected at
//! the end of its case.

use super::util::check;
use crate::ctx::{skip, Ctx, Pod};
use crate::nri_plugin::{Behaviour, TestPlugin};
use anyhow::Result;
use berth::cri::v1 as cri;
use berth::nri::api;
use std::path::PathBuf;
use std::time::Duration;

const ANNOTATION: &str = "conformance.berth.dev/nri";

/// The target's NRI socket, or a skip.
fn socket(ctx: &Ctx) -> Result<PathBuf> {
    let s = crate::daemon::nri_socket(&ctx.tmp);
    if !s.exists() {
        return skip(&format!("the target serves no NRI socket at {} (containerd 1.6 has no NRI)", s.display()));
    }
    Ok(s)
}

fn annotated(ctx: &Ctx, name: &str, value: &str) -> cri::ContainerConfig {
    let mut c = ctx.container_config(name, &ctx.images.busybox, &["sleep", "1000"]);
    c.annotations.insert(ANNOTATION.into(), value.into());
    c
}

async fn start(ctx: &Ctx, pod: &Pod, config: cri::ContainerConfig) -> Result<String> {
    let id = ctx.create_with(pod, config).await?;
    ctx.rt().start_container(cri::StartContainerRequest { container_id: id.clone() }).await?;
    Ok(id)
}

/// A plugin adjusts env (one variable set, one the image config sets removed), adds a
/// read-only bind mount and sets a 96 MiB memory limit: the running container sees all three,
/// and the plugin saw CreateContainer and StartContainer for it by name.
pub async fn adjustments_reach_the_container(ctx: &Ctx) -> Result<()> {
    let socket = socket(ctx)?;
    let u = ctx.unique();
    let dir = ctx.tmp.join(format!("nri-mount-{u}"));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("f"), format!("mounted by NRI {u}\n"))?;
    let limit: i64 = 96 << 20;
    let adjust = api::ContainerAdjustment {
        env: vec![
            api::KeyValue { key: "NRI_CASE".into(), value: u.clone() },
            api::KeyValue { key: "-CASE_UNSET".into(), value: String::new() },
        ],
        mounts: vec![api::Mount {
            destination: "/nri".into(),
            r#type: "bind".into(),
            source: dir.display().to_string(),
            options: vec!["rbind".into(), "ro".into()],
        }],
        linux: Some(api::LinuxContainerAdjustment {
            resources: Some(api::LinuxResources {
                memory: Some(api::LinuxMemory { limit: Some(api::OptionalInt64 { value: limit }), ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let plugin = TestPlugin::connect(
        &socket,
        "conformance-adjust",
        "50",
        Behaviour { select: (ANNOTATION.into(), u.clone()), adjust: Some(adjust), hang: false },
    )
    .await?;
    let pod = ctx.run_pod("nri-adjust").await?;
    let res = async {
        ctx.ensure_image(&ctx.images.busybox).await?;
        let mut config = annotated(ctx, "adjusted", &u);
        config.envs.push(cri::KeyValue { key: "CASE_UNSET".into(), value: b"kept".to_vec() });
        let id = start(ctx, &pod, config).await?;
        let script = "echo \"env=$NRI_CASE unset=${CASE_UNSET:-gone}\"; cat /nri/f; \
                      cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes";
        let out = ctx.exec(&id, &["sh", "-c", script], 10).await?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let want = [format!("env={u} unset=gone"), format!("mounted by NRI {u}"), limit.to_string()];
        check(text.lines().map(str::trim).eq(want.iter().map(String::as_str)), || {
            format!(
                "the container does not show the plugin's adjustments: got {text:?} (stderr {:?}), expected {want:?}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        let ro = ctx.exec(&id, &["sh", "-c", "touch /nri/x 2>/dev/null && echo writable || echo read-only"], 10).await?;
        check(String::from_utf8_lossy(&ro.stdout).trim() == "read-only", || "the plugin's mount is not read-only".into())?;
        let calls = plugin.calls();
        for want in ["CreateContainer", "StartContainer"] {
            check(calls.iter().any(|(m, n)| m == want && n == "adjusted"), || {
                format!("the plugin got no {want} for the container: {calls:?}")
            })?;
        }
        Ok(())
    }
    .await;
    ctx.remove_pod(&pod.id).await?;
    drop(plugin);
    let _ = std::fs::remove_dir_all(&dir);
    res
}

/// A plugin that never answers CreateContainer is dropped once the request timeout passes: the
/// CreateContainer succeeds without it, the plugin's connection is closed, the runtime
/// answers meanwhile, and a plugin connecting afterwards is synchronized with the pod and the
/// container.
pub async fn a_hung_plugin_is_dropped(ctx: &Ctx) -> Result<()> {
    let socket = socket(ctx)?;
    let u = ctx.unique();
    let hung = TestPlugin::connect(
        &socket,
        "conformance-hang",
        "40",
        Behaviour { select: (ANNOTATION.into(), u.clone()), adjust: None, hang: true },
    )
    .await?;
    let pod = ctx.run_pod("nri-hang").await?;
    let res = async {
        ctx.ensure_image(&ctx.images.busybox).await?;
        let create = ctx.create_with(&pod, annotated(ctx, "waited", &u));
        let version = async {
            // While the create waits on the plugin, the runtime still answers.
            tokio::time::sleep(Duration::from_millis(300)).await;
            ctx.rt().version(cri::VersionRequest::default()).await
        };
        let (created, version) = tokio::join!(create, version);
        version?;
        let id = created?;
        check(hung.closed_within(Duration::from_secs(10)).await, || "the runtime kept the connection of a plugin that timed out".into())?;
        let status = ctx.container_status(&id).await?;
        check(status.state == cri::ContainerState::ContainerCreated as i32, || {
            format!("container state {} after the plugin was dropped", status.state)
        })?;
        let late = TestPlugin::connect(&socket, "conformance-late", "60", Behaviour::default()).await?;
        let synced = late.synced().unwrap_or_default();
        check(synced.pods.iter().any(|p| p.id == pod.id), || format!("Synchronize lacks pod {}", pod.id))?;
        check(synced.containers.iter().any(|c| c.id == id && c.name == "waited"), || format!("Synchronize lacks container {id}"))?;
        Ok(())
    }
    .await;
    ctx.remove_pod(&pod.id).await?;
    res
}
