//! AppArmor, SELinux, sysctls, the pod's PID 1 and privileged containers in unprivileged pods
//! (issue #5 part B). Effects are checked inside the container (`/proc/sys`, `/proc/1/cmdline`,
//! `/proc/*/stat`); refusals are checked to leave no pod or container behind.

use super::util::{check, read_log};
use super::Case;
use crate::ctx::{skip, Ctx, Pod};
use crate::daemon::TargetKind;
use anyhow::{bail, Context, Result};
use berth::cri::v1 as cri;
use std::collections::HashMap;
use std::time::Duration;

type Sc = cri::LinuxContainerSecurityContext;
type ProfileType = cri::security_profile::ProfileType;

/// The cases of this module, in run order.
pub fn cases() -> Vec<Case> {
    vec![
        case!("sysctl_namespaced_applied", sysctl_namespaced_applied),
        case!("sysctl_host_network_net_refused", sysctl_host_network_net_refused),
        case!("sysctl_not_namespaced_refused", sysctl_not_namespaced_refused),
        case!("sysctl_kernel_refused", sysctl_kernel_refused),
        case!("pod_pid1_reaps_zombies", pod_pid1_reaps_zombies),
        case!("privileged_container_in_unprivileged_pod_refused", privileged_in_unprivileged_pod),
        case!("apparmor_localhost_missing_refused", apparmor_localhost_missing_refused),
        case!("apparmor_runtime_default_and_unconfined_run", apparmor_runtime_default_and_unconfined_run),
        case!("selinux_options_without_selinux", selinux_options_without_selinux),
        case!("status_reports_mac_support", status_reports_mac_support),
    ]
}

fn host_sysctl(path: &str) -> Result<String> {
    Ok(std::fs::read_to_string(format!("/proc/sys/{path}")).with_context(|| format!("read /proc/sys/{path}"))?.trim().to_string())
}

/// Runs `script` (sh -c) in `pod` with security context `sc` to its exit; returns the stdout
/// lines and the exit code.
async fn run_in(ctx: &Ctx, pod: &Pod, name: &str, sc: Sc, script: &str) -> Result<(i32, Vec<String>)> {
    let mut cfg = ctx.container_config(name, &ctx.images.busybox, &["sh", "-c", script]);
    cfg.linux.get_or_insert_with(Default::default).security_context = Some(sc);
    let id = ctx.create_with(pod, cfg).await?;
    ctx.rt()
        .start_container(cri::StartContainerRequest { container_id: id.clone() })
        .await
        .with_context(|| format!("StartContainer {name}"))?;
    let st = ctx.wait_container_state(&id, cri::ContainerState::ContainerExited, Duration::from_secs(60)).await?;
    let lines = read_log(pod, &st, 0).await?;
    Ok((st.exit_code, lines.into_iter().filter(|l| l.stream == "stdout").map(|l| l.text).collect()))
}

/// Runs `f` on a fresh pod made from `pc`, then removes the pod whatever `f` returned.
async fn with_pod<T>(ctx: &Ctx, pc: cri::PodSandboxConfig, f: impl AsyncFnOnce(&Pod) -> Result<T>) -> Result<T> {
    let pod = ctx.run_pod_with(pc).await?;
    let r = f(&pod).await;
    let removed = ctx.remove_pod(&pod.id).await;
    let v = r?;
    removed?;
    Ok(v)
}

/// A label only this pod config carries, to find it in ListPodSandbox.
fn mark(ctx: &Ctx, pc: &mut cri::PodSandboxConfig) -> (String, String) {
    let v = ctx.unique();
    pc.labels.insert("berth-conformance/case".into(), v.clone());
    ("berth-conformance/case".into(), v)
}

