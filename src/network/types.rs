//! Public types of the network module: the error enum, the attach request and its result.

use std::net::IpAddr;
use std::path::PathBuf;

/// Everything that can go wrong while loading CNI configs, running plugins, caching results or
/// pinning network namespaces. Each variant names the object (file, plugin, path) and what failed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// No usable network config in the conf dir (NetworkReady = false).
    #[error("no CNI network config found in {dir}{detail}")]
    NoConfig { dir: PathBuf, detail: String },
    /// `default_network` names a network that no valid file in the conf dir defines.
    #[error("CNI network {name:?} not found in {dir} (valid networks: {found})")]
    NetworkNotFound { name: String, dir: PathBuf, found: String },
    /// A config file is unreadable or invalid; `field` is the JSON field at fault.
    #[error("CNI config {path}: {field}: {message}")]
    BadConfig { path: PathBuf, field: String, message: String },
    /// A plugin binary named by `type` is not in any plugin dir.
    #[error("CNI plugin {plugin:?} not found in {dirs}")]
    PluginNotFound { plugin: String, dirs: String },
    /// The plugin could not be started or talked to.
    #[error("CNI plugin {plugin:?} ({command}): {source}")]
    PluginSpawn {
        plugin: String,
        command: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The plugin exited non-zero; `code`/`msg`/`details` come from its CNI error JSON when it
    /// printed one (SPEC.md "Error"), else `msg` is its stderr or stdout.
    #[error("CNI plugin {plugin:?} {command} for network {network:?} failed (code {code}): {msg}{}", details_suffix(details))]
    PluginFailed { plugin: String, command: &'static str, network: String, code: i64, msg: String, details: String },
    /// The plugin exited 0 but its stdout is not a JSON result.
    #[error("CNI plugin {plugin:?} {command}: result is not valid JSON: {message}")]
    BadResult { plugin: String, command: &'static str, message: String },
    /// A DEL of one or more plugins failed; the others still ran.
    #[error("CNI DEL of network {network:?} for {container_id}: {errors}")]
    TeardownFailed { network: String, container_id: String, errors: String },
    /// Reading or writing a result cache file failed.
    #[error("CNI result cache {path}: {message}")]
    Cache { path: PathBuf, message: String },
    /// A network namespace syscall failed on `path`.
    #[error("network namespace {path}: {syscall}: {source}")]
    Netns {
        path: PathBuf,
        syscall: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn details_suffix(d: &str) -> String {
    if d.is_empty() {
        String::new()
    } else {
        format!(" ({d})")
    }
}

/// One CRI `PortMapping` of a pod, passed to plugins with `capabilities.portMappings` as
/// `runtimeConfig.portMappings[]` = `{hostPort, containerPort, protocol, hostIP}` (CNI
/// CONVENTIONS.md "Port mappings").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    /// Port on the node; mappings with 0 are skipped, as CRI-O does.
    pub host_port: u16,
    /// Port inside the pod.
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp` (any case; sent lowercase).
    pub protocol: String,
    /// Node address to bind; empty means all (the field is then omitted).
    pub host_ip: String,
}

/// What to attach: one pod sandbox's network namespace to the pod network (CNI runtime config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachRequest {
    /// `CNI_CONTAINERID`: the pod sandbox id.
    pub container_id: String,
    /// `CNI_NETNS`: path of the pinned network namespace (e.g. `/var/run/netns/<name>`).
    pub netns: PathBuf,
    /// `CNI_IFNAME`: the interface to create in the pod, normally `eth0`.
    pub ifname: String,
    /// CRI `PodSandboxMetadata.name` (`K8S_POD_NAME`).
    pub pod_name: String,
    /// CRI `PodSandboxMetadata.namespace` (`K8S_POD_NAMESPACE`).
    pub pod_namespace: String,
    /// CRI `PodSandboxMetadata.uid` (`K8S_POD_UID`).
    pub pod_uid: String,
    /// CRI `PodSandboxConfig.port_mappings`.
    pub port_mappings: Vec<PortMapping>,
}

/// The outcome of a successful ADD.
#[derive(Debug, Clone, PartialEq)]
pub struct AttachResult {
    /// Pod addresses from the final result, IPv4 first (CRI `PodSandboxNetworkStatus.ip`, then
    /// `additional_ips`).
    pub ips: Vec<IpAddr>,
    /// The final CNI result of the pod network's plugin chain, as the last plugin printed it.
    pub result: serde_json::Value,
}
