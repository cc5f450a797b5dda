//! The `linux` object of a spec (OCI runtime-spec config-linux.md): namespaces, cgroups path and
//! resources, devices, masked and read-only paths, sysctls.

use crate::cri::v1 as cri;
use oci_spec::runtime::{
    Linux, LinuxCpu, LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType, LinuxHugepageLimit, LinuxMemory, LinuxNamespace, LinuxNamespaceType,
    LinuxResources,
};
use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::{cgroups_path, ContainerContext, HostFacts, PodNamespaces, SandboxContext, SpecError};

/// Paths masked in unprivileged containers (containerd's `defaultUnixSpec`).
pub const DEFAULT_MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];

/// Paths made read-only in unprivileged containers (containerd's `defaultUnixSpec`).
pub const DEFAULT_READONLY_PATHS: [&str; 5] = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

fn namespace(typ: LinuxNamespaceType, path: Option<PathBuf>) -> LinuxNamespace {
    let mut n = LinuxNamespace::default();
    n.set_typ(typ).set_path(path);
    n
}

fn mode(opt: Option<&cri::NamespaceOption>, pick: fn(&cri::NamespaceOption) -> i32) -> cri::NamespaceMode {
    opt.map(pick).and_then(|v| cri::NamespaceMode::try_from(v).ok()).unwrap_or(cri::NamespaceMode::Pod)
}

fn pod_namespace_options(sb: &SandboxContext) -> Option<cri::NamespaceOption> {
    sb.config.linux.as_ref()?.security_context.as_ref()?.namespace_options.clone()
}

/// The container's IPC mode: its own `namespace_options.ipc`, else the pod's.
pub fn ipc_mode(sb: &SandboxContext, sc: &cri::LinuxContainerSecurityContext) -> cri::NamespaceMode {
    match sc.namespace_options.as_ref() {
        Some(o) => mode(Some(o), |o| o.ipc),
        None => mode(pod_namespace_options(sb).as_ref(), |o| o.ipc),
    }
}

