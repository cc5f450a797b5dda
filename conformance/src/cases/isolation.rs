//! Mounts and namespaces (issue #5): recursive read-only mounts (and their refusals), mount
//! propagation with the host side prepared by the test (BIDIRECTIONAL, HOST_TO_CONTAINER, a
//! private source refused), hostPath symlinks (and a dangling one refused), CRI devices for
//! unprivileged containers (rwm, r, a non-device refused) and PID namespace TARGET (sees the
//! target's process; a missing or exited target refused).
//!
//! Every case removes its pod and undoes its host mounts (a [`HostMounts`] guard unmounts in
//! reverse order even when the case fails) and removes its temp dirs.

use super::util::{check, read_log};
use super::Case;
use crate::ctx::{skip, Ctx, Pod};
use crate::daemon::TargetKind;
use anyhow::{bail, Context, Result};
use berth::cri::v1 as cri;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The cases of this module, in run order.
pub fn cases() -> Vec<Case> {
    vec![
        case!("mount_recursive_read_only", mount_recursive_read_only),
        case!("mount_readonly_submount_writable", mount_readonly_submount_writable),
        case!("mount_recursive_read_only_refusals", mount_recursive_read_only_refusals),
        case!("mount_propagation_bidirectional", mount_propagation_bidirectional),
        case!("mount_propagation_host_to_container", mount_propagation_host_to_container),
        case!("mount_propagation_private_source_refused", mount_propagation_private_source_refused),
        case!("hostpath_symlinks", hostpath_symlinks),
        case!("hostpath_dangling_symlink_refused", hostpath_dangling_symlink_refused),
        case!("hostpath_relative_refused", hostpath_relative_refused),
        case!("device_rwm_writable", device_rwm_writable),
        case!("device_read_permission_only", device_read_permission_only),
        case!("device_not_a_device_refused", device_not_a_device_refused),
        case!("pid_target_sees_target_process", pid_target_sees_target_process),
        case!("pid_target_missing_or_exited_refused", pid_target_missing_or_exited_refused),
    ]
}

type Sc = cri::LinuxContainerSecurityContext;

// ---- host mounts ---------------------------------------------------------------------------

/// Host mounts a case made; unmounted in reverse order on drop (lazily if busy), so a failing
/// case leaves none. Also removes `dir` (the case's temp dir) once everything is unmounted.
struct HostMounts {
    dir: PathBuf,
    points: Vec<PathBuf>,
}

impl HostMounts {
    /// A fresh temp dir under the suite's tmp.
    fn new(ctx: &Ctx, name: &str) -> Result<HostMounts> {
        let dir = ctx.tmp.join(format!("iso-{name}-{}", ctx.unique()));
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        Ok(HostMounts { dir, points: Vec::new() })
    }

    /// `mount <args...> <target>`; `target` is recorded for unmounting.
    fn mount(&mut self, args: &[&str], target: &Path) -> Result<()> {
        run_cmd("mount", args.iter().copied().chain([target.to_str().context("non-UTF-8 path")?]))?;
        self.points.push(target.to_path_buf());
        Ok(())
    }

    /// A tmpfs at `target` (created), recorded for unmounting.
    fn tmpfs(&mut self, target: &Path) -> Result<()> {
        std::fs::create_dir_all(target).with_context(|| format!("mkdir {}", target.display()))?;
        self.mount(&["-t", "tmpfs", "-o", "size=1m", "berth-iso"], target)
    }

    /// Makes `target` its own bind mount and a shared one (`mount --bind t t; mount
    /// --make-shared t`), so it can be the source of BIDIRECTIONAL/HOST_TO_CONTAINER mounts.
    fn shared_bind(&mut self, target: &Path) -> Result<()> {
        std::fs::create_dir_all(target).with_context(|| format!("mkdir {}", target.display()))?;
        let t = target.to_str().context("non-UTF-8 path")?;
        self.mount(&["--bind", t], target)?;
        run_cmd("mount", ["--make-shared", t])
    }

    /// Records a mount that appeared at `target` by propagation, so it is unmounted too.
    fn adopt(&mut self, target: &Path) {
        self.points.push(target.to_path_buf());
    }
}

