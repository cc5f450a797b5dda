//! CRI stats messages from container and sandbox records: ContainerStats, ListContainerStats,
//! PodSandboxStats, ListPodSandboxStats.
//!
//! Which objects have stats (as containerd's CRI plugin): only RUNNING containers and READY pod
//! sandboxes. A list skips the others (and a container that stopped while being read); asking for
//! one of them by ID is FailedPrecondition. Every function here does blocking file I/O (cgroupfs,
//! procfs, a walk of the writable layer): call it from `spawn_blocking`.
//!
//! A pod's CPU and memory are those of its cgroup parent when the pod has a parent of its own
//! (kubelet's `/kubepods/.../pod<uid>`), and the sum of its infra and container cgroups when it
//! uses berth's shared default parent (`cgroup_parent` in the config). Network figures are read
//! from `/proc/<infra pid>/net/dev`, which shows the pod's network namespace; host-network pods
//! have none.

use super::cgroup::{self, CgroupStats};
use super::{caches, host_layout, parse, psi, StatsError};
use crate::cgroups::fs_path;
use crate::container::{ContainerPaths, ContainerRecord, ContainerState};
use crate::cri::v1 as cri;
use crate::daemon::Daemon;
use crate::error::{Error, Result};
use crate::sandbox::{SandboxRecord, SandboxState};
use std::collections::HashMap;

fn u64v(value: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value })
}

/// The error for an object whose cgroup could not be read.
/// A stats reader's error as the daemon's: no cgroup is FailedPrecondition (the object is not
/// running), an unreadable file is Io naming it.
pub(crate) fn stats_error(kind: &str, id: &str, e: StatsError) -> Error {
    match e {
        StatsError::NoCgroup { .. } => Error::FailedPrecondition(format!("{kind} {id}: no stats: {e}")),
        StatsError::Io { path, source } => Error::Io { context: format!("{kind} {id}: reading {}", path.display()), source },
    }
}

/// Pressure stall information of one cgroup (cgroup v2 with PSI; all `None` elsewhere).
#[derive(Debug, Clone, Copy, Default)]
struct Pressure {
    cpu: Option<cri::PsiStats>,
    memory: Option<cri::PsiStats>,
    io: Option<cri::PsiStats>,
}

impl Pressure {
    /// Reads `cpu.pressure`, `memory.pressure` and `io.pressure` of `cgroup` (a path under the
    /// cgroup mount).
    fn read(cgroup: &str) -> Pressure {
        let get = |r: &str| psi::read(host_layout(), cgroup, r).map(|p| psi::to_cri(&p));
        Pressure { cpu: get("cpu"), memory: get("memory"), io: get("io") }
    }

    /// CRI IoUsage: it carries only PSI, so `None` without it.
    fn io_usage(&self, now: i64) -> Option<cri::IoUsage> {
        self.io.map(|p| cri::IoUsage { timestamp: now, psi: Some(p) })
    }
}

/// CRI CPU and memory usage of a cgroup's figures at `now` (ns), with its PSI; `rate_key` names
/// the object in the rate cache.
fn cpu_memory(s: &CgroupStats, psi: &Pressure, rate_key: &str, now: i64) -> (Option<cri::CpuUsage>, Option<cri::MemoryUsage>) {
    let cpu = s.cpu_usage_ns.map(|ns| cri::CpuUsage {
        timestamp: now,
        usage_core_nano_seconds: u64v(ns),
        usage_nano_cores: caches().0.nano_cores(rate_key, now, ns).map(|value| cri::UInt64Value { value }),
        psi: psi.cpu,
    });
    let memory = s.memory.map(|m| cri::MemoryUsage {
        timestamp: now,
        working_set_bytes: u64v(m.working_set),
        available_bytes: m.available().and_then(u64v),
        usage_bytes: u64v(m.usage),
        rss_bytes: u64v(m.rss),
        page_faults: u64v(m.page_faults),
        major_page_faults: u64v(m.major_page_faults),
        psi: psi.memory,
    });
    (cpu, memory)
}

/// The mount point reported for container writable layers: `<root>/containers`.
pub fn container_fs_root(d: &Daemon) -> std::path::PathBuf {
    d.config.root.join("containers")
}

