//! berth's records as NRI sees them (containerd/nri's `PodSandbox` and `Container`): IDs,
//! names and metadata are the CRI's (critest's NRI specs compare them). The NRI host
//! ([`crate::nri`]) gets them from its callers; it does not read records itself.

use super::{ContainerRecord, ContainerState, SandboxRecord};
use crate::nri::{api, convert};

/// The NRI view of a pod sandbox (nri `PodSandbox`): CRI metadata, labels and annotations, the
/// runtime handler, the cgroup parent and network namespace (and the pinned IPC and UTS ones of
/// a pod without an infra process), the infra pid (0 without one) and the pod IPs.
pub fn nri_pod(r: &SandboxRecord) -> api::PodSandbox {
    let meta = r.config.metadata.clone().unwrap_or_default();
    let linux = r.config.linux.as_ref();
    let mut namespaces = Vec::new();
    if let Some(netns) = &r.netns_path {
        namespaces.push(api::LinuxNamespace { r#type: "network".into(), path: netns.to_string_lossy().into_owned() });
    }
    // A pod without an infra process: its pinned IPC and UTS namespaces (CRI-O lists them).
    for (kind, path) in r.pinned.iter().flat_map(|p| [("ipc", &p.ipc), ("uts", &p.uts)]) {
        if let Some(path) = path {
            namespaces.push(api::LinuxNamespace { r#type: kind.into(), path: path.to_string_lossy().into_owned() });
        }
    }
    api::PodSandbox {
        id: r.id.clone(),
        name: meta.name,
        uid: meta.uid,
        namespace: meta.namespace,
        labels: r.config.labels.clone().into_iter().collect(),
        annotations: r.config.annotations.clone().into_iter().collect(),
        runtime_handler: r.runtime_handler.clone(),
        linux: Some(api::LinuxPodSandbox {
            pod_overhead: linux.and_then(|l| l.overhead.as_ref()).map(convert::resources_of_cri),
            pod_resources: linux.and_then(|l| l.resources.as_ref()).map(convert::resources_of_cri),
            cgroup_parent: r.cgroup_parent.clone(),
            cgroups_path: r.cgroup_parent.clone(),
            namespaces,
            resources: None,
        }),
        pid: if r.stopped { 0 } else { r.infra_pid.max(0) as u32 },
        ips: r.ips.clone(),
    }
}

/// The NRI view of a container from its record (nri `Container`): CRI ID, pod, name, state,
/// labels and annotations, command and env as configured, mounts, pid, times and exit status.
pub fn nri_container(r: &ContainerRecord) -> api::Container {
    let c = &r.config;
    let state = match r.state {
        ContainerState::Created => api::ContainerState::ContainerCreated,
        ContainerState::Running => api::ContainerState::ContainerRunning,
        ContainerState::Exited => api::ContainerState::ContainerStopped,
        ContainerState::Unknown => api::ContainerState::ContainerUnknown,
    };
    api::Container {
        id: r.id.clone(),
        pod_sandbox_id: r.sandbox_id.clone(),
        name: c.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
        state: state as i32,
        labels: c.labels.clone().into_iter().collect(),
        annotations: c.annotations.clone().into_iter().collect(),
        args: c.command.iter().chain(&c.args).cloned().collect(),
        env: c.envs.iter().map(|kv| format!("{}={}", kv.key, String::from_utf8_lossy(&kv.value))).collect(),
        mounts: c
            .mounts
            .iter()
            .filter(|m| !m.host_path.is_empty())
            .map(|m| api::Mount {
                destination: m.container_path.clone(),
                r#type: "bind".into(),
                source: m.host_path.clone(),
                options: if m.readonly { vec!["rbind".into(), "ro".into()] } else { vec!["rbind".into(), "rw".into()] },
            })
            .collect(),
        linux: c
            .linux
            .as_ref()
            .and_then(|l| l.resources.as_ref())
            .map(|res| api::LinuxContainer { resources: Some(convert::resources_of_cri(res)), ..Default::default() }),
        pid: if r.state == ContainerState::Running { r.pid.max(0) as u32 } else { 0 },
        created_at: r.created_at,
        started_at: r.started_at,
        finished_at: r.finished_at,
        exit_code: r.exit_code,
        status_reason: r.reason.clone(),
        status_message: r.message.clone(),
        ..Default::default()
    }
}
