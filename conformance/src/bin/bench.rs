//! `bench`: berth and containerd side by side, over the CRI socket, in one run.
//!
//! Set-up once: a temp dir `/tmp/berth-bench-*`, the conformance registry (Debian's
//! `docker-registry` on 127.0.0.1) and its test images (`busybox:latest` etc., plus `pause:latest`
//! for containerd's `sandbox_image`). Then for each target in order (berth, then containerd) the
//! daemon is started on fresh roots under `<tmp>/<target>/` and measured:
//!
//! 0. Version, `--runs` times: the client + socket floor included in every other timing.
//! 1. PullImage of busybox, `--pulls` times (default 10), each after RemoveImage so the layers
//!    are fetched and unpacked again (what is left on disk after RemoveImage is printed).
//! 2. RunPodSandbox, `--runs` times (default 20); each pod stopped+removed outside the timing.
//! 3. CreateContainer+StartContainer of a `sleep 3600` busybox container in one ready pod, and
//! 4. StopContainer(timeout 0)+RemoveContainer of that container, `--runs` times each.
//! 5. Streaming (see `bench/stream.rs`): exec round trip of `echo hi` over SPDY v4, `--execs`
//!    times (default 100); port-forward of 64 MiB through one connection, down and up.
//! 7. Scale (see `bench/scale.rs`): with `--scale-pods` x `--scale-per-pod` running containers
//!    (default 10 x 10), ListContainers and ListContainerStats latency and idle CPU over
//!    `--idle-secs` (default 30). `--only scale` runs this phase alone.
//! 6. With `--pods` pods (default 10) each running one `sleep` container: the daemon's VmRSS
//!    (/proc/PID/status), one per-container monitor's / shim's PSS and the total PSS of all
//!    monitors (berth-monitor) or shims (containerd-shim-runc-v2) (/proc/PID/smaps_rollup).
//!
//! Timings are `Instant` around the RPCs of one client on the same unix socket; they are
//! reported, never asserted. One untimed warm-up RunPodSandbox per target runs before phase 2
//! (containerd pulls its pause image there). Everything created is removed at the end; leftovers
//! (mounts, /var/run/netns entries, processes, cgroup dirs, the bridge) are checked and printed.
//!
//! Usage: `bench [--pulls N] [--runs N] [--execs N] [--pods N] [--targets berth,containerd]`,
//! as root.
//! `BERTH_BIN` names the berth binary (default `<target>/release/berth`, else debug).

use anyhow::{bail, Context, Result};
use berth_conformance::client::Clients;
use berth_conformance::daemon::{self, Daemon, TargetKind};
use berth_conformance::harness::{self, BRIDGE, LOCK_FILE};
use berth_conformance::images::{self, TestImages};
use berth_conformance::proc;
use berth_conformance::registry::Registry;
use k8s_cri::v1 as cri;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "bench/scale.rs"]
mod scale;
#[path = "bench/stream.rs"]
mod stream;

/// Label on every pod and container the bench creates.
const BENCH_LABEL: &str = "berth-bench";
/// Upper bound for all phases of one target (cleanup runs after it either way).
const TARGET_LIMIT: Duration = Duration::from_secs(600);

/// Ids of every pod and container the bench created (leak checks look for them).
static CREATED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn record(id: &str) {
    if let Ok(mut v) = CREATED.lock() {
        v.push(id.to_string());
    }
}

fn created() -> Vec<String> {
    CREATED.lock().map(|v| v.clone()).unwrap_or_default()
}

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
}

