//! The mount list of a container spec (OCI runtime-spec config.md "Mounts"; runc mounts them in
//! order).
//!
//! Order, as containerd's CRI plugin builds it: the default filesystems (`/proc`, `/dev`,
//! `/dev/pts`, `/dev/mqueue`, `/sys`, `/sys/fs/cgroup`), then the pod's `/dev/shm`, `/etc/hosts`,
//! `/etc/resolv.conf`, `/etc/hostname`, then the CRI mounts sorted by depth (parents first).
//! A CRI mount replaces any earlier mount at the same container path; a CRI mount at `/dev`
//! also replaces the default mounts below `/dev`.

use crate::cri::v1 as cri;
use oci_spec::runtime::Mount;
use std::path::{Component, Path, PathBuf};

use super::{ContainerContext, SandboxContext, SpecError};
use crate::oci::features::RuntimeFeatures;

/// The mounts of a container and the rootfs propagation its CRI mounts need.
#[derive(Debug, Clone)]
pub struct ContainerMounts {
    pub mounts: Vec<Mount>,
    /// `rshared` when a CRI mount is BIDIRECTIONAL, `rslave` when one is HOST_TO_CONTAINER (the
    /// container's root must propagate for those mounts to), else `None`.
    pub rootfs_propagation: Option<String>,
}

/// One mount entry.
pub fn mount(destination: &str, typ: &str, source: impl Into<PathBuf>, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(destination))
        .set_typ(Some(typ.to_string()))
        .set_source(Some(source.into()))
        .set_options(Some(options.iter().map(|s| s.to_string()).collect()));
    m
}

/// The default filesystems of every container; `/sys` and `/sys/fs/cgroup` are read-only unless
/// `privileged`.
pub fn default_mounts(privileged: bool) -> Vec<Mount> {
    let ro = if privileged { "rw" } else { "ro" };
    let mut v = infra_mounts();
    v.extend([
        mount("/dev/pts", "devpts", "devpts", &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
        mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", ro]),
        mount("/sys/fs/cgroup", "cgroup", "cgroup", &["nosuid", "noexec", "nodev", "relatime", ro]),
    ]);
    v
}

/// The infra process's mounts, and the first two of every container: `/proc` and a small `/dev`
/// tmpfs.
pub fn infra_mounts() -> Vec<Mount> {
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
    ]
}

/// The OCI propagation option for a CRI `MountPropagation` value (unknown values are private).
pub fn propagation_option(p: i32) -> &'static str {
    match cri::MountPropagation::try_from(p) {
        Ok(cri::MountPropagation::PropagationHostToContainer) => "rslave",
        Ok(cri::MountPropagation::PropagationBidirectional) => "rshared",
        _ => "rprivate",
    }
}

/// Cleans an absolute container path lexically (`/a/./b/../c/` -> `/a/c`); `None` when relative.
pub fn clean_container_path(p: &str) -> Option<String> {
    let path = Path::new(p);
    if !path.is_absolute() {
        return None;
    }
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => parts.push(n),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    let mut out = String::new();
    for p in &parts {
        out.push('/');
        out.push_str(&p.to_string_lossy());
    }
    if out.is_empty() {
        out.push('/');
    }
    Some(out)
}

/// Resolves a CRI mount's host path: a missing path is created as a directory (mode 0755, as
/// CRI-O and containerd do, so `hostPath` volumes without a type work), then symlinks are
/// resolved (`canonicalize`) so runc binds what the path names now.
pub fn prepare_host_path(host_path: &str) -> std::io::Result<PathBuf> {
    let p = Path::new(host_path);
    match std::fs::symlink_metadata(p) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new().recursive(true).mode(0o755).create(p)?;
        }
        Err(e) => return Err(e),
    }
    std::fs::canonicalize(p)
}

use std::os::unix::fs::DirBuilderExt;

