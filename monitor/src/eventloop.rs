//! The monitor's event loop after `runtime create` (or `runtime exec --detach` in exec mode): copy
//! the container's output into the CRI log and to the attach clients,
//! reap children (the monitor is child subreaper), and when the container process exits drain the
//! output, write the exit file and return.
//!
//! One thread, `poll(2)` over a signalfd (SIGCHLD), the container's stdout/stderr pipes or pty
//! master, and the attach socket with its clients ([`AttachSocket`]): every chunk read goes to the
//! log and to every attached client.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

use crate::attach_socket::{AttachSocket, Token};
use crate::logline::{LineBuffer, Stream};
use crate::logsize::LogLimit;
use crate::oom::OomWatch;
use crate::process::{diag, set_nonblocking};
use crate::{ExitInfo, MonitorSpec};

/// Read size per `read(2)` on a container stream.
const READ_CHUNK: usize = 32 * 1024;

/// The container's stdio as the monitor holds it.
#[derive(Debug)]
pub enum Streams {
    /// Read ends of the container's stdout and stderr pipes.
    Pipes { stdout: OwnedFd, stderr: OwnedFd },
    /// The pty master received on the console socket (output is all `stdout`; input goes to it).
    Tty { master: OwnedFd },
}

/// A created container as the monitor tracks it.
#[derive(Debug)]
pub struct Container {
    /// Host PID of the container process (the runtime's pid file).
    pub pid: i32,
    pub streams: Streams,
    /// Write end of the container's stdin pipe when CRI `stdin` is set without a tty. Kept open so
    /// the container does not see EOF; the attach socket writes client input to it and closes it
    /// after the first session when `stdin_once`.
    pub stdin: Option<OwnedFd>,
    /// Where to read the OOM-kill counter after exit.
    pub oom: Option<OomWatch>,
}

/// One output stream being copied to the log and the attach clients.
struct Source {
    fd: OwnedFd,
    lines: LineBuffer,
    open: bool,
}

/// How long an exec-mode monitor waits after the process ended for its first attach client.
const EXEC_CONNECT_WAIT: Duration = Duration::from_secs(30);
/// How long queued output may sit undelivered (no client progress) before the monitor gives up.
const EXEC_FLUSH_IDLE: Duration = Duration::from_secs(10);
const CONTAINER_FLUSH_IDLE: Duration = Duration::from_secs(1);
/// How long a log reopen waits for a half-written line (`P` records out) to end in the old file.
const REOPEN_DEFER_MAX: Duration = Duration::from_secs(1);