/// The container's namespaces. PID: POD joins the infra's (in a pod without an infra process:
/// the host's when the pod's PID mode is NODE, else refused, as it shares none), CONTAINER gets a new one, NODE stays on the host,
/// TARGET joins `/proc/<pid_target>/ns/pid` (the caller resolves the target). IPC: NODE stays on
/// the host, CONTAINER gets a new one, POD joins the pod's (the infra's or the pinned file),
/// TARGET is refused; a container-level network mode CONTAINER or TARGET is refused.
/// UTS joins the pod's (infra's or pinned) unless the pod uses the host network (then the
/// host's). Network: the pinned netns, or the host's. User: the infra's, for a pod with its own
/// user namespace. Mount: always new. See [`PodNamespaces`].
pub fn container_namespaces(
    sb: &SandboxContext,
    container: &str,
    sc: &cri::LinuxContainerSecurityContext,
    pid_target: Option<i32>,
) -> Result<Vec<LinuxNamespace>, SpecError> {
    let opts = sc.namespace_options.clone().or_else(|| pod_namespace_options(sb));
    // The path of the pod's namespace `name` (`pid`, `ipc`, `uts`, `user`): the infra's, or the
    // pinned file; `Ok(None)` = the host's (a pinned pod whose IPC or PID mode is NODE).
    let pod_ns = |name: &'static str| -> Result<Option<PathBuf>, SpecError> {
        match (sb.namespaces, name) {
            (PodNamespaces::Infra(pid), _) => Ok(Some(PathBuf::from(format!("/proc/{pid}/ns/{name}")))),
            (PodNamespaces::Pinned { ipc, .. }, "ipc") => Ok(ipc.map(Path::to_path_buf)),
            (PodNamespaces::Pinned { uts, .. }, "uts") => Ok(uts.map(Path::to_path_buf)),
            // The pod's PID namespace is the host's (hostPID), as an infra's would have been.
            (PodNamespaces::Pinned { .. }, "pid") if mode(pod_namespace_options(sb).as_ref(), |o| o.pid) == cri::NamespaceMode::Node => {
                Ok(None)
            }
            (PodNamespaces::Pinned { .. }, _) => Err(SpecError::InvalidField {
                container: container.to_string(),
                field: if name == "pid" { "namespace_options.pid" } else { "namespace_options.userns_options" },
                reason: format!(
                    "POD asks for the pod's {name} namespace, and this pod has none to share (its own namespace_options.{} is not POD)",
                    if name == "pid" { "pid" } else { "userns_options" }
                ),
            }),
        }
    };
    let mut ns = Vec::new();
    match mode(opts.as_ref(), |o| o.pid) {
        cri::NamespaceMode::Pod => {
            if let Some(path) = pod_ns("pid")? {
                ns.push(namespace(LinuxNamespaceType::Pid, Some(path)));
            }
        }
        cri::NamespaceMode::Container => ns.push(namespace(LinuxNamespaceType::Pid, None)),
        cri::NamespaceMode::Node => {}
        cri::NamespaceMode::Target => match pid_target {
            Some(pid) => ns.push(namespace(LinuxNamespaceType::Pid, Some(PathBuf::from(format!("/proc/{pid}/ns/pid"))))),
            None => {
                return Err(SpecError::Unsupported {
                    container: container.to_string(),
                    field: "namespace_options.pid",
                    value: format!("TARGET ({:?}) without a running target container", opts.map(|o| o.target_id).unwrap_or_default()),
                })
            }
        },
    }
    match ipc_mode(sb, sc) {
        cri::NamespaceMode::Node => {}
        cri::NamespaceMode::Pod => {
            if let Some(path) = pod_ns("ipc")? {
                ns.push(namespace(LinuxNamespaceType::Ipc, Some(path)));
            }
        }
        cri::NamespaceMode::Container => ns.push(namespace(LinuxNamespaceType::Ipc, None)),
        cri::NamespaceMode::Target => {
            return Err(SpecError::InvalidField {
                container: container.to_string(),
                field: "namespace_options.ipc",
                reason: "TARGET is only for pid (the CRI allows POD, CONTAINER or NODE here)".into(),
            })
        }
    }
    let net = sc.namespace_options.as_ref().map(|o| o.network).unwrap_or(cri::NamespaceMode::Pod as i32);
    if net == cri::NamespaceMode::Container as i32 || net == cri::NamespaceMode::Target as i32 {
        return Err(SpecError::InvalidField {
            container: container.to_string(),
            field: "namespace_options.network",
            reason: "a container shares its pod's network (the CRI allows POD or NODE here, as the pod has it)".into(),
        });
    }
    if let Some(netns) = sb.netns_path {
        // A pod of its own network always has a UTS namespace to join; `None` (never made so)
        // would give the container a private one, never the host's.
        ns.push(namespace(LinuxNamespaceType::Uts, pod_ns("uts")?));
        ns.push(namespace(LinuxNamespaceType::Network, Some(netns.to_path_buf())));
    }
    if sb.userns.is_some() {
        ns.push(namespace(LinuxNamespaceType::User, pod_ns("user")?));
    }
    ns.push(namespace(LinuxNamespaceType::Mount, None));
    Ok(ns)
}

/// The infra process's namespaces: new PID (host when the pod's PID mode is NODE), new IPC (host
/// when NODE), new UTS and the pinned netns (both host for host network), new mount. With a pod
/// user namespace: a new user namespace and a NEW network namespace (owned by it; berth pins it
/// after `create`, see `sandbox::userns`).
pub fn infra_namespaces(sb: &SandboxContext) -> Vec<LinuxNamespace> {
    let opts = pod_namespace_options(sb);
    let mut ns = Vec::new();
    if mode(opts.as_ref(), |o| o.pid) != cri::NamespaceMode::Node {
        ns.push(namespace(LinuxNamespaceType::Pid, None));
    }
    if mode(opts.as_ref(), |o| o.ipc) != cri::NamespaceMode::Node {
        ns.push(namespace(LinuxNamespaceType::Ipc, None));
    }
    if let Some(netns) = sb.netns_path {
        ns.push(namespace(LinuxNamespaceType::Uts, None));
        let path = sb.userns.is_none().then(|| netns.to_path_buf());
        ns.push(namespace(LinuxNamespaceType::Network, path));
    }
    if sb.userns.is_some() {
        ns.push(namespace(LinuxNamespaceType::User, None));
    }
    ns.push(namespace(LinuxNamespaceType::Mount, None));
    ns
}

