//! The pod sandbox record (table `sandboxes`) and its files.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::liveness::Watched;
use super::table::Record;
use super::Roots;
use crate::cri::v1::{NamespaceMode, NamespaceOption, PodSandboxConfig};

/// State of a pod sandbox, as CRI `PodSandboxState` names them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum SandboxState {
    /// `SANDBOX_READY`: the pod's namespaces are held (its infra process runs, or they are
    /// pinned) and the network is set up.
    Ready,
    /// `SANDBOX_NOTREADY`: being created, stopped, or the infra died (or, for a pod without
    /// one, its pinned namespaces were found gone at restart).
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
    /// Host PID of the infra process (0 before it started, and always for a pod without one).
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
    /// Whether StopPodSandbox has run to its end (NRI's StopPodSandbox is sent once).
    #[serde(default)]
    pub stopped: bool,
    /// `Some` for a pod without an infra process (CRI-O's `drop_infra_ctr`): its IPC and UTS
    /// namespaces are pinned at these files instead (its network namespace at `netns_path`).
    /// `None` for a pod whose infra process holds them, and for every record written before
    /// pods without one existed.
    #[serde(default)]
    pub pinned: Option<PinnedNamespaces>,
}

/// The namespaces of a pod without an infra process, each bind-mounted onto a file (the way
/// `ip netns` pins a network namespace, CRI-O's `pinns`); `None` = the pod uses the host's.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PinnedNamespaces {
    /// The pod's IPC namespace: `<run_root>/ns/ipc-<first 16 hex of the ID>`.
    pub ipc: Option<PathBuf>,
    /// The pod's UTS namespace (the pod's hostname): `<run_root>/ns/uts-<first 16 hex>`.
    pub uts: Option<PathBuf>,
    /// The kernel's boot ID (`/proc/sys/kernel/random/boot_id`) when the pod was made: a pod of
    /// an earlier boot has lost its namespaces even when nothing was pinned (host network and
    /// host IPC) or its pin files lie on a disk that outlived the reboot. Empty: unknown.
    #[serde(default)]
    pub boot_id: String,
}

impl PinnedNamespaces {
    /// The pinned files, IPC first.
    pub fn files(&self) -> impl Iterator<Item = &PathBuf> {
        self.ipc.iter().chain(self.uts.iter())
    }
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

    /// Whether an infra process holds the pod's namespaces (else they are [`Self::pinned`]).
    pub fn has_infra(&self) -> bool {
        self.pinned.is_none()
    }

    /// The infra process as the liveness checks see it.
    pub fn infra_watched<'a>(&self, paths: &'a SandboxPaths) -> Watched<'a> {
        Watched { exit_file: &paths.exit_file, monitor_pid: self.monitor_pid, pid: self.infra_pid }
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
    /// `<run_root>/ns`: where the namespaces of pods without an infra process are pinned (a
    /// shared mount point, as the netns dir).
    pub ns_dir: PathBuf,
}

impl SandboxPaths {
    /// Paths for sandbox `id`.
    pub fn new(roots: &impl Roots, id: &str) -> SandboxPaths {
        let bundle = roots.run_root().join("sandboxes").join(id);
        SandboxPaths {
            rootfs: bundle.join("rootfs"),
            shm: bundle.join("shm"),
            exit_file: bundle.join("exit"),
            bundle,
            state: roots.root().join("sandboxes").join(id),
            ns_dir: Self::ns_dir(roots),
        }
    }
    /// `<run_root>/ns`, the one dir of every pod's pins ([`SandboxPaths::ns_dir`]).
    pub fn ns_dir(roots: &impl Roots) -> PathBuf {
        roots.run_root().join("ns")
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

impl Record for SandboxRecord {
    const TABLE: &'static str = crate::state::SANDBOXES;
    fn id(&self) -> &str {
        &self.id
    }
}
