//! What cri-api v0.36 added (issue #9): image volumes (`Mount.image`, `image_sub_path`), the six `Stream*` list RPCs, `ContainerConfig.stop_signal`
//! and `ContainerStatus.stop_signal`, `KeyValue.value` as bytes, `UpdatePodSandboxResources`, and
//! `RuntimeFeatures.user_namespaces_host_network`. containerd 1.6 predates all of them: there the
//! RPCs answer Unimplemented and the fields are ignored, and the cases skip or note it.

use super::util::check;
use super::Case;
use crate::ctx::{skip, Ctx};
use crate::daemon::TargetKind;
use anyhow::{bail, Context, Result};
use berth::cri::v1 as cri;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The cases of this module, in run order.
pub fn cases() -> Vec<Case> {
    vec![
        case!("stream_rpcs_match_list_rpcs", stream_rpcs_match_list_rpcs),
        case!("container_stop_signal_overrides_image", stop_signal_overrides_image),
        case!("env_value_not_utf8", env_value_not_utf8),
        case!("update_pod_sandbox_resources_answered", update_pod_sandbox_resources_answered),
        case!("runtime_features_user_namespaces_host_network", user_namespaces_host_network),
        case!("image_volume_read_only_with_sub_path", image_volume),
        case!("image_volume_bad_sub_path_refused", image_volume_bad_sub_path),
        case!("image_volume_writable_refused", image_volume_writable_refused),
    ]
}

/// Collects a server stream; `Ok(None)` when the RPC is Unimplemented.
async fn collect<T>(r: Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>, rpc: &str) -> Result<Option<Vec<T>>> {
    let mut s = match r {
        Ok(s) => s.into_inner(),
        Err(st) if st.code() == tonic::Code::Unimplemented => return Ok(None),
        Err(st) => bail!("{rpc}: {st}"),
    };
    let mut out = Vec::new();
    while let Some(m) = s.message().await.with_context(|| format!("{rpc}: reading the stream"))? {
        out.push(m);
    }
    Ok(Some(out))
}

fn ids<'a>(it: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    it.into_iter().map(str::to_string).collect()
}

