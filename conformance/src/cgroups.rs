//! The cgroup driver a test berth runs with, its cgroup parent, and the check that a run leaves
//! no cgroup behind.
//!
//! `CRI_CGROUP_MANAGER=systemd` (not `BERTH_*`: berth reads those as config) runs berth with
//! `cgroup_manager = "systemd"`; the default is cgroupfs. Either way the suite's pods get their
//! own parent, [`PARENT_CGROUPFS`] or [`PARENT_SLICE`], so what is left there after a run is
//! the run's own leak, and the parent itself is removed at the end.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The suite's cgroup parent under the cgroupfs driver.
pub const PARENT_CGROUPFS: &str = "/berthtest";
/// The suite's cgroup parent under the systemd driver (`/sys/fs/cgroup/berthtest.slice`).
pub const PARENT_SLICE: &str = "berthtest.slice";

/// Whether `CRI_CGROUP_MANAGER=systemd` asks for the systemd driver.
pub fn systemd() -> bool {
    std::env::var("CRI_CGROUP_MANAGER").is_ok_and(|v| v == "systemd")
}

/// The berth config lines for the chosen driver: `cgroup_manager` and `cgroup_parent`.
pub fn config_lines() -> String {
    if systemd() {
        format!("cgroup_manager = \"systemd\"\ncgroup_parent = \"{PARENT_SLICE}\"\n")
    } else {
        format!("cgroup_manager = \"cgroupfs\"\ncgroup_parent = \"{PARENT_CGROUPFS}\"\n")
    }
}

/// Where the cgroup of an OCI cgroups path is, relative to `/sys/fs/cgroup` (v2) or a v1
/// hierarchy: `/a/b` -> `a/b`; runc's systemd form `slice:prefix:name` -> the expanded slice
/// (systemd.slice(5)) + `/prefix-name.scope`.
pub fn dir_of(cgroups_path: &str) -> String {
    let parts: Vec<&str> = cgroups_path.split(':').collect();
    if let [slice, prefix, name] = parts[..] {
        let stem = slice.trim_end_matches(".slice");
        let mut path = String::new();
        let mut acc = String::new();
        for c in stem.split('-') {
            acc = if acc.is_empty() { c.to_string() } else { format!("{acc}-{c}") };
            path.push_str(&format!("{acc}.slice/"));
        }
        return format!("{path}{prefix}-{name}.scope");
    }
    cgroups_path.trim_start_matches('/').to_string()
}

/// The directories of the suite's parent: one per v1 hierarchy, or the one v2 directory.
fn parent_dirs() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let rel = if systemd() { PARENT_SLICE.to_string() } else { PARENT_CGROUPFS.trim_start_matches('/').to_string() };
    if root.join("cgroup.controllers").exists() {
        return vec![root.join(rel)];
    }
    let Ok(rd) = std::fs::read_dir(root) else { return Vec::new() };
    rd.flatten().map(|e| e.path().join(&rel)).filter(|p| p.is_dir()).collect()
}

/// What the run left in the suite's parent: container cgroups (`berth-*`), scopes
/// (`berth-*.scope`, `berth-monitor-*.scope`), as paths. Called after every pod was removed.
pub fn leftovers() -> Vec<String> {
    let mut out = Vec::new();
    for dir in parent_dirs() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            if e.path().is_dir() {
                out.push(e.path().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// Removes the suite's parent: `systemctl stop berthtest.slice` (systemd), or rmdir of the
/// parent (and anything left in it, deepest first) in every hierarchy. Failures are reported
/// on stderr.
pub fn remove_parent() {
    if systemd() {
        match Command::new("systemctl").args(["stop", PARENT_SLICE]).status() {
            Ok(s) if s.success() => {}
            other => eprintln!("teardown: systemctl stop {PARENT_SLICE}: {other:?}"),
        }
        return;
    }
    for dir in parent_dirs() {
        remove_tree(&dir);
    }
}

fn remove_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                remove_tree(&e.path());
            }
        }
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        eprintln!("teardown: rmdir {}: {e}", dir.display());
    }
}