/// Runs until the container process (or, `exec_mode`, the exec'd process) exits; delivers its
/// remaining output, writes the exit file and returns the exit code of the monitor (0, or 1 when
/// the exit file could not be written).
pub fn run(
    spec: &MonitorSpec,
    container: Container,
    log: Option<File>,
    sigfd: SignalFd,
    exec_mode: bool,
    listener: Option<std::os::fd::OwnedFd>,
) -> i32 {
    let Container { pid, streams, stdin, oom } = container;
    let mut oom = oom.map(crate::oom::OomMonitor::new);
    let tty = match &streams {
        Streams::Tty { master } => master.try_clone().ok(),
        Streams::Pipes { .. } => None,
    };
    // Input goes to the stdin pipe, or with a tty to the master, only when CRI `stdin` is set.
    let input = if spec.stdin { stdin.or_else(|| tty.as_ref().and_then(|t| t.try_clone().ok())) } else { None };
    let mut attach = AttachSocket::with_listener(listener, &spec.attach_socket, input, tty, spec.stdin_once, exec_mode);
    let mut sources: Vec<Source> = match streams {
        Streams::Pipes { stdout, stderr } => vec![source(stdout, Stream::Stdout), source(stderr, Stream::Stderr)],
        Streams::Tty { master } => vec![source(master, Stream::Stdout)],
    };
    let mut out = Vec::with_capacity(READ_CHUNK);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut log = Log { limit: LogLimit::new(spec.log_size_max, log.as_ref()), file: log, spec };
    let mut exit = reap(pid, &spec.bundle);
    // When a reopen request was first deferred (a line was half written).
    let mut reopen_since: Option<Instant> = None;

    while exit.is_none() {
        let paused = attach.output_paused();
        let open: Vec<usize> = (0..sources.len()).filter(|&i| sources[i].open && !paused).collect();
        let entries = attach.poll_entries();
        let mut fds = Vec::with_capacity(open.len() + 1 + entries.len());
        fds.push(PollFd::new(sigfd.as_fd(), PollFlags::POLLIN));
        for &i in &open {
            fds.push(PollFd::new(sources[i].fd.as_fd(), PollFlags::POLLIN));
        }
        let tokens: Vec<Token> = entries.iter().map(|e| e.2).collect();
        for (fd, ev, _) in entries {
            fds.push(PollFd::new(fd, ev));
        }
        let oom_at = fds.len();
        if let Some(fd) = oom.as_ref().and_then(|o| o.fd()) {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        // A deferred reopen is looked at again soon even when nothing else happens.
        let timeout = if reopen_since.is_some() { PollTimeout::from(20u16) } else { PollTimeout::NONE };
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => {
                diag(&spec.bundle, &format!("poll: {e}"));
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        }
        let revents: Vec<PollFlags> = fds.iter().map(|f| f.revents().unwrap_or(PollFlags::empty())).collect();
        drop(fds);
        let ready: Vec<bool> = revents.iter().map(|r| !r.is_empty()).collect();
        for (k, &i) in open.iter().enumerate() {
            if ready[k + 1] {
                read_once(&mut sources[i], &mut buf, &mut out, &mut attach);
                log.write(&mut out);
            }
        }
        let base = 1 + open.len();
        if ready.get(oom_at).copied().unwrap_or(false) {
            if let Some(o) = oom.as_mut() {
                o.on_ready();
            }
        }
        let events: Vec<(Token, PollFlags)> = tokens.into_iter().zip(revents[base..oom_at].iter().copied()).collect();
        attach.handle(&events);
        if attach.reopen_requested() {
            // Every encoded record is already written (`out` is empty here); a line still held
            // in a LineBuffer goes whole to the new file. A line whose `P` records are out
            // already is finished in the old file first (for up to REOPEN_DEFER_MAX).
            let since = *reopen_since.get_or_insert_with(Instant::now);
            if sources.iter().all(|s| !s.lines.mid_line()) || since.elapsed() >= REOPEN_DEFER_MAX {
                reopen_since = None;
                let result = reopen_log(spec, &mut log.file);
                log.limit = LogLimit::new(spec.log_size_max, log.file.as_ref());
                if let Err(e) = &result {
                    diag(&spec.bundle, &format!("reopen log: {e}"));
                }
                attach.reopen_done(&result);
            }
        }
        if ready[0] {
            while let Ok(Some(_)) = sigfd.read_signal() {}
            exit = reap(pid, &spec.bundle);
        }
    }

    // Without a PID namespace of its own, the container's other processes outlive its main
    // process (they are reparented to the pod's or the host's PID 1): end them, as runc's own
    // PID namespace would, and as containerd's shim does (`shouldKillAllOnExit`).
    if !exec_mode && kill_all_on_exit(&spec.bundle) {
        kill_remaining(spec);
    }

    // The container is gone: take what is still buffered in the pipes / pty without waiting for
    // EOF (a daemonized grandchild may keep the write ends open forever).
    for s in sources.iter_mut().filter(|s| s.open) {
        let _ = set_nonblocking(&s.fd);
        while s.open && read_once(s, &mut buf, &mut out, &mut attach) {}
        log.write(&mut out);
    }
    if exec_mode {
        attach.finish(EXEC_CONNECT_WAIT, EXEC_FLUSH_IDLE);
    } else {
        attach.finish(Duration::ZERO, CONTAINER_FLUSH_IDLE);
    }
    let now = crate::util::now_nanos();
    for s in sources.iter_mut() {
        s.lines.flush(now, &mut out);
    }
    log.write(&mut out);
    if let Some(f) = log.file.as_mut() {
        let _ = f.sync_data();
    }

    let (exit_code, exited_at) = exit.unwrap_or((255, now));
    let killed = exit_code == 128 + libc::SIGKILL;
    let info = ExitInfo { exit_code, exited_at, oom_killed: oom.as_mut().is_some_and(|o| o.oom_killed(killed)) };
    let code = write_exit_file(spec, &info, !exec_mode);
    // Clients see the connection end only now, with the exit file in place.
    drop(attach);
    code
}

/// Whether the OCI spec in `<bundle>/config.json` gives the container no PID namespace of its
/// own: its `linux.namespaces` has no `pid` entry (the host's) or one with a `path` (the pod's).
/// An unreadable spec counts as its own namespace (nothing is killed on a guess).
fn kill_all_on_exit(bundle: &std::path::Path) -> bool {
    match std::fs::read(bundle.join("config.json")).ok().and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok()) {
        Some(config) => shares_pid_namespace(&config),
        None => false,
    }
}

