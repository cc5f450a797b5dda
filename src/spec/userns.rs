//! A pod's user namespace (CRI `NamespaceOption.userns_options`, Kubernetes `hostUsers: false`,
//! KEP-127).
//!
//! Mode NODE (or no options, as older kubelets send) keeps the host's user namespace. Mode POD
//! gives the pod its own: runc creates it for the infra container with the pod's one uid and one
//! gid mapping, together with the pod's network namespace (which must be owned by the pod's user
//! namespace for the pod's root to configure it; berth pins it afterwards for CNI, as containerd
//! does), and every container joins it. Layers and volumes appear owned by the pod's ids through
//! idmapped mounts (`storage::idmap`), made on the host side because runc 1.1 ignores a mount's
//! mappings.
//!
//! What is refused (InvalidArgument, the field named): modes CONTAINER and TARGET (the CRI says
//! only POD and NODE); not exactly one uid and one gid mapping; a mapping whose container id is
//! not 0, whose length is 0 or that overflows 32 bits; host id 0 (the pod's root would be the
//! host's root); mappings with mode NODE; the pod's network, PID or IPC namespace on the host
//! together with its own user namespace; a container asking for a different user namespace than
//! its pod's, or the host's network, PID or IPC namespace; a privileged container in such a pod.
//! A runtime handler or kernel that cannot do it is FailedPrecondition (checked by `sandbox/`,
//! which knows the handlers: this module is the pure model).

use crate::cri::v1::{IdMapping, NamespaceMode, NamespaceOption, PodSandboxConfig, UserNamespace};
use oci_spec::runtime::{LinuxIdMapping, LinuxIdMappingBuilder};
use serde::{Deserialize, Serialize};

use super::SpecError;

type Result<T> = std::result::Result<T, SpecError>;

/// [`SpecError::InvalidField`]-like refusal naming a request field (shown as `field: message`,
/// InvalidArgument).
fn invalid(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError::Invalid { field: field.into(), message: message.into() }
}

/// One id range: container ids `container_id..container_id+length` are host ids
/// `host_id..host_id+length` (CRI `IdMapping`; OCI runtime-spec config-linux.md "User namespace
/// mappings").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    pub host_id: u32,
    pub container_id: u32,
    pub length: u32,
}

impl IdMap {
    /// The OCI form.
    pub fn to_oci(self) -> LinuxIdMapping {
        // The builder has a default for every field, so `build` cannot fail.
        LinuxIdMappingBuilder::default().host_id(self.host_id).container_id(self.container_id).size(self.length).build().unwrap_or_default()
    }

    /// The host id that container id `id` maps to, if it is in range.
    pub fn to_host(self, id: u32) -> Option<u32> {
        let off = id.checked_sub(self.container_id)?;
        (off < self.length).then(|| self.host_id + off)
    }
}

/// A pod's own user namespace: its one uid and one gid mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodUserns {
    pub uid: IdMap,
    pub gid: IdMap,
}

/// The shortest id range a pod user namespace may have.
pub const MIN_LENGTH: u32 = 65_536;

fn ns_field(level: &str) -> String {
    format!("{level}.security_context.namespace_options.userns_options")
}

fn one_mapping(field: &str, which: &str, v: &[IdMapping]) -> Result<IdMap> {
    let [m] = v else {
        return Err(invalid(
            format!("{field}.{which}"),
            format!("has {} mappings: expected exactly one (container id 0, the pod's range)", v.len()),
        ));
    };
    if m.container_id != 0 {
        return Err(invalid(
            format!("{field}.{which}[0].container_id"),
            format!("is {}: expected 0 (the pod's root must be mapped)", m.container_id),
        ));
    }
    if m.length < MIN_LENGTH {
        return Err(invalid(
            format!("{field}.{which}[0].length"),
            format!("is {}: expected at least {MIN_LENGTH} (container ids 0-65535, which images and the runtime use, e.g. gid 5 for /dev/pts; kubelet allocates 65536)", m.length),
        ));
    }
    if m.host_id == 0 {
        return Err(invalid(
            format!("{field}.{which}[0].host_id"),
            "is 0: that maps the pod's root to the host's root; expected a range of unused host ids (kubelet allocates from 65536 up)",
        ));
    }
    // The last id is host_id + length - 1, which must be a valid id: below 2^32 - 1, the
    // kernel's invalid id ((uid_t)-1).
    if (m.host_id as u64) + (m.length as u64) > u32::MAX as u64 {
        return Err(invalid(
            format!("{field}.{which}[0]"),
            format!("host ids {}..{} overflow: the range must end below 4294967295", m.host_id, m.host_id as u64 + m.length as u64),
        ));
    }
    Ok(IdMap { host_id: m.host_id, container_id: m.container_id, length: m.length })
}