/// RunPodSandbox with `pc` must fail (berth: InvalidArgument whose message contains `named`),
/// and no pod with its label may be listed afterwards.
async fn pod_refused(ctx: &Ctx, case: &str, mut pc: cri::PodSandboxConfig, named: &str) -> Result<()> {
    let (k, v) = mark(ctx, &mut pc);
    std::fs::create_dir_all(&pc.log_directory).ok();
    let r = ctx.rt().run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(pc), runtime_handler: String::new() }).await;
    let sel: HashMap<String, String> = [(k, v)].into();
    let left = ctx
        .rt()
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: Some(cri::PodSandboxFilter { label_selector: sel, ..Default::default() }) })
        .await
        .context("ListPodSandbox")?
        .into_inner()
        .items;
    for p in &left {
        let _ = ctx.remove_pod(&p.id).await;
    }
    match r {
        Ok(resp) => bail!("RunPodSandbox succeeded ({}), expected a refusal naming {named}", resp.into_inner().pod_sandbox_id),
        Err(s) => {
            eprintln!("note {case}: code {:?}: {}", s.code(), s.message());
            if ctx.kind == TargetKind::Berth {
                check(s.code() == tonic::Code::InvalidArgument, || {
                    format!("code {:?} ({}), expected InvalidArgument", s.code(), s.message())
                })?;
                check(s.message().contains(named), || format!("message {:?} does not name {named}", s.message()))?;
            }
        }
    }
    check(left.is_empty(), || format!("the refused RunPodSandbox left pods {:?}", left.iter().map(|p| &p.id).collect::<Vec<_>>()))
}

/// CreateContainer with `sc` in a fresh pod (privileged when `pod_privileged`) must fail
/// (berth: InvalidArgument whose message contains every `named`); no container is left.
async fn container_refused(ctx: &Ctx, case: &str, pod_privileged: bool, sc: Sc, named: &[&str]) -> Result<()> {
    let mut pc = ctx.pod_config(case, &[]);
    if pod_privileged {
        pc.linux.get_or_insert_with(Default::default).security_context.get_or_insert_with(Default::default).privileged = true;
    }
    ctx.ensure_image(&ctx.images.busybox).await?;
    let (r, listed) = with_pod(ctx, pc, async |pod: &Pod| {
        let mut cfg = ctx.container_config(case, &ctx.images.busybox, &["true"]);
        cfg.linux.get_or_insert_with(Default::default).security_context = Some(sc);
        let r = ctx.create_request(pod, cfg).await;
        let filter = cri::ContainerFilter { pod_sandbox_id: pod.id.clone(), ..Default::default() };
        let listed = ctx
            .rt()
            .list_containers(cri::ListContainersRequest { filter: Some(filter) })
            .await
            .context("ListContainers")?
            .into_inner()
            .containers;
        Ok((r, listed))
    })
    .await?;
    match r {
        Ok(resp) => bail!("CreateContainer succeeded ({}), expected a refusal naming {named:?}", resp.into_inner().container_id),
        Err(s) => {
            eprintln!("note {case}: code {:?}: {}", s.code(), s.message());
            if ctx.kind == TargetKind::Berth {
                check(s.code() == tonic::Code::InvalidArgument, || {
                    format!("code {:?} ({}), expected InvalidArgument", s.code(), s.message())
                })?;
                for n in named {
                    check(s.message().contains(n), || format!("message {:?} does not name {n}", s.message()))?;
                }
            }
        }
    }
    check(listed.is_empty(), || format!("the refused CreateContainer left containers {listed:?}"))
}

/// A pod with `net.ipv4.ip_unprivileged_port_start=0` and `kernel.shm_rmid_forced=1`: a
/// container reads both values from /proc/sys; the host's values are unchanged.
pub async fn sysctl_namespaced_applied(ctx: &Ctx) -> Result<()> {
    let host_before = (host_sysctl("net/ipv4/ip_unprivileged_port_start")?, host_sysctl("kernel/shm_rmid_forced")?);
    let want_port = if host_before.0 == "0" { "80" } else { "0" };
    let want_rmid = if host_before.1 == "1" { "0" } else { "1" };
    let mut pc = ctx.pod_config("sysctl-ok", &[]);
    let l = pc.linux.get_or_insert_with(Default::default);
    l.sysctls.insert("net.ipv4.ip_unprivileged_port_start".into(), want_port.into());
    l.sysctls.insert("kernel.shm_rmid_forced".into(), want_rmid.into());
    let script = "cat /proc/sys/net/ipv4/ip_unprivileged_port_start /proc/sys/kernel/shm_rmid_forced";
    let (code, out) = with_pod(ctx, pc, async |pod: &Pod| run_in(ctx, pod, "sysctl-ok", Sc::default(), script).await).await?;
    check(code == 0 && out == [want_port, want_rmid], || {
        format!("{script:?}: exit {code}, printed {out:?}, expected [{want_port}, {want_rmid}]")
    })?;
    let host_after = (host_sysctl("net/ipv4/ip_unprivileged_port_start")?, host_sysctl("kernel/shm_rmid_forced")?);
    check(host_after == host_before, || format!("host sysctls changed: {host_before:?} -> {host_after:?}"))
}

