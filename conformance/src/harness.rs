//! Suite set-up, the case runner and teardown.
//!
//! Set-up (once): a temp dir `/tmp/berth-conformance-*`, the local registry with the test images,
//! a CNI conflist (bridge `brt0`, 10.88.77.0/24, portmap), then the target: berth (default),
//! containerd (`CRI_TARGET=containerd`) or `BERTH_ENDPOINT`. Each case runs with a 180 s limit;
//! failures and panics are caught per case. Output: `ok NAME`, `FAILED NAME: error`,
//! `skipped NAME: why`, then `N passed, N failed[, N skipped]`.

use crate::cases::Case;
use crate::ctx::{Ctx, Skipped};
use crate::daemon::{self, Daemon, TargetKind};
use crate::{images, registry::Registry};
use anyhow::{Context, Result};
use futures_util::FutureExt;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The bridge our CNI config creates; deleted at teardown when it did not exist before.
pub const BRIDGE: &str = "brt0";
/// The pod subnet of the test network.
pub const SUBNET_PREFIX: &str = "10.88.77.";
/// Held (flock) for a whole run so two suites never share `brt0` at once.
pub const LOCK_FILE: &str = "/tmp/berth-conformance.lock";
/// Per-case time limit.
pub const CASE_LIMIT: Duration = Duration::from_secs(180);

/// Writes `<tmp>/cni/10-berth-test.conflist`; returns the conf dir.
pub fn write_cni_config(tmp: &Path) -> Result<PathBuf> {
    let dir = tmp.join("cni");
    std::fs::create_dir_all(&dir)?;
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "berth-test",
        "plugins": [
            { "type": "bridge", "bridge": BRIDGE, "isGateway": true, "ipMasq": false,
              "ipam": { "type": "host-local", "ranges": [[{ "subnet": "10.88.77.0/24" }]],
                        "dataDir": tmp.join("ipam").display().to_string() } },
            { "type": "portmap", "capabilities": { "portMappings": true } }
        ]
    });
    std::fs::write(dir.join("10-berth-test.conflist"), serde_json::to_vec_pretty(&conf)?)?;
    Ok(dir)
}

/// Names currently in /var/run/netns.
pub fn netns_names() -> BTreeSet<String> {
    std::fs::read_dir("/var/run/netns")
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

fn bridge_exists() -> bool {
    Path::new("/sys/class/net").join(BRIDGE).exists()
}

/// Mount points under `dir` from /proc/mounts, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let d = dir.display().to_string();
    let mut v: Vec<String> =
        text.lines().filter_map(|l| l.split_whitespace().nth(1)).map(|m| m.replace("\\040", " ")).filter(|m| m.starts_with(&d)).collect();
    v.reverse();
    v
}

struct Setup {
    tmp: PathBuf,
    keep: bool,
    registry: Option<Registry>,
    bridge_existed: bool,
}

