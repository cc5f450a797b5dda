//! Daemon side of a monitor's attach socket (tokio): connect, read output packets, write stdin,
//! resize and reopen-log packets. The packet protocol itself is [`berth_monitor::packet`].

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::MonitorError;
pub use berth_monitor::packet::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::streaming::{SessionIo, TermSize, Writer};

/// Asks the monitor serving `socket` to reopen its container's CRI log file (after kubelet renamed
/// it, a new file is created at the log path) and waits up to `timeout` for its answer. Output
/// packets that arrive meanwhile are skipped.
///
/// Errors: [`MonitorError::Io`] naming the socket when it cannot be reached, closes (the process
/// ended) or does not answer in time; [`MonitorError::Protocol`]-like `Io` with the monitor's
/// message when it could not open the file.
pub async fn reopen_log(socket: &Path, timeout: Duration) -> Result<(), MonitorError> {
    let io_err = |what: &'static str, source: io::Error| MonitorError::Io { what, path: socket.to_path_buf(), source };
    let conn = attach(socket).await?;
    conn.send(&[IN_REOPEN_LOG]).await.map_err(|e| io_err("send reopen-log request to", e))?;
    let answer = async {
        loop {
            match conn.recv().await {
                Ok(Some((IN_REOPEN_LOG, rest))) => return Ok(rest),
                Ok(Some(_)) => continue,
                Ok(None) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the monitor exited (the container ended)")),
                Err(e) => return Err(e),
            }
        }
    };
    let rest = tokio::time::timeout(timeout, answer)
        .await
        .map_err(|_| io_err("reopen-log answer (timed out) from", io::ErrorKind::TimedOut.into()))?
        .map_err(|e| io_err("reopen-log answer from", e))?;
    match rest.split_first() {
        Some((0, _)) => Ok(()),
        Some((_, msg)) => Err(io_err("reopen log via", io::Error::other(String::from_utf8_lossy(msg).into_owned()))),
        None => Err(io_err("reopen-log answer from", io::Error::other("empty answer"))),
    }
}

/// A connection to a monitor's attach socket. Cheap to clone: clones share the socket, so one
/// task can read output while another writes stdin.
#[derive(Clone)]
pub struct AttachConn {
    fd: Arc<AsyncFd<OwnedFd>>,
}

/// Connects to the attach socket at `socket` (paths longer than `sun_path` are reached through
/// `/proc/self/fd/<dir fd>/<name>`, as CRI-O does). Retries for up to 2 s while the socket does
/// not exist yet or its backlog is full.
/// Errors: [`MonitorError::Io`] naming the socket path.
pub async fn attach(socket: &Path) -> Result<AttachConn, MonitorError> {
    let err = |what: &'static str, e: Errno| MonitorError::Io { what, path: socket.to_path_buf(), source: e.into() };
    let mut tries = 0;
    loop {
        let fd = socket::socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)
            .map_err(|e| err("create socket for", e))?;
        match connect(&fd, socket) {
            Ok(()) => {
                let fd = register(fd).map_err(|source| MonitorError::Io { what: "register socket", path: socket.to_path_buf(), source })?;
                return Ok(AttachConn { fd: Arc::new(fd) });
            }
            Err(e @ (Errno::ENOENT | Errno::EAGAIN | Errno::ECONNREFUSED)) if tries < 40 => {
                let _ = e;
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(err("connect to attach socket", e)),
        }
    }
}

/// Registers the socket with the tokio reactor.
#[allow(unsafe_code)]
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is a valid open descriptor, owned by the AsyncFd until it is dropped,
    // and its as_raw_fd() always returns that same descriptor.
    unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)
}

