//! Container and pod statistics from cgroups (v1 and v2) and procfs, for CRI ContainerStats,
//! ListContainerStats, PodSandboxStats and ListPodSandboxStats.
//!
//! Layout: [`parse`] holds the pure file parsers, [`cgroup`] reads one cgroup's figures
//! ([`detail`] the further ones only the CRI metrics need),
//! [`collect`] builds the CRI messages from container and sandbox records. The host's cgroup
//! layout is detected once ([`host_layout`]). `usage_nano_cores` needs two samples: the previous
//! sample of every container and pod is kept in memory by [`RateCache`] (as containerd keeps
//! it in its container store), so the first call after start reports no rate.

pub mod cgroup;
pub mod collect;
pub mod detail;
pub mod metrics;
pub mod parse;
pub mod psi;

pub use cgroup::{CgroupStats, MemoryStats};
pub use collect::{container_stats, list_container_stats, list_pod_sandbox_stats, pod_sandbox_stats};
pub use parse::Layout;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The text of a pod's `net/dev` (per-interface counters, `proc(5)`): `/proc/<infra pid>/net/dev`
/// while its infra process runs; for a pod without one, read from inside its pinned network
/// namespace ([`crate::network::netns::read_proc_net`]). `None` for host-network pods, a pod
/// whose infra is not running or whose namespace is gone, or an unreadable file (logged at
/// debug).
pub fn pod_net_dev(sb: &crate::records::SandboxRecord) -> Option<String> {
    if sb.host_network() {
        return None;
    }
    let netns = sb.netns_path.as_deref()?;
    let read = if sb.has_infra() {
        if sb.infra_pid <= 0 {
            return None;
        }
        let path = format!("/proc/{}/net/dev", sb.infra_pid);
        std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))
    } else {
        crate::network::netns::read_proc_net(netns, "dev").map_err(|e| e.to_string())
    };
    read.map_err(|e| tracing::debug!(pod = %sb.id, error = %e, "no network stats")).ok()
}

/// Errors of the stats readers. Each names the cgroup or file.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// The cgroup exists in no hierarchy read here (the container is not running, or its
    /// cgroup was removed).
    #[error("cgroup {cgroup:?} does not exist under any of the cpuacct/memory/pids (v1) or unified (v2) hierarchies")]
    NoCgroup { cgroup: String },
    /// A cgroup or procfs file exists but could not be read.
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The host's cgroup layout, read from `/proc/self/mountinfo` on first use and kept for the life
/// of the process. An unreadable mountinfo gives an empty v1 layout (stats then carry no
/// figures) and a warning.
pub fn host_layout() -> &'static Layout {
    static LAYOUT: OnceLock<Layout> = OnceLock::new();
    LAYOUT.get_or_init(|| match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(text) => parse::layout_from_mountinfo(&text),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read /proc/self/mountinfo; container stats will be empty");
            Layout::V1 { mounts: HashMap::new() }
        }
    })
}

/// Samples older than this are dropped from [`RateCache`] (the object is likely gone).
const SAMPLE_MAX_AGE_NS: i64 = 600 * 1_000_000_000;

/// Two samples closer than this give no new rate: the previous rate is returned and the older
/// sample kept (kubelet asks ListContainerStats and ListPodSandboxStats back to back).
const MIN_SAMPLE_INTERVAL_NS: i64 = 100_000_000;

/// One object's last CPU sample: timestamp ns, cumulative usage ns, the rate computed then.
type Sample = (i64, u64, Option<u64>);

/// The previous CPU sample per object, for `usage_nano_cores`.
#[derive(Debug, Default)]
pub struct RateCache {
    samples: Mutex<HashMap<String, Sample>>,
}

