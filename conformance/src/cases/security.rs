//! Security contexts (issue #5, part A): seccomp RuntimeDefault/Unconfined/Localhost, a missing
//! Localhost profile, no_new_privs, capabilities, privileged, readonly_rootfs, masked_paths,
//! run_as_user/run_as_group/supplemental_groups, run_as_group without a user, and
//! ContainerStatus.user. Each checks the effect inside the container (`/proc/self/status`, `id`,
//! a failing write) from the busybox image.

use super::util::{check, read_log};
use crate::ctx::{skip, Ctx, Pod};
use crate::daemon::TargetKind;
use anyhow::{bail, Context, Result};
use berth::cri::v1 as cri;
use std::time::Duration;

type Sc = cri::LinuxContainerSecurityContext;

/// Runs `script` (sh -c) in a fresh pod with security context `sc`; returns the pod, the exited
/// status and the stdout lines. The pod is removed when anything fails.
async fn run_sc(ctx: &Ctx, name: &str, pod_privileged: bool, sc: Sc, script: &str) -> Result<(Pod, cri::ContainerStatus, Vec<String>)> {
    let mut pc = ctx.pod_config(name, &[]);
    if pod_privileged {
        pc.linux.get_or_insert_with(Default::default).security_context.get_or_insert_with(Default::default).privileged = true;
    }
    let pod = ctx.run_pod_with(pc).await?;
    let r = async {
        let mut cfg = ctx.container_config(name, &ctx.images.busybox, &["sh", "-c", script]);
        cfg.linux.get_or_insert_with(Default::default).security_context = Some(sc);
        let id = ctx.create_with(&pod, cfg).await?;
        ctx.rt()
            .start_container(cri::StartContainerRequest { container_id: id.clone() })
            .await
            .with_context(|| format!("StartContainer {name}"))?;
        let st = ctx.wait_container_state(&id, cri::ContainerState::ContainerExited, Duration::from_secs(60)).await?;
        let lines = read_log(&pod, &st, 0).await?;
        let out: Vec<String> = lines.into_iter().filter(|l| l.stream == "stdout").map(|l| l.text).collect();
        Ok::<_, anyhow::Error>((st, out))
    }
    .await;
    match r {
        Ok((st, out)) => Ok((pod, st, out)),
        Err(e) => {
            let _ = ctx.remove_pod(&pod.id).await;
            Err(e)
        }
    }
}

/// Runs `script`, checks stdout equals `want`, removes the pod.
async fn expect_output(ctx: &Ctx, name: &str, pod_privileged: bool, sc: Sc, script: &str, want: &[&str]) -> Result<cri::ContainerStatus> {
    let (pod, st, out) = run_sc(ctx, name, pod_privileged, sc, script).await?;
    ctx.remove_pod(&pod.id).await?;
    check(out == want, || format!("{script:?} printed {out:?}, expected {want:?}"))?;
    Ok(st)
}

const STATUS_FIELD: &str = "sed -n 's/^FIELD:[[:space:]]*//p' /proc/self/status";

fn status_field(f: &str) -> String {
    STATUS_FIELD.replace("FIELD", f)
}

fn profile(t: cri::security_profile::ProfileType, r: &str) -> Option<cri::SecurityProfile> {
    Some(cri::SecurityProfile { profile_type: t as i32, localhost_ref: r.into() })
}

/// seccomp RuntimeDefault: the process runs in seccomp filter mode (`Seccomp: 2`).
pub async fn seccomp_runtime_default(ctx: &Ctx) -> Result<()> {
    let sc = Sc { seccomp: profile(cri::security_profile::ProfileType::RuntimeDefault, ""), ..Default::default() };
    expect_output(ctx, "seccomp-default", false, sc, &status_field("Seccomp"), &["2"]).await.map(|_| ())
}

/// seccomp Unconfined: no filter (`Seccomp: 0`).
pub async fn seccomp_unconfined(ctx: &Ctx) -> Result<()> {
    let sc = Sc { seccomp: profile(cri::security_profile::ProfileType::Unconfined, ""), ..Default::default() };
    expect_output(ctx, "seccomp-unconfined", false, sc, &status_field("Seccomp"), &["0"]).await.map(|_| ())
}

/// seccomp Localhost: a Docker-format profile denying mkdir/mkdirat with EPERM makes
/// `mkdir` fail while `touch` works.
pub async fn seccomp_localhost_denies_mkdir(ctx: &Ctx) -> Result<()> {
    let path = ctx.tmp.join(format!("deny-mkdir-{}.json", ctx.unique()));
    let p = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    });
    std::fs::write(&path, p.to_string()).with_context(|| format!("write {}", path.display()))?;
    let sc = Sc { seccomp: profile(cri::security_profile::ProfileType::Localhost, &path.display().to_string()), ..Default::default() };
    let script = "mkdir /tmp/x 2>/dev/null; echo mkdir=$?; touch /tmp/y; echo touch=$?";
    let r = expect_output(ctx, "seccomp-localhost", false, sc, script, &["mkdir=1", "touch=0"]).await;
    let _ = std::fs::remove_file(&path);
    r.map(|_| ())
}

