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

use crate::cgroups::fs_path;
use crate::container::{ContainerRecord, ContainerState};
use crate::cri::v1 as cri;
use crate::daemon::Daemon;
use crate::error::Result;
use crate::sandbox::{SandboxRecord, SandboxState};
use crate::stats::collect::stats_error;
use crate::stats::detail::{self, DetailStats};
use crate::stats::parse::InterfaceCounters;
use crate::stats::{cgroup, host_layout, CgroupStats, StatsError};
use std::collections::BTreeMap;
use std::path::Path;

/// The label keys of every container metric.
pub const BASE_LABEL_KEYS: &[&str] = &["id", "name", "image"];
/// The label keys of the pod network metrics.
pub const NETWORK_LABEL_KEYS: &[&str] = &["id", "name", "image", "interface"];
/// The label keys of the filesystem and block I/O metrics (cAdvisor's `device`).
pub const DISK_LABEL_KEYS: &[&str] = &["id", "name", "image", "device"];
/// The label keys of `container_blkio_device_usage_total`.
pub const BLKIO_LABEL_KEYS: &[&str] = &["id", "name", "image", "device", "major", "minor", "operation"];
/// The label keys of `container_memory_failures_total` (`pgfault`/`pgmajfault`,
/// `container`/`hierarchy`).
pub const FAILURE_LABEL_KEYS: &[&str] = &["id", "name", "image", "failure_type", "scope"];

