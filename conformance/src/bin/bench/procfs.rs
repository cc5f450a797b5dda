//! /proc readers of the bench: memory of a process (VmRSS, PSS), its parent and executable,
//! processes found by executable name or exact argv, and directory entry counts.
//!
//! Sources: proc(5) (`/proc/PID/status`, `/proc/PID/smaps_rollup`, `/proc/PID/stat` field 4,
//! `/proc/PID/exe`, `/proc/PID/cmdline`). Every reader returns None / empty on a process that
//! is gone or a file that cannot be read: the bench reports what it found, never fails on it.

use berth_conformance::proc;
use std::path::{Path, PathBuf};

/// The `key:` line of a /proc file whose value is `<n> kB`; returns n (KiB).
pub fn proc_kib(path: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find(|l| l.starts_with(key)).and_then(|l| l[key.len()..].split_whitespace().next()).and_then(|n| n.parse().ok())
}

/// `VmRSS` of `pid` in KiB (/proc/PID/status).
pub fn vm_rss_kib(pid: i32) -> Option<u64> {
    proc_kib(&PathBuf::from(format!("/proc/{pid}/status")), "VmRSS:")
}

/// Total `Pss` of `pid` in KiB (/proc/PID/smaps_rollup).
pub fn pss_kib(pid: i32) -> Option<u64> {
    proc_kib(&PathBuf::from(format!("/proc/{pid}/smaps_rollup")), "Pss:")
}

/// Parent PID of `pid` (/proc/PID/stat field 4).
pub fn ppid(pid: i32) -> Option<i32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 4, after the parenthesised comm (which may contain spaces).
    text.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// File name of `pid`'s executable (/proc/PID/exe).
fn exe_name(pid: i32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()?.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// PIDs whose executable file name is `exe` and whose command line mentions `needle`.
pub fn pids_of(exe: &str, needle: &str) -> Vec<i32> {
    proc::pids_mentioning(needle).into_iter().map(|(p, _)| p).filter(|p| exe_name(*p).as_deref() == Some(exe)).collect()
}

/// PIDs of processes whose argv is exactly `argv`.
pub fn pids_with_argv(argv: &[&str]) -> Vec<i32> {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain(std::iter::once(0))).collect();
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|p| std::fs::read(format!("/proc/{p}/cmdline")).map(|c| c == want).unwrap_or(false))
        .collect()
}

/// Number of entries in `dir`, 0 when it cannot be read.
pub fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|rd| rd.count()).unwrap_or(0)
}
