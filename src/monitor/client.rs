//! Daemon side of the monitor: spawn one `berth-monitor` per container, read its sync reply,
//! read its exit file.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::fcntl::OFlag;
use tokio::io::AsyncReadExt;

use super::{ExecProcess, ExitInfo, MonitorError, MonitorFile, MonitorSpec, SyncMessage};

/// How long [`spawn`] waits for the monitor's `{"pid":N}` line (covers a slow `runtime create`).
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

pub use berth_monitor::{read_pid, PID_FILE, SPEC_FILE};

/// The result of a successful [`spawn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spawned {
    /// Host PID of the created (not yet started) container process.
    pub container_pid: i32,
    /// PID of the long-lived monitor process (from `<bundle>/monitor.pid`); 0 if unreadable.
    pub monitor_pid: i32,
}

/// Starts a monitor for `spec` and waits until the runtime has created the container.
///
/// Writes `spec` to `<bundle>/monitor.json`, runs `monitor_bin <bundle>/monitor.json` with stdio
/// on /dev/null and the write end of a sync pipe as fd 3, reaps the monitor's first process, and
/// reads one [`SyncMessage`] line within [`SYNC_TIMEOUT`].
/// Errors: [`MonitorError::Runtime`] with the runtime's message when create failed;
/// [`MonitorError::Timeout`] (the monitor is then killed); `Io`, `Exited`, `Protocol` otherwise.
pub async fn spawn(monitor_bin: &Path, spec: &MonitorSpec) -> Result<Spawned, MonitorError> {
    spawn_with_timeout(monitor_bin, spec, SYNC_TIMEOUT).await
}

/// Starts a monitor in exec mode: it runs `runtime exec --process <exec.process_json> --detach`
/// in the running container `spec.id`, holds the process's stdio (`spec.terminal`, `spec.stdin`;
/// `spec.log_path` should be `None`), serves `spec.attach_socket`, writes `spec.exit_file` when
/// the process ends and exits. `spec.bundle` is the session's own directory (monitor files live
/// there). Output produced before the first attach is kept for it, and the monitor waits up to
/// 30 s after the process ended for a first client to take it.
/// Returns the exec'd process's host PID in `container_pid`.
/// Errors: as [`spawn`], with [`MonitorError::RuntimeExec`] when the runtime refused.
pub async fn spawn_exec(monitor_bin: &Path, spec: &MonitorSpec, exec: &ExecProcess) -> Result<Spawned, MonitorError> {
    spawn_file(monitor_bin, &MonitorFile { spec: spec.clone(), exec: Some(exec.clone()) }, SYNC_TIMEOUT).await
}

/// [`spawn`] with an explicit sync timeout.
pub async fn spawn_with_timeout(monitor_bin: &Path, spec: &MonitorSpec, timeout: Duration) -> Result<Spawned, MonitorError> {
    spawn_file(monitor_bin, &MonitorFile { spec: spec.clone(), exec: None }, timeout).await
}

