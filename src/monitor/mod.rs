//! The daemon's side of the container monitor (`berth-monitor`, berth's conmon, the
//! `berth-monitor` crate in `monitor/`).
//!
//! [`client`] spawns one monitor per container (or exec session), reads its sync reply and its
//! exit file; [`attach`] connects to its attach socket. Both are tokio code; the monitor process
//! itself has no async runtime and lives in its own crate, whose file formats and protocol are
//! re-exported here.

pub mod attach;
pub mod client;

pub use attach::{attach, AttachConn};
pub use berth_monitor::{read_pid, ExecProcess, ExitInfo, MonitorError, MonitorFile, MonitorSpec, SyncMessage, PID_FILE, SPEC_FILE};
pub(crate) use client::pass_as_fd3;
pub use client::{read_exit_file, spawn, spawn_exec, Spawned};
