//! CRI `ContainerConfig` + image config -> OCI runtime spec (`config.json`) for runc 1.1.
//!
//! Pure translation, following what containerd's CRI plugin and CRI-O generate, with three
//! explicit exceptions that touch the host (all documented on the function that does it):
//! - users and groups are read from the container's rootfs (`/etc/passwd`, `/etc/group`);
//! - a CRI mount whose `host_path` does not exist is created as a directory (mode 0755), as
//!   CRI-O and containerd do, and host paths are canonicalized (symlinks resolved);
//! - [`HostFacts::probe`] reads the daemon's own capabilities, `RLIMIT_NOFILE` hard limit and
//!   cgroup layout, so the spec never asks runc for more than it can grant.
//!
//! Layout: this file holds the entry points and `process`; [`mounts`] the mount list;
//! [`linux`] namespaces, resources, devices and masked paths.

use crate::cri::v1 as cri;
use oci_spec::runtime::{
    Capabilities, Capability, LinuxCapabilities, PosixRlimit, PosixRlimitBuilder, PosixRlimitType, Process, Root, Spec, User,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use self::user::{IdRef, UserError, UserRequest};

pub mod hooks;
pub mod linux;
pub mod mac;
pub mod mounts;
#[cfg(test)]
mod runc_tests;
pub mod seccomp;
#[cfg(test)]
mod security_tests;
#[cfg(test)]
mod tests;
pub mod user;
pub mod userns;

/// Annotation naming the kind of object a spec is for (`sandbox` or `container`), as containerd
/// and CRI-O set it.
pub const ANNOTATION_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// Annotation carrying the pod sandbox ID.
pub const ANNOTATION_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// Annotation carrying the CRI container name (`ContainerMetadata.name`).
pub const ANNOTATION_CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
/// Annotation carrying the pod name.
pub const ANNOTATION_SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
/// Annotation carrying the pod namespace.
pub const ANNOTATION_SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
/// Annotation carrying the pod UID.
pub const ANNOTATION_SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
/// Annotation carrying the image reference the container was created from.
pub const ANNOTATION_IMAGE_NAME: &str = "io.kubernetes.cri.image-name";

/// Default `PATH` for containers whose image sets none (containerd's and Docker's).
pub const DEFAULT_PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// `RLIMIT_NOFILE` given to containers (containerd's value), lowered to the daemon's hard limit.
pub const DEFAULT_NOFILE: u64 = 1_048_576;
/// The infra process's requested `oom_score_adj` (CRI-O/containerd use -998), raised to the
/// daemon's own value when that is higher.
pub const INFRA_OOM_SCORE_ADJ: i32 = -998;

/// Errors building a spec. Each names the container (or sandbox) and the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Neither the CRI config nor the image gives a command to run.
    #[error("container {container}: no command: CRI command/args and the image's Entrypoint/Cmd are all empty")]
    NoCommand { container: String },
    /// An exec request with an empty command.
    #[error("exec: empty command")]
    EmptyExecCommand,
    /// The container spec given to [`exec_process`] has no `process`.
    #[error("exec: the container spec has no process")]
    MissingProcess,
    /// The user or group could not be resolved.
    #[error("container {container}: user: {source}")]
    User {
        container: String,
        #[source]
        source: UserError,
    },
    /// `/etc/passwd` or `/etc/group` of the rootfs could not be read.
    #[error("container {container}: reading {path}: {source}")]
    UserFile {
        container: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A CRI mount's host path could not be created or resolved.
    #[error("container {container}: mount {container_path:?}: host_path {host_path:?}: {source}")]
    MountSource {
        container: String,
        container_path: String,
        host_path: String,
        #[source]
        source: std::io::Error,
    },
    /// A CRI mount is malformed (e.g. a relative `container_path`).
    #[error("container {container}: mount {container_path:?}: {reason}")]
    InvalidMount { container: String, container_path: String, reason: String },
    /// A CRI device could not be used.
    #[error("container {container}: device {host_path:?}: {reason}")]
    Device { container: String, host_path: String, reason: String },
    /// A capability name in `security_context.capabilities` is unknown.
    #[error("container {container}: capability {name:?} is unknown: expected a Linux capability name such as NET_ADMIN or CAP_NET_ADMIN, or ALL")]
    UnknownCapability { container: String, name: String },
    /// An oci-spec builder refused a value (should not happen: every field is set).
    #[error("building {field}: {message}")]
    Build { field: &'static str, message: String },
    /// The seccomp profile could not be chosen, read or converted.
    #[error("container {container}: {source}")]
    Seccomp {
        container: String,
        #[source]
        source: self::seccomp::SeccompError,
    },
    /// `run_as_group` without `run_as_user` or `run_as_username` (CRI: the runtime MUST error).
    #[error("container {container}: run_as_group is set without run_as_user or run_as_username: expected a user too")]
    GroupWithoutUser { container: String },
    /// An AppArmor profile or SELinux label berth refuses (see `container::mac`).
    #[error("container {container}: {source}")]
    Mac {
        container: String,
        #[source]
        source: self::mac::MacError,
    },
    /// The pod's OCI runtime lacks what the request needs (its `features` do not list it):
    /// FailedPrecondition, since another runtime handler could do it.
    #[error("container {container}: {field}: the runtime handler's `features` do not list {feature}; use a runtime that supports it")]
    RuntimeLacks { container: String, field: &'static str, feature: &'static str },
    /// A pod-level request field is malformed or refused (the pod's user namespace): shown as
    /// `field: message`, as the lifecycle's InvalidArgument.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// A field holds a value the CRI does not allow there.
    #[error("container {container}: {field}: {reason}")]
    InvalidField { container: String, field: &'static str, reason: String },
    /// A requested feature berth (or runc 1.1) does not provide.
    #[error("container {container}: {field} = {value}: not supported")]
    Unsupported { container: String, field: &'static str, value: String },
    /// A configured OCI hook file cannot be used (`runtime.hooks_dir`, [`hooks`]): the node's
    /// configuration, not the request.
    #[error("container {container}: {source}")]
    Hooks {
        container: String,
        #[source]
        source: self::hooks::HookError,
    },
}

/// What the pod gives its containers. Built by `sandbox/` when the pod runs.
#[derive(Debug, Clone, Copy)]
pub struct SandboxContext<'a> {
    /// Pod sandbox ID.
    pub sandbox_id: &'a str,
    /// The CRI `PodSandboxConfig` the pod was created with.
    pub config: &'a cri::PodSandboxConfig,
    /// Pinned network namespace (`/var/run/netns/<name>`); `None` = host network.
    pub netns_path: Option<&'a Path>,
    /// Where the pod's containers find its IPC, UTS and PID namespaces.
    pub namespaces: PodNamespaces<'a>,
    /// The pod's hostname (for host network: the node's).
    pub hostname: &'a str,
    /// Host files bind-mounted at `/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname`.
    pub hosts_file: &'a Path,
    pub resolv_conf: &'a Path,
    pub hostname_file: &'a Path,
    /// The pod's `/dev/shm` tmpfs on the host; `None` gives containers a private tmpfs (or the
    /// host's `/dev/shm` when their IPC namespace is NODE).
    pub shm_path: Option<&'a Path>,
    /// cgroupfs parent, e.g. `/kubepods/besteffort/pod<uid>` or `/berth`.
    pub cgroup_parent: &'a str,
    /// The pod's own user namespace (CRI `userns_options` mode POD); `None` = the host's. The
    /// infra creates it (with a new network namespace owned by it); containers join it.
    pub userns: Option<&'a userns::PodUserns>,
}

/// Where a pod's containers find the namespaces they share with the pod (besides the network
/// namespace, always [`SandboxContext::netns_path`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodNamespaces<'a> {
    /// The infra process of this host PID holds them: containers join
    /// `/proc/<pid>/ns/{ipc,uts,pid,user}`. 0 while the infra is being made.
    Infra(i32),
    /// No infra process (CRI-O's `drop_infra_ctr`): the IPC and UTS namespaces are bind-mounted
    /// onto these files (`None`: the host's), and the pod shares no PID namespace.
    Pinned {
        /// The pod's IPC namespace file.
        ipc: Option<&'a Path>,
        /// The pod's UTS namespace file.
        uts: Option<&'a Path>,
    },
}

/// One container to create in a pod.
#[derive(Debug, Clone, Copy)]
pub struct ContainerContext<'a> {
    /// Container ID.
    pub container_id: &'a str,
    /// The CRI `ContainerConfig`.
    pub config: &'a cri::ContainerConfig,
    /// The image's runtime config (Entrypoint, Cmd, Env, User, WorkingDir).
    pub image: &'a crate::image::ImageRuntimeConfig,
    /// The mounted rootfs (overlay); users are resolved from its `/etc/passwd` and `/etc/group`.
    pub rootfs: &'a Path,
    /// The daemon's own `/proc/self/oom_score_adj`; the container's is never set below it
    /// (without CAP_SYS_RESOURCE runc cannot lower it).
    pub own_oom_score_adj: i32,
    /// For PID namespace mode TARGET (`namespace_options.pid`): the host PID of the running
    /// container named by `namespace_options.target_id`, whose PID namespace this one joins.
    pub pid_target: Option<i32>,
    /// What the pod's OCI runtime supports (`runtime features`).
    pub features: &'a crate::oci::features::RuntimeFeatures,
}

/// Facts about the host and the daemon that bound what a spec may ask runc for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// The daemon's effective capabilities: privileged and `ALL` mean these, and every set is
    /// intersected with them (runc cannot grant a capability it lacks; containerd's
    /// `WithAllCurrentCapabilities` does the same).
    pub capabilities: Vec<Capability>,
    /// The daemon's `RLIMIT_NOFILE` hard limit; without CAP_SYS_RESOURCE it cannot be raised.
    pub nofile_hard: u64,
    /// Whether a cgroup v1 `hugetlb` hierarchy is mounted (runc 1.1 fails when hugepage limits
    /// are set without one; on hybrid hosts hugetlb may sit on the v2 tree only).
    pub hugetlb_v1: bool,
    /// Whether `/sys/fs/cgroup` is a pure cgroup v2 tree (then `unified` resources are passed).
    pub cgroup_v2: bool,
}

