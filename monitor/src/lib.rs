//! berth-monitor: the container monitor, berth's conmon, as its own crate.
//!
//! One monitor process runs per container. The daemon (berth's `monitor::client::spawn`) writes a
//! [`MonitorSpec`] to `<bundle>/monitor.json` and starts `berth-monitor <bundle>/monitor.json`
//! with a sync pipe on fd 3. The monitor forks (the first process exits at once, so the monitor
//! is not the daemon's child and survives a daemon restart), calls `setsid`, becomes child
//! subreaper, runs `runtime create` with its own pipes (or a pty received on a console socket) as
//! the container's stdio, and answers on fd 3 with one JSON line, [`SyncMessage`]. It then copies
//! the container's output into the CRI log file ([`logline`]), reaps children, and when the
//! container process exits writes [`ExitInfo`] atomically to the exit file and exits.
//!
//! Exec mode ([`ExecProcess`]): the same monitor runs `runtime exec --detach` for one exec session
//! instead of `runtime create`, holds that process's stdio, serves the attach socket, writes the
//! exit file and exits; no CRI log.
//!
//! The crate has no async runtime, by construction (its manifest has none to depend on): the
//! monitor is one `poll(2)` loop. berth, the daemon, depends on it for the file formats
//! ([`MonitorSpec`], [`ExitInfo`], [`SyncMessage`]), the attach socket's [`packet`] protocol, and
//! the few helpers both sides share ([`runtime`], [`util`]).
//!
//! Modules: [`logline`] (pure CRI log encoder), [`logsize`] (the log size limit), [`process`]
//! (the monitor process up to the sync reply: fork, runtime create / exec), [`eventloop`] (log
//! copying, reaping, exit file), [`oom`] (OOM-kill detection), [`attach_socket`] (the attach
//! socket inside the monitor), [`packet`] (its protocol), [`runtime`] (the OCI runtime's command
//! line and error messages), [`util`] (clock, atomic writes, message cuts).

#![deny(unsafe_code)]

pub mod attach_socket;
pub mod eventloop;
pub mod logline;
pub mod logsize;
pub mod oom;
pub mod packet;
pub mod process;
pub mod runtime;
pub mod util;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file name of the monitor's spec inside the bundle (`<bundle>/monitor.json`).
pub const SPEC_FILE: &str = "monitor.json";
/// The file name of the monitor's pid file inside the bundle (`<bundle>/monitor.pid`).
pub const PID_FILE: &str = "monitor.pid";

/// A decimal PID in a file (runtime and monitor pid files); `None` when missing or malformed.
pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok().filter(|p: &i32| *p > 0)
}

/// What one monitor does, written by the daemon as JSON to `<bundle>/monitor.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorSpec {
    /// The container ID, as given to the OCI runtime.
    pub id: String,
    /// The OCI bundle directory: holds `config.json`; the monitor also keeps `monitor.json`,
    /// `monitor.pid`, `runtime.log` and (with a tty) `console.sock` there.
    pub bundle: PathBuf,
    /// Absolute path of the runc-compatible runtime binary.
    pub runtime: PathBuf,
    /// The runtime's `--root` state directory.
    pub runtime_root: PathBuf,
    /// Run the runtime with `--systemd-cgroup` (the systemd cgroup driver: the cgroups path is
    /// `slice:prefix:name`). Absent in monitor.json written before this field existed: false.
    #[serde(default)]
    pub systemd_cgroup: bool,
    /// The CRI log file (ContainerConfig.log_path joined to the sandbox log_directory);
    /// `None`: the output is drained and discarded.
    pub log_path: Option<PathBuf>,
    /// Where the monitor writes [`ExitInfo`] as JSON when the container process exits.
    pub exit_file: PathBuf,
    /// The runtime's `--pid-file`: the container process's host PID.
    pub pid_file: PathBuf,
    /// The attach socket (unix SOCK_SEQPACKET, see [`attach`]); bound relative to its directory
    /// when longer than `sun_path` allows. Removed when the monitor exits.
    pub attach_socket: PathBuf,
    /// CRI `tty`: the container gets a pseudo-terminal (runc `--console-socket`).
    pub terminal: bool,
    /// CRI `stdin`: the container's stdin is a pipe (or the tty) kept open by the monitor.
    pub stdin: bool,
    /// CRI `stdin_once`: close the container's stdin when the first attach session ends.
    pub stdin_once: bool,
    /// Largest size in bytes of the CRI log file (config `log_size_max`); 0 = unlimited. At the
    /// limit the monitor replaces the file with an empty one and writes on ([`logsize`]).
    /// Absent in monitor.json written before this field existed: 0.
    #[serde(default)]
    pub log_size_max: u64,
}

