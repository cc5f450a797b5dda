//! The checks of node-image-check, in order. Each prints `ok NAME` or `FAILED NAME: why`; a
//! failed step does not stop the later ones (they report what they find).

use crate::{wait_for, Env, LOADED, PRELOADED};
use anyhow::{bail, ensure, Context, Result};
use berth::cri::v1 as cri;
use berth_conformance::cases::import::MARKER;
use berth_conformance::client::{self, Clients};
use std::collections::HashMap;
use std::time::Duration;

/// How long systemd and berth get to come up in a new node.
const BOOT_LIMIT: Duration = Duration::from_secs(120);
/// The node's pod network (deploy/cni/10-berth-bridge.conflist).
const POD_SUBNET_PREFIX: &str = "10.85.";
/// Where the node keeps the shared pod's logs (kubelet's layout).
const LOG_DIR: &str = "/var/log/pods/berth-node-check_shared_uid-node-check";

/// Runs every step; returns (passed, failed).
pub async fn run_all(env: &mut Env) -> (usize, usize) {
    let mut passed = 0;
    let mut failed = 0;
    let mut report = |name: &str, r: Result<()>, env: &Env| match r {
        Ok(()) => {
            println!("ok {name}");
            passed += 1;
        }
        Err(e) => {
            println!("FAILED {name}: {e:#}");
            eprintln!("--- berth's journal in the node (last 30 lines):\n{}", env.node.journal("berth", 30));
            failed += 1;
        }
    };
    let r = boots(env).await;
    let booted = r.is_ok();
    report("node_boots_and_serves_cri", r, env);
    if !booted {
        return (passed, failed);
    }
    let r = preloaded_image_listed(env).await;
    report("preloaded_image_listed", r, env);
    let r = pull_pod_exec_logs(env).await;
    report("pull_pod_exec_logs", r, env);
    let r = preloaded_image_runs(env).await;
    report("preloaded_image_runs", r, env);
    let r = kind_load_import(env).await;
    report("kind_load_style_import", r, env);
    let r = restart_keeps_containers(env).await;
    report("berth_restart_keeps_containers", r, env);
    let r = export_import_round_trip(env).await;
    report("export_import_round_trip", r, env);
    let r = stop_remove_leaves_nothing(env).await;
    report("stop_remove_leaves_nothing", r, env);
    if env.kubelet {
        let r = kubelet_runs_static_pod(env).await;
        report("kubelet_runs_static_pod", r, env);
    } else {
        println!("skipped kubelet_runs_static_pod: no --kubelet (kubelet is not packaged for Debian 12)");
    }
    (passed, failed)
}

fn cri(env: &Env) -> Result<Clients> {
    env.cri.clone().context("no CRI connection (the node did not come up)")
}

/// systemd reaches `running` (no failed unit), berth.service is active, the CRI socket at
/// containerd's path answers Version from this machine, `berth status` in the node reports both
/// conditions true, and crictl's config in the node names the socket.
async fn boots(env: &mut Env) -> Result<()> {
    let node = &env.node;
    let state = wait_for("systemd in the node is up", BOOT_LIMIT, || async {
        // is-system-running exits non-zero for everything but `running`, and prints the state.
        let out = std::process::Command::new("podman")
            .args(["exec", &node.name, "systemctl", "is-system-running"])
            .output()
            .context("podman exec systemctl is-system-running")?;
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(matches!(s.as_str(), "running" | "degraded").then_some(s))
    })
    .await?;
    if state != "running" {
        let failed = node.exec(&["systemctl", "--failed", "--no-pager", "--plain"]).unwrap_or_default();
        bail!("systemd in the node is {state}:\n{failed}");
    }
    let active = node.exec(&["systemctl", "is-active", "berth"]).unwrap_or_else(|e| format!("{e:#}"));
    ensure!(active.trim() == "active", "berth.service is {:?}", active.trim());
    let socket = env.socket.clone();
    let mut c = wait_for("berth answers on /run/containerd/containerd.sock", BOOT_LIMIT, || {
        let socket = socket.clone();
        async move {
            let mut c = client::connect(&socket).await?;
            c.rt.version(cri::VersionRequest { version: "v1".into() }).await?;
            Ok(Some(c))
        }
    })
    .await?;
    let v = c.rt.version(cri::VersionRequest { version: "v1".into() }).await?.into_inner();
    ensure!(v.runtime_name == "berth", "Version says runtime {:?}", v.runtime_name);
    let status = node.exec(&["berth", "status"])?;
    ensure!(status.contains("RuntimeReady: true") && status.contains("NetworkReady: true"), "`berth status` in the node: {status:?}");
    let crictl = node.exec(&["cat", "/etc/crictl.yaml"])?;
    ensure!(crictl.contains("runtime-endpoint: unix:///run/containerd/containerd.sock"), "/etc/crictl.yaml in the node: {crictl:?}");
    env.cri = Some(c);
    Ok(())
}

