//! Validation of a pod's sysctls (CRI `LinuxPodSandboxConfig.sysctls`).
//!
//! Placeholder: no checks yet (issue #5). The filled module accepts only namespaced sysctls whose
//! namespace the pod owns and refuses the rest with InvalidArgument naming the key.

use k8s_cri::v1::PodSandboxConfig;

use crate::daemon::Result;

/// Checks every sysctl of `config` before anything of the pod is created.
pub fn validate(_config: &PodSandboxConfig) -> Result<()> {
    Ok(())
}
