//! Reading one cgroup's CPU, memory and pids figures on cgroup v1 or v2.
//!
//! What is read, per layout (kernel cgroup-v1/memory.rst, cpuacct.rst; cgroup-v2.rst):
//!
//! | figure          | v1                                         | v2                          |
//! |-----------------|--------------------------------------------|-----------------------------|
//! | CPU ns          | `cpuacct/<p>/cpuacct.usage`                | `cpu.stat` `usage_usec`*1000|
//! | memory usage    | `memory/<p>/memory.usage_in_bytes`         | `memory.current`            |
//! | inactive file   | `memory.stat` `total_inactive_file`        | `memory.stat` `inactive_file`|
//! | RSS             | `memory.stat` `total_rss`                  | `memory.stat` `anon`        |
//! | page faults     | `total_pgfault`, `total_pgmajfault`        | `pgfault`, `pgmajfault`     |
//! | limit           | `memory.limit_in_bytes` (< 2^62)           | `memory.max` (not `max`)    |
//! | processes       | `pids/<p>/pids.current`                    | `pids.current`              |
//!
//! Working set = usage - inactive file (saturating), as kubelet and cAdvisor compute it.

use super::parse::{self, Layout};
use super::StatsError;
use std::path::{Path, PathBuf};

/// Memory figures of one cgroup, bytes (page faults are counts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Total usage, page cache and shmem included.
    pub usage: u64,
    /// Usage minus inactive file pages.
    pub working_set: u64,
    /// Anonymous memory (v1 `total_rss`, v2 `anon`).
    pub rss: u64,
    /// Page faults.
    pub page_faults: u64,
    /// Major page faults.
    pub major_page_faults: u64,
    /// The memory limit; `None` when unlimited.
    pub limit: Option<u64>,
}

impl MemoryStats {
    /// `limit - working_set` when a limit is set (CRI `MemoryUsage.available_bytes`).
    pub fn available(&self) -> Option<u64> {
        self.limit.map(|l| l.saturating_sub(self.working_set))
    }

    /// The field-wise sum of two cgroups' figures; the sum has no limit.
    pub fn add(&self, o: &MemoryStats) -> MemoryStats {
        MemoryStats {
            usage: self.usage + o.usage,
            working_set: self.working_set + o.working_set,
            rss: self.rss + o.rss,
            page_faults: self.page_faults + o.page_faults,
            major_page_faults: self.major_page_faults + o.major_page_faults,
            limit: None,
        }
    }
}

/// What one cgroup reports. A figure whose controller is not mounted (v1) or not enabled for
/// the cgroup (v2) is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// Cumulative CPU time of all its tasks, nanoseconds.
    pub cpu_usage_ns: Option<u64>,
    /// Memory figures.
    pub memory: Option<MemoryStats>,
    /// Number of tasks (`pids.current`).
    pub pids: Option<u64>,
}

impl CgroupStats {
    /// Field-wise sum (a figure missing on one side is taken from the other).
    pub fn add(&self, o: &CgroupStats) -> CgroupStats {
        fn sum(a: Option<u64>, b: Option<u64>) -> Option<u64> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a + b),
                (a, b) => a.or(b),
            }
        }
        CgroupStats {
            cpu_usage_ns: sum(self.cpu_usage_ns, o.cpu_usage_ns),
            memory: match (self.memory, o.memory) {
                (Some(a), Some(b)) => Some(a.add(&b)),
                (a, b) => a.or(b).map(|m| MemoryStats { limit: None, ..m }),
            },
            pids: sum(self.pids, o.pids),
        }
    }
}

/// Memory figures from v1 files: `memory.usage_in_bytes`, `memory.stat`, `memory.limit_in_bytes`.
pub fn memory_v1(usage: &str, stat: &str, limit: &str) -> Option<MemoryStats> {
    let usage = parse::single_value(usage)?;
    let s = parse::flat_keyed(stat);
    let get = |k: &str| s.get(k).copied().unwrap_or(0);
    Some(MemoryStats {
        usage,
        working_set: usage.saturating_sub(get("total_inactive_file")),
        rss: get("total_rss"),
        page_faults: get("total_pgfault"),
        major_page_faults: get("total_pgmajfault"),
        limit: parse::memory_limit(limit),
    })
}

/// Memory figures from v2 files: `memory.current`, `memory.stat`, `memory.max`.
pub fn memory_v2(current: &str, stat: &str, max: &str) -> Option<MemoryStats> {
    let usage = parse::single_value(current)?;
    let s = parse::flat_keyed(stat);
    let get = |k: &str| s.get(k).copied().unwrap_or(0);
    Some(MemoryStats {
        usage,
        working_set: usage.saturating_sub(get("inactive_file")),
        rss: get("anon"),
        page_faults: get("pgfault"),
        major_page_faults: get("pgmajfault"),
        limit: parse::memory_limit(max),
    })
}