/// [`kill_all_on_exit`] of a parsed OCI spec.
fn shares_pid_namespace(config: &serde_json::Value) -> bool {
    let namespaces = config.pointer("/linux/namespaces").and_then(|n| n.as_array()).cloned().unwrap_or_default();
    !namespaces.iter().any(|ns| ns["type"] == "pid" && ns.get("path").and_then(|p| p.as_str()).is_none_or(str::is_empty))
}

/// `runtime kill --all <id> KILL`: SIGKILL to every process left in the container's cgroup (runc
/// signals a stopped container's cgroup too). Failures go to the monitor's diagnostics.
fn kill_remaining(spec: &MonitorSpec) {
    let out = spec.runtime_command().args(["kill", "--all", &spec.id, "KILL"]).stdin(std::process::Stdio::null()).output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => diag(&spec.bundle, &format!("kill --all after exit: {}: {}", o.status, String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => diag(&spec.bundle, &format!("kill --all after exit: {e}")),
    }
    // Reap what the kill ended among our own children (the subreaper gets orphans too).
    while let Ok(st) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if st == WaitStatus::StillAlive {
            break;
        }
    }
}

fn source(fd: OwnedFd, stream: Stream) -> Source {
    Source { fd, lines: LineBuffer::new(stream), open: true }
}

/// Reads one chunk from `s` into log records. Returns true when data was read; false on EOF
/// (pipe closed, or EIO from a pty whose slave side is gone), on EAGAIN, or on error (EOF and
/// errors also close the source and flush its partial line).
fn read_once(s: &mut Source, buf: &mut [u8], out: &mut Vec<u8>, attach: &mut AttachSocket) -> bool {
    match nix::unistd::read(&s.fd, buf) {
        Ok(0) => {
            s.open = false;
            s.lines.flush(crate::util::now_nanos(), out);
            false
        }
        Ok(n) => {
            s.lines.push(&buf[..n], crate::util::now_nanos(), out);
            let stream = match s.lines.stream() {
                Stream::Stdout => crate::packet::STDOUT,
                Stream::Stderr => crate::packet::STDERR,
            };
            attach.broadcast(stream, &buf[..n]);
            true
        }
        Err(Errno::EAGAIN) | Err(Errno::EINTR) => false,
        Err(_) => {
            s.open = false;
            s.lines.flush(crate::util::now_nanos(), out);
            false
        }
    }
}

/// The CRI log as the event loop writes it: the open file and its size limit.
struct Log<'a> {
    file: Option<File>,
    limit: LogLimit,
    spec: &'a MonitorSpec,
}

impl Log<'_> {
    /// Appends the encoded records to the log (or drops them when there is no log) and clears
    /// `out`; at `log_size_max` the file starts over empty ([`crate::logsize`]). A failed write
    /// (disk full) loses those records but never stops the monitor.
    fn write(&mut self, out: &mut Vec<u8>) {
        if let (Some(f), false) = (self.file.as_mut(), out.is_empty()) {
            let bundle = &self.spec.bundle;
            self.limit.write(f, self.spec.log_path.as_deref(), out, &mut |e| diag(bundle, &e));
        }
        out.clear();
    }
}

