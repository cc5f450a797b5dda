//! Berth-only rows of the bench: pods with their own user namespace (Kubernetes
//! `hostUsers: false`), next to the plain RunPodSandbox and Create+Start rows.
//!
//! Request shape as in the conformance case `conformance/src/cases/userns.rs` and as kubelet
//! sends it: `PodSandboxConfig.linux.security_context.namespace_options.userns_options` =
//! `UserNamespace { mode: POD, uids: [m], gids: [m] }` with one mapping
//! `m = { host_id: 300000 + k * 65536, container_id: 0, length: 65536 }`, `k` distinct for every
//! pod the phase creates (kubelet gives each pod its own range), and the same `userns_options` in
//! each container's `linux.security_context.namespace_options`.
//!
//! - RunPodSandbox of such a pod, `--runs` times, after one untimed warm-up pod; each pod stopped
//!   and removed outside the timing (as the plain row).
//! - CreateContainer+StartContainer of a busybox `sleep 3600` in one such ready pod, `--runs`
//!   times; each container stopped and removed outside the timing.
//!
//! Skipped ("n/a", with a note) on containerd (1.6 ignores `userns_options`) and on a runtime
//! whose Status lists no handler with `features.user_namespaces`. An error here is a note, not
//! a failure of the target: the other rows stand, and the target's final cleanup removes what the
//! phase left.

use crate::rpc::{create_start, pod_config, remove_pod, run_pod, sleep_config, stop_remove};
use crate::Samples;
use anyhow::{Context, Result};
use berth::cri::v1 as cri;
use berth_conformance::client::Clients;
use berth_conformance::daemon::TargetKind;
use std::path::Path;
use std::time::Instant;

/// First host id of the pods' ranges (unused by anything on a test machine; as the conformance
/// suite).
const HOST_BASE: u32 = 300_000;
/// Ids per pod (Kubernetes' default range size).
const RANGE: u32 = 65_536;

/// What the userns phase measured on one target; empty when it was skipped.
#[derive(Default)]
pub struct UsernsResults {
    /// RunPodSandbox of a pod with its own user namespace.
    pub run_pod: Samples,
    /// CreateContainer+StartContainer of `sleep 3600` in such a pod.
    pub create_start: Samples,
}

/// The pod user namespace with the `k`-th host range: uid and gid `0..65536` inside map to
/// `300000 + k*65536 ..` on the host.
fn pod_userns(k: u32) -> cri::UserNamespace {
    let m = cri::IdMapping { host_id: HOST_BASE + k * RANGE, container_id: 0, length: RANGE };
    cri::UserNamespace { mode: cri::NamespaceMode::Pod as i32, uids: vec![m], gids: vec![m] }
}

/// [`pod_config`] with `userns_options` = [`pod_userns`]`(k)`.
fn userns_pod_config(dir: &Path, name: &str, k: u32) -> cri::PodSandboxConfig {
    let mut pc = pod_config(dir, name);
    let sc = pc.linux.get_or_insert_with(Default::default).security_context.get_or_insert_with(Default::default);
    sc.namespace_options.get_or_insert_with(Default::default).userns_options = Some(pod_userns(k));
    pc
}

/// [`sleep_config`] carrying the pod's `userns_options`, as kubelet sends it.
fn userns_sleep_config(name: &str, image: &str, k: u32) -> cri::ContainerConfig {
    let mut cfg = sleep_config(name, image);
    let sc = cfg.linux.get_or_insert_with(Default::default).security_context.get_or_insert_with(Default::default);
    sc.namespace_options.get_or_insert_with(Default::default).userns_options = Some(pod_userns(k));
    cfg
}

/// Why the phase does not apply to this target, or None when it does: containerd, or no
/// handler in Status reporting `features.user_namespaces`.
async fn skip_reason(kind: TargetKind, c: &mut Clients) -> Result<Option<String>> {
    if kind == TargetKind::Containerd {
        return Ok(Some("userns rows: n/a (berth-only; containerd 1.6 ignores userns_options)".into()));
    }
    let st = c.rt.status(cri::StatusRequest { verbose: false }).await.context("Status")?.into_inner();
    if st.runtime_handlers.iter().any(|h| h.features.as_ref().is_some_and(|f| f.user_namespaces)) {
        return Ok(None);
    }
    let names: Vec<String> = st.runtime_handlers.iter().map(|h| format!("{:?}", h.name)).collect();
    Ok(Some(format!("userns rows: n/a (Status.runtime_handlers [{}]: none with features.user_namespaces)", names.join(", "))))
}

/// Runs the userns rows on `kind` with `n` samples each; returns a note when it was skipped.
/// Errors are RPC failures, named by the request and the pod or container.
pub async fn phase_userns(
    kind: TargetKind,
    dir: &Path,
    c: &mut Clients,
    image: &str,
    n: usize,
    r: &mut UsernsResults,
) -> Result<Option<String>> {
    if let Some(why) = skip_reason(kind, c).await? {
        return Ok(Some(why));
    }
    // k: 0 warm-up, 1..=n the timed pods, n+1 the container pod; never two pods on one range.
    let warm = userns_pod_config(dir, "userns-warmup", 0);
    let id = run_pod(c, &warm).await?;
    remove_pod(c, &id).await?;
    for i in 0..n {
        let k = i as u32 + 1;
        let cfg = userns_pod_config(dir, &format!("userns-runpod-{i}"), k);
        let t = Instant::now();
        let id = run_pod(c, &cfg).await?;
        r.run_pod.0.push(t.elapsed());
        remove_pod(c, &id).await?;
    }
    let k = n as u32 + 1;
    let cfg = userns_pod_config(dir, "userns-containers", k);
    let pod = run_pod(c, &cfg).await?;
    let timed = async {
        for i in 0..n {
            let t = Instant::now();
            let id = create_start(c, &pod, &cfg, userns_sleep_config(&format!("userns-sleep-{i}"), image, k)).await?;
            r.create_start.0.push(t.elapsed());
            stop_remove(c, &id).await?;
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let removed = remove_pod(c, &pod).await;
    timed?;
    removed?;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_disjoint_and_shaped_as_kubelet_sends() {
        let a = pod_userns(0);
        let b = pod_userns(1);
        assert_eq!(a.mode, cri::NamespaceMode::Pod as i32);
        assert_eq!(a.uids, a.gids);
        assert_eq!((a.uids[0].host_id, a.uids[0].container_id, a.uids[0].length), (300_000, 0, 65_536));
        assert_eq!(b.uids[0].host_id, a.uids[0].host_id + a.uids[0].length);
        let tmp = tempfile::tempdir().expect("temp dir");
        let pc = userns_pod_config(tmp.path(), "p", 2);
        let ns = pc.linux.and_then(|l| l.security_context).and_then(|s| s.namespace_options).and_then(|n| n.userns_options);
        assert_eq!(ns.map(|u| u.uids[0].host_id), Some(300_000 + 2 * 65_536));
        let cc = userns_sleep_config("c", "busybox", 2);
        let ns = cc.linux.and_then(|l| l.security_context).and_then(|s| s.namespace_options).and_then(|n| n.userns_options);
        assert_eq!(ns.map(|u| u.gids[0].host_id), Some(300_000 + 2 * 65_536));
    }
}