/// The bind mount for one CRI mount: `rbind`, the propagation, and `ro` or `rw` (plus `rro`
/// when `recursive_read_only`). `features` are the pod runtime's `features` (for `rro`).
///
/// Errors (the CRI asks runtimes to refuse what they cannot honour):
/// - [`SpecError::InvalidMount`]: a relative container path, an empty host path,
///   `recursive_read_only` without `readonly` or with a propagation other than PRIVATE
///   (CRI `Mount.recursive_read_only`: "readonly must be true, propagation must be private"),
///   a BIDIRECTIONAL mount whose host mount is not shared, a HOST_TO_CONTAINER one whose host
///   mount is neither shared nor slave (containerd's `ensureShared`/`ensureSharedOrSlave`);
/// - [`SpecError::RuntimeLacks`]: `recursive_read_only` on a runtime whose features lack `rro`,
///   id-mapped mounts, image volumes;
/// - [`SpecError::MountSource`]: the host path cannot be created or resolved (e.g. a dangling
///   symlink).
pub fn cri_mount(container: &str, m: &cri::Mount, features: &RuntimeFeatures) -> Result<Mount, SpecError> {
    let invalid =
        |reason: String| SpecError::InvalidMount { container: container.to_string(), container_path: m.container_path.clone(), reason };
    let dest = clean_container_path(&m.container_path).ok_or_else(|| invalid("container_path must be absolute".into()))?;
    if m.host_path.is_empty() {
        let image = m.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
        if !image.is_empty() {
            return Err(SpecError::Unsupported { container: container.to_string(), field: "mounts.image", value: image });
        }
        return Err(invalid("host_path is empty".into()));
    }
    if !Path::new(&m.host_path).is_absolute() {
        // Checked before anything is created: a relative path would land in the daemon's cwd.
        return Err(invalid(format!("host_path {:?} must be absolute", m.host_path)));
    }
    let propagation = cri::MountPropagation::try_from(m.propagation).unwrap_or(cri::MountPropagation::PropagationPrivate);
    if m.recursive_read_only {
        if !m.readonly {
            return Err(invalid(
                "mounts[].recursive_read_only is true but readonly is false: a recursive read-only mount must also set readonly".into(),
            ));
        }
        if propagation != cri::MountPropagation::PropagationPrivate {
            return Err(invalid(format!(
                "mounts[].recursive_read_only is true with propagation {}: a recursive read-only mount must use PROPAGATION_PRIVATE",
                propagation.as_str_name()
            )));
        }
        if !features.recursive_read_only() {
            return Err(SpecError::RuntimeLacks {
                container: container.to_string(),
                field: "mounts[].recursive_read_only",
                feature: "the `rro` mount option (recursive read-only mounts)",
            });
        }
    }
    if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
        return Err(SpecError::Unsupported {
            container: container.to_string(),
            field: "mounts.uid_mappings/gid_mappings",
            value: format!("id-mapped mount at {:?}", m.container_path),
        });
    }
    if propagation != cri::MountPropagation::PropagationPrivate {
        // Checked before a missing host path is created, on the deepest part of it that exists
        // (a new directory lands on that mount), so a refusal leaves nothing behind.
        let existing = nearest_existing(Path::new(&m.host_path));
        let info = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| invalid(format!("reading /proc/self/mountinfo to check the propagation of {}: {e}", existing.display())))?;
        check_source_propagation(&existing, propagation, &info).map_err(invalid)?;
    }
    let source = prepare_host_path(&m.host_path).map_err(|source| SpecError::MountSource {
        container: container.to_string(),
        container_path: m.container_path.clone(),
        host_path: m.host_path.clone(),
        source,
    })?;
    let mut opts = vec!["rbind", propagation_option(m.propagation), if m.readonly { "ro" } else { "rw" }];
    if m.recursive_read_only {
        // runc >= 1.1: `rro` = mount_setattr(MOUNT_ATTR_RDONLY, AT_RECURSIVE) on the bind mount,
        // so submounts of the host path are read-only too; `ro` stays for the top mount.
        opts.push("rro");
    }
    Ok(mount(&dest, "bind", source, &opts))
}

/// The canonical form of `path` when it exists, else of its deepest existing ancestor with the
/// rest appended (`/` at worst).
fn nearest_existing(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut cur = path;
    loop {
        if let Ok(c) = std::fs::canonicalize(cur) {
            return rest.iter().rev().fold(c, |acc: PathBuf, part| acc.join(part));
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                cur = parent;
            }
            _ => return PathBuf::from("/"),
        }
    }
}