/// The user namespace a `UserNamespace` option asks for: `None` for NODE (or none given),
/// `Some` for POD. `level` names where it came from (`config.linux` for a pod,
/// `config.linux` for a container) in errors. Errors: InvalidArgument as the module docs list.
pub fn parse(level: &str, opt: Option<&UserNamespace>) -> Result<Option<PodUserns>> {
    let field = ns_field(level);
    let Some(u) = opt else { return Ok(None) };
    match NamespaceMode::try_from(u.mode) {
        Ok(NamespaceMode::Node) => {
            if !u.uids.is_empty() || !u.gids.is_empty() {
                return Err(invalid(field, "has uid/gid mappings with mode NODE: mappings are only for mode POD"));
            }
            Ok(None)
        }
        Ok(NamespaceMode::Pod) => {
            Ok(Some(PodUserns { uid: one_mapping(&field, "uids", &u.uids)?, gid: one_mapping(&field, "gids", &u.gids)? }))
        }
        _ => Err(invalid(
            format!("{field}.mode"),
            format!("is {}: expected POD or NODE (the CRI supports no other mode for user namespaces)", u.mode),
        )),
    }
}

/// The pod's user namespace from its `PodSandboxConfig`, validated together with its other
/// namespace modes (host network, PID or IPC cannot be combined with a pod user namespace: the
/// pod's root would hold no capability over them). Errors: InvalidArgument naming the field.
pub fn for_pod(config: &PodSandboxConfig) -> Result<Option<PodUserns>> {
    let ns: Option<&NamespaceOption> =
        config.linux.as_ref().and_then(|l| l.security_context.as_ref()).and_then(|s| s.namespace_options.as_ref());
    let Some(u) = parse("config.linux", ns.and_then(|n| n.userns_options.as_ref()))? else { return Ok(None) };
    if let Some(ns) = ns {
        for (name, mode) in [("network", ns.network), ("pid", ns.pid), ("ipc", ns.ipc)] {
            if mode == NamespaceMode::Node as i32 {
                return Err(invalid(
                    format!("config.linux.security_context.namespace_options.{name}"),
                    "is NODE while userns_options asks for a pod user namespace: a pod with its own user namespace cannot share the host's",
                ));
            }
        }
    }
    Ok(Some(u))
}

/// Checks a container's own `userns_options` and privileged flag against its pod's user
/// namespace `pod`. A container may repeat its pod's options (kubelet sends them on both) or
/// send none. Errors: InvalidArgument naming the field.
pub fn check_container(pod: Option<&PodUserns>, ns: Option<&NamespaceOption>, privileged: bool) -> Result<()> {
    let field = ns_field("config.linux");
    let asked = ns.and_then(|n| n.userns_options.as_ref());
    if let Some(asked) = asked {
        let mine = parse("config.linux", Some(asked))?;
        if mine.as_ref() != pod {
            return Err(invalid(
                field,
                format!(
                    "asks for {} but the pod sandbox has {}: containers share their pod's user namespace",
                    describe(mine.as_ref()),
                    describe(pod)
                ),
            ));
        }
    }
    if let (Some(_), Some(ns)) = (pod, ns) {
        for (name, mode) in [("network", ns.network), ("pid", ns.pid), ("ipc", ns.ipc)] {
            if mode == NamespaceMode::Node as i32 {
                return Err(invalid(
                    format!("config.linux.security_context.namespace_options.{name}"),
                    "is NODE in a pod with its own user namespace: its containers cannot share the host's namespaces",
                ));
            }
        }
    }
    if pod.is_some() && privileged {
        return Err(invalid(
            "config.linux.security_context.privileged",
            "is true in a pod with its own user namespace: privileged containers need the host's (hostUsers: true)",
        ));
    }
    Ok(())
}

/// For a runtime whose `features` report idmapped mounts (`linux.mountExtensions.idmap`, e.g.
/// runc >= 1.2, crun >= 1.9): gives every bind mount of `spec` the pod's mappings as OCI
/// `uidMappings`/`gidMappings` plus the `idmap` option (OCI runtime-spec config.md "POSIX-platform
/// Mounts"), so the runtime makes the idmapped mounts itself. Returns how many mounts it marked.
pub fn set_mount_idmaps(spec: &mut oci_spec::runtime::Spec, u: &PodUserns) -> usize {
    let Some(mounts) = spec.mounts_mut().as_mut() else { return 0 };
    let mut n = 0;
    for m in mounts.iter_mut().filter(|m| m.typ().as_deref() == Some("bind")) {
        m.set_uid_mappings(Some(vec![u.uid.to_oci()]));
        m.set_gid_mappings(Some(vec![u.gid.to_oci()]));
        let mut opts = m.options().clone().unwrap_or_default();
        if !opts.iter().any(|o| o == "idmap" || o == "ridmap") {
            opts.push("idmap".into());
        }
        m.set_options(Some(opts));
        n += 1;
    }
    n
}