impl HostFacts {
    /// Reads `/proc/self/status` (CapEff), `getrlimit(RLIMIT_NOFILE)` and the cgroup mounts.
    /// Unreadable facts fall back to the permissive value (all capabilities, 1048576).
    pub fn probe() -> HostFacts {
        let capabilities = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|v| u64::from_str_radix(v.trim(), 16).ok()))
            .map(capabilities_from_mask)
            .unwrap_or_else(|| ALL_CAPABILITIES.iter().map(|(_, c)| *c).collect());
        let nofile_hard = std::fs::read_to_string("/proc/self/limits").ok().and_then(|s| parse_nofile_hard(&s)).unwrap_or(DEFAULT_NOFILE);
        HostFacts {
            capabilities,
            nofile_hard,
            hugetlb_v1: Path::new("/sys/fs/cgroup/hugetlb").is_dir(),
            cgroup_v2: Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
        }
    }
}

/// The hard limit of "Max open files" in `/proc/<pid>/limits` text (`unlimited` = u64::MAX).
pub fn parse_nofile_hard(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let hard = line.trim_start_matches("Max open files").split_whitespace().nth(1)?;
    if hard == "unlimited" {
        Some(u64::MAX)
    } else {
        hard.parse().ok()
    }
}

/// Linux capabilities by bit number (linux/capability.h), up to CAP_CHECKPOINT_RESTORE (40).
pub const ALL_CAPABILITIES: [(u8, Capability); 41] = [
    (0, Capability::Chown),
    (1, Capability::DacOverride),
    (2, Capability::DacReadSearch),
    (3, Capability::Fowner),
    (4, Capability::Fsetid),
    (5, Capability::Kill),
    (6, Capability::Setgid),
    (7, Capability::Setuid),
    (8, Capability::Setpcap),
    (9, Capability::LinuxImmutable),
    (10, Capability::NetBindService),
    (11, Capability::NetBroadcast),
    (12, Capability::NetAdmin),
    (13, Capability::NetRaw),
    (14, Capability::IpcLock),
    (15, Capability::IpcOwner),
    (16, Capability::SysModule),
    (17, Capability::SysRawio),
    (18, Capability::SysChroot),
    (19, Capability::SysPtrace),
    (20, Capability::SysPacct),
    (21, Capability::SysAdmin),
    (22, Capability::SysBoot),
    (23, Capability::SysNice),
    (24, Capability::SysResource),
    (25, Capability::SysTime),
    (26, Capability::SysTtyConfig),
    (27, Capability::Mknod),
    (28, Capability::Lease),
    (29, Capability::AuditWrite),
    (30, Capability::AuditControl),
    (31, Capability::Setfcap),
    (32, Capability::MacOverride),
    (33, Capability::MacAdmin),
    (34, Capability::Syslog),
    (35, Capability::WakeAlarm),
    (36, Capability::BlockSuspend),
    (37, Capability::AuditRead),
    (38, Capability::Perfmon),
    (39, Capability::Bpf),
    (40, Capability::CheckpointRestore),
];

