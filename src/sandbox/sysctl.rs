//! Validation of a pod's sysctls (CRI `LinuxPodSandboxConfig.sysctls`), before anything of the
//! pod is created.
//!
//! A sysctl is accepted only when the kernel namespaces it and the pod owns that namespace, so
//! that writing it cannot touch the host (runc's `validateSysctl` and kubelet's
//! `component-helpers/node/util/sysctl` namespace table):
//! - IPC namespace: `kernel.msgmax`, `kernel.msgmnb`, `kernel.msgmni`, `kernel.sem`,
//!   `kernel.shmall`, `kernel.shmmax`, `kernel.shmmni`, `kernel.shm_rmid_forced` and `fs.mqueue.*`
//!   (runc's exact list: kubelet's `kernel.shm*`/`kernel.msg*` prefixes also match
//!   `kernel.shm_next_id` and friends, which runc refuses); refused when the pod's IPC mode is NODE;
//! - network namespace: `net.*`; refused when the pod's network mode is NODE;
//! - UTS namespace: `kernel.domainname`; refused under host network (the pod keeps the host's UTS
//!   namespace then). `kernel.hostname` is refused: the pod's hostname is `config.hostname`
//!   (runc refuses the sysctl too, since it conflicts with the OCI `hostname` field);
//! - everything else (`kernel.panic`, `vm.*`, `fs.file-max`, ...) is refused.
//!
//! Then every accepted sysctl is written, as runc will write it, into a network, IPC and UTS
//! namespace of a short-lived thread that vanish with it: a key the kernel does not have or does
//! not let a non-initial namespace write (`net.core.rmem_max`), or a value it refuses, is
//! InvalidArgument naming the key before anything of the pod exists.
//!
//! Whether a sysctl is "safe" or "unsafe" is kubelet's admission decision
//! (`--allowed-unsafe-sysctls`), not the runtime's. Keys may use `/` as the separator; they are
//! read as kubelet's `ConvertSysctlVariableToDotsSeparator` does ([`crate::spec::linux::dotted_key`]). Values must be
//! non-empty and hold no newline, carriage return or NUL.

use crate::cri::v1::{NamespaceMode, NamespaceOption, PodSandboxConfig};

use crate::error::{Error, Result};
use crate::spec::linux::dotted_key;

/// The kernel namespace a sysctl belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysctlNamespace {
    /// IPC namespace (`kernel.shm*`, `kernel.msg*`, `kernel.sem`, `fs.mqueue.*`).
    Ipc,
    /// Network namespace (`net.*`).
    Net,
    /// UTS namespace (`kernel.domainname`).
    Uts,
}

