//! CRI ListMetricDescriptors and ListPodSandboxMetrics: cgroup and netns figures under the
//! cAdvisor metric names kubelet's CRI metrics collector re-exports on `/metrics/cadvisor`
//! (feature gate PodAndContainerStatsFromCRI).
//!
//! Labels follow CRI-O: every metric carries `id`, `name`, `image` (container ID, its CRI
//! metadata name, its image as configured); the pod-level network metrics carry
//! (`<pod sandbox id>`, `POD`, `""`) plus `interface`. kubelet appends namespace/pod/container
//! itself. Values are `UInt64Value`, so CPU seconds are whole seconds (as CRI-O and containerd
//! send them). `timestamp` is 0: every figure is read live (CRI `Metric.timestamp`).
//!
//! Which objects: running containers of ready pod sandboxes, as for the stats RPCs; a figure
//! whose controller is missing is left out rather than sent as 0.

use crate::container::spec::cgroups_path;
use crate::container::{ContainerRecord, ContainerState};
use crate::daemon::{Daemon, Result};
use crate::sandbox::{SandboxRecord, SandboxState};
use crate::stats::parse::InterfaceCounters;
use crate::stats::{cgroup, host_layout, CgroupStats, StatsError};
use crate::cri::v1 as cri;

/// The label keys of every container metric.
pub const BASE_LABEL_KEYS: &[&str] = &["id", "name", "image"];
/// The label keys of the pod network metrics.
pub const NETWORK_LABEL_KEYS: &[&str] = &["id", "name", "image", "interface"];

/// (name, help, network?) of every metric berth sends, in descriptor order.
const METRICS: &[(&str, &str, bool)] = &[
    ("container_cpu_usage_seconds_total", "Cumulative cpu time consumed in seconds.", false),
    ("container_memory_working_set_bytes", "Current working set in bytes.", false),
    ("container_memory_usage_bytes", "Current memory usage in bytes, including all memory regardless of when it was accessed.", false),
    ("container_memory_rss", "Size of RSS in bytes.", false),
    ("container_spec_memory_limit_bytes", "Memory limit for the container.", false),
    ("container_processes", "Number of processes running inside the container.", false),
    ("container_cpu_user_seconds_total", "Cumulative user cpu time consumed in seconds.", false),
    ("container_cpu_system_seconds_total", "Cumulative system cpu time consumed in seconds.", false),
    ("container_threads", "Number of threads running inside the container.", false),
    ("container_file_descriptors", "Number of open file descriptors for the container.", false),
    ("container_sockets", "Number of open sockets for the container.", false),
    ("container_start_time_seconds", "Start time of the container since unix epoch in seconds.", false),
    ("container_last_seen", "Last time a container was seen by the exporter.", false),
    ("container_spec_cpu_shares", "CPU share of the container.", false),
    ("container_spec_cpu_quota", "CPU quota of the container.", false),
    ("container_spec_cpu_period", "CPU period of the container.", false),
    ("container_network_receive_bytes_total", "Cumulative count of bytes received.", true),
    ("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted.", true),
    ("container_network_receive_errors_total", "Cumulative count of errors encountered while receiving.", true),
    ("container_network_transmit_errors_total", "Cumulative count of errors encountered while transmitting.", true),
];

/// What the container's processes hold, from `/proc/<pid>` of every PID in its cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessFigures {
    /// Sum of `Threads:` in `/proc/<pid>/status`.
    pub threads: u64,
    /// Entries of `/proc/<pid>/fd`.
    pub file_descriptors: u64,
    /// Of those, the ones that are sockets (`socket:[inode]` links).
    pub sockets: u64,
}

/// [`ProcessFigures`] of `pids` (processes that vanish meanwhile are skipped).
pub fn process_figures(pids: &[i32]) -> ProcessFigures {
    let mut f = ProcessFigures::default();
    for pid in pids {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            f.threads += status.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0);
        }
        if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for fd in fds.flatten() {
                f.file_descriptors += 1;
                if std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:")) {
                    f.sockets += 1;
                }
            }
        }
    }
    f
}

