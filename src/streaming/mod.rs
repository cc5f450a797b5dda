//! The streaming server for Exec, Attach and PortForward (CRI `ExecResponse.url` and friends).
//!
//! kubelet (and crictl) open the URL returned by the RPC and upgrade the HTTP connection to
//! SPDY/3.1 or WebSocket; berth then speaks the Kubernetes remotecommand protocol
//! (`channel.k8s.io` … `v5.channel.k8s.io`) or `portforward.k8s.io` over it.
//!
//! Layering: this module knows HTTP, SPDY, WebSocket and the Kubernetes stream protocols, and
//! nothing of containers. What it needs from the runtime comes through the [`Backend`] trait,
//! which `container::streaming` implements over the daemon.
//!
//! - [`spdy`]: the SPDY/3.1 framing, header compression and stream multiplexer (client and server).
//! - [`server`]: the HTTP server, routes and upgrades; [`token`]: single-use expiring URL tokens;
//!   [`protocol`]: version negotiation; [`remotecommand`]: exec/attach status and glue, with
//!   [`rc_spdy`] and [`rc_websocket`] per transport; [`portforward`]: port-forward on both;
//!   [`websocket`]: the WebSocket channel framing; [`client`]: the upgrade client (tests, conformance).

pub mod spdy;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};

/// A terminal size, as the remotecommand `resize` stream sends it (JSON `{"Width":w,"Height":h}`,
/// client-go `TerminalSize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct TermSize {
    /// Columns.
    #[serde(rename = "Width")]
    pub width: u16,
    /// Rows.
    #[serde(rename = "Height")]
    pub height: u16,
}

/// Boxed byte source (the client's stdin; EOF when the client closed it).
pub type Reader = Box<dyn AsyncRead + Send + Unpin>;
/// Boxed byte sink (the client's stdout or stderr).
pub type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// The stdio of one exec or attach session, as the streaming server hands it to the [`Backend`].
/// A `None` stream was not requested by the client.
pub struct SessionIo {
    /// Client -> process. EOF means the client closed stdin (v5 close signal, or FIN on SPDY).
    pub stdin: Option<Reader>,
    /// Process -> client stdout (with a tty: the terminal's output).
    pub stdout: Option<Writer>,
    /// Process -> client stderr; always `None` with a tty.
    pub stderr: Option<Writer>,
    /// Terminal resizes from the client (tty sessions only).
    pub resize: Option<tokio::sync::mpsc::Receiver<TermSize>>,
}

/// What to run for an Exec request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    /// Full container ID.
    pub container_id: String,
    /// The command and its arguments (CRI `ExecRequest.cmd`).
    pub cmd: Vec<String>,
    /// Run it on a pty (CRI `ExecRequest.tty`).
    pub tty: bool,
}

/// Errors the [`Backend`] reports; the streaming server sends them to the client (v4+: a
/// `metav1.Status` on the error stream) and logs them.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The container or pod sandbox is gone.
    #[error("{0}")]
    NotFound(String),
    /// It is not running.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request cannot be served as asked.
    #[error("{0}")]
    InvalidArgument(String),
    /// Anything else (runtime, monitor, socket failures).
    #[error("{0}")]
    Internal(String),
}

/// What the streaming server needs from the runtime.
#[tonic::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Runs `spec.cmd` in the container, wired to `io`, and returns its exit code once it ended
    /// and all of its output was written to `io`. When the returned future is dropped (the
    /// client went away) the process must be killed.
    async fn exec(&self, spec: ExecSpec, io: SessionIo) -> Result<i32, StreamError>;

    /// Attaches `io` to the container's main process until the client detaches (its stdin and
    /// connection end) or the container exits. Detaching never stops the container (unless the
    /// container was created with `stdin_once` and this client closes stdin).
    async fn attach(&self, container_id: &str, io: SessionIo) -> Result<(), StreamError>;

    /// A TCP connection to `port` on localhost inside the pod sandbox's network namespace (the
    /// host's for host-network pods).
    async fn port_forward(&self, sandbox_id: &str, port: u16) -> Result<tokio::net::TcpStream, StreamError>;
}

pub mod client;
pub mod portforward;
pub mod protocol;
pub mod rc_spdy;
pub mod rc_websocket;
pub mod remotecommand;
pub mod server;
pub mod token;
pub mod websocket;

#[cfg(test)]
mod interop_tests;
#[cfg(test)]
mod tests;
