//! Applying NRI plugins' CreateContainer adjustments (nri `ContainerAdjustment`) to the OCI
//! spec before the runtime sees it, one plugin after the other in index order (a later
//! plugin's value wins; [`super::Nri::create_container`] shows each plugin the spec as the ones
//! before left it).
//!
//! Honoured: annotations, mounts (one per destination; their options are passed on as they
//! are, so a plugin's `rshared` mount does not change the rootfs propagation as containerd's
//! generator would), env (a changed variable moves to the end), args (nri's leading `""`
//! marker stripped), OCI hooks (appended), rlimits (one per type), devices (a node replacing
//! one at its path, with a device cgroup rule allowing it `rwm`, as containerd's generator
//! adds them; extra device cgroup rules appended), and on Linux memory (limit, 0 ignored;
//! reservation, swap, swappiness, which containerd ignores), CPU (shares, quota, period, cpus,
//! mems), pids limit, unified cgroup v2 keys, cgroups path and OOM score. A key, destination or
//! device path marked for removal (a leading `-`, nri's `MarkForRemoval`) removes it.
//! Anything else a plugin asks for (CDI devices, namespaces, sysctls, seccomp, scheduling,
//! RDT, I/O priority, net devices, memory policy, hugepages, block I/O and RDT classes) fails
//! the CreateContainer with [`AdjustError::Unsupported`] naming the plugin and the field:
//! never silently dropped.
//! Conflicting claims of two plugins on one field are not detected (the later one wins).

use super::api;
use oci_spec::runtime::{
    Hook, Hooks, LinuxCpu, LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType, LinuxMemory, LinuxPids, LinuxResources, Mount,
    PosixRlimitBuilder, Spec,
};
use std::path::PathBuf;

