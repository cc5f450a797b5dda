//! OCI hooks from the `hooks.d` directory of berth's config (`runtime.hooks_dir`, oci-hooks(5)):
//! a matching hook runs at its stages with the container's state on stdin; one whose `when`
//! does not match does not run; a failing one fails CreateContainer with its output in the error
//! and leaves nothing behind (berth only: containerd reads no hook files).
//!
//! The suite's config names `<tmp>/hooks.d`. Each hook here matches only an annotation unique
//! to its case, so containers of other cases never meet it; the files are removed at the end.

use super::util::check;
use crate::ctx::{skip, Ctx, Pod};
use crate::daemon::TargetKind;
use anyhow::{Context, Result};
use berth::cri::v1 as cri;
use std::path::{Path, PathBuf};
use std::time::Duration;

const ANNOTATION: &str = "conformance.berth.dev/hooks";

/// The directory the suite's berth config names in `runtime.hooks_dir`.
pub fn hooks_dir(tmp: &Path) -> PathBuf {
    tmp.join("hooks.d")
}

/// Writes an executable `sh` script; returns its path.
fn script(path: &Path, body: &str) -> Result<PathBuf> {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n"))?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(path.to_path_buf())
}

/// Writes hook file `<hooks.d>/<name>.json` running `path ARG` at `stages` when the container's
/// annotation [`ANNOTATION`] is exactly `value`.
fn hook_file(ctx: &Ctx, name: &str, path: &Path, arg: &str, value: &str, stages: &[&str]) -> Result<PathBuf> {
    let dir = hooks_dir(&ctx.tmp);
    std::fs::create_dir_all(&dir)?;
    let body = serde_json::json!({
        "version": "1.0.0",
        "hook": {"path": path, "args": [path, arg], "timeout": 10},
        "when": {"annotations": {format!("^{}$", regex_escape(ANNOTATION)): format!("^{value}$")}},
        "stages": stages,
    });
    let file = dir.join(format!("{name}.json"));
    std::fs::write(&file, serde_json::to_vec_pretty(&body)?)?;
    Ok(file)
}

fn regex_escape(s: &str) -> String {
    s.chars().flat_map(|c| if c.is_ascii_alphanumeric() || c == '/' || c == '-' { vec![c] } else { vec!['\\', c] }).collect()
}

fn annotated(ctx: &Ctx, name: &str, value: &str) -> cri::ContainerConfig {
    let mut c = ctx.container_config(name, &ctx.images.busybox, &["sleep", "1000"]);
    c.annotations.insert(ANNOTATION.into(), value.into());
    c
}

async fn containers_of(ctx: &Ctx, pod: &Pod) -> Result<Vec<cri::Container>> {
    let filter = cri::ContainerFilter { pod_sandbox_id: pod.id.clone(), ..Default::default() };
    Ok(ctx.rt().list_containers(cri::ListContainersRequest { filter: Some(filter) }).await?.into_inner().containers)
}