/// (name, help, label keys) of every metric berth sends, in descriptor order. Names and help
/// follow cAdvisor's `container_*` metrics (kubelet's `/metrics/cadvisor`).
const METRICS: &[(&str, &str, &[&str])] = &[
    ("container_cpu_usage_seconds_total", "Cumulative cpu time consumed in seconds.", BASE_LABEL_KEYS),
    ("container_cpu_user_seconds_total", "Cumulative user cpu time consumed in seconds.", BASE_LABEL_KEYS),
    ("container_cpu_system_seconds_total", "Cumulative system cpu time consumed in seconds.", BASE_LABEL_KEYS),
    ("container_cpu_cfs_periods_total", "Number of elapsed enforcement period intervals.", BASE_LABEL_KEYS),
    ("container_cpu_cfs_throttled_periods_total", "Number of throttled period intervals.", BASE_LABEL_KEYS),
    ("container_cpu_cfs_throttled_seconds_total", "Total time duration the container has been throttled.", BASE_LABEL_KEYS),
    ("container_memory_working_set_bytes", "Current working set in bytes.", BASE_LABEL_KEYS),
    (
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        BASE_LABEL_KEYS,
    ),
    ("container_memory_rss", "Size of RSS in bytes.", BASE_LABEL_KEYS),
    ("container_memory_cache", "Number of bytes of page cache memory.", BASE_LABEL_KEYS),
    ("container_memory_mapped_file", "Size of memory mapped files in bytes.", BASE_LABEL_KEYS),
    ("container_memory_swap", "Container swap usage in bytes.", BASE_LABEL_KEYS),
    ("container_memory_kernel_usage", "Size of kernel memory allocated in bytes.", BASE_LABEL_KEYS),
    ("container_memory_max_usage_bytes", "Maximum memory usage recorded in bytes.", BASE_LABEL_KEYS),
    ("container_memory_failcnt", "Number of memory usage hits limits.", BASE_LABEL_KEYS),
    ("container_memory_failures_total", "Cumulative count of memory allocation failures.", FAILURE_LABEL_KEYS),
    ("container_oom_events_total", "Count of out of memory events observed for the container.", BASE_LABEL_KEYS),
    ("container_spec_memory_limit_bytes", "Memory limit for the container.", BASE_LABEL_KEYS),
    ("container_spec_memory_swap_limit_bytes", "Memory swap limit for the container.", BASE_LABEL_KEYS),
    ("container_processes", "Number of processes running inside the container.", BASE_LABEL_KEYS),
    ("container_threads", "Number of threads running inside the container.", BASE_LABEL_KEYS),
    ("container_threads_max", "Maximum number of threads allowed inside the container, infinity if value is zero.", BASE_LABEL_KEYS),
    ("container_file_descriptors", "Number of open file descriptors for the container.", BASE_LABEL_KEYS),
    ("container_sockets", "Number of open sockets for the container.", BASE_LABEL_KEYS),
    ("container_start_time_seconds", "Start time of the container since unix epoch in seconds.", BASE_LABEL_KEYS),
    ("container_last_seen", "Last time a container was seen by the exporter.", BASE_LABEL_KEYS),
    ("container_spec_cpu_shares", "CPU share of the container.", BASE_LABEL_KEYS),
    ("container_spec_cpu_quota", "CPU quota of the container.", BASE_LABEL_KEYS),
    ("container_spec_cpu_period", "CPU period of the container.", BASE_LABEL_KEYS),
    ("container_fs_inodes_free", "Number of available Inodes.", DISK_LABEL_KEYS),
    ("container_fs_inodes_total", "Number of Inodes.", DISK_LABEL_KEYS),
    ("container_fs_limit_bytes", "Number of bytes that can be consumed by the container on this filesystem.", DISK_LABEL_KEYS),
    ("container_fs_usage_bytes", "Number of bytes that are consumed by the container on this filesystem.", DISK_LABEL_KEYS),
    ("container_fs_reads_bytes_total", "Cumulative count of bytes read.", DISK_LABEL_KEYS),
    ("container_fs_reads_total", "Cumulative count of reads completed.", DISK_LABEL_KEYS),
    ("container_fs_writes_bytes_total", "Cumulative count of bytes written.", DISK_LABEL_KEYS),
    ("container_fs_writes_total", "Cumulative count of writes completed.", DISK_LABEL_KEYS),
    ("container_blkio_device_usage_total", "Blkio Device bytes usage.", BLKIO_LABEL_KEYS),
    ("container_network_receive_bytes_total", "Cumulative count of bytes received.", NETWORK_LABEL_KEYS),
    ("container_network_receive_packets_total", "Cumulative count of packets received.", NETWORK_LABEL_KEYS),
    ("container_network_receive_packets_dropped_total", "Cumulative count of packets dropped while receiving.", NETWORK_LABEL_KEYS),
    ("container_network_receive_errors_total", "Cumulative count of errors encountered while receiving.", NETWORK_LABEL_KEYS),
    ("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted.", NETWORK_LABEL_KEYS),
    ("container_network_transmit_packets_total", "Cumulative count of packets transmitted.", NETWORK_LABEL_KEYS),
    ("container_network_transmit_packets_dropped_total", "Cumulative count of packets dropped while transmitting.", NETWORK_LABEL_KEYS),
    ("container_network_transmit_errors_total", "Cumulative count of errors encountered while transmitting.", NETWORK_LABEL_KEYS),
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
    /// CFS, memory detail, pids limit and block I/O of its cgroup.
    pub detail: DetailStats,
    /// Names of the block devices in `detail.io` (`/dev/vda`); a device not named here is
    /// labelled `major:minor`.
    pub device_names: BTreeMap<(u32, u32), String>,
    /// Its writable layer's filesystem.
    pub fs: Option<FsFigures>,
}

/// The filesystem holding a container's writable layer (cAdvisor's `container_fs_*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsFigures {
    /// The filesystem's source device as mounted (`/dev/vda1`), the `device` label.
    pub device: String,
    /// Free inodes of the filesystem (`statvfs` `f_ffree`).
    pub inodes_free: u64,
    /// Inodes of the filesystem (`f_files`).
    pub inodes_total: u64,
    /// Bytes the container could fill: the filesystem's size (`f_blocks * f_frsize`); berth sets
    /// no per-container quota.
    pub limit_bytes: u64,
    /// Bytes the writable layer holds.
    pub usage_bytes: u64,
}