/// containerd's default capability set for unprivileged containers.
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// The capabilities whose bits are set in a `/proc/<pid>/status` mask (e.g. `CapEff`).
pub fn capabilities_from_mask(mask: u64) -> Vec<Capability> {
    ALL_CAPABILITIES.iter().filter(|(bit, _)| mask & (1u64 << bit) != 0).map(|(_, c)| *c).collect()
}

/// The part every spec of a pod shares: `process`, `root` at `rootfs` (read-only or not), and the
/// pod's hostname, set only when the pod has its own network (and so UTS) namespace.
fn pod_spec(sb: &SandboxContext, process: Process, rootfs: &Path, readonly: bool) -> Spec {
    let mut root = Root::default();
    root.set_path(rootfs.to_path_buf());
    root.set_readonly(Some(readonly));
    let mut spec = Spec::default();
    spec.set_process(Some(process));
    spec.set_root(Some(root));
    spec.set_hostname(sb.netns_path.is_some().then(|| sb.hostname.to_string()));
    spec
}

/// The OCI `linux.cgroupsPath` of a container or infra container: `<parent>/berth-<id>` under a
/// cgroupfs parent (a trailing `/` is dropped; an empty parent gives `/berth-<id>`),
/// `<slice>:berth:<id>` under a systemd slice ([`crate::cgroups::runtime_path`]).
pub fn cgroups_path(parent: &str, id: &str) -> String {
    crate::cgroups::runtime_path(parent, id)
}