/// The `uidMappings`/`gidMappings` of every spec of a pod with its own user namespace (runc 1.1
/// wants them even when joining the namespace by path); `(None, None)` otherwise.
fn id_mappings(sb: &SandboxContext) -> (Option<Vec<oci_spec::runtime::LinuxIdMapping>>, Option<Vec<oci_spec::runtime::LinuxIdMapping>>) {
    match sb.userns {
        Some(u) => (Some(vec![u.uid.to_oci()]), Some(vec![u.gid.to_oci()])),
        None => (None, None),
    }
}

/// cgroup resources from CRI `LinuxContainerResources` (zero/empty fields are left unset):
/// cpu shares/quota/period/cpuset, memory limit with swap = `memory_swap_limit_in_bytes` or else
/// the limit (containerd on v1: no extra swap), hugepage limits only where a cgroup v1 hugetlb
/// hierarchy exists or on pure v2, `unified` only on pure v2. Devices: deny all (runc adds its
/// default allow rules for /dev/null, zero, full, tty, random, urandom, pts, ptmx, tun).
pub fn resources(r: Option<&cri::LinuxContainerResources>, host: &HostFacts) -> LinuxResources {
    let mut out = LinuxResources::default();
    let mut deny = LinuxDeviceCgroup::default();
    deny.set_allow(false).set_access(Some("rwm".into()));
    out.set_devices(Some(vec![deny]));
    let Some(r) = r else { return out };
    let mut cpu = LinuxCpu::default();
    let mut cpu_set = false;
    if r.cpu_shares > 0 {
        cpu.set_shares(Some(r.cpu_shares as u64));
        cpu_set = true;
    }
    if r.cpu_quota != 0 {
        cpu.set_quota(Some(r.cpu_quota));
        cpu_set = true;
    }
    if r.cpu_period > 0 {
        cpu.set_period(Some(r.cpu_period as u64));
        cpu_set = true;
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.set_cpus(Some(r.cpuset_cpus.clone()));
        cpu_set = true;
    }
    if !r.cpuset_mems.is_empty() {
        cpu.set_mems(Some(r.cpuset_mems.clone()));
        cpu_set = true;
    }
    if cpu_set {
        out.set_cpu(Some(cpu));
    }
    if r.memory_limit_in_bytes > 0 {
        let mut mem = LinuxMemory::default();
        let swap = if r.memory_swap_limit_in_bytes > 0 { r.memory_swap_limit_in_bytes } else { r.memory_limit_in_bytes };
        mem.set_limit(Some(r.memory_limit_in_bytes)).set_swap(Some(swap));
        out.set_memory(Some(mem));
    }
    if !r.hugepage_limits.is_empty() && (host.hugetlb_v1 || host.cgroup_v2) {
        let limits = r
            .hugepage_limits
            .iter()
            .map(|h| {
                let mut l = LinuxHugepageLimit::default();
                l.set_page_size(h.page_size.clone()).set_limit(h.limit.min(i64::MAX as u64) as i64);
                l
            })
            .collect();
        out.set_hugepage_limits(Some(limits));
    }
    if host.cgroup_v2 && !r.unified.is_empty() {
        out.set_unified(Some(r.unified.clone().into_iter().collect()));
    }
    out
}

