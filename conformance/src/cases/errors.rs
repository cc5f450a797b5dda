//! Requests a runtime must refuse: malformed input and operations on exited containers. berth
//! must answer with the gRPC code the CRI situation calls for; other runtimes only must fail
//! (their codes are recorded as notes).

use super::util::check;
use crate::ctx::{Ctx, Pod};
use crate::daemon::TargetKind;
use anyhow::{bail, Context, Result};
use berth::cri::v1 as cri;
use std::collections::BTreeSet;
use std::time::Duration;

/// Requires `r` to be an error; on berth also `code`. Notes the outcome as `case: what: ...`.
fn expect_error<T>(ctx: &Ctx, case: &str, what: &str, r: Result<tonic::Response<T>, tonic::Status>, code: tonic::Code) -> Result<()> {
    match r {
        Ok(_) => bail!("{what} succeeded, expected an error"),
        Err(s) => {
            eprintln!("note {case}: {what}: code {:?}: {}", s.code(), s.message());
            if ctx.kind == TargetKind::Berth {
                check(s.code() == code, || format!("{what}: code {:?} ({}), expected {code:?}", s.code(), s.message()))?;
            }
            Ok(())
        }
    }
}

async fn all_pods(ctx: &Ctx) -> Result<BTreeSet<String>> {
    let r = ctx.rt().list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await.context("ListPodSandbox")?;
    Ok(r.into_inner().items.into_iter().map(|p| p.id).collect())
}

async fn all_containers(ctx: &Ctx) -> Result<BTreeSet<String>> {
    let r = ctx.rt().list_containers(cri::ListContainersRequest { filter: None }).await.context("ListContainers")?;
    Ok(r.into_inner().containers.into_iter().map(|c| c.id).collect())
}

/// Malformed requests fail (berth: InvalidArgument) and leave no pod or container behind:
/// RunPodSandbox without metadata, CreateContainer with an empty image, ExecSync with an empty
/// cmd, RunPodSandbox with an unknown runtime_handler; CreateContainer with an image reference
/// that does not parse (InvalidArgument) and with one never pulled (NotFound), both naming it.
pub async fn bad_input_codes(ctx: &Ctx) -> Result<()> {
    const CASE: &str = "bad_input_codes";
    ctx.ensure_image(&ctx.images.busybox).await?;
    let pods_before = all_pods(ctx).await?;
    let mut cfg = ctx.pod_config("nometa", &[]);
    cfg.metadata = None;
    std::fs::create_dir_all(&cfg.log_directory).ok();
    let r = ctx.rt().run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(cfg), runtime_handler: String::new() }).await;
    expect_error(ctx, CASE, "RunPodSandbox without metadata", r, tonic::Code::InvalidArgument)?;
    let cfg = ctx.pod_config("nohandler", &[]);
    std::fs::create_dir_all(&cfg.log_directory).ok();
    let r = ctx.rt().run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(cfg), runtime_handler: "no-such-handler".into() }).await;
    expect_error(ctx, CASE, "RunPodSandbox with runtime_handler \"no-such-handler\"", r, tonic::Code::InvalidArgument)?;
    let pods_after = all_pods(ctx).await?;
    let new: Vec<&String> = pods_after.difference(&pods_before).collect();
    check(new.is_empty(), || format!("failed RunPodSandbox calls left pods behind: {new:?}"))?;

    let pod = ctx.run_pod("badinput").await?;
    let res = bad_container_input(ctx, &pod).await;
    ctx.remove_pod(&pod.id).await?;
    res
}

