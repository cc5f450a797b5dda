//! The monitor's side of the attach socket (conmon's design, one packet protocol).
//!
//! A unix `SOCK_SEQPACKET` listener at `MonitorSpec.attach_socket`; any number of clients at once.
//! Packets are described in [`crate::packet`]: the monitor sends every chunk it
//! reads from the container's stdout / stderr (or pty) to every client as `[1|2] + data`; clients
//! send stdin data, a stdin-EOF mark and terminal resizes.
//!
//! Flow control: a client whose socket is full gets its packets queued; in container mode a client
//! with more than [`CLIENT_QUEUE_CAP`] bytes queued is dropped (a slow client never blocks the
//! container or its log). In exec mode (one session, no log) a full queue instead pauses reading the
//! process's output, so the process itself is slowed down as a pipe would, and output produced
//! before the first client connects is kept for it.
//!
//! All descriptors are non-blocking; everything runs on the monitor's one thread.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, AddressFamily, Backlog, MsgFlags, SockFlag, SockType, UnixAddr};

use crate::packet::{decode_client_packet, ClientPacket, MAX_PACKET};
use crate::process::diag;

/// Bytes queued for one client before it is dropped (container mode) or output is paused (exec).
pub const CLIENT_QUEUE_CAP: usize = 1 << 20;
/// `sun_path` is 108 bytes with its NUL; longer paths are bound relative to their directory.
const SUN_PATH_MAX: usize = 107;

/// What a poll entry of [`AttachSocket::poll_entries`] stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    Listener,
    Client(usize),
    Stdin,
}

struct Client {
    fd: OwnedFd,
    queue: VecDeque<Vec<u8>>,
    queued: usize,
    /// Still reading packets from it (false after its EOF).
    read_open: bool,
    /// It asked for a log reopen and awaits the answer ([`AttachSocket::reopen_done`]).
    reopen_pending: bool,
    /// A control connection (it sent a reopen request): it gets no output and its end is no
    /// stdin EOF.
    control: bool,
}

/// The attach socket, its clients and the container's stdin as the monitor holds them.
pub struct AttachSocket {
    path: PathBuf,
    listener: Option<OwnedFd>,
    clients: Vec<Client>,
    /// Exec mode: output kept for the first client (`Some` until one connects).
    backlog: Option<(VecDeque<Vec<u8>>, usize)>,
    exec_mode: bool,
    /// Where client stdin goes: the stdin pipe's write end or a dup of the pty master.
    stdin: Option<OwnedFd>,
    stdin_is_tty: bool,
    stdin_once: bool,
    /// Stdin bytes accepted from a client but not yet written (the container is not reading).
    stdin_pending: Vec<u8>,
    /// Close the stdin pipe once `stdin_pending` is written.
    stdin_close_after: bool,
    /// A dup of the pty master, for TIOCSWINSZ.
    tty: Option<OwnedFd>,
}

impl AttachSocket {
    /// The attach side of a monitor over `listener` (made by [`listen`] before the monitor reports
    /// the pid, so the socket exists as soon as the daemon hears of the container).
    pub fn with_listener(
        listener: Option<OwnedFd>,
        path: &Path,
        stdin: Option<OwnedFd>,
        tty: Option<OwnedFd>,
        stdin_once: bool,
        exec_mode: bool,
    ) -> AttachSocket {
        for fd in stdin.iter().chain(tty.iter()) {
            let _ = crate::process::set_nonblocking(fd);
        }
        AttachSocket {
            path: path.to_path_buf(),
            listener,
            clients: Vec::new(),
            backlog: exec_mode.then(|| (VecDeque::new(), 0)),
            exec_mode,
            stdin_is_tty: stdin.is_some() && tty.is_some(),
            stdin,
            stdin_once,
            stdin_pending: Vec::new(),
            stdin_close_after: false,
            tty,
        }
    }

    /// Number of connected clients.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Exec mode: true while some client (or the backlog) holds more than [`CLIENT_QUEUE_CAP`]
    /// bytes, i.e. the process's output must not be read for now.
    pub fn output_paused(&self) -> bool {
        self.exec_mode
            && (self.backlog.as_ref().is_some_and(|(_, n)| *n > CLIENT_QUEUE_CAP)
                || self.clients.iter().any(|c| c.queued > CLIENT_QUEUE_CAP))
    }