/// Builds the OCI spec of a container with facts probed from this host ([`HostFacts::probe`]).
/// See [`container_spec_with`].
pub fn container_spec(sb: &SandboxContext, c: &ContainerContext) -> Result<Spec, SpecError> {
    container_spec_with(sb, c, &HostFacts::probe())
}

/// Builds the OCI spec (`config.json`) of a container in a pod: process (args, env, cwd, user,
/// capabilities, rlimits, oom_score_adj), root, hostname, mounts, Linux namespaces joined from the
/// infra process, cgroups path and resources, masked/readonly paths, devices, sysctls, and the
/// `io.kubernetes.cri.*` annotations. Reads the rootfs' `/etc/passwd`/`/etc/group` and creates
/// missing CRI mount host directories (see the module docs).
pub fn container_spec_with(sb: &SandboxContext, c: &ContainerContext, host: &HostFacts) -> Result<Spec, SpecError> {
    let id = c.container_id;
    let lc = c.config.linux.clone().unwrap_or_default();
    let sc = lc.security_context.clone().unwrap_or_default();
    let privileged = sc.privileged;

    let mut process = Process::default();
    process.set_terminal(Some(c.config.tty));
    process.set_console_size(None);
    process.set_args(Some(resolve_args(c.config, c.image).ok_or_else(|| SpecError::NoCommand { container: id.to_string() })?));
    process.set_env(Some(merge_env(sb.hostname, &c.image.env, &c.config.envs)));
    process.set_cwd(resolve_cwd(&c.config.working_dir, &c.image.working_dir));
    process.set_user(resolve_container_user(id, &sc, c.image, c.rootfs)?);
    let caps = container_capabilities(id, &sc, host)?;
    let effective: Vec<Capability> = caps.effective().clone().unwrap_or_default().into_iter().collect();
    process.set_capabilities(Some(caps));
    process.set_rlimits(Some(vec![nofile_rlimit(host.nofile_hard)?]));
    process.set_no_new_privileges(Some(sc.no_new_privs && !privileged));
    let (apparmor, selinux) = self::mac::process_labels(id, &sc)?;
    process.set_apparmor_profile(apparmor);
    process.set_selinux_label(selinux);
    let requested = lc.resources.as_ref().map(|r| r.oom_score_adj).unwrap_or(0);
    process.set_oom_score_adj(Some(clamp_oom_score_adj(requested, c.own_oom_score_adj)));

    let mut spec = pod_spec(sb, process, c.rootfs, sc.readonly_rootfs);
    let m = mounts::container_mounts(sb, c, &sc)?;
    spec.set_mounts(Some(m.mounts));
    let mut l = linux::container_linux(sb, c, &sc, host, m.rootfs_propagation)?;
    l.set_seccomp(
        self::seccomp::container_seccomp(&sc, &effective).map_err(|source| SpecError::Seccomp { container: id.to_string(), source })?,
    );
    spec.set_linux(Some(l));
    spec.set_annotations(Some(container_annotations(sb, c)));
    spec.set_hooks(None);
    Ok(spec)
}

