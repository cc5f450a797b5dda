//! sd_notify(3) for a `Type=notify` systemd unit: `READY=1` once the CRI socket is bound and
//! listening, so that units ordered after berth.service (kubelet) start when the socket answers.
//!
//! The protocol (systemd's sd_notify(3), "NOTIFY_SOCKET"): one datagram of newline-separated
//! `KEY=VALUE` assignments to the `AF_UNIX` datagram socket named by `$NOTIFY_SOCKET`, an
//! absolute path or, with a leading `@`, an abstract name. Without the variable (not started by
//! systemd with `Type=notify`) nothing is sent.
//!
//! The variable is taken out of the process environment at start ([`Notifier::from_env`]):
//! runc treats an inherited `NOTIFY_SOCKET` as the *container's* notify socket, bind-mounts a
//! proxy of it into the container and makes `runc start` wait for the container to send READY,
//! which no ordinary container does.

use std::io;
use std::os::unix::net::UnixDatagram;

/// Where `READY=1` goes, read once from `$NOTIFY_SOCKET`.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<String>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET` and removes it from this process's environment, so no child (the
    /// monitor, runc, CNI plugins) inherits it. Call before any thread or child is started.
    pub fn from_env() -> Notifier {
        let socket = std::env::var("NOTIFY_SOCKET").ok().filter(|s| !s.is_empty());
        std::env::remove_var("NOTIFY_SOCKET");
        Notifier { socket }
    }

    /// A notifier for the socket `socket` (path, or `@name` for an abstract one).
    pub fn new(socket: impl Into<String>) -> Notifier {
        Notifier { socket: Some(socket.into()) }
    }

    /// Sends `state` (e.g. `READY=1\nSTATUS=serving CRI`). `Ok(false)` when there is no notify
    /// socket. Errors: the socket cannot be reached (systemd gone, a wrong path).
    pub fn notify(&self, state: &str) -> io::Result<bool> {
        let Some(socket) = &self.socket else { return Ok(false) };
        let sock = UnixDatagram::unbound()?;
        match socket.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
                sock.send_to_addr(state.as_bytes(), &addr)?;
            }
            None => {
                sock.send_to(state.as_bytes(), socket)?;
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_reaches_a_path_socket_and_an_abstract_one() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        assert!(Notifier::new(path.display().to_string()).notify("READY=1").unwrap());
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("berth-sdnotify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        assert!(Notifier::new(format!("@{name}")).notify("READY=1\nSTATUS=x").unwrap());
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=x");

        assert!(!Notifier::default().notify("READY=1").unwrap(), "not under systemd: nothing sent");
        assert!(Notifier::new("/nonexistent/notify").notify("READY=1").is_err());
    }
}
