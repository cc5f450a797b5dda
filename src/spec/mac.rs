//! Mandatory access control: AppArmor profiles and SELinux labels for container processes
//! (CRI `LinuxContainerSecurityContext.apparmor` / `apparmor_profile` / `selinux_options` ->
//! OCI runtime-spec config.md "process": `apparmorProfile`, `selinuxLabel`).
//!
//! What the host supports is probed from `/sys` ([`MacHost::probe`]); the decisions are pure
//! functions of the request and a [`MacHost`], so they are unit-tested on made-up hosts.
//!
//! AppArmor (host support: `/sys/module/apparmor/parameters/enabled` reads `Y`; loaded profiles
//! are the `name (mode)` lines of `/sys/kernel/security/apparmor/profiles`):
//! - the `apparmor` SecurityProfile wins over the deprecated `apparmor_profile` string
//!   (`runtime/default`, `unconfined`, `localhost/<name>`; empty = not set), as in containerd's
//!   and CRI-O's CRI code;
//! - not set, or RuntimeDefault: berth's default profile [`DEFAULT_APPARMOR_PROFILE`]. On a host
//!   without AppArmor: no profile (as containerd). On an AppArmor host the profile is used when it
//!   is loaded; when it is not, an explicit RuntimeDefault is refused (the user asked for
//!   confinement berth cannot give) while an unset field runs without a profile and is logged once
//!   (kubelet leaves the field unset for every pod that does not ask, and refusing those would
//!   break the node). Privileged containers get no default profile (as containerd).
//! - Unconfined: `unconfined` on an AppArmor host, nothing otherwise.
//! - Localhost `<name>` (a leading `localhost/` is trimmed): the name when the host has it
//!   loaded; refused otherwise, saying whether AppArmor is off or the profile is not loaded.
//!
//! SELinux (host support: a `selinuxfs` mount at `/sys/fs/selinux`):
//! - on a host without SELinux, `selinux_options` are ignored, as containerd and CRI-O do (kubelet
//!   sends the pod's seLinuxOptions to every node; refusing them would break those pods on
//!   non-SELinux nodes). The first time options are ignored berth logs it at info, and Status
//!   reports `selinux: false` ([`host_support`]).
//! - on an SELinux host, non-privileged containers get `user:role:type:level` with the missing
//!   parts filled from `system_u:system_r:container_t:s0` (containerd's default pieces; berth does
//!   not allocate MCS categories, so without a `level` the pods share `s0`). Privileged
//!   containers get no label (as containerd). A part with characters outside the SELinux context
//!   syntax is refused.

use crate::cri::v1 as cri;
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use super::SpecError;

/// The AppArmor profile berth uses for RuntimeDefault (the role of containerd's
/// `cri-containerd.apparmor.d` and CRI-O's `crio-default`); the operator loads it (text in
/// docs/security-mac.md) with `apparmor_parser -r`.
pub const DEFAULT_APPARMOR_PROFILE: &str = "berth-default";

/// The SELinux label pieces used for a part `selinux_options` leaves empty.
pub const DEFAULT_SELINUX_USER: &str = "system_u";
pub const DEFAULT_SELINUX_ROLE: &str = "system_r";
pub const DEFAULT_SELINUX_TYPE: &str = "container_t";
pub const DEFAULT_SELINUX_LEVEL: &str = "s0";

const APPARMOR_ENABLED: &str = "/sys/module/apparmor/parameters/enabled";
const APPARMOR_PROFILES: &str = "/sys/kernel/security/apparmor/profiles";
const SELINUX_FS: &str = "/sys/fs/selinux";

const FIELD_APPARMOR: &str = "config.linux.security_context.apparmor";
const FIELD_APPARMOR_PROFILE: &str = "config.linux.security_context.apparmor_profile";

/// A MAC request berth refuses: the CRI field, the value asked for and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} = {value}: {reason}")]
pub struct MacError {
    /// The CRI field, e.g. `config.linux.security_context.apparmor`.
    pub field: &'static str,
    /// The value asked for, e.g. `localhost/my-profile`.
    pub value: String,
    /// Why it cannot be honoured and what to do.
    pub reason: String,
}

/// What the host offers, as [`process_labels_with`] needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MacHost {
    /// AppArmor is enabled (`/sys/module/apparmor/parameters/enabled` is `Y`).
    pub apparmor: bool,
    /// SELinux is enabled (`selinuxfs` is mounted at `/sys/fs/selinux`).
    pub selinux: bool,
    /// Names of the loaded AppArmor profiles (empty without AppArmor).
    pub apparmor_profiles: BTreeSet<String>,
}

impl MacHost {
    /// Probes this host. Whether AppArmor/SELinux are enabled is read once per process; the
    /// loaded AppArmor profiles are read on every call (an operator may load one at any time).
    pub fn probe() -> MacHost {
        let s = host_support();
        let apparmor_profiles = if s.apparmor {
            std::fs::read_to_string(APPARMOR_PROFILES).map(|t| parse_apparmor_profiles(&t)).unwrap_or_default()
        } else {
            BTreeSet::new()
        };
        MacHost { apparmor: s.apparmor, selinux: s.selinux, apparmor_profiles }
    }
}