/// Builds the OCI spec of a pod's infra ("pause") process: `/berth-pause` from a read-only
/// `rootfs` holding only that binary, new IPC/UTS/mount namespaces, a new PID namespace unless
/// the pod's PID mode is NODE, the pinned netns (or host network, which also keeps the host UTS),
/// `/proc` and a `/dev` tmpfs, no capabilities, `oom_score_adj` -998 raised to the daemon's own,
/// the pod's sysctls and `io.kubernetes.cri.container-type=sandbox`.
///
/// runc creates the `/proc` and `/dev` mount points inside `rootfs` before making it read-only.
pub fn infra_spec(sb: &SandboxContext, rootfs: &Path, infra_id: &str) -> Result<Spec, SpecError> {
    infra_spec_with(sb, rootfs, infra_id, own_oom_score_adj())
}

/// [`infra_spec`] with the daemon's own `oom_score_adj` given rather than read from
/// `/proc/self/oom_score_adj`.
pub fn infra_spec_with(sb: &SandboxContext, rootfs: &Path, infra_id: &str, own_oom: i32) -> Result<Spec, SpecError> {
    let mut process = Process::default();
    process.set_terminal(Some(false));
    process.set_args(Some(vec!["/berth-pause".to_string()]));
    process.set_env(Some(vec![DEFAULT_PATH_ENV.to_string()]));
    process.set_cwd(PathBuf::from("/"));
    process.set_user(User::default());
    let none = Capabilities::new();
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(none.clone()))
        .set_effective(Some(none.clone()))
        .set_permitted(Some(none.clone()))
        .set_inheritable(Some(none.clone()))
        .set_ambient(Some(none));
    process.set_capabilities(Some(caps));
    process.set_rlimits(None);
    process.set_no_new_privileges(Some(true));
    process.set_oom_score_adj(Some(clamp_oom_score_adj(INFRA_OOM_SCORE_ADJ as i64, own_oom)));

    let mut spec = pod_spec(sb, process, rootfs, true);
    spec.set_mounts(Some(mounts::infra_mounts()));
    spec.set_linux(Some(linux::infra_linux(sb, infra_id)));
    let mut ann: HashMap<String, String> = sb.config.annotations.clone().into_iter().collect();
    ann.insert(ANNOTATION_CONTAINER_TYPE.into(), "sandbox".into());
    ann.insert(ANNOTATION_SANDBOX_ID.into(), sb.sandbox_id.into());
    insert_pod_metadata(&mut ann, sb.config);
    spec.set_annotations(Some(ann));
    spec.set_hooks(None);
    Ok(spec)
}

