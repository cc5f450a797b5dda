//! The monitor's event loop after `runtime create`: copy the container's output into the CRI log,
//! reap children (the monitor is child subreaper), and when the container process exits drain the
//! output, write the exit file and return.
//!
//! One thread, `poll(2)` over a signalfd (SIGCHLD) and the container's stdout/stderr pipes or pty
//! master. Control channels (attach socket, resize, reopen-log) join this poll set in issue 3.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

use super::logline::{LineBuffer, Stream};
use super::oom::OomWatch;
use super::process::{diag, set_nonblocking};
use super::{ExitInfo, MonitorSpec};

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
    /// the container does not see EOF; the attach socket (issue 3) writes to it and closes it
    /// after the first session when `stdin_once`.
    pub stdin: Option<OwnedFd>,
    /// Where to read the OOM-kill counter after exit.
    pub oom: Option<OomWatch>,
}

/// One output stream being copied to the log.
struct Source {
    fd: OwnedFd,
    lines: LineBuffer,
    open: bool,
}

/// Runs until the container process exits; writes the exit file and returns the exit code of the
/// monitor (0, or 1 when the exit file could not be written).
pub fn run(spec: &MonitorSpec, container: Container, mut log: Option<File>, sigfd: SignalFd) -> i32 {
    let Container { pid, streams, stdin, oom } = container;
    // Held for the attach socket (issue 3); dropping it would close the container's stdin.
    let _stdin = stdin;
    let mut sources: Vec<Source> = match streams {
        Streams::Pipes { stdout, stderr } => vec![source(stdout, Stream::Stdout), source(stderr, Stream::Stderr)],
        Streams::Tty { master } => vec![source(master, Stream::Stdout)],
    };
    let mut out = Vec::with_capacity(READ_CHUNK);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut exit = reap(pid, &spec.bundle);

    while exit.is_none() {
        let open: Vec<usize> = (0..sources.len()).filter(|&i| sources[i].open).collect();
        let mut fds = Vec::with_capacity(open.len() + 1);
        fds.push(PollFd::new(sigfd.as_fd(), PollFlags::POLLIN));
        for &i in &open {
            fds.push(PollFd::new(sources[i].fd.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => {
                diag(&spec.bundle, &format!("poll: {e}"));
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        }
        let ready: Vec<bool> = fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect();
        drop(fds);
        for (k, &i) in open.iter().enumerate() {
            if ready[k + 1] {
                read_once(&mut sources[i], &mut buf, &mut out);
                write_log(&mut log, &mut out);
            }
        }
        if ready[0] {
            while let Ok(Some(_)) = sigfd.read_signal() {}
            exit = reap(pid, &spec.bundle);
        }
    }

    // The container is gone: take what is still buffered in the pipes / pty without waiting for
    // EOF (a daemonized grandchild may keep the write ends open forever).
    for s in sources.iter_mut().filter(|s| s.open) {
        let _ = set_nonblocking(&s.fd);
        while s.open && read_once(s, &mut buf, &mut out) {}
        write_log(&mut log, &mut out);
    }
    let now = crate::util::now_nanos();
    for s in sources.iter_mut() {
        s.lines.flush(now, &mut out);
    }
    write_log(&mut log, &mut out);
    if let Some(f) = log.as_mut() {
        let _ = f.sync_data();
    }

    let (exit_code, exited_at) = exit.unwrap_or((255, now));
    let info = ExitInfo { exit_code, exited_at, oom_killed: oom.as_ref().is_some_and(|o| o.oom_killed()) };
    write_exit_file(spec, &info)
}

fn source(fd: OwnedFd, stream: Stream) -> Source {
    Source { fd, lines: LineBuffer::new(stream), open: true }
}

/// Reads one chunk from `s` into log records. Returns true when data was read; false on EOF
/// (pipe closed, or EIO from a pty whose slave side is gone), on EAGAIN, or on error (EOF and
/// errors also close the source and flush its partial line).
fn read_once(s: &mut Source, buf: &mut [u8], out: &mut Vec<u8>) -> bool {
    match nix::unistd::read(&s.fd, buf) {
        Ok(0) => {
            s.open = false;
            s.lines.flush(crate::util::now_nanos(), out);
            false
        }
        Ok(n) => {
            s.lines.push(&buf[..n], crate::util::now_nanos(), out);
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

/// Appends the encoded records to the log (or drops them when there is no log) and clears `out`.
/// A failed write (disk full) loses those records but never stops the monitor.
fn write_log(log: &mut Option<File>, out: &mut Vec<u8>) {
    if let Some(f) = log.as_mut() {
        if !out.is_empty() {
            let _ = f.write_all(out);
        }
    }
    out.clear();
}

/// Reaps every exited child; returns `(exit_code, exited_at)` when one of them is the container
/// process. Exit code: the process's status, or 128 + signal number when a signal killed it.
fn reap(pid: i32, bundle: &std::path::Path) -> Option<(i32, i64)> {
    let mut result = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(p, code)) if p.as_raw() == pid => result = Some((code, crate::util::now_nanos())),
            Ok(WaitStatus::Signaled(p, sig, _)) if p.as_raw() == pid => {
                result = Some((128 + sig as i32, crate::util::now_nanos()))
            }
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

/// Writes the exit file atomically (creating its directory); 0 on success, 1 otherwise.
fn write_exit_file(spec: &MonitorSpec, info: &ExitInfo) -> i32 {
    if let Some(dir) = spec.exit_file.parent() {
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