impl Drop for HostMounts {
    fn drop(&mut self) {
        for p in self.points.iter().rev() {
            if is_mount_point(p) && Command::new("umount").arg(p).status().map(|s| !s.success()).unwrap_or(true) {
                let _ = Command::new("umount").arg("-l").arg(p).status();
            }
        }
        if self.points.iter().all(|p| !is_mount_point(p)) {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("isolation: mounts left under {}", self.dir.display());
        }
    }
}

fn run_cmd<'a>(prog: &str, args: impl IntoIterator<Item = &'a str>) -> Result<()> {
    let args: Vec<&str> = args.into_iter().collect();
    let out = Command::new(prog).args(&args).output().with_context(|| format!("run {prog} {args:?}"))?;
    if !out.status.success() {
        bail!("{prog} {args:?}: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// The host's mount points (field 5 of /proc/self/mountinfo, octal escapes decoded).
fn mount_points() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(berth::mountinfo::unescape))
        .collect()
}

fn is_mount_point(p: &Path) -> bool {
    let want = p.to_string_lossy();
    mount_points().iter().any(|m| *m == want)
}

// ---- running containers ----------------------------------------------------------------------

/// What a case's container gets beyond the default config.
#[derive(Default, Clone)]
struct Extra {
    pod_privileged: bool,
    sc: Sc,
    mounts: Vec<cri::Mount>,
    devices: Vec<cri::Device>,
}

fn config(ctx: &Ctx, name: &str, cmd: &[&str], x: &Extra) -> cri::ContainerConfig {
    let mut cfg = ctx.container_config(name, &ctx.images.busybox, cmd);
    cfg.linux.get_or_insert_with(Default::default).security_context = Some(x.sc.clone());
    cfg.mounts = x.mounts.clone();
    cfg.devices = x.devices.clone();
    cfg
}

async fn pod(ctx: &Ctx, name: &str, privileged: bool) -> Result<Pod> {
    let mut pc = ctx.pod_config(name, &[]);
    if privileged {
        pc.linux.get_or_insert_with(Default::default).security_context.get_or_insert_with(Default::default).privileged = true;
    }
    ctx.run_pod_with(pc).await
}

/// Creates and starts a container in `pod`; returns its id.
async fn start(ctx: &Ctx, pod: &Pod, cfg: cri::ContainerConfig) -> Result<String> {
    let id = ctx.create_with(pod, cfg).await?;
    ctx.rt()
        .start_container(cri::StartContainerRequest { container_id: id.clone() })
        .await
        .with_context(|| format!("StartContainer {id}"))?;
    Ok(id)
}

/// Runs `script` (sh -c) to completion in a fresh pod with `x`; returns its stdout lines. The
/// pod is always removed.
async fn run_script(ctx: &Ctx, name: &str, x: &Extra, script: &str) -> Result<Vec<String>> {
    let pod = pod(ctx, name, x.pod_privileged).await?;
    let r = async {
        let id = start(ctx, &pod, config(ctx, name, &["sh", "-c", script], x)).await?;
        let st = ctx.wait_container_state(&id, cri::ContainerState::ContainerExited, Duration::from_secs(60)).await?;
        let lines = read_log(&pod, &st, 0).await?;
        Ok::<_, anyhow::Error>(lines.into_iter().filter(|l| l.stream == "stdout").map(|l| l.text).collect())
    }
    .await;
    let rm = ctx.remove_pod(&pod.id).await;
    let out = r?;
    rm?;
    Ok(out)
}

async fn expect_output(ctx: &Ctx, name: &str, x: &Extra, script: &str, want: &[&str]) -> Result<()> {
    let out = run_script(ctx, name, x, script).await?;
    check(out == want, || format!("{script:?} printed {out:?}, expected {want:?}"))
}

/// What a refusal must look like on berth: the gRPC code(s) and a text the message names.
struct Refusal<'a> {
    codes: &'a [tonic::Code],
    named: &'a str,
}

