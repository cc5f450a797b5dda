//! Pinning a pod's namespaces without an infra process, as root: what a container joining the
//! files finds (hostname, sysctls, namespaces apart from the host's), and that failures and
//! unpinning leave no file or mount behind.

use super::*;
use crate::cri::v1::{LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceOption};

fn root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: needs root (namespaces, mounts)");
    false
}

fn config(pid: NamespaceMode, ipc: NamespaceMode, network: NamespaceMode) -> PodSandboxConfig {
    PodSandboxConfig {
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    pid: pid as i32,
                    ipc: ipc as i32,
                    network: network as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Runs `f` in a thread that has joined the namespace pinned at `path` (`flag`), and returns
/// what it returns.
fn inside<T: Send + 'static>(path: &Path, flag: CloneFlags, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap();
        setns(&ns, flag).unwrap();
        f()
    })
    .join()
    .unwrap()
}

fn ns_id(path: &str) -> String {
    std::fs::read_link(path).unwrap().display().to_string()
}

#[test]
fn wanted_only_without_shared_pid_or_userns() {
    use NamespaceMode::*;
    assert!(wanted(&config(Container, Pod, Pod), false, true));
    assert!(wanted(&config(Node, Node, Node), false, true));
    assert!(!wanted(&config(Pod, Pod, Pod), false, true), "a shared PID namespace needs its init");
    assert!(!wanted(&PodSandboxConfig::default(), false, true), "no namespace options = PID mode POD");
    assert!(!wanted(&config(Container, Pod, Pod), true, true), "a pod user namespace keeps the infra");
    assert!(!wanted(&config(Container, Pod, Pod), false, false), "drop_infra = false");
}

#[test]
fn planned_pins_only_what_the_pod_owns() {
    use NamespaceMode::*;
    let id = "0123456789abcdef0123";
    let p = planned(Path::new("/run/x/ns"), id, &config(Container, Pod, Pod));
    assert_eq!(p.ipc.as_deref(), Some(Path::new("/run/x/ns/ipc-0123456789abcdef")));
    assert_eq!(p.uts.as_deref(), Some(Path::new("/run/x/ns/uts-0123456789abcdef")));
    let p = planned(Path::new("/run/x/ns"), id, &config(Container, Node, Pod));
    assert_eq!(p.ipc, None);
    let p = planned(Path::new("/run/x/ns"), id, &config(Container, Pod, Node));
    assert_eq!(p.uts, None, "a host-network pod keeps the host's UTS namespace");
}

#[test]
fn pinned_namespaces_hold_hostname_and_sysctls_and_unpin_cleanly() {
    if !root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let netns_dir = tmp.path().join("netns");
    let netns = crate::network::netns::create(&netns_dir, "pod").unwrap();
    let pins =
        planned(&tmp.path().join("ns"), "feedfacefeedface00", &config(NamespaceMode::Container, NamespaceMode::Pod, NamespaceMode::Pod));
    let req = PinRequest {
        netns: Some(&netns),
        pins: &pins,
        hostname: "pinned-pod",
        sysctls: vec![("kernel.shmmni".into(), "1234".into()), ("net/ipv4/ip_unprivileged_port_start".into(), "81".into())],
    };
    pin(&req).unwrap();
    assert!(missing(&pins, Some(&netns)).is_empty());

    let uts = pins.uts.clone().unwrap();
    let ipc = pins.ipc.clone().unwrap();
    assert_eq!(inside(&uts, CloneFlags::CLONE_NEWUTS, || nix::unistd::gethostname().unwrap()), "pinned-pod");
    assert_ne!(nix::unistd::gethostname().unwrap(), "pinned-pod", "the host's hostname is untouched");
    let shmmni = inside(&ipc, CloneFlags::CLONE_NEWIPC, || std::fs::read_to_string("/proc/sys/kernel/shmmni").unwrap());
    assert_eq!(shmmni.trim(), "1234");
    assert_ne!(std::fs::read_to_string("/proc/sys/kernel/shmmni").unwrap().trim(), "1234");
    let port =
        inside(&netns, CloneFlags::CLONE_NEWNET, || std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap());
    assert_eq!(port.trim(), "81", "net sysctls land in the pod's network namespace");
    let pod_ipc = inside(&ipc, CloneFlags::CLONE_NEWIPC, || ns_id("/proc/thread-self/ns/ipc"));
    let pod_uts = inside(&uts, CloneFlags::CLONE_NEWUTS, || ns_id("/proc/thread-self/ns/uts"));
    assert_ne!(pod_ipc, ns_id("/proc/self/ns/ipc"));
    assert_ne!(pod_uts, ns_id("/proc/self/ns/uts"));

    unpin(&pins).unwrap();
    assert!(!ipc.exists() && !uts.exists());
    assert_eq!(missing(&pins, Some(&netns)).len(), 2);
    unpin(&pins).unwrap();
    crate::network::netns::remove(&netns).unwrap();
    cleanup_dirs(tmp.path());
}