/// Checks that the ids a container of a pod with user namespace `u` runs as (its resolved OCI
/// `process.user`: uid, gid, additional gids) are mapped in it; an unmapped id would only fail
/// later inside `runc create`. Errors: InvalidArgument naming the field the id came from.
pub fn check_ids(u: &PodUserns, user: &oci_spec::runtime::User) -> Result<()> {
    let field = |f: &str| format!("config.linux.security_context.{f}");
    let range = |m: IdMap| format!("{}..={}", m.container_id, m.container_id as u64 + m.length as u64 - 1);
    if u.uid.to_host(user.uid()).is_none() {
        return Err(invalid(
            field("run_as_user"),
            format!(
                "uid {} (from the request or the image) is not mapped in the pod's user namespace: expected {}",
                user.uid(),
                range(u.uid)
            ),
        ));
    }
    if u.gid.to_host(user.gid()).is_none() {
        return Err(invalid(
            field("run_as_group"),
            format!(
                "gid {} (from the request or the image) is not mapped in the pod's user namespace: expected {}",
                user.gid(),
                range(u.gid)
            ),
        ));
    }
    if let Some(g) = user.additional_gids().iter().flatten().find(|g| u.gid.to_host(**g).is_none()) {
        return Err(invalid(
            field("supplemental_groups"),
            format!("gid {g} is not mapped in the pod's user namespace: expected {}", range(u.gid)),
        ));
    }
    Ok(())
}