async fn bad_container_input(ctx: &Ctx, pod: &Pod) -> Result<()> {
    const CASE: &str = "bad_input_codes";
    let id = ctx.start_container(pod, "sleeper", &ctx.images.busybox, &["sleep", "1000"]).await?;
    ctx.wait_container_state(&id, cri::ContainerState::ContainerRunning, Duration::from_secs(30)).await?;
    let before = all_containers(ctx).await?;
    let mut cfg = ctx.container_config("noimage", "", &["true"]);
    cfg.image = Some(cri::ImageSpec::default());
    let r = ctx.create_request(pod, cfg).await;
    expect_error(ctx, CASE, "CreateContainer with an empty image", r, tonic::Code::InvalidArgument)?;
    // An image reference that does not parse is the request's fault, and one never pulled is
    // NotFound (kubelet pulls first); both name the image. (They were Internal before the image
    // errors got one mapping to codes.)
    for (image, code) in [("Bad//Ref::x", tonic::Code::InvalidArgument), ("127.0.0.1:1/berth/never-pulled:1", tonic::Code::NotFound)] {
        let r = ctx.create_request(pod, ctx.container_config("badimage", image, &["true"])).await;
        let named = r.as_ref().err().is_none_or(|s| s.message().contains(image));
        expect_error(ctx, CASE, &format!("CreateContainer with image {image:?}"), r, code)?;
        if ctx.kind == TargetKind::Berth {
            check(named, || format!("the error for image {image:?} does not name it"))?;
        }
    }
    let r = ctx.rt().exec_sync(cri::ExecSyncRequest { container_id: id.clone(), cmd: Vec::new(), timeout: 10 }).await;
    expect_error(ctx, CASE, "ExecSync with an empty cmd", r, tonic::Code::InvalidArgument)?;
    let after = all_containers(ctx).await?;
    let new: Vec<&String> = after.difference(&before).collect();
    check(new.is_empty(), || format!("the failed CreateContainer left containers behind: {new:?}"))?;
    // The running container is untouched by the failed exec.
    let r = ctx.exec(&id, &["true"], 10).await?;
    check(r.exit_code == 0, || format!("ExecSync `true` after the failed calls exited {}", r.exit_code))
}

/// A pod with one container that ran `true` and is EXITED.
async fn exited(ctx: &Ctx, name: &str) -> Result<(Pod, String)> {
    let pod = ctx.run_pod(name).await?;
    let id = ctx.start_container(&pod, name, &ctx.images.busybox, &["true"]).await?;
    ctx.wait_container_state(&id, cri::ContainerState::ContainerExited, Duration::from_secs(60)).await?;
    Ok((pod, id))
}

/// ExecSync in an EXITED container fails (berth: FailedPrecondition).
pub async fn exec_in_exited_container(ctx: &Ctx) -> Result<()> {
    let (pod, id) = exited(ctx, "execexited").await?;
    let r = ctx.rt().exec_sync(cri::ExecSyncRequest { container_id: id, cmd: vec!["true".into()], timeout: 10 }).await;
    let res = match r {
        Ok(x) => Err(anyhow::anyhow!("ExecSync in an exited container succeeded: exit_code {}", x.into_inner().exit_code)),
        Err(s) => {
            eprintln!("note exec_in_exited_container: code {:?}: {}", s.code(), s.message());
            if ctx.kind == TargetKind::Berth {
                check(s.code() == tonic::Code::FailedPrecondition, || {
                    format!("code {:?} ({}), expected FailedPrecondition", s.code(), s.message())
                })
            } else {
                Ok(())
            }
        }
    };
    ctx.remove_pod(&pod.id).await?;
    res
}

/// StartContainer on an EXITED container fails, and the container stays EXITED.
pub async fn start_exited_container(ctx: &Ctx) -> Result<()> {
    let (pod, id) = exited(ctx, "startexited").await?;
    let r = ctx.rt().start_container(cri::StartContainerRequest { container_id: id.clone() }).await;
    let res = match r {
        Ok(_) => Err(anyhow::anyhow!("StartContainer on an exited container succeeded")),
        Err(s) => {
            eprintln!("note start_exited_container: code {:?}: {}", s.code(), s.message());
            let st = ctx.container_status(&id).await?;
            check(st.state == cri::ContainerState::ContainerExited as i32, || {
                format!("after the refused start the container is {}", crate::ctx::state_name(st.state))
            })
        }
    };
    ctx.remove_pod(&pod.id).await?;
    res
}

