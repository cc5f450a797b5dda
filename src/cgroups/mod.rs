//! Cgroup drivers: how a pod's cgroup parent is written and where its containers' cgroups go.
//!
//! Two drivers, as kubelet, CRI-O and containerd name them (CRI `CgroupDriver`):
//!
//! - **cgroupfs**: the parent is an absolute path under the cgroup mount (`/kubepods/burstable/pod<uid>`);
//!   a container's OCI `linux.cgroupsPath` is `<parent>/berth-<id>` and the runtime makes the
//!   directories itself.
//! - **systemd**: the parent is a slice unit name (`kubepods-burstable-pod<uid>.slice`); a
//!   container's cgroupsPath is runc's `slice:prefix:name` form, `<parent>:berth:<id>`, and the
//!   runtime (run with `--systemd-cgroup`) asks systemd for a transient scope `berth-<id>.scope` in
//!   that slice. A slice name maps to a path the way systemd nests slices (`a-b.slice` lives in
//!   `a.slice`: systemd.slice(5); runc's `ExpandSlice`).
//!
//! The form of a parent says its driver, so paths are computed from the parent alone; the daemon
//! refuses a parent of the other driver's form when a pod is created ([`normalize_parent`]).
//! kubelet's systemd driver sends a pod's parent as the slice's cgroupfs path
//! (`/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice`); berth keeps
//! its last component, the slice name, as containerd (`path.Base`) and CRI-O do.
//! `systemd` is the D-Bus side of the systemd driver (berth's own monitor scopes).

pub mod nest;
pub mod systemd;

use std::fmt;

/// Prefix of the cgroup (cgroupfs) or scope (systemd) of every container and infra container:
/// `berth-<id>` / `berth-<id>.scope`. CRI-O uses `crio`, containerd `cri-containerd`.
pub const PREFIX: &str = "berth";

/// A cgroup driver (config `cgroup_manager`; CRI `LinuxRuntimeConfiguration.cgroup_driver`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Driver {
    /// Cgroups are directories berth's runtime makes under the cgroup mount.
    #[default]
    Cgroupfs,
    /// Cgroups are systemd units (slices and scopes) made over D-Bus.
    Systemd,
}

impl Driver {
    /// The config spelling: `cgroupfs` or `systemd` (CRI-O's `cgroup_manager` values).
    pub fn parse(s: &str) -> Option<Driver> {
        match s {
            "cgroupfs" => Some(Driver::Cgroupfs),
            "systemd" => Some(Driver::Systemd),
            _ => None,
        }
    }

    /// The cgroup parent of pods whose config gives none when the configured one is the default:
    /// `/berth` (cgroupfs) or `berth.slice` (systemd).
    pub fn default_parent(self) -> &'static str {
        match self {
            Driver::Cgroupfs => "/berth",
            Driver::Systemd => "berth.slice",
        }
    }

    /// The driver whose form `parent` has: a slice unit name is systemd's, anything else
    /// cgroupfs's.
    pub fn of_parent(parent: &str) -> Driver {
        if is_slice_name(parent) {
            Driver::Systemd
        } else {
            Driver::Cgroupfs
        }
    }
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Driver::Cgroupfs => "cgroupfs",
            Driver::Systemd => "systemd",
        })
    }
}

/// Whether `s` looks like a slice unit name: ends in `.slice` and has no `/`.
fn is_slice_name(s: &str) -> bool {
    s.ends_with(".slice") && !s.contains('/')
}

/// Checks that `parent` is a cgroup parent of `driver`'s form. `Err` holds what was expected,
/// for an InvalidArgument naming the field (`config.linux.cgroup_parent` or `cgroup_parent`).
/// See [`normalize_parent`] for the forms.
pub fn validate_parent(driver: Driver, parent: &str) -> Result<(), String> {
    normalize_parent(driver, parent).map(drop)
}