/// A host-network pod asking for a `net.*` sysctl is refused before anything is created.
pub async fn sysctl_host_network_net_refused(ctx: &Ctx) -> Result<()> {
    let before = host_sysctl("net/ipv4/ip_unprivileged_port_start")?;
    let mut pc = ctx.pod_config("sysctl-hostnet", &[]);
    // Like kubelet, no hostname for a host-network pod (containerd 1.6 fails one that has it,
    // for a reason that is not the sysctl).
    pc.hostname = String::new();
    let l = pc.linux.get_or_insert_with(Default::default);
    l.sysctls.insert("net.ipv4.ip_unprivileged_port_start".into(), if before == "0" { "80" } else { "0" }.into());
    l.security_context.get_or_insert_with(Default::default).namespace_options =
        Some(cri::NamespaceOption { network: cri::NamespaceMode::Node as i32, ..Default::default() });
    pod_refused(ctx, "sysctl_host_network_net_refused", pc, "net.ipv4.ip_unprivileged_port_start").await?;
    let after = host_sysctl("net/ipv4/ip_unprivileged_port_start")?;
    check(after == before, || format!("host net.ipv4.ip_unprivileged_port_start changed: {before} -> {after}"))
}

/// `kernel.panic` (not namespaced) is refused before anything is created; the host's value
/// is unchanged.
pub async fn sysctl_not_namespaced_refused(ctx: &Ctx) -> Result<()> {
    let before = host_sysctl("kernel/panic")?;
    let mut pc = ctx.pod_config("sysctl-panic", &[]);
    let want = if before == "7" { "8" } else { "7" };
    pc.linux.get_or_insert_with(Default::default).sysctls.insert("kernel.panic".into(), want.into());
    pod_refused(ctx, "sysctl_not_namespaced_refused", pc, "kernel.panic").await?;
    let after = host_sysctl("kernel/panic")?;
    check(after == before, || format!("host kernel.panic changed: {before} -> {after}"))
}

/// Namespaced-looking sysctls the kernel refuses in a pod's namespaces: a key it lacks, one a
/// non-initial network namespace may not write, and a bad value. Refused (berth: InvalidArgument
/// naming the key, before the pod exists), nothing left.
pub async fn sysctl_kernel_refused(ctx: &Ctx) -> Result<()> {
    for (key, value) in [("net.ipv4.berth_no_such_key", "1"), ("net.core.rmem_max", "1000000"), ("net.ipv4.ip_forward", "abc")] {
        let mut pc = ctx.pod_config("sysctl-kernel", &[]);
        pc.linux.get_or_insert_with(Default::default).sysctls.insert(key.into(), value.into());
        pod_refused(ctx, "sysctl_kernel_refused", pc, key).await.with_context(|| format!("{key} = {value}"))?;
    }
    Ok(())
}

/// Processes in state Z, as `pid comm` lines, from an exec in `id`.
async fn zombies(ctx: &Ctx, id: &str) -> Result<Vec<String>> {
    let r =
        ctx.exec(id, &["sh", "-c", "sed -n 's/^\\([0-9]*\\) (\\(.*\\)) Z .*/\\1 \\2/p' /proc/[0-9]*/stat 2>/dev/null; true"], 10).await?;
    Ok(String::from_utf8_lossy(&r.stdout).lines().map(str::to_string).collect())
}