fn parse_opts() -> Result<Opts> {
    let mut o = Opts { pulls: 10, runs: 20, execs: 100, pods: 10, targets: vec![TargetKind::Berth, TargetKind::Containerd], scale: scale::ScaleOpts { pods: 10, per_pod: 10, runs: 20, idle_secs: 30 }, only_scale: false };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--pulls" => o.pulls = val("--pulls")?.parse().context("--pulls: expected a count")?,
            "--runs" => o.runs = val("--runs")?.parse().context("--runs: expected a count")?,
            "--execs" => o.execs = val("--execs")?.parse().context("--execs: expected a count")?,
            "--pods" => o.pods = val("--pods")?.parse().context("--pods: expected a count")?,
            "--scale-pods" => o.scale.pods = val("--scale-pods")?.parse().context("--scale-pods: expected a count")?,
            "--scale-per-pod" => o.scale.per_pod = val("--scale-per-pod")?.parse().context("--scale-per-pod: expected a count")?,
            "--idle-secs" => o.scale.idle_secs = val("--idle-secs")?.parse().context("--idle-secs: expected seconds")?,
            "--only" => match val("--only")?.as_str() {
                "scale" => o.only_scale = true,
                other => bail!("--only: unknown phase {other:?}, expected scale"),
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
                println!("usage: bench [--pulls N] [--runs N] [--execs N] [--pods N] [--scale-pods N] [--scale-per-pod N] [--idle-secs N] [--only scale] [--targets berth,containerd]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    o.scale.runs = o.runs;
    if o.pulls == 0 || o.runs == 0 || o.execs == 0 || o.pods == 0 || o.scale.pods == 0 || o.scale.per_pod == 0 {
        bail!("--pulls, --runs, --execs and --pods must be at least 1");
    }
    Ok(o)
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
    create_start: Samples,
    stop_remove: Samples,
    streaming: stream::StreamResults,
    scale: scale::ScaleResults,
    image_size: Option<u64>,
    daemon_rss_idle_kib: Option<u64>,
    daemon_rss_kib: Option<u64>,
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

// ---------------------------------------------------------------- /proc readers

/// The `key:` line of a /proc file whose value is `<n> kB`; returns n (KiB).
fn proc_kib(path: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find(|l| l.starts_with(key)).and_then(|l| l[key.len()..].split_whitespace().next()).and_then(|n| n.parse().ok())
}

fn vm_rss_kib(pid: i32) -> Option<u64> {
    proc_kib(&PathBuf::from(format!("/proc/{pid}/status")), "VmRSS:")
}

fn pss_kib(pid: i32) -> Option<u64> {
    proc_kib(&PathBuf::from(format!("/proc/{pid}/smaps_rollup")), "Pss:")
}

fn ppid(pid: i32) -> Option<i32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 4, after the parenthesised comm (which may contain spaces).
    text.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

fn exe_name(pid: i32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()?.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// PIDs whose executable file name is `exe` and whose command line mentions `needle`.
fn pids_of(exe: &str, needle: &str) -> Vec<i32> {
    proc::pids_mentioning(needle).into_iter().map(|(p, _)| p).filter(|p| exe_name(*p).as_deref() == Some(exe)).collect()
}

/// PIDs of processes whose argv is exactly `argv`.
fn pids_with_argv(argv: &[&str]) -> Vec<i32> {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain(std::iter::once(0))).collect();
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|p| std::fs::read(format!("/proc/{p}/cmdline")).map(|c| c == want).unwrap_or(false))
        .collect()
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|rd| rd.count()).unwrap_or(0)
}

// ---------------------------------------------------------------- CRI helpers

fn image_spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec { image: image.into(), ..Default::default() }
}

fn pod_config(dir: &Path, name: &str) -> cri::PodSandboxConfig {
    let mut labels = HashMap::new();
    labels.insert(BENCH_LABEL.to_string(), "1".to_string());
    let log_dir = dir.join("logs").join(name);
    let _ = std::fs::create_dir_all(&log_dir);
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata { name: name.into(), uid: format!("uid-{name}"), namespace: BENCH_LABEL.into(), attempt: 0 }),
        hostname: name.into(),
        log_directory: log_dir.display().to_string(),
        labels,
        linux: Some(cri::LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

fn sleep_config(name: &str, image: &str) -> cri::ContainerConfig {
    let mut labels = HashMap::new();
    labels.insert(BENCH_LABEL.to_string(), "1".to_string());
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(image_spec(image)),
        command: vec!["sleep".into(), "3600".into()],
        log_path: format!("{name}.log"),
        labels,
        linux: Some(cri::LinuxContainerConfig::default()),
        ..Default::default()
    }
}

