//! The monitor process (`berth-monitor <bundle>/monitor.json`): start-up up to the sync reply.
//!
//! Sequence (conmon's, simplified): take the sync pipe from fd 3 and close every other inherited
//! descriptor; fork, the first process exits 0 at once; the second calls `setsid`, becomes child
//! subreaper (so the container process, whose runtime parent exits after `create`, is reparented
//! to it), writes `<bundle>/monitor.pid`, runs `runtime create` (exec mode: `runtime exec --process P
//! --detach`) with the container's stdio, reads
//! the runtime's pid file and answers on fd 3 with one [`SyncMessage`] line. [`crate::eventloop`]
//! does the rest. SIGPIPE is ignored (Rust's runtime sets SIG_IGN before `main`; child processes
//! get it back at default from `std::process::Command`).
//!
//! No tokio here: std + nix, one thread.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::eventloop::{self, Container, Streams};
use crate::oom::OomWatch;
use crate::{read_pid, PID_FILE};
use crate::{ExecProcess, MonitorFile, MonitorSpec, SyncMessage};

/// The runtime's JSON log inside the bundle (`--log <bundle>/runtime.log --log-format json`).
pub const RUNTIME_LOG: &str = "runtime.log";
/// The console socket name inside the bundle (tty containers).
pub const CONSOLE_SOCKET: &str = "console.sock";
/// The monitor's own diagnostics inside the bundle (its stdio is /dev/null).
pub const DIAG_LOG: &str = "monitor.log";

/// Entry point of the `berth-monitor` binary; returns the process exit code.
/// Usage: `berth-monitor <bundle>/monitor.json` with the sync pipe on fd 3.
pub fn main() -> i32 {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    match args.as_slice() {
        [a] if a == "--version" => {
            println!("berth-monitor {}", env!("CARGO_PKG_VERSION"));
            0
        }
        [path] => run(Path::new(path)),
        _ => {
            eprintln!("usage: berth-monitor <bundle>/monitor.json  (sync pipe on fd 3)");
            2
        }
    }
}

/// Runs a monitor for the spec at `spec_path`. Returns 0 in the first process right after the
/// fork; in the monitor proper, returns once the container has exited and the exit file is written.
pub fn run(spec_path: &Path) -> i32 {
    let mut sync = take_sync_pipe();
    close_inherited_fds();
    let MonitorFile { spec, exec } =
        match std::fs::read(spec_path).map_err(|e| e.to_string()).and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string())) {
            Ok(s) => s,
            Err(e) => {
                report(&mut sync, &error_msg(format!("monitor spec {spec_path:?}: {e}")));
                return 1;
            }
        };
    match fork_detached() {
        Ok(false) => return 0,
        Ok(true) => {}
        Err(e) => {
            report(&mut sync, &error_msg(format!("monitor fork: {e}")));
            return 1;
        }
    }
    // The monitor proper. Failures of these two are not fatal: the monitor still works, it just
    // would not outlive a daemon killed with its session, or would not reap reparented orphans.
    if let Err(e) = nix::unistd::setsid() {
        diag(&spec.bundle, &format!("setsid: {e}"));
    }
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        diag(&spec.bundle, &format!("PR_SET_CHILD_SUBREAPER: {e}"));
    }
    let _ = std::env::set_current_dir(&spec.bundle);
    let pid_file = spec.bundle.join(PID_FILE);
    if let Err(e) = crate::util::write_atomic(&pid_file, std::process::id().to_string().as_bytes()) {
        diag(&spec.bundle, &format!("write {pid_file:?}: {e}"));
    }

    // SIGCHLD is read from a signalfd; it must be blocked before the runtime can exit.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    let sigfd = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
        .and_then(|_| SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC));
    let sigfd = match sigfd {
        Ok(s) => s,
        Err(e) => {
            report(&mut sync, &error_msg(format!("signalfd: {e}")));
            return 1;
        }
    };

    let log = match open_log(spec.log_path.as_deref()) {
        Ok(l) => l,
        Err(e) => {
            report(&mut sync, &error_msg(e));
            return 1;
        }
    };
    let container = match create_container(&spec, exec.as_ref()) {
        Ok(c) => c,
        Err(message) => {
            report(&mut sync, &error_msg(message));
            return 1;
        }
    };
    // The attach socket exists before the daemon hears the pid: an Attach right after
    // CreateContainer (or an exec session's first connect) never finds it missing.
    let listener = crate::attach_socket::listen(&spec.attach_socket, &spec.bundle);
    report(&mut sync, &SyncMessage { pid: Some(container.pid), error: None });
    drop(sync);
    eventloop::run(&spec, container, log, sigfd, exec.is_some(), listener)
}

