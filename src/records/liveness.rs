//! Has a monitored process ended? The monitor's exit file says so when the monitor is alive to
//! write it; when the monitor itself is gone (killed, or the node's init reaped it), /proc says
//! whether the process still runs, and a process gone without an exit file is "lost".

use crate::monitor::ExitInfo;
use std::path::Path;
use std::time::Duration;

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
        if self.monitor_pid > 0 && alive(self.monitor_pid, Some("berth-monitor")) {
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

    /// Polls [`Watched::observe`] until the process ended or `timeout` passed (`None`).
    pub async fn wait(&self, timeout: Duration) -> Option<Ended> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut interval = Duration::from_millis(5);
        loop {
            if let Some(e) = self.observe() {
                return Some(e);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(interval).await;
            interval = (interval * 2).min(Duration::from_millis(50));
        }
    }
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