/// Why an adjustment could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum AdjustError {
    /// The plugin asked for something berth does not apply.
    #[error("NRI plugin {plugin} adjusted {field}, which berth does not apply to containers yet")]
    Unsupported { plugin: String, field: &'static str },
    /// The plugin's value is not valid for the OCI spec.
    #[error("NRI plugin {plugin} adjusted {field}: {message}")]
    Invalid { plugin: String, field: &'static str, message: String },
}

/// Applies each `(plugin, adjustment)` in order to `spec`.
pub fn apply(spec: &mut Spec, adjustments: &[(String, api::ContainerAdjustment)]) -> Result<(), AdjustError> {
    for (plugin, a) in adjustments {
        apply_one(spec, plugin, a)?;
    }
    Ok(())
}

/// `key` without its removal mark, and whether it had one.
fn removal(key: &str) -> (&str, bool) {
    match key.strip_prefix('-') {
        Some(k) => (k, true),
        None => (key, false),
    }
}

fn apply_one(spec: &mut Spec, plugin: &str, a: &api::ContainerAdjustment) -> Result<(), AdjustError> {
    let unsupported = |field| Err(AdjustError::Unsupported { plugin: plugin.into(), field });
    if !a.cdi_devices.is_empty() {
        return unsupported("cdi_devices");
    }
    if !a.annotations.is_empty() {
        let annotations = spec.annotations_mut().get_or_insert_with(Default::default);
        for (k, v) in &a.annotations {
            match removal(k) {
                (k, true) => annotations.remove(k),
                (k, false) => annotations.insert(k.to_string(), v.clone()),
            };
        }
    }
    if !a.mounts.is_empty() {
        let mounts = spec.mounts_mut().get_or_insert_with(Vec::new);
        for m in &a.mounts {
            let (dest, remove) = removal(&m.destination);
            if !dest.starts_with('/') || dest.split('/').any(|c| c == "..") {
                return Err(AdjustError::Invalid {
                    plugin: plugin.into(),
                    field: "mounts",
                    message: format!("destination {dest:?}: expected an absolute path without \"..\""),
                });
            }
            mounts.retain(|x| x.destination() != &PathBuf::from(dest));
            if !remove {
                let mut nm = Mount::default();
                nm.set_destination(dest.into())
                    .set_typ(Some(m.r#type.clone()).filter(|t| !t.is_empty()))
                    .set_source(Some(PathBuf::from(&m.source)).filter(|s| !s.as_os_str().is_empty()))
                    .set_options(Some(m.options.clone()));
                mounts.push(nm);
            }
        }
        // Parents before children, as runtime-tools' generator orders mounts (stable).
        mounts.sort_by_key(|m| m.destination().components().count());
    }
    let process = spec.process_mut().get_or_insert_with(Default::default);
    if !a.env.is_empty() {
        let env = process.env_mut().get_or_insert_with(Vec::new);
        for kv in &a.env {
            let (key, remove) = removal(&kv.key);
            env.retain(|e| e.split_once('=').map(|(k, _)| k).unwrap_or(e) != key);
            if !remove {
                env.push(format!("{key}={}", kv.value));
            }
        }
    }
    // nri's `UpdateArgs` sends a leading "" (replace even if another plugin set them).
    let args = match a.args.split_first() {
        Some((first, rest)) if first.is_empty() => rest,
        _ => &a.args[..],
    };
    if !args.is_empty() {
        process.set_args(Some(args.to_vec()));
    }
    if !a.rlimits.is_empty() {
        let mut limits = process.rlimits().clone().unwrap_or_default();
        for r in &a.rlimits {
            let typ = serde_json::from_value(serde_json::Value::String(r.r#type.clone())).map_err(|_| AdjustError::Invalid {
                plugin: plugin.into(),
                field: "rlimits",
                message: format!("{:?} is not an OCI rlimit type (RLIMIT_NOFILE, ...)", r.r#type),
            })?;
            limits.retain(|l| l.typ() != typ);
            let l = PosixRlimitBuilder::default().typ(typ).hard(r.hard).soft(r.soft).build().map_err(|e| AdjustError::Invalid {
                plugin: plugin.into(),
                field: "rlimits",
                message: e.to_string(),
            })?;
            limits.push(l);
        }
        process.set_rlimits(Some(limits));
    }
    if let Some(h) = &a.hooks {
        add_hooks(spec, h);
    }
    if let Some(l) = &a.linux {
        apply_linux(spec, plugin, l)?;
    }
    Ok(())
}

/// An OCI device type from NRI's one-letter form (`c`, `b`, `u`, `p`; and `a` for a cgroup
/// rule when `rule`); empty is `None` (a rule for every type).
fn device_type(plugin: &str, field: &'static str, t: &str, rule: bool) -> Result<Option<LinuxDeviceType>, AdjustError> {
    Ok(Some(match t {
        "" if rule => return Ok(None),
        "a" if rule => LinuxDeviceType::A,
        "c" => LinuxDeviceType::C,
        "b" => LinuxDeviceType::B,
        "u" => LinuxDeviceType::U,
        "p" => LinuxDeviceType::P,
        other => {
            return Err(AdjustError::Invalid {
                plugin: plugin.into(),
                field,
                message: format!("device type {other:?}: expected c, b, u or p"),
            })
        }
    }))
}

/// Adds (or, with `-/path`, removes) a device node, as containerd's generator does: the node
/// replaces one at the same path, and the device cgroup allows it `rwm`.
fn add_device(linux: &mut oci_spec::runtime::Linux, plugin: &str, d: &api::LinuxDevice) -> Result<(), AdjustError> {
    let (path, remove) = removal(&d.path);
    let devices = linux.devices_mut().get_or_insert_with(Vec::new);
    devices.retain(|x| x.path() != std::path::Path::new(path));
    if remove {
        return Ok(());
    }
    if !path.starts_with('/') {
        return Err(AdjustError::Invalid {
            plugin: plugin.into(),
            field: "linux.devices",
            message: format!("path {path:?} is not absolute"),
        });
    }
    let typ = device_type(plugin, "linux.devices", &d.r#type, false)?.unwrap_or(LinuxDeviceType::C);
    let mut dev = LinuxDevice::default();
    dev.set_path(PathBuf::from(path))
        .set_typ(typ)
        .set_major(d.major)
        .set_minor(d.minor)
        .set_file_mode(d.file_mode.as_ref().map(|m| m.value))
        .set_uid(d.uid.as_ref().map(|v| v.value))
        .set_gid(d.gid.as_ref().map(|v| v.value));
    devices.push(dev);
    let mut rule = LinuxDeviceCgroup::default();
    rule.set_allow(true).set_typ(Some(typ)).set_major(Some(d.major)).set_minor(Some(d.minor)).set_access(Some("rwm".into()));
    linux.resources_mut().get_or_insert_with(Default::default).devices_mut().get_or_insert_with(Vec::new).push(rule);
    Ok(())
}

fn add_hooks(spec: &mut Spec, h: &api::Hooks) {
    let hooks: &mut Hooks = spec.hooks_mut().get_or_insert_with(Default::default);
    let oci = |list: &[api::Hook]| -> Vec<Hook> {
        list.iter()
            .map(|x| {
                let mut o = Hook::default();
                o.set_path(PathBuf::from(&x.path))
                    .set_args(Some(x.args.clone()).filter(|a| !a.is_empty()))
                    .set_env(Some(x.env.clone()).filter(|e| !e.is_empty()))
                    .set_timeout(x.timeout.as_ref().map(|t| t.value));
                o
            })
            .collect()
    };
    let add = |list: &mut Option<Vec<Hook>>, more: &[api::Hook]| {
        if !more.is_empty() {
            list.get_or_insert_with(Vec::new).extend(oci(more));
        }
    };
    #[allow(deprecated)]
    add(hooks.prestart_mut(), &h.prestart);
    add(hooks.create_runtime_mut(), &h.create_runtime);
    add(hooks.create_container_mut(), &h.create_container);
    add(hooks.start_container_mut(), &h.start_container);
    add(hooks.poststart_mut(), &h.poststart);
    add(hooks.poststop_mut(), &h.poststop);
}

fn apply_linux(spec: &mut Spec, plugin: &str, l: &api::LinuxContainerAdjustment) -> Result<(), AdjustError> {
    let unsupported = |field| Err(AdjustError::Unsupported { plugin: plugin.into(), field });
    if !l.namespaces.is_empty() {
        return unsupported("linux.namespaces");
    }
    if !l.sysctl.is_empty() {
        return unsupported("linux.sysctl");
    }
    if !l.net_devices.is_empty() {
        return unsupported("linux.net_devices");
    }
    if l.seccomp_policy.is_some() {
        return unsupported("linux.seccomp_policy");
    }
    if l.io_priority.is_some() {
        return unsupported("linux.io_priority");
    }
    if l.scheduler.is_some() {
        return unsupported("linux.scheduler");
    }
    if l.rdt.is_some() {
        return unsupported("linux.rdt");
    }
    if l.memory_policy.is_some() {
        return unsupported("linux.memory_policy");
    }
    if let Some(o) = &l.oom_score_adj {
        let v = i32::try_from(o.value).ok().filter(|v| (-1000..=1000).contains(v)).ok_or_else(|| AdjustError::Invalid {
            plugin: plugin.into(),
            field: "linux.oom_score_adj",
            message: format!("{} is outside -1000..=1000", o.value),
        })?;
        spec.process_mut().get_or_insert_with(Default::default).set_oom_score_adj(Some(v));
    }
    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    for d in &l.devices {
        add_device(linux, plugin, d)?;
    }
    if !l.cgroups_path.is_empty() {
        if l.cgroups_path.split(['/', ':']).any(|c| c == "..") {
            return Err(AdjustError::Invalid {
                plugin: plugin.into(),
                field: "linux.cgroups_path",
                message: format!("{:?} has a \"..\" component", l.cgroups_path),
            });
        }
        linux.set_cgroups_path(Some(PathBuf::from(&l.cgroups_path)));
    }
    let Some(r) = &l.resources else { return Ok(()) };
    if !r.hugepage_limits.is_empty() {
        return unsupported("linux.resources.hugepage_limits");
    }
    if r.blockio_class.is_some() {
        return unsupported("linux.resources.blockio_class");
    }
    if r.rdt_class.is_some() {
        return unsupported("linux.resources.rdt_class");
    }
    let res: &mut LinuxResources = linux.resources_mut().get_or_insert_with(Default::default);
    // Device cgroup rules are appended (nri gives them no owner; containerd appends them).
    for rule in &r.devices {
        let typ = device_type(plugin, "linux.resources.devices", &rule.r#type, true)?;
        let mut oci = LinuxDeviceCgroup::default();
        oci.set_allow(rule.allow)
            .set_typ(typ)
            .set_major(rule.major.as_ref().map(|v| v.value))
            .set_minor(rule.minor.as_ref().map(|v| v.value))
            .set_access(Some(rule.access.clone()).filter(|a| !a.is_empty()));
        res.devices_mut().get_or_insert_with(Vec::new).push(oci);
    }
    if let Some(m) = &r.memory {
        if m.kernel.is_some() || m.kernel_tcp.is_some() || m.disable_oom_killer.is_some() || m.use_hierarchy.is_some() {
            return unsupported("linux.resources.memory (kernel, kernel_tcp, disable_oom_killer, use_hierarchy)");
        }
        for (name, v) in [("limit", &m.limit), ("reservation", &m.reservation), ("swap", &m.swap)] {
            if let Some(v) = v.as_ref().filter(|v| v.value < -1) {
                return Err(AdjustError::Invalid {
                    plugin: plugin.into(),
                    field: "linux.resources.memory",
                    message: format!("{name} {}: expected bytes, or -1 for no limit", v.value),
                });
            }
        }
        let mem: &mut LinuxMemory = res.memory_mut().get_or_insert_with(Default::default);
        if let Some(v) = m.limit.as_ref().filter(|v| v.value != 0) {
            mem.set_limit(Some(v.value));
            // As the CRI path does on v1 (spec::linux::resources): no swap beyond the limit
            // unless the plugin sets swap too.
            if m.swap.is_none() {
                mem.set_swap(Some(v.value));
            }
        }
        if let Some(v) = &m.reservation {
            mem.set_reservation(Some(v.value));
        }
        if let Some(v) = &m.swap {
            mem.set_swap(Some(v.value));
        }
        if let Some(v) = &m.swappiness {
            mem.set_swappiness(Some(v.value));
        }
    }
    if let Some(c) = &r.cpu {
        if c.realtime_runtime.is_some() || c.realtime_period.is_some() {
            return unsupported("linux.resources.cpu (realtime)");
        }
        let cpu: &mut LinuxCpu = res.cpu_mut().get_or_insert_with(Default::default);
        if let Some(v) = &c.shares {
            cpu.set_shares(Some(v.value));
        }
        if let Some(v) = &c.quota {
            cpu.set_quota(Some(v.value));
        }
        if let Some(v) = &c.period {
            cpu.set_period(Some(v.value));
        }
        if !c.cpus.is_empty() {
            cpu.set_cpus(Some(c.cpus.clone()));
        }
        if !c.mems.is_empty() {
            cpu.set_mems(Some(c.mems.clone()));
        }
    }
    if let Some(p) = &r.pids {
        let mut pids = LinuxPids::default();
        pids.set_limit(p.limit);
        res.set_pids(Some(pids));
    }
    if !r.unified.is_empty() {
        let unified = res.unified_mut().get_or_insert_with(Default::default);
        for (k, v) in &r.unified {
            match removal(k) {
                (k, true) => unified.remove(k),
                (k, false) => unified.insert(k.to_string(), v.clone()),
            };
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str) -> api::KeyValue {
        api::KeyValue { key: k.into(), value: v.into() }
    }

    fn spec() -> Spec {
        let mut s = Spec::default();
        s.process_mut().get_or_insert_with(Default::default).set_env(Some(vec!["PATH=/bin".into(), "KEEP=1".into(), "DROP=1".into()]));
        s
    }

    #[test]
    fn env_mounts_and_memory_are_applied_in_plugin_order() {
        let mut s = spec();
        let first = api::ContainerAdjustment {
            env: vec![kv("A", "1"), kv("-DROP", "")],
            mounts: vec![api::Mount {
                destination: "/data".into(),
                r#type: "bind".into(),
                source: "/srv/a".into(),
                options: vec!["rbind".into()],
            }],
            linux: Some(api::LinuxContainerAdjustment {
                resources: Some(api::LinuxResources {
                    memory: Some(api::LinuxMemory { limit: Some(api::OptionalInt64 { value: 64 << 20 }), ..Default::default() }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let second = api::ContainerAdjustment {
            env: vec![kv("A", "2")],
            mounts: vec![api::Mount { destination: "/data".into(), r#type: "bind".into(), source: "/srv/b".into(), options: vec![] }],
            ..Default::default()
        };
        apply(&mut s, &[("10-a".into(), first), ("20-b".into(), second)]).unwrap();
        let env = s.process().as_ref().unwrap().env().clone().unwrap();
        assert_eq!(env, ["PATH=/bin", "KEEP=1", "A=2"]);
        let mounts = s.mounts().clone().unwrap();
        let data: Vec<_> = mounts.iter().filter(|m| m.destination() == std::path::Path::new("/data")).collect();
        assert_eq!(data.len(), 1, "one mount per destination: {mounts:?}");
        assert_eq!(data[0].source().as_deref(), Some(std::path::Path::new("/srv/b")));
        let depth: Vec<usize> = mounts.iter().map(|m| m.destination().components().count()).collect();
        assert!(depth.windows(2).all(|w| w[0] <= w[1]), "parents first: {mounts:?}");
        let mem = s.linux().as_ref().unwrap().resources().as_ref().unwrap().memory().unwrap();
        assert_eq!((mem.limit(), mem.swap()), (Some(64 << 20), Some(64 << 20)));
    }

    #[test]
    fn devices_get_a_node_and_a_cgroup_rule() {
        let mut s = spec();
        let dev = |path: &str| api::LinuxDevice {
            path: path.into(),
            r#type: "c".into(),
            major: 10,
            minor: 229,
            file_mode: Some(api::OptionalFileMode { value: 0o666 }),
            ..Default::default()
        };
        let a = api::ContainerAdjustment {
            linux: Some(api::LinuxContainerAdjustment { devices: vec![dev("/dev/fuse"), dev("-/dev/gone")], ..Default::default() }),
            ..Default::default()
        };
        apply(&mut s, &[("10-dev".into(), a)]).unwrap();
        let linux = s.linux().as_ref().unwrap();
        let devs = linux.devices().clone().unwrap();
        assert_eq!(devs.len(), 1, "{devs:?}");
        assert_eq!(
            (devs[0].path().to_str(), devs[0].major(), devs[0].minor(), devs[0].file_mode()),
            (Some("/dev/fuse"), 10, 229, Some(0o666))
        );
        let rules = linux.resources().as_ref().unwrap().devices().clone().unwrap();
        let last = rules.last().unwrap();
        assert_eq!((last.allow(), last.major(), last.minor(), last.access().as_deref()), (true, Some(10), Some(229), Some("rwm")));
        let bad = api::ContainerAdjustment {
            linux: Some(api::LinuxContainerAdjustment {
                devices: vec![api::LinuxDevice { r#type: "x".into(), ..dev("/dev/x") }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let e = apply(&mut spec(), &[("10-dev".into(), bad)]).unwrap_err().to_string();
        assert!(e.contains("10-dev") && e.contains("device type \"x\""), "{e}");
    }

    #[test]
    fn update_args_marker_is_stripped() {
        let mut s = spec();
        let a = api::ContainerAdjustment { args: vec!["".into(), "/bin/app".into(), "-v".into()], ..Default::default() };
        apply(&mut s, &[("10-a".into(), a)]).unwrap();
        assert_eq!(s.process().as_ref().unwrap().args().clone().unwrap(), ["/bin/app", "-v"]);
    }

    #[test]
    fn what_is_not_applied_fails_naming_plugin_and_field() {
        let a = api::ContainerAdjustment {
            linux: Some(api::LinuxContainerAdjustment { sysctl: [("net.x".to_string(), "1".to_string())].into(), ..Default::default() }),
            ..Default::default()
        };
        let e = apply(&mut spec(), &[("05-tuner".into(), a)]).unwrap_err().to_string();
        assert!(e.contains("05-tuner") && e.contains("linux.sysctl"), "{e}");
        let bad = api::ContainerAdjustment {
            rlimits: vec![api::PosixRlimit { r#type: "NOFILE".into(), hard: 1, soft: 1 }],
            ..Default::default()
        };
        let e = apply(&mut spec(), &[("05-lim".into(), bad)]).unwrap_err().to_string();
        assert!(e.contains("\"NOFILE\" is not an OCI rlimit type"), "{e}");
        let linux = |l: api::LinuxContainerAdjustment| api::ContainerAdjustment { linux: Some(l), ..Default::default() };
        let memory = |limit: i64| api::LinuxResources {
            memory: Some(api::LinuxMemory { limit: Some(api::OptionalInt64 { value: limit }), ..Default::default() }),
            ..Default::default()
        };
        for (a, want) in [
            (linux(api::LinuxContainerAdjustment { cgroups_path: "/../../escape".into(), ..Default::default() }), "linux.cgroups_path"),
            (linux(api::LinuxContainerAdjustment { resources: Some(memory(-5)), ..Default::default() }), "limit -5"),
            (api::ContainerAdjustment { mounts: vec![api::Mount::default()], ..Default::default() }, "destination \"\""),
        ] {
            let e = apply(&mut spec(), &[("07-bad".into(), a)]).unwrap_err().to_string();
            assert!(e.contains("07-bad") && e.contains(want), "{want}: {e}");
        }
        let mut s = spec();
        apply(&mut s, &[("07-ok".into(), linux(api::LinuxContainerAdjustment { resources: Some(memory(-1)), ..Default::default() }))])
            .unwrap();
    }
}