    /// The descriptors to poll and the events wanted, with what each stands for.
    pub fn poll_entries(&self) -> Vec<(BorrowedFd<'_>, PollFlags, Token)> {
        let mut v = Vec::with_capacity(self.clients.len() + 2);
        if let Some(l) = &self.listener {
            v.push((l.as_fd(), PollFlags::POLLIN, Token::Listener));
        }
        let accept_input = self.stdin_pending.is_empty();
        for (i, c) in self.clients.iter().enumerate() {
            let mut ev = PollFlags::empty();
            if c.read_open && accept_input {
                ev |= PollFlags::POLLIN;
            }
            if !c.queue.is_empty() {
                ev |= PollFlags::POLLOUT;
            }
            v.push((c.fd.as_fd(), ev, Token::Client(i)));
        }
        if let (Some(s), false) = (&self.stdin, self.stdin_pending.is_empty()) {
            v.push((s.as_fd(), PollFlags::POLLOUT, Token::Stdin));
        }
        v
    }

    /// Handles the events poll reported for the entries of [`AttachSocket::poll_entries`].
    pub fn handle(&mut self, events: &[(Token, PollFlags)]) {
        let mut gone = Vec::new();
        for &(token, revents) in events {
            if revents.is_empty() {
                continue;
            }
            match token {
                Token::Listener => self.accept_all(),
                Token::Stdin => self.write_stdin(),
                Token::Client(i) => {
                    if !self.serve_client(i, revents) {
                        gone.push(i);
                    }
                }
            }
        }
        gone.sort_unstable();
        for i in gone.into_iter().rev() {
            self.drop_client(i);
        }
    }

    /// Sends one output chunk (`stream` 1 stdout, 2 stderr) to every client.
    pub fn broadcast(&mut self, stream: u8, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let mut packet = Vec::with_capacity(data.len() + 1);
        packet.push(stream);
        packet.extend_from_slice(data);
        if let Some((q, n)) = self.backlog.as_mut() {
            *n += packet.len();
            q.push_back(packet);
            return;
        }
        let mut gone = Vec::new();
        for (i, c) in self.clients.iter_mut().enumerate() {
            if c.control {
                continue;
            }
            if c.queue.is_empty() {
                match send_packet(&c.fd, &packet) {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(_) => {
                        gone.push(i);
                        continue;
                    }
                }
            }
            c.queued += packet.len();
            c.queue.push_back(packet.clone());
            if !self.exec_mode && c.queued > CLIENT_QUEUE_CAP {
                gone.push(i);
            }
        }
        for i in gone.into_iter().rev() {
            self.drop_client(i);
        }
    }

    /// After the process ended: in exec mode wait (up to `connect_wait`) for the first client when
    /// none came yet, then deliver queued output until every queue is empty or no client made
    /// progress for `idle` (container mode passes short times).
    pub fn finish(&mut self, connect_wait: Duration, idle: Duration) {
        let start = Instant::now();
        while self.backlog.is_some() && self.listener.is_some() && start.elapsed() < connect_wait {
            if let Some(l) = &self.listener {
                let mut fds = [PollFd::new(l.as_fd(), PollFlags::POLLIN)];
                let _ = poll(&mut fds, PollTimeout::from(100u16));
            }
            self.accept_all();
        }
        let mut last_progress = Instant::now();
        while self.clients.iter().any(|c| !c.queue.is_empty()) && last_progress.elapsed() < idle {
            let mut fds: Vec<PollFd> =
                self.clients.iter().filter(|c| !c.queue.is_empty()).map(|c| PollFd::new(c.fd.as_fd(), PollFlags::POLLOUT)).collect();
            let _ = poll(&mut fds, PollTimeout::from(100u16));
            drop(fds);
            let before: usize = self.clients.iter().map(|c| c.queued).sum();
            let mut gone = Vec::new();
            for (i, c) in self.clients.iter_mut().enumerate() {
                if flush_queue(c).is_err() {
                    gone.push(i);
                }
            }
            for i in gone.into_iter().rev() {
                self.drop_client(i);
            }
            let after: usize = self.clients.iter().map(|c| c.queued).sum();
            if after < before {
                last_progress = Instant::now();
            }
        }
    }