async fn run_pod(c: &mut Clients, config: &cri::PodSandboxConfig) -> Result<String> {
    let name = config.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
    let id = c
        .rt
        .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() })
        .await
        .with_context(|| format!("RunPodSandbox {name}"))?
        .into_inner()
        .pod_sandbox_id;
    if id.is_empty() {
        bail!("RunPodSandbox {name}: empty pod_sandbox_id");
    }
    record(&id);
    Ok(id)
}

async fn remove_pod(c: &mut Clients, id: &str) -> Result<()> {
    c.rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id.into() }).await.with_context(|| format!("StopPodSandbox {id}"))?;
    c.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id.into() }).await.with_context(|| format!("RemovePodSandbox {id}"))?;
    Ok(())
}

async fn create_start(c: &mut Clients, pod: &str, pod_cfg: &cri::PodSandboxConfig, cfg: cri::ContainerConfig) -> Result<String> {
    let name = cfg.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
    let id = c
        .rt
        .create_container(cri::CreateContainerRequest { pod_sandbox_id: pod.into(), config: Some(cfg), sandbox_config: Some(pod_cfg.clone()) })
        .await
        .with_context(|| format!("CreateContainer {name} in pod {pod}"))?
        .into_inner()
        .container_id;
    if id.is_empty() {
        bail!("CreateContainer {name}: empty container_id");
    }
    record(&id);
    c.rt.start_container(cri::StartContainerRequest { container_id: id.clone() }).await.with_context(|| format!("StartContainer {name} ({id})"))?;
    Ok(id)
}

async fn stop_remove(c: &mut Clients, id: &str) -> Result<()> {
    c.rt.stop_container(cri::StopContainerRequest { container_id: id.into(), timeout: 0 }).await.with_context(|| format!("StopContainer {id}"))?;
    c.rt.remove_container(cri::RemoveContainerRequest { container_id: id.into() }).await.with_context(|| format!("RemoveContainer {id}"))?;
    Ok(())
}

async fn remove_image(c: &mut Clients, image: &str) -> Result<()> {
    c.img.remove_image(cri::RemoveImageRequest { image: Some(image_spec(image)) }).await.with_context(|| format!("RemoveImage {image}"))?;
    Ok(())
}

/// Removes every container, pod and image the daemon lists (best effort); returns the errors.
async fn remove_everything(c: &mut Clients) -> Vec<String> {
    let mut errs = Vec::new();
    match c.rt.list_containers(cri::ListContainersRequest { filter: None }).await {
        Ok(r) => {
            for ct in r.into_inner().containers {
                if let Err(e) = stop_remove(c, &ct.id).await {
                    errs.push(format!("{e:#}"));
                }
            }
        }
        Err(e) => errs.push(format!("ListContainers: {e}")),
    }
    match c.rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await {
        Ok(r) => {
            for p in r.into_inner().items {
                if let Err(e) = remove_pod(c, &p.id).await {
                    errs.push(format!("{e:#}"));
                }
            }
        }
        Err(e) => errs.push(format!("ListPodSandbox: {e}")),
    }
    match c.img.list_images(cri::ListImagesRequest { filter: None }).await {
        Ok(r) => {
            for i in r.into_inner().images {
                if let Err(e) = remove_image(c, &i.id).await {
                    errs.push(format!("{e:#}"));
                }
            }
        }
        Err(e) => errs.push(format!("ListImages: {e}")),
    }
    errs
}

// ---------------------------------------------------------------- phases

/// What stays on disk after RemoveImage: berth's unpacked layer dirs, containerd's content
/// blobs and snapshots.
fn disk_after_remove(kind: TargetKind, dir: &Path) -> String {
    match kind {
        TargetKind::Berth => format!("{} unpacked layer dirs in root/images/layers", entries(&dir.join("root/images/layers"))),
        _ => {
            let root = dir.join("containerd/root");
            format!(
                "{} blobs in the content store, {} overlayfs snapshots",
                entries(&root.join("io.containerd.content.v1.content/blobs/sha256")),
                entries(&root.join("io.containerd.snapshotter.v1.overlayfs/snapshots"))
            )
        }
    }
}