/// CreateContainer of `cfg` in `pod` must fail; on berth with one of `want.codes` and a message
/// naming `want.named`. The pod must hold no container but `keep` afterwards.
async fn expect_refused(ctx: &Ctx, case: &str, pod: &Pod, cfg: cri::ContainerConfig, keep: &[&str], want: &Refusal<'_>) -> Result<()> {
    ctx.ensure_image(&ctx.images.busybox).await?;
    let r = ctx.create_request(pod, cfg).await;
    let listed: Vec<String> = ctx
        .rt()
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter { pod_sandbox_id: pod.id.clone(), ..Default::default() }),
        })
        .await
        .context("ListContainers")?
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.id)
        .filter(|id| !keep.contains(&id.as_str()))
        .collect();
    match r {
        Ok(resp) => {
            bail!("{case}: CreateContainer succeeded ({}), expected a refusal naming {}", resp.into_inner().container_id, want.named)
        }
        Err(s) => {
            eprintln!("note {case}: code {:?}: {}", s.code(), s.message());
            if ctx.kind == TargetKind::Berth {
                check(want.codes.contains(&s.code()), || {
                    format!("{case}: code {:?} ({}), expected one of {:?}", s.code(), s.message(), want.codes)
                })?;
                check(s.message().contains(want.named), || format!("{case}: message {:?} does not name {}", s.message(), want.named))?;
            }
        }
    }
    check(listed.is_empty(), || format!("{case}: refused CreateContainer left containers {listed:?}"))
}

/// A fresh pod; `expect_refused` of `cfg`; the pod is removed.
async fn refused_in_new_pod(ctx: &Ctx, case: &str, privileged: bool, cfg: cri::ContainerConfig, want: &Refusal<'_>) -> Result<()> {
    let p = pod(ctx, case, privileged).await?;
    let r = expect_refused(ctx, case, &p, cfg, &[], want).await;
    let rm = ctx.remove_pod(&p.id).await;
    r?;
    rm
}

fn bind(host: &Path, container: &str, readonly: bool, propagation: cri::MountPropagation) -> cri::Mount {
    cri::Mount {
        container_path: container.into(),
        host_path: host.display().to_string(),
        readonly,
        propagation: propagation as i32,
        ..Default::default()
    }
}

const INVALID: &[tonic::Code] = &[tonic::Code::InvalidArgument];

// ---- recursive read-only -----------------------------------------------------------------

/// Whether Status reports `recursive_read_only_mounts` for the default handler.
async fn status_reports_rro(ctx: &Ctx) -> Result<bool> {
    let st = ctx.rt().status(cri::StatusRequest { verbose: false }).await.context("Status")?.into_inner();
    Ok(st
        .runtime_handlers
        .iter()
        .find(|h| h.name.is_empty())
        .or_else(|| st.runtime_handlers.first())
        .and_then(|h| h.features.as_ref())
        .is_some_and(|f| f.recursive_read_only_mounts))
}

/// berth must report rro (runc 1.1.5 lists it); a runtime that does not is skipped.
async fn require_rro(ctx: &Ctx) -> Result<()> {
    if status_reports_rro(ctx).await? {
        return Ok(());
    }
    if ctx.kind == TargetKind::Berth {
        bail!("Status runtime_handlers[].features.recursive_read_only_mounts is false on berth (runc 1.1.5 lists `rro`)");
    }
    skip("the runtime does not report recursive_read_only_mounts (containerd 1.6 predates it)")
}

/// A host dir with a file at the top and a tmpfs submount `sub`.
fn dir_with_submount(ctx: &Ctx, name: &str) -> Result<HostMounts> {
    let mut h = HostMounts::new(ctx, name)?;
    let sub = h.dir.join("sub");
    h.tmpfs(&sub)?;
    Ok(h)
}

const WRITE_TOP_AND_SUB: &str = "touch /data/top 2>/dev/null; echo top=$?; touch /data/sub/x 2>/dev/null; echo sub=$?";

