//! Pure parsers of cgroup and procfs files (no I/O): `/proc/self/mountinfo` for the cgroup
//! layout, flat-keyed files (`memory.stat`, `cpu.stat`), single-value files (`cpuacct.usage`,
//! `memory.max`) and `/proc/<pid>/net/dev`.
//!
//! Formats follow the kernel documentation: Documentation/admin-guide/cgroup-v1/memory.rst and
//! cpuacct.rst, Documentation/admin-guide/cgroup-v2.rst ("Format": flat keyed, "max" for no
//! limit), proc(5) for mountinfo and net/dev.

use std::collections::HashMap;
use std::path::PathBuf;

/// cgroup v1 `memory.limit_in_bytes` values at or above this mean "no limit" (the kernel
/// reports `PAGE_COUNTER_MAX * PAGE_SIZE`, 9223372036854771712 on 4 KiB pages; cAdvisor uses
/// the same cut-off).
pub const V1_UNLIMITED: u64 = 1 << 62;

/// The cgroup hierarchy layout of the host, as seen in `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Pure cgroup v2 (unified) at this mount point (normally `/sys/fs/cgroup`).
    V2 {
        /// Mount point of the cgroup2 file system.
        root: PathBuf,
    },
    /// cgroup v1 (possibly hybrid): controller name (`cpuacct`, `memory`, `pids`, ...) -> the
    /// mount point of the hierarchy that carries it (`/sys/fs/cgroup/cpu,cpuacct` when co-mounted).
    V1 {
        /// Controller -> mount point.
        mounts: HashMap<String, PathBuf>,
    },
}

/// Reads the cgroup layout from the text of `/proc/self/mountinfo` (proc(5)): fields
/// `id parent major:minor root mount-point options [optional...] - fstype source super-options`.
/// A `cgroup2` mount at `/sys/fs/cgroup` means pure v2; otherwise every `cgroup` (v1) mount
/// contributes the controllers named in its super options. Mount points are unescaped (`\040`).
/// When a controller is mounted twice, the first mount wins. No v1 mount and no v2 mount at
/// `/sys/fs/cgroup` gives an empty V1 layout (every read then yields no data).
pub fn layout_from_mountinfo(text: &str) -> Layout {
    let mut mounts: HashMap<String, PathBuf> = HashMap::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 5 || right.len() < 3 {
            continue;
        }
        let mount_point = PathBuf::from(crate::mountinfo::unescape(left[4]));
        match right[0] {
            "cgroup2" if mount_point == std::path::Path::new("/sys/fs/cgroup") => {
                return Layout::V2 { root: mount_point };
            }
            "cgroup" => {
                for opt in right[2].split(',') {
                    if matches!(opt, "rw" | "ro") || opt.contains('=') {
                        continue;
                    }
                    mounts.entry(opt.to_string()).or_insert_with(|| mount_point.clone());
                }
            }
            _ => {}
        }
    }
    Layout::V1 { mounts }
}

/// A flat-keyed file (`memory.stat`, `cpu.stat`, `cpuacct.stat`): `key value` per line.
/// Lines that do not parse as a key and an unsigned integer are skipped.
pub fn flat_keyed(text: &str) -> HashMap<&str, u64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let k = it.next()?;
            let v = it.next()?.parse().ok()?;
            Some((k, v))
        })
        .collect()
}

/// A single-value file (`cpuacct.usage`, `memory.current`, `pids.current`): its integer.
/// `max` (cgroup v2 "no limit") and unparsable text give `None`.
pub fn single_value(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// A memory limit file: v2 `memory.max` (`max` = none) or v1 `memory.limit_in_bytes`
/// (values >= [`V1_UNLIMITED`] = none). `None` when there is no limit.
pub fn memory_limit(text: &str) -> Option<u64> {
    single_value(text).filter(|v| *v < V1_UNLIMITED)
}

/// Counters of one network interface from `/proc/<pid>/net/dev`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InterfaceCounters {
    /// Interface name (`eth0`).
    pub name: String,
    /// Received bytes.
    pub rx_bytes: u64,
    /// Received packets.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Received packets dropped.
    pub rx_dropped: u64,
    /// Transmitted bytes.
    pub tx_bytes: u64,
    /// Transmitted packets.
    pub tx_packets: u64,
    /// Transmit errors.
    pub tx_errors: u64,
    /// Transmitted packets dropped.
    pub tx_dropped: u64,
}