async fn phase_pull(kind: TargetKind, dir: &Path, c: &mut Clients, image: &str, n: usize, r: &mut Results) -> Result<()> {
    for i in 0..n {
        if i > 0 {
            remove_image(c, image).await?;
            if i == 1 {
                r.notes.push(format!("after RemoveImage busybox: {}", disk_after_remove(kind, dir)));
            }
        }
        let t = Instant::now();
        c.img.pull_image(cri::PullImageRequest { image: Some(image_spec(image)), auth: None, sandbox_config: None }).await.with_context(|| format!("PullImage {image} (run {i})"))?;
        r.pull.0.push(t.elapsed());
    }
    let st = c.img.image_status(cri::ImageStatusRequest { image: Some(image_spec(image)), verbose: false }).await.context("ImageStatus busybox")?.into_inner();
    r.image_size = st.image.map(|i| i.size);
    Ok(())
}

async fn phase_run_pod(dir: &Path, c: &mut Clients, n: usize, r: &mut Results) -> Result<()> {
    // Untimed warm-up: containerd pulls its sandbox (pause) image on the first pod.
    let warm = pod_config(dir, "warmup");
    let id = run_pod(c, &warm).await?;
    remove_pod(c, &id).await?;
    for i in 0..n {
        let cfg = pod_config(dir, &format!("runpod-{i}"));
        let t = Instant::now();
        let id = run_pod(c, &cfg).await?;
        r.run_pod.0.push(t.elapsed());
        remove_pod(c, &id).await?;
    }
    Ok(())
}

async fn phase_containers(dir: &Path, c: &mut Clients, image: &str, n: usize, r: &mut Results) -> Result<()> {
    let cfg = pod_config(dir, "containers");
    let pod = run_pod(c, &cfg).await?;
    for i in 0..n {
        let t = Instant::now();
        let id = create_start(c, &pod, &cfg, sleep_config(&format!("sleep-{i}"), image)).await?;
        r.create_start.0.push(t.elapsed());
        let t = Instant::now();
        stop_remove(c, &id).await?;
        r.stop_remove.0.push(t.elapsed());
    }
    remove_pod(c, &pod).await
}

async fn phase_memory(kind: TargetKind, dir: &Path, c: &mut Clients, daemon_pid: i32, image: &str, n: usize, r: &mut Results) -> Result<()> {
    let mut pods = Vec::new();
    for i in 0..n {
        let cfg = pod_config(dir, &format!("mem-{i}"));
        let pod = run_pod(c, &cfg).await?;
        pods.push(pod.clone());
        create_start(c, &pod, &cfg, sleep_config("sleep", image)).await?;
    }
    // Let start-up allocations settle (monitors' first log writes, daemon caches).
    tokio::time::sleep(Duration::from_secs(2)).await;
    r.daemon_rss_kib = vm_rss_kib(daemon_pid);
    // Ours: berth names a pod's netns `berth-<first 16 of the pod id>`, containerd `cni-<uuid>`.
    let ids = created();
    r.netns_seen = harness::netns_names()
        .difference(&r.netns_before)
        .filter(|n| n.starts_with("cni-") || ids.iter().any(|id| id.get(..16).is_some_and(|p| **n == format!("berth-{p}"))))
        .cloned()
        .collect();
    let needle = dir.display().to_string();
    let exe = if kind == TargetKind::Berth { "berth-monitor" } else { "containerd-shim-runc-v2" };
    let set: BTreeSet<i32> = pids_of(exe, &needle).into_iter().collect();
    r.monitor_count = set.len();
    r.all_monitors_pss_kib = Some(set.iter().filter_map(|p| pss_kib(*p)).sum());
    // "One" = the parent of one of our `sleep 3600` containers.
    let one = pids_with_argv(&["sleep", "3600"]).into_iter().filter_map(ppid).find(|p| set.contains(p));
    match one {
        Some(p) => {
            r.one_monitor_pss_kib = pss_kib(p);
            r.one_monitor_rss_kib = vm_rss_kib(p);
        }
        None => r.notes.push(format!("no {exe} is the parent of a `sleep 3600` process")),
    }
    r.notes.push(format!("{} {exe} processes with {n} pods x 1 container", set.len()));
    for p in pods {
        remove_pod(c, &p).await?;
    }
    Ok(())
}

