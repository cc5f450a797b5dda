//! `bench`: berth and containerd side by side, over the CRI socket, in one run.
//!
//! Set-up once: a temp dir `/tmp/berth-bench-*` (`--tmp DIR`: `DIR/berth-bench-*`), the conformance registry (Debian's
//! `docker-registry` on 127.0.0.1) and its test images (`busybox:latest` etc., plus `pause:latest`
//! for containerd's `sandbox_image`). Then for each target in order (berth, then containerd) the
//! daemon is started on fresh roots under `<tmp>/<target>/` and measured:
//!
//! 0. Version, `--runs` times: the client + socket floor included in every other timing.
//! 1. PullImage of busybox, `--pulls` times (default 10), each after RemoveImage so the layers
//!    are fetched and unpacked again (what is left on disk after RemoveImage is printed).
//! 2. RunPodSandbox, `--runs` times (default 20), of the pod kubelet sends by default (PID
//!    namespace mode CONTAINER, which berth runs without an infra process), then `--runs` times
//!    of a pod sharing one PID namespace (mode POD: infra process on both); each pod
//!    stopped+removed outside the timing. Every pod is given kubelet's namespace options, and
//!    every container the pod's, as kubelet repeats them.
//! 3. CreateContainer+StartContainer of a `sleep 3600` busybox container in one ready pod, and
//! 4. StopContainer(timeout 0)+RemoveContainer of that container, `--runs` times each.
//!    4b. Pod + container from scratch, `--runs` times: RunPodSandbox, CreateContainer and
//!    StartContainer of a new pod timed together (critest's benchmark of the same name); each
//!    pod removed outside the timing.
//! 8. Run right after 4, berth only (see `bench/userns.rs`): RunPodSandbox, and Create+Start of a
//!    `sleep` container, for pods with their own user namespace (`userns_options` mode POD, one
//!    65536-id range per pod), `--runs` times each; "n/a" on containerd and when Status reports
//!    no handler with `user_namespaces`.
//! 5. Streaming (see `bench/stream.rs`): exec round trip of `echo hi` over SPDY v4, `--execs`
//!    times (default 100); port-forward of 64 MiB through one connection, down and up.
//! 7. Scale (see `bench/scale.rs`): with `--scale-pods` x `--scale-per-pod` running containers
//!    (default 10 x 10), ListContainers and ListContainerStats latency and idle CPU over
//!    `--idle-secs` (default 30). `--only scale` runs this phase alone.
//! 9. Run right after 1 (see `bench/import.rs`): `kind load` against a pull. `--imports` rounds
//!    (default 5) of importing a 150 MB, 5-layer docker-archive (berth: `berth image import`
//!    through the daemon; containerd: `ctr images import`) and pulling the same image, each
//!    after RemoveImage. `--only import` runs this phase alone.
//! 6. With `--pods` pods (default 10) each running one `sleep` container: the daemon's VmRSS
//!    (/proc/PID/status) and PSS, one per-container monitor's / shim's PSS and the total PSS of
//!    all monitors (berth-monitor) or shims (containerd-shim-runc-v2) (/proc/PID/smaps_rollup).
//!
//! Timings are `Instant` around the RPCs of one client on the same unix socket; they are
//! reported, never asserted. One untimed warm-up RunPodSandbox per target runs before phase 2
//! (containerd pulls its pause image there). Everything created is removed at the end; leftovers
//! (mounts, /var/run/netns entries, processes, cgroup dirs, the bridge) are checked and printed.
//!
//! The table has a column per target; with two targets, each timing row also has a `ratio`
//! column: the first target's median over the second's (berth / containerd, #15's figures).
//!
//! Usage: `bench [--pulls N] [--runs N] [--execs N] [--pods N] [--imports N] [--only scale|import]
//! [--tmp DIR] [--targets berth,containerd]`, as root. Both daemons' roots live in the temp dir,
//! so `--tmp` picks the filesystem every image and container row writes to.
//! `BERTH_BIN` names the berth binary (default `<target>/release/berth`, else debug).
//!
//! Layout: this file holds options, results, one target's lifecycle and `main`; `bench/rpc.rs`
//! the CRI request shapes and RPC sequences, `bench/phases.rs` phases 0-4 and 6, `bench/userns.rs` 8, `bench/import.rs` 9,
//! `bench/stream.rs` 5, `bench/scale.rs` 7, `bench/procfs.rs` the /proc readers,
//! `bench/facts.rs` machine facts and leak checks, `bench/report.rs` the table.

