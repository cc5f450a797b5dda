//! NRI plugins (issue #14): a plugin's CreateContainer adjustment reaches the container (env,
//! a bind mount, the memory limit), its update of another container reaches that one, a
//! plugin that hangs is dropped after the request timeout and the runtime goes on, a late
//! plugin is synchronized with what exists, and a plugin the runtime launches from its plugin
//! directory runs with its configuration. The plugin is
//! the suite's own ([`crate::nri_plugin`]), connected to the socket the suite's berth config
//! names ([`crate::daemon::nri_socket`]); a target without that socket is skipped (Debian's
//! containerd 1.6 has no NRI).
//!
//! Each plugin acts only on containers carrying this case's annotation, and is disconnected at
//! the end of its case. A plugin berth launches from its plugin directory is the suite's
//! `nri-test-plugin` program.

use super::util::check;
use crate::ctx::{skip, Ctx, Pod};
use crate::daemon::TargetKind;
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

/// A plugin adjusts env (one variable set, one the container config sets removed), adds a
/// read-only bind mount, sets a 96 MiB memory limit and adds a device (the null device under
/// another name): the running container sees all four,
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
            // The null device again, under another name: writable only if the device cgroup
            // allows it too.
            devices: vec![api::LinuxDevice {
                path: "/dev/nri-null".into(),
                r#type: "c".into(),
                major: 1,
                minor: 3,
                file_mode: Some(api::OptionalFileMode { value: 0o666 }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let plugin = TestPlugin::connect(
        &socket,
        "conformance-adjust",
        "50",
        Behaviour { select: (ANNOTATION.into(), u.clone()), adjust: Some(adjust), ..Default::default() },
    )
    .await?;
    let pod = ctx.run_pod("nri-adjust").await?;
    let res = async {
        ctx.ensure_image(&ctx.images.busybox).await?;
        let mut config = annotated(ctx, "adjusted", &u);
        config.envs.push(cri::KeyValue { key: "CASE_UNSET".into(), value: b"kept".to_vec() });
        let id = start(ctx, &pod, config).await?;
        let script = "echo \"env=$NRI_CASE unset=${CASE_UNSET:-gone}\"; cat /nri/f; \
                      cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes; \
                      echo x > /dev/nri-null && echo wrote /dev/nri-null";
        let out = ctx.exec(&id, &["sh", "-c", script], 10).await?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let want = [format!("env={u} unset=gone"), format!("mounted by NRI {u}"), limit.to_string(), "wrote /dev/nri-null".to_string()];
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
        Behaviour { select: (ANNOTATION.into(), u.clone()), hang: true, ..Default::default() },
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

/// A plugin in berth's plugin directory (`[nri] plugin_dir`, `<index>-<name>`) is launched
/// when berth starts, talks over the socketpair it is given as fd 3, gets its configuration
/// file's text in Configure, and adjusts containers like a connected plugin; once its file is
/// gone and berth restarts, it is gone too (berth only: the suite configures no plugin
/// directory for containerd).
pub async fn launched_plugin_runs_with_its_config(ctx: &Ctx) -> Result<()> {
    if ctx.kind != TargetKind::Berth || !ctx.can_restart() {
        return skip("the suite configures an NRI plugin directory for the berth it starts only");
    }
    let program = crate::daemon::berth_binary().with_file_name("nri-test-plugin");
    anyhow::ensure!(program.exists(), "{} is missing: build it with `cargo build --workspace --bins`", program.display());
    let u = ctx.unique();
    let (dir, conf) = (ctx.tmp.join("nri-plugins"), ctx.tmp.join("nri-conf.d"));
    std::fs::create_dir_all(&dir)?;
    std::fs::create_dir_all(&conf)?;
    let installed = dir.join("30-launched");
    std::fs::copy(&program, &installed)?;
    std::fs::write(conf.join("launched.conf"), format!("config-{u}\n"))?;
    let res = async {
        ctx.restart_daemon().await?;
        let mut admitted = false;
        for _ in 0..100 {
            if ctx.daemon_log_tail(400).await.lines().any(|l| l.contains("NRI: plugin synchronized") && l.contains("30-launched")) {
                admitted = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        check(admitted, || format!("berth did not admit the plugin it launched from {} within 10s", installed.display()))?;
        let pod = ctx.run_pod("nri-launched").await?;
        let out = async {
            ctx.ensure_image(&ctx.images.busybox).await?;
            let mut config = ctx.container_config("launched", &ctx.images.busybox, &["sleep", "1000"]);
            config.annotations.insert("conformance.berth.dev/nri-launched".into(), "yes".into());
            let id = start(ctx, &pod, config).await?;
            ctx.exec(&id, &["sh", "-c", "echo \"$NRI_LAUNCHED_CONFIG\""], 10).await
        }
        .await;
        ctx.remove_pod(&pod.id).await?;
        let got = String::from_utf8_lossy(&out?.stdout).trim().to_string();
        check(got == format!("config-{u}"), || {
            format!("the launched plugin's adjustment: NRI_LAUNCHED_CONFIG={got:?}, expected \"config-{u}\"")
        })
    }
    .await;
    let _ = std::fs::remove_file(&installed);
    let _ = std::fs::remove_file(conf.join("launched.conf"));
    ctx.restart_daemon().await?;
    res?;
    // The plugin ends with the daemon that launched it (its connection closes).
    let mut gone = false;
    for _ in 0..50 {
        gone = crate::proc::pids_mentioning(&installed.display().to_string()).is_empty();
        if gone {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check(gone, || format!("{} still runs after its daemon restarted without it", installed.display()))
}

/// A plugin's CreateContainer reply updates another, running container (a new memory limit,
/// as a resource policy moves limits around): the runtime applies it to that container's
/// cgroup and ContainerStatus shows it.
pub async fn updates_reach_other_containers(ctx: &Ctx) -> Result<()> {
    let socket = socket(ctx)?;
    let u = ctx.unique();
    let pod = ctx.run_pod("nri-update").await?;
    let res = async {
        ctx.ensure_image(&ctx.images.busybox).await?;
        let first = start(ctx, &pod, annotated(ctx, "first", &format!("{u}-first"))).await?;
        let limit: i64 = 80 << 20;
        let update = api::ContainerUpdate {
            container_id: first.clone(),
            linux: Some(api::LinuxContainerUpdate {
                resources: Some(api::LinuxResources {
                    memory: Some(api::LinuxMemory { limit: Some(api::OptionalInt64 { value: limit }), ..Default::default() }),
                    ..Default::default()
                }),
            }),
            ignore_failure: false,
        };
        let plugin = TestPlugin::connect(
            &socket,
            "conformance-update",
            "50",
            Behaviour { select: (ANNOTATION.into(), u.clone()), updates: vec![update], ..Default::default() },
        )
        .await?;
        start(ctx, &pod, annotated(ctx, "second", &u)).await?;
        let read = "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes";
        let mut seen = String::new();
        for _ in 0..50 {
            seen = String::from_utf8_lossy(&ctx.exec(&first, &["sh", "-c", read], 10).await?.stdout).trim().to_string();
            if seen == limit.to_string() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(plugin);
        check(seen == limit.to_string(), || format!("the other container's memory limit is {seen}, expected the plugin's {limit}"))?;
        let status = ctx.container_status(&first).await?;
        let shown = status.resources.and_then(|r| r.linux).map(|l| l.memory_limit_in_bytes);
        check(shown == Some(limit), || format!("ContainerStatus.resources shows memory limit {shown:?}, expected {limit}"))
    }
    .await;
    ctx.remove_pod(&pod.id).await?;
    res
}

/// A plugin built against nri before v0.12 serves no per-event method but CreateContainer,
/// UpdateContainer and StopContainer: it gets RunPodSandbox, StartContainer and the others as
/// `StateChange`, as nri's own runtime sends them, and the pod and its container run (an
/// UNIMPLEMENTED answer must not count as the plugin refusing).
pub async fn plugins_before_v012_get_state_changes(ctx: &Ctx) -> Result<()> {
    let socket = socket(ctx)?;
    let plugin = TestPlugin::connect(&socket, "conformance-old", "50", Behaviour { before_v012: true, ..Default::default() }).await?;
    let pod = ctx.run_pod("nri-old").await?;
    let res = async {
        ctx.ensure_image(&ctx.images.busybox).await?;
        start(ctx, &pod, ctx.container_config("old", &ctx.images.busybox, &["sleep", "1000"])).await?;
        let calls = plugin.calls();
        // nri's Event numbers: RUN_POD_SANDBOX = 1, START_CONTAINER = 6.
        check(calls.iter().any(|(m, _)| m == "StateChange:1"), || format!("no StateChange(RUN_POD_SANDBOX): {calls:?}"))?;
        check(calls.iter().any(|(m, n)| m == "StateChange:6" && n == "old"), || format!("no StateChange(START_CONTAINER): {calls:?}"))?;
        check(calls.iter().any(|(m, n)| m == "CreateContainer" && n == "old"), || format!("no CreateContainer: {calls:?}"))
    }
    .await;
    ctx.remove_pod(&pod.id).await?;
    res
}