/// A pod sharing one PID namespace (PID mode POD, kubelet's `shareProcessNamespace`): a
/// container's orphan is re-parented to PID 1 of the pod, which is the infra (not the
/// container's command), and reaped when it exits: no zombie remains.
pub async fn pod_pid1_reaps_zombies(ctx: &Ctx) -> Result<()> {
    let pc = ctx.shared_pid_pod_config("reaper", &[]);
    with_pod(ctx, pc, async |pod: &Pod| {
        // Three orphans: each `( ... &)` subshell exits at once, leaving its sleep to PID 1. They
        // sleep long enough to be seen on a slow (emulated) machine; their end is polled for.
        let script = "(sleep 4 &); (sleep 4 &); (sleep 4 &); exec sleep 60";
        let id = ctx.start_container(pod, "reaper", &ctx.images.busybox, &["sh", "-c", script]).await?;
        ctx.wait_container_state(&id, cri::ContainerState::ContainerRunning, Duration::from_secs(30)).await?;
        let r = ctx.exec(&id, &["cat", "/proc/1/cmdline"], 10).await?;
        let pid1 = String::from_utf8_lossy(&r.stdout).replace('\0', " ").trim().to_string();
        eprintln!("note pod_pid1_reaps_zombies: PID 1 is {pid1:?}");
        check(!pid1.is_empty() && !pid1.contains("sleep") && !pid1.starts_with("sh"), || {
            format!("PID 1 of the pod is {pid1:?}: expected the infra process, not the container's own command")
        })?;
        if ctx.kind == TargetKind::Berth {
            check(pid1.contains("berth-pause"), || format!("PID 1 is {pid1:?}, expected berth-pause"))?;
        }
        // While they sleep, the orphans' parent is PID 1 (field 4 of /proc/PID/stat).
        let r = ctx.exec(&id, &["sh", "-c", "for f in /proc/[0-9]*/stat; do read -r l < $f; set -- $l; [ \"$2\" = '(sleep)' ] && [ \"$4\" = 1 ] && echo orphan; done; true"], 10).await?;
        let orphans = String::from_utf8_lossy(&r.stdout).lines().count();
        check(orphans == 3, || format!("{orphans} sleep processes have PID 1 as parent, expected the 3 orphans"))?;
        // Once they have exited (4 s after they started), nothing of them is left: no zombie,
        // no process listed under PID 1.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let z = zombies(ctx, &id).await?;
            let r = ctx.exec(&id, &["sh", "-c", "for f in /proc/[0-9]*/stat; do read -r l < $f; set -- $l; [ \"$2\" = '(sleep)' ] && [ \"$4\" = 1 ] && echo orphan; done; true"], 10).await?;
            let left = String::from_utf8_lossy(&r.stdout).lines().count();
            if z.is_empty() && left == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("30 s on: zombies {z:?}, {left} orphans still listed under PID 1");
            }
        }
    })
    .await
}

/// A privileged container in a pod that is not privileged is refused (berth: InvalidArgument
/// naming `config.linux.security_context.privileged`); nothing is left.
pub async fn privileged_in_unprivileged_pod(ctx: &Ctx) -> Result<()> {
    let sc = Sc { privileged: true, ..Default::default() };
    container_refused(ctx, "privileged_container_in_unprivileged_pod_refused", false, sc, &["config.linux.security_context.privileged"])
        .await
}

fn apparmor_sc(t: ProfileType, localhost: &str) -> Sc {
    // kubelet (1.30+) fills both the SecurityProfile and the deprecated string.
    let deprecated = match t {
        ProfileType::RuntimeDefault => "runtime/default".to_string(),
        ProfileType::Unconfined => "unconfined".to_string(),
        ProfileType::Localhost => format!("localhost/{localhost}"),
    };
    #[allow(deprecated)]
    Sc {
        apparmor: Some(cri::SecurityProfile { profile_type: t as i32, localhost_ref: localhost.into() }),
        apparmor_profile: deprecated,
        ..Default::default()
    }
}