impl RateCache {
    /// Records the sample (`timestamp_ns`, cumulative `usage_ns`) of object `key` and returns the
    /// CPU rate since its previous sample in nanocores (1e9 = one full core): `None` on the first
    /// sample and after a counter reset (usage went down). A sample less than 100 ms after the
    /// previous one returns the previous rate and is not recorded.
    pub fn nano_cores(&self, key: &str, timestamp_ns: i64, usage_ns: u64) -> Option<u64> {
        let mut m = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() > 64 {
            m.retain(|_, (t, _, _)| timestamp_ns - *t < SAMPLE_MAX_AGE_NS);
        }
        let rate = match m.get(key) {
            Some(&(t0, _, last)) if timestamp_ns - t0 < MIN_SAMPLE_INTERVAL_NS => return last,
            Some(&(t0, u0, _)) => {
                usage_ns.checked_sub(u0).map(|du| (du as u128 * 1_000_000_000 / (timestamp_ns - t0) as u128).min(u64::MAX as u128) as u64)
            }
            None => None,
        };
        m.insert(key.to_string(), (timestamp_ns, usage_ns, rate));
        rate
    }

    /// Forgets an object's sample.
    pub fn forget(&self, key: &str) {
        self.samples.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

/// Writable-layer usage is cached this long when walking it was slow.
const LAYER_CACHE_TTL: Duration = Duration::from_secs(5);
/// A walk taking longer than this is "slow".
const LAYER_SLOW_WALK: Duration = Duration::from_millis(50);

/// When a writable layer was measured, and its (bytes, inodes).
type LayerEntry = (Instant, (u64, u64));

/// Cached (bytes, inodes) of writable layers whose walk was slow.
#[derive(Debug, Default)]
pub struct LayerCache {
    entries: Mutex<HashMap<PathBuf, LayerEntry>>,
}

impl LayerCache {
    /// (bytes, inodes) of the tree at `upper` ([`crate::storage::dir_usage`]); a result whose
    /// walk took over 50 ms is reused for 5 s. Errors: those of `dir_usage`.
    pub fn usage(&self, upper: &std::path::Path) -> std::io::Result<(u64, u64)> {
        {
            let m = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, v)) = m.get(upper) {
                if at.elapsed() < LAYER_CACHE_TTL {
                    return Ok(*v);
                }
            }
        }
        let start = Instant::now();
        let v = crate::storage::dir_usage(upper)?;
        let mut m = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, (at, _)| at.elapsed() < LAYER_CACHE_TTL);
        if start.elapsed() > LAYER_SLOW_WALK {
            m.insert(upper.to_path_buf(), (Instant::now(), v));
        }
        Ok(v)
    }
}

/// The daemon-wide caches of the stats RPCs (one per process: the daemon serves one root).
pub fn caches() -> &'static (RateCache, LayerCache) {
    static CACHES: OnceLock<(RateCache, LayerCache)> = OnceLock::new();
    CACHES.get_or_init(Default::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nano_cores_from_two_samples() {
        let c = RateCache::default();
        assert_eq!(c.nano_cores("a", 1_000_000_000, 5_000_000_000), None);
        // 0.5 s of CPU in 1 s of wall time: half a core.
        assert_eq!(c.nano_cores("a", 2_000_000_000, 5_500_000_000), Some(500_000_000));
        // Two full cores.
        assert_eq!(c.nano_cores("a", 2_500_000_000, 6_500_000_000), Some(2_000_000_000));
        assert_eq!(c.nano_cores("a", 2_550_000_000, 6_600_000_000), Some(2_000_000_000), "too close: last rate");
        assert_eq!(c.nano_cores("a", 3_000_000_000, 1), None, "counter reset");
        c.forget("a");
        assert_eq!(c.nano_cores("a", 4_000_000_000, 2), None);
    }

    #[test]
    fn host_layout_matches_this_machine() {
        match host_layout() {
            Layout::V2 { root } => assert!(root.join("cgroup.controllers").exists()),
            Layout::V1 { mounts } => {
                if let Some(m) = mounts.get("memory") {
                    assert!(m.join("memory.usage_in_bytes").exists(), "{m:?}");
                }
            }
        }
    }
}