use anyhow::{bail, Context, Result};
use berth_conformance::daemon::{self, Daemon, TargetKind};
use berth_conformance::harness::{self, BRIDGE, LOCK_FILE};
use berth_conformance::images::{self, TestImages};
use berth_conformance::proc;
use berth_conformance::registry::Registry;
use facts::{leftovers, machine_facts};
use phases::phases;
use report::print_report;
use rpc::{created, remove_everything};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[path = "bench/facts.rs"]
mod facts;
#[path = "bench/import.rs"]
mod import;
#[path = "bench/phases.rs"]
mod phases;
#[path = "bench/procfs.rs"]
mod procfs;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/rpc.rs"]
mod rpc;
#[path = "bench/scale.rs"]
mod scale;
#[path = "bench/stream.rs"]
mod stream;
#[path = "bench/userns.rs"]
mod userns;

/// Upper bound for all phases of one target (cleanup runs after it either way).
const TARGET_LIMIT: Duration = Duration::from_secs(600);

/// Command-line options.
struct Opts {
    pulls: usize,
    runs: usize,
    execs: usize,
    pods: usize,
    targets: Vec<TargetKind>,
    scale: scale::ScaleOpts,
    /// `--only scale`: run the scale phase alone.
    only_scale: bool,
    /// Rounds of phase 9 (import, pull of the same image).
    imports: usize,
    /// `--only import`: run phase 9 alone.
    only_import: bool,
    /// `--tmp`: where the temp dir (registry storage, both daemons' roots) is made.
    tmp: PathBuf,
}

