//! Container lifecycle cases: exit codes, reasons, timestamps, logs, users, layers, networking,
//! ListContainers filters and create errors.

use super::util::{check, read_log, run_to_exit};
use crate::ctx::{skip, state_name, Ctx};
use anyhow::{Context, Result};
use berth::cri::v1 as cri;
use std::collections::HashMap;
use std::time::Duration;

/// Exit 7 after writing to both streams: EXITED, exit_code 7, reason "Error", ordered
/// timestamps, CRI log lines in the pod's log_directory.
///
/// The process lives 1 s: containerd 1.6 stamps started_at when StartContainer returns, so a
/// process exiting at once may get finished_at < started_at there; the suite checks the order a
/// user can rely on, not that race.
pub async fn exit_code_and_logs(ctx: &Ctx) -> Result<()> {
    let cmd = ["sh", "-c", "echo to-stdout; echo to-stderr >&2; sleep 1; exit 7"];
    let (pod, st, lines) = run_to_exit(ctx, "exit7", &ctx.images.busybox, &cmd, 2).await?;
    check(st.exit_code == 7, || format!("exit_code {}, expected 7", st.exit_code))?;
    check(st.reason == "Error", || format!("reason {:?}, expected \"Error\"", st.reason))?;
    check(st.created_at > 0 && st.started_at > st.created_at && st.finished_at > st.started_at, || {
        format!(
            "timestamps created {} started {} finished {}: expected created < started < finished",
            st.created_at, st.started_at, st.finished_at
        )
    })?;
    let path = super::util::log_file(&pod, &st);
    check(path.starts_with(&pod.config.log_directory), || {
        format!("log {} is not under log_directory {}", path.display(), pod.config.log_directory)
    })?;
    let has = |stream: &str, text: &str| lines.iter().any(|l| l.stream == stream && l.tag == "F" && l.text == text);
    check(has("stdout", "to-stdout"), || format!("log lacks `stdout F to-stdout`: {lines:?}"))?;
    check(has("stderr", "to-stderr"), || format!("log lacks `stderr F to-stderr`: {lines:?}"))?;
    ctx.remove_pod(&pod.id).await
}

/// Output that ends without a newline when the process exits is the complete (`F`) last line,
/// on both streams, and nothing of it is lost (issue #11: a trailing `P` is a line never ended).
pub async fn last_line_without_newline(ctx: &Ctx) -> Result<()> {
    let cmd = ["sh", "-c", "echo first; printf 'err-tail' >&2; printf 'last words'"];
    let (pod, _st, lines) = run_to_exit(ctx, "tail", &ctx.images.busybox, &cmd, 3).await?;
    ctx.remove_pod(&pod.id).await?;
    let got: Vec<(&str, &str, &str)> = lines.iter().map(|l| (l.stream.as_str(), l.tag.as_str(), l.text.as_str())).collect();
    for want in [("stdout", "F", "first"), ("stdout", "F", "last words"), ("stderr", "F", "err-tail")] {
        check(got.contains(&want), || format!("log records {got:?} lack {want:?}"))?;
    }
    check(!got.iter().any(|(_, tag, _)| *tag == "P"), || format!("a P record in {got:?}: every line ended with the process"))
}

/// [`last_line_without_newline`], but a runtime other than berth that writes the tail as a
/// trailing `P` is a known bug of it (containerd/containerd#4813, conmon#252, fixed in conmon
/// by a terminating `F`), reported as a note and skipped rather than failed.
pub async fn last_line_without_newline_case(ctx: &Ctx) -> Result<()> {
    match last_line_without_newline(ctx).await {
        Err(e) if ctx.kind != crate::daemon::TargetKind::Berth && e.to_string().contains("(\"stdout\", \"P\", \"last words\")") => {
            eprintln!("note log_last_line_without_newline_is_full: {e:#}");
            skip("this runtime leaves the last line as P (containerd/containerd#4813)")
        }
        r => r,
    }
}