async fn image_id(c: &mut Clients, name: &str) -> Result<Option<String>> {
    let r = c
        .img
        .image_status(cri::ImageStatusRequest { image: Some(spec(name)), verbose: false })
        .await
        .with_context(|| format!("ImageStatus {name}"))?;
    Ok(r.into_inner().image.map(|i| i.id))
}

fn spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec { image: image.into(), ..Default::default() }
}

/// The archive given to `build.sh --preload` was imported at first boot: ImageStatus gives its
/// ID, and berth-preload.service ran.
async fn preloaded_image_listed(env: &mut Env) -> Result<()> {
    let mut c = cri(env)?;
    let id = image_id(&mut c, PRELOADED).await?;
    ensure!(
        id.as_deref() == Some(env.preloaded_id.as_str()),
        "ImageStatus {PRELOADED}: {id:?}, expected {}; berth-preload's journal:\n{}",
        env.preloaded_id,
        env.node.journal("berth-preload", 20)
    );
    let preload = env.node.exec(&["systemctl", "show", "-p", "Result", "berth-preload"])?;
    ensure!(preload.trim() == "Result=success", "berth-preload.service: {}", preload.trim());
    Ok(())
}

/// A pod sandbox config in the node's default slice (systemd driver), logs under [`LOG_DIR`].
fn pod_config() -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "shared".into(),
            uid: "uid-node-check".into(),
            namespace: "berth-node-check".into(),
            attempt: 0,
        }),
        hostname: "shared".into(),
        log_directory: LOG_DIR.into(),
        labels: HashMap::from([("berth-node-check".to_string(), "1".to_string())]),
        ..Default::default()
    }
}

fn container_config(name: &str, image: &str, cmd: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(spec(image)),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        ..Default::default()
    }
}

/// CreateContainer + StartContainer in `env.pod`; returns the container ID.
async fn run_container(env: &Env, c: &mut Clients, name: &str, image: &str, cmd: &[&str]) -> Result<String> {
    let pod = env.pod.clone().context("no pod (pull_pod_exec_logs failed)")?;
    let id =
        c.rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod,
            config: Some(container_config(name, image, cmd)),
            sandbox_config: Some(pod_config()),
        })
        .await
        .with_context(|| format!("CreateContainer {name} ({image})"))?
        .into_inner()
        .container_id;
    c.rt.start_container(cri::StartContainerRequest { container_id: id.clone() })
        .await
        .with_context(|| format!("StartContainer {name}"))?;
    Ok(id)
}

async fn exec(c: &mut Clients, id: &str, cmd: &[&str]) -> Result<String> {
    let r =
        c.rt.exec_sync(cri::ExecSyncRequest { container_id: id.into(), cmd: cmd.iter().map(|s| s.to_string()).collect(), timeout: 10 })
            .await
            .with_context(|| format!("ExecSync {cmd:?}"))?
            .into_inner();
    ensure!(r.exit_code == 0, "ExecSync {cmd:?}: exit {}, stderr {:?}", r.exit_code, String::from_utf8_lossy(&r.stderr));
    Ok(String::from_utf8_lossy(&r.stdout).into_owned())
}

async fn state(c: &mut Clients, id: &str) -> Result<cri::ContainerStatus> {
    c.rt.container_status(cri::ContainerStatusRequest { container_id: id.into(), verbose: false })
        .await
        .with_context(|| format!("ContainerStatus {id}"))?
        .into_inner()
        .status
        .context("ContainerStatus: no status")
}