fn connect(fd: &OwnedFd, path: &Path) -> Result<(), Errno> {
    if path.as_os_str().len() < 108 {
        return socket::connect(fd.as_raw_fd(), &UnixAddr::new(path)?);
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().ok_or(Errno::EINVAL)?;
    let dirfd = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let short = Path::new("/proc/self/fd").join(dirfd.as_raw_fd().to_string()).join(name);
    socket::connect(fd.as_raw_fd(), &UnixAddr::new(&short)?)
}

impl AttachConn {
    /// The next output packet as `(stream, bytes)`, stream [`STDOUT`] or [`STDERR`];
    /// `Ok(None)` when the monitor closed the connection (the process ended and all output came).
    pub async fn recv(&self) -> io::Result<Option<(u8, Vec<u8>)>> {
        let mut buf = vec![0u8; MAX_PACKET];
        loop {
            let n = self
                .fd
                .async_io(Interest::READABLE, |fd| socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT).map_err(io::Error::from))
                .await?;
            match n {
                0 => return Ok(None),
                1 => continue,
                n => {
                    buf.truncate(n);
                    let stream = buf.remove(0);
                    return Ok(Some((stream, buf)));
                }
            }
        }
    }

    /// Writes `data` to the container's stdin (split into packets of at most [`MAX_PACKET`]).
    /// Waits while the socket is full (the container is not reading its stdin).
    pub async fn write_stdin(&self, data: &[u8]) -> io::Result<()> {
        for chunk in data.chunks(MAX_PACKET / 2) {
            let mut p = Vec::with_capacity(chunk.len() + 1);
            p.push(IN_STDIN);
            p.extend_from_slice(chunk);
            self.send(&p).await?;
        }
        Ok(())
    }

    /// Tells the monitor this client's stdin ended (closes the container's stdin with `stdin_once`).
    pub async fn close_stdin(&self) -> io::Result<()> {
        self.send(&[IN_CLOSE_STDIN]).await
    }

    /// Resizes the container's terminal (no effect without a tty).
    pub async fn resize(&self, size: TermSize) -> io::Result<()> {
        self.send(&encode_resize(size.height, size.width)).await
    }

    async fn send(&self, packet: &[u8]) -> io::Result<()> {
        self.fd
            .async_io(Interest::WRITABLE, |fd| {
                socket::send(fd.as_raw_fd(), packet, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL).map_err(io::Error::from)
            })
            .await
            .map(|_| ())
    }
}

/// How a pump ended.
#[derive(Debug, PartialEq, Eq)]
pub enum PumpEnd {
    /// The monitor closed the connection: the process ended and all output was delivered.
    ProcessEnded,
    /// The client's output stream failed (it went away).
    ClientGone,
    /// The client's stdin ended and the session should end with it (attach without stdin_once).
    StdinEnded,
}

/// Pumps a streaming session `io` <-> `conn` (client stdin -> process stdin, output packets ->
/// the client's stdout / stderr, resizes -> [`AttachConn::resize`]) until the monitor closes the connection, a client writer fails, or (when
/// `end_on_stdin_eof`) the client's stdin ends. Stdin EOF is always passed on as `close_stdin`.
pub async fn pump(conn: &AttachConn, io: SessionIo, end_on_stdin_eof: bool) -> PumpEnd {
    let SessionIo { stdin, mut stdout, mut stderr, resize } = io;
    let output = async {
        loop {
            match conn.recv().await {
                Ok(Some((stream, data))) => {
                    let w = if stream == STDERR { &mut stderr } else { &mut stdout };
                    if !write_all(w, &data).await {
                        return PumpEnd::ClientGone;
                    }
                }
                Ok(None) | Err(_) => {
                    for w in [&mut stdout, &mut stderr].into_iter().flatten() {
                        let _ = w.flush().await;
                    }
                    return PumpEnd::ProcessEnded;
                }
            }
        }
    };
    let input = async {
        if let Some(mut r) = stdin {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if conn.write_stdin(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = conn.close_stdin().await;
            if end_on_stdin_eof {
                return PumpEnd::StdinEnded;
            }
        }
        std::future::pending().await
    };
    let resizes = async {
        if let Some(mut rx) = resize {
            while let Some(size) = rx.recv().await {
                let _ = conn.resize(size).await;
            }
        }
        std::future::pending::<PumpEnd>().await
    };
    tokio::select! {
        end = output => end,
        end = input => end,
        end = resizes => end,
    }
}

/// Writes to an optional client stream (a missing one discards); false when the client failed.
async fn write_all(w: &mut Option<Writer>, data: &[u8]) -> bool {
    match w {
        Some(w) => w.write_all(data).await.is_ok() && w.flush().await.is_ok(),
        None => true,
    }
}
