//! Pod sandbox cases.

use super::util::check;
use crate::ctx::Ctx;
use crate::daemon::TargetKind;
use crate::harness::SUBNET_PREFIX;
use anyhow::{Context, Result};
use berth::cri::v1 as cri;
use std::collections::HashMap;
use std::time::Duration;

async fn pod_status(ctx: &Ctx, id: &str) -> Result<cri::PodSandboxStatus> {
    ctx.rt()
        .pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: false })
        .await
        .with_context(|| format!("PodSandboxStatus {id}"))?
        .into_inner()
        .status
        .with_context(|| format!("PodSandboxStatus {id}: no status"))
}

async fn list(ctx: &Ctx, filter: cri::PodSandboxFilter) -> Result<Vec<String>> {
    let f = format!("{filter:?}");
    Ok(ctx
        .rt()
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: Some(filter) })
        .await
        .with_context(|| format!("ListPodSandbox {f}"))?
        .into_inner()
        .items
        .into_iter()
        .map(|p| p.id)
        .collect())
}

/// RunPodSandbox -> READY, an IP in the test subnet, labels/annotations/metadata kept.
pub async fn run_status(ctx: &Ctx) -> Result<()> {
    let mut cfg = ctx.pod_config("status", &[("app", "web")]);
    cfg.annotations.insert("example.com/note".into(), "kept".into());
    let pod = ctx.run_pod_with(cfg.clone()).await?;
    let st = pod_status(ctx, &pod.id).await?;
    check(st.id == pod.id, || format!("status id {}, expected {}", st.id, pod.id))?;
    check(st.state == cri::PodSandboxState::SandboxReady as i32, || format!("state {}, expected SANDBOX_READY", st.state))?;
    let ip = st.network.as_ref().map(|n| n.ip.clone()).unwrap_or_default();
    check(ip.starts_with(SUBNET_PREFIX), || format!("pod IP {ip:?}, expected one in {SUBNET_PREFIX}0/24"))?;
    check(st.labels.get("app").map(String::as_str) == Some("web"), || format!("labels {:?} lack app=web", st.labels))?;
    check(st.annotations.get("example.com/note").map(String::as_str) == Some("kept"), || {
        format!("annotations {:?} lack example.com/note=kept", st.annotations)
    })?;
    check(st.metadata == cfg.metadata, || format!("metadata {:?}, expected {:?}", st.metadata, cfg.metadata))?;
    check(st.created_at > 0, || "created_at is 0".into())?;
    ctx.remove_pod(&pod.id).await?;
    let left = list(ctx, cri::PodSandboxFilter { id: pod.id.clone(), ..Default::default() }).await?;
    check(left.is_empty(), || format!("ListPodSandbox still lists removed pod {}", pod.id))
}

/// ListPodSandbox filters by id, state and label selector.
pub async fn list_filters(ctx: &Ctx) -> Result<()> {
    let group = ctx.unique();
    let a = ctx.run_pod_with(ctx.pod_config("filter-a", &[("group", &group), ("which", "a")])).await?;
    let b = ctx.run_pod_with(ctx.pod_config("filter-b", &[("group", &group), ("which", "b")])).await?;
    ctx.rt().stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: b.id.clone() }).await.context("StopPodSandbox b")?;
    let by_id = list(ctx, cri::PodSandboxFilter { id: a.id.clone(), ..Default::default() }).await?;
    check(by_id == vec![a.id.clone()], || format!("filter id={}: got {by_id:?}", a.id))?;
    let sel = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>();
    let both = list(ctx, cri::PodSandboxFilter { label_selector: sel(&[("group", &group)]), ..Default::default() }).await?;
    check(both.len() == 2 && both.contains(&a.id) && both.contains(&b.id), || {
        format!("filter group={group}: got {both:?}, expected a and b")
    })?;
    let only_b =
        list(ctx, cri::PodSandboxFilter { label_selector: sel(&[("group", &group), ("which", "b")]), ..Default::default() }).await?;
    check(only_b == vec![b.id.clone()], || format!("filter group+which=b: got {only_b:?}, expected [{}]", b.id))?;
    let ready = |s: cri::PodSandboxState| cri::PodSandboxFilter {
        state: Some(cri::PodSandboxStateValue { state: s as i32 }),
        label_selector: sel(&[("group", &group)]),
        ..Default::default()
    };
    let r = list(ctx, ready(cri::PodSandboxState::SandboxReady)).await?;
    check(r == vec![a.id.clone()], || format!("filter state=READY: got {r:?}, expected [{}]", a.id))?;
    let n = list(ctx, ready(cri::PodSandboxState::SandboxNotready)).await?;
    check(n == vec![b.id.clone()], || format!("filter state=NOTREADY: got {n:?}, expected [{}]", b.id))?;
    ctx.remove_pod(&a.id).await?;
    ctx.remove_pod(&b.id).await
}

