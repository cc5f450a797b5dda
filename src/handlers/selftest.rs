//! A runtime handler's self-test, run once when the daemon starts: can this OCI runtime create
//! a pod's infra container on this host, and one in a user namespace?
//!
//! A runtime's `features` say what it knows, not whether it works here: crun 1.8 (Debian 12)
//! lists every namespace yet refuses to create anything on a host whose cgroup v2 tree holds a
//! controller ("cgroups in hybrid mode not supported"). So berth creates, and at once deletes,
//! the same infra container every pod gets ([`crate::spec::infra_spec_with`]:
//! `berth-pause` in a read-only rootfs holding only that binary, new PID/IPC/mount namespaces,
//! a cgroup under the configured parent), once plain and once with a user namespace when the
//! runtime lists one. The container is never started. Everything lives under
//! `<run_root>/selftest/<handler>` (bundle, the runtime's `--root`) and is removed afterwards.
//!
//! A handler that fails is reported, not hidden: Status verbose info lists it with the
//! runtime's own message, and a request naming it fails with that message.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::cri::v1::PodSandboxConfig;

use crate::oci::Runtime;
use crate::spec::userns::{IdMap, PodUserns};
use crate::spec::{self, SandboxContext};

/// What the self-test found for one handler. `Err` holds the runtime's message (or why the
/// test could not run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Creating the infra container worked.
    pub runs: Result<(), String>,
    /// Creating it inside a new user namespace worked and berth's root (the layer store) could
    /// be idmapped through that namespace (`Err` also when the runtime's features list no `user`
    /// namespace or the plain test already failed).
    pub user_namespaces: Result<(), String>,
    /// When the test ran.
    pub tested: std::time::Instant,
}

/// How a user-namespace verdict that is a limit of this kernel begins (Status verbose info shows
/// it; the conformance suite skips user-namespace cases on it). A retest cannot change it.
pub const KERNEL_LIMIT: &str = "this kernel";

impl Health {
    /// Whether the user-namespace failure is a limit of this kernel ([`KERNEL_LIMIT`]).
    pub fn userns_kernel_limit(&self) -> bool {
        self.user_namespaces.as_ref().err().is_some_and(|e| e.starts_with(KERNEL_LIMIT))
    }

    /// Whether this result is due to be re-tested: something failed that a retest may change,
    /// and the test is at least `after` old.
    pub fn retest_due(&self, after: Duration) -> bool {
        (self.runs.is_err() || self.user_namespaces.is_err() && !self.userns_kernel_limit()) && self.tested.elapsed() >= after
    }
}

/// How long one runtime invocation of the test may take before it is killed.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The id range the user-namespace test maps (never used: the container does not start).
const TEST_MAP: IdMap = IdMap { host_id: 1_000_000_000, container_id: 0, length: 65_536 };

/// Tests `runtime` under `dir` (removed after, unless a delete failed: then it keeps the
/// runtime state the next test needs to delete the leftover) with `pause_bin` as the process and
/// cgroups under `cgroup_parent`; the user-namespace test also idmaps `layer_store` (berth's
/// root) through the test container's user namespace, since pods need that filesystem to
/// support idmapped mounts. Blocking: a few runtime invocations, ~50 ms each for runc, each
/// killed after [`STEP_TIMEOUT`].
pub fn check(runtime: &Runtime, pause_bin: &Path, dir: &Path, cgroup_parent: &str, layer_store: &Path) -> Health {
    let attempt = |sub: &str, userns: Option<&PodUserns>| {
        create_and_delete(runtime, pause_bin, &dir.join(sub), cgroup_parent, userns, layer_store).unwrap_or_else(|why| (Err(why), false))
    };
    let (runs, plain_deleted) = attempt("plain", None);
    let (user_namespaces, userns_deleted) = match (&runs, runtime.features.user_namespaces()) {
        (Err(_), _) => (Err("the runtime cannot create containers here".to_string()), true),
        (Ok(()), false) => (Err("the runtime's `features` list no user namespace".to_string()), true),
        (Ok(()), true) => {
            let u = PodUserns { uid: TEST_MAP, gid: TEST_MAP };
            attempt("userns", Some(&u))
        }
    };
    // Kept when a delete failed: the next test's `delete --force` needs the runtime's state.
    if plain_deleted && userns_deleted {
        let _ = crate::util::remove_dir_all_idempotent(dir);
    }
    Health { runs, user_namespaces, tested: std::time::Instant::now() }
}