/// IPC sysctls runc accepts by exact name (besides the `fs.mqueue.` prefix).
const IPC_SYSCTLS: &[&str] = &[
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// Checks every sysctl of `config` before anything of the pod is created.
///
/// Errors: InvalidArgument naming `config.linux.sysctls["<key>"]` and why (not namespaced, the
/// pod shares that namespace with the host, malformed key or value, or the kernel refuses it in
/// a pod's own namespaces). Keys are checked in sorted
/// order, so the first error is stable.
pub fn validate(config: &PodSandboxConfig) -> Result<()> {
    let Some(linux) = config.linux.as_ref() else { return Ok(()) };
    let ns = super::namespace_options(config);
    let mut keys: Vec<&String> = linux.sysctls.keys().collect();
    keys.sort();
    for key in &keys {
        let value = &linux.sysctls[*key];
        check(key, value, &ns).map_err(|why| Error::invalid(format!("config.linux.sysctls[{key:?}]"), why))?;
    }
    if let Ok(Some(u)) = crate::spec::userns::for_pod(config) {
        for key in &keys {
            if dotted_key(key) == "net.ipv4.ping_group_range" {
                ping_range_mapped(&linux.sysctls[*key], &u).map_err(|why| Error::invalid(format!("config.linux.sysctls[{key:?}]"), why))?;
            }
        }
    }
    // Keys naming an interface other than lo/all/default cannot be tried: the scratch netns has
    // only lo (the pod's eth0 comes from CNI); runc's own write reports those.
    let writes: Vec<(String, String)> =
        keys.iter().filter(|k| !names_an_interface(&dotted_key(k))).map(|k| (k.to_string(), linux.sysctls[*k].clone())).collect();
    if let Err((key, why)) = try_in_scratch_namespaces(&writes) {
        return Err(Error::invalid(format!("config.linux.sysctls[{key:?}]"), why));
    }
    Ok(())
}

/// Whether a dotted key is per interface (`net.ipv4.conf.eth0.rp_filter`,
/// `net.ipv6.neigh.eth0.*`) for an interface other than `lo`, `all` or `default`.
fn names_an_interface(dotted: &str) -> bool {
    let parts: Vec<&str> = dotted.split('.').collect();
    matches!(parts.as_slice(), ["net", "ipv4" | "ipv6", "conf" | "neigh", iface, ..] if !matches!(*iface, "lo" | "all" | "default"))
}

/// `net.ipv4.ping_group_range` ("<first> <last>" gids) in a pod with its own user namespace: the
/// kernel reads the gids through the writer's mapping, so both must be container gids the pod
/// maps. Errors: the reason, naming the mapped range.
fn ping_range_mapped(value: &str, u: &crate::spec::userns::PodUserns) -> std::result::Result<(), String> {
    let last_mapped = u.gid.container_id as u64 + u.gid.length as u64 - 1;
    let ids: Vec<u64> = value.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    match ids.as_slice() {
        [a, b] if (u.gid.container_id as u64..=last_mapped).contains(a) && (u.gid.container_id as u64..=last_mapped).contains(b) => Ok(()),
        _ => Err(format!(
            "{:?} must be two gids the pod's user namespace maps ({}..={last_mapped}), e.g. \"0 {last_mapped}\"",
            crate::util::truncate_message(value.to_string(), 64),
            u.gid.container_id
        )),
    }
}

/// Writes every `(key, value)` the way runc will (`/proc/sys/` + the dotted key with `.` as
/// `/`), but in a network, IPC and UTS namespace of its own, made by a short-lived thread and
/// gone with it: the kernel's own answer (no such key, not writable from a non-initial
/// namespace such as `net.core.rmem_max`, an invalid value) comes back before anything of the
/// pod exists, instead of as a failed `runc create`. Errors: the first refused key and why.
fn try_in_scratch_namespaces(writes: &[(String, String)]) -> std::result::Result<(), (String, String)> {
    if writes.is_empty() {
        return Ok(());
    }
    let owned: Vec<(String, String)> = writes.to_vec();
    let joined = std::thread::Builder::new().name("berth-sysctl-probe".into()).spawn(move || {
        use nix::sched::{unshare, CloneFlags};
        // Only this thread changes namespace, and it ends right after.
        unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS)
            .map_err(|e| (String::new(), format!("cannot make scratch namespaces to check sysctls: {e}")))?;
        for (key, value) in &owned {
            write_here(key, value, "a pod's own namespaces").map_err(|why| (key.clone(), why))?;
        }
        Ok(())
    });
    match joined {
        Ok(h) => h.join().unwrap_or_else(|_| Err((String::new(), "the sysctl check panicked".into()))),
        Err(e) => Err((String::new(), format!("cannot start the sysctl check: {e}"))),
    }
}

/// Writes one sysctl as runc writes `linux.sysctl`: `/proc/sys/` + the dotted key with `.` as
/// `/`. /proc/sys resolves net, IPC and UTS keys in the namespaces of the calling thread, so the
/// caller is a thread that joined or made the namespaces meant (`whose` names them in the
/// error). Errors: why the kernel refused, naming the file and the value.
pub(super) fn write_here(key: &str, value: &str, whose: &str) -> std::result::Result<(), String> {
    let path = format!("/proc/sys/{}", dotted_key(key).replace('.', "/"));
    std::fs::write(&path, value.as_bytes()).map_err(|e| {
        let shown = crate::util::truncate_message(value.to_string(), 64);
        format!("the kernel refuses {shown:?} for it in {whose} ({path}: {e})")
    })
}

/// The namespace of a sysctl key in dot form, `None` when the kernel does not namespace it (or
/// runc would refuse it).
pub fn namespace_of(dotted: &str) -> Option<SysctlNamespace> {
    if IPC_SYSCTLS.contains(&dotted) || dotted.starts_with("fs.mqueue.") {
        Some(SysctlNamespace::Ipc)
    } else if dotted.starts_with("net.") {
        Some(SysctlNamespace::Net)
    } else if dotted == "kernel.domainname" {
        Some(SysctlNamespace::Uts)
    } else {
        None
    }
}

