//! ReopenContainerLog: the container's monitor closes its CRI log file and opens the log path
//! again, so after kubelet renamed the file for rotation a new one is created.

use super::{ContainerPaths, ContainerState};
use crate::daemon::Daemon;
use crate::error::{Error, Result};
use std::time::Duration;

/// How long ReopenContainerLog waits for the monitor's answer and the new file.
pub const REOPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks the container's monitor to reopen its log file and returns once the file exists again
/// at the container's log path (as CRI-O and containerd do, so kubelet can go on rotating).
///
/// Errors: NotFound; FailedPrecondition when the container is not RUNNING or has no log path;
/// DeadlineExceeded when the monitor does not answer (or the file does not appear) within
/// [`REOPEN_TIMEOUT`]; Monitor when the monitor could not be reached or could not open the file.
pub async fn reopen_log(d: &Daemon, id: &str) -> Result<()> {
    let r = super::get(d, id)?;
    if r.state != ContainerState::Running {
        return Err(Error::FailedPrecondition(format!(
            "container {} is {}, not RUNNING: only a running container's log can be reopened",
            r.id,
            super::lifecycle::state_name(r.state)
        )));
    }
    if r.log_path.is_empty() {
        return Err(Error::FailedPrecondition(format!("container {} has no log_path: there is no log to reopen", r.id)));
    }
    let socket = ContainerPaths::new(d, &r.id).bundle.join("attach");
    let deadline = tokio::time::Instant::now() + REOPEN_TIMEOUT;
    match crate::monitor::attach::reopen_log(&socket, REOPEN_TIMEOUT).await {
        Ok(()) => {}
        Err(crate::monitor::MonitorError::Io { source, .. }) if source.kind() == std::io::ErrorKind::TimedOut => {
            return Err(Error::DeadlineExceeded(format!(
                "container {}: its monitor did not reopen {} within {}s",
                r.id,
                r.log_path,
                REOPEN_TIMEOUT.as_secs()
            )))
        }
        Err(e) => {
            // The container may have ended meanwhile: say so rather than "connection refused".
            let now = super::get(d, &r.id)?;
            if now.state != ContainerState::Running {
                return Err(Error::FailedPrecondition(format!("container {} exited while its log was reopened", r.id)));
            }
            return Err(e.into());
        }
    }
    // The monitor answers after opening (O_CREAT) the file; check it is there all the same.
    while std::fs::metadata(&r.log_path).is_err() {
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::DeadlineExceeded(format!(
                "container {}: log file {} did not appear within {}s of reopening",
                r.id,
                r.log_path,
                REOPEN_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::info!(container = %r.id, log = %r.log_path, "container log reopened");
    Ok(())
}