/// CPU nanoseconds from v2 `cpu.stat` (`usage_usec` * 1000).
pub fn cpu_v2(stat: &str) -> Option<u64> {
    parse::flat_keyed(stat).get("usage_usec").map(|us| us * 1000)
}

/// The PIDs in the cgroupfs path `cgroup` (`cgroup.procs`: v2, or the first of the v1
/// `pids`, `memory`, `cpuacct` hierarchies mounted). Empty when the cgroup is gone or unreadable.
pub fn procs(layout: &Layout, cgroup: &str) -> Vec<i32> {
    let dir = match layout {
        Layout::V2 { root } => Some(under(root, cgroup)),
        Layout::V1 { mounts } => ["pids", "memory", "cpuacct"].iter().find_map(|c| mounts.get(*c)).map(|m| under(m, cgroup)),
    };
    let text = dir.and_then(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok()).unwrap_or_default();
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// CPU time split into user and system nanoseconds: v2 `cpu.stat` (`user_usec`, `system_usec`)
/// or v1 `cpuacct.stat` (`user`, `system` in USER_HZ ticks, 100 a second on Linux).
pub fn cpu_user_system(layout: &Layout, cgroup: &str) -> Option<(u64, u64)> {
    match layout {
        Layout::V2 { root } => {
            let text = std::fs::read_to_string(under(root, cgroup).join("cpu.stat")).ok()?;
            let s = parse::flat_keyed(&text);
            Some((s.get("user_usec")? * 1000, s.get("system_usec")? * 1000))
        }
        Layout::V1 { mounts } => {
            let text = std::fs::read_to_string(under(mounts.get("cpuacct")?, cgroup).join("cpuacct.stat")).ok()?;
            let s = parse::flat_keyed(&text);
            Some((s.get("user")? * 10_000_000, s.get("system")? * 10_000_000))
        }
    }
}

/// Reads a file; `Ok(None)` when it does not exist (controller not enabled, cgroup gone).
pub(crate) fn read_opt(path: &Path) -> Result<Option<String>, StatsError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StatsError::Io { path: path.to_path_buf(), source }),
    }
}

/// `<mount>/<cgroup path>` (the cgroupfs path is absolute from the hierarchy's root).
pub(crate) fn under(mount: &Path, cgroup: &str) -> PathBuf {
    mount.join(cgroup.trim_start_matches('/'))
}