async fn spawn_file(monitor_bin: &Path, file: &MonitorFile, timeout: Duration) -> Result<Spawned, MonitorError> {
    let spec = &file.spec;
    let spec_path = spec.bundle.join(SPEC_FILE);
    let json =
        serde_json::to_vec_pretty(file).map_err(|source| MonitorError::Json { what: "monitor spec", path: spec_path.clone(), source })?;
    crate::util::write_atomic(&spec_path, &json).map_err(|source| MonitorError::Io { what: "write", path: spec_path.clone(), source })?;
    // A stale pid file from an earlier attempt must not be mistaken for this monitor's.
    let _ = std::fs::remove_file(spec.bundle.join(PID_FILE));

    let (read_end, write_end) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| MonitorError::Io {
        what: "create sync pipe for",
        path: spec.bundle.clone(),
        source: e.into(),
    })?;
    let mut cmd = tokio::process::Command::new(monitor_bin);
    cmd.arg(&spec_path).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    pass_as_fd3(&mut cmd, &write_end);
    let mut child = cmd.spawn().map_err(|source| MonitorError::Io { what: "run monitor", path: monitor_bin.to_path_buf(), source })?;
    // Only the monitor may hold the write end, so a dead monitor means EOF here.
    drop(write_end);
    drop(cmd);
    let status =
        child.wait().await.map_err(|source| MonitorError::Io { what: "wait for monitor", path: monitor_bin.to_path_buf(), source })?;
    if !status.success() {
        return Err(MonitorError::Exited { id: spec.id.clone(), status: status.to_string() });
    }

    let reply = match tokio::time::timeout(timeout, read_all(read_end, &spec.bundle)).await {
        Ok(r) => r?,
        Err(_) => {
            if let Some(pid) = read_pid(&spec.bundle.join(PID_FILE)) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
            return Err(MonitorError::Timeout { id: spec.id.clone(), secs: timeout.as_secs() });
        }
    };
    let protocol = || MonitorError::Protocol { id: spec.id.clone(), reply: reply.clone() };
    let msg: SyncMessage = serde_json::from_str(reply.trim()).map_err(|_| protocol())?;
    match msg {
        SyncMessage { error: Some(message), .. } if file.exec.is_some() => Err(MonitorError::RuntimeExec { id: spec.id.clone(), message }),
        SyncMessage { error: Some(message), .. } => Err(MonitorError::Runtime { id: spec.id.clone(), message }),
        SyncMessage { pid: Some(pid), .. } if pid > 0 => {
            Ok(Spawned { container_pid: pid, monitor_pid: read_pid(&spec.bundle.join(PID_FILE)).unwrap_or(0) })
        }
        _ => Err(protocol()),
    }
}

/// Makes the child see `fd` as its fd 3, without the close-on-exec flag (the monitor's sync
/// pipe; a pre-launched NRI plugin's socket). `fd` must stay open until the spawn returns.
#[allow(unsafe_code)]
pub(crate) fn pass_as_fd3(cmd: &mut tokio::process::Command, fd: &OwnedFd) {
    let raw = fd.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and only calls dup2 and fcntl,
    // which are async-signal-safe; it allocates nothing and touches no locks. `raw` stays open in
    // the parent until spawn() has returned, so it is valid in the child.
    unsafe {
        cmd.pre_exec(move || {
            if raw == 3 {
                if libc::fcntl(3, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(raw, 3) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Reads the sync pipe to EOF (the monitor closes it after its one line).
async fn read_all(read_end: OwnedFd, bundle: &Path) -> Result<String, MonitorError> {
    let io = |source| MonitorError::Io { what: "read sync pipe of", path: bundle.to_path_buf(), source };
    let mut rx = tokio::net::unix::pipe::Receiver::from_owned_fd(read_end).map_err(io)?;
    let mut buf = Vec::new();
    rx.read_to_end(&mut buf).await.map_err(io)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Reads a monitor's exit file. `Ok(None)`: not exited yet (no file).
/// Errors: `Io` when unreadable, `Json` when it is not an [`ExitInfo`].
pub fn read_exit_file(path: &Path) -> Result<Option<ExitInfo>, MonitorError> {
    match std::fs::read(path) {
        Ok(data) => serde_json::from_slice(&data).map(Some).map_err(|source| MonitorError::Json {
            what: "exit file",
            path: path.to_path_buf(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(MonitorError::Io { what: "read exit file", path: path.to_path_buf(), source }),
    }
}

/// The spec path for a bundle (`<bundle>/monitor.json`).
pub fn spec_path(bundle: &Path) -> PathBuf {
    bundle.join(SPEC_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_file_states() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("exit");
        assert_eq!(read_exit_file(&p).unwrap(), None);
        std::fs::write(&p, br#"{"exit_code":3,"exited_at":5,"oom_killed":false}"#).unwrap();
        assert_eq!(read_exit_file(&p).unwrap(), Some(ExitInfo { exit_code: 3, exited_at: 5, oom_killed: false }));
        std::fs::write(&p, b"garbage").unwrap();
        assert!(matches!(read_exit_file(&p), Err(MonitorError::Json { .. })));
    }
}