/// The container's CRI log file in the node, read with `cat` there.
fn node_log(env: &Env, name: &str) -> Result<String> {
    env.node.exec(&["cat", &format!("{LOG_DIR}/{name}/0.log")])
}

/// PullImage from the node's registry, RunPodSandbox with an IP from the node's CNI network, a
/// long-running container, ExecSync in it, and its first line in its CRI log in the node.
async fn pull_pod_exec_logs(env: &mut Env) -> Result<()> {
    let mut c = cri(env)?;
    let pulled = c
        .img
        .pull_image(cri::PullImageRequest { image: Some(spec(&env.busybox)), ..Default::default() })
        .await
        .with_context(|| format!("PullImage {} from the node's registry", env.busybox))?
        .into_inner()
        .image_ref;
    ensure!(pulled.starts_with("sha256:"), "PullImage gave image_ref {pulled:?}");
    env.node.exec(&["mkdir", "-p", LOG_DIR])?;
    let pod =
        c.rt.run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(pod_config()), runtime_handler: String::new() })
            .await
            .context("RunPodSandbox")?
            .into_inner()
            .pod_sandbox_id;
    env.pod = Some(pod.clone());
    let st =
        c.rt.pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: false })
            .await?
            .into_inner()
            .status
            .context("PodSandboxStatus: no status")?;
    let ip = st.network.map(|n| n.ip).unwrap_or_default();
    ensure!(ip.starts_with(POD_SUBNET_PREFIX), "pod IP {ip:?}, expected one from the node's network {POD_SUBNET_PREFIX}0.0/16");
    let busybox = env.busybox.clone();
    let id = run_container(env, &mut c, "web", &busybox, &["sh", "-c", "echo hello from the node; exec sleep 3600"]).await?;
    env.container = Some(id.clone());
    let out = exec(&mut c, &id, &["sh", "-c", "echo exec ok; hostname"]).await?;
    ensure!(out == "exec ok\nshared\n", "ExecSync output {out:?}");
    let env_ref = &*env;
    wait_for("the container's first line in its CRI log in the node", Duration::from_secs(10), || async move {
        Ok(node_log(env_ref, "web")?.contains(" stdout F hello from the node").then_some(()))
    })
    .await?;
    Ok(())
}

/// A container from the preloaded image prints its marker file and exits 0.
async fn preloaded_image_runs(env: &mut Env) -> Result<()> {
    let mut c = cri(env)?;
    let id = run_container(env, &mut c, "preloaded", PRELOADED, &["cat", "/imported"]).await?;
    let cc = &c;
    let st = wait_for("the preloaded image's container exits", Duration::from_secs(20), || {
        let mut c = cc.clone();
        let id = id.clone();
        async move {
            let st = state(&mut c, &id).await?;
            Ok((st.state == cri::ContainerState::ContainerExited as i32).then_some(st))
        }
    })
    .await?;
    let log = node_log(env, "preloaded")?;
    ensure!(st.exit_code == 0 && log.contains(MARKER), "exit {} log {log:?}", st.exit_code);
    c.rt.remove_container(cri::RemoveContainerRequest { container_id: id }).await.context("RemoveContainer")?;
    Ok(())
}

/// What `kind load docker-image` does, with berth's importer: the archive piped into
/// `podman exec -i NODE berth image import -`, which goes through the running daemon.
async fn kind_load_import(env: &mut Env) -> Result<()> {
    let (archive, id) = env.loaded.clone();
    let out = env.node.exec_stdin(&["berth", "image", "import", "-"], &archive)?;
    let mut c = cri(env)?;
    let got = image_id(&mut c, LOADED).await?;
    ensure!(got.as_deref() == Some(id.as_str()), "ImageStatus {LOADED} after the import: {got:?}, expected {id}; import said {out:?}");
    Ok(())
}

fn main_pid(env: &Env) -> Result<String> {
    Ok(env.node.exec(&["systemctl", "show", "-p", "MainPID", "--value", "berth"])?.trim().to_string())
}