/// A Localhost profile that does not exist: CreateContainer fails (berth: InvalidArgument naming
/// the path) and leaves no container in the pod.
pub async fn seccomp_localhost_missing(ctx: &Ctx) -> Result<()> {
    let missing = format!("/nonexistent/berth-{}/profile.json", ctx.unique());
    let sc = Sc { seccomp: profile(cri::security_profile::ProfileType::Localhost, &missing), ..Default::default() };
    refused(ctx, "seccomp-missing", sc, &missing).await
}

/// seccomp Localhost naming a FIFO or a device: refused at once as not a regular file, and the
/// daemon keeps answering (reading a FIFO nobody writes would block). berth only: other
/// runtimes may block on it, which would stall the rest of the suite.
pub async fn seccomp_localhost_not_a_file(ctx: &Ctx) -> Result<()> {
    if ctx.kind != TargetKind::Berth {
        return skip("a FIFO profile may block the runtime under test (containerd reads it whole)");
    }
    let fifo = ctx.tmp.join(format!("profile-fifo-{}", ctx.unique()));
    let st = std::process::Command::new("mkfifo").arg(&fifo).status().context("mkfifo")?;
    check(st.success(), || "mkfifo failed".into())?;
    for path in [fifo.display().to_string(), "/dev/zero".to_string()] {
        let sc = Sc { seccomp: profile(cri::security_profile::ProfileType::Localhost, &path), ..Default::default() };
        tokio::time::timeout(Duration::from_secs(30), refused(ctx, "seccomp-not-a-file", sc, "not a regular file"))
            .await
            .with_context(|| format!("CreateContainer with the profile {path} did not answer within 30 s"))??;
    }
    let _ = std::fs::remove_file(&fifo);
    ctx.rt().version(cri::VersionRequest { version: String::new() }).await.context("Version after the refusals")?;
    Ok(())
}

/// run_as_group without run_as_user/run_as_username: refused (berth: InvalidArgument naming
/// run_as_group), nothing left.
pub async fn run_as_group_alone(ctx: &Ctx) -> Result<()> {
    let sc = Sc { run_as_group: Some(cri::Int64Value { value: 3000 }), ..Default::default() };
    refused(ctx, "group-alone", sc, "run_as_group").await
}

async fn refused(ctx: &Ctx, name: &str, sc: Sc, named: &str) -> Result<()> {
    let pod = ctx.run_pod(name).await?;
    let mut cfg = ctx.container_config(name, &ctx.images.busybox, &["true"]);
    cfg.linux.get_or_insert_with(Default::default).security_context = Some(sc);
    ctx.ensure_image(&ctx.images.busybox).await?;
    let r = ctx.create_request(&pod, cfg).await;
    let listed = ctx
        .rt()
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter { pod_sandbox_id: pod.id.clone(), ..Default::default() }),
        })
        .await
        .context("ListContainers")?
        .into_inner()
        .containers;
    ctx.remove_pod(&pod.id).await?;
    match r {
        Ok(resp) => bail!("CreateContainer succeeded ({}), expected a refusal naming {named}", resp.into_inner().container_id),
        Err(s) => {
            eprintln!("note security_{name}: code {:?}: {}", s.code(), s.message());
            if ctx.kind == TargetKind::Berth {
                check(s.code() == tonic::Code::InvalidArgument, || {
                    format!("code {:?} ({}), expected InvalidArgument", s.code(), s.message())
                })?;
                check(s.message().contains(named), || format!("message {:?} does not name {named}", s.message()))?;
            }
        }
    }
    check(listed.is_empty(), || format!("refused CreateContainer left containers {listed:?}"))
}

/// no_new_privs: `NoNewPrivs: 1`.
pub async fn no_new_privs(ctx: &Ctx) -> Result<()> {
    let sc = Sc { no_new_privs: true, ..Default::default() };
    expect_output(ctx, "nnp", false, sc, &status_field("NoNewPrivs"), &["1"]).await.map(|_| ())
}

/// capabilities drop ALL + add NET_BIND_SERVICE: `CapEff` is exactly bit 10.
pub async fn caps_drop_all_add_one(ctx: &Ctx) -> Result<()> {
    let caps =
        cri::Capability { add_capabilities: vec!["NET_BIND_SERVICE".into()], drop_capabilities: vec!["ALL".into()], ..Default::default() };
    let sc = Sc { capabilities: Some(caps), ..Default::default() };
    expect_output(ctx, "caps", false, sc, &status_field("CapEff"), &["0000000000000400"]).await.map(|_| ())
}