/// What the host supports, for Status verbose info (`info["features"]`): serialises as
/// `{"apparmor": bool, "selinux": bool}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MacSupport {
    /// AppArmor is enabled on the host.
    pub apparmor: bool,
    /// SELinux is enabled on the host.
    pub selinux: bool,
}

/// Probes (once per process) whether the host has AppArmor and SELinux enabled.
pub fn host_support() -> MacSupport {
    static SUPPORT: OnceLock<MacSupport> = OnceLock::new();
    *SUPPORT.get_or_init(|| MacSupport {
        apparmor: std::fs::read_to_string(APPARMOR_ENABLED).map(|s| s.trim() == "Y").unwrap_or(false),
        selinux: std::fs::read_to_string("/proc/self/mountinfo").map(|m| selinuxfs_mounted(&m)).unwrap_or(false)
            && Path::new(SELINUX_FS).join("enforce").exists(),
    })
}

/// True when a `/proc/self/mountinfo` text has a `selinuxfs` mount at `/sys/fs/selinux`
/// (proc(5): the mount point is field 5, the type follows the ` - ` separator).
fn selinuxfs_mounted(mountinfo: &str) -> bool {
    mountinfo.lines().any(|l| {
        let mount_point = l.split(' ').nth(4);
        let fstype = l.split(" - ").nth(1).and_then(|r| r.split(' ').next());
        mount_point == Some(SELINUX_FS) && fstype == Some("selinuxfs")
    })
}

/// Profile names from `/sys/kernel/security/apparmor/profiles` (`name (mode)` per line; a name
/// may contain spaces, so the last ` (` splits).
pub fn parse_apparmor_profiles(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim_end();
            let name = match l.rfind(" (") {
                Some(i) if l.ends_with(')') => &l[..i],
                _ => l,
            };
            (!name.is_empty()).then(|| name.to_string())
        })
        .collect()
}

/// The AppArmor profile and SELinux label for a container's `process` (OCI runtime-spec
/// config.md "process": `apparmorProfile`, `selinuxLabel`) on this host; `None` leaves the field
/// unset. Errors: [`SpecError::Mac`] (gRPC InvalidArgument) naming the field, the profile
/// and the reason (see [`process_labels_with`]).
pub fn process_labels(container: &str, sc: &cri::LinuxContainerSecurityContext) -> Result<(Option<String>, Option<String>), SpecError> {
    process_labels_with(container, sc, &MacHost::probe())
}

/// [`process_labels`] against given host facts.
pub fn process_labels_with(
    container: &str,
    sc: &cri::LinuxContainerSecurityContext,
    host: &MacHost,
) -> Result<(Option<String>, Option<String>), SpecError> {
    let to_spec = |source: MacError| SpecError::Mac { container: container.to_string(), source };
    let apparmor = apparmor_profile(sc, host).map_err(to_spec)?;
    let selinux = selinux_label(sc, host).map_err(to_spec)?;
    Ok((apparmor, selinux))
}

/// What the request asks of AppArmor, after reading both CRI fields.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AppArmorRequest {
    /// Neither field is set.
    Unset,
    RuntimeDefault,
    Unconfined,
    Localhost(String),
}

#[allow(deprecated)] // apparmor_profile is deprecated in CRI but still sent by older kubelets
fn apparmor_request(sc: &cri::LinuxContainerSecurityContext) -> Result<(AppArmorRequest, &'static str), MacError> {
    use cri::security_profile::ProfileType;
    if let Some(p) = &sc.apparmor {
        let r = match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::RuntimeDefault) => AppArmorRequest::RuntimeDefault,
            Ok(ProfileType::Unconfined) => AppArmorRequest::Unconfined,
            Ok(ProfileType::Localhost) => AppArmorRequest::Localhost(p.localhost_ref.clone()),
            Err(_) => {
                return Err(MacError {
                    field: FIELD_APPARMOR,
                    value: format!("profile_type {}", p.profile_type),
                    reason: "expected RuntimeDefault (0), Unconfined (1) or Localhost (2)".into(),
                })
            }
        };
        return Ok((r, FIELD_APPARMOR));
    }
    let s = sc.apparmor_profile.as_str();
    let r = match s {
        "" => AppArmorRequest::Unset,
        "runtime/default" => AppArmorRequest::RuntimeDefault,
        "unconfined" => AppArmorRequest::Unconfined,
        _ => match s.strip_prefix("localhost/") {
            Some(name) => AppArmorRequest::Localhost(name.to_string()),
            None => {
                return Err(MacError {
                    field: FIELD_APPARMOR_PROFILE,
                    value: format!("{s:?}"),
                    reason: "expected \"runtime/default\", \"unconfined\" or \"localhost/<profile name>\"".into(),
                })
            }
        },
    };
    Ok((r, FIELD_APPARMOR_PROFILE))
}