    fn accept_all(&mut self) {
        let Some(l) = &self.listener else { return };
        loop {
            match socket::accept4(l.as_raw_fd(), SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC) {
                Ok(raw) => {
                    let fd = owned(raw);
                    let (queue, queued) = self.backlog.take().unwrap_or_default();
                    self.clients.push(Client { fd, queue, queued, read_open: true, reopen_pending: false, control: false });
                }
                Err(Errno::EINTR) | Err(Errno::ECONNABORTED) => continue,
                Err(_) => return,
            }
        }
    }

    /// Reads and acts on a client's packets and writes its queue; false when it is gone.
    fn serve_client(&mut self, i: usize, revents: PollFlags) -> bool {
        if revents.contains(PollFlags::POLLOUT) && flush_queue(&mut self.clients[i]).is_err() {
            return false;
        }
        if self.clients[i].read_open && revents.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            let mut buf = vec![0u8; MAX_PACKET + 1];
            // One batch per wakeup, so one client cannot starve the others. A client that hung
            // up is read to its end at once (what it sent is bounded by its socket buffer), so
            // a container that does not read its stdin cannot make the poll loop spin on POLLHUP.
            let hung_up = revents.intersects(PollFlags::POLLHUP | PollFlags::POLLERR);
            for _ in 0..if hung_up { usize::MAX } else { 16 } {
                if !hung_up && !self.stdin_pending.is_empty() {
                    break;
                }
                match socket::recv(self.clients[i].fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                    Ok(0) => {
                        self.clients[i].read_open = false;
                        self.client_input_ended(i);
                        break;
                    }
                    Ok(n) => self.client_packet(i, &buf[..n]),
                    Err(Errno::EAGAIN) => {
                        if hung_up {
                            self.clients[i].read_open = false;
                            self.client_input_ended(i);
                        }
                        break;
                    }
                    Err(Errno::EINTR) => continue,
                    Err(_) => return false,
                }
            }
        }
        !(revents.contains(PollFlags::POLLERR) || (revents.contains(PollFlags::POLLHUP) && !self.clients[i].read_open))
    }

    /// Whether some client asked for the log file to be reopened (the event loop then reopens it
    /// and calls [`AttachSocket::reopen_done`]).
    pub fn reopen_requested(&self) -> bool {
        self.clients.iter().any(|c| c.reopen_pending)
    }

    /// Answers every client that asked for a reopen (`[3, 0]`, or `[3, 1] + message`), ahead of
    /// any output still queued for it.
    pub fn reopen_done(&mut self, result: &Result<(), String>) {
        let answer = crate::packet::encode_reopen_answer(result);
        let mut gone = Vec::new();
        for (i, c) in self.clients.iter_mut().enumerate().filter(|(_, c)| c.reopen_pending) {
            c.reopen_pending = false;
            match send_packet(&c.fd, &answer) {
                Ok(true) => {}
                Ok(false) => {
                    c.queued += answer.len();
                    c.queue.push_front(answer.clone());
                }
                Err(_) => gone.push(i),
            }
        }
        for i in gone.into_iter().rev() {
            self.drop_client(i);
        }
    }

    fn client_packet(&mut self, i: usize, packet: &[u8]) {
        match decode_client_packet(packet) {
            Some(ClientPacket::ReopenLog) => {
                // From now on a control connection: no output (what is queued is dropped), so a
                // client waiting for the answer is never dropped for not reading output.
                let c = &mut self.clients[i];
                c.reopen_pending = true;
                c.control = true;
                c.queue.clear();
                c.queued = 0;
            }
            Some(ClientPacket::Stdin(data)) if self.stdin.is_some() => {
                self.stdin_pending.extend_from_slice(data);
                self.write_stdin();
            }
            Some(ClientPacket::CloseStdin) if !self.clients[i].control => self.stdin_eof(),
            Some(ClientPacket::Resize { height, width }) => {
                if let Some(tty) = &self.tty {
                    if let Err(e) = set_winsize(tty, height, width) {
                        diag(Path::new("."), &format!("TIOCSWINSZ {height}x{width}: {e}"));
                    }
                }
            }
            _ => {}
        }
    }

    /// Client `i` sent its last packet: an attach session's stdin ended (a control connection's
    /// end means nothing for stdin).
    fn client_input_ended(&mut self, i: usize) {
        if !self.clients[i].control {
            self.stdin_eof();
        }
    }

    /// One client's stdin ended: with `stdin_once` the container's stdin pipe is closed (once the
    /// bytes already accepted are written). A pty is never closed (that would end its output too).
    fn stdin_eof(&mut self) {
        if self.stdin_once && !self.stdin_is_tty && self.stdin.is_some() {
            self.stdin_close_after = true;
            if self.stdin_pending.is_empty() {
                self.stdin = None;
            }
        }
    }

    fn write_stdin(&mut self) {
        let Some(fd) = &self.stdin else {
            self.stdin_pending.clear();
            return;
        };
        while !self.stdin_pending.is_empty() {
            match nix::unistd::write(fd, &self.stdin_pending) {
                Ok(n) => {
                    self.stdin_pending.drain(..n);
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return,
                Err(_) => {
                    // The reader is gone (EPIPE): input has nowhere to go.
                    self.stdin_pending.clear();
                    self.stdin = None;
                    return;
                }
            }
        }
        if self.stdin_close_after {
            self.stdin = None;
        }
    }

    fn drop_client(&mut self, i: usize) {
        let c = self.clients.remove(i);
        if c.read_open && !c.control {
            self.stdin_eof();
        }
    }
}