async fn phases(kind: TargetKind, dir: &Path, c: &mut Clients, daemon_pid: i32, imgs: &TestImages, o: &Opts, r: &mut Results) -> Result<()> {
    r.daemon_rss_idle_kib = vm_rss_kib(daemon_pid);
    if o.only_scale {
        eprintln!("bench[{}]: scale: {} pods x {} containers", kind_name(kind), o.scale.pods, o.scale.per_pod);
        return scale::phase_scale(kind, dir, c, daemon_pid, &imgs.busybox, &o.scale, &mut r.scale).await;
    }
    // The floor every other figure includes: one trivial RPC over the same client and socket.
    for _ in 0..o.runs {
        let t = Instant::now();
        c.rt.version(cri::VersionRequest { version: "v1".into() }).await.context("Version")?;
        r.version.0.push(t.elapsed());
    }
    eprintln!("bench[{}]: pull x{}", kind_name(kind), o.pulls);
    phase_pull(kind, dir, c, &imgs.busybox, o.pulls, r).await?;
    eprintln!("bench[{}]: RunPodSandbox x{}", kind_name(kind), o.runs);
    phase_run_pod(dir, c, o.runs, r).await?;
    eprintln!("bench[{}]: Create+Start / Stop+Remove x{}", kind_name(kind), o.runs);
    phase_containers(dir, c, &imgs.busybox, o.runs, r).await?;
    eprintln!("bench[{}]: exec round trip x{}, port-forward 64 MiB x{} each way", kind_name(kind), o.execs, stream::PF_RUNS);
    stream::phase_streaming(dir, c, &imgs.busybox, o.execs, &mut r.streaming).await?;
    eprintln!("bench[{}]: memory with {} pods", kind_name(kind), o.pods);
    phase_memory(kind, dir, c, daemon_pid, &imgs.busybox, o.pods, r).await?;
    eprintln!("bench[{}]: scale: {} pods x {} containers", kind_name(kind), o.scale.pods, o.scale.per_pod);
    scale::phase_scale(kind, dir, c, daemon_pid, &imgs.busybox, &o.scale, &mut r.scale).await
}

