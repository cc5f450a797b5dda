//! The streaming [`Backend`] over the daemon: Exec and Attach sessions through `berth-monitor`.
//!
//! Exec: like ExecSync, the process is the container's own OCI `process` with the new args
//! ([`crate::spec::exec_process`]), but it runs under a monitor in exec mode
//! ([`crate::monitor::spawn_exec`]) in a fresh directory `<bundle>/exec-<12 hex>`, and the session
//! is pumped through that monitor's attach socket: client stdin -> process stdin, process output
//! -> client stdout/stderr, resizes -> TIOCSWINSZ. When the monitor closes the socket the process
//! has ended and its output was delivered; the exit code is read from the session's exit file.
//! If the session future is dropped first (the client went away), an [`ExecGuard`] SIGKILLs the
//! process by the PID in its pid file; the directory is removed either way.
//!
//! Attach: connect to the container's attach socket (`<bundle>/attach`) and pump until the
//! container exits, the client's output streams fail, or the client's stdin ends (then, for a
//! `stdin_once` container without a tty, its stdin is closed and the output is followed to the
//! container's end, as CRI-O does).
//!
//! Port forwarding: a TCP connection to the port on localhost inside the pod's network
//! namespace (the host's for a host-network pod), made from a thread that enters that namespace.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{ContainerPaths, ContainerState};
use crate::daemon::Daemon;
use crate::error::Error;
use crate::monitor::attach::{pump, PumpEnd};
use crate::monitor::{self, ExecProcess, MonitorSpec};
use crate::records::SandboxState;
use crate::streaming::{Backend, ExecSpec, SessionIo, StreamError};

/// The [`Backend`] the streaming server uses in the daemon.
pub struct StreamBackend {
    d: Arc<Daemon>,
}

impl StreamBackend {
    /// A backend over daemon `d`.
    pub fn new(d: Arc<Daemon>) -> StreamBackend {
        StreamBackend { d }
    }
}

/// Maps a domain error onto the streaming error of the same meaning.
fn stream_error(e: Error) -> StreamError {
    match e {
        Error::NotFound { .. } => StreamError::NotFound(e.to_string()),
        Error::FailedPrecondition(m) => StreamError::FailedPrecondition(m),
        Error::InvalidArgument { .. } => StreamError::InvalidArgument(e.to_string()),
        other => StreamError::Internal(other.to_string()),
    }
}

/// The running container `id`, or NotFound / FailedPrecondition.
fn running(d: &Daemon, id: &str) -> Result<super::ContainerRecord, StreamError> {
    let r = super::get(d, id).map_err(stream_error)?;
    if r.state != ContainerState::Running {
        return Err(StreamError::FailedPrecondition(format!(
            "container {} is {}, not RUNNING",
            r.id,
            super::lifecycle::state_name(r.state)
        )));
    }
    Ok(r)
}

/// Kills an exec session's process (SIGKILL to the PID in `pid_file`) unless
/// [`ExecGuard::finished`] was called, and removes the session directory, on drop. Inside a
/// tokio runtime the removal waits (in a spawned task, up to 5 s) for the session's monitor
/// (`<dir>/monitor.pid`) to exit, so it cannot recreate files there.
pub struct ExecGuard {
    dir: PathBuf,
    pid_file: PathBuf,
    finished: bool,
}

impl ExecGuard {
    /// Guards session directory `dir` whose process's PID is (or will be) in `pid_file`.
    pub fn new(dir: PathBuf, pid_file: PathBuf) -> ExecGuard {
        ExecGuard { dir, pid_file, finished: false }
    }

    /// The process has ended: do not kill on drop.
    pub fn finished(&mut self) {
        self.finished = true;
    }
}

impl Drop for ExecGuard {
    fn drop(&mut self) {
        if !self.finished {
            if let Some(pid) = monitor::client::read_pid(&self.pid_file) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                tracing::debug!(pid, "exec session dropped: process killed");
            }
        }
        // The monitor may still be finishing in the directory: remove it once the monitor is gone.
        let dir = std::mem::take(&mut self.dir);
        let monitor_pid = monitor::client::read_pid(&dir.join(monitor::client::PID_FILE));
        match tokio::runtime::Handle::try_current() {
            Ok(h) if monitor_pid.is_some() => {
                h.spawn(async move {
                    if let Some(pid) = monitor_pid {
                        for _ in 0..200 {
                            if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
                                break;
                            }
                            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
                        }
                    }
                    let _ = crate::util::remove_dir_all_idempotent(&dir);
                });
            }
            _ => {
                let _ = crate::util::remove_dir_all_idempotent(&dir);
            }
        }
    }
}

