//! Pods without an infra process (CRI-O's `drop_infra_ctr`, its `pinns` helper done by a
//! thread of the daemon): when nothing needs to run in a pod, its namespaces are made and
//! pinned directly, and no infra container, runtime create/start or monitor is spent on it.
//!
//! A pod needs an infra process only when something must live in one of its namespaces that a
//! file cannot hold:
//! - a shared PID namespace (`namespace_options.pid` = POD): a PID namespace ends with its
//!   init, so the pod's containers need the infra as PID 1 (kubelet's `shareProcessNamespace`);
//! - its own user namespace (`userns_options` mode POD): the runtime makes it with the pod's ID
//!   mappings and its network namespace inside it (see `spec::userns`);
//! - `[runtime] drop_infra = false` in the daemon's configuration.
//!
//! Every other pod (kubelet's default: PID mode CONTAINER) gets, from one short-lived thread
//! ([`pin`]): the pinned network namespace it already has joined (`setns`), a new IPC namespace
//! unless its IPC mode is NODE and a new UTS namespace unless it uses the host network, the
//! pod's hostname set, the pod's sysctls written (as runc writes `linux.sysctl`, after CNI ADD),
//! and each new namespace bind-mounted onto a file under `<run_root>/ns` (a shared mount point,
//! as `ip netns` makes its dir). The thread then ends; the namespaces live on in their files
//! until StopPodSandbox unpins them ([`unpin`]). Containers join the files
//! (`spec::PodNamespaces::Pinned`).

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use super::PinnedNamespaces;
use crate::cri::v1::{NamespaceMode, PodSandboxConfig};
use crate::error::{Error, Result};

/// Whether a pod made from `config` goes without an infra process: `drop_infra` is on
/// (`[runtime] drop_infra`), its PID mode is not POD and it has no user namespace of its own
/// (`has_userns`). See the module docs.
pub fn wanted(config: &PodSandboxConfig, has_userns: bool, drop_infra: bool) -> bool {
    drop_infra && !has_userns && super::namespace_options(config).pid != NamespaceMode::Pod as i32
}

/// What [`pin`] makes for one pod.
#[derive(Debug)]
pub struct PinRequest<'a> {
    /// The pod's pinned network namespace (`None`: host network, which also keeps the host's
    /// UTS namespace).
    pub netns: Option<&'a Path>,
    /// Where the pins go and what they are called ([`planned`]).
    pub pins: &'a PinnedNamespaces,
    /// The pod's hostname, set in its new UTS namespace.
    pub hostname: &'a str,
    /// The pod's sysctls (`linux.sysctls`, already checked by `sandbox::sysctl::validate`):
    /// key (dots or slashes) and value.
    pub sysctls: Vec<(String, String)>,
}

/// The files a pod's namespaces will be pinned at, decided before anything is made (the record
/// stores them first, so that a crash halfway leaves Stop something to undo): an IPC namespace
/// unless the pod's IPC mode is NODE, a UTS namespace unless it uses the host network.
pub fn planned(ns_dir: &Path, id: &str, config: &PodSandboxConfig) -> PinnedNamespaces {
    let ns = super::namespace_options(config);
    let short = &id[..16.min(id.len())];
    let node = NamespaceMode::Node as i32;
    PinnedNamespaces {
        ipc: (ns.ipc != node).then(|| ns_dir.join(format!("ipc-{short}"))),
        uts: (ns.network != node).then(|| ns_dir.join(format!("uts-{short}"))),
        boot_id: boot_id().to_string(),
    }
}

/// This boot's ID (`/proc/sys/kernel/random/boot_id`, a UUID the kernel makes at each boot),
/// read once; empty when unreadable.
fn boot_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default())
}

/// Whether the pod was made in an earlier boot than this one (its namespaces ended with it).
/// Unknown boot IDs (records of an older berth, an unreadable file) are not taken as a reboot.
pub fn from_earlier_boot(pins: &PinnedNamespaces) -> bool {
    !pins.boot_id.is_empty() && !boot_id().is_empty() && pins.boot_id != boot_id()
}

/// Removes the pins under `ns_dir` that no record names (`known`): a RunPodSandbox whose undo
/// could not unpin before it dropped the record, or a crash between making a pin and storing
/// what follows. Errors are logged, not returned: one stray file must not keep the daemon from
/// starting. A missing `ns_dir` is fine.
pub fn sweep_orphans(ns_dir: &Path, known: &std::collections::HashSet<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(ns_dir) else { return };
    for path in entries.flatten().map(|e| e.path()).filter(|p| !known.contains(p)) {
        match crate::network::netns::remove(&path) {
            Ok(()) => tracing::warn!(path = %path.display(), "recovery: removed a pinned namespace no pod sandbox names"),
            Err(e) => tracing::error!(path = %path.display(), error = %e, "recovery: cannot remove an orphan pinned namespace"),
        }
    }
}

