//! Mandatory access control: AppArmor profiles and SELinux labels for container processes
//! (CRI `LinuxContainerSecurityContext.apparmor` / `apparmor_profile` / `selinux_options`).
//!
//! Placeholder: the profile and label are not set yet (issue #5). The filled module probes the
//! host, passes profiles and labels through when the host has them and refuses a profile the host
//! lacks.

use k8s_cri::v1 as cri;

use super::spec::SpecError;

/// The AppArmor profile and SELinux label for a container's `process` (OCI runtime-spec
/// config.md "process": `apparmorProfile`, `selinuxLabel`); `None` leaves the field unset.
pub fn process_labels(
    _container: &str,
    _sc: &cri::LinuxContainerSecurityContext,
) -> Result<(Option<String>, Option<String>), SpecError> {
    Ok((None, None))
}