/// The cgroup parent as berth records it, from what a pod config (or the config file) gives.
///
/// cgroupfs: an absolute path with no `..` component whose last component is not a slice;
/// returned as given. systemd: a slice name systemd accepts (systemd.unit(5) unit name
/// characters; dashes separate nesting levels, so no empty component: `a--b.slice` and
/// `-a.slice` are refused, as by runc's `ExpandSlice`), or that slice's cgroupfs path as kubelet
/// sends it (which must be where the slice really nests); returned as the slice name.
/// `Err` says what was expected.
pub fn normalize_parent(driver: Driver, parent: &str) -> Result<String, String> {
    let trimmed = parent.trim_end_matches('/');
    let base = trimmed.rsplit('/').next().unwrap_or(trimmed);
    match driver {
        Driver::Cgroupfs => {
            if base.ends_with(".slice") {
                return Err(format!(
                    "{parent:?} is a systemd slice, but berth runs with cgroup_manager = \"cgroupfs\": give a cgroupfs path (e.g. /kubepods/besteffort/pod<uid>) or run kubelet and berth with the same cgroup driver"
                ));
            }
            if !parent.starts_with('/') || parent.split('/').any(|c| c == "..") {
                return Err(format!("{parent:?} must be an absolute cgroupfs path without \"..\" (e.g. /kubepods/besteffort/pod<uid>)"));
            }
            Ok(parent.to_string())
        }
        Driver::Systemd => {
            if !base.ends_with(".slice") {
                return Err(format!(
                    "{parent:?} is not a systemd slice, but berth runs with cgroup_manager = \"systemd\": give a slice name (e.g. kubepods-besteffort-pod<uid>.slice) or run kubelet and berth with the same cgroup driver"
                ));
            }
            let path = expand_slice(base)?;
            if trimmed.contains('/') && trimmed != path {
                return Err(format!("{parent:?}: slice {base} lives at {path}, not there"));
            }
            Ok(base.to_string())
        }
    }
}

/// The cgroup path (relative to the cgroup mount, with a leading `/`) of slice `slice`:
/// `kubepods-besteffort-pod1.slice` -> `/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice`;
/// `-.slice` (the root slice) -> `/`. Follows systemd.slice(5) and runc's `ExpandSlice`.
/// Errors name what is wrong with the name.
pub fn expand_slice(slice: &str) -> Result<String, String> {
    let Some(name) = slice.strip_suffix(".slice") else {
        return Err(format!("{slice:?} is not a slice name (must end in .slice)"));
    };
    if slice.contains('/') {
        return Err(format!("{slice:?}: a slice name has no \"/\""));
    }
    if name == "-" {
        return Ok("/".into());
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || ":_.-\\".contains(*c))) {
        return Err(format!("{slice:?}: {bad:?} is not allowed in a unit name (letters, digits, \":_.-\\\")"));
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for component in name.split('-') {
        if component.is_empty() {
            return Err(format!("{slice:?}: empty component (a slice name may not start or end with \"-\" or hold \"--\")"));
        }
        path.push('/');
        path.push_str(&prefix);
        path.push_str(component);
        path.push_str(".slice");
        prefix.push_str(component);
        prefix.push('-');
    }
    Ok(path)
}

/// The OCI `linux.cgroupsPath` (runtime-spec config-linux.md "Cgroups path") of container or
/// infra container `id` in a pod whose cgroup parent is `parent`: `<parent>/berth-<id>` for a
/// cgroupfs parent, `<parent>:berth:<id>` (runc's systemd form, scope `berth-<id>.scope`) for a
/// slice.
pub fn runtime_path(parent: &str, id: &str) -> String {
    match Driver::of_parent(parent) {
        Driver::Cgroupfs => format!("{}/{PREFIX}-{id}", parent.trim_end_matches('/')),
        Driver::Systemd => format!("{parent}:{PREFIX}:{id}"),
    }
}

/// Where the cgroup of [`runtime_path`]`(parent, id)` is, relative to the cgroup mount (v2) or
/// to each controller's hierarchy (v1), with a leading `/`: `<parent>/berth-<id>` or
/// `<expanded slice>/berth-<id>.scope`. An invalid slice (refused at pod creation) maps under `/`.
pub fn fs_path(parent: &str, id: &str) -> String {
    match Driver::of_parent(parent) {
        Driver::Cgroupfs => runtime_path(parent, id),
        Driver::Systemd => {
            let base = expand_slice(parent).unwrap_or_else(|_| "/".into());
            format!("{}/{}", base.trim_end_matches('/'), scope_name(id))
        }
    }
}