/// The effective user a spec runs its process as, for CRI `ContainerStatus.user`:
/// `process.user` {uid, gid, additionalGids} as spec generation resolved them (image
/// `/etc/passwd`, `/etc/group` membership, `run_as_*`, `supplemental_groups` and the
/// SupplementalGroupsPolicy). `None` when the spec has no process. The supplemental list holds
/// the primary gid first, as kubelet expects from `id -G`.
pub fn effective_user(spec: &Spec) -> Option<cri::ContainerUser> {
    let u = spec.process().as_ref()?.user();
    let mut groups = vec![u.gid() as i64];
    for g in u.additional_gids().clone().unwrap_or_default() {
        if !groups.contains(&(g as i64)) {
            groups.push(g as i64);
        }
    }
    Some(cri::ContainerUser {
        linux: Some(cri::LinuxContainerUser { uid: u.uid() as i64, gid: u.gid() as i64, supplemental_groups: groups }),
    })
}

/// The process of an exec session (`runc exec --process <file>`): the container's user, env,
/// cwd, capabilities, no_new_privileges, rlimits and oom_score_adj, with `cmd` as args and a
/// terminal when `tty`. Errors: [`SpecError::EmptyExecCommand`], [`SpecError::MissingProcess`].
pub fn exec_process(container_spec: &Spec, cmd: &[String], tty: bool) -> Result<Process, SpecError> {
    if cmd.is_empty() {
        return Err(SpecError::EmptyExecCommand);
    }
    let mut p = container_spec.process().clone().ok_or(SpecError::MissingProcess)?;
    p.set_args(Some(cmd.to_vec()));
    p.set_terminal(Some(tty));
    p.set_console_size(None);
    Ok(p)
}

/// The process args by Docker's rules: CRI `command` replaces the image Entrypoint and then the
/// image Cmd is dropped; CRI `args` replace the image Cmd. `None` when nothing is left.
pub fn resolve_args(config: &cri::ContainerConfig, image: &crate::image::ImageRuntimeConfig) -> Option<Vec<String>> {
    let out: Vec<String> = if !config.command.is_empty() {
        config.command.iter().chain(config.args.iter()).cloned().collect()
    } else if !config.args.is_empty() {
        image.entrypoint.iter().chain(config.args.iter()).cloned().collect()
    } else {
        image.entrypoint.iter().chain(image.cmd.iter()).cloned().collect()
    };
    if out.is_empty() {
        None
    } else {
        Some(out)
    }
}