/// Each Stream RPC gives the same items as its List RPC under the same filter, none twice and
/// no response empty.
pub async fn stream_rpcs_match_list_rpcs(ctx: &Ctx) -> Result<()> {
    let a = ctx.run_pod_with(ctx.pod_config("stream-a", &[("stream-case", "a")])).await?;
    let b = ctx.run_pod_with(ctx.pod_config("stream-b", &[("stream-case", "b")])).await?;
    let ca = ctx.start_container(&a, "sleeper", &ctx.images.busybox, &["sleep", "1000"]).await?;
    let _cb = ctx.start_container(&b, "sleeper", &ctx.images.busybox, &["sleep", "1000"]).await?;
    let result = async {
        let mut rt = ctx.rt();
        let pod_filter =
            cri::PodSandboxFilter { label_selector: [("stream-case".to_string(), "a".to_string())].into(), ..Default::default() };
        let Some(streamed) = collect(
            rt.stream_pod_sandboxes(cri::StreamPodSandboxesRequest { filter: Some(pod_filter.clone()) }).await,
            "StreamPodSandboxes",
        )
        .await?
        else {
            return skip("StreamPodSandboxes is Unimplemented on this runtime (cri-api < v0.36)");
        };
        check(streamed.iter().all(|r| !r.pod_sandboxes.is_empty()), || "StreamPodSandboxes sent an empty response".into())?;
        let listed = rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: Some(pod_filter) }).await?.into_inner().items;
        let got = ids(streamed.iter().flat_map(|r| r.pod_sandboxes.iter().map(|p| p.id.as_str())));
        check(got == ids(listed.iter().map(|p| p.id.as_str())) && got == ids([a.id.as_str()]), || {
            format!("StreamPodSandboxes {got:?}, ListPodSandbox {listed:?}")
        })?;

        let all = collect(rt.stream_pod_sandboxes(cri::StreamPodSandboxesRequest { filter: None }).await, "StreamPodSandboxes")
            .await?
            .unwrap_or_default();
        let n: usize = all.iter().map(|r| r.pod_sandboxes.len()).sum();
        let every = ids(all.iter().flat_map(|r| r.pod_sandboxes.iter().map(|p| p.id.as_str())));
        check(n == every.len() && every.contains(&a.id) && every.contains(&b.id), || {
            format!("unfiltered StreamPodSandboxes: {n} items, {} distinct", every.len())
        })?;

        let cfilter = cri::ContainerFilter { pod_sandbox_id: a.id.clone(), ..Default::default() };
        let streamed =
            collect(rt.stream_containers(cri::StreamContainersRequest { filter: Some(cfilter.clone()) }).await, "StreamContainers")
                .await?
                .context("StreamContainers Unimplemented")?;
        let got = ids(streamed.iter().flat_map(|r| r.containers.iter().map(|c| c.id.as_str())));
        check(got == ids([ca.as_str()]), || format!("StreamContainers of pod a: {got:?}, expected {ca}"))?;

        let sfilter = cri::ContainerStatsFilter { pod_sandbox_id: a.id.clone(), ..Default::default() };
        let streamed = collect(
            rt.stream_container_stats(cri::StreamContainerStatsRequest { filter: Some(sfilter.clone()) }).await,
            "StreamContainerStats",
        )
        .await?
        .context("StreamContainerStats Unimplemented")?;
        let got = ids(streamed.iter().flat_map(|r| r.container_stats.iter().filter_map(|s| s.attributes.as_ref()).map(|x| x.id.as_str())));
        let listed = rt.list_container_stats(cri::ListContainerStatsRequest { filter: Some(sfilter) }).await?.into_inner().stats;
        check(got == ids(listed.iter().filter_map(|s| s.attributes.as_ref()).map(|x| x.id.as_str())) && got.contains(&ca), || {
            format!("StreamContainerStats {got:?} vs ListContainerStats")
        })?;

        let pfilter = cri::PodSandboxStatsFilter { id: b.id.clone(), ..Default::default() };
        let streamed = collect(
            rt.stream_pod_sandbox_stats(cri::StreamPodSandboxStatsRequest { filter: Some(pfilter) }).await,
            "StreamPodSandboxStats",
        )
        .await?
        .context("StreamPodSandboxStats Unimplemented")?;
        let got =
            ids(streamed.iter().flat_map(|r| r.pod_sandbox_stats.iter().filter_map(|s| s.attributes.as_ref()).map(|x| x.id.as_str())));
        check(got == ids([b.id.as_str()]), || format!("StreamPodSandboxStats for pod b: {got:?}"))?;

        let streamed = collect(rt.stream_pod_sandbox_metrics(cri::StreamPodSandboxMetricsRequest {}).await, "StreamPodSandboxMetrics")
            .await?
            .context("StreamPodSandboxMetrics Unimplemented")?;
        let got = ids(streamed.iter().flat_map(|r| r.pod_sandbox_metrics.iter().map(|m| m.pod_sandbox_id.as_str())));
        check(got.contains(&a.id) && got.contains(&b.id), || format!("StreamPodSandboxMetrics lacks the two pods: {got:?}"))?;

        let mut img = ctx.img();
        let ifilter = cri::ImageFilter { image: Some(crate::ctx::spec(&ctx.images.busybox)) };
        let streamed = collect(img.stream_images(cri::StreamImagesRequest { filter: Some(ifilter.clone()) }).await, "StreamImages")
            .await?
            .context("StreamImages Unimplemented")?;
        let listed = img.list_images(cri::ListImagesRequest { filter: Some(ifilter) }).await?.into_inner().images;
        let got = ids(streamed.iter().flat_map(|r| r.images.iter().map(|i| i.id.as_str())));
        check(!got.is_empty() && got == ids(listed.iter().map(|i| i.id.as_str())), || format!("StreamImages {got:?} vs ListImages"))
    }
    .await;
    ctx.remove_pod(&a.id).await?;
    ctx.remove_pod(&b.id).await?;
    result
}

