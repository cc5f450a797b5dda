//! User namespaces (issue #5): `userns_options`, id mappings, idmapped volumes and rootfs.

use super::Case;

/// The cases of this module, in run order.
pub fn cases() -> Vec<Case> {
    vec![]
}