/// Exit 0: reason "Completed".
pub async fn exit_zero_completed(ctx: &Ctx) -> Result<()> {
    let (pod, st, _) = run_to_exit(ctx, "exit0", &ctx.images.busybox, &["sh", "-c", "echo done"], 1).await?;
    check(st.exit_code == 0, || format!("exit_code {}, expected 0", st.exit_code))?;
    check(st.reason == "Completed", || format!("reason {:?}, expected \"Completed\"", st.reason))?;
    ctx.remove_pod(&pod.id).await
}

/// The `user` image (config User "app") runs as uid 1234.
pub async fn user_image_uid(ctx: &Ctx) -> Result<()> {
    let (pod, st, lines) = run_to_exit(ctx, "user", &ctx.images.user, &["id", "-u"], 1).await?;
    check(st.exit_code == 0, || format!("`id -u` exited {}", st.exit_code))?;
    let out: Vec<&str> = lines.iter().filter(|l| l.stream == "stdout").map(|l| l.text.as_str()).collect();
    check(out == ["1234"], || format!("`id -u` printed {out:?}, expected [\"1234\"]"))?;
    ctx.remove_pod(&pod.id).await
}

/// The `layers` image: whiteout hides /data/a, the opaque dir hides /opq/x.
pub async fn layers_whiteouts(ctx: &Ctx) -> Result<()> {
    let script = "for p in /data/a /data/b /opq/x /opq/y /layer3.txt; do if [ -e $p ]; then echo present $p; else echo absent $p; fi; done";
    let (pod, _st, lines) = run_to_exit(ctx, "layers", &ctx.images.layers, &["sh", "-c", script], 5).await?;
    let got: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    let want = ["absent /data/a", "present /data/b", "absent /opq/x", "present /opq/y", "present /layer3.txt"];
    check(got == want, || format!("rootfs view {got:?}, expected {want:?}"))?;
    ctx.remove_pod(&pod.id).await
}

/// Two containers of one pod reach each other on 127.0.0.1 (busybox httpd + wget).
pub async fn localhost_between_containers(ctx: &Ctx) -> Result<()> {
    let pod = ctx.run_pod("localhost").await?;
    let server = ctx
        .start_container(
            &pod,
            "server",
            &ctx.images.busybox,
            &["sh", "-c", "mkdir -p /www && echo hello-from-server > /www/index.html && exec httpd -f -p 8080 -h /www"],
        )
        .await?;
    ctx.wait_container_state(&server, cri::ContainerState::ContainerRunning, Duration::from_secs(30)).await?;
    let client_cmd = "for i in 1 2 3 4 5 6 7 8 9 10; do wget -q -O - http://127.0.0.1:8080/ && exit 0; sleep 0.5; done; exit 1";
    let client = ctx.start_container(&pod, "client", &ctx.images.busybox, &["sh", "-c", client_cmd]).await?;
    let st = ctx.wait_container_state(&client, cri::ContainerState::ContainerExited, Duration::from_secs(60)).await?;
    let lines = read_log(&pod, &st, 0).await?;
    check(st.exit_code == 0, || format!("wget of 127.0.0.1:8080 exited {}; log {lines:?}", st.exit_code))?;
    check(lines.iter().any(|l| l.text == "hello-from-server"), || format!("client log {lines:?} lacks hello-from-server"))?;
    ctx.remove_pod(&pod.id).await
}

async fn list(ctx: &Ctx, filter: cri::ContainerFilter) -> Result<Vec<String>> {
    let f = format!("{filter:?}");
    let mut v: Vec<String> = ctx
        .rt()
        .list_containers(cri::ListContainersRequest { filter: Some(filter) })
        .await
        .with_context(|| format!("ListContainers {f}"))?
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.id)
        .collect();
    v.sort();
    Ok(v)
}