/// RunPodSandbox twice with the same metadata fails (berth: AlreadyExists).
pub async fn same_metadata_twice(ctx: &Ctx) -> Result<()> {
    let cfg = ctx.pod_config("twice", &[]);
    let pod = ctx.run_pod_with(cfg.clone()).await?;
    let second = ctx.rt().run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(cfg), runtime_handler: String::new() }).await;
    let res = match second {
        Ok(r) => Err(anyhow::anyhow!("second RunPodSandbox with the same metadata succeeded with id {}", r.into_inner().pod_sandbox_id)),
        Err(s) => {
            eprintln!("note pod_same_metadata_twice: code {:?}: {}", s.code(), s.message());
            if ctx.kind == TargetKind::Berth {
                check(s.code() == tonic::Code::AlreadyExists, || format!("code {:?} ({}), expected AlreadyExists", s.code(), s.message()))
            } else {
                Ok(())
            }
        }
    };
    ctx.remove_pod(&pod.id).await?;
    res
}

/// StopPodSandbox and RemovePodSandbox of an id that does not exist.
pub async fn remove_missing(ctx: &Ctx) -> Result<()> {
    let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    ctx.rt()
        .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id.into() })
        .await
        .with_context(|| format!("RemovePodSandbox of missing pod {id} must be Ok"))?;
    match ctx.rt().stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id.into() }).await {
        Ok(_) => eprintln!("note pod_remove_missing: StopPodSandbox of a missing pod: Ok"),
        Err(s) => eprintln!("note pod_remove_missing: StopPodSandbox of a missing pod: code {:?}: {}", s.code(), s.message()),
    }
    Ok(())
}

/// StopPodSandbox stops running containers; RemovePodSandbox removes them.
pub async fn stop_remove_with_running(ctx: &Ctx) -> Result<()> {
    let pod = ctx.run_pod("busy").await?;
    let c1 = ctx.start_container(&pod, "sleeper", &ctx.images.busybox, &["sleep", "1000"]).await?;
    ctx.wait_container_state(&c1, cri::ContainerState::ContainerRunning, Duration::from_secs(30)).await?;
    ctx.rt().stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.id.clone() }).await.context("StopPodSandbox")?;
    let st = ctx.container_status(&c1).await?;
    check(st.state == cri::ContainerState::ContainerExited as i32, || {
        format!("after StopPodSandbox container {c1} is {}", crate::ctx::state_name(st.state))
    })?;
    let ps = pod_status(ctx, &pod.id).await?;
    check(ps.state == cri::PodSandboxState::SandboxNotready as i32, || {
        format!("after StopPodSandbox pod state {}, expected NOTREADY", ps.state)
    })?;
    ctx.rt().remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.id.clone() }).await.context("RemovePodSandbox")?;
    check(ctx.container_status(&c1).await.is_err(), || format!("ContainerStatus {c1} still answers after RemovePodSandbox"))?;
    let left = ctx
        .rt()
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter { pod_sandbox_id: pod.id.clone(), ..Default::default() }),
        })
        .await?
        .into_inner()
        .containers;
    check(left.is_empty(), || format!("ListContainers still lists {} containers of removed pod", left.len()))
}
