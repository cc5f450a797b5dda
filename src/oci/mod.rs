//! Driver for runc-compatible OCI runtimes (runc, crun, youki) through their command line.
//!
//! Every call passes `--root <root>` so each runtime handler (CRI `runtime_handler`, a
//! RuntimeClass) keeps its own state directory. Errors follow containerd's Go runc wrapper
//! (`go-runc`): a failed command yields [`OciError::CommandFailed`] with the runtime path, the
//! arguments, the exit status and the runtime's error message. runc reports errors through logrus on
//! stderr as `time="..." level=error msg="container does not exist"`; [`runtime_error_message`]
//! extracts the `msg` value.
//!
//! `create` is not here: the monitor (`crate::monitor`) runs it, because the runtime's stdio must be
//! the container's stdio, owned by the monitor.

pub mod features;

use std::path::{Path, PathBuf};
use std::process::Stdio;

pub use berth_monitor::runtime::{global_args, last_json_log_error, runtime_error_message, MAX_RUNTIME_MESSAGE};

use serde::Deserialize;

/// Errors of the OCI runtime driver.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The runtime binary was not found (relative names are searched on `PATH`).
    #[error("OCI runtime {handler:?}: binary {path:?} not found (expected an executable path or a name on PATH)")]
    NotFound { handler: String, path: PathBuf },
    /// The runtime could not be executed at all.
    #[error("OCI runtime {runtime:?}: cannot run {args:?}: {source}")]
    Exec {
        runtime: PathBuf,
        args: Vec<String>,
        #[source]
        source: std::io::Error,
    },
    /// The runtime ran and exited non-zero; `stderr` holds its error message (logrus `msg` when
    /// it printed one, else its trimmed stderr).
    #[error("OCI runtime {runtime:?} {args:?} failed ({status}): {stderr}")]
    CommandFailed { runtime: PathBuf, args: Vec<String>, status: std::process::ExitStatus, stderr: String },
    /// `state` printed something that is not the runtime-spec state JSON.
    #[error("OCI runtime {runtime:?}: state of container {id}: unparsable output: {source}")]
    BadState {
        runtime: PathBuf,
        id: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The part of the runtime's `state <id>` output (OCI runtime-spec "State") berth uses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RuntimeState {
    /// `creating`, `created`, `running`, `stopped` (runc also reports `paused`).
    pub status: String,
    /// PID of the container process on the host; 0 once stopped.
    #[serde(default)]
    pub pid: i32,
}

/// One runtime handler: a runc-compatible binary and its state directory.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// The CRI runtime handler name (RuntimeClass handler), e.g. `runc`.
    pub handler: String,
    /// Absolute path of the runtime binary.
    pub path: PathBuf,
    /// The runtime's `--root` state directory.
    pub root: PathBuf,
    /// What `<path> features` reported when the runtime was set up.
    pub features: features::RuntimeFeatures,
    /// Pass `--systemd-cgroup` (config `cgroup_manager = "systemd"`): the runtime takes
    /// `slice:prefix:name` cgroups paths and makes scopes over D-Bus, as containerd's
    /// `SystemdCgroup` and CRI-O's `cgroup_manager` make runc do.
    pub systemd_cgroup: bool,
}

impl Runtime {
    /// A runtime driver. `path` may be a bare name (`runc`), resolved on `PATH`, or a path.
    /// Errors: [`OciError::NotFound`] when no executable file is found.
    pub fn new(handler: &str, path: PathBuf, root: PathBuf) -> Result<Runtime, OciError> {
        let resolved = resolve_binary(&path).ok_or_else(|| OciError::NotFound { handler: handler.to_string(), path: path.clone() })?;
        let features = features::probe(&resolved);
        Ok(Runtime { handler: handler.to_string(), path: resolved, root, features, systemd_cgroup: false })
    }