/// The environment: default `PATH`, `HOSTNAME`, then the image's `Env`, then CRI `envs`. A later
/// entry for the same key replaces the earlier one in place (containerd's `WithEnv`).
pub fn merge_env(hostname: &str, image_env: &[String], cri_env: &[cri::KeyValue]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut put = |entry: String| {
        let key = entry.split_once('=').map(|(k, _)| k).unwrap_or(&entry).to_string();
        match out.iter_mut().find(|e| e.split_once('=').map(|(k, _)| k).unwrap_or(e) == key) {
            Some(slot) => *slot = entry,
            None => out.push(entry),
        }
    };
    put(DEFAULT_PATH_ENV.to_string());
    put(format!("HOSTNAME={hostname}"));
    for e in image_env {
        put(e.clone());
    }
    for kv in cri_env {
        // KeyValue.value is bytes (cri-api v0.36.2); the OCI spec's env is JSON strings, so
        // bytes that are not UTF-8 become U+FFFD, as containerd's JSON encoding makes them.
        put(format!("{}={}", kv.key, String::from_utf8_lossy(&kv.value)));
    }
    out
}

/// The working directory: CRI `working_dir`, else the image's `WorkingDir`, else `/`; a relative
/// path is taken from `/` (runc requires an absolute cwd).
pub fn resolve_cwd(cri_dir: &str, image_dir: &str) -> PathBuf {
    let d = if !cri_dir.is_empty() { cri_dir } else { image_dir };
    if d.is_empty() {
        PathBuf::from("/")
    } else {
        Path::new("/").join(d)
    }
}

/// `oom_score_adj` requested (CRI `LinuxContainerResources.oom_score_adj`), clamped to
/// -1000..=1000 and raised to at least the daemon's own value.
pub fn clamp_oom_score_adj(requested: i64, own: i32) -> i32 {
    (requested.clamp(-1000, 1000) as i32).max(own)
}

/// `RLIMIT_NOFILE` soft = hard = min(1048576, the daemon's hard limit).
pub fn nofile_rlimit(own_hard: u64) -> Result<PosixRlimit, SpecError> {
    let n = DEFAULT_NOFILE.min(own_hard);
    PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .hard(n)
        .soft(n)
        .build()
        .map_err(|e| SpecError::Build { field: "process.rlimits", message: e.to_string() })
}

/// The daemon's own `/proc/self/oom_score_adj` (0 when unreadable).
pub fn own_oom_score_adj() -> i32 {
    std::fs::read_to_string("/proc/self/oom_score_adj").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

fn resolve_container_user(
    id: &str,
    sc: &cri::LinuxContainerSecurityContext,
    image: &crate::image::ImageRuntimeConfig,
    rootfs: &Path,
) -> Result<User, SpecError> {
    let uerr = |source| SpecError::User { container: id.to_string(), source };
    if sc.run_as_group.is_some() && sc.run_as_user.is_none() && sc.run_as_username.is_empty() {
        return Err(SpecError::GroupWithoutUser { container: id.to_string() });
    }
    let mut req = UserRequest::parse_image_user(&image.user).map_err(uerr)?;
    if let Some(v) = &sc.run_as_user {
        req = UserRequest { user: IdRef::Id(user::id_from_i64("run_as_user", v.value).map_err(uerr)?), group: None };
    }
    if !sc.run_as_username.is_empty() {
        req = UserRequest { user: IdRef::Name(sc.run_as_username.clone()), group: None };
    }
    if let Some(g) = &sc.run_as_group {
        req.group = Some(IdRef::Id(user::id_from_i64("run_as_group", g.value).map_err(uerr)?));
    }
    let read = |rel: &str| {
        user::read_in_root(rootfs, rel).map_err(|source| SpecError::UserFile { container: id.to_string(), path: rootfs.join(rel), source })
    };
    let passwd = user::parse_passwd(&read("etc/passwd")?);
    let groups = user::parse_group(&read("etc/group")?);
    let supplemental = sc
        .supplemental_groups
        .iter()
        .map(|g| user::id_from_i64("supplemental_groups", *g))
        .collect::<Result<Vec<u32>, _>>()
        .map_err(uerr)?;
    let merge = sc.supplemental_groups_policy != cri::SupplementalGroupsPolicy::Strict as i32;
    let r = user::resolve_user(&req, &passwd, &groups, merge, &supplemental).map_err(uerr)?;
    let mut u = User::default();
    u.set_uid(r.uid).set_gid(r.gid).set_additional_gids(Some(r.additional_gids));
    Ok(u)
}

/// Parses a CRI capability name (`NET_ADMIN`, `CAP_NET_ADMIN`, any case).
pub fn parse_capability(name: &str) -> Option<Capability> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
}