/// `systemctl restart berth` with the container running: a new daemon process, the container
/// still running with the same start time, and exec still works.
async fn restart_keeps_containers(env: &mut Env) -> Result<()> {
    let id = env.container.clone().context("no running container (pull_pod_exec_logs failed)")?;
    let mut c = cri(env)?;
    let before = state(&mut c, &id).await?;
    ensure!(before.state == cri::ContainerState::ContainerRunning as i32, "container not running before the restart");
    let pid_before = main_pid(env)?;
    env.node.exec(&["systemctl", "restart", "berth"])?;
    let pid_after = main_pid(env)?;
    ensure!(pid_after != pid_before && pid_after != "0", "berth's MainPID {pid_before} -> {pid_after}");
    let socket = env.socket.clone();
    let mut c = wait_for("berth answers again after the restart", BOOT_LIMIT, || {
        let socket = socket.clone();
        async move {
            let mut c = client::connect(&socket).await?;
            c.rt.version(cri::VersionRequest { version: "v1".into() }).await?;
            Ok(Some(c))
        }
    })
    .await?;
    env.cri = Some(c.clone());
    let after = state(&mut c, &id).await?;
    ensure!(
        after.state == cri::ContainerState::ContainerRunning as i32 && after.started_at == before.started_at,
        "after the restart: state {:?} started_at {} (before {})",
        cri::ContainerState::try_from(after.state),
        after.started_at,
        before.started_at
    );
    let out = exec(&mut c, &id, &["echo", "still served"]).await?;
    ensure!(out == "still served\n", "ExecSync after the restart: {out:?}");
    Ok(())
}

/// In the node: the running container is stopped and removed, `berth image export` writes the
/// pulled image, RemoveImage drops it, `berth image import` of the file brings it back, and a
/// container from it runs.
async fn export_import_round_trip(env: &mut Env) -> Result<()> {
    let mut c = cri(env)?;
    if let Some(id) = env.container.take() {
        c.rt.stop_container(cri::StopContainerRequest { container_id: id.clone(), timeout: 5 }).await.context("StopContainer")?;
        c.rt.remove_container(cri::RemoveContainerRequest { container_id: id }).await.context("RemoveContainer")?;
    }
    let busybox = env.busybox.clone();
    let file = "/var/tmp/busybox.tar";
    let out = env.node.exec(&["berth", "image", "export", "-o", file, &busybox])?;
    c.img.remove_image(cri::RemoveImageRequest { image: Some(spec(&busybox)) }).await.context("RemoveImage")?;
    ensure!(image_id(&mut c, &busybox).await?.is_none(), "{busybox} still there after RemoveImage");
    let imported = env.node.exec(&["berth", "image", "import", file])?;
    env.node.exec(&["rm", "-f", file])?;
    ensure!(image_id(&mut c, &busybox).await?.is_some(), "{busybox} missing after the import; export said {out:?}, import {imported:?}");
    let id = run_container(env, &mut c, "reimported", &busybox, &["sleep", "3600"]).await?;
    let got = exec(&mut c, &id, &["echo", "from the imported image"]).await?;
    ensure!(got == "from the imported image\n", "ExecSync: {got:?}");
    Ok(())
}

/// StopPodSandbox + RemovePodSandbox: no pod or container listed, and in the node no overlay
/// mount of berth's, no pinned network namespace and no berth-monitor process left.
async fn stop_remove_leaves_nothing(env: &mut Env) -> Result<()> {
    let mut c = cri(env)?;
    if let Some(pod) = env.pod.take() {
        c.rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.context("StopPodSandbox")?;
        c.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await.context("RemovePodSandbox")?;
    }
    let pods = c.rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await?.into_inner().items;
    let ctrs = c.rt.list_containers(cri::ListContainersRequest { filter: None }).await?.into_inner().containers;
    ensure!(pods.is_empty() && ctrs.is_empty(), "left listed: {} pods, {} containers", pods.len(), ctrs.len());
    let mounts = env.node.exec(&["cat", "/proc/1/mountinfo"])?;
    let ours: Vec<&str> = mounts.lines().filter(|l| l.contains("/run/berth/") || l.contains("/var/lib/berth/")).collect();
    ensure!(ours.is_empty(), "mounts left in the node:\n{}", ours.join("\n"));
    let netns = env.node.exec(&["sh", "-c", "ls /var/run/netns 2>/dev/null || true"])?;
    ensure!(netns.trim().is_empty(), "network namespaces left in the node: {netns:?}");
    let monitors = env.node.exec(&["sh", "-c", "pgrep -a berth-monitor || true"])?;
    ensure!(monitors.trim().is_empty(), "berth-monitor processes left in the node: {monitors:?}");
    Ok(())
}

