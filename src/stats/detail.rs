//! The cgroup figures only the CRI metrics need (ListPodSandboxMetrics, under cAdvisor's names):
//! CFS throttling, memory detail, swap, OOM kills, the pids limit and block I/O per device.
//!
//! What is read, per layout (kernel cgroup-v1/{memory,blkio-controller}.rst,
//! scheduler/sched-bwc.rst; cgroup-v2.rst):
//!
//! | figure            | v1                                              | v2                                    |
//! |-------------------|-------------------------------------------------|---------------------------------------|
//! | CFS periods       | `cpu/<p>/cpu.stat` `nr_periods`, `nr_throttled`, `throttled_time` (ns) | `cpu.stat` `nr_periods`, `nr_throttled`, `throttled_usec` |
//! | page cache        | `memory.stat` `total_cache`                     | `memory.stat` `file`                  |
//! | mapped files      | `total_mapped_file`                             | `file_mapped`                         |
//! | swap in use       | `total_swap`                                    | `memory.swap.current`                 |
//! | page faults       | `pgfault`/`pgmajfault` (this cgroup), `total_*` (hierarchy) | `pgfault`/`pgmajfault` (both scopes) |
//! | hits of the limit | `memory.failcnt`                                | `memory.events` `max`                 |
//! | kernel memory     | `memory.kmem.usage_in_bytes`                    | `memory.stat` `kernel` (6.x), else `kernel_stack + slab + pagetables` |
//! | peak usage        | `memory.max_usage_in_bytes`                     | `memory.peak` (5.19+)                 |
//! | OOM kills         | `memory.oom_control` `oom_kill`                 | `memory.events` `oom_kill`            |
//! | memory+swap limit | `memory.memsw.limit_in_bytes`                   | `memory.swap.max` + `memory.max`      |
//! | pids limit        | `pids/<p>/pids.max`                             | `pids.max`                            |
//! | block I/O         | `blkio.throttle.io_service_bytes_recursive`, `io_serviced_recursive` | `io.stat` `rbytes wbytes rios wios` |
//!
//! A file that is missing (controller not mounted or not enabled, swap accounting off, an older
//! kernel) leaves its figure out; nothing is reported as 0 that was not read as 0.

use super::cgroup::{read_opt, under};
use super::parse::{self, Layout};
use super::StatsError;
use std::collections::BTreeMap;

/// CFS bandwidth figures (`cpu.stat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CfsStats {
    /// Enforcement periods elapsed.
    pub periods: u64,
    /// Periods in which the cgroup was throttled.
    pub throttled_periods: u64,
    /// Time throttled, nanoseconds.
    pub throttled_ns: u64,
}

/// Memory figures beyond [`super::MemoryStats`], bytes unless said otherwise; `None` = not read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryDetail {
    /// Page cache.
    pub cache: Option<u64>,
    /// Memory-mapped files.
    pub mapped_file: Option<u64>,
    /// Swap in use.
    pub swap: Option<u64>,
    /// Page faults of this cgroup's own tasks (count).
    pub pgfault: Option<u64>,
    /// Major page faults of this cgroup's own tasks (count).
    pub pgmajfault: Option<u64>,
    /// Page faults of this cgroup and its descendants (count).
    pub pgfault_hierarchy: Option<u64>,
    /// Major page faults of this cgroup and its descendants (count).
    pub pgmajfault_hierarchy: Option<u64>,
    /// Times usage hit the limit (count).
    pub failcnt: Option<u64>,
    /// Kernel memory charged to the cgroup.
    pub kernel: Option<u64>,
    /// Peak usage.
    pub max_usage: Option<u64>,
    /// Processes killed by the OOM killer in this cgroup (count).
    pub oom_kills: Option<u64>,
    /// The memory+swap limit: `Some(None)` when unlimited, `None` when not read.
    pub swap_limit: Option<Option<u64>>,
}

/// Block I/O of one device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceIo {
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Read operations.
    pub reads: u64,
    /// Write operations.
    pub writes: u64,
}

/// What [`read`] found for one cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DetailStats {
    /// CFS bandwidth figures.
    pub cfs: Option<CfsStats>,
    /// Memory detail (`None` without the memory controller).
    pub memory: Option<MemoryDetail>,
    /// `pids.max`: `Some(0)` when unlimited (cAdvisor's "infinity if value is zero").
    pub pids_max: Option<u64>,
    /// Block I/O per device, keyed by (major, minor).
    pub io: BTreeMap<(u32, u32), DeviceIo>,
}

/// CFS figures from v1 `cpu.stat` (`throttled_time` in ns).
pub fn cfs_v1(stat: &str) -> Option<CfsStats> {
    let s = parse::flat_keyed(stat);
    Some(CfsStats { periods: *s.get("nr_periods")?, throttled_periods: *s.get("nr_throttled")?, throttled_ns: *s.get("throttled_time")? })
}

