//! Mounts and namespaces (issue #5): recursive read-only mounts, mount propagation, hostPath
//! symlinks, CRI devices, PID namespace TARGET and the pod's PID 1 reaping zombies.

use super::Case;

/// The cases of this module, in run order.
pub fn cases() -> Vec<Case> {
    vec![]
}
