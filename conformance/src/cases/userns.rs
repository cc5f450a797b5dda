//! User namespaces (issue #5): `userns_options` mode POD with one uid and one gid mapping
//! (Kubernetes `hostUsers: false`). The pod's root is a host id from the mapping, yet the image's
//! files and a hostPath volume appear owned by the pod's own ids (idmapped mounts), what it writes
//! into the volume lands on disk under the unmapped id, and the pod keeps working networking and
//! its net sysctls.
//! Malformed mappings and containers that ask for another namespace are refused with the field
//! named, leaving nothing behind.
//!
//! Runtimes that do not report `user_namespaces` for their handler in Status are skipped
//! (containerd 1.6 reports no handlers and ignores `userns_options`).

use super::util::{check, read_log};
use super::Case;
use crate::ctx::{skip, Ctx, Pod};
use crate::daemon::TargetKind;
use anyhow::{bail, Context, Result};
use berth::cri::v1 as cri;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

/// The cases of this module, in run order.
pub fn cases() -> Vec<Case> {
    vec![
        case!("userns_pod_ids_and_idmapped_volume", pod_ids_and_idmapped_volume),
        case!("userns_bad_mappings_refused", bad_mappings_refused),
        case!("userns_container_mismatch_refused", container_mismatch_refused),
        case!("userns_unmasked_procmount", unmasked_procmount),
        case!("userns_survives_daemon_restart", survives_daemon_restart),
        case!("userns_image_volume_idmapped", image_volume_idmapped),
    ]
}

/// Host ids of the pod's range (unused by anything on a test machine).
const HOST_BASE: u32 = 300_000;
const RANGE: u32 = 65_536;

fn mapping(host_id: u32, container_id: u32, length: u32) -> cri::IdMapping {
    cri::IdMapping { host_id, container_id, length }
}

fn userns(uids: Vec<cri::IdMapping>, gids: Vec<cri::IdMapping>) -> cri::UserNamespace {
    cri::UserNamespace { mode: cri::NamespaceMode::Pod as i32, uids, gids }
}

fn pod_ns() -> cri::UserNamespace {
    userns(vec![mapping(HOST_BASE, 0, RANGE)], vec![mapping(HOST_BASE, 0, RANGE)])
}

fn with_userns(mut pc: cri::PodSandboxConfig, u: cri::UserNamespace) -> cri::PodSandboxConfig {
    let sc = pc.linux.get_or_insert_with(Default::default).security_context.get_or_insert_with(Default::default);
    sc.namespace_options.get_or_insert_with(Default::default).userns_options = Some(u);
    pc
}