/// CFS figures from v2 `cpu.stat` (`throttled_usec` in µs).
pub fn cfs_v2(stat: &str) -> Option<CfsStats> {
    let s = parse::flat_keyed(stat);
    Some(CfsStats {
        periods: *s.get("nr_periods")?,
        throttled_periods: *s.get("nr_throttled")?,
        throttled_ns: s.get("throttled_usec")? * 1000,
    })
}

/// `pids.max`: its value, 0 for `max`.
pub fn pids_max(text: &str) -> Option<u64> {
    match text.trim() {
        "max" => Some(0),
        t => t.parse().ok(),
    }
}

/// Memory detail from v1 files: `memory.stat` and, when present, `memory.failcnt`,
/// `memory.kmem.usage_in_bytes`, `memory.max_usage_in_bytes`, `memory.oom_control`,
/// `memory.memsw.limit_in_bytes`.
pub fn memory_v1(
    stat: &str,
    failcnt: Option<&str>,
    kmem: Option<&str>,
    max_usage: Option<&str>,
    oom_control: Option<&str>,
    memsw_limit: Option<&str>,
) -> MemoryDetail {
    let s = parse::flat_keyed(stat);
    let get = |k: &str| s.get(k).copied();
    MemoryDetail {
        cache: get("total_cache"),
        mapped_file: get("total_mapped_file"),
        swap: get("total_swap"),
        pgfault: get("pgfault"),
        pgmajfault: get("pgmajfault"),
        pgfault_hierarchy: get("total_pgfault"),
        pgmajfault_hierarchy: get("total_pgmajfault"),
        failcnt: failcnt.and_then(parse::single_value),
        kernel: kmem.and_then(parse::single_value),
        max_usage: max_usage.and_then(parse::single_value),
        oom_kills: oom_control.and_then(|t| parse::flat_keyed(t).get("oom_kill").copied()),
        swap_limit: memsw_limit.and_then(|t| parse::single_value(t).map(|v| (v < parse::V1_UNLIMITED).then_some(v))),
    }
}

/// Memory detail from v2 files: `memory.stat`, `memory.events` and, when present,
/// `memory.swap.current`, `memory.peak`, `memory.swap.max` with `memory.max`.
pub fn memory_v2(
    stat: &str,
    events: Option<&str>,
    swap_current: Option<&str>,
    peak: Option<&str>,
    swap_max: Option<&str>,
    max: Option<&str>,
) -> MemoryDetail {
    let s = parse::flat_keyed(stat);
    let get = |k: &str| s.get(k).copied();
    let ev = events.map(parse::flat_keyed).unwrap_or_default();
    let kernel = get("kernel").or_else(|| Some(get("kernel_stack")? + get("slab")? + get("pagetables").unwrap_or(0)));
    // memory.swap.max limits swap alone; the CRI and v1 figure is memory + swap.
    let swap_limit = match (swap_max.map(str::trim), max.map(str::trim)) {
        (Some("max"), Some(_)) | (Some(_), Some("max")) => Some(None),
        (Some(sw), Some(m)) => match (sw.parse::<u64>(), m.parse::<u64>()) {
            (Ok(sw), Ok(m)) => Some(Some(sw.saturating_add(m))),
            _ => None,
        },
        _ => None,
    };
    MemoryDetail {
        cache: get("file"),
        mapped_file: get("file_mapped"),
        swap: swap_current.and_then(parse::single_value),
        pgfault: get("pgfault"),
        pgmajfault: get("pgmajfault"),
        pgfault_hierarchy: get("pgfault"),
        pgmajfault_hierarchy: get("pgmajfault"),
        failcnt: ev.get("max").copied(),
        kernel,
        max_usage: peak.and_then(parse::single_value),
        oom_kills: ev.get("oom_kill").copied(),
        swap_limit,
    }
}

/// Adds v1 blkio lines (`MAJ:MIN Op value`, `Total value`) to `io`: `Read`/`Write` values go to
/// bytes when `bytes`, else to operation counts.
pub fn blkio_v1(text: &str, bytes: bool, io: &mut BTreeMap<(u32, u32), DeviceIo>) {
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(dev), Some(op), Some(value)) = (it.next(), it.next(), it.next()) else { continue };
        let (Some(dev), Ok(value)) = (device(dev), value.parse::<u64>()) else { continue };
        let e = io.entry(dev).or_default();
        match (op, bytes) {
            ("Read", true) => e.read_bytes = value,
            ("Write", true) => e.write_bytes = value,
            ("Read", false) => e.reads = value,
            ("Write", false) => e.writes = value,
            _ => {}
        }
    }
}