impl Setup {
    fn teardown(&mut self) {
        if let Some(mut r) = self.registry.take() {
            r.stop();
        }
        // Anything still running from our temp dir (e.g. containerd shims) was started by us.
        for (pid, cmd) in crate::proc::pids_mentioning(&self.tmp.display().to_string()) {
            if pid as u32 != std::process::id() {
                eprintln!("teardown: ending leftover process {pid}: {cmd}");
                crate::proc::signal_pid(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        for m in mounts_under(&self.tmp) {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        if !self.bridge_existed && bridge_exists() {
            let _ = Command::new("ip").args(["link", "del", BRIDGE]).status();
        }
        if self.keep {
            eprintln!("BERTH_TEST_KEEP set: keeping {}", self.tmp.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.tmp) {
            eprintln!("teardown: cannot remove {}: {e}", self.tmp.display());
        }
    }
}

fn target_kind() -> TargetKind {
    if std::env::var("BERTH_ENDPOINT").map(|e| !e.is_empty()).unwrap_or(false) {
        TargetKind::External
    } else if std::env::var("CRI_TARGET").map(|t| t == "containerd").unwrap_or(false) {
        TargetKind::Containerd
    } else {
        TargetKind::Berth
    }
}

async fn set_up(s: &mut Setup) -> Result<Ctx> {
    let kind = target_kind();
    let reg = Registry::start(&s.tmp.join("registry"))?;
    let work = s.tmp.join("build");
    std::fs::create_dir_all(&work)?;
    let imgs = images::build_and_push(&reg, &work, kind == TargetKind::Containerd).context("build and push test images")?;
    s.registry = Some(reg);
    let cni = write_cni_config(&s.tmp)?;
    std::fs::create_dir_all(s.tmp.join("logs"))?;
    let netns_before = netns_names();
    let mut d = match kind {
        TargetKind::External => Daemon::external(&std::env::var("BERTH_ENDPOINT").unwrap_or_default()),
        TargetKind::Berth => {
            let cfg = daemon::write_berth_config(&s.tmp, &cni, &imgs.registry)?;
            let bin = daemon::berth_binary();
            if !bin.exists() {
                anyhow::bail!("berth binary {} does not exist: run `cargo build --bins` or set BERTH_BIN", bin.display());
            }
            Daemon::owned(
                kind,
                bin,
                vec!["serve".into(), "--config".into(), cfg.display().to_string()],
                s.tmp.join("berth.sock"),
                s.tmp.join("berth.log"),
            )
        }
        TargetKind::Containerd => {
            let pause = imgs.pause.clone().unwrap_or_default();
            let cfg = daemon::write_containerd_config(&s.tmp, &cni, &imgs.registry, &pause)?;
            Daemon::owned(
                kind,
                "containerd".into(),
                vec!["--config".into(), cfg.display().to_string()],
                s.tmp.join("containerd.sock"),
                s.tmp.join("containerd.log"),
            )
        }
    };
    let clients = d.start().await?;
    Ok(Ctx::new(kind, imgs, s.tmp.clone(), netns_before, clients, d))
}

/// Runs the cases whose names contain any of `filters` (all when empty). Returns the exit code.
pub async fn run(cases: &[Case], filters: &[String]) -> i32 {
    // SAFETY-free check of our effective uid through /proc.
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false);
    let selected: Vec<&Case> = cases.iter().filter(|c| filters.is_empty() || filters.iter().any(|f| c.0.contains(f.as_str()))).collect();
    if !root {
        for c in &selected {
            println!("skipped {}: the suite needs root", c.0);
        }
        println!("0 passed, 0 failed, {} skipped", selected.len());
        return 0;
    }
    if selected.is_empty() {
        println!("0 passed, 0 failed");
        return 0;
    }
    // One run at a time on this machine: runs share the bridge name and the pod subnet.
    let _lock = match std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(LOCK_FILE) {
        Ok(f) => {
            if !matches!(f.try_lock(), Ok(())) {
                eprintln!("berth-conformance: waiting for another run to release {LOCK_FILE}");
                if let Err(e) = f.lock() {
                    eprintln!("berth-conformance: cannot lock {LOCK_FILE}: {e}");
                }
            }
            Some(f)
        }
        Err(e) => {
            eprintln!("berth-conformance: cannot open {LOCK_FILE}: {e}; running unlocked");
            None
        }
    };
    let tmp = match tempfile::Builder::new().prefix("berth-conformance-").tempdir_in("/tmp") {
        Ok(t) => t.keep(),
        Err(e) => {
            println!("FAILED setup: create temp dir: {e}");
            println!("0 passed, {} failed", selected.len());
            return 1;
        }
    };
    let keep = std::env::var("BERTH_TEST_KEEP").map(|v| !v.is_empty() && v != "0").unwrap_or(false);
    let mut s = Setup { tmp, keep, registry: None, bridge_existed: bridge_exists() };
    eprintln!("berth-conformance: temp dir {}", s.tmp.display());
    let ctx = match set_up(&mut s).await {
        Ok(c) => c,
        Err(e) => {
            println!("FAILED setup: {e:#}");
            println!("0 passed, {} failed", selected.len());
            s.teardown();
            return 1;
        }
    };
    eprintln!("berth-conformance: target {:?} at {}", ctx.kind, ctx.daemon.lock().await.socket.display());
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for (name, f) in selected {
        let fut = std::panic::AssertUnwindSafe(tokio::time::timeout(CASE_LIMIT, f(&ctx))).catch_unwind();
        let outcome: Result<()> = match fut.await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(anyhow::anyhow!("timed out after {CASE_LIMIT:?}")),
            Err(p) => Err(anyhow::anyhow!(
                "panicked: {}",
                p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
            )),
        };
        match outcome {
            Ok(()) => {
                passed += 1;
                println!("ok {name}");
            }
            Err(e) if e.downcast_ref::<Skipped>().is_some() => {
                skipped += 1;
                println!("skipped {name}: {}", e.downcast_ref::<Skipped>().map(|s| s.0.clone()).unwrap_or_default());
            }
            Err(e) => {
                failed += 1;
                println!("FAILED {name}: {}", one_line(&format!("{e:#}")));
                let tail = ctx.daemon_log_tail(15).await;
                if !tail.is_empty() {
                    println!("--- daemon log tail ---\n{tail}\n---");
                }
            }
        }
    }
    let errs = ctx.remove_suite_pods().await;
    for e in errs {
        eprintln!("teardown: {e}");
    }
    ctx.daemon.lock().await.stop();
    if ctx.kind == TargetKind::Berth {
        // Every pod is gone: nothing of theirs may be left in the suite's cgroup parent.
        let left = crate::cgroups::leftovers();
        if left.is_empty() {
            passed += 1;
            println!("ok suite_leaves_no_cgroups");
        } else {
            failed += 1;
            println!("FAILED suite_leaves_no_cgroups: left after every pod was removed: {left:?}");
        }
    }
    if ctx.kind == TargetKind::Berth {
        crate::cgroups::remove_parent();
    }
    if failed > 0 {
        save_daemon_log(&ctx).await;
    }
    drop(ctx);
    s.teardown();
    if skipped > 0 {
        println!("{passed} passed, {failed} failed, {skipped} skipped");
    } else {
        println!("{passed} passed, {failed} failed");
    }
    i32::from(failed > 0)
}

/// Copies the daemon log to `<target dir>/berth-conformance/<kind>-daemon.log` so it outlives
/// the temp dir, and says where.
async fn save_daemon_log(ctx: &Ctx) {
    let Some(log) = ctx.daemon.lock().await.log.clone() else { return };
    let dir = daemon::berth_binary().parent().and_then(Path::parent).map(|t| t.join("berth-conformance"));
    let Some(dir) = dir else { return };
    let dest = dir.join(format!("{:?}-daemon.log", ctx.kind).to_lowercase());
    if std::fs::create_dir_all(&dir).is_ok() && std::fs::copy(&log, &dest).is_ok() {
        eprintln!("berth-conformance: daemon log saved to {}", dest.display());
    }
}

fn one_line(s: &str) -> String {
    s.lines().collect::<Vec<_>>().join(" | ")
}

/// Stops and removes every pod sandbox on the runtime behind `c` (for tools whose runtime
/// holds only their own pods: critest-prep, kubelet-check); returns what failed, one line each.
pub async fn remove_all_pods(c: &mut crate::client::Clients) -> Vec<String> {
    use berth::cri::v1 as cri;
    let mut errs = Vec::new();
    let pods = match c.rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await {
        Ok(r) => r.into_inner().items,
        Err(e) => return vec![format!("ListPodSandbox: {e}")],
    };
    for p in pods {
        if let Err(e) = c.rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: p.id.clone() }).await {
            errs.push(format!("StopPodSandbox {}: {e}", p.id));
        }
        if let Err(e) = c.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: p.id.clone() }).await {
            errs.push(format!("RemovePodSandbox {}: {e}", p.id));
        }
    }
    errs
}