/// One CRI device: `host_path` must be a character or block device; it appears at
/// `container_path` with the host's major/minor and mode, and the cgroup allows `permissions`
/// (`rwm` when empty).
pub fn device(container: &str, d: &cri::Device) -> Result<(LinuxDevice, LinuxDeviceCgroup), SpecError> {
    let err = |reason: String| SpecError::Device { container: container.to_string(), host_path: d.host_path.clone(), reason };
    let meta = std::fs::metadata(&d.host_path).map_err(|e| err(e.to_string()))?;
    let ft = meta.file_type();
    let typ = if ft.is_char_device() {
        LinuxDeviceType::C
    } else if ft.is_block_device() {
        LinuxDeviceType::B
    } else {
        return Err(err("not a character or block device".into()));
    };
    let rdev = meta.rdev();
    let (major, minor) = (nix::sys::stat::major(rdev) as i64, nix::sys::stat::minor(rdev) as i64);
    let dest = if d.container_path.is_empty() { &d.host_path } else { &d.container_path };
    // Cleaned lexically (`/dev/../etc/passwd` is `/etc/passwd`), as mount destinations are.
    let dest = super::mounts::clean_container_path(dest).ok_or_else(|| err(format!("container_path {dest:?} must be absolute")))?;
    let mut dev = LinuxDevice::default();
    dev.set_path(PathBuf::from(dest))
        .set_typ(typ)
        .set_major(major)
        .set_minor(minor)
        .set_file_mode(Some(meta.mode() & 0o7777))
        .set_uid(Some(0))
        .set_gid(Some(0));
    let perms = if d.permissions.is_empty() { "rwm".to_string() } else { d.permissions.clone() };
    if !perms.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        return Err(err(format!("permissions {perms:?}: expected letters from \"rwm\"")));
    }
    let mut rule = LinuxDeviceCgroup::default();
    rule.set_allow(true).set_typ(Some(typ)).set_major(Some(major)).set_minor(Some(minor)).set_access(Some(perms));
    Ok((dev, rule))
}

/// Directories under `/dev` that hold no host devices a container should get (runc's
/// `HostDevices` skips the same): per-mount pseudo filesystems and container-runtime leftovers.
const SKIPPED_DEV_DIRS: [&str; 7] = ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

/// Every character and block device under `dir` (recursively, symlinks not followed, the
/// [`SKIPPED_DEV_DIRS`] and `/dev/console` skipped), with the host's path, major/minor, mode and
/// owner: the device list of a privileged container. Unreadable entries are skipped.
pub fn host_devices(dir: &Path) -> Vec<LinuxDevice> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        let ft = meta.file_type();
        if ft.is_dir() {
            let name = e.file_name();
            if !SKIPPED_DEV_DIRS.iter().any(|s| name == *s) {
                out.extend(host_devices(&path));
            }
            continue;
        }
        let typ = if ft.is_char_device() {
            LinuxDeviceType::C
        } else if ft.is_block_device() {
            LinuxDeviceType::B
        } else {
            continue;
        };
        if path == Path::new("/dev/console") {
            continue;
        }
        let rdev = meta.rdev();
        let mut dev = LinuxDevice::default();
        dev.set_path(path)
            .set_typ(typ)
            .set_major(nix::sys::stat::major(rdev) as i64)
            .set_minor(nix::sys::stat::minor(rdev) as i64)
            .set_file_mode(Some(meta.mode() & 0o7777))
            .set_uid(Some(meta.uid()))
            .set_gid(Some(meta.gid()));
        out.push(dev);
    }
    out
}

fn pod_sysctls(sb: &SandboxContext) -> Option<HashMap<String, String>> {
    let s = &sb.config.linux.as_ref()?.sysctls;
    if s.is_empty() {
        None
    } else {
        // runc 1.1 takes dotted keys only; crictl users may send kubelet's slash form.
        Some(s.iter().map(|(k, v)| (dotted_key(k), v.clone())).collect())
    }
}

