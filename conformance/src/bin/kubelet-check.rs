//! `kubelet-check`: a real kubelet runs static pods on berth, end to end (issue #16).
//!
//! crictl and critest passing prove little about kubelet (a kubelet once failed at its first RPC
//! while both were green), so this drives the client berth exists for. No kubelet is packaged
//! for Debian 12: build one yourself (docs/operations.md says how) and pass its path.
//!
//! Set-up, all under a temp dir `/tmp/berth-kubelet-check-*`: the conformance registry with its
//! test images, the test CNI network (bridge `brt0`), berth on its own roots, then kubelet in
//! standalone mode (no API server) with `staticPodPath` = `<tmp>/manifests`, the cgroupfs driver
//! (systemd, and berth's too, with `CRI_CGROUP_MANAGER=systemd`) and its read-only API on a
//! loopback port, where `/pods` shows the static pods' status.
//!
//! Checks, in order:
//! 1. a static pod with two containers (`ticker` prints a line a second, `web` is busybox httpd
//!    with an HTTP readiness probe) is Running and ready; the web server answers on the pod IP;
//!    the ticker's CRI log file fills;
//! 2. killing the ticker's process (its pid from verbose ContainerStatus) makes kubelet restart
//!    it: restartCount one up, the next attempt running and the killed one exited over CRI;
//! 3. a pod sandbox made over CRI before kubelet started (not kubelet's) is stopped by kubelet's
//!    housekeeping without an error;
//! 4. removing the manifest stops the pod (no ready sandbox, no running container), then
//!    kubelet's garbage collection removes its sandbox and containers; putting the manifest back
//!    runs it again in a new sandbox;
//! 5. neither kubelet's log nor the runtime's has an error or warning line, except kubelet lines
//!    this host causes whatever the runtime (printed as notes with the reason).
//!
//! Teardown removes everything it made (pods over CRI, kubelet's cgroups and /var/log/pods
//! entries, mounts, the bridge) and prints what it could not.
//!
//! Usage (as root): `kubelet-check --kubelet PATH [--target containerd] [--keep]` (or
//! `KUBELET=PATH`). `BERTH_BIN` names the berth binary (default `<target>/debug/berth`).
//! `--target containerd` runs the same checks on containerd (Debian's, with its CRI plugin) to
//! prove the checks themselves. Closing line: `N passed, N failed`.

use anyhow::{bail, Context, Result};
use berth_conformance::client::Clients;
use berth_conformance::daemon::{self, Daemon, Handlers, TargetKind};
pub use berth_conformance::harness::wait_for;
use berth_conformance::harness::{self, BRIDGE, LOCK_FILE};
use berth_conformance::images;
use berth_conformance::proc;
use berth_conformance::registry::{free_port, Registry};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[path = "kubelet-check/kubelet.rs"]
mod kubelet;
#[path = "kubelet-check/steps.rs"]
mod steps;

/// Namespace of the static pod (kubelet names the pod `<name>-<node name>`).
pub const NAMESPACE: &str = "berth-check";
/// Node name given to kubelet.
pub const NODE: &str = "berth-node";

