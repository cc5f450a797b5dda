//! Has a monitored process ended, and waiting until it has. The monitor's exit file says so when
//! the monitor is alive to write it; when the monitor itself is gone (killed, or the node's init
//! reaped it), /proc says whether the process still runs, and a process gone without an exit
//! file is "lost".
//!
//! Waiting is pushed, not polled: a pidfd (pidfd_open(2), Linux 5.3) of the monitor becomes
//! readable when the monitor exits, which it does right after writing the exit file (or
//! without one, when it is killed); once the monitor is gone, a pidfd of the process itself.
//! Where pidfd_open is refused (an older kernel, a seccomp filter), the wait polls every
//! [`POLL_FALLBACK`] instead.

use crate::monitor::ExitInfo;
use std::path::Path;
use std::time::Duration;

/// The `comm` of a monitor process (proc(5)), checked so a recycled PID is never taken for it.
pub const MONITOR_COMM: &str = "berth-monitor";

/// How often a wait looks again where no pidfd can be had.
pub const POLL_FALLBACK: Duration = Duration::from_millis(200);

/// How a monitored process ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    /// The monitor recorded the exit in the exit file.
    Recorded(ExitInfo),
    /// The process and its monitor are both gone and nothing was recorded.
    Lost,
}

/// A process run under `berth-monitor`: its exit file, the monitor's PID, the process's PID
/// (0 = unknown; a record written before PIDs were kept).
#[derive(Debug, Clone, Copy)]
pub struct Watched<'a> {
    /// `<bundle>/exit`.
    pub exit_file: &'a Path,
    /// PID of its `berth-monitor`.
    pub monitor_pid: i32,
    /// Host PID of the process (container init).
    pub pid: i32,
}

impl Watched<'_> {
    /// `None` while the process may still run; `Some` once it ended.
    ///
    /// Order matters: the exit file is read again after the monitor is found gone, since a
    /// monitor writes it just before it exits.
    pub fn observe(&self) -> Option<Ended> {
        if let Ok(Some(e)) = crate::monitor::read_exit_file(self.exit_file) {
            return Some(Ended::Recorded(e));
        }
        if self.monitor_alive() {
            return None;
        }
        if let Ok(Some(e)) = crate::monitor::read_exit_file(self.exit_file) {
            return Some(Ended::Recorded(e));
        }
        if self.pid > 0 && alive(self.pid, None) {
            return None;
        }
        Some(Ended::Lost)
    }

    /// Whether `monitor_pid` is a live `berth-monitor` (its comm checked, so a reused PID of
    /// another program is not taken for it).
    pub fn monitor_alive(&self) -> bool {
        self.monitor_pid > 0 && alive(self.monitor_pid, Some(MONITOR_COMM))
    }

    /// Waits until the process ended ([`Watched::observe`] says how), however long that takes.
    ///
    /// Waits on a pidfd of the monitor while it runs, then, should the monitor be gone with the
    /// process still running, on one of the process. Each wake-up observes again, so a spurious
    /// one costs a look at the exit file, never a wrong answer.
    pub async fn ended(&self) -> Ended {
        loop {
            if let Some(e) = self.observe() {
                return e;
            }
            // `observe` found the monitor running, or the monitor gone and the process running.
            let target = if self.monitor_alive() { self.monitor_pid } else { self.pid };
            let fd = match pidfd(target) {
                Ok(fd) => fd,
                // Ended between the look and the open: the next look sees how.
                Err(rustix::io::Errno::SRCH) => continue,
                Err(e) => {
                    tracing::debug!(pid = target, error = %e, "pidfd_open refused; polling for the end instead");
                    tokio::time::sleep(POLL_FALLBACK).await;
                    continue;
                }
            };
            // The target may have ended (and its PID been taken by another process) between
            // the look and the open: look once more, now that a later end cannot be missed.
            if let Some(e) = self.observe() {
                return e;
            }
            match register(fd) {
                Ok(fd) => {
                    // Readable once the process has exited (pidfd_open(2)); an Err is the
                    // reactor going away (runtime shutdown): look again after a pause.
                    if fd.readable().await.is_err() {
                        tokio::time::sleep(POLL_FALLBACK).await;
                    }
                }
                Err(e) => {
                    tracing::debug!(pid = target, error = %e, "cannot poll a pidfd; polling for the end instead");
                    tokio::time::sleep(POLL_FALLBACK).await;
                }
            }
        }
    }

    /// [`Watched::ended`], or `None` once `timeout` passed first.
    pub async fn wait(&self, timeout: Duration) -> Option<Ended> {
        tokio::time::timeout(timeout, self.ended()).await.ok()
    }
}

/// A pidfd of `pid` (pidfd_open(2), flags 0): readable once that process has exited.
/// Errors: `SRCH` when no such process exists (also for `pid <= 0`); what the kernel says else
/// (`NOSYS` before Linux 5.3, `PERM` or `NOSYS` under a seccomp filter).
fn pidfd(pid: i32) -> Result<std::os::fd::OwnedFd, rustix::io::Errno> {
    let pid = (pid > 0).then(|| rustix::process::Pid::from_raw(pid)).flatten().ok_or(rustix::io::Errno::SRCH)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
}

/// `fd` registered with tokio's reactor for readability.
#[allow(unsafe_code)]
fn register(fd: std::os::fd::OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    // SAFETY: `register_with_interest` asks that the raw fd stay open and the same for the
    // AsyncFd's whole life. An OwnedFd owns its descriptor, gives out the same raw fd on every
    // call, and closes it only when dropped, which the AsyncFd that now owns it does last.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.map_err(std::io::Error::from)
}

/// Whether `pid` is a live (not zombie) process, and, when `comm` is given, runs that program
/// (guards against a recycled PID). Reads `/proc/<pid>/stat` (proc(5): `pid (comm) state ...`).
pub fn alive(pid: i32, comm: Option<&str>) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { return false };
    let name = &stat[open + 1..close];
    let state = stat[close + 1..].trim_start().chars().next().unwrap_or('?');
    !matches!(state, 'Z' | 'X' | 'x') && comm.is_none_or(|c| name == c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_comm_is_checked() {
        let me = std::process::id() as i32;
        assert!(alive(me, None));
        assert!(!alive(me, Some("surely-not-this-name")));
        assert!(!alive(i32::MAX, None));
    }

    #[test]
    fn lost_when_nothing_runs_and_nothing_was_recorded() {
        let d = tempfile::tempdir().unwrap();
        let exit = d.path().join("exit");
        let w = Watched { exit_file: &exit, monitor_pid: i32::MAX, pid: i32::MAX };
        assert_eq!(w.observe(), Some(Ended::Lost));
        let me = std::process::id() as i32;
        let w = Watched { exit_file: &exit, monitor_pid: i32::MAX, pid: me };
        assert_eq!(w.observe(), None, "the process still runs: not ended");
        crate::util::write_atomic(&exit, br#"{"exit_code":3,"exited_at":5,"oom_killed":false}"#).unwrap();
        assert!(matches!(w.observe(), Some(Ended::Recorded(e)) if e.exit_code == 3));
    }
}