/// Paths that would put logs outside the pod's log directory are refused with InvalidArgument:
/// a relative `log_directory` and a `log_path` that climbs out with `..`. berth only: the CRI
/// leaves path checks to the runtime, so other runtimes are not held to berth's answer.
pub async fn log_paths_refused(ctx: &Ctx) -> Result<()> {
    const CASE: &str = "log_paths_refused";
    if ctx.kind != TargetKind::Berth {
        return crate::ctx::skip("path checks are berth's choice, not a CRI rule");
    }
    let mut cfg = ctx.pod_config("rellog", &[]);
    cfg.log_directory = "relative/logs".into();
    let r = ctx.rt().run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(cfg), runtime_handler: String::new() }).await;
    expect_error(ctx, CASE, "RunPodSandbox with log_directory \"relative/logs\"", r, tonic::Code::InvalidArgument)?;
    ctx.ensure_image(&ctx.images.busybox).await?;
    let pod = ctx.run_pod("climblog").await?;
    let mut c = ctx.container_config("climb", &ctx.images.busybox, &["true"]);
    c.log_path = "../escape.log".into();
    let r = ctx.create_request(&pod, c).await;
    let res = expect_error(ctx, CASE, "CreateContainer with log_path \"../escape.log\"", r, tonic::Code::InvalidArgument);
    ctx.remove_pod(&pod.id).await?;
    res
}

/// A call whose caller's deadline passes before the runtime finishes is answered with an error,
/// on berth DEADLINE_EXCEEDED (gRPC "PROTOCOL-HTTP2.md": `grpc-timeout`; the status for an
/// expired deadline): an ExecSync of `sleep 3` (no exec timeout of its own) sent with
/// `grpc-timeout: 300m` by a client that does not time the call out itself (tonic's and
/// grpc-go's do, and then report their own DeadlineExceeded, which hides the server's answer:
/// tonic's server said CANCELLED). containerd 1.6 answers UNKNOWN ("context deadline exceeded:
/// unknown", its error wrapping loses the code); that is noted, not required.
pub async fn deadline_passed_is_deadline_exceeded(ctx: &Ctx) -> Result<()> {
    let pod = ctx.run_pod("deadline").await?;
    let res = async {
        let id = ctx.start_container(&pod, "deadline", &ctx.images.busybox, &["sleep", "1000"]).await?;
        ctx.wait_container_state(&id, cri::ContainerState::ContainerRunning, Duration::from_secs(30)).await?;
        let socket = ctx.socket().await;
        let mut c = crate::rawh2::RawGrpc::connect(&socket, Some(b"localhost")).await?;
        c.header("grpc-timeout", "300m");
        let started = std::time::Instant::now();
        let req = cri::ExecSyncRequest { container_id: id.clone(), cmd: vec!["sleep".into(), "3".into()], timeout: 0 };
        let r = c.unary::<_, cri::ExecSyncResponse>("/runtime.v1.RuntimeService/ExecSync", &req).await;
        let elapsed = started.elapsed();
        match r {
            Err(crate::rawh2::CallError::Status { code, message }) => {
                eprintln!("note deadline_passed_is_deadline_exceeded: code {code} after {elapsed:?}: {message}");
                check(ctx.kind != TargetKind::Berth || code == tonic::Code::DeadlineExceeded as i32, || {
                    format!("ExecSync past its 300 ms deadline: expected gRPC status 4 (DEADLINE_EXCEEDED), got {code}: {message}")
                })
            }
            Err(e) => bail!("ExecSync past its deadline: expected gRPC status 4 (DEADLINE_EXCEEDED), got {e}"),
            Ok(r) => bail!("ExecSync past its 300 ms deadline was answered OK after {elapsed:?}: {r:?}"),
        }
    }
    .await;
    ctx.remove_pod(&pod.id).await?;
    res
}