/// What the steps share.
pub struct Env {
    pub tmp: PathBuf,
    pub cri: Clients,
    pub busybox: String,
    pub kubelet: kubelet::Kubelet,
    /// The runtime's log (berth's or containerd's).
    pub runtime_log: PathBuf,
    /// What runs behind the CRI socket.
    pub kind: TargetKind,
    /// A pod sandbox made over CRI before kubelet started (kubelet did not create it).
    pub foreign_pod: String,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let keep = args.iter().any(|a| a == "--keep");
    let kind = match args.windows(2).find(|w| w[0] == "--target").map(|w| w[1].as_str()) {
        None | Some("berth") => TargetKind::Berth,
        Some("containerd") => TargetKind::Containerd,
        Some(other) => {
            eprintln!("kubelet-check: --target {other}: expected berth or containerd");
            std::process::exit(2);
        }
    };
    let kubelet_bin = args
        .windows(2)
        .find(|w| w[0] == "--kubelet")
        .map(|w| PathBuf::from(&w[1]))
        .or_else(|| std::env::var_os("KUBELET").map(PathBuf::from));
    let Some(kubelet_bin) = kubelet_bin else {
        eprintln!("usage: kubelet-check --kubelet PATH [--target containerd] [--keep]   (or KUBELET=PATH); see docs/operations.md");
        std::process::exit(2);
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kubelet-check: tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    std::process::exit(rt.block_on(run(kubelet_bin, kind, keep)));
}

struct Owned {
    tmp: PathBuf,
    keep: bool,
    registry: Option<Registry>,
    berth: Option<Daemon>,
    kubelet: Option<Child>,
    bridge_existed: bool,
    cgroups_before: Vec<PathBuf>,
}

async fn run(kubelet_bin: PathBuf, kind: TargetKind, keep: bool) -> i32 {
    let _lock = match std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(LOCK_FILE) {
        Ok(f) => {
            if f.try_lock().is_err() {
                eprintln!("kubelet-check: waiting for another run to release {LOCK_FILE}");
                let _ = f.lock();
            }
            Some(f)
        }
        Err(_) => None,
    };
    let tmp = match tempfile::Builder::new().prefix("berth-kubelet-check-").tempdir_in("/tmp") {
        Ok(t) => t.keep(),
        Err(e) => {
            println!("FAILED setup: temp dir: {e}");
            println!("0 passed, 1 failed");
            return 1;
        }
    };
    eprintln!("kubelet-check: temp dir {}", tmp.display());
    let mut owned = Owned {
        tmp: tmp.clone(),
        keep,
        registry: None,
        berth: None,
        kubelet: None,
        bridge_existed: Path::new("/sys/class/net").join(BRIDGE).exists(),
        cgroups_before: kubelet::kubepods_cgroups(),
    };
    let (passed, failed) = match set_up(&mut owned, &kubelet_bin, kind).await {
        Ok(mut env) => {
            let r = steps::run_all(&mut env).await;
            if let Some(child) = owned.kubelet.as_mut() {
                proc::terminate_child(child, Duration::from_secs(10));
            }
            owned.kubelet = None;
            let errs = harness::remove_all_pods(&mut env.cri).await;
            for e in errs {
                eprintln!("teardown: {e}");
            }
            r
        }
        Err(e) => {
            println!("FAILED setup: {e:#}");
            (0, 1)
        }
    };
    teardown(&mut owned);
    println!("{passed} passed, {failed} failed");
    i32::from(failed > 0)
}

async fn set_up(o: &mut Owned, kubelet_bin: &Path, kind: TargetKind) -> Result<Env> {
    if !kubelet_bin.exists() {
        bail!("no kubelet at {}", kubelet_bin.display());
    }
    let reg = Registry::start(&o.tmp.join("registry"))?;
    let work = o.tmp.join("build");
    std::fs::create_dir_all(&work)?;
    let imgs = images::build_and_push(&reg, &work, kind == TargetKind::Containerd).context("build and push test images")?;
    o.registry = Some(reg);
    let cni = harness::write_cni_config(&o.tmp)?;
    let (mut d, runtime_log) = match kind {
        TargetKind::Containerd => {
            let cfg = daemon::write_containerd_config(&o.tmp, &cni, &imgs.registry, imgs.pause.as_deref().unwrap_or_default())?;
            let log = o.tmp.join("containerd.log");
            (
                Daemon::owned(
                    kind,
                    "containerd".into(),
                    vec!["--config".into(), cfg.display().to_string()],
                    o.tmp.join("containerd.sock"),
                    log.clone(),
                ),
                log,
            )
        }
        _ => {
            let cfg = daemon::write_berth_config_with(&o.tmp, &cni, &imgs.registry, Handlers::RuncOnly)?;
            let log = o.tmp.join("berth.log");
            (
                Daemon::owned(
                    TargetKind::Berth,
                    daemon::berth_binary(),
                    vec!["serve".into(), "--config".into(), cfg.display().to_string()],
                    o.tmp.join("berth.sock"),
                    log.clone(),
                ),
                log,
            )
        }
    };
    let socket = d.socket.clone();
    let mut cri = d.start().await.context("starting the runtime")?;
    o.berth = Some(d);
    let foreign_pod = steps::run_foreign_pod(&mut cri, &o.tmp).await?;
    let (kubelet, child) = kubelet::start(kubelet_bin, &o.tmp, &socket, free_port()?).context("starting kubelet")?;
    o.kubelet = Some(child);
    Ok(Env { tmp: o.tmp.clone(), cri, busybox: imgs.busybox, kubelet, runtime_log, kind, foreign_pod })
}

fn teardown(o: &mut Owned) {
    if let Some(child) = o.kubelet.as_mut() {
        proc::terminate_child(child, Duration::from_secs(10));
    }
    if let Some(mut d) = o.berth.take() {
        d.stop();
    }
    if let Some(mut r) = o.registry.take() {
        r.stop();
    }
    // Anything still running that names our temp dir (container monitors) was started by us.
    harness::end_leftovers_under(&o.tmp);
    kubelet::remove_created_cgroups(&o.cgroups_before);
    berth_conformance::cgroups::remove_parent();
    kubelet::remove_pod_logs();
    if !o.bridge_existed && Path::new("/sys/class/net").join(BRIDGE).exists() {
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).stdout(Stdio::null()).status();
    }
    if o.keep {
        eprintln!("--keep: keeping {}", o.tmp.display());
    } else if let Err(e) = std::fs::remove_dir_all(&o.tmp) {
        eprintln!("teardown: cannot remove {}: {e}", o.tmp.display());
    }
}