/// The capability sets of a container: the default set (or, privileged, all of the daemon's),
/// plus `add_capabilities`, minus `drop_capabilities` (`ALL` in either), intersected with the
/// daemon's own. Bounding = effective = permitted; `add_ambient_capabilities` fill ambient and
/// inheritable (which are otherwise empty, as containerd does since CVE-2022-24769).
pub fn container_capabilities(id: &str, sc: &cri::LinuxContainerSecurityContext, host: &HostFacts) -> Result<LinuxCapabilities, SpecError> {
    let own: Capabilities = host.capabilities.iter().copied().collect();
    let parse_list = |names: &[String]| -> Result<(bool, Vec<Capability>), SpecError> {
        let mut all = false;
        let mut out = Vec::new();
        for n in names {
            if n.eq_ignore_ascii_case("ALL") {
                all = true;
            } else {
                out.push(parse_capability(n).ok_or_else(|| SpecError::UnknownCapability { container: id.to_string(), name: n.clone() })?);
            }
        }
        Ok((all, out))
    };
    let mut set: Capabilities = if sc.privileged { own.clone() } else { DEFAULT_CAPABILITIES.iter().copied().collect() };
    let mut ambient = Capabilities::new();
    if let Some(c) = &sc.capabilities {
        let (add_all, add) = parse_list(&c.add_capabilities)?;
        let (drop_all, drop) = parse_list(&c.drop_capabilities)?;
        let (_, amb) = parse_list(&c.add_ambient_capabilities)?;
        // containerd: "ALL" in add adds everything; "ALL" in drop drops everything, then the
        // explicit adds are applied on top.
        if add_all {
            set = own.clone();
        }
        if drop_all {
            set.clear();
            set.extend(add.iter().copied());
        } else {
            set.extend(add.iter().copied());
            for d in &drop {
                set.remove(d);
            }
        }
        ambient.extend(amb.iter().copied());
        set.extend(amb.iter().copied());
    }
    set.retain(|c| own.contains(c));
    ambient.retain(|c| own.contains(c));
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(set.clone()))
        .set_effective(Some(set.clone()))
        .set_permitted(Some(set))
        .set_inheritable(Some(ambient.clone()))
        .set_ambient(Some(ambient));
    Ok(caps)
}

fn insert_pod_metadata(ann: &mut HashMap<String, String>, pod: &cri::PodSandboxConfig) {
    if let Some(m) = &pod.metadata {
        ann.insert(ANNOTATION_SANDBOX_NAME.into(), m.name.clone());
        ann.insert(ANNOTATION_SANDBOX_NAMESPACE.into(), m.namespace.clone());
        ann.insert(ANNOTATION_SANDBOX_UID.into(), m.uid.clone());
    }
}

fn container_annotations(sb: &SandboxContext, c: &ContainerContext) -> HashMap<String, String> {
    let mut ann: HashMap<String, String> = c.config.annotations.clone().into_iter().collect();
    ann.insert(ANNOTATION_CONTAINER_TYPE.into(), "container".into());
    ann.insert(ANNOTATION_SANDBOX_ID.into(), sb.sandbox_id.into());
    ann.insert(ANNOTATION_CONTAINER_NAME.into(), c.config.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default());
    if let Some(img) = &c.config.image {
        ann.insert(ANNOTATION_IMAGE_NAME.into(), img.image.clone());
    }
    insert_pod_metadata(&mut ann, sb.config);
    ann
}