/// `stop_signal: SIGUSR1` is what StopContainer sends: a shell that exits cleanly on USR1 and
/// ignores TERM stops at once with exit 0, and ContainerStatus reports SIGUSR1.
pub async fn stop_signal_overrides_image(ctx: &Ctx) -> Result<()> {
    let pod = ctx.run_pod("stopsig").await?;
    let mut config = ctx.container_config(
        "usr1",
        &ctx.images.busybox,
        &["sh", "-c", "trap 'echo got usr1; exit 0' USR1; trap '' TERM; echo ready; while true; do sleep 0.2; done"],
    );
    config.stop_signal = cri::Signal::Sigusr1 as i32;
    let result = async {
        let id = ctx.create_with(&pod, config).await?;
        ctx.rt().start_container(cri::StartContainerRequest { container_id: id.clone() }).await?;
        let st = ctx.wait_container_state(&id, cri::ContainerState::ContainerRunning, Duration::from_secs(30)).await?;
        super::util::read_log(&pod, &st, 1).await.context("waiting for the traps")?;
        if st.stop_signal != cri::Signal::Sigusr1 as i32 {
            if ctx.kind != TargetKind::Berth {
                eprintln!(
                    "note container_stop_signal_overrides_image: this runtime reports stop_signal {} (it predates the field)",
                    st.stop_signal
                );
                return skip("ContainerConfig.stop_signal is newer than this runtime");
            }
            bail!("ContainerStatus.stop_signal {}, expected SIGUSR1 ({})", st.stop_signal, cri::Signal::Sigusr1 as i32);
        }
        let t0 = Instant::now();
        ctx.rt().stop_container(cri::StopContainerRequest { container_id: id.clone(), timeout: 20 }).await?;
        let took = t0.elapsed();
        let st = ctx.container_status(&id).await?;
        check(st.exit_code == 0 && took < Duration::from_secs(10), || {
            format!("after StopContainer: exit {} in {took:?} (SIGTERM is ignored, SIGUSR1 exits 0)", st.exit_code)
        })?;
        let lines = super::util::read_log(&pod, &st, 2).await?;
        check(lines.iter().any(|l| l.text == "got usr1"), || {
            format!("log {:?} lacks \"got usr1\"", lines.iter().map(|l| &l.text).collect::<Vec<_>>())
        })
    }
    .await;
    ctx.remove_pod(&pod.id).await?;
    result
}

/// `KeyValue.value` is bytes: an env value that is not UTF-8 neither breaks CreateContainer nor
/// the record (the container is listed and its status read after a daemon restart elsewhere);
/// the process sees it with U+FFFD in place of the bad byte, as containerd passes it.
pub async fn env_value_not_utf8(ctx: &Ctx) -> Result<()> {
    let pod = ctx.run_pod("envbytes").await?;
    let mut config = ctx.container_config("env", &ctx.images.busybox, &["sh", "-c", "echo \"[$RAW]\"; echo \"[$PLAIN]\""]);
    config.envs = vec![
        cri::KeyValue { key: "RAW".into(), value: vec![b'a', 0xff, b'b'] },
        cri::KeyValue { key: "PLAIN".into(), value: b"caf\xc3\xa9".to_vec() },
    ];
    let result = async {
        let id = ctx.create_with(&pod, config).await?;
        ctx.rt().start_container(cri::StartContainerRequest { container_id: id.clone() }).await?;
        let st = ctx.wait_container_state(&id, cri::ContainerState::ContainerExited, Duration::from_secs(30)).await?;
        let lines = super::util::read_log(&pod, &st, 2).await?;
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        check(texts.get(1) == Some(&"[café]"), || format!("PLAIN printed {texts:?}"))?;
        eprintln!("note env_value_not_utf8: RAW printed {:?}", texts.first());
        check(texts.first().is_some_and(|t| t.starts_with("[a") && t.ends_with("b]")), || format!("RAW printed {texts:?}"))?;
        let listed = ctx
            .rt()
            .list_containers(cri::ListContainersRequest { filter: Some(cri::ContainerFilter { id: id.clone(), ..Default::default() }) })
            .await?
            .into_inner()
            .containers;
        check(listed.len() == 1, || format!("ListContainers by id gives {} containers", listed.len()))
    }
    .await;
    ctx.remove_pod(&pod.id).await?;
    result
}