/// The AppArmor profile for a container (see the module docs for the table), or `None`.
pub fn apparmor_profile(sc: &cri::LinuxContainerSecurityContext, host: &MacHost) -> Result<Option<String>, MacError> {
    let (req, field) = apparmor_request(sc)?;
    match req {
        AppArmorRequest::Unset | AppArmorRequest::RuntimeDefault if !host.apparmor || sc.privileged => Ok(None),
        AppArmorRequest::Unset => {
            if host.apparmor_profiles.contains(DEFAULT_APPARMOR_PROFILE) {
                Ok(Some(DEFAULT_APPARMOR_PROFILE.to_string()))
            } else {
                log_once(&DEFAULT_MISSING_LOGGED, || {
                    tracing::warn!(
                        profile = DEFAULT_APPARMOR_PROFILE,
                        "AppArmor is enabled but berth's default profile is not loaded: containers that do not ask for a profile run without one"
                    )
                });
                Ok(None)
            }
        }
        AppArmorRequest::RuntimeDefault => {
            if host.apparmor_profiles.contains(DEFAULT_APPARMOR_PROFILE) {
                Ok(Some(DEFAULT_APPARMOR_PROFILE.to_string()))
            } else {
                Err(MacError {
                    field,
                    value: "RuntimeDefault".into(),
                    reason: format!(
                        "berth's default AppArmor profile {DEFAULT_APPARMOR_PROFILE:?} is not loaded on this host \
                         (not in {APPARMOR_PROFILES}): load it with `apparmor_parser -r` (docs/security-mac.md) or ask for Unconfined"
                    ),
                })
            }
        }
        AppArmorRequest::Unconfined => Ok(host.apparmor.then(|| "unconfined".to_string())),
        AppArmorRequest::Localhost(r) => {
            let name = r.strip_prefix("localhost/").unwrap_or(&r).to_string();
            let value = format!("localhost/{name}");
            if name.is_empty() {
                return Err(MacError { field, value, reason: "Localhost needs a profile name in localhost_ref".into() });
            }
            if !host.apparmor {
                return Err(MacError {
                    field,
                    value,
                    reason: format!("AppArmor profile {name:?} cannot be applied: AppArmor is not enabled on this host ({APPARMOR_ENABLED} is not \"Y\")"),
                });
            }
            if !host.apparmor_profiles.contains(&name) {
                return Err(MacError {
                    field,
                    value,
                    reason: format!("AppArmor profile {name:?} is not loaded on this host (not in {APPARMOR_PROFILES}): load it with `apparmor_parser -r` first"),
                });
            }
            Ok(Some(name))
        }
    }
}

/// The SELinux process label for a container (see the module docs), or `None`.
pub fn selinux_label(sc: &cri::LinuxContainerSecurityContext, host: &MacHost) -> Result<Option<String>, MacError> {
    let opts = sc.selinux_options.clone().unwrap_or_default();
    let asked = !(opts.user.is_empty() && opts.role.is_empty() && opts.r#type.is_empty() && opts.level.is_empty());
    if !host.selinux {
        if asked {
            log_once(&SELINUX_IGNORED_LOGGED, || {
                tracing::info!(
                    "SELinux is not enabled on this host: selinux_options of containers are ignored (as containerd and CRI-O do)"
                )
            });
        }
        return Ok(None);
    }
    if sc.privileged {
        return Ok(None);
    }
    let part = |field: &'static str, v: &str, default: &str, level: bool| -> Result<String, MacError> {
        if v.is_empty() {
            return Ok(default.to_string());
        }
        let ok = v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') || (level && matches!(c, ':' | ',')));
        if ok {
            Ok(v.to_string())
        } else {
            Err(MacError {
                field,
                value: format!("{v:?}"),
                reason: if level {
                    "expected an SELinux MLS level such as s0 or s0:c1,c2".into()
                } else {
                    "expected an SELinux identifier (letters, digits, '_', '.', '-'; no ':')".into()
                },
            })
        }
    };
    let user = part("config.linux.security_context.selinux_options.user", &opts.user, DEFAULT_SELINUX_USER, false)?;
    let role = part("config.linux.security_context.selinux_options.role", &opts.role, DEFAULT_SELINUX_ROLE, false)?;
    let typ = part("config.linux.security_context.selinux_options.type", &opts.r#type, DEFAULT_SELINUX_TYPE, false)?;
    let level = part("config.linux.security_context.selinux_options.level", &opts.level, DEFAULT_SELINUX_LEVEL, true)?;
    Ok(Some(format!("{user}:{role}:{typ}:{level}")))
}

static DEFAULT_MISSING_LOGGED: AtomicBool = AtomicBool::new(false);
static SELINUX_IGNORED_LOGGED: AtomicBool = AtomicBool::new(false);

/// Runs `f` the first time only (per flag, per process).
fn log_once(flag: &AtomicBool, f: impl FnOnce()) {
    if !flag.swap(true, Ordering::Relaxed) {
        f();
    }
}

#[cfg(test)]
#[path = "mac_tests.rs"]
mod tests;