#[test]
fn a_refused_sysctl_leaves_nothing_pinned() {
    if !root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let netns = crate::network::netns::create(&tmp.path().join("netns"), "pod").unwrap();
    let pins =
        planned(&tmp.path().join("ns"), "feedfacefeedface01", &config(NamespaceMode::Container, NamespaceMode::Pod, NamespaceMode::Pod));
    let req = PinRequest {
        netns: Some(&netns),
        pins: &pins,
        hostname: "pinned-pod",
        sysctls: vec![("net.ipv4.conf.eth7.forwarding".into(), "1".into())],
    };
    let err = pin(&req).unwrap_err();
    assert!(matches!(&err, Error::InvalidArgument { field, .. } if field.contains("net.ipv4.conf.eth7.forwarding")), "{err}");
    for p in pins.files() {
        assert!(!p.exists(), "{} left behind", p.display());
    }
    crate::network::netns::remove(&netns).unwrap();
    cleanup_dirs(tmp.path());
}

/// The pin dirs are shared bind mounts of themselves (netns::pin_file): undo them before the
/// temporary dir goes.
fn cleanup_dirs(tmp: &Path) {
    for d in ["ns", "netns"] {
        let p = tmp.join(d);
        while nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
    }
}

#[test]
fn a_pod_of_an_earlier_boot_is_known_by_its_boot_id() {
    let now =
        planned(Path::new("/run/x/ns"), "0123456789abcdef", &config(NamespaceMode::Container, NamespaceMode::Node, NamespaceMode::Node));
    assert!(now.files().next().is_none(), "host network and IPC: nothing to pin");
    assert!(!now.boot_id.is_empty() && !from_earlier_boot(&now));
    let before = PinnedNamespaces { boot_id: "00000000-0000-0000-0000-000000000000".into(), ..now.clone() };
    assert!(from_earlier_boot(&before), "made before the last reboot, though nothing was pinned");
    let unknown = PinnedNamespaces { boot_id: String::new(), ..now };
    assert!(!from_earlier_boot(&unknown), "no boot ID recorded (an older berth): not taken as a reboot");
}

#[test]
fn orphan_pins_are_swept_and_known_ones_kept() {
    if !root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ns");
    let kept = planned(&dir, "1111222233334444aa", &config(NamespaceMode::Container, NamespaceMode::Pod, NamespaceMode::Node));
    let orphan = planned(&dir, "5555666677778888bb", &config(NamespaceMode::Container, NamespaceMode::Pod, NamespaceMode::Node));
    for p in [&kept, &orphan] {
        pin(&PinRequest { netns: None, pins: p, hostname: "h", sysctls: Vec::new() }).unwrap();
    }
    let known: std::collections::HashSet<PathBuf> = kept.files().cloned().collect();
    sweep_orphans(&dir, &known);
    assert!(missing(&kept, None).is_empty(), "a pin a record names stays");
    for p in orphan.files() {
        assert!(!p.exists(), "orphan {} left", p.display());
    }
    unpin(&kept).unwrap();
    sweep_orphans(&tmp.path().join("absent"), &known);
    cleanup_dirs(tmp.path());
}