fn error_msg(message: String) -> SyncMessage {
    SyncMessage { pid: None, error: Some(message) }
}

/// Writes the one sync line and closes the pipe (later calls do nothing).
fn report(sync: &mut Option<File>, msg: &SyncMessage) {
    if let Some(mut f) = sync.take() {
        let mut line = serde_json::to_vec(msg).unwrap_or_else(|_| b"{\"error\":\"encode\"}".to_vec());
        line.push(b'\n');
        let _ = f.write_all(&line);
    }
}

/// Appends one diagnostic line to `<bundle>/monitor.log` (best effort).
pub fn diag(bundle: &Path, line: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(bundle.join(DIAG_LOG)) {
        let _ = writeln!(f, "{} {line}", crate::util::rfc3339_nano(crate::util::now_nanos()));
    }
}

/// Takes fd 3 (the sync pipe's write end) when it is open, marking it close-on-exec so the
/// runtime and the container never inherit it.
#[allow(unsafe_code)]
fn take_sync_pipe() -> Option<File> {
    // SAFETY: F_GETFD only inspects the descriptor table entry.
    if unsafe { libc::fcntl(3, libc::F_GETFD) } == -1 {
        return None;
    }
    // SAFETY: fd 3 is open (checked above) and nothing else in this process owns it: the daemon
    // placed it there for us and the Rust runtime does not use it.
    let fd = unsafe { OwnedFd::from_raw_fd(3) };
    let _ = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
    Some(File::from(fd))
}

/// Closes every inherited descriptor above 3, so no daemon socket or file stays open in the
/// long-lived monitor.
#[allow(unsafe_code)]
fn close_inherited_fds() {
    let fds: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).filter(|&fd| fd > 3).collect(),
        Err(_) => return,
    };
    for fd in fds {
        // SAFETY: these descriptors were inherited from the daemon and no Rust object in this
        // single-threaded process owns them (the read_dir handle is already closed; closing its
        // stale number returns EBADF, which is ignored).
        unsafe {
            libc::close(fd);
        }
    }
}

/// Forks; the parent returns `Ok(false)` (it should exit at once), the child `Ok(true)`.
#[allow(unsafe_code)]
fn fork_detached() -> nix::Result<bool> {
    // SAFETY: the monitor is single-threaded here (no thread has been started), so the child
    // may run arbitrary code after fork.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { .. } => Ok(false),
        nix::unistd::ForkResult::Child => Ok(true),
    }
}

/// Opens the CRI log file `O_APPEND|O_CREAT`, mode 0640, creating its parent directory.
pub fn open_log(path: Option<&Path>) -> Result<Option<File>, String> {
    let Some(path) = path else { return Ok(None) };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("create log directory {dir:?}: {e}"))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map(Some)
        .map_err(|e| format!("open log file {path:?}: {e}"))
}