/// Skips unless the default runtime handler reports user namespace support; on berth it must.
async fn require_support(ctx: &Ctx) -> Result<()> {
    // berth self-tests its handlers in the background after it starts: give it a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(if ctx.kind == TargetKind::Berth { 30 } else { 0 });
    let (st, supported) = loop {
        let st = ctx.rt().status(cri::StatusRequest { verbose: false }).await.context("Status")?.into_inner();
        let supported = st.runtime_handlers.iter().any(|h| h.features.as_ref().is_some_and(|f| f.user_namespaces));
        if supported || std::time::Instant::now() >= deadline {
            break (st, supported);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    match (supported, ctx.kind) {
        (true, _) => Ok(()),
        (false, TargetKind::Berth) => {
            // A limit of this kernel is a reason to skip; anything else (a broken self-test) fails.
            let why = berth_userns_verdict(ctx).await?;
            if why.starts_with("this kernel") {
                return skip(&format!("berth's self-test: {why}"));
            }
            bail!(
                "Status.runtime_handlers reports no handler with user_namespaces on berth: {:?} (self-test: {why:?})",
                st.runtime_handlers
            )
        }
        (false, _) => skip("the runtime reports no handler with user namespace support"),
    }
}

/// What berth's self-test says of runc and user namespaces (verbose Status,
/// `runtimeHandlers.runc.userNamespaces`): `ok`, or why not. A reason that starts with "this
/// kernel" is a limit of the host, not of berth.
pub(super) async fn berth_userns_verdict(ctx: &Ctx) -> Result<String> {
    let verbose = ctx.rt().status(cri::StatusRequest { verbose: true }).await.context("Status")?.into_inner();
    let handlers: serde_json::Value =
        serde_json::from_str(verbose.info.get("runtimeHandlers").map_or("{}", String::as_str)).unwrap_or_default();
    Ok(handlers["runc"]["userNamespaces"].as_str().unwrap_or("").to_string())
}

async fn pod_count(ctx: &Ctx) -> Result<usize> {
    let r = ctx.rt().list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await.context("ListPodSandbox")?;
    Ok(r.into_inner().items.len())
}

/// A pod with its own user namespace: the container's root is host uid 300000 (uid_map), sees
/// the image's files and a hostPath volume owned by 0:0, can write both, and what it writes
/// into the volume is owned by 0:0 on the host disk. The pod still has an IP.
pub async fn pod_ids_and_idmapped_volume(ctx: &Ctx) -> Result<()> {
    require_support(ctx).await?;
    let vol = ctx.tmp.join(format!("userns-vol-{}", ctx.unique()));
    std::fs::create_dir_all(&vol)?;
    std::fs::write(vol.join("host-file"), b"from the host\n")?;
    let mut pc = with_userns(ctx.pod_config("userns", &[]), pod_ns());
    // A net sysctl: applied inside the netns the pod's user namespace owns.
    pc.linux.get_or_insert_with(Default::default).sysctls.insert("net.ipv4.ip_unprivileged_port_start".into(), "0".into());
    let pod = ctx.run_pod_with(pc).await?;
    let r = async {
        let st = ctx.rt().pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: pod.id.clone(), verbose: false }).await?.into_inner();
        let ip = st.status.and_then(|s| s.network).map(|n| n.ip).unwrap_or_default();
        check(!ip.is_empty(), || "a pod with its own user namespace has no IP".into())?;
        let script = "cat /proc/self/uid_map; cat /proc/self/gid_map; id -u; id -g; \
                      stat -c %u:%g /etc/passwd /bin/busybox /vol/host-file; \
                      echo pod > /vol/pod-file && echo wrote-vol; \
                      touch /etc/rootfs-file && echo wrote-rootfs; \
                      ip -4 -o addr show eth0 >/dev/null 2>&1 && echo has-eth0; \
                      cat /proc/sys/net/ipv4/ip_unprivileged_port_start";
        let mut cfg = ctx.container_config("userns", &ctx.images.busybox, &["sh", "-c", script]);
        cfg.mounts.push(cri::Mount { container_path: "/vol".into(), host_path: vol.display().to_string(), ..Default::default() });
        let lc = cfg.linux.get_or_insert_with(Default::default);
        lc.security_context.get_or_insert_with(Default::default).namespace_options =
            Some(cri::NamespaceOption { userns_options: Some(pod_ns()), ..Default::default() });
        let id = ctx.create_with(&pod, cfg).await?;
        ctx.rt().start_container(cri::StartContainerRequest { container_id: id.clone() }).await.context("StartContainer")?;
        let st = ctx.wait_container_state(&id, cri::ContainerState::ContainerExited, Duration::from_secs(60)).await?;
        let out: Vec<String> = read_log(&pod, &st, 0).await?.into_iter().map(|l| l.text).collect();
        let map: Vec<String> = out.iter().take(2).map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
        let want_map = format!("0 {HOST_BASE} {RANGE}");
        check(map == [want_map.clone(), want_map], || format!("uid_map/gid_map inside: {map:?}, expected \"0 {HOST_BASE} {RANGE}\" twice; output {out:?}"))?;
        let rest: Vec<&str> = out.iter().skip(2).map(String::as_str).collect();
        let want = ["0", "0", "0:0", "0:0", "0:0", "wrote-vol", "wrote-rootfs", "has-eth0", "0"];
        check(rest == want, || format!("inside the pod: {rest:?}, expected {want:?} (ids, owners of the image's and the volume's files, writes, eth0, the pod's sysctl)"))?;
        check(st.exit_code == 0, || format!("exit code {}", st.exit_code))?;
        // exec joins the same user namespace.
        let mut cfg = ctx.container_config("userns-exec", &ctx.images.busybox, &["sleep", "60"]);
        cfg.linux.get_or_insert_with(Default::default).security_context.get_or_insert_with(Default::default).namespace_options =
            Some(cri::NamespaceOption { userns_options: Some(pod_ns()), ..Default::default() });
        let long = ctx.create_with(&pod, cfg).await?;
        ctx.rt().start_container(cri::StartContainerRequest { container_id: long.clone() }).await.context("StartContainer userns-exec")?;
        let e = ctx.exec(&long, &["sh", "-c", "cat /proc/self/uid_map; id -u; stat -c %u /etc/passwd"], 20).await?;
        let got: Vec<String> = String::from_utf8_lossy(&e.stdout).lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
        let want = [format!("0 {HOST_BASE} {RANGE}"), "0".into(), "0".into()];
        check(got == want, || format!("ExecSync in the pod printed {got:?}, expected {want:?}"))?;
        let meta = std::fs::metadata(vol.join("pod-file")).context("the file the pod wrote into the volume")?;
        check((meta.uid(), meta.gid()) == (0, 0), || format!("the pod's root wrote a file owned by {}:{} on the host disk, expected 0:0 (idmapped volume)", meta.uid(), meta.gid()))?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let removed = ctx.remove_pod(&pod.id).await;
    let _ = std::fs::remove_dir_all(&vol);
    r?;
    removed
}

/// Malformed mappings are InvalidArgument naming the field, and no pod is left.
pub async fn bad_mappings_refused(ctx: &Ctx) -> Result<()> {
    require_support(ctx).await?;
    let before = pod_count(ctx).await?;
    let ok = || vec![mapping(HOST_BASE, 0, RANGE)];
    let cases = [
        ("two uid mappings", userns(vec![mapping(HOST_BASE, 0, 10), mapping(HOST_BASE + 10, 10, 10)], ok()), "uids"),
        ("container id 1", userns(ok(), vec![mapping(HOST_BASE, 1, RANGE)]), "container_id"),
        ("no gid mapping", userns(ok(), vec![]), "gids"),
        ("mode CONTAINER", cri::UserNamespace { mode: cri::NamespaceMode::Container as i32, uids: ok(), gids: ok() }, "mode"),
        ("length 1", userns(vec![mapping(HOST_BASE, 0, 1)], ok()), "length"),
        ("range ending at 2^32", userns(vec![mapping(u32::MAX - RANGE + 1, 0, RANGE)], ok()), "overflow"),
    ];
    for (what, u, field) in cases {
        let pc = with_userns(ctx.pod_config("userns-bad", &[]), u);
        std::fs::create_dir_all(&pc.log_directory).ok();
        let r = ctx.rt().run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(pc), runtime_handler: String::new() }).await;
        match r {
            Ok(resp) => {
                let id = resp.into_inner().pod_sandbox_id;
                let _ = ctx.remove_pod(&id).await;
                bail!("{what}: RunPodSandbox succeeded, expected InvalidArgument");
            }
            Err(s) => check(s.code() == tonic::Code::InvalidArgument && s.message().contains(field), || {
                format!("{what}: got {:?} {:?}, expected InvalidArgument naming {field:?}", s.code(), s.message())
            })?,
        }
    }
    let after = pod_count(ctx).await?;
    check(after == before, || format!("{} pod sandboxes before the refusals, {after} after", before))
}