/// What a container's metrics are made of beyond its cgroup's main figures.
#[derive(Debug, Clone, Default)]
pub struct ContainerFacts {
    /// CPU (user, system) nanoseconds.
    pub cpu_user_system_ns: Option<(u64, u64)>,
    /// Its processes' threads, descriptors and sockets.
    pub processes: ProcessFigures,
    /// When it started, nanoseconds since the epoch (0: not started).
    pub started_at_ns: i64,
    /// Now, seconds since the epoch.
    pub now_s: u64,
    /// CRI `LinuxContainerResources` (cpu_shares, cpu_quota, cpu_period) as configured; 0 = unset.
    pub cpu_spec: (i64, i64, i64),
}

/// CRI ListMetricDescriptors: one descriptor per metric berth sends, with its label keys.
pub fn descriptors() -> Vec<cri::MetricDescriptor> {
    METRICS
        .iter()
        .map(|(name, help, net)| cri::MetricDescriptor {
            name: name.to_string(),
            help: help.to_string(),
            label_keys: (if *net { NETWORK_LABEL_KEYS } else { BASE_LABEL_KEYS }).iter().map(|k| k.to_string()).collect(),
        })
        .collect()
}

fn metric(name: &str, kind: cri::MetricType, labels: &[&str], value: u64) -> cri::Metric {
    cri::Metric {
        name: name.into(),
        timestamp: 0,
        metric_type: kind as i32,
        label_values: labels.iter().map(|s| s.to_string()).collect(),
        value: Some(cri::UInt64Value { value }),
    }
}

/// The container metrics of one cgroup's figures and its [`ContainerFacts`], labelled (`id`,
/// `name`, `image`). `container_spec_memory_limit_bytes` is 0 when unlimited (as cAdvisor
/// reports it); the CPU spec metrics are left out when not configured.
pub fn container_metrics(id: &str, name: &str, image: &str, s: &CgroupStats, facts: &ContainerFacts) -> Vec<cri::Metric> {
    use cri::MetricType::{Counter, Gauge};
    let l = [id, name, image];
    let mut v = Vec::new();
    if let Some(ns) = s.cpu_usage_ns {
        v.push(metric("container_cpu_usage_seconds_total", Counter, &l, ns / 1_000_000_000));
    }
    if let Some(m) = s.memory {
        v.push(metric("container_memory_working_set_bytes", Gauge, &l, m.working_set));
        v.push(metric("container_memory_usage_bytes", Gauge, &l, m.usage));
        v.push(metric("container_memory_rss", Gauge, &l, m.rss));
        v.push(metric("container_spec_memory_limit_bytes", Gauge, &l, m.limit.unwrap_or(0)));
    }
    if let Some(n) = s.pids {
        v.push(metric("container_processes", Gauge, &l, n));
    }
    if let Some((user, system)) = facts.cpu_user_system_ns {
        v.push(metric("container_cpu_user_seconds_total", Counter, &l, user / 1_000_000_000));
        v.push(metric("container_cpu_system_seconds_total", Counter, &l, system / 1_000_000_000));
    }
    let p = facts.processes;
    v.push(metric("container_threads", Gauge, &l, p.threads));
    v.push(metric("container_file_descriptors", Gauge, &l, p.file_descriptors));
    v.push(metric("container_sockets", Gauge, &l, p.sockets));
    if facts.started_at_ns > 0 {
        v.push(metric("container_start_time_seconds", Gauge, &l, (facts.started_at_ns / 1_000_000_000) as u64));
    }
    v.push(metric("container_last_seen", Gauge, &l, facts.now_s));
    let (shares, quota, period) = facts.cpu_spec;
    for (name, value) in [("container_spec_cpu_shares", shares), ("container_spec_cpu_quota", quota), ("container_spec_cpu_period", period)] {
        if value > 0 {
            v.push(metric(name, Gauge, &l, value as u64));
        }
    }
    v
}