/// v2 `io.stat` (`MAJ:MIN rbytes=N wbytes=N rios=N wios=N dbytes=N dios=N`) per device.
pub fn io_v2(text: &str) -> BTreeMap<(u32, u32), DeviceIo> {
    let mut io = BTreeMap::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let Some(dev) = it.next().and_then(device) else { continue };
        let mut d = DeviceIo::default();
        for kv in it {
            let Some((k, v)) = kv.split_once('=') else { continue };
            let Ok(v) = v.parse::<u64>() else { continue };
            match k {
                "rbytes" => d.read_bytes = v,
                "wbytes" => d.write_bytes = v,
                "rios" => d.reads = v,
                "wios" => d.writes = v,
                _ => {}
            }
        }
        io.insert(dev, d);
    }
    io
}

fn device(s: &str) -> Option<(u32, u32)> {
    let (maj, min) = s.split_once(':')?;
    Some((maj.parse().ok()?, min.parse().ok()?))
}

/// The detail figures of the cgroupfs path `cgroup` under `layout`. Missing files leave their
/// figure out. Errors: a file that exists but cannot be read.
pub fn read(layout: &Layout, cgroup: &str) -> Result<DetailStats, StatsError> {
    let mut out = DetailStats::default();
    match layout {
        Layout::V2 { root } => {
            let dir = under(root, cgroup);
            let f = |name: &str| read_opt(&dir.join(name));
            out.cfs = f("cpu.stat")?.as_deref().and_then(cfs_v2);
            if let Some(stat) = f("memory.stat")? {
                let (events, swap, peak, swap_max, max) =
                    (f("memory.events")?, f("memory.swap.current")?, f("memory.peak")?, f("memory.swap.max")?, f("memory.max")?);
                out.memory =
                    Some(memory_v2(&stat, events.as_deref(), swap.as_deref(), peak.as_deref(), swap_max.as_deref(), max.as_deref()));
            }
            out.pids_max = f("pids.max")?.as_deref().and_then(pids_max);
            out.io = f("io.stat")?.as_deref().map(io_v2).unwrap_or_default();
        }
        Layout::V1 { mounts } => {
            if let Some(m) = mounts.get("cpu") {
                out.cfs = read_opt(&under(m, cgroup).join("cpu.stat"))?.as_deref().and_then(cfs_v1);
            }
            if let Some(m) = mounts.get("memory") {
                let dir = under(m, cgroup);
                let f = |name: &str| read_opt(&dir.join(name));
                if let Some(stat) = f("memory.stat")? {
                    let (failcnt, kmem, max_usage, oom, memsw) = (
                        f("memory.failcnt")?,
                        f("memory.kmem.usage_in_bytes")?,
                        f("memory.max_usage_in_bytes")?,
                        f("memory.oom_control")?,
                        f("memory.memsw.limit_in_bytes")?,
                    );
                    out.memory =
                        Some(memory_v1(&stat, failcnt.as_deref(), kmem.as_deref(), max_usage.as_deref(), oom.as_deref(), memsw.as_deref()));
                }
            }
            if let Some(m) = mounts.get("pids") {
                out.pids_max = read_opt(&under(m, cgroup).join("pids.max"))?.as_deref().and_then(pids_max);
            }
            if let Some(m) = mounts.get("blkio") {
                let dir = under(m, cgroup);
                if let Some(t) = read_opt(&dir.join("blkio.throttle.io_service_bytes_recursive"))? {
                    blkio_v1(&t, true, &mut out.io);
                }
                if let Some(t) = read_opt(&dir.join("blkio.throttle.io_serviced_recursive"))? {
                    blkio_v1(&t, false, &mut out.io);
                }
            }
        }
    }
    Ok(out)
}