/// kubelet's config for the node: standalone (no API server), static pods from
/// /etc/kubernetes/manifests, the systemd driver berth runs with.
const KUBELET_CONFIG: &str = "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
staticPodPath: /etc/kubernetes/manifests
fileCheckFrequency: 2s
cgroupDriver: systemd
failSwapOn: false
address: 127.0.0.1
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
evictionHard:
  memory.available: \"1Mi\"
  nodefs.available: \"1%\"
  imagefs.available: \"1%\"
  nodefs.inodesFree: \"1%\"
";

/// Writes `text` to `path` in the node (`podman exec -i NODE sh -c 'cat > PATH'`).
fn write_in_node(env: &Env, path: &str, text: &str) -> Result<()> {
    let local = env.tmp.join("to-node");
    std::fs::write(&local, text)?;
    let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or("/");
    env.node.exec_stdin(&["sh", "-c", &format!("mkdir -p {dir} && cat > {path}")], &local)?;
    Ok(())
}

/// With `--kubelet`: the node's kubelet.service (its unit, kubeadm's drop-in and
/// /etc/default/kubelet from the image) runs in standalone mode, as it would before
/// `kubeadm join` wrote its kubeconfig, and starts a static pod on berth: a ready sandbox and a
/// running container with kubelet's labels, in which ExecSync works.
async fn kubelet_runs_static_pod(env: &mut Env) -> Result<()> {
    write_in_node(env, "/var/lib/kubelet/config.yaml", KUBELET_CONFIG)?;
    // No kubeconfig: standalone, instead of waiting for a bootstrap kubeconfig.
    write_in_node(env, "/etc/systemd/system/kubelet.service.d/99-standalone.conf", "[Service]\nEnvironment=KUBELET_KUBECONFIG_ARGS=\n")?;
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: ticker\n  namespace: berth-node-check\nspec:\n  containers:\n  - name: ticker\n    image: {}\n    command: [\"sh\", \"-c\", \"while true; do echo tick; sleep 1; done\"]\n",
        env.busybox
    );
    write_in_node(env, "/etc/kubernetes/manifests/ticker.yaml", &manifest)?;
    env.node.exec(&["systemctl", "daemon-reload"])?;
    env.node.exec(&["systemctl", "restart", "kubelet"])?;
    let c = cri(env)?;
    let found = wait_for("kubelet's static pod runs on berth", Duration::from_secs(120), || {
        let mut c = c.clone();
        async move {
            let filter = cri::ContainerFilter {
                // kubelet names a static pod `<name>-<node name>`; its labels give the namespace
                // and the container's name as in the manifest.
                label_selector: HashMap::from([
                    ("io.kubernetes.pod.namespace".to_string(), "berth-node-check".to_string()),
                    ("io.kubernetes.container.name".to_string(), "ticker".to_string()),
                ]),
                ..Default::default()
            };
            let ctrs = c.rt.list_containers(cri::ListContainersRequest { filter: Some(filter) }).await?.into_inner().containers;
            Ok(ctrs.into_iter().find(|x| x.state == cri::ContainerState::ContainerRunning as i32))
        }
    })
    .await
    .map_err(|e| {
        let journal = env.node.journal("kubelet", 40);
        e.context(format!("kubelet's journal in the node:\n{journal}"))
    })?;
    let mut c = cri(env)?;
    let out = exec(&mut c, &found.id, &["echo", "kubelet's container"]).await?;
    ensure!(out == "kubelet's container\n", "ExecSync in kubelet's container: {out:?}");
    env.node.exec(&["systemctl", "stop", "kubelet"])?;
    Ok(())
}
