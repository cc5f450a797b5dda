//! Runtime handlers (issue #5: "handlers that cannot run here are reported, not hidden"). The
//! harness configures berth with `runc` (default), `broken` (a runtime whose every command
//! fails) and `crun` when installed. A handler berth can use is listed in
//! `Status.runtime_handlers` with its features and runs a pod; one that cannot is absent from
//! that list, shown in Status verbose `info["runtimeHandlers"]` with the runtime's own message,
//! and a RunPodSandbox naming it is FailedPrecondition with that message, leaving nothing.

use super::util::check;
use super::Case;
use crate::ctx::{skip, Ctx};
use crate::daemon::{TargetKind, BROKEN_RUNTIME_MESSAGE, CRUN};
use anyhow::{bail, Context, Result};
use berth::cri::v1 as cri;
use std::time::Duration;

/// The cases of this module, in run order.
pub fn cases() -> Vec<Case> {
    vec![case!("runtime_handlers_reported", handlers_reported)]
}

/// Status(verbose) once every handler's self-test result is in (it runs in the background after
/// the daemon starts; up to 30 s), with its parsed `info["runtimeHandlers"]`.
async fn status(ctx: &Ctx) -> Result<(cri::StatusResponse, serde_json::Value)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let st = ctx.rt().status(cri::StatusRequest { verbose: true }).await.context("Status")?.into_inner();
        let info = st.info.get("runtimeHandlers").context("Status(verbose).info has no \"runtimeHandlers\"")?;
        let v: serde_json::Value = serde_json::from_str(info).with_context(|| format!("info[\"runtimeHandlers\"] is not JSON: {info}"))?;
        let pending = v.as_object().is_some_and(|m| m.values().any(|h| h["selfTest"] == "not tested"));
        if !pending || std::time::Instant::now() > deadline {
            return Ok((st, v));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs a pod with `handler` and a container printing `ok`; removes it.
async fn runs_a_pod(ctx: &Ctx, handler: &str) -> Result<()> {
    let pc = ctx.pod_config(&format!("handler-{handler}"), &[]);
    std::fs::create_dir_all(&pc.log_directory).ok();
    let id = ctx
        .rt()
        .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(pc.clone()), runtime_handler: handler.into() })
        .await
        .with_context(|| format!("RunPodSandbox with handler {handler}, which Status lists"))?
        .into_inner()
        .pod_sandbox_id;
    let pod = crate::ctx::Pod { id: id.clone(), config: pc };
    let r = async {
        let c = ctx.start_container(&pod, "echo", &ctx.images.busybox, &["echo", "ok"]).await?;
        let st = ctx.wait_container_state(&c, cri::ContainerState::ContainerExited, Duration::from_secs(60)).await?;
        check(st.exit_code == 0, || format!("a container under handler {handler} exited {}", st.exit_code))
    }
    .await;
    let removed = ctx.remove_pod(&id).await;
    r?;
    removed
}

/// Refused with FailedPrecondition carrying `reason`, and no pod left.
async fn refused(ctx: &Ctx, handler: &str, reason: &str) -> Result<()> {
    let before = ctx.rt().list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await?.into_inner().items.len();
    let pc = ctx.pod_config(&format!("handler-{handler}"), &[]);
    std::fs::create_dir_all(&pc.log_directory).ok();
    match ctx.rt().run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(pc), runtime_handler: handler.into() }).await {
        Ok(r) => {
            let id = r.into_inner().pod_sandbox_id;
            let _ = ctx.remove_pod(&id).await;
            bail!("RunPodSandbox with the unusable handler {handler} succeeded");
        }
        Err(s) => check(s.code() == tonic::Code::FailedPrecondition && s.message().contains(reason), || {
            format!("handler {handler}: got {:?} {:?}, expected FailedPrecondition with {reason:?}", s.code(), s.message())
        })?,
    }
    let after = ctx.rt().list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await?.into_inner().items.len();
    check(after == before, || format!("{before} pods before the refused RunPodSandbox, {after} after"))
}

/// runc listed with rro and user namespaces and runs pods; `broken` reported with its message
/// and refused; crun (if installed) either listed and running a pod, or reported and refused.
pub async fn handlers_reported(ctx: &Ctx) -> Result<()> {
    if ctx.kind != TargetKind::Berth {
        return skip("the handler set is berth's test configuration");
    }
    let (st, info) = status(ctx).await?;
    let listed: Vec<&str> = st.runtime_handlers.iter().map(|h| h.name.as_str()).collect();
    let runc = st.runtime_handlers.iter().find(|h| h.name == "runc").context("Status.runtime_handlers has no runc")?;
    let f = runc.features.unwrap_or_default();
    // User namespaces, unless berth's self-test found this kernel cannot give pods one.
    let userns_limit = if f.user_namespaces {
        None
    } else {
        Some(super::userns::berth_userns_verdict(ctx).await?).filter(|w| w.starts_with("this kernel"))
    };
    if let Some(why) = &userns_limit {
        eprintln!("note runtime_handlers_reported: no user namespaces here: {why}");
    }
    check(f.recursive_read_only_mounts && (f.user_namespaces || userns_limit.is_some()), || {
        format!("runc's features {f:?}: expected rro and user namespaces on this host")
    })?;
    let default = st
        .runtime_handlers
        .iter()
        .find(|h| h.name.is_empty())
        .context("Status.runtime_handlers has no \"\" (the CRI's name for the default handler)")?;
    check(default.features == runc.features, || {
        format!("the default handler \"\" has features {:?}, runc (the default) {:?}", default.features, runc.features)
    })?;
    check(!listed.contains(&"broken"), || format!("the broken handler is listed as usable: {listed:?}"))?;
    let broken = &info["broken"];
    check(broken["available"] == false && broken["reason"].as_str().is_some_and(|r| r.contains(BROKEN_RUNTIME_MESSAGE)), || {
        format!("info[\"runtimeHandlers\"][\"broken\"] = {broken}, expected available=false with the runtime's message")
    })?;
    refused(ctx, "broken", BROKEN_RUNTIME_MESSAGE).await?;
    runs_a_pod(ctx, "runc").await?;
    if std::path::Path::new(CRUN).exists() {
        let crun = &info["crun"];
        if listed.contains(&"crun") {
            eprintln!("note runtime_handlers_reported: crun is usable here; running a pod with it");
            runs_a_pod(ctx, "crun").await?;
        } else {
            let reason = crun["reason"].as_str().unwrap_or_default().to_string();
            eprintln!("note runtime_handlers_reported: crun reported unusable: {reason}");
            check(crun["available"] == false && !reason.is_empty(), || format!("crun is neither listed nor reported: {crun}"))?;
            refused(ctx, "crun", "cannot run on this host").await?;
        }
    }
    Ok(())
}
