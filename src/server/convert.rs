//! Domain records -> CRI messages, and CRI filters applied to records.

use crate::container::{ContainerRecord, ContainerState};
use crate::cri::v1 as cri;
use crate::sandbox::{SandboxRecord, SandboxState};
use std::collections::HashMap;

/// CRI `PodSandboxState` of a record.
pub fn sandbox_state(s: SandboxState) -> i32 {
    match s {
        SandboxState::Ready => cri::PodSandboxState::SandboxReady as i32,
        SandboxState::NotReady => cri::PodSandboxState::SandboxNotready as i32,
    }
}

/// CRI `ContainerState` of a record.
pub fn container_state(s: ContainerState) -> i32 {
    match s {
        ContainerState::Created => cri::ContainerState::ContainerCreated as i32,
        ContainerState::Running => cri::ContainerState::ContainerRunning as i32,
        ContainerState::Exited => cri::ContainerState::ContainerExited as i32,
        ContainerState::Unknown => cri::ContainerState::ContainerUnknown as i32,
    }
}

/// ListPodSandbox entry.
pub fn pod_sandbox(r: &SandboxRecord) -> cri::PodSandbox {
    cri::PodSandbox {
        id: r.id.clone(),
        metadata: r.config.metadata.clone(),
        state: sandbox_state(r.state),
        created_at: r.created_at,
        labels: r.config.labels.clone(),
        annotations: r.config.annotations.clone(),
        runtime_handler: r.runtime_handler.clone(),
    }
}

/// PodSandboxStatus. The network is reported only while the sandbox is Ready (as containerd does,
/// kubelet reads the IP from here).
pub fn pod_sandbox_status(r: &SandboxRecord) -> cri::PodSandboxStatus {
    let ns = r.namespace_options();
    let network = (!r.ips.is_empty()).then(|| cri::PodSandboxNetworkStatus {
        ip: r.ips[0].clone(),
        additional_ips: r.ips[1..].iter().map(|ip| cri::PodIp { ip: ip.clone() }).collect(),
    });
    cri::PodSandboxStatus {
        id: r.id.clone(),
        metadata: r.config.metadata.clone(),
        state: sandbox_state(r.state),
        created_at: r.created_at,
        network,
        linux: Some(cri::LinuxPodSandboxStatus { namespaces: Some(cri::Namespace { options: Some(ns) }) }),
        labels: r.config.labels.clone(),
        annotations: r.config.annotations.clone(),
        runtime_handler: r.runtime_handler.clone(),
    }
}

/// Verbose info of PodSandboxStatus: `info["info"]` as JSON, the shape crictl inspectp prints;
/// `pid` is 0 and `infraContainer` false for a pod without an infra process, whose pinned
/// namespace files are given instead.
pub fn pod_sandbox_info(r: &SandboxRecord) -> HashMap<String, String> {
    let info = serde_json::json!({
        "pid": r.infra_pid,
        "infraContainer": r.has_infra(),
        "netNamespacePath": r.netns_path,
        "ipcNamespacePath": r.pinned.as_ref().and_then(|p| p.ipc.as_ref()),
        "utsNamespacePath": r.pinned.as_ref().and_then(|p| p.uts.as_ref()),
        "cgroupParent": r.cgroup_parent,
        "hostname": r.hostname,
        "runtimeHandler": r.runtime_handler,
        "config": r.config,
    });
    HashMap::from([("info".to_string(), info.to_string())])
}

/// ListContainers entry.
pub fn container(r: &ContainerRecord) -> cri::Container {
    cri::Container {
        id: r.id.clone(),
        pod_sandbox_id: r.sandbox_id.clone(),
        metadata: r.config.metadata.clone(),
        image: r.config.image.clone(),
        image_ref: r.image_ref.clone(),
        state: container_state(r.state),
        created_at: r.created_at,
        labels: r.config.labels.clone(),
        annotations: r.config.annotations.clone(),
        image_id: r.image_id.clone(),
    }
}

/// ContainerStatus.
pub fn container_status(r: &ContainerRecord) -> cri::ContainerStatus {
    cri::ContainerStatus {
        id: r.id.clone(),
        metadata: r.config.metadata.clone(),
        state: container_state(r.state),
        created_at: r.created_at,
        started_at: r.started_at,
        finished_at: r.finished_at,
        exit_code: r.exit_code,
        image: r.config.image.clone(),
        image_ref: r.image_ref.clone(),
        reason: r.reason.clone(),
        message: r.message.clone(),
        labels: r.config.labels.clone(),
        annotations: r.config.annotations.clone(),
        mounts: r.config.mounts.clone(),
        log_path: r.log_path.clone(),
        resources: r
            .config
            .linux
            .as_ref()
            .and_then(|l| l.resources.clone())
            .map(|linux| cri::ContainerResources { linux: Some(linux), ..Default::default() }),
        image_id: r.image_id.clone(),
        user: r.user.clone(),
        stop_signal: crate::container::signal::to_cri(&r.stop_signal) as i32,
    }
}

/// Verbose info of ContainerStatus: `info["info"]` as JSON with the pid, the sandbox and the OCI
/// spec berth generated (what crictl inspect shows).
pub fn container_info(r: &ContainerRecord, runtime_spec: Option<serde_json::Value>) -> HashMap<String, String> {
    let info = serde_json::json!({
        "pid": r.pid,
        "sandboxID": r.sandbox_id,
        "runtimeHandler": r.runtime_handler,
        "runtimeSpec": runtime_spec,
    });
    HashMap::from([("info".to_string(), info.to_string())])
}

/// Whether every `selector` label is present with the same value.
pub fn labels_match(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// ListPodSandbox filter: ID prefix, state, labels (ANDed).
pub fn sandbox_matches(r: &SandboxRecord, f: &cri::PodSandboxFilter) -> bool {
    (f.id.is_empty() || r.id.starts_with(&f.id))
        && f.state.as_ref().is_none_or(|s| s.state == sandbox_state(r.state))
        && labels_match(&r.config.labels, &f.label_selector)
}

/// ListContainers filter: ID prefix, state, pod sandbox ID prefix, labels (ANDed).
pub fn container_matches(r: &ContainerRecord, f: &cri::ContainerFilter) -> bool {
    (f.id.is_empty() || r.id.starts_with(&f.id))
        && (f.pod_sandbox_id.is_empty() || r.sandbox_id.starts_with(&f.pod_sandbox_id))
        && f.state.as_ref().is_none_or(|s| s.state == container_state(r.state))
        && labels_match(&r.config.labels, &f.label_selector)
}