/// One `create` + `delete --force` of the infra container in `dir`; with `userns`, also an
/// idmapped clone of `layer_store` through the container's user namespace. Returns the verdict
/// (a failed delete fails it: the runtime would leak every pod's infra) and whether the test
/// container is gone (else `dir`, holding the runtime's state, must stay for the next try).
/// `Err` when even the set-up or the delete of a leftover failed (nothing of this try exists
/// then, but the leftover may).
fn create_and_delete(
    runtime: &Runtime,
    pause_bin: &Path,
    dir: &Path,
    cgroup_parent: &str,
    userns: Option<&PodUserns>,
    layer_store: &Path,
) -> Result<(Result<(), String>, bool), String> {
    let id = format!("berth-selftest-{}", runtime.handler);
    let state = dir.join("state");
    // A test killed halfway (daemon crash), or one whose delete failed, leaves its container
    // and files: delete it first; its state stays until the runtime says it is gone.
    if state.exists() {
        delete_test_container(runtime, &state, &id).map_err(|why| format!("deleting a leftover test container: {why}"))?;
    }
    let _ = crate::util::remove_dir_all_idempotent(dir);
    let bundle = dir.join("bundle");
    let rootfs = bundle.join("rootfs");
    for d in [&rootfs.join("proc"), &rootfs.join("dev"), &state] {
        std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    let pause = rootfs.join("berth-pause");
    if std::fs::hard_link(pause_bin, &pause).is_err() {
        std::fs::copy(pause_bin, &pause).map_err(|e| format!("copying {}: {e}", pause_bin.display()))?;
    }
    let config = PodSandboxConfig::default();
    let none = Path::new("/dev/null");
    let ctx = SandboxContext {
        sandbox_id: &id,
        config: &config,
        netns_path: None,
        namespaces: crate::spec::PodNamespaces::Infra(0),
        hostname: "selftest",
        hosts_file: none,
        resolv_conf: none,
        hostname_file: none,
        shm_path: None,
        cgroup_parent,
        userns,
    };
    let oci = spec::infra_spec_with(&ctx, &rootfs, &id, spec::own_oom_score_adj()).map_err(|e| e.to_string())?;
    let json = serde_json::to_vec(&oci).map_err(|e| e.to_string())?;
    std::fs::write(bundle.join("config.json"), json).map_err(|e| format!("writing config.json: {e}"))?;

    // stdio: runc init inherits it and holds it until `start`, so no pipes (they would never
    // reach EOF); the runtime's stderr goes to a file read afterwards.
    let err_path = dir.join("stderr");
    let err_file = std::fs::File::create(&err_path).map_err(|e| format!("creating {}: {e}", err_path.display()))?;
    let pid_file = dir.join("pid");
    let mut create = runtime_cmd(runtime, &state);
    create.args(["create", "--bundle"]).arg(&bundle).arg("--pid-file").arg(&pid_file).arg(&id);
    let result = match run_step(&mut create, Some(err_file)) {
        Ok(()) => match userns {
            Some(_) => idmap_probe(&pid_file, layer_store, dir),
            None => Ok(()),
        },
        Err(why) => {
            let text = std::fs::read_to_string(&err_path).unwrap_or_default();
            let msg = crate::oci::runtime_error_message(&text);
            Err(format!("`{} create` {why}: {msg}", runtime.path.display()))
        }
    };
    // Deleted whether create worked or half-worked; a container that does not exist is fine,
    // a delete that fails is a failed test (the runtime would leak every pod's infra).
    let deleted = delete_test_container(runtime, &state, &id);
    let gone = deleted.is_ok();
    Ok((result.and(deleted), gone))
}

/// Whether `layer_store`, and a tmpfs like the pod's `/dev/shm`, can be idmapped through the
/// user namespace of the process in `pid_file` (the clones are dropped at once, never attached;
/// the tmpfs is mounted under `dir` and unmounted). tmpfs learnt idmapped mounts in Linux 6.3, so
/// on older kernels (Debian 12's 6.1) pods cannot have a user namespace: the error says so.
fn idmap_probe(pid_file: &Path, layer_store: &Path, dir: &Path) -> Result<(), String> {
    let pid = std::fs::read_to_string(pid_file).map_err(|e| format!("reading {}: {e}", pid_file.display()))?;
    let ns_path = format!("/proc/{}/ns/user", pid.trim());
    let ns = std::fs::File::open(&ns_path).map_err(|e| format!("opening {ns_path}: {e}"))?;
    crate::storage::idmap::idmapped_clone(layer_store, &ns, false).map(drop).map_err(|e| {
        format!("berth's root {} cannot be idmapped (its filesystem must support idmapped mounts): {e}", layer_store.display())
    })?;
    let shm = dir.join("shm-probe");
    std::fs::create_dir_all(&shm).map_err(|e| format!("creating {}: {e}", shm.display()))?;
    crate::storage::mount_tmpfs(&shm, "size=64k").map_err(|e| e.to_string())?;
    let idmapped = crate::storage::idmap::idmapped_clone(&shm, &ns, false).map(drop);
    let _ = crate::storage::unmount(&shm);
    idmapped.map_err(|e| format!("{KERNEL_LIMIT} cannot idmap a tmpfs (the pod's /dev/shm; Linux 6.3 and later can): {e}"))
}

/// Runs one runtime command with null stdio (stderr to `stderr` when given: runc init inherits
/// stdio and holds it until `start`, so pipes would never reach EOF), killing it after
/// [`STEP_TIMEOUT`]. The error says how it ended.
fn run_step(cmd: &mut Command, stderr: Option<std::fs::File>) -> Result<(), String> {
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    match stderr {
        Some(f) => cmd.stderr(f),
        None => cmd.stderr(Stdio::null()),
    };
    // Its own process group, so a timeout ends the runtime and everything it started.
    std::os::unix::process::CommandExt::process_group(cmd, 0);
    let mut child = cmd.spawn().map_err(|e| format!("could not run: {e}"))?;
    let deadline = std::time::Instant::now() + STEP_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => return Err(format!("failed ({st})")),
            Ok(None) if std::time::Instant::now() >= deadline => {
                let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
                let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
                return Err(format!("did not finish within {} s and was killed", STEP_TIMEOUT.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("wait failed: {e}")),
        }
    }
}

/// `delete --force` of the test container under the runtime root `state`; a container the
/// runtime does not know is gone already (Ok). Errors: how it failed, with the runtime's message.
fn delete_test_container(runtime: &Runtime, state: &Path, id: &str) -> Result<(), String> {
    let err_path = state.with_extension("delete-stderr");
    let err_file = std::fs::File::create(&err_path).map_err(|e| format!("creating {}: {e}", err_path.display()))?;
    let outcome = run_step(runtime_cmd(runtime, state).args(["delete", "--force", id]), Some(err_file));
    let msg = crate::oci::runtime_error_message(&std::fs::read_to_string(&err_path).unwrap_or_default());
    let _ = std::fs::remove_file(&err_path);
    match outcome {
        Ok(()) => Ok(()),
        Err(_) if crate::oci::says_not_exist(&msg) => Ok(()),
        Err(why) => Err(format!("`{} delete --force` {why}: {msg}", runtime.path.display())),
    }
}

fn runtime_cmd(runtime: &Runtime, root: &Path) -> Command {
    let mut c = Command::new(&runtime.path);
    c.args(crate::oci::global_args(root, runtime.systemd_cgroup));
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn kernel_limits_are_not_retested() {
        let old = std::time::Instant::now() - Duration::from_secs(120);
        let h = |runs: Result<(), String>, userns: Result<(), String>| Health { runs, user_namespaces: userns, tested: old };
        let limit = format!("{KERNEL_LIMIT} cannot idmap a tmpfs");
        assert!(!h(Ok(()), Err(limit.clone())).retest_due(Duration::from_secs(60)));
        assert!(h(Ok(()), Err(limit)).userns_kernel_limit());
        assert!(h(Ok(()), Err("runc: permission denied".into())).retest_due(Duration::from_secs(60)));
        assert!(h(Err("broken".into()), Err("x".into())).retest_due(Duration::from_secs(60)));
        assert!(!h(Ok(()), Ok(())).retest_due(Duration::from_secs(60)));
        assert!(!h(Err("broken".into()), Ok(())).retest_due(Duration::from_secs(600)));
    }

    fn runtime(handler: &str, path: &Path) -> Runtime {
        Runtime::new(handler, path.to_path_buf(), std::path::PathBuf::from("/nonexistent")).unwrap()
    }

    #[test]
    fn a_runtime_that_fails_create_is_reported_with_its_message() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = tmp.path().join("broken-runtime");
        // `--root R <command> ...`: create fails; delete finds nothing, as a real runtime says.
        std::fs::write(
            &fake,
            "#!/bin/sh\ncase \"$3\" in delete) echo 'level=error msg=\"container does not exist\"' >&2;; *) echo 'level=error msg=\"cannot create containers on this host\"' >&2;; esac\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let pause = tmp.path().join("pause");
        std::fs::write(&pause, b"").unwrap();
        let dir = tmp.path().join("selftest");
        let h = check(&runtime("broken", &fake), &pause, &dir, "/berth-selftest-unit", tmp.path());
        let err = h.runs.unwrap_err();
        assert!(err.contains("cannot create containers on this host") && err.contains("create"), "{err}");
        assert!(h.user_namespaces.is_err());
        assert!(!dir.exists(), "the self-test left {}", dir.display());
    }

    #[test]
    fn runc_creates_the_infra_container_plain_and_in_a_user_namespace() {
        if !nix::unistd::geteuid().is_root() || !Path::new("/usr/sbin/runc").exists() {
            eprintln!("skipped: needs root and runc");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let pause = crate::pause::install(tmp.path()).unwrap();
        let dir = tmp.path().join("selftest");
        let h = check(&runtime("runc", Path::new("/usr/sbin/runc")), &pause, &dir, "/berth-selftest-unit", tmp.path());
        assert_eq!(h.runs, Ok(()));
        assert_eq!(h.user_namespaces, Ok(()));
        assert!(!dir.exists());
        assert!(!Path::new("/sys/fs/cgroup/memory/berth-selftest-unit/berth-selftest-runc").exists());
        // runc leaves the parent it created; this test's parent is its own.
        for c in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            let _ = std::fs::remove_dir(c.path().join("berth-selftest-unit"));
        }
    }
}
