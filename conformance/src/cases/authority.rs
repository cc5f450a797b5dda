//! Any HTTP/2 `:authority` on the CRI socket (issue #16). gRPC clients disagree on what to send
//! for a unix socket: kubelet 1.26 (grpc-go 1.49), grpc-java and grpcurl send the socket path,
//! gRPC core (Python grpcio, C++) a percent-encoded path, newer grpc-go `localhost`, others an
//! empty value or none. containerd and CRI-O (grpc-go servers) accept them all, so a CRI runtime
//! must. These cases speak HTTP/2 themselves ([`crate::rawh2`]) to send each form, and drive a
//! real non-Go client (Python grpcio with its default channel options).

use super::util::check;
use crate::ctx::{skip, Ctx, Pod};
use crate::rawh2::{call, RawGrpc};
use crate::stream_client::{self as sc, Session, Transport};
use anyhow::{anyhow, Context, Result};
use berth::cri::v1 as cri;
use prost::Message;
use std::path::{Path, PathBuf};
use std::time::Duration;

const RUNTIME: &str = "/runtime.v1.RuntimeService";
const IMAGE: &str = "/runtime.v1.ImageService";

/// The `:authority` forms clients send on a unix socket, with who sends them.
fn authority_forms(socket: &Path) -> Vec<(&'static str, Option<Vec<u8>>)> {
    let path = socket.display().to_string();
    let encoded: String = path
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { char::from(b).to_string() } else { format!("%{b:02X}") })
        .collect();
    vec![
        ("the socket path (grpc-go 1.49 in kubelet 1.26, grpc-java, grpcurl)", Some(path.clone().into_bytes())),
        ("the percent-encoded path (gRPC core 1.57+: Python, C++)", Some(encoded.into_bytes())),
        ("a unix: URI", Some(format!("unix://{path}").into_bytes())),
        ("an empty authority", Some(Vec::new())),
        ("no :authority at all", None),
        ("a bogus value with spaces and a backslash", Some(b"not a host \\ at all".to_vec())),
        ("localhost (grpc-go 1.5x+)", Some(b"localhost".to_vec())),
    ]
}

/// Version, twice per connection (the second request refers to the first one's `:authority`
/// through the HPACK dynamic table, as grpc-go does), for every authority form.
pub async fn version_any_authority(ctx: &Ctx) -> Result<()> {
    let socket = ctx.socket().await;
    for (what, authority) in authority_forms(&socket) {
        let mut c = RawGrpc::connect(&socket, authority.as_deref()).await?;
        for n in 1..=2 {
            let v: cri::VersionResponse = c
                .unary(&format!("{RUNTIME}/Version"), &cri::VersionRequest { version: "v1".into() })
                .await
                .map_err(|e| anyhow!("Version with {what}, request {n} on the connection: {e}"))?;
            check(v.runtime_api_version == "v1" && !v.runtime_name.is_empty(), || format!("Version with {what}: {v:?}"))?;
        }
    }
    Ok(())
}

/// As kubelet 1.26 does: the socket path as authority on one connection for a whole pod's
/// life: RunPodSandbox, ImageStatus, CreateContainer, StartContainer, ExecSync, Exec (its URL
/// then streamed over SPDY), StopPodSandbox, RemovePodSandbox.
pub async fn pod_and_exec_with_socket_path(ctx: &Ctx) -> Result<()> {
    let socket = ctx.socket().await;
    let image = ctx.images.busybox.clone();
    ctx.ensure_image(&image).await?;
    let mut c = RawGrpc::connect(&socket, Some(socket.display().to_string().as_bytes())).await?;

    let st: cri::ImageStatusResponse =
        call(&mut c, &format!("{IMAGE}/ImageStatus"), &cri::ImageStatusRequest { image: Some(crate::ctx::spec(&image)), verbose: false })
            .await?;
    check(st.image.is_some(), || format!("ImageStatus {image} over the raw connection found no image"))?;

    let config = ctx.pod_config("authority", &[]);
    std::fs::create_dir_all(&config.log_directory).ok();
    let run: cri::RunPodSandboxResponse = call(
        &mut c,
        &format!("{RUNTIME}/RunPodSandbox"),
        &cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() },
    )
    .await?;
    ctx.record(&run.pod_sandbox_id);
    let pod = Pod { id: run.pod_sandbox_id.clone(), config };
    let result = exercise_pod(ctx, &mut c, &pod, &image).await;
    let stopped: Result<cri::StopPodSandboxResponse> =
        call(&mut c, &format!("{RUNTIME}/StopPodSandbox"), &cri::StopPodSandboxRequest { pod_sandbox_id: pod.id.clone() }).await;
    let removed: Result<cri::RemovePodSandboxResponse> =
        call(&mut c, &format!("{RUNTIME}/RemovePodSandbox"), &cri::RemovePodSandboxRequest { pod_sandbox_id: pod.id.clone() }).await;
    result?;
    stopped?;
    removed?;
    let gone = ctx.rt().pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: pod.id.clone(), verbose: false }).await;
    check(matches!(&gone, Err(s) if s.code() == tonic::Code::NotFound), || {
        format!("PodSandboxStatus after RemovePodSandbox over the raw connection: {gone:?}")
    })
}

