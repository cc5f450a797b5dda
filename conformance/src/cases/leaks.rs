//! End-of-suite leak checks (berth only, where the harness owns the root and run root).

use super::util::check;
use crate::ctx::{skip, Ctx};
use crate::daemon::TargetKind;
use crate::harness::{mounts_under, netns_names};
use anyhow::Result;
use std::path::Path;

fn dirs_named(dir: &Path, names: &[String], depth: usize, out: &mut Vec<String>) {
    if depth == 0 {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if names.iter().any(|n| e.file_name().to_string_lossy() == n.as_str()) {
            out.push(p.display().to_string());
        }
        if p.is_dir() && !p.is_symlink() {
            dirs_named(&p, names, depth - 1, out);
        }
    }
}

/// After every suite pod is removed: no mounts under root/run_root (but berth's pin dir itself),
/// no new netns files, no
/// processes mentioning root/run_root (but the daemon), no container/pod dirs in run_root.
pub async fn no_leftovers(ctx: &Ctx) -> Result<()> {
    // The roots the harness gave the daemon: berth's root/run_root, containerd's root/state
    // (run on containerd too, to prove the checks themselves).
    let (root, run) = match ctx.kind {
        TargetKind::Berth => (ctx.tmp.join("root"), ctx.tmp.join("run")),
        TargetKind::Containerd => (ctx.tmp.join("containerd/root"), ctx.tmp.join("containerd/state")),
        TargetKind::External => return skip("leak checks need a daemon started by the harness on its own roots"),
    };
    let errs = ctx.remove_suite_pods().await;
    check(errs.is_empty(), || format!("removing the suite's pods failed: {errs:?}"))?;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut problems = Vec::new();
    // berth's pin dir `<run_root>/ns` is a shared bind mount of itself for as long as the daemon
    // runs (as `ip netns` makes /var/run/netns), so that unpinning reaches the mount namespaces
    // holding peer or slave copies of a pin; the pins under it are per pod and must be gone.
    let pin_dir = run.join("ns").display().to_string();
    for d in [&root, &run] {
        for m in mounts_under(d) {
            if !(ctx.kind == TargetKind::Berth && m == pin_dir) {
                problems.push(format!("mount left: {m}"));
            }
        }
    }
    let new_netns: Vec<String> = netns_names().difference(&ctx.netns_before).cloned().collect();
    if !new_netns.is_empty() {
        problems.push(format!("netns files left in /var/run/netns: {new_netns:?}"));
    }
    let daemon = ctx.daemon_pid().await.map(|p| p as i32);
    // A runtime handler self-test of a daemon restarted by an earlier case may still be running
    // (seconds on a slow machine): its runtime process is transient, not a leak, unless it stays.
    let selftest_deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < selftest_deadline
        && crate::proc::pids_mentioning(&run.join("selftest").display().to_string()).iter().any(|(pid, _)| Some(*pid) != daemon)
    {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    for d in [&root, &run] {
        for (pid, cmd) in crate::proc::pids_mentioning(&d.display().to_string()) {
            if Some(pid) != daemon && pid as u32 != std::process::id() {
                problems.push(format!("process left: {pid} {cmd}"));
            }
        }
    }
    let mut left = Vec::new();
    dirs_named(&run, &ctx.created_ids(), 5, &mut left);
    if !left.is_empty() {
        problems.push(format!("container/pod dirs left in the run root: {left:?}"));
    }
    check(problems.is_empty(), || problems.join("; "))
}