fn describe(u: Option<&PodUserns>) -> String {
    match u {
        None => "the host's user namespace (NODE)".into(),
        Some(u) => format!(
            "uids {}:{}:{} gids {}:{}:{}",
            u.uid.container_id, u.uid.host_id, u.uid.length, u.gid.container_id, u.gid.host_id, u.gid.length
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::v1::{LinuxPodSandboxConfig, LinuxSandboxSecurityContext};

    fn m(host_id: u32, container_id: u32, length: u32) -> IdMapping {
        IdMapping { host_id, container_id, length }
    }

    fn pod(mode: NamespaceMode, uids: Vec<IdMapping>, gids: Vec<IdMapping>, network: NamespaceMode) -> PodSandboxConfig {
        PodSandboxConfig {
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: network as i32,
                        userns_options: Some(UserNamespace { mode: mode as i32, uids, gids }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn err(r: Result<Option<PodUserns>>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn node_and_absent_mean_the_host_namespace() {
        assert_eq!(for_pod(&PodSandboxConfig::default()).unwrap(), None);
        assert_eq!(for_pod(&pod(NamespaceMode::Node, vec![], vec![], NamespaceMode::Pod)).unwrap(), None);
    }

    #[test]
    fn pod_mode_takes_the_one_mapping() {
        let u =
            for_pod(&pod(NamespaceMode::Pod, vec![m(65536, 0, 65536)], vec![m(131072, 0, 65536)], NamespaceMode::Pod)).unwrap().unwrap();
        assert_eq!(u.uid, IdMap { host_id: 65536, container_id: 0, length: 65536 });
        assert_eq!(u.gid.host_id, 131072);
        assert_eq!(u.uid.to_host(0), Some(65536));
        assert_eq!(u.uid.to_host(65535), Some(131071));
        assert_eq!(u.uid.to_host(65536), None);
    }

    #[test]
    fn refusals_name_the_field() {
        let ok = || vec![m(65536, 0, 65536)];
        let e = err(for_pod(&pod(NamespaceMode::Pod, vec![m(65536, 0, 10), m(70000, 10, 10)], ok(), NamespaceMode::Pod)));
        assert!(e.contains("userns_options.uids") && e.contains("exactly one"), "{e}");
        let e = err(for_pod(&pod(NamespaceMode::Pod, ok(), vec![], NamespaceMode::Pod)));
        assert!(e.contains("userns_options.gids"), "{e}");
        let e = err(for_pod(&pod(NamespaceMode::Pod, vec![m(65536, 1, 65536)], ok(), NamespaceMode::Pod)));
        assert!(e.contains("uids[0].container_id") && e.contains("expected 0"), "{e}");
        let e = err(for_pod(&pod(NamespaceMode::Pod, vec![m(65536, 0, 0)], ok(), NamespaceMode::Pod)));
        assert!(e.contains("uids[0].length"), "{e}");
        let e = err(for_pod(&pod(NamespaceMode::Pod, vec![m(0, 0, 65536)], ok(), NamespaceMode::Pod)));
        assert!(e.contains("uids[0].host_id"), "{e}");
        for (host, len) in [(u32::MAX, 65_536), (u32::MAX - 65_535, 65_536), (1, u32::MAX)] {
            let e = err(for_pod(&pod(NamespaceMode::Pod, vec![m(host, 0, len)], ok(), NamespaceMode::Pod)));
            assert!(e.contains("overflow"), "{host}+{len}: {e}");
        }
        // The highest range that still ends below 2^32 - 1.
        assert!(for_pod(&pod(NamespaceMode::Pod, vec![m(u32::MAX - 65_536, 0, 65_536)], ok(), NamespaceMode::Pod)).is_ok());
        let e = err(for_pod(&pod(NamespaceMode::Pod, vec![m(100_000, 0, 1)], ok(), NamespaceMode::Pod)));
        assert!(e.contains("uids[0].length") && e.contains("65536"), "{e}");
        let e = err(for_pod(&pod(NamespaceMode::Container, ok(), ok(), NamespaceMode::Pod)));
        assert!(e.contains("userns_options.mode"), "{e}");
        let e = err(for_pod(&pod(NamespaceMode::Node, ok(), ok(), NamespaceMode::Pod)));
        assert!(e.contains("mode NODE"), "{e}");
        let e = err(for_pod(&pod(NamespaceMode::Pod, ok(), ok(), NamespaceMode::Node)));
        assert!(e.contains("namespace_options.network"), "{e}");
    }

    #[test]
    fn runtime_idmaps_mark_bind_mounts_only() {
        use oci_spec::runtime::{Mount, Spec};
        let mk = |typ: &str, opts: &[&str]| {
            let mut m = Mount::default();
            m.set_typ(Some(typ.into())).set_options(Some(opts.iter().map(|s| s.to_string()).collect()));
            m
        };
        let mut spec = Spec::default();
        spec.set_mounts(Some(vec![mk("proc", &[]), mk("bind", &["rbind", "ro"]), mk("bind", &["rbind", "ridmap"])]));
        let map = IdMap { host_id: 70_000, container_id: 0, length: 65_536 };
        assert_eq!(set_mount_idmaps(&mut spec, &PodUserns { uid: map, gid: map }), 2);
        let m = spec.mounts().as_ref().unwrap();
        assert!(m[0].uid_mappings().is_none());
        assert_eq!(m[1].options().as_ref().unwrap(), &["rbind", "ro", "idmap"]);
        assert_eq!(m[2].options().as_ref().unwrap(), &["rbind", "ridmap"]);
        assert_eq!(m[1].uid_mappings().as_ref().unwrap()[0].host_id(), 70_000);
        assert_eq!(m[1].gid_mappings().as_ref().unwrap()[0].size(), 65_536);
    }

    #[test]
    fn container_ids_must_be_mapped() {
        use oci_spec::runtime::User;
        let map = IdMap { host_id: 100_000, container_id: 0, length: 65_536 };
        let u = PodUserns { uid: map, gid: map };
        let mut user = User::default();
        user.set_uid(65_535).set_gid(5).set_additional_gids(Some(vec![5, 100]));
        check_ids(&u, &user).unwrap();
        user.set_uid(65_536);
        assert!(check_ids(&u, &user).unwrap_err().to_string().contains("run_as_user"));
        user.set_uid(0).set_gid(70_000);
        assert!(check_ids(&u, &user).unwrap_err().to_string().contains("run_as_group"));
        user.set_gid(0).set_additional_gids(Some(vec![1, 65_536]));
        assert!(check_ids(&u, &user).unwrap_err().to_string().contains("supplemental_groups"));
    }

    #[test]
    fn containers_repeat_or_omit_their_pods_namespace() {
        let p = for_pod(&pod(NamespaceMode::Pod, vec![m(65536, 0, 65536)], vec![m(65536, 0, 65536)], NamespaceMode::Pod)).unwrap().unwrap();
        let same = NamespaceOption {
            userns_options: Some(UserNamespace {
                mode: NamespaceMode::Pod as i32,
                uids: vec![m(65536, 0, 65536)],
                gids: vec![m(65536, 0, 65536)],
            }),
            ..Default::default()
        };
        check_container(Some(&p), Some(&same), false).unwrap();
        check_container(Some(&p), None, false).unwrap();
        check_container(None, None, true).unwrap();
        let e = check_container(None, Some(&same), false).unwrap_err().to_string();
        assert!(e.contains("host's user namespace"), "{e}");
        let e = check_container(Some(&p), None, true).unwrap_err().to_string();
        assert!(e.contains("privileged"), "{e}");
        let host_ipc = NamespaceOption { ipc: NamespaceMode::Node as i32, ..same.clone() };
        let e = check_container(Some(&p), Some(&host_ipc), false).unwrap_err().to_string();
        assert!(e.contains("namespace_options.ipc"), "{e}");
    }
}