/// privileged (in a privileged pod): host devices are there (/dev/kmsg) and CapEff is the
/// daemon's own.
pub async fn privileged(ctx: &Ctx) -> Result<()> {
    let Some(pid) = ctx.daemon_pid().await else { return skip("the daemon's pid is unknown (external endpoint)") };
    let own = std::fs::read_to_string(format!("/proc/{pid}/status"))?
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:").map(|v| v.trim().to_string()))
        .context("daemon CapEff")?;
    let sc = Sc { privileged: true, ..Default::default() };
    let script = format!("test -c /dev/kmsg && echo kmsg; {}", status_field("CapEff"));
    expect_output(ctx, "privileged", true, sc, &script, &["kmsg", own.as_str()]).await.map(|_| ())
}

/// readonly_rootfs: `touch /x` fails.
pub async fn readonly_rootfs(ctx: &Ctx) -> Result<()> {
    let sc = Sc { readonly_rootfs: true, ..Default::default() };
    expect_output(ctx, "rorootfs", false, sc, "touch /x 2>/dev/null; echo touch=$?", &["touch=1"]).await.map(|_| ())
}

/// masked_paths from the request: /proc/version reads empty.
pub async fn masked_path(ctx: &Ctx) -> Result<()> {
    let sc = Sc { masked_paths: vec!["/proc/version".into()], ..Default::default() };
    expect_output(ctx, "masked", false, sc, "wc -c < /proc/version", &["0"]).await.map(|_| ())
}

fn ids_sc() -> Sc {
    Sc {
        run_as_user: Some(cri::Int64Value { value: 1000 }),
        run_as_group: Some(cri::Int64Value { value: 3000 }),
        supplemental_groups: vec![4000],
        ..Default::default()
    }
}

/// run_as_user 1000, run_as_group 3000, supplemental_groups [4000]: `id` prints them.
pub async fn run_as_ids(ctx: &Ctx) -> Result<()> {
    expect_output(ctx, "ids", false, ids_sc(), "id -u; id -g; id -G", &["1000", "3000", "3000 4000"]).await.map(|_| ())
}

/// ContainerStatus.user reports the effective uid, gid and supplemental groups (skipped when
/// the runtime does not fill the field: containerd 1.6 predates it).
pub async fn status_user(ctx: &Ctx) -> Result<()> {
    let (pod, st, _) = run_sc(ctx, "status-user", false, ids_sc(), "true").await?;
    ctx.remove_pod(&pod.id).await?;
    let Some(u) = st.user.and_then(|u| u.linux) else { return skip("ContainerStatus.user is not reported by this runtime") };
    check(u.uid == 1000 && u.gid == 3000, || format!("user uid {} gid {}, expected 1000/3000", u.uid, u.gid))?;
    check(u.supplemental_groups.contains(&4000) && u.supplemental_groups.contains(&3000), || {
        format!("supplemental_groups {:?}, expected 3000 and 4000", u.supplemental_groups)
    })
}

/// readonly_paths from the request replace the defaults: `/etc` listed is read-only; without
/// the field, the defaults apply (`/proc/sys` read-only).
pub async fn readonly_paths(ctx: &Ctx) -> Result<()> {
    let sc = Sc { readonly_paths: vec!["/etc".into()], ..Default::default() };
    expect_output(ctx, "ropaths", false, sc, "touch /etc/x 2>/dev/null; echo touch=$?", &["touch=1"]).await?;
    if ctx.kind != TargetKind::Berth {
        // containerd (like kubelet's procMount: Unmasked) treats empty lists as "none".
        return skip("empty readonly_paths: berth applies its defaults, containerd none");
    }
    let mount_opts = "awk '$5==\"/proc/sys\"{split($6,o,\",\"); print o[1]}' /proc/self/mountinfo";
    expect_output(ctx, "ropaths-default", false, Sc::default(), mount_opts, &["ro"]).await.map(|_| ())
}