/// Parses `/proc/<pid>/net/dev` (two header lines, then `name: rx_bytes rx_packets rx_errs
/// rx_drop rx_fifo rx_frame rx_compressed rx_multicast tx_bytes tx_packets tx_errs tx_drop ...`), in file
/// order. The loopback `lo` is left out, as kubelet's summary does. Malformed lines are skipped.
pub fn net_dev(text: &str) -> Vec<InterfaceCounters> {
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let name = name.trim();
            if name == "lo" || name.contains('|') {
                return None;
            }
            let v: Vec<u64> = rest.split_whitespace().map(str::parse).collect::<Result<_, _>>().ok()?;
            if v.len() < 12 {
                return None;
            }
            Some(InterfaceCounters {
                name: name.to_string(),
                rx_bytes: v[0],
                rx_packets: v[1],
                rx_errors: v[2],
                rx_dropped: v[3],
                tx_bytes: v[8],
                tx_packets: v[9],
                tx_errors: v[10],
                tx_dropped: v[11],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine kind: Debian 12 guest, v1 controllers each on their own mount, a v2 mount at
    /// /sys/fs/cgroup/unified with no controllers.
    const MOUNTINFO_V1: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 25 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:29 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
35 31 0:31 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
36 31 0:32 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
37 31 0:33 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    /// systemd-style hybrid layout with co-mounted cpu,cpuacct (Ubuntu 20.04).
    const MOUNTINFO_COMOUNT: &str = "\
35 24 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
40 35 0:35 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,cpu,cpuacct
41 35 0:36 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,memory
";

    /// Pure v2 (Debian 12 on bare metal, Fedora, Ubuntu 22.04).
    const MOUNTINFO_V2: &str = "\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
28 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn detects_layouts() {
        let Layout::V1 { mounts } = layout_from_mountinfo(MOUNTINFO_V1) else { panic!("v1 expected") };
        assert_eq!(mounts["cpuacct"], PathBuf::from("/sys/fs/cgroup/cpuacct"));
        assert_eq!(mounts["memory"], PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(mounts["pids"], PathBuf::from("/sys/fs/cgroup/pids"));
        assert!(!mounts.contains_key("name=systemd") && !mounts.contains_key("rw"));
        let Layout::V1 { mounts } = layout_from_mountinfo(MOUNTINFO_COMOUNT) else { panic!("v1 expected") };
        assert_eq!(mounts["cpuacct"], PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(mounts["cpu"], PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(layout_from_mountinfo(MOUNTINFO_V2), Layout::V2 { root: "/sys/fs/cgroup".into() });
    }

    /// memory.stat of a v1 container cgroup (kernel 5.10, busybox after a 64 MiB /dev/shm write).
    const V1_MEMORY_STAT: &str = "\
cache 67555328
rss 225280
rss_huge 0
shmem 67108864
mapped_file 0
dirty 0
writeback 0
pgpgin 16611
pgpgout 94
pgfault 17127
pgmajfault 0
inactive_anon 67354624
active_anon 0
inactive_file 389120
active_file 45056
unevictable 0
hierarchical_memory_limit 134217728
total_cache 67555328
total_rss 225280
total_shmem 67108864
total_pgfault 17127
total_pgmajfault 2
total_inactive_file 389120
total_active_file 45056
";

    /// memory.stat of a v2 cgroup (kernel 6.1).
    const V2_MEMORY_STAT: &str = "\
anon 4096000
file 1310720
kernel 462848
shmem 0
file_mapped 0
inactive_anon 4050944
active_anon 45056
inactive_file 1306624
active_file 4096
pgfault 2761
pgmajfault 3
";

    /// cpu.stat of a v2 cgroup.
    const V2_CPU_STAT: &str = "usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\n\
nr_periods 0\nnr_throttled 0\nthrottled_usec 0\nnr_bursts 0\nburst_usec 0\n";

    #[test]
    fn flat_keyed_files() {
        let m = flat_keyed(V1_MEMORY_STAT);
        assert_eq!(m["total_inactive_file"], 389120);
        assert_eq!(m["total_rss"], 225280);
        assert_eq!(m["total_pgmajfault"], 2);
        let m = flat_keyed(V2_MEMORY_STAT);
        assert_eq!((m["anon"], m["inactive_file"], m["pgfault"]), (4096000, 1306624, 2761));
        assert_eq!(flat_keyed(V2_CPU_STAT)["usage_usec"], 1234567);
        assert!(flat_keyed("garbage\nkey notanumber\n").is_empty());
    }

    #[test]
    fn single_values_and_limits() {
        assert_eq!(single_value("3948310692345\n"), Some(3948310692345));
        assert_eq!(single_value("max\n"), None);
        assert_eq!(memory_limit("max\n"), None);
        assert_eq!(memory_limit("9223372036854771712\n"), None);
        assert_eq!(memory_limit("134217728\n"), Some(134217728));
    }

    const NET_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     140       2    0    0    0     0          0         0      140       2    0    0    0     0       0          0
  eth0:    1866      21    1    3    0     0          0         0      782       9    2    4    0     0       0          0
";

    #[test]
    fn net_dev_counters() {
        let v = net_dev(NET_DEV);
        assert_eq!(
            v,
            vec![InterfaceCounters {
                name: "eth0".into(),
                rx_bytes: 1866,
                rx_packets: 21,
                rx_errors: 1,
                rx_dropped: 3,
                tx_bytes: 782,
                tx_packets: 9,
                tx_errors: 2,
                tx_dropped: 4,
            }]
        );
        assert!(net_dev("eth0: 1 2 3\n").is_empty());
    }
}