/// UpdatePodSandboxResources (kubelet's in-place pod resize, after it wrote the pod cgroup):
/// Ok for a ready pod, the new resources recorded (PodSandboxStatus verbose `info.config`, what
/// crictl inspectp shows); NotFound for a pod that does not exist. A runtime that predates the
/// RPC answers Unimplemented (noted).
pub async fn update_pod_sandbox_resources_answered(ctx: &Ctx) -> Result<()> {
    let pod = ctx.run_pod("podres").await?;
    let resources = cri::LinuxContainerResources { cpu_shares: 512, memory_limit_in_bytes: 256 << 20, ..Default::default() };
    let req = cri::UpdatePodSandboxResourcesRequest { pod_sandbox_id: pod.id.clone(), overhead: None, resources: Some(resources) };
    let r = ctx.rt().update_pod_sandbox_resources(req).await;
    let result = async {
        match r {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::Unimplemented && ctx.kind != TargetKind::Berth => {
                eprintln!("note update_pod_sandbox_resources_answered: Unimplemented: {}", s.message());
                return skip("UpdatePodSandboxResources is newer than this runtime");
            }
            Err(s) => bail!("UpdatePodSandboxResources of a ready pod: {s}"),
        }
        let st =
            ctx.rt().pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: pod.id.clone(), verbose: true }).await?.into_inner();
        if ctx.kind == TargetKind::Berth {
            let info: serde_json::Value = serde_json::from_str(st.info.get("info").map(String::as_str).unwrap_or("{}"))?;
            let recorded = &info["config"]["linux"]["resources"];
            check(recorded["memory_limit_in_bytes"] == 256 << 20 && recorded["cpu_shares"] == 512, || {
                format!("PodSandboxStatus info.config.linux.resources = {recorded}")
            })?;
        }
        let missing = cri::UpdatePodSandboxResourcesRequest { pod_sandbox_id: "0".repeat(64), overhead: None, resources: None };
        match ctx.rt().update_pod_sandbox_resources(missing).await {
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            other => bail!("UpdatePodSandboxResources of a missing pod: expected NotFound, got {other:?}"),
        }
    }
    .await;
    ctx.remove_pod(&pod.id).await?;
    result
}

/// `RuntimeFeatures.user_namespaces_host_network` is true only where such a pod runs: on berth
/// it is false, and a pod asking for its own user namespace with the host's network is refused
/// with InvalidArgument.
pub async fn user_namespaces_host_network(ctx: &Ctx) -> Result<()> {
    let st = ctx.rt().status(cri::StatusRequest { verbose: false }).await?.into_inner();
    let advertised = st.features.map(|f| f.user_namespaces_host_network).unwrap_or(false);
    if ctx.kind != TargetKind::Berth {
        eprintln!("note runtime_features_user_namespaces_host_network: advertised {advertised}");
        return skip("checked against berth's refusal only");
    }
    check(!advertised, || "berth advertises user_namespaces_host_network but refuses such pods".into())?;
    let mut config = ctx.pod_config("userns-hostnet", &[]);
    let ids = vec![cri::IdMapping { host_id: 200_000, container_id: 0, length: 65_536 }];
    config.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                network: cri::NamespaceMode::Node as i32,
                userns_options: Some(cri::UserNamespace { mode: cri::NamespaceMode::Pod as i32, uids: ids.clone(), gids: ids }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    match ctx.rt().run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() }).await {
        Err(s) if s.code() == tonic::Code::InvalidArgument => Ok(()),
        Ok(r) => {
            let id = r.into_inner().pod_sandbox_id;
            ctx.remove_pod(&id).await?;
            bail!("a pod with its own user namespace and the host network ran ({id})")
        }
        Err(s) => bail!("expected InvalidArgument, got {s}"),
    }
}