/// Reads the figures of the cgroupfs path `cgroup` (e.g. `/berth/berth-<id>`, as in the OCI
/// spec's `linux.cgroupsPath`) under `layout`.
///
/// Errors: [`StatsError::NoCgroup`] when the cgroup exists in no hierarchy that carries a
/// controller read here (the container is gone or was never started); [`StatsError::Io`] when a
/// file exists but cannot be read.
pub fn read(layout: &Layout, cgroup: &str) -> Result<CgroupStats, StatsError> {
    let mut out = CgroupStats::default();
    let mut found = false;
    match layout {
        Layout::V2 { root } => {
            let dir = under(root, cgroup);
            found = dir.is_dir();
            out.cpu_usage_ns = read_opt(&dir.join("cpu.stat"))?.as_deref().and_then(cpu_v2);
            if let (Some(cur), Some(stat)) = (read_opt(&dir.join("memory.current"))?, read_opt(&dir.join("memory.stat"))?) {
                let max = read_opt(&dir.join("memory.max"))?.unwrap_or_else(|| "max".into());
                out.memory = memory_v2(&cur, &stat, &max);
            }
            out.pids = read_opt(&dir.join("pids.current"))?.as_deref().and_then(parse::single_value);
        }
        Layout::V1 { mounts } => {
            if let Some(m) = mounts.get("cpuacct") {
                let dir = under(m, cgroup);
                found |= dir.is_dir();
                out.cpu_usage_ns = read_opt(&dir.join("cpuacct.usage"))?.as_deref().and_then(parse::single_value);
            }
            if let Some(m) = mounts.get("memory") {
                let dir = under(m, cgroup);
                found |= dir.is_dir();
                if let (Some(u), Some(s)) = (read_opt(&dir.join("memory.usage_in_bytes"))?, read_opt(&dir.join("memory.stat"))?) {
                    let limit = read_opt(&dir.join("memory.limit_in_bytes"))?.unwrap_or_default();
                    out.memory = memory_v1(&u, &s, &limit);
                }
            }
            if let Some(m) = mounts.get("pids") {
                let dir = under(m, cgroup);
                found |= dir.is_dir();
                out.pids = read_opt(&dir.join("pids.current"))?.as_deref().and_then(parse::single_value);
            }
        }
    }
    if !found {
        return Err(StatsError::NoCgroup { cgroup: cgroup.to_string() });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_memory_figures() {
        let stat = "total_rss 225280\ntotal_inactive_file 389120\ntotal_pgfault 17127\ntotal_pgmajfault 2\n\
                    rss 1\ninactive_file 2\n";
        let m = memory_v1("67780608\n", stat, "134217728\n").unwrap();
        assert_eq!(m.usage, 67780608);
        assert_eq!(m.working_set, 67780608 - 389120);
        assert_eq!((m.rss, m.page_faults, m.major_page_faults), (225280, 17127, 2));
        assert_eq!(m.available(), Some(134217728 - m.working_set));
        let unlimited = memory_v1("100\n", "total_inactive_file 500\n", "9223372036854771712\n").unwrap();
        assert_eq!((unlimited.working_set, unlimited.available()), (0, None));
    }

    #[test]
    fn v2_memory_and_cpu_figures() {
        let stat = "anon 4096000\nfile 1310720\ninactive_file 1306624\npgfault 2761\npgmajfault 3\n";
        let m = memory_v2("5865472\n", stat, "max\n").unwrap();
        assert_eq!(m.working_set, 5865472 - 1306624);
        assert_eq!((m.rss, m.page_faults, m.major_page_faults, m.limit), (4096000, 2761, 3, None));
        assert_eq!(memory_v2("5865472\n", stat, "8388608\n").unwrap().available(), Some(8388608 - m.working_set));
        assert_eq!(cpu_v2("usage_usec 1234567\nuser_usec 1\n"), Some(1_234_567_000));
        assert_eq!(cpu_v2("user_usec 1\n"), None);
    }

    #[test]
    fn sums_drop_the_limit() {
        let a = CgroupStats {
            cpu_usage_ns: Some(5),
            memory: Some(MemoryStats { usage: 10, working_set: 8, limit: Some(100), ..Default::default() }),
            pids: Some(1),
        };
        let b = CgroupStats { cpu_usage_ns: Some(7), memory: None, pids: None };
        let s = a.add(&b);
        assert_eq!((s.cpu_usage_ns, s.pids), (Some(12), Some(1)));
        assert_eq!(s.memory.unwrap().limit, None);
        assert_eq!(a.add(&a).memory.unwrap().working_set, 16);
    }

    #[test]
    fn reads_a_fake_v1_and_v2_tree() {
        let t = tempfile::tempdir().unwrap();
        let mounts: std::collections::HashMap<String, PathBuf> =
            ["cpuacct", "memory", "pids"].iter().map(|c| (c.to_string(), t.path().join("v1").join(c))).collect();
        let p = "/berth/berth-x";
        let w = |rel: &str, s: &str| {
            let f = t.path().join(rel);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, s).unwrap();
        };
        w("v1/cpuacct/berth/berth-x/cpuacct.usage", "42\n");
        w("v1/memory/berth/berth-x/memory.usage_in_bytes", "1000\n");
        w("v1/memory/berth/berth-x/memory.stat", "total_inactive_file 100\ntotal_rss 300\n");
        w("v1/memory/berth/berth-x/memory.limit_in_bytes", "9223372036854771712\n");
        w("v1/pids/berth/berth-x/pids.current", "3\n");
        let v1 = Layout::V1 { mounts };
        let s = read(&v1, p).unwrap();
        assert_eq!((s.cpu_usage_ns, s.pids), (Some(42), Some(3)));
        assert_eq!(s.memory.unwrap().working_set, 900);
        assert!(matches!(read(&v1, "/berth/nope"), Err(StatsError::NoCgroup { .. })));

        w("v2/berth/berth-x/cpu.stat", "usage_usec 2\n");
        w("v2/berth/berth-x/memory.current", "50\n");
        w("v2/berth/berth-x/memory.stat", "inactive_file 10\nanon 20\n");
        let v2 = Layout::V2 { root: t.path().join("v2") };
        let s = read(&v2, p).unwrap();
        assert_eq!((s.cpu_usage_ns, s.pids), (Some(2000), None));
        assert_eq!(s.memory.unwrap(), MemoryStats { usage: 50, working_set: 40, rss: 20, ..Default::default() });
    }
}
