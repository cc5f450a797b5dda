//! Pod sandbox lifecycle: a pinned network namespace wired by CNI, the pod's `/dev/shm`, its
//! hostname/hosts/resolv.conf files, and the infra container (`berth-pause` run through
//! `berth-monitor` and the OCI runtime) holding the pod's ipc, uts and pid namespaces.
//!
//! CRI RPCs served from here: RunPodSandbox ([`run`]), StopPodSandbox ([`stop`]),
//! RemovePodSandbox ([`remove`]), PodSandboxStatus ([`get`]), ListPodSandbox ([`list`]).

pub mod files;
mod run;
mod stop;
pub mod sysctl;

pub use run::run;
pub use stop::{remove, stop};

use crate::cri::v1::{NamespaceMode, NamespaceOption, PodSandboxConfig};
use crate::daemon::Daemon;
use crate::error::{Error, Result};
use crate::state::SANDBOXES;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// State of a pod sandbox, as CRI `PodSandboxState` names them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum SandboxState {
    /// `SANDBOX_READY`: the infra process runs and the network is set up.
    Ready,
    /// `SANDBOX_NOTREADY`: being created, stopped, or the infra died.
    NotReady,
}

/// One pod sandbox as stored in the metadata store (table `sandboxes`, key = ID).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// 64-hex ID; also the OCI runtime ID of the infra container.
    pub id: String,
    /// The CRI config it was created from (labels and annotations are returned from here verbatim).
    pub config: PodSandboxConfig,
    /// The CRI runtime handler, as requested (empty = default).
    pub runtime_handler: String,
    /// Current state.
    pub state: SandboxState,
    /// Creation time, nanoseconds since the epoch.
    pub created_at: i64,
    /// The pinned network namespace; `None` for host-network pods.
    pub netns_path: Option<PathBuf>,
    /// Whether CNI ADD succeeded and a DEL is owed.
    pub network_attached: bool,
    /// Pod IPs from CNI, the first one primary.
    pub ips: Vec<String>,
    /// Host PID of the infra process (0 before it started).
    pub infra_pid: i32,
    /// PID of the infra's `berth-monitor` (0 before it started).
    #[serde(default)]
    pub monitor_pid: i32,
    /// cgroupfs parent of the pod's containers.
    pub cgroup_parent: String,
    /// The pod's hostname.
    pub hostname: String,
    /// Whether the pod's `/dev/shm` tmpfs is mounted under the run dir.
    pub shm_mounted: bool,
}

impl SandboxRecord {
    /// Name reservation key: `name_namespace_uid_attempt`, unique per CRI.
    pub fn name_key(config: &PodSandboxConfig) -> String {
        let m = config.metadata.clone().unwrap_or_default();
        format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
    }

    /// The pod's namespace options (defaults: POD for every namespace).
    pub fn namespace_options(&self) -> NamespaceOption {
        namespace_options(&self.config)
    }

    /// The infra process as the liveness checks see it.
    pub fn infra_watched<'a>(&self, paths: &'a SandboxPaths) -> crate::container::liveness::Watched<'a> {
        crate::container::liveness::Watched { exit_file: &paths.exit_file, monitor_pid: self.monitor_pid, pid: self.infra_pid }
    }

    /// Whether the pod uses the node's network namespace.
    pub fn host_network(&self) -> bool {
        self.namespace_options().network == NamespaceMode::Node as i32
    }
}

/// The namespace options of a pod config (`linux.security_context.namespace_options`).
pub fn namespace_options(config: &PodSandboxConfig) -> NamespaceOption {
    config.linux.as_ref().and_then(|l| l.security_context.as_ref()).and_then(|s| s.namespace_options.clone()).unwrap_or_default()
}

/// Files of a pod sandbox.
pub struct SandboxPaths {
    /// `<run_root>/sandboxes/<id>`: the infra's OCI bundle.
    pub bundle: PathBuf,
    /// `<bundle>/rootfs`: holds only `berth-pause`.
    pub rootfs: PathBuf,
    /// `<bundle>/shm`: the pod's `/dev/shm` tmpfs.
    pub shm: PathBuf,
    /// `<bundle>/exit`: the infra's exit file.
    pub exit_file: PathBuf,
    /// `<root>/sandboxes/<id>`: hostname, hosts, resolv.conf.
    pub state: PathBuf,
}

impl SandboxPaths {
    /// Paths for sandbox `id`.
    pub fn new(d: &Daemon, id: &str) -> SandboxPaths {
        let bundle = d.run_dir("sandboxes", id);
        SandboxPaths {
            rootfs: bundle.join("rootfs"),
            shm: bundle.join("shm"),
            exit_file: bundle.join("exit"),
            bundle,
            state: d.state_dir("sandboxes", id),
        }
    }
    /// `/etc/hostname` source.
    pub fn hostname_file(&self) -> PathBuf {
        self.state.join("hostname")
    }
    /// `/etc/hosts` source.
    pub fn hosts_file(&self) -> PathBuf {
        self.state.join("hosts")
    }
    /// `/etc/resolv.conf` source.
    pub fn resolv_conf(&self) -> PathBuf {
        self.state.join("resolv.conf")
    }
}