/// The container's `linux` object.
pub fn container_linux(
    sb: &SandboxContext,
    c: &ContainerContext,
    sc: &cri::LinuxContainerSecurityContext,
    host: &HostFacts,
    rootfs_propagation: Option<String>,
) -> Result<Linux, SpecError> {
    let lc = c.config.linux.as_ref();
    let mut res = resources(lc.and_then(|l| l.resources.as_ref()), host);
    let mut devices = Vec::new();
    for d in &c.config.devices {
        let (dev, rule) = device(c.container_id, d)?;
        devices.push(dev);
        if let Some(rules) = res.devices_mut() {
            rules.push(rule);
        }
    }
    if sc.privileged {
        // All host devices, and the cgroup allows every device (containerd's
        // WithDevices(HostDevices) + WithAllDevicesAllowed; runc skips its defaults these repeat).
        devices.extend(host_devices(Path::new("/dev")));
        let mut all = LinuxDeviceCgroup::default();
        all.set_allow(true).set_access(Some("rwm".into()));
        res.set_devices(Some(vec![all]));
    }
    // Empty lists: the defaults in the host's user namespace (a client other than kubelet that
    // sends none still gets a masked /proc); nothing in a pod with its own user namespace, which
    // is how kubelet asks for procMount: Unmasked (it sends empty lists, and allows Unmasked
    // only with hostUsers: false). Kubelet sends the default lists explicitly otherwise.
    let (masked, readonly) = if sc.privileged || sb.userns.is_some() && sc.masked_paths.is_empty() && sc.readonly_paths.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        (
            if sc.masked_paths.is_empty() { DEFAULT_MASKED_PATHS.iter().map(|s| s.to_string()).collect() } else { sc.masked_paths.clone() },
            if sc.readonly_paths.is_empty() {
                DEFAULT_READONLY_PATHS.iter().map(|s| s.to_string()).collect()
            } else {
                sc.readonly_paths.clone()
            },
        )
    };
    for (field, paths) in [("masked_paths", &masked), ("readonly_paths", &readonly)] {
        if let Some(p) = paths.iter().find(|p| !Path::new(p).is_absolute()) {
            return Err(SpecError::InvalidField {
                container: c.container_id.to_string(),
                field,
                reason: format!("{p:?} must be an absolute path"),
            });
        }
    }
    let mut namespaces = container_namespaces(sb, c.container_id, sc, c.pid_target)?;
    if host.cgroup_v2 && !sc.privileged {
        // cgroup v2: a private cgroup namespace, so the container's /sys/fs/cgroup is its own
        // cgroup (memory.max and the rest readable there), as containerd and CRI-O do on a
        // unified host for every unprivileged container (kubelet assumes it on v2).
        namespaces.push(namespace(LinuxNamespaceType::Cgroup, None));
    }
    let mut l = Linux::default();
    l.set_namespaces(Some(namespaces))
        .set_cgroups_path(Some(PathBuf::from(cgroups_path(sb.cgroup_parent, c.container_id))))
        .set_resources(Some(res))
        .set_devices(if devices.is_empty() { None } else { Some(devices) })
        .set_masked_paths(Some(masked))
        .set_readonly_paths(Some(readonly))
        .set_sysctl(pod_sysctls(sb))
        .set_rootfs_propagation(rootfs_propagation)
        .set_uid_mappings(id_mappings(sb).0)
        .set_gid_mappings(id_mappings(sb).1)
        .set_seccomp(None);
    Ok(l)
}

/// The infra process's `linux` object: namespaces, cgroups path under the pod's parent, the
/// default masked/read-only paths, deny-all devices, and the pod's sysctls (net/ipc sysctls are
/// per namespace, and the infra owns the pod's namespaces).
pub fn infra_linux(sb: &SandboxContext, infra_id: &str) -> Linux {
    let mut deny = LinuxDeviceCgroup::default();
    deny.set_allow(false).set_access(Some("rwm".into()));
    let mut res = LinuxResources::default();
    res.set_devices(Some(vec![deny]));
    let mut l = Linux::default();
    l.set_namespaces(Some(infra_namespaces(sb)))
        .set_cgroups_path(Some(PathBuf::from(cgroups_path(sb.cgroup_parent, infra_id))))
        .set_resources(Some(res))
        .set_devices(None)
        .set_masked_paths(Some(DEFAULT_MASKED_PATHS.iter().map(|s| s.to_string()).collect()))
        .set_readonly_paths(Some(DEFAULT_READONLY_PATHS.iter().map(|s| s.to_string()).collect()))
        .set_sysctl(pod_sysctls(sb))
        .set_uid_mappings(id_mappings(sb).0)
        .set_gid_mappings(id_mappings(sb).1)
        .set_seccomp(None);
    l
}

/// A sysctl key in dot form, as kubelet's `ConvertSysctlVariableToDotsSeparator`: when the first
/// separator is `/`, every `/` becomes `.` and every `.` becomes `/` (so
/// `net/ipv4/conf/eth0.100/rp_filter` -> `net.ipv4.conf.eth0/100.rp_filter`); otherwise the key
/// is returned as is.
pub fn dotted_key(key: &str) -> String {
    match key.find(['.', '/']) {
        Some(i) if key.as_bytes()[i] == b'/' => key
            .chars()
            .map(|c| match c {
                '.' => '/',
                '/' => '.',
                c => c,
            })
            .collect(),
        _ => key.to_string(),
    }
}