/// Defaults when unprivileged (`/proc/keys` masked, `/sys` read-only); none when privileged
/// (`/proc/keys` not masked, `/sys` read-write).
pub async fn default_masks_and_privileged_none(ctx: &Ctx) -> Result<()> {
    let script = "awk '$5==\"/proc/keys\"{m=1} $5==\"/sys\"{split($6,o,\",\"); s=o[1]} END{print (m?\"keys-masked\":\"keys-open\"); print \"sys-\" s}' /proc/self/mountinfo";
    // Kubelet sends the default list explicitly; berth also applies it when the list is empty.
    let defaults =
        if ctx.kind == TargetKind::Berth { Sc::default() } else { Sc { masked_paths: vec!["/proc/keys".into()], ..Default::default() } };
    expect_output(ctx, "masks-default", false, defaults, script, &["keys-masked", "sys-ro"]).await?;
    let sc = Sc { privileged: true, ..Default::default() };
    expect_output(ctx, "masks-privileged", true, sc, script, &["keys-open", "sys-rw"]).await.map(|_| ())
}

/// run_as_username is looked up in the image's /etc/passwd: `nobody` in the `user` image is
/// 65534; an unknown name is InvalidArgument naming it.
pub async fn run_as_username(ctx: &Ctx) -> Result<()> {
    let pod = ctx.run_pod("username").await?;
    let r = async {
        let mk = |name: &str, user: &str| {
            let mut cfg = ctx.container_config(name, &ctx.images.user, &["sh", "-c", "id -u; id -g"]);
            cfg.linux.get_or_insert_with(Default::default).security_context =
                Some(Sc { run_as_username: user.into(), ..Default::default() });
            cfg
        };
        let id = ctx.create_with(&pod, mk("nobody", "nobody")).await?;
        ctx.rt().start_container(cri::StartContainerRequest { container_id: id.clone() }).await.context("StartContainer")?;
        let st = ctx.wait_container_state(&id, cri::ContainerState::ContainerExited, Duration::from_secs(60)).await?;
        let out: Vec<String> = read_log(&pod, &st, 2).await?.into_iter().map(|l| l.text).collect();
        check(out == ["65534", "65534"], || format!("run_as_username nobody: `id -u; id -g` printed {out:?}, expected 65534 twice"))?;
        match ctx.create_with(&pod, mk("ghost", "no-such-user")).await {
            Ok(id) => bail!("run_as_username no-such-user: CreateContainer succeeded ({id})"),
            Err(e) => {
                let s = e.downcast_ref::<tonic::Status>().map(|s| (s.code(), s.message().to_string()));
                check(s.as_ref().is_some_and(|(c, _)| *c != tonic::Code::Ok), || format!("unknown user: {s:?}, expected an error"))?;
                if ctx.kind == TargetKind::Berth {
                    check(s.as_ref().is_some_and(|(c, m)| *c == tonic::Code::InvalidArgument && m.contains("no-such-user")), || {
                        format!("unknown user on berth: {s:?}, expected InvalidArgument naming the user")
                    })?;
                } else {
                    eprintln!("note security_run_as_username: unknown user refused with {s:?}");
                }
            }
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let removed = ctx.remove_pod(&pod.id).await;
    r?;
    removed
}

/// SupplementalGroupsPolicy: Merge (default) adds the image's /etc/group membership of the
/// user (`extra`, 5000) to `supplemental_groups`; Strict uses `supplemental_groups` only.
pub async fn supplemental_groups_policy(ctx: &Ctx) -> Result<()> {
    let pod = ctx.run_pod("sgpolicy").await?;
    let r = async {
        let mut got = Vec::new();
        for (name, policy) in [("merge", cri::SupplementalGroupsPolicy::Merge), ("strict", cri::SupplementalGroupsPolicy::Strict)] {
            let mut cfg = ctx.container_config(name, &ctx.images.user, &["id", "-G"]);
            cfg.linux.get_or_insert_with(Default::default).security_context =
                Some(Sc { supplemental_groups: vec![4000], supplemental_groups_policy: policy as i32, ..Default::default() });
            let id = ctx.create_with(&pod, cfg).await?;
            ctx.rt().start_container(cri::StartContainerRequest { container_id: id.clone() }).await.context("StartContainer")?;
            let st = ctx.wait_container_state(&id, cri::ContainerState::ContainerExited, Duration::from_secs(60)).await?;
            let out: Vec<String> = read_log(&pod, &st, 1).await?.into_iter().map(|l| l.text).collect();
            let mut groups: Vec<String> = out.join(" ").split_whitespace().map(String::from).collect();
            groups.sort();
            got.push(groups);
        }
        if got[0] == ["1234", "4000"] && ctx.kind != TargetKind::Berth {
            return skip("the runtime does not merge the image's /etc/group membership (containerd 1.6)");
        }
        check(got[0] == ["1234", "4000", "5000"], || format!("Merge: `id -G` gave {:?}, expected 1234 4000 5000", got[0]))?;
        check(got[1] == ["1234", "4000"], || format!("Strict: `id -G` gave {:?}, expected 1234 4000", got[1]))
    }
    .await;
    let removed = ctx.remove_pod(&pod.id).await;
    r?;
    removed
}