    /// `runtime --root R [--systemd-cgroup]`: the runtime command with its global options.
    pub fn command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.path);
        cmd.args(global_args(&self.root, self.systemd_cgroup));
        cmd
    }

    /// `runtime start <id>`: runs the user process of a created container (OCI "start").
    pub async fn start(&self, id: &str) -> Result<(), OciError> {
        self.run(&["start", id]).await.map(|_| ())
    }

    /// `runtime state <id>`. `Ok(None)` when the runtime says the container does not exist.
    pub async fn state(&self, id: &str) -> Result<Option<RuntimeState>, OciError> {
        match self.run(&["state", id]).await {
            Ok(out) => serde_json::from_slice(&out).map(Some).map_err(|source| OciError::BadState {
                runtime: self.path.clone(),
                id: id.to_string(),
                source,
            }),
            Err(e) if is_not_exist(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `runtime kill [--all] <id> <signal>`. A container that does not exist or no longer runs
    /// is not an error (the goal, a container that does not run, holds).
    pub async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), OciError> {
        let sig = signal.to_string();
        let mut args = vec!["kill"];
        if all {
            args.push("--all");
        }
        args.extend([id, sig.as_str()]);
        match self.run(&args).await {
            Err(e) if is_not_exist(&e) || is_not_running(&e) => Ok(()),
            r => r.map(|_| ()),
        }
    }

    /// `runtime delete [--force] <id>`. A container that does not exist is not an error, so
    /// cleanup can be retried.
    pub async fn delete(&self, id: &str, force: bool) -> Result<(), OciError> {
        let mut args = vec!["delete"];
        if force {
            args.push("--force");
        }
        args.push(id);
        match self.run(&args).await {
            Err(e) if is_not_exist(&e) => Ok(()),
            r => r.map(|_| ()),
        }
    }

    /// `runtime pause <id>` (freezes the container's cgroup).
    pub async fn pause(&self, id: &str) -> Result<(), OciError> {
        self.run(&["pause", id]).await.map(|_| ())
    }

    /// `runtime resume <id>`.
    pub async fn resume(&self, id: &str) -> Result<(), OciError> {
        self.run(&["resume", id]).await.map(|_| ())
    }

    /// `runtime update --resources <resources_json> <id>`: applies new cgroup limits to a created
    /// or running container. `resources_json` holds an OCI runtime-spec `LinuxResources` object
    /// (config-linux.md "Control groups"); runc 1.1 applies its cpu, memory, pids, blockIO and
    /// unified entries and ignores devices.
    pub async fn update(&self, id: &str, resources_json: &Path) -> Result<(), OciError> {
        let file = resources_json.to_string_lossy();
        self.run(&["update", "--resources", &file, id]).await.map(|_| ())
    }

    /// A prepared `runtime --root R exec --process <process_json> --pid-file <pid_file> <id>`
    /// command. The caller sets stdio (and `--detach` style behaviour through how it waits).
    pub fn exec_command(&self, id: &str, process_json: &Path, pid_file: &Path) -> tokio::process::Command {
        let mut cmd = self.command();
        cmd.arg("exec").arg("--process").arg(process_json).arg("--pid-file").arg(pid_file).arg(id);
        cmd
    }

    /// Runs `runtime --root R <args>` to completion; stdout on success, `CommandFailed` otherwise.
    async fn run(&self, args: &[&str]) -> Result<Vec<u8>, OciError> {
        let out = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|source| OciError::Exec { runtime: self.path.clone(), args: args.iter().map(|s| s.to_string()).collect(), source })?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        Err(OciError::CommandFailed {
            runtime: self.path.clone(),
            args: args.iter().map(|s| s.to_string()).collect(),
            status: out.status,
            stderr: runtime_error_message(&String::from_utf8_lossy(&out.stderr)),
        })
    }
}

/// True when the error is the runtime saying the container does not exist
/// (runc: `container does not exist`; crun: `... status: No such file or directory`).
pub fn is_not_exist(e: &OciError) -> bool {
    match e {
        OciError::CommandFailed { stderr, .. } => says_not_exist(stderr),
        _ => false,
    }
}

/// True when a runtime's error message says the container does not exist (see
/// [`is_not_exist`]).
pub fn says_not_exist(message: &str) -> bool {
    let s = message.to_ascii_lowercase();
    s.contains("does not exist") || s.contains("no such file or directory")
}

/// True when the error is the runtime refusing because the container is not running
/// (runc 1.1: `container not running`; older: `process already finished`).
pub fn is_not_running(e: &OciError) -> bool {
    match e {
        OciError::CommandFailed { stderr, .. } => {
            let s = stderr.to_ascii_lowercase();
            s.contains("not running") || s.contains("already finished") || s.contains("no such process")
        }
        _ => false,
    }
}

/// Resolves a runtime binary: a path containing `/` is taken as is (when it exists); a bare
/// name is searched in `PATH` (falling back to /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin).
pub fn resolve_binary(path: &Path) -> Option<PathBuf> {
    if path.components().count() > 1 || path.is_absolute() {
        return path.is_file().then(|| path.to_path_buf());
    }
    let search = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&search).map(|d| d.join(path)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_on_path() {
        assert!(resolve_binary(Path::new("sh")).is_some());
        assert!(resolve_binary(Path::new("/nonexistent/runc")).is_none());
        assert!(Runtime::new("x", "definitely-not-a-runtime".into(), "/tmp".into()).is_err());
    }

    fn runc() -> Option<Runtime> {
        let dir = std::env::temp_dir().join(format!("berth-oci-test-{}", std::process::id()));
        Runtime::new("runc", "runc".into(), dir).ok()
    }

    #[tokio::test]
    async fn missing_container_is_none_and_ok() {
        let Some(rt) = runc() else {
            eprintln!("skipping: runc not installed");
            return;
        };
        assert_eq!(rt.state("berth-nope").await.unwrap(), None);
        rt.kill("berth-nope", 9, false).await.unwrap();
        rt.kill("berth-nope", 9, true).await.unwrap();
        rt.delete("berth-nope", false).await.unwrap();
        rt.delete("berth-nope", true).await.unwrap();
        match rt.start("berth-nope").await {
            Err(e @ OciError::CommandFailed { .. }) => assert!(is_not_exist(&e), "{e}"),
            other => panic!("unexpected {other:?}"),
        }
        let _ = std::fs::remove_dir_all(&rt.root);
    }
}
