//! Which monitored processes are being waited on, and the channel their ends come out of.
//!
//! Each pod sandbox's infra and each container is watched from the moment its monitor runs
//! (RunPodSandbox, CreateContainer) or, after a restart, from recovery: one tokio task per
//! watched process waits for its end ([`super::liveness::Watched::ended`], a pidfd of its
//! monitor) and sends an [`End`] naming the object. The daemon's exit path (`src/exits.rs`)
//! receives them, takes the object's lock and asks the record layer to fold the end in: the one
//! place an exit is noticed, so no read has to look and no scan has to poll.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// What kind of object a watched process belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A container (its init process).
    Container,
    /// A pod sandbox (its infra process).
    Sandbox,
}

/// The process of object `id` ended (the exit file, or the monitor and process gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct End {
    /// Container or pod sandbox.
    pub kind: Kind,
    /// Its full ID.
    pub id: String,
}

/// The watched processes and the channel of their ends (`Records::watch_*`).
pub struct ExitWatch {
    tx: mpsc::UnboundedSender<End>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<End>>>,
    /// IDs with a waiting task, so a second watch of one object starts no second task.
    watched: Arc<Mutex<HashSet<String>>>,
}

impl Default for ExitWatch {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        ExitWatch { tx, rx: Mutex::new(Some(rx)), watched: Default::default() }
    }
}

impl ExitWatch {
    /// Starts waiting for the end of object `id`'s process: `exit_file` is its monitor's exit
    /// file, `monitor_pid` its monitor (0: none known), `pid` the process (0: unknown). When it
    /// ended already (the exit file is there, or both are gone), its [`End`] is sent at once.
    /// Nothing happens when `id` is watched already. Must be called inside a tokio runtime.
    pub fn watch(&self, kind: Kind, id: &str, exit_file: PathBuf, monitor_pid: i32, pid: i32) {
        if !lock(&self.watched).insert(id.to_string()) {
            return;
        }
        let tx = self.tx.clone();
        let watched = self.watched.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            super::liveness::Watched { exit_file: &exit_file, monitor_pid, pid }.ended().await;
            lock(&watched).remove(&id);
            // Err only when the receiver is gone: the daemon is shutting down.
            let _ = tx.send(End { kind, id });
        });
    }

    /// The receiving end, once (the daemon's exit path takes it at start); `None` afterwards.
    pub fn take_ends(&self) -> Option<mpsc::UnboundedReceiver<End>> {
        lock(&self.rx).take()
    }

    /// How many processes are being waited on now.
    #[cfg(test)]
    pub(crate) fn watched(&self) -> usize {
        lock(&self.watched).len()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A real child process, watched with no monitor: its end (killed, nothing recorded) comes
    /// out of the channel, pushed by its pidfd, and a second watch of it starts no second task.
    #[tokio::test]
    async fn the_end_of_a_watched_process_is_sent_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep").arg("600").spawn().unwrap();
        let w = ExitWatch::default();
        let mut ends = w.take_ends().unwrap();
        assert!(w.take_ends().is_none(), "the receiver is handed out once");
        w.watch(Kind::Container, "c1", dir.path().join("exit"), 0, child.id() as i32);
        w.watch(Kind::Container, "c1", dir.path().join("exit"), 0, child.id() as i32);
        assert_eq!(w.watched(), 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(ends.try_recv().is_err(), "nothing ended yet");
        child.kill().unwrap();
        let end = tokio::time::timeout(Duration::from_secs(5), ends.recv()).await.expect("end pushed").unwrap();
        assert_eq!(end, End { kind: Kind::Container, id: "c1".into() });
        child.wait().unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(ends.try_recv().is_err(), "one end per watch");
        assert_eq!(w.watched(), 0);
    }

    /// An exit file already written ends the watch at once, before any pidfd is opened.
    #[tokio::test]
    async fn a_recorded_end_is_sent_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let exit = dir.path().join("exit");
        crate::util::write_atomic(&exit, br#"{"exit_code":0,"exited_at":1,"oom_killed":false}"#).unwrap();
        let w = ExitWatch::default();
        let mut ends = w.take_ends().unwrap();
        w.watch(Kind::Sandbox, "p1", exit, std::process::id() as i32, std::process::id() as i32);
        let end = tokio::time::timeout(Duration::from_secs(5), ends.recv()).await.unwrap().unwrap();
        assert_eq!(end.kind, Kind::Sandbox);
    }
}