/// A createRuntime hook and a poststop hook whose `when` matches the container run at create and
/// at removal, each reading the container's OCI state (its ID) on stdin; a third hook whose
/// `when` names another annotation value never runs.
pub async fn hooks_run_at_their_stages(ctx: &Ctx) -> Result<()> {
    if ctx.kind != TargetKind::Berth {
        return skip("hooks.d files are read by berth (and CRI-O), not by containerd");
    }
    let u = ctx.unique();
    let out = ctx.tmp.join(format!("hook-out-{u}"));
    std::fs::create_dir_all(&out)?;
    let sh = script(&ctx.tmp.join(format!("hook-{u}.sh")), &format!("cat > {}/\"$1\".json", out.display()))?;
    let files = [
        hook_file(ctx, &format!("50-create-{u}"), &sh, "createRuntime", &u, &["createRuntime"])?,
        hook_file(ctx, &format!("50-stop-{u}"), &sh, "poststop", &u, &["poststop"])?,
        hook_file(ctx, &format!("50-other-{u}"), &sh, "other", &format!("{u}-other"), &["createRuntime", "poststop"])?,
    ];
    let pod = ctx.run_pod("hooks").await?;
    let res = async {
        let id = ctx.create_with(&pod, annotated(ctx, "hooked", &u)).await?;
        let state: serde_json::Value = serde_json::from_slice(
            &std::fs::read(out.join("createRuntime.json")).context("the createRuntime hook did not run at CreateContainer")?,
        )
        .context("the createRuntime hook's stdin was not the OCI state JSON")?;
        check(state["id"] == id.as_str(), || format!("createRuntime hook saw state {state}, expected id {id}"))?;
        check(!out.join("poststop.json").exists(), || "poststop ran before the container stopped".into())?;
        ctx.rt().start_container(cri::StartContainerRequest { container_id: id.clone() }).await?;
        ctx.rt().stop_container(cri::StopContainerRequest { container_id: id.clone(), timeout: 0 }).await?;
        ctx.rt().remove_container(cri::RemoveContainerRequest { container_id: id.clone() }).await?;
        let mut ran = false;
        for _ in 0..50 {
            if out.join("poststop.json").exists() {
                ran = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        check(ran, || "the poststop hook did not run by RemoveContainer".into())?;
        check(!out.join("other.json").exists(), || "a hook whose `when` did not match ran".into())?;
        Ok(())
    }
    .await;
    for f in &files {
        let _ = std::fs::remove_file(f);
    }
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_file(&sh);
    ctx.remove_pod(&pod.id).await?;
    res
}

/// A hook file berth cannot use (an unknown stage) refuses every CreateContainer with
/// FailedPrecondition naming the file (the cases run one at a time, so no other case meets it).
/// A createRuntime hook that fails (exit 3, a line on stderr): CreateContainer fails with the
/// hook's output in the error, no container of the pod is listed, and once the hook file is
/// gone the same container (same name) is created.
pub async fn failing_hook_fails_create(ctx: &Ctx) -> Result<()> {
    if ctx.kind != TargetKind::Berth {
        return skip("hooks.d files are read by berth (and CRI-O), not by containerd");
    }
    let u = ctx.unique();
    let sh = script(&ctx.tmp.join(format!("hook-fail-{u}.sh")), &format!("echo 'hook says no: {u}' >&2\nexit 3"))?;
    let file = hook_file(ctx, &format!("50-fail-{u}"), &sh, "x", &u, &["createRuntime"])?;
    let pod = ctx.run_pod("hookfail").await?;
    let bad = hooks_dir(&ctx.tmp).join(format!("50-bad-{u}.json"));
    let res = async {
        ctx.ensure_image(&ctx.images.busybox).await?;
        let body = serde_json::json!({"version": "1.0.0", "hook": {"path": sh}, "when": {"always": true}, "stages": ["prestop"]});
        std::fs::write(&bad, serde_json::to_vec(&body)?)?;
        let refused = ctx.create_request(&pod, annotated(ctx, "badfile", "none")).await;
        std::fs::remove_file(&bad)?;
        match refused {
            Ok(r) => anyhow::bail!("CreateContainer succeeded ({}) with an unusable hook file in hooks_dir", r.into_inner().container_id),
            Err(s) => check(
                s.code() == tonic::Code::FailedPrecondition
                    && s.message().contains(&bad.display().to_string())
                    && s.message().contains("prestop"),
                || format!("an unusable hook file: expected FailedPrecondition naming {} and its stage, got {s:?}", bad.display()),
            )?,
        }
        let err = match ctx.create_request(&pod, annotated(ctx, "refused", &u)).await {
            Ok(r) => anyhow::bail!("CreateContainer succeeded ({}) although its createRuntime hook failed", r.into_inner().container_id),
            Err(s) => s,
        };
        eprintln!("note failing_hook_fails_create: code {:?}: {}", err.code(), err.message());
        check(err.message().contains(&format!("hook says no: {u}")), || format!("the error does not carry the hook's output: {err:?}"))?;
        let left = containers_of(ctx, &pod).await?;
        check(left.is_empty(), || format!("a container of the failed create is listed: {left:?}"))?;
        std::fs::remove_file(&file)?;
        ctx.create_with(&pod, annotated(ctx, "refused", &u)).await.context("the same container once the hook file is gone")?;
        Ok(())
    }
    .await;
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&bad);
    let _ = std::fs::remove_file(&sh);
    ctx.remove_pod(&pod.id).await?;
    res
}