/// Reopens the CRI log file at `spec.log_path` (CRI ReopenContainerLog: kubelet renamed the old
/// one, so a new file is created; when it was not renamed the same file is opened again). The old
/// file stays open until the new one is, so a failure loses nothing.
fn reopen_log(spec: &MonitorSpec, log: &mut Option<File>) -> Result<(), String> {
    let Some(path) = spec.log_path.as_deref() else {
        return Err("this monitor writes no log file (no log_path)".into());
    };
    match crate::process::open_log(Some(path))? {
        Some(f) => {
            if let Some(old) = log.as_mut() {
                let _ = old.sync_data();
            }
            *log = Some(f);
            Ok(())
        }
        None => Err(format!("log file {path:?} could not be opened")),
    }
}

/// Reaps every exited child; returns `(exit_code, exited_at)` when one of them is the container
/// process. Exit code: the process's status, or 128 + signal number when a signal killed it.
fn reap(pid: i32, bundle: &std::path::Path) -> Option<(i32, i64)> {
    let mut result = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(p, code)) if p.as_raw() == pid => result = Some((code, crate::util::now_nanos())),
            Ok(WaitStatus::Signaled(p, sig, _)) if p.as_raw() == pid => result = Some((128 + sig as i32, crate::util::now_nanos())),
            Ok(WaitStatus::StillAlive) => break,
            Ok(_) => {}
            Err(Errno::EINTR) => {}
            Err(Errno::ECHILD) => {
                // No children at all: the container process must have been reparented elsewhere
                // (no subreaper). Fall back to checking that it still exists.
                if result.is_none() && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) == Err(Errno::ESRCH) {
                    diag(bundle, &format!("container process {pid} vanished without being reaped; exit code unknown"));
                    result = Some((255, crate::util::now_nanos()));
                }
                break;
            }
            Err(e) => {
                diag(bundle, &format!("waitpid: {e}"));
                break;
            }
        }
    }
    result
}

/// Writes the exit file atomically (creating its directory when `create_dir`; an exec session's
/// directory removed by the daemon must stay removed); 0 on success, 1 otherwise.
fn write_exit_file(spec: &MonitorSpec, info: &ExitInfo, create_dir: bool) -> i32 {
    if let (Some(dir), true) = (spec.exit_file.parent(), create_dir) {
        let _ = std::fs::create_dir_all(dir);
    }
    let data = match serde_json::to_vec(info) {
        Ok(d) => d,
        Err(e) => {
            diag(&spec.bundle, &format!("encode exit info: {e}"));
            return 1;
        }
    };
    match crate::util::write_atomic(&spec.exit_file, &data) {
        Ok(()) => 0,
        Err(e) => {
            diag(&spec.bundle, &format!("write exit file {:?}: {e}", spec.exit_file));
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kill_all_only_without_a_pid_namespace_of_its_own() {
        let own = json!({"linux": {"namespaces": [{"type": "mount"}, {"type": "pid"}]}});
        let pod = json!({"linux": {"namespaces": [{"type": "pid", "path": "/proc/42/ns/pid"}]}});
        let host = json!({"linux": {"namespaces": [{"type": "mount"}, {"type": "network"}]}});
        let empty_path = json!({"linux": {"namespaces": [{"type": "pid", "path": ""}]}});
        assert!(!shares_pid_namespace(&own), "its own namespace: runc ends the rest with its init");
        assert!(shares_pid_namespace(&pod), "the pod's namespace");
        assert!(shares_pid_namespace(&host), "the host's namespace");
        assert!(!shares_pid_namespace(&empty_path), "an empty path is a new namespace");
        assert!(!kill_all_on_exit(std::path::Path::new("/nonexistent")), "no spec, no guess");
    }
}