/// Total (bytes, inodes) of every container's writable layer (`<containers_dir>/*/upper`), for
/// ImageFsInfo.container_filesystems. A missing `containers_dir` is (0, 0); layers removed
/// during the walk are skipped. Blocking. Errors: unreadable directories.
pub fn writable_layers_usage(containers_dir: &std::path::Path) -> std::io::Result<(u64, u64)> {
    let entries = match std::fs::read_dir(containers_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(e),
    };
    let (mut bytes, mut inodes) = (0, 0);
    for entry in entries {
        let upper = entry?.path().join("upper");
        match crate::storage::dir_usage(&upper) {
            Ok((b, i)) => {
                bytes += b;
                inodes += i;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok((bytes, inodes))
}

/// Stats of one running container in a pod whose cgroup parent is `parent`, with its raw
/// cgroup figures (for pod sums).
fn one_container(d: &Daemon, r: &ContainerRecord, parent: &str) -> Result<(cri::ContainerStats, CgroupStats)> {
    let now = crate::util::now_nanos();
    let dir = fs_path(parent, &r.id);
    let raw = cgroup::read(host_layout(), &dir).map_err(|e| stats_error("container", &r.id, e))?;
    let pressure = Pressure::read(&dir);
    let (cpu, memory) = cpu_memory(&raw, &pressure, &r.id, now);
    let upper = ContainerPaths::new(d, &r.id).state.join("upper");
    let writable_layer = match caches().1.usage(&upper) {
        Ok((bytes, inodes)) => Some(cri::FilesystemUsage {
            timestamp: now,
            fs_id: Some(cri::FilesystemIdentifier { mountpoint: container_fs_root(d).to_string_lossy().into_owned() }),
            used_bytes: u64v(bytes),
            inodes_used: u64v(inodes),
        }),
        Err(e) => {
            tracing::debug!(container = %r.id, error = %e, "writable layer usage unavailable");
            None
        }
    };
    let stats = cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: r.id.clone(),
            metadata: r.config.metadata.clone(),
            labels: r.config.labels.clone(),
            annotations: r.config.annotations.clone(),
        }),
        cpu,
        memory,
        writable_layer,
        swap: None,
        io: pressure.io_usage(now),
    };
    Ok((stats, raw))
}

fn sandboxes_by_id(d: &Daemon) -> HashMap<String, SandboxRecord> {
    crate::sandbox::list(d).into_iter().map(|s| (s.id.clone(), s)).collect()
}

/// CRI ContainerStats of container `id` (full ID or unique prefix).
///
/// Errors: NotFound / InvalidArgument as `container::get`; FailedPrecondition when it is not
/// running or its cgroup is gone; Io when a cgroup file cannot be read.
pub fn container_stats(d: &Daemon, id: &str) -> Result<cri::ContainerStats> {
    let r = crate::container::get(d, id)?;
    if r.state != ContainerState::Running {
        return Err(Error::FailedPrecondition(format!("container {}: is {:?}; only running containers have stats", r.id, r.state)));
    }
    let sb = crate::sandbox::get(d, &r.sandbox_id)?;
    Ok(one_container(d, &r, &sb.cgroup_parent)?.0)
}

/// Whether a container matches a CRI `ContainerStatsFilter`: `id` and `pod_sandbox_id` as
/// prefixes (full IDs work too), every `label_selector` pair present.
pub fn container_filter_matches(r: &ContainerRecord, f: &cri::ContainerStatsFilter) -> bool {
    r.id.starts_with(&f.id)
        && r.sandbox_id.starts_with(&f.pod_sandbox_id)
        && f.label_selector.iter().all(|(k, v)| r.config.labels.get(k) == Some(v))
}

