//! The remotecommand protocol (exec and attach) shared by the SPDY and WebSocket transports:
//! what the client asked for, how the session's outcome is reported on the error stream
//! (v4+: a `metav1.Status` JSON, as kubelet's `v4WriteStatusFunc`; older: the error text only on
//! failure, `v1WriteStatusFunc`), and the glue that runs the [`Backend`] while watching for the
//! client to go away.

use super::protocol::RcVersion;
use super::{Backend, ExecSpec, SessionIo, StreamError, TermSize};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// How long the server waits for the client to open every expected stream (kubelet
/// `StreamCreationTimeout`, 30 s).
pub const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long output pumps may take to drain once the backend returned.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Buffer of the in-memory pipes between the backend and a transport.
pub(crate) const PIPE_BUFFER: usize = 64 * 1024;

/// What an exec or attach session runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `backend.exec(spec)`.
    Exec(ExecSpec),
    /// `backend.attach(container_id)`.
    Attach(String),
}

/// The streams the validated CRI request asked for (CRI `ExecRequest`/`AttachRequest` fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamOpts {
    /// Client stdin is wired.
    pub stdin: bool,
    /// Process stdout is sent.
    pub stdout: bool,
    /// Process stderr is sent (never with a tty).
    pub stderr: bool,
    /// A pty: stdout carries the terminal, resizes are accepted.
    pub tty: bool,
}

impl StreamOpts {
    /// stderr as it is really used: a tty merges it into stdout (kubelet drops it).
    pub fn effective_stderr(&self) -> bool {
        self.stderr && !self.tty
    }
}

/// How a session ended.
#[derive(Debug)]
pub enum Outcome {
    /// Exec exited 0, or attach ended.
    Success,
    /// Exec exited with a non-zero code.
    ExitCode {
        /// The command that ran.
        cmd: Vec<String>,
        /// Its exit code.
        code: i32,
    },
    /// The backend failed.
    Error(StreamError),
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct Cause {
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    message: String,
}

#[derive(Serialize)]
struct Details {
    causes: Vec<Cause>,
}

/// `metav1.Status` as kubelet writes it on the error stream (field order as Go marshals it).
#[derive(Serialize)]
struct Status {
    metadata: Empty,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
}

impl Outcome {
    /// Maps the backend's result (exec: its exit code).
    pub fn from_exec(cmd: &[String], r: Result<i32, StreamError>) -> Outcome {
        match r {
            Ok(0) => Outcome::Success,
            Ok(code) => Outcome::ExitCode { cmd: cmd.to_vec(), code },
            Err(e) => Outcome::Error(e),
        }
    }

    /// The failure message (None on success), as CRI-O words it.
    pub fn message(&self) -> Option<String> {
        match self {
            Outcome::Success => None,
            Outcome::ExitCode { cmd, code } => {
                Some(format!("command terminated with non-zero exit code: error executing command {cmd:?}, exit code {code}"))
            }
            Outcome::Error(e) => Some(format!("Internal error occurred: error executing command in container: {e}")),
        }
    }