/// Makes and pins the pod's IPC and UTS namespaces and writes its sysctls (see the module
/// docs). Blocking (a thread is spawned and joined, about 0.1 ms): call it from
/// `spawn_blocking` or accept the short stall.
///
/// On failure nothing is left: pins made so far are undone ([`unpin`]).
/// Errors: InvalidArgument naming `config.linux.sysctls["<key>"]` when the kernel refuses a
/// sysctl in the pod's namespaces (keys naming an interface are first tried here, once CNI has
/// made it); Network for a pin file that cannot be made; Io naming the namespace and the
/// syscall (`setns`, `unshare`, `sethostname`, `mount(MS_BIND)`) otherwise.
pub fn pin(req: &PinRequest) -> Result<()> {
    let mut made = PinnedNamespaces::default();
    let result = pin_inner(req, &mut made);
    if result.is_err() {
        let _ = unpin(&made);
    }
    result
}

fn pin_inner(req: &PinRequest, made: &mut PinnedNamespaces) -> Result<()> {
    for (want, slot) in [(&req.pins.ipc, &mut made.ipc), (&req.pins.uts, &mut made.uts)] {
        if let Some(path) = want {
            let (dir, name) = split(path)?;
            crate::network::netns::pin_file(dir, name)?;
            *slot = Some(path.clone());
        }
    }
    let netns = req.netns.map(Path::to_path_buf);
    let pins = req.pins.clone();
    let hostname = req.hostname.to_string();
    let sysctls = req.sysctls.clone();
    std::thread::Builder::new()
        .name("berth-pinns".into())
        .spawn(move || in_pod_namespaces(netns.as_deref(), &pins, &hostname, &sysctls))
        .map_err(Error::io("starting the thread that makes the pod's namespaces"))?
        .join()
        .unwrap_or_else(|_| {
            Err(Error::Io { context: "making the pod's namespaces".into(), source: std::io::Error::other("thread panicked") })
        })
}

/// The pin thread's work. Only this thread changes namespace, and it ends right after.
fn in_pod_namespaces(netns: Option<&Path>, pins: &PinnedNamespaces, hostname: &str, sysctls: &[(String, String)]) -> Result<()> {
    let sys = |what: String| move |e: nix::Error| Error::Io { context: what, source: std::io::Error::from(e) };
    if let Some(netns) = netns {
        let f = std::fs::File::open(netns).map_err(Error::io(format!("opening the pod's network namespace {}", netns.display())))?;
        setns(&f, CloneFlags::CLONE_NEWNET).map_err(sys(format!("setns(CLONE_NEWNET) into {}", netns.display())))?;
    }
    let mut flags = CloneFlags::empty();
    if pins.ipc.is_some() {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    if pins.uts.is_some() {
        flags |= CloneFlags::CLONE_NEWUTS;
    }
    if !flags.is_empty() {
        unshare(flags).map_err(sys(format!("unshare({flags:?}) for the pod's namespaces")))?;
    }
    if pins.uts.is_some() {
        nix::unistd::sethostname(hostname).map_err(sys(format!("sethostname({hostname:?}) in the pod's UTS namespace")))?;
    }
    for (key, value) in sysctls {
        super::sysctl::write_here(key, value, "the pod's namespaces")
            .map_err(|why| Error::invalid(format!("config.linux.sysctls[{key:?}]"), why))?;
    }
    for (path, name) in [(&pins.ipc, "ipc"), (&pins.uts, "uts")] {
        if let Some(path) = path {
            let source = format!("/proc/thread-self/ns/{name}");
            mount(Some(source.as_str()), path, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(sys(format!("mount(MS_BIND) of the pod's {name} namespace onto {}", path.display())))?;
        }
    }
    Ok(())
}

fn split(path: &Path) -> Result<(&Path, &str)> {
    match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        (Some(dir), Some(name)) => Ok((dir, name)),
        _ => Err(Error::Io {
            context: format!("pinning a namespace at {}", path.display()),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
        }),
    }
}

/// Unpins a pod's IPC and UTS namespaces (`umount2(MNT_DETACH)` and unlink, each): the
/// namespaces end once no container is in them. Every file is tried even when one fails, so one
/// stuck pin never leaves the other behind. Idempotent: a file that is missing or not mounted is
/// fine. Errors: Network naming the first file that failed and the syscall.
pub fn unpin(pins: &PinnedNamespaces) -> Result<()> {
    let mut first = None;
    for path in pins.files() {
        if let Err(e) = crate::network::netns::remove(path) {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), |e| Err(e.into()))
}

/// The pinned files of `pins` (and the pod's netns, if any) that are not pinned any more, e.g.
/// after the node rebooted: a pod whose namespaces are gone is not Ready.
pub fn missing(pins: &PinnedNamespaces, netns: Option<&Path>) -> Vec<PathBuf> {
    pins.files().map(PathBuf::as_path).chain(netns).filter(|p| !crate::network::netns::is_pinned(p)).map(Path::to_path_buf).collect()
}

#[cfg(test)]
mod tests;