/// CRI ListContainerStats: stats of every running container matching `filter`.
/// Errors: the store's; unreadable cgroup files (Io).
pub fn list_container_stats(d: &Daemon, filter: &cri::ContainerStatsFilter) -> Result<Vec<cri::ContainerStats>> {
    let sandboxes = sandboxes_by_id(d);
    let mut out = Vec::new();
    for r in crate::container::list(d) {
        if r.state != ContainerState::Running || !container_filter_matches(&r, filter) {
            continue;
        }
        let Some(sb) = sandboxes.get(&r.sandbox_id) else { continue };
        match one_container(d, &r, &sb.cgroup_parent) {
            Ok((s, _)) => out.push(s),
            Err(Error::FailedPrecondition(m)) => tracing::debug!(container = %r.id, "skipped: {m}"),
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Network usage of a pod from its `net/dev` ([`crate::stats::pod_net_dev`]); `None` for
/// host-network pods, an infra that is not running, or an unreadable file. The default
/// interface is `eth0` (the CNI convention kubelet uses), else the first non-loopback one.
fn network(sb: &SandboxRecord, now: i64) -> Option<cri::NetworkUsage> {
    let text = super::pod_net_dev(sb)?;
    let interfaces: Vec<cri::NetworkInterfaceUsage> = parse::net_dev(&text)
        .into_iter()
        .map(|c| cri::NetworkInterfaceUsage {
            name: c.name,
            rx_bytes: u64v(c.rx_bytes),
            rx_errors: u64v(c.rx_errors),
            tx_bytes: u64v(c.tx_bytes),
            tx_errors: u64v(c.tx_errors),
        })
        .collect();
    let default_interface = interfaces.iter().find(|i| i.name == "eth0").or(interfaces.first()).cloned();
    Some(cri::NetworkUsage { timestamp: now, default_interface, interfaces })
}

/// Stats of one ready pod sandbox and its running containers.
fn one_sandbox(d: &Daemon, sb: &SandboxRecord, containers: &[ContainerRecord]) -> Result<cri::PodSandboxStats> {
    let mut stats = Vec::new();
    let mut sum = match cgroup::read(host_layout(), &fs_path(&sb.cgroup_parent, &sb.id)) {
        Ok(s) => s,
        Err(StatsError::NoCgroup { .. }) => CgroupStats::default(),
        Err(e) => return Err(stats_error("pod sandbox infra container", &sb.id, e)),
    };
    for r in containers.iter().filter(|r| r.sandbox_id == sb.id && r.state == ContainerState::Running) {
        match one_container(d, r, &sb.cgroup_parent) {
            Ok((s, raw)) => {
                stats.push(s);
                sum = sum.add(&raw);
            }
            Err(Error::FailedPrecondition(m)) => tracing::debug!(container = %r.id, "skipped: {m}"),
            Err(e) => return Err(e),
        }
    }
    // A parent of the pod's own (kubelet's pod cgroup) counts everything in the pod, including
    // processes exec'd into it; berth's shared default parent holds other pods too.
    let own_parent = sb.cgroup_parent.trim_end_matches('/') != d.config.cgroup_parent.trim_end_matches('/');
    let parent_dir = crate::cgroups::parent_fs_path(&sb.cgroup_parent);
    let (pod, pressure) = if own_parent {
        match cgroup::read(host_layout(), &parent_dir) {
            Ok(s) => (s, Pressure::read(&parent_dir)),
            Err(StatsError::NoCgroup { .. }) => (sum, Pressure::default()),
            Err(e) => return Err(stats_error("pod sandbox cgroup parent of", &sb.id, e)),
        }
    } else {
        // PSI does not add up across cgroups: without a pod cgroup there is none for the pod.
        (sum, Pressure::default())
    };
    let now = crate::util::now_nanos();
    let (cpu, memory) = cpu_memory(&pod, &pressure, &format!("pod/{}", sb.id), now);
    Ok(cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: sb.id.clone(),
            metadata: sb.config.metadata.clone(),
            labels: sb.config.labels.clone(),
            annotations: sb.config.annotations.clone(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu,
            memory,
            network: network(sb, now),
            process: pod.pids.map(|n| cri::ProcessUsage { timestamp: now, process_count: u64v(n) }),
            containers: stats,
            io: pressure.io_usage(now),
        }),
        windows: None,
    })
}

/// CRI PodSandboxStats of pod sandbox `id` (full ID or unique prefix).
///
/// Errors: NotFound / InvalidArgument as `sandbox::get`; FailedPrecondition when it is not
/// ready; Io when a cgroup file cannot be read.
pub fn pod_sandbox_stats(d: &Daemon, id: &str) -> Result<cri::PodSandboxStats> {
    let sb = crate::sandbox::get(d, id)?;
    if sb.state != SandboxState::Ready {
        return Err(Error::FailedPrecondition(format!("pod sandbox {}: is not ready; only ready pods have stats", sb.id)));
    }
    let containers = crate::container::list_in_sandbox(d, &sb.id);
    one_sandbox(d, &sb, &containers)
}

/// CRI ListPodSandboxStats: stats of every ready pod sandbox matching `filter` (`id` as a
/// prefix, every `label_selector` pair present).
pub fn list_pod_sandbox_stats(d: &Daemon, filter: &cri::PodSandboxStatsFilter) -> Result<Vec<cri::PodSandboxStats>> {
    let containers = crate::container::list(d);
    let mut out = Vec::new();
    for sb in crate::sandbox::list(d) {
        let labels_ok = filter.label_selector.iter().all(|(k, v)| sb.config.labels.get(k) == Some(v));
        if !sb.id.starts_with(&filter.id) || !labels_ok {
            continue;
        }
        if sb.state == SandboxState::Ready {
            out.push(one_sandbox(d, &sb, &containers)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writable_layers_sum_uppers_only() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(writable_layers_usage(&t.path().join("none")).unwrap(), (0, 0));
        for id in ["a", "b"] {
            std::fs::create_dir_all(t.path().join(id).join("upper")).unwrap();
            std::fs::create_dir_all(t.path().join(id).join("work")).unwrap();
            std::fs::write(t.path().join(id).join("upper/f"), vec![1u8; 8192]).unwrap();
        }
        let (bytes, inodes) = writable_layers_usage(t.path()).unwrap();
        assert_eq!(inodes, 4, "two upper dirs with one file each");
        assert!(bytes >= 2 * 8192, "{bytes}");
    }

    #[test]
    fn stats_filters_match_prefixes_and_labels() {
        let r = ContainerRecord {
            config: cri::ContainerConfig { labels: [("app".to_string(), "web".to_string())].into(), ..Default::default() },
            state: ContainerState::Running,
            ..ContainerRecord::for_test("abcdef", "123456")
        };
        let f = |id: &str, pod: &str, l: &[(&str, &str)]| cri::ContainerStatsFilter {
            id: id.into(),
            pod_sandbox_id: pod.into(),
            label_selector: l.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        assert!(container_filter_matches(&r, &f("", "", &[])));
        assert!(container_filter_matches(&r, &f("abc", "1234", &[("app", "web")])));
        assert!(!container_filter_matches(&r, &f("abd", "", &[])));
        assert!(!container_filter_matches(&r, &f("", "2", &[])));
        assert!(!container_filter_matches(&r, &f("", "", &[("app", "db")])));
    }
}