/// recursive_read_only + readonly: a write into the host dir's submount fails inside too; Status
/// reports recursive_read_only_mounts.
pub async fn mount_recursive_read_only(ctx: &Ctx) -> Result<()> {
    require_rro(ctx).await?;
    let h = dir_with_submount(ctx, "rro")?;
    let mut m = bind(&h.dir, "/data", true, cri::MountPropagation::PropagationPrivate);
    m.recursive_read_only = true;
    let x = Extra { mounts: vec![m], ..Default::default() };
    expect_output(ctx, "rro", &x, WRITE_TOP_AND_SUB, &["top=1", "sub=1"]).await
}

/// Plain readonly (not recursive) of the same layout: the top is read-only, the submount stays
/// writable — what recursive_read_only exists to fix.
pub async fn mount_readonly_submount_writable(ctx: &Ctx) -> Result<()> {
    let h = dir_with_submount(ctx, "ro")?;
    let x = Extra { mounts: vec![bind(&h.dir, "/data", true, cri::MountPropagation::PropagationPrivate)], ..Default::default() };
    expect_output(ctx, "ro-sub", &x, WRITE_TOP_AND_SUB, &["top=1", "sub=0"]).await
}

/// recursive_read_only without readonly, and with propagation HOST_TO_CONTAINER: both refused
/// (berth: InvalidArgument naming recursive_read_only), nothing left.
pub async fn mount_recursive_read_only_refusals(ctx: &Ctx) -> Result<()> {
    require_rro(ctx).await?;
    let h = HostMounts::new(ctx, "rro-refuse")?;
    let mut not_ro = bind(&h.dir, "/data", false, cri::MountPropagation::PropagationPrivate);
    not_ro.recursive_read_only = true;
    let x = Extra { mounts: vec![not_ro], ..Default::default() };
    let want = Refusal { codes: INVALID, named: "recursive_read_only" };
    refused_in_new_pod(ctx, "rro-not-ro", false, config(ctx, "rro-not-ro", &["true"], &x), &want).await?;

    let mut slave = bind(&h.dir, "/data", true, cri::MountPropagation::PropagationHostToContainer);
    slave.recursive_read_only = true;
    let x = Extra { mounts: vec![slave], ..Default::default() };
    refused_in_new_pod(ctx, "rro-propagation", false, config(ctx, "rro-propagation", &["true"], &x), &want).await
}

// ---- propagation -------------------------------------------------------------------------

/// Polls `cond` every 100 ms for up to `limit`.
async fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// BIDIRECTIONAL from a shared host bind mount, privileged pod and container: a tmpfs the
/// container mounts inside shows up on the host with the file written into it.
pub async fn mount_propagation_bidirectional(ctx: &Ctx) -> Result<()> {
    let mut h = HostMounts::new(ctx, "bidi")?;
    let shared = h.dir.join("shared");
    h.shared_bind(&shared)?;
    let inner = shared.join("inner");
    h.adopt(&inner);
    let x = Extra {
        pod_privileged: true,
        sc: Sc { privileged: true, ..Default::default() },
        mounts: vec![bind(&shared, "/mnt/shared", false, cri::MountPropagation::PropagationBidirectional)],
        ..Default::default()
    };
    let p = pod(ctx, "bidi", true).await?;
    let r = async {
        let script = "mkdir -p /mnt/shared/inner && mount -t tmpfs -o size=1m bidi /mnt/shared/inner && echo from-container > /mnt/shared/inner/f && sleep 3600";
        let id = start(ctx, &p, config(ctx, "bidi", &["sh", "-c", script], &x)).await?;
        let f = inner.join("f");
        let seen = wait_for(Duration::from_secs(20), || std::fs::read_to_string(&f).is_ok_and(|s| s.trim() == "from-container")).await;
        let st = ctx.container_status(&id).await?;
        check(seen && is_mount_point(&inner), || {
            format!(
                "host does not see the container's tmpfs at {} (mount point: {}, container state {}: {})",
                inner.display(),
                is_mount_point(&inner),
                crate::ctx::state_name(st.state),
                st.message
            )
        })
    }
    .await;
    let rm = ctx.remove_pod(&p.id).await;
    drop(h);
    r?;
    rm
}