/// Checks the host side of a CRI mount propagation (as containerd's CRI plugin and CRI-O do):
/// BIDIRECTIONAL needs the mount holding `source` (canonical) to be shared, HOST_TO_CONTAINER
/// needs it shared or slave; PRIVATE needs nothing. `mountinfo` is `/proc/self/mountinfo`.
/// Errors: a reason naming the path, its mount point and the command that fixes it.
pub fn check_source_propagation(source: &Path, propagation: cri::MountPropagation, mountinfo: &str) -> Result<(), String> {
    let (need, ok): (&str, fn(&crate::mountinfo::MountInfo) -> bool) = match propagation {
        cri::MountPropagation::PropagationBidirectional => ("shared", |m| m.shared),
        cri::MountPropagation::PropagationHostToContainer => ("shared or slave", |m| m.shared || m.slave),
        cri::MountPropagation::PropagationPrivate => return Ok(()),
    };
    let mounts = crate::mountinfo::parse(mountinfo);
    let Some(m) = crate::mountinfo::mount_of(&mounts, source) else {
        return Err(format!("host path {} is on no mount listed in /proc/self/mountinfo", source.display()));
    };
    if ok(m) {
        return Ok(());
    }
    Err(format!(
        "propagation {} needs host path {} to be on a {need} mount, but its mount point {} is private: \
         run `mount --make-rshared {}` on the host (or bind-mount the path onto itself and make that shared)",
        propagation.as_str_name(),
        source.display(),
        m.mount_point.display(),
        m.mount_point.display(),
    ))
}

/// All mounts of a container (see the module docs for the order and overrides). IPC mode NODE
/// binds the host's `/dev/shm`; CONTAINER (its own IPC namespace) gets a private tmpfs; POD the
/// pod's `shm_path`, or a private tmpfs when the pod has none.
pub fn container_mounts(
    sb: &SandboxContext,
    c: &ContainerContext,
    sc: &cri::LinuxContainerSecurityContext,
) -> Result<ContainerMounts, SpecError> {
    let mut cri_mounts = c.config.mounts.iter().map(|m| cri_mount(c.container_id, m, c.features)).collect::<Result<Vec<Mount>, _>>()?;
    // Parents before children (containerd's orderedMounts): stable sort by path depth.
    cri_mounts.sort_by_key(|m| m.destination().components().count());

    let ipc = super::linux::ipc_mode(sb, sc);
    let ipc_node = ipc == cri::NamespaceMode::Node;
    let mut mounts = default_mounts(sc.privileged);
    let shm_opts = ["rbind", "rprivate", "nosuid", "noexec", "nodev"];
    if ipc_node {
        mounts.push(mount("/dev/shm", "bind", "/dev/shm", &shm_opts));
    } else if let (Some(shm), false) = (sb.shm_path, ipc == cri::NamespaceMode::Container) {
        mounts.push(mount("/dev/shm", "bind", shm, &shm_opts));
    } else {
        mounts.push(mount("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]));
    }
    let file_mode = if sc.readonly_rootfs { "ro" } else { "rw" };
    for (dest, src) in [("/etc/hosts", sb.hosts_file), ("/etc/resolv.conf", sb.resolv_conf), ("/etc/hostname", sb.hostname_file)] {
        mounts.push(mount(dest, "bind", src, &["rbind", "rprivate", file_mode]));
    }

    let overrides_dev = cri_mounts.iter().any(|m| m.destination() == Path::new("/dev"));
    mounts.retain(|d| {
        let dest = d.destination();
        let overridden = cri_mounts.iter().any(|m| m.destination() == dest);
        !(overridden || overrides_dev && dest.starts_with("/dev"))
    });

    let has = |opt: &str| cri_mounts.iter().any(|m| m.options().as_ref().is_some_and(|o| o.iter().any(|x| x == opt)));
    let rootfs_propagation = if has("rshared") {
        Some("rshared".to_string())
    } else if has("rslave") {
        Some("rslave".to_string())
    } else {
        None
    };
    mounts.extend(cri_mounts);
    Ok(ContainerMounts { mounts, rootfs_propagation })
}

#[cfg(test)]
#[path = "mounts_tests.rs"]
mod tests;