/// ListContainers filters by id, state, pod id and labels.
pub async fn list_filters(ctx: &Ctx) -> Result<()> {
    let pod = ctx.run_pod("cfilter").await?;
    let mut ca = ctx.container_config("a", &ctx.images.busybox, &["sleep", "1000"]);
    ca.labels.insert("role".into(), "a".into());
    let a = ctx.create_with(&pod, ca).await?;
    ctx.rt().start_container(cri::StartContainerRequest { container_id: a.clone() }).await.context("StartContainer a")?;
    let mut cb = ctx.container_config("b", &ctx.images.busybox, &["true"]);
    cb.labels.insert("role".into(), "b".into());
    let b = ctx.create_with(&pod, cb).await?;
    ctx.wait_container_state(&a, cri::ContainerState::ContainerRunning, Duration::from_secs(30)).await?;
    let pid = pod.id.clone();
    let by_id = list(ctx, cri::ContainerFilter { id: a.clone(), ..Default::default() }).await?;
    check(by_id == vec![a.clone()], || format!("filter id={a}: got {by_id:?}"))?;
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    let by_pod = list(ctx, cri::ContainerFilter { pod_sandbox_id: pid.clone(), ..Default::default() }).await?;
    check(by_pod == both, || format!("filter pod={pid}: got {by_pod:?}, expected {both:?}"))?;
    let state = |s: cri::ContainerState| cri::ContainerFilter {
        pod_sandbox_id: pid.clone(),
        state: Some(cri::ContainerStateValue { state: s as i32 }),
        ..Default::default()
    };
    let running = list(ctx, state(cri::ContainerState::ContainerRunning)).await?;
    check(running == vec![a.clone()], || format!("filter state=RUNNING: got {running:?}, expected [{a}]"))?;
    let created = list(ctx, state(cri::ContainerState::ContainerCreated)).await?;
    check(created == vec![b.clone()], || format!("filter state=CREATED: got {created:?}, expected [{b}]"))?;
    let mut sel = HashMap::new();
    sel.insert("role".to_string(), "b".to_string());
    let by_label = list(ctx, cri::ContainerFilter { pod_sandbox_id: pid.clone(), label_selector: sel, ..Default::default() }).await?;
    check(by_label == vec![b.clone()], || format!("filter role=b: got {by_label:?}, expected [{b}]"))?;
    ctx.remove_pod(&pod.id).await
}

/// CreateContainer in a pod that does not exist fails.
pub async fn create_in_missing_pod(ctx: &Ctx) -> Result<()> {
    ctx.ensure_image(&ctx.images.busybox).await?;
    let pod_cfg = ctx.pod_config("ghost", &[]);
    let r = ctx
        .rt()
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
            config: Some(ctx.container_config("orphan", &ctx.images.busybox, &["true"])),
            sandbox_config: Some(pod_cfg),
        })
        .await;
    match r {
        Ok(r) => anyhow::bail!("CreateContainer in a missing pod succeeded with id {}", r.into_inner().container_id),
        Err(s) => {
            eprintln!("note container_create_in_missing_pod: code {:?}: {}", s.code(), s.message());
            Ok(())
        }
    }
}

/// The same container name (and attempt) twice in one pod: the second CreateContainer fails.
pub async fn duplicate_name(ctx: &Ctx) -> Result<()> {
    let pod = ctx.run_pod("dup").await?;
    let first = ctx.create_with(&pod, ctx.container_config("same", &ctx.images.busybox, &["true"])).await?;
    let r = ctx.create_request(&pod, ctx.container_config("same", &ctx.images.busybox, &["true"])).await;
    let res = match r {
        Ok(r) => Err(anyhow::anyhow!("second CreateContainer \"same\" succeeded with id {} (first {first})", r.into_inner().container_id)),
        Err(s) => {
            eprintln!("note container_duplicate_name: code {:?}: {}", s.code(), s.message());
            Ok(())
        }
    };
    let st = ctx.container_status(&first).await?;
    check(st.state == cri::ContainerState::ContainerCreated as i32, || format!("first container is {}", state_name(st.state)))?;
    ctx.remove_pod(&pod.id).await?;
    res
}
