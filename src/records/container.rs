//! The container record (table `containers`), its files, and how the end of its process is
//! folded into it.
//!
//! A container's state is its record plus its monitor's exit file: the record says what berth
//! did (created, started), the exit file says what happened (it exited, with what code).
//! [`apply_end`] is the one place an end becomes record fields; [`super::Records`] is the one
//! place that calls it on a read.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::liveness::{Ended, Watched};
use super::sandbox::SandboxRecord;
use super::table::Record;
use super::Roots;
use crate::cri::v1::ContainerConfig;
use crate::monitor::ExitInfo;

/// State of a container, as CRI `ContainerState` names them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum ContainerState {
    /// `CONTAINER_CREATED`: `runtime create` done, process waiting to be started.
    Created,
    /// `CONTAINER_RUNNING`.
    Running,
    /// `CONTAINER_EXITED`.
    Exited,
    /// `CONTAINER_UNKNOWN`: its runtime state could not be established.
    Unknown,
}

/// One container as stored in the metadata store (table `containers`, key = ID).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// 64-hex ID; also its OCI runtime ID.
    pub id: String,
    /// The pod sandbox it belongs to.
    pub sandbox_id: String,
    /// The CRI config it was created from.
    pub config: ContainerConfig,
    /// Image ID (`sha256:<config digest>`).
    pub image_id: String,
    /// Digested reference (`repo@sha256:...`), or the image ID when the image has no repo digest.
    pub image_ref: String,
    /// The runtime handler of its sandbox.
    pub runtime_handler: String,
    /// Current state, as of the last fold of its exit (see `super::Records::fold_container`).
    pub state: ContainerState,
    /// Nanoseconds since the epoch; 0 = not yet.
    pub created_at: i64,
    /// Nanoseconds since the epoch; 0 = not yet.
    pub started_at: i64,
    /// Nanoseconds since the epoch; 0 = not yet.
    pub finished_at: i64,
    /// Exit code (128+signal when killed by a signal).
    pub exit_code: i32,
    /// CRI reason: `Completed`, `Error`, `OOMKilled`.
    pub reason: String,
    /// Human-readable detail.
    pub message: String,
    /// Host PID of the container's init (0 before create finished).
    pub pid: i32,
    /// PID of its `berth-monitor` (0 before create finished).
    #[serde(default)]
    pub monitor_pid: i32,
    /// Absolute CRI log path (log_directory/log_path), empty when none.
    pub log_path: String,
    /// The stop signal: CRI `stop_signal` when the config set one, else the image's StopSignal
    /// (empty = SIGTERM); see `container::signal`.
    pub stop_signal: String,
    /// The effective user the spec gave its process (uid, gid, supplemental groups), for
    /// ContainerStatus.user; resolved once at create.
    #[serde(default)]
    pub user: Option<crate::cri::v1::ContainerUser>,
    /// The name reservation key ([`ContainerRecord::name_key`]), kept so it can be released
    /// even after the pod sandbox record is gone.
    pub name_key: String,
}

impl ContainerRecord {
    /// Name reservation key, as kubelet builds container names:
    /// `name_podname_namespace_poduid_attempt`.
    pub fn name_key(config: &ContainerConfig, sandbox: &SandboxRecord) -> String {
        let m = config.metadata.clone().unwrap_or_default();
        let p = sandbox.config.metadata.clone().unwrap_or_default();
        format!("{}_{}_{}_{}_{}", m.name, p.name, p.namespace, p.uid, m.attempt)
    }
}

#[cfg(test)]
impl ContainerRecord {
    /// A Created record of container `id` in pod `sandbox_id` with an empty config, for tests.
    pub(crate) fn for_test(id: &str, sandbox_id: &str) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            sandbox_id: sandbox_id.into(),
            config: Default::default(),
            image_id: String::new(),
            image_ref: String::new(),
            runtime_handler: String::new(),
            state: ContainerState::Created,
            created_at: 0,
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            pid: 0,
            monitor_pid: 0,
            log_path: String::new(),
            stop_signal: String::new(),
            name_key: id.into(),
            user: None,
        }
    }
}

/// Files of a container.
pub struct ContainerPaths {
    /// `<run_root>/containers/<id>`: the OCI bundle (config.json, monitor files).
    pub bundle: PathBuf,
    /// `<bundle>/rootfs`: the overlay mount point.
    pub rootfs: PathBuf,
    /// `<bundle>/exit`: the monitor's exit file.
    pub exit_file: PathBuf,
    /// `<root>/containers/<id>`: upper and work dirs of the writable layer.
    pub state: PathBuf,
}

impl ContainerPaths {
    /// Paths of container `id`.
    pub fn new(roots: &impl Roots, id: &str) -> ContainerPaths {
        let bundle = roots.run_root().join("containers").join(id);
        ContainerPaths {
            rootfs: bundle.join("rootfs"),
            exit_file: bundle.join("exit"),
            bundle,
            state: roots.root().join("containers").join(id),
        }
    }

    /// The container's process as the liveness checks see it.
    pub fn watched(&self, r: &ContainerRecord) -> Watched<'_> {
        Watched { exit_file: &self.exit_file, monitor_pid: r.monitor_pid, pid: r.pid }
    }
}

impl Record for ContainerRecord {
    const TABLE: &'static str = crate::state::CONTAINERS;
    fn id(&self) -> &str {
        &self.id
    }
}

/// The record after its process ended, recorded or lost.
pub fn apply_end(r: ContainerRecord, ended: &Ended) -> ContainerRecord {
    match ended {
        Ended::Recorded(exit) => apply_exit(r, exit),
        Ended::Lost => {
            tracing::warn!(container = %r.id, "container process and its monitor are gone without an exit file");
            let mut r = r;
            r.state = ContainerState::Exited;
            r.finished_at = crate::util::now_nanos().max(r.started_at);
            r.exit_code = 255;
            r.reason = "Unknown".into();
            r.message = "berth-monitor of this container exited without recording an exit code (killed?)".into();
            r
        }
    }
}

/// The record after its process exited: state, finished_at, exit code and CRI reason.
pub fn apply_exit(mut r: ContainerRecord, exit: &ExitInfo) -> ContainerRecord {
    r.state = ContainerState::Exited;
    r.finished_at = exit.exited_at.max(r.started_at);
    r.exit_code = exit.exit_code;
    if exit.oom_killed {
        crate::metrics::container_oom_killed();
    }
    r.reason = if exit.oom_killed {
        "OOMKilled"
    } else if exit.exit_code == 0 {
        "Completed"
    } else {
        "Error"
    }
    .to_string();
    r
}