/// HOST_TO_CONTAINER from a shared host bind mount: a tmpfs the host mounts after the container
/// started is seen inside (by ExecSync).
pub async fn mount_propagation_host_to_container(ctx: &Ctx) -> Result<()> {
    let mut h = HostMounts::new(ctx, "h2c")?;
    let shared = h.dir.join("shared");
    h.shared_bind(&shared)?;
    let x =
        Extra { mounts: vec![bind(&shared, "/mnt/shared", true, cri::MountPropagation::PropagationHostToContainer)], ..Default::default() };
    let p = pod(ctx, "h2c", false).await?;
    let r = async {
        let id = start(ctx, &p, config(ctx, "h2c", &["sleep", "3600"], &x)).await?;
        ctx.wait_container_state(&id, cri::ContainerState::ContainerRunning, Duration::from_secs(30)).await?;
        let late = shared.join("late");
        h.tmpfs(&late)?;
        std::fs::write(late.join("f"), "from-host\n").context("write the late tmpfs")?;
        let out = ctx.exec(&id, &["cat", "/mnt/shared/late/f"], 10).await?;
        let text = String::from_utf8_lossy(&out.stdout);
        check(out.exit_code == 0 && text.trim() == "from-host", || {
            format!(
                "inside: cat /mnt/shared/late/f: exit {} stdout {text:?} stderr {:?}",
                out.exit_code,
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }
    .await;
    let rm = ctx.remove_pod(&p.id).await;
    drop(h);
    r?;
    rm
}

/// BIDIRECTIONAL (and HOST_TO_CONTAINER) from a dir on a private mount: refused (berth:
/// InvalidArgument naming the path and `mount --make-rshared`), nothing left.
pub async fn mount_propagation_private_source_refused(ctx: &Ctx) -> Result<()> {
    let h = HostMounts::new(ctx, "private")?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("read mountinfo")?;
    let mounts = berth::mountinfo::parse(&info);
    let canon = h.dir.canonicalize()?;
    if berth::mountinfo::mount_of(&mounts, &canon).is_some_and(|m| m.shared || m.slave) {
        return skip("the suite's temp dir is on a shared or slave mount here");
    }
    let named = canon.display().to_string();
    let want = Refusal { codes: &[tonic::Code::InvalidArgument, tonic::Code::FailedPrecondition], named: &named };
    for (case, prop) in [
        ("private-bidi", cri::MountPropagation::PropagationBidirectional),
        ("private-h2c", cri::MountPropagation::PropagationHostToContainer),
    ] {
        let x = Extra {
            pod_privileged: true,
            sc: Sc { privileged: true, ..Default::default() },
            mounts: vec![bind(&h.dir, "/mnt/p", false, prop)],
            ..Default::default()
        };
        refused_in_new_pod(ctx, case, true, config(ctx, case, &["true"], &x), &want).await?;
    }
    Ok(())
}

// ---- hostPath symlinks -------------------------------------------------------------------

/// hostPath volumes that are symlinks (one to a dir, one to a file) show the target's content.
pub async fn hostpath_symlinks(ctx: &Ctx) -> Result<()> {
    let h = HostMounts::new(ctx, "symlinks")?;
    let (tdir, tfile) = (h.dir.join("target-dir"), h.dir.join("target-file"));
    std::fs::create_dir(&tdir)?;
    std::fs::write(tdir.join("inner"), "in-dir\n")?;
    std::fs::write(&tfile, "in-file\n")?;
    let (ldir, lfile) = (h.dir.join("link-dir"), h.dir.join("link-file"));
    std::os::unix::fs::symlink(&tdir, &ldir)?;
    std::os::unix::fs::symlink("target-file", &lfile)?; // relative link
    let x = Extra {
        mounts: vec![
            bind(&ldir, "/mnt/dir", true, cri::MountPropagation::PropagationPrivate),
            bind(&lfile, "/mnt/file", true, cri::MountPropagation::PropagationPrivate),
        ],
        ..Default::default()
    };
    let script = "cat /mnt/dir/inner; cat /mnt/file; test -d /mnt/dir && echo dir; test -f /mnt/file && echo file";
    expect_output(ctx, "symlinks", &x, script, &["in-dir", "in-file", "dir", "file"]).await
}

/// A hostPath that is a dangling symlink: refused (berth: InvalidArgument naming the path, as
/// containerd refuses it), the target is not created, nothing left.
pub async fn hostpath_dangling_symlink_refused(ctx: &Ctx) -> Result<()> {
    let h = HostMounts::new(ctx, "dangling")?;
    let target = h.dir.join("nowhere");
    let link = h.dir.join("dangling");
    std::os::unix::fs::symlink(&target, &link)?;
    let x = Extra { mounts: vec![bind(&link, "/mnt/d", false, cri::MountPropagation::PropagationPrivate)], ..Default::default() };
    let named = link.display().to_string();
    let want = Refusal { codes: INVALID, named: &named };
    refused_in_new_pod(ctx, "dangling", false, config(ctx, "dangling", &["true"], &x), &want).await?;
    check(!target.exists(), || format!("the dangling symlink's target {} was created", target.display()))
}

/// A relative host_path is refused (berth: InvalidArgument naming it) and nothing is created
/// relative to the daemon's working directory.
pub async fn hostpath_relative_refused(ctx: &Ctx) -> Result<()> {
    let rel = format!("berth-relative-{}/dir", ctx.unique());
    let x = Extra {
        mounts: vec![cri::Mount { container_path: "/mnt/rel".into(), host_path: rel.clone(), ..Default::default() }],
        ..Default::default()
    };
    let want = Refusal { codes: INVALID, named: &rel };
    let refusal = refused_in_new_pod(ctx, "relative", false, config(ctx, "relative", &["true"], &x), &want).await;
    let top = rel.split('/').next().unwrap_or_default().to_string();
    let mut made = Vec::new();
    if let Some(pid) = ctx.daemon_pid().await {
        if let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) {
            if cwd.join(&top).exists() {
                made.push(cwd.join(&top));
            }
        }
    }
    for p in &made {
        let _ = std::fs::remove_dir_all(p);
    }
    if let (Err(e), false) = (&refusal, ctx.kind == TargetKind::Berth) {
        eprintln!("note hostpath_relative_refused: {e:#}; created {made:?}");
        return skip("the runtime accepts a relative host_path (containerd 1.6 creates it under its working directory)");
    }
    refusal?;
    check(made.is_empty(), || format!("the refused mount created {made:?}"))
}

// ---- devices -----------------------------------------------------------------------------

fn device(host: &str, container: &str, permissions: &str) -> cri::Device {
    cri::Device { container_path: container.into(), host_path: host.into(), permissions: permissions.into() }
}

/// Opens `dev` for reading, then for writing, without transferring a byte (the device cgroup
/// checks at open).
fn device_script(dev: &str) -> String {
    format!("test -c {dev} && echo char; (: < {dev}) 2>/dev/null; echo read=$?; (: > {dev}) 2>/dev/null; echo write=$?")
}

/// Host /dev/null as /dev/xnull and /dev/loop-control as /dev/xloop, both "rwm", in an unprivileged
/// container: char devices, open for reading and for writing.
pub async fn device_rwm_writable(ctx: &Ctx) -> Result<()> {
    let x = Extra {
        devices: vec![device("/dev/null", "/dev/xnull", "rwm"), device("/dev/loop-control", "/dev/xloop", "rwm")],
        ..Default::default()
    };
    let script = format!("{}; {}", device_script("/dev/xnull"), device_script("/dev/xloop"));
    expect_output(ctx, "dev-rwm", &x, &script, &["char", "read=0", "write=0", "char", "read=0", "write=0"]).await
}

/// Permissions "r": opening for reading works, for writing is denied by the device cgroup.
/// /dev/loop-control (c 10:237; opening it does nothing), not /dev/null: /dev/null (c 1:3) is in every runtime's default allow
/// list with "rwm", so no CRI device rule can narrow it.
pub async fn device_read_permission_only(ctx: &Ctx) -> Result<()> {
    let x = Extra { devices: vec![device("/dev/loop-control", "/dev/xloop", "r")], ..Default::default() };
    let script = device_script("/dev/xloop");
    let out = run_script(ctx, "dev-r", &x, &script).await?;
    check(out.len() == 3 && out[0] == "char" && out[1] == "read=0" && out[2] != "write=0", || {
        format!("{script:?} printed {out:?}, expected char, read=0 and a failed write")
    })
}

/// A device whose host_path is a regular file: refused (berth: InvalidArgument naming the
/// path), nothing left.
pub async fn device_not_a_device_refused(ctx: &Ctx) -> Result<()> {
    let h = HostMounts::new(ctx, "notdev")?;
    let file = h.dir.join("plain-file");
    std::fs::write(&file, "x")?;
    let x = Extra {
        devices: vec![cri::Device {
            container_path: "/dev/xfile".into(),
            host_path: file.display().to_string(),
            permissions: "rwm".into(),
        }],
        ..Default::default()
    };
    let named = file.display().to_string();
    refused_in_new_pod(ctx, "notdev", false, config(ctx, "notdev", &["true"], &x), &Refusal { codes: INVALID, named: &named }).await
}

// ---- PID namespace TARGET ----------------------------------------------------------------

fn pid_target(target_id: &str) -> Sc {
    Sc {
        namespace_options: Some(cri::NamespaceOption {
            pid: cri::NamespaceMode::Target as i32,
            target_id: target_id.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Container B with PID mode TARGET=A (A runs `sleep 31337`) sees A's process in its `ps`.
pub async fn pid_target_sees_target_process(ctx: &Ctx) -> Result<()> {
    let p = pod(ctx, "pid-target", false).await?;
    let r = async {
        let a = start(ctx, &p, ctx.container_config("target", &ctx.images.busybox, &["sleep", "31337"])).await?;
        ctx.wait_container_state(&a, cri::ContainerState::ContainerRunning, Duration::from_secs(30)).await?;
        let x = Extra { sc: pid_target(&a), ..Default::default() };
        let b = start(ctx, &p, config(ctx, "joiner", &["sh", "-c", "ps -o args"], &x)).await?;
        let st = ctx.wait_container_state(&b, cri::ContainerState::ContainerExited, Duration::from_secs(60)).await?;
        let out: Vec<String> = read_log(&p, &st, 1).await?.into_iter().filter(|l| l.stream == "stdout").map(|l| l.text).collect();
        check(out.iter().any(|l| l.trim() == "sleep 31337"), || {
            format!("joiner's `ps -o args` printed {out:?}: no `sleep 31337` of the target")
        })
    }
    .await;
    let rm = ctx.remove_pod(&p.id).await;
    r?;
    rm
}

/// PID mode TARGET naming a container that does not exist, and one that has exited: refused
/// (berth: NotFound / FailedPrecondition naming the target), nothing but the target left.
pub async fn pid_target_missing_or_exited_refused(ctx: &Ctx) -> Result<()> {
    let p = pod(ctx, "pid-target-bad", false).await?;
    let r = async {
        let missing = format!("missing{}", ctx.unique().replace('-', ""));
        let cfg = config(ctx, "to-missing", &["true"], &Extra { sc: pid_target(&missing), ..Default::default() });
        let codes = [tonic::Code::NotFound, tonic::Code::FailedPrecondition, tonic::Code::InvalidArgument];
        expect_refused(ctx, "pid-target-missing", &p, cfg, &[], &Refusal { codes: &codes, named: &missing }).await?;

        let a = start(ctx, &p, ctx.container_config("exits", &ctx.images.busybox, &["true"])).await?;
        ctx.wait_container_state(&a, cri::ContainerState::ContainerExited, Duration::from_secs(60)).await?;
        let cfg = config(ctx, "to-exited", &["true"], &Extra { sc: pid_target(&a), ..Default::default() });
        let codes = [tonic::Code::FailedPrecondition, tonic::Code::NotFound];
        expect_refused(ctx, "pid-target-exited", &p, cfg, &[a.as_str()], &Refusal { codes: &codes, named: &a }).await
    }
    .await;
    let rm = ctx.remove_pod(&p.id).await;
    r?;
    rm
}