fn parse_opts() -> Result<Opts> {
    let mut o = Opts {
        pulls: 10,
        runs: 20,
        execs: 100,
        pods: 10,
        targets: vec![TargetKind::Berth, TargetKind::Containerd],
        scale: scale::ScaleOpts { pods: 10, per_pod: 10, runs: 20, idle_secs: 30 },
        only_scale: false,
        imports: 5,
        only_import: false,
        tmp: PathBuf::from("/tmp"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--pulls" => o.pulls = val("--pulls")?.parse().context("--pulls: expected a count")?,
            "--runs" => o.runs = val("--runs")?.parse().context("--runs: expected a count")?,
            "--execs" => o.execs = val("--execs")?.parse().context("--execs: expected a count")?,
            "--pods" => o.pods = val("--pods")?.parse().context("--pods: expected a count")?,
            "--tmp" => o.tmp = PathBuf::from(val("--tmp")?),
            "--imports" => o.imports = val("--imports")?.parse().context("--imports: expected a count")?,
            "--scale-pods" => o.scale.pods = val("--scale-pods")?.parse().context("--scale-pods: expected a count")?,
            "--scale-per-pod" => o.scale.per_pod = val("--scale-per-pod")?.parse().context("--scale-per-pod: expected a count")?,
            "--idle-secs" => o.scale.idle_secs = val("--idle-secs")?.parse().context("--idle-secs: expected seconds")?,
            "--only" => match val("--only")?.as_str() {
                "scale" => o.only_scale = true,
                "import" => o.only_import = true,
                other => bail!("--only: unknown phase {other:?}, expected scale or import"),
            },
            "--targets" => {
                o.targets = val("--targets")?
                    .split(',')
                    .map(|t| match t.trim() {
                        "berth" => Ok(TargetKind::Berth),
                        "containerd" => Ok(TargetKind::Containerd),
                        other => bail!("--targets: unknown target {other:?}, expected berth or containerd"),
                    })
                    .collect::<Result<_>>()?
            }
            "-h" | "--help" => {
                println!("usage: bench [--pulls N] [--runs N] [--execs N] [--pods N] [--scale-pods N] [--scale-per-pod N] [--idle-secs N] [--imports N] [--only scale|import] [--tmp DIR] [--targets berth,containerd]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    o.scale.runs = o.runs;
    if o.pulls == 0 || o.runs == 0 || o.execs == 0 || o.pods == 0 || o.imports == 0 || o.scale.pods == 0 || o.scale.per_pod == 0 {
        bail!("--pulls, --runs, --execs, --pods and --imports must be at least 1");
    }
    Ok(o)
}

/// What the phases load: the suite's test images, and phase 9's image (not built for
/// `--only scale`).
struct Fixtures {
    imgs: TestImages,
    big: Option<import::BigImage>,
}

/// Latency samples of one phase.
#[derive(Default, Clone)]
struct Samples(Vec<Duration>);

impl Samples {
    fn sorted(&self) -> Vec<Duration> {
        let mut v = self.0.clone();
        v.sort();
        v
    }
    fn median(&self) -> Option<Duration> {
        let v = self.sorted();
        match v.len() {
            0 => None,
            n if n % 2 == 1 => Some(v[n / 2]),
            n => Some((v[n / 2 - 1] + v[n / 2]) / 2),
        }
    }
    fn min(&self) -> Option<Duration> {
        self.0.iter().min().copied()
    }
    fn max(&self) -> Option<Duration> {
        self.0.iter().max().copied()
    }
}

/// What was measured on one target; phases that did not run stay empty/None.
#[derive(Default)]
struct Results {
    version: Samples,
    pull: Samples,
    run_pod: Samples,
    /// RunPodSandbox of a pod sharing one PID namespace (PID mode POD).
    run_pod_shared: Samples,
    create_start: Samples,
    stop_remove: Samples,
    /// RunPodSandbox, CreateContainer and StartContainer of a new pod, timed together.
    from_scratch: Samples,
    userns: userns::UsernsResults,
    streaming: stream::StreamResults,
    scale: scale::ScaleResults,
    import: import::ImportResults,
    image_size: Option<u64>,
    daemon_rss_idle_kib: Option<u64>,
    daemon_rss_kib: Option<u64>,
    /// The daemon's PSS with `--pods` pods up (#15's per-pod memory target is in PSS).
    daemon_pss_kib: Option<u64>,
    one_monitor_pss_kib: Option<u64>,
    one_monitor_rss_kib: Option<u64>,
    all_monitors_pss_kib: Option<u64>,
    monitor_count: usize,
    /// /var/run/netns entries at the target's start, and the new ones seen with its pods up.
    netns_before: BTreeSet<String>,
    netns_seen: BTreeSet<String>,
    notes: Vec<String>,
    error: Option<String>,
}

fn kind_name(k: TargetKind) -> &'static str {
    match k {
        TargetKind::Berth => "berth",
        TargetKind::Containerd => "containerd",
        TargetKind::External => "external",
    }
}

// ---------------------------------------------------------------- one target

/// Starts `kind` on fresh roots under `base/<kind>`, runs every phase, removes everything it
/// created, stops the daemon and cleans its directory's mounts and processes.
async fn bench_target(kind: TargetKind, base: &Path, fx: &Fixtures, o: &Opts) -> Results {
    let mut r = Results { netns_before: harness::netns_names(), ..Default::default() };
    let dir = base.join(kind_name(kind));
    let mut d = match make_daemon(kind, &dir, &fx.imgs) {
        Ok(d) => d,
        Err(e) => {
            r.error = Some(format!("set-up: {e:#}"));
            return r;
        }
    };
    match d.start().await {
        Ok(mut c) => {
            let pid = d.pid().map(|p| p as i32).unwrap_or(0);
            match tokio::time::timeout(TARGET_LIMIT, phases(kind, &dir, &mut c, pid, fx, o, &mut r)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => r.error = Some(format!("{e:#}")),
                Err(_) => r.error = Some(format!("phases did not finish within {TARGET_LIMIT:?}")),
            }
            if r.error.is_some() {
                eprintln!("bench[{}]: daemon log tail:\n{}", kind_name(kind), d.log_tail(20));
            }
            for e in remove_everything(&mut c).await {
                r.notes.push(format!("cleanup: {e}"));
            }
        }
        Err(e) => r.error = Some(format!("start: {e:#}")),
    }
    d.stop();
    clean_dir(&dir);
    r
}

fn make_daemon(kind: TargetKind, dir: &Path, imgs: &TestImages) -> Result<Daemon> {
    std::fs::create_dir_all(dir.join("logs"))?;
    let cni = harness::write_cni_config(dir)?;
    Ok(match kind {
        TargetKind::Berth => {
            let cfg = daemon::write_berth_config(dir, &cni, &imgs.registry)?;
            // Measured as shipped: NRI off (the suite's config turns it on for its NRI cases).
            let text = std::fs::read_to_string(&cfg)?;
            std::fs::write(&cfg, text.replace("[nri]\nenable = true", "[nri]\nenable = false"))?;
            let bin = berth_bin();
            if !bin.exists() {
                bail!("berth binary {} does not exist: run `cargo build --release --bins` or set BERTH_BIN", bin.display());
            }
            Daemon::owned(
                kind,
                bin,
                vec!["serve".into(), "--config".into(), cfg.display().to_string()],
                dir.join("berth.sock"),
                dir.join("berth.log"),
            )
        }
        _ => {
            let pause = imgs.pause.clone().context("the pause image was not built")?;
            let cfg = daemon::write_containerd_config(dir, &cni, &imgs.registry, &pause)?;
            Daemon::owned(
                kind,
                "containerd".into(),
                vec!["--config".into(), cfg.display().to_string()],
                dir.join("containerd.sock"),
                dir.join("containerd.log"),
            )
        }
    })
}

/// `$BERTH_BIN`, else `<target>/release/berth` when built, else the conformance default (debug).
fn berth_bin() -> PathBuf {
    if std::env::var_os("BERTH_BIN").is_some() {
        return daemon::berth_binary();
    }
    let debug = daemon::berth_binary();
    let release = debug.parent().and_then(Path::parent).map(|t| t.join("release").join("berth"));
    release.filter(|p| p.exists()).unwrap_or(debug)
}

/// Kills processes still naming `dir` (shims, monitors we started), unmounts what is mounted
/// below it. Does not remove it (the whole temp dir goes at the end).
fn clean_dir(dir: &Path) {
    for (pid, cmd) in proc::pids_mentioning(&dir.display().to_string()) {
        if pid as u32 != std::process::id() {
            eprintln!("cleanup: ending leftover process {pid}: {cmd}");
            proc::signal_pid(pid, libc::SIGKILL);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    for m in harness::mounts_under(dir) {
        eprintln!("cleanup: unmounting leftover {m}");
        let _ = Command::new("umount").arg("-l").arg(&m).status();
    }
}

// ---------------------------------------------------------------- main

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

async fn run(o: Opts) -> Result<bool> {
    if !is_root() {
        bail!("the bench needs root (it starts CRI daemons, mounts and network namespaces)");
    }
    // Same lock as the conformance suite: both use the bridge brt0 and the pod subnet.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_FILE)
        .with_context(|| format!("open {LOCK_FILE}"))?;
    if lock.try_lock().is_err() {
        eprintln!("bench: waiting for another run to release {LOCK_FILE}");
        lock.lock().with_context(|| format!("lock {LOCK_FILE}"))?;
    }
    let facts = machine_facts(&o.tmp);
    let netns_before = harness::netns_names();
    let bridge_before = Path::new("/sys/class/net").join(BRIDGE).exists();
    let tmp = tempfile::Builder::new()
        .prefix("berth-bench-")
        .tempdir_in(&o.tmp)
        .with_context(|| format!("create a temp dir in {}", o.tmp.display()))?
        .keep();
    eprintln!("bench: temp dir {}", tmp.display());
    let mut cols = Vec::new();
    let setup = (|| -> Result<(Registry, Fixtures)> {
        let reg = Registry::start(&tmp.join("registry"))?;
        let work = tmp.join("build");
        std::fs::create_dir_all(&work)?;
        let imgs =
            images::build_and_push(&reg, &work, o.targets.contains(&TargetKind::Containerd)).context("build and push test images")?;
        let big = if o.only_scale { None } else { Some(import::build(&reg, &work).context("build the import image")?) };
        Ok((reg, Fixtures { imgs, big }))
    })();
    let mut setup_err = None;
    let mut big_image = None;
    match setup {
        Ok((mut reg, fx)) => {
            for &k in &o.targets {
                eprintln!("bench: target {}", kind_name(k));
                let r = bench_target(k, &tmp, &fx, &o).await;
                if let Some(e) = &r.error {
                    eprintln!("bench[{}]: ERROR: {e}", kind_name(k));
                }
                cols.push((k, r));
            }
            reg.stop();
            big_image = fx.big;
        }
        Err(e) => setup_err = Some(format!("{e:#}")),
    }
    clean_dir(&tmp);
    if !bridge_before && Path::new("/sys/class/net").join(BRIDGE).exists() {
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).status();
    }
    if let Err(e) = std::fs::remove_dir_all(&tmp) {
        eprintln!("cleanup: cannot remove {}: {e}", tmp.display());
    }
    if let Some(e) = setup_err {
        bail!("set-up: {e}");
    }
    print_report(&o, &facts, &cols, big_image.as_ref());
    let ours: BTreeSet<String> = cols.iter().flat_map(|(_, r)| r.netns_seen.iter().cloned()).collect();
    let (left, foreign) = leftovers(bridge_before, &netns_before, &ours, &tmp);
    println!();
    if !foreign.is_empty() {
        println!("note: new /var/run/netns entries not made for bench pods (other users of the machine): {foreign:?}");
    }
    if left.is_empty() {
        println!(
            "leftovers: none ({} pod/container ids and {} netns checked in /proc/mounts, /var/run/netns, cgroup dirs; processes and mounts naming the temp dir; bridge {BRIDGE}; temp dir)",
            created().len(),
            ours.len()
        );
    } else {
        for l in &left {
            println!("leftover: {l}");
        }
    }
    drop(lock);
    Ok(left.is_empty() && cols.iter().all(|(_, r)| r.error.is_none()))
}

fn main() {
    let o = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench: {e:#}");
            std::process::exit(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    match rt.block_on(run(o)) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("bench: {e:#}");
            std::process::exit(1);
        }
    }
}