/// A Localhost AppArmor profile the host lacks is refused, naming the profile (on this machine
/// AppArmor is off, so every Localhost profile is missing).
pub async fn apparmor_localhost_missing_refused(ctx: &Ctx) -> Result<()> {
    let name = format!("berth-no-such-profile-{}", std::process::id());
    let sc = apparmor_sc(ProfileType::Localhost, &name);
    container_refused(ctx, "apparmor_localhost_missing_refused", false, sc, &["apparmor", &name]).await
}

/// RuntimeDefault and Unconfined AppArmor requests run (on a host without AppArmor: no profile).
///
/// containerd 1.6 refuses RuntimeDefault on a host without AppArmor ("apparmor is not
/// supported"; 1.7 and CRI-O run it unconfined): on targets other than berth that refusal is
/// noted, not failed.
pub async fn apparmor_runtime_default_and_unconfined_run(ctx: &Ctx) -> Result<()> {
    let pc = ctx.pod_config("apparmor-ok", &[]);
    with_pod(ctx, pc, async |pod: &Pod| {
        for (n, t) in [("aa-default", ProfileType::RuntimeDefault), ("aa-unconfined", ProfileType::Unconfined)] {
            match run_in(ctx, pod, n, apparmor_sc(t, ""), "echo ran").await {
                Ok((code, out)) => check(code == 0 && out == ["ran"], || format!("{t:?}: exit {code}, printed {out:?}"))?,
                Err(e)
                    if ctx.kind != TargetKind::Berth
                        && t == ProfileType::RuntimeDefault
                        && format!("{e:#}").contains("apparmor is not supported") =>
                {
                    eprintln!("note apparmor_runtime_default_and_unconfined_run: {t:?} refused by this runtime: {e:#}");
                }
                Err(e) => return Err(e.context(format!("AppArmor {t:?}"))),
            }
        }
        Ok(())
    })
    .await
}

/// selinux_options on a host without SELinux: ignored (berth, containerd and CRI-O), the container
/// runs. Skipped on an SELinux host.
pub async fn selinux_options_without_selinux(ctx: &Ctx) -> Result<()> {
    if std::path::Path::new("/sys/fs/selinux/enforce").exists() {
        return skip("this host has SELinux: the ignore path is not exercised");
    }
    let opts =
        cri::SeLinuxOption { user: "system_u".into(), role: "system_r".into(), r#type: "container_t".into(), level: "s0:c1,c2".into() };
    let sc = Sc { selinux_options: Some(opts), ..Default::default() };
    let pc = ctx.pod_config("selinux", &[]);
    let (code, out) = with_pod(ctx, pc, async |pod: &Pod| run_in(ctx, pod, "selinux", sc, "echo ran").await).await?;
    check(code == 0 && out == ["ran"], || format!("exit {code}, printed {out:?}"))
}

/// Status(verbose) reports what the host supports: berth puts `{"apparmor": bool, "selinux":
/// bool}` in `info["features"]`, matching `/sys` (AppArmor: `parameters/enabled` is `Y`;
/// SELinux: selinuxfs with `enforce`). Other runtimes: skipped (containerd reports no such key).
pub async fn status_reports_mac_support(ctx: &Ctx) -> Result<()> {
    if ctx.kind != TargetKind::Berth {
        return skip("only berth reports info[\"features\"]");
    }
    let r = ctx.rt().status(cri::StatusRequest { verbose: true }).await.context("Status")?.into_inner();
    let text = r
        .info
        .get("features")
        .context("Status(verbose).info has no \"features\" key (expected {\"apparmor\": bool, \"selinux\": bool})")?;
    let v: serde_json::Value = serde_json::from_str(text).with_context(|| format!("info[\"features\"] is not JSON: {text:?}"))?;
    let apparmor = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled").map(|s| s.trim() == "Y").unwrap_or(false);
    let selinux = std::path::Path::new("/sys/fs/selinux/enforce").exists();
    check(v["apparmor"] == apparmor && v["selinux"] == selinux, || {
        format!("info[\"features\"] = {text}, expected apparmor {apparmor} and selinux {selinux}")
    })
}
