//! The mount list of a container spec (OCI runtime-spec config.md "Mounts"; runc mounts them in
//! order).
//!
//! Order, as containerd's CRI plugin builds it: the default filesystems (`/proc`, `/dev`,
//! `/dev/pts`, `/dev/mqueue`, `/sys`, `/sys/fs/cgroup`), then the pod's `/dev/shm`, `/etc/hosts`,
//! `/etc/resolv.conf`, `/etc/hostname`, then the CRI mounts sorted by depth (parents first).
//! A CRI mount replaces any earlier mount at the same container path; a CRI mount at `/dev`
//! also replaces the default mounts below `/dev`.

use k8s_cri::v1 as cri;
use oci_spec::runtime::Mount;
use std::path::{Component, Path, PathBuf};

use super::{ContainerContext, SandboxContext, SpecError};

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
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        ),
        mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", ro]),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", ro],
        ),
    ]);
    v
}

/// The infra process's mounts, and the first two of every container: `/proc` and a small `/dev`
/// tmpfs.
pub fn infra_mounts() -> Vec<Mount> {
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
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

/// The bind mount for one CRI mount: `rbind`, the propagation, and `ro` or `rw`. Errors on a
/// relative container path and on features runc 1.1 lacks (recursive read-only, id-mapped
/// mounts, image volumes) — the CRI asks runtimes to refuse what they cannot honour.
pub fn cri_mount(container: &str, m: &cri::Mount) -> Result<Mount, SpecError> {
    let invalid = |reason: String| SpecError::InvalidMount {
        container: container.to_string(),
        container_path: m.container_path.clone(),
        reason,
    };
    let dest =
        clean_container_path(&m.container_path).ok_or_else(|| invalid("container_path must be absolute".into()))?;
    if m.host_path.is_empty() {
        let image = m.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
        if !image.is_empty() {
            return Err(SpecError::Unsupported {
                container: container.to_string(),
                field: "mounts.image",
                value: image,
            });
        }
        return Err(invalid("host_path is empty".into()));
    }
    if m.recursive_read_only {
        return Err(SpecError::Unsupported {
            container: container.to_string(),
            field: "mounts.recursive_read_only",
            value: format!("true for {:?} (runc 1.1 has no rro)", m.container_path),
        });
    }
    if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
        return Err(SpecError::Unsupported {
            container: container.to_string(),
            field: "mounts.uid_mappings/gid_mappings",
            value: format!("id-mapped mount at {:?}", m.container_path),
        });
    }
    let source = prepare_host_path(&m.host_path).map_err(|source| SpecError::MountSource {
        container: container.to_string(),
        container_path: m.container_path.clone(),
        host_path: m.host_path.clone(),
        source,
    })?;
    let opts = [
        "rbind",
        propagation_option(m.propagation),
        if m.readonly { "ro" } else { "rw" },
    ];
    Ok(mount(&dest, "bind", source, &opts))
}

/// All mounts of a container (see the module docs for the order and overrides). IPC mode NODE
/// binds the host's `/dev/shm`; else the pod's `shm_path`, else a private tmpfs.
pub fn container_mounts(
    sb: &SandboxContext,
    c: &ContainerContext,
    sc: &cri::LinuxContainerSecurityContext,
) -> Result<ContainerMounts, SpecError> {
    let mut cri_mounts = c
        .config
        .mounts
        .iter()
        .map(|m| cri_mount(c.container_id, m))
        .collect::<Result<Vec<Mount>, _>>()?;
    // Parents before children (containerd's orderedMounts): stable sort by path depth.
    cri_mounts.sort_by_key(|m| m.destination().components().count());

    let ipc_node = super::linux::ipc_mode(sb, sc) == cri::NamespaceMode::Node;
    let mut mounts = default_mounts(sc.privileged);
    let shm_opts = ["rbind", "rprivate", "nosuid", "noexec", "nodev"];
    if ipc_node {
        mounts.push(mount("/dev/shm", "bind", "/dev/shm", &shm_opts));
    } else if let Some(shm) = sb.shm_path {
        mounts.push(mount("/dev/shm", "bind", shm, &shm_opts));
    } else {
        mounts.push(mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ));
    }
    let file_mode = if sc.readonly_rootfs { "ro" } else { "rw" };
    for (dest, src) in [
        ("/etc/hosts", sb.hosts_file),
        ("/etc/resolv.conf", sb.resolv_conf),
        ("/etc/hostname", sb.hostname_file),
    ] {
        mounts.push(mount(dest, "bind", src, &["rbind", "rprivate", file_mode]));
    }

    let overrides_dev = cri_mounts.iter().any(|m| m.destination() == Path::new("/dev"));
    mounts.retain(|d| {
        let dest = d.destination();
        let overridden = cri_mounts.iter().any(|m| m.destination() == dest);
        !(overridden || overrides_dev && dest.starts_with("/dev"))
    });

    let has = |opt: &str| {
        cri_mounts
            .iter()
            .any(|m| m.options().as_ref().is_some_and(|o| o.iter().any(|x| x == opt)))
    };
    let rootfs_propagation = if has("rshared") {
        Some("rshared".to_string())
    } else if has("rslave") {
        Some("rslave".to_string())
    } else {
        None
    };
    mounts.extend(cri_mounts);
    Ok(ContainerMounts {
        mounts,
        rootfs_propagation,
    })
}