async fn exercise_pod(ctx: &Ctx, c: &mut RawGrpc, pod: &Pod, image: &str) -> Result<()> {
    let config = ctx.container_config("sleeper", image, &["sleep", "1000"]);
    let created: cri::CreateContainerResponse = call(
        c,
        &format!("{RUNTIME}/CreateContainer"),
        &cri::CreateContainerRequest { pod_sandbox_id: pod.id.clone(), config: Some(config), sandbox_config: Some(pod.config.clone()) },
    )
    .await?;
    let id = created.container_id;
    ctx.record(&id);
    let _: cri::StartContainerResponse =
        call(c, &format!("{RUNTIME}/StartContainer"), &cri::StartContainerRequest { container_id: id.clone() }).await?;
    let out: cri::ExecSyncResponse = call(
        c,
        &format!("{RUNTIME}/ExecSync"),
        &cri::ExecSyncRequest { container_id: id.clone(), cmd: vec!["echo".into(), "over raw h2".into()], timeout: 10 },
    )
    .await?;
    check(out.exit_code == 0 && out.stdout == b"over raw h2\n", || {
        format!(
            "ExecSync: exit {} stdout {:?} stderr {:?}",
            out.exit_code,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;

    let exec = cri::ExecRequest {
        container_id: id.clone(),
        cmd: vec!["sh".into(), "-c".into(), "echo streamed; exit 4".into()],
        tty: false,
        stdin: false,
        stdout: true,
        stderr: true,
    };
    let url: cri::ExecResponse = call(c, &format!("{RUNTIME}/Exec"), &exec).await?;
    let s = Session { stderr: true, ..Default::default() };
    let o = sc::remotecommand(&url.url, Transport::Spdy("v4.channel.k8s.io"), &s).await.context("Exec stream over SPDY v4")?;
    check(o.stdout == b"streamed\n", || format!("Exec stream stdout {:?}", String::from_utf8_lossy(&o.stdout)))?;
    check(o.exit_code()? == 4, || format!("Exec stream status {:?}", String::from_utf8_lossy(&o.error)))?;

    let list: cri::ListContainersResponse = call(
        c,
        &format!("{RUNTIME}/ListContainers"),
        &cri::ListContainersRequest { filter: Some(cri::ContainerFilter { pod_sandbox_id: pod.id.clone(), ..Default::default() }) },
    )
    .await?;
    check(list.containers.iter().any(|x| x.id == id), || format!("ListContainers of pod {} lacks {id}", pod.id))
}

/// Where the suite looks for a Python with grpcio (scripts/install-deps.sh makes this venv);
/// `BERTH_TEST_PYTHON` overrides it.
fn grpcio_python() -> PathBuf {
    std::env::var_os("BERTH_TEST_PYTHON").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/cache/berth-test/venv/bin/python"))
}

/// Python grpcio, default channel options, `unix://` target: whatever authority this grpcio
/// version sends by default, Version and ListPodSandbox answer.
const GRPCIO_CLIENT: &str = r#"
import sys, grpc
target = "unix://" + sys.argv[1]
with grpc.insecure_channel(target) as ch:
    version = ch.unary_unary("/runtime.v1.RuntimeService/Version")
    listp = ch.unary_unary("/runtime.v1.RuntimeService/ListPodSandbox")
    v = version(bytes.fromhex(sys.argv[2]), timeout=20)
    l = listp(b"", timeout=20)
    print(grpc.__version__, v.hex(), l.hex())
"#;

/// A real non-Go gRPC client: Python grpcio with its default channel options.
pub async fn grpcio_default_channel(ctx: &Ctx) -> Result<()> {
    let python = grpcio_python();
    if !python.exists() {
        return skip(&format!("{} not found: scripts/install-deps.sh installs grpcio there (or set BERTH_TEST_PYTHON)", python.display()));
    }
    let socket = ctx.socket().await;
    let req = hex::encode(cri::VersionRequest { version: "v1".into() }.encode_to_vec());
    let run = tokio::process::Command::new(&python)
        .arg("-c")
        .arg(GRPCIO_CLIENT)
        .arg(&socket)
        .arg(&req)
        .stdin(std::process::Stdio::null())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run).await.context("grpcio client: no answer within 60 s")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    check(out.status.success(), || format!("grpcio client failed ({}): {}{}", out.status, stdout, String::from_utf8_lossy(&out.stderr)))?;
    let mut words = stdout.split_whitespace();
    let grpc_version = words.next().unwrap_or_default().to_string();
    let v = cri::VersionResponse::decode(hex::decode(words.next().unwrap_or_default())?.as_slice()).context("Version reply from grpcio")?;
    let l = cri::ListPodSandboxResponse::decode(hex::decode(words.next().unwrap_or_default())?.as_slice())
        .context("ListPodSandbox reply from grpcio")?;
    check(v.runtime_api_version == "v1", || format!("grpcio {grpc_version}: Version {v:?}"))?;
    eprintln!(
        "note grpcio_default_channel: grpcio {grpc_version}, runtime {} {}, {} pods listed",
        v.runtime_name,
        v.runtime_version,
        l.items.len()
    );
    Ok(())
}