/// Where the pod cgroup `parent` itself is, relative to the cgroup mount, with a leading `/`:
/// the path itself (cgroupfs) or the expanded slice (systemd; `/` for an invalid one).
pub fn parent_fs_path(parent: &str) -> String {
    match Driver::of_parent(parent) {
        Driver::Cgroupfs => parent.to_string(),
        Driver::Systemd => expand_slice(parent).unwrap_or_else(|_| "/".into()),
    }
}

/// The transient scope runc (with `--systemd-cgroup`) makes for container `id`: `berth-<id>.scope`.
pub fn scope_name(id: &str) -> String {
    format!("{PREFIX}-{id}.scope")
}

/// The transient scope berth puts container `id`'s monitor in under the systemd driver:
/// `berth-monitor-<id>.scope` (CRI-O: `crio-conmon-<id>.scope`).
pub fn monitor_scope_name(id: &str) -> String {
    format!("{PREFIX}-monitor-{id}.scope")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_expand_as_systemd_nests_them() {
        assert_eq!(
            expand_slice("kubepods-besteffort-pod1.slice").unwrap(),
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice"
        );
        assert_eq!(expand_slice("berth.slice").unwrap(), "/berth.slice");
        assert_eq!(expand_slice("-.slice").unwrap(), "/");
        for bad in ["a--b.slice", "-a.slice", "a-.slice", "a/b.slice", "a.scope", ".slice", "a b.slice"] {
            assert!(expand_slice(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn paths_follow_the_parent_form() {
        assert_eq!(runtime_path("/kubepods/pod1", "c1"), "/kubepods/pod1/berth-c1");
        assert_eq!(runtime_path("/berth/", "x"), "/berth/berth-x");
        assert_eq!(fs_path("/kubepods/pod1", "c1"), "/kubepods/pod1/berth-c1");
        assert_eq!(runtime_path("kubepods-pod1.slice", "c1"), "kubepods-pod1.slice:berth:c1");
        assert_eq!(fs_path("kubepods-pod1.slice", "c1"), "/kubepods.slice/kubepods-pod1.slice/berth-c1.scope");
        assert_eq!(fs_path("-.slice", "c1"), "/berth-c1.scope");
        assert_eq!(parent_fs_path("kubepods-pod1.slice"), "/kubepods.slice/kubepods-pod1.slice");
        assert_eq!(parent_fs_path("/kubepods/pod1"), "/kubepods/pod1");
    }

    #[test]
    fn kubelets_slice_paths_become_slice_names() {
        let kubelet = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice";
        assert_eq!(normalize_parent(Driver::Systemd, kubelet).unwrap(), "kubepods-besteffort-pod1.slice");
        assert_eq!(normalize_parent(Driver::Systemd, "kubepods.slice").unwrap(), "kubepods.slice");
        let e = normalize_parent(Driver::Systemd, "/other.slice/kubepods-pod1.slice").unwrap_err();
        assert!(e.contains("lives at /kubepods.slice/kubepods-pod1.slice"), "{e}");
        let e = normalize_parent(Driver::Cgroupfs, kubelet).unwrap_err();
        assert!(e.contains("systemd slice"), "{e}");
        assert_eq!(normalize_parent(Driver::Cgroupfs, "/kubepods/pod1").unwrap(), "/kubepods/pod1");
    }

    #[test]
    fn parents_of_the_other_driver_are_refused_with_the_reason() {
        assert!(validate_parent(Driver::Cgroupfs, "/kubepods/pod1").is_ok());
        assert!(validate_parent(Driver::Systemd, "kubepods-pod1.slice").is_ok());
        let e = validate_parent(Driver::Cgroupfs, "kubepods-pod1.slice").unwrap_err();
        assert!(e.contains("systemd slice") && e.contains("cgroupfs"), "{e}");
        let e = validate_parent(Driver::Systemd, "/kubepods/pod1").unwrap_err();
        assert!(e.contains("not a systemd slice"), "{e}");
        assert!(validate_parent(Driver::Cgroupfs, "/a/../b").is_err());
        assert!(validate_parent(Driver::Cgroupfs, "relative").is_err());
        assert!(validate_parent(Driver::Systemd, "a--b.slice").is_err());
    }
}
