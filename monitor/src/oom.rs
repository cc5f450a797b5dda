//! Best-effort OOM-kill detection for a container's memory cgroup.
//!
//! cgroup v1: `memory.oom_control` of the container's memory cgroup has an `oom_kill N` counter
//! (Linux >= 4.13) and `under_oom 0|1`. cgroup v2: `memory.events` has `oom_kill N`. The monitor
//! locates the cgroup from `/proc/<pid>/cgroup` while the container process lives, and reads the
//! counter after the process exits: under cgroupfs the runtime keeps the cgroup until `delete`.
//! Under the systemd driver the cgroup is a transient scope that systemd removes as soon as its
//! last process is gone, often before the monitor has reaped its child, so on v2 the monitor also
//! watches `memory.events` with inotify while the container runs (the kernel notifies changes to
//! it, cgroup-v2.rst "memory.events") and remembers an OOM kill when it happens, as conmon does.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

/// Where to look for the container's OOM counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OomWatch {
    /// cgroup v1: the memory cgroup directory (holds `memory.oom_control`).
    V1(PathBuf),
    /// cgroup v2: the unified cgroup directory (holds `memory.events`).
    V2(PathBuf),
}

impl OomWatch {
    /// Finds the memory cgroup of `pid` under `cgroup_root` (normally `/sys/fs/cgroup`).
    /// `None` when the process or a memory controller is not found.
    pub fn for_pid(pid: i32, cgroup_root: &Path) -> Option<OomWatch> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let unified = cgroup_root.join("cgroup.controllers").exists();
        Self::from_proc_cgroup(&text, cgroup_root, unified)
    }

    /// Pure part of [`OomWatch::for_pid`]: `text` is `/proc/<pid>/cgroup`
    /// (`hierarchy-ID:controller-list:path` lines); `unified` says whether `cgroup_root` is a
    /// cgroup v2 mount.
    pub fn from_proc_cgroup(text: &str, cgroup_root: &Path, unified: bool) -> Option<OomWatch> {
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let rel = path.trim_start_matches('/');
            if unified && controllers.is_empty() {
                return Some(OomWatch::V2(cgroup_root.join(rel)));
            }
            if !unified && controllers.split(',').any(|c| c == "memory") {
                return Some(OomWatch::V1(cgroup_root.join("memory").join(rel)));
            }
        }
        None
    }

    /// True when the cgroup recorded an OOM kill (or, v1, is under OOM). False when unreadable.
    pub fn oom_killed(&self) -> bool {
        match self {
            OomWatch::V1(dir) => std::fs::read_to_string(dir.join("memory.oom_control"))
                .map(|t| counter(&t, "oom_kill") > 0 || counter(&t, "under_oom") > 0)
                .unwrap_or(false),
            OomWatch::V2(dir) => std::fs::read_to_string(dir.join("memory.events")).map(|t| counter(&t, "oom_kill") > 0).unwrap_or(false),
        }
    }
}

/// An [`OomWatch`] with, on cgroup v2, an inotify watch on `memory.events` so an OOM kill is
/// seen while the cgroup still exists.
pub struct OomMonitor {
    watch: OomWatch,
    inotify: Option<Inotify>,
    /// `oom_kill` was > 0 at a read.
    seen: bool,
    /// `oom` (the limit was hit and the OOM killer invoked) was > 0 at a read.
    limit_hit: bool,
}

impl OomMonitor {
    /// Starts watching. An inotify that cannot be set up leaves only the read at exit.
    pub fn new(watch: OomWatch) -> OomMonitor {
        let inotify = match &watch {
            OomWatch::V2(dir) => Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
                .ok()
                .filter(|i| i.add_watch(&dir.join("memory.events"), AddWatchFlags::IN_MODIFY).is_ok()),
            OomWatch::V1(_) => None,
        };
        OomMonitor { watch, inotify, seen: false, limit_hit: false }
    }

    /// The inotify descriptor to poll for readability, when there is one.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.inotify.as_ref().map(|i| i.as_fd())
    }

    /// Called when [`OomMonitor::fd`] is readable: drains the events and reads the counter.
    pub fn on_ready(&mut self) {
        if let Some(i) = &self.inotify {
            while let Ok(events) = i.read_events() {
                if events.is_empty() {
                    break;
                }
            }
        }
        if let OomWatch::V2(dir) = &self.watch {
            if let Ok(text) = std::fs::read_to_string(dir.join("memory.events")) {
                self.limit_hit |= counter(&text, "oom") > 0;
                if counter(&text, "oom_kill") > 0 {
                    self.seen = true;
                    // Latched: no need to hear more.
                    self.inotify = None;
                }
            }
        }
    }

    /// Whether the container was OOM-killed, given how its main process ended (`killed`: by
    /// SIGKILL): an `oom_kill` seen while watching or recorded now; or, when the cgroup is
    /// already gone (a systemd scope, removed as it emptied) so the last count cannot be read,
    /// a SIGKILL after the kernel's OOM killer was seen invoked for the cgroup (the `oom_kill`
    /// notification can trail the `oom` one by the kernel's 10 ms rate limit).
    pub fn oom_killed(&mut self, killed: bool) -> bool {
        if self.seen {
            return true;
        }
        match &self.watch {
            OomWatch::V2(dir) if !dir.exists() => self.limit_hit && killed,
            w => w.oom_killed(),
        }
    }
}

/// The value of a `key N` line of a cgroup flat-keyed file; 0 when absent or unparsable.
pub fn counter(text: &str, key: &str) -> u64 {
    text.lines().filter_map(|l| l.split_once(' ')).find(|(k, _)| *k == key).and_then(|(_, v)| v.trim().parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counters() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(counter(v1, "oom_kill"), 2);
        assert_eq!(counter(v1, "under_oom"), 0);
        assert_eq!(counter("low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n", "oom_kill"), 0);
        assert_eq!(counter("", "oom_kill"), 0);
    }

    #[test]
    fn finds_memory_cgroup() {
        let text = "12:pids:/berth-test/c1\n5:cpu,cpuacct:/berth-test/c1\n4:memory:/berth-test/c1\n0::/\n";
        let root = Path::new("/sys/fs/cgroup");
        assert_eq!(OomWatch::from_proc_cgroup(text, root, false), Some(OomWatch::V1("/sys/fs/cgroup/memory/berth-test/c1".into())));
        assert_eq!(
            OomWatch::from_proc_cgroup("0::/kubepods/pod1/c1\n", root, true),
            Some(OomWatch::V2("/sys/fs/cgroup/kubepods/pod1/c1".into()))
        );
        assert_eq!(OomWatch::from_proc_cgroup("1:pids:/x\n", root, false), None);
    }

    #[test]
    fn unreadable_cgroup_is_not_oom() {
        assert!(!OomWatch::V1("/nonexistent".into()).oom_killed());
        assert!(!OomWatch::V2("/nonexistent".into()).oom_killed());
    }
}