/// Starts `kind` on fresh roots under `base/<kind>`, runs every phase, removes everything it
/// created, stops the daemon and cleans its directory's mounts and processes.
async fn bench_target(kind: TargetKind, base: &Path, imgs: &TestImages, o: &Opts) -> Results {
    let mut r = Results { netns_before: harness::netns_names(), ..Default::default() };
    let dir = base.join(kind_name(kind));
    let mut d = match make_daemon(kind, &dir, imgs) {
        Ok(d) => d,
        Err(e) => {
            r.error = Some(format!("set-up: {e:#}"));
            return r;
        }
    };
    match d.start().await {
        Ok(mut c) => {
            let pid = d.pid().map(|p| p as i32).unwrap_or(0);
            match tokio::time::timeout(TARGET_LIMIT, phases(kind, &dir, &mut c, pid, imgs, o, &mut r)).await {
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
            let bin = berth_bin();
            if !bin.exists() {
                bail!("berth binary {} does not exist: run `cargo build --release --bins` or set BERTH_BIN", bin.display());
            }
            Daemon::owned(kind, bin, vec!["serve".into(), "--config".into(), cfg.display().to_string()], dir.join("berth.sock"), dir.join("berth.log"))
        }
        _ => {
            let pause = imgs.pause.clone().context("the pause image was not built")?;
            let cfg = daemon::write_containerd_config(dir, &cni, &imgs.registry, &pause)?;
            Daemon::owned(kind, "containerd".into(), vec!["--config".into(), cfg.display().to_string()], dir.join("containerd.sock"), dir.join("containerd.log"))
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

// ---------------------------------------------------------------- machine facts, leak checks

fn first_line_of(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_else(|e| format!("({cmd}: {e})"))
}

fn machine_facts() -> Vec<(String, String)> {
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
        ("runc".into(), first_line_of("runc", &["--version"])),
        ("containerd".into(), first_line_of("containerd", &["--version"])),
        ("berth binary".into(), std::fs::canonicalize(berth_bin()).unwrap_or_else(|_| berth_bin()).display().to_string()),
        ("loadavg at start".into(), loadavg()),
    ]
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}

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
fn leftovers(bridge_before: bool, netns_before: &BTreeSet<String>, ours: &BTreeSet<String>, tmp: &Path) -> (Vec<String>, Vec<String>) {
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
        .filter(|l| l.contains(&t) || ids.iter().any(|id| l.contains(id.as_str())) || ours.iter().any(|n| l.contains(&format!("/netns/{n} "))))
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

// ---------------------------------------------------------------- report

fn ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.1} ms", d.as_secs_f64() * 1000.0)).unwrap_or_else(|| "n/a".into())
}

fn kib(k: Option<u64>) -> String {
    k.map(|k| format!("{k} KiB")).unwrap_or_else(|| "n/a".into())
}

fn mib(k: Option<u64>) -> String {
    k.map(|k| format!("{:.1} MiB", k as f64 / 1024.0)).unwrap_or_else(|| "n/a".into())
}

fn print_report(o: &Opts, facts: &[(String, String)], cols: &[(TargetKind, Results)]) {
    let row = |name: &str, f: &dyn Fn(&Results) -> String| {
        let mut line = format!("{name:<34}");
        for (_, r) in cols {
            line.push_str(&format!(" {:>14}", f(r)));
        }
        println!("{line}");
    };
    println!();
    let mut head = format!("{:<34}", "metric");
    for (k, _) in cols {
        head.push_str(&format!(" {:>14}", kind_name(*k)));
    }
    println!("{head}");
    row(&format!("Version RPC (median of {})", o.runs), &|r| ms(r.version.median()));
    row(&format!("pull+unpack busybox (median of {})", o.pulls), &|r| ms(r.pull.median()));
    row(&format!("RunPodSandbox (median of {})", o.runs), &|r| ms(r.run_pod.median()));
    row(&format!("Create+Start (median of {})", o.runs), &|r| ms(r.create_start.median()));
    row(&format!("Stop+Remove (median of {})", o.runs), &|r| ms(r.stop_remove.median()));
    row(&format!("exec echo hi, SPDY (median of {})", o.execs), &|r| ms(r.streaming.exec.median()));
    row("port-forward 64 MiB down (median)", &|r| stream::median_rate(&r.streaming.pf_down));
    row("port-forward 64 MiB up (median)", &|r| stream::median_rate(&r.streaming.pf_up));
    row("daemon RSS, idle", &|r| mib(r.daemon_rss_idle_kib));
    row(&format!("daemon RSS, {} pods", o.pods), &|r| mib(r.daemon_rss_kib));
    row("monitor/shim PSS (one)", &|r| kib(r.one_monitor_pss_kib));
    row("monitor/shim RSS (one)", &|r| kib(r.one_monitor_rss_kib));
    row("monitors/shims PSS (all)", &|r| mib(r.all_monitors_pss_kib));
    row("monitors/shims (count)", &|r| if r.monitor_count > 0 { r.monitor_count.to_string() } else { "n/a".into() });
    let n = o.scale.pods * o.scale.per_pod;
    row(&format!("ListContainers, {n} running (med)"), &|r| ms(r.scale.list_containers.median()));
    row(&format!("ListContainerStats, {n} run. (med)"), &|r| ms(r.scale.list_stats.median()));
    row(&format!("daemon CPU idle {} s, {n} ctrs", o.scale.idle_secs), &|r| scale::percent(r.scale.daemon_idle_cpu));
    row(&format!("monitors/shims CPU idle, {n} ctrs"), &|r| scale::percent(r.scale.monitors_idle_cpu));
    println!();
    println!("min / median / max:");
    for (k, r) in cols {
        for (name, s) in [("ListContainers", &r.scale.list_containers), ("ListCtrStats", &r.scale.list_stats), ("Version", &r.version), ("pull", &r.pull), ("RunPodSandbox", &r.run_pod), ("Create+Start", &r.create_start), ("Stop+Remove", &r.stop_remove), ("exec echo hi", &r.streaming.exec)] {
            println!("  {:<11} {:<14} {} / {} / {}  (n={})", kind_name(*k), name, ms(s.min()), ms(s.median()), ms(s.max()), s.0.len());
        }
        println!("  {:<11} {:<14} down {}, up {}  (n={})", kind_name(*k), "port-forward", stream::range_rate(&r.streaming.pf_down), stream::range_rate(&r.streaming.pf_up), r.streaming.pf_down.len());
        if let Some(sz) = r.image_size {
            println!("  {:<11} busybox ImageStatus.size = {} bytes", kind_name(*k), sz);
        }
    }
    println!();
    println!("notes:");
    println!("  - one monitor/shim = the parent of one `sleep 3600` container; berth runs one berth-monitor per");
    println!("    container plus one per pod infra, containerd one containerd-shim-runc-v2 per pod.");
    println!("  - idle CPU: utime+stime from /proc/PID/stat over the idle window, % of one core; the scale rows'");
    println!("    monitors/shims: berth-monitor per container and pod infra, containerd-shim-runc-v2 per pod.");
    println!("  - PSS from /proc/PID/smaps_rollup (shared pages divided among sharers), RSS from /proc/PID/status.");
    println!("  - each pull follows RemoveImage; what RemoveImage left on disk (a runtime that keeps content");
    println!("    pulls faster) is counted below. Version RPC = the client+socket floor in every timing.");
    for (k, r) in cols {
        for n in &r.notes {
            println!("  - {}: {n}", kind_name(*k));
        }
        if let Some(e) = &r.error {
            println!("  - {}: ERROR: {e}", kind_name(*k));
        }
    }
    println!();
    println!("machine:");
    for (k, v) in facts {
        println!("  {k:<17} {v}");
    }
    println!("  {:<17} {}", "loadavg at end", loadavg());
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
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(LOCK_FILE).with_context(|| format!("open {LOCK_FILE}"))?;
    if lock.try_lock().is_err() {
        eprintln!("bench: waiting for another run to release {LOCK_FILE}");
        lock.lock().with_context(|| format!("lock {LOCK_FILE}"))?;
    }
    let facts = machine_facts();
    let netns_before = harness::netns_names();
    let bridge_before = Path::new("/sys/class/net").join(BRIDGE).exists();
    let tmp = tempfile::Builder::new().prefix("berth-bench-").tempdir_in("/tmp").context("create temp dir")?.keep();
    eprintln!("bench: temp dir {}", tmp.display());
    let mut cols = Vec::new();
    let setup = (|| -> Result<(Registry, TestImages)> {
        let reg = Registry::start(&tmp.join("registry"))?;
        let work = tmp.join("build");
        std::fs::create_dir_all(&work)?;
        let imgs = images::build_and_push(&reg, &work, o.targets.contains(&TargetKind::Containerd)).context("build and push test images")?;
        Ok((reg, imgs))
    })();
    let mut setup_err = None;
    match setup {
        Ok((mut reg, imgs)) => {
            for &k in &o.targets {
                eprintln!("bench: target {}", kind_name(k));
                let r = bench_target(k, &tmp, &imgs, &o).await;
                if let Some(e) = &r.error {
                    eprintln!("bench[{}]: ERROR: {e}", kind_name(k));
                }
                cols.push((k, r));
            }
            reg.stop();
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
    print_report(&o, &facts, &cols);
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
