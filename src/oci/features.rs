//! What an OCI runtime says it supports: `<runtime> features` (OCI runtime-spec features.md,
//! runc >= 1.1). berth asks once per runtime handler at start and uses the answer for the CRI
//! `RuntimeHandlerFeatures` in Status and to decide what a spec may ask for.
//!
//! Placeholder (issue #5): `probe` does not run the runtime yet, so nothing is reported as
//! supported.

use std::path::Path;

/// The parts of a runtime's `features` document berth uses. A runtime without a `features`
/// command (runc < 1.1) supports nothing here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeFeatures {
    /// `mountOptions`: the mount options the runtime knows (e.g. `rro` for recursive read-only).
    pub mount_options: Vec<String>,
    /// `linux.namespaces`: the namespace types it can create (`user`, `cgroup`, ...).
    pub namespaces: Vec<String>,
    /// `linux.mountExtensions.idmap.enabled`: it applies a mount's `uidMappings`/`gidMappings`
    /// itself (idmapped mounts).
    pub idmap_mounts: bool,
}

impl RuntimeFeatures {
    /// Whether the runtime knows the `rro` mount option (CRI `Mount.recursive_read_only`).
    pub fn recursive_read_only(&self) -> bool {
        self.mount_options.iter().any(|o| o == "rro")
    }

    /// Whether the runtime can create a user namespace.
    pub fn user_namespaces(&self) -> bool {
        self.namespaces.iter().any(|n| n == "user")
    }
}

/// Runs `<runtime> features` and parses its output.
pub fn probe(_runtime: &Path) -> RuntimeFeatures {
    RuntimeFeatures::default()
}