impl StreamBackend {
    /// Writes the session's process JSON and monitor spec; returns them with the guard.
    fn prepare_exec(&self, spec: &ExecSpec, stdin: bool) -> Result<(MonitorSpec, ExecProcess, ExecGuard), StreamError> {
        let d = &self.d;
        let r = running(d, &spec.container_id)?;
        let paths = ContainerPaths::new(d, &r.id);
        let config_path = paths.bundle.join("config.json");
        let internal = |what: String| move |e: std::io::Error| StreamError::Internal(format!("{what}: {e}"));
        let text = std::fs::read(&config_path).map_err(internal(format!("reading {}", config_path.display())))?;
        let oci: oci_spec::runtime::Spec =
            serde_json::from_slice(&text).map_err(|e| StreamError::Internal(format!("decoding {}: {e}", config_path.display())))?;
        let process = crate::spec::exec_process(&oci, &spec.cmd, spec.tty).map_err(|e| StreamError::InvalidArgument(e.to_string()))?;
        let runtime = d.runtime(&r.runtime_handler).map_err(stream_error)?;
        let dir = paths.bundle.join(format!("exec-{}", &crate::util::new_id()[..12]));
        std::fs::create_dir_all(&dir).map_err(internal(format!("creating {}", dir.display())))?;
        let guard = ExecGuard::new(dir.clone(), dir.join("pid"));
        let process_json = dir.join("process.json");
        let bytes = serde_json::to_vec(&process).map_err(|e| StreamError::Internal(format!("encoding exec process: {e}")))?;
        crate::util::write_atomic(&process_json, &bytes).map_err(internal(format!("writing {}", process_json.display())))?;
        let mspec = MonitorSpec {
            id: r.id.clone(),
            bundle: dir.clone(),
            runtime: runtime.path.clone(),
            runtime_root: runtime.root.clone(),
            systemd_cgroup: runtime.systemd_cgroup,
            log_path: None,
            exit_file: dir.join("exit"),
            pid_file: dir.join("pid"),
            attach_socket: dir.join("attach"),
            terminal: spec.tty,
            stdin,
            stdin_once: true,
            log_size_max: 0,
        };
        Ok((mspec, ExecProcess { process_json }, guard))
    }
}

#[tonic::async_trait]
impl Backend for StreamBackend {
    async fn exec(&self, spec: ExecSpec, io: SessionIo) -> Result<i32, StreamError> {
        if spec.cmd.is_empty() || spec.cmd[0].is_empty() {
            return Err(StreamError::InvalidArgument("cmd: must name a command to run".into()));
        }
        let (mspec, exec, guard) = self.prepare_exec(&spec, io.stdin.is_some())?;
        run_exec(&self.d.monitor_bin, &mspec, &exec, guard, io).await
    }

    async fn attach(&self, container_id: &str, io: SessionIo) -> Result<(), StreamError> {
        let r = running(&self.d, container_id)?;
        let socket = ContainerPaths::new(&self.d, &r.id).bundle.join("attach");
        let conn = monitor::attach(&socket).await.map_err(|e| StreamError::Internal(e.to_string()))?;
        let follow_after_stdin = r.config.stdin_once && !r.config.tty;
        pump(&conn, io, !follow_after_stdin).await;
        Ok(())
    }

    async fn port_forward(&self, sandbox_id: &str, port: u16) -> Result<tokio::net::TcpStream, StreamError> {
        dial_in_pod(&self.d, sandbox_id, port).await.map_err(|e| match e {
            Error::NotFound { .. } => StreamError::NotFound(e.to_string()),
            Error::FailedPrecondition(_) => StreamError::FailedPrecondition(e.to_string()),
            e => StreamError::Internal(e.to_string()),
        })
    }
}