/// Looks a sandbox up by full ID or unique ID prefix (crictl passes prefixes).
///
/// Errors: NotFound when nothing matches; InvalidArgument when the prefix is ambiguous or empty.
pub fn get(d: &Daemon, id: &str) -> Result<SandboxRecord> {
    if id.is_empty() {
        return Err(Error::invalid("pod_sandbox_id", "must not be empty"));
    }
    if let Some(r) = d.store.get::<SandboxRecord>(SANDBOXES, id)? {
        return Ok(r);
    }
    let mut matches: Vec<SandboxRecord> =
        d.store.list::<SandboxRecord>(SANDBOXES)?.into_iter().map(|(_, r)| r).filter(|r| r.id.starts_with(id)).collect();
    match matches.len() {
        0 => Err(Error::NotFound { kind: "pod sandbox", id: id.to_string() }),
        1 => Ok(matches.remove(0)),
        n => Err(Error::invalid("pod_sandbox_id", format!("prefix {id:?} matches {n} pod sandboxes"))),
    }
}

/// UpdatePodSandboxResources (cri-api v0.36; kubelet's in-place pod resize): records the pod's
/// new `overhead` and `resources` in its config, as CRI-O and containerd do. kubelet has already
/// written the pod-level cgroup when it calls this (the CRI says so), so no cgroup is touched
/// here; the record is what NRI plugins (issue #14) and PodSandboxStatus verbose info read.
///
/// Errors: NotFound for an unknown pod; FailedPrecondition for a pod that is not READY.
pub async fn update_resources(
    d: &Daemon,
    id: &str,
    overhead: Option<crate::cri::v1::LinuxContainerResources>,
    resources: Option<crate::cri::v1::LinuxContainerResources>,
) -> Result<()> {
    let r = get(d, id)?;
    let lock = d.lock_for(&r.id);
    let _guard = lock.lock().await;
    let mut r = refresh(d, get(d, &r.id)?)?;
    if r.state != SandboxState::Ready {
        return Err(Error::FailedPrecondition(format!("pod sandbox {} is not ready: its resources cannot change", r.id)));
    }
    let linux = r.config.linux.get_or_insert_with(Default::default);
    linux.overhead = overhead;
    linux.resources = resources;
    d.store.put(SANDBOXES, &r.id, &r)?;
    tracing::info!(sandbox = %r.id, "pod sandbox resources updated");
    Ok(())
}

/// Every sandbox, with the infra's liveness refreshed (a Ready sandbox whose infra exited is
/// reported NotReady).
pub fn list(d: &Daemon) -> Result<Vec<SandboxRecord>> {
    let mut out = Vec::new();
    for (_, r) in d.store.list::<SandboxRecord>(SANDBOXES)? {
        out.push(refresh(d, r)?);
    }
    Ok(out)
}

/// Marks a Ready sandbox NotReady when its infra process has exited (exit file present).
pub fn refresh(d: &Daemon, mut r: SandboxRecord) -> Result<SandboxRecord> {
    if r.state == SandboxState::Ready {
        let paths = SandboxPaths::new(d, &r.id);
        if r.infra_watched(&paths).observe().is_some() {
            r.state = SandboxState::NotReady;
            // Never brings back a sandbox that RemovePodSandbox deleted since it was read.
            d.store.update(SANDBOXES, &r.id, &r)?;
        }
    }
    Ok(r)
}

/// Restart recovery: re-reserve names and mark sandboxes whose infra died NotReady.
pub async fn recover(d: &Daemon) -> Result<()> {
    for (_, r) in d.store.list::<SandboxRecord>(SANDBOXES)? {
        d.reserve_name("pod sandbox", &SandboxRecord::name_key(&r.config), &r.id)?;
        let mut r = refresh(d, r)?;
        if r.state == SandboxState::Ready {
            // A pod whose handler is gone from this host (binary removed, config changed) is
            // logged and left as it is: one such pod must not keep the daemon from starting.
            let state = match d.runtime(&r.runtime_handler) {
                Ok(rt) => rt.state(&r.id).await,
                Err(e) => {
                    tracing::error!(sandbox = %r.id, error = %e, "recovery: cannot ask the pod's runtime handler");
                    continue;
                }
            };
            let alive = matches!(state?, Some(s) if s.status == "running");
            if !alive {
                tracing::warn!(sandbox = %r.id, "infra container is gone; marking pod sandbox NotReady");
                r.state = SandboxState::NotReady;
                d.store.put(SANDBOXES, &r.id, &r)?;
            }
        }
    }
    Ok(())
}

/// A TCP connection to `port` on localhost inside the pod's network namespace (the host's for a
/// host-network pod), for CRI PortForward.
///
/// Errors: NotFound; FailedPrecondition when the pod is not ready; Network when nothing listens
/// there (the message says `connect` and the errno).
pub async fn port_forward(d: &Daemon, id: &str, port: u16) -> Result<tokio::net::TcpStream> {
    let r = refresh(d, get(d, id)?)?;
    if r.state != SandboxState::Ready {
        return Err(Error::FailedPrecondition(format!("pod sandbox {} is not ready: cannot forward port {port}", r.id)));
    }
    let std_stream = match r.netns_path.clone() {
        Some(netns) => tokio::task::spawn_blocking(move || crate::network::netns::connect_tcp(&netns, port))
            .await
            .map_err(|e| Error::io("port-forward dial task")(std::io::Error::other(e.to_string())))??,
        None => {
            return tokio::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port))
                .await
                .map_err(Error::io(format!("connecting to 127.0.0.1:{port} on the host network")))
        }
    };
    std_stream.set_nonblocking(true).map_err(Error::io("port-forward socket"))?;
    tokio::net::TcpStream::from_std(std_stream).map_err(Error::io("port-forward socket"))
}