/// The pod-level network metrics of a pod's interfaces (loopback left out), labelled
/// (`sandbox_id`, `POD`, `""`, interface).
pub fn network_metrics(sandbox_id: &str, interfaces: &[InterfaceCounters]) -> Vec<cri::Metric> {
    let mut v = Vec::new();
    for i in interfaces.iter().filter(|i| i.name != "lo") {
        let l = [sandbox_id, "POD", "", i.name.as_str()];
        v.push(metric("container_network_receive_bytes_total", cri::MetricType::Counter, &l, i.rx_bytes));
        v.push(metric("container_network_transmit_bytes_total", cri::MetricType::Counter, &l, i.tx_bytes));
        v.push(metric("container_network_receive_errors_total", cri::MetricType::Counter, &l, i.rx_errors));
        v.push(metric("container_network_transmit_errors_total", cri::MetricType::Counter, &l, i.tx_errors));
    }
    v
}

/// Interfaces of a pod's network namespace from `/proc/<infra pid>/net/dev`; empty for
/// host-network pods, pods without an infra process, or an unreadable file.
fn pod_interfaces(sb: &SandboxRecord) -> Vec<InterfaceCounters> {
    if sb.host_network() || sb.netns_path.is_none() || sb.infra_pid <= 0 {
        return Vec::new();
    }
    match std::fs::read_to_string(format!("/proc/{}/net/dev", sb.infra_pid)) {
        Ok(text) => crate::stats::parse::net_dev(&text),
        Err(e) => {
            tracing::debug!(pod = %sb.id, error = %e, "no network metrics");
            Vec::new()
        }
    }
}

/// The metrics of one ready pod sandbox and its running containers. A container whose cgroup
/// is gone (it just exited) is left out. Errors: unreadable cgroup files.
pub fn pod_sandbox_metrics(sb: &SandboxRecord, containers: &[ContainerRecord]) -> Result<cri::PodSandboxMetrics> {
    let mut container_metrics_list = Vec::new();
    for r in containers.iter().filter(|r| r.sandbox_id == sb.id && r.state == ContainerState::Running) {
        let path = cgroups_path(&sb.cgroup_parent, &r.id);
        let s = match cgroup::read(host_layout(), &path) {
            Ok(s) => s,
            Err(StatsError::NoCgroup { .. }) => continue,
            Err(StatsError::Io { path, source }) => {
                return Err(crate::daemon::Error::Io { context: format!("container {}: reading {}", r.id, path.display()), source })
            }
        };
        let name = r.config.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or("");
        let image = r.config.image.as_ref().map(|i| i.image.as_str()).unwrap_or("");
        let res = r.config.linux.as_ref().and_then(|l| l.resources.as_ref());
        let facts = ContainerFacts {
            cpu_user_system_ns: cgroup::cpu_user_system(host_layout(), &path),
            processes: process_figures(&cgroup::procs(host_layout(), &path)),
            started_at_ns: r.started_at,
            now_s: (crate::util::now_nanos() / 1_000_000_000) as u64,
            cpu_spec: res.map(|x| (x.cpu_shares, x.cpu_quota, x.cpu_period)).unwrap_or_default(),
        };
        container_metrics_list.push(cri::ContainerMetrics {
            container_id: r.id.clone(),
            metrics: container_metrics(&r.id, name, image, &s, &facts),
        });
    }
    Ok(cri::PodSandboxMetrics {
        pod_sandbox_id: sb.id.clone(),
        metrics: network_metrics(&sb.id, &pod_interfaces(sb)),
        container_metrics: container_metrics_list,
    })
}

