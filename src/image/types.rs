//! Image facts other modules need, kept independent of how images are pulled and stored.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The parts of an OCI image config (`config` object of application/vnd.oci.image.config.v1+json,
/// image-spec config.md) that container creation uses. Missing fields are empty.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ImageRuntimeConfig {
    /// `User`: `name`, `uid`, `name:group`, `uid:gid`, or empty for root.
    pub user: String,
    /// `Env`: `KEY=value` entries.
    pub env: Vec<String>,
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `WorkingDir`; empty means `/`.
    pub working_dir: String,
    /// `Labels`.
    pub labels: BTreeMap<String, String>,
    /// `StopSignal`, e.g. `SIGQUIT` or `3`; empty means SIGTERM.
    pub stop_signal: String,
    /// `ExposedPorts` keys, e.g. `80/tcp`.
    pub exposed_ports: Vec<String>,
    /// `Volumes` keys (container paths).
    pub volumes: Vec<String>,
}