/// Runs `runtime create` (or, in exec mode, `runtime exec --process P --detach`) with the
/// process's stdio and returns the created process.
/// `Err` carries the message for the sync reply (the runtime's own error text when it has one).
fn create_container(spec: &MonitorSpec, exec: Option<&ExecProcess>) -> Result<Container, String> {
    let runtime_log = spec.bundle.join(RUNTIME_LOG);
    let _ = std::fs::remove_file(&runtime_log);
    let _ = std::fs::remove_file(&spec.pid_file);
    let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("create stdio pipe: {e}"));

    let mut cmd = spec.runtime_command();
    cmd.arg("--log").arg(&runtime_log).arg("--log-format").arg("json");
    match exec {
        Some(e) => cmd.arg("exec").arg("--process").arg(&e.process_json).arg("--detach"),
        None => cmd.arg("create").arg("--bundle").arg(&spec.bundle),
    };
    cmd.arg("--pid-file").arg(&spec.pid_file).current_dir(&spec.bundle);

    let mut stdin_keep = None;
    let mut console = None;
    let mut pipes = None;
    if spec.terminal {
        let (listener, arg) = bind_console_socket(&spec.bundle)?;
        cmd.arg("--console-socket").arg(arg);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        console = Some(listener);
    } else {
        if spec.stdin {
            let (r, w) = pipe()?;
            cmd.stdin(Stdio::from(r));
            stdin_keep = Some(w);
        } else {
            cmd.stdin(Stdio::null());
        }
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        cmd.stdout(Stdio::from(out_w)).stderr(Stdio::from(err_w));
        pipes = Some((out_r, err_r));
    }
    cmd.arg(&spec.id);

    let status = cmd.status().map_err(|e| format!("run {:?}: {e}", spec.runtime));
    // Drop the child's ends of the pipes now: only the container may hold them from here on.
    drop(cmd);
    let status = status?;
    if !status.success() {
        let log = std::fs::read_to_string(&runtime_log).unwrap_or_default();
        let mut message = crate::runtime::last_json_log_error(&log)
            .unwrap_or_else(|| format!("{:?} {} exited with {status}", spec.runtime, if exec.is_some() { "exec" } else { "create" }));
        if let Some((_, err_r)) = &pipes {
            // runc also prints its error on its stderr, which is the container's stderr pipe.
            let extra = crate::runtime::runtime_error_message(&read_available(err_r));
            if !extra.is_empty() && !extra.contains(&message) && !message.contains(&extra) {
                message = format!("{message} (stderr: {extra})");
            }
        }
        if console.is_some() {
            let _ = std::fs::remove_file(spec.bundle.join(CONSOLE_SOCKET));
        }
        return Err(message);
    }

    let streams = match (console, pipes) {
        (Some(listener), _) => {
            let master = receive_pty_master(&listener);
            let _ = std::fs::remove_file(spec.bundle.join(CONSOLE_SOCKET));
            Streams::Tty { master: master? }
        }
        (None, Some((stdout, stderr))) => Streams::Pipes { stdout, stderr },
        (None, None) => return Err("internal: no container stdio".to_string()),
    };
    let pid = read_pid(&spec.pid_file)
        .ok_or_else(|| format!("runtime create succeeded but pid file {:?} is missing or invalid", spec.pid_file))?;
    // An exec'd process shares the container's cgroup: its counter says nothing about this process.
    let oom = if exec.is_some() { None } else { OomWatch::for_pid(pid, Path::new("/sys/fs/cgroup")) };
    Ok(Container { pid, streams, stdin: stdin_keep, oom })
}

/// Binds the console socket at `<bundle>/console.sock`; returns the listener and the path to
/// pass as `--console-socket`. A path longer than `sun_path` allows is bound relative to the
/// bundle (the monitor's and runtime's working directory).
fn bind_console_socket(bundle: &Path) -> Result<(UnixListener, PathBuf), String> {
    let abs = bundle.join(CONSOLE_SOCKET);
    let _ = std::fs::remove_file(&abs);
    let arg = if abs.as_os_str().len() < 100 { abs.clone() } else { PathBuf::from(CONSOLE_SOCKET) };
    let listener = UnixListener::bind(&arg).map_err(|e| format!("bind console socket {abs:?}: {e}"))?;
    Ok((listener, arg))
}

/// Accepts the runtime's connection on the console socket and receives the pty master it sends
/// with SCM_RIGHTS (runc sends it during `create`, so it waits in the socket when create returns).
fn receive_pty_master(listener: &UnixListener) -> Result<OwnedFd, String> {
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(10_000u16)) {
        Ok(n) if n > 0 => {}
        Ok(_) => return Err("runtime did not connect to the console socket within 10 s".to_string()),
        Err(e) => return Err(format!("poll console socket: {e}")),
    }
    let (stream, _) = listener.accept().map_err(|e| format!("accept on console socket: {e}"))?;
    recv_fd(stream.as_raw_fd()).map_err(|e| format!("receive pty master: {e}"))
}

/// Receives one descriptor passed with SCM_RIGHTS on a connected unix socket.
#[allow(unsafe_code)]
fn recv_fd(sock: RawFd) -> Result<OwnedFd, String> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut name = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC).map_err(|e| e.to_string())?;
    let mut received: Vec<RawFd> = Vec::new();
    for cmsg in msg.cmsgs().map_err(|e| e.to_string())? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            received.extend(fds);
        }
    }
    // SAFETY: every descriptor in SCM_RIGHTS was just installed in this process by the kernel
    // and is owned by nothing else; each is wrapped exactly once.
    let mut owned: Vec<OwnedFd> = received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }).collect();
    if owned.is_empty() {
        return Err("no descriptor in the console socket message".to_string());
    }
    Ok(owned.swap_remove(0))
}

/// Whatever is readable right now on a pipe (non-blocking), as text; at most 64 KiB.
fn read_available(fd: &OwnedFd) -> String {
    let _ = set_nonblocking(fd);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let Ok(dup) = fd.try_clone() else { return String::new() };
    let mut f = File::from(dup);
    while out.len() < 64 * 1024 {
        match f.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sets O_NONBLOCK on a descriptor (keeping its other status flags).
pub fn set_nonblocking(fd: &impl AsFd) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(|_| ())
}