/// An image volume as kubelet asks for it (`Mount.image.image` = PullImage's `image_ref`).
fn image_mount(path: &str, image_ref: &str, sub_path: &str) -> cri::Mount {
    cri::Mount {
        container_path: path.into(),
        image: Some(cri::ImageSpec { image: image_ref.into(), ..Default::default() }),
        image_sub_path: sub_path.into(),
        readonly: true,
        ..Default::default()
    }
}

/// Two image volumes (KEP-4639): the multi-layer `layers` image whole (its whiteouts applied) and
/// busybox's `etc` (image_sub_path); both read-only; ContainerStatus reports each volume's image
/// as `image_ref` (KEP-5365), the image ID PullImage returned, as critest checks it; RemoveImage of a volume's image while the container runs keeps what it mounts; and
/// removing the pod leaves no mount (checked again by the suite's leak case).
pub async fn image_volume(ctx: &Ctx) -> Result<()> {
    let layers_ref = ctx.pull(&ctx.images.layers).await?;
    let busybox_ref = ctx.pull(&ctx.images.busybox).await?;
    let pod = ctx.run_pod("imagevol").await?;
    let script = "cat /vol/layer3.txt >/dev/null && echo layer3 ok; ls /vol/data; test -e /etc2/passwd && echo passwd ok; \
                  touch /vol/new 2>/dev/null && echo vol writable; touch /etc2/new 2>/dev/null && echo etc2 writable; sleep 1000";
    let mut config = ctx.container_config("imagevol", &ctx.images.busybox, &["sh", "-c", script]);
    config.mounts = vec![image_mount("/vol", &layers_ref, ""), image_mount("/etc2", &busybox_ref, "etc")];
    let result = async {
        let id = match ctx.create_with(&pod, config).await {
            Ok(id) => id,
            Err(e) if ctx.kind != TargetKind::Berth => {
                eprintln!("note image_volume_read_only_with_sub_path: CreateContainer: {e:#}");
                return skip("image volumes (KEP-4639) are newer than this runtime");
            }
            Err(e) => return Err(e),
        };
        ctx.rt().start_container(cri::StartContainerRequest { container_id: id.clone() }).await?;
        let st = ctx.wait_container_state(&id, cri::ContainerState::ContainerRunning, Duration::from_secs(30)).await?;
        let lines = super::util::read_log(&pod, &st, 3).await?;
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        check(texts.contains(&"layer3 ok") && texts.contains(&"b") && !texts.contains(&"a") && texts.contains(&"passwd ok"), || {
            format!("the volumes show {texts:?}: expected layer3.txt, /vol/data with b and not a (whiteout), /etc2/passwd")
        })?;
        check(!texts.iter().any(|t| t.ends_with("writable")), || format!("an image volume is writable: {texts:?}"))?;
        let refs: Vec<String> = st.mounts.iter().filter_map(|m| m.image.as_ref()).map(|i| i.image_ref.clone()).collect();
        check(refs == [layers_ref.clone(), busybox_ref.clone()], || {
            format!("ContainerStatus.mounts image refs {refs:?}, expected the IDs PullImage returned: [{layers_ref}, {busybox_ref}]")
        })?;
        // The volume's image removed: the container keeps its layers.
        ctx.img().remove_image(cri::RemoveImageRequest { image: Some(crate::ctx::spec(&ctx.images.layers)) }).await?;
        let r = ctx.exec(&id, &["cat", "/vol/layer3.txt"], 10).await?;
        check(r.exit_code == 0, || {
            format!("after RemoveImage the volume reads: exit {} {:?}", r.exit_code, String::from_utf8_lossy(&r.stderr))
        })?;
        // StopContainer takes the volume mounts away (berth mounts them under the container's
        // state directory, one per volume).
        let volume_mounts = || -> Result<Vec<String>> {
            let text = std::fs::read_to_string("/proc/self/mountinfo")?;
            Ok(text.lines().filter(|l| l.contains(id.as_str()) && l.contains("imagevol")).map(str::to_string).collect())
        };
        if ctx.kind == TargetKind::Berth {
            let before = volume_mounts()?;
            check(before.len() == 2, || format!("expected the two image volume mounts on the host, found {before:?}"))?;
        }
        ctx.rt().stop_container(cri::StopContainerRequest { container_id: id.clone(), timeout: 0 }).await?;
        if ctx.kind == TargetKind::Berth {
            let left = volume_mounts()?;
            check(left.is_empty(), || format!("image volume mounts left after StopContainer: {left:?}"))?;
        }
        Ok(())
    }
    .await;
    ctx.remove_pod(&pod.id).await?;
    ctx.pull(&ctx.images.layers).await?;
    result
}

