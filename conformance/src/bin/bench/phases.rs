//! The measured phases of one target (numbered as in the crate docs): Version floor, pull,
//! import vs pull (`import.rs`), RunPodSandbox, Create+Start / Stop+Remove, the userns rows (`userns.rs`), streaming, memory with `--pods` pods, scale.
//! `phases` runs them in order on one client.

use crate::procfs::{entries, pids_of, pids_with_argv, ppid, pss_kib, vm_rss_kib};
use crate::report::mib;
use crate::rpc::{
    create_start, created, image_spec, pod_config, remove_image, remove_pod, run_pod, shared_pid_pod_config, sleep_config, stop_remove,
};
use crate::{import, kind_name, scale, stream, userns, Fixtures, Opts, Results};
use anyhow::{Context, Result};
use berth::cri::v1 as cri;
use berth_conformance::client::Clients;
use berth_conformance::daemon::TargetKind;
use berth_conformance::harness;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

/// What a target holds on disk for images (what stays after RemoveImage): berth's unpacked
/// layer dirs, containerd's content blobs and snapshots.
pub fn images_on_disk(kind: TargetKind, dir: &Path) -> String {
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

/// Phase 1: `n` PullImage of `image`, each after the first following RemoveImage; ImageStatus size.
async fn phase_pull(kind: TargetKind, dir: &Path, c: &mut Clients, image: &str, n: usize, r: &mut Results) -> Result<()> {
    for i in 0..n {
        if i > 0 {
            remove_image(c, image).await?;
            if i == 1 {
                r.notes.push(format!("after RemoveImage busybox: {}", images_on_disk(kind, dir)));
            }
        }
        let t = Instant::now();
        c.img
            .pull_image(cri::PullImageRequest { image: Some(image_spec(image)), auth: None, sandbox_config: None })
            .await
            .with_context(|| format!("PullImage {image} (run {i})"))?;
        r.pull.0.push(t.elapsed());
    }
    let st = c
        .img
        .image_status(cri::ImageStatusRequest { image: Some(image_spec(image)), verbose: false })
        .await
        .context("ImageStatus busybox")?
        .into_inner();
    r.image_size = st.image.map(|i| i.size);
    Ok(())
}

/// Phase 2: one untimed warm-up pod, then `n` timed RunPodSandbox of kubelet's default pod
/// (PID CONTAINER) and `n` of a pod sharing one PID namespace (berth gives only those an infra
/// process), each pod removed untimed.
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
    for i in 0..n {
        let cfg = shared_pid_pod_config(dir, &format!("runpod-shared-{i}"));
        let t = Instant::now();
        let id = run_pod(c, &cfg).await?;
        r.run_pod_shared.0.push(t.elapsed());
        remove_pod(c, &id).await?;
    }
    Ok(())
}

/// Phases 3 and 4: `n` Create+Start then Stop+Remove of a `sleep` container in one pod.
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

/// Phase 4b: `n` times a new pod with one `sleep` container, RunPodSandbox to StartContainer
/// timed together (critest's "pod and container from scratch"); each pod removed untimed.
async fn phase_from_scratch(dir: &Path, c: &mut Clients, image: &str, n: usize, r: &mut Results) -> Result<()> {
    for i in 0..n {
        let cfg = pod_config(dir, &format!("scratch-{i}"));
        let t = Instant::now();
        let pod = run_pod(c, &cfg).await?;
        create_start(c, &pod, &cfg, sleep_config("sleep", image)).await?;
        r.from_scratch.0.push(t.elapsed());
        remove_pod(c, &pod).await?;
    }
    Ok(())
}

/// Phase 6: `n` pods with one `sleep` container each; daemon RSS, monitor/shim PSS and RSS.
async fn phase_memory(
    kind: TargetKind,
    dir: &Path,
    c: &mut Clients,
    daemon_pid: i32,
    image: &str,
    n: usize,
    r: &mut Results,
) -> Result<()> {
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
    r.daemon_pss_kib = pss_kib(daemon_pid);
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

/// Phase 9 (`import.rs`), when its image was built.
async fn phase_import(
    kind: TargetKind,
    dir: &Path,
    c: &mut Clients,
    big: Option<&import::BigImage>,
    o: &Opts,
    r: &mut Results,
) -> Result<()> {
    let big = big.context("the import image was not built")?;
    eprintln!("bench[{}]: import vs pull of a 150 MB image x{}", kind_name(kind), o.imports);
    import::phase_import(kind, dir, c, big, o.imports, &mut r.import).await
}

/// Every phase of one target in order (`--only scale`: the scale phase alone).
pub async fn phases(
    kind: TargetKind,
    dir: &Path,
    c: &mut Clients,
    daemon_pid: i32,
    fx: &Fixtures,
    o: &Opts,
    r: &mut Results,
) -> Result<()> {
    let (imgs, big) = (&fx.imgs, fx.big.as_ref());
    r.daemon_rss_idle_kib = vm_rss_kib(daemon_pid);
    if o.only_import {
        return phase_import(kind, dir, c, big, o, r).await;
    }
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
    // The daemon's RSS after each phase, in MiB: where memory stays behind.
    let mut trail = vec![format!("idle {}", mib(r.daemon_rss_idle_kib))];
    let mut after = |phase: &str| trail.push(format!("{phase} {}", mib(vm_rss_kib(daemon_pid))));
    eprintln!("bench[{}]: pull x{}", kind_name(kind), o.pulls);
    phase_pull(kind, dir, c, &imgs.busybox, o.pulls, r).await?;
    after("pulls");
    phase_import(kind, dir, c, big, o, r).await?;
    after("kind load");
    eprintln!("bench[{}]: RunPodSandbox x{}", kind_name(kind), o.runs);
    phase_run_pod(dir, c, o.runs, r).await?;
    after("pods");
    eprintln!("bench[{}]: Create+Start / Stop+Remove x{}", kind_name(kind), o.runs);
    phase_containers(dir, c, &imgs.busybox, o.runs, r).await?;
    after("containers");
    eprintln!("bench[{}]: pod + container from scratch x{}", kind_name(kind), o.runs);
    phase_from_scratch(dir, c, &imgs.busybox, o.runs, r).await?;
    eprintln!("bench[{}]: userns pod: RunPodSandbox, Create+Start x{}", kind_name(kind), o.runs);
    match userns::phase_userns(kind, dir, c, &imgs.busybox, o.runs, &mut r.userns).await {
        Ok(None) => {}
        Ok(Some(skipped)) => r.notes.push(skipped),
        Err(e) => r.notes.push(format!("userns rows: ERROR: {e:#}")),
    }
    eprintln!("bench[{}]: exec round trip x{}, port-forward 64 MiB x{} each way", kind_name(kind), o.execs, stream::PF_RUNS);
    after("userns");
    stream::phase_streaming(dir, c, &imgs.busybox, o.execs, &mut r.streaming).await?;
    after("exec and port-forward");
    eprintln!("bench[{}]: memory with {} pods", kind_name(kind), o.pods);
    phase_memory(kind, dir, c, daemon_pid, &imgs.busybox, o.pods, r).await?;
    r.notes.push(format!("daemon RSS after each phase: {}", trail.join(", ")));
    eprintln!("bench[{}]: scale: {} pods x {} containers", kind_name(kind), o.scale.pods, o.scale.per_pod);
    scale::phase_scale(kind, dir, c, daemon_pid, &imgs.busybox, &o.scale, &mut r.scale).await
}
