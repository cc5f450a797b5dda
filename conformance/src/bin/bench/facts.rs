//! Machine facts printed under the table (date, CPU, memory, kernel, the temp dir's filesystem,
//! runc/containerd versions, berth binary, load average) and the leak checks run after cleanup.

use crate::berth_bin;
use crate::procfs::proc_kib;
use crate::rpc::created;
use berth_conformance::harness::{self, BRIDGE};
use berth_conformance::proc;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// First line of `cmd args` stdout, trimmed; the spawn error in parentheses when it fails.
fn first_line_of(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_else(|e| format!("({cmd}: {e})"))
}

/// (name, value) pairs describing the machine and the binaries compared; `tmp` is where the
/// bench's temp dir goes (its filesystem is what the image rows write to).
pub fn machine_facts(tmp: &Path) -> Vec<(String, String)> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| t.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_default();
    let mem = proc_kib(Path::new("/proc/meminfo"), "MemTotal:").map(|k| format!("{} MiB", k / 1024)).unwrap_or_default();
    vec![
        ("date".into(), first_line_of("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])),
        ("nproc".into(), std::thread::available_parallelism().map(|n| n.to_string()).unwrap_or_default()),
        ("cpu".into(), cpu),
        ("memory".into(), mem),
        ("kernel".into(), std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string()),
        ("temp dir fs".into(), first_line_of("findmnt", &["-no", "SOURCE,FSTYPE,OPTIONS", "-T", &tmp.display().to_string()])),
        ("runc".into(), first_line_of("runc", &["--version"])),
        ("containerd".into(), first_line_of("containerd", &["--version"])),
        ("berth binary".into(), std::fs::canonicalize(berth_bin()).unwrap_or_else(|_| berth_bin()).display().to_string()),
        ("loadavg at start".into(), loadavg()),
    ]
}

/// The three load averages of /proc/loadavg, space-separated.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}

/// cgroup v1 hierarchies searched for leftover directories.
const CGROUP_DIRS: [&str; 3] = ["/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/cpu,cpuacct"];

/// Cgroup directories (6 levels deep at most) whose name contains one of `ids`.
fn cgroups_naming(dir: &Path, ids: &[String], depth: usize, out: &mut Vec<String>) {
    if depth == 0 {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        if ids.iter().any(|id| name.contains(id.as_str())) {
            out.push(e.path().display().to_string());
        }
        cgroups_naming(&e.path(), ids, depth - 1, out);
    }
}

/// What the bench left behind, found by what it owns: mounts, processes and paths naming its
/// temp dir, the /var/run/netns entries its pods had, cgroup dirs and mounts naming the ids of
/// its pods and containers, the bridge when it did not exist before. Entries in /var/run/netns
/// that appeared during the run but never belonged to a bench pod are returned second (other
/// users of the machine; informational).
pub fn leftovers(bridge_before: bool, netns_before: &BTreeSet<String>, ours: &BTreeSet<String>, tmp: &Path) -> (Vec<String>, Vec<String>) {
    let mut v = Vec::new();
    let now = harness::netns_names();
    let still: Vec<&String> = now.intersection(ours).collect();
    if !still.is_empty() {
        v.push(format!("/var/run/netns entries of bench pods: {still:?}"));
    }
    let foreign: Vec<String> = now.difference(netns_before).filter(|n| !ours.contains(*n)).cloned().collect();
    let t = tmp.display().to_string();
    let ids = created();
    let mounts: Vec<String> = std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.contains(&t) || ids.iter().any(|id| l.contains(id.as_str())) || ours.iter().any(|n| l.contains(&format!("/netns/{n} ")))
        })
        .map(String::from)
        .collect();
    if !mounts.is_empty() {
        v.push(format!("mounts: {mounts:?}"));
    }
    let mut cg = Vec::new();
    for d in CGROUP_DIRS {
        cgroups_naming(Path::new(d), &ids, 6, &mut cg);
    }
    if !cg.is_empty() {
        v.push(format!("cgroup dirs: {cg:?}"));
    }
    if Path::new("/sys/class/net").join(BRIDGE).exists() && !bridge_before {
        v.push(format!("bridge {BRIDGE} still exists"));
    }
    let procs = proc::pids_mentioning(&t);
    if !procs.is_empty() {
        v.push(format!("processes naming {t}: {procs:?}"));
    }
    if tmp.exists() {
        v.push(format!("{t} still exists"));
    }
    (v, foreign)
}