/// Ends what a tool's run left under its temp dir `tmp`: every process whose command line names
/// `tmp` (container monitors of the berth it started; never this process) gets SIGKILL by PID,
/// then every mount under `tmp` is lazily unmounted. Each is reported on stderr.
pub fn end_leftovers_under(tmp: &Path) {
    for (pid, cmd) in crate::proc::pids_mentioning(&tmp.display().to_string()) {
        if pid as u32 != std::process::id() {
            eprintln!("teardown: ending leftover process {pid}: {cmd}");
            crate::proc::signal_pid(pid, libc::SIGKILL);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    for m in mounts_under(tmp) {
        eprintln!("teardown: unmounting leftover {m}");
        let _ = Command::new("umount").arg("-l").arg(&m).status();
    }
}

/// Polls `f` every 500 ms until it gives `Some`, for at most `limit`; prints how long it took.
/// The error names `what` and carries `f`'s last error. For the check binaries
/// (kubelet-check, node-image-check).
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let start = std::time::Instant::now();
    let mut last_err = None;
    loop {
        match f().await {
            Ok(Some(v)) => {
                eprintln!("  {what}: after {:.1} s", start.elapsed().as_secs_f64());
                return Ok(v);
            }
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() > limit {
            match last_err {
                Some(e) => anyhow::bail!("{what}: not within {limit:?} (last error: {e:#})"),
                None => anyhow::bail!("{what}: not within {limit:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