    /// The `metav1.Status` JSON (v4+ error stream). Success:
    /// `{"metadata":{},"status":"Success"}`; exit code N: `reason` `NonZeroExitCode`, one cause
    /// `{"reason":"ExitCode","message":"N"}`; backend error: `reason` `InternalError`, code 500.
    pub fn status_json(&self) -> Vec<u8> {
        let status = match self {
            Outcome::Success => Status { metadata: Empty {}, status: "Success", message: None, reason: None, details: None, code: None },
            Outcome::ExitCode { code, .. } => Status {
                metadata: Empty {},
                status: "Failure",
                message: self.message(),
                reason: Some("NonZeroExitCode"),
                details: Some(Details { causes: vec![Cause { reason: Some("ExitCode"), message: code.to_string() }] }),
                code: None,
            },
            Outcome::Error(e) => Status {
                metadata: Empty {},
                status: "Failure",
                message: self.message(),
                reason: Some("InternalError"),
                details: Some(Details {
                    causes: vec![Cause { reason: None, message: format!("error executing command in container: {e}") }],
                }),
                code: Some(500),
            },
        };
        serde_json::to_vec(&status).unwrap_or_else(|_| br#"{"metadata":{},"status":"Failure"}"#.to_vec())
    }

    /// What to write on the error stream for `version`: v4+ always the status JSON; older
    /// versions the message text on failure and nothing on success.
    pub fn error_stream_bytes(&self, version: RcVersion) -> Option<Vec<u8>> {
        if version.status_json() {
            Some(self.status_json())
        } else {
            self.message().map(String::into_bytes)
        }
    }
}

/// Runs the backend for `target` over `io` and maps the result.
pub async fn run_backend(backend: Arc<dyn Backend>, target: Target, io: SessionIo) -> Outcome {
    match target {
        Target::Exec(spec) => {
            let cmd = spec.cmd.clone();
            Outcome::from_exec(&cmd, backend.exec(spec, io).await)
        }
        Target::Attach(id) => match backend.attach(&id, io).await {
            Ok(()) => Outcome::Success,
            Err(e) => Outcome::Error(e),
        },
    }
}

/// Reads a stream of concatenated JSON `TermSize` objects (client-go writes one
/// `json.Encoder` line per resize) and forwards each; ends at EOF, on a malformed object or when
/// the receiver is gone.
pub async fn forward_resizes<R: AsyncRead + Unpin>(mut src: R, tx: tokio::sync::mpsc::Sender<TermSize>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = match src.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut stream = serde_json::Deserializer::from_slice(&buf).into_iter::<TermSize>();
        let mut consumed = 0;
        loop {
            match stream.next() {
                Some(Ok(size)) => {
                    consumed = stream.byte_offset();
                    if tx.send(size).await.is_err() {
                        return;
                    }
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(_)) => return,
                None => {
                    consumed = buf.len();
                    break;
                }
            }
        }
        buf.drain(..consumed);
        if buf.len() > 64 * 1024 {
            return; // no resize message is that long
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_json_shapes() {
        assert_eq!(Outcome::Success.status_json(), br#"{"metadata":{},"status":"Success"}"#);
        let o = Outcome::from_exec(&["sh".into(), "-c".into(), "exit 3".into()], Ok(3));
        let v: serde_json::Value = serde_json::from_slice(&o.status_json()).unwrap();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        assert!(v["message"].as_str().unwrap().starts_with("command terminated with non-zero exit code: "));
        let e = Outcome::Error(StreamError::NotFound("container abc not found".into()));
        let v: serde_json::Value = serde_json::from_slice(&e.status_json()).unwrap();
        assert_eq!(v["reason"], "InternalError");
        assert_eq!(v["code"], 500);
        assert!(v["message"].as_str().unwrap().contains("container abc not found"));
    }

    #[test]
    fn old_versions_write_text_on_failure_only() {
        assert_eq!(Outcome::Success.error_stream_bytes(RcVersion::V2), None);
        let o = Outcome::from_exec(&["false".into()], Ok(1));
        let text = String::from_utf8(o.error_stream_bytes(RcVersion::V3).unwrap()).unwrap();
        assert!(text.contains("exit code 1"), "{text}");
        assert!(Outcome::Success.error_stream_bytes(RcVersion::V4).is_some());
    }

    #[tokio::test]
    async fn resize_stream_parsing() {
        let (mut w, r) = tokio::io::duplex(64);
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let task = tokio::spawn(forward_resizes(r, tx));
        use tokio::io::AsyncWriteExt;
        w.write_all(b"{\"Width\":80,\"Hei").await.unwrap();
        w.write_all(b"ght\":24}\n{\"Width\":100,\"Height\":50}\n").await.unwrap();
        drop(w);
        assert_eq!(rx.recv().await, Some(TermSize { width: 80, height: 24 }));
        assert_eq!(rx.recv().await, Some(TermSize { width: 100, height: 50 }));
        assert_eq!(rx.recv().await, None);
        task.await.unwrap();
    }
}
