//! Conversions for NRI: [`with_spec`] fills an NRI `Container` (made from its record by
//! `records::nri_container`) with what only the OCI spec knows (the args, env, mounts,
//! resources and namespaces the runtime will be given), as CreateContainer sends it; and CRI
//! resources to and from NRI's.

use super::api;
use oci_spec::runtime::Spec;

/// `c` (a record's NRI view) with the process, mounts and Linux settings taken from `spec`, the OCI spec
/// about to be handed to the runtime.
pub fn with_spec(mut c: api::Container, spec: &Spec) -> api::Container {
    if let Some(p) = spec.process() {
        c.args = p.args().clone().unwrap_or_default();
        c.env = p.env().clone().unwrap_or_default();
        c.rlimits = p
            .rlimits()
            .iter()
            .flatten()
            .map(|l| api::PosixRlimit {
                // Serialized as the OCI spec spells it: "RLIMIT_NOFILE".
                r#type: serde_json::to_value(l.typ()).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
                hard: l.hard(),
                soft: l.soft(),
            })
            .collect();
    }
    c.mounts = spec
        .mounts()
        .iter()
        .flatten()
        .map(|m| api::Mount {
            destination: m.destination().to_string_lossy().into_owned(),
            r#type: m.typ().clone().unwrap_or_default(),
            source: m.source().as_ref().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
            options: m.options().clone().unwrap_or_default(),
        })
        .collect();
    if let Some(linux) = spec.linux() {
        let res = linux.resources().as_ref();
        let memory = res.and_then(|r| r.memory().as_ref()).map(|m| api::LinuxMemory {
            limit: m.limit().map(|value| api::OptionalInt64 { value }),
            reservation: m.reservation().map(|value| api::OptionalInt64 { value }),
            swap: m.swap().map(|value| api::OptionalInt64 { value }),
            swappiness: m.swappiness().map(|value| api::OptionalUInt64 { value }),
            ..Default::default()
        });
        let cpu = res.and_then(|r| r.cpu().as_ref()).map(|p| api::LinuxCpu {
            shares: p.shares().map(|value| api::OptionalUInt64 { value }),
            quota: p.quota().map(|value| api::OptionalInt64 { value }),
            period: p.period().map(|value| api::OptionalUInt64 { value }),
            cpus: p.cpus().clone().unwrap_or_default(),
            mems: p.mems().clone().unwrap_or_default(),
            ..Default::default()
        });
        c.linux = Some(api::LinuxContainer {
            namespaces: linux
                .namespaces()
                .iter()
                .flatten()
                .map(|n| api::LinuxNamespace {
                    // OCI spells them "network", "ipc", ... as NRI does.
                    r#type: serde_json::to_value(n.typ()).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
                    path: n.path().as_ref().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default(),
                })
                .collect(),
            resources: Some(api::LinuxResources { memory, cpu, ..Default::default() }),
            oom_score_adj: spec.process().as_ref().and_then(|p| p.oom_score_adj()).map(|v| api::OptionalInt { value: v as i64 }),
            cgroups_path: linux.cgroups_path().as_ref().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default(),
            ..Default::default()
        });
    }
    c
}

/// NRI `LinuxResources` (a plugin's update) as CRI `LinuxContainerResources`, for
/// UpdateContainerResources' merge (an unset field stays 0: kept). Memory limit and swap, CPU
/// shares, quota, period, cpus and mems, hugepage limits and `unified`; pids, block I/O and RDT
/// classes have no CRI field and are dropped (logged by the caller).
pub fn cri_resources(r: &api::LinuxResources) -> crate::cri::v1::LinuxContainerResources {
    let mut out = crate::cri::v1::LinuxContainerResources::default();
    if let Some(m) = &r.memory {
        out.memory_limit_in_bytes = m.limit.as_ref().map_or(0, |v| v.value);
        out.memory_swap_limit_in_bytes = m.swap.as_ref().map_or(0, |v| v.value);
    }
    if let Some(c) = &r.cpu {
        out.cpu_shares = c.shares.as_ref().map_or(0, |v| v.value.min(i64::MAX as u64) as i64);
        out.cpu_quota = c.quota.as_ref().map_or(0, |v| v.value);
        out.cpu_period = c.period.as_ref().map_or(0, |v| v.value.min(i64::MAX as u64) as i64);
        out.cpuset_cpus = c.cpus.clone();
        out.cpuset_mems = c.mems.clone();
    }
    out.hugepage_limits =
        r.hugepage_limits.iter().map(|h| crate::cri::v1::HugepageLimit { page_size: h.page_size.clone(), limit: h.limit }).collect();
    out.unified = r.unified.clone().into_iter().collect();
    out
}

/// CRI `LinuxContainerResources` in NRI's terms (memory, CPU; 0 means unset in the CRI).
pub fn resources_of_cri(r: &crate::cri::v1::LinuxContainerResources) -> api::LinuxResources {
    let set_i = |v: i64| (v != 0).then_some(api::OptionalInt64 { value: v });
    let set_u = |v: i64| (v > 0).then_some(api::OptionalUInt64 { value: v as u64 });
    api::LinuxResources {
        memory: Some(api::LinuxMemory {
            limit: set_i(r.memory_limit_in_bytes),
            swap: set_i(r.memory_swap_limit_in_bytes),
            ..Default::default()
        }),
        cpu: Some(api::LinuxCpu {
            shares: set_u(r.cpu_shares),
            quota: set_i(r.cpu_quota),
            period: set_u(r.cpu_period),
            cpus: r.cpuset_cpus.clone(),
            mems: r.cpuset_mems.clone(),
            ..Default::default()
        }),
        unified: r.unified.clone().into_iter().collect(),
        ..Default::default()
    }
}