/// An image_sub_path that climbs out, is absolute, or does not exist in the image is
/// InvalidArgument naming the field, and leaves nothing.
pub async fn image_volume_bad_sub_path(ctx: &Ctx) -> Result<()> {
    if ctx.kind != TargetKind::Berth {
        return skip("image volumes (KEP-4639) are newer than containerd 1.6");
    }
    let busybox_ref = ctx.pull(&ctx.images.busybox).await?;
    let pod = ctx.run_pod("imagevol-bad").await?;
    let result = async {
        for sub in ["../..", "/etc", "no/such/dir"] {
            let mut config = ctx.container_config("bad", &ctx.images.busybox, &["true"]);
            config.mounts = vec![image_mount("/vol", &busybox_ref, sub)];
            let r = ctx.create_request(&pod, config).await;
            match r {
                Err(s) if s.code() == tonic::Code::InvalidArgument && s.message().contains("image_sub_path") => {}
                other => bail!("image_sub_path {sub:?}: expected InvalidArgument naming image_sub_path, got {other:?}"),
            }
        }
        let left = ctx
            .rt()
            .list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter { pod_sandbox_id: pod.id.clone(), ..Default::default() }),
            })
            .await?
            .into_inner()
            .containers;
        check(left.is_empty(), || format!("refused creates left containers: {left:?}"))
    }
    .await;
    ctx.remove_pod(&pod.id).await?;
    result
}

/// An image volume with `readonly: false` is InvalidArgument naming `mounts[0].readonly` (the CRI:
/// image mounts are read-only by definition; critest's "should reject Image Volume with Readonly
/// set to false"), and leaves nothing.
pub async fn image_volume_writable_refused(ctx: &Ctx) -> Result<()> {
    if ctx.kind != TargetKind::Berth {
        return skip("image volumes (KEP-4639) are newer than containerd 1.6");
    }
    let busybox_ref = ctx.pull(&ctx.images.busybox).await?;
    let pod = ctx.run_pod("imagevol-rw").await?;
    let result = async {
        let mut config = ctx.container_config("rw", &ctx.images.busybox, &["true"]);
        let mut m = image_mount("/vol", &busybox_ref, "");
        m.readonly = false;
        config.mounts = vec![m];
        let r = ctx.create_request(&pod, config).await;
        match r {
            Err(s) if s.code() == tonic::Code::InvalidArgument && s.message().contains("mounts[0].readonly") => {}
            other => bail!("readonly=false image volume: expected InvalidArgument naming mounts[0].readonly, got {other:?}"),
        }
        let left = ctx
            .rt()
            .list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter { pod_sandbox_id: pod.id.clone(), ..Default::default() }),
            })
            .await?
            .into_inner()
            .containers;
        check(left.is_empty(), || format!("the refused create left containers: {left:?}"))
    }
    .await;
    ctx.remove_pod(&pod.id).await?;
    result
}