/// CRI ListMetricDescriptors: one descriptor per metric berth sends, with its label keys.
pub fn descriptors() -> Vec<cri::MetricDescriptor> {
    METRICS
        .iter()
        .map(|(name, help, keys)| cri::MetricDescriptor {
            name: name.to_string(),
            help: help.to_string(),
            label_keys: keys.iter().map(|k| k.to_string()).collect(),
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
/// `name`, `image`, then the metric's own keys). `container_spec_memory_limit_bytes` and
/// `container_spec_memory_swap_limit_bytes` are 0 when unlimited (as cAdvisor reports them);
/// the CPU spec metrics are left out when not configured; a figure not read is left out.
/// Seconds are whole seconds (the CRI carries `UInt64Value`).
pub fn container_metrics(id: &str, name: &str, image: &str, s: &CgroupStats, facts: &ContainerFacts) -> Vec<cri::Metric> {
    use cri::MetricType::{Counter, Gauge};
    let l = [id, name, image];
    let mut v = Vec::new();
    let mut push = |metric_name: &str, kind: cri::MetricType, value: Option<u64>| {
        if let Some(value) = value {
            v.push(metric(metric_name, kind, &l, value));
        }
    };
    push("container_cpu_usage_seconds_total", Counter, s.cpu_usage_ns.map(|ns| ns / 1_000_000_000));
    if let Some((user, system)) = facts.cpu_user_system_ns {
        push("container_cpu_user_seconds_total", Counter, Some(user / 1_000_000_000));
        push("container_cpu_system_seconds_total", Counter, Some(system / 1_000_000_000));
    }
    if let Some(c) = facts.detail.cfs {
        push("container_cpu_cfs_periods_total", Counter, Some(c.periods));
        push("container_cpu_cfs_throttled_periods_total", Counter, Some(c.throttled_periods));
        push("container_cpu_cfs_throttled_seconds_total", Counter, Some(c.throttled_ns / 1_000_000_000));
    }
    if let Some(m) = s.memory {
        push("container_memory_working_set_bytes", Gauge, Some(m.working_set));
        push("container_memory_usage_bytes", Gauge, Some(m.usage));
        push("container_memory_rss", Gauge, Some(m.rss));
        push("container_spec_memory_limit_bytes", Gauge, Some(m.limit.unwrap_or(0)));
    }
    let md = facts.detail.memory.unwrap_or_default();
    push("container_memory_cache", Gauge, md.cache);
    push("container_memory_mapped_file", Gauge, md.mapped_file);
    push("container_memory_swap", Gauge, md.swap);
    push("container_memory_kernel_usage", Gauge, md.kernel);
    push("container_memory_max_usage_bytes", Gauge, md.max_usage);
    push("container_memory_failcnt", Counter, md.failcnt);
    push("container_oom_events_total", Counter, md.oom_kills);
    push("container_spec_memory_swap_limit_bytes", Gauge, md.swap_limit.map(|l| l.unwrap_or(0)));
    push("container_processes", Gauge, s.pids);
    let p = facts.processes;
    push("container_threads", Gauge, Some(p.threads));
    push("container_threads_max", Gauge, facts.detail.pids_max);
    push("container_file_descriptors", Gauge, Some(p.file_descriptors));
    push("container_sockets", Gauge, Some(p.sockets));
    push("container_start_time_seconds", Gauge, (facts.started_at_ns > 0).then_some((facts.started_at_ns / 1_000_000_000) as u64));
    push("container_last_seen", Gauge, Some(facts.now_s));
    let (shares, quota, period) = facts.cpu_spec;
    for (metric_name, value) in
        [("container_spec_cpu_shares", shares), ("container_spec_cpu_quota", quota), ("container_spec_cpu_period", period)]
    {
        push(metric_name, Gauge, (value > 0).then_some(value as u64));
    }
    for (failure_type, scope, value) in [
        ("pgfault", "container", md.pgfault),
        ("pgmajfault", "container", md.pgmajfault),
        ("pgfault", "hierarchy", md.pgfault_hierarchy),
        ("pgmajfault", "hierarchy", md.pgmajfault_hierarchy),
    ] {
        if let Some(value) = value {
            v.push(metric("container_memory_failures_total", Counter, &[id, name, image, failure_type, scope], value));
        }
    }
    if let Some(fs) = &facts.fs {
        let dl = [id, name, image, fs.device.as_str()];
        v.push(metric("container_fs_inodes_free", Gauge, &dl, fs.inodes_free));
        v.push(metric("container_fs_inodes_total", Gauge, &dl, fs.inodes_total));
        v.push(metric("container_fs_limit_bytes", Gauge, &dl, fs.limit_bytes));
        v.push(metric("container_fs_usage_bytes", Gauge, &dl, fs.usage_bytes));
    }
    for (&(major, minor), io) in &facts.detail.io {
        let device = facts.device_names.get(&(major, minor)).cloned().unwrap_or_else(|| format!("{major}:{minor}"));
        let dl = [id, name, image, device.as_str()];
        v.push(metric("container_fs_reads_bytes_total", Counter, &dl, io.read_bytes));
        v.push(metric("container_fs_reads_total", Counter, &dl, io.reads));
        v.push(metric("container_fs_writes_bytes_total", Counter, &dl, io.write_bytes));
        v.push(metric("container_fs_writes_total", Counter, &dl, io.writes));
        let (maj, min) = (major.to_string(), minor.to_string());
        for (op, value) in [("Read", io.read_bytes), ("Write", io.write_bytes)] {
            v.push(metric(
                "container_blkio_device_usage_total",
                Counter,
                &[id, name, image, device.as_str(), maj.as_str(), min.as_str(), op],
                value,
            ));
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
        for (name, value) in [
            ("container_network_receive_bytes_total", i.rx_bytes),
            ("container_network_receive_packets_total", i.rx_packets),
            ("container_network_receive_packets_dropped_total", i.rx_dropped),
            ("container_network_receive_errors_total", i.rx_errors),
            ("container_network_transmit_bytes_total", i.tx_bytes),
            ("container_network_transmit_packets_total", i.tx_packets),
            ("container_network_transmit_packets_dropped_total", i.tx_dropped),
            ("container_network_transmit_errors_total", i.tx_errors),
        ] {
            v.push(metric(name, cri::MetricType::Counter, &l, value));
        }
    }
    v
}

/// Interfaces of a pod's network namespace from its `net/dev` ([`crate::stats::pod_net_dev`]);
/// empty for host-network pods, an infra that is not running, or an unreadable file.
fn pod_interfaces(sb: &SandboxRecord) -> Vec<InterfaceCounters> {
    crate::stats::pod_net_dev(sb).map(|text| crate::stats::parse::net_dev(&text)).unwrap_or_default()
}

/// The filesystem holding path `p` as [`FsFigures`] without usage: `statvfs(3)` for inodes and
/// size, the mount source of the mount holding `p` as its device. `None` when `p` cannot be
/// stat'ed.
fn filesystem_of(p: &Path) -> Option<FsFigures> {
    let st = nix::sys::statvfs::statvfs(p).map_err(|e| tracing::debug!(path = %p.display(), error = %e, "no filesystem metrics")).ok()?;
    Some(FsFigures {
        device: crate::storage::mount_source_of(p).unwrap_or_default(),
        inodes_free: st.files_free() as u64,
        inodes_total: st.files() as u64,
        limit_bytes: (st.blocks() as u64).saturating_mul(st.fragment_size() as u64),
        usage_bytes: 0,
    })
}

/// The metrics of one ready pod sandbox and its running containers. A container whose cgroup
/// is gone (it just exited) is left out. `fs` is the filesystem of the containers' writable
/// layers ([`filesystem_of`]); `device_names` caches block device names across the call's pods.
/// Errors: unreadable cgroup files.
fn pod_sandbox_metrics(
    d: &Daemon,
    sb: &SandboxRecord,
    containers: &[ContainerRecord],
    fs: Option<&FsFigures>,
    device_names: &mut BTreeMap<(u32, u32), String>,
) -> Result<cri::PodSandboxMetrics> {
    let mut container_metrics_list = Vec::new();
    for r in containers.iter().filter(|r| r.sandbox_id == sb.id && r.state == ContainerState::Running) {
        let path = fs_path(&sb.cgroup_parent, &r.id);
        let s = match cgroup::read(host_layout(), &path) {
            Ok(s) => s,
            Err(StatsError::NoCgroup { .. }) => continue,
            Err(e) => return Err(stats_error("container", &r.id, e)),
        };
        let detail = detail::read(host_layout(), &path).map_err(|e| stats_error("container", &r.id, e))?;
        let names = detail
            .io
            .keys()
            .map(|&(major, minor)| {
                ((major, minor), device_names.entry((major, minor)).or_insert_with(|| detail::device_name(major, minor)).clone())
            })
            .collect();
        let upper = crate::container::ContainerPaths::new(d, &r.id).state.join("upper");
        let fs = fs.and_then(|fs| match crate::stats::caches().1.usage(&upper) {
            Ok((usage_bytes, _)) => Some(FsFigures { usage_bytes, ..fs.clone() }),
            Err(e) => {
                tracing::debug!(container = %r.id, error = %e, "writable layer usage unavailable");
                None
            }
        });
        let name = r.config.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or("");
        let image = r.config.image.as_ref().map(|i| i.image.as_str()).unwrap_or("");
        let res = r.config.linux.as_ref().and_then(|l| l.resources.as_ref());
        let facts = ContainerFacts {
            cpu_user_system_ns: cgroup::cpu_user_system(host_layout(), &path),
            processes: process_figures(&cgroup::procs(host_layout(), &path)),
            started_at_ns: r.started_at,
            now_s: (crate::util::now_nanos() / 1_000_000_000) as u64,
            cpu_spec: res.map(|x| (x.cpu_shares, x.cpu_quota, x.cpu_period)).unwrap_or_default(),
            detail,
            device_names: names,
            fs,
        };
        container_metrics_list
            .push(cri::ContainerMetrics { container_id: r.id.clone(), metrics: container_metrics(&r.id, name, image, &s, &facts) });
    }
    Ok(cri::PodSandboxMetrics {
        pod_sandbox_id: sb.id.clone(),
        metrics: network_metrics(&sb.id, &pod_interfaces(sb)),
        container_metrics: container_metrics_list,
    })
}

/// CRI ListPodSandboxMetrics: the metrics of every ready pod sandbox. Blocking (cgroupfs,
/// procfs, a walk of each writable layer, cached when slow): call from `spawn_blocking`.
/// Errors: the store's; unreadable cgroup files.
pub fn list_pod_sandbox_metrics(d: &Daemon) -> Result<Vec<cri::PodSandboxMetrics>> {
    let containers = crate::container::list(d);
    let fs = filesystem_of(&crate::stats::collect::container_fs_root(d));
    let mut device_names = BTreeMap::new();
    let mut out = Vec::new();
    for sb in crate::sandbox::list(d) {
        if sb.state == SandboxState::Ready {
            out.push(pod_sandbox_metrics(d, &sb, &containers, fs.as_ref(), &mut device_names)?);
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

    /// Every descriptor is sent (given every figure) with as many label values as it has keys,
    /// each metric has a descriptor, and the values carry the right units.
    #[test]
    fn every_metric_matches_its_descriptor() {
        use crate::stats::detail::{CfsStats, DeviceIo, MemoryDetail};
        let s = CgroupStats {
            cpu_usage_ns: Some(2_600_000_000),
            memory: Some(MemoryStats { usage: 10, working_set: 8, rss: 5, page_faults: 1, major_page_faults: 0, limit: None }),
            pids: Some(3),
        };
        let some = Some(1);
        let facts = ContainerFacts {
            cpu_user_system_ns: Some((1_500_000_000, 3_000_000_000)),
            processes: ProcessFigures { threads: 4, file_descriptors: 9, sockets: 2 },
            started_at_ns: 1_700_000_000_000_000_000,
            now_s: 1_700_000_100,
            cpu_spec: (512, 50_000, 100_000),
            detail: DetailStats {
                cfs: Some(CfsStats { periods: 10, throttled_periods: 2, throttled_ns: 3_500_000_000 }),
                memory: Some(MemoryDetail {
                    cache: some,
                    mapped_file: some,
                    swap: some,
                    pgfault: Some(7),
                    pgmajfault: some,
                    pgfault_hierarchy: Some(9),
                    pgmajfault_hierarchy: some,
                    failcnt: some,
                    kernel: some,
                    max_usage: some,
                    oom_kills: some,
                    swap_limit: Some(None),
                }),
                pids_max: Some(0),
                io: [((8, 0), DeviceIo { read_bytes: 4096, write_bytes: 1, reads: 1, writes: 1 })].into(),
            },
            device_names: [((8, 0), "/dev/sda".to_string())].into(),
            fs: Some(FsFigures { device: "/dev/vda1".into(), inodes_free: 5, inodes_total: 10, limit_bytes: 100, usage_bytes: 20 }),
        };
        let mut all = container_metrics("c1", "web", "busybox", &s, &facts);
        let counters = |name: &str, n: u64| InterfaceCounters {
            name: name.into(),
            rx_bytes: n,
            rx_packets: n,
            rx_dropped: 0,
            rx_errors: 0,
            tx_bytes: n,
            tx_packets: n,
            tx_dropped: 0,
            tx_errors: 0,
        };
        all.extend(network_metrics("p1", &[counters("lo", 1), counters("eth0", 200)]));
        let d = descriptors();
        for desc in &d {
            check_descriptor(desc, &all);
        }
        for m in &all {
            assert!(d.iter().any(|x| x.name == m.name), "{} has no descriptor", m.name);
        }
        let get = |n: &str| all.iter().find(|m| m.name == n).unwrap();
        let value = |n: &str| get(n).value.as_ref().unwrap().value;
        assert_eq!(value("container_cpu_usage_seconds_total"), 2, "whole seconds");
        assert_eq!(get("container_cpu_usage_seconds_total").metric_type, cri::MetricType::Counter as i32);
        assert_eq!(value("container_spec_memory_limit_bytes"), 0, "unlimited = 0");
        assert_eq!(value("container_spec_memory_swap_limit_bytes"), 0, "unlimited = 0");
        assert_eq!(get("container_memory_working_set_bytes").metric_type, cri::MetricType::Gauge as i32);
        assert_eq!(get("container_network_transmit_bytes_total").label_values, ["p1", "POD", "", "eth0"]);
        assert_eq!(value("container_cpu_system_seconds_total"), 3);
        assert_eq!(value("container_cpu_cfs_throttled_seconds_total"), 3);
        assert_eq!(value("container_start_time_seconds"), 1_700_000_000);
        assert_eq!(value("container_sockets"), 2);
        assert_eq!(get("container_fs_usage_bytes").label_values, ["c1", "web", "busybox", "/dev/vda1"]);
        let blkio: Vec<_> = all.iter().filter(|m| m.name == "container_blkio_device_usage_total").collect();
        assert_eq!(blkio[0].label_values, ["c1", "web", "busybox", "/dev/sda", "8", "0", "Read"]);
        assert_eq!(blkio[0].value.as_ref().unwrap().value, 4096);
        let failures: Vec<_> = all
            .iter()
            .filter(|m| m.name == "container_memory_failures_total")
            .map(|m| (m.label_values[3..].to_vec(), m.value.as_ref().unwrap().value))
            .collect();
        assert_eq!(failures[0], (vec!["pgfault".to_string(), "container".to_string()], 7));
        assert_eq!(failures[2], (vec!["pgfault".to_string(), "hierarchy".to_string()], 9));
        let bare = container_metrics("c", "n", "i", &CgroupStats::default(), &ContainerFacts::default());
        let names: Vec<&str> = bare.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            ["container_threads", "container_file_descriptors", "container_sockets", "container_last_seen"],
            "no controller, no cgroup metric"
        );
    }

    fn check_descriptor(desc: &cri::MetricDescriptor, all: &[cri::Metric]) {
        assert!(!desc.help.is_empty() && !desc.label_keys.is_empty(), "{}", desc.name);
        let sent: Vec<_> = all.iter().filter(|m| m.name == desc.name).collect();
        assert!(!sent.is_empty(), "{} is described but never sent", desc.name);
        for m in sent {
            assert_eq!(m.label_values.len(), desc.label_keys.len(), "{}", m.name);
        }
    }

    #[test]
    fn own_process_figures() {
        let f = process_figures(&[std::process::id() as i32, i32::MAX]);
        assert!(f.threads >= 1 && f.file_descriptors >= 3, "{f:?}");
    }
}