/// In a pod with its own user namespace, a container asking for the host's (NODE) or for
/// other mappings is refused, and so is a privileged container; the pod stays usable.
pub async fn container_mismatch_refused(ctx: &Ctx) -> Result<()> {
    require_support(ctx).await?;
    let mut pc = with_userns(ctx.pod_config("userns-mismatch", &[]), pod_ns());
    pc.linux.get_or_insert_with(Default::default).security_context.get_or_insert_with(Default::default).privileged = true;
    let pod: Pod = ctx.run_pod_with(pc).await?;
    let r = async {
        let attempts: [(&str, cri::LinuxContainerSecurityContext, &str); 4] = [
            (
                "NODE user namespace",
                cri::LinuxContainerSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        userns_options: Some(cri::UserNamespace { mode: cri::NamespaceMode::Node as i32, ..Default::default() }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "userns_options",
            ),
            (
                "other mappings",
                cri::LinuxContainerSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        userns_options: Some(userns(
                            vec![mapping(HOST_BASE + RANGE, 0, RANGE)],
                            vec![mapping(HOST_BASE + RANGE, 0, RANGE)],
                        )),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "userns_options",
            ),
            ("privileged", cri::LinuxContainerSecurityContext { privileged: true, ..Default::default() }, "privileged"),
            (
                "run_as_user outside the mapping",
                cri::LinuxContainerSecurityContext { run_as_user: Some(cri::Int64Value { value: RANGE as i64 }), ..Default::default() },
                "run_as_user",
            ),
        ];
        for (what, sc, field) in attempts {
            let mut cfg = ctx.container_config("mismatch", &ctx.images.busybox, &["true"]);
            cfg.linux.get_or_insert_with(Default::default).security_context = Some(sc);
            ctx.ensure_image(&ctx.images.busybox).await?;
            let r = ctx.create_request(&pod, cfg).await;
            match r {
                Ok(resp) => bail!("{what}: CreateContainer succeeded ({}), expected InvalidArgument", resp.into_inner().container_id),
                Err(s) => check(s.code() == tonic::Code::InvalidArgument && s.message().contains(field), || {
                    format!("{what}: got {:?} {:?}, expected InvalidArgument naming {field:?}", s.code(), s.message())
                })?,
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
    let removed = ctx.remove_pod(&pod.id).await;
    r?;
    removed
}

/// A pod with its own user namespace across a daemon restart: its container keeps running in
/// the namespace (ExecSync sees the mapping), a new container joins it, and Stop/Remove clean
/// up (the leak check at the end of the suite looks for mounts and netns pins).
pub async fn survives_daemon_restart(ctx: &Ctx) -> Result<()> {
    require_support(ctx).await?;
    if !ctx.can_restart() {
        return skip("the harness does not own the daemon (BERTH_ENDPOINT)");
    }
    let pod = ctx.run_pod_with(with_userns(ctx.pod_config("userns-restart", &[]), pod_ns())).await?;
    let r = async {
        let mk = |name: &str| {
            let mut cfg = ctx.container_config(name, &ctx.images.busybox, &["sleep", "600"]);
            cfg.linux.get_or_insert_with(Default::default).security_context.get_or_insert_with(Default::default).namespace_options =
                Some(cri::NamespaceOption { userns_options: Some(pod_ns()), ..Default::default() });
            cfg
        };
        let before = ctx.create_with(&pod, mk("before")).await?;
        ctx.rt().start_container(cri::StartContainerRequest { container_id: before.clone() }).await.context("StartContainer before")?;
        ctx.restart_daemon().await.context("restarting the daemon")?;
        let after = ctx.create_with(&pod, mk("after")).await.context("CreateContainer in the userns pod after the restart")?;
        ctx.rt().start_container(cri::StartContainerRequest { container_id: after.clone() }).await.context("StartContainer after")?;
        let want = format!("0 {HOST_BASE} {RANGE}");
        for id in [&before, &after] {
            let e = ctx.exec(id, &["sh", "-c", "cat /proc/self/uid_map; readlink /proc/self/ns/user"], 20).await?;
            let out = String::from_utf8_lossy(&e.stdout).to_string();
            let lines: Vec<String> = out.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
            check(lines.first() == Some(&want), || format!("container {id} after the restart: uid_map {lines:?}, expected {want:?}"))?;
        }
        let ns = |id: String| async move {
            let e = ctx.exec(&id, &["readlink", "/proc/self/ns/user"], 20).await?;
            Ok::<_, anyhow::Error>(String::from_utf8_lossy(&e.stdout).trim().to_string())
        };
        let (a, b) = (ns(before.clone()).await?, ns(after.clone()).await?);
        check(a == b, || format!("the containers before and after the restart are in different user namespaces: {a} vs {b}"))
    }
    .await;
    let removed = ctx.remove_pod(&pod.id).await;
    r?;
    removed
}

/// procMount: Unmasked, as kubelet asks for it (empty masked_paths and readonly_paths, allowed
/// only with a pod user namespace): /proc/keys is not masked and /proc/sys is not read-only;
/// with the default lists sent explicitly (procMount: Default) both are.
pub async fn unmasked_procmount(ctx: &Ctx) -> Result<()> {
    require_support(ctx).await?;
    let pod = ctx.run_pod_with(with_userns(ctx.pod_config("userns-procmount", &[]), pod_ns())).await?;
    let r = async {
        let script = "awk '$5==\"/proc/keys\"{m=1} $5==\"/proc/sys\"{split($6,o,\",\"); s=o[1]} END{print (m?\"keys-masked\":\"keys-open\"); print \"sys-\" (s?s:\"unmounted\")}' /proc/self/mountinfo";
        let mut outs = Vec::new();
        for (name, masked, readonly) in [
            ("unmasked", vec![], vec![]),
            ("default", vec!["/proc/keys".to_string()], vec!["/proc/sys".to_string()]),
        ] {
            let mut cfg = ctx.container_config(name, &ctx.images.busybox, &["sh", "-c", script]);
            cfg.linux.get_or_insert_with(Default::default).security_context = Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption { userns_options: Some(pod_ns()), ..Default::default() }),
                masked_paths: masked,
                readonly_paths: readonly,
                ..Default::default()
            });
            let id = ctx.create_with(&pod, cfg).await?;
            ctx.rt().start_container(cri::StartContainerRequest { container_id: id.clone() }).await.context("StartContainer")?;
            let st = ctx.wait_container_state(&id, cri::ContainerState::ContainerExited, Duration::from_secs(60)).await?;
            outs.push(read_log(&pod, &st, 2).await?.into_iter().map(|l| l.text).collect::<Vec<_>>());
        }
        check(outs[0] == ["keys-open", "sys-unmounted"], || format!("Unmasked: {:?}, expected /proc/keys open and /proc/sys not remounted", outs[0]))?;
        check(outs[1] == ["keys-masked", "sys-ro"], || format!("Default lists: {:?}, expected /proc/keys masked and /proc/sys read-only", outs[1]))
    }
    .await;
    let removed = ctx.remove_pod(&pod.id).await;
    r?;
    removed
}

/// An image volume (KEP-4639) in a pod with its own user namespace: the image's files show as
/// owned by the pod's root (0:0, idmapped), are readable, and stay read-only.
pub async fn image_volume_idmapped(ctx: &Ctx) -> Result<()> {
    require_support(ctx).await?;
    let image_ref = ctx.pull(&ctx.images.busybox).await?;
    let pod = ctx.run_pod_with(with_userns(ctx.pod_config("userns-imagevol", &[]), pod_ns())).await?;
    let r = async {
        let script = "stat -c %u:%g /etc2/passwd; head -c 5 /etc2/passwd >/dev/null && echo readable; touch /etc2/x 2>/dev/null && echo writable; true";
        let mut cfg = ctx.container_config("imagevol", &ctx.images.busybox, &["sh", "-c", script]);
        cfg.mounts.push(cri::Mount {
            container_path: "/etc2".into(),
            image: Some(cri::ImageSpec { image: image_ref.clone(), ..Default::default() }),
            image_sub_path: "etc".into(),
            readonly: true,
            ..Default::default()
        });
        cfg.linux.get_or_insert_with(Default::default).security_context.get_or_insert_with(Default::default).namespace_options =
            Some(cri::NamespaceOption { userns_options: Some(pod_ns()), ..Default::default() });
        let id = ctx.create_with(&pod, cfg).await?;
        ctx.rt().start_container(cri::StartContainerRequest { container_id: id.clone() }).await.context("StartContainer")?;
        let st = ctx.wait_container_state(&id, cri::ContainerState::ContainerExited, Duration::from_secs(60)).await?;
        let out: Vec<String> = read_log(&pod, &st, 0).await?.into_iter().map(|l| l.text).collect();
        check(out == ["0:0", "readable"], || format!("inside the pod the image volume shows {out:?}, expected [\"0:0\", \"readable\"]"))
    }
    .await;
    let removed = ctx.remove_pod(&pod.id).await;
    r?;
    removed
}