/// Checks one sysctl against the pod's namespace options; the error is the reason.
pub fn check(key: &str, value: &str, ns: &NamespaceOption) -> std::result::Result<SysctlNamespace, String> {
    let parts_ok = key
        .split(['.', '/'])
        .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':' | '@' | '+')));
    if !parts_ok {
        return Err("malformed key: expected names such as net.ipv4.ip_forward (or net/ipv4/ip_forward) of letters, digits, '_' and '-', with no empty part".into());
    }
    if value.is_empty() {
        return Err("the value must not be empty".into());
    }
    if value.contains(['\n', '\r', '\0']) {
        return Err(format!(
            "value {:?} must not contain a newline, carriage return or NUL",
            crate::util::truncate_message(value.to_string(), 64)
        ));
    }
    let dotted = dotted_key(key);
    if dotted == "kernel.hostname" {
        return Err("kernel.hostname cannot be set as a sysctl: the pod's hostname is config.hostname".into());
    }
    let Some(sns) = namespace_of(&dotted) else {
        return Err(format!(
            "{dotted} is not a namespaced sysctl (allowed: net.*, fs.mqueue.*, kernel.shm{{all,max,mni,_rmid_forced}}, kernel.msg{{max,mnb,mni}}, kernel.sem, kernel.domainname): setting it would change the host"
        ));
    };
    let node = NamespaceMode::Node as i32;
    match sns {
        SysctlNamespace::Ipc if ns.ipc == node => {
            Err(format!("{dotted} is in the IPC namespace, and the pod uses the host's (namespace_options.ipc = NODE): setting it would change the host"))
        }
        SysctlNamespace::Net if ns.network == node => Err(format!(
            "{dotted} is in the network namespace, and the pod uses the host network (namespace_options.network = NODE): setting it would change the host"
        )),
        SysctlNamespace::Uts if ns.network == node => Err(format!(
            "{dotted} is in the UTS namespace, and a host-network pod keeps the host's (namespace_options.network = NODE): setting it would change the host"
        )),
        s => Ok(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::v1::{LinuxPodSandboxConfig, LinuxSandboxSecurityContext};

    fn ns(network: NamespaceMode, ipc: NamespaceMode) -> NamespaceOption {
        NamespaceOption { network: network as i32, ipc: ipc as i32, ..Default::default() }
    }

    fn pod_ns() -> NamespaceOption {
        ns(NamespaceMode::Pod, NamespaceMode::Pod)
    }

    #[test]
    fn namespaced_table() {
        use SysctlNamespace::*;
        for (k, want) in [
            ("kernel.shm_rmid_forced", Some(Ipc)),
            ("kernel.shmmax", Some(Ipc)),
            ("kernel.shmall", Some(Ipc)),
            ("kernel.shmmni", Some(Ipc)),
            ("kernel.msgmax", Some(Ipc)),
            ("kernel.msgmnb", Some(Ipc)),
            ("kernel.msgmni", Some(Ipc)),
            ("kernel.sem", Some(Ipc)),
            ("fs.mqueue.msg_max", Some(Ipc)),
            ("net.ipv4.ip_unprivileged_port_start", Some(Net)),
            ("net.ipv4.ip_local_port_range", Some(Net)),
            ("net.core.somaxconn", Some(Net)),
            ("kernel.domainname", Some(Uts)),
            ("kernel.hostname", None),
            ("kernel.shm_next_id", None),
            ("kernel.semaphores", None),
            ("kernel.panic", None),
            ("vm.overcommit_memory", None),
            ("fs.file-max", None),
            ("fs.mqueue", None),
            ("netfoo.x", None),
        ] {
            assert_eq!(namespace_of(k), want, "{k}");
        }
    }

    #[test]
    fn the_kernel_is_asked_in_scratch_namespaces() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let host_before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap();
        let w = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        assert!(try_in_scratch_namespaces(&w("net.ipv4.ip_unprivileged_port_start", "0")).is_ok());
        assert!(try_in_scratch_namespaces(&w("kernel.shm_rmid_forced", "1")).is_ok());
        assert!(try_in_scratch_namespaces(&w("kernel.domainname", "example")).is_ok());
        for (k, v) in [
            ("net.ipv4.nope", "1"),
            ("net.core.rmem_max", "1000000"),
            ("net.ipv4.ip_forward", "abc"),
            ("net/ipv4/conf/eth0.100/rp_filter", "1"),
        ] {
            let (key, why) = try_in_scratch_namespaces(&w(k, v)).unwrap_err();
            assert_eq!(key, k);
            assert!(why.contains("/proc/sys/"), "{k}: {why}");
        }
        // The host's own value never changed.
        assert_eq!(std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap(), host_before);
    }

    #[test]
    fn interface_keys_and_ping_range_in_a_user_namespace() {
        assert!(names_an_interface("net.ipv4.conf.eth0.rp_filter"));
        assert!(names_an_interface("net.ipv6.neigh.eth0/100.retrans_time_ms"));
        assert!(!names_an_interface("net.ipv4.conf.all.rp_filter"));
        assert!(!names_an_interface("net.ipv4.conf.default.rp_filter"));
        assert!(!names_an_interface("net.ipv4.ip_forward"));
        use crate::spec::userns::{IdMap, PodUserns};
        let m = IdMap { host_id: 200_000, container_id: 0, length: 65_536 };
        let u = PodUserns { uid: m, gid: m };
        assert!(ping_range_mapped("0 65535", &u).is_ok());
        let e = ping_range_mapped("0 2147483647", &u).unwrap_err();
        assert!(e.contains("0..=65535"), "{e}");
        assert!(ping_range_mapped("x", &u).is_err());
        let long = "9".repeat(1_000_000);
        assert!(ping_range_mapped(&long, &u).unwrap_err().len() < 400);
    }

    #[test]
    fn slash_keys_convert_like_kubelet() {
        assert_eq!(dotted_key("net/ipv4/ip_forward"), "net.ipv4.ip_forward");
        assert_eq!(dotted_key("net/ipv4/conf/eth0.100/rp_filter"), "net.ipv4.conf.eth0/100.rp_filter");
        assert_eq!(dotted_key("net.ipv4.conf.eth0/100.rp_filter"), "net.ipv4.conf.eth0/100.rp_filter");
        assert_eq!(dotted_key("kernel"), "kernel");
        assert_eq!(check("kernel/shm_rmid_forced", "1", &pod_ns()), Ok(SysctlNamespace::Ipc));
        assert_eq!(check("net/ipv4/conf/eth0.100/rp_filter", "1", &pod_ns()), Ok(SysctlNamespace::Net));
    }

    #[test]
    fn host_namespaces_refuse_their_sysctls() {
        let host_net = ns(NamespaceMode::Node, NamespaceMode::Pod);
        let host_ipc = ns(NamespaceMode::Pod, NamespaceMode::Node);
        assert!(check("net.ipv4.ip_unprivileged_port_start", "0", &host_net).unwrap_err().contains("host network"));
        assert!(check("kernel.domainname", "x", &host_net).unwrap_err().contains("UTS"));
        assert_eq!(check("kernel.shm_rmid_forced", "1", &host_net), Ok(SysctlNamespace::Ipc));
        assert!(check("kernel.shm_rmid_forced", "1", &host_ipc).unwrap_err().contains("IPC"));
        assert!(check("fs.mqueue.msg_max", "20", &host_ipc).unwrap_err().contains("IPC"));
        assert_eq!(check("net.core.somaxconn", "1024", &host_ipc), Ok(SysctlNamespace::Net));
        assert_eq!(check("kernel.domainname", "example", &pod_ns()), Ok(SysctlNamespace::Uts));
    }

    #[test]
    fn non_namespaced_and_malformed_refused() {
        let n = pod_ns();
        assert!(check("kernel.panic", "1", &n).unwrap_err().contains("not a namespaced sysctl"));
        assert!(check("kernel.hostname", "x", &n).unwrap_err().contains("config.hostname"));
        for bad in ["", "net..ipv4", ".net.ipv4", "net/../../etc/x", "net.ipv4.x y", "net.ipv4.*", "net.ipv4."] {
            assert!(check(bad, "1", &n).unwrap_err().contains("malformed key"), "{bad:?}");
        }
        assert!(check("net.ipv4.ip_forward", "1\n0", &n).unwrap_err().contains("newline"));
        assert!(check("net.ipv4.ip_forward", "", &n).unwrap_err().contains("empty"));
        assert_eq!(check("net.ipv4.ip_local_port_range", "1024 65000", &n), Ok(SysctlNamespace::Net));
    }

    fn config(sysctls: &[(&str, &str)], ns: NamespaceOption) -> PodSandboxConfig {
        PodSandboxConfig {
            linux: Some(LinuxPodSandboxConfig {
                sysctls: sysctls.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                security_context: Some(LinuxSandboxSecurityContext { namespace_options: Some(ns), ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn validate_names_the_key() {
        assert!(validate(&PodSandboxConfig::default()).is_ok());
        let ok = config(&[("net.ipv4.ip_unprivileged_port_start", "0"), ("kernel.shm_rmid_forced", "1")], pod_ns());
        assert!(validate(&ok).is_ok());
        let bad = config(&[("net.ipv4.ip_unprivileged_port_start", "0"), ("kernel.panic", "1")], pod_ns());
        match validate(&bad) {
            Err(Error::InvalidArgument { field, message }) => {
                assert_eq!(field, "config.linux.sysctls[\"kernel.panic\"]");
                assert!(message.contains("not a namespaced sysctl"), "{message}");
            }
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
        let host = config(&[("net.ipv4.ip_unprivileged_port_start", "0")], ns(NamespaceMode::Node, NamespaceMode::Pod));
        assert!(
            matches!(validate(&host), Err(Error::InvalidArgument { field, .. }) if field.contains("net.ipv4.ip_unprivileged_port_start"))
        );
    }
}