/// The name of block device `major:minor` (`/dev/<DEVNAME>` from `/sys/dev/block/M:m/uevent`),
/// or `M:m` when sysfs does not say.
pub fn device_name(major: u32, minor: u32) -> String {
    std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("DEVNAME=")).map(|n| format!("/dev/{n}")))
        .unwrap_or_else(|| format!("{major}:{minor}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cfs_and_pids() {
        assert_eq!(
            cfs_v1("nr_periods 10\nnr_throttled 4\nthrottled_time 2500000000\n"),
            Some(CfsStats { periods: 10, throttled_periods: 4, throttled_ns: 2_500_000_000 })
        );
        assert_eq!(
            cfs_v2("usage_usec 9\nnr_periods 7\nnr_throttled 1\nthrottled_usec 1500\n"),
            Some(CfsStats { periods: 7, throttled_periods: 1, throttled_ns: 1_500_000 })
        );
        assert_eq!(cfs_v2("usage_usec 9\n"), None, "no cpu controller: only usage");
        assert_eq!((pids_max("max\n"), pids_max("1024\n"), pids_max("x")), (Some(0), Some(1024), None));
    }

    #[test]
    fn v1_memory_detail() {
        let stat = "cache 1\ntotal_cache 4096\ntotal_mapped_file 512\ntotal_swap 8\npgfault 10\npgmajfault 1\ntotal_pgfault 30\ntotal_pgmajfault 2\n";
        let m = memory_v1(
            stat,
            Some("3\n"),
            Some("65536\n"),
            Some("9000\n"),
            Some("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
            Some("67108864\n"),
        );
        assert_eq!((m.cache, m.mapped_file, m.swap), (Some(4096), Some(512), Some(8)));
        assert_eq!((m.pgfault, m.pgmajfault, m.pgfault_hierarchy, m.pgmajfault_hierarchy), (Some(10), Some(1), Some(30), Some(2)));
        assert_eq!((m.failcnt, m.kernel, m.max_usage, m.oom_kills), (Some(3), Some(65536), Some(9000), Some(2)));
        assert_eq!(m.swap_limit, Some(Some(67108864)));
        let bare = memory_v1("total_cache 0\n", None, None, None, None, Some("9223372036854771712\n"));
        assert_eq!(
            (bare.failcnt, bare.oom_kills, bare.swap_limit),
            (None, None, Some(None)),
            "no swap accounting file is None; unlimited is Some(None)"
        );
    }

    #[test]
    fn v2_memory_detail() {
        let stat = "anon 1\nfile 4096\nfile_mapped 512\nkernel 2048\npgfault 30\npgmajfault 2\n";
        let m = memory_v2(
            stat,
            Some("low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\n"),
            Some("8\n"),
            Some("9000\n"),
            Some("33554432\n"),
            Some("67108864\n"),
        );
        assert_eq!((m.cache, m.mapped_file, m.swap, m.kernel), (Some(4096), Some(512), Some(8), Some(2048)));
        assert_eq!(
            (m.pgfault, m.pgfault_hierarchy, m.failcnt, m.oom_kills, m.max_usage),
            (Some(30), Some(30), Some(5), Some(1), Some(9000))
        );
        assert_eq!(m.swap_limit, Some(Some(100663296)), "memory + swap, as v1 and the CRI count it");
        let old = memory_v2("kernel_stack 100\nslab 200\npagetables 50\n", None, None, None, Some("max\n"), Some("67108864\n"));
        assert_eq!((old.kernel, old.max_usage, old.swap_limit, old.failcnt), (Some(350), None, Some(None), None));
    }

    #[test]
    fn block_io_per_device() {
        let mut io = BTreeMap::new();
        blkio_v1("8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 1\n8:0 Total 12288\nTotal 12288\n", true, &mut io);
        blkio_v1("8:0 Read 2\n8:0 Write 3\nTotal 5\n", false, &mut io);
        assert_eq!(io.get(&(8, 0)), Some(&DeviceIo { read_bytes: 4096, write_bytes: 8192, reads: 2, writes: 3 }));
        assert_eq!(io.len(), 1);
        let v2 = io_v2("254:0 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\n8:16 rbytes=5 wbytes=0 rios=1 wios=0\n");
        assert_eq!(v2.get(&(254, 0)), Some(&DeviceIo { read_bytes: 100, write_bytes: 200, reads: 1, writes: 2 }));
        assert_eq!(v2.len(), 2);
    }

    #[test]
    fn reads_a_fake_v1_tree() {
        let t = tempfile::tempdir().unwrap();
        let mounts: std::collections::HashMap<String, std::path::PathBuf> =
            ["cpu", "memory", "pids", "blkio"].iter().map(|c| (c.to_string(), t.path().join(c))).collect();
        let w = |rel: &str, s: &str| {
            let f = t.path().join(rel);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, s).unwrap();
        };
        w("cpu/p/c/cpu.stat", "nr_periods 1\nnr_throttled 0\nthrottled_time 0\n");
        w("memory/p/c/memory.stat", "total_cache 7\n");
        w("pids/p/c/pids.max", "max\n");
        w("blkio/p/c/blkio.throttle.io_service_bytes_recursive", "8:0 Read 1\n");
        let d = read(&Layout::V1 { mounts }, "/p/c").unwrap();
        assert_eq!(d.cfs.map(|c| c.periods), Some(1));
        assert_eq!(d.memory.and_then(|m| m.cache), Some(7));
        assert_eq!(d.memory.and_then(|m| m.failcnt), None, "no memory.failcnt file");
        assert_eq!(d.pids_max, Some(0));
        assert_eq!(d.io.get(&(8, 0)).map(|i| i.read_bytes), Some(1));
        let none = read(&Layout::V1 { mounts: Default::default() }, "/p/c").unwrap();
        assert_eq!(none, DetailStats::default());
    }
}
