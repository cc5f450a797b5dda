//! AppArmor, SELinux, sysctls and privileged containers in unprivileged pods (issue #5).

use super::Case;

/// The cases of this module, in run order.
pub fn cases() -> Vec<Case> {
    vec![]
}
