//! CRI helpers of the bench: request shapes (pod and `sleep` container configs, labelled
//! `berth-bench`) and the RPC sequences every phase uses (run/remove a pod, create+start,
//! stop+remove, remove an image, remove everything). Every pod and container id created is
//! recorded so the leak checks (`facts::leftovers`) can look for it.

use anyhow::{bail, Context, Result};
use berth::cri::v1 as cri;
use berth_conformance::client::Clients;
use std::collections::HashMap;
use std::path::Path;

/// Label on every pod and container the bench creates.
const BENCH_LABEL: &str = "berth-bench";

/// Ids of every pod and container the bench created (leak checks look for them).
static CREATED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Records a pod or container id the bench created.
fn record(id: &str) {
    if let Ok(mut v) = CREATED.lock() {
        v.push(id.to_string());
    }
}

/// Every pod and container id recorded so far, in creation order.
pub fn created() -> Vec<String> {
    CREATED.lock().map(|v| v.clone()).unwrap_or_default()
}

/// An ImageSpec naming `image` (no annotations, no runtime handler).
pub fn image_spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec { image: image.into(), ..Default::default() }
}

/// A pod config named `name` (uid `uid-<name>`, namespace `berth-bench`, label `berth-bench=1`),
/// logging under `<dir>/logs/<name>` (created here), no user namespace, and the namespace
/// options kubelet sends by default (PID CONTAINER: no `shareProcessNamespace`).
pub fn pod_config(dir: &Path, name: &str) -> cri::PodSandboxConfig {
    let mut labels = HashMap::new();
    labels.insert(BENCH_LABEL.to_string(), "1".to_string());
    let log_dir = dir.join("logs").join(name);
    let _ = std::fs::create_dir_all(&log_dir);
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: BENCH_LABEL.into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.display().to_string(),
        labels,
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(berth_conformance::ctx::kubelet_namespace_options(false)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// [`pod_config`] of a pod whose containers share one PID namespace (kubelet's
/// `shareProcessNamespace: true`, PID mode POD).
pub fn shared_pid_pod_config(dir: &Path, name: &str) -> cri::PodSandboxConfig {
    let mut pc = pod_config(dir, name);
    pc.linux.get_or_insert_with(Default::default).security_context.get_or_insert_with(Default::default).namespace_options =
        Some(berth_conformance::ctx::kubelet_namespace_options(true));
    pc
}

/// A container config named `name` running `sleep 3600` from `image`, log `<name>.log`.
pub fn sleep_config(name: &str, image: &str) -> cri::ContainerConfig {
    let mut labels = HashMap::new();
    labels.insert(BENCH_LABEL.to_string(), "1".to_string());
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(image_spec(image)),
        command: vec!["sleep".into(), "3600".into()],
        log_path: format!("{name}.log"),
        labels,
        linux: Some(cri::LinuxContainerConfig::default()),
        ..Default::default()
    }
}

/// RunPodSandbox on the default handler; records and returns the pod id.
pub async fn run_pod(c: &mut Clients, config: &cri::PodSandboxConfig) -> Result<String> {
    let name = config.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
    let id =
        c.rt.run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() })
            .await
            .with_context(|| format!("RunPodSandbox {name}"))?
            .into_inner()
            .pod_sandbox_id;
    if id.is_empty() {
        bail!("RunPodSandbox {name}: empty pod_sandbox_id");
    }
    record(&id);
    Ok(id)
}

/// StopPodSandbox then RemovePodSandbox of `id`.
pub async fn remove_pod(c: &mut Clients, id: &str) -> Result<()> {
    c.rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id.into() })
        .await
        .with_context(|| format!("StopPodSandbox {id}"))?;
    c.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id.into() })
        .await
        .with_context(|| format!("RemovePodSandbox {id}"))?;
    Ok(())
}

/// CreateContainer of `cfg` in `pod` then StartContainer; records and returns the container id.
pub async fn create_start(c: &mut Clients, pod: &str, pod_cfg: &cri::PodSandboxConfig, mut cfg: cri::ContainerConfig) -> Result<String> {
    // kubelet repeats the pod's namespace options on each container.
    let pod_ns = pod_cfg.linux.as_ref().and_then(|l| l.security_context.as_ref()).and_then(|s| s.namespace_options.clone());
    let sc = cfg.linux.get_or_insert_with(Default::default).security_context.get_or_insert_with(Default::default);
    if sc.namespace_options.is_none() {
        sc.namespace_options = pod_ns;
    }
    let name = cfg.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
    let id =
        c.rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(cfg),
            sandbox_config: Some(pod_cfg.clone()),
        })
        .await
        .with_context(|| format!("CreateContainer {name} in pod {pod}"))?
        .into_inner()
        .container_id;
    if id.is_empty() {
        bail!("CreateContainer {name}: empty container_id");
    }
    record(&id);
    c.rt.start_container(cri::StartContainerRequest { container_id: id.clone() })
        .await
        .with_context(|| format!("StartContainer {name} ({id})"))?;
    Ok(id)
}

/// StopContainer (timeout 0) then RemoveContainer of `id`.
pub async fn stop_remove(c: &mut Clients, id: &str) -> Result<()> {
    c.rt.stop_container(cri::StopContainerRequest { container_id: id.into(), timeout: 0 })
        .await
        .with_context(|| format!("StopContainer {id}"))?;
    c.rt.remove_container(cri::RemoveContainerRequest { container_id: id.into() })
        .await
        .with_context(|| format!("RemoveContainer {id}"))?;
    Ok(())
}

/// RemoveImage of `image` (a reference or an image id).
pub async fn remove_image(c: &mut Clients, image: &str) -> Result<()> {
    c.img.remove_image(cri::RemoveImageRequest { image: Some(image_spec(image)) }).await.with_context(|| format!("RemoveImage {image}"))?;
    Ok(())
}

/// Removes every container, pod and image the daemon lists (best effort); returns the errors.
pub async fn remove_everything(c: &mut Clients) -> Vec<String> {
    let mut errs = Vec::new();
    match c.rt.list_containers(cri::ListContainersRequest { filter: None }).await {
        Ok(r) => {
            for ct in r.into_inner().containers {
                if let Err(e) = stop_remove(c, &ct.id).await {
                    errs.push(format!("{e:#}"));
                }
            }
        }
        Err(e) => errs.push(format!("ListContainers: {e}")),
    }
    match c.rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await {
        Ok(r) => {
            for p in r.into_inner().items {
                if let Err(e) = remove_pod(c, &p.id).await {
                    errs.push(format!("{e:#}"));
                }
            }
        }
        Err(e) => errs.push(format!("ListPodSandbox: {e}")),
    }
    match c.img.list_images(cri::ListImagesRequest { filter: None }).await {
        Ok(r) => {
            for i in r.into_inner().images {
                if let Err(e) = remove_image(c, &i.id).await {
                    errs.push(format!("{e:#}"));
                }
            }
        }
        Err(e) => errs.push(format!("ListImages: {e}")),
    }
    errs
}