/// A TCP connection to `port` on localhost inside the pod's network namespace (the host's for a
/// host-network pod), for CRI PortForward.
///
/// Errors: NotFound; FailedPrecondition when the pod is not ready; Network when nothing listens
/// there (the message says `connect` and the errno).
async fn dial_in_pod(d: &Daemon, id: &str, port: u16) -> Result<tokio::net::TcpStream, Error> {
    let r = d.records.sandbox(id)?;
    if r.state != SandboxState::Ready {
        return Err(Error::FailedPrecondition(format!("pod sandbox {} is not ready: cannot forward port {port}", r.id)));
    }
    let std_stream = match r.netns_path.clone() {
        Some(netns) => tokio::task::spawn_blocking(move || crate::network::netns::connect_tcp(&netns, port))
            .await
            .map_err(|e| Error::io("port-forward dial task")(std::io::Error::other(e.to_string())))??,
        None => {
            return tokio::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port))
                .await
                .map_err(Error::io(format!("connecting to 127.0.0.1:{port} on the host network")))
        }
    };
    std_stream.set_nonblocking(true).map_err(Error::io("port-forward socket"))?;
    tokio::net::TcpStream::from_std(std_stream).map_err(Error::io("port-forward socket"))
}

/// Runs one exec session: spawns the monitor in exec mode for `mspec` / `exec`, attaches to it,
/// pumps `io` until the process ended and its output was delivered, and returns its exit code
/// (128+signal when killed). `guard` (for `mspec.bundle` and `mspec.pid_file`) kills the process
/// if this future is dropped or the client goes away, and removes the session directory.
/// Errors: Internal with the runtime's message when exec failed, or when the client went away.
pub async fn run_exec(
    monitor_bin: &Path,
    mspec: &MonitorSpec,
    exec: &ExecProcess,
    mut guard: ExecGuard,
    io: SessionIo,
) -> Result<i32, StreamError> {
    let spawned = monitor::spawn_exec(monitor_bin, mspec, exec).await.map_err(|e| match e {
        monitor::MonitorError::RuntimeExec { id, message } => StreamError::Internal(format!("exec in container {id}: {message}")),
        other => StreamError::Internal(other.to_string()),
    })?;
    tracing::debug!(container = %mspec.id, pid = spawned.container_pid, "exec session started");
    let conn = monitor::attach(&mspec.attach_socket).await.map_err(|e| StreamError::Internal(e.to_string()))?;
    match pump(&conn, io, false).await {
        PumpEnd::ProcessEnded => {}
        PumpEnd::ClientGone | PumpEnd::StdinEnded => {
            return Err(StreamError::Internal(format!("exec in container {}: the client went away; the process was killed", mspec.id)));
        }
    }
    let exit = wait_exit_file(&mspec.exit_file).await;
    guard.finished();
    match exit {
        Some(e) => Ok(e.exit_code),
        None => Err(StreamError::Internal(format!(
            "exec in container {}: the monitor ended without writing {}",
            mspec.id,
            mspec.exit_file.display()
        ))),
    }
}

/// The exit file of an ended session; it is written before the monitor closes the socket, so a
/// short wait only covers a monitor killed at the wrong moment.
async fn wait_exit_file(path: &Path) -> Option<monitor::ExitInfo> {
    for _ in 0..20 {
        if let Ok(Some(e)) = monitor::read_exit_file(path) {
            return Some(e);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_kills_unfinished_process_and_removes_dir() {
        let dir = tempfile::tempdir().unwrap();
        let session = dir.path().join("exec-1");
        std::fs::create_dir(&session).unwrap();
        let mut child = std::process::Command::new("sleep").arg("600").spawn().unwrap();
        std::fs::write(session.join("pid"), child.id().to_string()).unwrap();
        drop(ExecGuard::new(session.clone(), session.join("pid")));
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(!session.exists());

        let session = dir.path().join("exec-2");
        std::fs::create_dir(&session).unwrap();
        let mut child = std::process::Command::new("sleep").arg("600").spawn().unwrap();
        std::fs::write(session.join("pid"), child.id().to_string()).unwrap();
        let mut g = ExecGuard::new(session.clone(), session.join("pid"));
        g.finished();
        drop(g);
        assert!(child.try_wait().unwrap().is_none(), "finished guard must not kill");
        assert!(!session.exists());
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