impl Drop for AttachSocket {
    fn drop(&mut self) {
        if self.listener.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Sends the queue's packets until it is empty or the socket is full; Err when the client is gone.
fn flush_queue(c: &mut Client) -> Result<(), Errno> {
    while let Some(p) = c.queue.front() {
        if !send_packet(&c.fd, p)? {
            return Ok(());
        }
        c.queued -= p.len();
        c.queue.pop_front();
    }
    Ok(())
}

/// One non-blocking send: Ok(true) sent, Ok(false) socket full, Err gone.
fn send_packet(fd: &OwnedFd, packet: &[u8]) -> Result<bool, Errno> {
    loop {
        match socket::send(fd.as_raw_fd(), packet, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL) {
            Ok(_) => return Ok(true),
            Err(Errno::EAGAIN) => return Ok(false),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Binds and listens on the attach socket `path` (relative to `cwd` when the path is too long for
/// `sun_path`); a failure is written to the monitor's diagnostics and gives `None` (the container
/// then runs unattachable).
pub fn listen(path: &Path, cwd: &Path) -> Option<OwnedFd> {
    match listen_at(path, cwd) {
        Ok(l) => Some(l),
        Err(e) => {
            diag(cwd, &format!("attach socket {path:?}: {e}"));
            None
        }
    }
}

fn listen_at(path: &Path, cwd: &Path) -> Result<OwnedFd, String> {
    let _ = std::fs::remove_file(path);
    let fd = socket::socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| format!("socket: {e}"))?;
    let bound = if path.as_os_str().len() <= SUN_PATH_MAX {
        UnixAddr::new(path).and_then(|a| socket::bind(fd.as_raw_fd(), &a))
    } else {
        // Single-threaded: a chdir around bind is the simplest way past sun_path's 108 bytes.
        let dir = path.parent().unwrap_or(Path::new("."));
        let name = path.file_name().map(PathBuf::from).unwrap_or_default();
        let r = nix::unistd::chdir(dir).and_then(|_| UnixAddr::new(&name)).and_then(|a| socket::bind(fd.as_raw_fd(), &a));
        let _ = nix::unistd::chdir(cwd);
        r
    };
    bound.map_err(|e| format!("bind: {e}"))?;
    socket::listen(&fd, Backlog::new(16).unwrap_or(Backlog::MAXCONN)).map_err(|e| format!("listen: {e}"))?;
    Ok(fd)
}

#[allow(unsafe_code)]
fn owned(raw: std::os::fd::RawFd) -> OwnedFd {
    // SAFETY: `raw` was just returned by accept4 and is owned by nothing else.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// TIOCSWINSZ on the pty master (rows = `height`, columns = `width`).
#[allow(unsafe_code)]
fn set_winsize(tty: &OwnedFd, height: u16, width: u16) -> std::io::Result<()> {
    let ws = libc::winsize { ws_row: height, ws_col: width, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which is valid for the call.
    let r = unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSWINSZ, &ws as *const libc::winsize) };
    if r == -1 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}