/// CRI ListPodSandboxMetrics: the metrics of every ready pod sandbox. Blocking (cgroupfs,
/// procfs): call from `spawn_blocking`. Errors: the store's; unreadable cgroup files.
pub fn list_pod_sandbox_metrics(d: &Daemon) -> Result<Vec<cri::PodSandboxMetrics>> {
    let containers = crate::container::list(d)?;
    let mut out = Vec::new();
    for sb in crate::sandbox::list(d)? {
        let sb = crate::sandbox::refresh(d, sb)?;
        if sb.state == SandboxState::Ready {
            out.push(pod_sandbox_metrics(&sb, &containers)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::MemoryStats;

    #[test]
    fn descriptors_cover_what_kubelet_reads() {
        let d = descriptors();
        for name in [
            "container_cpu_usage_seconds_total",
            "container_memory_working_set_bytes",
            "container_memory_usage_bytes",
            "container_memory_rss",
            "container_spec_memory_limit_bytes",
            "container_network_receive_bytes_total",
            "container_network_transmit_bytes_total",
            "container_processes",
        ] {
            let desc = d.iter().find(|x| x.name == name).unwrap_or_else(|| panic!("{name} missing"));
            assert!(!desc.help.is_empty());
            assert_eq!(desc.label_keys[..3], ["id", "name", "image"]);
        }
        let net = d.iter().find(|x| x.name == "container_network_receive_bytes_total").unwrap();
        assert_eq!(net.label_keys.last().map(String::as_str), Some("interface"));
        let mut names: Vec<_> = d.iter().map(|x| &x.name).collect();
        names.dedup();
        assert_eq!(names.len(), d.len(), "names are unique");
    }

    #[test]
    fn every_metric_matches_its_descriptor() {
        let s = CgroupStats {
            cpu_usage_ns: Some(2_600_000_000),
            memory: Some(MemoryStats { usage: 10, working_set: 8, rss: 5, page_faults: 1, major_page_faults: 0, limit: None }),
            pids: Some(3),
        };
        let facts = ContainerFacts {
            cpu_user_system_ns: Some((1_500_000_000, 3_000_000_000)),
            processes: ProcessFigures { threads: 4, file_descriptors: 9, sockets: 2 },
            started_at_ns: 1_700_000_000_000_000_000,
            now_s: 1_700_000_100,
            cpu_spec: (512, 50_000, 100_000),
        };
        let mut all = container_metrics("c1", "web", "busybox", &s, &facts);
        let ifs = vec![
            InterfaceCounters { name: "lo".into(), rx_bytes: 1, rx_errors: 0, tx_bytes: 1, tx_errors: 0 },
            InterfaceCounters { name: "eth0".into(), rx_bytes: 100, rx_errors: 0, tx_bytes: 200, tx_errors: 0 },
        ];
        all.extend(network_metrics("p1", &ifs));
        let d = descriptors();
        assert_eq!(all.len(), d.len(), "one sample of each, loopback left out");
        for m in &all {
            let desc = d.iter().find(|x| x.name == m.name).unwrap();
            assert_eq!(m.label_values.len(), desc.label_keys.len(), "{}", m.name);
        }
        let get = |n: &str| all.iter().find(|m| m.name == n).unwrap();
        assert_eq!(get("container_cpu_usage_seconds_total").value.as_ref().unwrap().value, 2, "whole seconds");
        assert_eq!(get("container_cpu_usage_seconds_total").metric_type, cri::MetricType::Counter as i32);
        assert_eq!(get("container_spec_memory_limit_bytes").value.as_ref().unwrap().value, 0, "unlimited = 0");
        assert_eq!(get("container_memory_working_set_bytes").metric_type, cri::MetricType::Gauge as i32);
        assert_eq!(get("container_network_transmit_bytes_total").label_values, ["p1", "POD", "", "eth0"]);
        assert_eq!(get("container_cpu_system_seconds_total").value.as_ref().unwrap().value, 3);
        assert_eq!(get("container_start_time_seconds").value.as_ref().unwrap().value, 1_700_000_000);
        assert_eq!(get("container_sockets").value.as_ref().unwrap().value, 2);
        let bare = container_metrics("c", "n", "i", &CgroupStats::default(), &ContainerFacts::default());
        let names: Vec<&str> = bare.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["container_threads", "container_file_descriptors", "container_sockets", "container_last_seen"], "no controller, no cgroup metric");
    }

    #[test]
    fn own_process_figures() {
        let f = process_figures(&[std::process::id() as i32, i32::MAX]);
        assert!(f.threads >= 1 && f.file_descriptors >= 3, "{f:?}");
    }
}