impl MonitorSpec {
    /// `<runtime> --root <runtime_root> [--systemd-cgroup]`: the runtime command with its global
    /// options, for the caller to add a subcommand to.
    pub fn runtime_command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.runtime);
        cmd.args(crate::runtime::global_args(&self.runtime_root, self.systemd_cgroup));
        cmd
    }
}

/// Exec mode: the process to run in the (running) container `MonitorSpec.id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecProcess {
    /// The OCI `process` object as JSON (runtime `exec --process`).
    pub process_json: PathBuf,
}

/// What `<bundle>/monitor.json` holds: the [`MonitorSpec`] fields, plus `exec` in exec mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorFile {
    #[serde(flatten)]
    pub spec: MonitorSpec,
    /// Exec mode when set; `runtime create` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecProcess>,
}

/// The exit file's content (JSON), written once when the container process exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// The exit code, or 128 + signal number when the process was killed by a signal (as conmon).
    pub exit_code: i32,
    /// When the monitor reaped the process: nanoseconds since the Unix epoch (CRI `finished_at`).
    pub exited_at: i64,
    /// Best effort: the container's memory cgroup recorded an OOM kill (CRI reason `OOMKilled`).
    pub oom_killed: bool,
}

/// The one JSON line the monitor writes on the sync pipe (fd 3) after `runtime create`:
/// `{"pid":N}` on success, `{"error":"<runtime's message>"}` on failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SyncMessage {
    /// The container process's host PID (from the runtime's pid file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// Why the container could not be created (the runtime's error `msg`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Errors of the monitor client and of the monitor process.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// A file or pipe operation failed; `what` says which, `path` names the object.
    #[error("monitor: {what} {path:?}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON document (monitor.json, an exit file) did not have the expected shape.
    #[error("monitor: {path:?} is not a valid {what}: {source}")]
    Json {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The OCI runtime refused to create the container; `message` is its error text.
    #[error("container {id}: runtime create failed: {message}")]
    Runtime { id: String, message: String },
    /// The OCI runtime refused to start an exec session; `message` is its error text.
    #[error("container {id}: runtime exec failed: {message}")]
    RuntimeExec { id: String, message: String },
    /// The monitor's first process exited non-zero (it could not even fork).
    #[error("container {id}: monitor exited with {status} before reporting")]
    Exited { id: String, status: String },
    /// No answer on the sync pipe within `secs` seconds (the monitor was killed).
    #[error("container {id}: no answer from the monitor within {secs} s (expected {{\"pid\":N}} on the sync pipe)")]
    Timeout { id: String, secs: u64 },
    /// The sync pipe carried something other than one [`SyncMessage`] line.
    #[error("container {id}: unexpected monitor reply {reply:?} (expected {{\"pid\":N}} or {{\"error\":\"...\"}})")]
    Protocol { id: String, reply: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_message_shapes() {
        let ok = SyncMessage { pid: Some(42), error: None };
        assert_eq!(serde_json::to_string(&ok).unwrap(), r#"{"pid":42}"#);
        let err = SyncMessage { pid: None, error: Some("boom".into()) };
        assert_eq!(serde_json::to_string(&err).unwrap(), r#"{"error":"boom"}"#);
        let back: SyncMessage = serde_json::from_str(r#"{"pid":7}"#).unwrap();
        assert_eq!(back.pid, Some(7));
    }

    #[test]
    fn exit_info_round_trips() {
        let e = ExitInfo { exit_code: 137, exited_at: 1_700_000_000_000_000_000, oom_killed: true };
        let s = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<ExitInfo>(&s).unwrap(), e);
    }

    #[test]
    fn pid_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("pid");
        assert_eq!(read_pid(&p), None);
        std::fs::write(&p, "1234").unwrap();
        assert_eq!(read_pid(&p), Some(1234));
        std::fs::write(&p, "x").unwrap();
        assert_eq!(read_pid(&p), None);
    }
}
